#!/usr/bin/env python3
"""Plain HTTP/2 (h2c, prior knowledge) client built on the ``h2`` package and a plain
socket: opens N streams at once on ONE connection, then reads every response.

Usage: h2_raw_client.py PORT N PREFIX [PIECE]

Stream i requests GET PREFIX/ok-i for even i and PREFIX/missing-i for odd i. Prints
"ready", waits for a line on stdin (so the test can select this pid first), then one
JSON line: {"statuses": {path: status}, "max_open": streams open at once,
"iovecs": iovec entries of the write that opened them, "max_read": largest recv}.

With PIECE, the write that opens the N streams is ONE sendmsg whose iovec array holds
the frames cut into PIECE-byte pieces (as gRPC's C core sends a busy channel's calls:
many small iovecs in one call).
"""

import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events


def main() -> int:
    port, n, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    piece = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    print("ready", flush=True)
    sys.stdin.readline()
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    paths = {}
    for i in range(n):
        sid = conn.get_next_available_stream_id()
        path = f"{prefix}/ok-{i}" if i % 2 == 0 else f"{prefix}/missing-{i}"
        paths[sid] = path
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                (":authority", f"127.0.0.1:{port}"), (":path", path),
                                ("user-agent", "h2-raw-client")], end_stream=True)
    max_open = conn.open_outbound_streams
    burst = conn.data_to_send()  # every HEADERS frame in one write
    iovecs = 1
    if piece:
        pieces = [burst[k:k + piece] for k in range(0, len(burst), piece)]
        iovecs = len(pieces)
        sent = sock.sendmsg(pieces)
        if sent != len(burst):
            print(f"sendmsg sent {sent} of {len(burst)} bytes", file=sys.stderr)
            return 1
    else:
        sock.sendall(burst)
    # Let every response queue up: the first read then carries many streams' frames.
    time.sleep(0.3)
    statuses, done, max_read = {}, set(), 0
    while len(done) < n:
        data = sock.recv(65536)
        if not data:
            break
        max_read = max(max_read, len(data))
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                statuses[paths[ev.stream_id]] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done.add(ev.stream_id)
        sock.sendall(conn.data_to_send())
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    print(json.dumps({"statuses": statuses, "max_open": max_open, "iovecs": iovecs,
                      "max_read": max_read}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
