//! TLS end to end: real OpenSSL peers (curl, nginx, Python's ssl, Node.js) traced in
//! plaintext through the OpenSSL uprobes, a Go crypto/tls program that must stay dark,
//! one attachment per library file, and garbage inside a TLS session. Spans are read
//! back from the agent's JSONL output; counters from its exit `stats:` line.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ghostwire_tests::*;
use serde_json::Value;

/// How long a test waits for the spans it expects.
const SPAN_WAIT: Duration = Duration::from_secs(15);

/// An agent tracing `ports`, writing JSONL into its own scratch directory.
struct Rig {
    jsonl: PathBuf,
    _dir: TempDir,
}

impl Rig {
    fn new(tag: &str) -> Self {
        require_root();
        let dir = TempDir::new(tag);
        let jsonl = dir.path().join("spans.jsonl");
        Self { jsonl, _dir: dir }
    }

    fn agent(&self, ports: &[u16], extra: &[&str]) -> Agent {
        let mut args: Vec<String> = ports.iter().flat_map(|p| ["--port".to_owned(), p.to_string()]).collect();
        args.extend(["--output".to_owned(), format!("jsonl:{}", self.jsonl.display())]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Agent::start(&args, &[])
    }

    fn spans(&self) -> Vec<SpanRec> {
        read_jsonl(&self.jsonl)
    }

    /// Waits (at most [`SPAN_WAIT`]) until `done(spans)`, stops the agent (which must exit
    /// cleanly) and returns every span, the exit, and whether `done` was reached.
    fn collect(&self, agent: Agent, done: impl Fn(&[SpanRec]) -> bool) -> (Vec<SpanRec>, AgentExit, bool) {
        let complete = wait_for(SPAN_WAIT, || done(&self.spans()).then_some(()));
        let exit = agent.stop();
        assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
        assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
        (self.spans(), exit, complete.is_some())
    }
}

/// Spans with the attributes these tests look at, one per line.
fn describe_tls(spans: &[SpanRec]) -> String {
    spans
        .iter()
        .map(|s| {
            let a = |k: &str| s.attributes.get(k).map_or_else(|| "-".to_owned(), ToString::to_string);
            format!(
                "{kind} {svc} pid={pid} {name:?} {method} {path} status={st} err={err} v={v} scheme={scheme} \
                 url.full={full} tls={tn}/{tv} transport={tr} local={lp} peer={pp} trace={t} span={sp} \
                 parent={p:?} link={link}",
                kind = match s.kind {
                    KIND_SERVER => "SERVER",
                    KIND_CLIENT => "CLIENT",
                    _ => "?",
                },
                svc = s.resource.get("service.name").and_then(Value::as_str).unwrap_or("?"),
                pid = s.resource.get("process.pid").map_or_else(|| "?".to_owned(), ToString::to_string),
                name = s.name,
                method = a("http.request.method"),
                path = s.path().unwrap_or_default(),
                st = a("http.response.status_code"),
                err = s.status_code == STATUS_ERROR,
                v = a("network.protocol.version"),
                scheme = a("url.scheme"),
                full = a("url.full"),
                tn = a("tls.protocol.name"),
                tv = a("tls.protocol.version"),
                tr = a("network.transport"),
                lp = a("network.local.port"),
                pp = a("network.peer.port"),
                t = s.trace_id,
                sp = s.span_id,
                p = s.parent_span_id,
                link = a("ghostwire.link"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn service_is(s: &SpanRec, service: &str) -> bool {
    s.resource.get("service.name").and_then(Value::as_str) == Some(service)
}

fn of<'a>(spans: &'a [SpanRec], kind: i64, service: &str) -> Vec<&'a SpanRec> {
    spans.iter().filter(|s| s.kind == kind && service_is(s, service)).collect()
}

fn count(spans: &[SpanRec], kind: i64, service: &str) -> usize {
    of(spans, kind, service).len()
}

/// The one span of `kind` from `service` for `path`.
fn one<'a>(spans: &'a [SpanRec], kind: i64, service: &str, path: &str) -> &'a SpanRec {
    let found: Vec<&SpanRec> =
        of(spans, kind, service).into_iter().filter(|s| s.path().as_deref() == Some(path)).collect();
    assert_eq!(found.len(), 1, "want one {kind} span of {service} for {path}:\n{}", describe_tls(spans));
    found[0]
}

/// The one span whose parent is `parent`.
fn child_of<'a>(spans: &'a [SpanRec], parent: &SpanRec) -> &'a SpanRec {
    let found: Vec<&SpanRec> = spans.iter().filter(|s| s.parent_span_id == parent.span_id).collect();
    assert_eq!(
        found.len(),
        1,
        "want one child of {} {:?} (span {}):\n{}",
        parent.service(),
        parent.path(),
        parent.span_id,
        describe_tls(spans)
    );
    found[0]
}

