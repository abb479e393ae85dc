"""HTTP/2 and gRPC integration tests: the real agent observing real HTTP/2 programs.

Peers: a grpcio server (``peers/h2_grpc_server.py``: the standard health service of
grpcio-health-checking plus raw-bytes ``demo.Stream/Count``, ``demo.Echo/Fail``,
``demo.Echo/Slow``), a grpcio client (``peers/h2_grpc_client.py``, every call on ONE
channel), nginx with ``listen ... http2`` (h2c, prior knowledge) driven by curl
``--http2-prior-knowledge`` and by ``peers/h2_raw_client.py`` (the ``h2`` package on a
plain socket: 100 streams opened at once on one connection).

The server is selected by its port (``AUTOTEL_OPEN_PORTS``), the client by pid
(``AUTOTEL_PIDS``: clients print "ready" and wait for a line on stdin before they
connect, so they are selected before their first byte). Counts are exact; every test
prints the figures it checks.

1. unary gRPC: codes 0 / 5 / 13 counted, span status per side (semconv);
2. server streaming: span duration covers the N x 50 ms of the stream;
3. 50 concurrent calls on one connection: 50/50 spans, each server span the child of
   one client span (same-host linking);
4. ``traceparent`` gRPC metadata: the server span joins the caller's trace;
5. nginx h2c: curl (one URL per process) and 100 concurrent streams on one connection:
   a read of all their responses at once, or one sendmsg of hundreds of iovecs, loses
   no stream (and linking holds when the server reads them first); with
   ``capture.http2_max_bytes`` lowered, the streams past it are counted, not guessed;
6. Prometheus ``rpc_server_call_duration_seconds_count`` == span count, promtool;
7. h2c by ``Upgrade: h2c``: curl --http2 against hypercorn (``peers/h2c_asgi_app.py``),
   both ends: stream 1 is the HTTP/1.1 request, no 101 span, trace context kept;
8. HTTP/2 over TLS (ALPN h2): nginx ``listen ... ssl http2`` and curl --http2 https,
   through the libssl capture, server side and client side;
9. a gRPC channel opened (and used) before the agent started: joined midway from its
   frames, every later call a span per side, never a wrong name or status; big
   messages on it once the kernel was told; an h2-over-TLS connection the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlsplit

import pytest

from conftest import NGINX, curl_get, free_port, report, stop_process, wait_port

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PROMTOOL = "/usr/bin/promtool"
SPAN_TIMEOUT = 15.0
SETTLE = 1.5
CHECK = "grpc.health.v1.Health/Check"
T1, S1 = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
T2, S2 = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def peer_env() -> dict:
    """Ours minus OTEL_*/AUTOTEL_* and proxies (grpcio honours http_proxy)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "AUTOTEL_"))
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy")}


def pid_of(s: dict) -> Optional[int]:
    return s["resource"].get("process.pid")


def show(spans: List[dict], limit: int = 20) -> str:
    lines = [f"  {s['kind']:6} {s['name']!r} pid={pid_of(s)} status={s['status_code']} "
             f"dur={(s['end_ns'] - s['start_ns']) / 1e6:.1f}ms trace={s['trace_id']} "
             f"span={s['span_id']} parent={s['parent_span_id'] or '-'} attrs={s['attrs']}"
             for s in sorted(spans, key=lambda s: s["start_ns"])[:limit]]
    if len(spans) > limit:
        lines.append(f"  ... {len(spans) - limit} more")
    return "\n".join(lines)


def of(spans: List[dict], kind: str, name: Optional[str] = None,
       pids: Optional[set] = None) -> List[dict]:
    return [s for s in spans if s["kind"] == kind and (name is None or s["name"] == name)
            and (pids is None or pid_of(s) in pids)]


def codes(spans: List[dict]) -> Counter:
    return Counter(s["attrs"].get("rpc.grpc.status_code") for s in spans)


def assert_agent_healthy(agent) -> None:
    assert agent.alive(), agent.logs_tail(40)
    text = agent.stderr_text() + agent.stdout_text()
    assert "panicked at" not in text, agent.logs_tail(40)


def check_rpc_attrs(s: dict, service: str, method: str, port: int) -> None:
    """What every gRPC span must carry (semconv RPC + gRPC)."""
    a = s["attrs"]
    assert s["name"] == f"{service}/{method}", show([s])
    assert a.get("rpc.system") == "grpc", show([s])
    assert a.get("rpc.service") == service and a.get("rpc.method") == method, show([s])
    assert isinstance(a.get("rpc.grpc.status_code"), int), show([s])
    assert a.get("network.protocol.version") == "2", show([s])
    assert a.get("server.port") == port, show([s])
    assert 0 < s["end_ns"] - s["start_ns"] < 30_000_000_000, show([s])


