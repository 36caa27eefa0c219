//! The demo (`cargo xtask demo`, `xtask/demo/shop.py`): six legacy services, no SDK.
//! The load sends a `traceparent`; every hop forwards it except cart, and fraud-check
//! fails every 5th call here (`--fail-every 5`, the demo's default is 10 % at random).
//!
//! * `shop_traces_as_one_tree_per_request`: the agent's JSONL holds, for most requests,
//!   one trace in the loader's trace id with the whole chain in parent order, the break
//!   at cart → inventory marked, and the failing calls marked as errors.
//! * `xtask_demo_runs_and_cleans_up`: the user's command itself, short: the banner, the
//!   waterfall with the six services, a clean exit and no process left behind.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ghostwire_tests::*;

const ROLES: [&str; 6] = ["gateway", "auth", "cart", "inventory", "payment", "fraud-check"];
const REQUESTS: usize = 20;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shop_py() -> PathBuf {
    repo_root().join("xtask/demo/shop.py")
}

/// The six services on `ports` (in `ROLES` order), each named by `OTEL_SERVICE_NAME`.
fn start_shop(ports: &[u16; 6]) -> Vec<Proc> {
    let port = |role: &str| ports[ROLES.iter().position(|r| *r == role).expect("role")].to_string();
    let upstreams: BTreeMap<&str, &[&str]> = [
        ("gateway", &["auth", "cart", "payment"][..]),
        ("cart", &["inventory"][..]),
        ("payment", &["fraud-check"][..]),
    ]
    .into();
    let procs: Vec<Proc> = ROLES
        .iter()
        .map(|role| {
            let mut cmd = Command::new("python3");
            cmd.arg(shop_py()).arg(role).args(["--port", &port(role)]).env("OTEL_SERVICE_NAME", role);
            for up in upstreams.get(role).copied().unwrap_or_default() {
                cmd.arg("--upstream").arg(format!("{up}={}", port(up)));
            }
            if *role == "fraud-check" {
                cmd.args(["--fail-every", "5"]);
            }
            Proc::spawn(role, &mut cmd)
        })
        .collect();
    for (role, p) in ROLES.iter().zip(ports) {
        wait_port(*p, role);
    }
    procs
}

/// The tree one request should make, checked from gateway's SERVER span down; `Err`
/// says the first thing that is missing or wrong.
fn check_tree<'a>(root: &'a SpanRec, spans: &'a [SpanRec]) -> Result<BTreeMap<&'static str, &'a SpanRec>, String> {
    let trace: Vec<&SpanRec> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let child = |parent: &SpanRec, kind: i64, service: &str, path: &str| -> Result<&'a SpanRec, String> {
        let found: Vec<&&SpanRec> = trace
            .iter()
            .filter(|s| {
                s.parent_span_id == parent.span_id
                    && s.kind == kind
                    && s.service() == service
                    && s.path().is_some_and(|p| p.starts_with(path))
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(**one),
            other => Err(format!(
                "{} children of {} {} with kind {kind} service {service} path {path}",
                other.len(),
                parent.service(),
                parent.name
            )),
        }
    };
    let mut t = BTreeMap::new();
    t.insert("gateway", root);
    let verify = child(root, KIND_CLIENT, "gateway", "/verify")?;
    t.insert("auth", child(verify, KIND_SERVER, "auth", "/verify")?);
    let cart_call = child(root, KIND_CLIENT, "gateway", "/cart")?;
    let cart = child(cart_call, KIND_SERVER, "cart", "/cart")?;
    t.insert("cart", cart);
    let stock = child(cart, KIND_CLIENT, "cart", "/stock/")?;
    t.insert("cart→inventory", stock);
    t.insert("inventory", child(stock, KIND_SERVER, "inventory", "/stock/")?);
    let charge = child(root, KIND_CLIENT, "gateway", "/charge")?;
    t.insert("gateway→payment", charge);
    let payment = child(charge, KIND_SERVER, "payment", "/charge")?;
    t.insert("payment", payment);
    let score = child(payment, KIND_CLIENT, "payment", "/score")?;
    t.insert("fraud-check", child(score, KIND_SERVER, "fraud-check", "/score")?);
    if trace.len() != 11 {
        return Err(format!("{} spans in the trace, want 11", trace.len()));
    }
    Ok(t)
}

