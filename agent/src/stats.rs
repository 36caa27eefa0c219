//! Self-telemetry: every event, span and drop is counted in one place.
//!
//! Userspace counters live here as one enum of named counters; the kernel's per-probe
//! counters are read from the BPF per-CPU array by `capture` and merged into the report
//! as a [`KernelCounters`] snapshot. Drops are counted *and* logged (at debug level per
//! occurrence, so a flood of them does not flood the log; totals are in every report).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident => $key:literal,)*) => {
        /// A userspace counter.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $($(#[$doc])* $name,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];
            /// Stable snake_case name, used in reports and span attributes.
            #[must_use]
            pub fn name(self) -> &'static str {
                match self { $(Counter::$name => $key,)* }
            }
        }
    };
}

counters! {
    /// Ring-buffer records decoded.
    EventsData => "events.data",
    EventsConn => "events.conn",
    EventsState => "events.state",
    EventsListen => "events.listen",
    EventsExit => "events.exit",
    /// Records drained and discarded (`--capture-only`).
    EventsDiscarded => "events.discarded",
    /// Ring-buffer record too short or with an unknown tag.
    DropMalformedEvent => "drop.malformed_event",
    /// Data for a connection the agent has no state for (its Conn event was lost).
    DropUnknownConn => "drop.unknown_conn",
    /// Connection whose first bytes are not a protocol ghostwire parses.
    ConnsNotHttp => "conns.not_http",
    /// Connections first seen mid-stream (opened before the agent started): traced
    /// from their next message.
    ConnsMidstream => "conns.midstream",
    /// A jump in a connection's byte offsets: records were lost (ring buffer full); the
    /// connection's parser resynchronised on the next message.
    DropCaptureGap => "drop.capture_gap",
    /// Requests in flight on a connection when its bytes were lost: no span for them.
    DropLostRequest => "drop.lost_request",
    /// Messages whose beginning was not seen (a connection joined mid-stream, or bytes
    /// lost): skipped, never made into a span.
    DropHalfSeen => "drop.half_seen",
    /// Request or response heads larger than what could be seen: their spans carry
    /// what was seen and `ghostwire.truncated`.
    HeadTruncated => "http.head_truncated",
    /// Responses whose connection ended inside their body (the client stopped reading,
    /// or the server stopped writing): their spans end at the last byte seen and carry
    /// `ghostwire.response.incomplete`.
    ResponseIncomplete => "http.response_incomplete",
    /// Bytes that could not be parsed (garbage, truncated headers, oversize headers).
    DropParseError => "drop.parse_error",
    /// Client connections parsed as PostgreSQL, MySQL/MariaDB or Redis.
    DbConns => "db.conns",
    /// The server side of database connections (a database server traced on the node):
    /// left alone, database servers get no SERVER spans.
    DbServerConns => "db.server_conns",
    /// Database calls parsed (each is a CLIENT span).
    DbCalls => "db.calls",
    /// Pub/sub messages and PostgreSQL notifications: counted, not spans.
    DbPushes => "db.pushes",
    /// PostgreSQL COPY operations (counted; their data is not parsed).
    DbCopies => "db.copies",
    /// MySQL connections using TLS without uprobe plaintext, or compression: not decodable.
    DbUndecodable => "db.undecodable",
    /// Bytes on a database connection that could not be parsed: the parser started over.
    DropDbParseError => "drop.db_parse_error",
    /// Connection state evicted because the table was full.
    DropConnTableFull => "drop.conn_table_full",
    /// Requests never answered before the connection closed.
    DropUnansweredRequest => "drop.unanswered_request",
    /// Spans built from exchanges.
    SpansBuilt => "spans.built",
    /// Spans handed to an exporter successfully (per exporter).
    SpansExported => "spans.exported",
    /// Spans dropped because an export queue was full (oldest dropped first).
    DropExportQueueFull => "drop.export_queue_full",
    /// Spans dropped after an export failed and retries ran out (or at shutdown).
    DropExportFailed => "drop.export_failed",
    /// Export attempts that failed (each retry counts).
    ExportErrors => "export.errors",
    /// TCP connections already established when the agent started (traced from their
    /// next message).
    ConnsPreexisting => "conns.preexisting",
    /// HTTP/2 connections parsed (prior knowledge, h2c upgrade, or frames mid-stream).
    H2Connections => "h2.connections",
    /// Connections joined mid-stream whose bytes were tried as HTTP/2 frames and
    /// rejected (neither HTTP/1 nor HTTP/2: left alone).
    H2DetectRejected => "h2.detect_rejected",
    /// HTTP/2 request streams parsed.
    H2Streams => "h2.streams",
    /// Streams whose `:method`, `:path` or `:status` referred to an HPACK entry sent
    /// before the agent saw the connection (or in bytes it lost): reported as `_OTHER`
    /// or left out, never guessed.
    H2UnknownMethod => "h2.unknown_method",
    H2UnknownPath => "h2.unknown_path",
    H2UnknownStatus => "h2.unknown_status",
    /// Header fields of any kind that referred to an HPACK entry never seen.
    H2UnknownField => "h2.unknown_field",
    /// Streams ended by RST_STREAM or GOAWAY.
    H2StreamsReset => "h2.streams_reset",
    /// Server-pushed streams (PUSH_PROMISE): ignored.
    H2PushIgnored => "h2.push_ignored",
    /// Streams not tracked because the connection already had `MAX_STREAMS` open.
    DropH2StreamLimit => "drop.h2_stream_limit",
    /// HTTP/2 connection errors (bad frame, bad HPACK, oversized header block): the
    /// connection's streams were reset and its parser resynchronised.
    DropH2ConnectionError => "drop.h2_connection_error",
    /// Spans by how they were linked (`ghostwire.link`).
    LinkHeader => "link.header",
    LinkThread => "link.thread",
    LinkSocket => "link.socket",
    LinkProcess => "link.process",
    LinkContent => "link.content",
    LinkOrder => "link.order",
    LinkHandoff => "link.handoff",
    LinkNone => "link.none",
    /// Outbound calls left unlinked: no evidence named one inbound request.
    LinkUnlinkedClient => "link.unlinked_client",
    /// Outbound calls whose process had several inbound requests in flight and no
    /// evidence singled one out (left unlinked).
    LinkAmbiguousThread => "link.ambiguous",
    /// Outbound calls where two kinds of evidence named different inbound requests
    /// (left unlinked: a wrong parent is worse than none).
    LinkEvidenceConflict => "link.evidence_conflict",
    /// Outbound calls made on a worker thread whose parent was decided later, by which
    /// request that thread answered next (their spans wait until then).
    LinkDeferred => "link.deferred",
    /// Deferred calls whose thread answered no candidate request, answered several in
    /// one write, or took too long: exported unlinked.
    LinkDeferredUnresolved => "link.deferred_unresolved",
    /// Spans held for a deferred parent, released unlinked because the hold was full.
    DropLinkHeld => "drop.link_held",
    /// Server requests whose client's request reached the agent after their own
    /// response (the client's send event came late): linked once it did.
    LinkSocketLate => "link.socket_late",
    /// Server requests that waited for a traced client connection's request and never
    /// saw it: exported as roots.
    LinkSocketWaitExpired => "link.socket_wait_expired",
    /// Socket links found through a NAT translation (conntrack).
    LinkSocketNat => "link.socket_nat",
    /// A passed-on header and the socket named different traces (the header won).
    LinkHeaderSocketDisagree => "link.header_socket_disagree",
    /// Requests forgotten before they were answered (linker state bound).
    LinkEvicted => "link.evicted",
    /// Spans repairing a chain whose caller dropped the context.
    PropagationBreaks => "link.propagation_breaks",
    /// Spans not emitted because their process exports its own (SDK-instrumented).
    SpansSuppressedInstrumented => "spans.suppressed_instrumented",
    /// TLS sessions bound to their connection by the kernel.
    EventsTlsBind => "events.tls_bind",
    /// Processes that called exec (scanned for TLS libraries).
    EventsExec => "events.exec",
    /// Connections whose socket bytes are TLS records (ciphertext: never parsed).
    TlsConns => "tls.conns",
    /// TLS connections whose plaintext arrived from the OpenSSL uprobes.
    TlsDecryptedConns => "tls.decrypted_conns",
    /// Ciphertext records the socket hooks reported on TLS connections, ignored.
    TlsCiphertextRecords => "tls.ciphertext_records",
    /// TLS connections that ended with application data but no plaintext: their process
    /// uses a TLS stack ghostwire cannot see (Go crypto/tls, rustls, static OpenSSL
    /// without symbols).
    TlsUndecryptedConns => "tls.undecrypted_conns",
    /// Distinct processes with such connections.
    TlsUndecryptedProcesses => "tls.undecrypted_processes",
    /// TLS sessions whose plaintext is not a protocol ghostwire parses.
    TlsPlaintextNotHttp => "tls.plaintext_not_http",
    /// Plaintext whose connection never became known (held too long or too much).
    DropTlsUnbound => "drop.tls_unbound",
    /// Library or executable files with the OpenSSL uprobes attached (each file once).
    TlsLibrariesAttached => "tls.libraries_attached",
    /// Processes found mapping a file whose probes were already attached.
    TlsAttachShared => "tls.attach_shared",
    /// Files that export the OpenSSL symbols but could not be attached.
    TlsAttachFailed => "tls.attach_failed",
    /// Exec notifications the TLS discovery queue had no room for: a full rescan of
    /// the processes follows instead.
    DropTlsExecQueueFull => "drop.tls_exec_queue_full",
    /// Conntrack lookups of an accepted connection's original destination (Service NAT).
    NatLookups => "nat.lookups",
    /// Lookups that found a rewritten address (the client connected to a virtual IP).
    NatTranslated => "nat.translated",
    /// Lookups that found no conntrack entry (untracked traffic, or the entry expired).
    NatNotFound => "nat.not_found",
    /// Lookups that failed: timeout, netlink error, undecodable reply (first one logged).
    NatLookupFailed => "nat.lookup_failed",
    /// Of those, entries whose source was rewritten too (SNAT, masquerade, a clash remap):
    /// the server's peer is not the client's own address, so only the client's full view
    /// (`original_connection`) can pair them; `original_destination` answers nothing.
    NatSourceTranslated => "nat.source_translated",
    /// Lookups not made: the connection is in another network namespace than the agent,
    /// whose conntrack table the agent's socket does not see.
    NatOtherNetns => "nat.other_netns",
    /// Traces kept, by the rule that kept them (`ghostwire.sampling.reason`). Traces are
    /// counted once, at their decision (head-only sampling: at their entry span).
    SampleKeptHead => "sample.kept.head",
    SampleKeptParent => "sample.kept.parent",
    SampleKeptError => "sample.kept.error",
    SampleKeptSlow => "sample.kept.slow",
    SampleKeptAdaptive => "sample.kept.adaptive",
    /// Traces dropped, by the rule that dropped them.
    SampleDroppedHead => "sample.dropped.head",
    SampleDroppedParent => "sample.dropped.parent",
    SampleDroppedAdaptive => "sample.dropped.adaptive",
    /// Traces the other rules kept that the `--sample-max-traces-per-second` bucket
    /// had no token for.
    SampleDroppedRateLimit => "sample.dropped.rate_limit",
    /// Spans not exported because their trace was not sampled.
    DropSampledOut => "drop.sampled_out",
    /// Traces decided before they were complete because the tail buffer was full
    /// (by traces or by bytes): decided on the spans it held.
    SampleBufferOverflow => "sample.buffer_overflow",
    /// Traces decided without an entry span, after `--sample-max-wait`.
    SampleIncomplete => "sample.incomplete",
    /// Spans that arrived after their trace was decided (the decision was applied).
    SampleLateSpans => "sample.late_spans",
    /// Adaptive sampling: operations beyond the tracked number, sampled as one.
    SampleOperationsOverflow => "sample.operations_overflow",
    /// Metric series not created because their family held its maximum: the request
    /// was counted under `_OTHER` label values.
    MetricsSeriesOverflow => "metrics.series_overflow",
    /// Client or server spans whose other half never arrived: no service-graph edge.
    MetricsGraphUnpaired => "metrics.graph_unpaired",
    /// Service-graph halves not held because the pairing table was full.
    MetricsGraphPendingFull => "metrics.graph_pending_full",
    /// Scrapes of `/metrics` served.
    MetricsScrapes => "metrics.scrapes",
    /// Failed lists or watches of this node's pods (each retried with backoff).
    K8sWatchErrors => "k8s.watch_errors",
    /// Pod updates not indexed because the pod index was full.
    K8sPodsDropped => "k8s.pods_dropped",
}

