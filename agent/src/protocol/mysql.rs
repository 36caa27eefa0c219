//! MySQL / MariaDB client/server protocol: incremental parsing of both directions of one
//! connection, and pairing of commands with their responses.
//!
//! One [`MySqlSession`] follows one TCP connection. It is fed the bytes the traced process
//! read ([`Direction::Ingress`]) and wrote ([`Direction::Egress`]), each direction in order,
//! split however the syscalls split them (down to one byte at a time). Which direction
//! carries commands follows from the process's [`Role`].
//!
//! # Model
//! Each direction is a sequence of packets: a 3-byte little-endian payload length, a
//! sequence id, the payload. A payload of exactly `0xFFFFFF` bytes continues in the next
//! packet; the pieces form one logical packet, of which only the first
//! [`MAX_KEPT_BYTES`] are kept (the rest is counted). The connection phase (server
//! greeting, client handshake response, any auth-switch / more-data packets up to the
//! server's OK or ERR) is parsed for the server version ([`MySqlSession::is_mariadb`]),
//! the capabilities, the user and the database; then every client packet with sequence
//! id 0 is a command, queued until its response is complete, and reported as a
//! [`MyExchange`] (FIFO: the protocol is half duplex, so there is normally one at a time).
//!
//! * Responses: OK, ERR (code, SQLSTATE, message cut to [`MAX_ERROR_MESSAGE`]), result
//!   sets (column count, definitions, optional EOF, rows, terminating EOF or OK; rows are
//!   counted, never kept, text or binary), `COM_STMT_PREPARE_OK` (with its parameter and
//!   column definitions), LOCAL INFILE requests (marked, the file is not parsed: the
//!   exchange ends with the server's final OK/ERR). Several result sets
//!   (`SERVER_MORE_RESULTS_EXISTS`) make one exchange; their rows add up.
//! * Intermediate and terminating EOF packets are told apart by length, not by the
//!   negotiated `CLIENT_DEPRECATE_EOF` (a classic EOF is 5 bytes, an OK with an `0xFE`
//!   header at least 7), so a session joined mid-stream needs no capabilities. Only the
//!   definitions after a `COM_STMT_PREPARE_OK` depend on it: when unknown, no EOF is
//!   expected and a stray EOF with nothing pending is ignored.
//! * `COM_STMT_PREPARE` remembers the statement's text and parameter count by statement
//!   id (at most [`MAX_STATEMENTS`], and [`MAX_STATEMENT_TEXT_BYTES`] of text in all; the
//!   oldest is evicted and counted, [`MySqlSession::statements_evicted`]);
//!   `COM_STMT_EXECUTE` reports that text and count. Parameter values are never kept
//!   (they pass through the packet buffer only). `COM_STMT_CLOSE` forgets the statement.
//! * Commands without a response (`COM_QUIT`, `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`)
//!   are reported at once, with the response timing equal to the request's last byte.
//! * `COM_INIT_DB` changes [`MySqlSession::database`] when its OK arrives.
//! * TLS (`CLIENT_SSL` in the client's handshake response, i.e. an SSLRequest) and
//!   compression (`CLIENT_COMPRESS` asked by the client and offered by the server) stop
//!   all parsing: [`MySqlSession::tls`], [`MySqlSession::compressed`]; the caller counts
//!   such connections as not decodable.
//!
//! # Timing
//! The first and last byte of a request or response are attributed to the [`Timing`] of
//! the `feed` call that carried them.
//!
//! # Losing the framing, joining mid-stream
//! Malformed input ([`MyParseError::Malformed`]), a gap that does not fall inside one
//! packet's payload, or [`MySqlSession::lost`] make the session *desynchronized*: pending
//! commands are dropped and both directions wait. The command direction resyncs at the
//! next syscall whose bytes are exactly one whole packet with sequence id 0 and a command
//! byte this module knows (`feed` is called per syscall, so its first byte is a boundary);
//! the response direction then resyncs at the next syscall that starts with a packet
//! header of sequence id 1 (the first packet of a response). Bytes before that are
//! dropped. [`MySqlSession::midstream`] (a connection opened before the agent started)
//! starts desynchronized in the command phase, with unknown capabilities and database.
//!
//! # Bounds
//! At most [`MAX_KEPT_BYTES`] of a logical packet are buffered per direction (plus a
//! partial 4-byte header), [`MAX_PENDING`] commands wait for a response (beyond that the
//! oldest is dropped and an error returned), query texts are cut to [`MAX_QUERY_BYTES`]
//! (`truncated`), error messages to [`MAX_ERROR_MESSAGE`] bytes.
use std::collections::VecDeque;
use std::fmt;

use super::{Direction, Role, Timing};

/// Longest query text kept (the first bytes; `truncated` says it was longer).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Bytes kept of one logical packet: a command byte, a statement id and the query.
pub const MAX_KEPT_BYTES: usize = MAX_QUERY_BYTES + 16;
/// Commands that may wait for a response at once.
pub const MAX_PENDING: usize = 64;
/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Statement text remembered per connection, all statements together.
pub const MAX_STATEMENT_TEXT_BYTES: usize = 256 * 1024;
/// Longest error message kept.
pub const MAX_ERROR_MESSAGE: usize = 256;
/// Longest server version, user or database name kept.
const MAX_NAME: usize = 256;

/// Payload length that means "continued in the next packet".
const MAX_PACKET: usize = 0xFF_FFFF;

pub const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub const CLIENT_COMPRESS: u32 = 0x20;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_SSL: u32 = 0x800;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
pub const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
/// Status flag: another result set follows.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;

/// The command of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `COM_QUIT` 0x01.
    Quit,
    /// `COM_INIT_DB` 0x02.
    InitDb,
    /// `COM_QUERY` 0x03.
    Query,
    /// `COM_PING` 0x0e.
    Ping,
    /// `COM_STMT_PREPARE` 0x16.
    Prepare,
    /// `COM_STMT_EXECUTE` 0x17.
    Execute,
    /// `COM_STMT_CLOSE` 0x19.
    CloseStmt,
    /// `COM_STMT_RESET` 0x1a.
    ResetStmt,
    /// Any other command byte.
    Other(u8),
}

impl Command {
    #[must_use]
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x01 => Command::Quit,
            0x02 => Command::InitDb,
            0x03 => Command::Query,
            0x0e => Command::Ping,
            0x16 => Command::Prepare,
            0x17 => Command::Execute,
            0x19 => Command::CloseStmt,
            0x1a => Command::ResetStmt,
            other => Command::Other(other),
        }
    }

    /// The command byte.
    #[must_use]
    pub fn byte(self) -> u8 {
        match self {
            Command::Quit => 0x01,
            Command::InitDb => 0x02,
            Command::Query => 0x03,
            Command::Ping => 0x0e,
            Command::Prepare => 0x16,
            Command::Execute => 0x17,
            Command::CloseStmt => 0x19,
            Command::ResetStmt => 0x1a,
            Command::Other(b) => b,
        }
    }

    /// Short name as in the protocol documentation (`COM_QUERY`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Command::Quit => "COM_QUIT",
            Command::InitDb => "COM_INIT_DB",
            Command::Query => "COM_QUERY",
            Command::Ping => "COM_PING",
            Command::Prepare => "COM_STMT_PREPARE",
            Command::Execute => "COM_STMT_EXECUTE",
            Command::CloseStmt => "COM_STMT_CLOSE",
            Command::ResetStmt => "COM_STMT_RESET",
            Command::Other(_) => "COM_OTHER",
        }
    }
}

/// Cheap protocol detection on the first bytes a server writes: a protocol-10 greeting
/// (initial handshake packet, sequence id 0) whose server version is a short printable
/// string starting with a digit (`8.0.36`, `5.5.5-10.11.6-MariaDB`). At least the packet
/// header, the protocol byte and the version's NUL are needed.
#[must_use]
pub fn looks_like_greeting(first: &[u8]) -> bool {
    let [l0, l1, l2, seq, 0x0a, rest @ ..] = first else { return false };
    let len = usize::from(*l0) | usize::from(*l1) << 8 | usize::from(*l2) << 16;
    let Some(nul) = rest.iter().position(|&b| b == 0) else { return false };
    let version = rest.get(..nul).unwrap_or_default();
    *seq == 0
        && (32..=1024).contains(&len)
        && (1..=64).contains(&version.len())
        && nul < len
        && version.first().is_some_and(u8::is_ascii_digit)
        && version.iter().all(|b| b.is_ascii_graphic())
}

