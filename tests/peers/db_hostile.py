"""Hostile bytes on database connections, to the real servers: on a Redis connection
and on a PostgreSQL connection (after a real startup), a valid call, then garbage (each
server answers with an error and closes). Then a fresh Redis connection makes one call.
Usage: db_hostile.py PG_PORT REDIS_PORT
"""
import socket
import struct
import sys

PG_PORT, REDIS_PORT = int(sys.argv[1]), int(sys.argv[2])
GARBAGE = b"*x\xff\xfe\x00garbage\r\n$-7\r\n"


def read_some(s):
    s.settimeout(5)
    try:
        return s.recv(65536)
    except socket.timeout:
        return b""


def redis_call(s, *words):
    s.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words))
    return read_some(s)


with socket.create_connection(("127.0.0.1", REDIS_PORT)) as s:
    assert redis_call(s, b"GET", b"hostile:before").startswith(b"$"), "GET answered"
    s.sendall(GARBAGE)
    read_some(s)  # -ERR Protocol error, then the server closes

with socket.create_connection(("127.0.0.1", PG_PORT)) as s:
    params = b"user\x00postgres\x00database\x00shop\x00\x00"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    seen = b""
    while not seen.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = read_some(s)
        assert chunk, f"startup not answered: {seen!r}"
        seen += chunk
    q = b"SELECT 1\x00"
    s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
    read_some(s)
    s.sendall(GARBAGE)
    read_some(s)  # FATAL invalid frontend message type, then the server closes

with socket.create_connection(("127.0.0.1", REDIS_PORT)) as s:
    assert redis_call(s, b"GET", b"hostile:after").startswith(b"$"), "GET answered after the garbage"
print("done")
