"""Fixtures and helpers for the autotel integration tests.

Everything here drives real programs: the agent binary, python's stdlib http.server,
nginx, curl. Traffic only goes to 127.0.0.1. Every subprocess call has a timeout so a
broken agent or server cannot hang the suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so tests can `import otlp_sink` / `from conftest import ...`

from otlp_sink import OtlpSink  # noqa: E402

REPO = HERE.parents[1]
NGINX = "/usr/sbin/nginx"
CURL = shutil.which("curl") or "/usr/bin/curl"
GO = shutil.which("go") or "/usr/bin/go"
BPFTOOL = "/usr/sbin/bpftool"
READY_TEXT = "autotel ready"
BIG_SIZE = 10 * 1024 * 1024  # 10485760 bytes, the nginx "large body" file

# A urllib opener that never goes through a proxy configured in the environment.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def report(label: str, got, expected) -> None:
    """Print the figure a test checks, e.g. ``server spans 25/25``."""
    print(f"{label} {got}/{expected}", flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Wait until 127.0.0.1:port accepts TCP connections (fail if ``proc`` dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} "
                               f"before listening on {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing accepts connections on 127.0.0.1:{port} after {timeout}s")


def tail(text: str, n: int = 30) -> str:
    return "\n".join(text.splitlines()[-n:])


def children_of(pid: int) -> List[int]:
    """Direct children of ``pid`` (scan of /proc/*/stat)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def curl(url: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run the real curl binary (no proxy, silent). Returns a CompletedProcess that also
    carries the curl process id as ``.pid`` (for checks on the client's spans)."""
    cmd = [CURL, "-sS", "--noproxy", "*", *args, url]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    cp = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    cp.pid = proc.pid
    return cp


def curl_get(url: str, *args: str) -> dict:
    """One curl GET (body discarded). Returns the status code, curl's pid, the HTTP
    version of the request line curl actually sent (parsed from ``-v``) and the
    version of the response status line (both parsed from curl's ``-v`` trace)."""
    cp = curl(url, "-v", "-o", "/dev/null", "-w", "%{http_code}", *args)
    req = re.search(r"^> [A-Z]+ \S+ HTTP/(\d(?:\.\d)?)\r?$", cp.stderr, re.M)
    resp = re.search(r"^< HTTP/(\d(?:\.\d)?) \d{3}", cp.stderr, re.M)
    code = cp.stdout.strip()
    return {"code": int(code) if code.isdigit() else None,
            "request_version": req.group(1) if req else None,
            "response_version": resp.group(1) if resp else None,
            "rc": cp.returncode, "pid": cp.pid, "stderr": cp.stderr}


def urllib_request(url: str, data: Optional[bytes] = None, method: Optional[str] = None,
                   timeout: float = 30) -> tuple:
    """A python urllib request; returns (status, body bytes). HTTP errors are returned."""
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with NO_PROXY_OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def curl_keepalive(url: str, n: int) -> tuple:
    """One curl process fetching ``url`` ``n`` times (curl reuses its connection).

    Returns (list of status codes, total number of TCP connects curl made)."""
    args = ["-w", "%{http_code} %{num_connects}\n"] + ["-o", "/dev/null"] * n + [url] * (n - 1)
    cp = curl(url, *args, timeout=60)
    rows = [l.split() for l in cp.stdout.splitlines() if l.strip()]
    return [int(r[0]) for r in rows], sum(int(r[1]) for r in rows)


def curl_head_204_get(port: int) -> tuple:
    """One curl process on one connection: HEAD /index.html, GET /status204, GET /p1.txt.

    Uses ``--next`` so each URL has its own options while curl keeps its connection.
    Returns (status codes, total connects, curl pid)."""
    base = f"http://127.0.0.1:{port}"
    part = ["-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"]
    cmd = [CURL, *part, "-I", f"{base}/index.html",
           "--next", *part, f"{base}/status204",
           "--next", *part, f"{base}/p1.txt"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    rows = [l.split() for l in out.splitlines() if l.strip()]
    return [int(r[0]) for r in rows], sum(int(r[1]) for r in rows), proc.pid


def pipeline_get(port: int, paths: List[str], timeout: float = 15) -> List[tuple]:
    """Send GETs for ``paths`` pipelined in ONE ``sendall`` on one raw TCP connection
    (the last one with ``Connection: close``) and read every response until EOF.

    Returns [(status code, body bytes), ...] in the order received."""
    reqs = b""
    for i, p in enumerate(paths):
        close = "Connection: close\r\n" if i == len(paths) - 1 else ""
        reqs += f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(reqs)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    # Parse the concatenated responses (Content-Length framing, as nginx sends).
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"truncated response stream: {data[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        length = 0
        for l in lines[1:]:
            k, _, v = l.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        out.append((code, rest[:length]))
        data = rest[length:]
    return out


def raw_exchange(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Connect, send ``payload``, half-close, and return whatever the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return data


def proc_exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a helper process (server) and make sure it and its group are gone."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers of a server started in its own session
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


# --------------------------------------------------------------------------------------
# Basic fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture
def require_root():
    """Agent tests need real BPF: without root they must fail, not skip."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (real eBPF): run it as root, e.g. "
                    "`sudo python3 -m pytest tests/integration -v`", pytrace=False)


@pytest.fixture(scope="session")
def agent_bin() -> str:
    path = os.environ.get("AUTOTEL_BIN") or str(REPO / "target" / "release" / "autotel")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"agent binary not found at {path}: run `cargo build --release` "
                    f"in {REPO} (or set AUTOTEL_BIN)", pytrace=False)
    return path


@pytest.fixture
def sink():
    """A fresh OTLP receiver (gRPC + HTTP) on free ports, for one test."""
    s = OtlpSink().start()
    yield s
    s.stop()


# --------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------


class Agent:
    """A running ``autotel run`` process with its logs captured to files."""

    def __init__(self, proc: subprocess.Popen, workdir: Path, prom_port: int, env: dict):
        self.proc = proc
        self.workdir = workdir
        self.prom_port = prom_port
        self.env = env
        self.stdout_path = workdir / "agent.stdout"
        self.stderr_path = workdir / "agent.stderr"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def logs_tail(self, n: int = 30) -> str:
        return (f"--- agent stdout (last {n} lines) ---\n{tail(self.stdout_text(), n)}\n"
                f"--- agent stderr (last {n} lines) ---\n{tail(self.stderr_text(), n)}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics_text(self, openmetrics: bool = False) -> str:
        """/metrics as a plain client gets it (classic text format), or as Prometheus
        asks for it (``Accept: application/openmetrics-text``) with ``openmetrics``."""
        url = f"http://127.0.0.1:{self.prom_port}/metrics"
        req = urllib.request.Request(url)
        if openmetrics:
            req.add_header("Accept", "application/openmetrics-text; version=1.0.0")
        with NO_PROXY_OPENER.open(req, timeout=10) as r:
            return r.read().decode("utf-8", errors="replace")

    def prom_value(self, name: str, labels: Optional[Dict[str, str]] = None) -> Optional[float]:
        """Value of sample ``name`` whose labels include ``labels`` in /metrics.

        Parsed with prometheus_client's parsers (classic text or OpenMetrics). If several series match the label
        subset, their values are summed; None when no series matches.
        """
        labels = labels or {}
        text = self.metrics_text()
        # The endpoint may serve the classic text format or OpenMetrics (ends in # EOF).
        parse = parse_openmetrics if text.rstrip().endswith("# EOF") else parse_prometheus_text
        found = []
        for fam in parse(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    found.append(s.value)
        return sum(found) if found else None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> Optional[int]:
        """Send ``sig`` and wait up to ``timeout`` s. Returns the exit code, or None if
        the agent did not exit in time (it is then killed with SIGKILL)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None


@pytest.fixture
def start_agent(require_root, agent_bin, sink, tmp_path):
    """Factory: ``start_agent(env, config_yaml=None, protocol='grpc')`` -> Agent.

    * ``env``: extra variables; a value of None removes the variable.
    * ``protocol``: 'grpc' (endpoint = sink gRPC port), 'http/protobuf' (sink HTTP
      port) or None (no OTLP endpoint at all: the agent falls back to stdout).
    * ``config_yaml``: written to a file and passed as ``run --config FILE``.
    * ``wait_ready``: wait for ``autotel ready`` on stderr (60 s) or fail with logs.

    Any OTEL_*/AUTOTEL_*/BEYLA_* variable of the calling environment is dropped so the
    test fully controls the agent's settings. Teardown: SIGINT, 10 s to exit (else
    SIGKILL and the test fails), and the tail of its logs is printed.
    """
    agents: List[Agent] = []

    def _start(env: Optional[dict] = None, config_yaml: Optional[str] = None,
               protocol: Optional[str] = "grpc", wait_ready: bool = True,
               ready_timeout: float = 60.0) -> Agent:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        prom_port = free_port()
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("OTEL_", "AUTOTEL_", "BEYLA_"))}
        full_env.update({
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "AUTOTEL_PROMETHEUS_PORT": str(prom_port),
            "AUTOTEL_LOG_LEVEL": "info",
            "RUST_BACKTRACE": "1",
            "NO_COLOR": "1",  # plain log files (tracing-subscriber honours NO_COLOR)
        })
        if protocol == "grpc":
            full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.grpc_endpoint
            full_env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
        elif protocol == "http/protobuf":
            full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.http_endpoint
            full_env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        elif protocol is not None:
            raise ValueError(f"unknown protocol {protocol!r}")
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = str(v)
        if "AUTOTEL_PROMETHEUS_PORT" in full_env and full_env["AUTOTEL_PROMETHEUS_PORT"] != "0":
            prom_port = int(full_env["AUTOTEL_PROMETHEUS_PORT"])

        cmd = [agent_bin, "run"]
        if config_yaml is not None:
            cfg = workdir / "autotel.yaml"
            cfg.write_text(config_yaml)
            cmd += ["--config", str(cfg)]

        out = open(workdir / "agent.stdout", "wb")
        err = open(workdir / "agent.stderr", "wb")
        try:
            proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        finally:
            out.close()
            err.close()
        agent = Agent(proc, workdir, prom_port, full_env)
        agents.append(agent)
        shown = {k: v for k, v in full_env.items() if k.startswith(("OTEL_", "AUTOTEL_"))}
        print(f"agent pid {proc.pid}: {' '.join(cmd)}  env {shown}", flush=True)

        if wait_ready:
            deadline = time.monotonic() + ready_timeout
            while READY_TEXT not in agent.stderr_text():
                if proc.poll() is not None:
                    pytest.fail(f"agent exited with {proc.returncode} before '{READY_TEXT}'\n"
                                f"{agent.logs_tail(60)}", pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail(f"agent not ready after {ready_timeout}s (no '{READY_TEXT}' "
                                f"on stderr)\n{agent.logs_tail(60)}", pytrace=False)
                time.sleep(0.05)
        return agent

    yield _start

    problems = []
    for a in agents:
        was_running = a.alive()
        rc = a.stop(signal.SIGINT, 10.0)
        print(f"agent pid {a.pid} exit code {rc}\n{a.logs_tail(20)}", flush=True)
        if was_running and rc is None:
            problems.append(f"agent pid {a.pid} did not exit within 10 s of SIGINT "
                            f"(killed with SIGKILL)")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# --------------------------------------------------------------------------------------
# Servers: python http.server (stdlib) and nginx
# --------------------------------------------------------------------------------------


class PyHttpServer:
    """``python3 -m http.server`` serving a docroot of small files."""

    def __init__(self, proc: subprocess.Popen, port: int, docroot: Path, files: List[str]):
        self.proc, self.port, self.docroot, self.files = proc, port, docroot, files

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def make_docroot(d: Path, n: int = 20) -> List[str]:
    """Create ``n`` small distinct files f00.txt.. plus index.html; return their paths."""
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        name = f"f{i:02d}.txt"
        (d / name).write_text(f"file {i}\n" * (i + 1))
        files.append("/" + name)
    (d / "index.html").write_text("<html><body>autotel test</body></html>\n")
    return files


@pytest.fixture
def http_server(tmp_path):
    """Factory: ``http_server(protocol='HTTP/1.0', port=None, wait=True)``.

    Starts ``python3 -m http.server PORT --bind 127.0.0.1 --directory DOCROOT``
    (``--protocol HTTP/1.1`` gives a keep-alive server; python 3.11 supports it).
    """
    servers: List[PyHttpServer] = []

    def _start(protocol: str = "HTTP/1.0", port: Optional[int] = None,
               wait: bool = True) -> PyHttpServer:
        port = port or free_port()
        docroot = tmp_path / f"docroot{len(servers)}"
        files = make_docroot(docroot)
        cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
               "--directory", str(docroot)]
        if protocol != "HTTP/1.0":
            cmd += ["--protocol", protocol]
        log = open(tmp_path / f"http_server{len(servers)}.log", "wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        log.close()
        srv = PyHttpServer(proc, port, docroot, files)
        servers.append(srv)
        if wait:
            wait_port(port, 15, proc)
        return srv

    yield _start
    for s in servers:
        stop_process(s.proc, signal.SIGTERM)


NGINX_CONF = """\
user root;
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    types {{
        text/html html;
        text/plain txt;
    }}
    default_type application/octet-stream;

    sendfile on;
    keepalive_timeout 65;
    keepalive_requests 10000;

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {static};

        location / {{
        }}
        # Same files with sendfile off: the body goes through write/writev.
        location /nosendfile/ {{
            alias {static}/;
            sendfile off;
        }}
        location = /status204 {{
            return 204;
        }}
        location = /err {{
            return 500;
        }}
        location = /upload {{
            client_max_body_size 20m;
            return 200 "ok\\n";
        }}
{extra_locations}
    }}
}}
"""


class Nginx:
    """An nginx master (+1 worker) on a free port with a generated config."""

    def __init__(self, proc: subprocess.Popen, port: int, prefix: Path, static: Path):
        self.proc, self.port, self.prefix, self.static = proc, port, prefix, static

    @property
    def master_pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> List[int]:
        return children_of(self.proc.pid)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def error_log(self) -> str:
        p = self.prefix / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture
def nginx(tmp_path):
    """Factory: ``nginx()`` -> Nginx serving index.html, small.txt, p0.txt..p9.txt,
    big.bin (10 MB), /nosendfile/<same files>, /status204, /err (500), /upload."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"{NGINX} not found: apt-get install nginx-light", pytrace=False)
    started: List[Nginx] = []

    def _start(port: Optional[int] = None, extra_locations: str = "") -> Nginx:
        """``extra_locations``: nginx directives added inside the server block, e.g.
        ``location /c/ { return 200 "ok"; }`` (written as is, braces single)."""
        port = port or free_port()
        prefix = tmp_path / f"nginx{len(started)}"
        static = prefix / "static"
        (prefix / "tmp").mkdir(parents=True)
        static.mkdir()
        (static / "index.html").write_text("<html><body>nginx autotel test</body></html>\n")
        (static / "small.txt").write_text("small file\n")
        for i in range(10):
            (static / f"p{i}.txt").write_text(f"pipelined file {i}\n")
        chunk = bytes(range(256)) * 4096  # 1 MiB, deterministic
        with open(static / "big.bin", "wb") as f:
            for _ in range(BIG_SIZE // len(chunk)):
                f.write(chunk)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, static=static,
                                             extra_locations=extra_locations))
        log = open(prefix / "stderr.log", "wb")
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                                 "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        log.close()
        ngx = Nginx(proc, port, prefix, static)
        started.append(ngx)
        try:
            wait_port(port, 15, proc)
            deadline = time.monotonic() + 10
            while not ngx.worker_pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception as e:
            pytest.fail(f"nginx did not start: {e}\n{ngx.error_log()}", pytrace=False)
        if not ngx.worker_pids():
            pytest.fail("nginx started without a worker process", pytrace=False)
        return ngx

    yield _start
    for n in started:
        stop_process(n.proc, signal.SIGTERM)  # fast shutdown of master and workers


