//! `ghostwire`: the agent binary. Parses the command line, starts the exporters and the
//! kernel capture, then runs the pipeline until SIGINT/SIGTERM.
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use ghostwire::capture::tls_libs::{Discovery, ScanFilter, Worker};
use ghostwire::capture::{Capture, CaptureConfig};
use ghostwire::config::Cli;
use ghostwire::export::{ExportConfig, Exporters};
use ghostwire::pipeline::Pipeline;
use ghostwire::stats::{self, Counter};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records handled before the loop checks for signals and timers again.
const DRAIN_BUDGET: usize = 4096;
/// How often the ring buffer is drained when the kernel did not wake the agent.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = match Cli::load(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ghostwire::config::LoadError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.nice > 0 {
        // Before any thread starts: Linux applies a nice value per thread, and threads
        // inherit their creator's.
        // SAFETY: setpriority has no memory-safety preconditions.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, cli.nice) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("error: cannot lower the agent's priority to nice {} ({e}): run without --nice", cli.nice);
            return ExitCode::FAILURE;
        }
    }
    // Two runtimes, so that neither waits for the other: the pipeline (ring drain,
    // parsing, spans) runs on this thread alone, the exporters on their own thread. On
    // one shared worker a woken exporter task only ran when the drain loop yielded, and
    // under load the export queue overflowed while a core sat idle.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let export_runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ghostwire-export")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the exporters' async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, export_runtime.handle().clone()));
    // Whatever the exporters still hold was accounted for by their shutdown.
    export_runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, export_runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    cli.validate()?;
    if let Some(set) = &cli.empty_probes {
        return empty_probes(set).await;
    }
    let outputs = cli.outputs(|k| std::env::var(k).ok())?;
    let node_attributes = cli.resource_attributes(|k| std::env::var(k).ok())?;
    let sampling = cli.sampling(|k| std::env::var(k).ok())?;
    // Bound before the probes load: a taken port fails at once, in one line.
    let metrics_listener = match cli.metrics_addr()? {
        Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot serve metrics on {addr} ({e}): choose another address with --metrics-listen HOST:PORT"
            )
        })?),
        None => None,
    };
    let kernel_snapshot = Arc::new(Mutex::new(stats::KernelCounters::default()));

    let scan = ghostwire::conn::listen::scan(std::path::Path::new("/proc"));
    stats::global().add(Counter::ConnsPreexisting, scan.established);
    if scan.established > 0 {
        log::info!(
            "{} TCP connections were already open ({} listening ports in {} network namespaces): they are traced from their next message",
            scan.established,
            scan.listening.len(),
            scan.namespaces
        );
    }

    // Probes first: a host that cannot run them fails before anything else starts.
    let mut capture = Capture::start(&CaptureConfig {
        pids: cli.pids.clone(),
        ports: cli.ports.clone(),
        exes: cli.exes.clone(),
        capture_bytes: cli.capture_bytes,
        ring_bytes: cli.ring_buffer_bytes,
        hooks: cli.hook_choice()?,
    })?;
    log::info!("capture: {}", capture.hooks);
    // Linux 6.16 and later refuse uprobes without CAP_SYS_ADMIN: without it TLS is
    // counted, not decrypted, and the rest of the capture runs on the documented set.
    let uprobes =
        ghostwire::capture::preflight::effective_caps().is_none_or(ghostwire::capture::preflight::uprobes_permitted);
    if !cli.no_tls && !uprobes {
        log::warn!(
            "tls: OpenSSL uprobes need CAP_SYS_ADMIN (Linux 6.16 and later refuse uprobes without it): TLS connections are counted, not decrypted; add SYS_ADMIN to decrypt them, or pass --no-tls"
        );
    }
    let tls = if cli.no_tls || !uprobes { None } else { Some(discover_tls(&mut capture, &cli)) };
    let mut metrics_registry = None;
    let mut sink = if cli.capture_only {
        Sink::Discard
    } else {
        // The exporters spawn their tasks on the export runtime.
        let export_context = export_runtime.enter();
        let exporters = Exporters::start(ExportConfig {
            otlp: outputs.otlp.clone(),
            jsonl_path: outputs.jsonl.clone(),
            console: outputs.console,
            queue_capacity: cli.queue_size,
            ..ExportConfig::default()
        })?;
        drop(export_context);
        let mut pipeline = Pipeline::new(exporters, cli.instrumented.clone(), scan.listening);
        pipeline.set_sampler(ghostwire::sample::Sampler::new(sampling.clone()));
        if cli.unsafe_raw_queries {
            log::warn!("--unsafe-raw-queries: database query texts are exported with their literals (parameter values); drop the flag to sanitise them");
        }
        pipeline.set_build_options(ghostwire::span::build::Options { raw_queries: cli.unsafe_raw_queries });
        // The live view prints a service map on exit, from the metrics' service graph.
        if metrics_listener.is_some() || outputs.console {
            let (metrics, registry) = ghostwire::metrics::Metrics::new(kernel_snapshot.clone());
            pipeline.set_metrics(metrics);
            metrics_registry = Some(registry);
        }
        if let (Some(listener), Some(registry)) = (metrics_listener.as_ref(), metrics_registry.take()) {
            listener.set_nonblocking(true)?;
            let listener = listener.try_clone()?;
            let _context = export_runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            export_runtime.spawn(ghostwire::metrics::serve::serve(listener, registry));
        }
        pipeline.set_node_attributes(&node_attributes);
        // Pod names from the API server, watched on the exporters' runtime.
        if let Some(pods) = ghostwire::k8s::start(&cli.kubernetes(|k| std::env::var(k).ok()), &export_runtime) {
            pipeline.set_pods(pods);
        }
        match ghostwire::span::nat::Conntrack::open() {
            Ok(ct) => pipeline.set_nat(Box::new(ct)),
            // Without it only NATed connections (Services) lose their socket link.
            Err(e) => log::info!("conntrack unavailable ({e}): calls through a Service NAT are not socket-linked"),
        }
        Sink::Pipeline(Box::new(pipeline))
    };

    let ring = capture.take_ring()?;
    // From here the discovery thread attaches files found later; the main task only
    // reads the counters through the lock.
    let capture = Arc::new(Mutex::new(capture));
    let (tls_files, worker) = match tls {
        Some((discovery, files)) => match Worker::spawn(discovery, capture.clone()) {
            Ok((worker, execs)) => {
                if let Sink::Pipeline(p) = &mut sink {
                    p.forward_execs(execs);
                }
                (Some(files), Some(worker))
            }
            Err(e) => {
                log::warn!("tls: cannot start the discovery thread ({e}): processes started from now on are not traced over TLS");
                (Some(files), None)
            }
        },
        None => (None, None),
    };
    // SAFETY: the RingBuf owns its map fd and keeps it open and unchanged for as long as
    // the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel wakes the agent only once a backlog builds up; otherwise the ring is
    // drained on this timer, which bounds how late a span can be.
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_tick = cli.stats_interval().map(tokio::time::interval);
    let mut last_kernel = stats::KernelCounters::default();

    let mut what = Vec::new();
    if cli.capture_only {
        what.push("nowhere: records are discarded (--capture-only)".to_owned());
    } else {
        if let Some(o) = &outputs.otlp {
            let how = match o.protocol {
                ghostwire::export::otlp::Protocol::Grpc => "OTLP/gRPC",
                ghostwire::export::otlp::Protocol::HttpProtobuf => "OTLP/HTTP",
            };
            what.push(format!("{how} to {}", o.endpoint));
        }
        if let Some(p) = &outputs.jsonl {
            what.push(format!("JSONL to {}", p.display()));
        }
        if outputs.console {
            what.push("live waterfall".to_owned());
        }
        if let Some(l) = &metrics_listener {
            if let Ok(addr) = l.local_addr() {
                what.push(format!("metrics at http://{addr}/metrics"));
            }
        }
    }
    let tls_line = match tls_files {
        Some(1) => "OpenSSL uprobes on 1 file".to_owned(),
        Some(n) => format!("OpenSSL uprobes on {n} files"),
        None if cli.no_tls => "TLS not decrypted (--no-tls)".to_owned(),
        None => "TLS not decrypted (no CAP_SYS_ADMIN for uprobes)".to_owned(),
    };
    let probes = lock(&capture).attached;
    eprintln!("ready: {probes} probes attached; {tls_line}; spans go to {}", what.join(", "));
    // SAFETY: mi_collect only returns this thread's free pages to the OS.
    unsafe { libmimalloc_sys::mi_collect(true) };

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if drain_ring(guard.get_inner_mut(), &mut sink, DRAIN_BUDGET) < DRAIN_BUDGET {
                    guard.clear_ready();
                } else {
                    tokio::task::yield_now().await;
                }
            }
            _ = drain.tick() => {
                drain_ring(ring.get_mut(), &mut sink, DRAIN_BUDGET);
            }
            _ = tick.tick() => {
                sink.tick();
                if metrics_listener.is_some() {
                    // The scrape reads the last snapshot (never the capture's lock).
                    let read = match capture.try_lock() {
                        Ok(c) => Some(kernel_counters(&c)),
                        Err(TryLockError::Poisoned(c)) => Some(kernel_counters(&c.into_inner())),
                        Err(TryLockError::WouldBlock) => None,
                    };
                    if let Some(k) = read {
                        *kernel_snapshot.lock().unwrap_or_else(PoisonError::into_inner) = k;
                    }
                }
            }
            _ = async {
                match stats_tick.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                // Never wait for the discovery thread here (attaching a large
                // executable holds the capture for up to half a second): the drain
                // shares this task. Report the last counters read instead.
                match capture.try_lock() {
                    Ok(c) => last_kernel = kernel_counters(&c),
                    Err(TryLockError::Poisoned(c)) => last_kernel = kernel_counters(&c.into_inner()),
                    Err(TryLockError::WouldBlock) => {}
                }
                eprintln!("{}", stats::report(&last_kernel));
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Whatever is still in the ring was produced before the signal: finish it.
    drain_ring(ring.get_mut(), &mut sink, usize::MAX);
    if let Some(worker) = worker {
        worker.stop();
    }
    let counters = kernel_counters(&lock(&capture));
    // The last reference: detaches every probe.
    drop(capture);
    if let Sink::Pipeline(pipeline) = sink {
        let (exporters, map) = pipeline.finish();
        // The waterfall prints its last traces here, so the map comes after them.
        exporters.shutdown(Duration::from_secs(5)).await;
        if let Some(map) = map.filter(|_| outputs.console) {
            print_service_map(&map);
        }
    }
    eprintln!("{}", stats::report(&counters));
    Ok(())
}

