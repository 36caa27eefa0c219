//! One interface over every protocol: detect from the first bytes, feed bytes per
//! direction with the capture's gap and loss marks, end of stream, and records out
//! ([`Output`]: requests started, exchanges done), keyed by (connection, stream).
//!
//! [`Session`] is the enum of protocols; the connection table holds one per connection
//! and knows nothing of what is inside. HTTP/1 connections that upgrade to h2c
//! (`Upgrade: h2c`, `101 Switching Protocols`) continue here as HTTP/2.
//!
//! Databases (PostgreSQL, MySQL/MariaDB, Redis) are detected by their first message
//! (the client's startup or command, the server's greeting), or, on a connection joined
//! mid-stream, by the server's well-known port. Only their client side is parsed
//! ([`super::db`]).
use super::db::DbSession;
use super::http1::{self, Http1Session};
use super::http2::{self, Guess, Http2Session};
use super::{mysql, pg, resp};
use super::{DbSystem, Direction, Output, Request, Role, Started, Timing};

/// What a connection's first bytes show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1(Role),
    Http2(Role),
    /// A database client.
    Db(DbSystem, Role),
    /// The server side of a database connection: left alone (no SERVER spans for
    /// database servers).
    DbServer,
    /// Nothing decisive yet (a connection joined mid-stream): look at the next syscall.
    Wait,
    /// Not a protocol ghostwire parses.
    Opaque,
    /// Not a protocol ghostwire parses, and the bytes were tried as HTTP/2 frames and
    /// rejected (counted apart, to see how often detection says no).
    Rejected,
}

/// The role the bytes show: a request read is a server's, a request written a client's.
fn role_shown(dir: Direction, carries_requests: bool) -> Role {
    match (dir, carries_requests) {
        (Direction::Ingress, true) | (Direction::Egress, false) => Role::Server,
        (Direction::Egress, true) | (Direction::Ingress, false) => Role::Client,
    }
}

/// The database a well-known server port names (PostgreSQL 5432, MySQL/MariaDB 3306,
/// Redis 6379).
#[must_use]
pub fn db_port(port: u16) -> Option<DbSystem> {
    match port {
        5432 => Some(DbSystem::Postgresql),
        3306 => Some(DbSystem::Mysql),
        6379 => Some(DbSystem::Redis),
        _ => None,
    }
}

/// A database's first message, seen in `dir`.
fn detect_db(role: Option<Role>, dir: Direction, bytes: &[u8]) -> Option<Detected> {
    let (system, shown) = if pg::looks_like_pg_startup(bytes) {
        (DbSystem::Postgresql, role_shown(dir, true))
    } else if resp::looks_like_resp(bytes) {
        (DbSystem::Redis, role_shown(dir, true))
    } else if mysql::looks_like_greeting(bytes) {
        // The server speaks first.
        (DbSystem::Mysql, role_shown(dir, false))
    } else {
        return None;
    };
    Some(match (role, shown) {
        (Some(r), s) if r != s => Detected::Opaque,
        (_, Role::Server) => Detected::DbServer,
        (_, Role::Client) => Detected::Db(system, Role::Client),
    })
}

/// Which protocol (and, when the role is unknown, which role) the first captured bytes
/// of a syscall show. `role`: what the connection's handshake or listening ports say;
/// `midstream`: the connection's beginning was not seen; `ports`: (local, peer).
#[must_use]
pub fn detect(role: Option<Role>, midstream: bool, ports: (u16, u16), dir: Direction, bytes: &[u8]) -> Detected {
    if bytes.is_empty() {
        return Detected::Wait;
    }
    if midstream {
        // A database joined mid-stream shows no first message: its port tells.
        if let Some(system) = db_port(ports.1).filter(|_| role != Some(Role::Server)) {
            return Detected::Db(system, Role::Client);
        }
        if db_port(ports.0).is_some() && role != Some(Role::Client) {
            return Detected::DbServer;
        }
    }
    // The client preface is the only thing a client writes first on HTTP/2.
    if http2::is_preface(bytes) {
        let shown = role_shown(dir, true);
        return match role {
            Some(r) if r != shown => Detected::Opaque,
            _ => Detected::Http2(shown),
        };
    }
    let request = http1::looks_like_request(bytes);
    let response = http1::looks_like_response(bytes);
    if request || response {
        let shown = role_shown(dir, request);
        return match role {
            Some(r) if r == shown => Detected::Http1(r),
            None => Detected::Http1(shown),
            // A start line in the direction the role does not expect it.
            Some(_) if midstream => Detected::Wait,
            Some(_) => Detected::Opaque,
        };
    }
    if let Some(db) = detect_db(role, dir, bytes) {
        return db;
    }
    // Frames without a preface: a connection joined mid-stream, or a server that sends
    // its SETTINGS before it reads the client's preface.
    match http2::guess_frames(bytes) {
        Guess::Frames { requests } => match (role, requests) {
            (Some(r), _) => Detected::Http2(r),
            (None, Some(carries)) => Detected::Http2(role_shown(dir, carries)),
            // Frames, but nothing says which side is which yet.
            (None, None) => Detected::Wait,
        },
        Guess::No if midstream => Detected::Wait,
        Guess::No => Detected::Rejected,
    }
}