def build_go_peer(tmp_path: Path, stripped: bool, peer: str = "go_tls") -> Path:
    """peers/<peer>/main.go built by the system's Go, under a unique name (the
    executable-name selector then matches nothing else on the host); stripped:
    without symbol table and DWARF (``-ldflags=-s -w``), as many images ship."""
    assert os.path.exists(GO), "go not installed (scripts/setup.sh installs golang-go)"
    exe = tmp_path / f"{peer.replace('_', '')}-{uuid.uuid4().hex[:8]}"
    # GOPATH: Debian's Go packages (golang-google-grpc-dev and its dependencies).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTEL_"))}
    env.update(GO111MODULE="off", GOCACHE=str(tmp_path / "gocache"),
               GOPATH="/usr/share/gocode", HOME=str(tmp_path))
    flags = ["-ldflags=-s -w"] if stripped else []
    cp = subprocess.run([GO, "build", *flags, "-o", str(exe),
                         str(HERE / "peers" / peer / "main.go")],
                        env=env, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    symtab = subprocess.run(["readelf", "-S", str(exe)], capture_output=True,
                            text=True).stdout
    assert (".symtab" in symtab) != stripped, symtab
    return exe


def bpftool_json(*args: str) -> list:
    out = subprocess.run([BPFTOOL, "-j", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"bpftool {' '.join(args)}: {out.stderr}"
    return json.loads(out.stdout or "[]") or []


def held_map_ids(pid: int) -> set:
    """BPF map ids held by ``pid``'s file descriptors (/proc/PID/fdinfo ``map_id:``)."""
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                m = re.search(r"^map_id:\s*(\d+)", f.read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return ids


def agent_map_id(agent_pid: int, name: str) -> int:
    """The id of the map called ``name`` held by this agent (exactly one)."""
    ids = held_map_ids(agent_pid)
    found = [m["id"] for m in bpftool_json("map", "show")
             if m["id"] in ids and m.get("name") == name]
    assert len(found) == 1, f"agent {agent_pid}: maps named {name!r} held: {found}"
    return found[0]
