//! TLS plaintext from OpenSSL: uprobes on `SSL_read`, `SSL_read_ex`, `SSL_write` and
//! `SSL_write_ex`, and the socket-side half that finds each session's connection.
//!
//! Entry probes save the call (`SSL*`, buffer, out-pointer) per thread in
//! [`SSL_CALLS`]; return probes report the bytes the call moved as a [`DataEvent`] with
//! `tls = SSL*`, at offsets that count the session's plaintext per direction
//! ([`TLS_SESSIONS`]).
//!
//! Which connection a session runs over is learnt by the socket hooks
//! ([`on_sock_transfer`]): a socket transfer made while its thread is inside an
//! `SSL_*` call (a socket BIO: curl, nginx, Python's blocking `ssl`) belongs to that
//! call's session. Memory-BIO stacks (Node, Python asyncio) move the ciphertext outside
//! the call: after an `SSL_write` that found no socket, the thread's next send whose
//! bytes start like a TLS record binds the session. From then on the socket's
//! ciphertext is not reported, and its end of stream is reported as the session's.
//!
//! Records are built in the per-CPU [`Scratch`] (uprobes run in process context, like
//! the socket hooks, and do not nest with them on a CPU).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use ghostwire_common::{
    counter, payload, probe, Config, DataEvent, EventKind, ExecEvent, TlsBindEvent, DIR_EGRESS, DIR_INGRESS,
    MAX_CAPTURE, TAIL_WINDOW, TLS_UNBOUND_MAX_RECORDS,
};

use crate::{
    maps::{
        config, count, output, scratch, traced, SessionKey, SockState, SslCall, TlsSession, SOCKS, SOCK_IGNORED_PORT,
        SOCK_IGNORED_PROC, SOCK_TLS, SSL_CALLS, TLS_SESSIONS,
    },
    sock::{copy_flat, plan, source, Source},
};

/// [`SslCall::dir`] of an `SSL_do_handshake` call.
pub const DIR_HANDSHAKE: u8 = 2;

/// Largest byte count one record claims (`DataEvent::len` is a `u32`; `SSL_write_ex`
/// takes a `size_t`).
const MAX_LEN: u64 = 1 << 31;

// ---- entry points ------------------------------------------------------------------

/// `int SSL_read(SSL *ssl, void *buf, int num)` and
/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_INGRESS, 0);
    0
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    let num = ctx.arg::<i32>(2).unwrap_or(0);
    enter(&ctx, DIR_EGRESS, if num > 0 { num as u64 } else { 0 });
    0
}

/// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_EGRESS, ctx.arg::<u64>(2).unwrap_or(0));
    0
}

/// `int SSL_do_handshake(SSL *s)` (also what `SSL_connect` and `SSL_accept` run): the
/// socket it moves records over is the session's, known before its first byte of
/// plaintext. Its ciphertext is still reported: the ServerHello names the version.
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_HANDSHAKE, 0);
    0
}

#[uretprobe]
pub fn ssl_handshake_exit(_ctx: RetProbeContext) -> u32 {
    exit(DIR_HANDSHAKE, 0, false);
    0
}

/// `SSL_read` returns the byte count (`<= 0`: nothing read).
#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    exit(DIR_INGRESS, i64::from(ctx.ret::<i32>()), false);
    0
}

#[uretprobe]
pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
    exit(DIR_EGRESS, i64::from(ctx.ret::<i32>()), false);
    0
}

/// `SSL_read_ex` returns 1 on success; the byte count is in `*readbytes`.
#[uretprobe]
pub fn ssl_read_ex_exit(ctx: RetProbeContext) -> u32 {
    exit(DIR_INGRESS, i64::from(ctx.ret::<i32>()), true);
    0
}

#[uretprobe]
pub fn ssl_write_ex_exit(ctx: RetProbeContext) -> u32 {
    exit(DIR_EGRESS, i64::from(ctx.ret::<i32>()), true);
    0
}

