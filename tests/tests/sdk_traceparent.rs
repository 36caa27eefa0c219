//! A request carrying `traceparent` from a Python OpenTelemetry SDK client: the legacy
//! server's span joins that trace, with the SDK's client span as its parent.
use std::process::Command;

use ghostwire_tests::*;

#[test]
fn server_span_joins_the_trace_of_an_sdk_client() {
    require_root();
    let dir = TempDir::new("sdk");
    let backend_port = free_port();
    let _backend = python_backend(backend_port, "legacy-backend");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &["--port".into(), backend_port.to_string(), "--output".into(), format!("jsonl:{}", jsonl.display())],
        &[],
    );
    let out = Command::new(python())
        .arg(peers_dir().join("sdk_client.py"))
        .arg(format!("http://127.0.0.1:{backend_port}/ok"))
        .output()
        .expect("run sdk_client.py");
    assert!(out.status.success(), "sdk client failed: {}", String::from_utf8_lossy(&out.stderr));
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sdk client prints JSON");
    let (trace_id, parent) =
        (sent["trace_id"].as_str().unwrap_or_default(), sent["span_id"].as_str().unwrap_or_default());
    assert_eq!(sent["status"], 200);

    let spans = wait_for(std::time::Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        s.iter().any(|s| s.kind == KIND_SERVER).then_some(s)
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(spans.is_some(), "no server span:\n{}", exit.stderr);
    // Everything the agent flushed at exit, so a late duplicate would show.
    let spans = read_jsonl(&jsonl);
    let servers: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    assert_eq!(servers.len(), 1, "{}", describe(&spans));
    let server = servers[0];
    assert_eq!(server.service(), "legacy-backend");
    assert_eq!(server.trace_id, trace_id, "server span must join the SDK's trace");
    assert_eq!(server.parent_span_id, parent, "server span's parent must be the SDK client span");
    assert_ne!(server.span_id, parent);
    assert_eq!(server.attr_str("ghostwire.link"), "header");
    assert_eq!(server.attr_str("ghostwire.context.format"), "w3c");
    // The SDK client exports its own CLIENT span: ghostwire must not make a second one
    // for that request (it would be a root of its own, in another trace), and says so.
    assert!(!spans.iter().any(|s| s.kind == KIND_CLIENT), "a duplicate CLIENT span:\n{}", describe(&spans));
    assert_eq!(spans.len(), 1, "{}", describe(&spans));
    assert!(exit.stat("spans.suppressed_instrumented") >= 1, "{}", exit.stats_line());
}

/// B3 (single and multi-header) and Jaeger contexts sent by a plain client are joined
/// too; W3C wins when several are present; `X-Request-Id` is recorded.
#[test]
fn b3_and_jaeger_contexts_are_joined_and_w3c_wins() {
    require_root();
    let dir = TempDir::new("formats");
    let port = free_port();
    let _backend = python_backend(port, "legacy-backend");
    let jsonl = dir.path().join("spans.jsonl");
    let agent = Agent::start(
        &["--port".into(), port.to_string(), "--output".into(), format!("jsonl:{}", jsonl.display())],
        &[],
    );
    let cases: [(&str, &[&str], &str, &str, &str); 4] = [
        (
            "/b3",
            &["b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"],
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
            "b3",
        ),
        (
            "/b3multi",
            &["X-B3-TraceId: 463ac35c9f6413ad", "X-B3-SpanId: a2fb4a1d1a96d312", "X-B3-Sampled: 1"],
            "0000000000000000463ac35c9f6413ad",
            "a2fb4a1d1a96d312",
            "b3multi",
        ),
        (
            "/jaeger",
            &["uber-trace-id: 6e0c63257de34c92bf9efcd03927272e:1f2d3c4b5a697887:0:1"],
            "6e0c63257de34c92bf9efcd03927272e",
            "1f2d3c4b5a697887",
            "jaeger",
        ),
        (
            "/all",
            &[
                "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
                "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "X-Request-Id: req-42",
            ],
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            "w3c",
        ),
    ];
    for (path, headers, ..) in &cases {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "--max-time", "10"]);
        for h in *headers {
            cmd.args(["-H", h]);
        }
        assert!(cmd.arg(format!("http://127.0.0.1:{port}{path}")).status().expect("curl").success());
    }
    let spans = wait_for(std::time::Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        (s.iter().filter(|s| s.kind == KIND_SERVER).count() >= 4).then_some(s)
    });
    let exit = agent.stop();
    let spans = spans.unwrap_or_else(|| panic!("{}", exit.stderr));
    for (path, _, trace_id, parent, format) in &cases {
        let server = spans
            .iter()
            .find(|s| s.kind == KIND_SERVER && s.attributes.get("url.path").and_then(|v| v.as_str()) == Some(path))
            .unwrap_or_else(|| panic!("no server span for {path}:\n{}", describe(&spans)));
        assert_eq!(&server.trace_id, trace_id, "{path}");
        assert_eq!(&server.parent_span_id, parent, "{path}");
        assert_eq!(server.attr_str("ghostwire.link"), "header", "{path}");
        assert_eq!(&server.attr_str("ghostwire.context.format"), format, "{path}");
        if *path == "/all" {
            assert_eq!(server.attr_str("http.request.header.x-request-id"), "req-42");
        }
    }
}
