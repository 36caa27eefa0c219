//! TLS as the socket hooks see it: ciphertext. Nothing here decrypts; the plaintext of
//! a TLS session comes from the OpenSSL uprobes and goes to the HTTP parsers. This module
//! only recognises TLS records, so a TLS connection's bytes are counted and never parsed
//! as HTTP, and reads the negotiated version from the ServerHello, which travels in the
//! clear before the keys exist, for the `tls.protocol.version` span attribute.
//!
//! Pure over bytes, incremental, bounded: the [`Scanner`] is fed one direction's
//! transfers as they come (records split across transfers, several per transfer, gaps
//! where the capture kept only a prefix and a tail) and looks at no more than the first
//! [`SCAN_RECORDS`] records of each direction.
use super::Direction;

/// Largest record length allowed on the wire: 2^14 bytes of plaintext plus the 2048 of
/// expansion TLS 1.2 allows a protected record (RFC 5246 section 6.2.3; TLS 1.3 allows
/// less).
pub const MAX_RECORD_LEN: u16 = (1 << 14) + 2048;

/// Records looked at per direction. The ServerHello is in the first record of its
/// direction; the next few tell whether application data flowed.
pub const SCAN_RECORDS: u16 = 32;

/// Bytes of a ServerHello kept to parse it. A real one is about 100 bytes (its
/// extensions are few and short); a longer one is parsed from its first part.
pub const MAX_HELLO_BYTES: usize = 1024;

const CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const SUPPORTED_VERSIONS: u16 = 43;

/// A negotiated protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl Version {
    /// The version as the `tls.protocol.version` attribute spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Tls10 => "1.0",
            Version::Tls11 => "1.1",
            Version::Tls12 => "1.2",
            Version::Tls13 => "1.3",
        }
    }

    /// From its wire value (`0x0303` is TLS 1.2). SSL 3.0 and draft versions are `None`.
    #[must_use]
    pub fn from_wire(v: u16) -> Option<Self> {
        match v {
            0x0301 => Some(Version::Tls10),
            0x0302 => Some(Version::Tls11),
            0x0303 => Some(Version::Tls12),
            0x0304 => Some(Version::Tls13),
            _ => None,
        }
    }
}

/// Whether `bytes` (at least the first 3 bytes of a transfer) start like a TLS record
/// header: content type 20..=23 (change_cipher_spec, alert, handshake,
/// application_data), version 3.0 to 3.4 (a ClientHello record says 3.1 whatever it
/// offers), and, when the 5-byte header is all there, a length TLS allows. HTTP/1 start
/// lines begin with a letter, the HTTP/2 preface with `P`, and an HTTP/2 frame starting
/// `0x14..=0x17 0x03` would be over 1.3 MB long: none of them pass.
#[must_use]
pub fn is_record_start(bytes: &[u8]) -> bool {
    let [kind, major, minor, rest @ ..] = bytes else { return false };
    if !(CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(kind) || *major != 3 || *minor > 4 {
        return false;
    }
    match rest {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]) <= MAX_RECORD_LEN,
        _ => true,
    }
}

/// Where one direction's record stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Collecting a record header (`have` of its 5 bytes so far).
    Header { have: u8 },
    /// Inside a record body of content type `kind`, `left` bytes to go.
    Body { kind: u8, left: u16 },
    /// Done with this direction: record limit reached, or the stream is not (or no
    /// longer in sync with) TLS records. Nothing more is looked at.
    Stopped,
}

/// Where one direction's handshake message stream is (the bodies of its handshake
/// records, concatenated: a message may span records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hs {
    /// Collecting a message header (`have` of its 4 bytes).
    Header { have: u8 },
    /// Inside a message of type `kind`, `left` bytes to go.
    Body { kind: u8, left: u32 },
    /// Handshake bytes are no longer readable (encrypted after a change_cipher_spec,
    /// partly lost) or no longer needed (the ServerHello was read).
    Off,
}

#[derive(Clone, Debug)]
struct DirScan {
    at: At,
    header: [u8; 5],
    hs: Hs,
    hs_header: [u8; 4],
    /// Records whose header was read.
    records: u16,
    /// The ServerHello body collected so far (only while one is being read).
    hello: Vec<u8>,
    /// Its declared length.
    hello_len: u32,
    /// This direction sent a ClientHello (it is the client's).
    client_hello: bool,
    /// application_data records seen (saturating).
    app_records: u8,
    /// Stopped at bytes that are no record header: not TLS, or not at a boundary.
    desync: bool,
}

