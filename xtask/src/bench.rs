//! `cargo xtask bench overhead`: what tracing costs a busy HTTP server;
//! `cargo xtask bench hooks`: what each candidate hook set costs with empty programs.
//!
//! Benchmarks, not tests: they print numbers and fail only when they cannot measure
//! (a load run with errors or non-2xx responses is such a failure: the numbers would
//! not measure what they claim). nginx serves a 1 KiB file on 127.0.0.1.
//!
//! `overhead --proto grpc` measures the same three configurations on HTTP/2: the legacy
//! grpcio server `tests/peers/grpc_server.py` answers unary `/demo.Echo/Unary` calls that
//! h2load posts (one framed gRPC message per request), saturated (`-D`) or at a fixed
//! rate (`--rps` per client). A gRPC run in which some request was not answered 2xx, or
//! not echoed, is reported as invalid and left out of the medians instead of failing
//! the benchmark.
//!
//! `overhead` alternates, in each round and for each load view (wrk saturating nginx;
//! hey holding a fixed rate), the configurations of `--configs`: no agent (the
//! baseline), the agent with `--capture-only` (the kernel side and the ring drain), the
//! full agent, and the full agent at nice 10. The full agent exports as users deploy it:
//! OTLP/gRPC protobuf to a real receiver, rotel with its blackhole exporter, started once
//! per benchmark on loopback (`--export jsonl` writes a file instead). It compares
//! throughput and p99 latency with the baseline of the same round, and reports the
//! agent's CPU time per request, the receiver's apart from it, the node's CPU time per
//! request added over the baseline, the agent's RSS and peak RSS, the spans exported per
//! request and what was dropped, in one table with both views. A full-agent run that
//! exported no span is invalid.
//!
//! `hooks` runs wrk without anything attached, then with `ghostwire --empty-probes SET`
//! for each hook set, then with the real agent tracing a port nothing uses, and reports
//! each one's throughput against the baseline of the same round.
//!
//! `overhead --proto https` is the HTTP/1 benchmark over TLS 1.3 (nginx with a
//! self-signed certificate, wrk saturating and h2load --h1 at a fixed rate, both
//! OpenSSL clients, so both ends are decrypted); runs in which the agent did not
//! decrypt TLS, or other processes' uprobes were attached, are invalid.
//!
//! `uprobe` measures the uprobe cost per call on its own: tests/peers/ssl_calls.py calls
//! SSL_write and SSL_read over memory BIOs (no network I/O) with nothing attached, with
//! `ghostwire --empty-probes uprobe-ssl` and with the full agent, alternating, and
//! reports nanoseconds per call and the differences. It is its own subcommand rather
//! than a `hooks` set because `hooks` measures nginx throughput under wrk, in which a
//! probe on SSL functions never fires (plain HTTP), while this load is a call loop.
//!
//! Every wait is bounded; nginx, the load generators and the agent are stopped by `Drop`
//! guards even when a step fails.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use crate::util::{self, ChildGuard, Step, TempDir};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Throughput, p99 latency, CPU and memory cost of tracing a server: no agent,
    /// capture-only, the full agent exporting OTLP to rotel (and at nice 10), under a
    /// saturating and a fixed-rate load.
    Overhead(OverheadArgs),
    /// Saturated throughput of nginx with empty programs on each candidate hook set.
    Hooks(HooksArgs),
    /// Nanoseconds per OpenSSL SSL_write and SSL_read call, without network I/O: nothing
    /// attached, empty uprobes + uretprobes, the full agent.
    Uprobe(UprobeArgs),
    /// Agent memory under connection churn, a collector outage and idle connections.
    Soak(crate::soak::SoakArgs),
}

/// Rounds and the saturating load (wrk, or h2load for gRPC), shared by both benchmarks.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Rounds (each compares every configuration with a baseline run of the same round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds per load run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// wrk connections (h2load clients for gRPC).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// wrk threads (h2load threads for gRPC).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Seconds of unrecorded load before the first round (0: none).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

impl LoadArgs {
    /// Unrecorded load before the first round: `load(seconds)`.
    fn warm_up(&self, load: impl FnOnce(u64) -> Result<Load>) -> Result<()> {
        if self.warmup > 0 {
            let step = Step::start(format!("warm-up ({} s of load, not recorded)", self.warmup));
            load(self.warmup)?;
            step.done();
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct OverheadArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// What is served and loaded: `http1` (nginx under wrk and hey), `https` (nginx over
    /// TLS 1.3 under wrk and h2load --h1) or `grpc` (the grpcio server
    /// tests/peers/grpc_server.py under h2load).
    #[arg(long, value_enum, default_value = "http1")]
    pub proto: Proto,
    /// Load views, comma-separated: `saturated` (wrk or h2load, as fast as the server
    /// answers) and `fixed` (hey, or h2load --rps, at a fixed request rate).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["saturated", "fixed"])]
    pub views: Vec<View>,
    /// Connections (hey -c, h2load -c) for the fixed-rate view.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_connections: u32,
    /// Requests per second of each connection (hey -q, h2load --rps) for the fixed-rate
    /// view [default: 1000 for http1, 500 for https, 150 for grpc].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_qps_per_connection: Option<u32>,
    /// gRPC: concurrent streams per h2load client (h2load -m).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub streams: u32,
    /// HTTPS: seconds to wait, before each run, for other processes' uprobes to go (a
    /// run with some attached is invalid: their traps slow nginx and wrk too).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub quiet_wait: u64,
    /// gRPC: bytes of the request message's one protobuf field (the server echoes it).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub message_bytes: u32,
    /// Configurations to run in each round and view, comma-separated: `baseline`,
    /// `capture-only`, `full`, `full-nice` (the full agent with `--nice 10`). They run in
    /// that order; the baseline is required (everything is compared with it).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["baseline", "capture-only", "full"])]
    pub configs: Vec<Config>,
    /// Where the full agent exports: `otlp` (OTLP/gRPC to rotel with the blackhole
    /// exporter, started once for the benchmark) or `jsonl` (a file).
    #[arg(long, value_enum, default_value = "otlp")]
    pub export: Export,
    /// Only the runs without the agent (to try the harness without root or an agent).
    #[arg(long, hide = true)]
    pub no_agent: bool,
    /// Run this binary as the agent (every agent configuration) instead of building
    /// target/release/ghostwire (to try the harness with a stand-in).
    #[arg(long, hide = true, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// Extra agent arguments (every agent configuration), after `--`.
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct HooksArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Hook sets to measure, comma-separated (default: all).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values = ["syscalls", "raw-syscalls", "sock", "raw-sock", "cgroup-skb", "ghostwire"]
    )]
    pub sets: Vec<HookSet>,
    /// Run this binary as the agent instead of building target/release/ghostwire.
    #[arg(long, hide = true, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct UprobeArgs {
    /// Rounds (each runs every configuration once; the order rotates by one each round).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// SSL_write calls, and as many SSL_read calls, per run.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
    pub calls: u64,
    /// Plaintext bytes per SSL_write (one TLS record each, read by one SSL_read).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub bytes: u32,
    /// Configurations to measure, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["none", "empty-uprobes", "ghostwire"])]
    pub configs: Vec<UprobeConfig>,
    /// Seconds to wait, before each run, for other processes' uprobes to go (a run with
    /// some attached is invalid).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub quiet_wait: u64,
    /// Run this binary as the agent instead of building target/release/ghostwire.
    #[arg(long, hide = true, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
}

/// What is attached to libssl while `bench uprobe` calls it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UprobeConfig {
    /// Nothing: the cost of the call itself (libssl and Python's call around it).
    None,
    /// `ghostwire --empty-probes uprobe-ssl`: empty programs as uprobe and uretprobe on
    /// the functions the agent hooks (SSL_read, SSL_write, their `_ex` variants, which
    /// are what Python calls, and SSL_do_handshake).
    EmptyUprobes,
    /// The agent tracing the calling process (`--pid`), exporting to /dev/null.
    Ghostwire,
}

impl UprobeConfig {
    fn name(self) -> &'static str {
        match self {
            UprobeConfig::None => "none",
            UprobeConfig::EmptyUprobes => "empty-uprobes",
            UprobeConfig::Ghostwire => "ghostwire",
        }
    }

    fn description(self) -> &'static str {
        match self {
            UprobeConfig::None => "nothing attached",
            UprobeConfig::EmptyUprobes => "empty uprobe + uretprobe (--empty-probes uprobe-ssl)",
            UprobeConfig::Ghostwire => "full agent (--pid <caller>)",
        }
    }
}

/// What `bench overhead` serves and loads.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// nginx serving a 1 KiB file over HTTP/1.1 keep-alive.
    Http1,
    /// nginx serving the same file over TLS 1.3 (a self-signed certificate made with the
    /// openssl CLI), HTTP/1.1 keep-alive: the agent decrypts it through the OpenSSL
    /// uprobes in nginx and wrk.
    Https,
    /// The grpcio server answering unary `/demo.Echo/Unary` calls over h2c.
    Grpc,
}

impl OverheadArgs {
    /// `--rate-qps-per-connection`, or the default of `--proto`.
    fn rate_qps(&self) -> u32 {
        self.rate_qps_per_connection.unwrap_or(match self.proto {
            Proto::Http1 => 1000,
            // TLS costs nginx more per request: half the rate keeps the view well below
            // saturation on two cores.
            Proto::Https => 500,
            Proto::Grpc => 150,
        })
    }
}

impl Proto {
    /// Whether runs and tables show the agent's `spans.built`: where building no span
    /// is the failure to watch for (HTTP/2 parsing, TLS decryption).
    fn shows_spans_built(self) -> bool {
        self != Proto::Http1
    }
}

/// A load view of `bench overhead`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// wrk: as many requests as nginx answers.
    Saturated,
    /// hey (h2load for gRPC and HTTPS): a fixed request rate.
    Fixed,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Saturated => "saturated",
            View::Fixed => "fixed",
        }
    }
}

/// What `bench overhead` runs the load with (`--configs`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// No agent: what every other configuration is compared with.
    Baseline,
    /// `ghostwire --capture-only --port P`: the kernel programs and the ring drain.
    CaptureOnly,
    /// `ghostwire --port P`, exporting as `--export` says (OTLP/gRPC to rotel, or JSONL).
    Full,
    /// The full agent at a lower CPU priority (`--nice 10`): what giving the traced
    /// services the CPU first costs in drops and buys in latency.
    FullNice,
}

/// The nice value of the `full-nice` configuration: well below the services' 0, but not
/// the lowest (19), so that the agent still runs on a node that is merely busy.
pub const FULL_NICE: i32 = 10;

impl Config {
    /// The order configurations run in within a round, the baseline first.
    const ALL: [Config; 4] = [Config::Baseline, Config::CaptureOnly, Config::Full, Config::FullNice];

    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::CaptureOnly => "capture-only",
            Config::Full => "full",
            Config::FullNice => "full-nice",
        }
    }

    /// The row label of the table.
    fn label(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::CaptureOnly => "capture-only",
            Config::Full => "full agent",
            Config::FullNice => "full agent, nice 10",
        }
    }

    /// Whether the agent builds and exports spans (and must have exported some).
    fn exports(self) -> bool {
        matches!(self, Config::Full | Config::FullNice)
    }
}

/// Where the full agent sends its spans (`--export`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// OTLP/gRPC protobuf to a real receiver on loopback: rotel with its blackhole
    /// exporter (it decodes every request and discards the spans), as users deploy.
    Otlp,
    /// One OTLP-JSON line per batch to a file (`--output jsonl:PATH`).
    Jsonl,
}

/// A hook set of `bench hooks`: one of the agent's `--empty-probes` sets, or the agent.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookSet {
    /// Tracepoints syscalls:sys_{enter,exit}_* of the read/write-family syscalls.
    Syscalls,
    /// Raw tracepoints sys_enter and sys_exit (every syscall).
    RawSyscalls,
    /// Tracepoints sock:sock_send_length and sock:sock_recv_length.
    Sock,
    /// Raw tracepoints sock_send_length and sock_recv_length.
    RawSock,
    /// cgroup_skb ingress and egress programs on the cgroup v2 root.
    CgroupSkb,
    /// The real agent tracing a port nothing uses (its probes fire, nothing is captured).
    Ghostwire,
}

impl HookSet {
    /// The name on the command line (the agent's `--empty-probes` name for a set).
    fn name(self) -> &'static str {
        match self {
            HookSet::Syscalls => "syscalls",
            HookSet::RawSyscalls => "raw-syscalls",
            HookSet::Sock => "sock",
            HookSet::RawSock => "raw-sock",
            HookSet::CgroupSkb => "cgroup-skb",
            HookSet::Ghostwire => "ghostwire",
        }
    }

    fn description(self) -> &'static str {
        match self {
            HookSet::Syscalls => {
                "tracepoints syscalls:sys_enter/exit_{read,write,recvfrom,sendto,readv,writev,recvmsg,sendmsg}"
            }
            HookSet::RawSyscalls => "raw tracepoints sys_enter + sys_exit (every syscall)",
            HookSet::Sock => "tracepoints sock:sock_send_length + sock:sock_recv_length",
            HookSet::RawSock => "raw tracepoints sock_send_length + sock_recv_length",
            HookSet::CgroupSkb => "cgroup_skb ingress + egress on the cgroup v2 root",
            HookSet::Ghostwire => "ghostwire, probes fire, nothing captured (--port <unused>)",
        }
    }
}

pub fn run(cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Overhead(args) => overhead(args),
        BenchCmd::Hooks(args) => hooks(args),
        BenchCmd::Uprobe(args) => uprobe(args),
        BenchCmd::Soak(args) => crate::soak::soak(args),
    }
}

/// The values in their first-seen order, each once.
fn dedup<T: PartialEq + Copy>(values: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for v in values {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    out
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
    /// Socket errors of every kind, timeouts included.
    pub socket_errors: u64,
    pub timeouts: u64,
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
            for part in errors.split(',') {
                let mut words = part.split_whitespace();
                if let (Some(kind), Some(Ok(n))) = (words.next(), words.next().map(str::parse::<u64>)) {
                    report.socket_errors += n;
                    if kind == "timeout" {
                        report.timeouts += n;
                    }
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = n.trim().parse().unwrap_or(0);
        }
    }
    report.requests_per_sec = rps.context("no `Requests/sec:` line in wrk's output")?;
    report.p99 = p99.context("no 99% line under `Latency Distribution` (was wrk run with --latency?)")?;
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
/// Returns `(spans, lines that are not JSON)`. Read a line at a time (a saturated run
/// writes gigabytes); a read error ends the count.
pub fn count_spans_in(reader: impl BufRead) -> (u64, u64) {
    fn array<'a>(v: &'a serde_json::Value, camel: &str, snake: &str) -> &'a [serde_json::Value] {
        v.get(camel).or_else(|| v.get(snake)).and_then(serde_json::Value::as_array).map_or(&[], Vec::as_slice)
    }
    let (mut spans, mut bad) = (0u64, 0u64);
    for line in reader.lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
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

/// At most this many wrk timeouts are tolerated in a run (a request caught by the end of
/// the run); any other socket error or any non-2xx response fails the run.
pub const MAX_WRK_TIMEOUTS: u64 = 5;

/// Fails when a wrk run saw errors: the numbers would not measure nginx serving the file.
pub fn check_wrk(report: &WrkReport) -> Result<()> {
    ensure!(report.non_2xx == 0, "{} non-2xx responses out of {} requests", report.non_2xx, report.requests);
    let others = report.socket_errors.saturating_sub(report.timeouts);
    ensure!(others == 0, "{others} socket errors (connect, read or write) and {} timeouts", report.timeouts);
    ensure!(
        report.timeouts <= MAX_WRK_TIMEOUTS,
        "{} timeouts (at most {MAX_WRK_TIMEOUTS} are tolerated)",
        report.timeouts
    );
    Ok(())
}

/// What one hey run reported (its default text output).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeyReport {
    pub requests_per_sec: f64,
    /// 99th percentile latency, seconds (`None`: no `99%` line, e.g. too few requests).
    pub p99: Option<f64>,
    /// `Status code distribution`: (status, responses).
    pub statuses: Vec<(u16, u64)>,
    /// `Error distribution`: (count, message).
    pub errors: Vec<(u64, String)>,
}

/// Parses hey's default text output.
pub fn parse_hey(out: &str) -> Result<HeyReport> {
    let mut report = HeyReport::default();
    let mut rps = None;
    let mut section = "";
    for raw in out.lines() {
        let line = raw.trim();
        if !raw.starts_with(char::is_whitespace) && line.ends_with(':') {
            // "Summary:", "Latency distribution:", "Status code distribution:", ...
            section = line;
            continue;
        }
        match section {
            "Summary:" => {
                if let Some(v) = line.strip_prefix("Requests/sec:") {
                    rps = v.trim().parse::<f64>().ok();
                }
            }
            "Latency distribution:" => {
                // "99% in 0.0012 secs"; hey prints "0% in 0.0000 secs" for a percentile
                // it has no sample for.
                let words: Vec<&str> = line.split_whitespace().collect();
                if let ["99%", "in", value, "secs"] = words[..] {
                    report.p99 = value.parse::<f64>().ok().filter(|v| v.is_finite());
                }
            }
            "Status code distribution:" => {
                // "[200]	1000 responses"
                if let Some((code, rest)) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
                    let code = code.trim().parse::<u16>();
                    let n = rest.split_whitespace().next().map(str::parse::<u64>);
                    match (code, n) {
                        (Ok(code), Some(Ok(n))) => report.statuses.push((code, n)),
                        _ => bail!("unexpected line under `Status code distribution`: `{line}`"),
                    }
                }
            }
            "Error distribution:" => {
                // "[20]	Get "http://...": dial tcp ...: connection refused"
                if let Some((n, message)) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
                    let n = n.trim().parse::<u64>().unwrap_or(1);
                    report.errors.push((n, message.trim().to_owned()));
                }
            }
            _ => {}
        }
    }
    report.requests_per_sec = rps.context("no `Requests/sec:` line in hey's output")?;
    Ok(report)
}

