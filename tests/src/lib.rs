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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "privileged end-to-end test needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): run it with `cargo xtask test`"
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
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
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
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
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
    let bin = std::env::var_os("GHOSTWIRE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ghostwire"),
        PathBuf::from,
    );
    assert!(bin.exists(), "ghostwire binary not found at {}: run `cargo xtask test`", bin.display());
    bin
}

/// A running agent. Its stderr is collected; `stop` sends SIGINT (flush) and checks the
/// exit.
pub struct Agent {
    proc: Proc,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// What an agent printed and how it ended.
pub struct AgentExit {
    pub status: ExitStatus,
    pub stderr: String,
}

impl AgentExit {
    /// The value of `key` in the final `stats:` line.
    #[must_use]
    pub fn stat(&self, key: &str) -> u64 {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("stats:"))
            .and_then(|l| {
                l.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
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
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[ghostwire] {line}");
                sink.lock().expect("stderr lock").push(line);
            }
        });
        let agent = Self { proc, stderr };
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

    /// SIGINT, then waits (at most 20 s) for a clean exit.
    #[must_use]
    pub fn stop(mut self) -> AgentExit {
        let status = self
            .proc
            .signal_and_wait(libc::SIGINT, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("ghostwire did not exit within 20 s of SIGINT:\n{}", self.stderr_text()));
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        AgentExit { status, stderr: self.stderr_text() }
    }
}

/// nginx as a reverse proxy: listens on `port`, forwards everything to `upstream_port`.
pub struct Nginx {
    _proc: Proc,
    _dir: TempDir,
}

impl Nginx {
    #[must_use]
    pub fn reverse_proxy(port: u16, upstream_port: u16) -> Self {
        let dir = TempDir::new("nginx");
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nerror_log stderr warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://127.0.0.1:{upstream_port}; }}\n  }}\n}}\n",
            d = dir.path().display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let proc = Proc::spawn(
            "nginx",
            Command::new("nginx").arg("-c").arg(&path).arg("-p").arg(dir.path()).arg("-e").arg("stderr"),
        );
        wait_port(port, "nginx");
        Self { _proc: proc, _dir: dir }
    }
}

/// The legacy Python `http.server` backend (`tests/peers/backend.py`).
#[must_use]
pub fn python_backend(port: u16, service_name: &str) -> Proc {
    let proc = Proc::spawn(
        "backend",
        Command::new("python3")
            .arg(peers_dir().join("backend.py"))
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", service_name),
    );
    wait_port(port, "python backend");
    proc
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
        let req: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), n + 1));
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attrs(rs.pointer("/resource/attributes"));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(SpanRec {
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent_span_id: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
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
