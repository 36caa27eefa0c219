//! Trace context carried in request headers. W3C Trace Context (`traceparent`,
//! `tracestate`) per <https://www.w3.org/TR/trace-context/>.

/// A remote parent: the span that sent the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    /// Validated `tracestate`, empty when absent or invalid.
    pub trace_state: String,
}

/// Parses a `traceparent` header value.
///
/// Version `00` must be exactly 55 characters. A higher version (anything but `ff`) is
/// parsed by the version-00 layout and may carry more fields after a `-`, as the spec
/// requires for forward compatibility. Ids must be lower-case hex and not all zero.
#[must_use]
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = value.trim_matches([' ', '\t']).as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// Validates a `tracestate` value (already joined from repeated headers with `,`):
/// at most 32 list members of `key=value`, with the spec's character sets. An invalid
/// value is discarded as a whole, as the spec asks.
#[must_use]
pub fn parse_tracestate(value: &str) -> Option<String> {
    let mut members = 0;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > 32 {
            return None;
        }
        let (key, val) = member.split_once('=')?;
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
            });
        let val_ok = !val.is_empty()
            && val.len() <= 256
            && val.bytes().all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
            && !val.ends_with(' ');
        if !key_ok || !val_ok {
            return None;
        }
    }
    Some(value.trim_matches([' ', '\t']).to_owned())
}

/// Extracts the W3C context from request headers (names lower-case).
#[must_use]
pub fn extract<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Option<SpanContext> {
    let mut parents = headers.clone().filter(|(n, _)| *n == "traceparent");
    let (_, tp) = parents.next()?;
    // More than one traceparent header is ambiguous: ignore them all.
    if parents.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(tp)?;
    let joined: Vec<&str> = headers.filter(|(n, _)| *n == "tracestate").map(|(_, v)| v).collect();
    let trace_state =
        if joined.is_empty() { String::new() } else { parse_tracestate(&joined.join(",")).unwrap_or_default() };
    Some(SpanContext { trace_id, span_id, flags, trace_state })
}

/// Two lower-case hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(*two.first()?)? << 4 | nibble(*two.get(1)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn spec_example_parses() {
        let (t, s, f) = parse_traceparent(VALID).unwrap();
        assert_eq!(crate::span::model::hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(crate::span::model::hex(&s), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        // Python's SDK sends flags 03 (sampled + random): accepted.
        assert_eq!(parse_traceparent(&VALID.replace("-01", "-03")).unwrap().2, 3);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-xx",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn higher_versions_follow_the_forward_compatibility_rules() {
        let v1 = VALID.replacen("00", "01", 1);
        assert!(parse_traceparent(&v1).is_some());
        assert!(parse_traceparent(&format!("{v1}-future-stuff")).is_some());
        assert!(parse_traceparent(&format!("{v1}x")).is_none());
    }

    #[test]
    fn tracestate_is_kept_or_discarded_whole() {
        let headers = [("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE"), ("tracestate", "rojo=00f067aa0ba902b7")];
        let ctx = extract(headers.iter().map(|(a, b)| (*a, *b))).unwrap();
        assert_eq!(ctx.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(parse_tracestate("Bad=1"), None);
        let too_many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(parse_tracestate(&too_many), None);
    }

    #[test]
    fn duplicate_traceparent_is_ignored() {
        let headers = [("traceparent", VALID), ("traceparent", VALID)];
        assert_eq!(extract(headers.iter().map(|(a, b)| (*a, *b))), None);
    }
}
