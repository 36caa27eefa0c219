//! Kernel capture: pre-flight checks, kernel struct offsets, loading and attaching the
//! programs, the filters and the ring buffer. The only module that knows aya.
//!
//! Hooks, cheapest first (see the README's table of what each costs by itself):
//! raw tracepoints on `sock_send_length`, `sock_recv_length` and `inet_sock_set_state`;
//! if raw tracepoints cannot attach, the same programs on the classic `sock:`
//! tracepoints. `sched:sched_process_exit` and `sched:sched_process_exec` in both cases.
//! OpenSSL uprobes are loaded at start and attached per library file
//! ([`Capture::attach_tls`]).
mod btf;
mod decode;
pub mod preflight;
pub mod tls_libs;

pub use btf::BtfError;
pub use decode::{addrs, decode, Conn, ConnId, Data, DecodeError, Event, Listen, Payload, State, StateChange};
pub use preflight::PreflightError;

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_skb::CgroupSkbAttachType,
        uprobe::{UProbeAttachLocation, UProbeError, UProbeScope},
        CgroupAttachMode, CgroupSkb, ProgramError, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use ghostwire_common::{counter, probe, Config, SyscallNumbers, COMM_LEN, COUNTER_SLOTS, MAX_CAPTURE, MAX_EXE_FILTERS};

use crate::stats::KernelCounters;

/// What to trace; everything else is filtered out in the kernel.
#[derive(Clone, Debug, Default)]
pub struct CaptureConfig {
    /// Only these processes (tgid). Empty: all.
    pub pids: Vec<u32>,
    /// Only connections with one of these local or remote ports. Empty: all.
    pub ports: Vec<u16>,
    /// Only processes with one of these names (`comm`, first 15 bytes). Empty: all.
    pub exes: Vec<String>,
    /// Bytes copied per transfer.
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Which hooks to use.
    pub hooks: HookChoice,
}

/// Which kind of hook carries the socket-layer programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookChoice {
    /// Raw tracepoints, else classic tracepoints.
    #[default]
    Auto,
    /// Only classic tracepoints (to compare, or where raw tracepoints are refused).
    Tracepoints,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("invalid filter: {what}")]
    Filter { what: String },
    #[error("loading the eBPF programs failed: {source}; check that the kernel has BPF and BTF enabled and that ghostwire has CAP_BPF and CAP_PERFMON (or runs as root)")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("eBPF program or map `{name}` missing from the object (build error)")]
    Missing { name: &'static str },
    #[error("loading eBPF program `{name}` failed: {source}; the kernel refused it (the verifier, or a missing CAP_BPF or CAP_PERFMON). Run with RUST_LOG=debug for the verifier log")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching to {hook} failed: {source}; this kernel lacks the hook (ghostwire needs Linux 6.3 or newer for the sock_send_length/sock_recv_length tracepoints), or ghostwire lacks CAP_PERFMON (tracepoints) or CAP_DAC_READ_SEARCH (tracefs)")]
    Attach {
        hook: String,
        #[source]
        source: ProgramError,
    },
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/mounts): mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot count the CPUs ({what}: {source})")]
    Cpus {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("unknown hook set `{0}`: use one of {sets}", sets = FLOOR_SETS.join(", "))]
    UnknownFloorSet(String),
    #[error("cannot attach the TLS uprobes to {symbol} in {}: {source}; the file must be an ELF library or executable that exports OpenSSL's SSL_read and SSL_write, and uprobes need CAP_SYS_ADMIN on Linux 6.16 and later", path.display())]
    TlsAttach {
        path: PathBuf,
        symbol: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot read OpenSSL's functions in {}: {reason}; the file must be an ELF library or executable that exports SSL_read and SSL_write", path.display())]
    TlsSymbols { path: std::path::PathBuf, reason: String },
    #[error("no OpenSSL library for the uprobe-ssl hook set (looked for {}): install libssl3", LIBSSL_PATHS.join(", "))]
    NoLibssl,
}

/// The socket-layer programs: (raw tracepoint program, its tracepoint, classic fallback
/// program, its category).
const SOCK_PROGRAMS: &[(&str, &str, &str, &str)] = &[
    ("sock_send", "sock_send_length", "tp_sock_send", "sock"),
    ("sock_recv", "sock_recv_length", "tp_sock_recv", "sock"),
    ("sock_state", "inet_sock_set_state", "tp_sock_state", "sock"),
];

