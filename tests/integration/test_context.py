"""Trace context integration tests: the real agent linking spans of real programs.

What is checked (see DESIGN.md, "Trace context"):

1. an incoming W3C ``traceparent``/``tracestate`` makes the SERVER span a child of the
   caller; malformed headers start a new root;
2. a CLIENT call a thread makes while serving a request is a child of that SERVER span
   (thread-per-request python proxy; event-driven nginx);
3. both ends on this host: the SERVER span of B is a child of A's CLIENT span on the
   same TCP connection (4-tuple), switchable off; an explicit ``traceparent`` wins;
4. hybrid with the official OpenTelemetry Python SDK (``opentelemetry-instrument``)
   and detection of SDK-instrumented processes;
5. service naming (config mapping, the target's OTEL_* env, script, executable);
6. head sampling (OTEL_TRACES_SAMPLER / _ARG) with exact metrics whatever is dropped.

Peers are programs we did not write (python ``http.server``, nginx ``proxy_pass``,
Node.js ``http``, curl, the OTel SDK) plus ``peers/proxy.py``, a stdlib
ThreadingHTTPServer whose handler fetches its backend with urllib. Every request
carries a unique path, so the tests correlate the spans of one request by path and
then check the ids the agent put on them. Counts are exact; each test prints the
figures it checks.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import pytest

from conftest import (agent_map_id, bpftool_json, build_go_peer, curl, free_port, report,
                      stop_process, wait_port)
from dbservers import start_redis

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
NODE = shutil.which("node") or "/usr/bin/node"
SPAN_TIMEOUT = 10.0
SETTLE = 1.0
# nginx location answering at once (sampling tests need many fast requests)
FAST = 'location /fast/ { return 200 "ok"; }'
# Prometheus name of the server request counter (summed over the series of a job)
SERVER_COUNT = "http_server_request_duration_seconds_count"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def peer_env(extra: Optional[dict] = None) -> dict:
    """Environment for a peer: ours minus any OTEL_*/AUTOTEL_* (they would change how
    the agent names the peer, or configure an SDK), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTEL_"))}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


@pytest.fixture
def spawn(tmp_path):
    """Factory: ``spawn(cmd, port=None, env=None, name='peer')`` -> Popen.

    Starts a peer in its own session (output to a log file in tmp_path), waits until
    it accepts connections on ``port`` (fails if it dies first), stops it at teardown."""
    procs: List[subprocess.Popen] = []

    def _spawn(cmd: Sequence[str], port: Optional[int] = None, env: Optional[dict] = None,
               name: str = "peer") -> subprocess.Popen:
        log = open(tmp_path / f"{name}{len(procs)}.log", "wb")
        p = subprocess.Popen(list(map(str, cmd)), env=peer_env(env), stdin=subprocess.DEVNULL,
                             stdout=log, stderr=log, start_new_session=True)
        log.close()
        p.log_path = tmp_path / f"{name}{len(procs)}.log"
        procs.append(p)
        if port is not None:
            try:
                wait_port(port, 15, p)
            except Exception as e:
                pytest.fail(f"{name} did not start: {e}\n{p.log_path.read_text()[-2000:]}",
                            pytrace=False)
        return p

    yield _spawn
    for p in procs:
        stop_process(p)


