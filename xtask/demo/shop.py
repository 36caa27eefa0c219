#!/usr/bin/env python3
"""The `cargo xtask demo` shop: six legacy HTTP services and a load generator.

No OpenTelemetry SDK anywhere. Like services behind an instrumented edge, each one
passes the `traceparent` header it received on to the calls it makes (header-forwarding
middleware), except `cart`, which drops it: the hop that breaks the context.

    python3 shop.py ROLE --port P [--upstream NAME=PORT ...]
    python3 shop.py load --port GATEWAY_PORT --seconds S --rate R [--requests N] [--ids FILE]

Roles (ghostwire names each process by its OTEL_SERVICE_NAME, which the caller sets):

    gateway      GET /checkout: auth GET /verify, cart GET /cart, payment POST /charge
    auth         GET /verify, ~2 ms
    cart         GET /cart: inventory GET /stock/<item>, without the traceparent
    inventory    GET /stock/<item>, 60-120 ms: the slow hop
    payment      POST /charge: fraud-check POST /score
    fraud-check  POST /score, ~5 ms, fails (503) about 10 % of the time, or every K-th
                 call with --fail-every K

A service answers 502 when a call it made failed. Standard library only.
"""

import argparse
import random
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT_S = 5
ITEMS = ["espresso", "grinder", "kettle", "filter", "scale", "mug"]


class Upstream(Exception):
    """A call to another service failed (status >= 400, refused, timed out)."""


def call(port, method, path, traceparent, body=None):
    """One outbound request on a new connection; returns the status or raises Upstream."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("Connection", "close")
    if traceparent:
        req.add_header("traceparent", traceparent)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        # Read the error body too, as HTTP clients do, and close the connection now.
        with e:
            e.read()
        raise Upstream(f"{method} {path}: {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        raise Upstream(f"{method} {path}: {e}") from e


class FailEvery:
    """Decides fraud-check's failures: every K-th call, or 10 % at random (K = 0)."""

    def __init__(self, k):
        self.k = k
        self.n = 0
        self.lock = threading.Lock()

    def fail(self):
        if self.k <= 0:
            return random.random() < 0.10
        with self.lock:
            self.n += 1
            return self.n % self.k == 0


def make_handler(role, upstreams, failer):
    def up(name):
        return upstreams[name]

    def gateway(h, tp):
        call(up("auth"), "GET", "/verify", tp)
        call(up("cart"), "GET", "/cart", tp)
        call(up("payment"), "POST", "/charge", tp, body=b'{"amount": 42}')
        return 200

    def auth(h, tp):
        time.sleep(0.002)
        return 200

    def cart(h, tp):
        # The legacy cart client builds its own request and forwards no headers.
        call(up("inventory"), "GET", f"/stock/{random.choice(ITEMS)}", None)
        return 200

    def inventory(h, tp):
        time.sleep(random.uniform(0.060, 0.120))
        return 200

    def payment(h, tp):
        call(up("fraud-check"), "POST", "/score", tp, body=b'{"amount": 42}')
        return 200

    def fraud_check(h, tp):
        time.sleep(0.005)
        return 503 if failer.fail() else 200

    routes = {
        "gateway": ("GET", "/checkout", gateway),
        "auth": ("GET", "/verify", auth),
        "cart": ("GET", "/cart", cart),
        "inventory": ("GET", "/stock/", inventory),
        "payment": ("POST", "/charge", payment),
        "fraud-check": ("POST", "/score", fraud_check),
    }
    want_method, prefix, work = routes[role]

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            if method != want_method or not (path == prefix or (prefix.endswith("/") and path.startswith(prefix))):
                status = 404
            else:
                try:
                    status = work(self, self.headers.get("traceparent"))
                except Upstream:
                    status = 502
            body = f'{{"service": "{role}", "status": {status}}}\n'.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.handle_one("GET")

        def do_POST(self):
            self.handle_one("POST")

        def log_message(self, format, *args):
            pass

    return Handler


def serve(role, port, upstreams, fail_every):
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(role, upstreams, FailEvery(fail_every)))
    server.daemon_threads = True
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()


def load(port, seconds, rate, requests, ids_path):
    """One request at a time to gateway's /checkout, paced at `rate` per second."""
    ids = open(ids_path, "a", encoding="ascii") if ids_path else None
    sent = ok = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds and (requests is None or sent < requests):
            due = start + sent / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
                if time.monotonic() - start >= seconds:
                    break
            trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
            if ids:
                ids.write(f"{trace_id} {parent_id}\n")
                ids.flush()
            sent += 1
            try:
                status = call(port, "GET", "/checkout", f"00-{trace_id}-{parent_id}-01")
                ok += status == 200
            except Upstream:
                pass
    except SystemExit:
        pass
    finally:
        if ids:
            ids.close()
        print(f"load: {sent} requests, {ok} ok, {sent - ok} failed", file=sys.stderr, flush=True)


def upstream(spec):
    name, sep, port = spec.partition("=")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want NAME=PORT, got {spec!r}")
    return name, int(port)


def main():
    roles = ["gateway", "auth", "cart", "inventory", "payment", "fraud-check", "load"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=roles)
    p.add_argument("--port", type=int, required=True, help="port to listen on (load: gateway's port)")
    p.add_argument("--upstream", type=upstream, action="append", default=[], metavar="NAME=PORT")
    p.add_argument("--fail-every", type=int, default=0, metavar="K",
                   help="fraud-check: fail every K-th call instead of 10 %% at random")
    p.add_argument("--seconds", type=float, default=30, help="load: stop after this long")
    p.add_argument("--rate", type=float, default=5, help="load: requests per second")
    p.add_argument("--requests", type=int, help="load: stop after this many requests")
    p.add_argument("--ids", help="load: append '<trace id> <parent span id>' per request sent")
    args = p.parse_args()

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if args.role == "load":
        if args.rate <= 0:
            p.error("--rate must be positive")
        load(args.port, args.seconds, args.rate, args.requests, args.ids)
        return
    needs = {"gateway": ["auth", "cart", "payment"], "cart": ["inventory"], "payment": ["fraud-check"]}
    upstreams = dict(args.upstream)
    missing = [n for n in needs.get(args.role, []) if n not in upstreams]
    if missing:
        p.error(f"{args.role} needs --upstream for {', '.join(missing)}")
    serve(args.role, args.port, upstreams, args.fail_every)


if __name__ == "__main__":
    main()
