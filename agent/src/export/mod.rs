//! Export: the last stage. Spans fan out to every configured output (OTLP/gRPC, a JSONL
//! file, the terminal waterfall), each with its own bounded drop-oldest queue and tokio
//! task, so a slow or dead output never blocks capture or the other outputs.
//!
//! This is the only module that knows OTLP: [`to_otlp`] encodes the neutral
//! [`Span`](crate::span::Span) model.

pub mod console;
pub mod critical;
pub mod encode;
pub mod jsonl;
pub mod otlp;
pub mod queue;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind as OtlpSpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span as OtlpSpan,
    Status as OtlpStatus,
};
use tokio::task::JoinHandle;

use crate::span::{AttrValue, Attribute, Resource, Span, SpanKind, Status};
use crate::stats::{self, Counter};
use queue::SpanQueue;

/// Instrumentation scope name on every exported span.
pub const SCOPE_NAME: &str = "ghostwire";

/// Where spans go. The caller resolves flags and environment into this.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// OTLP exporter: endpoint (`http://` is assumed when the scheme is missing),
    /// protocol, headers, timeout, compression, CA file.
    pub otlp: Option<otlp::OtlpOptions>,
    /// Append OTLP-JSON lines (one `ExportTraceServiceRequest` per batch) to this file.
    pub jsonl_path: Option<PathBuf>,
    /// Live waterfall on stdout.
    pub console: bool,
    /// Spans per output queue; beyond it the oldest span is dropped.
    pub queue_capacity: usize,
    /// Spans per export request / JSONL line.
    pub batch_size: usize,
    /// Longest a span waits in a queue for its batch to fill.
    pub batch_timeout: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            jsonl_path: None,
            console: false,
            queue_capacity: 8192,
            batch_size: 512,
            batch_timeout: Duration::from_secs(1),
        }
    }
}

/// Per-output counts, kept next to the global ones (which sum over outputs).
#[derive(Debug, Default)]
pub(crate) struct OutputCounters {
    exported: AtomicU64,
    failed: AtomicU64,
    errors: AtomicU64,
}

impl OutputCounters {
    pub(crate) fn exported(&self, n: usize) {
        let n = n as u64;
        self.exported.fetch_add(n, Ordering::Relaxed);
        stats::global().add(Counter::SpansExported, n);
    }

    /// Spans given up on (permanent error, rejected by the backend, shutdown deadline).
    pub(crate) fn failed(&self, output: &str, n: usize, why: std::fmt::Arguments<'_>) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        self.failed.fetch_add(n, Ordering::Relaxed);
        stats::global().add(Counter::DropExportFailed, n);
        log::debug!("{}: {output}: {n} spans: {why}", Counter::DropExportFailed.name());
    }

