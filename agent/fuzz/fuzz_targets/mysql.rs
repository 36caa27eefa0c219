//! Fuzz target: arbitrary bytes through `MySqlSession`, in both directions, split and
//! truncated (gaps, lost records, sessions joined mid-stream) as the input's first bytes
//! say. Checks: no panic, `buffered_bytes()` within `2 * (MAX_KEPT_BYTES + 4)`, pending
//! commands within `MAX_PENDING`, remembered statements within `MAX_STATEMENTS`, `lost`
//! dropping at most what was pending, kept texts and messages within their bounds.
//!
//! Run (nightly; seed corpus = the golden capture), from `agent/`:
//!
//!     cargo +nightly fuzz run mysql fuzz/corpus/mysql tests/data/mysql
//!
//! Input: byte 0 = role and flags (bit 0 role, bit 1 long pieces, bit 2 eof, bit 3 lost
//! records, bit 4 joined mid-stream, bit 5 lost records are of the other direction);
//! bytes 1..=8 = piece lengths used in turn (0 = everything left); bytes 9..=12 =
//! per-piece bits used in turn (bit 0 direction; bits 1-2 = 3: a gap after the piece,
//! bits 3-6 its size; bit 7 eof and/or lost after the piece); the rest = the byte
//! stream, cut into pieces fed (as the bits say) to the request and response directions.
#![no_main]

use ghostwire::protocol::mysql::{
    MyExchange, MySqlSession, MAX_ERROR_MESSAGE, MAX_KEPT_BYTES, MAX_PENDING, MAX_QUERY_BYTES, MAX_STATEMENTS,
};
use ghostwire::protocol::{Direction, Role, Timing};
use libfuzzer_sys::fuzz_target;

struct Harness {
    session: MySqlSession,
    out: Vec<MyExchange>,
    calls: u64,
}

impl Harness {
    fn t(&mut self) -> Timing {
        self.calls += 1;
        Timing { enter_ns: self.calls * 10, exit_ns: self.calls * 10 + 1 }
    }

    fn feed(&mut self, dir: Direction, data: &[u8], gap: usize) {
        let t = self.t();
        let _ = self.session.feed(dir, data, data.len() + gap, t, &mut self.out);
        self.check();
    }

    fn lost(&mut self, dir: Direction) {
        let pending = self.session.pending_requests();
        let dropped = self.session.lost(dir, 0);
        assert!(dropped <= pending);
        self.check();
    }

    fn eof(&mut self, dir: Direction) {
        let t = self.t();
        self.session.eof(dir, t, &mut self.out);
        self.check();
    }

    fn check(&mut self) {
        assert!(self.session.buffered_bytes() <= 2 * (MAX_KEPT_BYTES + 4));
        assert!(self.session.pending_requests() <= MAX_PENDING);
        assert!(self.session.statements() <= MAX_STATEMENTS);
        for e in self.out.drain(..) {
            assert!(e.query.as_ref().is_none_or(|q| q.len() <= 3 * MAX_QUERY_BYTES));
            assert!(e.error.as_ref().is_none_or(|x| x.message.len() <= 3 * MAX_ERROR_MESSAGE));
            assert!(e.request_first.enter_ns <= e.request_last.enter_ns);
            assert!(e.response_first.enter_ns <= e.response_last.enter_ns);
        }
    }
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 { Role::Client } else { Role::Server };
    let req = role.request_direction();
    let resp = other(req);
    let (lens, rest) = rest.split_at(rest.len().min(8));
    let (bits, mut stream) = rest.split_at(rest.len().min(4));
    let session = if flags & 16 == 0 { MySqlSession::new(role) } else { MySqlSession::midstream(role) };
    let mut h = Harness { session, out: Vec::new(), calls: 0 };
    let scale = if flags & 2 == 0 { 1 } else { 64 };
    let mut i = 0;
    while !stream.is_empty() {
        let len = match lens.get(i % lens.len().max(1)) {
            None | Some(0) => stream.len(),
            Some(&l) => usize::from(l) * scale,
        };
        let b = bits.get(i % bits.len().max(1)).copied().unwrap_or(0);
        i += 1;
        let (piece, next) = stream.split_at(len.min(stream.len()));
        stream = next;
        let dir = if b & 1 == 0 { req } else { resp };
        let gap = if (b >> 1) & 3 == 3 { usize::from((b >> 3) & 15) * 977 } else { 0 };
        h.feed(dir, piece, gap);
        if b & 0x80 != 0 {
            if flags & 4 != 0 {
                h.eof(dir);
            }
            if flags & 8 != 0 {
                h.lost(if flags & 32 == 0 { dir } else { other(dir) });
            }
        }
    }
    h.eof(resp);
    h.eof(req);
});
