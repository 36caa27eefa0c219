//! Harness for ghostwire's privileged end-to-end tests: real kernel probes, real servers,
//! real collectors. Every child process and temporary directory is owned by a guard that
//! cleans it up on drop, also when a test panics.
//!
//! These tests need root. They never skip: a test that cannot load its probes fails.
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "privileged end-to-end test needs root (eBPF programs, namespaces, cgroups, mounts): run it with `cargo xtask test`"
        );
    }
}

/// Directory with the helper scripts (`tests/peers`).
#[must_use]
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The Python venv with the OpenTelemetry SDK and rotel (installed by `cargo xtask setup --peers`).
#[must_use]
pub fn venv() -> PathBuf {
    let v = std::env::var_os("GHOSTWIRE_PEERS_VENV")
        .map_or_else(|| PathBuf::from("/opt/ghostwire-peers/venv"), PathBuf::from);
    assert!(
        v.join("bin/python").exists(),
        "test peers venv not found at {}: run `cargo xtask setup --peers` (or `cargo xtask test`)",
        v.display()
    );
    v
}

#[must_use]
pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// The rotel collector binary shipped in the `rotel` wheel.
#[must_use]
pub fn rotel_binary() -> PathBuf {
    let lib = venv().join("lib");
    let found = std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("rotel-agent not found under {}: run `cargo xtask setup --peers`", lib.display()))
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ghostwire-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    #[must_use]
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self { name: name.to_owned(), child }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test if the process already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}", self.name);
        }
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.signal_and_wait(libc::SIGTERM, Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A free TCP port on loopback.
#[must_use]
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free TCP ports on loopback. All listeners are held until every port is
/// chosen: picking them one by one can hand out the same port twice.
#[must_use]
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> =
        (0..N).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

/// The ghostwire binary under test (`GHOSTWIRE_BIN`, else target/release/ghostwire).
#[must_use]
pub fn agent_binary() -> PathBuf {
    let bin = std::env::var_os("GHOSTWIRE_BIN")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ghostwire"), PathBuf::from);
    assert!(bin.exists(), "ghostwire binary not found at {}: run `cargo xtask test`", bin.display());
    bin
}

/// A running agent. Its stderr is collected; `stop` sends SIGINT (flush) and checks the
/// exit.
pub struct Agent {
    proc: Proc,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Copies the agent's stderr into `stderr`; ends when the agent's stderr closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What an agent printed and how it ended.
pub struct AgentExit {
    pub status: ExitStatus,
    pub stderr: String,
}

impl AgentExit {
    /// The value of `key` in the final `stats:` line (0 when the line does not show it:
    /// only non-zero counters are printed). Fails the test when `key` is not a counter
    /// the agent can print, so a typo cannot pass as "zero".
    #[must_use]
    pub fn stat(&self, key: &str) -> u64 {
        assert!(
            is_stat_key(key),
            "`{key}` is not a counter the agent can print (userspace counters are \
             ghostwire::stats::Counter names; kernel ones kernel.<counter> and \
             kernel.<probe>.<counter> from ghostwire_common::{{counter, probe}}::NAMES; \
             per-edge ones break.A->B)"
        );
        self.stats().get(key).copied().unwrap_or(0)
    }

    /// Every `key=value` of the final `stats:` line.
    #[must_use]
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.stderr.lines().rev().find(|l| l.starts_with("stats:")).map(parse_stats_line).unwrap_or_default()
    }

    /// The final `stats:` line (for messages).
    #[must_use]
    pub fn stats_line(&self) -> &str {
        self.stderr.lines().rev().find(|l| l.starts_with("stats:")).unwrap_or("(no stats: line)")
    }

    /// What follows `capture: ` in the agent's stderr: the hooks in use.
    #[must_use]
    pub fn capture_hooks(&self) -> Option<&str> {
        self.stderr.lines().find_map(|l| l.split_once("capture: ").map(|(_, rest)| rest))
    }
}

/// The `key=value` pairs of one `stats:` line.
#[must_use]
pub fn parse_stats_line(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.rsplit_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Whether the agent can print `key` in its `stats:` line: a userspace counter
/// (`ghostwire::stats::Counter`) or gauge (`Gauge`), `kernel.<counter>` or `kernel.<probe>.<counter>`
/// (`ghostwire_common::{counter, probe}::NAMES`), or a per-edge `break.A->B`.
#[must_use]
pub fn is_stat_key(key: &str) -> bool {
    use ghostwire_common::{counter, probe};
    if ghostwire::stats::Counter::ALL.iter().any(|c| c.name() == key)
        || ghostwire::stats::Gauge::ALL.iter().any(|g| g.name() == key)
        || ghostwire::stats::DERIVED.contains(&key)
    {
        return true;
    }
    if let Some(rest) = key.strip_prefix("break.") {
        return rest.contains("->");
    }
    let Some(rest) = key.strip_prefix("kernel.") else { return false };
    if counter::NAMES.contains(&rest) {
        return true;
    }
    rest.split_once('.').is_some_and(|(p, c)| probe::NAMES.contains(&p) && counter::NAMES.contains(&c))
}

impl Agent {
    /// Starts the agent and waits for its `ready` line. A failure to load or attach the
    /// probes fails the test, with the agent's own error message.
    #[must_use]
    pub fn start(args: &[String], env: &[(&str, &str)]) -> Self {
        require_root();
        let mut cmd = Command::new(agent_binary());
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("ghostwire", &mut cmd);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = proc.child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[ghostwire] {line}");
                sink.lock().expect("stderr lock").push(line);
            }
        });
        let agent = Self { proc, stderr, reader: Some(reader) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut agent = agent;
        loop {
            if agent.stderr_text().lines().any(|l| l.starts_with("ready")) {
                return agent;
            }
            if let Ok(Some(status)) = agent.proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("ghostwire exited with {status} before it was ready:\n{}", agent.stderr_text());
            }
            assert!(Instant::now() < deadline, "ghostwire not ready within 60 s:\n{}", agent.stderr_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[must_use]
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// The `stats:` lines printed so far (`--stats-interval`), parsed; `key` must be a
    /// counter the agent can print. One value per line, oldest first.
    #[must_use]
    pub fn stat_history(&self, key: &str) -> Vec<u64> {
        assert!(is_stat_key(key), "`{key}` is not a counter the agent can print");
        let lines = self.stderr.lock().expect("stderr lock");
        lines
            .iter()
            .filter(|l| l.starts_with("stats:"))
            .map(|l| parse_stats_line(l).get(key).copied().unwrap_or(0))
            .collect()
    }

    /// SIGINT, then waits (at most 20 s) for a clean exit.
    #[must_use]
    pub fn stop(mut self) -> AgentExit {
        let status = self
            .proc
            .signal_and_wait(libc::SIGINT, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("ghostwire did not exit within 20 s of SIGINT:\n{}", self.stderr_text()));
        // The agent exited, so its stderr reaches EOF once every line is read: wait for
        // the reader (bounded, should a child of the agent hold the pipe open).
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !reader.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "ghostwire exited ({status}) but its stderr stayed open for 10 s:\n{}",
                    self.stderr_text()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Err(e) = reader.join() {
                std::panic::resume_unwind(e);
            }
        }
        AgentExit { status, stderr: self.stderr_text() }
    }
}

/// nginx (master and one worker, in the foreground), killed on drop.
pub struct Nginx {
    _proc: Proc,
    dir: TempDir,
}

impl Nginx {
    /// nginx as a reverse proxy: listens on `port`, forwards everything to `upstream_port`.
    #[must_use]
    pub fn reverse_proxy(port: u16, upstream_port: u16) -> Self {
        Self::with_config(port, |d| {
            format!(
                "{}http {{\n  {}\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 location / {{ proxy_pass http://127.0.0.1:{upstream_port}; }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
            )
        })
    }

    /// nginx with the configuration `conf(dir)` returns (`dir`: a scratch directory
    /// owned by the guard, for the pid file, temp paths and document roots), waiting
    /// until it listens on 127.0.0.1:`port`.
    #[must_use]
    pub fn with_config(port: u16, conf: impl FnOnce(&Path) -> String) -> Self {
        Self::spawn(Command::new("nginx"), conf, || wait_port(port, "nginx"))
    }

    /// Writes `conf(dir)`, runs `nginx` (the command given, e.g. inside a namespace) on
    /// it in the foreground, and waits with `ready`.
    fn spawn(mut nginx: Command, conf: impl FnOnce(&Path) -> String, ready: impl FnOnce()) -> Self {
        let dir = TempDir::new("nginx");
        let text = conf(dir.path());
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, text).expect("write nginx.conf");
        let mut proc =
            Proc::spawn("nginx", nginx.arg("-c").arg(&path).arg("-p").arg(dir.path()).arg("-e").arg("stderr"));
        ready();
        proc.assert_running();
        Self { _proc: proc, dir }
    }

    /// The main context for a foreground nginx whose files live in `dir`.
    #[must_use]
    pub fn main_context(dir: &Path) -> String {
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nerror_log stderr warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n",
            d = dir.display()
        )
    }

    /// `http` directives that keep nginx's files in `dir` and its access log off.
    #[must_use]
    pub fn http_defaults(dir: &Path) -> String {
        format!(
            "access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;",
            d = dir.display()
        )
    }

    /// The scratch directory (holds nginx.conf).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The legacy Python `http.server` backend (`tests/peers/backend.py`).