/// The OpenSSL functions the TLS uprobes hook: (symbol, entry program, return program,
/// required). The `_ex` variants appeared in OpenSSL 1.1.1; `SSL_read` does not call
/// `SSL_read_ex` (both call an internal function), so no byte is seen twice.
/// `SSL_do_handshake` (which `SSL_connect` and `SSL_accept` call) binds a session to
/// its connection before its first plaintext.
const TLS_PROBES: &[(&str, &str, &str, bool)] = &[
    ("SSL_read", "ssl_read_enter", "ssl_read_exit", true),
    ("SSL_write", "ssl_write_enter", "ssl_write_exit", true),
    ("SSL_read_ex", "ssl_read_enter", "ssl_read_ex_exit", false),
    ("SSL_write_ex", "ssl_write_ex_enter", "ssl_write_ex_exit", false),
    ("SSL_do_handshake", "ssl_handshake_enter", "ssl_handshake_exit", false),
];

/// The uprobe programs, loaded at start and attached per file.
const TLS_PROGRAMS: &[&str] = &[
    "ssl_read_enter",
    "ssl_write_enter",
    "ssl_write_ex_enter",
    "ssl_handshake_enter",
    "ssl_read_exit",
    "ssl_write_exit",
    "ssl_read_ex_exit",
    "ssl_write_ex_exit",
    "ssl_handshake_exit",
];

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Capture {
    ebpf: Ebpf,
    /// What `CONFIG` holds, to write it again with `tls = 1`.
    kcfg: Config,
    /// Number of hooks attached.
    pub attached: usize,
    /// One line naming the hooks in use.
    pub hooks: String,
}

impl Capture {
    /// Checks the host, loads the programs, writes the filters and attaches every probe.
    pub fn start(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        preflight::check()?;
        preflight::raise_memlock();
        let offsets = btf::kernel_offsets(Path::new(btf::VMLINUX))?;
        let mut ebpf = load(cfg.ring_bytes)?;
        let kcfg = write_filters(&mut ebpf, cfg, offsets, wake_bytes(cfg.ring_bytes, possible_cpus()?))?;
        // Loaded now, so a verifier refusal shows at start; attached per library file.
        for name in TLS_PROGRAMS {
            let program: &mut UProbe = program_mut(&mut ebpf, name)?;
            program.load().map_err(|source| CaptureError::LoadProgram { name, source })?;
        }

        let mut attached = 0;
        let raw = cfg.hooks == HookChoice::Auto && attach_raw_sock(&mut ebpf, &mut attached)?;
        let kind = if raw {
            "raw tracepoints"
        } else {
            // Classic tracepoints need tracefs.
            preflight::ensure_tracefs()?;
            for (_, point, program, category) in SOCK_PROGRAMS {
                attach_tp(&mut ebpf, program, &[(category, point)])?;
                attached += 1;
            }
            "tracepoints"
        };
        preflight::ensure_tracefs()?;
        attach_tp(&mut ebpf, "sched_process_exit", &[("sched", "sched_process_exit")])?;
        attach_tp(&mut ebpf, "sched_process_exec", &[("sched", "sched_process_exec")])?;
        attached += 2;
        let hooks = format!(
            "{kind} sock_send_length, sock_recv_length, inet_sock_set_state; tracepoints sched_process_exit, sched_process_exec; syscall arguments from the task's saved registers; uprobes on OpenSSL's SSL_read/SSL_write(_ex) and SSL_do_handshake, per library file found"
        );
        Ok(Self { ebpf, kcfg, attached, hooks })
    }

