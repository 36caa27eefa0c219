//! The linker: gives every request a place in a trace, and says how it got it.
//!
//! A SERVER span's parent comes from outside the process:
//!
//! * **header** — the request carried a trace context (W3C, B3 or Jaeger) that its
//!   sender created: the span joins that trace with the sender's span as parent.
//! * **socket** — the agent saw both ends of a TCP connection: the SERVER span of the
//!   accepting process is a child of the CLIENT span of the connecting one, header or
//!   not. The two ends are the reversed 4-tuple, in the same network namespace when the
//!   address is loopback (identical tuples in two namespaces are two connections);
//!   through a Service NAT (iptables DNAT, kube-proxy) conntrack gives the address the
//!   client connected to. Both ends name the request the same way (the "wire key"):
//!   HTTP/1 by the TCP sequence number of its first byte, HTTP/2 by its stream id.
//!
//! A CLIENT span's parent is the inbound request its process was handling when it made
//! the call. The candidates are the process's inbound requests in flight; the evidence
//! that picks one, combined:
//!
//! * **thread** — the calling thread is handling exactly one inbound request
//!   (thread-per-request and thread-pool servers).
//! * **order** — the inbound request this thread read most recently before the call
//!   (DeepFlow's syscall-trace idea), timed at `connect()` for a connection's first
//!   request (nginx connects in the handler that read the request but writes later,
//!   after reading others) and at the write for a pooled connection reused. It is
//!   trusted only when no other inbound request was read on the thread since the last
//!   outbound action: a burst of reads before any call (asyncio runs its handlers after
//!   reading all ready sockets) leaves order ambiguous.
//! * **content** — what a proxy forwards: the same method and target (or one a prefix
//!   longer or shorter), the same `X-Request-Id`, the `traceparent` it received;
//!   `X-Forwarded-For`/`X-Real-IP` naming another client's address rules a candidate out.
//! * **process** — the process is handling exactly one inbound request (a handler on
//!   another thread than the one that read, e.g. grpcio's pool), when nothing else tells.
//! * **handoff** — a call from a worker thread that read no request itself (grpcio: a
//!   completion-queue thread reads, a pool thread handles and then writes the answer),
//!   with several requests in flight: its parent is the request whose response that
//!   same thread writes next. Decided after the fact: the call's spans (and those of the
//!   servers it reached) are held until then, bounded in count and time.
//!
//! Evidence that disagrees leaves the call unlinked, as does evidence that does not
//! single out one request: a wrong parent is worse than none. Go programs move
//! goroutines between threads, so thread and order evidence are not used for them.
//! Each inferred link says on its span what picked it (`ghostwire.link`), what agreed
//! (`ghostwire.link.evidence`) and how sure it is (`ghostwire.link.confidence`).
//!
//! A request's ids are decided when its head is parsed, before its response exists,
//! because the calls it makes meanwhile need their parent. The socket link is resolved
//! lazily: the two ends of a loopback connection can reach the agent in either order.
//!
//! A process whose outbound requests carry a context it did not receive (nor one that
//! ghostwire made: ghostwire injects none yet) runs an OpenTelemetry SDK: it exports its
//! own spans, so ghostwire emits none for it (`--instrumented` declares such processes
//! up front) but still uses its headers to link its neighbours.
use std::cell::Cell;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use rand::Rng as _;

use super::context::{self, Format, SpanContext};
use super::nat::NatLookup;
use crate::conn::{ConnKey, ConnMeta, ExchangeRecord, ReqKey, Start};
use crate::protocol::{Request, Role};
use crate::stats::{self, Counter};

/// The linker's maps, hashed with [`FastHash`].
type HashMap<K, V> = std::collections::HashMap<K, V, FastHash>;
type HashSet<K> = std::collections::HashSet<K, FastHash>;

/// Hashes the linker's keys (pids, tids, socket ids, span and trace ids, addresses):
/// one multiply per word instead of SipHash's rounds, which were most of the cost of a
/// lookup and the linker makes a dozen per request. The keys are kernel-chosen ids,
/// random ids and local addresses, not strings a sender picks; the seed is random per
/// process all the same, so collisions cannot be precomputed.
#[derive(Clone, Copy)]
struct FastHash {
    seed: u64,
}

impl Default for FastHash {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        FastHash { seed: *SEED.get_or_init(|| rand::rng().random()) }
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.seed)
    }
}

/// Folded multiply (as in foldhash and wyhash): the 128-bit product's halves xored, so
/// every input bit reaches the low bits (the bucket) and the high bits (hashbrown's tag).
struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn mix(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word) * u128::from(Self::K);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps `[1]` and `[1, 0]` apart.
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// How a span got its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    Header,
    Thread,
    Process,
    Socket,
    /// Forwarded content (method and target, request id) named the inbound request.
    Content,
    /// The inbound request read on the thread just before the call.
    Order,
    /// The request whose response the calling worker thread wrote next.
    Handoff,
    /// A root span.
    None,
}

impl LinkKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Header => "header",
            LinkKind::Thread => "thread",
            LinkKind::Process => "process",
            LinkKind::Socket => "socket",
            LinkKind::Content => "content",
            LinkKind::Order => "order",
            LinkKind::Handoff => "handoff",
            LinkKind::None => "none",
        }
    }
}

/// How sure an inferred (thread, order, content, process, handoff) link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// Structural (the thread handles one request) or two independent kinds of
    /// evidence agree.
    High,
    /// One kind of evidence alone.
    Medium,
}

impl Confidence {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Confidence::High => "high",
            Confidence::Medium => "medium",
        }
    }
}

/// Which kinds of evidence named the parent of an inferred link (a set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence(u8);

impl Evidence {
    pub const THREAD: Evidence = Evidence(1);
    pub const ORDER: Evidence = Evidence(2);
    /// Order, timed at the connection's `connect()`.
    pub const CONNECT: Evidence = Evidence(4);
    pub const CONTENT: Evidence = Evidence(8);
    pub const PROCESS: Evidence = Evidence(16);
    pub const RESPONSE: Evidence = Evidence(32);
    const NAMES: [&'static str; 6] = ["thread", "order", "connect", "content", "process", "response"];

    #[must_use]
    pub fn contains(self, e: Evidence) -> bool {
        self.0 & e.0 == e.0
    }

    #[must_use]
    pub fn with(self, e: Evidence) -> Evidence {
        Evidence(self.0 | e.0)
    }

    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Independent kinds in the set (order timed at connect counts as order).
    fn kinds(self) -> u32 {
        (self.0 & !Self::CONNECT.0).count_ones()
            + u32::from(self.contains(Self::CONNECT) && !self.contains(Self::ORDER))
    }

    /// Comma-separated names, e.g. `content,order`.
    #[must_use]
    pub fn names(self) -> String {
        let mut out = String::new();
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(name);
            }
        }
        out
    }
}

/// The trace identity the linker gives one span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root.
    pub parent_span_id: [u8; 8],
    pub flags: u8,
    pub trace_state: String,
    pub link: LinkKind,
    /// Format of the header that linked it (for `link == Header`).
    pub format: Option<Format>,
    /// The caller received a context and did not forward it: this span repairs the chain.
    /// Holds the caller's pid.
    pub propagation_break: Option<u32>,
    /// For inferred links: what named the parent, and how sure that is.
    pub evidence: Evidence,
    pub confidence: Option<Confidence>,
}

/// What a server request learns from the client request at the other end of its socket.
#[derive(Clone, Debug)]
struct PeerRequest {
    /// TCP sequence number of the request's first byte.
    wire_key: u64,
    pid: u32,
    netns: u32,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    /// The process is SDK-instrumented: its ghostwire spans are not emitted.
    instrumented: bool,
    /// The request carried a header.
    sent: Option<SpanContext>,
    /// That header was one the process had received (a proxy passing it on).
    sent_is_pass_through: bool,
    /// The request was made while handling a request that arrived with a header.
    handling_received_context: bool,
}

/// What a proxy forwarding a server request would carry, to recognise it in a call.
///
/// Kept for reuse when its request is answered ([`Spare`]): its strings are refilled in
/// place, so recording a request's content costs no allocation once the linker has run.
#[derive(Debug)]
struct Content {
    method: String,
    target: String,
    /// `X-Request-Id`, if `has_request_id`.
    request_id: String,
    has_request_id: bool,
    /// The client's address (what `X-Forwarded-For` names).
    client: IpAddr,
}

impl Default for Content {
    fn default() -> Self {
        Content {
            method: String::new(),
            target: String::new(),
            request_id: String::new(),
            has_request_id: false,
            client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }
}

impl Content {
    /// Records `req`'s content, reusing the strings' room.
    fn fill(&mut self, req: &Request, client: IpAddr) {
        self.method.clear();
        self.method.push_str(&req.method);
        self.target.clear();
        self.target.push_str(&req.target);
        self.request_id.clear();
        let id = req.header("x-request-id");
        self.has_request_id = id.is_some();
        self.request_id.push_str(id.unwrap_or_default());
        self.client = client;
    }

    fn request_id(&self) -> Option<&str> {
        self.has_request_id.then_some(self.request_id.as_str())
    }
}

struct Pending {
    pid: u32,
    role: Role,
    identity: Identity,
    local: SocketAddr,
    peer: SocketAddr,
    netns: u32,
    /// Server: the context received in a header.
    received: Option<SpanContext>,
    /// Server: the socket link may still come (the peer's request not yet seen).
    unresolved: bool,
    /// Server: the thread it was read on.
    tid: u32,
    /// TCP sequence number of the request's first byte.
    wire_key: u64,
    /// Server: what a proxy would forward of it.
    content: Option<Box<Content>>,
    /// Server: a call was linked to it.
    has_calls: bool,
}

/// A server request read on a thread, for order evidence.
#[derive(Clone, Copy, Debug)]
struct Read {
    ts_ns: u64,
    key: ReqKey,
    /// A call was attributed to it (its handler has run).
    acted: bool,
}

/// One thread's inbound requests in flight and its recent syscall order.
#[derive(Default)]
struct ThreadLog {
    in_flight: Vec<ReqKey>,
    /// The last server requests read on the thread, oldest first.
    reads: VecDeque<Read>,
    /// An in-flight request was forgotten (bound): order evidence is off until the
    /// thread has nothing in flight.
    overflowed: bool,
}

/// One process's inbound requests in flight and the logs of its threads that have some,
/// together: a process exit drops them in one step, without a scan of every thread.
#[derive(Default)]
struct Proc {
    /// In-flight server requests, oldest first.
    in_flight: Vec<ReqKey>,
    /// Per thread with server requests in flight (or a log still naming one).
    threads: HashMap<u32, ThreadLog>,
}

/// The streams of one connection with requests pending: mostly one (HTTP/1 without
/// pipelining), kept inline so a request costs no allocation here.
#[derive(Default)]
struct Streams {
    /// `None` only when `more` is empty too.
    first: Option<u64>,
    more: Vec<u64>,
}

impl Streams {
    fn push(&mut self, stream: u64) {
        if self.first.is_none() {
            self.first = Some(stream);
        } else {
            self.more.push(stream);
        }
    }

