//! ghostwire kernel programs.
//!
//! Only syscall, `sock:` and `sched:` tracepoints: this kernel family has no kprobes and
//! no fentry. How a syscall becomes an event:
//!
//! 1. `sys_enter_<rw>` stashes the arguments (fd, user buffer or iovec) per thread in
//!    `ACTIVE`, for traced processes only (never the agent itself, and only the pids,
//!    names given as filters).
//! 2. Inside the syscall the kernel's socket layer fires `sock:sock_recv_length` /
//!    `sock:sock_send_length` with the `struct sock *`: that is how a TCP socket is told
//!    apart from files, pipes and UNIX or UDP sockets — without walking kernel structs.
//! 3. `sys_exit_<rw>` sees the byte count; if the fd is a TCP socket whose connection
//!    the agent saw being accepted or connected, it copies a bounded prefix of the bytes
//!    into a per-CPU scratch buffer and writes header + bytes to the ring buffer.
//!
//! `sock:inet_sock_set_state` records each connection's 4-tuple when it reaches
//! ESTABLISHED and forgets it at TCP_CLOSE. `accept`/`accept4`/`connect` give each fd
//! its role, `close` and `sched:sched_process_exit` end per-connection and per-process
//! state. Every loss is counted in `COUNTERS`.
//!
//! A later version also keeps per-thread trace context here for `traceparent`
//! injection with sk_msg; `ACTIVE` is keyed per thread for that reason.
#![no_std]
#![no_main]

mod maps;
mod syscalls;

/// License must be GPL-compatible for the probe-read helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}