impl Default for DirScan {
    fn default() -> Self {
        DirScan {
            at: At::Header { have: 0 },
            header: [0; 5],
            hs: Hs::Header { have: 0 },
            hs_header: [0; 4],
            records: 0,
            hello: Vec::new(),
            hello_len: 0,
            client_hello: false,
            app_records: 0,
            desync: false,
        }
    }
}

/// What a ServerHello said, when one was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// No ServerHello read (yet).
    NotSeen,
    /// Read; the version it selected (`None`: one this module does not name, or the
    /// message could not be parsed).
    Seen(Option<Version>),
}

impl DirScan {
    fn stop(&mut self) {
        self.at = At::Stopped;
        self.hs = Hs::Off;
        self.hello = Vec::new();
    }

    /// Captured bytes, in order.
    fn bytes(&mut self, mut b: &[u8], hello: &mut Hello) {
        while !b.is_empty() {
            match self.at {
                At::Stopped => return,
                At::Header { have } => {
                    let have = usize::from(have);
                    let take = (5 - have).min(b.len());
                    self.header[have..have + take].copy_from_slice(&b[..take]);
                    b = &b[take..];
                    if have + take < 5 {
                        self.at = At::Header { have: (have + take) as u8 };
                        return;
                    }
                    self.record_header();
                }
                At::Body { kind, left } => {
                    let take = usize::from(left).min(b.len());
                    if kind == HANDSHAKE {
                        self.handshake(&b[..take], hello);
                    }
                    b = &b[take..];
                    let left = left - take as u16;
                    self.at = if left == 0 { At::Header { have: 0 } } else { At::Body { kind, left } };
                }
            }
        }
    }

    /// A complete record header is in `self.header`.
    fn record_header(&mut self) {
        let h = self.header;
        let len = u16::from_be_bytes([h[3], h[4]]);
        if !is_record_start(&h) {
            self.desync = true;
            self.stop();
            return;
        }
        if self.records >= SCAN_RECORDS {
            self.stop();
            return;
        }
        self.records += 1;
        match h[0] {
            APPLICATION_DATA => self.app_records = self.app_records.saturating_add(1),
            // What follows in this direction is encrypted, handshake records included.
            CHANGE_CIPHER_SPEC => self.set_hs_off(),
            _ => {}
        }
        self.at = if len == 0 { At::Header { have: 0 } } else { At::Body { kind: h[0], left: len } };
    }

    fn set_hs_off(&mut self) {
        self.hs = Hs::Off;
        self.hello = Vec::new();
    }

    /// `gap` bytes that moved but were not captured.
    fn skip(&mut self, gap: u64) {
        if gap == 0 {
            return;
        }
        match self.at {
            At::Stopped => {}
            At::Body { kind, left } if gap <= u64::from(left) => {
                if kind == HANDSHAKE {
                    // Part of a handshake message is missing: stop reading them.
                    self.set_hs_off();
                }
                let left = left - gap as u16;
                self.at = if left == 0 { At::Header { have: 0 } } else { At::Body { kind, left } };
            }
            // A record header is among the missing bytes: record boundaries are lost.
            _ => self.stop(),
        }
    }

    /// Bytes of handshake records.
    fn handshake(&mut self, mut b: &[u8], hello: &mut Hello) {
        while !b.is_empty() {
            match self.hs {
                Hs::Off => return,
                Hs::Header { have } => {
                    let have = usize::from(have);
                    let take = (4 - have).min(b.len());
                    self.hs_header[have..have + take].copy_from_slice(&b[..take]);
                    b = &b[take..];
                    if have + take < 4 {
                        self.hs = Hs::Header { have: (have + take) as u8 };
                        return;
                    }
                    let [kind, l0, l1, l2] = self.hs_header;
                    let len = u32::from_be_bytes([0, l0, l1, l2]);
                    match kind {
                        CLIENT_HELLO => self.client_hello = true,
                        SERVER_HELLO => {
                            self.hello_len = len;
                            self.hello = Vec::with_capacity((len as usize).min(MAX_HELLO_BYTES));
                        }
                        _ => {}
                    }
                    self.hs = Hs::Body { kind, left: len };
                    if len == 0 {
                        self.message_done(kind, hello);
                    }
                }
                Hs::Body { kind, left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(b.len());
                    if kind == SERVER_HELLO {
                        let room = MAX_HELLO_BYTES - self.hello.len();
                        self.hello.extend_from_slice(&b[..take.min(room)]);
                    }
                    b = &b[take..];
                    let left = left - take as u32;
                    self.hs = Hs::Body { kind, left };
                    if left == 0 {
                        self.message_done(kind, hello);
                    }
                }
            }
        }
    }

