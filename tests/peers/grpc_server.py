"""Legacy (uninstrumented) gRPC server for the end-to-end tests and the HTTP/2 captures.

grpcio without generated code: one generic handler for the service `demo.Echo`, whose
messages are raw bytes (no serializer), over h2c on 127.0.0.1 only. No OpenTelemetry.

  /demo.Echo/Unary         echoes the request; b"notfound" aborts with NOT_FOUND and
                           b"internal" with INTERNAL
  /demo.Echo/ServerStream  the request is an ASCII count n: answers n messages
                           (b"message i of n"); at most 10000
  /demo.Echo/Chain         one plain HTTP/1.1 GET (urllib) to
                           http://127.0.0.1:UPSTREAM/<request as path>; answers its body
                           (UNAVAILABLE when the GET fails, the HTTP status in details)
  /demo.Echo/Slow          the request is an ASCII number of milliseconds (at most 30000)
                           to sleep before echoing it (for deadlines and resets)

Prints "ready PORT" on stdout once serving. SIGTERM stops it (with a short grace).
Usage: grpc_server.py --port P [--upstream-port U] [--service-name N] [--max-metadata-size B]
                      [--max-frame-size B]
  --service-name sets OTEL_SERVICE_NAME (re-executing itself, so that the process
  environment, which is what ghostwire reads, carries it).
"""
import argparse
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures

import grpc

MAX_STREAM = 10000
MAX_SLEEP_MS = 30000


def parse_args():
    ap = argparse.ArgumentParser(description="legacy grpcio demo.Echo server")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, default=0)
    ap.add_argument("--service-name", default="")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--max-metadata-size", type=int, default=0, help="bytes of request metadata allowed")
    ap.add_argument("--max-frame-size", type=int, default=0, help="SETTINGS_MAX_FRAME_SIZE to advertise")
    return ap.parse_args()


def ascii_int(request, context, limit):
    try:
        n = int(request.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "want an ASCII integer")
    if n < 0 or n > limit:
        context.abort(grpc.StatusCode.OUT_OF_RANGE, f"want 0..{limit}")
    return n


def make_handler(upstream_port):
    def unary(request, context):
        if request == b"notfound":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"internal":
            context.abort(grpc.StatusCode.INTERNAL, "it broke")
        return request

    def server_stream(request, context):
        n = ascii_int(request, context, MAX_STREAM)
        for i in range(n):
            yield b"message %d of %d" % (i + 1, n)

    def chain(request, context):
        if not upstream_port:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "started without --upstream-port")
        path = request.decode("utf-8", "replace").lstrip("/")
        url = f"http://127.0.0.1:{upstream_port}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream answered {e.code}")
        except OSError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream unreachable: {e}")

    def slow(request, context):
        ms = ascii_int(request, context, MAX_SLEEP_MS)
        deadline = time.monotonic() + ms / 1000.0
        # Wakes up early when the client went away (deadline, cancel).
        while time.monotonic() < deadline and context.is_active():
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        return request

    return grpc.method_handlers_generic_handler(
        "demo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Chain": grpc.unary_unary_rpc_method_handler(chain),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )


def main():
    args = parse_args()
    if args.service_name and os.environ.get("OTEL_SERVICE_NAME") != args.service_name:
        env = dict(os.environ, OTEL_SERVICE_NAME=args.service_name)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    options = [("grpc.max_metadata_size", args.max_metadata_size)] if args.max_metadata_size else []
    if args.max_frame_size:
        options.append(("grpc.http2.max_frame_size", args.max_frame_size))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=options)
    server.add_generic_rpc_handlers((make_handler(args.upstream_port),))
    bound = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if bound != args.port:
        sys.exit(f"grpc_server: could not bind 127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready {args.port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1).wait(3)


if __name__ == "__main__":
    main()
