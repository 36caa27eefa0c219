//! `cargo xtask bench soak`: is the agent's memory bounded under connection churn, a
//! collector outage and many idle connections (issue 10)?
//!
//! Every scenario runs nginx on 127.0.0.1 serving a 1 KiB file, the release agent tracing
//! nginx's port and exporting OTLP/gRPC to rotel (blackhole exporter, as users deploy),
//! with `--stats-interval 1`. A sampler thread reads the agent's `VmRSS` from
//! /proc/PID/status every second, next to the last `stats:` line it printed.
//!
//! - `churn`: `ab -n N -c C` without keep-alive (one connection per request): RSS at the
//!   start, when ab reports 10 % done, the peak and the end, connections and spans
//!   exported per second, every drop counter, and the most TIME_WAIT sockets seen (on
//!   loopback the kernel reuses them for new outgoing connections, `tcp_tw_reuse = 2`:
//!   ab's one source address then has enough ports; this benchmark changes no sysctl).
//! - `outage`: hey at a fixed rate; rotel is killed after 10 s and started again on the
//!   same ports after `--outage-seconds`; the load goes on for 20 s more. RSS over time,
//!   `drop.export_queue_full`, `spans.exported` before, during and after, and what one
//!   pending span costs (RSS growth / spans held).
//! - `idle`: `--idle` keep-alive connections opened from this process (RLIMIT_NOFILE
//!   raised, source addresses spread over 127.1.0.0/16 so that no address runs out of
//!   ephemeral ports), one request on each so the agent tracks it, then held open. The
//!   agent traces only nginx's end (`--exe nginx`): one tracked connection per client,
//!   as on a server whose clients are elsewhere. RSS before and after, per connection.
//!   It stops early at the first error (which it reports) or after 5 minutes.
//!
//! Every child is stopped by a `Drop` guard, every wait and load is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use crate::bench::{markdown_table, parse_stats_line};
use crate::util::{self, ChildGuard, TempDir};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Short connections, one request each (ab without keep-alive).
    Churn,
    /// The collector down under a fixed load, then back.
    Outage,
    /// Many idle keep-alive connections.
    Idle,
}

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Scenarios to run, in this order.
    #[arg(long, value_delimiter = ',', default_values = ["churn", "outage", "idle"])]
    pub scenarios: Vec<Scenario>,
    /// churn: short connections (`ab -n`).
    #[arg(long, default_value_t = 1_000_000)]
    pub connections: u64,
    /// churn: concurrent connections (`ab -c`).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// outage: seconds the collector is down (the load runs 10 s before and 20 s after).
    #[arg(long, default_value_t = 60)]
    pub outage_seconds: u64,
    /// outage: requests per second (hey with 10 clients, 2 spans per request).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// outage: the agent's `--queue-size` (default: the agent's default).
    #[arg(long)]
    pub queue_size: Option<usize>,
    /// idle: keep-alive connections to hold open.
    #[arg(long, default_value_t = 100_000)]
    pub idle: u64,
}

const MIB: f64 = 1024.0;
/// Longest the `idle` scenario spends opening connections.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(300);

/// One table row: scenario, figure, value.
type Row = Vec<String>;

pub fn soak(args: &SoakArgs) -> Result<()> {
    if !util::is_root() {
        bail!(crate::NEEDS_ROOT);
    }
    for tool in ["nginx", "ab", "hey"] {
        ensure!(util::which(tool).is_some(), "`{tool}` not found: run `cargo xtask setup --peers`");
    }
    let peers = crate::setup::setup(true)?.context("the peers (rotel) were not set up")?;
    crate::build_agent()?;
    println!("==> agent at commit {}", commit());
    // Each scenario's figures are printed when it ends, and a failed scenario does not
    // take the others' figures with it: all of them are in the final table.
    let mut rows: Vec<Row> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for scenario in dedup(&args.scenarios) {
        let dir = TempDir::new("ghostwire-soak")?;
        let got = match scenario {
            Scenario::Churn => churn(args, dir.path(), &peers.rotel),
            Scenario::Outage => outage(args, dir.path(), &peers.rotel),
            Scenario::Idle => idle(args, dir.path(), &peers.rotel),
        };
        match got {
            Ok(got) => {
                println!("\n{}", markdown_table(&["scenario", "figure", "value"], &got));
                rows.extend(got);
            }
            Err(e) => {
                eprintln!("error: soak {scenario:?}: {e:#}");
                failed.push(format!("{scenario:?}"));
            }
        }
    }
    println!("\n==> agent at commit {}", commit());
    println!("{}", markdown_table(&["scenario", "figure", "value"], &rows));
    ensure!(failed.is_empty(), "soak scenarios that could not measure: {}", failed.join(", "));
    Ok(())
}