/// Commands accepted when resynchronizing (the ones a client sends in the command phase).
fn known_command(b: u8) -> bool {
    matches!(b, 0x01..=0x12 | 0x14 | 0x16..=0x1c | 0x1f)
}

/// An ERR packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyError {
    pub code: u16,
    /// Five characters, when the server sent one (`CLIENT_PROTOCOL_41`).
    pub sqlstate: Option<String>,
    /// Cut to [`MAX_ERROR_MESSAGE`] bytes (lossy UTF-8).
    pub message: String,
}

/// One command and its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyExchange {
    pub command: Command,
    /// Raw SQL (`COM_QUERY`, `COM_STMT_PREPARE`; for `COM_STMT_EXECUTE` the prepared
    /// text when the prepare was seen) or schema name (`COM_INIT_DB`), lossy UTF-8, at
    /// most [`MAX_QUERY_BYTES`].
    pub query: Option<String>,
    /// The text was longer than what is kept, or not all of it was captured.
    pub truncated: bool,
    /// `COM_STMT_PREPARE` (from its response), `COM_STMT_EXECUTE`, `_CLOSE`, `_RESET`.
    pub statement_id: Option<u32>,
    /// Parameters of the prepared statement (never their values).
    pub params: u16,
    /// Rows of the result set(s).
    pub rows: u64,
    /// From the final OK packet.
    pub affected_rows: Option<u64>,
    pub error: Option<MyError>,
    /// The server asked for a LOCAL INFILE.
    pub local_infile: bool,
    /// The session's database when the command was sent.
    pub database: Option<String>,
    pub request_first: Timing,
    pub request_last: Timing,
    pub response_first: Timing,
    pub response_last: Timing,
}

/// Why some bytes could not be parsed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MyParseError {
    /// Not a packet this module understands where it is: the session desynchronizes.
    #[error("malformed MySQL packet ({dir:?}): {reason}")]
    Malformed { dir: Direction, reason: &'static str },
    /// A response arrived with no command waiting for it; it is skipped.
    #[error("MySQL response ({dir:?}) with no pending command")]
    UnexpectedResponse { dir: Direction },
    /// Too many commands without responses; the oldest was dropped.
    #[error("more than {limit} MySQL commands await a response; dropped the oldest")]
    TooManyPending { limit: usize },
    /// Uncaptured bytes across packet boundaries: the session desynchronizes.
    #[error("{gap} uncaptured bytes across MySQL packets ({dir:?})")]
    Gap { dir: Direction, gap: u64 },
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server greeting.
    Greeting,
    /// Waiting for the client's handshake response.
    HandshakeResponse,
    /// Auth switch / more data until the server's OK or ERR.
    Auth,
    Command,
    /// TLS, compression, a failed login: nothing more is parsed.
    Stopped,
}

/// What the response to a pending command is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resp {
    /// The first packet of a (next) result.
    Start,
    /// Column definitions still to come, then (maybe) an EOF.
    Columns {
        left: u64,
    },
    /// An intermediate EOF may follow the column definitions.
    ColumnsEof,
    Rows,
    /// After a LOCAL INFILE request: the final OK or ERR.
    Final,
    /// After `COM_STMT_PREPARE_OK`: definitions to skip.
    PrepareDefs {
        params: u16,
        columns: u16,
        eof: Option<bool>,
    },
    /// A single packet of any kind ends it (e.g. `COM_STATISTICS`).
    AnyPacket,
    /// `COM_FIELD_LIST`, `COM_CHANGE_USER`: packets until OK / ERR / EOF.
    UntilOkErr,
}

#[derive(Debug)]
struct Pending {
    ex: MyExchange,
    resp: Resp,
    /// `COM_INIT_DB`: the schema to switch to on OK.
    init_db: Option<String>,
    /// `COM_STMT_PREPARE`: the full text to remember.
    prepare_text: Option<(String, bool)>,
    /// A response packet was seen.
    started: bool,
}

#[derive(Debug)]
struct Statement {
    id: u32,
    text: String,
    truncated: bool,
    params: u16,
}

/// A complete logical packet.
struct Packet<'a> {
    seq: u8,
    data: &'a [u8],
    /// Payload length (all physical packets).
    len: u64,
    /// Fewer bytes kept than the payload has.
    truncated: bool,
    first: Timing,
    last: Timing,
}

/// Packet framing of one direction.
#[derive(Debug, Default)]
struct Framer {
    hdr: [u8; 4],
    hdr_len: usize,
    /// Inside a physical packet's payload: bytes left.
    remaining: usize,
    in_payload: bool,
    /// The current physical packet is 0xFFFFFF long (another one follows).
    continues: bool,
    /// A logical packet has begun.
    started: bool,
    buf: Vec<u8>,
    len: u64,
    truncated: bool,
    /// A gap inside this packet: later bytes are not kept (they would not follow on).
    hole: bool,
    seq: u8,
    first: Timing,
}

/// What the framer found.
enum Step {
    /// A logical packet is complete (in `buf`).
    Packet,
    /// All bytes consumed.
    Done,
}

impl Framer {
    fn reset(&mut self) {
        self.hdr_len = 0;
        self.remaining = 0;
        self.in_payload = false;
        self.continues = false;
        self.started = false;
        self.buf.clear();
        self.len = 0;
        self.truncated = false;
        self.hole = false;
    }

    /// Consumes bytes of `data` up to the end of a logical packet.
    fn step(&mut self, data: &mut &[u8], t: Timing) -> Step {
        loop {
            if self.in_payload {
                let n = self.remaining.min(data.len());
                let (take, rest) = data.split_at(n);
                let room = MAX_KEPT_BYTES.saturating_sub(self.buf.len());
                if take.len() > room {
                    self.truncated = true;
                }
                if !self.hole {
                    self.buf.extend_from_slice(take.get(..take.len().min(room)).unwrap_or_default());
                }
                self.len += n as u64;
                self.remaining -= n;
                *data = rest;
                if self.remaining > 0 {
                    return Step::Done;
                }
                self.in_payload = false;
                if !self.continues {
                    return Step::Packet;
                }
                continue;
            }
            if self.hdr_len < 4 {
                let Some((&b, rest)) = data.split_first() else {
                    return Step::Done;
                };
                if let Some(slot) = self.hdr.get_mut(self.hdr_len) {
                    *slot = b;
                }
                self.hdr_len += 1;
                *data = rest;
                if self.hdr_len == 1 && !self.started {
                    self.started = true;
                    self.first = t;
                    self.len = 0;
                    self.truncated = false;
                    self.hole = false;
                    self.buf.clear();
                }
                continue;
            }
            let [a, b, c, seq] = self.hdr;
            let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
            self.hdr_len = 0;
            if !self.continues {
                self.seq = seq;
            }
            self.continues = len == MAX_PACKET;
            self.remaining = len;
            self.in_payload = true;
        }
    }

    /// Skips `gap` uncaptured bytes: possible only inside one payload.
    fn skip(&mut self, gap: u64) -> bool {
        if gap == 0 {
            return true;
        }
        match usize::try_from(gap) {
            Ok(g) if self.in_payload && g <= self.remaining => {
                self.remaining -= g;
                self.len += gap;
                self.truncated = true;
                self.hole = true;
                true
            }
            _ => false,
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len() + self.hdr_len
    }
}

/// Bounds-checked little-endian reader.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]))
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        let b = self.take(n)?;
        Some(b.iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
    }

