"""Network tests: TCP lifecycle metrics, failed-connect spans and DNS spans of the real
agent, on a two-host topology (two network namespaces joined by a veth pair, see
``netns.py``) with real programs on both sides: curl, python's http.server, dnsmasq,
dig, getent, glibc's resolver through python.

The agent runs in the root namespace and observes the namespaces' processes. Figures
are read from its Prometheus endpoint (prometheus_client's parser, summed over the
job/instance labels) and from the OTLP sink (official opentelemetry-proto). Counts are
exact; byte counts are compared with what curl itself reports it sent and received.

Numbers refer to the network test plan: 1 bytes, 2 refused connects, 3 timeouts and
retransmits, 4 DNS, 5 traffic through the veth pair with the agent running, plus peer
CIDR grouping. This kernel has no sch_netem: loss is made with tc (clsact + classic
BPF + mirred, see netns.Topology.drop) and delay with a UDP relay (peers/net_dns_delay.py).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest

from conftest import CURL, report
from netns import Topology, two_hosts  # noqa: F401 (fixture)

HERE = Path(__file__).resolve().parent
NET_SERVER = str(HERE / "peers" / "net_server.py")
DNS_DELAY = str(HERE / "peers" / "net_dns_delay.py")
DNSMASQ = "/usr/sbin/dnsmasq"
DIG = "/usr/bin/dig"
GETENT = "/usr/bin/getent"

HTTP_PORT = 18080      # ports inside the test namespaces: no clash with anything else
CLOSED_PORT = 18081    # nothing listens there
APP_PORT = 18082       # python app server in namespace A
DNS_TIMEOUT_S = 5.0    # the agent's DNS answer timeout (pipeline/dns_span.rs TIMEOUT_NS)

CONN = "autotel_tcp_connections_total"
BYTES = "autotel_network_flow_bytes_total"
RETRANS = "autotel_tcp_retransmits_total"
CONNECT_DUR = "autotel_tcp_connect_duration_seconds"
DNS_DUR = "dns_lookup_duration_seconds"

CURL_W = "%{http_code} %{size_header} %{size_download} %{size_request} %{size_upload}\\n"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def agent_env(**extra) -> dict:
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "500", "AUTOTEL_EXECUTABLE_NAME": "^curl$"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def curl_in(topo: Topology, ns: str, url: str, *args: str, timeout: float = 60) -> dict:
    """One real curl in namespace ``ns``; returns rc, status, curl's own byte counts."""
    cp = topo.run(ns, [CURL, "-sS", "--noproxy", "*", "-w", CURL_W, *args, url],
                  timeout=timeout, check=False)
    m = re.search(r"^(\d{3}) (\d+) (\d+) (\d+) (\d+)$", cp.stdout, re.M)
    r = {"rc": cp.returncode, "pid": cp.pid, "stderr": cp.stderr.strip(), "stdout": cp.stdout}
    if m:
        r.update(code=int(m.group(1)), header=int(m.group(2)), download=int(m.group(3)),
                 request=int(m.group(4)), upload=int(m.group(5)))
    return r


def prom(agent, name: str, **labels) -> float:
    """Sum of the samples ``name`` whose labels include ``labels`` (0 when none)."""
    v = agent.prom_value(name, {k: str(v) for k, v in labels.items()})
    return v or 0.0


def wait_prom(agent, name: str, labels: dict, ok: Callable[[float], bool],
              timeout: float = 15.0, settle: float = 1.5) -> float:
    """Poll until ``ok(value)``; then wait ``settle`` s (a surplus shows up) and re-read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok(prom(agent, name, **labels)):
            break
        time.sleep(0.2)
    time.sleep(settle)
    return prom(agent, name, **labels)


def tcp_series(agent, peer: str) -> str:
    """The agent's TCP/DNS samples for one peer (for assertion messages)."""
    text = agent.metrics_text()
    return "\n".join(l for l in text.splitlines()
                     if peer in l and ("autotel_tcp" in l or "autotel_network" in l
                                       or "dns_lookup" in l) and "_bucket" not in l)


def show(spans: List[dict]) -> str:
    return "\n".join(f"  {s['name']} {s['kind']} {s['status_code']} pid="
                     f"{s['resource'].get('process.pid')} trace={s['trace_id'][:8]} "
                     f"span={s['span_id'][:8]} parent={s['parent_span_id'][:8] or '-'} "
                     f"dur={(s['end_ns'] - s['start_ns']) / 1e9:.3f}s {s['attrs']}"
                     for s in spans) or "  (none)"


def start_http_server(topo: Topology, ns: str, addr: str, docroot: Path, tmp: Path):
    """``python3 -m http.server`` bound to addr:HTTP_PORT inside ``ns``."""
    proc = topo.popen(ns, [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                           addr, "--directory", str(docroot)], log=tmp / f"http_{ns}.log")
    topo.wait_port(ns, addr, HTTP_PORT, proc=proc)
    return proc


def start_net_server(topo: Topology, ns: str, addr: str, port: int, tmp: Path):
    proc = topo.popen(ns, [sys.executable, NET_SERVER, "--bind", addr, "--port", str(port)],
                      log=tmp / f"net_server_{ns}_{port}.log")
    topo.wait_port(ns, addr, port, proc=proc)
    return proc