    fn message_done(&mut self, kind: u8, hello: &mut Hello) {
        self.hs = Hs::Header { have: 0 };
        if kind == SERVER_HELLO {
            let complete = self.hello_len as usize <= MAX_HELLO_BYTES;
            *hello = Hello::Seen(server_hello_version(&self.hello, complete));
            // Nothing after the ServerHello is needed.
            self.set_hs_off();
        }
    }
}

/// Finds the negotiated version in one connection's TLS records, and notices whether
/// application data flowed. Feed it each direction's transfers in order ([`feed`]),
/// and say when records of a direction were lost ([`lost`]). Garbage makes it stop
/// looking at that direction; it never fails otherwise.
///
/// [`feed`]: Scanner::feed
/// [`lost`]: Scanner::lost
#[derive(Clone, Debug, Default)]
pub struct Scanner {
    dirs: [DirScan; 2],
    hello: Option<Hello>,
}

fn index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl Scanner {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// One transfer of `dir`: `prefix` captured, then `gap` bytes not captured, then
    /// `tail` captured.
    pub fn feed(&mut self, dir: Direction, prefix: &[u8], gap: u64, tail: &[u8]) {
        let mut hello = self.hello.unwrap_or(Hello::NotSeen);
        let d = &mut self.dirs[index(dir)];
        d.bytes(prefix, &mut hello);
        d.skip(gap);
        d.bytes(tail, &mut hello);
        if hello != Hello::NotSeen {
            self.hello = Some(hello);
            // Only one ServerHello is read (a HelloRetryRequest names the version too).
            for d in &mut self.dirs {
                d.set_hs_off();
            }
        }
    }

    /// Bytes of `dir` were lost (how many is unknown): record boundaries are gone.
    pub fn lost(&mut self, dir: Direction) {
        self.dirs[index(dir)].stop();
    }

    /// The negotiated version, once a ServerHello named one.
    #[must_use]
    pub fn version(&self) -> Option<Version> {
        match self.hello {
            Some(Hello::Seen(v)) => v,
            _ => None,
        }
    }

    /// Whether a ServerHello was read (its version may still be unknown).
    #[must_use]
    pub fn hello(&self) -> Hello {
        self.hello.unwrap_or(Hello::NotSeen)
    }

    /// Whether the connection carried application data: requests or responses, not
    /// only a handshake. The client's direction (the one that sent the ClientHello)
    /// decides when it is known: one application_data record, or two under TLS 1.3,
    /// whose client Finished is one already. Otherwise (a connection joined mid-stream)
    /// any application_data record counts.
    #[must_use]
    pub fn app_data(&self) -> bool {
        match self.dirs.iter().find(|d| d.client_hello) {
            Some(client) => {
                let needed = if self.version() == Some(Version::Tls13) { 2 } else { 1 };
                client.app_records >= needed
            }
            None => self.dirs.iter().any(|d| d.app_records > 0),
        }
    }

    /// Whether a direction met bytes that are not a record header where one was due:
    /// the stream is not TLS after all (a connection joined mid-stream whose first
    /// bytes only looked like a record), or it was not read from a record boundary.
    #[must_use]
    pub fn desynced(&self) -> bool {
        self.dirs.iter().any(|d| d.desync)
    }

    /// Whether both directions stopped looking (further bytes change nothing).
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.dirs.iter().all(|d| d.at == At::Stopped)
    }

    /// Bytes held (the ServerHello being collected), for bounds checks.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.dirs.iter().map(|d| d.hello.len()).sum()
    }
}

