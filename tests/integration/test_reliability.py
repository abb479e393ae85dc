"""Reliability integration tests: the real agent when things go wrong around it.

Collector down or slow or erroring, a bounded export queue, secrets in the traffic
and on command lines, bad configuration, SIGTERM / kill -9 under load, and garbage
on selected sockets. Everything is real: the agent binary with real BPF, python's
http.server, nginx, curl, wrk, and the OTLP sink (official ``opentelemetry-proto``)
whose fault modes (``OtlpSink.set_faults``: slow calls, UNAVAILABLE / 503 for the
first calls) stand for a collector in trouble. A collector that is *down* is a
port nobody listens on (bound, never listening: connections are refused) where a
sink is started later.

Counts are exact where the behaviour is exact (every span delivered exactly once,
delivered + dropped + failed == created); every test prints its figures.

Numbers refer to the reliability test plan:
1 collector down then back (gRPC 60 s down, HTTP 15 s down, run side by side),
2 queue bound, 3 slow / erroring collector, 4 secrets never leave (4b: secrets on
curl's own command line), 5 bad config, 6 SIGTERM / kill -9 under load, 7 garbage
and out-of-order input (7b: stray CRLFs between keep-alive requests).
0 checks the sink's fault modes themselves (no root needed).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
from google.protobuf import json_format

from conftest import (CURL, HERE, REPO, READY_TEXT, bpftool_json, free_port, report, stop_process, tail, urllib_request,
                      wait_port)
from otlp_sink import OtlpSink

WRK = "/usr/bin/wrk"
PROG_PREFIX = "at_"
UPROBE_EVENTS = "/sys/kernel/tracing/uprobe_events"
PEERS = HERE / "peers"

EXPORTED = "autotel_spans_exported_total"
DROPPED = "autotel_spans_dropped_total"
FAILED = "autotel_spans_failed_total"
CREATED = "autotel_spans_created_total"
PARSE_ERRORS = "autotel_parse_errors_total"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def reserve_dead_port() -> Tuple[int, socket.socket]:
    """A port where no collector runs yet: bound (so nobody else takes it) but never
    listening, so every connection is refused. Close the socket, then start the sink
    on the port: that is "the collector comes back"."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1], s


def prom(agent, name: str, labels: Optional[dict] = None) -> float:
    """A self-metric of the agent; a missing series reads as 0."""
    v = agent.prom_value(name, labels)
    return 0.0 if v is None else v


def span_counters(agent) -> Dict[str, int]:
    return {
        "created": int(prom(agent, CREATED)),
        "exported": int(prom(agent, EXPORTED)),
        "dropped_queue_full": int(prom(agent, DROPPED, {"reason": "queue_full"})),
        "dropped_all": int(prom(agent, DROPPED)),
        "failed": int(prom(agent, FAILED)),
    }


def wait_counters(agent, ok, timeout: float) -> Dict[str, int]:
    """Poll the agent's span counters until ``ok(counters)`` (or timeout); return them.
    Counters are published about once a second, so this polls at 4 Hz."""
    deadline = time.monotonic() + timeout
    c = span_counters(agent)
    while not ok(c) and time.monotonic() < deadline:
        time.sleep(0.25)
        c = span_counters(agent)
    return c


def parse_errors_total(agent) -> float:
    return prom(agent, PARSE_ERRORS)


