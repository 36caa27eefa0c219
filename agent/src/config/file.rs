//! The configuration file (`--config FILE`, YAML): the flags' settings in sections named
//! after them. Every key may be left out (its default is the flag's); a key the agent
//! does not know is an error, so that a typo never silently means "default".
//!
//! Layering, lowest first: defaults < this file < the `OTEL_*` environment < flags.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole file. `deploy/ghostwire.yaml` is the reference: every key, at its default.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub filter: Filter,
    pub outputs: Outputs,
    pub capture: Capture,
    pub sampling: Sampling,
    pub metrics: Metrics,
    /// `--instrumented`: services or executables that export their own spans.
    pub instrumented: Vec<String>,
    /// `--stats-interval`, in seconds (0: counters only at exit).
    pub stats_interval: Option<u64>,
    /// `--nice`.
    pub nice: Option<i32>,
    pub kubernetes: Kubernetes,
    /// `--resource-attribute`: node-level attributes on every span's resource (below
    /// `OTEL_RESOURCE_ATTRIBUTES`), e.g. `k8s.cluster.name`.
    pub resource_attributes: BTreeMap<String, String>,
}

/// `--kubernetes`, `--kubernetes-node` (below `GHOSTWIRE_NODE_NAME`), `--kubeconfig`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Kubernetes {
    pub mode: Option<crate::k8s::Mode>,
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}

/// `--pid`, `--port`, `--exe`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub exes: Vec<String>,
}

/// Where spans go: `--otlp-endpoint`, `--output jsonl:PATH`, `--output console`,
/// `--queue-size`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Outputs {
    pub otlp: Otlp,
    pub jsonl: Option<PathBuf>,
    pub console: Option<bool>,
    pub queue_size: Option<usize>,
}

/// `--otlp-*`: each key below the matching `OTEL_EXPORTER_OTLP_*` variable.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Otlp {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    /// `--otlp-header`: sent with every export request (e.g. `authorization`).
    pub headers: BTreeMap<String, String>,
    #[serde(deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    pub compression: Option<Compression>,
    pub certificate: Option<PathBuf>,
}

pub use crate::export::otlp::{Compression, Protocol};

/// `--capture-bytes`, `--ring-buffer-bytes`, `--no-tls` (as `tls: false`).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    pub bytes: Option<u32>,
    pub ring_buffer_bytes: Option<u32>,
    pub tls: Option<bool>,
}

/// The `--sample-*` flags.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub ratio: Option<f64>,
    pub keep_errors: Option<bool>,
    #[serde(deserialize_with = "duration")]
    pub keep_slower_than: Option<Duration>,
    pub max_traces_per_second: Option<f64>,
    pub adaptive_per_operation: Option<f64>,
    #[serde(deserialize_with = "duration")]
    pub quiet_period: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub max_wait: Option<Duration>,
    pub buffer_traces: Option<usize>,
    pub buffer_bytes: Option<usize>,
}

/// `--metrics-listen`: `null` (off), `HOST:PORT` or a port on 127.0.0.1.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub listen: Option<String>,
}

/// A duration as the flags write it (`500ms`, `2s`, `1m`) or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Text(s)) => super::parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
        Some(Raw::Seconds(n)) => super::parse_duration(&n.to_string()).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Why a configuration file was refused: one line, naming the file, the key and the
/// problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("cannot read the config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<File, FileError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| FileError::Read { path: shown.clone(), reason: e.to_string() })?;
    parse(&text).map_err(|reason| FileError::Invalid { path: shown, reason })
}

/// Parses a file's text. The error names the key (`sampling.ratio`) and what is wrong
/// with it, on one line.
pub fn parse(text: &str) -> Result<File, String> {
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    let options = serde_saphyr::options! { with_snippet: false };
    let mut key = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            key = e.path().to_string();
            e.into_inner()
        })
    });
    let file: File = result.map_err(|e| one_line(&key, &e.without_snippet().to_string()))?;
    file.check()?;
    Ok(file)
}

impl File {
    /// What the types cannot say: ranges, and what is not supported (yet).
    fn check(&self) -> Result<(), String> {
        let s = &self.sampling;
        if let Some(r) = s.ratio.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(format!("sampling.ratio: {r} is out of range: use a number from 0.0 to 1.0"));
        }
        for (key, value) in [
            ("sampling.max_traces_per_second", s.max_traces_per_second),
            ("sampling.adaptive_per_operation", s.adaptive_per_operation),
        ] {
            if let Some(n) = value.filter(|n| !(n.is_finite() && *n > 0.0)) {
                return Err(format!("{key}: {n} must be a positive number, or null (off)"));
            }
        }
        if let Some(b) = self.capture.bytes.filter(|b| *b == 0 || *b as usize > ghostwire_common::MAX_CAPTURE) {
            return Err(format!("capture.bytes: {b} is out of range: use 1 to {}", ghostwire_common::MAX_CAPTURE));
        }
        if let Some(r) = self.capture.ring_buffer_bytes.filter(|r| !r.is_power_of_two() || *r < super::MIN_RING_BYTES) {
            return Err(format!(
                "capture.ring_buffer_bytes: {r} must be a power of two of at least {}",
                super::MIN_RING_BYTES
            ));
        }
        if let Some(n) = self.nice.filter(|n| !(0..=19).contains(n)) {
            return Err(format!("nice: {n} is out of range: use 0 to 19"));
        }
        if let Some(e) =
            self.outputs.otlp.endpoint.as_deref().filter(|e| !e.starts_with("http://") && !e.starts_with("https://"))
        {
            return Err(format!(
                "outputs.otlp.endpoint: `{e}` must start with http:// or https:// (e.g. http://collector:4317)"
            ));
        }
        if let Some(t) = self.outputs.otlp.timeout.filter(Duration::is_zero) {
            return Err(format!("outputs.otlp.timeout: {t:?} must be longer than zero"));
        }
        for name in self.outputs.otlp.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("outputs.otlp.headers: `{name}` is not a valid HTTP header name"));
            }
        }
        if self.resource_attributes.contains_key("service.name") {
            return Err(
                "resource_attributes: service.name is each process's own; it cannot be set for the node".to_owned()
            );
        }
        Ok(())
    }
}

