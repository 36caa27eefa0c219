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
    let (trace_id, parent) = (sent["trace_id"].as_str().unwrap_or_default(), sent["span_id"].as_str().unwrap_or_default());
    assert_eq!(sent["status"], 200);

    let spans = wait_for(std::time::Duration::from_secs(10), || {
        let s = read_jsonl(&jsonl);
        s.iter().any(|s| s.kind == KIND_SERVER).then_some(s)
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    let spans = spans.unwrap_or_default();
    let servers: Vec<&SpanRec> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    assert_eq!(servers.len(), 1, "{}", describe(&spans));
    let server = servers[0];
    assert_eq!(server.service(), "legacy-backend");
    assert_eq!(server.trace_id, trace_id, "server span must join the SDK's trace");
    assert_eq!(server.parent_span_id, parent, "server span's parent must be the SDK client span");
    assert_ne!(server.span_id, parent);
    // The SDK client process is traced too: its CLIENT span stands on its own (the SDK
    // exports its own spans; suppressing such duplicates is the linker's job).
    assert!(spans.iter().all(|s| s.kind == KIND_SERVER || s.kind == KIND_CLIENT));
}
