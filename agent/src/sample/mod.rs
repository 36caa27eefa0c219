//! Sampling: which traces are exported as spans. The stage sits between the span
//! builder (after linking has settled a span's trace) and the exporters, so the
//! waterfall, JSONL and OTLP all see one decision. Decisions are per trace: a kept
//! trace is kept whole, with every span ghostwire made for it.
//!
//! - **Head** (always on): a trace that arrived with a context follows its sampled flag
//!   (parent-based); a trace ghostwire started is decided from its trace id the way the
//!   OTel `TraceIdRatioBased` sampler decides (the 56 low bits of the id against a
//!   rejection threshold), so agents on different nodes agree without talking.
//! - **Tail** (`keep_errors`, `keep_slower_than`) and **adaptive** buffer a trace's
//!   spans until it is complete (an entry span has arrived and nothing more for a quiet
//!   period), bounded by traces and bytes; overflow forces the oldest decision.
//! - **Rate limit**: a token bucket over kept traces, after the other rules.
//!
//! Metrics are taken before this stage and see every span, sampled or not.
mod adaptive;
mod buffer;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::span::context::FLAG_SAMPLED;
use crate::span::{AttrValue, Span, SpanKind, Status, LOCAL_ROOT};
use crate::stats::{self, Counter};
use adaptive::Adaptive;
use buffer::{Buffer, Pending};

/// Sampling settings (the CLI and `OTEL_TRACES_SAMPLER` resolve into this).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Probability of keeping a trace ghostwire starts (and, without `parent_based`,
    /// any trace), in `0.0..=1.0`.
    pub ratio: f64,
    /// A received context's sampled flag decides its trace (`parentbased_*`).
    pub parent_based: bool,
    /// Tail: keep every trace with an error span.
    pub keep_errors: bool,
    /// Tail: keep every trace whose entry span took longer than this.
    pub keep_slower_than: Option<Duration>,
    /// Kept traces per second at most (token bucket, burst of one second).
    pub max_traces_per_second: Option<f64>,
    /// Adaptive: traces per second to keep per operation (for traces ghostwire starts;
    /// replaces `ratio` for them).
    pub adaptive_per_operation: Option<f64>,
    /// Tail: a trace is complete when nothing arrived for this long after its entry span.
    pub quiet: Duration,
    /// Tail: a trace without an entry span is decided after this long.
    pub max_wait: Duration,
    /// Tail buffer bounds.
    pub buffer_traces: usize,
    pub buffer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ratio: 1.0,
            parent_based: true,
            keep_errors: false,
            keep_slower_than: None,
            max_traces_per_second: None,
            adaptive_per_operation: None,
            quiet: DEFAULT_QUIET,
            max_wait: DEFAULT_MAX_WAIT,
            buffer_traces: DEFAULT_BUFFER_TRACES,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

/// Defaults of the tail buffer (documented in the README).
pub const DEFAULT_QUIET: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);
pub const DEFAULT_BUFFER_TRACES: usize = 20_000;
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;

/// Decisions remembered for spans that arrive after their trace was decided.
const DECIDED_CAP: usize = 65_536;

impl Config {
    /// Whether spans wait in the buffer for a per-trace decision.
    #[must_use]
    pub fn buffered(&self) -> bool {
        self.keep_errors || self.keep_slower_than.is_some() || self.adaptive_per_operation.is_some()
    }
}

/// Why a trace was kept (the value of `ghostwire.sampling.reason`) or dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Head,
    Parent,
    Error,
    Slow,
    Adaptive,
    RateLimit,
}

impl Reason {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Reason::Head => "head",
            Reason::Parent => "parent",
            Reason::Error => "error",
            Reason::Slow => "slow",
            Reason::Adaptive => "adaptive",
            Reason::RateLimit => "rate_limit",
        }
    }

    fn counter(self, kept: bool) -> Counter {
        match (self, kept) {
            (Reason::Head, true) => Counter::SampleKeptHead,
            (Reason::Parent, true) => Counter::SampleKeptParent,
            (Reason::Error, _) => Counter::SampleKeptError,
            (Reason::Slow, _) => Counter::SampleKeptSlow,
            (Reason::Adaptive, true) => Counter::SampleKeptAdaptive,
            (Reason::Head, false) => Counter::SampleDroppedHead,
            (Reason::Parent, false) => Counter::SampleDroppedParent,
            (Reason::Adaptive, false) => Counter::SampleDroppedAdaptive,
            (Reason::RateLimit, _) => Counter::SampleDroppedRateLimit,
        }
    }
}

/// One trace's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub keep: bool,
    pub reason: Reason,
    /// The OTel rejection threshold (56 bits) of a probabilistic keep below 100 %.
    pub threshold: Option<u64>,
}

