#!/usr/bin/env python3
"""Records real memcached text-protocol traffic into testdata/memcached/ for
the parser unit tests and as fuzz seeds.

A small TCP proxy sits between clients (raw sockets, as nc would send, and
pymemcache) and a real memcached and stores every recv() it makes, both
directions, in order. File format (shared with the other DB parsers'
captures): a sequence of records, each = 1 byte direction (b'C'
client->server, b'S' server->client), 4-byte big-endian length, then the
bytes of that one recv().

Run as: python3 testdata/capture_memcached.py <server_port>
against e.g. memcached -p P -U 0 -l 127.0.0.1 -u nobody
"""
import os, socket, sys

from recording_proxy import Proxy

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memcached")


def talk(s, data, until, timeout=2.0):
    """Sends, then reads until `until` ends what was received."""
    s.sendall(data)
    s.settimeout(timeout)
    buf = b""
    while not buf.endswith(until):
        try:
            b = s.recv(65536)
        except socket.timeout:
            break
        if not b:
            break
        buf += b
    return buf


def main():
    upstream = int(sys.argv[1])
    os.makedirs(OUT, exist_ok=True)
    p = Proxy(upstream, OUT)

    # Line by line, as typed into nc.
    s = socket.create_connection(("127.0.0.1", p.port))
    for cmd, until in [
        (b"flush_all\r\n", b"OK\r\n"),
        (b"set user:1 0 0 5\r\nalice\r\n", b"\r\n"),
        (b"get user:1\r\n", b"END\r\n"),
        (b"get a b user:1\r\n", b"END\r\n"),
        (b"gets user:1\r\n", b"END\r\n"),
        (b"add user:1 0 0 1\r\nx\r\n", b"\r\n"),
        (b"append user:1 0 0 2\r\n!!\r\n", b"\r\n"),
        (b"touch user:1 100\r\n", b"\r\n"),
        (b"delete user:1\r\n", b"\r\n"),
        (b"delete user:1\r\n", b"\r\n"),
        (b"get user:1\r\n", b"END\r\n"),
        (b"set n 5 0 1\r\n7\r\n", b"\r\n"),
        (b"incr n 5\r\n", b"\r\n"),
        (b"decr n 2\r\n", b"\r\n"),
        (b"incr missing 1\r\n", b"\r\n"),
        (b"set s 0 0 3\r\nabc\r\n", b"\r\n"),
        (b"incr s 1\r\n", b"\r\n"),
        (b"bogus\r\n", b"\r\n"),
        (b"cas s 0 0 1 999\r\nz\r\n", b"\r\n"),
        (b"version\r\n", b"\r\n"),
        (b"verbosity 1\r\n", b"\r\n"),
        (b"stats\r\n", b"END\r\n"),
        (b"stats slabs\r\n", b"END\r\n"),
        (b"set q1 0 0 1 noreply\r\na\r\nset q2 0 0 1 noreply\r\nb\r\ndelete q3 noreply\r\nget q1 q2\r\n", b"END\r\n"),
    ]:
        talk(s, cmd, until)
    s.close()
    p.save("nc_basic")

    # Large values (one cut capture each way) and a multi-get of many.
    s = socket.create_connection(("127.0.0.1", p.port))
    big = b"v" * 100000
    talk(s, b"set big 0 0 %d\r\n%s\r\n" % (len(big), big), b"\r\n")
    talk(s, b"get big\r\n", b"END\r\n")
    req = b"".join(b"set k%03d 0 0 1000 noreply\r\n%s\r\n" % (i, b"x" * 1000) for i in range(100))
    s.sendall(req)
    talk(s, b"get " + b" ".join(b"k%03d" % i for i in range(100)) + b"\r\n", b"END\r\n")
    talk(s, b"version\r\n", b"\r\n")
    s.close()
    p.save("nc_large")

    # Meta commands, including quiet mode closed by mn.
    s = socket.create_connection(("127.0.0.1", p.port))
    for cmd, until in [
        (b"ms mk 2 T0\r\nhi\r\n", b"\r\n"),
        (b"mg mk v f t\r\n", b"\r\n"),
        (b"mg nokey v\r\n", b"\r\n"),
        (b"ma mcount N0 J5\r\n", b"\r\n"),
        (b"md mk\r\n", b"\r\n"),
        (b"mg mk v q k\r\nms mq 1 q\r\nx\r\nmg mq v q k O7\r\nmn\r\n", b"MN\r\n"),
    ]:
        talk(s, cmd, until)
    s.close()
    p.save("meta")

    # pymemcache: its own framing, noreply by default for storage commands.
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", p.port))
    c.set("py:a", "1")
    c.set_many({"py:b": "2", "py:c": "3"}, noreply=False)
    c.get_many(["py:a", "py:b", "py:c", "py:missing"])
    c.incr("py:a", 10)
    c.delete("py:b", noreply=False)
    c.get("py:b")
    try:
        c.incr("py:zz", "x")
    except Exception:
        pass
    c.close()
    p.save("pymemcache")
    p.srv.close()


if __name__ == "__main__":
    main()
