//! Short soak runs (issue 10): the agent's memory stays bounded, and every span is
//! accounted for, under connection churn and under a collector outage. The full-length
//! figures come from `cargo xtask bench soak`; these are the short forms that must pass.
//!
//! Both runs export as users deploy: OTLP/gRPC to a real collector (rotel).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ghostwire_tests::*;

const MIB: u64 = 1024;

fn get(stats: &BTreeMap<String, u64>, key: &str) -> u64 {
    assert!(is_stat_key(key), "`{key}` is not a counter the agent can print");
    stats.get(key).copied().unwrap_or(0)
}

/// Counters that say a request produced no span (or a capture record was lost, which
/// userspace then counts as one of the others). Every request must have given its spans
/// or one of these.
const REQUEST_DROPS: &[&str] = &[
    "drop.lost_request",
    "drop.unanswered_request",
    "drop.half_seen",
    "drop.parse_error",
    "drop.unknown_conn",
    "drop.capture_gap",
    "drop.conn_table_full",
    "kernel.ring_full",
    "kernel.map_full",
];

/// 6 × 10 000 short connections (ab without keep-alive), 2 spans each (ab's client span,
/// nginx's server span). The agent traces both ends of each connection, so 120 000
/// connection ends pass through a table of 65 536 (`conn::DEFAULT_MAX_CONNS`): if closed
/// connections stayed in it, the table would fill during the fourth round and evict
/// (`drop.conn_table_full`), and RSS would grow by the state of every kept connection.
#[test]
fn connection_churn_keeps_memory_bounded_and_every_request_accounted_for() {
    require_root();
    let dir = TempDir::new("soak-churn");
    let [port, otlp, otlp_http] = free_ports();
    let _nginx = Nginx::static_1k(port);
    let _rotel = rotel_blackhole(otlp, otlp_http, None, dir.path());
    let agent = Agent::start(
        &[
            "--port".into(),
            port.to_string(),
            "--otlp-endpoint".into(),
            format!("http://127.0.0.1:{otlp}"),
            "--stats-interval".into(),
            "1".into(),
        ],
        &[],
    );
    let url = format!("http://127.0.0.1:{port}/1k.bin");
    const ROUNDS: u64 = 6;
    const PER_ROUND: u64 = 10_000;
    let mut rss_after = Vec::new();
    let started = Instant::now();
    for round in 1..=ROUNDS {
        let report = ab(PER_ROUND, 16, &url, Duration::from_secs(60));
        assert_eq!(
            report,
            AbReport { complete: PER_ROUND, failed: 0, non_2xx: 0 },
            "round {round}: ab did not get every 1 KiB response"
        );
        // Measured when every span built so far has left the export queue: what remains
        // is what the agent keeps, not spans waiting for their batch.
        let settled = agent.wait_exported(Duration::from_secs(15));
        assert!(settled.is_some(), "round {round}: spans still queued after 15 s:\n{}", agent.stderr_text());
        rss_after.push(agent.rss_kib());
        eprintln!("round {round}: {} KiB RSS after {:?}", agent.rss_kib(), started.elapsed());
    }
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    let stats = exit.stats();

    // Closed connections leave the table: 120 000 ends went through 65 536 slots with no
    // eviction.
    assert_eq!(get(&stats, "drop.conn_table_full"), 0, "closed connections stayed in the table: {}", exit.stats_line());
    // Every request: its two spans, or a counted drop. Spans are never made up.
    let requests = ROUNDS * PER_ROUND;
    let built = get(&stats, "spans.built");
    let dropped: u64 = REQUEST_DROPS.iter().map(|k| get(&stats, k)).sum();
    assert!(built <= 2 * requests, "{built} spans for {requests} requests: {}", exit.stats_line());
    assert!(
        built + dropped >= 2 * requests,
        "{} of {} spans neither built nor counted as dropped: {}",
        2 * requests - built - dropped,
        2 * requests,
        exit.stats_line()
    );
    // And every built span is exported or counted.
    let exported = get(&stats, "spans.exported");
    let export_drops = get(&stats, "drop.export_queue_full") + get(&stats, "drop.export_failed");
    assert_eq!(exported + export_drops, built, "spans built but neither exported nor counted: {}", exit.stats_line());
    // The collector keeps up with 2 × ~5k spans/s: nothing fails on the way, and the
    // queue (8192) overflows at most in a stall of the shared machine (once in CI: 612
    // of 120 000 spans, counted), never for long: a broken exporter would drop most.
    assert_eq!(get(&stats, "drop.export_failed"), 0, "{}", exit.stats_line());
    assert!(export_drops * 20 <= built, "more than 5 % of the spans dropped on export: {}", exit.stats_line());

    // RSS growth from the first third (after round 2) to the end. The agent's RSS
    // wanders in a band of about ±5 MiB under churn without growing (`bench soak`: 57 to
    // 72 MiB over 1 000 000 short connections, +3 bytes per connection from 10 % to the
    // end; allocator arenas of the worker threads are returned and taken again), so the
    // bound is 16 MiB. A leak of what a tracked connection costs (`bench soak` idle:
    // about 1.4 KiB) over the next 40 000 connections (80 000 ends) would be 110 MiB,
    // and even 200 bytes per end would pass the bound.
    let third = rss_after[1];
    let growth = rss_after[ROUNDS as usize - 1].saturating_sub(third);
    assert!(
        growth < 16 * MIB,
        "agent RSS grew {growth} KiB over {} connections (after each round: {rss_after:?} KiB)",
        (ROUNDS - 2) * PER_ROUND
    );
}

