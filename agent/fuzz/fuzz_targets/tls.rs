//! Fuzz target: arbitrary bytes through the TLS record [`Scanner`], cut into transfers of
//! both directions with gaps and losses as the input's first bytes say; and through
//! `is_record_start`. Checks: no panic, at most `MAX_HELLO_BYTES` held, a stopped
//! scanner changes nothing when fed more, and the verdict of `is_record_start` agrees
//! with the record-header rules it states.
//!
//! Run (nightly; seed corpus = the golden captures), from `agent/`:
//!
//!     cargo +nightly fuzz run tls fuzz/corpus/tls tests/data/tls
//!
//! (keep the git-ignored `fuzz/corpus/tls` first: libFuzzer writes new inputs there.)
//!
//! An input that starts with the capture magic line is replayed as a capture file
//! (`tests/data/tls/capture.py`), client records on ingress. Any other input is: bytes
//! 0..=3 = piece lengths used in turn (0 = the rest); bytes 4..=5 = per-piece bits used
//! in turn (bit 0 direction, bit 1 a gap after the piece of `bits >> 2` * 97 bytes, bit
//! 7 a loss after the piece); the rest = the bytes, cut into pieces.
#![no_main]

use ghostwire::protocol::tls::{is_record_start, Scanner, MAX_HELLO_BYTES, MAX_RECORD_LEN};
use ghostwire::protocol::Direction;
use libfuzzer_sys::fuzz_target;

const MAGIC: &[u8] = b"# ghostwire-tls-capture v1\n";

fn check(s: &Scanner) {
    assert!(s.buffered_bytes() <= MAX_HELLO_BYTES);
    if s.stopped() {
        // Stopped means stopped: more bytes change nothing.
        let mut more = s.clone();
        more.feed(Direction::Ingress, b"\x16\x03\x03\x00\x04\x02\x00\x00\x00", 0, &[]);
        more.feed(Direction::Egress, b"\x16\x03\x03\x00\x04\x02\x00\x00\x00", 0, &[]);
        assert_eq!((more.version(), more.app_data()), (s.version(), s.app_data()));
    }
}

fn replay_capture(mut rest: &[u8]) {
    let mut s = Scanner::new();
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
        let Some(len) = std::str::from_utf8(line.get(2..).unwrap_or_default()).ok().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let take: usize = rest.len().min(len);
        s.feed(dir, &rest[..take], (len - take) as u64, &[]);
        check(&s);
        rest = rest.get(take + 1..).unwrap_or_default();
    }
}

fn pieces(data: &[u8]) {
    let (lens, rest) = data.split_at(data.len().min(4));
    let (bits, mut stream) = rest.split_at(rest.len().min(2));
    let mut s = Scanner::new();
    let mut i = 0;
    while !stream.is_empty() {
        let len =
            lens.get(i % lens.len().max(1)).map_or(stream.len(), |&l| if l == 0 { stream.len() } else { l.into() });
        let b = bits.get(i % bits.len().max(1)).copied().unwrap_or(0);
        let (piece, rest) = stream.split_at(len.min(stream.len()));
        stream = rest;
        i += 1;
        let dir = if b & 1 == 0 { Direction::Ingress } else { Direction::Egress };
        let gap = if b & 2 == 0 { 0 } else { u64::from((b >> 2) & 31) * 97 };
        s.feed(dir, piece, gap, &[]);
        if b & 0x80 != 0 {
            s.lost(dir);
        }
        check(&s);
    }
}

fuzz_target!(|data: &[u8]| {
    let start = is_record_start(data);
    if let [kind, major, minor, rest @ ..] = data {
        let ok = (20..=23).contains(kind)
            && *major == 3
            && *minor <= 4
            && rest.get(..2).is_none_or(|l| u16::from_be_bytes([l[0], l[1]]) <= MAX_RECORD_LEN);
        assert_eq!(start, ok);
    } else {
        assert!(!start);
    }
    if data.starts_with(MAGIC) {
        replay_capture(data);
    } else {
        pieces(data);
    }
});
