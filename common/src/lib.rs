//! Records shared by the kernel programs (`ebpf`) and the agent.
//!
//! Every record written to the ring buffer starts with an [`EventKind`] tag (`u32`), so
//! the agent can decode the stream without knowing which program wrote a record. All
//! types are `#[repr(C)]`, `Copy`, use explicit padding and integer flags instead of
//! `bool`, so the kernel and userspace layouts agree byte for byte.
#![no_std]

/// Largest prefix of one syscall's payload the kernel copies (the effective limit is
/// [`Config::capture_bytes`]). 16 KiB holds the request line and headers of nearly every
/// real request, large cookies and JWTs included (nginx's largest default header
/// buffer is 8 KiB, Node's total header limit 16 KiB). Must be a power of two.
pub const MAX_CAPTURE: usize = 16 * 1024;
/// Default capture per syscall.
pub const DEFAULT_CAPTURE: u32 = MAX_CAPTURE as u32;
/// Bytes copied from the end of a syscall longer than the prefix: the "tail window".
/// The parser knows where a body ends, so a message that starts near the end of a long
/// read or write (a request pipelined behind a large body) is still found. At most
/// `MAX_CAPTURE / 2` (the scratch layout relies on it); a power of two.
pub const TAIL_WINDOW: usize = 4 * 1024;
/// How many iovec entries of a `readv`/`writev`/`recvmsg`/`sendmsg` are copied. gRPC's
/// core writes each frame header, header block and message as its own slice (a unary
/// call is a dozen of them); 8 lost the start of grpcio's streams.
pub const MAX_IOVECS: usize = 64;
/// Most records a TLS session reports before its connection is known; the agent holds
/// as many per session.
pub const TLS_UNBOUND_MAX_RECORDS: u32 = 1024;
/// Longest process name (`comm`) the kernel compares for `--exe`.
pub const COMM_LEN: usize = 16;
/// Maximum number of `--exe` names.
pub const MAX_EXE_FILTERS: usize = 8;

/// Tag at offset 0 of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`DataEvent`] followed by `captured + tail` payload bytes.
    Data = 1,
    /// [`ConnEvent`]: a process started using a TCP connection.
    Conn = 2,
    /// [`StateEvent`]: a tracked connection stopped sending or closed.
    State = 3,
    /// [`ExitEvent`]: a process (thread-group leader) exited.
    ProcExit = 4,
    /// [`ListenEvent`]: a TCP socket started or stopped listening.
    Listen = 5,
    /// [`TlsBindEvent`]: a TLS session (`SSL*`) was found to run over a connection.
    TlsBind = 6,
    /// [`ExecEvent`]: a process called `execve` (it may map a TLS library next).
    Exec = 7,
}

impl EventKind {
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Conn),
            3 => Some(Self::State),
            4 => Some(Self::ProcExit),
            5 => Some(Self::Listen),
            6 => Some(Self::TlsBind),
            7 => Some(Self::Exec),
            _ => None,
        }
    }
}

/// Data direction, seen from the traced process.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Connection role, seen from the traced process.
pub const ROLE_UNKNOWN: u8 = 0;
/// Passive open (the connection went SYN_RECV → ESTABLISHED): the process is the server.
pub const ROLE_SERVER: u8 = 1;
/// Active open (SYN_SENT → ESTABLISHED): the process is the client.
pub const ROLE_CLIENT: u8 = 2;

/// [`ConnEvent::flags`]: the connection was first seen on data, not when it was
/// established (it predates the agent): its byte stream is joined mid-way.
pub const CONN_MIDSTREAM: u8 = 1;

/// [`DataEvent::payload`]: where the bytes of a data record come from.
pub mod payload {
    /// Copied from the user buffer (`captured` prefix bytes, `tail` tail bytes).
    pub const COPIED: u8 = 0;
    /// Not in user memory (sendfile, splice, io_uring, ...): only the length is known.
    pub const NO_USER_BUFFER: u8 = 1;
    /// Copying from the user buffer failed: only the length is known.
    pub const READ_FAILED: u8 = 2;
}

/// [`StateEvent::state`]: what happened to the connection.
pub mod state {
    /// This side will send no more (FIN_WAIT1 or LAST_ACK): the end of its egress stream.
    pub const SEND_CLOSED: u8 = 1;
    /// The connection reached TCP_CLOSE: its state is gone.
    pub const CLOSED: u8 = 2;
}

/// Probe identifiers: the first index of the per-probe counters.
pub mod probe {
    pub const SEND: u8 = 0;
    pub const RECV: u8 = 1;
    pub const SOCK_STATE: u8 = 2;
    pub const PROC_EXIT: u8 = 3;
    /// The OpenSSL uprobes: `SSL_read`/`SSL_read_ex` and `SSL_write`/`SSL_write_ex`.
    pub const SSL_READ: u8 = 4;
    pub const SSL_WRITE: u8 = 5;
    pub const PROC_EXEC: u8 = 6;
    pub const COUNT: usize = 7;

