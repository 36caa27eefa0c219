//! Fuzz target: arbitrary bytes through `RespSession`, in both directions, split as the
//! input's first bytes say. Checks: no panic, `buffered_bytes()` within its bound,
//! `pending_requests()` within `MAX_PENDING`, `lost` dropping at most what was pending,
//! a fatal error leaving the session desynced (then reset, as the agent does), kept text
//! within `MAX_TEXT`.
//!
//! Run (nightly; seed corpus = the golden capture), from `agent/`:
//!
//!     cargo +nightly fuzz run resp fuzz/corpus/resp tests/data/redis
//!
//! Input: byte 0 = flags (bit 0 role, bit 1 long pieces, bit 2 lost records after
//! flagged pieces); bytes 1..=8 = piece lengths used in turn (0 = the rest); bytes
//! 9..=12 = per-piece bits used in turn (bit 0 direction, bit 7 lost after the piece);
//! the rest = the byte stream, cut into pieces fed to the request and response
//! directions. Inputs too short for a header are fed whole to both directions.
#![no_main]

use ghostwire::protocol::resp::{RespExchange, RespSession, MAX_LINE, MAX_PENDING, MAX_TEXT};
use ghostwire::protocol::{Direction, Role, Timing};
use libfuzzer_sys::fuzz_target;

const MAX_BUFFERED: usize = 2 * (MAX_LINE + 4 * MAX_TEXT);

struct Harness {
    session: RespSession,
    out: Vec<RespExchange>,
    calls: u64,
}

impl Harness {
    fn feed(&mut self, dir: Direction, data: &[u8]) {
        self.calls += 1;
        let t = Timing { enter_ns: self.calls * 10, exit_ns: self.calls * 10 + 1 };
        if let Err(e) = self.session.feed(dir, data, t, &mut self.out) {
            if e.kind.is_fatal() {
                assert!(self.session.is_desynced());
                assert_eq!(self.session.pending_requests(), 0);
                self.session.reset();
            }
        }
        self.check();
    }

    fn lost(&mut self, dir: Direction) {
        let pending = self.session.pending_requests();
        assert!(self.session.lost(dir) <= pending);
        assert_eq!(self.session.pending_requests(), 0);
        self.check();
    }

    fn check(&mut self) {
        assert!(self.session.pending_requests() <= MAX_PENDING);
        assert!(self.session.buffered_bytes() <= MAX_BUFFERED);
        for e in self.out.drain(..) {
            // Lossy UTF-8 may grow each invalid byte to 3.
            assert!(e.command.key.as_ref().is_none_or(|k| k.len() <= 3 * MAX_TEXT));
            assert!(e.command.name.len() <= 3 * 64 + 1 + 3 * 32);
            assert!(e.request_first.enter_ns <= e.request_last.enter_ns);
            assert!(e.response_first.enter_ns <= e.response_last.enter_ns);
        }
    }
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
    let mut h = Harness { session: RespSession::new(role), out: Vec::new(), calls: 0 };
    if rest.len() < 13 {
        h.feed(req, rest);
        h.feed(resp, rest);
        return;
    }
    let (lens, rest) = rest.split_at(8);
    let (bits, mut stream) = rest.split_at(4);
    let scale = if flags & 2 == 0 { 1 } else { 64 };
    let mut i = 0;
    while !stream.is_empty() {
        let l = usize::from(lens[i % lens.len()]);
        let len = if l == 0 { stream.len() } else { l * scale };
        let b = bits[i % bits.len()];
        let (piece, rest) = stream.split_at(len.min(stream.len()));
        stream = rest;
        i += 1;
        let dir = if b & 1 == 0 { req } else { resp };
        h.feed(dir, piece);
        if b & 0x80 != 0 && flags & 4 != 0 {
            h.lost(dir);
        }
    }
});
