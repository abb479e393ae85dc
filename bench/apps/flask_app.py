#!/usr/bin/env python3
"""Small Flask app for the autotel-vs-opentelemetry-instrument comparison
(bench/run.py). One process, werkzeug's threaded server speaking HTTP/1.1 so
wrk's keep-alive connections stay open.

    python3 flask_app.py PORT
"""
import json
import sys

from flask import Flask, Response
from werkzeug.serving import WSGIRequestHandler, run_simple

app = Flask(__name__)
PAYLOAD = json.dumps({"items": [{"id": i, "name": f"item-{i}"} for i in range(10)]})


@app.route("/api/items")
def items():
    return Response(PAYLOAD, mimetype="application/json")


@app.route("/health")
def health():
    return "ok"


if __name__ == "__main__":
    WSGIRequestHandler.protocol_version = "HTTP/1.1"
    WSGIRequestHandler.log_request = lambda *a, **k: None
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True, use_reloader=False,
               use_debugger=False)
