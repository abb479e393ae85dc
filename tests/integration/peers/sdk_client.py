#!/usr/bin/env python3
"""An application instrumented by the official OpenTelemetry Python SDK.

Run it under ``opentelemetry-instrument`` (zero-code instrumentation; the
``requests`` instrumentation makes one CLIENT span per call and injects
``traceparent``). ``python3 sdk_client.py URL N`` GETs URL N times, printing each
status; the SDK exports its spans at exit (BatchSpanProcessor shutdown).
"""

import sys

import requests

url, n = sys.argv[1], int(sys.argv[2])
with requests.Session() as s:
    s.trust_env = False  # never a proxy from the environment
    for i in range(n):
        r = s.get(f"{url}?i={i}", timeout=10)
        print(r.status_code, flush=True)
