//! Connection table and stream reassembly: kernel events in, paired exchanges out.
//!
//! A connection is keyed by the kernel socket address plus the time it reached
//! ESTABLISHED (so a recycled `struct sock` is a new connection). Each connection owns a
//! protocol session that is fed its byte stream in order. Nothing here allocates per
//! event once a connection exists: payloads are borrowed from the ring buffer and the
//! output vector is reused by the caller.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ghostwire_common::{ConnEvent, DataEvent, Tuple, DIR_INGRESS, ROLE_CLIENT, ROLE_SERVER};

use crate::capture::Event;
use crate::protocol::http1::{self, Http1Session};
use crate::protocol::{Direction, Exchange, Request, Role, Timing};
use crate::stats::{self, Counter};

/// Who owns a connection and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub pid: u32,
    pub fd: i32,
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// A connection: kernel socket address and the time it reached ESTABLISHED.
pub type ConnKey = (u64, u64);

/// One request on one connection: the connection and the request's `seq` on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqKey {
    pub conn: ConnKey,
    pub seq: u64,
}

/// One request/response pair and the connection it travelled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRecord {
    pub key: ReqKey,
    pub conn: ConnMeta,
    pub exchange: Exchange,
    /// Thread whose syscall completed the exchange (server: wrote the response end).
    pub tid: u32,
}

/// What the connection table reports, in order.
pub trait ConnSink {
    /// A request's head was parsed (before its response exists). `tid` is the thread
    /// that read (server) or wrote (client) it.
    fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, tid: u32, request: &Request, t: Timing);
    /// A request was answered.
    fn exchange(&mut self, rec: ExchangeRecord);
    /// A connection ended (closed, or its process exited).
    fn connection_closed(&mut self, key: ConnKey, conn: &ConnMeta);
}

enum Proto {
    /// No payload seen yet.
    Undecided,
    Http1(Box<Http1Session>),
    /// Not a protocol ghostwire parses: its bytes are ignored.
    Opaque,
}

struct Conn {
    meta: ConnMeta,
    proto: Proto,
    /// The `seq` of the next request not yet reported as started.
    next_started: u64,
}

/// Upper bound on tracked connections; beyond it new connections are counted and ignored.
pub const DEFAULT_MAX_CONNS: usize = 65_536;

pub struct ConnTable {
    conns: HashMap<(u64, u64), Conn>,
    max_conns: usize,
    /// Reused output buffer of the parsers.
    scratch: Vec<Exchange>,
}

impl Default for ConnTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNS)
    }
}

