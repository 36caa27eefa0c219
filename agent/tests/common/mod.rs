//! What the golden tests share: the capture file format written by
//! `tests/data/*/capture.py` (a magic line, `#` comment lines, then records `> N` / `< N`
//! followed by N bytes and a newline, or `> EOF` / `< EOF`), and the fake syscall timings
//! the captures are replayed with.
#![allow(dead_code, reason = "each golden test binary uses its own part of this module")]

use std::path::{Path, PathBuf};

use ghostwire::protocol::Timing;
use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::Value;

/// Who sent a record's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    Client,
    Server,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub from: From,
    /// `None`: that peer closed (EOF).
    pub data: Option<Vec<u8>>,
}

/// `tests/data/<proto>` of the agent crate.
pub fn data_dir(proto: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(proto)
}

/// The records of capture `name` in `dir`, whose first line must be `magic`.
pub fn load(dir: &Path, magic: &[u8], name: &str) -> Vec<Record> {
    let path = dir.join(format!("{name}.cap"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_capture(&bytes, magic).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn parse_capture(bytes: &[u8], magic: &[u8]) -> Result<Vec<Record>, String> {
    if !bytes.starts_with(magic) {
        return Err("missing magic line".into());
    }
    let mut rest = bytes;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let eol = rest.iter().position(|&b| b == b'\n').ok_or("unterminated line")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|e| e.to_string())?;
        rest = &rest[eol + 1..];
        if line.starts_with('#') {
            continue;
        }
        let (tag, len) = line.split_once(' ').ok_or(format!("bad record line {line:?}"))?;
        let from = match tag {
            ">" => From::Client,
            "<" => From::Server,
            _ => return Err(format!("bad tag in {line:?}")),
        };
        if len == "EOF" {
            records.push(Record { from, data: None });
            continue;
        }
        let len: usize = len.parse().map_err(|e| format!("{line:?}: {e}"))?;
        if rest.len() < len + 1 || rest[len] != b'\n' {
            return Err(format!("record {line:?} truncated"));
        }
        records.push(Record { from, data: Some(rest[..len].to_vec()) });
        rest = &rest[len + 1..];
    }
    Ok(records)
}

/// The timing record `record` is fed with.
pub fn timing(record: usize) -> Timing {
    let r = record as u64;
    Timing { enter_ns: 1_000 * r, exit_ns: 1_000 * r + 7 }
}

/// Which record a timing came from.
pub fn record_of(t: Timing) -> u64 {
    assert_eq!(t.exit_ns, t.enter_ns + 7, "not a timing we fed: {t:?}");
    t.enter_ns / 1_000
}

/// Panics with a readable line diff if `got` differs from `expected`.
pub fn assert_same(what: &str, expected: &Value, got: &Value) {
    if expected == got {
        return;
    }
    let (a, b) = (
        serde_json::to_string_pretty(expected).unwrap_or_default(),
        serde_json::to_string_pretty(got).unwrap_or_default(),
    );
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let from = first.saturating_sub(8);
    let mut msg = format!("{what}: differs from the whole-chunk run at line {first}\n");
    for l in &a[from..a.len().min(first + 8)] {
        msg += &format!("- {l}\n");
    }
    msg += "  ---\n";
    for l in &b[from..b.len().min(first + 8)] {
        msg += &format!("+ {l}\n");
    }
    panic!("{msg}");
}

/// Cut points for "every byte boundary" runs: all of them, except in records over
/// 4 KiB, where the first `head` points, the last 256 and a random sample are used.
pub fn boundary_points(len: usize, head: usize, rng: &mut StdRng) -> Vec<usize> {
    if len <= 4096 {
        return (1..len).collect();
    }
    let mut v: Vec<usize> = (1..head).chain(len - 256..len).collect();
    v.extend((0..64).map(|_| rng.random_range(1..len)));
    v.sort_unstable();
    v.dedup();
    v
}
