//! The userspace hot path, in one place: ring-buffer record → event → connection table →
//! started requests and exchanges → linker → spans → export queues. Runs on one task;
//! nothing here blocks or awaits.
use crate::capture::{self, Event};
use std::collections::{HashMap, VecDeque};

use crate::conn::{ConnKey, ConnMeta, ConnSink, ConnTable, ExchangeRecord, ListenTable, ReqKey, Start};
use crate::export::Exporters;
use crate::metrics::Metrics;
use crate::protocol::Request;
use crate::sample::Sampler;
use crate::span::build::{self, Clock};
use crate::span::link::{LinkKind, Linker, Resolution};
use crate::span::resource::ResourceCache;
use crate::span::{Resource, Span};
use crate::stats::{self, Counter};

pub struct Pipeline {
    conns: ConnTable,
    spans: Spans,
    /// Where exec events go: the TLS library discovery looks at the new image.
    execs: Option<capture::tls_libs::ExecNotifier>,
}

/// Everything downstream of the connection table.
struct Spans {
    linker: Linker,
    resources: ResourceCache,
    clock: Clock,
    build_options: build::Options,
    /// Every span passes here first, sampled or not.
    metrics: Option<Metrics>,
    sampler: Sampler,
    exporters: Exporters,
    /// Spans whose trace waits for a deferred call's parent, per provisional trace id.
    held: HashMap<[u8; 16], Vec<Span>>,
    /// Held traces, oldest first (the bound evicts from the front).
    held_order: VecDeque<[u8; 16]>,
    held_spans: usize,
}

/// Spans held for deferred links, at most (beyond it the oldest are released unlinked).
const MAX_HELD_SPANS: usize = 8192;

impl Pipeline {
    /// `instrumented`: service or executable names whose processes export their own
    /// spans (ghostwire emits none for them). `listening`: the ports listening when the
    /// agent started, per namespace.
    #[must_use]
    pub fn new(exporters: Exporters, instrumented: Vec<String>, listening: ListenTable) -> Self {
        Self {
            conns: ConnTable::new(crate::conn::DEFAULT_MAX_CONNS, listening),
            spans: Spans {
                linker: Linker::new(instrumented),
                resources: ResourceCache::default(),
                clock: Clock::now(),
                build_options: build::Options::default(),
                metrics: None,
                sampler: Sampler::new(crate::sample::Config::default()),
                exporters,
                held: HashMap::new(),
                held_order: VecDeque::new(),
                held_spans: 0,
            },
            execs: None,
        }
    }

    /// Lets the socket link see through NAT (conntrack).
    pub fn set_nat(&mut self, nat: Box<dyn crate::span::nat::NatLookup + Send>) {
        self.spans.linker.set_nat(nat);
    }

    /// Node-level resource attributes (`OTEL_RESOURCE_ATTRIBUTES`) on every span.
    pub fn set_node_attributes(&mut self, attrs: &[(String, String)]) {
        self.spans.resources.set_node_attributes(attrs);
    }

    /// Describes processes in pods with this node's pods as the API server lists them.
    pub fn set_pods(&mut self, pods: std::sync::Arc<crate::span::pods::PodIndex>) {
        self.spans.resources.set_pods(pods);
    }

