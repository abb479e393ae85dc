#!/usr/bin/env python3
"""HTTP app for test_db.py: stdlib ThreadingHTTPServer whose handler queries
PostgreSQL with psycopg 3 for each request (new connection, autocommit), i.e. two
client DB calls nested in every server request.

    db_http_app.py HTTP_PORT PG_PORT

GET /q/<n> runs ``SELECT %s::int + 1`` (n) and ``SELECT count(*) FROM pg_database``
and answers ``<n+1> <count>``.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

PG_PORT = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        try:
            n = int(self.path.rsplit("/", 1)[-1])
        except ValueError:
            self.send_error(404)
            return
        with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            a = conn.execute("SELECT %s::int + 1", (n,)).fetchone()[0]
            b = conn.execute("SELECT count(*) FROM pg_database").fetchone()[0]
        body = f"{a} {b}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
