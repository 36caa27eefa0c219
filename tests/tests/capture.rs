//! What the kernel side captures and what it leaves out: filters, connections that were
//! open before the agent, IPv6.
use std::net::TcpStream;
use std::time::Duration;

use ghostwire_tests::*;

fn jsonl_args(path: &std::path::Path, extra: &[String]) -> Vec<String> {
    let mut v = vec!["--output".to_owned(), format!("jsonl:{}", path.display())];
    v.extend_from_slice(extra);
    v
}

#[test]
fn connections_open_before_the_agent_are_traced_from_their_next_message() {
    require_root();
    let dir = TempDir::new("preexisting");
    let [proxy_port, backend_port] = free_ports();
    let _backend = python_backend(backend_port, "legacy-backend");
    let _nginx = Nginx::reverse_proxy(proxy_port, backend_port);
    // Opened (and used once) before the agent starts.
    let mut old = HttpConn::connect(proxy_port);
    assert_eq!(old.get("/before").status, 200);
    let old_port = i64::from(old.stream.local_addr().expect("local addr").port());

    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(&jsonl_args(&jsonl, &["--port".into(), proxy_port.to_string()]), &[]);
    // The old connection is used again: the socket is recognised in the kernel and the
    // request is traced from both ends, like one on a new connection.
    assert_eq!(old.get("/again").status, 200);
    let mut new = HttpConn::connect(proxy_port);
    assert_eq!(new.get("/missing").status, 404);
    let new_port = i64::from(new.stream.local_addr().expect("local addr").port());
    let got = wait_for(Duration::from_secs(10), || (read_jsonl(&jsonl).len() >= 4).then_some(()));
    drop((old, new));
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert!(got.is_some(), "want 4 spans:\n{}\n{}", describe(&spans), exit.stderr);
    // Test client (CLIENT) and nginx (SERVER) for each request; none for /before.
    assert_eq!(spans.len(), 4, "{}", describe(&spans));
    let me = own_service_name();
    for (path, status, client_port) in [("/again", 200, old_port), ("/missing", 404, new_port)] {
        let of = |kind: i64, service: &str| -> &SpanRec {
            let found: Vec<&SpanRec> = spans
                .iter()
                .filter(|s| s.kind == kind && s.service() == service && s.path().as_deref() == Some(path))
                .collect();
            assert_eq!(found.len(), 1, "{service} kind {kind} {path}:\n{}", describe(&spans));
            found[0]
        };
        let client = of(KIND_CLIENT, &me);
        let server = of(KIND_SERVER, "nginx");
        for s in [client, server] {
            assert_eq!(s.attr_int("http.response.status_code"), status, "{s:#?}");
        }
        assert_eq!(client.attr_int("network.local.port"), client_port);
        assert_eq!(server.attr_int("network.peer.port"), client_port);
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.parent_span_id, client.span_id);
        assert_eq!(server.attr_str("ghostwire.link"), "socket");
    }
    assert!(exit.stat("conns.preexisting") >= 1, "{}", exit.stderr);
    // Both ends of the old connection were first seen on data.
    assert!(exit.stat("conns.midstream") >= 2, "{}", exit.stderr);
    assert_eq!(exit.stat("drop.parse_error"), 0, "{}", exit.stderr);
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
