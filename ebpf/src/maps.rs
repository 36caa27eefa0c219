//! Maps shared by all programs, and the small helpers around them.
use aya_ebpf::{
    helpers::bpf_get_current_comm,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use ghostwire_common::{Config, DataEvent, Tuple, COMM_LEN, COUNTER_SLOTS, MAX_CAPTURE};

/// Records to userspace. Size is set by the agent at load time (`--ring-buffer-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Agent settings, one slot.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-probe counters: `probe * counter::COUNT + counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// `--pid` filter (key = tgid).
#[map]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// `--port` filter (key = port, host order; local or remote).
#[map]
pub static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// What a thread is doing between syscall entry and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub ts_enter: u64,
    /// User buffer, iovec array, or 0.
    pub buf: u64,
    /// Buffer length or iovec count.
    pub count: u64,
    /// Set by the sock tracepoints while the syscall runs: the TCP socket.
    pub sk: u64,
    pub fd: i32,
    pub probe: u8,
    pub shape: u8,
    pub direction: u8,
    pub _pad: u8,
}

/// `Pending::shape`: where the payload is.
pub const SHAPE_BUF: u8 = 0;
pub const SHAPE_IOV: u8 = 1;
/// Payload not in user memory (sendfile): only its length is known.
pub const SHAPE_GAP: u8 = 2;
pub const SHAPE_ACCEPT: u8 = 3;
pub const SHAPE_CONNECT: u8 = 4;

/// In-flight syscalls, per thread (key = pid_tgid). LRU so a thread that dies inside a
/// syscall cannot leak an entry.
#[map]
pub static ACTIVE: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// A connection seen reaching ESTABLISHED since the agent started.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockInfo {
    pub tuple: Tuple,
    pub gen: u64,
}

/// Key: kernel `struct sock *`.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: i32,
}

/// What the agent knows of one process's socket fd.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FdInfo {
    /// Socket bound to this fd once data flowed (0 before).
    pub sk: u64,
    pub gen: u64,
    pub role: u8,
    /// 1 when the port filter excludes this connection.
    pub ignored: u8,
    pub _pad: [u8; 6],
}

/// Fds returned by `accept`/`accept4` or passed to `connect` since the agent started.
#[map]
pub static FDS: LruHashMap<FdKey, FdInfo> = LruHashMap::with_max_entries(65536, 0);

/// Header and payload, contiguous, so one `bpf_ringbuf_output` sends both. The payload
/// area is twice the capture bound so the verifier can prove every iovec copy in bounds.
#[repr(C)]
pub struct Scratch {
    pub hdr: DataEvent,
    pub data: [u8; 2 * MAX_CAPTURE],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(probe: u8, counter: u32) {
    let idx = u32::from(probe) * ghostwire_common::counter::COUNT as u32 + counter;
    if let Some(v) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Whether the process is traced at all (filters applied at syscall entry).
#[inline(always)]
pub fn traced(cfg: &Config, tgid: u32) -> bool {
    if tgid == cfg.agent_tgid {
        return false;
    }
    if cfg.filter_pids != 0 {
        // SAFETY: read-only lookup of a plain value.
        if unsafe { PID_FILTER.get(tgid) }.is_none() {
            return false;
        }
    }
    if cfg.exe_count != 0 {
        return comm_matches(cfg);
    }
    true
}

#[inline(always)]
fn comm_matches(cfg: &Config) -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    let n = cfg.exe_count as usize;
    let mut i = 0;
    while i < ghostwire_common::MAX_EXE_FILTERS {
        if i >= n {
            break;
        }
        let name = &cfg.exe_names[i];
        let mut j = 0;
        let mut equal = true;
        while j < COMM_LEN {
            if name[j] != comm[j] {
                equal = false;
                break;
            }
            if name[j] == 0 {
                break;
            }
            j += 1;
        }
        if equal {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether a connection passes the port filter.
#[inline(always)]
pub fn port_allowed(cfg: &Config, tuple: &Tuple) -> bool {
    if cfg.filter_ports == 0 {
        return true;
    }
    // SAFETY: read-only lookups of plain values.
    unsafe { PORT_FILTER.get(tuple.sport).is_some() || PORT_FILTER.get(tuple.dport).is_some() }
}

/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_output` flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Backlog that wakes the agent at once. Below it the agent is not woken per event (that
/// costs a context switch per syscall under load); it drains on its own short timer.
const WAKEUP_BYTES: u64 = 256 * 1024;

/// Writes `len` bytes starting at `data` to the ring buffer; counts a full ring.
/// `wake`: wake the agent now (rare events it must see promptly).
#[inline(always)]
pub fn output(probe: u8, data: *const u8, len: u64, wake: bool) -> bool {
    // SAFETY: `data` points to at least `len` readable bytes (checked by the verifier).
    let bytes = unsafe { core::slice::from_raw_parts(data, len as usize) };
    let flags = if wake || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let ret = match EVENTS.output::<[u8]>(bytes, flags) {
        Ok(()) => 0,
        Err(e) => e,
    };
    if ret < 0 {
        count(probe, ghostwire_common::counter::RING_FULL);
        false
    } else {
        count(probe, ghostwire_common::counter::EMITTED);
        true
    }
}
