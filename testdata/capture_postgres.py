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
import os, socket, struct, subprocess, sys, threading

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "postgres")


class Proxy:
    """Forwards every accepted connection to the server, recording each one."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.conns = []  # one list of (dir, bytes) per connection, in accept order
        self.lock = threading.Lock()
        self.threads = []
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.upstream))
            for sock in (c, s):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            records = []
            with self.lock:
                self.conns.append(records)
            for src, dst, d in ((c, s, b"C"), (s, c, b"S")):
                t = threading.Thread(target=self.pump, args=(src, dst, d, records))
                t.start()
                self.threads.append(t)

    def pump(self, src, dst, d, records):
        while True:
            try:
                b = src.recv(65536)
            except OSError:
                b = b""
            if not b:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self.lock:
                records.append((d, b))
            try:
                dst.sendall(b)
            except OSError:
                return

    def save(self, name):
        """Writes every connection recorded so far into one file per connection."""
        for t in self.threads:
            t.join(10)
        self.threads = []
        with self.lock:
            conns, self.conns = self.conns, []
        for i, records in enumerate(conns):
            fname = name if len(conns) == 1 else f"{name}.{i}"
            with open(os.path.join(OUT, fname + ".cap"), "wb") as f:
                for d, b in records:
                    f.write(d + struct.pack(">I", len(b)) + b)


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
    p = Proxy(upstream)

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
