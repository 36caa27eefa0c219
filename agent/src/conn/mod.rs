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
//! TLS: a connection whose socket bytes start with a TLS record is ciphertext. It is
//! counted and scanned for its ServerHello (the version), never parsed. Its plaintext
//! comes from the OpenSSL uprobes as data events of its session (`Data::tls`); the
//! first one switches the connection to TLS mode: from then on its byte stream is the
//! plaintext (offsets as the uprobes count them, from 0 in each direction at both ends)
//! and its socket records are ignored. Plaintext of a session whose connection is not
//! known yet (memory-BIO stacks: Node, Python asyncio) is held, bounded, until the
//! kernel binds the session ([`Event::TlsBind`]).
//!
//! Nothing here allocates per event once a connection exists: payloads are borrowed
//! from the ring buffer and the output vector is reused (held TLS plaintext excepted:
//! it must outlive its ring-buffer record).
pub mod listen;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::capture::{Conn as ConnEvent, ConnId, Data, Event, Listen, Payload, State, StateChange};
use crate::protocol::session::{self, Detected, Session};
use crate::protocol::tls::{self, Hello, Scanner, Version};
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
    /// `Some` for a TLS connection whose plaintext the uprobes report.
    pub tls: Option<TlsInfo>,
    /// Client connections: the thread that called `connect()` and when (`None` for
    /// accepted connections and those opened before the agent started).
    pub opened_by: Option<Opener>,
}

/// Who opened a client connection: the linker attributes the connection's first
/// request to what that thread was handling at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opener {
    pub tid: u32,
    /// Kernel monotonic time of the `connect()` call.
    pub ts_ns: u64,
}

/// What the spans of a TLS connection say about its TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// From the ServerHello, when the capture saw it (not when the session's handshake
    /// ran inside the first `SSL_read`/`SSL_write`, or before the agent started).
    pub version: Option<Version>,
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
    /// A request's head was parsed (before its response exists).
    fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, start: Start, request: &Request);
    /// A request was answered.
    fn exchange(&mut self, rec: ExchangeRecord);
    /// A connection ended.
    fn connection_closed(&mut self, key: ConnKey, conn: &ConnMeta);
    /// Everything one capture event caused has been reported (several exchanges
    /// completed by one syscall are one batch).
    fn batch_end(&mut self) {}
}

/// Where and when a request's head was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The thread that read (server) or wrote (client) the syscall completing the head.
    pub tid: u32,
    /// Kernel monotonic time of that syscall.
    pub ts_ns: u64,
    /// Names the request the same way at both ends of the connection
    /// ([`Session::wire_key`]).
    pub wire_key: u64,
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
    /// TLS ciphertext (socket bytes that are TLS records): scanned for the version and
    /// for application data, never parsed.
    Tls(Box<Scanner>),
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
    /// The kernel saw the connection opened before it was tracked (`midstream` may also
    /// become true after a loss).
    opened_midstream: bool,
    /// The thread name of the process that uses it (for the undecrypted-TLS log line).
    comm: [u8; 16],
    /// The TLS session (`SSL*`) whose plaintext is the connection's byte stream; 0
    /// until the first plaintext.
    tls_ssl: u64,
    /// Counted in `tls.conns` already.
    tls_counted: bool,
    /// XORed into HTTP/1 wire keys: 0, except for TLS sessions joined mid-stream, whose
    /// plaintext offsets start wherever each end's uprobes first saw them, so a key
    /// made of them must never match the other end's. Unique per connection (bit 62
    /// set: never equal to an unsalted key).
    wire_salt: u64,
}

/// Bounds on plaintext held until its session's connection is known.
const MAX_UNBOUND_SESSIONS: usize = 256;
const MAX_UNBOUND_BYTES: usize = 64 * 1024;
const MAX_UNBOUND_RECORDS: usize = ghostwire_common::TLS_UNBOUND_MAX_RECORDS as usize;
const UNBOUND_TTL_NS: u64 = 5_000_000_000;
/// Processes remembered as sending TLS that cannot be decrypted (counted once each).
const MAX_UNDECRYPTED_PIDS: usize = 4096;

/// One plaintext record held until its session is bound: a [`Data`] with its bytes.
struct HeldRecord {
    tid: u32,
    dir: Direction,
    offset: u64,
    unreported_ns: u64,
    len: u32,
    ts_ns: u64,
    payload: Payload,
    /// The captured prefix, then the captured tail.
    bytes: Vec<u8>,
    prefix_len: usize,
}