    /// Length-encoded integer; `None` for 0xFB (NULL) / 0xFF or a short buffer.
    fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            b @ 0..=0xfa => Some(u64::from(b)),
            0xfc => self.uint(2),
            0xfd => self.uint(3),
            0xfe => self.uint(8),
            _ => None,
        }
    }

    fn nul_str(&mut self) -> Option<&'a [u8]> {
        let i = self.data.iter().position(|&b| b == 0)?;
        let s = self.take(i)?;
        self.take(1)?;
        Some(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

fn lossy(b: &[u8], max: usize) -> String {
    let cut = b.get(..b.len().min(max)).unwrap_or_default();
    String::from_utf8_lossy(cut).into_owned()
}

/// Parser and command/response pairing for one MySQL / MariaDB connection.
#[derive(Debug)]
pub struct MySqlSession {
    role: Role,
    phase: Phase,
    frames: [Framer; 2],
    server_caps: u32,
    client_caps: u32,
    /// Capabilities are unknown (joined mid-stream).
    caps_known: bool,
    server_version: Option<String>,
    user: Option<String>,
    database: Option<String>,
    tls: bool,
    compressed: bool,
    pending: VecDeque<Pending>,
    statements: VecDeque<Statement>,
    statement_text: usize,
    evicted: u64,
    /// Desynchronized: the command direction waits for a whole command packet.
    desync: bool,
    /// The response direction waits for a syscall starting with sequence id 1.
    resp_desync: bool,
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl MySqlSession {
    /// A session that sees the connection from its first byte (server greeting).
    #[must_use]
    pub fn new(role: Role) -> Self {
        MySqlSession {
            role,
            phase: Phase::Greeting,
            frames: [Framer::default(), Framer::default()],
            server_caps: 0,
            client_caps: 0,
            caps_known: false,
            server_version: None,
            user: None,
            database: None,
            tls: false,
            compressed: false,
            pending: VecDeque::new(),
            statements: VecDeque::new(),
            statement_text: 0,
            evicted: 0,
            desync: false,
            resp_desync: false,
        }
    }

    /// A session for a connection whose beginning was not seen: in the command phase,
    /// desynchronized until a syscall carries exactly one command packet (module doc).
    #[must_use]
    pub fn midstream(role: Role) -> Self {
        let mut s = Self::new(role);
        s.phase = Phase::Command;
        s.desync = true;
        s.resp_desync = true;
        s
    }

    /// Bytes the process read (Ingress) or wrote (Egress), in order: one syscall's
    /// captured prefix `data` of `total_len` bytes moved (the rest is a gap). Completed
    /// exchanges are pushed to `out`, also when an error is returned (the first error of
    /// the call).
    pub fn feed(
        &mut self,
        dir: Direction,
        data: &[u8],
        total_len: usize,
        t: Timing,
        out: &mut Vec<MyExchange>,
    ) -> Result<(), MyParseError> {
        if self.phase == Phase::Stopped {
            return Ok(());
        }
        let client = dir == self.role.request_direction();
        let i = dir_index(dir);
        let mut error = None;
        if client && self.desync {
            let whole = data.len() >= 5
                && data.len() == total_len
                && data.get(3) == Some(&0)
                && data.get(4).is_some_and(|&b| known_command(b))
                && data.first().zip(data.get(1)).zip(data.get(2)).is_some_and(|((&a, &b), &c)| {
                    usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16 == data.len() - 4
                });
            if !whole {
                return Ok(());
            }
            self.desync = false;
            self.resp_desync = true;
            if let Some(f) = self.frames.get_mut(i) {
                f.reset();
            }
        } else if !client && (self.desync || self.resp_desync) {
            if self.desync || self.pending.is_empty() || data.len() < 4 || data.get(3) != Some(&1) {
                return Ok(());
            }
            self.resp_desync = false;
            if let Some(f) = self.frames.get_mut(i) {
                f.reset();
            }
        }
        let mut rest = data;
        if self.packets(dir, client, &mut rest, t, out, &mut error) {
            return error.map_or(Ok(()), Err);
        }
        let gap = total_len.saturating_sub(data.len()) as u64;
        if self.frames.get_mut(i).is_some_and(|f| f.skip(gap)) {
            // The gap may end a packet.
            self.packets(dir, client, &mut rest, t, out, &mut error);
        } else {
            self.desynchronize();
            error.get_or_insert(MyParseError::Gap { dir, gap });
        }
        error.map_or(Ok(()), Err)
    }

    /// Parses the packets `rest` completes. Returns whether to stop (desynchronized by
    /// an error, or parsing stopped).
    fn packets(
        &mut self,
        dir: Direction,
        client: bool,
        rest: &mut &[u8],
        t: Timing,
        out: &mut Vec<MyExchange>,
        error: &mut Option<MyParseError>,
    ) -> bool {
        let i = dir_index(dir);
        loop {
            let Some(f) = self.frames.get_mut(i) else { return true };
            if let Step::Done = f.step(rest, t) {
                return false;
            }
            let buf = std::mem::take(&mut f.buf);
            let pkt = Packet { seq: f.seq, data: &buf, len: f.len, truncated: f.truncated, first: f.first, last: t };
            f.started = false;
            let r = if client { self.client_packet(&pkt, out) } else { self.server_packet(dir, &pkt, out) };
            if let Some(f) = self.frames.get_mut(i) {
                let mut buf = buf;
                buf.clear();
                if buf.capacity() > 4096 {
                    buf = Vec::new();
                }
                f.buf = buf;
            }
            if let Err(e) = r {
                let fatal = matches!(e, MyParseError::Malformed { .. });
                error.get_or_insert(e);
                if fatal {
                    self.desynchronize();
                    return true;
                }
            }
            if self.phase == Phase::Stopped {
                return true;
            }
        }
    }

    /// The capture lost bytes of `dir` (how many is unknown; `_before_ns` is accepted for
    /// symmetry with HTTP/1 and not used): the framing is unknown, every pending command
    /// is dropped (returned: how many) and the session resyncs as the module doc says.
    pub fn lost(&mut self, _dir: Direction, _before_ns: u64) -> usize {
        if self.phase == Phase::Stopped {
            return 0;
        }
        let n = self.pending.len();
        self.desynchronize();
        n
    }

    /// End of stream in `dir`: a partial packet of `dir` is dropped, and at the end of the
    /// response direction so is every command still waiting (never reported: its response
    /// was not seen).
    pub fn eof(&mut self, dir: Direction, _t: Timing, _out: &mut Vec<MyExchange>) {
        if let Some(f) = self.frames.get_mut(dir_index(dir)) {
            f.reset();
        }
        if dir != self.role.request_direction() {
            self.pending.clear();
        }
    }

    fn desynchronize(&mut self) {
        self.pending.clear();
        if self.phase != Phase::Stopped {
            self.phase = Phase::Command;
        }
        self.desync = true;
        self.resp_desync = true;
        for f in &mut self.frames {
            f.reset();
        }
    }

    /// Commands waiting for a response.
    #[must_use]
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held, both directions (at most `2 * (MAX_KEPT_BYTES + 4)`).
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.frames.iter().map(Framer::buffered).sum()
    }

    /// The server greeting's version string.
    #[must_use]
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// The server says it is MariaDB (its version string contains `MariaDB`).
    #[must_use]
    pub fn is_mariadb(&self) -> bool {
        self.server_version.as_deref().is_some_and(|v| v.contains("MariaDB"))
    }

    /// `mariadb` or `mysql` (`db.system`).
    #[must_use]
    pub fn system(&self) -> &'static str {
        if self.is_mariadb() {
            "mariadb"
        } else {
            "mysql"
        }
    }

    /// The current database (handshake response or `COM_INIT_DB`).
    #[must_use]
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The user name from the handshake response.
    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The client asked for TLS (SSLRequest): nothing more is parsed.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Compression was negotiated: nothing more is parsed.
    #[must_use]
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Nothing more is parsed (TLS, compression, a failed login).
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Server and client capability flags from the handshake (0 when not seen).
    #[must_use]
    pub fn capabilities(&self) -> (u32, u32) {
        (self.server_caps, self.client_caps)
    }

    /// Prepared statements forgotten because the map was full.
    #[must_use]
    pub fn statements_evicted(&self) -> u64 {
        self.evicted
    }

    /// Prepared statements remembered.
    #[must_use]
    pub fn statements(&self) -> usize {
        self.statements.len()
    }

    fn deprecate_eof(&self) -> Option<bool> {
        self.caps_known.then_some(self.client_caps & self.server_caps & CLIENT_DEPRECATE_EOF != 0)
    }

    fn client_packet(&mut self, p: &Packet<'_>, out: &mut Vec<MyExchange>) -> Result<(), MyParseError> {
        let dir = self.role.request_direction();
        match self.phase {
            Phase::Greeting => Err(MyParseError::Malformed { dir, reason: "client spoke before the server greeting" }),
            Phase::HandshakeResponse => self.handshake_response(dir, p),
            Phase::Auth | Phase::Stopped => Ok(()),
            Phase::Command => {
                if p.seq != 0 {
                    // LOCAL INFILE contents, or auth data of COM_CHANGE_USER.
                    return Ok(());
                }
                self.command(p, out)
            }
        }
    }

    fn handshake_response(&mut self, dir: Direction, p: &Packet<'_>) -> Result<(), MyParseError> {
        let mut r = Reader::new(p.data);
        let bad = MyParseError::Malformed { dir, reason: "short handshake response" };
        let low = r.u16().ok_or(bad.clone())?;
        if u32::from(low) & CLIENT_PROTOCOL_41 == 0 {
            // HandshakeResponse320: 2-byte caps, 3-byte max packet, user.
            self.client_caps = u32::from(low);
            self.caps_known = true;
            r.take(3).ok_or(bad)?;
            self.user = r.nul_str().map(|u| lossy(u, MAX_NAME));
            return self.after_handshake(u32::from(low));
        }
        let high = r.u16().ok_or(bad.clone())?;
        let caps = u32::from(low) | u32::from(high) << 16;
        self.client_caps = caps;
        self.caps_known = true;
        r.take(4 + 1 + 23).ok_or(bad)?;
        if caps & CLIENT_SSL != 0 {
            self.tls = true;
            self.phase = Phase::Stopped;
            return Ok(());
        }
        self.user = r.nul_str().map(|u| lossy(u, MAX_NAME));
        let auth_len = if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc()
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            r.u8().map(u64::from)
        } else {
            r.nul_str().map(|_| 0)
        };
        let db = auth_len
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| r.take(n))
            .filter(|_| caps & CLIENT_CONNECT_WITH_DB != 0)
            .and_then(|_| r.nul_str().or_else(|| Some(r.rest())));
        if let Some(db) = db.filter(|d| !d.is_empty()) {
            self.database = Some(lossy(db, MAX_NAME));
        }
        self.after_handshake(caps)
    }

    fn after_handshake(&mut self, caps: u32) -> Result<(), MyParseError> {
        if caps & self.server_caps & CLIENT_COMPRESS != 0 {
            self.compressed = true;
            self.phase = Phase::Stopped;
        } else {
            self.phase = Phase::Auth;
        }
        Ok(())
    }

    fn command(&mut self, p: &Packet<'_>, out: &mut Vec<MyExchange>) -> Result<(), MyParseError> {
        let dir = self.role.request_direction();
        let mut r = Reader::new(p.data);
        let Some(byte) = r.u8() else {
            return Err(MyParseError::Malformed { dir, reason: "empty command packet" });
        };
        let command = Command::from_byte(byte);
        let mut ex = MyExchange {
            command,
            query: None,
            truncated: false,
            statement_id: None,
            params: 0,
            rows: 0,
            affected_rows: None,
            error: None,
            local_infile: false,
            database: self.database.clone(),
            request_first: p.first,
            request_last: p.last,
            response_first: p.last,
            response_last: p.last,
        };
        let text = |r: &mut Reader<'_>| {
            let t = r.rest();
            (lossy(t, MAX_QUERY_BYTES), p.truncated || p.len.saturating_sub(1) > MAX_QUERY_BYTES as u64)
        };
        let mut pending =
            Pending { ex: ex.clone(), resp: Resp::Start, init_db: None, prepare_text: None, started: false };
        match command {
            Command::Query | Command::Prepare | Command::InitDb => {
                let (q, truncated) = text(&mut r);
                if command == Command::InitDb {
                    pending.init_db = Some(lossy(q.as_bytes(), MAX_NAME));
                }
                if command == Command::Prepare {
                    pending.prepare_text = Some((q.clone(), truncated));
                }
                pending.ex.query = Some(q);
                pending.ex.truncated = truncated;
            }
            Command::Execute | Command::ResetStmt | Command::CloseStmt | Command::Other(0x18 | 0x1c) => {
                let id = r.u32().ok_or(MyParseError::Malformed { dir, reason: "short statement command" })?;
                pending.ex.statement_id = Some(id);
                if let Some(s) = self.statements.iter().find(|s| s.id == id) {
                    if command == Command::Execute {
                        pending.ex.query = Some(s.text.clone());
                        pending.ex.truncated = s.truncated;
                        pending.ex.params = s.params;
                    }
                }
                match command {
                    Command::CloseStmt => {
                        if let Some(pos) = self.statements.iter().position(|s| s.id == id) {
                            if let Some(s) = self.statements.remove(pos) {
                                self.statement_text -= s.text.len();
                            }
                        }
                        out.push(pending.ex);
                        return Ok(());
                    }
                    Command::Other(0x18) => {
                        out.push(pending.ex);
                        return Ok(());
                    }
                    Command::Other(_) => pending.resp = Resp::Rows,
                    _ => {}
                }
            }
            Command::Quit => {
                ex.response_first = p.last;
                out.push(ex);
                return Ok(());
            }
            Command::Ping => {}
            Command::Other(0x09) => pending.resp = Resp::AnyPacket,
            Command::Other(0x04 | 0x11) => pending.resp = Resp::UntilOkErr,
            Command::Other(_) => {}
        }
        let mut result = Ok(());
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            result = Err(MyParseError::TooManyPending { limit: MAX_PENDING });
        }
        self.pending.push_back(pending);
        result
    }

    fn server_packet(&mut self, dir: Direction, p: &Packet<'_>, out: &mut Vec<MyExchange>) -> Result<(), MyParseError> {
        match self.phase {
            Phase::Greeting => self.greeting(dir, p),
            Phase::HandshakeResponse => {
                Err(MyParseError::Malformed { dir, reason: "server spoke twice in the handshake" })
            }
            Phase::Auth => {
                match p.data.first() {
                    Some(0x00) => self.phase = Phase::Command,
                    Some(0xff) => self.phase = Phase::Stopped,
                    // Auth switch (0xFE), more data (0x01): the client answers.
                    _ => {}
                }
                Ok(())
            }
            Phase::Command => self.response(dir, p, out),
            Phase::Stopped => Ok(()),
        }
    }

    fn greeting(&mut self, dir: Direction, p: &Packet<'_>) -> Result<(), MyParseError> {
        let mut r = Reader::new(p.data);
        match r.u8() {
            Some(10) => {}
            Some(0xff) => {
                // The server refused the connection (too many connections, host blocked).
                self.phase = Phase::Stopped;
                return Ok(());
            }
            _ => return Err(MyParseError::Malformed { dir, reason: "not a protocol 10 greeting" }),
        }
        let bad = MyParseError::Malformed { dir, reason: "short server greeting" };
        let version = r.nul_str().ok_or(bad.clone())?;
        self.server_version = Some(lossy(version, MAX_NAME));
        r.take(4 + 8 + 1).ok_or(bad)?;
        let low = r.u16().unwrap_or(0);
        let high = r.take(1 + 2).and_then(|_| r.u16()).unwrap_or(0);
        self.server_caps = u32::from(low) | u32::from(high) << 16;
        self.phase = Phase::HandshakeResponse;
        Ok(())
    }

    fn response(&mut self, dir: Direction, p: &Packet<'_>, out: &mut Vec<MyExchange>) -> Result<(), MyParseError> {
        let deprecate = self.deprecate_eof();
        let first = p.data.first().copied();
        let Some(pd) = self.pending.front_mut() else {
            // A stray EOF after definitions whose count was unknown is expected.
            if first == Some(0xfe) && p.len < 9 {
                return Ok(());
            }
            return Err(MyParseError::UnexpectedResponse { dir });
        };
        if !pd.started {
            pd.started = true;
            pd.ex.response_first = p.first;
        }
        pd.ex.response_last = p.last;
        let is_eof = first == Some(0xfe) && p.len < 9;
        // An OK with an 0xFE header (CLIENT_DEPRECATE_EOF) or a classic EOF ends rows.
        let is_end = first == Some(0xfe) && p.len < MAX_PACKET as u64;
        let mut done = false;
        match pd.resp {
            Resp::Start | Resp::Final => match first {
                Some(0x00) => {
                    let more = ok_packet(&mut pd.ex, p.data);
                    done = !more;
                    pd.resp = Resp::Start;
                    if pd.ex.command == Command::Prepare && pd.resp == Resp::Start {
                        let mut r = Reader::new(p.data.get(1..).unwrap_or_default());
                        let (id, cols, params) = (r.u32(), r.u16(), r.u16());
                        if let (Some(id), Some(cols), Some(params)) = (id, cols, params) {
                            pd.ex.affected_rows = None;
                            pd.ex.statement_id = Some(id);
                            pd.ex.params = params;
                            pd.resp = Resp::PrepareDefs { params, columns: cols, eof: deprecate.map(|d| !d) };
                            done = params == 0 && cols == 0;
                        }
                    }
                }
                Some(0xff) => done = err_packet(&mut pd.ex, p.data),
                Some(0xfe) if is_end => done = !ok_packet(&mut pd.ex, p.data),
                Some(0xfb) => {
                    pd.ex.local_infile = true;
                    pd.resp = Resp::Final;
                }
                _ => {
                    let n = Reader::new(p.data).lenenc();
                    match n {
                        Some(n) if n > 0 && pd.resp == Resp::Start => pd.resp = Resp::Columns { left: n },
                        _ => return self.fail(dir, "bad column count"),
                    }
                }
            },
            Resp::Columns { left } => {
                if first == Some(0xff) {
                    done = err_packet(&mut pd.ex, p.data);
                } else {
                    pd.resp = if left <= 1 { Resp::ColumnsEof } else { Resp::Columns { left: left - 1 } };
                }
            }
            Resp::ColumnsEof => {
                if is_eof && p.len < 7 {
                    pd.resp = Resp::Rows;
                } else {
                    pd.resp = Resp::Rows;
                    done = rows_packet(pd, first, is_end, p.data);
                }
            }
            Resp::Rows => done = rows_packet(pd, first, is_end, p.data),
            Resp::PrepareDefs { params, columns, eof } => {
                if first == Some(0xff) {
                    done = err_packet(&mut pd.ex, p.data);
                } else if is_eof && eof != Some(false) {
                    // EOF after a group of definitions.
                    done = params == 0 && columns == 0;
                } else if params > 0 {
                    let params = params - 1;
                    pd.resp = Resp::PrepareDefs { params, columns, eof };
                    done = params == 0 && columns == 0 && eof != Some(true);
                } else if columns > 0 {
                    let columns = columns - 1;
                    pd.resp = Resp::PrepareDefs { params, columns, eof };
                    done = columns == 0 && eof != Some(true);
                } else {
                    return self.fail(dir, "too many definitions after COM_STMT_PREPARE_OK");
                }
            }
            Resp::AnyPacket => done = true,
            Resp::UntilOkErr => match first {
                Some(0x00) => done = !ok_packet(&mut pd.ex, p.data),
                Some(0xff) => done = err_packet(&mut pd.ex, p.data),
                Some(0xfe) if is_eof => done = true,
                _ => {}
            },
        }
        if done {
            if let Some(pd) = self.pending.pop_front() {
                self.complete(pd, out);
            }
        }
        Ok(())
    }

    fn fail(&mut self, dir: Direction, reason: &'static str) -> Result<(), MyParseError> {
        Err(MyParseError::Malformed { dir, reason })
    }

    fn complete(&mut self, pd: Pending, out: &mut Vec<MyExchange>) {
        let ok = pd.ex.error.is_none();
        if ok {
            if let Some(db) = pd.init_db {
                self.database = Some(db);
            }
            if let (Some((text, truncated)), Some(id)) = (pd.prepare_text, pd.ex.statement_id) {
                self.remember(Statement { id, text, truncated, params: pd.ex.params });
            }
        }
        out.push(pd.ex);
    }

    fn remember(&mut self, s: Statement) {
        if let Some(pos) = self.statements.iter().position(|o| o.id == s.id) {
            if let Some(old) = self.statements.remove(pos) {
                self.statement_text -= old.text.len();
            }
        }
        while self.statements.len() >= MAX_STATEMENTS
            || (self.statement_text + s.text.len() > MAX_STATEMENT_TEXT_BYTES && !self.statements.is_empty())
        {
            if let Some(old) = self.statements.pop_front() {
                self.statement_text -= old.text.len();
                self.evicted += 1;
            }
        }
        self.statement_text += s.text.len();
        self.statements.push_back(s);
    }
}

