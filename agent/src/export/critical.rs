//! A trace's critical path: the chain of spans that determined its duration, computed
//! the way Jaeger's critical-path view does.
//!
//! From the root's end, walk back: the child that finished last before the current
//! point is on the path; the parent's own time fills the gaps between such children;
//! inside the chosen child the same walk repeats, and on leaving it the point moves to
//! the child's start. A child that ran in parallel with the chosen one (it ended after
//! the point) is not on the path.
//!
//! Before the walk the tree is made consistent: a child that starts before its parent
//! or ends after it (clock skew between processes, an asynchronous call answered after
//! its caller returned) is clamped to its parent's interval; a child entirely outside
//! it is dropped with its subtree. Spans whose parent is not in the trace (and extra
//! roots) hang under the chosen root: the longest root, the earliest on a tie.
//! Zero-length spans and cycles are harmless: every child is considered at most once.
use std::collections::HashMap;

use crate::span::{AttrValue, Span, SpanKind};

/// One span's timing and place in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub id: [u8; 8],
    /// All zero for a root.
    pub parent: [u8; 8],
    pub start: u64,
    pub end: u64,
}

impl Timing {
    #[must_use]
    pub fn of(span: &Span) -> Self {
        Self {
            id: span.span_id,
            parent: span.parent_span_id,
            start: span.start_unix_ns,
            end: span.end_unix_ns.max(span.start_unix_ns),
        }
    }
}

/// The critical path of one trace, indexed like the input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CriticalPath {
    /// The span the walk started from.
    pub root: usize,
    /// The root's duration: the sum of every span's self time on the path.
    pub total_ns: u64,
    /// Per span: its own time on the path (0 when off it).
    pub self_ns: Vec<u64>,
    /// Per span: the intervals `[start, end)` during which it was on the path, latest
    /// first.
    pub sections: Vec<Vec<(u64, u64)>>,
    /// Per span: whether the walk went through it (zero-length spans included).
    pub on: Vec<bool>,
}

impl CriticalPath {
    /// Whether span `i` is on the path (zero-length spans on it included).
    #[must_use]
    pub fn on_path(&self, i: usize) -> bool {
        self.on.get(i).copied().unwrap_or(false)
    }

    /// The span with the largest self time on the path (the earliest index on a tie).
    #[must_use]
    pub fn dominant_span(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, &ns) in self.self_ns.iter().enumerate() {
            if best.is_none_or(|b| ns > self.self_ns[b]) && self.on_path(i) {
                best = Some(i);
            }
        }
        best
    }
}

/// Computes the critical path; `None` for an empty trace.
#[must_use]
pub fn critical_path(spans: &[Timing]) -> Option<CriticalPath> {
    let n = spans.len();
    if n == 0 {
        return None;
    }
    let mut by_id: HashMap<[u8; 8], usize> = HashMap::with_capacity(n);
    for (i, s) in spans.iter().enumerate() {
        by_id.entry(s.id).or_insert(i);
    }
    let parent_of = |i: usize| -> Option<usize> {
        let s = &spans[i];
        if s.parent == [0; 8] {
            return None;
        }
        by_id.get(&s.parent).copied().filter(|&p| p != i)
    };
    // The root: among spans without a parent in the trace, the longest.
    let root = (0..n)
        .filter(|&i| parent_of(i).is_none())
        .max_by(|&a, &b| {
            let (da, db) = (spans[a].end - spans[a].start, spans[b].end - spans[b].start);
            da.cmp(&db).then(spans[b].start.cmp(&spans[a].start)).then(b.cmp(&a))
        })
        // Every span is on a cycle: the longest one.
        .or_else(|| (0..n).max_by_key(|&i| (spans[i].end - spans[i].start, std::cmp::Reverse(i))))?;
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        if i == root {
            continue;
        }
        match parent_of(i) {
            Some(p) => children[p].push(i),
            None => children[root].push(i),
        }
    }

    // Top down from the root: clamp each child into its parent, drop what lies outside.
    let mut clamped: Vec<Option<(u64, u64)>> = vec![None; n];
    clamped[root] = Some((spans[root].start, spans[root].end));
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let Some((ps, pe)) = clamped[p] else { continue };
        for &c in &children[p] {
            if clamped[c].is_some() || c == root {
                continue; // reached twice (a cycle through the root, a duplicate id)
            }
            let (cs, ce) = (spans[c].start, spans[c].end);
            // Outside the parent: asynchronous, or skewed beyond repair.
            let outside = if cs == ce { cs < ps || cs > pe } else { ce <= ps || cs >= pe };
            if outside {
                continue;
            }
            clamped[c] = Some((cs.clamp(ps, pe), ce.clamp(ps, pe)));
            kids[p].push(c);
            stack.push(c);
        }
        // Latest end first; among equal ends the later start (the shorter) first.
        kids[p].sort_by(|&a, &b| {
            let (a_, b_) = (clamped[a].unwrap_or_default(), clamped[b].unwrap_or_default());
            b_.1.cmp(&a_.1).then(b_.0.cmp(&a_.0)).then(a.cmp(&b))
        });
    }

    let mut cp = CriticalPath {
        root,
        total_ns: spans[root].end - spans[root].start,
        self_ns: vec![0; n],
        sections: vec![Vec::new(); n],
        on: vec![false; n],
    };
    // Frames: (span, next child to consider, the point walked back to).
    let mut frames: Vec<(usize, usize, u64)> = vec![(root, 0, spans[root].end)];
    while let Some(frame) = frames.last_mut() {
        let (p, cursor, point) = *frame;
        let (ps, _) = clamped[p].unwrap_or_default();
        let list = &kids[p];
        let mut k = cursor;
        // Children that ended after the point ran beside the one on the path.
        while k < list.len() && clamped[list[k]].is_some_and(|(_, e)| e > point) {
            k += 1;
        }
        if k == list.len() {
            add(&mut cp, p, ps, point);
            frames.pop();
            if let Some(up) = frames.last_mut() {
                // Back in the parent: the walk goes on from the child's start.
                up.2 = ps;
            }
            continue;
        }
        let c = list[k];
        let (_, ce) = clamped[c].unwrap_or_default();
        add(&mut cp, p, ce, point);
        frame.1 = k + 1;
        frames.push((c, 0, ce));
    }
    Some(cp)
}

