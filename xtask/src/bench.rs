//! `cargo xtask bench overhead`: what tracing costs a busy HTTP server.
//!
//! A benchmark, not a test: it prints numbers and fails only when it cannot measure.
//! nginx serves a 1 KiB file on 127.0.0.1; each round runs wrk without the agent, then
//! with `ghostwire --port <port>` tracing it, and compares throughput and p99 latency.
//! It also reports the agent's CPU time per request, the spans it exported and the
//! events it dropped. Every wait is bounded; nginx and the agent are stopped by `Drop`
//! guards even when a step fails.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use crate::util::{self, ChildGuard, Step, TempDir};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Throughput, p99 latency and CPU cost of tracing nginx under wrk load.
    Overhead(OverheadArgs),
}

#[derive(clap::Args, Debug)]
pub struct OverheadArgs {
    /// Rounds (each: one run without the agent, one with it).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Seconds of unrecorded load before the first round (0: none).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Only the runs without the agent (to try the harness without root or an agent).
    #[arg(long, hide = true)]
    pub no_agent: bool,
    /// Run this binary as the agent instead of building target/release/ghostwire
    /// (to try the harness with a stand-in).
    #[arg(long, hide = true, value_name = "PATH")]
    pub agent_bin: Option<std::path::PathBuf>,
    /// Extra agent arguments, after `--`.
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

pub fn run(cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Overhead(args) => overhead(args),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing (pure)

/// What one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkReport {
    pub requests_per_sec: f64,
    /// 99th percentile latency, seconds.
    pub p99: f64,
    /// Requests completed.
    pub requests: u64,
    pub socket_errors: u64,
    pub non_2xx: u64,
}

/// A wrk time (`635.00us`, `1.20ms`, `2.00s`, `1.50m`, `1.00h`) in seconds.
pub fn parse_wrk_time(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return None;
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * scale)
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Result<WrkReport> {
    let mut report = WrkReport::default();
    let (mut rps, mut p99, mut requests) = (None, None, None);
    let mut in_distribution = false;
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if line.starts_with("Latency Distribution") {
            in_distribution = true;
        } else if in_distribution && line.contains('%') {
            // "99%    1.20ms" (wrk) or "99.000%    1.20ms" (wrk2)
            let mut words = line.split_whitespace();
            if let (Some(pct), Some(value)) = (words.next(), words.next()) {
                let pct = pct.trim_end_matches('%').parse::<f64>().ok();
                if pct.is_some_and(|p| (p - 99.0).abs() < 1e-9) {
                    p99 = parse_wrk_time(value);
                }
            }
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            in_distribution = false;
            requests = n.trim().parse::<u64>().ok();
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 12"
            report.socket_errors = errors
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = n.trim().parse().unwrap_or(0);
        }
    }
    report.requests_per_sec = rps.context("no `Requests/sec:` line in wrk's output")?;
    report.p99 =
        p99.context("no 99% line under `Latency Distribution` (was wrk run with --latency?)")?;
    report.requests = requests.context("no `N requests in` line in wrk's output")?;
    Ok(report)
}