#[test]
fn shop_traces_as_one_tree_per_request() {
    require_root();
    let dir = TempDir::new("demo");
    let ports: [u16; 6] = free_ports();
    let jsonl = dir.path().join("spans.jsonl");
    let mut args = vec!["--output".to_owned(), format!("jsonl:{}", jsonl.display())];
    for p in ports {
        args.extend(["--port".to_owned(), p.to_string()]);
    }
    let agent = Agent::start(&args, &[]);
    let _shop = start_shop(&ports);

    let ids = dir.path().join("ids.txt");
    let out = Command::new("python3")
        .arg(shop_py())
        .args(["load", "--port", &ports[0].to_string(), "--seconds", "30", "--rate", "10"])
        .args(["--requests", &REQUESTS.to_string()])
        .arg("--ids")
        .arg(&ids)
        .env("OTEL_SERVICE_NAME", "load")
        .stdin(Stdio::null())
        .output()
        .expect("run the loader");
    let load_err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loader failed ({}): {load_err}", out.status);
    // Calls 5, 10, 15 and 20 to fraud-check fail, so 4 checkouts fail.
    assert_eq!(load_err.trim(), format!("load: {REQUESTS} requests, 16 ok, 4 failed"), "{load_err}");
    let sent: Vec<(String, String)> = std::fs::read_to_string(&ids)
        .expect("ids file")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, p)| (t.to_owned(), p.to_owned())))
        .collect();
    assert_eq!(sent.len(), REQUESTS, "one traceparent per request in {}", ids.display());

    // 11 spans per request (the loader's own CLIENT span is suppressed: it sends a
    // context of its own, as an SDK would).
    let _ = wait_for(Duration::from_secs(15), || (read_jsonl(&jsonl).len() >= 11 * REQUESTS).then_some(()));
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = read_jsonl(&jsonl);

    for role in ROLES {
        assert!(
            spans.iter().any(|s| s.kind == KIND_SERVER && s.service() == role),
            "no SERVER span from {role}:\n{}",
            describe(&spans)
        );
    }

    let mut complete = 0;
    let mut failed_checked = 0;
    let mut problems = Vec::new();
    for (trace_id, parent_id) in &sent {
        let roots: Vec<&SpanRec> = spans
            .iter()
            .filter(|s| s.kind == KIND_SERVER && s.service() == "gateway" && &s.trace_id == trace_id)
            .collect();
        let [root] = roots.as_slice() else {
            problems.push(format!("{trace_id}: {} gateway SERVER spans in the loader's trace", roots.len()));
            continue;
        };
        // The gateway joined the context the loader sent.
        assert_eq!(&root.parent_span_id, parent_id, "gateway's parent is the loader's span id: {root:#?}");
        assert_eq!(root.attr_str("ghostwire.link"), "header", "{root:#?}");
        let tree = match check_tree(root, &spans) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{trace_id}: {e}"));
                continue;
            }
        };
        // Only cart dropped the context: inventory's span repairs it and says who broke it.
        let inventory = tree["inventory"];
        assert_eq!(inventory.attr_bool("ghostwire.propagation_break"), Some(true), "{inventory:#?}");
        assert_eq!(inventory.attr_str("ghostwire.propagation_break.caller"), "cart", "{inventory:#?}");
        assert_eq!(inventory.attr_str("ghostwire.link"), "socket", "{inventory:#?}");
        for role in ["auth", "cart", "payment", "fraud-check"] {
            let s = tree[role];
            assert_eq!(s.attr_bool("ghostwire.propagation_break"), None, "{role} got the context: {s:#?}");
        }
        let fraud = tree["fraud-check"];
        let fraud_status = fraud.attr_int("http.response.status_code");
        let gateway_status = root.attr_int("http.response.status_code");
        if fraud_status == 503 {
            // The failure and every hop answering 502 over it are errors.
            for (role, status) in [("fraud-check", 503), ("payment", 502), ("gateway", 502)] {
                let s = tree[role];
                assert_eq!(s.attr_int("http.response.status_code"), status, "{role}: {s:#?}");
                assert_eq!(s.status_code, STATUS_ERROR, "{role} {status} must be an error: {s:#?}");
            }
            failed_checked += 1;
        } else {
            assert_eq!((fraud_status, gateway_status), (200, 200), "{root:#?}");
            assert_ne!(root.status_code, STATUS_ERROR, "{root:#?}");
        }
        complete += 1;
    }
    eprintln!("demo: {complete}/{REQUESTS} requests as one complete tree, {failed_checked} failing ones checked");
    assert!(
        complete * 10 >= REQUESTS * 8,
        "only {complete} of {REQUESTS} requests form the whole tree:\n{}\n\nspans:\n{}\n{}",
        problems.join("\n"),
        describe(&spans),
        exit.stats_line()
    );
    assert!(failed_checked >= 1, "no complete trace of a failed checkout:\n{}", problems.join("\n"));
    assert!(exit.stat("link.propagation_breaks") >= 16, "{}", exit.stats_line());
}

