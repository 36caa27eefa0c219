#!/usr/bin/env python3
"""Records real TLS handshakes (ciphertext, as the socket hooks see it) between real
peers on loopback, for ghostwire's TLS golden tests (agent/tests/tls_golden.rs).

How a capture is made
---------------------
`openssl s_server -www` (a throw-away self-signed certificate) listens on a free
127.0.0.1 port. This script puts a TCP relay in front of it and points a real client
(`openssl s_client`, curl) at the relay. The relay accepts one connection, opens one to
the server and forwards both ways; every chunk one of its recv() calls returns is
recorded as-is (several TLS records per chunk, as a reader with a large buffer sees
them), then forwarded. recv() returning b"" is recorded as EOF for that direction.

Captures (``python3 agent/tests/data/tls/capture.py [NAME ...]``; no NAME = all):

  s_client_tls13   openssl s_client -tls1_3, sends "GET / HTTP/1.0", reads the status page
  s_client_tls12   the same with -tls1_2
  curl_tls13       curl -k --tlsv1.3 https://127.0.0.1:PORT/
  curl_tls12       curl -k --tlsv1.2 --tls-max 1.2 https://127.0.0.1:PORT/

The expected version of each capture is its name's suffix (tls13 = "1.3").

File format: as agent/tests/data/http1/capture.py (a magic line, "#" comment lines, then
records "> N" / "< N" followed by N raw bytes and a newline, or "> EOF" / "< EOF"; ">"
is client to server).

Requirements: openssl, curl, python3.
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = "# ghostwire-tls-capture v1"


sys.path.insert(0, os.path.dirname(HERE))
from relay import Relay, free_port, wait_for_port  # noqa: E402  (the shared relay, ../relay.py)


def write_capture(name, description, records):
    path = os.path.join(HERE, f"{name}.cap")
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


def s_client(port, flag):
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag, "-quiet", "-ign_eof"],
        input=b"GET / HTTP/1.0\r\n\r\n",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


def curl(port, *flags):
    subprocess.run(
        ["curl", "-sk", "-o", "/dev/null", *flags, f"https://127.0.0.1:{port}/"], timeout=30, check=True
    )


CAPTURES = {
    "s_client_tls13": ("openssl s_client -tls1_3 to openssl s_server -www", lambda p: s_client(p, "-tls1_3")),
    "s_client_tls12": ("openssl s_client -tls1_2 to openssl s_server -www", lambda p: s_client(p, "-tls1_2")),
    "curl_tls13": ("curl -k --tlsv1.3 to openssl s_server -www", lambda p: curl(p, "--tlsv1.3")),
    "curl_tls12": ("curl -k --tlsv1.2 --tls-max 1.2 to openssl s_server -www", lambda p: curl(p, "--tlsv1.2", "--tls-max", "1.2")),
}


def main():
    names = sys.argv[1:] or list(CAPTURES)
    with tempfile.TemporaryDirectory() as d:
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "1", "-subj", "/CN=localhost"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for name in names:
            description, client = CAPTURES[name]
            port = free_port()
            server = subprocess.Popen(
                ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key, "-www"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(port, server)
                # wait_for_port's probe connection is one s_server handles first.
                time.sleep(0.2)
                relay = Relay(port)
                client(relay.port)
                write_capture(name, description, relay.wait())
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
