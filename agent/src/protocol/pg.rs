//! PostgreSQL frontend/backend protocol v3: incremental parsing of both directions of one
//! connection, and pairing of queries with their results.
//!
//! One [`PgSession`] follows one TCP connection. It is fed the bytes the traced process
//! read ([`Direction::Ingress`]) and wrote ([`Direction::Egress`]), each direction in order,
//! split however the syscalls split them (down to one byte at a time). Which direction
//! carries requests (frontend messages) follows from the process's [`Role`]. Nothing is
//! sanitised here (the caller sanitises [`PgExchange::query`]); Bind parameter values are
//! never kept, only their count.
//!
//! # Model
//! Every message is a type byte, an int32 length (counting itself, not the type byte) and
//! a body. Only small fixed fields and the first [`MAX_QUERY_BYTES`] of a query text are
//! buffered; the rest of a body (DataRow values, COPY data, long queries) is skipped by
//! counting. The client's first message (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest) has no type byte.
//!
//! * Startup: `user` and `database` are taken from the StartupMessage
//!   ([`PgSession::database`] is `db.namespace`). Authentication, ParameterStatus,
//!   BackendKeyData and the first ReadyForQuery are skipped, as is a PasswordMessage.
//! * SSLRequest / GSSENCRequest answered `N`: the startup follows in plaintext. Answered
//!   `S` (or `G`): the connection is encrypted, [`PgSession::tls`] becomes true and
//!   nothing more is parsed (the caller reads the plaintext from TLS uprobes). A request
//!   direction that goes on with a TLS record (0x16) after such a request is encrypted too.
//! * CancelRequest: counted ([`PgSession::cancels`]), not a span; nothing more is parsed.
//! * Simple query (`Q`): one exchange per Query, ending at its ReadyForQuery. A Query with
//!   several statements (`SELECT 1; SELECT 2`) gets several CommandComplete: the exchange
//!   carries the LAST command tag, the number of CommandComplete/EmptyQueryResponse in
//!   [`PgExchange::statements`], and the DataRows of all of them in `rows`. An
//!   ErrorResponse ends the statements (the server skips the rest) and is kept.
//! * Extended query: Parse/Bind/Describe/Close/Execute/Sync. A bounded map of named
//!   prepared statements (name → query text, [`MAX_STATEMENTS`], oldest evicted and
//!   counted in [`PgSession::evicted_statements`]) and the unnamed statement; Bind links a
//!   portal to its statement. One exchange per Execute, carrying the query text of the
//!   statement bound to its portal, and the statement name (`None` for the unnamed one).
//!   The exchange starts at the first byte of the first Parse/Bind/Describe/Close that
//!   preceded the Execute since the previous Execute or Sync (its *group*; the Execute
//!   itself when there is none) and ends at its CommandComplete, EmptyQueryResponse,
//!   PortalSuspended (`suspended`) or ErrorResponse. Its response starts at the first
//!   response to its group (ParseComplete, ...). A group without Execute (Parse + Sync, as
//!   drivers prepare) is no exchange.
//! * Errors in extended mode: an ErrorResponse to any message of a group is that group's
//!   Execute's error (the exchange is reported with it); the server then skips everything
//!   until Sync, so the remaining Executes up to that Sync get NO exchange and are counted
//!   in [`PgSession::skipped_executes`]. ReadyForQuery ends the batch. An error of a group
//!   without Execute, or outside any query (startup, Sync), is counted in
//!   [`PgSession::unpaired_errors`].
//! * Pipelining: any number of groups and Syncs may be in flight; responses pair in order.
//!   A response that does not match what the oldest pending request expects (a reply to a
//!   message the parser did not expect to be answered) skips that request.
//! * COPY: CopyIn/CopyOut/CopyBoth responses are counted ([`PgSession::copies`]); CopyData,
//!   CopyDone and CopyFail in either direction are skipped. The COPY statement's exchange
//!   ends at its CommandComplete as usual. FunctionCall is counted, not an exchange.
//! * NotificationResponse: counted ([`PgSession::notifications`]), not an exchange.
//!   NoticeResponse and ParameterStatus are ignored anywhere.
//!
//! # Timing
//! Each message's first and last byte are attributed to the [`Timing`] of the `feed` call
//! that carried them. `request_last` is the last byte of the Query or Execute;
//! `response_last` is the last byte of the ReadyForQuery (simple) or of the message that
//! ended the Execute (extended).
//!
//! # Errors, lost bytes, gaps
//! A bad type byte where a message must start, a length below 4 or above
//! [`MAX_MESSAGE_LEN`], a malformed startup packet, or more than [`MAX_PENDING`] pending
//! requests are a [`ParseError`] (reported once, by the `feed` that found it): the session
//! becomes desynced ([`PgSession::desynced`]) and the pending requests are dropped (the
//! count is in the error). [`PgSession::lost`] does the same. There is NO resync: a
//! desynced session ignores every later byte of the connection (the framing of a stream
//! with unknown holes cannot be recovered safely: any byte may look like a type byte).
//! An uncaptured gap (`total_len > data.len()`) that ends inside the body of the current
//! message is skipped exactly (a query text cut by it is marked truncated); a gap past the
//! end of the current message is a loss.
//!
//! # Bounds
//! At most [`MAX_QUERY_BYTES`] + a few hundred bytes are buffered per direction
//! ([`PgSession::buffered_bytes`]); at most [`MAX_PENDING`] requests wait for responses;
//! statement texts in the map are bounded by [`MAX_STATEMENTS`] and
//! [`MAX_STATEMENT_TEXT_BYTES`], texts held by pending requests by
//! [`MAX_PENDING_TEXT_BYTES`] (beyond it a query's text is empty and marked truncated).
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::{Direction, Role, Timing};

/// Largest message length accepted (PostgreSQL itself caps most messages at 1 GiB).
pub const MAX_MESSAGE_LEN: u32 = 1 << 30;
/// Largest startup packet (PostgreSQL's own limit is 10000 bytes).
pub const MAX_STARTUP_LEN: u32 = 10_000;
/// Longest query text kept (the rest is counted and the text marked truncated).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Named prepared statements remembered per connection (oldest evicted).
pub const MAX_STATEMENTS: usize = 256;
/// Total bytes of query text in the statement map (oldest evicted).
pub const MAX_STATEMENT_TEXT_BYTES: usize = 1024 * 1024;
/// Named portals remembered per connection (oldest evicted).
pub const MAX_PORTALS: usize = 64;
/// Frontend messages that may wait for their responses at once.
pub const MAX_PENDING: usize = 4096;
/// Bytes of query text held by pending requests.
pub const MAX_PENDING_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// Longest ErrorResponse message kept.
pub const MAX_ERROR_MESSAGE: usize = 256;
/// Bytes buffered of a message that is not a query (names, tags, error fields).
const SMALL_KEEP: usize = 1024;
/// Bytes buffered of an ErrorResponse.
const ERROR_KEEP: usize = 4096;
/// Once a buffer grew past this, its memory is given back after use.
const KEEP_BUFFER_CAPACITY: usize = 4 * 1024;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;

const REQUEST_TYPES: &[u8] = b"QPBESDCHXFdcfp";
const RESPONSE_TYPES: &[u8] = b"123ntTDCEINAZGHWdcsRSKVv";

/// Cheap protocol detection on a client's first bytes: a StartupMessage for protocol 3.0
/// (3.1 and 3.2 too), an SSLRequest, a GSSENCRequest or a CancelRequest, with a sane
/// length. At least 8 bytes are needed.
#[must_use]
pub fn looks_like_pg_startup(first: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(first, 0), be32(first, 4)) else {
        return false;
    };
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => len == 16,
        c if c >> 16 == PROTOCOL_3 >> 16 && c & 0xffff <= 2 => (9..=MAX_STARTUP_LEN).contains(&len),
        _ => false,
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([*s.first()?, *s.get(1)?, *s.get(2)?, *s.get(3)?]))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