/// GET `path` answered `status` (HTTP/`version`), with the error status the semantic
/// conventions give it: SERVER spans fail on 5xx, CLIENT spans on 4xx and 5xx.
fn assert_http(s: &SpanRec, path: &str, status: u16, version: &str, all: &[SpanRec]) {
    let ctx = || describe_tls(all);
    assert_eq!(s.name, "GET", "{}", ctx());
    assert_eq!(s.attr_str("http.request.method"), "GET", "{}", ctx());
    assert_eq!(s.path().as_deref(), Some(path), "{}", ctx());
    assert_eq!(s.attr_int("http.response.status_code"), i64::from(status), "{}", ctx());
    assert_eq!(s.attr_str("network.protocol.version"), version, "{}", ctx());
    let error = match s.kind {
        KIND_SERVER => status >= 500,
        _ => status >= 400,
    };
    assert_eq!(s.status_code == STATUS_ERROR, error, "{path} {status}: error status of\n{}", ctx());
    if error {
        assert_eq!(s.attr_str("error.type"), status.to_string(), "{}", ctx());
    }
    assert_eq!(s.trace_id.len(), 32);
    assert_eq!(s.span_id.len(), 16);
    assert!(s.end_ns >= s.start_ns && s.start_ns > 0, "{s:#?}");
}

/// A span of a TLS connection to 127.0.0.1:`port`: `url.scheme=https` (a CLIENT span's
/// `url.full` starts with `https://` and, if it carries `url.scheme`, says https too),
/// `tls.protocol.name=tls`, `network.transport=tcp`, and `tls.protocol.version`
/// `version` (`None`: the handshake was not seen, so the version may be absent, but if
/// present it must be "1.3": nothing here negotiates anything else).
fn assert_tls(s: &SpanRec, port: u16, version: Option<&str>, all: &[SpanRec]) {
    let ctx = || describe_tls(all);
    match s.kind {
        KIND_SERVER => assert_eq!(attr_opt(s, "url.scheme"), Some("https"), "{}", ctx()),
        _ => {
            let full = s.attr_str("url.full");
            assert!(full.starts_with(&format!("https://127.0.0.1:{port}/")), "url.full {full}:\n{}", ctx());
            if let Some(scheme) = attr_opt(s, "url.scheme") {
                assert_eq!(scheme, "https", "{}", ctx());
            }
        }
    }
    assert_eq!(attr_opt(s, "tls.protocol.name"), Some("tls"), "{}", ctx());
    assert_eq!(attr_opt(s, "network.transport"), Some("tcp"), "{}", ctx());
    match version {
        Some(v) => assert_eq!(attr_opt(s, "tls.protocol.version"), Some(v), "{}", ctx()),
        None => assert!(
            matches!(attr_opt(s, "tls.protocol.version"), None | Some("1.3")),
            "invented TLS version:\n{}",
            ctx()
        ),
    }
    assert_eq!(s.attr_str("server.address"), "127.0.0.1", "{}", ctx());
    assert_eq!(s.attr_int("server.port"), i64::from(port), "{}", ctx());
}

/// A span of a plaintext connection: nothing about TLS.
fn assert_not_tls(s: &SpanRec, all: &[SpanRec]) {
    for key in ["tls.protocol.name", "tls.protocol.version"] {
        assert!(attr_opt(s, key).is_none(), "{key} on a plaintext connection:\n{}", describe_tls(all));
    }
    if s.kind == KIND_SERVER {
        assert_eq!(attr_opt(s, "url.scheme"), Some("http"), "{}", describe_tls(all));
    } else {
        assert!(s.attr_str("url.full").starts_with("http://"), "{}", describe_tls(all));
    }
}

