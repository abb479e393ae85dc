#!/usr/bin/env python3
"""HTTPS peer: python's stdlib ``http.server`` with its listening socket wrapped by
``ssl`` (OpenSSL through the system libssl.so.3).

    tls_https_server.py PORT CERT KEY DOCROOT [--protocol HTTP/1.1] [--peek]

Serves the files of DOCROOT (404 for anything else). With ``--protocol HTTP/1.1`` the
connections stay open (keep-alive). ``--peek``: before the handshake, look at the
first byte of each connection with ``recv(1, MSG_PEEK)`` as nginx does (it checks
for 0x16 to tell TLS from plain HTTP on an ssl port). Single-threaded: the TLS handshake of each
connection happens in ``accept`` (do_handshake_on_connect), requests one at a time.
"""

import argparse
import functools
import http.server
import socket
import ssl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("docroot")
    ap.add_argument("--protocol", default="HTTP/1.0")
    ap.add_argument("--peek", action="store_true")
    a = ap.parse_args()

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = a.protocol

        def log_message(self, fmt, *args):  # one line per request on stderr
            super().log_message(fmt, *args)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    class PeekingServer(http.server.HTTPServer):
        def get_request(self):
            sock, addr = self.socket.accept()
            first = sock.recv(1, socket.MSG_PEEK)
            if first != b"\x16":
                print(f"first byte {first!r} is not a TLS handshake record", flush=True)
            return ctx.wrap_socket(sock, server_side=True), addr

    handler = functools.partial(Handler, directory=a.docroot)
    if a.peek:
        httpd = PeekingServer(("127.0.0.1", a.port), handler)
    else:
        httpd = http.server.HTTPServer(("127.0.0.1", a.port), handler)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(f"listening https://127.0.0.1:{a.port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