    /// One failed export attempt.
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        stats::global().incr(Counter::ExportErrors);
    }

    #[cfg(test)]
    pub(crate) fn get(&self) -> (u64, u64, u64) {
        (
            self.exported.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

struct Output {
    queue: Arc<SpanQueue>,
    counters: Arc<OutputCounters>,
    task: JoinHandle<()>,
}

/// The running outputs. Dropping this without [`shutdown`](Exporters::shutdown) leaves
/// the tasks running until the runtime stops (pending spans are then lost).
pub struct Exporters {
    outputs: Vec<Output>,
    /// Spans [`stage`](Exporters::stage)d and not yet handed to the queues.
    staged: Vec<Arc<Span>>,
}

/// Staged spans are handed over at the latest when this many wait.
const STAGE_MAX: usize = 256;

/// Extra time [`Exporters::shutdown`] gives a task past the deadline to notice it and
/// account for what it gives up on, before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

impl Exporters {
    /// Spawns one tokio task per configured output, each with its own bounded queue.
    /// Must be called inside a tokio runtime. Fails when the JSONL file cannot be opened
    /// or the OTLP endpoint is not a valid `http://` URI. With no output configured the
    /// result accepts and discards spans.
    pub fn start(cfg: ExportConfig) -> anyhow::Result<Exporters> {
        let rt = tokio::runtime::Handle::try_current()
            .context("export: Exporters::start must be called inside a tokio runtime")?;
        let _guard = rt.enter();
        let capacity = cfg.queue_capacity.max(1);
        let batch_size = cfg.batch_size.max(1);
        // Everything that can fail happens before any task is spawned.
        let otlp = match &cfg.otlp {
            Some(options) => {
                let settings = otlp::OtlpSettings::new(options, batch_size, cfg.batch_timeout)?;
                let (queue, counters) = new_output("otlp", capacity);
                let exporter = otlp::OtlpExporter::new(settings, queue.clone(), counters.clone())?;
                Some((exporter, queue, counters))
            }
            None => None,
        };
        let jsonl = match &cfg.jsonl_path {
            Some(path) => Some((jsonl::open(path)?, path.clone())),
            None => None,
        };

        let mut outputs = Vec::new();
        if let Some((exporter, queue, counters)) = otlp {
            let task = tokio::spawn(exporter.run());
            outputs.push(Output { queue, counters, task });
        }
        if let Some((file, path)) = jsonl {
            let (queue, counters) = new_output("jsonl", capacity);
            let writer = jsonl::JsonlWriter::new(file, path, queue.clone(), counters.clone());
            let task = tokio::spawn(writer.run(batch_size, cfg.batch_timeout));
            outputs.push(Output { queue, counters, task });
        }
        if cfg.console {
            let (queue, counters) = new_output("console", capacity);
            let task = tokio::spawn(console::run(queue.clone(), counters.clone(), batch_size));
            outputs.push(Output { queue, counters, task });
        }
        Ok(Exporters { outputs, staged: Vec::with_capacity(STAGE_MAX) })
    }

    /// True when no output is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Hands a span to every output. Never blocks or awaits: when an output's queue is
    /// full its oldest span is dropped (and counted).
    pub fn submit(&self, span: Span) {
        let span = Arc::new(span);
        for out in &self.outputs {
            out.queue.push(span.clone());
        }
    }

    /// Keeps a span for the next [`flush`](Exporters::flush): the pipeline hands each
    /// drain's spans over together, one queue lock (and at most one exporter wake-up)
    /// per output, not one per span.
    pub fn stage(&mut self, span: Span) {
        if self.outputs.is_empty() {
            return;
        }
        self.staged.push(Arc::new(span));
        if self.staged.len() >= STAGE_MAX {
            self.flush();
        }
    }

    /// Hands the staged spans to every output (never blocks; full queues drop their
    /// oldest, counted).
    pub fn flush(&mut self) {
        for out in &self.outputs {
            out.queue.push_all(&self.staged);
        }
        self.staged.clear();
    }

    /// Flushes everything pending to every output, waiting at most `deadline`, and stops
    /// the tasks. Spans still unsent at the deadline are counted as `drop.export_failed`.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.flush();
        let until = tokio::time::Instant::now() + deadline;
        for out in &self.outputs {
            out.queue.close(until);
        }
        for mut out in self.outputs {
            let name = out.queue.name();
            let problem = match tokio::time::timeout_at(until + SHUTDOWN_GRACE, &mut out.task).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("stopped abnormally ({e})"),
                Err(_) => {
                    out.task.abort();
                    format!("did not finish within {deadline:?}")
                }
            };
            // The task did not account for what it still held: count it here.
            let left = out.queue.drain_all().len() + out.queue.in_flight();
            out.queue.set_in_flight(0);
            out.counters.failed(name, left, format_args!("still unsent at shutdown"));
            log::warn!("export: {name} output {problem}; {left} spans not exported");
        }
    }

    #[cfg(test)]
    pub(crate) fn counters(&self, name: &str) -> Option<Arc<OutputCounters>> {
        self.outputs.iter().find(|o| o.queue.name() == name).map(|o| o.counters.clone())
    }
}

fn new_output(name: &'static str, capacity: usize) -> (Arc<SpanQueue>, Arc<OutputCounters>) {
    (Arc::new(SpanQueue::new(name, capacity)), Arc::new(OutputCounters::default()))
}

// ---- OTLP encoding -------------------------------------------------------------------

fn any_value(v: &AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    AnyValue { value: Some(value) }
}