/// A NUL-terminated string at `at`: (its bytes, the position after the NUL). `None` when
/// no NUL is in `b`.
fn cstr(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let n = rest.iter().position(|&c| c == 0)?;
    Some((rest.get(..n)?, at + n + 1))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Truncates to at most `max` bytes at a char boundary.
fn truncate_str(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Simple (`Q`) or extended (Parse/Bind/Execute) query protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgKind {
    Simple,
    Extended,
}

/// An ErrorResponse's main fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgError {
    /// `V` (non-localized severity) when present, else `S`: `ERROR`, `FATAL`, `PANIC`.
    pub severity: String,
    /// `C`: the SQLSTATE code, e.g. `42P01`.
    pub sqlstate: String,
    /// `M`, truncated to [`MAX_ERROR_MESSAGE`] bytes.
    pub message: String,
}

/// One query paired with its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgExchange {
    pub kind: PgKind,
    /// Prepared statement name; `None` for the unnamed statement and simple queries.
    pub statement: Option<String>,
    /// Query text as sent (lossy UTF-8), at most [`MAX_QUERY_BYTES`]. Empty when the
    /// statement's Parse was not seen.
    pub query: String,
    pub query_truncated: bool,
    /// Bind parameters (the count only; values are never kept).
    pub params: u16,
    /// DataRows received.
    pub rows: u64,
    /// The (last) CommandComplete tag, e.g. `SELECT 3`, `INSERT 0 1`.
    pub command_tag: Option<String>,
    pub error: Option<PgError>,
    /// Statements that completed (CommandComplete or EmptyQueryResponse): 1 at most for
    /// an Execute, any number for a simple Query.
    pub statements: u32,
    /// The Execute ended with PortalSuspended (its row limit was reached).
    pub suspended: bool,
    pub request_first: Timing,
    pub request_last: Timing,
    pub response_first: Timing,
    pub response_last: Timing,
}

/// Why the byte stream could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not a message type of this direction where a message must start.
    BadType(u8),
    /// A length below 4 (a negative int32 included).
    ShortLength(u32),
    /// A length above [`MAX_MESSAGE_LEN`] (or [`MAX_STARTUP_LEN`] for a startup packet).
    TooLong(u32),
    /// A startup packet with an unknown protocol or request code.
    BadStartup(u32),
    /// More than [`MAX_PENDING`] requests waiting for responses.
    TooManyPending,
    /// An uncaptured gap past the end of the current message.
    Gap,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::BadType(b) => write!(f, "bad message type 0x{b:02x}"),
            Malformed::ShortLength(l) => write!(f, "message length {l} below 4"),
            Malformed::TooLong(l) => write!(f, "message length {l} over the limit"),
            Malformed::BadStartup(c) => write!(f, "unknown startup code {c}"),
            Malformed::TooManyPending => write!(f, "more than {MAX_PENDING} pending requests"),
            Malformed::Gap => write!(f, "uncaptured bytes across a message boundary"),
        }
    }
}

/// A stream that could not be parsed: the session is desynced from then on.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("malformed PostgreSQL stream ({dir:?}): {reason}; {dropped} pending queries dropped")]
pub struct ParseError {
    pub dir: Direction,
    pub reason: Malformed,
    /// Pending queries (simple Queries and Executes) dropped.
    pub dropped: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An untyped startup packet (request direction, first message).
    Startup,
    /// The one-byte answer to an SSLRequest/GSSENCRequest (response direction).
    SslAnswer,
    /// Typed messages.
    Typed,
}

/// Framing state of one direction. Its `Debug` shows how many body bytes are buffered,
/// not what they are (a Bind being received holds parameter values for a moment).
struct DirState {
    phase: Phase,
    /// The header read so far: type byte (typed) and length.
    hdr: [u8; 5],
    hdr_len: usize,
    typ: u8,
    body_len: u32,
    /// Body bytes still to come.
    remaining: u32,
    /// The body's first bytes, at most `keep_limit`.
    keep: Vec<u8>,
    keep_limit: usize,
    /// Part of the body was in an uncaptured gap.
    gapped: bool,
    first: Timing,
    in_body: bool,
}

impl fmt::Debug for DirState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirState")
            .field("phase", &self.phase)
            .field("typ", &self.typ)
            .field("body_len", &self.body_len)
            .field("remaining", &self.remaining)
            .field("kept", &self.keep.len())
            .field("in_body", &self.in_body)
            .finish_non_exhaustive()
    }
}

impl DirState {
    fn new(phase: Phase) -> Self {
        DirState {
            phase,
            hdr: [0; 5],
            hdr_len: 0,
            typ: 0,
            body_len: 0,
            remaining: 0,
            keep: Vec::new(),
            keep_limit: 0,
            gapped: false,
            first: Timing::default(),
            in_body: false,
        }
    }

    fn header_size(&self) -> usize {
        if self.phase == Phase::Startup {
            4
        } else {
            5
        }
    }

    fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && !self.in_body
    }
}

/// A complete message handed to the session.
struct Msg<'a> {
    typ: u8,
    body: &'a [u8],
    /// `body` holds only the first bytes of the body.
    cut: bool,
    first: Timing,
    last: Timing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepKind {
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
}

#[derive(Debug)]
struct Query {
    kind: PgKind,
    statement: Option<Arc<str>>,
    text: Arc<str>,
    truncated: bool,
    params: u16,
    /// Bytes of `text` counted against [`MAX_PENDING_TEXT_BYTES`].
    counted: usize,
    request_first: Timing,
    request_last: Timing,
    response_first: Option<Timing>,
    rows: u64,
    tag: Option<String>,
    error: Option<PgError>,
    statements: u32,
    suspended: bool,
}

#[derive(Debug)]
enum Op {
    Simple(Box<Query>),
    Execute { group: u64, query: Box<Query> },
    Step { group: u64, kind: StepKind, described: bool },
    Sync,
    Function,
}

#[derive(Clone, Debug)]
struct Statement {
    text: Arc<str>,
    truncated: bool,
}

#[derive(Clone, Debug)]
struct Portal {
    /// `None`: the unnamed statement.
    statement: Option<Arc<str>>,
    params: u16,
}

/// Parser and query/result pairing for one PostgreSQL connection (both directions).
#[derive(Debug)]
pub struct PgSession {
    role: Role,
    req: DirState,
    resp: DirState,
    pending: VecDeque<Op>,
    pending_text: usize,
    /// The text last counted against `pending_text` (repeats are not counted again).
    last_counted: Option<Arc<str>>,
    statements: VecDeque<(Arc<str>, Statement)>,
    statement_text: usize,
    unnamed: Option<Statement>,
    portals: VecDeque<(Arc<str>, Portal)>,
    unnamed_portal: Option<Portal>,
    /// Current group (Parse/Bind/... up to an Execute or Sync), and its first byte.
    group: u64,
    group_first: Option<Timing>,
    /// First response to a step of this group.
    group_response: Option<(u64, Timing)>,
    /// SSLRequests/GSSENCRequests awaiting their one-byte answer.
    ssl_pending: u32,
    /// The server's first ReadyForQuery was seen (the startup is over).
    ready: bool,
    user: Option<String>,
    database: Option<String>,
    tls: bool,
    /// Nothing more is parsed (desynced, encrypted, cancel request).
    stopped: bool,
    desynced: bool,
    notifications: u64,
    copies: u64,
    cancels: u64,
    function_calls: u64,
    skipped_executes: u64,
    unpaired_errors: u64,
    evicted_statements: u64,
}

impl PgSession {
    #[must_use]
    pub fn new(role: Role) -> Self {
        PgSession {
            role,
            req: DirState::new(Phase::Startup),
            resp: DirState::new(Phase::Typed),
            pending: VecDeque::new(),
            pending_text: 0,
            last_counted: None,
            statements: VecDeque::new(),
            statement_text: 0,
            unnamed: None,
            portals: VecDeque::new(),
            unnamed_portal: None,
            group: 0,
            group_first: None,
            group_response: None,
            ssl_pending: 0,
            ready: false,
            user: None,
            database: None,
            tls: false,
            stopped: false,
            desynced: false,
            notifications: 0,
            copies: 0,
            cancels: 0,
            function_calls: 0,
            skipped_executes: 0,
            unpaired_errors: 0,
            evicted_statements: 0,
        }
    }

