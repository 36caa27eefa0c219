//! HTTP/2 and gRPC end to end: a legacy grpcio server and client (no SDK, raw-bytes
//! messages, service `demo.Echo`) and nginx h2c, traced by a real agent with real kernel
//! probes; spans are read back from the agent's JSONL output.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use ghostwire_tests::*;
use serde_json::Value;

const SERVER_SVC: &str = "grpc-echo-server";
const CLIENT_SVC: &str = "grpc-echo-client";

/// A grpcio server on a free port and an agent tracing that port, writing JSONL.
struct GrpcRig {
    _server: Proc,
    port: u16,
    jsonl: PathBuf,
    _dir: TempDir,
}

impl GrpcRig {
    fn new(tag: &str) -> Self {
        require_root();
        let dir = TempDir::new(tag);
        let port = free_port();
        let server = grpc_server(port, None, SERVER_SVC);
        let jsonl = dir.path().join("spans.jsonl");
        Self { _server: server, port, jsonl, _dir: dir }
    }

    fn agent(&self) -> Agent {
        Agent::start(
            &["--port".into(), self.port.to_string(), "--output".into(), format!("jsonl:{}", self.jsonl.display())],
            &[],
        )
    }

    /// Waits (15 s) until the JSONL holds `servers` SERVER and `clients` CLIENT spans of
    /// the gRPC peers, stops the agent and returns every span and the exit.
    fn collect(&self, agent: Agent, servers: usize, clients: usize) -> (Vec<SpanRec>, AgentExit) {
        let (spans, exit, complete) = self.collect_unchecked(agent, servers, clients);
        assert!(
            complete,
            "want {servers} SERVER and {clients} CLIENT spans within 15 s, got:\n{}\n{}",
            describe_rpc(&spans),
            exit.stats_line()
        );
        (spans, exit)
    }

    /// [`GrpcRig::collect`] without the check; also says whether the spans came.
    fn collect_unchecked(&self, agent: Agent, servers: usize, clients: usize) -> (Vec<SpanRec>, AgentExit, bool) {
        let complete = wait_for(Duration::from_secs(15), || {
            let s = read_jsonl(&self.jsonl);
            (count(&s, KIND_SERVER, SERVER_SVC) >= servers && count(&s, KIND_CLIENT, CLIENT_SVC) >= clients)
                .then_some(())
        });
        let exit = agent.stop();
        assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
        (read_jsonl(&self.jsonl), exit, complete.is_some())
    }
}

fn service_is(s: &SpanRec, service: &str) -> bool {
    s.resource.get("service.name").and_then(Value::as_str) == Some(service)
}

fn of<'a>(spans: &'a [SpanRec], kind: i64, service: &str) -> Vec<&'a SpanRec> {
    spans.iter().filter(|s| s.kind == kind && service_is(s, service)).collect()
}

fn count(spans: &[SpanRec], kind: i64, service: &str) -> usize {
    of(spans, kind, service).len()
}

/// The one span of `kind` from `service` whose gRPC status is `status`.
fn by_status<'a>(spans: &'a [SpanRec], kind: i64, service: &str, status: &str) -> &'a SpanRec {
    let found: Vec<&SpanRec> = of(spans, kind, service)
        .into_iter()
        .filter(|s| attr_opt(s, "rpc.response.status_code") == Some(status))
        .collect();
    assert_eq!(found.len(), 1, "want one {kind} span of {service} with status {status}:\n{}", describe_rpc(spans));
    found[0]
}

/// The attributes every gRPC span of `method` on 127.0.0.1:`port` carries.
fn assert_grpc_span(s: &SpanRec, method: &str, port: u16, all: &[SpanRec]) {
    let ctx = || describe_rpc(all);
    assert_eq!(s.name, method, "span name is rpc.method:\n{}", ctx());
    assert_eq!(s.attr_str("rpc.method"), method, "{}", ctx());
    assert_eq!(s.attr_str("rpc.system.name"), "grpc", "{}", ctx());
    assert_eq!(s.attr_str("network.protocol.name"), "http", "{}", ctx());
    assert_eq!(s.attr_str("network.protocol.version"), "2", "{}", ctx());
    assert_eq!(s.attr_str("server.address"), "127.0.0.1", "{}", ctx());
    assert_eq!(s.attr_int("server.port"), i64::from(port), "{}", ctx());
    assert_eq!(s.trace_id.len(), 32);
    assert_eq!(s.span_id.len(), 16);
    assert!(s.end_ns >= s.start_ns && s.start_ns > 0, "{s:#?}");
}

