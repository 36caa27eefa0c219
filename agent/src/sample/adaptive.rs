//! Adaptive sampling per operation, in the manner of Jaeger's: each operation (service,
//! span name and route) gets its own probability, adjusted to keep about `target`
//! traces per second of it. An operation seen less often than that is always kept, so
//! rare operations are always represented; a hot one is held near the target.
use std::collections::HashMap;
use std::time::Instant;

use crate::span::model::Text;
use crate::span::{AttrValue, Span};
use crate::stats::{self, Counter};

/// Operations tracked at most; beyond them the rest share one probability.
const MAX_OPERATIONS: usize = 2048;
/// The operation of everything past `MAX_OPERATIONS`.
const OTHER: &str = "_other";

pub(super) struct Adaptive {
    target: f64,
    ops: HashMap<Text, Operation>,
    last_tick: Option<Instant>,
}

#[derive(Default)]
struct Operation {
    /// Traces seen since the last tick.
    window: u32,
    /// Smoothed traces per second (0 until the first tick).
    rate: f64,
}

impl Adaptive {
    pub fn new(target: f64) -> Self {
        Self { target: target.max(f64::MIN_POSITIVE), ops: HashMap::new(), last_tick: None }
    }

    /// Counts one trace of `entry`'s operation and returns the rejection threshold of
    /// that operation's current probability.
    pub fn threshold(&mut self, entry: &Span, _now: Instant) -> u64 {
        let key = operation(entry);
        let full = self.ops.len() >= MAX_OPERATIONS;
        let op = if let Some(op) = self.ops.get_mut(&key) {
            op
        } else if full {
            stats::global().incr(Counter::SampleOperationsOverflow);
            self.ops.entry(Text::const_new(OTHER)).or_default()
        } else {
            self.ops.entry(key).or_default()
        };
        op.window += 1;
        // The window is about a second long: what it has seen so far is a lower bound
        // of this second's rate, so a burst is held back within the second.
        let rate = op.rate.max(f64::from(op.window));
        super::threshold((self.target / rate).min(1.0))
    }

    /// Folds the last window into each operation's rate; forgets idle operations.
    pub fn tick(&mut self, now: Instant) {
        let secs = self.last_tick.map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64().max(0.001));
        self.last_tick = Some(now);
        for op in self.ops.values_mut() {
            let r = f64::from(op.window) / secs;
            op.rate = if op.rate == 0.0 { r } else { 0.5 * op.rate + 0.5 * r };
            op.window = 0;
        }
        self.ops.retain(|_, op| op.rate >= 0.01);
    }

    #[cfg(test)]
    pub fn operations(&self) -> usize {
        self.ops.len()
    }
}

/// `service span-name route`: the route is the path template of an HTTP span's path
/// (a client span's from its URL); RPC span names already name the method.
pub(super) fn operation(span: &Span) -> Text {
    let mut key = Text::from(span.resource.service_name.as_str());
    key.push(' ');
    key.push_str(&span.name);
    let path = match (span.attr("url.path"), span.attr("url.full")) {
        (Some(AttrValue::Str(p)), _) => Some(p.as_str()),
        // A client span: the path of its URL.
        (None, Some(AttrValue::Str(u))) => {
            let after_scheme = u.split_once("://").map_or(u.as_str(), |(_, rest)| rest);
            Some(after_scheme.find('/').map_or("/", |i| &after_scheme[i..]))
        }
        _ => None,
    };
    if let Some(path) = path {
        key.push(' ');
        crate::span::route::template_into(path, &mut key);
    }
    key
}
