#!/usr/bin/env python3
"""Records real PostgreSQL v3 traffic into testdata/postgres/ for the parser
unit tests and as fuzz seeds.

A small TCP proxy sits between real clients (psql, pgbench, psycopg) and a
real server and stores every recv() it makes, both directions, in order.
File format (shared with the other DB parsers' captures): a sequence of
records, each = 1 byte direction (b'C' client->server, b'S' server->client),
4-byte big-endian length, then the bytes of that one recv().

Run as: python3 testdata/capture_postgres.py <server_port>
against a server with trust auth for user postgres on 127.0.0.1, e.g.
  initdb -A trust -U postgres -D DIR
  postgres -D DIR -p PORT -k DIR -c listen_addresses=127.0.0.1
"""
import os, subprocess, sys

from recording_proxy import Proxy

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "postgres")


def psql(port, *args, stdin=None, db="shop"):
    cmd = ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, *args]
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PGSSLMODE": "prefer", "PGGSSENCMODE": "disable"})


def main():
    upstream = int(sys.argv[1])
    os.makedirs(OUT, exist_ok=True)
    # Setup straight to the server (not recorded).
    direct = ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(upstream), "-U", "postgres"]
    subprocess.run(direct + ["-c", "DROP DATABASE IF EXISTS shop"], check=True)
    subprocess.run(direct + ["-c", "CREATE DATABASE shop"], check=True)
    subprocess.run(direct + ["-d", "shop", "-c",
                   "CREATE TABLE items(id int primary key, name text); "
                   "INSERT INTO items SELECT g, 'item' || g FROM generate_series(1, 5) g"], check=True)
    subprocess.run(["pgbench", "-q", "-i", "-s", "1", "-h", "127.0.0.1", "-p", str(upstream),
                    "-U", "postgres", "shop"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = Proxy(upstream, OUT)

    # psql, simple query protocol; SSLRequest answered 'N' (server has no TLS).
    psql(p.port,
         "-c", "SELECT id, name FROM items ORDER BY id",
         "-c", "INSERT INTO items VALUES (6, 'six')",
         "-c", "UPDATE items SET name = 'x' WHERE id <= 3",
         "-c", "SELECT 1/0",
         "-c", "SELECT * FROM missing_table",
         "-c", "SELECT 1; SELECT 2, 3",
         "-c", "DELETE FROM items WHERE id = 6")
    p.save("psql_simple")

    # COPY out and in through psql.
    psql(p.port, "-c", "COPY items TO STDOUT",
         "-c", "COPY items (id, name) FROM STDIN", stdin=b"100\thundred\n101\tone-o-one\n\\.\n")
    psql(p.port, "-c", "DELETE FROM items WHERE id >= 100")
    p.save("psql_copy")

    # A result far larger than one 8 KiB capture.
    psql(p.port, "-c", "SELECT g, repeat('x', 50) FROM generate_series(1, 3000) g")
    p.save("psql_big_result")

    # pgbench: extended protocol, unnamed and named prepared statements.
    for mode in ("extended", "prepared"):
        subprocess.run(["pgbench", "-n", "-M", mode, "-t", "3", "-c", "1", "-h", "127.0.0.1",
                        "-p", str(p.port), "-U", "postgres", "shop"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable"})
        p.save(f"pgbench_{mode}")

    # psycopg 3: server-side prepared statements, errors mid-pipeline, COPY, empty query.
    import psycopg
    dsn = f"host=127.0.0.1 port={p.port} user=postgres dbname=shop sslmode=disable gssencmode=disable"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(3):
            conn.execute("SELECT name FROM items WHERE id = %s", (i + 1,), prepare=True).fetchall()
        conn.execute("UPDATE items SET name = %s WHERE id = %s", ("y", 2))
        try:
            conn.execute("SELECT %s::int / 0", (1,))
        except psycopg.Error:
            pass
        conn.execute("")
        with conn.cursor().copy("COPY items (id, name) FROM STDIN") as cp:
            cp.write_row((200, "copy-a"))
            cp.write_row((201, "copy-b"))
        with conn.cursor().copy("COPY (SELECT id FROM items WHERE id >= 200) TO STDOUT") as cp:
            for _ in cp:
                pass
        conn.execute("DELETE FROM items WHERE id >= 200")
    p.save("psycopg_prepared")

    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.pipeline() as pl:
            cur = conn.cursor()
            cur.execute("SELECT id FROM items WHERE id = %s", (1,))
            cur.execute("INSERT INTO items VALUES (%s, %s)", (300, "pipe"))
            cur.execute("SELECT count(*) FROM items")
            pl.sync()
            cur.execute("DELETE FROM items WHERE id = %s", (300,))
            pl.sync()
        # An error inside a pipeline: the server skips the rest until Sync.
        try:
            with conn.pipeline():
                c = conn.cursor()
                c.execute("SELECT 1")
                c.execute("SELECT * FROM missing_table WHERE id = %s", (1,))
                c.execute("SELECT 2")
                c.execute("SELECT 3")
        except psycopg.Error:
            pass
        conn.execute("SELECT 'after'")
    p.save("psycopg_pipeline")
    p.srv.close()


if __name__ == "__main__":
    main()
