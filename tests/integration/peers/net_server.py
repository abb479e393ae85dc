#!/usr/bin/env python3
"""HTTP/1.0 server for the network tests (python stdlib, one request at a time).

* ``GET /blob/<n>``: ``n`` deterministic bytes (Content-Length framed);
* ``PUT`` / ``POST`` any path: reads the Content-Length body, answers ``got <n>``;
* ``GET /connect?host=H&port=P``: while serving the request, opens a TCP connection
  to H:P (timeout 10 s) and answers 200 ``connected`` or 502 ``<errno name>``
  (after sleeping ``delay`` seconds when given).

Usage: net_server.py --bind ADDR --port PORT
"""

import argparse
import errno
import http.server
import socket
import sys
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/blob/"):
            n = int(url.path[len("/blob/"):])
            self._reply(200, (bytes(range(256)) * (n // 256 + 1))[:n])
        elif url.path == "/connect":
            q = urllib.parse.parse_qs(url.query)
            host, port = q["host"][0], int(q["port"][0])
            try:
                with socket.create_connection((host, port), timeout=10):
                    pass
                code, body = 200, b"connected\n"
            except OSError as e:
                code, body = 502, (errno.errorcode.get(e.errno or 0, str(e)) + "\n").encode()
            time.sleep(float(q.get("delay", ["0"])[0]))
            self._reply(code, body)
        else:
            self._reply(404, b"not found\n")

    def _consume(self):
        n = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        self._reply(200, f"got {got}\n".encode())

    do_PUT = _consume  # noqa: N815
    do_POST = _consume  # noqa: N815


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    srv = http.server.HTTPServer((a.bind, a.port), Handler)
    print(f"listening {a.bind}:{a.port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