/// The rejection threshold of probability `p`: a trace is kept when the 56 low bits
/// of its id are at least this (OTel probability sampling, `th`).
#[must_use]
pub fn threshold(p: f64) -> u64 {
    const MAX: u64 = 1 << 56;
    if p.is_nan() || p <= 0.0 {
        return MAX;
    }
    if p >= 1.0 {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let t = ((1.0 - p) * MAX as f64).round() as u64;
    t.min(MAX)
}

/// The 56 bits of randomness of a trace id (its last 7 bytes, as W3C level 2 defines).
#[must_use]
pub fn randomness(trace_id: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b[1..].copy_from_slice(&trace_id[9..16]);
    u64::from_be_bytes(b)
}

/// The `th` value of a threshold: 14 hex digits with trailing zeros removed.
#[must_use]
pub fn th_value(threshold: u64) -> String {
    if threshold == 0 {
        return "0".to_owned();
    }
    let s = format!("{threshold:014x}");
    s.trim_end_matches('0').to_owned()
}

/// `trace_state` with the OpenTelemetry member's `th` set to `th` (the `ot` member
/// moves to the front, as a modified member must).
#[must_use]
pub fn with_th(trace_state: &str, th: &str) -> String {
    let mut ot = format!("ot=th:{th}");
    let mut rest = Vec::new();
    for member in trace_state.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if let Some(v) = member.strip_prefix("ot=") {
            for sub in v.split(';').filter(|s| !s.is_empty() && !s.starts_with("th:")) {
                ot.push(';');
                ot.push_str(sub);
            }
        } else {
            rest.push(member);
        }
    }
    for m in rest.into_iter().take(31) {
        ot.push(',');
        ot.push_str(m);
    }
    ot
}

/// The sampling stage.
pub struct Sampler {
    cfg: Config,
    head_threshold: u64,
    /// `ot=th:…` for traces ghostwire starts and keeps by ratio (below 100 %).
    head_state: Option<String>,
    buffer: Option<Buffer>,
    decided: Decided,
    bucket: Option<Bucket>,
    adaptive: Option<Adaptive>,
}

impl Sampler {
    #[must_use]
    pub fn new(cfg: Config) -> Self {
        let head_threshold = threshold(cfg.ratio);
        let head_state = (head_threshold > 0).then(|| with_th("", &th_value(head_threshold)));
        Self {
            buffer: cfg.buffered().then(|| Buffer::new(cfg.buffer_traces, cfg.buffer_bytes, cfg.quiet, cfg.max_wait)),
            decided: Decided::default(),
            bucket: cfg.max_traces_per_second.map(Bucket::new),
            adaptive: cfg.adaptive_per_operation.map(Adaptive::new),
            head_threshold,
            head_state,
            cfg,
        }
    }

    /// Whether every span passes untouched but for its reason (ratio 1, no other rule):
    /// no state, no clock.
    fn stateless(&self) -> bool {
        self.buffer.is_none() && self.bucket.is_none()
    }

    /// Offers one span; kept spans go to `out`, now or when their trace is decided.
    pub fn offer(&mut self, span: Span, out: &mut impl FnMut(Span)) {
        if self.stateless() {
            let d = self.head(&span);
            if is_entry(&span) {
                stats::global().incr(d.reason.counter(d.keep));
            }
            self.release(span, d, out);
            return;
        }
        let now = Instant::now();
        if let Some(d) = self.decided.get(&span.trace_id) {
            stats::global().incr(Counter::SampleLateSpans);
            self.release(span, d, out);
            return;
        }
        if let Some(buffer) = &mut self.buffer {
            let forced = buffer.add(span, now);
            for p in forced {
                stats::global().incr(Counter::SampleBufferOverflow);
                self.decide_pending(p, now, out);
            }
            return;
        }
        let mut d = self.head(&span);
        self.limit(&mut d, now);
        self.record(span.trace_id, d);
        self.release(span, d, out);
    }

    /// Decides the buffered traces that are due (complete, or waited too long).
    pub fn poll(&mut self, out: &mut impl FnMut(Span)) {
        let Some(buffer) = &mut self.buffer else { return };
        if buffer.is_empty() {
            return;
        }
        let now = Instant::now();
        let due = buffer.take_due(now);
        for p in due {
            if !p.has_entry {
                stats::global().incr(Counter::SampleIncomplete);
            }
            self.decide_pending(p, now, out);
        }
    }

    /// Once a second: adaptive probabilities follow the operations' rates.
    pub fn tick(&mut self) {
        if let Some(a) = &mut self.adaptive {
            a.tick(Instant::now());
        }
    }

    /// Decides every buffered trace now (shutdown).
    pub fn drain(&mut self, out: &mut impl FnMut(Span)) {
        let Some(buffer) = &mut self.buffer else { return };
        let now = Instant::now();
        for p in buffer.take_all() {
            self.decide_pending(p, now, out);
        }
    }