fn dedup(values: &[Scenario]) -> Vec<Scenario> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

fn commit() -> String {
    let mut cmd = Command::new("git");
    cmd.current_dir(util::repo_root()).args(["log", "-1", "--format=%h %s"]);
    let dirty = Command::new("git")
        .current_dir(util::repo_root())
        .args(["status", "--porcelain", "--untracked-files=no", "agent", "ebpf", "common"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let head = util::capture(&mut cmd).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into());
    if dirty {
        format!("{head} (+ uncommitted changes in agent/, ebpf/ or common/)")
    } else {
        head
    }
}

// ---------------------------------------------------------------------------------------
// Pure helpers

/// `VmRSS` in KiB from the text of /proc/PID/status.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Sockets in TIME_WAIT from the text of /proc/net/sockstat (`TCP: inuse 5 orphan 0 tw 12 ...`).
pub fn parse_sockstat_tw(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// ab's summary: complete and failed requests, non-2xx responses, requests per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AbSummary {
    pub complete: u64,
    pub failed: u64,
    pub non_2xx: u64,
    pub per_second: f64,
}

pub fn parse_ab(out: &str) -> Option<AbSummary> {
    let mut s = AbSummary::default();
    let mut complete = None;
    for line in out.lines() {
        let value = |prefix: &str| line.strip_prefix(prefix).map(str::trim);
        if let Some(v) = value("Complete requests:") {
            complete = v.parse().ok();
        } else if let Some(v) = value("Failed requests:") {
            s.failed = v.parse().unwrap_or(0);
        } else if let Some(v) = value("Non-2xx responses:") {
            s.non_2xx = v.parse().unwrap_or(0);
        } else if let Some(v) = value("Requests per second:") {
            s.per_second = v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
        }
    }
    s.complete = complete?;
    Some(s)
}

/// The counters of a `stats:` line that say something was lost: `drop.*`,
/// `kernel.*ring_full`, `kernel.*map_full`, `kernel.*read_failed` (non-zero only).
pub fn drop_counters(stats: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    stats
        .iter()
        .filter(|(k, v)| {
            **v > 0
                && (k.starts_with("drop.")
                    || (k.starts_with("kernel.")
                        && (k.ends_with("ring_full") || k.ends_with("map_full") || k.ends_with("read_failed"))))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[expect(clippy::cast_precision_loss, reason = "KiB counts are far below 2^52")]
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / MIB)
}

#[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
fn signed_mib(from: u64, to: u64) -> String {
    format!("{:+.1} MiB", (to as f64 - from as f64) / MIB)
}

/// Bytes per item of an RSS change (KiB) over `n` items.
#[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
fn per_item(from_kib: u64, to_kib: u64, n: u64) -> String {
    if n == 0 {
        return "–".into();
    }
    format!("{:.0} B", (to_kib as f64 - from_kib as f64) * 1024.0 / n as f64)
}

fn row(scenario: &str, figure: &str, value: impl Into<String>) -> Row {
    vec![scenario.to_owned(), figure.to_owned(), value.into()]
}

// ---------------------------------------------------------------------------------------
// Processes

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn wait_listening(port: u16, what: &str, guard: &mut ChildGuard) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = guard.try_wait()? {
            bail!("{what} exited ({status}) before listening on {addr}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what} did not listen on {addr} within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx serving /1k.bin on 127.0.0.1, room for `connections` clients, keep-alive
/// connections held for an hour (the idle scenario must not see nginx close them).
struct Nginx {
    port: u16,
    _guard: ChildGuard,
}

/// This process's RLIMIT_NOFILE hard limit (what nginx's workers can get without
/// CAP_SYS_RESOURCE).
fn nofile_hard_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_max
}

/// Workers for `connections` clients when each may hold `per_worker`: one, or enough
/// that a `reuseport` spread (uneven by a few percent) still fits, plus one.
pub fn nginx_workers(connections: u64, per_worker: u64) -> u64 {
    if connections + 1024 <= per_worker {
        1
    } else {
        (connections * 5 / 4).div_ceil(per_worker.max(1)) + 1
    }
}

fn start_nginx(dir: &Path, connections: u64) -> Result<Nginx> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    std::fs::write(www.join("1k.bin"), [b'a'; 1024]).context("writing 1k.bin")?;
    let port = free_port()?;
    let d = dir.display();
    // Each worker holds a descriptor per connection and may not pass the hard limit.
    let nofile = nofile_hard_limit().min(1 << 20);
    let per_worker = nofile.saturating_sub(64).max(512);
    let workers = nginx_workers(connections, per_worker);
    let reuseport = if workers > 1 { " reuseport" } else { "" };
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\nerror_log stderr;\npid {d}/nginx.pid;\n\
         worker_rlimit_nofile {nofile};\nevents {{ worker_connections {per_worker}; }}\n\
         http {{\n  access_log off;\n  sendfile off;\n  keepalive_requests 1000000;\n  keepalive_timeout 3600s;\n  \
         client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen 127.0.0.1:{port} backlog=4096{reuseport};\n    location / {{ root {d}/www; }}\n  }}\n}}\n"
    );
    if workers > 1 {
        println!(
            "    nginx: {workers} workers of {per_worker} connections (RLIMIT_NOFILE hard limit {nofile}), reuseport"
        );
    }
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
    let log = std::fs::File::create(dir.join("nginx.stderr")).context("creating nginx.stderr")?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-e").arg("stderr").arg("-p").arg(dir).arg("-c").arg(&conf_path);
    let shown = util::display(&cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut guard = ChildGuard::new("nginx", child, libc::SIGTERM, Duration::from_secs(5));
    wait_listening(port, "nginx", &mut guard).with_context(|| {
        format!("`{shown}`: {}", std::fs::read_to_string(dir.join("nginx.stderr")).unwrap_or_default().trim_end())
    })?;
    Ok(Nginx { port, _guard: guard })
}

