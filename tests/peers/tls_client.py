"""Legacy (uninstrumented) TLS client for the end-to-end TLS tests: Python's ssl module
(OpenSSL, libssl.so.3) and http.client, no OpenTelemetry.

ONE keep-alive HTTPSConnection to 127.0.0.1:PORT (verified against --ca), opened by the
first `get`. Driven by commands, one per line on stdin (or given as argv: each argument
one command), so a test can open the connection and make a request before the agent
starts, and more requests on the same connection afterwards.

Commands (answered with exactly one line each, flushed):
  get PATH          GET PATH on the kept connection -> "ok STATUS bytes=N"
  reconnect         closes the kept connection; the next `get` opens a new one -> "ok OK"
  raw PORT TEXT     a NEW TLS connection to 127.0.0.1:PORT, sends TEXT (Python escapes
                    such as \\x00 allowed), reads as many bytes back (an echo server),
                    closes -> "ok OK bytes=N"
  quit              closes the connection -> "ok OK bye", then exits
A command that fails is answered "err MESSAGE".

Usage: tls_client.py --port P --ca PEM [COMMAND ...]
"""
import argparse
import codecs
import http.client
import socket
import ssl
import sys


class Client:
    def __init__(self, port, ca):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.conn = None

    def get(self, path):
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        self.conn.request("GET", path, headers={"User-Agent": "ghostwire-tls-client"})
        resp = self.conn.getresponse()
        body = resp.read()
        return f"ok {resp.status} bytes={len(body)}"

    def raw(self, port, text):
        data = codecs.decode(text, "unicode_escape").encode("latin-1")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with self.ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(data)
                got = b""
                while len(got) < len(data):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    got += chunk
        return f"ok OK bytes={len(got)}"

    def run(self, line):
        words = line.split(maxsplit=2)
        if not words:
            return "err empty command"
        try:
            if words[0] == "get" and len(words) == 2:
                return self.get(words[1])
            if words[0] == "reconnect" and len(words) == 1:
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                return "ok OK"
            if words[0] == "raw" and len(words) == 3 and words[1].isdigit():
                return self.raw(int(words[1]), words[2])
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            return f"err {type(e).__name__}: {e}"
        return f"err cannot parse {line!r}"


def main():
    ap = argparse.ArgumentParser(description="legacy Python TLS client")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("commands", nargs="*", help="one-shot commands (default: read stdin)")
    args = ap.parse_args()
    client = Client(args.port, args.ca)
    source = args.commands if args.commands else sys.stdin
    for line in source:
        line = line.strip()
        if line == "quit":
            break
        print(client.run(line), flush=True)
    if client.conn is not None:
        client.conn.close()
    print("ok OK bye", flush=True)


if __name__ == "__main__":
    main()
