//! Sampling and metrics through a real two-hop legacy chain (this test → legacy_proxy.py
//! → http11_server.py, no SDK anywhere), traced by the real agent: the JSONL output says
//! which traces were kept, and `/metrics` what was counted (every request, sampled or
//! not).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ghostwire_tests::*;

const GATEWAY: &str = "sample-gateway";
const BACKEND: &str = "sample-backend";

struct Chain {
    _backend: Proc,
    _gateway: Proc,
    gateway: SocketAddr,
    ports: [u16; 2],
}

impl Chain {
    fn start() -> Self {
        let [gw, be] = free_ports();
        let backend = python_http11_server(be, BACKEND, false);
        let mut gateway = Proc::spawn(
            "legacy_proxy",
            Command::new("python3")
                .arg(peers_dir().join("legacy_proxy.py"))
                .arg(gw.to_string())
                .arg("127.0.0.1")
                .arg(be.to_string())
                .env("OTEL_SERVICE_NAME", GATEWAY),
        );
        wait_port(gw, "legacy proxy");
        gateway.assert_running();
        Self { _backend: backend, _gateway: gateway, gateway: SocketAddr::from(([127, 0, 0, 1], gw)), ports: [gw, be] }
    }

    fn agent(&self, jsonl: &std::path::Path, extra: &[&str]) -> Agent {
        let mut args = vec![];
        for p in self.ports {
            args.push("--port".to_owned());
            args.push(p.to_string());
        }
        args.push("--output".to_owned());
        args.push(format!("jsonl:{}", jsonl.display()));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Agent::start(&args, &[])
    }

    fn get(&self, path: &str) -> u16 {
        http_get(self.gateway, path, Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET {path}: {e}")).0
    }
}

/// Spans by trace id.
fn traces(spans: &[SpanRec]) -> BTreeMap<String, Vec<SpanRec>> {
    let mut t: BTreeMap<String, Vec<SpanRec>> = BTreeMap::new();
    for s in spans {
        t.entry(s.trace_id.clone()).or_default().push(s.clone());
    }
    t
}

/// The four spans of one request, each the child of the one before.
fn assert_complete(spans: &[SpanRec]) {
    let me = own_service_name();
    let find = |service: &str, kind: i64| -> SpanRec {
        let f: Vec<&SpanRec> = spans.iter().filter(|s| s.service() == service && s.kind == kind).collect();
        assert_eq!(f.len(), 1, "{service} kind {kind} in one trace:\n{}", describe(spans));
        f[0].clone()
    };
    assert_eq!(spans.len(), 4, "a kept trace is whole:\n{}", describe(spans));
    let root = find(&me, KIND_CLIENT);
    let gw_server = find(GATEWAY, KIND_SERVER);
    let gw_client = find(GATEWAY, KIND_CLIENT);
    let be_server = find(BACKEND, KIND_SERVER);
    assert_eq!(root.parent_span_id, "");
    assert_eq!(gw_server.parent_span_id, root.span_id);
    assert_eq!(gw_client.parent_span_id, gw_server.span_id);
    assert_eq!(be_server.parent_span_id, gw_client.span_id);
}

/// `name{labels} value` samples of a Prometheus text scrape.
fn scrape(addr: SocketAddr) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let (status, body) = http_get(addr, "/metrics", Duration::from_secs(10)).expect("scrape /metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("UTF-8 metrics");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (head, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once("=\"").expect("label");
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        out.push((name.to_owned(), map, value.parse().expect("value")));
    }
    out
}

