//! Connection table and stream reassembly: capture events in, started requests and
//! paired exchanges out.
//!
//! A connection is keyed by its [`ConnId`] (kernel socket address + when the kernel
//! started tracking it). Each connection owns a protocol [`Session`] (HTTP/1, HTTP/2;
//! detected from its first bytes) that is fed its byte stream in order; nothing here
//! knows what is inside. Every data event carries its stream offset, so a lost record
//! is noticed at the next one of its direction: the session is told
//! ([`Session::lost`]) and resynchronises, and the loss is counted.
//!
//! Connections the kernel first saw mid-stream (opened before the agent started) get
//! their role from the listening ports of their namespace ([`listen`]), failing that
//! from the first message seen, and a session that never builds an exchange from a
//! message whose beginning it missed.
//!
//! Nothing here allocates per event once a connection exists: payloads are borrowed
//! from the ring buffer and the output vector is reused.
pub mod listen;

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::capture::{Conn as ConnEvent, ConnId, Data, Event, Listen, Payload, State, StateChange};
use crate::protocol::session::{self, Detected, Session};
use crate::protocol::{Direction, Exchange, Output, Request, Role, Timing};
use crate::stats::{self, Counter};

pub use listen::ListenTable;

/// Who owns a connection and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub pid: u32,
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Network namespace inode.
    pub netns: u32,
}

/// A connection's identity.
pub type ConnKey = ConnId;

/// One request on one connection: the connection and the request's stream on it
/// (HTTP/1: its position on the connection; HTTP/2: its stream id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqKey {
    pub conn: ConnKey,
    pub stream: u64,
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
    /// that read (server) or wrote (client) it; `wire_key` names the request the same way
    /// at both ends of the connection ([`Session::wire_key`]).
    fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, tid: u32, request: &Request, wire_key: u64);
    /// A request was answered.
    fn exchange(&mut self, rec: ExchangeRecord);
    /// A connection ended.
    fn connection_closed(&mut self, key: ConnKey, conn: &ConnMeta);
}

/// How many syscalls of a connection joined mid-stream are searched for a message
/// start before it is taken as not HTTP.
const MIDSTREAM_BUDGET: u16 = 64;

enum Proto {
    /// No message start seen yet. `budget`: syscalls left to find one.
    Undecided {
        budget: u16,
    },
    Known(Session),
    /// Not a protocol ghostwire parses: its bytes are ignored.
    Opaque,
}

struct Conn {
    meta: ConnMeta,
    /// `None` until known (a connection joined mid-stream on a port not listening).
    role: Option<Role>,
    proto: Proto,
    /// The beginning of the byte stream was not seen.
    midstream: bool,
    /// Next expected stream offset per direction (ingress, egress); `None` until the
    /// first record of a connection joined mid-stream.
    expect: [Option<u64>; 2],
    /// Kernel time of the last event, to pick a victim when the table is full.
    last_ns: u64,
    /// TCP sequence number of stream offset 0, per direction.
    tcp_seq: [u32; 2],
}

/// Upper bound on tracked connections; beyond it the least recently active is dropped.
pub const DEFAULT_MAX_CONNS: usize = 65_536;

pub struct ConnTable {
    conns: HashMap<ConnKey, Conn>,
    max_conns: usize,
    listening: ListenTable,
    /// Reused output buffer of the parsers.
    scratch: Output,
}

