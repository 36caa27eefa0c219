//! `cargo xtask demo`: a newcomer's first minute. Six legacy services (no OpenTelemetry
//! SDK, `xtask/demo/shop.py`) on loopback, the agent tracing them with the live terminal
//! waterfall, and a bounded load; it stops by itself after `--seconds` or on Ctrl-C,
//! stopping everything it started.
//!
//! Every child runs in a process group of its own, so the terminal's Ctrl-C reaches only
//! this process, which then stops them in order: the load, the agent (SIGINT: it prints
//! the last traces), the services. Each child also gets `PR_SET_PDEATHSIG(SIGTERM)`, so
//! nothing outlives a killed xtask.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, ChildGuard};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long the load runs; then everything stops by itself.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Requests per second sent to the gateway (one at a time).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Use this agent binary (no setup, no build).
    #[arg(long, env = "GHOSTWIRE_BIN", value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Extra agent arguments, after `--`.
    #[arg(last = true, value_name = "AGENT ARGS")]
    pub agent_args: Vec<OsString>,
}

/// A service of the shop: its role (also its `OTEL_SERVICE_NAME`) and what it calls.
struct Service {
    role: &'static str,
    calls: &'static [&'static str],
    about: &'static str,
}

/// The shop, in the order of the agent's `--port` list and of the ports picked.
const SHOP: [Service; 6] = [
    Service { role: "gateway", calls: &["auth", "cart", "payment"], about: "GET /checkout: auth, cart, payment" },
    Service { role: "auth", calls: &[], about: "~2 ms" },
    Service { role: "cart", calls: &["inventory"], about: "DROPS the traceparent it received" },
    Service { role: "inventory", calls: &[], about: "the SLOW hop, 60-120 ms" },
    Service { role: "payment", calls: &["fraud-check"], about: "calls fraud-check" },
    Service { role: "fraud-check", calls: &[], about: "FAILS (503) ~10 % of calls" },
];

/// Set by SIGINT/SIGTERM: stop in order.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn catch_stop_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags); the
        // handler only stores to an atomic, which is async-signal-safe.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // The first signal asks for the orderly stop; a second one kills xtask at once
        // (and PR_SET_PDEATHSIG then stops the children).
        action.sa_flags = libc::SA_RESETHAND;
        // SAFETY: `action` is initialised; the old action is not wanted (null).
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("sigaction({sig})"));
        }
    }
    Ok(())
}

/// A process group of its own (the terminal's Ctrl-C is for xtask alone) and
/// SIGTERM when xtask dies.
fn detach(cmd: &mut Command) -> &mut Command {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl,
    // getppid and raise, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // xtask died between fork and prctl: the death signal would never come.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
    cmd
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to pick a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr().context("local address of a picked port")?.port())).collect()
}

pub fn demo(args: &DemoArgs) -> Result<ExitStatus> {
    if !util::is_root() {
        bail!(crate::NEEDS_ROOT);
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of requests per second, not {}", args.rate);
    }
    let agent_bin = match &args.agent {
        Some(bin) => {
            if !bin.is_file() {
                bail!("agent binary {} does not exist (--agent or GHOSTWIRE_BIN)", bin.display());
            }
            bin.clone()
        }
        None => {
            crate::setup::setup(false)?;
            crate::build_agent()?;
            util::agent_bin()
        }
    };
    let python = util::which("python3").context(
        "python3 is not on PATH: the demo's services are a Python 3 script (standard library only); \
         install it (apt-get install python3) and run the demo again",
    )?;
    let shop = util::repo_root().join("xtask/demo/shop.py");
    if !shop.is_file() {
        bail!("{} is missing", shop.display());
    }
    let ports = free_ports(SHOP.len())?;
    let port_of = |role: &str| SHOP.iter().position(|s| s.role == role).map(|i| ports[i]);

    // From here on Ctrl-C (and SIGTERM) means "stop in order", not "die".
    catch_stop_signals()?;

    let mut agent = Agent::start(&agent_bin, &ports, &args.agent_args)?;

    let mut services = Vec::new();
    for service in &SHOP {
        let mut cmd = Command::new(&python);
        cmd.arg(&shop).arg(service.role).arg("--port").arg(port_of(service.role).context("port")?.to_string());
        for callee in service.calls {
            cmd.arg("--upstream").arg(format!("{callee}={}", port_of(callee).context("upstream port")?));
        }
        cmd.env("OTEL_SERVICE_NAME", service.role).stdin(Stdio::null()).stdout(Stdio::null());
        let shown = util::display(&cmd);
        let child = detach(&mut cmd).spawn().with_context(|| format!("could not start `{shown}`"))?;
        services.push(ChildGuard::new(service.role, child, libc::SIGTERM, Duration::from_secs(3)));
    }
    for (guard, port) in services.iter_mut().zip(&ports) {
        wait_listening(guard, *port)?;
    }

    banner(&ports, args);

    let gateway = port_of("gateway").context("gateway port")?;
    let load_result = run_load(&python, &shop, gateway, args, &mut agent);

    // The orderly stop, also after Ctrl-C or a failed load: the agent first, so that it
    // still sees the services answer the last requests, then the services.
    let status = agent.stop();
    for mut service in services {
        if let Err(e) = service.stop() {
            eprintln!("warning: stopping {}: {e:#}", service.name);
        }
    }
    load_result?;
    let status = status?;
    if status.success() {
        eprintln!("demo: stopped; everything it started has exited");
    }
    Ok(status)
}