/// SERVER is the socket child of CLIENT: one trace, one connection seen from both ends.
fn assert_socket_pair(client: &SpanRec, server: &SpanRec, all: &[SpanRec]) {
    let ctx = || describe_tls(all);
    assert_eq!(server.trace_id, client.trace_id, "one trace:\n{}", ctx());
    assert_eq!(server.parent_span_id, client.span_id, "server span is the client span's child:\n{}", ctx());
    assert_eq!(server.attr_str("ghostwire.link"), "socket", "{}", ctx());
    assert_eq!(server.attr_int("network.peer.port"), client.attr_int("network.local.port"), "{}", ctx());
    assert_eq!(server.attr_int("network.local.port"), client.attr_int("network.peer.port"), "{}", ctx());
}

const PATHS: [(&str, u16); 3] = [("/ok", 200), ("/missing", 404), ("/boom", 500)];

#[test]
fn curl_to_nginx_https_over_http1_and_http2_to_a_plain_upstream_is_one_linked_trace_per_request() {
    let rig = Rig::new("tls-nginx");
    let [proxy_port, backend_port] = free_ports();
    let _backend = python_backend(backend_port, "legacy-backend");
    let _nginx = Nginx::https_reverse_proxy(proxy_port, backend_port);
    let agent = rig.agent(&[proxy_port, backend_port], &[]);

    let paths: Vec<&str> = PATHS.iter().map(|(p, _)| *p).collect();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let got = curl_https(proxy_port, flag, &paths);
        let want: Vec<(u16, String)> = PATHS.iter().map(|(_, s)| (*s, version.to_owned())).collect();
        assert_eq!(got, want, "curl {flag} through nginx");
    }
    // Per request: curl CLIENT, nginx SERVER, nginx CLIENT, backend SERVER.
    let want = 2 * PATHS.len() * 4;
    let (spans, exit, _) = rig.collect(agent, |s| s.len() >= want);
    let stats = exit.stats_line().to_owned();
    eprintln!("{}\n{stats}", describe_tls(&spans));

    for version in ["1.1", "2"] {
        for (path, status) in PATHS {
            let curl_client: Vec<&SpanRec> = of(&spans, KIND_CLIENT, "curl")
                .into_iter()
                .filter(|s| {
                    s.path().as_deref() == Some(path) && attr_opt(s, "network.protocol.version") == Some(version)
                })
                .collect();
            assert_eq!(curl_client.len(), 1, "curl HTTP/{version} {path}:\n{}\n{stats}", describe_tls(&spans));
            let curl_client = curl_client[0];
            let proxy_server = child_of(&spans, curl_client);
            let proxy_client = child_of(&spans, proxy_server);
            let backend_server = child_of(&spans, proxy_client);
            assert_eq!(
                (proxy_server.kind, proxy_server.service()),
                (KIND_SERVER, "nginx".to_owned()),
                "{}",
                describe_tls(&spans)
            );
            assert_eq!(
                (proxy_client.kind, proxy_client.service()),
                (KIND_CLIENT, "nginx".to_owned()),
                "{}",
                describe_tls(&spans)
            );
            assert_eq!(
                (backend_server.kind, backend_server.service()),
                (KIND_SERVER, "legacy-backend".to_owned()),
                "{}",
                describe_tls(&spans)
            );

            // Across TLS: curl's call is the root and nginx's server span its socket child.
            assert_http(curl_client, path, status, version, &spans);
            assert_http(proxy_server, path, status, version, &spans);
            assert_eq!(curl_client.parent_span_id, "", "{}", describe_tls(&spans));
            assert_socket_pair(curl_client, proxy_server, &spans);
            for s in [curl_client, proxy_server] {
                assert_tls(s, proxy_port, Some("1.3"), &spans);
            }
            // Behind nginx: plain HTTP/1.0, in the same trace.
            assert_http(proxy_client, path, status, "1.0", &spans);
            assert_http(backend_server, path, status, "1.0", &spans);
            assert_eq!(proxy_client.attr_str("ghostwire.link"), "thread", "{}", describe_tls(&spans));
            assert_socket_pair(proxy_client, backend_server, &spans);
            for s in [proxy_client, backend_server] {
                assert_eq!(s.trace_id, curl_client.trace_id, "one trace per request:\n{}", describe_tls(&spans));
                assert_not_tls(s, &spans);
            }
            assert!(
                proxy_server.start_ns <= proxy_client.start_ns && proxy_client.end_ns <= proxy_server.end_ns,
                "nginx's server span contains its client span:\n{}",
                describe_tls(&spans)
            );
        }
    }
    assert_eq!(spans.len(), want, "exactly 4 spans per request, none from ciphertext:\n{}", describe_tls(&spans));
    // curl's two connections, each seen at both ends.
    assert!(exit.stat("tls.decrypted_conns") >= 4, "{stats}");
    assert!(exit.stat("tls.conns") >= 2, "{stats}");
    // (Not drop.tls_unbound: it also counts the plaintext of every other TLS process on
    // the host, whose connections the port filter leaves out.)
    for key in ["drop.parse_error", "tls.plaintext_not_http", "tls.undecrypted_conns"] {
        assert_eq!(exit.stat(key), 0, "{key}: {stats}");
    }
}