/// The requests and p99 of a hey run in which every request was answered 200; an error
/// otherwise.
pub fn check_hey(report: &HeyReport) -> Result<(u64, f64)> {
    if let Some((n, message)) = report.errors.first() {
        let total: u64 = report.errors.iter().map(|(n, _)| n).sum();
        bail!("{total} requests failed, e.g. {n} x `{message}`");
    }
    let bad: Vec<String> =
        report.statuses.iter().filter(|(code, _)| *code != 200).map(|(code, n)| format!("{n} x {code}")).collect();
    ensure!(bad.is_empty(), "responses other than 200: {}", bad.join(", "));
    let requests: u64 = report.statuses.iter().map(|(_, n)| n).sum();
    ensure!(requests > 0, "no responses");
    let p99 = report.p99.context("no `99% in` line under `Latency distribution`")?;
    Ok((requests, p99))
}

/// What one h2load run reported (its text output).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct H2loadReport {
    /// Requests done / the measured duration (`finished in 3.00s, 5297.00 req/s, ...`).
    pub requests_per_sec: f64,
    /// `requests:` line: total, started, done, succeeded, failed, errored, timeout.
    pub total: u64,
    pub started: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// `status codes:` line: responses by class, 2xx to 5xx.
    pub status: [u64; 4],
    /// Bytes of DATA payload received (`traffic: ... (N) data`).
    pub data_bytes: u64,
}

/// `N word, N word, ...` (an h2load counter line after its label) as (word, N) pairs.
fn counted_words(list: &str) -> Result<Vec<(&str, u64)>> {
    list.split(',')
        .map(|part| {
            let mut words = part.split_whitespace();
            match (words.next().map(str::parse::<u64>), words.next(), words.next()) {
                (Some(Ok(n)), Some(word), None) => Ok((word, n)),
                _ => Err(anyhow!("`{}` is not `<count> <name>`", part.trim())),
            }
        })
        .collect()
}

/// Parses h2load's text output.
pub fn parse_h2load(out: &str) -> Result<H2loadReport> {
    let mut report = H2loadReport::default();
    let (mut rps, mut requests, mut status, mut data) = (None, false, false, None);
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 3.00s, 5297.00 req/s, 996.13KB/s"
            rps = rest.split(", ").find_map(|p| p.strip_suffix(" req/s")).and_then(|v| v.parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // "15891 total, 15923 started, 15891 done, 15891 succeeded, 0 failed, 0 errored, 0 timeout"
            for (word, n) in counted_words(rest).with_context(|| format!("in `{line}`"))? {
                let field = match word {
                    "total" => &mut report.total,
                    "started" => &mut report.started,
                    "done" => &mut report.done,
                    "succeeded" => &mut report.succeeded,
                    "failed" => &mut report.failed,
                    "errored" => &mut report.errored,
                    "timeout" => &mut report.timeout,
                    _ => continue,
                };
                *field = n;
            }
            requests = true;
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            // "15891 2xx, 0 3xx, 0 4xx, 0 5xx"
            for (word, n) in counted_words(rest).with_context(|| format!("in `{line}`"))? {
                if let Some(i) = ["2xx", "3xx", "4xx", "5xx"].iter().position(|c| *c == word) {
                    report.status[i] = n;
                }
            }
            status = true;
        } else if let Some(rest) = line.strip_prefix("traffic:") {
            // "2.92MB (3060117) total, 48.90KB (50073) headers (space savings 96.11%), 2.02MB (2113503) data"
            data = rest.split(", ").find_map(|p| {
                let (_, exact) = p.strip_suffix(" data")?.split_once('(')?;
                exact.strip_suffix(')')?.parse::<u64>().ok()
            });
        }
    }
    report.requests_per_sec = rps.context("no `finished in ..., N req/s` line in h2load's output")?;
    ensure!(requests, "no `requests:` line in h2load's output");
    ensure!(status, "no `status codes:` line in h2load's output");
    report.data_bytes = data.context("no `traffic: ... (N) data` in h2load's output")?;
    Ok(report)
}

/// A run whose numbers do not measure what they claim (some request failed or was not
/// answered as expected): reported and left out of the medians.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRun(pub String);

impl std::fmt::Display for InvalidRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidRun {}

/// The requests of an h2load run in which every request done was answered 2xx with its
/// whole body: DATA bytes received are `frame_len` per answered request (the echoed
/// gRPC frame, or nginx's file), plus at most `in_flight` responses cut by the end of a
/// timed run (a gRPC error answers 200 with no DATA, so an error shows as missing bytes).
pub fn check_h2load(report: &H2loadReport, frame_len: u64, in_flight: u64) -> std::result::Result<u64, InvalidRun> {
    let [ok, s3, s4, s5] = report.status;
    if report.done == 0 {
        return Err(InvalidRun(format!("no requests done ({} failed, {} errored)", report.failed, report.errored)));
    }
    if ok != report.done {
        return Err(InvalidRun(format!(
            "{ok} 2xx responses for {} requests done ({s3} 3xx, {s4} 4xx, {s5} 5xx; {} failed, {} errored, {} timeout)",
            report.done, report.failed, report.errored, report.timeout
        )));
    }
    let least = ok.saturating_mul(frame_len);
    let most = ok.saturating_add(in_flight).saturating_mul(frame_len);
    if !(least..=most).contains(&report.data_bytes) {
        return Err(InvalidRun(format!(
            "{} bytes of DATA received for {ok} echoed messages of {frame_len} bytes (expected {least}..={most}): \
             some calls were not echoed (a gRPC error status?)",
            report.data_bytes
        )));
    }
    Ok(ok)
}

/// Seconds per request of the 2xx lines of an h2load `--log-file` (tab-separated: start
/// time in microseconds, HTTP status or -1, microseconds to the end of the response).
pub fn parse_h2load_log(log: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [_, status, micros] = fields[..] else {
            bail!("h2load log line `{line}` has not 3 tab-separated fields");
        };
        let status: i32 = status.trim().parse().with_context(|| format!("status in h2load log line `{line}`"))?;
        let micros: u64 = micros.trim().parse().with_context(|| format!("duration in h2load log line `{line}`"))?;
        if (200..300).contains(&status) {
            #[expect(clippy::cast_precision_loss, reason = "microsecond durations are far below 2^52")]
            out.push(micros as f64 * 1e-6);
        }
    }
    Ok(out)
}

/// The nearest-rank `q` quantile (0 < q <= 1); NaN for no values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank between 1 and the number of values"
    )]
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// A protobuf message with one length-delimited field 1 (`bytes`/`string`) of `len`
/// bytes of lowercase letters: what a small request message of a real service looks like.
pub fn grpc_message(len: usize) -> Vec<u8> {
    let mut msg = vec![0x0a]; // field 1, wire type 2 (length-delimited)
    let mut n = len;
    loop {
        let low = u8::try_from(n & 0x7f).unwrap_or(0);
        n >>= 7;
        if n == 0 {
            msg.push(low);
            break;
        }
        msg.push(low | 0x80);
    }
    msg.extend((0..len).map(|i| b'a' + u8::try_from(i % 26).unwrap_or(0)));
    msg
}

/// A gRPC length-prefixed message: compressed flag 0, the length as 4 bytes big-endian,
/// the message.
pub fn grpc_frame(message: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(message.len()).context("a gRPC message is at most 4 GiB - 1")?;
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    Ok(frame)
}

/// Writes the request body h2load posts (`-d`): one gRPC frame holding a message of
/// [`grpc_message`]`(message_len)`. Returns the frame's length.
pub fn write_grpc_body(path: &Path, message_len: usize) -> Result<u64> {
    let frame = grpc_frame(&grpc_message(message_len))?;
    std::fs::write(path, &frame).with_context(|| format!("writing {}", path.display()))?;
    Ok(frame.len() as u64)
}

/// Jiffies of the aggregate `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

/// The `cpu ` line of the text of /proc/stat. Guest time is already counted in user
/// and nice, so it is not added again.
pub fn parse_proc_stat_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let &[user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(CpuTimes { busy, total: busy + idle + iowait })
}

/// One line saying why the agent stopped before `ready`, from its stderr: its last
/// `error: ...` line, else its last line, else its exit status.
pub fn agent_error_line(lines: &[String], status: &str) -> String {
    let last = |pred: &dyn Fn(&str) -> bool| lines.iter().rev().map(|l| l.trim()).find(|l| pred(l)).map(str::to_owned);
    last(&|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_owned())
        .or_else(|| last(&|l| !l.is_empty()))
        .unwrap_or_else(|| format!("exited with {status} before printing `ready`"))
}

/// The value of one counter of a `stats:` line.
pub fn stat_value(stats: &[(String, u64)], key: &str) -> Option<u64> {
    stats.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
}

/// A `Name:   1234 kB` field of the text of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split_once(':').is_some_and(|(name, _)| name == field))?;
    let mut words = line.split_once(':')?.1.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB") && words.next().is_none()).then_some(kib)
}

/// A markdown table, columns padded to their widest cell.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("|");
        for (cell, width) in cells.zip(&widths) {
            let pad = width.saturating_sub(cell.chars().count());
            let _ = write!(s, " {cell}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut s = line(&mut header.iter().copied());
    s.push('|');
    for width in &widths {
        let _ = write!(s, "{}|", "-".repeat(width + 2));
    }
    s.push('\n');
    for row in rows {
        let mut cells = row.iter().map(String::as_str).chain(std::iter::repeat("")).take(widths.len());
        s.push_str(&line(&mut cells));
    }
    s
}

/// A ratio to the baseline, e.g. `0.953 (-4.7%)`.
fn fmt_ratio(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.3} ({:+.1}%)", (ratio - 1.0) * 100.0)
    } else {
        "-".to_owned()
    }
}

/// Seconds per request as microseconds with two decimals (`-` when unknown).
fn fmt_us(seconds: f64, signed: bool) -> String {
    match (seconds.is_finite(), signed) {
        (false, _) => "-".to_owned(),
        (true, false) => format!("{:.2}", seconds * 1e6),
        (true, true) => format!("{:+.2}", seconds * 1e6),
    }
}

// ---------------------------------------------------------------------------------------
// Servers

/// A server the benchmark started; stopped when dropped.
struct Server {
    port: u16,
    _guard: ChildGuard,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The certificate and key files nginx serves TLS with.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// A self-signed P-256 certificate for 127.0.0.1, made with the openssl CLI in `dir`
/// (an EC key keeps the handshakes that open the load generators' connections cheap).
fn make_cert(dir: &Path) -> Result<TlsFiles> {
    let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert);
    let shown = util::display(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{shown}` (is openssl installed?)"))?;
    ensure!(
        out.status.success() && files.cert.is_file() && files.key.is_file(),
        "`{shown}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    Ok(files)
}

/// nginx serving `dir`/www on 127.0.0.1:`port`; over TLS 1.3 with `tls`. The session
/// cache and tickets are off: wrk and h2load keep their connections open, so each does one
/// full handshake and resumption would change nothing but the configuration to explain.
fn nginx_conf(dir: &Path, port: u16, tls: Option<&TlsFiles>) -> String {
    let d = dir.display();
    let (ssl, ssl_conf) = match tls {
        Some(files) => (
            " ssl",
            format!(
                "\x20       ssl_certificate {};\n\
                 \x20       ssl_certificate_key {};\n\
                 \x20       ssl_protocols TLSv1.3;\n\
                 \x20       ssl_session_cache off;\n\
                 \x20       ssl_session_tickets off;\n",
                files.cert.display(),
                files.key.display()
            ),
        ),
        None => ("", String::new()),
    };
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
         \x20       listen 127.0.0.1:{port}{ssl};\n\
         {ssl_conf}\
         \x20       location / {{ root {d}/www; }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// The size of the file nginx serves, /1k.bin.
const NGINX_FILE_BYTES: u64 = 1024;

/// Starts nginx serving /1k.bin (over TLS with `tls`) and checks one GET of it.
fn start_nginx(dir: &Path, tls: Option<&TlsFiles>) -> Result<Server> {
    let www = dir.join("www");
    std::fs::create_dir(&www).with_context(|| format!("creating {}", www.display()))?;
    let body: Vec<u8> = (0..NGINX_FILE_BYTES).map(|i| b'a' + u8::try_from(i % 26).unwrap_or(0)).collect();
    std::fs::write(www.join("1k.bin"), &body).context("writing 1k.bin")?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port, tls)).context("writing nginx.conf")?;
    let log_path = dir.join("nginx.stderr");
    let log = std::fs::File::create(&log_path).context("creating nginx.stderr")?;

    let mut cmd = Command::new("nginx");
    cmd.arg("-e").arg("stderr").arg("-p").arg(dir).arg("-c").arg(&conf);
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
            bail!("nginx exited ({status}) at startup: `{shown}`\n{}", log.trim_end());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        ensure!(Instant::now() < deadline, "nginx did not listen on {addr} within 10 s: `{shown}`");
        std::thread::sleep(Duration::from_millis(50));
    }
    match tls {
        None => check_served(addr, body.len()).context("nginx does not serve /1k.bin")?,
        Some(_) => check_served_tls(port, body.len()).context("nginx does not serve /1k.bin over TLS 1.3")?,
    }
    Ok(Server { port, _guard: guard })
}

/// One GET of `https://127.0.0.1:port/1k.bin` with curl (certificate not verified: it is
/// self-signed) must answer 200 with the whole file over TLS 1.3.
fn check_served_tls(port: u16, len: usize) -> Result<()> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sSk", "--tlsv1.3", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
        .arg(format!("https://127.0.0.1:{port}/1k.bin"));
    let shown = util::display(&cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not run `{shown}`"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    ensure!(text.trim() == format!("200 {len}"), "`{shown}` printed `{text}`, expected `200 {len}` (status, bytes)");
    Ok(())
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

/// The peers venv: `$GHOSTWIRE_PEERS_VENV`, else the venv `setup --peers` installed.
fn peers_venv(peers: Option<&crate::setup::Peers>) -> PathBuf {
    std::env::var_os("GHOSTWIRE_PEERS_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| peers.map(|p| p.venv.clone()))
        .unwrap_or_else(crate::setup::peers_venv)
}

/// The Python of the peers venv ([`peers_venv`]).
fn peers_python(peers: Option<&crate::setup::Peers>) -> PathBuf {
    peers_venv(peers).join("bin/python")
}

/// The arguments of `rotel-agent` as the benchmark's OTLP receiver: OTLP/gRPC on
/// 127.0.0.1:`grpc_port`, OTLP/HTTP on 127.0.0.1:`http_port` (its only other listener;
/// its default is `localhost:4318`, which could be taken or reach beyond loopback), the
/// blackhole exporter (every request decoded, the spans discarded), and its pid and log
/// files in `dir` (their defaults are fixed paths in /tmp that concurrent tests share).
pub fn rotel_args(grpc_port: u16, http_port: u16, dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["start", "--exporter", "blackhole"].map(Into::into).into();
    args.push("--otlp-grpc-endpoint".into());
    args.push(format!("127.0.0.1:{grpc_port}").into());
    args.push("--otlp-http-endpoint".into());
    args.push(format!("127.0.0.1:{http_port}").into());
    args.push("--pid-file".into());
    args.push(dir.join("rotel.pid").into());
    args.push("--log-file".into());
    args.push(dir.join("rotel.log").into());
    args
}

/// The OTLP receiver the full agent exports to: rotel with the blackhole exporter on
/// loopback, started once per benchmark; stopped when dropped.
struct Receiver {
    grpc_port: u16,
    guard: ChildGuard,
    shown: String,
    log_path: PathBuf,
}

impl Receiver {
    /// Starts `rotel` ([`rotel_args`]) and waits (at most 30 s) for its two ports;
    /// fails if it listens on anything but loopback.
    fn start(rotel: &Path, dir: &Path) -> Result<Self> {
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        ensure!(grpc_port != http_port, "two free ports were the same; run the benchmark again");
        let log_path = dir.join("rotel.stderr");
        let log = std::fs::File::create(&log_path).context("creating rotel.stderr")?;
        let mut cmd = Command::new(rotel);
        cmd.args(rotel_args(grpc_port, http_port, dir));
        let shown = util::display(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("rotel.stderr")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start `{shown}` (run `cargo xtask setup --peers`)"))?;
        let guard = ChildGuard::new("rotel", child, libc::SIGTERM, Duration::from_secs(5));
        let mut receiver = Receiver { grpc_port, guard, shown, log_path };
        // Both listeners up before their addresses are checked.
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [grpc_port, http_port] {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                receiver.check_running()?;
                ensure!(Instant::now() < deadline, "rotel did not listen on {addr} within 30 s: `{}`", receiver.shown);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let listening = listeners(receiver.pid());
        let outside: Vec<&SocketAddr> = listening.iter().filter(|a| !a.ip().to_canonical().is_loopback()).collect();
        ensure!(
            outside.is_empty(),
            "rotel listens beyond loopback on {outside:?}: the benchmark sends traffic to loopback only (`{}`)",
            receiver.shown
        );
        Ok(receiver)
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// What the agent's `--otlp-endpoint` is.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// An error, with rotel's output, if it has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_wait()? {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            bail!("rotel exited ({status}): `{}`\n{}", self.shown, log.trim_end());
        }
        Ok(())
    }
}

/// The TCP addresses process `pid` listens on: its socket inodes (/proc/PID/fd) looked
/// up among the LISTEN sockets of /proc/net/tcp and tcp6.
fn listeners(pid: u32) -> Vec<SocketAddr> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|path| tcp_listeners(&std::fs::read_to_string(path).unwrap_or_default()))
        .filter(|(_, inode)| inodes.contains(inode))
        .map(|(addr, _)| addr)
        .collect()
}

/// The LISTEN sockets (state 0A) of the text of /proc/net/tcp or tcp6: (local address,
/// inode). Addresses are hex in the kernel's byte order (little-endian 32-bit words).
pub fn tcp_listeners(table: &str) -> Vec<(SocketAddr, u64)> {
    let parse_addr = |s: &str| -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let words: Vec<u32> = (0..ip.len() / 8)
            .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
            .collect::<Option<_>>()?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let ip: std::net::IpAddr = match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok()?.into(),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok()?.into(),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            Some((parse_addr(fields.get(1)?)?, fields.get(9)?.parse().ok()?))
        })
        .collect()
}

/// rotel-agent: the setup's, else the one in the peers venv ([`peers_venv`]).
fn rotel_binary(peers: Option<&crate::setup::Peers>) -> Result<PathBuf> {
    let venv = peers_venv(peers);
    crate::setup::find_rotel(&venv).or_else(|| peers.map(|p| p.rotel.clone()).filter(|p| p.is_file())).with_context(
        || {
            format!(
                "rotel-agent not found in {}: run `cargo xtask setup --peers`, or use --export jsonl",
                venv.display()
            )
        },
    )
}