def wait_prom(agent, name: str, labels: dict, want: float, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = agent.prom_value(name, labels)
        if value is not None and value >= want:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # a surplus would show now
    return agent.prom_value(name, labels)


class Client:
    """A peer client script that prints "ready", then waits for "go" on stdin."""

    def __init__(self, script: str, *args):
        self.proc = subprocess.Popen([sys.executable, str(PEERS / script), *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=peer_env(),
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"{script} did not start: {line!r} {self.proc.stderr.read()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def warm(self, timeout: float = 30) -> None:
        """A "warm-..." scenario: open the channel and make its first calls now."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.strip() == "warm", f"{line!r} {self.proc.stderr.read()}"

    def go(self, timeout: float = 60) -> dict:
        out, err = self.proc.communicate("go\n", timeout=timeout)
        assert self.proc.returncode == 0, f"client failed ({self.proc.returncode}):\n{out}\n{err}"
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def clients():
    started: List[Client] = []

    def _start(script: str, *args) -> Client:
        c = Client(script, *args)
        started.append(c)
        return c

    yield _start
    for c in started:
        stop_process(c.proc)


def start_peer_server(cmd: List[str], port: int, log_path: Path, what: str,
                      cwd: Optional[Path] = None) -> subprocess.Popen:
    """Start a peer server with its output in ``log_path`` and wait for its port;
    fail the test with the log tail if it does not come up."""
    with open(log_path, "wb") as log:
        p = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=peer_env(), start_new_session=True)
    try:
        wait_port(port, 15, p)
    except Exception as e:
        stop_process(p)
        pytest.fail(f"{what} did not start: {e}\n{log_path.read_text()[-2000:]}",
                    pytrace=False)
    return p


@pytest.fixture
def grpc_server(tmp_path):
    """``peers/h2_grpc_server.py`` on a free port -> (Popen, port)."""
    port = free_port()
    p = start_peer_server([sys.executable, str(PEERS / "h2_grpc_server.py"), str(port)],
                          port, tmp_path / "grpc_server.log", "grpc server")
    yield p, port
    stop_process(p)


def grpc_run(start_agent, sink, clients, server, scenario: str, *args):
    """Start the client (waiting), the agent selecting server port + client pid, then
    run the scenario. Returns (agent, client pid, client result)."""
    proc, port = server
    c = clients("h2_grpc_client.py", port, scenario, *args)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port, "AUTOTEL_PIDS": c.pid})
    result = c.go()
    assert agent.alive(), agent.logs_tail(30)
    return agent, c.pid, result


# --------------------------------------------------------------------------------------
# 1. unary calls: status codes and span status per side
# --------------------------------------------------------------------------------------


def test_1_unary_health_checks_and_errors(require_root, sink, start_agent, clients,
                                          grpc_server):
    k, m = 20, 10
    srv, port = grpc_server
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "unary", k, m)
    assert res["codes"] == {"OK": k, "NOT_FOUND": m} and res["fail"] == "INTERNAL", res
    want = 2 * (k + m + 1)
    pids = {srv.pid, cpid}
    spans = sink.wait_for_spans(lambda s: pid_of(s) in pids, want, SPAN_TIMEOUT, SETTLE)
    report("gRPC spans (server + client)", len(spans), want)

    server = of(spans, "SERVER", CHECK, {srv.pid})
    client = of(spans, "CLIENT", CHECK, {cpid})
    report(f"server {CHECK} spans", len(server), k + m)
    report(f"client {CHECK} spans", len(client), k + m)
    sc, cc = codes(server), codes(client)
    for side, cnt in (("server", sc), ("client", cc)):
        report(f"{side} Check spans rpc.grpc.status_code=0", cnt[0], k)
        report(f"{side} Check spans rpc.grpc.status_code=5", cnt[5], m)
    assert len(server) == k + m and len(client) == k + m, show(spans)
    assert sc == {0: k, 5: m} and cc == {0: k, 5: m}, show(spans)
    for s in server + client:
        check_rpc_attrs(s, "grpc.health.v1.Health", "Check", port)

    c_err = [s for s in client if s["attrs"]["rpc.grpc.status_code"] == 5
             and s["status_code"] == "ERROR" and s["attrs"].get("error.type") == "NOT_FOUND"]
    s_unset = [s for s in server if s["attrs"]["rpc.grpc.status_code"] == 5
               and s["status_code"] == "UNSET" and "error.type" not in s["attrs"]]
    ok_unset = [s for s in server + client if s["attrs"]["rpc.grpc.status_code"] == 0
                and s["status_code"] == "UNSET" and "error.type" not in s["attrs"]]
    report("client NOT_FOUND spans with status ERROR, error.type=NOT_FOUND", len(c_err), m)
    report("server NOT_FOUND spans with status UNSET (caller's fault)", len(s_unset), m)
    report("code-0 spans (both sides) with status UNSET", len(ok_unset), 2 * k)
    assert len(c_err) == m, show(client)
    assert len(s_unset) == m, show(server)
    assert len(ok_unset) == 2 * k, show(server + client)

    fail = [s for s in spans if s["name"] == "demo.Echo/Fail"]
    good = [s for s in fail if s["attrs"].get("rpc.grpc.status_code") == 13
            and s["status_code"] == "ERROR" and s["attrs"].get("error.type") == "INTERNAL"]
    report("server demo.Echo/Fail spans", len(of(fail, "SERVER", pids={srv.pid})), 1)
    report("client demo.Echo/Fail spans", len(of(fail, "CLIENT", pids={cpid})), 1)
    report("demo.Echo/Fail spans code 13, ERROR, error.type=INTERNAL", len(good), 2)
    assert len(of(fail, "SERVER", pids={srv.pid})) == 1, show(spans)
    assert len(of(fail, "CLIENT", pids={cpid})) == 1, show(spans)
    for s in fail:
        check_rpc_attrs(s, "demo.Echo", "Fail", port)
    assert len(good) == 2, show(fail)
    assert len(spans) == want, show(spans)
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 2. server streaming
# --------------------------------------------------------------------------------------


def test_2_server_streaming_duration(require_root, sink, start_agent, clients, grpc_server):
    n, ms = 10, 50
    srv, port = grpc_server
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "stream", n, ms)
    assert res["messages"] == n, res
    spans = sink.wait_for_spans(lambda s: pid_of(s) in {srv.pid, cpid}, 2, SPAN_TIMEOUT,
                                SETTLE)
    server = of(spans, "SERVER", "demo.Stream/Count", {srv.pid})
    client = of(spans, "CLIENT", "demo.Stream/Count", {cpid})
    report("server demo.Stream/Count spans", len(server), 1)
    report("client demo.Stream/Count spans", len(client), 1)
    assert len(server) == 1 and len(client) == 1 and len(spans) == 2, show(spans)
    for s in server + client:
        check_rpc_attrs(s, "demo.Stream", "Count", port)
        assert s["attrs"]["rpc.grpc.status_code"] == 0 and s["status_code"] == "UNSET", \
            show([s])
    # The server sleeps 50 ms before each of the N messages, so the stream (request
    # HEADERS .. trailers) lasts at least N x 50 ms on both sides; it cannot last
    # longer than the client measured around the call (+0.5 s of slack).
    low, high = n * ms / 1000, res["elapsed_s"] + 0.5
    for s in server + client:
        d = (s["end_ns"] - s["start_ns"]) / 1e9
        report(f"{s['kind'].lower()} span duration s (bound {low:.2f} <= d <= {high:.2f})",
               f"{d:.3f}", f"{low:.3f}")
        assert low <= d <= high, show(spans)
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 3. concurrency on one connection + same-host linking
# --------------------------------------------------------------------------------------


def test_3_concurrent_calls_one_connection(require_root, sink, start_agent, clients,
                                           grpc_server):
    c, ms = 50, 300
    srv, port = grpc_server
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "concurrent", c, ms)
    assert res["ok"] == c, res
    # precondition: the calls overlapped (serially they would take c x 300 ms = 15 s)
    report("client elapsed s for 50 x 300 ms calls (concurrent if < 5)",
           round(res["elapsed_s"], 2), 5)
    assert res["elapsed_s"] < 5, res
    spans = sink.wait_for_spans(lambda s: pid_of(s) in {srv.pid, cpid}, 2 * c, SPAN_TIMEOUT,
                                SETTLE)
    server = of(spans, "SERVER", "demo.Echo/Slow", {srv.pid})
    client = of(spans, "CLIENT", "demo.Echo/Slow", {cpid})
    report("server demo.Echo/Slow spans", len(server), c)
    report("client demo.Echo/Slow spans", len(client), c)
    assert len(server) == c and len(client) == c and len(spans) == 2 * c, show(spans)
    for s in server + client:
        check_rpc_attrs(s, "demo.Echo", "Slow", port)
    # server spans really overlapped: the most open at one instant
    events = sorted([(s["start_ns"], 1) for s in server] + [(s["end_ns"], -1) for s in server])
    open_now = peak = 0
    for _, d in events:
        open_now += d
        peak = max(peak, open_now)
    report("peak overlapping server spans (> 1)", peak, c)
    assert peak > 1, show(server)
    # same-host linking: each server span is the child of exactly one client span
    by_id = {(s["trace_id"], s["span_id"]): s for s in client}
    linked = [s for s in server if (s["trace_id"], s["parent_span_id"]) in by_id]
    parents = {s["parent_span_id"] for s in linked}
    report("server spans whose parent is a client span", len(linked), c)
    report("distinct client spans as parents", len(parents), c)
    roots = [s for s in client if s["parent_span_id"] == ""]
    report("client spans that are roots", len(roots), c)
    assert len(linked) == c and len(parents) == c, show(spans)
    assert len(roots) == c, show(client)
    # and the parent is the call it served: the server span lies within its client span
    # (1 ms of slack for the two clocks' rounding)
    inside = sum(by_id[(s["trace_id"], s["parent_span_id"])]["start_ns"] - 1_000_000
                 <= s["start_ns"] and
                 s["end_ns"] <= by_id[(s["trace_id"], s["parent_span_id"])]["end_ns"] + 1_000_000
                 for s in linked)
    report("server spans inside their parent client span", inside, c)
    assert inside == c, show(spans)
    assert_agent_healthy(agent)


def every_echo_call_ok(sink, srv_pid: int, cpid: int, n: int):
    """Waits for the spans of ``n`` demo.Echo/Slow calls on each side and checks every
    one has status 0 and no error -> (spans, server spans, client spans)."""
    spans = sink.wait_for_spans(lambda s: pid_of(s) in {srv_pid, cpid}, 2 * n,
                                SPAN_TIMEOUT, SETTLE)
    server = of(spans, "SERVER", "demo.Echo/Slow", {srv_pid})
    client = of(spans, "CLIENT", "demo.Echo/Slow", {cpid})
    report("server demo.Echo/Slow spans", len(server), n)
    report("client demo.Echo/Slow spans", len(client), n)
    assert len(server) == n and len(client) == n and len(spans) == 2 * n, show(spans)
    ok = [s for s in spans if s["attrs"].get("rpc.grpc.status_code") == 0
          and s["status_code"] == "UNSET" and "error.type" not in s["attrs"]]
    report("spans with gRPC status 0 and no error", len(ok), 2 * n)
    assert len(ok) == 2 * n, show(spans)
    return spans, server, client


def test_3b_messages_past_the_capture_lose_no_call(require_root, sink, start_agent,
                                                   clients, grpc_server):
    """Requests and echoes of 200 KB and 1 MB go past what one call's capture keeps
    (32 KB): grpcio writes each as one sendmsg holding the HEADERS, several 16 KB DATA
    frames and, for responses, the trailers. Before the kernel followed frame
    boundaries, the frames behind the prefix went by unread: the big calls' spans were
    lost (their trailers unseen), and HPACK's table, which later header blocks index,
    was unknown for the rest of the connection, so later calls lost their gRPC status
    (and a client span its method). Now every call has its span on both sides, with
    its method and status OK, and no call is reported as an error."""
    srv, port = grpc_server
    sizes = [100, 200_000, 100, 1_000_000, 100, 100]
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "sizes",
                                ",".join(map(str, sizes)))
    assert res["echoed"] == sizes, res  # precondition: every call succeeded
    n = len(sizes)
    spans, server, client = every_echo_call_ok(sink, srv.pid, cpid, n)
    for s in spans:
        check_rpc_attrs(s, "demo.Echo", "Slow", port)
    by_id = {(s["trace_id"], s["span_id"]) for s in client}
    linked = sum((s["trace_id"], s["parent_span_id"]) in by_id for s in server)
    report("server spans whose parent is a client span", linked, n)
    assert linked == n, show(spans)
    lost = agent.prom_value("autotel_kernel_total", {"kind": "h2_unfollowed"}) or 0
    report("kernel h2_unfollowed (calls whose frame boundaries were lost)", int(lost), 0)
    assert lost == 0
    assert_agent_healthy(agent)


def test_3c_big_messages_on_concurrent_calls(require_root, sink, start_agent, clients,
                                            grpc_server):
    """Four threads each make 300 KB, 100 B and 300 KB calls on one channel at once:
    the big messages' DATA frames interleave with other calls' HEADERS and trailers
    inside writes and reads far larger than the capture, so header blocks sit between
    and behind DATA frames past the prefix. Every call keeps its span, method and
    status on both sides."""
    srv, port = grpc_server
    sizes, threads = [300_000, 100, 300_000], 4
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "sizes",
                                ",".join(map(str, sizes)), threads)
    assert sorted(res["echoed"]) == sorted(sizes * threads), res  # precondition
    every_echo_call_ok(sink, srv.pid, cpid, len(sizes) * threads)
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 4. traceparent in gRPC metadata
# --------------------------------------------------------------------------------------


def test_4_traceparent_metadata(require_root, sink, start_agent, clients, grpc_server):
    """Three Checks on one channel: traceparent T1/S1, then T2/S2, then none. Explicit
    metadata wins over same-host linking; the third links to its client span."""
    srv, port = grpc_server
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "traceparent",
                                f"00-{T1}-{S1}-01", f"00-{T2}-{S2}-01")
    assert res["serving"] == 3, res
    spans = sink.wait_for_spans(lambda s: pid_of(s) in {srv.pid, cpid}, 6, SPAN_TIMEOUT,
                                SETTLE)
    server = sorted(of(spans, "SERVER", CHECK, {srv.pid}), key=lambda s: s["start_ns"])
    client = sorted(of(spans, "CLIENT", CHECK, {cpid}), key=lambda s: s["start_ns"])
    report("server Check spans", len(server), 3)
    report("client Check spans", len(client), 3)
    assert len(server) == 3 and len(client) == 3 and len(spans) == 6, show(spans)
    got = [(s["trace_id"], s["parent_span_id"]) for s in server]
    want = [(T1, S1), (T2, S2), (client[2]["trace_id"], client[2]["span_id"])]
    for i, (g, w) in enumerate(zip(got, want)):
        report(f"server span {i + 1} (trace, parent) == {'client span' if i == 2 else 'sent'}",
               f"({g[0][:8]}..,{g[1]})", f"({w[0][:8]}..,{w[1]})")
    assert got == want, show(spans)
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 5. nginx h2c
# --------------------------------------------------------------------------------------

NGINX_H2_CONF = """\
user root;
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} http2;
        root {prefix}/static;
        location /h2/ {{
            location ~ /ok- {{ return 200 "ok\\n"; }}
        }}
    }}
}}
"""


def start_nginx_h2(tmp_path, tls: Optional[tuple] = None):
    """nginx 1.22 with ``listen 127.0.0.1:PORT http2`` (h2c, prior knowledge only), or
    with ``tls=(cert, key)`` ``listen ... ssl http2`` (h2 by ALPN): /h2/ok-* answers
    200, anything else under /h2/ is 404. -> (Popen, port)."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"{NGINX} not found: apt-get install nginx-light", pytrace=False)
    port = free_port()
    prefix = tmp_path / f"nginx-h2-{port}"
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "static").mkdir()
    conf_text = NGINX_H2_CONF.format(prefix=prefix, port=port)
    if tls:
        conf_text = conf_text.replace(
            " http2;", f" ssl http2;\n        ssl_certificate {tls[0]};\n"
                       f"        ssl_certificate_key {tls[1]};")
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    log = open(prefix / "stderr.log", "wb")
    p = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                          "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    log.close()
    try:
        wait_port(port, 15, p)
    except Exception as e:
        stop_process(p)
        pytest.fail(f"nginx did not start: {e}\n{(prefix / 'stderr.log').read_text()}",
                    pytrace=False)
    return p, port


