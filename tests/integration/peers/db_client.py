#!/usr/bin/env python3
"""Database client peer for test_db.py: runs one fixed scenario with a real client
library, so the test can select this process by pid *before* it connects.

    db_client.py SCENARIO PORT

It prints ``ready`` and waits for one line on stdin, then runs the scenario, prints
one JSON line with what the library observed (``{"ok": true, ...}``) and exits.
Secrets and literals live in this file only (never in argv: the agent may report the
command line).
"""

import json
import sys

SECRET = "4111111111111111"


def pg_secret(port):
    """psycopg 3 (extended protocol: Parse/Bind/Execute), autocommit: 5 statements."""
    import psycopg
    out = {}
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (id int, card text)")
        conn.execute(f"INSERT INTO t VALUES (1, '{SECRET}')")
        out["rows"] = len(conn.execute(f"SELECT * FROM t WHERE card = '{SECRET}'").fetchall())
        out["ids"] = conn.execute(
            f"SELECT id FROM t WHERE card = '{SECRET}' AND id = 1").fetchall()[0][0]
        try:  # the server's message quotes the secret: out of range for integer (22003)
            conn.execute(f"SELECT * FROM t WHERE id = '{SECRET}'")
        except psycopg.Error as e:
            out["error"] = e.sqlstate
    return out


def mysql_pymysql(port):
    """PyMySQL (text protocol, COM_QUERY), autocommit: 4 statements, one failing."""
    import pymysql
    out = {}
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", password="",
                           database="autotel", autocommit=True)
    try:
        with conn.cursor() as c:
            c.execute("INSERT INTO items (id, name) VALUES (101, 'pymysql-a')")
            c.execute("INSERT INTO items (id, name) VALUES (102, 'pymysql-b')")
            out["rows"] = c.execute("SELECT id, name FROM items WHERE id > 100")
            try:
                c.execute("SELECT * FROM no_such_table")
            except pymysql.MySQLError as e:
                out["error"] = e.args[0]
    finally:
        conn.close()
    return out


def mysql_prepared(port):
    """mysql-connector-python, prepared cursor: COM_STMT_PREPARE once, then
    COM_STMT_EXECUTE three times with different ids."""
    import mysql.connector
    out = {}
    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="root", password="",
                                   database="autotel", autocommit=True, use_pure=True)
    try:
        c = conn.cursor(prepared=True)
        names = []
        for i in (1, 2, 3):
            c.execute("SELECT name FROM items WHERE id = %s", (i,))
            names.append(c.fetchall()[0][0])
        out["names"] = [n.decode() if isinstance(n, (bytes, bytearray)) else n for n in names]
        c.close()
    finally:
        conn.close()
    return out


def memcached(port):
    """pymemcache: 5 set (2 noreply), 3 get (hit, miss, get_many), 2 delete."""
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", port), default_noreply=False)
    out = {}
    try:
        for i in (1, 2, 3):
            c.set(f"k{i}", f"value-{i}".encode())
        c.set("n1", b"noreply-1", noreply=True)
        c.set("n2", b"noreply-2", noreply=True)
        out["hit"] = c.get("k1").decode()
        out["miss"] = c.get("missing-key")
        many = c.get_many(["k1", "k2", "k3"])
        out["many"] = sorted(k if isinstance(k, str) else k.decode() for k in many)
        out["deleted"] = c.delete("k1", noreply=False)
        out["deleted_missing"] = c.delete("missing-key", noreply=False)
    finally:
        c.close()
    return out


SCENARIOS = {"pg_secret": pg_secret, "mysql_pymysql": mysql_pymysql,
             "mysql_prepared": mysql_prepared, "memcached": memcached}


def main():
    scenario, port = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    out = SCENARIOS[scenario](port)
    out["ok"] = True
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