/// Starts `tests/peers/grpc_server.py` on a free port and waits (at most 60 s) for its
/// `ready` line; then one echo call through h2load must succeed.
fn start_grpc_server(dir: &Path, python: &Path, body: &Path, frame_len: u64) -> Result<Server> {
    let script = util::repo_root().join("tests/peers/grpc_server.py");
    ensure!(script.is_file(), "{} does not exist: the gRPC benchmark needs it", script.display());
    let port = free_port()?;
    let log_path = dir.join("grpc_server.stderr");
    let log = std::fs::File::create(&log_path).context("creating grpc_server.stderr")?;
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg("--port").arg(port.to_string()).env("PYTHONUNBUFFERED", "1");
    let shown = util::display(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("grpc server stdout")?;
    let mut guard = ChildGuard::new("grpc_server.py", child, libc::SIGTERM, Duration::from_secs(5));
    // Drained for as long as the server runs, so it never blocks on a full pipe.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with("ready") => break,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            // stdout closed: the server is exiting (try_wait below sees it).
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
        }
        if let Some(status) = guard.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the gRPC server exited ({status}) at startup: `{shown}`\n{}", log.trim_end());
        }
        ensure!(Instant::now() < deadline, "the gRPC server did not print `ready` within 60 s: `{shown}`");
    }
    let check = H2load {
        port,
        threads: 1,
        clients: 1,
        streams: 1,
        rps: None,
        request: H2Request::Grpc { body, frame_len },
        log: None,
    };
    check.run(Bound::Requests(4)).context("the gRPC server does not echo /demo.Echo/Unary")?;
    Ok(Server { port, _guard: guard })
}

// ---------------------------------------------------------------------------------------
// Load generators

/// What one load run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    pub requests_per_sec: f64,
    /// 99th percentile latency, seconds.
    pub p99: f64,
    /// Requests completed.
    pub requests: u64,
    /// Busy CPU time of the whole node (every core) over exactly the run, seconds.
    pub node_cpu_seconds: f64,
}

impl Load {
    #[expect(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
    fn per_request(&self, seconds: f64) -> f64 {
        seconds / self.requests.max(1) as f64
    }
}

fn node_cpu() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_proc_stat_cpu(&stat).context("no parsable `cpu` line in /proc/stat")
}

/// What a load generator printed and the node's busy CPU seconds over its run.
struct ToolRun {
    shown: String,
    stdout: String,
    node_cpu_seconds: f64,
}

/// Runs a load generator for about `seconds` (killed after `seconds` + 30 s), reading
/// its pipes on threads so a chatty tool cannot block, and samples /proc/stat just
/// before it starts and just after it exits.
fn run_tool(cmd: &mut Command, name: &str, seconds: u64) -> Result<ToolRun> {
    let shown = util::display(cmd);
    let before = node_cpu()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("load generator stdout")?;
    let stderr = child.stderr.take().context("load generator stderr")?;
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
    let mut guard = ChildGuard::new(name, child, libc::SIGKILL, Duration::from_secs(5));
    let status = loop {
        if let Some(status) = guard.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
        if started.elapsed() > limit {
            guard.stop()?;
            bail!("`{shown}` did not finish within {}", util::fmt_duration(limit));
        }
    };
    let after = node_cpu()?;
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    ensure!(status.success(), "`{shown}` failed ({status}):\n{out}{err}");
    let ticks = after.busy.saturating_sub(before.busy);
    #[expect(clippy::cast_precision_loss, reason = "tick counts are far below 2^52")]
    let node_cpu_seconds = ticks as f64 / clock_ticks_per_second()?;
    Ok(ToolRun { shown, stdout: out, node_cpu_seconds })
}

/// The file nginx serves, over `scheme` (`http` or `https`).
fn nginx_url(scheme: &str, port: u16) -> String {
    format!("{scheme}://127.0.0.1:{port}/1k.bin")
}

fn run_wrk(threads: u32, connections: u32, url: &str, seconds: u64) -> Result<Load> {
    let mut cmd = Command::new("wrk");
    cmd.arg("-t")
        .arg(threads.to_string())
        .arg("-c")
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .arg("--latency")
        .arg(url);
    let run = run_tool(&mut cmd, "wrk", seconds)?;
    let shown = &run.shown;
    let report = parse_wrk(&run.stdout).with_context(|| format!("parsing the output of `{shown}`:\n{}", run.stdout))?;
    check_wrk(&report).with_context(|| format!("`{shown}` did not measure nginx serving the file"))?;
    Ok(Load {
        requests_per_sec: report.requests_per_sec,
        p99: report.p99,
        requests: report.requests,
        node_cpu_seconds: run.node_cpu_seconds,
    })
}

fn run_hey(connections: u32, qps_per_connection: u32, url: &str, seconds: u64) -> Result<Load> {
    let mut cmd = Command::new("hey");
    cmd.arg("-z")
        .arg(format!("{seconds}s"))
        .arg("-c")
        .arg(connections.to_string())
        .arg("-q")
        .arg(qps_per_connection.to_string())
        .arg(url);
    let run = run_tool(&mut cmd, "hey", seconds)?;
    let shown = &run.shown;
    let report = parse_hey(&run.stdout).with_context(|| format!("parsing the output of `{shown}`:\n{}", run.stdout))?;
    let (requests, p99) =
        check_hey(&report).with_context(|| format!("`{shown}` did not measure nginx serving the file"))?;
    Ok(Load { requests_per_sec: report.requests_per_sec, p99, requests, node_cpu_seconds: run.node_cpu_seconds })
}

/// How long an h2load run lasts.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// `-D`: timed; requests in flight at the end are not counted.
    Seconds(u64),
    /// `-n`: a number of requests.
    Requests(u64),
}

/// What each request of an h2load load is.
#[derive(Clone, Copy)]
enum H2Request<'a> {
    /// A unary gRPC call over h2c: POST /demo.Echo/Unary with `body`, one gRPC frame
    /// ([`write_grpc_body`]) of `frame_len` bytes, which the server echoes.
    Grpc { body: &'a Path, frame_len: u64 },
    /// GET /1k.bin over TLS with HTTP/1.1 (`--h1`): nginx's 1 KiB file. h2load links
    /// OpenSSL, as wrk does, so both ends of every request are decrypted; hey, with Go's
    /// crypto/tls, would leave its end dark, and under the uprobes' added latency its
    /// transport dials (and drops) extra connections, each a full handshake.
    HttpsGet,
}

/// An h2load load: unary gRPC calls, or HTTPS GETs of nginx's file.
struct H2load<'a> {
    port: u16,
    threads: u32,
    clients: u32,
    streams: u32,
    /// Requests per second of each client (`--rps`); `None`: as fast as answered.
    rps: Option<u32>,
    request: H2Request<'a>,
    /// `--log-file` (per-request durations, for the p99).
    log: Option<&'a Path>,
}

impl H2load<'_> {
    fn command(&self, bound: Bound) -> Command {
        let mut cmd = Command::new("h2load");
        // h2load refuses more threads than clients.
        cmd.arg("-t").arg(self.threads.min(self.clients).max(1).to_string());
        cmd.arg("-c").arg(self.clients.to_string()).arg("-m").arg(self.streams.to_string());
        match bound {
            Bound::Seconds(s) => cmd.arg("-D").arg(s.to_string()),
            Bound::Requests(n) => cmd.arg("-n").arg(n.to_string()),
        };
        if let Some(rps) = self.rps {
            cmd.arg("--rps").arg(rps.to_string());
        }
        if let H2Request::Grpc { body, .. } = self.request {
            cmd.arg("-d").arg(body);
            cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
        } else {
            cmd.arg("--h1");
        }
        if let Some(log) = self.log {
            cmd.arg(format!("--log-file={}", log.display()));
        }
        cmd.arg(match self.request {
            H2Request::Grpc { .. } => format!("http://127.0.0.1:{}/demo.Echo/Unary", self.port),
            H2Request::HttpsGet => nginx_url("https", self.port),
        });
        cmd
    }

    /// Runs h2load. An [`InvalidRun`] error when some request failed or was not echoed.
    fn run(&self, bound: Bound) -> Result<Load> {
        let mut cmd = self.command(bound);
        let seconds = match bound {
            Bound::Seconds(s) => s,
            Bound::Requests(_) => 10,
        };
        if let Some(log) = self.log {
            // h2load appends to its log file.
            let _ = std::fs::remove_file(log);
        }
        let run = run_tool(&mut cmd, "h2load", seconds)?;
        let shown = &run.shown;
        let report =
            parse_h2load(&run.stdout).with_context(|| format!("parsing the output of `{shown}`:\n{}", run.stdout))?;
        let in_flight = u64::from(self.clients) * u64::from(self.streams);
        let bytes_per_response = match self.request {
            H2Request::Grpc { frame_len, .. } => frame_len,
            H2Request::HttpsGet => NGINX_FILE_BYTES,
        };
        let requests = check_h2load(&report, bytes_per_response, in_flight)
            .map_err(|e| anyhow::Error::new(e).context(format!("invalid run: `{shown}`")))?;
        let p99 = match self.log {
            Some(log) => {
                let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
                quantile(&parse_h2load_log(&text)?, 0.99)
            }
            None => f64::NAN,
        };
        Ok(Load { requests_per_sec: report.requests_per_sec, p99, requests, node_cpu_seconds: run.node_cpu_seconds })
    }
}

/// What the load runs against.
enum Target {
    /// nginx serving /1k.bin.
    Http1 { port: u16 },
    /// nginx serving /1k.bin over TLS 1.3; the fixed-rate view loads it with h2load
    /// (HTTP/1.1), which logs per-request times to `log`.
    Https { port: u16, log: PathBuf },
    /// The gRPC server; h2load posts `body`, one frame of `frame_len` bytes, and logs
    /// per-request times to `log`.
    Grpc { port: u16, body: PathBuf, frame_len: u64, log: PathBuf },
}

impl Target {
    fn port(&self) -> u16 {
        match self {
            Target::Http1 { port } | Target::Https { port, .. } | Target::Grpc { port, .. } => *port,
        }
    }

    /// The URL wrk and hey load (nginx targets only).
    fn nginx_url(&self) -> Option<String> {
        match self {
            Target::Http1 { port } => Some(nginx_url("http", *port)),
            Target::Https { port, .. } => Some(nginx_url("https", *port)),
            Target::Grpc { .. } => None,
        }
    }

    /// The h2load load of a view: both views for gRPC, the fixed rate for HTTPS.
    fn h2load<'a>(&'a self, args: &OverheadArgs, view: View) -> Option<H2load<'a>> {
        let (port, request, log, streams) = match self {
            Target::Grpc { port, body, frame_len, log } => {
                (*port, H2Request::Grpc { body, frame_len: *frame_len }, log, args.streams)
            }
            Target::Https { port, log } if view == View::Fixed => (*port, H2Request::HttpsGet, log, 1),
            _ => return None,
        };
        let (clients, rps) = match view {
            View::Saturated => (args.load.connections, None),
            View::Fixed => (args.rate_connections, Some(args.rate_qps())),
        };
        Some(H2load { port, threads: args.load.threads, clients, streams, rps, request, log: Some(log) })
    }
}

fn run_view(args: &OverheadArgs, view: View, target: &Target, seconds: u64) -> Result<Load> {
    if let Some(h2load) = target.h2load(args, view) {
        return h2load.run(Bound::Seconds(seconds));
    }
    let url = target.nginx_url().context("no URL for wrk or hey to load")?;
    match view {
        View::Saturated => run_wrk(args.load.threads, args.load.connections, &url, seconds),
        View::Fixed => run_hey(args.rate_connections, args.rate_qps(), &url, seconds),
    }
}

// ---------------------------------------------------------------------------------------
// The agent

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

/// The last 20 of the agent's stderr lines, after its panic message when it panicked
/// earlier (a backtrace pushes the message out of the last lines).
fn tail(lines: &[String]) -> String {
    let from = lines.len().saturating_sub(20);
    let last = lines[from..].join("\n");
    match lines[..from].iter().position(|l| l.contains("panicked at")) {
        Some(i) => format!("{}\n...\n{last}", lines[i..from.min(i + 2)].join("\n")),
        None => last,
    }
}

/// Moves the lines the stderr reader still has into `lines`, waiting at most `timeout`
/// for it to reach the end of the pipe.
fn drain_lines(rx: &mpsc::Receiver<String>, lines: &mut Vec<String>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => return,
        }
    }
}

/// An agent process that printed `ready`; stopped with SIGINT when dropped.
struct Agent {
    guard: ChildGuard,
    shown: String,
    lines: Vec<String>,
    rx: mpsc::Receiver<String>,
}

/// The agent exited before printing `ready`.
struct NotReady {
    shown: String,
    status: ExitStatus,
    lines: Vec<String>,
}

impl NotReady {
    fn one_line(&self) -> String {
        agent_error_line(&self.lines, &self.status.to_string())
    }

    fn into_error(self) -> anyhow::Error {
        anyhow!("the agent exited ({}) before printing `ready`: `{}`\n{}", self.status, self.shown, tail(&self.lines))
    }
}

/// Starts the agent and waits (at most 60 s) for its `ready` line on stderr.
fn start_agent(cmd: &mut Command) -> Result<std::result::Result<Agent, NotReady>> {
    let shown = util::display(cmd);
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
    std::thread::spawn(move || {
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
                    return Ok(Ok(Agent { guard, shown, lines, rx }));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.stop()?;
                return Ok(Err(NotReady { shown, status, lines }));
            }
        }
        if let Some(status) = guard.try_wait()? {
            drain_lines(&rx, &mut lines, Duration::from_secs(2));
            return Ok(Err(NotReady { shown, status, lines }));
        }
        ensure!(Instant::now() < deadline, "the agent did not print `ready` within 60 s: `{shown}`\n{}", tail(&lines));
    }
}

impl Agent {
    /// The agent's CPU time so far (utime + stime), seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.guard.pid())
    }

    /// Stops the agent with SIGINT; its stderr lines. An error unless it exits 0.
    fn finish(self) -> Result<Vec<String>> {
        let Agent { mut guard, shown, mut lines, rx } = self;
        let status = guard.stop()?;
        drain_lines(&rx, &mut lines, Duration::from_secs(5));
        ensure!(status.success(), "the agent exited with {status} after SIGINT: `{shown}`\n{}", tail(&lines));
        Ok(lines)
    }
}

/// The agent binary: `--agent-bin`, else target/release/ghostwire.
/// The standard OTLP variables are removed: the agent exports where its flags say, not
/// also to whatever the environment names.
fn agent_command(agent_bin: Option<&Path>) -> Command {
    let mut cmd = Command::new(agent_bin.map_or_else(util::agent_bin, Path::to_path_buf));
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT").env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    cmd
}

/// The export counters of one run's final `stats:` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounters {
    /// `drop.export_queue_full`: spans evicted because the export queue was full.
    pub queue_full: u64,
    /// `drop.export_failed`: spans given up on after failed exports (or at shutdown).
    pub failed: u64,
    /// `export.errors`: failed export attempts (each retry counts).
    pub errors: u64,
}

impl ExportCounters {
    pub fn from_stats(stats: &[(String, u64)]) -> Self {
        let value = |key: &str| stat_value(stats, key).unwrap_or(0);
        ExportCounters {
            queue_full: value("drop.export_queue_full"),
            failed: value("drop.export_failed"),
            errors: value("export.errors"),
        }
    }

    /// Spans lost on the way out.
    pub fn dropped(self) -> u64 {
        self.queue_full + self.failed
    }
}

/// What the agent did during one load run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRun {
    /// utime + stime over exactly the load run, seconds.
    pub cpu_seconds: f64,
    pub stats_line: Option<String>,
    /// Events lost ([`events_dropped`] of the `stats:` line).
    pub dropped: u64,
    /// `events.discarded` (capture-only).
    pub discarded: Option<u64>,
    /// Spans in the JSONL output and lines of it that are not JSON (full agent,
    /// `--export jsonl`).
    pub spans: Option<(u64, u64)>,
    /// `spans.built` of the `stats:` line.
    pub spans_built: Option<u64>,
    /// `spans.exported` of the `stats:` line: spans the exporter handed over (to rotel,
    /// or to the file).
    pub spans_exported: Option<u64>,
    pub export: ExportCounters,
    /// The OTLP receiver's utime + stime over exactly the load run, seconds (`None`
    /// when the run exported to no receiver).
    pub receiver_cpu_seconds: Option<f64>,
    /// The agent's VmRSS at the end of the load run and its VmHWM (peak RSS), KiB.
    pub rss_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
}

/// Starts the agent (which must reach `ready`), runs `load`, measures the agent's CPU
/// time (and the receiver's, the process `receiver`) over exactly the load and the
/// agent's memory at its end, stops it with SIGINT and reads its final counters.
fn with_agent(
    cmd: &mut Command,
    receiver: Option<u32>,
    load: impl FnOnce() -> Result<Load>,
) -> Result<(Load, AgentRun)> {
    let agent = start_agent(cmd)?.map_err(NotReady::into_error)?;
    let cpu_before = agent.cpu_seconds()?;
    let receiver_before = receiver.map(cpu_seconds).transpose()?;
    let result = load()?;
    let cpu_after = agent.cpu_seconds()?;
    let receiver_after = receiver.map(cpu_seconds).transpose()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.guard.pid())).unwrap_or_default();
    let lines = agent.finish()?;
    let stats_line = lines.iter().rev().find(|l| l.starts_with("stats:")).cloned();
    let stats = stats_line.as_deref().and_then(parse_stats_line).unwrap_or_default();
    Ok((
        result,
        AgentRun {
            cpu_seconds: cpu_after - cpu_before,
            dropped: events_dropped(&stats),
            discarded: stat_value(&stats, "events.discarded"),
            spans_built: stat_value(&stats, "spans.built"),
            spans_exported: stat_value(&stats, "spans.exported"),
            export: ExportCounters::from_stats(&stats),
            receiver_cpu_seconds: receiver_before.zip(receiver_after).map(|(before, after)| after - before),
            rss_kib: status_kib(&status, "VmRSS"),
            hwm_kib: status_kib(&status, "VmHWM"),
            stats_line,
            spans: None,
        },
    ))
}

// ---------------------------------------------------------------------------------------
// bench overhead

/// One load run of one configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    pub load: Load,
    /// `None` for the baseline.
    pub agent: Option<AgentRun>,
}