def nstat(topo: Topology, ns: str, counter: str) -> int:
    """An absolute SNMP counter of namespace ``ns`` (``nstat -az``)."""
    out = topo.run(ns, ["nstat", "-asz", counter]).stdout
    m = re.search(rf"^{counter}\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1))


# --------------------------------------------------------------------------------------
# 1. bytes and open/close counts
# --------------------------------------------------------------------------------------


def test_flow_bytes_and_connection_counts(two_hosts, start_agent, tmp_path):
    """K curl downloads (namespace A) of a file served by http.server (namespace B):
    client opened == closed == K; receive bytes == what curl read (headers + body) and
    within K x 400 bytes of HTTP response headers above K x file size; transmit bytes ==
    what curl sent (its request); K connect durations. Byte counts are exact: both are
    TCP payload of cleanly closed connections, which is what curl counts at its end of
    the socket (the SYN and FIN sequence numbers the kernel's counters also step over
    are taken out in the kernel)."""
    K, SIZE = 5, 1_048_576 + 4321
    topo = two_hosts("by")
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    (docroot / "blob.bin").write_bytes((bytes(range(251)) * (SIZE // 251 + 1))[:SIZE])
    start_http_server(topo, topo.b, topo.ip_b, docroot, tmp_path)
    agent = start_agent(agent_env())

    url = f"http://{topo.ip_b}:{HTTP_PORT}/blob.bin"
    runs = [curl_in(topo, topo.a, url, "-o", "/dev/null") for _ in range(K)]
    ok = [r for r in runs if r["rc"] == 0 and r.get("code") == 200 and r["download"] == SIZE]
    report("curl downloads ok", len(ok), K)
    assert len(ok) == K, runs

    lab = {"autotel_tcp_role": "client", "network_peer_address": topo.ip_b,
           "server_port": HTTP_PORT}
    closed = wait_prom(agent, CONN, {**lab, "autotel_tcp_outcome": "closed"},
                       lambda v: v >= K)
    opened = prom(agent, CONN, **lab, autotel_tcp_outcome="opened")
    total = prom(agent, CONN, **lab)
    report("client connections opened", int(opened), K)
    report("client connections closed", int(closed), K)
    report("client connections, all outcomes", int(total), 2 * K)

    want_rx = sum(r["header"] + r["download"] for r in runs)
    want_tx = sum(r["request"] for r in runs)
    rx = prom(agent, BYTES, **lab, network_io_direction="receive")
    tx = prom(agent, BYTES, **lab, network_io_direction="transmit")
    report("receive bytes (curl: headers+body)", int(rx), want_rx)
    report("receive bytes over K x file size", int(rx - K * SIZE), f"0..{K * 400}")
    report("transmit bytes (curl: request)", int(tx), want_tx)
    n_dur = prom(agent, CONNECT_DUR + "_count", **lab)
    report("connect duration observations", int(n_dur), K)
    series = tcp_series(agent, topo.ip_b)
    assert (opened, closed, total) == (K, K, 2 * K), series
    # No tolerance: payload only (a SYN or FIN counted would show as +1 per connection).
    report("receive bytes - curl's count", int(rx - want_rx), 0)
    report("transmit bytes - curl's count", int(tx - want_tx), 0)
    assert rx == want_rx, series
    assert 0 < rx - K * SIZE <= K * 400, series
    assert tx == want_tx, series
    assert n_dur == K, series


# --------------------------------------------------------------------------------------
# 1b. whole-host mode: flows of processes that are not selected
# --------------------------------------------------------------------------------------

NO_SUCH_PORT = 18099   # the selector: nothing listens there, so nothing is selected


def otlp_flow_points(sink, since_ns: int) -> dict:
    """Latest cumulative value per (metric, attribute set) of the host resource."""
    latest: dict = {}
    for d in sink.metrics():
        if (d["resource"].get("service.name") != "host" or d["time_ns"] < since_ns
                or not d["name"].startswith(("autotel.tcp.connections",
                                             "autotel.network.flow.bytes"))):
            continue
        key = (d["name"], tuple(sorted(d["attrs"].items())))
        if key not in latest or d["time_ns"] >= latest[key]["time_ns"]:
            latest[key] = d
    return {k: v["value"] for k, v in latest.items()}


def otlp_sum(points: dict, name: str, **attrs) -> float:
    return sum(v for (n, a), v in points.items()
               if n == name and all(dict(a).get(k) == w for k, w in attrs.items()))


def test_whole_host_flows(two_hosts, start_agent, sink, tmp_path):
    """curl (A) downloads from python's http.server (B), neither of them selected (the
    only selector is a port nothing listens on). With network.whole_host off: no flow
    series for them at all. Then, same run, a new agent with whole_host on (YAML) and
    K more downloads: under the host resource, per process name, client (curl) and
    server (the http.server's comm) connections opened == closed == K; bytes exactly
    what curl sent and read, in both directions (payload; no tolerance). Checked on
    /metrics and over OTLP. No spans for either process (spans stay with selected
    processes) and no flows of the agent's own exporter connections."""
    K, SIZE = 4, 200_000 + 77
    topo = two_hosts("wh")
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    (docroot / "blob.bin").write_bytes((bytes(range(251)) * (SIZE // 251 + 1))[:SIZE])
    server = start_http_server(topo, topo.b, topo.ip_b, docroot, tmp_path)
    server_comm = Path(f"/proc/{server.pid}/comm").read_text().strip()
    url = f"http://{topo.ip_b}:{HTTP_PORT}/blob.bin"
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "500", "AUTOTEL_OPEN_PORTS": NO_SUCH_PORT}

    def downloads() -> List[dict]:
        runs = [curl_in(topo, topo.a, url, "-o", "/dev/null") for _ in range(K)]
        ok = [r for r in runs if r["rc"] == 0 and r.get("code") == 200
              and r["download"] == SIZE]
        assert len(ok) == K, runs
        return runs

    # Off (explicitly, by environment): nothing about these flows.
    off = start_agent({**env, "AUTOTEL_NETWORK_WHOLE_HOST": "false"})
    downloads()
    time.sleep(2.5)  # several export intervals and reader drains
    off_prom = [l for l in off.metrics_text().splitlines()
                if (topo.ip_a in l or topo.ip_b in l) and not l.startswith("#")]
    off_otlp = otlp_flow_points(sink, 0)
    report("whole_host off: flow series on /metrics", len(off_prom), 0)
    report("whole_host off: host-resource flow points over OTLP", len(off_otlp), 0)
    assert not off_prom and not off_otlp, "\n".join(off_prom) + str(off_otlp)
    off.stop()

    # On (YAML): K more downloads, counted on both ends.
    since = time.time_ns()
    agent = start_agent(env, config_yaml="network:\n  whole_host: true\n")
    runs = downloads()
    pids = {r["pid"] for r in runs} | {server.pid}
    want_rx = sum(r["header"] + r["download"] for r in runs)   # curl read
    want_tx = sum(r["request"] for r in runs)                  # curl wrote

    cli = {"process_executable_name": "curl", "autotel_tcp_role": "client",
           "network_peer_address": topo.ip_b, "server_port": HTTP_PORT}
    srv = {"process_executable_name": server_comm, "autotel_tcp_role": "server",
           "network_peer_address": topo.ip_a, "server_port": HTTP_PORT}
    wait_prom(agent, CONN, {**cli, "autotel_tcp_outcome": "closed"}, lambda v: v >= K)
    wait_prom(agent, CONN, {**srv, "autotel_tcp_outcome": "closed"}, lambda v: v >= K,
              settle=1.0)
    got = {}
    for side, lab in (("client", cli), ("server", srv)):
        got[side] = (prom(agent, CONN, **lab, autotel_tcp_outcome="opened"),
                     prom(agent, CONN, **lab, autotel_tcp_outcome="closed"),
                     prom(agent, CONN, **lab),
                     prom(agent, BYTES, **lab, network_io_direction="receive"),
                     prom(agent, BYTES, **lab, network_io_direction="transmit"))
    want = {"client": (K, K, 2 * K, want_rx, want_tx),
            "server": (K, K, 2 * K, want_tx, want_rx)}
    for side in ("client", "server"):
        report(f"{side} (opened, closed, all, rx bytes, tx bytes) on /metrics",
               tuple(int(v) for v in got[side]), want[side])
    unknown = prom(agent, CONN, process_executable_name="unknown",
                   network_peer_address=topo.ip_a)
    # The test scrapes /metrics over and over and the agent exports to the sink: its
    # own connections are left out. (By port, not by name: other autotel agents may
    # run on this host.)
    own = (prom(agent, CONN, server_port=agent.prom_port, autotel_tcp_role="server")
           + prom(agent, CONN, server_port=sink.grpc_port, autotel_tcp_role="client"))
    scrapes = prom(agent, CONN, server_port=agent.prom_port, autotel_tcp_role="client")
    report("the test's own /metrics connections, client side (seen: > 0)", int(scrapes),
           ">0")
    report("connections with owner unknown (all were accepted)", int(unknown), 0)
    report("connections of the agent itself (its /metrics port, its OTLP export)",
           int(own), 0)

    # The same over OTLP (cumulative: the latest point of each series).
    deadline = time.monotonic() + 10
    while True:
        pts = otlp_flow_points(sink, since)
        o = {side: (otlp_sum(pts, "autotel.tcp.connections", **a,
                             **{"autotel.tcp.outcome": "closed"}),
                    otlp_sum(pts, "autotel.network.flow.bytes", **a,
                             **{"network.io.direction": "receive"}),
                    otlp_sum(pts, "autotel.network.flow.bytes", **a,
                             **{"network.io.direction": "transmit"}))
             for side, a in (("client", {"process.executable.name": "curl",
                                         "network.peer.address": topo.ip_b}),
                             ("server", {"process.executable.name": server_comm,
                                         "network.peer.address": topo.ip_a}))}
        if (o["client"][0] >= K and o["server"][0] >= K) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for side, (cl, rx, tx) in o.items():
        report(f"OTLP {side} (closed, rx bytes, tx bytes)", (int(cl), int(rx), int(tx)),
               (K,) + want[side][3:])
    spans = [s for s in sink.spans() if s["resource"].get("process.pid") in pids]
    report("spans of the unselected processes", len(spans), 0)

    series = tcp_series(agent, topo.ip_b) + "\n" + tcp_series(agent, topo.ip_a)
    assert got["client"] == want["client"] and got["server"] == want["server"], series
    assert scrapes > 0 and unknown == 0 and own == 0, series
    assert o["client"] == (K,) + want["client"][3:], o
    assert o["server"] == (K,) + want["server"][3:], o
    assert not spans, show(spans)


# --------------------------------------------------------------------------------------
# 2. refused connects: metric, span, span inside the request being served
# --------------------------------------------------------------------------------------


def test_refused_connect_metric_and_span(two_hosts, start_agent, sink):
    """curl (A) to a closed port of B, K times: K `refused` client connections, K
    `connect` CLIENT spans (ERROR, error.type=refused, root spans), K connect-duration
    observations with error.type=refused."""
    K = 3
    topo = two_hosts("rf")
    agent = start_agent(agent_env())
    runs = [curl_in(topo, topo.a, f"http://{topo.ip_b}:{CLOSED_PORT}/", timeout=20)
            for _ in range(K)]
    report("curl exit code 7 (couldn't connect)", sum(r["rc"] == 7 for r in runs), K)
    assert all(r["rc"] == 7 for r in runs), runs
    pids = {r["pid"] for r in runs}

    lab = {"autotel_tcp_role": "client", "network_peer_address": topo.ip_b,
           "server_port": CLOSED_PORT}
    refused = wait_prom(agent, CONN, {**lab, "autotel_tcp_outcome": "refused"},
                        lambda v: v >= K)
    total = prom(agent, CONN, **lab)
    report("refused connections", int(refused), K)
    report("connections, all outcomes", int(total), K)
    dur_err = prom(agent, CONNECT_DUR + "_count", **lab, error_type="refused")
    report("connect duration observations error.type=refused", int(dur_err), K)

    spans = sink.wait_for_spans(
        lambda s: s["name"] == "connect" and s["resource"].get("process.pid") in pids,
        count=K, timeout=15)
    good = [s for s in spans if s["kind"] == "CLIENT" and s["status_code"] == "ERROR"
            and s["attrs"].get("error.type") == "refused"
            and s["attrs"].get("server.address") == topo.ip_b
            and s["attrs"].get("server.port") == CLOSED_PORT and not s["parent_span_id"]]
    report("connect spans (curl pids)", len(spans), K)
    report("  CLIENT, ERROR, error.type=refused, server.address/port, root", len(good), K)
    series = tcp_series(agent, topo.ip_b)
    assert (refused, total, dur_err) == (K, K, K), series
    assert len(spans) == K and len(good) == K, show(spans)


@pytest.mark.parametrize("delay", [0, 0.3], ids=["answer-at-once", "answer-after-300ms"])
def test_refused_connect_is_child_of_server_span(two_hosts, start_agent, sink, tmp_path,
                                                 delay):
    """A python HTTP server in A (selected by pid) connects to a closed port of B while
    serving GET /connect: the `connect` span is in the request's trace, its parent is
    the server span. The client is curl in B. The app answers right after the failed
    connect (and closes: HTTP/1.0), or 300 ms later."""
    K = 2
    topo = two_hosts("rc")
    app = start_net_server(topo, topo.a, topo.ip_a, APP_PORT, tmp_path)
    agent = start_agent(agent_env(AUTOTEL_PIDS=app.pid))
    url = (f"http://{topo.ip_a}:{APP_PORT}/connect?host={topo.ip_b}&port={CLOSED_PORT}"
           f"&delay={delay}")
    runs = [curl_in(topo, topo.b, url, "-o", "/dev/null") for _ in range(K)]
    report("app answered 502 (its connect was refused)",
           sum(r.get("code") == 502 for r in runs), K)
    assert all(r["rc"] == 0 and r.get("code") == 502 for r in runs), runs

    of_app = lambda s: s["resource"].get("process.pid") == app.pid  # noqa: E731
    connects = sink.wait_for_spans(lambda s: of_app(s) and s["name"] == "connect",
                                   count=K, timeout=15)
    servers = sink.wait_for_spans(lambda s: of_app(s) and s["kind"] == "SERVER",
                                  count=K, timeout=10, settle=0.5)
    print("server spans:\n" + show(servers) + "\nconnect spans:\n" + show(connects))
    by_id = {s["span_id"]: s for s in servers}
    children = [c for c in connects if c["parent_span_id"] in by_id
                and by_id[c["parent_span_id"]]["trace_id"] == c["trace_id"]]
    parents = {c["parent_span_id"] for c in children}
    inside = [c for c in children
              if by_id[c["parent_span_id"]]["start_ns"] <= c["start_ns"]
              and c["end_ns"] <= by_id[c["parent_span_id"]]["end_ns"]]
    report("server spans of the app", len(servers), K)
    report("connect spans of the app", len(connects), K)
    report("connect spans with error.type=refused, ERROR",
           sum(c["attrs"].get("error.type") == "refused" and c["status_code"] == "ERROR"
               for c in connects), K)
    report("connect spans child of a server span (same trace, parent id)", len(children), K)
    report("distinct parent server spans", len(parents), K)
    report("connect spans within their parent's time", len(inside), K)
    refused = wait_prom(agent, CONN, {"autotel_tcp_role": "client",
                                      "network_peer_address": topo.ip_b,
                                      "autotel_tcp_outcome": "refused"}, lambda v: v >= K,
                        settle=0.5)
    report("refused connections of the app", int(refused), K)
    assert len(servers) == K and len(connects) == K, show(servers + connects)
    assert all(c["attrs"].get("error.type") == "refused" and c["status_code"] == "ERROR"
               for c in connects), show(connects)
    assert len(children) == K and len(parents) == K, show(servers + connects)
    assert len(inside) == K, show(servers + connects)
    assert refused == K, tcp_series(agent, topo.ip_b)


# --------------------------------------------------------------------------------------
# 3. timeouts and retransmits
# --------------------------------------------------------------------------------------


def test_connect_timeout(two_hosts, start_agent, sink):
    """net.ipv4.tcp_syn_retries=1 in A and 100% loss toward B (every packet arriving on
    B's veth dropped): the kernel gives up after the SYN and one retransmit (1 s + 2 s):
    outcome `timed_out`, a `connect` span with error.type=timed_out lasting ~3 s."""
    topo = two_hosts("to")
    topo.sysctl(topo.a, "net.ipv4.tcp_syn_retries", 1)
    topo.drop(topo.b, topo.vb, 100)
    agent = start_agent(agent_env())
    t0 = time.monotonic()
    r = curl_in(topo, topo.a, f"http://{topo.ip_b}:{HTTP_PORT}/", "--connect-timeout", "30",
                timeout=40)
    took = time.monotonic() - t0
    # curl reports the kernel's ETIMEDOUT as exit 28 ("Failed to connect ... after
    # 3053 ms"), far below its own 30 s connect timeout.
    report("curl exit code (28: connect failed with ETIMEDOUT)", r["rc"], 28)
    report("curl time s (~3)", round(took, 2), "2.5..6")
    assert r["rc"] in (7, 28) and "failed to connect" in r["stderr"].lower(), r
    assert 2.5 <= took <= 6, took

    lab = {"autotel_tcp_role": "client", "network_peer_address": topo.ip_b,
           "server_port": HTTP_PORT}
    timed_out = wait_prom(agent, CONN, {**lab, "autotel_tcp_outcome": "timed_out"},
                          lambda v: v >= 1)
    total = prom(agent, CONN, **lab)
    dsum = prom(agent, CONNECT_DUR + "_sum", **lab, error_type="timed_out")
    report("timed_out connections", int(timed_out), 1)
    report("connections, all outcomes", int(total), 1)
    report("connect duration sum error.type=timed_out s", round(dsum, 2), "2.5..4.5")
    spans = sink.wait_for_spans(
        lambda s: s["name"] == "connect" and s["resource"].get("process.pid") == r["pid"],
        count=1, timeout=10)
    good = [s for s in spans if s["status_code"] == "ERROR" and s["kind"] == "CLIENT"
            and s["attrs"].get("error.type") == "timed_out"
            and 2.5 <= (s["end_ns"] - s["start_ns"]) / 1e9 <= 4.5]
    report("connect spans error.type=timed_out, 2.5..4.5 s", len(good), 1)
    assert (timed_out, total) == (1, 1), tcp_series(agent, topo.ip_b)
    assert 2.5 <= dsum <= 4.5, tcp_series(agent, topo.ip_b)
    assert len(spans) == 1 and len(good) == 1, show(spans)


def test_retransmits_on_lossy_link(two_hosts, start_agent, tmp_path):
    """10% loss toward B (packets arriving on B's veth) while curl in A uploads 3 MB to
    B: curl's own segments get lost and retransmitted. The agent's retransmit counter for the
    flow equals the kernel's TcpRetransSegs delta of namespace A (curl's connection is
    the only TCP traffic there) and is > 0; the upload arrives whole."""
    SIZE = 3 * 1024 * 1024
    topo = two_hosts("rt")
    start_net_server(topo, topo.b, topo.ip_b, HTTP_PORT, tmp_path)
    payload = tmp_path / "upload.bin"
    payload.write_bytes((bytes(range(256)) * (SIZE // 256 + 1))[:SIZE])
    agent = start_agent(agent_env())
    topo.drop(topo.b, topo.vb, 10)
    before = nstat(topo, topo.a, "TcpRetransSegs")
    r = curl_in(topo, topo.a, f"http://{topo.ip_b}:{HTTP_PORT}/upload", "-T", str(payload),
                "-H", "Expect:", "-o", "/dev/null", timeout=90)
    print(topo.drop_stats(topo.b, topo.vb))
    topo.drop_clear(topo.b, topo.vb)
    report("upload ok (bytes sent)", r.get("upload"), SIZE)
    assert r["rc"] == 0 and r.get("code") == 200 and r.get("upload") == SIZE, r

    lab = {"autotel_tcp_role": "client", "network_peer_address": topo.ip_b,
           "server_port": HTTP_PORT}
    closed = wait_prom(agent, CONN, {**lab, "autotel_tcp_outcome": "closed"},
                       lambda v: v >= 1, settle=1.0)
    # curl has exited when its socket finally closes: the close is still curl's.
    closed_by_curl = prom(agent, CONN, **lab, autotel_tcp_outcome="closed", job="curl")
    report("closes counted under curl's service (it exited before the close)",
           (int(closed_by_curl), int(closed)), (1, 1))
    assert closed_by_curl == closed == 1, tcp_series(agent, topo.ip_b)
    # Read once the socket is closed: after curl exits, its lost FIN (or last
    # segment) is still retransmitted until the socket reaches TCP_CLOSE.
    kernel = nstat(topo, topo.a, "TcpRetransSegs") - before
    got = prom(agent, RETRANS, **lab)
    tx = prom(agent, BYTES, **lab, network_io_direction="transmit")
    report("retransmitted segments (agent)", int(got), kernel)
    # Payload sent once: retransmitted segments must not count twice.
    report("transmit bytes - (upload + request)", int(tx - SIZE - r["request"]), 0)
    assert kernel > 0, "the loss produced no retransmission: the test proves nothing"
    assert got == kernel, tcp_series(agent, topo.ip_b)
    assert tx == SIZE + r["request"], tcp_series(agent, topo.ip_b)


# --------------------------------------------------------------------------------------
# 4. DNS
# --------------------------------------------------------------------------------------

RESOLVER_SCRIPT = """\
import socket, sys, time
time.sleep(0.5)  # let the agent select this process before it resolves
for name in sys.argv[1:]:
    try:
        addrs = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
        print(name, "ok", " ".join(addrs), flush=True)
    except socket.gaierror as e:
        print(name, "error", e.errno, flush=True)
"""


def start_dnsmasq(topo: Topology, tmp: Path, port: int = 53):
    proc = topo.popen(topo.b, [DNSMASQ, "--no-daemon", f"--port={port}",
                               f"--listen-address={topo.ip_b}", "--bind-interfaces",
                               "--no-resolv", "--no-hosts", "--address=/app.test/10.1.2.3",
                               "--local=/test/", "--conf-file=/dev/null", "--pid-file=",
                               "--user=root", "--log-queries"], log=tmp / "dnsmasq.log")
    topo.wait_port(topo.b, topo.ip_b, port, proto="udp", proc=proc)
    topo.wait_port(topo.b, topo.ip_b, port, proto="tcp", proc=proc)
    return proc


def dns_spans(sink, pid: int, count: int, timeout: float = 15, settle: float = 1.0):
    return sink.wait_for_spans(
        lambda s: s["resource"].get("process.pid") == pid and s["name"].startswith("DNS"),
        count=count, timeout=timeout, settle=settle)


def summary(spans: List[dict]) -> List[tuple]:
    """(name, question, type, transport, rcode, answers, error.type) per span, sorted."""
    return sorted((s["name"], s["attrs"].get("dns.question.name"),
                   s["attrs"].get("dns.question.type"), s["attrs"].get("network.transport"),
                   s["attrs"].get("dns.response_code"), s["attrs"].get("dns.answer_count"),
                   s["attrs"].get("error.type"), s["status_code"]) for s in spans)


def test_dns_lookups(two_hosts, start_agent, sink, tmp_path):
    """dnsmasq in B answers app.test (A 10.1.2.3; AAAA: whatever dig is told, NXDOMAIN
    with dnsmasq 2.90) and NXDOMAIN for the rest of .test. Clients in A: dig (UDP), dig +tcp, getent ahosts and python's
    getaddrinfo (glibc: A + AAAA on one connected UDP socket, via the netns resolv.conf).
    Exact spans per process: name `DNS <type>`, CLIENT, question, type, transport,
    rcode, answer count, error.type, server.address/port; dns.lookup.duration counts."""
    topo = two_hosts("dn")
    start_dnsmasq(topo, tmp_path)
    topo.resolv_conf(topo.a, f"nameserver {topo.ip_b}\noptions timeout:2 attempts:1\n")
    agent = start_agent(agent_env(
        AUTOTEL_EXECUTABLE_NAME="^(dig|getent|at_net_resolver)$"))
    ns = topo.ip_b

    def dig(*args):
        cp = topo.run(topo.a, [DIG, f"@{ns}", "+tries=1", "+time=3", *args], check=False)
        return cp

    checks = []  # (label, pid, expected summary)
    cp = dig("app.test", "A")
    assert "10.1.2.3" in cp.stdout and "NOERROR" in cp.stdout, cp.stdout
    checks.append(("dig app.test A (udp)", cp.pid, [
        ("DNS A", "app.test", "A", "udp", "NOERROR", 1, None, "UNSET")]))
    cp = dig("nope.test", "A")
    assert "NXDOMAIN" in cp.stdout, cp.stdout
    checks.append(("dig nope.test A (udp)", cp.pid, [
        ("DNS A", "nope.test", "A", "udp", "NXDOMAIN", 0, "NXDOMAIN", "ERROR")]))
    # What dnsmasq answers to AAAA app.test (it knows only an IPv4 address for it and
    # .test is --local): 2.90 says NXDOMAIN. Taken from dig, not assumed.
    cp = dig("app.test", "AAAA")
    m = re.search(r"status: (\w+)", cp.stdout)
    assert m, cp.stdout
    aaaa_rcode = m.group(1)
    aaaa_err = None if aaaa_rcode == "NOERROR" else aaaa_rcode
    aaaa_status = "UNSET" if aaaa_err is None else "ERROR"
    report("dnsmasq's rcode for app.test AAAA (per dig)", aaaa_rcode, "any")
    aaaa = ("DNS AAAA", "app.test", "AAAA", "udp", aaaa_rcode, 0, aaaa_err, aaaa_status)
    checks.append(("dig app.test AAAA (udp)", cp.pid, [aaaa]))
    cp = dig("+tcp", "app.test", "A")
    assert "10.1.2.3" in cp.stdout, cp.stdout
    checks.append(("dig +tcp app.test A", cp.pid, [
        ("DNS A", "app.test", "A", "tcp", "NOERROR", 1, None, "UNSET")]))
    cp = topo.run(topo.a, [GETENT, "ahosts", "app.test"], check=False)
    assert "10.1.2.3" in cp.stdout, (cp.returncode, cp.stdout, cp.stderr)
    checks.append(("getent ahosts app.test", cp.pid, [
        ("DNS A", "app.test", "A", "udp", "NOERROR", 1, None, "UNSET"), aaaa]))
    cp = topo.run(topo.a, ["/bin/bash", "-c",
                           'exec -a at_net_resolver "$0" -c "$1" app.test nope.test.',
                           sys.executable, RESOLVER_SCRIPT], check=False)
    assert "app.test ok 10.1.2.3" in cp.stdout and "nope.test. error" in cp.stdout, \
        (cp.stdout, cp.stderr)
    checks.append(("python getaddrinfo app.test, nope.test.", cp.pid, [
        ("DNS A", "app.test", "A", "udp", "NOERROR", 1, None, "UNSET"),
        ("DNS A", "nope.test", "A", "udp", "NXDOMAIN", 0, "NXDOMAIN", "ERROR"),
        aaaa,
        ("DNS AAAA", "nope.test", "AAAA", "udp", "NXDOMAIN", 0, "NXDOMAIN", "ERROR")]))

    failures = []
    for label, pid, want in checks:
        spans = dns_spans(sink, pid, len(want), settle=0.3)
        got = summary(spans)
        report(f"{label}: spans", len(got), len(want))
        bad_attrs = [s for s in spans if s["kind"] != "CLIENT"
                     or s["attrs"].get("server.address") != ns
                     or s["attrs"].get("server.port") != 53
                     or not s["end_ns"] >= s["start_ns"] > 0]
        if got != sorted(want, key=lambda t: tuple(map(str, t))) and got != sorted(want):
            failures.append(f"{label}: got\n{show(spans)}\nwant {want}")
        if bad_attrs:
            failures.append(f"{label}: kind/server.address/port/time wrong:\n{show(bad_attrs)}")
    # dns.lookup.duration: one observation per span above.
    n_app_a = prom(agent, DNS_DUR + "_count", dns_question_name="app.test",
                   dns_question_type="A", server_address=ns)
    n_nope = prom(agent, DNS_DUR + "_count", dns_question_name="nope.test",
                  error_type="NXDOMAIN", server_address=ns)
    n_aaaa = prom(agent, DNS_DUR + "_count", dns_question_name="app.test",
                  dns_question_type="AAAA", server_address=ns)
    report("dns.lookup.duration count app.test A", int(n_app_a), 4)
    report("dns.lookup.duration count app.test AAAA", int(n_aaaa), 3)
    report("dns.lookup.duration count nope.test error NXDOMAIN", int(n_nope), 3)
    if (n_app_a, n_aaaa, n_nope) != (4, 3, 3):
        failures.append(tcp_series(agent, ns))
    assert not failures, "\n".join(failures)


# dnspython's own client: each query goes out with sendto() on an unconnected UDP
# socket naming the server (as musl's resolver does), the reply comes in with
# recvfrom(). Between the queries the same socket sends a datagram to port 9.
UNCONNECTED_CLIENT = """\
import socket, sys
import dns.message, dns.query, dns.rcode
ns = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name, rdtype in [("app.test", "A"), ("nope.test", "A"), ("app.test", "TXT")]:
    s.sendto(b"not dns", (ns, 9))
    r = dns.query.udp(dns.message.make_query(name, rdtype), ns, timeout=3, sock=s)
    print(name, rdtype, dns.rcode.to_text(r.rcode()), len(r.answer), flush=True)
"""


def test_dns_from_an_unconnected_socket(two_hosts, start_agent, sink, tmp_path):
    """A resolver that never connects its UDP socket (dnspython here; musl's
    resolver, so every Alpine-based program, does the same): one span per query,
    with the server each sendto() named, and none for the datagrams the same
    socket sends to another port."""
    topo = two_hosts("du")
    start_dnsmasq(topo, tmp_path)
    start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^at_dns_unconnected$"))
    ns = topo.ip_b
    cp = topo.run(topo.a, ["/bin/bash", "-c", 'exec -a at_dns_unconnected "$0" -c "$1" "$2"',
                           sys.executable, UNCONNECTED_CLIENT, ns], check=False)
    answers = [tuple(line.split()) for line in cp.stdout.splitlines()]
    txt = next((a[2] for a in answers if a[1] == "TXT"), None)
    assert answers == [("app.test", "A", "NOERROR", "1"), ("nope.test", "A", "NXDOMAIN", "0"),
                       ("app.test", "TXT", txt, "0")], (cp.stdout, cp.stderr)
    spans = dns_spans(sink, cp.pid, 3)
    got = summary(spans)
    txt_err = None if txt == "NOERROR" else txt
    want = sorted([("DNS A", "app.test", "A", "udp", "NOERROR", 1, None, "UNSET"),
                   ("DNS A", "nope.test", "A", "udp", "NXDOMAIN", 0, "NXDOMAIN", "ERROR"),
                   ("DNS TXT", "app.test", "TXT", "udp", txt, 0, txt_err,
                    "UNSET" if txt_err is None else "ERROR")],
                  key=lambda t: tuple(map(str, t)))
    report("unconnected resolver spans", len(got), 3)
    assert sorted(got, key=lambda t: tuple(map(str, t))) == want, show(spans)
    peers = {(s["attrs"].get("server.address"), s["attrs"].get("server.port")) for s in spans}
    assert peers == {(ns, 53)}, peers
    assert len([s for s in sink.spans() if s["resource"].get("process.pid") == cp.pid]) == 3, \
        show(sink.spans())


def test_dns_slow_and_unanswered(two_hosts, start_agent, sink, tmp_path):
    """A 200 ms delay in front of dnsmasq (a UDP relay on B:53 forwarding to dnsmasq on
    B:5353 200 ms later; this kernel has no netem): the dig span and
    dns.lookup.duration are >= 0.2 s (and < 1 s). dnsmasq stopped (the relay stays, so
    no ICMP either): an unanswered query becomes a span with error.type=timeout and no
    response code: emitted by the agent's 5 s timeout (lasting 5 s) while dig still
    waits; or, when dig gives up first (1 s) and closes its socket, at the close, and
    then without an end time later than the moment the span was received."""
    topo = two_hosts("ds")
    dnsmasq = start_dnsmasq(topo, tmp_path, port=5353)
    relay = topo.popen(topo.b, [sys.executable, DNS_DELAY, "--listen", f"{topo.ip_b}:53",
                                "--upstream", f"{topo.ip_b}:5353", "--delay", "0.2"],
                       log=tmp_path / "relay.log")
    topo.wait_port(topo.b, topo.ip_b, 53, proto="udp", proc=relay)
    agent = start_agent(agent_env(AUTOTEL_EXECUTABLE_NAME="^dig$"))
    ns = topo.ip_b
    cp = topo.run(topo.a, [DIG, f"@{ns}", "+tries=1", "+time=3", "slow.app.test", "A"],
                  check=False)
    assert "10.1.2.3" in cp.stdout, cp.stdout
    spans = dns_spans(sink, cp.pid, 1)
    durs = [round((s["end_ns"] - s["start_ns"]) / 1e9, 3) for s in spans]
    report("slow lookup spans", len(spans), 1)
    report("slow lookup span duration s", durs, ">=0.2 <1")
    labels = {"dns_question_name": "slow.app.test", "server_address": ns}
    cnt = wait_prom(agent, DNS_DUR + "_count", labels, lambda v: v >= 1, settle=0.5)
    dsum = prom(agent, DNS_DUR + "_sum", **labels)
    fast = prom(agent, DNS_DUR + "_bucket", **labels, le="0.1")
    report("dns.lookup.duration count", int(cnt), 1)
    report("dns.lookup.duration sum s", round(dsum, 3), ">=0.2 <1")
    report("dns.lookup.duration observations <= 0.1 s", int(fast), 0)
    assert len(spans) == 1 and 0.2 <= durs[0] < 1.0, show(spans)
    assert cnt == 1 and 0.2 <= dsum < 1.0 and fast == 0, tcp_series(agent, ns)

    # Unanswered: stop dnsmasq (kill its pid); the relay still takes the queries.
    dnsmasq.terminate()
    dnsmasq.wait(timeout=5)
    # (a) dig waits 8 s, longer than the agent's 5 s timeout: the span must come from
    #     the agent's timeout, while dig is still waiting, lasting 5 s.
    t0 = time.monotonic()
    patient = subprocess.Popen(topo.cmd(topo.a, [DIG, f"@{ns}", "+tries=1", "+time=8",
                                                 "gone1.app.test", "A"]),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        # (b) dig gives up after 1 s and closes its socket first.
        cp = topo.run(topo.a, [DIG, f"@{ns}", "+tries=1", "+time=1", "gone2.app.test", "A"],
                      check=False)
        assert "10.1.2.3" not in cp.stdout, cp.stdout
        quick = dns_spans(sink, cp.pid, 1, timeout=DNS_TIMEOUT_S + 5, settle=0)
        seen_wall_ns = time.time_ns()
        slow = dns_spans(sink, patient.pid, 1, timeout=DNS_TIMEOUT_S + 5, settle=0)
        arrived = time.monotonic() - t0
        patient_waiting = patient.poll() is None
    finally:
        out, _ = patient.communicate(timeout=20)
    assert "10.1.2.3" not in out, out

    def timeout_span(s, name):
        return (s["attrs"].get("error.type") == "timeout" and s["status_code"] == "ERROR"
                and "dns.response_code" not in s["attrs"]
                and s["attrs"].get("dns.question.name") == name)

    slow_ok = [s for s in slow if timeout_span(s, "gone1.app.test")
               and abs((s["end_ns"] - s["start_ns"]) / 1e9 - DNS_TIMEOUT_S) < 0.5]
    report("unanswered, dig waits 8 s: spans", len(slow), 1)
    report("  error.type=timeout, ERROR, no rcode, duration ~5 s", len(slow_ok), 1)
    report("  span received after s (agent timeout 5, dig still waiting)",
           round(arrived, 1), f"5..8 {'waiting' if patient_waiting else 'dig had exited'}")
    quick_ok = [s for s in quick if timeout_span(s, "gone2.app.test")]
    ends_in_future = [s for s in quick if s["end_ns"] > seen_wall_ns]
    report("unanswered, dig gives up after 1 s: spans", len(quick), 1)
    report("  error.type=timeout, ERROR, no rcode", len(quick_ok), 1)
    report("  spans ending after the moment they were received",
           len(ends_in_future), 0)
    tcnt = wait_prom(agent, DNS_DUR + "_count", {"error_type": "timeout",
                                                 "server_address": ns},
                     lambda v: v >= 2, settle=0.3)
    report("dns.lookup.duration count error.type=timeout", int(tcnt), 2)
    assert len(slow) == 1 and len(slow_ok) == 1, show(slow)
    assert DNS_TIMEOUT_S <= arrived and patient_waiting, (arrived, show(slow))
    assert len(quick) == 1 and len(quick_ok) == 1, show(quick)
    assert not ends_in_future, (f"received at {seen_wall_ns}, span ends "
                                f"{(ends_in_future[0]['end_ns'] - seen_wall_ns) / 1e9:.2f} s "
                                f"later:\n{show(ends_in_future)}")
    assert tcnt == 2, tcp_series(agent, ns)


# --------------------------------------------------------------------------------------
# 5. the agent does not disturb traffic through the veth pair
# --------------------------------------------------------------------------------------


def test_traffic_through_veth_unaffected(two_hosts, start_agent, tmp_path):
    """With the agent running and curl selected: N downloads (sha256 checked), N
    uploads of 256 KiB and a 3 MB download through the veth pair all succeed; the agent
    saw exactly 2N+1 client connections to B, all opened and closed."""
    N = 10
    topo = two_hosts("mb")
    start_net_server(topo, topo.b, topo.ip_b, HTTP_PORT, tmp_path)
    agent = start_agent(agent_env())
    up = tmp_path / "up.bin"
    up.write_bytes(bytes(range(256)) * 1024)
    base = f"http://{topo.ip_b}:{HTTP_PORT}"
    ok = 0
    for i in range(N):
        n = 1000 + 997 * i
        out = tmp_path / f"dl{i}.bin"
        r = curl_in(topo, topo.a, f"{base}/blob/{n}", "-o", str(out))
        want = hashlib.sha256((bytes(range(256)) * (n // 256 + 1))[:n]).hexdigest()
        if r["rc"] == 0 and r.get("code") == 200 and \
                hashlib.sha256(out.read_bytes()).hexdigest() == want:
            ok += 1
        r = curl_in(topo, topo.a, f"{base}/up", "-T", str(up), "-H", "Expect:")
        if r["rc"] == 0 and r.get("code") == 200 and f"got {256 * 1024}" in r["stdout"]:
            ok += 1
    r = curl_in(topo, topo.a, f"{base}/blob/{3 * 1024 * 1024}", "-o", "/dev/null")
    ok += r["rc"] == 0 and r.get("download") == 3 * 1024 * 1024
    report("curl transfers ok", ok, 2 * N + 1)
    lab = {"autotel_tcp_role": "client", "network_peer_address": topo.ip_b}
    closed = wait_prom(agent, CONN, {**lab, "autotel_tcp_outcome": "closed"},
                       lambda v: v >= 2 * N + 1)
    opened = prom(agent, CONN, **lab, autotel_tcp_outcome="opened")
    report("client connections opened", int(opened), 2 * N + 1)
    report("client connections closed", int(closed), 2 * N + 1)
    assert ok == 2 * N + 1
    assert (opened, closed) == (2 * N + 1, 2 * N + 1), tcp_series(agent, topo.ip_b)
    assert agent.alive(), agent.logs_tail(30)


def test_peer_cidr_grouping(two_hosts, start_agent, tmp_path):
    """AUTOTEL_NETWORK_CIDRS=10.0.0.0/8,10.200.<n>.0/24: connections to B are reported
    with network.peer.address = the most specific network, never the address."""
    K = 3
    topo = two_hosts("cg")
    start_net_server(topo, topo.b, topo.ip_b, HTTP_PORT, tmp_path)
    net = f"10.200.{topo.n}.0/24"
    agent = start_agent(agent_env(AUTOTEL_NETWORK_CIDRS=f"10.0.0.0/8,{net}"))
    runs = [curl_in(topo, topo.a, f"http://{topo.ip_b}:{HTTP_PORT}/blob/100", "-o",
                    "/dev/null") for _ in range(K)]
    assert all(r["rc"] == 0 and r.get("code") == 200 for r in runs), runs
    lab = {"autotel_tcp_role": "client", "server_port": HTTP_PORT}
    closed = wait_prom(agent, CONN, {**lab, "network_peer_address": net,
                                     "autotel_tcp_outcome": "closed"}, lambda v: v >= K)
    opened = prom(agent, CONN, **lab, network_peer_address=net, autotel_tcp_outcome="opened")
    raw = prom(agent, CONN, **lab, network_peer_address=topo.ip_b)
    wide = prom(agent, CONN, **lab, network_peer_address="10.0.0.0/8")
    report(f"connections opened/closed peer={net}", (int(opened), int(closed)), (K, K))
    report("connections with the raw peer address", int(raw), 0)
    report("connections grouped into 10.0.0.0/8 (less specific)", int(wide), 0)
    assert (opened, closed, raw, wide) == (K, K, 0, 0), tcp_series(agent, "10.")
