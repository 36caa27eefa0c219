//! The database protocols behind the session interface: each parser's exchanges become
//! [`Exchange`]s carrying a [`DbCall`], numbered in the order they complete.
//!
//! The database parsers pair requests with responses themselves and report a request
//! only once it is answered, so a call is reported as started just before it is done
//! (its [`Started::first`] is the syscall that carried its last byte: the moment the
//! linker asks which inbound request the calling thread was handling). Only the client
//! side of a database connection is parsed: database servers get no SERVER spans.
//!
//! Bytes a parser cannot frame are counted (`drop.db_parse_error`) and the parser starts
//! over at the next syscall (PostgreSQL and Redis have no resynchronisation point of
//! their own; MySQL finds one itself). A connection that keeps failing is given up after
//! [`MAX_RESETS`] failures without one call parsed in between.
use super::mysql::{self, MySqlSession};
use super::pg::{self, PgSession};
use super::resp::{self, Reply, RespSession};
use super::{DbCall, DbSystem, Direction, Exchange, Output, Request, Role, Started, Timing};
use crate::stats::{self, Counter};

/// Parse failures in a row (no call parsed in between) before a connection is left
/// alone.
pub const MAX_RESETS: u32 = 16;

/// The protocol-specific parser.
#[derive(Debug)]
enum Parser {
    Pg { session: PgSession, out: Vec<pg::PgExchange>, seen: [u64; 3] },
    My { session: MySqlSession, out: Vec<mysql::MyExchange>, undecodable: bool },
    Redis { session: RespSession, out: Vec<resp::RespExchange>, db: Option<u32>, pushes: u64 },
}

/// One database connection's session (client side).
#[derive(Debug)]
pub struct DbSession {
    role: Role,
    parser: Parser,
    /// The `seq` of the next call reported.
    next_seq: u64,
    /// Failures since the last call parsed.
    resets: u32,
    /// Given up on (too many failures): every byte is ignored.
    stopped: bool,
    /// What [`super::session::Session::request`] lends for a call (a database call has no
    /// HTTP head).
    empty: Request,
}

impl DbSession {
    #[must_use]
    pub fn new(system: DbSystem, role: Role, midstream: bool) -> Self {
        let parser = match system {
            DbSystem::Postgresql => Parser::Pg {
                session: if midstream { PgSession::midstream(role) } else { PgSession::new(role) },
                out: Vec::new(),
                seen: [0; 3],
            },
            DbSystem::Mysql | DbSystem::Mariadb => Parser::My {
                session: if midstream { MySqlSession::midstream(role) } else { MySqlSession::new(role) },
                out: Vec::new(),
                undecodable: false,
            },
            DbSystem::Redis => Parser::Redis { session: RespSession::new(role), out: Vec::new(), db: None, pushes: 0 },
        };
        stats::global().incr(Counter::DbConns);
        DbSession { role, parser, next_seq: 0, resets: 0, stopped: false, empty: Request::default() }
    }

