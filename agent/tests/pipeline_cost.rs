//! What the agent's whole userspace costs per request, without the kernel: capture events
//! for both ends of a keep-alive HTTP/1 connection (wrk's client side and nginx's server
//! side, as in the README's benchmark) go through `Pipeline::on_event` (connection
//! table, parser, linker, span builder) and out through a real exporter on its own
//! thread, the JSONL writer to /dev/null or the OTLP/gRPC exporter to an in-process
//! collector. Not a timed test: it asserts that every request gives its two spans, all
//! exported, and that the heap allocations per request (exact) stay within a bound; it
//! prints the process's CPU time per request too (every thread: the pipeline and the
//! exporter), with `cargo test --release -p ghostwire --test pipeline_cost --
//! --nocapture`. Compare two builds on one machine, in one run: time is noisy on a
//! shared machine. Bounded: a fixed number of requests.
use std::net::SocketAddr;
use std::time::Duration;

use ghostwire::capture::{Conn, ConnId, Data, Event, Payload};
use ghostwire::conn::listen::ListenTable;
use ghostwire::export::{ExportConfig, Exporters};
use ghostwire::pipeline::Pipeline;
use ghostwire::protocol::{Direction, Role};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

mod counting;
use counting::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time of the whole process (the exporter runs on another thread).
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Process ids that cannot exist (above the kernel's pid_max of 2^22): their /proc
/// lookups fail once and they get a resource from their `comm`.
const NGINX: u32 = 5_000_000;
const WRK: u32 = 5_000_001;
const CONNS: u64 = 32;
const ROUNDS: u64 = 1_000;

fn sock(i: u64, client: bool) -> ConnId {
    ConnId { sock: 0xffff_8880_0000_0000 + i * 0x1000 + u64::from(client) * 0x800, gen: i }
}

fn conn(i: u64, client: bool, ts_ns: u64) -> Event<'static> {
    let server = SocketAddr::from(([127, 0, 0, 1], 18080));
    let client_addr = SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16));
    let (pid, local, peer, role, tcp_seq, comm) = if client {
        (WRK, client_addr, server, Role::Client, [2, 1], *b"wrk\0\0\0\0\0\0\0\0\0\0\0\0\0")
    } else {
        (NGINX, server, client_addr, Role::Server, [1, 2], *b"nginx\0\0\0\0\0\0\0\0\0\0\0")
    };
    Event::Conn(Conn {
        conn: sock(i, client),
        pid,
        tid: pid,
        netns: 1,
        local,
        peer,
        role: Some(role),
        midstream: false,
        tcp_seq,
        comm,
        ppid: 1,
        ts_ns,
        opened_by: None,
    })
}

fn data(i: u64, client: bool, dir: Direction, offset: u64, bytes: &[u8], ts_ns: u64) -> Event<'_> {
    let pid = if client { WRK } else { NGINX };
    Event::Data(Data {
        conn: sock(i, client),
        tls: None,
        pid,
        tid: pid,
        dir,
        offset,
        unreported_ns: 0,
        len: bytes.len() as u32,
        ts_ns,
        prefix: bytes,
        tail: &[],
        payload: Payload::Copied,
    })
}

/// Drives `CONNS × ROUNDS` requests through a pipeline exporting to `cfg`; prints CPU
/// and allocations per request.
fn run(what: &str, cfg: ExportConfig, metrics: bool) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let exporters = {
        let _ctx = rt.enter();
        Exporters::start(cfg).unwrap()
    };
    let mut pipeline = Pipeline::new(exporters, Vec::new(), ListenTable::default());
    if metrics {
        let kernel = std::sync::Arc::new(std::sync::Mutex::new(ghostwire::stats::KernelCounters::default()));
        let (m, _registry) = ghostwire::metrics::Metrics::new(kernel);
        pipeline.set_metrics(m);
    }
    let request = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n".to_vec();
    let mut response = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 01:00:00 GMT\r\n\
