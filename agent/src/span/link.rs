//! The linker: gives every request a place in a trace, and says how it got it.
//!
//! Three ways to link, tried in this order of authority:
//!
//! * **header** — the request carried a trace context (W3C, B3 or Jaeger) that its
//!   sender created: the span joins that trace with the sender's span as parent.
//! * **thread** — a CLIENT request written by a thread that is, at that moment, handling
//!   exactly one inbound request: the client span is a child of that SERVER span. Works
//!   for thread-per-request and thread-pool servers (the thread that read the request
//!   calls out and answers); an event loop with several requests in flight on one thread
//!   is ambiguous and left unlinked (counted).
//! * **process** — a CLIENT request written by a thread handling no inbound request, in
//!   a process that is handling exactly one: the client span is a child of that one.
//!   This is what links servers that read on one thread and run the handler on another
//!   (grpcio: a completion-queue thread reads, a pool thread handles) when they are not
//!   busy; with two or more requests in flight the call is left unlinked.
//! * **socket** — the agent saw both ends of a TCP connection: the SERVER span of the
//!   accepting process is a child of the CLIENT span of the connecting one (its socket
//!   has the reverse 4-tuple), header or not. Both ends name the request the same way
//!   (the "wire key"): HTTP/1 by the TCP sequence number of its first byte, HTTP/2 by
//!   its stream id.
//!
//! A request's ids are decided when its head is parsed, before its response exists,
//! because the calls it makes meanwhile need their parent. The socket link is resolved
//! lazily: the two ends of a loopback connection can reach the agent in either order.
//!
//! A process whose outbound requests carry a context it did not receive (nor one that
//! ghostwire made: ghostwire injects none yet) runs an OpenTelemetry SDK: it exports its
//! own spans, so ghostwire emits none for it (`--instrumented` declares such processes
//! up front) but still uses its headers to link its neighbours.
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use rand::Rng as _;

use super::context::{self, Format, SpanContext};
use crate::conn::{ConnKey, ConnMeta, ExchangeRecord, ReqKey};
use crate::protocol::{Request, Role};
use crate::stats::{self, Counter};

/// How a span got its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    Header,
    Thread,
    Process,
    Socket,
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
            LinkKind::None => "none",
        }
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
}

/// What a server request learns from the client request at the other end of its socket.
#[derive(Clone, Debug)]
struct PeerRequest {
    /// TCP sequence number of the request's first byte.
    wire_key: u64,
    pid: u32,
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

struct Pending {
    pid: u32,
    role: Role,
    identity: Identity,
    local: SocketAddr,
    peer: SocketAddr,
    /// Server: the context received in a header.
    received: Option<SpanContext>,
    /// Server: the socket link may still come (the peer's request not yet seen).
    unresolved: bool,
    /// Server: the thread it was read on.
    tid: u32,
    /// TCP sequence number of the request's first byte.
    wire_key: u64,
}

/// Bounds, so no input can grow the linker without limit.
const MAX_PENDING: usize = 65_536;
const MAX_PEER_QUEUE: usize = 64;
const MAX_PER_THREAD: usize = 16;
const MAX_PER_PROCESS: usize = 64;

#[derive(Default)]
pub struct Linker {
    pending: HashMap<ReqKey, Pending>,
    /// Requests in `pending` per connection, so a close finds its own without a scan.
    per_conn: HashMap<ConnKey, Vec<u64>>,
    /// In-flight server requests per (pid, tid).
    threads: HashMap<(u32, u32), Vec<ReqKey>>,
    /// In-flight server requests per process.
    processes: HashMap<u32, Vec<ReqKey>>,
    /// Client requests not yet matched to a server request, per connection
    /// (client's local address, client's peer address).
    peers: HashMap<(SocketAddr, SocketAddr), VecDeque<PeerRequest>>,
    /// Parent span ids received by each process's in-flight server requests: a header
    /// with one of these on an outbound request is passed through, not made.
    received: HashMap<u32, HashMap<[u8; 8], u32>>,
    /// SDK-instrumented processes (detected, or declared by name).
    instrumented: HashSet<u32>,
    instrumented_names: Vec<String>,
}

impl Linker {
    /// `instrumented_names`: service or executable names declared SDK-instrumented.
    #[must_use]
    pub fn new(instrumented_names: Vec<String>) -> Self {
        Self { instrumented_names, ..Self::default() }
    }