impl Default for ConnTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNS, ListenTable::default())
    }
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl ConnTable {
    #[must_use]
    pub fn new(max_conns: usize, listening: ListenTable) -> Self {
        Self { conns: HashMap::with_capacity(1024.min(max_conns)), max_conns, listening, scratch: Output::default() }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Applies one capture event, reporting started requests and exchanges to `sink`.
    pub fn on_event(&mut self, event: &Event<'_>, sink: &mut impl ConnSink) {
        match event {
            Event::Conn(ev) => self.on_conn(ev, sink),
            Event::Data(d) => self.on_data(d, sink),
            Event::State(s) => self.on_state(s, sink),
            Event::Listen(Listen { netns, port, listening }) => self.listening.set(*netns, *port, *listening),
            // Its sockets close by themselves (and tell); a socket it shared lives on.
            Event::Exit { .. } => {}
            // TODO(tls): bind the session's plaintext to its connection.
            Event::TlsBind { .. } | Event::Exec { .. } => {}
        }
    }

    fn on_conn(&mut self, ev: &ConnEvent, sink: &mut impl ConnSink) {
        let role = ev.role.or_else(|| self.listening.is_listening(ev.netns, ev.local.port()).then_some(Role::Server));
        if let Some(conn) = self.conns.get_mut(&ev.conn) {
            // Another process now uses the connection (inherited, passed): same stream.
            conn.meta.pid = ev.pid;
            conn.last_ns = ev.ts_ns;
            return;
        }
        if self.conns.len() >= self.max_conns {
            self.evict_idlest(sink);
        }
        if ev.midstream {
            stats::global().incr(Counter::ConnsMidstream);
        }
        let meta = ConnMeta {
            pid: ev.pid,
            role: role.unwrap_or(Role::Client),
            local: ev.local,
            peer: ev.peer,
            netns: ev.netns,
        };
        let start = if ev.midstream { None } else { Some(0) };
        self.conns.insert(
            ev.conn,
            Conn {
                meta,
                role,
                proto: Proto::Undecided { budget: MIDSTREAM_BUDGET },
                midstream: ev.midstream,
                expect: [start; 2],
                last_ns: ev.ts_ns,
                tcp_seq: ev.tcp_seq,
            },
        );
    }

    /// The table is full: the connection with the oldest activity goes (its close was
    /// probably lost). A scan, but only when full.
    fn evict_idlest(&mut self, sink: &mut impl ConnSink) {
        let Some(key) = self.conns.iter().min_by_key(|(_, c)| c.last_ns).map(|(k, _)| *k) else { return };
        if let Some(conn) = self.conns.remove(&key) {
            stats::global().drop_event(
                Counter::DropConnTableFull,
                format_args!("{} -> {} pid {}", conn.meta.local, conn.meta.peer, conn.meta.pid),
            );
            let t = Timing { enter_ns: conn.last_ns, exit_ns: conn.last_ns };
            finish(key, conn, t, &mut self.scratch, sink);
        }
    }

    fn on_state(&mut self, s: &State, sink: &mut impl ConnSink) {
        let t = Timing { enter_ns: s.ts_ns, exit_ns: s.ts_ns };
        match s.change {
            StateChange::Closed => {
                if let Some(conn) = self.conns.remove(&s.conn) {
                    finish(s.conn, conn, t, &mut self.scratch, sink);
                }
            }
            StateChange::SendClosed => {
                let Some(conn) = self.conns.get_mut(&s.conn) else { return };
                conn.last_ns = s.ts_ns;
                if let Proto::Known(session) = &mut conn.proto {
                    session.eof(Direction::Egress, t, &mut self.scratch);
                    report(s.conn, conn, 0, &mut self.scratch, sink);
                }
            }
        }
    }

    fn on_data(&mut self, d: &Data<'_>, sink: &mut impl ConnSink) {
        let Some(conn) = self.conns.get_mut(&d.conn) else {
            stats::global().drop_event(
                Counter::DropUnknownConn,
                format_args!("pid {}: data for a connection never announced", d.pid),
            );
            return;
        };
        conn.last_ns = d.ts_ns;
        let t = Timing { enter_ns: d.ts_ns, exit_ns: d.ts_ns };
        let i = dir_index(d.dir);
        let lost = conn.expect[i].is_some_and(|e| e != d.offset);
        conn.expect[i] = Some(d.offset + u64::from(d.len));
        if lost {
            stats::global().drop_event(
                Counter::DropCaptureGap,
                format_args!(
                    "pid {} {} -> {}: {:?} bytes missing before offset {}",
                    conn.meta.pid, conn.meta.local, conn.meta.peer, d.dir, d.offset
                ),
            );
            match &mut conn.proto {
                Proto::Known(session) => {
                    let dropped = session.lost(d.dir, d.unreported_ns);
                    stats::global().add(Counter::DropLostRequest, dropped as u64);
                }
                // Its start was lost: look for a message start as on a connection joined
                // mid-stream.
                Proto::Undecided { .. } => conn.midstream = true,
                Proto::Opaque => {}
            }
        }
        if d.is_eof() {
            if let Proto::Known(session) = &mut conn.proto {
                session.eof(d.dir, t, &mut self.scratch);
                report(d.conn, conn, d.tid, &mut self.scratch, sink);
            }
            return;
        }
        let (prefix, tail) = match d.payload {
            Payload::Copied => (d.prefix, d.tail),
            Payload::NoUserBuffer | Payload::ReadFailed => (&[][..], &[][..]),
        };
        let gap = u64::from(d.len) - prefix.len() as u64 - tail.len() as u64;
        if let Proto::Undecided { budget } = &mut conn.proto {
            let detected = session::detect(conn.role, conn.midstream, d.dir, prefix);
            match Session::new(detected, conn.midstream) {
                Some((session, role)) => {
                    conn.role = Some(role);
                    conn.meta.role = role;
                    log::debug!(
                        "pid {} {} -> {}: {} as {role:?}",
                        conn.meta.pid,
                        conn.meta.local,
                        conn.meta.peer,
                        session.name()
                    );
                    conn.proto = Proto::Known(session);
                }
                None if detected == Detected::Wait && *budget > 1 => {
                    *budget -= 1;
                    return;
                }
                None => {
                    stats::global().incr(Counter::ConnsNotHttp);
                    // Every kind of "no" tried the bytes as HTTP/2 frames too, except a
                    // start line on the wrong side.
                    if detected != Detected::Opaque {
                        stats::global().incr(Counter::H2DetectRejected);
                    }
                    conn.proto = Proto::Opaque;
                    return;
                }
            }
        }
        let Proto::Known(session) = &mut conn.proto else { return };
        let role = conn.meta.role;
        if let Err(e) = session.feed_at(role, d.dir, d.offset, prefix, gap, tail, t, &mut self.scratch) {
            match e {
                session::Error::Http1(_) => stats::global().drop_event(
                    if e.is_half_seen() { Counter::DropHalfSeen } else { Counter::DropParseError },
                    format_args!("pid {} {} -> {}: {e}", conn.meta.pid, conn.meta.local, conn.meta.peer),
                ),
                // Counted by the session, which knows what it reset.
                session::Error::Http2(_) => {
                    log::debug!("pid {} {} -> {}: {e}", conn.meta.pid, conn.meta.local, conn.meta.peer);
                }
            }
        }
        // Requests whose head just completed: report them before any exchange, so the
        // linker knows a request is in progress while the process handles it.
        let base = conn.tcp_seq[dir_index(role.request_direction())];
        let Output { started, done } = &mut self.scratch;
        for started in started.drain(..) {
            // A stream that ended in the very call that started it (reset at once) is
            // already among the exchanges done.
            let request = session
                .request(started.stream)
                .or_else(|| done.iter().find(|e| e.seq == started.stream).map(|e| &e.request));
            let Some(request) = request else { continue };
            if request.truncated {
                stats::global().incr(Counter::HeadTruncated);
            }
            let wire_key = session.wire_key(&started, base);
            sink.request_started(ReqKey { conn: d.conn, stream: started.stream }, &conn.meta, d.tid, request, wire_key);
        }
        report(d.conn, conn, d.tid, &mut self.scratch, sink);
    }
}

/// Hands the exchanges a session completed to the sink (requests started without their
/// head at hand, after an eof or a close, are dropped: they have no span yet).
fn report(key: ConnKey, conn: &Conn, tid: u32, out: &mut Output, sink: &mut impl ConnSink) {
    out.started.clear();
    for exchange in out.done.drain(..) {
        if exchange.response.truncated {
            stats::global().incr(Counter::HeadTruncated);
        }
        let rec = ExchangeRecord { key: ReqKey { conn: key, stream: exchange.seq }, conn: conn.meta, exchange, tid };
        sink.exchange(rec);
    }
}

/// A connection ends: complete what its end completes, count what stays unanswered.
fn finish(key: ConnKey, mut conn: Conn, t: Timing, out: &mut Output, sink: &mut impl ConnSink) {
    if let Proto::Known(session) = &mut conn.proto {
        let pending = session.close(conn.meta.role, t, out);
        if pending > 0 {
            stats::global().add(Counter::DropUnansweredRequest, pending as u64);
        }
        report(key, &conn, 0, out, sink);
    }
    sink.connection_closed(key, &conn.meta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Payload;

    #[derive(Default)]
    struct Sink {
        started: Vec<(ReqKey, ConnMeta, String)>,
        exchanges: Vec<ExchangeRecord>,
        closed: Vec<ConnKey>,
    }

    impl ConnSink for Sink {
        fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, _tid: u32, request: &Request, _wire_key: u64) {
            self.started.push((key, *conn, request.target.clone()));
        }
        fn exchange(&mut self, rec: ExchangeRecord) {
            self.exchanges.push(rec);
        }
        fn connection_closed(&mut self, key: ConnKey, _conn: &ConnMeta) {
            self.closed.push(key);
        }
    }

    const C: ConnId = ConnId { sock: 0xfeed, gen: 7 };

    fn conn_event(role: Option<Role>, midstream: bool, local_port: u16) -> Event<'static> {
        Event::Conn(ConnEvent {
            conn: C,
            pid: 42,
            tid: 43,
            netns: 1,
            local: SocketAddr::from(([127, 0, 0, 1], local_port)),
            peer: SocketAddr::from(([127, 0, 0, 1], 50000)),
            role,
            midstream,
            tcp_seq: [1000, 2000],
            comm: [0; 16],
            ppid: 1,
            ts_ns: 1,
        })
    }

    thread_local! {
        static CLOCK: std::cell::Cell<u64> = const { std::cell::Cell::new(10) };
    }

    /// Events in the order of a test happen in that order.
    fn now() -> u64 {
        CLOCK.with(|c| {
            c.set(c.get() + 1);
            c.get()
        })
    }

    fn data(dir: Direction, offset: u64, bytes: &[u8]) -> Event<'_> {
        Event::Data(Data {
            tls: None,
            conn: C,
            pid: 42,
            tid: 43,
            dir,
            offset,
            unreported_ns: 0,
            len: u32::try_from(bytes.len()).unwrap(),
            ts_ns: now(),
            prefix: bytes,
            tail: &[],
            payload: Payload::Copied,
        })
    }

    const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn run(events: &[Event<'_>], listening: ListenTable) -> Sink {
        let mut table = ConnTable::new(16, listening);
        let mut sink = Sink::default();
        for e in events {
            table.on_event(e, &mut sink);
        }
        sink
    }

    #[test]
    fn a_new_connection_pairs_requests_in_order() {
        let r = REQ.len() as u64;
        let p = RESP.len() as u64;
        let sink = run(
            &[
                conn_event(Some(Role::Server), false, 8080),
                data(Direction::Ingress, 0, REQ),
                data(Direction::Egress, 0, RESP),
                data(Direction::Ingress, r, REQ),
                data(Direction::Egress, p, RESP),
            ],
            ListenTable::default(),
        );
        assert_eq!(sink.started.len(), 2);
        assert_eq!(sink.exchanges.len(), 2);
        assert!(sink.exchanges.iter().all(|e| e.exchange.response.status == 200 && e.conn.pid == 42));
    }

    #[test]
    fn a_jump_in_offsets_is_a_loss_and_nothing_is_mispaired() {
        let before = stats::global().get(Counter::DropCaptureGap);
        let r = REQ.len() as u64;
        let p = RESP.len() as u64;
        let sink = run(
            &[
                conn_event(Some(Role::Server), false, 8080),
                data(Direction::Ingress, 0, REQ),
                // The response to the first request was lost: the next response record
                // starts further on.
                data(Direction::Ingress, r, REQ),
                data(Direction::Egress, p, RESP),
                data(Direction::Ingress, 2 * r, REQ),
                data(Direction::Egress, 2 * p, RESP),
            ],
            ListenTable::default(),
        );
        assert!(stats::global().get(Counter::DropCaptureGap) > before);
        // Only the request seen after the loss is paired, with its own response.
        assert_eq!(sink.exchanges.len(), 1, "{:?}", sink.exchanges);
        assert_eq!(sink.exchanges[0].key.stream, 2);
    }

    #[test]
    fn midstream_role_comes_from_listening_ports() {
        let mut listening = ListenTable::default();
        listening.set(1, 8080, true);
        let sink = run(
            &[
                conn_event(None, true, 8080),
                // The rest of a response body in flight when the agent started.
                data(Direction::Egress, 5000, b"tail of an old body"),
                data(Direction::Ingress, 9000, REQ),
                data(Direction::Egress, 5019, RESP),
            ],
            listening,
        );
        assert_eq!(sink.exchanges.len(), 1);
        assert_eq!(sink.exchanges[0].conn.role, Role::Server);
    }

    #[test]
    fn midstream_role_without_a_listener_comes_from_the_first_message() {
        let sink = run(
            &[conn_event(None, true, 40000), data(Direction::Egress, 100, REQ), data(Direction::Ingress, 700, RESP)],
            ListenTable::default(),
        );
        assert_eq!(sink.exchanges.len(), 1);
        assert_eq!(sink.exchanges[0].conn.role, Role::Client);
    }

    #[test]
    fn close_finishes_and_reports() {
        let sink = run(
            &[
                conn_event(Some(Role::Client), false, 40000),
                data(Direction::Egress, 0, REQ),
                data(Direction::Ingress, 0, b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
                Event::State(State { conn: C, ts_ns: 99, change: StateChange::Closed }),
            ],
            ListenTable::default(),
        );
        assert_eq!(sink.exchanges.len(), 1);
        assert_eq!(sink.exchanges[0].exchange.response.body_len, 11);
        assert_eq!(sink.closed, vec![C]);
    }

    #[test]
    fn a_forked_child_takes_the_connection_over() {
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        table.on_event(&conn_event(Some(Role::Server), false, 8080), &mut sink);
        let Event::Conn(mut child) = conn_event(Some(Role::Server), false, 8080) else { unreachable!() };
        child.pid = 777;
        table.on_event(&Event::Conn(child), &mut sink);
        table.on_event(&data(Direction::Ingress, 0, REQ), &mut sink);
        table.on_event(&data(Direction::Egress, 0, RESP), &mut sink);
        assert_eq!(sink.exchanges[0].conn.pid, 777);
    }

    /// One HTTP/2 frame.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HEADERS with END_STREAM and END_HEADERS: `GET /` (static table only, `:authority`
    /// literal) or `:status 200`.
    fn h2_request(stream: u32) -> Vec<u8> {
        frame(1, 0x5, stream, b"\x82\x84\x86\x01\x01x")
    }
    fn h2_response(stream: u32) -> Vec<u8> {
        frame(1, 0x5, stream, b"\x88")
    }

    #[test]
    fn http2_requests_are_keyed_by_stream_id() {
        let mut client = crate::protocol::http2::PREFACE.to_vec();
        client.extend(frame(4, 0, 0, &[]));
        client.extend(h2_request(1));
        client.extend(h2_request(3));
        let mut server = frame(4, 0, 0, &[]);
        // Answered out of order: the stream id pairs them, not the order.
        server.extend(h2_response(3));
        server.extend(h2_response(1));
        let sink = run(
            &[
                conn_event(Some(Role::Server), false, 8080),
                data(Direction::Ingress, 0, &client),
                data(Direction::Egress, 0, &server),
            ],
            ListenTable::default(),
        );
        let started: Vec<u64> = sink.started.iter().map(|(k, _, _)| k.stream).collect();
        assert_eq!(started, vec![1, 3]);
        let done: Vec<u64> = sink.exchanges.iter().map(|e| e.key.stream).collect();
        assert_eq!(done, vec![3, 1]);
        assert!(sink.exchanges.iter().all(|e| e.exchange.response.status == 200 && e.exchange.h2.is_some()));
    }

    #[test]
    fn an_h2c_upgrade_continues_as_http2_on_the_same_connection() {
        let upgrade = b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
        let mut switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
        // The server's SETTINGS and the response to the upgrade request (stream 1) come
        // in the same read as the 101.
        switched.extend(frame(4, 0, 0, &[]));
        switched.extend(h2_response(1));
        let mut preface = crate::protocol::http2::PREFACE.to_vec();
        preface.extend(frame(4, 0, 0, &[]));
        let len = switched.len() as u64;
        let next = h2_request(3);
        let sink = run(
            &[
                conn_event(Some(Role::Client), false, 40000),
                data(Direction::Egress, 0, upgrade),
                data(Direction::Ingress, 0, &switched),
                data(Direction::Egress, upgrade.len() as u64, &preface),
                data(Direction::Egress, (upgrade.len() + preface.len()) as u64, &next),
                data(Direction::Ingress, len, &h2_response(3)),
            ],
            ListenTable::default(),
        );
        assert_eq!(sink.exchanges.len(), 2, "{:?}", sink.exchanges);
        let first = &sink.exchanges[0];
        // The upgrade request keeps the key it was started under.
        assert_eq!(first.key.stream, sink.started[0].0.stream);
        assert_eq!(first.exchange.request.target, "/up");
        assert_eq!(first.exchange.response.status, 200);
        assert!(first.exchange.h2.is_some());
        assert_eq!(sink.exchanges[1].key.stream, 3);
        assert_eq!(sink.exchanges[1].exchange.request.target, "/");
    }

    #[test]
    fn a_full_table_drops_the_idlest_connection() {
        let mut table = ConnTable::new(1, ListenTable::default());
        let mut sink = Sink::default();
        table.on_event(&conn_event(Some(Role::Server), false, 8080), &mut sink);
        let Event::Conn(mut other) = conn_event(Some(Role::Server), false, 8081) else { unreachable!() };
        other.conn = ConnId { sock: 1, gen: 1 };
        other.ts_ns = 5;
        table.on_event(&Event::Conn(other), &mut sink);
        assert_eq!(table.len(), 1);
        assert_eq!(sink.closed, vec![C]);
    }
}