/// SERVER is the socket child of CLIENT, in its trace.
fn assert_socket_pair(client: &SpanRec, server: &SpanRec, all: &[SpanRec]) {
    assert_eq!(server.trace_id, client.trace_id, "one trace:\n{}", describe_rpc(all));
    assert_eq!(server.parent_span_id, client.span_id, "server span is the client span's child:\n{}", describe_rpc(all));
    assert_eq!(server.attr_str("ghostwire.link"), "socket", "{}", describe_rpc(all));
    assert_eq!(server.attr_int("network.peer.port"), client.attr_int("network.local.port"));
    assert_eq!(server.attr_int("network.local.port"), client.attr_int("network.peer.port"));
}

fn is_error(s: &SpanRec) -> bool {
    s.status_code == STATUS_ERROR
}

#[test]
fn grpc_unary_ok_not_found_and_internal_give_linked_server_and_client_spans() {
    let rig = GrpcRig::new("grpc-unary");
    let agent = rig.agent();
    let mut client = GrpcClient::start(rig.port, CLIENT_SVC);
    client.expect("unary hello", "OK");
    client.expect("unary notfound", "NOT_FOUND");
    client.expect("unary internal", "INTERNAL");
    let (spans, exit) = rig.collect(agent, 3, 3);
    client.quit();
    assert_eq!(count(&spans, KIND_SERVER, SERVER_SVC), 3, "{}", describe_rpc(&spans));
    assert_eq!(count(&spans, KIND_CLIENT, CLIENT_SVC), 3, "{}", describe_rpc(&spans));
    assert_eq!(exit.stat("drop.h2_connection_error"), 0, "{}", exit.stats_line());

    // (status, server span is an error, client span is an error, response messages)
    for (status, server_error, client_error, replies) in
        [("OK", false, false, 1), ("NOT_FOUND", false, true, 0), ("INTERNAL", true, true, 0)]
    {
        let server = by_status(&spans, KIND_SERVER, SERVER_SVC, status);
        let client_span = by_status(&spans, KIND_CLIENT, CLIENT_SVC, status);
        for (s, want_error) in [(server, server_error), (client_span, client_error)] {
            assert_grpc_span(s, "demo.Echo/Unary", rig.port, &spans);
            assert_eq!(is_error(s), want_error, "{status}: error status of\n{}", describe_rpc(std::slice::from_ref(s)));
            assert_eq!(
                attr_opt(s, "error.type"),
                want_error.then_some(status),
                "{status}: error.type of\n{}",
                describe_rpc(std::slice::from_ref(s))
            );
            assert_eq!(s.attr_int("ghostwire.grpc.request.messages"), 1, "{}", describe_rpc(&spans));
            assert_eq!(s.attr_int("ghostwire.grpc.response.messages"), replies, "{}", describe_rpc(&spans));
        }
        assert_socket_pair(client_span, server, &spans);
        assert_eq!(client_span.parent_span_id, "", "the client made its calls unprompted");
    }
}

#[test]
fn grpc_server_streaming_is_one_span_per_side_with_the_message_count() {
    let rig = GrpcRig::new("grpc-stream");
    let agent = rig.agent();
    let mut client = GrpcClient::start(rig.port, CLIENT_SVC);
    assert_eq!(client.expect("stream 5", "OK"), "ok OK messages=5");
    let (spans, _exit) = rig.collect(agent, 1, 1);
    client.quit();
    let servers = of(&spans, KIND_SERVER, SERVER_SVC);
    let clients = of(&spans, KIND_CLIENT, CLIENT_SVC);
    assert_eq!((servers.len(), clients.len()), (1, 1), "{}", describe_rpc(&spans));
    for s in [servers[0], clients[0]] {
        assert_grpc_span(s, "demo.Echo/ServerStream", rig.port, &spans);
        assert_eq!(s.attr_str("rpc.response.status_code"), "OK");
        assert!(!is_error(s), "{}", describe_rpc(&spans));
        assert_eq!(s.attr_int("ghostwire.grpc.request.messages"), 1, "{}", describe_rpc(&spans));
        assert_eq!(s.attr_int("ghostwire.grpc.response.messages"), 5, "{}", describe_rpc(&spans));
    }
    assert_socket_pair(clients[0], servers[0], &spans);
}

