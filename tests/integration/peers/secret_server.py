#!/usr/bin/env python3
"""A tiny stdlib HTTP server started with secrets on its command line, like many real
services are (``python3 secret_server.py --port P --password X --api-token=Y``).

The secret arguments are accepted and ignored; they exist so the agent's
``process.command_line`` must redact them. Every GET is answered 200 with a
``Set-Cookie`` header carrying a secret (the value comes from the environment variable
``SECRET_SERVER_COOKIE``, not from argv, so it can only leak through the captured
response), so the response side of the capture is exercised too."""

import argparse
import http.server
import os


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--password", default="")
    ap.add_argument("--api-token", default="")
    args = ap.parse_args()
    cookie = os.environ.get("SECRET_SERVER_COOKIE", "sid=none")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def do_GET(self):  # noqa: N802
            body = b"secret server\n"
            self.send_response(200)
            self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