#[must_use]
pub fn python_backend(port: u16, service_name: &str) -> Proc {
    let mut proc = Proc::spawn(
        "backend",
        Command::new("python3")
            .arg(peers_dir().join("backend.py"))
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", service_name),
    );
    wait_port(port, "python backend");
    // Something else answering on the port would hide a backend that failed to bind.
    proc.assert_running();
    proc
}

/// The HTTP/1.1 keep-alive Python server (`tests/peers/http11_server.py`): Content-Length
/// bodies, `/slow` (sleeps 1.5 s, `?s=N`), `/missing` 404, `/boom` 500, POST reads its
/// body. `fork`: `socketserver.ForkingMixIn`, a forked child per connection.
#[must_use]
pub fn python_http11_server(port: u16, service_name: &str, fork: bool) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(peers_dir().join("http11_server.py")).arg(port.to_string()).env("OTEL_SERVICE_NAME", service_name);
    if fork {
        cmd.arg("--fork");
    }
    let mut proc = Proc::spawn("http11_server", &mut cmd);
    wait_port(port, "python HTTP/1.1 server");
    proc.assert_running();
    proc
}

/// One HTTP/1.1 response read off a connection.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    #[must_use]
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that keeps leftover bytes between responses (keep-alive,
/// pipelining). Responses must carry a Content-Length (or have no body: 1xx, 204, 304).
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connects to 127.0.0.1:`port` with 10 s read and write timeouts.
    #[must_use]
    pub fn connect(port: u16) -> Self {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        stream.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
        Self { stream, buf: Vec::new() }
    }

    /// Writes `bytes` with one `write_all`.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        self.stream.write_all(bytes).expect("send request");
    }

    /// `GET path` (keep-alive), then its response.
    pub fn get(&mut self, path: &str) -> HttpResponse {
        let host = self.stream.peer_addr().expect("peer addr");
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ghostwire-tests\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// Whether response bytes are already waiting (non-blocking peek).
    #[must_use]
    pub fn has_pending_bytes(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        let got = matches!(self.stream.peek(&mut b), Ok(n) if n > 0);
        self.stream.set_nonblocking(false).expect("blocking");
        got
    }

    /// Reads one response (head and Content-Length body).
    pub fn read_response(&mut self) -> HttpResponse {
        use std::io::Read as _;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut chunk = vec![0u8; 64 * 1024];
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "no complete response head within 15 s: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "connection closed before a response head: {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().expect("Content-Length"))
            .unwrap_or(0);
        self.buf.drain(..end + 4);
        while self.buf.len() < len {
            assert!(Instant::now() < deadline, "response body incomplete within 15 s");
            let n = self.stream.read(&mut chunk).expect("read body");
            assert!(n > 0, "connection closed inside a response body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        HttpResponse { status, headers, body }
    }
}

/// The service name the agent gives this test process: its executable's file name.
#[must_use]
pub fn own_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .expect("test executable name")
}

/// `curl -s http://127.0.0.1:port/path`, returning the status code.
#[must_use]
pub fn curl(port: u16, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// One span as read back from OTLP JSON.
#[derive(Clone, Debug)]
pub struct SpanRec {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// W3C `tracestate` (empty when none).
    pub trace_state: String,
    pub name: String,
    /// OTLP span kind: 2 = SERVER, 3 = CLIENT.
    pub kind: i64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// OTLP status code: 0 = unset, 2 = error.
    pub status_code: i64,
    pub attributes: BTreeMap<String, Value>,
    pub resource: BTreeMap<String, Value>,
}

pub const KIND_SERVER: i64 = 2;
pub const KIND_CLIENT: i64 = 3;
pub const STATUS_ERROR: i64 = 2;

impl SpanRec {
    #[must_use]
    pub fn attr_str(&self, key: &str) -> String {
        match self.attributes.get(key) {
            Some(Value::String(s)) => s.clone(),
            other => panic!("span {} has no string attribute {key} ({other:?}): {self:#?}", self.name),
        }
    }

    #[must_use]
    pub fn attr_int(&self, key: &str) -> i64 {
        match self.attributes.get(key) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or_default(),
            Some(Value::String(s)) => s.parse().unwrap_or_else(|_| panic!("{key}={s} is not an integer")),
            other => panic!("span {} has no integer attribute {key} ({other:?}): {self:#?}", self.name),
        }
    }

    /// The request path: `url.path` (SERVER), the path of `url.full` without its query
    /// (CLIENT); `None` when the span has neither.
    #[must_use]
    pub fn path(&self) -> Option<String> {
        match (self.attributes.get("url.path"), self.attributes.get("url.full")) {
            (Some(Value::String(p)), _) => Some(p.clone()),
            (None, Some(Value::String(full))) => {
                let rest = full.split_once("://").map_or(full.as_str(), |(_, r)| r);
                let path = rest.find('/').map_or("/", |i| &rest[i..]);
                Some(path.split(['?', '#']).next().unwrap_or_default().to_owned())
            }
            _ => None,
        }
    }

    /// A boolean attribute (`true` or `"true"`); `None` when absent.
    #[must_use]
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            other => panic!("span {} attribute {key} is not a boolean: {other:?}", self.name),
        }
    }

    /// An integer resource attribute (`process.pid`).
    #[must_use]
    pub fn resource_int(&self, key: &str) -> i64 {
        match self.resource.get(key) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or_default(),
            Some(Value::String(s)) => s.parse().unwrap_or_else(|_| panic!("resource {key}={s} is not an integer")),
            other => panic!("span {} has no integer resource attribute {key} ({other:?})", self.name),
        }
    }

    #[must_use]
    pub fn service(&self) -> String {
        match self.resource.get("service.name") {
            Some(Value::String(s)) => s.clone(),
            other => panic!("span without service.name ({other:?})"),
        }
    }
}