    /// Which traces are exported (default: all).
    /// How spans are built (`--unsafe-raw-queries`).
    pub fn set_build_options(&mut self, opts: build::Options) {
        self.spans.build_options = opts;
    }

    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.spans.sampler = sampler;
    }

    /// Counts every span into these metrics before sampling.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.spans.metrics = Some(metrics);
    }

    /// Forwards every exec event's pid to `execs` (without blocking).
    pub fn forward_execs(&mut self, execs: capture::tls_libs::ExecNotifier) {
        self.execs = Some(execs);
    }

    /// Handles one ring-buffer record.
    pub fn on_record(&mut self, bytes: &[u8]) {
        let event = match capture::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                stats::global().drop_event(Counter::DropMalformedEvent, format_args!("{e}"));
                return;
            }
        };
        self.on_event(&event);
    }

    /// Handles one decoded capture event.
    pub fn on_event(&mut self, event: &Event<'_>) {
        let s = stats::global();
        match event {
            Event::Data(_) => s.incr(Counter::EventsData),
            Event::Conn(ev) => {
                s.incr(Counter::EventsConn);
                // Read the process's resource now: a short-lived client may be gone by
                // the time its response arrives.
                let resource = self.spans.resources.get_with_parent(ev.pid, &comm(&ev.comm), ev.ppid);
                self.spans.observe(&resource);
            }
            Event::State(_) => s.incr(Counter::EventsState),
            Event::Listen(_) => s.incr(Counter::EventsListen),
            Event::Exit { .. } => s.incr(Counter::EventsExit),
            Event::TlsBind { .. } => s.incr(Counter::EventsTlsBind),
            Event::Exec { pid, .. } => {
                s.incr(Counter::EventsExec);
                if let Some(execs) = &self.execs {
                    execs.notify(*pid);
                }
            }
        }
        self.conns.on_event(event, &mut self.spans);
        if let Event::Exit { pid, .. } = *event {
            self.spans.resources.forget(pid);
            self.spans.linker.process_exited(pid);
        }
    }

    /// Periodic upkeep (about once a second): re-measure the clock offset; drop TLS
    /// plaintext held too long for a connection never named.
    pub fn tick(&mut self) {
        self.spans.clock = Clock::now();
        let now = monotonic_ns();
        self.conns.tick(now);
        self.spans.linker.expire(now);
        self.spans.settle();
        self.spans.sampler.tick();
        if let Some(m) = &mut self.spans.metrics {
            m.tick();
        }
    }

    /// Hands the spans built since the last call to the exporters (after each drain of
    /// the ring: one hand-over per batch of records).
    pub fn flush(&mut self) {
        let Spans { sampler, exporters, .. } = &mut self.spans;
        sampler.poll(&mut |s| exporters.stage(s));
        self.spans.exporters.flush();
    }

    /// Gives the exporters back for shutdown (held spans go out as they are).
    #[must_use]
    pub fn into_exporters(self) -> Exporters {
        self.finish().0
    }

    /// Gives the exporters back for shutdown (held spans go out as they are), and the
    /// service map when metrics were kept.
    #[must_use]
    pub fn finish(mut self) -> (Exporters, Option<crate::metrics::map::ServiceMap>) {
        let traces: Vec<[u8; 16]> = self.spans.held_order.drain(..).collect();
        for t in traces {
            self.spans.release(t, None);
        }
        let Spans { sampler, exporters, .. } = &mut self.spans;
        sampler.drain(&mut |s| exporters.stage(s));
        let map = self.spans.metrics.as_mut().map(Metrics::take_service_map);
        (self.spans.exporters, map)
    }
}

impl Spans {
    /// Lets the linker know a process's names (for `--instrumented`).
    fn observe(&mut self, r: &Resource) {
        let exe = r.attributes.iter().find(|(k, _)| k == "process.executable.name").and_then(|(_, v)| match v {
            crate::span::AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        });
        self.linker.observe_process(r.pid, &[r.service_name.as_str(), exe.unwrap_or_default()], r.is_go());
    }

    /// Applies the linker's decisions on deferred calls to the spans held for them.
    fn settle(&mut self) {
        for r in self.linker.take_resolved() {
            let from = r.from;
            self.release(from, Some(&r));
        }
        for t in self.linker.take_abandoned() {
            self.release(t, None);
        }
    }

