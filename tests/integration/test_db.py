"""Database integration tests: the real agent observing real database clients.

Servers are the Debian binaries (PostgreSQL 15, MariaDB, Redis, memcached) started by
``dbservers.py`` on free ports with private data directories. Clients are real programs
and libraries: ``pgbench``, ``psql``, the ``mysql``/``mariadb`` CLI, ``redis-benchmark``,
``redis-cli``, psycopg 3, PyMySQL, mysql-connector-python, pymemcache (driven by
``peers/db_client.py``, selected by pid before it connects). The agent's OTLP is decoded
by the independent sink. Counts are exact, every test prints the figures it checks.

Numbers follow the test plan: 1 pgbench (simple / prepared), 2 psql errors, 3 secrets in
query text, 4 MariaDB, 5 Redis, 6 memcached, 7 DB calls nested in HTTP requests,
8 Prometheus ``db_client_operation_duration_seconds``, 9 operations the close left
unanswered, 10 sessions that negotiate TLS in the protocol.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from conftest import curl_get, free_port, report, stop_process, wait_port
from dbservers import (MYSQL_CLI, PG_BIN, REDIS_BENCHMARK, REDIS_CLI,  # noqa: F401
                       REDIS_SERVER, mariadb_server, mariadb_tls_server, memcached_server,
                       need, pg_server, pg_tls_server, redis_server, start_redis)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PGBENCH = str(PG_BIN / "pgbench")
PSQL = str(PG_BIN / "psql")
PROMTOOL = "/usr/bin/promtool"
SPAN_TIMEOUT = 15.0
SETTLE = 1.5
SECRET = "4111111111111111"  # same literal as peers/db_client.py
PG_SELECT_COUNT = "db_client_operation_duration_seconds_count"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def show(spans, limit: int = 60) -> str:
    lines = [f"  {s['kind']} {s['name']!r} pid={s['resource'].get('process.pid')} "
             f"status={s['status_code']} {s['status_message']!r} attrs={s['attrs']}"
             for s in spans[:limit]]
    if len(spans) > limit:
        lines.append(f"  ... {len(spans) - limit} more")
    return "\n".join(lines)


def names(spans) -> Counter:
    return Counter(s["name"] for s in spans)


def client_spans(pids=None, system: Optional[str] = None) -> Callable[[dict], bool]:
    """Predicate: CLIENT spans of a database ``system`` (of processes ``pids``)."""
    def pred(s):
        if s["kind"] != "CLIENT" or "db.system.name" not in s["attrs"]:
            return False
        if system is not None and s["attrs"]["db.system.name"] != system:
            return False
        return pids is None or s["resource"].get("process.pid") in pids
    return pred


def wait_db_spans(sink, want: int, pred: Callable[[dict], bool]) -> List[dict]:
    return sink.wait_for_spans(pred, want, SPAN_TIMEOUT, SETTLE)


def check_db_span(s: dict, system: str, port: int, instant: bool = False) -> None:
    """What every database CLIENT span must carry. ``instant``: a command with no
    answer (memcached noreply) ends when its write does; the socket hooks see only the
    write's end, so its span may last 0 ns."""
    a = s["attrs"]
    assert s["kind"] == "CLIENT", s
    assert a.get("db.system.name") == system, a
    assert a.get("server.address") == "127.0.0.1", a
    assert a.get("server.port") == port, a
    assert re.fullmatch(r"[0-9a-f]{32}", s["trace_id"]) and set(s["trace_id"]) != {"0"}, s
    assert re.fullmatch(r"[0-9a-f]{16}", s["span_id"]) and set(s["span_id"]) != {"0"}, s
    dur = s["end_ns"] - s["start_ns"]
    assert (0 <= dur if instant else 0 < dur) and dur < 10_000_000_000, \
        f"duration {dur} ns: {s}"
    assert abs(s["start_ns"] / 1e9 - time.time()) < 300, s


