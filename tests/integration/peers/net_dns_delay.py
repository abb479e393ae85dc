#!/usr/bin/env python3
"""A UDP DNS relay that adds a fixed delay: every datagram received on
--listen ADDR:PORT is forwarded, --delay seconds later, to the real DNS server at
--upstream ADDR:PORT (dnsmasq), and the server's answer is sent back to the client as
is. Stands in for `tc netem delay` on kernels without netem.

Usage: net_dns_delay.py --listen 10.200.1.2:53 --upstream 10.200.1.2:5353 --delay 0.2
"""

import argparse
import socket
import sys
import threading
import time


def hostport(s: str):
    h, _, p = s.rpartition(":")
    return h, int(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=hostport, required=True)
    ap.add_argument("--upstream", type=hostport, required=True)
    ap.add_argument("--delay", type=float, required=True)
    a = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(a.listen)
    print(f"relaying {a.listen} -> {a.upstream} after {a.delay}s", flush=True)

    def relay(query: bytes, client) -> None:
        time.sleep(a.delay)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(query, a.upstream)
            try:
                answer, _ = up.recvfrom(65535)
            except socket.timeout:
                print("upstream timeout", file=sys.stderr, flush=True)
                return
        sock.sendto(answer, client)

    while True:
        query, client = sock.recvfrom(65535)
        threading.Thread(target=relay, args=(query, client), daemon=True).start()


if __name__ == "__main__":
    main()
