#!/usr/bin/env python3
"""What TLS capture costs the traced server, by where the OpenSSL probes sit.

nginx over TLS (one worker on CPU 0, Debian's libssl) under oha at a fixed
rate (keep-alive connections, on CPU 1), in alternating rounds of one run:
the agent off, the agent with its probes on the internal functions that
SSL_read/SSL_write wrap (the default where found), and with them on the
exported functions (AUTOTEL_OPENSSL_PROBE=exported). Per mode: the worker's
CPU per request (user+system from /proc), the agent's, BPF run time per
request (kernel.bpf_stats_enabled), latency p50/p99, and spans received by an
OTLP collector against responses counted by oha.

Writes bench/results/tls-<timestamp>.json and .md and prints a last line:
tls_worker_us_per_req off=<x> internal=<y> exported=<z>
Run as root: python3 bench/tls.py [--rate 3000] [--rounds 4] [--seconds 6]
Default run about 2 minutes.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the shared helpers of the main benchmark)

MODES = ("off", "internal", "exported")


def start_tls_nginx(tmp, port):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return bench.start_nginx(tmp, port, tls=(cert, key))


def worker_pid(master):
    end = time.time() + 10
    while time.time() < end:
        out = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True)
        if out.stdout.split():
            return int(out.stdout.split()[0])
        time.sleep(0.1)
    raise RuntimeError("no nginx worker")


def run_oha_tls(port, rate, seconds, conns):
    out = subprocess.run(
        ["taskset", "-c", "1", bench.OHA, "-z", f"{seconds}s", "-q", str(rate), "-c", str(conns),
         "-w", "--insecure", "--latency-correction", "--no-tui", "--output-format", "json",
         f"https://127.0.0.1:{port}/index.html"],
        capture_output=True, text=True, timeout=seconds + 60).stdout
    d = json.loads(out)
    pct = d["latencyPercentiles"]
    return {"requests": sum(d.get("statusCodeDistribution", {}).values()),
            "errors": sum(d.get("errorDistribution", {}).values()),
            "p50_us": (pct.get("p50") or 0) * 1e6, "p99_us": (pct.get("p99") or 0) * 1e6}


def one_round(args, mode, port, worker, tmp, collector):
    agent = None
    if mode != "off":
        agent = bench.start_agent(port, bench.free_port(), tmp, otlp=collector.endpoint,
                                  extra_env={"AUTOTEL_OPENSSL_PROBE": mode,
                                             "AUTOTEL_LOG_LEVEL": "info"})
        err = open(os.path.join(tmp, "agent.err")).read()
        if f'at="{mode}"' not in err:
            raise RuntimeError(f"the agent did not place its probes as {mode}: {err[-2000:]}")
    spans0 = collector.spans()
    w0, a0 = bench.cpu_seconds(worker), bench.cpu_seconds(agent.pid) if agent else 0.0
    progs0 = bench.bpf_prog_stats()
    r = run_oha_tls(port, args.rate, args.seconds, args.connections)
    progs1 = bench.bpf_prog_stats()
    w1, a1 = bench.cpu_seconds(worker), bench.cpu_seconds(agent.pid) if agent else 0.0
    n = max(r["requests"], 1)
    row = dict(mode=mode, **r, worker_us_per_req=(w1 - w0) / n * 1e6,
               agent_us_per_req=(a1 - a0) / n * 1e6)
    if agent:
        cost = bench.per_request_program_cost(progs0, progs1, n)
        row["bpf_us_per_req"] = sum(c["us_per_req"] for c in cost.values())
        row["ssl_program_runs_per_req"] = {k: round(c["runs_per_req"], 2)
                                           for k, c in cost.items() if k.startswith("at_ssl")}
        # oha's connections are made before the count starts: each one's
        # handshake is not a request, and every response is one span.
        row["spans"] = collector.settle(expect=spans0 + r["requests"]) - spans0
        bench.stop_agent(agent)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/tls.py: run as root (BPF)")
    if not os.path.exists(bench.AGENT):
        sys.exit(f"bench/tls.py: build the agent first ({bench.AGENT} missing)")
    if not bench.ensure_oha():
        sys.exit("bench/tls.py: needs oha")
    tmp = tempfile.mkdtemp(prefix="autotel-bench-tls-")
    port = bench.free_port()
    nginx = start_tls_nginx(tmp, port)
    collector = bench.Collector(tmp)
    rows = []
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats_before = f.read().strip()
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        worker = worker_pid(nginx)
        for i in range(args.rounds):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                row = one_round(args, mode, port, worker, tmp, collector)
                row["round"] = i
                rows.append(row)
                print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                                  for k, v in row.items()}), flush=True)
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats_before)
        collector.stop()
        nginx.terminate()
        nginx.wait(10)

    def med(mode, key):
        vals = [r[key] for r in rows if r["mode"] == mode and key in r]
        return statistics.median(vals) if vals else None

    summary = {m: {k: med(m, k) for k in ("worker_us_per_req", "agent_us_per_req",
                                          "bpf_us_per_req", "p50_us", "p99_us")}
               for m in MODES}
    for m in MODES[1:]:
        summary[m]["spans"] = sum(r["spans"] for r in rows if r["mode"] == m)
        summary[m]["requests"] = sum(r["requests"] for r in rows if r["mode"] == m)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = os.path.join(bench.ROOT, "bench/results", f"tls-{stamp}")
    host = bench.host_cpu()
    with open(out + ".json", "w") as f:
        json.dump({"args": vars(args), "host": host, "rounds": rows, "summary": summary}, f,
                  indent=1)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"# TLS capture cost, nginx over TLS at {args.rate} req/s ({stamp})", "",
             f"Host: {host['cpu_model']}. Medians of {args.rounds} alternating rounds of {args.seconds} s.",
             "", "| mode | worker us/req | agent us/req | BPF us/req | p50 us | p99 us | "
             "spans / requests |", "|---|---|---|---|---|---|---|"]
    for m in MODES:
        s = summary[m]
        spans = f"{s['spans']} / {s['requests']}" if m != "off" else "-"
        lines.append(f"| {m} | {fmt(s['worker_us_per_req'])} | {fmt(s['agent_us_per_req'])} | "
                     f"{fmt(s['bpf_us_per_req'])} | {fmt(s['p50_us'])} | {fmt(s['p99_us'])} | "
                     f"{spans} |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {out}.md / .json")
    print("tls_worker_us_per_req " + " ".join(
        f"{m}={summary[m]['worker_us_per_req']:.1f}" for m in MODES))


if __name__ == "__main__":
    main()
