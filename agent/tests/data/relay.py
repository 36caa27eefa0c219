"""What the capture scripts of agent/tests/data/*/ share: free ports, waiting for a
server, and a relay that records one client connection's bytes in both directions.

Imported by http1/capture.py and tls/capture.py (and, for the first two, by
http2/capture.py, whose relay records several connections).
"""
import socket
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


class Relay:
    """Accepts one client connection and relays it to 127.0.0.1:upstream, recording."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.records = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        client, _ = self.listener.accept()
        self.listener.close()
        server = socket.create_connection(("127.0.0.1", self.upstream))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [
            threading.Thread(target=self._pump, args=(client, server, ">"), daemon=True),
            threading.Thread(target=self._pump, args=(server, client, "<"), daemon=True),
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        client.close()
        server.close()
        self.done.set()

    def _pump(self, src, dst, tag):
        while True:
            try:
                data = src.recv(65536)
            except (ConnectionResetError, OSError):
                data = b""
            with self.lock:
                self.records.append((tag, data))
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def wait(self, timeout=30.0):
        if not self.done.wait(timeout):
            raise RuntimeError("relay did not finish (connection still open?)")
        return list(self.records)
