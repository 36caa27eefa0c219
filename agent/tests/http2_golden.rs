//! Golden tests for the HTTP/2 session (framing, HPACK, streams, gRPC) on real captures.
//!
//! `tests/data/http2/*.cap` are real h2c conversations on loopback (curl, nghttp and
//! h2load against nginx; the legacy grpcio client and server), recorded by
//! `tests/data/http2/capture.py` (its header says how each was made; the file format is
//! that of the HTTP/1 captures with its own magic line). Each capture is parsed:
//!
//! * (a) one `feed_at` per recorded chunk, as the traced server (requests on ingress):
//!   the result is compared with the insta snapshot `snapshots/http2_golden__NAME.snap`;
//! * as the traced client (requests on egress): must be identical;
//! * (b) with one chunk cut at every byte boundary (a sample of them in chunks over
//!   4 KiB), and with chunks cut at random points (fixed seed): must be identical;
//! * (c) byte by byte: must be identical;
//! * (d) as the kernel captures it: a 4 KiB prefix and a 1 KiB tail of each longer chunk,
//!   the middle a gap: compared with its own snapshot `NAME_gap`, and every exchange it
//!   reports must be the whole run's exchange of that stream (gRPC counts may be lower);
//! * joined mid-stream at every record, and with every record lost: only true exchanges
//!   come out (what HPACK cannot know is marked unknown, never invented).
//!
//! Timings are reported as the index of the record that carried the byte, so the
//! snapshots show which chunk started and ended each message. Snapshot changes: run with
//! `INSTA_UPDATE=always`, then read the diff.
use std::path::PathBuf;

