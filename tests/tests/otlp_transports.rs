//! Both OTLP transports reach a real collector (rotel): OTLP/HTTP with protobuf and
//! OTLP/gRPC, plain and gzip-compressed, and over TLS with an auth header through a
//! real TLS-terminating gateway (nginx, with the test CA's certificate, answering 401
//! without the header) in front of rotel's receivers. Each agent run marks its spans
//! with a resource attribute from `OTEL_RESOURCE_ATTRIBUTES`, so what rotel got is
//! told apart run by run.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ghostwire_tests::*;

const TOKEN: &str = "Bearer s3cret-token";

/// The spans rotel recorded for run `run`.
fn received(path: &Path, run: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["resource"]["ghostwire.test.run"] == run)
        .collect()
}

struct Case {
    run: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// The gateway refuses it: nothing may arrive, and the agent says why in one line.
    refused: bool,
}

#[test]
fn http_protobuf_and_grpc_plain_gzip_and_tls_with_headers_reach_rotel() {
    require_root();
    let dir = TempDir::new("otlp-transports");
    let [backend_port, grpc_port, http_port, tls_grpc_port, tls_http_port] = free_ports();
    let _backend = python_backend(backend_port, "legacy-backend");
    let out = dir.path().join("rotel.jsonl");
    let mut rotel = Proc::spawn(
        "rotel",
        Command::new(rotel_binary())
            .args(["start", "--exporter", "blackhole"])
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--otlp-with-trace-processor")
            .arg(peers_dir().join("rotel_processor.py"))
            .env("GHOSTWIRE_ROTEL_OUT", &out),
    );
    wait_port(grpc_port, "rotel gRPC");
    wait_port(http_port, "rotel HTTP");

    // The TLS gateway: HTTPS (HTTP/1.1) → rotel's HTTP receiver, HTTPS with HTTP/2 →
    // its gRPC receiver; both want the token.
    let certs = tls_certs();
    let _gateway = Nginx::with_config(tls_http_port, |d| {
        format!(
            "{main}http {{\n  {defaults}\n\
             ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
             server {{\n    listen 127.0.0.1:{tls_http_port} ssl;\n\
               location /v1/traces {{\n      if ($http_authorization != \"{TOKEN}\") {{ return 401; }}\n\
                 proxy_http_version 1.1;\n      proxy_pass http://127.0.0.1:{http_port};\n    }}\n  }}\n\
             server {{\n    listen 127.0.0.1:{tls_grpc_port} ssl http2;\n\
               location / {{\n      if ($http_authorization != \"{TOKEN}\") {{ return 401; }}\n\
                 grpc_pass grpc://127.0.0.1:{grpc_port};\n    }}\n  }}\n}}\n",
            main = Nginx::main_context(d),
            defaults = Nginx::http_defaults(d),
            cert = certs.cert.display(),
            key = certs.key.display(),
        )
    });
    wait_port(tls_grpc_port, "nginx TLS gRPC gateway");
    let ca = certs.ca.display().to_string();

    let cases = [
        Case {
            run: "http-plain-gzip",
            args: vec![],
            env: vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
                // A base URL: /v1/traces is appended.
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{http_port}")),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
            ],
            refused: false,
        },
        Case {
            run: "grpc-plain-gzip",
            args: vec![
                "--otlp-endpoint".into(),
                format!("http://127.0.0.1:{grpc_port}"),
                "--otlp-compression".into(),
                "gzip".into(),
            ],
            env: vec![],
            refused: false,
        },
        Case {
            run: "http-tls-header",
            args: vec![
                "--otlp-protocol".into(),
                "http/protobuf".into(),
                // No path: /v1/traces is added.
                "--otlp-endpoint".into(),
                format!("https://localhost:{tls_http_port}"),
                "--otlp-certificate".into(),
                ca.clone(),
                "--otlp-header".into(),
                format!("Authorization={TOKEN}"),
            ],
            env: vec![],
            refused: false,
        },
        Case {
            run: "grpc-tls-header",
            args: vec![],
            env: vec![
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("https://127.0.0.1:{tls_grpc_port}")),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.clone()),
                // Percent-encoded, as the W3C baggage format of the variable says.
                ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization={}", TOKEN.replace(' ', "%20"))),
            ],
            refused: false,
        },
        Case {
            run: "http-tls-no-header",
            args: vec![
                "--otlp-protocol".into(),
                "http/protobuf".into(),
                "--otlp-endpoint".into(),
                format!("https://localhost:{tls_http_port}/v1/traces"),
                "--otlp-certificate".into(),
                ca.clone(),
            ],
            env: vec![],
            refused: true,
        },
    ];

    for case in &cases {
        let mut args = vec!["--port".into(), backend_port.to_string()];
        args.extend(case.args.iter().cloned());
        let attrs = format!("ghostwire.test.run={},k8s.cluster.name=test-cluster", case.run);
        let mut env: Vec<(&str, &str)> = case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("OTEL_RESOURCE_ATTRIBUTES", &attrs));
        let agent = Agent::start(&args, &env);
        for _ in 0..3 {
            assert_eq!(curl(backend_port, "/ok"), 200);
        }
        // curl's CLIENT and the backend's SERVER span per request.
        let got = wait_for(Duration::from_secs(if case.refused { 4 } else { 20 }), || {
            let got = received(&out, case.run);
            (got.len() >= 6).then_some(got)
        });
        rotel.assert_running();
        let exit = agent.stop();
        assert!(exit.status.success(), "{}: agent exit {}\n{}", case.run, exit.status, exit.stderr);
        if case.refused {
            assert!(got.is_none(), "{}: the gateway let spans through without the token", case.run);
            assert!(received(&out, case.run).is_empty(), "{}: spans arrived", case.run);
            let line = exit
                .stderr
                .lines()
                .find(|l| l.contains("rejected") && l.contains("Unauthenticated"))
                .unwrap_or_else(|| panic!("{}: no line about the refusal:\n{}", case.run, exit.stderr));
            assert!(line.contains("HTTP 401") && line.contains("--otlp-header"), "{}: {line}", case.run);
            assert!(exit.stat("drop.export_failed") >= 6, "{}: {}", case.run, exit.stats_line());
            assert_eq!(exit.stat("spans.exported"), 0, "{}: {}", case.run, exit.stats_line());
            continue;
        }
        let got = got.unwrap_or_else(|| {
            panic!("{}: rotel received fewer than 6 spans: {:?}\n{}", case.run, received(&out, case.run), exit.stderr)
        });
        // All of them, once each, and the agent counted them as exported.
        assert_eq!(got.len(), 6, "{}: {got:#?}", case.run);
        assert_eq!(exit.stat("spans.exported"), 6, "{}: {}", case.run, exit.stats_line());
        assert_eq!(exit.stat("export.errors"), 0, "{}: {}\n{}", case.run, exit.stats_line(), exit.stderr);
        let services: std::collections::BTreeSet<&str> =
            got.iter().map(|g| g["resource"]["service.name"].as_str().unwrap_or_default()).collect();
        assert_eq!(services, ["curl", "legacy-backend"].into(), "{}", case.run);
        for g in &got {
            // OTEL_RESOURCE_ATTRIBUTES adds node attributes; it does not rename services.
            assert_eq!(g["resource"]["k8s.cluster.name"], "test-cluster", "{}: {g}", case.run);
            let url = g["attributes"]["url.path"].as_str().or_else(|| g["attributes"]["url.full"].as_str());
            assert!(url.is_some_and(|u| u.ends_with("/ok")), "{}: {g}", case.run);
        }
    }
}