/// A TLS session's plaintext held until its connection is known.
struct Held {
    /// Kernel time of its first record.
    since_ns: u64,
    bytes: usize,
    records: Vec<HeldRecord>,
}

/// Upper bound on tracked connections; beyond it the least recently active is dropped.
pub const DEFAULT_MAX_CONNS: usize = 65_536;

/// Hashes the table's keys: kernel socket addresses and timestamps, which no peer
/// chooses, so the DoS-resistant default (SipHash, 2 % of the agent's CPU under load)
/// buys nothing here. One multiply-rotate per word (as rustc's FxHash).
#[derive(Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }
}

type KeyMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// TLS plaintext of sessions not yet bound to a connection, by process then `SSL*`: a
/// process's exit drops its sessions without looking at any other process's.
#[derive(Default)]
struct Unbound {
    by_pid: KeyMap<u32, KeyMap<u64, Held>>,
    /// Sessions held, all processes.
    sessions: usize,
    /// Sessions looked at by [`Unbound::remove_process`] (tests check it stays O(its own)).
    #[cfg(test)]
    visited: usize,
}

impl Unbound {
    fn is_empty(&self) -> bool {
        self.sessions == 0
    }

    fn get_mut(&mut self, pid: u32, ssl: u64) -> Option<&mut Held> {
        self.by_pid.get_mut(&pid)?.get_mut(&ssl)
    }

    fn insert(&mut self, pid: u32, ssl: u64, held: Held) -> &mut Held {
        let sessions = self.by_pid.entry(pid).or_default();
        if !sessions.contains_key(&ssl) {
            self.sessions += 1;
        }
        sessions.entry(ssl).or_insert(held)
    }

    fn remove(&mut self, pid: u32, ssl: u64) -> Option<Held> {
        let sessions = self.by_pid.get_mut(&pid)?;
        let held = sessions.remove(&ssl)?;
        if sessions.is_empty() {
            self.by_pid.remove(&pid);
        }
        self.sessions -= 1;
        Some(held)
    }

    /// Drops every session of `pid`, counting their records.
    fn remove_process(&mut self, pid: u32, why: &str) {
        let Some(sessions) = self.by_pid.remove(&pid) else { return };
        self.sessions -= sessions.len();
        for (ssl, held) in sessions {
            #[cfg(test)]
            {
                self.visited += 1;
            }
            count_unbound_drop(pid, ssl, &held, why);
        }
    }

    /// Drops the sessions `pred` selects, counting their records.
    fn retain(&mut self, mut keep: impl FnMut(&Held) -> bool, why: &str) {
        let mut dropped = 0;
        self.by_pid.retain(|&pid, sessions| {
            sessions.retain(|&ssl, held| {
                if keep(held) {
                    return true;
                }
                dropped += 1;
                count_unbound_drop(pid, ssl, held, why);
                false
            });
            !sessions.is_empty()
        });
        self.sessions -= dropped;
    }
}

fn count_unbound_drop(pid: u32, ssl: u64, held: &Held, why: &str) {
    stats::global().add(Counter::DropTlsUnbound, held.records.len() as u64);
    log::debug!(
        "{}: pid {pid} TLS session {ssl:#x}: {} plaintext records never bound to a connection: {why}",
        Counter::DropTlsUnbound.name(),
        held.records.len()
    );
}

