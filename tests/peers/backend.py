"""Legacy (uninstrumented) HTTP backend for the end-to-end tests: Python's http.server.

/ok -> 200, /missing -> 404, /boom -> 500, anything else -> 200. Answers HTTP/1.0, like
most quick Python services, so the response body ends with the connection.
Usage: backend.py PORT
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


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
