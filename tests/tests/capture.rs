//! What the kernel side captures and what it leaves out: filters, connections that were
//! open before the agent, IPv6.
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use ghostwire_tests::*;

fn jsonl_args(path: &std::path::Path, extra: &[String]) -> Vec<String> {
    let mut v = vec!["--output".to_owned(), format!("jsonl:{}", path.display())];
    v.extend_from_slice(extra);
    v
}

/// One request on an open keep-alive connection; returns the status line.
fn request(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n").expect("send");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn connections_open_before_the_agent_are_counted_not_traced() {
    require_root();
    let dir = TempDir::new("preexisting");
    let [proxy_port, backend_port] = free_ports();
    let _backend = python_backend(backend_port, "legacy-backend");
    let _nginx = Nginx::reverse_proxy(proxy_port, backend_port);
    // Opened (and used once) before the agent starts.
    let mut old = TcpStream::connect(("127.0.0.1", proxy_port)).expect("connect");
    old.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert!(request(&mut old, "/ok").contains("200"));

    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&jsonl_args(&jsonl, &["--port".into(), proxy_port.to_string()]), &[]);
    // The old connection is used again: it must not produce a span (its stream is
    // seen mid-way), only a count.
    assert!(request(&mut old, "/ok").contains("200"));
    // A new connection is traced.
    let mut new = TcpStream::connect(("127.0.0.1", proxy_port)).expect("connect");
    new.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert!(request(&mut new, "/missing").contains("404"));
    let spans = wait_for(Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        (s.len() >= 2).then_some(s)
    });
    drop((old, new));
    let exit = agent.stop();
    let spans = spans.unwrap_or_else(|| read_jsonl(&jsonl));
    // The new connection: test client (CLIENT) and nginx (SERVER), both for /missing.
    assert_eq!(spans.len(), 2, "{}", describe(&spans));
    assert!(spans.iter().all(|s| s.attr_int("http.response.status_code") == 404), "{}", describe(&spans));
    assert!(exit.stat("kernel.untracked_conn") >= 2, "the old connection's reads and writes are counted:\n{}", exit.stderr);
    assert!(exit.stat("conns.preexisting") >= 1, "{}", exit.stderr);
}

#[test]
fn pid_and_exe_filters_select_processes_in_the_kernel() {
    require_root();
    let dir = TempDir::new("filters");
    let [port_a, port_b] = free_ports();
    let backend_a = python_backend(port_a, "backend-a");
    let _backend_b = python_backend(port_b, "backend-b");

    // --pid: only backend A's server spans; curl (another process) and B are filtered.
    let jsonl = dir.path().join("pid.jsonl");
    let agent = Agent::start(&jsonl_args(&jsonl, &["--pid".into(), backend_a.pid().to_string()]), &[]);
    assert_eq!(curl(port_a, "/ok"), 200);
    assert_eq!(curl(port_b, "/ok"), 200);
    let got = wait_for(Duration::from_secs(10), || (!read_jsonl(&jsonl).is_empty()).then_some(()));
    std::thread::sleep(Duration::from_millis(1500));
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(got.is_some(), "no span for the filtered pid:\n{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert_eq!(spans.len(), 1, "{}", describe(&spans));
    assert_eq!(spans[0].service(), "backend-a");
    assert_eq!(spans[0].kind, KIND_SERVER);

    // --exe curl: only curl's client spans, for both backends.
    let jsonl = dir.path().join("exe.jsonl");
    let agent = Agent::start(&jsonl_args(&jsonl, &["--exe".into(), "curl".into()]), &[]);
    assert_eq!(curl(port_a, "/ok"), 200);
    assert_eq!(curl(port_b, "/missing"), 404);
    let spans = wait_for(Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        (s.len() >= 2).then_some(s)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let exit = agent.stop();
    assert!(spans.is_some(), "{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert_eq!(spans.len(), 2, "{}", describe(&spans));
    assert!(spans.iter().all(|s| s.kind == KIND_CLIENT && s.service() == "curl"), "{}", describe(&spans));
}

#[test]
fn ipv6_connections_carry_ipv6_tuples() {
    require_root();
    let dir = TempDir::new("ipv6");
    let port = free_port();
    let _backend = Proc::spawn(
        "backend6",
        std::process::Command::new("python3")
            .arg(peers_dir().join("backend.py"))
            .arg(port.to_string())
            .arg("::1")
            .env("OTEL_SERVICE_NAME", "backend-v6"),
    );
    let up = wait_for(Duration::from_secs(30), || TcpStream::connect(("::1", port)).ok());
    assert!(up.is_some(), "IPv6 backend did not come up on [::1]:{port}");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&jsonl_args(&jsonl, &["--port".into(), port.to_string()]), &[]);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .arg(format!("http://[::1]:{port}/boom"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "500");
    let spans = wait_for(Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        (s.len() >= 2).then_some(s)
    });
    let exit = agent.stop();
    let spans = spans.unwrap_or_else(|| panic!("no spans:\n{}", exit.stderr));
    let server = spans.iter().find(|s| s.kind == KIND_SERVER).expect("server span");
    let client = spans.iter().find(|s| s.kind == KIND_CLIENT).expect("client span");
    assert_eq!(server.service(), "backend-v6");
    assert_eq!(server.attr_str("network.local.address"), "::1");
    assert_eq!(server.attr_str("client.address"), "::1");
    assert_eq!(server.attr_int("network.peer.port"), client.attr_int("network.local.port"));
    assert_eq!(server.status_code, STATUS_ERROR);
    assert_eq!(client.attr_str("server.address"), "::1");
}
