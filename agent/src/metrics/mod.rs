//! Metrics from every span, sampled or not: RED histograms named after the semantic
//! conventions (in Prometheus form), the service graph in the names Tempo and OBI use,
//! and ghostwire's own counters. Served in the Prometheus text format by [`serve`].
//!
//! Label cardinality is bounded: raw paths are never labels (only their templates,
//! [`crate::span::route`]), and each family holds at most [`MAX_SERIES`] series; past
//! that a request is counted under `_OTHER` label values (and the overflow is counted).
mod graph;
pub mod map;
mod selfstats;
pub mod serve;

use std::sync::{Arc, Mutex};

use compact_str::ToCompactString as _;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::span::model::Text;
use crate::span::{AttrValue, Span, SpanKind};
use crate::stats::{self, Counter, KernelCounters};

/// Series per metric family at most.
pub const MAX_SERIES: usize = 2000;

/// The semantic conventions' recommended boundaries for request durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// A label value held inline when short (no allocation per observation).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Label(Text);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

impl Label {
    const OTHER: Label = Label(Text::const_new("_OTHER"));

    fn of(s: &str) -> Self {
        Self(Text::from(s))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpServerLabels {
    service_name: Label,
    http_request_method: Label,
    http_response_status_code: Label,
    http_route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpClientLabels {
    service_name: Label,
    http_request_method: Label,
    http_response_status_code: Label,
    server_address: Label,
    server_port: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service_name: Label,
    rpc_system_name: Label,
    rpc_method: Label,
    rpc_response_status_code: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    service_name: Label,
    db_system_name: Label,
    db_operation_name: Label,
    db_collection_name: Label,
    db_response_status_code: Label,
    server_address: Label,
    server_port: Label,
}

type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

fn durations<L: Clone + std::hash::Hash + Eq>() -> Durations<L> {
    Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS))
}

/// The metrics stage. Lives on the pipeline thread; the registry it fills is shared
/// with the `/metrics` endpoint.
pub struct Metrics {
    http_server: Bounded<HttpServerLabels, Histogram>,
    http_client: Bounded<HttpClientLabels, Histogram>,
    rpc_server: Bounded<RpcLabels, Histogram>,
    rpc_client: Bounded<RpcLabels, Histogram>,
    db_client: Bounded<DbLabels, Histogram>,
    graph: graph::Graph,
}

impl Metrics {
    /// The stage and the registry to serve. `kernel`: the latest kernel counters (the
    /// caller refreshes them).
    #[must_use]
    pub fn new(kernel: Arc<Mutex<KernelCounters>>) -> (Self, Arc<Registry>) {
        let mut registry = Registry::default();
        let m = Self {
            http_server: Bounded::new(durations()),
            http_client: Bounded::new(durations()),
            rpc_server: Bounded::new(durations()),
            rpc_client: Bounded::new(durations()),
            db_client: Bounded::new(durations()),
            graph: graph::Graph::new(&mut registry),
        };
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests",
            Unit::Seconds,
            m.http_server.family.clone(),
        );
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests",
            Unit::Seconds,
            m.http_client.family.clone(),
        );
        registry.register_with_unit(
            "rpc_server_call_duration",
            "Duration of RPC calls served",
            Unit::Seconds,
            m.rpc_server.family.clone(),
        );
        registry.register_with_unit(
            "rpc_client_call_duration",
            "Duration of RPC calls made",
            Unit::Seconds,
            m.rpc_client.family.clone(),
        );
        registry.register_with_unit(
            "db_client_operation_duration",
            "Duration of database client operations",
            Unit::Seconds,
            m.db_client.family.clone(),
        );
        registry.register_collector(Box::new(selfstats::SelfMetrics::new(kernel)));
        (m, Arc::new(registry))
    }

    /// Counts one span (every span, before sampling).
    pub fn observe(&mut self, span: &Span) {
        #[allow(clippy::cast_precision_loss)]
        let secs = span.duration_ns() as f64 / 1e9;
        let service = Label::of(&span.resource.service_name);
        if span.attr("db.system.name").is_some() {
            let labels = DbLabels {
                service_name: service,
                db_system_name: str_label(span, "db.system.name"),
                db_operation_name: str_label(span, "db.operation.name"),
                db_collection_name: str_label(span, "db.collection.name"),
                db_response_status_code: str_label(span, "db.response.status_code"),
                server_address: str_label(span, "server.address"),
                server_port: str_label(span, "server.port"),
            };
            observe(&mut self.db_client, labels, secs, |l| DbLabels {
                service_name: l.service_name.clone(),
                db_system_name: l.db_system_name.clone(),
                db_operation_name: Label::OTHER,
                db_collection_name: Label::OTHER,
                db_response_status_code: Label::OTHER,
                server_address: Label::OTHER,
                server_port: Label::OTHER,
            });
        } else if span.attr("rpc.system.name").is_some() {
            let labels = RpcLabels {
                service_name: service,
                rpc_system_name: str_label(span, "rpc.system.name"),
                rpc_method: str_label(span, "rpc.method"),
                rpc_response_status_code: str_label(span, "rpc.response.status_code"),
            };
            let family = if span.kind == SpanKind::Server { &mut self.rpc_server } else { &mut self.rpc_client };
            observe(family, labels, secs, |l| RpcLabels {
                service_name: l.service_name.clone(),
                rpc_system_name: l.rpc_system_name.clone(),
                rpc_method: Label::OTHER,
                rpc_response_status_code: Label::OTHER,
            });
        } else if span.kind == SpanKind::Server {
            let route = match span.attr("url.path") {
                Some(AttrValue::Str(p)) => Label(crate::span::route::template(p)),
                _ => Label::default(),
            };
            let labels = HttpServerLabels {
                service_name: service,
                http_request_method: str_label(span, "http.request.method"),
                http_response_status_code: str_label(span, "http.response.status_code"),
                http_route: route,
            };
            observe(&mut self.http_server, labels, secs, |l| HttpServerLabels {
                service_name: l.service_name.clone(),
                http_request_method: Label::OTHER,
                http_response_status_code: Label::OTHER,
                http_route: Label::OTHER,
            });
        } else {
            let labels = HttpClientLabels {
                service_name: service,
                http_request_method: str_label(span, "http.request.method"),
                http_response_status_code: str_label(span, "http.response.status_code"),
                server_address: str_label(span, "server.address"),
                server_port: str_label(span, "server.port"),
            };
            observe(&mut self.http_client, labels, secs, |l| HttpClientLabels {
                service_name: l.service_name.clone(),
                http_request_method: Label::OTHER,
                http_response_status_code: Label::OTHER,
                server_address: Label::OTHER,
                server_port: Label::OTHER,
            });
        }
        self.graph.observe(span, secs);
    }

    /// Once a second: service-graph halves that waited too long for their other half.
    pub fn tick(&mut self) {
        self.graph.expire(std::time::Instant::now());
    }

    /// At exit: the service map, with the calls still waiting for their other half
    /// settled.
    pub fn take_service_map(&mut self) -> map::ServiceMap {
        self.graph.finish();
        std::mem::take(&mut self.graph.map)
    }
}

