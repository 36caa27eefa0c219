//! Fuzz target: arbitrary bytes through `Http1Session`, in both directions, split and
//! truncated (gaps, tail windows, lost records, sessions joined mid-stream) as the input's
//! first bytes say. Checks: no panic, `pending_requests()` within `MAX_PENDING_REQUESTS`,
//! buffered head bytes within `2 * MAX_HEAD_BYTES`, stored header counts within
//! `MAX_STORED_HEADERS`, `lost` dropping what was pending, exchanges in `seq` order.
//!
//! Run (nightly; seed corpus = the golden captures), from `agent/`:
//!
//!     cargo +nightly fuzz run http1 fuzz/corpus/http1 tests/data/http1
//!
//! or from the repository root:
//!
//!     cargo +nightly fuzz run --fuzz-dir agent/fuzz http1 agent/fuzz/corpus/http1 agent/tests/data/http1
//!
//! (libFuzzer adds new inputs to the FIRST corpus directory: keep the git-ignored
//! `fuzz/corpus/http1` first so the captures directory is only read. `cargo +nightly fuzz
//! run http1 tests/data/http1` works too but fills the data directory with inputs.)
//!
//! An input that starts with the capture magic line is read as a capture file (records
//! with direction and length, see `tests/data/http1/capture.py`), so the seeds are
//! replayed as recorded and mutations of them stay close to real traffic (a record longer
//! than 8 KiB is captured as a 4 KiB prefix and a 1 KiB tail window, as the kernel does).
//! Any other input is: byte 0 = role and flags (bit 0 role, bit 1 long pieces, bit 2 eof,
//! bit 3 lost records, bit 4 joined mid-stream, bit 5 lost records are of the other
//! direction); bytes 1..=8 = piece lengths used in turn; bytes 9..=12 = per-piece bits
//! used in turn (bit 0 direction; bits 1-2 gap mode: 2 = a gap and a tail window, which is
//! the next piece, 3 = a gap only; bits 3-6 gap size; bit 7 eof and/or lost after the
//! piece); the rest = the byte stream, cut into pieces fed (as the bits say) to the
//! request and response directions.
#![no_main]

use ghostwire::protocol::http1::{Http1Session, MAX_HEAD_BYTES, MAX_PENDING_REQUESTS, MAX_STORED_HEADERS};
use ghostwire::protocol::{Direction, Exchange, Role, Timing};
use libfuzzer_sys::fuzz_target;

const MAGIC: &[u8] = b"# ghostwire-http1-capture v1\n";

struct Harness {
    session: Http1Session,
    out: Vec<Exchange>,
    calls: u64,
    /// `seq` of the last exchange reported.
    last_seq: Option<u64>,
}

impl Harness {
    fn new(session: Http1Session) -> Self {
        Harness { session, out: Vec::new(), calls: 0, last_seq: None }
    }

    fn t(&mut self) -> Timing {
        self.calls += 1;
        Timing { enter_ns: self.calls * 10, exit_ns: self.calls * 10 + 1 }
    }

    /// The time of the last call so far.
    fn now(&self) -> u64 {
        self.calls * 10
    }

    fn feed(&mut self, dir: Direction, data: &[u8], gap: usize) {
        let t = self.t();
        let _ = self.session.feed(dir, data, data.len() + gap, t, &mut self.out);
        self.check();
    }

    fn feed_syscall(&mut self, dir: Direction, prefix: &[u8], gap: u64, tail: &[u8]) {
        let t = self.t();
        let _ = self.session.feed_syscall(dir, prefix, gap, tail, t, &mut self.out);
        self.check();
    }

    fn lost(&mut self, dir: Direction, before_ns: u64) {
        let pending = self.session.pending_requests();
        let dropped = self.session.lost(dir, before_ns);
        assert!(dropped <= pending);
        self.check();
    }

    fn eof(&mut self, dir: Direction) {
        let t = self.t();
        self.session.eof(dir, t, &mut self.out);
        self.check();
    }

    fn check(&mut self) {
        assert!(self.session.pending_requests() <= MAX_PENDING_REQUESTS);
        assert!(self.session.buffered_bytes() <= 2 * MAX_HEAD_BYTES);
        for e in self.out.drain(..) {
            assert!(self.last_seq.is_none_or(|s| s < e.seq));
            self.last_seq = Some(e.seq);
            assert!(e.request.headers.len() <= MAX_STORED_HEADERS);
            assert!(e.response.headers.len() <= MAX_STORED_HEADERS);
            assert!(e.request_first.enter_ns <= e.request_last.enter_ns);
            assert!(e.response_first.enter_ns <= e.response_last.enter_ns);
        }
    }
}

/// Replays a capture file leniently (stops at the first malformed record).
fn replay_capture(mut rest: &[u8]) {
    let mut h = Harness::new(Http1Session::new(Role::Server));
    while let Some(eol) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..eol];
        rest = &rest[eol + 1..];
        if line.starts_with(b"#") {
            continue;
        }
        let dir = match line.first() {
            Some(b'>') => Direction::Ingress,
            Some(b'<') => Direction::Egress,
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
        if data.len() > 8 * 1024 {
            // As the kernel captures a long syscall: a prefix and a tail window.
            let tail = &data[data.len() - 1024..];
            h.feed_syscall(dir, &data[..4096], (len - 4096 - 1024) as u64, tail);
        } else {
            h.feed(dir, data, len - take);
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
    let (req, resp) = match role.request_direction() {
        Direction::Ingress => (Direction::Ingress, Direction::Egress),
        Direction::Egress => (Direction::Egress, Direction::Ingress),
    };
    let (lens, rest) = rest.split_at(rest.len().min(8));
    let (bits, mut stream) = rest.split_at(rest.len().min(4));
    let mut h = Harness::new(if flags & 16 == 0 { Http1Session::new(role) } else { Http1Session::new_midstream(role) });
    let mut cut = Cutter { lens, bits, scale: if flags & 2 == 0 { 1 } else { 16 }, i: 0 };
    while !stream.is_empty() {
        let (b, piece) = cut.next(&mut stream);
        let dir = if b & 1 == 0 { req } else { resp };
        // Bits 1-2: a gap after the piece, with a tail window or not (none most of the
        // time); bits 3-6: its size.
        let mode = (b >> 1) & 3;
        let gap = if mode >= 2 { u64::from((b >> 3) & 15) * 977 } else { 0 };
        if mode == 2 {
            let (_, tail) = cut.next(&mut stream);
            h.feed_syscall(dir, piece, gap, tail);
        } else {
            h.feed_syscall(dir, piece, gap, &[]);
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
        replay_capture(data);
    } else {
        split_stream(data);
    }
});
