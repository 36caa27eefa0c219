//! Fuzz target: arbitrary bytes through `Http1Session`, in both directions, split and
//! truncated (gaps) as the input's first bytes say. Checks: no panic, `pending_requests()`
//! within `MAX_PENDING_REQUESTS`, buffered head bytes within `2 * MAX_HEAD_BYTES`, stored
//! header counts within `MAX_STORED_HEADERS`.
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
//! replayed as recorded and mutations of them stay close to real traffic. Any other input
//! is: byte 0 = role and flags; bytes 1..=8 = piece lengths used in turn; bytes 9..=12 =
//! per-piece direction/gap/eof bits used in turn; the rest = the byte stream, cut into
//! pieces fed alternately (as the bits say) to the request and response directions.
#![no_main]

use ghostwire::protocol::http1::{
    Http1Session, MAX_HEAD_BYTES, MAX_PENDING_REQUESTS, MAX_STORED_HEADERS,
};
use ghostwire::protocol::{Direction, Exchange, Role, Timing};
use libfuzzer_sys::fuzz_target;

const MAGIC: &[u8] = b"# ghostwire-http1-capture v1\n";

struct Harness {
    session: Http1Session,
    out: Vec<Exchange>,
    calls: u64,
}

impl Harness {
    fn new(role: Role) -> Self {
        Harness {
            session: Http1Session::new(role),
            out: Vec::new(),
            calls: 0,
        }
    }

    fn t(&mut self) -> Timing {
        self.calls += 1;
        Timing {
            enter_ns: self.calls * 10,
            exit_ns: self.calls * 10 + 1,
        }
    }

    fn feed(&mut self, dir: Direction, data: &[u8], gap: usize) {
        let t = self.t();
        let _ = self
            .session
            .feed(dir, data, data.len() + gap, t, &mut self.out);
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
            assert!(e.request.headers.len() <= MAX_STORED_HEADERS);
            assert!(e.response.headers.len() <= MAX_STORED_HEADERS);
            assert!(e.request_first.enter_ns <= e.request_last.enter_ns);
            assert!(e.response_first.enter_ns <= e.response_last.enter_ns);
        }
    }
}

/// Replays a capture file leniently (stops at the first malformed record).
fn replay_capture(mut rest: &[u8]) {
    let mut h = Harness::new(Role::Server);
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
        let Some(len) = std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return;
        };
        let take = len.min(rest.len());
        h.feed(dir, &rest[..take], len - take);
        rest = rest.get(take + 1..).unwrap_or_default();
    }
}

fn split_stream(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let (req, resp) = match role.request_direction() {
        Direction::Ingress => (Direction::Ingress, Direction::Egress),
        Direction::Egress => (Direction::Egress, Direction::Ingress),
    };
    let (lens, rest) = rest.split_at(rest.len().min(8));
    let (bits, mut stream) = rest.split_at(rest.len().min(4));
    let mut h = Harness::new(role);
    let mut i = 0usize;
    while !stream.is_empty() {
        let len = lens.get(i % lens.len().max(1)).map_or(stream.len(), |&l| {
            // 0 = everything left; small values are common (byte-at-a-time splits).
            if l == 0 {
                stream.len()
            } else {
                usize::from(l) * if flags & 2 == 0 { 1 } else { 16 }
            }
        });
        let b = bits.get(i % bits.len().max(1)).copied().unwrap_or(0);
        let dir = if b & 1 == 0 { req } else { resp };
        let take = len.min(stream.len());
        let (piece, tail) = stream.split_at(take);
        // Bits 1-2: a gap after the piece (none most of the time).
        let gap = match (b >> 1) & 3 {
            3 => usize::from(b >> 3) * 97,
            _ => 0,
        };
        h.feed(dir, piece, gap);
        if b & 0x80 != 0 && flags & 4 != 0 {
            h.eof(dir);
        }
        stream = tail;
        i += 1;
    }
    h.eof(resp);
    h.eof(req);
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(MAGIC) {
        replay_capture(data);
    } else {
        split_stream(data);
    }
});