/// A family with at most [`MAX_SERIES`] series (counted here: the crate's own count is
/// for its tests).
pub(crate) struct Bounded<L: Clone + std::hash::Hash + Eq, M, C = fn() -> M> {
    family: Family<L, M, C>,
    series: usize,
}

impl<L: Clone + std::hash::Hash + Eq, M, C: prometheus_client::metrics::family::MetricConstructor<M>> Bounded<L, M, C> {
    fn new(family: Family<L, M, C>) -> Self {
        Self { family, series: 0 }
    }

    /// Applies `f` to the series of `labels`, or of `other(&labels)` once the family is
    /// full.
    fn with(&mut self, labels: &L, other: impl FnOnce(&L) -> L, f: impl FnOnce(&M)) {
        if let Some(m) = self.family.get(labels) {
            f(&m);
            return;
        }
        if self.series < MAX_SERIES {
            self.series += 1;
            f(&self.family.get_or_create(labels));
        } else {
            stats::global().incr(Counter::MetricsSeriesOverflow);
            f(&self.family.get_or_create(&other(labels)));
        }
    }
}

/// Observes `secs` under `labels`, or under `other(labels)` when the family is full.
fn observe<L: Clone + std::hash::Hash + Eq>(
    family: &mut Bounded<L, Histogram>,
    labels: L,
    secs: f64,
    other: impl Fn(&L) -> L,
) {
    family.with(&labels, other, |h| h.observe(secs));
}

fn str_label(span: &Span, key: &str) -> Label {
    match span.attr(key) {
        Some(AttrValue::Str(s)) => Label(s.clone()),
        Some(AttrValue::Int(i)) => Label(i.to_compact_string()),
        _ => Label::default(),
    }
}