fn any_value(v: &Value) -> Value {
    let Some(obj) = v.as_object() else { return Value::Null };
    for key in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(x) = obj.get(key) {
            return x.clone();
        }
    }
    Value::Null
}

fn attrs(list: Option<&Value>) -> BTreeMap<String, Value> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv.get("key")?.as_str()?.to_owned(), any_value(kv.get("value")?))))
        .collect()
}

fn num(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Every span of an OTLP-JSON-lines file (one `ExportTraceServiceRequest` per line).
#[must_use]
pub fn read_jsonl(path: &Path) -> Vec<SpanRec> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let req: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), n + 1));
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attrs(rs.pointer("/resource/attributes"));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(SpanRec {
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent_span_id: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        trace_state: s["traceState"].as_str().unwrap_or_default().to_owned(),
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        kind: s["kind"].as_i64().unwrap_or_default(),
                        start_ns: num(s.get("startTimeUnixNano")),
                        end_ns: num(s.get("endTimeUnixNano")),
                        status_code: s.pointer("/status/code").and_then(Value::as_i64).unwrap_or(0),
                        attributes: attrs(s.get("attributes")),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A short description of spans for assertion messages.
#[must_use]
pub fn describe(spans: &[SpanRec]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} kind={} service={:?} path={:?} status={:?} local={:?}:{:?} peer={:?}:{:?}",
                s.name,
                s.kind,
                s.resource.get("service.name"),
                s.attributes.get("url.path").or(s.attributes.get("url.full")),
                s.attributes.get("http.response.status_code"),
                s.attributes.get("network.local.address"),
                s.attributes.get("network.local.port"),
                s.attributes.get("network.peer.address"),
                s.attributes.get("network.peer.port"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Network namespaces

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn run_ip_quiet(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `gw<pid>n<k>` → `pid`, for the namespaces this harness names.
fn netns_owner(name: &str) -> Option<u32> {
    let (pid, k) = name.strip_prefix("gw")?.split_once('n')?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Deletes namespaces left by earlier test processes that died without unwinding
/// (SIGKILL, abort): named `gw<pid>n<k>` with no process `pid` alive any more.
fn reap_stale_netns() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).stdin(Stdio::null()).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        if let Some(pid) = netns_owner(name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing stale network namespace {name} (its test process {pid} is gone)");
                // Orphans of that test (a Phoenix, a service) would keep it alive.
                let pids = Command::new("ip").args(["netns", "pids", name]).stdin(Stdio::null()).output();
                for p in pids.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().lines() {
                    if let Ok(p) = p.trim().parse::<i32>() {
                        // SAFETY: plain kill(2) of a process inside that namespace.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
                run_ip_quiet(&["netns", "delete", name]);
            }
        }
    }
}

/// A network namespace (`ip netns add gw<pid>n<k>`, `lo` up), deleted on drop together
/// with the veths that have an end in it. Drop every process running inside it first
/// (declare such guards before the `Netns` in a struct, or drop them explicitly).
pub struct Netns {
    name: String,
}

impl Netns {
    #[must_use]
    pub fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        require_root();
        reap_stale_netns();
        let name = format!("gw{}n{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        assert!(name.len() <= 15, "namespace name {name} too long");
        // A leftover from a process that had the same pid.
        run_ip_quiet(&["netns", "delete", &name]);
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: `ip` execs the program (same pid), so a [`Proc`]
    /// made from this command signals the program itself.
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that entered this namespace.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid namespace fd; it only moves this thread.
                let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Waits (30 s) until something listens on `addr` inside this namespace.
    pub fn wait_port(&self, addr: std::net::SocketAddr, what: &str) {
        let ok = self.run_inside(|| {
            wait_for(Duration::from_secs(30), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok().then_some(())
            })
        });
        assert!(ok.is_some(), "{what} did not listen on {addr} in namespace {} within 30 s", self.name);
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !run_ip_quiet(&["netns", "delete", &self.name]) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// One end of a [`Veth`]: its namespace (`None`: the root namespace), interface and
/// address (in a /30).
#[derive(Clone, Debug)]
pub struct VethEnd {
    pub netns: Option<String>,
    pub ifname: String,
    pub addr: std::net::Ipv4Addr,
}

/// A veth pair with a /30 from 10.231.0.0/16 (`.1` on end a, `.2` on end b), both ends
/// up. Deleted on drop (and with either namespace).
pub struct Veth {
    pub a: VethEnd,
    pub b: VethEnd,
}

/// /30 blocks in 10.231.0.0/16.
const VETH_BLOCKS: u32 = 1 << 14;

fn block_addr(block: u32, host: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 231, 0, 0)) + block * 4 + host)
}

/// The 10.231.0.0/16 /30 blocks used by addresses of the root namespace.
fn root_blocks_in_use() -> std::collections::BTreeSet<u32> {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).stdin(Stdio::null()).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<std::net::Ipv4Addr>().ok())
        .filter(|a| a.octets()[..2] == [10, 231])
        .map(|a| (u32::from(a) & 0xffff) / 4)
        .collect()
}

