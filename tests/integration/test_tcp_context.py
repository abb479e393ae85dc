"""Trace context across hosts in a TCP header option (context_propagation: tcp_option).

Three network namespaces stand for two hosts and a middlebox:

    A (client host) --veth-- R (router: NAT masquerade, Linux bridge) --veth/bridge-- B (server host)

A real client (curl) on A, a real server (python http.server) on B, and one agent per
side, each restricted to its host's process (agent A: executable name curl; agent B: the
server's pid), with same-host 4-tuple linking off: after the NAT the server sees R's
address, and nothing but the TCP option can tie its span to the client's. The spans
are decoded from the agents' OTLP by the official opentelemetry-proto package (sink),
and tcpdump on B's interface shows the option on the wire.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List
from urllib.parse import urlsplit

import pytest

from conftest import CURL, build_go_peer, report
from netns import IP, Topology, sh, two_hosts  # noqa: F401 (fixture)

HTTP_PORT = 18090
WIRE_KIND = 253
WIRE_EXID = "6174"
TCPDUMP = "/usr/bin/tcpdump"


class NatTopology(Topology):
    """A -- R -- B. R forwards between 10.201.n.0/24 (A) and 10.202.n.0/24 (B), reaches
    B through a bridge and masquerades A's connections, so B sees R's address."""

    def create(self) -> "NatTopology":
        self.r = self.a[:-1] + "r"
        self.ra = self.va.replace("va", "ra", 1)
        self.rb = self.vb.replace("vb", "rb", 1)
        self.br = self.va.replace("va", "br", 1)
        n = self.n
        self.ip_a, self.gw_a = f"10.201.{n}.1", f"10.201.{n}.254"
        self.ip_b, self.gw_b = f"10.202.{n}.2", f"10.202.{n}.254"
        for ns in (self.a, self.r, self.b):
            sh([IP, "netns", "add", ns])
            self.created.append(ns)
        sh([IP, "link", "add", self.va, "netns", self.a, "type", "veth",
            "peer", "name", self.ra, "netns", self.r])
        sh([IP, "link", "add", self.vb, "netns", self.b, "type", "veth",
            "peer", "name", self.rb, "netns", self.r])
        sh([IP, "-n", self.r, "link", "add", self.br, "type", "bridge"])
        sh([IP, "-n", self.r, "link", "set", self.rb, "master", self.br])
        for ns, dev, addr in ((self.a, self.va, self.ip_a), (self.r, self.ra, self.gw_a),
                              (self.r, self.br, self.gw_b), (self.b, self.vb, self.ip_b)):
            sh([IP, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        for ns, dev in ((self.a, self.va), (self.r, self.ra), (self.r, self.rb),
                        (self.r, self.br), (self.b, self.vb), (self.a, "lo"),
                        (self.r, "lo"), (self.b, "lo")):
            sh([IP, "-n", ns, "link", "set", dev, "up"])
        sh([IP, "-n", self.a, "route", "add", "default", "via", self.gw_a])
        sh([IP, "-n", self.b, "route", "add", "default", "via", self.gw_b])
        self.sysctl(self.r, "net.ipv4.ip_forward", 1)
        self.run(self.r, ["nft", "add", "table", "ip", "nat"])
        self.run(self.r, ["nft", "add chain ip nat post { type nat hook postrouting "
                                 "priority 100 ; }"])
        self.run(self.r, ["nft", "add", "rule", "ip", "nat", "post", "oifname", self.br,
                          "masquerade"])
        probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(3)\n"
                 "try:\n    s.connect((sys.argv[1], 9))\nexcept ConnectionRefusedError:\n"
                 "    print('refused')\n")
        cp = self.run(self.a, [sys.executable, "-c", probe, self.ip_b], check=False)
        if cp.stdout.strip() != "refused":
            raise RuntimeError(f"A cannot reach B through R: {cp.stdout} {cp.stderr}")
        return self


@pytest.fixture
def nat_hosts(require_root):
    topo = NatTopology("w")
    try:
        yield topo.create()
    finally:
        topo.cleanup()


def agent_env(**extra) -> dict:
    env = {"AUTOTEL_SAME_HOST_LINKING": "false",
           "AUTOTEL_CONTEXT_PROPAGATION": "tcp_option"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def serve(topo: NatTopology, tmp: Path, files: int = 8):
    docroot = tmp / "docroot"
    docroot.mkdir()
    for i in range(files):
        (docroot / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    proc = topo.popen(topo.b, [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                               topo.ip_b, "--directory", str(docroot)],
                      log=tmp / "http_server.log")
    topo.wait_port(topo.b, topo.ip_b, HTTP_PORT, proc=proc)
    return proc


def curl(topo: NatTopology, *paths: str) -> subprocess.CompletedProcess:
    """One curl process in A fetching ``paths`` over one keep-alive connection."""
    urls = [f"http://{topo.ip_b}:{HTTP_PORT}{p}" for p in paths]
    sinks = [a for _ in urls for a in ("-o", "/dev/null")]
    return topo.run(topo.a, [CURL, "-sS", "--noproxy", "*", *sinks,
                             "-w", "%{http_code}\\n", *urls], check=False)


def show(spans: List[dict]) -> str:
    return "\n".join(f"  {s['kind']} {s['name']} "
                     f"{s['attrs'].get('url.path') or s['attrs'].get('url.full')} "
                     f"pid={s['resource'].get('process.pid')} trace={s['trace_id']} "
                     f"span={s['span_id']} parent={s['parent_span_id'] or '-'}"
                     for s in spans) or "  (none)"


def start_tcpdump(topo: NatTopology, tmp: Path) -> tuple:
    pcap = tmp / "b.pcap"
    log = tmp / "tcpdump.log"
    proc = topo.popen(topo.b, [TCPDUMP, "-i", topo.vb, "-U", "-n", "-s", "128", "-w",
                               str(pcap), f"tcp port {HTTP_PORT}"], log=log)
    deadline = time.monotonic() + 10
    while "listening on" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, pcap


def wire_options(pcap: Path) -> List[str]:
    """The hex payload of every kind-253 option with our ExID that tcpdump decoded in
    segments towards the server (tcpdump prints unknown options as ``unknown-253 0x..``)."""
    out = subprocess.run([TCPDUMP, "-r", str(pcap), "-n", "-v", f"dst port {HTTP_PORT}"],
                         capture_output=True, text=True, timeout=30).stdout
    found = re.findall(r"unknown-253 0x([0-9a-f]+)", out)
    return [h[len(WIRE_EXID):] for h in found if h.startswith(WIRE_EXID)]


def test_server_span_parent_is_client_span_across_nat(nat_hosts, start_agent, sink, tmp_path):
    """Four one-request curls and one curl with three requests on one keep-alive
    connection: every server span on B has the curl span of the same path as parent
    (same trace id), and the ids are on the wire in B's capture."""
    topo = nat_hosts
    server = serve(topo, tmp_path)
    dump, pcap = start_tcpdump(topo, tmp_path)
    start_agent(agent_env(AUTOTEL_PIDS=server.pid))
    start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^curl$"))

    runs = [curl(topo, f"/f{i}.txt") for i in range(4)]
    runs.append(curl(topo, "/f4.txt", "/f5.txt", "/f6.txt"))
    codes = [c for r in runs for c in r.stdout.split()]
    report("HTTP 200 through the NAT", codes.count("200"), 7)
    assert codes == ["200"] * 7, [(r.returncode, r.stdout, r.stderr) for r in runs]
    curl_pids = {r.pid for r in runs}

    clients = sink.wait_for_spans(lambda s: s["kind"] == "CLIENT" and
                                  s["resource"].get("process.pid") in curl_pids,
                                  count=7, timeout=20)
    servers = sink.wait_for_spans(lambda s: s["kind"] == "SERVER" and
                                  s["resource"].get("process.pid") == server.pid,
                                  count=7, timeout=20, settle=1.0)
    print("client spans (host A):\n" + show(clients) + "\nserver spans (host B):\n" +
          show(servers))
    by_path = {urlsplit(c["attrs"].get("url.full", "")).path: c for c in clients}
    linked = [s for s in servers
              if (c := by_path.get(s["attrs"].get("url.path"))) is not None
              and s["parent_span_id"] == c["span_id"] and s["trace_id"] == c["trace_id"]]
    # The server saw R's address, not A's: the 4-tuples differ across the NAT.
    natted = [s for s in servers if s["attrs"].get("client.address") == topo.gw_b]

    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)
    on_wire = set(wire_options(pcap))
    sent = {c["trace_id"] + c["span_id"] for c in clients}
    report("client spans (curl, host A)", len(clients), 7)
    report("server spans (http.server, host B)", len(servers), 7)
    report("server spans whose parent is the curl span of the same path", len(linked), 7)
    report("server spans that saw the NAT address as client", len(natted), 7)
    report("client trace+span ids found in kind-253 options on B's wire",
           len(sent & on_wire), 7)
    assert len(clients) == 7 and len(servers) == 7, show(clients + servers)
    assert len(natted) == 7, show(servers)
    assert len(linked) == 7, show(clients + servers)
    assert sent <= on_wire, f"on the wire: {sorted(on_wire)}\nsent: {sorted(sent)}"