/// `sched:sched_process_exec`: a process replaced its image and may map a TLS library
/// the agent has not attached to yet.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    // The old image's sessions are gone: an `unbound` one must not bind the new
    // image's first TLS send.
    if cfg.tls != 0 {
        let _ = SSL_CALLS.remove(&id);
    }
    let tgid = (id >> 32) as u32;
    if !traced(cfg, tgid) {
        return 0;
    }
    let ev = ExecEvent {
        kind: EventKind::Exec as u32,
        tgid,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Woken at once: a short-lived client's first SSL call may come a few ms later, and
    // its executable (Node's static OpenSSL) is attached only once the agent knows.
    output(probe::PROC_EXEC, core::ptr::addr_of!(ev).cast(), size_of::<ExecEvent>() as u64, true);
    0
}

// ---- the calls ---------------------------------------------------------------------

/// Saves the call for its return probe and the socket hooks, and reports an
/// `SSL_write`'s `num` bytes now. The thread's `unbound` session survives: the call may
/// be on another session.
///
/// Writes are reported at entry, before their ciphertext leaves: the peer may read
/// the request and act on it (call a backend) before `SSL_write` returns, and the
/// linker must know the client's request by then, as it does for socket bytes.
#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u8, num: u64) {
    let Some(cfg) = config() else { return };
    let id = bpf_get_current_pid_tgid();
    if !traced(cfg, (id >> 32) as u32) {
        return;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if ssl == 0 {
        return;
    }
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let out: u64 = ctx.arg(3).unwrap_or(0);
    let num = if num > MAX_LEN { MAX_LEN } else { num };
    let p = match SSL_CALLS.get_ptr_mut(&id) {
        Some(p) => p,
        None => {
            let call = SslCall { ssl, buf, out, num, unbound: 0, dir, active: 1, _pad: [0; 6] };
            if SSL_CALLS.insert(&id, &call, 0).is_err() {
                count(probe_of(dir), counter::MAP_FULL);
                return;
            }
            match SSL_CALLS.get_ptr_mut(&id) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: map value of this thread; only this thread writes it while it runs.
    let c = unsafe { &mut *p };
    c.ssl = ssl;
    c.buf = buf;
    c.out = out;
    c.num = num;
    c.dir = dir;
    c.active = 1;
    if dir == DIR_EGRESS && num > 0 {
        write_entry(cfg, id, c, num);
    } else if dir == DIR_HANDSHAKE {
        forget_unbound(id, ssl);
    }
}

/// A handshake starts on `ssl`: state left under that address by a session that never
/// found its connection (freed, its address reused) is not this session's. Nothing of
/// this session was reported yet (a handshake precedes its data), so resetting is safe
/// even when the handshake is entered several times (non-blocking). A bound session is
/// left alone: `bind` resets a reused address when its connection differs.
#[inline(always)]
fn forget_unbound(id: u64, ssl: u64) {
    let key = SessionKey { tgid: (id >> 32) as u32, _pad: 0, ssl };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TLS_SESSIONS.get(&key) }.is_some_and(|s| s.sk == 0) {
        let _ = TLS_SESSIONS.remove(&key);
    }
}

/// The call returned `ret`: a read reports the bytes it moved; a write that moved
/// fewer than it reported at entry leaves them as the session's credit.
#[inline(always)]
fn exit(dir: u8, ret: i64, ex: bool) {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = SSL_CALLS.get_ptr_mut(&id) else { return };
    // SAFETY: map value of this thread; only this thread writes it while it runs.
    let call = unsafe { &mut *p };
    if call.active == 0 {
        return;
    }
    call.active = 0;
    if call.dir != dir || dir == DIR_HANDSHAKE {
        return;
    }
    let probe = probe_of(dir);
    let n = if ex {
        if ret != 1 {
            0
        } else {
            // SAFETY: user pointer read through the fault-tolerant helper.
            match unsafe { bpf_probe_read_user(call.out as *const u64) } {
                Ok(n) => n,
                Err(_) => {
                    count(probe, counter::READ_FAILED);
                    // A write's count unknown: take it as done (a repeat is reported
                    // again rather than lost).
                    call.num
                }
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if dir == DIR_EGRESS {
        if n < call.num {
            let key = SessionKey { tgid: (id >> 32) as u32, _pad: 0, ssl: call.ssl };
            if let Some(sess) = TLS_SESSIONS.get_ptr_mut(&key) {
                // SAFETY: map value; see `report`.
                unsafe { (*sess).credit += call.num - n };
            }
        }
        return;
    }
    if n == 0 {
        return;
    }
    let n = if n > MAX_LEN { MAX_LEN } else { n };
    let Some(cfg) = config() else { return };
    let Some(sess) = session(id, call.ssl, probe) else { return };
    report(cfg, id, call, sess, dir, call.buf, n, probe);
}

/// An `SSL_write` of `num` bytes starts: report those not reported already (a repeat
/// of an earlier call that wrote less than asked).
#[inline(always)]
fn write_entry(cfg: &Config, id: u64, call: &mut SslCall, num: u64) {
    let probe = probe::SSL_WRITE;
    let Some(sess) = session(id, call.ssl, probe) else { return };
    let skip = if sess.credit < num { sess.credit } else { num };
    sess.credit -= skip;
    if skip == num {
        return;
    }
    report(cfg, id, call, sess, DIR_EGRESS, call.buf + skip, num - skip, probe);
}

/// The session state of `ssl` in the current process, created if new.
#[inline(always)]
fn session(id: u64, ssl: u64, probe: u8) -> Option<&'static mut TlsSession> {
    let key = SessionKey { tgid: (id >> 32) as u32, _pad: 0, ssl };
    let p = match TLS_SESSIONS.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let fresh = TlsSession { sk: 0, gen: 0, seq: [0; 2], unreported: [0; 2], credit: 0, unbound_records: 0 };
            if TLS_SESSIONS.insert(&key, &fresh, 0).is_err() {
                count(probe, counter::MAP_FULL);
                return None;
            }
            TLS_SESSIONS.get_ptr_mut(&key)?
        }
    };
    // SAFETY: map value; the session's calls are serialised by OpenSSL (one `SSL*` is
    // not used by two threads at once), and a lost update shows as an offset jump.
    Some(unsafe { &mut *p })
}

/// `n` plaintext bytes at `buf` of `call`'s session moved in `dir`: advance the
/// session's offsets and report them, unless its connection is filtered out.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn report(cfg: &Config, id: u64, call: &mut SslCall, sess: &mut TlsSession, dir: u8, buf: u64, n: u64, probe: u8) {
    let ssl = call.ssl;
    let d = if dir == DIR_EGRESS { 1 } else { 0 };
    let offset = sess.seq[d];
    sess.seq[d] = offset + n;
    if sess.sk != 0 {
        // SAFETY: read-only lookup of a plain value.
        if let Some(st) = unsafe { SOCKS.get(&sess.sk) } {
            if st.gen == sess.gen && st.flags & (SOCK_IGNORED_PORT | SOCK_IGNORED_PROC) != 0 {
                return;
            }
        }
    } else {
        if sess.unbound_records >= u64::from(TLS_UNBOUND_MAX_RECORDS) {
            // The agent could not hold it either.
            count(probe, counter::TLS_UNBOUND_SKIPPED);
            return;
        }
        sess.unbound_records += 1;
        if dir == DIR_EGRESS {
            // Perhaps a memory BIO: the application sends this ciphertext itself, next.
            call.unbound = ssl;
        }
    }
    if emit_plain(cfg, id, sess, ssl, buf, dir, offset, n, probe) {
        if sess.sk == 0 {
            count(probe, counter::TLS_UNBOUND);
        }
    } else {
        // SAFETY: helper without preconditions.
        sess.unreported[d] = unsafe { bpf_ktime_get_ns() };
    }
}

