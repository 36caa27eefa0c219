//! The userspace hot path, in one place: ring-buffer record → event → connection table →
//! exchanges → spans → export queues. Runs on one task; nothing here blocks or awaits.
use crate::capture::{self, Event};
use crate::conn::{ConnTable, ExchangeRecord};
use crate::export::Exporters;
use crate::span::build::{self, Clock};
use crate::span::resource::ResourceCache;
use crate::stats::{self, Counter};

pub struct Pipeline {
    conns: ConnTable,
    resources: ResourceCache,
    clock: Clock,
    exporters: Exporters,
    /// Reused between records.
    records: Vec<ExchangeRecord>,
}

impl Pipeline {
    #[must_use]
    pub fn new(exporters: Exporters) -> Self {
        Self {
            conns: ConnTable::default(),
            resources: ResourceCache::default(),
            clock: Clock::now(),
            exporters,
            records: Vec::new(),
        }
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
            Event::Data { .. } => s.incr(Counter::EventsData),
            Event::Conn(ev) => {
                s.incr(Counter::EventsConn);
                // Read the process's resource now: a short-lived client may be gone by
                // the time its response arrives.
                let _ = self.resources.get(ev.tgid, &comm(&ev.comm));
            }
            Event::Close(_) => s.incr(Counter::EventsClose),
            Event::Exit(_) => s.incr(Counter::EventsExit),
        }
        self.conns.on_event(&event, &mut self.records);
        for rec in self.records.drain(..) {
            let resource = self.resources.get(rec.conn.pid, "");
            let span = build::build(&rec, resource, self.clock);
            s.incr(Counter::SpansBuilt);
            self.exporters.submit(span);
        }
        if let Event::Exit(ev) = event {
            self.resources.forget(ev.tgid);
        }
    }

    /// Periodic upkeep (about once a second): re-measure the clock offset.
    pub fn tick(&mut self) {
        self.clock = Clock::now();
    }

    /// Connections currently tracked.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Gives the exporters back for shutdown.
    #[must_use]
    pub fn into_exporters(self) -> Exporters {
        self.exporters
    }
}

/// A kernel `comm` (NUL-padded) as text.
fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}
