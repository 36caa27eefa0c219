//! What the golden tests share: the capture file format written by
//! `tests/data/*/capture.py` (a magic line, `#` comment lines, then records `> N` / `< N`
//! followed by N bytes and a newline, or `> EOF` / `< EOF`), and the fake syscall timings
//! the captures are replayed with.
#![allow(dead_code, reason = "each golden test binary uses its own part of this module")]

use std::path::{Path, PathBuf};

use ghostwire::protocol::Timing;

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