/// Records `[from, to)` as span `i`'s time on the path; the span is on it even when
/// the interval is empty.
fn add(cp: &mut CriticalPath, i: usize, from: u64, to: u64) {
    cp.on[i] = true;
    if to > from {
        cp.self_ns[i] += to - from;
        cp.sections[i].push((from, to));
    }
}

/// The hop that dominated a trace: a call (a CLIENT span and the SERVER spans that
/// answered it) or a span alone (an entry SERVER span, a call whose server was not
/// traced), with its time on the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub client: Option<usize>,
    pub server: Option<usize>,
    pub ns: u64,
}

/// Groups the path's self times by hop (a SERVER span goes with its parent CLIENT span
/// when that is another process's call) and returns the largest.
#[must_use]
pub fn dominant_hop(spans: &[std::sync::Arc<Span>], cp: &CriticalPath) -> Option<Hop> {
    let mut by_id: HashMap<[u8; 8], usize> = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        by_id.entry(s.span_id).or_insert(i);
    }
    // Hop key: the CLIENT span's index for a call, else the span's own.
    let mut hops: HashMap<usize, Hop> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if !cp.on_path(i) {
            continue;
        }
        let client = match s.kind {
            SpanKind::Client => Some(i),
            SpanKind::Server => by_id
                .get(&s.parent_span_id)
                .copied()
                .filter(|&p| !s.is_root() && p != i && spans[p].kind == SpanKind::Client),
        };
        let key = client.unwrap_or(i);
        let hop = hops.entry(key).or_insert(Hop { client, server: None, ns: 0 });
        if s.kind == SpanKind::Server && hop.server.is_none() {
            hop.server = Some(i);
        }
        hop.ns += cp.self_ns[i];
    }
    hops.into_values().max_by(|a, b| {
        let first = |h: &Hop| h.client.or(h.server).unwrap_or(usize::MAX);
        a.ns.cmp(&b.ns).then(first(b).cmp(&first(a)))
    })
}