use ghostwire::protocol::http2::{Error, Http2Session, MAX_STREAMS};
use ghostwire::protocol::{Direction, Exchange, Headers, Output, Role, Started};
use ghostwire::stats::{self, Counter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MAGIC: &[u8] = b"# ghostwire-http2-capture v1\n";

mod common;

use common::{assert_same, boundary_points, record_of, timing, From, Record};

fn data_dir() -> PathBuf {
    common::data_dir("http2")
}

fn load(name: &str) -> Vec<Record> {
    common::load(&data_dir(), MAGIC, name)
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

fn direction(role: Role, from: From) -> Direction {
    match from {
        From::Client => role.request_direction(),
        From::Server => other(role.request_direction()),
    }
}

/// How the records are handed to the session.
enum Feeding<'a> {
    /// Cut points inside record `i` of length `len` (sorted, within `1..len`).
    Cuts(&'a mut dyn FnMut(usize, usize) -> Vec<usize>),
    /// The first `.0` and the last `.1` bytes of each record are captured (tail window);
    /// the middle is a gap.
    Windows(usize, usize),
}

#[derive(Default)]
struct Outcome {
    started: Vec<(Started, usize)>,
    exchanges: Vec<Exchange>,
    errors: Vec<(usize, Error)>,
}

/// Feeds `records[from..]` (record `i` carrying `timing(i)`) into `session`; `lost`: a
/// record that is not fed, reported as lost instead.
fn feed(
    session: &mut Http2Session,
    role: Role,
    records: &[Record],
    from: usize,
    lost: Option<usize>,
    feeding: &mut Feeding<'_>,
    outcome: &mut Outcome,
) {
    let mut pos = [0u64; 2];
    let index = |d: Direction| usize::from(d == Direction::Egress);
    for (i, rec) in records.iter().enumerate() {
        let dir = direction(role, rec.from);
        let t = timing(i);
        let Some(data) = &rec.data else {
            if i >= from {
                let mut out = Output::default();
                session.eof(dir, t, &mut out);
                collect(session, i, out, outcome);
            }
            continue;
        };
        if i < from {
            pos[index(dir)] += data.len() as u64;
            continue;
        }
        if Some(i) == lost {
            pos[index(dir)] += data.len() as u64;
            session.lost(dir, 0);
            continue;
        }
        let mut out = Output::default();
        let p = &mut pos[index(dir)];
        match feeding {
            Feeding::Windows(prefix, tail) if data.len() > *prefix + *tail => {
                let gap = (data.len() - *prefix - *tail) as u64;
                let tail = &data[data.len() - *tail..];
                if let Err(e) = session.feed_at(dir, *p, &data[..*prefix], gap, tail, t, &mut out) {
                    outcome.errors.push((i, e));
                }
                *p += data.len() as u64;
            }
            Feeding::Windows(..) => {
                if let Err(e) = session.feed_at(dir, *p, data, 0, &[], t, &mut out) {
                    outcome.errors.push((i, e));
                }
                *p += data.len() as u64;
            }
            Feeding::Cuts(cuts) => {
                let mut start = 0;
                for end in cuts(i, data.len()).into_iter().chain([data.len()]) {
                    if let Err(e) = session.feed_at(dir, *p, &data[start..end], 0, &[], t, &mut out) {
                        outcome.errors.push((i, e));
                    }
                    *p += (end - start) as u64;
                    start = end;
                }
            }
        }
        collect(session, i, out, outcome);
    }
}

/// Takes one call's output, checking what the connection layer relies on.
fn collect(session: &Http2Session, record: usize, out: Output, outcome: &mut Outcome) {
    for s in &out.started {
        // The head of a stream just started is readable, unless it already ended.
        match session.request(s.stream) {
            Some(r) => assert_eq!(r.stream_offset, s.offset),
            None => assert!(out.done.iter().any(|e| e.seq == s.stream), "stream {} started and gone", s.stream),
        }
    }
    assert!(session.pending_requests() <= MAX_STREAMS);
    outcome.started.extend(out.started.into_iter().map(|s| (s, record)));
    outcome.exchanges.extend(out.done);
}

const REQUEST_HEADERS: &[&str] =
    &["host", "user-agent", "content-type", "te", "grpc-timeout", "grpc-encoding", "traceparent", "x-request-id"];
const RESPONSE_HEADERS: &[&str] =
    &["server", "content-type", "content-length", "grpc-status", "grpc-message", "grpc-encoding"];

fn selected(headers: &Headers, names: &[&str]) -> Vec<String> {
    headers.iter().filter(|(n, _)| names.contains(n)).map(|(n, v)| format!("{n}: {v}")).collect()
}

/// Error summary that does not depend on the role (the direction flips with it).
fn describe(e: &Error) -> String {
    e.to_string()
}

fn exchange_json(role: Role, e: &Exchange) -> Value {
    let mut v = json!({
        "stream": e.seq,
        "request": {
            "method": e.request.method,
            "target": e.request.target,
            "offset": e.request.stream_offset,
            "header_count": e.request.headers.len(),
            "headers": selected(&e.request.headers, REQUEST_HEADERS),
            "body_len": e.request.body_len,
        },
        "response": {
            "status": e.response.status,
            "header_count": e.response.headers.len(),
            "headers": selected(&e.response.headers, RESPONSE_HEADERS),
            "body_len": e.response.body_len,
        },
        "records": {
            "request_first": record_of(e.request_first),
            "request_last": record_of(e.request_last),
            "response_first": record_of(e.response_first),
            "response_last": record_of(e.response_last),
        },
    });
    // Only when set, so that the ordinary case reads short.
    if e.request.truncated {
        v["request"]["truncated"] = json!(true);
    }
    if e.response.truncated {
        v["response"]["truncated"] = json!(true);
    }
    if let Some(h2) = &e.h2 {
        if let Some(g) = &h2.grpc {
            v["grpc"] = json!({
                "status": g.status,
                "request_messages": g.request_messages,
                "request_bytes": g.request_bytes,
                "response_messages": g.response_messages,
                "response_bytes": g.response_bytes,
            });
        }
        if let Some(r) = &h2.reset {
            let by = if r.dir == role.request_direction() { "client" } else { "server" };
            v["reset"] = json!({ "code": r.code, "goaway": r.goaway, "by": by });
        }
        let u = h2.unknown;
        if u.method || u.path || u.status {
            v["unknown"] = json!({ "method": u.method, "path": u.path, "status": u.status });
        }
    } else {
        v["h2"] = json!("missing");
    }
    v
}

fn outcome_json(role: Role, records: &[Record], session: &Http2Session, o: &Outcome) -> Value {
    let summary: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let tag = match r.from {
                From::Client => "client→server",
                From::Server => "server→client",
            };
            match &r.data {
                Some(d) => format!("{i}: {tag} {} bytes", d.len()),
                None => format!("{i}: {tag} EOF"),
            }
        })
        .collect();
    let started: Vec<Value> = o
        .started
        .iter()
        .map(|(s, record)| {
            assert_eq!(record_of(s.first), *record as u64, "a stream starts in the record that carried its HEADERS");
            json!({ "stream": s.stream, "offset": s.offset, "record": record })
        })
        .collect();
    json!({
        "records": summary,
        "started": started,
        "exchanges": o.exchanges.iter().map(|e| exchange_json(role, e)).collect::<Vec<_>>(),
        "errors": o.errors.iter().map(|(i, e)| json!({"record": i, "error": describe(e)})).collect::<Vec<_>>(),
        "pending_at_end": session.pending_requests(),
    })
}