/// One view of one round: each configuration's run, the baseline first.
#[derive(Debug, Clone)]
pub struct ViewRound {
    pub view: View,
    pub runs: Vec<(Config, Run)>,
}

fn view_command(args: &OverheadArgs, view: View, target: &Target) -> String {
    let qps = args.rate_qps();
    let at_most = u64::from(args.rate_connections) * u64::from(qps);
    if let Some(h2load) = target.h2load(args, view) {
        let shown = util::display(&h2load.command(Bound::Seconds(args.load.duration)));
        return match view {
            View::Saturated => shown,
            View::Fixed => format!("{shown} (at most {at_most} req/s)"),
        };
    }
    let url = target.nginx_url().unwrap_or_default();
    match view {
        View::Saturated => format!(
            "wrk -t {} -c {} -d {}s --latency {url}",
            args.load.threads, args.load.connections, args.load.duration
        ),
        View::Fixed => format!(
            "hey -z {}s -c {} -q {qps} {url} (at most {at_most} req/s)",
            args.load.duration, args.rate_connections,
        ),
    }
}

/// Starts what `--proto` serves; the server (stopped when dropped) and how to load it.
fn start_target(args: &OverheadArgs, dir: &Path, peers: Option<&crate::setup::Peers>) -> Result<(Server, Target)> {
    match args.proto {
        Proto::Http1 => {
            let server = start_nginx(dir, None)?;
            let port = server.port;
            println!("==> nginx on 127.0.0.1:{port}");
            Ok((server, Target::Http1 { port }))
        }
        Proto::Https => {
            let tls = make_cert(dir)?;
            let server = start_nginx(dir, Some(&tls))?;
            let port = server.port;
            println!(
                "==> nginx on 127.0.0.1:{port} over TLS 1.3 (self-signed P-256 certificate, session cache and \
                 tickets off, keep-alive)"
            );
            Ok((server, Target::Https { port, log: dir.join("h2load.log") }))
        }
        Proto::Grpc => {
            let body = dir.join("grpc-request.bin");
            let message_len = usize::try_from(args.message_bytes).context("--message-bytes")?;
            let frame_len = write_grpc_body(&body, message_len)?;
            let python = peers_python(peers);
            let server = start_grpc_server(dir, &python, &body, frame_len)?;
            let port = server.port;
            println!(
                "==> gRPC server tests/peers/grpc_server.py ({}) on 127.0.0.1:{port}, unary /demo.Echo/Unary, \
                 request: one {frame_len}-byte gRPC frame",
                python.display()
            );
            Ok((server, Target::Grpc { port, body, frame_len, log: dir.join("h2load.log") }))
        }
    }
}

/// The configurations to run, in [`Config::ALL`] order; an error without the baseline.
fn overhead_configs(args: &OverheadArgs) -> Result<Vec<Config>> {
    if args.no_agent {
        return Ok(vec![Config::Baseline]);
    }
    ensure!(
        args.configs.contains(&Config::Baseline),
        "--configs: include `baseline`: every other configuration is compared with the baseline of its round"
    );
    Ok(Config::ALL.into_iter().filter(|c| args.configs.contains(c)).collect())
}

fn overhead(args: &OverheadArgs) -> Result<()> {
    let real_agent = !args.no_agent && args.agent_bin.is_none();
    if real_agent && !util::is_root() {
        bail!(crate::NEEDS_ROOT);
    }
    let views = dedup(&args.views);
    ensure!(!views.is_empty(), "--views: name at least one of saturated, fixed");
    let configs = overhead_configs(args)?;
    let peers = crate::setup::setup(true)?;
    if real_agent {
        crate::build_agent()?;
    }
    let dir = TempDir::new("ghostwire-bench")?;
    let (_server, target) = start_target(args, dir.path(), peers.as_ref())?;
    let port = target.port();
    let mut receiver = match (args.export, configs.iter().any(|c| c.exports())) {
        (Export::Otlp, true) => {
            let rotel = rotel_binary(peers.as_ref())?;
            let receiver = Receiver::start(&rotel, dir.path())?;
            println!(
                "==> OTLP receiver: rotel with the blackhole exporter ({}), OTLP/gRPC on {}",
                rotel.display(),
                receiver.endpoint()
            );
            Some(receiver)
        }
        _ => None,
    };
    for &view in &views {
        println!("    {} load: {}", view.name(), view_command(args, view, &target));
    }
    let names: Vec<&str> = configs.iter().map(|c| c.name()).collect();
    println!("    each round, for each view: {}", names.join(", then "));
    args.load.warm_up(|seconds| run_view(args, View::Saturated, &target, seconds))?;

    let mut rounds: Vec<ViewRound> = Vec::new();
    // Runs left out of the medians (a request not answered 2xx or not echoed, TLS not
    // decrypted, no span exported).
    let mut invalid: Vec<String> = Vec::new();
    for r in 1..=args.load.rounds {
        for &view in &views {
            let mut runs: Vec<(Config, Run)> = Vec::new();
            for &config in &configs {
                let label = format!("round {r}/{} {} {}:", args.load.rounds, view.name(), config.name());
                let outcome = overhead_run_checked(args, view, config, &target, receiver.as_ref(), dir.path(), r);
                if let Some(receiver) = receiver.as_mut() {
                    receiver.check_running()?;
                }
                let run = match outcome {
                    Ok(run) => run,
                    Err(e) if e.downcast_ref::<InvalidRun>().is_some() => {
                        let why = e.downcast_ref::<InvalidRun>().map(ToString::to_string).unwrap_or_default();
                        println!("{label:<32} INVALID, not in the medians: {e:#}");
                        invalid.push(format!("{label} {why}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let baseline = runs.iter().find(|(c, _)| *c == Config::Baseline).map(|(_, b)| b);
                println!("{label:<32} {}", run_line(&run, baseline, args.proto));
                if let Some(agent) = &run.agent {
                    match &agent.stats_line {
                        Some(line) => println!("    agent {line}"),
                        None => println!("    agent printed no `stats:` line"),
                    }
                    if let Some((spans, bad_lines)) = agent.spans {
                        if bad_lines > 0 {
                            eprintln!("warning: {bad_lines} lines of the spans file are not JSON");
                        }
                        if agent.spans_exported.is_some_and(|exported| exported != spans) {
                            eprintln!(
                                "warning: the spans file holds {spans} spans, the agent counted {} exported",
                                agent.spans_exported.unwrap_or(0)
                            );
                        }
                    }
                }
                runs.push((config, run));
            }
            rounds.push(ViewRound { view, runs });
        }
    }
    println!("\n{}, medians over {} rounds:", proto_title(args.proto, args.export), args.load.rounds);
    for &view in &views {
        println!("    {}: {}", view.name(), view_command(args, view, &target));
    }
    println!();
    print!("{}", overhead_table(&rounds));
    println!("\n{}", table_notes(args.export));
    if args.proto == Proto::Grpc {
        println!(
            "gRPC: p99 from h2load's per-request log. The agent traces port {port}, which both h2load's and the \
             server's sockets use (2 spans per request); spans.built in the per-run lines: 0 means the agent \
             built no span from HTTP/2."
        );
    }
    if args.proto == Proto::Https {
        println!(
            "HTTPS: nginx over TLS 1.3 on port {port}; the agent decrypts through its OpenSSL uprobes. \
             wrk links OpenSSL (libssl.so.3), so both its client side and nginx's server side are decrypted \
             (2 spans per request); so does h2load (--h1), the fixed view's load, with p99 from its \
             per-request log. \
             A run in which the agent built no span (full agent) or the kernel bound no TLS session to its \
             socket (capture-only: kernel.tls_ciphertext = 0) did not decrypt TLS: it is reported as invalid; \
             so is a run with other processes' uprobes attached (bpftool), whose traps would slow nginx and wrk."
        );
    }
    if !invalid.is_empty() {
        println!("\n{} invalid runs, left out of the medians:", invalid.len());
        for line in &invalid {
            println!("    {line}");
        }
    }
    Ok(())
}

/// The heading of the table: what was served, loaded and exported.
fn proto_title(proto: Proto, export: Export) -> String {
    let served = match proto {
        Proto::Http1 => "HTTP/1.1: nginx serving 1 KiB over keep-alive",
        Proto::Https => "HTTPS: nginx serving 1 KiB over TLS 1.3, keep-alive",
        Proto::Grpc => "gRPC: the grpcio server answering unary /demo.Echo/Unary over h2c",
    };
    let exported = match export {
        Export::Otlp => "the full agent exporting OTLP/gRPC to rotel (blackhole exporter)",
        Export::Jsonl => "the full agent writing JSONL",
    };
    format!("{served}; {exported}")
}

/// What the columns of [`overhead_table`] mean.
fn table_notes(export: Export) -> String {
    let receiver = match export {
        Export::Otlp => {
            "receiver CPU: rotel's utime + stime over the same window (decoding the OTLP requests, then \
             discarding the spans), reported apart and not added to the agent's."
        }
        Export::Jsonl => "receiver CPU: none (--export jsonl writes a file).",
    };
    format!(
        "Each figure is the median over the rounds of a comparison with the baseline run of the same round and \
         view: throughput and p99 as ratios (the baseline row gives req/s and ms). CPU per request: CPU time over \
         exactly the load run / requests completed. agent CPU: the agent's utime + stime. {receiver} node CPU: \
         busy time of every core from /proc/stat (the baseline row: all of it per request; the others: added \
         over the baseline), so it includes the kernel programs, the agent, the receiver, the server and the \
         load generator. RSS: the agent's VmRSS at the end of the load run / its VmHWM (peak). spans/req: the \
         agent's spans.exported per request. dropped: events and spans lost over all rounds (every drop.* \
         counter and the kernel's ring_full/read_failed; `export`: drop.export_queue_full + \
         drop.export_failed). A full-agent run that exported no span is invalid."
    )
}

/// [`overhead_run`]; for HTTPS, a run with other processes' uprobes attached just before
/// or after it (when this benchmark had none) is an [`InvalidRun`]: a uprobe on libssl
/// fires in nginx and wrk too, baseline included.
fn overhead_run_checked(
    args: &OverheadArgs,
    view: View,
    config: Config,
    target: &Target,
    receiver: Option<&Receiver>,
    dir: &Path,
    round: u32,
) -> Result<Run> {
    if args.proto != Proto::Https {
        return overhead_run(args, view, config, target, receiver, dir, round);
    }
    let before = wait_no_uprobes(args.quiet_wait);
    let run = overhead_run(args, view, config, target, receiver, dir, round)?;
    match foreign_uprobes(before, uprobe_links_after()) {
        Some(why) => Err(anyhow::Error::new(InvalidRun(why)).context("invalid run")),
        None => Ok(run),
    }
}

fn overhead_run(
    args: &OverheadArgs,
    view: View,
    config: Config,
    target: &Target,
    receiver: Option<&Receiver>,
    dir: &Path,
    round: u32,
) -> Result<Run> {
    let port = target.port();
    let load = || run_view(args, view, target, args.load.duration);
    let mut cmd = agent_command(args.agent_bin.as_deref());
    cmd.arg("--port").arg(port.to_string()).args(["--stats-interval", "0"]);
    match config {
        Config::Baseline => Ok(Run { load: load()?, agent: None }),
        Config::CaptureOnly => {
            cmd.arg("--capture-only").args(&args.agent_args);
            let (load, agent) = with_agent(&mut cmd, None, load)?;
            if args.proto == Proto::Https {
                check_decrypted(config, &agent)?;
            }
            Ok(Run { load, agent: Some(agent) })
        }
        Config::Full | Config::FullNice => {
            if config == Config::FullNice {
                cmd.arg("--nice").arg(FULL_NICE.to_string());
            }
            let spans_path = dir.join(format!("spans-{}-{round}.jsonl", view.name()));
            let receiver_pid = match (args.export, receiver) {
                (Export::Otlp, Some(receiver)) => {
                    cmd.arg("--otlp-endpoint").arg(receiver.endpoint());
                    Some(receiver.pid())
                }
                (Export::Otlp, None) => bail!("no OTLP receiver was started for the full agent"),
                (Export::Jsonl, _) => {
                    cmd.arg("--output").arg(format!("jsonl:{}", spans_path.display()));
                    None
                }
            };
            cmd.args(&args.agent_args);
            let (load, mut agent) = with_agent(&mut cmd, receiver_pid, load)?;
            if args.export == Export::Jsonl {
                if let Ok(file) = std::fs::File::open(&spans_path) {
                    agent.spans = Some(count_spans_in(BufReader::new(file)));
                }
                let _ = std::fs::remove_file(&spans_path);
            }
            if args.proto == Proto::Https {
                check_decrypted(config, &agent)?;
            }
            if let Some(why) = export_invalid(&agent, args.export) {
                return Err(anyhow::Error::new(InvalidRun(why)).context("invalid run"));
            }
            Ok(Run { load, agent: Some(agent) })
        }
    }
}

/// Why a full-agent run does not measure exporting: it exported no span (`spans.exported`
/// 0 or absent), so the cost of encoding and sending was never paid.
pub fn export_invalid(agent: &AgentRun, export: Export) -> Option<String> {
    let to = match export {
        Export::Otlp => "to rotel",
        Export::Jsonl => "to the JSONL file",
    };
    if agent.stats_line.is_none() {
        return Some(format!("the agent printed no `stats:` line: whether it exported spans {to} is unknown"));
    }
    let e = agent.export;
    (agent.spans_exported.unwrap_or(0) == 0).then(|| {
        format!(
            "the agent exported no span {to} (spans.built={} export.errors={} drop.export_failed={} \
             drop.export_queue_full={})",
            agent.spans_built.unwrap_or(0),
            e.errors,
            e.failed,
            e.queue_full
        )
    })
}

/// An [`InvalidRun`] error when an HTTPS run of the agent did not decrypt TLS: the full
/// agent built no span, or (capture-only, which builds none) the kernel bound no TLS
/// session to its socket (`kernel.tls_ciphertext`: socket transfers skipped because
/// their plaintext comes from the uprobes; 0 means the uprobes never ran in an SSL call
/// on a socket). Such a run would be fast for the wrong reason.
pub fn check_decrypted(config: Config, agent: &AgentRun) -> Result<()> {
    let stats = agent.stats_line.as_deref().and_then(parse_stats_line).unwrap_or_default();
    let value = |key: &str| stat_value(&stats, key).unwrap_or(0);
    let tls = || {
        format!(
            "tls.libraries_attached={} tls.conns={} tls.decrypted_conns={} kernel.tls_ciphertext={}",
            value("tls.libraries_attached"),
            value("tls.conns"),
            value("tls.decrypted_conns"),
            value("kernel.tls_ciphertext")
        )
    };
    let why = match config {
        Config::Baseline => None,
        Config::Full | Config::FullNice if value("spans.built") == 0 => {
            Some(format!("the agent built no span: TLS was not decrypted ({})", tls()))
        }
        Config::CaptureOnly if value("kernel.tls_ciphertext") == 0 => {
            Some(format!("the kernel bound no TLS session to its socket: the uprobes did not run ({})", tls()))
        }
        Config::Full | Config::FullNice | Config::CaptureOnly => None,
    };
    match why {
        Some(why) => Err(anyhow::Error::new(InvalidRun(why)).context("invalid run")),
        None => Ok(()),
    }
}

/// KiB as MiB with one decimal.
#[expect(clippy::cast_precision_loss, reason = "memory sizes are far below 2^52")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The line printed for one run, compared with the baseline of its round when given.
fn run_line(run: &Run, baseline: Option<&Run>, proto: Proto) -> String {
    let load = &run.load;
    let node = load.per_request(load.node_cpu_seconds);
    let mut s = match baseline {
        None => format!(
            "{:>9.0} req/s, p99 {:>9}, {} requests, node CPU {} us/request",
            load.requests_per_sec,
            fmt_latency(load.p99),
            load.requests,
            fmt_us(node, false)
        ),
        Some(b) => {
            let base_node = b.load.per_request(b.load.node_cpu_seconds);
            format!(
                "{:>9.0} req/s ({:.3}), p99 {:>9} ({:.3}), {} requests, node CPU {} us/request",
                load.requests_per_sec,
                load.requests_per_sec / b.load.requests_per_sec,
                fmt_latency(load.p99),
                load.p99 / b.load.p99,
                load.requests,
                fmt_us(node - base_node, true)
            )
        }
    };
    if let Some(agent) = &run.agent {
        let _ = write!(
            s,
            ", agent CPU {:.2} s ({} us/request)",
            agent.cpu_seconds,
            fmt_us(load.per_request(agent.cpu_seconds), false)
        );
        if let Some(receiver) = agent.receiver_cpu_seconds {
            let _ =
                write!(s, ", receiver CPU {receiver:.2} s ({} us/request)", fmt_us(load.per_request(receiver), false));
        }
        if let (Some(rss), Some(hwm)) = (agent.rss_kib, agent.hwm_kib) {
            let _ = write!(s, ", RSS {:.1} MiB (peak {:.1})", mib(rss), mib(hwm));
        }
        if let Some(discarded) = agent.discarded {
            let _ = write!(s, ", {discarded} events discarded");
        }
        if let (true, Some(built)) = (proto.shows_spans_built(), agent.spans_built) {
            let _ = write!(s, ", spans.built {built}");
        }
        if let Some(exported) = agent.spans_exported {
            #[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
            let per_request = exported as f64 / load.requests.max(1) as f64;
            let e = agent.export;
            let _ = write!(
                s,
                ", {exported} spans exported ({per_request:.2}/request; export: {} queue full, {} failed, {} errors)",
                e.queue_full, e.failed, e.errors
            );
        }
        let _ = write!(s, ", {} events dropped", agent.dropped);
    }
    s
}

/// The summary table: for each view (in the order of `rounds`), a row per configuration
/// (baseline first), medians over the rounds of per-round comparisons with the baseline.
pub fn overhead_table(rounds: &[ViewRound]) -> String {
    let views = dedup(&rounds.iter().map(|r| r.view).collect::<Vec<_>>());
    let mut rows = Vec::new();
    for view in views {
        let of_view: Vec<&ViewRound> = rounds.iter().filter(|r| r.view == view).collect();
        for config in Config::ALL {
            // (this configuration's run, the baseline of the same round)
            let pairs: Vec<(&Run, Option<&Run>)> = of_view
                .iter()
                .filter_map(|round| {
                    let base = round.runs.iter().find(|(c, _)| *c == Config::Baseline).map(|(_, r)| r);
                    let run = round.runs.iter().find(|(c, _)| *c == config)?;
                    Some((&run.1, base))
                })
                .collect();
            if !pairs.is_empty() {
                let mut row = vec![view.name().to_owned(), config.label().to_owned()];
                row.extend(table_cells(config, &pairs));
                rows.push(row);
            }
        }
    }
    markdown_table(
        &[
            "view",
            "configuration",
            "throughput",
            "p99",
            "agent CPU µs/req",
            "receiver CPU µs/req",
            "node CPU µs/req (added)",
            "agent RSS MiB (end / peak)",
            "spans/req",
            "dropped",
        ],
        &rows,
    )
}

/// The cells after the view and configuration of one row of [`overhead_table`]: the
/// baseline's absolute figures, every other configuration's ratio or difference to the
/// baseline of its round.
#[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
fn table_cells(config: Config, pairs: &[(&Run, Option<&Run>)]) -> Vec<String> {
    let med = |f: &dyn Fn(&Run, Option<&Run>) -> Option<f64>| {
        median(&pairs.iter().filter_map(|&(r, b)| f(r, b)).collect::<Vec<_>>())
    };
    let compared = |f: &dyn Fn(&Run, &Run) -> f64| med(&|r, b| b.map(|b| f(r, b)));
    let or_dash = |v: f64, f: &dyn Fn(f64) -> String| if v.is_finite() { f(v) } else { "-".to_owned() };
    let times = |v: f64| format!("{v:.2}×");
    let node_per_req = |r: &Run| r.load.per_request(r.load.node_cpu_seconds);
    let agent = |f: &dyn Fn(&Run, &AgentRun) -> Option<f64>| med(&|r, _| f(r, r.agent.as_ref()?));
    let (throughput, p99, node) = if config == Config::Baseline {
        (
            or_dash(med(&|r, _| Some(r.load.requests_per_sec)), &|v| format!("{v:.0} req/s")),
            or_dash(med(&|r, _| Some(r.load.p99)), &fmt_latency),
            fmt_us(med(&|r, _| Some(node_per_req(r))), false),
        )
    } else {
        (
            or_dash(compared(&|r, b| r.load.requests_per_sec / b.load.requests_per_sec), &times),
            or_dash(compared(&|r, b| r.load.p99 / b.load.p99), &times),
            fmt_us(compared(&|r, b| node_per_req(r) - node_per_req(b)), true),
        )
    };
    let rss = agent(&|_, a| a.rss_kib.map(mib));
    let hwm = agent(&|_, a| a.hwm_kib.map(mib));
    let memory = if rss.is_finite() && hwm.is_finite() { format!("{rss:.1} / {hwm:.1}") } else { "-".to_owned() };
    let spans = agent(&|r, a| Some(a.spans_exported? as f64 / r.load.requests.max(1) as f64));
    let agents: Vec<&AgentRun> = pairs.iter().filter_map(|(r, _)| r.agent.as_ref()).collect();
    let dropped = if agents.is_empty() {
        "-".to_owned()
    } else {
        let all: u64 = agents.iter().map(|a| a.dropped).sum();
        let export: u64 = agents.iter().map(|a| a.export.dropped()).sum();
        if export > 0 {
            format!("{all} (export {export})")
        } else {
            all.to_string()
        }
    };
    vec![
        throughput,
        p99,
        fmt_us(agent(&|r, a| Some(r.load.per_request(a.cpu_seconds))), false),
        fmt_us(agent(&|r, a| Some(r.load.per_request(a.receiver_cpu_seconds?))), false),
        node,
        memory,
        or_dash(spans, &|v| format!("{v:.2}")),
        dropped,
    ]
}

// ---------------------------------------------------------------------------------------
// bench hooks

/// One hook set's results over the rounds.
#[derive(Debug, Clone)]
pub struct SetResult {
    pub set: HookSet,
    pub rps: Vec<f64>,
    /// req/s / the baseline req/s of the same round.
    pub ratios: Vec<f64>,
    /// Why it could not be attached (the agent's one-line error).
    pub unavailable: Option<String>,
}

fn hook_command(args: &HooksArgs, set: HookSet, unused_port: u16) -> Command {
    let mut cmd = agent_command(args.agent_bin.as_deref());
    match set {
        HookSet::Ghostwire => cmd.arg("--port").arg(unused_port.to_string()).args([
            "--output",
            "jsonl:/dev/null",
            "--stats-interval",
            "0",
        ]),
        set => cmd.arg("--empty-probes").arg(set.name()),
    };
    cmd
}

fn hooks(args: &HooksArgs) -> Result<()> {
    let real_agent = args.agent_bin.is_none();
    if real_agent && !util::is_root() {
        bail!(crate::NEEDS_ROOT);
    }
    let sets = dedup(&args.sets);
    ensure!(!sets.is_empty(), "--sets: name at least one hook set");
    crate::setup::setup(true)?;
    if real_agent {
        crate::build_agent()?;
    }
    let dir = TempDir::new("ghostwire-bench")?;
    let nginx = start_nginx(dir.path(), None)?;
    let port = nginx.port;
    let url = nginx_url("http", port);
    let unused_port = free_port()?;
    println!(
        "==> nginx on 127.0.0.1:{port}; wrk -t {} -c {} -d {}s --latency http://127.0.0.1:{port}/1k.bin",
        args.load.threads, args.load.connections, args.load.duration
    );
    let names: Vec<&str> = sets.iter().map(|s| s.name()).collect();
    println!(
        "    each round: nothing attached (baseline), then {} (the order rotates by one each round); \
         ghostwire traces port {unused_port}, which nothing uses",
        names.join(", ")
    );
    args.load.warm_up(|seconds| run_wrk(args.load.threads, args.load.connections, &url, seconds))?;

    let mut results: Vec<SetResult> =
        sets.iter().map(|&set| SetResult { set, rps: Vec::new(), ratios: Vec::new(), unavailable: None }).collect();
    let mut baseline = Vec::new();
    let n = args.load.rounds;
    for r in 1..=n {
        let base = run_wrk(args.load.threads, args.load.connections, &url, args.load.duration)?;
        println!(
            "{:<26} {:>9.0} req/s, p99 {:>9}",
            format!("round {r}/{n} baseline:"),
            base.requests_per_sec,
            fmt_latency(base.p99)
        );
        baseline.push(base.requests_per_sec);
        let k = results.len();
        for i in 0..k {
            let result = &mut results[(i + r as usize - 1) % k];
            if result.unavailable.is_some() {
                continue;
            }
            let set = result.set;
            let label = format!("round {r}/{n} {}:", set.name());
            let mut cmd = hook_command(args, set, unused_port);
            let agent = match start_agent(&mut cmd)? {
                Ok(agent) => agent,
                Err(not_ready) => {
                    let error = not_ready.one_line();
                    println!("{label:<26} unavailable: {error}");
                    result.unavailable = Some(error);
                    continue;
                }
            };
            let load = run_wrk(args.load.threads, args.load.connections, &url, args.load.duration)?;
            let lines = agent.finish()?;
            let ratio = load.requests_per_sec / base.requests_per_sec;
            println!(
                "{label:<26} {:>9.0} req/s ({ratio:.3} x baseline), p99 {:>9}",
                load.requests_per_sec,
                fmt_latency(load.p99)
            );
            if set == HookSet::Ghostwire {
                match lines.iter().rev().find(|l| l.starts_with("stats:")) {
                    Some(line) => println!("    agent {line}"),
                    None => println!("    agent printed no `stats:` line"),
                }
            }
            result.rps.push(load.requests_per_sec);
            result.ratios.push(ratio);
        }
    }
    println!(
        "\nhook sets with empty programs, wrk -t {} -c {} saturating nginx, medians over {n} rounds:\n",
        args.load.threads, args.load.connections
    );
    print!("{}", hooks_table(&results, median(&baseline)));
    Ok(())
}

/// The summary of `bench hooks`: a row per hook set, then the baseline.
pub fn hooks_table(results: &[SetResult], baseline_rps: f64) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let (rps, ratio) = match &r.unavailable {
                Some(error) => (format!("unavailable: {error}"), "-".to_owned()),
                None => (format!("{:.0}", median(&r.rps)), fmt_ratio(median(&r.ratios))),
            };
            vec![r.set.name().to_owned(), r.set.description().to_owned(), rps, ratio]
        })
        .collect();
    let mut s = markdown_table(
        &["hook set", "what it is", "req/s (median)", "throughput vs baseline (median of per-round ratios)"],
        &rows,
    );
    let _ = writeln!(s, "\nbaseline (nothing attached): {baseline_rps:.0} req/s (median)");
    s
}

// ---------------------------------------------------------------------------------------
// bench uprobe

/// One `result` line of tests/peers/ssl_calls.py.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SslCallsResult {
    pub calls: u64,
    pub bytes: u64,
    /// Nanoseconds spent in the write loop (all `calls` SSL_write calls) and in the read loop.
    pub write_ns: u64,
    pub read_ns: u64,
    /// Nanoseconds per call of the fastest batch of writes, of reads.
    pub write_best: f64,
    pub read_best: f64,
}

