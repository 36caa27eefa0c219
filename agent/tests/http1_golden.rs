//! Golden tests for the HTTP/1 parser on real captures.
//!
//! `tests/data/http1/*.cap` are real conversations between real peers on loopback (curl,
//! nginx, Python's http.server, Go's net/http, raw sockets), recorded by
//! `tests/data/http1/capture.py` (its header says how each one was made and describes the
//! file format). Each capture is parsed:
//!
//! * (a) one `feed` per recorded chunk, as the traced server (requests on ingress): the
//!   result is compared with the checked-in insta snapshot `snapshots/http1_golden__NAME.snap`;
//! * as the traced client (requests on egress): must be identical;
//! * (b) with one chunk cut at every byte boundary, and with chunks cut at random points
//!   (fixed seed): must be identical;
//! * (c) byte by byte: must be identical;
//! * (d) with only a 4 KiB prefix of each chunk captured, as the kernel does, the rest
//!   being a gap: must be identical (all bodies here are length-framed or chunk data);
//! * (e) with a 4 KiB prefix and a 1 KiB tail window of each longer chunk captured
//!   (`feed_syscall`), the middle being a gap: must be identical.
//!
//! Timings are reported as the index of the record that carried the byte (each record
//! is fed with its own `Timing`), so the snapshots show which chunk started and ended
//! each message. Snapshot changes: run with `INSTA_UPDATE=always`, then read the diff.
use std::path::PathBuf;

use ghostwire::protocol::http1::{Http1Session, ParseError};
use ghostwire::protocol::{Direction, Exchange, Headers, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MAGIC: &[u8] = b"# ghostwire-http1-capture v1\n";

mod common;

use common::{assert_same, boundary_points, record_of, timing, From, Record};

fn data_dir() -> PathBuf {
    common::data_dir("http1")
}

fn load(name: &str) -> Vec<Record> {
    common::load(&data_dir(), MAGIC, name)
}

fn direction(role: Role, from: From) -> Direction {
    let client_sent_is_request = true;
    let request_dir = role.request_direction();
    let other = match request_dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    if (from == From::Client) == client_sent_is_request {
        request_dir
    } else {
        other
    }
}

/// How the records are handed to the parser.
enum Feeding<'a> {
    /// Cut points inside record `i` of length `len` (sorted, within `1..len`).
    Cuts(&'a mut dyn FnMut(usize, usize) -> Vec<usize>),
    /// Only the first `n` bytes of each record are captured; the rest is a gap.
    Prefix(usize),
    /// The first `.0` and the last `.1` bytes of each record are captured (tail window);
    /// the middle is a gap.
    Windows(usize, usize),
}

struct Outcome {
    exchanges: Vec<Exchange>,
    errors: Vec<(usize, ParseError)>,
}

/// Feeds `records` (record `i` carrying `timing(first_index + i)`) into `session`.
fn feed(
    session: &mut Http1Session,
    role: Role,
    records: &[Record],
    first_index: usize,
    feeding: &mut Feeding<'_>,
    outcome: &mut Outcome,
) {
    for (k, rec) in records.iter().enumerate() {
        let i = first_index + k;
        let dir = direction(role, rec.from);
        let t = timing(i);
        let Some(data) = &rec.data else {
            session.eof(dir, t, &mut outcome.exchanges);
            continue;
        };
        let mut call = |piece: &[u8], total: usize| {
            if let Err(e) = session.feed(dir, piece, total, t, &mut outcome.exchanges) {
                outcome.errors.push((i, e));
            }
        };
        match feeding {
            Feeding::Prefix(n) => call(&data[..data.len().min(*n)], data.len()),
            Feeding::Windows(prefix, tail) if data.len() > *prefix + *tail => {
                let gap = (data.len() - *prefix - *tail) as u64;
                let tail = &data[data.len() - *tail..];
                if let Err(e) = session.feed_syscall(dir, &data[..*prefix], gap, tail, t, &mut outcome.exchanges) {
                    outcome.errors.push((i, e));
                }
            }
            Feeding::Windows(..) => call(data, data.len()),
            Feeding::Cuts(cuts) => {
                let mut start = 0;
                for end in cuts(i, data.len()).into_iter().chain([data.len()]) {
                    call(&data[start..end], end - start);
                    start = end;
                }
            }
        }
        assert!(session.buffered_bytes() <= 2 * ghostwire::protocol::http1::MAX_HEAD_BYTES);
    }
}

const REQUEST_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    "content-length",
    "transfer-encoding",
    "content-type",
    "expect",
    "connection",
    "upgrade",
    "if-modified-since",
];
const RESPONSE_HEADERS: &[&str] =
    &["server", "content-length", "transfer-encoding", "content-type", "connection", "upgrade", "trailer"];