@pytest.fixture
def nginx_h2(tmp_path):
    p, port = start_nginx_h2(tmp_path)
    yield p, port
    stop_process(p, signal.SIGTERM)


def check_h2_server_spans(spans: List[dict], want_status: dict, port: int) -> None:
    """Each path requested once: one SERVER span per path with the right attributes."""
    by_path = Counter(s["attrs"].get("url.path") for s in spans)
    dup = {p: n for p, n in by_path.items() if n != 1}
    assert not dup and set(by_path) == set(want_status), (dup, show(spans))
    right = [s for s in spans
             if s["attrs"].get("http.request.method") == "GET"
             and s["attrs"].get("http.response.status_code") == want_status[s["attrs"]["url.path"]]
             and s["attrs"].get("network.protocol.version") == "2"
             and str(s["attrs"].get("http.route", "")).startswith("/h2/")
             and s["attrs"].get("server.port") == port]
    report("server spans with GET, status as requested, version 2, url.path, http.route",
           len(right), len(want_status))
    assert len(right) == len(want_status), show(spans)
    errors = [s for s in spans if s["status_code"] != "UNSET"]
    report("server spans with a status (404 is UNSET on a server)", len(errors), 0)
    assert not errors, show(errors)


def test_5a_nginx_h2c_curl_prior_knowledge(require_root, sink, start_agent, nginx_h2):
    proc, port = nginx_h2
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port})
    k = 8
    want_status = {}
    for i in range(k):
        path = f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}"
        r = curl_get(f"http://127.0.0.1:{port}{path}", "--http2-prior-knowledge")
        assert r["rc"] == 0 and r["request_version"] == "2", r  # precondition: real h2
        want_status[path] = 200 if i % 2 == 0 else 404
        assert r["code"] == want_status[path], r
    assert agent.alive(), agent.logs_tail(30)
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", k, SPAN_TIMEOUT, SETTLE)
    report("nginx h2c server spans", len(spans), k)
    assert len(spans) == k and len(sink.spans()) == k, show(sink.spans())
    check_h2_server_spans(spans, want_status, port)
    count = wait_prom(agent, "http_server_request_duration_seconds_count",
                      {"network_protocol_version": "2"}, k)
    report("http_server_request_duration_seconds_count{network_protocol_version=2}", count, k)
    assert count == k, agent.metrics_text()
    assert_agent_healthy(agent)


