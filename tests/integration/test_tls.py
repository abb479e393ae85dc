"""TLS integration tests: the agent reading the plaintext of real OpenSSL, GnuTLS and
Go programs.

The agent places uprobes on OpenSSL's SSL_read/SSL_write(_ex) or the internal functions
they wrap (see crates/protocols/src/openssl_binary.rs), per library file (the system
libssl.so.3 at start, files mapped by selected processes, and selected executables with
OpenSSL linked in); on GnuTLS's record calls (libgnutls.so.30); and on Go's
crypto/tls.(*Conn).Read/Write in selected Go executables (see
crates/protocols/src/go_binary.rs). The plaintext feeds the ordinary
HTTP parser; spans say ``https`` and carry ``tls.protocol.*``; the first span of a
connection carries ``autotel.tls.handshake.duration`` and each handshake is an
observation of the ``autotel.tls.handshake.duration`` histogram. Ciphertext is never
parsed.

Peers are programs we did not write: nginx (``listen ... ssl``), curl, python's
``ssl``/``http.server``/``urllib``/``http.client`` (peers/tls_https_*.py are thin
wrappers), Node.js ``https`` (peers/tls_node_client.js), Go's net/http and gRPC-Go
(peers/go_*/main.go, built by the test with Debian's Go), gnutls-serv and wget. The
certificate is a self-signed one made by ``openssl req -x509`` for each test. Counts
are exact; each test prints the figures it checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

import pytest

from conftest import (GO, bpftool_json, build_go_peer, curl_get, free_port, report, stop_process,
                      wait_port)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
NGINX = "/usr/sbin/nginx"
NODE = shutil.which("node") or "/usr/bin/node"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
UPROBE_EVENTS = "/sys/kernel/tracing/uprobe_events"
SPAN_TIMEOUT = 10.0
SETTLE = 1.0
# Time given to discovery for a process started after the agent.
DISCOVERY_GRACE = 1.5
# Prometheus names (see crates/agent/src/selfmetrics.rs and metrics/).
HS_COUNT = "autotel_tls_handshake_duration_seconds_count"
TLS_FILES = "autotel_tls_files_total"
PARSE_ERRORS = "autotel_parse_errors_total"
KERNEL = "autotel_kernel_total"
HS_ATTR = "autotel.tls.handshake.duration"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def make_cert(d: Path) -> Tuple[Path, Path]:
    """A self-signed certificate (EC P-256) for 127.0.0.1, valid one day."""
    cert, key = d / "cert.pem", d / "key.pem"
    cp = subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                         "-addext", "subjectAltName=IP:127.0.0.1"],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    return cert, key


def peer_env(extra: Optional[dict] = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTEL_"))}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


@pytest.fixture
def spawn(tmp_path):
    """Factory: ``spawn(cmd, port=None, name='peer', stdin=False, executable=None)``.

    Starts a peer in its own session (stdout+stderr to a log file), waits until it
    accepts connections on ``port``, stops it (by pid) at teardown. ``stdin=True``
    gives the peer a pipe (peers that wait for a "go" line)."""
    procs: List[subprocess.Popen] = []

    def _spawn(cmd: Sequence, port: Optional[int] = None, name: str = "peer",
               stdin: bool = False, executable: Optional[str] = None) -> subprocess.Popen:
        log_path = tmp_path / f"{name}{len(procs)}.log"
        log = open(log_path, "wb")
        p = subprocess.Popen(list(map(str, cmd)), env=peer_env(), executable=executable,
                             stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                             stdout=log, stderr=log, start_new_session=True)
        log.close()
        p.log_path = log_path
        procs.append(p)
        if port is not None:
            try:
                wait_port(port, 15, p)
            except Exception as e:
                pytest.fail(f"{name} did not start: {e}\n{log_path.read_text()[-2000:]}",
                            pytrace=False)
        return p

    yield _spawn
    for p in procs:
        stop_process(p)


def go_and_wait(p: subprocess.Popen, timeout: float = 60) -> dict:
    """Send the "go" line to a waiting peer, wait for it to exit, return its JSON line."""
    p.stdin.write(b"go\n")
    p.stdin.close()
    rc = p.wait(timeout=timeout)
    text = p.log_path.read_text(errors="replace")
    assert rc == 0, f"peer exited with {rc}:\n{text[-3000:]}"
    lines = [l for l in text.splitlines() if l.startswith("{")]
    assert lines, text
    return json.loads(lines[-1])


def make_docroot(d: Path, names: Sequence[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n.lstrip("/")).write_text(f"content of {n}\n" * 3)


def start_py_tls_server(spawn, tmp_path: Path, cert: Path, key: Path, names: Sequence[str],
                        protocol: str = "HTTP/1.0", peek: bool = False):
    port = free_port()
    docroot = tmp_path / f"docroot-{port}"
    make_docroot(docroot, names)
    srv = spawn([sys.executable, PEERS / "tls_https_server.py", port, cert, key, docroot,
                 "--protocol", protocol] + (["--peek"] if peek else []), port=port,
                name="tls-server")
    return srv, port


NGINX_TLS_CONF = """\
user root;
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ text/html html; text/plain txt; }}
    default_type application/octet-stream;
    keepalive_timeout 65;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {static};
        location / {{ }}
    }}
}}
"""


class TlsNginx:
    def __init__(self, proc, port, prefix):
        self.proc, self.port, self.prefix = proc, port, prefix

    def worker_pids(self) -> List[int]:
        from conftest import children_of
        return children_of(self.proc.pid)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def error_log(self) -> str:
        p = self.prefix / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture
def tls_nginx(tmp_path):
    """Factory: ``tls_nginx(cert, key, names)`` -> nginx (1 worker) serving ``names``
    over HTTPS on a free port (404 for anything else)."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"{NGINX} not found", pytrace=False)
    started: List[TlsNginx] = []

    def _start(cert: Path, key: Path, names: Sequence[str]) -> TlsNginx:
        port = free_port()
        prefix = tmp_path / f"nginx-tls{len(started)}"
        static = prefix / "static"
        (prefix / "tmp").mkdir(parents=True)
        make_docroot(static, names)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_TLS_CONF.format(prefix=prefix, port=port, cert=cert, key=key,
                                              static=static))
        log = open(prefix / "stderr.log", "wb")
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                                 "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
        log.close()
        ngx = TlsNginx(proc, port, prefix)
        started.append(ngx)
        try:
            wait_port(port, 15, proc)
            deadline = time.monotonic() + 10
            while not ngx.worker_pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception as e:
            pytest.fail(f"nginx did not start: {e}\n{ngx.error_log()}", pytrace=False)
        assert len(ngx.worker_pids()) == 1, ngx.worker_pids()
        return ngx

    yield _start
    for n in started:
        stop_process(n.proc, signal.SIGTERM)


def pid_of(s: dict) -> Optional[int]:
    return s["resource"].get("process.pid")


def span_path(s: dict) -> str:
    a = s["attrs"]
    if a.get("url.path"):
        return a["url.path"]
    return urlsplit(a.get("url.full", "")).path


def show(spans: List[dict]) -> str:
    return "\n".join(
        f"  {s['kind']} pid={pid_of(s)} span={s['span_id']} parent={s['parent_span_id']!r} "
        f"start={s['start_ns']} attrs={s['attrs']}" for s in spans)


