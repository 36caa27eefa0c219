//! Trace context carried in request headers, in every common format:
//!
//! * W3C Trace Context — `traceparent` and `tracestate`
//!   (<https://www.w3.org/TR/trace-context/>): the Level 1 Recommendation's grammar,
//!   `tenant@system` tracestate keys included; Level 2's `random` flag is kept as sent.
//! * B3 single header — `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`.
//! * B3 multiple headers — `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
//!   `x-b3-sampled`, `x-b3-flags` (<https://github.com/openzipkin/b3-propagation>).
//! * Jaeger — `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`
//!   (<https://www.jaegertracing.io/docs/latest/client-libraries/#propagation-format>).
//!
//! When a request carries several, a valid W3C context wins, then B3 single, then B3
//! multi, then Jaeger. Parsers work on borrowed bytes: the only allocation is the
//! validated `tracestate` of a W3C context. No input makes any of them panic.

/// The `sampled` bit of W3C trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// The header format a context was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    W3c,
    /// B3 single header (`b3`).
    B3Single,
    /// B3 multiple headers (`x-b3-*`).
    B3Multi,
    /// Jaeger (`uber-trace-id`).
    Jaeger,
}

impl Format {
    /// Short, stable name for attributes and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::W3c => "w3c",
            Format::B3Single => "b3",
            Format::B3Multi => "b3multi",
            Format::Jaeger => "jaeger",
        }
    }
}

/// A remote parent: the span that sent the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// 128-bit trace id; 64-bit ids (B3, Jaeger) are left-padded with zeros.
    pub trace_id: [u8; 16],
    /// The sender's span id: our parent.
    pub span_id: [u8; 8],
    /// W3C trace flags. A W3C context keeps the byte it received (version `00`); the
    /// other formats map "sampled" (debug included) to [`FLAG_SAMPLED`], anything else
    /// (not sampled, or B3's deferred decision) to `0`.
    pub flags: u8,
    /// Validated `tracestate` (W3C only), empty when absent or invalid.
    pub trace_state: String,
    /// Which header(s) it came from.
    pub format: Format,
}

impl SpanContext {
    /// Whether the sender sampled (recorded) the trace.
    #[must_use]
    pub fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    fn foreign(format: Format, trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Self {
        let flags = if sampled { FLAG_SAMPLED } else { 0 };
        SpanContext { trace_id, span_id, flags, trace_state: String::new(), format }
    }
}

// ---------------------------------------------------------------------------------------
// W3C Trace Context
// ---------------------------------------------------------------------------------------

/// Parses a `traceparent` header value into `(trace_id, parent_id, flags)`.
///
/// Version `00` must be exactly 55 characters. A higher version (anything but `ff`) is
/// parsed by the version-00 layout and may carry more fields after a `-`, as the spec
/// requires for forward compatibility; of its flags only the `sampled` bit is read (the
/// spec forbids assuming anything else about an unknown version). Every field is
/// lower-case hex; an all-zero trace-id or parent-id is invalid. Surrounding spaces and
/// tabs (HTTP optional whitespace) are ignored.
#[must_use]
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = ows(value).as_bytes();
    if v.len() < 55 {
        return None;
    }
    let [version] = hex_exact::<1>(v.get(0..2)?)?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    let dash = |i: usize| v.get(i) == Some(&b'-');
    if !dash(2) || !dash(35) || !dash(52) || (v.len() > 55 && !dash(55)) {
        return None;
    }
    let trace_id = non_zero(hex_exact::<16>(v.get(3..35)?)?)?;
    let span_id = non_zero(hex_exact::<8>(v.get(36..52)?)?)?;
    let [flags] = hex_exact::<1>(v.get(53..55)?)?;
    // The top bit is ghostwire's own mark (`LOCAL_ROOT`); W3C defines only bits 0-1.
    let flags = if version == 0 { flags & !crate::span::LOCAL_ROOT } else { flags & FLAG_SAMPLED };
    Some((trace_id, span_id, flags))
}

/// Validates a `tracestate` value (repeated headers already joined with `,`) and
/// returns it normalised: members trimmed of optional whitespace, empty members
/// dropped, joined with `,`. `None` when invalid — the spec discards the whole value.
///
/// Valid means at most 32 non-empty list members, each `key=value` with
/// * key: `simple-key` (`lcalpha` then up to 255 of `a-z 0-9 _ - * /`) or
///   `tenant@system` (tenant: `a-z`/digit then up to 240 keychars; system: `a-z` then
///   up to 13 keychars);
/// * value: 1 to 256 printable ASCII characters (0x20–0x7E) except `,` and `=`, not
///   ending in a space;
/// * no key repeated.
#[must_use]
pub fn parse_tracestate(value: &str) -> Option<String> {
    tracestate_from(std::iter::once(value))
}

/// [`parse_tracestate`] over the values of several `tracestate` headers, in order, as
/// if joined with `,` (RFC 9110 field-line combination), without joining them.
fn tracestate_from<'a>(values: impl Iterator<Item = &'a str>) -> Option<String> {
    const MAX_MEMBERS: usize = 32;
    let mut keys: [&str; MAX_MEMBERS] = [""; MAX_MEMBERS];
    let mut count = 0;
    let mut out = String::new();
    for value in values {
        for member in value.split(',') {
            let member = ows(member);
            if member.is_empty() {
                continue;
            }
            let (key, val) = member.split_once('=')?;
            if !tracestate_key(key.as_bytes()) || !tracestate_value(val.as_bytes()) {
                return None;
            }
            if count == MAX_MEMBERS || keys.get(..count)?.contains(&key) {
                return None;
            }
            *keys.get_mut(count)? = key;
            count += 1;
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(member);
        }
    }
    Some(out)
}

fn tracestate_key(key: &[u8]) -> bool {
    fn keychar(c: &u8) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
    }
    match key.iter().position(|&c| c == b'@') {
        None => {
            (1..=256).contains(&key.len()) && key.first().is_some_and(u8::is_ascii_lowercase) && key.iter().all(keychar)
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant.first().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && tenant.iter().all(keychar)
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                // `keychar` has no `@`: a second one fails here.
                && system.iter().all(keychar)
        }
    }
}