    /// Removes every entry of `stream`.
    fn remove(&mut self, stream: u64) {
        self.more.retain(|s| *s != stream);
        if self.first == Some(stream) {
            self.first = self.more.pop();
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn into_iter(self) -> impl Iterator<Item = u64> {
        self.first.into_iter().chain(self.more)
    }
}

/// Emptied containers kept for reuse. A keep-alive server makes and empties a process
/// entry, a thread log and a content record per request; allocating them anew each
/// time was a third of the linker's cost. Bounded in count, and only small ones kept.
#[derive(Default)]
struct Spare {
    procs: Vec<Proc>,
    logs: Vec<ThreadLog>,
    #[expect(clippy::vec_box, reason = "pending requests hold their content boxed: moved in and out, never copied")]
    contents: Vec<Box<Content>>,
}

/// Containers of each kind kept for reuse.
const MAX_SPARE: usize = 64;
/// Larger containers are freed rather than kept (entries, or string bytes).
const MAX_SPARE_ROOM: usize = 512;

impl Spare {
    fn proc(&mut self) -> Proc {
        self.procs.pop().unwrap_or_default()
    }

    fn log(&mut self) -> ThreadLog {
        self.logs.pop().unwrap_or_default()
    }

    fn content(&mut self) -> Box<Content> {
        self.contents.pop().unwrap_or_default()
    }

    fn put_proc(&mut self, mut p: Proc) {
        for (_, log) in p.threads.drain() {
            self.put_log(log);
        }
        if self.procs.len() < MAX_SPARE && p.in_flight.capacity() <= MAX_SPARE_ROOM && p.threads.capacity() <= MAX_SPARE
        {
            p.in_flight.clear();
            self.procs.push(p);
        }
    }

    fn put_log(&mut self, mut log: ThreadLog) {
        if self.logs.len() < MAX_SPARE && log.reads.capacity() <= MAX_SPARE_ROOM {
            log.in_flight.clear();
            log.reads.clear();
            log.overflowed = false;
            self.logs.push(log);
        }
    }

    fn put_content(&mut self, c: Box<Content>) {
        let room = c.method.capacity() + c.target.capacity() + c.request_id.capacity();
        if self.contents.len() < MAX_SPARE && room <= MAX_SPARE_ROOM {
            self.contents.push(c);
        }
    }
}

/// Order evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    None,
    One(ReqKey),
    /// A burst of reads before the action: one of these two (or earlier).
    Ambiguous,
}

/// A call whose parent is decided by what its thread answers next.
struct Deferred {
    pid: u32,
    tid: u32,
    /// The call's span id (its provisional trace id is the key).
    span_id: [u8; 8],
    candidates: Vec<ReqKey>,
    /// The call's response was seen (its span is built and held).
    done: bool,
    since_ns: u64,
    /// Responses written for one of several waiting calls, this one among them.
    answers_seen: u32,
    /// Made on an event-loop thread: settled by adjacency only (see `batch_end`).
    event_loop: bool,
}

/// A server request settled as a root while its client runs on this node: the client's
/// request may still come. A client thread preempted between delivering its bytes
/// (loopback hands them straight to the server) and the tracepoint that reports them
/// lets the server read, answer and be reported first. Its trace is provisional
/// meanwhile.
struct AwaitingPeer {
    /// The client's (local, peer) addresses and the request's wire key.
    at: (SocketAddr, SocketAddr, u64),
    netns: u32,
    key: ReqKey,
    span_id: [u8; 8],
    since_ns: u64,
}

/// A server response written in a process with deferred calls.
#[derive(Clone)]
struct Answered {
    pid: u32,
    tid: u32,
    key: ReqKey,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    trace_state: String,
    /// A call of its handler was linked already (not deferred).
    has_calls: bool,
}

/// A provisional trace resolved: held spans of trace `from` belong to trace `to`, and
/// the span `root` gets `parent` (and the link it says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub from: [u8; 16],
    pub to: [u8; 16],
    pub flags: u8,
    pub trace_state: String,
    pub root: [u8; 8],
    pub parent: [u8; 8],
    /// How `root` got its parent.
    pub link: LinkKind,
    pub evidence: Evidence,
    pub confidence: Option<Confidence>,
    /// The caller's pid, when `root` repairs a dropped context.
    pub propagation_break: Option<u32>,
}

/// What one linker counted, besides the process-wide [`stats`] counters it also
/// increments: a test reads exactly its own linker's counts while other tests, in
/// parallel, count into the same global ones.
struct Counts([Cell<u64>; Counter::ALL.len()]);

impl Default for Counts {
    fn default() -> Self {
        Counts(std::array::from_fn(|_| Cell::new(0)))
    }
}

impl Counts {
    fn incr(&self, c: Counter) {
        self.add(c, 1);
    }

    fn add(&self, c: Counter, n: u64) {
        stats::global().add(c, n);
        let cell = &self.0[c as usize];
        cell.set(cell.get() + n);
    }

    #[cfg(test)]
    fn get(&self, c: Counter) -> u64 {
        self.0[c as usize].get()
    }
}

/// Bounds, so no input can grow the linker without limit.
const MAX_PENDING: usize = 65_536;
const MAX_PEER_QUEUE: usize = 64;
const MAX_PER_THREAD: usize = 64;
const MAX_PER_PROCESS: usize = 128;
/// As many as a thread can have in flight: order evidence needs every one's read.
const MAX_THREAD_HISTORY: usize = MAX_PER_THREAD;
const MAX_DEFERRED: usize = 1024;
const MAX_UNASSIGNED: usize = 64;
const MAX_ALIASES: usize = 4096;
/// Provisional traces resolved into provisional traces, followed this deep at most.
const MAX_ALIAS_CHAIN: usize = 8;
/// A deferred call not resolved within this is exported unlinked.
pub const DEFER_TTL_NS: u64 = 5_000_000_000;
/// A server request waits this long for its client's request (kernel time, counted by
/// the requests that start meanwhile, or by the upkeep tick when the node is idle).
pub const AWAIT_PEER_TTL_NS: u64 = 100_000_000;
/// Server requests waiting for their client's request, at most.
const MAX_AWAITING: usize = 4096;
/// Shortest target a prefix-rewriting proxy match may rest on.
const MIN_SUFFIX_MATCH: usize = 6;
/// NAT translations remembered per server connection.
const MAX_NAT_CACHE: usize = 16_384;

#[derive(Default)]
pub struct Linker {
    pending: HashMap<ReqKey, Pending>,
    /// Requests in `pending` per connection, so a close finds its own without a scan.
    per_conn: HashMap<ConnKey, Streams>,
    /// In-flight server requests per process, and per thread with their syscall order.
    processes: HashMap<u32, Proc>,
    /// Client requests not yet matched to a server request, per connection
    /// (client's local address, client's peer address).
    peers: HashMap<(SocketAddr, SocketAddr), VecDeque<PeerRequest>>,
    /// How many `peers` queues each client IP has (a NAT lookup is only worth making
    /// for a server connection whose client runs on this node).
    client_ips: HashMap<IpAddr, u32>,
    nat: Option<Box<dyn NatLookup + Send>>,
    /// Per server connection: the address its client connected to, when NAT rewrote it.
    nat_cache: HashMap<ConnKey, Option<(SocketAddr, SocketAddr)>>,
    /// Parent span ids received by each process's in-flight server requests: a header
    /// with one of these on an outbound request is passed through, not made.
    received: HashMap<u32, HashMap<[u8; 8], u32>>,
    /// SDK-instrumented processes (detected, or declared by name).
    instrumented: HashSet<u32>,
    instrumented_names: Vec<String>,
    /// Processes whose threads run many tasks (Go): no thread or order evidence.
    goroutines: HashSet<u32>,
    /// Processes whose in-flight list overflowed: their candidate lists are partial, so
    /// only thread evidence links their calls until the list empties.
    overflowed: HashSet<u32>,
    /// Client connections whose first request was seen (connect-time order used).
    opened_seen: HashSet<ConnKey>,
    /// Calls waiting for their parent, by provisional trace id.
    deferred: HashMap<[u8; 16], Deferred>,
    /// Provisional trace ids per calling thread, oldest first.
    deferred_on: HashMap<(u32, u32), Vec<[u8; 16]>>,
    /// Deferred calls per process.
    deferred_in: HashMap<u32, usize>,
    /// Per event-loop thread: the deferred call whose response it read last, waiting for
    /// the thread's next answer.
    last_response: HashMap<(u32, u32), [u8; 16]>,
    /// Responses written by a thread without calls of its own while several calls
    /// waited: each belongs to one of them, found by elimination.
    unassigned: Vec<(Answered, Vec<[u8; 16]>)>,
    /// Server responses completed in the current batch by threads with deferred calls.
    batch: Vec<Answered>,
    /// Resolved provisional traces, for spans still to come.
    aliases: HashMap<[u8; 16], ([u8; 16], u8)>,
    alias_order: VecDeque<[u8; 16]>,
    /// Server requests waiting for their client's request, by provisional trace id, and
    /// the trace id by the client request's address and wire key.
    awaiting: HashMap<[u8; 16], AwaitingPeer>,
    awaiting_at: HashMap<(SocketAddr, SocketAddr, u64), [u8; 16]>,
    /// `awaiting`'s traces, oldest first (resolved ones are skipped when reached).
    awaiting_order: VecDeque<[u8; 16]>,
    /// The latest kernel time a request started at: the linker's clock.
    now_ns: u64,
    /// For the pipeline: held traces to rewrite, and to release as they are.
    resolved: Vec<Resolution>,
    abandoned: Vec<[u8; 16]>,
    counts: Counts,
    spare: Spare,
    /// `choose_parent`'s candidate lists, kept for their room.
    scratch: (Vec<ReqKey>, Vec<ReqKey>),
}

impl Linker {
    /// `instrumented_names`: service or executable names declared SDK-instrumented.
    #[must_use]
    pub fn new(instrumented_names: Vec<String>) -> Self {
        Self { instrumented_names, ..Self::default() }
    }

    /// Where the socket link looks up NAT translations (conntrack).
    pub fn set_nat(&mut self, nat: Box<dyn NatLookup + Send>) {
        self.nat = Some(nat);
    }

    /// Marks `pid` instrumented if one of its names was declared so; `goroutines`: its
    /// runtime moves tasks between threads (Go), so its threads say nothing.
    pub fn observe_process(&mut self, pid: u32, names: &[&str], goroutines: bool) {
        if names.iter().any(|n| !n.is_empty() && self.instrumented_names.iter().any(|d| d == n)) {
            self.instrumented.insert(pid);
        }
        if goroutines {
            self.goroutines.insert(pid);
        }
    }

    #[must_use]
    pub fn is_instrumented(&self, pid: u32) -> bool {
        self.instrumented.contains(&pid)
    }

    /// A request's head was parsed.
    pub fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, start: Start, req: &Request) {
        self.now_ns = self.now_ns.max(start.ts_ns);
        self.expire_awaiting(self.now_ns);
        if self.pending.len() >= MAX_PENDING {
            self.evict();
        }
        let headers = || req.headers.iter();
        let header_ctx = context::extract(headers());
        match conn.role {
            Role::Server => self.server_started(key, conn, start, header_ctx, req),
            Role::Client => self.client_started(key, conn, start, header_ctx, req),
        }
    }

    fn server_started(
        &mut self,
        key: ReqKey,
        conn: &ConnMeta,
        start: Start,
        received: Option<SpanContext>,
        req: &Request,
    ) {
        if let Some(ctx) = &received {
            *self.received.entry(conn.pid).or_default().entry(ctx.span_id).or_insert(0) += 1;
        }
        let mut content = self.spare.content();
        content.fill(req, conn.peer.ip());
        self.insert(
            key,
            Pending {
                pid: conn.pid,
                role: Role::Server,
                // Settled by `resolve_server`; only its span id is final here.
                identity: unresolved_identity(),
                local: conn.local,
                peer: conn.peer,
                netns: conn.netns,
                received,
                unresolved: true,
                tid: start.tid,
                wire_key: start.wire_key,
                content: Some(content),
                has_calls: false,
            },
        );
        let Linker { processes, spare, overflowed, .. } = self;
        let process = processes.entry(conn.pid).or_insert_with(|| spare.proc());
        let log = process.threads.entry(start.tid).or_insert_with(|| spare.log());
        if log.in_flight.len() >= MAX_PER_THREAD {
            // A request forgotten while in flight: the thread's order is not complete.
            log.in_flight.remove(0);
            log.overflowed = true;
        }
        log.in_flight.push(key);
        if log.reads.len() >= MAX_THREAD_HISTORY {
            log.reads.pop_front();
        }
        log.reads.push_back(Read { ts_ns: start.ts_ns, key, acted: false });
        if process.in_flight.len() >= MAX_PER_PROCESS {
            process.in_flight.remove(0);
            // The candidates are no longer all the requests in flight: uniqueness
            // arguments (process, content) would rest on a partial list.
            overflowed.insert(conn.pid);
        }
        process.in_flight.push(key);
        // The peer's request is usually known already; if not, this is retried.
        self.resolve_server(key, false);
    }

