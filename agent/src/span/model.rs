//! The neutral span model: what every stage after the span builder sees. It knows nothing
//! of OTLP; exporters encode it.

use std::borrow::Cow;
use std::sync::Arc;

pub use compact_str::CompactString as Text;

/// W3C / OTLP span kind, restricted to what ghostwire emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// Handling of an inbound request (the process accepted the connection).
    Server,
    /// An outbound request (the process connected).
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error { message: String },
}

/// An attribute value. Text is a [`Text`]: a `&'static str` ([`AttrValue::fixed`]) or a
/// string of up to 24 bytes is held without an allocation.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
    Bool(bool),
}

impl AttrValue {
    /// A static string value, held by reference (no copy, no allocation).
    #[must_use]
    pub const fn fixed(s: &'static str) -> Self {
        Self::Str(Text::const_new(s))
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        Self::Str(Text::from(v))
    }
}
impl From<Text> for AttrValue {
    fn from(v: Text) -> Self {
        Self::Str(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::Str(Text::from(v))
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// One key/value attribute. Keys are almost always static semantic-convention names.
pub type Attribute = (Cow<'static, str>, AttrValue);

/// The process a span was observed in (OTel resource).
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub pid: u32,
    /// `service.name`, also present in `attributes`.
    pub service_name: String,
    pub attributes: Vec<Attribute>,
}

impl Resource {
    /// Whether the process is a Go program (`process.runtime.name` = `go`, from its
    /// executable): goroutines move between OS threads, so which thread did what says
    /// nothing about which request it served.
    #[must_use]
    pub fn is_go(&self) -> bool {
        self.attributes.iter().any(|(k, v)| k == "process.runtime.name" && matches!(v, AttrValue::Str(s) if s == "go"))
    }

    /// The same resource for another process (a forked child of this one).
    #[must_use]
    pub fn with_pid(&self, pid: u32) -> Resource {
        let mut r = self.clone();
        r.pid = pid;
        for (k, v) in &mut r.attributes {
            if k == "process.pid" {
                *v = AttrValue::Int(i64::from(pid));
            }
        }
        r
    }
}

/// A bit of [`Span::flags`] that is not a W3C flag and never leaves the agent: the
/// trace was started by ghostwire (its root is one of ghostwire's own spans), not
/// received in a context. Spans inherit it with their trace. The sampler reads it to
/// tell a trace it decides by ratio from one whose sender decided, and clears it
/// before export; received flags never carry it (the context parser masks it).
pub const LOCAL_ROOT: u8 = 0x80;

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root span.
    pub parent_span_id: [u8; 8],
    /// W3C `tracestate` received with the context, empty when none.
    pub trace_state: String,
    /// W3C trace flags (bit 0 = sampled), plus [`LOCAL_ROOT`] until the sampler.
    pub flags: u8,
    pub name: Text,
    pub kind: SpanKind,
    /// Wall-clock nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: Status,
    pub attributes: Vec<Attribute>,
    pub resource: Arc<Resource>,
}

impl Span {
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }

    #[must_use]
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// The attribute `key`, if present.
    #[must_use]
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Lower-case hex of an id (trace or span id).
#[must_use]
pub fn hex(id: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(id.len() * 2);
    for b in id {
        let _ = write!(s, "{b:02x}");
    }
    s
}