fn tracestate_value(val: &[u8]) -> bool {
    (1..=256).contains(&val.len())
        && val.iter().all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && val.last() != Some(&b' ')
}

// ---------------------------------------------------------------------------------------
// B3
// ---------------------------------------------------------------------------------------

/// Parses a B3 single header (`b3`) value:
/// `{TraceId}-{SpanId}`, `{TraceId}-{SpanId}-{SamplingState}` or
/// `{TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`.
///
/// TraceId is 16 or 32 lower-hex characters (64-bit ids are left-padded), SpanId and
/// ParentSpanId 16; none may be all zeros. SamplingState is `1` (accept), `0` (deny) or
/// `d` (debug, implies accept); absent means deferred (flags `0`). A value carrying only
/// a sampling state (`0`, `1`, `d`) has no ids: `None`.
#[must_use]
pub fn parse_b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = ows(value).split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => false,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(SpanContext::foreign(Format::B3Single, trace_id, span_id, sampled))
}

/// Parses B3 multiple headers (values as received; pass the first of each).
///
/// `x-b3-traceid` (16 or 32 lower-hex) and `x-b3-spanid` (16 lower-hex) are required
/// and non-zero. `x-b3-parentspanid`, when present, must be a valid span id too (it is
/// the caller's parent, not ours). `x-b3-sampled` is `1`/`0`, or `true`/`false` as
/// tracers older than the spec send; absent means deferred. `x-b3-flags: 1` is debug,
/// which implies sampled; `0` is no flag. Any other value invalidates the context.
#[must_use]
pub fn parse_b3_multi(
    trace_id: &str,
    span_id: &str,
    parent_span_id: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<SpanContext> {
    let trace_id = b3_trace_id(ows(trace_id))?;
    let span_id = b3_span_id(ows(span_id))?;
    if let Some(parent) = parent_span_id {
        b3_span_id(ows(parent))?;
    }
    let sampled = match sampled.map(ows) {
        None => false,
        Some("1") => true,
        Some("0") => false,
        Some(s) if s.eq_ignore_ascii_case("true") => true,
        Some(s) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => return None,
    };
    let debug = match flags.map(ows) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return None,
    };
    Some(SpanContext::foreign(Format::B3Multi, trace_id, span_id, sampled || debug))
}

fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 16 && b.len() != 32 {
        return None;
    }
    non_zero(hex_padded::<16>(b, nibble_lower)?)
}

fn b3_span_id(s: &str) -> Option<[u8; 8]> {
    non_zero(hex_exact::<8>(s.as_bytes())?)
}

// ---------------------------------------------------------------------------------------
// Jaeger
// ---------------------------------------------------------------------------------------

/// Parses a Jaeger `uber-trace-id` value: `{trace-id}:{span-id}:{parent-span-id}:{flags}`.
///
/// The value may be URL-encoded (`%3A` for `:`), as some Jaeger clients sent it. Ids are
/// hex (base16, either case) of up to 32 (trace) or 16 (span) digits, shorter ones
/// left-padded; a zero trace or span id is invalid. The parent span id is deprecated:
/// only its syntax is checked (`0` is fine). Flags is one byte as one or two hex digits:
/// bit 0 sampled, bit 1 debug (implies sampled).
#[must_use]
pub fn parse_uber_trace_id(value: &str) -> Option<SpanContext> {
    // Decoded, the longest valid value is 32 + 16 + 16 + 2 digits and 3 colons.
    let mut buf = [0u8; 80];
    let v = percent_decode(ows(value).as_bytes(), &mut buf)?;
    let mut parts = v.split(|&c| c == b':');
    let trace_id = non_zero(hex_padded::<16>(parts.next()?, nibble_any)?)?;
    let span_id = non_zero(hex_padded::<8>(parts.next()?, nibble_any)?)?;
    hex_padded::<8>(parts.next()?, nibble_any)?;
    let [flags] = hex_padded::<1>(parts.next()?, nibble_any)?;
    if parts.next().is_some() {
        return None;
    }
    const SAMPLED: u8 = 0x01;
    const DEBUG: u8 = 0x02;
    Some(SpanContext::foreign(Format::Jaeger, trace_id, span_id, flags & (SAMPLED | DEBUG) != 0))
}

/// Percent-decodes `src` into `buf` (borrowing `src` when it has no `%`). `None` on a
/// malformed escape or when the result does not fit `buf`.
fn percent_decode<'b>(src: &'b [u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    if !src.contains(&b'%') {
        return Some(src);
    }
    let mut len = 0;
    let mut rest = src;
    while let Some((&c, tail)) = rest.split_first() {
        let (byte, tail) = if c == b'%' {
            let (hi, lo) = (nibble_any(*tail.first()?)?, nibble_any(*tail.get(1)?)?);
            (hi << 4 | lo, tail.get(2..)?)
        } else {
            (c, tail)
        };
        *buf.get_mut(len)? = byte;
        len += 1;
        rest = tail;
    }
    let buf: &'b [u8] = buf;
    buf.get(..len)
}

// ---------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------

/// The headers [`extract`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    TraceParent,
    TraceState,
    B3,
    B3TraceId,
    B3SpanId,
    B3ParentSpanId,
    B3Sampled,
    B3Flags,
    UberTraceId,
}

const FIELDS: [(&str, Field); 9] = [
    ("traceparent", Field::TraceParent),
    ("tracestate", Field::TraceState),
    ("b3", Field::B3),
    ("x-b3-traceid", Field::B3TraceId),
    ("x-b3-spanid", Field::B3SpanId),
    ("x-b3-parentspanid", Field::B3ParentSpanId),
    ("x-b3-sampled", Field::B3Sampled),
    ("x-b3-flags", Field::B3Flags),
    ("uber-trace-id", Field::UberTraceId),
];

/// Header names are case-insensitive; the HTTP parser lower-cases them already, which
/// makes this an exact comparison in practice.
fn field(name: &str) -> Option<Field> {
    FIELDS.iter().find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name)).map(|&(_, f)| f)
}

