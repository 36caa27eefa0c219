//! HPACK (RFC 7541) header-block decoding that tolerates joining a connection late.
//!
//! One [`Decoder`] per connection and direction. From a connection's start its dynamic
//! table is exact. A decoder that joined mid-stream, or whose direction lost bytes, does
//! not know the entries inserted before: it keeps the entries it saw inserted since
//! (the newest ones, so their indices are exact) and reports a field that refers to an
//! older entry as unknown (`None`), never as a wrong value.
//!
//! # Why values stay exact without knowing the real table
//!
//! The peer's dynamic table always holds the newest entries of its insertion history,
//! newest first. So does ours, counted from the moment we joined. Whatever each side
//! evicted, one list is therefore a prefix of the other, and an index that falls inside
//! ours names the same entry on both sides. That holds even when we do not know the
//! peer's table size exactly: evicting too early only turns more references into
//! `None`, evicting too late keeps entries the peer never references again.
//!
//! # Table size while unsynced
//!
//! The maximum size may have been changed by an update we never saw. Until one arrives,
//! an unsynced decoder evicts by the last size it knew (4096, the protocol's default, for
//! [`Decoder::new_unsynced`]). Once it has seen a size update the maximum is exact again,
//! and the decoder can prove from sizes alone that no unseen entry is left: every entry
//! costs at least 32 octets, so when the known entries leave less than 32 octets free,
//! or when it had to evict one of its own entries, the older unseen ones are gone too.
//! It then becomes synced again ([`Decoder::is_synced`]). With an exact maximum it also
//! rejects an index that could not exist even with unseen entries, as
//! [`Error::BadIndex`].
//!
//! An entry inserted under a name the decoder does not know has an unknown size; it is
//! counted with a zero-length name, a lower bound, so evictions come late (harmless, as
//! above) and the proofs that use sizes stay sound.

use std::borrow::Cow;
use std::collections::VecDeque;

/// Largest dynamic-table size a size update may set (bounds memory per decoder).
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Most fields decoded from one header block; further ones are an error.
pub const MAX_FIELDS: usize = 256;
/// Longest name or value kept (longer ones are cut; the table accounting stays exact).
pub const MAX_STRING: usize = 8 * 1024;
/// Dynamic-table size a connection starts with (RFC 7540 §6.5.2 default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Largest integer accepted in a representation; larger ones are [`Error::IntegerOverflow`].
const MAX_INTEGER: u64 = u32::MAX as u64;
/// Continuation octets after the prefix that can carry [`MAX_INTEGER`].
const MAX_CONTINUATION: usize = 5;
/// Octets every dynamic-table entry costs on top of its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// One decoded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Name as sent (HTTP/2 names are lower case); `None` when it refers to a
    /// dynamic-table entry this decoder never saw.
    pub name: Option<String>,
    /// Value as lossy UTF-8; `None` when unknown (same reason).
    pub value: Option<String>,
}

/// Why a header block could not be decoded. After an error the decoder's table may be
/// out of step: the caller resets it ([`Decoder::reset_unsynced`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The block ends inside a representation.
    Truncated,
    /// An integer longer than the decoder accepts.
    IntegerOverflow,
    /// A Huffman string that is not valid (EOS inside, bad padding).
    Huffman,
    /// Index 0, or past the end of a table this decoder knows to be exact.
    BadIndex(u64),
    /// A dynamic table size update above [`MAX_TABLE_SIZE`], or after the first field.
    BadSizeUpdate(u64),
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Truncated => write!(f, "HPACK block truncated"),
            Error::IntegerOverflow => write!(f, "HPACK integer too large"),
            Error::Huffman => write!(f, "invalid Huffman string"),
            Error::BadIndex(i) => write!(f, "HPACK index {i} out of range"),
            Error::BadSizeUpdate(n) => write!(f, "bad HPACK table size update to {n}"),
            Error::TooManyFields => write!(f, "more than {MAX_FIELDS} header fields"),
        }
    }
}

impl std::error::Error for Error {}

/// A dynamic-table entry as this decoder knows it.
#[derive(Clone, Debug)]
struct Entry {
    /// `None` when it was inserted under the name of an entry this decoder never saw.
    name: Option<Cow<'static, str>>,
    /// Octets of the name as sent (before cutting and UTF-8 repair); 0 when unknown.
    name_len: usize,
    value: String,
    /// Name length + value length + 32, with the real (uncut) lengths; a lower bound
    /// when the name is unknown (its length counts as 0).
    size: usize,
}

