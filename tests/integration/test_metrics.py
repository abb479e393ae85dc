"""RED metrics integration tests: the real agent, real servers, real consumers.

The agent observes python's http.server or nginx; its metrics are read three ways,
none of them written by us: the OTLP sink (official ``opentelemetry-proto``), its
``/metrics`` endpoint parsed by ``prometheus_client``'s OpenMetrics parser, and a real
Prometheus server (Debian ``prometheus``) queried over its HTTP API; ``promtool`` lints
the exposition. Counts are exact: N requests must give histogram count N, no more, no
less. Every test prints the figure it checks.

Numbers refer to the metrics test plan: 1 exact OTLP counts (cumulative, delta),
2 Prometheus, 3 routes, 4 cardinality cap, 5 self-metrics (parse errors, lost events).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from conftest import (CURL, NO_PROXY_OPENER, free_port, raw_exchange, report, stop_process,
                      tail, urllib_request, wait_port)
from otlp_sink import flatten_metrics_request

EXPORT_MS = 500  # OTEL_METRIC_EXPORT_INTERVAL used by these tests
EXPORT_S = EXPORT_MS / 1000
METRIC_TIMEOUT = 15.0
SPAN_TIMEOUT = 10.0
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
WRK = "/usr/bin/wrk"

DURATION_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
DUR = "http.server.request.duration"
REQ_SIZE = "http.server.request.body.size"
RESP_SIZE = "http.server.response.body.size"
CLIENT_DUR = "http.client.request.duration"
PROM_DUR_COUNT = "http_server_request_duration_seconds_count"

ROUTES_YAML = """\
routes:
  patterns: ["/users/{{id}}", "/files/*"]
  ignored_patterns: ["/health"]
  ignore_mode: {mode}
  unmatched: heuristic
"""


# --------------------------------------------------------------------------------------
# helpers: OTLP metric points
# --------------------------------------------------------------------------------------


def of_pid(pid: int) -> Callable[[dict], bool]:
    return lambda d: d["resource"].get("process.pid") == pid


def series_id(p: dict) -> tuple:
    return (p["name"], p["resource"].get("process.pid"), tuple(sorted(p["attrs"].items())))


def points_per_export(sink) -> List[List[dict]]:
    """Metric data points of every OTLP metrics export, in arrival order."""
    out = []
    for e in sink.exports("metrics"):
        pts = flatten_metrics_request(e["request"])
        for p in pts:
            p["transport"] = e["transport"]
        out.append(pts)
    return out


def latest_points(sink, name: str, pred: Callable[[dict], bool] = lambda d: True) -> List[dict]:
    """Cumulative view: the last point received for each series of ``name``."""
    last: Dict[tuple, dict] = {}
    for pts in points_per_export(sink):
        for p in pts:
            if p["name"] == name and pred(p):
                last[series_id(p)] = p
    return list(last.values())


def wait_cumulative(sink, name: str, pred: Callable[[dict], bool], want: int,
                    timeout: float = METRIC_TIMEOUT, settle: float = 3 * EXPORT_S) -> List[dict]:
    """Poll until the latest cumulative points of matching series count >= ``want`` in
    total, then keep listening ``settle`` s (surplus counts show up) and return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(p["count"] for p in latest_points(sink, name, pred)) >= want:
            break
        time.sleep(0.1)
    time.sleep(settle)
    return latest_points(sink, name, pred)


def show_points(points) -> str:
    return "\n".join(f"  {p['name']} pid={p['resource'].get('process.pid')} count={p['count']} "
                     f"sum={p['sum']} attrs={p['attrs']}" for p in points)


def check_histogram_point(p: dict, *, unit: str, bounds: Optional[list] = None,
                          temporality: int) -> None:
    """Shape every histogram point must have (bounds checked when given)."""
    assert p["type"] == "histogram", p
    assert p["unit"] == unit, p
    assert p["temporality"] == temporality, p
    if bounds is not None:
        assert p["explicit_bounds"] == pytest.approx(bounds), p["explicit_bounds"]
    assert len(p["bucket_counts"]) == len(p["explicit_bounds"]) + 1, p
    assert sum(p["bucket_counts"]) == p["count"], p
    assert 0 < p["start_ns"] <= p["time_ns"], p
    assert abs(p["time_ns"] / 1e9 - time.time()) < 300, p
    assert p["resource"].get("service.name"), p["resource"]


