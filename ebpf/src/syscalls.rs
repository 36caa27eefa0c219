//! Syscall, socket and scheduler tracepoints. Entry points are thin; the work is in the
//! `try_*` functions.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use ghostwire_common::{
    counter, probe, CloseEvent, ConnEvent, DataEvent, EventKind, ExitEvent, Tuple,
    DIR_EGRESS, DIR_INGRESS, MAX_CAPTURE, MAX_IOVECS, ROLE_CLIENT, ROLE_SERVER,
};

use crate::maps::{
    config, count, output, port_allowed, traced, FdInfo, FdKey, Pending, SockInfo, ACTIVE,
    FDS, SCRATCH, SHAPE_ACCEPT, SHAPE_BUF, SHAPE_CONNECT, SHAPE_GAP, SHAPE_IOV, SOCKS,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const EINPROGRESS: i64 = 115;

/// Reads a tracepoint field at `offset` (fields are naturally aligned).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets come from the tracepoint format files; the verifier checks ctx
    // accesses against the tracepoint's record size.
    unsafe { *(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Syscall arguments start at offset 16, 8 bytes each.
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    field::<u64>(ctx, 16 + 8 * n)
}

#[inline(always)]
fn stash(fd: i32, buf: u64, count_: u64, probe: u8, shape: u8, direction: u8) {
    let Some(cfg) = config() else { return };
    let id = bpf_get_current_pid_tgid();
    if !traced(cfg, (id >> 32) as u32) {
        return;
    }
    let p = Pending {
        // SAFETY: helper without preconditions.
        ts_enter: unsafe { bpf_ktime_get_ns() },
        buf,
        count: count_,
        sk: 0,
        fd,
        probe,
        shape,
        direction,
        _pad: 0,
    };
    if ACTIVE.insert(id, p, 0).is_err() {
        count(probe, counter::MAP_FULL);
    }
}

// ---- entry: plain buffers (fd, buf, len, ...) ----------------------------------------

macro_rules! enter_buf {
    ($name:ident, $probe:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            stash(arg(&ctx, 0) as i32, arg(&ctx, 1), arg(&ctx, 2), $probe, SHAPE_BUF, $dir);
            0
        }
    };
}
enter_buf!(sys_enter_read, probe::READ, DIR_INGRESS);
enter_buf!(sys_enter_write, probe::WRITE, DIR_EGRESS);
enter_buf!(sys_enter_recvfrom, probe::RECVFROM, DIR_INGRESS);
enter_buf!(sys_enter_sendto, probe::SENDTO, DIR_EGRESS);

// ---- entry: iovec arrays (fd, iov, iovcnt) -------------------------------------------

macro_rules! enter_iov {
    ($name:ident, $probe:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            stash(arg(&ctx, 0) as i32, arg(&ctx, 1), arg(&ctx, 2), $probe, SHAPE_IOV, $dir);
            0
        }
    };
}
enter_iov!(sys_enter_readv, probe::READV, DIR_INGRESS);
enter_iov!(sys_enter_writev, probe::WRITEV, DIR_EGRESS);

// ---- entry: msghdr (fd, msg, flags) ---------------------------------------------------

/// `struct user_msghdr`: msg_iov at offset 16, msg_iovlen at 24.
#[repr(C)]
#[derive(Clone, Copy)]
struct UserMsghdr {
    name: u64,
    namelen: u64,
    iov: u64,
    iovlen: u64,
}

#[inline(always)]
fn enter_msg(ctx: &TracePointContext, probe: u8, dir: u8) {
    let msg = arg(ctx, 1) as *const UserMsghdr;
    // SAFETY: user pointer read through the fault-tolerant helper.
    match unsafe { bpf_probe_read_user(msg) } {
        Ok(m) => stash(arg(ctx, 0) as i32, m.iov, m.iovlen, probe, SHAPE_IOV, dir),
        Err(_) => count(probe, counter::READ_FAILED),
    }
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, probe::RECVMSG, DIR_INGRESS);
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, probe::SENDMSG, DIR_EGRESS);
    0
}