/// HPACK decoder for one direction of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Known entries, newest first: index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// Maximum table size: exact when `max_exact`, else the last one known.
    max_size: usize,
    /// Whether `max_size` is the peer's (a size update was seen since bytes were lost).
    max_exact: bool,
    /// No entry older than ours can exist in the peer's table.
    synced: bool,
    /// Huffman-decoded name and value of the literal being read, reused.
    scratch: [Vec<u8>; 2],
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder from the connection's start: empty table, exact, size 4096.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_size(DEFAULT_TABLE_SIZE)
    }

    /// A decoder from the connection's start whose table size was set out of band (by
    /// SETTINGS_HEADER_TABLE_SIZE), capped at [`MAX_TABLE_SIZE`].
    #[must_use]
    pub fn with_max_size(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: max_size.min(MAX_TABLE_SIZE),
            max_exact: true,
            synced: true,
            scratch: [Vec::new(), Vec::new()],
        }
    }

    /// A decoder for a connection joined mid-stream: older entries may exist, unknown.
    #[must_use]
    pub fn new_unsynced() -> Self {
        let mut decoder = Self::new();
        decoder.reset_unsynced();
        decoder
    }

    /// Bytes of this direction were lost: every entry it holds may be stale. Forgets
    /// them and continues as [`Decoder::new_unsynced`].
    pub fn reset_unsynced(&mut self) {
        self.entries.clear();
        self.size = 0;
        // The lost bytes may have held a size update: keep the size only as a guess.
        self.max_exact = false;
        self.synced = false;
    }

    /// Whether the table is known to be exact (no unseen entries can exist).
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION fragments joined),
    /// appending its fields to `out` in order, and updating the dynamic table. On error
    /// nothing is appended (the table may have changed: see [`Error`]).
    pub fn decode(&mut self, block: &[u8], out: &mut Vec<Field>) -> Result<(), Error> {
        let start = out.len();
        let result = self.decode_with(block, |name, value| {
            out.push(Field { name: name.map(str::to_owned), value: value.map(str::to_owned) });
        });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// As [`decode`](Self::decode), handing each field to `field` as `(name, value)`
    /// (`None`: unknown, as in [`Field`]) borrowed from the block, the tables or a buffer
    /// the decoder reuses: a field costs no allocation unless the block inserts it into
    /// the dynamic table. On error `field` has seen the fields before it: the caller
    /// discards them.
    pub fn decode_with(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(Option<&str>, Option<&str>),
    ) -> Result<(), Error> {
        let mut input = Reader { buf: block, pos: 0 };
        let mut fields = 0usize;
        while let Some(first) = input.peek() {
            if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field.
                let size = input.integer(5)?;
                if fields > 0 {
                    return Err(Error::BadSizeUpdate(size));
                }
                let Some(size) = usize::try_from(size).ok().filter(|&s| s <= MAX_TABLE_SIZE) else {
                    return Err(Error::BadSizeUpdate(size));
                };
                self.set_max_size(size);
                continue;
            }
            if fields == MAX_FIELDS {
                return Err(Error::TooManyFields);
            }
            fields += 1;
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = input.integer(7)?;
                match self.lookup(index)? {
                    Slot::Static(name, value) => field(Some(name), Some(value)),
                    Slot::Dynamic(entry) => field(entry.name.as_deref(), Some(&entry.value)),
                    Slot::Unknown => field(None, None),
                }
                continue;
            }
            // A literal (§6.2): with incremental indexing (6-bit name index), else
            // without indexing or never indexed (4-bit).
            let indexing = first & 0x40 != 0;
            let name = self.literal_name(&mut input, if indexing { 6 } else { 4 })?;
            let value = input.string(&mut self.scratch[1])?;
            let name_len = match name {
                Name::Literal(lit) => lit.len,
                Name::Static(n) => n.len(),
                Name::Dynamic(i) => self.entries.get(i).map_or(0, |e| e.name_len),
                Name::Unknown => 0,
            };
            let name_text: Option<Cow<'_, str>> = match name {
                Name::Literal(lit) => Some(lit.text(block, &self.scratch[0])),
                Name::Static(n) => Some(Cow::Borrowed(n)),
                Name::Dynamic(i) => self.entries.get(i).and_then(|e| e.name.as_deref()).map(Cow::Borrowed),
                Name::Unknown => None,
            };
            let value_text = value.text(block, &self.scratch[1]);
            field(name_text.as_deref(), Some(&value_text));
            if indexing {
                let entry = Entry {
                    name: name_text.map(|n| match (name, n) {
                        (Name::Static(n), _) => Cow::Borrowed(n),
                        (_, n) => Cow::Owned(n.into_owned()),
                    }),
                    name_len,
                    value: value_text.into_owned(),
                    size: name_len + value.len + ENTRY_OVERHEAD,
                };
                self.insert(entry);
            }
        }
        Ok(())
    }

    /// Entries currently known in the dynamic table.
    #[must_use]
    pub fn known_entries(&self) -> usize {
        self.entries.len()
    }

    /// Current maximum table size (a guess while unsynced and no size update was seen).
    #[must_use]
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The name of a literal: a string when the index is 0, else the name at that index.
    fn literal_name(&mut self, input: &mut Reader<'_>, prefix: u32) -> Result<Name, Error> {
        let index = input.integer(prefix)?;
        if index == 0 {
            return input.string(&mut self.scratch[0]).map(Name::Literal);
        }
        Ok(match self.lookup(index)? {
            Slot::Static(name, _) => Name::Static(name),
            // `lookup` found it at this position.
            Slot::Dynamic(_) => Name::Dynamic(usize::try_from(index).map_or(0, |i| i - STATIC_TABLE.len() - 1)),
            Slot::Unknown => Name::Unknown,
        })
    }

    fn lookup(&self, index: u64) -> Result<Slot<'_>, Error> {
        let Some(position) = usize::try_from(index).ok().filter(|&i| i > 0) else {
            return Err(Error::BadIndex(index));
        };
        if let Some(&(name, value)) = STATIC_TABLE.get(position - 1) {
            return Ok(Slot::Static(name, value));
        }
        let position = position - STATIC_TABLE.len() - 1;
        if let Some(entry) = self.entries.get(position) {
            return Ok(Slot::Dynamic(entry));
        }
        if self.synced {
            return Err(Error::BadIndex(index));
        }
        if self.max_exact {
            // Unseen entries take at least 32 octets each of what the known ones leave.
            let unseen_max = self.max_size.saturating_sub(self.size) / ENTRY_OVERHEAD;
            if position - self.entries.len() >= unseen_max {
                return Err(Error::BadIndex(index));
            }
        }
        Ok(Slot::Unknown)
    }

    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max_size {
            // §4.4: an entry larger than the table empties it and is not added. Its size
            // is at least what we counted, so with an exact maximum the peer emptied too.
            self.entries.clear();
            self.size = 0;
            if self.max_exact {
                self.synced = true;
            }
            return;
        }
        self.size += entry.size;
        self.entries.push_front(entry);
        self.evict();
    }

    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.max_exact = true;
        self.evict();
    }

    /// Evicts the oldest known entries until they fit (§4.3), then checks whether the
    /// sizes prove that no unseen entry is left.
    fn evict(&mut self) {
        while self.size > self.max_size {
            let Some(oldest) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size -= oldest.size;
            // The peer evicts oldest first: unseen entries, older than ours, went before.
            if self.max_exact {
                self.synced = true;
            }
        }
        if self.max_exact && self.size + ENTRY_OVERHEAD > self.max_size {
            self.synced = true;
        }
    }
}