/// `key=value` pairs of the agent's `stats: k=v k=v ...` line.
pub fn parse_stats_line(line: &str) -> Option<Vec<(String, u64)>> {
    let rest = line.trim().strip_prefix("stats:")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Events lost: kernel `ring_full`/`read_failed` counters plus every userspace `drop.*`.
///
/// The agent reports a kernel counter both as a total (`kernel.ring_full=N`) and per
/// probe (`kernel.write.ring_full=N`); the per-probe ones are counted only for counters
/// that have no total, so nothing is counted twice.
pub fn events_dropped(stats: &[(String, u64)]) -> u64 {
    let is_loss = |name: &str| name.contains("ring_full") || name.contains("read_failed");
    let mut totals: Vec<&str> = Vec::new();
    let mut sum = 0;
    for (key, value) in stats {
        if let Some(name) = key.strip_prefix("kernel.") {
            if !name.contains('.') && is_loss(name) {
                totals.push(name);
                sum += value;
            }
        } else if key.starts_with("drop.") {
            sum += value;
        }
    }
    for (key, value) in stats {
        if let Some((_probe, name)) = key.strip_prefix("kernel.").and_then(|k| k.split_once('.')) {
            if is_loss(name) && !totals.contains(&name) {
                sum += value;
            }
        }
    }
    sum
}

/// Spans in an OTLP-JSON JSONL text: one `{"resourceSpans":[{"scopeSpans":[{"spans":[..]}]}]}`
/// per line (snake_case keys and bare span objects are accepted too).
/// Returns `(spans, lines that are not JSON)`.
pub fn count_spans(jsonl: &str) -> (u64, u64) {
    fn array<'a>(v: &'a serde_json::Value, camel: &str, snake: &str) -> &'a [serde_json::Value] {
        v.get(camel)
            .or_else(|| v.get(snake))
            .and_then(serde_json::Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
    let (mut spans, mut bad) = (0u64, 0u64);
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            bad += 1;
            continue;
        };
        if v.get("spanId").is_some() || v.get("span_id").is_some() {
            spans += 1;
            continue;
        }
        for rs in array(&v, "resourceSpans", "resource_spans") {
            for ss in array(rs, "scopeSpans", "scope_spans") {
                spans += array(ss, "spans", "spans").len() as u64;
            }
        }
    }
    (spans, bad)
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`.
pub fn parse_proc_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: skip past
    // the last ')'. Then field 3 (state) is index 0, utime (14) index 11, stime (15) 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

fn fmt_latency(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.0} us", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

// ---------------------------------------------------------------------------------------
// nginx

struct Nginx {
    port: u16,
    _guard: ChildGuard,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn nginx_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         error_log stderr;\n\
         pid {d}/nginx.pid;\n\
         events {{}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   sendfile off;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       location / {{ root {d}/www; }}\n\
         \x20   }}\n\
         }}\n"
    )
}

fn start_nginx(dir: &Path) -> Result<Nginx> {
    let www = dir.join("www");
    std::fs::create_dir(&www).with_context(|| format!("creating {}", www.display()))?;
    let body: Vec<u8> = (0..1024u32)
        .map(|i| b'a' + u8::try_from(i % 26).unwrap_or(0))
        .collect();
    std::fs::write(www.join("1k.bin"), &body).context("writing 1k.bin")?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port)).context("writing nginx.conf")?;
    let log_path = dir.join("nginx.stderr");
    let log = std::fs::File::create(&log_path).context("creating nginx.stderr")?;

    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf);
    let shown = util::display(&cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut guard = ChildGuard::new("nginx", child, libc::SIGTERM, Duration::from_secs(5));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = guard.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "nginx exited ({status}) at startup: `{shown}`\n{}",
                log.trim_end()
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "nginx did not listen on {addr} within 10 s: `{shown}`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check_served(addr, body.len()).context("nginx does not serve /1k.bin")?;
    Ok(Nginx {
        port,
        _guard: guard,
    })
}

/// One GET of `/1k.bin` must answer 200 with the whole file.
fn check_served(addr: SocketAddr, len: usize) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status = text.lines().next().unwrap_or_default();
    ensure!(status.starts_with("HTTP/1.1 200"), "status line `{status}`");
    let body_len = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    ensure!(body_len == len, "body is {body_len} bytes, expected {len}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// wrk

fn run_wrk(args: &OverheadArgs, port: u16, seconds: u64) -> Result<WrkReport> {
    let mut cmd = Command::new("wrk");
    cmd.arg("-t")
        .arg(args.threads.to_string())
        .arg("-c")
        .arg(args.connections.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .arg("--latency")
        .arg(format!("http://127.0.0.1:{port}/1k.bin"));
    let shown = util::display(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    // Read the pipes on threads so a chatty wrk cannot block; bound the wait.
    let stdout = child.stdout.take().context("wrk stdout")?;
    let stderr = child.stderr.take().context("wrk stderr")?;
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_thread = read_all(Box::new(stdout));
    let err_thread = read_all(Box::new(stderr));
    let limit = Duration::from_secs(seconds + 30);
    let started = Instant::now();
    let mut guard = ChildGuard::new("wrk", child, libc::SIGKILL, Duration::from_secs(5));
    let status = loop {
        if let Some(status) = guard.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > limit {
            guard.stop()?;
            bail!(
                "`{shown}` did not finish within {}",
                util::fmt_duration(limit)
            );
        }
    };
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    ensure!(status.success(), "`{shown}` failed ({status}):\n{out}{err}");
    let report =
        parse_wrk(&out).with_context(|| format!("parsing the output of `{shown}`:\n{out}"))?;
    if report.socket_errors > 0 || report.non_2xx > 0 {
        eprintln!(
            "warning: wrk saw {} socket errors and {} non-2xx responses",
            report.socket_errors, report.non_2xx
        );
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// The agent

struct AgentRun {
    cpu_seconds: f64,
    spans: u64,
    bad_lines: u64,
    stats_line: Option<String>,
    dropped: u64,
}

fn clock_ticks_per_second() -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second is ~100")]
    Ok(ticks as f64)
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_proc_stat_ticks(&stat).with_context(|| format!("parsing {path}: {stat}"))?;
    #[expect(clippy::cast_precision_loss, reason = "tick counts are far below 2^52")]
    Ok(ticks as f64 / clock_ticks_per_second()?)
}

/// Starts the agent tracing `port`, runs `load` once it printed `ready`, then measures
/// its CPU time, stops it with SIGINT and collects its output.
fn with_agent<T>(
    args: &OverheadArgs,
    port: u16,
    spans_path: &Path,
    load: impl FnOnce() -> Result<T>,
) -> Result<(T, AgentRun)> {
    let bin = args.agent_bin.clone().unwrap_or_else(util::agent_bin);
    let mut cmd = Command::new(&bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--output")
        .arg(format!("jsonl:{}", spans_path.display()))
        .arg("--stats-interval")
        .arg("0")
        .args(&args.agent_args);
    let shown = util::display(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let mut guard = ChildGuard::new("ghostwire", child, libc::SIGINT, Duration::from_secs(30));

    // A thread drains stderr continuously (so the agent never blocks on a full pipe).
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut lines: Vec<String> = Vec::new();
    let tail = |lines: &[String]| lines[lines.len().saturating_sub(20)..].join("\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let ready = line.starts_with("ready");
                if ready {
                    println!("    agent: {line}");
                }
                lines.push(line);
                if ready {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.stop()?;
                bail!(
                    "the agent exited ({status}) before printing `ready`: `{shown}`\n{}",
                    tail(&lines)
                );
            }
        }
        if let Some(status) = guard.try_wait()? {
            lines.extend(rx.try_iter());
            bail!(
                "the agent exited ({status}) before printing `ready`: `{shown}`\n{}",
                tail(&lines)
            );
        }
        ensure!(
            Instant::now() < deadline,
            "the agent did not print `ready` within 60 s: `{shown}`\n{}",
            tail(&lines)
        );
    }

    let result = load()?;
    let cpu_seconds = cpu_seconds(guard.pid())?;
    let status = guard.stop()?;
    let _ = reader.join();
    lines.extend(rx.try_iter());
    if !status.success() {
        bail!(
            "the agent exited with {status} after SIGINT: `{shown}`\n{}",
            tail(&lines)
        );
    }
    let stats_line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("stats:"))
        .cloned();
    let dropped = stats_line
        .as_deref()
        .and_then(parse_stats_line)
        .map_or(0, |s| events_dropped(&s));
    let jsonl = std::fs::read_to_string(spans_path).unwrap_or_default();
    let (spans, bad_lines) = count_spans(&jsonl);
    Ok((
        result,
        AgentRun {
            cpu_seconds,
            spans,
            bad_lines,
            stats_line,
            dropped,
        },
    ))
}

// ---------------------------------------------------------------------------------------
// The benchmark

struct Round {
    without: WrkReport,
    with: Option<(WrkReport, AgentRun)>,
}

fn overhead(args: &OverheadArgs) -> Result<()> {
    let real_agent = !args.no_agent && args.agent_bin.is_none();
    if real_agent && !util::is_root() {
        bail!(crate::NEEDS_ROOT);
    }
    crate::setup::setup(true)?;
    if real_agent {
        crate::build_agent()?;
    }
    let dir = TempDir::new("ghostwire-bench")?;
    let nginx = start_nginx(dir.path())?;
    let port = nginx.port;
    println!(
        "==> nginx on 127.0.0.1:{port}; wrk -t {} -c {} -d {}s --latency http://127.0.0.1:{port}/1k.bin",
        args.threads, args.connections, args.duration
    );
    if args.warmup > 0 {
        let step = Step::start(format!("warm-up ({} s of load, not recorded)", args.warmup));
        run_wrk(args, port, args.warmup)?;
        step.done();
    }

    let mut rounds = Vec::new();
    for r in 1..=args.rounds {
        let n = args.rounds;
        let without = run_wrk(args, port, args.duration)?;
        println!(
            "round {r}/{n} without agent: {:>9.0} req/s, p99 {:>9}, {} requests",
            without.requests_per_sec,
            fmt_latency(without.p99),
            without.requests
        );
        let with = if args.no_agent {
            None
        } else {
            let spans_path = dir.path().join(format!("spans-{r}.jsonl"));
            let (report, agent) = with_agent(args, port, &spans_path, || {
                run_wrk(args, port, args.duration)
            })?;
            #[expect(
                clippy::cast_precision_loss,
                reason = "request counts are far below 2^52"
            )]
            let per_request = agent.cpu_seconds / report.requests.max(1) as f64;
            println!(
                "round {r}/{n} with agent:    {:>9.0} req/s, p99 {:>9}, {} requests, agent CPU {:.2} s \
                 ({:.1} us/request), {} spans exported, {} events dropped",
                report.requests_per_sec,
                fmt_latency(report.p99),
                report.requests,
                agent.cpu_seconds,
                per_request * 1e6,
                agent.spans,
                agent.dropped
            );
            match &agent.stats_line {
                Some(line) => println!("    agent {line}"),
                None => println!("    agent printed no `stats:` line"),
            }
            if agent.spans == 0 {
                eprintln!("warning: the agent exported no spans: is it tracing port {port}?");
            }
            if agent.bad_lines > 0 {
                eprintln!(
                    "warning: {} lines of the spans file are not JSON",
                    agent.bad_lines
                );
            }
            Some((report, agent))
        };
        rounds.push(Round { without, with });
    }
    print!("{}", summary(&rounds));
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
fn summary(rounds: &[Round]) -> String {
    let mut s = String::new();
    let n = rounds.len();
    let base_rps: Vec<f64> = rounds.iter().map(|r| r.without.requests_per_sec).collect();
    let base_p99: Vec<f64> = rounds.iter().map(|r| r.without.p99).collect();
    let _ = writeln!(s, "\nsummary over {n} rounds (medians):");
    let _ = writeln!(
        s,
        "  without agent:               {:.0} req/s, p99 {}",
        median(&base_rps),
        fmt_latency(median(&base_p99))
    );
    let with: Vec<(&WrkReport, &AgentRun, &WrkReport)> = rounds
        .iter()
        .filter_map(|r| r.with.as_ref().map(|(w, a)| (w, a, &r.without)))
        .collect();
    if with.is_empty() {
        return s;
    }
    let rps: Vec<f64> = with.iter().map(|(w, _, _)| w.requests_per_sec).collect();
    let p99: Vec<f64> = with.iter().map(|(w, _, _)| w.p99).collect();
    let rps_ratio: Vec<f64> = with
        .iter()
        .map(|(w, _, b)| w.requests_per_sec / b.requests_per_sec)
        .collect();
    let p99_ratio: Vec<f64> = with.iter().map(|(w, _, b)| w.p99 / b.p99).collect();
    let cpu_per_req: Vec<f64> = with
        .iter()
        .map(|(w, a, _)| a.cpu_seconds / w.requests.max(1) as f64)
        .collect();
    let spans_per_req: Vec<f64> = with
        .iter()
        .map(|(w, a, _)| a.spans as f64 / w.requests.max(1) as f64)
        .collect();
    let spans: u64 = with.iter().map(|(_, a, _)| a.spans).sum();
    let requests: u64 = with.iter().map(|(w, _, _)| w.requests).sum();
    let dropped: u64 = with.iter().map(|(_, a, _)| a.dropped).sum();
    let _ = writeln!(
        s,
        "  with agent:                  {:.0} req/s, p99 {}",
        median(&rps),
        fmt_latency(median(&p99))
    );
    let _ = writeln!(
        s,
        "  throughput ratio (with/without): {:.3}",
        median(&rps_ratio)
    );
    let _ = writeln!(
        s,
        "  p99 latency ratio (with/without): {:.3}",
        median(&p99_ratio)
    );
    let _ = writeln!(
        s,
        "  agent CPU per request:       {:.2} us",
        median(&cpu_per_req) * 1e6
    );
    let _ = writeln!(
        s,
        "  spans exported:              {spans} for {requests} requests ({:.3} per request)",
        median(&spans_per_req)
    );
    let _ = writeln!(s, "  events dropped:              {dropped}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:8080/1k.bin
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   660.51us  208.80us   8.42ms   89.63%
    Req/Sec    24.36k     1.20k   27.11k    71.00%
  Latency Distribution
     50%  621.00us
     75%  720.00us
     90%  840.00us
     99%    1.35ms
  484733 requests in 10.00s, 595.25MB read
  Socket errors: connect 0, read 1, write 0, timeout 12
  Non-2xx or 3xx responses: 5
Requests/sec:  48469.57
Transfer/sec:     59.52MB
";

    #[test]
    fn parses_wrk() {
        let r = parse_wrk(WRK).expect("parse");
        assert!((r.requests_per_sec - 48469.57).abs() < 1e-6);
        assert!((r.p99 - 1.35e-3).abs() < 1e-12);
        assert_eq!(r.requests, 484_733);
        assert_eq!(r.socket_errors, 13);
        assert_eq!(r.non_2xx, 5);
    }

    #[test]
    fn p99_in_every_unit() {
        for (value, seconds) in [
            ("812.00us", 812e-6),
            ("1.35ms", 1.35e-3),
            ("2.01s", 2.01),
            ("1.50m", 90.0),
        ] {
            let out = WRK.replace("    1.35ms", &format!("    {value}"));
            let r = parse_wrk(&out).expect("parse");
            assert!((r.p99 - seconds).abs() < 1e-9, "{value}: {}", r.p99);
        }
        // wrk2 prints the percentile with decimals.
        let wrk2 = WRK.replace("     99%    1.35ms", " 99.000%    3.00ms");
        assert!((parse_wrk(&wrk2).expect("parse").p99 - 3e-3).abs() < 1e-12);
    }

    #[test]
    fn wrk_without_latency_is_an_error() {
        let out: String = WRK
            .lines()
            .filter(|l| !l.contains('%') || l.contains("Latency "))
            .collect::<Vec<_>>()
            .join("\n");
        let err = parse_wrk(&out).expect_err("no p99");
        assert!(err.to_string().contains("99%"), "{err}");
        assert!(parse_wrk("").is_err());
    }

    #[test]
    fn wrk_times() {
        assert_eq!(parse_wrk_time("10.00us"), Some(10.0 * 1e-6));
        assert_eq!(parse_wrk_time("1.00h"), Some(3600.0));
        assert_eq!(parse_wrk_time("12"), None);
        assert_eq!(parse_wrk_time("xms"), None);
    }

    #[test]
    fn stats_and_drops() {
        let line = "stats: events.data=100 drop.parse_error=2 drop.unanswered_request=1 spans.built=90 \
                    kernel.ring_full=7 kernel.read_failed=1 kernel.write.ring_full=4 kernel.read.ring_full=3 \
                    kernel.read.read_failed=1 kernel.untracked_conn=9";
        let stats = parse_stats_line(line).expect("stats line");
        assert_eq!(stats.len(), 10);
        assert_eq!(stats[0], ("events.data".to_owned(), 100));
        // 2 + 1 (drop.*) + 7 + 1 (kernel totals; per-probe ones not counted twice)
        assert_eq!(events_dropped(&stats), 11);
        assert_eq!(parse_stats_line("ready: tracing port 80"), None);
        assert_eq!(parse_stats_line("stats:"), Some(vec![]));
    }

    #[test]
    fn per_probe_drops_count_when_there_is_no_total() {
        let stats = parse_stats_line(
            "stats: kernel.write.ring_full=4 kernel.read.ring_full=3 kernel.x.emitted=9",
        )
        .expect("stats line");
        assert_eq!(events_dropped(&stats), 7);
    }

    #[test]
    fn counts_spans_in_otlp_jsonl() {
        let jsonl = r#"{"resourceSpans":[{"resource":{},"scopeSpans":[{"spans":[{"traceId":"a","spanId":"1"},{"traceId":"a","spanId":"2","parentSpanId":"1"}]}]}]}
{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"3"}]},{"spans":[]}]},{"scopeSpans":[{"spans":[{"spanId":"4"}]}]}]}

{"resource_spans":[{"scope_spans":[{"spans":[{"span_id":"5"}]}]}]}
{"traceId":"b","spanId":"6"}
not json
"#;
        assert_eq!(count_spans(jsonl), (6, 1));
    }

    #[test]
    fn proc_stat_cpu_ticks() {
        let stat =
            "4242 (ghost wire) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_proc_stat_ticks(stat), Some(175));
        assert_eq!(parse_proc_stat_ticks("garbage"), None);
    }

    #[test]
    fn medians() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nginx_conf_is_self_contained() {
        let conf = nginx_conf(Path::new("/tmp/x"), 8080);
        for needle in [
            "daemon off;",
            "master_process on;",
            "worker_processes 1;",
            "error_log stderr;",
            "pid /tmp/x/nginx.pid;",
            "access_log off;",
            "sendfile off;",
            "keepalive_requests 1000000;",
            "listen 127.0.0.1:8080;",
            "root /tmp/x/www;",
        ] {
            assert!(conf.contains(needle), "{needle} missing from\n{conf}");
        }
    }
}