    /// Attaches the OpenSSL uprobes to one library or executable `target`, for every
    /// process that maps it (now or later); returns how many probes were attached.
    /// `SSL_read` and `SSL_write` are required; the `_ex` variants are skipped when the
    /// file lacks them (OpenSSL 1.1.0). Call once per file: attaching twice reports
    /// every byte twice. On error nothing stays attached.
    ///
    /// Return probes go in before entry probes: a call already running when its entry
    /// probe appears is then ignored at its return, rather than left marked as running
    /// (which would bind the thread's next socket to its session).
    pub fn attach_tls(&mut self, target: &Path) -> Result<usize, CaptureError> {
        // Offsets by the file's symbol hash table: a few ms for Node's 100 MB, where
        // aya's resolution by name scans the whole table for each symbol (~50 ms each).
        let symbols: Vec<&str> = TLS_PROBES.iter().map(|p| p.0).collect();
        let offsets = tls_libs::function_offsets(target, &symbols)
            .map_err(|e| CaptureError::TlsSymbols { path: target.to_owned(), reason: e.to_string() })?;
        let mut links = Vec::new();
        for (&(symbol, entry, ret, required), offset) in TLS_PROBES.iter().zip(offsets) {
            let Some(offset) = offset else {
                if required {
                    return Err(CaptureError::TlsSymbols {
                        path: target.to_owned(),
                        reason: format!("it does not export {symbol}"),
                    });
                }
                log::debug!("tls: {} has no {symbol}", target.display());
                continue;
            };
            for name in [ret, entry] {
                let program: &mut UProbe = program_mut(&mut self.ebpf, name)?;
                match program.attach(UProbeAttachLocation::AbsoluteOffset(offset), target, UProbeScope::AllProcesses) {
                    Ok(link) => links.push((name, link)),
                    Err(source) => {
                        for (name, link) in links {
                            if let Ok(p) = program_mut::<UProbe>(&mut self.ebpf, name) {
                                let _ = p.detach(link);
                            }
                        }
                        return Err(CaptureError::TlsAttach { path: target.to_owned(), symbol, source });
                    }
                }
            }
        }
        if self.kcfg.tls == 0 {
            self.kcfg.tls = 1;
            let kcfg = self.kcfg;
            map_mut::<Array<_, Config>>(&mut self.ebpf, "CONFIG", |m| m.set(0, kcfg, 0))?;
        }
        self.attached += links.len();
        Ok(links.len())
    }

    /// The ring buffer; call once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(CaptureError::Missing { name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(|source| CaptureError::Map { name: "EVENTS", source })
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, CaptureError> {
        let mut out = KernelCounters::default();
        let map = self.ebpf.map("COUNTERS").ok_or(CaptureError::Missing { name: "COUNTERS" })?;
        let array =
            PerCpuArray::<_, u64>::try_from(map).map_err(|source| CaptureError::Map { name: "COUNTERS", source })?;
        for slot in 0..COUNTER_SLOTS {
            let values = array.get(&slot, 0).map_err(|source| CaptureError::Map { name: "COUNTERS", source })?;
            let total: u64 = values.iter().sum();
            if total == 0 {
                continue;
            }
            let p = slot as usize / counter::COUNT;
            let c = slot as usize % counter::COUNT;
            if let (Some(pn), Some(cn)) = (probe::NAMES.get(p), counter::NAMES.get(c)) {
                out.values.push((pn, cn, total));
            }
        }
        Ok(out)
    }
}

fn possible_cpus() -> Result<u32, CaptureError> {
    let cpus = aya::util::nr_cpus().map_err(|(what, source)| CaptureError::Cpus { what, source })?;
    Ok(u32::try_from(cpus).unwrap_or(u32::MAX))
}

/// How many bytes one CPU writes before it wakes the agent: together the CPUs never
/// fill more than a quarter of the ring between wakeups, and no CPU waits for more than
/// 256 KiB (the agent also drains on a timer).
#[must_use]
pub fn wake_bytes(ring_bytes: u32, cpus: u32) -> u32 {
    (ring_bytes / 4 / cpus.max(1)).clamp(4096, 256 * 1024)
}

fn load(ring_bytes: u32) -> Result<Ebpf, CaptureError> {
    let cpus = possible_cpus()?;
    let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ghostwire"));
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("EVENTS", ring_bytes)
        .map_max_entries("SCRATCH", cpus)
        .load(object)
        .map_err(|source| CaptureError::Load { source })?;
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => drop(logger),
        Err(e) => log::debug!("aya-log not initialised: {e}"),
    }
    Ok(ebpf)
}

