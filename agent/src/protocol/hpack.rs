//! HPACK (RFC 7541) header-block decoding that tolerates joining a connection late.
//!
//! One [`Decoder`] per connection and direction. From a connection's start its dynamic
//! table is exact. A decoder that joined mid-stream, or whose direction lost bytes, does
//! not know the entries inserted before: it keeps the entries it saw inserted since
//! (the newest ones, so their indices are exact) and reports a field that refers to an
//! older entry as unknown (`None`), never as a wrong value.
//!
//! SKELETON: the API is fixed; the bodies are being written.

/// Largest dynamic-table size a size update may set (bounds memory per decoder).
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Most fields decoded from one header block; further ones are an error.
pub const MAX_FIELDS: usize = 256;
/// Longest name or value kept (longer ones are cut; the table accounting stays exact).
pub const MAX_STRING: usize = 8 * 1024;

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

/// HPACK decoder for one direction of one connection.
#[derive(Debug, Default)]
pub struct Decoder {}

impl Decoder {
    /// A decoder from the connection's start: empty table, exact, size 4096.
    #[must_use]
    pub fn new() -> Self {
        todo!()
    }

    /// A decoder for a connection joined mid-stream: older entries may exist, unknown.
    #[must_use]
    pub fn new_unsynced() -> Self {
        todo!()
    }

    /// Bytes of this direction were lost: every entry it holds may be stale. Forgets
    /// them and continues as [`Decoder::new_unsynced`].
    pub fn reset_unsynced(&mut self) {
        todo!()
    }

    /// Whether the table is known to be exact (no unseen entries can exist).
    #[must_use]
    pub fn is_synced(&self) -> bool {
        todo!()
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION fragments joined),
    /// appending its fields to `out` in order, and updating the dynamic table.
    pub fn decode(&mut self, block: &[u8], out: &mut Vec<Field>) -> Result<(), Error> {
        let _ = (block, out);
        todo!()
    }

    /// Entries currently known in the dynamic table.
    #[must_use]
    pub fn known_entries(&self) -> usize {
        todo!()
    }
}