/// Copies `n` plaintext bytes from `buf` (prefix and tail, as for socket bytes) and
/// writes the data record; `false` if it was lost.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit_plain(
    cfg: &Config,
    id: u64,
    sess: &TlsSession,
    ssl: u64,
    buf: u64,
    dir: u8,
    offset: u64,
    n: u64,
    probe: u8,
) -> bool {
    let Some(s) = scratch() else { return false };
    let (prefix, tail_start, tail) = plan(cfg, n);
    let (captured, tail, kind) = copy_flat(s.data.as_mut_ptr(), buf, prefix, tail_start, tail);
    // Bounds the verifier can see (they hold anyway).
    let captured = if captured > MAX_CAPTURE as u64 { MAX_CAPTURE as u64 } else { captured };
    let tail = if tail > TAIL_WINDOW as u64 { TAIL_WINDOW as u64 } else { tail };
    if kind == payload::READ_FAILED {
        count(probe, counter::READ_FAILED);
    }
    s.hdr = DataEvent {
        kind: EventKind::Data as u32,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        _pad0: 0,
        sock: sess.sk,
        conn_gen: sess.gen,
        tls: ssl,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        offset,
        unreported_ns: if dir == DIR_EGRESS { sess.unreported[1] } else { sess.unreported[0] },
        len: n as u32,
        captured: captured as u32,
        tail: tail as u32,
        direction: dir,
        payload: kind,
        _pad: [0; 2],
    };
    let total = size_of::<DataEvent>() as u64 + captured + tail;
    output(probe, core::ptr::addr_of!(*s).cast(), total, false)
}