/// What an index refers to.
enum Slot<'a> {
    Static(&'static str, &'static str),
    Dynamic(&'a Entry),
    /// A dynamic entry inserted before this decoder joined.
    Unknown,
}

/// A literal's name: where it is.
#[derive(Clone, Copy)]
enum Name {
    Literal(Literal),
    Static(&'static str),
    /// Position in the decoder's dynamic table.
    Dynamic(usize),
    Unknown,
}

/// A decoded string literal: where its kept octets are (cut at [`MAX_STRING`]) and the
/// real decoded length in octets, which is what the table accounting uses.
#[derive(Clone, Copy)]
struct Literal {
    /// Octets `start..end` of the block (raw), or of the reader's scratch (Huffman).
    start: usize,
    end: usize,
    huffman: bool,
    len: usize,
}

impl Literal {
    /// The kept octets as lossy UTF-8: borrowed unless they are not valid UTF-8.
    fn text<'a>(&self, block: &'a [u8], scratch: &'a [u8]) -> Cow<'a, str> {
        let from = if self.huffman { scratch } else { block };
        String::from_utf8_lossy(from.get(self.start..self.end).unwrap_or_default())
    }
}

/// Reads representations from one header block.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let byte = self.peek().ok_or(Error::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(len).ok_or(Error::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    /// An integer with an N-bit prefix (§5.1), the prefix in the current octet.
    fn integer(&mut self, prefix: u32) -> Result<u64, Error> {
        let mask = (1u8 << prefix) - 1;
        let mut value = u64::from(self.byte()? & mask);
        if value < u64::from(mask) {
            return Ok(value);
        }
        for shift in (0..MAX_CONTINUATION).map(|i| 7 * i) {
            let byte = self.byte()?;
            value += u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return if value > MAX_INTEGER { Err(Error::IntegerOverflow) } else { Ok(value) };
            }
        }
        Err(Error::IntegerOverflow)
    }

    /// A string literal (§5.2), raw or Huffman-coded (decoded into `scratch`). The length
    /// is checked against the block before anything is decoded.
    fn string(&mut self, scratch: &mut Vec<u8>) -> Result<Literal, Error> {
        let huffman = self.peek().ok_or(Error::Truncated)? & 0x80 != 0;
        let len = usize::try_from(self.integer(7)?).map_err(|_| Error::Truncated)?;
        let start = self.pos;
        let bytes = self.take(len)?;
        if huffman {
            let len = huffman_decode_into(bytes, scratch)?;
            return Ok(Literal { start: 0, end: scratch.len(), huffman: true, len });
        }
        Ok(Literal { start, end: start + len.min(MAX_STRING), huffman: false, len })
    }
}