def http_get(port: int, path: str, headers: Optional[dict] = None,
             conn: Optional[http.client.HTTPConnection] = None, timeout: float = 10) -> int:
    """One GET with python's http.client (on ``conn`` if given: keep-alive). Returns
    the status; the body is read fully."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        if conn is None:
            c.close()


def curl_urls(urls: List[str], *args: str, timeout: float = 30) -> Tuple[List[int], int]:
    """One curl process fetching every URL in turn (it reuses its connection when the
    server allows). Returns (status codes, total TCP connects)."""
    w = ["-w", "%{http_code} %{num_connects}\n"] + ["-o", "/dev/null"] * len(urls)
    cp = curl(urls[0], *args, *w, *urls[1:], timeout=timeout)
    rows = [l.split() for l in cp.stdout.splitlines() if l.strip()]
    assert len(rows) == len(urls), (cp.stdout, cp.stderr)
    return [int(r[0]) for r in rows], sum(int(r[1]) for r in rows)


def span_path(s: dict) -> str:
    """The request path of a span: url.path (server) or the path of url.full (client)."""
    a = s["attrs"]
    if a.get("url.path"):
        return a["url.path"]
    return urlsplit(a.get("url.full", "")).path


def pid_of(s: dict) -> Optional[int]:
    return s["resource"].get("process.pid")


def ours(s: dict) -> bool:
    """Spans the agent made (not the OTel SDK's)."""
    return s["resource"].get("telemetry.sdk.name") == "autotel"


def show(spans: List[dict]) -> str:
    return "\n".join(
        f"  {s['kind']:6} {s['name']!r} pid={pid_of(s)} svc={s['resource'].get('service.name')} "
        f"path={span_path(s)} trace={s['trace_id']} span={s['span_id']} "
        f"parent={s['parent_span_id'] or '-'} state={s.get('trace_state')!r}"
        + (f" error.type={s['attrs'].get('error.type')}" if "error.type" in s["attrs"] else "")
        for s in sorted(spans, key=lambda s: s["start_ns"]))


def one(spans: List[dict], pid: int, kind: str, path: str) -> Optional[dict]:
    """The single span of (pid, kind, path), None if absent; fails on duplicates."""
    found = [s for s in spans if pid_of(s) == pid and s["kind"] == kind and span_path(s) == path]
    assert len(found) <= 1, f"duplicate {kind} spans of pid {pid} for {path}:\n{show(found)}"
    return found[0] if found else None


def chain_check(spans: List[dict], path: str, hops: List[Tuple[int, str]]) -> dict:
    """For one request (``path``) through ``hops`` [(pid, kind), ...] in call order:
    which spans are there, whether the first is a root, and for each consecutive pair
    whether the second is a child of the first (same trace id, parent = span id)."""
    got = [one(spans, pid, kind, path) for pid, kind in hops]
    links = []
    for a, b in zip(got, got[1:]):
        links.append(a is not None and b is not None and b["trace_id"] == a["trace_id"]
                     and b["parent_span_id"] == a["span_id"])
    present = sum(g is not None for g in got)
    root = got[0] is not None and got[0]["parent_span_id"] == ""
    return {"spans": got, "present": present, "links": links, "root": root,
            "complete": present == len(hops) and root and all(links)}


def wait_prom(agent, name: str, labels: Optional[dict], want: float,
              timeout: float = 15.0) -> Optional[float]:
    """Poll the agent's /metrics until ``name{labels}`` (summed) reaches ``want``."""
    assert_agent_alive(agent)
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = agent.prom_value(name, labels)
        if value is not None and value >= want:
            break
        time.sleep(0.2)
    return value


def assert_agent_alive(agent) -> None:
    """Right after the traffic: a dead agent explains missing spans better than a count."""
    assert agent.alive(), (f"the agent exited during the test (code {agent.proc.returncode}; "
                           f"it logs 'shutting down' on SIGINT/SIGTERM)\n{agent.logs_tail(20)}")


def assert_agent_healthy(agent) -> None:
    assert agent.alive(), agent.logs_tail(40)
    text = agent.stderr_text() + agent.stdout_text()
    assert "panicked at" not in text, agent.logs_tail(40)


def tp(trace_id: str, span_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def rand_hex(rng: random.Random, nbytes: int) -> str:
    return rng.randbytes(nbytes).hex()


# --------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------


def start_python_backend(spawn, tmp_path, env: Optional[dict] = None, name="backendB"):
    """``python3 -m http.server`` (HTTP/1.0) on a docroot of f00.txt..f39.txt."""
    port = free_port()
    docroot = tmp_path / f"docroot-{name}"
    docroot.mkdir()
    for i in range(40):
        (docroot / f"f{i:02d}.txt").write_text(f"file {i}\n")
    p = spawn([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1",
               "--directory", docroot], port=port, env=env, name=name)
    return p, port


def start_proxy(spawn, backend_port: int, protocol: Optional[str] = None,
                env: Optional[dict] = None, sdk: bool = False, port: Optional[int] = None):
    """``peers/proxy.py`` (ThreadingHTTPServer + urllib) in front of ``backend_port``;
    under ``opentelemetry-instrument`` when ``sdk``."""
    port = port or free_port()
    cmd = [sys.executable, PEERS / "proxy.py", port, f"http://127.0.0.1:{backend_port}"]
    if protocol:
        cmd.append(protocol)
    if sdk:
        cmd = [otel_instrument_bin()] + cmd
    p = spawn(cmd, port=port, env=env, name="proxyA")
    return p, port


def start_node(spawn):
    port = free_port()
    if not os.access(NODE, os.X_OK):
        pytest.fail("node not found: apt-get install nodejs", pytrace=False)
    return spawn([NODE, PEERS / "node_server.js", port], port=port, name="nodeC"), port


def otel_instrument_bin() -> str:
    """The ``opentelemetry-instrument`` launcher of the python running the tests."""
    cand = Path(sys.executable).parent / "opentelemetry-instrument"
    if cand.exists():
        return str(cand)
    found = shutil.which("opentelemetry-instrument")
    if not found:
        pytest.fail("opentelemetry-instrument not found: python3 -m pip install -r "
                    "tests/requirements.txt", pytrace=False)
    return found


# ======================================================================================
# 1. incoming traceparent / tracestate
# ======================================================================================

T1 = "4bf92f3577b34da6a3ce929d0e0e4736"
S1 = "00f067aa0ba902b7"
T2 = "0af7651916cd43dd8448eb211c80319c"
S2 = "b7ad6b7169203331"
T3 = "5e0c63257de34c926f9efcd03927272e"
S3 = "e457b5a2e4d86bd1"
T4 = "7b0c0a4f2a1d4c5e9f8e7d6c5b4a3928"
S4 = "1a2b3c4d5e6f7081"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

MALFORMED = {
    "/tp/short-trace-id": f"00-{T1[:-1]}-{S1}-01",
    "/tp/long-span-id": f"00-{T1}-{S1}0-01",
    "/tp/uppercase-hex": f"00-{T1.upper()}-{S1}-01",
    "/tp/zero-trace-id": f"00-{'0' * 32}-{S1}-01",
    "/tp/zero-span-id": f"00-{T1}-{'0' * 16}-01",
    "/tp/version-ff": f"ff-{T1}-{S1}-01",
    "/tp/missing-flags": f"00-{T1}-{S1}",
    "/tp/garbage": "hello, world",
}


def test_incoming_traceparent_and_malformed(require_root, sink, start_agent, spawn, tmp_path):
    b, port = start_python_backend(spawn, tmp_path)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port})
    # valid: with tracestate, and without
    assert http_get(port, "/tp/valid-state",
                    {"traceparent": tp(T1, S1), "tracestate": STATE}) == 404
    assert http_get(port, "/tp/valid", {"traceparent": tp(T2, S2)}) == 404
    # header names are case-insensitive (Go's net/http sends "Traceparent")
    assert http_get(port, "/tp/header-case", {"TraceParent": tp(T3, S3)}) == 404
    # a higher version may carry more fields: parse the known ones (W3C, versioning)
    assert http_get(port, "/tp/future-version",
                    {"traceparent": f"cc-{T4}-{S4}-01-what-the-future"}) == 404
    for path, header in MALFORMED.items():
        assert http_get(port, path, {"traceparent": header, "tracestate": "k=v"}) == 404
    want = 4 + len(MALFORMED)
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", want, SPAN_TIMEOUT, SETTLE)
    report("server spans", len(spans), want)
    assert len(spans) == want and len(sink.spans()) == want, show(sink.spans())
    by_path = {span_path(s): s for s in spans}

    s = by_path["/tp/valid-state"]
    assert (s["trace_id"], s["parent_span_id"], s["trace_state"]) == (T1, S1, STATE), show([s])
    s = by_path["/tp/valid"]
    assert (s["trace_id"], s["parent_span_id"], s["trace_state"]) == (T2, S2, ""), show([s])
    s = by_path["/tp/header-case"]
    assert (s["trace_id"], s["parent_span_id"]) == (T3, S3), show([s])
    s = by_path["/tp/future-version"]
    assert (s["trace_id"], s["parent_span_id"]) == (T4, S4), show([s])

    roots = 0
    for path in MALFORMED:
        s = by_path[path]
        if s["parent_span_id"] == "" and s["trace_id"] not in (T1, T1.upper(), "0" * 32):
            roots += 1
    report("malformed traceparent -> new root", roots, len(MALFORMED))
    assert roots == len(MALFORMED), show([by_path[p] for p in MALFORMED])
    fresh = {by_path[p]["trace_id"] for p in MALFORMED}
    assert len(fresh) == len(MALFORMED), "root spans must get fresh, distinct trace ids"
    assert all(by_path[p]["trace_state"] == "" for p in MALFORMED), \
        "tracestate of a rejected traceparent must not be kept"
    assert_agent_healthy(agent)


def test_tracestate_split_over_two_header_lines(require_root, sink, start_agent, spawn,
                                                tmp_path):
    """W3C Trace Context: tracestate may be split over several header lines, which
    SHOULD be combined (RFC 7230 field combination: joined with a comma)."""
    b, port = start_python_backend(spawn, tmp_path)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": port})
    req = (f"GET /tp/two-tracestate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"traceparent: {tp(T1, S1)}\r\ntracestate: congo=t61rcWkgMzE\r\n"
           f"tracestate: rojo=00f067aa0ba902b7\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(req)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 404"), answer[:100]  # precondition
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, 1, SPAN_TIMEOUT, SETTLE)
    report("server spans", len(spans), 1)
    assert len(spans) == 1, show(spans)
    s = spans[0]
    print(f"trace_state {s['trace_state']!r}")
    assert (s["trace_id"], s["parent_span_id"]) == (T1, S1), show(spans)
    assert s["trace_state"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", s["trace_state"]


def test_pipelined_requests_each_get_their_own_parent(require_root, sink, start_agent, nginx):
    """5 requests pipelined in ONE send to nginx, each with its own traceparent: every
    SERVER span takes the parent of its own request, in order."""
    ngx = nginx(extra_locations=FAST)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port})
    rng = random.Random(3)
    want = {f"/fast/pipe-{i}": (rand_hex(rng, 16), rand_hex(rng, 8)) for i in range(5)}
    reqs = b""
    for i, (path, (t, sp)) in enumerate(want.items()):
        close = "Connection: close\r\n" if i == len(want) - 1 else ""
        reqs += (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ntraceparent: {tp(t, sp)}\r\n"
                 f"{close}\r\n").encode()
    with socket.create_connection(("127.0.0.1", ngx.port), timeout=10) as sock:
        sock.sendall(reqs)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 5, answer[:300]  # precondition
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, 5, SPAN_TIMEOUT, SETTLE)
    report("pipelined server spans", len(spans), 5)
    assert len(spans) == 5, show(spans)
    right = sum((s["trace_id"], s["parent_span_id"]) == want.get(span_path(s)) for s in spans)
    report("pipelined spans with their own request's parent", right, 5)
    assert right == 5, show(spans)