def run(cmd, timeout: float = 120, input: Optional[str] = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a real client program; returns the CompletedProcess plus its ``pid``."""
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE if input else
                         subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    cp = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    cp.pid = p.pid
    if check:
        assert p.returncode == 0, f"{cmd} exited {p.returncode}:\n{out[-2000:]}\n{err[-2000:]}"
    return cp


class Peer:
    """``peers/db_client.py SCENARIO PORT``: started (and selectable by pid) before it
    connects; ``go()`` lets it run and returns the JSON it printed."""

    def __init__(self, scenario: str, port: int):
        self.proc = subprocess.Popen([sys.executable, str(PEERS / "db_client.py"), scenario,
                                      str(port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read()
            raise RuntimeError(f"db_client.py {scenario} did not start: {line!r} {err}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self, timeout: float = 60) -> dict:
        out, err = self.proc.communicate("go\n", timeout=timeout)
        assert self.proc.returncode == 0, f"peer failed ({self.proc.returncode}):\n{out}\n{err}"
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def peers():
    started: List[Peer] = []

    def _start(scenario: str, port: int) -> Peer:
        p = Peer(scenario, port)
        started.append(p)
        return p

    yield _start
    for p in started:
        p.stop()


def pg_conn_args(pg) -> list:
    return ["-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]


def all_exported_text(sink, agent) -> str:
    """Everything the agent exported: OTLP spans (names, attributes, status messages,
    events, resources), OTLP metric points and the Prometheus exposition."""
    parts = [json.dumps(s, default=str) for s in sink.spans()]
    parts += [json.dumps(d, default=str) for d in sink.metrics()]
    parts.append(agent.metrics_text())
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# 1. pgbench: TPC-B, simple then prepared protocol
# --------------------------------------------------------------------------------------

TPCB = {  # span name -> statements per transaction of pgbench's built-in TPC-B script
    "BEGIN": 1,
    "UPDATE pgbench_accounts": 1,
    "SELECT pgbench_accounts": 1,
    "UPDATE pgbench_tellers": 1,
    "UPDATE pgbench_branches": 1,
    "INSERT pgbench_history": 1,
    "END": 1,
}


def _pgbench_run(sink, pg, mode: str, n: int) -> List[dict]:
    cp = run([PGBENCH, *pg_conn_args(pg), "-n", "-t", n, "-c", 1, "-M", mode, "postgres"])
    m = re.search(r"number of transactions actually processed: (\d+)", cp.stdout)
    assert m and int(m.group(1)) == n, cp.stdout  # precondition: pgbench did N
    want = n * sum(TPCB.values())
    spans = wait_db_spans(sink, want, client_spans({cp.pid}, "postgresql"))
    got = names(spans)
    for name, per_tx in TPCB.items():
        report(f"pgbench -M {mode} '{name}' spans", got.get(name, 0), n * per_tx)
    others = {k: v for k, v in got.items() if k not in TPCB}
    print(f"pgbench -M {mode} other spans (setup queries): " + str(Counter(
        (s["name"], s["attrs"].get("db.query.text", "")[:70]) for s in spans
        if s["name"] not in TPCB).most_common(5)))
    for name, per_tx in TPCB.items():
        assert got.get(name, 0) == n * per_tx, f"{name}: {got}\n{show(spans)}"
    # Besides the script, pgbench -n sends 2 queries: the partition info of
    # pgbench_accounts and the scale (count(*) of pgbench_branches).
    assert sum(others.values()) == 2, f"unexpected extra spans {others}"
    for s in spans:
        check_db_span(s, "postgresql", pg.port)
        assert s["attrs"].get("db.namespace") == "postgres", s["attrs"]
        assert s["status_code"] == "UNSET", s
    return [s for s in spans if s["name"] in TPCB]


def test_1_pgbench_simple_and_prepared(require_root, sink, start_agent, pg_server):
    pg = pg_server
    need(PGBENCH, "apt-get install postgresql-client-15")
    run([PGBENCH, *pg_conn_args(pg), "-i", "-s", 1, "-q", "postgres"])  # before the agent
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^pgbench$"})
    n = 40

    spans = _pgbench_run(sink, pg, "simple", n)
    upd = [s for s in spans if s["name"] == "UPDATE pgbench_accounts"]
    texts = [s["attrs"].get("db.query.text", "") for s in upd]
    sanitized = [t for t in texts if t.startswith("UPDATE pgbench_accounts SET abalance")
                 and "?" in t and not re.search(r"\d", t.replace("pgbench_", ""))]
    report("simple: UPDATE query texts with '?' and no literal numbers", len(sanitized), n)
    assert len(sanitized) == n, f"query texts: {texts[:5]}"
    sel = [s for s in spans if s["name"] == "SELECT pgbench_accounts"]
    rows = Counter(s["attrs"].get("db.response.returned_rows") for s in sel)
    report("simple: SELECT pgbench_accounts with returned_rows=1", rows.get(1, 0), n)
    assert rows == Counter({1: n}), rows
    ops = Counter((s["attrs"].get("db.operation.name"), s["attrs"].get("db.collection.name"))
                  for s in upd)
    assert ops == Counter({("UPDATE", "pgbench_accounts"): n}), ops

    sink.clear()
    spans = _pgbench_run(sink, pg, "prepared", n)
    # Every Execute: the statement text comes from the Parse sent once per statement.
    known = [s for s in spans if s["name"] not in ("BEGIN", "END")
             and s["attrs"].get("db.query.text", "").startswith(s["name"].split()[0])]
    report("prepared: Execute spans with the statement text", len(known), 5 * n)
    assert len(known) == 5 * n, show([s for s in spans if s not in known][:10])
    upd_texts = Counter(s["attrs"]["db.query.text"] for s in spans
                        if s["name"] == "UPDATE pgbench_accounts")
    print(f"prepared UPDATE texts: {dict(upd_texts)}")
    assert len(upd_texts) == 1, upd_texts  # one prepared statement -> one text


# --------------------------------------------------------------------------------------
# 2. psql: failing queries
# --------------------------------------------------------------------------------------


def test_2_psql_errors(require_root, sink, start_agent, pg_server):
    pg = pg_server
    need(PSQL, "apt-get install postgresql-client-15")
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^psql$"})
    cases = [  # (sql, span name, SQLSTATE or None)
        ("SELECT * FROM no_such_table", "SELECT no_such_table", "42P01"),
        ("SELECT 1/0", "SELECT", "22012"),
        ("SELECT datname FROM pg_database", "SELECT pg_database", None),
    ]
    pids = {}
    for sql, _, code in cases:
        cp = run([PSQL, *pg_conn_args(pg), "-d", "postgres", "-X", "-Atc", sql], check=False)
        assert (cp.returncode != 0) == (code is not None), (sql, cp.returncode, cp.stderr)
        pids[cp.pid] = (sql, code)
    spans = wait_db_spans(sink, len(cases), client_spans(set(pids), "postgresql"))
    report("psql spans", len(spans), len(cases))
    assert len(spans) == len(cases), show(spans)
    dbs = int(run([PSQL, *pg_conn_args(pg), "-d", "postgres", "-X", "-Atc",
                   "SELECT count(*) FROM pg_database"]).stdout)
    for s in spans:
        sql, code = pids[s["resource"]["process.pid"]]
        want_name = next(n for q, n, _ in cases if q == sql)
        check_db_span(s, "postgresql", pg.port)
        a = s["attrs"]
        label = f"psql {sql!r}:"
        report(f"{label} name", s["name"], want_name)
        assert s["name"] == want_name, s
        assert a.get("db.namespace") == "postgres", a
        if code:
            report(f"{label} status / db.response.status_code / error.type",
                   (s["status_code"], a.get("db.response.status_code"), a.get("error.type")),
                   ("ERROR", code, code))
            assert s["status_code"] == "ERROR", s
            assert a.get("db.response.status_code") == code, a
            assert a.get("error.type") == code, a
        else:
            report(f"{label} status / returned_rows", (s["status_code"],
                                                       a.get("db.response.returned_rows")),
                   ("UNSET", dbs))
            assert s["status_code"] == "UNSET" and "error.type" not in a, s
            assert a.get("db.response.returned_rows") == dbs, a


# --------------------------------------------------------------------------------------
# 3. psycopg: a secret literal never leaves the host (unless raw is asked for)
# --------------------------------------------------------------------------------------

PG_SECRET_SPANS = 5  # CREATE, INSERT, 2 SELECT, 1 failing SELECT (see db_client.py)


def test_3_psycopg_secret_literal(require_root, sink, start_agent, pg_server, peers):
    pg = pg_server
    # default (sanitized) mode
    peer = peers("pg_secret", pg.port)
    agent = start_agent({"AUTOTEL_PIDS": peer.pid, "OTEL_METRIC_EXPORT_INTERVAL": 500})
    out = peer.go()
    assert out == {"rows": 1, "ids": 1, "error": "22003", "ok": True}, out  # precondition
    spans = wait_db_spans(sink, PG_SECRET_SPANS, client_spans({peer.pid}, "postgresql"))
    report("psycopg spans (sanitized)", len(spans), PG_SECRET_SPANS)
    assert len(spans) == PG_SECRET_SPANS, show(spans)
    points = sink.wait_for_metrics(lambda d: d["name"] == "db.client.operation.duration",
                                   1, 5.0)  # an OTLP metrics export happened too
    report("OTLP db.client.operation.duration points received", min(len(points), 1), 1)
    assert points, "no OTLP metric export of db.client.operation.duration"
    text = all_exported_text(sink, agent)
    report("secret occurrences in OTLP spans+metrics and /metrics", text.count(SECRET), 0)
    assert SECRET not in text, [l for l in text.splitlines() if SECRET in l][:5]
    got = names(spans)
    assert got["SELECT t"] == 3 and got["INSERT t"] == 1, got
    err = [s for s in spans if s["status_code"] == "ERROR"]
    assert [s["attrs"].get("db.response.status_code") for s in err] == ["22003"], show(spans)
    sel = [s["attrs"].get("db.query.text") for s in spans if s["name"] == "SELECT t"]
    assert all(t and "?" in t for t in sel), sel
    err = [s for s in spans if s["status_code"] == "ERROR"]
    assert err[0]["status_message"] == "", err  # the server's message quotes the value
    agent.stop()

    # raw mode: the same scenario must show the literal (the check above can fail)
    sink.clear()
    peer = peers("pg_secret", pg.port)
    agent = start_agent({"AUTOTEL_PIDS": peer.pid, "AUTOTEL_DB_QUERY_TEXT": "raw"})
    assert peer.go()["ok"]
    spans = wait_db_spans(sink, PG_SECRET_SPANS, client_spans({peer.pid}, "postgresql"))
    with_secret = [s for s in spans if SECRET in s["attrs"].get("db.query.text", "")]
    report("raw mode: spans whose db.query.text holds the secret", len(with_secret), 4)
    assert len(with_secret) == 4, show(spans)

    # off: no db.query.text at all
    agent.stop()
    sink.clear()
    peer = peers("pg_secret", pg.port)
    start_agent({"AUTOTEL_PIDS": peer.pid, "AUTOTEL_DB_QUERY_TEXT": "off"})
    assert peer.go()["ok"]
    spans = wait_db_spans(sink, PG_SECRET_SPANS, client_spans({peer.pid}, "postgresql"))
    with_text = [s for s in spans if "db.query.text" in s["attrs"]]
    report("off mode: spans / spans with db.query.text", (len(spans), len(with_text)),
           (PG_SECRET_SPANS, 0))
    assert len(spans) == PG_SECRET_SPANS and not with_text, show(spans)


# --------------------------------------------------------------------------------------
# 4. MariaDB: mysql CLI, PyMySQL, server-side prepared statements
# --------------------------------------------------------------------------------------


def mysql_cli(db, *args, sql: str, check=True) -> subprocess.CompletedProcess:
    return run([MYSQL_CLI, "--no-defaults", "-h", "127.0.0.1", "-P", db.port, "-u", "root",
                *args, "-e", sql], check=check)


def test_4_mariadb(require_root, sink, start_agent, mariadb_server, peers):
    db = mariadb_server
    mysql_cli(db, sql="DROP DATABASE IF EXISTS autotel; CREATE DATABASE autotel; "
                      "CREATE TABLE autotel.items (id INT PRIMARY KEY, name VARCHAR(40)); "
                      "INSERT INTO autotel.items VALUES (1,'one'),(2,'two'),(3,'three')")
    py = peers("mysql_pymysql", db.port)
    prep = peers("mysql_prepared", db.port)
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^(mysql|mariadb)$",
                 "AUTOTEL_PIDS": f"{py.pid},{prep.pid}"})

    # --- the mysql CLI, one statement per process (batch mode: no extra queries)
    ok = mysql_cli(db, "-D", "autotel", sql="SELECT name FROM items WHERE id = 2")
    bad = mysql_cli(db, "-D", "autotel", sql="SELECT * FROM no_such_table", check=False)
    assert ok.stdout.split() == ["name", "two"] and "1146" in bad.stderr, (ok, bad.stderr)
    cli = wait_db_spans(sink, 2, client_spans({ok.pid, bad.pid}))
    report("mysql CLI spans", len(cli), 2)
    assert len(cli) == 2, show(cli)
    for s in cli:
        check_db_span(s, "mariadb", db.port)
        assert s["attrs"].get("db.namespace") == "autotel", s["attrs"]
    s_ok = next(s for s in cli if s["resource"]["process.pid"] == ok.pid)
    s_bad = next(s for s in cli if s["resource"]["process.pid"] == bad.pid)
    report("mysql CLI ok: name / rows", (s_ok["name"], s_ok["attrs"].get(
        "db.response.returned_rows")), ("SELECT items", 1))
    assert s_ok["name"] == "SELECT items" and s_ok["status_code"] == "UNSET", s_ok
    assert s_ok["attrs"].get("db.response.returned_rows") == 1, s_ok
    assert s_ok["attrs"].get("db.query.text") == "SELECT name FROM items WHERE id = ?", s_ok
    report("mysql CLI missing table: status / code", (s_bad["status_code"], s_bad["attrs"].get(
        "db.response.status_code"), s_bad["attrs"].get("error.type")), ("ERROR", "1146", "1146"))
    assert s_bad["status_code"] == "ERROR", s_bad
    assert s_bad["attrs"].get("db.response.status_code") == "1146", s_bad
    assert s_bad["attrs"].get("error.type") == "1146", s_bad

    # --- PyMySQL (COM_QUERY)
    out = py.go()
    assert out == {"rows": 2, "error": 1146, "ok": True}, out
    # PyMySQL sends `SET NAMES utf8mb4` after the handshake, then our 4 statements
    # (checked with the server's general log).
    spans = wait_db_spans(sink, 5, client_spans({py.pid}))
    got = names(spans)
    print(f"pymysql spans: {dict(got)}")
    want = Counter({"SET": 1, "INSERT items": 2, "SELECT items": 1, "SELECT no_such_table": 1})
    report("pymysql spans", len(spans), 5)
    assert got == want, show(spans)
    for s in spans:
        check_db_span(s, "mariadb", db.port)
    err = [s for s in spans if s["status_code"] == "ERROR"]
    assert [(s["name"], s["attrs"].get("db.response.status_code")) for s in err] == \
        [("SELECT no_such_table", "1146")], show(spans)

    # --- mysql-connector-python prepared cursor: 1 COM_STMT_PREPARE + 3 EXECUTE
    out = prep.go()
    assert out["names"] == ["one", "two", "three"], out
    # Server's general log: SET NAMES, SET autocommit, Prepare, 3 x (Reset stmt,
    # Execute), Close stmt. Executes and queries are checked exactly; how the agent
    # shows Prepare/Reset/Close is printed.
    spans = wait_db_spans(sink, 5, client_spans({prep.pid}))
    print(f"mysql-connector spans:\n{show(spans)}")
    sets = [s for s in spans if s["attrs"].get("db.operation.name") == "SET"]
    report("mysql-connector SET spans", len(sets), 2)
    assert len(sets) == 2, show(spans)
    execs = [s for s in spans if s["name"] == "SELECT items"]
    report("prepared EXECUTE spans named 'SELECT items'", len(execs), 3)
    assert len(execs) == 3, show(spans)
    texts = Counter(s["attrs"].get("db.query.text") for s in execs)
    report("prepared EXECUTE spans with the PREPARE's text",
           texts.get("SELECT name FROM items WHERE id = ?", 0), 3)
    assert texts == Counter({"SELECT name FROM items WHERE id = ?": 3}), texts
    assert all(s["attrs"].get("db.response.returned_rows") == 1 for s in execs), show(execs)


def test_4_mariadb_compressed_protocol(require_root, sink, start_agent, mariadb_server):
    """``mysql --compress``: after the login every packet travels in a compressed
    frame (zlib, or as is when small). The statements, their errors and row counts
    read the same as uncompressed, on the client (the CLI) and on the server, also
    for a result far larger than one capture (whose rows the server's writes show)."""
    db = mariadb_server
    mysql_cli(db, sql="DROP DATABASE IF EXISTS autotel; CREATE DATABASE autotel; "
                      "CREATE TABLE autotel.items (id INT PRIMARY KEY, name VARCHAR(40)); "
                      "INSERT INTO autotel.items VALUES (1,'one'),(2,'two'),(3,'three')")
    start_agent({}, config_yaml=("discovery:\n  services:\n"
                                 f"    - name: db\n      open_ports: {db.port}\n"
                                 "    - name: cli\n      executable_name: \"^(mysql|mariadb)$\"\n"))
    sql = ("SELECT name FROM items WHERE id <= 2;\nSELECT * FROM no_such_table;\n"
           "SELECT seq, repeat('z', 30) FROM seq_1_to_3000;\n")
    out = run([MYSQL_CLI, "--no-defaults", "-h", "127.0.0.1", "-P", db.port, "-u", "root",
               "--compress", "-D", "autotel", "--force"], input=sql)
    assert "1146" in out.stderr and out.stdout.count("z" * 30) == 3000, out.stderr

    def mine(s):
        text = s["attrs"].get("db.query.text", "")
        return s["attrs"].get("db.system.name") == "mariadb" and any(
            t in text for t in ("seq_1_to_3000", "FROM items", "no_such_table"))
    spans = wait_db_spans(sink, 6, mine)
    big = "SELECT seq, repeat(?, ?) FROM seq_1_to_3000"

    def rows(s):
        n = s["attrs"].get("db.response.returned_rows")
        # The CLI may read the 3000 rows in calls larger than a capture (it did
        # here, not in CI): the rows of a frame's uncaptured part are then not
        # counted, and the span says so by having no count (as uncompressed).
        if s["kind"] == "CLIENT" and s["attrs"].get("db.query.text") == big and n is None:
            return 3000
        return n
    got = Counter((s["kind"], s["attrs"].get("db.query.text"), rows(s),
                   s["attrs"].get("db.response.status_code")) for s in spans)
    print(f"spans of the compressed session: {dict(got)}")
    want = Counter()
    for kind in ("CLIENT", "SERVER"):
        want[(kind, "SELECT name FROM items WHERE id <= ?", 2, None)] = 1
        want[(kind, "SELECT * FROM no_such_table", None, "1146")] = 1
        want[(kind, big, 3000, None)] = 1
    for kind in ("CLIENT", "SERVER"):
        report(f"{kind} spans of the compressed session",
               sum(v for k, v in got.items() if k[0] == kind and k in want), 3)
    assert got == want, show(spans)


# --------------------------------------------------------------------------------------
# 5. Redis: redis-benchmark (with and without pipelining), errors, MULTI/EXEC
# --------------------------------------------------------------------------------------


def redis_commandstats(rd) -> Counter:
    """Server-side ground truth: calls per command since the last CONFIG RESETSTAT."""
    out = run([REDIS_CLI, "-p", rd.port, "INFO", "commandstats"]).stdout
    return Counter({m.group(1).upper(): int(m.group(2))
                    for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)", out)})


@pytest.mark.parametrize("pipeline,n", [(1, 200), (16, 208)])
def test_5_redis_benchmark(require_root, sink, start_agent, redis_server, pipeline, n):
    # -n must be a multiple of -P: redis-benchmark issues whole pipelines (200 with -P 16
    # would send 13 batches = 208 commands).
    rd = redis_server
    need(REDIS_BENCHMARK, "apt-get install redis-tools")
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^redis-benchmark$"})
    run([REDIS_CLI, "-p", rd.port, "CONFIG", "RESETSTAT"])
    cp = run([REDIS_BENCHMARK, "-h", "127.0.0.1", "-p", rd.port, "-n", n, "-c", 4,
              "-P", pipeline, "-t", "set,get", "-q"])
    truth = redis_commandstats(rd)
    assert truth["SET"] == n and truth["GET"] == n, (truth, cp.stdout)  # precondition
    bench_total = sum(v for k, v in truth.items() if k not in ("INFO", "CONFIG|RESETSTAT",
                                                              "CONFIG"))
    spans = wait_db_spans(sink, 2 * n, client_spans({cp.pid}, "redis"))
    got = names(spans)
    report(f"-P {pipeline}: SET spans", got["SET"], n)
    report(f"-P {pipeline}: GET spans", got["GET"], n)
    print(f"-P {pipeline}: all span names {dict(got)}, server commandstats {dict(truth)}")
    assert got["SET"] == n and got["GET"] == n, got
    # the rest (CONFIG GET save/appendonly at start) must match what the server counted
    report(f"-P {pipeline}: all spans vs commands the server counted (minus RESETSTAT/INFO)",
           len(spans), bench_total)
    assert len(spans) == bench_total, (got, truth)
    for s in spans:
        check_db_span(s, "redis", rd.port)
        assert s["status_code"] == "UNSET", s
    sets = [s for s in spans if s["name"] == "SET"]
    assert all(s["attrs"].get("db.operation.name") == "SET" for s in sets)
    texts = Counter(s["attrs"].get("db.query.text") for s in sets)
    assert texts == Counter({"SET key:__rand_int__ ?": n}), texts


def test_5_redis_cli_errors_and_transaction(require_root, sink, start_agent, redis_server):
    rd = redis_server
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^redis-cli$"})
    r = lambda *a, **kw: run([REDIS_CLI, "-p", rd.port, *a], **kw)  # noqa: E731
    runs = {
        r("SET", "s", "secret-value").pid: ("SET", "UNSET", None),
        r("INCR", "s").pid: ("INCR", "ERROR", "ERR"),  # not an integer
        r("LPUSH", "s", "x").pid: ("LPUSH", "ERROR", "WRONGTYPE"),
    }
    # redis-cli reading commands from stdin first fetches COMMAND DOCS (for its hints),
    # then sends each line: MULTI, SET, INCR, EXEC.
    tx = r(input="MULTI\nSET counter 10\nINCR counter\nEXEC\n")
    assert tx.stdout.split() == ["OK", "QUEUED", "QUEUED", "OK", "11"], tx.stdout
    spans = wait_db_spans(sink, 8, client_spans(set(runs) | {tx.pid}, "redis"))
    report("redis-cli spans", len(spans), 8)
    assert len(spans) == 8, show(spans)
    for s in spans:
        check_db_span(s, "redis", rd.port)
        # the value never appears in the span (argv, thus process.command_line, has it)
        assert "secret-value" not in json.dumps([s["name"], s["attrs"], s["status_message"]]), s
    for pid, (name, status, code) in runs.items():
        s = next(s for s in spans if s["resource"]["process.pid"] == pid)
        got = (s["name"], s["status_code"], s["attrs"].get("db.response.status_code"),
               s["attrs"].get("error.type"))
        report(f"redis-cli {name}", got, (name, status, code, code))
        assert got == (name, status, code, code), s
    set_span = next(s for s in spans if s["name"] == "SET"
                    and s["resource"]["process.pid"] in runs)
    assert set_span["attrs"].get("db.query.text") == "SET s ?", set_span
    txn = [s["name"] for s in sorted((s for s in spans if s["resource"]["process.pid"] == tx.pid),
                                      key=lambda s: s["start_ns"])]
    report("stdin redis-cli spans in order", txn, ["COMMAND", "MULTI", "SET", "INCR", "EXEC"])
    assert len(txn) == 5 and re.fullmatch(r"COMMAND( DOCS)?", txn[0]), txn
    assert txn[1:] == ["MULTI", "SET", "INCR", "EXEC"], txn


@pytest.mark.parametrize("named", [False, True], ids=["executable", "services-rule"])
def test_5_redis_cli_through_exec_wrapper(require_root, sink, start_agent, redis_server, named):
    """``env redis-cli ...``: env execs redis-cli a fraction of a millisecond after its
    own exec, and redis-cli is gone a millisecond later. By the time the agent reads
    env's exec event, /proc may already show redis-cli's argv, which must not count
    as env's (the span was then named after env); and redis-cli's data can reach the
    agent before its own exec event. Two busy loops keep the agent's reader late, as
    on a loaded host. Every run must yield one span named redis-cli, none named env.
    With a ``services`` rule naming redis-cli, every span carries the rule's name,
    also those built before discovery has seen the process."""
    rd = redis_server
    want = "cache-client" if named else "redis-cli"
    if named:
        start_agent({}, config_yaml=("discovery:\n  services:\n    - name: cache-client\n"
                                     "      executable_name: \"^redis-cli$\"\n"))
    else:
        start_agent({"AUTOTEL_EXECUTABLE_NAME": "^redis-cli$"})
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    pids = set()
    try:
        # bash starts each batch at once, as a script or a cron burst would.
        batch = (f"for j in 1 2 3 4; do env {REDIS_CLI} -p {rd.port} INCR n >/dev/null & "
                 "echo $!; done; wait")
        for _ in range(100):
            out = run(["bash", "-c", batch])
            pids |= {int(p) for p in out.stdout.split()}
    finally:
        for h in hogs:
            stop_process(h)
    spans = wait_db_spans(sink, len(pids), client_spans(pids, "redis"))
    names = Counter(s["resource"].get("service.name") for s in spans)
    print(f"service names of the redis-cli spans: {dict(names)}")
    report("spans of env-wrapped redis-cli runs", len(spans), len(pids))
    report(f"of them named {want}", names.get(want, 0), len(pids))
    assert names == Counter({want: len(pids)}), names
    assert {s["resource"]["process.pid"] for s in spans} == pids


def test_5_redis_server_named_as_started(require_root, sink, start_agent, redis_server):
    """Debian's ``redis-server`` is a symlink to the multi-call ``redis-check-rdb``,
    which acts by the name it was started by. The service is ``redis-server``, both for
    a server running before the agent (named from argv[0], which redis rewrites into a
    title) and for one started after it (named from its exec); the executable keeps its
    own name in ``process.executable.name``."""
    real = Path(REDIS_SERVER).resolve().name
    print(f"{REDIS_SERVER} -> {real}")
    start_agent({"AUTOTEL_EXECUTABLE_NAME": "^redis-server$"})
    later = start_redis()
    try:
        servers = {redis_server.proc.pid: redis_server, later.proc.pid: later}
        for rd in servers.values():
            run([REDIS_CLI, "-p", rd.port, "SET", "k", "v"])

        def pred(s):
            return (s["kind"] == "SERVER" and s["name"] == "SET"
                    and s["resource"].get("process.pid") in servers)
        spans = wait_db_spans(sink, 2, pred)
    finally:
        later.stop()
    got = {s["resource"]["process.pid"]: (s["resource"].get("service.name"),
                                         s["resource"].get("process.executable.name"))
           for s in spans}
    print(f"(service.name, process.executable.name) by pid: {got}")
    report("redis servers named redis-server", sum(n == "redis-server" for n, _ in
                                                    got.values()), 2)
    assert got == {pid: ("redis-server", real) for pid in servers}, got


# --------------------------------------------------------------------------------------
# 6. memcached (pymemcache)
# --------------------------------------------------------------------------------------


def test_6_memcached(require_root, sink, start_agent, memcached_server, peers):
    mc = memcached_server
    peer = peers("memcached", mc.port)
    start_agent({"AUTOTEL_PIDS": peer.pid})
    out = peer.go()
    assert out == {"hit": "value-1", "miss": None, "many": ["k1", "k2", "k3"],
                   "deleted": True, "deleted_missing": False, "ok": True}, out
    spans = wait_db_spans(sink, 10, client_spans({peer.pid}, "memcached"))
    got = names(spans)
    for name, want in (("set", 5), ("get", 3), ("delete", 2)):
        report(f"memcached '{name}' spans", got[name], want)
    assert got == Counter({"set": 5, "get": 3, "delete": 2}), show(spans)
    # The two noreply sets (keys n1, n2) have no answer to wait for.
    noreply = [s for s in spans if s["attrs"].get("db.query.text", "").startswith("set n")]
    report("memcached noreply set spans", len(noreply), 2)
    assert len(noreply) == 2, show(spans)
    for s in spans:
        check_db_span(s, "memcached", mc.port, instant=s in noreply)
        assert "value-" not in json.dumps(s["attrs"]), s  # values never exported
    gets = sorted((s for s in spans if s["name"] == "get"), key=lambda s: s["start_ns"])
    rows = [s["attrs"].get("db.response.returned_rows") for s in gets]
    report("get returned_rows (hit, miss, get_many)", rows, [1, 0, 3])
    assert rows == [1, 0, 3], show(gets)


# --------------------------------------------------------------------------------------
# 7. DB calls made while serving HTTP are children of the server span
# --------------------------------------------------------------------------------------


def test_7_nested_in_http(require_root, sink, start_agent, pg_server, tmp_path):
    pg = pg_server
    port = free_port()
    log = open(tmp_path / "app.log", "wb")
    app = subprocess.Popen([sys.executable, str(PEERS / "db_http_app.py"), str(port),
                            str(pg.port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                           start_new_session=True)
    log.close()
    try:
        wait_port(port, 15, app)
        start_agent({"AUTOTEL_PIDS": app.pid})
        k = 8
        for i in range(k):
            r = curl_get(f"http://127.0.0.1:{port}/q/{i}")
            assert r["code"] == 200, r
        want = 3 * k
        spans = sink.wait_for_spans(lambda s: s["resource"].get("process.pid") == app.pid,
                                    want, SPAN_TIMEOUT, SETTLE)
        servers = [s for s in spans if s["kind"] == "SERVER"]
        dbs = [s for s in spans if client_spans({app.pid}, "postgresql")(s)]
        report("server spans", len(servers), k)
        report("postgresql client spans", len(dbs), 2 * k)
        assert len(servers) == k and len(dbs) == 2 * k and len(spans) == want, show(spans)
        by_id = {s["span_id"]: s for s in servers}
        nested = named = 0
        for srv in servers:
            kids = [d for d in dbs if d["parent_span_id"] == srv["span_id"]]
            nested += (len(kids) == 2 and all(d["trace_id"] == srv["trace_id"] for d in kids)
                       and all(srv["start_ns"] <= d["start_ns"] and d["end_ns"] <= srv["end_ns"]
                               for d in kids))
            named += sorted(d["name"] for d in kids) == ["SELECT", "SELECT pg_database"]
        orphans = [d for d in dbs if d["parent_span_id"] not in by_id]
        report("server spans with exactly 2 DB children (same trace, within its time)",
               nested, k)
        report("DB spans without a server parent", len(orphans), 0)
        report("server spans whose children are 'SELECT' + 'SELECT pg_database'", named, k)
        assert nested == k and not orphans, show(spans)
        assert named == k, show(dbs)
    finally:
        stop_process(app)


# --------------------------------------------------------------------------------------
# 8. Prometheus: db_client_operation_duration_seconds
# --------------------------------------------------------------------------------------


def test_8_prometheus_db_metric(require_root, sink, start_agent, pg_server):
    pg = pg_server
    need(PROMTOOL, "apt-get install prometheus")
    agent = start_agent({"AUTOTEL_EXECUTABLE_NAME": "^psql$"})
    m = 6
    pids = set()
    for i in range(m):
        pids.add(run([PSQL, *pg_conn_args(pg), "-d", "postgres", "-X", "-Atc",
                      f"SELECT {i} FROM pg_database LIMIT 1"]).pid)
    pids.add(run([PSQL, *pg_conn_args(pg), "-d", "postgres", "-X", "-Atc",
                  "SELECT * FROM no_such_table"], check=False).pid)
    spans = wait_db_spans(sink, m + 1, client_spans(pids, "postgresql"))
    sel = [s for s in spans if s["attrs"].get("db.operation.name") == "SELECT"]
    report("postgresql SELECT spans", len(sel), m + 1)
    assert len(sel) == m + 1, show(spans)
    time.sleep(0.5)
    labels = {"db_system_name": "postgresql", "db_operation_name": "SELECT"}
    total = agent.prom_value(PG_SELECT_COUNT, labels)
    report(f"{PG_SELECT_COUNT}{{postgresql,SELECT}}", total, len(sel))
    assert total == len(sel), agent.metrics_text()
    failed = agent.prom_value(PG_SELECT_COUNT, {**labels, "error_type": "42P01"})
    report(f"{PG_SELECT_COUNT}{{error_type=42P01}}", failed, 1)
    assert failed == 1, agent.metrics_text()
    text = agent.metrics_text()
    assert "# EOF" not in text
    cp = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                        text=True, timeout=30)
    out = (cp.stdout + cp.stderr).strip()
    print(f"promtool check metrics: exit {cp.returncode}\n{out}")
    report("promtool check metrics exit code", cp.returncode, 0)
    assert cp.returncode == 0, out


# --------------------------------------------------------------------------------------
# 9. An operation the close left unanswered still gets its span
# --------------------------------------------------------------------------------------


def kill_while_waiting(cmd, wait: float) -> int:
    """Starts a real client that blocks on its server's answer, lets it wait ``wait``
    seconds, ends it with SIGTERM (its connection closes in its exit) and returns its
    pid."""
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(wait)
    assert p.poll() is None, f"{cmd} did not wait: {p.communicate()}"  # precondition
    p.terminate()
    p.communicate(timeout=10)
    return p.pid


@pytest.mark.parametrize("system", ["redis", "postgresql", "mariadb"])
def test_9_operation_the_client_gave_up_on(require_root, sink, start_agent, request, system):
    """A client ended while it waits for its answer: redis-cli blocked in BLPOP on an
    empty list, psql and the mysql CLI in a sleeping SELECT. The connection closes
    with the command unanswered, and the command still gets its CLIENT span: ERROR,
    ``error.type=no_response`` (no server status code), lasting until the close. Redis
    notices the close at once, so its SERVER span reads the same. The Prometheus
    histogram counts the operation under that error type."""
    wait = 1.0
    if system == "redis":
        srv = request.getfixturevalue("redis_server")
        cli, op, text = "^redis-cli$", "BLPOP", "BLPOP autotel:never-filled ?"
        cmd = [REDIS_CLI, "-p", srv.port, "BLPOP", "autotel:never-filled", "0"]
    elif system == "postgresql":
        srv = request.getfixturevalue("pg_server")
        cli, op, text = "^psql$", "SELECT", "SELECT pg_sleep(?)"
        cmd = [PSQL, *pg_conn_args(srv), "-d", "postgres", "-X", "-Atc", "SELECT pg_sleep(8)"]
    else:
        srv = request.getfixturevalue("mariadb_server")
        cli, op, text = "^(mysql|mariadb)$", "SELECT", "SELECT SLEEP(?)"
        cmd = [MYSQL_CLI, "--no-defaults", "-h", "127.0.0.1", "-P", srv.port, "-u", "root",
               "-e", "SELECT SLEEP(8)"]
    agent = start_agent({}, config_yaml=(
        "discovery:\n  services:\n"
        f"    - name: db\n      open_ports: {srv.port}\n"
        f"    - name: cli\n      executable_name: \"{cli}\"\n"))
    pid = kill_while_waiting(cmd, wait)

    def mine(s):
        return (s["attrs"].get("db.query.text") == text
                and (s["kind"] == "SERVER" or s["resource"].get("process.pid") == pid))
    # Redis answers nothing, so its server span is due as soon as the client is gone;
    # PostgreSQL and MariaDB sleep on and answer into the closed connection.
    want_kinds = {"CLIENT", "SERVER"} if system == "redis" else {"CLIENT"}
    spans = wait_db_spans(sink, len(want_kinds), mine)
    got = {s["kind"]: s for s in spans}
    report(f"{system}: spans of the abandoned {op}", sorted(got), sorted(want_kinds))
    assert want_kinds <= set(got), show(spans)
    for kind in sorted(want_kinds):
        s = got[kind]
        a = s["attrs"]
        seen = (s["name"].split()[0], s["status_code"], a.get("error.type"),
                a.get("db.response.status_code"))
        report(f"{system} {kind} (name, status, error.type, status code)", seen,
               (op, "ERROR", "no_response", None))
        assert seen == (op, "ERROR", "no_response", None), show(spans)
        # From the request to the close: the wait, not the sleep the server went on with.
        dur = (s["end_ns"] - s["start_ns"]) / 1e9
        report(f"{system} {kind} span seconds (about {wait})", round(dur, 2), wait)
        assert 0.8 * wait < dur < 5, show([s])
    time.sleep(0.5)
    labels = {"db_system_name": system, "error_type": "no_response"}
    count = agent.prom_value(PG_SELECT_COUNT, labels)
    report(f"{PG_SELECT_COUNT}{{{system}, error_type=no_response}}", count, 1)
    assert count == 1, agent.metrics_text()


# --------------------------------------------------------------------------------------
# 10. Sessions that negotiate TLS in the protocol
# --------------------------------------------------------------------------------------


@pytest.fixture
def redis_tls_server():
    srv = start_redis(tls=True)
    yield srv
    srv.stop()


@pytest.mark.parametrize("system", ["postgresql", "mariadb", "redis"])
def test_10_session_inside_tls(require_root, sink, start_agent, request, system):
    """PostgreSQL's SSLRequest and MySQL's SSL login request turn a session into TLS
    after a few plaintext bytes (libpq does it by default when the server offers TLS,
    as Debian's clusters do; MySQL 8 clients too). The statements then travel inside
    TLS: the OpenSSL probes of the client (psql, the mysql CLI) and of the server read
    them, and the session's parser goes on with that plaintext. Each statement gets its
    CLIENT and SERVER span, with the TLS version of the session (before: no span).
    Redis speaks TLS from the first byte (``--tls-port``) and is read the same way."""
    if system == "redis":
        srv = request.getfixturevalue("redis_tls_server")
        cli = "^redis-cli$"
        cmd = [REDIS_CLI, "--tls", "--insecure", "-p", srv.port, "RPUSH", "tls:list", "a"]
        text = "RPUSH tls:list ?"
        secured = "1"  # the list's length; the connection was TLS: the port speaks nothing else
    elif system == "postgresql":
        srv = request.getfixturevalue("pg_tls_server")
        cli = "^psql$"
        sql = "SELECT 'tls' AS t, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        cmd = [PSQL, f"host=127.0.0.1 port={srv.port} user=postgres dbname=postgres "
               "sslmode=require", "-X", "-Atc", sql]
        text = "SELECT ? AS t, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        secured = "tls|t"
    else:
        srv = request.getfixturevalue("mariadb_tls_server")
        cli = "^(mysql|mariadb)$"
        sql = "SELECT 'tls' AS t, VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS " \
              "WHERE VARIABLE_NAME = 'Ssl_cipher'"
        cmd = [MYSQL_CLI, "--no-defaults", "--ssl", "-h", "127.0.0.1", "-P", srv.port,
               "-u", "root", "-N", "-B", "-e", sql]
        text = ("SELECT ? AS t, VARIABLE_VALUE <> ? FROM information_schema.SESSION_STATUS "
                "WHERE VARIABLE_NAME = ?")
        secured = "tls\t1"
    start_agent({}, config_yaml=(
        "discovery:\n  services:\n"
        f"    - name: db\n      open_ports: {srv.port}\n"
        f"    - name: cli\n      executable_name: \"{cli}\"\n"))
    out = run(cmd)
    assert out.stdout.strip() == secured, (out.stdout, out.stderr)  # precondition: TLS

    def mine(s):
        return s["attrs"].get("db.query.text") == text
    spans = wait_db_spans(sink, 2, mine)
    rows = None if system == "redis" else 1
    got = sorted((s["kind"], s["attrs"].get("db.system.name"),
                  s["attrs"].get("db.response.returned_rows"),
                  s["attrs"].get("tls.protocol.version") is not None) for s in spans)
    want = [(kind, system, rows, True) for kind in ("CLIENT", "SERVER")]
    report(f"{system} spans of the statement inside TLS (kind, system, rows, tls version)",
           got, want)
    assert got == want, show(spans)