def metric_sum(agent, name: str, labels: Optional[Dict[str, str]] = None) -> float:
    v = agent.prom_value(name, labels or {})
    return v or 0.0


def parse_error_problems(agent, errs0: float) -> List[str]:
    """Parse errors of every protocol since ``errs0`` (reported; a problem if any)."""
    errs = metric_sum(agent, PARSE_ERRORS) - errs0
    report("parse errors, all protocols (increase)", int(errs), 0)
    return [f"{errs} parse errors"] if errs else []


def hs_series(agent) -> List[Tuple[dict, float]]:
    """Every handshake-histogram ``_count`` series: (labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families as parse
    out = []
    for fam in parse(agent.metrics_text()):
        for s in fam.samples:
            if s.name == HS_COUNT:
                out.append((dict(s.labels), s.value))
    return out


def hs_counts(agent, want_labels: Optional[Dict[str, str]] = None) -> Counter:
    """Handshake observations per (role, tls version) among series matching
    ``want_labels`` (e.g. a service name)."""
    c = Counter()
    for labels, v in hs_series(agent):
        if all(labels.get(k) == w for k, w in (want_labels or {}).items()):
            c[(labels.get("autotel_tcp_role"), labels.get("tls_protocol_version"))] += int(v)
    return c


def check_https_server_span(s: dict, path: str, status: int, port: int,
                            version: Optional[str] = None) -> List[str]:
    """Problems of one SERVER span of an HTTPS request (empty list: fine)."""
    a, bad = s["attrs"], []
    want = {"http.request.method": "GET", "url.path": path,
            "http.response.status_code": status, "server.port": port,
            "url.scheme": "https", "tls.protocol.name": "tls"}
    for k, v in want.items():
        if a.get(k) != v:
            bad.append(f"{k}={a.get(k)!r} (want {v!r})")
    if version is not None and a.get("tls.protocol.version") != version:
        bad.append(f"tls.protocol.version={a.get('tls.protocol.version')!r} (want {version!r})")
    if not a.get("tls.protocol.version"):
        bad.append("no tls.protocol.version")
    if s["kind"] != "SERVER":
        bad.append(f"kind {s['kind']}")
    return bad


def check_https_client_span(s: dict, path: str, status: int, port: int,
                            version: Optional[str] = None) -> List[str]:
    a, bad = s["attrs"], []
    want = {"http.request.method": "GET", "url.full": f"https://127.0.0.1:{port}{path}",
            "http.response.status_code": status, "server.port": port,
            "tls.protocol.name": "tls"}
    for k, v in want.items():
        if a.get(k) != v:
            bad.append(f"{k}={a.get(k)!r} (want {v!r})")
    if "url.scheme" in a and a["url.scheme"] != "https":
        bad.append(f"url.scheme={a['url.scheme']!r}")
    if version is not None and a.get("tls.protocol.version") != version:
        bad.append(f"tls.protocol.version={a.get('tls.protocol.version')!r} (want {version!r})")
    if not a.get("tls.protocol.version"):
        bad.append("no tls.protocol.version")
    if s["kind"] != "CLIENT":
        bad.append(f"kind {s['kind']}")
    return bad


def exchange_problems(p: str, s: Optional[dict], c: Optional[dict], status: int, port: int,
                      client_pid: int) -> List[str]:
    """Problems of the SERVER span ``s`` and CLIENT span ``c`` of one HTTPS request
    for path ``p`` (either may be missing)."""
    if s is None or c is None:
        return [f"{p}: server span {s is not None}, client span {c is not None}"]
    out = [f"server {p}: {b}" for b in check_https_server_span(s, p, status, port)]
    out += [f"client {p}: {b}" for b in check_https_client_span(c, p, status, port)]
    if pid_of(c) != client_pid:
        out.append(f"client {p}: pid {pid_of(c)} != {client_pid}")
    return out


def elf_header_in_memory(pid: int, exe: str) -> bytes:
    """The first 4 bytes of ``exe``'s first mapping in ``pid`` (b"\\x7fELF" when
    nothing wrote over them)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == exe and int(f[2], 16) == 0:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(int(f[0].split("-")[0], 16))
                return mem.read(4)
    return b""


def kernel_counters(agent) -> dict:
    """autotel_kernel_total by kind, and parse errors (for failure messages)."""
    from prometheus_client.parser import text_string_to_metric_families as parse
    out = {}
    for fam in parse(agent.metrics_text()):
        for s in fam.samples:
            if s.name in (KERNEL, PARSE_ERRORS) and s.value:
                out[f"{s.name}{dict(s.labels)}"] = s.value
    return out


def valid_handshake(v) -> bool:
    return isinstance(v, float) and 0 < v < 5


def assert_no_panic(agent) -> None:
    text = agent.stderr_text() + agent.stdout_text()
    assert "panicked at" not in text, agent.logs_tail(40)