/// `sendfile(out_fd, in_fd, offset, count)`: the payload never passes through user
/// memory; its length still matters to keep the byte stream aligned.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, 0) as i32, 0, arg(&ctx, 3), probe::SENDFILE, SHAPE_GAP, DIR_EGRESS);
    0
}

// ---- entry: connection setup ------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_accept(_ctx: TracePointContext) -> u32 {
    stash(-1, 0, 0, probe::ACCEPT, SHAPE_ACCEPT, DIR_INGRESS);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(_ctx: TracePointContext) -> u32 {
    stash(-1, 0, 0, probe::ACCEPT4, SHAPE_ACCEPT, DIR_INGRESS);
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, 0) as i32, 0, 0, probe::CONNECT, SHAPE_CONNECT, DIR_EGRESS);
    0
}

/// `close(fd)`: ends the fd's connection state, tells userspace.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !traced(cfg, tgid) {
        return 0;
    }
    let key = FdKey { tgid, fd: arg(&ctx, 0) as i32 };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(info) = (unsafe { FDS.get(&key) }).copied() else { return 0 };
    let _ = FDS.remove(&key);
    if info.sk != 0 && info.ignored == 0 {
        let ev = CloseEvent {
            kind: EventKind::Close as u32,
            tgid,
            sock: info.sk,
            conn_gen: info.gen,
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            fd: key.fd,
            probe: probe::CLOSE,
            _pad: [0; 3],
        };
        output(probe::CLOSE, core::ptr::addr_of!(ev).cast(), size_of::<CloseEvent>() as u64, false);
    }
    0
}

// ---- inside the syscall: which socket is this? ----------------------------------------

#[inline(always)]
fn mark_socket(ctx: &TracePointContext) {
    let family: u16 = field(ctx, 16);
    let protocol: u16 = field(ctx, 18);
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    if let Some(p) = ACTIVE.get_ptr_mut(id) {
        // SAFETY: the entry belongs to this thread.
        unsafe { (*p).sk = field::<u64>(ctx, 8) };
    }
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    mark_socket(&ctx);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    mark_socket(&ctx);
    0
}

// ---- exit: one program for every syscall above ------------------------------------------

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(p) = (unsafe { ACTIVE.get(&id) }).copied() else { return 0 };
    let _ = ACTIVE.remove(&id);
    let ret: i64 = field(&ctx, 16);
    match p.shape {
        SHAPE_ACCEPT => {
            if ret >= 0 {
                remember_fd(id, ret as i32, ROLE_SERVER, p.probe);
            }
        }
        SHAPE_CONNECT => {
            if ret == 0 || ret == -EINPROGRESS {
                remember_fd(id, p.fd, ROLE_CLIENT, p.probe);
            }
        }
        _ => {
            // Not a TCP socket (no sock tracepoint fired), failed, or a zero-length write.
            if p.sk == 0 || ret < 0 || (ret == 0 && p.direction == DIR_EGRESS) {
                return 0;
            }
            on_data(id, &p, ret as u64);
        }
    }
    0
}

#[inline(always)]
fn remember_fd(id: u64, fd: i32, role: u8, probe: u8) {
    let key = FdKey { tgid: (id >> 32) as u32, fd };
    let info = FdInfo { sk: 0, gen: 0, role, ignored: 0, _pad: [0; 6] };
    if FDS.insert(&key, &info, 0).is_err() {
        count(probe, counter::MAP_FULL);
    }
}

