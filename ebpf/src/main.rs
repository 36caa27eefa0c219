//! ghostwire kernel programs.
//!
//! No kprobes and no fentry on the kernels this is built for, and syscall tracepoints
//! slow down every syscall of every process, so capture hangs off the socket layer:
//!
//! * `sock_send_length` / `sock_recv_length` (raw tracepoints): every socket transfer,
//!   after the bytes moved. TCP connections are recognised from `struct sock`; the user
//!   buffer comes from the running syscall's saved registers ([`sock`]).
//! * `inet_sock_set_state`: connections established (with their role), half-closed,
//!   closed; sockets that start or stop listening.
//! * `sched:sched_process_exit`: per-process state in the agent ends.
//! * uprobes on OpenSSL's `SSL_read*`/`SSL_write*` ([`tls`]), attached by the agent per
//!   library file: TLS plaintext, and which connection each session runs over;
//!   `sched:sched_process_exec` tells the agent to look for new libraries.
//!
//! Every loss is counted in `COUNTERS`, and every record of a connection carries its
//! byte offset, so the agent knows exactly what it did not see. [`floor`] holds empty
//! programs for measuring what a hook costs by itself.
#![no_std]
#![no_main]

mod floor;
mod maps;
mod sock;
mod tls;

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
