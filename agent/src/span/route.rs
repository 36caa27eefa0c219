//! Path templates: a raw URL path with its identifiers replaced by `*`, so that
//! `/users/4711/orders/9f2c…` and `/users/12/orders/…` are one route. Used where a route
//! must be a bounded label (metrics, adaptive sampling); spans keep the raw path.
use crate::span::model::Text;

/// Segments kept at most; a deeper path ends in `/…`.
const MAX_SEGMENTS: usize = 8;

/// Appends the template of `path` (query and fragment removed) to `out`.
pub fn template_into(path: &str, out: &mut Text) {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        out.push('*');
        return;
    }
    let mut segments = path[1..].split('/');
    let mut n = 0;
    for seg in segments.by_ref() {
        if n == MAX_SEGMENTS {
            out.push_str("/…");
            return;
        }
        out.push('/');
        if is_identifier(seg) {
            out.push('*');
        } else {
            out.push_str(seg);
        }
        n += 1;
    }
    if n == 0 {
        out.push('/');
    }
}

/// The template of `path`.
#[must_use]
pub fn template(path: &str) -> Text {
    let mut t = Text::default();
    template_into(path, &mut t);
    t
}

/// Whether a path segment looks like an identifier rather than a name: a number, a
/// hex string or UUID, a mostly numeric word, a long token or an encoded value.
/// Version words (`v1`, `v2beta1`) and dotted names (`grpc.health.v1.Health`) stay.
fn is_identifier(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.len() > 32 || b.iter().any(|c| matches!(c, b'%' | b'=' | b'@' | b':' | b'+' | b',' | b'~')) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    if digits == b.len() || (b.len() >= 8 && b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-')) {
        return true;
    }
    let version = b.len() <= 8 && b[0] == b'v' && b[1..].first().is_some_and(u8::is_ascii_digit);
    !version && digits * 2 >= b.len()
}

#[cfg(test)]
mod tests {
    use super::template;

    #[test]
    fn identifiers_become_stars_and_names_stay() {
        for (path, want) in [
            ("/", "/"),
            ("", "*"),
            ("*", "*"),
            ("/api/v1/users/4711", "/api/v1/users/*"),
            ("/users/550e8400-e29b-41d4-a716-446655440000/orders", "/users/*/orders"),
            ("/blob/9f2c4e1ab77d", "/blob/*"),
            ("/search?q=secret&token=abc", "/search"),
            ("/static/app.js", "/static/app.js"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/…"),
            ("/users/alice%40example.com", "/users/*"),
            ("/health/", "/health/"),
            ("/orders/12ab", "/orders/*"),
            ("/api/v2beta1/x", "/api/v2beta1/x"),
            ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check"),
        ] {
            assert_eq!(template(path), want, "{path}");
        }
    }
}
