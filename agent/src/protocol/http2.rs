//! HTTP/2 (RFC 9113) and gRPC on top of it: incremental framing, HPACK per direction,
//! streams paired into exchanges.
//!
//! One [`Http2Session`] follows one TCP connection, fed per direction as
//! [`super::http1::Http1Session`] is: each syscall's captured prefix, the length of the
//! gap the kernel did not copy, and its captured tail ([`Http2Session::feed_at`]). The
//! client→server direction is always the request direction of the [`Role`].
//!
//! # Framing
//! Each direction is parsed incrementally: a 9-octet frame header may be split across
//! reads, a read may hold many frames. Payloads are never stored except where they are
//! needed: header blocks (HEADERS, PUSH_PROMISE and their CONTINUATIONs, reassembled up to
//! [`MAX_HEADER_BLOCK`]), the first octets of SETTINGS, RST_STREAM and GOAWAY. DATA is
//! counted (padding removed) and scanned for gRPC message prefixes. PING, PRIORITY,
//! WINDOW_UPDATE and frames of unknown type are skipped (unknown types as RFC 9113 §4.1
//! says). Undefined flags and the reserved bit are ignored, as the RFC asks of a receiver
//! ([`guess_frames`] is stricter, since it must tell frames from other protocols).
//!
//! Frame length: a frame may not be longer than what its receiver allowed with
//! `SETTINGS_MAX_FRAME_SIZE` (16384 until it says otherwise). When the session saw the
//! connection from its start (or saw that setting) the limit is enforced for every frame.
//! On a connection joined mid-stream an earlier SETTINGS may have raised it unseen, so
//! DATA frames are accepted up to the protocol's 2^24-1 while every other frame longer
//! than 16384 is still a connection error: control frames and header blocks that large
//! are not what real peers send, and accepting them would let garbage pass as framing.
//!
//! # Gaps
//! A gap that falls inside a DATA payload (or any payload that is skipped) is skipped
//! exactly; its octets count in `body_len` and as gRPC message bytes. A gap that covers a
//! header block's fragment loses that block: HPACK of that direction can no longer be
//! exact ([`Decoder::reset_unsynced`]); a request or response head lost this way
//! drops its stream (counted `drop.lost_request`), lost trailers with END_STREAM still end
//! their exchange (the response is then `truncated`). A gap that covers a frame header
//! loses the framing of the direction: it waits for a syscall that starts with a plausible
//! run of frames ([`guess_frames`]), and the streams whose state in that direction is now
//! unknown are dropped, as on [`Http2Session::lost`]. A tail is parsed only when the
//! framing is known across the gap; it never resynchronises a direction.
//!
//! # Streams and exchanges
//! A request HEADERS on a new odd stream id above every one seen opens a stream (at most
//! [`MAX_STREAMS`] at once) and reports it in [`Output::started`]. Response HEADERS: 1xx
//! are skipped, the first final one gives the status and headers, a later one is the
//! trailers (merged into the response headers). The exchange is done when the response
//! side ends the stream (END_STREAM), whatever the request side does; RST_STREAM from
//! either side, or a GOAWAY from the server whose last stream id is below the stream,
//! ends it early with an [`Reset`]. Server push (PUSH_PROMISE) is decoded for HPACK and
//! ignored (`h2.push_ignored`). A stream that ends in the same call that started it is
//! gone by the time that call returns: [`Http2Session::request`] then says `None` and the
//! exchange in [`Output::done`] holds the request.
//!
//! Headers kept: the same list as HTTP/1 ([`super::http1::KEPT_HEADERS`]), plus the gRPC
//! ones needed for spans (`te`, `grpc-timeout`, `grpc-encoding`, `grpc-accept-encoding`,
//! `grpc-status`, `grpc-message`). `:authority` becomes a `host` header. Nothing else —
//! `authorization`, `cookie`, other metadata — is copied out.
//!
//! # Joining mid-stream, lost bytes, errors
//! A session from [`Http2Session::new_midstream`] and a direction after
//! [`Http2Session::lost`] or a connection error hunt for a syscall whose first bytes are
//! a plausible frame run (or the client preface) and continue from there with HPACK
//! unsynced: fields that refer to entries sent before are reported as unknown
//! (`h2.unknown_field`; `:method`, `:path`, `:status` as [`Unknown`]), never guessed.
//! Streams opened before the join are never reported. Hostile input — bytes that are not
//! the preface where it must be, a first frame that is not SETTINGS, a frame breaking the
//! framing rules (oversized, wrong fixed length, wrong stream 0 use), an oversized header
//! block, an HPACK error, a frame truncated by the end of the stream — is a connection
//! error: it is counted (`drop.h2_connection_error`), every open stream is dropped
//! (`drop.lost_request`), and the direction hunts as above.
//!
//! # gRPC
//! A stream whose `content-type` starts with `application/grpc`, or that carries any
//! `grpc-*` field (`grpc-status`, `grpc-message`, `grpc-timeout`, ...), is a gRPC call:
//! on a connection joined late, grpcio's content type and status are often references
//! to unseen HPACK entries while `grpc-message` is still a literal. Its DATA in each direction is read as
//! 5-octet length-prefixed messages (across frames, several per frame); a message counts
//! once its prefix is seen, by its declared length, so one whose body falls in a gap still
//! counts. A prefix that falls into a gap leaves that direction's counts as lower bounds.
use std::collections::BTreeMap;

use super::hpack::Decoder;
use super::http1::{KEPT_HEADERS, MAX_STORED_HEADERS};
use super::{
    Direction, Exchange, Grpc, H2Exchange, Headers, Output, Request, Reset, Response, Role, Started, Timing, Unknown,
};
use crate::stats::{self, Counter};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most streams tracked at once per connection; a HEADERS frame opening another one is
/// counted (`drop.h2_stream_limit`) and its stream ignored.
pub const MAX_STREAMS: usize = 256;
/// Largest header block (HEADERS + CONTINUATION) accepted; a larger one is a connection
/// error.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Octets of a frame header.
const FRAME_HEADER_LEN: usize = 9;
/// `SETTINGS_MAX_FRAME_SIZE` until a peer raises it, and the least it may be.
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The largest frame the 24-bit length can describe.
const LARGEST_FRAME: u32 = (1 << 24) - 1;
/// Header-block frame octets that are not fragment: pad length, padding, priority (or
/// the promised stream id).
const MAX_BLOCK_OVERHEAD: usize = 1 + 255 + 5;
/// Payload octets kept of a SETTINGS frame (more settings than this are ignored).
const MAX_SETTINGS_PAYLOAD: usize = 6 * 64;
/// Header fields kept besides [`KEPT_HEADERS`].
const GRPC_KEPT_HEADERS: &[&str] =
    &["te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "grpc-status", "grpc-message"];

mod frame_type {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}
use frame_type as ft;

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

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

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHeader {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
    /// The reserved bit of the stream id field.
    reserved: bool,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: b[3],
            flags: b[4],
            stream: id & 0x7fff_ffff,
            reserved: id & 0x8000_0000 != 0,
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Whether the frame's payload is (part of) a header block.
    fn is_block(&self) -> bool {
        matches!(self.ty, ft::HEADERS | ft::PUSH_PROMISE | ft::CONTINUATION)
    }
}

/// Whether a frame header could be one a real peer sends: a known type, only its defined
/// flags, the reserved bit clear, a stream id of 0 exactly where the type requires it, the
/// exact length of fixed-size frames, and at most 16384 octets for the others.
fn plausible(h: &FrameHeader) -> bool {
    if h.reserved {
        return false;
    }
    let max = DEFAULT_MAX_FRAME;
    let (len_ok, flags, on_stream) = match h.ty {
        ft::DATA => (h.len <= max, flag::END_STREAM | flag::PADDED, true),
        ft::HEADERS => (h.len <= max, flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY, true),
        ft::PRIORITY => (h.len == 5, 0, true),
        ft::RST_STREAM => (h.len == 4, 0, true),
        ft::SETTINGS => {
            (h.len.is_multiple_of(6) && h.len <= max && (h.flags & flag::ACK == 0 || h.len == 0), flag::ACK, false)
        }
        ft::PUSH_PROMISE => ((4..=max).contains(&h.len), flag::END_HEADERS | flag::PADDED, true),
        ft::PING => (h.len == 8, flag::ACK, false),
        ft::GOAWAY => ((8..=max).contains(&h.len), 0, false),
        // Stream 0 or any stream.
        ft::WINDOW_UPDATE => return h.len == 4 && h.flags == 0,
        ft::CONTINUATION => (h.len <= max, flag::END_HEADERS, true),
        _ => return false,
    };
    let padded_ok = !h.has(flag::PADDED) || h.len >= 1;
    len_ok && padded_ok && h.flags & !flags == 0 && (h.stream != 0) == on_stream
}

/// Whether `bytes` (the captured start of one syscall) are a run of well-formed HTTP/2
/// frames.
///
/// Every frame header must pass the strict rules of a real peer's frames (a known type,
/// only defined flags, reserved bit clear, stream 0 exactly for connection frames, exact
/// lengths for fixed-size frames, at most 16384 octets otherwise; a WINDOW_UPDATE must
/// not increment by 0, a padded frame's padding must fit), and the frames must tile the
/// bytes: the last one may run past the end of `bytes` (a capture cut it, or the syscall
/// went on) only if it is not the first one, so a single frame header that happens to
/// fit proves nothing; after at least one whole frame, the bytes may end inside the next
/// frame header as far as its visible octets are plausible. HTTP/1 text, TLS records,
/// RESP, the PostgreSQL and MySQL handshakes all fail the first header already.
///
/// `requests` comes from the first HEADERS frame whose first HPACK representation is
/// visible: a static `:method`, `:path`, `:scheme` or `:authority` (indexed 2..=7 or a
/// literal with name index 1..=7) says request, a static `:status` (8..=14) response.
#[must_use]
pub fn guess_frames(bytes: &[u8]) -> Guess {
    let mut pos = 0usize;
    let mut frames = 0usize;
    let mut requests = None;
    while bytes.len() - pos >= FRAME_HEADER_LEN {
        let mut raw = [0u8; FRAME_HEADER_LEN];
        raw.copy_from_slice(&bytes[pos..pos + FRAME_HEADER_LEN]);
        let h = FrameHeader::parse(&raw);
        if !plausible(&h) {
            return Guess::No;
        }
        let start = pos + FRAME_HEADER_LEN;
        let end = start + h.len as usize;
        let payload = &bytes[start..end.min(bytes.len())];
        if !payload_plausible(&h, payload) {
            return Guess::No;
        }
        if h.ty == ft::HEADERS && requests.is_none() {
            requests = headers_direction(&h, payload);
        }
        frames += 1;
        if end > bytes.len() {
            return if frames >= 2 { Guess::Frames { requests } } else { Guess::No };
        }
        pos = end;
    }
    if frames == 0 {
        return Guess::No;
    }
    // The start of a frame header cut by the end of the capture.
    let rest = &bytes[pos..];
    if rest.len() >= 3 && u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) > DEFAULT_MAX_FRAME {
        return Guess::No;
    }
    if rest.len() >= 4 && rest[3] > ft::CONTINUATION {
        return Guess::No;
    }
    Guess::Frames { requests }
}

/// The visible part of a payload agrees with its header.
fn payload_plausible(h: &FrameHeader, payload: &[u8]) -> bool {
    match h.ty {
        ft::WINDOW_UPDATE if payload.len() >= 4 => {
            let inc = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            inc != 0 && inc & 0x8000_0000 == 0
        }
        ft::DATA | ft::HEADERS | ft::PUSH_PROMISE if h.has(flag::PADDED) => {
            payload.first().is_none_or(|&pad| u32::from(pad) < h.len)
        }
        _ => true,
    }
}