# --------------------------------------------------------------------------------------
# 1. nginx (listen ... ssl) <- curl -k: both ends, TLS 1.3 and TLS 1.2 + ALPN
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe_at", ["internal", "exported"])
def test_nginx_https_curl(require_root, sink, start_agent, tls_nginx, tmp_path, probe_at):
    """8 curl processes (4 default = TLS 1.3, 4 ``--tls-max 1.2``) to nginx over TLS,
    6 existing files + 2 missing paths. nginx selected by pid, curl by executable
    name. Exactly 8 SERVER + 8 CLIENT spans, https, right path/status/TLS version;
    TLS 1.2 spans carry tls.next_protocol=http/1.1 (ALPN is in the clear only in 1.2);
    each (one-request) connection's span carries the handshake duration; the handshake
    histogram gets 8 client and 8 server observations; no http1 parse error.
    Twice: with the probes on the internal functions SSL_read/SSL_write wrap (the
    default where found, as in Debian's libssl), and on the exported ones
    (``AUTOTEL_OPENSSL_PROBE=exported``)."""
    cert, key = make_cert(tmp_path)
    names = [f"/t{i}.txt" for i in range(6)]
    ngx = tls_nginx(cert, key, names)
    worker = ngx.worker_pids()[0]
    agent = start_agent({"AUTOTEL_PIDS": f"{ngx.proc.pid},{worker}",
                         "AUTOTEL_EXECUTABLE_NAME": "^curl$",
                         "AUTOTEL_OPENSSL_PROBE": probe_at})
    attached = metric_sum(agent, TLS_FILES, {"reason": "attached"})
    report("TLS files attached at start (>= 1: the system libssl)", int(attached), ">=1")
    assert attached >= 1, agent.metrics_text()
    libssl = next(os.path.realpath(line.split()[-1])
                  for line in open(f"/proc/{worker}/maps") if "libssl" in line)
    placed = re.findall(rf'TLS capture attached path={re.escape(libssl)} functions=(\d) at="?(\w+)',
                        agent.stderr_text())
    want_placed = [("2", "internal")] if probe_at == "internal" else [("4", "exported")]
    report("libssl probes placed (functions, where)", placed, want_placed)
    assert placed == want_placed, agent.stderr_text()[-3000:]
    errs0 = metric_sum(agent, PARSE_ERRORS, {"protocol": "http1"})
    hs0 = hs_counts(agent)

    plan = []  # (path, status, tls version, curl args)
    for i, p in enumerate(names + ["/missing-a", "/missing-b"]):
        status = 404 if p.startswith("/missing") else 200
        if i % 2:
            plan.append((p, status, "1.2", ["--tls-max", "1.2", "--http1.1"]))
        else:
            plan.append((p, status, "1.3", ["--http1.1"]))
    curl_pids = {}
    for p, status, ver, args in plan:
        r = curl_get(ngx.url(p), "-k", *args)
        assert r["code"] == status and r["rc"] == 0, r  # precondition
        m = re.search(r"SSL connection using TLSv(1\.[23])", r["stderr"])
        assert m and m.group(1) == ver, r["stderr"][-2000:]  # curl saw that version
        curl_pids[p] = r["pid"]
    k = len(plan)

    def ours(s):
        return (pid_of(s) == worker or (s["kind"] == "CLIENT"
                                        and s["attrs"].get("server.port") == ngx.port))
    sink.wait_for_spans(ours, 2 * k, SPAN_TIMEOUT, SETTLE)
    srv = [s for s in sink.spans() if pid_of(s) == worker]
    cli = [s for s in sink.spans() if s["kind"] == "CLIENT"
           and s["attrs"].get("server.port") == ngx.port]
    report("nginx SERVER spans", len(srv), k)
    report("curl CLIENT spans", len(cli), k)
    problems = []
    if len(srv) != k or not all(s["kind"] == "SERVER" for s in srv):
        problems.append(f"{len(srv)} nginx spans (want {k} SERVER)")
    if len(cli) != k:
        problems.append(f"{len(cli)} curl CLIENT spans (want {k})")
    by_path_s = {span_path(s): s for s in srv}
    by_path_c = {span_path(s): s for s in cli}
    alpn_ok = hs_ok = 0
    for p, status, ver, _ in plan:
        s, c = by_path_s.get(p), by_path_c.get(p)
        if s is None or c is None:
            problems.append(f"{p}: server span {s is not None}, client span {c is not None}")
            continue
        problems += [f"server {p}: {b}" for b in check_https_server_span(s, p, status,
                                                                            ngx.port, ver)]
        problems += [f"client {p}: {b}" for b in check_https_client_span(c, p, status,
                                                                            ngx.port, ver)]
        if pid_of(c) != curl_pids[p]:
            problems.append(f"client {p}: pid {pid_of(c)} != curl {curl_pids[p]}")
        want_alpn = "http/1.1" if ver == "1.2" else None
        if (s["attrs"].get("tls.next_protocol") == want_alpn
                and c["attrs"].get("tls.next_protocol") == want_alpn):
            alpn_ok += 1
        if valid_handshake(s["attrs"].get(HS_ATTR)) and valid_handshake(c["attrs"].get(HS_ATTR)):
            hs_ok += 1
    report("request pairs with the right tls.next_protocol (http/1.1 in 1.2, none in 1.3)",
           alpn_ok, k)
    report("request pairs whose spans both carry autotel.tls.handshake.duration", hs_ok, k)

    errs = metric_sum(agent, PARSE_ERRORS, {"protocol": "http1"}) - errs0
    report("http1 parse errors (increase)", int(errs), 0)
    time.sleep(1.0)
    hs = hs_counts(agent)
    hs.subtract(hs0)
    got_hs = {key: v for key, v in hs.items() if v}
    want_hs = {("client", "1.3"): 4, ("client", "1.2"): 4,
               ("server", "1.3"): 4, ("server", "1.2"): 4}
    report("handshake histogram observations (role, version)", got_hs, want_hs)
    if got_hs != want_hs:
        problems.append(f"handshake observations {got_hs} != {want_hs}; series "
                        f"{hs_series(agent)}")
    if alpn_ok != k:
        problems.append("tls.next_protocol wrong (see above)")
    if hs_ok != k:
        problems.append("handshake attribute missing (see above)")
    if errs:
        problems.append(f"{errs} http1 parse errors")
    # nginx only imports SSL_read/SSL_write (from libssl): no probe may go on
    # its own file, where libbpf would resolve them to offset 0, an int3 over
    # the ELF header of every nginx process.
    headers = {pid: elf_header_in_memory(pid, NGINX)
               for pid in [ngx.proc.pid, *ngx.worker_pids()]}
    report("nginx processes whose in-memory ELF header is intact", sorted(
        pid for pid, h in headers.items() if h == b"\x7fELF"), sorted(headers))
    if any(h != b"\x7fELF" for h in headers.values()):
        problems.append(f"nginx ELF headers in memory {headers}")
    assert not problems, ("\n".join(problems) + "\n" + show(srv + cli)
                          + f"\ncounters {kernel_counters(agent)}")
    assert_no_panic(agent)


# --------------------------------------------------------------------------------------
# 1b. what nginx does before its handshake: recv(fd, 1, MSG_PEEK)
# --------------------------------------------------------------------------------------


def test_server_peeking_first_byte(require_root, sink, start_agent, spawn, tmp_path):
    """The python TLS server in ``--peek`` mode looks at the first byte of each
    connection with recv(1, MSG_PEEK) before its handshake, exactly as nginx does on
    an ``ssl`` port (strace of an nginx worker: ``recvfrom(3, "\\26", 1, MSG_PEEK)``
    then ``read(3, "\\26\\3\\1...", 16709)`` inside SSL_do_handshake). Peeked
    bytes are read again: the agent must not take them as data. 4 urllib requests
    (server selected by pid, client not selected): exactly 4 https SERVER spans, no
    parse error."""
    cert, key = make_cert(tmp_path)
    names = [f"/p{i}.txt" for i in range(3)]
    srv, port = start_py_tls_server(spawn, tmp_path, cert, key, names, peek=True)
    agent = start_agent({"AUTOTEL_PIDS": srv.pid})
    errs0 = metric_sum(agent, PARSE_ERRORS)
    cli = spawn([sys.executable, PEERS / "tls_https_client.py", port, *names, "/missing-p"],
                name="cli")
    assert cli.wait(timeout=30) == 0, cli.log_path.read_text()
    out = json.loads(cli.log_path.read_text().splitlines()[-1])
    assert out["statuses"] == [200, 200, 200, 404], out
    sink.wait_for_spans(lambda s: pid_of(s) == srv.pid, 4, SPAN_TIMEOUT, SETTLE)
    spans = [s for s in sink.spans() if pid_of(s) == srv.pid]
    errs = metric_sum(agent, PARSE_ERRORS) - errs0
    report("SERVER spans of the peeking TLS server", len(spans), 4)
    report("parse errors, all protocols (increase)", int(errs), 0)
    problems = []
    by_path = {span_path(s): s for s in spans}
    for p, status in [(n, 200) for n in names] + [("/missing-p", 404)]:
        if p not in by_path:
            problems.append(f"{p}: no server span")
            continue
        problems += [f"{p}: {b}" for b in check_https_server_span(by_path[p], p, status,
                                                                     port)]
    if len(spans) != 4:
        problems.append(f"{len(spans)} server spans, want 4")
    if errs:
        problems.append(f"{errs} parse errors {kernel_counters(agent)}")
    assert not problems, "\n".join(problems) + "\n" + show(spans)
    assert_no_panic(agent)