fn key_values(attrs: &[Attribute]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue { key: k.to_string(), value: Some(any_value(v)), ..Default::default() })
        .collect()
}

fn otlp_resource(r: &Resource) -> OtlpResource {
    let mut attributes = key_values(&r.attributes);
    if !r.attributes.iter().any(|(k, _)| k == "service.name") {
        attributes.insert(
            0,
            KeyValue {
                key: "service.name".into(),
                value: Some(any_value(&AttrValue::from(r.service_name.as_str()))),
                ..Default::default()
            },
        );
    }
    OtlpResource { attributes, ..Default::default() }
}

fn otlp_span(s: &Span) -> OtlpSpan {
    let kind = match s.kind {
        SpanKind::Server => OtlpSpanKind::Server,
        SpanKind::Client => OtlpSpanKind::Client,
    };
    // Always present (an empty Status is "unset"): keeps the JSON encoding free of nulls.
    let status = match &s.status {
        Status::Unset => OtlpStatus::default(),
        Status::Error { message } => OtlpStatus { message: message.clone(), code: StatusCode::Error as i32 },
    };
    OtlpSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone(),
        parent_span_id: if s.is_root() { Vec::new() } else { s.parent_span_id.to_vec() },
        // W3C trace flags in the low 8 bits. The "parent is remote" bits stay 0 (unknown):
        // the model does not record where the parent context came from.
        flags: u32::from(s.flags),
        name: s.name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: key_values(&s.attributes),
        status: Some(status),
        ..Default::default()
    }
}