/// First value of each header (B3: "when extracting state headers, the first value
/// wins"); `traceparent` is also counted, as a repeated one is ambiguous.
#[derive(Default)]
struct Found<'a> {
    traceparent: Option<&'a str>,
    traceparents: usize,
    tracestate: bool,
    b3: Option<&'a str>,
    b3_trace_id: Option<&'a str>,
    b3_span_id: Option<&'a str>,
    b3_parent_span_id: Option<&'a str>,
    b3_sampled: Option<&'a str>,
    b3_flags: Option<&'a str>,
    uber_trace_id: Option<&'a str>,
}

/// Extracts the caller's context from request headers (`(name, value)`, names
/// lower-case). Tried in order, the first valid one wins: W3C (`traceparent`, with its
/// `tracestate`; ignored when the header is repeated), B3 single, B3 multi, Jaeger.
#[must_use]
pub fn extract<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Option<SpanContext> {
    let mut found = Found::default();
    for (name, value) in headers.clone() {
        let slot = match field(name) {
            None => continue,
            Some(Field::TraceState) => {
                found.tracestate = true;
                continue;
            }
            Some(Field::TraceParent) => {
                found.traceparents += 1;
                &mut found.traceparent
            }
            Some(Field::B3) => &mut found.b3,
            Some(Field::B3TraceId) => &mut found.b3_trace_id,
            Some(Field::B3SpanId) => &mut found.b3_span_id,
            Some(Field::B3ParentSpanId) => &mut found.b3_parent_span_id,
            Some(Field::B3Sampled) => &mut found.b3_sampled,
            Some(Field::B3Flags) => &mut found.b3_flags,
            Some(Field::UberTraceId) => &mut found.uber_trace_id,
        };
        slot.get_or_insert(value);
    }

    if found.traceparents == 1 {
        if let Some((trace_id, span_id, flags)) = found.traceparent.and_then(parse_traceparent) {
            let trace_state = if found.tracestate {
                let values = headers.filter(|(n, _)| field(n) == Some(Field::TraceState)).map(|(_, v)| v);
                tracestate_from(values).unwrap_or_default()
            } else {
                String::new()
            };
            return Some(SpanContext { trace_id, span_id, flags, trace_state, format: Format::W3c });
        }
    }
    if let Some(ctx) = found.b3.and_then(parse_b3_single) {
        return Some(ctx);
    }
    if let (Some(trace_id), Some(span_id)) = (found.b3_trace_id, found.b3_span_id) {
        let ctx = parse_b3_multi(trace_id, span_id, found.b3_parent_span_id, found.b3_sampled, found.b3_flags);
        if ctx.is_some() {
            return ctx;
        }
    }
    found.uber_trace_id.and_then(parse_uber_trace_id)
}

/// Longest `x-request-id` kept.
pub const MAX_REQUEST_ID: usize = 256;

/// The first `x-request-id` header's value, trimmed; `None` when absent, empty or
/// longer than [`MAX_REQUEST_ID`] bytes.
#[must_use]
pub fn request_id<'a>(mut headers: impl Iterator<Item = (&'a str, &'a str)>) -> Option<&'a str> {
    let (_, value) = headers.find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))?;
    let value = value.trim();
    (!value.is_empty() && value.len() <= MAX_REQUEST_ID).then_some(value)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Trims HTTP optional whitespace (spaces and tabs).
fn ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn nibble_lower(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn nibble_any(c: u8) -> Option<u8> {
    nibble_lower(c.to_ascii_lowercase())
}

/// Exactly `2 * N` lower-case hex digits.
fn hex_exact<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    hex_padded(digits, nibble_lower)
}

/// 1 to `2 * N` hex digits, right-aligned into `N` bytes (left-padded with zeros).
fn hex_padded<const N: usize>(digits: &[u8], nibble: fn(u8) -> Option<u8>) -> Option<[u8; N]> {
    if digits.is_empty() || digits.len() > 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, &c) in digits.iter().rev().enumerate() {
        let n = nibble(c)?;
        // i < 2N, so the index is in 0..N.
        *out.get_mut(N - 1 - i / 2)? |= if i % 2 == 0 { n } else { n << 4 };
    }
    Some(out)
}