/// Parses `result calls=N bytes=B write_ns=W read_ns=R write_best=WB read_best=RB`
/// (each field exactly once, nothing else).
pub fn parse_ssl_calls_result(line: &str) -> Option<SslCallsResult> {
    const KEYS: [&str; 6] = ["calls", "bytes", "write_ns", "read_ns", "write_best", "read_best"];
    let rest = line.trim().strip_prefix("result ")?;
    let mut fields: [Option<&str>; 6] = [None; 6];
    for kv in rest.split_whitespace() {
        let (key, value) = kv.split_once('=')?;
        let i = KEYS.iter().position(|k| *k == key)?;
        if fields[i].replace(value).is_some() {
            return None;
        }
    }
    let [Some(calls), Some(bytes), Some(write_ns), Some(read_ns), Some(write_best), Some(read_best)] = fields else {
        return None;
    };
    let best = |v: &str| v.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    let r = SslCallsResult {
        calls: calls.parse().ok()?,
        bytes: bytes.parse().ok()?,
        write_ns: write_ns.parse().ok()?,
        read_ns: read_ns.parse().ok()?,
        write_best: best(write_best)?,
        read_best: best(read_best)?,
    };
    (r.calls > 0).then_some(r)
}

/// tests/peers/ssl_calls.py, waiting for `run CALLS` commands; stopped when dropped.
struct SslCalls {
    guard: ChildGuard,
    stdin: std::process::ChildStdin,
    rx: mpsc::Receiver<String>,
    shown: String,
    log_path: PathBuf,
    /// The `ready` line's fields after `ready `: `pid=.. version=.. cipher=..`.
    ready: String,
}

impl SslCalls {
    /// Starts the script and waits (at most 30 s) for its `ready` line: the in-memory TLS
    /// 1.3 handshake is done.
    fn start(python: &Path, tls: &TlsFiles, bytes: u32, dir: &Path) -> Result<Self> {
        let script = util::repo_root().join("tests/peers/ssl_calls.py");
        ensure!(script.is_file(), "{} does not exist: the uprobe benchmark needs it", script.display());
        let log_path = dir.join("ssl_calls.stderr");
        let log = std::fs::File::create(&log_path).context("creating ssl_calls.stderr")?;
        let mut cmd = Command::new(python);
        cmd.arg(&script).arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key).arg("--bytes").arg(bytes.to_string());
        let shown = util::display(&cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let stdin = child.stdin.take().context("ssl_calls.py stdin")?;
        let stdout = child.stdout.take().context("ssl_calls.py stdout")?;
        let guard = ChildGuard::new("ssl_calls.py", child, libc::SIGTERM, Duration::from_secs(5));
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut calls = SslCalls { guard, stdin, rx, shown, log_path, ready: String::new() };
        let line = calls.line("ready", Duration::from_secs(30))?;
        calls.ready = line.trim_start_matches("ready").trim().to_owned();
        Ok(calls)
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The next stdout line, which must start with `want`; `error:` lines, an exit or
    /// `timeout` fail.
    fn line(&mut self, want: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with(want) => return Ok(line),
                Ok(line) => bail!("`{}` printed `{line}`, expected a `{want}` line", self.shown),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
            }
            if let Some(status) = self.guard.try_wait()? {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                bail!("`{}` exited ({status}) before printing `{want}`\n{}", self.shown, log.trim_end());
            }
            ensure!(
                Instant::now() < deadline,
                "`{}` printed no `{want}` line within {}",
                self.shown,
                util::fmt_duration(timeout)
            );
        }
    }

    /// `run CALLS`: waits for its result (at most 60 s plus 100 us per call).
    fn run(&mut self, calls: u64) -> Result<SslCallsResult> {
        writeln!(self.stdin, "run {calls}").and_then(|()| self.stdin.flush()).context("writing to ssl_calls.py")?;
        let timeout = Duration::from_secs(60) + Duration::from_micros(calls.saturating_mul(100));
        let line = self.line("result", timeout)?;
        let result = parse_ssl_calls_result(&line).with_context(|| format!("unparsable line `{line}`"))?;
        ensure!(result.calls == calls, "`{line}`: asked for {calls} calls");
        Ok(result)
    }
}

/// The libssl files a process maps (from its /proc/PID/maps): where the probes must be.
fn mapped_libssl(pid: u32) -> Vec<String> {
    libssl_files(&std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default())
}

/// The `libssl.so*` paths of the text of a /proc/PID/maps, each once.
pub fn libssl_files(maps: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        if path.rsplit('/').next().is_some_and(|name| name.starts_with("libssl.so")) && !files.iter().any(|f| f == path)
        {
            files.push(path.to_owned());
        }
    }
    files
}

/// Uprobe links in `bpftool -j link` output: `perf_event` links whose program
/// (`bpftool -j prog show`) is of type `kprobe`, which is what uprobe and uretprobe
/// programs are (this kernel has no kprobes, so each such link is a uprobe).
pub fn count_uprobe_links(links_json: &str, progs_json: &str) -> Option<usize> {
    let links: Vec<serde_json::Value> = serde_json::from_str(links_json).ok()?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(progs_json).ok()?;
    let kprobe_ids: Vec<u64> = progs
        .iter()
        .filter(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("kprobe"))
        .filter_map(|p| p.get("id").and_then(serde_json::Value::as_u64))
        .collect();
    Some(
        links
            .iter()
            .filter(|l| l.get("type").and_then(serde_json::Value::as_str) == Some("perf_event"))
            .filter_map(|l| l.get("prog_id").and_then(serde_json::Value::as_u64))
            .filter(|id| kprobe_ids.contains(id))
            .count(),
    )
}

