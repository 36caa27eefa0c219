//! Protocol parsers: pure, incremental functions over bytes. Nothing here knows BPF,
//! tokio or OTLP. A parser is fed the bytes one connection's process read or wrote, in
//! order, and emits paired request/response records ([`Exchange`]).
pub mod db;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod pg;
pub mod resp;
pub mod session;
pub mod tls;

use std::fmt;

/// Direction of bytes, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read these bytes from the socket.
    Ingress,
    /// The process wrote these bytes to the socket.
    Egress,
}

/// The traced process's side of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepted socket: requests are read (ingress), responses written (egress).
    Server,
    /// Connected socket: requests are written (egress), responses read (ingress).
    Client,
}

impl Role {
    /// Direction in which this role sees requests.
    #[must_use]
    pub fn request_direction(self) -> Direction {
        match self {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        }
    }
}

/// Kernel monotonic timestamps (ns) of the syscall that carried some bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub enter_ns: u64,
    pub exit_ns: u64,
}

/// The header fields kept from one head: names (lower-case) and values (lossy UTF-8),
/// in order, all in one buffer. A head costs two allocations however many fields it
/// keeps, instead of two per field; the parsers bound the count
/// ([`http1::MAX_STORED_HEADERS`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every field's name then value, one after the other.
    text: String,
    /// Per field: where its name ends and where its value ends in `text` (its name
    /// starts where the previous field's value ends).
    ends: Vec<(u32, u32)>,
}

impl Headers {
    /// Room for `fields` fields of `bytes` bytes of names and values together.
    #[must_use]
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Headers { text: String::with_capacity(bytes), ends: Vec::with_capacity(fields) }
    }

    /// Appends a field. Ignored if the buffer would pass 4 GiB (the parsers bound heads
    /// far below that).
    pub fn push(&mut self, name: &str, value: &str) {
        if self.fits(name.len() + value.len()) {
            self.text.push_str(name);
            let name_end = self.text.len() as u32;
            self.text.push_str(value);
            self.ends.push((name_end, self.text.len() as u32));
        }
    }

    /// Appends a field whose value is raw bytes, as [`String::from_utf8_lossy`] would
    /// read them (each invalid sequence is U+FFFD), without an intermediate string.
    pub fn push_lossy(&mut self, name: &str, value: &[u8]) {
        // U+FFFD is 3 bytes: at most 3 per invalid byte.
        if self.fits(name.len() + 3 * value.len()) {
            self.text.push_str(name);
            let name_end = self.text.len() as u32;
            for chunk in value.utf8_chunks() {
                self.text.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    self.text.push(char::REPLACEMENT_CHARACTER);
                }
            }
            self.ends.push((name_end, self.text.len() as u32));
        }
    }

    fn fits(&self, more: usize) -> bool {
        self.text.len().checked_add(more).is_some_and(|n| u32::try_from(n).is_ok())
    }

    /// Value of the first field named `name` (lower-case), if any.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The fields in order: (name, value).
    #[must_use]
    pub fn iter(&self) -> HeaderIter<'_> {
        HeaderIter { headers: self, next: 0 }
    }

    /// Field `i` (in order), if there are that many.
    #[must_use]
    pub fn field(&self, i: usize) -> Option<(&str, &str)> {
        let &(name_end, value_end) = self.ends.get(i)?;
        let start = i.checked_sub(1).and_then(|p| self.ends.get(p)).map_or(0, |&(_, v)| v as usize);
        let (name_end, value_end) = (name_end as usize, value_end as usize);
        Some((self.text.get(start..name_end)?, self.text.get(name_end..value_end)?))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Keeps the first `n` fields.
    pub fn truncate(&mut self, n: usize) {
        if n < self.ends.len() {
            self.ends.truncate(n);
            let end = self.ends.last().map_or(0, |&(_, v)| v as usize);
            self.text.truncate(end);
        }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::default();
        headers.extend(iter);
        headers
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        for (n, v) in iter {
            self.push(n.as_ref(), v.as_ref());
        }
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = HeaderIter<'a>;
    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

/// The fields of [`Headers`], in order.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    headers: &'a Headers,
    next: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let field = self.headers.field(self.next)?;
        self.next += 1;
        Some(field)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.headers.ends.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}

/// An HTTP request head as seen on the wire (bodies are never kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target as sent (origin form `/path?query`, or absolute form for proxies).
    pub target: String,
    /// `HTTP/1.<minor>`.
    pub version_minor: u8,
    /// Header names lower-cased, values as sent (lossy UTF-8), in order; bounded count.
    pub headers: Headers,
    /// Body bytes that followed the head.
    pub body_len: u64,
    /// The head was larger than what could be seen (longer than the parser's limit, or
    /// partly not captured): the fields come from the part before the cut.
    pub truncated: bool,
    /// Position of the request's first byte in its direction's byte stream, as counted
    /// by the capture. Both ends of a connection see the same byte at the same TCP
    /// sequence number, which is how their two views of one request are matched.
    pub stream_offset: u64,
}