fn non_zero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    id.iter().any(|&b| b != 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::hex;

    /// The W3C spec's example ids.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";
    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ext(headers: &[(&str, &str)]) -> Option<SpanContext> {
        extract(headers.iter().map(|(n, v)| (*n, *v)))
    }

    fn ids(ctx: &SpanContext) -> (String, String, u8, Format) {
        (hex(&ctx.trace_id), hex(&ctx.span_id), ctx.flags, ctx.format)
    }

    fn tp(value: &str) -> Option<(String, String, u8)> {
        parse_traceparent(value).map(|(t, s, f)| (hex(&t), hex(&s), f))
    }

    // ----- W3C traceparent -----

    #[test]
    fn traceparent_spec_examples() {
        // "Valid traceparent when caller sampled this request" / "... didn't sample".
        assert_eq!(tp(VALID), Some((TRACE.into(), SPAN.into(), 1)));
        assert_eq!(tp(&VALID.replace("-01", "-00")), Some((TRACE.into(), SPAN.into(), 0)));
        // The spec's header example.
        let (t, s, f) = tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!((t.as_str(), s.as_str(), f), ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1));
        // Python's SDK sends 03 (sampled + Level 2 random): kept as sent, sampled.
        assert_eq!(tp(&VALID.replace("-01", "-03")).unwrap().2, 3);
        // Unknown flag bits of version 00 are kept, sampled bit read by mask (spec: `09`).
        assert_eq!(tp(&VALID.replace("-01", "-09")).unwrap().2, 9);
        // Optional whitespace around the value (test suite: ows handling).
        for v in [format!(" {VALID}"), format!("{VALID} "), format!("\t{VALID}\t "), format!(" \t{VALID}")] {
            assert!(tp(&v).is_some(), "{v:?}");
        }
    }

    #[test]
    fn traceparent_invalid_values() {
        let t = TRACE;
        let s = SPAN;
        for bad in [
            String::new(),
            "00".into(),
            // version
            format!("ff-{t}-{s}-01"),
            format!(".0-{t}-{s}-01"),
            format!("0.-{t}-{s}-01"),
            format!("0-{t}-{s}-01"),
            format!("000-{t}-{s}-01"),
            format!("0000-{t}-{s}-01"),
            format!("0A-{t}-{s}-01"),
            // version 00 must be exactly 55 characters
            format!("00-{t}-{s}-01-what-the-future-will-be-like"),
            format!("00-{t}-{s}-01."),
            format!("00-{t}-{s}-01-"),
            // trace-id
            format!("00-00000000000000000000000000000000-{s}-01"),
            format!("00-.bf92f3577b34da6a3ce929d0e0e4736-{s}-01"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e473.-{s}-01"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e47366-{s}-01"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e473-{s}-01"),
            format!("00-4BF92F3577B34DA6A3CE929D0E0E4736-{s}-01"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736z-{s}-01"),
            // parent-id
            format!("00-{t}-0000000000000000-01"),
            format!("00-{t}-.0f067aa0ba902b7-01"),
            format!("00-{t}-00f067aa0ba902b.-01"),
            format!("00-{t}-00f067aa0ba902b77-01"),
            format!("00-{t}-00f067aa0ba902b-01"),
            format!("00-{t}-00F067AA0BA902B7-01"),
            // trace-flags
            format!("00-{t}-{s}-.0"),
            format!("00-{t}-{s}-0."),
            format!("00-{t}-{s}-001"),
            format!("00-{t}-{s}-1"),
            format!("00-{t}-{s}-0"),
            format!("00-{t}-{s}-xx"),
            format!("00-{t}-{s}-0A"),
            // delimiters
            format!("00_{t}-{s}-01"),
            format!("00-{t}_{s}-01"),
            format!("00-{t}-{s}_01"),
            // two values combined by a proxy
            format!("{VALID},{VALID}"),
            format!("{VALID}, {VALID}"),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparent_higher_versions_follow_forward_compatibility_rules() {
        let cc = VALID.replacen("00", "cc", 1);
        assert_eq!(tp(&cc), Some((TRACE.into(), SPAN.into(), 1)));
        assert!(tp(&VALID.replacen("00", "01", 1)).is_some());
        assert!(tp(&format!("{cc}-what-the-future-will-be-like")).is_some());
        assert!(tp(&format!("{cc}.what-the-future-will-be-like")).is_none());
        assert!(tp(&format!("{cc}x")).is_none());
        // Shorter than 55: not parsed.
        assert!(tp(&cc[..54]).is_none());
        // Still lower-case hex and non-zero ids.
        assert!(tp(&cc.replace(TRACE, &"0".repeat(32))).is_none());
        assert!(tp(&cc.replace(SPAN, &SPAN.to_uppercase())).is_none());
        // Only the sampled bit of an unknown version is read.
        assert_eq!(tp(&cc.replace("-01", "-03")).unwrap().2, 1);
        assert_eq!(tp(&cc.replace("-01", "-02")).unwrap().2, 0);
    }

    // ----- W3C tracestate -----

    #[test]
    fn tracestate_valid_values() {
        for (value, normalised) in [
            ("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7"),
            ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ("congo=ucfJifl5GOE,rojo=00f067aa0ba902b7", "congo=ucfJifl5GOE,rojo=00f067aa0ba902b7"),
            // Empty header and empty / whitespace-only members are allowed.
            ("", ""),
            (" \t ", ""),
            (",", ""),
            ("foo=1,,,bar=2", "foo=1,bar=2"),
            (",foo=1, ,bar=2,", "foo=1,bar=2"),
            // Optional whitespace around members (test suite: ows handling).
            ("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),
            ("foo=1\t \t,\t \tbar=2", "foo=1,bar=2"),
            // Leading spaces belong to the value; printable ASCII is allowed.
            ("foo= x", "foo= x"),
            ("foo=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~", "foo=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"),
            // Key characters; multi-tenant keys.
            ("a0_-*/=1", "a0_-*/=1"),
            ("fw529a3039@dt=1,0tenant@sys-1*/=2", "fw529a3039@dt=1,0tenant@sys-1*/=2"),
        ] {
            assert_eq!(parse_tracestate(value).as_deref(), Some(normalised), "{value:?}");
        }
        // Length limits, at the limit.
        let key256 = format!("{}=1", "z".repeat(256));
        let tenant241 = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
        let value256 = format!("foo={}", "v".repeat(256));
        for v in [key256, tenant241, value256] {
            assert!(parse_tracestate(&format!("foo1=1,{v}")).is_some(), "{v:?}");
        }
        let thirty_two = (0..32).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert!(parse_tracestate(&thirty_two).is_some());
    }

    #[test]
    fn tracestate_invalid_values() {
        let too_many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let long = [
            format!("foo=1,{}=1", "z".repeat(257)),
            format!("foo=1,{}@{}=1", "t".repeat(242), "v".repeat(14)),
            format!("foo=1,{}@{}=1", "t".repeat(241), "v".repeat(15)),
            format!("foo={}", "v".repeat(257)),
            too_many,
        ];
        for bad in [
            // key characters
            "foo =1",
            "FOO=1",
            "Foo=1",
            "foo.bar=1",
            "1foo=1",
            "_foo=1",
            "=1",
            // multi-tenant keys
            "foo@=1,bar=2",
            "@foo=1,bar=2",
            "foo@@bar=1,bar=2",
            "foo@bar@baz=1,bar=2",
            "foo@1bar=1",
            "_foo@bar=1",
            // values
            "foo=bar=baz",
            "foo=,bar=3",
            "foo",
            "foo=1,bar",
            "foo=a\tb",
            "foo=\u{e9}",
            "foo=\u{7f}",
            // duplicated keys
            "foo=1,foo=1",
            "foo=1,bar=2,foo=3",
        ]
        .into_iter()
        .chain(long.iter().map(String::as_str))
        {
            assert_eq!(parse_tracestate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tracestate_headers_are_combined_and_discarded_whole() {
        let ctx = ext(&[
            ("traceparent", VALID),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ])
        .unwrap();
        assert_eq!(ctx.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(ctx.format, Format::W3c);
        // 32 members over two headers is fine, 33 is not; duplicates across headers are not.
        let first = (0..16).map(|i| format!("a{i}=v")).collect::<Vec<_>>().join(",");
        let second = (0..16).map(|i| format!("b{i}=v")).collect::<Vec<_>>().join(",");
        let ctx = ext(&[("tracestate", &first), ("traceparent", VALID), ("tracestate", &second)]).unwrap();
        assert_eq!(ctx.trace_state, format!("{first},{second}"));
        let ctx =
            ext(&[("traceparent", VALID), ("tracestate", &first), ("tracestate", &second), ("tracestate", "c=1")])
                .unwrap();
        assert_eq!(ctx.trace_state, "");
        let ctx = ext(&[("traceparent", VALID), ("tracestate", "foo=1"), ("tracestate", "foo=2")]).unwrap();
        assert_eq!(ctx.trace_state, "");
        // An invalid tracestate does not affect the traceparent.
        let ctx = ext(&[("traceparent", VALID), ("tracestate", "Bad=1")]).unwrap();
        assert_eq!(ids(&ctx), (TRACE.into(), SPAN.into(), 1, Format::W3c));
        assert_eq!(ctx.trace_state, "");
        // Empty tracestate header.
        assert_eq!(ext(&[("traceparent", VALID), ("tracestate", "")]).unwrap().trace_state, "");
    }

    #[test]
    fn duplicate_traceparent_is_ignored() {
        assert_eq!(ext(&[("traceparent", VALID), ("traceparent", VALID)]), None);
        let other = VALID.replace("00f067aa0ba902b7", "1111111111111111");
        assert_eq!(ext(&[("traceparent", VALID), ("traceparent", &other)]), None);
        // An invalid second one still makes the first ambiguous.
        assert_eq!(ext(&[("traceparent", VALID), ("traceparent", "garbage")]), None);
    }

    // ----- B3 single -----

    const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const B3_SPAN: &str = "e457b5a2e4d86bd1";
    const B3_PARENT: &str = "05e3ac9a4f6e3b90";

    fn b3(value: &str) -> Option<(String, String, u8, Format)> {
        parse_b3_single(value).map(|c| ids(&c))
    }

    #[test]
    fn b3_single_readme_examples() {
        let ok = |flags| Some((B3_TRACE.to_owned(), B3_SPAN.to_owned(), flags, Format::B3Single));
        assert_eq!(b3(&format!("{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}")), ok(1));
        assert_eq!(b3(&format!("{B3_TRACE}-{B3_SPAN}-1")), ok(1));
        assert_eq!(b3(&format!("{B3_TRACE}-{B3_SPAN}")), ok(0), "deferred");
        assert_eq!(b3(&format!("{B3_TRACE}-{B3_SPAN}-d")), ok(1), "debug implies accept");
        assert_eq!(b3(&format!("{B3_TRACE}-{B3_SPAN}-0")), ok(0), "deny keeps the ids");
        assert_eq!(b3(&format!("{B3_TRACE}-{B3_SPAN}-0-{B3_PARENT}")), ok(0));
        assert_eq!(b3(&format!(" {B3_TRACE}-{B3_SPAN}-1 ")), ok(1));
        // The README's examples with the parent and span positions swapped parse as written.
        let swapped = b3(&format!("{B3_TRACE}-{B3_PARENT}-1-{B3_SPAN}")).unwrap();
        assert_eq!(swapped.1, B3_PARENT);
        // Sampling state only: no ids, no context.
        for only in ["0", "1", "d", ""] {
            assert_eq!(b3(only), None, "{only:?}");
        }
        // 64-bit trace ids are left-padded to 128 bits.
        let ctx = parse_b3_single(&format!("a3ce929d0e0e4736-{B3_SPAN}-1")).unwrap();
        assert_eq!(hex(&ctx.trace_id), "0000000000000000a3ce929d0e0e4736");
    }

    #[test]
    fn b3_single_invalid_values() {
        let (t, s, p) = (B3_TRACE, B3_SPAN, B3_PARENT);
        for bad in [
            format!("{}-{s}-1", t.to_uppercase()),
            format!("{t}-{}-1", s.to_uppercase()),
            format!("{t}-{s}-1-{}", p.to_uppercase()),
            format!("{}-{s}-1", &t[1..]),
            format!("{}-{s}-1", &t[..20]),
            format!("0{t}-{s}-1"),
            format!("{t}-{}-1", &s[1..]),
            format!("{t}-0{s}-1"),
            format!("{t}-{s}-1-{}", &p[1..]),
            format!("{t}-{s}-2"),
            format!("{t}-{s}-D"),
            format!("{t}-{s}-true"),
            format!("{t}-{s}-"),
            format!("{t}-{s}--{p}"),
            format!("{t}-{s}-1-{p}-"),
            format!("{t}-{s}-1-{p}-extra"),
            format!("{t}--1"),
            format!("-{s}-1"),
            t.to_owned(),
            format!("{}-{s}-1", "0".repeat(32)),
            format!("{}-{s}-1", "0".repeat(16)),
            format!("{t}-{}-1", "0".repeat(16)),
            format!("{t}-{s}-1-{}", "0".repeat(16)),
            format!("{t}:{s}:1"),
        ] {
            assert_eq!(b3(&bad), None, "{bad:?}");
        }
    }

    // ----- B3 multi -----

    #[test]
    fn b3_multi_readme_examples() {
        // The README's multi-header example.
        let ctx = ext(&[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-parentspanid", B3_PARENT),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-sampled", "1"),
        ])
        .unwrap();
        assert_eq!(ids(&ctx), (B3_TRACE.into(), B3_SPAN.into(), 1, Format::B3Multi));
        assert_eq!(ctx.trace_state, "");
        // The README's single-field examples.
        let ctx = parse_b3_multi(
            "463ac35c9f6413ad48485a3953bb6124",
            "a2fb4a1d1a96d312",
            Some("0020000000000001"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            ids(&ctx),
            ("463ac35c9f6413ad48485a3953bb6124".into(), "a2fb4a1d1a96d312".into(), 0, Format::B3Multi)
        );
        // 64-bit trace id: left-padded.
        let ctx = parse_b3_multi("a3ce929d0e0e4736", B3_SPAN, None, Some("1"), None).unwrap();
        assert_eq!(hex(&ctx.trace_id), "0000000000000000a3ce929d0e0e4736");
    }

    #[test]
    fn b3_multi_sampling_and_debug() {
        let sampled = |s: Option<&str>, f: Option<&str>| parse_b3_multi(B3_TRACE, B3_SPAN, None, s, f).map(|c| c.flags);
        assert_eq!(sampled(Some("1"), None), Some(1));
        assert_eq!(sampled(Some("0"), None), Some(0));
        assert_eq!(sampled(None, None), Some(0), "deferred");
        // Older tracers: true/false.
        assert_eq!(sampled(Some("true"), None), Some(1));
        assert_eq!(sampled(Some("True"), None), Some(1));
        assert_eq!(sampled(Some("false"), None), Some(0));
        // Debug implies accept, whatever the sampled header says.
        assert_eq!(sampled(None, Some("1")), Some(1));
        assert_eq!(sampled(Some("0"), Some("1")), Some(1));
        assert_eq!(sampled(Some("0"), Some("0")), Some(0));
        // Not per spec.
        for bad in ["2", "yes", "", "d", "01"] {
            assert_eq!(sampled(Some(bad), None), None, "sampled {bad:?}");
        }
        for bad in ["2", "true", "d", ""] {
            assert_eq!(sampled(None, Some(bad)), None, "flags {bad:?}");
        }
    }

    #[test]
    fn b3_multi_invalid_values() {
        let multi = |t: &str, s: &str, p: Option<&str>| parse_b3_multi(t, s, p, Some("1"), None);
        assert!(multi(B3_TRACE, B3_SPAN, Some(B3_PARENT)).is_some());
        assert!(multi(&B3_TRACE.to_uppercase(), B3_SPAN, None).is_none());
        assert!(multi(&B3_TRACE[..31], B3_SPAN, None).is_none());
        assert!(multi(&B3_TRACE[..20], B3_SPAN, None).is_none());
        assert!(multi(&"0".repeat(32), B3_SPAN, None).is_none());
        assert!(multi(&"0".repeat(16), B3_SPAN, None).is_none());
        assert!(multi(B3_TRACE, &"0".repeat(16), None).is_none());
        assert!(multi(B3_TRACE, &B3_SPAN[..15], None).is_none());
        assert!(multi(B3_TRACE, B3_TRACE, None).is_none());
        assert!(multi(B3_TRACE, B3_SPAN, Some(&"0".repeat(16))).is_none());
        assert!(multi(B3_TRACE, B3_SPAN, Some("05e3ac9a4f6e3b9")).is_none());
        assert!(multi(B3_TRACE, B3_SPAN, Some("")).is_none());
        // Both ids are required.
        assert_eq!(ext(&[("x-b3-traceid", B3_TRACE), ("x-b3-sampled", "1")]), None);
        assert_eq!(ext(&[("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "1")]), None);
        assert_eq!(ext(&[("x-b3-sampled", "1")]), None);
        assert_eq!(ext(&[("x-b3-flags", "1")]), None);
    }

    #[test]
    fn b3_multi_first_value_wins() {
        let other = "1111111111111111";
        let ctx = ext(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-spanid", other)]).unwrap();
        assert_eq!(hex(&ctx.span_id), B3_SPAN);
        let ctx =
            ext(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "0"), ("x-b3-sampled", "1")]);
        assert_eq!(ctx.unwrap().flags, 0);
    }

    // ----- Jaeger -----

    fn jaeger(value: &str) -> Option<(String, String, u8, Format)> {
        parse_uber_trace_id(value).map(|c| ids(&c))
    }

    #[test]
    fn jaeger_examples() {
        let full = |t: &str, s: &str, f| Some((t.to_owned(), s.to_owned(), f, Format::Jaeger));
        // OpenTelemetry's Jaeger propagator example.
        assert_eq!(
            jaeger("000000000000000000000000deadbeef:00000000deadbef0:00000000:01"),
            full("000000000000000000000000deadbeef", "00000000deadbef0", 1)
        );
        // 64-bit ids, parent 0 (root), one-digit flags, as Jaeger clients send.
        assert_eq!(
            jaeger("51729f13a64c2ef3:51729f13a64c2ef3:0:1"),
            full("000000000000000051729f13a64c2ef3", "51729f13a64c2ef3", 1)
        );
        assert_eq!(
            jaeger("51729f13a64c2ef3:258169797d519815:51729f13a64c2ef3:1"),
            full("000000000000000051729f13a64c2ef3", "258169797d519815", 1)
        );
        // 128-bit.
        assert_eq!(jaeger(&format!("{TRACE}:{SPAN}:0:1")), full(TRACE, SPAN, 1));
        // Shorter ids (no leading zeros) are left-padded.
        assert_eq!(jaeger("abc:1:0:1"), full("00000000000000000000000000000abc", "0000000000000001", 1));
        assert_eq!(jaeger("1a2b3c4d5e6f7a8b9:1:0:1"), full("0000000000000001a2b3c4d5e6f7a8b9", "0000000000000001", 1));
        // Base16 in either case.
        assert_eq!(jaeger("ABC:DEF:0:1"), full("00000000000000000000000000000abc", "0000000000000def", 1));
    }

    #[test]
    fn jaeger_flags() {
        let flags = |f: &str| parse_uber_trace_id(&format!("abc:def:0:{f}")).map(|c| c.flags);
        assert_eq!(flags("0"), Some(0));
        assert_eq!(flags("00"), Some(0));
        assert_eq!(flags("1"), Some(1));
        assert_eq!(flags("01"), Some(1));
        assert_eq!(flags("2"), Some(1), "debug implies sampled");
        assert_eq!(flags("3"), Some(1));
        assert_eq!(flags("8"), Some(0), "firehose alone is not sampled");
        assert_eq!(flags("9"), Some(1));
        assert_eq!(flags("0b"), Some(1));
        assert_eq!(flags("ff"), Some(1));
        assert_eq!(flags("f0"), Some(0));
        for bad in ["", "001", "x", "-1", "0x1", " 1"] {
            assert_eq!(flags(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn jaeger_url_encoded() {
        let want =
            Some(("000000000000000051729f13a64c2ef3".to_owned(), "258169797d519815".to_owned(), 1, Format::Jaeger));
        assert_eq!(jaeger("51729f13a64c2ef3%3A258169797d519815%3A51729f13a64c2ef3%3A1"), want);
        assert_eq!(jaeger("51729f13a64c2ef3%3a258169797d519815%3a0%3a1"), want);
        assert_eq!(jaeger("51729f13a64c2ef3%3A258169797d519815:0%3A1"), want);
        // Via extract, too.
        let ctx = ext(&[("uber-trace-id", "51729f13a64c2ef3%3A258169797d519815%3A0%3A1")]).unwrap();
        assert_eq!(ctx.format, Format::Jaeger);
        for bad in
            ["51729f13a64c2ef3%3258169797d519815%3A0%3A1", "abc%3Adef%3A0%3A1%", "abc%3Adef%3A0%3A1%3", "abc%zzdef:0:1"]
        {
            assert_eq!(jaeger(bad), None, "{bad:?}");
        }
        // Longer than any valid value once decoded.
        let long = format!("{}%3A1%3A0%3A1", "%30".repeat(100));
        assert_eq!(jaeger(&long), None);
    }

    #[test]
    fn jaeger_invalid_values() {
        for bad in [
            "",
            "0:def:0:1",
            "00000000000000000000000000000000:def:0:1",
            "abc:0:0:1",
            "abc:0000000000000000:0:1",
            "abc:def:0",
            "abc:def:0:1:2",
            "abc:def::1",
            ":def:0:1",
            "abc::0:1",
            "abc:def:0:",
            "abc-def-0-1",
            "0123456789abcdef0123456789abcdef0:def:0:1",
            "abc:0123456789abcdef0:0:1",
            "abc:def:0123456789abcdef0:1",
            "xyz:def:0:1",
            "abc:d f:0:1",
            "abc:def:g:1",
        ] {
            assert_eq!(jaeger(bad), None, "{bad:?}");
        }
    }

    // ----- Precedence -----

    #[test]
    fn precedence_w3c_then_b3_single_then_b3_multi_then_jaeger() {
        let single = format!("{B3_TRACE}-{B3_SPAN}-1");
        let jaeger_value = "abc:def:0:1";
        let multi_trace = "1111111111111111aaaaaaaaaaaaaaaa";
        let multi_span = "2222222222222222";
        let all = |tp: &str, b3: &str, b3_trace: &str| {
            ext(&[
                ("uber-trace-id", jaeger_value),
                ("x-b3-traceid", b3_trace),
                ("x-b3-spanid", multi_span),
                ("x-b3-sampled", "1"),
                ("b3", b3),
                ("traceparent", tp),
                ("tracestate", "congo=t61rcWkgMzE"),
            ])
        };
        let ctx = all(VALID, &single, multi_trace).unwrap();
        assert_eq!(ids(&ctx), (TRACE.into(), SPAN.into(), 1, Format::W3c));
        assert_eq!(ctx.trace_state, "congo=t61rcWkgMzE");
        // Invalid W3C: B3 single, and the tracestate is not carried over.
        let ctx = all("00-garbage", &single, multi_trace).unwrap();
        assert_eq!(ids(&ctx), (B3_TRACE.into(), B3_SPAN.into(), 1, Format::B3Single));
        assert_eq!(ctx.trace_state, "");
        // Invalid W3C and B3 single (sampling only): B3 multi.
        let ctx = all("00-garbage", "1", multi_trace).unwrap();
        assert_eq!(ids(&ctx), (multi_trace.into(), multi_span.into(), 1, Format::B3Multi));
        // Everything else invalid: Jaeger.
        let ctx = all("00-garbage", "1", "nope").unwrap();
        assert_eq!(
            ids(&ctx),
            ("00000000000000000000000000000abc".into(), "0000000000000def".into(), 1, Format::Jaeger)
        );
        // Nothing valid.
        assert_eq!(
            ext(&[
                ("traceparent", "x"),
                ("b3", "0"),
                ("x-b3-traceid", "x"),
                ("x-b3-spanid", "y"),
                ("uber-trace-id", "0:0:0:0")
            ]),
            None
        );
        assert_eq!(ext(&[]), None);
        assert_eq!(ext(&[("host", "example.com"), ("tracestate", "congo=t61rcWkgMzE")]), None);
        // Duplicated traceparent: falls through to the next valid format.
        let ctx = ext(&[("traceparent", VALID), ("traceparent", VALID), ("b3", &single)]).unwrap();
        assert_eq!(ctx.format, Format::B3Single);
        // Jaeger alone, B3 multi over Jaeger.
        assert_eq!(ext(&[("uber-trace-id", jaeger_value)]).unwrap().format, Format::Jaeger);
        let ctx = ext(&[("uber-trace-id", jaeger_value), ("x-b3-spanid", multi_span), ("x-b3-traceid", multi_trace)]);
        assert_eq!(ctx.unwrap().format, Format::B3Multi);
    }

    #[test]
    fn unsampled_contexts_keep_their_ids_with_flags_zero() {
        let w3c = ext(&[("traceparent", &VALID.replace("-01", "-00"))]).unwrap();
        let single = ext(&[("b3", &format!("{B3_TRACE}-{B3_SPAN}-0"))]).unwrap();
        let multi = ext(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "0")]).unwrap();
        let jaeger = ext(&[("uber-trace-id", "abc:def:0:0")]).unwrap();
        for (ctx, format) in
            [(w3c, Format::W3c), (single, Format::B3Single), (multi, Format::B3Multi), (jaeger, Format::Jaeger)]
        {
            assert_eq!((ctx.flags, ctx.format, ctx.is_sampled()), (0, format, false));
            assert_ne!(ctx.trace_id, [0; 16]);
            assert_ne!(ctx.span_id, [0; 8]);
        }
    }

    #[test]
    fn header_names_are_matched_case_insensitively() {
        assert_eq!(ext(&[("Traceparent", VALID)]).unwrap().format, Format::W3c);
        assert_eq!(ext(&[("B3", &format!("{B3_TRACE}-{B3_SPAN}"))]).unwrap().format, Format::B3Single);
        assert_eq!(ext(&[("X-B3-TraceId", B3_TRACE), ("X-B3-SpanId", B3_SPAN)]).unwrap().format, Format::B3Multi);
        assert_eq!(ext(&[("Uber-Trace-Id", "abc:def:0:1")]).unwrap().format, Format::Jaeger);
    }

    #[test]
    fn format_names() {
        let names = [Format::W3c, Format::B3Single, Format::B3Multi, Format::Jaeger].map(Format::name);
        assert_eq!(names, ["w3c", "b3", "b3multi", "jaeger"]);
    }

    // ----- x-request-id -----

    #[test]
    fn request_id_is_the_first_trimmed_value() {
        fn rid<'a>(h: &[(&'a str, &'a str)]) -> Option<&'a str> {
            request_id(h.iter().map(|(n, v)| (*n, *v)))
        }
        assert_eq!(rid(&[("host", "x"), ("x-request-id", " abc-123 "), ("x-request-id", "def")]), Some("abc-123"));
        assert_eq!(rid(&[("X-Request-ID", "abc")]), Some("abc"));
        assert_eq!(rid(&[("host", "x")]), None);
        assert_eq!(rid(&[("x-request-id", "  "), ("x-request-id", "def")]), None, "only the first counts");
        assert_eq!(rid(&[("x-request-id", "")]), None);
        let (at_limit, over) = ("r".repeat(256), "r".repeat(257));
        assert_eq!(rid(&[("x-request-id", at_limit.as_str())]), Some(at_limit.as_str()));
        assert_eq!(rid(&[("x-request-id", over.as_str())]), None);
    }

    // ----- Garbage -----

    /// xorshift64*: a fixed, dependency-free sequence.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `base` with a few random edits: characters deleted, truncated, pieces inserted.
    fn mutate(rng: &mut Rng, base: &str) -> String {
        const PIECES: &str =
            "0|1|9|a|d|f|g|A|F|z|-|:|%|%3A|%3a|@|=|,| |\t|_|*|/|.|\u{e9}|\u{1f600}|\0|\x7f|ff|00|0000000000000000";
        let pieces: Vec<&str> = PIECES.split('|').collect();
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..rng.below(6) {
            match rng.below(4) {
                0 if !chars.is_empty() => {
                    chars.remove(rng.below(chars.len()));
                }
                1 if !chars.is_empty() => chars.truncate(rng.below(chars.len())),
                _ => {
                    let at = rng.below(chars.len() + 1);
                    let piece = pieces[rng.below(pieces.len())];
                    chars.splice(at..at, piece.chars());
                }
            }
        }
        chars.into_iter().collect()
    }

    #[test]
    fn garbage_never_panics_nor_yields_zero_ids() {
        // Valid values for every header read; inputs are these, mutated, or noise.
        let valid = [
            ("traceparent", VALID),
            ("traceparent", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE, t@s=v"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
            ("b3", "a3ce929d0e0e4736-e457b5a2e4d86bd1-d"),
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-parentspanid", B3_PARENT),
            ("x-b3-sampled", "true"),
            ("x-b3-flags", "1"),
            ("uber-trace-id", "51729f13a64c2ef3:258169797d519815:0:1"),
            ("uber-trace-id", "abc%3A1%3A0%3A3"),
            ("x-request-id", " 3f2a-11 "),
        ];
        let check = |ctx: &SpanContext| {
            assert_ne!(ctx.trace_id, [0; 16]);
            assert_ne!(ctx.span_id, [0; 8]);
            if ctx.format != Format::W3c {
                assert!(ctx.flags <= 1 && ctx.trace_state.is_empty());
            }
        };
        let mut rng = Rng(0x5eed_f00d);
        let mut found = [0usize; 4];
        for _ in 0..20_000 {
            let pick = |rng: &mut Rng| {
                let (name, value) = valid[rng.below(valid.len())];
                let value = match rng.below(4) {
                    0 => value.to_owned(),
                    1 => mutate(rng, ""),
                    _ => mutate(rng, value),
                };
                (name, value)
            };
            let headers: Vec<(&str, String)> = (0..rng.below(10)).map(|_| pick(&mut rng)).collect();
            if let Some(ctx) = extract(headers.iter().map(|(n, v)| (*n, v.as_str()))) {
                check(&ctx);
                found[ctx.format as usize] += 1;
            }
            if let Some(id) = request_id(headers.iter().map(|(n, v)| (*n, v.as_str()))) {
                assert!(!id.is_empty() && id.len() <= MAX_REQUEST_ID && id.trim() == id);
            }

            let (v, w) = (pick(&mut rng).1, pick(&mut rng).1);
            if let Some((t, s, _)) = parse_traceparent(&v) {
                assert!(t != [0; 16] && s != [0; 8]);
            }
            if let Some(ts) = parse_tracestate(&v) {
                assert_eq!(parse_tracestate(&ts).as_deref(), Some(ts.as_str()), "normalised form re-parses");
            }
            for ctx in [parse_b3_single(&v), parse_uber_trace_id(&v)].iter().flatten() {
                check(ctx);
            }
            if let Some(ctx) = parse_b3_multi(&v, &w, Some(v.as_str()), Some(w.as_str()), Some(v.as_str())) {
                check(&ctx);
            }
        }
        // Every format was also reached through the mutations.
        assert!(found.iter().all(|&n| n > 100), "{found:?}");
    }
}
