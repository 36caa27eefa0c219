//! curl → nginx (reverse proxy) → Python http.server, traced by a real agent with real
//! kernel probes; the exact set of spans is checked from the agent's JSONL output.
use ghostwire_tests::*;

#[test]
fn curl_nginx_python_chain_yields_exactly_the_expected_spans() {
    require_root();
    let dir = TempDir::new("chain");
    let [proxy_port, backend_port] = free_ports();
    let _backend = python_backend(backend_port, "legacy-backend");
    let _nginx = Nginx::reverse_proxy(proxy_port, backend_port);
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &[
            "--port".into(),
            proxy_port.to_string(),
            "--port".into(),
            backend_port.to_string(),
            "--output".into(),
            format!("jsonl:{}", jsonl.display()),
        ],
        &[],
    );

    let cases = [("/ok", 200), ("/missing", 404), ("/boom", 500)];
    for (path, want) in cases {
        assert_eq!(curl(proxy_port, path), want, "curl {path} through nginx");
    }
    let spans = wait_for(std::time::Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        (s.len() >= 12).then_some(s)
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = spans.unwrap_or_else(|| read_jsonl(&jsonl));
    assert_eq!(spans.len(), 12, "want 4 spans per request, got:\n{}", describe(&spans));
    assert_eq!(exit.stat("drop.parse_error"), 0, "{}", exit.stderr);

    for (path, status) in cases {
        let by = |kind: i64, service: &str| -> SpanRec {
            let found: Vec<&SpanRec> = spans
                .iter()
                .filter(|s| {
                    s.kind == kind
                        && s.service() == service
                        && match kind {
                            KIND_SERVER => s.attr_str("url.path") == path,
                            _ => s.attr_str("url.full").ends_with(path),
                        }
                })
                .collect();
            assert_eq!(found.len(), 1, "{service} kind {kind} {path}:\n{}", describe(&spans));
            found[0].clone()
        };
        let curl_client = by(KIND_CLIENT, "curl");
        let proxy_server = by(KIND_SERVER, "nginx");
        let proxy_client = by(KIND_CLIENT, "nginx");
        let backend_server = by(KIND_SERVER, "legacy-backend");

        for s in [&curl_client, &proxy_server, &proxy_client, &backend_server] {
            assert_eq!(s.attr_str("http.request.method"), "GET");
            assert_eq!(s.name, "GET");
            assert_eq!(s.attr_int("http.response.status_code"), i64::from(status), "{s:#?}");
            assert_eq!(s.trace_id.len(), 32);
            assert_eq!(s.span_id.len(), 16);
            assert!(s.end_ns >= s.start_ns && s.start_ns > 0, "{s:#?}");
            assert!(s.resource.contains_key("process.pid") && s.resource.contains_key("host.name"));
            assert_eq!(s.resource.get("telemetry.sdk.name").and_then(|v| v.as_str()), Some("ghostwire"));
        }
        // Versions: curl and nginx's front speak 1.1; nginx speaks 1.0 upstream by default.
        assert_eq!(curl_client.attr_str("network.protocol.version"), "1.1");
        assert_eq!(proxy_server.attr_str("network.protocol.version"), "1.1");
        assert_eq!(proxy_client.attr_str("network.protocol.version"), "1.0");
        assert_eq!(backend_server.attr_str("network.protocol.version"), "1.0");

        // 4-tuples: each client socket is the reverse of the server socket it talks to.
        assert_eq!(curl_client.attr_int("network.peer.port"), i64::from(proxy_port));
        assert_eq!(proxy_server.attr_int("network.local.port"), i64::from(proxy_port));
        assert_eq!(proxy_server.attr_int("network.peer.port"), curl_client.attr_int("network.local.port"));
        assert_eq!(proxy_server.attr_int("client.port"), curl_client.attr_int("network.local.port"));
        assert_eq!(proxy_client.attr_int("network.peer.port"), i64::from(backend_port));
        assert_eq!(backend_server.attr_int("network.local.port"), i64::from(backend_port));
        assert_eq!(backend_server.attr_int("network.peer.port"), proxy_client.attr_int("network.local.port"));
        for s in [&curl_client, &proxy_server, &proxy_client, &backend_server] {
            assert_eq!(s.attr_str("network.peer.address"), "127.0.0.1");
            assert_eq!(s.attr_str("network.local.address"), "127.0.0.1");
        }
        assert_eq!(proxy_server.attr_int("server.port"), i64::from(proxy_port));
        assert_eq!(proxy_client.attr_str("url.full"), format!("http://127.0.0.1:{backend_port}{path}"));

        // The proxy's server span contains its client span.
        assert!(
            proxy_server.start_ns <= proxy_client.start_ns && proxy_client.end_ns <= proxy_server.end_ns,
            "nginx server [{}, {}] must contain its client span [{}, {}]",
            proxy_server.start_ns,
            proxy_server.end_ns,
            proxy_client.start_ns,
            proxy_client.end_ns
        );

        // Linking: nobody sent a header, yet each request is one trace. curl's call is
        // the root; nginx's server span is its child by socket; nginx's call is the child
        // of the request its thread handles; the backend's span is its child by socket.
        for s in [&proxy_server, &proxy_client, &backend_server] {
            assert_eq!(s.trace_id, curl_client.trace_id, "{path}: one trace:\n{}", describe(&spans));
        }
        assert_eq!(curl_client.parent_span_id, "");
        assert_eq!(curl_client.attr_str("ghostwire.link"), "none");
        assert_eq!(proxy_server.parent_span_id, curl_client.span_id);
        assert_eq!(proxy_server.attr_str("ghostwire.link"), "socket");
        assert_eq!(proxy_client.parent_span_id, proxy_server.span_id);
        assert_eq!(proxy_client.attr_str("ghostwire.link"), "thread");
        assert_eq!(backend_server.parent_span_id, proxy_client.span_id);
        assert_eq!(backend_server.attr_str("ghostwire.link"), "socket");
        // No context was ever received, so none was dropped.
        assert!(spans.iter().all(|s| !s.attributes.contains_key("ghostwire.propagation_break")));

        // Status: servers fail on 5xx only, clients on 4xx and 5xx.
        let server_error = status >= 500;
        let client_error = status >= 400;
        assert_eq!(proxy_server.status_code == STATUS_ERROR, server_error, "{path} nginx server status");
        assert_eq!(backend_server.status_code == STATUS_ERROR, server_error, "{path} backend server status");
        assert_eq!(proxy_client.status_code == STATUS_ERROR, client_error, "{path} nginx client status");
        assert_eq!(curl_client.status_code == STATUS_ERROR, client_error, "{path} curl client status");
        if client_error {
            assert_eq!(curl_client.attr_str("error.type"), status.to_string());
        }
    }
}