/// Whether a HEADERS frame's block starts with a request or a response pseudo-header
/// from the static table (see [`guess_frames`]).
fn headers_direction(h: &FrameHeader, payload: &[u8]) -> Option<bool> {
    let mut i = 0usize;
    if h.has(flag::PADDED) {
        i += 1;
    }
    if h.has(flag::PRIORITY) {
        i += 5;
    }
    // Dynamic table size updates may come first.
    loop {
        let b = *payload.get(i)?;
        if b & 0xe0 != 0x20 {
            break;
        }
        i += 1;
        if b & 0x1f == 0x1f {
            // Continuation octets of the size.
            loop {
                let c = *payload.get(i)?;
                i += 1;
                if c & 0x80 == 0 {
                    break;
                }
            }
        }
    }
    let b = *payload.get(i)?;
    let index = if b & 0x80 != 0 {
        b & 0x7f
    } else if b & 0x40 != 0 {
        b & 0x3f
    } else {
        b & 0x0f
    };
    let indexed = b & 0x80 != 0;
    match index {
        2..=7 => Some(true),
        1 if !indexed => Some(true),
        8..=14 => Some(false),
        _ => decoded_direction(h, payload, i),
    }
}

/// A block that starts with a reference to an entry never seen (a long-lived connection
/// joined late: grpcio indexes `:path` and `:authority`) may still hold a static-table
/// pseudo-header further on (`:method POST`, `:scheme http`, `:status 200`): decoded with
/// a throwaway decoder, it says which side the block came from.
fn decoded_direction(h: &FrameHeader, payload: &[u8], start: usize) -> Option<bool> {
    let pad = if h.has(flag::PADDED) { usize::from(*payload.first()?) } else { 0 };
    // Only a whole block, wholly captured, decodes.
    if !h.has(flag::END_HEADERS) || payload.len() != h.len as usize {
        return None;
    }
    let fragment = payload.get(start..payload.len().checked_sub(pad)?)?;
    let mut fields = Vec::new();
    let _ = Decoder::new_unsynced().decode(fragment, &mut fields);
    fields.iter().find_map(|f| match f.name.as_deref() {
        Some(":status") => Some(false),
        Some(":method" | ":path" | ":scheme" | ":authority") => Some(true),
        _ => None,
    })
}

/// How a direction is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Matching the client preface; octets matched so far.
    Preface(usize),
    /// Reading frames.
    Frames,
    /// Framing unknown: waiting for a syscall that starts with plausible frames.
    Hunt,
    /// End of stream.
    Closed,
}

/// A frame whose header was read and whose payload is being read.
#[derive(Debug)]
struct Frame {
    h: FrameHeader,
    /// Payload octets consumed so far (captured or in gaps).
    read: u32,
    /// Captured payload octets kept (header blocks, control frames), up to the first gap.
    buf: Vec<u8>,
    /// Payload offset where the first gap began.
    gap_at: Option<u32>,
    /// DATA: its pad length, once read (0 when not padded).
    pad: Option<u8>,
    /// Timing and stream offset of the frame's first octet.
    first: Timing,
    offset: u64,
}

/// A header block waiting for its CONTINUATION frames (or complete).
#[derive(Debug)]
struct Block {
    stream: u32,
    /// From PUSH_PROMISE.
    push: bool,
    /// The HEADERS frame had END_STREAM.
    end_stream: bool,
    buf: Vec<u8>,
    /// Part of the fragments was not captured.
    lost: bool,
    /// Timing and stream offset of the HEADERS frame's first octet.
    first: Timing,
    offset: u64,
}

/// One direction's parsing state.
#[derive(Debug)]
struct Dir {
    hpack: Decoder,
    phase: Phase,
    hdr: [u8; FRAME_HEADER_LEN],
    hdr_len: usize,
    /// Timing and offset of the first octet of the frame header being read.
    hdr_first: Timing,
    hdr_offset: u64,
    frame: Option<Frame>,
    block: Option<Block>,
    /// The next frame must be a SETTINGS (the first frame of each endpoint).
    need_settings: bool,
    /// Largest frame the receiver of this direction allowed.
    max_frame: u32,
    /// Whether `max_frame` is known (see the module doc).
    max_frame_known: bool,
    /// The framing was resynchronised (an orphan CONTINUATION is then expected).
    resynced: bool,
}

impl Dir {
    fn new(phase: Phase, synced: bool) -> Self {
        Dir {
            hpack: if synced { Decoder::new() } else { Decoder::new_unsynced() },
            phase,
            hdr: [0; FRAME_HEADER_LEN],
            hdr_len: 0,
            hdr_first: Timing::default(),
            hdr_offset: 0,
            frame: None,
            block: None,
            need_settings: synced && phase == Phase::Frames,
            max_frame: DEFAULT_MAX_FRAME,
            max_frame_known: synced,
            resynced: !synced,
        }
    }

    /// Forgets the framing: waits for a syscall that starts with frames.
    fn hunt(&mut self) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Hunt;
        }
        self.hdr_len = 0;
        self.frame = None;
        self.block = None;
        self.need_settings = false;
        self.hpack.reset_unsynced();
        self.resynced = true;
    }

    /// In the middle of a frame (or of the preface).
    fn partial(&self) -> bool {
        match self.phase {
            Phase::Frames => self.hdr_len > 0 || self.frame.is_some() || self.block.is_some(),
            Phase::Preface(n) => n > 0,
            Phase::Hunt | Phase::Closed => false,
        }
    }
}

/// Length-prefixed gRPC messages of one direction of one stream.
#[derive(Debug, Default)]
struct Messages {
    prefix: [u8; 5],
    have: usize,
    /// Octets of the current message still to come.
    remaining: u64,
    count: u64,
    bytes: u64,
    /// A prefix fell into a gap: counts are lower bounds from here on.
    lost: bool,
}

impl Messages {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = data.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                let p = self.prefix;
                let len = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                self.count += 1;
                self.bytes += len;
                self.remaining = len;
                self.have = 0;
            }
        }
    }

    fn skip(&mut self, n: u64) {
        if self.lost || n == 0 {
            return;
        }
        if self.have > 0 || self.remaining < n {
            self.lost = true;
        } else {
            self.remaining -= n;
        }
    }
}

/// One open stream (its request was seen).
#[derive(Debug)]
struct Stream {
    request: Request,
    response: Response,
    request_first: Timing,
    request_last: Timing,
    response_first: Option<Timing>,
    request_ended: bool,
    /// The final response HEADERS was seen (later ones are trailers).
    final_seen: bool,
    /// `content-type: application/grpc*` or a `grpc-*` field was seen.
    grpc: bool,
    grpc_status: Option<u32>,
    unknown: Unknown,
    /// gRPC messages: request, response.
    messages: [Messages; 2],
}

impl Stream {
    fn new(request: Request, first: Timing) -> Self {
        let grpc = request.header("content-type").is_some_and(|v| v.starts_with("application/grpc"))
            || request.headers.iter().any(|(n, _)| n.starts_with("grpc-"));
        Stream {
            request,
            response: Response::default(),
            request_first: first,
            request_last: first,
            response_first: None,
            request_ended: false,
            final_seen: false,
            grpc,
            grpc_status: None,
            unknown: Unknown::default(),
            messages: [Messages::default(), Messages::default()],
        }
    }
}

/// State of one call of the session: the first error, and where records go.
struct Cx<'o> {
    dir: Direction,
    t: Timing,
    out: &'o mut Output,
    error: Option<Error>,
}

/// Captured octets or a gap of known length.
#[derive(Clone, Copy)]
enum Chunk<'a> {
    Bytes(&'a [u8]),
    Gap(u64),
}

impl<'a> Chunk<'a> {
    fn len(self) -> u64 {
        match self {
            Chunk::Bytes(b) => b.len() as u64,
            Chunk::Gap(n) => n,
        }
    }

    /// The first `n` octets and the rest (`n <= len`).
    fn split(self, n: u64) -> (Chunk<'a>, Chunk<'a>) {
        match self {
            Chunk::Bytes(b) => {
                let (a, c) = b.split_at(usize::try_from(n).unwrap_or(b.len()).min(b.len()));
                (Chunk::Bytes(a), Chunk::Bytes(c))
            }
            Chunk::Gap(g) => (Chunk::Gap(n.min(g)), Chunk::Gap(g - n.min(g))),
        }
    }
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

fn dir_of(index: usize) -> Direction {
    if index == 0 {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

fn kept(name: &str) -> Option<&'static str> {
    let mut names = KEPT_HEADERS.iter().chain(GRPC_KEPT_HEADERS);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        // Not as HTTP/2 requires, but as it was sent.
        return names.find(|k| name.eq_ignore_ascii_case(k)).copied();
    }
    names.find(|k| k.len() == name.len() && **k == name).copied()
}

/// The fields of one decoded header block, in one buffer the session reuses (a block
/// costs no allocation once the buffer has grown to its size).
#[derive(Debug, Default)]
struct Fields {
    text: String,
    /// Per field: where its name and its value are in `text` (`None`: unknown).
    fields: Vec<(Option<Span>, Option<Span>)>,
}

/// `start..end` of [`Fields::text`].
type Span = (u32, u32);

impl Fields {
    /// Past this, the buffers are given back after the block.
    const KEEP_CAPACITY: usize = 16 * 1024;

    fn clear(&mut self) {
        self.text.clear();
        self.fields.clear();
        if self.text.capacity() > Self::KEEP_CAPACITY {
            *self = Fields::default();
        }
    }

    fn push(&mut self, name: Option<&str>, value: Option<&str>) {
        let mut put = |s: Option<&str>| {
            let s = s?;
            let start = u32::try_from(self.text.len()).ok()?;
            let end = u32::try_from(self.text.len() + s.len()).ok()?;
            self.text.push_str(s);
            Some((start, end))
        };
        let name = put(name);
        let value = put(value);
        self.fields.push((name, value));
    }

    fn iter(&self) -> impl Iterator<Item = (Option<&str>, Option<&str>)> + Clone {
        let get = |r: Option<Span>| r.and_then(|(a, b)| self.text.get(a as usize..b as usize));
        self.fields.iter().map(move |&(n, v)| (get(n), get(v)))
    }

