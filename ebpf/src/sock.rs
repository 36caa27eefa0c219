//! Socket-layer capture: one hook per direction, fired by the kernel inside
//! `sock_sendmsg`/`sock_recvmsg` once the bytes moved, for every socket of every process.
//! A process's other syscalls pay nothing.
//!
//! What a hook knows: the `struct sock *` and the byte count. The rest comes from the
//! socket and the running task: the connection's 4-tuple and namespace from
//! `struct sock` (at start-up offsets from BTF), the user buffer from the syscall's
//! saved registers (`bpf_task_pt_regs`: number and arguments of the running syscall).
//!
//! A TCP connection is tracked from the moment the kernel sees it, whoever opened it
//! and whenever: `inet_sock_set_state` records it when it is established (and its role,
//! from the handshake), and a connection that predates the agent is recorded on its
//! first transfer. Each connection counts its bytes per direction, so every record
//! carries its stream offset and a lost record is a visible jump.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs},
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use ghostwire_common::{
    counter, payload, probe, state, Config, ConnEvent, DataEvent, EventKind, ExitEvent, ListenEvent, StateEvent, Tuple,
    CONN_MIDSTREAM, DIR_EGRESS, DIR_INGRESS, MAX_CAPTURE, MAX_IOVECS, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN,
    TAIL_WINDOW,
};

