"""Legacy (uninstrumented) event-loop HTTP/1.1 proxy: Python asyncio streams, the standard
library only, every socket driven by ONE event-loop thread (no executor: the addresses
are numeric, so asyncio resolves them inline). It is the model for "several requests in
flight on one thread" that the linking fidelity test drives.

Client side: HTTP/1.1 keep-alive (many requests per client connection; HTTP/1.0 or
`Connection: close` ends the connection after the answer). Every answer carries a
Content-Length and goes out in one write.
For each GET, forwards `GET <same target> HTTP/1.1` with ONLY `Host` and
`Connection: keep-alive` (no header copied from the client, so a received `traceparent`
is not forwarded) to 127.0.0.1:UPSTREAM_PORT, and relays the upstream's status and body.
Other methods are answered 405 without an upstream call; an unreachable or broken
upstream, 502.

Upstream connections:
  default  a NEW connection per request (asyncio.open_connection), closed after the
           response;
  --pool   a LIFO pool of idle keep-alive connections: the most recently idle one is
           reused, a new one is opened when none is idle. A response that does not allow
           reuse (HTTP/1.0, `Connection: close`, body read to EOF) closes its connection.
           A reused connection that fails before any answer byte is retried once on a
           new connection.
The upstream may be tests/peers/http11_server.py (keep-alive) or backend.py (HTTP/1.0,
closes): bodies are read by Content-Length, chunked, or to EOF.

Bounds: heads 64 KiB, bodies 16 MiB, 512 client connections at a time (more are closed at
once), 64 idle upstream connections, 10 s per upstream exchange, 60 s idle per client.
Prints "ready PORT" on stdout (flushed) once it accepts connections; SIGTERM/SIGINT stop it.
Usage: asyncio_proxy.py PORT UPSTREAM_PORT [--pool]
"""
import asyncio
import signal
import socket
import sys

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_CLIENTS = 512
MAX_IDLE = 64
UPSTREAM_TIMEOUT = 10.0
CLIENT_IDLE = 60.0

REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error", 502: "Bad Gateway"}


class HttpError(Exception):
    """A malformed or oversized message from either side."""


def parse_head(head):
    """(first line words, {lower-case header name: value}) of a head ending in CRLFCRLF."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as e:  # latin-1 decodes every byte; kept for clarity
        raise HttpError(str(e)) from e
    lines = text.split("\r\n")
    first = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"bad header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return first, headers


async def read_head(reader):
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise HttpError("head too long") from e


def content_length(headers):
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit() or int(value) > MAX_BODY:
        raise HttpError(f"bad Content-Length {value[:20]!r}")
    return int(value)


async def read_chunked(reader):
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as e:
            raise HttpError("bad chunk size") from e
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise HttpError("chunked body too long")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


class Upstream:
    """Connections to 127.0.0.1:port, pooled (LIFO) or one per request."""

    def __init__(self, port, pool):
        self.port = port
        self.pool = pool
        self.idle = []  # (reader, writer), most recently idle last

    async def connect(self):
        return await asyncio.open_connection("127.0.0.1", self.port, limit=MAX_HEAD)

    def release(self, conn, reusable):
        if self.pool and reusable and len(self.idle) < MAX_IDLE and not conn[1].is_closing():
            self.idle.append(conn)
        else:
            conn[1].close()

    async def exchange(self, conn, target):
        """(status, body, reusable) of one GET on conn."""
        reader, writer = conn
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nConnection: keep-alive\r\n\r\n".encode("latin-1"))
        await writer.drain()
        first, headers = parse_head(await read_head(reader))
        if len(first) < 2 or not first[0].startswith("HTTP/") or not first[1].isdigit():
            raise HttpError(f"bad status line {' '.join(first)[:60]!r}")
        status = int(first[1])
        conn_tokens = headers.get("connection", "").lower()
        reusable = first[0] == "HTTP/1.1" and "close" not in conn_tokens
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await read_chunked(reader)
        elif (length := content_length(headers)) is not None:
            body = await reader.readexactly(length)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await reader.read(MAX_BODY + 1)
            while len(body) <= MAX_BODY:
                more = await reader.read(MAX_BODY + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > MAX_BODY:
                raise HttpError("body to EOF too long")
            reusable = False
        return status, body, reusable

    async def get(self, target):
        """(status, body) of GET target, or raises OSError/HttpError/TimeoutError."""
        for attempt in (0, 1):
            reused = bool(self.pool and self.idle)
            conn = self.idle.pop() if reused else await asyncio.wait_for(self.connect(), UPSTREAM_TIMEOUT)
            try:
                status, body, reusable = await asyncio.wait_for(self.exchange(conn, target), UPSTREAM_TIMEOUT)
            except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                conn[1].close()
                # An idle keep-alive connection the upstream closed meanwhile: try a new one.
                if reused and attempt == 0 and isinstance(e, (ConnectionError, asyncio.IncompleteReadError)):
                    continue
                raise
            self.release(conn, reusable)
            return status, body
        raise HttpError("unreachable")


def answer(status, body, keep_alive):
    reason = REASONS.get(status, "Status")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Proxy:
    def __init__(self, upstream):
        self.upstream = upstream
        self.clients = 0

    async def serve_client(self, reader, writer):
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            await self.client_loop(reader, writer)
        except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            self.clients -= 1
            writer.close()

    async def client_loop(self, reader, writer):
        while True:
            try:
                head = await asyncio.wait_for(read_head(reader), CLIENT_IDLE)
            except asyncio.IncompleteReadError:
                return  # the client closed between requests
            first, headers = parse_head(head)
            if len(first) != 3 or not first[2].startswith("HTTP/1."):
                raise HttpError("bad request line")
            method, target, version = first
            length = content_length(headers) or 0
            if length:
                await asyncio.wait_for(reader.readexactly(length), CLIENT_IDLE)
            tokens = headers.get("connection", "").lower()
            keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
            if method != "GET":
                status, body = 405, b"only GET is proxied\n"
            else:
                try:
                    status, body = await self.upstream.get(target)
                except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    status, body = 502, f"upstream error: {type(e).__name__} {e}\n".encode()
            writer.write(answer(status, body, keep_alive))
            await writer.drain()
            if not keep_alive:
                return


async def main():
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] != "--pool"):
        sys.exit("usage: asyncio_proxy.py PORT UPSTREAM_PORT [--pool]")
    port, up_port = int(sys.argv[1]), int(sys.argv[2])
    proxy = Proxy(Upstream(up_port, len(sys.argv) == 4))
    # A socket bound here rather than a host name: no resolver, hence no executor thread.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await asyncio.start_server(proxy.serve_client, sock=sock, limit=MAX_HEAD, backlog=128)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {port}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
