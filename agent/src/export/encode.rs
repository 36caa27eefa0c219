//! OTLP protobuf written straight from the span model: an `ExportTraceServiceRequest`
//! encoded into one reused buffer, without building opentelemetry-proto's message
//! structs first (which copies every string and allocates every attribute twice over).
//!
//! The bytes are the same message [`to_otlp`](super::to_otlp) builds: one
//! `ResourceSpans` per resource in first-seen order, one `ScopeSpans` each, fields as
//! proto3 encodes them (defaults left out, oneof values always written). The unit tests
//! decode the output with prost and compare it with `to_otlp`'s message.
//!
//! Sizes are computed before anything is written (protobuf prefixes every nested
//! message with its length), from the same functions that write, so they cannot
//! disagree.
use std::sync::Arc;

use prost::encoding::{encode_varint, encoded_len_varint};

use super::SCOPE_NAME;
use crate::span::{AttrValue, Attribute, Resource, Span, SpanKind, Status};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// OTLP `Span.kind` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// OTLP `Status.code` ERROR.
const STATUS_ERROR: u64 = 2;

fn tag(field: u32, wire: u64) -> u64 {
    (u64::from(field) << 3) | wire
}

fn tag_len(field: u32) -> usize {
    encoded_len_varint(tag(field, 0))
}

/// Bytes of a length-delimited field whose payload is `n` bytes.
fn ld_len(field: u32, n: usize) -> usize {
    tag_len(field) + encoded_len_varint(n as u64) + n
}

fn put_ld_header(buf: &mut Vec<u8>, field: u32, n: usize) {
    encode_varint(tag(field, LEN), buf);
    encode_varint(n as u64, buf);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_ld_header(buf, field, b.len());
    buf.extend_from_slice(b);
}

fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => ld_len(1, s.len()),
        AttrValue::Bool(_) => tag_len(2) + 1,
        #[expect(clippy::cast_sign_loss, reason = "protobuf int64 is written as its two's-complement varint")]
        AttrValue::Int(i) => tag_len(3) + encoded_len_varint(*i as u64),
    }
}

fn put_any_value(buf: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        AttrValue::Bool(b) => {
            encode_varint(tag(2, VARINT), buf);
            buf.push(u8::from(*b));
        }
        AttrValue::Int(i) => {
            encode_varint(tag(3, VARINT), buf);
            #[expect(clippy::cast_sign_loss, reason = "protobuf int64 is written as its two's-complement varint")]
            encode_varint(*i as u64, buf);
        }
    }
}

/// `KeyValue` payload length.
fn key_value_len(key: &str, v: &AttrValue) -> usize {
    let k = if key.is_empty() { 0 } else { ld_len(1, key.len()) };
    k + ld_len(2, any_value_len(v))
}

/// Writes `field` = one `KeyValue`.
fn put_key_value(buf: &mut Vec<u8>, field: u32, key: &str, v: &AttrValue) {
    put_ld_header(buf, field, key_value_len(key, v));
    if !key.is_empty() {
        put_bytes(buf, 1, key.as_bytes());
    }
    put_ld_header(buf, 2, any_value_len(v));
    put_any_value(buf, v);
}

fn attributes_len(field: u32, attrs: &[Attribute]) -> usize {
    attrs.iter().map(|(k, v)| ld_len(field, key_value_len(k, v))).sum()
}

fn put_attributes(buf: &mut Vec<u8>, field: u32, attrs: &[Attribute]) {
    for (k, v) in attrs {
        put_key_value(buf, field, k, v);
    }
}

/// `Resource` payload: its attributes, `service.name` first when they lack it.
fn resource_len(r: &Resource) -> usize {
    let service = if has_service_name(r) { 0 } else { ld_len(1, key_value_len("service.name", &service_value(r))) };
    service + attributes_len(1, &r.attributes)
}

fn has_service_name(r: &Resource) -> bool {
    r.attributes.iter().any(|(k, _)| k == "service.name")
}

fn service_value(r: &Resource) -> AttrValue {
    AttrValue::from(r.service_name.as_str())
}

fn put_resource(buf: &mut Vec<u8>, r: &Resource) {
    if !has_service_name(r) {
        put_key_value(buf, 1, "service.name", &service_value(r));
    }
    put_attributes(buf, 1, &r.attributes);
}

/// `InstrumentationScope` payload: name and version.
fn scope_len() -> usize {
    ld_len(1, SCOPE_NAME.len()) + ld_len(2, env!("CARGO_PKG_VERSION").len())
}