# ======================================================================================
# 2 + 3. nested calls in a thread-per-request proxy; same-host 4-tuple links
# ======================================================================================


def test_python_proxy_chain_one_trace(require_root, sink, start_agent, spawn, tmp_path):
    """curl -> proxy A (ThreadingHTTPServer + urllib, keep-alive) -> python http.server B.

    10 requests on separate connections, then 5 on ONE keep-alive connection (one
    thread serves them in turn: each nested call belongs to the current request)."""
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb, protocol="HTTP/1.1")
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}"})
    paths = [f"/f{i:02d}.txt" for i in range(15)]
    for p in paths[:10]:
        codes, _ = curl_urls([f"http://127.0.0.1:{pa}{p}"])
        assert codes == [200], codes
    codes, connects = curl_urls([f"http://127.0.0.1:{pa}{p}" for p in paths[10:]])
    assert codes == [200] * 5 and connects == 1, (codes, connects)  # precondition

    want = 3 * len(paths)
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, want, SPAN_TIMEOUT, SETTLE)
    report("chain spans", len(spans), want)
    assert len(spans) == want and len(sink.spans()) == want, show(sink.spans())
    hops = [(a.pid, "SERVER"), (a.pid, "CLIENT"), (b.pid, "SERVER")]
    results = {p: chain_check(spans, p, hops) for p in paths}
    complete = sum(r["complete"] for r in results.values())
    report("complete traces (A.SERVER -> A.CLIENT -> B.SERVER)", complete, len(paths))
    bad = [p for p, r in results.items() if not r["complete"]]
    assert not bad, "incomplete/mislinked:\n" + "\n\n".join(
        f"{p}: links={results[p]['links']} root={results[p]['root']}\n"
        f"{show([s for s in results[p]['spans'] if s])}" for p in bad)
    assert len({s["trace_id"] for s in spans}) == len(paths)  # one trace per request
    # the keep-alive part really was one connection on A's side
    peer_ports = {results[p]["spans"][0]["attrs"].get("network.peer.port") for p in paths[10:]}
    assert len(peer_ports) == 1, peer_ports
    assert_agent_healthy(agent)


@pytest.mark.parametrize("how", ["env", "yaml"])
def test_same_host_linking_disabled(require_root, sink, start_agent, spawn, tmp_path, how):
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb)
    if how == "env":
        agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}",
                             "AUTOTEL_SAME_HOST_LINKING": "false"})
    else:
        agent = start_agent(
            config_yaml=f'same_host_linking: false\ndiscovery:\n  open_ports: "{pa},{pb}"\n')
    paths = [f"/f{i:02d}.txt" for i in range(5)]
    for p in paths:
        assert http_get(pa, p) == 200
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, 15, SPAN_TIMEOUT, SETTLE)
    report("spans", len(spans), 15)
    assert len(spans) == 15 and len(sink.spans()) == 15, show(sink.spans())
    nested = unlinked = 0
    for p in paths:
        r = chain_check(spans, p, [(a.pid, "SERVER"), (a.pid, "CLIENT"), (b.pid, "SERVER")])
        a_cli, b_srv = r["spans"][1], r["spans"][2]
        if r["root"] and r["links"][0]:
            nested += 1
        if (b_srv and a_cli and b_srv["parent_span_id"] == ""
                and b_srv["trace_id"] != a_cli["trace_id"]):
            unlinked += 1
    report("A.CLIENT child of A.SERVER (in-process, still on)", nested, 5)
    report("B.SERVER a new root (same-host linking off)", unlinked, 5)
    assert nested == 5 and unlinked == 5, show(spans)


def test_explicit_traceparent_wins_over_same_host_link(require_root, sink, start_agent,
                                                        spawn, tmp_path):
    """Proxy A forwards ``X-Downstream-Traceparent`` as ``traceparent`` to B: B's SERVER
    span follows the header, not A's CLIENT span on the same connection."""
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}"})
    rng = random.Random(7)
    explicit = {f"/f{i:02d}.txt": (rand_hex(rng, 16), rand_hex(rng, 8)) for i in range(3)}
    control = [f"/f{i:02d}.txt" for i in range(3, 6)]
    for p, (t, s) in explicit.items():
        assert http_get(pa, p, {"X-Downstream-Traceparent": tp(t, s)}) == 200
    for p in control:
        assert http_get(pa, p) == 200
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, 18, SPAN_TIMEOUT, SETTLE)
    report("spans", len(spans), 18)
    assert len(spans) == 18 and len(sink.spans()) == 18, show(sink.spans())
    hops = [(a.pid, "SERVER"), (a.pid, "CLIENT"), (b.pid, "SERVER")]
    header_won = 0
    for p, (t, s) in explicit.items():
        r = chain_check(spans, p, hops)
        b_srv = r["spans"][2]
        assert r["root"] and r["links"][0], show([x for x in r["spans"] if x])
        if b_srv and (b_srv["trace_id"], b_srv["parent_span_id"]) == (t, s):
            header_won += 1
    report("B.SERVER follows the explicit traceparent", header_won, 3)
    linked = sum(chain_check(spans, p, hops)["complete"] for p in control)
    report("control requests (no header) linked by 4-tuple", linked, 3)
    assert header_won == 3 and linked == 3, show(spans)


def test_same_host_keepalive_curl_to_python(require_root, sink, start_agent, spawn, tmp_path):
    """curl (selected by executable name) -> python http.server (HTTP/1.1, selected by
    pid): 6 requests on ONE connection, each server span a child of curl's client span
    for the same request (4-tuple link, one connection carrying several requests)."""
    port = free_port()
    docroot = tmp_path / "docroot-ka"
    docroot.mkdir()
    for i in range(6):
        (docroot / f"k{i}.txt").write_text(f"keep-alive {i}\n")
    srv = spawn([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1",
                 "--directory", docroot, "--protocol", "HTTP/1.1"], port=port, name="ka")
    agent = start_agent({"AUTOTEL_EXECUTABLE_NAME": "^curl$", "AUTOTEL_PIDS": srv.pid})
    paths = [f"/k{i}.txt" for i in range(6)]
    cp_codes, connects = curl_urls([f"http://127.0.0.1:{port}{p}" for p in paths])
    assert cp_codes == [200] * 6 and connects == 1, (cp_codes, connects)  # precondition
    assert_agent_alive(agent)
    srv_spans = sink.wait_for_spans(lambda s: pid_of(s) == srv.pid, 6, SPAN_TIMEOUT, SETTLE)
    # other curl processes on this host are legitimately selected too: take the client
    # spans that target our port
    cli = [s for s in sink.spans()
           if s["kind"] == "CLIENT" and s["attrs"].get("server.port") == port]
    report("server spans", len(srv_spans), 6)
    report("curl client spans", len(cli), 6)
    curl_pids = {pid_of(s) for s in cli}
    assert len(curl_pids) <= 1, curl_pids  # one curl process, one connection
    hops = [(curl_pids.pop() if curl_pids else -1, "CLIENT"), (srv.pid, "SERVER")]
    linked = sum(chain_check(srv_spans + cli, p, hops)["complete"] for p in paths)
    client_ids = {s["span_id"] for s in cli}
    dangling = [s for s in srv_spans
                if s["parent_span_id"] and s["parent_span_id"] not in client_ids]
    report("server span child of curl's client span, same request", linked, 6)
    report("server spans whose parent span was never exported", len(dangling), 0)
    assert len(srv_spans) == 6 and len(cli) == 6, show(sink.spans())
    assert linked == 6, show(srv_spans + cli)