    /// Marks `pid` instrumented if one of its names was declared so.
    pub fn observe_process(&mut self, pid: u32, names: &[&str]) {
        if names.iter().any(|n| !n.is_empty() && self.instrumented_names.iter().any(|d| d == n)) {
            self.instrumented.insert(pid);
        }
    }

    #[must_use]
    pub fn is_instrumented(&self, pid: u32) -> bool {
        self.instrumented.contains(&pid)
    }

    /// A request's head was parsed. `wire_key`: the TCP sequence number of its first byte,
    /// which the other end of the connection sees for the same request.
    pub fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, tid: u32, req: &Request, wire_key: u64) {
        if self.pending.len() >= MAX_PENDING {
            self.evict();
        }
        let headers = || req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let header_ctx = context::extract(headers());
        match conn.role {
            Role::Server => self.server_started(key, conn, tid, header_ctx, wire_key),
            Role::Client => self.client_started(key, conn, tid, header_ctx, wire_key),
        }
    }

    fn server_started(&mut self, key: ReqKey, conn: &ConnMeta, tid: u32, received: Option<SpanContext>, wire_key: u64) {
        if let Some(ctx) = &received {
            *self.received.entry(conn.pid).or_default().entry(ctx.span_id).or_insert(0) += 1;
        }
        self.insert(
            key,
            Pending {
                pid: conn.pid,
                role: Role::Server,
                // Settled by `resolve_server`; only its span id is final here.
                identity: root_identity(),
                local: conn.local,
                peer: conn.peer,
                received,
                unresolved: true,
                tid,
                wire_key,
            },
        );
        let on_thread = self.threads.entry((conn.pid, tid)).or_default();
        if on_thread.len() >= MAX_PER_THREAD {
            on_thread.remove(0);
        }
        on_thread.push(key);
        let in_process = self.processes.entry(conn.pid).or_default();
        if in_process.len() >= MAX_PER_PROCESS {
            in_process.remove(0);
        }
        in_process.push(key);
        // The peer's request is usually known already; if not, this is retried.
        self.resolve_server(key, false);
    }

    fn client_started(&mut self, key: ReqKey, conn: &ConnMeta, tid: u32, sent: Option<SpanContext>, wire_key: u64) {
        let s = stats::global();
        // Thread link: the one inbound request this thread is handling. Failing that,
        // process link: the one inbound request the whole process is handling.
        let parent_key = match self.threads.get(&(conn.pid, tid)).map(Vec::as_slice) {
            Some([only]) => Some((*only, LinkKind::Thread)),
            Some([_, _, ..]) => {
                s.incr(Counter::LinkAmbiguousThread);
                None
            }
            _ => match self.processes.get(&conn.pid).map(Vec::as_slice) {
                Some([only]) => Some((*only, LinkKind::Process)),
                _ => None,
            },
        };
        let parent = parent_key.and_then(|(k, how)| {
            self.resolve_server(k, true);
            self.pending.get(&k).map(|p| (p, how))
        });
        let (identity, handling_received_context) = match parent {
            Some((p, how)) => (
                Identity {
                    trace_id: p.identity.trace_id,
                    span_id: random_span_id(),
                    parent_span_id: p.identity.span_id,
                    flags: p.identity.flags,
                    trace_state: p.identity.trace_state.clone(),
                    link: how,
                    format: None,
                    propagation_break: None,
                },
                p.received.is_some(),
            ),
            None => {
                s.incr(Counter::LinkUnlinkedClient);
                (root_identity(), false)
            }
        };
        // A context this process did not receive was made by an SDK inside it.
        let sent_is_pass_through = sent
            .as_ref()
            .is_some_and(|ctx| self.received.get(&conn.pid).is_some_and(|ids| ids.contains_key(&ctx.span_id)));
        if sent.is_some() && !sent_is_pass_through && self.instrumented.insert(conn.pid) {
            log::info!(
                "process {} sends trace context of its own: SDK-instrumented, its spans come from its SDK",
                conn.pid
            );
        }
        let queue = self.peers.entry((conn.local, conn.peer)).or_default();
        if queue.len() >= MAX_PEER_QUEUE {
            queue.pop_front();
        }
        queue.push_back(PeerRequest {
            wire_key,
            pid: conn.pid,
            trace_id: identity.trace_id,
            span_id: identity.span_id,
            flags: identity.flags,
            instrumented: self.instrumented.contains(&conn.pid),
            sent,
            sent_is_pass_through,
            handling_received_context,
        });
        self.insert(
            key,
            Pending {
                pid: conn.pid,
                role: Role::Client,
                identity,
                local: conn.local,
                peer: conn.peer,
                received: None,
                unresolved: false,
                tid,
                wire_key,
            },
        );
    }