fn put_scope(buf: &mut Vec<u8>) {
    put_bytes(buf, 1, SCOPE_NAME.as_bytes());
    put_bytes(buf, 2, env!("CARGO_PKG_VERSION").as_bytes());
}

fn status_len(s: &Status) -> usize {
    match s {
        Status::Unset => 0,
        Status::Error { message } => {
            let m = if message.is_empty() { 0 } else { ld_len(2, message.len()) };
            m + tag_len(3) + encoded_len_varint(STATUS_ERROR)
        }
    }
}

fn put_status(buf: &mut Vec<u8>, s: &Status) {
    if let Status::Error { message } = s {
        if !message.is_empty() {
            put_bytes(buf, 2, message.as_bytes());
        }
        encode_varint(tag(3, VARINT), buf);
        encode_varint(STATUS_ERROR, buf);
    }
}

/// `Span` payload length.
fn span_len(s: &Span) -> usize {
    let mut n = ld_len(1, s.trace_id.len()) + ld_len(2, s.span_id.len());
    if !s.trace_state.is_empty() {
        n += ld_len(3, s.trace_state.len());
    }
    if !s.is_root() {
        n += ld_len(4, s.parent_span_id.len());
    }
    if !s.name.is_empty() {
        n += ld_len(5, s.name.len());
    }
    n += tag_len(6) + 1; // kind: 2 or 3
    if s.start_unix_ns != 0 {
        n += tag_len(7) + 8;
    }
    if s.end_unix_ns != 0 {
        n += tag_len(8) + 8;
    }
    n += attributes_len(9, &s.attributes);
    // Always present (an empty Status is "unset"), as `to_otlp` writes it.
    n += ld_len(15, status_len(&s.status));
    if s.flags != 0 {
        n += tag_len(16) + 4;
    }
    n
}

fn put_span(buf: &mut Vec<u8>, s: &Span) {
    put_bytes(buf, 1, &s.trace_id);
    put_bytes(buf, 2, &s.span_id);
    if !s.trace_state.is_empty() {
        put_bytes(buf, 3, s.trace_state.as_bytes());
    }
    if !s.is_root() {
        put_bytes(buf, 4, &s.parent_span_id);
    }
    if !s.name.is_empty() {
        put_bytes(buf, 5, s.name.as_bytes());
    }
    encode_varint(tag(6, VARINT), buf);
    encode_varint(
        match s.kind {
            SpanKind::Server => KIND_SERVER,
            SpanKind::Client => KIND_CLIENT,
        },
        buf,
    );
    if s.start_unix_ns != 0 {
        encode_varint(tag(7, FIXED64), buf);
        buf.extend_from_slice(&s.start_unix_ns.to_le_bytes());
    }
    if s.end_unix_ns != 0 {
        encode_varint(tag(8, FIXED64), buf);
        buf.extend_from_slice(&s.end_unix_ns.to_le_bytes());
    }
    put_attributes(buf, 9, &s.attributes);
    put_ld_header(buf, 15, status_len(&s.status));
    put_status(buf, &s.status);
    if s.flags != 0 {
        encode_varint(tag(16, FIXED32), buf);
        buf.extend_from_slice(&u32::from(s.flags).to_le_bytes());
    }
}

/// Groups a batch by resource, as OTLP wants one `ResourceSpans` per process: spans with
/// the same resource (the same `Arc`, or the same pid with equal contents) form a
/// group, groups in first-seen order. Fills `firsts` (each group's first span) and
/// `group_of` (each span's group).
pub fn resource_groups(spans: &[Arc<Span>], firsts: &mut Vec<usize>, group_of: &mut Vec<usize>) {
    firsts.clear();
    group_of.clear();
    let mut last = 0usize;
    for (i, s) in spans.iter().enumerate() {
        let same = |first: usize| {
            let r: &Arc<Resource> = &spans[first].resource;
            Arc::ptr_eq(r, &s.resource) || (r.pid == s.resource.pid && **r == *s.resource)
        };
        let g = match firsts.get(last) {
            Some(&first) if same(first) => last,
            _ => match firsts.iter().position(|&first| same(first)) {
                Some(g) => g,
                None => {
                    firsts.push(i);
                    firsts.len() - 1
                }
            },
        };
        last = g;
        group_of.push(g);
    }
}