/// Raw tracepoints for the socket-layer programs. `Ok(false)` (and nothing attached)
/// when this kernel refuses them, so the caller falls back to classic tracepoints.
fn attach_raw_sock(ebpf: &mut Ebpf, attached: &mut usize) -> Result<bool, CaptureError> {
    for (i, (name, point, _, _)) in SOCK_PROGRAMS.iter().enumerate() {
        let program: &mut RawTracePoint = program_mut(ebpf, name)?;
        let result = program.load().and_then(|()| program.attach(point).map(drop));
        if let Err(e) = result {
            log::info!("raw tracepoint {point} unavailable ({e}): using classic tracepoints");
            for (name, _, _, _) in &SOCK_PROGRAMS[..=i] {
                let p: &mut RawTracePoint = program_mut(ebpf, name)?;
                let _ = p.unload();
            }
            *attached -= i;
            return Ok(false);
        }
        *attached += 1;
    }
    Ok(true)
}

fn attach_tp(ebpf: &mut Ebpf, name: &'static str, points: &[(&str, &str)]) -> Result<(), CaptureError> {
    let program: &mut TracePoint = program_mut(ebpf, name)?;
    program.load().map_err(|source| CaptureError::LoadProgram { name, source })?;
    for (category, point) in points {
        program
            .attach(category, point)
            .map_err(|source| CaptureError::Attach { hook: format!("tracepoint {category}:{point}"), source })?;
    }
    Ok(())
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, CaptureError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing { name })?
        .try_into()
        .map_err(|source| CaptureError::LoadProgram { name, source })
}

/// The running architecture's syscall numbers, for the kernel programs.
fn syscall_numbers() -> SyscallNumbers {
    let n = |nr: libc::c_long| u32::try_from(nr).unwrap_or(u32::MAX);
    SyscallNumbers {
        read: n(libc::SYS_read),
        write: n(libc::SYS_write),
        recvfrom: n(libc::SYS_recvfrom),
        sendto: n(libc::SYS_sendto),
        readv: n(libc::SYS_readv),
        writev: n(libc::SYS_writev),
        recvmsg: n(libc::SYS_recvmsg),
        sendmsg: n(libc::SYS_sendmsg),
    }
}

fn write_filters(
    ebpf: &mut Ebpf,
    cfg: &CaptureConfig,
    offsets: ghostwire_common::KernelOffsets,
    wake_bytes: u32,
) -> Result<Config, CaptureError> {
    let mut kcfg = Config {
        wake_bytes,
        agent_tgid: std::process::id(),
        capture_bytes: cfg.capture_bytes.min(MAX_CAPTURE as u32),
        filter_pids: u8::from(!cfg.pids.is_empty()),
        filter_ports: u8::from(!cfg.ports.is_empty()),
        offsets,
        syscalls: syscall_numbers(),
        ..Config::default()
    };
    if cfg.exes.len() > MAX_EXE_FILTERS {
        return Err(CaptureError::Filter { what: format!("at most {MAX_EXE_FILTERS} --exe names are supported") });
    }
    for (slot, name) in kcfg.exe_names.iter_mut().zip(&cfg.exes) {
        let bytes = name.as_bytes();
        // The kernel keeps 15 bytes of a process name.
        let n = bytes.len().min(COMM_LEN - 1);
        slot[..n].copy_from_slice(&bytes[..n]);
    }
    kcfg.exe_count = u8::try_from(cfg.exes.len()).unwrap_or(u8::MAX);

    map_mut::<Array<_, Config>>(ebpf, "CONFIG", |m| m.set(0, kcfg, 0))?;
    for &pid in &cfg.pids {
        map_mut::<HashMap<_, u32, u8>>(ebpf, "PID_FILTER", |m| m.insert(pid, 1, 0))?;
    }
    for &port in &cfg.ports {
        map_mut::<HashMap<_, u16, u8>>(ebpf, "PORT_FILTER", |m| m.insert(port, 1, 0))?;
    }
    Ok(kcfg)
}

fn map_mut<'a, M>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    f: impl FnOnce(&mut M) -> Result<(), aya::maps::MapError>,
) -> Result<(), CaptureError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(CaptureError::Missing { name })?;
    let mut m = M::try_from(map).map_err(|source| CaptureError::Map { name, source })?;
    f(&mut m).map_err(|source| CaptureError::Map { name, source })
}

// ---- empty programs, to measure what a hook set costs by itself -------------------

/// The hook sets `ghostwire --empty-probes SET` can attach.
pub const FLOOR_SETS: &[&str] = &["syscalls", "raw-syscalls", "sock", "raw-sock", "cgroup-skb", "uprobe-ssl"];