    fn client_started(&mut self, key: ReqKey, conn: &ConnMeta, start: Start, sent: Option<SpanContext>, req: &Request) {
        let (pid, tid) = (conn.pid, start.tid);
        // Order is timed at connect() for a connection's first request, on the thread
        // that connected; at the write for later ones (a pooled connection reused).
        let opened = conn.opened_by.filter(|_| self.opened_seen.insert(key.conn));
        let choice = self.choose_parent(pid, tid, start.ts_ns, opened, sent.as_ref(), req);
        let mut deferred = None;
        let parent = match choice {
            Choice::Link(k, how, evidence) => {
                self.mark_acted(k);
                self.resolve_server(k, true);
                self.pending.get(&k).map(|p| (p, how, evidence))
            }
            Choice::Defer(candidates, event_loop) => {
                deferred = Some((candidates, event_loop));
                None
            }
            Choice::Unlinked => None,
        };
        let (identity, handling_received_context) = match parent {
            Some((p, how, evidence)) => (
                Identity {
                    trace_id: p.identity.trace_id,
                    span_id: random_span_id(),
                    parent_span_id: p.identity.span_id,
                    flags: p.identity.flags,
                    trace_state: p.identity.trace_state.clone(),
                    link: how,
                    format: None,
                    propagation_break: None,
                    evidence,
                    confidence: Some(confidence(how, evidence)),
                },
                p.received.is_some(),
            ),
            None => {
                if deferred.is_none() {
                    self.counts.incr(Counter::LinkUnlinkedClient);
                }
                (root_identity(), false)
            }
        };
        if let Some((candidates, event_loop)) = deferred {
            self.defer(pid, tid, &identity, candidates, start.ts_ns, event_loop);
        }
        // A context this process did not receive was made by an SDK inside it.
        let sent_is_pass_through =
            sent.as_ref().is_some_and(|ctx| self.received.get(&pid).is_some_and(|ids| ids.contains_key(&ctx.span_id)));
        if sent.is_some() && !sent_is_pass_through && self.instrumented.insert(pid) {
            log::info!("process {pid} sends trace context of its own: SDK-instrumented, its spans come from its SDK");
        }
        let request = PeerRequest {
            wire_key: start.wire_key,
            pid,
            netns: conn.netns,
            trace_id: identity.trace_id,
            span_id: identity.span_id,
            flags: identity.flags,
            instrumented: self.instrumented.contains(&pid),
            sent,
            sent_is_pass_through,
            handling_received_context,
        };
        let waiting = self.awaiting_at.get(&(conn.local, conn.peer, start.wire_key)).copied();
        if let Some(trace) = waiting.filter(|t| self.awaiting.get(t).is_some_and(|a| a.netns == conn.netns)) {
            self.peer_arrived(trace, &request);
        } else {
            let queue = self.peers.entry((conn.local, conn.peer)).or_insert_with(|| {
                *self.client_ips.entry(conn.local.ip()).or_insert(0) += 1;
                VecDeque::new()
            });
            if queue.len() >= MAX_PEER_QUEUE {
                queue.pop_front();
            }
            queue.push_back(request);
        }
        self.insert(
            key,
            Pending {
                pid,
                role: Role::Client,
                identity,
                local: conn.local,
                peer: conn.peer,
                netns: conn.netns,
                received: None,
                unresolved: false,
                tid,
                wire_key: start.wire_key,
                content: None,
                has_calls: false,
            },
        );
    }

    /// Weighs the evidence for a call made by thread `tid` of `pid` at `at_ns`.
    fn choose_parent(
        &mut self,
        pid: u32,
        tid: u32,
        at_ns: u64,
        opened: Option<crate::conn::Opener>,
        sent: Option<&SpanContext>,
        req: &Request,
    ) -> Choice {
        let (mut eligible, mut matched) = std::mem::take(&mut self.scratch);
        eligible.clear();
        matched.clear();
        let choice = self.weigh(pid, tid, at_ns, opened, sent, req, &mut eligible, &mut matched);
        self.scratch = (eligible, matched);
        choice
    }

    /// [`Self::choose_parent`], with `eligible` and `matched` (empty) to fill.
    #[expect(clippy::too_many_arguments, reason = "choose_parent's, and its two scratch lists")]
    fn weigh(
        &self,
        pid: u32,
        tid: u32,
        at_ns: u64,
        opened: Option<crate::conn::Opener>,
        sent: Option<&SpanContext>,
        req: &Request,
        eligible: &mut Vec<ReqKey>,
        matched: &mut Vec<ReqKey>,
    ) -> Choice {
        let Some(process) = self.processes.get(&pid).filter(|p| !p.in_flight.is_empty()) else {
            return Choice::Unlinked;
        };
        let thread_log = process.threads.get(&tid);
        // Content: which candidates the call could be forwarding, which it cannot be.
        let call = Call::of(req, sent);
        for k in &process.in_flight {
            let Some(p) = self.pending.get(k) else { continue };
            let Some(c) = p.content.as_deref() else { continue };
            match content_match(&call, c, p.received.as_ref()) {
                Match::Excluded => {}
                Match::Neutral => eligible.push(*k),
                Match::Matched => {
                    eligible.push(*k);
                    matched.push(*k);
                }
            }
        }
        let threads_say = !self.goroutines.contains(&pid);
        if self.overflowed.contains(&pid) {
            return match thread_log.map(|l| l.in_flight.as_slice()) {
                Some([only]) if threads_say => Choice::Link(*only, LinkKind::Thread, Evidence::THREAD),
                _ => {
                    self.counts.incr(Counter::LinkAmbiguousThread);
                    Choice::Unlinked
                }
            };
        }
        // Thread: the calling thread handles exactly one request.
        let thread = threads_say
            .then(|| match thread_log.map(|l| l.in_flight.as_slice()) {
                Some([only]) if eligible.contains(only) => Some(*only),
                _ => None,
            })
            .flatten();
        // Order: timed at connect() on the connecting thread, else at this write.
        let (order, order_kind) = if !threads_say {
            (Order::None, Evidence::ORDER)
        } else if let Some(o) = opened {
            (self.order_pick(pid, o.tid, o.ts_ns), Evidence::CONNECT)
        } else {
            (self.order_pick(pid, tid, at_ns), Evidence::ORDER)
        };
        let order = match order {
            Order::One(k) if !eligible.contains(&k) => Order::None,
            o => o,
        };
        let agree = |k: ReqKey| {
            let mut e = Evidence::default();
            if thread == Some(k) {
                e = e.with(Evidence::THREAD);
            }
            if order == Order::One(k) {
                e = e.with(order_kind);
            }
            if matched.contains(&k) {
                e = e.with(Evidence::CONTENT);
            }
            e
        };
        // The calling thread handles one request: structural, the rest corroborates.
        if let Some(t) = thread {
            return Choice::Link(t, LinkKind::Thread, agree(t));
        }
        // Order and content naming different requests: no link.
        let content = if let [only] = matched.as_slice() { Some(*only) } else { None };
        match (order, content) {
            (Order::One(o), Some(c)) if o != c => {
                self.counts.incr(Counter::LinkEvidenceConflict);
                return Choice::Unlinked;
            }
            (_, Some(c)) => return Choice::Link(c, LinkKind::Content, agree(c)),
            (Order::One(o), None) if matched.is_empty() || matched.contains(&o) => {
                return Choice::Link(o, LinkKind::Order, agree(o));
            }
            (Order::One(_), None) => {
                self.counts.incr(Counter::LinkEvidenceConflict);
                return Choice::Unlinked;
            }
            _ => {}
        }
        if let [only] = eligible.as_slice() {
            return Choice::Link(*only, LinkKind::Process, Evidence::PROCESS.with(agree(*only)));
        }
        // The thread's next answer will tell: a worker thread that read nothing itself
        // answers its handler's request; an event loop (it reads requests) answers the
        // request whose call's response it read just before.
        let reads_here = thread_log.is_some_and(|l| !l.in_flight.is_empty());
        if threads_say && eligible.len() > 1 {
            let candidates = if matched.is_empty() { eligible.clone() } else { matched.clone() };
            return Choice::Defer(candidates, reads_here);
        }
        self.counts.incr(Counter::LinkAmbiguousThread);
        Choice::Unlinked
    }

    fn thread(&self, pid: u32, tid: u32) -> Option<&ThreadLog> {
        self.processes.get(&pid)?.threads.get(&tid)
    }

    /// The inbound request thread `tid` read last before `at_ns`, if every other one
    /// it read before and still has in flight has had a call attributed: otherwise the
    /// thread read several before running their handlers (a burst), and the last read
    /// is not necessarily the one calling.
    fn order_pick(&self, pid: u32, tid: u32, at_ns: u64) -> Order {
        let Some(log) = self.thread(pid, tid) else { return Order::None };
        if log.overflowed {
            return Order::Ambiguous;
        }
        let in_flight = |k: &ReqKey| log.in_flight.contains(k);
        let mut before = log.reads.iter().rev().filter(|r| r.ts_ns < at_ns);
        let Some(last) = before.next() else { return Order::None };
        if !in_flight(&last.key) {
            // The request read last was answered already: the call is not its.
            return Order::None;
        }
        for k in log.in_flight.iter().filter(|k| **k != last.key) {
            match log.reads.iter().rev().find(|r| r.key == *k) {
                // Read after the call: not a candidate of order.
                Some(r) if r.ts_ns >= at_ns && r.ts_ns != last.ts_ns => {}
                // Read in the same syscall (HTTP/2 streams), or not handled yet.
                Some(r) if r.ts_ns == last.ts_ns || !r.acted => return Order::Ambiguous,
                Some(_) => {}
                // Its read is no longer in the history: unknown, so no order.
                None => return Order::Ambiguous,
            }
        }
        Order::One(last.key)
    }

    /// A call was attributed to `key`: its handler ran, so it no longer makes the
    /// reads after it ambiguous.
    fn mark_acted(&mut self, key: ReqKey) {
        let Some(p) = self.pending.get_mut(&key) else { return };
        p.has_calls = true;
        let (pid, tid) = (p.pid, p.tid);
        if let Some(log) = self.processes.get_mut(&pid).and_then(|p| p.threads.get_mut(&tid)) {
            if let Some(r) = log.reads.iter_mut().rev().find(|r| r.key == key) {
                r.acted = true;
            }
        }
    }

    fn defer(
        &mut self,
        pid: u32,
        tid: u32,
        identity: &Identity,
        candidates: Vec<ReqKey>,
        since_ns: u64,
        event_loop: bool,
    ) {
        if self.deferred.len() >= MAX_DEFERRED {
            let oldest = self.deferred.iter().min_by_key(|(_, d)| d.since_ns).map(|(t, _)| *t);
            if let Some(t) = oldest {
                self.abandon(t);
            }
        }
        // An earlier call of this thread whose response is in, while an answer it may
        // own was written elsewhere: the thread has moved on to another request (a
        // second call of the same handler sees no such answer).
        let moved: Vec<[u8; 16]> = self
            .deferred_on
            .get(&(pid, tid))
            .into_iter()
            .flatten()
            .filter(|t| self.deferred.get(*t).is_some_and(|d| !d.event_loop && d.done && d.answers_seen > 0))
            .copied()
            .collect();
        for t in moved {
            self.moved_on(t);
        }
        self.counts.incr(Counter::LinkDeferred);
        self.deferred.insert(
            identity.trace_id,
            Deferred {
                pid,
                tid,
                span_id: identity.span_id,
                candidates,
                done: false,
                since_ns,
                answers_seen: 0,
                event_loop,
            },
        );
        self.deferred_on.entry((pid, tid)).or_default().push(identity.trace_id);
        *self.deferred_in.entry(pid).or_insert(0) += 1;
    }

    fn abandon(&mut self, trace: [u8; 16]) {
        let Some(d) = self.deferred.remove(&trace) else { return };
        if self.last_response.get(&(d.pid, d.tid)) == Some(&trace) {
            self.last_response.remove(&(d.pid, d.tid));
        }
        self.unassigned.retain_mut(|(_, waiting)| {
            waiting.retain(|t| *t != trace);
            !waiting.is_empty()
        });
        self.counts.incr(Counter::LinkDeferredUnresolved);
        self.counts.incr(Counter::LinkUnlinkedClient);
        self.unlist_deferred(d.pid, d.tid, trace);
        self.abandoned.push(trace);
    }

    fn unlist_deferred(&mut self, pid: u32, tid: u32, trace: [u8; 16]) {
        if let Some(n) = self.deferred_in.get_mut(&pid) {
            *n -= 1;
            if *n == 0 {
                self.deferred_in.remove(&pid);
            }
        }
        if let Some(list) = self.deferred_on.get_mut(&(pid, tid)) {
            list.retain(|t| *t != trace);
            if list.is_empty() {
                self.deferred_on.remove(&(pid, tid));
            }
        }
    }

    /// Whether spans of `trace` must wait: a deferred call's parent is not known yet.
    #[must_use]
    pub fn is_provisional(&self, trace: &[u8; 16]) -> bool {
        self.deferred.contains_key(trace) || self.awaiting.contains_key(trace)
    }

    /// Provisional traces resolved since the last call.
    pub fn take_resolved(&mut self) -> Vec<Resolution> {
        std::mem::take(&mut self.resolved)
    }

    /// Provisional traces given up since the last call: release their spans as they are.
    pub fn take_abandoned(&mut self) -> Vec<[u8; 16]> {
        std::mem::take(&mut self.abandoned)
    }

    /// Deferred calls older than [`DEFER_TTL_NS`] are given up. `now_ns`: CLOCK_MONOTONIC.
    pub fn expire(&mut self, now_ns: u64) {
        let old: Vec<[u8; 16]> = self
            .deferred
            .iter()
            .filter(|(_, d)| now_ns.saturating_sub(d.since_ns) > DEFER_TTL_NS)
            .map(|(t, _)| *t)
            .collect();
        for t in old {
            if let Some(d) = self.deferred.get(&t) {
                log::debug!("deferred call on {}/{} given up: unresolved for 5 s (done: {})", d.pid, d.tid, d.done);
            }
            self.abandon(t);
        }
        self.expire_awaiting(now_ns);
    }

