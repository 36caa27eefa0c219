#!/usr/bin/env python3
"""Records the golden Redis capture: one pipelined batch written in one send, and the
server's replies, as the exact bytes on the wire (pipeline.req, pipeline.resp).

Usage: capture.py  (needs redis-server on PATH; starts one on a free 127.0.0.1 port,
without persistence, and stops it afterwards)."""
import os, socket, subprocess, time

HERE = os.path.dirname(os.path.abspath(__file__))

def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

BATCH = [
    ("SET", "user:1", "secret-value-1"),
    ("GET", "user:1"),
    ("INCR", "counter"),
    ("MULTI",),
    ("SET", "a", "1"),
    ("INCR", "a"),
    ("EXEC",),
    ("LPUSH", "user:1", "x"),
    ("LPUSH", "list", "p", "q", "r"),
    ("LRANGE", "list", "0", "-1"),
    ("SELECT", "2"),
    ("HELLO", "3"),
    ("HSET", "h", "f1", "v1", "f2", "v2"),
    ("HGETALL", "h"),
    ("GET", "missing"),
]

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def main():
    port = free_port()
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                c = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        req = b"".join(cmd(*a) for a in BATCH)
        c.sendall(req)
        c.settimeout(0.5)
        resp = b""
        while True:
            try:
                chunk = c.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            resp += chunk
        c.close()
        with open(os.path.join(HERE, "pipeline.req"), "wb") as f:
            f.write(req)
        with open(os.path.join(HERE, "pipeline.resp"), "wb") as f:
            f.write(resp)
        print(len(req), "request bytes,", len(resp), "reply bytes")
    finally:
        srv.terminate()
        srv.wait()

main()