Content-Type: text/html\r\nContent-Length: 1024\r\nLast-Modified: Wed, 02 Dec 2026 00:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"692e3a00-400\"\r\nAccept-Ranges: bytes\r\n\r\n"
        .to_vec();
    response.extend(std::iter::repeat_n(b'x', 1024));
    let (r, p) = (request.len() as u64, response.len() as u64);
    let mut ts = 1_000_000;
    for i in 0..CONNS {
        pipeline.on_event(&conn(i, false, ts));
        pipeline.on_event(&conn(i, true, ts));
    }
    let stats = ghostwire::stats::global();
    let (built0, exported0) =
        (stats.get(ghostwire::stats::Counter::SpansBuilt), stats.get(ghostwire::stats::Counter::SpansExported));
    let (a0, t0) = (counting::allocations(), process_cpu_ns());
    for round in 0..ROUNDS {
        for i in 0..CONNS {
            // wrk writes, nginx reads, nginx writes, wrk reads.
            ts += 1000;
            pipeline.on_event(&data(i, true, Direction::Egress, round * r, &request, ts));
            pipeline.on_event(&data(i, false, Direction::Ingress, round * r, &request, ts + 10));
            ts += 1000;
            pipeline.on_event(&data(i, false, Direction::Egress, round * p, &response, ts));
            pipeline.on_event(&data(i, true, Direction::Ingress, round * p, &response, ts + 10));
        }
        // A drain of the ring: the spans go to the exporters together.
        pipeline.flush();
    }
    let exporters = pipeline.into_exporters();
    rt.block_on(exporters.shutdown(Duration::from_secs(30)));
    let (a1, t1) = (counting::allocations(), process_cpu_ns());
    let n = (ROUNDS * CONNS) as f64;
    let built = stats.get(ghostwire::stats::Counter::SpansBuilt) - built0;
    let exported = stats.get(ghostwire::stats::Counter::SpansExported) - exported0;
    println!(
        "{what}: {:.0} ns per request, {:.2} allocations per request ({} requests, {built} spans built, \
         {exported} exported)",
        (t1 - t0) as f64 / n,
        (a1 - a0) as f64 / n,
        ROUNDS * CONNS
    );
    assert_eq!(built, 2 * ROUNDS * CONNS, "every request gives two spans");
    assert_eq!(exported, built, "every span exported");
    (a1 - a0) as f64 / n
}

/// Heap allocations per request (2 spans), at most: 17 measured with JSONL; 84 with OTLP,
/// most of them the in-process collector's (prost decodes every attribute of every span
/// into owned structs), which batch sizes move a little. With some room.
const JSONL_MAX_ALLOCATIONS: f64 = 20.0;
const OTLP_MAX_ALLOCATIONS: f64 = 100.0;
/// What the metrics stage may add per request (two spans observed).
const METRICS_MAX_EXTRA_ALLOCATIONS: f64 = 0.5;

/// Both exporters in one test, one after the other: the counters (spans, allocations)
/// are the process's.
#[test]
fn http1_both_ends_to_jsonl_then_otlp() {
    let jsonl = run(
        "http1, both ends, JSONL to /dev/null",
        ExportConfig { jsonl_path: Some("/dev/null".into()), queue_capacity: 1 << 20, ..ExportConfig::default() },
        false,
    );
    assert!(
        jsonl <= JSONL_MAX_ALLOCATIONS,
        "{jsonl:.2} allocations per request (JSONL), at most {JSONL_MAX_ALLOCATIONS}"
    );
    // The metrics stage on the same path: label values are inline strings and series
    // exist after the first request, so it adds no allocation per request.
    let with_metrics = run(
        "http1, both ends, JSONL to /dev/null, with the metrics stage",
        ExportConfig { jsonl_path: Some("/dev/null".into()), queue_capacity: 1 << 20, ..ExportConfig::default() },
        true,
    );
    assert!(
        with_metrics <= jsonl + METRICS_MAX_EXTRA_ALLOCATIONS,
        "{with_metrics:.2} allocations per request with metrics, {jsonl:.2} without"
    );
    let otlp = http1_both_ends_to_otlp();
    assert!(otlp <= OTLP_MAX_ALLOCATIONS, "{otlp:.2} allocations per request (OTLP), at most {OTLP_MAX_ALLOCATIONS}");
}

/// Accepts everything, keeps nothing.
struct Blackhole;

#[tonic::async_trait]
impl TraceService for Blackhole {
    async fn export(
        &self,
        _req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn http1_both_ends_to_otlp() -> f64 {
    // The collector runs on its own runtime and threads: its CPU is counted too (this is
    // one process), so the figure is agent + receiver.
    let collector = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = collector.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    collector.spawn(tonic::transport::Server::builder().serve_with_incoming_shutdown(
        TraceServiceServer::new(Blackhole),
        tonic::transport::server::TcpIncoming::from(listener),
        std::future::pending::<()>(),
    ));
    run(
        "http1, both ends, OTLP/gRPC to an in-process collector (its CPU included)",
        ExportConfig {
            otlp: Some(ghostwire::export::otlp::OtlpOptions::grpc(&format!("http://{addr}"))),
            queue_capacity: 1 << 20,
            ..ExportConfig::default()
        },
        false,
    )
}