/// Decodes a Huffman-coded string (§5.2, code of Appendix B).
///
/// The code is canonical: codes of one length are consecutive and ordered by symbol,
/// and each length's first code follows the previous length's last. So the decoder
/// needs only how many codes each length has and the symbols in code order. It reads
/// one bit at a time, keeping the code read so far and the first code of its length.
///
/// The octets kept (at most [`MAX_STRING`]) replace `kept`'s content; returns the real
/// decoded length.
fn huffman_decode_into(src: &[u8], kept: &mut Vec<u8>) -> Result<usize, Error> {
    kept.clear();
    // The shortest code is 5 bits: at most 8 symbols per 5 octets.
    kept.reserve((src.len() / 5 * 8 + 8).min(MAX_STRING));
    let mut len = 0usize;
    let mut code = 0u32;
    let mut first = 0u32;
    let mut index = 0usize;
    let mut bits = 0usize;
    let mut all_ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = u32::from(byte >> shift) & 1;
            code = (code << 1) | bit;
            bits += 1;
            all_ones &= bit == 1;
            let count = *HUFFMAN.count.get(bits).ok_or(Error::Huffman)?;
            if code >= first && code - first < u32::from(count) {
                let offset = usize::try_from(code - first).map_err(|_| Error::Huffman)?;
                let symbol = *HUFFMAN.symbols.get(index + offset).ok_or(Error::Huffman)?;
                // EOS (256) must not appear in a string; every other symbol is an octet.
                let octet = u8::try_from(symbol).map_err(|_| Error::Huffman)?;
                if kept.len() < MAX_STRING {
                    kept.push(octet);
                }
                len += 1;
                (code, first, index, bits, all_ones) = (0, 0, 0, 0, true);
            } else {
                index += usize::from(count);
                first = (first + u32::from(count)) << 1;
            }
        }
    }
    // Padding: the most significant bits of EOS (all ones), shorter than a byte.
    if bits > 7 || !all_ones {
        return Err(Error::Huffman);
    }
    Ok(len)
}

/// Longest Huffman code, in bits (EOS and a few rare octets).
const HUFFMAN_MAX_LEN: usize = 30;

/// Code length of each symbol of the HPACK Huffman code (RFC 7541 Appendix B), octets
/// 0..=255 then EOS. With the canonical ordering these lengths determine every code.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '..'/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'..'?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'..'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'..'_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'..'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'..DEL
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// The canonical code in decoding form.
struct Canonical {
    /// Number of codes of each length (index = length in bits).
    count: [u16; HUFFMAN_MAX_LEN + 1],
    /// Symbols ordered by code: by length, then by symbol.
    symbols: [u16; 257],
}

static HUFFMAN: Canonical = Canonical::build(&HUFFMAN_LENGTHS);

