use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::span::{Resource, Span, SpanKind, Status};

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource { pid: 1, service_name: service.to_owned(), attributes: Vec::new() })
}

fn trace(n: u64) -> [u8; 16] {
    // Spread over the 56 random bits the way random ids are.
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&n.to_be_bytes());
    t[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    t
}

fn span(trace_id: [u8; 16], id: u8, parent: u8, kind: SpanKind, flags: u8) -> Span {
    Span {
        trace_id,
        span_id: [id; 8],
        parent_span_id: [parent; 8],
        trace_state: String::new(),
        flags,
        name: "GET".into(),
        kind,
        start_unix_ns: 1_000_000_000,
        end_unix_ns: 1_010_000_000,
        status: Status::Unset,
        attributes: vec![("url.path".into(), "/api/x".into())],
        resource: resource("svc"),
    }
}

/// A two-hop local trace: client root, server child, its client, the backend's server.
fn chain(t: [u8; 16]) -> Vec<Span> {
    let f = FLAG_SAMPLED | LOCAL_ROOT;
    vec![
        span(t, 4, 3, SpanKind::Server, f),
        span(t, 3, 2, SpanKind::Client, f),
        span(t, 2, 1, SpanKind::Server, f),
        span(t, 1, 0, SpanKind::Client, f),
    ]
}

fn run(s: &mut Sampler, spans: Vec<Span>) -> Vec<Span> {
    let mut out = Vec::new();
    for sp in spans {
        s.offer(sp, &mut |x| out.push(x));
    }
    out
}

fn reason(s: &Span) -> &str {
    match s.attr("ghostwire.sampling.reason") {
        Some(AttrValue::Str(r)) => r.as_str(),
        _ => "",
    }
}

#[test]
fn threshold_and_th_follow_the_otel_encoding() {
    assert_eq!(threshold(1.0), 0);
    assert_eq!(threshold(0.0), 1 << 56);
    assert_eq!(th_value(threshold(0.25)), "c");
    assert_eq!(th_value(threshold(0.5)), "8");
    // 0.9 × 2^56 in f64: the last digit is rounding.
    assert!(th_value(threshold(0.1)).starts_with("e66666666666"), "{}", th_value(threshold(0.1)));
    assert_eq!(th_value(0), "0");
    assert_eq!(with_th("", "c"), "ot=th:c");
    assert_eq!(with_th("vendor=x,ot=th:8;rv:abcdef01234567", "c"), "ot=th:c;rv:abcdef01234567,vendor=x");
    let mut t = [0u8; 16];
    t[9..].copy_from_slice(&[0xff; 7]);
    assert_eq!(randomness(&t), (1 << 56) - 1);
}

#[test]
fn head_ratio_keeps_whole_traces_near_the_ratio_and_is_deterministic() {
    let cfg = Config { ratio: 0.25, ..Config::default() };
    let mut a = Sampler::new(cfg.clone());
    let mut b = Sampler::new(cfg);
    let mut kept_traces = 0;
    for n in 0..4000 {
        let out = run(&mut a, chain(trace(n)));
        assert!(out.is_empty() || out.len() == 4, "a trace is kept whole or not at all");
        if !out.is_empty() {
            kept_traces += 1;
            assert!(out.iter().all(|s| reason(s) == "head" && s.trace_state == "ot=th:c" && s.flags == 1));
        }
        // Another agent decides the same without talking.
        assert_eq!(run(&mut b, chain(trace(n))).len(), out.len());
    }
    assert!((800..1200).contains(&kept_traces), "{kept_traces} of 4000 at 0.25");
}

#[test]
fn received_flags_decide_their_traces() {
    let mut s = Sampler::new(Config { ratio: 0.0, ..Config::default() });
    for n in 0..50 {
        let kept = run(
            &mut s,
            vec![span(trace(n), 2, 9, SpanKind::Server, 0x01), span(trace(n), 3, 2, SpanKind::Client, 0x01)],
        );
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|s| reason(s) == "parent"));
        assert_eq!(run(&mut s, vec![span(trace(n + 100), 2, 9, SpanKind::Server, 0x03)]).len(), 1);
        assert!(run(&mut s, vec![span(trace(n + 200), 2, 9, SpanKind::Server, 0x00)]).is_empty());
    }
    // Not parent-based (traceidratio): the ratio decides even a received context.
    let mut s = Sampler::new(Config { ratio: 0.0, parent_based: false, ..Config::default() });
    assert!(run(&mut s, vec![span(trace(1), 2, 9, SpanKind::Server, 0x01)]).is_empty());
}

