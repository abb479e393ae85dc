#!/usr/bin/env python3
"""Records real MySQL/MariaDB client/server traffic into testdata/mysql/ for
the parser unit tests and as fuzz seeds.

A small TCP proxy sits between real clients (mysql CLI, pymysql,
mysql-connector-python) and a real server and stores every recv() it makes,
both directions, in order. File format (shared with the other DB parsers'
captures): a sequence of records, each = 1 byte direction (b'C'
client->server, b'S' server->client), 4-byte big-endian length, then the
bytes of that one recv().

Run as: python3 testdata/capture_mysql.py <server_port>
against a MariaDB server on 127.0.0.1 with a user app/secret allowed
everything, e.g.
  mariadb-install-db --datadir=DIR --user=root
  mariadbd --datadir=DIR --port=PORT --socket=DIR.sock --bind-address=127.0.0.1 \
      --user=root --skip-grant-tables
  mysql -h127.0.0.1 -PPORT -uroot -e "flush privileges; \
      create user 'app'@'%' identified by 'secret'; grant all on *.* to 'app'@'%'"
"""
import os, subprocess, sys, tempfile

from recording_proxy import Proxy

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mysql")


def cli(port, sql, db="shop", extra=()):
    cmd = ["mysql", "-h", "127.0.0.1", "-P", str(port), "-uapp", "-psecret",
           "--ssl=0", "--skip-auto-rehash", *extra]
    if db:
        cmd += ["-D", db]
    subprocess.run(cmd + ["--force"], input=sql.encode(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def compressed(p):
    """The compressed protocol (mysql --compress): small packets sent as they
    are inside frames, larger ones deflated; an error; a result of ~40 KB."""
    cli(p.port,
        "SELECT id, name FROM items ORDER BY id;\n"
        "SELECT * FROM missing_table;\n"
        "SELECT seq, repeat('z', 30) FROM seq_1_to_1000;\n"
        f"SELECT '{'long text ' * 20}' AS long_text;\n",
        extra=["--compress"])
    p.save("cli_compressed")


def main():
    upstream = int(sys.argv[1])
    os.makedirs(OUT, exist_ok=True)
    # Setup straight to the server (not recorded).
    import pymysql
    setup = pymysql.connect(host="127.0.0.1", port=upstream, user="app", password="secret",
                            autocommit=True)
    with setup.cursor() as cur:
        for sql in ["DROP DATABASE IF EXISTS shop", "CREATE DATABASE shop",
                    "DROP DATABASE IF EXISTS other", "CREATE DATABASE other", "USE shop",
                    "CREATE TABLE items(id int primary key, name varchar(100))",
                    "INSERT INTO items SELECT seq, concat('item', seq) FROM seq_1_to_5",
                    "CREATE PROCEDURE two() BEGIN SELECT 1 AS a; SELECT 2 AS b, 3 AS c; END"]:
            cur.execute(sql)
    setup.close()
    p = Proxy(upstream, OUT)

    # mysql CLI: text queries, errors, USE (COM_INIT_DB), a procedure
    # returning two result sets (SERVER_MORE_RESULTS_EXISTS).
    cli(p.port,
        "SELECT id, name FROM items ORDER BY id;\n"
        "INSERT INTO items VALUES (6, 'six');\n"
        "UPDATE items SET name = 'x' WHERE id <= 3;\n"
        "SELECT * FROM missing_table;\n"
        "SELEC 1;\n"
        "CALL two();\n"
        "USE other;\n"
        "SELECT DATABASE();\n"
        "DELETE FROM shop.items WHERE id = 6;\n")
    p.save("cli_simple")

    # A result far larger than one 8 KiB capture.
    cli(p.port, "SELECT seq, repeat('x', 50) FROM seq_1_to_3000;\n")
    p.save("cli_big_result")

    compressed(p)

    conn = pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="secret",
                           database="shop", autocommit=True, local_infile=True)
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM items WHERE id = %s", (2,))
        cur.fetchall()
        cur.executemany("INSERT INTO items VALUES (%s, %s)", [(10, "a"), (11, "b"), (12, "c")])
        try:
            cur.execute("INSERT INTO items VALUES (%s, %s)", (10, "dup"))
        except pymysql.MySQLError:
            pass
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
            f.write("20\tloaded-a\n21\tloaded-b\n")
        cur.execute(f"LOAD DATA LOCAL INFILE '{f.name}' INTO TABLE items")
        os.unlink(f.name)
        cur.execute("DELETE FROM items WHERE id >= 10")
        conn.select_db("other")
        conn.ping()
    conn.close()
    p.save("pymysql_simple")

    # mysql-connector-python, pure Python: asks for caching_sha2_password
    # first (MariaDB answers with an auth switch), then binary-protocol
    # prepared statements: COM_STMT_PREPARE/EXECUTE/RESET/CLOSE.
    import mysql.connector
    conn = mysql.connector.connect(host="127.0.0.1", port=p.port, user="app", password="secret",
                                   database="shop", use_pure=True, ssl_disabled=True,
                                   autocommit=True)
    cur = conn.cursor(prepared=True)
    for i in range(3):
        cur.execute("SELECT id, name FROM items WHERE id <= ?", (i + 1,))
        cur.fetchall()
    cur.execute("UPDATE items SET name = ? WHERE id = ?", ("y", 2))
    try:
        cur.execute("INSERT INTO items VALUES (?, ?)", (1, "dup"))
    except mysql.connector.Error:
        pass
    cur.execute("SELECT seq, repeat('y', 40) FROM seq_1_to_2000 WHERE seq > ?", (0,))
    cur.fetchall()
    cur.close()
    conn.close()
    p.save("connector_prepared")

    # The client starts with a plugin the account does not use: the server
    # answers with an auth switch request (0xfe) to mysql_native_password.
    conn = mysql.connector.connect(host="127.0.0.1", port=p.port, user="app", password="secret",
                                   database="shop", use_pure=True, ssl_disabled=True,
                                   auth_plugin="caching_sha2_password")
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM items")
    cur.fetchall()
    conn.close()
    p.save("connector_auth_switch")
    p.srv.close()


if __name__ == "__main__":
    main()
