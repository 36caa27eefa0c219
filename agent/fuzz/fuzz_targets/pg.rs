//! Fuzz target: arbitrary bytes through `PgSession`, in both directions, split and with
//! gaps and losses as the input's first bytes say. Checks: no panic, buffered message
//! bytes within `2 * (MAX_QUERY_BYTES + 1024)`, pending requests within `MAX_PENDING`,
//! `lost` dropping at most what was pending, exchanges with ordered timings and bounded
//! texts.
//!
//! Run (nightly; seed corpus = the golden capture), from `agent/`:
//!
//!     cargo +nightly fuzz run pg fuzz/corpus/pg tests/data/pg
//!
//! Input: byte 0 = flags (bit 0 role, bit 1 long pieces, bit 2 eof at the end of a piece
//! with bit 7, bit 3 lost at the end of a piece with bit 7, bit 4 prefix a valid
//! StartupMessage and the server's ReadyForQuery so mutations reach the typed messages);
//! bytes 1..=8 = piece lengths used in turn (0 = the rest); bytes 9..=12 = per-piece bits
//! used in turn (bit 0 direction; bit 1 a gap after the piece, bits 2-6 its size; bit 7
//! eof and/or lost after the piece); the rest = the byte stream, cut into pieces fed to
//! the request and response directions.
#![no_main]

use ghostwire::protocol::pg::{PgExchange, PgSession, MAX_ERROR_MESSAGE, MAX_PENDING, MAX_QUERY_BYTES};
use ghostwire::protocol::{Direction, Role, Timing};
use libfuzzer_sys::fuzz_target;

struct Harness {
    session: PgSession,
    out: Vec<PgExchange>,
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
        let dropped = self.session.lost(dir);
        assert!(dropped <= pending);
        self.check();
    }

    fn check(&mut self) {
        assert!(self.session.buffered_bytes() <= 2 * (MAX_QUERY_BYTES + 1024));
        assert!(self.session.pending_requests() <= MAX_PENDING);
        for e in self.out.drain(..) {
            assert!(e.query.len() <= MAX_QUERY_BYTES);
            assert!(e.error.as_ref().is_none_or(|e| e.message.len() <= MAX_ERROR_MESSAGE));
            assert!(e.request_first.enter_ns <= e.request_last.enter_ns);
            assert!(e.response_first.enter_ns <= e.response_last.enter_ns);
        }
    }
}

fn startup() -> Vec<u8> {
    let body = b"\x00\x03\x00\x00user\x00u\x00database\x00d\x00\x00";
    let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 { Role::Server } else { Role::Client };
    let req = role.request_direction();
    let resp = match req {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    let (lens, rest) = rest.split_at(rest.len().min(8));
    let (bits, mut stream) = rest.split_at(rest.len().min(4));
    let mut h = Harness { session: PgSession::new(role), out: Vec::new(), calls: 0 };
    if flags & 16 != 0 {
        h.feed(req, &startup(), 0);
        h.feed(resp, b"Z\x00\x00\x00\x05I", 0);
    }
    let scale = if flags & 2 == 0 { 1 } else { 64 };
    let mut i = 0;
    while !stream.is_empty() {
        let len = match lens.get(i % lens.len().max(1)) {
            None | Some(0) => stream.len(),
            Some(&l) => usize::from(l) * scale,
        };
        let b = bits.get(i % bits.len().max(1)).copied().unwrap_or(0);
        i += 1;
        let (piece, rest) = stream.split_at(len.min(stream.len()));
        stream = rest;
        let dir = if b & 1 == 0 { req } else { resp };
        let gap = if b & 2 != 0 { usize::from((b >> 2) & 31) * 331 } else { 0 };
        h.feed(dir, piece, gap);
        if b & 0x80 != 0 {
            if flags & 4 != 0 {
                h.session.eof(dir);
                h.check();
            }
            if flags & 8 != 0 {
                h.lost(dir);
            }
        }
    }
    h.session.eof(resp);
    h.check();
});