    pub const NAMES: [&str; COUNT] = [
        "sock_send",
        "sock_recv",
        "inet_sock_set_state",
        "sched_process_exit",
        "ssl_read",
        "ssl_write",
        "sched_process_exec",
    ];
}

/// Kernel-side counters, per probe: `COUNTERS[probe * counter::COUNT + counter]`
/// in a per-CPU array.
pub mod counter {
    /// Record written to the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Ring buffer full: record lost (the agent sees the gap in the byte offsets).
    pub const RING_FULL: u32 = 1;
    /// `bpf_probe_read_user` failed: payload not copied, its length still reported.
    pub const READ_FAILED: u32 = 2;
    /// The socket map was full: a connection could not be tracked.
    pub const MAP_FULL: u32 = 3;
    /// A connection first seen on data (opened before the agent started).
    pub const MIDSTREAM: u32 = 4;
    /// Payload that never passed through user memory (sendfile, splice, io_uring):
    /// length reported, bytes not copied.
    pub const NO_USER_BUFFER: u32 = 5;
    /// Socket transfer on a connection known to carry TLS: ciphertext, not reported (its
    /// plaintext comes from the uprobes).
    pub const TLS_CIPHERTEXT: u32 = 6;
    /// Plaintext reported before its connection was known (a memory-BIO TLS stack such
    /// as Node's): the agent holds it until the [`super::TlsBindEvent`].
    pub const TLS_UNBOUND: u32 = 7;
    /// Plaintext not reported because its session had already reported
    /// [`super::TLS_UNBOUND_MAX_RECORDS`] records without a connection: one that never
    /// gets one (TLS over a UNIX socket or a pipe, a memory BIO used in-process) stops
    /// costing a copy per call.
    pub const TLS_UNBOUND_SKIPPED: u32 = 8;
    pub const COUNT: usize = 9;

    pub const NAMES: [&str; COUNT] = [
        "emitted",
        "ring_full",
        "read_failed",
        "map_full",
        "midstream",
        "no_user_buffer",
        "tls_ciphertext",
        "tls_unbound",
        "tls_unbound_skipped",
    ];
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

/// Header of a payload record; `captured` prefix bytes, then `tail` bytes follow it.
///
/// The record covers the bytes `[offset, offset + len)` of its direction's stream. The
/// first `captured` of them are copied, then `len - captured - tail` are not (a gap),
/// then the last `tail`. Offsets count every byte of the direction since the kernel
/// started tracking the connection, so a record lost between two others shows up as a
/// jump in `offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad0: u32,
    /// Kernel socket address: with `conn_gen`, identifies the connection.
    pub sock: u64,
    /// `bpf_ktime_get_ns` when the kernel started tracking the connection.
    pub conn_gen: u64,
    /// 0: socket bytes. Otherwise the TLS session (`SSL*`) whose plaintext this is, from
    /// the OpenSSL uprobes; `offset` then counts plaintext bytes of that session, and
    /// `sock` is 0 while the session's connection is not known yet (a
    /// [`TlsBindEvent`] names it later).
    pub tls: u64,
    /// `bpf_ktime_get_ns` when the socket layer (or `SSL_read`/`SSL_write`) finished the
    /// transfer (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Stream offset of the first byte, per direction.
    pub offset: u64,
    /// When the last transfer of this direction that was not reported happened (ring
    /// full, or the connection was not traced then); 0 if none. When `offset` jumps,
    /// the missing bytes moved at or before this time.
    pub unreported_ns: u64,
    /// Bytes the socket layer transferred. 0 on ingress = end of stream.
    pub len: u32,
    /// Prefix bytes copied (`<= len`, `<= capture limit`).
    pub captured: u32,
    /// Bytes copied from the end of the transfer (`<= TAIL_WINDOW`).
    pub tail: u32,
    pub direction: u8,
    /// One of [`payload`].
    pub payload: u8,
    pub _pad: [u8; 2],
}

/// A process started using a connection (once per socket and owning process).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Network namespace inode (as in `/proc/PID/ns/net`).
    pub netns: u32,
    pub sock: u64,
    pub conn_gen: u64,
    pub ts_ns: u64,
    /// Tuple as seen from the traced process (`saddr` is the local side).
    pub tuple: Tuple,
    /// Kernel name of the thread (`comm`), for processes gone before `/proc` is read.
    pub comm: [u8; COMM_LEN],
    /// TCP sequence number of stream offset 0, per direction (ingress, egress): a byte's
    /// sequence number is the same at both ends of a connection, so the two ends of one
    /// request can be matched exactly.
    pub tcp_seq: [u32; 2],
    /// One of `ROLE_*`; `ROLE_UNKNOWN` for a connection joined mid-stream.
    pub role: u8,
    /// `CONN_*` flags.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// The process's parent (tgid): a forked child that is gone before the agent reads
    /// its `/proc` entry is described from its parent's.
    pub ppid: u32,
    /// Client connections: the thread (kernel tid) that called `connect()`, and
    /// `bpf_ktime_get_ns` then; both 0 when unknown (accepted connections, connections
    /// joined mid-stream). An event-loop proxy connects to its upstream while handling
    /// the request that needs it, but writes to it later: this says which request.
    pub connect_tid: u32,
    pub _pad1: u32,
    pub connect_ns: u64,
}
// Every byte is a named field (no implicit padding the kernel side would leave unset).
const _: () = assert!(size_of::<ConnEvent>() == 128 && align_of::<ConnEvent>() == 8);