def h2_raw_run(start_agent, clients, port: int, n: int, select_client: bool,
               piece: int = 0, config_yaml: Optional[str] = None):
    """``peers/h2_raw_client.py``: n GET streams opened at once on one connection
    (even i -> /h2/ok-i 200, odd i -> /h2/missing-i 404), in one sendmsg of
    ``piece``-byte iovecs when ``piece`` is set. Returns (agent, client,
    {path: status wanted}, client result)."""
    c = clients("h2_raw_client.py", port, n, "/h2", *([piece] if piece else []))
    env = {"AUTOTEL_OPEN_PORTS": port}
    if select_client:
        env["AUTOTEL_PIDS"] = c.pid
    agent = start_agent(env, config_yaml=config_yaml)
    res = c.go()
    want_status = {(f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}"):
                   (200 if i % 2 == 0 else 404) for i in range(n)}
    assert res["statuses"] == want_status, res  # precondition
    report("streams open at once on the one connection", res["max_open"], n)
    assert res["max_open"] == n, res
    assert agent.alive(), agent.logs_tail(30)
    return agent, c, want_status, res


def http2_parse_errors(agent, also: tuple = ()) -> dict:
    """Non-zero ``autotel_parse_errors_total{protocol="http2"}`` series and the kernel's
    truncated-payload counter (diagnostics of lost HTTP/2 streams); ``also``: more
    kinds of parse error."""
    out = {}
    for kind in ("sync_lost", "stream_unfinished", *also):
        out[kind] = agent.prom_value("autotel_parse_errors_total",
                                     {"protocol": "http2", "kind": kind}) or 0
    out["kernel truncated"] = agent.prom_value("autotel_kernel_total",
                                               {"kind": "truncated"}) or 0
    return out


