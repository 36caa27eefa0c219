#!/usr/bin/env python3
"""Records real HTTP/2 (h2c) traffic between real peers on loopback, for ghostwire's
HTTP/2 golden tests.

How a capture is made
---------------------
As for the HTTP/1 captures (agent/tests/data/http1/capture.py): a real server (nginx 1.22
with `listen ... http2`, or the legacy grpcio server tests/peers/grpc_server.py) listens
on a free 127.0.0.1 port; this script puts a TCP relay in front of it and points a real
client (curl 7.88 --http2-prior-knowledge, or the legacy grpcio client
tests/peers/grpc_client.py) at the relay. The relay records every chunk that one of its
recv() calls returns, as-is and in the order it received them, before forwarding it
(a response is always recorded after the request that caused it). recv() returning b""
(or a reset) is recorded as EOF for that direction and passed on as a half-close. Only
the first connection is recorded; a capture fails if the client opened another one
(except h2_goaway, where the client must reconnect after the GOAWAY: that second
connection is relayed, not recorded).

Every capture is then checked by a small frame walker (below): the client preface, the
frame types per direction, stream ids, gRPC messages in DATA frames and, without
decoding strings, the HPACK representations of each header block (to count references
into the dynamic table). The checks for each capture are in VERIFY; a capture that does
not contain what its name says is not written. The frame counts found are written into
the file's third comment line.

Captures (``/opt/ghostwire-peers/venv/bin/python agent/tests/data/http2/capture.py
[NAME ...]``; no NAME = all; the venv has grpcio):

  nginx_h2c        nghttp (nghttp2 1.52 client) asks nginx h2c for five URLs at once on
                   one connection: /index.html /style.css /missing.html (404) /data.json
                   /index.html?v=2. nghttp first sends PRIORITY frames for idle streams
                   3..11 (its dependency tree), so the requests are streams 13..21, and
                   they are in flight together (responses interleave)
  nginx_h2c_curl   curl --http2-prior-knowledge GET /index.html from nginx h2c. (curl
                   7.88.1 here cannot reuse a prior-knowledge connection: a second URL
                   fails with "Error in the HTTP2 framing layer"; hence nghttp above)
  grpc_unary       grpcio client -> grpcio server on one channel: /demo.Echo/Unary with
                   b"hello" (OK), b"notfound" (NOT_FOUND), b"internal" (INTERNAL; both
                   errors are Trailers-Only responses)
  grpc_stream      /demo.Echo/ServerStream with b"5": five response messages, then
                   trailers with grpc-status 0
  grpc_many        50 Unary calls on one channel, each with the fixed metadata
                   x-tenant: ghostwire-demo (the same every call) and x-call-seq: <i>
                   (new every call): later header blocks refer to the dynamic table in
                   both directions
  h2_continuation  curl --http2-prior-knowledge makes a gRPC Unary call by hand
                   (POST /demo.Echo/Unary, content-type application/grpc, te: trailers,
                   one framed message b"big") with a 40000-character x-large header to
                   the grpcio server started with --max-frame-size 16384 and
                   --max-metadata-size 65536: the ~30 KB header block is sent as HEADERS +
                   CONTINUATION. (grpcio's own client ignored the advertised frame size
                   and sent one 20 KB HEADERS frame; nginx advertises 16 MiB frames.)
  h2_reset         grpcio: Unary OK; ServerStream of 1000 messages cancelled by the
                   client after the first (RST_STREAM CANCEL from the client); Slow
                   3000 ms with a 0.3 s deadline (DEADLINE_EXCEEDED: the client resets
                   the stream, the server resets it too); Unary OK again on the same
                   connection
  h2_goaway        nginx with keepalive_requests 3; h2load -c 1 -m 1 asks for the five
                   URLs of nginx_h2c one at a time: with the third request nginx sends
                   GOAWAY (last stream 5, NO_ERROR), answers it and closes; h2load gives
                   up on the last two (it may reconnect: such a connection is relayed,
                   not recorded)

File format (one file per capture, NAME.cap): the format of the HTTP/1 captures, only
the magic line differs. Comment lines starting with "#" come first (the magic
"# ghostwire-http2-capture v1", "# NAME: description", "# frames: ..."). Then records,
each:

    TAG SP LENGTH LF  <LENGTH raw bytes>  LF        (a chunk the relay received)
    TAG SP "EOF" LF                                (that sender closed / half-closed)

TAG is ">" for bytes from the client to the server and "<" for bytes from the server to
the client. The bytes are stored raw (the files are binary; see .gitattributes). The
client direction starts with the 24-byte preface "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n".

Requirements: nginx (/usr/sbin/nginx), curl with HTTP/2, grpcio (the peers venv).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "..", "tests", "peers"))
MAGIC = "# ghostwire-http2-capture v1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
TYPE_NAMES = {
    DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
    WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION",
}
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
STATIC_TABLE_LEN = 61


sys.path.insert(0, os.path.dirname(HERE))
from relay import free_port, wait_for_port  # noqa: E402  (../relay.py)


class Relay:
    """Relays connections to 127.0.0.1:upstream; records the first one."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.records = []
        self.extra_connections = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        first = True
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not first:
                self.extra_connections += 1
            threading.Thread(target=self._run, args=(client, first), daemon=True).start()
            first = False

    def _run(self, client, record):
        server = socket.create_connection(("127.0.0.1", self.upstream))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [
            threading.Thread(target=self._pump, args=(client, server, ">", record), daemon=True),
            threading.Thread(target=self._pump, args=(server, client, "<", record), daemon=True),
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        client.close()
        server.close()
        if record:
            self.done.set()

    def _pump(self, src, dst, tag, record):
        while True:
            try:
                data = src.recv(65536)
            except (ConnectionResetError, OSError):
                data = b""
            if record:
                with self.lock:
                    self.records.append((tag, data))
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def wait(self, timeout=30.0):
        if not self.done.wait(timeout):
            raise RuntimeError("relay did not finish (connection still open?)")
        self.listener.close()
        with self.lock:
            return list(self.records)


def write_capture(out_dir, name, description, records, summary):
    path = os.path.join(out_dir, f"{name}.cap")
    with open(path, "wb") as f:
        f.write(f"{MAGIC}\n# {name}: {description}\n# frames: {summary}\n".encode())
        for tag, data in records:
            if data:
                f.write(f"{tag} {len(data)}\n".encode())
                f.write(data)
                f.write(b"\n")
            else:
                f.write(f"{tag} EOF\n".encode())
    size = os.path.getsize(path)
    print(f"{name}: {len(records)} records, {size} bytes; {summary}")


# --- the frame walker ----------------------------------------------------------------

class Frame:
    def __init__(self, ftype, flags, stream, payload):
        self.type, self.flags, self.stream, self.payload = ftype, flags, stream, payload

    def name(self):
        return TYPE_NAMES.get(self.type, f"type{self.type}")


def walk(data, client):
    """The frames of one direction's concatenated bytes; fails on a partial frame."""
    pos = 0
    if client:
        if not data.startswith(PREFACE):
            raise AssertionError("client bytes do not start with the HTTP/2 preface")
        pos = len(PREFACE)
    frames = []
    while pos < len(data):
        if len(data) - pos < 9:
            raise AssertionError(f"truncated frame header at byte {pos}")
        length = int.from_bytes(data[pos:pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        end = pos + 9 + length
        if end > len(data):
            raise AssertionError(f"truncated {TYPE_NAMES.get(ftype, ftype)} frame at byte {pos}")
        frames.append(Frame(ftype, flags, stream, data[pos + 9:end]))
        pos = end
    return frames


def unpadded(frame):
    """The fragment of a HEADERS / DATA frame without padding and priority fields."""
    p = frame.payload
    start, pad = 0, 0
    if frame.flags & PADDED and frame.type in (DATA, HEADERS):
        pad = p[0]
        start = 1
    if frame.type == HEADERS and frame.flags & PRIORITY_FLAG:
        start += 5
    return p[start:len(p) - pad]


def header_blocks(frames):
    """[(stream, block bytes, END_STREAM of the HEADERS frame)] joining CONTINUATIONs."""
    blocks, cur = [], None
    for f in frames:
        if f.type == HEADERS:
            cur = [f.stream, bytearray(unpadded(f)), bool(f.flags & END_STREAM)]
        elif f.type == CONTINUATION:
            if cur is None or cur[0] != f.stream:
                raise AssertionError("CONTINUATION without HEADERS on its stream")
            cur[1] += f.payload
        else:
            continue
        if f.flags & END_HEADERS:
            blocks.append((cur[0], bytes(cur[1]), cur[2]))
            cur = None
    return blocks


def hpack_int(block, pos, prefix_bits):
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def hpack_skip_string(block, pos):
    length, pos = hpack_int(block, pos, 7)
    if pos + length > len(block):
        raise AssertionError("HPACK string runs past its block")
    return pos + length


def hpack_refs(block):
    """Indices (1-based, static and dynamic) a header block refers to, strings skipped."""
    refs, pos = [], 0
    while pos < len(block):
        b = block[pos]
        if b & 0x80:
            idx, pos = hpack_int(block, pos, 7)
            refs.append(idx)
            continue
        if b & 0xE0 == 0x20:  # dynamic table size update
            _, pos = hpack_int(block, pos, 5)
            continue
        idx, pos = hpack_int(block, pos, 6 if b & 0x40 else 4)
        if idx:
            refs.append(idx)
        else:
            pos = hpack_skip_string(block, pos)
        pos = hpack_skip_string(block, pos)
    return refs


def grpc_messages(frames, stream):
    """gRPC messages (5-byte prefix + body) in the DATA frames of one stream."""
    data = b"".join(unpadded(f) for f in frames if f.type == DATA and f.stream == stream)
    n, pos = 0, 0
    while pos + 5 <= len(data):
        pos += 5 + int.from_bytes(data[pos + 1:pos + 5], "big")
        n += 1
    if pos != len(data):
        raise AssertionError(f"stream {stream}: DATA is not whole gRPC messages")
    return n


class Walked:
    def __init__(self, records):
        up = b"".join(d for t, d in records if t == ">")
        down = b"".join(d for t, d in records if t == "<")
        self.client = walk(up, client=True)
        self.server = walk(down, client=False)
        self.client_blocks = header_blocks(self.client)
        self.server_blocks = header_blocks(self.server)

    def count(self, side, ftype):
        return sum(1 for f in side if f.type == ftype)

    def request_streams(self):
        return sorted({s for s, _, _ in self.client_blocks})

    def dynamic_refs(self, blocks):
        return sum(1 for _, b, _ in blocks for i in hpack_refs(b) if i > STATIC_TABLE_LEN)

    def summary(self):
        def side(frames):
            counts = {}
            for f in frames:
                counts[f.name()] = counts.get(f.name(), 0) + 1
            return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return (f"> {side(self.client)} | < {side(self.server)} | streams {self.request_streams()} | "
                f"dynamic-table refs > {self.dynamic_refs(self.client_blocks)} "
                f"< {self.dynamic_refs(self.server_blocks)}")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def status_of(block):
    """:status from a response block when it is a static-table index (nginx, grpcio)."""
    static_status = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
    refs = hpack_refs(block)
    return static_status.get(refs[0]) if refs else None


def verify_nginx(w, n_urls, n_404):
    check(len(w.request_streams()) == n_urls, f"want {n_urls} request streams, got {w.request_streams()}")
    statuses = [status_of(b) for _, b, _ in w.server_blocks]
    check(statuses.count(404) == n_404 and statuses.count(200) == n_urls - n_404, f"statuses {statuses}")


def verify_nginx_h2c(w):
    verify_nginx(w, len(NGINX_URLS), 1)
    check(w.count(w.client, PRIORITY) >= 1, "nghttp sent no PRIORITY frame")


def verify_grpc(w, calls, want_messages=None):
    streams = w.request_streams()
    check(len(streams) == calls, f"want {calls} request streams, got {len(streams)}")
    # Per stream: response headers (or Trailers-Only) and trailers end the stream.
    ends = {s for s, _, es in w.server_blocks if es}
    check(set(streams) <= ends, "a stream without trailers")
    if want_messages is not None:
        n = grpc_messages(w.server, streams[0])
        check(n == want_messages, f"want {want_messages} response messages, got {n}")


def verify_many(w):
    verify_grpc(w, 50)
    check(w.dynamic_refs(w.client_blocks) >= 49 * 3, "client header blocks barely use the dynamic table")


def verify_continuation(w):
    check(w.count(w.client, CONTINUATION) >= 1, "no CONTINUATION frame from the client")
    big = [b for _, b, _ in w.client_blocks if len(b) > 16384]
    check(len(big) == 1, "no header block larger than one frame")
    verify_grpc(w, 1)
    check(grpc_messages(w.server, 1) == 1, "want the echoed message")


def verify_reset(w):
    check(w.count(w.client, RST_STREAM) >= 2, "want RST_STREAM from the client (cancel and deadline)")
    check(len(w.request_streams()) == 4, "want four calls")


def verify_goaway(w):
    check(w.count(w.server, GOAWAY) == 1, "no GOAWAY from nginx")
    verify_nginx(w, 3, 1)


# --- servers -------------------------------------------------------------------------

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    types {{ text/html html; text/css css; application/json json; }}
    default_type application/octet-stream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 10s;
    large_client_header_buffers 4 64k;
    {extra}
    server {{
        listen 127.0.0.1:{port} http2;
        root {d}/www;
    }}
}}
"""

INDEX_HTML = b"""<!DOCTYPE html>
<html><head><title>ghostwire</title><link rel="stylesheet" href="style.css"></head>
<body><h1>ghostwire HTTP/2 capture fixture</h1><p>Static page served by nginx h2c.</p></body></html>
"""
STYLE_CSS = b"body { font-family: sans-serif; margin: 2em; }\nh1 { color: #333; }\n"
DATA_JSON = b'{"service": "ghostwire", "protocol": "h2c", "items": [1, 2, 3]}\n'


class Nginx:
    def __init__(self, d, extra=""):
        self.port = free_port()
        www = os.path.join(d, "www")
        os.makedirs(www, exist_ok=True)
        for name, body in (("index.html", INDEX_HTML), ("style.css", STYLE_CSS), ("data.json", DATA_JSON)):
            with open(os.path.join(www, name), "wb") as f:
                f.write(body)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(d=d, port=self.port, extra=extra))
        self.proc = subprocess.Popen(["/usr/sbin/nginx", "-p", d, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Grpc:
    def __init__(self, d, *extra):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(PEERS, "grpc_server.py"), "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


# --- clients -------------------------------------------------------------------------

def nghttp(port, paths):
    """nghttp (nghttp2 1.52) sends every request at once on one h2c connection, with
    PRIORITY frames for its dependency tree; -n discards the bodies."""
    args = ["nghttp", "-n", "-t", "20"]
    args.extend(f"http://127.0.0.1:{port}{p}" for p in paths)
    subprocess.run(args, check=True)


def h2load(port, paths):
    """h2load: one client, one request at a time, each path once, in order; its report."""
    args = ["h2load", "-c", "1", "-m", "1", "-n", str(len(paths))]
    args.extend(f"http://127.0.0.1:{port}{p}" for p in paths)
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def curl_h2(port, paths, *extra):
    args = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "20"]
    args.extend(extra)
    for p in paths:
        args.extend([f"http://127.0.0.1:{port}{p}", "-o", "/dev/null"])
    subprocess.run(args, check=True)


def grpc_client(port, *commands):
    out = subprocess.run([sys.executable, os.path.join(PEERS, "grpc_client.py"), "--port", str(port), *commands],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return out.splitlines()


def expect_lines(lines, want):
    if lines != want:
        raise AssertionError(f"client answered {lines}, want {want}")


NGINX_URLS = ["/index.html", "/style.css", "/missing.html", "/data.json", "/index.html?v=2"]
BIG_VALUE = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(40000))


def run_unary(p):
    expect_lines(grpc_client(p, "unary hello", "unary notfound", "unary internal"),
                 ["ok OK bytes=5", "ok NOT_FOUND bytes=0", "ok INTERNAL bytes=0", "ok OK bye"])


def run_stream(p):
    expect_lines(grpc_client(p, "stream 5"), ["ok OK messages=5", "ok OK bye"])


def run_many(p):
    expect_lines(grpc_client(p, "header x-tenant ghostwire-demo", "many 50"),
                 ["ok OK", "ok OK calls=50 failed=0", "ok OK bye"])


def run_continuation(p):
    """curl (nghttp2) splits a header block at the peer's SETTINGS_MAX_FRAME_SIZE; grpcio's
    own client does not (it sent one 20 KB HEADERS frame to a server that advertised
    16384), and nginx advertises 16 MiB. So: curl, a gRPC Unary call by hand, against the
    grpcio server started with --max-frame-size 16384."""
    d = tempfile.mkdtemp(prefix="gw-h2-body-")
    try:
        body = os.path.join(d, "body")
        with open(body, "wb") as f:
            f.write(b"\x00\x00\x00\x00\x03big")
        out = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "20", "-o", "/dev/null",
             "-w", "%{http_code}", "-H", "content-type: application/grpc", "-H", "te: trailers",
             "-H", f"x-large: {BIG_VALUE}", "--data-binary", f"@{body}",
             f"http://127.0.0.1:{p}/demo.Echo/Unary"],
            check=True, capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if out != "200":
        raise AssertionError(f"curl gRPC call answered HTTP {out}")


def run_reset(p):
    expect_lines(grpc_client(p, "unary before", "cancel 1000", "slow 3000 0.3", "unary after"),
                 ["ok OK bytes=6", "ok CANCELLED messages=1", "ok DEADLINE_EXCEEDED bytes=0", "ok OK bytes=5",
                  "ok OK bye"])


def captures():
    """name -> (server, description, client(relay_port), verify(walked), extra connections)."""
    return {
        "nginx_h2c": (lambda d: Nginx(d), "nghttp, 5 URLs (one 404) at once on one connection to nginx h2c",
                      lambda p: nghttp(p, NGINX_URLS), verify_nginx_h2c, 0),
        "nginx_h2c_curl": (lambda d: Nginx(d), "curl --http2-prior-knowledge GET /index.html from nginx h2c",
                           lambda p: curl_h2(p, ["/index.html"]), lambda w: verify_nginx(w, 1, 0), 0),
        "grpc_unary": (Grpc, "grpcio Unary OK, NOT_FOUND, INTERNAL on one channel",
                       run_unary, lambda w: verify_grpc(w, 3), 0),
        "grpc_stream": (Grpc, "grpcio ServerStream of 5 messages",
                        run_stream, lambda w: verify_grpc(w, 1, want_messages=5), 0),
        "grpc_many": (Grpc, "50 grpcio Unary calls on one channel, fixed and per-call metadata",
                      run_many, verify_many, 0),
        "h2_continuation": (lambda d: Grpc(d, "--max-metadata-size", "65536", "--max-frame-size", "16384"),
                            "curl gRPC Unary with a 40000-byte header to grpcio (max frame 16384): HEADERS + CONTINUATION",
                            run_continuation, verify_continuation, 0),
        "h2_reset": (Grpc, "grpcio: OK, cancelled server stream, deadline exceeded, OK (RST_STREAM from the client)",
                     run_reset, verify_reset, 0),
        "h2_goaway": (lambda d: Nginx(d, "keepalive_requests 3;"),
                      "nginx keepalive_requests 3, h2load asks for 5 URLs one at a time: GOAWAY after the third",
                      lambda p: h2load(p, NGINX_URLS), verify_goaway, (0, 1)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="captures to make (default: all)")
    ap.add_argument("--out", default=HERE, help="output directory")
    args = ap.parse_args()
    table = captures()
    names = args.names or list(table)
    for name in names:
        if name not in table:
            sys.exit(f"unknown capture {name}; known: {', '.join(table)}")
    for name in names:
        server_kind, description, client, verify, extra = table[name]
        d = tempfile.mkdtemp(prefix=f"gw-h2-{name}-")
        server = server_kind(d)
        try:
            relay = Relay(server.port)
            client(relay.port)
            records = relay.wait()
        finally:
            server.stop()
            shutil.rmtree(d, ignore_errors=True)
        allowed = extra if isinstance(extra, tuple) else (extra,)
        if relay.extra_connections not in allowed:
            sys.exit(f"{name}: the client opened {relay.extra_connections} more connection(s), want {allowed}")
        walked = Walked(records)
        try:
            verify(walked)
        except AssertionError as e:
            sys.exit(f"{name}: capture does not show what it should: {e}\n  {walked.summary()}")
        write_capture(args.out, name, description, records, walked.summary())


if __name__ == "__main__":
    main()