#[inline(always)]
fn on_data(id: u64, p: &Pending, len: u64) {
    let tgid = (id >> 32) as u32;
    let key = FdKey { tgid, fd: p.fd };
    let Some(info) = FDS.get_ptr_mut(&key) else {
        // Connected or accepted before the agent started, or inherited from a parent.
        count(p.probe, counter::UNTRACKED_CONN);
        return;
    };
    // SAFETY: FDS values are plain data; this thread owns the fd's state here.
    let info = unsafe { &mut *info };
    if info.sk != p.sk {
        if !bind_fd(id, p, info) {
            return;
        }
    }
    if info.ignored != 0 {
        return;
    }
    emit_data(id, p, info, len);
}

/// First data on an fd (or the fd now names another socket): look the connection up,
/// apply the port filter and announce it to userspace.
#[inline(always)]
fn bind_fd(id: u64, p: &Pending, info: &mut FdInfo) -> bool {
    // SAFETY: the value is copied out.
    let Some(sock) = (unsafe { SOCKS.get(&p.sk) }).copied() else {
        count(p.probe, counter::UNTRACKED_CONN);
        return false;
    };
    info.sk = p.sk;
    info.gen = sock.gen;
    let Some(cfg) = config() else { return false };
    if !port_allowed(cfg, &sock.tuple) {
        info.ignored = 1;
        return false;
    }
    info.ignored = 0;
    let ev = ConnEvent {
        kind: EventKind::Conn as u32,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        fd: p.fd,
        sock: p.sk,
        conn_gen: sock.gen,
        ts_ns: p.ts_enter,
        tuple: sock.tuple,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        role: info.role,
        _pad: [0; 7],
    };
    // Wake the agent now: it reads the process's /proc entry while the process, maybe a
    // short-lived client, still exists. One wakeup per connection, not per syscall.
    output(p.probe, core::ptr::addr_of!(ev).cast(), size_of::<ConnEvent>() as u64, true)
}

#[inline(always)]
fn emit_data(id: u64, p: &Pending, info: &FdInfo, len: u64) {
    let Some(cfg) = config() else { return };
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU scratch; programs do not nest on one CPU.
    let s = unsafe { &mut *s };
    let limit = u64::from(cfg.capture_bytes);
    let limit = if limit > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { limit };
    let want = if len < limit { len } else { limit };
    let dst = s.data.as_mut_ptr();
    let (captured, failed) = match p.shape {
        SHAPE_BUF => copy_buf(dst, p.buf, want),
        SHAPE_IOV => copy_iov(dst, p.buf, p.count, want),
        _ => (0, false),
    };
    if failed {
        count(p.probe, counter::READ_FAILED);
    }
    s.hdr = DataEvent {
        kind: EventKind::Data as u32,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        fd: p.fd,
        sock: p.sk,
        conn_gen: info.gen,
        ts_enter_ns: p.ts_enter,
        // SAFETY: helper without preconditions.
        ts_exit_ns: unsafe { bpf_ktime_get_ns() },
        len: len as u32,
        captured: captured as u32,
        direction: p.direction,
        role: info.role,
        probe: p.probe,
        _pad: [0; 5],
    };
    let total = size_of::<DataEvent>() as u64 + captured;
    output(p.probe, core::ptr::addr_of!(*s).cast(), total, false);
}