def test_5b_nginx_h2c_100_concurrent_streams(require_root, sink, start_agent, clients,
                                             nginx_h2):
    """nginx only selected: 100 streams opened in one write on one connection."""
    proc, port = nginx_h2
    n = 100
    agent, c, want_status, _ = h2_raw_run(start_agent, clients, port, n, select_client=False)
    spans = sink.wait_for_spans(None, n, SPAN_TIMEOUT, SETTLE)
    server = of(spans, "SERVER")
    report("nginx server spans", len(server), n)
    assert len(server) == n and len(spans) == n, show(spans)
    check_h2_server_spans(server, want_status, port)
    assert_agent_healthy(agent)


def h2_client_burst_spans(agent, sink, c, port: int, n: int, want_status: dict):
    """Both sides selected: n nginx server spans and n exact client spans, nothing
    counted lost (every frame of the burst and of the responses was captured)."""
    spans = sink.wait_for_spans(None, 2 * n, SPAN_TIMEOUT, SETTLE)
    server = of(spans, "SERVER")
    client = of(spans, "CLIENT", pids={c.pid})
    diag = http2_parse_errors(agent)
    diag["kernel iov_cut"] = agent.prom_value("autotel_kernel_total", {"kind": "iov_cut"}) or 0
    report("nginx server spans", len(server), n)
    report("h2 client spans", len(client), n)
    report("lost-stream counters (sync_lost, unfinished, truncated, iov_cut)",
           sum(diag.values()), 0)
    assert len(server) == n, show(server, 10)
    check_h2_server_spans(server, want_status, port)
    assert len(client) == n and not any(diag.values()), (len(client), diag, show(client, 5))
    by_path = {urlsplit(s["attrs"].get("url.full", "")).path: s for s in client}
    # Each client span carries its own stream's path and status (paths alternate
    # between an existing file and a 404).
    right = [p for p, s in by_path.items()
             if (s["attrs"].get("http.request.method"), s["attrs"].get("network.protocol.version"),
                 s["attrs"].get("http.response.status_code")) == ("GET", "2", want_status.get(p))]
    report("client spans with GET, version 2, their own path and status", len(right), n)
    assert len(right) == n, show(client, 5)
    # same-host linking on a multiplexed connection: each server span is the child
    # of the client span of its stream
    linked = sum(s["parent_span_id"] == by_path[s["attrs"]["url.path"]]["span_id"]
                 for s in server if s["attrs"]["url.path"] in by_path)
    report("server spans child of the client span of their stream", linked, n)
    assert linked == n, show(spans, 10)
    assert_agent_healthy(agent)


def test_5c_h2_client_100_concurrent_streams(require_root, sink, start_agent, clients,
                                            nginx_h2):
    """The h2 client selected too. Its 100 responses queue up and the client reads
    them with recv(65536): one read carries many streams' frames, far more than
    capture.max_bytes (4096 by default). An HTTP/2 connection is captured wide (up to
    32767 bytes per call), so no stream is lost: every client span is reported, exact."""
    proc, port = nginx_h2
    n = 100
    agent, c, want_status, res = h2_raw_run(start_agent, clients, port, n,
                                            select_client=True)
    report("largest client read, bytes (> capture.max_bytes 4096)", res["max_read"], 4096)
    assert res["max_read"] > 4096, res  # precondition: one read beyond the default prefix
    h2_client_burst_spans(agent, sink, c, port, n, want_status)


def test_5d_h2_capture_limit_is_the_configured_one(require_root, sink, start_agent,
                                                  clients, nginx_h2):
    """``capture.http2_max_bytes: 4096``: the client's read of the queued responses is
    cut at 4096 bytes, so streams whose frames fall past it cannot be reported. They
    must be counted (stream_unfinished), never lost silently or reported wrong."""
    proc, port = nginx_h2
    n = 100
    agent, c, want_status, res = h2_raw_run(start_agent, clients, port, n,
                                            select_client=True,
                                            config_yaml="capture: {http2_max_bytes: 4096}\n")
    assert res["max_read"] > 4096, res  # precondition: one read beyond the limit
    spans = sink.wait_for_spans(None, n + 1, SPAN_TIMEOUT, SETTLE)
    client = of(spans, "CLIENT", pids={c.pid})
    diag = http2_parse_errors(agent)
    unfinished = int(diag["stream_unfinished"])
    report("kernel truncated payloads (> 0 under the 4096-byte limit)",
           diag["kernel truncated"], "> 0")
    report("h2 client spans (< all) + counted unfinished streams",
           f"{len(client)} + {unfinished}", n)
    assert diag["kernel truncated"] > 0 and len(client) < n, (len(client), diag)
    assert client and len(client) + unfinished == n, (len(client), diag)
    wrong = [s for s in client
             if s["attrs"].get("http.response.status_code")
             != want_status.get(urlsplit(s["attrs"].get("url.full", "")).path)]
    report("reported client spans with another stream's status", len(wrong), 0)
    assert not wrong, show(wrong, 5)
    assert_agent_healthy(agent)


def test_5e_h2_client_burst_in_hundreds_of_iovecs(require_root, sink, start_agent, clients,
                                                  nginx_h2):
    """gRPC's C core sends a busy channel's calls in one sendmsg, three iovecs per call.
    Here 100 streams open in ONE sendmsg of 8-byte iovecs (hundreds of them): every
    stream must be seen on the client side. (Walking only the first 64 iovecs, as the
    agent once did, lost the calls behind them: a grpcio client under load showed 30
    of 50 client spans.)"""
    proc, port = nginx_h2
    n = 100
    agent, c, want_status, res = h2_raw_run(start_agent, clients, port, n,
                                            select_client=True, piece=8)
    report("iovecs in the one sendmsg that opened the streams (> 64)", res["iovecs"], 64)
    assert res["iovecs"] > 64, res  # precondition
    h2_client_burst_spans(agent, sink, c, port, n, want_status)
