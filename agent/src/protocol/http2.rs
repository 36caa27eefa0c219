//! HTTP/2 (RFC 9113) and gRPC on top of it: incremental framing, HPACK per direction,
//! streams paired into exchanges.
//!
//! SKELETON: the API is fixed; the bodies are being written.
use super::{Direction, Output, Request, Role, Timing};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most streams tracked at once per connection; a HEADERS frame opening another one is
/// counted (`drop.h2_stream_limit`) and its stream ignored.
pub const MAX_STREAMS: usize = 256;
/// Largest header block (HEADERS + CONTINUATION) accepted; a larger one is a connection
/// error.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Why bytes could not be parsed. On each, the session says what it did (the
/// connection's streams are reset and the direction resynchronises, or it gives up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Bytes that are not the client preface where it must be.
    BadPreface,
    /// A frame header that breaks the framing rules (length, type, stream, flags).
    BadFrame(&'static str),
    /// A header block larger than [`MAX_HEADER_BLOCK`].
    HeaderBlockTooLarge(usize),
    /// A header block that HPACK could not decode.
    Hpack(super::hpack::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadPreface => write!(f, "not the HTTP/2 client preface"),
            Error::BadFrame(why) => write!(f, "bad HTTP/2 frame: {why}"),
            Error::HeaderBlockTooLarge(n) => write!(f, "HTTP/2 header block of {n} bytes is too large"),
            Error::Hpack(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// What the first bytes of a connection joined mid-stream say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guess {
    /// Not HTTP/2 framing.
    No,
    /// HTTP/2 frames; `requests`: `Some(true)` if these bytes carry a request HEADERS
    /// (so their direction is the request direction), `Some(false)` if a response one,
    /// `None` if they do not say.
    Frames { requests: Option<bool> },
}

/// Whether `bytes` (the first bytes of a syscall) start with the client preface.
#[must_use]
pub fn is_preface(bytes: &[u8]) -> bool {
    bytes.starts_with(PREFACE) || (bytes.len() < PREFACE.len() && PREFACE.starts_with(bytes) && !bytes.is_empty())
}

/// Whether `bytes` (the captured start of one syscall) are a run of well-formed HTTP/2
/// frames.
#[must_use]
pub fn guess_frames(bytes: &[u8]) -> Guess {
    let _ = bytes;
    todo!()
}

/// Parser and stream pairing for one HTTP/2 connection (both directions).
#[derive(Debug)]
pub struct Http2Session {}

impl Http2Session {
    /// A connection seen from its start (the client preface comes first).
    #[must_use]
    pub fn new(role: Role) -> Self {
        let _ = role;
        todo!()
    }

    /// A connection joined mid-stream (opened before the agent, or its start lost):
    /// framing resynchronises on a syscall that starts with a frame; HPACK state before
    /// that is unknown.
    #[must_use]
    pub fn new_midstream(role: Role) -> Self {
        let _ = role;
        todo!()
    }

    /// A connection that switched from HTTP/1.1 with `Upgrade: h2c`: `request` (read or
    /// written at `first`) is stream 1, whose response comes in HTTP/2 frames. The client
    /// preface comes next in the request direction.
    #[must_use]
    pub fn after_upgrade(role: Role, request: Request, first: Timing) -> Self {
        let _ = (role, request, first);
        todo!()
    }

    /// One syscall's payload at stream offset `pos` of `dir`: `prefix` captured, then
    /// `gap` bytes not captured, then `tail` captured.
    #[allow(clippy::too_many_arguments)]
    pub fn feed_at(
        &mut self,
        dir: Direction,
        pos: u64,
        prefix: &[u8],
        gap: u64,
        tail: &[u8],
        t: Timing,
        out: &mut Output,
    ) -> Result<(), Error> {
        let _ = (dir, pos, prefix, gap, tail, t, out);
        todo!()
    }

    /// Bytes of `dir` were lost (how many is unknown), all moved at or before
    /// `before_ns` (0: unknown). Returns how many requests were dropped.
    pub fn lost(&mut self, dir: Direction, before_ns: u64) -> usize {
        let _ = (dir, before_ns);
        todo!()
    }

    /// End of stream in `dir`: its open streams end (reset, not answered).
    pub fn eof(&mut self, dir: Direction, t: Timing, out: &mut Output) {
        let _ = (dir, t, out);
        todo!()
    }

    /// Requests seen and not yet answered.
    #[must_use]
    pub fn pending_requests(&self) -> usize {
        todo!()
    }

    /// The request head of a stream still open.
    #[must_use]
    pub fn request(&self, stream: u64) -> Option<&Request> {
        let _ = stream;
        todo!()
    }
}
