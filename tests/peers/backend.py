"""Legacy (uninstrumented) HTTP backend for the end-to-end tests: Python's http.server.

/ok -> 200, /missing -> 404, /boom -> 500, anything else -> 200. Answers HTTP/1.0, like
most quick Python services, so the response body ends with the connection.
Usage: backend.py PORT [BIND_ADDRESS]   (default 127.0.0.1; "::1" for IPv6)
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = {"/missing": 404, "/boom": 500}.get(self.path.split("?")[0], 200)
        body = f"{status} {self.path}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


import socket

bind = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET


Server((bind, int(sys.argv[1])), Handler).serve_forever()