macro_rules! gauges {
    ($($(#[$doc:meta])* $name:ident => $key:literal,)*) => {
        /// A userspace gauge: a level, not a count.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Gauge { $($(#[$doc])* $name,)* }

        impl Gauge {
            pub const ALL: &'static [Gauge] = &[$(Gauge::$name,)*];
            /// Stable snake_case name, used in reports.
            #[must_use]
            pub fn name(self) -> &'static str {
                match self { $(Gauge::$name => $key,)* }
            }
        }
    };
}

gauges! {
    /// Traces and spans held by the tail sampler now, and the bytes they take.
    SampleBufferTraces => "sample.buffer_traces",
    SampleBufferSpans => "sample.buffer_spans",
    SampleBufferBytes => "sample.buffer_bytes",
    /// The most traces and bytes the tail sampler held at once.
    SampleBufferTracesPeak => "sample.buffer_traces_peak",
    SampleBufferBytesPeak => "sample.buffer_bytes_peak",
}

const N: usize = Counter::ALL.len();
const NG: usize = Gauge::ALL.len();

/// Process-wide userspace counters.
pub struct Stats {
    values: [AtomicU64; N],
    gauges: [AtomicU64; NG],
}

static STATS: Stats = Stats { values: [const { AtomicU64::new(0) }; N], gauges: [const { AtomicU64::new(0) }; NG] };

/// The global counters.
#[must_use]
pub fn global() -> &'static Stats {
    &STATS
}

