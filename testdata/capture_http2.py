#!/usr/bin/env python3
"""Records real HTTP/2 traffic for the http2 parser tests (testdata/http2/).

A TCP proxy sits between a client and a server and writes every recv() it
makes as one record: 1 byte direction (b'C' client->server, b'S'
server->client), 4-byte big-endian length, then the bytes. One file per
proxied connection.

Scenarios:
  grpc_health  Python grpcio server with the standard health service:
               Check OK, Check with traceparent metadata, Check of an
               unknown service (NOT_FOUND = 5), Watch streaming two updates
               then cancelled by the client (RST_STREAM CANCEL).
  nginx_curl   nginx `listen PORT http2` (prior knowledge) and
               `curl --http2-prior-knowledge` with a traceparent header.
  nginx_h2c    the same nginx and a python-h2 client opening four streams
               at once on one connection (200, 404, 200, 100 kB body).
  h2c_upgrade  `curl --http2` (HTTP/1.1 Upgrade: h2c) against a python-h2
               server: stream 1 is the upgraded request.
  hypercorn_upgrade  the same curl against hypercorn (the ASGI app of
               tests/integration/peers): 101 without a reason phrase, its
               END_STREAM in an empty DATA frame of its own.

Usage: python3 testdata/capture_http2.py [outdir [scenario ...]]
Needs: grpcio, grpcio-health-checking, h2, hypercorn, nginx, curl.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from recording_proxy import free_port

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "http2")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Proxy:
    """Accepts connections on a free port and forwards them to `target`,
    recording both directions into OUT/<name>[_<n>].bin."""

    def __init__(self, name, target_port):
        self.name = name
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.n = 0
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target_port))
            suffix = "" if self.n == 0 else f"_{self.n}"
            self.n += 1
            f = open(os.path.join(OUT, f"{self.name}{suffix}.bin"), "wb")
            lock = threading.Lock()
            done = []
            for src, dst, tag in ((c, s, b"C"), (s, c, b"S")):
                t = threading.Thread(target=self._pump, args=(src, dst, tag, f, lock, done), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pump(src, dst, tag, f, lock, done):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with lock:
                f.write(tag + struct.pack(">I", len(data)) + data)
                f.flush()
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with lock:
            done.append(tag)
            if len(done) == 2:
                f.close()

    def finish(self):
        for t in self.threads:
            t.join(timeout=5)
        self.sock.close()


def grpc_health():
    import grpc
    from concurrent import futures
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = Proxy("grpc_health", port)
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        r = stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        stub.Check(health_pb2.HealthCheckRequest(service=""), metadata=(("traceparent", TRACEPARENT), ("tracestate", "k=v")))
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            raise SystemExit("expected NOT_FOUND")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = next(watch)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        second = next(watch)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        time.sleep(0.3)
        # One more unary call after the cancel, on the same connection.
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        stub.Check(health_pb2.HealthCheckRequest(service=""))
    time.sleep(0.3)
    server.stop(0)
    proxy.finish()


NGINX_CONF = """
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    server {{
        listen 127.0.0.1:{port} http2;
        root {dir}/www;
        location /echo {{ return 200 "hello over h2c\\n"; }}
    }}
}}
"""


def nginx_h2c():
    d = tempfile.mkdtemp()
    os.makedirs(f"{d}/www")
    with open(f"{d}/www/index.html", "w") as f:
        f.write("<html><body>" + "x" * 3000 + "</body></html>\n")
    with open(f"{d}/www/big.bin", "wb") as f:
        f.write(os.urandom(100_000))
    port = free_port()
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port))
    nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d])
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        # curl 7.88 fails to reuse a prior-knowledge connection (error 16 on
        # the second URL), so curl makes one request and python-h2 several
        # concurrent ones on one connection.
        proxy = Proxy("nginx_curl", port)
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", "-H", f"traceparent: {TRACEPARENT}",
             f"http://127.0.0.1:{proxy.port}/index.html"],
            check=True,
        )
        time.sleep(0.3)
        proxy.finish()
        proxy = Proxy("nginx_h2c", port)
        h2_client(proxy.port, ["/index.html", "/missing", "/echo", "/big.bin"])
        time.sleep(0.3)
        proxy.finish()
    finally:
        nginx.terminate()
        nginx.wait()


def h2_client(port, paths):
    """Opens all streams at once, reads until every one ended."""
    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    open_streams = set()
    for i, path in enumerate(paths):
        sid = conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
                   ("user-agent", "python-h2")]
        if i == 0:
            headers.append(("traceparent", TRACEPARENT))
        conn.send_headers(sid, headers, end_stream=True)
        open_streams.add(sid)
    sock.sendall(conn.data_to_send())
    while open_streams:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                open_streams.discard(ev.stream_id)
        sock.sendall(conn.data_to_send())
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()


def h2c_upgrade():
    """A python-h2 server that accepts `Upgrade: h2c`, and `curl --http2`."""
    import h2.config
    import h2.connection
    import h2.events

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        settings = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"http2-settings:")][0]
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_upgrade_connection(settings)
        body = b"upgraded\n"
        conn.send_headers(1, [(":status", "200"), ("content-length", str(len(body)))])
        conn.send_data(1, body, end_stream=True)
        c.sendall(conn.data_to_send())
        data = rest
        while True:
            if data:
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        c.close()
                        return
                c.sendall(conn.data_to_send())
            data = c.recv(65536)
            if not data:
                break
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    proxy = Proxy("h2c_upgrade", port)
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2", f"http://127.0.0.1:{proxy.port}/up"], check=True)
    t.join(timeout=5)
    time.sleep(0.3)
    proxy.finish()
    srv.close()


def hypercorn_upgrade():
    app_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration", "peers")
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "hypercorn", "--workers", "0", "--bind", f"127.0.0.1:{port}",
                            "h2c_asgi_app:app"], cwd=app_dir)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        proxy = Proxy("hypercorn_upgrade", port)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2", f"http://127.0.0.1:{proxy.port}/h2/ok-1"],
                       check=True)
        time.sleep(0.3)
        proxy.finish()
    finally:
        srv.terminate()
        srv.wait()


SCENARIOS = {f.__name__: f for f in (grpc_health, nginx_h2c, h2c_upgrade, hypercorn_upgrade)}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name in sys.argv[2:] or SCENARIOS:
        SCENARIOS[name]()
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))