    /// Ends the waits for late client requests that have lasted long enough.
    fn expire_awaiting(&mut self, now_ns: u64) {
        while let Some(&t) = self.awaiting_order.front() {
            match self.awaiting.get(&t) {
                None => {}
                Some(a) if now_ns.saturating_sub(a.since_ns) > AWAIT_PEER_TTL_NS => self.stop_awaiting(t),
                Some(_) => break,
            }
            self.awaiting_order.pop_front();
        }
    }

    /// Waits for the client request at the other end of server request `key`, settled
    /// as a root (trace `trace`) when its client connection is traced but its request
    /// has not been seen yet.
    fn await_peer(
        &mut self,
        key: ReqKey,
        at: (SocketAddr, SocketAddr, u64),
        netns: u32,
        trace: [u8; 16],
        span_id: [u8; 8],
    ) {
        while self.awaiting.len() >= MAX_AWAITING {
            let Some(oldest) = self.awaiting_order.pop_front() else { break };
            self.stop_awaiting(oldest);
        }
        if let Some(old) = self.awaiting_at.insert(at, trace) {
            // The same request key again (a retransmitted head): the older one is done.
            self.stop_awaiting_only(old);
        }
        self.awaiting.insert(trace, AwaitingPeer { at, netns, key, span_id, since_ns: self.now_ns });
        self.awaiting_order.push_back(trace);
    }

    /// Gives up waiting for trace `trace`'s client: its spans go out as they are.
    fn stop_awaiting(&mut self, trace: [u8; 16]) {
        let Some(a) = self.awaiting.remove(&trace) else { return };
        if self.awaiting_at.get(&a.at) == Some(&trace) {
            self.awaiting_at.remove(&a.at);
        }
        self.counts.incr(Counter::LinkSocketWaitExpired);
        self.abandoned.push(trace);
    }

    fn stop_awaiting_only(&mut self, trace: [u8; 16]) {
        if self.awaiting.remove(&trace).is_some() {
            self.counts.incr(Counter::LinkSocketWaitExpired);
            self.abandoned.push(trace);
        }
    }

    /// The client request a server request was waiting for arrived: the server's trace
    /// joins the client's, as a socket link would have made it.
    fn peer_arrived(&mut self, trace: [u8; 16], peer: &PeerRequest) {
        let Some(a) = self.awaiting.remove(&trace) else { return };
        self.awaiting_at.remove(&a.at);
        self.counts.incr(Counter::LinkSocketLate);
        if peer.instrumented {
            // Its SDK's span for the call is unknown: the server span stays a root.
            self.abandoned.push(trace);
            return;
        }
        let broke = (peer.handling_received_context && peer.sent.is_none()).then_some(peer.pid);
        let (to, flags) = self.canonical(peer.trace_id, peer.flags);
        self.alias(trace, to, flags);
        if let Some(p) = self.pending.get_mut(&a.key).filter(|p| p.identity.span_id == a.span_id) {
            // Still in progress: its own span is built with the link.
            p.identity = Identity {
                trace_id: to,
                span_id: a.span_id,
                parent_span_id: peer.span_id,
                flags,
                trace_state: String::new(),
                link: LinkKind::Socket,
                format: None,
                propagation_break: broke,
                evidence: Evidence::default(),
                confidence: None,
            };
        }
        self.resolved.push(Resolution {
            from: trace,
            to,
            flags,
            trace_state: String::new(),
            root: a.span_id,
            parent: peer.span_id,
            link: LinkKind::Socket,
            evidence: Evidence::default(),
            confidence: None,
            propagation_break: broke,
        });
    }

    /// Spans of provisional trace `from` still to come belong to `to`.
    fn alias(&mut self, from: [u8; 16], to: [u8; 16], flags: u8) {
        if self.alias_order.len() >= MAX_ALIASES {
            if let Some(old) = self.alias_order.pop_front() {
                self.aliases.remove(&old);
            }
        }
        self.aliases.insert(from, (to, flags));
        self.alias_order.push_back(from);
    }

    /// All exchanges of one capture event were reported: settle deferred calls against
    /// the responses written in it.
    ///
    /// A response goes to the calls waiting for it: done (their own response is in),
    /// not yet resolved, and with it among their candidates. The writing thread's own
    /// waiting calls take it (the handler wrote its answer). A write by another thread
    /// (grpcio writes a pool thread's answer from whichever thread holds the transport)
    /// goes to the only call waiting, or, with several waiting, is kept unassigned
    /// until all but one of them are resolved otherwise (elimination).
    pub fn batch_end(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        for a in &batch {
            // One write answering several requests says nothing about which one the
            // thread worked for.
            let several = batch.iter().any(|b| b.pid == a.pid && b.tid == a.tid && b.key != a.key);
            // An event loop answering right after it read a deferred call's response:
            // a proxy relaying that response (nginx, Node). Anything else in between,
            // or a write answering several, and the chance is gone.
            if let Some(trace) = self.last_response.remove(&(a.pid, a.tid)) {
                let fits = self.deferred.get(&trace).is_some_and(|d| d.done && d.candidates.contains(&a.key));
                if fits && !several {
                    self.resolve_deferred(trace, a);
                } else {
                    self.abandon(trace);
                }
            }
            // The writer's own done calls that cannot be this answer's: it moved on.
            let stale: Vec<[u8; 16]> = self
                .deferred_on
                .get(&(a.pid, a.tid))
                .into_iter()
                .flatten()
                .filter(|t| {
                    self.deferred.get(*t).is_some_and(|d| !d.event_loop && d.done && !d.candidates.contains(&a.key))
                })
                .copied()
                .collect();
            for t in stale {
                self.moved_on(t);
            }
            let waiting: Vec<[u8; 16]> = self
                .deferred
                .iter()
                .filter(|(_, d)| !d.event_loop && d.pid == a.pid && d.done && d.candidates.contains(&a.key))
                .map(|(t, _)| *t)
                .collect();
            if waiting.is_empty() || a.has_calls {
                // Nobody waits for it, or its handler's call is known already.
                continue;
            }
            let own: Vec<[u8; 16]> =
                waiting.iter().filter(|t| self.deferred.get(*t).is_some_and(|d| d.tid == a.tid)).copied().collect();
            if !several && !own.is_empty() {
                // The handler's thread wrote its answer.
                for t in own {
                    self.resolve_deferred(t, a);
                }
                continue;
            }
            if !several && waiting.len() == 1 {
                self.resolve_deferred(waiting[0], a);
                continue;
            }
            for t in &waiting {
                if let Some(d) = self.deferred.get_mut(t) {
                    d.answers_seen += 1;
                }
            }
            if self.unassigned.len() >= MAX_UNASSIGNED {
                self.unassigned.remove(0);
            }
            self.unassigned.push((a.clone(), waiting));
        }
        batch.clear();
        self.batch = batch;
    }

    /// A deferred call whose thread went on to another request: its parent is the one
    /// unassigned answer it waits in, if only one.
    fn moved_on(&mut self, trace: [u8; 16]) {
        let mut holding = self.unassigned.iter().enumerate().filter(|(_, (_, w))| w.contains(&trace)).map(|(i, _)| i);
        match (holding.next(), holding.next()) {
            (Some(i), None) => {
                let (answer, _) = self.unassigned.remove(i);
                self.resolve_deferred(trace, &answer);
            }
            (h, _) => {
                log::debug!(
                    "deferred call given up: its thread moved on, and {} unassigned answers hold it",
                    if h.is_some() { "several" } else { "no" }
                );
                self.abandon(trace);
            }
        }
    }

    /// `trace` is settled: it no longer waits for any unassigned answer, and an answer
    /// left with one waiting call is that call's.
    fn eliminate(&mut self, trace: [u8; 16]) {
        let mut settle = None;
        self.unassigned.retain_mut(|(answer, waiting)| {
            waiting.retain(|t| *t != trace);
            match waiting.as_slice() {
                [] => false,
                [only] if settle.is_none() => {
                    settle = Some((*only, answer.clone()));
                    false
                }
                _ => true,
            }
        });
        if let Some((only, answer)) = settle {
            self.resolve_deferred(only, &answer);
        }
    }

    /// `trace` through the resolutions made since (a provisional trace resolved into one
    /// that was provisional itself: a deferred call behind a deferred call).
    fn canonical(&self, mut trace: [u8; 16], mut flags: u8) -> ([u8; 16], u8) {
        for _ in 0..MAX_ALIAS_CHAIN {
            let Some((t, f)) = self.aliases.get(&trace) else { break };
            (trace, flags) = (*t, *f);
        }
        (trace, flags)
    }

    fn resolve_deferred(&mut self, trace: [u8; 16], parent: &Answered) {
        let Some(d) = self.deferred.remove(&trace) else { return };
        if self.last_response.get(&(d.pid, d.tid)) == Some(&trace) {
            self.last_response.remove(&(d.pid, d.tid));
        }
        self.unlist_deferred(d.pid, d.tid, trace);
        self.eliminate(trace);
        // The parent's trace may have been resolved since it answered.
        let (to, flags) = self.canonical(parent.trace_id, parent.flags);
        self.alias(trace, to, flags);
        self.resolved.push(Resolution {
            from: trace,
            to,
            flags,
            trace_state: parent.trace_state.clone(),
            root: d.span_id,
            parent: parent.span_id,
            link: LinkKind::Handoff,
            evidence: Evidence::RESPONSE,
            confidence: Some(Confidence::Medium),
            propagation_break: None,
        });
    }

    /// Decides a server request's identity from its header and the client request at
    /// the other end of its socket. With `last_chance`, an unresolved request is settled
    /// even if that client request never appears.
    fn resolve_server(&mut self, key: ReqKey, last_chance: bool) {
        let Some(p) = self.pending.get(&key) else { return };
        if !p.unresolved {
            return;
        }
        let (local, peer, netns, seq) = (p.local, p.peer, p.netns, p.wire_key);
        // The client request that starts at the same byte of the same connection: exact,
        // whatever either end missed (a request lost at one end shifts nothing).
        let mut found = take_peer(&mut self.peers, (peer, local), seq, netns, last_chance);
        let mut via_nat = false;
        if found.is_none() {
            if let Some(client_view) = self.nat_connection(key.conn, netns, local, peer) {
                found = take_peer(&mut self.peers, client_view, seq, netns, last_chance);
                via_nat = found.is_some();
            }
        }
        if found.is_none() && !last_chance {
            return;
        }
        if via_nat {
            self.counts.incr(Counter::LinkSocketNat);
        }
        let Some(p) = self.pending.get_mut(&key) else { return };
        p.unresolved = false;
        let span_id = p.identity.span_id;
        let from_header = |h: &SpanContext| Identity {
            trace_id: h.trace_id,
            span_id,
            parent_span_id: h.span_id,
            flags: h.flags,
            trace_state: h.trace_state.clone(),
            link: LinkKind::Header,
            format: Some(h.format),
            propagation_break: None,
            evidence: Evidence::default(),
            confidence: None,
        };
        let from_socket = |peer: &PeerRequest, broke: bool| Identity {
            trace_id: peer.trace_id,
            span_id,
            parent_span_id: peer.span_id,
            flags: peer.flags,
            trace_state: String::new(),
            link: LinkKind::Socket,
            format: None,
            propagation_break: broke.then_some(peer.pid),
            evidence: Evidence::default(),
            confidence: None,
        };
        p.identity = match (&p.received, &found) {
            // A legacy proxy passed on the header it received: the socket says which of
            // its calls this is. Both must name the same trace; if not, the header wins.
            (Some(h), Some(peer)) if !peer.instrumented && peer.sent_is_pass_through => {
                if h.trace_id == peer.trace_id {
                    from_socket(peer, false)
                } else {
                    self.counts.incr(Counter::LinkHeaderSocketDisagree);
                    from_header(h)
                }
            }
            (Some(h), _) => from_header(h),
            // The caller is instrumented but sent nothing: its SDK span for this call
            // is unknown, and ghostwire's is not emitted.
            (None, Some(peer)) if peer.instrumented => root_identity_with(span_id),
            (None, Some(peer)) => {
                // It was handling a request that came with context and did not pass it on.
                let broke = peer.handling_received_context && peer.sent.is_none();
                from_socket(peer, broke)
            }
            (None, None) => root_identity_with(span_id),
        };
        // Not found, and the client is on this node (loopback, or an address traced
        // clients use): its request may be late rather than absent. Wait a little.
        let on_node = peer.ip().is_loopback() || self.client_ips.contains_key(&peer.ip());
        let waits = found.is_none() && p.received.is_none() && on_node;
        if waits {
            let trace = p.identity.trace_id;
            self.await_peer(key, (peer, local, seq), netns, trace, span_id);
        }
    }

    /// The client's view (its local address, the address it connected to) of server
    /// connection `conn`, when NAT rewrote it. Asked of conntrack once per connection,
    /// and only when a client on that IP is known (so not for clients off the node).
    fn nat_connection(
        &mut self,
        conn: ConnKey,
        netns: u32,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        if let Some(known) = self.nat_cache.get(&conn) {
            return *known;
        }
        if !self.client_ips.contains_key(&peer.ip()) {
            return None;
        }
        let nat = self.nat.as_mut()?;
        let found = nat.original_connection(netns, local, peer);
        if self.nat_cache.len() >= MAX_NAT_CACHE {
            self.nat_cache.clear();
        }
        self.nat_cache.insert(conn, found);
        found
    }

