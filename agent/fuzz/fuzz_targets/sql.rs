//! Fuzz target: arbitrary text through the SQL sanitiser and summary, in both dialects.
//! Checks: no panic; the output stays within `MAX_QUERY_TEXT` (plus the cut mark); and
//! sanitising is idempotent: sanitised text sanitises to itself, so it holds no
//! literal left to hide.
//!
//! Run (nightly), from `agent/`:
//!
//!     cargo +nightly fuzz run sql fuzz/corpus/sql
#![no_main]

use ghostwire::span::sql::{sanitize, summarize, Dialect, MAX_QUERY_TEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for dialect in [Dialect::Postgres, Dialect::MySql] {
        let out = sanitize(&text, dialect);
        assert!(out.len() <= MAX_QUERY_TEXT + '…'.len_utf8(), "{} bytes", out.len());
        let _ = summarize(&text, dialect);
        if !out.ends_with('…') {
            assert_eq!(sanitize(&out, dialect), out, "not idempotent: {text:?} -> {out:?}");
        }
    }
});
