#!/usr/bin/env python3
"""A small HTTP proxy built only on the standard library (used as "service A").

``python3 proxy.py PORT BACKEND_URL [HTTP/1.1]`` listens on 127.0.0.1:PORT with a
``ThreadingHTTPServer`` (one thread per connection). For every GET it fetches
``BACKEND_URL + path`` with ``urllib.request`` *in the handler thread* and answers
with the backend's status and body. A request header ``X-Downstream-Traceparent``,
if present, is sent to the backend as ``traceparent`` (used to check that an
explicit header wins over the agent's same-host link); nothing else is injected.
With ``HTTP/1.1`` as third argument the server keeps client connections alive, so
one thread serves several requests in turn.
"""

import http.server
import os
import sys
import urllib.error
import urllib.request

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


class Handler(http.server.BaseHTTPRequestHandler):
    backend = ""

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        req = urllib.request.Request(self.backend + self.path)
        down = self.headers.get("X-Downstream-Traceparent")
        if down:
            req.add_header("traceparent", down)
        try:
            with OPENER.open(req, timeout=10) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except OSError as e:
            status, body = 502, f"backend error: {e}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port, backend = int(sys.argv[1]), sys.argv[2].rstrip("/")
    Handler.backend = backend
    if len(sys.argv) > 3:
        Handler.protocol_version = sys.argv[3]
    bind = os.environ.get("PROXY_BIND", "127.0.0.1")  # another netns: its address
    srv = http.server.ThreadingHTTPServer((bind, port), Handler)
    srv.daemon_threads = True
    print(f"proxy listening on {bind}:{port} -> {backend}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