fn banner(ports: &[u16], args: &DemoArgs) {
    eprintln!();
    eprintln!("ghostwire demo: six legacy services on 127.0.0.1 (no OpenTelemetry SDK), traced by ghostwire");
    for (service, port) in SHOP.iter().zip(ports) {
        let calls = if service.calls.is_empty() { String::new() } else { format!(" -> {}", service.calls.join(", ")) };
        eprintln!("  {:<12} :{port:<5} {}{calls}", service.role, service.about);
    }
    eprintln!(
        "  load: GET /checkout at {} req/s for {} s, each with a W3C traceparent; every hop \
         forwards it except cart",
        args.rate, args.seconds
    );
    eprintln!("Traces appear below as they complete. Ctrl-C to stop (a second Ctrl-C: at once).");
    eprintln!();
}

/// Waits (at most 10 s) until the service accepts connections on its port.
fn wait_listening(guard: &mut ChildGuard, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = guard.try_wait()? {
            bail!("{} exited ({status}) before it listened on 127.0.0.1:{port}", guard.name);
        }
        if stop_requested() {
            bail!("interrupted while starting {}", guard.name);
        }
        if Instant::now() >= deadline {
            bail!("{} did not listen on 127.0.0.1:{port} within 10 s", guard.name);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the load generator until it ends by itself (`--seconds`), Ctrl-C, or the agent
/// exiting early.
fn run_load(python: &Path, shop: &Path, gateway: u16, args: &DemoArgs, agent: &mut Agent) -> Result<()> {
    let mut cmd = Command::new(python);
    cmd.arg(shop)
        .args(["load", "--port", &gateway.to_string(), "--seconds", &args.seconds.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .env("OTEL_SERVICE_NAME", "load")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let shown = util::display(&cmd);
    let child = detach(&mut cmd).spawn().with_context(|| format!("could not start `{shown}`"))?;
    let mut load = ChildGuard::new("load", child, libc::SIGTERM, Duration::from_secs(3));
    // The loader stops itself after --seconds; a request may take up to its 5 s timeout.
    let deadline = Instant::now() + Duration::from_secs(args.seconds) + Duration::from_secs(10);
    loop {
        if let Some(status) = load.try_wait()? {
            if !status.success() {
                bail!("the load generator failed ({status}): {shown}");
            }
            return Ok(());
        }
        if stop_requested() {
            eprintln!("demo: stopping (Ctrl-C)");
            load.stop()?;
            return Ok(());
        }
        if let Some(status) = agent.guard.try_wait()? {
            load.stop()?;
            bail!("ghostwire exited ({status}) while the load ran");
        }
        if Instant::now() >= deadline {
            eprintln!("warning: the load generator is still running 10 s past --seconds: stopping it");
            load.stop()?;
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The agent: stdout inherited (the waterfall), stderr relayed line by line.
struct Agent {
    guard: ChildGuard,
    relay: Option<thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent on the shop's ports and waits (at most 60 s) for `ready:`.
    fn start(bin: &Path, ports: &[u16], extra: &[OsString]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--output", "console"]);
        for port in ports {
            cmd.arg("--port").arg(port.to_string());
        }
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::piped());
        let shown = util::display(&cmd);
        // stdout is the waterfall's.
        eprintln!("==> starting {shown}");
        let mut child = detach(&mut cmd).spawn().with_context(|| format!("could not start `{shown}`"))?;
        let stderr = child.stderr.take().context("agent stderr is not piped")?;
        // SIGINT: the agent flushes what it holds and prints its exit report.
        let mut guard = ChildGuard::new("ghostwire", child, libc::SIGINT, Duration::from_secs(15));
        let (ready_tx, ready_rx) = mpsc::channel();
        let relay = thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if line.starts_with("ready:") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(Self { guard, relay: Some(relay) }),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // stderr closed: the agent is exiting (try_wait below says how).
                Err(mpsc::RecvTimeoutError::Disconnected) => thread::sleep(Duration::from_millis(100)),
            }
            if let Some(status) = guard.try_wait()? {
                let _ = relay.join();
                bail!("ghostwire exited ({status}) before it was ready (its messages are above): {shown}");
            }
            if stop_requested() {
                bail!("interrupted while waiting for ghostwire to be ready");
            }
            if Instant::now() >= deadline {
                bail!("ghostwire was not ready within 60 s: {shown}");
            }
        }
    }

    /// SIGINT, at most 15 s for the agent to exit (then SIGKILL), and the rest of its
    /// stderr relayed.
    fn stop(&mut self) -> Result<ExitStatus> {
        let status = self.guard.stop()?;
        if let Some(relay) = self.relay.take() {
            // EOF once the agent is gone, unless a child of it holds the pipe: bounded.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !relay.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if relay.is_finished() {
                let _ = relay.join();
            }
        }
        Ok(status)
    }
}
