#!/usr/bin/env python3
"""Records real DNS traffic into testdata/dns/ for the parser unit tests and
as fuzz seeds.

Starts dnsmasq on a free local port and puts a small recording proxy (UDP
and TCP) between it and real clients: dig, and glibc's resolver (getent
ahosts, run in a private mount namespace whose /etc/resolv.conf points at
the proxy on 127.0.0.77:53). Each scenario is one file in the format shared
with the other captures: records of 1 byte direction (b'C' client->server,
b'S' server->client), 4-byte big-endian length, then the bytes of one
datagram (UDP) or one recv() (TCP).

Run as root: python3 testdata/capture_dns.py
"""
import os, select, socket, struct, subprocess, tempfile, threading, time

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns")


def free_port():
    u, t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()
    for p in range(25353, 26353):
        try:
            u.bind(("127.0.0.1", p))
            t.bind(("127.0.0.1", p))
            u.close(), t.close()
            return p
        except OSError:
            u.close(), t.close()
            u, t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()
    raise RuntimeError("no free port")


def save(name, records):
    with open(os.path.join(OUT, name), "wb") as f:
        for d, b in records:
            f.write(d + struct.pack(">I", len(b)) + b)


def udp_proxy(upstream, client_cmd, name, drop=0, bind=("127.0.0.1", 0)):
    """Runs client_cmd (PORT replaced) against a UDP proxy; the first `drop`
    queries are recorded but not forwarded (to provoke retries/timeouts)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ls.bind(bind)
    port = ls.getsockname()[1]
    up = {}  # client addr -> upstream socket
    records = []
    proc = subprocess.Popen([c.replace("PORT", str(port)) for c in client_cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        socks = [ls] + list(up.values())
        r, _, _ = select.select(socks, [], [], 0.3)
        if not r and proc.poll() is not None:
            break
        for s in r:
            if s is ls:
                data, addr = ls.recvfrom(65535)
                records.append((b"C", data))
                if drop > 0:
                    drop -= 1
                    continue
                if addr not in up:
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    u.connect(("127.0.0.1", upstream))
                    up[addr] = u
                up[addr].send(data)
            else:
                data = s.recv(65535)
                records.append((b"S", data))
                addr = next(a for a, u in up.items() if u is s)
                ls.sendto(data, addr)
    save(name, records)


def tcp_proxy(upstream, client_cmd, name):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    port = ls.getsockname()[1]
    records, lock = [], threading.Lock()
    proc = subprocess.Popen([c.replace("PORT", str(port)) for c in client_cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c, _ = ls.accept()
    s = socket.create_connection(("127.0.0.1", upstream))

    def pump(src, dst, d):
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
            with lock:
                records.append((d, b))
            dst.sendall(b)

    ts = [threading.Thread(target=pump, args=a) for a in ((c, s, b"C"), (s, c, b"S"))]
    for t in ts:
        t.start()
    proc.wait(10)
    for t in ts:
        t.join(5)
    c.close(), s.close()
    save(name, records)


def main():
    os.makedirs(OUT, exist_ok=True)
    port = free_port()
    dnsmasq = subprocess.Popen([
        "/usr/sbin/dnsmasq", "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
        "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        "--address=/test.example/10.1.2.3", "--address=/test.example/fd00::1",
        "--address=/nx.example/", "--ptr-record=3.2.1.10.in-addr.arpa,test.example",
        "--mx-host=test.example,mail.test.example,10",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        dig = ["dig", "@127.0.0.1", "-p", "PORT", "+time=1"]
        udp_proxy(port, dig + ["Test.Example", "A"], "dig_a.cap")
        udp_proxy(port, dig + ["test.example", "AAAA"], "dig_aaaa.cap")
        udp_proxy(port, dig + ["test.example", "MX"], "dig_mx.cap")
        udp_proxy(port, dig + ["-x", "10.1.2.3"], "dig_ptr.cap")
        udp_proxy(port, dig + ["host.nx.example", "A"], "dig_nxdomain.cap")
        udp_proxy(port, dig + ["nope.invalid", "A"], "dig_refused.cap")
        udp_proxy(port, dig + ["+tries=2", "test.example", "A"], "dig_retry.cap", drop=1)
        udp_proxy(port, dig + ["+tries=1", "test.example", "A"], "dig_timeout.cap", drop=1)
        tcp_proxy(port, dig + ["+tcp", "test.example", "A"], "dig_tcp.cap")
        tcp_proxy(port, dig + ["+tcp", "+keepopen", "test.example", "A", "test.example", "AAAA"],
                  "dig_tcp_keepopen.cap")
        # glibc: getent in its own mount namespace with a resolv.conf naming the proxy.
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as rc:
            rc.write("nameserver 127.0.0.77\noptions timeout:1 attempts:1\n")
        udp_proxy(port, ["unshare", "-m", "sh", "-c",
                         f"mount --bind {rc.name} /etc/resolv.conf && getent ahosts test.example"],
                  "glibc_ahosts.cap", bind=("127.0.0.77", 53))
        os.unlink(rc.name)
    finally:
        dnsmasq.kill()
        dnsmasq.wait()


if __name__ == "__main__":
    main()
