//! What the parsing half of the hot path costs per request, apart from span building and
//! export: capture event → `ConnTable::on_event` → `Session::feed_at` → started requests
//! and exchanges, into a sink that only looks at them. Not a timed test: it asserts the
//! heap allocations per request, which are exact, stay within a bound, and prints the
//! thread's CPU time per request as well
//! (`cargo test --release -p ghostwire --test hot_path_cost -- --nocapture`; compare two
//! builds on one machine, in one run: time is noisy on a shared machine). Bounded: a
//! fixed number of requests.
use std::hint::black_box;
use std::net::SocketAddr;

use ghostwire::capture::{Conn, ConnId, Data, Event, Payload};
use ghostwire::conn::{ConnMeta, ConnSink, ConnTable, ExchangeRecord, ReqKey, Start};
use ghostwire::protocol::{Direction, Request, Role};

mod common;
mod counting;
use counting::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations per request, at most: 6 and 16.7 measured (parse and hand-over; the
/// span builder and export are not in this path), with a little room.
const HTTP1_MAX_ALLOCATIONS: f64 = 8.0;
const GRPC_MAX_ALLOCATIONS: f64 = 20.0;

/// CPU time of this thread (not wall time: a busy machine deschedules it).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Measures `f`, which handles `n()` requests: prints CPU ns and allocations per request,
/// and returns the allocations per request.
fn measure(what: &str, f: impl FnOnce() -> u64) -> f64 {
    let (a0, t0) = (counting::allocations(), thread_cpu_ns());
    let n = f();
    let (a1, t1) = (counting::allocations(), thread_cpu_ns());
    println!(
        "{what}: {:.0} ns per request, {:.2} allocations per request ({n} requests)",
        (t1 - t0) as f64 / n as f64,
        (a1 - a0) as f64 / n as f64
    );
    (a1 - a0) as f64 / n as f64
}

/// Looks at what a span builder would: the request's host and the exchange's status.
#[derive(Default)]
struct Sink {
    started: u64,
    exchanges: u64,
    seen: usize,
}

impl ConnSink for Sink {
    fn request_started(&mut self, _key: ReqKey, _conn: &ConnMeta, start: Start, request: &Request) {
        self.started += 1;
        self.seen += request.header("host").map_or(0, str::len) + start.wire_key as usize % 2;
    }
    fn exchange(&mut self, rec: ExchangeRecord) {
        self.exchanges += 1;
        self.seen += usize::from(rec.exchange.response.status) + rec.exchange.request.headers.len();
        black_box(rec);
    }
    fn connection_closed(&mut self, _key: ConnKey, _conn: &ConnMeta) {}
}

type ConnKey = ghostwire::conn::ConnKey;

fn conn(i: u64, ts_ns: u64) -> Event<'static> {
    Event::Conn(Conn {
        conn: ConnId { sock: 0xffff_8880_0000_0000 + i * 0x800, gen: i },
        pid: 1000,
        tid: 1000,
        netns: 1,
        local: SocketAddr::from(([127, 0, 0, 1], 18080)),
        peer: SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16)),
        role: Some(Role::Server),
        midstream: false,
        tcp_seq: [1, 2],
        comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
        ppid: 1,
        ts_ns,
        opened_by: None,
    })
}

fn data(i: u64, dir: Direction, offset: u64, bytes: &[u8], ts_ns: u64) -> Event<'_> {
    Event::Data(Data {
        conn: ConnId { sock: 0xffff_8880_0000_0000 + i * 0x800, gen: i },
        tls: None,
        pid: 1000,
        tid: 1000,
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

/// Both measurements in one test: the allocation counter counts every thread.
#[test]
fn allocations_per_request_stay_bounded() {
    let http1 = http1_keepalive();
    assert!(
        http1 <= HTTP1_MAX_ALLOCATIONS,
        "{http1:.2} allocations per HTTP/1 request, at most {HTTP1_MAX_ALLOCATIONS}"
    );
    let grpc = grpc_captures();
    assert!(grpc <= GRPC_MAX_ALLOCATIONS, "{grpc:.2} allocations per gRPC exchange, at most {GRPC_MAX_ALLOCATIONS}");
}

/// wrk's request and nginx's answer with a 1 KiB file, as in the README's benchmark.
fn http1_keepalive() -> f64 {
    const CONNS: u64 = 32;
    const ROUNDS: u64 = 2_000;
    let request = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n".to_vec();
    let mut response = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 01:00:00 GMT\r\n\
Content-Type: text/html\r\nContent-Length: 1024\r\nLast-Modified: Wed, 02 Dec 2026 00:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"692e3a00-400\"\r\nAccept-Ranges: bytes\r\n\r\n"
        .to_vec();
    response.extend(std::iter::repeat_n(b'x', 1024));
    let mut table = ConnTable::default();
    let mut sink = Sink::default();
    let mut ts = 1;
    for i in 0..CONNS {
        table.on_event(&conn(i, ts), &mut sink);
    }
    let (r, p) = (request.len() as u64, response.len() as u64);
    let allocations = measure("http1 keep-alive", || {
        for round in 0..ROUNDS {
            for i in 0..CONNS {
                ts += 1000;
                table.on_event(&data(i, Direction::Ingress, round * r, &request, ts), &mut sink);
                ts += 1000;
                table.on_event(&data(i, Direction::Egress, round * p, &response, ts), &mut sink);
            }
        }
        ROUNDS * CONNS
    });
    let n = ROUNDS * CONNS;
    assert_eq!((sink.started, sink.exchanges), (n, n));
    black_box(sink.seen);
    allocations
}

/// The gRPC captures of the golden tests, each replayed on a fresh connection.
fn grpc_captures() -> f64 {
    const ROUNDS: u64 = 30;
    let dir = common::data_dir("http2");
    let captures: Vec<_> = ["grpc_many", "grpc_unary", "grpc_stream", "nginx_h2c"]
        .iter()
        .map(|name| common::load(&dir, b"# ghostwire-http2-capture v1\n", name))
        .collect();
    let mut table = ConnTable::default();
    let mut sink = Sink::default();
    let mut ts = 1;
    let mut id = 0;
    let allocations = measure("http2/gRPC captures", || {
        for _ in 0..ROUNDS {
            for records in &captures {
                id += 1;
                ts += 1000;
                table.on_event(&conn(id, ts), &mut sink);
                let mut offsets = [0u64; 2];
                for rec in records {
                    let Some(bytes) = &rec.data else { continue };
                    let (dir, k) = match rec.from {
                        common::From::Client => (Direction::Ingress, 0),
                        common::From::Server => (Direction::Egress, 1),
                    };
                    ts += 1000;
                    table.on_event(&data(id, dir, offsets[k], bytes, ts), &mut sink);
                    offsets[k] += bytes.len() as u64;
                }
                let closed = ghostwire::capture::State {
                    conn: ConnId { sock: 0xffff_8880_0000_0000 + id * 0x800, gen: id },
                    ts_ns: ts,
                    change: ghostwire::capture::StateChange::Closed,
                };
                table.on_event(&Event::State(closed), &mut sink);
            }
        }
        sink.exchanges
    });
    assert!(sink.exchanges > 0);
    black_box(sink.seen);
    allocations
}
