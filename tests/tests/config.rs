//! The configuration file through the real binary: a file's filter, output, sampling and
//! metrics settings take effect (with a flag over it), and a bad file stops the agent
//! with one line naming the key.
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ghostwire_tests::*;

#[test]
fn a_config_file_sets_filter_output_sampling_and_metrics_and_a_flag_wins_over_it() {
    require_root();
    let dir = TempDir::new("config");
    let [traced, ignored, metrics] = free_ports();
    let _traced = python_http11_server(traced, "config-traced", false);
    let _ignored = python_http11_server(ignored, "config-ignored", false);
    let jsonl = dir.path().join("spans.jsonl");
    let file = dir.path().join("ghostwire.yaml");
    // The file says ratio 0 (nothing kept); the flag says 1.
    std::fs::write(
        &file,
        format!(
            "filter: {{ ports: [{traced}] }}\noutputs: {{ jsonl: {} }}\nsampling: {{ ratio: 0.0 }}\n\
             metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\n",
            jsonl.display()
        ),
    )
    .unwrap();
    let args = ["--config".to_owned(), file.display().to_string(), "--sample-ratio".to_owned(), "1".to_owned()];
    let agent = Agent::start(&args, &[]);
    let ready = agent.stderr_text();
    assert!(ready.contains(&format!("JSONL to {}", jsonl.display())), "{ready}");
    assert!(ready.contains(&format!("metrics at http://127.0.0.1:{metrics}/metrics")), "{ready}");
    for (port, path) in [(traced, "/in-the-filter"), (ignored, "/outside-the-filter")] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (status, _) = http_get(addr, path, Duration::from_secs(10)).expect("GET");
        assert_eq!(status, 200);
    }
    let seen = wait_for(Duration::from_secs(10), || (read_jsonl(&jsonl).len() >= 2).then_some(()));
    let (status, body) =
        http_get(SocketAddr::from(([127, 0, 0, 1], metrics)), "/metrics", Duration::from_secs(5)).expect("scrape");
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    assert!(seen.is_some(), "two spans within 10 s:\n{}", exit.stats_line());
    let paths: Vec<_> = spans.iter().map(|s| s.path().unwrap_or_default()).collect();
    assert_eq!(paths, ["/in-the-filter", "/in-the-filter"], "only the filtered port, both ends, kept at ratio 1");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("http_server_request_duration_seconds_count"), "{text}");
}

#[test]
fn a_bad_config_file_is_one_line_naming_the_key() {
    let dir = TempDir::new("badconfig");
    let file = dir.path().join("ghostwire.yaml");
    for (text, says) in [
        ("sampling:\n  ratio: 0.5\n  keep_erors: true\n", "sampling.keep_erors: unknown field"),
        ("sampling: { ratio: 2 }\n", "sampling.ratio: 2 is out of range"),
        ("filter: { ports: [http] }\n", "filter.ports"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(agent_binary()).arg("--config").arg(&file).output().expect("run agent");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line:\n{stderr}");
        let want = format!("error: config file {}: {says}", file.display());
        assert!(lines[0].starts_with(&want), "want {want:?}, got {:?}", lines[0]);
    }
    let out = Command::new(agent_binary()).args(["--config", "/nonexistent.yaml"]).output().expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: cannot read the config file /nonexistent.yaml: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