fn sum(samples: &[(String, BTreeMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

/// A series' labels but `le`, sorted.
type Labels = Vec<(String, String)>;

/// Every histogram series: cumulative buckets, `+Inf` equal to `_count`.
fn assert_histograms_consistent(samples: &[(String, BTreeMap<String, String>, f64)]) {
    let mut series: BTreeMap<(String, Labels), Vec<(f64, f64)>> = BTreeMap::new();
    for (n, l, v) in samples {
        if let Some(base) = n.strip_suffix("_bucket") {
            let mut key: Labels = l.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            key.sort();
            let le = match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                x => x.parse().expect("le"),
            };
            series.entry((base.to_owned(), key)).or_default().push((le, *v));
        }
    }
    assert!(!series.is_empty());
    for ((base, key), mut buckets) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{base} {key:?}: buckets not cumulative");
        let labels: Vec<(&str, &str)> = key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let count = sum(samples, &format!("{base}_count"), &labels);
        let inf = buckets.last().expect("buckets").1;
        assert!(
            buckets.last().unwrap().0.is_infinite() && (inf - count).abs() < 0.5,
            "{base} {key:?}: +Inf {inf} != count {count}"
        );
        assert!(sum(samples, &format!("{base}_sum"), &labels) >= 0.0);
    }
}

#[test]
fn a_quarter_of_400_traces_is_kept_whole_and_metrics_count_all_400() {
    let dir = TempDir::new("sample-ratio");
    let chain = Chain::start();
    let jsonl = dir.path().join("spans.jsonl");
    let [mport] = free_ports();
    let maddr = SocketAddr::from(([127, 0, 0, 1], mport));
    let agent = chain.agent(&jsonl, &["--sample-ratio", "0.25", "--metrics-listen", &mport.to_string()]);
    for _ in 0..400 {
        assert_eq!(chain.get("/ok"), 200);
    }
    let counted = wait_for(Duration::from_secs(20), || {
        let s = scrape(maddr);
        (sum(&s, "ghostwire_spans_built_total", &[]) >= 1600.0).then_some(())
    });
    assert!(counted.is_some(), "1600 spans built within 20 s");
    // A scrape reads the families one after another while the pipeline runs: the one
    // that first saw the last span built may have read the graph just before it.
    // Everything is counted now; this scrape sees it all.
    std::thread::sleep(Duration::from_millis(500));
    let samples = scrape(maddr);
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    let spans = read_jsonl(&jsonl);
    let kept = traces(&spans);
    assert!((70..=132).contains(&kept.len()), "{} of 400 traces kept at 0.25", kept.len());
    // A trace is kept whole by its trace id. A span the linker failed to join (the
    // intermittent missed socket link, about 1 in 400 requests here, counted as
    // link.none) is its own trace and decided on its own id: at most 2 such fragments.
    let whole = kept.values().filter(|t| t.len() == 4).count();
    let fragments: Vec<&Vec<SpanRec>> = kept.values().filter(|t| t.len() != 4).collect();
    assert!(fragments.len() <= 2, "{} incomplete kept traces:\n{}", fragments.len(), describe(&spans));
    assert!(whole >= 70, "{whole} whole traces");
    for t in kept.values() {
        if t.len() == 4 {
            assert_complete(t);
        }
        for s in t {
            assert_eq!(s.attr_str("ghostwire.sampling.reason"), "head");
            assert_eq!(s.attr_str("ghostwire.link") == "none", s.parent_span_id.is_empty(), "only roots are unlinked");
        }
    }
    // Counted at each trace's root: 400, plus a fragment's own root if any.
    let decided = exit.stat("sample.kept.head") + exit.stat("sample.dropped.head");
    assert!((400..=402).contains(&decided), "{}", exit.stats_line());
    assert_eq!(exit.stat("spans.built"), 1600);
    assert_eq!(exit.stat("spans.exported") + exit.stat("drop.sampled_out"), 1600);

    // Every request counted, sampled or not.
    let server = "http_server_request_duration_seconds_count";
    assert_eq!(sum(&samples, server, &[("service_name", GATEWAY), ("http_route", "/ok")]), 400.0);
    assert_eq!(sum(&samples, server, &[("service_name", BACKEND), ("http_response_status_code", "200")]), 400.0);
    assert_eq!(sum(&samples, "http_client_request_duration_seconds_count", &[("service_name", GATEWAY)]), 400.0);
    let edge = [("client", GATEWAY), ("server", BACKEND)];
    assert_eq!(sum(&samples, "traces_service_graph_request_total", &edge), 400.0);
    assert_eq!(sum(&samples, "traces_service_graph_request_failed_total", &edge), 0.0);
    let me = own_service_name();
    assert_eq!(sum(&samples, "traces_service_graph_request_total", &[("client", &me), ("server", GATEWAY)]), 400.0);
    assert_histograms_consistent(&samples);
}

#[test]
fn tail_keeps_exactly_the_error_and_slow_traces_whole() {
    let dir = TempDir::new("sample-tail");
    let chain = Chain::start();
    let jsonl = dir.path().join("spans.jsonl");
    let [mport] = free_ports();
    let maddr = SocketAddr::from(([127, 0, 0, 1], mport));
    let agent = chain.agent(
        &jsonl,
        &[
            "--sample-ratio",
            "0",
            "--sample-keep-errors",
            "--sample-keep-slower-than",
            "300ms",
            "--metrics-listen",
            &mport.to_string(),
        ],
    );
    for i in 0..115 {
        let (path, want) = match i % 23 {
            0 | 7 => ("/boom", 500),
            11 => ("/slow?s=0.5", 200),
            _ => ("/ok", 200),
        };
        assert_eq!(chain.get(path), want, "{path}");
    }
    let counted = wait_for(Duration::from_secs(20), || {
        let s = scrape(maddr);
        (sum(&s, "ghostwire_spans_built_total", &[]) >= 460.0).then_some(())
    });
    assert!(counted.is_some(), "460 spans built within 20 s");
    // As above: a scrape after the last span was counted everywhere.
    std::thread::sleep(Duration::from_millis(500));
    let samples = scrape(maddr);
    // The last traces are decided one quiet period (1 s) after their last span.
    let _ = wait_for(Duration::from_secs(10), || {
        let t = traces(&read_jsonl(&jsonl));
        (t.len() >= 15 && t.values().all(|s| s.len() == 4)).then_some(())
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "{}", exit.stderr);
    let all = traces(&read_jsonl(&jsonl));
    // As in the ratio test, a span the linker missed (rare) is a trace of its own, kept
    // by the same rule if it failed or was slow: at most 2 such fragments.
    let (kept, fragments): (BTreeMap<_, _>, BTreeMap<_, _>) = all.into_iter().partition(|(_, t)| t.len() == 4);
    assert!(fragments.len() <= 2, "{} fragments:\n{}", fragments.len(), describe(&read_jsonl(&jsonl)));
    assert_eq!(kept.len(), 15, "exactly the 10 error and 5 slow traces:\n{}", describe(&read_jsonl(&jsonl)));
    let mut reasons = BTreeMap::new();
    for t in kept.values() {
        assert_complete(t);
        *reasons.entry(t[0].attr_str("ghostwire.sampling.reason")).or_insert(0) += 1;
        assert!(t
            .iter()
            .all(|s| s.attr_str("ghostwire.sampling.reason") == t[0].attr_str("ghostwire.sampling.reason")));
    }
    assert_eq!(reasons, BTreeMap::from([("error".to_owned(), 10), ("slow".to_owned(), 5)]));
    let frag = fragments.len() as u64;
    assert!((10..=10 + frag).contains(&exit.stat("sample.kept.error")), "{}", exit.stats_line());
    assert!((5..=5 + frag).contains(&exit.stat("sample.kept.slow")), "{}", exit.stats_line());
    assert!((100..=102).contains(&exit.stat("sample.dropped.head")), "{}", exit.stats_line());
    // Failures counted on the edge, whatever was sampled.
    let edge = [("client", GATEWAY), ("server", BACKEND)];
    assert_eq!(sum(&samples, "traces_service_graph_request_failed_total", &edge), 10.0);
    assert_eq!(sum(&samples, "traces_service_graph_request_total", &edge), 115.0);
    assert_histograms_consistent(&samples);
}