/// `key: message`, the message on one line.
fn one_line(key: &str, message: &str) -> String {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if key.is_empty() || key == "." {
        message
    } else {
        format!("{key}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_loads() {
        let f = parse(
            r#"
filter:   { pids: [], ports: [8080], exes: [] }
outputs:
  otlp:   { endpoint: "http://collector:4317", protocol: grpc }
  jsonl:  /var/log/ghostwire/spans.jsonl
  console: false
capture:  { bytes: 16384, ring_buffer_bytes: 16777216 }
sampling: { ratio: 1.0, keep_errors: false, keep_slower_than: null,
            max_traces_per_second: null, adaptive_per_operation: null }
metrics:  { listen: "127.0.0.1:9464" }
instrumented: []
"#,
        )
        .unwrap();
        assert_eq!(f.filter.ports, vec![8080]);
        assert_eq!(f.outputs.otlp.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(f.outputs.otlp.protocol, Some(Protocol::Grpc));
        assert_eq!(f.outputs.jsonl, Some(PathBuf::from("/var/log/ghostwire/spans.jsonl")));
        assert_eq!(f.sampling.ratio, Some(1.0));
        assert_eq!(f.sampling.keep_slower_than, None);
        assert_eq!(f.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn an_empty_file_is_all_defaults_and_durations_take_both_forms() {
        assert_eq!(parse("").unwrap(), File::default());
        assert_eq!(parse("# nothing\n").unwrap(), File::default());
        let f = parse("sampling: { keep_slower_than: 250ms, quiet_period: 2, max_wait: 1.5 }").unwrap();
        assert_eq!(f.sampling.keep_slower_than, Some(Duration::from_millis(250)));
        assert_eq!(f.sampling.quiet_period, Some(Duration::from_secs(2)));
        assert_eq!(f.sampling.max_wait, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_bad_file_is_one_line_naming_the_key() {
        let cases = [
            ("sampling: { ratioo: 0.5 }", "sampling.ratioo", "unknown field"),
            ("sampling:\n  ratio: lots\n", "sampling.ratio", ""),
            ("filter: { ports: [80, 70000] }", "filter.ports[1]", "invalid u16"),
            ("surprise: 1", "surprise", "unknown field"),
            ("sampling: { keep_slower_than: fast }", "sampling.keep_slower_than", "duration"),
            ("sampling: { ratio: 1.5 }", "sampling.ratio", "out of range"),
            ("sampling: { max_traces_per_second: 0 }", "sampling.max_traces_per_second", "positive"),
            ("capture: { bytes: 100000 }", "capture.bytes", "out of range"),
            ("capture: { ring_buffer_bytes: 1000 }", "capture.ring_buffer_bytes", "power of two"),
            ("nice: 40", "nice", "out of range"),
            ("kubernetes: { mode: maybe }", "kubernetes.mode", ""),
            ("kubernetes: { node: x }", "kubernetes.node", "unknown field"),
            ("outputs: { otlp: { endpoint: collector:4317 } }", "outputs.otlp.endpoint", "http://"),
            ("outputs: { otlp: { protocol: zipkin } }", "outputs.otlp.protocol", ""),
            ("outputs: { otlp: { compression: zstd } }", "outputs.otlp.compression", ""),
            ("outputs: { otlp: { timeout: 0s } }", "outputs.otlp.timeout", "longer than zero"),
            ("outputs: { otlp: { headers: { \"bad name\": x } } }", "outputs.otlp.headers", "header name"),
            ("resource_attributes: { service.name: x }", "resource_attributes", "service.name"),
        ];
        for (text, key, words) in cases {
            let e = parse(text).expect_err(text);
            assert!(!e.contains('\n'), "one line: {e}");
            assert!(e.starts_with(&format!("{key}: ")), "{text}: names {key}: {e}");
            assert!(e.contains(words), "{text}: says {words}: {e}");
        }
        assert!(parse("filter: [").is_err(), "broken YAML");
    }

    #[test]
    fn an_unreadable_file_says_which() {
        let e = load(Path::new("/nonexistent/ghostwire.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read the config file /nonexistent/ghostwire.yaml: "), "{e}");
    }
}
