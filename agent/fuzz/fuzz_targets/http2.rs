//! Fuzz target: arbitrary bytes through `Http2Session` (frames + HPACK), in both
//! directions, split and truncated (gaps, tail windows, lost records, end of stream,
//! sessions joined mid-stream) as the input's first bytes say. Checks: no panic,
//! `pending_requests()` within `MAX_STREAMS`, `lost` dropping no more than was pending,
//! every started stream readable through `request()` (or done in the same call) at the
//! offset it was started with, each stream started once and done at most once and only
//! after it started, stored header counts within `MAX_STORED_HEADERS` and never an
//! `authorization` or `cookie` field, timings in order; `guess_frames` and `is_preface`
//! on every piece.
//!
//! Run (nightly; seed corpus = the golden captures), from the repository root:
//!
//!     cargo +nightly fuzz run --fuzz-dir agent/fuzz http2 agent/fuzz/corpus/http2 agent/tests/data/http2
//!
//! (libFuzzer adds new inputs to the FIRST corpus directory: keep the git-ignored
//! `fuzz/corpus/http2` first so the captures directory is only read.)
//!
//! An input that starts with the capture magic line is read as a capture file (records
//! with direction and length, see `tests/data/http2/capture.py`) and replayed as the
//! server from the start, and as the client joined mid-stream with a record over 8 KiB
//! captured as a 4 KiB prefix and a 1 KiB tail window, as the kernel does. Any other input
//! is: byte 0 = flags (bit 0 role, bit 1 long pieces, bit 2 eof, bit 3 lost records,
//! bit 4 joined mid-stream, bit 5 lost records are of the other direction, bit 6 loss
//! with a known time, bit 7 a valid preface and SETTINGS first in both directions so
//! mutations reach the frames); bytes 1..=8 = piece lengths used in turn; bytes 9..=12 =
//! per-piece bits used in turn (bit 0 direction; bits 1-2 gap mode: 2 = a gap and a tail
//! window, which is the next piece, 3 = a gap only; bits 3-6 gap size; bit 7 eof and/or
//! lost after the piece); the rest = the byte stream, cut into pieces fed (as the bits
//! say) to the request and response directions.
#![no_main]

use std::collections::HashSet;

use ghostwire::protocol::http1::MAX_STORED_HEADERS;
use ghostwire::protocol::http2::{guess_frames, is_preface, Http2Session, MAX_STREAMS, PREFACE};
use ghostwire::protocol::{Direction, Output, Role, Timing};
use libfuzzer_sys::fuzz_target;

const MAGIC: &[u8] = b"# ghostwire-http2-capture v1\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

struct Harness {
    session: Http2Session,
    calls: u64,
    pos: [u64; 2],
    started: HashSet<u64>,
    done: HashSet<u64>,
}

fn index(dir: Direction) -> usize {
    usize::from(dir == Direction::Egress)
}

impl Harness {
    fn new(session: Http2Session) -> Self {
        Harness { session, calls: 0, pos: [0; 2], started: HashSet::new(), done: HashSet::new() }
    }

    fn t(&mut self) -> Timing {
        self.calls += 1;
        Timing { enter_ns: self.calls * 10, exit_ns: self.calls * 10 + 1 }
    }

    /// The time of the last call so far.
    fn now(&self) -> u64 {
        self.calls * 10
    }

    fn feed(&mut self, dir: Direction, prefix: &[u8], gap: u64, tail: &[u8]) {
        let _ = guess_frames(prefix);
        let _ = is_preface(prefix);
        let t = self.t();
        let mut out = Output::default();
        let pos = self.pos[index(dir)];
        let _ = self.session.feed_at(dir, pos, prefix, gap, tail, t, &mut out);
        self.pos[index(dir)] += prefix.len() as u64 + gap + tail.len() as u64;
        self.check(out);
    }

    fn lost(&mut self, dir: Direction, before_ns: u64) {
        let pending = self.session.pending_requests();
        let dropped = self.session.lost(dir, before_ns);
        assert!(dropped <= pending);
        assert_eq!(self.session.pending_requests(), pending - dropped);
        self.check(Output::default());
    }

    fn eof(&mut self, dir: Direction) {
        let t = self.t();
        let mut out = Output::default();
        self.session.eof(dir, t, &mut out);
        self.check(out);
    }