    /// Exports the spans held for provisional trace `trace`, moved into the trace the
    /// resolution names (or as they are).
    fn release(&mut self, trace: [u8; 16], resolution: Option<&Resolution>) {
        let Some(spans) = self.held.remove(&trace) else { return };
        // Its place in `held_order` is skipped when reached (no scan per release); the
        // order is compacted once mostly stale.
        if self.held_order.len() > 4 * self.held.len() + 1024 {
            let held = &self.held;
            self.held_order.retain(|t| held.contains_key(t));
        }
        self.held_spans -= spans.len();
        for mut span in spans {
            if let Some(r) = resolution {
                span.trace_id = r.to;
                span.flags = r.flags;
                if span.span_id == r.root {
                    span.parent_span_id = r.parent;
                    span.trace_state.clone_from(&r.trace_state);
                    build::set_link(&mut span, r.link, r.evidence, r.confidence);
                    stats::global().incr(link_counter(r.link));
                    if let Some(pid) = r.propagation_break {
                        let caller = self.resources.get(pid, "");
                        stats::propagation_break(&caller.service_name, &span.resource.service_name);
                        build::mark_propagation_break(&mut span, &caller.service_name);
                    }
                }
                if self.linker.is_provisional(&r.to) {
                    // The parent's own trace waits for a deferred call upstream (a
                    // proxy in front of a pool): wait with it.
                    self.hold(span);
                    continue;
                }
            } else if span.is_root() {
                stats::global().incr(Counter::LinkNone);
            }
            self.emit(span);
        }
    }

    /// A span whose trace is settled: into the metrics, then the sampler decides
    /// whether (and when) the exporters get it.
    fn emit(&mut self, span: Span) {
        if let Some(m) = &mut self.metrics {
            m.observe(&span);
        }
        let exporters = &mut self.exporters;
        self.sampler.offer(span, &mut |s| exporters.stage(s));
    }

    /// Holds a span whose trace is provisional (bounded: the oldest trace goes out).
    fn hold(&mut self, span: Span) {
        while self.held_spans >= MAX_HELD_SPANS {
            let Some(oldest) = self.held_order.pop_front() else { break };
            let n = self.held.get(&oldest).map_or(0, Vec::len);
            stats::global().add(Counter::DropLinkHeld, n as u64);
            self.release(oldest, None);
        }
        let trace = span.trace_id;
        let list = self.held.entry(trace).or_default();
        if list.is_empty() {
            self.held_order.push_back(trace);
        }
        list.push(span);
        self.held_spans += 1;
    }
}

impl ConnSink for Spans {
    fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, start: Start, request: &Request) {
        self.linker.request_started(key, conn, start, request);
    }

    fn exchange(&mut self, rec: ExchangeRecord) {
        let Some(identity) = self.linker.exchange_done(&rec) else { return };
        let resource = self.resources.get(rec.conn.pid, "");
        let s = stats::global();
        // A deferred call is counted when its parent is decided (in `release`).
        let provisional = self.linker.is_provisional(&identity.trace_id);
        if !(provisional && identity.link == LinkKind::None) {
            s.incr(link_counter(identity.link));
        }
        let caller = identity.propagation_break.map(|pid| self.resources.get(pid, ""));
        if let Some(caller) = &caller {
            stats::propagation_break(&caller.service_name, &resource.service_name);
        }
        let mut span = build::build(&rec, identity, resource, self.clock, self.build_options);
        if let Some(caller) = caller {
            build::mark_propagation_break(&mut span, &caller.service_name);
        }
        s.incr(Counter::SpansBuilt);
        if provisional {
            self.hold(span);
        } else {
            self.emit(span);
        }
    }

    fn connection_closed(&mut self, key: ConnKey, conn: &ConnMeta) {
        self.linker.connection_closed(key, conn);
    }

    fn batch_end(&mut self) {
        self.linker.batch_end();
        self.settle();
    }
}

fn link_counter(link: LinkKind) -> Counter {
    match link {
        LinkKind::Header => Counter::LinkHeader,
        LinkKind::Thread => Counter::LinkThread,
        LinkKind::Process => Counter::LinkProcess,
        LinkKind::Socket => Counter::LinkSocket,
        LinkKind::Content => Counter::LinkContent,
        LinkKind::Order => Counter::LinkOrder,
        LinkKind::Handoff => Counter::LinkHandoff,
        LinkKind::None => Counter::LinkNone,
    }
}

/// A kernel `comm` (NUL-padded) as text, borrowed when it is valid UTF-8.
fn comm(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