impl Veth {
    /// Links `a` and `b` (`None`: the root namespace; at most one of them).
    #[must_use]
    pub fn new(a: Option<&Netns>, b: Option<&Netns>) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        assert!(a.is_some() || b.is_some(), "a veth needs at least one namespace");
        let pid = std::process::id();
        let k = SEQ.fetch_add(1, Ordering::Relaxed);
        // Unique per process and pair; skips blocks another run put in the root namespace.
        let used = if a.is_none() || b.is_none() { root_blocks_in_use() } else { Default::default() };
        let block = (0..VETH_BLOCKS)
            .map(|i| (pid.wrapping_mul(61).wrapping_add(k).wrapping_add(i)) % VETH_BLOCKS)
            .find(|b| !used.contains(b))
            .expect("10.231.0.0/16 exhausted");
        let end = |ns: Option<&Netns>, side: char, host: u32| VethEnd {
            netns: ns.map(|n| n.name().to_owned()),
            ifname: format!("gw{pid}v{k}{side}"),
            addr: block_addr(block, host),
        };
        let veth = Self { a: end(a, 'a', 1), b: end(b, 'b', 2) };
        assert!(veth.a.ifname.len() <= 15, "interface name {} too long", veth.a.ifname);
        let mut add: Vec<&str> = vec!["link", "add", &veth.a.ifname];
        if let Some(ns) = &veth.a.netns {
            add.extend(["netns", ns]);
        }
        add.extend(["type", "veth", "peer", "name", &veth.b.ifname]);
        if let Some(ns) = &veth.b.netns {
            add.extend(["netns", ns]);
        }
        run_ip(&add);
        for e in [&veth.a, &veth.b] {
            let cidr = format!("{}/30", e.addr);
            let mut pre: Vec<&str> = Vec::new();
            if let Some(ns) = &e.netns {
                pre.extend(["-n", ns]);
            }
            run_ip(&[&pre[..], &["addr", "add", &cidr, "dev", &e.ifname]].concat());
            run_ip(&[&pre[..], &["link", "set", &e.ifname, "up"]].concat());
        }
        veth
    }

    /// The root namespace (end a) and `ns` (end b).
    #[must_use]
    pub fn root_to(ns: &Netns) -> Self {
        Self::new(None, Some(ns))
    }

    /// Two namespaces.
    #[must_use]
    pub fn between(a: &Netns, b: &Netns) -> Self {
        Self::new(Some(a), Some(b))
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let mut args: Vec<&str> = Vec::new();
        if let Some(ns) = &self.a.netns {
            args.extend(["-n", ns]);
        }
        args.extend(["link", "del", &self.a.ifname]);
        // Already gone when its namespace was deleted first.
        run_ip_quiet(&args);
    }
}

// ---------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (loopback and test namespaces only)

/// `GET path` on `addr` (HTTP/1.1, `Connection: close`): status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read as _, Write as _};
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = &raw[end + 4..];
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let (mut out, mut rest) = (Vec::new(), body);
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("truncated chunk"))?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// Arize Phoenix

/// The venv holding Arize Phoenix (`GHOSTWIRE_PHOENIX_VENV`, else
/// /opt/ghostwire-peers/phoenix-venv; installed by `cargo xtask setup --peers`).
#[must_use]
pub fn phoenix_venv() -> PathBuf {
    let v = std::env::var_os("GHOSTWIRE_PHOENIX_VENV")
        .map_or_else(|| PathBuf::from("/opt/ghostwire-peers/phoenix-venv"), PathBuf::from);
    assert!(
        v.join("bin/phoenix").exists(),
        "Arize Phoenix not found in {}: run `cargo xtask setup --peers` (or `cargo xtask test`)",
        v.display()
    );
    v
}

/// One span as stored by Phoenix (`GET /v1/projects/default/spans`). Phoenix keeps no
/// span kind (`span_kind` is `UNKNOWN` for OTLP spans) and no resource.
#[derive(Clone, Debug)]
pub struct PhoenixSpan {
    pub trace_id: String,
    /// `context.span_id`
    pub span_id: String,
    /// `parent_id` (`null` for a root)
    pub parent_id: Option<String>,
    pub name: String,
    /// `attributes`: an object keyed by the full dotted attribute name, e.g.
    /// `{"ghostwire.link": "header", "ghostwire.propagation_break": true}`.
    pub attributes: Value,
}

impl PhoenixSpan {
    /// The attribute `key`, looked up flat (`"ghostwire.link"`) and, should a Phoenix
    /// version nest dotted names, along the path (`ghostwire` → `link`).
    #[must_use]
    pub fn attr(&self, key: &str) -> Option<&Value> {
        if let Some(v) = self.attributes.get(key) {
            return Some(v);
        }
        key.split('.').try_fold(&self.attributes, |v, k| v.get(k))
    }

    #[must_use]
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }

    /// A boolean attribute (`true` or `"true"`).
    #[must_use]
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attr(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Phoenix (`phoenix serve`) in its own network namespace, reachable from the root
/// namespace over a veth at [`Phoenix::addr`]: UI/REST on 6006, OTLP/gRPC on 4317. Its
/// gRPC listener binds every interface, which is why it gets a namespace of its own.
pub struct Phoenix {
    // Drop order: the process first, then the veth and the namespace, then its files.
    proc: Proc,
    _veth: Veth,
    netns: Netns,
    dir: TempDir,
    addr: std::net::Ipv4Addr,
}

pub const PHOENIX_HTTP_PORT: u16 = 6006;
pub const PHOENIX_GRPC_PORT: u16 = 4317;

impl Phoenix {
    /// Starts Phoenix and waits (at most 90 s) until `GET /` answers.
    #[must_use]
    pub fn start() -> Self {
        require_root();
        let phoenix = phoenix_venv().join("bin/phoenix");
        let netns = Netns::new();
        let veth = Veth::root_to(&netns);
        let addr = veth.b.addr;
        let dir = TempDir::new("phoenix");
        let log = std::fs::File::create(dir.path().join("phoenix.log")).expect("create phoenix.log");
        let t0 = Instant::now();
        let proc = Proc::spawn(
            "phoenix",
            netns
                .command(&phoenix)
                .arg("serve")
                .env("PHOENIX_HOST", addr.to_string())
                .env("PHOENIX_PORT", PHOENIX_HTTP_PORT.to_string())
                .env("PHOENIX_GRPC_PORT", PHOENIX_GRPC_PORT.to_string())
                .env("PHOENIX_WORKING_DIR", dir.path())
                .env("PHOENIX_TELEMETRY_ENABLED", "false")
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log),
        );
        let mut p = Self { proc, _veth: veth, netns, dir, addr };
        let sock = std::net::SocketAddr::from((addr, PHOENIX_HTTP_PORT));
        let deadline = t0 + Duration::from_secs(90);
        loop {
            if matches!(http_get(sock, "/", Duration::from_secs(2)), Ok((200, _))) {
                break;
            }
            if let Ok(Some(status)) = p.proc.child.try_wait() {
                panic!("phoenix exited with {status} before it answered:\n{}", p.log_tail());
            }
            assert!(Instant::now() < deadline, "phoenix did not answer on {sock} within 90 s:\n{}", p.log_tail());
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "phoenix up in {:.1} s at {sock} (namespace {}, OTLP/gRPC {})",
            t0.elapsed().as_secs_f64(),
            p.netns.name(),
            p.otlp_grpc_endpoint()
        );
        p
    }

    /// Fails the test (with Phoenix's last output) if Phoenix exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.proc.child.try_wait() {
            panic!("phoenix exited with {status}:\n{}", self.log_tail());
        }
    }

    /// Phoenix's address (its end of the veth).
    #[must_use]
    pub fn addr(&self) -> std::net::Ipv4Addr {
        self.addr
    }

    #[must_use]
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// `http://ADDR:4317`
    #[must_use]
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://{}:{PHOENIX_GRPC_PORT}", self.addr)
    }

    /// The last lines of Phoenix's output.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("phoenix.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every span Phoenix stores for `trace_id` (32 hex), following `next_cursor`.
    #[must_use]
    pub fn spans(&self, trace_id: &str) -> Vec<PhoenixSpan> {
        let sock = std::net::SocketAddr::from((self.addr, PHOENIX_HTTP_PORT));
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..1000 {
            let mut path = format!("/v1/projects/default/spans?trace_id={trace_id}&limit=100");
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(c);
            }
            let (status, body) = http_get(sock, &path, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("GET {path} from phoenix: {e}\n{}", self.log_tail()));
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, 200, "GET {path} from phoenix: {body}");
            let page: Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("phoenix answered non-JSON ({e}): {body}"));
            for s in page["data"].as_array().into_iter().flatten() {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                out.push(PhoenixSpan {
                    trace_id: text(&s["context"]["trace_id"]),
                    span_id: text(&s["context"]["span_id"]),
                    parent_id: s["parent_id"].as_str().map(str::to_owned),
                    name: text(&s["name"]),
                    attributes: s.get("attributes").cloned().unwrap_or(Value::Null),
                });
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return out,
            }
        }
        panic!("phoenix kept paginating for trace {trace_id}");
    }

    /// Polls [`Phoenix::spans`] until the trace holds at least `n` spans or `timeout`
    /// passes; returns what it has then.
    #[must_use]
    pub fn wait_spans(&self, trace_id: &str, n: usize, timeout: Duration) -> Vec<PhoenixSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans(trace_id);
            if spans.len() >= n || Instant::now() >= deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 and gRPC peers

