//! Protocol parsers: pure, incremental functions over bytes. Nothing here knows BPF,
//! tokio or OTLP. A parser is fed the bytes one connection's process read or wrote, in
//! order, and emits paired request/response records ([`Exchange`]).
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod session;
pub mod tls;

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

/// An HTTP request head as seen on the wire (bodies are never kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target as sent (origin form `/path?query`, or absolute form for proxies).
    pub target: String,
    /// `HTTP/1.<minor>`.
    pub version_minor: u8,
    /// Header names lower-cased, values as sent (lossy UTF-8), in order; bounded count.
    pub headers: Vec<(String, String)>,
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
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP response head (final response: interim 1xx are skipped, except 101).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version_minor: u8,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// As [`Request::truncated`].
    pub truncated: bool,
}

impl Response {
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
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