def server_attrs(method: str, status: int, route: str, port: int, version: str = "1.1") -> dict:
    return {"http.request.method": method, "http.response.status_code": status,
            "http.route": route, "url.scheme": "http", "server.port": port,
            "network.protocol.version": version}


def by_route(points) -> Counter:
    c = Counter()
    for p in points:
        c[p["attrs"].get("http.route")] += p["count"]
    return c


# --------------------------------------------------------------------------------------
# helpers: the Prometheus endpoint of the agent
# --------------------------------------------------------------------------------------


def prom_samples(agent, name: str) -> List[tuple]:
    """(labels, value) of every sample ``name`` on the agent's /metrics, parsed with
    prometheus_client's (strict) OpenMetrics parser."""
    text = agent.metrics_text(openmetrics=True)
    assert text.rstrip().endswith("# EOF"), tail(text, 5)
    out = []
    for fam in parse_om(text):
        for s in fam.samples:
            if s.name == name:
                out.append((dict(s.labels), s.value))
    return out


def poll_prom(agent, name: str, labels: dict, ok: Callable[[float], bool],
              timeout: float = 10.0) -> Optional[float]:
    """Poll ``agent.prom_value(name, labels)`` until ``ok(value)`` or timeout."""
    value, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = agent.prom_value(name, labels)
        if value is not None and ok(value):
            return value
        time.sleep(0.25)
    return value


def get(srv, path: str) -> tuple:
    return urllib_request(srv.url(path), timeout=10)


def autotel_lines(agent) -> str:
    """The agent's self-metric samples (for assertion messages)."""
    try:
        text = agent.metrics_text()
    except OSError as e:
        return f"(no /metrics: {e})"
    return "\n".join(l for l in text.splitlines() if l.startswith("autotel_")
                     and "_bucket" not in l)


def assert_no_panic(agent) -> None:
    text = agent.stderr_text() + agent.stdout_text()
    assert "panicked at" not in text, agent.logs_tail(40)


# --------------------------------------------------------------------------------------
# a real Prometheus server
# --------------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, proc: subprocess.Popen, port: int, workdir: Path):
        self.proc, self.port, self.workdir = proc, port, workdir

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with NO_PROXY_OPENER.open(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, promql: str) -> List[dict]:
        data = self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def scalar(self, promql: str) -> Optional[float]:
        """Value of a query that returns at most one series (None: no series)."""
        res = self.query(promql)
        assert len(res) <= 1, res
        return float(res[0]["value"][1]) if res else None

    def wait_value(self, promql: str, want: float, timeout: float = 20.0) -> Optional[float]:
        value, deadline = None, time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.scalar(promql)
            if value is not None and value >= want:
                break
            time.sleep(0.5)
        return value

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")


