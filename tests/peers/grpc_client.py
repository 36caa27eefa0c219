"""Legacy (uninstrumented) gRPC client for the end-to-end tests and the HTTP/2 captures.

ONE grpcio channel (one HTTP/2 connection) to 127.0.0.1:PORT, service `demo.Echo`
(tests/peers/grpc_server.py), raw-bytes messages, no OpenTelemetry. It is driven by
commands, one per line on stdin (or, for one-shot use, given as argv: each argument is
one command), so a test can open the channel and make a first call before the agent
starts, and more calls afterwards on the same connection.

Commands (answered with exactly one line each, flushed):
  unary PAYLOAD      /demo.Echo/Unary        -> "ok STATUS bytes=N"
  stream N           /demo.Echo/ServerStream -> "ok STATUS messages=N"
  chain PATH         /demo.Echo/Chain        -> "ok STATUS bytes=N"
  slow MS [TIMEOUT]  /demo.Echo/Slow, with a deadline of TIMEOUT seconds (default: the
                     --timeout) -> "ok STATUS bytes=N"
  cancel N           /demo.Echo/ServerStream of N messages, cancelled after the first
                     one (the client resets the stream) -> "ok CANCELLED messages=1"
  many N             N Unary calls in a row, each with the metadata
                     x-call-seq: <i> (new every call) on top of the fixed metadata
                     -> "ok STATUS calls=N failed=K" (STATUS: the first non-OK, else OK)
  chainmany N CONC PREFIX
                     N /demo.Echo/Chain calls with the payloads PREFIX/<i> (i = 0..N-1,
                     so the server GETs http://127.0.0.1:UPSTREAM/PREFIX/<i>), CONC in
                     flight at a time from a thread pool, all on the ONE channel (so
                     they are concurrent streams of one HTTP/2 connection)
                     -> "ok STATUS calls=N failed=K" (STATUS: the first non-OK in call
                     order, else OK); N <= 100000, 1 <= CONC <= 256
  meta TRACEPARENT   the following calls send `traceparent: TRACEPARENT` -> "ok OK"
  header NAME [VAL]  the following calls send NAME: VAL (no VAL: stop sending NAME)
                     -> "ok OK"
  quit               closes the channel -> "ok OK bye", then exits
STATUS is the gRPC status name (OK, NOT_FOUND, INTERNAL, ...). A command that cannot be
parsed is answered "err MESSAGE". The same metadata set is sent with every call until
changed, so HPACK's dynamic table is used from the second call on.

Usage: grpc_client.py --port P [--timeout SECONDS] [COMMAND ...]
"""
import argparse
import sys
from concurrent import futures

import grpc

MAX_MANY = 100000
MAX_CONC = 256


class Client:
    def __init__(self, port, timeout):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)],
        )
        self.metadata = {}
        ident = lambda b: b  # noqa: E731 (raw bytes both ways)
        self.unary_rpc = self.channel.unary_unary("/demo.Echo/Unary", ident, ident)
        self.stream_rpc = self.channel.unary_stream("/demo.Echo/ServerStream", ident, ident)
        self.chain_rpc = self.channel.unary_unary("/demo.Echo/Chain", ident, ident)
        self.slow_rpc = self.channel.unary_unary("/demo.Echo/Slow", ident, ident)

    def md(self, extra=()):
        return tuple(self.metadata.items()) + tuple(extra)

    def call(self, rpc, payload, extra=(), timeout=None):
        """(status name, response bytes or b"")."""
        try:
            resp = rpc(payload, timeout=timeout or self.timeout, metadata=self.md(extra))
            return "OK", resp
        except grpc.RpcError as e:
            return e.code().name, b""

    def run(self, line):
        words = line.split()
        if not words:
            return "err empty command"
        cmd, args = words[0], words[1:]
        if cmd == "unary" and len(args) == 1:
            status, resp = self.call(self.unary_rpc, args[0].encode())
            return f"ok {status} bytes={len(resp)}"
        if cmd == "chain" and len(args) == 1:
            status, resp = self.call(self.chain_rpc, args[0].encode())
            return f"ok {status} bytes={len(resp)}"
        if cmd == "slow" and len(args) in (1, 2) and args[0].isdigit():
            timeout = float(args[1]) if len(args) == 2 else None
            status, resp = self.call(self.slow_rpc, args[0].encode(), timeout=timeout)
            return f"ok {status} bytes={len(resp)}"
        if cmd == "stream" and len(args) == 1 and args[0].isdigit():
            n = 0
            try:
                for _ in self.stream_rpc(args[0].encode(), timeout=self.timeout, metadata=self.md()):
                    n += 1
                status = "OK"
            except grpc.RpcError as e:
                status = e.code().name
            return f"ok {status} messages={n}"
        if cmd == "cancel" and len(args) == 1 and args[0].isdigit():
            call = self.stream_rpc(args[0].encode(), timeout=self.timeout, metadata=self.md())
            n = 0
            try:
                next(call)
                n = 1
                call.cancel()
                for _ in call:
                    n += 1
                status = "OK"
            except grpc.RpcError as e:
                status = e.code().name
            except StopIteration:
                status = "OK"
            return f"ok {status} messages={n}"
        if cmd == "many" and len(args) == 1 and args[0].isdigit() and int(args[0]) <= MAX_MANY:
            n, failed, first = int(args[0]), 0, "OK"
            for i in range(n):
                status, _ = self.call(self.unary_rpc, b"call %d" % i, extra=(("x-call-seq", str(i)),))
                if status != "OK":
                    failed += 1
                    first = status if first == "OK" else first
            return f"ok {first} calls={n} failed={failed}"
        if (
            cmd == "chainmany"
            and len(args) == 3
            and args[0].isdigit()
            and int(args[0]) <= MAX_MANY
            and args[1].isdigit()
            and 1 <= int(args[1]) <= MAX_CONC
        ):
            n, conc, prefix = int(args[0]), int(args[1]), args[2]
            with futures.ThreadPoolExecutor(max_workers=conc) as pool:
                statuses = list(
                    pool.map(lambda i: self.call(self.chain_rpc, f"{prefix}/{i}".encode())[0], range(n))
                )
            failed = sum(1 for s in statuses if s != "OK")
            first = next((s for s in statuses if s != "OK"), "OK")
            return f"ok {first} calls={n} failed={failed}"
        if cmd == "meta" and len(args) == 1:
            self.metadata["traceparent"] = args[0]
            return "ok OK"
        if cmd == "header" and len(args) in (1, 2):
            name = args[0].lower()
            if len(args) == 2:
                self.metadata[name] = args[1]
            else:
                self.metadata.pop(name, None)
            return "ok OK"
        return f"err cannot parse {line!r}"


def main():
    ap = argparse.ArgumentParser(description="legacy grpcio demo.Echo client")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("commands", nargs="*", help="one-shot commands (default: read stdin)")
    args = ap.parse_args()
    client = Client(args.port, args.timeout)
    source = args.commands if args.commands else sys.stdin
    for line in source:
        line = line.strip()
        if line == "quit":
            break
        print(client.run(line), flush=True)
    client.channel.close()
    print("ok OK bye", flush=True)


if __name__ == "__main__":
    main()