def test_same_host_dual_stack_server(require_root, sink, start_agent, spawn, tmp_path):
    """python http.server bound to ``::`` (one socket for IPv6 and IPv4) and curl over
    IPv4 and IPv6. The server sees its IPv4 client at an IPv4-mapped IPv6 address
    (``::ffff:127.0.0.1``) where curl sees plain IPv4: the server span must still be a
    child of curl's client span, with ``127.0.0.1`` as the peer address; over IPv6
    the client span's ``url.full`` brackets the address (``http://[::1]:PORT/``)."""
    port = free_port()
    docroot = tmp_path / "docroot-ds"
    docroot.mkdir()
    for name in ("v4.txt", "v6.txt"):
        (docroot / name).write_text(f"{name}\n")
    srv = spawn([sys.executable, "-m", "http.server", port, "--bind", "::",
                 "--directory", docroot], port=port, name="dualstack")
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^curl$", "AUTOTEL_PIDS": srv.pid})
    urls = {"/v4.txt": f"http://127.0.0.1:{port}/v4.txt",
            "/v6.txt": f"http://[::1]:{port}/v6.txt"}
    for url in urls.values():
        cp = curl(url, "-o", "/dev/null", "-w", "%{http_code}")
        assert cp.stdout == "200", (url, cp.stdout, cp.stderr)  # precondition
    srv_spans = sink.wait_for_spans(lambda s: pid_of(s) == srv.pid, 2, SPAN_TIMEOUT, SETTLE)
    cli = [s for s in sink.spans()
           if s["kind"] == "CLIENT" and s["attrs"].get("server.port") == port]
    report("server spans", len(srv_spans), 2)
    report("curl client spans", len(cli), 2)
    assert len(srv_spans) == 2 and len(cli) == 2, show(sink.spans())
    linked = 0
    for path in urls:
        c = next((s for s in cli if span_path(s) == path), None)
        hops = [(pid_of(c) if c else -1, "CLIENT"), (srv.pid, "SERVER")]
        linked += chain_check(srv_spans + cli, path, hops)["complete"]
    report("server span child of curl's client span (IPv4, IPv6)", linked, 2)
    assert linked == 2, show(srv_spans + cli)
    peers = {span_path(s): s["attrs"].get("network.peer.address") for s in srv_spans}
    report("server peer addresses", peers, {"/v4.txt": "127.0.0.1", "/v6.txt": "::1"})
    assert peers == {"/v4.txt": "127.0.0.1", "/v6.txt": "::1"}, show(srv_spans)
    full = sorted(s["attrs"].get("url.full") for s in cli)
    report("client url.full", full, sorted(urls.values()))
    assert full == sorted(urls.values()), full


# ======================================================================================
# 3-hop chain with event-driven peers: curl -> nginx -> proxy A -> node C
# ======================================================================================


def start_three_hop(spawn, nginx):
    c, pc = start_node(spawn)
    a, pa = start_proxy(spawn, pc)
    ngx = nginx(extra_locations=f"location /c/ {{ proxy_pass http://127.0.0.1:{pa}; }}")
    workers = ngx.worker_pids()
    assert len(workers) == 1, workers
    return ngx, workers[0], a, pa, c, pc


def three_hop_hops(worker: int, a, c) -> List[Tuple[int, str]]:
    return [(worker, "SERVER"), (worker, "CLIENT"), (a.pid, "SERVER"), (a.pid, "CLIENT"),
            (c.pid, "SERVER")]


def test_three_hop_nginx_python_node_sequential(require_root, sink, start_agent, spawn, nginx):
    ngx, worker, a, pa, c, pc = start_three_hop(spawn, nginx)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{ngx.port},{pa},{pc}"})
    paths = [f"/c/seq-{i}" for i in range(10)]
    for p in paths:  # sequential: one request in flight at a time
        assert http_get(ngx.port, p) == 200
    want = 5 * len(paths)
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, want, SPAN_TIMEOUT, SETTLE)
    report("3-hop spans", len(spans), want)
    assert len(spans) == want and len(sink.spans()) == want, show(sink.spans())
    hops = three_hop_hops(worker, a, c)
    results = {p: chain_check(spans, p, hops) for p in paths}
    complete = sum(r["complete"] for r in results.values())
    report("complete 5-span traces (nginx S->C, A S->C, C S)", complete, len(paths))
    bad = [p for p, r in results.items() if not r["complete"]]
    assert not bad, "incomplete/mislinked:\n" + "\n\n".join(
        f"{p}: links={results[p]['links']} root={results[p]['root']}\n"
        f"{show([s for s in results[p]['spans'] if s])}" for p in bad)
    assert len({s["trace_id"] for s in spans}) == len(paths)
    assert_agent_healthy(agent)


# Event loop under concurrency. nginx serves every connection from ONE thread, and the
# agent's in-process parent is "the request this thread last read". With 20 requests
# released together, nginx reads several requests before it writes their upstream
# requests, so its CLIENT span joins whichever request it read last, or, when that
# request's connection is already closed (its state gone), becomes a new root.
# Measured on the development machine (kernel 6.18, 2 cores): the nginx SERVER ->
# nginx CLIENT link was right for 9, 7, 9, 2, 5, 10, 10 of 20 requests in 7 runs (so a
# complete 5-span trace for the same 2..10 of 20); in one run of 10 right, 2 were
# children of another request's SERVER span and 8 were roots. Every other link (the
# 4-tuple ones, and the thread-per-request proxy) was right 20/20 in every run.
# Pinned below: all 100 spans present; those 60 links exact; every nginx CLIENT span
# is a child of one of the 20 nginx SERVER spans of the batch or a root (never a
# parent id that no exported span has). The right-request count is reported only.
CONCURRENT = 20