impl ConnTable {
    #[must_use]
    pub fn new(max_conns: usize) -> Self {
        Self { conns: HashMap::with_capacity(1024.min(max_conns)), max_conns, scratch: Vec::new() }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Applies one kernel event, reporting started requests and exchanges to `sink`.
    pub fn on_event(&mut self, event: &Event<'_>, sink: &mut impl ConnSink) {
        match event {
            Event::Conn(ev) => self.on_conn(ev),
            Event::Data { header, payload } => self.on_data(header, payload, sink),
            Event::Close(ev) => {
                let t = Timing { enter_ns: ev.ts_ns, exit_ns: ev.ts_ns };
                let key = (ev.sock, ev.conn_gen);
                if let Some(conn) = self.conns.remove(&key) {
                    finish(key, conn, t, 0, &mut self.scratch, sink);
                }
            }
            Event::Exit(ev) => {
                let t = Timing { enter_ns: ev.ts_ns, exit_ns: ev.ts_ns };
                let keys: Vec<_> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.meta.pid == ev.tgid)
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    if let Some(conn) = self.conns.remove(&key) {
                        finish(key, conn, t, 0, &mut self.scratch, sink);
                    }
                }
            }
        }
    }

    fn on_conn(&mut self, ev: &ConnEvent) {
        let role = match ev.role {
            ROLE_SERVER => Role::Server,
            ROLE_CLIENT => Role::Client,
            _ => return,
        };
        let (local, peer) = addrs(&ev.tuple);
        let meta = ConnMeta { pid: ev.tgid, fd: ev.fd, role, local, peer };
        let key = (ev.sock, ev.conn_gen);
        if let Some(conn) = self.conns.get_mut(&key) {
            // Another process (or fd) now uses the same connection: keep its stream state.
            conn.meta = meta;
            return;
        }
        if self.conns.len() >= self.max_conns {
            stats::global()
                .drop_event(Counter::DropConnTableFull, format_args!("{local} -> {peer} pid {}", ev.tgid));
            return;
        }
        self.conns.insert(key, Conn { meta, proto: Proto::Undecided, next_started: 0 });
    }

    fn on_data(&mut self, h: &DataEvent, payload: &[u8], sink: &mut impl ConnSink) {
        let key = (h.sock, h.conn_gen);
        let Some(conn) = self.conns.get_mut(&key) else {
            stats::global().drop_event(
                Counter::DropUnknownConn,
                format_args!("pid {} fd {}: data for a connection never announced", h.tgid, h.fd),
            );
            return;
        };
        let dir = if h.direction == DIR_INGRESS { Direction::Ingress } else { Direction::Egress };
        let t = Timing { enter_ns: h.ts_enter_ns, exit_ns: h.ts_exit_ns };
        if matches!(conn.proto, Proto::Undecided) {
            if h.len == 0 {
                return;
            }
            conn.proto = if dir == conn.meta.role.request_direction()
                && http1::looks_like_request(payload)
            {
                Proto::Http1(Box::new(Http1Session::new(conn.meta.role)))
            } else {
                stats::global().incr(Counter::ConnsNotHttp);
                Proto::Opaque
            };
        }
        let Proto::Http1(session) = &mut conn.proto else { return };
        let done = &mut self.scratch;
        if h.len == 0 {
            session.eof(dir, t, done);
        } else if let Err(e) = session.feed(dir, payload, h.len as usize, t, done) {
            stats::global().drop_event(
                Counter::DropParseError,
                format_args!("pid {} {} -> {}: {e}", conn.meta.pid, conn.meta.local, conn.meta.peer),
            );
        }
        // Requests whose head just completed: report them before any exchange, so the
        // linker knows a request is in progress while the process handles it.
        if dir == conn.meta.role.request_direction() {
            for (seq, request, first) in session.started_requests(conn.next_started) {
                sink.request_started(ReqKey { conn: key, seq }, &conn.meta, h.tid, request, first);
                conn.next_started = seq + 1;
            }
            conn.next_started = conn.next_started.max(session.next_seq());
        }
        for exchange in done.drain(..) {
            let rec = ExchangeRecord { key: ReqKey { conn: key, seq: exchange.seq }, conn: conn.meta, exchange, tid: h.tid };
            sink.exchange(rec);
        }
    }
}

/// A connection ends: complete what its end completes, count what stays unanswered.
fn finish(key: ConnKey, conn: Conn, t: Timing, tid: u32, done: &mut Vec<Exchange>, sink: &mut impl ConnSink) {
    if let Proto::Http1(mut session) = conn.proto {
        // The end of the stream delimits a response body sent without a length.
        let response_dir = match conn.meta.role {
            Role::Server => Direction::Egress,
            Role::Client => Direction::Ingress,
        };
        session.eof(response_dir, t, done);
        let pending = session.pending_requests();
        if pending > 0 {
            stats::global().add(Counter::DropUnansweredRequest, pending as u64);
        }
        for exchange in done.drain(..) {
            let rec = ExchangeRecord { key: ReqKey { conn: key, seq: exchange.seq }, conn: conn.meta, exchange, tid };
            sink.exchange(rec);
        }
    }
    sink.connection_closed(key, &conn.meta);
}

/// (local, peer) socket addresses of a kernel tuple. IPv4-mapped IPv6 addresses are
/// shown as IPv4.
#[must_use]
pub fn addrs(t: &Tuple) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(ip(t.family, &t.saddr), t.sport), SocketAddr::new(ip(t.family, &t.daddr), t.dport))
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == 2 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// Established TCP connections listed in `/proc/net/tcp` and `tcp6` (the agent's network
/// namespace): counted at start-up because they are never traced.
#[must_use]
pub fn count_established_tcp(proc_root: &str) -> u64 {
    const ESTABLISHED: &str = "01";
    ["net/tcp", "net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("{proc_root}/{f}")).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some(ESTABLISHED))
                .count() as u64
        })
        .sum()
}