fn run_from(
    records: &[Record],
    role: Role,
    midstream: bool,
    from: usize,
    lost: Option<usize>,
    feeding: Feeding<'_>,
) -> Value {
    let mut feeding = feeding;
    let mut session = if midstream { Http2Session::new_midstream(role) } else { Http2Session::new(role) };
    let mut outcome = Outcome::default();
    feed(&mut session, role, records, from, lost, &mut feeding, &mut outcome);
    outcome_json(role, records, &session, &outcome)
}

fn run(records: &[Record], role: Role, feeding: Feeding<'_>) -> Value {
    run_from(records, role, false, 0, None, feeding)
}

fn whole(records: &[Record], role: Role) -> Value {
    run(records, role, Feeding::Cuts(&mut |_, _| Vec::new()))
}

fn exchanges(v: &Value) -> Vec<Value> {
    v["exchanges"].as_array().cloned().unwrap_or_default()
}

fn golden(name: &str) {
    let records = load(name);
    assert!(!records.is_empty());
    let expected = whole(&records, Role::Server);
    insta::assert_json_snapshot!(name, expected);
    assert_eq!(expected["errors"], json!([]), "{name}: a real capture has no errors");
    assert!(!exchanges(&expected).is_empty(), "{name}: no exchanges");

    // The traced process is the client: the same exchanges.
    assert_same("as client", &expected, &whole(&records, Role::Client));

    // (b) one record cut at one point, for every point.
    let mut rng = StdRng::seed_from_u64(0x0060_1de4);
    for (k, rec) in records.iter().enumerate() {
        let Some(data) = &rec.data else { continue };
        for p in boundary_points(data.len(), 256, &mut rng) {
            let got = run(&records, Role::Server, Feeding::Cuts(&mut |i, _| if i == k { vec![p] } else { Vec::new() }));
            assert_same(&format!("record {k} cut at {p}"), &expected, &got);
        }
    }

    // (b) random cuts everywhere, fixed seed.
    let mut rng = StdRng::seed_from_u64(name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for round in 0..16 {
        let one_in = [2, 5, 17, 64, 400][round % 5];
        let mut cuts =
            |_: usize, len: usize| -> Vec<usize> { (1..len).filter(|_| rng.random_ratio(1, one_in)).collect() };
        let role = if round % 2 == 0 { Role::Server } else { Role::Client };
        let got = run(&records, role, Feeding::Cuts(&mut cuts));
        assert_same(&format!("random cuts, round {round}"), &expected, &got);
    }

    // (c) byte by byte.
    let got = run(&records, Role::Server, Feeding::Cuts(&mut |_, len| (1..len).collect()));
    assert_same("byte by byte", &expected, &got);

    // (d) the kernel's capture: a 4 KiB prefix and a 1 KiB tail window.
    let gap = run(&records, Role::Server, Feeding::Windows(4096, 1024));
    insta::assert_json_snapshot!(format!("{name}_gap"), gap);
    let truth = exchanges(&expected);
    for e in exchanges(&gap) {
        let Some(t) = truth.iter().find(|t| t["stream"] == e["stream"]) else {
            panic!("{name} with gaps: stream {} is not in the whole run", e["stream"]);
        };
        for field in ["request", "response"] {
            for key in ["method", "target", "status", "body_len", "headers"] {
                assert_eq!(e[field][key], t[field][key], "{name} with gaps: stream {} {field}.{key}", e["stream"]);
            }
        }
        assert_eq!(e["reset"], t["reset"]);
        assert_eq!(e["grpc"]["status"], t["grpc"]["status"]);
        for k in ["request_messages", "request_bytes", "response_messages", "response_bytes"] {
            assert!(e["grpc"][k].as_u64() <= t["grpc"][k].as_u64(), "{name} with gaps: {k}");
        }
    }
}

macro_rules! golden_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                golden(stringify!($name));
            }
        )*
        const ALL: &[&str] = &[$(stringify!($name)),*];
    };
}

