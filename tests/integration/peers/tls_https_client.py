#!/usr/bin/env python3
"""HTTPS client peer (python ``ssl`` over the system libssl.so.3, certificate not
verified: the tests use a self-signed certificate).

    tls_https_client.py PORT PATH... [--keepalive] [--wait-stdin]

* default: one ``urllib`` request (a new TCP + TLS connection) per PATH;
* ``--keepalive``: every PATH on ONE ``http.client.HTTPSConnection``;
* ``--wait-stdin``: read one line from stdin before the first request (lets the test
  select this process by pid before it sends anything).

Prints one JSON line: {"statuses": [...], "local_ports": [...]}.
"""

import argparse
import http.client
import json
import ssl
import sys
import urllib.error
import urllib.request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--keepalive", action="store_true")
    ap.add_argument("--wait-stdin", action="store_true")
    a = ap.parse_args()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if a.wait_stdin:
        sys.stdin.readline()
    statuses, ports = [], []
    if a.keepalive:
        conn = http.client.HTTPSConnection("127.0.0.1", a.port, context=ctx, timeout=20)
        for p in a.paths:
            conn.request("GET", p)
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
            ports.append(conn.sock.getsockname()[1])
        conn.close()
    else:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        for p in a.paths:
            try:
                with opener.open(f"https://127.0.0.1:{a.port}{p}", timeout=20) as r:
                    r.read()
                    statuses.append(r.status)
            except urllib.error.HTTPError as e:
                e.read()
                statuses.append(e.code)
    print(json.dumps({"statuses": statuses, "local_ports": ports}), flush=True)


if __name__ == "__main__":
    main()