/// A row, or the end of the rows. Returns whether the exchange is complete.
fn rows_packet(pd: &mut Pending, first: Option<u8>, is_end: bool, data: &[u8]) -> bool {
    match first {
        Some(0xff) => err_packet(&mut pd.ex, data),
        Some(0xfe) if is_end => {
            let more = if data.len() < 7 {
                // Classic EOF: warnings, status.
                let mut r = Reader::new(data.get(1..).unwrap_or_default());
                r.u16().and(r.u16()).is_some_and(|s| s & SERVER_MORE_RESULTS_EXISTS != 0)
            } else {
                let rows = pd.ex.affected_rows;
                let more = ok_packet(&mut pd.ex, data);
                // The OK that ends a result set carries no affected-rows count.
                pd.ex.affected_rows = rows;
                more
            };
            pd.resp = Resp::Start;
            !more
        }
        _ => {
            pd.ex.rows += 1;
            false
        }
    }
}

/// An OK packet: records affected rows; returns whether more results follow.
fn ok_packet(ex: &mut MyExchange, data: &[u8]) -> bool {
    let mut r = Reader::new(data.get(1..).unwrap_or_default());
    let affected = r.lenenc();
    if let Some(a) = affected {
        ex.affected_rows = Some(ex.affected_rows.unwrap_or(0).saturating_add(a));
    }
    let status = r.lenenc().and_then(|_| r.u16()).unwrap_or(0);
    status & SERVER_MORE_RESULTS_EXISTS != 0
}