fn selected(headers: &Headers, names: &[&str]) -> Vec<String> {
    headers.iter().filter(|(n, _)| names.contains(n)).map(|(n, v)| format!("{n}: {v}")).collect()
}

/// Error summary that depends neither on how the bytes were split nor on which side the
/// traced process is (the direction flips with the role; the message kind does not).
fn describe(e: &ParseError) -> String {
    match e {
        ParseError::MalformedHead { kind, reason, .. } => {
            format!("malformed {kind} head: {reason}")
        }
        ParseError::HeadTooLarge { kind, limit, .. } => format!("{kind} head over {limit} bytes"),
        ParseError::TooManyHeaders { kind, limit, .. } => {
            format!("{kind} head with over {limit} fields")
        }
        ParseError::GapInHead { kind, buffered, gap, .. } => {
            format!("gap of {gap} in {kind} head after {buffered} bytes")
        }
        ParseError::InvalidContentLength { kind, value, .. } => {
            format!("invalid Content-Length {value:?} in {kind}")
        }
        ParseError::UnsupportedTransferEncoding { value, .. } => {
            format!("unsupported Transfer-Encoding {value:?}")
        }
        ParseError::MalformedChunk { kind, reason, .. } => {
            format!("malformed chunked {kind} body: {reason}")
        }
        ParseError::UnexpectedResponse { status, .. } => {
            format!("response {status} with no pending request")
        }
        ParseError::TooManyPendingRequests { limit } => format!("over {limit} pending requests"),
        ParseError::HalfSeen { kind, .. } => format!("{kind} whose beginning was not seen"),
        // ParseError may grow variants; show them whole.
        #[allow(unreachable_patterns)]
        other => other.to_string(),
    }
}