golden_tests!(nginx_h2c, nginx_h2c_curl, grpc_unary, grpc_stream, grpc_many, h2_continuation, h2_reset, h2_goaway,);

#[test]
fn every_capture_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(data_dir())
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".cap").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = ALL.iter().map(|s| (*s).to_owned()).collect();
    tested.sort();
    assert_eq!(on_disk, tested);
}

/// What each capture is about, checked directly (the snapshots hold the rest).
#[test]
fn captures_show_what_they_were_made_for() {
    let ex = |name: &str| exchanges(&whole(&load(name), Role::Server));
    let status = |e: &Value| e["response"]["status"].as_u64().unwrap_or(0);
    let grpc = |e: &Value, k: &str| e["grpc"][k].as_u64();

    // nghttp: five requests in flight at once, one 404.
    let e = ex("nginx_h2c");
    assert_eq!(e.len(), 5);
    assert_eq!(e.iter().filter(|e| status(e) == 404).count(), 1);
    assert!(e.iter().all(|e| e["request"]["method"] == "GET"));

    // grpcio unary: OK, NOT_FOUND, INTERNAL (the errors are Trailers-Only).
    let e = ex("grpc_unary");
    let statuses: Vec<_> = e.iter().map(|e| grpc(e, "status")).collect();
    assert_eq!(statuses, [Some(0), Some(5), Some(13)]);
    assert!(e.iter().all(|e| e["request"]["target"] == "/demo.Echo/Unary"));
    assert!(e.iter().all(|e| grpc(e, "request_messages") == Some(1)));

    // Server streaming: five messages, then trailers.
    let e = ex("grpc_stream");
    assert_eq!(e.len(), 1);
    assert_eq!((grpc(&e[0], "response_messages"), grpc(&e[0], "status")), (Some(5), Some(0)));

    // 50 calls on one channel: every one with its method (the dynamic table is exact).
    let e = ex("grpc_many");
    assert_eq!(e.len(), 50);
    assert!(e.iter().all(|e| e["request"]["target"] == "/demo.Echo/Unary" && e["request"]["method"] == "POST"));
    assert!(e.iter().all(|e| e.get("unknown").is_none() && grpc(e, "status") == Some(0)));

    // A header block over one frame: reassembled from HEADERS + CONTINUATION.
    let e = ex("h2_continuation");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["request"]["target"], "/demo.Echo/Unary");
    assert_eq!(grpc(&e[0], "status"), Some(0));

    // Resets: a cancelled stream and a deadline, between two good calls.
    let e = ex("h2_reset");
    assert_eq!(e.len(), 4);
    assert!(e.iter().any(|e| e["reset"]["code"] == 8 && e["reset"]["by"] == "client"));
    assert!(
        e.first().and_then(|e| grpc(e, "status")) == Some(0) && e.last().and_then(|e| grpc(e, "status")) == Some(0)
    );

    // GOAWAY after the third request: three exchanges, nothing left pending.
    let w = whole(&load("h2_goaway"), Role::Server);
    assert_eq!(exchanges(&w).len(), 3);
    assert_eq!(w["pending_at_end"], 0);
}