def keepalive_gets(port: int, paths: List[str], timeout: float = 10.0) -> List[int]:
    """GET every path on ONE keep-alive connection (http.client, no proxy).
    Returns the status codes (a broken connection raises: the test then fails)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    codes = []
    try:
        for p in paths:
            conn.request("GET", p)
            r = conn.getresponse()
            r.read()
            codes.append(r.status)
    finally:
        conn.close()
    return codes


def by_pid(pids, kind: str = "SERVER"):
    pids = {pids} if isinstance(pids, int) else set(pids)
    return lambda s: s["kind"] == kind and s["resource"].get("process.pid") in pids


def show(spans, n: int = 20) -> str:
    return "\n".join(f"  {s['kind']} {s['name']!r} pid={s['resource'].get('process.pid')} "
                     f"attrs={s['attrs']}" for s in spans[:n])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def timed_scrape(agent, timeout: float = 5.0) -> float:
    """Seconds one GET /metrics takes (raises if it fails)."""
    t = time.monotonic()
    text = agent.metrics_text()
    assert "autotel_" in text
    return time.monotonic() - t


def bpf_fd_ids(pid: int) -> Tuple[Set[int], Set[int]]:
    """(BPF program ids, BPF link ids) held by ``pid``'s file descriptors, read from
    /proc/PID/fdinfo (exact ownership, whatever other agents run on the host)."""
    progs, links = set(), set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return progs, links
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^link_id:\s*(\d+)", text, re.M)
        if m:
            links.add(int(m.group(1)))
        m = re.search(r"^prog_id:\s*(\d+)", text, re.M)
        if m:
            progs.add(int(m.group(1)))
    return progs, links


def live_bpf() -> Tuple[Dict[int, dict], Dict[int, dict]]:
    """Every loaded BPF program and link on the host, by id."""
    return ({p["id"]: p for p in bpftool_json("prog", "show")},
            {l["id"]: l for l in bpftool_json("link", "show")})


def our_uprobe_events(pid: int) -> List[str]:
    """uprobe_events lines that could belong to the agent ``pid`` (libbpf names legacy
    uprobes libbpf_<pid>_...; we also look for 'autotel')."""
    try:
        text = Path(UPROBE_EVENTS).read_text()
    except OSError:
        return []
    return [l for l in text.splitlines() if "autotel" in l or f"libbpf_{pid}_" in l]


class GoneWatcher:
    """Polls bpftool from the moment it is created (just before a signal is sent)
    until none of the given program/link ids is loaded any more, or ``timeout``.
    ``result()`` -> (seconds from creation until all were gone or None, progs left,
    links left)."""

    def __init__(self, prog_ids: Set[int], link_ids: Set[int], timeout: float):
        self.prog_ids, self.link_ids, self.timeout = prog_ids, link_ids, timeout
        self.t0 = time.monotonic()
        self.gone_s: Optional[float] = None
        self.left: Tuple[set, set] = (set(prog_ids), set(link_ids))
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        while time.monotonic() - self.t0 < self.timeout:
            progs, links = live_bpf()
            self.left = (self.prog_ids & set(progs), self.link_ids & set(links))
            if not self.left[0] and not self.left[1]:
                self.gone_s = time.monotonic() - self.t0
                return
            time.sleep(0.02)

    def result(self) -> Tuple[Optional[float], set, set]:
        self._th.join(self.timeout + 30)
        return self.gone_s, self.left[0], self.left[1]


def assert_no_panic(agent) -> None:
    text = agent.stderr_text() + agent.stdout_text()
    assert "panicked at" not in text, agent.logs_tail(40)


# --------------------------------------------------------------------------------------
# 0. the sink's fault modes themselves (no agent, no root)
# --------------------------------------------------------------------------------------


def test_sink_fault_modes():
    """The fault modes the agent tests rely on, checked with a plain gRPC stub and
    urllib: the first N calls are rejected with UNAVAILABLE / 503 and store nothing,
    later calls are stored; a delay makes every call take that long."""
    import grpc
    import urllib.error
    import urllib.request
    from opentelemetry.proto.collector.trace.v1 import (trace_service_pb2,
                                                        trace_service_pb2_grpc)
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.scope_spans.add().spans.add(name="x", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with OtlpSink() as s:
        codes = []
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            s.set_faults(fail_first=2)
            for _ in range(3):
                try:
                    stub.Export(req, timeout=5)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
            s.set_faults(delay_s=0.5)
            t = time.monotonic()
            stub.Export(req, timeout=5)
            slow = time.monotonic() - t
        s.set_faults(fail_first=1)
        http_codes = []
        for _ in range(2):
            r = urllib.request.Request(f"{s.http_endpoint}/v1/traces",
                                       data=req.SerializeToString(), method="POST",
                                       headers={"Content-Type": "application/x-protobuf"})
            try:
                with opener.open(r, timeout=5) as resp:
                    http_codes.append(resp.status)
            except urllib.error.HTTPError as e:
                http_codes.append(e.code)
        report("gRPC outcomes", codes, ["UNAVAILABLE", "UNAVAILABLE", "OK"])
        report("HTTP outcomes", http_codes, [503, 200])
        report("delayed call s", f"{slow:.2f}", ">= 0.5")
        assert codes == ["UNAVAILABLE", "UNAVAILABLE", "OK"]
        assert http_codes == [503, 200]
        assert 0.5 <= slow < 3
        assert len(s.spans()) == 3  # the 2 accepted gRPC calls and the accepted POST
        assert [c["outcome"] for c in s.calls("traces")] == \
            ["rejected", "rejected", "ok", "ok", "rejected", "ok"]


# --------------------------------------------------------------------------------------
# 1. collector down, then back (both OTLP protocols, run side by side)
# --------------------------------------------------------------------------------------

GRPC_DOWN_S = 60.0   # the scenario: one minute without a collector
HTTP_DOWN_S = 15.0   # shorter for OTLP/HTTP to keep the suite's run time down
N_DOWN = 40


@pytest.mark.timeout(160)
def test_collector_down_then_back(start_agent, http_server):
    """1. 40 requests while the collector is down; when it comes back on that port,
    all 40 spans arrive exactly once and nothing was dropped or failed.

    gRPC: 60 s down, requests spread over 20 s. OTLP/HTTP: 15 s down (to keep the run
    short), requests spread over 13 s. Two agents run side by side, each selecting
    its own python http.server by pid and exporting to its own dead port."""
    srv = {"grpc": http_server(), "http": http_server()}
    dead = {"grpc": reserve_dead_port(), "http": reserve_dead_port()}
    agents = {}
    for proto, otlp in (("grpc", "grpc"), ("http", "http/protobuf")):
        port = dead[proto][0]
        agents[proto] = start_agent({
            "AUTOTEL_PIDS": srv[proto].pid,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": otlp,
        }, protocol=None)
    t0 = time.monotonic()
    paths = {p: [f"/{p}-down-{i:02d}" for i in range(N_DOWN)] for p in srv}
    spread = {"grpc": 20.0, "http": HTTP_DOWN_S - 2.0}
    codes: Dict[str, list] = {"grpc": [], "http": []}

    def traffic(proto):
        step = spread[proto] / N_DOWN
        for i, path in enumerate(paths[proto]):
            delay = t0 + i * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            codes[proto].append(urllib_request(srv[proto].url(path), timeout=10)[0])

    threads = [threading.Thread(target=traffic, args=(p,), daemon=True) for p in srv]
    for th in threads:
        th.start()

    sinks = []
    try:
        results = {}
        for proto, down_s in (("http", HTTP_DOWN_S), ("grpc", GRPC_DOWN_S)):
            ag = agents[proto]
            time.sleep(max(0.0, t0 + down_s - time.monotonic()))
            assert ag.alive(), ag.logs_tail(40)
            before = span_counters(ag)
            print(f"[{proto}] after {time.monotonic() - t0:.1f} s down: {before}", flush=True)
            port, hold = dead[proto]
            hold.close()
            sink = (OtlpSink(grpc_port=port) if proto == "grpc" else OtlpSink(http_port=port))
            sinks.append(sink.start())
            t_up = time.monotonic()
            spans = sink.wait_for_spans(by_pid(srv[proto].pid), N_DOWN, timeout=20, settle=2.0)
            t_all = time.monotonic() - t_up
            c = wait_counters(ag, lambda c: c["exported"] >= N_DOWN, 5)
            results[proto] = (spans, c, before, t_all)
            ids = Counter(s["span_id"] for s in spans)
            report(f"[{proto}] spans delivered after {down_s:.0f} s down (in {t_all:.1f} s)",
                   len(spans), N_DOWN)
            report(f"[{proto}] distinct span ids", len(ids), N_DOWN)
            report(f"[{proto}] exported/dropped/failed counters",
                   f"{c['exported']}/{c['dropped_all']}/{c['failed']}", f"{N_DOWN}/0/0")
        for th in threads:
            th.join(timeout=30)
    finally:
        for s in sinks:
            s.stop()
        for _, hold in dead.values():
            hold.close()

    for proto, (spans, c, before, _) in results.items():
        assert codes[proto] == [404] * N_DOWN, codes[proto]
        assert before["created"] == N_DOWN, f"[{proto}] spans created while down: {before}"
        assert before["exported"] == 0, f"[{proto}] exported while down?: {before}"
        dup = [k for k, v in Counter(s["span_id"] for s in spans).items() if v > 1]
        assert not dup, f"[{proto}] duplicated spans: {dup}"
        got = sorted(s["attrs"].get("url.path") for s in spans)
        assert got == paths[proto], f"[{proto}] got {len(spans)} spans:\n{show(spans, 50)}"
        assert c["exported"] == N_DOWN and c["dropped_all"] == 0 and c["failed"] == 0, c
        assert agents[proto].alive()
        assert_no_panic(agents[proto])


# --------------------------------------------------------------------------------------
# 2. queue bound
# --------------------------------------------------------------------------------------

QUEUE = 50
BATCH = 10
N_QUEUE = 200


def test_queue_bound(start_agent, nginx):
    """2. queue_size 50 (YAML), batch 10, collector down, 200 requests: at most
    50 + one batch in flight are delivered, the rest are dropped (queue_full) and
    counted: delivered + dropped + failed == 200 == created. Drop warnings are
    rate-limited (<= 20 log lines mentioning 'drop')."""
    ngx = nginx()
    port, hold = reserve_dead_port()
    ag = start_agent({
        "AUTOTEL_OPEN_PORTS": ngx.port,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": BATCH,
    }, config_yaml=f"otel_traces_export:\n  queue_size: {QUEUE}\n", protocol=None)
    sink = None
    try:
        codes = keepalive_gets(ngx.port, [f"/p{i % 10}.txt" for i in range(N_QUEUE)])
        assert codes == [200] * N_QUEUE, Counter(codes)
        down = wait_counters(ag, lambda c: c["created"] >= N_QUEUE, 10)
        time.sleep(1.5)  # a couple more retries against the dead port
        down = span_counters(ag)
        print(f"while down: {down}", flush=True)
        assert ag.alive(), ag.logs_tail(40)
        hold.close()
        sink = OtlpSink(grpc_port=port).start()
        c = wait_counters(ag, lambda c: c["exported"] + c["dropped_all"] + c["failed"]
                          >= N_QUEUE, 25)
        delivered = sink.wait_for_spans(by_pid(ngx.worker_pids()), c["exported"],
                                        timeout=10, settle=1.5)
        c = span_counters(ag)
    finally:
        if sink:
            sink.stop()
        hold.close()
    drop_lines = [l for l in ag.stderr_text().splitlines() if "drop" in l.lower()]
    total = c["exported"] + c["dropped_queue_full"] + c["failed"]
    report("spans created", c["created"], N_QUEUE)
    report("delivered + dropped(queue_full) + failed",
           f"{c['exported']}+{c['dropped_queue_full']}+{c['failed']}={total}", N_QUEUE)
    report("delivered (sink) <= queue + batch", len(delivered), QUEUE + BATCH)
    report("log lines mentioning 'drop' (<= 20)", len(drop_lines), 20)
    print("\n".join(drop_lines[:5]))
    assert c["created"] == N_QUEUE, c
    assert total == N_QUEUE, c
    assert c["dropped_all"] == c["dropped_queue_full"], c
    assert len(delivered) == c["exported"], f"sink got {len(delivered)}, counter {c}"
    assert len({s["span_id"] for s in delivered}) == len(delivered), "duplicate spans"
    assert QUEUE <= c["exported"] <= QUEUE + BATCH, c
    assert c["dropped_queue_full"] > 0, c
    assert len(drop_lines) <= 20, "\n".join(drop_lines[:40])
    assert ag.alive()
    assert_no_panic(ag)


# --------------------------------------------------------------------------------------
# 3. slow collector, erroring collector
# --------------------------------------------------------------------------------------

SLOW_S = 3.0
N_SLOW = 300
RSS_LIMIT_KB = 150 * 1024
MARKER_LOC = 'location = /marker { return 200 "marker\\n"; }'


def test_slow_collector(start_agent, nginx, sink):
    """3a. Every trace export call takes 3 s. 300 nginx requests and a marker request
    made during the slowness: all 302 spans arrive later, exactly once; the reader
    keeps creating spans (it does not wait for the exporter); /metrics answers within
    1 s throughout; the agent's RSS stays under 150 MB."""
    ngx = nginx(extra_locations=MARKER_LOC)
    sink.set_faults(delay_s=SLOW_S)
    ag = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port}, protocol="grpc")
    rss, scrapes = [], []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                rss.append(rss_kb(ag.pid))
                scrapes.append(timed_scrape(ag))
            except Exception as e:  # a failed scrape is a failure of the test
                scrapes.append(float("inf"))
                print(f"scrape failed: {e}", flush=True)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert keepalive_gets(ngx.port, ["/index.html"]) == [200]  # starts slow call #1
        time.sleep(0.5)
        t_traffic = time.monotonic()
        codes = keepalive_gets(ngx.port, [f"/p{i % 10}.txt" for i in range(N_SLOW)])
        assert codes == [200] * N_SLOW, Counter(codes)
        assert keepalive_gets(ngx.port, ["/marker"]) == [200]
        # The reader is not blocked by the exporter: every span is built while the
        # collector is still busy with its slow calls.
        c_mid = wait_counters(ag, lambda c: c["created"] >= N_SLOW + 2, 5)
        received_mid = len(sink.spans())
        t_mid = time.monotonic()
        spans = sink.wait_for_spans(by_pid(ngx.worker_pids()), N_SLOW + 2,
                                    timeout=30, settle=1.0)
        t_done = time.monotonic()
    finally:
        stop.set()
        sampler.join(timeout=10)
    c = span_counters(ag)
    paths = Counter(s["attrs"].get("url.path") for s in spans)
    marker = [s for s in spans if s["attrs"].get("url.path") == "/marker"]
    calls = sink.calls("traces")
    report(f"spans created {t_mid - t_traffic:.1f} s after traffic start, "
           f"while sink had {received_mid}", c_mid["created"], N_SLOW + 2)
    report(f"spans delivered ({t_done - t_traffic:.1f} s, {len(calls)} slow calls)",
           len(spans), N_SLOW + 2)
    report("max agent RSS kB (< 150 MB)", max(rss), RSS_LIMIT_KB)
    report("max /metrics scrape s (< 1 s)", f"{max(scrapes):.3f}", f"{len(scrapes)} scrapes")
    report("exported/dropped/failed", f"{c['exported']}/{c['dropped_all']}/{c['failed']}",
           f"{N_SLOW + 2}/0/0")
    assert c_mid["created"] == N_SLOW + 2, c_mid
    assert received_mid < N_SLOW + 2, "collector was not slow: test proves nothing"
    assert len(spans) == N_SLOW + 2, show(spans)
    assert len({s["span_id"] for s in spans}) == len(spans), "duplicate spans"
    assert paths == Counter({"/index.html": 1, "/marker": 1,
                             **{f"/p{i}.txt": N_SLOW // 10 for i in range(10)}}), paths
    assert len(marker) == 1 and marker[0]["end_ns"] > 0
    assert max(rss) < RSS_LIMIT_KB, rss
    assert len(scrapes) >= 10 and max(scrapes) < 1.0, scrapes
    assert c["exported"] == N_SLOW + 2 and c["dropped_all"] == 0 and c["failed"] == 0, c
    assert_no_panic(ag)


HANG_S = 20.0  # longer than the agent's export timeout (10 s) and flush bound (5 s)


def test_shutdown_with_hanging_collector(start_agent, nginx, sink):
    """3b. A collector that takes every export call and never answers in time (each
    call sleeps 20 s). 300 nginx requests, then SIGTERM: the agent exits 0 within 8 s
    (the 5 s shutdown flush bound plus teardown; unbounded, it waited the export
    timeout once per queued batch: 326 s for 33 batches), its BPF programs are gone,
    and what it gave up is said once, with the count, not once per batch."""
    ngx = nginx()
    sink.set_faults(delay_s=HANG_S, signals=("traces", "metrics"))
    ag = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port, "OTEL_METRIC_EXPORT_INTERVAL": "1000"},
                     protocol="grpc")
    codes = keepalive_gets(ngx.port, [f"/p{i % 10}.txt" for i in range(N_SLOW)])
    assert codes == [200] * N_SLOW, Counter(codes)
    wait_counters(ag, lambda c: c["created"] >= N_SLOW, 10)
    time.sleep(1.5)  # the first export calls are now hanging in the collector
    programs, links = bpf_fd_ids(ag.pid)
    t0 = time.monotonic()
    rc = ag.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - t0
    err = ag.stderr_text()
    summary = [l for l in err.splitlines() if "spans not exported at shutdown" in l]
    per_batch = [l for l in err.splitlines() if "batch dropped" in l]
    live_progs, live_links = live_bpf()
    left = (programs & set(live_progs)) | (links & set(live_links))
    report("exit code after SIGTERM", rc, 0)
    report("seconds from SIGTERM to exit", f"{took:.1f}", "< 8")
    report("BPF programs + links of the agent before / left after exit",
           f"{len(programs) + len(links)}/{len(left)}", "n/0")
    report("shutdown summary lines / per-batch error lines", f"{len(summary)}/{len(per_batch)}",
           "1/0")
    print("\n".join(summary), flush=True)
    assert rc == 0, f"exit code {rc}\n{ag.logs_tail()}"
    assert took < 8.0, f"shutdown took {took:.1f} s with a hanging collector"
    assert programs and not left, (programs, left)
    assert len(summary) == 1 and not per_batch, err[-3000:]
    m = re.search(r"spans=(\d+)", summary[0])
    assert m and int(m.group(1)) > 0, summary[0]
    assert_no_panic(ag)


FAIL_FIRST = 3


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_erroring_collector(start_agent, nginx, sink, protocol):
    """3b. The collector rejects its first 3 trace export calls (gRPC UNAVAILABLE /
    HTTP 503), then accepts: 300 nginx requests all arrive exactly once, nothing
    counted as failed or dropped."""
    ngx = nginx()
    sink.set_faults(fail_first=FAIL_FIRST)
    ag = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port}, protocol=protocol)
    codes = keepalive_gets(ngx.port, [f"/p{i % 10}.txt" for i in range(N_SLOW)])
    assert codes == [200] * N_SLOW, Counter(codes)
    spans = sink.wait_for_spans(by_pid(ngx.worker_pids()), N_SLOW, timeout=20, settle=1.5)
    c = wait_counters(ag, lambda c: c["exported"] >= N_SLOW, 5)
    rejected = sink.calls("traces", "rejected")
    warn = [l for l in ag.stderr_text().splitlines() if "export failed" in l]
    report(f"[{protocol}] rejected export calls", len(rejected), FAIL_FIRST)
    report(f"[{protocol}] spans delivered", len(spans), N_SLOW)
    report(f"[{protocol}] exported/dropped/failed",
           f"{c['exported']}/{c['dropped_all']}/{c['failed']}", f"{N_SLOW}/0/0")
    report(f"[{protocol}] retry warnings logged", len(warn), FAIL_FIRST)
    assert len(rejected) == FAIL_FIRST, sink.calls()
    assert len(spans) == N_SLOW, show(spans)
    assert len({s["span_id"] for s in spans}) == N_SLOW, "duplicate spans"
    assert c["exported"] == N_SLOW and c["dropped_all"] == 0 and c["failed"] == 0, c
    assert_no_panic(ag)