    /// Short protocol name, for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match &self.parser {
            Parser::Pg { .. } => "PostgreSQL",
            Parser::My { .. } => "MySQL",
            Parser::Redis { .. } => "Redis",
        }
    }

    /// One syscall's payload: `prefix` captured, `gap` bytes not captured, then `tail`.
    pub fn feed(&mut self, dir: Direction, prefix: &[u8], gap: u64, tail: &[u8], t: Timing, out: &mut Output) {
        if self.stopped {
            return;
        }
        let failed = match &mut self.parser {
            Parser::Pg { session, out: calls, .. } => {
                let gap = usize::try_from(gap).unwrap_or(usize::MAX);
                let mut r = session.feed(dir, prefix, prefix.len().saturating_add(gap), t, calls);
                if r.is_ok() && !tail.is_empty() {
                    r = session.feed(dir, tail, tail.len(), t, calls);
                }
                r.err().map(|e| e.to_string())
            }
            Parser::My { session, out: calls, .. } => {
                let gap = usize::try_from(gap).unwrap_or(usize::MAX);
                let mut r = session.feed(dir, prefix, prefix.len().saturating_add(gap), t, calls);
                if r.is_ok() && !tail.is_empty() {
                    r = session.feed(dir, tail, tail.len(), t, calls);
                }
                match r {
                    // The parser resynchronises by itself; a stray response is skipped.
                    Err(e @ (mysql::MyParseError::Malformed { .. } | mysql::MyParseError::Gap { .. })) => {
                        Some(e.to_string())
                    }
                    Err(e) => {
                        log::debug!("{e}");
                        None
                    }
                    Ok(()) => None,
                }
            }
            Parser::Redis { session, out: calls, .. } => {
                let mut r = session.feed(dir, prefix, t, calls);
                if gap > 0 {
                    // RESP cannot skip bytes it did not see: start the direction over.
                    let dropped = session.lost(dir);
                    stats::global().add(Counter::DropLostRequest, dropped as u64);
                } else if r.is_ok() && !tail.is_empty() {
                    r = session.feed(dir, tail, t, calls);
                }
                match r {
                    Err(e) if e.kind.is_fatal() => Some(e.to_string()),
                    Err(e) => {
                        log::debug!("{e}");
                        None
                    }
                    Ok(()) => None,
                }
            }
        };
        self.drain(out);
        if let Some(why) = failed {
            self.reset(&why);
        }
    }

    /// A parse failure: counted, and the parser starts over (or, after too many, the
    /// connection is left alone).
    fn reset(&mut self, why: &str) {
        stats::global().drop_event(Counter::DropDbParseError, format_args!("{}: {why}", self.name()));
        self.resets += 1;
        if self.resets >= MAX_RESETS {
            self.stopped = true;
            return;
        }
        let role = self.role;
        match &mut self.parser {
            Parser::Pg { session, .. } => {
                let database = session.database().map(str::to_owned);
                *session = PgSession::midstream(role);
                if let Some(db) = database {
                    session.set_database(db);
                }
            }
            // It resynchronises by itself.
            Parser::My { .. } => {}
            Parser::Redis { session, .. } => {
                let dropped = session.reset();
                stats::global().add(Counter::DropLostRequest, dropped as u64);
            }
        }
    }

    /// Moves the calls the parser completed to `out`, and what it counted to the stats.
    fn drain(&mut self, out: &mut Output) {
        let s = stats::global();
        let before = out.done.len();
        match &mut self.parser {
            Parser::Pg { session, out: calls, seen } => {
                let database = session.database();
                for e in calls.drain(..) {
                    out.done.push(pg_exchange(e, database));
                }
                let now = [session.notifications(), session.copies(), session.cancels()];
                s.add(Counter::DbPushes, now[0].saturating_sub(seen[0]));
                s.add(Counter::DbCopies, now[1].saturating_sub(seen[1]));
                *seen = now;
            }
            Parser::My { session, out: calls, undecodable } => {
                let system = if session.is_mariadb() { DbSystem::Mariadb } else { DbSystem::Mysql };
                for e in calls.drain(..) {
                    if let Some(x) = my_exchange(e, system) {
                        out.done.push(x);
                    }
                }
                if !*undecodable && (session.tls() || session.compressed()) {
                    *undecodable = true;
                    s.incr(Counter::DbUndecodable);
                }
            }
            Parser::Redis { session, out: calls, db, pushes } => {
                for e in calls.drain(..) {
                    if let (Some(n), Reply::Ok) = (e.command.db, &e.reply) {
                        *db = Some(n);
                    }
                    out.done.push(redis_exchange(e, *db));
                }
                s.add(Counter::DbPushes, session.pushes().saturating_sub(*pushes));
                *pushes = session.pushes();
            }
        }
        if out.done.len() > before {
            self.resets = 0;
        }
        for e in out.done.get_mut(before..).unwrap_or_default() {
            e.seq = self.next_seq;
            self.next_seq += 1;
            s.incr(Counter::DbCalls);
            out.started.push(Started { stream: e.seq, offset: 0, first: e.request_last });
        }
    }

    /// The capture lost bytes of `dir`. Returns how many calls were dropped.
    pub fn lost(&mut self, dir: Direction, before_ns: u64) -> usize {
        match &mut self.parser {
            // No resynchronisation point: start over at the next syscall.
            Parser::Pg { session, .. } => {
                let dropped = session.pending_requests();
                let database = session.database().map(str::to_owned);
                *session = PgSession::midstream(self.role);
                if let Some(db) = database {
                    session.set_database(db);
                }
                dropped
            }
            Parser::My { session, .. } => session.lost(dir, before_ns),
            Parser::Redis { session, .. } => session.reset(),
        }
    }

    /// End of stream in `dir`.
    pub fn eof(&mut self, dir: Direction, t: Timing, out: &mut Output) {
        match &mut self.parser {
            Parser::Pg { session, .. } => {
                session.eof(dir);
            }
            Parser::My { session, out: calls, .. } => session.eof(dir, t, calls),
            Parser::Redis { .. } => {}
        }
        self.drain(out);
    }

    /// The connection closed: returns how many calls stay unanswered.
    pub fn close(&mut self, t: Timing, out: &mut Output) -> usize {
        let pending = self.pending_requests();
        self.eof(Direction::Ingress, t, out);
        pending
    }

    #[must_use]
    pub fn pending_requests(&self) -> usize {
        match &self.parser {
            Parser::Pg { session, .. } => session.pending_requests(),
            Parser::My { session, .. } => session.pending_requests(),
            Parser::Redis { session, .. } => session.pending_requests(),
        }
    }

    /// The (empty) head a started call lends the linker.
    #[must_use]
    pub fn request(&self) -> &Request {
        &self.empty
    }
}

