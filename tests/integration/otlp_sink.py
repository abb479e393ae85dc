#!/usr/bin/env python3
"""Independent OTLP receiver used by the autotel integration tests.

It is built only on the official ``opentelemetry-proto`` messages and ``grpcio``;
nothing here shares code with the agent. It accepts:

* OTLP/gRPC: ``TraceService/Export`` and ``MetricsService/Export``;
* OTLP/HTTP: ``POST /v1/traces`` and ``POST /v1/metrics`` with a protobuf body
  (``application/x-protobuf``; ``application/json`` is accepted too), optionally
  gzip-compressed, answered with ``200`` and an empty ``Export*ServiceResponse``.

Everything received is kept (thread-safe) and offered flattened through
``spans()``, ``metrics()``, ``wait_for_spans()`` and ``clear()``.

Run as a script to watch what an exporter sends::

    python3 otlp_sink.py --grpc-port 4317 --http-port 4318

which prints every span (and, with ``--metrics``, every data point) as a JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import sys
import threading
import time
import zlib
from concurrent import futures
from typing import Any, Callable, Dict, List, Optional

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2

# --------------------------------------------------------------------------------------
# Decoding helpers (protobuf -> plain python)
# --------------------------------------------------------------------------------------

# Enum numbers -> the short names tests use ('SERVER', 'OK', ...), derived from the
# official enum descriptors (SPAN_KIND_SERVER -> SERVER, STATUS_CODE_OK -> OK).
_KIND_NAMES = {
    v.number: v.name.replace("SPAN_KIND_", "")
    for v in trace_pb2.Span.SpanKind.DESCRIPTOR.values
}
_STATUS_NAMES = {
    v.number: v.name.replace("STATUS_CODE_", "")
    for v in trace_pb2.Status.StatusCode.DESCRIPTOR.values
}


def any_value(v) -> Any:
    """Convert an ``AnyValue`` to a python value (str/int/float/bool/list/dict/hex)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attrs_dict(kvs) -> Dict[str, Any]:
    """Repeated ``KeyValue`` -> dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def flatten_trace_request(req: trace_service_pb2.ExportTraceServiceRequest) -> List[dict]:
    """Flatten an ``ExportTraceServiceRequest`` into one dict per span."""
    out = []
    for rs in req.resource_spans:
        resource = attrs_dict(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = {"name": ss.scope.name, "version": ss.scope.version}
            for s in ss.spans:
                out.append(
                    {
                        "name": s.name,
                        "kind": _KIND_NAMES.get(s.kind, str(s.kind)),
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "trace_state": s.trace_state,
                        "start_ns": s.start_time_unix_nano,
                        "end_ns": s.end_time_unix_nano,
                        "status_code": _STATUS_NAMES.get(s.status.code, str(s.status.code)),
                        "status_message": s.status.message,
                        "attrs": attrs_dict(s.attributes),
                        "events": [
                            {"name": e.name, "time_ns": e.time_unix_nano,
                             "attrs": attrs_dict(e.attributes)}
                            for e in s.events
                        ],
                        "links": [
                            {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex(),
                             "attrs": attrs_dict(l.attributes)}
                            for l in s.links
                        ],
                        "resource": resource,
                        "scope": scope,
                    }
                )
    return out


def flatten_metrics_request(req: metrics_service_pb2.ExportMetricsServiceRequest) -> List[dict]:
    """Flatten an ``ExportMetricsServiceRequest`` into one dict per data point.

    Common keys: name, type (gauge/sum/histogram/exponential_histogram/summary), unit,
    attrs, resource, scope, start_ns, time_ns. Number points add ``value``; sums add
    ``monotonic`` and ``temporality``; histograms add count, sum, bucket_counts,
    explicit_bounds (and min/max when present).
    """
    out = []
    for rm in req.resource_metrics:
        resource = attrs_dict(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = {"name": sm.scope.name, "version": sm.scope.version}
            for m in sm.metrics:
                mtype = m.WhichOneof("data")
                data = getattr(m, mtype) if mtype else None
                base = {"name": m.name, "type": mtype, "unit": m.unit,
                        "resource": resource, "scope": scope}
                if data is None:
                    continue
                for dp in data.data_points:
                    d = dict(base)
                    d["attrs"] = attrs_dict(dp.attributes)
                    d["start_ns"] = dp.start_time_unix_nano
                    d["time_ns"] = dp.time_unix_nano
                    if mtype in ("gauge", "sum"):
                        kind = dp.WhichOneof("value")
                        d["value"] = getattr(dp, kind) if kind else None
                        if mtype == "sum":
                            d["monotonic"] = data.is_monotonic
                            d["temporality"] = data.aggregation_temporality
                    elif mtype == "histogram":
                        d["count"] = dp.count
                        d["sum"] = dp.sum if dp.HasField("sum") else None
                        d["bucket_counts"] = list(dp.bucket_counts)
                        d["explicit_bounds"] = list(dp.explicit_bounds)
                        d["min"] = dp.min if dp.HasField("min") else None
                        d["max"] = dp.max if dp.HasField("max") else None
                        d["temporality"] = data.aggregation_temporality
                    elif mtype == "exponential_histogram":
                        d["count"] = dp.count
                        d["sum"] = dp.sum if dp.HasField("sum") else None
                        d["scale"] = dp.scale
                        d["zero_count"] = dp.zero_count
                        d["temporality"] = data.aggregation_temporality
                    elif mtype == "summary":
                        d["count"] = dp.count
                        d["sum"] = dp.sum
                        d["quantiles"] = [(q.quantile, q.value) for q in dp.quantile_values]
                    out.append(d)
    return out


# --------------------------------------------------------------------------------------
# The sink
# --------------------------------------------------------------------------------------


class OtlpSink:
    """OTLP/gRPC + OTLP/HTTP receiver storing every export request it gets.

    Ports 0 mean "pick a free port"; the chosen ones are in ``grpc_port`` and
    ``http_port`` after ``start()``.
    """

    def __init__(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0,
                 on_export: Optional[Callable[[dict], None]] = None):
        self.host = host
        self._want_grpc_port = grpc_port
        self._want_http_port = http_port
        self.grpc_port: Optional[int] = None
        self.http_port: Optional[int] = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Each entry: {"signal": "traces"|"metrics", "transport": "grpc"|"http",
        #              "headers": {lowercase name: value}, "request": <protobuf msg>,
        #              "time": monotonic seconds}
        self._exports: List[dict] = []
        self._on_export = on_export
        # Fault injection (see ``set_faults``): delay per export call, and rejection of
        # the first N calls with a retryable error. Every call is logged in ``_calls``.
        self._faults = {"delay_s": 0.0, "fail_first": 0, "signals": ("traces",),
                        "grpc_code": grpc.StatusCode.UNAVAILABLE, "http_status": 503}
        self._failed_so_far = 0
        # Each entry: {"signal", "transport", "outcome": "ok"|"rejected", "start", "end"}
        self._calls: List[dict] = []
        self._grpc_server = None
        self._http_server = None
        self._http_thread = None

    # ---- endpoints -------------------------------------------------------------------
    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "OtlpSink":
        sink = self

        class TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC naming)
                code = sink._fault("traces", "grpc")
                if code is not None:
                    context.abort(code, "otlp_sink fault mode: rejected")
                sink._record("traces", "grpc", dict(context.invocation_metadata()), request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                code = sink._fault("metrics", "grpc")
                if code is not None:
                    context.abort(code, "otlp_sink fault mode: rejected")
                sink._record("metrics", "grpc", dict(context.invocation_metadata()), request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceServicer(), self._grpc_server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            MetricsServicer(), self._grpc_server)
        self.grpc_port = self._grpc_server.add_insecure_port(f"{self.host}:{self._want_grpc_port}")
        if not self.grpc_port:
            raise RuntimeError(f"cannot bind OTLP/gRPC on {self.host}:{self._want_grpc_port}")
        self._grpc_server.start()

        self._http_server = _OtlpHttpServer((self.host, self._want_http_port), _OtlpHttpHandler)
        self._http_server.sink = self
        self.http_port = self._http_server.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever, name="otlp-http", daemon=True)
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0.5).wait(5)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- fault injection -------------------------------------------------------------
    def set_faults(self, delay_s: float = 0.0, fail_first: int = 0,
                   signals: tuple = ("traces",),
                   grpc_code: "grpc.StatusCode" = grpc.StatusCode.UNAVAILABLE,
                   http_status: int = 503) -> None:
        """Make the sink misbehave like a real collector under trouble.

        * ``delay_s``: every export call of ``signals`` sleeps this long before it is
          answered (a slow collector); the data is stored after the sleep.
        * ``fail_first``: the next ``fail_first`` calls of ``signals`` are rejected
          (gRPC status ``grpc_code``, default UNAVAILABLE; HTTP ``http_status``, default
          503) without storing anything; later calls succeed.

        ``set_faults()`` with no argument turns every fault off."""
        with self._lock:
            self._faults = {"delay_s": float(delay_s), "fail_first": int(fail_first),
                            "signals": tuple(signals), "grpc_code": grpc_code,
                            "http_status": int(http_status)}
            self._failed_so_far = 0

    def _fault(self, signal: str, transport: str):
        """Apply the faults to one incoming call: sleep, then return None (accept) or
        the gRPC code / HTTP status to reject it with. Logs the call."""
        start = time.monotonic()
        with self._lock:
            f = dict(self._faults)
        if signal not in f["signals"]:
            f = {"delay_s": 0.0, "fail_first": 0}
        if f["delay_s"] > 0:
            time.sleep(f["delay_s"])
        reject = None
        with self._cond:
            if f["fail_first"] and self._failed_so_far < f["fail_first"]:
                self._failed_so_far += 1
                reject = f["grpc_code"] if transport == "grpc" else f["http_status"]
            self._calls.append({"signal": signal, "transport": transport,
                                "outcome": "ok" if reject is None else "rejected",
                                "start": start, "end": time.monotonic()})
        return reject

    def calls(self, signal: Optional[str] = None, outcome: Optional[str] = None) -> List[dict]:
        """Every export call received (accepted or rejected by a fault), in order."""
        with self._lock:
            return [c for c in self._calls if (signal is None or c["signal"] == signal)
                    and (outcome is None or c["outcome"] == outcome)]

    # ---- storage ---------------------------------------------------------------------
    def _record(self, signal: str, transport: str, headers: dict, request) -> None:
        entry = {
            "signal": signal,
            "transport": transport,
            "headers": {str(k).lower(): v for k, v in headers.items()},
            "request": request,
            "time": time.monotonic(),
        }
        with self._cond:
            self._exports.append(entry)
            self._cond.notify_all()
        if self._on_export is not None:
            try:
                self._on_export(entry)
            except Exception as e:  # never break the receiver because of a printer
                print(f"otlp_sink: on_export callback failed: {e}", file=sys.stderr)

    def exports(self, signal: Optional[str] = None) -> List[dict]:
        """Raw export records (optionally only 'traces' or 'metrics')."""
        with self._lock:
            return [e for e in self._exports if signal is None or e["signal"] == signal]

    def clear(self) -> None:
        with self._lock:
            self._exports.clear()
            self._calls.clear()

    def spans(self) -> List[dict]:
        """All received spans, flattened (see ``flatten_trace_request``)."""
        out = []
        for e in self.exports("traces"):
            for s in flatten_trace_request(e["request"]):
                s["transport"] = e["transport"]
                out.append(s)
        return out

    def metrics(self) -> List[dict]:
        """All received metric data points, flattened (see ``flatten_metrics_request``)."""
        out = []
        for e in self.exports("metrics"):
            for d in flatten_metrics_request(e["request"]):
                d["transport"] = e["transport"]
                out.append(d)
        return out

    def wait_for_spans(self, predicate: Optional[Callable[[dict], bool]] = None,
                       count: int = 1, timeout: float = 10.0, settle: float = 1.0) -> List[dict]:
        """Poll until at least ``count`` spans match ``predicate`` or ``timeout`` passes.

        Once the count is reached, keep listening ``settle`` more seconds so that
        surplus spans (a duplicate, a spurious span) are caught too, then return all
        matching spans. Tests assert exact counts on the result, so returning early
        with fewer spans on timeout simply makes the assertion fail with the figure.
        """
        pred = predicate or (lambda s: True)
        deadline = time.monotonic() + timeout
        matched: List[dict] = []
        while True:
            matched = [s for s in self.spans() if pred(s)]
            if len(matched) >= count:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return matched
            with self._cond:
                self._cond.wait(min(0.1, remaining))
        if settle > 0:
            time.sleep(settle)
            matched = [s for s in self.spans() if pred(s)]
        return matched

    def wait_for_metrics(self, predicate: Optional[Callable[[dict], bool]] = None,
                         count: int = 1, timeout: float = 10.0) -> List[dict]:
        """Poll until at least ``count`` data points match ``predicate`` (or timeout)."""
        pred = predicate or (lambda d: True)
        deadline = time.monotonic() + timeout
        while True:
            matched = [d for d in self.metrics() if pred(d)]
            if len(matched) >= count or time.monotonic() >= deadline:
                return matched
            with self._cond:
                self._cond.wait(0.1)


# --------------------------------------------------------------------------------------
# OTLP/HTTP receiver (stdlib http.server, one thread per connection)
# --------------------------------------------------------------------------------------


class _OtlpHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: OtlpSink


class _OtlpHttpHandler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 so exporters can keep their connection alive between batches.
    protocol_version = "HTTP/1.1"

    _ROUTES = {
        "/v1/traces": ("traces", trace_service_pb2.ExportTraceServiceRequest,
                       trace_service_pb2.ExportTraceServiceResponse),
        "/v1/metrics": ("metrics", metrics_service_pb2.ExportMetricsServiceRequest,
                        metrics_service_pb2.ExportMetricsServiceResponse),
    }

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self._ROUTES.get(self.path.split("?", 1)[0])
        if route is None:
            self._reply(404, b"unknown OTLP path", "text/plain")
            return
        signal, req_cls, resp_cls = route
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                self._reply(415, f"unsupported Content-Encoding {encoding}".encode(), "text/plain")
                return
        except Exception as e:
            self._reply(400, f"bad compressed body: {e}".encode(), "text/plain")
            return
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        try:
            if ctype == "application/x-protobuf":
                req = req_cls.FromString(body)
                out, out_type = resp_cls().SerializeToString(), "application/x-protobuf"
            elif ctype == "application/json":
                req = json_format.Parse(body.decode("utf-8"), req_cls())
                out, out_type = b"{}", "application/json"
            else:
                self._reply(415, f"unsupported Content-Type {ctype!r}".encode(), "text/plain")
                return
        except Exception as e:
            self._reply(400, f"cannot decode {req_cls.__name__}: {e}".encode(), "text/plain")
            return
        status = self.server.sink._fault(signal, "http")
        if status is not None:
            self._reply(status, b"otlp_sink fault mode: rejected", "text/plain")
            return
        self.server.sink._record(signal, "http", dict(self.headers.items()), req)
        self._reply(200, out, out_type)


# --------------------------------------------------------------------------------------
# Script mode
# --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Print OTLP spans received as JSON lines.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--grpc-port", type=int, default=4317)
    ap.add_argument("--http-port", type=int, default=4318)
    ap.add_argument("--metrics", action="store_true", help="also print metric data points")
    args = ap.parse_args(argv)

    print_lock = threading.Lock()

    def printer(entry):
        if entry["signal"] == "traces":
            items = flatten_trace_request(entry["request"])
        elif args.metrics:
            items = flatten_metrics_request(entry["request"])
        else:
            return
        with print_lock:
            for it in items:
                it["signal"] = entry["signal"]
                it["transport"] = entry["transport"]
                print(json.dumps(it, default=str, sort_keys=True), flush=True)

    sink = OtlpSink(args.host, args.grpc_port, args.http_port, on_export=printer).start()
    print(f"otlp_sink listening: grpc {sink.grpc_endpoint}  http {sink.http_endpoint}",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