#[test]
fn fifty_calls_on_one_channel_give_fifty_spans_per_side_each_with_its_method() {
    const CALLS: usize = 50;
    let rig = GrpcRig::new("grpc-many");
    let agent = rig.agent();
    let mut client = GrpcClient::start(rig.port, CLIENT_SVC);
    // Fixed metadata on every call, and x-call-seq new on every call (grpc_client.py).
    client.expect("header x-tenant ghostwire-e2e", "OK");
    assert_eq!(client.expect(&format!("many {CALLS}"), "OK"), format!("ok OK calls={CALLS} failed=0"));
    let (spans, exit) = rig.collect(agent, CALLS, CALLS);
    client.quit();
    let servers = of(&spans, KIND_SERVER, SERVER_SVC);
    let clients = of(&spans, KIND_CLIENT, CLIENT_SVC);
    assert_eq!((servers.len(), clients.len()), (CALLS, CALLS), "{}", describe_rpc(&spans));
    for s in servers.iter().chain(&clients) {
        assert_grpc_span(s, "demo.Echo/Unary", rig.port, &spans);
        assert_eq!(s.attr_str("rpc.response.status_code"), "OK", "{}", describe_rpc(&spans));
        assert!(!is_error(s), "{}", describe_rpc(&spans));
    }
    // One connection, and every server span the socket child of exactly one client span.
    let peer_ports: BTreeSet<i64> = servers.iter().map(|s| s.attr_int("network.peer.port")).collect();
    assert_eq!(peer_ports.len(), 1, "one channel, one connection: {peer_ports:?}");
    let by_id: BTreeMap<&str, &SpanRec> = clients.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let parents: BTreeSet<&str> = servers.iter().map(|s| s.parent_span_id.as_str()).collect();
    assert_eq!(parents.len(), CALLS, "each server span has its own client span as parent:\n{}", describe_rpc(&spans));
    for server in &servers {
        let client_span = by_id.get(server.parent_span_id.as_str()).unwrap_or_else(|| {
            panic!("server span {} has no client parent:\n{}", server.span_id, describe_rpc(&spans))
        });
        assert_socket_pair(client_span, server, &spans);
        // The pair is one call: the server handled it inside the client's call. Both ends'
        // times are taken when a socket operation finished, and on loopback the server's
        // read can return on the other core a few microseconds before the client's write
        // does (measured: 1.5 µs), so each side gets 1 ms of slack.
        const SLACK_NS: u64 = 1_000_000;
        assert!(
            client_span.start_ns <= server.start_ns + SLACK_NS && server.end_ns <= client_span.end_ns + SLACK_NS,
            "server span {} ({}..{}) not inside its client span {} ({}..{}):\n{}",
            server.span_id,
            server.start_ns,
            server.end_ns,
            client_span.span_id,
            client_span.start_ns,
            client_span.end_ns,
            describe_rpc(&spans)
        );
    }
    for key in ["h2.unknown_method", "h2.unknown_path", "h2.unknown_status", "drop.h2_connection_error"] {
        assert_eq!(exit.stat(key), 0, "{key} on a connection seen from its start: {}", exit.stats_line());
    }
}

#[test]
fn traceparent_in_grpc_metadata_joins_the_callers_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let rig = GrpcRig::new("grpc-traceparent");
    let agent = rig.agent();
    // A client process of its own: sending a context it did not receive marks it
    // SDK-instrumented, and its own spans are then left to its (pretend) SDK.
    let mut client = GrpcClient::start(rig.port, CLIENT_SVC);
    client.expect(&format!("meta 00-{TRACE}-{PARENT}-01"), "OK");
    client.expect("unary with-context", "OK");
    let (spans, exit) = rig.collect(agent, 1, 0);
    client.quit();
    let servers = of(&spans, KIND_SERVER, SERVER_SVC);
    assert_eq!(servers.len(), 1, "{}", describe_rpc(&spans));
    let server = servers[0];
    assert_grpc_span(server, "demo.Echo/Unary", rig.port, &spans);
    assert_eq!(server.trace_id, TRACE, "{}", describe_rpc(&spans));
    assert_eq!(server.parent_span_id, PARENT, "{}", describe_rpc(&spans));
    assert_eq!(server.attr_str("ghostwire.link"), "header", "{}", describe_rpc(&spans));
    assert_eq!(count(&spans, KIND_CLIENT, CLIENT_SVC), 0, "{}", describe_rpc(&spans));
    assert!(exit.stat("spans.suppressed_instrumented") >= 1, "{}", exit.stats_line());
}

