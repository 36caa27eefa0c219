//! Span linking end to end, checked in a real stored backend (Arize Phoenix):
//!
//! curl → A (Flask + OpenTelemetry SDK) → B (legacy proxy, drops every header) → C (legacy
//! http.server). A exports its own SERVER and CLIENT spans; ghostwire must add B's SERVER
//! span (parent: A's CLIENT span, from `traceparent`, `ghostwire.link=header`), B's CLIENT
//! span (parent: B's SERVER span, same thread, `ghostwire.link=thread`) and C's SERVER
//! span (parent: B's CLIENT span, same connection, `ghostwire.link=socket`,
//! `ghostwire.propagation_break=true`: B received context and did not forward it), all in
//! A's trace, and nothing for A's SDK-instrumented process.
//!
//! Each test prints `linking: traces=N spans=M wrong_parent=K` on stderr (also without
//! `--nocapture`).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ghostwire_tests::*;
use serde_json::Value;

/// Services A, B, C and the namespaces they run in. Field order is drop order: the
/// processes go before their namespaces.
struct Chain {
    _a: Proc,
    b: Proc,
    c: Proc,
    a_pid: u32,
    a_port: u16,
    b_port: u16,
    c_port: u16,
    _veths: Vec<Veth>,
    _netns: Vec<Netns>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// A, B and C on 127.0.0.1.
    Loopback,
    /// A in the root namespace; B and C each in a namespace of its own: root ↔ B ↔ C.
    Namespaces,
}

impl Chain {
    fn start(topology: Topology, otlp: &str) -> Self {
        let [a_port, b_port, c_port] = free_ports();
        let peers = peers_dir();
        let loopback = Ipv4Addr::LOCALHOST;
        let (mut netns, mut veths) = (Vec::new(), Vec::new());
        // Where B listens (as seen from A) and where C listens (as seen from B).
        let (b_addr, c_addr, b_cmd, c_cmd) = match topology {
            Topology::Loopback => (loopback, loopback, Command::new("python3"), Command::new("python3")),
            Topology::Namespaces => {
                let (ns_b, ns_c) = (Netns::new(), Netns::new());
                let root_b = Veth::root_to(&ns_b);
                let b_c = Veth::between(&ns_b, &ns_c);
                let addrs = (root_b.b.addr, b_c.b.addr);
                let cmds = (ns_b.command("python3"), ns_c.command("python3"));
                eprintln!(
                    "namespaces: B in {} at {} (root end {}), C in {} at {} (B end {})",
                    ns_b.name(),
                    root_b.b.addr,
                    root_b.a.addr,
                    ns_c.name(),
                    b_c.b.addr,
                    b_c.a.addr
                );
                veths.extend([root_b, b_c]);
                netns.extend([ns_b, ns_c]);
                (addrs.0, addrs.1, cmds.0, cmds.1)
            }
        };
        let (mut b_cmd, mut c_cmd) = (b_cmd, c_cmd);
        let c = Proc::spawn(
            "C (backend.py)",
            c_cmd
                .arg(peers.join("backend.py"))
                .arg(c_port.to_string())
                .arg(c_addr.to_string())
                .env("OTEL_SERVICE_NAME", "svc-c"),
        );
        let b = Proc::spawn(
            "B (legacy_proxy.py)",
            b_cmd
                .arg(peers.join("legacy_proxy.py"))
                .arg(b_port.to_string())
                .arg(c_addr.to_string())
                .arg(c_port.to_string())
                .arg(b_addr.to_string())
                .env("OTEL_SERVICE_NAME", "svc-b"),
        );
        let a = Proc::spawn(
            "A (sdk_flask.py)",
            Command::new(python())
                .arg(peers.join("sdk_flask.py"))
                .arg(a_port.to_string())
                .arg(format!("http://{b_addr}:{b_port}"))
                .arg(otlp)
                .arg("127.0.0.1")
                .env("OTEL_SERVICE_NAME", "svc-a")
                // Flask's startup banner; errors still go to stderr.
                .stdout(std::process::Stdio::null()),
        );
        let a_pid = a.pid();
        match topology {
            Topology::Loopback => {
                wait_port(c_port, "C");
                wait_port(b_port, "B");
            }
            Topology::Namespaces => {
                netns[1].wait_port(SocketAddr::from((c_addr, c_port)), "C");
                netns[0].wait_port(SocketAddr::from((c_addr, c_port)), "C (from B's namespace)");
                let b_sock = SocketAddr::from((b_addr, b_port));
                let up = wait_for(Duration::from_secs(30), || {
                    std::net::TcpStream::connect_timeout(&b_sock, Duration::from_millis(500)).is_ok().then_some(())
                });
                assert!(up.is_some(), "B did not listen on {b_sock} (from the root namespace) within 30 s");
            }
        }
        wait_port(a_port, "A");
        Self { _a: a, b, c, a_pid, a_port, b_port, c_port, _veths: veths, _netns: netns }
    }

