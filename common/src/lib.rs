//! Records shared by the kernel programs (`ebpf`) and the agent.
//!
//! Every record written to the ring buffer starts with a [`EventKind`] tag (`u32`), so the
//! agent can decode the stream without knowing which program wrote a record. All types
//! are `#[repr(C)]`, `Copy`, use explicit padding and integer flags instead of `bool`, so
//! the kernel and userspace layouts agree byte for byte.
#![no_std]

/// Largest prefix of one syscall's payload the kernel can copy: the per-CPU scratch
/// buffer holds twice this (to prove iovec copies in bounds) and a per-CPU map value is
/// limited to 32 KiB. The effective limit is [`Config::capture_bytes`].
pub const MAX_CAPTURE: usize = 8 * 1024;
/// Default capture per syscall: 4 KiB holds the request line and headers of nearly all
/// real HTTP/1 requests (browsers and SDKs send 0.5–2 KiB; nginx's default header buffer
/// is 1 KiB, growing to 8 KiB only for large cookies) while keeping ring-buffer traffic
/// per response small. Bytes beyond it are counted, not copied, so body skipping stays
/// exact.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// How many iovec entries of a `readv`/`writev`/`recvmsg`/`sendmsg` are copied.
pub const MAX_IOVECS: usize = 8;
/// Longest process name (`comm`) the kernel compares for `--exe`.
pub const COMM_LEN: usize = 16;
/// Maximum number of `--exe` names.
pub const MAX_EXE_FILTERS: usize = 8;

/// Tag at offset 0 of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`DataEvent`] followed by `captured` payload bytes.
    Data = 1,
    /// [`ConnEvent`]: first time a process used a tracked TCP connection.
    Conn = 2,
    /// [`CloseEvent`]: a process closed a tracked socket or the socket reached TCP_CLOSE.
    Close = 3,
    /// [`ExitEvent`]: a process (thread-group leader) exited.
    ProcExit = 4,
}

impl EventKind {
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Conn),
            3 => Some(Self::Close),
            4 => Some(Self::ProcExit),
            _ => None,
        }
    }
}

/// Data direction, seen from the traced process.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Connection role, seen from the traced process.
pub const ROLE_UNKNOWN: u8 = 0;
/// The socket came from `accept`/`accept4`: the process is the server.
pub const ROLE_SERVER: u8 = 1;
/// The socket was `connect`ed: the process is the client.
pub const ROLE_CLIENT: u8 = 2;

/// Syscall (probe) identifiers, used in events and as the first index of the drop
/// counters.
pub mod probe {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const RECVFROM: u8 = 2;
    pub const SENDTO: u8 = 3;
    pub const RECVMSG: u8 = 4;
    pub const SENDMSG: u8 = 5;
    pub const READV: u8 = 6;
    pub const WRITEV: u8 = 7;
    pub const SENDFILE: u8 = 8;
    pub const CONNECT: u8 = 9;
    pub const ACCEPT: u8 = 10;
    pub const ACCEPT4: u8 = 11;
    pub const CLOSE: u8 = 12;
    pub const SOCK_STATE: u8 = 13;
    pub const PROC_EXIT: u8 = 14;
    pub const COUNT: usize = 15;

    pub const NAMES: [&str; COUNT] = [
        "read", "write", "recvfrom", "sendto", "recvmsg", "sendmsg", "readv", "writev",
        "sendfile", "connect", "accept", "accept4", "close", "inet_sock_set_state",
        "sched_process_exit",
    ];
}

/// Kernel-side counters, per probe: `COUNTERS[probe * counter::COUNT + counter]`
/// in a per-CPU array.
pub mod counter {
    /// Event written to the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Ring buffer full: event lost.
    pub const RING_FULL: u32 = 1;
    /// `bpf_probe_read_user` failed: payload lost.
    pub const READ_FAILED: u32 = 2;
    /// Data on a TCP socket whose connection started before the agent (or was inherited
    /// from another process): ignored, never parsed.
    pub const UNTRACKED_CONN: u32 = 3;
    /// Per-thread or per-socket map full: state lost.
    pub const MAP_FULL: u32 = 4;
    pub const COUNT: usize = 5;

    pub const NAMES: [&str; COUNT] =
        ["emitted", "ring_full", "read_failed", "untracked_conn", "map_full"];
}

/// Number of slots in the per-CPU counter array.
pub const COUNTER_SLOTS: u32 = (probe::COUNT * counter::COUNT) as u32;

/// TCP 4-tuple; addresses in network byte order, IPv4 in the first 4 bytes (and as
/// IPv4-mapped IPv6 when the socket is dual-stack), ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    pub _pad: u16,
}

/// Header of a payload record; `captured` bytes follow it in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Kernel socket address: with `conn_gen`, identifies the connection.
    pub sock: u64,
    /// `bpf_ktime_get_ns` when the connection reached ESTABLISHED.
    pub conn_gen: u64,
    /// `bpf_ktime_get_ns` at syscall entry and exit (CLOCK_MONOTONIC).
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// Bytes the syscall really transferred (its return value). 0 on a read = EOF.
    pub len: u32,
    /// Bytes copied after this header (`<= len`, `<= capture limit`).
    pub captured: u32,
    pub direction: u8,
    pub role: u8,
    pub probe: u8,
    pub _pad: [u8; 5],
}

/// A process used a tracked connection for the first time (per socket and process).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub sock: u64,
    pub conn_gen: u64,
    pub ts_ns: u64,
    /// Tuple as seen from the traced process (`saddr` is the local side).
    pub tuple: Tuple,
    /// Kernel name of the thread (`comm`), for processes gone before `/proc` is read.
    pub comm: [u8; COMM_LEN],
    pub role: u8,
    pub _pad: [u8; 7],
}

/// A tracked socket was closed by a process (`close`) or reached TCP_CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub kind: u32,
    pub tgid: u32,
    pub sock: u64,
    pub conn_gen: u64,
    pub ts_ns: u64,
    pub fd: i32,
    pub probe: u8,
    pub _pad: [u8; 3],
}

/// A process exited (thread-group leader).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
}

/// Agent-provided settings, in a one-slot array map (`CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The agent's own tgid: its syscalls are never traced.
    pub agent_tgid: u32,
    /// Bytes copied per syscall (`<= MAX_CAPTURE`).
    pub capture_bytes: u32,
    /// 1 when `PID_FILTER` holds the only pids to trace.
    pub filter_pids: u8,
    /// 1 when `PORT_FILTER` holds the only ports (local or remote) to trace.
    pub filter_ports: u8,
    /// Number of valid entries in `exe_names`.
    pub exe_count: u8,
    pub _pad: u8,
    /// `--exe` names, matched against the process name (`comm`, at most 15 bytes).
    pub exe_names: [[u8; COMM_LEN]; MAX_EXE_FILTERS],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            agent_tgid: 0,
            capture_bytes: DEFAULT_CAPTURE,
            filter_pids: 0,
            filter_ports: 0,
            exe_count: 0,
            _pad: 0,
            exe_names: [[0; COMM_LEN]; MAX_EXE_FILTERS],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers and integer
    // arrays with explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Tuple {}
}