    /// A request was answered: its span's identity, or `None` when the process is
    /// SDK-instrumented (its SDK reports this request).
    pub fn exchange_done(&mut self, rec: &ExchangeRecord) -> Option<Identity> {
        self.resolve_server(rec.key, true);
        let (mut identity, has_calls) = match self.remove(rec.key) {
            Some(p) => (p.identity, p.has_calls),
            // Its start was never seen (evicted): a root of its own.
            None => (root_identity(), false),
        };
        // Its trace was provisional, and has been resolved since.
        (identity.trace_id, identity.flags) = self.canonical(identity.trace_id, identity.flags);
        match rec.conn.role {
            Role::Client => {
                let key = (rec.conn.pid, rec.tid);
                // The thread read another response: an event-loop call waiting for its
                // answer to follow its own response has missed it.
                let missed = self.last_response.remove(&key);
                if let Some(prev) = missed {
                    self.abandon(prev);
                }
                let mut waits = false;
                if let Some(d) = self.deferred.get_mut(&identity.trace_id) {
                    if d.span_id == identity.span_id {
                        d.done = true;
                        waits = d.event_loop && d.tid == rec.tid;
                    }
                }
                if waits {
                    if missed.is_some() {
                        // Two deferred calls' responses read in a row (asyncio reads
                        // every ready socket before its handlers run): the next answer
                        // may be either's.
                        self.abandon(identity.trace_id);
                    } else {
                        self.last_response.insert(key, identity.trace_id);
                    }
                }
            }
            Role::Server => {
                if self.deferred_in.contains_key(&rec.conn.pid) {
                    self.batch.push(Answered {
                        pid: rec.conn.pid,
                        tid: rec.tid,
                        key: rec.key,
                        trace_id: identity.trace_id,
                        span_id: identity.span_id,
                        flags: identity.flags,
                        trace_state: identity.trace_state.clone(),
                        has_calls,
                    });
                }
            }
        }
        if self.instrumented.contains(&rec.conn.pid) {
            self.counts.incr(Counter::SpansSuppressedInstrumented);
            return None;
        }
        Some(identity)
    }

    fn insert(&mut self, key: ReqKey, p: Pending) {
        self.per_conn.entry(key.conn).or_default().push(key.stream);
        if let Some(old) = self.pending.insert(key, p) {
            self.recycle(old);
        }
    }

    /// Removes a pending request and everything that refers to it. Its content record
    /// is kept for reuse (the result has none).
    fn remove(&mut self, key: ReqKey) -> Option<Pending> {
        let mut p = self.pending.remove(&key)?;
        if let Some(streams) = self.per_conn.get_mut(&key.conn) {
            streams.remove(key.stream);
            if streams.is_empty() {
                self.per_conn.remove(&key.conn);
            }
        }
        if p.role == Role::Server {
            self.forget_server(key, p.pid, p.tid, p.received.as_ref());
        }
        if let Some(c) = p.content.take() {
            self.spare.put_content(c);
        }
        Some(p)
    }

    fn recycle(&mut self, mut p: Pending) {
        if let Some(c) = p.content.take() {
            self.spare.put_content(c);
        }
    }

    fn forget_server(&mut self, key: ReqKey, pid: u32, tid: u32, received: Option<&SpanContext>) {
        if let Some(process) = self.processes.get_mut(&pid) {
            if let Some(log) = process.threads.get_mut(&tid) {
                log.in_flight.retain(|k| *k != key);
                if log.in_flight.is_empty() {
                    // Nothing in flight: its history cannot name a parent any more.
                    if let Some(log) = process.threads.remove(&tid) {
                        self.spare.put_log(log);
                    }
                }
            }
            process.in_flight.retain(|k| *k != key);
            if process.in_flight.is_empty() {
                self.overflowed.remove(&pid);
                if process.threads.is_empty() {
                    if let Some(process) = self.processes.remove(&pid) {
                        self.spare.put_proc(process);
                    }
                }
            }
        }
        if let Some(ctx) = received {
            if let Some(ids) = self.received.get_mut(&pid) {
                if let Some(n) = ids.get_mut(&ctx.span_id) {
                    *n -= 1;
                    if *n == 0 {
                        ids.remove(&ctx.span_id);
                    }
                }
                if ids.is_empty() {
                    self.received.remove(&pid);
                }
            }
        }
    }

    /// A connection ended: its unanswered requests and unmatched client calls go.
    pub fn connection_closed(&mut self, key: ConnKey, conn: &ConnMeta) {
        if conn.role == Role::Client {
            // Only this connection's calls: the same tuple in another namespace is
            // another connection.
            let queue = self.peers.get_mut(&(conn.local, conn.peer));
            let emptied = queue.is_some_and(|q| {
                q.retain(|c| c.netns != conn.netns);
                q.is_empty()
            });
            if emptied {
                self.peers.remove(&(conn.local, conn.peer));
                if let Some(n) = self.client_ips.get_mut(&conn.local.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        self.client_ips.remove(&conn.local.ip());
                    }
                }
            }
            self.opened_seen.remove(&key);
        } else {
            self.nat_cache.remove(&key);
        }
        for stream in self.per_conn.remove(&key).unwrap_or_default().into_iter() {
            self.remove(ReqKey { conn: key, stream });
        }
    }

    /// A process exited.
    pub fn process_exited(&mut self, pid: u32) {
        self.instrumented.remove(&pid);
        self.goroutines.remove(&pid);
        self.overflowed.remove(&pid);
        self.received.remove(&pid);
        if let Some(process) = self.processes.remove(&pid) {
            self.spare.put_proc(process);
        }
        let gone: Vec<[u8; 16]> = self.deferred.iter().filter(|(_, d)| d.pid == pid).map(|(t, _)| *t).collect();
        for t in gone {
            self.abandon(t);
        }
    }

    /// Drops the oldest half of pending requests (a flood of requests never answered).
    fn evict(&mut self) {
        let mut keys: Vec<ReqKey> = self.pending.keys().copied().collect();
        keys.sort_by_key(|k| (k.conn.gen, k.stream));
        for k in keys.iter().take(keys.len() / 2) {
            self.remove(*k);
        }
        self.counts.add(Counter::LinkEvicted, (keys.len() / 2) as u64);
    }
}

/// What the evidence decided for one call.
enum Choice {
    Link(ReqKey, LinkKind, Evidence),
    /// Decided by the next response the calling thread writes, among these; `true`: the
    /// thread is an event loop (only a response written right after the call's own
    /// response was read counts).
    Defer(Vec<ReqKey>, bool),
    Unlinked,
}

/// How a call's content relates to one candidate inbound request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    /// The call forwards it (same target, request id, or its received context).
    Matched,
    /// Nothing either way.
    Neutral,
    /// The call cannot be its (another request id, another client's address).
    Excluded,
}

/// What of an outbound call content evidence compares, looked up once per call rather
/// than once per candidate.
struct Call<'a> {
    method: &'a str,
    target: &'a str,
    sent: Option<&'a SpanContext>,
    request_id: Option<&'a str>,
    forwarded: Option<IpAddr>,
}

impl<'a> Call<'a> {
    fn of(req: &'a Request, sent: Option<&'a SpanContext>) -> Self {
        Call {
            method: &req.method,
            target: &req.target,
            sent,
            request_id: req.header("x-request-id"),
            forwarded: forwarded_client(req),
        }
    }
}

fn content_match(call: &Call<'_>, s: &Content, received: Option<&SpanContext>) -> Match {
    if let (Some(sent), Some(received)) = (call.sent, received) {
        // A proxy passing on the context it received: exact.
        if sent.span_id == received.span_id && sent.trace_id == received.trace_id {
            return Match::Matched;
        }
    }
    if let (Some(theirs), Some(ours)) = (call.request_id, s.request_id()) {
        return if theirs.trim() == ours.trim() { Match::Matched } else { Match::Excluded };
    }
    if let Some(forwarded) = call.forwarded {
        if forwarded != s.client {
            return Match::Excluded;
        }
    }
    if call.method == s.method && same_target(call.target, &s.target) {
        Match::Matched
    } else {
        Match::Neutral
    }
}

/// The client address a proxy says it forwards for: the last `X-Forwarded-For` hop
/// (the one the proxy itself added), else `X-Real-IP`.
fn forwarded_client(call: &Request) -> Option<IpAddr> {
    if let Some(xff) = call.header("x-forwarded-for") {
        return xff.rsplit(',').next().and_then(|a| a.trim().parse().ok());
    }
    call.header("x-real-ip").and_then(|a| a.trim().parse().ok())
}

/// The same target, or one that a proxy adding or stripping a path prefix would make
/// of it (`/api/items/7` and `/items/7`); never a bare `/`.
fn same_target(call: &str, inbound: &str) -> bool {
    if call == inbound {
        // A bare `/` (or `*`) names no particular request.
        return call.len() > 1;
    }
    let (short, long) = if call.len() < inbound.len() { (call, inbound) } else { (inbound, call) };
    short.len() >= MIN_SUFFIX_MATCH && short.starts_with('/') && long.ends_with(short)
}

/// The client request in `peers[key]` with wire key `seq`: in namespace `netns` when
/// the connection is loopback (it cannot leave its namespace); across namespaces
/// (pods on one node) only when exactly one matches and no better one can come.
fn take_peer(
    peers: &mut HashMap<(SocketAddr, SocketAddr), VecDeque<PeerRequest>>,
    key: (SocketAddr, SocketAddr),
    seq: u64,
    netns: u32,
    last_chance: bool,
) -> Option<PeerRequest> {
    let q = peers.get_mut(&key)?;
    if let Some(i) = q.iter().position(|c| c.wire_key == seq && c.netns == netns) {
        return q.remove(i);
    }
    if key.0.ip().is_loopback() || !last_chance {
        return None;
    }
    let mut others = q.iter().enumerate().filter(|(_, c)| c.wire_key == seq);
    let (i, _) = others.next()?;
    if others.next().is_some() {
        return None;
    }
    q.remove(i)
}

fn confidence(how: LinkKind, evidence: Evidence) -> Confidence {
    match how {
        LinkKind::Thread => Confidence::High,
        _ if evidence.kinds() >= 2 => Confidence::High,
        _ => Confidence::Medium,
    }
}

fn random_span_id() -> [u8; 8] {
    nonzero_span_id(rand::rng().random())
}