    fn check(&mut self, out: Output) {
        assert!(self.session.pending_requests() <= MAX_STREAMS);
        for s in &out.started {
            assert!(self.started.insert(s.stream), "stream {} started twice", s.stream);
            match self.session.request(s.stream) {
                Some(r) => assert_eq!(r.stream_offset, s.offset),
                None => assert!(out.done.iter().any(|e| e.seq == s.stream)),
            }
        }
        for e in &out.done {
            assert!(self.started.contains(&e.seq), "stream {} done, never started", e.seq);
            assert!(self.done.insert(e.seq), "stream {} done twice", e.seq);
            assert!(self.session.request(e.seq).is_none());
            for headers in [&e.request.headers, &e.response.headers] {
                assert!(headers.len() <= MAX_STORED_HEADERS);
                assert!(headers.iter().all(|(n, _)| n != "authorization" && n != "cookie"));
            }
            assert!(e.request_first.enter_ns <= e.request_last.enter_ns);
            assert!(e.response_first.enter_ns <= e.response_last.enter_ns);
            assert!(e.request_first.enter_ns <= e.response_last.enter_ns);
            let h2 = e.h2.as_ref().expect("an HTTP/2 exchange has its h2 part");
            assert!(!h2.unknown.method || e.request.method.is_empty());
            assert!(!h2.unknown.path || e.request.target.is_empty());
            assert!(!h2.unknown.status || e.response.status == 0);
        }
    }
}

/// Replays a capture file leniently (stops at the first malformed record).
fn replay_capture(mut rest: &[u8], role: Role, midstream: bool) {
    let session = if midstream { Http2Session::new_midstream(role) } else { Http2Session::new(role) };
    let mut h = Harness::new(session);
    let client = role.request_direction();
    while let Some(eol) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..eol];
        rest = &rest[eol + 1..];
        if line.starts_with(b"#") {
            continue;
        }
        let dir = match line.first() {
            Some(b'>') => client,
            Some(b'<') => other(client),
            _ => return,
        };
        let arg = line.get(2..).unwrap_or_default();
        if arg == b"EOF" {
            h.eof(dir);
            continue;
        }
        let Some(len) = std::str::from_utf8(arg).ok().and_then(|s| s.parse::<usize>().ok()) else {
            return;
        };
        let take = len.min(rest.len());
        let data = &rest[..take];
        if midstream && data.len() > 8 * 1024 {
            // As the kernel captures a long syscall: a prefix and a tail window.
            let tail = &data[data.len() - 1024..];
            h.feed(dir, &data[..4096], (len - 4096 - 1024) as u64, tail);
        } else {
            h.feed(dir, data, (len - take) as u64, &[]);
        }
        rest = rest.get(take + 1..).unwrap_or_default();
    }
}

/// Cuts the byte stream into pieces as the input's header says.
struct Cutter<'a> {
    lens: &'a [u8],
    bits: &'a [u8],
    scale: usize,
    /// Pieces cut so far.
    i: usize,
}

impl Cutter<'_> {
    /// The next piece of `stream` and its per-piece bits.
    fn next<'s>(&mut self, stream: &mut &'s [u8]) -> (u8, &'s [u8]) {
        let len = self.lens.get(self.i % self.lens.len().max(1)).map_or(stream.len(), |&l| {
            // 0 = everything left; small values are common (byte-at-a-time splits).
            if l == 0 {
                stream.len()
            } else {
                usize::from(l) * self.scale
            }
        });
        let b = self.bits.get(self.i % self.bits.len().max(1)).copied().unwrap_or(0);
        let (piece, rest) = stream.split_at(len.min(stream.len()));
        *stream = rest;
        self.i += 1;
        (b, piece)
    }
}

fn split_stream(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 { Role::Server } else { Role::Client };
    let req = role.request_direction();
    let resp = other(req);
    let (lens, rest) = rest.split_at(rest.len().min(8));
    let (bits, mut stream) = rest.split_at(rest.len().min(4));
    let midstream = flags & 16 != 0;
    let mut h = Harness::new(if midstream { Http2Session::new_midstream(role) } else { Http2Session::new(role) });
    if flags & 128 != 0 {
        h.feed(req, &[PREFACE, SETTINGS].concat(), 0, &[]);
        h.feed(resp, SETTINGS, 0, &[]);
    }
    let mut cut = Cutter { lens, bits, scale: if flags & 2 == 0 { 1 } else { 64 }, i: 0 };
    while !stream.is_empty() {
        let (b, piece) = cut.next(&mut stream);
        let dir = if b & 1 == 0 { req } else { resp };
        // Bits 1-2: a gap after the piece, with a tail window or not (none most of the
        // time); bits 3-6: its size.
        let mode = (b >> 1) & 3;
        let gap = if mode >= 2 { u64::from((b >> 3) & 15) * 977 } else { 0 };
        if mode == 2 {
            let (_, tail) = cut.next(&mut stream);
            h.feed(dir, piece, gap, tail);
        } else {
            h.feed(dir, piece, gap, &[]);
        }
        if b & 0x80 != 0 {
            if flags & 4 != 0 {
                h.eof(dir);
            }
            if flags & 8 != 0 {
                // Sometimes a known time of loss (the time of the last record so far).
                let before = if flags & 64 == 0 { 0 } else { h.now() };
                h.lost(if flags & 32 == 0 { dir } else { other(dir) }, before);
            }
        }
    }
    h.eof(resp);
    h.eof(req);
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(MAGIC) {
        replay_capture(data, Role::Server, false);
        replay_capture(data, Role::Client, true);
    } else {
        split_stream(data);
    }
});
