//! Maps shared by all programs, and the small helpers around them.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_smp_processor_id},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use ghostwire_common::{
    Config, DataEvent, Tuple, COMM_LEN, COUNTER_SLOTS, MAX_CAPTURE, MAX_EXE_FILTERS, MAX_IOVECS, TAIL_WINDOW,
};

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

/// [`SockState::flags`]: first seen on data, not when it was established.
pub const SOCK_MIDSTREAM: u8 = 1;
/// The port filter excludes this connection.
pub const SOCK_IGNORED_PORT: u8 = 2;
/// The owning process is filtered out (or is a kernel thread).
pub const SOCK_IGNORED_PROC: u8 = 4;
/// A TLS session ([`SockState::tls_ssl`]) runs over this connection: its socket bytes
/// are ciphertext and not reported; the plaintext comes from the OpenSSL uprobes.
pub const SOCK_TLS: u8 = 8;

/// One TCP connection the kernel tracks, whoever opened it and whenever.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockState {
    pub tuple: Tuple,
    /// `bpf_ktime_get_ns` when tracking started: with the socket address, the
    /// connection's identity (a recycled `struct sock` is a new connection).
    pub gen: u64,
    /// Bytes transferred so far, per direction (`DIR_INGRESS`, `DIR_EGRESS`).
    pub seq: [u64; 2],
    /// When the last transfer not reported to the agent happened, per direction.
    pub unreported: [u64; 2],
    /// TCP sequence number of offset 0, per direction.
    pub tcp_seq: [u32; 2],
    /// The process the agent was last told uses this connection (0: none yet).
    pub owner: u32,
    /// Network namespace inode.
    pub netns: u32,
    pub role: u8,
    /// `SOCK_*` flags.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// With `SOCK_TLS`: the key of the bound session in [`TLS_SESSIONS`] (tgid, `SSL*`),
    /// so that closing the connection can end the session (`SSL*` addresses are reused
    /// by the next connection).
    pub tls_tgid: u32,
    pub tls_ssl: u64,
    /// Client connections: the thread that called `connect()` and when (from
    /// [`CONNECTING`]); 0 when unknown.
    pub connect_tid: u32,
    pub _pad1: u32,
    pub connect_ns: u64,
}
// Padding explicit: the whole value is initialised before it is inserted.
const _: () = assert!(size_of::<SockState>() == 128);

/// Key: kernel `struct sock *`. LRU, so connections whose close was missed cannot fill
/// it for good. Size set by the agent.
#[map]
pub static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(65536, 0);

/// A `connect()` in progress: the calling thread and when. The handshake completes in
/// softirq context, where the current task is whoever was interrupted, so the caller is
/// recorded at CLOSE → SYN_SENT (inside `tcp_v4_connect`/`tcp_v6_connect`, in the
/// caller's context) and taken out at SYN_SENT → ESTABLISHED.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    /// Kernel thread id (the low half of `bpf_get_current_pid_tgid`).
    pub tid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}

/// Key: `struct sock *`. LRU: a connect that fails (SYN_SENT → CLOSE) leaves its entry
/// behind to age out. A stale entry is harmless: every later connect on the same socket
/// address passes CLOSE → SYN_SENT first and overwrites it. Sized for the connects in
/// flight at once (handshakes take a round trip), not for connections.
#[map]
pub static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(8192, 0);

/// One thread's OpenSSL call: saved at `SSL_read*`/`SSL_write*` entry, used by its
/// return probe and, while `active`, by the socket hooks to bind the session to the
/// socket the call moves ciphertext over.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    /// The `SSL*` of the running call.
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `size_t *readbytes`/`*written` of the `_ex` variants (garbage otherwise).
    pub out: u64,
    /// `SSL_write*`: the bytes asked for (reported at entry, see `tls::write_entry`).
    pub num: u64,
    /// A session whose last `SSL_write` found no socket (memory BIO: the application
    /// sends the ciphertext itself, after the call): the thread's next send that starts
    /// like a TLS record binds it. 0: none.
    pub unbound: u64,
    /// `DIR_INGRESS` (`SSL_read*`), `DIR_EGRESS` (`SSL_write*`) or
    /// `tls::DIR_HANDSHAKE` (`SSL_do_handshake`).
    pub dir: u8,
    /// 1 between entry and return.
    pub active: u8,
    pub _pad: [u8; 6],
}