# --------------------------------------------------------------------------------------
# 4. secrets never leave
# --------------------------------------------------------------------------------------

SECRET_HEADERS = ["Authorization: Bearer SECRET_A1", "Cookie: session=SECRET_C1",
                  "Proxy-Authorization: Basic SECRET_P1"]
SECRET_QUERY = "?token=SECRET_Q1&password=SECRET_Q2"
SECRET_LOC = 'location = /secret { add_header Set-Cookie "sid=SECRET_S1"; return 200 "ok\\n"; }'
SECRET_RE = re.compile(r"SECRET_[A-Z0-9]+")
N_SECRET = 3  # curl runs per server with the secrets in a curl config file (-K)


def run_curl(args: List[str], timeout: float = 20) -> Tuple[int, str, int]:
    """Run curl; returns (exit code, stdout, pid)."""
    proc = subprocess.Popen([CURL, "-sS", "--noproxy", "*", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out + err, proc.pid


def find_secrets(text: str) -> List[str]:
    return sorted(set(SECRET_RE.findall(text)))


def leak_places(sink) -> List[str]:
    """Where secrets appear in the decoded OTLP (span attrs, names, resources)."""
    out = []
    for s in sink.spans():
        for where, val in [("name", s["name"])] + [(f"attr {k}", v) for k, v in
                                                  s["attrs"].items()] + \
                [(f"resource {k}", v) for k, v in s["resource"].items()]:
            if SECRET_RE.search(str(val)):
                out.append(f"{s['kind']} span pid={s['resource'].get('process.pid')} "
                           f"{where} = {val!r}")
    return sorted(set(out))


def start_secret_server(tmp_path) -> Tuple[subprocess.Popen, int]:
    """peers/secret_server.py with secrets on its command line (and a Set-Cookie
    secret in its environment)."""
    port = free_port()
    env = dict(os.environ, SECRET_SERVER_COOKIE="sid=SECRET_S2")
    log = open(tmp_path / "secret_server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(PEERS / "secret_server.py"), "--port",
                             str(port), "--password", "SECRET_ARG1",
                             "--api-token=SECRET_ARG2"], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, env=env, start_new_session=True)
    log.close()
    wait_port(port, 15, proc)
    return proc, port


def secrets_found(sink, agents) -> Tuple[Dict[str, List[str]], int, int]:
    """Every place a SECRET_ string appears: each OTLP trace/metric request (protobuf
    text format and JSON), each agent's /metrics (both formats), stdout and stderr."""
    places = {}
    for i, e in enumerate(sink.exports()):
        found = find_secrets(json_format.MessageToJson(e["request"]) + str(e["request"]))
        if found:
            places[f"OTLP {e['signal']} export #{i}"] = found
    for label, a in agents.items():
        for where, text in ((f"{label} /metrics", a.metrics_text()),
                            (f"{label} /metrics (OpenMetrics)", a.metrics_text(True)),
                            (f"{label} stdout", a.stdout_text()),
                            (f"{label} stderr", a.stderr_text())):
            found = find_secrets(text)
            if found:
                places[where] = found
    return places, len(sink.exports("traces")), len(sink.exports("metrics"))


def test_secrets_never_leave(start_agent, nginx, sink, tmp_path):
    """4. Authorization, Cookie, Proxy-Authorization, a query string, Set-Cookie and
    secret command-line arguments of a server never leave the agent: not in OTLP
    traces or metrics (every request serialized and searched), not in /metrics, not
    on stdout (a second agent, side by side, prints spans to stdout), not in the
    logs. nginx and python server spans and curl CLIENT spans must exist, and the
    server's process.command_line must say REDACTED.

    Curl reads the secret headers and URL from a config file (-K) so that this test
    is about the captured traffic; secrets on curl's own command line are
    test_secrets_on_client_command_line."""
    ngx = nginx(extra_locations=SECRET_LOC)
    py, py_port = start_secret_server(tmp_path)
    try:
        pids = [ngx.master_pid, *ngx.worker_pids(), py.pid]
        sel = {"AUTOTEL_PIDS": ",".join(map(str, pids)), "AUTOTEL_EXECUTABLE_NAME": "^curl$",
               "OTEL_METRIC_EXPORT_INTERVAL": 500}
        ag = start_agent(sel, protocol="grpc")
        ag_out = start_agent(sel, protocol=None)  # no endpoint: spans on stdout

        servers = {"nginx": (ngx.port, ngx.worker_pids()), "python": (py_port, [py.pid])}
        curl_pids = []
        for name, (port, _) in servers.items():
            url = f"http://127.0.0.1:{port}/secret{SECRET_QUERY}"
            cfg = tmp_path / f"curl-{name}.cfg"
            cfg.write_text(f'url = "{url}"\n' + "".join(f'header = "{h}"\n'
                                                        for h in SECRET_HEADERS))
            for _ in range(N_SECRET):
                rc, out, pid = run_curl(["-K", str(cfg), "-o", "/dev/null", "-w",
                                         "%{http_code}"])
                assert (rc, out) == (0, "200"), out
                curl_pids.append(pid)
        want = {"nginx": N_SECRET, "python": N_SECRET, "curl": len(curl_pids)}

        for n, (_, p) in servers.items():
            sink.wait_for_spans(by_pid(p), N_SECRET, timeout=10, settle=0)
        sink.wait_for_spans(by_pid(curl_pids, "CLIENT"), len(curl_pids), timeout=10, settle=0)
        # metrics (every 500 ms) carry the resources too: wait for one with the server
        sink.wait_for_metrics(lambda d: d["resource"].get("process.pid") == py.pid, 1, 10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [l for l in ag_out.stdout_text().splitlines() if l.startswith("SPAN ")]
            if len(lines) >= sum(want.values()):
                break
            time.sleep(0.2)
        time.sleep(1.5)  # surplus spans, more metric exports
        srv_spans = {n: [s for s in sink.spans() if by_pid(p)(s)]
                     for n, (_, p) in servers.items()}
        client = [s for s in sink.spans() if by_pid(curl_pids, "CLIENT")(s)]
        stdout_text = ag_out.stdout_text()
        lines = [l for l in stdout_text.splitlines() if l.startswith("SPAN ")]
    finally:
        stop_process(py, signal.SIGTERM)

    # --- the spans exist (the test cannot pass vacuously) ---
    got = {"nginx": len(srv_spans["nginx"]), "python": len(srv_spans["python"]),
           "curl": len(client)}
    for k in want:
        report(f"{k} spans (OTLP)", got[k], want[k])
    stdout_counts = {
        "server": sum(1 for l in lines if l.startswith("SPAN SERVER")),
        "client": sum(1 for l in lines if l.startswith("SPAN CLIENT"))}
    report("stdout SERVER/CLIENT span lines", f"{stdout_counts['server']}/"
           f"{stdout_counts['client']}", f"{2 * N_SECRET}/{len(curl_pids)}")
    assert got == want, {k: show(v) for k, v in srv_spans.items()}
    assert stdout_counts == {"server": 2 * N_SECRET, "client": len(curl_pids)}, \
        tail(stdout_text, 40)
    for s in srv_spans["nginx"] + srv_spans["python"]:
        assert s["attrs"].get("url.path") == "/secret", s["attrs"]
    for s in client:
        assert s["attrs"].get("url.full", "").endswith("/secret"), s["attrs"]
    py_cmd = srv_spans["python"][0]["resource"].get("process.command_line", "")
    report("python server process.command_line", py_cmd, "...REDACTED...")
    assert "--password REDACTED" in py_cmd and "--api-token=REDACTED" in py_cmd, py_cmd

    # --- no secret anywhere ---
    places, n_traces, n_metrics = secrets_found(sink, {"otlp agent": ag,
                                                       "stdout agent": ag_out})
    report("OTLP trace/metric requests searched", f"{n_traces}/{n_metrics}", "n/n")
    report("places with a SECRET_ string", len(places), 0)
    assert n_metrics > 0 and n_traces > 0
    detail = "\n".join(leak_places(sink)[:20])
    stdout_leaks = "\n".join(l for l in lines if SECRET_RE.search(l))[:3000]
    assert not places, f"secrets left the agent: {places}\n{detail}\n{stdout_leaks}"


def test_secrets_on_client_command_line(start_agent, sink, tmp_path):
    """4b. The usual way: `curl -H 'Authorization: Bearer X' -H 'Cookie: ...'
    -H 'Proxy-Authorization: ...' 'URL?token=..&password=..'`. The secrets are then in
    curl's argv too, i.e. in the CLIENT span's process.command_line: they must be
    redacted there as well (and never appear in OTLP, /metrics or the logs)."""
    py, py_port = start_secret_server(tmp_path)
    try:
        ag = start_agent({"AUTOTEL_PIDS": py.pid, "AUTOTEL_EXECUTABLE_NAME": "^curl$"},
                         protocol="grpc")
        url = f"http://127.0.0.1:{py_port}/secret{SECRET_QUERY}"
        args = [a for h in SECRET_HEADERS for a in ("-H", h)]
        rc, out, curl_pid = run_curl([*args, "-o", "/dev/null", "-w", "%{http_code}", url])
        assert (rc, out) == (0, "200"), out
        client = sink.wait_for_spans(by_pid(curl_pid, "CLIENT"), 1, timeout=10, settle=1.0)
        server = [s for s in sink.spans() if by_pid(py.pid)(s)]
    finally:
        stop_process(py, signal.SIGTERM)
    report("curl CLIENT spans", len(client), 1)
    report("server spans", len(server), 1)
    assert len(client) == 1 and len(server) == 1, show(sink.spans())
    cmd = client[0]["resource"].get("process.command_line", "")
    report("curl process.command_line", cmd, "no SECRET_")
    places, n_traces, _ = secrets_found(sink, {"agent": ag})
    report("places with a SECRET_ string", len(places), 0)
    detail = "\n".join(leak_places(sink)[:20])
    assert not places, f"secrets left the agent: {places}\n{detail}"


# --------------------------------------------------------------------------------------
# 5. bad configuration
# --------------------------------------------------------------------------------------

BAD_CONFIGS = [
    # (id, yaml, env, words the message must contain)
    ("unknown-nested-key",
     "discovery:\n  open_ports: \"8080\"\notel_traces_export:\n"
     "  endpoint: http://127.0.0.1:4317\n  queue_sizee: 10\n",
     {}, ["queue_sizee", "line 5"]),
    ("prometheus-port-string", 'prometheus_export: {port: "abc"}\n', {}, ["port", "abc"]),
    ("capture-max-bytes-too-big", "capture: {max_bytes: 999999}\n", {},
     ["max_bytes", "999999"]),
    ("capture-http2-max-bytes-zero", "capture: {http2_max_bytes: 0}\n", {},
     ["http2_max_bytes", "0"]),
    ("sampler-bogus", None, {"OTEL_TRACES_SAMPLER": "bogus"}, ["bogus"]),
    ("open-ports-80-x", None, {"AUTOTEL_OPEN_PORTS": "80-x"}, ["80-x"]),
    ("queue-size-not-a-number", None, {"OTEL_BSP_MAX_QUEUE_SIZE": "lots"},
     ["OTEL_BSP_MAX_QUEUE_SIZE", "lots"]),
    ("capture-only-not-a-bool", None, {"AUTOTEL_BENCH_CAPTURE_ONLY": "sometimes"},
     ["AUTOTEL_BENCH_CAPTURE_ONLY", "sometimes"]),
]


def test_bad_config(start_agent):
    """5. Unknown keys and invalid values (file and environment): exit code 2 within
    10 s, a message naming the problem, and nothing attached: the process never holds
    a BPF program or link, and no new at_* program without a live owner appears."""
    before_progs, _ = live_bpf()
    problems = []
    for case_id, yaml, env, words in BAD_CONFIGS:
        env = {"AUTOTEL_OPEN_PORTS": "1", **env}
        ag = start_agent(env, config_yaml=yaml, protocol=None, wait_ready=False)
        held_p, held_l = set(), set()
        t0 = time.monotonic()
        while ag.proc.poll() is None and time.monotonic() - t0 < 10:
            p, l = bpf_fd_ids(ag.pid)
            held_p |= p
            held_l |= l
            time.sleep(0.002)
        rc = ag.proc.poll()
        err = ag.stderr_text()
        msg = " | ".join(l for l in err.splitlines() if l.strip())[:300]
        print(f"[{case_id}] exit {rc} in {time.monotonic() - t0:.2f} s: {msg}", flush=True)
        if rc != 2:
            problems.append(f"{case_id}: exit code {rc}, want 2")
        missing = [w for w in words if w not in err]
        if missing:
            problems.append(f"{case_id}: message lacks {missing}: {msg}")
        if held_p or held_l or READY_TEXT in err:
            problems.append(f"{case_id}: attached something: progs {held_p} links {held_l}")
    after_progs, _ = live_bpf()
    orphans = [p for i, p in after_progs.items() if i not in before_progs
               and p.get("name", "").startswith(PROG_PREFIX) and not p.get("pids")]
    report("bad configs rejected with exit 2 and a precise message",
           len(BAD_CONFIGS) - len({p.split(':')[0] for p in problems}), len(BAD_CONFIGS))
    report("new ownerless at_ programs", len(orphans), 0)
    assert not problems, "\n".join(problems)
    assert not orphans, orphans


# --------------------------------------------------------------------------------------
# 6. SIGTERM and kill -9 under load
# --------------------------------------------------------------------------------------

WRK_DELAY_LUA = "function delay()\n  return 2\nend\n"  # <= ~500 req/s per connection


def parse_wrk(text: str) -> dict:
    m = re.search(r"(\d+) requests in", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"requests": int(m.group(1)) if m else None,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


@pytest.mark.timeout(150)
def test_sigterm_and_kill9_under_load(start_agent, nginx, sink, tmp_path):
    """6. wrk keeps nginx busy the whole time. SIGTERM: the agent exits within 1 s
    and none of its BPF programs/links remain. kill -9: none remain within 2 s.
    An agent started after the kill -9 picks the running nginx up again (spans
    resume). nginx serves every request: no wrk socket error, no non-2xx, every
    access-log line 200."""
    ngx = nginx()
    env = {"AUTOTEL_OPEN_PORTS": ngx.port}
    lua = tmp_path / "delay.lua"
    lua.write_text(WRK_DELAY_LUA)
    wrk_out = tmp_path / "wrk.out"
    figures = {}

    def spans_resume(label: str) -> int:
        sink.clear()
        got = sink.wait_for_spans(by_pid(ngx.worker_pids()), 50, timeout=10, settle=0)
        report(f"{label}: nginx spans within 10 s (>= 50)", len(got), 50)
        return len(got)

    a1 = start_agent(env, protocol="grpc")
    with open(wrk_out, "wb") as out:
        wrk = subprocess.Popen([WRK, "-t2", "-c4", "-d120s", "-s", str(lua),
                                ngx.url("/small.txt")], stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        time.sleep(1.0)
        figures["spans a1"] = spans_resume("agent 1 (before SIGTERM)")

        # --- SIGTERM under load ---
        p1, l1 = bpf_fd_ids(a1.pid)
        report("agent 1 BPF programs/links held", f"{len(p1)}/{len(l1)}", "n/n")
        watch = GoneWatcher(p1, l1, 10.0)
        a1.proc.send_signal(signal.SIGTERM)
        try:
            rc1 = a1.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc1 = None
        exit_s = time.monotonic() - watch.t0
        gone_s, left_p, left_l = watch.result()
        report("SIGTERM: seconds until the process exited (<= 1)", f"{exit_s:.2f}",
               f"exit code {rc1}")
        report("SIGTERM: seconds until no program/link of ours is loaded (<= 1)",
               "never" if gone_s is None else f"{gone_s:.2f}", f"{len(p1)}/{len(l1)} ids")
        figures["sigterm"] = (rc1, exit_s, gone_s, left_p, left_l, our_uprobe_events(a1.pid))

        # --- kill -9 under load ---
        a2 = start_agent(env, protocol="grpc")
        figures["spans a2"] = spans_resume("agent 2 (before kill -9)")
        p2, l2 = bpf_fd_ids(a2.pid)
        report("agent 2 BPF programs/links held", f"{len(p2)}/{len(l2)}", "n/n")
        watch = GoneWatcher(p2, l2, 10.0)
        os.kill(a2.pid, signal.SIGKILL)
        a2.proc.wait(timeout=10)
        reaped_s = time.monotonic() - watch.t0
        gone2_s, left_p2, left_l2 = watch.result()
        report("kill -9: seconds until the process was reaped", f"{reaped_s:.2f}", "-")
        report("kill -9: seconds until no program/link of ours is loaded (<= 2)",
               "never" if gone2_s is None else f"{gone2_s:.2f}", f"{len(p2)}/{len(l2)} ids")
        figures["kill9"] = (gone2_s, left_p2, left_l2, p2, l2, our_uprobe_events(a2.pid))

        # --- restart: the running nginx is picked up again ---
        a3 = start_agent(env, protocol="grpc")
        figures["spans a3"] = spans_resume("agent 3 (after kill -9)")
        assert a3.alive()
    finally:
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            try:
                wrk.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process(wrk, signal.SIGKILL)
    wrk_text = wrk_out.read_text(errors="replace")
    w = parse_wrk(wrk_text)
    access = (ngx.prefix / "access.log").read_text(errors="replace").splitlines()
    statuses = Counter(l.split('"')[2].split()[0] for l in access if l.count('"') >= 2)
    bad_log = [l for l in ngx.error_log().splitlines()
               if re.search(r"\[(error|crit|alert|emerg)\]", l)]
    report("wrk requests / socket errors / non-2xx",
           f"{w['requests']}/{w['socket_errors']}/{w['non_2xx']}", "n/0/0")
    report("nginx access log statuses", dict(statuses), "all 200")
    rc1, exit_s, gone_s, left_p, left_l, up1 = figures["sigterm"]
    gone2_s, left_p2, left_l2, p2, l2, up2 = figures["kill9"]
    assert p1 and l1 and p2 and l2, "an agent held no BPF programs/links: nothing was tested"
    problems = []
    if rc1 != 0 or exit_s > 1.0:
        problems.append(f"SIGTERM: exit code {rc1} after {exit_s:.2f} s (want 0 within 1 s)")
    if gone_s is None or gone_s > 1.0:
        problems.append(f"SIGTERM: programs/links still loaded after 1 s (all gone after "
                        f"{gone_s} s; left at the end: {left_p} {left_l})")
    if gone2_s is None or gone2_s > 2.0:
        problems.append(f"kill -9: programs/links still loaded after 2 s (all gone after "
                        f"{gone2_s} s; left at the end: {left_p2} {left_l2})")
    if up1 or up2:
        problems.append(f"uprobe_events left: {up1} {up2}")
    for k in ("spans a1", "spans a2", "spans a3"):
        if figures[k] < 50:
            problems.append(f"{k}: only {figures[k]} spans")
    if not w["requests"] or w["requests"] < 1000:
        problems.append(f"wrk made too few requests: {wrk_text}")
    if w["socket_errors"] or w["non_2xx"]:
        problems.append(f"nginx did not serve every request: {wrk_text}")
    if set(statuses) != {"200"} or sum(statuses.values()) < (w["requests"] or 0):
        problems.append(f"access log statuses {statuses}")
    if bad_log:
        problems.append("nginx error log:\n" + "\n".join(bad_log[:20]))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------
# 7. garbage and out-of-order input
# --------------------------------------------------------------------------------------

GARBAGE_LOCS = ('location = /final { return 200 "final\\n"; }\n'
                '        location ^~ /g/ { return 200 "g\\n"; }')


def exchange(sock: socket.socket, data: bytes, wait: float = 0.3) -> bytes:
    """Send ``data`` and collect what arrives within ``wait`` s (EOF ends it early)."""
    try:
        sock.sendall(data)
    except OSError:
        return b""
    sock.settimeout(wait)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return got


def req(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def test_garbage_and_out_of_order(start_agent, nginx, sink):
    """7. On selected nginx sockets: valid / garbage / valid on one keep-alive
    connection, a plain keep-alive pair, half-open connections, a response sent
    by a client, 1000 connections that send 1 byte and close. The agent stays alive,
    spans are exactly the valid answered requests, parse errors are counted, and a
    normal request afterwards gets exactly one span."""
    ngx = nginx(extra_locations=GARBAGE_LOCS)
    ag = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port}, protocol="grpc")
    errors_before = parse_errors_total(ag)
    answered = Counter()  # path -> responses the client saw with status 200
    addr = ("127.0.0.1", ngx.port)

    # a) valid, binary garbage, valid on one keep-alive connection
    with socket.create_connection(addr, timeout=5) as s:
        for payload, path in ((req("/g/a1"), "/g/a1"),
                              (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200)
                               + b"\r\n\r\n", None),
                              (req("/g/a2"), "/g/a2")):
            got = exchange(s, payload)
            if path and got.startswith(b"HTTP/1.1 200"):
                answered[path] += 1
    # b) a plain keep-alive pair for contrast (garbage that nginx tolerates, stray
    #    CRLFs, is test_stray_crlf_between_keepalive_requests)
    with socket.create_connection(addr, timeout=5) as s:
        for path in ("/g/b1", "/g/b2"):
            if exchange(s, req(path)).startswith(b"HTTP/1.1 200"):
                answered[path] += 1
    # c) half-open: 20 connections send half a request head and stop writing,
    #    20 more connect and send nothing; all closed after the rest ran
    half = []
    for i in range(20):
        s = socket.create_connection(addr, timeout=5)
        s.sendall(f"GET /g/half{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        half.append(s)
        half.append(socket.create_connection(addr, timeout=5))
    # d) a response-looking payload sent by a client
    with socket.create_connection(addr, timeout=5) as s:
        exchange(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    # e) 1000 connections that send 1 byte and close
    t = time.monotonic()
    for i in range(1000):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"G" if i % 2 else b"\x00")
    one_byte_s = time.monotonic() - t
    for s in half:
        s.close()

    assert ag.alive(), ag.logs_tail(40)
    time.sleep(0.5)
    # the normal request afterwards
    t_final = time.monotonic()
    assert keepalive_gets(ngx.port, ["/final"]) == [200]
    final = sink.wait_for_spans(lambda s: s["attrs"].get("url.path") == "/final", 1,
                                timeout=10, settle=2.0)
    final_s = time.monotonic() - t_final
    spans = [s for s in sink.spans() if by_pid(ngx.worker_pids())(s)]
    errors_after = parse_errors_total(ag)
    deadline = time.monotonic() + 3
    while errors_after <= errors_before and time.monotonic() < deadline:
        time.sleep(0.25)
        errors_after = parse_errors_total(ag)
    got = Counter(s["attrs"].get("url.path") for s in spans)
    want = Counter(answered)
    want["/final"] += 1
    report("1000 one-byte connections took s", f"{one_byte_s:.1f}", "-")
    report(f"span for the normal request afterwards (in {final_s:.1f} s)", len(final), 1)
    report("spans by path", dict(got), dict(want))
    report("parse errors before -> after", f"{errors_before:.0f} -> {errors_after:.0f}",
           "increase")
    parse_lines = [l for l in ag.metrics_text().splitlines() if l.startswith(PARSE_ERRORS)]
    print("\n".join(parse_lines))
    assert ag.alive(), ag.logs_tail(40)
    assert len(final) == 1, show(final)
    assert answered["/g/a1"] == 1 and answered["/g/b1"] == answered["/g/b2"] == 1, answered
    assert got == want, show(spans, 40)
    assert errors_after > errors_before
    assert_no_panic(ag)


def test_stray_crlf_between_keepalive_requests(start_agent, nginx, sink):
    """7b. RFC 9112 section 2.2: a server SHOULD ignore at least one empty line (CRLF)
    received before a request-line, and nginx does. On a keep-alive connection:
    request, CRLF (own write), request; request, CRLF CRLF, request; request, then
    CRLF + request in one write. nginx answers all six, so all six get a span."""
    ngx = nginx(extra_locations=GARBAGE_LOCS)
    ag = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port}, protocol="grpc")
    answered = Counter()
    cases = [("crlf1", [b"\r\n"]), ("crlf2", [b"\r\n\r\n"]), ("same-write", None)]
    for name, between in cases:
        with socket.create_connection(("127.0.0.1", ngx.port), timeout=5) as s:
            for i in (1, 2):
                path = f"/g/{name}-{i}"
                if i == 2 and between:
                    for b in between:
                        exchange(s, b)
                payload = (b"\r\n" if i == 2 and between is None else b"") + req(path)
                if exchange(s, payload).startswith(b"HTTP/1.1 200"):
                    answered[path] += 1
    spans = sink.wait_for_spans(by_pid(ngx.worker_pids()), len(answered), timeout=10,
                                settle=1.5)
    got = Counter(s["attrs"].get("url.path") for s in spans)
    report("requests nginx answered", sum(answered.values()), 6)
    report("spans", len(spans), sum(answered.values()))
    report("spans by path", dict(got), dict(answered))
    assert sum(answered.values()) == 6, answered
    assert got == answered, f"missing: {answered - got}\n{autotel_parse_lines(ag)}"
    assert_no_panic(ag)


def autotel_parse_lines(agent) -> str:
    return "\n".join(l for l in agent.metrics_text().splitlines()
                     if l.startswith(PARSE_ERRORS) and not l.endswith(" 0"))


# --------------------------------------------------------------------------------------
# 8. missing privileges: a clear message, not a kernel errno
# --------------------------------------------------------------------------------------


def test_missing_privileges_message():
    """5. Run as an unprivileged user: the agent exits non-zero at once and says what
    is missing (root or CAP_BPF + CAP_PERFMON) instead of a bare EPERM."""
    import tempfile
    # pytest's tmp_path sits under a 0700 directory the other user cannot enter.
    d = Path(tempfile.mkdtemp(prefix="autotel-nobody-"))
    d.chmod(0o755)
    binary = d / "autotel"
    shutil.copy(REPO / "target" / "release" / "autotel", binary)
    binary.chmod(0o755)
    r = subprocess.run(["runuser", "-u", "nobody", "--", str(binary), "run"],
                       capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ.get("PATH", ""), "AUTOTEL_PROMETHEUS_PORT": "0"})
    report("unprivileged run: exit code (non-zero)", r.returncode, "!= 0")
    assert r.returncode != 0, r.stderr
    shutil.rmtree(d, ignore_errors=True)
    assert "missing privileges" in r.stderr and "CAP_BPF" in r.stderr, r.stderr