/// rotel with the blackhole exporter; its pid and log files in `dir`.
fn start_rotel(rotel: &Path, grpc: u16, http: u16, dir: &Path) -> Result<ChildGuard> {
    let mut cmd = Command::new(rotel);
    cmd.args(["start", "--exporter", "blackhole"])
        .arg("--otlp-grpc-endpoint")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.join("rotel.log"));
    let shown = util::display(&cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut guard = ChildGuard::new("rotel", child, libc::SIGTERM, Duration::from_secs(5));
    wait_listening(grpc, "rotel", &mut guard).with_context(|| format!("`{shown}`"))?;
    Ok(guard)
}

/// One sample of the agent: seconds since it was ready, `VmRSS` (KiB), its last
/// `stats:` line (parsed), TIME_WAIT sockets on the node.
#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    rss_kib: u64,
    stats: BTreeMap<String, u64>,
    time_wait: u64,
}

impl Sample {
    fn stat(&self, key: &str) -> u64 {
        self.stats.get(key).copied().unwrap_or(0)
    }
}

/// The agent, its stderr lines, and a sampler thread (every second).
struct SoakAgent {
    guard: ChildGuard,
    shown: String,
    ready_at: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn last_stats(lines: &Mutex<Vec<String>>) -> BTreeMap<String, u64> {
    let lines = lock(lines);
    let line = lines.iter().rev().find(|l| l.starts_with("stats:"));
    line.and_then(|l| parse_stats_line(l)).unwrap_or_default().into_iter().collect()
}

fn read_rss(pid: u32) -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

impl SoakAgent {
    fn start(args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(util::agent_bin());
        cmd.args(args).arg("--stats-interval").arg("1");
        let shown = util::display(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let mut guard = ChildGuard::new("ghostwire", child, libc::SIGINT, Duration::from_secs(30));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lock(&sink).push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !lock(&lines).iter().any(|l| l.starts_with("ready")) {
            if let Some(status) = guard.try_wait()? {
                std::thread::sleep(Duration::from_millis(200));
                bail!("the agent exited ({status}) before `ready`: `{shown}`\n{}", lock(&lines).join("\n"));
            }
            ensure!(Instant::now() < deadline, "the agent was not ready within 60 s: `{shown}`");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready_at = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (pid, s_lines, s_samples, s_stop) =
            (guard.pid(), Arc::clone(&lines), Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s_stop.load(Ordering::Relaxed) {
                let Some(rss_kib) = read_rss(pid) else { return };
                let time_wait =
                    std::fs::read_to_string("/proc/net/sockstat").ok().and_then(|s| parse_sockstat_tw(&s)).unwrap_or(0);
                let sample =
                    Sample { t: ready_at.elapsed().as_secs_f64(), rss_kib, stats: last_stats(&s_lines), time_wait };
                lock(&s_samples).push(sample);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        println!("    agent: `{shown}`");
        Ok(Self { guard, shown, ready_at, lines, samples, stop })
    }

    fn rss(&self) -> Result<u64> {
        read_rss(self.guard.pid()).with_context(|| format!("the agent is gone: `{}`", self.shown))
    }

    fn stats(&self) -> BTreeMap<String, u64> {
        last_stats(&self.lines)
    }

    /// The agent's CPU time so far (utime + stime), seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.guard.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let ticks = crate::bench::parse_proc_stat_ticks(&stat).with_context(|| format!("parsing {path}"))?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
        #[expect(clippy::cast_precision_loss, reason = "tick counts are far below 2^52")]
        Ok(ticks as f64 / per_second as f64)
    }

    fn elapsed(&self) -> f64 {
        self.ready_at.elapsed().as_secs_f64()
    }

    fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// Waits (at most `timeout`) for two consecutive `stats:` lines that show the same
    /// `spans.built` and every built span exported or counted as dropped: nothing left
    /// in the export queue. `false` if that did not happen.
    fn wait_exported(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last_built = None;
        let mut seen = 0;
        while Instant::now() < deadline {
            let (n, s) = {
                let lines = lock(&self.lines);
                let n = lines.iter().filter(|l| l.starts_with("stats:")).count();
                (n, lines.iter().rev().find(|l| l.starts_with("stats:")).cloned())
            };
            if n != seen {
                seen = n;
                let s: BTreeMap<String, u64> =
                    s.as_deref().and_then(parse_stats_line).unwrap_or_default().into_iter().collect();
                let get = |k: &str| s.get(k).copied().unwrap_or(0);
                let built = get("spans.built");
                let settled =
                    get("spans.exported") + get("drop.export_queue_full") + get("drop.export_failed") == built;
                if settled && last_built == Some(built) {
                    return true;
                }
                last_built = Some(built);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops the agent (SIGINT) and returns its final counters; an error unless it exits 0.
    fn finish(mut self) -> Result<BTreeMap<String, u64>> {
        self.stop.store(true, Ordering::Relaxed);
        let status = self.guard.stop()?;
        std::thread::sleep(Duration::from_millis(300));
        let lines = lock(&self.lines).clone();
        ensure!(status.success(), "the agent exited with {status}: `{}`\n{}", self.shown, lines.join("\n"));
        if let Some(line) = lines.iter().rev().find(|l| l.starts_with("stats:")) {
            println!("    agent {line}");
        }
        Ok(last_stats(&self.lines))
    }
}

/// A load generator run in the background: its stdout collected, stderr lines handed to
/// `on_line` as they come.
struct Load {
    guard: ChildGuard,
    shown: String,
    out: std::thread::JoinHandle<String>,
}

fn spawn_load(cmd: &mut Command, name: &str, mut on_line: impl FnMut(&str) + Send + 'static) -> Result<Load> {
    let shown = util::display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            on_line(&line);
        }
    });
    println!("    load: `{shown}`");
    Ok(Load { guard: ChildGuard::new(name, child, libc::SIGKILL, Duration::from_secs(5)), shown, out })
}

impl Load {
    /// Waits for the exit (killing it after `limit`); its stdout. An error unless it exits 0.
    fn wait(mut self, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.guard.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                self.guard.stop()?;
                bail!("`{}` did not finish within {}", self.shown, util::fmt_duration(limit));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self.out.join().unwrap_or_default();
        ensure!(status.success(), "`{}` failed ({status}):\n{out}", self.shown);
        Ok(out)
    }
}

fn otlp_args(port: u16, otlp: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string(), "--otlp-endpoint".into(), format!("http://127.0.0.1:{otlp}")]
}

fn drops_row(scenario: &str, stats: &BTreeMap<String, u64>) -> Row {
    let drops = drop_counters(stats);
    let text = if drops.is_empty() {
        "none".to_owned()
    } else {
        drops.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    };
    row(scenario, "drop counters", text)
}

// ---------------------------------------------------------------------------------------
// churn

fn churn(args: &SoakArgs, dir: &Path, rotel: &Path) -> Result<Vec<Row>> {
    let n = args.connections;
    println!("\n==> churn: {n} short connections (ab -c {}, no keep-alive)", args.concurrency);
    let nginx = start_nginx(dir, 4096)?;
    let (otlp, otlp_http) = (free_port()?, free_port()?);
    let _rotel = start_rotel(rotel, otlp, otlp_http, dir)?;
    let agent = SoakAgent::start(&otlp_args(nginx.port, otlp))?;
    std::thread::sleep(Duration::from_secs(3));
    let rss_start = agent.rss()?;

    // ab prints "Completed N requests" at every tenth: the first one is the 10 % mark.
    let pid = agent.guard.pid();
    let at_tenth: Arc<Mutex<Option<(u64, f64)>>> = Arc::new(Mutex::new(None));
    let mark = Arc::clone(&at_tenth);
    let started = Instant::now();
    let mut cmd = Command::new("ab");
    cmd.args(["-r", "-s", "30", "-n", &n.to_string(), "-c", &args.concurrency.to_string()])
        .arg(format!("http://127.0.0.1:{}/1k.bin", nginx.port));
    let t0 = agent.elapsed();
    let load = spawn_load(&mut cmd, "ab", move |line| {
        if line.starts_with("Completed ") {
            let mut m = lock(&mark);
            if m.is_none() {
                *m = read_rss(pid).map(|rss| (rss, started.elapsed().as_secs_f64()));
            }
        }
    })?;
    // Bounded: at least 1000 connections per second, or it is not worth waiting for.
    let out = load.wait(Duration::from_secs(n / 1000 + 120))?;
    let seconds = started.elapsed().as_secs_f64();
    let t1 = agent.elapsed();
    let ab = parse_ab(&out).with_context(|| format!("no summary in ab's output:\n{out}"))?;
    let rss_load_end = agent.rss()?;
    let settled = agent.wait_exported(Duration::from_secs(30));
    let rss_end = agent.rss()?;
    let samples = agent.samples();
    let stats = agent.finish()?;
    let during: Vec<&Sample> = samples.iter().filter(|s| s.t >= t0 && s.t <= t1 + 1.0).collect();
    let peak = during.iter().map(|s| s.rss_kib).max().unwrap_or(rss_load_end).max(rss_load_end);
    let tw = during.iter().map(|s| s.time_wait).max().unwrap_or(0);
    let first = during.first().map_or(0, |s| s.stat("spans.exported"));
    let last = during.last().map_or(0, |s| s.stat("spans.exported"));
    let tenth = *lock(&at_tenth);
    print_series(&samples, t0, 10);

    let s = "churn";
    let mut rows = vec![
        row(
            s,
            "connections (ab complete / failed / non-2xx)",
            format!("{} / {} / {}", ab.complete, ab.failed, ab.non_2xx),
        ),
        row(s, "connections per second (ab)", format!("{:.0}", ab.per_second)),
        row(s, "spans exported per second", format!("{:.0}", last.saturating_sub(first) as f64 / seconds.max(1e-9))),
        row(s, "RSS at the start", mib(rss_start)),
    ];
    if let Some((rss, at)) = tenth {
        rows.push(row(s, "RSS after 10 %", format!("{} (at {at:.0} s)", mib(rss))));
    }
    rows.extend([
        row(s, "RSS peak (sampled each second)", mib(peak)),
        row(s, "RSS at the end of the load", mib(rss_load_end)),
        row(
            s,
            "RSS once the queue drained",
            format!("{}{}", mib(rss_end), if settled { "" } else { " (not drained in 30 s)" }),
        ),
    ]);
    if let Some((rss, _)) = tenth {
        rows.push(row(s, "RSS growth from 10 % to the end, per connection", per_item(rss, rss_end, n - n / 10)));
    }
    rows.extend([
        row(
            s,
            "spans built / exported",
            format!("{} / {}", stats.get("spans.built").unwrap_or(&0), stats.get("spans.exported").unwrap_or(&0)),
        ),
        drops_row(s, &stats),
        row(s, "most TIME_WAIT sockets seen (node)", tw.to_string()),
    ]);
    Ok(rows)
}

/// Prints one line every `every` samples from `t0` on: time, RSS, key counters.
fn print_series(samples: &[Sample], t0: f64, every: usize) {
    for s in samples.iter().filter(|s| s.t >= t0).step_by(every.max(1)) {
        println!(
            "    t={:>5.0}s rss={:>9} built={} exported={} queue_full={} conn_table_full={} tw={}",
            s.t - t0,
            mib(s.rss_kib),
            s.stat("spans.built"),
            s.stat("spans.exported"),
            s.stat("drop.export_queue_full"),
            s.stat("drop.conn_table_full"),
            s.time_wait
        );
    }
}

// ---------------------------------------------------------------------------------------
// outage

fn outage(args: &SoakArgs, dir: &Path, rotel: &Path) -> Result<Vec<Row>> {
    const BEFORE: u64 = 10;
    const AFTER: u64 = 20;
    let down_for = args.outage_seconds;
    let per_client = args.rate.div_ceil(10).max(1);
    println!(
        "\n==> outage: {} req/s (hey -c 10 -q {per_client}) for {BEFORE} s + {down_for} s with the collector down + {AFTER} s",
        per_client * 10
    );
    let nginx = start_nginx(dir, 4096)?;
    let (otlp, otlp_http) = (free_port()?, free_port()?);
    let mut rotel_guard = start_rotel(rotel, otlp, otlp_http, dir)?;
    let mut agent_args = otlp_args(nginx.port, otlp);
    if let Some(q) = args.queue_size {
        agent_args.extend(["--queue-size".into(), q.to_string()]);
    }
    let queue = args.queue_size.unwrap_or(8192) as u64;
    let agent = SoakAgent::start(&agent_args)?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = agent.rss()?;
    let total = BEFORE + down_for + AFTER;
    let mut cmd = Command::new("hey");
    cmd.args(["-z", &format!("{total}s"), "-c", "10", "-q", &per_client.to_string()])
        .arg(format!("http://127.0.0.1:{}/1k.bin", nginx.port));
    let t0 = agent.elapsed();
    let load = spawn_load(&mut cmd, "hey", |_| {})?;
    std::thread::sleep(Duration::from_secs(BEFORE));
    let rss_before = agent.rss()?;
    let at_kill = agent.stats();
    let t_kill = agent.elapsed();
    rotel_guard.stop()?; // SIGTERM, then SIGKILL: either way the endpoint is gone.
    drop(rotel_guard);
    std::thread::sleep(Duration::from_secs(down_for));
    let at_restart = agent.stats();
    let t_restart = agent.elapsed();
    let rss_at_restart = agent.rss()?;
    let _rotel = start_rotel(rotel, otlp, otlp_http, dir)?;
    let out = load.wait(Duration::from_secs(AFTER + 60))?;
    let t_end = agent.elapsed();
    let rss_load_end = agent.rss()?;
    let settled = agent.wait_exported(Duration::from_secs(30));
    let rss_end = agent.rss()?;
    let samples = agent.samples();
    let stats = agent.finish()?;
    print_series(&samples, t0, 5);

    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let peak_down = samples
        .iter()
        .filter(|s| s.t >= t_kill && s.t <= t_restart + 6.0)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(rss_at_restart);
    let steady: Vec<u64> = samples.iter().filter(|s| s.t >= t0 + 3.0 && s.t < t_kill).map(|s| s.rss_kib).collect();
    let steady = steady.iter().sum::<u64>() / (steady.len() as u64).max(1);
    let built_down = get(&at_restart, "spans.built").saturating_sub(get(&at_kill, "spans.built"));
    let back = samples
        .iter()
        .find(|s| s.t > t_restart && s.stat("spans.exported") > get(&at_restart, "spans.exported"))
        .map(|s| s.t - t_restart);
    let held = built_down.min(queue + 512);
    let requests = out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("[200]")?;
        rest.split_whitespace().next()?.parse::<u64>().ok()
    });
    let s = "outage";
    Ok(vec![
        row(s, "requests answered 200 (hey)", requests.map_or("?".into(), |n| n.to_string())),
        row(s, "queue size (spans)", queue.to_string()),
        row(s, "RSS with no load", mib(rss_idle)),
        row(s, "RSS under load, collector up (mean)", mib(steady)),
        row(s, "RSS when the collector was killed", mib(rss_before)),
        row(
            s,
            "RSS peak with the collector down",
            format!("{} ({})", mib(peak_down), signed_mib(rss_before, peak_down)),
        ),
        row(s, "RSS at the end of the load", mib(rss_load_end)),
        row(
            s,
            "RSS once the queue drained",
            format!("{}{}", mib(rss_end), if settled { "" } else { " (not drained in 30 s)" }),
        ),
        row(s, "spans built while down", built_down.to_string()),
        row(s, "RSS per pending span (peak growth / spans held)", per_item(rss_before, peak_down, held)),
        row(s, "drop.export_queue_full", get(&stats, "drop.export_queue_full").to_string()),
        row(
            s,
            "spans.exported at kill / at restart / end",
            format!(
                "{} / {} / {}",
                get(&at_kill, "spans.exported"),
                get(&at_restart, "spans.exported"),
                get(&stats, "spans.exported")
            ),
        ),
        row(s, "first export after the restart", back.map_or("never".into(), |t| format!("within {t:.0} s"))),
        row(
            s,
            "built = exported + queue_full + failed",
            format!(
                "{} = {} + {} + {}",
                get(&stats, "spans.built"),
                get(&stats, "spans.exported"),
                get(&stats, "drop.export_queue_full"),
                get(&stats, "drop.export_failed")
            ),
        ),
        row(s, "export.errors", get(&stats, "export.errors").to_string()),
        drops_row(s, &stats),
        row(s, "load time", format!("{:.0} s", t_end - t0)),
    ])
}

// ---------------------------------------------------------------------------------------
// idle

/// One holder: opens up to N connections from one source address to nginx, makes one
/// request on each (in chunks of 500, so the round trips overlap), prints `open K` per
/// chunk, then `done K why`, and holds them until its stdin closes. A process of its own
/// because one process may hold at most RLIMIT_NOFILE descriptors, whose hard limit this
/// benchmark may not be allowed to raise (no CAP_SYS_RESOURCE in a container).
const HOLDER: &str = r#"
import socket, sys
src, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
held, why = [], "all opened"
try:
    while len(held) < n:
        chunk = []
        try:
            for _ in range(min(500, n - len(held))):
                s = socket.socket()
                chunk.append(s)
                s.bind((src, 0))
                s.connect(("127.0.0.1", port))
                s.sendall(req)
            for s in chunk:
                s.settimeout(10)
                buf = b""
                while True:
                    d = s.recv(4096)
                    if not d:
                        raise OSError("nginx closed the connection")
                    buf += d
                    h = buf.find(b"\r\n\r\n")
                    if h >= 0 and len(buf) >= h + 4 + 1024:
                        if not buf.startswith(b"HTTP/1.1 200"):
                            raise OSError("not 200: " + buf[:h].decode(errors="replace"))
                        break
                held.append(s)
        finally:
            for s in chunk:
                if s not in held:
                    s.close()
        print("open", len(held), flush=True)
except Exception as e:
    why = f"{type(e).__name__}: {e}".replace("\n", " ")
print("done", len(held), why, flush=True)
sys.stdin.read()
"#;

/// Connections per holder: under the 20 000 descriptors a process may usually open and
/// under the 28 232 ports of the default ephemeral range of its one source address.
const PER_HOLDER: u64 = 19_000;

/// The k-th holder's source address: 127.1.x.y (never 127.1.0.0).
pub fn holder_source(k: u64) -> Ipv4Addr {
    let n = k + 1;
    Ipv4Addr::new(127, 1, u8::try_from((n >> 8) & 0xff).unwrap_or(0), u8::try_from(n & 0xff).unwrap_or(1))
}

/// A holder's last line: `done K why`.
pub fn parse_holder_done(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix("done ")?;
    let (n, why) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((n.parse().ok()?, why.to_owned()))
}

/// Starts one holder and waits (bounded by `deadline`) until it has opened what it can;
/// the guard (closing its stdin or stopping it closes its connections), how many it
/// holds, and why it stopped.
fn start_holder(k: u64, port: u16, n: u64, deadline: Instant) -> Result<(ChildGuard, u64, String)> {
    let src = holder_source(k);
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(HOLDER).arg(src.to_string()).arg(port.to_string()).arg(n.to_string());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("could not start python3 (the idle connection holder)")?;
    let stdout = child.stdout.take().context("holder stdout")?;
    let guard = ChildGuard::new(format!("holder {src}"), child, libc::SIGTERM, Duration::from_secs(5));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some((held, why)) = parse_holder_done(&line) {
                    return Ok((guard, held, why));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("holder {src} had not finished opening connections within the time limit")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("holder {src} exited without a `done` line"),
        }
    }
}