/// Where drained records go.
enum Sink {
    Pipeline(Box<Pipeline>),
    /// `--capture-only`: counted and dropped.
    Discard,
}

impl Sink {
    fn tick(&mut self) {
        if let Sink::Pipeline(p) = self {
            p.tick();
            p.flush();
        }
    }
}

/// The capture, shared with the TLS discovery thread (which holds it only while it
/// attaches a new file).
/// The service map on stdout, below the waterfall; a closed stdout is not an error.
fn print_service_map(map: &ghostwire::metrics::map::ServiceMap) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("\n{}", map.render()).as_bytes()).and_then(|()| out.flush());
}

fn lock(capture: &Mutex<Capture>) -> std::sync::MutexGuard<'_, Capture> {
    capture.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At start-up: the OpenSSL uprobes on the host's own libssl, then on every file the
/// running processes use. Returns the discovery state and the number of files attached.
fn discover_tls(capture: &mut Capture, cli: &Cli) -> (Discovery, usize) {
    let start = Instant::now();
    let mut discovery = Discovery::new("/proc", ScanFilter { pids: cli.pids.clone(), exes: cli.exes.clone() });
    let mut attach = |path: &Path| capture.attach_tls(path);
    let host = discovery.attach_host_libraries(&mut attach);
    let scan = discovery.scan_all(&mut attach);
    let files = discovery.attached();
    log::info!(
        "tls: start-up discovery attached {files} files ({host} of the host's libraries); {} processes scanned in {} ms; {} ms in all",
        scan.processes,
        scan.elapsed.as_millis(),
        start.elapsed().as_millis()
    );
    (discovery, files)
}

/// The kernel's counters; a failure to read them is a warning, not the end.
fn kernel_counters(capture: &Capture) -> stats::KernelCounters {
    capture.counters().unwrap_or_else(|e| {
        log::warn!("cannot read the kernel counters: {e}");
        stats::KernelCounters::default()
    })
}

/// `--empty-probes SET`: empty programs on one hook set, until SIGINT/SIGTERM.
async fn empty_probes(set: &str) -> anyhow::Result<()> {
    let floor = ghostwire::capture::Floor::attach(set)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    eprintln!("ready: {} empty programs attached to the {set} hooks", floor.attached);
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    drop(floor);
    Ok(())
}

/// Feeds up to `budget` ring-buffer records to the sink; returns how many.
fn drain_ring(ring: &mut RingBuf<MapData>, sink: &mut Sink, budget: usize) -> usize {
    let mut handled = 0;
    while handled < budget {
        let Some(item) = ring.next() else { break };
        match sink {
            Sink::Pipeline(p) => p.on_record(&item),
            Sink::Discard => stats::global().incr(Counter::EventsDiscarded),
        }
        handled += 1;
    }
    if let Sink::Pipeline(p) = sink {
        p.flush();
    }
    handled
}