    /// A session for a connection whose startup was not seen (opened before the agent,
    /// or started over after a parse error): both directions are taken to be at a
    /// message boundary at their next byte, as they are at a syscall that starts a
    /// message; the database is unknown.
    #[must_use]
    pub fn midstream(role: Role) -> Self {
        let mut s = Self::new(role);
        s.req.phase = Phase::Typed;
        s.ready = true;
        s
    }

    /// Bytes the process read (Ingress) or wrote (Egress), in order. `data` is the
    /// captured prefix of a syscall's payload; `total_len > data.len()` means the rest
    /// was not captured (a gap, see the module doc). Completed exchanges are pushed to
    /// `out`, also when an error is returned.
    pub fn feed(
        &mut self,
        dir: Direction,
        data: &[u8],
        total_len: usize,
        t: Timing,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), ParseError> {
        if self.stopped {
            return Ok(());
        }
        let request = dir == self.role.request_direction();
        if let Err(reason) = self.feed_inner(request, data, t, out) {
            return Err(self.fail(dir, reason));
        }
        let gap = total_len.saturating_sub(data.len());
        if gap > 0 && !self.stopped {
            let st = if request { &mut self.req } else { &mut self.resp };
            if st.in_body && gap <= st.remaining as usize {
                st.remaining -= gap as u32;
                st.gapped = true;
                if st.remaining == 0 {
                    if let Err(reason) = self.complete(request, t, out) {
                        return Err(self.fail(dir, reason));
                    }
                }
            } else {
                return Err(self.fail(dir, Malformed::Gap));
            }
        }
        Ok(())
    }

    /// The capture lost bytes of `dir`: the framing is unknown, the session is desynced
    /// for good (no resync, see the module doc). Returns how many pending queries were
    /// dropped.
    pub fn lost(&mut self, _dir: Direction) -> usize {
        if self.stopped {
            return 0;
        }
        self.desync()
    }

    /// The process saw end of stream in `dir`: a request direction that ends stops
    /// nothing; a response direction that ends drops the pending queries (returned).
    pub fn eof(&mut self, dir: Direction) -> usize {
        if dir == self.role.request_direction() || self.stopped {
            return 0;
        }
        self.stopped = true;
        self.drop_pending()
    }

    /// Carries the database over to a session started over ([`PgSession::midstream`]).
    pub fn set_database(&mut self, database: String) {
        self.database = Some(database);
    }

    /// `database` from the StartupMessage (`db.namespace`).
    #[must_use]
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// `user` from the StartupMessage.
    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The connection switched to TLS (or GSS) encryption; nothing more is parsed.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// A parse error or a loss desynced the session; nothing more is parsed.
    #[must_use]
    pub fn desynced(&self) -> bool {
        self.desynced
    }

    /// NotificationResponses received.
    #[must_use]
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// COPY operations started (CopyIn/CopyOut/CopyBoth responses).
    #[must_use]
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// CancelRequests seen (a cancel connection carries nothing else).
    #[must_use]
    pub fn cancels(&self) -> u64 {
        self.cancels
    }

    /// FunctionCall messages sent.
    #[must_use]
    pub fn function_calls(&self) -> u64 {
        self.function_calls
    }

    /// Executes skipped by the server after an error in their batch (no exchange).
    #[must_use]
    pub fn skipped_executes(&self) -> u64 {
        self.skipped_executes
    }

    /// ErrorResponses that belong to no query (startup, a group without Execute, Sync).
    #[must_use]
    pub fn unpaired_errors(&self) -> u64 {
        self.unpaired_errors
    }

    /// Named statements evicted from the bounded map.
    #[must_use]
    pub fn evicted_statements(&self) -> u64 {
        self.evicted_statements
    }