pub struct ConnTable {
    conns: KeyMap<ConnKey, Conn>,
    max_conns: usize,
    listening: ListenTable,
    /// Reused output buffer of the parsers.
    scratch: Output,
    /// TLS plaintext of sessions not yet bound to a connection, per (pid, `SSL*`).
    unbound: Unbound,
    /// Processes already reported as sending TLS that cannot be decrypted.
    undecrypted: HashSet<u32>,
    /// Wire salts handed out so far.
    salts: u64,
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
        Self {
            conns: KeyMap::with_capacity_and_hasher(1024.min(max_conns), Default::default()),
            max_conns,
            listening,
            scratch: Output::default(),
            unbound: Unbound::default(),
            undecrypted: HashSet::new(),
            salts: 0,
        }
    }

    /// Periodic upkeep: plaintext held too long for a session never bound is dropped.
    /// `now_ns`: CLOCK_MONOTONIC, the kernel's event clock.
    pub fn tick(&mut self, now_ns: u64) {
        self.expire_unbound(now_ns);
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
            // Its sessions never bound now never will be.
            Event::Exit { pid, .. } => self.unbound.remove_process(*pid, "its process exited"),
            Event::TlsBind { pid, ssl, conn, .. } => self.on_tls_bind(*pid, *ssl, *conn, sink),
            Event::Exec { .. } => {}
        }
        sink.batch_end();
    }

    fn expire_unbound(&mut self, now_ns: u64) {
        if !self.unbound.is_empty() {
            self.unbound.retain(|h| now_ns.saturating_sub(h.since_ns) <= UNBOUND_TTL_NS, "held too long");
        }
    }

    /// Plaintext of a session whose connection is not known yet: keep a copy.
    fn hold(&mut self, d: &Data<'_>, ssl: u64) {
        self.expire_unbound(d.ts_ns);
        let size = d.prefix.len() + d.tail.len();
        if self.unbound.get_mut(d.pid, ssl).is_none() && self.unbound.sessions >= MAX_UNBOUND_SESSIONS {
            stats::global().drop_event(
                Counter::DropTlsUnbound,
                format_args!("pid {}: TLS session {ssl:#x}: {MAX_UNBOUND_SESSIONS} sessions wait already", d.pid),
            );
            return;
        }
        let held = self.unbound.insert(d.pid, ssl, Held { since_ns: d.ts_ns, bytes: 0, records: Vec::new() });
        if held.bytes + size > MAX_UNBOUND_BYTES || held.records.len() >= MAX_UNBOUND_RECORDS {
            stats::global().drop_event(
                Counter::DropTlsUnbound,
                format_args!("pid {}: TLS session {ssl:#x}: more plaintext than is held unbound", d.pid),
            );
            return;
        }
        held.bytes += size;
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(d.prefix);
        bytes.extend_from_slice(d.tail);
        held.records.push(HeldRecord {
            tid: d.tid,
            dir: d.dir,
            offset: d.offset,
            unreported_ns: d.unreported_ns,
            len: d.len,
            ts_ns: d.ts_ns,
            payload: d.payload,
            bytes,
            prefix_len: d.prefix.len(),
        });
    }

    /// Session `ssl` of `pid` runs over `conn`: its held plaintext is replayed, in order,
    /// as if it had carried `conn`.
    fn on_tls_bind(&mut self, pid: u32, ssl: u64, conn: ConnId, sink: &mut impl ConnSink) {
        let Some(held) = self.unbound.remove(pid, ssl) else { return };
        for r in &held.records {
            let (prefix, tail) = r.bytes.split_at(r.prefix_len);
            let d = Data {
                conn,
                tls: Some(ssl),
                pid,
                tid: r.tid,
                dir: r.dir,
                offset: r.offset,
                unreported_ns: r.unreported_ns,
                len: r.len,
                ts_ns: r.ts_ns,
                prefix,
                tail,
                payload: r.payload,
            };
            self.on_data(&d, sink);
        }
    }

    /// The first plaintext of session `ssl` on connection `key`: its byte stream is the
    /// plaintext from now on (see the module doc).
    fn enter_tls(&mut self, key: ConnKey, ssl: u64, t: Timing, sink: &mut impl ConnSink) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        let version = match &conn.proto {
            Proto::Tls(scanner) => scanner.version(),
            _ => conn.meta.tls.and_then(|t| t.version),
        };
        if let Proto::Known(session) = &mut conn.proto {
            // Plaintext parsed before the session started (STARTTLS-like): what it
            // left unanswered stays so.
            let pending = session.close(conn.meta.role, t, &mut self.scratch);
            stats::global().add(Counter::DropUnansweredRequest, pending as u64);
            report(key, conn, 0, &mut self.scratch, sink);
        }
        if !conn.tls_counted {
            conn.tls_counted = true;
            stats::global().incr(Counter::TlsConns);
        }
        if conn.tls_ssl == 0 {
            stats::global().incr(Counter::TlsDecryptedConns);
        }
        log::debug!(
            "pid {} {} -> {}: TLS session {ssl:#x}, version {}",
            conn.meta.pid,
            conn.meta.local,
            conn.meta.peer,
            version.map_or("unknown", Version::as_str)
        );
        conn.tls_ssl = ssl;
        conn.meta.tls = Some(TlsInfo { version });
        conn.midstream = conn.opened_midstream;
        conn.expect = [if conn.midstream { None } else { Some(0) }; 2];
        conn.proto = Proto::Undecided { budget: MIDSTREAM_BUDGET };
        // Both ends count the same plaintext bytes from 0.
        conn.tcp_seq = [0; 2];
        conn.wire_salt = if conn.midstream {
            self.salts += 1;
            (1 << 62) | ((self.salts & 0x3fff_ffff) << 32)
        } else {
            0
        };
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
            tls: None,
            opened_by: ev.opened_by,
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
                opened_midstream: ev.midstream,
                comm: ev.comm,
                tls_ssl: 0,
                tls_counted: false,
                wire_salt: 0,
            },
        );
    }

    /// The table is full: the sixteenth of its connections with the oldest activity go
    /// (their closes were probably lost, or they are idle). One scan of the table makes
    /// room for many new connections: evicting one per scan made every new connection
    /// cost a scan of 65,536 entries once the table was full (measured: 458–658 µs per
    /// new connection against 33–39 µs), and the agent fell behind the ring.
    fn evict_idlest(&mut self, sink: &mut impl ConnSink) {
        let n = (self.conns.len() / 16).max(1);
        let mut ages: Vec<(u64, ConnId)> = self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        if n < ages.len() {
            ages.select_nth_unstable(n - 1);
            ages.truncate(n);
        }
        for (_, key) in ages {
            if let Some(conn) = self.conns.remove(&key) {
                stats::global().drop_event(
                    Counter::DropConnTableFull,
                    format_args!("{} -> {} pid {}", conn.meta.local, conn.meta.peer, conn.meta.pid),
                );
                let t = Timing { enter_ns: conn.last_ns, exit_ns: conn.last_ns };
                finish(key, conn, t, &mut self.scratch, &mut self.undecrypted, sink);
            }
        }
    }

    fn on_state(&mut self, s: &State, sink: &mut impl ConnSink) {
        let t = Timing { enter_ns: s.ts_ns, exit_ns: s.ts_ns };
        match s.change {
            StateChange::Closed => {
                if let Some(conn) = self.conns.remove(&s.conn) {
                    finish(s.conn, conn, t, &mut self.scratch, &mut self.undecrypted, sink);
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
        if let Some(ssl) = d.tls {
            if d.conn.sock == 0 {
                self.hold(d, ssl);
                return;
            }
        }
        let t = Timing { enter_ns: d.ts_ns, exit_ns: d.ts_ns };
        if let (Some(ssl), Some(c)) = (d.tls, self.conns.get(&d.conn)) {
            if c.tls_ssl != ssl {
                self.enter_tls(d.conn, ssl, t, sink);
            }
        }
        let Some(conn) = self.conns.get_mut(&d.conn) else {
            stats::global().drop_event(
                Counter::DropUnknownConn,
                format_args!("pid {}: data for a connection never announced", d.pid),
            );
            return;
        };
        conn.last_ns = d.ts_ns;
        if d.tls.is_none() && conn.tls_ssl != 0 {
            // Ciphertext of a connection in TLS mode (the kernel reports the socket's
            // end of stream as plaintext too).
            if !d.is_eof() {
                stats::global().incr(Counter::TlsCiphertextRecords);
            }
            return;
        }
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
                Proto::Tls(scanner) => scanner.lost(d.dir),
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
        // Socket bytes that are TLS records: ciphertext (plaintext never is: TLS inside
        // TLS is not HTTP either, and is left to the detection below).
        if matches!(conn.proto, Proto::Undecided { .. }) && conn.tls_ssl == 0 && tls::is_record_start(prefix) {
            conn.proto = Proto::Tls(Box::default());
            if !conn.tls_counted {
                conn.tls_counted = true;
                stats::global().incr(Counter::TlsConns);
            }
        }
        if let Proto::Tls(scanner) = &mut conn.proto {
            scanner.feed(d.dir, prefix, gap, tail);
            stats::global().incr(Counter::TlsCiphertextRecords);
            if conn.midstream && scanner.desynced() && scanner.hello() == Hello::NotSeen {
                // Joined mid-stream, bytes that only looked like a record: look for a
                // message start again (it stays counted in tls.conns).
                log::debug!("pid {} {} -> {}: not TLS after all", conn.meta.pid, conn.meta.local, conn.meta.peer);
                conn.proto = Proto::Undecided { budget: MIDSTREAM_BUDGET };
            }
            return;
        }
        if let Proto::Undecided { budget } = &mut conn.proto {
            let ports = (conn.meta.local.port(), conn.meta.peer.port());
            let detected = session::detect(conn.role, conn.midstream, ports, d.dir, prefix);
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
                None if detected == Detected::DbServer => {
                    stats::global().incr(Counter::DbServerConns);
                    conn.proto = Proto::Opaque;
                    return;
                }
                None => {
                    stats::global().incr(Counter::ConnsNotHttp);
                    if conn.tls_ssl != 0 {
                        stats::global().incr(Counter::TlsPlaintextNotHttp);
                    }
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
            let mut wire_key = session.wire_key(&started, base);
            if matches!(session, Session::Http1(_)) {
                // HTTP/2 keys are stream ids: both ends agree even mid-stream.
                wire_key ^= conn.wire_salt;
            }
            // A database call is reported once answered: timed at its request's last byte.
            let ts_ns = if matches!(session, Session::Db(_)) { started.first.enter_ns } else { d.ts_ns };
            let start = Start { tid: d.tid, ts_ns, wire_key };
            sink.request_started(ReqKey { conn: d.conn, stream: started.stream }, &conn.meta, start, request);
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
        if exchange.response.incomplete {
            stats::global().incr(Counter::ResponseIncomplete);
        }
        let rec = ExchangeRecord { key: ReqKey { conn: key, stream: exchange.seq }, conn: conn.meta, exchange, tid };
        sink.exchange(rec);
    }
}

/// A connection ends: complete what its end completes, count what stays unanswered.
/// `undecrypted`: the processes already reported as sending TLS that ghostwire cannot
/// decrypt.
fn finish(
    key: ConnKey,
    mut conn: Conn,
    t: Timing,
    out: &mut Output,
    undecrypted: &mut HashSet<u32>,
    sink: &mut impl ConnSink,
) {
    if let Proto::Tls(scanner) = &conn.proto {
        // Requests and responses went by in TLS and no plaintext ever came.
        if scanner.app_data() && !scanner.desynced() {
            stats::global().incr(Counter::TlsUndecryptedConns);
            let pid = conn.meta.pid;
            if undecrypted.len() < MAX_UNDECRYPTED_PIDS && undecrypted.insert(pid) {
                stats::global().incr(Counter::TlsUndecryptedProcesses);
                let end = conn.comm.iter().position(|&b| b == 0).unwrap_or(conn.comm.len());
                let comm = String::from_utf8_lossy(&conn.comm[..end]);
                let comm = if comm.is_empty() { String::new() } else { format!(" ({comm})") };
                log::info!(
                    "tls: pid {pid}{comm} sends TLS that ghostwire cannot decrypt (Go crypto/tls, rustls or OpenSSL \
                     without symbols); its requests are not traced"
                );
            }
        }
    }
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
        wire_keys: Vec<u64>,
        exchanges: Vec<ExchangeRecord>,
        closed: Vec<ConnKey>,
    }

    impl ConnSink for Sink {
        fn request_started(&mut self, key: ReqKey, conn: &ConnMeta, start: Start, request: &Request) {
            self.started.push((key, *conn, request.target.clone()));
            self.wire_keys.push(start.wire_key);
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
            opened_by: None,
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

    #[test]
    fn a_full_table_makes_room_for_many_connections_at_once() {
        let mut table = ConnTable::new(64, ListenTable::default());
        let mut sink = Sink::default();
        let open = |table: &mut ConnTable, sink: &mut Sink, i: u64| {
            let Event::Conn(mut c) = conn_event(Some(Role::Server), false, 8080) else { unreachable!() };
            c.conn = ConnId { sock: 0x1000 + i, gen: i };
            c.ts_ns = 1000 + i;
            table.on_event(&Event::Conn(c), sink);
        };
        for i in 0..64 {
            open(&mut table, &mut sink, i);
        }
        assert!(sink.closed.is_empty());
        // The 65th evicts the idlest sixteenth (4), so the next 3 need no scan.
        open(&mut table, &mut sink, 64);
        let evicted: Vec<u64> = sink.closed.iter().map(|k| k.sock - 0x1000).collect();
        let mut sorted = evicted.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3], "the oldest activity goes first");
        for i in 65..68 {
            open(&mut table, &mut sink, i);
        }
        assert_eq!(sink.closed.len(), 4);
        assert_eq!(table.len(), 64);
    }

    // --- TLS ---------------------------------------------------------------------------

    const SSL: u64 = 0x5511;

    /// Plaintext of session `SSL` as the uprobes report it (`sock` 0: not bound yet).
    fn plain(conn: ConnId, dir: Direction, offset: u64, bytes: &[u8]) -> Event<'_> {
        let Event::Data(mut d) = data(dir, offset, bytes) else { unreachable!() };
        d.tls = Some(SSL);
        d.conn = conn;
        Event::Data(d)
    }

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        r.extend(body);
        r
    }

    fn client_hello() -> Vec<u8> {
        let mut r = record(22, &[1, 0, 0, 2, 3, 3]);
        r[2] = 1;
        r
    }

    /// A TLS 1.3 ServerHello (supported_versions = 0x0304) and the start of the
    /// encrypted handshake.
    fn server_flight() -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([0xab; 32]);
        body.extend([0, 0x13, 0x01, 0]);
        body.extend([0, 6, 0, 43, 0, 2, 3, 4]);
        let mut msg = vec![2, 0, 0, u8::try_from(body.len()).unwrap()];
        msg.extend(body);
        let mut f = record(22, &msg);
        f.extend(record(20, &[1]));
        f.extend(record(23, &[0x42; 300]));
        f
    }

    /// A TLS 1.3 client connection up to its first request: handshake, client Finished
    /// and one request record.
    fn ciphertext_client() -> Vec<Event<'static>> {
        let hello = Box::leak(client_hello().into_boxed_slice());
        let flight = Box::leak(server_flight().into_boxed_slice());
        let finished = Box::leak(record(23, &[0x11; 53]).into_boxed_slice());
        let request = Box::leak(record(23, &[0x22; 120]).into_boxed_slice());
        let h = hello.len() as u64;
        let f = finished.len() as u64;
        vec![
            conn_event(Some(Role::Client), false, 40000),
            data(Direction::Egress, 0, hello),
            data(Direction::Ingress, 0, flight),
            data(Direction::Egress, h, finished),
            data(Direction::Egress, h + f, request),
        ]
    }

    fn close() -> Event<'static> {
        Event::State(State { conn: C, ts_ns: now(), change: StateChange::Closed })
    }

    #[test]
    fn tls_ciphertext_gives_no_exchange_and_is_counted() {
        let s = stats::global();
        let before = [Counter::TlsConns, Counter::TlsCiphertextRecords, Counter::TlsUndecryptedConns].map(|c| s.get(c));
        let mut events = ciphertext_client();
        // A response record, which no HTTP parser must see.
        let resp = record(23, RESP);
        events.push(data(Direction::Ingress, server_flight().len() as u64, &resp));
        events.push(close());
        let sink = run(&events, ListenTable::default());
        assert!(sink.started.is_empty() && sink.exchanges.is_empty());
        assert_eq!(sink.closed, vec![C]);
        assert!(s.get(Counter::TlsConns) > before[0]);
        assert!(s.get(Counter::TlsCiphertextRecords) >= before[1] + 5);
        assert!(s.get(Counter::TlsUndecryptedConns) > before[2]);
    }

    #[test]
    fn ciphertext_is_never_not_http() {
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        for e in ciphertext_client() {
            table.on_event(&e, &mut sink);
        }
        let conn = &table.conns[&C];
        assert!(matches!(conn.proto, Proto::Tls(_)), "ciphertext went elsewhere");
        let Proto::Tls(scanner) = &conn.proto else { unreachable!() };
        assert_eq!(scanner.version(), Some(Version::Tls13));
        assert!(scanner.app_data());
    }

    #[test]
    fn a_handshake_alone_is_not_undecrypted_traffic() {
        let mut events = ciphertext_client();
        events.truncate(4); // no request record
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        for e in &events {
            table.on_event(e, &mut sink);
        }
        let Proto::Tls(scanner) = &table.conns[&C].proto else { panic!("not TLS") };
        assert!(!scanner.app_data());
    }

    #[test]
    fn plaintext_after_ciphertext_gives_an_exchange_marked_tls_with_its_version() {
        let s = stats::global();
        let decrypted = s.get(Counter::TlsDecryptedConns);
        let ciphertext = s.get(Counter::TlsCiphertextRecords);
        let mut events = ciphertext_client();
        // The kernel bound the session during the first SSL_write: from then on it
        // reports plaintext, whose offsets start at 0.
        events.push(plain(C, Direction::Egress, 0, REQ));
        // A stray ciphertext record after the switch: ignored.
        let stray = record(23, &[9; 40]);
        events.push(data(Direction::Ingress, 99_999, &stray));
        events.push(plain(C, Direction::Ingress, 0, RESP));
        events.push(plain(C, Direction::Egress, REQ.len() as u64, REQ));
        events.push(plain(C, Direction::Ingress, RESP.len() as u64, RESP));
        let sink = run(&events, ListenTable::default());
        assert_eq!(sink.exchanges.len(), 2, "{:?}", sink.exchanges);
        for e in &sink.exchanges {
            assert_eq!(e.conn.tls, Some(TlsInfo { version: Some(Version::Tls13) }));
            assert_eq!(e.exchange.request.target, "/a");
            assert_eq!(e.exchange.response.status, 200);
        }
        // Wire keys count plaintext from 0 (base 0), the same at the server's end.
        assert_eq!(sink.wire_keys, vec![0, REQ.len() as u64]);
        assert!(s.get(Counter::TlsDecryptedConns) > decrypted);
        assert!(s.get(Counter::TlsCiphertextRecords) >= ciphertext + 5);
    }

    #[test]
    fn unbound_plaintext_is_replayed_in_order_when_its_session_is_bound() {
        let unbound = ConnId { sock: 0, gen: 0 };
        let bind = Event::TlsBind { pid: 42, ssl: SSL, conn: C, ts_ns: now() };
        let r = REQ.len() as u64;
        let sink = run(
            &[
                conn_event(Some(Role::Server), false, 8443),
                // Node: the first request and its response before the bind...
                plain(unbound, Direction::Ingress, 0, &REQ[..10]),
                plain(unbound, Direction::Ingress, 10, &REQ[10..]),
                plain(unbound, Direction::Egress, 0, RESP),
                bind,
                // ...then records that carry the connection themselves.
                plain(C, Direction::Ingress, r, REQ),
                plain(C, Direction::Egress, RESP.len() as u64, RESP),
            ],
            ListenTable::default(),
        );
        assert_eq!(sink.exchanges.len(), 2, "{:?}", sink.exchanges);
        assert_eq!(sink.exchanges.iter().map(|e| e.key.stream).collect::<Vec<_>>(), vec![0, 1]);
        assert!(sink.exchanges.iter().all(|e| e.conn.tls == Some(TlsInfo { version: None })));
    }

    /// A process's exit drops its own held sessions and looks at no other process's.
    #[test]
    fn an_exit_touches_only_the_sessions_of_its_process() {
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        let unbound = ConnId { sock: 0, gen: 0 };
        let mut held = |pid: u32, ssl: u64| {
            let Event::Data(mut d) = plain(unbound, Direction::Ingress, 0, REQ) else { unreachable!() };
            d.pid = pid;
            d.tls = Some(ssl);
            table.on_event(&Event::Data(d), &mut sink);
        };
        for pid in 100..300 {
            held(pid, 1);
        }
        held(42, 1);
        held(42, 2);
        assert_eq!(table.unbound.sessions, 202);
        let s = stats::global();
        let before = s.get(Counter::DropTlsUnbound);
        table.on_event(&Event::Exit { pid: 42, ts_ns: now() }, &mut sink);
        assert_eq!(table.unbound.visited, 2, "only pid 42's two sessions were looked at");
        assert_eq!(table.unbound.sessions, 200);
        assert!(s.get(Counter::DropTlsUnbound) >= before + 2);
        assert!(table.unbound.get_mut(42, 1).is_none() && table.unbound.get_mut(42, 2).is_none());
        assert!((100..300).all(|pid| table.unbound.get_mut(pid, 1).is_some()), "other processes keep theirs");
        // An exit of a process that holds nothing looks at nothing.
        table.on_event(&Event::Exit { pid: 7, ts_ns: now() }, &mut sink);
        assert_eq!((table.unbound.visited, table.unbound.sessions), (2, 200));
    }

    #[test]
    fn unbound_plaintext_is_bounded_and_expires() {
        let s = stats::global();
        let before = s.get(Counter::DropTlsUnbound);
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        let unbound = ConnId { sock: 0, gen: 0 };
        table.on_event(&conn_event(Some(Role::Server), false, 8443), &mut sink);
        let big = vec![b'x'; 40 * 1024];
        table.on_event(&plain(unbound, Direction::Ingress, 0, &big), &mut sink);
        // Over the per-session bound: dropped.
        table.on_event(&plain(unbound, Direction::Ingress, big.len() as u64, &big), &mut sink);
        assert_eq!(s.get(Counter::DropTlsUnbound), before + 1);
        assert_eq!(table.unbound.get_mut(42, SSL).map(|h| h.records.len()), Some(1));
        // Too old: dropped on the next tick.
        table.tick(now() + UNBOUND_TTL_NS + 1);
        assert!(table.unbound.is_empty());
        assert_eq!(s.get(Counter::DropTlsUnbound), before + 2);
        // A bind that comes after has nothing to replay.
        table.on_event(&Event::TlsBind { pid: 42, ssl: SSL, conn: C, ts_ns: now() }, &mut sink);
        assert!(sink.started.is_empty());
    }

    #[test]
    fn a_tls_connection_older_than_the_agent_traces_its_next_request() {
        let mut listening = ListenTable::default();
        listening.set(1, 8443, true);
        let sink = run(
            &[
                conn_event(None, true, 8443),
                // Ciphertext of the keep-alive connection; no handshake seen.
                data(Direction::Ingress, 777, &record(23, &[1; 30])),
                // The uprobes see the plaintext from the first SSL_read after the agent
                // started: the tail of an old request body, then a whole request.
                plain(C, Direction::Ingress, 0, b"rest of an old body"),
                plain(C, Direction::Ingress, 19, REQ),
                plain(C, Direction::Egress, 0, RESP),
            ],
            listening,
        );
        assert_eq!(sink.exchanges.len(), 1, "{:?}", sink.exchanges);
        let e = &sink.exchanges[0];
        assert_eq!((e.conn.role, e.exchange.request.target.as_str()), (Role::Server, "/a"));
        assert!(e.conn.tls.is_some());
        // Its wire key is salted: it can never match the other end's, whose plaintext
        // offsets started elsewhere.
        assert_eq!(sink.wire_keys.len(), 1);
        assert_ne!(sink.wire_keys[0] >> 62, 0, "unsalted key {:#x}", sink.wire_keys[0]);
    }

    #[test]
    fn salts_differ_between_the_two_ends() {
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        let other = ConnId { sock: 0xbeef, gen: 1 };
        let Event::Conn(mut client) = conn_event(Some(Role::Client), true, 40000) else { unreachable!() };
        client.conn = other;
        table.on_event(&conn_event(Some(Role::Server), true, 8443), &mut sink);
        table.on_event(&Event::Conn(client), &mut sink);
        table.on_event(&plain(C, Direction::Ingress, 0, REQ), &mut sink);
        table.on_event(&plain(other, Direction::Egress, 0, REQ), &mut sink);
        assert_eq!(sink.wire_keys.len(), 2);
        assert_ne!(sink.wire_keys[0], sink.wire_keys[1]);
    }

    #[test]
    fn http2_over_tls_is_detected_by_its_preface() {
        let mut client = crate::protocol::http2::PREFACE.to_vec();
        client.extend(frame(4, 0, 0, &[]));
        client.extend(h2_request(1));
        let mut server = frame(4, 0, 0, &[]);
        server.extend(h2_response(1));
        let mut events = vec![conn_event(Some(Role::Server), false, 8443)];
        let hello = client_hello();
        let flight = server_flight();
        events.push(data(Direction::Ingress, 0, &hello));
        events.push(data(Direction::Egress, 0, &flight));
        events.push(plain(C, Direction::Ingress, 0, &client));
        events.push(plain(C, Direction::Egress, 0, &server));
        let sink = run(&events, ListenTable::default());
        assert_eq!(sink.exchanges.len(), 1, "{:?}", sink.exchanges);
        let e = &sink.exchanges[0];
        assert!(e.exchange.h2.is_some());
        assert_eq!(e.conn.tls, Some(TlsInfo { version: Some(Version::Tls13) }));
        // HTTP/2 keys are stream ids, never salted.
        assert_eq!(sink.wire_keys, vec![(1 << 63) | 1]);
    }

    #[test]
    fn midstream_bytes_that_only_look_like_a_record_are_looked_at_again() {
        let mut listening = ListenTable::default();
        listening.set(1, 8080, true);
        let mut looks_like_tls = b"\x17\x03\x03\x00\x04body".to_vec();
        looks_like_tls.extend(b"more of a binary body that is no record");
        let sink = run(
            &[
                conn_event(None, true, 8080),
                data(Direction::Ingress, 100, &looks_like_tls),
                data(Direction::Ingress, 100 + looks_like_tls.len() as u64, REQ),
                data(Direction::Egress, 500, RESP),
            ],
            listening,
        );
        assert_eq!(sink.started.len(), 1, "{:?}", sink.started);
        assert_eq!(sink.exchanges.len(), 1, "{:?}", sink.exchanges);
        assert_eq!(sink.exchanges[0].conn.tls, None);
    }

    #[test]
    fn garbage_plaintext_is_counted_and_goes_opaque() {
        let s = stats::global();
        let before = s.get(Counter::TlsPlaintextNotHttp);
        let mut table = ConnTable::new(16, ListenTable::default());
        let mut sink = Sink::default();
        table.on_event(&conn_event(Some(Role::Server), false, 8443), &mut sink);
        table.on_event(&plain(C, Direction::Ingress, 0, b"\x00\x01garbage\xff\xfe not http at all"), &mut sink);
        table.on_event(&plain(C, Direction::Ingress, 31, REQ), &mut sink);
        table.on_event(&plain(C, Direction::Egress, 0, RESP), &mut sink);
        assert!(s.get(Counter::TlsPlaintextNotHttp) > before);
        assert!(matches!(table.conns[&C].proto, Proto::Opaque));
        assert!(sink.exchanges.is_empty());
    }
}