/// Encodes batches of spans as `ExportTraceServiceRequest` bytes. Holds its scratch
/// space between batches, so a steady stream of batches allocates nothing here but the
/// requests' own bytes.
#[derive(Default)]
pub struct Encoder {
    /// Each span's payload length, by position in the batch (computed once per batch).
    span_lens: Vec<usize>,
    /// Per resource group of the request being written: (index of its first span,
    /// payload length of its `ScopeSpans`).
    groups: Vec<(usize, usize)>,
    /// Group of each span, and each group's first span.
    group_of: Vec<usize>,
    firsts: Vec<usize>,
}

impl Encoder {
    /// The encoded length of `spans` as one request.
    pub fn encoded_len(&mut self, spans: &[Arc<Span>]) -> usize {
        self.measure(spans);
        self.plan(spans, 0);
        self.request_len(spans)
    }

    /// Writes the request for `spans` into `buf` (cleared first).
    pub fn encode(&mut self, spans: &[Arc<Span>], buf: &mut Vec<u8>) {
        self.measure(spans);
        self.plan(spans, 0);
        buf.clear();
        self.write(spans, 0, buf);
    }

    /// Encodes `spans` as consecutive requests of at most `max_bytes` each (a single
    /// span goes alone whatever its size), pushing `(span count, request)` to `parts`.
    /// Every span is measured once.
    pub fn encode_parts(&mut self, spans: &[Arc<Span>], max_bytes: usize, parts: &mut Vec<(usize, bytes::Bytes)>) {
        self.measure(spans);
        let mut start = 0;
        let mut size = 0;
        for i in 0..spans.len() {
            let n = ld_len(2, self.span_lens[i]);
            if i > start && size + n > max_bytes {
                self.part(spans, start, i, max_bytes, parts);
                start = i;
                size = 0;
            }
            size += n;
        }
        self.part(spans, start, spans.len(), max_bytes, parts);
    }

    /// One request for `spans[from..to]`, halved while it is over `max_bytes` (the
    /// resource and scope headers come on top of the spans' own sizes).
    fn part(
        &mut self,
        spans: &[Arc<Span>],
        from: usize,
        to: usize,
        max_bytes: usize,
        parts: &mut Vec<(usize, bytes::Bytes)>,
    ) {
        if from >= to {
            return;
        }
        let range = &spans[from..to];
        self.plan(range, from);
        if to - from > 1 && self.request_len(range) > max_bytes {
            let mid = from + (to - from) / 2;
            self.part(spans, from, mid, max_bytes, parts);
            self.part(spans, mid, to, max_bytes, parts);
            return;
        }
        // Written into its own exactly sized buffer, which the request then owns: no copy.
        let mut buf = Vec::new();
        self.write(range, from, &mut buf);
        parts.push((to - from, bytes::Bytes::from(buf)));
    }

    /// Measures every span of the batch.
    fn measure(&mut self, spans: &[Arc<Span>]) {
        self.span_lens.clear();
        self.span_lens.extend(spans.iter().map(|s| span_len(s)));
    }

    /// Groups `spans` (the batch from position `offset`) by resource and sizes each
    /// group from the measured spans.
    fn plan(&mut self, spans: &[Arc<Span>], offset: usize) {
        resource_groups(spans, &mut self.firsts, &mut self.group_of);
        self.groups.clear();
        self.groups.extend(self.firsts.iter().map(|&first| (first, ld_len(1, scope_len()))));
        for (i, &g) in self.group_of.iter().enumerate() {
            self.groups[g].1 += ld_len(2, self.span_lens[offset + i]);
        }
    }

    fn request_len(&self, spans: &[Arc<Span>]) -> usize {
        self.groups
            .iter()
            .map(|&(first, scope_spans_len)| {
                let resource_spans = ld_len(1, resource_len(&spans[first].resource)) + ld_len(2, scope_spans_len);
                ld_len(1, resource_spans)
            })
            .sum()
    }