@pytest.fixture
def prometheus(tmp_path):
    """Factory: ``prometheus(target_port)`` -> a Prometheus scraping
    127.0.0.1:target_port/metrics every second (honor_labels: the agent's job/instance
    labels are kept, as the OTel->Prometheus compatibility spec expects)."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} not found: apt-get install prometheus", pytrace=False)
    started: List[Prometheus] = []

    def _start(target_port: int) -> Prometheus:
        workdir = tmp_path / f"prometheus{len(started)}"
        workdir.mkdir()
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: autotel\n    honor_labels: true\n"
            "    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        port = free_port()
        log = open(workdir / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        p = Prometheus(proc, port, workdir)
        started.append(p)
        wait_port(port, 20, proc)
        deadline = time.monotonic() + 20
        while True:
            try:
                with NO_PROXY_OPENER.open(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready\n{tail(p.log())}", pytrace=False)
            time.sleep(0.1)
        return p

    yield _start
    for p in started:
        stop_process(p.proc, signal.SIGTERM)


# --------------------------------------------------------------------------------------
# 1. exact counts over OTLP (gRPC and HTTP/protobuf), cumulative
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_1_otlp_exact_counts_cumulative(require_root, sink, start_agent, http_server, protocol):
    srv = http_server()
    start_agent({"AUTOTEL_OPEN_PORTS": srv.port, "OTEL_METRIC_EXPORT_INTERVAL": EXPORT_MS},
                protocol=protocol)
    for _ in range(7):
        assert get(srv, "/f00.txt") == (200, b"file 0\n")
    bodies_404 = []
    for i in range(3):
        status, body = get(srv, f"/nope/{i + 1}")
        assert status == 404, status
        bodies_404.append(len(body))

    dur = wait_cumulative(sink, DUR, of_pid(srv.pid), 10)
    print(show_points(dur))
    ok = server_attrs("GET", 200, "/f00.txt", srv.port)
    missing = server_attrs("GET", 404, "/nope/{id}", srv.port)
    got = {json.dumps(p["attrs"], sort_keys=True): p["count"] for p in dur}
    want = {json.dumps(ok, sort_keys=True): 7, json.dumps(missing, sort_keys=True): 3}
    report(f"{DUR} count status 200 (route /f00.txt)", got.get(json.dumps(ok, sort_keys=True)), 7)
    report(f"{DUR} count status 404 (route /nope/{{id}})",
           got.get(json.dumps(missing, sort_keys=True)), 3)
    assert got == want, f"series differ:\n{show_points(dur)}"
    for p in dur:
        check_histogram_point(p, unit="s", bounds=DURATION_BOUNDS, temporality=2)
        assert 0 < p["sum"] < 5 * p["count"], f"implausible duration sum {p['sum']}"
        if p["min"] is not None:
            assert 0 < p["min"] <= p["max"] < 5, p
        assert p["resource"].get("service.name") == "http.server", p["resource"]
    report(f"{DUR} sum (s) for 10 requests", round(sum(p["sum"] for p in dur), 6), "(0, 50)")

    # Body sizes: same series, same counts; exact byte sums (GET bodies are empty).
    expect_resp = {200: 7 * len(b"file 0\n"), 404: sum(bodies_404)}
    for name in (REQ_SIZE, RESP_SIZE):
        pts = latest_points(sink, name, of_pid(srv.pid))
        counts = {p["attrs"]["http.response.status_code"]: p["count"] for p in pts}
        sums = {p["attrs"]["http.response.status_code"]: p["sum"] for p in pts}
        report(f"{name} counts", counts, {200: 7, 404: 3})
        assert counts == {200: 7, 404: 3}, show_points(pts)
        assert sorted(json.dumps(p["attrs"], sort_keys=True) for p in pts) == sorted(want)
        for p in pts:
            check_histogram_point(p, unit="By", temporality=2)
        want_sums = {200: 0, 404: 0} if name == REQ_SIZE else expect_resp
        report(f"{name} sums (bytes)", sums, want_sums)
        assert sums == want_sums, show_points(pts)

    # Cumulative: the unchanged series is sent again on every export, never reset.
    history = [p["count"] for pts in points_per_export(sink) for p in pts
               if p["name"] == DUR and p["attrs"] == ok]
    assert history == sorted(history) and history[-1] == 7, history
    assert history.count(7) >= 2, f"cumulative series not re-exported: {history}"
    # Nothing else: no client metric (no client is selected), one resource.
    others = [p for pts in points_per_export(sink) for p in pts
              if p["name"] == CLIENT_DUR or p["resource"].get("process.pid") != srv.pid]
    report("client / foreign data points", len(others), 0)
    assert others == [], show_points(others)
    transports = {p["transport"] for pts in points_per_export(sink) for p in pts}
    assert transports == {"grpc" if protocol == "grpc" else "http"}, transports


# --------------------------------------------------------------------------------------
# 1b. delta temporality: two bursts, each export carries only its interval
# --------------------------------------------------------------------------------------


def test_1_otlp_delta_temporality(require_root, sink, start_agent, http_server):
    srv = http_server()
    start_agent({"AUTOTEL_OPEN_PORTS": srv.port, "OTEL_METRIC_EXPORT_INTERVAL": EXPORT_MS,
                 "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"})
    body = b"file 1\n" * 2
    mine = lambda p: (p["name"] in (DUR, RESP_SIZE) and p["resource"].get("process.pid") == srv.pid
                      and p["attrs"].get("http.route") == "/f01.txt")  # noqa: E731

    def total(exports, name=DUR):
        return sum(p["count"] for pts in exports for p in pts if mine(p) and p["name"] == name)

    for _ in range(4):
        assert get(srv, "/f01.txt") == (200, body)
    deadline = time.monotonic() + METRIC_TIMEOUT
    while total(points_per_export(sink)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3 * EXPORT_S + 0.2)  # > 2 quiet intervals: nothing may be re-sent
    mark = len(sink.exports("metrics"))
    for _ in range(6):
        assert get(srv, "/f01.txt") == (200, body)
    deadline = time.monotonic() + METRIC_TIMEOUT
    while total(points_per_export(sink)[mark:]) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3 * EXPORT_S)

    exports = points_per_export(sink)
    before, after = exports[:mark], exports[mark:]
    mine_pts = [p for pts in exports for p in pts if mine(p)]
    print(show_points(mine_pts))
    report("delta count, burst 1", total(before), 4)
    report("delta count, burst 2", total(after), 6)
    assert (total(before), total(after)) == (4, 6), show_points(mine_pts)
    report("delta response bytes, bursts 1/2",
           (total(before, RESP_SIZE), total(after, RESP_SIZE)), (4, 6))
    resp_sums = (sum(p["sum"] for pts in before for p in pts if mine(p) and p["name"] == RESP_SIZE),
                 sum(p["sum"] for pts in after for p in pts if mine(p) and p["name"] == RESP_SIZE))
    report("delta response body bytes, bursts 1/2", resp_sums, (4 * len(body), 6 * len(body)))
    assert (total(before, RESP_SIZE), total(after, RESP_SIZE)) == (4, 6)
    assert resp_sums == (4 * len(body), 6 * len(body))
    # Histogram points (the flow counters travel as sums and have no count).
    all_pts = [p for pts in exports for p in pts if "count" in p]
    temporalities = Counter(p["temporality"] for p in all_pts)
    report("points with temporality DELTA(1)", temporalities.get(1, 0), len(all_pts))
    assert set(temporalities) == {1}, temporalities
    zero = [p for p in all_pts if p["count"] == 0]
    assert zero == [], f"series with nothing new were sent:\n{show_points(zero)}"
    for p in mine_pts:
        check_histogram_point(p, unit="s" if p["name"] == DUR else "By",
                              bounds=DURATION_BOUNDS if p["name"] == DUR else None,
                              temporality=1)
    # consecutive delta points of one series must not overlap in time
    dpts = sorted((p for p in mine_pts if p["name"] == DUR), key=lambda p: p["time_ns"])
    for a, b in zip(dpts, dpts[1:]):
        assert a["time_ns"] <= b["start_ns"], (a, b)


# --------------------------------------------------------------------------------------
# 2. a real Prometheus server scrapes the agent; promtool lints the exposition
# --------------------------------------------------------------------------------------


def promtool_check(text: str) -> None:
    """``promtool check metrics`` on the agent's classic text exposition (what a
    client that does not ask for OpenMetrics gets): it must pass without any problem."""
    assert "# EOF" not in text, "a plain client must get the classic text format"
    cp = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                        text=True, timeout=30)
    out = (cp.stdout + cp.stderr).strip()
    print(f"promtool check metrics: exit {cp.returncode}\n{out}")
    report("promtool check metrics exit code", cp.returncode, 0)
    assert cp.returncode == 0, f"promtool found problems (exit {cp.returncode}): {out}"


def test_2_prometheus_server_scrape(require_root, sink, start_agent, http_server, prometheus):
    srv = http_server()
    n = 12
    agent = start_agent({"AUTOTEL_OPEN_PORTS": srv.port},
                        config_yaml=ROUTES_YAML.format(mode="both"))
    prom = prometheus(agent.prom_port)
    for i in range(n):
        status, _ = get(srv, f"/users/{i + 1}")
        assert status == 404
    q_count = 'sum(http_server_request_duration_seconds_count{http_route="/users/{id}"})'
    prom.wait_value(q_count, n)
    time.sleep(2.5)  # two more scrapes: a surplus would show
    got = prom.scalar(q_count)
    report(f"prometheus {q_count}", got, n)
    assert got == n
    q_inf = ('sum(http_server_request_duration_seconds_bucket'
             '{http_route="/users/{id}",le="+Inf"})')
    got = prom.scalar(q_inf)
    report(f"prometheus {q_inf}", got, n)
    assert got == n
    for fam in ("http_server_request_body_size_bytes_count",
                "http_server_response_body_size_bytes_count"):
        got = prom.scalar(f'sum({fam}{{http_route="/users/{{id}}"}})')
        report(f"prometheus sum({fam})", got, n)
        assert got == n
    series = prom.query('http_server_request_duration_seconds_count{job="http.server"}')
    report("prometheus duration series for job http.server", len(series), 1)
    assert len(series) == 1, series
    labels = series[0]["metric"]
    assert {k: v for k, v in labels.items() if k not in ("__name__", "instance")} == {
        "job": "http.server", "http_request_method": "GET", "http_response_status_code": "404",
        "http_route": "/users/{id}", "url_scheme": "http", "server_port": str(srv.port),
        "network_protocol_version": "1.1"}, labels
    assert labels["instance"] and labels["instance"] != f"127.0.0.1:{agent.prom_port}", labels

    # target_info: one series, same job/instance, the resource attributes as labels
    ti = prom.query('target_info{job="http.server"}')
    report("prometheus target_info series", len(ti), 1)
    assert len(ti) == 1 and float(ti[0]["value"][1]) == 1, ti
    tl = ti[0]["metric"]
    assert tl["instance"] == labels["instance"], (tl, labels)
    assert tl.get("process_pid") == str(srv.pid), tl
    assert tl.get("host_name") == socket.gethostname(), tl
    assert tl.get("process_executable_name", "").startswith("python"), tl

    # self-metrics through Prometheus (published once a second)
    q_spans = 'autotel_spans_created_total{job="autotel"}'
    prom.wait_value(q_spans, n, timeout=10)
    got = prom.scalar(q_spans)
    report(f"prometheus {q_spans}", got, n)
    assert got == n
    q_exp = 'autotel_spans_exported_total{job="autotel"}'
    prom.wait_value(q_exp, n, timeout=10)
    got = prom.scalar(q_exp)
    report(f"prometheus {q_exp}", got, n)
    assert got == n
    got = prom.scalar('autotel_export_duration_seconds_count{job="autotel"}')
    report("prometheus autotel_export_duration_seconds_count", got, ">= 1")
    assert got is not None and got >= 1
    got = prom.scalar('autotel_instrumented_processes{job="autotel"}')
    report("prometheus autotel_instrumented_processes", got, 1)
    assert got == 1
    got = prom.scalar('up{job="autotel"}')
    report("prometheus up", got, 1)
    assert got == 1
    targets = prom.api("/api/v1/targets")["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")], targets

    # bucket boundaries on /metrics: the semconv duration buckets, then +Inf
    les = sorted({float(l["le"]) for l, _ in
                  prom_samples(agent, "http_server_request_duration_seconds_bucket")})
    report("duration bucket bounds on /metrics", les, DURATION_BOUNDS + [float("inf")])
    assert les == pytest.approx(DURATION_BOUNDS + [float("inf")])

    promtool_check(agent.metrics_text())


# --------------------------------------------------------------------------------------
# 3. routes: patterns, heuristic, ignored
# --------------------------------------------------------------------------------------

ROUTE_PLAN = [  # (path, expected http.route); python answers 404 for all of them
    ("/health", None),
    ("/users/1", "/users/{id}"),
    ("/users/2", "/users/{id}"),
    ("/users/abc", "/users/{id}"),
    ("/files/a/b.txt", "/files/*"),
    ("/orders/123/items", "/orders/{id}/items"),
    ("/orders/550e8400-e29b-41d4-a716-446655440000/items", "/orders/{id}/items"),
    ("/blobs/9f86d081884c7d65", "/blobs/{id}"),
    ("/reports/2024-01-31", "/reports/{id}"),
    ("/health", None),
    ("/about/team", "/about/team"),
]


def test_3_routes_patterns_heuristic_ignored(require_root, sink, start_agent, http_server):
    srv = http_server()
    agent = start_agent({"AUTOTEL_OPEN_PORTS": srv.port, "OTEL_METRIC_EXPORT_INTERVAL": EXPORT_MS},
                        config_yaml=ROUTES_YAML.format(mode="both"))
    for path, _ in ROUTE_PLAN:
        assert get(srv, path)[0] == 404
    want = Counter((p, r) for p, r in ROUTE_PLAN if r is not None)
    n = sum(want.values())
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", n, SPAN_TIMEOUT, 1.0)
    got = Counter((s["attrs"].get("url.path"), s["attrs"].get("http.route")) for s in spans)
    report("server spans (path, route) matching plan", sum((got & want).values()), n)
    assert got == want, f"\n got {got}\nwant {want}"
    assert len(sink.spans()) == n, sink.spans()
    for s in spans:
        assert s["name"] == f"GET {s['attrs']['http.route']}", s["name"]
    report("spans for /health", sum(1 for s in sink.spans()
                                    if s["attrs"].get("url.path") == "/health"), 0)

    want_routes = Counter()
    for _, r in ROUTE_PLAN:
        if r is not None:
            want_routes[r] += 1
    pts = wait_cumulative(sink, DUR, of_pid(srv.pid), n)
    got_routes = by_route(pts)
    report("OTLP duration counts per route", dict(got_routes), dict(want_routes))
    assert got_routes == want_routes, show_points(pts)
    prom = Counter()
    for labels, v in prom_samples(agent, PROM_DUR_COUNT):
        prom[labels.get("http_route")] += int(v)
    report("Prometheus duration counts per route", dict(prom), dict(want_routes))
    assert prom == want_routes


@pytest.mark.parametrize("mode", ["traces", "metrics"])
def test_3_ignore_mode(require_root, sink, start_agent, http_server, mode):
    srv = http_server()
    agent = start_agent({"AUTOTEL_OPEN_PORTS": srv.port, "OTEL_METRIC_EXPORT_INTERVAL": EXPORT_MS},
                        config_yaml=ROUTES_YAML.format(mode=mode))
    for path in ("/health", "/health", "/users/7"):
        assert get(srv, path)[0] == 404
    if mode == "traces":  # ignored in traces only: metrics keep /health
        want_spans = Counter({"/users/{id}": 1})
        want_metrics = Counter({"/health": 2, "/users/{id}": 1})
    else:  # ignored in metrics only: spans keep /health
        want_spans = Counter({"/health": 2, "/users/{id}": 1})
        want_metrics = Counter({"/users/{id}": 1})
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", sum(want_spans.values()),
                                SPAN_TIMEOUT, 1.0)
    got_spans = Counter(s["attrs"].get("http.route") for s in spans)
    report(f"ignore_mode={mode}: spans per route", dict(got_spans), dict(want_spans))
    assert got_spans == want_spans, spans
    for s in spans:
        assert s["name"] == f"GET {s['attrs']['http.route']}", s["name"]
    pts = wait_cumulative(sink, DUR, of_pid(srv.pid), sum(want_metrics.values()))
    got_metrics = by_route(pts)
    report(f"ignore_mode={mode}: OTLP duration counts per route", dict(got_metrics),
           dict(want_metrics))
    assert got_metrics == want_metrics, show_points(pts)
    prom = Counter()
    for labels, v in prom_samples(agent, PROM_DUR_COUNT):
        prom[labels.get("http_route")] += int(v)
    report(f"ignore_mode={mode}: Prometheus counts per route", dict(prom), dict(want_metrics))
    assert prom == want_metrics


# --------------------------------------------------------------------------------------
# 4. cardinality cap: 10,000 distinct routes, limit 50
# --------------------------------------------------------------------------------------

N_PATHS = 10_000
N_CURLS = 4
LIMIT = 50


def test_4_cardinality_overflow(require_root, sink, start_agent, nginx, tmp_path):
    ngx = nginx(extra_locations='        location /c/ { return 200 "ok\\n"; }')
    agent = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port, "OTEL_METRIC_EXPORT_INTERVAL": EXPORT_MS,
                         "AUTOTEL_METRICS_CARDINALITY_LIMIT": LIMIT},
                        config_yaml="routes:\n  unmatched: path\n")
    # N_CURLS keep-alive curl processes, each fetching its share of distinct paths.
    per = N_PATHS // N_CURLS
    procs = []
    t0 = time.monotonic()
    for k in range(N_CURLS):
        cfg = tmp_path / f"curl{k}.cfg"
        cfg.write_text("".join(f'url = "{ngx.url(f"/c/{i}")}"\noutput = "/dev/null"\n'
                               for i in range(k * per, (k + 1) * per)))
        procs.append(subprocess.Popen([CURL, "-sS", "--noproxy", "*", "-K", str(cfg),
                                       "-w", "%{http_code}\n"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    codes = Counter()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        codes.update(out.split())
    print(f"{N_PATHS} requests sent in {time.monotonic() - t0:.2f} s")
    assert codes == Counter({"200": N_PATHS}), codes  # precondition

    def prom_series(name):
        return prom_samples(agent, name)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(v for _, v in prom_series(PROM_DUR_COUNT)) >= N_PATHS:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    for name in (PROM_DUR_COUNT, "http_server_request_body_size_bytes_count",
                 "http_server_response_body_size_bytes_count"):
        samples = prom_series(name)
        over = [(l, v) for l, v in samples if l.get("otel_metric_overflow") == "true"]
        regular = [(l, v) for l, v in samples if "otel_metric_overflow" not in l]
        total = sum(v for _, v in samples)
        report(f"{name}: series (regular + overflow)", f"{len(regular)}+{len(over)}",
               f"{LIMIT - 1}+1")
        report(f"{name}: sum of counts", int(total), N_PATHS)
        assert len(over) == 1, over
        assert set(over[0][0]) == {"job", "instance", "otel_metric_overflow"}, over
        # The overflow series counts within the limit (OTel SDK spec).
        assert len(regular) == LIMIT - 1, len(regular)
        assert all(v == 1 for _, v in regular), [r for r in regular if r[1] != 1]
        assert total == N_PATHS
        report(f"{name}: overflow count", int(over[0][1]), N_PATHS - len(regular))

    # The same cap over OTLP (latest cumulative points).
    pts = wait_cumulative(sink, DUR, lambda p: True, N_PATHS, timeout=10, settle=EXPORT_S)
    over = [p for p in pts if p["attrs"] == {"otel.metric.overflow": True}]
    report("OTLP duration points (series)", len(pts), LIMIT)
    report("OTLP duration sum of counts", sum(p["count"] for p in pts), N_PATHS)
    assert len(over) == 1, show_points(over)
    assert len(pts) == LIMIT, len(pts)
    assert sum(p["count"] for p in pts) == N_PATHS
    assert agent.alive(), agent.logs_tail(40)
    assert_no_panic(agent)


# --------------------------------------------------------------------------------------
# 5. self-metrics: parse errors, lost events
# --------------------------------------------------------------------------------------


def test_5_parse_errors_counter(require_root, sink, start_agent, http_server):
    srv = http_server()
    agent = start_agent({"AUTOTEL_OPEN_PORTS": srv.port})
    # valid traffic first: no parse error may be counted for it
    for _ in range(2):
        assert get(srv, "/f02.txt")[0] == 200
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", 2, SPAN_TIMEOUT, 1.0)
    assert len(spans) == 2, spans
    time.sleep(1.2)  # self-metrics are published once a second
    before = agent.prom_value("autotel_parse_errors_total", {"protocol": "http1"}) or 0
    report("parse errors after valid traffic", before, 0)
    assert before == 0, autotel_lines(agent)

    rng = random.Random(7)
    k = 3
    for _ in range(k):
        # Binary garbage that no detector claims (TLS-looking bytes would be
        # recognised as ciphertext and rightly left alone).
        raw_exchange(srv.port, b"\xfe\xff\xfe\xff" + rng.randbytes(508))
    after = poll_prom(agent, "autotel_parse_errors_total", {"protocol": "http1"},
                      lambda v: v >= k, timeout=5)
    time.sleep(1.2)
    after = agent.prom_value("autotel_parse_errors_total", {"protocol": "http1"})
    kinds = {l.get("kind"): v for l, v in prom_samples(agent, "autotel_parse_errors_total")}
    print(f"autotel_parse_errors_total by kind: {kinds}")
    report(f"autotel_parse_errors_total{{protocol=\"http1\"}} after {k} garbage connections",
           after, k)
    assert after == k, autotel_lines(agent)
    # garbage makes no span, the agent goes on
    assert get(srv, "/f03.txt")[0] == 200
    spans = sink.wait_for_spans(lambda s: s["kind"] == "SERVER", 3, SPAN_TIMEOUT, 1.0)
    report("server spans (2 before + 1 after garbage)", len(spans), 3)
    assert len(spans) == 3, spans
    assert agent.alive(), agent.logs_tail(40)
    assert_no_panic(agent)


def test_5_lost_events_counter(require_root, sink, start_agent, nginx):
    ngx = nginx()
    (ngx.static / "8k.bin").write_bytes(bytes(range(256)) * 32)  # 8192 bytes
    agent = start_agent({"AUTOTEL_OPEN_PORTS": ngx.port},
                        config_yaml="capture: {max_bytes: 8000, ringbuf_bytes: 65536}\n")
    # self-metrics are published once a second: the series may not exist right at ready
    lost0 = poll_prom(agent, "autotel_events_lost_total", {"ringbuf": "data"},
                      lambda v: True, timeout=5)
    report("events lost before the flood", lost0, 0)
    assert lost0 == 0, autotel_lines(agent)
    # Each request carries a 7 KB header, read by nginx and captured up to 8000 bytes
    # (a response body written after its head is counted, not copied, so the 8 KB
    # body alone did not fill the ring when the reader kept up).
    pad = "X-Pad: " + "p" * 7000
    cp = subprocess.run([WRK, "-t2", "-c50", "-d3s", "-H", pad,
                         ngx.url("/nosendfile/8k.bin")],
                        capture_output=True, text=True, timeout=30)
    print(cp.stdout)
    assert cp.returncode == 0, cp.stderr
    m = re.search(r"(\d+) requests in", cp.stdout)
    assert m and int(m.group(1)) > 1000, cp.stdout  # precondition: it was a flood
    lost = poll_prom(agent, "autotel_events_lost_total", {"ringbuf": "data"},
                     lambda v: v > 0, timeout=5)
    received = agent.prom_value("autotel_events_received_total", {"ringbuf": "data"})
    report('autotel_events_lost_total{ringbuf="data"} after the flood', lost, "> 0")
    print(f'autotel_events_received_total{{ringbuf="data"}} = {received}')
    assert lost is not None and lost > 0, autotel_lines(agent)
    assert agent.alive(), agent.logs_tail(40)
    assert_no_panic(agent)

    # The agent still works: one request after the flood gives exactly one span.
    time.sleep(1.0)
    assert urllib_request(ngx.url("/p7.txt"))[0] == 200
    probe = lambda s: s["kind"] == "SERVER" and s["attrs"].get("url.path") == "/p7.txt"  # noqa
    spans = sink.wait_for_spans(probe, 1, SPAN_TIMEOUT, 1.0)
    report("span for the request after the flood", len(spans), 1)
    assert len(spans) == 1, spans
    assert spans[0]["attrs"].get("http.response.status_code") == 200