/// `caller → callee (operation)` for a hop: services, and the server's path (else the
/// client's, else the span name).
#[must_use]
pub fn describe_hop(spans: &[std::sync::Arc<Span>], hop: &Hop) -> String {
    let service = |i: usize| spans[i].resource.service_name.clone();
    let op = |i: usize| {
        let s = &spans[i];
        let path = match (s.attr("url.path"), s.attr("url.full"), s.attr("rpc.method")) {
            (_, _, Some(AttrValue::Str(m))) => Some(m.to_string()),
            (Some(AttrValue::Str(p)), _, _) => Some(p.to_string()),
            (None, Some(AttrValue::Str(full)), _) => {
                let rest = full.split_once("://").map_or(full.as_str(), |(_, r)| r);
                rest.find('/').map(|i| rest[i..].to_owned())
            }
            _ => None,
        };
        match path {
            Some(p) if !s.name.contains(&p) => format!("{} {p}", s.name),
            _ => s.name.to_string(),
        }
    };
    match (hop.client, hop.server) {
        (Some(c), Some(s)) => format!("{} → {} ({})", service(c), service(s), op(s)),
        (Some(c), None) => {
            let peer = match spans[c].attr("server.address") {
                Some(AttrValue::Str(a)) => a.to_string(),
                _ => "?".to_owned(),
            };
            format!("{} → {peer} ({})", service(c), op(c))
        }
        (None, Some(s)) => format!("{} ({})", service(s), op(s)),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: u8, parent: u8, start: u64, end: u64) -> Timing {
        Timing { id: [id; 8], parent: [parent; 8], start, end }
    }

    /// (id, self time) of the spans on the path, by id.
    fn path(spans: &[Timing]) -> Vec<(u8, u64)> {
        let cp = critical_path(spans).expect("non-empty");
        let mut out: Vec<(u8, u64)> =
            (0..spans.len()).filter(|&i| cp.on_path(i)).map(|i| (spans[i].id[0], cp.self_ns[i])).collect();
        out.sort_unstable();
        assert_eq!(cp.self_ns.iter().sum::<u64>(), cp.total_ns, "self times add up to the root's duration");
        out
    }

    #[test]
    fn single_span_is_its_own_path() {
        assert_eq!(path(&[t(1, 0, 10, 50)]), [(1, 40)]);
        assert_eq!(critical_path(&[]), None);
    }

    #[test]
    fn sequential_children_are_all_on_the_path() {
        // root 0..100: a 10..30, b 40..90; gaps 0..10, 30..40, 90..100 are the root's.
        let spans = [t(1, 0, 0, 100), t(2, 1, 10, 30), t(3, 1, 40, 90)];
        assert_eq!(path(&spans), [(1, 30), (2, 20), (3, 50)]);
    }

    #[test]
    fn of_parallel_children_the_last_to_finish_is_on_the_path() {
        // a 10..60 and b 20..80 in parallel: b finished last; a ended after b started,
        // so only the root's time before b remains.
        let spans = [t(1, 0, 0, 100), t(2, 1, 10, 60), t(3, 1, 20, 80)];
        assert_eq!(path(&spans), [(1, 40), (3, 60)]);
        // c 0..15 ended before b started: it is on the path again.
        let spans = [t(1, 0, 0, 100), t(2, 1, 10, 60), t(3, 1, 20, 80), t(4, 1, 2, 15)];
        assert_eq!(path(&spans), [(1, 27), (3, 60), (4, 13)]);
    }

    #[test]
    fn nested_calls_descend() {
        // gateway 0..100 → client 5..95 → server 10..90 → client 20..80 → server 25..75.
        let spans =
            [t(1, 0, 0, 100), t(2, 1, 5, 95), t(3, 2, 10, 90), t(4, 3, 20, 80), t(5, 4, 25, 75), t(6, 3, 12, 15)];
        assert_eq!(path(&spans), [(1, 10), (2, 10), (3, 17), (4, 10), (5, 50), (6, 3)]);
    }

    #[test]
    fn overrunning_and_skewed_children_are_clamped() {
        // A child starting before its parent and ending after it (skew): clamped to 0..100.
        let spans = [t(1, 0, 0, 100), t(2, 1, 0, 120)];
        assert_eq!(path(&spans), [(1, 0), (2, 100)]);
        let spans = [t(1, 0, 10, 100), t(2, 1, 5, 40)];
        assert_eq!(path(&spans), [(1, 60), (2, 30)]);
        // A grandchild is clamped to its clamped parent.
        let spans = [t(1, 0, 0, 100), t(2, 1, 50, 150), t(3, 2, 60, 140)];
        assert_eq!(path(&spans), [(1, 50), (2, 10), (3, 40)]);
    }

    #[test]
    fn asynchronous_children_after_the_parent_are_off_the_path() {
        // Starts after its parent ended: fire-and-forget; not part of the duration.
        let spans = [t(1, 0, 0, 100), t(2, 1, 100, 300), t(3, 2, 150, 200)];
        assert_eq!(path(&spans), [(1, 100)]);
    }

    #[test]
    fn missing_parents_hang_under_the_longest_root() {
        // 3's parent (9) is not in the trace; 4 is a second, shorter root.
        let spans = [t(1, 0, 0, 100), t(3, 9, 20, 70), t(4, 0, 80, 90)];
        let cp = critical_path(&spans).unwrap();
        assert_eq!(cp.root, 0);
        assert_eq!(path(&spans), [(1, 40), (3, 50), (4, 10)]);
    }

    #[test]
    fn zero_length_spans_and_ties_terminate() {
        let spans = [t(1, 0, 0, 100), t(2, 1, 50, 50), t(3, 1, 50, 50), t(4, 1, 20, 50)];
        let p = path(&spans);
        assert_eq!(p.iter().map(|(_, ns)| ns).sum::<u64>(), 100);
        assert!(p.contains(&(4, 30)), "{p:?}");
        // A zero-length trace: the root alone.
        assert_eq!(path(&[t(1, 0, 7, 7), t(2, 1, 7, 7)]).first(), Some(&(1, 0)));
    }

    #[test]
    fn cycles_and_duplicates_do_not_loop() {
        let spans = [t(1, 2, 0, 100), t(2, 1, 10, 50), t(3, 3, 0, 10), t(2, 0, 0, 5)];
        let cp = critical_path(&spans).unwrap();
        assert_eq!(cp.self_ns.iter().sum::<u64>(), cp.total_ns);
    }

    #[test]
    fn input_order_does_not_matter() {
        let spans = [t(1, 0, 0, 100), t(2, 1, 10, 60), t(3, 1, 20, 80), t(4, 1, 2, 15), t(5, 3, 30, 70)];
        let want = path(&spans);
        let mut rev = spans;
        rev.reverse();
        assert_eq!(path(&rev), want);
        rev.swap(1, 3);
        assert_eq!(path(&rev), want);
    }

    #[test]
    fn sections_are_the_intervals_on_the_path() {
        let spans = [t(1, 0, 0, 100), t(2, 1, 10, 30), t(3, 1, 40, 90)];
        let cp = critical_path(&spans).unwrap();
        assert_eq!(cp.sections[0], [(90, 100), (30, 40), (0, 10)]);
        assert_eq!(cp.sections[2], [(40, 90)]);
        assert_eq!(cp.dominant_span(), Some(2));
    }

    mod hops {
        use super::*;
        use crate::export::tests::{mk_span, resource};
        use std::borrow::Cow;
        use std::sync::Arc;

        fn with_path(span: Arc<Span>, path: &str) -> Arc<Span> {
            let mut s = (*span).clone();
            s.attributes = vec![(Cow::Borrowed("url.path"), path.into())];
            Arc::new(s)
        }

        #[test]
        fn the_slow_call_dominates() {
            let gw = resource(1, "gateway");
            let cart = resource(2, "cart");
            let inv = resource(3, "inventory");
            let spans = vec![
                with_path(mk_span(&gw, 7, 1, 0, SpanKind::Server, "GET", 0, 400), "/checkout"),
                mk_span(&gw, 7, 2, 1, SpanKind::Client, "GET", 10, 380),
                with_path(mk_span(&cart, 7, 3, 2, SpanKind::Server, "GET", 20, 360), "/cart"),
                mk_span(&cart, 7, 4, 3, SpanKind::Client, "GET", 30, 340),
                with_path(mk_span(&inv, 7, 5, 4, SpanKind::Server, "GET", 40, 300), "/stock"),
            ];
            let timings: Vec<Timing> = spans.iter().map(|s| Timing::of(s)).collect();
            let cp = critical_path(&timings).unwrap();
            let hop = dominant_hop(&spans, &cp).unwrap();
            assert_eq!((hop.client, hop.server), (Some(3), Some(4)));
            // The server's 300 µs, and 40 µs of the client's own (connecting, reading).
            assert_eq!(hop.ns, 300_000 + 40_000);
            assert_eq!(describe_hop(&spans, &hop), "cart → inventory (GET /stock)");
        }

        #[test]
        fn an_entry_span_alone_is_a_hop() {
            let gw = resource(1, "gateway");
            let spans = vec![with_path(mk_span(&gw, 7, 1, 0, SpanKind::Server, "GET", 0, 400), "/checkout")];
            let cp = critical_path(&[Timing::of(&spans[0])]).unwrap();
            let hop = dominant_hop(&spans, &cp).unwrap();
            assert_eq!(describe_hop(&spans, &hop), "gateway (GET /checkout)");
        }
    }
}
