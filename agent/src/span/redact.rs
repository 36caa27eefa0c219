//! Secrets never leave the agent: query parameters that carry credentials and URL
//! user-info are replaced by `REDACTED`. (Headers are captured by name from an allow list,
//! so `Authorization` and `Cookie` are never recorded; bodies are never captured.)

const REDACTED: &str = "REDACTED";

/// Query parameter names (lower-cased) whose values are credentials. Includes the
/// signed-URL parameters the OpenTelemetry semantic conventions ask to redact.
const SENSITIVE: &[&str] = &[
    "access_token",
    "api_key",
    "api-key",
    "apikey",
    "auth",
    "authorization",
    "client_secret",
    "code",
    "id_token",
    "jwt",
    "key",
    "password",
    "passwd",
    "pwd",
    "refresh_token",
    "secret",
    "session",
    "sessionid",
    "sig",
    "signature",
    "token",
    "awsaccesskeyid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// Redacts the values of sensitive parameters in a query string (without `?`).
#[must_use]
pub fn query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    query_into(q, &mut out);
    out
}

/// [`query`], appended to `out` (no allocation of its own).
pub fn query_into(q: &str, out: &mut impl std::fmt::Write) {
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            let _ = out.write_char('&');
        }
        let _ = match pair.split_once('=') {
            Some((k, _)) if is_sensitive(k) => out.write_str(k).and(out.write_char('=')).and(out.write_str(REDACTED)),
            _ => out.write_str(pair),
        };
    }
}

/// Whether a query parameter name carries a credential (compared without case).
fn is_sensitive(name: &str) -> bool {
    SENSITIVE.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Redacts user-info and sensitive query values of an absolute URL.
#[must_use]
pub fn url(u: &str) -> String {
    let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}:{REDACTED}@{host}"),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((p, q)) => format!("{p}?{}", query(q)),
        None => tail.to_owned(),
    };
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(query("a=1&Token=abc&sig=x"), "a=1&Token=REDACTED&sig=REDACTED");
        assert_eq!(query("flag&page=2"), "flag&page=2");
        assert_eq!(url("http://u:p@h:1/x?api_key=k&q=1"), "http://REDACTED:REDACTED@h:1/x?api_key=REDACTED&q=1");
    }
}