/// A bounds-checked reader over a message body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// The version a ServerHello body selects: its `supported_versions` extension (TLS
/// 1.3 puts the real version there and 1.2 in `legacy_version`), else its
/// `legacy_version`. `complete`: `body` is the whole message (else its first part: the
/// extension may be in the part not kept, so without it nothing is concluded).
fn server_hello_version(body: &[u8], complete: bool) -> Option<Version> {
    let mut r = Reader(body);
    let legacy = r.u16()?;
    r.take(32)?; // random
    let session_id = r.u8()?;
    r.take(usize::from(session_id))?;
    r.take(3)?; // cipher suite, compression method
    let legacy_version = || if complete { Version::from_wire(legacy) } else { None };
    if r.0.is_empty() {
        // No extensions at all (TLS 1.2 and older may send none).
        return legacy_version();
    }
    let len = usize::from(r.u16()?);
    let mut ext = Reader(r.0.get(..len).unwrap_or(r.0));
    while let (Some(kind), Some(len)) = (ext.u16(), ext.u16()) {
        let data = ext.take(usize::from(len))?;
        if kind == SUPPORTED_VERSIONS {
            return match data {
                [hi, lo] => Version::from_wire(u16::from_be_bytes([*hi, *lo])),
                _ => None,
            };
        }
    }
    legacy_version()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ServerHello record with the given legacy version and extensions.
    fn server_hello(legacy: u16, extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend([0xab; 32]);
        body.push(32);
        body.extend([0xcd; 32]);
        body.extend([0x13, 0x01, 0x00]);
        if !extensions.is_empty() {
            let mut ext = Vec::new();
            for (kind, data) in extensions {
                ext.extend(kind.to_be_bytes());
                ext.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
                ext.extend(*data);
            }
            body.extend(u16::try_from(ext.len()).unwrap().to_be_bytes());
            body.extend(ext);
        }
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut msg = vec![SERVER_HELLO, len[1], len[2], len[3]];
        msg.extend(body);
        record(HANDSHAKE, &msg)
    }

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        r.extend(body);
        r
    }

    #[test]
    fn record_starts() {
        assert!(is_record_start(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"));
        assert!(is_record_start(b"\x17\x03\x03\x00\x20"));
        assert!(is_record_start(b"\x15\x03\x03"));
        // Too long for TLS, unknown content types, SSL 2, too short to tell.
        assert!(!is_record_start(b"\x17\x03\x03\x48\x01"));
        assert!(!is_record_start(b"\x18\x03\x03\x00\x20"));
        assert!(!is_record_start(b"\x80\x2e\x01\x00\x02"));
        assert!(!is_record_start(b"\x16\x03"));
        assert!(!is_record_start(b""));
    }

    #[test]
    fn http_is_never_a_record_start() {
        let mut inputs: Vec<Vec<u8>> = [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 500 Internal Server Error\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ]
        .iter()
        .map(|b| b.to_vec())
        .collect();
        // HTTP/2 frames of every type with lengths up to the default maximum frame size
        // (2^14), on streams 0 and 1.
        for kind in 0..=9u8 {
            for len in [0u32, 4, 8, 0x1403, 0x4000] {
                let l = len.to_be_bytes();
                inputs.push(vec![l[1], l[2], l[3], kind, 0x4, 0, 0, 0, 1]);
                inputs.push(vec![l[1], l[2], l[3], kind, 0x0, 0, 0, 0, 0]);
            }
        }
        for input in &inputs {
            assert!(!is_record_start(input), "{input:?}");
            assert!(!is_record_start(&input[..3]), "{input:?}");
        }
    }

    #[test]
    fn versions_from_server_hellos() {
        let v13 = server_hello(0x0303, &[(51, &[0; 36]), (43, &[3, 4])]);
        let v12 = server_hello(0x0303, &[(0xff01, &[0]), (11, &[1, 0])]);
        let v10 = server_hello(0x0301, &[]);
        for (bytes, want) in [(v13, Version::Tls13), (v12, Version::Tls12), (v10, Version::Tls10)] {
            let mut s = Scanner::new();
            s.feed(Direction::Ingress, &bytes, 0, &[]);
            assert_eq!(s.version(), Some(want));
            // Byte by byte, as split as it can be.
            let mut s = Scanner::new();
            for b in &bytes {
                s.feed(Direction::Ingress, std::slice::from_ref(b), 0, &[]);
            }
            assert_eq!(s.version(), Some(want));
        }
    }

    #[test]
    fn a_server_hello_split_across_records_and_after_other_records() {
        let hello = server_hello(0x0303, &[(43, &[3, 4])]);
        // The handshake message alone, cut in two records, after an alert record.
        let msg = &hello[5..];
        let mut stream = record(21, &[1, 0]);
        stream.extend(record(HANDSHAKE, &msg[..10]));
        stream.extend(record(HANDSHAKE, &msg[10..]));
        stream.extend(record(APPLICATION_DATA, &[0; 40]));
        let mut s = Scanner::new();
        s.feed(Direction::Egress, &stream[..7], 0, &[]);
        s.feed(Direction::Egress, &stream[7..], 0, &[]);
        assert_eq!(s.version(), Some(Version::Tls13));
        assert!(s.app_data());
    }

    #[test]
    fn gaps_inside_a_body_keep_records_in_sync_and_lost_bytes_stop() {
        let mut stream = record(APPLICATION_DATA, &[7; 3000]);
        stream.extend(record(APPLICATION_DATA, &[7; 10]));
        let mut s = Scanner::new();
        // Prefix, a gap within the first body, and a tail that ends it and holds the
        // next record.
        s.feed(Direction::Egress, &stream[..100], 3005 - 100 - 20, &stream[3005 - 20..]);
        assert_eq!(s.dirs[1].records, 2);
        assert_eq!(s.dirs[1].at, At::Header { have: 0 });
        // A gap over a record boundary: out of sync, stop.
        s.feed(Direction::Egress, &[], 10_000, &[]);
        assert_eq!(s.dirs[1].at, At::Stopped);
        s.lost(Direction::Ingress);
        assert!(s.stopped());
        assert_eq!(s.version(), None);
    }

    #[test]
    fn a_missing_part_of_the_server_hello_gives_no_version() {
        let hello = server_hello(0x0303, &[(43, &[3, 4])]);
        let mut s = Scanner::new();
        s.feed(Direction::Ingress, &hello[..20], 30, &hello[50..]);
        assert_eq!(s.version(), None);
        assert_eq!(s.hello(), Hello::NotSeen);
    }

    #[test]
    fn garbage_stops_the_direction_and_is_bounded() {
        let mut s = Scanner::new();
        assert!(!s.desynced());
        s.feed(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 0, &[]);
        assert_eq!(s.dirs[0].at, At::Stopped);
        assert!(s.desynced());
        // A huge claimed ServerHello: only MAX_HELLO_BYTES kept, nothing concluded.
        let mut stream = vec![HANDSHAKE, 3, 3, 0x40, 0x00, SERVER_HELLO, 0x00, 0xff, 0xff];
        stream.extend([3, 3]);
        stream.extend(vec![0; 0x4000 - 6]);
        let mut s = Scanner::new();
        s.feed(Direction::Egress, &stream, 0, &[]);
        assert!(s.buffered_bytes() <= MAX_HELLO_BYTES);
        // Many empty records: the scan ends after SCAN_RECORDS.
        let mut s = Scanner::new();
        let many: Vec<u8> = (0..100).flat_map(|_| record(APPLICATION_DATA, &[])).collect();
        s.feed(Direction::Egress, &many, 0, &[]);
        assert_eq!(s.dirs[1].records, SCAN_RECORDS);
        assert_eq!(s.dirs[1].at, At::Stopped);
        assert!(!s.desynced(), "the record limit is no desync");
    }

    #[test]
    fn application_data_counts_from_the_client_side() {
        let client_hello = {
            let mut m = vec![CLIENT_HELLO, 0, 0, 2, 3, 3];
            m = record(HANDSHAKE, &m);
            m[2] = 1;
            m
        };
        let finished = record(APPLICATION_DATA, &[0; 50]);
        let mut s = Scanner::new();
        s.feed(Direction::Egress, &client_hello, 0, &[]);
        s.feed(Direction::Ingress, &server_hello(0x0303, &[(43, &[3, 4])]), 0, &[]);
        // The server's encrypted handshake and the client's Finished: no request yet.
        s.feed(Direction::Ingress, &finished, 0, &[]);
        s.feed(Direction::Egress, &finished, 0, &[]);
        assert!(!s.app_data());
        s.feed(Direction::Egress, &finished, 0, &[]);
        assert!(s.app_data());
    }
}
