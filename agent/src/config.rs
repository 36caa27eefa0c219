//! Command line and environment → settings. Flags win over the standard `OTEL_*`
//! environment variables.
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// ghostwire: traces services nobody instrumented. eBPF captures every process's HTTP
/// traffic; ghostwire turns it into OpenTelemetry spans.
#[derive(Debug, Parser)]
#[command(name = "ghostwire", version, about, long_about = None)]
pub struct Cli {
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

    /// OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317. Default: the
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT variable.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

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

/// Smallest ring buffer accepted: a few of the largest records (header, 16 KiB prefix,
/// 4 KiB tail).
pub const MIN_RING_BYTES: u32 = 64 * 1024;

/// Resolved outputs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub otlp_endpoint: Option<String>,
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
}

impl Cli {
    /// Resolves outputs from flags and `env` (a lookup, so tests need no real environment).
    pub fn outputs(&self, env: impl Fn(&str) -> Option<String>) -> Result<Outputs, ConfigError> {
        let mut out = Outputs {
            otlp_endpoint: self
                .otlp_endpoint
                .clone()
                .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
                .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .filter(|e| !e.trim().is_empty()),
            ..Outputs::default()
        };
        if let Some(e) = &out.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConfigError::Endpoint(e.clone()));
            }
        }
        for spec in &self.outputs {
            if let Some(path) = spec.strip_prefix("jsonl:") {
                out.jsonl = Some(PathBuf::from(path));
            } else if spec == "console" {
                out.console = true;
            } else {
                return Err(ConfigError::UnknownOutput(spec.clone()));
            }
        }
        if out.otlp_endpoint.is_none() && out.jsonl.is_none() {
            out.console = true;
        }
        Ok(out)
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
        assert_eq!(o.otlp_endpoint, None);
    }

    #[test]
    fn endpoint_precedence_flag_then_traces_then_generic() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://traces:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://generic:4317".to_owned()),
            _ => None,
        };
        assert_eq!(cli(&[]).outputs(env).unwrap().otlp_endpoint.as_deref(), Some("http://traces:4317"));
        let o = cli(&["--otlp-endpoint", "http://flag:4317"]).outputs(env).unwrap();
        assert_eq!(o.otlp_endpoint.as_deref(), Some("http://flag:4317"));
        assert!(!o.console);
        let generic = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://generic:4317".to_owned());
        assert_eq!(cli(&[]).outputs(generic).unwrap().otlp_endpoint.as_deref(), Some("http://generic:4317"));
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
}