/// The legacy grpcio server (`tests/peers/grpc_server.py`, service `demo.Echo`, no SDK) on
/// 127.0.0.1:`port`, run by the peers venv's Python with `OTEL_SERVICE_NAME=service_name`.
/// `upstream_port`: where `/demo.Echo/Chain` sends its plain HTTP/1 GET.
#[must_use]
pub fn grpc_server(port: u16, upstream_port: Option<u16>, service_name: &str) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("grpc_server.py"))
        .args(["--port", &port.to_string()])
        .env("OTEL_SERVICE_NAME", service_name)
        // Its "ready" line; errors still go to stderr.
        .stdout(Stdio::null());
    if let Some(u) = upstream_port {
        cmd.args(["--upstream-port", &u.to_string()]);
    }
    let mut proc = Proc::spawn("grpc_server", &mut cmd);
    wait_port(port, "grpc server");
    proc.assert_running();
    proc
}

/// The legacy grpcio client (`tests/peers/grpc_client.py`): ONE channel to
/// 127.0.0.1:`port`, driven line by line (`unary PAYLOAD`, `stream N`, `many N`,
/// `meta TRACEPARENT`, ...). Killed and reaped on drop.
pub struct GrpcClient(LineClient);

impl GrpcClient {
    /// Starts the client with `OTEL_SERVICE_NAME=service_name`. The channel connects on
    /// the first call.
    #[must_use]
    pub fn start(port: u16, service_name: &str) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(peers_dir().join("grpc_client.py"))
            .args(["--port", &port.to_string()])
            .env("OTEL_SERVICE_NAME", service_name);
        // A slow call (`slow`) answers late: a longer wait than LineClient's default.
        Self(LineClient::start("grpc_client", &mut cmd).answer_within(Duration::from_secs(60)))
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends one command and returns its answer line (`ok STATUS ...`); fails the test on
    /// `err ...`, on an exited client or after 60 s without an answer.
    pub fn cmd(&mut self, command: &str) -> String {
        self.0.cmd(command)
    }

    /// Sends `command` and checks that the call ended with gRPC status `status` (the
    /// second word of the answer).
    pub fn expect(&mut self, command: &str, status: &str) -> String {
        let line = self.cmd(command);
        assert_eq!(line.split_whitespace().nth(1), Some(status), "grpc_client: {command:?} answered {line:?}");
        line
    }

    /// `quit`: closes the channel (the connection ends) and waits (10 s) for the exit.
    pub fn quit(self) {
        self.0.quit();
    }
}

impl Nginx {
    /// nginx serving static files over h2c (`listen 127.0.0.1:port http2`, prior
    /// knowledge): `/index.html`, `/style.css`, `/data.json` and `/f/1.txt` ..
    /// `/f/50.txt` (each a short line naming itself); anything else is 404.
    #[must_use]
    pub fn h2c_static(port: u16) -> Self {
        Self::with_config(port, |d| {
            let www = d.join("www");
            let files = www.join("f");
            std::fs::create_dir_all(&files).expect("create www");
            let write =
                |p: PathBuf, body: &[u8]| std::fs::write(&p, body).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            write(www.join("index.html"), b"<!DOCTYPE html><html><body><h1>ghostwire h2c</h1></body></html>\n");
            write(www.join("style.css"), b"body { margin: 2em; }\n");
            write(www.join("data.json"), b"{\"protocol\": \"h2c\"}\n");
            for i in 1..=50 {
                write(files.join(format!("{i}.txt")), format!("file {i}\n").as_bytes());
            }
            // Workers run as nobody: the document root must be readable by others.
            for p in [d, &www, &files] {
                std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
            }
            format!(
                "{}http {{\n  {}\n  types {{ text/html html; text/css css; application/json json; text/plain txt; }}\n  \
                 server {{\n    listen 127.0.0.1:{port} http2;\n    root {};\n    log_not_found off;\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
                www.display()
            )
        })
    }
}

/// What `h2load` reported.
#[derive(Clone, Debug, Default)]
pub struct H2loadReport {
    /// `requests: T total, S started, D done, OK succeeded, F failed, E errored, ...`
    pub total: u64,
    pub done: u64,
    pub errored: u64,
    /// `status codes: A 2xx, B 3xx, C 4xx, D 5xx`
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub output: String,
}

/// `h2load -c 1 -m 1` (one client, so one connection; one request at a time) over h2c
/// prior knowledge to 127.0.0.1:`port`, each of `paths` once, in order.
#[must_use]
pub fn h2load(port: u16, paths: &[&str]) -> H2loadReport {
    let out = Command::new("h2load")
        .args(["-c", "1", "-m", "1", "-T", "20", "-n", &paths.len().to_string()])
        .args(paths.iter().map(|p| format!("http://127.0.0.1:{port}{p}")))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run h2load: {e}"));
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "h2load failed ({}): {output}{}", out.status, String::from_utf8_lossy(&out.stderr));
    // "N word," pairs of the line that starts with `prefix`.
    let field = |prefix: &str, word: &str| -> u64 {
        output
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| {
                rest.split(',').find_map(|part| {
                    let mut it = part.split_whitespace();
                    let n = it.next()?.parse().ok()?;
                    (it.next()? == word).then_some(n)
                })
            })
            .unwrap_or_else(|| panic!("h2load output has no `{prefix} ... {word}`:\n{output}"))
    };
    H2loadReport {
        total: field("requests:", "total"),
        done: field("requests:", "done"),
        errored: field("requests:", "errored"),
        status_2xx: field("status codes:", "2xx"),
        status_4xx: field("status codes:", "4xx"),
        output: output.clone(),
    }
}

/// A string attribute, `None` when absent or not a string.
#[must_use]
pub fn attr_opt<'a>(s: &'a SpanRec, key: &str) -> Option<&'a str> {
    s.attributes.get(key).and_then(Value::as_str)
}

