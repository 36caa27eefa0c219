"""Legacy (uninstrumented) TLS server for the end-to-end TLS tests: Python's ssl module
(OpenSSL, libssl.so.3) around http.server or a plain echo loop. No OpenTelemetry.

  http (default)  HTTP/1.1 keep-alive (Content-Length on every response), ALPN
                  http/1.1: /missing -> 404, /boom -> 500, anything else -> 200; the
                  body is "<status> <path> pid=<pid>\n"
  --echo          not HTTP: every TLS session is echoed back byte for byte until the
                  client closes it (the test's "garbage inside TLS" sink)

A thread per connection; the handshake happens in the accepting thread (ssl's
do_handshake_on_connect), the SSL_read/SSL_write calls in the connection's thread.
Prints "ready" once it listens.

Usage: tls_server.py --port P --cert PEM --key PEM [--echo]
"""
import argparse
import os
import socketserver
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        path = urlsplit(self.path).path
        status = {"/missing": 404, "/boom": 500}.get(path, 200)
        body = f"{status} {path} pid={os.getpid()}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            try:
                data = self.request.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that closes mid-handshake or sends garbage is part of the tests.
        pass


def main():
    ap = argparse.ArgumentParser(description="legacy Python TLS server")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--echo", action="store_true")
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    if args.echo:
        server = EchoServer(("127.0.0.1", args.port), Echo)
    else:
        server = HttpServer(("127.0.0.1", args.port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