    /// Frontend messages waiting for their responses.
    #[must_use]
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Message bytes buffered, both directions (at most `2 * (MAX_QUERY_BYTES + 1024)`).
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.req.keep.len() + self.resp.keep.len()
    }

    /// Query text bytes held by the statement map and pending requests (bounded by
    /// [`MAX_STATEMENT_TEXT_BYTES`] + [`MAX_PENDING_TEXT_BYTES`] + one unnamed statement).
    #[must_use]
    pub fn text_bytes(&self) -> usize {
        self.statement_text + self.pending_text + self.unnamed.as_ref().map_or(0, |s| s.text.len())
    }

    fn fail(&mut self, dir: Direction, reason: Malformed) -> ParseError {
        let dropped = self.desync();
        ParseError { dir, reason, dropped }
    }

    fn desync(&mut self) -> usize {
        self.stopped = true;
        self.desynced = true;
        for st in [&mut self.req, &mut self.resp] {
            st.keep = Vec::new();
            st.in_body = false;
            st.hdr_len = 0;
        }
        self.drop_pending()
    }

    fn drop_pending(&mut self) -> usize {
        let n = self.pending.iter().filter(|op| matches!(op, Op::Simple(_) | Op::Execute { .. })).count();
        self.pending.clear();
        self.pending_text = 0;
        self.last_counted = None;
        n
    }

    fn feed_inner(
        &mut self,
        request: bool,
        mut data: &[u8],
        t: Timing,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), Malformed> {
        while !data.is_empty() && !self.stopped {
            let ssl_pending = self.ssl_pending;
            let st = if request { &mut self.req } else { &mut self.resp };
            if !request && st.at_boundary() && ssl_pending > 0 {
                st.phase = Phase::SslAnswer;
            }
            if st.phase == Phase::SslAnswer {
                let Some((&b, rest)) = data.split_first() else { break };
                st.phase = Phase::Typed;
                self.ssl_pending = 0;
                match b {
                    b'N' => data = rest,
                    b'S' | b'G' => {
                        self.tls = true;
                        self.stopped = true;
                    }
                    // An old server's ErrorResponse: parsed as a message.
                    _ => {}
                }
                continue;
            }
            if st.in_body {
                let n = data.len().min(st.remaining as usize);
                let (chunk, rest) = data.split_at(n);
                let room = st.keep_limit.saturating_sub(st.keep.len());
                st.keep.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                st.remaining -= n as u32;
                data = rest;
                if st.remaining == 0 {
                    self.complete(request, t, out)?;
                }
                continue;
            }
            // A header byte.
            let Some((&b, rest)) = data.split_first() else { break };
            if st.hdr_len == 0 {
                st.first = t;
                if st.phase == Phase::Startup && b == 0x16 && ssl_pending > 0 {
                    // A TLS ClientHello after an SSLRequest (answer not seen yet).
                    self.tls = true;
                    self.stopped = true;
                    break;
                }
                if st.phase == Phase::Typed {
                    let types = if request { REQUEST_TYPES } else { RESPONSE_TYPES };
                    if !types.contains(&b) {
                        return Err(Malformed::BadType(b));
                    }
                }
            }
            if let Some(slot) = st.hdr.get_mut(st.hdr_len) {
                *slot = b;
            }
            st.hdr_len += 1;
            data = rest;
            let size = st.header_size();
            if st.hdr_len < size {
                continue;
            }
            st.hdr_len = 0;
            let (typ, len) = if size == 4 {
                (0, u32::from_be_bytes([st.hdr[0], st.hdr[1], st.hdr[2], st.hdr[3]]))
            } else {
                (st.hdr[0], u32::from_be_bytes([st.hdr[1], st.hdr[2], st.hdr[3], st.hdr[4]]))
            };
            if len < 4 {
                return Err(Malformed::ShortLength(len));
            }
            let max = if size == 4 { MAX_STARTUP_LEN } else { MAX_MESSAGE_LEN };
            if len > max {
                return Err(Malformed::TooLong(len));
            }
            st.typ = typ;
            st.body_len = len - 4;
            st.remaining = len - 4;
            st.gapped = false;
            st.keep.clear();
            st.keep_limit = keep_limit(request, size == 4, typ);
            st.in_body = true;
            if st.remaining == 0 {
                self.complete(request, t, out)?;
            }
        }
        Ok(())
    }

    /// The current message of a direction is complete.
    fn complete(&mut self, request: bool, t: Timing, out: &mut Vec<PgExchange>) -> Result<(), Malformed> {
        let st = if request { &mut self.req } else { &mut self.resp };
        st.in_body = false;
        let keep = std::mem::take(&mut st.keep);
        let startup = st.phase == Phase::Startup;
        let msg = Msg {
            typ: st.typ,
            body: &keep,
            cut: keep.len() < st.body_len as usize || st.gapped,
            first: st.first,
            last: t,
        };
        let r = if startup {
            self.on_startup(&msg)
        } else if request {
            self.on_request(&msg)
        } else {
            self.on_response(&msg, out);
            Ok(())
        };
        let mut keep = keep;
        keep.clear();
        if keep.capacity() > KEEP_BUFFER_CAPACITY {
            keep = Vec::new();
        }
        let st = if request { &mut self.req } else { &mut self.resp };
        st.keep = keep;
        r
    }

    fn on_startup(&mut self, m: &Msg<'_>) -> Result<(), Malformed> {
        let code = be32(m.body, 0).unwrap_or(0);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => self.ssl_pending = 1,
            CANCEL_REQUEST => {
                self.cancels += 1;
                self.stopped = true;
            }
            c if c >> 16 == PROTOCOL_3 >> 16 => {
                self.req.phase = Phase::Typed;
                let mut at = 4;
                while let Some((name, next)) = cstr(m.body, at) {
                    if name.is_empty() {
                        break;
                    }
                    let Some((value, after)) = cstr(m.body, next) else { break };
                    match name {
                        b"user" => self.user = Some(lossy(value)),
                        b"database" => self.database = Some(lossy(value)),
                        _ => {}
                    }
                    at = after;
                }
                if self.database.is_none() {
                    // The server's default: the database named as the user.
                    self.database = self.user.clone();
                }
            }
            c => return Err(Malformed::BadStartup(c)),
        }
        Ok(())
    }

    fn start_group(&mut self, first: Timing) {
        if self.group_first.is_none() {
            self.group_first = Some(first);
        }
    }

    fn end_group(&mut self) {
        self.group += 1;
        self.group_first = None;
    }

    fn push(&mut self, op: Op) -> Result<(), Malformed> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Malformed::TooManyPending);
        }
        self.pending.push_back(op);
        Ok(())
    }

    /// Counts `text` against the pending text budget: the bytes counted, or `None` if
    /// it does not fit.
    fn count_text(&mut self, text: &Arc<str>) -> Option<usize> {
        if self.last_counted.as_ref().is_some_and(|l| Arc::ptr_eq(l, text)) {
            return Some(0);
        }
        if self.pending_text + text.len() > MAX_PENDING_TEXT_BYTES {
            return None;
        }
        self.pending_text += text.len();
        self.last_counted = Some(text.clone());
        Some(text.len())
    }

    fn on_request(&mut self, m: &Msg<'_>) -> Result<(), Malformed> {
        match m.typ {
            b'Q' => {
                let (text, truncated) = query_text(m.body, m.cut);
                let mut q = Query::new(PgKind::Simple, None, Arc::from(text), truncated, 0, m);
                self.account(&mut q);
                self.end_group();
                self.push(Op::Simple(Box::new(q)))?;
            }
            b'P' => {
                self.start_group(m.first);
                let (name, at) = cstr(m.body, 0).unwrap_or((&[], m.body.len()));
                let (text, truncated) = query_text(m.body.get(at..).unwrap_or_default(), m.cut);
                let stmt = Statement { text: Arc::from(text), truncated };
                self.remember_statement(name, stmt);
                let group = self.group;
                self.push(Op::Step { group, kind: StepKind::Parse, described: false })?;
            }
            b'B' => {
                self.start_group(m.first);
                let (portal, at) = cstr(m.body, 0).unwrap_or((&[], 0));
                let (stmt, at) = cstr(m.body, at).unwrap_or((&[], 0));
                let params =
                    be16(m.body, at).and_then(|nfmt| be16(m.body, at + 2 + 2 * usize::from(nfmt))).unwrap_or(0);
                let statement = (!stmt.is_empty()).then(|| self.statement_name(stmt));
                self.remember_portal(portal, Portal { statement, params });
                let group = self.group;
                self.push(Op::Step { group, kind: StepKind::Bind, described: false })?;
            }
            b'D' | b'C' => {
                self.start_group(m.first);
                let what = m.body.first().copied().unwrap_or(b'S');
                if m.typ == b'C' {
                    let name = cstr(m.body, 1).map_or(&[][..], |(n, _)| n);
                    self.forget(what, name);
                }
                let kind = match (m.typ, what) {
                    (b'C', _) => StepKind::Close,
                    (_, b'P') => StepKind::DescribePortal,
                    _ => StepKind::DescribeStatement,
                };
                let group = self.group;
                self.push(Op::Step { group, kind, described: false })?;
            }
            b'E' => {
                let portal = cstr(m.body, 0).map_or(&[][..], |(n, _)| n);
                let p = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    self.portals.iter().find(|(n, _)| n.as_bytes() == portal).map(|(_, p)| p.clone())
                };
                let (statement, params) = p.map_or((None, 0), |p| (p.statement, p.params));
                let stmt = match &statement {
                    None => self.unnamed.clone(),
                    Some(name) => self.statements.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()),
                };
                let (text, truncated) = stmt.map_or((Arc::from(""), false), |s| (s.text, s.truncated));
                let mut q = Query::new(PgKind::Extended, statement, text, truncated, params, m);
                q.request_first = self.group_first.unwrap_or(m.first);
                self.account(&mut q);
                let group = self.group;
                self.end_group();
                self.push(Op::Execute { group, query: Box::new(q) })?;
            }
            b'S' => {
                self.end_group();
                self.push(Op::Sync)?;
            }
            b'F' => {
                self.function_calls += 1;
                self.end_group();
                self.push(Op::Function)?;
            }
            // Flush, Terminate, CopyData/Done/Fail, PasswordMessage: nothing to answer.
            _ => {}
        }
        Ok(())
    }

    fn account(&mut self, q: &mut Query) {
        match self.count_text(&q.text) {
            Some(n) => q.counted = n,
            None => {
                q.text = Arc::from("");
                q.truncated = true;
            }
        }
    }

    /// The shared name of a statement (the map's copy when known).
    fn statement_name(&self, name: &[u8]) -> Arc<str> {
        match self.statements.iter().find(|(n, _)| n.as_bytes() == name) {
            Some((n, _)) => n.clone(),
            None => Arc::from(lossy(name)),
        }
    }

    fn remember_statement(&mut self, name: &[u8], stmt: Statement) {
        if name.is_empty() {
            self.unnamed = Some(stmt);
            return;
        }
        self.forget(b'S', name);
        self.statement_text += stmt.text.len();
        self.statements.push_back((Arc::from(lossy(name)), stmt));
        while self.statements.len() > MAX_STATEMENTS || self.statement_text > MAX_STATEMENT_TEXT_BYTES {
            let Some((_, old)) = self.statements.pop_front() else { break };
            self.statement_text -= old.text.len();
            self.evicted_statements += 1;
        }
    }

    fn remember_portal(&mut self, name: &[u8], portal: Portal) {
        if name.is_empty() {
            self.unnamed_portal = Some(portal);
            return;
        }
        self.portals.retain(|(n, _)| n.as_bytes() != name);
        self.portals.push_back((Arc::from(lossy(name)), portal));
        if self.portals.len() > MAX_PORTALS {
            self.portals.pop_front();
        }
    }

    fn forget(&mut self, what: u8, name: &[u8]) {
        if what == b'S' {
            if let Some(i) = self.statements.iter().position(|(n, _)| n.as_bytes() == name) {
                if let Some((_, old)) = self.statements.remove(i) {
                    self.statement_text -= old.text.len();
                }
            }
        } else {
            self.portals.retain(|(n, _)| n.as_bytes() != name);
        }
    }

    fn on_response(&mut self, m: &Msg<'_>, out: &mut Vec<PgExchange>) {
        match m.typ {
            b'A' => self.notifications += 1,
            b'G' | b'H' | b'W' => self.copies += 1,
            b'N' | b'S' | b'K' | b'R' | b'v' | b'd' | b'c' => {}
            // Startup: authentication, a failed login's ErrorResponse, then ReadyForQuery.
            b'Z' if !self.ready => self.ready = true,
            b'E' if !self.ready => self.unpaired_errors += 1,
            _ if !self.ready => {}
            _ => self.pair(m, out),
        }
    }

    fn pop(&mut self) -> Option<Op> {
        let op = self.pending.pop_front()?;
        if let Op::Simple(q) | Op::Execute { query: q, .. } = &op {
            self.pending_text -= q.counted.min(self.pending_text);
            if self.pending.is_empty() {
                self.pending_text = 0;
                self.last_counted = None;
            }
        }
        Some(op)
    }

    fn pair(&mut self, m: &Msg<'_>, out: &mut Vec<PgExchange>) {
        // Each turn either consumes `m` (returns) or pops one pending request.
        loop {
            let group_response = self.group_response;
            let Some(head) = self.pending.front_mut() else {
                if m.typ == b'E' {
                    self.unpaired_errors += 1;
                }
                return;
            };
            match head {
                Op::Simple(q) => {
                    q.response_first.get_or_insert(m.first);
                    match m.typ {
                        b'D' => q.rows += 1,
                        b'C' => {
                            q.tag = Some(command_tag(m.body));
                            q.statements += 1;
                        }
                        b'I' => q.statements += 1,
                        b'E' => q.error = Some(parse_error(m.body)),
                        b'Z' => {
                            if let Some(Op::Simple(q)) = self.pop() {
                                out.push(q.finish(m.last));
                            }
                        }
                        _ => {}
                    }
                    return;
                }
                Op::Execute { group, query: q } => {
                    let first = match group_response {
                        Some((g, t)) if g == *group => t,
                        _ => m.first,
                    };
                    match m.typ {
                        b'D' => {
                            q.response_first.get_or_insert(first);
                            q.rows += 1;
                            return;
                        }
                        b'C' | b'I' | b's' | b'E' => {
                            q.response_first.get_or_insert(first);
                            match m.typ {
                                b'C' => {
                                    q.tag = Some(command_tag(m.body));
                                    q.statements = 1;
                                }
                                b'I' => q.statements = 1,
                                b's' => q.suspended = true,
                                _ => q.error = Some(parse_error(m.body)),
                            }
                            if let Some(Op::Execute { query, .. }) = self.pop() {
                                out.push(query.finish(m.last));
                            }
                            if m.typ == b'E' {
                                self.skip_until_sync();
                            }
                            return;
                        }
                        // RowDescription, ...: part of the answer.
                        b'T' | b't' | b'n' | b'V' => return,
                        // ParseComplete etc., ReadyForQuery: the Execute was not answered.
                        _ => {
                            self.pop();
                        }
                    }
                }
                Op::Step { group, kind, described } => {
                    let g = *group;
                    let done = match (*kind, m.typ) {
                        (StepKind::Parse, b'1') | (StepKind::Bind, b'2') | (StepKind::Close, b'3') => true,
                        (StepKind::DescribeStatement, b't') if !*described => {
                            *described = true;
                            false
                        }
                        (StepKind::DescribeStatement | StepKind::DescribePortal, b'T' | b'n') => true,
                        (_, b'E') => {
                            self.group_error(g, m, out);
                            return;
                        }
                        _ => {
                            // Not an answer to this step: it got none.
                            self.pop();
                            continue;
                        }
                    };
                    if self.group_response.is_none_or(|(rg, _)| rg != g) {
                        self.group_response = Some((g, m.first));
                    }
                    if done {
                        self.pop();
                    }
                    return;
                }
                Op::Sync => {
                    match m.typ {
                        b'Z' => {
                            self.pop();
                        }
                        b'E' => self.unpaired_errors += 1,
                        _ => {}
                    }
                    return;
                }
                Op::Function => {
                    match m.typ {
                        b'Z' => {
                            self.pop();
                        }
                        b'E' => self.unpaired_errors += 1,
                        _ => {}
                    }
                    return;
                }
            }
        }
    }

    /// An ErrorResponse to a step of `group`: that group's Execute carries it; the rest
    /// up to the Sync is skipped by the server.
    fn group_error(&mut self, group: u64, m: &Msg<'_>, out: &mut Vec<PgExchange>) {
        let first = match self.group_response {
            Some((g, t)) if g == group => t,
            _ => m.first,
        };
        let exec = self
            .pending
            .iter()
            .take_while(|op| !matches!(op, Op::Sync))
            .position(|op| matches!(op, Op::Execute { group: g, .. } if *g == group));
        let mut reported = false;
        if let Some(i) = exec {
            if let Some(Op::Execute { query, .. }) = self.pending.remove(i) {
                self.pending_text -= query.counted.min(self.pending_text);
                let mut q = query;
                q.response_first = Some(first);
                q.error = Some(parse_error(m.body));
                out.push(q.finish(m.last));
                reported = true;
            }
        }
        if !reported {
            self.unpaired_errors += 1;
        }
        self.skip_until_sync();
    }

    /// Drops the pending requests before the next Sync (the server skips them after an
    /// error); the Executes among them are counted.
    fn skip_until_sync(&mut self) {
        while let Some(op) = self.pending.front() {
            match op {
                Op::Sync | Op::Simple(_) | Op::Function => break,
                Op::Execute { .. } => self.skipped_executes += 1,
                Op::Step { .. } => {}
            }
            self.pop();
        }
    }
}

