//! Golden tests for the TLS record scanner on real handshakes.
//!
//! `tests/data/tls/*.cap` are real TLS 1.2 and 1.3 conversations on loopback (`openssl
//! s_client` and curl against `openssl s_server -www`), recorded by
//! `tests/data/tls/capture.py` (its header says how). Each capture is replayed as the
//! traced server sees it (client bytes on ingress) and must give the version its name
//! says, and application data: whole chunks, every chunk cut at every byte boundary (a
//! sample in chunks over 4 KiB), one read per record header and per record body (as
//! OpenSSL reads), byte by byte, and with gaps (kernel-style prefix and tail windows).
//! The first bytes of every HTTP/1 and HTTP/2 capture must not look like TLS. Through
//! the connection table, at both ends, the ciphertext gives no request and no exchange.
use ghostwire::capture::{Conn, ConnId, Data, Event, Payload, State, StateChange};
use ghostwire::conn::{ConnKey, ConnMeta, ConnSink, ConnTable, ExchangeRecord, ListenTable, ReqKey};
use ghostwire::protocol::tls::{is_record_start, Scanner, Version};
use ghostwire::protocol::{Direction, Request, Role};
use ghostwire::stats::{self, Counter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;

use common::{boundary_points, From, Record};

const MAGIC: &[u8] = b"# ghostwire-tls-capture v1\n";

const CAPTURES: &[(&str, Version)] = &[
    ("s_client_tls13", Version::Tls13),
    ("s_client_tls12", Version::Tls12),
    ("curl_tls13", Version::Tls13),
    ("curl_tls12", Version::Tls12),
];

fn load(name: &str) -> Vec<Record> {
    common::load(&common::data_dir("tls"), MAGIC, name)
}

fn dir(from: From) -> Direction {
    match from {
        From::Client => Direction::Ingress,
        From::Server => Direction::Egress,
    }
}

/// Feeds every record, each cut into the pieces `cut` returns (lengths summing to it).
fn replay(records: &[Record], mut cut: impl FnMut(usize, &[u8]) -> Vec<usize>) -> Scanner {
    let mut s = Scanner::new();
    for (i, r) in records.iter().enumerate() {
        let Some(data) = &r.data else { continue };
        let mut at = 0;
        for len in cut(i, data) {
            s.feed(dir(r.from), &data[at..at + len], 0, &[]);
            at += len;
        }
        assert_eq!(at, data.len());
    }
    s
}

fn check(name: &str, what: &str, s: &Scanner, want: Version) {
    assert_eq!(s.version(), Some(want), "{name}: {what}");
    assert!(s.app_data(), "{name}: {what}: application data not noticed");
    assert!(s.buffered_bytes() <= ghostwire::protocol::tls::MAX_HELLO_BYTES);
}

#[test]
fn whole_chunks_give_the_version() {
    for &(name, want) in CAPTURES {
        let records = load(name);
        check(name, "whole chunks", &replay(&records, |_, d| vec![d.len()]), want);
        // The first bytes each side sends are a record start.
        for from in [From::Client, From::Server] {
            let first = records.iter().find(|r| r.from == from).and_then(|r| r.data.as_deref());
            assert!(is_record_start(first.unwrap_or_default()), "{name}: {from:?}");
        }
    }
}

#[test]
fn every_cut_gives_the_same_result() {
    let mut rng = StdRng::seed_from_u64(8);
    for &(name, want) in CAPTURES {
        let records = load(name);
        for (i, r) in records.iter().enumerate() {
            let Some(data) = &r.data else { continue };
            for p in boundary_points(data.len(), 512, &mut rng) {
                let s = replay(&records, |j, d| if j == i { vec![p, d.len() - p] } else { vec![d.len()] });
                check(name, &format!("record {i} cut at {p}"), &s, want);
            }
        }
        // Random cuts in every record at once.
        for round in 0..50 {
            let s = replay(&records, |_, d| {
                let mut left = d.len();
                let mut v = Vec::new();
                while left > 0 {
                    let n = rng.random_range(1..=left.min(300));
                    v.push(n);
                    left -= n;
                }
                v
            });
            check(name, &format!("random cuts, round {round}"), &s, want);
        }
        let s = replay(&records, |_, d| vec![1; d.len()]);
        check(name, "byte by byte", &s, want);
    }
}

/// Each direction's byte stream re-cut as OpenSSL reads it: the 5-byte header, then
/// the body, one read each.
#[test]
fn one_read_per_record_header_and_body() {
    for &(name, want) in CAPTURES {
        let records = load(name);
        let mut s = Scanner::new();
        for from in [From::Client, From::Server] {
            let stream: Vec<u8> =
                records.iter().filter(|r| r.from == from).filter_map(|r| r.data.clone()).flatten().collect();
            let mut rest = &stream[..];
            while rest.len() >= 5 {
                assert!(is_record_start(rest), "{name}: {from:?}: not a record at a record boundary");
                let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
                s.feed(dir(from), &rest[..5], 0, &[]);
                let body = &rest[5..(5 + len).min(rest.len())];
                s.feed(dir(from), body, 0, &[]);
                rest = &rest[5 + body.len()..];
            }
            assert!(rest.is_empty(), "{name}: {from:?}: trailing bytes");
        }
        check(name, "one read per header and body", &s, want);
    }
}

#[test]
fn gaps_and_losses_never_invent_a_version() {
    for &(name, want) in CAPTURES {
        let records = load(name);
        // Kernel-style windows: the first 200 bytes (the ServerHello is in them) and
        // the last 32 of every chunk, the middle a gap.
        let mut s = Scanner::new();
        for r in &records {
            let Some(d) = &r.data else { continue };
            if d.len() > 232 {
                s.feed(dir(r.from), &d[..200], (d.len() - 232) as u64, &d[d.len() - 32..]);
            } else {
                s.feed(dir(r.from), d, 0, &[]);
            }
        }
        assert_eq!(s.version(), Some(want), "{name}: windows");
        // The server's first chunk lost: no version, whatever follows.
        let mut s = Scanner::new();
        let mut lost = false;
        for r in &records {
            let Some(d) = &r.data else { continue };
            if r.from == From::Server && !lost {
                lost = true;
                s.lost(Direction::Egress);
                continue;
            }
            s.feed(dir(r.from), d, 0, &[]);
        }
        assert_eq!(s.version(), None, "{name}: ServerHello lost");
        // Only the ServerHello's first bytes: nothing concluded either.
        let server = records.iter().find(|r| r.from == From::Server).and_then(|r| r.data.as_deref()).unwrap();
        let mut s = Scanner::new();
        s.feed(Direction::Egress, &server[..60], (server.len() - 60) as u64, &[]);
        assert_eq!(s.version(), None, "{name}: ServerHello cut");
    }
}

#[test]
fn http_captures_do_not_look_like_tls() {
    let mut seen = 0;
    for (proto, magic) in
        [("http1", &b"# ghostwire-http1-capture v1\n"[..]), ("http2", &b"# ghostwire-http2-capture v1\n"[..])]
    {
        let dir = common::data_dir(proto);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(".cap").map(str::to_owned))
            .collect();
        names.sort();
        for name in names {
            let records = common::load(&dir, magic, &name);
            for from in [From::Client, From::Server] {
                // Every chunk: a chunk of a connection joined mid-stream is a first one.
                for r in records.iter().filter(|r| r.from == from) {
                    let Some(d) = &r.data else { continue };
                    // Bodies may be anything (nginx_large is pseudo-random): only chunks
                    // that start a message must not pass.
                    if d.starts_with(b"HTTP/")
                        || d.starts_with(b"PRI ")
                        || d.first().is_some_and(u8::is_ascii_uppercase)
                    {
                        assert!(!is_record_start(d), "{proto}/{name}: {from:?}");
                        seen += 1;
                    }
                }
                let first = records.iter().find(|r| r.from == from).and_then(|r| r.data.as_deref());
                assert!(!is_record_start(first.unwrap_or_default()), "{proto}/{name}: first {from:?} chunk");
            }
        }
    }
    assert!(seen > 20, "only {seen} chunks looked at");
}