/// Whether a span of a call to `/demo.Echo/Unary` says only what the agent could know:
/// the method, or `_OTHER` where HPACK referred to entries sent before the agent came.
fn plausible_unary(s: &SpanRec, port: u16) -> Result<(), String> {
    let a = |k: &str| attr_opt(s, k);
    match a("rpc.system.name") {
        Some("grpc") => match (s.name.as_str(), a("rpc.method")) {
            ("demo.Echo/Unary", Some("demo.Echo/Unary")) | ("grpc", Some("_OTHER")) => {
                match a("rpc.response.status_code") {
                    Some("OK" | "UNKNOWN") | None => Ok(()),
                    other => Err(format!("gRPC status {other:?}")),
                }
            }
            (name, m) => Err(format!("name {name:?} rpc.method {m:?}")),
        },
        // Not recognised as gRPC (content-type unknown): a plain HTTP/2 span.
        _ => {
            let method_ok = matches!(
                (s.name.as_str(), a("http.request.method")),
                ("POST", Some("POST")) | ("HTTP", Some("_OTHER"))
            );
            // SERVER: url.path; CLIENT: url.full (`_OTHER` when the path is unknown).
            let path = a("url.path").or(a("url.full"));
            let path_ok = path.is_some_and(|p| {
                p == "_OTHER" || p == "/demo.Echo/Unary" || *p == format!("http://127.0.0.1:{port}/demo.Echo/Unary")
            });
            // OTLP JSON carries integers as strings; absent when `:status` was unknown.
            let status = s.attributes.get("http.response.status_code").map(|_| s.attr_int("http.response.status_code"));
            let status_ok = status.is_none_or(|c| c == 200);
            if method_ok && path_ok && status_ok {
                Ok(())
            } else {
                Err(format!(
                    "HTTP span name {:?} method {:?} path {path:?} status {status:?}",
                    s.name,
                    a("http.request.method")
                ))
            }
        }
    }
}

#[test]
fn a_channel_opened_before_the_agent_gives_spans_for_later_calls_and_no_garbage() {
    const LATER: usize = 10;
    let rig = GrpcRig::new("grpc-before");
    let mut client = GrpcClient::start(rig.port, CLIENT_SVC);
    // Before the agent: the connection, its SETTINGS and HPACK state, and a first call
    // whose header fields both encoders put into their dynamic tables.
    client.expect("header x-tenant ghostwire-e2e", "OK");
    client.expect("unary before-the-agent", "OK");
    let agent = rig.agent();
    for i in 0..LATER {
        client.expect(&format!("unary after-{i}"), "OK");
    }
    // Counts are checked after the content, so a failure shows both.
    let (spans, exit, _) = rig.collect_unchecked(agent, LATER, LATER);
    client.quit();
    let servers = of(&spans, KIND_SERVER, SERVER_SVC);
    let clients = of(&spans, KIND_CLIENT, CLIENT_SVC);
    let stats = exit.stats_line().to_owned();
    eprintln!("pre-existing channel: {} server, {} client spans; {stats}", servers.len(), clients.len());
    let garbage: Vec<String> = servers
        .iter()
        .chain(&clients)
        .filter_map(|s| plausible_unary(s, rig.port).err().map(|e| format!("{e}: {}", describe_rpc(&[(*s).clone()]))))
        .collect();
    assert!(garbage.is_empty(), "spans with invented values:\n{}", garbage.join("\n"));
    assert_eq!((servers.len(), clients.len()), (LATER, LATER), "{}\n{stats}", describe_rpc(&spans));
    for s in servers.iter().chain(&clients) {
        assert_eq!(s.attr_str("network.protocol.version"), "2", "{}", describe_rpc(&spans));
    }
    assert!(exit.stat("conns.preexisting") >= 1, "{stats}");
    assert!(exit.stat("h2.connections") >= 1, "{stats}");
    // grpcio's later HEADERS refer to dynamic-table entries the first call inserted.
    assert!(exit.stat("h2.unknown_field") > 0, "unknown HPACK references must be counted: {stats}");
    let unknown_pct = exit.stats().get("h2.unknown_pct").copied();
    eprintln!("h2.unknown_pct={unknown_pct:?}");
}