# --------------------------------------------------------------------------------------
# 6. Prometheus
# --------------------------------------------------------------------------------------


def test_6_prometheus_rpc_metrics(require_root, sink, start_agent, clients, grpc_server):
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail(f"{PROMTOOL} not found: apt-get install prometheus", pytrace=False)
    k, m = 15, 5
    srv, port = grpc_server
    agent, cpid, res = grpc_run(start_agent, sink, clients, grpc_server, "unary", k, m)
    assert res["codes"] == {"OK": k, "NOT_FOUND": m}, res
    spans = sink.wait_for_spans(lambda s: pid_of(s) in {srv.pid, cpid},
                                2 * (k + m + 1), SPAN_TIMEOUT, SETTLE)
    server = of(spans, "SERVER", CHECK, {srv.pid})
    client = of(spans, "CLIENT", CHECK, {cpid})
    report("server Check spans", len(server), k + m)
    report("client Check spans", len(client), k + m)
    assert len(server) == k + m and len(client) == k + m, show(spans)
    labels = {"rpc_system": "grpc", "rpc_service": "grpc.health.v1.Health",
              "rpc_method": "Check"}
    name = "rpc_server_call_duration_seconds_count"
    total = wait_prom(agent, name, labels, len(server))
    report(f"{name}{{Check}} == server spans", total, len(server))
    assert total == len(server), agent.metrics_text()
    for code, want in (("0", k), ("5", m)):
        v = agent.prom_value(name, {**labels, "rpc_grpc_status_code": code})
        report(f"{name}{{Check, rpc_grpc_status_code={code}}}", v, want)
        assert v == want, agent.metrics_text()
    cname = "rpc_client_call_duration_seconds_count"
    ctotal = agent.prom_value(cname, labels)
    report(f"{cname}{{Check}} == client spans", ctotal, len(client))
    assert ctotal == len(client), agent.metrics_text()
    fail = agent.prom_value(name, {"rpc_method": "Fail", "rpc_grpc_status_code": "13"})
    report(f"{name}{{Fail, 13}}", fail, 1)
    assert fail == 1, agent.metrics_text()
    text = agent.metrics_text()
    cp = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                        text=True, timeout=30)
    out = (cp.stdout + cp.stderr).strip()
    print(f"promtool check metrics: exit {cp.returncode}\n{out}")
    report("promtool check metrics exit code", cp.returncode, 0)
    assert cp.returncode == 0, out
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 7. h2c via HTTP/1.1 Upgrade: curl --http2 against hypercorn
# --------------------------------------------------------------------------------------


def start_hypercorn(tmp_path, *args: str):
    """hypercorn (``peers/h2c_asgi_app.py``) on a free port; ``args`` are extra
    hypercorn options (certificates). -> (Popen, port)."""
    port = free_port()
    p = start_peer_server([sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
                           "--workers", "0", *args, "h2c_asgi_app:app"], port,
                          tmp_path / f"hypercorn-{port}.log",
                          "hypercorn (pip install -r tests/requirements.txt)", cwd=PEERS)
    return p, port


@pytest.fixture
def hypercorn(tmp_path):
    started = []

    def _start(*args: str):
        p, port = start_hypercorn(tmp_path, *args)
        started.append(p)
        return p, port

    yield _start
    for p in started:
        stop_process(p)


def check_h2_client_spans(spans: List[dict], want_status: dict, scheme: str) -> None:
    """One CLIENT span per path, GET, the status asked for, version 2, url.full."""
    by_path = Counter(urlsplit(s["attrs"].get("url.full", "")).path for s in spans)
    dup = {p: n for p, n in by_path.items() if n != 1}
    assert not dup and set(by_path) == set(want_status), (dup, show(spans))
    right = [s for s in spans
             if s["attrs"].get("http.request.method") == "GET"
             and s["attrs"].get("network.protocol.version") == "2"
             and s["attrs"].get("url.full", "").startswith(f"{scheme}://")
             and s["attrs"].get("http.response.status_code")
             == want_status[urlsplit(s["attrs"]["url.full"]).path]]
    report("client spans with GET, status as requested, version 2, url.full", len(right),
           len(want_status))
    assert len(right) == len(want_status), show(spans)


def test_7_h2c_upgrade_curl_hypercorn(require_root, sink, start_agent, hypercorn):
    """curl --http2 on http:// asks for ``Upgrade: h2c``; hypercorn answers 101 and then
    speaks HTTP/2 (its SETTINGS and the response HEADERS of stream 1 often in the same
    write as the 101). Both ends selected: the server by pid, curl by name. Each
    request is one HTTP/2 stream 1: one SERVER and one CLIENT span with version 2, the
    method and path of the HTTP/1.1 request and the status of the HTTP/2 response, no
    101 span. The first request carries a traceparent: its server span joins it; the
    others link to their curl span (same host)."""
    srv, port = hypercorn()
    agent = start_agent({"AUTOTEL_PIDS": srv.pid, "AUTOTEL_EXECUTABLE_NAME": "curl$"})
    k = 6
    want_status, curl_pids = {}, set()
    for i in range(k):
        path = f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}"
        extra = ["--http2"] + (["-H", f"traceparent: 00-{T1}-{S1}-01"] if i == 0 else [])
        r = curl_get(f"http://127.0.0.1:{port}{path}", *extra)
        want_status[path] = 200 if i % 2 == 0 else 404
        # precondition: a real upgrade (HTTP/1.1 request, 101, then an HTTP/2 response)
        assert r["rc"] == 0 and r["request_version"] == "1.1", r
        assert "Switching to HTTP/2" in r["stderr"], r["stderr"]
        assert f"< HTTP/2 {want_status[path]}" in r["stderr"], r["stderr"]
        curl_pids.add(r["pid"])
    spans = sink.wait_for_spans(lambda s: pid_of(s) in curl_pids | {srv.pid}, 2 * k,
                                SPAN_TIMEOUT, SETTLE)
    server = of(spans, "SERVER", pids={srv.pid})
    client = of(spans, "CLIENT", pids=curl_pids)
    report("hypercorn server spans", len(server), k)
    report("curl client spans", len(client), k)
    assert len(server) == k and len(client) == k and len(spans) == 2 * k, show(spans)
    check_h2_server_spans(server, want_status, port)
    check_h2_client_spans(client, want_status, "http")
    switching = [s for s in spans if s["attrs"].get("http.response.status_code") == 101]
    report("spans with status 101", len(switching), 0)
    assert not switching, show(switching)
    client_by_path = {urlsplit(s["attrs"]["url.full"]).path: s for s in client}
    first = "/h2/ok-0"
    got = {s["attrs"]["url.path"]: (s["trace_id"], s["parent_span_id"]) for s in server}
    want = {p: (T1, S1) if p == first else (c["trace_id"], c["span_id"])
            for p, c in client_by_path.items()}
    joined = sum(got[p] == want[p] for p in want)
    report("server spans in the trace wanted (traceparent / their curl span)", joined, k)
    assert got == want, show(spans)
    count = wait_prom(agent, "http_server_request_duration_seconds_count",
                      {"network_protocol_version": "2"}, k)
    report("http_server_request_duration_seconds_count{network_protocol_version=2}", count, k)
    assert count == k, agent.metrics_text()
    errors = {p: agent.prom_value("autotel_parse_errors_total", {"protocol": p}) or 0
              for p in ("http1", "http2")}
    report("HTTP/1 + HTTP/2 parse errors", errors, {"http1": 0, "http2": 0})
    assert errors == {"http1": 0, "http2": 0}, agent.metrics_text()
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 8. HTTP/2 over TLS (ALPN h2): nginx and curl, plaintext from the libssl uprobes
# --------------------------------------------------------------------------------------


