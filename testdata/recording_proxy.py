"""The recording TCP proxy shared by the testdata/capture_*.py scripts.

It sits between real clients and a real server and stores every recv() it
makes, both directions, one file per connection: a sequence of records,
each 1 byte direction (C client->server, S server->client), 4-byte
big-endian length, then the bytes.
"""
import os, socket, struct, threading


def free_port():
    """A port nothing listens on now (for the real server a script starts)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proxy:
    """Forwards every accepted connection to the server, recording each one."""

    def __init__(self, upstream, out_dir):
        self.upstream = upstream
        self.out_dir = out_dir
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.conns = []  # one list of (dir, bytes) per connection, in accept order
        self.lock = threading.Lock()
        self.threads = []
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.upstream))
            for sock in (c, s):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            records = []
            with self.lock:
                self.conns.append(records)
            for src, dst, d in ((c, s, b"C"), (s, c, b"S")):
                t = threading.Thread(target=self.pump, args=(src, dst, d, records))
                t.start()
                self.threads.append(t)

    def pump(self, src, dst, d, records):
        while True:
            try:
                b = src.recv(65536)
            except OSError:
                b = b""
            if not b:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self.lock:
                records.append((d, b))
            try:
                dst.sendall(b)
            except OSError:
                return

    def save(self, name):
        """Writes every connection recorded so far into one file per connection."""
        for t in self.threads:
            t.join(10)
        self.threads = []
        with self.lock:
            conns, self.conns = self.conns, []
        for i, records in enumerate(conns):
            fname = name if len(conns) == 1 else f"{name}.{i}"
            with open(os.path.join(self.out_dir, fname + ".cap"), "wb") as f:
                for d, b in records:
                    f.write(d + struct.pack(">I", len(b)) + b)