impl Query {
    fn new(
        kind: PgKind,
        statement: Option<Arc<str>>,
        text: Arc<str>,
        truncated: bool,
        params: u16,
        m: &Msg<'_>,
    ) -> Self {
        Query {
            kind,
            statement,
            text,
            truncated,
            params,
            counted: 0,
            request_first: m.first,
            request_last: m.last,
            response_first: None,
            rows: 0,
            tag: None,
            error: None,
            statements: 0,
            suspended: false,
        }
    }

    fn finish(self, last: Timing) -> PgExchange {
        PgExchange {
            kind: self.kind,
            statement: self.statement.map(|s| s.to_string()),
            query: self.text.to_string(),
            query_truncated: self.truncated,
            params: self.params,
            rows: self.rows,
            command_tag: self.tag,
            error: self.error,
            statements: self.statements,
            suspended: self.suspended,
            request_first: self.request_first,
            request_last: self.request_last,
            response_first: self.response_first.unwrap_or(last),
            response_last: last,
        }
    }
}

fn keep_limit(request: bool, startup: bool, typ: u8) -> usize {
    if startup {
        return MAX_STARTUP_LEN as usize;
    }
    match (request, typ) {
        (true, b'Q') => MAX_QUERY_BYTES + 1,
        (true, b'P') => MAX_QUERY_BYTES + 256,
        (true, b'B' | b'E' | b'D' | b'C') => SMALL_KEEP,
        (false, b'C') => SMALL_KEEP,
        (false, b'E') => ERROR_KEEP,
        _ => 0,
    }
}

/// A query text at the start of `b` (NUL-terminated unless cut), at most
/// [`MAX_QUERY_BYTES`]: (text, truncated).
fn query_text(b: &[u8], cut: bool) -> (String, bool) {
    let (raw, complete) = match b.iter().position(|&c| c == 0) {
        Some(n) => (b.get(..n).unwrap_or_default(), true),
        None => (b, false),
    };
    let truncated = !complete && cut || raw.len() > MAX_QUERY_BYTES;
    let mut text = lossy(raw.get(..MAX_QUERY_BYTES.min(raw.len())).unwrap_or_default());
    truncate_str(&mut text, MAX_QUERY_BYTES);
    (text, truncated)
}

fn command_tag(b: &[u8]) -> String {
    let raw = cstr(b, 0).map_or(b, |(s, _)| s);
    let mut s = lossy(raw);
    truncate_str(&mut s, 64);
    s
}