/// Encodes spans as one OTLP request: one `ResourceSpans` per resource (same `Arc`, or
/// same pid with equal contents), in first-seen order, each with one `ScopeSpans` for
/// scope `ghostwire` at the crate version; spans keep their input order.
#[must_use]
pub fn to_otlp(spans: &[Arc<Span>]) -> ExportTraceServiceRequest {
    let (mut firsts, mut group_of) = (Vec::new(), Vec::new());
    encode::resource_groups(spans, &mut firsts, &mut group_of);
    let mut groups: Vec<(&Arc<Resource>, Vec<OtlpSpan>)> =
        firsts.iter().map(|&first| (&spans[first].resource, Vec::new())).collect();
    for (s, &g) in spans.iter().zip(&group_of) {
        groups[g].1.push(otlp_span(s));
    }
    let scope = InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(otlp_resource(r)),
                scope_spans: vec![ScopeSpans { scope: Some(scope.clone()), spans, ..Default::default() }],
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::borrow::Cow;

    pub(crate) fn resource(pid: u32, service: &str) -> Arc<Resource> {
        Arc::new(Resource {
            pid,
            service_name: service.into(),
            attributes: vec![
                (Cow::Borrowed("service.name"), service.into()),
                (Cow::Borrowed("process.pid"), AttrValue::Int(i64::from(pid))),
            ],
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mk_span(
        res: &Arc<Resource>,
        trace: u8,
        id: u8,
        parent: u8,
        kind: SpanKind,
        name: &str,
        start_us: u64,
        dur_us: u64,
    ) -> Arc<Span> {
        let base = 1_700_000_000_000_000_000u64;
        Arc::new(Span {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: [parent; 8],
            trace_state: String::new(),
            flags: 1,
            name: name.into(),
            kind,
            start_unix_ns: base + start_us * 1000,
            end_unix_ns: base + (start_us + dur_us) * 1000,
            status: Status::Unset,
            attributes: vec![],
            resource: res.clone(),
        })
    }

    #[test]
    fn maps_fields() {
        let r = resource(42, "api");
        let mut s = (*mk_span(&r, 0xab, 2, 1, SpanKind::Client, "GET", 10, 5)).clone();
        s.status = Status::Error { message: "HTTP 503".into() };
        s.trace_state = "vendor=x".into();
        s.attributes = vec![
            (Cow::Borrowed("url.path"), "/a".into()),
            (Cow::Borrowed("http.response.status_code"), AttrValue::Int(503)),
            (Cow::Borrowed("network.peer.keep_alive"), AttrValue::Bool(true)),
        ];
        let root = mk_span(&r, 0xab, 1, 0, SpanKind::Server, "GET", 0, 20);
        let req = to_otlp(&[root, Arc::new(s)]);

        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "ghostwire");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));

        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans[0].kind, 2);
        assert!(spans[0].parent_span_id.is_empty(), "root: empty parent id");
        assert_eq!(spans[0].status.as_ref().unwrap().code, 0);
        assert_eq!(spans[0].flags, 1);

        let c = &spans[1];
        assert_eq!(c.kind, 3);
        assert_eq!(c.trace_id, vec![0xab; 16]);
        assert_eq!(c.span_id, vec![2; 8]);
        assert_eq!(c.parent_span_id, vec![1; 8]);
        assert_eq!(c.trace_state, "vendor=x");
        assert_eq!(c.start_time_unix_nano, 1_700_000_000_000_010_000);
        assert_eq!(c.end_time_unix_nano, 1_700_000_000_000_015_000);
        let st = c.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (2, "HTTP 503"));
        let vals: Vec<_> =
            c.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap())).collect();
        assert_eq!(
            vals,
            [
                ("url.path", any_value::Value::StringValue("/a".into())),
                ("http.response.status_code", any_value::Value::IntValue(503)),
                ("network.peer.keep_alive", any_value::Value::BoolValue(true)),
            ]
        );
    }

    #[test]
    fn groups_by_resource() {
        let a = resource(1, "a");
        let b = resource(2, "b");
        // Same pid and contents, different Arc: merged with `a`.
        let a2 = resource(1, "a");
        // Same pid, different contents (pid reused): separate.
        let a3 = resource(1, "other");
        let spans = [
            mk_span(&a, 1, 1, 0, SpanKind::Server, "s1", 0, 1),
            mk_span(&b, 1, 2, 1, SpanKind::Server, "s2", 0, 1),
            mk_span(&a2, 1, 3, 1, SpanKind::Client, "s3", 0, 1),
            mk_span(&a, 1, 4, 1, SpanKind::Client, "s4", 0, 1),
            mk_span(&a3, 1, 5, 1, SpanKind::Client, "s5", 0, 1),
        ];
        let req = to_otlp(&spans);
        let names: Vec<Vec<&str>> = req
            .resource_spans
            .iter()
            .map(|rs| rs.scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["s1", "s3", "s4"], vec!["s2"], vec!["s5"]]);
    }

    #[test]
    fn adds_missing_service_name() {
        let r = Arc::new(Resource { pid: 7, service_name: "x".into(), attributes: vec![] });
        let req = to_otlp(&[mk_span(&r, 1, 1, 0, SpanKind::Server, "s", 0, 1)]);
        let attrs = &req.resource_spans[0].resource.as_ref().unwrap().attributes;
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].key, "service.name");
    }

    #[test]
    fn empty_input_is_empty_request() {
        assert!(to_otlp(&[]).resource_spans.is_empty());
    }

    #[tokio::test]
    async fn no_outputs_accepts_and_discards() {
        let ex = Exporters::start(ExportConfig::default()).unwrap();
        assert!(ex.is_empty());
        let r = resource(1, "a");
        ex.submit((*mk_span(&r, 1, 1, 0, SpanKind::Server, "s", 0, 1)).clone());
        ex.shutdown(Duration::from_millis(10)).await;
    }

    #[test]
    fn start_outside_runtime_is_an_error() {
        assert!(Exporters::start(ExportConfig::default()).is_err());
    }

    #[tokio::test]
    async fn unopenable_jsonl_path_is_an_error() {
        let cfg = ExportConfig { jsonl_path: Some("/nonexistent-dir-ghostwire/x.jsonl".into()), ..Default::default() };
        let err = Exporters::start(cfg).err().unwrap();
        assert!(format!("{err:#}").contains("/nonexistent-dir-ghostwire/x.jsonl"), "{err:#}");
    }

    #[tokio::test]
    async fn bad_otlp_endpoint_is_an_error() {
        for bad in ["ftp://x:1", "http://[::1", ""] {
            let cfg = ExportConfig { otlp: Some(otlp::OtlpOptions::grpc(bad)), ..Default::default() };
            assert!(Exporters::start(cfg).is_err(), "{bad}");
        }
    }
}