use crate::maps::{
    config, count, output, port_allowed, scratch, traced, Connecting, Iovec, Scratch, SockState, CONNECTING,
    SCRATCH_BYTES, SOCKS, SOCK_IGNORED_PORT, SOCK_IGNORED_PROC, SOCK_MIDSTREAM, SOCK_TLS,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;
const MSG_PEEK: i64 = 2;
const PF_KTHREAD: u32 = 0x0020_0000;
/// `at` and `n` of every copy are masked with this (see `copy_user`).
const SCRATCH_MASK: u64 = SCRATCH_BYTES as u64 / 2 - 1;
/// x86_64 `struct pt_regs`: the syscall number and its second and third arguments.
const REGS_NR: usize = ghostwire_common::x86_64::PT_REGS_ORIG_AX as usize;
const REGS_ARG1: usize = ghostwire_common::x86_64::PT_REGS_SI as usize;
const REGS_ARG2: usize = ghostwire_common::x86_64::PT_REGS_DX as usize;

const TCP_ESTABLISHED: i64 = 1;
const TCP_SYN_SENT: i64 = 2;
const TCP_SYN_RECV: i64 = 3;
const TCP_FIN_WAIT1: i64 = 4;
const TCP_FIN_WAIT2: i64 = 5;
const TCP_CLOSE: i64 = 7;
const TCP_CLOSE_WAIT: i64 = 8;
const TCP_LAST_ACK: i64 = 9;
const TCP_LISTEN: i64 = 10;
const TCP_CLOSING: i64 = 11;

// ---- entry points ------------------------------------------------------------------

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> u32 {
    on_transfer(ctx.arg::<u64>(0), ctx.arg::<i64>(1) as i32 as i64, 0, DIR_EGRESS, None);
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> u32 {
    let flags = ctx.arg::<i64>(2) as i32 as i64;
    on_transfer(ctx.arg::<u64>(0), ctx.arg::<i64>(1) as i32 as i64, flags, DIR_INGRESS, None);
    0
}

/// Fallback when raw tracepoints cannot attach: the `sock:` tracepoints, which carry
/// the same arguments in their record (sk at 8, family 16, protocol 18, ret 20, flags 24).
#[tracepoint]
pub fn tp_sock_send(ctx: TracePointContext) -> u32 {
    let fam = (field::<u16>(&ctx, 16), field::<u16>(&ctx, 18));
    on_transfer(field::<u64>(&ctx, 8), i64::from(field::<i32>(&ctx, 20)), 0, DIR_EGRESS, Some(fam));
    0
}

#[tracepoint]
pub fn tp_sock_recv(ctx: TracePointContext) -> u32 {
    let fam = (field::<u16>(&ctx, 16), field::<u16>(&ctx, 18));
    let flags = i64::from(field::<i32>(&ctx, 24));
    on_transfer(field::<u64>(&ctx, 8), i64::from(field::<i32>(&ctx, 20)), flags, DIR_INGRESS, Some(fam));
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> u32 {
    on_state(ctx.arg::<u64>(0), ctx.arg::<i64>(1) as i32 as i64, ctx.arg::<i64>(2) as i32 as i64);
    0
}

/// Fallback: `sock:inet_sock_set_state` (skaddr at 8, oldstate 16, newstate 20).
#[tracepoint]
pub fn tp_sock_state(ctx: TracePointContext) -> u32 {
    on_state(field::<u64>(&ctx, 8), i64::from(field::<i32>(&ctx, 16)), i64::from(field::<i32>(&ctx, 20)));
    0
}

/// `sched:sched_process_exit` (every thread): the thread's OpenSSL call state ends; the
/// last thread of a traced process tells the agent.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    if cfg.tls != 0 {
        crate::tls::thread_exit(id);
    }
    let group_dead: u8 = field(&ctx, 32);
    if group_dead == 0 {
        return 0;
    }
    let tgid = (id >> 32) as u32;
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

/// Reads a tracepoint record field at `offset` (fields are naturally aligned).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets come from the tracepoint format files; the verifier checks ctx
    // accesses against the tracepoint's record size.
    unsafe { *(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Reads a `T` at `base + off` in kernel memory; `None` if it faults.
#[inline(always)]
fn kread<T: Copy>(base: u64, off: u16) -> Option<T> {
    // SAFETY: kernel pointer read through the fault-tolerant helper.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

// ---- transfers ---------------------------------------------------------------------

/// A socket moved `ret` bytes in `dir`. `fam`: (family, protocol) when the hook knows
/// them already (classic tracepoints).
#[inline(always)]
fn on_transfer(sk: u64, ret: i64, flags: i64, dir: u8, fam: Option<(u16, u16)>) {
    let probe = if dir == DIR_EGRESS { probe::SEND } else { probe::RECV };
    if dir == DIR_INGRESS {
        // Peeked bytes are read again later; errors (EAGAIN above all) moved nothing.
        if flags & MSG_PEEK != 0 || ret < 0 {
            return;
        }
    } else if ret <= 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == cfg.agent_tgid {
        return;
    }
    let st = match SOCKS.get_ptr_mut(&sk) {
        Some(p) => p,
        None => {
            if ret == 0 {
                return;
            }
            match discover(cfg, sk, fam, dir, ret as u64, probe) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: map values are plain data; concurrent transfers on one socket are
    // serialised by the socket lock in practice, and a lost update is seen by the agent
    // as a jump in offsets, never as wrong bytes.
    let st = unsafe { &mut *st };
    let len = ret as u64;
    let d = if dir == DIR_EGRESS { 1 } else { 0 };
    let offset = st.seq[d];
    st.seq[d] = offset + len;
    let announced = st.owner == tgid || announce(cfg, id, sk, st, probe);
    // Ciphertext of a TLS session whose plaintext the uprobes report is not reported.
    if cfg.tls != 0 && crate::tls::on_sock_transfer(cfg, id, sk, st, dir, len, probe) {
        return;
    }
    let reported = if !announced {
        false
    } else if st.flags & (SOCK_IGNORED_PORT | SOCK_IGNORED_PROC) != 0 {
        false
    } else {
        emit_data(cfg, id, sk, st, dir, offset, len, probe)
    };
    if !reported && st.flags & SOCK_IGNORED_PORT == 0 {
        // SAFETY: helper without preconditions.
        st.unreported[d] = unsafe { bpf_ktime_get_ns() };
    }
}

/// A TCP socket the kernel has no state for: one that was established before the agent
/// started (or whose entry was evicted). Non-TCP sockets return `None` here, after one
/// or two reads of `struct sock`.
#[inline(always)]
fn discover(cfg: &Config, sk: u64, fam: Option<(u16, u16)>, dir: u8, len: u64, probe: u8) -> Option<*mut SockState> {
    let o = &cfg.offsets;
    let family = match fam {
        Some((family, protocol)) => {
            if protocol != IPPROTO_TCP {
                return None;
            }
            family
        }
        None => kread::<u16>(sk, o.skc_family)?,
    };
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    if fam.is_none() && kread::<u16>(sk, o.sk_protocol)? != IPPROTO_TCP {
        return None;
    }
    if kread::<u16>(sk, o.sk_type)? != SOCK_STREAM {
        return None;
    }
    let tcp_state = i64::from(kread::<u8>(sk, o.skc_state)?);
    if !matches!(
        tcp_state,
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_CLOSING | TCP_LAST_ACK
    ) {
        return None;
    }
    // The transfer that made us look has already moved the TCP sequence numbers.
    let (moved_in, moved_out) = if dir == DIR_EGRESS { (0, len) } else { (len, 0) };
    let info = new_sock(cfg, sk, family, ROLE_UNKNOWN, SOCK_MIDSTREAM, moved_in as u32, moved_out as u32)?;
    if SOCKS.insert(&sk, &info, 0).is_err() {
        count(probe, counter::MAP_FULL);
        return None;
    }
    count(probe, counter::MIDSTREAM);
    SOCKS.get_ptr_mut(&sk)
}

/// State for a connection just seen: its tuple, namespace, TCP sequence numbers of
/// offset 0 (`moved_*`: bytes already transferred by the transfer being handled) and
/// the port filter.
#[inline(always)]
fn new_sock(
    cfg: &Config,
    sk: u64,
    family: u16,
    role: u8,
    flags: u8,
    moved_in: u32,
    moved_out: u32,
) -> Option<SockState> {
    let tuple = read_tuple(cfg, sk, family)?;
    let o = &cfg.offsets;
    let copied = kread::<u32>(sk, o.tcp_copied_seq).unwrap_or(0);
    let written = kread::<u32>(sk, o.tcp_write_seq).unwrap_or(0);
    let netns = kread::<u64>(sk, o.skc_net).and_then(|net| kread::<u32>(net, o.net_inum)).unwrap_or(0);
    let ignored = if port_allowed(cfg, &tuple) { 0 } else { SOCK_IGNORED_PORT };
    Some(SockState {
        tuple,
        // SAFETY: helper without preconditions.
        gen: unsafe { bpf_ktime_get_ns() },
        seq: [0; 2],
        unreported: [0; 2],
        tcp_seq: [copied.wrapping_sub(moved_in), written.wrapping_sub(moved_out)],
        owner: 0,
        netns,
        role,
        flags: flags | ignored,
        _pad: [0; 2],
        tls_tgid: 0,
        tls_ssl: 0,
        connect_tid: 0,
        _pad1: 0,
        connect_ns: 0,
    })
}

/// The 4-tuple from `struct sock_common`, local side first.
#[inline(always)]
fn read_tuple(cfg: &Config, sk: u64, family: u16) -> Option<Tuple> {
    let o = &cfg.offsets;
    let dport: u16 = kread(sk, o.skc_dport)?;
    let mut t = Tuple {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: kread(sk, o.skc_num)?,
        dport: u16::from_be(dport),
        family,
        _pad: 0,
    };
    if family == AF_INET {
        t.saddr[..4].copy_from_slice(&kread::<[u8; 4]>(sk, o.skc_rcv_saddr)?);
        t.daddr[..4].copy_from_slice(&kread::<[u8; 4]>(sk, o.skc_daddr)?);
    } else {
        t.saddr = kread(sk, o.skc_v6_rcv_saddr)?;
        t.daddr = kread(sk, o.skc_v6_daddr)?;
    }
    Some(t)
}

/// A process other than the last announced one uses the connection: apply the process
/// filters and tell the agent (waking it, so it can read the process's `/proc` entry
/// while a short-lived process still exists). Returns `false` when the record could not
/// be written; the next transfer tries again.
#[inline(always)]
fn announce(cfg: &Config, id: u64, sk: u64, st: &mut SockState, probe: u8) -> bool {
    let tgid = (id >> 32) as u32;
    if !traced(cfg, tgid) || kernel_thread(cfg) {
        st.flags |= SOCK_IGNORED_PROC;
        st.owner = tgid;
        return true;
    }
    st.flags &= !SOCK_IGNORED_PROC;
    if st.flags & SOCK_IGNORED_PORT != 0 {
        st.owner = tgid;
        return true;
    }
    let ev = ConnEvent {
        kind: EventKind::Conn as u32,
        tgid,
        tid: id as u32,
        netns: st.netns,
        sock: sk,
        conn_gen: st.gen,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tuple: st.tuple,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        tcp_seq: st.tcp_seq,
        role: st.role,
        flags: if st.flags & SOCK_MIDSTREAM != 0 { CONN_MIDSTREAM } else { 0 },
        _pad: [0; 2],
        ppid: parent_tgid(cfg),
        connect_tid: st.connect_tid,
        _pad1: 0,
        connect_ns: st.connect_ns,
    };
    if !output(probe, core::ptr::addr_of!(ev).cast(), size_of::<ConnEvent>() as u64, true) {
        return false;
    }
    st.owner = tgid;
    true
}

/// The current process's parent (0 if it cannot be read).
#[inline(always)]
fn parent_tgid(cfg: &Config) -> u32 {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let o = &cfg.offsets;
    kread::<u64>(task, o.task_real_parent).and_then(|p| kread::<u32>(p, o.task_tgid)).unwrap_or(0)
}

/// Kernel threads (NFS, iSCSI, ...) use sockets too; they have no user buffer.
#[inline(always)]
fn kernel_thread(cfg: &Config) -> bool {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    kread::<u32>(task, cfg.offsets.task_flags).is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Where the payload of the running syscall is.
pub(crate) enum Source {
    Buf(u64),
    Iov(u64, u64),
    None,
}

/// The running syscall's user buffer, from its saved registers.
#[inline(always)]
pub(crate) fn source(cfg: &Config) -> Source {
    // SAFETY: helpers without preconditions; the task pointer is the current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    // The verifier knows `regs` as a `struct pt_regs` from BTF: loads at its fields'
    // constant offsets are plain loads (fault-safe), no helper call each. The agent
    // checked at start-up that the running kernel's layout has these offsets.
    // SAFETY: see above; offsets are multiples of 8 inside `struct pt_regs`.
    let (nr, a1, a2) = unsafe {
        (
            core::ptr::read_volatile(regs.add(REGS_NR / 8)),
            core::ptr::read_volatile(regs.add(REGS_ARG1 / 8)),
            core::ptr::read_volatile(regs.add(REGS_ARG2 / 8)),
        )
    };
    let s = &cfg.syscalls;
    let nr = nr as u32;
    if nr == s.read || nr == s.write || nr == s.recvfrom || nr == s.sendto {
        Source::Buf(a1)
    } else if nr == s.readv || nr == s.writev {
        Source::Iov(a1, a2)
    } else if nr == s.recvmsg || nr == s.sendmsg {
        // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
        // SAFETY: user pointers read through the fault-tolerant helper.
        let iov = unsafe { bpf_probe_read_user((a1 + 16) as *const u64) };
        // SAFETY: as above.
        let cnt = unsafe { bpf_probe_read_user((a1 + 24) as *const u64) };
        match (iov, cnt) {
            (Ok(iov), Ok(cnt)) => Source::Iov(iov, cnt),
            _ => Source::None,
        }
    } else {
        Source::None
    }
}

/// Copies the transfer's bytes and writes the data record; `false` if it was lost.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit_data(cfg: &Config, id: u64, sk: u64, st: &SockState, dir: u8, offset: u64, len: u64, probe: u8) -> bool {
    let Some(s) = scratch() else { return false };
    let (prefix, tail_start, tail) = plan(cfg, len);
    let dst = s.data.as_mut_ptr();
    let (captured, tail, kind) = match source(cfg) {
        Source::Buf(buf) => copy_flat(dst, buf, prefix, tail_start, tail),
        Source::Iov(iov, cnt) => match copy_iov(s, iov, cnt, prefix, tail_start, len) {
            Some((p, t)) => (p, t, payload::COPIED),
            None => (0, 0, payload::READ_FAILED),
        },
        Source::None => (0, 0, payload::NO_USER_BUFFER),
    };
    // Bounds the verifier can see (they hold anyway).
    let captured = if captured > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { captured };
    let tail = if tail > TAIL_WINDOW as u64 { TAIL_WINDOW as u64 } else { tail };
    match kind {
        payload::READ_FAILED => count(probe, counter::READ_FAILED),
        payload::NO_USER_BUFFER => count(probe, counter::NO_USER_BUFFER),
        _ => {}
    }
    s.hdr = DataEvent {
        kind: EventKind::Data as u32,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        _pad0: 0,
        sock: sk,
        conn_gen: st.gen,
        tls: 0,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        offset,
        unreported_ns: if dir == DIR_EGRESS { st.unreported[1] } else { st.unreported[0] },
        len: len as u32,
        captured: captured as u32,
        tail: tail as u32,
        direction: dir,
        payload: kind,
        _pad: [0; 2],
    };
    let total = size_of::<DataEvent>() as u64 + captured + tail;
    output(probe, core::ptr::addr_of!(*s).cast(), total, false)
}

/// What a record of a `len`-byte transfer carries: (prefix bytes, where the tail starts,
/// tail bytes). The prefix is the capture limit; the tail window covers the end of a
/// transfer longer than prefix and window together.
#[inline(always)]
pub(crate) fn plan(cfg: &Config, len: u64) -> (u64, u64, u64) {
    let limit = u64::from(cfg.capture_bytes);
    let limit = if limit > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { limit };
    let prefix = if len < limit { len } else { limit };
    let tail_start = if len > prefix + TAIL_WINDOW as u64 { len - TAIL_WINDOW as u64 } else { prefix };
    (prefix, tail_start, len - tail_start)
}

/// Copies the prefix and the tail ([`plan`]) of one contiguous user buffer to `dst`:
/// (prefix bytes, tail bytes, `payload::*`). Nothing is claimed when a copy faults.
#[inline(always)]
pub(crate) fn copy_flat(dst: *mut u8, buf: u64, prefix: u64, tail_start: u64, tail: u64) -> (u64, u64, u8) {
    let p = copy_buf(dst, buf, prefix);
    let t = if p == prefix && tail > 0 { copy_tail_buf(dst, p, buf + tail_start, tail) } else { Some(0) };
    match (p == prefix, t) {
        (true, Some(t)) => (p, t, payload::COPIED),
        _ => (0, 0, payload::READ_FAILED),
    }
}

/// Copies `n` bytes from user memory at `src` to `dst + at`. Every copy goes through
/// here. The bounds (`at <= MAX_CAPTURE + TAIL_WINDOW`, `n <= MAX_CAPTURE`) are applied,
/// then masks the verifier reads as unsigned bounds, right at the call: `at + n` stays
/// below `SCRATCH_BYTES`. `false` on a fault.
#[inline(always)]
fn copy_user(dst: *mut u8, at: u64, src: u64, n: u64) -> bool {
    const MAX_AT: u64 = (MAX_CAPTURE + TAIL_WINDOW) as u64;
    // The compiler may prove the bounds below redundant from the callers' arithmetic
    // (which the verifier cannot follow) and drop them; reading the values back through
    // the stack keeps them.
    // SAFETY: reads of initialised locals.
    let (at, n) = unsafe { (core::ptr::read_volatile(&at), core::ptr::read_volatile(&n)) };
    let at = if at > MAX_AT { MAX_AT } else { at };
    let n = if n > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { n };
    let (at, n) = (at & SCRATCH_MASK, n & SCRATCH_MASK);
    if n == 0 {
        return true;
    }
    // SAFETY: at, n <= SCRATCH_MASK, so at + n < SCRATCH_BYTES, inside the scratch area;
    // `src` is a user pointer read through the fault-tolerant helper.
    unsafe { probe_read_user_raw(dst.add(at as usize).cast(), n as u32, src as *const _) >= 0 }
}

/// Copies `want` (`<= MAX_CAPTURE`) bytes to the start of `dst`; returns bytes copied
/// (0 on a fault).
#[inline(always)]
pub(crate) fn copy_buf(dst: *mut u8, src: u64, want: u64) -> u64 {
    let n = if want > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { want };
    if copy_user(dst, 0, src, n) {
        n
    } else {
        0
    }
}

/// Copies the `want` (`<= TAIL_WINDOW`) bytes at `src` right after the `at` prefix bytes.
#[inline(always)]
pub(crate) fn copy_tail_buf(dst: *mut u8, at: u64, src: u64, want: u64) -> Option<u64> {
    let n = if want > TAIL_WINDOW as u64 { TAIL_WINDOW as u64 } else { want };
    copy_user(dst, at, src, n).then_some(n)
}

/// Gathers from an iovec array the first `prefix` bytes, then the bytes
/// `[tail_start, len)` right after them. Returns (prefix bytes, tail bytes): the prefix
/// comes up short when the data lies beyond the first `MAX_IOVECS` entries, and the
/// tail is copied only when one entry holds all of it (otherwise 0: a record never
/// claims bytes it does not carry). `None` when a copy faulted.
///
/// The iovec array is read once, into `s.iov` (each user read costs a helper call and
/// the kernel's usercopy checks). Two simple loops rather than one clever one: the
/// verifier walks every path of a loop body, and a body with several copies and clamps
/// does not fit its budget.
#[inline(always)]
fn copy_iov(s: &mut Scratch, iov: u64, iovcnt: u64, prefix: u64, tail_start: u64, len: u64) -> Option<(u64, u64)> {
    let cnt = if iovcnt > MAX_IOVECS as u64 { MAX_IOVECS as u64 } else { iovcnt };
    if cnt == 0 {
        return Some((0, 0));
    }
    let bytes = cnt * size_of::<Iovec>() as u64;
    let bytes =
        if bytes > size_of::<[Iovec; MAX_IOVECS]>() as u64 { size_of::<[Iovec; MAX_IOVECS]>() as u64 } else { bytes };
    // SAFETY: `s.iov` has room for MAX_IOVECS entries; user pointer read through the
    // fault-tolerant helper.
    let ret = unsafe { probe_read_user_raw(s.iov.as_mut_ptr().cast(), bytes as u32, iov as *const _) };
    if ret < 0 {
        return None;
    }
    let dst = s.data.as_mut_ptr();
    // The entry count, too, is read from map memory at each test: compared with the
    // constant `i`, a register would leave each loop with a different known count, and
    // each of those would walk the next loop again.
    // SAFETY: a field of the scratch map value, which this CPU alone uses.
    unsafe { core::ptr::write_volatile(&raw mut s.count, cnt) };
    let mut off: u64 = 0;
    let mut i: usize = 0;
    while i < MAX_IOVECS {
        // SAFETY: as above.
        if i as u64 >= unsafe { core::ptr::read_volatile(&raw const s.count) } || off >= prefix {
            break;
        }
        let v = s.iov[i];
        let room = prefix - off;
        let n = if v.len < room { v.len } else { room };
        if !copy_user(dst, off, v.base, n) {
            return None;
        }
        // Through map memory, whose contents the verifier does not track: it forgets
        // `off`'s exact value, so the two ways through this iteration (whole entry, or
        // cut at `prefix`) meet at the loop head and are checked once. Otherwise the
        // paths double with every entry and a few dozen entries exceed its budget.
        // SAFETY: a field of the scratch map value, which this CPU alone uses.
        off = unsafe {
            core::ptr::write_volatile(&raw mut s.cursor, off + n);
            core::ptr::read_volatile(&raw const s.cursor)
        };
        i += 1;
    }
    let off = if off > prefix { prefix } else { off };
    let tail = len - tail_start;
    if off < prefix || tail == 0 {
        return Some((off, 0));
    }
    // The entry that holds the whole tail, if one does. As above, the values compared
    // live in map memory and are read afresh in each iteration: what a comparison
    // teaches the verifier about them dies with the iteration, so iterations do not
    // multiply its paths.
    // SAFETY: fields of the scratch map value, which this CPU alone uses.
    unsafe {
        core::ptr::write_volatile(&raw mut s.cursor, 0);
        core::ptr::write_volatile(&raw mut s.tail_at, tail_start);
        core::ptr::write_volatile(&raw mut s.end, len);
    }
    let mut src: u64 = 0;
    let mut i: usize = 0;
    while i < MAX_IOVECS {
        // SAFETY: as above.
        if i as u64 >= unsafe { core::ptr::read_volatile(&raw const s.count) } {
            break;
        }
        let v = s.iov[i];
        // SAFETY: as above.
        let (pos, tail_at, end) = unsafe {
            (
                core::ptr::read_volatile(&raw const s.cursor),
                core::ptr::read_volatile(&raw const s.tail_at),
                core::ptr::read_volatile(&raw const s.end),
            )
        };
        if tail_at >= pos && end <= pos + v.len {
            src = v.base + (tail_at - pos);
            break;
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut s.cursor, pos + v.len) };
        i += 1;
    }
    if src == 0 {
        return Some((off, 0));
    }
    Some((off, copy_tail_buf(dst, off, src, tail)?))
}

// ---- connection lifecycle ----------------------------------------------------------

/// The `connect()` of a socket that just completed its handshake, removed from
/// [`CONNECTING`] (zeros if it was not seen).
#[inline(always)]
fn take_connecting(sk: u64) -> Connecting {
    // SAFETY: the value is copied out before the entry is removed.
    match unsafe { CONNECTING.get(&sk) }.copied() {
        Some(c) => {
            let _ = CONNECTING.remove(&sk);
            c
        }
        None => Connecting { tid: 0, _pad: 0, ts_ns: 0 },
    }
}

#[inline(always)]
fn on_state(sk: u64, old: i64, new: i64) {
    let Some(cfg) = config() else { return };
    let o = &cfg.offsets;
    if new == TCP_SYN_SENT && old == TCP_CLOSE {
        // connect(): runs in the caller's context. One map update per connect.
        let id = bpf_get_current_pid_tgid();
        if (id >> 32) as u32 == cfg.agent_tgid || kread::<u16>(sk, o.sk_protocol) != Some(IPPROTO_TCP) {
            return;
        }
        // SAFETY: helper without preconditions.
        let c = Connecting { tid: id as u32, _pad: 0, ts_ns: unsafe { bpf_ktime_get_ns() } };
        // A full LRU evicts; an error leaves the connection without its opener (0).
        let _ = CONNECTING.insert(&sk, &c, 0);
    } else if new == TCP_ESTABLISHED && (old == TCP_SYN_SENT || old == TCP_SYN_RECV) {
        if kread::<u16>(sk, o.sk_protocol) != Some(IPPROTO_TCP) {
            return;
        }
        let Some(family) = kread::<u16>(sk, o.skc_family) else { return };
        let role = if old == TCP_SYN_SENT { ROLE_CLIENT } else { ROLE_SERVER };
        let opener = if old == TCP_SYN_SENT { take_connecting(sk) } else { Connecting { tid: 0, _pad: 0, ts_ns: 0 } };
        let Some(mut info) = new_sock(cfg, sk, family, role, 0, 0, 0) else { return };
        info.connect_tid = opener.tid;
        info.connect_ns = opener.ts_ns;
        if SOCKS.insert(&sk, &info, 0).is_err() {
            count(probe::SOCK_STATE, counter::MAP_FULL);
        }
    } else if new == TCP_LISTEN || old == TCP_LISTEN {
        if kread::<u16>(sk, o.sk_protocol) != Some(IPPROTO_TCP) {
            return;
        }
        let o = &cfg.offsets;
        let ev = ListenEvent {
            kind: EventKind::Listen as u32,
            netns: kread::<u64>(sk, o.skc_net).and_then(|net| kread::<u32>(net, o.net_inum)).unwrap_or(0),
            port: kread::<u16>(sk, o.skc_num).unwrap_or(0),
            family: kread::<u16>(sk, o.skc_family).unwrap_or(0),
            listening: u8::from(new == TCP_LISTEN),
            _pad: [0; 3],
        };
        output(probe::SOCK_STATE, core::ptr::addr_of!(ev).cast(), size_of::<ListenEvent>() as u64, false);
    } else if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK || new == TCP_CLOSE {
        // SAFETY: the value is copied out before the entry may be removed.
        let Some(st) = (unsafe { SOCKS.get(&sk) }).copied() else { return };
        let what = if new == TCP_CLOSE {
            let _ = SOCKS.remove(&sk);
            if st.flags & SOCK_TLS != 0 {
                crate::tls::end_session(sk, &st);
            }
            state::CLOSED
        } else {
            state::SEND_CLOSED
        };
        if st.owner == 0 || st.flags & (SOCK_IGNORED_PORT | SOCK_IGNORED_PROC) != 0 {
            return;
        }
        let ev = StateEvent {
            kind: EventKind::State as u32,
            _pad0: 0,
            sock: sk,
            conn_gen: st.gen,
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            state: what,
            _pad: [0; 7],
        };
        output(probe::SOCK_STATE, core::ptr::addr_of!(ev).cast(), size_of::<StateEvent>() as u64, false);
    }
}
