"""OpenSSL SSL_write/SSL_read calls in a tight loop, without network I/O, for
`cargo xtask bench uprobe` (what a uprobe + uretprobe on those functions costs per call).

A TLS 1.3 client and server in one process, each an `ssl.SSLObject` over a pair of
`ssl.MemoryBIO`s (Python's `_ssl` calls libssl's `SSL_write_ex`/`SSL_read_ex`). After the
handshake, records only move between the BIOs in memory: no socket, no syscall in the
timed loops, so the time per call is libssl, the Python call around it and whatever is
attached to the libssl functions.

Prints `ready pid=PID version=TLSv1.3 cipher=NAME` once the handshake is done, then
reads commands on stdin, one a line:
  run CALLS   CALLS client writes of --bytes bytes each (in batches of at most BATCH),
              each batch's records moved to the server, then CALLS server reads of one
              record each; prints `result calls=CALLS bytes=B write_ns=W read_ns=R
              write_best=WB read_best=RB`: W and R the total nanoseconds spent in the
              write and read loops only, WB and RB the nanoseconds per call of the
              fastest batch (one decimal; on a shared machine the fastest batch is the
              one least disturbed by other processes).
  quit        exits 0 (so does the end of stdin).
Anything else, or a read that returns other bytes than were written, prints
`error: ...` and exits 1.

Usage: ssl_calls.py --cert CERT.pem --key KEY.pem [--bytes B]
"""
import argparse
import os
import ssl
import sys
import time

BATCH = 256
# A fresh client/server pair every this many calls (outside the timed loops): a session
# that never finds a TCP connection stops being copied by the kernel after 1,024
# records (kernel.tls_unbound_skipped), and the full agent must pay the copy on every
# call, as it does for real traffic.
SESSION_CALLS = 3 * BATCH
MAX_CALLS = 100_000_000
MAX_BYTES = 16384


def parse_args():
    ap = argparse.ArgumentParser(description="SSL_write/SSL_read in a loop over memory BIOs")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--bytes", type=int, default=64)
    args = ap.parse_args()
    if not 1 <= args.bytes <= MAX_BYTES:
        ap.error(f"--bytes must be 1..={MAX_BYTES}")
    return args


def fail(message):
    print(f"error: {message}", flush=True)
    sys.exit(1)


def pair(cert, key):
    """A connected (client, server) pair of SSLObjects with their BIOs, handshake done."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    else:
        fail("the in-memory TLS handshake did not finish in 20 exchanges")
    # TLS 1.3 servers send session tickets after the handshake: let the client read them
    # now, so that the first timed read does not.
    try:
        client.read(1)
    except ssl.SSLWantReadError:
        pass
    return client, server, c_out, s_in


def run(new_pair, calls, size):
    msg = bytes(b"abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(size))
    perf = time.perf_counter_ns
    write_ns = read_ns = 0
    write_best = read_best = float("inf")
    left = calls
    on_session = SESSION_CALLS
    while left > 0:
        if on_session >= SESSION_CALLS:
            client, server, c_out, s_in = new_pair()
            write, read = client.write, server.read
            on_session = 0
        n = min(BATCH, left, SESSION_CALLS - on_session)
        on_session += n
        left -= n
        t0 = perf()
        for _ in range(n):
            write(msg)
        t1 = perf()
        s_in.write(c_out.read())
        got = []
        t2 = perf()
        for _ in range(n):
            got.append(read(size))
        t3 = perf()
        write_ns += t1 - t0
        read_ns += t3 - t2
        write_best = min(write_best, (t1 - t0) / n)
        read_best = min(read_best, (t3 - t2) / n)
        if any(g != msg for g in got):
            fail("a read returned other bytes than the write sent")
        if s_in.pending:
            fail(f"{s_in.pending} bytes left unread after {n} reads")
    return write_ns, read_ns, write_best, read_best


def main():
    args = parse_args()
    client, _, _, _ = pair(args.cert, args.key)
    print(f"ready pid={os.getpid()} version={client.version()} cipher={client.cipher()[0]}", flush=True)
    del client
    for line in sys.stdin:
        words = line.split()
        if words == ["quit"]:
            return
        if len(words) != 2 or words[0] != "run" or not words[1].isdigit():
            fail(f"unknown command {line.strip()!r}: use `run CALLS` or `quit`")
        calls = int(words[1])
        if not 1 <= calls <= MAX_CALLS:
            fail(f"CALLS must be 1..={MAX_CALLS}")
        write_ns, read_ns, write_best, read_best = run(lambda: pair(args.cert, args.key), calls, args.bytes)
        print(
            f"result calls={calls} bytes={args.bytes} write_ns={write_ns} read_ns={read_ns}"
            f" write_best={write_best:.1f} read_best={read_best:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
