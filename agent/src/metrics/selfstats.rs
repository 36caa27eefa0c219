//! ghostwire's own counters as Prometheus metrics, read at each scrape: every stats
//! counter as `ghostwire_*_total` (drops by `reason`, spans by link `kind`, sampling
//! decisions by `decision` and `reason`), the gauges, the kernel's counters per `probe`,
//! and propagation breaks per edge.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::stats::{self, Counter, Gauge, KernelCounters};

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub(super) struct SelfMetrics {
    kernel: Arc<Mutex<KernelCounters>>,
}

impl SelfMetrics {
    pub fn new(kernel: Arc<Mutex<KernelCounters>>) -> Self {
        Self { kernel }
    }
}

/// The link kinds of `ghostwire.link` (their counters become one labelled family).
const LINK_KINDS: [&str; 8] = ["header", "thread", "socket", "process", "content", "order", "handoff", "none"];

/// A stats counter's metric name (without `_total`) and labels.
#[must_use]
pub fn counter_metric(name: &str) -> (String, Labels) {
    let snake = |s: &str| s.replace('.', "_");
    if let Some(reason) = name.strip_prefix("drop.") {
        return ("ghostwire_dropped".into(), vec![("reason", reason.to_owned())]);
    }
    if let Some(kind) = name.strip_prefix("link.").filter(|k| LINK_KINDS.contains(k)) {
        return ("ghostwire_spans_linked".into(), vec![("kind", kind.to_owned())]);
    }
    if let Some(kind) = name.strip_prefix("events.") {
        return ("ghostwire_events".into(), vec![("kind", kind.to_owned())]);
    }
    for (prefix, decision) in [("sample.kept.", "kept"), ("sample.dropped.", "dropped")] {
        if let Some(reason) = name.strip_prefix(prefix) {
            return (
                "ghostwire_sampling_traces".into(),
                vec![("decision", decision.to_owned()), ("reason", reason.to_owned())],
            );
        }
    }
    (format!("ghostwire_{}", snake(name)), Vec::new())
}

fn help(metric: &str) -> &'static str {
    match metric {
        "ghostwire_dropped" => "Things dropped, by reason: every loss ghostwire knows of",
        "ghostwire_spans_linked" => "Spans by how their parent was found (ghostwire.link)",
        "ghostwire_events" => "Kernel records decoded, by kind",
        "ghostwire_sampling_traces" => "Sampling decisions on traces, by decision and rule",
        "ghostwire_propagation_breaks_per_edge" => "Calls whose caller dropped a received trace context, per edge",
        m if m.starts_with("ghostwire_kernel_") => "Kernel probe counter, per probe",
        _ => "ghostwire counter",
    }
}

impl Collector for SelfMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        stats::global().incr(Counter::MetricsScrapes);
        let s = stats::global();
        let mut counters: BTreeMap<String, Vec<(Labels, u64)>> = BTreeMap::new();
        for &c in Counter::ALL {
            let (metric, labels) = counter_metric(c.name());
            counters.entry(metric).or_default().push((labels, s.get(c)));
        }
        let kernel = self.kernel.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for probe in ghostwire_common::probe::NAMES {
            for counter in ghostwire_common::counter::NAMES {
                let v = kernel.values.iter().find(|(p, c, _)| *p == probe && *c == counter).map_or(0, |(_, _, v)| *v);
                counters
                    .entry(format!("ghostwire_kernel_{counter}"))
                    .or_default()
                    .push((vec![("probe", probe.to_owned())], v));
            }
        }
        for ((caller, callee), v) in stats::propagation_breaks() {
            counters
                .entry("ghostwire_propagation_breaks_per_edge".into())
                .or_default()
                .push((vec![("caller", caller), ("callee", callee)], v));
        }
        for (metric, series) in &counters {
            let mut family = encoder.encode_descriptor(metric, help(metric), None, MetricType::Counter)?;
            for (labels, v) in series {
                ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
            }
        }
        for &g in Gauge::ALL {
            let metric = format!("ghostwire_{}", g.name().replace('.', "_"));
            let family = encoder.encode_descriptor(&metric, "ghostwire gauge", None, MetricType::Gauge)?;
            #[allow(clippy::cast_possible_wrap)]
            ConstGauge::new(s.gauge(g) as i64).encode(family)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::counter_metric;

    #[test]
    fn counter_names_map_to_labelled_families() {
        assert_eq!(
            counter_metric("drop.capture_gap"),
            ("ghostwire_dropped".into(), vec![("reason", "capture_gap".into())])
        );
        assert_eq!(counter_metric("link.socket"), ("ghostwire_spans_linked".into(), vec![("kind", "socket".into())]));
        assert_eq!(counter_metric("link.deferred"), ("ghostwire_link_deferred".into(), vec![]));
        assert_eq!(
            counter_metric("sample.dropped.rate_limit"),
            ("ghostwire_sampling_traces".into(), vec![("decision", "dropped".into()), ("reason", "rate_limit".into())])
        );
        assert_eq!(counter_metric("spans.built"), ("ghostwire_spans_built".into(), vec![]));
        for c in crate::stats::Counter::ALL {
            let (name, _) = counter_metric(c.name());
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
        }
    }
}
