#!/usr/bin/env python3
"""gRPC client for the HTTP/2 integration tests: all calls on ONE channel (one TCP
connection), so the agent sees many streams on one HTTP/2 connection.

Usage: h2_grpc_client.py PORT SCENARIO [ARGS...]

Prints "ready", waits for a line on stdin (so the test can select this pid before
any connection exists), runs the scenario and prints one JSON line of results.

Scenarios:
* unary K M      K Health/Check("") (SERVING) + M Health/Check("no.such.Service")
                 (NOT_FOUND) + 1 demo.Echo/Fail (INTERNAL)
* stream N MS    one demo.Stream/Count yielding N messages MS ms apart
* concurrent C MS  C concurrent demo.Echo/Slow calls (each sleeps MS ms on the server)
* traceparent TP1 TP2  Health/Check with metadata traceparent=TP1, then TP2, then none
* sizes N1,N2,... [T]  one demo.Echo/Slow per size, echoing a payload of that many
  bytes (an item "pMS" pauses MS ms instead); with T, the list runs on T threads at
  once

A scenario named "warm-<scenario>" first makes each kind of call the scenario makes
(Health/Check, demo.Echo/Slow) once on the channel, prints "warm" and waits for a
second line on stdin: the channel is then open and its HPACK tables filled before an
agent started in between.
"""

import json
import os
import sys
import time
from collections import Counter
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def code_name(e: grpc.RpcError) -> str:
    return e.code().name


def main() -> int:
    port, scenario, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    print("ready", flush=True)
    sys.stdin.readline()
    host = os.environ.get("GRPC_TEST_HOST", "127.0.0.1")  # another netns: its address
    channel = grpc.insecure_channel(f"{host}:{port}",
                                    options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=10)
    health = health_pb2_grpc.HealthStub(channel)
    ident = dict(request_serializer=None, response_deserializer=None)
    if scenario.startswith("warm-"):
        scenario = scenario[len("warm-"):]
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        channel.unary_unary("/demo.Echo/Slow", **ident)(b"0:w", timeout=10)
        print("warm", flush=True)
        sys.stdin.readline()
    out = {"scenario": scenario}
    t0 = time.monotonic()
    if scenario == "unary":
        k, m = int(args[0]), int(args[1])
        codes = Counter()
        for i in range(k + m):
            svc = "" if i < k else "no.such.Service"
            try:
                r = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=10)
                codes["OK" if r.status == health_pb2.HealthCheckResponse.SERVING
                      else f"OK-{r.status}"] += 1
            except grpc.RpcError as e:
                codes[code_name(e)] += 1
        try:
            channel.unary_unary("/demo.Echo/Fail", **ident)(b"x", timeout=10)
            out["fail"] = "OK"
        except grpc.RpcError as e:
            out["fail"] = code_name(e)
        out["codes"] = dict(codes)
    elif scenario == "stream":
        n, ms = int(args[0]), int(args[1])
        call = channel.unary_stream("/demo.Stream/Count", **ident)
        msgs = list(call(f"{n}:{ms}".encode(), timeout=60))
        out["messages"] = len(msgs)
    elif scenario == "concurrent":
        c, ms = int(args[0]), int(args[1])
        call = channel.unary_unary("/demo.Echo/Slow", **ident)
        futs = [call.future(f"{ms}:p{i}".encode(), timeout=30) for i in range(c)]
        results = []
        for f in futs:
            try:
                results.append(f.result().decode())
            except grpc.RpcError as e:
                results.append(code_name(e))
        out["ok"] = sum(r == f"p{i}" for i, r in enumerate(results))
    elif scenario == "traceparent":
        codes = []
        for tp in (args[0], args[1], None):
            md = (("traceparent", tp),) if tp else None
            r = health.Check(health_pb2.HealthCheckRequest(service=""), metadata=md,
                             timeout=10)
            codes.append(r.status)
        out["serving"] = sum(c == health_pb2.HealthCheckResponse.SERVING for c in codes)
    elif scenario == "sizes":
        call = channel.unary_unary("/demo.Echo/Slow", **ident)
        threads = int(args[1]) if len(args) > 1 else 1
        if threads == 1:
            out["echoed"] = []
            for item in args[0].split(","):
                if item.startswith("p"):  # a pause of that many ms between calls
                    time.sleep(int(item[1:]) / 1000)
                    continue
                out["echoed"].append(len(call(b"0:" + b"p" * int(item), timeout=30)))
        else:
            # the same list on concurrent threads: their frames interleave on the channel
            sizes = [int(n) for n in args[0].split(",")]
            with futures.ThreadPoolExecutor(threads) as pool:
                runs = pool.map(lambda _: [len(call(b"0:" + b"p" * n, timeout=30))
                                           for n in sizes], range(threads))
                out["echoed"] = [x for run in runs for x in run]
    else:
        print(f"unknown scenario {scenario}", file=sys.stderr)
        return 2
    out["elapsed_s"] = time.monotonic() - t0
    channel.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
