//! The same spans reach a real collector (rotel) over OTLP/gRPC, also when the collector
//! only comes up after the agent started: the agent warns once, queues and retries.
use std::process::Command;
use std::time::Duration;

use ghostwire_tests::*;

#[test]
fn spans_arrive_in_rotel_over_otlp_grpc_after_the_collector_comes_up_late() {
    require_root();
    let dir = TempDir::new("rotel");
    let [proxy_port, backend_port, otlp_port, otlp_http_port] = free_ports();
    let _backend = python_backend(backend_port, "legacy-backend");
    let _nginx = Nginx::reverse_proxy(proxy_port, backend_port);
    let jsonl = dir.path().join("spans.jsonl");
    let received = dir.path().join("rotel.jsonl");

    // The agent starts first: its OTLP endpoint is not up yet.
    let agent = Agent::start(
        &[
            "--port".into(),
            proxy_port.to_string(),
            "--port".into(),
            backend_port.to_string(),
            "--output".into(),
            format!("jsonl:{}", jsonl.display()),
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://127.0.0.1:{otlp_port}"))],
    );
    assert_eq!(curl(proxy_port, "/ok"), 200);
    let warned = wait_for(Duration::from_secs(15), || {
        agent.stderr_text().lines().any(|l| l.contains("unreachable")).then_some(())
    });
    assert!(warned.is_some(), "no warning about the unreachable endpoint:\n{}", agent.stderr_text());

    let mut rotel = Proc::spawn(
        "rotel",
        Command::new(rotel_binary())
            .args(["start", "--exporter", "blackhole"])
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{otlp_port}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{otlp_http_port}"))
            .arg("--otlp-with-trace-processor")
            .arg(peers_dir().join("rotel_processor.py"))
            .env("GHOSTWIRE_ROTEL_OUT", &received),
    );
    wait_port(otlp_port, "rotel");
    assert_eq!(curl(proxy_port, "/boom"), 500);

    let got = wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() >= 8).then_some(lines)
    });
    rotel.assert_running();
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let got = got.unwrap_or_else(|| panic!("rotel received fewer than 8 spans:\n{}", exit.stderr));
    assert_eq!(got.len(), 8, "rotel spans: {got:#?}");

    // Exactly the spans of the JSONL output, with the same ids, kinds and services.
    let local = read_jsonl(&jsonl);
    assert_eq!(local.len(), 8, "{}", describe(&local));
    for s in &local {
        let twin = got
            .iter()
            .find(|g| g["span_id"] == s.span_id.as_str())
            .unwrap_or_else(|| panic!("span {} ({}) not received by rotel", s.span_id, s.name));
        assert_eq!(twin["trace_id"], s.trace_id.as_str());
        assert_eq!(twin["kind"], s.kind);
        assert_eq!(twin["name"], s.name.as_str());
        assert_eq!(twin["resource"]["service.name"], s.service().as_str());
        assert_eq!(twin["attributes"]["url.path"].as_str(), s.attributes.get("url.path").and_then(|v| v.as_str()));
    }
    let services: std::collections::BTreeSet<String> =
        got.iter().map(|g| g["resource"]["service.name"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(services, ["curl", "legacy-backend", "nginx"].map(String::from).into());
    assert!(exit.stat("export.errors") > 0, "the first attempts must have failed:\n{}", exit.stderr);
}
