"""HTTP/1.1 keep-alive test server: Python's http.server with protocol_version
"HTTP/1.1" and a Content-Length on every response, so one connection carries many
requests.

  GET  /slow[?s=SECONDS]  sleeps SECONDS (default 1.5), then 200
  GET  /missing -> 404, /boom -> 500, anything else -> 200
  POST any path           reads the Content-Length body, then 200
Every response body is "<status> <path> pid=<pid of the handling process> read=<body bytes read>\n".

Usage: http11_server.py PORT [--fork]
  default  ThreadingHTTPServer: a thread per connection
  --fork   socketserver.ForkingMixIn: each connection is handled in a forked child
           that exits after it
"""
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: without this, Nagle holds the body until the
    # head is acknowledged.
    disable_nagle_algorithm = True

    def answer(self, read):
        url = urlsplit(self.path)
        status = {"/missing": 404, "/boom": 500}.get(url.path, 200)
        body = f"{status} {url.path} pid={os.getpid()} read={read}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/slow":
            seconds = float(parse_qs(url.query).get("s", ["1.5"])[0])
            time.sleep(min(seconds, 10.0))
        self.answer(0)

    def do_POST(self):
        want = int(self.headers.get("Content-Length", "0"))
        read = 0
        while read < want:
            chunk = self.rfile.read(min(want - read, 1 << 16))
            if not chunk:
                break
            read += len(chunk)
        self.answer(read)

    def log_message(self, *args):
        pass


class ForkingServer(socketserver.ForkingMixIn, HTTPServer):
    pass


port = int(sys.argv[1])
server_class = ForkingServer if "--fork" in sys.argv[2:] else ThreadingHTTPServer
server_class.allow_reuse_address = True
server_class(("127.0.0.1", port), Handler).serve_forever()
