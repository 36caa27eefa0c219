//! Exchanges → spans, named and attributed per the OpenTelemetry semantic conventions:
//! the stable HTTP conventions (`http.request.method`, `url.*`, `server.*`, `client.*`,
//! `network.*`) for HTTP/1 and HTTP/2, and the stable RPC conventions (`rpc.*`) for gRPC.
//! Spans of TLS connections (plaintext from the OpenSSL uprobes) say so: `url.scheme`
//! `https` and the `tls.*` attributes. Database calls follow the stable database
//! conventions (`db.*`), their query text sanitised ([`super::sql`]) unless
//! [`Options::raw_queries`].
use std::borrow::Cow;
use std::sync::Arc;

use super::context;
use super::link::{Confidence, Evidence, Identity, LinkKind};
use super::model::{AttrValue, Attribute, Resource, Span, SpanKind, Status, Text};
use super::redact;
use super::sql::{self, Dialect};
use crate::conn::ExchangeRecord;
use crate::protocol::{DbCall, DbSystem, Grpc, H2Exchange, Reset, Role};
use compact_str::ToCompactString as _;

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

/// Rewrites how a span was linked (a deferred link decided after the span was built).
pub fn set_link(span: &mut Span, link: LinkKind, evidence: Evidence, confidence: Option<Confidence>) {
    span.attributes.retain(|(k, _)| !matches!(k.as_ref(), "ghostwire.link.evidence" | "ghostwire.link.confidence"));
    for (k, v) in &mut span.attributes {
        if k == "ghostwire.link" {
            *v = AttrValue::fixed(link.name());
        }
    }
    if !evidence.is_empty() {
        span.attributes.push((Cow::Borrowed("ghostwire.link.evidence"), evidence.names().into()));
    }
    if let Some(c) = confidence {
        span.attributes.push((Cow::Borrowed("ghostwire.link.confidence"), AttrValue::fixed(c.name())));
    }
}

/// Marks a span that repairs a chain whose caller (`caller`, a service name) dropped
/// the context: visible in any backend.
pub fn mark_propagation_break(span: &mut Span, caller: &str) {
    if span.attr("ghostwire.propagation_break").is_none() {
        span.attributes.push((Cow::Borrowed("ghostwire.propagation_break"), true.into()));
    }
    span.attributes.push((Cow::Borrowed("ghostwire.propagation_break.caller"), caller.into()));
}

/// How spans are built.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Database query texts and error messages as sent, literals included (UNSAFE: they
    /// carry parameter values; `--unsafe-raw-queries`). Off: every literal is `?`.
    pub raw_queries: bool,
}