/// Key: `bpf_get_current_pid_tgid()`. LRU, so a return probe that never ran (a thread
/// that died inside the call) cannot leak an entry.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// Key of [`TLS_SESSIONS`]: `SSL*` addresses are per process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SessionKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// One TLS session's plaintext streams.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsSession {
    /// The connection it runs over (`struct sock *` and its `SockState::gen`); 0 while
    /// not known.
    pub sk: u64,
    pub gen: u64,
    /// Plaintext bytes so far, per direction (`DIR_INGRESS`, `DIR_EGRESS`).
    pub seq: [u64; 2],
    /// When the last plaintext not reported happened (ring full), per direction.
    pub unreported: [u64; 2],
    /// Bytes at the start of the next `SSL_write` that were reported already: an
    /// `SSL_write` is reported at its entry, and one that wrote less than asked
    /// (`SSL_ERROR_WANT_WRITE`, partial writes) is repeated by the application with the
    /// same bytes.
    pub credit: u64,
    /// Records reported while `sk` was 0 (see `counter::TLS_UNBOUND_SKIPPED`).
    pub unbound_records: u64,
}

/// LRU, like [`SOCKS`]: a session whose connection close was never seen goes eventually.
#[map]
pub static TLS_SESSIONS: LruHashMap<SessionKey, TlsSession> = LruHashMap::with_max_entries(32768, 0);

/// Size of the scratch payload area: a power of two at least twice what one record
/// carries (`MAX_CAPTURE + TAIL_WINDOW`), so that a copy whose offset and length are each
/// masked below half of it is in bounds however they combine.
pub const SCRATCH_BYTES: usize = (2 * (MAX_CAPTURE + TAIL_WINDOW)).next_power_of_two();

/// Header and payload, contiguous, so one `bpf_ringbuf_output` sends both. The tail
/// window is written right after the prefix.
#[repr(C)]
pub struct Scratch {
    pub hdr: DataEvent,
    pub data: [u8; SCRATCH_BYTES],
    /// The iovec array of a vectored transfer, read in one go.
    pub iov: [Iovec; MAX_IOVECS],
    /// Where the iovec copy has got to, and the bounds of the tail it looks for, kept in
    /// map memory (see `copy_iov`).
    pub cursor: u64,
    pub tail_at: u64,
    pub end: u64,
    /// Entries in `iov`.
    pub count: u64,
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Iovec {
    pub base: u64,
    pub len: u64,
}

/// One [`Scratch`] per CPU (indexed by CPU id; the agent sizes it to the possible CPUs).
/// Not a per-CPU map: a per-CPU value is limited to 32 KiB. Programs do not nest on one
/// CPU (the socket-layer hooks run in process context).
#[map]
pub static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: each CPU uses only its own slot, and programs do not nest on a CPU.
    SCRATCH.get_ptr_mut(cpu).map(|p| unsafe { &mut *p })
}

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

/// Whether the `--pid`/`--exe` filters let this process through.
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
    while i < MAX_EXE_FILTERS {
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

/// `bpf_ringbuf_output` flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Bytes this CPU wrote to the ring buffer since it last woke the agent.
#[map]
pub static UNWOKEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether writing `len` more bytes should wake the agent: once this CPU has written
/// `Config::wake_bytes` since its last wakeup. Below that the agent is not woken per
/// record (a context switch per transfer under load); it drains on its own timer. Kept
/// per CPU, so no record reads a cache line that another CPU or the agent writes.
#[inline(always)]
fn due(len: u64) -> bool {
    let (Some(cfg), Some(n)) = (config(), UNWOKEN.get_ptr_mut(0)) else { return true };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let n = unsafe { &mut *n };
    *n += len;
    if *n >= u64::from(cfg.wake_bytes) {
        *n = 0;
        return true;
    }
    false
}

/// Writes `len` bytes starting at `data` to the ring buffer; counts a full ring.
/// `wake`: wake the agent now (rare records it must see promptly).
#[inline(always)]
pub fn output(probe: u8, data: *const u8, len: u64, wake: bool) -> bool {
    // SAFETY: `data` points to at least `len` readable bytes (checked by the verifier).
    let bytes = unsafe { core::slice::from_raw_parts(data, len as usize) };
    let flags = if due(len) || wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
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