/// A legacy client that reads only the head of an error response: Python's urllib
/// raises `HTTPError` with the body unread, and the connection stays open until the
/// exception is collected. The client's span still comes, with the status it got, ended
/// at the last byte it read and marked incomplete, instead of being dropped as
/// unanswered.
#[test]
fn a_client_that_reads_only_the_head_of_an_error_still_gets_its_span() {
    require_root();
    let dir = TempDir::new("unread-body");
    let [port] = free_ports();
    // The body goes out 50 ms after the head, so the client's read holds the head alone.
    let server = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"error": "fraud check unavailable"}\n'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        time.sleep(0.05)
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    let client = r#"
import sys, time, urllib.error, urllib.request
kept = []
for i in range(5):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/score/{i}", timeout=5)
        sys.exit(f"request {i} did not fail")
    except urllib.error.HTTPError as e:
        assert e.code == 503, e.code
        kept.append(e)  # never read, never closed: open until the process exits
time.sleep(0.3)
"#;
    let _server = {
        let mut p = Proc::spawn(
            "server",
            std::process::Command::new("python3")
                .args(["-c", server, &port.to_string()])
                .env("OTEL_SERVICE_NAME", "fraud-check"),
        );
        wait_port(port, "python server");
        p.assert_running();
        p
    };
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &["--port".into(), port.to_string(), "--output".into(), format!("jsonl:{}", jsonl.display())],
        &[],
    );
    let out = std::process::Command::new("python3")
        .args(["-c", client, &port.to_string()])
        .env("OTEL_SERVICE_NAME", "payment")
        .output()
        .expect("run the client");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    let spans = wait_for(std::time::Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        (s.len() >= 10).then_some(s)
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = spans.unwrap_or_else(|| read_jsonl(&jsonl));
    let clients: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    let servers: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    assert_eq!((clients.len(), servers.len()), (5, 5), "{}", describe(&spans));
    for c in &clients {
        assert_eq!(c.service(), "payment");
        assert_eq!(c.attr_int("http.response.status_code"), 503, "{c:#?}");
        assert_eq!(c.attr_bool("ghostwire.response.incomplete"), Some(true), "{c:#?}");
        // Linked to the server's span for the same request, which wrote the whole body.
        let s = servers.iter().find(|s| s.parent_span_id == c.span_id).unwrap_or_else(|| panic!("{c:#?}"));
        assert_eq!(s.trace_id, c.trace_id);
        assert_eq!(s.attr_bool("ghostwire.response.incomplete"), None, "{s:#?}");
        // The client's span ends at the head it read, before the server's ends.
        assert!(c.end_ns < s.end_ns, "client {c:#?}\nserver {s:#?}");
    }
    assert_eq!(exit.stat("drop.unanswered_request"), 0, "{}", exit.stats_line());
    assert_eq!(exit.stat("http.response_incomplete"), 5, "{}", exit.stats_line());
}
