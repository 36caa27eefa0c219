//! `--output jsonl:PATH`: each batch becomes one line holding the OTLP/JSON encoding of an
//! `ExportTraceServiceRequest` (the format of the collector's file exporter), so the file
//! can be replayed into any OTLP/JSON consumer. Lines are appended and written with one
//! `write` each as soon as the batch is taken, so readers can follow the file live.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::queue::SpanQueue;
use super::{to_otlp, OutputCounters};
use crate::span::Span;

/// Opens (creates, appends to) the output file.
pub(crate) fn open(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open JSONL output {}", path.display()))
}

/// One JSONL line (with its trailing newline) for `spans`.
///
/// The `with-serde` encoding of opentelemetry-proto matches the OTLP/JSON rules: field
/// names in lowerCamelCase, trace and span ids as lower-case hex, enums as integers,
/// 64-bit integers as decimal strings. The unit tests below pin this down.
pub fn encode_line(spans: &[Arc<Span>]) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&to_otlp(spans))?;
    line.push(b'\n');
    Ok(line)
}

pub(crate) struct JsonlWriter {
    /// `None` only while a write is running on the blocking pool.
    file: Option<File>,
    path: PathBuf,
    queue: Arc<SpanQueue>,
    counters: Arc<OutputCounters>,
    failing: bool,
}

impl JsonlWriter {
    pub(crate) fn new(file: File, path: PathBuf, queue: Arc<SpanQueue>, counters: Arc<OutputCounters>) -> Self {
        Self { file: Some(file), path, queue, counters, failing: false }
    }

    pub(crate) async fn run(mut self, batch_size: usize, batch_timeout: Duration) {
        while let Some(batch) = self.queue.next_batch(batch_size, batch_timeout).await {
            if batch.is_empty() {
                continue;
            }
            self.queue.set_in_flight(batch.len());
            self.write_batch(&batch).await;
            self.queue.set_in_flight(0);
        }
    }

