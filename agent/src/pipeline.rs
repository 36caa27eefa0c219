//! The userspace hot path, in one place: ring-buffer record → event → connection table →
//! started requests and exchanges → linker → spans → export queues. Runs on one task;
//! nothing here blocks or awaits.
use crate::capture::{self, Event};
use crate::conn::{ConnKey, ConnMeta, ConnSink, ConnTable, ExchangeRecord, ListenTable, ReqKey};
use crate::export::Exporters;
use crate::protocol::Request;
use crate::span::build::{self, Clock};
use crate::span::link::{LinkKind, Linker};
use crate::span::resource::ResourceCache;
use crate::span::Resource;
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
    exporters: Exporters,
}

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
                exporters,
            },
            execs: None,
        }
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
        let s = stats::global();
        match &event {
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
        self.conns.on_event(&event, &mut self.spans);
        if let Event::Exit { pid, .. } = event {
            self.spans.resources.forget(pid);
            self.spans.linker.process_exited(pid);
        }
    }

    /// Periodic upkeep (about once a second): re-measure the clock offset; drop TLS
    /// plaintext held too long for a connection never named.
    pub fn tick(&mut self) {
        self.spans.clock = Clock::now();
        self.conns.tick(monotonic_ns());
    }

    /// Gives the exporters back for shutdown.
    #[must_use]
    pub fn into_exporters(self) -> Exporters {
        self.spans.exporters
    }
}

impl Spans {
    /// Lets the linker know a process's names (for `--instrumented`).
    fn observe(&mut self, r: &Resource) {
        let exe = r.attributes.iter().find(|(k, _)| k == "process.executable.name").and_then(|(_, v)| match v {
            crate::span::AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        });
        self.linker.observe_process(r.pid, &[r.service_name.as_str(), exe.unwrap_or_default()]);
    }
}

impl ConnSink for Spans {
    fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, tid: u32, request: &Request, wire_key: u64) {
        self.linker.request_started(key, conn, tid, request, wire_key);
    }

    fn exchange(&mut self, rec: ExchangeRecord) {
        let Some(identity) = self.linker.exchange_done(&rec) else { return };
        let resource = self.resources.get(rec.conn.pid, "");
        let s = stats::global();
        s.incr(match identity.link {
            LinkKind::Header => Counter::LinkHeader,
            LinkKind::Thread => Counter::LinkThread,
            LinkKind::Process => Counter::LinkProcess,
            LinkKind::Socket => Counter::LinkSocket,
            LinkKind::None => Counter::LinkNone,
        });
        let caller = identity.propagation_break.map(|pid| self.resources.get(pid, ""));
        if let Some(caller) = &caller {
            stats::propagation_break(&caller.service_name, &resource.service_name);
        }
        let mut span = build::build(&rec, identity, resource, self.clock);
        if let Some(caller) = caller {
            // The edge that broke, on the span itself: visible in any backend.
            span.attributes.push(("ghostwire.propagation_break.caller".into(), caller.service_name.as_str().into()));
        }
        s.incr(Counter::SpansBuilt);
        self.exporters.submit(span);
    }

    fn connection_closed(&mut self, key: ConnKey, conn: &ConnMeta) {
        self.linker.connection_closed(key, conn);
    }
}

/// A kernel `comm` (NUL-padded) as text.
fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