def test_three_hop_nginx_concurrent(require_root, sink, start_agent, spawn, nginx):
    ngx, worker, a, pa, c, pc = start_three_hop(spawn, nginx)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{ngx.port},{pa},{pc}"})
    paths = [f"/c/conc-{i}" for i in range(CONCURRENT)]
    barrier = threading.Barrier(CONCURRENT)
    codes: Dict[str, int] = {}

    def one_request(p: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=15)
        conn.connect()
        barrier.wait(timeout=15)  # all connected: release the requests together
        codes[p] = http_get(ngx.port, p, conn=conn)
        conn.close()

    threads = [threading.Thread(target=one_request, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == {p: 200 for p in paths}, codes  # precondition

    want = 5 * CONCURRENT
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, want, SPAN_TIMEOUT, SETTLE)
    report("3-hop spans (concurrent)", len(spans), want)
    assert len(spans) == want and len(sink.spans()) == want, show(sink.spans())
    hops = three_hop_hops(worker, a, c)
    results = {p: chain_check(spans, p, hops) for p in paths}
    names = ["nginx S->C", "nginx C->A S", "A S->C", "A C->C S"]
    per_link = [sum(r["links"][i] for r in results.values()) for i in range(4)]
    for n, k in zip(names, per_link):
        report(f"concurrent link {n} (right request)", k, CONCURRENT)
    complete = sum(r["complete"] for r in results.values())
    report("concurrent complete 5-span traces", complete, CONCURRENT)
    roots = sum(r["root"] for r in results.values())
    report("nginx SERVER spans that are roots", roots, CONCURRENT)
    servers = {r["spans"][0]["span_id"]: r["spans"][0] for r in results.values()}
    kinds = Counter()
    for r in results.values():
        srv, cli = r["spans"][0], r["spans"][1]
        par = servers.get(cli["parent_span_id"])
        if cli["parent_span_id"] == "":
            kinds["root"] += 1
        elif par is srv and par["trace_id"] == cli["trace_id"]:
            kinds["right request"] += 1
        elif par is not None and par["trace_id"] == cli["trace_id"]:
            kinds["another request"] += 1
        else:
            kinds["dangling"] += 1
    print(f"nginx CLIENT span parents under concurrency: {dict(kinds)}")
    report("nginx CLIENT spans: right request + another request + root", kinds["right request"]
           + kinds["another request"] + kinds["root"], CONCURRENT)
    # Exact whatever the concurrency: the 4-tuple links and the thread-per-request proxy.
    assert per_link[1:] == [CONCURRENT] * 3, (per_link, show(spans))
    assert roots == CONCURRENT
    # Event loop: today's behaviour (see the comment above).
    assert kinds["dangling"] == 0, show(spans)
    assert_agent_healthy(agent)


# ======================================================================================
# Go: context by goroutine
# ======================================================================================

GO_WORKERS = 8
GO_ROUNDS = 25
# The go_ctx handlers each round calls, and the suffix of its ids (/fetch's
# ids end in a digit).
GO_KINDS = {"item": "", "fetch": "t", "fetchs": "s", "fetch2": "h", "fan": "n"}
GO_LATE = 20


def test_go_handler_calls_follow_their_goroutine(require_root, sink, start_agent, spawn,
                                                 tmp_path):
    """A Go net/http server (peers/go_ctx, GOMAXPROCS=2) under 8 concurrent keep-alive
    clients. ``/item/<id>``: the handler runs SET, GET, DEL on ``item:<id>`` in
    redis-server over pooled connections, written from the handler's goroutine, which
    resumes on any thread after each answer. ``/fetch/<id>``: the handler calls this
    server's ``/back/<id>`` with net/http's client, whose request is written by the
    connection's writer goroutine; ``/fetchs/<id>`` the same over HTTPS (crypto/tls on
    both ends: the plaintext comes from the Go TLS probes); ``/fetch2/<id>`` over HTTP/2
    (one connection for all handlers; each request's frames are written by a goroutine
    its round trip starts). ``/fan/<id>``: the handler
    starts a goroutine for SET, GET, DEL on ``fan:<id>`` and another that starts a third
    to call ``/back/<id>``, and waits (errgroup style). Every Redis span must be a
    child of its own ``/item`` or ``/fan`` request and every HTTP client span of its own
    ``/fetch``/``/fetchs``/``/fetch2``/``/fan`` request (a thread's last request is
    another handler's about a quarter of the time here), and each ``/back`` server span
    a child of that client span. Fails with context per thread, and the ``/fan`` and
    ``/fetch2`` calls without the goroutine-creation probe.
    The executable is stripped, as images ship: the probes are found by name in Go's
    own function table. When the program exits, the kernel's map of its writer
    goroutines holds none of them any more."""
    exe = build_go_peer(tmp_path, True, peer="go_ctx")  # stripped: probes found in .gopclntab
    rd = start_redis()
    try:
        port = free_port()
        agent = start_agent({"AUTOTEL_EXECUTABLE_NAME": f"^{exe.name}$"})
        tls_port = free_port()
        srv = spawn([exe, port, rd.port, tls_port], port=port, env={"GOMAXPROCS": "2"},
                    name="go-ctx")
        wait_port(tls_port, 15, srv)
        # The net/http client probes go on the executable once discovery selects it;
        # a writer goroutine started before them follows its thread.
        # So do the goroutine-creation probes: a goroutine started before them follows
        # its thread.
        deadline = time.time() + 30
        while not all(f"Go {what} probes attached" in agent.stderr_text()
                      for what in ("net/http client context", "goroutine creation")):
            assert time.time() < deadline, agent.logs_tail(40)
            time.sleep(0.1)
        failures: List[str] = []

        def worker(w: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            try:
                for i in range(GO_ROUNDS):
                    for kind, suffix in GO_KINDS.items():
                        st = http_get(port, f"/{kind}/{w}-{i}{suffix}", conn=conn)
                        if st != 200:
                            failures.append(f"/{kind}/{w}-{i}: {st}")
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(GO_WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # A goroutine that outlives its request: /later/<i> starts one that calls Redis
        # only while /release/<i>, the next request on the same connection, is served.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        for i in range(GO_LATE):
            for path in (f"/later/{i}", f"/release/{i}"):
                if http_get(port, path, conn=conn) != 200:
                    failures.append(path)
        conn.close()
        assert not failures, failures[:5]  # precondition
        n = GO_WORKERS * GO_ROUNDS
        # server spans, Redis spans, HTTP client spans
        want = 9 * n + 2 * GO_LATE + 6 * n + GO_LATE + 4 * n
        sink.wait_for_spans(lambda s: pid_of(s) == srv.pid, want, SPAN_TIMEOUT, SETTLE)
    finally:
        rd.stop()
    spans = [s for s in sink.spans() if pid_of(s) == srv.pid]
    servers = {span_path(s): s for s in spans if s["kind"] == "SERVER"}
    redis = [s for s in spans if s["kind"] == "CLIENT"
             and s["attrs"].get("db.system.name") == "redis"]
    http_clients = [s for s in spans if s["kind"] == "CLIENT"
                    and s["attrs"].get("url.full")]
    late = [s for s in redis if "later:" in s["attrs"].get("db.query.text", "")]
    redis = [s for s in redis if s not in late]
    report("Go server spans", len(servers), 9 * n + 2 * GO_LATE)
    report("Redis client spans", len(redis) + len(late), 6 * n + GO_LATE)
    report("net/http client spans", len(http_clients), 4 * n)
    assert (len(servers), len(redis), len(late), len(http_clients)) == \
        (9 * n + 2 * GO_LATE, 6 * n, GO_LATE, 4 * n), show(spans)
    by_id = {s["span_id"]: s for s in spans}

    def parent_kind(child: dict, want: Optional[dict]) -> str:
        par = by_id.get(child["parent_span_id"])
        if want is not None and par is want and par["trace_id"] == child["trace_id"]:
            return "right request"
        if not child["parent_span_id"]:
            return "root"
        return "another request" if par is not None else "dangling"

    # Per handler kind: the parents of its Redis and HTTP client spans.
    kinds = {k: Counter() for k in GO_KINDS}
    wrong: List[str] = []

    def note(kind: str, span: dict, parent: str) -> None:
        kinds[kind][parent] += 1
        if parent != "right request":
            wrong.append(f"{span['name']} {span_path(span) or span['attrs'].get('db.query.text')}"
                         f" of /{kind}: {parent}")

    for s in redis:
        m = re.fullmatch(r"\w+ (item|fan):(\S+)( \?)?", s["attrs"].get("db.query.text", ""))
        assert m, s["attrs"]
        note(m.group(1), s, parent_kind(s, servers.get(f"/{m.group(1)}/{m.group(2)}")))
    back_linked = 0
    for c in http_clients:
        key = span_path(c).rsplit("/", 1)[-1]
        kind = next(k for k, suffix in GO_KINDS.items() if suffix and key.endswith(suffix))
        scheme = c["attrs"]["url.full"].split(":", 1)[0]
        assert scheme == ("https" if kind in ("fetchs", "fetch2") else "http"), c["attrs"]
        note(kind, c, parent_kind(c, servers.get(f"/{kind}/{key}")))
        back = servers.get(f"/back/{key}")
        back_linked += back is not None and parent_kind(back, c) == "right request"
    print("client span parents by handler: " + "; ".join(f"{k} {dict(c)}"
                                                         for k, c in kinds.items()))
    want_calls = {"item": 3 * n, "fetch": n, "fetchs": n, "fetch2": n, "fan": 4 * n}
    for kind, calls in want_calls.items():
        report(f"/{kind} handlers' client spans child of their own request",
               kinds[kind]["right request"], calls)
    report("/back server spans child of their client span", back_linked, 4 * n)
    assert kinds == {k: {"right request": calls} for k, calls in want_calls.items()}, wrong
    assert back_linked == 4 * n, show(spans)
    # The late calls belong to no request: /later had answered, and /release, the
    # connection's request when they ran, did not start them.
    late_kinds = Counter("root" if not s["parent_span_id"] else
                         "/later" if by_id.get(s["parent_span_id"]) is
                         servers.get("/later/" + s["attrs"]["db.query.text"].split(":")[-1])
                         else "other" for s in late)
    report("calls of goroutines that outlived their request, without a parent",
           late_kinds["root"], GO_LATE)
    assert late_kinds == {"root": GO_LATE}, [
        (s["attrs"]["db.query.text"], by_id.get(s["parent_span_id"], {}).get("name"))
        for s in late]
    # The kernel forgets a Go program's writer goroutines when it exits: one that
    # never wrote could otherwise bind to a later process with the same pid and g.
    writers = agent_map_id(agent.pid, "go_writers")

    def writers_of(pid: int) -> int:
        n = 0
        for e in bpftool_json("map", "dump", "id", str(writers)):
            key = (e.get("formatted") or {}).get("key", e.get("key"))
            tgid = key["tgid"] if isinstance(key, dict) else \
                int.from_bytes(bytes(int(b, 16) for b in key[:4]), "little")
            n += tgid == pid
        return n

    running = writers_of(srv.pid)
    stop_process(srv)
    deadline = time.time() + 10
    while writers_of(srv.pid) and time.time() < deadline:
        time.sleep(0.2)
    after = writers_of(srv.pid)
    report("writer goroutines of the Go program in the kernel: running, after exit",
           (running > 0, after), (True, 0))
    assert running > 0 and after == 0, (running, after)
    assert_agent_healthy(agent)


# ======================================================================================
# 4. hybrid with the OpenTelemetry SDK; SDK detection
# ======================================================================================


def sdk_env(sink, service: str = "sdk-client", exporter: str = "otlp") -> dict:
    return {"OTEL_TRACES_EXPORTER": exporter, "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.grpc_endpoint, "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "100"}


def run_sdk_client(sink, url: str, n: int, sampler: Optional[str] = None) -> None:
    env = sdk_env(sink)
    if sampler:
        env["OTEL_TRACES_SAMPLER"] = sampler
    cp = subprocess.run([otel_instrument_bin(), sys.executable, PEERS / "sdk_client.py", url,
                         str(n)], env=peer_env(env), capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and cp.stdout.split() == ["200"] * n, (cp.stdout, cp.stderr[-3000:])


def test_hybrid_sdk_client_through_agent_traced_services(require_root, sink, start_agent,
                                                         spawn, tmp_path):
    """SDK client (opentelemetry-instrument, requests instrumentation: one CLIENT span
    per call, ``traceparent`` injected) -> proxy A -> B, A and B uninstrumented and
    traced by the agent: one trace of 4 spans per call, SDK span at the root.

    Then the same client with the SDK sampler always_off (it sends flag 00): the
    agent's default parent-based sampler drops the whole trace; metrics still count."""
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}"})
    n = 5
    run_sdk_client(sink, f"http://127.0.0.1:{pa}/f01.txt", n)
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(None, 4 * n, SPAN_TIMEOUT, SETTLE)
    sdk = [s for s in spans if s["resource"].get("service.name") == "sdk-client"]
    mine = [s for s in spans if ours(s)]
    report("SDK client spans", len(sdk), n)
    report("agent spans (A server, A client, B server)", len(mine), 3 * n)
    assert len(sdk) == n and all(s["kind"] == "CLIENT" for s in sdk), show(spans)
    assert len(mine) == 3 * n and len(spans) == 4 * n, show(spans)
    joined = 0
    for root in sdk:
        trace = [s for s in mine if s["trace_id"] == root["trace_id"]]
        a_srv = [s for s in trace if pid_of(s) == a.pid and s["kind"] == "SERVER"]
        a_cli = [s for s in trace if pid_of(s) == a.pid and s["kind"] == "CLIENT"]
        b_srv = [s for s in trace if pid_of(s) == b.pid and s["kind"] == "SERVER"]
        if (len(trace) == 3 and len(a_srv) == len(a_cli) == len(b_srv) == 1
                and a_srv[0]["parent_span_id"] == root["span_id"]
                and a_cli[0]["parent_span_id"] == a_srv[0]["span_id"]
                and b_srv[0]["parent_span_id"] == a_cli[0]["span_id"]):
            joined += 1
    report("4-span traces SDK CLIENT -> A SERVER -> A CLIENT -> B SERVER", joined, n)
    assert joined == n, show(spans)

    sink.clear()
    run_sdk_client(sink, f"http://127.0.0.1:{pa}/f02.txt", n, sampler="always_off")
    count = wait_prom(agent, SERVER_COUNT, None, 4 * n)
    report("metric server request count (A + B, both rounds)", count, 4 * n)
    assert count == 4 * n
    time.sleep(SETTLE + 0.3)
    report("spans when the SDK sends flag 00", len(sink.spans()), 0)
    assert sink.spans() == [], show(sink.spans())


SDK_OFF = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none"}  # SDK loaded, exporting nothing


def sdk_log_lines(agent, pid: int) -> List[str]:
    return [l for l in agent.stderr_text().splitlines()
            if "SDK" in l and re.search(rf"\b{pid}\b", l)]


@pytest.mark.parametrize("how", ["yaml-ports", "env-pids"])
def test_sdk_instrumented_process_skipped(require_root, sink, start_agent, spawn, tmp_path, how):
    """Proxies A1 (and, with ports selection, A2 started after the agent) run under
    opentelemetry-instrument; with skip_sdk_instrumented (YAML, or the environment
    variable) the agent emits no span for them, and its log names each of them. The
    uninstrumented backend B they call is traced as usual (5 SERVER spans per proxy)."""
    b, pb = start_python_backend(spawn, tmp_path)
    a1, pa1 = start_proxy(spawn, pb, env=SDK_OFF, sdk=True)
    proxies = [(a1, pa1)]
    if how == "yaml-ports":
        pa2 = free_port()
        agent = start_agent(config_yaml=(f'discovery:\n  open_ports: "{pa1},{pa2},{pb}"\n'
                                         f"  skip_sdk_instrumented: true\n"))
        proxies.append(start_proxy(spawn, pb, env=SDK_OFF, sdk=True, port=pa2))
        time.sleep(1.5)  # discovery of a new listener (target < 1 s)
    else:
        agent = start_agent({"AUTOTEL_PIDS": f"{a1.pid},{b.pid}",
                             "AUTOTEL_SKIP_SDK_INSTRUMENTED": "true"})
    for _, pa in proxies:
        for i in range(5):
            assert http_get(pa, f"/f{i:02d}.txt") == 200
    want = 5 * len(proxies)
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(lambda s: pid_of(s) == b.pid, want, SPAN_TIMEOUT, SETTLE)
    report("B server spans (not SDK-instrumented)", len(spans), want)
    assert len(spans) == want, show(sink.spans())
    for n, (a, _) in enumerate(proxies, 1):
        of_a = [s for s in sink.spans() if pid_of(s) == a.pid]
        report(f"spans of SDK-instrumented proxy A{n}", len(of_a), 0)
        assert of_a == [], show(of_a)
        lines = sdk_log_lines(agent, a.pid)
        print(f"agent log about A{n} (pid {a.pid}): {lines}")
        assert lines, f"no log line naming 'SDK' and pid {a.pid}\n{agent.logs_tail(40)}"


def test_sdk_instrumented_process_kept_by_default(require_root, sink, start_agent, spawn,
                                                  tmp_path):
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb, env=SDK_OFF, sdk=True)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}"})
    for i in range(5):
        assert http_get(pa, f"/f{i:02d}.txt") == 200
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, 15, SPAN_TIMEOUT, SETTLE)
    kinds = Counter((pid_of(s), s["kind"]) for s in spans)
    want = Counter({(a.pid, "SERVER"): 5, (a.pid, "CLIENT"): 5, (b.pid, "SERVER"): 5})
    report("spans (A server+client, B server)", len(spans), 15)
    assert kinds == want, (kinds, show(spans))
    lines = sdk_log_lines(agent, a.pid)
    print(f"agent log about pid {a.pid}: {lines}")
    assert lines, f"no note naming 'SDK' and pid {a.pid}\n{agent.logs_tail(40)}"