/// A tracked connection stopped sending or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateEvent {
    pub kind: u32,
    pub _pad0: u32,
    pub sock: u64,
    pub conn_gen: u64,
    pub ts_ns: u64,
    /// One of [`state`].
    pub state: u8,
    pub _pad: [u8; 7],
}

/// The TLS session `ssl` of process `tgid` runs over connection (`sock`, `conn_gen`):
/// sent once per session and connection, when a socket transfer happens inside an
/// `SSL_*` call on the same thread, or (memory BIOs) right after one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsBindEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ssl: u64,
    pub sock: u64,
    pub conn_gen: u64,
    pub ts_ns: u64,
}

/// A process replaced its image (`sched:sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
}

/// A TCP socket entered (`listening = 1`) or left (`0`) the LISTEN state.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenEvent {
    pub kind: u32,
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    pub listening: u8,
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

/// Offsets (bytes) of the kernel struct fields the programs read, from the running
/// kernel's BTF: there is no compiler CO-RE, so the agent resolves them at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock_common` (at the start of `struct sock`).
    pub skc_daddr: u16,
    pub skc_rcv_saddr: u16,
    pub skc_dport: u16,
    pub skc_num: u16,
    pub skc_family: u16,
    pub skc_state: u16,
    pub skc_v6_daddr: u16,
    pub skc_v6_rcv_saddr: u16,
    /// `sk->__sk_common.skc_net.net`.
    pub skc_net: u16,
    /// `struct sock`: `sk_protocol` (u16) and `sk_type` (u16).
    pub sk_protocol: u16,
    pub sk_type: u16,
    /// `struct net`: `ns.inum`.
    pub net_inum: u16,
    /// `struct tcp_sock`: `copied_seq` (next byte the process reads) and `write_seq`
    /// (next byte it writes), both u32.
    pub tcp_copied_seq: u16,
    pub tcp_write_seq: u16,
    /// `struct task_struct`: `flags`, `real_parent` (pointer) and `tgid`.
    pub task_flags: u16,
    pub task_real_parent: u16,
    pub task_tgid: u16,
    /// Where, in `struct pt_regs`, the syscall number and its first three arguments are.
    pub regs_nr: u16,
    pub regs_arg: [u16; 3],
    pub _pad: u16,
}

/// Where x86_64 saves a syscall's number and arguments (`struct pt_regs`, a stable ABI).
/// The programs load them at these constant offsets; the agent checks them against the
/// running kernel's BTF.
pub mod x86_64 {
    pub const PT_REGS_ORIG_AX: u16 = 120;
    pub const PT_REGS_DI: u16 = 112;
    pub const PT_REGS_SI: u16 = 104;
    pub const PT_REGS_DX: u16 = 96;
}

/// The running architecture's numbers of the syscalls whose user buffers the programs
/// know how to read. Anything else moving socket bytes (sendfile, splice, io_uring,
/// `recvmmsg`) is reported by length only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallNumbers {
    pub read: u32,
    pub write: u32,
    pub recvfrom: u32,
    pub sendto: u32,
    pub readv: u32,
    pub writev: u32,
    pub recvmsg: u32,
    pub sendmsg: u32,
}

/// Agent-provided settings, in a one-slot array map (`CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The agent's own tgid: its sockets are never traced.
    pub agent_tgid: u32,
    /// Bytes copied per transfer (`<= MAX_CAPTURE`).
    pub capture_bytes: u32,
    /// 1 when `PID_FILTER` holds the only pids to trace.
    pub filter_pids: u8,
    /// 1 when `PORT_FILTER` holds the only ports (local or remote) to trace.
    pub filter_ports: u8,
    /// Number of valid entries in `exe_names`.
    pub exe_count: u8,
    /// 1 once OpenSSL uprobes are attached: the socket hooks then look for a running
    /// `SSL_*` call on the thread, to bind TLS sessions to connections.
    pub tls: u8,
    /// Bytes one CPU writes to the ring buffer before it wakes the agent.
    pub wake_bytes: u32,
    pub _pad1: u32,
    /// `--exe` names, matched against the process name (`comm`, at most 15 bytes).
    pub exe_names: [[u8; COMM_LEN]; MAX_EXE_FILTERS],
    pub offsets: KernelOffsets,
    pub syscalls: SyscallNumbers,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            agent_tgid: 0,
            capture_bytes: DEFAULT_CAPTURE,
            filter_pids: 0,
            filter_ports: 0,
            exe_count: 0,
            tls: 0,
            wake_bytes: 64 * 1024,
            _pad1: 0,
            exe_names: [[0; COMM_LEN]; MAX_EXE_FILTERS],
            offsets: KernelOffsets::default(),
            syscalls: SyscallNumbers::default(),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers and integer
    // arrays with explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Tuple {}
}
