#!/usr/bin/env python3
"""OTLP collector for bench/run.py that only counts spans.

Reuses the receiver of tests/integration/otlp_sink.py (gRPC + HTTP) but keeps
nothing: each ExportTraceServiceRequest is counted (all spans, and SERVER spans
per service.name) and the totals are rewritten to --count-file as JSON every
0.2 s, so the benchmark can read "spans received" at any time.

    python3 span_counter.py --grpc-port P --http-port Q --count-file F
"""
import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "tests", "integration"))
from otlp_sink import OtlpSink  # noqa: E402

SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER


class CountingSink(OtlpSink):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lock = threading.Lock()
        self.counts = {"spans": 0, "server_by_service": {}, "exports": 0, "metric_exports": 0}

    def _record(self, signal, transport, headers, request):  # keep nothing, count
        with self.lock:
            if signal != "traces":
                self.counts["metric_exports"] += 1
                return
            self.counts["exports"] += 1
            for rs in request.resource_spans:
                svc = ""
                for kv in rs.resource.attributes:
                    if kv.key == "service.name":
                        svc = kv.value.string_value
                n_server = 0
                for ss in rs.scope_spans:
                    self.counts["spans"] += len(ss.spans)
                    n_server += sum(1 for s in ss.spans if s.kind == SERVER)
                by = self.counts["server_by_service"]
                by[svc] = by.get(svc, 0) + n_server


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--count-file", required=True)
    args = ap.parse_args()
    sink = CountingSink("127.0.0.1", args.grpc_port, args.http_port).start()
    tmp = args.count_file + ".tmp"
    try:
        while True:
            with sink.lock:
                text = json.dumps(sink.counts)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, args.count_file)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