/// Joined mid-stream at any record, or with any record lost: every exchange reported is
/// the whole run's exchange of that stream, except for what HPACK could not know, which
/// is marked unknown (empty method or path, status 0), never invented.
#[test]
fn midstream_and_loss_report_only_true_exchanges() {
    for name in ALL {
        let records = load(name);
        let truth = exchanges(&whole(&records, Role::Server));
        let check = |what: &str, got: &Value| {
            for e in exchanges(got) {
                let Some(t) = truth.iter().find(|t| t["stream"] == e["stream"]) else {
                    panic!("{name}, {what}: stream {} is not in the whole run", e["stream"]);
                };
                let unknown = |k: &str| e["unknown"][k] == true;
                for (field, key, flag) in
                    [("request", "method", "method"), ("request", "target", "path"), ("response", "status", "status")]
                {
                    if !unknown(flag) {
                        assert_eq!(e[field][key], t[field][key], "{name}, {what}: stream {}", e["stream"]);
                    }
                }
                for h in e["request"]["headers"].as_array().into_iter().flatten() {
                    assert!(t["request"]["headers"].as_array().is_some_and(|a| a.contains(h)), "{name}, {what}: {h}");
                }
                assert_eq!(e["records"], t["records"], "{name}, {what}: stream {}", e["stream"]);
            }
        };
        for k in 0..records.len() {
            let got = run_from(&records, Role::Server, true, k, None, Feeding::Cuts(&mut |_, _| Vec::new()));
            check(&format!("joined at record {k}"), &got);
            if k == 0 {
                // Joined at the very start, the preface resynchronises: the whole run.
                assert_same("joined at record 0", &Value::Array(truth.clone()), &got["exchanges"]);
            }
            let got = run_from(&records, Role::Server, false, 0, Some(k), Feeding::Cuts(&mut |_, _| Vec::new()));
            check(&format!("record {k} lost"), &got);
        }
    }
}

/// A channel opened before the agent: later calls still give exchanges, with their
/// method from the static table and the path where it decodes, and nothing invented.
#[test]
fn grpc_channel_joined_late_gives_exchanges() {
    let records = load("grpc_many");
    // Join at the record that carries the 25th request.
    let client: Vec<usize> = (0..records.len()).filter(|&i| records[i].from == From::Client).collect();
    let from = client[client.len() / 2];
    let unknown_before = stats::global().get(Counter::H2UnknownField);
    let got = run_from(&records, Role::Server, true, from, None, Feeding::Cuts(&mut |_, _| Vec::new()));
    let e = exchanges(&got);
    assert!(e.len() >= 15, "{} exchanges after joining at record {from}", e.len());
    for e in &e {
        assert_eq!((&e["request"]["method"], &e["response"]["status"]), (&json!("POST"), &json!(200)), "{e:#}");
        // grpcio sends `:path` as a dynamic-table entry inserted on the first call: it is
        // unknown, never invented.
        assert_eq!((&e["request"]["target"], &e["unknown"]["path"]), (&json!(""), &json!(true)), "{e:#}");
        // Content type and grpc-status are unseen entries too; grpc-message, a literal,
        // still says gRPC.
        assert!(e["grpc"].is_object(), "{e:#}");
        assert_eq!(e["grpc"]["request_messages"], 1);
    }
    assert!(got["errors"].as_array().is_some_and(Vec::is_empty), "{}", got["errors"]);
    // The fields that referred to unseen entries were counted (at least two per call:
    // `:path` and `content-type`; other tests only add to the counter).
    assert!(stats::global().get(Counter::H2UnknownField) >= unknown_before + 2 * e.len() as u64);
}