/// An ERR packet: records the error; returns whether it ends the exchange (a MariaDB
/// progress report, code 0xFFFF, does not).
fn err_packet(ex: &mut MyExchange, data: &[u8]) -> bool {
    let mut r = Reader::new(data.get(1..).unwrap_or_default());
    let code = r.u16().unwrap_or(0);
    if code == 0xffff {
        return false;
    }
    let mut sqlstate = None;
    if r.data.first() == Some(&b'#') && r.data.len() >= 6 {
        sqlstate = r.take(6).and_then(|s| s.get(1..)).map(|s| lossy(s, 5));
    }
    ex.error = Some(MyError { code, sqlstate, message: lossy(r.rest(), MAX_ERROR_MESSAGE) });
    true
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Other(b) => write!(f, "COM_0x{b:02x}"),
            c => f.write_str(c.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Direction = Direction::Egress;
    const S: Direction = Direction::Ingress;
    const CAPS: u32 = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CLIENT_CONNECT_WITH_DB;

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        v.extend_from_slice(payload);
        v
    }

    fn greeting(version: &str, caps: u32) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(version.as_bytes());
        p.push(0);
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        pkt(0, &p)
    }

    fn handshake(caps: u32, user: &str, db: Option<&str>) -> Vec<u8> {
        let caps = if db.is_some() { caps } else { caps & !CLIENT_CONNECT_WITH_DB };
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&(1u32 << 24).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        if caps & CLIENT_SSL != 0 {
            return pkt(1, &p);
        }
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(20);
        p.extend_from_slice(&[0x5a; 20]);
        if let Some(db) = db {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
        p.extend_from_slice(b"mysql_native_password\0");
        pkt(1, &p)
    }

    fn ok(seq: u8, affected: u8, status: u16) -> Vec<u8> {
        let mut p = vec![0, affected, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        pkt(seq, &p)
    }

    fn err(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
        let mut p = vec![0xff];
        p.extend_from_slice(&code.to_le_bytes());
        p.push(b'#');
        p.extend_from_slice(state.as_bytes());
        p.extend_from_slice(msg.as_bytes());
        pkt(seq, &p)
    }

    fn eof(seq: u8) -> Vec<u8> {
        pkt(seq, &[0xfe, 0, 0, 2, 0])
    }

    fn eof_ok(seq: u8) -> Vec<u8> {
        pkt(seq, &[0xfe, 0, 0, 2, 0, 0, 0])
    }

    fn coldef(seq: u8, name: &str) -> Vec<u8> {
        let mut p = Vec::new();
        for s in ["def", "test", "t", "t", name, name] {
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(&[0x0c, 45, 0, 11, 0, 0, 0, 3, 0, 0, 0, 0, 0]);
        pkt(seq, &p)
    }

    fn text_row(seq: u8, vals: &[&str]) -> Vec<u8> {
        let mut p = Vec::new();
        for v in vals {
            p.push(v.len() as u8);
            p.extend_from_slice(v.as_bytes());
        }
        pkt(seq, &p)
    }

    fn cmd(byte: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![byte];
        p.extend_from_slice(body);
        pkt(0, &p)
    }

    /// A result set of two columns and `rows` rows, classic EOF or not.
    fn result_set(rows: &[[&str; 2]], deprecate: bool) -> Vec<u8> {
        let mut v = pkt(1, &[2]);
        v.extend(coldef(2, "id"));
        v.extend(coldef(3, "name"));
        let mut seq = 4;
        if !deprecate {
            v.extend(eof(seq));
            seq += 1;
        }
        for r in rows {
            v.extend(text_row(seq, r));
            seq += 1;
        }
        v.extend(if deprecate { eof_ok(seq) } else { eof(seq) });
        v
    }

    type Script = Vec<(Direction, Vec<u8>)>;

    fn login(version: &str, caps: u32, db: Option<&str>) -> Script {
        vec![(S, greeting(version, caps)), (C, handshake(caps, "app", db)), (S, ok(2, 0, 2))]
    }

    /// Feeds each step whole; returns the exchanges and the errors.
    fn run(s: &mut MySqlSession, script: &Script) -> (Vec<MyExchange>, usize) {
        let mut out = Vec::new();
        let mut errors = 0;
        for (i, (dir, bytes)) in script.iter().enumerate() {
            let t = Timing { enter_ns: i as u64 * 10, exit_ns: i as u64 * 10 + 1 };
            if s.feed(*dir, bytes, bytes.len(), t, &mut out).is_err() {
                errors += 1;
            }
        }
        (out, errors)
    }

    /// Feeds each step in pieces cut at `cuts` (positions inside the step).
    fn run_split(s: &mut MySqlSession, script: &Script, piece: usize) -> Vec<MyExchange> {
        let mut out = Vec::new();
        for (i, (dir, bytes)) in script.iter().enumerate() {
            let t = Timing { enter_ns: i as u64 * 10, exit_ns: i as u64 * 10 + 1 };
            for c in bytes.chunks(piece.max(1)) {
                let _ = s.feed(*dir, c, c.len(), t, &mut out);
                assert!(s.buffered_bytes() <= 2 * (MAX_KEPT_BYTES + 4));
            }
        }
        out
    }

    /// Every single cut of every step, and byte by byte, give the same exchanges.
    fn check_splits(make: impl Fn() -> MySqlSession, script: &Script, want: &[MyExchange]) {
        assert_eq!(run_split(&mut make(), script, 1), want, "byte by byte");
        for (k, (_, bytes)) in script.iter().enumerate() {
            for cut in 1..bytes.len() {
                let mut s = make();
                let mut out = Vec::new();
                for (i, (dir, b)) in script.iter().enumerate() {
                    let t = Timing { enter_ns: i as u64 * 10, exit_ns: i as u64 * 10 + 1 };
                    if i == k {
                        let (x, y) = b.split_at(cut);
                        let _ = s.feed(*dir, x, x.len(), t, &mut out);
                        let _ = s.feed(*dir, y, y.len(), t, &mut out);
                    } else {
                        let _ = s.feed(*dir, b, b.len(), t, &mut out);
                    }
                }
                assert_eq!(out, want, "step {k} cut at {cut}");
            }
        }
    }

    #[test]
    fn mariadb_login_query_errors_and_init_db() {
        let mut script = login("5.5.5-10.11.6-MariaDB-0+deb12u1", CAPS, Some("shop"));
        script.push((C, cmd(3, b"SELECT id, name FROM t")));
        script.push((S, result_set(&[["1", "alice"], ["2", "bob"]], false)));
        script.push((C, cmd(3, b"INSERT INTO t VALUES (1)")));
        script.push((S, err(1, 1062, "23000", "Duplicate entry '1' for key 'PRIMARY'")));
        script.push((C, cmd(3, b"SELEC 1")));
        script.push((S, err(1, 1064, "42000", "You have an error in your SQL syntax")));
        script.push((C, cmd(2, b"other")));
        script.push((S, ok(1, 0, 2)));
        script.push((C, cmd(3, b"UPDATE t SET x = 1")));
        script.push((S, ok(1, 3, 2)));
        script.push((C, cmd(0x0e, b"")));
        script.push((S, ok(1, 0, 2)));
        script.push((C, cmd(1, b"")));
        let mut s = MySqlSession::new(Role::Client);
        let (out, errors) = run(&mut s, &script);
        assert_eq!(errors, 0);
        assert!(s.is_mariadb());
        assert_eq!(s.system(), "mariadb");
        assert_eq!(s.server_version(), Some("5.5.5-10.11.6-MariaDB-0+deb12u1"));
        assert_eq!(s.user(), Some("app"));
        assert_eq!(s.database(), Some("other"));
        let cmds: Vec<_> = out.iter().map(|e| e.command).collect();
        assert_eq!(
            cmds,
            [
                Command::Query,
                Command::Query,
                Command::Query,
                Command::InitDb,
                Command::Query,
                Command::Ping,
                Command::Quit
            ]
        );
        assert_eq!(out[0].query.as_deref(), Some("SELECT id, name FROM t"));
        assert_eq!(out[0].rows, 2);
        assert_eq!(out[0].error, None);
        assert_eq!(out[0].database.as_deref(), Some("shop"));
        assert_eq!(out[0].request_first.enter_ns, 30);
        assert_eq!(out[0].response_last.enter_ns, 40);
        let e = out[1].error.as_ref().map(|e| (e.code, e.sqlstate.as_deref()));
        assert_eq!(e, Some((1062, Some("23000"))));
        assert_eq!(out[1].error.as_ref().map(|e| e.message.as_str()), Some("Duplicate entry '1' for key 'PRIMARY'"));
        assert_eq!(out[2].error.as_ref().map(|e| (e.code, e.sqlstate.clone())), Some((1064, Some("42000".into()))));
        assert_eq!(out[3].query.as_deref(), Some("other"));
        assert_eq!(out[4].database.as_deref(), Some("other"));
        assert_eq!(out[4].affected_rows, Some(3));
        assert_eq!(out[4].rows, 0);
        assert_eq!(s.pending_requests(), 0);
        check_splits(|| MySqlSession::new(Role::Client), &script, &out);

        // The same bytes seen by the server process.
        let flipped: Script = script.iter().map(|(d, b)| (if *d == C { S } else { C }, b.clone())).collect();
        let (out2, _) = run(&mut MySqlSession::new(Role::Server), &flipped);
        assert_eq!(out2, out);
    }

    #[test]
    fn mysql_deprecate_eof_and_classic_eof() {
        for deprecate in [false, true] {
            let caps = if deprecate { CAPS | CLIENT_DEPRECATE_EOF } else { CAPS };
            let mut script = login("8.0.36", caps, None);
            script.push((C, cmd(3, b"SELECT 1, 2")));
            script.push((S, result_set(&[["1", "2"], ["3", "4"], ["5", "6"]], deprecate)));
            script.push((C, cmd(3, b"SELECT 1 WHERE 0")));
            script.push((S, result_set(&[], deprecate)));
            let mut s = MySqlSession::new(Role::Client);
            let (out, errors) = run(&mut s, &script);
            assert_eq!(errors, 0);
            assert!(!s.is_mariadb());
            assert_eq!(s.system(), "mysql");
            assert_eq!(s.database(), None);
            assert_eq!(out.iter().map(|e| e.rows).collect::<Vec<_>>(), [3, 0], "deprecate {deprecate}");
            check_splits(|| MySqlSession::new(Role::Client), &script, &out);
        }
    }

    fn prepare_ok(id: u32, cols: u16, params: u16, deprecate: bool) -> Vec<u8> {
        let mut p = vec![0];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&cols.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        let mut v = pkt(1, &p);
        let mut seq = 2;
        for (n, name) in [(params, "?"), (cols, "name")] {
            for _ in 0..n {
                v.extend(coldef(seq, name));
                seq += 1;
            }
            if n > 0 && !deprecate {
                v.extend(eof(seq));
                seq += 1;
            }
        }
        v
    }

    fn execute(id: u32, secret: &[u8]) -> Vec<u8> {
        let mut b = id.to_le_bytes().to_vec();
        b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 0xfe, 0]);
        b.push(secret.len() as u8);
        b.extend_from_slice(secret);
        cmd(0x17, &b)
    }

    fn binary_result(rows: usize) -> Vec<u8> {
        let mut v = pkt(1, &[1]);
        v.extend(coldef(2, "name"));
        v.extend(eof(3));
        let mut seq = 4;
        for _ in 0..rows {
            v.extend(pkt(seq, &[0, 0, 3, b'b', b'o', b'b']));
            seq += 1;
        }
        v.extend(eof(seq));
        v
    }

    #[test]
    fn prepared_statements_keep_text_and_never_values() {
        for deprecate in [false, true] {
            let caps = if deprecate { CAPS | CLIENT_DEPRECATE_EOF } else { CAPS };
            let mut script = login("8.0.36", caps, Some("shop"));
            script.push((C, cmd(0x16, b"SELECT name FROM t WHERE id = ? AND k = ?")));
            script.push((S, prepare_ok(7, 1, 2, deprecate)));
            script.push((C, execute(7, b"hunter2-secret")));
            // Binary rows start with 0x00: rows, not OK packets.
            let mut resp = binary_result(2);
            if deprecate {
                resp = pkt(1, &[1]);
                resp.extend(coldef(2, "name"));
                resp.extend(pkt(3, &[0, 0, 3, b'b', b'o', b'b']));
                resp.extend(pkt(4, &[0, 0, 3, b'b', b'o', b'b']));
                resp.extend(eof_ok(5));
            }
            script.push((S, resp));
            script.push((C, execute(7, b"topsecret-value")));
            script.push((S, ok(1, 1, 2)));
            script.push((C, cmd(0x1a, &7u32.to_le_bytes())));
            script.push((S, ok(1, 0, 2)));
            script.push((C, cmd(0x19, &7u32.to_le_bytes())));
            script.push((C, execute(7, b"after-close")));
            script.push((S, err(1, 1243, "HY000", "Unknown prepared statement handler")));
            let mut s = MySqlSession::new(Role::Client);
            let (out, errors) = run(&mut s, &script);
            assert_eq!(errors, 0);
            assert_eq!(out.len(), 6);
            assert_eq!(out[0].command, Command::Prepare);
            assert_eq!((out[0].statement_id, out[0].params), (Some(7), 2));
            for e in &out[1..3] {
                assert_eq!(e.command, Command::Execute);
                assert_eq!(e.query.as_deref(), Some("SELECT name FROM t WHERE id = ? AND k = ?"));
                assert_eq!((e.statement_id, e.params), (Some(7), 2));
            }
            assert_eq!(out[1].rows, 2);
            assert_eq!(out[2].affected_rows, Some(1));
            assert_eq!(out[3].command, Command::ResetStmt);
            assert_eq!(out[4].command, Command::CloseStmt);
            assert_eq!(out[5].query, None, "closed: text forgotten");
            assert_eq!(out[5].error.as_ref().map(|e| e.code), Some(1243));
            assert_eq!(s.statements(), 0);
            let dbg = format!("{out:?}");
            for secret in ["hunter2", "topsecret", "after-close"] {
                assert!(!dbg.contains(secret), "{secret} leaked");
            }
            check_splits(|| MySqlSession::new(Role::Client), &script, &out);
        }
    }

    #[test]
    fn multiple_result_sets_and_local_infile() {
        let mut script = login("8.0.36", CAPS, None);
        script.push((C, cmd(3, b"CALL p()")));
        // Two result sets (SERVER_MORE_RESULTS_EXISTS in the EOF status), then the OK.
        let mut resp = pkt(1, &[1]);
        resp.extend(coldef(2, "a"));
        resp.extend(eof(3));
        resp.extend(text_row(4, &["1"]));
        resp.extend(pkt(5, &[0xfe, 0, 0, 0x0a, 0]));
        resp.extend(pkt(6, &[1]));
        resp.extend(coldef(7, "b"));
        resp.extend(eof(8));
        resp.extend(text_row(9, &["2"]));
        resp.extend(text_row(10, &["3"]));
        resp.extend(pkt(11, &[0xfe, 0, 0, 0x0a, 0]));
        resp.extend(ok(12, 0, 2));
        script.push((S, resp));
        script.push((C, cmd(3, b"LOAD DATA LOCAL INFILE 'f' INTO TABLE t")));
        script.push((S, pkt(1, b"\xfbf")));
        script.push((C, pkt(2, b"1,secret-file-row\n")));
        script.push((C, pkt(3, b"")));
        script.push((S, ok(4, 1, 2)));
        let mut s = MySqlSession::new(Role::Client);
        let (out, errors) = run(&mut s, &script);
        assert_eq!(errors, 0);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].rows, out[0].affected_rows), (3, Some(0)));
        assert!(out[1].local_infile);
        assert_eq!(out[1].affected_rows, Some(1));
        assert!(!format!("{out:?}").contains("secret-file-row"));
        check_splits(|| MySqlSession::new(Role::Client), &script, &out);
    }

    #[test]
    fn statement_map_is_bounded() {
        let mut script = login("8.0.36", CAPS, None);
        for id in 0..300u32 {
            script.push((C, cmd(0x16, format!("SELECT {id}").as_bytes())));
            script.push((S, prepare_ok(id, 0, 0, false)));
        }
        let mut s = MySqlSession::new(Role::Client);
        let (out, errors) = run(&mut s, &script);
        assert_eq!((out.len(), errors), (300, 0));
        assert_eq!(s.statements(), MAX_STATEMENTS);
        assert_eq!(s.statements_evicted(), 300 - MAX_STATEMENTS as u64);
    }

    #[test]
    fn ssl_request_and_compression_stop_parsing() {
        let mut script = login("8.0.36", CAPS | CLIENT_SSL, None);
        script[1] = (C, handshake(CAPS | CLIENT_SSL, "", None));
        script.push((C, cmd(3, b"SELECT 1")));
        let mut s = MySqlSession::new(Role::Client);
        let (out, _) = run(&mut s, &script);
        assert!(s.tls() && !s.compressed() && s.is_stopped());
        assert!(out.is_empty());

        let mut script = login("8.0.36", CAPS | CLIENT_COMPRESS, Some("x"));
        script.push((C, cmd(3, b"SELECT 1")));
        script.push((S, ok(1, 0, 2)));
        let mut s = MySqlSession::new(Role::Client);
        let (out, _) = run(&mut s, &script);
        assert!(s.compressed() && !s.tls() && s.is_stopped());
        assert!(out.is_empty());

        // Offered by the server only: not negotiated.
        let mut script = login("8.0.36", CAPS | CLIENT_COMPRESS, None);
        script[1] = (C, handshake(CAPS, "app", None));
        script.push((C, cmd(3, b"SELECT 1")));
        script.push((S, ok(1, 0, 2)));
        let mut s = MySqlSession::new(Role::Client);
        let (out, _) = run(&mut s, &script);
        assert!(!s.compressed());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn multi_packet_query_is_streamed_and_bounded() {
        let len = MAX_PACKET + 1000;
        let mut text = vec![b'x'; len - 1];
        text[..7].copy_from_slice(b"SELECT ");
        let mut payload = vec![3u8];
        payload.extend_from_slice(&text);
        let mut wire = vec![0xff, 0xff, 0xff, 0];
        wire.extend_from_slice(&payload[..MAX_PACKET]);
        wire.extend_from_slice(&[0xe8, 0x03, 0, 1]);
        wire.extend_from_slice(&payload[MAX_PACKET..]);
        let mut s = MySqlSession::new(Role::Client);
        let mut out = Vec::new();
        for step in login("8.0.36", CAPS, None) {
            s.feed(step.0, &step.1, step.1.len(), Timing::default(), &mut out).unwrap();
        }
        assert_eq!(s.pending_requests(), 0);
        for c in wire.chunks(65_536) {
            s.feed(C, c, c.len(), Timing::default(), &mut out).unwrap();
            assert!(s.buffered_bytes() <= MAX_KEPT_BYTES + 4);
        }
        let r = ok(2, 0, 2);
        s.feed(S, &r, r.len(), Timing::default(), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let q = out[0].query.as_deref().unwrap_or_default();
        assert_eq!(q.len(), MAX_QUERY_BYTES);
        assert!(q.starts_with("SELECT xxx"));
        assert!(out[0].truncated);
        assert_eq!(s.buffered_bytes(), 0);

        // A gap inside a payload is skipped exactly.
        let q = cmd(3, &[b'y'; 5000]);
        s.feed(C, &q[..100], q.len(), Timing::default(), &mut out).unwrap();
        s.feed(S, &r, r.len(), Timing::default(), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[1].truncated);
        assert_eq!(out[1].query.as_ref().map(String::len), Some(95));
    }

    #[test]
    fn midstream_and_lost_resync_on_a_whole_command() {
        let mut s = MySqlSession::midstream(Role::Client);
        let mut out = Vec::new();
        let t = Timing::default();
        // The tail of an earlier response: skipped.
        let junk = text_row(5, &["a", "b"]);
        assert!(s.feed(S, &junk, junk.len(), t, &mut out).is_ok());
        let q = cmd(3, b"SELECT 1");
        s.feed(C, &q, q.len(), t, &mut out).unwrap();
        let rs = result_set(&[["1", "2"]], true);
        s.feed(S, &rs, rs.len(), t, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rows, 1);
        s.feed(C, &q, q.len(), t, &mut out).unwrap();
        assert_eq!(s.lost(S, 0), 1);
        let rs = result_set(&[["1", "2"]], false);
        // The rest of the lost response: skipped until a new command.
        s.feed(S, &rs[10..], rs.len() - 10, t, &mut out).unwrap();
        s.feed(C, &q, q.len(), t, &mut out).unwrap();
        s.feed(S, &rs, rs.len(), t, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].rows, 1);
    }

    #[test]
    fn malformed_input_desyncs_without_panicking() {
        let mut s = MySqlSession::new(Role::Client);
        let mut out = Vec::new();
        let bad = pkt(0, b"\x09not a greeting");
        assert!(matches!(s.feed(S, &bad, bad.len(), Timing::default(), &mut out), Err(MyParseError::Malformed { .. })));
        // Absurd lengths: a 16 MiB packet header followed by little.
        let mut s = MySqlSession::new(Role::Client);
        for step in login("8.0.36", CAPS, None) {
            let _ = s.feed(step.0, &step.1, step.1.len(), Timing::default(), &mut out);
        }
        let q = cmd(3, b"SELECT 1");
        s.feed(C, &q, q.len(), Timing::default(), &mut out).unwrap();
        let absurd = [0xff, 0xff, 0xff, 1, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let _ = s.feed(S, &absurd, usize::MAX, Timing::default(), &mut out);
        assert!(s.buffered_bytes() <= 2 * (MAX_KEPT_BYTES + 4));
        let unexpected = ok(1, 0, 2);
        let mut s = MySqlSession::new(Role::Client);
        for step in login("8.0.36", CAPS, None) {
            let _ = s.feed(step.0, &step.1, step.1.len(), Timing::default(), &mut out);
        }
        assert!(matches!(
            s.feed(S, &unexpected, unexpected.len(), Timing::default(), &mut out),
            Err(MyParseError::UnexpectedResponse { .. })
        ));
    }

    #[test]
    fn hostile_random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prefix: Vec<u8> = login("8.0.36", CAPS, Some("d")).into_iter().flat_map(|(_, b)| b).collect();
        for round in 0..3000 {
            let mut s = if round % 3 == 0 {
                MySqlSession::midstream(Role::Client)
            } else {
                MySqlSession::new(if round % 2 == 0 { Role::Client } else { Role::Server })
            };
            let mut out = Vec::new();
            if round % 3 == 1 {
                for step in login("8.0.36", CAPS, Some("d")) {
                    let _ = s.feed(step.0, &step.1, step.1.len(), Timing::default(), &mut out);
                }
            }
            for _ in 0..40 {
                let r = next();
                let n = (r % 64) as usize;
                let mut data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                if r & 0x100 != 0 && data.len() >= 5 {
                    // Plausible headers with small lengths and seq 0/1.
                    data[0] = (n - 4) as u8;
                    data[1] = 0;
                    data[2] = 0;
                    data[3] = ((r >> 9) & 1) as u8;
                }
                if r & 0x400 != 0 {
                    data.splice(0..0, prefix.iter().copied().take((r >> 20) as usize % prefix.len()));
                }
                let dir = if r & 0x200 != 0 { C } else { S };
                let total = if r & 0x800 != 0 { data.len() + (r >> 40) as usize % 100_000 } else { data.len() };
                let _ = s.feed(dir, &data, total, Timing::default(), &mut out);
                if r & 0xf000 == 0 {
                    let _ = s.lost(dir, 0);
                }
                assert!(s.buffered_bytes() <= 2 * (MAX_KEPT_BYTES + 4));
                assert!(s.pending_requests() <= MAX_PENDING);
                assert!(s.statements() <= MAX_STATEMENTS);
            }
            s.eof(S, Timing::default(), &mut out);
        }
    }

    const CAPTURE_REQ: &[u8] = include_bytes!("../../tests/data/mysql/session.req");
    const CAPTURE_RESP: &[u8] = include_bytes!("../../tests/data/mysql/session.resp");

    /// Splits a capture into the packets of each direction, then interleaves them by
    /// turns: each request's packets, then the server's packets up to the next request.
    /// (The capture has no record boundaries: the conversation is rebuilt from the
    /// framing, which is what the half-duplex protocol implies.)
    fn packets(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while b.len() >= 4 {
            let n = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
            let (p, rest) = b.split_at((4 + n).min(b.len()));
            v.push(p.to_vec());
            b = rest;
        }
        v
    }

    fn capture_script() -> Script {
        let req = packets(CAPTURE_REQ);
        let resp = packets(CAPTURE_RESP);
        assert_eq!(req.iter().map(Vec::len).sum::<usize>(), CAPTURE_REQ.len());
        assert_eq!(resp.iter().map(Vec::len).sum::<usize>(), CAPTURE_RESP.len());
        // Server greeting, handshake response, OK; then each command and its response
        // (the last command, COM_QUIT, has none): a response starts at sequence id 1.
        let mut script = vec![(S, resp[0].clone()), (C, req[0].clone()), (S, resp[1].clone())];
        let mut r = resp[2..].iter().peekable();
        for q in &req[1..] {
            script.push((C, q.clone()));
            let mut answer = Vec::new();
            if let Some(first) = r.next() {
                answer.extend_from_slice(first);
                while let Some(p) = r.next_if(|p| p.get(3) != Some(&1)) {
                    answer.extend_from_slice(p);
                }
            }
            if !answer.is_empty() {
                script.push((S, answer));
            }
        }
        assert!(r.next().is_none());
        script
    }

    #[test]
    fn golden_capture_from_mariadb() {
        let script = capture_script();
        let mut s = MySqlSession::new(Role::Client);
        let (out, errors) = run(&mut s, &script);
        assert_eq!(errors, 0);
        assert!(s.is_mariadb(), "{:?}", s.server_version());
        assert_eq!(s.server_version(), Some("5.5.5-10.11.19-MariaDB-0+deb12u1"));
        assert_eq!(s.user(), Some("root"));
        assert_eq!(s.database(), Some("test"));
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.command, e.query.as_deref().unwrap_or(""), e.rows, e.error.as_ref().map(|e| e.code)))
            .collect();
        assert_eq!(
            got,
            [
                (Command::Query, "SET NAMES utf8mb4", 0, None),
                (Command::Query, "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))", 0, None),
                (Command::Query, "INSERT INTO t VALUES (1, 'alice'), (2, 'bob')", 0, None),
                (Command::Query, "INSERT INTO t VALUES (1, 'again')", 0, Some(1062)),
                (Command::Query, "SELEC 1", 0, Some(1064)),
                (Command::Query, "SELECT id, name FROM t ORDER BY id", 2, None),
                (Command::Query, "PREPARE s FROM 'SELECT name FROM t WHERE id = ?'", 0, None),
                (Command::Query, "SET @a = 2", 0, None),
                (Command::Query, "EXECUTE s USING @a", 1, None),
                (Command::Quit, "", 0, None),
            ]
        );
        assert_eq!(out[2].affected_rows, Some(2));
        assert_eq!(out[3].error.as_ref().and_then(|e| e.sqlstate.as_deref()), Some("23000"));
        assert_eq!(out[4].error.as_ref().and_then(|e| e.sqlstate.as_deref()), Some("42000"));
        assert!(out.iter().all(|e| e.database.as_deref() == Some("test")));
        check_splits(|| MySqlSession::new(Role::Client), &script, &out);

        // Each direction's whole capture in one feed, in the order the server sends.
        let mut s = MySqlSession::new(Role::Client);
        let mut all = Vec::new();
        for (dir, b) in &script {
            all.push((*dir, b.clone()));
        }
        let (again, _) = run(&mut s, &all);
        assert_eq!(again.len(), out.len());
    }
}