impl Request {
    /// First header named `name` (lower-case), if any.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// An HTTP response head (final response: interim 1xx are skipped, except 101).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version_minor: u8,
    pub headers: Headers,
    pub body_len: u64,
    /// As [`Request::truncated`].
    pub truncated: bool,
    /// The connection ended inside the body (HTTP/1): the exchange ends at the last
    /// byte seen.
    pub incomplete: bool,
}

impl Response {
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// One request paired with its response, with the timing of the syscalls that carried
/// the first and last byte of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The request's stream on its connection. HTTP/1: its position (0, 1, 2, ...), as
    /// reported by the session's `started_requests` when its head was parsed. HTTP/2: the
    /// stream id.
    pub seq: u64,
    pub request: Request,
    pub response: Response,
    pub request_first: Timing,
    pub request_last: Timing,
    pub response_first: Timing,
    pub response_last: Timing,
    /// What only HTTP/2 has (`None` for HTTP/1).
    pub h2: Option<Box<H2Exchange>>,
    /// A database call (PostgreSQL, MySQL/MariaDB, Redis). Its `request` and `response`
    /// heads are empty: everything it says is here.
    pub db: Option<Box<DbCall>>,
}

/// A database server's product, as the semantic conventions name it (`db.system.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Postgresql,
    Mysql,
    Mariadb,
    Redis,
}

impl DbSystem {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
            DbSystem::Mariadb => "mariadb",
            DbSystem::Redis => "redis",
        }
    }
}

/// One database call as the wire showed it, before sanitisation (the span stage
/// sanitises [`DbCall::query`] and [`DbCall::error_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbCall {
    pub system: DbSystem,
    /// The database (PostgreSQL startup, MySQL handshake or `COM_INIT_DB`) or the Redis
    /// database index (`SELECT n`), when seen.
    pub namespace: Option<String>,
    /// SQL: the statement text as sent (possibly with literals). Redis: the command and
    /// its key, each other argument a `?` (the parser never keeps values).
    pub query: String,
    /// The text was cut (longer than the parser keeps, or partly not captured).
    pub truncated: bool,
    /// The operation when the protocol names it (a Redis command, a MySQL command that
    /// is not SQL such as `PREPARE`); `None`: read it from the SQL text.
    pub operation: Option<String>,
    /// Redis: the key (the target of the span name).
    pub key: Option<String>,
    /// The server's error code: SQLSTATE, MySQL error number, or the Redis error prefix.
    pub status_code: Option<String>,
    /// The server's error message (may quote values: sanitised before export).
    pub error_message: Option<String>,
    /// Rows returned (PostgreSQL DataRows, MySQL result-set rows).
    pub rows: Option<u64>,
}