@pytest.fixture
def nginx_h2_tls(tmp_path):
    from test_tls import make_cert
    cert, key = make_cert(tmp_path)
    p, port = start_nginx_h2(tmp_path, (cert, key))
    yield p, port
    stop_process(p, signal.SIGTERM)


def test_8_h2_over_tls_nginx_curl(require_root, sink, start_agent, nginx_h2_tls):
    """nginx ``listen ... ssl http2`` (system libssl) and curl --http2 over https (ALPN
    h2): nginx's plaintext comes from the TLS capture. nginx selected by port: k SERVER
    spans with version 2, https, the TLS version and ``tls.next_protocol=h2`` (TLS 1.3
    encrypts the server's ALPN choice: the HTTP/2 preface tells it). The client side
    is test_8b (ports and executable name together would have to both match)."""
    proc, port = nginx_h2_tls
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port})
    k = 6
    want_status = {}
    for i in range(k):
        path = f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}"
        r = curl_get(f"https://127.0.0.1:{port}{path}", "--http2", "-k")
        want_status[path] = 200 if i % 2 == 0 else 404
        assert r["rc"] == 0 and r["request_version"] == "2", r  # precondition: real h2
        assert "ALPN: server accepted h2" in r["stderr"], r["stderr"]
        assert r["code"] == want_status[path], r
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", k, SPAN_TIMEOUT, SETTLE)
    report("nginx h2-over-TLS server spans", len(spans), k)
    assert len(spans) == k and len(sink.spans()) == k, show(sink.spans())
    check_h2_server_spans(spans, want_status, port)
    tls_ok = [s for s in spans if s["attrs"].get("url.scheme") == "https"
              and s["attrs"].get("tls.protocol.name") == "tls"
              and s["attrs"].get("tls.protocol.version") in ("1.2", "1.3")
              and s["attrs"].get("tls.next_protocol") == "h2"]
    report("server spans with url.scheme=https, tls.protocol.version, tls.next_protocol=h2",
           len(tls_ok), k)
    assert len(tls_ok) == k, show(spans)
    count = wait_prom(agent, "http_server_request_duration_seconds_count",
                      {"network_protocol_version": "2"}, k)
    report("http_server_request_duration_seconds_count{network_protocol_version=2}", count, k)
    assert count == k, agent.metrics_text()
    unfinished = http2_parse_errors(agent)["stream_unfinished"]
    report("http2 streams counted unfinished", unfinished, 0)
    assert unfinished == 0
    assert_agent_healthy(agent)


def test_8b_h2_over_tls_curl_client_spans(require_root, sink, start_agent, nginx_h2_tls):
    """The same exchanges seen from curl (selected by name): k CLIENT spans, version 2,
    https URLs, tls.next_protocol=h2."""
    proc, port = nginx_h2_tls
    agent = start_agent({"AUTOTEL_EXECUTABLE_NAME": "curl$"})
    k = 6
    want_status, curl_pids = {}, set()
    for i in range(k):
        path = f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}"
        r = curl_get(f"https://127.0.0.1:{port}{path}", "--http2", "-k")
        want_status[path] = 200 if i % 2 == 0 else 404
        assert r["rc"] == 0 and r["request_version"] == "2", r
        assert r["code"] == want_status[path], r
        curl_pids.add(r["pid"])
    spans = sink.wait_for_spans(lambda s: pid_of(s) in curl_pids, k, SPAN_TIMEOUT, SETTLE)
    client = of(spans, "CLIENT", pids=curl_pids)
    report("curl h2-over-TLS client spans", len(client), k)
    assert len(client) == k and len(spans) == k, show(spans)
    check_h2_client_spans(client, want_status, "https")
    tls_ok = [s for s in client if s["attrs"].get("tls.next_protocol") == "h2"
              and s["attrs"].get("tls.protocol.version") in ("1.2", "1.3")]
    report("client spans with tls.protocol.version and tls.next_protocol=h2", len(tls_ok), k)
    assert len(tls_ok) == k, show(client)
    assert_agent_healthy(agent)


# --------------------------------------------------------------------------------------
# 9. a channel opened before the agent started
# --------------------------------------------------------------------------------------


