//! Exchanges → spans, named and attributed per the OpenTelemetry HTTP semantic
//! conventions (stable HTTP conventions, `http.request.method`, `url.*`, `server.*`,
//! `client.*`, `network.*`).
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use super::context;
use super::link::Identity;
use super::model::{AttrValue, Attribute, Resource, Span, SpanKind, Status};
use super::redact;
use crate::conn::ExchangeRecord;
use crate::protocol::Role;

/// Converts kernel monotonic timestamps (`bpf_ktime_get_ns`) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Measures the current offset between the monotonic and the real-time clock.
    #[must_use]
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self { offset_ns: real - mono }
    }

    #[must_use]
    pub fn to_unix_ns(self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Builds one span from one exchange, with the identity the linker gave it.
#[must_use]
pub fn build(rec: &ExchangeRecord, id: Identity, resource: Arc<Resource>, clock: Clock) -> Span {
    let req = &rec.exchange.request;
    let resp = &rec.exchange.response;
    let conn = &rec.conn;

    let (kind, start, end) = match conn.role {
        // A server's request starts when its first bytes are read.
        Role::Server => (SpanKind::Server, rec.exchange.request_first.exit_ns, rec.exchange.response_last.exit_ns),
        // A client's request starts when it begins writing it.
        Role::Client => (SpanKind::Client, rec.exchange.request_first.enter_ns, rec.exchange.response_last.exit_ns),
    };

    let method_known = KNOWN_METHODS.contains(&req.method.as_str());
    let method = if method_known { req.method.as_str() } else { "_OTHER" };
    let (path, query) = split_target(&req.target);
    let name = if method_known { req.method.clone() } else { "HTTP".to_owned() };

    let mut attrs: Vec<Attribute> = Vec::with_capacity(20);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    put("http.request.method", method.into());
    if !method_known {
        put("http.request.method_original", req.method.as_str().into());
    }
    put("http.response.status_code", i64::from(resp.status).into());
    put("network.protocol.version", if req.version_minor == 0 { "1.0" } else { "1.1" }.into());
    put("network.peer.address", conn.peer.ip().to_string().into());
    put("network.peer.port", i64::from(conn.peer.port()).into());
    put("network.local.address", conn.local.ip().to_string().into());
    put("network.local.port", i64::from(conn.local.port()).into());
    let host = req.header("host").map(split_host);
    match kind {
        SpanKind::Server => {
            put("url.scheme", "http".into());
            put("url.path", path.into());
            if let Some(q) = query {
                put("url.query", redact::query(q).into());
            }
            let (addr, port) = host.unwrap_or_else(|| (conn.local.ip().to_string(), Some(conn.local.port())));
            put("server.address", addr.into());
            put("server.port", i64::from(port.unwrap_or(conn.local.port())).into());
            put("client.address", conn.peer.ip().to_string().into());
            put("client.port", i64::from(conn.peer.port()).into());
        }
        SpanKind::Client => {
            let (addr, port) = host.unwrap_or_else(|| (conn.peer.ip().to_string(), Some(conn.peer.port())));
            let port = port.unwrap_or(conn.peer.port());
            put("url.full", full_url(&req.target, &addr, port, &conn.peer).into());
            put("server.address", addr.into());
            put("server.port", i64::from(port).into());
        }
    }
    if let Some(ua) = req.header("user-agent") {
        put("user_agent.original", ua.into());
    }
    if let Some(rid) = context::request_id(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
        put("http.request.header.x-request-id", rid.into());
    }
    put("ghostwire.link", id.link.name().into());
    if let Some(format) = id.format {
        put("ghostwire.context.format", format.name().into());
    }
    if id.propagation_break.is_some() {
        put("ghostwire.propagation_break", true.into());
    }
    if req.truncated || resp.truncated {
        // A head larger than what could be seen: the attributes come from its start.
        put("ghostwire.truncated", true.into());
    }
    if req.body_len > 0 {
        put("http.request.body.size", i64::try_from(req.body_len).unwrap_or(i64::MAX).into());
    }
    if resp.body_len > 0 {
        put("http.response.body.size", i64::try_from(resp.body_len).unwrap_or(i64::MAX).into());
    }
    let is_error = match kind {
        SpanKind::Server => resp.status >= 500,
        SpanKind::Client => resp.status >= 400,
    };
    let status = if is_error {
        put("error.type", resp.status.to_string().into());
        Status::Error { message: String::new() }
    } else {
        Status::Unset
    };

    Span {
        trace_id: id.trace_id,
        span_id: id.span_id,
        parent_span_id: id.parent_span_id,
        trace_state: id.trace_state,
        flags: id.flags,
        name,
        kind,
        start_unix_ns: clock.to_unix_ns(start),
        end_unix_ns: clock.to_unix_ns(end.max(start)),
        status,
        attributes: attrs,
        resource,
    }
}

/// `/path?query` → (path, query). Absolute-form targets (`http://host/path?q`) give
/// their path.
fn split_target(target: &str) -> (&str, Option<&str>) {
    let origin = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    let origin = origin.split('#').next().unwrap_or(origin);
    match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    }
}

/// `Host` header → (host, port).
fn split_host(h: &str) -> (String, Option<u16>) {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, tail)) = rest.split_once(']') {
            return (addr.to_owned(), tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => (a.to_owned(), p.parse().ok()),
        _ => (h.to_owned(), None),
    }
}