    async fn write_batch(&mut self, batch: &[Arc<Span>]) {
        let n = batch.len();
        let line = match encode_line(batch) {
            Ok(l) => l,
            Err(e) => {
                self.counters.error();
                self.counters.failed("jsonl", n, format_args!("encoding failed: {e}"));
                return;
            }
        };
        let Some(mut file) = self.file.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&line).and_then(|()| file.flush());
            (file, r)
        })
        .await;
        let result = match joined {
            Ok((file, r)) => {
                self.file = Some(file);
                r
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        match result {
            Ok(()) => {
                self.counters.exported(n);
                if std::mem::replace(&mut self.failing, false) {
                    log::info!("JSONL output {}: writing again", self.path.display());
                }
            }
            Err(e) => {
                self.counters.error();
                self.counters.failed("jsonl", n, format_args!("write to {} failed: {e}", self.path.display()));
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!(
                        "JSONL output {}: write failed ({e}); spans are dropped until writing works again \
                         (check free disk space and permissions)",
                        self.path.display()
                    );
                }
                if self.file.is_none() {
                    // The write task panicked and took the file with it: reopen.
                    match open(&self.path) {
                        Ok(f) => self.file = Some(f),
                        Err(e) => log::debug!("jsonl: {e:#}"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::{mk_span, resource};
    use crate::export::{ExportConfig, Exporters};
    use crate::span::{AttrValue, SpanKind, Status};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use serde_json::Value;
    use std::borrow::Cow;

    fn temp_path(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        std::env::temp_dir().join(format!("ghostwire-{tag}-{}-{nanos}.jsonl", std::process::id()))
    }

    fn sample() -> Vec<Arc<Span>> {
        let r = resource(4242, "api");
        let root = mk_span(&r, 0x4b, 0xa1, 0, SpanKind::Server, "GET", 0, 100);
        let mut child = (*mk_span(&r, 0x4b, 0xb2, 0xa1, SpanKind::Client, "GET", 10, 50)).clone();
        child.status = Status::Error { message: "HTTP 502".into() };
        child.attributes = vec![
            (Cow::Borrowed("url.path"), "/users/1".into()),
            (Cow::Borrowed("http.response.status_code"), AttrValue::Int(502)),
            (Cow::Borrowed("ghostwire.partial"), AttrValue::Bool(false)),
        ];
        vec![root, Arc::new(child)]
    }

    fn is_lower_hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn encoding_follows_the_otlp_json_spec() {
        let line = encode_line(&sample()).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "exactly one line");
        let text = std::str::from_utf8(&line).unwrap();
        assert!(!text.contains("null"), "no nulls: {text}");
        let v: Value = serde_json::from_str(text).unwrap();

        let rs = &v["resourceSpans"][0];
        let res_attrs = rs["resource"]["attributes"].as_array().unwrap();
        assert_eq!(res_attrs[0], serde_json::json!({"key": "service.name", "value": {"stringValue": "api"}}));
        assert_eq!(res_attrs[1]["value"]["intValue"], "4242");
        let ss = &rs["scopeSpans"][0];
        assert_eq!(ss["scope"]["name"], "ghostwire");
        let spans = ss["spans"].as_array().unwrap();

        let root = &spans[0];
        assert!(is_lower_hex(root["traceId"].as_str().unwrap(), 32), "{}", root["traceId"]);
        assert_eq!(root["traceId"], "4b".repeat(16));
        assert_eq!(root["spanId"], "a1".repeat(8));
        assert!(is_lower_hex(root["spanId"].as_str().unwrap(), 16));
        assert_eq!(root["parentSpanId"], "", "root: empty parent");
        assert_eq!(root["kind"], 2);
        assert_eq!(root["flags"], 1);
        assert_eq!(root["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(root["endTimeUnixNano"], "1700000000000100000");

        let child = &spans[1];
        assert_eq!(child["parentSpanId"], "a1".repeat(8));
        assert_eq!(child["kind"], 3);
        assert_eq!(child["status"], serde_json::json!({"code": 2, "message": "HTTP 502"}));
        let attrs = child["attributes"].as_array().unwrap();
        assert_eq!(attrs[0], serde_json::json!({"key": "url.path", "value": {"stringValue": "/users/1"}}));
        assert_eq!(attrs[1], serde_json::json!({"key": "http.response.status_code", "value": {"intValue": "502"}}));
        assert_eq!(attrs[2], serde_json::json!({"key": "ghostwire.partial", "value": {"boolValue": false}}));

        // And it reads back as the same request.
        let back: ExportTraceServiceRequest = serde_json::from_str(text).unwrap();
        assert_eq!(back, to_otlp(&sample()));
    }

    #[tokio::test]
    async fn writes_one_line_per_batch_and_flushes() {
        let path = temp_path("jsonl");
        let cfg = ExportConfig {
            jsonl_path: Some(path.clone()),
            batch_size: 2,
            batch_timeout: Duration::from_millis(20),
            ..Default::default()
        };
        let ex = Exporters::start(cfg).unwrap();
        let spans = sample();
        ex.submit((*spans[0]).clone());
        ex.submit((*spans[1]).clone());
        // Written while the exporter is still running.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') {
                assert_eq!(text.lines().count(), 1);
                break;
            }
            assert!(std::time::Instant::now() < until, "line not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ex.submit((*spans[0]).clone());
        let counters = ex.counters("jsonl").unwrap();
        ex.shutdown(Duration::from_secs(5)).await;
        assert_eq!(counters.get(), (3, 0, 0));

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let n_spans = |l: &str| {
            let r: ExportTraceServiceRequest = serde_json::from_str(l).unwrap();
            r.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum::<usize>()
        };
        assert_eq!((n_spans(lines[0]), n_spans(lines[1])), (2, 1));
        let _ = std::fs::remove_file(&path);
    }
}