fn nonzero_span_id(mut id: [u8; 8]) -> [u8; 8] {
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn root_identity_with(span_id: [u8; 8]) -> Identity {
    identity_of(rand::rng().random(), span_id)
}

fn identity_of(mut trace_id: [u8; 16], span_id: [u8; 8]) -> Identity {
    if trace_id == [0; 16] {
        trace_id[15] = 1;
    }
    Identity {
        trace_id,
        span_id,
        parent_span_id: [0; 8],
        // Sampled (the sampler stage decides), and started here.
        flags: crate::span::context::FLAG_SAMPLED | crate::span::LOCAL_ROOT,
        trace_state: String::new(),
        link: LinkKind::None,
        format: None,
        propagation_break: None,
        evidence: Evidence::default(),
        confidence: None,
    }
}

/// A new root: trace and span id in one draw from the generator.
fn root_identity() -> Identity {
    let (trace_id, span_id): ([u8; 16], [u8; 8]) = rand::rng().random();
    identity_of(trace_id, nonzero_span_id(span_id))
}

/// A server request's identity until `resolve_server` settles it: only its span id is
/// final (its trace id, all zero, is never read before; a root's is drawn then).
fn unresolved_identity() -> Identity {
    Identity { trace_id: [0; 16], ..identity_of([0; 16], random_span_id()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Exchange, Response, Timing};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";

    fn meta(pid: u32, role: Role, local: &str, peer: &str) -> ConnMeta {
        ConnMeta {
            pid,
            role,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            netns: 0,
            tls: None,
            opened_by: None,
        }
    }

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            version_minor: 1,
            headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            body_len: 0,
            truncated: false,
            stream_offset: 0,
        }
    }

    /// Started on thread `tid`, wire key `wire`, at a time that grows with each call.
    fn st(tid: u32, wire: u64) -> Start {
        use std::sync::atomic::{AtomicU64, Ordering};
        static CLOCK: AtomicU64 = AtomicU64::new(1_000);
        Start { tid, ts_ns: CLOCK.fetch_add(1_000, Ordering::Relaxed), wire_key: wire }
    }

    fn key(conn: u64, seq: u64) -> ReqKey {
        ReqKey { conn: crate::capture::ConnId { sock: conn, gen: 1 }, stream: seq }
    }

    fn done(l: &mut Linker, k: ReqKey, conn: ConnMeta) -> Option<Identity> {
        done_on(l, k, conn, 0)
    }

    /// Answered, the response written (server) or read (client) by thread `tid`; the
    /// batch ends with it.
    fn done_on(l: &mut Linker, k: ReqKey, conn: ConnMeta, tid: u32) -> Option<Identity> {
        let id = answered(l, k, conn, tid);
        l.batch_end();
        id
    }

    fn answered(l: &mut Linker, k: ReqKey, conn: ConnMeta, tid: u32) -> Option<Identity> {
        let rec = ExchangeRecord {
            key: k,
            conn,
            exchange: Exchange {
                seq: k.stream,
                request: req(&[]),
                response: Response { status: 200, ..Response::default() },
                request_first: Timing::default(),
                request_last: Timing::default(),
                response_first: Timing::default(),
                response_last: Timing::default(),
                h2: None,
                db: None,
            },
            tid,
        };
        l.exchange_done(&rec)
    }

    fn get(target: &str, headers: &[(&str, &str)]) -> Request {
        Request { target: target.into(), ..req(headers) }
    }

    fn server(port: u16) -> ConnMeta {
        meta(1, Role::Server, "127.0.0.1:80", &format!("127.0.0.1:{port}"))
    }

    fn upstream(port: u16) -> ConnMeta {
        meta(1, Role::Client, &format!("127.0.0.1:{port}"), "127.0.0.1:90")
    }

    fn opened(mut conn: ConnMeta, tid: u32, ts_ns: u64) -> ConnMeta {
        conn.opened_by = Some(crate::conn::Opener { tid, ts_ns });
        conn
    }

    fn at(tid: u32, ts_ns: u64, wire: u64) -> Start {
        Start { tid, ts_ns, wire_key: wire }
    }

    /// Process 1 (a proxy) serves on :80 and calls :90 (process 2) from thread 11.
    fn proxy_in() -> ConnMeta {
        meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5000")
    }
    fn proxy_out() -> ConnMeta {
        meta(1, Role::Client, "127.0.0.1:6000", "127.0.0.1:90")
    }
    fn backend_in() -> ConnMeta {
        meta(2, Role::Server, "127.0.0.1:90", "127.0.0.1:6000")
    }

    #[test]
    fn thread_socket_and_break_along_a_chain() {
        let mut l = Linker::default();
        // The proxy receives context, calls out without it, the backend answers.
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[]));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let server = done(&mut l, key(1, 0), proxy_in()).unwrap();

        assert_eq!(server.link, LinkKind::Header);
        assert_eq!(crate::span::hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(crate::span::hex(&server.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(call.link, LinkKind::Thread);
        assert_eq!((call.trace_id, call.parent_span_id), (server.trace_id, server.span_id));
        assert_eq!(backend.link, LinkKind::Socket);
        assert_eq!((backend.trace_id, backend.parent_span_id), (call.trace_id, call.span_id));
        assert_eq!(backend.propagation_break, Some(1), "the proxy dropped the context it received");
        assert_eq!(call.propagation_break, None);
    }

    #[test]
    fn socket_links_match_by_stream_position_not_order() {
        let mut l = Linker::default();
        // The proxy sent two requests on one connection; the backend's record of the
        // first was lost, so it sees only the second (TCP sequence 900).
        l.request_started(key(2, 0), &proxy_out(), st(11, 100), &req(&[]));
        l.request_started(key(2, 1), &proxy_out(), st(11, 900), &req(&[]));
        l.request_started(key(3, 1), &backend_in(), st(21, 900), &req(&[]));
        let backend = done(&mut l, key(3, 1), backend_in()).unwrap();
        let first = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let second = done(&mut l, key(2, 1), proxy_out()).unwrap();
        assert_eq!(backend.link, LinkKind::Socket);
        assert_eq!(backend.parent_span_id, second.span_id);
        assert_ne!(backend.parent_span_id, first.span_id);
        // A server request with no client request at its position is not guessed.
        l.request_started(key(2, 2), &proxy_out(), st(11, 1700), &req(&[]));
        l.request_started(key(3, 3), &backend_in(), st(21, 2500), &req(&[]));
        assert_eq!(done(&mut l, key(3, 3), backend_in()).unwrap().link, LinkKind::None);
    }

    #[test]
    fn socket_link_when_the_server_side_is_seen_first() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[]));
        // The backend's read reaches the agent before the proxy's write.
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        assert_eq!(backend.link, LinkKind::Socket);
        assert_eq!(backend.parent_span_id, call.span_id);
        assert_eq!(backend.trace_id, call.trace_id);
        // No context was received upstream: nothing was broken.
        assert_eq!(backend.propagation_break, None);
    }

    #[test]
    fn sequential_keep_alive_requests_on_one_thread_link_to_the_current_one() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[]));
        let first = done(&mut l, key(1, 0), proxy_in()).unwrap();
        l.request_started(key(1, 1), &proxy_in(), st(11, 1), &req(&[]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let second = done(&mut l, key(1, 1), proxy_in()).unwrap();
        assert_eq!(call.parent_span_id, second.span_id);
        assert_ne!(call.parent_span_id, first.span_id);
        // A call after the response went out belongs to no request.
        l.request_started(key(2, 1), &proxy_out(), st(11, 1), &req(&[]));
        assert_eq!(done(&mut l, key(2, 1), proxy_out()).unwrap().link, LinkKind::None);
    }

    #[test]
    fn thread_pool_links_per_thread() {
        let mut l = Linker::default();
        let a = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5001");
        let b = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5002");
        l.request_started(key(1, 0), &a, st(11, 0), &req(&[]));
        l.request_started(key(4, 0), &b, st(12, 0), &req(&[]));
        let out_b = meta(1, Role::Client, "127.0.0.1:6002", "127.0.0.1:90");
        let out_a = meta(1, Role::Client, "127.0.0.1:6001", "127.0.0.1:90");
        l.request_started(key(5, 0), &out_b, st(12, 0), &req(&[]));
        l.request_started(key(6, 0), &out_a, st(11, 0), &req(&[]));
        let call_b = done(&mut l, key(5, 0), out_b).unwrap();
        let call_a = done(&mut l, key(6, 0), out_a).unwrap();
        let srv_a = done(&mut l, key(1, 0), a).unwrap();
        let srv_b = done(&mut l, key(4, 0), b).unwrap();
        assert_eq!(call_a.parent_span_id, srv_a.span_id);
        assert_eq!(call_b.parent_span_id, srv_b.span_id);
        assert_ne!(srv_a.trace_id, srv_b.trace_id);
    }

    #[test]
    fn an_event_loop_call_nothing_names_waits_for_the_answer_that_relays_its_response() {
        let mut l = Linker::default();
        // Two requests read in one syscall (HTTP/2 streams), same target: neither order
        // nor content can tell which one the call is for.
        l.request_started(key(1, 1), &server(5001), at(11, 100, 1), &req(&[]));
        l.request_started(key(1, 3), &server(5001), at(11, 100, 3), &req(&[]));
        l.request_started(key(2, 0), &upstream(6001), at(11, 200, 0), &req(&[]));
        l.request_started(key(3, 0), &upstream(6002), at(11, 210, 0), &req(&[]));
        let first = done_on(&mut l, key(2, 0), upstream(6001), 11).unwrap();
        assert_eq!(first.link, LinkKind::None);
        assert!(l.is_provisional(&first.trace_id));
        // The loop relays the first call's response: it answers stream 3 right after.
        let s3 = done_on(&mut l, key(1, 3), server(5001), 11).unwrap();
        let r = l.take_resolved();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].from, r[0].parent), (first.trace_id, s3.span_id));
        // The second call's response is read, then another one before any answer: the
        // chance is gone, it goes out unlinked.
        let second = done_on(&mut l, key(3, 0), upstream(6002), 11).unwrap();
        l.request_started(key(4, 0), &upstream(6003), at(11, 300, 0), &req(&[]));
        done_on(&mut l, key(4, 0), upstream(6003), 11);
        assert_eq!(l.take_abandoned(), vec![second.trace_id]);
        done_on(&mut l, key(1, 1), server(5001), 11).unwrap();
    }

    #[test]
    fn two_deferred_responses_read_in_a_row_leave_both_calls_unlinked() {
        let mut l = Linker::default();
        l.request_started(key(1, 1), &server(5001), at(11, 100, 1), &req(&[]));
        l.request_started(key(1, 3), &server(5001), at(11, 100, 3), &req(&[]));
        l.request_started(key(2, 0), &upstream(6001), at(11, 200, 0), &req(&[]));
        l.request_started(key(3, 0), &upstream(6002), at(11, 210, 0), &req(&[]));
        // asyncio: both responses are read, then the handlers answer in turn.
        let one = done_on(&mut l, key(2, 0), upstream(6001), 11).unwrap();
        let two = done_on(&mut l, key(3, 0), upstream(6002), 11).unwrap();
        done_on(&mut l, key(1, 1), server(5001), 11).unwrap();
        assert!(l.take_resolved().is_empty(), "the first answer could be either call's");
        let mut gone = l.take_abandoned();
        gone.sort_unstable();
        let mut want = vec![one.trace_id, two.trace_id];
        want.sort_unstable();
        assert_eq!(gone, want);
    }

    #[test]
    fn a_handler_on_another_thread_links_to_the_only_request_of_its_process() {
        let mut l = Linker::default();
        // Read on thread 11, handled on thread 31 (grpcio's completion queue and pool).
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[]));
        l.request_started(key(2, 0), &proxy_out(), st(31, 0), &req(&[]));
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let server = done(&mut l, key(1, 0), proxy_in()).unwrap();
        assert_eq!(call.link, LinkKind::Process);
        assert_eq!((call.trace_id, call.parent_span_id), (server.trace_id, server.span_id));
        // Two requests in flight in the process: no parent is guessed.
        let other = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5009");
        l.request_started(key(1, 1), &proxy_in(), st(11, 1), &req(&[]));
        l.request_started(key(7, 0), &other, st(12, 0), &req(&[]));
        l.request_started(key(2, 1), &proxy_out(), st(31, 1), &req(&[]));
        assert_eq!(done(&mut l, key(2, 1), proxy_out()).unwrap().link, LinkKind::None);
    }

    #[test]
    fn a_proxy_passing_the_header_on_is_legacy_and_linked_by_socket() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[("traceparent", TP)]));
        assert!(!l.is_instrumented(1));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        assert_eq!(backend.link, LinkKind::Socket);
        assert_eq!(backend.parent_span_id, call.span_id);
        assert_eq!(backend.propagation_break, None, "the context was passed on");
    }

    #[test]
    fn an_sdk_process_gets_no_spans_and_its_header_links_the_callee() {
        let mut l = Linker::default();
        let sdk_parent = "00-11111111111111111111111111111111-2222222222222222-01";
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[("traceparent", sdk_parent)]));
        assert!(l.is_instrumented(1));
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[("traceparent", sdk_parent)]));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        assert_eq!(backend.link, LinkKind::Header);
        assert_eq!(crate::span::hex(&backend.parent_span_id), "2222222222222222");
        assert_eq!(backend.propagation_break, None);
        assert_eq!(done(&mut l, key(2, 0), proxy_out()), None);
        assert_eq!(done(&mut l, key(1, 0), proxy_in()), None);
    }

    #[test]
    fn declared_instrumented_processes_get_no_spans() {
        let mut l = Linker::new(vec!["svc-a".into()]);
        l.observe_process(1, &["svc-a", "python3"], false);
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[]));
        assert_eq!(done(&mut l, key(1, 0), proxy_in()), None);
    }

    #[test]
    fn header_and_socket_disagreeing_is_counted_and_the_header_wins() {
        let mut l = Linker::default();
        // Two requests in flight on one thread, both with the same context (a client
        // retrying): nothing tells which one the call forwards, so its own trace
        // differs from the header it passes on.
        let other = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5009");
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(7, 0), &other, st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[("traceparent", TP)]));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        assert_eq!(backend.link, LinkKind::Header);
        assert_eq!(crate::span::hex(&backend.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(l.counts.get(Counter::LinkHeaderSocketDisagree), 1);
    }

    #[test]
    fn closed_connections_and_exited_processes_leave_nothing_behind() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[("traceparent", TP)]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        l.connection_closed(crate::capture::ConnId { sock: 2, gen: 1 }, &proxy_out());
        l.connection_closed(crate::capture::ConnId { sock: 1, gen: 1 }, &proxy_in());
        l.process_exited(1);
        assert!(l.pending.is_empty() && l.per_conn.is_empty() && l.processes.is_empty());
        assert!(l.peers.is_empty() && l.received.is_empty());
    }

    #[test]
    fn an_event_loop_call_is_attributed_at_connect_time() {
        let mut l = Linker::default();
        // nginx: read A, connect for A, read B, connect for B, then the writes (in
        // connect order). All targets are `/`: only the order can tell.
        l.request_started(key(1, 0), &server(5001), at(11, 100, 0), &req(&[]));
        l.request_started(key(2, 0), &server(5002), at(11, 300, 0), &req(&[]));
        let (ua, ub) = (opened(upstream(6001), 11, 200), opened(upstream(6002), 11, 400));
        l.request_started(key(3, 0), &ua, at(11, 500, 0), &req(&[]));
        l.request_started(key(4, 0), &ub, at(11, 600, 0), &req(&[]));
        let call_b = done(&mut l, key(4, 0), ub).unwrap();
        let call_a = done(&mut l, key(3, 0), ua).unwrap();
        let a = done(&mut l, key(1, 0), server(5001)).unwrap();
        let b = done(&mut l, key(2, 0), server(5002)).unwrap();
        assert_eq!((call_a.parent_span_id, call_a.link), (a.span_id, LinkKind::Order));
        assert_eq!((call_b.parent_span_id, call_b.link), (b.span_id, LinkKind::Order));
        assert!(call_a.evidence.contains(Evidence::CONNECT));
        assert_eq!(call_a.confidence, Some(Confidence::Medium));
    }

    #[test]
    fn a_connection_written_before_an_earlier_one_is_not_guessed() {
        let mut l = Linker::default();
        // As above, but B's connection is written first: A's connect (between the two
        // reads) is not known yet, so the two reads look like a burst.
        l.request_started(key(1, 0), &server(5001), at(11, 100, 0), &req(&[]));
        l.request_started(key(2, 0), &server(5002), at(11, 300, 0), &req(&[]));
        let (ua, ub) = (opened(upstream(6001), 11, 200), opened(upstream(6002), 11, 400));
        l.request_started(key(4, 0), &ub, at(11, 500, 0), &req(&[]));
        l.request_started(key(3, 0), &ua, at(11, 600, 0), &req(&[]));
        assert_eq!(done(&mut l, key(4, 0), ub).unwrap().link, LinkKind::None);
        let call_a = done(&mut l, key(3, 0), ua).unwrap();
        let a = done(&mut l, key(1, 0), server(5001)).unwrap();
        assert_eq!(call_a.parent_span_id, a.span_id);
    }

    #[test]
    fn a_pooled_connection_reused_is_attributed_at_the_write() {
        let mut l = Linker::default();
        let pooled = opened(upstream(6001), 11, 50);
        // Its first request, for A (connected while handling A).
        l.request_started(key(1, 0), &server(5001), at(11, 40, 0), &req(&[]));
        l.request_started(key(3, 0), &pooled, at(11, 60, 0), &req(&[]));
        let first = done(&mut l, key(3, 0), pooled).unwrap();
        let a = done(&mut l, key(1, 0), server(5001)).unwrap();
        assert_eq!(first.parent_span_id, a.span_id);
        // Reused by B while C (read earlier, with its own call made) is in flight.
        l.request_started(key(5, 0), &server(5003), at(11, 100, 0), &req(&[]));
        l.request_started(key(6, 0), &upstream(6003), at(11, 150, 0), &req(&[]));
        l.request_started(key(2, 0), &server(5002), at(11, 200, 0), &req(&[]));
        l.request_started(key(3, 1), &pooled, at(11, 250, 1), &req(&[]));
        let second = done(&mut l, key(3, 1), pooled).unwrap();
        let b = done(&mut l, key(2, 0), server(5002)).unwrap();
        assert_eq!((second.parent_span_id, second.link), (b.span_id, LinkKind::Order));
    }

    #[test]
    fn a_burst_of_reads_before_any_call_is_order_ambiguous_and_content_decides() {
        let mut l = Linker::default();
        // asyncio: read A, read B, then the handlers run and call out.
        l.request_started(key(1, 0), &server(5001), at(11, 100, 0), &get("/items/a1", &[]));
        l.request_started(key(2, 0), &server(5002), at(11, 200, 0), &get("/items/b2", &[]));
        // Order alone says B (read last), but A's handler has not run: no guess.
        l.request_started(key(4, 0), &upstream(6002), at(11, 300, 0), &get("/other", &[]));
        l.request_started(key(3, 0), &upstream(6001), at(11, 400, 0), &get("/items/a1", &[]));
        // A's handler ran (its call is attributed): the next call is B's.
        l.request_started(key(5, 0), &upstream(6003), at(11, 500, 0), &get("/other", &[]));
        let unknown = done(&mut l, key(4, 0), upstream(6002)).unwrap();
        let call_a = done(&mut l, key(3, 0), upstream(6001)).unwrap();
        let call_b = done(&mut l, key(5, 0), upstream(6003)).unwrap();
        let a = done(&mut l, key(1, 0), server(5001)).unwrap();
        let b = done(&mut l, key(2, 0), server(5002)).unwrap();
        assert_eq!(unknown.link, LinkKind::None);
        assert_eq!((call_a.parent_span_id, call_a.link), (a.span_id, LinkKind::Content));
        assert_eq!((call_b.parent_span_id, call_b.link), (b.span_id, LinkKind::Order));
    }

    #[test]
    fn order_and_content_disagreeing_leave_the_call_unlinked() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &server(5001), at(11, 100, 0), &get("/api/users", &[]));
        l.request_started(key(5, 0), &upstream(6005), at(11, 150, 0), &get("/api/x", &[]));
        l.request_started(key(2, 0), &server(5002), at(11, 200, 0), &get("/api/orders", &[]));
        // B's handler (read last, after A's call) calls /api/users: content says A.
        l.request_started(key(3, 0), &upstream(6001), at(11, 300, 0), &get("/api/users", &[]));
        assert_eq!(done(&mut l, key(3, 0), upstream(6001)).unwrap().link, LinkKind::None);
        assert_eq!(l.counts.get(Counter::LinkEvidenceConflict), 1);
    }

    #[test]
    fn request_ids_and_forwarded_for_select_and_exclude() {
        let mut l = Linker::default();
        let a = meta(1, Role::Server, "127.0.0.1:80", "10.0.0.1:5001");
        let b = meta(1, Role::Server, "127.0.0.1:80", "10.0.0.2:5002");
        l.request_started(key(1, 0), &a, at(11, 100, 0), &get("/", &[("x-request-id", "r-1")]));
        l.request_started(key(2, 0), &b, at(11, 200, 0), &get("/", &[("x-request-id", "r-2")]));
        l.request_started(key(3, 0), &upstream(6001), at(11, 300, 0), &get("/", &[("x-request-id", "r-1")]));
        let by_id = done(&mut l, key(3, 0), upstream(6001)).unwrap();
        // From a worker thread, no request id, but forwarded for 10.0.0.2: only B
        // remains, by elimination.
        l.request_started(key(4, 0), &upstream(6002), at(13, 400, 0), &get("/", &[("x-forwarded-for", "10.0.0.2")]));
        let by_xff = done(&mut l, key(4, 0), upstream(6002)).unwrap();
        let a = done(&mut l, key(1, 0), a).unwrap();
        let b = done(&mut l, key(2, 0), b).unwrap();
        assert_eq!((by_id.parent_span_id, by_id.link), (a.span_id, LinkKind::Content));
        assert_eq!((by_xff.parent_span_id, by_xff.link), (b.span_id, LinkKind::Process));
    }

    #[test]
    fn go_threads_are_not_evidence() {
        let mut l = Linker::default();
        l.observe_process(1, &["proxy"], true);
        // A goroutine on thread 11 read A; another goroutine, now on thread 11, calls
        // out for B.
        l.request_started(key(1, 0), &server(5001), at(11, 100, 0), &get("/a/1", &[]));
        l.request_started(key(2, 0), &server(5002), at(12, 200, 0), &get("/b/2", &[]));
        l.request_started(key(3, 0), &upstream(6001), at(11, 300, 0), &get("/b/2", &[]));
        let call = done(&mut l, key(3, 0), upstream(6001)).unwrap();
        let b = done(&mut l, key(2, 0), server(5002)).unwrap();
        assert_eq!((call.parent_span_id, call.link), (b.span_id, LinkKind::Content));
        assert_eq!(call.evidence, Evidence::CONTENT);
    }

    #[test]
    fn a_worker_thread_call_is_decided_by_the_response_it_writes_next() {
        let mut l = Linker::default();
        // grpcio: thread 11 reads A and B; pool threads 31 and 32 handle them.
        l.request_started(key(1, 1), &server(5001), at(11, 100, 1), &req(&[]));
        l.request_started(key(1, 3), &server(5001), at(11, 200, 3), &req(&[]));
        l.request_started(key(3, 0), &upstream(6001), at(31, 300, 0), &req(&[]));
        l.request_started(key(4, 0), &upstream(6002), at(32, 310, 0), &req(&[]));
        let call_b = done_on(&mut l, key(4, 0), upstream(6002), 32).unwrap();
        let call_a = done_on(&mut l, key(3, 0), upstream(6001), 31).unwrap();
        assert!(l.is_provisional(&call_a.trace_id) && l.is_provisional(&call_b.trace_id));
        // Thread 32 answers B, then 31 answers A.
        let b = done_on(&mut l, key(1, 3), server(5001), 32).unwrap();
        let a = done_on(&mut l, key(1, 1), server(5001), 31).unwrap();
        let resolved = l.take_resolved();
        let of = |trace: [u8; 16]| resolved.iter().find(|r| r.from == trace).cloned().unwrap();
        let (ra, rb) = (of(call_a.trace_id), of(call_b.trace_id));
        assert_eq!((ra.to, ra.root, ra.parent), (a.trace_id, call_a.span_id, a.span_id));
        assert_eq!((rb.to, rb.root, rb.parent), (b.trace_id, call_b.span_id, b.span_id));
        assert!(!l.is_provisional(&call_a.trace_id));
    }

    #[test]
    fn one_write_answering_two_requests_resolves_no_deferred_call() {
        let mut l = Linker::default();
        l.request_started(key(1, 1), &server(5001), at(11, 100, 1), &req(&[]));
        l.request_started(key(1, 3), &server(5001), at(11, 200, 3), &req(&[]));
        l.request_started(key(3, 0), &upstream(6001), at(31, 300, 0), &req(&[]));
        let call = done_on(&mut l, key(3, 0), upstream(6001), 31).unwrap();
        // Thread 31 writes both responses in one syscall (one batch).
        answered(&mut l, key(1, 1), server(5001), 31);
        answered(&mut l, key(1, 3), server(5001), 31);
        l.batch_end();
        assert!(l.take_resolved().is_empty());
        assert!(l.is_provisional(&call.trace_id));
        // Nothing else tells: it goes out unlinked when its time is up.
        l.expire(300 + DEFER_TTL_NS + 1);
        let abandoned = l.take_abandoned();
        assert!(abandoned.contains(&call.trace_id));
        // The two server requests, whose (loopback) client was never seen, waited for it.
        assert_eq!(abandoned.len(), 3);
        assert_eq!(l.counts.get(Counter::LinkSocketWaitExpired), 2);
    }

    #[test]
    fn a_response_written_for_a_worker_by_another_thread_resolves_the_only_waiting_call() {
        let mut l = Linker::default();
        l.request_started(key(1, 1), &server(5001), at(11, 100, 1), &req(&[]));
        l.request_started(key(1, 3), &server(5001), at(11, 200, 3), &req(&[]));
        l.request_started(key(3, 0), &upstream(6001), at(31, 300, 0), &req(&[]));
        l.request_started(key(4, 0), &upstream(6002), at(32, 310, 0), &req(&[]));
        let call_a = done_on(&mut l, key(3, 0), upstream(6001), 31).unwrap();
        // Thread 11 (the poller, no calls of its own) writes A's response for 31: the
        // only call whose response is in is 31's.
        let a = done_on(&mut l, key(1, 1), server(5001), 11).unwrap();
        let resolved = l.take_resolved();
        assert_eq!(resolved.len(), 1);
        assert_eq!((resolved[0].from, resolved[0].parent), (call_a.trace_id, a.span_id));
        // With two calls waiting, the poller's write names neither.
        let call_b = done_on(&mut l, key(4, 0), upstream(6002), 32).unwrap();
        l.request_started(key(1, 5), &server(5001), at(11, 400, 5), &req(&[]));
        l.request_started(key(5, 0), &upstream(6003), at(33, 500, 0), &req(&[]));
        let call_c = done_on(&mut l, key(5, 0), upstream(6003), 33).unwrap();
        done_on(&mut l, key(1, 3), server(5001), 11).unwrap();
        assert!(l.take_resolved().is_empty());
        assert!(l.is_provisional(&call_b.trace_id) && l.is_provisional(&call_c.trace_id));
    }

    #[test]
    fn an_answer_two_calls_wait_for_goes_to_the_one_left_by_elimination() {
        let mut l = Linker::default();
        l.request_started(key(1, 1), &server(5001), at(11, 100, 1), &req(&[]));
        l.request_started(key(1, 3), &server(5001), at(11, 200, 3), &req(&[]));
        l.request_started(key(3, 0), &upstream(6001), at(31, 300, 0), &req(&[]));
        l.request_started(key(4, 0), &upstream(6002), at(32, 310, 0), &req(&[]));
        let call_a = done_on(&mut l, key(3, 0), upstream(6001), 31).unwrap();
        let call_b = done_on(&mut l, key(4, 0), upstream(6002), 32).unwrap();
        // The poller writes A's response while both calls wait: it names neither yet.
        let a = done_on(&mut l, key(1, 1), server(5001), 11).unwrap();
        assert!(l.take_resolved().is_empty());
        // Thread 32 answers B itself: B is 32's call, so A's answer was 31's.
        let b = done_on(&mut l, key(1, 3), server(5001), 32).unwrap();
        let resolved = l.take_resolved();
        let of = |trace: [u8; 16]| resolved.iter().find(|r| r.from == trace).map(|r| r.parent);
        assert_eq!(of(call_b.trace_id), Some(b.span_id));
        assert_eq!(of(call_a.trace_id), Some(a.span_id));
    }

    #[test]
    fn identical_loopback_tuples_in_two_namespaces_are_two_connections() {
        let mut l = Linker::default();
        let ns = |mut c: ConnMeta, netns: u32, pid: u32| {
            c.netns = netns;
            c.pid = pid;
            c
        };
        let (client1, client2) = (ns(proxy_out(), 1, 1), ns(proxy_out(), 2, 3));
        let (server1, server2) = (ns(backend_in(), 1, 2), ns(backend_in(), 2, 4));
        // HTTP/2: both connections' first stream is 1.
        l.request_started(key(2, 1), &client1, st(11, 1), &req(&[]));
        l.request_started(key(5, 1), &client2, st(31, 1), &req(&[]));
        l.request_started(key(6, 1), &server2, st(41, 1), &req(&[]));
        l.request_started(key(3, 1), &server1, st(21, 1), &req(&[]));
        let s1 = done(&mut l, key(3, 1), server1).unwrap();
        let s2 = done(&mut l, key(6, 1), server2).unwrap();
        let c1 = done(&mut l, key(2, 1), client1).unwrap();
        let c2 = done(&mut l, key(5, 1), client2).unwrap();
        assert_eq!(s1.parent_span_id, c1.span_id);
        assert_eq!(s2.parent_span_id, c2.span_id);
    }

    struct FakeNat(SocketAddr, usize);
    impl NatLookup for FakeNat {
        fn original_destination(&mut self, _netns: u32, _local: SocketAddr, _peer: SocketAddr) -> Option<SocketAddr> {
            self.1 += 1;
            Some(self.0)
        }
    }

    #[test]
    fn a_socket_link_through_service_nat_asks_conntrack_once_per_connection() {
        let mut l = Linker::default();
        l.set_nat(Box::new(FakeNat("127.0.0.100:80".parse().unwrap(), 0)));
        let client = meta(1, Role::Client, "127.0.0.1:6000", "127.0.0.100:80");
        let backend = meta(2, Role::Server, "127.0.0.1:9090", "127.0.0.1:6000");
        l.request_started(key(2, 0), &client, st(11, 100), &req(&[]));
        l.request_started(key(2, 1), &client, st(11, 900), &req(&[]));
        l.request_started(key(3, 0), &backend, st(21, 100), &req(&[]));
        l.request_started(key(3, 1), &backend, st(21, 900), &req(&[]));
        let first = done(&mut l, key(3, 0), backend).unwrap();
        let second = done(&mut l, key(3, 1), backend).unwrap();
        let c0 = done(&mut l, key(2, 0), client).unwrap();
        let c1 = done(&mut l, key(2, 1), client).unwrap();
        assert_eq!((first.link, first.parent_span_id), (LinkKind::Socket, c0.span_id));
        assert_eq!((second.link, second.parent_span_id), (LinkKind::Socket, c1.span_id));
        assert_eq!(l.nat_cache.len(), 1);
        // A server connection from a client off the node costs no lookup.
        let outside = meta(2, Role::Server, "127.0.0.1:9090", "10.1.1.1:7000");
        l.request_started(key(7, 0), &outside, st(21, 5), &req(&[]));
        assert_eq!(done(&mut l, key(7, 0), outside).unwrap().link, LinkKind::None);
        assert_eq!(l.nat_cache.len(), 1);
    }

    #[test]
    fn a_server_answered_before_its_clients_request_was_seen_waits_for_it() {
        let mut l = Linker::default();
        // The proxy received a context and drops it on its call.
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[("traceparent", TP)]));
        // The backend reads, answers and is reported before the proxy's write.
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[]));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        assert_eq!(backend.link, LinkKind::None);
        assert!(l.is_provisional(&backend.trace_id), "its spans wait for the client's request");
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        assert!(!l.is_provisional(&backend.trace_id));
        let resolved = l.take_resolved();
        assert_eq!(resolved.len(), 1);
        let r = &resolved[0];
        assert_eq!((r.from, r.to, r.root, r.parent), (backend.trace_id, call.trace_id, backend.span_id, call.span_id));
        assert_eq!((r.link, r.evidence, r.confidence), (LinkKind::Socket, Evidence::default(), None));
        assert_eq!(r.propagation_break, Some(1), "the proxy dropped the context it received");
        assert_eq!(l.counts.get(Counter::LinkSocketLate), 1);
        assert!(l.take_abandoned().is_empty());
    }

    #[test]
    fn a_server_still_handling_its_request_takes_the_late_link_itself_and_its_calls_follow() {
        let mut l = Linker::default();
        // Process 9 (a traced client) connected to the proxy; the proxy reads the
        // request and calls out before process 9's write reaches the agent.
        let client = meta(9, Role::Client, "127.0.0.1:5000", "127.0.0.1:80");
        l.request_started(key(1, 0), &proxy_in(), st(11, 0), &req(&[]));
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        l.request_started(key(8, 0), &client, st(91, 0), &req(&[]));
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let server = done(&mut l, key(1, 0), proxy_in()).unwrap();
        let sent = done(&mut l, key(8, 0), client).unwrap();
        assert_eq!(
            (server.link, server.parent_span_id, server.trace_id),
            (LinkKind::Socket, sent.span_id, sent.trace_id)
        );
        assert_eq!((call.trace_id, call.parent_span_id), (sent.trace_id, server.span_id), "the call joined the trace");
        assert_eq!(call.link, LinkKind::Thread);
    }

    #[test]
    fn a_wait_for_a_client_request_never_seen_ends_and_releases_the_span() {
        let mut l = Linker::default();
        l.request_started(key(3, 0), &backend_in(), st(21, 0), &req(&[]));
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        assert!(l.is_provisional(&backend.trace_id));
        l.expire(l.now_ns + AWAIT_PEER_TTL_NS / 2);
        assert!(l.is_provisional(&backend.trace_id), "not yet");
        l.expire(l.now_ns + AWAIT_PEER_TTL_NS + 1);
        assert!(!l.is_provisional(&backend.trace_id));
        assert_eq!(l.take_abandoned(), vec![backend.trace_id]);
        assert_eq!(l.counts.get(Counter::LinkSocketWaitExpired), 1);
        // The request that comes after all is an ordinary unmatched client request.
        l.request_started(key(2, 0), &proxy_out(), st(11, 0), &req(&[]));
        assert!(l.take_resolved().is_empty());
        // A server whose client is off the node does not wait.
        let outside = meta(2, Role::Server, "10.0.0.2:90", "10.0.0.9:6001");
        l.request_started(key(4, 0), &outside, st(21, 7), &req(&[]));
        let alone = done(&mut l, key(4, 0), outside).unwrap();
        assert!(!l.is_provisional(&alone.trace_id));
        // Requests starting later (the linker's clock) end a wait as well.
        l.request_started(key(5, 0), &backend_in(), st(21, 9), &req(&[]));
        let waiting = done(&mut l, key(5, 0), backend_in()).unwrap();
        assert!(l.is_provisional(&waiting.trace_id));
        let later = meta(2, Role::Server, "10.0.0.2:90", "10.0.0.9:6002");
        l.request_started(key(6, 0), &later, at(21, l.now_ns + AWAIT_PEER_TTL_NS + 1, 0), &req(&[]));
        assert!(!l.is_provisional(&waiting.trace_id));
    }

    #[test]
    fn waiting_servers_are_bounded_and_the_oldest_is_released() {
        let mut l = Linker::default();
        let mut first = None;
        for i in 0..=MAX_AWAITING as u64 {
            let port = u16::try_from(1024 + i).unwrap();
            let inn = meta(2, Role::Server, "127.0.0.1:90", &format!("127.0.0.1:{port}"));
            l.request_started(key(100_000 + i, 0), &inn, st(21, 0), &req(&[]));
            let id = done(&mut l, key(100_000 + i, 0), inn).unwrap();
            first.get_or_insert(id.trace_id);
        }
        assert_eq!(l.awaiting.len(), MAX_AWAITING);
        assert_eq!(l.take_abandoned(), vec![first.unwrap()]);
    }

    /// The linker's own cost per request, away from the noise of a shared machine, printed
    /// (`cargo test --release -p ghostwire linker_cost -- --nocapture`) while every link
    /// of a long steady load is checked. `keep-alive`: a load generator (traced client)
    /// and a server, 32 connections, two spans a request, as the overhead benchmark;
    /// `proxy`: a request, the call its handler makes on a pooled connection (thread
    /// evidence) and the backend's request.
    #[test]
    fn linker_cost() {
        const CONNS: u64 = 32;
        const ROUNDS: u64 = 2_000;
        let conn = |pid, role, local: u16, peer: u16| {
            meta(pid, role, &format!("127.0.0.1:{local}"), &format!("127.0.0.1:{peer}"))
        };
        let get = req(&[("host", "127.0.0.1:18080"), ("user-agent", "wrk"), ("accept", "*/*")]);
        let pairs: Vec<_> = (0..CONNS)
            .map(|c| {
                let port = 40_000 + c as u16;
                (conn(100, Role::Client, port, 18080), conn(1, Role::Server, 18080, port))
            })
            .collect();
        let mut l = Linker::default();
        let t = thread_cpu_ns();
        for round in 0..ROUNDS {
            for c in 0..CONNS {
                let (client, server) = pairs[c as usize];
                let wire = round * 100;
                l.request_started(key(c, round), &client, at(101, round * 10 + 1, wire), &get);
                l.request_started(key(1000 + c, round), &server, at(2, round * 10 + 2, wire), &get);
                assert!(answered(&mut l, key(1000 + c, round), server, 2).is_some());
                l.batch_end();
                assert!(answered(&mut l, key(c, round), client, 101).is_some());
                l.batch_end();
            }
        }
        let per = (thread_cpu_ns() - t) as f64 / (ROUNDS * CONNS) as f64;
        println!("keep-alive: {per:.0} ns per request (2 spans)");
        let hops: Vec<_> = (0..CONNS)
            .map(|c| {
                let port = 40_000 + c as u16;
                let inbound = conn(1, Role::Server, 80, port);
                let call = conn(1, Role::Client, 50_000 + c as u16, 90);
                let backend = conn(2, Role::Server, 90, 50_000 + c as u16);
                (inbound, call, backend, get_req(&format!("/api/items/{c}")))
            })
            .collect();
        let mut l = Linker::default();
        let t = thread_cpu_ns();
        for round in 0..ROUNDS {
            for c in 0..CONNS {
                let (inbound, call, backend, r) = &hops[c as usize];
                let (inbound, call, backend) = (*inbound, *call, *backend);
                let tid = 10 + (c % 4) as u32;
                let (wire, ts) = (round * 100, round * 10);
                l.request_started(key(c, round), &inbound, at(tid, ts + 1, wire), r);
                l.request_started(key(1000 + c, round), &call, at(tid, ts + 2, wire), r);
                l.request_started(key(2000 + c, round), &backend, at(50, ts + 3, wire), r);
                let b = answered(&mut l, key(2000 + c, round), backend, 50).unwrap();
                l.batch_end();
                let o = answered(&mut l, key(1000 + c, round), call, tid).unwrap();
                l.batch_end();
                let i = answered(&mut l, key(c, round), inbound, tid).unwrap();
                l.batch_end();
                assert_eq!((b.parent_span_id, o.parent_span_id), (o.span_id, i.span_id));
            }
        }
        let per = (thread_cpu_ns() - t) as f64 / (ROUNDS * CONNS) as f64;
        println!("proxy: {per:.0} ns per request (3 spans)");
    }

    /// CPU time of the calling thread: the measurement does not count time the shared
    /// machine gave to others.
    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec for the kernel to write.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn get_req(target: &str) -> Request {
        get(target, &[("host", "backend"), ("x-request-id", "5f1c"), ("x-forwarded-for", "127.0.0.1")])
    }
}
