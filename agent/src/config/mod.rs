//! Command line, configuration file and environment → settings. Layering, lowest
//! first: defaults < the file (`--config`) < the standard `OTEL_*` environment
//! variables < flags.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

pub mod file;

/// ghostwire: traces services nobody instrumented. eBPF captures every process's HTTP
/// traffic; ghostwire turns it into OpenTelemetry spans.
#[derive(Debug, Parser)]
#[command(name = "ghostwire", version, about, long_about = None)]
pub struct Cli {
    /// Read settings from this YAML file: every flag has a key (deploy/ghostwire.yaml
    /// lists them all, at their defaults). Flags, and the OTEL_* environment, win over
    /// it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What the file set that the environment may still override.
    #[arg(skip)]
    pub from_file: FromFile,

    /// Trace only this process id (repeatable). Default: every process but ghostwire.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Trace only processes with this name (repeatable). Matched against the kernel's
    /// process name (`comm`: the executable's file name, first 15 bytes).
    #[arg(long = "exe", value_name = "NAME")]
    pub exes: Vec<String>,

    /// OTLP endpoint: http://HOST:4317 for gRPC, http://HOST:4318 for OTLP/HTTP (its
    /// path defaults to /v1/traces); https:// for TLS. Default: the
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT variable.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` (default) or `http/protobuf`. Default: the
    /// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL variable.
    #[arg(long, value_name = "PROTOCOL", value_parser = crate::export::otlp::Protocol::parse)]
    pub otlp_protocol: Option<crate::export::otlp::Protocol>,

    /// Header sent with every export request, NAME=VALUE (repeatable), e.g.
    /// `authorization=Bearer TOKEN`. Added to OTEL_EXPORTER_OTLP_HEADERS (a flag wins
    /// over a variable's header of the same name).
    #[arg(long = "otlp-header", value_name = "NAME=VALUE")]
    pub otlp_headers: Vec<String>,

    /// Longest one export request may take (default 10s; OTEL_EXPORTER_OTLP_TIMEOUT, in
    /// milliseconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub otlp_timeout: Option<Duration>,

    /// Request compression: `gzip` or `none` (default; OTEL_EXPORTER_OTLP_COMPRESSION).
    #[arg(long, value_name = "NAME", value_parser = crate::export::otlp::Compression::parse)]
    pub otlp_compression: Option<crate::export::otlp::Compression>,

    /// PEM file with the CA certificates that sign an https:// collector's certificate
    /// (default: the system's roots; OTEL_EXPORTER_OTLP_CERTIFICATE).
    #[arg(long, value_name = "FILE")]
    pub otlp_certificate: Option<PathBuf>,

    /// Node-level resource attribute on every span, KEY=VALUE (repeatable), e.g.
    /// `k8s.cluster.name=prod`. Added to OTEL_RESOURCE_ATTRIBUTES; service.name stays
    /// each process's own.
    #[arg(long = "resource-attribute", value_name = "KEY=VALUE")]
    pub resource_attributes: Vec<String>,

    /// Extra output (repeatable): `jsonl:PATH` writes each batch as one OTLP-JSON line;
    /// `console` shows the live waterfall. With no OTLP endpoint and no output, the
    /// waterfall is shown.
    #[arg(long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,

    /// Declare a process SDK-instrumented by service or executable name (repeatable):
    /// ghostwire emits no spans for it but still uses its headers to link its
    /// neighbours. Processes that send trace context of their own are detected anyway.
    #[arg(long = "instrumented", value_name = "NAME")]
    pub instrumented: Vec<String>,

    /// Print counters every SECS seconds on stderr (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    /// Bytes copied from the start of each socket read or write (at most 16384). 16384
    /// holds the headers of nearly every real request, large cookies included; the
    /// bytes beyond it are counted, not copied (but for the last 4096 of a long
    /// transfer, where the next message may start).
    #[arg(long, value_name = "BYTES", default_value_t = ghostwire_common::DEFAULT_CAPTURE)]
    pub capture_bytes: u32,

    /// Kernel ring buffer size (power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub ring_buffer_bytes: u32,

    /// Spans held per exporter while the backend is slow or down; beyond it the oldest
    /// are dropped (and counted).
    #[arg(long, value_name = "SPANS", default_value_t = 8192)]
    pub queue_size: usize,

    /// Capture only: drain the kernel's records and discard them (no parsing, no spans).
    /// Measures what the kernel side costs; the counters still report what was seen.
    #[arg(long)]
    pub capture_only: bool,

    /// UNSAFE: export database query texts and error messages as sent, literals and
    /// all (they carry parameter values: emails, ids, secrets). By default every literal
    /// is replaced by `?`. For debugging on a machine whose data may be seen.
    #[arg(long)]
    pub unsafe_raw_queries: bool,

    /// Do not attach OpenSSL uprobes; TLS connections are then counted, not traced.
    /// (Without it, every libssl.so.* a process maps and every executable exporting
    /// OpenSSL's SSL_read/SSL_write, e.g. node, gets them, each file once.)
    #[arg(long)]
    pub no_tls: bool,

    /// Run the agent at this lower CPU priority (nice value 0..=19). Under a saturated
    /// node the traced services then win the CPU from the agent; the price is that the
    /// agent falls behind under saturation (its queues and the ring absorb it, and
    /// whatever overflows is counted as dropped).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,

    /// Head sampling: the share of the traces ghostwire starts that are exported
    /// (0.0..=1.0), decided from the trace id like OTel's TraceIdRatioBased. A request
    /// that arrived with a context follows its sampled flag. Default: 1.0, or what
    /// OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG say.
    #[arg(long, value_name = "RATIO")]
    pub sample_ratio: Option<f64>,

    /// Tail sampling: keep every trace with an error span, whatever the ratio.
    #[arg(long)]
    pub sample_keep_errors: bool,

    /// Tail sampling: keep every trace whose entry span took longer than this (e.g.
    /// 500ms, 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub sample_keep_slower_than: Option<Duration>,

    /// Keep at most N traces per second (a token bucket over the traces the other
    /// rules kept; what it refuses is counted as sample.dropped.rate_limit).
    #[arg(long, value_name = "N")]
    pub sample_max_traces_per_second: Option<f64>,

    /// Adaptive sampling: about N traces per second per operation (service, span name
    /// and route) for the traces ghostwire starts; rarer operations are always kept.
    #[arg(long, value_name = "N")]
    pub sample_adaptive_per_operation: Option<f64>,

    /// Tail sampling: a trace is complete when no span arrived for this long after its
    /// entry span.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub sample_quiet_period: Duration,

    /// Tail sampling: a trace whose entry span never arrives is decided after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub sample_max_wait: Duration,

    /// Tail sampling: traces held at most; past it the oldest is decided at once.
    #[arg(long, value_name = "TRACES", default_value_t = crate::sample::DEFAULT_BUFFER_TRACES)]
    pub sample_buffer_traces: usize,

    /// Tail sampling: bytes of spans held at most (estimated); past it the oldest trace
    /// is decided at once.
    #[arg(long, value_name = "BYTES", default_value_t = crate::sample::DEFAULT_BUFFER_BYTES)]
    pub sample_buffer_bytes: usize,

    /// Serve Prometheus metrics (RED, service graph, ghostwire's counters) at
    /// http://ADDR/metrics. ADDR is HOST:PORT or a port (on 127.0.0.1); the flag alone
    /// means 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: Option<String>,

    /// Kubernetes pod names from the API server (watching this node's pods): `auto` (on
    /// in a cluster, i.e. with KUBERNETES_SERVICE_HOST, or with a kubeconfig), `on` or
    /// `off`. container.id and k8s.pod.uid come from cgroups either way.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = crate::k8s::Mode::Auto)]
    pub kubernetes: crate::k8s::Mode,

    /// The node whose pods are watched. Default: the GHOSTWIRE_NODE_NAME variable (the
    /// manifests set it from spec.nodeName), else the host name.
    #[arg(long, value_name = "NAME")]
    pub kubernetes_node: Option<String>,

    /// Reach the API server through this kubeconfig file (default: KUBECONFIG,
    /// ~/.kube/config, or the pod's service account in a cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Attach only empty programs to one candidate hook set (syscalls, raw-syscalls,
    /// sock, raw-sock, cgroup-skb) and wait: what the hooks cost by themselves, for
    /// `cargo xtask bench hooks`.
    #[arg(long, value_name = "SET", hide = true)]
    pub empty_probes: Option<String>,

    /// Which hooks carry the socket-layer programs: `auto` (raw tracepoints, else
    /// classic tracepoints) or `tracepoints`.
    #[arg(long, value_name = "KIND", default_value = "auto", hide = true)]
    pub hooks: String,
}

/// Settings from the configuration file that sit below the `OTEL_*` environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FromFile {
    pub otlp: file::Otlp,
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    pub sample_ratio: Option<f64>,
    /// `kubernetes.node_name`, below `GHOSTWIRE_NODE_NAME`.
    pub kubernetes_node: Option<String>,
}

/// Why the command line or the configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad flags (or `--help`, `--version`): clap prints and exits.
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error(transparent)]
    File(#[from] file::FileError),
}

impl Cli {
    /// The command line `args` (program name first), with `--config FILE` applied below
    /// the flags it gives.
    pub fn load<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let Some(path) = cli.config.clone() {
            let f = file::load(&path)?;
            cli.apply_file(f, |id| matches.value_source(id) == Some(ValueSource::CommandLine));
        }
        Ok(cli)
    }

    /// Takes every setting of `f` that the command line did not give (`given(id)`).
    fn apply_file(&mut self, f: file::File, given: impl Fn(&str) -> bool) {
        fn set<T>(slot: &mut T, value: Option<T>, given: bool) {
            if let (Some(v), false) = (value, given) {
                *slot = v;
            }
        }
        fn list<T>(slot: &mut Vec<T>, value: Vec<T>, given: bool) {
            if !given && !value.is_empty() {
                *slot = value;
            }
        }
        list(&mut self.pids, f.filter.pids, given("pids"));
        list(&mut self.ports, f.filter.ports, given("ports"));
        list(&mut self.exes, f.filter.exes, given("exes"));
        list(&mut self.instrumented, f.instrumented, given("instrumented"));
        if !given("outputs") {
            if let Some(path) = &f.outputs.jsonl {
                self.outputs.push(format!("jsonl:{}", path.display()));
            }
            if f.outputs.console == Some(true) {
                self.outputs.push("console".to_owned());
            }
        }
        self.from_file.otlp = f.outputs.otlp;
        self.from_file.resource_attributes = f.resource_attributes;
        self.from_file.sample_ratio = f.sampling.ratio;
        set(&mut self.queue_size, f.outputs.queue_size, given("queue_size"));
        set(&mut self.capture_bytes, f.capture.bytes, given("capture_bytes"));
        set(&mut self.ring_buffer_bytes, f.capture.ring_buffer_bytes, given("ring_buffer_bytes"));
        set(&mut self.no_tls, f.capture.tls.map(|tls| !tls), given("no_tls"));
        let s = f.sampling;
        set(&mut self.sample_keep_errors, s.keep_errors, given("sample_keep_errors"));
        set(&mut self.sample_keep_slower_than, s.keep_slower_than.map(Some), given("sample_keep_slower_than"));
        set(
            &mut self.sample_max_traces_per_second,
            s.max_traces_per_second.map(Some),
            given("sample_max_traces_per_second"),
        );
        set(
            &mut self.sample_adaptive_per_operation,
            s.adaptive_per_operation.map(Some),
            given("sample_adaptive_per_operation"),
        );
        set(&mut self.sample_quiet_period, s.quiet_period, given("sample_quiet_period"));
        set(&mut self.sample_max_wait, s.max_wait, given("sample_max_wait"));
        set(&mut self.sample_buffer_traces, s.buffer_traces, given("sample_buffer_traces"));
        set(&mut self.sample_buffer_bytes, s.buffer_bytes, given("sample_buffer_bytes"));
        set(&mut self.metrics_listen, f.metrics.listen.map(Some), given("metrics_listen"));
        set(&mut self.stats_interval, f.stats_interval, given("stats_interval"));
        set(&mut self.nice, f.nice, given("nice"));
        set(&mut self.kubernetes, f.kubernetes.mode, given("kubernetes"));
        set(&mut self.kubeconfig, f.kubernetes.kubeconfig.map(Some), given("kubeconfig"));
        self.from_file.kubernetes_node = f.kubernetes.node_name;
    }
}

/// `--metrics-listen` without a value: loopback, the OTel Prometheus exporter's port.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// Parses `500ms`, `2s`, `1.5s`, `1m` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a duration: use e.g. 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "us" | "µs" => n / 1e6,
        _ => return Err(format!("`{s}` has an unknown unit: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is not a duration: use e.g. 500ms, 2s or 1m"))
}

/// Smallest ring buffer accepted: a few of the largest records (header, 16 KiB prefix,
/// 4 KiB tail).
pub const MIN_RING_BYTES: u32 = 64 * 1024;

/// Resolved outputs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub otlp: Option<crate::export::otlp::OtlpOptions>,
    pub jsonl: Option<PathBuf>,
    pub console: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown output `{0}`: use --output jsonl:PATH or --output console")]
    UnknownOutput(String),
    #[error("--capture-bytes {0} is out of range: use 1..=16384")]
    CaptureBytes(u32),
    #[error("--ring-buffer-bytes {0} must be a power of two of at least 65536 (one record can take 20 KiB)")]
    RingBytes(u32),
    #[error("OTLP endpoint `{0}` must start with http:// or https:// (e.g. http://127.0.0.1:4317)")]
    Endpoint(String),
    #[error("--hooks {0} is not a hook kind: use auto or tracepoints")]
    Hooks(String),
    #[error("--sample-ratio {0} is out of range: use a number from 0.0 to 1.0")]
    Ratio(String),
    #[error("OTEL_TRACES_SAMPLER={0} is not supported: use always_on, always_off, traceidratio or parentbased_{{always_on,always_off,traceidratio}}")]
    Sampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0} is not a ratio: use a number from 0.0 to 1.0")]
    SamplerArg(String),
    #[error("--{0} {1} must be a positive number")]
    Positive(&'static str, String),
    #[error("--metrics-listen {0} is not an address: use HOST:PORT (e.g. 127.0.0.1:9464) or a port")]
    MetricsListen(String),
    /// An `--otlp-*` flag or `OTEL_EXPORTER_OTLP_*` variable; the message names it.
    #[error("{0}")]
    Otlp(String),
    /// `--resource-attribute` or `OTEL_RESOURCE_ATTRIBUTES`; the message names it.
    #[error("{0}")]
    Resource(String),
}

/// Where `/v1/traces` goes for OTLP/HTTP, per the exporter specification.
#[derive(Clone, Copy)]
enum TracesPath {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the URL is used as it is.
    AsIs,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL; `v1/traces` is appended to its path.
    Append,
    /// A flag or the file: `/v1/traces` when the URL has no path.
    IfNoPath,
}

fn traces_url(endpoint: &str, how: TracesPath) -> String {
    let (base, path) = match endpoint.find("://").map(|i| i + 3) {
        Some(start) => match endpoint[start..].find('/') {
            Some(p) => endpoint.split_at(start + p),
            None => (endpoint, ""),
        },
        None => (endpoint, ""),
    };
    match how {
        TracesPath::AsIs => endpoint.to_owned(),
        TracesPath::Append => format!("{base}{}/v1/traces", path.trim_end_matches('/')),
        TracesPath::IfNoPath if path.is_empty() || path == "/" => format!("{base}/v1/traces"),
        TracesPath::IfNoPath => endpoint.to_owned(),
    }
}

/// `key1=value1,key2=value2` (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`):
/// values percent-decoded, blank entries skipped.
fn parse_pairs(text: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((k, v)) = entry.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(format!("{what}: `{entry}` is not KEY=VALUE (entries are comma-separated, e.g. a=1,b=2)"));
        };
        let value = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|_| format!("{what}: the value of `{}` is not UTF-8 once percent-decoded", k.trim()))?;
        out.push((k.trim().to_owned(), value.into_owned()));
    }
    Ok(out)
}