    fn agent_args(&self, otlp: &str, jsonl: &Path) -> Vec<String> {
        let mut args = Vec::new();
        for p in [self.a_port, self.b_port, self.c_port] {
            args.extend(["--port".to_owned(), p.to_string()]);
        }
        args.extend(["--otlp-endpoint".to_owned(), otlp.to_owned()]);
        args.extend(["--output".to_owned(), format!("jsonl:{}", jsonl.display())]);
        args
    }
}

/// One request through the chain: `/chain{suffix}` on A, `/work{suffix}` downstream.
#[derive(Clone, Debug)]
struct Request {
    suffix: String,
    /// A's trace (its Flask SERVER span), as A answered.
    trace_id: String,
}

impl Request {
    fn work_path(&self) -> String {
        format!("/work{}", self.suffix)
    }
}

/// `curl http://127.0.0.1:A/chain{suffix}` → A's trace id (asserting every hop said 200).
fn send(a_port: u16, suffix: &str) -> Result<Request, String> {
    let url = format!("http://127.0.0.1:{a_port}/chain{suffix}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .arg(&url)
        .output()
        .map_err(|e| format!("run curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
    if code != "200" {
        return Err(format!("{url}: HTTP {code} {body} {}", String::from_utf8_lossy(&out.stderr)));
    }
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{url}: not JSON ({e}): {body}"))?;
    let trace_id = v["trace_id"].as_str().unwrap_or_default().to_owned();
    if trace_id.len() != 32 || v["status"] != 200 {
        return Err(format!("{url}: unexpected answer {v}"));
    }
    Ok(Request { suffix: suffix.to_owned(), trace_id })
}

fn value_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The spans ghostwire must emit for one request, as found in its JSONL output.
struct GhostSpans {
    b_server: SpanRec,
    b_client: SpanRec,
    c_server: SpanRec,
}

fn is(s: &SpanRec, service: &str, kind: i64) -> bool {
    s.kind == kind && s.resource.get("service.name").and_then(Value::as_str) == Some(service)
}

fn path_of(s: &SpanRec) -> String {
    match s.kind {
        KIND_SERVER => value_text(s.attributes.get("url.path")),
        _ => {
            let full = value_text(s.attributes.get("url.full"));
            full.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default()
        }
    }
}

/// Ghostwire's spans of `req`, or what is missing.
fn ghost_spans(spans: &[SpanRec], req: &Request) -> Result<GhostSpans, String> {
    let path = req.work_path();
    let one = |service: &str, kind: i64, what: &str| -> Result<SpanRec, String> {
        let found: Vec<&SpanRec> = spans.iter().filter(|s| is(s, service, kind) && path_of(s) == path).collect();
        match found.as_slice() {
            [s] => Ok((*s).clone()),
            [] => Err(format!("no {what} span for {path} in the agent's JSONL")),
            many => {
                Err(format!("{} {what} spans for {path} in the agent's JSONL:\n{}", many.len(), describe_refs(many)))
            }
        }
    };
    Ok(GhostSpans {
        b_server: one("svc-b", KIND_SERVER, "B SERVER")?,
        b_client: one("svc-b", KIND_CLIENT, "B CLIENT")?,
        c_server: one("svc-c", KIND_SERVER, "C SERVER")?,
    })
}

fn describe_refs(spans: &[&SpanRec]) -> String {
    describe(&spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
}

/// Waits until the JSONL holds ghostwire's three spans for every request.
fn wait_ghost_spans(jsonl: &Path, reqs: &[Request], timeout: Duration) -> Vec<SpanRec> {
    wait_for(timeout, || {
        let spans = read_jsonl(jsonl);
        reqs.iter().all(|r| ghost_spans(&spans, r).is_ok()).then_some(spans)
    })
    .unwrap_or_else(|| read_jsonl(jsonl))
}

/// What the checks found.
#[derive(Default)]
struct Tally {
    traces: usize,
    spans: usize,
    wrong_parent: usize,
    failures: Vec<String>,
}

fn short(s: &PhoenixSpan) -> String {
    format!("{}({} parent={:?} attrs={})", s.name, s.span_id, s.parent_id, s.attributes)
}

/// Checks every request's trace in Phoenix against the expected five spans.
fn check(phoenix: &Phoenix, jsonl: &[SpanRec], reqs: &[Request], a_pid: u32) -> Tally {
    let mut t = Tally::default();
    // No span of A's (SDK-instrumented) process from ghostwire.
    let from_a: Vec<&SpanRec> = jsonl
        .iter()
        .filter(|s| {
            value_text(s.resource.get("process.pid")) == a_pid.to_string()
                || s.resource.get("service.name").and_then(Value::as_str) == Some("svc-a")
        })
        .collect();
    if !from_a.is_empty() {
        t.failures.push(format!(
            "ghostwire emitted {} span(s) for A's SDK-instrumented process (pid {a_pid}):\n{}",
            from_a.len(),
            describe_refs(&from_a)
        ));
    }
    let ghost_ids: BTreeSet<&str> = jsonl.iter().map(|s| s.span_id.as_str()).collect();
    // span id → the traces Phoenix lists it in.
    let mut seen_in: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut expected_trace: BTreeMap<String, String> = BTreeMap::new();

    for req in reqs {
        t.traces += 1;
        let tid = &req.trace_id;
        let stored = phoenix.spans(tid);
        for s in &stored {
            seen_in.entry(s.span_id.clone()).or_default().insert(s.trace_id.clone());
        }
        let by_id: BTreeMap<&str, &PhoenixSpan> = stored.iter().map(|s| (s.span_id.as_str(), s)).collect();
        let fail = |t: &mut Tally, m: String| t.failures.push(format!("trace {tid} ({}): {m}", req.work_path()));

        // A's own spans: the SDK SERVER span (root) and the SDK CLIENT span under it.
        let sdk: Vec<&PhoenixSpan> = stored.iter().filter(|s| !ghost_ids.contains(s.span_id.as_str())).collect();
        let a_server = sdk.iter().find(|s| s.parent_id.is_none()).copied();
        let a_client = a_server
            .and_then(|root| sdk.iter().find(|s| s.parent_id.as_deref() == Some(root.span_id.as_str())).copied());
        if sdk.len() != 2 || a_server.is_none() || a_client.is_none() {
            fail(
                &mut t,
                format!(
                    "want A's SDK SERVER (root) and CLIENT spans, Phoenix has these non-ghostwire spans: {}",
                    sdk.iter().map(|s| short(s)).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        // Counted once per expected span: missing, or with another parent.
        t.spans += 2;
        t.wrong_parent += usize::from(a_server.is_none()) + usize::from(a_client.is_none());

        let ghosts = match ghost_spans(jsonl, req) {
            Ok(g) => g,
            Err(e) => {
                fail(&mut t, e);
                t.spans += 3;
                t.wrong_parent += 3;
                continue;
            }
        };
        let expected: [(&str, &SpanRec, Option<&str>, &str); 3] = [
            ("B SERVER", &ghosts.b_server, a_client.map(|s| s.span_id.as_str()), "header"),
            ("B CLIENT", &ghosts.b_client, Some(ghosts.b_server.span_id.as_str()), "thread"),
            ("C SERVER", &ghosts.c_server, Some(ghosts.b_client.span_id.as_str()), "socket"),
        ];
        for (what, g, want_parent, want_link) in expected {
            t.spans += 1;
            expected_trace.insert(g.span_id.clone(), tid.clone());
            if g.trace_id != *tid {
                fail(&mut t, format!("{what} {} has trace id {} in the agent's JSONL", g.span_id, g.trace_id));
            }
            let Some(stored_span) = by_id.get(g.span_id.as_str()) else {
                t.wrong_parent += 1;
                let elsewhere = phoenix.spans(&g.trace_id);
                let where_ = if elsewhere.iter().any(|s| s.span_id == g.span_id) {
                    format!("Phoenix has it in trace {} (the agent's own trace id)", g.trace_id)
                } else {
                    "Phoenix does not have it at all".to_owned()
                };
                fail(&mut t, format!("{what} {} is not in this trace; {where_}", g.span_id));
                continue;
            };
            if want_parent.is_none() || stored_span.parent_id.as_deref() != want_parent {
                t.wrong_parent += 1;
                fail(&mut t, format!("{what} {}: parent {:?}, want {want_parent:?}", g.span_id, stored_span.parent_id));
            }
            if stored_span.attr_str("ghostwire.link") != Some(want_link) {
                fail(
                    &mut t,
                    format!(
                        "{what} {}: ghostwire.link={:?}, want {want_link:?}",
                        g.span_id,
                        stored_span.attr("ghostwire.link")
                    ),
                );
            }
            let brk = stored_span.attr_bool("ghostwire.propagation_break");
            let want_break = what == "C SERVER";
            if brk.unwrap_or(false) != want_break || (want_break && brk.is_none()) {
                fail(
                    &mut t,
                    format!(
                        "{what} {}: ghostwire.propagation_break={:?}, want {}",
                        g.span_id,
                        stored_span.attr("ghostwire.propagation_break"),
                        if want_break { "true" } else { "absent or false" }
                    ),
                );
            }
            // The edge that broke is named on the span: B called C without the context.
            if want_break && stored_span.attr_str("ghostwire.propagation_break.caller") != Some("svc-b") {
                fail(
                    &mut t,
                    format!(
                        "{what} {}: ghostwire.propagation_break.caller={:?}, want \"svc-b\"",
                        g.span_id,
                        stored_span.attr("ghostwire.propagation_break.caller")
                    ),
                );
            }
        }
        if stored.len() != 5 {
            fail(
                &mut t,
                format!(
                    "Phoenix holds {} spans, want 5: {}",
                    stored.len(),
                    stored.iter().map(short).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    // Every ghostwire span of these requests in exactly the trace it belongs to.
    for (span_id, want) in &expected_trace {
        if let Some(traces) = seen_in.get(span_id) {
            if traces.len() != 1 || !traces.contains(want) {
                t.failures.push(format!("span {span_id} found in traces {traces:?}, want only {want}"));
            }
        }
    }
    // Ghostwire spans of B and C that belong to none of the requests.
    let known: BTreeSet<&str> = expected_trace.keys().map(String::as_str).collect();
    let stray: Vec<&SpanRec> = jsonl
        .iter()
        .filter(|s| {
            let svc = s.resource.get("service.name").and_then(Value::as_str);
            matches!(svc, Some("svc-b" | "svc-c")) && !known.contains(s.span_id.as_str())
        })
        .collect();
    if !stray.is_empty() {
        t.failures.push(format!(
            "{} unexpected B/C span(s) in the agent's JSONL:\n{}",
            stray.len(),
            describe_refs(&stray)
        ));
    }
    t
}

/// Prints the tally line and the failures, then asserts.
fn report(t: &Tally, want_traces: usize) {
    // Straight to fd 2, not through eprintln!: libtest's capture would hide it on success.
    let _ =
        writeln!(std::io::stderr(), "linking: traces={} spans={} wrong_parent={}", t.traces, t.spans, t.wrong_parent);
    const SHOWN: usize = 40;
    for f in t.failures.iter().take(SHOWN) {
        eprintln!("  FAIL {f}");
    }
    if t.failures.len() > SHOWN {
        eprintln!("  ... and {} more", t.failures.len() - SHOWN);
    }
    assert_eq!(t.traces, want_traces, "traces checked");
    assert_eq!(t.spans, 5 * want_traces, "spans checked");
    assert!(
        t.wrong_parent == 0 && t.failures.is_empty(),
        "linking: traces={} spans={} wrong_parent={}; {} failure(s), first: {}",
        t.traces,
        t.spans,
        t.wrong_parent,
        t.failures.len(),
        t.failures.first().map_or("", String::as_str)
    );
}

/// The one Phoenix of this test binary: started by the first test that needs it (about
/// 18 s), shared by the rest (each looks only at its own trace ids), stopped at exit.
static PHOENIX: Mutex<Option<Phoenix>> = Mutex::new(None);

/// Exclusive use of the shared Phoenix while held (tests that use it run one at a time).
struct SharedPhoenix(MutexGuard<'static, Option<Phoenix>>);

impl SharedPhoenix {
    fn get() -> Self {
        let mut guard = PHOENIX.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(Phoenix::start());
            // Statics are never dropped: stop Phoenix (and remove its namespace) at exit.
            // SAFETY: registers a plain `extern "C" fn()` that takes no arguments.
            let rc = unsafe { libc::atexit(stop_shared_phoenix) };
            assert_eq!(rc, 0, "atexit");
        }
        Self(guard)
    }
}

extern "C" fn stop_shared_phoenix() {
    let phoenix = PHOENIX.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(phoenix);
}

impl std::ops::Deref for SharedPhoenix {
    type Target = Phoenix;
    fn deref(&self) -> &Phoenix {
        self.0.as_ref().unwrap_or_else(|| panic!("shared Phoenix not started"))
    }
}

impl std::ops::DerefMut for SharedPhoenix {
    fn deref_mut(&mut self) -> &mut Phoenix {
        self.0.as_mut().unwrap_or_else(|| panic!("shared Phoenix not started"))
    }
}

/// Phoenix up, the chain up, the agent running.
struct Rig {
    chain: Chain,
    agent: Option<Agent>,
    phoenix: SharedPhoenix,
    jsonl: std::path::PathBuf,
    _dir: TempDir,
    t0: Instant,
}

impl Rig {
    fn start(topology: Topology) -> Self {
        require_root();
        let t0 = Instant::now();
        let dir = TempDir::new("linking");
        let phoenix = SharedPhoenix::get();
        let otlp = phoenix.otlp_grpc_endpoint();
        let chain = Chain::start(topology, &otlp);
        let jsonl = dir.path().join("spans.jsonl");
        let agent = Agent::start(&chain.agent_args(&otlp, &jsonl), &[]);
        eprintln!("rig up in {:.1} s", t0.elapsed().as_secs_f64());
        Self { chain, agent: Some(agent), phoenix, jsonl, _dir: dir, t0 }
    }

    /// Stops the agent (flushing its exports) and checks everything before linking:
    /// the services answered, A's SDK spans are in Phoenix under A's trace id, and the
    /// agent's JSONL has B's and C's spans for every request. Then the linking checks.
    fn finish(mut self, reqs: &[Request]) {
        let t = Instant::now();
        let jsonl = wait_ghost_spans(&self.jsonl, reqs, Duration::from_secs(20));
        let exit = self.agent.take().expect("agent running").stop();
        assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
        // Each request broke the chain once, on the edge B -> C, and the stats say so.
        assert_eq!(exit.stat("break.svc-b->svc-c"), reqs.len() as u64, "{}", exit.stderr);
        assert!(exit.stat("spans.suppressed_instrumented") >= 2 * reqs.len() as u64, "{}", exit.stderr);
        self.chain.b.assert_running();
        self.chain.c.assert_running();
        self.phoenix.assert_running();

        // Stage 1: A's SDK spans reached Phoenix and are queryable by trace id.
        let deadline = Instant::now() + Duration::from_secs(30);
        let counts: Vec<usize> = loop {
            let counts: Vec<usize> = reqs.iter().map(|r| self.phoenix.spans(&r.trace_id).len()).collect();
            // Wait for the complete traces; before linking works only A's two spans
            // (plus maybe B's server span) arrive, so give up after the deadline.
            if counts.iter().all(|&n| n >= 5) || Instant::now() >= deadline {
                break counts;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let too_few: Vec<(&str, usize)> =
            reqs.iter().zip(&counts).filter(|(_, &n)| n < 2).map(|(r, &n)| (r.trace_id.as_str(), n)).collect();
        assert!(
            too_few.is_empty(),
            "A's SDK spans missing in Phoenix (trace, spans): {too_few:?}\n{}",
            self.phoenix.log_tail()
        );

        // Stage 2: the agent emitted B's and C's spans for every request.
        let missing: Vec<String> = reqs.iter().filter_map(|r| ghost_spans(&jsonl, r).err()).collect();
        assert!(
            missing.is_empty(),
            "agent JSONL lacks spans ({} of {} requests), first: {}\n{}",
            missing.len(),
            reqs.len(),
            missing[0],
            describe(&jsonl)
        );
        eprintln!(
            "collected in {:.1} s: {} agent spans, Phoenix span counts per trace: min {} max {}",
            t.elapsed().as_secs_f64(),
            jsonl.len(),
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0)
        );

        // Stage 3: linking.
        let tally = check(&self.phoenix, &jsonl, reqs, self.chain.a_pid);
        eprintln!("test took {:.1} s", self.t0.elapsed().as_secs_f64());
        report(&tally, reqs.len());
    }
}

#[test]
fn sdk_service_then_legacy_proxy_then_legacy_server_form_one_trace() {
    let rig = Rig::start(Topology::Loopback);
    let req = send(rig.chain.a_port, "").unwrap_or_else(|e| panic!("request through the chain: {e}"));
    eprintln!("A's trace: {}", req.trace_id);
    rig.finish(&[req]);
}

#[test]
fn chain_across_network_namespaces_forms_one_trace() {
    let rig = Rig::start(Topology::Namespaces);
    let req = send(rig.chain.a_port, "").unwrap_or_else(|e| panic!("request through the chain: {e}"));
    eprintln!("A's trace: {}", req.trace_id);
    rig.finish(&[req]);
}

#[test]
fn concurrent_requests_each_form_their_own_complete_trace() {
    const SEQUENTIAL: usize = 10;
    const CONCURRENT: usize = 50;
    const WORKERS: usize = 8;
    let rig = Rig::start(Topology::Loopback);
    let a_port = rig.chain.a_port;
    let t = Instant::now();
    let mut reqs = Vec::new();
    for i in 0..SEQUENTIAL {
        reqs.push(send(a_port, &format!("/{i}")).unwrap_or_else(|e| panic!("sequential request {i}: {e}")));
    }
    let sequential_s = t.elapsed().as_secs_f64();

    // A bounded pool: WORKERS threads, CONCURRENT requests, 120 s at most.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let next = AtomicUsize::new(SEQUENTIAL);
    let results: Mutex<Vec<Result<Request, String>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SEQUENTIAL + CONCURRENT {
                    return;
                }
                let r = if Instant::now() < deadline {
                    send(a_port, &format!("/{i}"))
                } else {
                    Err(format!("request {i} not sent: 120 s budget spent"))
                };
                results.lock().expect("results").push(r);
            });
        }
    });
    let results = results.into_inner().expect("results");
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "{} of {CONCURRENT} concurrent requests failed: {errors:?}", errors.len());
    reqs.extend(results.into_iter().filter_map(Result::ok));
    eprintln!(
        "{SEQUENTIAL} sequential requests in {sequential_s:.1} s, {CONCURRENT} concurrent ({WORKERS} at a time) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let distinct: BTreeSet<&str> = reqs.iter().map(|r| r.trace_id.as_str()).collect();
    assert_eq!(distinct.len(), reqs.len(), "A answered the same trace id for two requests");
    rig.finish(&reqs);
}

/// One line of `sdk_grpc_client.py`: the trace and CLIENT span its SDK made for a call.
struct SdkCall {
    trace_id: String,
    span_id: String,
}

/// An SDK-instrumented gRPC client (OTLP to Phoenix) → the legacy grpcio server
/// (`/demo.Echo/Chain`) → the legacy HTTP/1 backend is one trace in Phoenix: the SDK's
/// CLIENT span → ghostwire's SERVER span of the gRPC server (link header, from the
/// `traceparent` metadata) → ghostwire's CLIENT span of its HTTP call (link thread or
/// process: the handler thread of grpcio's pool makes the call) → ghostwire's SERVER
/// span of the backend (link socket; the gRPC server dropped the context).
#[test]
fn sdk_grpc_client_then_legacy_grpc_server_then_legacy_http_server_form_one_trace() {
    const PATH: &str = "work/grpc";
    require_root();
    let t0 = Instant::now();
    let dir = TempDir::new("linking-grpc");
    let mut phoenix = SharedPhoenix::get();
    let otlp = phoenix.otlp_grpc_endpoint();
    let [grpc_port, backend_port] = free_ports();
    let _backend = python_backend(backend_port, "grpc-chain-backend");
    let _server = grpc_server(grpc_port, Some(backend_port), "grpc-chain-server");
    let jsonl = dir.path().join("spans.jsonl");
    let mut args = Vec::new();
    for p in [grpc_port, backend_port] {
        args.extend(["--port".to_owned(), p.to_string()]);
    }
    args.extend(["--otlp-endpoint".to_owned(), otlp.clone()]);
    args.extend(["--output".to_owned(), format!("jsonl:{}", jsonl.display())]);
    let agent = Agent::start(&args, &[]);

    let out = Command::new(python())
        .arg(peers_dir().join("sdk_grpc_client.py"))
        .args(["--port", &grpc_port.to_string(), "--endpoint", &otlp, "--service-name", "sdk-grpc-client"])
        .args(["--path", PATH])
        .env("OTEL_SERVICE_NAME", "sdk-grpc-client")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run sdk_grpc_client.py: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "sdk_grpc_client.py: {}\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    let calls: Vec<SdkCall> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| SdkCall { trace_id: value_text(v.get("trace_id")), span_id: value_text(v.get("span_id")) })
        .collect();
    assert_eq!(calls.len(), 1, "one call, one JSON line: {text}");
    let call = &calls[0];
    assert!(call.trace_id.len() == 32 && call.span_id.len() == 16, "{text}");
    eprintln!("SDK trace: {} (client span {})", call.trace_id, call.span_id);

    let backend_path = format!("/{PATH}");
    let find = |spans: &[SpanRec], service: &str, kind: i64| -> Option<SpanRec> {
        let found: Vec<&SpanRec> = spans
            .iter()
            .filter(|s| is(s, service, kind))
            .filter(|s| match (service, kind) {
                ("grpc-chain-server", KIND_SERVER) => s.name == "demo.Echo/Chain",
                _ => s.path().as_deref() == Some(backend_path.as_str()),
            })
            .collect();
        (found.len() == 1).then(|| found[0].clone())
    };
    let all_three = |spans: &[SpanRec]| {
        Some((
            find(spans, "grpc-chain-server", KIND_SERVER)?,
            find(spans, "grpc-chain-server", KIND_CLIENT)?,
            find(spans, "grpc-chain-backend", KIND_SERVER)?,
        ))
    };
    let found = wait_for(Duration::from_secs(20), || all_three(&read_jsonl(&jsonl)));
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = read_jsonl(&jsonl);
    let Some((grpc_server_span, grpc_client_span, backend_span)) = found else {
        panic!(
            "want the gRPC server's SERVER and CLIENT spans and the backend's SERVER span, the agent wrote:\n{}\n{}",
            describe_rpc(&spans),
            exit.stats_line()
        );
    };
    let sdk_spans: Vec<&SpanRec> = spans.iter().filter(|s| is(s, "sdk-grpc-client", s.kind)).collect();
    assert!(sdk_spans.is_empty(), "no ghostwire span for the SDK-instrumented client:\n{}", describe_refs(&sdk_spans));
    assert_eq!(grpc_server_span.attr_str("rpc.method"), "demo.Echo/Chain");
    assert_eq!(grpc_server_span.attr_str("rpc.response.status_code"), "OK");
    phoenix.assert_running();

    // Phoenix: the SDK span and the three ghostwire spans, in the SDK's trace.
    let stored = phoenix.wait_spans(&call.trace_id, 4, Duration::from_secs(30));
    let shown = stored.iter().map(short).collect::<Vec<_>>().join("\n  ");
    let by_id: BTreeMap<&str, &PhoenixSpan> = stored.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let sdk = by_id.get(call.span_id.as_str()).unwrap_or_else(|| panic!("SDK span not in Phoenix:\n  {shown}"));
    assert_eq!(sdk.parent_id, None, "the SDK client span is the root:\n  {shown}");
    let expected = [
        ("gRPC server SERVER", &grpc_server_span, call.span_id.as_str(), &["header"][..]),
        ("gRPC server CLIENT", &grpc_client_span, grpc_server_span.span_id.as_str(), &["thread", "process"][..]),
        ("backend SERVER", &backend_span, grpc_client_span.span_id.as_str(), &["socket"][..]),
    ];
    let mut failures = Vec::new();
    for (what, g, parent, links) in expected {
        if g.trace_id != call.trace_id {
            failures.push(format!("{what} {} has trace {} in the JSONL", g.span_id, g.trace_id));
        }
        let Some(s) = by_id.get(g.span_id.as_str()) else {
            failures.push(format!("{what} {} not in the SDK's trace in Phoenix", g.span_id));
            continue;
        };
        if s.parent_id.as_deref() != Some(parent) {
            failures.push(format!("{what} {}: parent {:?}, want {parent}", g.span_id, s.parent_id));
        }
        if !s.attr_str("ghostwire.link").is_some_and(|l| links.contains(&l)) {
            failures.push(format!(
                "{what} {}: ghostwire.link={:?}, want one of {links:?}",
                g.span_id,
                s.attr("ghostwire.link")
            ));
        }
    }
    // The gRPC server received a context and did not pass it on.
    if backend_span.attr_bool("ghostwire.propagation_break") != Some(true) {
        failures.push(format!(
            "backend SERVER: ghostwire.propagation_break={:?}, want true",
            backend_span.attributes.get("ghostwire.propagation_break")
        ));
    }
    if stored.len() != 4 {
        failures.push(format!("Phoenix holds {} spans in the trace, want 4", stored.len()));
    }
    eprintln!("grpc linking test took {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "trace {}:\n  {}\nPhoenix:\n  {shown}\nagent:\n{}",
        call.trace_id,
        failures.join("\n  "),
        describe_rpc(&spans)
    );
}
