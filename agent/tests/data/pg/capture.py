#!/usr/bin/env python3
"""Records one PostgreSQL client session through a loopback proxy.

    capture.py LISTEN_PORT SERVER_PORT OUT_DIR

Accepts ONE connection on 127.0.0.1:LISTEN_PORT, forwards it to 127.0.0.1:SERVER_PORT,
and writes every client->server byte to OUT_DIR/session.req and every server->client
byte to OUT_DIR/session.resp, in order. Exits when the connection closes.
"""
import os
import socket
import sys
import threading


def pump(src, dst, out):
    with open(out, "wb") as f:
        while True:
            data = src.recv(65536)
            if not data:
                break
            f.write(data)
            f.flush()
            dst.sendall(data)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main():
    listen, server, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen))
    ls.listen(1)
    print("listening", flush=True)
    client, _ = ls.accept()
    ls.close()
    upstream = socket.create_connection(("127.0.0.1", server))
    a = threading.Thread(target=pump, args=(client, upstream, os.path.join(out_dir, "session.req")))
    b = threading.Thread(target=pump, args=(upstream, client, os.path.join(out_dir, "session.resp")))
    a.start()
    b.start()
    a.join()
    b.join()


if __name__ == "__main__":
    main()