impl Stats {
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn incr(&self, c: Counter) {
        self.add(c, 1);
    }

    #[must_use]
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    pub fn set(&self, g: Gauge, v: u64) {
        self.gauges[g as usize].store(v, Ordering::Relaxed);
    }

    /// Raises a high-water mark to `v` (never lowers it).
    pub fn raise(&self, g: Gauge, v: u64) {
        self.gauges[g as usize].fetch_max(v, Ordering::Relaxed);
    }

    #[must_use]
    pub fn gauge(&self, g: Gauge) -> u64 {
        self.gauges[g as usize].load(Ordering::Relaxed)
    }

    /// Counts a drop and logs it at debug level.
    pub fn drop_event(&self, c: Counter, detail: std::fmt::Arguments<'_>) {
        self.incr(c);
        log::debug!("{}: {detail}", c.name());
    }
}

/// Propagation breaks per edge (caller service, callee service).
static BREAKS: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Counts one propagation break from `caller` to `callee`.
pub fn propagation_break(caller: &str, callee: &str) {
    global().incr(Counter::PropagationBreaks);
    let mut map = BREAKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(n) = map.get_mut(&(caller.to_owned(), callee.to_owned())) {
        *n += 1;
    } else if map.len() < 4096 {
        map.insert((caller.to_owned(), callee.to_owned()), 1);
    }
}

