#!/usr/bin/env python3
"""Drives the session recorded by capture.py (psycopg 3): simple queries, a syntax
error, the extended protocol with a prepared statement, a pipeline, a unique violation.

    drive.py PROXY_PORT
"""
import sys

import psycopg

port = sys.argv[1]
conn = psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable", autocommit=True)
simple = psycopg.ClientCursor(conn)
# Simple query protocol (ClientCursor sends Query messages).
simple.execute("SELECT 1")
simple.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
simple.execute("SELECT 1; SELECT 2")
try:
    simple.execute("SELEC 1")
except psycopg.errors.SyntaxError:
    pass
# Extended protocol, unnamed statement with a parameter.
conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "secret-param-one"))
# Named prepared statement, used twice.
for i in (2, 3):
    conn.execute("INSERT INTO t VALUES (%s, %s)", (i, "secret-param-two"), prepare=True)
# A pipeline: several Parse/Bind/Execute groups, one Sync.
with conn.pipeline():
    conn.execute("SELECT id FROM t WHERE id > %s", (0,))
    conn.execute("UPDATE t SET v = %s WHERE id = %s", ("x", 1))
    conn.execute("SELECT count(*) FROM t")
# A unique violation.
try:
    conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "dup"))
except psycopg.errors.UniqueViolation:
    pass
conn.close()