def test_one_side_without_agent(nat_hosts, start_agent, sink, tmp_path):
    """Only the client side runs the agent: the server's kernel ignores the unknown
    option (every request answered) and the server host's trace is unaffected. Then
    only the server side runs it: server spans are roots (nothing to link to)."""
    topo = nat_hosts
    server = serve(topo, tmp_path)
    client_agent = start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^curl$"))
    runs = [curl(topo, f"/f{i}.txt", f"/f{i + 1}.txt") for i in range(3)]
    codes = [c for r in runs for c in r.stdout.split()]
    report("HTTP 200 with the agent on the client side only", codes.count("200"), 6)
    assert codes == ["200"] * 6, [(r.returncode, r.stdout, r.stderr) for r in runs]
    clients = sink.wait_for_spans(lambda s: s["kind"] == "CLIENT" and
                                  s["resource"].get("process.pid") in {r.pid for r in runs},
                                  count=6, timeout=20)
    report("client spans", len(clients), 6)
    assert len(clients) == 6, show(clients)
    assert client_agent.stop() == 0

    start_agent(agent_env(AUTOTEL_PIDS=server.pid))
    runs = [curl(topo, "/f0.txt") for _ in range(3)]
    codes = [c for r in runs for c in r.stdout.split()]
    report("HTTP 200 with the agent on the server side only", codes.count("200"), 3)
    assert codes == ["200"] * 3, [(r.returncode, r.stdout, r.stderr) for r in runs]
    servers = sink.wait_for_spans(lambda s: s["kind"] == "SERVER" and
                                  s["resource"].get("process.pid") == server.pid,
                                  count=3, timeout=20, settle=1.0)
    report("server spans", len(servers), 3)
    report("server spans with a parent", sum(bool(s["parent_span_id"]) for s in servers), 0)
    assert len(servers) == 3 and not any(s["parent_span_id"] for s in servers), show(servers)