#[test]
fn nginx_h2c_twenty_requests_on_one_connection_give_twenty_server_spans() {
    require_root();
    let dir = TempDir::new("h2c");
    let port = free_port();
    let _nginx = Nginx::h2c_static(port);
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &["--port".into(), port.to_string(), "--output".into(), format!("jsonl:{}", jsonl.display())],
        &[],
    );
    let mut paths: Vec<String> = (1..=19).map(|i| format!("/f/{i}.txt")).collect();
    paths.insert(7, "/missing.txt".to_owned());
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    // curl 7.88.1 here cannot reuse a prior-knowledge connection (the second URL fails
    // with "Error in the HTTP2 framing layer"); h2load -c 1 -m 1 sends them one by one on
    // one connection.
    let report = h2load(port, &refs);
    assert_eq!((report.total, report.done, report.errored), (20, 20, 0), "{}", report.output);
    assert_eq!((report.status_2xx, report.status_4xx), (19, 1), "{}", report.output);

    let servers_of = |s: &[SpanRec]| s.iter().filter(|s| s.kind == KIND_SERVER && service_is(s, "nginx")).count();
    let complete = wait_for(Duration::from_secs(15), || (servers_of(&read_jsonl(&jsonl)) >= 20).then_some(()));
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert!(complete.is_some(), "want 20 nginx SERVER spans:\n{}\n{}", describe_rpc(&spans), exit.stats_line());
    let servers: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_SERVER && service_is(s, "nginx")).collect();
    assert_eq!(servers.len(), 20, "{}", describe_rpc(&spans));
    let got_paths: BTreeSet<String> = servers.iter().map(|s| s.attr_str("url.path")).collect();
    assert_eq!(got_paths, paths.iter().cloned().collect(), "{}", describe_rpc(&spans));
    for s in &servers {
        let want = if s.attr_str("url.path") == "/missing.txt" { 404 } else { 200 };
        assert_eq!(s.name, "GET");
        assert_eq!(s.attr_str("http.request.method"), "GET");
        assert_eq!(s.attr_int("http.response.status_code"), want, "{}", describe_rpc(&spans));
        assert_eq!(s.attr_str("network.protocol.version"), "2", "{}", describe_rpc(&spans));
        assert_eq!(s.attr_int("server.port"), i64::from(port));
        assert!(!is_error(s), "a 404 is not a server error: {}", describe_rpc(&spans));
        assert!(attr_opt(s, "rpc.system.name").is_none(), "nginx h2c is not gRPC: {}", describe_rpc(&spans));
    }
    let peer_ports: BTreeSet<i64> = servers.iter().map(|s| s.attr_int("network.peer.port")).collect();
    assert_eq!(peer_ports.len(), 1, "all 20 on one connection: {peer_ports:?}");
    // h2load is traced too: its 20 CLIENT spans are the server spans' socket parents.
    let clients: BTreeMap<&str, &SpanRec> = spans
        .iter()
        .filter(|s| s.kind == KIND_CLIENT && service_is(s, "h2load"))
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    assert_eq!(clients.len(), 20, "{}", describe_rpc(&spans));
    for s in &servers {
        let c = clients
            .get(s.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("no h2load parent:\n{}", describe_rpc(&spans)));
        assert_eq!(c.path(), s.path(), "{}", describe_rpc(&spans));
        assert_eq!(c.attr_int("http.response.status_code"), s.attr_int("http.response.status_code"));
        assert_eq!(is_error(c), s.attr_int("http.response.status_code") == 404, "a 404 is a client error");
        assert_socket_pair(c, s, &spans);
    }
    assert_eq!(exit.stat("drop.h2_connection_error"), 0, "{}", exit.stats_line());
}

