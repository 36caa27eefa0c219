//! The service map printed when the agent exits with the live waterfall on: one line per
//! edge of the service graph, with its calls, errors, p99 and propagation breaks. It is
//! fed by the same pairing of CLIENT and SERVER spans as the service-graph metrics.
use std::collections::HashMap;
use std::fmt::Write as _;

use super::Label;
use crate::export::console::{fmt_duration, sanitize};

/// Edges kept at most; calls on further edges are counted in `other`.
const MAX_EDGES: usize = 256;
/// Latency buckets per power of two (a bucket is at most 9 % wide).
const SUB_BUCKETS: u32 = 8;
/// Buckets from 1 µs to about 1.2 hours (32 powers of two).
const BUCKETS: usize = 32 * SUB_BUCKETS as usize;

/// One edge's counts and latency distribution.
#[derive(Clone, Debug)]
pub struct EdgeStats {
    pub calls: u64,
    pub errors: u64,
    pub breaks: u64,
    /// Log-spaced latency buckets (the server side's duration when known, else the
    /// client's): [`SUB_BUCKETS`] per octave from 1 µs.
    latency: Box<[u32; BUCKETS]>,
}

impl Default for EdgeStats {
    fn default() -> Self {
        Self { calls: 0, errors: 0, breaks: 0, latency: Box::new([0; BUCKETS]) }
    }
}

impl EdgeStats {
    fn record(&mut self, secs: f64, failed: bool, broken: bool) {
        self.calls += 1;
        self.errors += u64::from(failed);
        self.breaks += u64::from(broken);
        let b = bucket(secs);
        self.latency[b] = self.latency[b].saturating_add(1);
    }

    /// The 99th percentile: the upper bound of the bucket holding it (an estimate at
    /// most one bucket, 9 %, above the true value); `None` before any call.
    #[must_use]
    pub fn p99_ns(&self) -> Option<u64> {
        let n: u64 = self.latency.iter().map(|&c| u64::from(c)).sum();
        if n == 0 {
            return None;
        }
        // The smallest rank r with r >= 0.99 n.
        let rank = (n * 99).div_ceil(100).max(1);
        let mut seen = 0;
        for (b, &c) in self.latency.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(upper_ns(b));
            }
        }
        Some(upper_ns(BUCKETS - 1))
    }
}