/// Where the system's OpenSSL 3 (else 1.1) library usually is, for `uprobe-ssl`.
const LIBSSL_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.1.1",
];

/// The read/write-family syscalls (what a syscall-tracepoint capture hooks).
const RW_SYSCALLS: &[&str] = &["read", "write", "recvfrom", "sendto", "readv", "writev", "recvmsg", "sendmsg"];

/// Empty programs attached to one candidate hook set; detached on drop.
pub struct Floor {
    _ebpf: Ebpf,
    pub attached: usize,
}

impl Floor {
    pub fn attach(set: &str) -> Result<Self, CaptureError> {
        preflight::check()?;
        preflight::raise_memlock();
        let mut ebpf = load(4096)?;
        let mut attached = 0;
        match set {
            "syscalls" => {
                preflight::ensure_tracefs()?;
                let points: Vec<(String, String)> = RW_SYSCALLS
                    .iter()
                    .flat_map(|s| [format!("sys_enter_{s}"), format!("sys_exit_{s}")])
                    .map(|p| ("syscalls".to_owned(), p))
                    .collect();
                let points: Vec<(&str, &str)> = points.iter().map(|(c, p)| (c.as_str(), p.as_str())).collect();
                attach_tp(&mut ebpf, "floor_tp", &points)?;
                attached = points.len();
            }
            "sock" => {
                preflight::ensure_tracefs()?;
                attach_tp(&mut ebpf, "floor_tp", &[("sock", "sock_send_length"), ("sock", "sock_recv_length")])?;
                attached = 2;
            }
            "raw-syscalls" | "raw-sock" => {
                let points: &[&str] = if set == "raw-sock" {
                    &["sock_send_length", "sock_recv_length"]
                } else {
                    &["sys_enter", "sys_exit"]
                };
                let program: &mut RawTracePoint = program_mut(&mut ebpf, "floor_raw")?;
                program.load().map_err(|source| CaptureError::LoadProgram { name: "floor_raw", source })?;
                for point in points {
                    program
                        .attach(point)
                        .map_err(|source| CaptureError::Attach { hook: format!("raw tracepoint {point}"), source })?;
                    attached += 1;
                }
            }
            "cgroup-skb" => {
                let root = cgroup2_root()?;
                let cgroup =
                    std::fs::File::open(&root).map_err(|source| CaptureError::Cgroup { path: root.clone(), source })?;
                let program: &mut CgroupSkb = program_mut(&mut ebpf, "floor_skb")?;
                program.load().map_err(|source| CaptureError::LoadProgram { name: "floor_skb", source })?;
                for how in [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress] {
                    program
                        .attach(&cgroup, how, CgroupAttachMode::default())
                        .map_err(|source| CaptureError::Attach { hook: format!("cgroup_skb on {root}"), source })?;
                    attached += 1;
                }
            }
            "uprobe-ssl" => {
                let lib = LIBSSL_PATHS.iter().map(Path::new).find(|p| p.exists()).ok_or(CaptureError::NoLibssl)?;
                for name in ["floor_uprobe", "floor_uretprobe"] {
                    let program: &mut UProbe = program_mut(&mut ebpf, name)?;
                    program.load().map_err(|source| CaptureError::LoadProgram { name, source })?;
                    // The functions the real probes hook: Python's `ssl` calls only the
                    // `_ex` ones (skipped where the library lacks them, like attach_tls).
                    for &(symbol, _, _, required) in TLS_PROBES {
                        match program.attach(symbol, lib, UProbeScope::AllProcesses) {
                            Ok(_) => attached += 1,
                            Err(ProgramError::UProbeError(UProbeError::SymbolError { .. })) if !required => {}
                            Err(source) => {
                                return Err(CaptureError::TlsAttach { path: lib.to_owned(), symbol, source })
                            }
                        }
                    }
                }
            }
            other => return Err(CaptureError::UnknownFloorSet(other.to_owned())),
        }
        Ok(Self { _ebpf: ebpf, attached })
    }
}

/// The first cgroup v2 mount point in /proc/mounts.
fn cgroup2_root() -> Result<String, CaptureError> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| point.to_owned())
        })
        .next()
        .ok_or(CaptureError::NoCgroup2)
}