PEERS = Path(__file__).resolve().parent / "peers"
GRPC_PORT = 18091
REDIS_PORT = 18092
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def linked_pairs(clients: List[dict], servers: List[dict]) -> List[tuple]:
    """(client, server) pairs where the server span's parent is the client span."""
    by_id = {c["span_id"]: c for c in clients}
    return [(by_id[s["parent_span_id"]], s) for s in servers
            if s["parent_span_id"] in by_id
            and by_id[s["parent_span_id"]]["trace_id"] == s["trace_id"]]


def test_grpc_calls_on_one_channel_link_across_nat(nat_hosts, start_agent, sink, tmp_path):
    """A grpcio client on A makes 8 Health/Check calls (6 SERVING, 2 NOT_FOUND) and one
    failing call on ONE channel (one HTTP/2 connection) to a grpcio server on B: each
    server span's parent is the client span of the same call (same method, status)."""
    topo = nat_hosts
    env = {"GRPC_TEST_HOST": topo.ip_b, "PYTHONUNBUFFERED": "1"}
    server = topo.popen(topo.b, [sys.executable, str(PEERS / "h2_grpc_server.py"),
                                 str(GRPC_PORT)], log=tmp_path / "grpc_server.log",
                        env={**os.environ, **env})
    log = tmp_path / "grpc_server.log"
    deadline = time.monotonic() + 20  # grpcio listens on a v4-mapped IPv6 socket: ss
    while "listening on" not in log.read_text():  # shows [::ffff:..], so ask the server
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    client = subprocess.Popen(topo.cmd(topo.a, [sys.executable, str(PEERS / "h2_grpc_client.py"),
                                                str(GRPC_PORT), "unary", "6", "2"]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, **env})
    topo.procs.append(client)
    assert client.stdout.readline().strip() == "ready", client.stderr.read()
    start_agent(agent_env(AUTOTEL_PIDS=server.pid))
    start_agent(agent_env(AUTOTEL_PIDS=client.pid))
    out, err = client.communicate("go\n", timeout=60)
    assert client.returncode == 0, err
    calls = 9
    of = lambda pid, kind: lambda s: (s["kind"] == kind and  # noqa: E731
                                      s["resource"].get("process.pid") == pid)
    clients = sink.wait_for_spans(of(client.pid, "CLIENT"), count=calls, timeout=20)
    servers = sink.wait_for_spans(of(server.pid, "SERVER"), count=calls, timeout=20,
                                  settle=1.0)
    print("client spans (A):\n" + show(clients) + "\nserver spans (B):\n" + show(servers))
    pairs = linked_pairs(clients, servers)
    same_call = [(c, s) for c, s in pairs if c["name"] == s["name"] and
                 c["attrs"].get("rpc.grpc.status_code") == s["attrs"].get("rpc.grpc.status_code")]
    report("gRPC client spans (A)", len(clients), calls)
    report("gRPC server spans (B)", len(servers), calls)
    report("server spans whose parent is a client span (same trace)", len(pairs), calls)
    report("... of the same method and status code", len(same_call), calls)
    report("distinct parents", len({c["span_id"] for c, _ in pairs}), calls)
    assert len(clients) == calls and len(servers) == calls, show(clients + servers)
    assert len(same_call) == calls, show(clients + servers)
    assert len({c["span_id"] for c, _ in pairs}) == calls, show(clients + servers)