/// The HTTP/2 side of an [`Exchange`]. Its request and response heads are in
/// [`Exchange::request`] and [`Exchange::response`]: `:method` as `method`, `:path` as
/// `target`, `:authority` as a `host` header, `:status` as `status`, regular headers and
/// trailers (`grpc-status`, ...) as headers. A pseudo-header that could not be decoded
/// (it refers to an HPACK entry the agent never saw) is empty (`status` 0) and marked in
/// [`H2Exchange::unknown`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Exchange {
    /// The stream did not end normally: RST_STREAM or GOAWAY, with its error code.
    pub reset: Option<Reset>,
    /// gRPC details when the stream is a gRPC call (`content-type: application/grpc*`, or
    /// a `grpc-status` in the response).
    pub grpc: Option<Grpc>,
    pub unknown: Unknown,
}

/// How a stream was ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    /// HTTP/2 error code (RFC 9113 section 7), e.g. 0x8 CANCEL.
    pub code: u32,
    /// By GOAWAY (the connection went away) rather than RST_STREAM.
    pub goaway: bool,
    /// Who sent the frame, seen from the traced process.
    pub dir: Direction,
}

/// gRPC details of one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grpc {
    /// `grpc-status` from the trailers (or a Trailers-Only response); `None` if not seen.
    pub status: Option<u32>,
    /// Length-prefixed messages in each direction, and the sum of their lengths (the
    /// 5-byte prefixes excluded; as on the wire, compressed or not).
    pub request_messages: u64,
    pub request_bytes: u64,
    pub response_messages: u64,
    pub response_bytes: u64,
}

/// Pseudo-headers that could not be decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unknown {
    pub method: bool,
    pub path: bool,
    pub status: bool,
}

/// A request whose head a session just parsed (before its response exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// As [`Exchange::seq`].
    pub stream: u64,
    /// Stream offset (as numbered by the capture) of the first byte of its head in its
    /// direction: the first byte of the HTTP/1 start line, or of the HTTP/2 HEADERS frame.
    pub offset: u64,
    /// Timing of the syscall that carried that first byte.
    pub first: Timing,
}

/// What a session reports as it parses: requests started, and exchanges completed.
/// The caller drains both after each call.
#[derive(Debug, Default)]
pub struct Output {
    pub started: Vec<Started>,
    pub done: Vec<Exchange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_duplicates_and_lossy_values() {
        let mut h = Headers::with_capacity(3, 0);
        h.push("host", "a");
        h.push_lossy("user-agent", b"x\xffy\xe2\x82");
        h.push("host", "b");
        h.push("empty", "");
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().len(), 4);
        assert_eq!(h.get("host"), Some("a"), "the first of two");
        assert_eq!(h.get("user-agent"), Some(String::from_utf8_lossy(b"x\xffy\xe2\x82").as_ref()));
        assert_eq!(h.get("empty"), Some(""));
        assert_eq!(h.get("Host"), None, "names are compared as stored (lower-case)");
        assert_eq!(h.field(2), Some(("host", "b")));
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("host", "a"), ("user-agent", "x\u{fffd}y\u{fffd}"), ("host", "b"), ("empty", "")]
        );
        h.truncate(2);
        assert_eq!(h.iter().collect::<Vec<_>>(), [("host", "a"), ("user-agent", "x\u{fffd}y\u{fffd}")]);
        h.push("x", "1");
        assert_eq!(h.field(2), Some(("x", "1")), "a field pushed after a truncation");
        let same: Headers = [("host", "a"), ("user-agent", "x\u{fffd}y\u{fffd}"), ("x", "1")].into_iter().collect();
        assert_eq!(h, same);
        assert_eq!(format!("{h:?}"), "[(\"host\", \"a\"), (\"user-agent\", \"x\u{fffd}y\u{fffd}\"), (\"x\", \"1\")]");
        assert!(Headers::default().is_empty());
        assert_eq!(Headers::default().iter().next(), None);
    }
}
