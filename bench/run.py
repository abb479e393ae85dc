#!/usr/bin/env python3
"""Overhead benchmark: nginx under wrk with the agent off and on, in
alternating rounds of one run (these machines are noisy: only ratios from
the same run mean anything).

Pinning: nginx (one worker) on CPU 0, wrk on CPU 1, the agent free to use
both, as on a busy 2-core node. Reports saturated throughput and latency
p50/p99 per round, agent CPU per traced request (user+system from
/proc/<pid>/stat), BPF run time per request (kernel.bpf_stats_enabled),
peak RSS, lost events and spans exported / requests sent.

Writes bench/results/<timestamp>.json and .md and prints a last line:
throughput_ratio=<on/off> cpu_us_per_req=<x> rss_mb=<y> lost=<n>
Run as root: python3 bench/run.py [--rounds 3] [--seconds 8]
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
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.environ.get("AUTOTEL_BIN", os.path.join(ROOT, "target/release/autotel"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def start_nginx(tmp, port):
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("<html>" + "x" * 600 + "</html>\n")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {tmp};
  proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; root {www}; }} }}
""")
    p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def parse_latency(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v = float(m.group(1))
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def run_wrk(port, seconds, conns):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
         f"http://127.0.0.1:{port}/index.html"],
        capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "requests": total,
            "p50_us": parse_latency(out, 50), "p99_us": parse_latency(out, 99)}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_peak_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bpf_run_ns():
    """Sum of run_time_ns over our programs (names start with at_)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    try:
        progs = json.loads(out or "[]")
    except json.JSONDecodeError:
        return 0
    return sum(p.get("run_time_ns", 0) for p in progs if p.get("name", "").startswith("at_"))


def prom(port, name, labels=""):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_agent(port, prom_port, tmp):
    env = dict(os.environ, AUTOTEL_OPEN_PORTS=str(port), AUTOTEL_PROMETHEUS_PORT=str(prom_port),
               AUTOTEL_LOG_LEVEL="warn", NO_COLOR="1")
    # Spans go to stdout of a file: the full pipeline runs (parse, spans,
    # metrics, encoding) without a collector in the measurement.
    out = open(os.path.join(tmp, "agent.out"), "w")
    err = open(os.path.join(tmp, "agent.err"), "w")
    p = subprocess.Popen([AGENT, "run"], env=env, stdout=out, stderr=err)
    end = time.time() + 60
    while time.time() < end:
        if "autotel ready" in open(os.path.join(tmp, "agent.err")).read():
            return p
        if p.poll() is not None:
            raise RuntimeError("agent exited: " + open(os.path.join(tmp, "agent.err")).read())
        time.sleep(0.1)
    raise RuntimeError("agent not ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (BPF)")
    tmp = tempfile.mkdtemp(prefix="autotel-bench-")
    port, prom_port = free_port(), free_port()
    with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
        f.write("1")
    nginx = start_nginx(tmp, port)
    rounds = []
    try:
        run_wrk(port, 2, args.connections)  # warm-up
        for r in range(args.rounds):
            off = run_wrk(port, args.seconds, args.connections)
            agent = start_agent(port, prom_port, tmp)
            try:
                cpu0, bpf0 = cpu_seconds(agent.pid), bpf_run_ns()
                on = run_wrk(port, args.seconds, args.connections)
                time.sleep(2.5)  # let the agent drain and publish
                cpu1, bpf1 = cpu_seconds(agent.pid), bpf_run_ns()
                lost = prom(prom_port, "autotel_events_lost_total")
                spans = prom(prom_port, "autotel_spans_created_total")
                rss = rss_peak_mb(agent.pid)
            finally:
                agent.send_signal(signal.SIGINT)
                agent.wait(15)
            rounds.append({"round": r, "off": off, "on": on,
                           "agent_cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(on["requests"], 1),
                           "bpf_us_per_req": (bpf1 - bpf0) / 1e3 / max(on["requests"], 1),
                           "rss_mb": rss, "lost": lost, "spans": spans, "requests": on["requests"]})
            print(f"round {r}: off {off['rps']:.0f} rps p99 {off['p99_us']}us | on {on['rps']:.0f} rps "
                  f"p99 {on['p99_us']}us | agent {rounds[-1]['agent_cpu_us_per_req']:.2f} us/req "
                  f"bpf {rounds[-1]['bpf_us_per_req']:.2f} us/req spans {spans:.0f}/{on['requests']} lost {lost:.0f}",
                  flush=True)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("0")
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(xs):
        return sum(xs) / len(xs)

    ratio = mean([r["on"]["rps"] for r in rounds]) / mean([r["off"]["rps"] for r in rounds])
    summary = {
        "throughput_ratio": ratio,
        "p99_off_us": mean([r["off"]["p99_us"] for r in rounds]),
        "p99_on_us": mean([r["on"]["p99_us"] for r in rounds]),
        "cpu_us_per_req": mean([r["agent_cpu_us_per_req"] for r in rounds]),
        "bpf_us_per_req": mean([r["bpf_us_per_req"] for r in rounds]),
        "rss_mb": max(r["rss_mb"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "spans_per_request": sum(r["spans"] for r in rounds) / max(sum(r["requests"] for r in rounds), 1),
    }
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    with open(os.path.join(ROOT, f"bench/results/{stamp}.json"), "w") as f:
        json.dump({"summary": summary, "rounds": rounds}, f, indent=2)
    lines = ["| round | off rps | on rps | off p50/p99 us | on p50/p99 us | agent us/req | bpf us/req | lost |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['off']['rps']:.0f} | {r['on']['rps']:.0f} | "
                     f"{r['off']['p50_us']:.0f}/{r['off']['p99_us']:.0f} | {r['on']['p50_us']:.0f}/{r['on']['p99_us']:.0f} | "
                     f"{r['agent_cpu_us_per_req']:.2f} | {r['bpf_us_per_req']:.2f} | {r['lost']:.0f} |")
    with open(os.path.join(ROOT, f"bench/results/{stamp}.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n" + json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    print(f"throughput_ratio={ratio:.3f} cpu_us_per_req={summary['cpu_us_per_req']:.2f} "
          f"rss_mb={summary['rss_mb']:.1f} lost={summary['lost']:.0f}")


if __name__ == "__main__":
    main()