const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Builds one span from one exchange, with the identity the linker gave it: an HTTP
/// span (HTTP/1 or HTTP/2), an RPC span for a gRPC call, or a database span.
#[must_use]
pub fn build(rec: &ExchangeRecord, id: Identity, resource: Arc<Resource>, clock: Clock, opts: Options) -> Span {
    let conn = &rec.conn;
    let (kind, start, end) = match conn.role {
        // A server's request starts when its first bytes are read.
        Role::Server => (SpanKind::Server, rec.exchange.request_first.exit_ns, rec.exchange.response_last.exit_ns),
        // A client's request starts when it begins writing it.
        Role::Client => (SpanKind::Client, rec.exchange.request_first.enter_ns, rec.exchange.response_last.exit_ns),
    };
    let mut attrs: Vec<Attribute> = Vec::with_capacity(24);
    let mut message = String::new();
    let (name, is_error) = match (rec.exchange.db.as_deref(), rec.exchange.h2.as_deref()) {
        (Some(db), _) => db_attributes(rec, db, opts, &mut attrs, &mut message),
        (None, Some(h2)) if h2.grpc.is_some() => grpc_attributes(rec, h2, kind, &mut attrs),
        (None, h2) => http_attributes(rec, h2, kind, &mut attrs),
    };
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    put("ghostwire.link", AttrValue::fixed(id.link.name()));
    if !id.evidence.is_empty() {
        put("ghostwire.link.evidence", id.evidence.names().into());
    }
    if let Some(c) = id.confidence {
        put("ghostwire.link.confidence", AttrValue::fixed(c.name()));
    }
    if let Some(format) = id.format {
        put("ghostwire.context.format", AttrValue::fixed(format.name()));
    }
    if id.propagation_break.is_some() {
        put("ghostwire.propagation_break", true.into());
    }
    if rec.exchange.request.truncated || rec.exchange.response.truncated {
        // A head larger than what could be seen: the attributes come from its start.
        put("ghostwire.truncated", true.into());
    }
    if rec.exchange.response.incomplete {
        // The connection ended inside the response's body: the span ends at the last
        // byte seen.
        put("ghostwire.response.incomplete", true.into());
    }
    let status = if is_error { Status::Error { message } } else { Status::Unset };
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

/// Database semantic conventions (stable). Returns the span name and whether the span is
/// an error (the server answered with one); `message` gets the server's error message,
/// sanitised like the query (it may quote values).
fn db_attributes(
    rec: &ExchangeRecord,
    db: &DbCall,
    opts: Options,
    attrs: &mut Vec<Attribute>,
    message: &mut String,
) -> (Text, bool) {
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    let dialect = match db.system {
        DbSystem::Postgresql => Some(Dialect::Postgres),
        DbSystem::Mysql | DbSystem::Mariadb => Some(Dialect::MySql),
        DbSystem::Redis => None,
    };
    put("db.system.name", AttrValue::fixed(db.system.name()));
    if let Some(ns) = db.namespace.as_deref().filter(|n| !n.is_empty()) {
        put("db.namespace", ns.into());
    }
    let (operation, collection) = match (&db.operation, dialect) {
        (Some(op), _) => (Some(op.clone()), None),
        (None, Some(d)) => {
            let summary = sql::summarize(&db.query, d);
            (summary.operation, summary.collection)
        }
        (None, None) => (None, None),
    };
    if let Some(op) = &operation {
        put("db.operation.name", op.as_str().into());
    }
    if let Some(c) = &collection {
        put("db.collection.name", c.as_str().into());
    }
    if !db.query.is_empty() {
        // Redis texts never hold values (the parser keeps none); SQL is sanitised.
        let text = match dialect {
            Some(d) if !opts.raw_queries => sql::sanitize(&db.query, d),
            _ => db.query.clone(),
        };
        put("db.query.text", AttrValue::Str(text.into()));
    }
    if db.truncated {
        put("ghostwire.truncated", true.into());
    }
    if let Some(rows) = db.rows.filter(|_| dialect.is_some()) {
        put("db.response.returned_rows", i64::try_from(rows).unwrap_or(i64::MAX).into());
    }
    let (addr, port) = (rec.conn.peer.ip().to_compact_string(), rec.conn.peer.port());
    put("server.address", AttrValue::Str(addr));
    put("server.port", i64::from(port).into());
    put("network.transport", AttrValue::fixed("tcp"));
    network_attributes(rec, SpanKind::Client, &mut put);
    tls_attributes(rec, &mut put);
    let error = db.status_code.is_some() || db.error_message.is_some();
    if let Some(code) = &db.status_code {
        put("db.response.status_code", code.as_str().into());
        put("error.type", code.as_str().into());
    } else if error {
        put("error.type", AttrValue::fixed("_OTHER"));
    }
    if let Some(m) = &db.error_message {
        *message = if opts.raw_queries { m.clone() } else { sql::sanitize_message(m) };
    }
    // `{db.operation.name} {target}`, the target being the table, else the database.
    // Redis: the command alone (its keys are unbounded, no name for a span).
    let target = match dialect {
        Some(_) => collection.as_deref().or(db.namespace.as_deref()).filter(|t| !t.is_empty()),
        None => None,
    };
    let name = match (operation.as_deref(), target) {
        (Some(op), Some(t)) => compact_str::format_compact!("{op} {t}"),
        (Some(op), None) => op.into(),
        (None, Some(t)) => t.into(),
        (None, None) => db.system.name().into(),
    };
    (name, error)
}

/// The connection's addresses, and (server side) the client's.
fn network_attributes(rec: &ExchangeRecord, kind: SpanKind, put: &mut impl FnMut(&'static str, AttrValue)) {
    let conn = &rec.conn;
    // Inline (no allocation) for every IPv4 and most IPv6 addresses.
    let peer = conn.peer.ip().to_compact_string();
    put("network.peer.address", AttrValue::Str(peer.clone()));
    put("network.peer.port", i64::from(conn.peer.port()).into());
    put("network.local.address", AttrValue::Str(conn.local.ip().to_compact_string()));
    put("network.local.port", i64::from(conn.local.port()).into());
    if kind == SpanKind::Server {
        put("client.address", AttrValue::Str(peer));
        put("client.port", i64::from(conn.peer.port()).into());
    }
}

/// `tls.protocol.name` and, when the capture saw the ServerHello, `tls.protocol.version`
/// (semantic conventions, TLS attributes).
fn tls_attributes(rec: &ExchangeRecord, put: &mut impl FnMut(&'static str, AttrValue)) {
    let Some(tls) = rec.conn.tls else { return };
    put("tls.protocol.name", AttrValue::fixed("tls"));
    if let Some(v) = tls.version {
        put("tls.protocol.version", AttrValue::fixed(v.as_str()));
    }
}

/// `server.address` and `server.port`: from the `Host` header (HTTP/2's `:authority`),
/// else the connection's server end.
fn server_address(rec: &ExchangeRecord, kind: SpanKind) -> (Text, u16) {
    let conn = &rec.conn;
    let server = if kind == SpanKind::Server { conn.local } else { conn.peer };
    let host = rec.exchange.request.header("host").map(split_host);
    match host {
        Some((addr, port)) => (addr, port.unwrap_or(server.port())),
        None => (server.ip().to_compact_string(), server.port()),
    }
}

/// HTTP semantic conventions (HTTP/1.x and HTTP/2). Returns the span name and whether
/// the span is an error.
fn http_attributes(
    rec: &ExchangeRecord,
    h2: Option<&H2Exchange>,
    kind: SpanKind,
    attrs: &mut Vec<Attribute>,
) -> (Text, bool) {
    let req = &rec.exchange.request;
    let resp = &rec.exchange.response;
    let conn = &rec.conn;
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));

    let known: Option<&'static str> = KNOWN_METHODS.iter().find(|m| **m == req.method.as_str()).copied();
    let method_known = known.is_some();
    let method = known.unwrap_or("_OTHER");
    // An HTTP/2 path the agent could not decode is unknown, not empty.
    let unknown = h2.map(|h| h.unknown).unwrap_or_default();
    let (path, query) = if unknown.path { ("_OTHER", None) } else { split_target(&req.target) };
    let name = Text::const_new(known.unwrap_or("HTTP"));

    put("http.request.method", AttrValue::fixed(method));
    if !method_known && !unknown.method {
        put("http.request.method_original", req.method.as_str().into());
    }
    if resp.status != 0 {
        put("http.response.status_code", i64::from(resp.status).into());
    }
    put("network.protocol.name", AttrValue::fixed("http"));
    let version = match h2 {
        Some(_) => "2",
        None if req.version_minor == 0 => "1.0",
        None => "1.1",
    };
    put("network.protocol.version", AttrValue::fixed(version));
    put("network.transport", AttrValue::fixed("tcp"));
    network_attributes(rec, kind, &mut put);
    tls_attributes(rec, &mut put);
    let scheme = if conn.tls.is_some() { "https" } else { "http" };
    let (addr, port) = server_address(rec, kind);
    match kind {
        SpanKind::Server => {
            put("url.scheme", AttrValue::fixed(scheme));
            put("url.path", path.into());
            if let Some(q) = query {
                let mut redacted = Text::with_capacity(q.len());
                redact::query_into(q, &mut redacted);
                put("url.query", AttrValue::Str(redacted));
            }
            put("server.address", addr.into());
            put("server.port", i64::from(port).into());
        }
        SpanKind::Client => {
            let url = if unknown.path { Text::const_new("_OTHER") } else { full_url(scheme, &req.target, &addr, port) };
            put("url.full", AttrValue::Str(url));
            put("server.address", addr.into());
            put("server.port", i64::from(port).into());
        }
    }
    if let Some(ua) = req.header("user-agent") {
        put("user_agent.original", ua.into());
    }
    if let Some(rid) = context::request_id(req.headers.iter()) {
        put("http.request.header.x-request-id", rid.into());
    }
    if req.body_len > 0 {
        put("http.request.body.size", i64::try_from(req.body_len).unwrap_or(i64::MAX).into());
    }
    if resp.body_len > 0 {
        put("http.response.body.size", i64::try_from(resp.body_len).unwrap_or(i64::MAX).into());
    }
    if unknown.method || unknown.path || unknown.status {
        put("ghostwire.hpack.unknown", true.into());
    }
    let reset = h2.and_then(|h| h.reset);
    let status_error = match kind {
        SpanKind::Server => resp.status >= 500,
        SpanKind::Client => resp.status >= 400,
    };
    if let Some(reset) = reset {
        // The stream ended before its response did.
        put("error.type", AttrValue::fixed(h2_error_name(reset.code)));
        return (name, true);
    }
    if status_error {
        put("error.type", AttrValue::Str(resp.status.to_compact_string()));
    }
    (name, status_error)
}

/// RPC semantic conventions for gRPC (stable, semconv 1.45). Returns the span name and
/// whether the span is an error.
fn grpc_attributes(rec: &ExchangeRecord, h2: &H2Exchange, kind: SpanKind, attrs: &mut Vec<Attribute>) -> (Text, bool) {
    let req = &rec.exchange.request;
    let resp = &rec.exchange.response;
    let grpc = h2.grpc.clone().unwrap_or_default();
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));

    // `:path` is `/package.Service/Method`.
    let method = req.target.strip_prefix('/').filter(|m| !h2.unknown.path && is_rpc_method(m));
    put("rpc.system.name", AttrValue::fixed("grpc"));
    put("rpc.method", method.map_or(AttrValue::fixed("_OTHER"), AttrValue::from));
    // `None`: the status could not be seen (trailers that refer to HPACK entries sent
    // before the agent attached): reported as unknown, not as an error.
    let code = grpc_code(&grpc, h2.reset, resp.status);
    let code_name = code.map(grpc_code_name);
    if let Some(name) = code_name {
        put("rpc.response.status_code", AttrValue::fixed(name));
    }
    put("network.protocol.name", AttrValue::fixed("http"));
    put("network.protocol.version", AttrValue::fixed("2"));
    put("network.transport", AttrValue::fixed("tcp"));
    network_attributes(rec, kind, &mut put);
    tls_attributes(rec, &mut put);
    let (addr, port) = server_address(rec, kind);
    put("server.address", addr.into());
    put("server.port", i64::from(port).into());
    let count = |n: u64| AttrValue::Int(i64::try_from(n).unwrap_or(i64::MAX));
    put("ghostwire.grpc.request.messages", count(grpc.request_messages));
    put("ghostwire.grpc.response.messages", count(grpc.response_messages));
    put("ghostwire.grpc.request.bytes", count(grpc.request_bytes));
    put("ghostwire.grpc.response.bytes", count(grpc.response_bytes));
    if h2.unknown.method || h2.unknown.path || h2.unknown.status || code.is_none() {
        put("ghostwire.hpack.unknown", true.into());
    }
    let is_error = match (kind, code) {
        (_, None) => false,
        // A server is at fault only for these (RPC conventions, gRPC status codes).
        (SpanKind::Server, Some(c)) => matches!(c, 2 | 4 | 12 | 13 | 14 | 15),
        (SpanKind::Client, Some(c)) => c != 0,
    };
    if let (true, Some(name)) = (is_error, code_name) {
        put("error.type", AttrValue::fixed(name));
    }
    // The span name is the method; `{rpc.system.name}` when it is not known.
    (method.map_or(Text::const_new("grpc"), Text::from), is_error)
}