/// Copies `want` (`<= MAX_CAPTURE`) bytes; returns (bytes copied, failed).
#[inline(always)]
fn copy_buf(dst: *mut u8, src: u64, want: u64) -> (u64, bool) {
    let n = if want > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { want };
    // SAFETY: `dst` has room for 2 * MAX_CAPTURE bytes; `src` is a user pointer read
    // through the fault-tolerant helper.
    let ret = unsafe { probe_read_user_raw(dst.cast(), n as u32, src as *const _) };
    if ret < 0 {
        (0, true)
    } else {
        (n, false)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Gathers up to `want` bytes from an iovec array, in order.
#[inline(always)]
fn copy_iov(dst: *mut u8, iov: u64, iovcnt: u64, want: u64) -> (u64, bool) {
    let mut off: u64 = 0;
    let mut i: u64 = 0;
    while i < MAX_IOVECS as u64 {
        if i >= iovcnt || off >= want {
            break;
        }
        let ptr = (iov + i * size_of::<Iovec>() as u64) as *const Iovec;
        // SAFETY: user pointer read through the fault-tolerant helper.
        let Ok(v) = (unsafe { bpf_probe_read_user(ptr) }) else {
            return (off, true);
        };
        let room = want - off;
        let n = if v.len < room { v.len } else { room };
        let n = if n > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { n };
        let o = off & (MAX_CAPTURE as u64 - 1);
        // SAFETY: o < MAX_CAPTURE and n <= MAX_CAPTURE, inside the 2 * MAX_CAPTURE area.
        let ret = unsafe { probe_read_user_raw(dst.add(o as usize).cast(), n as u32, v.base as *const _) };
        if ret < 0 {
            return (off, true);
        }
        off += n;
        i += 1;
    }
    (off, false)
}

// ---- connection lifecycle ------------------------------------------------------------

/// `sock:inet_sock_set_state`: remember each new connection's 4-tuple; forget it (and
/// tell userspace) when it reaches TCP_CLOSE.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let protocol: u16 = field(&ctx, 30);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let sk: u64 = field(&ctx, 8);
    let old: i32 = field(&ctx, 16);
    let new: i32 = field(&ctx, 20);
    if new == TCP_ESTABLISHED && (old == TCP_SYN_SENT || old == TCP_SYN_RECV) {
        let family: u16 = field(&ctx, 28);
        let mut tuple = Tuple {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: field(&ctx, 24),
            dport: field(&ctx, 26),
            family,
            _pad: 0,
        };
        // Whole-word loads at constant offsets: the verifier refuses byte loads
        // through a ctx pointer that was moved.
        if family == AF_INET {
            tuple.saddr[..4].copy_from_slice(&field::<u32>(&ctx, 32).to_ne_bytes());
            tuple.daddr[..4].copy_from_slice(&field::<u32>(&ctx, 36).to_ne_bytes());
        } else {
            tuple.saddr[..8].copy_from_slice(&field::<u64>(&ctx, 40).to_ne_bytes());
            tuple.saddr[8..].copy_from_slice(&field::<u64>(&ctx, 48).to_ne_bytes());
            tuple.daddr[..8].copy_from_slice(&field::<u64>(&ctx, 56).to_ne_bytes());
            tuple.daddr[8..].copy_from_slice(&field::<u64>(&ctx, 64).to_ne_bytes());
        }
        // SAFETY: helper without preconditions.
        let info = SockInfo { tuple, gen: unsafe { bpf_ktime_get_ns() } };
        if SOCKS.insert(&sk, &info, 0).is_err() {
            count(probe::SOCK_STATE, counter::MAP_FULL);
        }
    } else if new == TCP_CLOSE {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(info) = (unsafe { SOCKS.get(&sk) }).copied() {
            let _ = SOCKS.remove(&sk);
            let ev = CloseEvent {
                kind: EventKind::Close as u32,
                tgid: 0,
                sock: sk,
                conn_gen: info.gen,
                // SAFETY: helper without preconditions.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                fd: -1,
                probe: probe::SOCK_STATE,
                _pad: [0; 3],
            };
            output(probe::SOCK_STATE, core::ptr::addr_of!(ev).cast(), size_of::<CloseEvent>() as u64, false);
        }
    }
    0
}

/// `sched:sched_process_exit`: the last thread of a traced process exited.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let group_dead: u8 = field(&ctx, 32);
    if group_dead == 0 {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(cfg, tgid) {
        return 0;
    }
    let ev = ExitEvent {
        kind: EventKind::ProcExit as u32,
        tgid,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    output(probe::PROC_EXIT, core::ptr::addr_of!(ev).cast(), size_of::<ExitEvent>() as u64, false);
    0
}