#[test]
fn python_ssl_client_and_server_started_after_the_agent_give_linked_https_spans() {
    let rig = Rig::new("tls-python");
    let port = free_port();
    let agent = rig.agent(&[port], &[]);
    // Both processes start (and load libssl.so.3 with Python's _ssl) after the agent.
    let _server = python_tls_server(port, "py-tls-server", false);
    let mut client = python_tls_client(port, "py-tls-client");
    assert!(client.cmd("get /ok").starts_with("ok 200 "));
    assert!(client.cmd("get /boom").starts_with("ok 500 "));
    let (spans, exit, _) = rig
        .collect(agent, |s| count(s, KIND_SERVER, "py-tls-server") >= 2 && count(s, KIND_CLIENT, "py-tls-client") >= 2);
    client.quit();
    let stats = exit.stats_line().to_owned();
    eprintln!("{}\n{stats}", describe_tls(&spans));
    for (path, status) in [("/ok", 200), ("/boom", 500)] {
        let server = one(&spans, KIND_SERVER, "py-tls-server", path);
        let client_span = one(&spans, KIND_CLIENT, "py-tls-client", path);
        for s in [server, client_span] {
            assert_http(s, path, status, "1.1", &spans);
            assert_tls(s, port, Some("1.3"), &spans);
        }
        assert_eq!(client_span.parent_span_id, "", "{}", describe_tls(&spans));
        assert_socket_pair(client_span, server, &spans);
        assert_eq!(client_span.attr_str("user_agent.original"), "ghostwire-tls-client");
    }
    // One keep-alive connection carried both requests.
    let ports: Vec<i64> =
        of(&spans, KIND_SERVER, "py-tls-server").iter().map(|s| s.attr_int("network.peer.port")).collect();
    assert_eq!(ports[0], ports[1], "{}", describe_tls(&spans));
    assert_eq!(spans.len(), 4, "{}\n{stats}", describe_tls(&spans));
    assert!(exit.stat("tls.decrypted_conns") >= 2, "{stats}");
    assert_eq!(exit.stat("drop.parse_error"), 0, "{stats}");
}

#[test]
fn node_https_server_running_before_the_agent_is_traced_through_its_static_openssl() {
    let rig = Rig::new("tls-node-server");
    let port = free_port();
    let certs = tls_certs();
    // Started before the agent: found by the start-up scan of /proc/PID/maps (the
    // executable itself exports SSL_read & co).
    let mut node = Proc::spawn(
        "node_https server",
        Command::new("/usr/bin/node")
            .arg(peers_dir().join("node_https.js"))
            .args(["server", &port.to_string()])
            .arg(&certs.cert)
            .arg(&certs.key)
            .env("OTEL_SERVICE_NAME", "node-https-server")
            .stdout(Stdio::null()),
    );
    wait_port(port, "node https server");
    node.assert_running();
    let agent = rig.agent(&[port], &[]);
    let paths: Vec<&str> = PATHS.iter().map(|(p, _)| *p).collect();
    let got = curl_https(port, "--http1.1", &paths);
    assert_eq!(got, PATHS.iter().map(|(_, s)| (*s, "1.1".to_owned())).collect::<Vec<_>>());
    let (spans, exit, _) = rig.collect(agent, |s| {
        count(s, KIND_SERVER, "node-https-server") >= PATHS.len() && count(s, KIND_CLIENT, "curl") >= PATHS.len()
    });
    let stats = exit.stats_line().to_owned();
    eprintln!("{}\n{stats}", describe_tls(&spans));
    for (path, status) in PATHS {
        let server = one(&spans, KIND_SERVER, "node-https-server", path);
        let client_span = one(&spans, KIND_CLIENT, "curl", path);
        for s in [server, client_span] {
            assert_http(s, path, status, "1.1", &spans);
            assert_tls(s, port, Some("1.3"), &spans);
        }
        assert_eq!(server.resource_int("process.pid"), i64::from(node.pid()), "{}", describe_tls(&spans));
        assert_socket_pair(client_span, server, &spans);
    }
    assert_eq!(spans.len(), 2 * PATHS.len(), "{}\n{stats}", describe_tls(&spans));
    assert!(
        exit.stderr.lines().any(|l| l.contains("tls: OpenSSL probes on ") && l.contains("/node")),
        "the node executable must be attached:\n{}",
        exit.stderr
    );
}

