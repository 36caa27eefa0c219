"""A legacy (uninstrumented) HTTP service whose handlers query PostgreSQL, MariaDB and
Redis with plain Python drivers and no SDK: the database end-to-end tests trace it.

/order  -> psycopg 3 (extended protocol: a prepared statement, and a parameterised
           query), psycopg2 (simple protocol, literals inlined by the driver), PyMySQL
           (literals inlined), redis-py (a pipeline); 200
/errors -> a PostgreSQL syntax error and unique violation, a MariaDB syntax error and
           duplicate key, a Redis WRONGTYPE; 200 (the service handles them)

Every literal the queries carry is in LITERALS: the test checks none of them leaves the
agent. Connections are opened at the first request (after the agent started) and kept.
Usage: db_service.py HTTP_PORT PG_PORT MYSQL_PORT REDIS_PORT
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import psycopg2
import pymysql
import redis

HTTP_PORT, PG_PORT, MY_PORT, REDIS_PORT = (int(a) for a in sys.argv[1:5])

EMAIL = "ann.secret@example.com"
NUMBER = 4242424242
TOKEN = "tok-hunter2-b64"
VALUE = "cart-value-s3cr3t"
LITERALS = [EMAIL, str(NUMBER), TOKEN, VALUE]

lock = threading.Lock()
conns = {}


def connections():
    with lock:
        if not conns:
            conns["pg3"] = psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="shop", autocommit=True)
            conns["pg2"] = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="shop")
            conns["pg2"].autocommit = True
            conns["my"] = pymysql.connect(host="127.0.0.1", port=MY_PORT, user="root", password="", database="shop", autocommit=True)
            conns["redis"] = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=0)
        return conns


def order(c):
    pg3 = c["pg3"]
    # A named prepared statement (Parse once, then Bind/Execute), values in Bind.
    pg3.execute("SELECT id, email FROM customers WHERE email = %s", (EMAIL,), prepare=True).fetchall()
    pg3.execute("UPDATE customers SET visits = visits + 1 WHERE id = %s", (NUMBER,))
    with c["pg2"].cursor() as cur:
        # psycopg2 inlines the literals: the simple query protocol.
        cur.execute("SELECT id FROM customers WHERE email = %s AND id <> %s", (EMAIL, NUMBER))
        cur.fetchall()
    with c["my"].cursor() as cur:
        cur.execute("INSERT INTO orders (customer, token, amount) VALUES (%s, %s, %s)", (EMAIL, TOKEN, NUMBER))
        cur.execute("SELECT id, amount FROM orders WHERE token = %s", (TOKEN,))
        cur.fetchall()
    pipe = c["redis"].pipeline(transaction=False)
    pipe.set("cart:ann", VALUE)
    pipe.get("cart:ann")
    pipe.incrby("visits:ann", NUMBER)
    pipe.execute()


def errors(c):
    for f in (
        lambda: c["pg2"].cursor().execute("SELEC id FROM customers WHERE email = %s", (EMAIL,)),
        lambda: c["pg3"].execute("INSERT INTO customers (id, email) VALUES (%s, %s)", (1, EMAIL)),
        lambda: c["my"].cursor().execute("SELEC amount FROM orders WHERE token = %s", (TOKEN,)),
        lambda: c["my"].cursor().execute("INSERT INTO orders (id, customer, token, amount) VALUES (1, %s, %s, 1)", (EMAIL, TOKEN)),
        lambda: c["redis"].lpush("cart:ann", VALUE),
    ):
        try:
            f()
        except (psycopg.Error, psycopg2.Error, pymysql.MySQLError, redis.RedisError):
            pass
        else:
            raise AssertionError("the query was meant to fail")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?")[0]
        try:
            c = connections()
            if path == "/order":
                order(c)
            elif path == "/errors":
                errors(c)
            status, body = 200, b"ok\n"
        except Exception as e:  # the test reads it in the status
            status, body = 500, f"{type(e).__name__}: {e}\n".encode()
            sys.stderr.write(body.decode())
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", HTTP_PORT), Handler).serve_forever()