def test_redis_commands_link_across_nat(nat_hosts, start_agent, sink, tmp_path):
    """redis-cli on A, one process per command (SET, GET, INCR, a wrong-type error, and
    a 1 MiB SET that spans ~700 segments, each with the option: the MSS shrinks to make
    room, or the veth would drop them), to redis-server on B: each server-side DB
    span's parent is the redis-cli span."""
    topo = nat_hosts
    server = topo.popen(topo.b, [REDIS_SERVER, "--port", str(REDIS_PORT), "--bind", topo.ip_b,
                                 "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                        log=tmp_path / "redis.log")
    topo.wait_port(topo.b, topo.ip_b, REDIS_PORT, proc=server)
    start_agent(agent_env(AUTOTEL_PIDS=server.pid))
    start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^redis-cli$"))
    commands = [["SET", "k", "v"], ["GET", "k"], ["INCR", "n"], ["INCR", "k"]]
    runs = [topo.run(topo.a, [REDIS_CLI, "-h", topo.ip_b, "-p", str(REDIS_PORT), *c],
                     check=False) for c in commands]
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (1 << 20))
    with open(big, "rb") as f:
        up = subprocess.run(topo.cmd(topo.a, [REDIS_CLI, "-h", topo.ip_b, "-p",
                                              str(REDIS_PORT), "-x", "SET", "big"]),
                            stdin=f, capture_output=True, text=True, timeout=60)
    length = topo.run(topo.a, [REDIS_CLI, "-h", topo.ip_b, "-p", str(REDIS_PORT),
                               "STRLEN", "big"], check=False)
    runs += [up, length]
    report("redis-cli runs that exited 0", sum(r.returncode == 0 for r in runs), 6)
    report("1 MiB value stored through option-carrying segments",
           length.stdout.strip(), str(1 << 20))
    assert all(r.returncode == 0 for r in runs), [(r.stdout, r.stderr) for r in runs]
    assert length.stdout.strip() == str(1 << 20), (up.stdout, up.stderr, length.stdout)
    clients = sink.wait_for_spans(lambda s: s["kind"] == "CLIENT" and
                                  s["resource"].get("service.name") == "redis-cli",
                                  count=6, timeout=20)
    servers = sink.wait_for_spans(lambda s: s["kind"] == "SERVER" and
                                  s["resource"].get("process.pid") == server.pid,
                                  count=6, timeout=20, settle=1.0)
    print("client spans (A):\n" + show(clients) + "\nserver spans (B):\n" + show(servers))
    pairs = linked_pairs(clients, servers)
    same_op = [(c, s) for c, s in pairs if c["name"] == s["name"]]
    report("redis client spans (A)", len(clients), 6)
    report("redis server spans (B)", len(servers), 6)
    report("server spans whose parent is the client span of the same command",
           len(same_op), 6)
    assert len(clients) == 6 and len(servers) == 6, show(clients + servers)
    assert len(same_op) == 6, show(clients + servers)


PROXY_PORT = 18093


@pytest.mark.parametrize("proxy_kind", ["python", "go"])
@pytest.mark.parametrize("traced_curl", [True, False], ids=["curl-traced", "curl-untraced"])
def test_three_hops_one_trace(nat_hosts, start_agent, sink, tmp_path, traced_curl, proxy_kind):
    """curl (A) -> proxy (R) -> http.server (B), one agent per host. The proxy is
    peers/proxy.py (a stdlib ThreadingHTTPServer that fetches from the backend with
    urllib in the handler thread) or peers/go_ctx (net/http: the handler's request is
    written by the client connection's writer goroutine). Each request is ONE trace
    across the three hosts: the proxy's server span is the child of curl's span, its
    client span the child of its server span, and B's server span the child of the
    proxy's client span; the proxy sends the trace id it received, which its kernel
    learned from the incoming option. With curl untraced, the proxy's request is a
    root and takes the trace id its kernel chose for the outgoing call, so the backend
    still lands in the same trace."""
    topo = nat_hosts
    server = serve(topo, tmp_path)
    backend = f"http://{topo.ip_b}:{HTTP_PORT}"
    if proxy_kind == "go":
        exe = build_go_peer(tmp_path, False, peer="go_ctx")
        # Its HTTPS port is not used here; Redis is dialed only for /item.
        proxy = topo.popen(topo.r, [str(exe), str(PROXY_PORT), "0", str(PROXY_PORT + 10)],
                           log=tmp_path / "proxy.log",
                           env={**os.environ, "GO_CTX_HOST": topo.gw_a, "GO_CTX_BACKEND": backend})
        path = "/fetch/f{}.txt"
    else:
        proxy = topo.popen(topo.r, [sys.executable, str(PEERS / "proxy.py"), str(PROXY_PORT),
                                    backend], log=tmp_path / "proxy.log",
                           env={**os.environ, "PROXY_BIND": topo.gw_a})
        path = "/f{}.txt"
    topo.wait_port(topo.r, topo.gw_a, PROXY_PORT, proc=proxy)
    start_agent(agent_env(AUTOTEL_PIDS=server.pid))
    proxy_agent = start_agent(agent_env(AUTOTEL_PIDS=proxy.pid))
    if proxy_kind == "go":
        # The writer goroutines must start after the net/http client probes.
        deadline = time.time() + 30
        while "Go net/http client context probes attached" not in proxy_agent.stderr_text():
            assert time.time() < deadline, proxy_agent.logs_tail(40)
            time.sleep(0.1)
    if traced_curl:
        start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^curl$"))
    k = 4
    runs = [topo.run(topo.a, [CURL, "-sS", "--noproxy", "*", "-o", "/dev/null", "-w",
                              "%{http_code}", f"http://{topo.gw_a}:{PROXY_PORT}"
                              + path.format(i)], check=False) for i in range(k)]
    report("HTTP 200 through the proxy", sum(r.stdout == "200" for r in runs), k)
    assert all(r.stdout == "200" for r in runs), [(r.stdout, r.stderr) for r in runs]
    pids = {r.pid for r in runs}
    pid = lambda s: s["resource"].get("process.pid")  # noqa: E731
    curls = sink.wait_for_spans(lambda s: pid(s) in pids and s["kind"] == "CLIENT",
                                k if traced_curl else 0, 20 if traced_curl else 1)
    backend = sink.wait_for_spans(lambda s: pid(s) == server.pid, k, 20)
    proxied = sink.wait_for_spans(lambda s: pid(s) == proxy.pid, 2 * k, 20, settle=1.0)
    print("spans:\n" + show(curls + proxied + backend))
    p_server = [s for s in proxied if s["kind"] == "SERVER"]
    p_client = [s for s in proxied if s["kind"] == "CLIENT"]
    # Roots: curl's spans, or the proxy's server spans when curl is not traced.
    roots = curls if traced_curl else [s for s in p_server if not s["parent_span_id"]]
    chains = []
    for c in roots:
        ps = ([s for s in p_server if s["parent_span_id"] == c["span_id"]]
              if traced_curl else [c])
        pc = [s for s in p_client if ps and s["parent_span_id"] == ps[0]["span_id"]]
        b = [s for s in backend if pc and s["parent_span_id"] == pc[0]["span_id"]]
        if len(ps) == len(pc) == len(b) == 1 and \
                len({c["trace_id"], ps[0]["trace_id"], pc[0]["trace_id"], b[0]["trace_id"]}) == 1:
            chains.append((c, ps[0], pc[0], b[0]))
    report("proxy server / client spans", (len(p_server), len(p_client)), (k, k))
    report("backend server spans", len(backend), k)
    report("curl spans", len(curls), k if traced_curl else 0)
    report("complete (curl ->) proxy -> proxy call -> backend chains in one trace",
           len(chains), k)
    assert len(p_server) == k and len(p_client) == k and len(backend) == k, \
        show(curls + proxied + backend)
    assert len(chains) == k, show(curls + proxied + backend)


MD5_PORT = 18094


def test_no_option_room_falls_back(two_hosts, start_agent, sink, tmp_path):
    """Connections signed with TCP MD5 (RFC 2385: 18 bytes, plus 12 for timestamps) have
    no room for the 28-byte option: every request still succeeds, the option is left
    out, and the agent counts it (autotel_kernel_total{kind="wire_ctx_no_room"})."""
    topo = two_hosts("md")
    script = str(PEERS / "tcp_md5_http.py")
    server = topo.popen(topo.b, [sys.executable, script, "serve", topo.ip_b, str(MD5_PORT),
                                 topo.ip_a], log=tmp_path / "md5_server.log")
    topo.wait_port(topo.b, topo.ip_b, MD5_PORT, proc=server)
    dump = topo.popen(topo.b, [TCPDUMP, "-i", topo.vb, "-U", "-n", "-w",
                               str(tmp_path / "md5.pcap"), f"tcp port {MD5_PORT}"],
                      log=tmp_path / "tcpdump.log")
    time.sleep(1.0)  # tcpdump attaches
    agent = start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^python3?$",
                                  AUTOTEL_PIDS=server.pid))
    n = 3
    cp = topo.run(topo.a, [sys.executable, script, "get", topo.ip_b, str(MD5_PORT), str(n)],
                  check=False)
    report("signed requests answered 200", cp.stdout.split().count("200"), n)
    assert cp.stdout.split() == ["200"] * n, (cp.stdout, cp.stderr)
    clients = sink.wait_for_spans(lambda s: s["kind"] == "CLIENT" and
                                  s["resource"].get("process.pid") == cp.pid, n, 20)
    no_room = agent.prom_value("autotel_kernel_total", {"kind": "wire_ctx_no_room"}) or 0
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)
    out = subprocess.run([TCPDUMP, "-r", str(tmp_path / "md5.pcap"), "-n", "-v",
                          f"dst port {MD5_PORT}"], capture_output=True, text=True).stdout
    signed = len(re.findall(r"md5", out))
    ours = len(re.findall(r"unknown-253", out))
    report("client spans", len(clients), n)
    report("data segments without room for the option (counted)", int(no_room), f">={n}")
    report("segments to the server carrying an MD5 signature", signed, ">0")
    report("segments carrying our option", ours, 0)
    assert len(clients) == n, show(clients)
    assert no_room >= n, agent.metrics_text()
    assert signed > 0 and ours == 0, out[-3000:]