# --------------------------------------------------------------------------------------
# 2. python ssl server <- urllib clients (one selected by pid, one started later)
# --------------------------------------------------------------------------------------


def test_python_https_server_and_urllib_clients(require_root, sink, start_agent, spawn,
                                                tmp_path):
    """python http.server wrapped with ssl, selected by pid; client A (urllib, a
    process waiting for "go") selected by pid; client B started AFTER the agent is
    running (selected by executable name: a copy of python under a unique name; its
    libssl is the one the agent probed at start). 4 requests each (3 files + 1
    missing, new connection each):
    exactly 8 SERVER + 8 CLIENT spans, https. Same-host linking (4-tuple): no server
    span may have a parent other than the client span of its own request; how many
    are linked is reported but not required (with TLS the client's plaintext is
    emitted when SSL_write returns, which can be after the server's SSL_read
    returned: the agent then sees the server's request first and starts a new
    trace)."""
    cert, key = make_cert(tmp_path)
    names = [f"/a{i}.txt" for i in range(3)] + [f"/b{i}.txt" for i in range(3)]
    srv, port = start_py_tls_server(spawn, tmp_path, cert, key, names)
    cli_a = spawn([sys.executable, PEERS / "tls_https_client.py", port, "/a0.txt", "/a1.txt",
                   "/a2.txt", "/missing-a", "--wait-stdin"], name="cli-a", stdin=True)
    # client B's executable: a copy of this python under a unique name (libpython and
    # the stdlib are found through the absolute RUNPATH / compiled-in prefix)
    exe_b = tmp_path / f"tlscli-{uuid.uuid4().hex[:8]}"
    shutil.copy2(sys.executable, exe_b)
    agent = start_agent({"AUTOTEL_PIDS": f"{srv.pid},{cli_a.pid}",
                         "AUTOTEL_EXECUTABLE_NAME": f"^{exe_b.name}$"})
    errs0 = metric_sum(agent, PARSE_ERRORS)
    out_a = go_and_wait(cli_a)
    # client B: a new process; it must be discovered before it sends (it waits for go)
    cli_b = spawn([exe_b, PEERS / "tls_https_client.py", port, "/b0.txt", "/b1.txt",
                   "/b2.txt", "/missing-b", "--wait-stdin"], name="cli-b", stdin=True)
    time.sleep(DISCOVERY_GRACE)
    out_b = go_and_wait(cli_b)
    assert out_a["statuses"] == [200, 200, 200, 404], out_a
    assert out_b["statuses"] == [200, 200, 200, 404], out_b
    plan = {"/a0.txt": (200, cli_a.pid), "/a1.txt": (200, cli_a.pid),
            "/a2.txt": (200, cli_a.pid), "/missing-a": (404, cli_a.pid),
            "/b0.txt": (200, cli_b.pid), "/b1.txt": (200, cli_b.pid),
            "/b2.txt": (200, cli_b.pid), "/missing-b": (404, cli_b.pid)}
    k = len(plan)
    pids = {srv.pid, cli_a.pid, cli_b.pid}
    sink.wait_for_spans(lambda s: pid_of(s) in pids, 2 * k, SPAN_TIMEOUT, SETTLE)
    spans = [s for s in sink.spans() if pid_of(s) in pids]
    srv_spans = [s for s in spans if pid_of(s) == srv.pid]
    cli_spans = [s for s in spans if pid_of(s) != srv.pid]
    report("python TLS server SERVER spans", len(srv_spans), k)
    report("client A CLIENT spans", sum(pid_of(s) == cli_a.pid for s in cli_spans), 4)
    report("client B (started after the agent) CLIENT spans",
           sum(pid_of(s) == cli_b.pid for s in cli_spans), 4)
    problems = []
    if len(srv_spans) != k or len(cli_spans) != k:
        problems.append(f"span counts {len(srv_spans)}/{len(cli_spans)}, want {k}/{k}")
    by_s = {span_path(s): s for s in srv_spans}
    by_c = {span_path(s): s for s in cli_spans}
    linked = 0
    for p, (status, cpid) in plan.items():
        s, c = by_s.get(p), by_c.get(p)
        problems += exchange_problems(p, s, c, status, port, cpid)
        if s is None or c is None:
            continue
        if s["parent_span_id"] == c["span_id"] and s["trace_id"] == c["trace_id"]:
            linked += 1
        if not valid_handshake(s["attrs"].get(HS_ATTR)) or not valid_handshake(
                c["attrs"].get(HS_ATTR)):
            problems.append(f"{p}: handshake attribute server "
                            f"{s['attrs'].get(HS_ATTR)!r} client {c['attrs'].get(HS_ATTR)!r}")
    client_ids = {c["span_id"] for c in cli_spans}
    mislinked = [s for s in srv_spans if s["parent_span_id"] and (
        span_path(s) not in by_c or s["parent_span_id"] != by_c[span_path(s)]["span_id"])]
    report("server spans child of the client span of the same request (informative: "
           "the server's plaintext can reach the agent before the client's)", linked, k)
    report("server spans with a WRONG parent (another request's client span or an "
           "unknown span)", len(mislinked), 0)
    if mislinked:
        problems.append(f"{len(mislinked)} server spans with a wrong parent "
                        f"(known client span ids {client_ids}):\n{show(mislinked)}")
    problems += parse_error_problems(agent, errs0)
    assert not problems, "\n".join(problems) + "\n" + show(spans)
    assert_no_panic(agent)


# --------------------------------------------------------------------------------------
# 3. keep-alive: the handshake attribute only on the first span of a connection
# --------------------------------------------------------------------------------------