# ======================================================================================
# 5. service naming
# ======================================================================================


def test_service_naming(require_root, sink, start_agent, spawn, nginx, tmp_path):
    procs = {}
    # (a) config mapping beats the target's own OTEL_SERVICE_NAME
    procs["config"] = start_python_backend(spawn, tmp_path, {"OTEL_SERVICE_NAME": "must-lose"},
                                           name="cfg")
    # (b) OTEL_SERVICE_NAME beats OTEL_RESOURCE_ATTRIBUTES
    procs["env"] = start_python_backend(
        spawn, tmp_path, {"OTEL_SERVICE_NAME": "from-env",
                          "OTEL_RESOURCE_ATTRIBUTES": "service.name=attr-loses"}, name="env")
    # (c) OTEL_RESOURCE_ATTRIBUTES
    procs["attrs"] = start_python_backend(
        spawn, tmp_path,
        {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=t,service.name=from-attrs"},
        name="attrs")
    # (d) script name, and `-m module`
    pm = free_port()
    procs["script"] = (spawn([sys.executable, PEERS / "myapp.py", pm], port=pm, name="myapp"), pm)
    procs["module"] = start_python_backend(spawn, tmp_path, name="module")
    # (e) executable
    ngx = nginx()
    ports = [procs[k][1] for k in ("env", "attrs", "script", "module")] + [ngx.port]
    cfg = (f"discovery:\n"
           f"  open_ports: \"{','.join(map(str, ports))}\"\n"
           f"  services:\n"
           f"    - name: checkout\n"
           f"      namespace: shop\n"
           f"      open_ports: \"{procs['config'][1]}\"\n")
    agent = start_agent(config_yaml=cfg)
    targets = {k: v[1] for k, v in procs.items()}
    targets["nginx"] = ngx.port
    for name, port in targets.items():
        for i in range(2):
            path = "/index.html" if name == "nginx" else "/f00.txt" if name != "script" else "/"
            assert http_get(port, path) == 200, name
    want = 2 * len(targets)
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, want, SPAN_TIMEOUT, SETTLE)
    report("spans", len(spans), want)
    assert len(spans) == want and len(sink.spans()) == want, show(sink.spans())
    by_port: Dict[int, List[dict]] = {}
    for s in spans:
        by_port.setdefault(s["attrs"].get("server.port"), []).append(s)
    expected = {"config": "checkout", "env": "from-env", "attrs": "from-attrs",
                "script": "myapp", "module": "http.server", "nginx": "nginx"}
    got = {}
    for name, port in targets.items():
        names = {s["resource"].get("service.name") for s in by_port.get(port, [])}
        got[name] = names.pop() if len(names) == 1 else names
    print(f"service.name by case: {got}")
    ok = sum(got[k] == v for k, v in expected.items())
    report("service names as expected", ok, len(expected))
    assert got == expected
    cfg_res = by_port[targets["config"]][0]["resource"]
    assert cfg_res.get("service.namespace") == "shop", cfg_res
    # service.instance.id: one per process, distinct between processes
    inst = {}
    for name, port in targets.items():
        ids = {s["resource"].get("service.instance.id") for s in by_port[port]}
        assert len(ids) == 1 and None not in ids and "" not in ids, (name, ids)
        inst[name] = ids.pop()
    report("distinct service.instance.id", len(set(inst.values())), len(targets))
    assert len(set(inst.values())) == len(targets), inst