/// A parse error of whichever protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Http1(#[from] http1::ParseError),
    #[error(transparent)]
    Http2(#[from] http2::Error),
}

impl Error {
    /// Bytes of a message whose beginning was not seen (not a malformed message).
    #[must_use]
    pub fn is_half_seen(&self) -> bool {
        matches!(self, Error::Http1(http1::ParseError::HalfSeen { .. }))
    }
}

/// The HTTP/1 session and what the interface adds to it.
#[derive(Debug)]
pub struct Http1 {
    session: Http1Session,
    /// The `seq` of the next request not yet reported as started.
    next_started: u64,
}

/// The HTTP/2 session and what the interface adds to it.
#[derive(Debug)]
pub struct Http2 {
    session: Http2Session,
    /// After an h2c upgrade: the HTTP/1 `seq` its request was started under. Stream 1's
    /// exchange is reported under it, so that it pairs with its start.
    upgrade_seq: Option<u64>,
}

impl Http2 {
    fn new(session: Http2Session) -> Box<Self> {
        Box::new(Http2 { session, upgrade_seq: None })
    }

    /// Runs `f` on the session, then gives stream 1 of an upgraded connection its
    /// HTTP/1 `seq` among the exchanges `f` completed.
    fn with<R>(&mut self, out: &mut Output, f: impl FnOnce(&mut Http2Session, &mut Output) -> R) -> R {
        let before = out.done.len();
        let r = f(&mut self.session, out);
        if let Some(seq) = self.upgrade_seq {
            if let Some(e) = out.done[before..].iter_mut().find(|e| e.seq == 1) {
                e.seq = seq;
                self.upgrade_seq = None;
            }
        }
        r
    }
}

/// One connection's protocol session.
#[derive(Debug)]
pub enum Session {
    Http1(Box<Http1>),
    Http2(Box<Http2>),
    Db(Box<DbSession>),
}

impl Session {
    /// A session for the protocol `detected` found, and the role it shows. `midstream`:
    /// the connection's beginning was not seen (opened before the agent, or its first
    /// bytes were lost).
    #[must_use]
    pub fn new(detected: Detected, midstream: bool) -> Option<(Self, Role)> {
        match detected {
            Detected::Http1(role) => {
                let session = if midstream { Http1Session::new_midstream(role) } else { Http1Session::new(role) };
                Some((Session::Http1(Box::new(Http1 { session, next_started: 0 })), role))
            }
            Detected::Http2(role) => {
                let session = if midstream { Http2Session::new_midstream(role) } else { Http2Session::new(role) };
                Some((Session::Http2(Http2::new(session)), role))
            }
            Detected::Db(system, role) => Some((Session::Db(Box::new(DbSession::new(system, role, midstream))), role)),
            Detected::Wait | Detected::Opaque | Detected::Rejected | Detected::DbServer => None,
        }
    }