/// Uprobe links on the machine now ([`count_uprobe_links`]); `None` without bpftool.
fn uprobe_links() -> Option<usize> {
    let json = |args: &[&str]| {
        let out =
            Command::new("bpftool").arg("-j").args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    count_uprobe_links(&json(&["link", "show"])?, &json(&["prog", "show"])?)
}

/// Uprobe links left just after a run, once this benchmark's own agent (if any) has
/// exited: polled for up to 3 s, because the kernel releases an exited process's links
/// shortly after its exit, not at once.
fn uprobe_links_after() -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = uprobe_links();
        if n.is_none_or(|n| n == 0) || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits at most `seconds` for the machine to have no uprobe attached; the last count
/// (`None` without bpftool).
fn wait_no_uprobes(seconds: u64) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut said = false;
    loop {
        let n = uprobe_links();
        if n.is_none_or(|n| n == 0) || Instant::now() >= deadline {
            return n;
        }
        if !said {
            println!("    waiting (at most {seconds} s) for {} uprobe links of other processes to go", n.unwrap_or(0));
            said = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Why a run is disturbed: uprobes of another process (another agent, a test) were
/// attached just before or just after it, while this benchmark had none. A uprobe on a
/// file fires in every process mapping it, so their traps would be in these calls too.
fn foreign_uprobes(before: Option<usize>, after: Option<usize>) -> Option<String> {
    let most = before.unwrap_or(0).max(after.unwrap_or(0));
    (most > 0).then(|| {
        format!(
            "{most} uprobe links of other processes were attached around the run (another agent or test is \
             running; `bpftool link` lists them): their traps would be measured too"
        )
    })
}

/// One run of one configuration of `bench uprobe`: nanoseconds per call, the mean over
/// the run and the fastest batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UprobeRun {
    pub write_ns: f64,
    pub read_ns: f64,
    pub write_best: f64,
    pub read_best: f64,
    /// The agent's CPU time (utime + stime, on its own threads) per SSL call, ns.
    pub agent_cpu_ns: Option<f64>,
}

impl UprobeRun {
    #[expect(clippy::cast_precision_loss, reason = "nanosecond totals and call counts are far below 2^52")]
    fn from_result(r: &SslCallsResult) -> Self {
        let per_call = |ns: u64| ns as f64 / r.calls as f64;
        UprobeRun {
            write_ns: per_call(r.write_ns),
            read_ns: per_call(r.read_ns),
            write_best: r.write_best,
            read_best: r.read_best,
            agent_cpu_ns: None,
        }
    }
}

/// The run's agent did not watch the calls (its probes were not attached or never ran):
/// `Some(why)`. `ready` is the agent's `ready` line, `stats` its last `stats:` line.
pub fn uprobe_run_invalid(config: UprobeConfig, ready: &str, stats: Option<&str>) -> Option<String> {
    match config {
        UprobeConfig::None => None,
        UprobeConfig::EmptyUprobes => {
            // "ready: 8 empty programs attached to the uprobe-ssl hooks"
            let n = ready.trim_start_matches("ready:").split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
            match n {
                Some(n) if n > 0 => None,
                _ => Some(format!("the agent attached no empty program (`{ready}`)")),
            }
        }
        UprobeConfig::Ghostwire => {
            let stats = stats.and_then(parse_stats_line).unwrap_or_default();
            let value = |key: &str| stat_value(&stats, key).unwrap_or(0);
            // The calls run over memory BIOs: their plaintext is reported with no socket
            // (kernel.tls_unbound) and reaches userspace as data events.
            (value("kernel.tls_unbound") == 0 && value("events.data") == 0).then(|| {
                format!(
                    "the agent saw none of the calls (kernel.tls_unbound=0 events.data=0 tls.libraries_attached={})",
                    value("tls.libraries_attached")
                )
            })
        }
    }
}

/// One configuration's runs over the rounds, each with the `none` run of its round.
#[derive(Debug, Clone)]
pub struct UprobeResult {
    pub config: UprobeConfig,
    /// (this configuration's run, the `none` run of the same round).
    pub runs: Vec<(UprobeRun, Option<UprobeRun>)>,
    /// Why it could not be attached (the agent's one-line error).
    pub unavailable: Option<String>,
}

/// Nanoseconds with one decimal, signed for differences (`-` when unknown).
fn fmt_ns(ns: f64, signed: bool) -> String {
    match (ns.is_finite(), signed) {
        (false, _) => "-".to_owned(),
        (true, false) => format!("{ns:.1}"),
        (true, true) => format!("{ns:+.1}"),
    }
}

/// The summary of `bench uprobe`: a row per configuration, medians over the rounds;
/// `added`: the median of per-round differences with the `none` run of the same round.
pub fn uprobe_table(results: &[UprobeResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![r.config.name().to_owned(), r.config.description().to_owned()];
            if let Some(error) = &r.unavailable {
                row.push(format!("unavailable: {error}"));
                return row;
            }
            let med = |f: &dyn Fn(&UprobeRun, Option<&UprobeRun>) -> Option<f64>| {
                median(&r.runs.iter().filter_map(|(run, none)| f(run, none.as_ref())).collect::<Vec<_>>())
            };
            let added = |f: &dyn Fn(&UprobeRun) -> f64| {
                med(&|run, none| none.filter(|_| r.config != UprobeConfig::None).map(|n| f(run) - f(n)))
            };
            row.extend([
                fmt_ns(med(&|run, _| Some(run.write_ns)), false),
                fmt_ns(added(&|run| run.write_ns), true),
                fmt_ns(added(&|run| run.write_best), true),
                fmt_ns(med(&|run, _| Some(run.read_ns)), false),
                fmt_ns(added(&|run| run.read_ns), true),
                fmt_ns(added(&|run| run.read_best), true),
                fmt_ns(med(&|run, _| run.agent_cpu_ns), false),
                r.runs.len().to_string(),
            ]);
            row
        })
        .collect();
    markdown_table(
        &[
            "configuration",
            "attached to libssl",
            "SSL_write ns/call",
            "added",
            "added (best batch)",
            "SSL_read ns/call",
            "added",
            "added (best batch)",
            "agent CPU ns/call",
            "valid runs",
        ],
        &rows,
    )
}

/// How one run of `bench uprobe` went.
enum UprobeOutcome {
    Valid(UprobeRun),
    /// Measured, but the agent did not watch the calls: why.
    Invalid(String),
    /// The configuration cannot be attached here: the agent's one-line error.
    Unavailable(String),
}

/// Runs `calls` SSL_write and SSL_read calls with `config` attached.
/// Runs with nothing of this benchmark's attached before and after it are checked for
/// uprobes of other processes ([`foreign_uprobes`]).
fn uprobe_run(args: &UprobeArgs, config: UprobeConfig, ssl: &mut SslCalls) -> Result<UprobeOutcome> {
    let before = wait_no_uprobes(args.quiet_wait);
    let outcome = uprobe_run_attached(args, config, ssl)?;
    Ok(match (outcome, foreign_uprobes(before, uprobe_links_after())) {
        (UprobeOutcome::Valid(_), Some(why)) => UprobeOutcome::Invalid(why),
        (outcome, _) => outcome,
    })
}

fn uprobe_run_attached(args: &UprobeArgs, config: UprobeConfig, ssl: &mut SslCalls) -> Result<UprobeOutcome> {
    let mut cmd = agent_command(args.agent_bin.as_deref());
    match config {
        UprobeConfig::None => return Ok(UprobeOutcome::Valid(UprobeRun::from_result(&ssl.run(args.calls)?))),
        UprobeConfig::EmptyUprobes => cmd.args(["--empty-probes", "uprobe-ssl"]),
        UprobeConfig::Ghostwire => {
            cmd.arg("--pid").arg(ssl.pid().to_string()).args(["--output", "jsonl:/dev/null", "--stats-interval", "0"])
        }
    };
    let agent = match start_agent(&mut cmd)? {
        Ok(agent) => agent,
        Err(not_ready) => return Ok(UprobeOutcome::Unavailable(not_ready.one_line())),
    };
    let ready = agent.lines.iter().rev().find(|l| l.starts_with("ready")).cloned().unwrap_or_default();
    let cpu_before = agent.cpu_seconds()?;
    let result = ssl.run(args.calls)?;
    let cpu_after = agent.cpu_seconds()?;
    let lines = agent.finish()?;
    let stats = lines.iter().rev().find(|l| l.starts_with("stats:")).cloned();
    let mut run = UprobeRun::from_result(&result);
    if config == UprobeConfig::Ghostwire {
        #[expect(clippy::cast_precision_loss, reason = "call counts are far below 2^52")]
        let per_call = (cpu_after - cpu_before) * 1e9 / (2 * args.calls) as f64;
        run.agent_cpu_ns = Some(per_call);
        match &stats {
            Some(line) => println!("    agent {line}"),
            None => println!("    agent printed no `stats:` line"),
        }
    }
    Ok(match uprobe_run_invalid(config, &ready, stats.as_deref()) {
        Some(why) => UprobeOutcome::Invalid(why),
        None => UprobeOutcome::Valid(run),
    })
}

fn uprobe(args: &UprobeArgs) -> Result<()> {
    let real_agent = args.agent_bin.is_none();
    if real_agent && !util::is_root() {
        bail!(crate::NEEDS_ROOT);
    }
    let configs = dedup(&args.configs);
    ensure!(!configs.is_empty(), "--configs: name at least one of none, empty-uprobes, ghostwire");
    let peers = crate::setup::setup(true)?;
    if real_agent {
        crate::build_agent()?;
    }
    let dir = TempDir::new("ghostwire-bench")?;
    let tls = make_cert(dir.path())?;
    let python = peers_python(peers.as_ref());
    let mut ssl = SslCalls::start(&python, &tls, args.bytes, dir.path())?;
    let libs = mapped_libssl(ssl.pid());
    println!(
        "==> tests/peers/ssl_calls.py ({}): {}, mapping {}",
        python.display(),
        ssl.ready,
        if libs.is_empty() { "no libssl file".to_owned() } else { libs.join(", ") }
    );
    println!(
        "    each run: {} SSL_write calls of {} bytes, each batch of 256 moved to the server over memory BIOs, \
         then as many SSL_read calls (no socket, no syscall in the timed loops)",
        args.calls, args.bytes
    );
    let names: Vec<&str> = configs.iter().map(|c| c.name()).collect();
    println!("    each round: {} (the order rotates by one each round)", names.join(", "));
    match uprobe_links() {
        Some(0) => println!("    no uprobe attached on the machine now (bpftool)"),
        Some(n) => println!(
            "    warning: {n} uprobe links of other processes are attached now: runs while they are are invalid"
        ),
        None => println!(
            "    warning: bpftool not found: other processes' uprobes on libssl cannot be detected (apt-get install \
             bpftool)"
        ),
    }
    let step = Step::start("warm-up (a tenth of a run, not recorded)");
    ssl.run((args.calls / 10).max(1000))?;
    step.done();

    let mut results: Vec<UprobeResult> =
        configs.iter().map(|&config| UprobeResult { config, runs: Vec::new(), unavailable: None }).collect();
    let mut invalid: Vec<String> = Vec::new();
    let n = args.rounds;
    let k = configs.len();
    for r in 1..=n {
        let mut round: Vec<(usize, UprobeRun)> = Vec::new();
        for i in 0..k {
            let at = (i + r as usize - 1) % k;
            let config = results[at].config;
            if results[at].unavailable.is_some() {
                continue;
            }
            let label = format!("round {r}/{n} {}:", config.name());
            match uprobe_run(args, config, &mut ssl)? {
                UprobeOutcome::Unavailable(error) => {
                    println!("{label:<28} unavailable: {error}");
                    results[at].unavailable = Some(error);
                }
                UprobeOutcome::Invalid(why) => {
                    println!("{label:<28} INVALID, not in the medians: {why}");
                    invalid.push(format!("{label} {why}"));
                }
                UprobeOutcome::Valid(run) => {
                    let agent = run.agent_cpu_ns.map(|ns| format!(", agent CPU {ns:.1} ns/call")).unwrap_or_default();
                    println!(
                        "{label:<28} SSL_write {:>7.1} ns/call (best batch {:>7.1}), SSL_read {:>7.1} ns/call \
                         (best batch {:>7.1}){agent}",
                        run.write_ns, run.write_best, run.read_ns, run.read_best
                    );
                    round.push((at, run));
                }
            }
        }
        let none = round.iter().find(|(at, _)| results[*at].config == UprobeConfig::None).map(|(_, run)| run.clone());
        for (at, run) in round {
            results[at].runs.push((run, none.clone()));
        }
    }
    println!("\nOpenSSL calls from Python over memory BIOs, {} bytes each, medians over {n} rounds:\n", args.bytes);
    print!("{}", uprobe_table(&results));
    println!(
        "\nns/call: time in the timed loop / calls (Python's call into _ssl included, the same in every \
         configuration). best batch: ns/call of the run's fastest batch of 256 calls, the one least \
         disturbed by other processes. added: median of per-round differences with `none` of the same round: for \
         empty-uprobes the uprobe + uretprobe mechanism (two traps per call), for ghostwire its programs \
         (reading the arguments, copying the plaintext into the ring) and any slowdown its userspace causes. \
         agent CPU: the agent's own CPU time per SSL call (on its own threads, not in ns/call). \
         ghostwire: no socket is ever used, so the plaintext is never bound to a connection: the kernel \
         copies it into the ring (kernel.tls_unbound) and the agent holds, then drops it (drop.tls_unbound): \
         the probes' work is paid in full, span building is not."
    );
    if !invalid.is_empty() {
        println!("\n{} invalid runs, left out of the medians:", invalid.len());
        for line in &invalid {
            println!("    {line}");
        }
    }
    Ok(())
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
        for (value, seconds) in [("812.00us", 812e-6), ("1.35ms", 1.35e-3), ("2.01s", 2.01), ("1.50m", 90.0)] {
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
        let out: String =
            WRK.lines().filter(|l| !l.contains('%') || l.contains("Latency ")).collect::<Vec<_>>().join("\n");
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
        let stats = parse_stats_line("stats: kernel.write.ring_full=4 kernel.read.ring_full=3 kernel.x.emitted=9")
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
        assert_eq!(count_spans_in(jsonl.as_bytes()), (6, 1));
    }

    #[test]
    fn proc_stat_cpu_ticks() {
        let stat = "4242 (ghost wire) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 3 0 100 0 0";
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
        let conf = nginx_conf(Path::new("/tmp/x"), 8080, None);
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
        assert!(!conf.contains("ssl"), "{conf}");
    }

    #[test]
    fn nginx_tls_conf() {
        let files = TlsFiles { cert: PathBuf::from("/tmp/x/cert.pem"), key: PathBuf::from("/tmp/x/key.pem") };
        let conf = nginx_conf(Path::new("/tmp/x"), 8443, Some(&files));
        let lines: Vec<&str> = conf.lines().map(str::trim).collect();
        for needle in [
            "listen 127.0.0.1:8443 ssl;",
            "ssl_certificate /tmp/x/cert.pem;",
            "ssl_certificate_key /tmp/x/key.pem;",
            "ssl_protocols TLSv1.3;",
            "ssl_session_cache off;",
            "ssl_session_tickets off;",
            "location / { root /tmp/x/www; }",
            "keepalive_requests 1000000;",
        ] {
            assert!(lines.contains(&needle), "line `{needle}` missing from\n{conf}");
        }
        // The TLS directives are inside the server block, before its location.
        let at = |needle: &str| lines.iter().position(|l| l.starts_with(needle)).expect(needle);
        assert!(at("server {") < at("ssl_certificate ") && at("ssl_session_tickets") < at("location /"), "{conf}");
    }

    #[test]
    fn https_runs_that_did_not_decrypt_are_invalid() {
        let agent = |line: &str| AgentRun { stats_line: Some(line.to_owned()), ..AgentRun::default() };
        let invalid = |config: Config, agent: &AgentRun| {
            let e = check_decrypted(config, agent).expect_err("invalid");
            e.downcast_ref::<InvalidRun>().map(ToString::to_string).expect("an InvalidRun")
        };
        let decrypted = agent("stats: spans.built=200 tls.conns=64 tls.decrypted_conns=64 kernel.tls_ciphertext=9");
        assert!(check_decrypted(Config::Full, &decrypted).is_ok());
        assert!(check_decrypted(Config::CaptureOnly, &decrypted).is_ok());
        assert!(check_decrypted(Config::Baseline, &AgentRun::default()).is_ok());

        // Ciphertext only: TLS connections recognised, nothing decrypted, no span.
        let ciphertext = agent("stats: tls.conns=64 tls.libraries_attached=0 kernel.ring_full=0");
        let why = invalid(Config::Full, &ciphertext);
        assert!(why.contains("built no span") && why.contains("tls.conns=64 tls.decrypted_conns=0"), "{why}");
        let why = invalid(Config::CaptureOnly, &ciphertext);
        assert!(why.contains("kernel.tls_ciphertext=0"), "{why}");
        // Spans but no binding counts for capture-only; no stats line at all is invalid.
        assert!(check_decrypted(Config::CaptureOnly, &agent("stats: spans.built=3")).is_err());
        assert!(check_decrypted(Config::Full, &AgentRun::default()).is_err());
    }

    #[test]
    fn wrk_errors_fail_the_run() {
        let r = parse_wrk(WRK).expect("parse");
        assert_eq!(r.timeouts, 12);
        let err = check_wrk(&r).expect_err("non-2xx");
        assert!(err.to_string().contains("5 non-2xx"), "{err}");
        let clean = WrkReport { non_2xx: 0, socket_errors: 3, timeouts: 3, ..r.clone() };
        check_wrk(&clean).expect("a handful of timeouts is tolerated");
        let read_errors = WrkReport { socket_errors: 4, ..clean.clone() };
        let err = check_wrk(&read_errors).expect_err("a read error");
        assert!(err.to_string().contains("1 socket errors"), "{err}");
        let timeouts = WrkReport { socket_errors: MAX_WRK_TIMEOUTS + 1, timeouts: MAX_WRK_TIMEOUTS + 1, ..clean };
        assert!(check_wrk(&timeouts).is_err());
        let no_errors = WRK
            .replace("  Socket errors: connect 0, read 1, write 0, timeout 12\n", "")
            .replace("  Non-2xx or 3xx responses: 5\n", "");
        check_wrk(&parse_wrk(&no_errors).expect("parse")).expect("clean run");
    }

    const HEY: &str = "
Summary:
  Total:\t10.0021 secs
  Slowest:\t0.0143 secs
  Fastest:\t0.0001 secs
  Average:\t0.0004 secs
  Requests/sec:\t9731.4521
  
  Total data:\t99666944 bytes
  Size/request:\t1024 bytes

Response time histogram:
  0.000 [1]\t|
  0.001 [97000]\t|\u{25a0}\u{25a0}\u{25a0}\u{25a0}\u{25a0}\u{25a0}\u{25a0}\u{25a0}
  0.014 [1]\t|


Latency distribution:
  10% in 0.0002 secs
  25% in 0.0003 secs
  50% in 0.0004 secs
  75% in 0.0005 secs
  90% in 0.0006 secs
  95% in 0.0007 secs
  99% in 0.0012 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0001 secs, 0.0143 secs
  DNS-lookup:\t0.0000 secs, 0.0000 secs, 0.0000 secs
  req write:\t0.0000 secs, 0.0000 secs, 0.0003 secs
  resp wait:\t0.0003 secs, 0.0001 secs, 0.0132 secs
  resp read:\t0.0000 secs, 0.0000 secs, 0.0023 secs

Status code distribution:
  [200]\t97331 responses



";

    #[test]
    fn parses_hey() {
        let r = parse_hey(HEY).expect("parse");
        assert!((r.requests_per_sec - 9731.4521).abs() < 1e-9);
        assert_eq!(r.p99, Some(0.0012));
        assert_eq!(r.statuses, vec![(200, 97_331)]);
        assert!(r.errors.is_empty());
        assert_eq!(check_hey(&r).expect("all 200"), (97_331, 0.0012));
        assert!(parse_hey("").is_err());
    }

    #[test]
    fn hey_non_200_responses_fail_the_run() {
        let out = HEY.replace("  [200]\t97331 responses\n", "  [200]\t97000 responses\n  [404]\t331 responses\n");
        let r = parse_hey(&out).expect("parse");
        assert_eq!(r.statuses, vec![(200, 97_000), (404, 331)]);
        let err = check_hey(&r).expect_err("404s");
        assert!(err.to_string().contains("331 x 404"), "{err}");
        let only_404 = HEY.replace("[200]\t97331", "[404]\t97331");
        assert!(check_hey(&parse_hey(&only_404).expect("parse")).is_err());
    }

    #[test]
    fn hey_errors_and_missing_p99_fail_the_run() {
        // What hey prints when nothing listens (and, with few requests, its placeholder
        // "0% in 0.0000 secs" for percentiles it has no sample for).
        let refused = "
Summary:
  Total:\t1.0148 secs
  Average:\t NaN secs
  Requests/sec:\t19.7083
  

Response time histogram:


Latency distribution:

Status code distribution:

Error distribution:
  [20]\tGet \"http://127.0.0.1:18932/\": dial tcp 127.0.0.1:18932: connect: connection refused

";
        let r = parse_hey(refused).expect("parse");
        assert_eq!(r.p99, None);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].0, 20);
        let err = check_hey(&r).expect_err("errors");
        assert!(err.to_string().contains("connection refused"), "{err}");

        let few = HEY.replace("  99% in 0.0012 secs", "  0% in 0.0000 secs");
        let r = parse_hey(&few).expect("parse");
        assert_eq!(r.p99, None);
        let err = check_hey(&r).expect_err("no p99");
        assert!(err.to_string().contains("99%"), "{err}");
    }

    #[test]
    fn proc_stat_node_cpu() {
        let stat = "cpu  100 20 30 1000 50 5 7 3 40 0\n\
                    cpu0 50 10 15 500 25 2 3 1 20 0\n\
                    intr 12345\n";
        let cpu = parse_proc_stat_cpu(stat).expect("cpu line");
        assert_eq!(cpu.busy, 100 + 20 + 30 + 5 + 7 + 3);
        assert_eq!(cpu.total, cpu.busy + 1000 + 50);
        assert_eq!(parse_proc_stat_cpu("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_proc_stat_cpu("cpu  1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat_cpu("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn agent_error_lines() {
        let lines = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            agent_error_line(
                &lines(&[
                    "[INFO ] loading",
                    "error: cannot attach cgroup_skb on /sys/fs/cgroup: Operation not permitted",
                    "",
                ]),
                "exit status: 1"
            ),
            "cannot attach cgroup_skb on /sys/fs/cgroup: Operation not permitted"
        );
        assert_eq!(agent_error_line(&lines(&["panicked at x", ""]), "exit status: 101"), "panicked at x");
        assert_eq!(
            agent_error_line(&[], "signal: 9 (SIGKILL)"),
            "exited with signal: 9 (SIGKILL) before printing `ready`"
        );
    }

    #[test]
    fn agent_tail_keeps_the_panic_message() {
        let mut lines: Vec<String> = vec!["[INFO ] ready".to_owned()];
        lines.push("thread 'main' (19438) panicked at agent/src/protocol/http2.rs:77:9:".to_owned());
        lines.push("not yet implemented".to_owned());
        lines.extend((0..30).map(|i| format!("  {i}: frame")));
        let t = tail(&lines);
        assert!(t.starts_with("thread 'main' (19438) panicked at agent/src/protocol/http2.rs:77:9:\nnot yet implemented\n...\n  10: frame\n"), "{t}");
        assert!(t.ends_with("  29: frame"), "{t}");
        // Short output, or a panic within the last lines: just the last lines.
        assert_eq!(tail(&lines[..3]), lines[..3].join("\n"));
        assert_eq!(tail(&lines[12..]).lines().count(), 20);
    }

    #[test]
    fn renders_markdown_tables() {
        let table = markdown_table(
            &["a", "long header"],
            &[vec!["wide cell".to_owned(), "1".to_owned()], vec!["us".to_owned()]],
        );
        assert_eq!(
            table,
            "| a         | long header |\n\
             |-----------|-------------|\n\
             | wide cell | 1           |\n\
             | us        |             |\n"
        );
        assert_eq!(fmt_ratio(0.9531), "0.953 (-4.7%)");
        assert_eq!(fmt_ratio(f64::NAN), "-");
        assert_eq!(fmt_us(2.5e-6, true), "+2.50");
    }

    #[test]
    fn hooks_table_rows() {
        let results = [
            SetResult {
                set: HookSet::RawSock,
                rps: vec![45_000.0, 47_000.0, 46_000.0],
                ratios: vec![0.95, 0.97, 0.96],
                unavailable: None,
            },
            SetResult {
                set: HookSet::CgroupSkb,
                rps: Vec::new(),
                ratios: Vec::new(),
                unavailable: Some("no cgroup v2 hierarchy is mounted".to_owned()),
            },
        ];
        let table = hooks_table(&results, 48_000.0);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("| hook set   | what it is "), "{table}");
        assert!(lines[2].starts_with("| raw-sock   | raw tracepoints sock_send_length"), "{table}");
        assert!(lines[2].contains("| 46000 "), "{table}");
        assert!(lines[2].contains("| 0.960 (-4.0%) "), "{table}");
        assert!(lines[3].contains("| unavailable: no cgroup v2 hierarchy is mounted | - "), "{table}");
        assert_eq!(lines.last().copied(), Some("baseline (nothing attached): 48000 req/s (median)"));
    }

    /// `h2load -c 32 -m 1 -t 2 -D 3 -d <frame> -H 'content-type: application/grpc' -H 'te: trailers'
    /// --log-file=... http://127.0.0.1:P/demo.Echo/Unary` against tests/peers/grpc_server.py,
    /// posting the file `write_grpc_body(path, 128)` writes (136 bytes).
    const H2LOAD: &str = r#"starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
spawning thread #1: 16 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Warm-up started for thread #1.
Warm-up started for thread #0.
progress: 6% of clients started
progress: 12% of clients started
progress: 18% of clients started
progress: 25% of clients started
progress: 31% of clients started
progress: 37% of clients started
progress: 43% of clients started
progress: 50% of clients started
progress: 56% of clients started
progress: 62% of clients started
progress: 68% of clients started
progress: 75% of clients started
progress: 81% of clients started
progress: 87% of clients started
progress: 93% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Warm-up phase is over for thread #1.
Main benchmark duration is started for thread #1.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0
Main benchmark duration is over for thread #1. Stopping all clients.
Stopped all clients for thread #1

finished in 3.00s, 2679.67 req/s, 513.22KB/s
requests: 8039 total, 8071 started, 8039 done, 8039 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 8039 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.50MB (1576599) total, 25.90KB (26517) headers (space savings 95.93%), 1.04MB (1093304) data
                     min         max         mean         sd        +/- sd
time for request:     1.67ms     22.51ms     11.91ms      2.98ms    78.08%
time for connect:       56us       409us       228us        98us    62.50%
time to 1st byte:     7.07ms     13.91ms     10.10ms      2.15ms    53.13%
req/s           :      83.27       84.00       83.71        0.26    46.88%
"#;

    /// The same at `-c 10 --rps 150 -D 2` (the fixed-rate view), from `finished` on.
    const H2LOAD_RPS: &str = r#"finished in 2.00s, 1500.00 req/s, 286.91KB/s
requests: 3000 total, 3000 started, 3000 done, 3000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 3000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 573.82KB (587596) total, 9.52KB (9750) headers (space savings 95.99%), 398.44KB (408000) data
                     min         max         mean         sd        +/- sd
time for request:      372us     17.16ms      2.97ms      2.33ms    91.43%
time for connect:       39us       163us       100us        40us    60.00%
time to 1st byte:     1.27ms      2.90ms      2.35ms       570us    80.00%
req/s           :     149.90      149.97      149.94        0.03    70.00%
"#;

    /// `-c 2 -n 10` posting the message `notfound`: the server answers 200 with
    /// grpc-status NOT_FOUND and no DATA.
    const H2LOAD_GRPC_ERROR: &str = r#"starting benchmark...
spawning thread #0: 2 total client(s). 10 total requests
Application protocol: h2c
progress: 10% done
progress: 20% done
progress: 30% done
progress: 40% done
progress: 50% done
progress: 60% done
progress: 70% done
progress: 80% done
progress: 90% done
progress: 100% done

finished in 7.18ms, 1392.18 req/s, 103.60KB/s
requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 762B (762) total, 398B (398) headers (space savings 46.93%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:      616us      2.42ms      1.24ms       638us    80.00%
time for connect:      159us       363us       261us       144us   100.00%
time to 1st byte:     2.44ms      2.86ms      2.65ms       303us   100.00%
req/s           :     728.07      772.47      750.27       31.40   100.00%
"#;

    /// `-c 2 -n 10` against a port nothing listens on (h2load still exits 0).
    const H2LOAD_REFUSED: &str = r#"starting benchmark...
spawning thread #0: 2 total client(s). 10 total requests

finished in 263us, 0.00 req/s, 0B/s
requests: 10 total, 0 started, 0 done, 0 succeeded, 10 failed, 10 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
"#;

    #[test]
    fn parses_h2load() {
        let r = parse_h2load(H2LOAD).expect("parse");
        assert!((r.requests_per_sec - 2679.67).abs() < 1e-9);
        assert_eq!((r.total, r.started, r.done, r.succeeded), (8039, 8071, 8039, 8039));
        assert_eq!((r.failed, r.errored, r.timeout), (0, 0, 0));
        assert_eq!(r.status, [8039, 0, 0, 0]);
        // Every call echoed its 136 bytes; the 32 (clients x streams) in flight when the
        // timed run ended are neither done nor counted.
        assert_eq!(r.data_bytes, 8039 * 136);
        assert_eq!(check_h2load(&r, 136, 32), Ok(8039));

        let r = parse_h2load(H2LOAD_RPS).expect("parse");
        assert!((r.requests_per_sec - 1500.0).abs() < 1e-9);
        assert_eq!(check_h2load(&r, 136, 10), Ok(3000));
    }

    #[test]
    fn h2load_without_its_summary_is_an_error() {
        assert!(parse_h2load("").is_err());
        let no_traffic: String = H2LOAD.lines().filter(|l| !l.starts_with("traffic:")).collect::<Vec<_>>().join("\n");
        assert!(parse_h2load(&no_traffic).expect_err("no data").to_string().contains("data"));
        let no_status = H2LOAD.replace("status codes:", "status:");
        assert!(parse_h2load(&no_status).expect_err("no status").to_string().contains("status codes"));
        let garbled = H2LOAD.replace("8071 started", "many started");
        assert!(parse_h2load(&garbled).is_err());
    }

    #[test]
    fn h2load_failures_make_the_run_invalid() {
        // Nothing listening: nothing done.
        let r = parse_h2load(H2LOAD_REFUSED).expect("parse");
        assert_eq!((r.done, r.failed, r.errored), (0, 10, 10));
        let err = check_h2load(&r, 136, 2).expect_err("refused");
        assert!(err.0.contains("no requests done"), "{err}");
        // gRPC errors are HTTP 200: only the missing echo shows them.
        let r = parse_h2load(H2LOAD_GRPC_ERROR).expect("parse");
        assert_eq!((r.done, r.status[0], r.data_bytes), (10, 10, 0));
        let err = check_h2load(&r, 13, 2).expect_err("not echoed");
        assert!(err.0.contains("not echoed"), "{err}");
        // Fewer 2xx than done.
        let some_5xx = H2LOAD.replace("8039 2xx, 0 3xx, 0 4xx, 0 5xx", "8038 2xx, 0 3xx, 0 4xx, 1 5xx");
        let err = check_h2load(&parse_h2load(&some_5xx).expect("parse"), 136, 32).expect_err("a 5xx");
        assert!(err.0.starts_with("8038 2xx responses for 8039 requests done (0 3xx, 0 4xx, 1 5xx"), "{err}");
        // More DATA than answered calls plus those in flight could carry, or less than
        // the answered calls.
        let r = parse_h2load(H2LOAD).expect("parse");
        assert!(check_h2load(&r, 136, 0).is_ok());
        assert!(check_h2load(&H2loadReport { data_bytes: 136 * (8039 + 32), ..r.clone() }, 136, 32).is_ok());
        assert!(check_h2load(&H2loadReport { data_bytes: 136 * (8039 + 33), ..r.clone() }, 136, 32).is_err());
        assert!(check_h2load(&H2loadReport { data_bytes: 136 * 8038, ..r }, 136, 32).is_err());
    }

    #[test]
    fn invalid_runs_are_found_through_context() {
        let e = anyhow::Error::new(InvalidRun("1 5xx".to_owned())).context("invalid run: `h2load ...`");
        let e = Err::<(), _>(e).context("round 1").expect_err("an error");
        assert_eq!(e.downcast_ref::<InvalidRun>(), Some(&InvalidRun("1 5xx".to_owned())));
        assert!(format!("{e:#}").ends_with("invalid run: `h2load ...`: 1 5xx"), "{e:#}");
        assert!(anyhow!("wrk failed").downcast_ref::<InvalidRun>().is_none());
    }

    #[test]
    fn h2load_log_p99() {
        // Lines of real logs: three 2xx, and two requests h2load gave up on (status -1).
        let log = "1796146509147622\t200\t7424\n1796146509150283\t200\t6190\n1796146509147605\t200\t9123\n\
                   1796146486622063\t-1\t173\n1796146486623265\t-1\t106\n";
        let times = parse_h2load_log(log).expect("parse");
        assert_eq!(times.len(), 3);
        assert!((times[0] - 7.424e-3).abs() < 1e-12);
        assert!((quantile(&times, 0.99) - 9.123e-3).abs() < 1e-12);
        assert!(parse_h2load_log("1\t200\n").is_err());
        assert!(parse_h2load_log("1\tok\t5\n").is_err());
        assert_eq!(parse_h2load_log("").expect("empty").len(), 0);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert!((quantile(&v, 0.99) - 198.0).abs() < 1e-12);
        assert!((quantile(&v, 0.5) - 100.0).abs() < 1e-12);
        assert!((quantile(&v, 1.0) - 200.0).abs() < 1e-12);
        assert!((quantile(&[5.0], 0.99) - 5.0).abs() < 1e-12);
        assert!(quantile(&[], 0.99).is_nan());
    }

    #[test]
    fn grpc_frames() {
        assert_eq!(grpc_frame(b"hi").expect("frame"), [0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(grpc_frame(b"").expect("frame"), [0, 0, 0, 0, 0]);
        let big = vec![7u8; 0x0001_0203];
        let frame = grpc_frame(&big).expect("frame");
        assert_eq!(frame[..5], [0, 0, 1, 2, 3]);
        assert_eq!(frame.len(), 5 + big.len());

        // Protobuf field 1 (tag 0x0a), varint length, then the letters.
        assert_eq!(grpc_message(3), b"\x0a\x03abc");
        assert_eq!(grpc_message(0), [0x0a, 0]);
        let m = grpc_message(300);
        assert_eq!(m[..3], [0x0a, 0xac, 0x02]);
        assert_eq!(m.len(), 303);
        assert_eq!(m[3 + 26], b'a');
    }

    #[test]
    fn grpc_body_file() {
        let dir = TempDir::new("ghostwire-bench-test").expect("temp dir");
        let path = dir.path().join("body.bin");
        // The file the captured runs above posted: a 128-byte field, 136 bytes in all.
        assert_eq!(write_grpc_body(&path, 128).expect("write"), 136);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 136);
        assert_eq!(bytes[..8], [0, 0, 0, 0, 131, 0x0a, 0x80, 0x01]);
        assert_eq!(&bytes[8..11], b"abc");
        // Written again, it is replaced, not appended to.
        assert_eq!(write_grpc_body(&path, 1).expect("write"), 8);
        assert_eq!(std::fs::read(&path).expect("read"), [0, 0, 0, 0, 3, 0x0a, 1, b'a']);
        assert!(write_grpc_body(&dir.path().join("no/such/dir"), 1).is_err());
    }

    fn run(rps: f64, p99: f64, requests: u64, node: f64, agent: Option<AgentRun>) -> Run {
        Run { load: Load { requests_per_sec: rps, p99, requests, node_cpu_seconds: node }, agent }
    }

    /// The cells of a markdown table's rows, trimmed, without the outer empty cells.
    fn cells(table: &str) -> Vec<Vec<String>> {
        table
            .lines()
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells[1..cells.len() - 1].iter().map(|c| (*c).to_owned()).collect()
            })
            .collect()
    }

    #[test]
    fn overhead_table_has_both_views_and_compares_with_the_same_round() {
        let capture = |cpu: f64| AgentRun { cpu_seconds: cpu, discarded: Some(10), ..AgentRun::default() };
        let full = AgentRun {
            cpu_seconds: 0.5,
            receiver_cpu_seconds: Some(0.25),
            rss_kib: Some(40 * 1024),
            hwm_kib: Some(48 * 1024),
            spans_exported: Some(100_000),
            export: ExportCounters { queue_full: 2, failed: 0, errors: 5 },
            dropped: 3,
            ..AgentRun::default()
        };
        let saturated = |base: f64| ViewRound {
            view: View::Saturated,
            runs: vec![
                (Config::Baseline, run(base, 1e-3, 100_000, 2.0, None)),
                (Config::CaptureOnly, run(base * 0.9, 1.2e-3, 100_000, 2.2, Some(capture(0.1)))),
                (Config::Full, run(base * 0.5, 2e-3, 50_000, 1.5, Some(full.clone()))),
            ],
        };
        let nice = AgentRun { cpu_seconds: 0.099, spans_exported: Some(9_900), ..AgentRun::default() };
        let fixed = || ViewRound {
            view: View::Fixed,
            runs: vec![
                (Config::Baseline, run(1000.0, 0.5e-3, 10_000, 0.3, None)),
                (Config::FullNice, run(990.0, 0.6e-3, 9_900, 0.4, Some(nice.clone()))),
            ],
        };
        // As the benchmark records them: each round, one view after the other.
        let rounds = [saturated(40_000.0), fixed(), saturated(50_000.0), fixed(), saturated(60_000.0), fixed()];
        let table = overhead_table(&rounds);
        let rows = cells(&table);
        assert_eq!(rows.len(), 7, "{table}");
        assert_eq!(
            rows[0],
            [
                "view",
                "configuration",
                "throughput",
                "p99",
                "agent CPU µs/req",
                "receiver CPU µs/req",
                "node CPU µs/req (added)",
                "agent RSS MiB (end / peak)",
                "spans/req",
                "dropped"
            ]
        );
        assert_eq!(rows[2], ["saturated", "baseline", "50000 req/s", "1.00 ms", "-", "-", "20.00", "-", "-", "-"]);
        assert_eq!(rows[3], ["saturated", "capture-only", "0.90×", "1.20×", "1.00", "-", "+2.00", "-", "-", "0"]);
        assert_eq!(
            rows[4],
            [
                "saturated",
                "full agent",
                "0.50×",
                "2.00×",
                "10.00",
                "5.00",
                "+10.00",
                "40.0 / 48.0",
                "2.00",
                "9 (export 6)"
            ]
        );
        assert_eq!(rows[5], ["fixed", "baseline", "1000 req/s", "500 us", "-", "-", "30.00", "-", "-", "-"]);
        assert_eq!(
            rows[6],
            ["fixed", "full agent, nice 10", "0.99×", "1.20×", "10.00", "-", "+10.40", "-", "1.00", "0"]
        );
    }

    #[test]
    fn overhead_table_leaves_out_invalid_runs() {
        let agent = AgentRun { spans_exported: Some(20_000), ..AgentRun::default() };
        let round = |runs: Vec<(Config, Run)>| ViewRound { view: View::Saturated, runs };
        let rounds = [
            // The first round's baseline was invalid: no ratio from that round, and the
            // baseline row still comes first.
            round(vec![(Config::Full, run(9000.0, 1e-3, 90_000, 2.0, Some(AgentRun::default())))]),
            round(vec![
                (Config::Baseline, run(2000.0, 10e-3, 20_000, 2.0, None)),
                (Config::Full, run(1000.0, 20e-3, 10_000, 2.0, Some(agent))),
            ]),
        ];
        let rows = cells(&overhead_table(&rounds));
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(rows[2][..4], ["saturated", "baseline", "2000 req/s", "10.00 ms"]);
        // Ratios from the second round only; spans/req the median of 2.0 and none.
        assert_eq!(rows[3][..4], ["saturated", "full agent", "0.50×", "2.00×"]);
        assert_eq!(rows[3][8], "2.00");
        // No baseline in any round: no ratio at all.
        let rows = cells(&overhead_table(&rounds[..1]));
        assert_eq!(rows[2][1..4], ["full agent", "-", "-"]);
        assert_eq!(cells(&overhead_table(&[])).len(), 2);
    }

    #[test]
    fn export_counters_and_invalid_exports() {
        let stats = parse_stats_line(
            "stats: spans.built=90 spans.exported=88 drop.export_queue_full=1 drop.export_failed=2 export.errors=3",
        )
        .expect("stats line");
        let counters = ExportCounters::from_stats(&stats);
        assert_eq!(counters, ExportCounters { queue_full: 1, failed: 2, errors: 3 });
        assert_eq!(counters.dropped(), 3);
        assert_eq!(ExportCounters::from_stats(&[]), ExportCounters::default());

        let agent = |line: Option<&str>| {
            let stats = line.and_then(parse_stats_line).unwrap_or_default();
            AgentRun {
                stats_line: line.map(str::to_owned),
                spans_built: stat_value(&stats, "spans.built"),
                spans_exported: stat_value(&stats, "spans.exported"),
                export: ExportCounters::from_stats(&stats),
                ..AgentRun::default()
            }
        };
        assert_eq!(export_invalid(&agent(Some("stats: spans.exported=2")), Export::Otlp), None);
        let why = export_invalid(
            &agent(Some("stats: spans.built=5 spans.exported=0 export.errors=4 drop.export_failed=5")),
            Export::Otlp,
        )
        .expect("invalid");
        assert_eq!(
            why,
            "the agent exported no span to rotel (spans.built=5 export.errors=4 drop.export_failed=5 \
             drop.export_queue_full=0)"
        );
        let why = export_invalid(&agent(Some("stats: spans.built=5")), Export::Jsonl).expect("invalid");
        assert!(why.contains("no span to the JSONL file"), "{why}");
        assert!(export_invalid(&agent(None), Export::Otlp).expect("invalid").contains("no `stats:` line"));
    }

    #[test]
    fn proc_status_memory() {
        let status = "Name:\tghostwire\nVmPeak:\t  900000 kB\nVmHWM:\t   20012 kB\nVmRSS:\t   19000 kB\n\
                      VmRSSx:\t 1 kB\nThreads:\t5\nVmSwap:\t x kB\nVmLib:\t 12\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(19_000));
        assert_eq!(status_kib(status, "VmHWM"), Some(20_012));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib(status, "VmLib"), None);
        assert_eq!(status_kib(status, "VmData"), None);
        assert_eq!(status_kib("", "VmRSS"), None);
        assert!((mib(40 * 1024) - 40.0).abs() < 1e-12);
    }

    #[test]
    fn tcp_listeners_from_proc_net() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:37ED 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1704877 1 00000000670a4035 100 0 0 10 0\n\
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1681 1 00000000c6c9a8a5 100 0 0 10 0\n\
   2: 0100007F:37ED 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1\n";
        let found = tcp_listeners(tcp);
        assert_eq!(
            found,
            [("127.0.0.1:14317".parse().expect("addr"), 1_704_877), ("0.0.0.0:2024".parse().expect("addr"), 1681)]
        );
        if cfg!(target_endian = "little") {
            let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0\n\
   1: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0\n\
   2: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6666 1 0000000000000000 100 0 0 10 0\n";
            let found: Vec<(String, bool)> = tcp_listeners(tcp6)
                .into_iter()
                .map(|(a, _)| (a.to_string(), a.ip().to_canonical().is_loopback()))
                .collect();
            let want = [("[::1]:8080", true), ("[::ffff:127.0.0.1]:8081", true), ("[::]:8082", false)];
            assert_eq!(found, want.map(|(a, l)| (a.to_owned(), l)));
        }
        assert!(tcp_listeners("").is_empty());
        assert!(tcp_listeners("header\n   0: zz:zz 00000000:0000 0A a b c 0 0 1\n").is_empty());
    }

    #[test]
    fn finds_this_process_listening() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert!(listeners(std::process::id()).contains(&addr));
        drop(listener);
        assert!(!listeners(std::process::id()).contains(&addr));
    }

    #[test]
    fn rotel_listens_on_loopback_only() {
        let args: Vec<String> =
            rotel_args(4317, 4318, Path::new("/tmp/d")).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "start",
                "--exporter",
                "blackhole",
                "--otlp-grpc-endpoint",
                "127.0.0.1:4317",
                "--otlp-http-endpoint",
                "127.0.0.1:4318",
                "--pid-file",
                "/tmp/d/rotel.pid",
                "--log-file",
                "/tmp/d/rotel.log"
            ]
        );
    }

    #[test]
    fn h2load_command_line() {
        let h2 = H2load {
            port: 50051,
            threads: 2,
            clients: 1,
            streams: 4,
            rps: Some(150),
            request: H2Request::Grpc { body: Path::new("/tmp/body.bin"), frame_len: 136 },
            log: Some(Path::new("/tmp/h2load.log")),
        };
        let args = |cmd: &Command| cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();
        assert_eq!(
            args(&h2.command(Bound::Seconds(10))),
            [
                "-t",
                "1",
                "-c",
                "1",
                "-m",
                "4",
                "-D",
                "10",
                "--rps",
                "150",
                "-d",
                "/tmp/body.bin",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "--log-file=/tmp/h2load.log",
                "http://127.0.0.1:50051/demo.Echo/Unary"
            ]
        );
        let h2 = H2load { clients: 32, rps: None, log: None, ..h2 };
        let a = args(&h2.command(Bound::Requests(4)));
        assert_eq!(a[..8], ["-t", "2", "-c", "32", "-m", "4", "-n", "4"]);
        assert!(!a.iter().any(|x| x == "--rps" || x.starts_with("--log-file")), "{a:?}");
        let h2 = H2load { clients: 10, streams: 1, rps: Some(500), request: H2Request::HttpsGet, ..h2 };
        assert_eq!(
            args(&h2.command(Bound::Seconds(10))),
            ["-t", "2", "-c", "10", "-m", "1", "-D", "10", "--rps", "500", "--h1", "https://127.0.0.1:50051/1k.bin"]
        );
    }

    #[test]
    fn ssl_calls_results() {
        let r = parse_ssl_calls_result(
            "result calls=500000 bytes=64 write_ns=512000000 read_ns=498000000 write_best=801.5 read_best=790.0",
        )
        .expect("parse");
        assert_eq!((r.calls, r.bytes, r.write_ns, r.read_ns), (500_000, 64, 512_000_000, 498_000_000));
        let run = UprobeRun::from_result(&r);
        assert!((run.write_ns - 1024.0).abs() < 1e-9 && (run.read_ns - 996.0).abs() < 1e-9, "{run:?}");
        assert!((run.write_best - 801.5).abs() < 1e-9 && (run.read_best - 790.0).abs() < 1e-9, "{run:?}");
        for bad in [
            "ready pid=1",
            "result calls=0 bytes=64 write_ns=1 read_ns=1 write_best=1 read_best=1",
            "result calls=5 bytes=64 write_ns=1 read_ns=1 write_best=1",
            "result calls=5 calls=6 bytes=64 write_ns=1 read_ns=1 write_best=1 read_best=1",
            "result calls=5 bytes=64 write_ns=-1 read_ns=1 write_best=1 read_best=1",
            "result calls=5 bytes=64 write_ns=1 read_ns=1 write_best=inf read_best=1",
            "result calls=5 bytes=64 write_ns=1 read_ns=1 write_best=1 read_best=1 extra=2",
        ] {
            assert_eq!(parse_ssl_calls_result(bad), None, "{bad}");
        }
    }

    #[test]
    fn libssl_files_from_maps() {
        let maps = "\
7f00-7f10 r--p 00000000 fe:00 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10-7f20 r-xp 00010000 fe:00 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f20-7f30 r--p 00000000 fe:00 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f30-7f40 rw-p 00000000 00:00 0
7f40-7f50 r-xp 00000000 fe:00 125 /opt/old/libssl.so.1.1
7f50-7f60 r-xp 00000000 fe:00 126 /opt/not-libssl.so.3/python
";
        assert_eq!(libssl_files(maps), ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/opt/old/libssl.so.1.1"]);
        assert!(libssl_files("").is_empty());
    }

    #[test]
    fn uprobe_links_from_bpftool() {
        let links = r#"[{"id":1,"type":"perf_event","prog_id":10},{"id":2,"type":"perf_event","prog_id":11},
            {"id":3,"type":"perf_event","prog_id":12},{"id":4,"type":"cgroup","prog_id":10}]"#;
        let progs = r#"[{"id":10,"type":"kprobe","name":"floor_uprobe"},{"id":11,"type":"raw_tracepoint"},
            {"id":12,"type":"kprobe","name":"ssl_write_enter"},{"id":13,"type":"kprobe"}]"#;
        assert_eq!(count_uprobe_links(links, progs), Some(2));
        assert_eq!(count_uprobe_links("[]", progs), Some(0));
        assert_eq!(count_uprobe_links("Error: no bpffs", progs), None);
        assert_eq!(foreign_uprobes(Some(0), Some(0)), None);
        assert_eq!(foreign_uprobes(None, None), None);
        let why = foreign_uprobes(Some(0), Some(8)).expect("disturbed");
        assert!(why.starts_with("8 uprobe links of other processes"), "{why}");
    }

    #[test]
    fn uprobe_runs_that_watched_nothing_are_invalid() {
        let ready = "ready: 8 empty programs attached to the uprobe-ssl hooks";
        assert_eq!(uprobe_run_invalid(UprobeConfig::EmptyUprobes, ready, None), None);
        let none = "ready: 0 empty programs attached to the uprobe-ssl hooks";
        assert!(uprobe_run_invalid(UprobeConfig::EmptyUprobes, none, None).is_some());
        assert!(uprobe_run_invalid(UprobeConfig::EmptyUprobes, "ready: tracing", None).is_some());
        let seen = "stats: events.data=10 kernel.tls_unbound=10 tls.libraries_attached=1";
        assert_eq!(uprobe_run_invalid(UprobeConfig::Ghostwire, "ready", Some(seen)), None);
        let why = uprobe_run_invalid(UprobeConfig::Ghostwire, "ready", Some("stats: tls.libraries_attached=1"))
            .expect("invalid");
        assert!(why.contains("saw none of the calls") && why.contains("tls.libraries_attached=1"), "{why}");
        assert!(uprobe_run_invalid(UprobeConfig::Ghostwire, "ready", None).is_some());
        assert_eq!(uprobe_run_invalid(UprobeConfig::None, "", None), None);
    }

    #[test]
    fn uprobe_table_compares_with_none_of_the_same_round() {
        let run = |write: f64, read: f64, cpu: Option<f64>| UprobeRun {
            write_ns: write,
            read_ns: read,
            write_best: write / 2.0,
            read_best: read / 2.0,
            agent_cpu_ns: cpu,
        };
        let none = [run(1000.0, 900.0, None), run(2000.0, 1900.0, None), run(1100.0, 1000.0, None)];
        let results = [
            UprobeResult {
                config: UprobeConfig::None,
                runs: none.iter().map(|r| (r.clone(), Some(r.clone()))).collect(),
                unavailable: None,
            },
            UprobeResult {
                config: UprobeConfig::EmptyUprobes,
                // +1000, +1100 and +900 (write); +500, +600, +700 (read) over its round.
                runs: vec![
                    (run(2000.0, 1400.0, None), Some(none[0].clone())),
                    (run(3100.0, 2500.0, None), Some(none[1].clone())),
                    (run(2000.0, 1700.0, None), Some(none[2].clone())),
                ],
                unavailable: None,
            },
            UprobeResult {
                config: UprobeConfig::Ghostwire,
                // A round whose `none` run was invalid: no difference from it.
                runs: vec![
                    (run(4000.0, 3000.0, Some(250.0)), Some(none[0].clone())),
                    (run(9000.0, 9000.0, Some(9.0)), None),
                ],
                unavailable: None,
            },
        ];
        let table = uprobe_table(&results);
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split('|').map(str::trim).collect()).collect();
        assert_eq!(rows.len(), 5, "{table}");
        assert_eq!(rows[2][1..], ["none", "nothing attached", "1100.0", "-", "-", "1000.0", "-", "-", "-", "3", ""]);
        assert_eq!(rows[3][3..11], ["2000.0", "+1000.0", "+500.0", "1700.0", "+600.0", "+300.0", "-", "3"], "{table}");
        // Medians of both rounds for the absolute figures; differences only from round 1.
        assert_eq!(
            rows[4][3..10],
            ["6500.0", "+3000.0", "+1500.0", "6000.0", "+2100.0", "+1050.0", "129.5"],
            "{table}"
        );

        let unavailable = [UprobeResult {
            config: UprobeConfig::EmptyUprobes,
            runs: Vec::new(),
            unavailable: Some("unknown hook set `uprobe-ssl`".to_owned()),
        }];
        assert!(uprobe_table(&unavailable).contains("unavailable: unknown hook set `uprobe-ssl`"));
    }

    #[test]
    fn cli_defaults_and_lists() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: BenchCmd,
        }
        let parse = |argv: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|c| c.cmd)
        };
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead"]) else { panic!("not overhead") };
        assert_eq!(o.views, [View::Saturated, View::Fixed]);
        assert_eq!((o.rate_connections, o.rate_qps()), (10, 1000));
        assert_eq!((o.proto, o.streams, o.message_bytes), (Proto::Http1, 1, 128));
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead", "--proto", "grpc"]) else { panic!("not overhead") };
        assert_eq!((o.proto, o.rate_qps()), (Proto::Grpc, 150));
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead", "--proto", "https", "--views", "saturated"]) else {
            panic!("not overhead")
        };
        assert_eq!((o.proto, o.rate_qps(), o.views.as_slice()), (Proto::Https, 500, [View::Saturated].as_slice()));
        assert!(parse(&["overhead", "--proto", "tls"]).is_err());
        assert_eq!(o.quiet_wait, 60);
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead", "--proto", "grpc", "--rate-qps-per-connection", "7"])
        else {
            panic!("not overhead")
        };
        assert_eq!(o.rate_qps(), 7);
        assert!(parse(&["overhead", "--proto", "http3"]).is_err());
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead", "--views", "fixed", "--", "--pid", "1"]) else {
            panic!("not overhead")
        };
        assert_eq!(o.views, [View::Fixed]);
        assert_eq!(o.agent_args, ["--pid", "1"]);
        assert!(parse(&["overhead", "--views", "slow"]).is_err());

        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead"]) else { panic!("not overhead") };
        assert_eq!(o.configs, [Config::Baseline, Config::CaptureOnly, Config::Full]);
        assert_eq!(o.export, Export::Otlp);
        assert_eq!(overhead_configs(&o).expect("configs"), o.configs);
        let Ok(BenchCmd::Overhead(o)) =
            parse(&["overhead", "--configs", "full-nice,baseline,full-nice", "--export", "jsonl"])
        else {
            panic!("not overhead")
        };
        assert_eq!(o.export, Export::Jsonl);
        // In the order they run, the baseline first, each once.
        assert_eq!(overhead_configs(&o).expect("configs"), [Config::Baseline, Config::FullNice]);
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead", "--configs", "full"]) else { panic!("not overhead") };
        let err = overhead_configs(&o).expect_err("no baseline");
        assert!(err.to_string().contains("include `baseline`"), "{err}");
        let Ok(BenchCmd::Overhead(o)) = parse(&["overhead", "--configs", "full", "--no-agent"]) else {
            panic!("not overhead")
        };
        assert_eq!(overhead_configs(&o).expect("configs"), [Config::Baseline]);
        assert!(parse(&["overhead", "--configs", "nice"]).is_err());
        assert!(parse(&["overhead", "--export", "zipkin"]).is_err());
        for config in Config::ALL {
            assert_eq!(clap::ValueEnum::to_possible_value(&config).expect("a value").get_name(), config.name());
        }

        let Ok(BenchCmd::Hooks(h)) = parse(&["hooks"]) else { panic!("not hooks") };
        assert_eq!((h.load.rounds, h.load.duration, h.load.warmup), (3, 10, 2));
        assert_eq!((h.load.threads, h.load.connections), (2, 32));
        let names: Vec<&str> = h.sets.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["syscalls", "raw-syscalls", "sock", "raw-sock", "cgroup-skb", "ghostwire"]);
        let Ok(BenchCmd::Hooks(h)) = parse(&["hooks", "--sets", "raw-sock,cgroup-skb"]) else { panic!("not hooks") };
        assert_eq!(h.sets, [HookSet::RawSock, HookSet::CgroupSkb]);
        assert!(parse(&["hooks", "--sets", "kprobes"]).is_err());
        // The names clap accepts are the names passed to the agent.
        for set in &dedup(&[
            HookSet::Syscalls,
            HookSet::RawSyscalls,
            HookSet::Sock,
            HookSet::RawSock,
            HookSet::CgroupSkb,
            HookSet::Ghostwire,
        ]) {
            let value = clap::ValueEnum::to_possible_value(set).expect("a value");
            assert_eq!(value.get_name(), set.name());
        }
        assert_eq!(dedup(&[View::Fixed, View::Saturated, View::Fixed]), [View::Fixed, View::Saturated]);

        let Ok(BenchCmd::Uprobe(u)) = parse(&["uprobe"]) else { panic!("not uprobe") };
        assert_eq!((u.rounds, u.calls, u.bytes, u.quiet_wait), (5, 500_000, 64, 60));
        assert_eq!(u.configs, [UprobeConfig::None, UprobeConfig::EmptyUprobes, UprobeConfig::Ghostwire]);
        for config in &u.configs {
            assert_eq!(clap::ValueEnum::to_possible_value(config).expect("a value").get_name(), config.name());
        }
        let Ok(BenchCmd::Uprobe(u)) = parse(&["uprobe", "--configs", "none,empty-uprobes", "--calls", "1000"]) else {
            panic!("not uprobe")
        };
        assert_eq!(
            (u.configs.as_slice(), u.calls),
            ([UprobeConfig::None, UprobeConfig::EmptyUprobes].as_slice(), 1000)
        );
        assert!(parse(&["uprobe", "--calls", "999"]).is_err());
        assert!(parse(&["uprobe", "--bytes", "16385"]).is_err());
        assert!(parse(&["uprobe", "--configs", "kprobes"]).is_err());
    }
}