#[test]
fn tail_keeps_errors_and_slow_traces_whole_once_quiet() {
    let cfg = Config {
        ratio: 0.0,
        keep_errors: true,
        keep_slower_than: Some(Duration::from_millis(100)),
        quiet: Duration::ZERO,
        ..Config::default()
    };
    let mut s = Sampler::new(cfg);
    let mut out = Vec::new();
    for n in 0..30 {
        let mut spans = chain(trace(n));
        match n % 3 {
            0 => spans[2].status = Status::Error { message: String::new() },
            1 => spans[3].end_unix_ns = spans[3].start_unix_ns + 150_000_000,
            _ => {}
        }
        for sp in spans {
            s.offer(sp, &mut |x| out.push(x));
        }
    }
    assert!(out.is_empty(), "nothing leaves before the quiet period");
    s.poll(&mut |x| out.push(x));
    assert_eq!(out.len(), 20 * 4, "10 error and 10 slow traces, whole");
    let by = |r: &str| out.iter().filter(|s| reason(s) == r).count();
    assert_eq!((by("error"), by("slow")), (40, 40));
    assert!(out.iter().all(|s| s.trace_state.is_empty()), "no probability for a tail keep");
    // A late span of a kept trace follows its trace; of a dropped one, too.
    let mut late = Vec::new();
    s.offer(span(trace(0), 7, 4, SpanKind::Client, FLAG_SAMPLED | LOCAL_ROOT), &mut |x| late.push(x));
    s.offer(span(trace(2), 7, 4, SpanKind::Client, FLAG_SAMPLED | LOCAL_ROOT), &mut |x| late.push(x));
    assert_eq!(late.len(), 1);
    assert_eq!(reason(&late[0]), "error");
}

#[test]
fn an_incomplete_trace_waits_for_its_entry_span_up_to_the_longest_wait() {
    let cfg =
        Config { keep_errors: true, quiet: Duration::ZERO, max_wait: Duration::from_millis(50), ..Config::default() };
    let mut s = Sampler::new(cfg);
    let mut out = Vec::new();
    let spans = chain(trace(1));
    for sp in spans.into_iter().take(3) {
        s.offer(sp, &mut |x| out.push(x));
    }
    s.poll(&mut |x| out.push(x));
    assert!(out.is_empty(), "no entry span yet");
    std::thread::sleep(Duration::from_millis(60));
    s.poll(&mut |x| out.push(x));
    assert_eq!(out.len(), 3, "decided after the longest wait");
}

#[test]
fn the_buffer_is_bounded_by_traces_and_bytes() {
    let cfg = Config { keep_errors: true, buffer_traces: 10, ..Config::default() };
    let mut s = Sampler::new(cfg);
    let mut out = 0;
    for n in 0..100 {
        for sp in chain(trace(n)) {
            s.offer(sp, &mut |_| out += 1);
        }
    }
    assert_eq!(out, 90 * 4, "the 90 oldest traces were decided (kept at ratio 1) to make room");
    let b = s.buffer.as_ref().unwrap();
    assert_eq!(b.traces.len(), 10);
    let one = buffer::span_bytes(&chain(trace(0))[0]);
    let cfg = Config { keep_errors: true, buffer_bytes: 50 * one, ..Config::default() };
    let mut s = Sampler::new(cfg);
    for n in 0..100 {
        for sp in chain(trace(n)) {
            s.offer(sp, &mut |_| {});
        }
    }
    let b = s.buffer.as_ref().unwrap();
    assert!(b.bytes <= 50 * one && b.traces.len() >= 5, "{} bytes, {} traces", b.bytes, b.traces.len());
    eprintln!("one buffered HTTP span: about {one} bytes");
}

#[test]
fn the_rate_limit_holds_kept_traces_to_its_bucket() {
    let mut s = Sampler::new(Config { max_traces_per_second: Some(5.0), ..Config::default() });
    let mut kept = std::collections::HashSet::new();
    for n in 0..200 {
        for sp in chain(trace(n)) {
            s.offer(sp, &mut |x| {
                kept.insert(x.trace_id);
            });
        }
    }
    // A burst of one second's worth (5), plus what refilled while the loop ran.
    assert!((5..=7).contains(&kept.len()), "{} traces kept", kept.len());
}

#[test]
fn adaptive_holds_hot_operations_near_the_target_and_keeps_rare_ones() {
    let mut s = Sampler::new(Config { adaptive_per_operation: Some(2.0), quiet: Duration::ZERO, ..Config::default() });
    let (mut hot, mut rare) = (0, 0);
    for second in 0..10u64 {
        for i in 0..100u64 {
            let mut spans = chain(trace(second * 1000 + i));
            if i == 0 {
                for sp in &mut spans {
                    sp.attributes[0].1 = "/rare".into();
                }
            }
            for sp in spans {
                s.offer(sp, &mut |_| {});
            }
        }
        s.poll(&mut |x| {
            if x.is_root() {
                if matches!(x.attr("url.path"), Some(AttrValue::Str(p)) if p == "/rare") {
                    rare += 1;
                } else {
                    hot += 1;
                }
            }
        });
        if let Some(a) = &mut s.adaptive {
            a.tick(Instant::now() + Duration::from_secs(second + 1));
        }
    }
    assert_eq!(rare, 10, "the rare operation is always kept");
    assert!((10..=60).contains(&hot), "{hot} hot traces kept in 10 s at a target of 2/s");
    assert_eq!(s.adaptive.as_ref().unwrap().operations(), 2);
}