def test_keepalive_handshake_on_first_span_only(require_root, sink, start_agent, spawn,
                                                tmp_path):
    """http.client.HTTPSConnection reused for 5 GETs against the python TLS server
    (HTTP/1.1 keep-alive), both selected by pid: 5 SERVER + 5 CLIENT spans on one
    connection; exactly one span per side carries autotel.tls.handshake.duration, the
    earliest one; every span still carries tls.protocol.*; one handshake observation
    per side in the histogram; no server span is linked to another request's client
    span."""
    cert, key = make_cert(tmp_path)
    paths = [f"/k{i}.txt" for i in range(5)]
    srv, port = start_py_tls_server(spawn, tmp_path, cert, key, paths, protocol="HTTP/1.1")
    cli = spawn([sys.executable, PEERS / "tls_https_client.py", port, *paths, "--keepalive",
                 "--wait-stdin"], name="cli-ka", stdin=True)
    agent = start_agent({"AUTOTEL_PIDS": f"{srv.pid},{cli.pid}"})
    hs0 = hs_counts(agent)
    out = go_and_wait(cli)
    assert out["statuses"] == [200] * 5 and len(set(out["local_ports"])) == 1, out
    sink.wait_for_spans(lambda s: pid_of(s) in (srv.pid, cli.pid), 10, SPAN_TIMEOUT, SETTLE)
    srv_spans = sorted((s for s in sink.spans() if pid_of(s) == srv.pid),
                       key=lambda s: s["start_ns"])
    cli_spans = sorted((s for s in sink.spans() if pid_of(s) == cli.pid),
                       key=lambda s: s["start_ns"])
    report("keep-alive SERVER spans", len(srv_spans), 5)
    report("keep-alive CLIENT spans", len(cli_spans), 5)
    assert len(srv_spans) == 5 and len(cli_spans) == 5, show(srv_spans + cli_spans)
    problems = []
    for s, c, p in zip(srv_spans, cli_spans, paths):
        problems += [f"server {p}: {b}" for b in check_https_server_span(s, p, 200, port)]
        problems += [f"client {p}: {b}" for b in check_https_client_span(c, p, 200, port)]
    # same-host linking on one connection: server span i child of client span i or
    # a root; never the client span of another request (a client entry left queued
    # by a request whose server side was seen first must not shift the links)
    linked = sum(s["parent_span_id"] == c["span_id"] for s, c in zip(srv_spans, cli_spans))
    cidx = {c["span_id"]: i for i, c in enumerate(cli_spans)}
    wrong = [(i, cidx.get(s["parent_span_id"], s["parent_span_id"]))
             for i, (s, c) in enumerate(zip(srv_spans, cli_spans))
             if s["parent_span_id"] and s["parent_span_id"] != c["span_id"]]
    report("keep-alive server spans linked to their own client span (informative)",
           linked, 5)
    report("keep-alive server spans with a WRONG parent (server index, index of the "
           "client span taken as parent)", wrong, [])
    if wrong:
        cids = [c["span_id"] for c in cli_spans]
        problems.append(f"server spans with a wrong parent {wrong}; client span ids in "
                        f"order {cids}")
    peer_ports = {s["attrs"].get("network.peer.port") for s in srv_spans}
    if peer_ports != {out["local_ports"][0]}:
        problems.append(f"server spans' network.peer.port {peer_ports} != client port "
                        f"{out['local_ports'][0]}")
    for label, spans in (("SERVER", srv_spans), ("CLIENT", cli_spans)):
        with_hs = [i for i, s in enumerate(spans) if HS_ATTR in s["attrs"]]
        report(f"{label} spans with the handshake attribute (index in time order)",
               with_hs, [0])
        if with_hs != [0] or not valid_handshake(spans[0]["attrs"].get(HS_ATTR)):
            problems.append(f"{label}: handshake attribute on spans {with_hs} "
                            f"(value {spans[0]['attrs'].get(HS_ATTR)!r}), want [0]")
    time.sleep(1.0)
    hs = hs_counts(agent)
    hs.subtract(hs0)
    per_role = Counter()
    for (role, _), v in hs.items():
        per_role[role] += v
    got = {r: v for r, v in per_role.items() if v}
    report("handshake histogram observations per role", got, {"client": 1, "server": 1})
    if got != {"client": 1, "server": 1}:
        problems.append(f"handshake observations {got}")
    assert not problems, "\n".join(problems) + "\n" + show(srv_spans + cli_spans)
    assert_no_panic(agent)


# --------------------------------------------------------------------------------------
# 4. Node.js https: OpenSSL inside node, driven through memory BIOs
# --------------------------------------------------------------------------------------


def test_node_https_client_plaintext_or_nothing(require_root, sink, start_agent, spawn,
                                                tmp_path):
    """Node.js ``https`` client (node links its own OpenSSL statically and exports its
    symbols, so the agent may attach to /usr/bin/node; but node's OpenSSL reads and
    writes memory BIOs, the socket I/O is libuv's), selected by pid, against an
    unselected python TLS server. Whatever the agent manages: either exactly 6 correct
    https CLIENT spans, or none at all; never a span made from ciphertext, never a parse
    error."""
    cert, key = make_cert(tmp_path)
    names = [f"/n{i}.txt" for i in range(5)]
    srv, port = start_py_tls_server(spawn, tmp_path, cert, key, names)
    paths = names + ["/missing-n"]
    node = spawn([NODE, PEERS / "tls_node_client.js", port, *paths], name="node", stdin=True)
    agent = start_agent({"AUTOTEL_PIDS": node.pid})
    errs0 = metric_sum(agent, PARSE_ERRORS)
    nofd0 = metric_sum(agent, KERNEL, {"kind": "tls_no_fd"})
    # the executable of a selected process is offered for TLS probes: wait for it
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline and "/usr/bin/node" not in agent.stderr_text():
        time.sleep(0.2)
    node_lines = [l for l in agent.stderr_text().splitlines() if "node" in l and "TLS" in l]
    out = go_and_wait(node)
    assert out["statuses"] == [200] * 5 + [404], out
    time.sleep(SPAN_TIMEOUT / 2)
    spans = [s for s in sink.spans() if pid_of(s) in (node.pid, srv.pid)]
    nofd = metric_sum(agent, KERNEL, {"kind": "tls_no_fd"}) - nofd0
    errs = metric_sum(agent, PARSE_ERRORS) - errs0
    files = {r: int(metric_sum(agent, TLS_FILES, {"reason": r}))
             for r in ("attached", "no_symbols", "already_done")}
    node_attached = any("TLS capture attached" in l for l in node_lines)
    report("node executable got the TLS probes (agent log)", node_attached, "-")
    report("autotel_tls_files_total by reason", files, "-")
    report("kernel tls_no_fd (increase: TLS calls whose socket was never seen)", int(nofd),
           "-")
    report("node spans (0 or 6, all correct https)", len(spans), "0|6")
    report("parse errors, all protocols (increase)", int(errs), 0)
    problems = []
    if len(spans) not in (0, len(paths)):
        problems.append(f"{len(spans)} spans: neither 0 nor {len(paths)}")
    for s in spans:
        p = span_path(s)
        if pid_of(s) != node.pid or p not in paths:
            problems.append(f"span not from a node request: pid {pid_of(s)} path {p!r}")
            continue
        problems += [f"{p}: {b}" for b in check_https_client_span(
            s, p, 404 if p.startswith("/missing") else 200, port)]
    if spans and Counter(span_path(s) for s in spans) != Counter(paths):
        problems.append(f"paths {Counter(span_path(s) for s in spans)}")
    if errs:
        problems.append(f"{errs} parse errors")
    assert not problems, "\n".join(problems) + "\n" + show(spans)
    assert_no_panic(agent)


# --------------------------------------------------------------------------------------
# 5. exit leaves nothing: TLS uprobes gone after SIGTERM and after kill -9
# --------------------------------------------------------------------------------------


def bpf_fd_ids(pid: int) -> Tuple[Set[int], Set[int]]:
    """(BPF program ids, BPF link ids) held by ``pid``'s file descriptors."""
    progs, links = set(), set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return progs, links
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^link_id:\s*(\d+)", text, re.M)
        if m:
            links.add(int(m.group(1)))
        m = re.search(r"^prog_id:\s*(\d+)", text, re.M)
        if m:
            progs.add(int(m.group(1)))
    return progs, links


