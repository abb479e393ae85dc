"""Validates the OTLP sink itself against the official OpenTelemetry Python SDK exporters.

If the sink mis-decoded something, every agent test would be wrong, so the sink is
checked here against a producer we did not write. These tests do not need root.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from conftest import free_port, report, wait_port
from otlp_sink import OtlpSink

HERE = os.path.dirname(os.path.abspath(__file__))
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def local_sink():
    s = OtlpSink().start()
    yield s
    s.stop()


def _exporters(sink, transport, gzip=False):
    if transport == "grpc":
        comp = grpc.Compression.Gzip if gzip else None
        return (GrpcSpanExporter(endpoint=f"127.0.0.1:{sink.grpc_port}", insecure=True,
                                 compression=comp),
                GrpcMetricExporter(endpoint=f"127.0.0.1:{sink.grpc_port}", insecure=True))
    comp = HttpCompression.Gzip if gzip else HttpCompression.NoCompression
    return (HttpSpanExporter(endpoint=f"{sink.http_endpoint}/v1/traces", compression=comp),
            HttpMetricExporter(endpoint=f"{sink.http_endpoint}/v1/metrics"))


def _emit_three_spans(span_exporter, service):
    """One SERVER span with two children (CLIENT ok, INTERNAL error), via the real SDK."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    tracer = provider.get_tracer("sink-test")
    with tracer.start_as_current_span("GET /users/{id}", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.request.method", "GET")
        root.set_attribute("http.response.status_code", 200)
        root.set_attribute("url.path", "/users/42")
        with tracer.start_as_current_span("SELECT users", kind=SpanKind.CLIENT) as c:
            c.set_attribute("db.system.name", "postgresql")
            c.set_attribute("network.peer.port", 5432)
            c.set_attribute("ratio", 0.5)
            c.set_attribute("flag", True)
            c.set_attribute("tags", ["a", "b"])
        with tracer.start_as_current_span("work", kind=SpanKind.INTERNAL) as w:
            w.set_status(Status(StatusCode.ERROR, "boom"))
        root_ctx = root.get_span_context()
    provider.shutdown()
    return root_ctx


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sink_decodes_sdk_spans(local_sink, transport, gzip):
    span_exporter, _ = _exporters(local_sink, transport, gzip)
    service = f"sink-test-{transport}"
    root_ctx = _emit_three_spans(span_exporter, service)

    spans = local_sink.wait_for_spans(lambda s: s["resource"].get("service.name") == service,
                                      count=3, timeout=10, settle=0.3)
    report(f"sink spans via {transport}", len(spans), 3)
    assert len(spans) == 3
    assert {s["transport"] for s in spans} == {transport}
    if gzip and transport == "http":  # the sink's gzip path was really exercised
        # (grpcio hides grpc-encoding from the servicer, so only HTTP can be checked)
        assert {e["headers"].get("content-encoding") for e in local_sink.exports()} == {"gzip"}
    by_name = {s["name"]: s for s in spans}
    root, db, work = by_name["GET /users/{id}"], by_name["SELECT users"], by_name["work"]

    assert root["kind"] == "SERVER" and db["kind"] == "CLIENT" and work["kind"] == "INTERNAL"
    assert root["trace_id"] == format(root_ctx.trace_id, "032x")
    assert root["span_id"] == format(root_ctx.span_id, "016x")
    assert root["parent_span_id"] == ""
    assert db["parent_span_id"] == root["span_id"] == work["parent_span_id"]
    assert db["trace_id"] == root["trace_id"] == work["trace_id"]
    assert root["attrs"] == {"http.request.method": "GET", "http.response.status_code": 200,
                             "url.path": "/users/42"}
    assert db["attrs"] == {"db.system.name": "postgresql", "network.peer.port": 5432,
                           "ratio": 0.5, "flag": True, "tags": ["a", "b"]}
    assert root["status_code"] == "UNSET" and work["status_code"] == "ERROR"
    assert work["status_message"] == "boom"
    for s in spans:
        assert 0 < s["start_ns"] <= s["end_ns"]
        assert s["resource"]["telemetry.sdk.name"] == "opentelemetry"
        assert s["scope"]["name"] == "sink-test"

    local_sink.clear()
    assert local_sink.spans() == []


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sink_decodes_sdk_metrics(local_sink, transport):
    _, metric_exporter = _exporters(local_sink, transport)
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=60_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "m"}),
                             metric_readers=[reader])
    meter = provider.get_meter("sink-test")
    meter.create_counter("requests").add(7, {"route": "/a"})
    hist = meter.create_histogram("http.server.request.duration", unit="s")
    for v in (0.001, 0.02, 0.3):
        hist.record(v, {"route": "/a"})
    provider.shutdown()  # final collect + export

    pts = local_sink.wait_for_metrics(count=2, timeout=10)
    names = {p["name"]: p for p in pts}
    report(f"sink metric points via {transport}", len(pts), 2)
    assert len(pts) == 2
    assert names["requests"]["type"] == "sum" and names["requests"]["value"] == 7
    assert names["requests"]["attrs"] == {"route": "/a"}
    h = names["http.server.request.duration"]
    assert h["type"] == "histogram" and h["count"] == 3 and h["unit"] == "s"
    assert abs(h["sum"] - 0.321) < 1e-9
    assert sum(h["bucket_counts"]) == 3


def test_sink_http_rejects_bad_input(local_sink):
    """The HTTP receiver must not accept garbage: it answers 400/415/404."""
    url = f"{local_sink.http_endpoint}/v1/traces"
    cases = [
        (url, b"\xff\xfe not protobuf", "application/x-protobuf", 400),
        (url, b"", "text/plain", 415),
        (f"{local_sink.http_endpoint}/v1/nope", b"", "application/x-protobuf", 404),
    ]
    for target, body, ctype, want in cases:
        req = urllib.request.Request(target, data=body, method="POST",
                                     headers={"Content-Type": ctype})
        with pytest.raises(urllib.error.HTTPError) as ei:
            NO_PROXY.open(req, timeout=5)
        assert ei.value.code == want, (target, ctype)
    assert local_sink.spans() == []


def test_sink_script_mode_prints_json_lines():
    """`python3 otlp_sink.py --grpc-port N --http-port M` prints received spans as JSON."""
    gport, hport = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "otlp_sink.py"),
         "--grpc-port", str(gport), "--http-port", str(hport)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(gport, 15)
        wait_port(hport, 15)
        _emit_three_spans(GrpcSpanExporter(endpoint=f"127.0.0.1:{gport}", insecure=True), "g")
        _emit_three_spans(HttpSpanExporter(endpoint=f"http://127.0.0.1:{hport}/v1/traces"), "h")
        time.sleep(0.5)
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=10)
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    report("script-mode JSON span lines", len(lines), 6)
    assert len(lines) == 6, err
    assert sorted(l["resource"]["service.name"] for l in lines) == ["g"] * 3 + ["h"] * 3
    assert {l["transport"] for l in lines} == {"grpc", "http"}