/// One `KEY=VALUE` flag.
fn parse_pair(text: &str, flag: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{flag} `{text}` is not KEY=VALUE (e.g. {flag} authorization=Bearer…)")),
    }
}

/// Adds `(name, value)` pairs, a later one replacing an earlier one of the same name.
fn merge(into: &mut Vec<(String, String)>, pairs: impl IntoIterator<Item = (String, String)>, fold_case: bool) {
    for (k, v) in pairs {
        let k = if fold_case { k.to_ascii_lowercase() } else { k };
        into.retain(|(old, _)| *old != k);
        into.push((k, v));
    }
}

impl Cli {
    /// Resolves outputs from flags and `env` (a lookup, so tests need no real environment).
    pub fn outputs(&self, env: impl Fn(&str) -> Option<String>) -> Result<Outputs, ConfigError> {
        let mut out = Outputs { otlp: self.otlp(&env)?, ..Outputs::default() };
        for spec in &self.outputs {
            if let Some(path) = spec.strip_prefix("jsonl:") {
                out.jsonl = Some(PathBuf::from(path));
            } else if spec == "console" {
                out.console = true;
            } else {
                return Err(ConfigError::UnknownOutput(spec.clone()));
            }
        }
        if out.otlp.is_none() && out.jsonl.is_none() {
            out.console = true;
        }
        Ok(out)
    }