/// Propagation breaks per edge: `((caller, callee), count)`, at most 4096 edges.
#[must_use]
pub fn propagation_breaks() -> Vec<((String, String), u64)> {
    let map = BREAKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Snapshot of the kernel's per-probe counters, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct KernelCounters {
    /// `(probe name, counter name, value)`, non-zero values only.
    pub values: Vec<(&'static str, &'static str, u64)>,
}

impl KernelCounters {
    /// Sum of one counter over all probes.
    #[must_use]
    pub fn total(&self, counter: &str) -> u64 {
        self.values.iter().filter(|(_, c, _)| *c == counter).map(|(_, _, v)| v).sum()
    }
}

/// Figures the report derives from counters (besides the counters themselves).
pub const DERIVED: &[&str] = &["h2.unknown_pct"];

/// One human-readable report of all non-zero counters.
#[must_use]
pub fn report(kernel: &KernelCounters) -> String {
    let s = global();
    let mut out = String::from("stats:");
    for &c in Counter::ALL {
        let v = s.get(c);
        if v != 0 {
            let _ = write!(out, " {}={v}", c.name());
        }
    }
    for &g in Gauge::ALL {
        let v = s.gauge(g);
        if v != 0 {
            let _ = write!(out, " {}={v}", g.name());
        }
    }
    // How often an HTTP/2 stream's method, path or status could not be decoded (HPACK
    // state from before the agent saw its connection), in percent of streams.
    let streams = s.get(Counter::H2Streams);
    if streams > 0 {
        let unknown = [Counter::H2UnknownMethod, Counter::H2UnknownPath, Counter::H2UnknownStatus]
            .iter()
            .map(|&c| s.get(c))
            .max()
            .unwrap_or(0);
        let _ = write!(out, " h2.unknown_pct={}", (unknown * 100).div_ceil(streams));
    }
    for name in ghostwire_common::counter::NAMES {
        let total = kernel.total(name);
        if total != 0 {
            let _ = write!(out, " kernel.{name}={total}");
        }
    }
    for (probe, counter, v) in &kernel.values {
        if *counter != "emitted" {
            let _ = write!(out, " kernel.{probe}.{counter}={v}");
        }
    }
    let breaks = BREAKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((caller, callee), n) in breaks.iter() {
        let _ = write!(out, " break.{}->{}={n}", token(caller), token(callee));
    }
    if out == "stats:" {
        out.push_str(" nothing counted yet");
    }
    out
}

/// A service name as one whitespace-free token of the report.
fn token(name: &str) -> String {
    name.chars().map(|c| if c.is_whitespace() || c == '=' { '_' } else { c }).collect()
}