/// Bucket of a duration: 0 holds everything up to 1 µs.
fn bucket(secs: f64) -> usize {
    let us = secs * 1e6;
    if us.is_nan() || us <= 1.0 {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let b = (us.log2() * f64::from(SUB_BUCKETS)).ceil() as usize;
    b.min(BUCKETS - 1)
}

/// The largest duration bucket `b` holds, in nanoseconds.
fn upper_ns(b: usize) -> u64 {
    #[allow(clippy::cast_precision_loss)]
    let us = (b as f64 / f64::from(SUB_BUCKETS)).exp2();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ns = (us * 1e3).round() as u64;
    ns
}

/// Edges (caller → callee) with their stats, bounded.
#[derive(Clone, Debug, Default)]
pub struct ServiceMap {
    edges: HashMap<(Label, Label), EdgeStats>,
    /// Calls on edges beyond [`MAX_EDGES`].
    pub other: u64,
}

impl ServiceMap {
    /// Counts one call from `client` to `server`.
    pub fn record(&mut self, client: &str, server: &str, secs: f64, failed: bool, broken: bool) {
        self.record_labels(&Label::of(client), &Label::of(server), secs, failed, broken);
    }

    /// As [`Self::record`]; short names are held inline (no allocation per call).
    pub(super) fn record_labels(&mut self, client: &Label, server: &Label, secs: f64, failed: bool, broken: bool) {
        let key = (client.clone(), server.clone());
        if let Some(e) = self.edges.get_mut(&key) {
            e.record(secs, failed, broken);
        } else if self.edges.len() < MAX_EDGES {
            let mut e = EdgeStats::default();
            e.record(secs, failed, broken);
            self.edges.insert(key, e);
        } else {
            self.other += 1;
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty() && self.other == 0
    }

    /// The edges, by caller then callee.
    #[must_use]
    pub fn edges(&self) -> Vec<(&str, &str, &EdgeStats)> {
        let mut v: Vec<_> = self.edges.iter().map(|((c, s), e)| (c.0.as_str(), s.0.as_str(), e)).collect();
        v.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        v
    }

    /// The map as text, one edge per line:
    ///
    /// ```text
    /// ── service map · 5 edges · 1 with propagation breaks ──
    ///   gateway → cart          60 calls            p99  124 ms
    ///   cart → inventory        60 calls            p99  121 ms  60 breaks
    ///   payment → fraud-check   60 calls  6 errors  p99 5.93 ms
    /// ```
    #[must_use]
    pub fn render(&self) -> String {
        let edges = self.edges();
        if edges.is_empty() && self.other == 0 {
            return "── service map · no calls between services were seen ──\n".to_owned();
        }
        let broken = edges.iter().filter(|e| e.2.breaks > 0).count();
        let mut out = format!("── service map · {} edge{}", edges.len(), if edges.len() == 1 { "" } else { "s" });
        if broken > 0 {
            let _ = write!(out, " · {broken} with propagation breaks");
        }
        out.push_str(" ──\n");
        let names: Vec<String> = edges.iter().map(|(c, s, _)| format!("{} → {}", sanitize(c), sanitize(s))).collect();
        let name_w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        for (name, (_, _, e)) in names.iter().zip(&edges) {
            let pad = name_w - name.chars().count();
            let errors = if e.errors > 0 { plural(e.errors, "error") } else { String::new() };
            let p99 = e.p99_ns().map(fmt_duration).unwrap_or_default();
            let mut line =
                format!("  {name}{}  {:>11}  {errors:<10}  p99 {p99:>8}", " ".repeat(pad), plural(e.calls, "call"));
            if e.breaks > 0 {
                let _ = write!(line, "  {}", plural(e.breaks, "propagation break"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if self.other > 0 {
            let _ = writeln!(out, "  (+{} on further edges, not shown)", plural(self.other, "call"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_within_a_bucket_of_the_truth() {
        let mut e = EdgeStats::default();
        assert_eq!(e.p99_ns(), None);
        // 1..=1000 ms: the 99th percentile is 990 ms.
        for ms in 1..=1000 {
            e.record(f64::from(ms) / 1e3, false, false);
        }
        let p99 = e.p99_ns().expect("calls") as f64;
        assert!((990e6..=990e6 * 1.1).contains(&p99), "p99 {p99}");
        // One slow call among 100 fast ones is above the 99th percentile.
        let mut e = EdgeStats::default();
        for _ in 0..100 {
            e.record(0.002, false, false);
        }
        e.record(3.0, false, false);
        let p99 = e.p99_ns().expect("calls") as f64;
        assert!((2e6..=2.2e6).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn buckets_cover_every_duration() {
        for secs in [f64::NAN, -1.0, 0.0, 1e-9, 1e-6, 0.5, 1e9, f64::INFINITY] {
            let b = bucket(secs);
            assert!(b < BUCKETS, "{secs}");
        }
        // Upper bounds grow and each duration is at most its bucket's bound.
        for secs in [2e-6, 3.3e-5, 0.0123, 1.5, 600.0] {
            let up = upper_ns(bucket(secs)) as f64;
            assert!(up >= secs * 1e9 * 0.999 && up <= secs * 1e9 * 1.1, "{secs}: {up}");
        }
    }

    #[test]
    fn renders_edges_sorted_with_errors_and_breaks() {
        let mut m = ServiceMap::default();
        assert!(m.is_empty());
        assert!(m.render().contains("no calls"));
        for i in 0..10 {
            m.record("gateway", "payment", 0.010, i == 3, false);
            m.record("cart", "inventory", 0.100, false, true);
            m.record("gateway", "cart", 0.110, false, false);
        }
        let text = m.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "── service map · 3 edges · 1 with propagation breaks ──", "{text}");
        assert!(lines[1].starts_with("  cart → inventory  ") && lines[1].ends_with("10 propagation breaks"), "{text}");
        assert!(lines[2].starts_with("  gateway → cart") && !lines[2].contains("error"), "{text}");
        assert!(lines[3].starts_with("  gateway → payment") && lines[3].contains(" 1 error "), "{text}");
        assert!(lines[1].contains("10 calls") && lines[1].contains("p99   101 ms"), "{text}");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn edges_are_bounded() {
        let mut m = ServiceMap::default();
        for i in 0..MAX_EDGES + 10 {
            m.record(&format!("c{i}"), "s", 0.001, false, false);
        }
        assert_eq!(m.edges().len(), MAX_EDGES);
        assert_eq!(m.other, 10);
        assert!(m.render().contains("(+10 calls on further edges, not shown)"));
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let mut m = ServiceMap::default();
        m.record("evil\x1b[2J", "s\n", 0.001, false, false);
        let text = m.render();
        assert!(!text.contains('\x1b') && text.lines().count() == 2, "{text:?}");
    }
}