    fn unknown(&self) -> usize {
        self.fields.iter().filter(|(n, v)| n.is_none() || v.is_none()).count()
    }
}

/// What a request header block says.
#[derive(Default)]
struct RequestHead {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    /// A `:method` field was present (its value may be unknown).
    method_field: bool,
    headers: Headers,
    /// Some field referred to an entry never seen.
    any_unknown: bool,
}

impl RequestHead {
    /// The head, its kept fields after a `host` from `:authority` (sized exactly: two
    /// passes over the block's fields).
    fn of(fields: &Fields) -> Self {
        let mut head = RequestHead::default();
        for (name, value) in fields.iter() {
            let Some(name) = name else {
                head.any_unknown = true;
                continue;
            };
            match name {
                ":method" => {
                    head.method_field = true;
                    head.method = value.map(str::to_owned);
                }
                ":path" => head.path = value.map(str::to_owned),
                ":authority" => head.authority = value.map(str::to_owned),
                _ => {}
            }
        }
        let regular = || {
            fields
                .iter()
                .filter_map(|(name, value)| Some((kept(name.filter(|n| !n.starts_with(':'))?)?, value?)))
                .take(MAX_STORED_HEADERS - usize::from(head.authority.is_some()))
        };
        let (n, bytes) = regular().fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
        let host = head.authority.as_deref();
        let mut headers = Headers::with_capacity(n + 1, bytes + host.map_or(0, |a| "host".len() + a.len()));
        if let Some(a) = host {
            headers.push("host", a);
        }
        for (k, v) in regular() {
            headers.push(k, v);
        }
        head.headers = headers;
        head
    }
}

/// What a response (or trailer) block says besides its kept fields.
struct ResponseHead {
    /// `:status` as found (`Some(None)`: present, value unknown or not a number).
    status: Option<Option<u16>>,
    grpc_status: Option<u32>,
    /// A `grpc-*` field or a gRPC content type: the stream is a gRPC call.
    grpc: bool,
}

/// Adds the kept regular fields of a response (or trailer) block to `headers`.
fn response_fields(fields: &Fields, headers: &mut Headers) -> ResponseHead {
    let mut status = None;
    let mut grpc_status = None;
    let mut grpc = false;
    for (name, value) in fields.iter() {
        let Some(name) = name else { continue };
        if name == ":status" {
            status = Some(value.and_then(|v| v.parse::<u16>().ok()));
            continue;
        }
        if name.starts_with(':') {
            continue;
        }
        let Some(value) = value else { continue };
        if name.eq_ignore_ascii_case("grpc-status") {
            grpc_status = value.trim().parse::<u32>().ok();
        }
        grpc |= name.starts_with("grpc-")
            || (name.eq_ignore_ascii_case("content-type") && value.starts_with("application/grpc"));
        if let Some(k) = kept(name) {
            if headers.len() < MAX_STORED_HEADERS {
                headers.push(k, value);
            }
        }
    }
    ResponseHead { status, grpc_status, grpc }
}

/// Parser and stream pairing for one HTTP/2 connection (both directions).
#[derive(Debug)]
pub struct Http2Session {
    role: Role,
    /// Ingress, egress.
    dirs: [Dir; 2],
    streams: BTreeMap<u32, Stream>,
    /// Highest client stream id seen opening (new streams have higher ids).
    last_opened: u32,
    /// The fields of the block being handled, reused.
    fields: Fields,
    /// Counters incremented by this session (tests check them, as the global ones are
    /// shared by concurrent tests).
    #[cfg(test)]
    counted: Vec<Counter>,
}

impl Http2Session {
    /// A connection seen from its start (the client preface comes first).
    #[must_use]
    pub fn new(role: Role) -> Self {
        let req = dir_index(role.request_direction());
        let mut dirs = [Dir::new(Phase::Frames, true), Dir::new(Phase::Frames, true)];
        dirs[req] = Dir::new(Phase::Preface(0), true);
        let mut s = Http2Session {
            role,
            dirs,
            streams: BTreeMap::new(),
            last_opened: 0,
            fields: Fields::default(),
            #[cfg(test)]
            counted: Vec::new(),
        };
        s.count(Counter::H2Connections);
        s
    }

    /// A connection joined mid-stream (opened before the agent, or its start lost):
    /// framing resynchronises on a syscall that starts with a frame; HPACK state before
    /// that is unknown.
    #[must_use]
    pub fn new_midstream(role: Role) -> Self {
        let mut s = Http2Session {
            role,
            dirs: [Dir::new(Phase::Hunt, false), Dir::new(Phase::Hunt, false)],
            streams: BTreeMap::new(),
            last_opened: 0,
            fields: Fields::default(),
            #[cfg(test)]
            counted: Vec::new(),
        };
        s.count(Counter::H2Connections);
        s
    }

    /// A connection that switched from HTTP/1.1 with `Upgrade: h2c`: `request` (read or
    /// written at `first`) is stream 1, whose response comes in HTTP/2 frames. The client
    /// preface comes next in the request direction.
    #[must_use]
    pub fn after_upgrade(role: Role, request: Request, first: Timing) -> Self {
        let mut s = Self::new(role);
        let mut stream = Stream::new(request, first);
        stream.request_ended = true;
        s.streams.insert(1, stream);
        s.last_opened = 1;
        s.count(Counter::H2Streams);
        s
    }

    /// One syscall's payload at stream offset `pos` of `dir`: `prefix` captured, then
    /// `gap` bytes not captured, then `tail` captured.
    ///
    /// Records go to `out` (also when an error is returned; the first error of the call
    /// is returned, after the session reset the connection's streams and set `dir` to
    /// resynchronise). Every stream this call adds to `out.started` is either still open
    /// ([`Http2Session::request`] gives its head) or done in `out.done` of this call; one
    /// dropped in the same call is not reported.
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
        let d = dir_index(dir);
        let (started_before, done_before) = (out.started.len(), out.done.len());
        let mut cx = Cx { dir, t, out, error: None };
        self.syscall_start(d, prefix);
        self.consume(d, pos, Chunk::Bytes(prefix), &mut cx);
        if gap > 0 {
            self.consume(d, pos + prefix.len() as u64, Chunk::Gap(gap), &mut cx);
        }
        if !tail.is_empty() {
            self.consume(d, pos + prefix.len() as u64 + gap, Chunk::Bytes(tail), &mut cx);
        }
        // A stream started and then dropped (by a connection error or a framing loss) in
        // this same call is not reported at all.
        let Output { started, done } = &mut *cx.out;
        let mut seen = 0usize;
        started.retain(|st| {
            seen += 1;
            seen <= started_before
                || u32::try_from(st.stream).is_ok_and(|id| self.streams.contains_key(&id))
                || done[done_before..].iter().any(|e| e.seq == st.stream)
        });
        match cx.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Bytes of `dir` were lost (how many is unknown), all moved at or before
    /// `before_ns` (0: unknown). Returns how many requests were dropped.
    ///
    /// `dir` resynchronises (HPACK unsynced). Lost request bytes may have held the rest
    /// of every request not yet ended: those streams are dropped. Lost response bytes may
    /// have held the response of every stream whose request was seen before `before_ns`
    /// (all of them when it is 0): those are dropped. Nothing dropped is reported.
    pub fn lost(&mut self, dir: Direction, before_ns: u64) -> usize {
        self.dirs[dir_index(dir)].hunt();
        self.drop_unknown(dir, before_ns)
    }

    /// End of stream in `dir`: its open streams end (reset, not answered).
    ///
    /// Streams still open stay in [`Http2Session::pending_requests`] (the caller counts
    /// them as unanswered when the connection closes) and are never reported. A frame
    /// (or preface) cut short by the end of the stream is a connection error: counted
    /// (`drop.h2_connection_error`) and every open stream dropped.
    pub fn eof(&mut self, dir: Direction, t: Timing, out: &mut Output) {
        let _ = (t, out);
        let d = dir_index(dir);
        if self.dirs[d].partial() {
            log::debug!("HTTP/2 frame cut short by end of stream ({dir:?})");
            self.count(Counter::DropH2ConnectionError);
            self.drop_all();
        }
        let st = &mut self.dirs[d];
        st.hunt();
        st.phase = Phase::Closed;
    }

    /// Requests seen and not yet answered.
    #[must_use]
    pub fn pending_requests(&self) -> usize {
        self.streams.len()
    }

    /// The request head of a stream still open.
    #[must_use]
    pub fn request(&self, stream: u64) -> Option<&Request> {
        let id = u32::try_from(stream).ok()?;
        self.streams.get(&id).map(|s| &s.request)
    }

    fn count(&mut self, c: Counter) {
        stats::global().incr(c);
        #[cfg(test)]
        self.counted.push(c);
    }

    fn count_n(&mut self, c: Counter, n: usize) {
        for _ in 0..n {
            self.count(c);
        }
    }

    fn is_request_dir(&self, d: usize) -> bool {
        dir_of(d) == self.role.request_direction()
    }

    /// Decisions taken where a syscall starts: a hunting direction resynchronises.
    fn syscall_start(&mut self, d: usize, prefix: &[u8]) {
        let is_req = self.is_request_dir(d);
        let st = &mut self.dirs[d];
        if st.phase != Phase::Hunt {
            return;
        }
        if is_req && prefix.starts_with(PREFACE) {
            // The connection starts over here: its tables are exact from now on.
            st.hpack = Decoder::new();
            st.phase = Phase::Preface(0);
            st.resynced = false;
        } else if guess_frames(prefix) != Guess::No {
            st.phase = Phase::Frames;
        }
    }

    /// Reads `chunk` (octets or a gap) at stream offset `pos` of direction `d`.
    fn consume(&mut self, d: usize, mut pos: u64, mut chunk: Chunk<'_>, cx: &mut Cx<'_>) {
        while chunk.len() > 0 {
            let st = &mut self.dirs[d];
            match st.phase {
                Phase::Hunt | Phase::Closed => return,
                Phase::Preface(m) => {
                    let Chunk::Bytes(b) = chunk else {
                        // The preface is not in the capture: nothing to check it by.
                        st.hunt();
                        return;
                    };
                    let n = (PREFACE.len() - m).min(b.len());
                    if b[..n] != PREFACE[m..m + n] {
                        self.connection_error(d, Error::BadPreface, cx);
                        return;
                    }
                    st.phase = if m + n == PREFACE.len() { Phase::Frames } else { Phase::Preface(m + n) };
                    st.need_settings = m + n == PREFACE.len();
                    (_, chunk) = chunk.split(n as u64);
                    pos += n as u64;
                    continue;
                }
                Phase::Frames => {}
            }
            let Some(frame) = &st.frame else {
                // A frame header.
                let Chunk::Bytes(b) = chunk else {
                    // A gap where a frame header is: the framing is lost.
                    self.framing_lost(d, cx);
                    return;
                };
                if st.hdr_len == 0 {
                    st.hdr_first = cx.t;
                    st.hdr_offset = pos;
                }
                let n = (FRAME_HEADER_LEN - st.hdr_len).min(b.len());
                st.hdr[st.hdr_len..st.hdr_len + n].copy_from_slice(&b[..n]);
                st.hdr_len += n;
                (_, chunk) = chunk.split(n as u64);
                pos += n as u64;
                if st.hdr_len == FRAME_HEADER_LEN {
                    st.hdr_len = 0;
                    let h = FrameHeader::parse(&st.hdr);
                    if let Err(e) = self.start_frame(d, h) {
                        self.connection_error(d, e, cx);
                        return;
                    }
                    if h.len == 0 {
                        if let Err(e) = self.finish_frame(d, cx) {
                            self.connection_error(d, e, cx);
                            return;
                        }
                    }
                }
                continue;
            };
            let remaining = u64::from(frame.h.len - frame.read);
            if let Chunk::Gap(g) = chunk {
                if g > remaining {
                    // The gap runs past this frame into a header.
                    self.framing_lost(d, cx);
                    return;
                }
            }
            let (now, rest) = chunk.split(remaining.min(chunk.len()));
            pos += now.len();
            chunk = rest;
            if let Err(e) = self.payload(d, now) {
                self.connection_error(d, e, cx);
                return;
            }
            let done = self.dirs[d].frame.as_ref().is_some_and(|f| f.read == f.h.len);
            if done {
                if let Err(e) = self.finish_frame(d, cx) {
                    self.connection_error(d, e, cx);
                    return;
                }
            }
        }
    }