    /// Decides a server request's identity from its header and the client request at
    /// the other end of its socket. With `last_chance`, an unresolved request is settled
    /// even if that client request never appears.
    fn resolve_server(&mut self, key: ReqKey, last_chance: bool) {
        let Some(p) = self.pending.get(&key) else { return };
        if !p.unresolved {
            return;
        }
        // The client request that starts at the same byte of the same connection: exact,
        // whatever either end missed (a request lost at one end shifts nothing).
        let seq = p.wire_key;
        let peer = self.peers.get_mut(&(p.peer, p.local)).and_then(|q| {
            let i = q.iter().position(|c| c.wire_key == seq)?;
            q.remove(i)
        });
        if peer.is_none() && !last_chance {
            return;
        }
        let s = stats::global();
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
        };
        p.identity = match (&p.received, &peer) {
            // A legacy proxy passed on the header it received: the socket says which of
            // its calls this is. Both must name the same trace; if not, the header wins.
            (Some(h), Some(peer)) if !peer.instrumented && peer.sent_is_pass_through => {
                if h.trace_id == peer.trace_id {
                    from_socket(peer, false)
                } else {
                    s.incr(Counter::LinkHeaderSocketDisagree);
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
    }

    /// A request was answered: its span's identity, or `None` when the process is
    /// SDK-instrumented (its SDK reports this request).
    pub fn exchange_done(&mut self, rec: &ExchangeRecord) -> Option<Identity> {
        self.resolve_server(rec.key, true);
        let identity = match self.remove(rec.key) {
            Some(p) => p.identity,
            // Its start was never seen (evicted): a root of its own.
            None => root_identity(),
        };
        if self.instrumented.contains(&rec.conn.pid) {
            stats::global().incr(Counter::SpansSuppressedInstrumented);
            return None;
        }
        Some(identity)
    }

    fn insert(&mut self, key: ReqKey, p: Pending) {
        self.per_conn.entry(key.conn).or_default().push(key.stream);
        self.pending.insert(key, p);
    }

    /// Removes a pending request and everything that refers to it.
    fn remove(&mut self, key: ReqKey) -> Option<Pending> {
        let p = self.pending.remove(&key)?;
        if let Some(seqs) = self.per_conn.get_mut(&key.conn) {
            seqs.retain(|s| *s != key.stream);
            if seqs.is_empty() {
                self.per_conn.remove(&key.conn);
            }
        }
        if p.role == Role::Server {
            self.forget_server(key, p.pid, p.tid, p.received.as_ref());
        }
        Some(p)
    }

    fn forget_server(&mut self, key: ReqKey, pid: u32, tid: u32, received: Option<&SpanContext>) {
        if let Some(on_thread) = self.threads.get_mut(&(pid, tid)) {
            on_thread.retain(|k| *k != key);
            if on_thread.is_empty() {
                self.threads.remove(&(pid, tid));
            }
        }
        if let Some(in_process) = self.processes.get_mut(&pid) {
            in_process.retain(|k| *k != key);
            if in_process.is_empty() {
                self.processes.remove(&pid);
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
            self.peers.remove(&(conn.local, conn.peer));
        }
        for stream in self.per_conn.remove(&key).unwrap_or_default() {
            self.remove(ReqKey { conn: key, stream });
        }
    }

    /// A process exited.
    pub fn process_exited(&mut self, pid: u32) {
        self.instrumented.remove(&pid);
        self.received.remove(&pid);
        self.threads.retain(|(p, _), _| *p != pid);
        self.processes.remove(&pid);
    }

    /// Drops the oldest half of pending requests (a flood of requests never answered).
    fn evict(&mut self) {
        let mut keys: Vec<ReqKey> = self.pending.keys().copied().collect();
        keys.sort_by_key(|k| (k.conn.gen, k.stream));
        for k in keys.iter().take(keys.len() / 2) {
            self.remove(*k);
        }
        stats::global().add(Counter::LinkEvicted, (keys.len() / 2) as u64);
    }
}

fn random_span_id() -> [u8; 8] {
    let mut id: [u8; 8] = rand::rng().random();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn root_identity_with(span_id: [u8; 8]) -> Identity {
    let mut trace_id: [u8; 16] = rand::rng().random();
    if trace_id == [0; 16] {
        trace_id[15] = 1;
    }
    Identity {
        trace_id,
        span_id,
        parent_span_id: [0; 8],
        flags: 1,
        trace_state: String::new(),
        link: LinkKind::None,
        format: None,
        propagation_break: None,
    }
}

fn root_identity() -> Identity {
    root_identity_with(random_span_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Exchange, Response, Timing};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";

    fn meta(pid: u32, role: Role, local: &str, peer: &str) -> ConnMeta {
        ConnMeta { pid, role, local: local.parse().unwrap(), peer: peer.parse().unwrap(), netns: 0, tls: None, opened_by: None }
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

    fn key(conn: u64, seq: u64) -> ReqKey {
        ReqKey { conn: crate::capture::ConnId { sock: conn, gen: 1 }, stream: seq }
    }

    fn done(l: &mut Linker, k: ReqKey, conn: ConnMeta) -> Option<Identity> {
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
            },
            tid: 0,
        };
        l.exchange_done(&rec)
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
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[("traceparent", TP)]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[]), 0);
        l.request_started(key(3, 0), &backend_in(), 21, &req(&[]), 0);
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
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[]), 100);
        l.request_started(key(2, 1), &proxy_out(), 11, &req(&[]), 900);
        l.request_started(key(3, 1), &backend_in(), 21, &req(&[]), 900);
        let backend = done(&mut l, key(3, 1), backend_in()).unwrap();
        let first = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let second = done(&mut l, key(2, 1), proxy_out()).unwrap();
        assert_eq!(backend.link, LinkKind::Socket);
        assert_eq!(backend.parent_span_id, second.span_id);
        assert_ne!(backend.parent_span_id, first.span_id);
        // A server request with no client request at its position is not guessed.
        l.request_started(key(2, 2), &proxy_out(), 11, &req(&[]), 1700);
        l.request_started(key(3, 3), &backend_in(), 21, &req(&[]), 2500);
        assert_eq!(done(&mut l, key(3, 3), backend_in()).unwrap().link, LinkKind::None);
    }

    #[test]
    fn socket_link_when_the_server_side_is_seen_first() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[]), 0);
        // The backend's read reaches the agent before the proxy's write.
        l.request_started(key(3, 0), &backend_in(), 21, &req(&[]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[]), 0);
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
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[]), 0);
        let first = done(&mut l, key(1, 0), proxy_in()).unwrap();
        l.request_started(key(1, 1), &proxy_in(), 11, &req(&[]), 1);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[]), 0);
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let second = done(&mut l, key(1, 1), proxy_in()).unwrap();
        assert_eq!(call.parent_span_id, second.span_id);
        assert_ne!(call.parent_span_id, first.span_id);
        // A call after the response went out belongs to no request.
        l.request_started(key(2, 1), &proxy_out(), 11, &req(&[]), 1);
        assert_eq!(done(&mut l, key(2, 1), proxy_out()).unwrap().link, LinkKind::None);
    }

    #[test]
    fn thread_pool_links_per_thread() {
        let mut l = Linker::default();
        let a = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5001");
        let b = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5002");
        l.request_started(key(1, 0), &a, 11, &req(&[]), 0);
        l.request_started(key(4, 0), &b, 12, &req(&[]), 0);
        let out_b = meta(1, Role::Client, "127.0.0.1:6002", "127.0.0.1:90");
        let out_a = meta(1, Role::Client, "127.0.0.1:6001", "127.0.0.1:90");
        l.request_started(key(5, 0), &out_b, 12, &req(&[]), 0);
        l.request_started(key(6, 0), &out_a, 11, &req(&[]), 0);
        let call_b = done(&mut l, key(5, 0), out_b).unwrap();
        let call_a = done(&mut l, key(6, 0), out_a).unwrap();
        let srv_a = done(&mut l, key(1, 0), a).unwrap();
        let srv_b = done(&mut l, key(4, 0), b).unwrap();
        assert_eq!(call_a.parent_span_id, srv_a.span_id);
        assert_eq!(call_b.parent_span_id, srv_b.span_id);
        assert_ne!(srv_a.trace_id, srv_b.trace_id);
    }

    #[test]
    fn an_event_loop_with_two_requests_in_flight_is_not_guessed() {
        let mut l = Linker::default();
        let before = stats::global().get(Counter::LinkAmbiguousThread);
        let a = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5001");
        let b = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5002");
        l.request_started(key(1, 0), &a, 11, &req(&[]), 0);
        l.request_started(key(4, 0), &b, 11, &req(&[]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[]), 0);
        assert_eq!(done(&mut l, key(2, 0), proxy_out()).unwrap().link, LinkKind::None);
        assert!(stats::global().get(Counter::LinkAmbiguousThread) > before);
    }

    #[test]
    fn a_handler_on_another_thread_links_to_the_only_request_of_its_process() {
        let mut l = Linker::default();
        // Read on thread 11, handled on thread 31 (grpcio's completion queue and pool).
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[]), 0);
        l.request_started(key(2, 0), &proxy_out(), 31, &req(&[]), 0);
        let call = done(&mut l, key(2, 0), proxy_out()).unwrap();
        let server = done(&mut l, key(1, 0), proxy_in()).unwrap();
        assert_eq!(call.link, LinkKind::Process);
        assert_eq!((call.trace_id, call.parent_span_id), (server.trace_id, server.span_id));
        // Two requests in flight in the process: no parent is guessed.
        let other = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5009");
        l.request_started(key(1, 1), &proxy_in(), 11, &req(&[]), 1);
        l.request_started(key(7, 0), &other, 12, &req(&[]), 0);
        l.request_started(key(2, 1), &proxy_out(), 31, &req(&[]), 1);
        assert_eq!(done(&mut l, key(2, 1), proxy_out()).unwrap().link, LinkKind::None);
    }

    #[test]
    fn a_proxy_passing_the_header_on_is_legacy_and_linked_by_socket() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[("traceparent", TP)]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[("traceparent", TP)]), 0);
        l.request_started(key(3, 0), &backend_in(), 21, &req(&[("traceparent", TP)]), 0);
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
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[("traceparent", sdk_parent)]), 0);
        assert!(l.is_instrumented(1));
        l.request_started(key(3, 0), &backend_in(), 21, &req(&[("traceparent", sdk_parent)]), 0);
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
        l.observe_process(1, &["svc-a", "python3"]);
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[]), 0);
        assert_eq!(done(&mut l, key(1, 0), proxy_in()), None);
    }

    #[test]
    fn header_and_socket_disagreeing_is_counted_and_the_header_wins() {
        let mut l = Linker::default();
        let before = stats::global().get(Counter::LinkHeaderSocketDisagree);
        // Two requests in flight on one thread: the call cannot be thread-linked, so
        // its own trace differs from the header it passes on.
        let other = meta(1, Role::Server, "127.0.0.1:80", "127.0.0.1:5009");
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[("traceparent", TP)]), 0);
        l.request_started(key(7, 0), &other, 11, &req(&[]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[("traceparent", TP)]), 0);
        l.request_started(key(3, 0), &backend_in(), 21, &req(&[("traceparent", TP)]), 0);
        let backend = done(&mut l, key(3, 0), backend_in()).unwrap();
        assert_eq!(backend.link, LinkKind::Header);
        assert_eq!(crate::span::hex(&backend.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(stats::global().get(Counter::LinkHeaderSocketDisagree) > before);
    }

    #[test]
    fn closed_connections_and_exited_processes_leave_nothing_behind() {
        let mut l = Linker::default();
        l.request_started(key(1, 0), &proxy_in(), 11, &req(&[("traceparent", TP)]), 0);
        l.request_started(key(2, 0), &proxy_out(), 11, &req(&[]), 0);
        l.connection_closed(crate::capture::ConnId { sock: 2, gen: 1 }, &proxy_out());
        l.connection_closed(crate::capture::ConnId { sock: 1, gen: 1 }, &proxy_in());
        l.process_exited(1);
        assert!(l.pending.is_empty() && l.per_conn.is_empty() && l.threads.is_empty() && l.processes.is_empty());
        assert!(l.peers.is_empty() && l.received.is_empty());
    }
}
