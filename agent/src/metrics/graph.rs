//! The service graph: an edge for each call from one traced service to another, from
//! the pair of the caller's CLIENT span and the callee's SERVER span (its child).
//! A database call is an edge to its database, named by `db.system.name`. Metrics in the
//! names Tempo and OBI use, plus a companion counter of the calls on
//! which the caller dropped the trace context it had received.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::map::ServiceMap;
use super::{Bounded, Label, DURATION_BUCKETS};
use crate::span::{AttrValue, Span, SpanKind, Status};
use crate::stats::{self, Counter};

/// How long one half of a call waits for the other (deferred links can hold a span
/// for a few seconds).
const PAIR_WAIT: Duration = Duration::from_secs(10);
/// Halves waiting at most.
const MAX_PENDING: usize = 65_536;
/// The client of an entry span that no traced process called (Tempo's name).
const USER: &str = "user";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Edge {
    client: Label,
    server: Label,
}

/// One side of a call, waiting for the other.
struct Half {
    kind: SpanKind,
    service: Label,
    secs: f64,
    failed: bool,
    /// Server side: its caller dropped a context.
    broken: bool,
    /// Client side: where it connected (the edge's server when no server span comes).
    peer: Label,
    since: Instant,
}

/// (trace id, the client span's id): what a call's two halves share.
type CallKey = ([u8; 16], [u8; 8]);

type Seconds = Family<Edge, Histogram, fn() -> Histogram>;

pub(super) struct Graph {
    total: Bounded<Edge, PromCounter>,
    failed: Family<Edge, PromCounter>,
    broken: Family<Edge, PromCounter>,
    server_seconds: Seconds,
    client_seconds: Seconds,
    pending: HashMap<CallKey, Half>,
    order: VecDeque<(Instant, CallKey)>,
    /// The same edges, for the map printed on exit.
    pub map: ServiceMap,
}

impl Graph {
    pub fn new(registry: &mut Registry) -> Self {
        let g = Self {
            total: Bounded::new(Family::default()),
            failed: Family::default(),
            broken: Family::default(),
            server_seconds: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            client_seconds: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            pending: HashMap::new(),
            order: VecDeque::new(),
            map: ServiceMap::default(),
        };
        registry.register("traces_service_graph_request", "Calls between two services", g.total.family.clone());
        registry.register(
            "traces_service_graph_request_failed",
            "Calls between two services that failed on either side",
            g.failed.clone(),
        );
        registry.register(
            "traces_service_graph_request_propagation_broken",
            "Calls whose caller had received a trace context and did not pass it on (ghostwire linked them)",
            g.broken.clone(),
        );
        registry.register_with_unit(
            "traces_service_graph_request_server",
            "Server-side duration of calls between two services",
            Unit::Seconds,
            g.server_seconds.clone(),
        );
        registry.register_with_unit(
            "traces_service_graph_request_client",
            "Client-side duration of calls between two services",
            Unit::Seconds,
            g.client_seconds.clone(),
        );
        g
    }

    pub fn observe(&mut self, span: &Span, secs: f64) {
        let now = Instant::now();
        let failed = matches!(span.status, Status::Error { .. });
        let service = Label::of(&span.resource.service_name);
        match span.kind {
            SpanKind::Server if span.is_root() => {
                self.edge(&Label::of(USER), &service, None, Some(secs), failed, broken(span));
            }
            SpanKind::Server => {
                let key = (span.trace_id, span.parent_span_id);
                match self.pending.remove(&key) {
                    Some(c) if c.kind == SpanKind::Client => {
                        self.edge(&c.service, &service, Some(c.secs), Some(secs), failed || c.failed, broken(span));
                    }
                    other => {
                        self.put_back(key, other);
                        let half = Half {
                            kind: SpanKind::Server,
                            service,
                            secs,
                            failed,
                            broken: broken(span),
                            peer: Label::default(),
                            since: now,
                        };
                        self.wait(key, half, now);
                    }
                }
            }
            // A database call: the database is the server node, named by its system
            // (database servers get no SERVER span to wait for).
            SpanKind::Client if span.attr("db.system.name").is_some() => {
                let server = str_attr(span, "db.system.name");
                self.edge(&service, &server, Some(secs), None, failed, false);
            }
            SpanKind::Client => {
                let key = (span.trace_id, span.span_id);
                match self.pending.remove(&key) {
                    Some(s) if s.kind == SpanKind::Server => {
                        self.edge(&service, &s.service, Some(secs), Some(s.secs), failed || s.failed, s.broken);
                    }
                    other => {
                        self.put_back(key, other);
                        let peer = match span.attr("server.address") {
                            Some(AttrValue::Str(a)) => Label(a.clone()),
                            _ => Label::default(),
                        };
                        let half =
                            Half { kind: SpanKind::Client, service, secs, failed, broken: false, peer, since: now };
                        self.wait(key, half, now);
                    }
                }
            }
        }
    }

    fn put_back(&mut self, key: CallKey, half: Option<Half>) {
        if let Some(h) = half {
            self.pending.insert(key, h);
        }
    }