    /// A frame header was read: checks it and starts reading its payload.
    fn start_frame(&mut self, d: usize, h: FrameHeader) -> Result<(), Error> {
        let is_req = self.is_request_dir(d);
        let st = &mut self.dirs[d];
        let limit = if h.ty == ft::DATA && !st.max_frame_known { LARGEST_FRAME } else { st.max_frame };
        if h.len > limit {
            return Err(Error::BadFrame(if h.ty == ft::HEADERS {
                "HEADERS longer than the maximum frame size"
            } else {
                "frame longer than the maximum frame size"
            }));
        }
        if st.need_settings && (h.ty != ft::SETTINGS || h.has(flag::ACK)) {
            return Err(Error::BadFrame("the first frame is not SETTINGS"));
        }
        if let Some(b) = &st.block {
            if h.ty != ft::CONTINUATION || h.stream != b.stream {
                return Err(Error::BadFrame("header block interrupted by another frame"));
            }
        }
        let on_stream = h.stream != 0;
        let check = |ok: bool, why: &'static str| if ok { Ok(()) } else { Err(Error::BadFrame(why)) };
        match h.ty {
            ft::DATA | ft::HEADERS | ft::CONTINUATION | ft::PRIORITY | ft::RST_STREAM | ft::PUSH_PROMISE => {
                check(on_stream, "stream frame on stream 0")?;
            }
            ft::SETTINGS | ft::PING | ft::GOAWAY => check(!on_stream, "connection frame on a stream")?,
            _ => {}
        }
        match h.ty {
            ft::PRIORITY => check(h.len == 5, "PRIORITY length is not 5")?,
            ft::RST_STREAM => check(h.len == 4, "RST_STREAM length is not 4")?,
            ft::PING => check(h.len == 8, "PING length is not 8")?,
            ft::WINDOW_UPDATE => check(h.len == 4, "WINDOW_UPDATE length is not 4")?,
            ft::SETTINGS => {
                check(h.len.is_multiple_of(6), "SETTINGS length is not a multiple of 6")?;
                check(!h.has(flag::ACK) || h.len == 0, "SETTINGS ACK with a payload")?;
            }
            ft::GOAWAY => check(h.len >= 8, "GOAWAY shorter than 8")?,
            ft::PUSH_PROMISE => {
                check(!is_req, "PUSH_PROMISE from the client")?;
                check(h.len >= 4, "PUSH_PROMISE shorter than 4")?;
            }
            ft::CONTINUATION => check(st.block.is_some() || st.resynced, "CONTINUATION without HEADERS")?,
            _ => {}
        }
        if matches!(h.ty, ft::DATA | ft::HEADERS | ft::PUSH_PROMISE) && h.has(flag::PADDED) {
            check(h.len >= 1, "padded frame without a pad length")?;
        }
        if h.is_block() {
            let so_far = st.block.as_ref().map_or(0, |b| b.buf.len());
            let total = so_far + h.len as usize;
            if total > MAX_HEADER_BLOCK + MAX_BLOCK_OVERHEAD {
                return Err(Error::HeaderBlockTooLarge(total));
            }
        }
        st.need_settings = false;
        st.frame = Some(Frame {
            h,
            read: 0,
            buf: Vec::new(),
            gap_at: None,
            pad: None,
            first: st.hdr_first,
            offset: st.hdr_offset,
        });
        Ok(())
    }

    /// Payload octets (or a gap) of the current frame, at most what it has left.
    fn payload(&mut self, d: usize, chunk: Chunk<'_>) -> Result<(), Error> {
        let Some(f) = self.dirs[d].frame.as_mut() else { return Ok(()) };
        let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        let keep = match f.h.ty {
            ft::DATA => {
                return self.data_payload(d, chunk);
            }
            ft::HEADERS | ft::CONTINUATION | ft::PUSH_PROMISE => usize::MAX,
            ft::SETTINGS => MAX_SETTINGS_PAYLOAD,
            ft::RST_STREAM => 4,
            ft::GOAWAY => 8,
            _ => 0,
        };
        match chunk {
            Chunk::Bytes(b) if f.gap_at.is_none() => {
                let room = keep.saturating_sub(f.buf.len()).min(b.len());
                f.buf.extend_from_slice(&b[..room]);
            }
            Chunk::Bytes(_) => {}
            Chunk::Gap(_) => {
                if f.gap_at.is_none() {
                    f.gap_at = Some(f.read);
                }
            }
        }
        f.read += n;
        Ok(())
    }

    /// DATA payload: pad length, data (counted for the stream), padding.
    fn data_payload(&mut self, d: usize, mut chunk: Chunk<'_>) -> Result<(), Error> {
        let is_req = self.is_request_dir(d);
        let Some(f) = self.dirs[d].frame.as_mut() else { return Ok(()) };
        let mut pad_lost = false;
        if f.pad.is_none() {
            if f.h.has(flag::PADDED) {
                if chunk.len() == 0 {
                    return Ok(());
                }
                let (first, rest) = chunk.split(1);
                chunk = rest;
                f.read += 1;
                let pad = match first {
                    Chunk::Bytes(b) => b[0],
                    Chunk::Gap(_) => {
                        // Where the data ends is unknown: count it all as data.
                        pad_lost = true;
                        0
                    }
                };
                if u32::from(pad) + 1 > f.h.len {
                    return Err(Error::BadFrame("padding longer than the frame"));
                }
                f.pad = Some(pad);
            } else {
                f.pad = Some(0);
            }
        }
        let data_end = f.h.len - u32::from(f.pad.unwrap_or(0));
        let data_len = u64::from(data_end.saturating_sub(f.read)).min(chunk.len());
        let (data, _padding) = chunk.split(data_len);
        f.read += u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        let stream = f.h.stream;
        if let Some(s) = self.streams.get_mut(&stream) {
            let side = usize::from(!is_req);
            let m = &mut s.messages[side];
            if pad_lost {
                m.lost = true;
            }
            match data {
                Chunk::Bytes(b) => m.feed(b),
                Chunk::Gap(g) => m.skip(g),
            }
            let body = if is_req { &mut s.request.body_len } else { &mut s.response.body_len };
            *body += data.len();
        }
        Ok(())
    }