fn parse_error(b: &[u8]) -> PgError {
    let mut e = PgError::default();
    let mut severity_s = String::new();
    let mut at = 0;
    while let Some(&code) = b.get(at) {
        if code == 0 {
            break;
        }
        let Some((value, next)) = cstr(b, at + 1) else {
            // Cut: keep what is there (a message truncated by the buffer).
            if code == b'M' {
                e.message = lossy(b.get(at + 1..).unwrap_or_default());
            }
            break;
        };
        match code {
            b'S' => severity_s = lossy(value),
            b'V' => e.severity = lossy(value),
            b'C' => e.sqlstate = lossy(value),
            b'M' => e.message = lossy(value),
            _ => {}
        }
        at = next;
    }
    if e.severity.is_empty() {
        e.severity = severity_s;
    }
    truncate_str(&mut e.message, MAX_ERROR_MESSAGE);
    truncate_str(&mut e.sqlstate, 16);
    truncate_str(&mut e.severity, 16);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing { enter_ns: 1, exit_ns: 2 };
    const REQ: Direction = Direction::Egress;
    const RESP: Direction = Direction::Ingress;

    fn msg(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![typ];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn cs(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn startup(user: &str, db: &str) -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        for s in ["user", user, "database", db] {
            body.extend(cs(s));
        }
        body.push(0);
        let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
        v.extend(body);
        v
    }

    fn startup_resp() -> Vec<u8> {
        let mut v = msg(b'R', &0u32.to_be_bytes());
        v.extend(msg(b'S', &[cs("server_version"), cs("15")].concat()));
        v.extend(msg(b'K', &[0; 8]));
        v.extend(msg(b'Z', b"I"));
        v
    }

    fn query(q: &str) -> Vec<u8> {
        msg(b'Q', &cs(q))
    }
    fn parse(name: &str, q: &str) -> Vec<u8> {
        msg(b'P', &[cs(name), cs(q), vec![0, 0]].concat())
    }
    fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
        let mut b = [cs(portal), cs(stmt)].concat();
        b.extend([0, 0]);
        b.extend((params.len() as u16).to_be_bytes());
        for p in params {
            b.extend((p.len() as u32).to_be_bytes());
            b.extend(p.as_bytes());
        }
        b.extend([0, 0]);
        msg(b'B', &b)
    }
    fn execute(portal: &str) -> Vec<u8> {
        msg(b'E', &[cs(portal), vec![0; 4]].concat())
    }
    fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }
    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &cs(tag))
    }
    fn row(v: &str) -> Vec<u8> {
        msg(b'D', &[vec![0, 1], (v.len() as u32).to_be_bytes().to_vec(), v.as_bytes().to_vec()].concat())
    }
    fn error(code: &str, m: &str) -> Vec<u8> {
        msg(b'E', &[cs("SERROR"), cs("VERROR"), cs(&format!("C{code}")), cs(&format!("M{m}")), vec![0]].concat())
    }
    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    /// Feeds each direction's pieces in turn (all of `req` first, then `resp`).
    fn run(s: &mut PgSession, req: &[&[u8]], resp: &[&[u8]]) -> Vec<PgExchange> {
        let mut out = Vec::new();
        for p in req {
            s.feed(REQ, p, p.len(), T, &mut out).unwrap();
        }
        for p in resp {
            s.feed(RESP, p, p.len(), T, &mut out).unwrap();
        }
        out
    }

    fn whole(req: &[u8], resp: &[u8]) -> (PgSession, Vec<PgExchange>) {
        let mut s = PgSession::new(Role::Client);
        let out = run(&mut s, &[req], &[resp]);
        (s, out)
    }

    /// The same exchanges whatever the splits.
    fn check_splits(req: &[u8], resp: &[u8], expect: &[PgExchange]) {
        for cut in 0..=req.len().max(resp.len()) {
            let mut s = PgSession::new(Role::Client);
            let (a, b) = req.split_at(cut.min(req.len()));
            let (c, d) = resp.split_at(cut.min(resp.len()));
            assert_eq!(run(&mut s, &[a, b], &[c, d]), expect, "cut at {cut}");
        }
        let mut s = PgSession::new(Role::Client);
        let r: Vec<&[u8]> = req.chunks(1).collect();
        let p: Vec<&[u8]> = resp.chunks(1).collect();
        assert_eq!(run(&mut s, &r, &p), expect, "byte by byte");
    }

    fn simple_session() -> (Vec<u8>, Vec<u8>) {
        let req = [startup("alice", "shop"), query("SELECT 1"), query("SELECT * FROM nope")].concat();
        let resp = [
            startup_resp(),
            msg(b'T', &[0, 1]),
            row("1"),
            complete("SELECT 1"),
            ready(),
            error("42P01", "relation \"nope\" does not exist"),
            ready(),
        ]
        .concat();
        (req, resp)
    }

    #[test]
    fn simple_query_and_error() {
        let (req, resp) = simple_session();
        let (s, out) = whole(&req, &resp);
        assert_eq!(s.database(), Some("shop"));
        assert_eq!(s.user(), Some("alice"));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, PgKind::Simple);
        assert_eq!(out[0].query, "SELECT 1");
        assert_eq!(out[0].command_tag.as_deref(), Some("SELECT 1"));
        assert_eq!(out[0].rows, 1);
        assert_eq!(out[0].statements, 1);
        assert!(out[0].error.is_none());
        assert_eq!(out[1].query, "SELECT * FROM nope");
        let e = out[1].error.as_ref().unwrap();
        assert_eq!((e.severity.as_str(), e.sqlstate.as_str()), ("ERROR", "42P01"));
        assert_eq!(e.message, "relation \"nope\" does not exist");
        assert_eq!(out[1].command_tag, None);
        assert_eq!(s.pending_requests(), 0);
        check_splits(&req, &resp, &out);
    }

    #[test]
    fn multi_statement_query_keeps_last_tag() {
        let req = [startup("u", "d"), query("SELECT 1; SELECT 2")].concat();
        let resp = [startup_resp(), row("1"), complete("SELECT 1"), row("2"), row("3"), complete("SELECT 2"), ready()]
            .concat();
        let (_, out) = whole(&req, &resp);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].command_tag.as_deref(), Some("SELECT 2"));
        assert_eq!((out[0].rows, out[0].statements), (3, 2));
    }

    fn extended_session() -> (Vec<u8>, Vec<u8>) {
        let req = [
            startup("u", "db"),
            // Unnamed.
            parse("", "SELECT $1"),
            bind("", "", &["hunter2-secret"]),
            execute(""),
            sync(),
            // Named, prepared then reused twice.
            parse("s1", "INSERT INTO t VALUES ($1)"),
            sync(),
            bind("", "s1", &["value-one-secret"]),
            execute(""),
            sync(),
            bind("p", "s1", &["value-two-secret"]),
            execute("p"),
            sync(),
        ]
        .concat();
        let resp = [
            startup_resp(),
            msg(b'1', b""),
            msg(b'2', b""),
            row("x"),
            complete("SELECT 1"),
            ready(),
            msg(b'1', b""),
            ready(),
            msg(b'2', b""),
            complete("INSERT 0 1"),
            ready(),
            msg(b'2', b""),
            complete("INSERT 0 1"),
            ready(),
        ]
        .concat();
        (req, resp)
    }

    #[test]
    fn extended_unnamed_and_named() {
        let (req, resp) = extended_session();
        let (s, out) = whole(&req, &resp);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0].kind, PgKind::Extended);
        assert_eq!((out[0].statement.as_deref(), out[0].query.as_str()), (None, "SELECT $1"));
        assert_eq!((out[0].params, out[0].rows), (1, 1));
        assert_eq!(out[0].command_tag.as_deref(), Some("SELECT 1"));
        for e in &out[1..] {
            assert_eq!(e.statement.as_deref(), Some("s1"));
            assert_eq!(e.query, "INSERT INTO t VALUES ($1)");
            assert_eq!(e.command_tag.as_deref(), Some("INSERT 0 1"));
            assert_eq!(e.params, 1);
        }
        let debug = format!("{out:?}{s:?}");
        assert!(!debug.contains("secret"), "bind values leaked: {debug}");
        assert_eq!(s.pending_requests(), 0);
        check_splits(&req, &resp, &out);
        // Not even while a Bind is half received.
        let mut s = s;
        let b = bind("", "s1", &["half-seen-secret"]);
        s.feed(REQ, &b[..b.len() - 3], b.len() - 3, T, &mut Vec::new()).unwrap();
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn timing_spans_the_group() {
        let mut s = PgSession::new(Role::Client);
        let mut out = Vec::new();
        let t = |n| Timing { enter_ns: n, exit_ns: n + 1 };
        let m = startup("u", "d");
        s.feed(REQ, &m, m.len(), t(1), &mut out).unwrap();
        let m = startup_resp();
        s.feed(RESP, &m, m.len(), t(2), &mut out).unwrap();
        for (i, m) in [parse("", "SELECT 1"), bind("", "", &[]), execute(""), sync()].iter().enumerate() {
            s.feed(REQ, m, m.len(), t(10 + i as u64), &mut out).unwrap();
        }
        for (i, m) in [msg(b'1', b""), msg(b'2', b""), complete("SELECT 1"), ready()].iter().enumerate() {
            s.feed(RESP, m, m.len(), t(20 + i as u64), &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request_first, t(10));
        assert_eq!(out[0].request_last, t(12));
        assert_eq!(out[0].response_first, t(20));
        assert_eq!(out[0].response_last, t(22));
    }

    fn pipeline(fail_second: bool) -> (Vec<u8>, Vec<u8>) {
        let mut req = startup("u", "d");
        for q in ["SELECT 1", "SELECT 2", "SELECT 3"] {
            req.extend([parse("", q), bind("", "", &[]), execute("")].concat());
        }
        req.extend(sync());
        let mut resp = startup_resp();
        resp.extend([msg(b'1', b""), msg(b'2', b""), row("1"), complete("SELECT 1")].concat());
        if fail_second {
            resp.extend(error("22012", "division by zero"));
        } else {
            resp.extend([msg(b'1', b""), msg(b'2', b""), row("2"), complete("SELECT 1")].concat());
            resp.extend([msg(b'1', b""), msg(b'2', b""), row("3"), complete("SELECT 1")].concat());
        }
        resp.extend(ready());
        (req, resp)
    }

    #[test]
    fn pipelined_batch_pairs_in_order() {
        let (req, resp) = pipeline(false);
        let (s, out) = whole(&req, &resp);
        let q: Vec<_> = out.iter().map(|e| (e.query.as_str(), e.rows, e.command_tag.as_deref())).collect();
        assert_eq!(
            q,
            [("SELECT 1", 1, Some("SELECT 1")), ("SELECT 2", 1, Some("SELECT 1")), ("SELECT 3", 1, Some("SELECT 1"))]
        );
        assert_eq!(s.pending_requests(), 0);
        check_splits(&req, &resp, &out);
    }

    #[test]
    fn error_in_pipelined_batch_skips_to_sync() {
        let (req, resp) = pipeline(true);
        let (s, out) = whole(&req, &resp);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].command_tag.as_deref(), Some("SELECT 1"));
        assert_eq!(out[1].query, "SELECT 2");
        assert_eq!(out[1].error.as_ref().map(|e| e.sqlstate.as_str()), Some("22012"));
        assert_eq!(s.skipped_executes(), 1);
        assert_eq!(s.pending_requests(), 0);
        check_splits(&req, &resp, &out);
        // The session goes on after the batch.
        let mut s = s;
        let out = run(&mut s, &[&query("SELECT 4")], &[&[complete("SELECT 0"), ready()].concat()]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].query, "SELECT 4");
    }

    #[test]
    fn copy_counted_and_notification_not_paired() {
        let req = [
            startup("u", "d"),
            query("COPY t FROM STDIN"),
            msg(b'd', b"1\tx\n"),
            msg(b'd', b"2\ty\n"),
            msg(b'c', b""),
            query("LISTEN ch"),
        ]
        .concat();
        let resp = [
            startup_resp(),
            msg(b'G', &[0, 0, 0]),
            complete("COPY 2"),
            ready(),
            complete("LISTEN"),
            ready(),
            msg(b'A', &[vec![0, 0, 0, 1], cs("ch"), cs("payload")].concat()),
            msg(b'N', &[cs("SNOTICE"), vec![0]].concat()),
        ]
        .concat();
        let (s, out) = whole(&req, &resp);
        assert_eq!(s.copies(), 1);
        assert_eq!(s.notifications(), 1);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].command_tag.as_deref(), Some("COPY 2"));
        assert_eq!(out[1].command_tag.as_deref(), Some("LISTEN"));
        check_splits(&req, &resp, &out);
    }

    #[test]
    fn ssl_refused_then_startup_and_accepted_is_tls() {
        let ssl = [8u32.to_be_bytes(), SSL_REQUEST.to_be_bytes()].concat();
        assert!(looks_like_pg_startup(&ssl));
        let req = [ssl.clone(), startup("u", "app"), query("SELECT 1")].concat();
        let resp = [b"N".to_vec(), startup_resp(), complete("SELECT 1"), ready()].concat();
        let (s, out) = whole(&req, &resp);
        assert!(!s.tls());
        assert_eq!(s.database(), Some("app"));
        assert_eq!(out.len(), 1);
        check_splits(&req, &resp, &out);

        let mut s = PgSession::new(Role::Client);
        let out = run(&mut s, &[&ssl], &[b"S\x16\x03\x01"]);
        assert!(s.tls() && out.is_empty());
        let mut out = Vec::new();
        assert!(s.feed(REQ, b"\x16\x03\x01\x02\x00garbage", 12, T, &mut out).is_ok());
        // A ClientHello seen before the answer.
        let mut s = PgSession::new(Role::Client);
        run(&mut s, &[&ssl, b"\x16\x03\x01\x02\x00"], &[]);
        assert!(s.tls());
    }

    #[test]
    fn detection_and_cancel() {
        assert!(looks_like_pg_startup(&startup("u", "d")));
        assert!(looks_like_pg_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]));
        let cancel = [16u32.to_be_bytes(), CANCEL_REQUEST.to_be_bytes(), [0; 4], [0; 4]].concat();
        assert!(looks_like_pg_startup(&cancel));
        assert!(!looks_like_pg_startup(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_pg_startup(&[0, 0, 0, 8]));
        assert!(!looks_like_pg_startup(&[0x7f, 0, 0, 0, 0, 3, 0, 0]));
        let mut s = PgSession::new(Role::Client);
        let out = run(&mut s, &[&cancel], &[]);
        assert!(out.is_empty());
        assert_eq!(s.cancels(), 1);
    }

    #[test]
    fn server_role_reads_requests() {
        let (req, resp) = simple_session();
        let mut s = PgSession::new(Role::Server);
        let mut out = Vec::new();
        s.feed(Direction::Ingress, &req, req.len(), T, &mut out).unwrap();
        s.feed(Direction::Egress, &resp, resp.len(), T, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].error.as_ref().unwrap().sqlstate, "42P01");
    }

    #[test]
    fn malformed_and_lost_desync() {
        let mut s = PgSession::new(Role::Client);
        run(&mut s, &[&startup("u", "d"), &query("SELECT 1")], &[&startup_resp()]);
        let mut out = Vec::new();
        let e = s.feed(REQ, b"\x01\x00", 2, T, &mut out).unwrap_err();
        assert_eq!(e.reason, Malformed::BadType(1));
        assert_eq!(e.dropped, 1);
        assert!(s.desynced());
        let m = [complete("SELECT 1"), ready()].concat();
        assert!(s.feed(RESP, &m, m.len(), T, &mut out).is_ok());
        assert!(out.is_empty());

        for (bytes, reason) in [
            (vec![b'Q', 0x7f, 0xff, 0xff, 0xff], Malformed::TooLong(0x7fff_ffff)),
            (vec![b'Q', 0xff, 0xff, 0xff, 0xf0], Malformed::TooLong(0xffff_fff0)),
            (vec![b'Q', 0, 0, 0, 3], Malformed::ShortLength(3)),
        ] {
            let mut s = PgSession::new(Role::Client);
            run(&mut s, &[&startup("u", "d")], &[]);
            assert_eq!(s.feed(REQ, &bytes, bytes.len(), T, &mut out).unwrap_err().reason, reason);
        }
        let mut s = PgSession::new(Role::Client);
        run(&mut s, &[&startup("u", "d"), &query("SELECT 1")], &[]);
        assert_eq!(s.lost(RESP), 1);
        assert!(s.desynced());
        assert_eq!(s.lost(RESP), 0);
    }

    #[test]
    fn gap_inside_a_body_is_skipped() {
        let mut s = PgSession::new(Role::Client);
        run(&mut s, &[&startup("u", "d"), &query("SELECT 1")], &[&startup_resp()]);
        let rowmsg = row(&"v".repeat(1000));
        let mut out = Vec::new();
        s.feed(RESP, &rowmsg[..100], rowmsg.len(), T, &mut out).unwrap();
        let m = [complete("SELECT 1"), ready()].concat();
        s.feed(RESP, &m, m.len(), T, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rows, 1);
        // A gap past the message end is a loss.
        let mut s = PgSession::new(Role::Client);
        run(&mut s, &[&startup("u", "d")], &[]);
        assert_eq!(s.feed(REQ, &query("x"), 100, T, &mut out).unwrap_err().reason, Malformed::Gap);
    }

    #[test]
    fn long_query_truncated_and_huge_row_streamed() {
        let long = "x".repeat(100_000);
        let req = [startup("u", "d"), query(&long)].concat();
        let mut s = PgSession::new(Role::Client);
        let mut out = Vec::new();
        for p in req.chunks(777) {
            s.feed(REQ, p, p.len(), T, &mut out).unwrap();
            assert!(s.buffered_bytes() <= 2 * (MAX_QUERY_BYTES + SMALL_KEEP));
        }
        let m = startup_resp();
        s.feed(RESP, &m, m.len(), T, &mut out).unwrap();
        // A 10 MB DataRow in small pieces.
        let mut big = vec![b'D'];
        let n = 10_000_000u32;
        big.extend((n + 4).to_be_bytes());
        s.feed(RESP, &big, big.len(), T, &mut out).unwrap();
        let piece = [7u8; 4096];
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(piece.len());
            s.feed(RESP, &piece[..k], k, T, &mut out).unwrap();
            assert!(s.buffered_bytes() <= 2 * (MAX_QUERY_BYTES + SMALL_KEEP));
            left -= k;
        }
        let m = [complete("SELECT 1"), ready()].concat();
        s.feed(RESP, &m, m.len(), T, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].query.len(), MAX_QUERY_BYTES);
        assert!(out[0].query_truncated);
        assert_eq!(out[0].rows, 1);
    }

    #[test]
    fn statement_map_is_bounded() {
        let mut s = PgSession::new(Role::Client);
        run(&mut s, &[&startup("u", "d")], &[&startup_resp()]);
        let mut out = Vec::new();
        for i in 0..(MAX_STATEMENTS + 10) {
            let m = [parse(&format!("s{i}"), "SELECT 1"), sync()].concat();
            s.feed(REQ, &m, m.len(), T, &mut out).unwrap();
            let r = [msg(b'1', b""), ready()].concat();
            s.feed(RESP, &r, r.len(), T, &mut out).unwrap();
        }
        assert_eq!(s.evicted_statements(), 10);
        assert_eq!(s.statements.len(), MAX_STATEMENTS);
        assert!(out.is_empty());
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn hostile_random_bytes_never_panic() {
        let mut st = 0x9e37_79b9_7f4a_7c15u64;
        let (req, resp) = extended_session();
        for round in 0..300 {
            let mut s = PgSession::new(if round & 1 == 0 { Role::Client } else { Role::Server });
            let mut out = Vec::new();
            // Half the rounds: a real session with random bytes spliced in.
            let mut a = if round % 3 == 0 { req.clone() } else { Vec::new() };
            let mut b = if round % 3 == 0 { resp.clone() } else { Vec::new() };
            for _ in 0..(xorshift(&mut st) % 2000) {
                let x = xorshift(&mut st);
                let v = if x & 1 == 0 { &mut a } else { &mut b };
                let at = (x >> 8) as usize % (v.len() + 1);
                v.insert(at, (x >> 32) as u8);
            }
            let (mut ra, mut rb) = (&a[..], &b[..]);
            while !ra.is_empty() || !rb.is_empty() {
                let x = xorshift(&mut st);
                let k = (x % 64) as usize;
                let (dir, src) = if x & 64 == 0 { (Direction::Egress, &mut ra) } else { (Direction::Ingress, &mut rb) };
                let (p, rest) = src.split_at(k.min(src.len()));
                *src = rest;
                let total = if x & 0x300 == 0 { p.len() + (x >> 40) as usize % 100 } else { p.len() };
                let _ = s.feed(dir, p, total, T, &mut out);
                assert!(s.buffered_bytes() <= 2 * (MAX_QUERY_BYTES + SMALL_KEEP));
                assert!(s.pending_requests() <= MAX_PENDING);
                if x & 0xfff == 7 {
                    s.lost(dir);
                }
            }
            s.eof(Direction::Ingress);
        }
    }

    /// The exchanges of the golden capture, as (statement, query, params, rows, tag, sqlstate).
    type Row<'a> = (Option<&'a str>, &'a str, u16, u64, Option<&'a str>, Option<&'a str>);

    #[test]
    fn golden_capture_from_postgres_15() {
        let req: &[u8] = include_bytes!("../../tests/data/pg/session.req");
        let resp: &[u8] = include_bytes!("../../tests/data/pg/session.resp");
        let (s, out) = whole(req, resp);
        let ins = "INSERT INTO t VALUES ($1, $2)";
        let expect: Vec<Row<'_>> = vec![
            (None, "SELECT 1", 0, 1, Some("SELECT 1"), None),
            (None, "CREATE TABLE t (id int PRIMARY KEY, v text)", 0, 0, Some("CREATE TABLE"), None),
            (None, "SELECT 1; SELECT 2", 0, 2, Some("SELECT 1"), None),
            (None, "SELEC 1", 0, 0, None, Some("42601")),
            (None, ins, 2, 0, Some("INSERT 0 1"), None),
            (Some("_pg3_0"), ins, 2, 0, Some("INSERT 0 1"), None),
            (Some("_pg3_0"), ins, 2, 0, Some("INSERT 0 1"), None),
            (None, "SELECT id FROM t WHERE id > $1", 1, 3, Some("SELECT 3"), None),
            (None, "UPDATE t SET v = $1 WHERE id = $2", 2, 0, Some("UPDATE 1"), None),
            (None, "SELECT count(*) FROM t", 0, 1, Some("SELECT 1"), None),
            (Some("_pg3_0"), ins, 2, 0, None, Some("23505")),
        ];
        let got: Vec<Row<'_>> = out
            .iter()
            .map(|e| {
                (
                    e.statement.as_deref(),
                    e.query.as_str(),
                    e.params,
                    e.rows,
                    e.command_tag.as_deref(),
                    e.error.as_ref().map(|e| e.sqlstate.as_str()),
                )
            })
            .collect();
        assert_eq!(got, expect);
        let kinds: Vec<_> = out.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[..4], [PgKind::Simple; 4]);
        assert!(kinds[4..].iter().all(|k| *k == PgKind::Extended));
        assert_eq!(out[2].statements, 2);
        assert_eq!(s.database(), Some("postgres"));
        assert_eq!(s.user(), Some("postgres"));
        assert_eq!(s.pending_requests(), 0);
        assert_eq!(s.unpaired_errors(), 0);
        assert!(out[10].error.as_ref().unwrap().message.contains("duplicate key"));
        let debug = format!("{out:?}");
        assert!(!debug.contains("secret-param"), "bind values leaked");
        check_splits(req, resp, &out);
    }
}