# ======================================================================================
# 6. sampling
# ======================================================================================



def keepalive_gets(port: int, n: int, path: str = "/fast/x") -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            assert http_get(port, path, conn=conn) == 200
    finally:
        conn.close()


def randomness(trace_id: str) -> int:
    """The 56 least-significant bits of a trace id (W3C level 2 random part)."""
    return int(trace_id[-14:], 16)


def test_sampler_traceidratio_quarter(require_root, sink, start_agent, nginx):
    """traceidratio 0.25 over 2,000 keep-alive requests: ~500 sampled SERVER spans,
    metrics exact. Then 20 crafted incoming trace ids, each sent twice: traceidratio is
    not parent-based, so the trace id alone decides, whatever the caller's flag."""
    ngx = nginx(extra_locations=FAST)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port, "OTEL_TRACES_SAMPLER": "traceidratio",
                         "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    n = 2000
    t0 = time.monotonic()
    keepalive_gets(ngx.port, n)
    print(f"{n} keep-alive requests in {time.monotonic() - t0:.2f} s")
    count = wait_prom(agent, SERVER_COUNT, {"job": "nginx"}, n)
    report("metric request count (exact whatever is sampled)", count, n)
    assert count == n, count
    time.sleep(SETTLE + 0.5)  # batch delay 200 ms: every sampled span is out by now
    spans = [s for s in sink.spans() if s["kind"] == "SERVER"]
    sd = (n * 0.25 * 0.75) ** 0.5
    print(f"sampled server spans {len(spans)} (expected 500 +- {4 * sd:.0f}, 4 sd)")
    assert abs(len(spans) - 500) <= 4 * sd, len(spans)
    assert len(spans) == len(sink.spans())
    # Decided from the trace id, per the spec's consistent probability sampling: a trace
    # is kept iff its 56 random bits reach the rejection threshold (1 - 0.25) * 2^56.
    # (The OTel Python SDK 1.45 still uses its legacy rule: low 64 bits < ratio * 2^64.)
    threshold = int(0.75 * (1 << 56))
    off = [s["trace_id"] for s in spans if randomness(s["trace_id"]) < threshold]
    report("sampled spans whose trace id is below the threshold", len(off), 0)
    assert off == []

    sink.clear()
    rng = random.Random(99)
    keep = [rand_hex(rng, 9) + "f" + rand_hex(rng, 7)[1:] for _ in range(10)]  # R >= 15/16
    drop = [rand_hex(rng, 9) + "1" + rand_hex(rng, 7)[1:] for _ in range(10)]  # R < 2/16
    conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=10)
    for _ in range(2):
        for i, t in enumerate(keep + drop):
            flags = "00" if i % 2 else "01"
            assert http_get(ngx.port, f"/fast/{t}", {"traceparent": tp(t, S1, flags)},
                            conn=conn) == 200
    conn.close()
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", 2 * len(keep), SPAN_TIMEOUT,
                                SETTLE)
    got = Counter(s["trace_id"] for s in spans)
    report("spans of high-randomness incoming trace ids (each sent twice)",
           sum(got[t] for t in keep), 20)
    report("spans of low-randomness incoming trace ids", sum(got[t] for t in drop), 0)
    assert got == Counter({t: 2 for t in keep}), got