fn db_exchange(call: DbCall, first: Timing, last: Timing, response_first: Timing, response_last: Timing) -> Exchange {
    Exchange {
        seq: 0,
        request: Request::default(),
        response: super::Response::default(),
        request_first: first,
        request_last: last,
        response_first,
        response_last,
        h2: None,
        db: Some(Box::new(call)),
    }
}

fn pg_exchange(e: pg::PgExchange, database: Option<&str>) -> Exchange {
    let (status_code, error_message) = match e.error {
        Some(err) => (Some(err.sqlstate), Some(err.message)),
        None => (None, None),
    };
    let call = DbCall {
        system: DbSystem::Postgresql,
        namespace: database.map(str::to_owned),
        query: e.query,
        truncated: e.query_truncated,
        operation: None,
        key: None,
        status_code,
        error_message,
        rows: Some(e.rows),
    };
    db_exchange(call, e.request_first, e.request_last, e.response_first, e.response_last)
}

/// A span for the commands that run SQL (or name a database); the others (ping, quit,
/// statement close and reset) are connection upkeep, not calls worth a span.
fn my_exchange(e: mysql::MyExchange, system: DbSystem) -> Option<Exchange> {
    let operation = match e.command {
        mysql::Command::Query | mysql::Command::Execute => None,
        mysql::Command::Prepare => Some("PREPARE".to_owned()),
        mysql::Command::InitDb => Some("USE".to_owned()),
        _ => return None,
    };
    let (status_code, error_message) = match e.error {
        Some(err) => (Some(err.code.to_string()), Some(err.message)),
        None => (None, None),
    };
    let (query, namespace) = if e.command == mysql::Command::InitDb {
        // Its text is the schema name: the namespace, not a query.
        (String::new(), e.query)
    } else {
        (e.query.unwrap_or_default(), e.database)
    };
    let call = DbCall {
        system,
        namespace,
        query,
        truncated: e.truncated,
        operation,
        key: None,
        status_code,
        error_message,
        rows: Some(e.rows),
    };
    Some(db_exchange(call, e.request_first, e.request_last, e.response_first, e.response_last))
}

/// Arguments written as `?` after the key, at most.
const MAX_REDIS_PLACEHOLDERS: u32 = 8;

