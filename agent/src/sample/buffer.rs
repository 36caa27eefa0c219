//! The tail buffer: spans wait here, per trace, until their trace is complete. Bounded by
//! traces and by (estimated) bytes; past either bound the oldest trace is handed back
//! for a forced decision.
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::time::{Duration, Instant};

use crate::span::{AttrValue, Attribute, Span, Status};
use crate::stats::{self, Gauge};

/// One trace's spans while it waits.
pub(super) struct Pending {
    pub trace_id: [u8; 16],
    pub spans: Vec<Span>,
    /// An entry span (a root, or a server span with a received context) has arrived.
    pub has_entry: bool,
    pub(super) bytes: usize,
    first: Instant,
    /// When it is next looked at: the quiet period after its last span.
    due: Instant,
    /// Creation order, to tell a live entry of `by_age` from a stale one.
    seq: u64,
}

pub(super) struct Buffer {
    pub(super) traces: HashMap<[u8; 16], Pending>,
    /// `(due, trace)` in the order pushed, which is the order of `due` (the clock only
    /// moves forward and the quiet period is fixed); stale entries are skipped.
    by_due: VecDeque<(Instant, [u8; 16])>,
    /// `(seq, trace)` oldest first, for overflow; stale entries are skipped.
    by_age: VecDeque<(u64, [u8; 16])>,
    next_seq: u64,
    pub(super) bytes: usize,
    spans: usize,
    max_traces: usize,
    max_bytes: usize,
    quiet: Duration,
    max_wait: Duration,
}

/// Fixed cost of one buffered trace besides its spans: its entry, its queue entries.
const TRACE_OVERHEAD: usize = size_of::<Pending>() + size_of::<[u8; 16]>() + 2 * 32;

/// Estimated heap bytes of one span while it is buffered (its resource is shared and
/// not counted).
#[must_use]
pub fn span_bytes(s: &Span) -> usize {
    let text = |t: &crate::span::model::Text| if t.is_heap_allocated() { t.capacity() } else { 0 };
    let attr = |(k, v): &Attribute| {
        let key = match k {
            std::borrow::Cow::Owned(k) => k.capacity(),
            std::borrow::Cow::Borrowed(_) => 0,
        };
        key + match v {
            AttrValue::Str(t) => text(t),
            _ => 0,
        }
    };
    let status = match &s.status {
        Status::Error { message } => message.capacity(),
        Status::Unset => 0,
    };
    size_of::<Span>()
        + s.attributes.capacity() * size_of::<Attribute>()
        + s.attributes.iter().map(attr).sum::<usize>()
        + text(&s.name)
        + s.trace_state.capacity()
        + status
}

impl Buffer {
    pub fn new(max_traces: usize, max_bytes: usize, quiet: Duration, max_wait: Duration) -> Self {
        Self {
            traces: HashMap::new(),
            by_due: VecDeque::new(),
            by_age: VecDeque::new(),
            next_seq: 0,
            bytes: 0,
            spans: 0,
            max_traces: max_traces.max(1),
            max_bytes,
            quiet,
            max_wait,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Buffers `span`; returns the traces pushed out to make room (oldest first).
    pub fn add(&mut self, span: Span, now: Instant) -> Vec<Pending> {
        let size = span_bytes(&span);
        let new_trace = !self.traces.contains_key(&span.trace_id);
        let mut forced = Vec::new();
        while !self.traces.is_empty()
            && ((new_trace && self.traces.len() >= self.max_traces)
                || self.bytes + size + if new_trace { TRACE_OVERHEAD } else { 0 } > self.max_bytes)
        {
            let Some(p) = self.pop_oldest() else { break };
            if p.trace_id == span.trace_id {
                // The trace itself was the oldest: it is decided with its new span.
                let mut p = p;
                p.has_entry |= super::is_entry(&span);
                p.spans.push(span);
                forced.push(p);
                self.publish();
                return forced;
            }
            forced.push(p);
        }
        let due = now + self.quiet;
        let entry = super::is_entry(&span);
        let trace = span.trace_id;
        let p = self.traces.entry(trace).or_insert_with(|| {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.by_age.push_back((seq, trace));
            self.bytes += TRACE_OVERHEAD;
            Pending {
                trace_id: trace,
                spans: Vec::new(),
                has_entry: false,
                bytes: TRACE_OVERHEAD,
                first: now,
                due,
                seq,
            }
        });
        p.has_entry |= entry;
        p.spans.push(span);
        p.bytes += size;
        p.due = due;
        self.bytes += size;
        self.spans += 1;
        self.by_due.push_back((due, trace));
        self.compact();
        self.publish();
        forced
    }

    /// The traces complete by `now` (entry span seen, quiet since), or waiting past the
    /// longest wait without one.
    pub fn take_due(&mut self, now: Instant) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Some(&(due, trace)) = self.by_due.front() {
            if due > now {
                break;
            }
            self.by_due.pop_front();
            let Some(p) = self.traces.get_mut(&trace) else { continue };
            if p.due != due {
                continue;
            }
            if p.has_entry || now.saturating_duration_since(p.first) >= self.max_wait {
                if let Some(p) = self.remove(&trace) {
                    out.push(p);
                }
            } else {
                // Not complete yet: look again one quiet period later, or at the
                // longest wait.
                let next = (now + self.quiet).min(p.first + self.max_wait).max(now + Duration::from_millis(1));
                p.due = next;
                self.by_due.push_back((next, trace));
            }
        }
        if !out.is_empty() {
            self.publish();
        }
        out
    }

    pub fn take_all(&mut self) -> Vec<Pending> {
        self.by_due.clear();
        self.by_age.clear();
        self.bytes = 0;
        self.spans = 0;
        let out = self.traces.drain().map(|(_, p)| p).collect();
        self.publish();
        out
    }

    fn pop_oldest(&mut self) -> Option<Pending> {
        while let Some((seq, trace)) = self.by_age.pop_front() {
            if self.traces.get(&trace).is_some_and(|p| p.seq == seq) {
                return self.remove(&trace);
            }
        }
        None
    }

    fn remove(&mut self, trace: &[u8; 16]) -> Option<Pending> {
        let p = self.traces.remove(trace)?;
        self.bytes -= p.bytes;
        self.spans -= p.spans.len();
        Some(p)
    }

    /// Drops stale queue entries once they outnumber the live ones.
    fn compact(&mut self) {
        if self.by_age.len() > 2 * self.traces.len() + 1024 {
            let traces = &self.traces;
            self.by_age.retain(|(seq, t)| traces.get(t).is_some_and(|p| p.seq == *seq));
        }
    }

    fn publish(&self) {
        let s = stats::global();
        s.set(Gauge::SampleBufferTraces, self.traces.len() as u64);
        s.set(Gauge::SampleBufferSpans, self.spans as u64);
        s.set(Gauge::SampleBufferBytes, self.bytes as u64);
        s.raise(Gauge::SampleBufferTracesPeak, self.traces.len() as u64);
        s.raise(Gauge::SampleBufferBytesPeak, self.bytes as u64);
    }
}