#[test]
fn node_https_client_started_after_the_agent_gives_client_spans_linked_to_the_server() {
    let rig = Rig::new("tls-node-client");
    let port = free_port();
    let _server = python_tls_server(port, "py-tls-server", false);
    let agent = rig.agent(&[port], &[]);
    let out = Command::new("/usr/bin/node")
        .arg(peers_dir().join("node_https.js"))
        .args(["get", &port.to_string()])
        .arg(&tls_certs().ca)
        .args(["/ok", "/missing"])
        .env("OTEL_SERVICE_NAME", "node-https-client")
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "node client: {}{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    let statuses: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(statuses, ["200", "404"], "{text}");
    let (spans, exit, _) = rig.collect(agent, |s| {
        count(s, KIND_SERVER, "py-tls-server") >= 2 && count(s, KIND_CLIENT, "node-https-client") >= 2
    });
    let stats = exit.stats_line().to_owned();
    eprintln!("{}\n{stats}", describe_tls(&spans));
    for (path, status) in [("/ok", 200), ("/missing", 404)] {
        let server = one(&spans, KIND_SERVER, "py-tls-server", path);
        let client_span = one(&spans, KIND_CLIENT, "node-https-client", path);
        for s in [server, client_span] {
            assert_http(s, path, status, "1.1", &spans);
            assert_tls(s, port, Some("1.3"), &spans);
        }
        assert_socket_pair(client_span, server, &spans);
        assert_eq!(client_span.attr_str("user_agent.original"), "ghostwire-node-client");
    }
    assert_eq!(spans.len(), 4, "{}\n{stats}", describe_tls(&spans));
}

#[test]
fn a_keep_alive_tls_connection_opened_before_the_agent_traces_its_later_requests() {
    let rig = Rig::new("tls-before");
    let port = free_port();
    let _server = python_tls_server(port, "py-tls-server", false);
    let mut client = python_tls_client(port, "py-tls-client");
    // Handshake and a first request before the agent exists.
    assert!(client.cmd("get /before").starts_with("ok 200 "));
    let agent = rig.agent(&[port], &[]);
    // The server's thread has been blocked inside SSL_read since before the agent: that
    // call has no return probe, so the request it returns (/first-after) is invisible at
    // the server (the client's SSL_write of it is seen). Every later call is probed.
    for (path, status) in [("/first-after", 200), ("/later", 200), ("/boom", 500)] {
        assert!(client.cmd(&format!("get {path}")).starts_with(&format!("ok {status} ")), "{path}");
    }
    let (spans, exit, _) = rig
        .collect(agent, |s| count(s, KIND_SERVER, "py-tls-server") >= 2 && count(s, KIND_CLIENT, "py-tls-client") >= 3);
    client.quit();
    let stats = exit.stats_line().to_owned();
    eprintln!("{}\n{stats}", describe_tls(&spans));
    let first_client = one(&spans, KIND_CLIENT, "py-tls-client", "/first-after");
    assert_http(first_client, "/first-after", 200, "1.1", &spans);
    assert_tls(first_client, port, None, &spans);
    for (path, status) in [("/later", 200), ("/boom", 500)] {
        let server = one(&spans, KIND_SERVER, "py-tls-server", path);
        let client_span = one(&spans, KIND_CLIENT, "py-tls-client", path);
        for s in [server, client_span] {
            assert_http(s, path, status, "1.1", &spans);
            // The handshake happened before the agent: the version may be unknown.
            assert_tls(s, port, None, &spans);
        }
        assert_eq!(server.attr_int("network.peer.port"), client_span.attr_int("network.local.port"));
    }
    // A server span for /first-after, if the agent pieced one together, must be right.
    let first_server = of(&spans, KIND_SERVER, "py-tls-server");
    for s in
        first_server.iter().filter(|s| s.path().as_deref() != Some("/later") && s.path().as_deref() != Some("/boom"))
    {
        assert_http(s, "/first-after", 200, "1.1", &spans);
    }
    assert!(
        spans.iter().all(|s| s.path().as_deref() != Some("/before")),
        "no span for a request the agent never saw:\n{}",
        describe_tls(&spans)
    );
    // Still the one connection opened before the agent.
    let ports: std::collections::BTreeSet<i64> =
        of(&spans, KIND_CLIENT, "py-tls-client").iter().map(|s| s.attr_int("network.local.port")).collect();
    assert_eq!(ports.len(), 1, "{}", describe_tls(&spans));
    assert!(spans.len() == 5 || spans.len() == 6, "{}\n{stats}", describe_tls(&spans));
}

