#!/usr/bin/env python3
"""Records real HTTP/1.x traffic between real peers on loopback, for ghostwire's golden
tests (agent/tests/http1_golden.rs).

How a capture is made
---------------------
A real server (nginx, Python's http.server, a Go net/http server) listens on a free
127.0.0.1 port. This script puts a TCP relay in front of it and points a real client
(curl, or a raw Python socket for what curl cannot send) at the relay. The relay accepts
exactly one connection, opens one to the server, and forwards both ways; every chunk that
one of its recv() calls returns is recorded as-is, in the order the relay received them,
before being forwarded (so a response is always recorded after the request that caused
it). recv() returning b"" (or a reset) is recorded as EOF for that direction and passed
on as a half-close. Chunk boundaries are therefore those of the relay's reads, which is
what a traced process's read() calls see as well.

Captures (``python3 agent/tests/data/http1/capture.py [NAME ...]``; no NAME = all):

  nginx_static          curl --http1.1 GET /index.html from nginx 1.22 (200, Content-Length)
  nginx_404             curl GET /missing.html from nginx (404 with an HTML body)
  nginx_keepalive       curl /index.html /style.css: two exchanges on one connection
  nginx_large           curl GET /large.bin (100000 bytes: large reads, gap tests)
  nginx_head            curl -I (HEAD; Content-Length but no body)
  nginx_304             curl with If-Modified-Since in the future (304 Not Modified)
  nginx_pipelined       raw socket: two GETs (the second with Connection: close) sent in
                        ONE write; nginx answers both, then closes
  nginx_put_expect      curl -T (PUT, 4 KiB) with "Expect: 100-continue" to nginx's DAV
                        module: interim "100 Continue", body, then 201 Created
  nginx_garbage         raw socket: 200 pseudo-random bytes (seed 1234) + CRLFCRLF;
                        nginx answers 400 Bad Request and closes
  python_http10_static  curl GET from `python3 -m http.server` (HTTP/1.0 response with
                        Content-Length; the server closes after it)
  python_http10_eof     curl GET from an http.server BaseHTTPRequestHandler that sends an
                        HTTP/1.0 response with NO Content-Length in three writes: the
                        body ends when the server closes the connection
  go_chunked            curl GET /stream from Go 1.19 net/http: four writes each followed
                        by Flush => chunked body, plus a trailer (X-Checksum)
  go_content_length     curl GET /fixed from Go (explicit Content-Length)
  go_keepalive          curl /fixed /stream /nocontent /fixed on one connection (Go)
  go_expect_100         curl POST of 4096 bytes with -H "Expect: 100-continue" to Go
                        (Go sends "100 Continue" when the handler reads the body)
  go_chunked_request    curl POST with -H "Transfer-Encoding: chunked" (chunked request
                        body, 3000 bytes) to Go
  go_upgrade            raw socket: GET /upgrade with "Upgrade: echo"; the Go handler
                        hijacks the connection, answers 101 Switching Protocols and
                        echoes raw non-HTTP bytes afterwards

File format (one file per capture, NAME.cap)
-------------------------------------------
Comment lines starting with "#" come first. Then records, each:

    TAG SP LENGTH LF  <LENGTH raw bytes>  LF        (a chunk the relay received)
    TAG SP "EOF" LF                                (that sender closed / half-closed)

TAG is ">" for bytes from the client to the server and "<" for bytes from the server to
the client. The bytes are stored raw (the files are binary; see .gitattributes).

Requirements: nginx (/usr/sbin/nginx), curl, go (works offline: GOPROXY=off), python3.
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = "# ghostwire-http1-capture v1"


sys.path.insert(0, os.path.dirname(HERE))
from relay import Relay, free_port, wait_for_port  # noqa: E402  (the shared relay, ../relay.py)


def write_capture(out_dir, name, description, records):
    path = os.path.join(out_dir, f"{name}.cap")
    with open(path, "wb") as f:
        f.write(f"{MAGIC}\n# {name}: {description}\n".encode())
        for tag, data in records:
            if data:
                f.write(f"{tag} {len(data)}\n".encode())
                f.write(data)
                f.write(b"\n")
            else:
                f.write(f"{tag} EOF\n".encode())
    summary = " ".join(f"{t}{len(d) if d else 'EOF'}" for t, d in records)
    print(f"{name}: {len(records)} records: {summary}")


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
    types {{ text/html html; text/css css; application/octet-stream bin; }}
    default_type application/octet-stream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    if_modified_since before;
    keepalive_timeout 10s;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location /dav/ {{
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""

INDEX_HTML = b"""<!DOCTYPE html>
<html><head><title>ghostwire</title><link rel="stylesheet" href="style.css"></head>
<body><h1>ghostwire capture fixture</h1><p>Static page served by nginx.</p></body></html>
"""
STYLE_CSS = b"body { font-family: sans-serif; margin: 2em; }\nh1 { color: #333; }\n"


def make_www(d):
    www = os.path.join(d, "www")
    os.makedirs(os.path.join(www, "dav"), exist_ok=True)
    with open(os.path.join(www, "index.html"), "wb") as f:
        f.write(INDEX_HTML)
    with open(os.path.join(www, "style.css"), "wb") as f:
        f.write(STYLE_CSS)
    with open(os.path.join(www, "large.bin"), "wb") as f:
        f.write(bytes((i * 7 + i // 251) & 0xFF for i in range(100000)))
    return www


class Nginx:
    def __init__(self, d):
        self.port = free_port()
        make_www(d)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(d=d, port=self.port))
        self.proc = subprocess.Popen(
            ["/usr/sbin/nginx", "-p", d, "-c", conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


PY_EOF_SERVER = r'''
import sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.flush()
        for i in range(3):
            time.sleep(0.05)
            self.wfile.write(b"part %d of a body delimited by connection close\n" % i)
            self.wfile.flush()
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


class Python:
    def __init__(self, d, eof_delimited):
        self.port = free_port()
        if eof_delimited:
            script = os.path.join(d, "eof_server.py")
            with open(script, "w") as f:
                f.write(PY_EOF_SERVER)
            cmd = [sys.executable, script, str(self.port)]
        else:
            www = make_www(d)
            cmd = [sys.executable, "-m", "http.server", str(self.port),
                   "--bind", "127.0.0.1", "--directory", www]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


GO_SERVER = r'''
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/fixed", func(w http.ResponseWriter, r *http.Request) {
		body := strings.Repeat("fixed-length body line\n", 20)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		io.WriteString(w, body)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Trailer", "X-Checksum")
		f := w.(http.Flusher)
		for i := 0; i < 4; i++ {
			fmt.Fprintf(w, "event %d: %s\n", i, strings.Repeat("x", 10*i))
			f.Flush()
			time.Sleep(20 * time.Millisecond)
		}
		w.Header().Set("X-Checksum", "abc123")
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "received %d bytes\n", n)
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				conn.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	})
	http.Serve(ln, mux)
}
'''


class Go:
    def __init__(self, d):
        self.port = free_port()
        src = os.path.join(d, "gosrv")
        os.makedirs(src, exist_ok=True)
        with open(os.path.join(src, "main.go"), "w") as f:
            f.write(GO_SERVER)
        with open(os.path.join(src, "go.mod"), "w") as f:
            f.write("module gosrv\n\ngo 1.19\n")
        env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", CGO_ENABLED="0")
        binary = os.path.join(d, "gosrv.bin")
        subprocess.run(["go", "build", "-o", binary, "."], cwd=src, env=env, check=True)
        self.proc = subprocess.Popen([binary, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


# --- clients -------------------------------------------------------------------------

def curl(port, paths, *extra):
    args = ["curl", "-sS", "--http1.1", "--max-time", "20"]
    args.extend(extra)
    for p in paths:
        args.extend([f"http://127.0.0.1:{port}{p}", "-o", "/dev/null"])
    subprocess.run(args, check=True)


def read_all(sock):
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def raw_pipelined(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nUser-Agent: pipeline/1\r\n\r\n"
            b"GET /missing.html HTTP/1.1\r\nHost: localhost\r\nUser-Agent: pipeline/1\r\n"
            b"Connection: close\r\n\r\n"
        )
        read_all(s)


def raw_garbage(port):
    rng = random.Random(1234)
    garbage = bytes(rng.randrange(256) for _ in range(200)) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(garbage)
        read_all(s)


def raw_upgrade(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: localhost\r\nUpgrade: echo\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("no 101")
            got += chunk
        payload = b"\x00\x01 raw bytes after the upgrade \xff\xfe GET / HTTP/1.1\r\n\r\n"
        s.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                break
            echoed += chunk
        s.shutdown(socket.SHUT_WR)
        read_all(s)


def body_file(d, name, size):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(bytes(ord("a") + (i % 26) for i in range(size)))
    return path


# --- the captures --------------------------------------------------------------------

def captures():
    """name -> (server kind, description, client(relay_port, tmpdir))."""
    return {
        "nginx_static": ("nginx", "curl GET /index.html from nginx",
                         lambda p, d: curl(p, ["/index.html"])),
        "nginx_404": ("nginx", "curl GET /missing.html from nginx (404)",
                      lambda p, d: curl(p, ["/missing.html"])),
        "nginx_keepalive": ("nginx", "curl /index.html /style.css on one connection",
                            lambda p, d: curl(p, ["/index.html", "/style.css"])),
        "nginx_large": ("nginx", "curl GET /large.bin (100000 bytes)",
                        lambda p, d: curl(p, ["/large.bin"])),
        "nginx_head": ("nginx", "curl -I /index.html (HEAD)",
                       lambda p, d: curl(p, ["/index.html"], "-I")),
        "nginx_304": ("nginx", "curl with If-Modified-Since in the future (304)",
                      lambda p, d: curl(p, ["/index.html"], "-H",
                                        "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT")),
        "nginx_pipelined": ("nginx", "raw socket: two GETs in one write, nginx answers both",
                            lambda p, d: raw_pipelined(p)),
        "nginx_put_expect": ("nginx", "curl -T 4 KiB PUT with Expect: 100-continue (DAV)",
                             lambda p, d: curl(p, ["/dav/upload.txt"], "-H",
                                               "Expect: 100-continue", "-T",
                                               body_file(d, "put.txt", 4096))),
        "nginx_garbage": ("nginx", "raw socket: 200 pseudo-random bytes + CRLFCRLF (400)",
                          lambda p, d: raw_garbage(p)),
        "python_http10_static": ("python-static", "curl GET from python3 -m http.server",
                                 lambda p, d: curl(p, ["/index.html"])),
        "python_http10_eof": ("python-eof", "HTTP/1.0 response without length (until close)",
                              lambda p, d: curl(p, ["/anything"])),
        "go_chunked": ("go", "Go net/http streaming handler with Flush + trailer",
                       lambda p, d: curl(p, ["/stream"])),
        "go_content_length": ("go", "Go net/http handler with Content-Length",
                              lambda p, d: curl(p, ["/fixed"])),
        "go_keepalive": ("go", "curl /fixed /stream /nocontent /fixed on one connection",
                         lambda p, d: curl(p, ["/fixed", "/stream", "/nocontent", "/fixed"])),
        "go_expect_100": ("go", "curl POST 4096 bytes with Expect: 100-continue",
                          lambda p, d: curl(p, ["/upload"], "-H", "Expect: 100-continue",
                                            "-H", "Content-Type: application/octet-stream",
                                            "--data-binary",
                                            "@" + body_file(d, "post.bin", 4096))),
        "go_chunked_request": ("go", "curl POST with a chunked request body (3000 bytes)",
                               lambda p, d: curl(p, ["/upload"], "-H",
                                                 "Transfer-Encoding: chunked",
                                                 "--data-binary",
                                                 "@" + body_file(d, "chunked.bin", 3000))),
        "go_upgrade": ("go", "101 Switching Protocols (hijacked), then raw echoed bytes",
                       lambda p, d: raw_upgrade(p)),
    }


def start_server(kind, d):
    if kind == "nginx":
        return Nginx(d)
    if kind == "python-static":
        return Python(d, eof_delimited=False)
    if kind == "python-eof":
        return Python(d, eof_delimited=True)
    if kind == "go":
        return Go(d)
    raise ValueError(kind)


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
        kind, description, client = table[name]
        d = tempfile.mkdtemp(prefix=f"gw-{name}-")
        server = start_server(kind, d)
        try:
            relay = Relay(server.port)
            client(relay.port, d)
            records = relay.wait()
        finally:
            server.stop()
            shutil.rmtree(d, ignore_errors=True)
        write_capture(args.out, name, description, records)


if __name__ == "__main__":
    main()
