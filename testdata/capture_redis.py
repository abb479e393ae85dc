#!/usr/bin/env python3
"""Records real Redis traffic into testdata/redis/ for the parser unit tests
and as fuzz seeds.

A small TCP proxy sits between real clients (redis-cli, redis-benchmark,
raw sockets) and a real redis-server and stores every recv() it makes, both
directions, in order. File format (shared with the other DB parsers'
captures): a sequence of records, each = 1 byte direction (b'C'
client->server, b'S' server->client), 4-byte big-endian length, then the
bytes of that one recv().

Run as: python3 testdata/capture_redis.py <server_port>
against e.g. redis-server --port P --save '' --appendonly no
"""
import os, socket, subprocess, sys

from recording_proxy import Proxy

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "redis")


def cli(port, *args, stdin=None):
    subprocess.run(["redis-cli", "-p", str(port), *args], input=stdin,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_some(s, until, timeout=2.0):
    """Reads until `until` bytes appear in what was received."""
    s.settimeout(timeout)
    buf = b""
    while until not in buf:
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
    # Setup straight to the server (not recorded).
    direct = ["redis-cli", "-p", str(upstream)]
    subprocess.run(direct + ["FLUSHALL"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(direct + ["RPUSH", "bigl"] + [f"element-{i}" for i in range(3000)],
                   check=True, stdout=subprocess.DEVNULL)
    p = Proxy(upstream, OUT)

    # redis-cli reading commands from stdin: one connection, one at a time.
    big = "x" * 20000
    cli(p.port, stdin=("\n".join([
        "SET user:1 alice",
        "GET user:1",
        "RPUSH list a b c",
        "INCR list",
        "FOOBAR x",
        "HSET h f1 v1 f2 v2",
        "HGETALL h",
        "MGET user:1 list missing",
        "DEL user:1 h",
        "CLIENT SETNAME app",
        "CONFIG GET maxmemory",
        f"SET big {big}",
        "GET big",
        "LRANGE bigl 0 -1",
        "SELECT 2",
        "SET k v",
        "GET k",
        "EXISTS k",
    ]) + "\n").encode())
    p.save("cli_simple")

    # RESP3 through redis-cli -3 (sends HELLO 3 first): maps, sets, doubles,
    # transactions and an aborted transaction.
    cli(p.port, "-3", stdin=("\n".join([
        "HSET h3 a 1 b 2",
        "HGETALL h3",
        "SADD s3 x y",
        "SMEMBERS s3",
        "ZADD z3 1.5 m",
        "ZSCORE z3 m",
        "GET nothing",
        "MULTI",
        "SET t 1",
        "INCR t",
        "LPUSH t x",
        "EXEC",
        "MULTI",
        "SET t 2",
        "NOSUCHCMD",
        "EXEC",
        "MULTI",
        "SET t 3",
        "DISCARD",
        "SELECT 5",
        "PING",
    ]) + "\n").encode())
    p.save("cli_resp3")

    # Pipelining: redis-benchmark, one client, 16 commands per write.
    subprocess.run(["redis-benchmark", "-p", str(p.port), "-c", "1", "-P", "16", "-n", "100",
                    "-t", "set,get", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.save("benchmark_p16")

    # Mass insertion protocol.
    cli(p.port, "--pipe", stdin=b"".join(resp("SET", f"pipe:{i}", f"value-{i}") for i in range(200)))
    p.save("cli_pipe")

    # Pub/Sub, RESP2: confirmations and deliveries on the subscriber.
    sub = socket.create_connection(("127.0.0.1", p.port))
    sub.sendall(resp("SUBSCRIBE", "ch1", "ch2"))
    read_some(sub, b"ch2")
    pub = socket.create_connection(("127.0.0.1", upstream))
    pub.sendall(resp("PUBLISH", "ch1", "hello") + resp("PUBLISH", "ch2", "world"))
    read_some(pub, b":1\r\n:1\r\n")
    read_some(sub, b"world")
    sub.sendall(resp("PING"))
    read_some(sub, b"pong")
    sub.sendall(resp("UNSUBSCRIBE"))
    read_some(sub, b":0\r\n")
    sub.sendall(resp("GET", "k"))
    read_some(sub, b"\r\n")
    sub.close()
    pub.close()
    p.save("pubsub_resp2")

    # Pub/Sub, RESP3: everything out-of-band is a push.
    sub = socket.create_connection(("127.0.0.1", p.port))
    sub.sendall(resp("HELLO", "3"))
    read_some(sub, b"modules")
    sub.sendall(resp("SUBSCRIBE", "ch1"))
    read_some(sub, b":1\r\n")
    pub = socket.create_connection(("127.0.0.1", upstream))
    pub.sendall(resp("PUBLISH", "ch1", "hi"))
    read_some(pub, b"\r\n")
    read_some(sub, b"hi\r\n")
    sub.sendall(resp("GET", "k") + resp("UNSUBSCRIBE", "ch1"))
    read_some(sub, b":0\r\n")
    sub.close()
    pub.close()
    p.save("pubsub_resp3")

    # A pipelined transaction in one write, and inline commands.
    s = socket.create_connection(("127.0.0.1", p.port))
    s.sendall(resp("MULTI") + resp("SET", "a", "1") + resp("HGETALL", "missing")
              + resp("INCR", "a") + resp("EXEC"))
    read_some(s, b":2\r\n")
    s.sendall(b"PING\r\nSELECT 3\r\n")
    read_some(s, b"+OK\r\n")
    s.close()
    p.save("raw_multi_inline")
    p.srv.close()


if __name__ == "__main__":
    main()