/// Builds `tests/peers/go_tls` (standard library only, no module download) into `dir`.
fn build_go_tls(dir: &Path) -> PathBuf {
    let bin = dir.join("go_tls");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(peers_dir().join("go_tls"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run go (install golang-go: cargo xtask setup --peers): {e}"));
    assert!(out.status.success(), "go build failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    bin
}

#[test]
fn go_crypto_tls_ciphertext_gives_no_span_and_is_counted_as_undecrypted() {
    const REQUESTS: u64 = 3;
    let rig = Rig::new("tls-go");
    let build = TempDir::new("go-tls-build");
    let bin = build_go_tls(build.path());
    let port = free_port();
    let certs = tls_certs();
    let agent = rig.agent(&[port], &["--stats-interval", "1"]);
    let out = Command::new(&bin)
        .args(["-port", &port.to_string(), "-n", &REQUESTS.to_string(), "-linger", "1s"])
        .arg("-cert")
        .arg(&certs.cert)
        .arg("-key")
        .arg(&certs.key)
        .arg("-ca")
        .arg(&certs.ca)
        .stdin(Stdio::null())
        .output()
        .expect("run go_tls");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "go_tls: {}{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.trim(), format!("ok {REQUESTS}"));
    // The counters come once the connections have ended; give the agent that long.
    let counted = wait_for(SPAN_WAIT, || {
        agent.stat_history("tls.undecrypted_conns").last().is_some_and(|n| *n >= 1).then_some(())
    });
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let spans = rig.spans();
    let stats = exit.stats_line().to_owned();
    assert!(spans.is_empty(), "ciphertext must never give a span:\n{}\n{stats}", describe_tls(&spans));
    assert!(counted.is_some(), "tls.undecrypted_conns never reached 1: {stats}");
    // REQUESTS connections (each a new one), all TLS records, none decrypted.
    assert!(exit.stat("tls.conns") >= REQUESTS, "{stats}");
    assert!(exit.stat("tls.undecrypted_conns") >= 1, "{stats}");
    assert_eq!(exit.stat("tls.undecrypted_processes"), 1, "one Go process: {stats}");
    for key in ["conns.not_http", "drop.parse_error", "tls.decrypted_conns", "tls.plaintext_not_http"] {
        assert_eq!(exit.stat(key), 0, "{key}: {stats}");
    }
}

/// The files the agent's `tls: OpenSSL probes on FILE ...` lines name, one per line.
fn attached_files(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("tls: OpenSSL probes on ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|f| f.trim_end_matches([':', ',', ';']).to_owned())
        .collect()
}

#[test]
fn two_processes_mapping_one_libssl_attach_it_once_and_both_are_traced() {
    let rig = Rig::new("tls-shared");
    let [p1, p2] = free_ports();
    // Both map /usr/lib/x86_64-linux-gnu/libssl.so.3 before the agent starts.
    let s1 = python_tls_server(p1, "py-tls-one", false);
    let s2 = python_tls_server(p2, "py-tls-two", false);
    let agent = rig.agent(&[p1, p2], &[]);
    // Two more processes that map it, started afterwards.
    let mut c1 = python_tls_client(p1, "py-tls-client-one");
    let mut c2 = python_tls_client(p2, "py-tls-client-two");
    assert!(c1.cmd("get /ok").starts_with("ok 200 "));
    assert!(c2.cmd("get /ok").starts_with("ok 200 "));
    let (spans, exit, _) =
        rig.collect(agent, |s| count(s, KIND_SERVER, "py-tls-one") >= 1 && count(s, KIND_SERVER, "py-tls-two") >= 1);
    c1.quit();
    c2.quit();
    let stats = exit.stats_line().to_owned();
    let files = attached_files(&exit.stderr);
    eprintln!("attached: {files:?}\n{stats}");
    let libssl: Vec<&String> = files.iter().filter(|f| f.ends_with("x86_64-linux-gnu/libssl.so.3")).collect();
    assert_eq!(libssl.len(), 1, "libssl.so.3 attached exactly once:\n{}", exit.stderr);
    assert_eq!(
        exit.stat("tls.libraries_attached"),
        u64::try_from(files.len()).unwrap_or(u64::MAX),
        "one line per attached file: {files:?} {stats}"
    );
    assert!(exit.stat("tls.attach_shared") >= 1, "{stats}");
    assert_eq!(exit.stat("tls.attach_failed"), 0, "{stats}");
    // The one attachment covers both servers.
    for (svc, port, pid) in [("py-tls-one", p1, s1.pid()), ("py-tls-two", p2, s2.pid())] {
        let server = one(&spans, KIND_SERVER, svc, "/ok");
        assert_http(server, "/ok", 200, "1.1", &spans);
        assert_tls(server, port, Some("1.3"), &spans);
        assert_eq!(server.resource_int("process.pid"), i64::from(pid), "{}", describe_tls(&spans));
    }
}

#[test]
fn garbage_inside_a_tls_session_is_counted_and_tracing_goes_on() {
    // Not HTTP, not the HTTP/2 preface, but with a blank line to tempt a head parser.
    const GARBAGE: &str = "\\x00\\x01\\x02\\x03ghostwire garbage \\xff\\xfe\\xfd not http\\r\\n\\r\\n";
    const GARBAGE_LEN: usize = 4 + 18 + 3 + 9 + 4;
    let rig = Rig::new("tls-garbage");
    let [echo_port, http_port] = free_ports();
    let _echo = python_tls_server(echo_port, "py-tls-echo", true);
    let _server = python_tls_server(http_port, "py-tls-server", false);
    let agent = rig.agent(&[echo_port, http_port], &["--stats-interval", "1"]);
    let mut client = python_tls_client(http_port, "py-tls-client");
    for _ in 0..2 {
        assert_eq!(client.cmd(&format!("raw {echo_port} {GARBAGE}")), format!("ok OK bytes={GARBAGE_LEN}"));
    }
    // A normal request afterwards, on a new connection, is still traced.
    assert!(client.cmd("get /ok").starts_with("ok 200 "));
    let (spans, exit, _) = rig
        .collect(agent, |s| count(s, KIND_SERVER, "py-tls-server") >= 1 && count(s, KIND_CLIENT, "py-tls-client") >= 1);
    client.quit();
    let stats = exit.stats_line().to_owned();
    eprintln!("{}\n{stats}", describe_tls(&spans));
    assert!(exit.stat("tls.plaintext_not_http") >= 1, "garbage plaintext must be counted: {stats}");
    let touches_echo = |s: &SpanRec| {
        [s.attributes.get("network.local.port"), s.attributes.get("network.peer.port")]
            .into_iter()
            .flatten()
            .any(|v| v.to_string().trim_matches('"') == echo_port.to_string())
    };
    assert!(!spans.iter().any(touches_echo), "garbage gave a span:\n{}", describe_tls(&spans));
    let server = one(&spans, KIND_SERVER, "py-tls-server", "/ok");
    let client_span = one(&spans, KIND_CLIENT, "py-tls-client", "/ok");
    for s in [server, client_span] {
        assert_http(s, "/ok", 200, "1.1", &spans);
        assert_tls(s, http_port, Some("1.3"), &spans);
    }
    assert_socket_pair(client_span, server, &spans);
    assert_eq!(spans.len(), 2, "{}\n{stats}", describe_tls(&spans));
}