impl Canonical {
    const fn build(lengths: &[u8; 257]) -> Self {
        let mut count = [0u16; HUFFMAN_MAX_LEN + 1];
        let mut symbol = 0;
        while symbol < lengths.len() {
            count[lengths[symbol] as usize] += 1;
            symbol += 1;
        }
        // Where each length's symbols start in `symbols`.
        let mut next = [0u16; HUFFMAN_MAX_LEN + 2];
        let mut len = 1;
        while len <= HUFFMAN_MAX_LEN {
            next[len + 1] = next[len] + count[len];
            len += 1;
        }
        let mut symbols = [0u16; 257];
        let mut symbol = 0;
        while symbol < lengths.len() {
            let len = lengths[symbol] as usize;
            symbols[next[len] as usize] = symbol as u16;
            next[len] += 1;
            symbol += 1;
        }
        Self { count, symbols }
    }
}

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A Huffman string decoded: (kept text, real length).
    struct Decoded {
        text: String,
        len: usize,
    }

    fn huffman_decode(src: &[u8]) -> Result<Decoded, Error> {
        let mut kept = vec![b'x'; 3];
        let len = huffman_decode_into(src, &mut kept)?;
        Ok(Decoded { text: String::from_utf8_lossy(&kept).into_owned(), len })
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
    }

    fn field(name: &str, value: &str) -> Field {
        Field { name: Some(name.to_owned()), value: Some(value.to_owned()) }
    }

    const UNKNOWN: Field = Field { name: None, value: None };

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<Field>, Error> {
        let mut out = Vec::new();
        decoder.decode(block, &mut out).map(|()| out)
    }

    /// The known dynamic table, newest first, and its size; checks the size adds up.
    fn table(decoder: &Decoder) -> (Vec<(Option<&str>, &str)>, usize) {
        let entries: Vec<_> = decoder.entries.iter().map(|e| (e.name.as_deref(), e.value.as_str())).collect();
        assert_eq!(decoder.size, decoder.entries.iter().map(|e| e.size).sum::<usize>());
        assert!(decoder.size <= decoder.max_size);
        (entries, decoder.size)
    }

    /// An HPACK integer with `flags` in the bits above an N-bit prefix (§5.1).
    fn int(flags: u8, prefix: u32, mut value: u64) -> Vec<u8> {
        let mask = (1u64 << prefix) - 1;
        if value < mask {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | mask as u8];
        value -= mask;
        while value >= 0x80 {
            out.push(0x80 | (value & 0x7f) as u8);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    /// A literal with incremental indexing and a new, raw name and value.
    fn insert_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40];
        out.extend(int(0, 7, name.len() as u64));
        out.extend_from_slice(name);
        out.extend(int(0, 7, value.len() as u64));
        out.extend_from_slice(value);
        out
    }

    /// Codes rebuilt from the lengths by the canonical rule, for the test encoder.
    fn huffman_codes() -> Vec<(u32, u8)> {
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (HUFFMAN_LENGTHS[s], s));
        let mut codes = vec![(0u32, 0u8); 257];
        let (mut code, mut prev_len) = (0u32, HUFFMAN_LENGTHS[order[0]]);
        for (i, &symbol) in order.iter().enumerate() {
            let len = HUFFMAN_LENGTHS[symbol];
            if i > 0 {
                code = (code + 1) << (len - prev_len);
            }
            codes[symbol] = (code, len);
            prev_len = len;
        }
        codes
    }

    fn huffman_encode(codes: &[(u32, u8)], text: &[u8]) -> Vec<u8> {
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &octet in text {
            let (code, len) = codes[usize::from(octet)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            // Pad with the high bits of EOS (ones).
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn huffman_table_is_the_rfc_code() {
        // A complete prefix code: the Kraft sum is exactly 1.
        let kraft: u64 = HUFFMAN_LENGTHS.iter().map(|&l| 1u64 << (HUFFMAN_MAX_LEN - usize::from(l))).sum();
        assert_eq!(kraft, 1 << HUFFMAN_MAX_LEN);
        let codes = huffman_codes();
        // Codes as listed in RFC 7541 Appendix B.
        for (symbol, code, len) in [
            (0usize, 0x1ff8u32, 13u8),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'\n' as usize, 0x3fff_fffc, 30),
            (255, 0x3ff_ffee, 26),
            (256, 0x3fff_ffff, 30),
        ] {
            assert_eq!(codes[symbol], (code, len), "symbol {symbol}");
        }
    }

    #[test]
    fn huffman_round_trips_every_octet() {
        let codes = huffman_codes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7541);
        let all: Vec<u8> = (0..=255).collect();
        for round in 0..300 {
            let text: Vec<u8> = if round == 0 {
                all.clone()
            } else {
                (0..rng.random_range(0..40)).map(|_| rng.random::<u8>()).collect()
            };
            let decoded = huffman_decode(&huffman_encode(&codes, &text)).unwrap();
            assert_eq!(decoded.len, text.len());
            assert_eq!(decoded.text, String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn c2_single_representations() {
        // C.2.1: literal with indexing.
        let mut d = Decoder::new();
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        assert_eq!(decode(&mut d, &block), Ok(vec![field("custom-key", "custom-header")]));
        assert_eq!(table(&d), (vec![(Some("custom-key"), "custom-header")], 55));
        // C.2.2: literal without indexing.
        let mut d = Decoder::new();
        let block = hex("040c 2f73 616d 706c 652f 7061 7468");
        assert_eq!(decode(&mut d, &block), Ok(vec![field(":path", "/sample/path")]));
        assert_eq!(table(&d), (vec![], 0));
        // C.2.3: never indexed.
        let mut d = Decoder::new();
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        assert_eq!(decode(&mut d, &block), Ok(vec![field("password", "secret")]));
        assert_eq!(table(&d), (vec![], 0));
        // C.2.4: indexed.
        assert_eq!(decode(&mut d, &hex("82")), Ok(vec![field(":method", "GET")]));
    }

    #[test]
    fn static_table_indices_outside_the_examples() {
        // RFC 7541 Appendix A: 9, 13, 14, 16, 58 and 61; 31 as the name of a literal.
        let mut block = vec![0x89, 0x8d, 0x8e, 0x90, 0xba, 0xbd, 0x0f, 0x10, 0x10];
        block.extend_from_slice(b"application/grpc");
        let expected = vec![
            field(":status", "204"),
            field(":status", "404"),
            field(":status", "500"),
            field("accept-encoding", "gzip, deflate"),
            field("user-agent", ""),
            field("www-authenticate", ""),
            field("content-type", "application/grpc"),
        ];
        assert_eq!(decode(&mut Decoder::new(), &block), Ok(expected));
        assert_eq!(decode(&mut Decoder::new(), &[0x80 | 62]), Err(Error::BadIndex(62)));
    }

    const C3: [&str; 3] = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    const C4: [&str; 3] = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];

    fn check_requests(blocks: &[&str; 3]) {
        let mut d = Decoder::new();
        let auth = field(":authority", "www.example.com");
        let first = vec![field(":method", "GET"), field(":scheme", "http"), field(":path", "/"), auth.clone()];
        assert_eq!(decode(&mut d, &hex(blocks[0])), Ok(first.clone()));
        assert_eq!(table(&d), (vec![(Some(":authority"), "www.example.com")], 57));

        let mut second = first;
        second.push(field("cache-control", "no-cache"));
        assert_eq!(decode(&mut d, &hex(blocks[1])), Ok(second));
        assert_eq!(
            table(&d),
            (vec![(Some("cache-control"), "no-cache"), (Some(":authority"), "www.example.com")], 110)
        );

        let third = vec![
            field(":method", "GET"),
            field(":scheme", "https"),
            field(":path", "/index.html"),
            auth,
            field("custom-key", "custom-value"),
        ];
        assert_eq!(decode(&mut d, &hex(blocks[2])), Ok(third));
        assert_eq!(
            table(&d),
            (
                vec![
                    (Some("custom-key"), "custom-value"),
                    (Some("cache-control"), "no-cache"),
                    (Some(":authority"), "www.example.com")
                ],
                164
            )
        );
        assert!(d.is_synced());
    }

    #[test]
    fn c3_requests_without_huffman() {
        check_requests(&C3);
    }

    #[test]
    fn c4_requests_with_huffman() {
        check_requests(&C4);
    }

    const C5: [&str; 3] = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 \
         5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 \
         5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ];
    const C6: [&str; 3] = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad \
         94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 \
         65c0 03ed 4ee5 b106 3d50 07",
    ];

    const LOCATION: &str = "https://www.example.com";
    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    fn check_responses(d: &mut Decoder, blocks: &[Vec<u8>; 3]) {
        let first = vec![
            field(":status", "302"),
            field("cache-control", "private"),
            field("date", DATE1),
            field("location", LOCATION),
        ];
        assert_eq!(decode(d, &blocks[0]), Ok(first));
        assert_eq!(
            table(d),
            (
                vec![
                    (Some("location"), LOCATION),
                    (Some("date"), DATE1),
                    (Some("cache-control"), "private"),
                    (Some(":status"), "302")
                ],
                222
            )
        );

        let second = vec![
            field(":status", "307"),
            field("cache-control", "private"),
            field("date", DATE1),
            field("location", LOCATION),
        ];
        assert_eq!(decode(d, &blocks[1]), Ok(second));
        // ":status: 302" was evicted to make room.
        assert_eq!(
            table(d),
            (
                vec![
                    (Some(":status"), "307"),
                    (Some("location"), LOCATION),
                    (Some("date"), DATE1),
                    (Some("cache-control"), "private")
                ],
                222
            )
        );

        let third = vec![
            field(":status", "200"),
            field("cache-control", "private"),
            field("date", DATE2),
            field("location", LOCATION),
            field("content-encoding", "gzip"),
            field("set-cookie", COOKIE),
        ];
        assert_eq!(decode(d, &blocks[2]), Ok(third));
        assert_eq!(
            table(d),
            (vec![(Some("set-cookie"), COOKIE), (Some("content-encoding"), "gzip"), (Some("date"), DATE2)], 215)
        );
        assert!(d.is_synced());
    }

    #[test]
    fn c5_responses_with_eviction() {
        check_responses(&mut Decoder::with_max_size(256), &C5.map(hex));
    }

    #[test]
    fn c6_responses_with_huffman_and_eviction() {
        check_responses(&mut Decoder::with_max_size(256), &C6.map(hex));
    }

    #[test]
    fn size_update_at_block_start_sets_the_table_size() {
        let mut blocks = C5.map(hex);
        let mut first = int(0x20, 5, 256);
        assert_eq!(first, [0x3f, 0xe1, 0x01]);
        first.extend_from_slice(&blocks[0]);
        blocks[0] = first;
        let mut d = Decoder::new();
        check_responses(&mut d, &blocks);
        assert_eq!(d.max_size(), 256);
        // Two updates in a row are allowed; shrinking evicts at once.
        assert_eq!(decode(&mut d, &[0x20, 0x3f, 0x9a, 0x01]), Ok(vec![]));
        assert_eq!(d.max_size(), 185);
        assert_eq!(table(&d), (vec![], 0));
    }

    #[test]
    fn unsynced_reports_unseen_entries_as_unknown() {
        // C.3.2 without C.3.1: index 62 (":authority") was inserted before we joined.
        let mut d = Decoder::new_unsynced();
        assert!(!d.is_synced());
        let out = decode(&mut d, &hex(C3[1])).unwrap();
        assert_eq!(
            out,
            vec![
                field(":method", "GET"),
                field(":scheme", "http"),
                field(":path", "/"),
                UNKNOWN,
                field("cache-control", "no-cache")
            ]
        );
        assert_eq!(d.known_entries(), 1);
        // C.3.3: index 63 is the unseen ":authority" again; "cache-control" would be 62.
        let out = decode(&mut d, &hex(C4[2])).unwrap();
        assert_eq!(
            out,
            vec![
                field(":method", "GET"),
                field(":scheme", "https"),
                field(":path", "/index.html"),
                UNKNOWN,
                field("custom-key", "custom-value")
            ]
        );
        // The entries it saw inserted are exact at their indices.
        assert_eq!(
            decode(&mut d, &[0xbe, 0xbf]),
            Ok(vec![field("custom-key", "custom-value"), field("cache-control", "no-cache")])
        );
        assert_eq!(decode(&mut d, &[0xc0, 0xff, 0x80, 0x01]), Ok(vec![UNKNOWN, UNKNOWN]));
        assert!(!d.is_synced());

        // C.3.3 alone: everything but the reference to ":authority" decodes.
        let mut d = Decoder::new_unsynced();
        let out = decode(&mut d, &hex(C3[2])).unwrap();
        assert_eq!(out[3], UNKNOWN);
        assert_eq!(out[4], field("custom-key", "custom-value"));
    }

    #[test]
    fn unknown_name_is_kept_as_unknown() {
        let mut d = Decoder::new_unsynced();
        // Literal with indexing, name = index 62 (unseen), value "v".
        assert_eq!(decode(&mut d, &[0x7e, 0x01, b'v']), Ok(vec![Field { name: None, value: Some("v".into()) }]));
        // Without indexing, name = unseen index 63.
        assert_eq!(decode(&mut d, &[0x0f, 0x30, 0x01, b'w']), Ok(vec![Field { name: None, value: Some("w".into()) }]));
        // The inserted entry is 62 now; its value is known, its name is not.
        assert_eq!(decode(&mut d, &[0xbe]), Ok(vec![Field { name: None, value: Some("v".into()) }]));
        assert_eq!(table(&d), (vec![(None, "v")], 33));
    }

    #[test]
    fn reset_unsynced_forgets_and_new_insertions_are_exact() {
        let mut d = Decoder::new();
        decode(&mut d, &hex(C3[0])).unwrap();
        decode(&mut d, &hex(C3[1])).unwrap();
        d.reset_unsynced();
        assert!(!d.is_synced());
        assert_eq!(d.known_entries(), 0);
        let out = decode(&mut d, &hex(C3[2])).unwrap();
        assert_eq!(out[3], UNKNOWN);
        assert_eq!(decode(&mut d, &[0xbe, 0xbf]), Ok(vec![field("custom-key", "custom-value"), UNKNOWN]));
        assert_eq!(table(&d), (vec![(Some("custom-key"), "custom-value")], 54));
    }

    #[test]
    fn synced_decoder_rejects_index_past_its_table() {
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &[0xbe]), Err(Error::BadIndex(62)));
        decode(&mut d, &hex(C3[0])).unwrap();
        assert_eq!(decode(&mut d, &[0xbe]), Ok(vec![field(":authority", "www.example.com")]));
        assert_eq!(decode(&mut d, &[0xbf]), Err(Error::BadIndex(63)));
        // Also as the name of a literal.
        assert_eq!(decode(&mut d, &[0x7f, 0x00, 0x00]), Err(Error::BadIndex(63)));
    }

    #[test]
    fn size_update_makes_unsynced_decoder_strict_and_synced() {
        // After a size update to 256 at most 8 unseen entries fit: index 70 cannot exist.
        let mut d = Decoder::new_unsynced();
        let mut block = int(0x20, 5, 256);
        block.push(0x80 | 69);
        assert_eq!(decode(&mut d, &block), Ok(vec![UNKNOWN]));
        assert_eq!(decode(&mut d, &[0x80 | 70]), Err(Error::BadIndex(70)));
        assert!(!d.is_synced());
        // C.5.1's four entries take 222 of 256 octets: one unseen entry of 32 or 34 octets
        // could still be there, a second could not.
        decode(&mut d, &hex(C5[0])).unwrap();
        assert!(!d.is_synced());
        assert_eq!(decode(&mut d, &[0xc2]), Ok(vec![UNKNOWN]));
        assert_eq!(decode(&mut d, &[0xc3]), Err(Error::BadIndex(67)));
        // C.5.2 evicts one of ours, so the older unseen ones went first.
        decode(&mut d, &hex(C5[1])).unwrap();
        assert!(d.is_synced());
        assert_eq!(decode(&mut d, &[0xc2]), Err(Error::BadIndex(66)));

        // A size update to 0 empties the peer's table too.
        let mut d = Decoder::new_unsynced();
        assert_eq!(decode(&mut d, &[0x20, 0x82]), Ok(vec![field(":method", "GET")]));
        assert!(d.is_synced());
    }

    #[test]
    fn eviction_of_a_known_entry_resyncs_only_with_exact_size() {
        let value = vec![b'x'; 1000];
        let entry = insert_literal(b"k", &value);
        // Without a size update the maximum is a guess: evictions prove nothing.
        let mut d = Decoder::new_unsynced();
        for _ in 0..4 {
            decode(&mut d, &entry).unwrap();
        }
        assert_eq!(d.known_entries(), 3);
        assert!(!d.is_synced());

        let mut d = Decoder::new_unsynced();
        let mut first = int(0x20, 5, 4096);
        first.extend_from_slice(&entry);
        decode(&mut d, &first).unwrap();
        for _ in 0..2 {
            decode(&mut d, &entry).unwrap();
        }
        assert_eq!(table(&d).1, 3 * 1033);
        assert!(!d.is_synced());
        decode(&mut d, &entry).unwrap();
        assert_eq!(d.known_entries(), 3);
        assert!(d.is_synced());

        // An entry larger than the whole table empties it.
        let mut d = Decoder::new_unsynced();
        let mut block = int(0x20, 5, 512);
        block.extend(insert_literal(b"k", &value));
        assert_eq!(decode(&mut d, &block).map(|f| f.len()), Ok(1));
        assert_eq!(table(&d), (vec![], 0));
        assert!(d.is_synced());
    }

    #[test]
    fn long_strings_are_cut_but_counted_in_full() {
        let value = vec![b'v'; MAX_STRING + 100];
        let mut d = Decoder::with_max_size(MAX_TABLE_SIZE);
        let out = decode(&mut d, &insert_literal(b"long", &value)).unwrap();
        assert_eq!(out[0].value.as_ref().map(String::len), Some(MAX_STRING));
        assert_eq!(table(&d).1, 4 + MAX_STRING + 100 + 32);
        // Its name, reused by a literal with indexing, counts at its real length too.
        let long_name = vec![b'n'; MAX_STRING + 1];
        decode(&mut d, &insert_literal(&long_name, b"a")).unwrap();
        decode(&mut d, &[0x7e, 0x01, b'b']).unwrap();
        assert_eq!(d.entries[0].size, MAX_STRING + 1 + 1 + 32);
        assert_eq!(d.entries[0].name.as_ref().map(|n| n.len()), Some(MAX_STRING));

        // Huffman: ten '0's per 50 bits.
        let codes = huffman_codes();
        let text = vec![b'0'; MAX_STRING * 2];
        let coded = huffman_encode(&codes, &text);
        let decoded = huffman_decode(&coded).unwrap();
        assert_eq!((decoded.text.len(), decoded.len), (MAX_STRING, MAX_STRING * 2));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted_as_sent() {
        let mut d = Decoder::new();
        let out = decode(&mut d, &insert_literal(b"x", &[0xff, b'a'])).unwrap();
        assert_eq!(out, vec![field("x", "\u{fffd}a")]);
        assert_eq!(table(&d).1, 1 + 2 + 32);
    }

    #[test]
    fn too_many_fields() {
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &[0x82; MAX_FIELDS]).map(|f| f.len()), Ok(MAX_FIELDS));
        let mut out = vec![field("kept", "yes")];
        assert_eq!(d.decode(&[0x82; MAX_FIELDS + 1], &mut out), Err(Error::TooManyFields));
        assert_eq!(out, vec![field("kept", "yes")]);
        // Size updates are not fields.
        let mut block = vec![0x3f, 0xe1, 0x1f];
        block.extend([0x82; MAX_FIELDS]);
        assert_eq!(decode(&mut d, &block).map(|f| f.len()), Ok(MAX_FIELDS));
    }

    #[test]
    fn malformed_blocks_give_the_right_error() {
        let cases: &[(&str, Vec<u8>, Error)] = &[
            ("integer ends after its prefix", vec![0xff], Error::Truncated),
            ("integer ends in a continuation", vec![0xff, 0x80], Error::Truncated),
            ("literal without its name", vec![0x40], Error::Truncated),
            ("name shorter than its length", vec![0x40, 0x05, b'a', b'b'], Error::Truncated),
            ("literal without its value", vec![0x41], Error::Truncated),
            ("value shorter than its length", vec![0x41, 0x03, b'a'], Error::Truncated),
            ("huge length, short block", vec![0x41, 0x7f, 0xff, 0xff, 0xff, 0x0f], Error::Truncated),
            ("six continuation octets", vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], Error::IntegerOverflow),
            ("integer above 2^32", vec![0xff, 0x80, 0x80, 0x80, 0x80, 0x10], Error::IntegerOverflow),
            // 'a' (00011) padded with zeros.
            ("zero padding", vec![0x41, 0x81, 0x18], Error::Huffman),
            // 'a' then 11 one bits of padding.
            ("padding over 7 bits", vec![0x41, 0x82, 0x1f, 0xff], Error::Huffman),
            ("a whole octet of padding", vec![0x41, 0x81, 0xff], Error::Huffman),
            // EOS is 30 one bits.
            ("EOS in a value", vec![0x41, 0x84, 0xff, 0xff, 0xff, 0xff], Error::Huffman),
            ("EOS after a symbol", vec![0x41, 0x85, 0x1f, 0xff, 0xff, 0xff, 0xfe], Error::Huffman),
            ("indexed 0", vec![0x80], Error::BadIndex(0)),
            ("size update after a field", vec![0x82, 0x20], Error::BadSizeUpdate(0)),
        ];
        for (what, block, error) in cases {
            for mut d in [Decoder::new(), Decoder::new_unsynced()] {
                assert_eq!(decode(&mut d, block), Err(*error), "{what}");
            }
        }
        let over = int(0x20, 5, MAX_TABLE_SIZE as u64 + 1);
        assert_eq!(decode(&mut Decoder::new(), &over), Err(Error::BadSizeUpdate(MAX_TABLE_SIZE as u64 + 1)));
        let at_max = int(0x20, 5, MAX_TABLE_SIZE as u64);
        assert_eq!(decode(&mut Decoder::new(), &at_max), Ok(vec![]));
        // A valid field before the error is not reported.
        let mut out = Vec::new();
        assert_eq!(Decoder::new().decode(&[0x82, 0xff], &mut out), Err(Error::Truncated));
        assert!(out.is_empty());
    }

    #[test]
    fn random_input_never_panics_and_keeps_the_table_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6870_6163);
        let seeds: Vec<Vec<u8>> = C3.iter().chain(&C4).chain(&C5).chain(&C6).map(|b| hex(b)).collect();
        let mut decoders = [Decoder::new(), Decoder::new_unsynced(), Decoder::with_max_size(256)];
        let mut ok = 0;
        for round in 0..20_000 {
            let block: Vec<u8> = if round % 2 == 0 {
                (0..rng.random_range(0..48)).map(|_| rng.random::<u8>()).collect()
            } else {
                // A valid block with a few octets changed reaches deeper.
                let mut block = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..block.len());
                    block[at] = rng.random();
                }
                block
            };
            for d in &mut decoders {
                let mut out = Vec::new();
                if d.decode(&block, &mut out).is_ok() {
                    ok += 1;
                    assert!(out.len() <= MAX_FIELDS);
                } else {
                    assert!(out.is_empty());
                }
                table(d);
                assert!(!d.synced || d.max_exact);
                if round % 97 == 0 {
                    d.reset_unsynced();
                }
            }
        }
        // The mutated blocks must often decode, or this test checks little.
        assert!(ok > 5_000, "only {ok} blocks decoded");
    }
}
