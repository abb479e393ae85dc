#!/usr/bin/env python3
"""Soak test: the agent under steady load plus churn for N minutes, watched for growth.

Load (all real programs, 127.0.0.1 only):
  * nginx (1 worker, selected by pid) under wrk at a fixed rate: 4 keep-alive
    connections, each waiting 10 ms between requests (wrk Lua ``delay``), <= ~400 req/s;
  * new-connection churn: one request per fresh TCP connection, ~20 per second;
  * short-lived processes: a copy of curl named ``autotel-soak-curl`` (selected by
    executable name, so other curls on the host are not) run ~5 times per second.

Every ``--interval`` seconds (10) it samples the agent's RSS, its self-metrics
(``autotel_tracked_connections``, ``autotel_instrumented_processes``, spans exported,
events lost, connections evicted) and the occupancy of its kernel maps ``conns`` and
``selected_pids`` (the maps held by this agent's pid, read with bpftool).

Verdict: the samples are cut in thirds; for every watched series the max of the last
third must not exceed ``first-third max * (1 + pct) + abs`` (margins in GROWTH below);
the agent must stay alive and spans must keep flowing in the last third.

Writes <out-dir>/soak-<date>.json and .md (default out-dir bench/results) and exits
0 (pass), 1 (growth or failure found) or 2 (could not set up).
Run as root: python3 bench/soak.py [--minutes 10]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from otlp_sink import OtlpSink  # noqa: E402

AGENT = os.environ.get("AUTOTEL_BIN", os.path.join(ROOT, "target/release/autotel"))
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
BPFTOOL = "/usr/sbin/bpftool"
CURL = shutil.which("curl") or "/usr/bin/curl"
CURL_NAME = "autotel-soak-curl"

# series -> (relative margin, absolute margin): last-third max may exceed the
# first-third max by at most first_max * rel + abs.
GROWTH = {
    "rss_mb": (0.10, 10.0),
    "tracked_connections": (0.20, 20.0),
    "instrumented_processes": (0.0, 10.0),
    "conns_entries": (0.20, 20.0),
    "selected_pids_entries": (0.0, 10.0),
}

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return round(int(m.group(1)) / 1024, 1) if m else 0.0


def bpftool_json(*args):
    out = subprocess.run([BPFTOOL, "-j", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"bpftool {' '.join(args)}: {out.stderr}")
    return json.loads(out.stdout or "[]") or []


def agent_map_ids(pid, names):
    """{name: map id} for the maps called ``names`` held by ``pid`` (its fdinfo)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            m = re.search(r"^map_id:\s*(\d+)", open(f"/proc/{pid}/fdinfo/{fd}").read(), re.M)
        except OSError:
            continue
        if m:
            held.add(int(m.group(1)))
    return {m["name"]: m["id"] for m in bpftool_json("map", "show")
            if m["id"] in held and m.get("name") in names}


def map_keys(map_id):
    keys = []
    for e in bpftool_json("map", "dump", "id", str(map_id)):
        k = e.get("key")
        if isinstance(k, list):
            keys.append(int.from_bytes(bytes(int(b, 16) for b in k), "little"))
        elif isinstance(k, int):
            keys.append(k)
    return keys


def conns_occupancy(map_id):
    """(entries, entries whose process (key >> 32) no longer exists)."""
    keys = map_keys(map_id)
    dead = sum(1 for k in keys if not os.path.exists(f"/proc/{k >> 32}"))
    return len(keys), dead


