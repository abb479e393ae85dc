"""`autotel top`: the live terminal view, driven in a real terminal (tmux).

The real agent binary runs ``autotel top`` inside a detached tmux session (its own
tmux server socket, 200x50); nginx serves two routes, ``/small.txt`` (200) and
``/err`` (500), under a fixed-rate load from this process (keep-alive
http.client, known request counts and rates). ``tmux capture-pane`` gives the
screen, which must show both routes with rates close to the offered ones and the
right error rates; the Slow & failed tab must list the failing route and open its
trace; a wrk burst checks that the view keeps count at high rate. ``q`` (and in a
second test SIGTERM) must end the agent within 2 s, leave the terminal on the main
screen and leave none of the agent's BPF programs or links loaded.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from conftest import READY_TEXT, report, tail

TMUX = "/usr/bin/tmux"
BPFTOOL = "/usr/sbin/bpftool"
WRK = "/usr/bin/wrk"


def bpf_fd_ids(pid: int) -> Tuple[Set[int], Set[int]]:
    """(BPF program ids, BPF link ids) held by ``pid``'s file descriptors (as in
    test_reliability.py: exact ownership, whatever else runs on the host)."""
    progs, links = set(), set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return progs, links
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^link_id:\s*(\d+)", text, re.M)
        if m:
            links.add(int(m.group(1)))
        m = re.search(r"^prog_id:\s*(\d+)", text, re.M)
        if m:
            progs.add(int(m.group(1)))
    return progs, links


def live_bpf() -> Tuple[Set[int], Set[int]]:
    """Ids of every BPF program and link loaded on the host (bpftool)."""
    out = []
    for what in ("prog", "link"):
        r = subprocess.run([BPFTOOL, "-j", what, "show"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        out.append({p["id"] for p in (json.loads(r.stdout or "[]") or [])})
    return out[0], out[1]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


class TopSession:
    """``autotel top`` in a detached tmux session on a private tmux server."""

    def __init__(self, agent_bin: str, workdir: Path, env: Dict[str, str]):
        self.sock = f"autotel-top-test-{os.getpid()}-{workdir.name}"
        self.workdir = workdir
        self.log = workdir / "autotel-top.log"
        self.agent_bin = agent_bin
        self.env = env
        self.pid: Optional[int] = None

    def tmux(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([TMUX, "-L", self.sock, *args], capture_output=True, text=True,
                           timeout=10, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: rc {r.returncode}: {r.stderr}")
        return r.stdout

    def start(self, ready_timeout: float = 60.0) -> None:
        # The log file goes to $TMPDIR/autotel-top.log: a per-test TMPDIR keeps
        # concurrent runs apart.
        envs = []
        for k, v in {**self.env, "TMPDIR": str(self.workdir), "TERM": "xterm-256color"}.items():
            envs += ["-e", f"{k}={v}"]
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("OTEL_", "AUTOTEL_", "BEYLA_", "TMUX"))}
        subprocess.run([TMUX, "-L", self.sock, "-f", "/dev/null", "new-session", "-d",
                        "-x", "200", "-y", "50", "-s", "top", *envs,
                        f"exec {self.agent_bin} top"],
                       check=True, timeout=10, env=clean, stdin=subprocess.DEVNULL)
        # Keep the pane (and what the agent left on it) after the agent exits.
        self.tmux("set-option", "-g", "remain-on-exit", "on")
        self.pid = int(self.tmux("display-message", "-p", "-t", "top", "#{pane_pid}").strip())
        print(f"autotel top pid {self.pid} in tmux -L {self.sock}; env {self.env}", flush=True)
        deadline = time.monotonic() + ready_timeout
        while READY_TEXT not in self.log_text():
            if not pid_alive(self.pid):
                pytest.fail(f"autotel top exited before '{READY_TEXT}'\n{self.log_tail()}\n"
                            f"--- screen ---\n{self.screen()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"autotel top not ready after {ready_timeout}s\n{self.log_tail()}",
                            pytrace=False)
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return f"--- {self.log} (last {n} lines) ---\n{tail(self.log_text(), n)}"

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top", check=False)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def alternate_on(self) -> str:
        return self.tmux("display-message", "-p", "-t", "top", "#{alternate_on}",
                         check=False).strip()

    def wait_screen(self, pred, timeout: float = 5.0) -> str:
        """The screen once ``pred(screen)`` holds (or the last one after ``timeout``).
        It must also read the same 40 ms later: a capture taken while a frame is being
        written shows half-drawn rows (a CI run caught a row cut after "GET")."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if time.monotonic() > deadline:
                return s
            if pred(s):
                time.sleep(0.04)
                if self.screen() == s:
                    return s
                continue
            time.sleep(0.1)

    def wait_exit(self, timeout: float) -> Optional[float]:
        """Seconds until the agent process was gone, or None after ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not pid_alive(self.pid):
                return time.monotonic() - t0
            time.sleep(0.01)
        return None

    def close(self) -> None:
        if self.pid is not None and pid_alive(self.pid):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.tmux("kill-server", check=False)


@pytest.fixture
def top_session(require_root, agent_bin, tmp_path):
    """Factory: ``top_session(env)`` -> a started TopSession (ready). Teardown kills
    what is left (agent by pid, then this test's own tmux server)."""
    sessions: List[TopSession] = []

    def _start(env: Dict[str, str]) -> TopSession:
        wd = tmp_path / f"top{len(sessions)}"
        wd.mkdir()
        full = {"AUTOTEL_PROMETHEUS_PORT": "0", "AUTOTEL_LOG_LEVEL": "info",
                "RUST_BACKTRACE": "1", **env}
        s = TopSession(agent_bin, wd, full)
        sessions.append(s)
        s.start()
        return s

    yield _start
    for s in sessions:
        print(s.log_tail(15), flush=True)
        s.close()


def fixed_rate_load(port: int, path: str, rate: float, seconds: float,
                    results: Dict[str, list]) -> threading.Thread:
    """A thread sending GET ``path`` at ``rate``/s for ``seconds`` on one keep-alive
    connection; status codes are appended to ``results[path]``."""
    codes = results.setdefault(path, [])

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        t0 = time.monotonic()
        i = 0
        while True:
            due = t0 + i / rate
            if due - t0 >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            codes.append(r.status)
            i += 1
        conn.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


ROW_RE = r"{name}\s+([\d.]+)\s+([\d.]+%|-)\s+(\S+)\s+(\S+)\s+(\d+)"


def route_row(screen: str, name: str) -> Optional[dict]:
    """The figures of the Services row ``name`` (REQ/S, ERR%, P50, P99, TOTAL)."""
    m = re.search(ROW_RE.format(name=re.escape(name)), screen)
    if not m:
        return None
    return {"rate": float(m.group(1)), "err": m.group(2), "p50": m.group(3),
            "p99": m.group(4), "total": int(m.group(5))}


def quit_and_check(s: TopSession, how: str) -> None:
    """Stop the agent with ``how`` ('q' or 'SIGTERM'); it must be gone within 2 s, with
    its BPF programs/links unloaded and the terminal back on the main screen."""
    progs, links = bpf_fd_ids(s.pid)
    report("BPF programs held by the agent (>0)", len(progs), len(progs))
    assert progs, f"agent holds no BPF programs?\n{s.log_tail()}"
    assert s.alternate_on() == "1", "the view should be on the alternate screen"
    if how == "q":
        s.keys("q")
    else:
        os.kill(s.pid, signal.SIGTERM)
    took = s.wait_exit(2.0)
    report(f"agent exited after {how} (s, limit 2)", None if took is None else round(took, 2),
           2.0)
    assert took is not None, f"agent still running 2 s after {how}\n{s.log_tail()}"
    live_progs, live_links = live_bpf()
    report("agent BPF programs still loaded", len(progs & live_progs), 0)
    report("agent BPF links still loaded", len(links & live_links), 0)
    assert not progs & live_progs, f"programs left: {sorted(progs & live_progs)}"
    assert not links & live_links, f"links left: {sorted(links & live_links)}"
    alt = s.alternate_on()
    report("alternate screen after exit", alt, "0")
    assert alt == "0", f"terminal left on the alternate screen\n{s.screen()}"
    log = s.log_text()
    assert "panicked" not in log, s.log_tail(40)
    assert "shutting down" in log, s.log_tail(40)


def test_top_routes_errors_slow_tab_and_quit(top_session, nginx):
    ngx = nginx()
    s = top_session({"AUTOTEL_OPEN_PORTS": str(ngx.port)})

    # 1. Fixed-rate load on two routes: 40/s on /small.txt, 20/s on /err (500).
    results: Dict[str, list] = {}
    load_s = 12.0
    threads = [fixed_rate_load(ngx.port, "/small.txt", 40, load_s, results),
               fixed_rate_load(ngx.port, "/err", 20, load_s, results)]
    time.sleep(load_s - 1.5)  # window full of steady load, load still running
    screen = s.wait_screen(lambda x: route_row(x, "GET /small.txt") and route_row(x, "GET /err"))
    for th in threads:
        th.join(30)
    print(f"--- screen (Services tab) ---\n{screen}", flush=True)
    assert set(results["/small.txt"]) == {200} and set(results["/err"]) == {500}, \
        {k: sorted(set(v)) for k, v in results.items()}
    ok, err = route_row(screen, "GET /small.txt"), route_row(screen, "GET /err")
    assert ok and err, f"both routes should be listed\n{screen}"
    report("GET /small.txt req/s (offered 40, ±35%)", ok["rate"], 40)
    report("GET /err req/s (offered 20, ±35%)", err["rate"], 20)
    report("GET /small.txt error rate", ok["err"], "0.0%")
    report("GET /err error rate", err["err"], "100.0%")
    assert 26 <= ok["rate"] <= 54, ok
    assert 13 <= err["rate"] <= 27, err
    assert ok["err"] == "0.0%", ok
    assert err["err"] == "100.0%", err
    assert ok["p99"] not in ("-", "") and err["p50"] not in ("-", ""), (ok, err)
    assert "q  quit" in screen and "Tab/1-4" in screen and "sort: rate" in screen, screen

    # Totals once the load is over: every request counted once.
    sent_ok, sent_err = len(results["/small.txt"]), len(results["/err"])
    screen = s.wait_screen(lambda x: (route_row(x, "GET /small.txt") or {}).get("total") == sent_ok
                           and (route_row(x, "GET /err") or {}).get("total") == sent_err)
    ok, err = route_row(screen, "GET /small.txt"), route_row(screen, "GET /err")
    report("GET /small.txt total", ok["total"], sent_ok)
    report("GET /err total", err["total"], sent_err)
    assert ok["total"] == sent_ok and err["total"] == sent_err, screen

    # 2. Sorting: `s` cycles to errors (the failing route first), `r` reverses.
    s.keys("s")
    screen = s.wait_screen(lambda x: "sort: errors" in x)
    assert "sort: errors" in screen, screen
    assert screen.index("GET /err") < screen.index("GET /small.txt"), screen
    s.keys("r")
    screen = s.wait_screen(lambda x: "errors (rev)" in x)
    assert screen.index("GET /small.txt") < screen.index("GET /err"), screen
    report("sort errors / reversed", "ok", "ok")

    # 3. Slow & failed tab lists the failing route; Enter opens its trace.
    s.keys("2")
    screen = s.wait_screen(lambda x: "FAILED" in x)
    print(f"--- screen (Slow & failed tab) ---\n{screen}", flush=True)
    failed = [l for l in screen.splitlines() if "FAILED" in l]
    report("failed rows shown for GET /err (>0)", len([l for l in failed if "GET /err" in l]),
           len(failed))
    assert failed and all("GET /err" in l and "500" in l for l in failed), screen
    assert "GET /small.txt" not in "\n".join(failed), screen
    s.keys("Enter")
    screen = s.wait_screen(lambda x: "attributes" in x and "spans seen" in x)
    print(f"--- screen (trace) ---\n{screen}", flush=True)
    assert "spans seen" in screen and "http.response.status_code" in screen, screen
    assert re.search(r"url\.path\s+/err", screen), screen
    s.keys("Escape")
    screen = s.wait_screen(lambda x: "show trace" in x)
    assert "FAILED" in screen, screen
    for tab in ("3", "4", "Tab"):
        s.keys(tab)
    screen = s.wait_screen(lambda x: "ROUTE / SPAN" in x)
    assert "ROUTE / SPAN" in screen, screen

    # 4. Keeping up: a wrk burst; the view's total must match what wrk sent.
    before = route_row(s.screen(), "GET /small.txt")["total"]
    r = subprocess.run([WRK, "-t2", "-c8", "-d5s", f"http://127.0.0.1:{ngx.port}/small.txt"],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"(\d+) requests in", r.stdout)
    assert m, r.stdout + r.stderr
    sent = int(m.group(1))
    screen = s.wait_screen(
        lambda x: (route_row(x, "GET /small.txt") or {"total": 0})["total"] >= before + sent,
        timeout=5)
    got = route_row(screen, "GET /small.txt")["total"] - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    report(f"wrk burst counted ({rps.group(1) if rps else '?'} req/s)", got, sent)
    assert got >= 0.99 * sent, f"{got}/{sent}\n{screen}\n{s.log_tail()}"
    assert pid_alive(s.pid)

    # 5. q quits: agent gone within 2 s, BPF detached, terminal restored.
    quit_and_check(s, "q")


def test_top_stops_on_sigterm(top_session, nginx):
    ngx = nginx()
    s = top_session({"AUTOTEL_OPEN_PORTS": str(ngx.port)})
    results: Dict[str, list] = {}
    fixed_rate_load(ngx.port, "/small.txt", 50, 2.0, results).join(30)
    sent = len(results["/small.txt"])
    screen = s.wait_screen(
        lambda x: (route_row(x, "GET /small.txt") or {"total": -1})["total"] == sent)
    row = route_row(screen, "GET /small.txt")
    report("GET /small.txt total before SIGTERM", row and row["total"], len(results["/small.txt"]))
    assert row and row["total"] == len(results["/small.txt"]), screen
    quit_and_check(s, "SIGTERM")
