//! Protocol parsers: pure, incremental functions over bytes. Nothing here knows BPF,
//! tokio or OTLP. A parser is fed the bytes one connection's process read or wrote, in
//! order, and emits paired request/response records ([`Exchange`]).
pub mod http1;

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
    /// Position of the request on its connection (0, 1, 2, ...), as reported by the
    /// session's `started_requests` when its head was parsed.
    pub seq: u64,
    pub request: Request,
    pub response: Response,
    pub request_first: Timing,
    pub request_last: Timing,
    pub response_first: Timing,
    pub response_last: Timing,
}