    /// Short protocol name, for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Session::Http1(_) => "HTTP/1",
            Session::Http2(_) => "HTTP/2",
            Session::Db(d) => d.name(),
        }
    }

    /// One syscall's payload at stream offset `pos` of `dir`: `prefix` captured, then
    /// `gap` bytes not captured, then `tail` captured. Records go to `out` (also when an
    /// error is returned: it concerns other bytes of the same call).
    #[allow(clippy::too_many_arguments)]
    pub fn feed_at(
        &mut self,
        role: Role,
        dir: Direction,
        pos: u64,
        prefix: &[u8],
        gap: u64,
        tail: &[u8],
        t: Timing,
        out: &mut Output,
    ) -> Result<(), Error> {
        match self {
            Session::Http1(h) => {
                let result = h.session.feed_at(dir, pos, prefix, gap, tail, t, &mut out.done);
                if dir == role.request_direction() {
                    for (seq, request, first) in h.session.started_requests(h.next_started) {
                        out.started.push(Started { stream: seq, offset: request.stream_offset, first });
                        h.next_started = seq + 1;
                    }
                    h.next_started = h.next_started.max(h.session.next_seq());
                }
                if h.session.is_opaque() {
                    if let Some(next) = self.upgrade_h2c(role, dir, pos, prefix, gap, tail, t, out) {
                        return result.map_err(Error::from).and(next);
                    }
                }
                result.map_err(Error::from)
            }
            Session::Http2(h) => {
                h.with(out, |s, out| s.feed_at(dir, pos, prefix, gap, tail, t, out)).map_err(Error::from)
            }
            // Counts and resets by itself.
            Session::Db(d) => {
                d.feed(dir, prefix, gap, tail, t, out);
                Ok(())
            }
        }
    }

    /// After a `101 Switching Protocols` that answered `Upgrade: h2c`: the session
    /// becomes HTTP/2, whose stream 1 is the upgrade request, and the bytes of this
    /// syscall after the 101 head are fed to it. `None` if this was no h2c upgrade.
    #[allow(clippy::too_many_arguments)]
    fn upgrade_h2c(
        &mut self,
        role: Role,
        dir: Direction,
        pos: u64,
        prefix: &[u8],
        gap: u64,
        tail: &[u8],
        t: Timing,
        out: &mut Output,
    ) -> Option<Result<(), Error>> {
        let Session::Http1(h) = self else { return None };
        let i = out.done.iter().position(|e| {
            e.response.status == 101
                && e.request
                    .header("upgrade")
                    .is_some_and(|u| u.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
        })?;
        let from = h.session.opaque_from();
        let upgrade = out.done.remove(i);
        let mut h2 = Http2::new(Http2Session::after_upgrade(role, upgrade.request, upgrade.request_first));
        h2.upgrade_seq = Some(upgrade.seq);
        *self = Session::Http2(h2);
        // What followed the 101 head in the same syscall is already HTTP/2.
        let from = from?;
        if dir == role.request_direction() {
            return None;
        }
        let captured_end = pos + prefix.len() as u64;
        let Session::Http2(h2) = self else { return None };
        let result = if from < captured_end {
            let skip = usize::try_from(from - pos).unwrap_or(prefix.len()).min(prefix.len());
            h2.with(out, |s, out| s.feed_at(dir, from, &prefix[skip..], gap, tail, t, out))
        } else if gap == 0 && tail.is_empty() {
            Ok(())
        } else {
            // The switch happened inside bytes not captured: HTTP/2 framing starts unseen.
            h2.session.lost(dir, t.enter_ns);
            Ok(())
        };
        Some(result.map_err(Error::from))
    }

    /// The capture lost bytes of `dir` (how many is unknown), all moved at or before
    /// `before_ns` (0: unknown). Returns how many requests were dropped.
    pub fn lost(&mut self, dir: Direction, before_ns: u64) -> usize {
        match self {
            Session::Http1(h) => h.session.lost(dir, before_ns),
            Session::Http2(h) => h.session.lost(dir, before_ns),
            Session::Db(d) => d.lost(dir, before_ns),
        }
    }

    /// End of stream in `dir` (read returned 0, or the process shut down writing).
    pub fn eof(&mut self, dir: Direction, t: Timing, out: &mut Output) {
        match self {
            Session::Http1(h) => h.session.eof(dir, t, &mut out.done),
            Session::Http2(h) => h.with(out, |s, out| s.eof(dir, t, out)),
            Session::Db(d) => d.eof(dir, t, out),
        }
    }

    /// The connection closed: completes what its end completes (an HTTP/1 response
    /// delimited by the close) and returns how many requests stay unanswered.
    pub fn close(&mut self, role: Role, t: Timing, out: &mut Output) -> usize {
        let response_dir = match role {
            Role::Server => Direction::Egress,
            Role::Client => Direction::Ingress,
        };
        match self {
            Session::Http1(h) => {
                h.session.eof(response_dir, t, &mut out.done);
                h.session.pending_requests()
            }
            Session::Http2(h) => h.with(out, |s, out| {
                s.eof(response_dir, t, out);
                s.eof(role.request_direction(), t, out);
                s.pending_requests()
            }),
            Session::Db(d) => d.close(t, out),
        }
    }

    /// The head of a request that started and is not answered yet.
    #[must_use]
    pub fn request(&self, stream: u64) -> Option<&Request> {
        match self {
            Session::Http1(h) => h.session.request(stream),
            Session::Http2(h) => h.session.request(stream),
            Session::Db(d) => Some(d.request()),
        }
    }

    /// Key that both ends of a connection give the same request: HTTP/1's is the TCP
    /// sequence number of its first byte (`tcp_seq`), HTTP/2's its stream id (streams
    /// are numbered by the connection, so both ends agree).
    #[must_use]
    pub fn wire_key(&self, started: &Started, tcp_seq_base: u32) -> u64 {
        match self {
            // Sequence numbers wrap at 2^32, like TCP's.
            Session::Http1(_) => u64::from(tcp_seq_base.wrapping_add(started.offset as u32)),
            Session::Http2(_) => (1 << 63) | started.stream,
            // Never matched: database servers have no spans to match.
            Session::Db(_) => (1 << 62) | started.stream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_by_first_bytes() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(detect(None, false, (0, 0), Direction::Ingress, get), Detected::Http1(Role::Server));
        assert_eq!(detect(Some(Role::Client), false, (0, 0), Direction::Egress, get), Detected::Http1(Role::Client));
        assert_eq!(detect(Some(Role::Client), false, (0, 0), Direction::Ingress, get), Detected::Opaque);
        assert_eq!(detect(Some(Role::Client), true, (0, 0), Direction::Ingress, get), Detected::Wait);
        assert_eq!(detect(None, false, (0, 0), Direction::Egress, http2::PREFACE), Detected::Http2(Role::Client));
        assert_eq!(detect(None, false, (0, 0), Direction::Ingress, http2::PREFACE), Detected::Http2(Role::Server));
        // A preface split by the reader: its first bytes are enough.
        assert_eq!(
            detect(Some(Role::Server), false, (0, 0), Direction::Ingress, b"PRI * HT"),
            Detected::Http2(Role::Server)
        );
        // TLS is neither.
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_eq!(detect(Some(Role::Client), false, (0, 0), Direction::Egress, tls), Detected::Rejected);
        assert_eq!(detect(None, true, (0, 0), Direction::Egress, tls), Detected::Wait);
    }

    #[test]
    fn databases_by_first_message_and_by_port_midstream() {
        let ssl_request = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
        let ping = b"*1\r\n$4\r\nPING\r\n";
        let greeting = b"\x4a\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x03\x00\x00\x00";
        let pg = DbSystem::Postgresql;
        assert_eq!(detect(None, false, (40000, 5433), Direction::Egress, ssl_request), Detected::Db(pg, Role::Client));
        assert_eq!(
            detect(Some(Role::Client), false, (0, 0), Direction::Egress, ping),
            Detected::Db(DbSystem::Redis, Role::Client)
        );
        assert_eq!(
            detect(None, false, (0, 0), Direction::Ingress, greeting),
            Detected::Db(DbSystem::Mysql, Role::Client)
        );
        // The server side of each is left alone.
        assert_eq!(detect(Some(Role::Server), false, (5432, 0), Direction::Ingress, ssl_request), Detected::DbServer);
        assert_eq!(detect(None, false, (0, 0), Direction::Ingress, ping), Detected::DbServer);
        assert_eq!(detect(None, false, (0, 0), Direction::Egress, greeting), Detected::DbServer);
        // The role the handshake says wins over what the bytes seem to be.
        assert_eq!(detect(Some(Role::Server), false, (0, 0), Direction::Egress, ping), Detected::Opaque);
        // Mid-stream, a query shows nothing of the protocol: the port tells.
        let query = b"Q\x00\x00\x00\x0dSELECT 1\x00";
        assert_eq!(
            detect(Some(Role::Client), true, (40000, 5432), Direction::Egress, query),
            Detected::Db(pg, Role::Client)
        );
        assert_eq!(detect(None, true, (5432, 40000), Direction::Ingress, query), Detected::DbServer);
        assert_eq!(detect(None, true, (40000, 8080), Direction::Egress, query), Detected::Wait);
    }
}
