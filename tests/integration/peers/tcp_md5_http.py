#!/usr/bin/env python3
"""HTTP over TCP connections signed with the TCP MD5 option (RFC 2385), whose 18
bytes plus timestamps leave no room in the 40-byte option space for another option.
Stdlib only: http.server / http.client with the kernel's TCP_MD5SIG socket option.

    tcp_md5_http.py serve BIND_ADDR PORT PEER_ADDR   # http.server, key for PEER_ADDR
    tcp_md5_http.py get SERVER_ADDR PORT N           # N GETs, one connection each;
                                                     # prints the status codes
"""

import http.client
import http.server
import socket
import struct
import sys

TCP_MD5SIG = 14
KEY = b"autotel-md5-test"


def md5sig(peer: str) -> bytes:
    """struct tcp_md5sig: sockaddr_storage (128) + flags, prefixlen, keylen, ifindex,
    key[80]."""
    addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 0) + socket.inet_aton(peer)
    addr = addr.ljust(128, b"\0")
    return addr + struct.pack("<BBHi", 0, 0, len(KEY), 0) + KEY.ljust(80, b"\0")


def serve(bind: str, port: int, peer: str) -> None:
    class Server(http.server.HTTPServer):
        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(peer))
            super().server_bind()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            body = b"signed\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = Server((bind, port), Handler)
    print("listening", flush=True)
    srv.serve_forever()


class SignedConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(self.host))
        self.sock.settimeout(10)
        self.sock.connect((self.host, self.port))


def get(server: str, port: int, n: int) -> None:
    codes = []
    for i in range(n):
        conn = SignedConnection(server, port)
        conn.request("GET", f"/signed/{i}")
        r = conn.getresponse()
        r.read()
        codes.append(r.status)
        conn.close()
    print(" ".join(map(str, codes)), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        get(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