    fn wait(&mut self, key: CallKey, half: Half, now: Instant) {
        if self.pending.len() >= MAX_PENDING {
            stats::global().incr(Counter::MetricsGraphPendingFull);
            return;
        }
        if self.pending.insert(key, half).is_none() {
            self.order.push_back((now, key));
        }
    }

    /// Halves whose other half did not come: a client's call becomes an edge to the
    /// address it called (a server ghostwire does not see); a server's is only counted.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(since, key)) = self.order.front() {
            if now.saturating_duration_since(since) < PAIR_WAIT {
                break;
            }
            self.order.pop_front();
            let Some(h) = self.pending.get(&key) else { continue };
            if h.since != since {
                continue;
            }
            let Some(h) = self.pending.remove(&key) else { continue };
            stats::global().incr(Counter::MetricsGraphUnpaired);
            if h.kind == SpanKind::Client && h.peer != Label::default() {
                self.edge(&h.service, &h.peer, Some(h.secs), None, h.failed, false);
            }
        }
    }

    /// At exit: every half still waiting is settled as if its wait were over.
    pub fn finish(&mut self) {
        let later = Instant::now().checked_add(PAIR_WAIT).unwrap_or_else(Instant::now);
        self.expire(later);
    }

    fn edge(
        &mut self,
        client: &Label,
        server: &Label,
        client_secs: Option<f64>,
        server_secs: Option<f64>,
        failed: bool,
        broken: bool,
    ) {
        if let Some(secs) = server_secs.or(client_secs) {
            self.map.record_labels(client, server, secs, failed, broken);
        }
        let mut edge = Edge { client: client.clone(), server: server.clone() };
        let mut counted = None;
        self.total.with(
            &edge,
            |_| {
                let other = Edge { client: Label::OTHER, server: Label::OTHER };
                counted = Some(other.clone());
                other
            },
            |c| {
                c.inc();
            },
        );
        if let Some(other) = counted {
            edge = other;
        }
        if failed {
            self.failed.get_or_create(&edge).inc();
        }
        if broken {
            self.broken.get_or_create(&edge).inc();
        }
        if let Some(s) = client_secs {
            self.client_seconds.get_or_create(&edge).observe(s);
        }
        if let Some(s) = server_secs {
            self.server_seconds.get_or_create(&edge).observe(s);
        }
    }
}

fn str_attr(span: &Span, key: &str) -> Label {
    match span.attr(key) {
        Some(AttrValue::Str(a)) => Label(a.clone()),
        _ => Label::default(),
    }
}

fn broken(span: &Span) -> bool {
    span.attr("ghostwire.propagation_break.caller").is_some()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::export::tests::{mk_span, resource};

    fn span(service: &str, id: u8, parent: u8, kind: SpanKind, failed: bool, attrs: &[(&'static str, &str)]) -> Span {
        let mut s = (*mk_span(&resource(u32::from(id), service), 7, id, parent, kind, "GET", 0, 1000)).clone();
        s.attributes = attrs.iter().map(|&(k, v)| (Cow::Borrowed(k), AttrValue::from(v))).collect();
        if failed {
            s.status = Status::Error { message: "HTTP 503".into() };
        }
        s
    }

    #[test]
    fn the_exit_map_pairs_calls_and_settles_the_unanswered() {
        let mut g = Graph::new(&mut Registry::default());
        // cart calls inventory, which notes that cart dropped the context; either half
        // may come first.
        g.observe(
            &span("inventory", 3, 2, SpanKind::Server, false, &[("ghostwire.propagation_break.caller", "cart")]),
            0.1,
        );
        g.observe(&span("cart", 2, 1, SpanKind::Client, false, &[]), 0.12);
        g.observe(&span("payment", 5, 4, SpanKind::Client, true, &[]), 0.01);
        g.observe(&span("fraud-check", 6, 5, SpanKind::Server, true, &[]), 0.005);
        // A call whose server is not traced: an edge to the address, once settled.
        g.observe(&span("payment", 8, 4, SpanKind::Client, false, &[("server.address", "10.0.0.9")]), 0.02);
        assert_eq!(g.map.edges().len(), 2, "the untraced server's edge waits for its half");
        g.finish();
        let edges: Vec<(String, String, u64, u64, u64)> = g
            .map
            .edges()
            .into_iter()
            .map(|(c, s, e)| (c.to_owned(), s.to_owned(), e.calls, e.errors, e.breaks))
            .collect();
        let e = |c: &str, s: &str, calls, errors, breaks| (c.to_owned(), s.to_owned(), calls, errors, breaks);
        assert_eq!(
            edges,
            [e("cart", "inventory", 1, 0, 1), e("payment", "10.0.0.9", 1, 0, 0), e("payment", "fraud-check", 1, 1, 0)]
        );
        // The server's duration is the edge's latency.
        let p99 = g.map.edges()[0].2.p99_ns().unwrap_or_default();
        assert!((100_000_000..=110_000_000).contains(&p99), "{p99}");
    }
}