def prom_values(port):
    """{metric name: summed value} from the agent's /metrics (labels summed), plus
    ``events_lost_data``."""
    text = NO_PROXY.open(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    vals = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("autotel_"):
            continue
        for s in fam.samples:
            vals[s.name] = vals.get(s.name, 0.0) + s.value
            if s.name == "autotel_events_lost_total" and s.labels.get("ringbuf") == "data":
                vals["events_lost_data"] = s.value
    return vals


NGINX_CONF = """daemon off; master_process on; worker_processes 1; user root;
pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {tmp}/t; proxy_temp_path {tmp}/t; fastcgi_temp_path {tmp}/t;
  uwsgi_temp_path {tmp}/t; scgi_temp_path {tmp}/t; default_type text/plain;
  server {{ listen 127.0.0.1:{port} backlog=1024; root {tmp}/www; location / {{ }} }}
}}
"""

WRK_LUA = "function delay()\n  return 10\nend\n"


class Churn(threading.Thread):
    """Calls ``fn`` every ``period`` seconds until stopped; counts ok / errors."""

    def __init__(self, fn, period):
        super().__init__(daemon=True)
        self.fn, self.period = fn, period
        self.ok = self.errors = 0
        self.last_error = ""
        self.stop_ev = threading.Event()

    def run(self):
        nxt = time.monotonic()
        while not self.stop_ev.is_set():
            try:
                self.fn()
                self.ok += 1
            except Exception as e:  # counted and reported, never fatal
                self.errors += 1
                self.last_error = repr(e)[:200]
            nxt += self.period
            self.stop_ev.wait(max(0.0, nxt - time.monotonic()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=10, help="seconds between samples")
    ap.add_argument("--agent", default=AGENT)
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak.py needs root (real eBPF)", file=sys.stderr)
        return 2
    for p in (args.agent, NGINX, WRK, BPFTOOL, CURL):
        if not os.access(p, os.X_OK):
            print(f"missing program: {p}", file=sys.stderr)
            return 2

    tmp = tempfile.mkdtemp(prefix="autotel-soak-")
    procs = []
    sink = OtlpSink().start()
    agent = None
    churners = []
    try:
        # --- nginx ---
        port = free_port()
        os.makedirs(f"{tmp}/www")
        os.makedirs(f"{tmp}/t")
        with open(f"{tmp}/www/index.html", "w") as f:
            f.write("<html>" + "x" * 600 + "</html>\n")
        with open(f"{tmp}/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, port=port))
        ngx = subprocess.Popen([NGINX, "-p", tmp, "-e", f"{tmp}/error.log", "-c",
                                f"{tmp}/nginx.conf"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        procs.append(ngx)
        wait_port(port)
        end = time.time() + 10
        while not children_of(ngx.pid) and time.time() < end:
            time.sleep(0.05)
        workers = children_of(ngx.pid)
        if not workers:
            raise RuntimeError("nginx has no worker")
        curl_copy = os.path.join(tmp, CURL_NAME)
        shutil.copy2(CURL, curl_copy)

        # --- agent ---
        prom_port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OTEL_", "AUTOTEL_", "BEYLA_"))}
        env.update({
            "AUTOTEL_PIDS": ",".join(str(p) for p in [ngx.pid] + workers),
            "AUTOTEL_EXECUTABLE_NAME": f"^{CURL_NAME}$",
            "AUTOTEL_PROMETHEUS_PORT": str(prom_port),
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            # Metrics export every 5 s: each third of the run sees the same export work
            # (at the 60 s default a 2-minute run has exports only in its later thirds).
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            # Series of exited processes go 15 s after the exit (default 120 s):
            # with ~5 short-lived processes a second, a 2-minute run then reaches
            # its steady state in the first third, and a leak still shows as growth.
            "AUTOTEL_METRICS_EXITED_TTL_MS": "15000",
            "NO_COLOR": "1",
        })
        agent_err = open(f"{tmp}/agent.stderr", "wb")
        agent = subprocess.Popen([args.agent, "run"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=agent_err,
                                 start_new_session=True)
        end = time.time() + 60
        while "autotel ready" not in open(f"{tmp}/agent.stderr", errors="replace").read():
            if agent.poll() is not None or time.time() > end:
                raise RuntimeError("agent did not start:\n" +
                                   open(f"{tmp}/agent.stderr", errors="replace").read()[-3000:])
            time.sleep(0.1)
        maps = agent_map_ids(agent.pid, {"conns", "selected_pids"})
        if set(maps) != {"conns", "selected_pids"}:
            raise RuntimeError(f"agent maps not found: {maps}")
        print(f"soak: {args.minutes} min, nginx :{port} (pids {[ngx.pid] + workers}), "
              f"agent pid {agent.pid}, maps {maps}", flush=True)

        # --- load ---
        total_s = args.minutes * 60
        with open(f"{tmp}/delay.lua", "w") as f:
            f.write(WRK_LUA)
        wrk_out = open(f"{tmp}/wrk.out", "wb")
        wrk = subprocess.Popen([WRK, "-t1", "-c4", f"-d{int(total_s) + 30}s", "-s",
                                f"{tmp}/delay.lua", f"http://127.0.0.1:{port}/index.html"],
                               stdout=wrk_out, stderr=subprocess.STDOUT,
                               start_new_session=True)
        procs.append(wrk)

        def new_conn():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Connection: close\r\n\r\n".encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(data[:40])

        def short_proc():
            cp = subprocess.run([curl_copy, "-sS", "--noproxy", "*", "-o", "/dev/null",
                                 "-w", "%{http_code}", f"http://127.0.0.1:{port}/index.html"],
                                capture_output=True, text=True, timeout=20)
            if cp.stdout.strip() != "200":
                raise RuntimeError(f"curl: {cp.stdout} {cp.stderr}")

        churners = [Churn(new_conn, 0.05), Churn(short_proc, 0.2)]
        for c in churners:
            c.start()

        # --- sampling ---
        samples = []
        t0 = time.monotonic()
        n_samples = max(3, int(total_s // args.interval))
        for i in range(1, n_samples + 1):
            time.sleep(max(0.0, t0 + i * args.interval - time.monotonic()))
            if agent.poll() is not None:
                samples.append({"t": round(time.monotonic() - t0, 1), "agent_alive": False})
                print(f"agent exited with {agent.returncode}", flush=True)
                break
            pv = prom_values(prom_port)
            s = {
                "t": round(time.monotonic() - t0, 1),
                "agent_alive": True,
                "rss_mb": rss_mb(agent.pid),
                "tracked_connections": pv.get("autotel_tracked_connections", 0),
                "instrumented_processes": pv.get("autotel_instrumented_processes", 0),
                "conns_entries": 0, "conns_entries_of_exited_pids": 0,
                "selected_pids_entries": len(map_keys(maps["selected_pids"])),
                "spans_exported": pv.get("autotel_spans_exported_total", 0),
                "spans_dropped": pv.get("autotel_spans_dropped_total", 0),
                "events_lost_data": pv.get("events_lost_data", 0),
                "connections_evicted": pv.get("autotel_connections_evicted_total", 0),
                "new_conns_ok": churners[0].ok, "new_conn_errors": churners[0].errors,
                "procs_ok": churners[1].ok, "proc_errors": churners[1].errors,
            }
            s["conns_entries"], s["conns_entries_of_exited_pids"] = \
                conns_occupancy(maps["conns"])
            samples.append(s)
            sink.clear()  # the sink keeps every export otherwise; the agent counts spans
            print(" ".join(f"{k}={v}" for k, v in s.items()), flush=True)
    except Exception as e:
        print(f"soak setup failed: {e}", file=sys.stderr)
        return 2
    finally:
        for c in churners:
            c.stop_ev.set()
        for c in churners:
            c.join(30)
        agent_rc = None
        if agent is not None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGINT)
                try:
                    agent_rc = agent.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait(10)
            else:
                agent_rc = agent.returncode
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p.args[0] == WRK else signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        sink.stop()

    # --- verdict ---
    wrk_text = open(f"{tmp}/wrk.out", errors="replace").read()
    agent_log = open(f"{tmp}/agent.stderr", errors="replace").read()
    failures = []
    alive = [s for s in samples if s.get("agent_alive")]
    if len(alive) != len(samples) or agent_rc not in (0, None):
        failures.append(f"agent died or exited badly (exit code {agent_rc})")
    if "panicked at" in agent_log:
        failures.append("agent panicked: " + agent_log[agent_log.find("panicked at"):][:300])
    third = max(1, len(alive) // 3)
    first, last = alive[:third], alive[-third:]
    growth = {}
    for key, (rel, ab) in GROWTH.items():
        if not alive:
            break
        f_max = max(s[key] for s in first)
        l_max = max(s[key] for s in last)
        limit = f_max * (1 + rel) + ab
        growth[key] = {"first_third_max": f_max, "last_third_max": l_max,
                       "limit": round(limit, 1), "ok": l_max <= limit}
        if l_max > limit:
            failures.append(f"{key} grew: last-third max {l_max} > first-third max {f_max} "
                            f"* {1 + rel:.2f} + {ab} = {limit:.1f}")
    if len(alive) >= 2:
        flow = alive[-1]["spans_exported"] - alive[-1 - min(third, len(alive) - 1)]["spans_exported"]
        if flow <= 0:
            failures.append("no span exported in the last third: spans stopped flowing")
    else:
        failures.append(f"only {len(alive)} samples")
    churn = {"new_conns_ok": churners[0].ok if churners else 0,
             "new_conn_errors": churners[0].errors if churners else 0,
             "procs_ok": churners[1].ok if churners else 0,
             "proc_errors": churners[1].errors if churners else 0,
             "last_errors": [c.last_error for c in churners]}
    m = re.search(r"(\d+) requests in", wrk_text)
    wrk_requests = int(m.group(1)) if m else None
    if not wrk_requests:
        failures.append("wrk made no request: " + wrk_text[-500:])
    if churn["new_conn_errors"] or churn["proc_errors"]:
        failures.append(f"churn errors (nginx did not answer): {churn}")

    verdict = "pass" if not failures else "fail"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    os.makedirs(args.out_dir, exist_ok=True)
    result = {"date": stamp, "minutes": args.minutes, "interval_s": args.interval,
              "growth_margins": {k: {"rel": r, "abs": a} for k, (r, a) in GROWTH.items()},
              "samples": samples, "growth": growth, "churn": churn,
              "wrk_requests": wrk_requests, "agent_exit_code": agent_rc,
              "verdict": verdict, "failures": failures}
    jpath = os.path.join(args.out_dir, f"soak-{stamp}.json")
    with open(jpath, "w") as f:
        json.dump(result, f, indent=1)
    cols = ["t", "rss_mb", "tracked_connections", "instrumented_processes", "conns_entries",
            "conns_entries_of_exited_pids", "selected_pids_entries", "spans_exported", "events_lost_data",
            "connections_evicted"]
    md = [f"# autotel soak {stamp}: {args.minutes} min, verdict **{verdict}**", "",
          "Load: wrk 4 keep-alive connections at <= ~400 req/s, ~20 new connections/s, "
          f"~5 short-lived `{CURL_NAME}` processes/s; sample every {args.interval} s.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in samples:
        md.append("| " + " | ".join(str(s.get(c, "-")) for c in cols) + " |")
    md += ["", "Growth check (last-third max <= first-third max * (1 + rel) + abs):", "",
           "| series | first third max | last third max | limit | ok |", "|---|---|---|---|---|"]
    for k, g in growth.items():
        md.append(f"| {k} | {g['first_third_max']} | {g['last_third_max']} | {g['limit']} | "
                  f"{'yes' if g['ok'] else 'NO'} |")
    md += ["", f"wrk requests: {wrk_requests}; churn: {churn}", ""]
    md += [f"- FAIL: {x}" for x in failures] or ["All checks passed."]
    mpath = os.path.join(args.out_dir, f"soak-{stamp}.md")
    with open(mpath, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    print(f"wrote {jpath} {mpath}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if verdict == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