fn redis_exchange(e: resp::RespExchange, db: Option<u32>) -> Exchange {
    let c = e.command;
    // The command, its key, and a `?` for each other argument (values are never seen).
    let mut query = c.name.clone();
    let mut rest = c.args.saturating_sub(u32::from(c.name.contains(' ')));
    if let Some(key) = &c.key {
        query.push(' ');
        query.push_str(key);
        rest = rest.saturating_sub(1);
    }
    for _ in 0..rest.min(MAX_REDIS_PLACEHOLDERS) {
        query.push_str(" ?");
    }
    if rest > MAX_REDIS_PLACEHOLDERS {
        query.push_str(" …");
    }
    let (status_code, error_message) = match e.reply {
        Reply::Error { prefix, message } => (Some(prefix).filter(|p| !p.is_empty()), Some(message)),
        _ => (None, None),
    };
    let call = DbCall {
        system: DbSystem::Redis,
        namespace: Some(db.or(c.db).unwrap_or(0).to_string()),
        query,
        truncated: false,
        operation: Some(c.name),
        key: c.key,
        status_code,
        error_message,
        rows: None,
    };
    db_exchange(call, e.request_first, e.request_last, e.response_first, e.response_last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> Timing {
        Timing { enter_ns: n, exit_ns: n + 1 }
    }

    fn bulk(parts: &[&str]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            v.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
        }
        v
    }

    #[test]
    fn redis_calls_keep_command_and_key_and_never_values() {
        let mut s = DbSession::new(DbSystem::Redis, Role::Client, false);
        let mut out = Output::default();
        let mut write = bulk(&["SELECT", "2"]);
        write.extend(bulk(&["SET", "user:1", "s3cret-value"]));
        write.extend(bulk(&["LPUSH", "user:1", "x"]));
        s.feed(Direction::Egress, &write, 0, &[], t(10), &mut out);
        assert!(out.done.is_empty());
        let replies = b"+OK\r\n+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        s.feed(Direction::Ingress, replies, 0, &[], t(20), &mut out);
        assert_eq!(out.done.len(), 3);
        assert_eq!(out.started.iter().map(|s| s.stream).collect::<Vec<_>>(), [0, 1, 2]);
        let calls: Vec<&DbCall> = out.done.iter().map(|e| e.db.as_deref().unwrap()).collect();
        assert_eq!(calls[1].query, "SET user:1 ?");
        assert_eq!(calls[1].namespace.as_deref(), Some("2"), "SELECT's database, once answered +OK");
        assert_eq!(calls[1].operation.as_deref(), Some("SET"));
        assert_eq!(calls[2].status_code.as_deref(), Some("WRONGTYPE"));
        assert!(out.done.iter().all(|e| !format!("{e:?}").contains("s3cret")));
    }

    #[test]
    fn hostile_bytes_reset_the_parser_and_calls_after_them_are_seen() {
        for system in [DbSystem::Redis, DbSystem::Postgresql] {
            let mut s = DbSession::new(system, Role::Client, true);
            let mut out = Output::default();
            let before = stats::global().get(Counter::DropDbParseError);
            s.feed(Direction::Egress, b"\xff\xfe\x00garbage\r\n*x\r\n", 0, &[], t(1), &mut out);
            assert!(stats::global().get(Counter::DropDbParseError) > before, "{system:?}: counted");
            let (req, resp): (Vec<u8>, &[u8]) = match system {
                DbSystem::Redis => (bulk(&["GET", "k"]), b"$-1\r\n"),
                _ => (b"Q\x00\x00\x00\x0dSELECT 1\x00".to_vec(), b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I"),
            };
            s.feed(Direction::Egress, &req, 0, &[], t(2), &mut out);
            s.feed(Direction::Ingress, resp, 0, &[], t(3), &mut out);
            assert_eq!(out.done.len(), 1, "{system:?}: the call after the reset");
        }
    }

    #[test]
    fn a_connection_that_keeps_failing_is_given_up() {
        let mut s = DbSession::new(DbSystem::Redis, Role::Client, false);
        let mut out = Output::default();
        for i in 0..MAX_RESETS + 4 {
            s.feed(Direction::Egress, b"*x\r\n", 0, &[], t(u64::from(i)), &mut out);
        }
        assert!(s.stopped);
        s.feed(Direction::Egress, &bulk(&["GET", "k"]), 0, &[], t(100), &mut out);
        s.feed(Direction::Ingress, b"$-1\r\n", 0, &[], t(101), &mut out);
        assert!(out.done.is_empty());
    }
}