/// `package.Service/Method`: one slash between two non-empty parts.
fn is_rpc_method(m: &str) -> bool {
    m.split_once('/').is_some_and(|(svc, method)| !svc.is_empty() && !method.is_empty() && !method.contains('/'))
}

/// The call's gRPC status: from `grpc-status`; else from how the stream was reset
/// (RST_STREAM codes as gRPC maps them); else from the HTTP status (gRPC's
/// HTTP-to-status mapping). `None` when nothing says.
fn grpc_code(grpc: &Grpc, reset: Option<Reset>, http_status: u16) -> Option<u32> {
    if let Some(code) = grpc.status {
        return Some(code);
    }
    if let Some(reset) = reset {
        return Some(match reset.code {
            // NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR,
            // SETTINGS_TIMEOUT, FRAME_SIZE_ERROR, COMPRESSION_ERROR, CONNECT_ERROR
            0x0 | 0x1 | 0x2 | 0x3 | 0x4 | 0x6 | 0x9 | 0xa => 13,
            0x7 => 14, // REFUSED_STREAM → UNAVAILABLE
            0x8 => 1,  // CANCEL → CANCELLED
            0xb => 8,  // ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED
            0xc => 7,  // INADEQUATE_SECURITY → PERMISSION_DENIED
            _ => 2,    // UNKNOWN
        });
    }
    match http_status {
        0 | 200 => None,
        400 => Some(13),
        401 => Some(16),
        403 => Some(7),
        404 => Some(12),
        429 | 502..=504 => Some(14),
        _ => Some(2),
    }
}