    /// Writes the planned request of `spans` (the batch from position `offset`).
    fn write(&self, spans: &[Arc<Span>], offset: usize, buf: &mut Vec<u8>) {
        buf.reserve(self.request_len(spans));
        for (g, &(first, scope_spans_len)) in self.groups.iter().enumerate() {
            let resource = &spans[first].resource;
            let res_len = resource_len(resource);
            put_ld_header(buf, 1, ld_len(1, res_len) + ld_len(2, scope_spans_len));
            put_ld_header(buf, 1, res_len);
            put_resource(buf, resource);
            put_ld_header(buf, 2, scope_spans_len);
            put_ld_header(buf, 1, scope_len());
            put_scope(buf);
            for (i, s) in spans.iter().enumerate().skip(first) {
                if self.group_of[i] == g {
                    put_ld_header(buf, 2, self.span_lens[offset + i]);
                    put_span(buf, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::{mk_span, resource};
    use crate::export::to_otlp;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    fn roundtrip(spans: &[Arc<Span>]) -> ExportTraceServiceRequest {
        let mut enc = Encoder::default();
        let mut buf = Vec::new();
        enc.encode(spans, &mut buf);
        assert_eq!(buf.len(), enc.encoded_len(spans), "planned and written lengths differ");
        ExportTraceServiceRequest::decode(buf.as_slice()).expect("decodes")
    }

    #[test]
    fn same_message_as_to_otlp() {
        let a = resource(10, "alpha");
        let b = resource(20, "beta");
        let mut spans = vec![
            mk_span(&a, 1, 1, 0, SpanKind::Server, "GET", 0, 10),
            mk_span(&b, 1, 2, 1, SpanKind::Client, "demo.Echo/Unary", 1, 5),
            mk_span(&a, 2, 3, 0, SpanKind::Client, "POST", 2, 3),
        ];
        // A long value, a negative and a large integer, a bool, a trace state, flags 0,
        // a non-root span, an error with a message: every encoding path.
        {
            let s = Arc::make_mut(&mut spans[1]);
            s.attributes.push(("k.long".into(), AttrValue::from("x".repeat(300))));
            s.attributes.push(("k.neg".into(), AttrValue::Int(-5)));
            s.attributes.push(("k.big".into(), AttrValue::Int(i64::MAX)));
            s.attributes.push(("k.bool".into(), AttrValue::Bool(false)));
            s.attributes.push(("k.empty".into(), AttrValue::from("")));
            s.trace_state = "vendor=1".into();
            s.flags = 0;
            s.parent_span_id = [9; 8];
            s.status = Status::Error { message: "boom".into() };
        }
        let decoded = roundtrip(&spans);
        assert_eq!(decoded, to_otlp(&spans));
        assert_eq!(decoded.resource_spans.len(), 2);
    }

    #[test]
    fn resource_without_service_name_attribute_gets_it() {
        let r = Arc::new(Resource { pid: 3, service_name: "bare".into(), attributes: vec![] });
        let spans = vec![mk_span(&r, 1, 1, 0, SpanKind::Server, "GET", 0, 1)];
        assert_eq!(roundtrip(&spans), to_otlp(&spans));
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert_eq!(roundtrip(&[]), ExportTraceServiceRequest::default());
    }

    #[test]
    fn parts_cover_the_batch_in_order_and_stay_under_the_limit() {
        let a = resource(10, "alpha");
        let b = resource(20, "beta");
        let spans: Vec<_> = (0..200u8)
            .map(|i| mk_span(if i % 3 == 0 { &b } else { &a }, i, i, 0, SpanKind::Server, "GET", 0, 1))
            .collect();
        let mut enc = Encoder::default();
        let one = enc.encoded_len(&spans[..1]);
        let mut parts = Vec::new();
        enc.encode_parts(&spans, one * 20, &mut parts);
        assert!(parts.len() >= 8, "{} parts", parts.len());
        let mut at = 0;
        for (n, bytes) in &parts {
            assert!(bytes.len() <= one * 20, "a part of {} bytes", bytes.len());
            let got = ExportTraceServiceRequest::decode(bytes.as_ref()).unwrap();
            assert_eq!(got, to_otlp(&spans[at..at + n]));
            at += n;
        }
        assert_eq!(at, spans.len());
        // One span larger than the limit still goes, alone.
        parts.clear();
        enc.encode_parts(&spans[..3], 10, &mut parts);
        assert_eq!(parts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn buffer_is_reused() {
        let a = resource(10, "alpha");
        let spans: Vec<_> = (0..64).map(|i| mk_span(&a, i, i, 0, SpanKind::Server, "GET", 0, 1)).collect();
        let mut enc = Encoder::default();
        let mut buf = Vec::new();
        enc.encode(&spans, &mut buf);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        enc.encode(&spans[..32], &mut buf);
        assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, cap), "a smaller batch must not reallocate");
        assert_eq!(ExportTraceServiceRequest::decode(buf.as_slice()).unwrap(), to_otlp(&spans[..32]));
    }
}