/// Like [`describe`], with the RPC and HTTP/2 attributes these tests look at.
#[must_use]
pub fn describe_rpc(spans: &[SpanRec]) -> String {
    spans
        .iter()
        .map(|s| {
            let a = |k: &str| s.attributes.get(k).map_or_else(|| "-".to_owned(), ToString::to_string);
            format!(
                "{kind} {svc} {name:?} rpc.method={m} grpc={st} http={method} {path} status={hs} v={v} err={err} \
                 msgs={rq}/{rs} trace={t} span={sp} parent={p:?} link={link} local={lp} peer={pp} hpack_unknown={u}",
                kind = match s.kind {
                    KIND_SERVER => "SERVER",
                    KIND_CLIENT => "CLIENT",
                    _ => "?",
                },
                svc = s.resource.get("service.name").and_then(Value::as_str).unwrap_or("?"),
                name = s.name,
                m = a("rpc.method"),
                st = a("rpc.response.status_code"),
                method = a("http.request.method"),
                path = s.path().unwrap_or_default(),
                hs = a("http.response.status_code"),
                v = a("network.protocol.version"),
                err = if s.status_code == STATUS_ERROR { a("error.type") } else { "no".to_owned() },
                rq = a("ghostwire.grpc.request.messages"),
                rs = a("ghostwire.grpc.response.messages"),
                t = s.trace_id,
                sp = s.span_id,
                p = s.parent_span_id,
                link = a("ghostwire.link"),
                lp = a("network.local.port"),
                pp = a("network.peer.port"),
                u = a("ghostwire.hpack.unknown"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// TLS peers

/// The test PKI: one self-signed CA and a server certificate for `localhost` and
/// `127.0.0.1` that it signed (EC P-256), made with the `openssl` CLI.
pub struct TlsCerts {
    /// CA certificate (PEM): what the clients trust.
    pub ca: PathBuf,
    /// Server certificate (PEM), SAN `DNS:localhost, IP:127.0.0.1`.
    pub cert: PathBuf,
    /// Server private key (PEM, unencrypted).
    pub key: PathBuf,
    dir: PathBuf,
}

static TLS_CERTS: std::sync::OnceLock<TlsCerts> = std::sync::OnceLock::new();

extern "C" fn remove_tls_certs() {
    if let Some(c) = TLS_CERTS.get() {
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run openssl (install the `openssl` package: cargo xtask setup --peers): {e}")
    });
    assert!(
        out.status.success(),
        "`openssl {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The test certificates, made once per test binary (removed when it exits). Clients
/// verify the server against [`TlsCerts::ca`], so no test needs `-k`.
#[must_use]
pub fn tls_certs() -> &'static TlsCerts {
    TLS_CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ghostwire-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // SAFETY: registers a plain `extern "C" fn()` to run at exit.
        unsafe { libc::atexit(remove_tls_certs) };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run_openssl(
            &dir,
            &[
                &["req", "-x509", "-new"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "3",
                    "-subj",
                    "/CN=ghostwire test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        run_openssl(
            &dir,
            &[&["req", "-new"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]]
                .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        run_openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        // nginx workers (nobody) never read them, but a peer run as another user might.
        for f in ["ca.pem", "server.pem", "server.key"] {
            let p = dir.join(f);
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        }
        TlsCerts { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key"), dir }
    })
}

impl Nginx {
    /// nginx terminating TLS on 127.0.0.1:`port` (HTTP/1.1 and, via ALPN, HTTP/2; the
    /// [`tls_certs`] server certificate) and forwarding everything in plain HTTP to
    /// 127.0.0.1:`upstream_port`.
    #[must_use]
    pub fn https_reverse_proxy(port: u16, upstream_port: u16) -> Self {
        let certs = tls_certs();
        Self::with_config(port, |d| {
            // nginx 1.22 (Debian 12) has no `http2 on;`: the flag is on `listen`. Its
            // default protocols stop at TLS 1.2 (1.3 is on by default from 1.23.4).
            format!(
                "{}http {{\n  {}\n  server {{\n    listen 127.0.0.1:{port} ssl http2;\n    \
                 ssl_protocols TLSv1.2 TLSv1.3;\n    \
                 ssl_certificate {};\n    ssl_certificate_key {};\n    \
                 location / {{ proxy_pass http://127.0.0.1:{upstream_port}; }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
                certs.cert.display(),
                certs.key.display(),
            )
        })
    }
}

/// The legacy Python TLS server (`tests/peers/tls_server.py`) on 127.0.0.1:`port`, run by
/// the peers venv's Python with `OTEL_SERVICE_NAME=service_name`: HTTP/1.1 keep-alive
/// (`/missing` 404, `/boom` 500), or with `echo` a TLS echo of whatever is sent.
#[must_use]
pub fn python_tls_server(port: u16, service_name: &str, echo: bool) -> Proc {
    let certs = tls_certs();
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("tls_server.py"))
        .args(["--port", &port.to_string()])
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .env("OTEL_SERVICE_NAME", service_name)
        .stdout(Stdio::null());
    if echo {
        cmd.arg("--echo");
    }
    let mut proc = Proc::spawn("tls_server", &mut cmd);
    wait_port(port, "python TLS server");
    proc.assert_running();
    proc
}

/// A child process driven by one command per stdin line and answering one line each
/// (`ok ...` or `err ...`), like `tests/peers/tls_client.py`. Killed and reaped on drop.
pub struct LineClient {
    name: String,
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// How long an answer may take.
    timeout: Duration,
}

impl LineClient {
    /// Starts `cmd` with piped stdin and stdout.
    #[must_use]
    pub fn start(name: &str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let out = child.stdout.take().expect("stdout piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { name: name.to_owned(), child, lines, timeout: Duration::from_secs(30) }
    }

    /// Waits up to `timeout` for each answer (30 s by default).
    #[must_use]
    pub fn answer_within(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command and returns its answer line; fails the test on `err ...`, on an
    /// exited client or after the answer timeout (30 s unless set).
    pub fn cmd(&mut self, command: &str) -> String {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{command}").and_then(|()| stdin.flush()).unwrap_or_else(|e| {
            panic!("{}: cannot send {command:?}: {e} (exited: {:?})", self.name, self.child.try_wait())
        });
        let line = self.lines.recv_timeout(self.timeout).unwrap_or_else(|e| {
            panic!("{}: no answer to {command:?} ({e}; exited: {:?})", self.name, self.child.try_wait())
        });
        assert!(line.starts_with("ok "), "{}: {command:?} answered {line:?}", self.name);
        line
    }

    /// `quit`, then waits (10 s) for the exit.
    pub fn quit(mut self) {
        let _ = self.cmd("quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within 10 s of quit", self.name);
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The legacy Python TLS client (`tests/peers/tls_client.py`): one keep-alive
/// HTTPSConnection to 127.0.0.1:`port` trusting [`tls_certs`]'s CA, opened by the first
/// `get PATH`; `raw PORT TEXT` sends TEXT on a new TLS connection to an echo server.
#[must_use]
pub fn python_tls_client(port: u16, service_name: &str) -> LineClient {
    LineClient::start(
        "tls_client",
        Command::new(python())
            .arg(peers_dir().join("tls_client.py"))
            .args(["--port", &port.to_string()])
            .arg("--ca")
            .arg(&tls_certs().ca)
            .env("OTEL_SERVICE_NAME", service_name),
    )
}

/// `curl --cacert CA VERSION https://127.0.0.1:port/PATH...`: one curl process, one
/// connection reused for every path; `(status, HTTP version)` per path, as curl's
/// `%{http_code}` and `%{http_version}` report them ("1.1", "2").
#[must_use]
pub fn curl_https(port: u16, version: &str, paths: &[&str]) -> Vec<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", version, "--cacert"]).arg(&tls_certs().ca);
    for p in paths {
        cmd.args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}\\n"])
            .arg(format!("https://127.0.0.1:{port}{p}"));
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let got: Vec<(u16, String)> = text
        .lines()
        .filter_map(|l| {
            let (code, v) = l.split_once(' ')?;
            Some((code.parse().ok()?, v.to_owned()))
        })
        .collect();
    assert_eq!(
        got.len(),
        paths.len(),
        "curl {version} {paths:?} ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    got
}

// ---------------------------------------------------------------------------------------
// Linking fidelity models (tests/tests/link_fidelity.rs)

impl Nginx {
    /// nginx on 127.0.0.1:`port` (h2c) proxying gRPC to 127.0.0.1:`upstream_port` with
    /// `grpc_pass`: each stream in is a new upstream connection out.
    #[must_use]
    pub fn grpc_pass(port: u16, upstream_port: u16) -> Self {
        Self::with_config(port, |d| {
            format!(
                "{}http {{\n  {}\n  server {{\n    listen 127.0.0.1:{port} http2;\n    \
                     location / {{ grpc_pass grpc://127.0.0.1:{upstream_port}; }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
            )
        })
    }

    /// nginx on 127.0.0.1:`port` forwarding everything to `target` (`HOST:PORT`, e.g. a
    /// Service's virtual IP) with nginx's default upstream protocol, HTTP/1.0: a new
    /// upstream connection per request, closed after the response.
    #[must_use]
    pub fn proxy_pass(port: u16, target: &str) -> Self {
        Self::with_config(port, |d| {
            format!(
                "{}http {{\n  {}\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 location / {{ proxy_pass http://{target}; }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
            )
        })
    }

    /// nginx on 127.0.0.1:`port` forwarding to 127.0.0.1:`upstream_port` through an
    /// `upstream` block with a keep-alive pool (`keepalive 16`): HTTP/1.1 upstream with
    /// the `Connection` header cleared, which is what lets nginx reuse an idle upstream
    /// connection for the next request (nginx's documented recipe).
    #[must_use]
    pub fn keepalive_pool_proxy(port: u16, upstream_port: u16) -> Self {
        Self::with_config(port, |d| {
            format!(
                "{}http {{\n  {}\n  upstream fid_pool {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://fid_pool;\n      \
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
            )
        })
    }

    /// nginx started inside `netns` (`ip netns exec`) with the configuration `conf(dir)`,
    /// waiting until it listens on 127.0.0.1:`port` in that namespace. Drop it before the
    /// namespace.
    #[must_use]
    pub fn in_netns(netns: &Netns, port: u16, conf: impl FnOnce(&Path) -> String) -> Self {
        Self::spawn(netns.command("nginx"), conf, || {
            netns.wait_port(std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)), "nginx");
        })
    }

    /// nginx inside `netns` serving h2c (prior knowledge) on 127.0.0.1:`port` that answers
    /// every path `200 ok` itself (no files, so nothing for the `nobody` workers to read).
    #[must_use]
    pub fn h2c_ok_in_netns(netns: &Netns, port: u16) -> Self {
        Self::in_netns(netns, port, |d| {
            format!(
                "{}http {{\n  {}\n  server {{\n    listen 127.0.0.1:{port} http2;\n    \
                 location / {{ default_type text/plain; return 200 \"ok\\n\"; }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
            )
        })
    }
}

/// Builds the standard-library-only Go program tests/peers/`name` (e.g. `go_proxy`) into
/// `dir`/`name` and returns its path. Offline on purpose: `GOPROXY=off`, since no Go module
/// proxy is reachable from the test machines, so a peer that needed a module would fail
/// here with go's own message rather than hang.
#[must_use]
pub fn build_go_peer(name: &str, dir: &Path) -> PathBuf {
    let src = peers_dir().join(name);
    let bin = dir.join(name);
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run go (install golang-go: cargo xtask setup --peers): {e}"));
    assert!(
        out.status.success(),
        "go build of {} failed ({}): {}",
        src.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// An iptables DNAT rule that sends loopback connections to `VIP:VPORT` to
/// `127.0.0.1:TO_PORT`, as kube-proxy does for a ClusterIP; exactly this rule is removed
/// on drop, also when the test panics.
pub struct Dnat {
    rule: Vec<String>,
}

impl Dnat {
    /// `iptables -t nat -A OUTPUT -d VIP -p tcp --dport VPORT -j DNAT --to-destination
    /// 127.0.0.1:TO_PORT`.
    #[must_use]
    pub fn loopback(vip: std::net::Ipv4Addr, vport: u16, to_port: u16) -> Dnat {
        let rule: Vec<String> = [
            "OUTPUT",
            "-d",
            &vip.to_string(),
            "-p",
            "tcp",
            "--dport",
            &vport.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("127.0.0.1:{to_port}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let out = Command::new("iptables").args(["-w", "-t", "nat", "-A"]).args(&rule).output();
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("iptables not found: run `cargo xtask setup` (it installs the iptables package)")
            }
            Err(e) => panic!("cannot run iptables: {e}"),
            Ok(o) if !o.status.success() => panic!(
                "iptables -t nat -A {} failed ({}): {}",
                rule.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Ok(_) => Dnat { rule },
        }
    }

    /// The rule's arguments after `-A`/`-D` (chain first), as `iptables -S` prints them
    /// apart from the `/32` and `-m tcp` it adds.
    #[must_use]
    pub fn rule(&self) -> &[String] {
        &self.rule
    }
}

impl Drop for Dnat {
    fn drop(&mut self) {
        let out = Command::new("iptables").args(["-w", "-t", "nat", "-D"]).args(&self.rule).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: could not remove `iptables -t nat -A {}`: {}",
                self.rule.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: could not remove `iptables -t nat -A {}`: {e}", self.rule.join(" ")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Soak helpers (tests/tests/soak.rs): memory and counters of a running agent, a static
// nginx, a rotel that can be killed and brought back on the same ports, ab.

/// `VmRSS` of process `pid` in KiB (`None` once it is gone).
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

impl Agent {
    /// The agent's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The agent's resident memory now, KiB. Fails the test if the agent is gone.
    #[must_use]
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).unwrap_or_else(|| panic!("ghostwire (pid {}) is gone:\n{}", self.pid(), self.stderr_text()))
    }

    /// The last periodic `stats:` line so far (`--stats-interval`), parsed; empty before
    /// the first one.
    #[must_use]
    pub fn last_stats(&self) -> BTreeMap<String, u64> {
        let lines = self.stderr.lock().expect("stderr lock");
        lines.iter().rev().find(|l| l.starts_with("stats:")).map(|l| parse_stats_line(l)).unwrap_or_default()
    }

    /// Number of `stats:` lines printed so far.
    #[must_use]
    pub fn stats_lines(&self) -> usize {
        self.stderr.lock().expect("stderr lock").iter().filter(|l| l.starts_with("stats:")).count()
    }

    /// Waits (at most `timeout`) until every span built so far has left the export queue
    /// (`spans.exported + drop.export_queue_full + drop.export_failed == spans.built` in
    /// a periodic `stats:` line printed after this call, with `spans.built` unchanged
    /// from the line before it). Needs `--stats-interval`. Returns that line.
    #[must_use]
    pub fn wait_exported(&self, timeout: Duration) -> Option<BTreeMap<String, u64>> {
        let from = self.stats_lines();
        let mut last_built = None;
        let mut seen = from;
        wait_for(timeout, || {
            let n = self.stats_lines();
            if n == seen {
                return None;
            }
            seen = n;
            let s = self.last_stats();
            let get = |k: &str| s.get(k).copied().unwrap_or(0);
            let built = get("spans.built");
            let settled = get("spans.exported") + get("drop.export_queue_full") + get("drop.export_failed") == built;
            let quiet = last_built == Some(built);
            last_built = Some(built);
            (n > from + 1 && settled && quiet).then_some(s)
        })
    }
}

impl Nginx {
    /// nginx serving a 1 KiB file at /1k.bin on 127.0.0.1:`port` (keep-alive, no access
    /// log), the file the benchmarks serve.
    #[must_use]
    pub fn static_1k(port: u16) -> Self {
        Self::with_config(port, |d| {
            let www = d.join("www");
            std::fs::create_dir_all(&www).expect("create www");
            std::fs::write(www.join("1k.bin"), [b'a'; 1024]).expect("write 1k.bin");
            // nginx's workers run as nobody: the scratch directory must be readable.
            use std::os::unix::fs::PermissionsExt as _;
            for p in [d, www.as_path()] {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
            format!(
                "{}http {{\n  {}\n  sendfile off;\n  keepalive_requests 1000000;\n  server {{\n    \
                 listen 127.0.0.1:{port};\n    location / {{ root {}; }}\n  }}\n}}\n",
                Self::main_context(d),
                Self::http_defaults(d),
                www.display()
            )
        })
    }
}

/// rotel on 127.0.0.1:`grpc_port` (OTLP/gRPC) and `http_port`, exporting to its
/// blackhole; with `out`, its trace processor (`tests/peers/rotel_processor.py`) appends
/// every span it receives to that file. Its pid and log files live in `dir`, so that
/// several rotels (one killed, then one started again on the same ports) never share
/// them.
#[must_use]
pub fn rotel_blackhole(grpc_port: u16, http_port: u16, out: Option<&Path>, dir: &Path) -> Proc {
    let mut cmd = Command::new(rotel_binary());
    cmd.args(["start", "--exporter", "blackhole"])
        .arg("--otlp-grpc-endpoint")
        .arg(format!("127.0.0.1:{grpc_port}"))
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.join("rotel.log"));
    if let Some(out) = out {
        cmd.arg("--otlp-with-trace-processor")
            .arg(peers_dir().join("rotel_processor.py"))
            .env("GHOSTWIRE_ROTEL_OUT", out);
    }
    let proc = Proc::spawn("rotel", &mut cmd);
    wait_port(grpc_port, "rotel");
    proc
}

/// What one `ab` run reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbReport {
    pub complete: u64,
    pub failed: u64,
    /// Responses other than 2xx.
    pub non_2xx: u64,
}

/// `ab -n requests -c concurrency url` (no keep-alive: one connection per request),
/// killed after `timeout`. Fails the test if ab cannot run or prints no summary.
#[must_use]
pub fn ab(requests: u64, concurrency: u32, url: &str, timeout: Duration) -> AbReport {
    let mut cmd = Command::new("ab");
    cmd.args(["-q", "-n", &requests.to_string(), "-c", &concurrency.to_string(), "-s", "10", url]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn();
    let mut child = child.unwrap_or_else(|e| panic!("cannot run ab (apache2-utils; `cargo xtask setup --peers`): {e}"));
    let stdout = child.stdout.take().expect("ab stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ab -n {requests} -c {concurrency} {url} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    let report = parse_ab(&out);
    assert!(status.success() && report.is_some(), "ab failed ({status}):\n{out}");
    report.unwrap_or_default()
}

/// The counts of ab's summary (`Complete requests:`, `Failed requests:`, `Non-2xx
/// responses:`); `None` without a `Complete requests:` line.
#[must_use]
pub fn parse_ab(out: &str) -> Option<AbReport> {
    let mut report = AbReport::default();
    let mut complete = None;
    for line in out.lines() {
        let value = |prefix: &str| line.strip_prefix(prefix).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = value("Complete requests:") {
            complete = Some(n);
        } else if let Some(n) = value("Failed requests:") {
            report.failed = n;
        } else if let Some(n) = value("Non-2xx responses:") {
            report.non_2xx = n;
        }
    }
    report.complete = complete?;
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ab_summary_counts() {
        let out = "Concurrency Level:      16\nComplete requests:      30000\nFailed requests:        3\n   \
                   (Connect: 0, Receive: 0, Length: 3, Exceptions: 0)\nNon-2xx responses:      2\n";
        assert_eq!(parse_ab(out), Some(AbReport { complete: 30000, failed: 3, non_2xx: 2 }));
        assert_eq!(parse_ab("Failed requests: 0\n"), None);
    }

    #[test]
    fn stat_keys_are_checked_against_what_the_agent_can_print() {
        for key in [
            "drop.parse_error",
            "conns.midstream",
            "http.head_truncated",
            "kernel.ring_full",
            "kernel.emitted",
            "kernel.sock_send.ring_full",
            "kernel.inet_sock_set_state.map_full",
            "break.svc-b->svc-c",
        ] {
            assert!(is_stat_key(key), "{key}");
        }
        for key in [
            "drop.parse_eror",
            "kernel.untracked_conn",
            "kernel.sock_send.untracked_conn",
            "kernel.sys_enter_read.ring_full",
            "kernel.",
            "ring_full",
            "break.nothing",
            "",
        ] {
            assert!(!is_stat_key(key), "{key}");
        }
    }

    #[test]
    fn an_unknown_stat_key_fails_instead_of_reading_zero() {
        let exit = AgentExit {
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stderr: "ready: 4 probes\nstats: spans.built=3 kernel.sock_recv.midstream=1 break.a->b=2".to_owned(),
        };
        assert_eq!(exit.stat("spans.built"), 3);
        assert_eq!(exit.stat("kernel.sock_recv.midstream"), 1);
        assert_eq!(exit.stat("break.a->b"), 2);
        assert_eq!(exit.stat("drop.parse_error"), 0);
        let typo = std::panic::catch_unwind(|| exit.stat("drop.parse_eror"));
        assert!(typo.is_err(), "a misspelt counter must fail the test");
    }
}
