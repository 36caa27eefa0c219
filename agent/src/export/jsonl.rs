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

use super::encode::resource_groups;
use super::queue::SpanQueue;
use super::{OutputCounters, SCOPE_NAME};
use crate::span::{AttrValue, Attribute, Span, SpanKind, Status};

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
/// OTLP/JSON as the specification writes it: field names in lowerCamelCase, trace and
/// span ids as lower-case hex, enums as integers, 64-bit integers as decimal strings,
/// fields at their default value left out. It is written straight from the span model
/// (strings escaped by serde_json) into `line`, which is cleared first and reused
/// between batches. The unit tests read it back with opentelemetry-proto's serde types
/// and compare it with [`to_otlp`](super::to_otlp)'s message.
pub fn encode_line(spans: &[Arc<Span>], line: &mut Vec<u8>, groups: &mut (Vec<usize>, Vec<usize>)) {
    line.clear();
    let (firsts, group_of) = groups;
    resource_groups(spans, firsts, group_of);
    line.extend_from_slice(b"{\"resourceSpans\":[");
    for (g, &first) in firsts.iter().enumerate() {
        if g > 0 {
            line.push(b',');
        }
        let r = &spans[first].resource;
        line.extend_from_slice(b"{\"resource\":{\"attributes\":[");
        let mut comma = false;
        if !r.attributes.iter().any(|(k, _)| k == "service.name") {
            key_value(line, "service.name", &AttrValue::from(r.service_name.as_str()));
            comma = true;
        }
        attributes(line, &r.attributes, comma);
        line.extend_from_slice(b"]},\"scopeSpans\":[{\"scope\":{\"name\":");
        string(line, SCOPE_NAME);
        line.extend_from_slice(b",\"version\":");
        string(line, env!("CARGO_PKG_VERSION"));
        line.extend_from_slice(b"},\"spans\":[");
        let mut first_span = true;
        for (s, _) in spans.iter().zip(group_of.iter()).skip(first).filter(|(_, &sg)| sg == g) {
            if !std::mem::take(&mut first_span) {
                line.push(b',');
            }
            span(line, s);
        }
        line.extend_from_slice(b"]}]}");
    }
    line.extend_from_slice(b"]}\n");
}

fn span(out: &mut Vec<u8>, s: &Span) {
    out.extend_from_slice(b"{\"traceId\":");
    hex(out, &s.trace_id);
    out.extend_from_slice(b",\"spanId\":");
    hex(out, &s.span_id);
    if !s.trace_state.is_empty() {
        out.extend_from_slice(b",\"traceState\":");
        string(out, &s.trace_state);
    }
    out.extend_from_slice(b",\"parentSpanId\":");
    if s.is_root() {
        out.extend_from_slice(b"\"\"");
    } else {
        hex(out, &s.parent_span_id);
    }
    if s.flags != 0 {
        let _ = write!(out, ",\"flags\":{}", s.flags);
    }
    out.extend_from_slice(b",\"name\":");
    string(out, &s.name);
    let kind = match s.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    };
    let _ = write!(
        out,
        ",\"kind\":{kind},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
        s.start_unix_ns, s.end_unix_ns
    );
    attributes(out, &s.attributes, false);
    out.extend_from_slice(b"],\"status\":{");
    if let Status::Error { message } = &s.status {
        out.extend_from_slice(b"\"code\":2,\"message\":");
        string(out, message);
    }
    out.extend_from_slice(b"}}");
}

fn attributes(out: &mut Vec<u8>, attrs: &[Attribute], mut comma: bool) {
    for (k, v) in attrs {
        if std::mem::replace(&mut comma, true) {
            out.push(b',');
        }
        key_value(out, k, v);
    }
}

fn key_value(out: &mut Vec<u8>, key: &str, v: &AttrValue) {
    out.extend_from_slice(b"{\"key\":");
    string(out, key);
    out.extend_from_slice(b",\"value\":{");
    match v {
        AttrValue::Str(s) => {
            out.extend_from_slice(b"\"stringValue\":");
            string(out, s);
        }
        AttrValue::Int(i) => {
            let _ = write!(out, "\"intValue\":\"{i}\"");
        }
        AttrValue::Bool(b) => {
            let _ = write!(out, "\"boolValue\":{b}");
        }
    }
    out.extend_from_slice(b"}}");
}

/// A JSON string, escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn hex(out: &mut Vec<u8>, id: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in id {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    out.push(b'"');
}

pub(crate) struct JsonlWriter {
    /// `None` only while a write is running on the blocking pool.
    file: Option<File>,
    path: PathBuf,
    queue: Arc<SpanQueue>,
    counters: Arc<OutputCounters>,
    failing: bool,
    /// Reused between batches: the line being written, and the resource grouping.
    line: Vec<u8>,
    groups: (Vec<usize>, Vec<usize>),
}

impl JsonlWriter {
    pub(crate) fn new(file: File, path: PathBuf, queue: Arc<SpanQueue>, counters: Arc<OutputCounters>) -> Self {
        Self { file: Some(file), path, queue, counters, failing: false, line: Vec::new(), groups: Default::default() }
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
        encode_line(batch, &mut self.line, &mut self.groups);
        let line = std::mem::take(&mut self.line);
        let Some(mut file) = self.file.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&line).and_then(|()| file.flush());
            (file, r, line)
        })
        .await;
        let result = match joined {
            Ok((file, r, line)) => {
                self.file = Some(file);
                self.line = line;
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
    use crate::export::{to_otlp, ExportConfig, Exporters};
    use crate::span::Resource;
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
        let mut line = Vec::new();
        encode_line(&sample(), &mut line, &mut Default::default());
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

    #[test]
    fn reads_back_as_the_same_request_with_hostile_strings() {
        let a = resource(1, "quote\"d");
        let b = Arc::new(Resource { pid: 2, service_name: "bare".into(), attributes: vec![] });
        let mut s = (*mk_span(&a, 1, 2, 3, SpanKind::Client, "GET \\ \u{1}\n", 0, 7)).clone();
        s.trace_state = "k=v,x=\"y\"".into();
        s.flags = 0;
        s.attributes = vec![
            (Cow::Borrowed("url.full"), "http://h/ä?x=</script>".into()),
            (Cow::Borrowed("n"), AttrValue::Int(i64::MIN)),
        ];
        let spans = vec![
            Arc::new(s),
            mk_span(&b, 4, 5, 0, SpanKind::Server, "POST", 1, 2),
            mk_span(&a, 1, 6, 2, SpanKind::Server, "x", 3, 4),
        ];
        let mut line = Vec::new();
        encode_line(&spans, &mut line, &mut Default::default());
        let back: ExportTraceServiceRequest = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, to_otlp(&spans));
        assert_eq!(back.resource_spans.len(), 2);
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
