"""Real database servers for the autotel database tests (test_db.py).

Each server is the Debian binary, started on a free port of 127.0.0.1 with a private
data directory under a fresh temporary directory, and stopped by its pid (never by
name: other suites may run the same servers at the same time). A missing binary is a
test failure, not a skip. Servers are module-scoped: starting PostgreSQL and MariaDB
takes seconds, and the tests select only the *client* processes, so one server serves
every test of the module.

* PostgreSQL 15: ``initdb`` (trust auth) as the ``postgres`` user, then ``postgres -D
  DIR -p PORT -k SOCKDIR -c listen_addresses=127.0.0.1``.
* MariaDB: ``mariadb-install-db`` then ``mariadbd --user=root`` (root has no password,
  ``normal`` authentication so TCP logins work).
* Redis: ``redis-server --port P --save '' --appendonly no``.
* Memcached: ``memcached -p P -l 127.0.0.1 -U 0 -u nobody``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import free_port, stop_process, wait_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"
MARIADBD = "/usr/sbin/mariadbd"
MYSQL_CLI = shutil.which("mariadb") or shutil.which("mysql") or "/usr/bin/mysql"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
REDIS_BENCHMARK = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"


def need(path, hint: str) -> str:
    """Fail loudly (never skip) when a server/client binary is missing."""
    p = str(path)
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        pytest.fail(f"{p} not found: {hint}", pytrace=False)
    return p


def _private_dir(prefix: str, owner: Optional[str] = None) -> Path:
    """A fresh directory under /tmp (pytest's base tmp dir is 0700 root: the postgres
    user could not reach a data directory there)."""
    d = Path(tempfile.mkdtemp(prefix=f"autotel-{prefix}-"))
    os.chmod(d, 0o755)
    if owner:
        shutil.chown(d, owner, owner)
    return d


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class DbServer:
    def __init__(self, kind: str, proc: subprocess.Popen, port: int, root: Path,
                 log: Path, **extra):
        self.kind, self.proc, self.port, self.root, self.log = kind, proc, port, root, log
        self.__dict__.update(extra)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self) -> str:
        return _log_tail(self.log)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)


def _spawn(cmd: List[str], log: Path, user: Optional[str] = None,
           env: Optional[dict] = None) -> subprocess.Popen:
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    f = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                env=env, start_new_session=True)
    finally:
        f.close()


def _self_signed(root: Path, owner: Optional[str] = None) -> List[str]:
    """A certificate and key for the server's TLS (``openssl req -x509``), owned by
    ``owner``; returns [certificate, key]."""
    cert, key = root / "server.crt", root / "server.key"
    cp = _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
               "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)])
    if cp.returncode != 0:
        pytest.fail(f"openssl req failed:\n{cp.stderr}", pytrace=False)
    key.chmod(0o600)
    if owner:
        for f in (cert, key):
            shutil.chown(f, owner, owner)
    return [str(cert), str(key)]


def _wait_ready(srv: DbServer, check, timeout: float = 30.0) -> None:
    """Wait for the port, then until ``check()`` is true (server answers queries)."""
    try:
        wait_port(srv.port, timeout, srv.proc)
        deadline = time.monotonic() + timeout
        while not check():
            if srv.proc.poll() is not None:
                raise RuntimeError(f"{srv.kind} exited with {srv.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{srv.kind} not ready after {timeout}s")
            time.sleep(0.1)
    except Exception as e:
        log = srv.log_tail()
        srv.stop()
        pytest.fail(f"{srv.kind} did not start: {e}\n{log}", pytrace=False)


def _run(cmd: List[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# --------------------------------------------------------------------------------------
# PostgreSQL 15
# --------------------------------------------------------------------------------------


def start_postgres(tls: bool = False) -> DbServer:
    """``tls``: the server offers TLS (a self-signed certificate), as Debian's
    configured clusters do; libpq clients then use it unless told not to."""
    initdb = need(PG_BIN / "initdb", "apt-get install postgresql-15")
    postgres = need(PG_BIN / "postgres", "apt-get install postgresql-15")
    root = _private_dir("pg", PG_USER)
    data, sock = root / "data", root / "sock"
    for d in (data, sock):
        d.mkdir()
        shutil.chown(d, PG_USER, PG_USER)
    log = root / "postgres.log"
    log.touch()
    shutil.chown(log, PG_USER, PG_USER)
    cp = _run(["runuser", "-u", PG_USER, "--", initdb, "-D", str(data), "-U", "postgres",
               "--auth=trust", "--encoding=UTF8", "--no-sync"], timeout=120)
    if cp.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}",
                    pytrace=False)
    port = free_port()
    ssl = []
    if tls:
        cert, key = _self_signed(root, PG_USER)
        ssl = ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
    proc = _spawn([postgres, "-D", str(data), "-p", str(port), "-k", str(sock),
                   "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                   "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                   "-c", "max_connections=50", *ssl], log, user=PG_USER)
    srv = DbServer("postgresql", proc, port, root, log, sockdir=sock, user="postgres",
                   dbname="postgres")
    psql = str(PG_BIN / "psql")

    def ready() -> bool:
        return _run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d",
                     "postgres", "-Atc", "SELECT 1"], timeout=10).stdout.strip() == "1"

    _wait_ready(srv, ready)
    return srv


# --------------------------------------------------------------------------------------
# MariaDB
# --------------------------------------------------------------------------------------


def start_mariadb(tls: bool = False) -> DbServer:
    """``tls``: the server offers TLS (a self-signed certificate)."""
    install = need(MARIADB_INSTALL_DB, "apt-get install mariadb-server")
    mariadbd = need(MARIADBD, "apt-get install mariadb-server")
    need(MYSQL_CLI, "apt-get install mariadb-client")
    root = _private_dir("mariadb")
    data = root / "data"
    sock = root / "mysqld.sock"
    log = root / "mariadbd.log"
    cp = _run([install, "--no-defaults", f"--datadir={data}", "--user=root",
               "--auth-root-authentication-method=normal", "--skip-test-db",
               "--skip-name-resolve"], timeout=120)
    if cp.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"mariadb-install-db failed ({cp.returncode}):\n{cp.stdout[-2000:]}\n"
                    f"{cp.stderr[-2000:]}", pytrace=False)
    port = free_port()
    ssl = []
    if tls:
        cert, key = _self_signed(root)
        ssl = [f"--ssl-cert={cert}", f"--ssl-key={key}"]
    proc = _spawn([mariadbd, "--no-defaults", *ssl, f"--datadir={data}", f"--port={port}",
                   f"--socket={sock}", "--bind-address=127.0.0.1", "--user=root",
                   f"--pid-file={root / 'mariadbd.pid'}", f"--log-error={log}",
                   "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0",
                   "--skip-log-bin"], log)
    srv = DbServer("mariadb", proc, port, root, log, socket=sock, user="root")

    def ready() -> bool:
        return _run([MYSQL_CLI, "--no-defaults", "-h", "127.0.0.1", "-P", str(port),
                     "-u", "root", "-N", "-e", "SELECT 1"], timeout=10).stdout.strip() == "1"

    _wait_ready(srv, ready, 60)
    return srv


# --------------------------------------------------------------------------------------
# Redis and memcached
# --------------------------------------------------------------------------------------


def start_redis(tls: bool = False) -> DbServer:
    """``tls``: TLS only (``--tls-port``, a self-signed certificate, no client
    certificates), as redis-cli ``--tls --insecure`` connects."""
    binary = need(REDIS_SERVER, "apt-get install redis-server")
    root = _private_dir("redis")
    log = root / "redis.log"
    port = free_port()
    listen = ["--port", str(port)]
    if tls:
        cert, key = _self_signed(root)
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
                  "--tls-key-file", key, "--tls-auth-clients", "no"]
    proc = _spawn([binary, *listen, "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(root), "--daemonize", "no"], log)
    srv = DbServer("redis", proc, port, root, log)

    def ready() -> bool:
        if tls:
            return _run([REDIS_CLI, "--tls", "--insecure", "-p", str(port), "PING"],
                        timeout=5).stdout.strip() == "PONG"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    _wait_ready(srv, ready)
    return srv


def start_memcached() -> DbServer:
    binary = need(MEMCACHED, "apt-get install memcached")
    root = _private_dir("memcached")
    log = root / "memcached.log"
    port = free_port()
    proc = _spawn([binary, "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-u", "nobody"],
                  log)
    srv = DbServer("memcached", proc, port, root, log)

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"version\r\n")
                return s.recv(64).startswith(b"VERSION")
        except OSError:
            return False

    _wait_ready(srv, ready)
    return srv


# --------------------------------------------------------------------------------------
# fixtures (module scope; import them into the test module)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server():
    srv = start_postgres()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mariadb_server():
    srv = start_mariadb()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pg_tls_server():
    srv = start_postgres(tls=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mariadb_tls_server():
    srv = start_mariadb(tls=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def redis_server():
    srv = start_redis()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def memcached_server():
    srv = start_memcached()
    yield srv
    srv.stop()