#[inline(always)]
fn probe_of(dir: u8) -> u8 {
    if dir == DIR_EGRESS {
        probe::SSL_WRITE
    } else {
        probe::SSL_READ
    }
}

// ---- the socket side ---------------------------------------------------------------

/// Called by the socket hooks (when uprobes are attached) for a transfer of `len`
/// bytes on a tracked connection, after its offsets advanced and its owner was
/// announced. Returns `true` when the transfer is TLS ciphertext and must not be
/// reported as socket bytes. Plaintext sockets cost one hash lookup (of the thread).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn on_sock_transfer(cfg: &Config, id: u64, sk: u64, st: &mut SockState, dir: u8, len: u64, probe: u8) -> bool {
    if st.flags & SOCK_TLS != 0 {
        if len == 0 {
            if dir == DIR_INGRESS && st.flags & (SOCK_IGNORED_PORT | SOCK_IGNORED_PROC) == 0 {
                emit_eof(id, sk, st);
            }
            return true;
        }
        count(probe, counter::TLS_CIPHERTEXT);
        // Another session's call moving bytes over this socket is the stronger evidence:
        // the binding it replaces came from a guess (memory BIO) or an `SSL*` since
        // reused. Only TLS sockets pay this lookup.
        // SAFETY: read-only lookup of a plain value.
        if let Some(call) = unsafe { SSL_CALLS.get(&id) } {
            if call.active != 0 && call.ssl != st.tls_ssl && len >= 3 && starts_like_tls_record(cfg) {
                let ssl = call.ssl;
                end_session(sk, st);
                bind(id, sk, st, ssl, probe, true);
            }
        }
        return true;
    }
    if len == 0 {
        return false;
    }
    let Some(p) = SSL_CALLS.get_ptr_mut(&id) else { return false };
    // SAFETY: map value of this thread; only this thread writes it while it runs.
    let call = unsafe { &mut *p };
    // Bytes that do not start like a TLS record are not this session's (a callback
    // inside the call writing elsewhere, a log line): the socket stays plaintext. The
    // first transfer of a socket BIO's call always starts a record (OpenSSL writes
    // whole records and reads a record header first).
    let ssl = if call.active != 0 {
        call.ssl
    } else if call.unbound != 0 && dir == DIR_EGRESS {
        call.unbound
    } else {
        return false;
    };
    if len < 3 || !starts_like_tls_record(cfg) {
        return false;
    }
    if call.active != 0 && call.dir == DIR_HANDSHAKE {
        // The session is this socket's, but its handshake goes on being reported: the
        // agent reads the version from it.
        bind(id, sk, st, ssl, probe, false);
        return false;
    }
    if call.active == 0 {
        call.unbound = 0;
    }
    bind(id, sk, st, ssl, probe, true);
    count(probe, counter::TLS_CIPHERTEXT);
    true
}