def uprobe_event_lines() -> Optional[List[str]]:
    try:
        return Path(UPROBE_EVENTS).read_text().splitlines()
    except OSError:
        return None


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_exit_leaves_no_tls_probe(require_root, sink, start_agent, spawn, tmp_path, how):
    """An agent with TLS probes live (a selected python TLS server answered 3 requests
    as https spans) is stopped with SIGTERM / kill -9: within 2 s none of the BPF
    programs (incl. the at_ssl_* ones) and links (incl. the uprobe links) it held is
    loaded; /sys/kernel/tracing/uprobe_events has no new line (no legacy libssl
    uprobe left behind)."""
    cert, key = make_cert(tmp_path)
    names = ["/x0.txt", "/x1.txt", "/x2.txt"]
    srv, port = start_py_tls_server(spawn, tmp_path, cert, key, names)
    events_before = uprobe_event_lines()
    agent = start_agent({"AUTOTEL_PIDS": srv.pid})
    cli = spawn([sys.executable, PEERS / "tls_https_client.py", port, *names], name="cli")
    assert cli.wait(timeout=30) == 0, cli.log_path.read_text()
    spans = sink.wait_for_spans(lambda s: pid_of(s) == srv.pid, 3, SPAN_TIMEOUT, 0.2)
    https = [s for s in spans if s["attrs"].get("url.scheme") == "https"]
    report("https server spans before the stop (probes live)", len(https), 3)
    assert len(https) == 3, show(spans)

    progs, links = bpf_fd_ids(agent.pid)
    live_progs = {p["id"]: p for p in bpftool_json("prog", "show")}
    live_links = {l["id"]: l for l in bpftool_json("link", "show")}
    ssl_progs = {i for i in progs if str(live_progs.get(i, {}).get("name", "")).startswith(
        "at_ssl_")}
    ssl_prog_links = {i for i in links if live_links.get(i, {}).get("prog_id") in ssl_progs}
    report("BPF programs / links held by the agent", f"{len(progs)}/{len(links)}", "n/n")
    report("at_ssl_* programs / links to them", f"{len(ssl_progs)}/{len(ssl_prog_links)}",
           ">=1/>=1")
    assert ssl_progs and ssl_prog_links, (progs, links)

    t0 = time.monotonic()
    if how == "sigterm":
        agent.proc.send_signal(signal.SIGTERM)
        try:
            rc = agent.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        report("SIGTERM: exit code", rc, 0)
        assert rc == 0, agent.logs_tail(30)
    else:
        os.kill(agent.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)
    left_p, left_l = set(progs), set(links)
    while time.monotonic() - t0 < 2.0:
        left_p = progs & {p["id"] for p in bpftool_json("prog", "show")}
        left_l = links & {l["id"] for l in bpftool_json("link", "show")}
        if not left_p and not left_l:
            break
        time.sleep(0.05)
    gone_s = time.monotonic() - t0
    report(f"{how}: programs / links of the agent still loaded (checked until all gone, "
           f"at most 2 s; took {gone_s:.2f} s from the signal)",
           f"{len(left_p)}/{len(left_l)}", "0/0")
    events_after = uprobe_event_lines()
    if events_before is None or events_after is None:
        print(f"{UPROBE_EVENTS} not readable: uprobe_events check skipped", flush=True)
        new_events = []
    else:
        # other agents may run concurrently: only lines that can be this agent's
        # (libbpf names legacy uprobes libbpf_<pid>_...)
        new_events = [l for l in events_after if l not in events_before
                      and (f"libbpf_{agent.pid}_" in l or "autotel" in l)]
        print(f"uprobe_events lines: {len(events_before)} before, {len(events_after)} "
              f"after; libssl ones after: {[l for l in events_after if 'libssl' in l]}",
              flush=True)
    report("uprobe_events lines of this agent after exit", len(new_events), 0)
    assert not left_p and not left_l, f"left: progs {left_p} links {left_l}"
    assert not new_events, new_events


# --------------------------------------------------------------------------------------
# 6. a libssl loaded later (dlopen), from a file the agent did not probe at start
# --------------------------------------------------------------------------------------

DLOPEN_CLIENT = r"""
import json, sys, time
sys.stdin.readline()                      # "load": import ssl (dlopens libssl) now
import ssl, urllib.request
print("loaded", flush=True)
sys.stdin.readline()                      # "go": the requests
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
statuses = []
for path in sys.argv[2:]:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}{path}", context=ctx) as r:
            r.read(); statuses.append(r.status)
    except urllib.error.HTTPError as e:
        e.read(); statuses.append(e.code)
print(json.dumps({"statuses": statuses}), flush=True)
"""