/// Processes whose command line names `needle`, but not this test process.
fn processes_naming(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
fn xtask_demo_runs_and_cleans_up() {
    require_root();
    let shop = shop_py().canonicalize().expect("shop.py");
    let shop = shop.to_string_lossy().into_owned();
    assert!(processes_naming(&shop).is_empty(), "demo processes before the run: {:?}", processes_naming(&shop));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let start = Instant::now();
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["xtask", "demo", "--seconds", "6", "--rate", "5", "--agent"])
        .arg(agent_binary())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo xtask demo");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("cargo xtask demo took {:.1} s", start.elapsed().as_secs_f64());
    let both = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "cargo xtask demo failed ({}):\n{both}", out.status);
    assert!(stderr.contains("ghostwire demo: six legacy services") && stderr.contains("Ctrl-C to stop"), "{both}");
    let load = stderr.lines().find(|l| l.starts_with("load: ")).unwrap_or_else(|| panic!("no load summary:\n{both}"));
    assert!(!load.starts_with("load: 0 requests"), "{load}");

    // The waterfall, then (on exit) the service map.
    let (waterfall, map) = stdout.split_once("── service map · ").unwrap_or_else(|| panic!("no service map:\n{both}"));
    let traces: Vec<&str> = waterfall.split("── trace ").skip(1).collect();
    assert!(traces.len() >= 10, "want a waterfall trace per request (~30), got {}:\n{both}", traces.len());
    for role in ROLES {
        let line = format!("  {role}  ");
        assert!(traces.iter().any(|t| t.contains(&line)), "no waterfall line for {role}:\n{stdout}");
    }
    // Most traces hold the whole chain, 11 spans.
    let whole = traces.iter().filter(|t| t.lines().next().is_some_and(|h| h.contains(" 11 spans "))).count();
    assert!(whole * 10 >= traces.len() * 8, "{whole} of {} traces have 11 spans:\n{stdout}", traces.len());

    // inventory sleeps 60-120 ms, every other hop takes a few: in each whole trace the
    // critical path runs through it and names cart → inventory as the dominant hop.
    for t in traces.iter().filter(|t| t.lines().next().is_some_and(|h| h.contains(" 11 spans "))) {
        let inventory = t.lines().find(|l| l.contains("  inventory  GET /stock")).unwrap_or_else(|| panic!("{t}"));
        assert!(inventory.contains('█'), "inventory's span is on the critical path:\n{t}");
        let auth = t.lines().find(|l| l.contains("  auth  GET /verify")).unwrap_or_else(|| panic!("{t}"));
        assert!(auth.contains('█'), "auth runs before cart, in sequence: on the path too:\n{t}");
        let last = t.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(
            last.starts_with("  █ critical path · ")
                && last.contains("% (")
                && last.contains(") in cart → inventory (GET /stock/"),
            "the dominant hop is cart → inventory:\n{t}"
        );
    }
    // The map: the five edges, every request's calls on each, the break on cart's alone.
    let map_lines: Vec<&str> = map.lines().collect();
    assert!(map_lines[0].starts_with("5 edges · 1 with propagation breaks"), "{map}");
    let requests: u64 = load
        .trim_start_matches("load: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("request count in {load}"));
    for (edge, breaks) in [
        ("gateway → auth ", false),
        ("gateway → cart ", false),
        ("cart → inventory ", true),
        ("gateway → payment ", false),
        ("payment → fraud-check ", false),
    ] {
        let line = map_lines
            .iter()
            .find(|l| l.trim_start().starts_with(edge))
            .unwrap_or_else(|| panic!("no edge {edge}in the map:\n{map}"));
        let calls: u64 = line
            .split_whitespace()
            .zip(line.split_whitespace().skip(1))
            .find(|(_, w)| *w == "calls")
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(calls * 10 >= requests * 9 && calls <= requests, "{requests} requests, {line}");
        assert!(line.contains(" p99 "), "{line}");
        let broken = format!("{calls} propagation breaks");
        assert_eq!(line.ends_with(&broken), breaks, "{line}");
    }

    let left = wait_for(Duration::from_secs(2), || processes_naming(&shop).is_empty().then_some(()));
    assert!(left.is_some(), "processes left after the demo: {:?}", processes_naming(&shop));
}