/// Session `ssl` of the current process runs over `sk`: record it on both sides and
/// tell the agent (once per session and connection). `ciphertext_done`: the socket's
/// bytes are not reported any more (false during the handshake).
#[inline(always)]
fn bind(id: u64, sk: u64, st: &mut SockState, ssl: u64, probe: u8, ciphertext_done: bool) {
    let tgid = (id >> 32) as u32;
    let key = SessionKey { tgid, _pad: 0, ssl };
    let mut known = false;
    if let Some(p) = TLS_SESSIONS.get_ptr_mut(&key) {
        // SAFETY: map value; see `session`.
        let s = unsafe { &mut *p };
        known = s.sk == sk && s.gen == st.gen;
        if s.sk != 0 && !known {
            // Bound to another connection before: a freed `SSL*` reused for a new
            // session. Unbound plaintext (sk == 0) keeps its offsets: its records are
            // out already.
            s.seq = [0; 2];
            s.unreported = [0; 2];
            s.credit = 0;
        }
        s.sk = sk;
        s.gen = st.gen;
    } else {
        let s = TlsSession { sk, gen: st.gen, seq: [0; 2], unreported: [0; 2], credit: 0, unbound_records: 0 };
        if TLS_SESSIONS.insert(&key, &s, 0).is_err() {
            count(probe, counter::MAP_FULL);
        }
    }
    if ciphertext_done {
        st.flags |= SOCK_TLS;
    }
    st.tls_tgid = tgid;
    st.tls_ssl = ssl;
    if known || st.flags & (SOCK_IGNORED_PORT | SOCK_IGNORED_PROC) != 0 {
        return;
    }
    let ev = TlsBindEvent {
        kind: EventKind::TlsBind as u32,
        tgid,
        ssl,
        sock: sk,
        conn_gen: st.gen,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    output(probe, core::ptr::addr_of!(ev).cast(), size_of::<TlsBindEvent>() as u64, true);
}

/// Whether the running transfer's first bytes look like a TLS record header: content type
/// 20..=23 (change_cipher_spec, alert, handshake, application_data), version 3.0..=3.4.
#[inline(always)]
fn starts_like_tls_record(cfg: &Config) -> bool {
    let base = match source(cfg) {
        Source::Buf(b) => b,
        Source::Iov(iov, cnt) if cnt > 0 => {
            // SAFETY: user pointer read through the fault-tolerant helper.
            match unsafe { bpf_probe_read_user(iov as *const u64) } {
                Ok(b) => b,
                Err(_) => return false,
            }
        }
        _ => return false,
    };
    // SAFETY: as above.
    let Ok(h) = (unsafe { bpf_probe_read_user(base as *const [u8; 3]) }) else { return false };
    (20..=23).contains(&h[0]) && h[1] == 3 && h[2] <= 4
}

/// End of stream on a TLS connection: reported as a zero-length plaintext ingress
/// record of its session, at the session's offset.
#[inline(always)]
fn emit_eof(id: u64, sk: u64, st: &SockState) {
    let key = SessionKey { tgid: st.tls_tgid, _pad: 0, ssl: st.tls_ssl };
    // SAFETY: read-only lookup of a plain value.
    let Some(sess) = (unsafe { TLS_SESSIONS.get(&key) }) else { return };
    if sess.sk != sk {
        return;
    }
    let Some(s) = scratch() else { return };
    s.hdr = DataEvent {
        kind: EventKind::Data as u32,
        tgid: st.tls_tgid,
        tid: id as u32,
        _pad0: 0,
        sock: sk,
        conn_gen: st.gen,
        tls: st.tls_ssl,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        offset: sess.seq[0],
        unreported_ns: sess.unreported[0],
        len: 0,
        captured: 0,
        tail: 0,
        direction: DIR_INGRESS,
        payload: payload::COPIED,
        _pad: [0; 2],
    };
    output(probe::RECV, core::ptr::addr_of!(s.hdr).cast(), size_of::<DataEvent>() as u64, false);
}

/// Called when a thread exits: its call state goes with it (thread ids are reused).
#[inline(always)]
pub fn thread_exit(id: u64) {
    let _ = SSL_CALLS.remove(&id);
}

/// The connection `sk` closed: its session ends with it (the `SSL*` address will be
/// reused), unless the session moved to another connection meanwhile.
#[inline(always)]
pub fn end_session(sk: u64, st: &SockState) {
    let key = SessionKey { tgid: st.tls_tgid, _pad: 0, ssl: st.tls_ssl };
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TLS_SESSIONS.get(&key) }.is_some_and(|s| s.sk == sk) {
        let _ = TLS_SESSIONS.remove(&key);
    }
}