def test_9_channel_opened_before_the_agent(require_root, sink, start_agent, clients,
                                           grpc_server):
    """The client opens its channel and calls Health/Check and demo.Echo/Slow before
    the agent starts: the agent never sees the preface, and both HPACK tables hold
    entries it never saw (gRPC peers index the method path, the content-type and
    grpc-status 0). It joins from the frames: every call made after it is ready is
    one gRPC span per side with the right kind. A name or status is reported only
    when decoded (never a guess): a method first called after the join (demo.Echo/
    Fail) is named, codes 5 and 13 (first sent after the join) are right, and a
    call whose path or status stayed in the unseen tables is named ``grpc`` or has
    no status code, and carries ``autotel.http2.hpack_unknown``."""
    k, m = 4, 2
    srv, port = grpc_server
    c = clients("h2_grpc_client.py", port, "warm-unary", k, m)
    c.warm()
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port, "AUTOTEL_PIDS": c.pid})
    res = c.go()
    assert res["codes"] == {"OK": k, "NOT_FOUND": m} and res["fail"] == "INTERNAL", res
    want = 2 * (k + m + 1)
    pids = {srv.pid, c.pid}
    spans = sink.wait_for_spans(lambda s: pid_of(s) in pids, want, SPAN_TIMEOUT, SETTLE)
    report("gRPC spans (server + client) of a channel opened before the agent",
           len(spans), want)
    assert len(spans) == want, show(spans)
    for kind, pid in (("SERVER", srv.pid), ("CLIENT", c.pid)):
        side = of(spans, kind, pids={pid})
        report(f"{kind} spans", len(side), k + m + 1)
        assert len(side) == k + m + 1, show(spans)
        assert all(s["attrs"].get("rpc.system") == "grpc" for s in side), show(side)
        fail = of(side, kind, "demo.Echo/Fail")
        report(f"{kind} demo.Echo/Fail spans with code 13", len(fail), 1)
        assert len(fail) == 1 and fail[0]["attrs"].get("rpc.grpc.status_code") == 13, \
            show(side)
        check_rpc_attrs(fail[0], "demo.Echo", "Fail", port)
        checks = [s for s in side if s is not fail[0]]
        names = Counter(s["name"] for s in checks)
        report(f"{kind} Check spans named {CHECK} or grpc", sum(names.values()), k + m)
        assert set(names) <= {CHECK, "grpc"}, show(checks)
        got = codes(checks)
        report(f"{kind} Check spans with code 5", got[5], m)
        assert got[5] == m and set(got) <= {0, 5, None}, show(checks)
        guessless = [s for s in checks if (s["name"] == CHECK
                                           and s["attrs"].get("rpc.grpc.status_code")
                                           is not None)
                     or s["attrs"].get("autotel.http2.hpack_unknown") is True]
        report(f"{kind} Check spans fully decoded or marked hpack_unknown",
               len(guessless), k + m)
        assert len(guessless) == k + m, show(checks)
    # Joining is no error: fields from before it are unknown, not out of sync.
    errors = http2_parse_errors(agent, also=("hpack_desync",))
    desync = errors["hpack_desync"] + errors["sync_lost"]
    report("http2 hpack_desync + sync_lost errors", desync, 0)
    assert desync == 0, errors
    assert_agent_healthy(agent)


def test_9b_big_messages_on_a_channel_opened_before_the_agent(require_root, sink,
                                                               start_agent, clients,
                                                               grpc_server):
    """The same join, then 200 KB and 300 KB echoes between small ones: past the
    first call the agent tells the kernel the connection is HTTP/2 (it never saw the
    preface), which then captures it as one whose preface it saw (the wide prefix,
    frames followed past it): every call is a span per side, none in error. (A pause
    after the first call lets the agent read it: a call the kernel sees before the
    hint arrives keeps the narrow prefix.)"""
    srv, port = grpc_server
    sizes = "100,p300,200000,100,300000,100"
    c = clients("h2_grpc_client.py", port, "warm-sizes", sizes)
    c.warm()
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port, "AUTOTEL_PIDS": c.pid})
    res = c.go()
    calls = [int(n) for n in sizes.split(",") if not n.startswith("p")]
    assert res["echoed"] == calls, res
    pids = {srv.pid, c.pid}
    want = 2 * len(calls)
    spans = sink.wait_for_spans(lambda s: pid_of(s) in pids, want, SPAN_TIMEOUT, SETTLE)
    errors = http2_parse_errors(agent)
    print(f"http2 parse errors: {errors}")
    for kind, pid in (("SERVER", srv.pid), ("CLIENT", c.pid)):
        side = of(spans, kind, pids={pid})
        ok = [s for s in side if s["attrs"].get("rpc.system") == "grpc"
              and s["name"] in ("demo.Echo/Slow", "grpc") and s["status_code"] != "ERROR"
              and s["attrs"].get("rpc.grpc.status_code") in (0, None)]
        report(f"{kind} gRPC spans, none in error", len(ok), len(calls))
        assert len(ok) == len(calls), show(spans)
    assert len(spans) == want, show(spans)
    unfinished = errors["stream_unfinished"]
    report("http2 streams counted unfinished", unfinished, 0)
    assert unfinished == 0
    assert_agent_healthy(agent)


def test_9c_h2_over_tls_connection_opened_before_the_agent(require_root, sink, start_agent,
                                                           clients, nginx_h2_tls):
    """An HTTP/2-over-TLS connection (python h2 + ssl, system libssl) to nginx, opened
    and used before the agent started: the plaintext the TLS capture reads from then
    on has no preface either. Both ends selected (nginx by port, the client by pid):
    each request after the agent is ready is one SERVER and one CLIENT span with its
    path, status and version 2."""
    proc, port = nginx_h2_tls
    k = 6
    c = clients("h2_tls_client.py", port, k)
    c.warm()
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port, "AUTOTEL_PIDS": c.pid})
    res = c.go()
    want_status = {f"/h2/ok-{i}" if i % 2 == 0 else f"/h2/missing-{i}":
                   200 if i % 2 == 0 else 404 for i in range(k)}
    assert res["alpn"] == "h2" and res["statuses"] == want_status, res
    spans = sink.wait_for_spans(lambda s: True, 2 * k, SPAN_TIMEOUT, SETTLE)
    server = of(spans, "SERVER")
    client = of(spans, "CLIENT", pids={c.pid})
    report("nginx h2-over-TLS server spans of a connection opened before the agent",
           len(server), k)
    report("client spans of it", len(client), k)
    check_h2_server_spans(server, want_status, port)
    check_h2_client_spans(client, want_status, "https")
    assert len(spans) == 2 * k, show(spans)
    assert_agent_healthy(agent)