fn idle(args: &SoakArgs, dir: &Path, rotel: &Path) -> Result<Vec<Row>> {
    let want = args.idle;
    let holders = want.div_ceil(PER_HOLDER);
    println!(
        "\n==> idle: {want} keep-alive connections, one request each, then held open ({holders} python3 holders of up to \
         {PER_HOLDER}, sources 127.1.0.1..)"
    );
    let nginx = start_nginx(dir, want)?;
    let (otlp, otlp_http) = (free_port()?, free_port()?);
    let _rotel = start_rotel(rotel, otlp, otlp_http, dir)?;
    let mut agent_args = otlp_args(nginx.port, otlp);
    agent_args.extend(["--exe".into(), "nginx".into()]);
    let agent = SoakAgent::start(&agent_args)?;
    std::thread::sleep(Duration::from_secs(3));
    let rss_before = agent.rss()?;

    let started = Instant::now();
    let deadline = started + IDLE_OPEN_LIMIT;
    let mut guards = Vec::new();
    let mut n = 0u64;
    let mut checkpoints: Vec<(u64, u64)> = Vec::new();
    let mut stopped = "all opened".to_owned();
    // Per holder: how long its connections took to open and the agent CPU they cost.
    let mut steps: Vec<String> = Vec::new();
    for k in 0..holders {
        let ask = PER_HOLDER.min(want - n);
        let (t, cpu) = (Instant::now(), agent.cpu_seconds()?);
        let (guard, held, why) = match start_holder(k, nginx.port, ask, deadline) {
            Ok(got) => got,
            Err(e) => {
                stopped = format!("{e:#}");
                break;
            }
        };
        guards.push(guard);
        n += held;
        let rss = agent.rss()?;
        checkpoints.push((n, rss));
        let (secs, cpu) = (t.elapsed().as_secs_f64(), agent.cpu_seconds()? - cpu);
        #[expect(clippy::cast_precision_loss, reason = "connection counts are far below 2^52")]
        let cpu_per = cpu * 1e6 / held.max(1) as f64;
        steps.push(format!("{}k: {secs:.0} s, {cpu_per:.0} µs", n / 1000));
        println!(
            "    {n} open, agent RSS {} ({}); these {held} took {secs:.1} s and {cpu:.1} s of agent CPU \
             ({cpu_per:.0} µs each)",
            mib(rss),
            signed_mib(rss_before, rss)
        );
        if held < ask {
            stopped = format!("holder {}: {why}", holder_source(k));
            break;
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let settled = agent.wait_exported(Duration::from_secs(30));
    let rss_open = agent.rss()?;
    let at_open = agent.stats();
    drop(guards);
    std::thread::sleep(Duration::from_secs(5));
    let rss_closed = agent.rss()?;
    let stats = agent.finish()?;

    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let s = "idle";
    let mut rows = vec![
        row(s, "connections held open", format!("{n} of {want}")),
        row(s, "stopped because", stopped),
        row(s, "time to open them", format!("{open_seconds:.0} s")),
        row(s, "per step: open time, agent CPU per connection", steps.join("; ")),
        row(s, "RSS before", mib(rss_before)),
        row(
            s,
            "RSS with them open",
            format!(
                "{} ({}){}",
                mib(rss_open),
                signed_mib(rss_before, rss_open),
                if settled { "" } else { " (queue not drained)" }
            ),
        ),
        row(s, "RSS per connection", per_item(rss_before, rss_open, n)),
    ];
    // Below the connection table's bound (65 536) every connection is tracked: the cost
    // per connection there is the slope from the first checkpoint to the last one below
    // the bound. Measured from the first checkpoint, not from `rss_before`: the agent's
    // start-up peak is sometimes still being returned to the system in its first
    // seconds, which would hide part of the growth.
    let below: Vec<&(u64, u64)> = checkpoints.iter().filter(|(k, _)| *k <= 65_536).collect();
    if let (Some(&&(k0, r0)), Some(&&(k1, r1))) = (below.first(), below.last()) {
        if k1 > k0 {
            rows.push(row(s, &format!("RSS per connection, from {k0} to {k1} open"), per_item(r0, r1, k1 - k0)));
        }
    }
    if let (Some(&(k0, r0)), Some(&(k1, r1))) = (checkpoints.iter().find(|(k, _)| *k > 65_536), checkpoints.last()) {
        if k1 > k0 {
            rows.push(row(
                s,
                &format!("RSS per connection, from {k0} to {k1} open (table full)"),
                per_item(r0, r1, k1 - k0),
            ));
        }
    }
    rows.extend([
        row(s, "RSS after closing them", format!("{} ({})", mib(rss_closed), signed_mib(rss_before, rss_closed))),
        row(s, "connections the agent saw (events.conn)", get(&at_open, "events.conn").to_string()),
        row(s, "spans built", get(&stats, "spans.built").to_string()),
        drops_row(s, &stats),
    ]);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_time_wait_are_read_from_proc() {
        let status = "Name:\tghostwire\nVmPeak:\t  200000 kB\nVmRSS:\t   58708 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(status), Some(58708));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let sockstat = "sockets: used 300\nTCP: inuse 12 orphan 0 tw 28123 alloc 40 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat_tw(sockstat), Some(28123));
        assert_eq!(parse_sockstat_tw("UDP: inuse 1\n"), None);
    }

    #[test]
    fn ab_summary() {
        let out = "Complete requests:      1000000\nFailed requests:        7\nNon-2xx responses:      2\n\
                   Requests per second:    9955.85 [#/sec] (mean)\n";
        let s = parse_ab(out).unwrap();
        assert_eq!((s.complete, s.failed, s.non_2xx), (1_000_000, 7, 2));
        assert!((s.per_second - 9955.85).abs() < 1e-6);
        assert_eq!(parse_ab("Requests per second: 3\n"), None);
    }

    #[test]
    fn drops_are_the_loss_counters_only() {
        let stats: BTreeMap<String, u64> = [
            ("spans.built", 10),
            ("drop.export_queue_full", 3),
            ("drop.half_seen", 0),
            ("kernel.ring_full", 2),
            ("kernel.sock_send.map_full", 1),
            ("kernel.emitted", 99),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let keys: Vec<String> = drop_counters(&stats).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["drop.export_queue_full", "kernel.ring_full", "kernel.sock_send.map_full"]);
    }

    #[test]
    fn nginx_gets_enough_workers_for_the_connections() {
        assert_eq!(nginx_workers(4096, 19_936), 1);
        assert_eq!(nginx_workers(100_000, 19_936), 8);
        assert!(nginx_workers(100_000, 19_936) * 19_936 > 100_000 * 5 / 4);
    }

    #[test]
    fn holders_have_their_own_source_address() {
        assert_eq!(holder_source(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(holder_source(1), Ipv4Addr::new(127, 1, 0, 2));
        assert_eq!(holder_source(255), Ipv4Addr::new(127, 1, 1, 0));
        assert!((0..1000).all(|k| holder_source(k) != Ipv4Addr::new(127, 1, 0, 0)));
        assert_eq!(parse_holder_done("done 19000 all opened"), Some((19000, "all opened".into())));
        assert_eq!(parse_holder_done("done 7 OSError: [Errno 24] Too many open files").map(|d| d.0), Some(7));
        assert_eq!(parse_holder_done("open 500"), None);
    }
}