    /// The head rule for one span's trace.
    fn head(&self, span: &Span) -> Decision {
        if self.cfg.parent_based && span.flags & LOCAL_ROOT == 0 {
            return Decision { keep: span.flags & FLAG_SAMPLED != 0, reason: Reason::Parent, threshold: None };
        }
        self.by_ratio(&span.trace_id)
    }

    fn by_ratio(&self, trace_id: &[u8; 16]) -> Decision {
        let keep = randomness(trace_id) >= self.head_threshold;
        Decision { keep, reason: Reason::Head, threshold: (self.head_threshold > 0).then_some(self.head_threshold) }
    }

    /// The token bucket, over traces the other rules kept.
    fn limit(&mut self, d: &mut Decision, now: Instant) {
        if let Some(bucket) = &mut self.bucket {
            if d.keep && !bucket.take(now) {
                *d = Decision { keep: false, reason: Reason::RateLimit, threshold: None };
            }
        }
    }

    fn record(&mut self, trace: [u8; 16], d: Decision) {
        stats::global().incr(d.reason.counter(d.keep));
        self.decided.insert(trace, d);
    }

    /// Tail and adaptive rules over a whole buffered trace, then the rate limit.
    fn decide_pending(&mut self, p: Pending, now: Instant, out: &mut impl FnMut(Span)) {
        let mut d = self.decide_spans(&p.spans, now);
        self.limit(&mut d, now);
        self.record(p.trace_id, d);
        for span in p.spans {
            self.release(span, d, out);
        }
    }

    fn decide_spans(&mut self, spans: &[Span], now: Instant) -> Decision {
        let tail = |reason| Decision { keep: true, reason, threshold: None };
        if self.cfg.keep_errors && spans.iter().any(|s| matches!(s.status, Status::Error { .. })) {
            return tail(Reason::Error);
        }
        let roots = entry_spans(spans);
        if let Some(limit) = self.cfg.keep_slower_than {
            let slowest = roots.iter().map(|s| s.duration_ns()).max().unwrap_or(0);
            if u128::from(slowest) > limit.as_nanos() {
                return tail(Reason::Slow);
            }
        }
        let Some(first) = roots.first().copied().or(spans.first()) else {
            return Decision { keep: false, reason: Reason::Head, threshold: None };
        };
        let local = first.flags & LOCAL_ROOT != 0;
        if let (Some(a), true) = (&mut self.adaptive, local || !self.cfg.parent_based) {
            let t = a.threshold(first, now);
            let keep = randomness(&first.trace_id) >= t;
            return Decision { keep, reason: Reason::Adaptive, threshold: (t > 0).then_some(t) };
        }
        self.head(first)
    }

    /// Sends a span on (kept: with its reason and `th`) or counts it dropped.
    fn release(&self, mut span: Span, d: Decision, out: &mut impl FnMut(Span)) {
        if !d.keep {
            stats::global().incr(Counter::DropSampledOut);
            return;
        }
        if let Some(t) = d.threshold {
            if span.flags & LOCAL_ROOT != 0 && t == self.head_threshold && span.trace_state.is_empty() {
                if let Some(state) = &self.head_state {
                    span.trace_state.clone_from(state);
                }
            } else {
                span.trace_state = with_th(&span.trace_state, &th_value(t));
            }
        }
        span.flags &= !LOCAL_ROOT;
        span.attributes.push(("ghostwire.sampling.reason".into(), AttrValue::fixed(d.reason.name())));
        out(span);
    }
}

/// A span that begins its trace on this node: a root, or a server span whose context
/// came from a header (its parent is outside ghostwire's view).
fn is_entry(span: &Span) -> bool {
    span.is_root()
        || (span.kind == SpanKind::Server
            && matches!(span.attr("ghostwire.link"), Some(AttrValue::Str(s)) if s == "header"))
}

/// The spans of one trace whose parent is not among them (the entry spans first).
fn entry_spans(spans: &[Span]) -> Vec<&Span> {
    let mut roots: Vec<&Span> =
        spans.iter().filter(|s| s.is_root() || !spans.iter().any(|p| p.span_id == s.parent_span_id)).collect();
    roots.sort_by_key(|s| !is_entry(s));
    roots
}

/// Decisions of recent traces, for their late spans (bounded, oldest forgotten first).
#[derive(Default)]
struct Decided {
    map: HashMap<[u8; 16], Decision>,
    order: VecDeque<[u8; 16]>,
}

impl Decided {
    fn get(&self, trace: &[u8; 16]) -> Option<Decision> {
        self.map.get(trace).copied()
    }

    fn insert(&mut self, trace: [u8; 16], d: Decision) {
        if self.map.insert(trace, d).is_none() {
            self.order.push_back(trace);
            if self.order.len() > DECIDED_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// A token bucket of `rate` tokens per second holding at most one second's worth.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let burst = rate.max(1.0);
        Self { rate, burst, tokens: burst, last: None }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            self.tokens = (self.tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