fn exchange_json(e: &Exchange) -> Value {
    let mut v = json!({
        "request": {
            "method": e.request.method,
            "target": e.request.target,
            "version": format!("HTTP/1.{}", e.request.version_minor),
            "header_count": e.request.headers.len(),
            "headers": selected(&e.request.headers, REQUEST_HEADERS),
            "body_len": e.request.body_len,
        },
        "response": {
            "status": e.response.status,
            "version": format!("HTTP/1.{}", e.response.version_minor),
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
    // Only when set, so that snapshots without truncated heads do not mention it.
    if e.request.truncated {
        v["request"]["truncated"] = json!(true);
    }
    if e.response.truncated {
        v["response"]["truncated"] = json!(true);
    }
    v
}

fn outcome_json(records: &[Record], session: &Http1Session, o: &Outcome) -> Value {
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
    json!({
        "records": summary,
        "exchanges": o.exchanges.iter().map(exchange_json).collect::<Vec<_>>(),
        "errors": o.errors.iter().map(|(i, e)| json!({"record": i, "error": describe(e)})).collect::<Vec<_>>(),
        "pending_at_end": session.pending_requests(),
        "opaque": session.is_opaque(),
    })
}

fn run(records: &[Record], role: Role, mut feeding: Feeding<'_>) -> Value {
    let mut session = Http1Session::new(role);
    let mut outcome = Outcome { exchanges: Vec::new(), errors: Vec::new() };
    feed(&mut session, role, records, 0, &mut feeding, &mut outcome);
    outcome_json(records, &session, &outcome)
}

fn whole(records: &[Record], role: Role) -> Value {
    run(records, role, Feeding::Cuts(&mut |_, _| Vec::new()))
}

fn golden(name: &str) {
    let records = load(name);
    assert!(!records.is_empty());
    let expected = whole(&records, Role::Server);
    insta::assert_json_snapshot!(name, expected);

    // The traced process is the client: the same exchanges.
    assert_same("as client", &expected, &whole(&records, Role::Client));

    // (b) one record cut at one point, for every point.
    let mut rng = StdRng::seed_from_u64(0x0060_1de4);
    for (k, rec) in records.iter().enumerate() {
        let Some(data) = &rec.data else { continue };
        for p in boundary_points(data.len(), 1024, &mut rng) {
            let got = run(&records, Role::Server, Feeding::Cuts(&mut |i, _| if i == k { vec![p] } else { Vec::new() }));
            assert_same(&format!("record {k} cut at {p}"), &expected, &got);
        }
    }

    // (b) random cuts everywhere, fixed seed.
    let mut rng = StdRng::seed_from_u64(name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for round in 0..32 {
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

    // (d) the kernel captures a 4 KiB prefix of each syscall.
    let got = run(&records, Role::Server, Feeding::Prefix(4096));
    assert_same("4 KiB prefix + gap", &expected, &got);

    // (e) ... and a 1 KiB tail window of each longer syscall.
    let got = run(&records, Role::Server, Feeding::Windows(4096, 1024));
    assert_same("4 KiB prefix + gap + 1 KiB tail", &expected, &got);
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

golden_tests!(
    nginx_static,
    nginx_404,
    nginx_keepalive,
    nginx_large,
    nginx_head,
    nginx_304,
    nginx_pipelined,
    nginx_put_expect,
    nginx_garbage,
    python_http10_static,
    python_http10_eof,
    go_chunked,
    go_content_length,
    go_keepalive,
    go_expect_100,
    go_chunked_request,
    go_upgrade,
);

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

/// Garbage is an error, nginx's 400 answers no request (an error too), and parsing
/// resumes with the next valid request on the same session.
#[test]
fn garbage_then_recovery() {
    let garbage: Vec<Record> = load("nginx_garbage").into_iter().filter(|r| r.data.is_some()).collect();
    let valid = load("nginx_keepalive");
    for (label, cut_all) in [("whole", false), ("byte by byte", true)] {
        let mut session = Http1Session::new(Role::Server);
        let mut outcome = Outcome { exchanges: Vec::new(), errors: Vec::new() };
        let mut cuts = |_: usize, len: usize| -> Vec<usize> {
            if cut_all {
                (1..len).collect()
            } else {
                Vec::new()
            }
        };
        let mut feeding = Feeding::Cuts(&mut cuts);
        feed(&mut session, Role::Server, &garbage, 0, &mut feeding, &mut outcome);
        let errors: Vec<(usize, String)> = outcome.errors.iter().map(|(i, e)| (*i, describe(e))).collect();
        assert_eq!(
            errors,
            [
                (0, "malformed request head: invalid token in start line".to_owned()),
                (1, "response 400 with no pending request".to_owned()),
            ],
            "{label}"
        );
        assert!(matches!(outcome.errors[0].1, ParseError::MalformedHead { dir: Direction::Ingress, .. }));
        assert!(outcome.exchanges.is_empty(), "{label}");
        assert_eq!(session.pending_requests(), 0, "{label}");
        assert_eq!(session.buffered_bytes(), 0, "{label}");

        feed(&mut session, Role::Server, &valid, garbage.len(), &mut feeding, &mut outcome);
        assert_eq!(outcome.errors.len(), 2, "{label}: no new errors");
        let got: Vec<(String, String, u16, u64, u64)> = outcome
            .exchanges
            .iter()
            .map(|e| {
                (
                    e.request.method.clone(),
                    e.request.target.clone(),
                    e.response.status,
                    record_of(e.request_first),
                    record_of(e.response_last),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("GET".to_owned(), "/index.html".to_owned(), 200, 2, 3),
                ("GET".to_owned(), "/style.css".to_owned(), 200, 4, 5),
            ],
            "{label}"
        );
    }
}

/// With only 1 KiB of each syscall captured, a large Content-Length body is still skipped
/// exactly; a chunked body whose framing falls into the gap is reported approximately.
#[test]
fn small_kernel_prefix() {
    let records = load("nginx_large");
    assert_same(
        "nginx_large, 1 KiB prefix",
        &whole(&records, Role::Server),
        &run(&records, Role::Server, Feeding::Prefix(1024)),
    );

    let records = load("go_chunked_request");
    let exact = whole(&records, Role::Server);
    let cut = run(&records, Role::Server, Feeding::Prefix(1024));
    assert_eq!(cut["errors"], json!([]));
    assert_eq!(cut["exchanges"].as_array().map(Vec::len), Some(1));
    // Same request and response, pairing and timing...
    for field in ["method", "target", "headers"] {
        assert_eq!(cut["exchanges"][0]["request"][field], exact["exchanges"][0]["request"][field]);
    }
    assert_eq!(cut["exchanges"][0]["response"], exact["exchanges"][0]["response"]);
    assert_eq!(cut["exchanges"][0]["records"], exact["exchanges"][0]["records"]);
    // ...but the request body length counts the uncaptured bytes wholesale (chunk framing
    // included): within the framing overhead of the exact 3000.
    let approx = cut["exchanges"][0]["request"]["body_len"].as_u64().unwrap_or(0);
    assert!((3000..3000 + 16).contains(&approx), "{approx}");
}

/// Joined mid-stream at any record, or with any record lost: every exchange reported is
/// one of those of the complete run (same request, response, and records), never one
/// built from a message whose beginning was not seen.
#[test]
fn midstream_and_loss_report_only_true_exchanges() {
    for name in ALL {
        let records = load(name);
        let whole_run = whole(&records, Role::Server);
        let truth = whole_run["exchanges"].as_array().cloned().unwrap_or_default();
        let check = |what: &str, got: &[Exchange]| {
            for e in got {
                let e = exchange_json(e);
                assert!(truth.contains(&e), "{name}, {what}: {e:#}");
            }
        };
        for k in 0..records.len() {
            let mut outcome = Outcome { exchanges: Vec::new(), errors: Vec::new() };
            let mut session = Http1Session::new_midstream(Role::Server);
            let mut feeding = Feeding::Cuts(&mut |_, _| Vec::new());
            feed(&mut session, Role::Server, &records[k..], k, &mut feeding, &mut outcome);
            check(&format!("joined at record {k}"), &outcome.exchanges);
            if k == 0 {
                // Joined at the very beginning: every exchange (garbage at the start is
                // skipped as half seen rather than reported malformed).
                let got = outcome_json(&records, &session, &outcome);
                assert_same("joined at record 0", &whole_run["exchanges"], &got["exchanges"]);
            }

            let mut outcome = Outcome { exchanges: Vec::new(), errors: Vec::new() };
            let mut session = Http1Session::new(Role::Server);
            let mut feeding = Feeding::Cuts(&mut |_, _| Vec::new());
            feed(&mut session, Role::Server, &records[..k], 0, &mut feeding, &mut outcome);
            session.lost(direction(Role::Server, records[k].from), 0);
            feed(&mut session, Role::Server, &records[k + 1..], k + 1, &mut feeding, &mut outcome);
            check(&format!("record {k} lost"), &outcome.exchanges);
        }
    }
}
