#!/usr/bin/env python3
"""HTTP/2 over TLS (ALPN h2) client on ONE connection, built on the ``h2`` package and
python's ssl module (the system libssl): the connection is opened and used before
the agent starts, then used again.

Usage: h2_tls_client.py PORT K

Prints "ready" and waits for a line on stdin; connects, GETs /h2/ok-warm, prints
"warm" and waits for a second line; then GETs /h2/ok-i (even i) or /h2/missing-i (odd
i) for i < K, one at a time on the same connection, and prints one JSON line:
{"statuses": {path: status}, "alpn": the protocol the server chose}.
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def get(sock, conn, port: int, path: str) -> int:
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                            (":authority", f"127.0.0.1:{port}"), (":path", path),
                            ("user-agent", "h2-tls-client")], end_stream=True)
    sock.sendall(conn.data_to_send())
    status = 0
    while True:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) \
                    and ev.stream_id == sid:
                sock.sendall(conn.data_to_send())
                return status
        sock.sendall(conn.data_to_send())


def main() -> int:
    port, k = int(sys.argv[1]), int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    get(sock, conn, port, "/h2/ok-warm")
    print("warm", flush=True)
    sys.stdin.readline()
    statuses = {}
    for i in range(k):
        path = f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}"
        statuses[path] = get(sock, conn, port, path)
    alpn = sock.selected_alpn_protocol()
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    print(json.dumps({"statuses": statuses, "alpn": alpn}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