def test_sampler_always_off_metrics_exact(require_root, sink, start_agent, nginx):
    ngx = nginx(extra_locations=FAST)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port, "OTEL_TRACES_SAMPLER": "always_off"})
    n = 2000
    conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=10)
    # a few with a sampled parent: always_off is not parent-based
    for i in range(10):
        assert http_get(ngx.port, f"/fast/p{i}", {"traceparent": tp(T1, S1, "01")},
                        conn=conn) == 200
    conn.close()
    keepalive_gets(ngx.port, n - 10)
    count = wait_prom(agent, SERVER_COUNT, {"job": "nginx"}, n)
    report("metric request count with always_off", count, n)
    assert count == n, count
    time.sleep(SETTLE + 0.5)
    report("spans with always_off", len(sink.spans()), 0)
    assert sink.spans() == [], show(sink.spans()[:20])
    assert_agent_healthy(agent)


SAMPLER_TABLE = {
    # sampler (None = default) -> spans expected for (5 x flag 01, 5 x flag 00, 5 x no header)
    "always_on": (5, 5, 5),
    None: (5, 0, 5),  # default = parentbased_always_on
    "parentbased_always_off": (5, 0, 0),  # given in YAML: sampler: {name: ...}
    "parentbased_traceidratio:0": (5, 0, 0),  # given in YAML, Beyla's traces.sampler
}


@pytest.mark.parametrize("sampler", list(SAMPLER_TABLE), ids=lambda s: s or "default")
def test_sampler_parent_flags(require_root, sink, start_agent, nginx, sampler):
    ngx = nginx(extra_locations=FAST)
    env = {"AUTOTEL_OPEN_PORTS": ngx.port}
    yaml = None
    name, _, arg = (sampler or "").partition(":")
    if name == "parentbased_always_off":
        yaml = f"sampler:\n  name: {name}\n"
    elif name == "parentbased_traceidratio":
        yaml = f"traces:\n  sampler:\n    name: {name}\n    arg: \"{arg}\"\n"
    elif name:
        env["OTEL_TRACES_SAMPLER"] = name
    agent = start_agent(env, config_yaml=yaml)
    rng = random.Random(5)
    groups = {"01": [], "00": [], "none": []}
    conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=10)
    for g in groups:
        for i in range(5):
            path = f"/fast/{g}-{i}"
            hdr = {"traceparent": tp(rand_hex(rng, 16), rand_hex(rng, 8), g)} if g != "none" else {}
            assert http_get(ngx.port, path, hdr, conn=conn) == 200
            groups[g].append(path)
    conn.close()
    count = wait_prom(agent, SERVER_COUNT, {"job": "nginx"}, 15)
    report("metric request count", count, 15)
    assert count == 15
    want = SAMPLER_TABLE[sampler]
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(None, sum(want), 5.0, SETTLE)
    got = tuple(sum(1 for s in spans if span_path(s) in groups[g]) for g in groups)
    report(f"spans (flag 01, flag 00, no header) with {sampler or 'default'}", got, want)
    assert got == want and len(spans) == sum(want), show(spans)


def test_sampler_parentbased_follows_chain(require_root, sink, start_agent, spawn, tmp_path):
    """parentbased_always_off through curl -> A -> B: the caller's flag decides at A's
    SERVER span, and A's CLIENT (in-process parent) and B's SERVER (same-host parent)
    follow it: 01 -> the whole trace, 00 or no header -> nothing."""
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}",
                         "OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    rng = random.Random(11)
    groups = {"01": ["/f00.txt", "/f01.txt", "/f02.txt"],
              "00": ["/f03.txt", "/f04.txt", "/f05.txt"],
              "none": ["/f06.txt", "/f07.txt", "/f08.txt"]}
    for flag, paths in groups.items():
        for p in paths:
            hdr = {} if flag == "none" else {
                "traceparent": tp(rand_hex(rng, 16), rand_hex(rng, 8), flag),
                "tracestate": f"vendor={p[1:4]}"}
            assert http_get(pa, p, hdr) == 200
    count = wait_prom(agent, SERVER_COUNT, None, 18)
    report("metric server request count (A + B)", count, 18)
    assert count == 18
    assert_agent_alive(agent)
    spans = sink.wait_for_spans(ours, 9, SPAN_TIMEOUT, SETTLE)
    hops = [(a.pid, "SERVER"), (a.pid, "CLIENT"), (b.pid, "SERVER")]
    got = {f: [chain_check(spans, p, hops)["present"] for p in paths]
           for f, paths in groups.items()}
    want = {"01": [3] * 3, "00": [0] * 3, "none": [0] * 3}
    report("spans per request (flag 01, 00, none)", got, want)
    assert got == want, show(spans)
    assert len(spans) == 9 and all(chain_check(spans, p, hops)["links"] == [True, True]
                                   for p in groups["01"]), show(spans)
    # the caller's tracestate goes with the context: A's CLIENT and B's SERVER carry it
    states = {p: [x["trace_state"] for x in chain_check(spans, p, hops)["spans"]]
              for p in groups["01"]}
    kept = sum(v == [f"vendor={p[1:4]}"] * 3 for p, v in states.items())
    report("traces whose 3 spans carry the incoming tracestate", kept, 3)
    assert kept == 3, states


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio"])
def test_sampler_chain_consistent(require_root, sink, start_agent, spawn, tmp_path, sampler):
    """curl -> proxy A -> B with ratio 0.5: a trace is complete (3 spans) or absent."""
    b, pb = start_python_backend(spawn, tmp_path)
    a, pa = start_proxy(spawn, pb)
    agent = start_agent({"AUTOTEL_OPEN_PORTS": f"{pa},{pb}", "OTEL_TRACES_SAMPLER": sampler,
                         "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    n = 40
    paths = [f"/f{i:02d}.txt" for i in range(n)]
    for p in paths:
        assert http_get(pa, p) == 200
    count = wait_prom(agent, SERVER_COUNT, None, 2 * n)
    report("metric server request count (A + B)", count, 2 * n)
    assert count == 2 * n
    time.sleep(SETTLE + 0.5)
    spans = sink.spans()
    hops = [(a.pid, "SERVER"), (a.pid, "CLIENT"), (b.pid, "SERVER")]
    results = [chain_check(spans, p, hops) for p in paths]
    complete = sum(r["complete"] for r in results)
    absent = sum(r["present"] == 0 for r in results)
    partial = n - complete - absent
    print(f"{sampler} 0.5: complete {complete}, absent {absent}, partial/mislinked {partial}")
    report("traces complete or absent", complete + absent, n)
    assert partial == 0, show(spans)
    assert len(spans) == 3 * complete
    sd = (n * 0.25) ** 0.5
    assert abs(complete - n / 2) <= 4 * sd, complete