fn full_url(target: &str, host: &str, port: u16, peer: &SocketAddr) -> String {
    if target.contains("://") {
        return redact::url(target);
    }
    let _ = peer;
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let authority = if port == 80 { host } else { format!("{host}:{port}") };
    let (path, query) = split_target(target);
    match query {
        Some(q) => format!("http://{authority}{path}?{}", redact::query(q)),
        None => format!("http://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::ConnMeta;
    use crate::protocol::{Exchange, Request, Response, Timing};

    fn record(role: Role, headers: &[(&str, &str)], status: u16) -> ExchangeRecord {
        ExchangeRecord {
            key: crate::conn::ReqKey { conn: crate::capture::ConnId { sock: 1, gen: 1 }, seq: 0 },
            tid: 42,
            conn: ConnMeta {
                pid: 42,
                role,
                local: "127.0.0.1:8080".parse().unwrap(),
                peer: "127.0.0.1:50000".parse().unwrap(),
                netns: 0,
            },
            exchange: Exchange {
                seq: 0,
                request: Request {
                    method: "GET".into(),
                    target: "/users/7?token=secret&page=2".into(),
                    version_minor: 1,
                    headers: headers.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
                    body_len: 0,
                    truncated: false,
                    stream_offset: 0,
                },
                response: Response { status, version_minor: 1, headers: vec![], body_len: 12, truncated: false },
                request_first: Timing { enter_ns: 100, exit_ns: 110 },
                request_last: Timing { enter_ns: 100, exit_ns: 110 },
                response_first: Timing { enter_ns: 200, exit_ns: 210 },
                response_last: Timing { enter_ns: 300, exit_ns: 310 },
                h2: None,
            },
        }
    }

    fn resource() -> Arc<Resource> {
        Arc::new(Resource { pid: 42, service_name: "svc".into(), attributes: vec![] })
    }

    fn clock() -> Clock {
        Clock { offset_ns: 1_000_000 }
    }

    fn identity(link: super::super::link::LinkKind) -> Identity {
        Identity {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent_span_id: [9; 8],
            flags: 3,
            trace_state: "k=v".into(),
            link,
            format: None,
            propagation_break: Some(77),
        }
    }

    fn build_(rec: &ExchangeRecord, resource: Arc<Resource>, clock: Clock) -> Span {
        build(rec, identity(super::super::link::LinkKind::Socket), resource, clock)
    }

    #[test]
    fn server_span_attributes_and_timing() {
        let s = build_(&record(Role::Server, &[("host", "shop.local:8080")], 200), resource(), clock());
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.name, "GET");
        assert_eq!(s.start_unix_ns, 1_000_110);
        assert_eq!(s.end_unix_ns, 1_000_310);
        assert_eq!(s.attr("url.path"), Some(&AttrValue::Str("/users/7".into())));
        assert_eq!(s.attr("url.query"), Some(&AttrValue::Str("token=REDACTED&page=2".into())));
        assert_eq!(s.attr("server.address"), Some(&AttrValue::Str("shop.local".into())));
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(s.attr("client.port"), Some(&AttrValue::Int(50000)));
        assert_eq!(s.attr("http.response.status_code"), Some(&AttrValue::Int(200)));
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn identity_and_link_are_carried() {
        let s = build_(&record(Role::Server, &[("x-request-id", "req-1")], 200), resource(), clock());
        assert_eq!((s.trace_id, s.span_id, s.parent_span_id, s.flags), ([7; 16], [8; 8], [9; 8], 3));
        assert_eq!(s.trace_state, "k=v");
        assert_eq!(s.attr("ghostwire.link"), Some(&AttrValue::Str("socket".into())));
        assert_eq!(s.attr("ghostwire.propagation_break"), Some(&AttrValue::Bool(true)));
        assert_eq!(s.attr("http.request.header.x-request-id"), Some(&AttrValue::Str("req-1".into())));
    }

    #[test]
    fn truncated_heads_are_marked() {
        let mut rec = record(Role::Server, &[], 200);
        assert_eq!(build_(&rec, resource(), clock()).attr("ghostwire.truncated"), None);
        rec.exchange.request.truncated = true;
        assert_eq!(build_(&rec, resource(), clock()).attr("ghostwire.truncated"), Some(&AttrValue::Bool(true)));
        rec.exchange.request.truncated = false;
        rec.exchange.response.truncated = true;
        assert_eq!(build_(&rec, resource(), clock()).attr("ghostwire.truncated"), Some(&AttrValue::Bool(true)));
    }

    #[test]
    fn error_status_rules() {
        assert_eq!(build_(&record(Role::Server, &[], 404), resource(), clock()).status, Status::Unset);
        assert!(matches!(build_(&record(Role::Server, &[], 500), resource(), clock()).status, Status::Error { .. }));
        assert!(matches!(build_(&record(Role::Client, &[], 404), resource(), clock()).status, Status::Error { .. }));
    }

    #[test]
    fn client_span_url() {
        let s = build_(&record(Role::Client, &[("host", "api:8080")], 200), resource(), clock());
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.start_unix_ns, 1_000_100);
        assert_eq!(s.attr("url.full"), Some(&AttrValue::Str("http://api:8080/users/7?token=REDACTED&page=2".into())));
        assert_eq!(s.attr("server.address"), Some(&AttrValue::Str("api".into())));
    }

    #[test]
    fn host_and_target_splitting() {
        assert_eq!(split_host("[::1]:9000"), ("::1".to_owned(), Some(9000)));
        assert_eq!(split_host("example.com"), ("example.com".to_owned(), None));
        assert_eq!(split_target("http://h:1/a/b?x=1"), ("/a/b", Some("x=1")));
        assert_eq!(split_target("http://h:1"), ("/", None));
    }
}