    /// The OTLP exporter's settings, each from its flag, else the traces-specific
    /// `OTEL_EXPORTER_OTLP_TRACES_*` variable, else the generic `OTEL_EXPORTER_OTLP_*`,
    /// else the file, else the default. `None` without an endpoint.
    fn otlp(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<crate::export::otlp::OtlpOptions>, ConfigError> {
        use crate::export::otlp::{Compression, OtlpOptions, Protocol, DEFAULT_TIMEOUT};
        let file = &self.from_file.otlp;
        let var = |name: &str| -> Option<(String, String)> {
            [format!("OTEL_EXPORTER_OTLP_TRACES_{name}"), format!("OTEL_EXPORTER_OTLP_{name}")]
                .into_iter()
                .find_map(|k| env(&k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
        };
        let endpoint = match &self.otlp_endpoint {
            Some(e) => Some((e.clone(), TracesPath::IfNoPath)),
            None => env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .filter(|v| !v.trim().is_empty())
                .map(|e| (e, TracesPath::AsIs))
                .or_else(|| {
                    env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty()).map(|e| (e, TracesPath::Append))
                })
                .or_else(|| file.endpoint.clone().map(|e| (e, TracesPath::IfNoPath))),
        };
        let Some((endpoint, how)) = endpoint.map(|(e, how)| (e.trim().to_owned(), how)).filter(|(e, _)| !e.is_empty())
        else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::Endpoint(endpoint));
        }
        let protocol = match (self.otlp_protocol, var("PROTOCOL")) {
            (Some(p), _) => p,
            (None, Some((k, v))) => Protocol::parse(&v).map_err(|e| ConfigError::Otlp(format!("{k}: {e}")))?,
            (None, None) => file.protocol.unwrap_or_default(),
        };
        let endpoint = match protocol {
            Protocol::HttpProtobuf => traces_url(&endpoint, how),
            Protocol::Grpc => endpoint,
        };
        let timeout = match (self.otlp_timeout, var("TIMEOUT")) {
            (Some(t), _) => t,
            (None, Some((k, v))) => match v.trim().parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    return Err(ConfigError::Otlp(format!("{k}={v} is not a number of milliseconds (e.g. 10000)")))
                }
            },
            (None, None) => file.timeout.unwrap_or(DEFAULT_TIMEOUT),
        };
        if timeout.is_zero() {
            return Err(ConfigError::Otlp("the OTLP timeout must be longer than zero (--otlp-timeout 10s)".to_owned()));
        }
        let compression = match (self.otlp_compression, var("COMPRESSION")) {
            (Some(c), _) => c,
            (None, Some((k, v))) => Compression::parse(&v).map_err(|e| ConfigError::Otlp(format!("{k}: {e}")))?,
            (None, None) => file.compression.unwrap_or_default(),
        };
        let certificate = self
            .otlp_certificate
            .clone()
            .or_else(|| var("CERTIFICATE").map(|(_, v)| PathBuf::from(v.trim())))
            .or_else(|| file.certificate.clone());
        let mut headers = Vec::new();
        merge(&mut headers, file.headers.iter().map(|(k, v)| (k.clone(), v.clone())), true);
        for name in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Some(text) = env(name) {
                merge(&mut headers, parse_pairs(&text, name).map_err(ConfigError::Otlp)?, true);
            }
        }
        let flags = self.otlp_headers.iter().map(|h| parse_pair(h, "--otlp-header"));
        merge(&mut headers, flags.collect::<Result<Vec<_>, _>>().map_err(ConfigError::Otlp)?, true);
        Ok(Some(OtlpOptions { endpoint, protocol, headers, timeout, compression, certificate }))
    }

    /// Node-level resource attributes: the file's `resource_attributes`, then
    /// `OTEL_RESOURCE_ATTRIBUTES`, then `--resource-attribute` (a later one of the same
    /// key wins). `service.name` is refused from flags and dropped, with a warning, from
    /// the variable: each span's service is its process's.
    pub fn resource_attributes(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut attrs = Vec::new();
        merge(&mut attrs, self.from_file.resource_attributes.iter().map(|(k, v)| (k.clone(), v.clone())), false);
        if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
            let mut pairs = parse_pairs(&text, "OTEL_RESOURCE_ATTRIBUTES").map_err(ConfigError::Resource)?;
            if pairs.iter().any(|(k, _)| k == "service.name") {
                log::warn!(
                    "OTEL_RESOURCE_ATTRIBUTES: service.name is ignored: each span's service is its own process's"
                );
                pairs.retain(|(k, _)| k != "service.name");
            }
            merge(&mut attrs, pairs, false);
        }
        for flag in &self.resource_attributes {
            let (k, v) = parse_pair(flag, "--resource-attribute").map_err(ConfigError::Resource)?;
            if k == "service.name" {
                return Err(ConfigError::Resource(
                    "--resource-attribute service.name: each span's service is its own process's; it cannot be set \
                     for the node"
                        .to_owned(),
                ));
            }
            merge(&mut attrs, [(k, v)], false);
        }
        Ok(attrs)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.capture_bytes == 0 || self.capture_bytes as usize > ghostwire_common::MAX_CAPTURE {
            return Err(ConfigError::CaptureBytes(self.capture_bytes));
        }
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < MIN_RING_BYTES {
            return Err(ConfigError::RingBytes(self.ring_buffer_bytes));
        }
        self.hook_choice().map(drop)
    }

    pub fn hook_choice(&self) -> Result<crate::capture::HookChoice, ConfigError> {
        match self.hooks.as_str() {
            "auto" => Ok(crate::capture::HookChoice::Auto),
            "tracepoints" => Ok(crate::capture::HookChoice::Tracepoints),
            other => Err(ConfigError::Hooks(other.to_owned())),
        }
    }

    /// Resolves the sampling settings from flags and `env` (`OTEL_TRACES_SAMPLER`,
    /// `OTEL_TRACES_SAMPLER_ARG`); the flags win.
    pub fn sampling(&self, env: impl Fn(&str) -> Option<String>) -> Result<crate::sample::Config, ConfigError> {
        let mut cfg = crate::sample::Config { ratio: self.from_file.sample_ratio.unwrap_or(1.0), ..Default::default() };
        let ratio_of = |v: &str, err: fn(String) -> ConfigError| -> Result<f64, ConfigError> {
            match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(err(v.to_owned())),
            }
        };
        if let Some(name) = env("OTEL_TRACES_SAMPLER").filter(|v| !v.trim().is_empty()) {
            let arg = env("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty());
            let arg_ratio = || arg.as_deref().map_or(Ok(1.0), |a| ratio_of(a, ConfigError::SamplerArg));
            (cfg.parent_based, cfg.ratio) = match name.trim() {
                "always_on" => (false, 1.0),
                "always_off" => (false, 0.0),
                "traceidratio" => (false, arg_ratio()?),
                "parentbased_always_on" => (true, 1.0),
                "parentbased_always_off" => (true, 0.0),
                "parentbased_traceidratio" => (true, arg_ratio()?),
                other => return Err(ConfigError::Sampler(other.to_owned())),
            };
        }
        if let Some(r) = self.sample_ratio {
            cfg.ratio = ratio_of(&r.to_string(), ConfigError::Ratio)?;
        }
        let positive = |flag: &'static str, v: Option<f64>| match v {
            Some(n) if !(n.is_finite() && n > 0.0) => Err(ConfigError::Positive(flag, n.to_string())),
            v => Ok(v),
        };
        cfg.keep_errors = self.sample_keep_errors;
        cfg.keep_slower_than = self.sample_keep_slower_than;
        cfg.max_traces_per_second = positive("sample-max-traces-per-second", self.sample_max_traces_per_second)?;
        cfg.adaptive_per_operation = positive("sample-adaptive-per-operation", self.sample_adaptive_per_operation)?;
        cfg.quiet = self.sample_quiet_period;
        cfg.max_wait = self.sample_max_wait;
        cfg.buffer_traces = self.sample_buffer_traces;
        cfg.buffer_bytes = self.sample_buffer_bytes;
        Ok(cfg)
    }

    /// The Kubernetes settings; the node is `--kubernetes-node`, else `env`'s
    /// `GHOSTWIRE_NODE_NAME`, else the file's `kubernetes.node_name`, else the host name.
    pub fn kubernetes(&self, env: impl Fn(&str) -> Option<String>) -> crate::k8s::Settings {
        let node = self
            .kubernetes_node
            .clone()
            .or_else(|| env("GHOSTWIRE_NODE_NAME"))
            .or_else(|| self.from_file.kubernetes_node.clone())
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::k8s::host_node_name);
        crate::k8s::Settings { mode: self.kubernetes, node, kubeconfig: self.kubeconfig.clone() }
    }

    /// The `--metrics-listen` address, if metrics are on.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(v) = &self.metrics_listen else { return Ok(None) };
        let v = v.trim();
        if let Ok(port) = v.parse::<u16>() {
            return Ok(Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))));
        }
        v.parse().map(Some).map_err(|_| ConfigError::MetricsListen(v.to_owned()))
    }

    #[must_use]
    pub fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval > 0).then(|| Duration::from_secs(self.stats_interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("ghostwire").chain(args.iter().copied()))
    }

    #[test]
    fn console_is_the_default_view() {
        let o = cli(&[]).outputs(|_| None).unwrap();
        assert!(o.console);
        assert_eq!(o.otlp, None);
    }

    #[test]
    fn endpoint_precedence_flag_then_traces_then_generic() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://traces:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://generic:4317".to_owned()),
            _ => None,
        };
        assert_eq!(
            cli(&[]).outputs(env).unwrap().otlp.as_ref().map(|o| o.endpoint.as_str()),
            Some("http://traces:4317")
        );
        let o = cli(&["--otlp-endpoint", "http://flag:4317"]).outputs(env).unwrap();
        assert_eq!(o.otlp.as_ref().map(|o| o.endpoint.as_str()), Some("http://flag:4317"));
        assert!(!o.console);
        let generic = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://generic:4317".to_owned());
        assert_eq!(
            cli(&[]).outputs(generic).unwrap().otlp.as_ref().map(|o| o.endpoint.as_str()),
            Some("http://generic:4317")
        );
    }

    #[test]
    fn otlp_http_paths_follow_the_specification() {
        let http = |args: &[&str], env: &[(&str, &str)]| {
            let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let mut all = vec!["--otlp-protocol", "http/protobuf"];
            all.extend_from_slice(args);
            cli(&all)
                .outputs(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                .unwrap()
                .otlp
                .unwrap()
                .endpoint
        };
        // A flag without a path gets /v1/traces; with one, it is kept.
        assert_eq!(http(&["--otlp-endpoint", "http://c:4318"], &[]), "http://c:4318/v1/traces");
        assert_eq!(http(&["--otlp-endpoint", "http://c:4318/"], &[]), "http://c:4318/v1/traces");
        assert_eq!(http(&["--otlp-endpoint", "https://c/otlp/v1/traces"], &[]), "https://c/otlp/v1/traces");
        // The generic variable is a base URL; the traces one is used as it is.
        assert_eq!(http(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]), "http://c:4318/v1/traces");
        assert_eq!(
            http(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/")]),
            "http://c:4318/base/v1/traces"
        );
        assert_eq!(http(&[], &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/in")]), "http://c:4318/in");
        // gRPC endpoints are left alone.
        let o = cli(&["--otlp-endpoint", "http://c:4317"]).outputs(|_| None).unwrap().otlp.unwrap();
        assert_eq!((o.endpoint.as_str(), o.protocol), ("http://c:4317", crate::export::otlp::Protocol::Grpc));
    }

    #[test]
    fn otlp_environment_and_flags() {
        use crate::export::otlp::{Compression, Protocol};
        let env = |k: &str| {
            match k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("https://c:4318"),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf"),
                "OTEL_EXPORTER_OTLP_HEADERS" => Some("Authorization=Bearer%20abc, x-tenant = t1 ,"),
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("x-tenant=t2"),
                "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("2500"),
                "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("gzip"),
                "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some("/etc/ca.pem"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let o = cli(&[]).outputs(env).unwrap().otlp.unwrap();
        assert_eq!(o.endpoint, "https://c:4318/v1/traces");
        assert_eq!(o.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            o.headers,
            vec![("authorization".to_owned(), "Bearer abc".to_owned()), ("x-tenant".to_owned(), "t2".to_owned())]
        );
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.compression, Compression::Gzip);
        assert_eq!(o.certificate, Some(PathBuf::from("/etc/ca.pem")));
        // Flags win, header by header.
        let o = cli(&[
            "--otlp-protocol",
            "grpc",
            "--otlp-header",
            "X-Tenant=flag",
            "--otlp-timeout",
            "3s",
            "--otlp-compression",
            "none",
            "--otlp-certificate",
            "/tmp/other.pem",
        ])
        .outputs(env)
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!((o.protocol, o.endpoint.as_str()), (Protocol::Grpc, "https://c:4318"));
        assert_eq!(o.headers[1], ("x-tenant".to_owned(), "flag".to_owned()));
        assert_eq!((o.timeout, o.compression), (Duration::from_secs(3), Compression::None));
        assert_eq!(o.certificate, Some(PathBuf::from("/tmp/other.pem")));
        // Defaults.
        let o = cli(&["--otlp-endpoint", "http://c:4317"]).outputs(|_| None).unwrap().otlp.unwrap();
        assert_eq!((o.timeout, o.compression, o.headers.len()), (Duration::from_secs(10), Compression::None, 0));
    }

    #[test]
    fn bad_otlp_settings_are_one_line_naming_the_setting() {
        let cases: [(&[&str], (&str, &str), &str); 6] = [
            (&[], ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), "not supported"),
            (&[], ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"), "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            (&[], ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"), "milliseconds"),
            (&[], ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"), "gzip or none"),
            (&[], ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"), "OTEL_EXPORTER_OTLP_HEADERS: `novalue` is not KEY=VALUE"),
            (&["--otlp-header", "broken"], ("X", ""), "--otlp-header `broken` is not KEY=VALUE"),
        ];
        for (args, (var, value), words) in cases {
            let mut all = vec!["--otlp-endpoint", "http://c:4317"];
            all.extend_from_slice(args);
            let e = cli(&all).outputs(|k| (k == var).then(|| value.to_owned())).unwrap_err().to_string();
            assert!(e.contains(words) && !e.contains('\n'), "{var}={value} {args:?}: {e}");
        }
        assert!(Cli::try_parse_from(["ghostwire", "--otlp-protocol", "zipkin"]).is_err());
        assert!(Cli::try_parse_from(["ghostwire", "--otlp-timeout", "0s", "--otlp-endpoint", "http://c:1"])
            .map_err(|e| e.to_string())
            .and_then(|c| c.outputs(|_| None).map_err(|e| e.to_string()))
            .is_err_and(|e| e.contains("longer than zero")));
    }

    #[test]
    fn resource_attributes_layer_and_keep_service_name_per_process() {
        let c = with_file("resource_attributes: { k8s.cluster.name: file, team: a }\n", &[]);
        let env = |k: &str| {
            (k == "OTEL_RESOURCE_ATTRIBUTES")
                .then(|| "k8s.cluster.name=prod%2Deu,service.name=agent,deployment.environment.name=prod".to_owned())
        };
        let attrs = c.resource_attributes(env).unwrap();
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("k8s.cluster.name"), Some("prod-eu"));
        assert_eq!(get("team"), Some("a"));
        assert_eq!(get("deployment.environment.name"), Some("prod"));
        assert_eq!(get("service.name"), None, "the agent's own service.name is not applied");
        let c = with_file("", &["--resource-attribute", "k8s.cluster.name=flag"]);
        let attrs = c.resource_attributes(env).unwrap();
        assert!(attrs.contains(&("k8s.cluster.name".to_owned(), "flag".to_owned())), "{attrs:?}");
        assert_eq!(attrs.iter().filter(|(k, _)| k == "k8s.cluster.name").count(), 1, "{attrs:?}");
        let c = with_file("", &["--resource-attribute", "service.name=x"]);
        assert!(c.resource_attributes(|_| None).unwrap_err().to_string().contains("service.name"));
    }

    #[test]
    fn outputs_and_errors() {
        let o = cli(&["--output", "jsonl:/tmp/x.jsonl"]).outputs(|_| None).unwrap();
        assert_eq!(o.jsonl, Some(PathBuf::from("/tmp/x.jsonl")));
        assert!(!o.console);
        assert_eq!(cli(&["--output", "zipkin"]).outputs(|_| None), Err(ConfigError::UnknownOutput("zipkin".into())));
        assert_eq!(
            cli(&["--otlp-endpoint", "collector:4317"]).outputs(|_| None),
            Err(ConfigError::Endpoint("collector:4317".into()))
        );
        assert_eq!(cli(&["--capture-bytes", "100000"]).validate(), Err(ConfigError::CaptureBytes(100_000)));
        assert_eq!(cli(&["--capture-bytes", "16385"]).validate(), Err(ConfigError::CaptureBytes(16_385)));
        assert!(cli(&["--capture-bytes", "16384"]).validate().is_ok());
        assert_eq!(cli(&["--ring-buffer-bytes", "16384"]).validate(), Err(ConfigError::RingBytes(16_384)));
        assert!(cli(&["--ring-buffer-bytes", "65536"]).validate().is_ok());
        assert_eq!(cli(&["--hooks", "kprobes"]).validate(), Err(ConfigError::Hooks("kprobes".into())));
        assert!(cli(&["--pid", "1", "--pid", "2", "--port", "80"]).validate().is_ok());
        assert!(cli(&["--no-tls"]).no_tls);
        assert!(!cli(&[]).no_tls, "TLS is traced unless asked not to");
    }

    #[test]
    fn sampling_from_flags_and_the_otel_environment() {
        let none = |_: &str| None;
        let d = cli(&[]).sampling(none).unwrap();
        assert_eq!(d, crate::sample::Config::default());
        assert!(d.parent_based && (d.ratio - 1.0).abs() < f64::EPSILON && !d.buffered());
        let env = |k: &str| match k {
            "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.1".to_owned()),
            _ => None,
        };
        let c = cli(&[]).sampling(env).unwrap();
        assert!(!c.parent_based && (c.ratio - 0.1).abs() < 1e-12);
        // The flag wins over the variable; parent-basedness stays the variable's.
        let c = cli(&["--sample-ratio", "0.25"]).sampling(env).unwrap();
        assert!(!c.parent_based && (c.ratio - 0.25).abs() < 1e-12);
        let off = |k: &str| (k == "OTEL_TRACES_SAMPLER").then(|| "parentbased_always_off".to_owned());
        let c = cli(&[]).sampling(off).unwrap();
        assert!(c.parent_based && c.ratio == 0.0);
        let bad = |k: &str| (k == "OTEL_TRACES_SAMPLER").then(|| "jaeger_remote".to_owned());
        assert_eq!(cli(&[]).sampling(bad), Err(ConfigError::Sampler("jaeger_remote".into())));
        assert_eq!(cli(&["--sample-ratio", "1.5"]).sampling(none), Err(ConfigError::Ratio("1.5".into())));
        assert!(matches!(
            cli(&["--sample-max-traces-per-second", "0"]).sampling(none),
            Err(ConfigError::Positive("sample-max-traces-per-second", _))
        ));
        let c = cli(&["--sample-keep-errors", "--sample-keep-slower-than", "250ms", "--sample-quiet-period", "2s"])
            .sampling(none)
            .unwrap();
        assert!(c.keep_errors && c.buffered());
        assert_eq!(c.keep_slower_than, Some(Duration::from_millis(250)));
        assert_eq!(c.quiet, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["ghostwire", "--sample-keep-slower-than", "fast"]).is_err());
    }

    /// `ghostwire ARGS --config FILE` with `text` as the file.
    fn with_file(text: &str, args: &[&str]) -> Cli {
        let dir =
            std::env::temp_dir().join(format!("ghostwire-config-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ghostwire.yaml");
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        let all = ["ghostwire", "--config", path.as_str()].into_iter().chain(args.iter().copied());
        let cli = Cli::load(all).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        cli
    }

    #[test]
    fn the_reference_file_loads_and_says_the_defaults() {
        let text = include_str!("../../../deploy/ghostwire.yaml");
        file::parse(text).unwrap();
        let none = |_: &str| None;
        let (from_file, plain) = (with_file(text, &[]), cli(&[]));
        assert_eq!(from_file.outputs(none), plain.outputs(none));
        assert_eq!(from_file.sampling(none), plain.sampling(none));
        assert_eq!(from_file.metrics_addr(), plain.metrics_addr());
        assert_eq!(from_file.kubernetes(none), plain.kubernetes(none));
        assert_eq!(from_file.resource_attributes(none), plain.resource_attributes(none));
        // With an endpoint, every outputs.otlp default is the flags'.
        let ep = ["--otlp-endpoint", "http://c:4317"];
        assert_eq!(with_file(text, &ep).outputs(none), cli(&ep).outputs(none));
        let key = |c: &Cli| {
            format!(
                "{:?}",
                (
                    &c.pids,
                    &c.ports,
                    &c.exes,
                    &c.instrumented,
                    c.capture_bytes,
                    c.ring_buffer_bytes,
                    c.queue_size,
                    c.no_tls,
                    c.nice,
                    c.stats_interval
                )
            )
        };
        assert_eq!(key(&from_file), key(&plain), "every default in deploy/ghostwire.yaml is the flag's");
    }

    #[test]
    fn layering_defaults_then_file_then_environment_then_flags() {
        let text = "filter: { ports: [8080, 8081] }\n\
                    outputs: { otlp: { endpoint: http://file:4317 }, jsonl: /tmp/spans.jsonl, queue_size: 100 }\n\
                    capture: { bytes: 4096, tls: false }\n\
                    sampling: { ratio: 0.5, keep_errors: true, keep_slower_than: 2s, max_traces_per_second: 20 }\n\
                    metrics: { listen: \"127.0.0.1:9999\" }\n\
                    instrumented: [checkout]\n";
        let none = |_: &str| None;
        let c = with_file(text, &[]);
        assert_eq!(c.ports, vec![8080, 8081]);
        assert_eq!((c.capture_bytes, c.queue_size, c.no_tls), (4096, 100, true));
        assert_eq!(c.instrumented, vec!["checkout".to_owned()]);
        let o = c.outputs(none).unwrap();
        assert_eq!(o.otlp.as_ref().map(|o| o.endpoint.as_str()), Some("http://file:4317"));
        assert_eq!(o.jsonl, Some(PathBuf::from("/tmp/spans.jsonl")));
        assert!(!o.console);
        let s = c.sampling(none).unwrap();
        assert!((s.ratio - 0.5).abs() < 1e-12 && s.keep_errors && s.max_traces_per_second == Some(20.0));
        assert_eq!(s.keep_slower_than, Some(Duration::from_secs(2)));
        assert_eq!(c.metrics_addr(), Ok(Some("127.0.0.1:9999".parse().unwrap())));
        // The environment wins over the file.
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4317".to_owned()),
            "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.1".to_owned()),
            _ => None,
        };
        assert_eq!(c.outputs(env).unwrap().otlp.as_ref().map(|o| o.endpoint.as_str()), Some("http://env:4317"));
        assert!((c.sampling(env).unwrap().ratio - 0.1).abs() < 1e-12);
        // Flags win over both.
        let c = with_file(
            text,
            &[
                "--port",
                "9090",
                "--otlp-endpoint",
                "http://flag:4317",
                "--sample-ratio",
                "0.25",
                "--capture-bytes",
                "512",
            ],
        );
        assert_eq!(c.ports, vec![9090]);
        assert_eq!(c.capture_bytes, 512);
        assert_eq!(c.outputs(env).unwrap().otlp.as_ref().map(|o| o.endpoint.as_str()), Some("http://flag:4317"));
        assert!((c.sampling(env).unwrap().ratio - 0.25).abs() < 1e-12);
        // A flag's output list replaces the file's.
        let c = with_file(text, &["--output", "console"]);
        let o = c.outputs(none).unwrap();
        assert!(o.console && o.jsonl.is_none());
    }

    #[test]
    fn kubernetes_settings_and_the_node_name() {
        let none = |_: &str| None;
        let d = cli(&[]).kubernetes(none);
        assert_eq!((d.mode, d.kubeconfig), (crate::k8s::Mode::Auto, None));
        assert_eq!(d.node, crate::k8s::host_node_name());
        let downward = |k: &str| (k == "GHOSTWIRE_NODE_NAME").then(|| "node-env".to_owned());
        assert_eq!(cli(&[]).kubernetes(downward).node, "node-env");
        let file = with_file("kubernetes: { mode: off, node_name: node-file, kubeconfig: /etc/kc }\n", &[]);
        let k = file.kubernetes(none);
        assert_eq!(
            (k.mode, k.node.as_str(), k.kubeconfig),
            (crate::k8s::Mode::Off, "node-file", Some("/etc/kc".into()))
        );
        // The environment wins over the file, the flags over both.
        assert_eq!(file.kubernetes(downward).node, "node-env");
        let flags = with_file(
            "kubernetes: { mode: off, node_name: node-file }\n",
            &["--kubernetes", "on", "--kubernetes-node", "node-flag", "--kubeconfig", "/k"],
        );
        let k = flags.kubernetes(downward);
        assert_eq!((k.mode, k.node.as_str(), k.kubeconfig), (crate::k8s::Mode::On, "node-flag", Some("/k".into())));
        assert!(Cli::try_parse_from(["ghostwire", "--kubernetes", "maybe"]).is_err());
    }

    #[test]
    fn a_bad_file_stops_the_load_in_one_line() {
        let dir = std::env::temp_dir().join(format!("ghostwire-badconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "sampling:\n  ratio: 0.5\n  keep_erors: true\n").unwrap();
        let e = Cli::load(["ghostwire", "--config", path.to_str().unwrap()]).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.starts_with(&format!("config file {}: sampling.keep_erors: unknown field", path.display())), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn metrics_listen_defaults_to_loopback() {
        assert_eq!(cli(&[]).metrics_addr(), Ok(None));
        assert_eq!(cli(&["--metrics-listen"]).metrics_addr(), Ok(Some("127.0.0.1:9464".parse().unwrap())));
        assert_eq!(cli(&["--metrics-listen", "9000"]).metrics_addr(), Ok(Some("127.0.0.1:9000".parse().unwrap())));
        assert_eq!(cli(&["--metrics-listen", "[::1]:9464"]).metrics_addr(), Ok(Some("[::1]:9464".parse().unwrap())));
        assert_eq!(
            cli(&["--metrics-listen", "nowhere"]).metrics_addr(),
            Err(ConfigError::MetricsListen("nowhere".into()))
        );
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err() && parse_duration("3h").is_err());
    }
}
