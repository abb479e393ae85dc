"""Two-host topologies for the network tests: two network namespaces joined by a veth
pair, built with the real ``ip`` / ``tc`` / ``sysctl`` tools. Packet loss is made with
``tc`` (clsact + classic-BPF filter + mirred to a down veth, see ``Topology.drop``):
this kernel has no netem.

    namespace A (10.200.<n>.1/24, dev <va>)  <==== veth ====>  namespace B (10.200.<n>.2/24, dev <vb>)

Names and the subnet are unique per topology (pid of the test run + a counter), so
several tests (and several concurrent runs) never collide. ``Topology.cleanup`` kills
every process started in the namespaces, removes /etc/netns/<ns>/ files and deletes
both namespaces (which destroys the veth pairs and any qdisc/filter on them); the ``two_hosts``
fixture calls it in its finalizer, so it also runs when a test fails.

The agent runs in the root namespace; its kernel probes see every namespace.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
_counter = itertools.count()


def sh(cmd: Sequence[str], timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (no shell), capture its output, fail loudly with it."""
    cp = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {cp.returncode}\n"
                           f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
    return cp


class Topology:
    """Two namespaces ``a`` and ``b`` linked by a veth pair (``va`` in a, ``vb`` in b)."""

    def __init__(self, tag: str = "t"):
        k = next(_counter)
        uid = f"{os.getpid() % 100000}{k}"
        # The subnet only has to be unique among our own live topologies (each pair lives
        # in its own two namespaces), but a per-run value also keeps concurrent runs'
        # metrics (network.peer.address) apart.
        self.n = (os.getpid() * 7 + k) % 250 + 1
        self.a = f"at{tag}{uid}a"
        self.b = f"at{tag}{uid}b"
        self.va = f"va{uid}"[:15]
        self.vb = f"vb{uid}"[:15]
        self.ip_a = f"10.200.{self.n}.1"
        self.ip_b = f"10.200.{self.n}.2"
        self.procs: List[subprocess.Popen] = []
        self.etc_dirs: List[Path] = []
        self.created: List[str] = []

    # ---- lifecycle -------------------------------------------------------------------
    def create(self) -> "Topology":
        for ns in (self.a, self.b):
            sh([IP, "netns", "add", ns])
            self.created.append(ns)
        sh([IP, "link", "add", self.va, "netns", self.a, "type", "veth",
            "peer", "name", self.vb, "netns", self.b])
        for ns, dev, addr in ((self.a, self.va, self.ip_a), (self.b, self.vb, self.ip_b)):
            sh([IP, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            sh([IP, "-n", ns, "link", "set", dev, "up"])
            sh([IP, "-n", ns, "link", "set", "lo", "up"])
        # Reachability check (also warms up neighbour resolution): a TCP connect to a
        # closed port of B must be answered with a RST (ECONNREFUSED) at once.
        probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(3)\n"
                 "try:\n    s.connect((sys.argv[1], 9))\nexcept ConnectionRefusedError:\n"
                 "    print('refused')\n")
        cp = self.run(self.a, [sys.executable, "-c", probe, self.ip_b], check=False)
        if cp.stdout.strip() != "refused":
            raise RuntimeError(f"veth pair {self.va}<->{self.vb} does not pass traffic: "
                               f"{cp.stdout} {cp.stderr}")
        return self

    def cleanup(self) -> None:
        for p in self.procs:
            stop(p)
        for d in self.etc_dirs:
            if d == Path("/etc/netns"):
                try:
                    d.rmdir()  # only if empty: another run may be using it
                except OSError:
                    pass
            else:
                shutil.rmtree(d, ignore_errors=True)
        for ns in self.created:
            # Any process still inside keeps the namespace's network alive: kill them
            # (by pid; only processes inside OUR namespace are listed).
            cp = sh([IP, "netns", "pids", ns], check=False)
            for pid in cp.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh([IP, "netns", "del", ns], check=False)
        self.created.clear()

    # ---- running things inside -------------------------------------------------------
    @staticmethod
    def cmd(ns: str, argv: Sequence[str]) -> List[str]:
        """``ip netns exec NS argv...`` (ip execs argv: the pid is argv's own)."""
        return [IP, "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``ns`` to completion; the result carries ``.pid``."""
        proc = subprocess.Popen(self.cmd(ns, argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        cp = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        cp.pid = proc.pid
        if check and cp.returncode != 0:
            raise RuntimeError(f"{' '.join(proc.args)} -> exit {cp.returncode}\n"
                               f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
        return cp

    def popen(self, ns: str, argv: Sequence[str], log: Optional[Path] = None,
              **kw) -> subprocess.Popen:
        """Start a long-running ``argv`` in ``ns`` (stopped by ``cleanup``)."""
        out = open(log, "wb") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(self.cmd(ns, argv), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True, **kw)
        finally:
            if log:
                out.close()
        self.procs.append(proc)
        return proc

    def wait_port(self, ns: str, addr: str, port: int, proto: str = "tcp",
                  timeout: float = 10, proc: Optional[subprocess.Popen] = None) -> None:
        """Wait until something listens on addr:port inside ``ns`` (``ss`` there)."""
        flag = "-ltn" if proto == "tcp" else "-lun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(ns, ["ss", "-H", flag], check=False).stdout
            if any(f"{addr}:{port}" == f.split()[3] for f in out.splitlines()
                   if len(f.split()) > 3):
                return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before "
                                   f"listening on {addr}:{port}")
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {addr}:{port}/{proto} in {ns}")

    # ---- knobs -----------------------------------------------------------------------
    def sysctl(self, ns: str, key: str, value) -> None:
        """Per-namespace sysctl (net.ipv4.* are per netns)."""
        self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])

    # Packet loss. This kernel has no sch_netem (CONFIG_NET_SCH_NETEM unset) and no
    # gact action, so loss is made with what it has: a clsact qdisc on DEV's ingress, a
    # cls_bpf filter in classic BPF (``ld rand`` -> match p% of packets) and a mirred
    # redirect of the matched packets to a veth that is down (mirred drops them).
    # Dropping at the receiver's ingress matters: a drop on the sender's own egress is
    # reported back to TCP (NET_XMIT_DROP) and never causes a retransmission.
    def drop(self, ns: str, dev: str, percent: int) -> None:
        """Drop ``percent`` % (1..100) of the packets arriving on ``dev`` in ``ns``."""
        assert 1 <= percent <= 100
        if percent == 100:
            code = "1,6 0 0 4294967295"  # ret -1: every packet matches
        else:
            # ld rand; A %= 100; if A >= p goto pass; match: ret -1; pass: ret 0
            code = f"5,32 0 0 4294963256,148 0 0 100,53 1 0 {percent},6 0 0 4294967295,6 0 0 0"
        hole = f"hole{dev}"[:15]
        if hole not in sh([IP, "-n", ns, "link", "show"]).stdout:
            sh([IP, "-n", ns, "link", "add", hole, "type", "veth", "peer", "name",
                f"hpeer{dev}"[:15]])  # both ends stay down
        self.drop_clear(ns, dev)
        sh([IP, "netns", "exec", ns, TC, "qdisc", "add", "dev", dev, "clsact"])
        sh([IP, "netns", "exec", ns, TC, "filter", "add", "dev", dev, "ingress", "bpf",
            "bytecode", code, "action", "mirred", "egress", "redirect", "dev", hole])

    def drop_clear(self, ns: str, dev: str) -> None:
        sh([IP, "netns", "exec", ns, TC, "qdisc", "del", "dev", dev, "clsact"], check=False)

    def drop_stats(self, ns: str, dev: str) -> str:
        return sh([IP, "netns", "exec", ns, TC, "-s", "filter", "show", "dev", dev,
                   "ingress"], check=False).stdout

    def resolv_conf(self, ns: str, text: str) -> Path:
        """/etc/netns/<ns>/resolv.conf: ``ip netns exec`` bind-mounts it over
        /etc/resolv.conf for commands run in ``ns``. Removed by ``cleanup``."""
        d = Path("/etc/netns") / ns
        if not d.parent.exists():
            d.parent.mkdir()
            self.etc_dirs.append(d.parent)  # ours: removed (after d) if left empty
        d.mkdir(exist_ok=True)
        self.etc_dirs.insert(0, d)
        p = d / "resolv.conf"
        p.write_text(text)
        return p


def stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    """SIGTERM then SIGKILL one process we started (and its session)."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def two_hosts():
    """Factory: ``two_hosts(tag)`` -> a created Topology; all are cleaned up at the end
    of the test (also on failure)."""
    made: List[Topology] = []

    def _make(tag: str = "t") -> Topology:
        t = Topology(tag)
        made.append(t)
        t.create()
        return t

    yield _make
    for t in made:
        t.cleanup()
    leftover = [ns for t in made for ns in (t.a, t.b)
                if ns in sh([IP, "netns", "list"], check=False).stdout.split()]
    assert not leftover, f"namespaces left behind: {leftover}"
