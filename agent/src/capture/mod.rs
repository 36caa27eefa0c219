//! Kernel capture: pre-flight checks, tracefs, loading and attaching the programs, the
//! filters and the ring buffer. The only module that knows aya.
mod decode;
mod preflight;

pub use decode::{decode, DecodeError, Event};
pub use preflight::PreflightError;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use ghostwire_common::{counter, probe, Config, COMM_LEN, COUNTER_SLOTS, MAX_CAPTURE, MAX_EXE_FILTERS};

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
    /// Bytes copied per syscall.
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("invalid filter: {what}")]
    Filter { what: String },
    #[error("loading the eBPF programs failed: {source}; check that the kernel has BPF and BTF enabled and that ghostwire runs as root")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("eBPF program or map `{name}` missing from the object (build error)")]
    Missing { name: &'static str },
    #[error("loading eBPF program `{name}` failed: {source}; the kernel refused it (verifier or permissions). Run with RUST_LOG=debug for the verifier log")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to tracepoint {category}/{tracepoint} failed: {source}; is tracefs mounted and does this kernel have the tracepoint?")]
    Attach {
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Every program and the tracepoints it attaches to.
const PROGRAMS: &[(&str, &[(&str, &str)])] = &[
    ("sys_enter_read", &[("syscalls", "sys_enter_read")]),
    ("sys_enter_write", &[("syscalls", "sys_enter_write")]),
    ("sys_enter_recvfrom", &[("syscalls", "sys_enter_recvfrom")]),
    ("sys_enter_sendto", &[("syscalls", "sys_enter_sendto")]),
    ("sys_enter_readv", &[("syscalls", "sys_enter_readv")]),
    ("sys_enter_writev", &[("syscalls", "sys_enter_writev")]),
    ("sys_enter_recvmsg", &[("syscalls", "sys_enter_recvmsg")]),
    ("sys_enter_sendmsg", &[("syscalls", "sys_enter_sendmsg")]),
    ("sys_enter_sendfile64", &[("syscalls", "sys_enter_sendfile64")]),
    ("sys_enter_accept", &[("syscalls", "sys_enter_accept")]),
    ("sys_enter_accept4", &[("syscalls", "sys_enter_accept4")]),
    ("sys_enter_connect", &[("syscalls", "sys_enter_connect")]),
    ("sys_enter_close", &[("syscalls", "sys_enter_close")]),
    ("sock_recv_length", &[("sock", "sock_recv_length")]),
    ("sock_send_length", &[("sock", "sock_send_length")]),
    (
        "sys_exit",
        &[
            ("syscalls", "sys_exit_read"),
            ("syscalls", "sys_exit_write"),
            ("syscalls", "sys_exit_recvfrom"),
            ("syscalls", "sys_exit_sendto"),
            ("syscalls", "sys_exit_readv"),
            ("syscalls", "sys_exit_writev"),
            ("syscalls", "sys_exit_recvmsg"),
            ("syscalls", "sys_exit_sendmsg"),
            ("syscalls", "sys_exit_sendfile64"),
            ("syscalls", "sys_exit_accept"),
            ("syscalls", "sys_exit_accept4"),
            ("syscalls", "sys_exit_connect"),
        ],
    ),
    ("inet_sock_set_state", &[("sock", "inet_sock_set_state")]),
    ("sched_process_exit", &[("sched", "sched_process_exit")]),
];

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Capture {
    ebpf: Ebpf,
    /// Number of tracepoints attached.
    pub attached: usize,
}

impl Capture {
    /// Checks the host, loads the programs, writes the filters and attaches every probe.
    pub fn start(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        preflight::check()?;
        preflight::ensure_tracefs()?;
        preflight::raise_memlock();

        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ghostwire"));
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .load(object)
            .map_err(|source| CaptureError::Load { source })?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => drop(logger),
            Err(e) => log::debug!("aya-log not initialised: {e}"),
        }

        write_filters(&mut ebpf, cfg)?;

        let mut attached = 0;
        for (name, points) in PROGRAMS {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(CaptureError::Missing { name })?
                .try_into()
                .map_err(|source| CaptureError::LoadProgram { name, source })?;
            program.load().map_err(|source| CaptureError::LoadProgram { name, source })?;
            for (category, tracepoint) in *points {
                program.attach(category, tracepoint).map_err(|source| CaptureError::Attach {
                    category,
                    tracepoint,
                    source,
                })?;
                attached += 1;
            }
        }
        Ok(Self { ebpf, attached })
    }

    /// The ring buffer; call once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(CaptureError::Missing { name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(|source| CaptureError::Map { name: "EVENTS", source })
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let mut out = KernelCounters::default();
        let Some(map) = self.ebpf.map("COUNTERS") else { return out };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else { return out };
        for slot in 0..COUNTER_SLOTS {
            let Ok(values) = array.get(&slot, 0) else { continue };
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
        out
    }
}

fn write_filters(ebpf: &mut Ebpf, cfg: &CaptureConfig) -> Result<(), CaptureError> {
    let mut kcfg = Config {
        agent_tgid: std::process::id(),
        capture_bytes: cfg.capture_bytes.min(MAX_CAPTURE as u32),
        filter_pids: u8::from(!cfg.pids.is_empty()),
        filter_ports: u8::from(!cfg.ports.is_empty()),
        ..Config::default()
    };
    if cfg.exes.len() > MAX_EXE_FILTERS {
        return Err(CaptureError::Filter {
            what: format!("at most {MAX_EXE_FILTERS} --exe names are supported"),
        });
    }
    for (slot, name) in kcfg.exe_names.iter_mut().zip(&cfg.exes) {
        let bytes = name.as_bytes();
        // The kernel keeps 15 bytes of a process name.
        let n = bytes.len().min(COMM_LEN - 1);
        slot[..n].copy_from_slice(&bytes[..n]);
    }
    kcfg.exe_count = cfg.exes.len() as u8;

    map_mut::<Array<_, Config>>(ebpf, "CONFIG", |m| m.set(0, kcfg, 0))?;
    for &pid in &cfg.pids {
        map_mut::<HashMap<_, u32, u8>>(ebpf, "PID_FILTER", |m| m.insert(pid, 1, 0))?;
    }
    for &port in &cfg.ports {
        map_mut::<HashMap<_, u16, u8>>(ebpf, "PORT_FILTER", |m| m.insert(port, 1, 0))?;
    }
    Ok(())
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