    /// The current frame's payload is complete.
    fn finish_frame(&mut self, d: usize, cx: &mut Cx<'_>) -> Result<(), Error> {
        let is_req = self.is_request_dir(d);
        let Some(f) = self.dirs[d].frame.take() else { return Ok(()) };
        let h = f.h;
        match h.ty {
            ft::DATA if h.has(flag::END_STREAM) => self.end_of_stream(d, h.stream, cx),
            ft::HEADERS | ft::PUSH_PROMISE => {
                let (first, offset) = (f.first, f.offset);
                let (buf, lost) = fragment(f)?;
                let block = Block {
                    stream: h.stream,
                    push: h.ty == ft::PUSH_PROMISE,
                    end_stream: h.ty == ft::HEADERS && h.has(flag::END_STREAM),
                    buf,
                    lost,
                    first,
                    offset,
                };
                if h.has(flag::END_HEADERS) {
                    self.on_block(d, block, cx)?;
                } else {
                    self.dirs[d].block = Some(block);
                }
            }
            ft::CONTINUATION => {
                let lost = f.gap_at.is_some();
                match self.dirs[d].block.take() {
                    Some(mut block) => {
                        if !block.lost && !lost {
                            block.buf.extend_from_slice(&f.buf);
                        }
                        block.lost |= lost;
                        if block.buf.len() > MAX_HEADER_BLOCK {
                            return Err(Error::HeaderBlockTooLarge(block.buf.len()));
                        }
                        if h.has(flag::END_HEADERS) {
                            self.on_block(d, block, cx)?;
                        } else {
                            self.dirs[d].block = Some(block);
                        }
                    }
                    // The rest of a block that began before the direction resynchronised:
                    // the table may have changed in it.
                    None => self.dirs[d].hpack.reset_unsynced(),
                }
            }
            ft::SETTINGS if !h.has(flag::ACK) => self.settings(d, &f.buf),
            ft::RST_STREAM => {
                if let [a, b, c, e, ..] = f.buf[..] {
                    let code = u32::from_be_bytes([a, b, c, e]);
                    self.complete(h.stream, Some(Reset { code, goaway: false, dir: cx.dir }), cx);
                }
            }
            ft::GOAWAY => {
                // A server's GOAWAY names the last client stream it processes; the
                // client's concerns pushed streams, which are not tracked.
                if let (false, [a, b, c, e, f0, f1, f2, f3, ..]) = (is_req, &f.buf[..]) {
                    let last = u32::from_be_bytes([*a, *b, *c, *e]) & 0x7fff_ffff;
                    let code = u32::from_be_bytes([*f0, *f1, *f2, *f3]);
                    let above: Vec<u32> = self.streams.range(last.saturating_add(1)..).map(|(&id, _)| id).collect();
                    for id in above {
                        self.complete(id, Some(Reset { code, goaway: true, dir: cx.dir }), cx);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// SETTINGS sent in direction `d`: `SETTINGS_MAX_FRAME_SIZE` bounds the frames its
    /// sender receives, i.e. the other direction. (`SETTINGS_HEADER_TABLE_SIZE` bounds the
    /// peer's encoder, whose size updates HPACK reads from the blocks themselves.)
    fn settings(&mut self, d: usize, payload: &[u8]) {
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            if id == SETTINGS_MAX_FRAME_SIZE && (DEFAULT_MAX_FRAME..=LARGEST_FRAME).contains(&value) {
                let other = &mut self.dirs[1 - d];
                // The largest seen: frames in flight may still use an older, larger one.
                other.max_frame = if other.max_frame_known { other.max_frame.max(value) } else { value };
                other.max_frame_known = true;
            }
        }
    }

    /// A complete header block of direction `d`.
    fn on_block(&mut self, d: usize, block: Block, cx: &mut Cx<'_>) -> Result<(), Error> {
        let mut fields = std::mem::take(&mut self.fields);
        fields.clear();
        if block.lost {
            // Some fragment was not captured: the fields cannot be read, and the table
            // may have changed in what was lost.
            self.dirs[d].hpack.reset_unsynced();
        } else {
            if block.buf.len() > MAX_HEADER_BLOCK {
                self.fields = fields;
                return Err(Error::HeaderBlockTooLarge(block.buf.len()));
            }
            if let Err(e) = self.dirs[d].hpack.decode_with(&block.buf, |n, v| fields.push(n, v)) {
                fields.clear();
                self.fields = fields;
                return Err(Error::Hpack(e));
            }
        }
        self.count_n(Counter::H2UnknownField, fields.unknown());
        if block.push {
            self.count(Counter::H2PushIgnored);
        } else if self.is_request_dir(d) {
            self.request_block(block, &fields, cx);
        } else {
            self.response_block(block, &fields, cx);
        }
        self.fields = fields;
        Ok(())
    }

    fn request_block(&mut self, block: Block, fields: &Fields, cx: &mut Cx<'_>) {
        let id = block.stream;
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers of a request (or a second HEADERS).
            if block.end_stream {
                s.request_ended = true;
                s.request_last = cx.t;
            }
            return;
        }
        if id.is_multiple_of(2) || id <= self.last_opened {
            // Not a new client stream: one dropped, or opened before the session knew.
            return;
        }
        if block.lost {
            self.last_opened = id;
            log::debug!("HTTP/2 request head on stream {id} not captured");
            self.count(Counter::DropLostRequest);
            return;
        }
        let head = RequestHead::of(fields);
        if !head.method_field && !head.any_unknown {
            // No pseudo-header: trailers of a stream opened before the session knew.
            return;
        }
        self.last_opened = id;
        if self.streams.len() >= MAX_STREAMS {
            self.count(Counter::DropH2StreamLimit);
            return;
        }
        let unknown = Unknown {
            method: head.method.is_none(),
            path: head.path.is_none() && head.method.as_deref() != Some("CONNECT"),
            status: false,
        };
        let request = Request {
            method: head.method.unwrap_or_default(),
            target: head.path.unwrap_or_default(),
            version_minor: 0,
            headers: head.headers,
            body_len: 0,
            truncated: false,
            stream_offset: block.offset,
        };
        let mut s = Stream::new(request, block.first);
        s.unknown = unknown;
        if block.end_stream {
            s.request_ended = true;
            s.request_last = cx.t;
        }
        self.streams.insert(id, s);
        self.count(Counter::H2Streams);
        if unknown.method {
            self.count(Counter::H2UnknownMethod);
        }
        if unknown.path {
            self.count(Counter::H2UnknownPath);
        }
        cx.out.started.push(Started { stream: u64::from(id), offset: block.offset, first: block.first });
    }

    fn response_block(&mut self, block: Block, fields: &Fields, cx: &mut Cx<'_>) {
        let id = block.stream;
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.final_seen {
            // Trailers.
            let head = response_fields(fields, &mut s.response.headers);
            s.grpc_status = head.grpc_status.or(s.grpc_status);
            s.grpc |= head.grpc;
            s.response.truncated |= block.lost;
        } else {
            if block.lost {
                self.streams.remove(&id);
                log::debug!("HTTP/2 response head on stream {id} not captured");
                self.count(Counter::DropLostRequest);
                return;
            }
            let mut headers = Headers::default();
            let head = response_fields(fields, &mut headers);
            let status = head.status.flatten();
            if status.is_some_and(|c| (100..200).contains(&c)) {
                // Interim response.
                return;
            }
            s.final_seen = true;
            s.response.status = status.unwrap_or(0);
            s.response.headers = headers;
            s.response_first = Some(block.first);
            s.grpc_status = head.grpc_status;
            s.grpc |= head.grpc;
            if status.is_none() {
                s.unknown.status = true;
                self.count(Counter::H2UnknownStatus);
            }
        }
        if block.end_stream {
            self.complete(id, None, cx);
        }
    }

    /// END_STREAM on a DATA frame of direction `d`.
    fn end_of_stream(&mut self, d: usize, id: u32, cx: &mut Cx<'_>) {
        if self.is_request_dir(d) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.request_ended = true;
                s.request_last = cx.t;
            }
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else { return };
        if !s.final_seen {
            // DATA ending a response whose HEADERS never came (a broken peer).
            s.unknown.status = true;
            self.count(Counter::H2UnknownStatus);
        }
        self.complete(id, None, cx);
    }

    /// Ends stream `id` (if tracked) and reports its exchange.
    fn complete(&mut self, id: u32, reset: Option<Reset>, cx: &mut Cx<'_>) {
        let Some(s) = self.streams.remove(&id) else { return };
        if reset.is_some() {
            self.count(Counter::H2StreamsReset);
        }
        let grpc = s.grpc.then(|| Grpc {
            status: s.grpc_status,
            request_messages: s.messages[0].count,
            request_bytes: s.messages[0].bytes,
            response_messages: s.messages[1].count,
            response_bytes: s.messages[1].bytes,
        });
        cx.out.done.push(Exchange {
            seq: u64::from(id),
            request: s.request,
            response: s.response,
            request_first: s.request_first,
            request_last: s.request_last,
            response_first: s.response_first.unwrap_or(cx.t),
            response_last: cx.t,
            h2: Some(Box::new(H2Exchange { reset, grpc, unknown: s.unknown })),
            db: None,
        });
    }

    /// A connection error in direction `d`: counted, every stream dropped, `d` hunts.
    fn connection_error(&mut self, d: usize, e: Error, cx: &mut Cx<'_>) {
        log::debug!("HTTP/2 connection error ({:?}): {e}", cx.dir);
        self.count(Counter::DropH2ConnectionError);
        self.drop_all();
        self.dirs[d].hunt();
        // The other direction's limit came from SETTINGS this one may now miss.
        self.dirs[1 - d].max_frame_known = false;
        if cx.error.is_none() {
            cx.error = Some(e);
        }
    }

    /// A gap covered a frame header of direction `d`.
    fn framing_lost(&mut self, d: usize, cx: &mut Cx<'_>) {
        log::debug!("HTTP/2 framing lost in a capture gap ({:?})", cx.dir);
        self.dirs[d].hunt();
        self.dirs[1 - d].max_frame_known = false;
        let n = self.drop_unknown(dir_of(d), cx.t.exit_ns);
        self.count_n(Counter::DropLostRequest, n);
    }

    fn drop_all(&mut self) {
        let n = self.streams.len();
        self.streams.clear();
        self.count_n(Counter::DropLostRequest, n);
    }

    /// Drops the streams whose state in `dir` is unknown after a loss (see `lost`).
    fn drop_unknown(&mut self, dir: Direction, before_ns: u64) -> usize {
        let before = self.streams.len();
        if dir == self.role.request_direction() {
            self.streams.retain(|_, s| s.request_ended);
        } else {
            self.streams.retain(|_, s| before_ns != 0 && s.request_first.enter_ns > before_ns);
        }
        before - self.streams.len()
    }
}

/// The fragment of a complete HEADERS or PUSH_PROMISE frame (padding, priority and the
/// promised stream id removed), and whether part of it was not captured.
fn fragment(f: Frame) -> Result<(Vec<u8>, bool), Error> {
    let h = f.h;
    let len = h.len as usize;
    let mut buf = f.buf;
    let mut start = 0usize;
    let mut pad = 0usize;
    if h.has(flag::PADDED) {
        let Some(&p) = buf.first() else {
            // The pad length itself was not captured.
            return Ok((Vec::new(), true));
        };
        pad = usize::from(p);
        start = 1;
    }
    if h.ty == ft::HEADERS && h.has(flag::PRIORITY) {
        start += 5;
    }
    if h.ty == ft::PUSH_PROMISE {
        start += 4;
    }
    if start + pad > len {
        return Err(Error::BadFrame("padding longer than the frame"));
    }
    let end = len - pad;
    let lost = f.gap_at.is_some_and(|g| (g as usize) < end);
    buf.truncate(end);
    if lost || buf.len() < start {
        return Ok((Vec::new(), lost));
    }
    buf.drain(..start);
    Ok((buf, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: Direction = Direction::Ingress;
    const OUT: Direction = Direction::Egress;

    fn tm(i: u64) -> Timing {
        Timing { enter_ns: i * 10, exit_ns: i * 10 + 1 }
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.push(ty);
        v.push(flags);
        v.extend(stream.to_be_bytes());
        v.extend(payload);
        v
    }

    fn settings() -> Vec<u8> {
        frame(ft::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
    }

    fn client_start() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend(settings());
        v
    }

    /// An HPACK integer with an `n`-bit prefix whose other bits are `first`.
    fn int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        int(0, 7, s.len(), out);
        out.extend(s.as_bytes());
    }

    /// Literal without indexing, name from static index `idx`.
    fn lit(idx: usize, value: &str) -> Vec<u8> {
        let mut v = Vec::new();
        int(0, 4, idx, &mut v);
        string(value, &mut v);
        v
    }

    /// Literal without indexing, new name.
    fn lit_new(name: &str, value: &str) -> Vec<u8> {
        let mut v = vec![0];
        string(name, &mut v);
        string(value, &mut v);
        v
    }

    /// Literal with incremental indexing, new name (adds a dynamic entry).
    fn lit_add(name: &str, value: &str) -> Vec<u8> {
        let mut v = vec![0x40];
        string(name, &mut v);
        string(value, &mut v);
        v
    }

    fn indexed(idx: usize) -> Vec<u8> {
        let mut v = Vec::new();
        int(0x80, 7, idx, &mut v);
        v
    }

    fn block(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// GET `path` (static :method GET, :scheme http, literal :path and :authority).
    fn get(path: &str) -> Vec<u8> {
        block(&[indexed(2), indexed(6), lit(4, path), lit(1, "example.com"), lit_new("user-agent", "t/1")])
    }

    fn status(code: u16) -> Vec<u8> {
        match code {
            200 => indexed(8),
            404 => indexed(13),
            _ => lit(8, &code.to_string()),
        }
    }

    fn headers(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        frame(ft::HEADERS, flags, stream, block)
    }

    fn data(stream: u32, end_stream: bool, payload: &[u8]) -> Vec<u8> {
        frame(ft::DATA, if end_stream { flag::END_STREAM } else { 0 }, stream, payload)
    }

    fn grpc_msg(len: usize) -> Vec<u8> {
        let mut v = vec![0];
        v.extend(u32::try_from(len).unwrap_or(0).to_be_bytes());
        v.extend(std::iter::repeat_n(b'm', len));
        v
    }

    fn grpc_request(path: &str) -> Vec<u8> {
        block(&[
            indexed(3),
            indexed(6),
            lit(4, path),
            lit(1, "svc:50051"),
            lit(31, "application/grpc"),
            lit_new("te", "trailers"),
            lit_new("authorization", "Bearer secret"),
            lit_new("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ])
    }

    #[derive(Clone, Debug)]
    enum Ev {
        D(Direction, Vec<u8>),
        /// prefix, gap, tail.
        G(Direction, Vec<u8>, u64, Vec<u8>),
        Eof(Direction),
        Lost(Direction),
    }

    #[derive(Debug, Default)]
    struct Run {
        started: Vec<Started>,
        done: Vec<Exchange>,
        errors: Vec<(usize, Error)>,
        dropped: Vec<usize>,
        pending: usize,
        counted: Vec<Counter>,
    }

    impl Run {
        fn counted(&self, c: Counter) -> usize {
            self.counted.iter().filter(|&&x| x == c).count()
        }
    }

    fn run_on(mut s: Http2Session, evs: &[Ev], cuts: &dyn Fn(usize, usize) -> Vec<usize>) -> Run {
        let mut r = Run::default();
        let mut pos = [0u64; 2];
        for (i, ev) in evs.iter().enumerate() {
            let t = tm(i as u64);
            let mut out = Output::default();
            match ev {
                Ev::D(dir, bytes) => {
                    let mut start = 0;
                    for end in cuts(i, bytes.len()).into_iter().chain([bytes.len()]) {
                        let p = &mut pos[dir_index(*dir)];
                        if let Err(e) = s.feed_at(*dir, *p, &bytes[start..end], 0, &[], t, &mut out) {
                            r.errors.push((i, e));
                        }
                        *p += (end - start) as u64;
                        start = end;
                    }
                }
                Ev::G(dir, prefix, gap, tail) => {
                    let p = &mut pos[dir_index(*dir)];
                    if let Err(e) = s.feed_at(*dir, *p, prefix, *gap, tail, t, &mut out) {
                        r.errors.push((i, e));
                    }
                    *p += prefix.len() as u64 + gap + tail.len() as u64;
                }
                Ev::Eof(dir) => s.eof(*dir, t, &mut out),
                Ev::Lost(dir) => r.dropped.push(s.lost(*dir, 0)),
            }
            for st in &out.started {
                // The head is readable for every stream still open.
                if let Some(req) = s.request(st.stream) {
                    assert_eq!(req.stream_offset, st.offset);
                }
            }
            r.started.extend(out.started);
            r.done.extend(out.done);
            assert!(s.pending_requests() <= MAX_STREAMS);
        }
        r.pending = s.pending_requests();
        r.counted = s.counted;
        r
    }

    fn run(role: Role, evs: &[Ev]) -> Run {
        run_on(Http2Session::new(role), evs, &|_, _| Vec::new())
    }

    /// Runs whole, cut at every byte boundary of each record, and byte by byte; all must
    /// agree. Returns the whole run.
    fn check(role: Role, evs: &[Ev]) -> Run {
        let whole = run(role, evs);
        let key = |r: &Run| (r.started.clone(), r.done.clone(), r.errors.clone(), r.pending);
        for (k, ev) in evs.iter().enumerate() {
            let Ev::D(_, bytes) = ev else { continue };
            for p in 1..bytes.len() {
                let cut = run_on(Http2Session::new(role), evs, &|i, _| if i == k { vec![p] } else { Vec::new() });
                assert_eq!(key(&cut), key(&whole), "record {k} cut at {p}");
            }
        }
        let bytes = run_on(Http2Session::new(role), evs, &|_, len| (1..len).collect());
        assert_eq!(key(&bytes), key(&whole), "byte by byte");
        whole
    }

    fn h2(e: &Exchange) -> &H2Exchange {
        e.h2.as_deref().unwrap_or_else(|| panic!("no h2 part: {e:?}"))
    }

    fn basic_events() -> Vec<Ev> {
        vec![
            Ev::D(OUT, settings()),
            Ev::D(IN, [client_start(), headers(1, true, &get("/a"))].concat()),
            Ev::D(OUT, [headers(1, false, &status(200)), data(1, false, b"hello "), data(1, true, b"world")].concat()),
        ]
    }

    #[test]
    fn one_exchange_split_everywhere() {
        let r = check(Role::Server, &basic_events());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let pos = (PREFACE.len() + settings().len()) as u64;
        assert_eq!(r.started, [Started { stream: 1, offset: pos, first: tm(1) }]);
        assert_eq!(r.done.len(), 1);
        let e = &r.done[0];
        assert_eq!(e.seq, 1);
        assert_eq!((e.request.method.as_str(), e.request.target.as_str()), ("GET", "/a"));
        assert_eq!(e.request.header("host"), Some("example.com"));
        assert_eq!(e.request.header("user-agent"), Some("t/1"));
        assert_eq!(e.request.stream_offset, pos);
        assert_eq!(e.response.status, 200);
        assert_eq!(e.response.body_len, 11);
        assert_eq!((e.request_first, e.request_last, e.response_first, e.response_last), (tm(1), tm(1), tm(2), tm(2)));
        assert_eq!(h2(e), &H2Exchange::default());
        assert_eq!(r.pending, 0);
        assert_eq!(r.counted(Counter::H2Streams), 1);
        assert_eq!(r.counted(Counter::H2Connections), 1);
    }

    #[test]
    fn role_client_sees_the_same() {
        let flip = |evs: Vec<Ev>| -> Vec<Ev> {
            evs.into_iter()
                .map(|e| match e {
                    Ev::D(d, b) => Ev::D(if d == IN { OUT } else { IN }, b),
                    other => other,
                })
                .collect()
        };
        let server = run(Role::Server, &basic_events());
        let client = check(Role::Client, &flip(basic_events()));
        assert_eq!(server.done, client.done);
        assert_eq!(server.started, client.started);
    }

    #[test]
    fn padding_and_priority() {
        // HEADERS: PADDED + PRIORITY; DATA: PADDED.
        let b = get("/p");
        let mut payload = vec![3u8];
        payload.extend([0x80, 0, 0, 1, 200]);
        payload.extend(&b);
        payload.extend([0, 0, 0]);
        let hdrs = frame(ft::HEADERS, flag::END_HEADERS | flag::PADDED | flag::PRIORITY, 1, &payload);
        let mut dpay = vec![4u8];
        dpay.extend(b"12345");
        dpay.extend([0; 4]);
        let body = frame(ft::DATA, flag::PADDED | flag::END_STREAM, 1, &dpay);
        let prio = frame(ft::PRIORITY, 0, 1, &[0, 0, 0, 0, 16]);
        let evs = [
            Ev::D(IN, [client_start(), prio.clone(), hdrs, body.clone()].concat()),
            Ev::D(OUT, [settings(), headers(1, false, &status(200)), prio, body].concat()),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].request.target, "/p");
        assert_eq!((r.done[0].request.body_len, r.done[0].response.body_len), (5, 5));
        assert_eq!(r.done[0].request_last, tm(0));

        // Padding longer than the frame is a connection error.
        let bad = frame(ft::DATA, flag::PADDED, 1, &[9, 1, 2]);
        let r = run(Role::Server, &[Ev::D(IN, [client_start(), headers(1, false, &get("/")), bad].concat())]);
        assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]), "{:?}", r.errors);
        assert_eq!(r.pending, 0);
    }

    #[test]
    fn continuation_frames() {
        let b = block(&[get("/c"), lit_new("x-request-id", &"r".repeat(300))]);
        let (a, rest) = b.split_at(7);
        let (m, z) = rest.split_at(100);
        let hs = [
            frame(ft::HEADERS, flag::END_STREAM, 1, a),
            frame(ft::CONTINUATION, 0, 1, m),
            frame(ft::CONTINUATION, flag::END_HEADERS, 1, z),
        ]
        .concat();
        let evs = [
            Ev::D(IN, [client_start(), hs].concat()),
            Ev::D(OUT, [settings(), headers(1, true, &status(404))].concat()),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].request.header("x-request-id").map(str::len), Some(300));
        assert_eq!(r.done[0].response.status, 404);

        // A block interrupted by another frame.
        let hs = [frame(ft::HEADERS, 0, 1, a), frame(ft::PING, 0, 0, &[0; 8])].concat();
        let r = run(Role::Server, &[Ev::D(IN, [client_start(), hs].concat())]);
        assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]), "{:?}", r.errors);
        // A CONTINUATION out of nowhere on a connection seen from its start.
        let r = run(Role::Server, &[Ev::D(IN, [client_start(), frame(ft::CONTINUATION, 4, 1, z)].concat())]);
        assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]), "{:?}", r.errors);
        // A block over the limit.
        let mut big = frame(ft::HEADERS, 0, 1, &vec![0; 16_000]);
        for _ in 0..5 {
            big.extend(frame(ft::CONTINUATION, 0, 1, &vec![0; 16_000]));
        }
        let r = run(Role::Server, &[Ev::D(IN, [client_start(), big].concat())]);
        assert!(matches!(r.errors[..], [(0, Error::HeaderBlockTooLarge(_))]), "{:?}", r.errors);
        assert_eq!(r.counted(Counter::DropH2ConnectionError), 1);
    }

    #[test]
    fn rst_stream_from_either_side() {
        let evs = [
            Ev::D(IN, [client_start(), headers(1, true, &get("/a")), headers(3, false, &get("/b"))].concat()),
            Ev::D(
                OUT,
                [settings(), headers(1, false, &status(200)), frame(ft::RST_STREAM, 0, 1, &[0, 0, 0, 2])].concat(),
            ),
            Ev::D(IN, frame(ft::RST_STREAM, 0, 3, &[0, 0, 0, 8])),
            // Frames on the reset stream are ignored.
            Ev::D(OUT, data(3, true, b"late")),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let resets: Vec<_> = r.done.iter().map(|e| (e.seq, e.response.status, h2(e).reset)).collect();
        assert_eq!(
            resets,
            [
                (1, 200, Some(Reset { code: 2, goaway: false, dir: OUT })),
                (3, 0, Some(Reset { code: 8, goaway: false, dir: IN })),
            ]
        );
        assert_eq!(r.counted(Counter::H2StreamsReset), 2);
        assert_eq!(r.pending, 0);
    }

    #[test]
    fn goaway_ends_streams_above_its_last_id() {
        let mut goaway = 3u32.to_be_bytes().to_vec();
        goaway.extend(0u32.to_be_bytes());
        goaway.extend(b"bye");
        let reqs = [headers(1, true, &get("/1")), headers(3, true, &get("/3")), headers(5, true, &get("/5"))].concat();
        let evs = [
            Ev::D(IN, [client_start(), reqs].concat()),
            Ev::D(OUT, [settings(), frame(ft::GOAWAY, 0, 0, &goaway)].concat()),
            Ev::D(OUT, [headers(3, true, &status(200)), headers(1, true, &status(404))].concat()),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let got: Vec<_> = r.done.iter().map(|e| (e.seq, e.response.status, h2(e).reset.map(|x| x.goaway))).collect();
        assert_eq!(got, [(5, 0, Some(true)), (3, 200, None), (1, 404, None)]);
    }

    #[test]
    fn grpc_messages_trailers_and_trailers_only() {
        let mut req_body = grpc_msg(10);
        req_body.extend(grpc_msg(3));
        let resp_body = [grpc_msg(7), grpc_msg(0), grpc_msg(20)].concat();
        let trailers = block(&[lit_new("grpc-status", "0"), lit_new("grpc-message", "")]);
        let evs = [
            Ev::D(
                IN,
                // Two messages across three frames.
                [client_start(), headers(1, false, &grpc_request("/pkg.Svc/Call")), data(1, false, &req_body[..4])]
                    .concat(),
            ),
            Ev::D(IN, [data(1, false, &req_body[4..12]), data(1, true, &req_body[12..])].concat()),
            Ev::D(
                OUT,
                [
                    settings(),
                    headers(1, false, &block(&[status(200), lit(31, "application/grpc")])),
                    data(1, false, &resp_body),
                    headers(1, true, &trailers),
                ]
                .concat(),
            ),
            // Trailers-Only: HEADERS with :status, grpc-status and END_STREAM.
            Ev::D(IN, [headers(3, true, &grpc_request("/pkg.Svc/Missing"))].concat()),
            Ev::D(
                OUT,
                headers(3, true, &block(&[status(200), lit(31, "application/grpc"), lit_new("grpc-status", "5")])),
            ),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done.len(), 2);
        let e = &r.done[0];
        assert_eq!((e.request.method.as_str(), e.request.target.as_str()), ("POST", "/pkg.Svc/Call"));
        assert_eq!(e.request.header("authorization"), None, "never stored");
        assert_eq!(e.request.header("te"), Some("trailers"));
        assert!(e.request.header("traceparent").is_some());
        assert_eq!(e.request_last, tm(1));
        assert_eq!(e.response.header("grpc-status"), Some("0"));
        assert_eq!(e.response.header("content-type"), Some("application/grpc"));
        assert_eq!(
            h2(e).grpc,
            Some(Grpc {
                status: Some(0),
                request_messages: 2,
                request_bytes: 13,
                response_messages: 3,
                response_bytes: 27
            })
        );
        assert_eq!((e.request.body_len, e.response.body_len), (23, 42));
        let e = &r.done[1];
        assert_eq!(h2(e).grpc.as_ref().map(|g| (g.status, g.response_messages)), Some((Some(5), 0)));
        assert_eq!(e.response.status, 200);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let evs = [
            Ev::D(IN, [client_start(), headers(1, false, &get("/e"))].concat()),
            Ev::D(OUT, [settings(), headers(1, false, &status(100))].concat()),
            Ev::D(IN, data(1, true, b"body")),
            Ev::D(OUT, [headers(1, false, &status(103)), headers(1, true, &status(204))].concat()),
        ];
        let r = check(Role::Server, &evs);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].response.status, 204);
        assert_eq!(r.done[0].response_first, tm(3));
        assert_eq!(r.done[0].request_last, tm(2));
    }

    #[test]
    fn server_push_is_ignored_but_decoded() {
        // The promise adds a dynamic entry that the response then uses.
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.extend(block(&[indexed(2), lit(4, "/pushed"), lit_add("x-request-id", "pushed")]));
        let evs = [
            Ev::D(IN, [client_start(), headers(1, true, &get("/"))].concat()),
            Ev::D(
                OUT,
                [
                    settings(),
                    frame(ft::PUSH_PROMISE, flag::END_HEADERS, 1, &promise),
                    headers(2, true, &status(200)),
                    headers(1, true, &block(&[status(200), indexed(62)])),
                ]
                .concat(),
            ),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].seq, 1);
        assert_eq!(r.done[0].response.header("x-request-id"), Some("pushed"));
        assert_eq!(r.counted(Counter::H2PushIgnored), 1);
        // A client cannot push.
        let r = run(Role::Server, &[Ev::D(IN, [client_start(), frame(ft::PUSH_PROMISE, 4, 1, &promise)].concat())]);
        assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]));
    }

    #[test]
    fn stream_limit_still_decodes_hpack() {
        let mut reqs = client_start();
        for i in 0..=MAX_STREAMS as u32 {
            reqs.extend(headers(2 * i + 1, true, &get(&format!("/{i}"))));
        }
        // The stream over the limit adds a dynamic entry; the next request uses it.
        let over = 2 * (MAX_STREAMS as u32 + 1) + 1;
        reqs.extend(headers(over, true, &block(&[get("/over"), lit_add("x-request-id", "abc")])));
        let mut resps = settings();
        resps.extend(headers(1, true, &status(200)));
        let next = over + 2;
        let evs = [
            Ev::D(IN, reqs),
            Ev::D(OUT, resps),
            Ev::D(IN, headers(next, true, &block(&[get("/next"), indexed(62)]))),
            Ev::D(OUT, headers(next, true, &status(200))),
        ];
        let r = run(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.counted(Counter::DropH2StreamLimit), 2);
        assert_eq!(r.started.len(), MAX_STREAMS + 1);
        let last =
            r.done.last().map(|e| (e.request.target.clone(), e.request.header("x-request-id").map(str::to_owned)));
        assert_eq!(last, Some(("/next".to_owned(), Some("abc".to_owned()))));
        assert_eq!(r.pending, MAX_STREAMS - 1);
    }

    #[test]
    fn gaps_inside_data_are_skipped_exactly() {
        let mut body = grpc_msg(5000);
        body.extend(grpc_msg(3000));
        let resp =
            [headers(1, false, &block(&[status(200), lit(31, "application/grpc")])), data(1, false, &body)].concat();
        let trailers = headers(1, true, &lit_new("grpc-status", "0"));
        let whole = [resp.clone(), trailers.clone()].concat();
        let base =
            [Ev::D(IN, [client_start(), headers(1, true, &grpc_request("/s/M"))].concat()), Ev::D(OUT, settings())];
        let exact = run(Role::Server, &[base.to_vec(), vec![Ev::D(OUT, whole.clone())]].concat());
        // Where the second message's prefix is in `whole`.
        let second = resp.len() - body.len() + 5 + 5000;
        for (prefix, tail) in
            [(100, 40), (second - 5000 + 1, 5000), (whole.len() - 3000 - trailers.len(), 2900 + trailers.len())]
        {
            let gap = (whole.len() - prefix - tail) as u64;
            let ev = Ev::G(OUT, whole[..prefix].to_vec(), gap, whole[whole.len() - tail..].to_vec());
            let r = run(Role::Server, &[base.to_vec(), vec![ev]].concat());
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            assert_eq!(r.done.len(), 1, "{prefix}/{tail}");
            let (g, x) = (&r.done[0], &exact.done[0]);
            assert_eq!(g.response.body_len, x.response.body_len);
            let grpc = h2(g).grpc.clone().unwrap_or_default();
            assert_eq!(grpc.status, Some(0));
            if second + 5 <= prefix || second >= whole.len() - tail {
                // Both prefixes captured, only bodies in the gap: exact.
                assert_eq!(h2(g).grpc, h2(x).grpc, "{prefix}/{tail}");
            } else {
                // The second prefix is in the gap: lower bounds.
                assert_eq!((grpc.response_messages, grpc.response_bytes), (1, 5000), "{prefix}/{tail}");
            }
        }
        assert_eq!(h2(&exact.done[0]).grpc.as_ref().map(|g| (g.response_messages, g.response_bytes)), Some((2, 8000)));
        // A gap that runs into the next frame header loses the framing: the stream goes.
        let ev = Ev::G(OUT, whole[..100].to_vec(), (whole.len() - 100 - 3) as u64, whole[whole.len() - 3..].to_vec());
        let r = run(Role::Server, &[base.to_vec(), vec![ev]].concat());
        assert!(r.done.is_empty());
        assert_eq!(r.pending, 0);
        assert_eq!(r.counted(Counter::DropLostRequest), 1);
        assert!(r.errors.is_empty(), "not hostile: {:?}", r.errors);
    }

    #[test]
    fn gap_inside_headers_loses_the_block() {
        let mut resp_block = block(&[status(200), lit_add("x-request-id", &"v".repeat(200))]);
        resp_block.extend(lit_new("server", "s"));
        let resp = headers(1, false, &resp_block);
        let evs = [
            Ev::D(IN, [client_start(), headers(1, false, &get("/a")), headers(3, true, &get("/b"))].concat()),
            Ev::D(OUT, settings()),
            Ev::G(OUT, resp[..20].to_vec(), (resp.len() - 30) as u64, resp[resp.len() - 10..].to_vec()),
            Ev::D(OUT, data(1, true, b"x")),
            // The entry added in the lost block is unknown now.
            Ev::D(OUT, headers(3, true, &block(&[status(200), indexed(62)]))),
        ];
        let r = run(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].seq, 3);
        assert_eq!(r.done[0].response.status, 200);
        assert_eq!(r.done[0].response.header("x-request-id"), None);
        assert_eq!(r.counted(Counter::H2UnknownField), 1);
        assert_eq!(r.counted(Counter::DropLostRequest), 1);
    }

    #[test]
    fn hostile_inputs_are_connection_errors() {
        let open = [client_start(), headers(1, true, &get("/a"))].concat();
        // Garbage after a valid preface.
        let mut garbage = PREFACE.to_vec();
        garbage.extend(b"\x00\x00\x05\x01\x00\x00\x00\x00\x01hello GET / HTTP/1.1");
        let r = run(Role::Server, &[Ev::D(IN, garbage), Ev::D(IN, open.clone())]);
        assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]), "{:?}", r.errors);
        assert_eq!(r.counted(Counter::DropH2ConnectionError), 1);
        // The direction hunts: a syscall that starts with the preface resynchronises.
        assert_eq!(r.pending, 1);

        // Not the preface at all.
        let r = run(Role::Server, &[Ev::D(IN, b"PRI * HTTP/1.1\r\n\r\n".to_vec())]);
        assert!(matches!(r.errors[..], [(0, Error::BadPreface)]), "{:?}", r.errors);

        // Oversized HEADERS length, with a stream open: it is dropped, not reported.
        let mut big = vec![0xff, 0xff, 0xff, ft::HEADERS, 4, 0, 0, 0, 3];
        big.extend([0u8; 64]);
        let evs = [
            Ev::D(IN, open.clone()),
            Ev::D(IN, big),
            Ev::D(OUT, [settings(), headers(1, true, &status(200))].concat()),
        ];
        let r = run(Role::Server, &evs);
        assert!(matches!(r.errors[..], [(1, Error::BadFrame(_))]), "{:?}", r.errors);
        assert!(r.done.is_empty());
        assert_eq!((r.pending, r.counted(Counter::DropLostRequest)), (0, 1));

        // A truncated frame at end of stream.
        let mut cut = open.clone();
        cut.extend(&data(1, false, b"0123456789")[..12]);
        let evs = [Ev::D(IN, cut), Ev::Eof(IN), Ev::D(OUT, [settings(), headers(1, true, &status(200))].concat())];
        let r = run(Role::Server, &evs);
        assert!(r.errors.is_empty());
        assert_eq!(r.counted(Counter::DropH2ConnectionError), 1);
        assert!(r.done.is_empty());
        // A clean end of stream is not an error, and leaves open streams pending.
        let r = run(Role::Server, &[Ev::D(IN, open), Ev::Eof(IN), Ev::Eof(OUT)]);
        assert_eq!((r.counted(Counter::DropH2ConnectionError), r.pending), (0, 1));

        // The server's first frame must be SETTINGS.
        let r = run(Role::Server, &[Ev::D(OUT, headers(1, true, &status(200)))]);
        assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]), "{:?}", r.errors);
        // Bad HPACK (index 0).
        let r = run(Role::Server, &[Ev::D(IN, [client_start(), headers(1, true, &[0x80])].concat())]);
        assert!(matches!(r.errors[..], [(0, Error::Hpack(_))]), "{:?}", r.errors);
        // Wrong fixed lengths and stream-0 misuse.
        for f in [
            frame(ft::PING, 0, 0, &[0; 7]),
            frame(ft::WINDOW_UPDATE, 0, 0, &[0; 5]),
            frame(ft::RST_STREAM, 0, 1, &[0; 3]),
            frame(ft::PRIORITY, 0, 1, &[0; 4]),
            frame(ft::SETTINGS, 0, 0, &[0; 5]),
            frame(ft::SETTINGS, 0, 1, &[]),
            frame(ft::GOAWAY, 0, 0, &[0; 7]),
            frame(ft::DATA, 0, 0, b"x"),
            frame(ft::HEADERS, 4, 0, &indexed(2)),
        ] {
            let r = run(Role::Server, &[Ev::D(IN, [client_start(), f.clone()].concat())]);
            assert!(matches!(r.errors[..], [(0, Error::BadFrame(_))]), "{f:?}: {:?}", r.errors);
        }
    }

    #[test]
    fn a_stream_dropped_in_the_call_that_started_it_is_not_reported() {
        let mut s = Http2Session::new(Role::Server);
        // Entries the caller has not drained yet stay.
        let earlier = Started { stream: 99, offset: 0, first: tm(0) };
        let mut out = Output { started: vec![earlier], done: Vec::new() };
        let bytes = [client_start(), headers(1, false, &get("/a")), frame(ft::PING, 0, 0, &[0; 3])].concat();
        assert!(matches!(s.feed_at(IN, 0, &bytes, 0, &[], tm(1), &mut out), Err(Error::BadFrame(_))));
        assert_eq!(out.started, [earlier]);
        assert_eq!(s.pending_requests(), 0);
        // Started and done in one call: reported, the exchange holds the head.
        let mut s = Http2Session::new(Role::Server);
        let mut out = Output::default();
        let bytes =
            [client_start(), headers(1, false, &get("/b")), frame(ft::RST_STREAM, 0, 1, &[0, 0, 0, 8])].concat();
        assert_eq!(s.feed_at(IN, 0, &bytes, 0, &[], tm(1), &mut out), Ok(()));
        assert_eq!(out.started.len(), 1);
        assert_eq!(s.request(1), None);
        assert_eq!(out.done.first().map(|e| e.request.target.as_str()), Some("/b"));
    }

    #[test]
    fn frame_size_follows_settings() {
        // The server allows 32 KiB frames: the client may send 20000-octet DATA.
        let raise = frame(ft::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x80, 0]);
        let body = data(1, true, &vec![1; 20_000]);
        let evs = [
            Ev::D(OUT, raise),
            Ev::D(IN, [client_start(), headers(1, false, &get("/up")), body.clone()].concat()),
            Ev::D(OUT, headers(1, true, &status(200))),
        ];
        let r = run(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done[0].request.body_len, 20_000);
        // Without that setting it is an error.
        let evs = [Ev::D(OUT, settings()), Ev::D(IN, [client_start(), headers(1, false, &get("/up")), body].concat())];
        assert_eq!(run(Role::Server, &evs).errors.len(), 1);
    }

    #[test]
    fn unknown_frame_types_are_skipped() {
        let evs = [
            Ev::D(IN, [client_start(), frame(0xfa, 0xff, 7, b"whatever"), headers(1, true, &get("/x"))].concat()),
            Ev::D(OUT, [settings(), frame(0x0b, 0, 0, &[]), headers(1, true, &status(200))].concat()),
        ];
        let r = check(Role::Server, &evs);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.done.len(), 1);
    }

    #[test]
    fn midstream_reports_unknown_fields_never_garbage() {
        // Joined mid-stream: the first syscall is the middle of a frame (skipped); then a
        // request whose :path and a header are dynamic entries never seen.
        let req =
            block(&[indexed(3), indexed(6), indexed(63), lit(1, "svc"), indexed(64), lit_add("x-request-id", "r1")]);
        let evs = [
            Ev::D(IN, b"\x01\x02partial-frame".to_vec()),
            Ev::D(IN, [frame(ft::WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]), headers(7, false, &req)].concat()),
            Ev::D(IN, data(7, true, b"abc")),
            // The response's :status is a dynamic entry too (unseen).
            Ev::D(OUT, headers(5, true, &status(200))),
            Ev::D(OUT, headers(7, true, &block(&[indexed(70), lit_new("server", "s")]))),
            // A later request reuses the entry it saw being added: exact.
            Ev::D(IN, headers(9, true, &block(&[indexed(2), lit(4, "/b"), indexed(62)]))),
            Ev::D(OUT, headers(9, true, &status(200))),
        ];
        let r = run_on(Http2Session::new_midstream(Role::Server), &evs, &|_, _| Vec::new());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let got: Vec<_> = r
            .done
            .iter()
            .map(|e| (e.seq, e.request.method.clone(), e.request.target.clone(), e.response.status, h2(e).unknown))
            .collect();
        assert_eq!(
            got,
            [
                (7, "POST".to_owned(), String::new(), 0, Unknown { method: false, path: true, status: true }),
                (9, "GET".to_owned(), "/b".to_owned(), 200, Unknown::default()),
            ]
        );
        assert_eq!(r.done[1].request.header("x-request-id"), Some("r1"));
        assert_eq!(r.done[0].request.header("host"), Some("svc"));
        assert_eq!(r.counted(Counter::H2UnknownField), 3);
        assert_eq!(r.counted(Counter::H2UnknownPath), 1);
        assert_eq!(r.counted(Counter::H2UnknownStatus), 1);
        assert_eq!(r.counted(Counter::H2UnknownMethod), 0);

        // A midstream session that sees the preface starts exact.
        let r = run_on(Http2Session::new_midstream(Role::Server), &basic_events(), &|_, _| Vec::new());
        assert_eq!(r.done.len(), 1);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    #[test]
    fn lost_drops_what_it_may_have_held() {
        let evs = [
            Ev::D(IN, [client_start(), headers(1, true, &get("/1")), headers(3, false, &get("/3"))].concat()),
            Ev::D(OUT, settings()),
            // Lost request bytes: /3 may have lost its body; /1 had ended.
            Ev::Lost(IN),
            Ev::D(OUT, [headers(1, true, &status(200)), headers(3, true, &status(200))].concat()),
            Ev::D(IN, headers(5, true, &get("/5"))),
            Ev::Lost(OUT),
            Ev::D(OUT, headers(5, true, &status(200))),
            Ev::D(IN, headers(7, true, &get("/7"))),
            Ev::D(OUT, headers(7, true, &status(200))),
        ];
        let r = run(Role::Server, &evs);
        assert_eq!(r.dropped, [1, 1]);
        let seqs: Vec<u64> = r.done.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 7]);

        // With a time: streams seen after the loss keep their place.
        let mut s = Http2Session::new(Role::Server);
        let mut out = Output::default();
        let open = [client_start(), headers(1, true, &get("/1"))].concat();
        assert_eq!(s.feed_at(IN, 0, &open, 0, &[], tm(5), &mut out), Ok(()));
        assert_eq!(s.lost(OUT, tm(4).enter_ns), 0);
        assert_eq!(s.lost(OUT, tm(5).enter_ns), 1);
    }

    #[test]
    fn after_upgrade_continues_stream_one() {
        let req = Request { method: "GET".into(), target: "/up".into(), version_minor: 1, ..Request::default() };
        let mut s = Http2Session::after_upgrade(Role::Server, req, tm(0));
        let mut out = Output::default();
        assert_eq!(s.request(1).map(|r| r.target.as_str()), Some("/up"));
        let resp = [settings(), headers(1, false, &status(200)), data(1, true, b"ok")].concat();
        assert_eq!(s.feed_at(OUT, 0, &resp, 0, &[], tm(1), &mut out), Ok(()));
        assert_eq!(s.feed_at(IN, 0, &client_start(), 0, &[], tm(2), &mut out), Ok(()));
        assert!(out.started.is_empty());
        assert_eq!(out.done.len(), 1);
        assert_eq!((out.done[0].seq, out.done[0].response.status, out.done[0].request_first), (1, 200, tm(0)));
    }

    #[test]
    fn guess_accepts_frames() {
        let b = [settings(), frame(ft::WINDOW_UPDATE, 0, 0, &[0, 0, 0xff, 0xff])].concat();
        assert_eq!(guess_frames(&b), Guess::Frames { requests: None });
        let b = [headers(1, true, &get("/")), data(1, true, b"x")].concat();
        assert_eq!(guess_frames(&b), Guess::Frames { requests: Some(true) });
        assert_eq!(guess_frames(&headers(1, true, &get("/"))), Guess::Frames { requests: Some(true) });
        let b = [frame(ft::WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]), headers(1, false, &status(200))].concat();
        assert_eq!(guess_frames(&b), Guess::Frames { requests: Some(false) });
        // A size update before :status.
        let mut blk = vec![0x3f, 0xe1, 0x1f];
        blk.extend(status(404));
        assert_eq!(guess_frames(&headers(1, false, &blk)), Guess::Frames { requests: Some(false) });
        // The last frame runs past the capture: accepted as the second frame...
        let b = [frame(ft::PING, 0, 0, &[0; 8]), data(1, false, &[7; 100])].concat();
        assert_eq!(guess_frames(&b[..40]), Guess::Frames { requests: None });
        // ...not as the first; a frame header cut after a whole frame is accepted.
        assert_eq!(guess_frames(&b[17..60]), Guess::No);
        assert_eq!(guess_frames(&b[..21]), Guess::Frames { requests: None });
        assert_eq!(guess_frames(&[]), Guess::No);
        assert_eq!(guess_frames(&b[..5]), Guess::No);
    }

    #[test]
    fn guess_finds_the_side_of_a_block_that_starts_with_an_unseen_entry() {
        // grpcio after its first call: `:path` and `:authority` are dynamic entries (62,
        // 63) the agent never saw, `:method POST` and `:scheme http` static ones.
        let request = headers(5, false, &[0xbf, 0xbe, 0x83, 0x86]);
        assert_eq!(guess_frames(&request), Guess::Frames { requests: Some(true) });
        let response = headers(5, false, &[0xbe, 0x88]);
        assert_eq!(guess_frames(&response), Guess::Frames { requests: Some(false) });
        // Nothing decodable: the bytes do not say.
        assert_eq!(guess_frames(&headers(5, false, &[0xbf, 0xbe])), Guess::Frames { requests: None });
    }

    #[test]
    fn guess_rejects_other_protocols() {
        let pg_startup = b"\x00\x00\x00\x4e\x00\x03\x00\x00user\x00postgres\x00database\x00db\x00\x00";
        let mysql = b"\x4a\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00abcdefgh\x00\xff\xf7";
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"POST /x HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"\x17\x03\x03\x00\x20abcdefghijabcdefghijabcdefghijab",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"+OK\r\n",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            pg_startup,
            mysql,
            PREFACE,
            // Plausible header, wrong details.
            &frame(ft::SETTINGS, 0, 1, &[])[..],
            &frame(ft::PING, 0, 0, &[0; 7])[..],
            &frame(ft::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0])[..],
            &frame(ft::DATA, 0, 0, b"abc")[..],
            &frame(ft::DATA, 0x40, 1, b"abc")[..],
            &frame(0x0a, 0, 0, b"abc")[..],
            &frame(ft::DATA, flag::PADDED, 1, &[5, 1, 2])[..],
            &[settings(), b"GET / HTTP/1.1\r\n".to_vec()].concat()[..],
        ] {
            assert_eq!(guess_frames(bad), Guess::No, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut reserved = frame(ft::DATA, 0, 1, b"x");
        reserved[5] |= 0x80;
        assert_eq!(guess_frames(&reserved), Guess::No);
    }

    #[test]
    fn preface_detection() {
        assert!(is_preface(PREFACE));
        assert!(is_preface(&client_start()));
        assert!(is_preface(b"PRI * HT"));
        assert!(!is_preface(b""));
        assert!(!is_preface(b"PRI * HTTP/1.1"));
    }

    #[test]
    fn grpc_message_counter() {
        let mut m = Messages::default();
        let b = [grpc_msg(3), grpc_msg(0), grpc_msg(10)].concat();
        for c in b.chunks(2) {
            m.feed(c);
        }
        assert_eq!((m.count, m.bytes, m.lost), (3, 13, false));
        // A gap inside a body is fine; one over a prefix is not.
        let mut m = Messages::default();
        m.feed(&grpc_msg(100)[..20]);
        m.skip(85);
        m.feed(&grpc_msg(1));
        assert_eq!((m.count, m.bytes, m.lost), (2, 101, false));
        m.skip(3);
        assert!(m.lost);
    }

    /// The property the fuzz target checks, on a fixed seed.
    #[test]
    fn random_inputs_never_panic_and_stay_bounded() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let pieces: Vec<Vec<u8>> = vec![
            client_start(),
            settings(),
            headers(1, true, &get("/")),
            headers(3, false, &grpc_request("/a/b")),
            data(3, true, &grpc_msg(30)),
            headers(1, true, &status(200)),
            headers(3, false, &status(200)),
            headers(3, true, &lit_new("grpc-status", "0")),
            frame(ft::RST_STREAM, 0, 3, &[0, 0, 0, 8]),
            frame(ft::GOAWAY, 0, 0, &[0; 8]),
            frame(ft::CONTINUATION, 4, 1, &get("/x")),
            frame(ft::HEADERS, 0, 5, &get("/y")),
            headers(5, true, &block(&[lit_add("a", "b"), indexed(62), indexed(70)])),
        ];
        let mut rng = StdRng::seed_from_u64(0x4832);
        let mut exchanges = 0;
        let mut errors = 0;
        for _ in 0..2000 {
            let role = if rng.random() { Role::Server } else { Role::Client };
            let mut s =
                if rng.random_ratio(1, 3) { Http2Session::new_midstream(role) } else { Http2Session::new(role) };
            let mut out = Output::default();
            let mut pos = [0u64; 2];
            for i in 0..rng.random_range(1..30) {
                let dir = if rng.random() { IN } else { OUT };
                match rng.random_range(0..40) {
                    0 => s.eof(dir, tm(i), &mut out),
                    1 => {
                        let before = s.pending_requests();
                        assert!(s.lost(dir, 0) <= before);
                    }
                    _ => {
                        let mut v = Vec::new();
                        for _ in 0..rng.random_range(1..4) {
                            let p = &pieces[rng.random_range(0..pieces.len())];
                            let a = if rng.random_ratio(1, 4) { rng.random_range(0..p.len()) } else { 0 };
                            v.extend(&p[a..]);
                        }
                        if rng.random_ratio(1, 10) && !v.is_empty() {
                            let k = rng.random_range(0..v.len());
                            v[k] = rng.random();
                        }
                        let (gap, tail) = if rng.random_ratio(1, 6) {
                            (rng.random_range(0..200), v.split_off(v.len() / 2))
                        } else {
                            (0, Vec::new())
                        };
                        let p = &mut pos[dir_index(dir)];
                        if s.feed_at(dir, *p, &v, gap, &tail, tm(i), &mut out).is_err() {
                            errors += 1;
                        }
                        *p += v.len() as u64 + gap + tail.len() as u64;
                    }
                }
                assert!(s.pending_requests() <= MAX_STREAMS);
                for d in &s.dirs {
                    assert!(d.block.as_ref().is_none_or(|b| b.buf.len() <= MAX_HEADER_BLOCK + MAX_BLOCK_OVERHEAD));
                }
            }
            for e in &out.done {
                assert!(e.request.headers.len() <= MAX_STORED_HEADERS);
                assert!(e.response.headers.len() <= MAX_STORED_HEADERS);
                assert!(e.request.header("authorization").is_none());
            }
            exchanges += out.done.len();
        }
        assert!(exchanges > 100, "{exchanges}");
        assert!(errors > 100, "{errors}");
    }
}