def test_libssl_loaded_later_from_a_private_copy(require_root, sink, start_agent, spawn,
                                                 tmp_path):
    """A selected process that loads libssl only after the agent started (Python's
    `import ssl` dlopens _ssl, which loads libssl), from a private copy of the library
    (LD_LIBRARY_PATH) that the agent did not probe at start: the maps rescan must find
    and probe it. Its HTTPS requests then give exact client spans."""
    libdir = tmp_path / "privlib"
    libdir.mkdir()
    for lib in ("libssl.so.3", "libcrypto.so.3"):
        shutil.copy2(f"/usr/lib/x86_64-linux-gnu/{lib}", libdir / lib)
    cert, key = make_cert(tmp_path)
    names = ["/d0.txt", "/d1.txt"]
    srv, port = start_py_tls_server(spawn, tmp_path, cert, key, names)
    env = peer_env({"LD_LIBRARY_PATH": str(libdir)})
    log = open(tmp_path / "dlopen-client.log", "wb")
    cli = subprocess.Popen([sys.executable, "-c", DLOPEN_CLIENT, str(port), "/d0.txt",
                            "/d1.txt", "/missing-d"], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        agent = start_agent({"AUTOTEL_PIDS": f"{srv.pid},{cli.pid}"})
        # The system's libssl and libgnutls, probed at start.
        at_start = agent.prom_value(TLS_FILES, {"reason": "attached"}) or 0
        maps = Path(f"/proc/{cli.pid}/maps").read_text()
        report("client maps libssl before `import ssl` (0)", int("libssl" in maps), 0)
        assert "libssl" not in maps, "the client loaded libssl too early: nothing tested"
        cli.stdin.write(b"load\n")
        cli.stdin.flush()
        assert cli.stdout.readline().strip() == b"loaded"
        maps = Path(f"/proc/{cli.pid}/maps").read_text()
        assert str(libdir / "libssl.so.3") in maps, maps
        # The rescan runs every 5 s: wait until the private copy is probed.
        deadline = time.monotonic() + 12
        attached = 0
        while time.monotonic() < deadline:
            attached = agent.prom_value(TLS_FILES, {"reason": "attached"}) or 0
            if attached > at_start:
                break
            time.sleep(0.5)
        report("TLS files attached (the system's + the private copy)", int(attached),
               int(at_start) + 1)
        assert attached == at_start + 1, agent.logs_tail(40)
        cli.stdin.write(b"go\n")
        cli.stdin.close()
        out = json.loads(cli.stdout.readline())
        assert cli.wait(timeout=30) == 0
        assert out["statuses"] == [200, 200, 404], out
        sink.wait_for_spans(lambda s: pid_of(s) == cli.pid, 3, SPAN_TIMEOUT, SETTLE)
        spans = [s for s in sink.spans() if pid_of(s) == cli.pid]
        report("client spans over the late-loaded libssl", len(spans), 3)
        want = {"/d0.txt": 200, "/d1.txt": 200, "/missing-d": 404}
        problems = []
        for s in spans:
            p = span_path(s)
            problems += [f"{p}: {b}" for b in check_https_client_span(s, p, want.get(p, -1), port)]
        assert len(spans) == 3 and sorted(span_path(s) for s in spans) == sorted(want), show(spans)
        assert not problems, "\n".join(problems)
    finally:
        log.close()
        stop_process(cli)


# --------------------------------------------------------------------------------------
# 6b. GnuTLS: gnutls-serv and wget, neither of which links OpenSSL
# --------------------------------------------------------------------------------------


def test_gnutls_server_and_wget_clients(require_root, sink, start_agent, spawn, tmp_path):
    """``gnutls-serv --http`` (GnuTLS's own test server, started before the agent, selected
    by pid) and 4 ``wget`` runs (Debian's wget links GnuTLS; selected by executable
    name, started after the agent). The system's libgnutls is probed at start
    (``at="gnutls"`` in the log). Exactly 4 SERVER spans with each request's path and
    the 200 the server sent, and 4 CLIENT spans, one per wget pid, with url.full; TLS
    version on all; no http1 parse error. gnutls-serv answers HTTP/1.0 with no length
    and closes: the response ends at the close."""
    cert, key = make_cert(tmp_path)
    port = free_port()
    srv = spawn(["gnutls-serv", "--http", f"--x509certfile={cert}", f"--x509keyfile={key}",
                 f"--port={port}"], port=port, name="gnutls-serv")
    agent = start_agent({"AUTOTEL_PIDS": str(srv.pid), "AUTOTEL_EXECUTABLE_NAME": "^wget$"})
    gnutls = os.path.realpath(next(line.split()[-1] for line in open(f"/proc/{srv.pid}/maps")
                                   if "libgnutls.so" in line))
    placed = re.findall(rf'TLS capture attached path={re.escape(gnutls)} functions=(\d) '
                        r'at="?(\w+)', agent.stderr_text())
    report("libgnutls probes placed (functions, where)", placed, [("2", "gnutls")])
    assert placed == [("2", "gnutls")], agent.stderr_text()[-3000:]
    errs0 = metric_sum(agent, PARSE_ERRORS, {"protocol": "http1"})
    paths = [f"/g{i}/page.html" for i in range(4)]
    wget_pids = {}
    for p in paths:
        w = subprocess.Popen(["wget", "--no-check-certificate", "--no-hsts", "--tries=1", "-q",
                              "-O", "-", f"https://127.0.0.1:{port}{p}"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=peer_env())
        out, err = w.communicate(timeout=30)
        assert w.returncode == 0 and b"GnuTLS" in out, (w.returncode, err)  # precondition
        wget_pids[p] = w.pid
    k = len(paths)

    def ours(s):
        return pid_of(s) == srv.pid or (s["kind"] == "CLIENT"
                                        and s["attrs"].get("server.port") == port)
    sink.wait_for_spans(ours, 2 * k, SPAN_TIMEOUT, SETTLE)
    srv_spans = {span_path(s): s for s in sink.spans() if pid_of(s) == srv.pid}
    cli_spans = [s for s in sink.spans()
                 if s["kind"] == "CLIENT" and s["attrs"].get("server.port") == port]
    report("gnutls-serv SERVER spans", len(srv_spans), k)
    report("wget CLIENT spans", len(cli_spans), k)
    problems = []
    if len(srv_spans) != k or len(cli_spans) != k:
        problems.append(f"{len(srv_spans)} server / {len(cli_spans)} client spans (want {k})")
    cli_by_pid = {pid_of(s): s for s in cli_spans}
    for p in paths:
        problems += exchange_problems(p, srv_spans.get(p), cli_by_pid.get(wget_pids[p]), 200,
                                      port, wget_pids[p])
    errs = metric_sum(agent, PARSE_ERRORS, {"protocol": "http1"}) - errs0
    report("http1 parse errors (increase)", int(errs), 0)
    if errs:
        problems.append(f"{errs} http1 parse errors")
    assert not problems, ("\n".join(problems) + "\n" + show(list(srv_spans.values()) + cli_spans)
                          + f"\ncounters {kernel_counters(agent)}")


# --------------------------------------------------------------------------------------
# 7. Go: crypto/tls, no OpenSSL anywhere (probes at entry and at each RET)
# --------------------------------------------------------------------------------------

def go_resource_problems(spans: List[dict], exe_name: str) -> List[str]:
    """A Go process's resource: process.runtime.name ``go`` with the version `go env
    GOVERSION` gives, and the executable as service name (not its first argument,
    as for an interpreter's script)."""
    go_version = subprocess.run([GO, "env", "GOVERSION"], capture_output=True,
                                text=True).stdout.strip()
    got = {(x["resource"].get("process.runtime.name"),
            x["resource"].get("process.runtime.version"),
            x["resource"].get("service.name")) for x in spans}
    want = {("go", go_version, exe_name)}
    report("Go processes' (process.runtime.name, .version, service.name)", got, want)
    return [] if got == want else [f"resource {got}, want {want}"]


@pytest.mark.parametrize("stripped,read_probe", [(False, "copy"), (True, "copy"),
                                                 (False, "returns")],
                         ids=["symbols", "stripped", "read-at-returns"])
def test_go_crypto_tls_server_and_clients(require_root, sink, start_agent, spawn, tmp_path,
                                          stripped, read_probe):
    """A Go net/http server over crypto/tls (started before the agent) and two Go
    clients started after it (one on HTTP/2, which Go negotiates by ALPN, one on
    HTTP/1.1), all one executable selected by name. Go links no OpenSSL: the agent
    reads the plaintext at crypto/tls.(*Conn).Read/Write, with its "return" probes
    on the RET instructions (a uretprobe would crash a Go program whose stack
    moves). Each client sends 4 GETs on one connection; the HTTP/1.1 one also gets
    a 300,000-byte body (many Write calls and records). Exactly one SERVER and one
    CLIENT span per request, https, with the right status and protocol version, no
    span linked to another request's, no parse errors, process.runtime.name ``go``
    with the version `go env GOVERSION` gives; the server keeps serving after the
    agent has detached its probes. Stripped: the functions are found in the
    runtime's own table (.gopclntab) instead of the symbol table. Read's plaintext
    is taken at its one call of runtime.memmove (a call the kernel emulates), or
    with ``AUTOTEL_GO_TLS_READ_PROBE=returns`` at its RET instructions (stepped out
    of line), the way used when the copy is not found."""
    exe = build_go_peer(tmp_path, stripped)
    cert, key = make_cert(tmp_path)
    port = free_port()
    srv = spawn([exe, "server", port, cert, key], port=port, name="go-server")
    agent = start_agent({"AUTOTEL_EXECUTABLE_NAME": f"^{exe.name}$",
                         "AUTOTEL_GO_TLS_READ_PROBE": read_probe})
    errs0 = metric_sum(agent, PARSE_ERRORS)
    base = f"https://127.0.0.1:{port}"
    plans = {"2": ["/h2-a", "/h2-b", "/h2-c", "/missing-h2"],
             "1.1": ["/h1-a", "/h1-b", "/big-h1", "/missing-h1"]}
    clients = {}
    for version, paths in plans.items():
        extra = ["--http1"] if version == "1.1" else []
        cli = spawn([exe, "client", *extra, "--wait-stdin", *[base + p for p in paths]],
                    name=f"go-client-{version}", stdin=True)
        time.sleep(DISCOVERY_GRACE)
        out = go_and_wait(cli)
        want_proto = "HTTP/2.0" if version == "2" else "HTTP/1.1"
        assert out == {"statuses": [200, 200, 200, 404], "proto": want_proto}, out
        clients[version] = cli
    k = sum(len(p) for p in plans.values())
    pids = {srv.pid} | {c.pid for c in clients.values()}
    sink.wait_for_spans(lambda s: pid_of(s) in pids, 2 * k, SPAN_TIMEOUT, SETTLE)
    spans = [s for s in sink.spans() if pid_of(s) in pids]
    srv_spans = {span_path(s): s for s in spans if pid_of(s) == srv.pid}
    cli_spans = {span_path(s): s for s in spans if pid_of(s) != srv.pid}
    report("Go server SERVER spans", len([s for s in spans if pid_of(s) == srv.pid]), k)
    report("Go clients CLIENT spans", len([s for s in spans if pid_of(s) != srv.pid]), k)
    problems = []
    if len(spans) != 2 * k:
        problems.append(f"{len(spans)} spans, want {2 * k}")
    linked = 0
    for version, paths in plans.items():
        for p in paths:
            status = 404 if p.startswith("/missing") else 200
            s, c = srv_spans.get(p), cli_spans.get(p)
            problems += exchange_problems(p, s, c, status, port, clients[version].pid)
            if s is None or c is None:
                continue
            for side, x in (("server", s), ("client", c)):
                if x["attrs"].get("network.protocol.version") != version:
                    problems.append(f"{side} {p}: network.protocol.version "
                                    f"{x['attrs'].get('network.protocol.version')!r}, want {version}")
            if s["parent_span_id"]:
                if s["parent_span_id"] != c["span_id"]:
                    problems.append(f"server {p}: parent {s['parent_span_id']} is not its "
                                    f"client span {c['span_id']}")
                else:
                    linked += 1
    problems += go_resource_problems(spans, exe.name)
    attached = re.findall(r'Go TLS capture attached.*read_at="?(\w+)', agent.stderr_text())
    report("where Go's Read is probed", attached, [read_probe])
    if attached != [read_probe]:
        problems.append(f"Go TLS attached with Read at {attached}, want [{read_probe}]")
    big = srv_spans.get("/big-h1")
    if big is not None and big["attrs"].get("http.response.body.size") != 300000:
        problems.append(f"/big-h1 body size {big['attrs'].get('http.response.body.size')!r}")
    report("server spans child of their client span (informative)", linked, k)
    problems += parse_error_problems(agent, errs0)
    assert not problems, "\n".join(problems) + "\n" + show(spans)
    assert_no_panic(agent)
    # The probes are gone with the agent, and the program they sat in still works.
    progs, links = bpf_fd_ids(agent.pid)
    names = {p["id"]: str(p.get("name", "")) for p in bpftool_json("prog", "show")}
    go_progs = {i for i in progs if names.get(i, "").startswith("at_go_tls")}
    report("at_go_tls_* programs held by the agent (read, write, copy, ret)",
           len(go_progs), 4)
    assert len(go_progs) == 4, sorted(names.get(i) for i in progs)
    assert agent.stop() == 0, agent.logs_tail(40)
    time.sleep(0.5)
    left = {p["id"] for p in bpftool_json("prog", "show")} & go_progs
    left_links = {l["id"] for l in bpftool_json("link", "show")} & links
    report("its programs and links still loaded after the stop", (left, left_links),
           (set(), set()))
    assert not left and not left_links, (left, left_links)
    after = spawn([exe, "client", base + "/after"], name="go-client-after")
    assert after.wait(timeout=30) == 0, after.log_path.read_text()
    assert srv.poll() is None, srv.log_path.read_text()


@pytest.mark.parametrize("middle", ["unknown", "big"])
def test_go_grpc_over_tls(require_root, sink, start_agent, spawn, tmp_path, middle):
    """gRPC-Go (Debian's golang-google-grpc-dev) over crypto/tls: its own HTTP/2,
    not net/http's. A health-service server started before the agent, a client
    started after it, one executable selected by name; the client calls
    grpc.health.v1.Health/Check for a known service, an unknown one (NOT_FOUND) and
    the known one again on one connection. Exactly 3 SERVER and 3 CLIENT spans with
    rpc.system grpc, the method, and the status code the client saw; each server
    span a child of its client span or a root, never another call's; no parse
    errors. ``big``: the unknown service's name is 300 KB, so its request goes past
    what one plaintext call's capture keeps, with the call after it on the same
    connection."""
    exe = build_go_peer(tmp_path, False, peer="go_grpc_tls")
    cert, key = make_cert(tmp_path)
    port = free_port()
    srv = spawn([exe, "server", port, cert, key], port=port, name="go-grpc-server")
    agent = start_agent({"AUTOTEL_EXECUTABLE_NAME": f"^{exe.name}$"})
    errs0 = metric_sum(agent, PARSE_ERRORS)
    cli = spawn([exe, "client", "--wait-stdin", f"127.0.0.1:{port}", "known", middle,
                 "known"], name="go-grpc-client", stdin=True)
    time.sleep(DISCOVERY_GRACE)
    out = go_and_wait(cli)
    assert out == {"codes": [0, 5, 0]}, out
    pids = {srv.pid, cli.pid}
    sink.wait_for_spans(lambda s: pid_of(s) in pids, 6, SPAN_TIMEOUT, SETTLE)
    spans = sorted((s for s in sink.spans() if pid_of(s) in pids), key=lambda s: s["start_ns"])
    srv_spans = [s for s in spans if pid_of(s) == srv.pid]
    cli_spans = [s for s in spans if pid_of(s) == cli.pid]
    report("gRPC-Go server SERVER spans", len(srv_spans), 3)
    report("gRPC-Go client CLIENT spans", len(cli_spans), 3)
    problems = []
    for label, side, kind in (("server", srv_spans, "SERVER"), ("client", cli_spans, "CLIENT")):
        codes = [x["attrs"].get("rpc.grpc.status_code") for x in side]
        report(f"{label} rpc.grpc.status_code in time order", codes, [0, 5, 0])
        if codes != [0, 5, 0]:
            problems.append(f"{label} status codes {codes}")
        for x in side:
            a = x["attrs"]
            want = {"rpc.system": "grpc", "rpc.service": "grpc.health.v1.Health",
                    "rpc.method": "Check", "server.port": port}
            bad = {k: a.get(k) for k, v in want.items() if a.get(k) != v}
            if bad or x["kind"] != kind:
                problems.append(f"{label} span {x['span_id']}: {bad} kind {x['kind']}")
    client_of = {c["span_id"] for c in cli_spans}
    for s_, c in zip(srv_spans, cli_spans):
        if s_["parent_span_id"] and s_["parent_span_id"] != c["span_id"]:
            where = "another call's client span" if s_["parent_span_id"] in client_of \
                else "an unknown span"
            problems.append(f"server span {s_['span_id']}: parent is {where}")
    problems += go_resource_problems(spans, exe.name)
    problems += parse_error_problems(agent, errs0)
    assert len(srv_spans) == 3 and len(cli_spans) == 3 and not problems, \
        "\n".join(problems) + "\n" + show(spans)
    assert_no_panic(agent)

