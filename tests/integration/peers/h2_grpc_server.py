#!/usr/bin/env python3
"""gRPC server for the HTTP/2 integration tests (grpcio, insecure, 127.0.0.1).

Usage: h2_grpc_server.py PORT

Services:
* grpc.health.v1.Health (grpcio-health-checking): "" and "demo.Echo" are SERVING; any
  other service name answers NOT_FOUND (5), as the standard servicer does;
* demo.Stream/Count (server streaming, raw bytes): request b"N:MS" -> N messages
  b"msg-i", each sent after sleeping MS milliseconds;
* demo.Echo/Fail (unary): always aborts with INTERNAL (13);
* demo.Echo/Slow (unary): request b"MS:payload" -> sleeps MS ms, echoes the payload.

No protoc: the demo methods use grpc.method_handlers_generic_handler with identity
(bytes) serializers.
"""

import os
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def count(request: bytes, context):
    n, ms = (int(x) for x in request.decode().split(":"))
    for i in range(n):
        time.sleep(ms / 1000.0)
        yield f"msg-{i}".encode()


def fail(request: bytes, context):
    context.abort(grpc.StatusCode.INTERNAL, "demo failure")


def slow(request: bytes, context):
    ms, _, payload = request.partition(b":")
    time.sleep(int(ms) / 1000.0)
    return payload


def main() -> int:
    port = int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=80),
                         options=[("grpc.so_reuseport", 0)])
    hs = health.HealthServicer()
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    hs.set("demo.Echo", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    ident = dict(request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("demo.Stream", {
            "Count": grpc.unary_stream_rpc_method_handler(count, **ident)}),
        grpc.method_handlers_generic_handler("demo.Echo", {
            "Fail": grpc.unary_unary_rpc_method_handler(fail, **ident),
            "Slow": grpc.unary_unary_rpc_method_handler(slow, **ident)}),
    ))
    host = os.environ.get("GRPC_TEST_HOST", "127.0.0.1")  # another netns: its address
    if server.add_insecure_port(f"{host}:{port}") != port:
        print(f"cannot bind {host}:{port}", file=sys.stderr)
        return 1
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