/// The collector is killed for 10 s under a fixed load with a 1000-span queue: the
/// queue overflows, the overflow is counted (`drop.export_queue_full`), memory stays
/// bounded, and once the collector is back on the same port new spans reach it.
#[test]
fn collector_outage_drops_only_what_the_queue_cannot_hold_and_recovers() {
    require_root();
    let dir = TempDir::new("soak-outage");
    let [port, otlp, otlp_http] = free_ports();
    let received = dir.path().join("rotel.jsonl");
    let _nginx = Nginx::static_1k(port);
    let mut rotel = rotel_blackhole(otlp, otlp_http, None, dir.path());
    const QUEUE: u64 = 1000;
    let agent = Agent::start(
        &[
            "--port".into(),
            port.to_string(),
            "--otlp-endpoint".into(),
            format!("http://127.0.0.1:{otlp}"),
            "--stats-interval".into(),
            "1".into(),
            "--queue-size".into(),
            QUEUE.to_string(),
        ],
        &[],
    );
    let url = format!("http://127.0.0.1:{port}/1k.bin");
    // 4 clients × 100 req/s for 20 s: 8000 requests, 16 000 spans, 800 spans/s.
    const SPANS_PER_S: u64 = 800;
    const LOAD_SECONDS: u64 = 20;
    let mut hey = Proc::spawn(
        "hey",
        std::process::Command::new("hey")
            .args(["-z", &format!("{LOAD_SECONDS}s"), "-c", "4", "-q", "100", &url])
            .stdout(std::process::Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs(4));
    let rss_before = agent.rss_kib();
    let built_at_kill = get(&agent.last_stats(), "spans.built");
    let lines_at_kill = agent.stats_lines();
    assert!(rotel.signal_and_wait(libc::SIGKILL, Duration::from_secs(5)).is_some(), "rotel did not die");
    let mut rss_peak = rss_before;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(10) {
        rss_peak = rss_peak.max(agent.rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    let built_at_restart = get(&agent.last_stats(), "spans.built");
    let lines_at_restart = agent.stats_lines();
    let exported_at_restart = get(&agent.last_stats(), "spans.exported");
    let _rotel = rotel_blackhole(otlp, otlp_http, Some(&received), dir.path());
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS + 10);
    while hey.try_wait().is_none() {
        assert!(Instant::now() < deadline, "hey did not finish");
        rss_peak = rss_peak.max(agent.rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    // A request made after the collector came back reaches it.
    assert_eq!(curl(port, "/after-outage"), 404);
    let arrived = wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        text.lines().any(|l| l.contains("/after-outage")).then_some(())
    });
    let settled = agent.wait_exported(Duration::from_secs(15));
    let history = agent.stat_history("spans.exported");
    let exit = agent.stop();
    assert!(exit.status.success(), "agent exit: {}\n{}", exit.status, exit.stderr);
    assert!(arrived.is_some(), "no span of the request made after the restart reached rotel:\n{}", exit.stderr);
    assert!(settled.is_some(), "spans still queued 15 s after the load:\n{}", exit.stderr);
    let stats = exit.stats();
    assert!(lines_at_restart > lines_at_kill + 5, "too few stats lines during the outage:\n{}", exit.stderr);

    // Every span built is exported or counted as dropped, exactly.
    let built = get(&stats, "spans.built");
    let exported = get(&stats, "spans.exported");
    let full = get(&stats, "drop.export_queue_full");
    let failed = get(&stats, "drop.export_failed");
    assert_eq!(exported + full + failed, built, "spans unaccounted for: {}", exit.stats_line());
    assert!(exported > exported_at_restart, "nothing exported after the restart: {history:?}");
    // The overflow is what the queue could not hold: of the spans built while rotel was
    // down, at most QUEUE wait in the queue and OUTSIDE in the exporter (the batch it
    // took, at most 512, and the requests in flight from the batch before: at most 8 of
    // 60 KiB, about 100 spans each); the rest must have been dropped. The built
    // counts come from the stats lines nearest the kill and the restart, each printed up
    // to 1 s before its moment, so `during` is within one second of load (SPANS_PER_S) of
    // what was really built while rotel was down; the bound allows twice that.
    let during = built_at_restart.saturating_sub(built_at_kill);
    assert!(during > 6000, "too few spans built during the outage ({during}): {}", exit.stats_line());
    const OUTSIDE: u64 = 512 + 8 * 100;
    let must_drop = during.saturating_sub(QUEUE + OUTSIDE + 2 * SPANS_PER_S);
    assert!(
        full >= must_drop,
        "{full} spans dropped, but {during} were built while the collector was down and only {} fit: {}",
        QUEUE + OUTSIDE,
        exit.stats_line()
    );
    // And no more than was built until the exporter could send again: the outage, plus
    // the longest retry backoff (5 s) after rotel is back, plus the stats lag (1 s), at
    // SPANS_PER_S, with one more second of margin.
    assert!(full <= during + 7 * SPANS_PER_S, "dropped {full} of {during}: {}", exit.stats_line());
    // Bounded memory: at most QUEUE spans wait in the queue and OUTSIDE (with their
    // encoded requests) in the exporter's retries, about 3 KiB of RSS each (`bench
    // soak` outage), under 7 MiB. On top of it, replacing the oldest span by a new one
    // 800 times a second fragments the heap: measured here, the whole growth is 13 MiB
    // (6 MiB at 400 spans/s), reached within the first seconds and flat afterwards
    // (`bench soak`: flat for 50 of the 60 s of its outage). Keeping every span of the
    // outage (over 6000, checked above) would add 18 MiB more to that, 31 MiB; the bound
    // is 20 MiB.
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "outage: {rss_before} KiB RSS before, {rss_peak} KiB peak; {during} spans built while down, {full} dropped"
    );
    assert!(growth < 20 * MIB, "agent RSS grew {growth} KiB during the outage ({rss_before} KiB before)");
    // Nothing is given up on: a collector that dies mid-request (here: SIGKILL) is an
    // outage like any other, and the batch it was receiving must be retried, not dropped.
    assert!(
        failed == 0,
        "spans given up on although the collector came back (a request cut by the collector's death \
         must be retried): {}",
        exit.stats_line()
    );
}