#[derive(Default)]
struct Sink {
    started: usize,
    exchanges: usize,
    closed: usize,
}

impl ConnSink for Sink {
    fn request_started(&mut self, _: ReqKey, _: &ConnMeta, _: ghostwire::conn::Start, _: &Request) {
        self.started += 1;
    }
    fn exchange(&mut self, _: ExchangeRecord) {
        self.exchanges += 1;
    }
    fn connection_closed(&mut self, _: ConnKey, _: &ConnMeta) {
        self.closed += 1;
    }
}

#[test]
fn ciphertext_through_the_connection_table_gives_nothing_to_parse() {
    let s = stats::global();
    for &(name, _) in CAPTURES {
        let records = load(name);
        for role in [Role::Server, Role::Client] {
            let before = [Counter::TlsConns, Counter::TlsUndecryptedConns].map(|c| s.get(c));
            let id = ConnId { sock: 0xabc, gen: 1 };
            let mut table = ConnTable::new(4, ListenTable::default());
            let mut sink = Sink::default();
            table.on_event(
                &Event::Conn(Conn {
                    conn: id,
                    pid: 1,
                    tid: 1,
                    netns: 1,
                    local: "127.0.0.1:4433".parse().unwrap(),
                    peer: "127.0.0.1:50000".parse().unwrap(),
                    role: Some(role),
                    midstream: false,
                    tcp_seq: [0; 2],
                    comm: [0; 16],
                    ppid: 0,
                    opened_by: None,
                    ts_ns: 1,
                }),
                &mut sink,
            );
            let mut offsets = [0u64; 2];
            for (i, r) in records.iter().enumerate() {
                let Some(d) = &r.data else { continue };
                // The traced process's view: a server reads the client's bytes.
                let dir = match (role, r.from) {
                    (Role::Server, From::Client) | (Role::Client, From::Server) => Direction::Ingress,
                    _ => Direction::Egress,
                };
                let k = usize::from(dir == Direction::Egress);
                table.on_event(
                    &Event::Data(Data {
                        conn: id,
                        tls: None,
                        pid: 1,
                        tid: 1,
                        dir,
                        offset: offsets[k],
                        unreported_ns: 0,
                        len: u32::try_from(d.len()).unwrap(),
                        ts_ns: 10 + i as u64,
                        prefix: d,
                        tail: &[],
                        payload: Payload::Copied,
                    }),
                    &mut sink,
                );
                offsets[k] += d.len() as u64;
            }
            table.on_event(&Event::State(State { conn: id, ts_ns: 100, change: StateChange::Closed }), &mut sink);
            assert_eq!((sink.started, sink.exchanges, sink.closed), (0, 0, 1), "{name} as {role:?}");
            assert!(s.get(Counter::TlsConns) > before[0], "{name}: not counted as TLS");
            // Requests went by (s_server's status page): no plaintext came for them.
            assert!(s.get(Counter::TlsUndecryptedConns) > before[1], "{name}: not counted as undecrypted");
        }
    }
}
