"""Legacy (uninstrumented) proxy B: Python's http.server, one thread per request.

Each GET opens a NEW http.client connection to the upstream, sends the same path with no
header copied (only what http.client adds: Host, Accept-Encoding: identity), so a
`traceparent` received from the caller is NOT forwarded, and answers with the upstream's
status and body (with Content-Length).
Usage: legacy_proxy.py PORT UPSTREAM_HOST UPSTREAM_PORT [BIND_ADDRESS]   (default 127.0.0.1)
"""
import http.client
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, up_host, up_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
bind = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            conn = http.client.HTTPConnection(up_host, up_port, timeout=10)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                status, body = resp.status, resp.read()
            finally:
                conn.close()
        except OSError as e:
            status, body = 502, f"upstream error: {e}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    daemon_threads = True


Server((bind, port), Handler).serve_forever()