/// gRPC status code names (grpc/doc/statuscodes.md).
fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// HTTP/2 error code names (RFC 9113 section 7), for `error.type`.
fn h2_error_name(code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("_OTHER")
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
fn split_host(h: &str) -> (Text, Option<u16>) {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, tail)) = rest.split_once(']') {
            return (Text::from(addr), tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => (Text::from(a), p.parse().ok()),
        _ => (Text::from(h), None),
    }
}

/// `url.full` of a client request: `scheme` (`http`, `https`), authority (the scheme's
/// default port left out), the path and the redacted query. An absolute-form target
/// (a proxy request) is kept as sent, redacted.
fn full_url(scheme: &str, target: &str, host: &str, port: u16) -> Text {
    use std::fmt::Write as _;
    if target.contains("://") {
        return redact::url(target).into();
    }
    let (path, query) = split_target(target);
    // Written in place: one allocation at most (none when it fits inline).
    let mut url = Text::with_capacity(scheme.len() + host.len() + target.len() + 16);
    let _ = if host.contains(':') { write!(url, "{scheme}://[{host}]") } else { write!(url, "{scheme}://{host}") };
    let default_port = if scheme == "https" { 443 } else { 80 };
    if port != default_port {
        let _ = write!(url, ":{port}");
    }
    url.push_str(path);
    if let Some(q) = query {
        url.push('?');
        redact::query_into(q, &mut url);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnMeta, TlsInfo};
    use crate::protocol::tls::Version;
    use crate::protocol::{Exchange, Request, Response, Timing};

    fn record(role: Role, headers: &[(&str, &str)], status: u16) -> ExchangeRecord {
        ExchangeRecord {
            key: crate::conn::ReqKey { conn: crate::capture::ConnId { sock: 1, gen: 1 }, stream: 0 },
            tid: 42,
            conn: ConnMeta {
                pid: 42,
                role,
                local: "127.0.0.1:8080".parse().unwrap(),
                peer: "127.0.0.1:50000".parse().unwrap(),
                netns: 0,
                tls: None,
                opened_by: None,
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
                response: Response {
                    status,
                    version_minor: 1,
                    headers: Default::default(),
                    body_len: 12,
                    truncated: false,
                    incomplete: false,
                },
                request_first: Timing { enter_ns: 100, exit_ns: 110 },
                request_last: Timing { enter_ns: 100, exit_ns: 110 },
                response_first: Timing { enter_ns: 200, exit_ns: 210 },
                response_last: Timing { enter_ns: 300, exit_ns: 310 },
                h2: None,
                db: None,
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
            evidence: Evidence::default(),
            confidence: None,
        }
    }

    fn build_(rec: &ExchangeRecord, resource: Arc<Resource>, clock: Clock) -> Span {
        build(rec, identity(super::super::link::LinkKind::Socket), resource, clock, Options::default())
    }

    fn db_record(system: DbSystem, query: &str, error: Option<(&str, &str)>) -> ExchangeRecord {
        let mut rec = record(Role::Client, &[], 0);
        rec.exchange.db = Some(Box::new(DbCall {
            system,
            namespace: Some("shop".into()),
            query: query.into(),
            truncated: false,
            operation: None,
            key: None,
            status_code: error.map(|e| e.0.into()),
            error_message: error.map(|e| e.1.into()),
            rows: Some(1),
        }));
        rec
    }

    #[test]
    fn database_spans_follow_the_db_conventions_with_literals_hidden() {
        let rec = db_record(DbSystem::Postgresql, "SELECT name FROM users WHERE email = 'ann@example.com'", None);
        let s = build_(&rec, resource(), clock());
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.name, "SELECT users");
        assert_eq!(s.attr("db.system.name"), Some(&AttrValue::Str("postgresql".into())));
        assert_eq!(s.attr("db.namespace"), Some(&AttrValue::Str("shop".into())));
        assert_eq!(s.attr("db.operation.name"), Some(&AttrValue::Str("SELECT".into())));
        assert_eq!(s.attr("db.collection.name"), Some(&AttrValue::Str("users".into())));
        assert_eq!(s.attr("db.query.text"), Some(&AttrValue::Str("SELECT name FROM users WHERE email = ?".into())));
        assert_eq!(s.attr("http.request.method"), None, "a database span, not an HTTP one");
        assert_eq!(s.status, Status::Unset);
        let raw = build(
            &rec,
            identity(super::super::link::LinkKind::Thread),
            resource(),
            clock(),
            Options { raw_queries: true },
        );
        assert!(matches!(raw.attr("db.query.text"), Some(AttrValue::Str(t)) if t.contains("ann@example.com")));
    }

    #[test]
    fn database_errors_carry_their_code_and_a_sanitised_message() {
        let msg = "Duplicate entry 'ann@example.com' for key 'email'";
        let rec =
            db_record(DbSystem::Mariadb, "INSERT INTO users (email) VALUES ('ann@example.com')", Some(("1062", msg)));
        let s = build_(&rec, resource(), clock());
        assert_eq!(s.name, "INSERT users");
        assert_eq!(s.attr("db.response.status_code"), Some(&AttrValue::Str("1062".into())));
        assert_eq!(s.attr("error.type"), Some(&AttrValue::Str("1062".into())));
        let Status::Error { message } = &s.status else { panic!("{:?}", s.status) };
        assert!(!message.contains("ann@"), "{message}");
        assert!(message.starts_with("Duplicate entry ?"), "{message}");
        assert!(!format!("{s:?}").contains("ann@example.com"));
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

    fn grpc_record(role: Role, grpc_status: Option<u32>, reset: Option<Reset>) -> ExchangeRecord {
        let mut rec = record(role, &[("host", "127.0.0.1:50051"), ("content-type", "application/grpc")], 200);
        rec.exchange.request.method = "POST".into();
        rec.exchange.request.target = "/demo.Echo/Unary".into();
        rec.exchange.h2 = Some(Box::new(H2Exchange {
            reset,
            grpc: Some(Grpc {
                status: grpc_status,
                request_messages: 1,
                request_bytes: 5,
                response_messages: 1,
                response_bytes: 5,
            }),
            unknown: crate::protocol::Unknown::default(),
        }));
        rec
    }

    #[test]
    fn grpc_spans_follow_the_rpc_conventions() {
        let s = build_(&grpc_record(Role::Server, Some(0), None), resource(), clock());
        assert_eq!(s.name, "demo.Echo/Unary");
        assert_eq!(s.attr("rpc.system.name"), Some(&AttrValue::Str("grpc".into())));
        assert_eq!(s.attr("rpc.method"), Some(&AttrValue::Str("demo.Echo/Unary".into())));
        assert_eq!(s.attr("rpc.response.status_code"), Some(&AttrValue::Str("OK".into())));
        assert_eq!(s.attr("network.protocol.version"), Some(&AttrValue::Str("2".into())));
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(50051)));
        assert_eq!(s.attr("ghostwire.grpc.response.messages"), Some(&AttrValue::Int(1)));
        assert_eq!(s.attr("http.request.method"), None, "an RPC span, not an HTTP one");
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn grpc_error_status_differs_by_side() {
        // NOT_FOUND: the client's error, not the server's.
        let server = build_(&grpc_record(Role::Server, Some(5), None), resource(), clock());
        assert_eq!(server.status, Status::Unset);
        assert_eq!(server.attr("error.type"), None);
        let client = build_(&grpc_record(Role::Client, Some(5), None), resource(), clock());
        assert!(matches!(client.status, Status::Error { .. }));
        assert_eq!(client.attr("error.type"), Some(&AttrValue::Str("NOT_FOUND".into())));
        // INTERNAL: both.
        for role in [Role::Server, Role::Client] {
            let s = build_(&grpc_record(role, Some(13), None), resource(), clock());
            assert!(matches!(s.status, Status::Error { .. }));
            assert_eq!(s.attr("rpc.response.status_code"), Some(&AttrValue::Str("INTERNAL".into())));
        }
        // A stream cancelled with RST_STREAM(CANCEL) and no status: CANCELLED.
        let reset = Reset { code: 8, goaway: false, dir: crate::protocol::Direction::Egress };
        let s = build_(&grpc_record(Role::Client, None, Some(reset)), resource(), clock());
        assert_eq!(s.attr("rpc.response.status_code"), Some(&AttrValue::Str("CANCELLED".into())));
        assert!(matches!(s.status, Status::Error { .. }));
    }

    #[test]
    fn an_undecodable_grpc_status_is_unknown_not_an_error() {
        for role in [Role::Server, Role::Client] {
            let s = build_(&grpc_record(role, None, None), resource(), clock());
            assert_eq!(s.attr("rpc.response.status_code"), None);
            assert_eq!(s.attr("ghostwire.hpack.unknown"), Some(&AttrValue::Bool(true)));
            assert_eq!(s.status, Status::Unset);
        }
    }

    #[test]
    fn http2_spans_with_unknown_fields_say_so() {
        let mut rec = record(Role::Server, &[], 200);
        rec.exchange.request.method = String::new();
        rec.exchange.request.target = String::new();
        rec.exchange.h2 = Some(Box::new(H2Exchange {
            unknown: crate::protocol::Unknown { method: true, path: true, status: false },
            ..H2Exchange::default()
        }));
        let s = build_(&rec, resource(), clock());
        assert_eq!(s.name, "HTTP");
        assert_eq!(s.attr("http.request.method"), Some(&AttrValue::Str("_OTHER".into())));
        assert_eq!(s.attr("http.request.method_original"), None, "nothing was seen to report");
        assert_eq!(s.attr("url.path"), Some(&AttrValue::Str("_OTHER".into())));
        assert_eq!(s.attr("network.protocol.version"), Some(&AttrValue::Str("2".into())));
        assert_eq!(s.attr("ghostwire.hpack.unknown"), Some(&AttrValue::Bool(true)));
        // A reset stream is an error, whatever its status.
        rec.exchange.h2.as_mut().unwrap().reset =
            Some(Reset { code: 2, goaway: true, dir: crate::protocol::Direction::Ingress });
        let s = build_(&rec, resource(), clock());
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(s.attr("error.type"), Some(&AttrValue::Str("INTERNAL_ERROR".into())));
    }

    #[test]
    fn plaintext_spans_say_http_and_tcp_and_nothing_of_tls() {
        for role in [Role::Server, Role::Client] {
            let s = build_(&record(role, &[("host", "api:8080")], 200), resource(), clock());
            assert_eq!(s.attr("network.transport"), Some(&AttrValue::Str("tcp".into())));
            assert_eq!(s.attr("tls.protocol.name"), None);
            assert_eq!(s.attr("tls.protocol.version"), None);
        }
        let s = build_(&record(Role::Server, &[], 200), resource(), clock());
        assert_eq!(s.attr("url.scheme"), Some(&AttrValue::Str("http".into())));
        let s = build_(&record(Role::Client, &[("host", "api:80")], 200), resource(), clock());
        assert_eq!(s.attr("url.full"), Some(&AttrValue::Str("http://api/users/7?token=REDACTED&page=2".into())));
    }

    fn tls(mut rec: ExchangeRecord, version: Option<Version>) -> ExchangeRecord {
        rec.conn.tls = Some(TlsInfo { version });
        rec
    }

    #[test]
    fn tls_spans_are_https_with_the_tls_version() {
        let server = build_(&tls(record(Role::Server, &[], 500), Some(Version::Tls13)), resource(), clock());
        assert_eq!(server.attr("url.scheme"), Some(&AttrValue::Str("https".into())));
        assert_eq!(server.attr("tls.protocol.name"), Some(&AttrValue::Str("tls".into())));
        assert_eq!(server.attr("tls.protocol.version"), Some(&AttrValue::Str("1.3".into())));
        assert_eq!(server.attr("network.transport"), Some(&AttrValue::Str("tcp".into())));
        assert!(matches!(server.status, Status::Error { .. }));
        // The default port of https is left out of url.full, any other kept.
        let mut rec = tls(record(Role::Client, &[("host", "shop")], 200), Some(Version::Tls12));
        rec.conn.peer = "127.0.0.1:443".parse().unwrap();
        let client = build_(&rec, resource(), clock());
        assert_eq!(client.attr("url.full"), Some(&AttrValue::Str("https://shop/users/7?token=REDACTED&page=2".into())));
        assert_eq!(client.attr("tls.protocol.version"), Some(&AttrValue::Str("1.2".into())));
        let rec = tls(record(Role::Client, &[("host", "shop:8443")], 200), None);
        let client = build_(&rec, resource(), clock());
        assert_eq!(
            client.attr("url.full"),
            Some(&AttrValue::Str("https://shop:8443/users/7?token=REDACTED&page=2".into()))
        );
        // The version unknown (the handshake was not seen): only the name.
        assert_eq!(client.attr("tls.protocol.name"), Some(&AttrValue::Str("tls".into())));
        assert_eq!(client.attr("tls.protocol.version"), None);
    }

    #[test]
    fn grpc_over_tls_carries_the_tls_attributes() {
        let s = build_(&tls(grpc_record(Role::Client, Some(0), None), Some(Version::Tls13)), resource(), clock());
        assert_eq!(s.attr("rpc.system.name"), Some(&AttrValue::Str("grpc".into())));
        assert_eq!(s.attr("tls.protocol.name"), Some(&AttrValue::Str("tls".into())));
        assert_eq!(s.attr("tls.protocol.version"), Some(&AttrValue::Str("1.3".into())));
        assert_eq!(s.attr("network.transport"), Some(&AttrValue::Str("tcp".into())));
        let plain = build_(&grpc_record(Role::Client, Some(0), None), resource(), clock());
        assert_eq!(plain.attr("tls.protocol.name"), None);
    }

    #[test]
    fn host_and_target_splitting() {
        assert_eq!(split_host("[::1]:9000"), ("::1".into(), Some(9000)));
        assert_eq!(split_host("example.com"), ("example.com".into(), None));
        assert_eq!(split_target("http://h:1/a/b?x=1"), ("/a/b", Some("x=1")));
        assert_eq!(split_target("http://h:1"), ("/", None));
    }
}
