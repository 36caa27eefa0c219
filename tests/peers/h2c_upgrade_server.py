"""Legacy HTTP server that speaks HTTP/2 after an `Upgrade: h2c` (RFC 7540 section 3.2),
for the end-to-end tests. Built on python-hyper's `h2` protocol stack (no
OpenTelemetry). nginx and grpcio speak h2c only with prior knowledge; this is the peer
that answers `curl --http2 http://...` with `101 Switching Protocols`.

Each connection: one HTTP/1.1 request head. With `Upgrade: h2c` and an
`HTTP2-Settings` header, the server answers 101, continues as HTTP/2 and answers that
request on stream 1; later streams on the connection are answered too. Without the
upgrade it answers in HTTP/1.1. Paths: /missing is 404, anything else 200 with a short
text body naming the path. Binds 127.0.0.1 only; prints "ready PORT" once listening.

Usage: h2c_upgrade_server.py --port P
"""
import argparse
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events

MAX_HEAD = 16384


def answer(path):
    status = "404" if path == "/missing" else "200"
    return status, f"path {path}\n".encode()


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk or len(buf) > MAX_HEAD:
            return None, b""
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return (method, path, headers), rest


def respond(conn, stream_id, path):
    status, body = answer(path)
    conn.send_headers(
        stream_id,
        [(":status", status), ("content-type", "text/plain"), ("content-length", str(len(body)))],
    )
    conn.send_data(stream_id, body, end_stream=True)


def serve(sock):
    with sock:
        req, rest = read_head(sock)
        if req is None:
            return
        method, path, headers = req
        if "h2c" not in headers.get("upgrade", "").lower() or "http2-settings" not in headers:
            status, body = answer(path)
            reason = "OK" if status == "200" else "Not Found"
            sock.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode() + body
            )
            return
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_upgrade_connection(headers["http2-settings"])
        respond(conn, 1, path)
        sock.sendall(conn.data_to_send())
        data = rest
        while True:
            if data:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in event.headers}
                        p = fields.get(":path", "/")
                        respond(conn, event.stream_id, p.decode() if isinstance(p, bytes) else p)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        sock.sendall(conn.data_to_send())
                        return
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
            data = sock.recv(65536)
            if not data:
                return


def main():
    ap = argparse.ArgumentParser(description="HTTP/1.1 server that upgrades to h2c")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    print(f"ready {args.port}", flush=True)
    while True:
        client, _ = srv.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