/// One HTTP/2 frame header and payload.
fn raw_frame(kind: u8, flags: u8, stream: u32, len: u32, payload: &[u8]) -> Vec<u8> {
    let l = len.to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn hostile_http2_input_is_counted_and_reset_and_the_agent_goes_on() {
    use std::io::Write as _;
    let rig = GrpcRig::new("grpc-hostile");
    let agent = rig.agent();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = raw_frame(4, 0, 0, 0, &[]);
    let hostile: [(&str, Vec<u8>); 3] = [
        ("garbage after the preface", [&preface[..], &[0xde, 0xad, 0xbe, 0xef].repeat(64)].concat()),
        // A HEADERS frame that says 100 bytes and brings 10, then the end of the stream.
        ("a truncated frame", [&preface[..], &settings, &raw_frame(1, 0x4, 1, 100, &[0x82; 10])].concat()),
        // A HEADERS frame of 1 MiB: more than any SETTINGS_MAX_FRAME_SIZE allowed.
        (
            "an oversized HEADERS length",
            [&preface[..], &settings, &raw_frame(1, 0x4, 1, 1 << 20, &[0x82; 64])].concat(),
        ),
    ];
    for (what, bytes) in &hostile {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", rig.port)).expect("connect to the grpc server");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        let _ = s.shutdown(std::net::Shutdown::Write);
        // grpcio answers with its SETTINGS and a GOAWAY, or closes.
        let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
    }
    // The agent still traces a well-behaved call afterwards.
    let mut client = GrpcClient::start(rig.port, CLIENT_SVC);
    client.expect("unary after-the-garbage", "OK");
    let (spans, exit) = rig.collect(agent, 1, 1);
    client.quit();
    let servers = of(&spans, KIND_SERVER, SERVER_SVC);
    assert_eq!(servers.len(), 1, "only the real call is a span:\n{}", describe_rpc(&spans));
    assert_grpc_span(servers[0], "demo.Echo/Unary", rig.port, &spans);
    // Each hostile connection is a connection error at both of its ends: the grpc
    // server's socket and this test's own, which the port filter also traces.
    assert!(exit.stat("drop.h2_connection_error") >= 6, "{}", exit.stats_line());
    assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
}

#[test]
fn an_h2c_upgrade_continues_as_http2_on_the_same_connection() {
    require_root();
    let dir = TempDir::new("h2c-upgrade");
    let port = free_port();
    let mut server = Proc::spawn(
        "h2c_upgrade_server",
        std::process::Command::new(python())
            .arg(peers_dir().join("h2c_upgrade_server.py"))
            .args(["--port", &port.to_string()])
            .env("OTEL_SERVICE_NAME", "h2c-upgrade-server")
            .stdout(std::process::Stdio::null()),
    );
    wait_port(port, "h2c upgrade server");
    server.assert_running();
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &["--port".into(), port.to_string(), "--output".into(), format!("jsonl:{}", jsonl.display())],
        &[],
    );
    // curl asks for the upgrade on its first request (`Upgrade: h2c`), and sends the
    // second as stream 3 of the same connection.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version} %{num_connects}\\n",
            "--http2",
        ])
        .arg(format!("http://127.0.0.1:{port}/upgraded"))
        .arg(format!("http://127.0.0.1:{port}/missing"))
        .output()
        .expect("run curl");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(report, "200 2 1\n404 2 0\n", "curl: two HTTP/2 answers on one connection");
    let servers = |s: &[SpanRec]| s.iter().filter(|s| s.kind == KIND_SERVER).count();
    let _ = wait_for(Duration::from_secs(15), || (servers(&read_jsonl(&jsonl)) >= 2).then_some(()));
    let exit = agent.stop();
    let spans = read_jsonl(&jsonl);
    let mut paths: Vec<(String, i64)> = spans
        .iter()
        .filter(|s| s.kind == KIND_SERVER)
        .map(|s| (s.attr_str("url.path"), s.attr_int("http.response.status_code")))
        .collect();
    paths.sort();
    assert_eq!(paths, [("/missing".to_owned(), 404), ("/upgraded".to_owned(), 200)], "{}", describe(&spans));
    for s in &spans {
        // Both the upgraded request and the next one are HTTP/2 at both ends.
        assert_eq!(s.attr_str("network.protocol.version"), "2", "{}", describe(&spans));
        if s.kind == KIND_SERVER {
            let client = spans.iter().find(|c| c.kind == KIND_CLIENT && c.span_id == s.parent_span_id);
            assert!(client.is_some(), "each server span is the child of curl's: {}", describe(&spans));
            assert_eq!(s.attr_str("ghostwire.link"), "socket");
        }
    }
    assert_eq!(spans.len(), 4, "{}\n{}", describe(&spans), exit.stats_line());
}
