"""Kubernetes metadata from a REAL API server.

A real etcd (Debian's etcd-server) and a real kube-apiserver (v1.20, built once by
scripts/kube-apiserver.sh from Debian's kubernetes source package) run on free
loopback ports with self-signed certificates (openssl) and a static token. There are
no controllers and no kubelet: the test creates the Deployment, its ReplicaSet and the
Pod objects itself (with ownerReferences, spec.nodeName set to the agent's node name
and a containerStatuses[].containerID set through the status subresource), and runs
a real traced process (python's http.server) inside a cgroup v2 directory at the path
a kubelet with the systemd driver and containerd would use. The agent, started with
KUBECONFIG, must put the pod's namespace, name, workload and node on the resource of
the spans it exports (decoded by the OTLP sink with opentelemetry-proto).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import ssl
import threading
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import curl, free_port, stop_process, tail, wait_port

KUBE_APISERVER = Path(os.environ.get("AUTOTEL_KUBE_APISERVER")
                      or Path.home() / ".cache" / "autotel-kube" / "kube-apiserver")
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
NODE = "autotel-test-node"
TOKEN = secrets.token_hex(16)
# A user the API server knows but RBAC grants nothing: every call is a 403.
NOBODY_TOKEN = secrets.token_hex(16)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kw)


def make_certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 signed by it (rustls refuses a CA
    certificate as the server's own), and the service-account signing key."""
    run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-subj", "/CN=autotel-test-ca",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run([OPENSSL, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "server.key"),
         "-out", str(d / "server.csr"), "-subj", "/CN=kube-apiserver"])
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run([OPENSSL, "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"),
         "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
         "-extfile", str(d / "server.ext"), "-out", str(d / "server.crt")])
    run([OPENSSL, "genrsa", "-out", str(d / "sa.key"), "2048"])


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> Path:
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority-data: {ca_data}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
""")
    return path


class Cluster:
    def __init__(self, workdir: Path, url: str, ca: Path):
        self.workdir, self.url, self.ca = workdir, url, ca
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {TOKEN}"
        self.s.verify = str(ca)
        self.s.trust_env = False  # no proxy from the environment
        self.kubeconfig = write_kubeconfig(workdir / "kubeconfig", url, ca, TOKEN)

    def req(self, method: str, path: str, body=None) -> dict:
        r = self.s.request(method, self.url + path, json=body, timeout=20)
        assert r.ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def namespace(self, name: str) -> None:
        self.req("POST", "/api/v1/namespaces",
                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def set_container_status(self, pod: dict, container: str, container_id: str) -> dict:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        pod["status"] = {
            "phase": "Running",
            "containerStatuses": [{
                "name": container, "ready": True, "restartCount": 0,
                "image": "docker.io/library/python:3.11", "imageID": "",
                "containerID": f"containerd://{container_id}",
                "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
            }],
        }
        return self.req("PUT", f"/api/v1/namespaces/{ns}/pods/{name}/status", pod)


def template(labels: dict) -> dict:
    return {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "web", "image": "python:3.11"}]}}


def owner(obj: dict) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """etcd + kube-apiserver on free loopback ports, for the whole module."""
    if not (KUBE_APISERVER.is_file() and os.access(KUBE_APISERVER, os.X_OK)):
        pytest.fail(f"no kube-apiserver at {KUBE_APISERVER}: run `sudo bash "
                    f"scripts/kube-apiserver.sh` (or `make setup`)", pytrace=False)
    for tool in (ETCD, OPENSSL):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} missing: run `sudo make setup` (etcd-server, openssl)",
                        pytrace=False)
    d = tmp_path_factory.mktemp("kube")
    make_certs(d)
    (d / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n'
                                  f'{NOBODY_TOKEN},nobody,nobody\n')
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    procs = []
    etcd_log = open(d / "etcd.log", "wb")
    etcd = subprocess.Popen(
        [ETCD, "--name", "test", "--data-dir", str(d / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--initial-cluster", f"test=http://127.0.0.1:{etcd_peer}"],
        stdin=subprocess.DEVNULL, stdout=etcd_log, stderr=etcd_log, start_new_session=True)
    procs.append(etcd)
    api_log_path = d / "kube-apiserver.log"
    api_log = open(api_log_path, "wb")
    try:
        wait_port(etcd_port, 30, etcd)
        api = subprocess.Popen(
            [str(KUBE_APISERVER),
             f"--etcd-servers=http://127.0.0.1:{etcd_port}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--secure-port={api_port}", "--insecure-port=0",
             f"--tls-cert-file={d / 'server.crt'}", f"--tls-private-key-file={d / 'server.key'}",
             f"--client-ca-file={d / 'ca.crt'}",
             f"--token-auth-file={d / 'tokens.csv'}",
             "--authorization-mode=RBAC",
             f"--service-account-key-file={d / 'sa.key'}",
             f"--service-account-signing-key-file={d / 'sa.key'}",
             "--service-account-issuer=https://kubernetes.default.svc",
             "--service-cluster-ip-range=10.96.0.0/24",
             # No controller manager: nothing would create the namespaces'
             # default service accounts the ServiceAccount plugin wants.
             "--disable-admission-plugins=ServiceAccount",
             f"--cert-dir={d / 'certs'}", "--v=1"],
            stdin=subprocess.DEVNULL, stdout=api_log, stderr=api_log, start_new_session=True)
        procs.append(api)
        c = Cluster(d, f"https://127.0.0.1:{api_port}", d / "ca.crt")
        deadline = time.monotonic() + 90
        while True:
            if api.poll() is not None:
                pytest.fail(f"kube-apiserver exited with {api.returncode}\n"
                            f"{tail(api_log_path.read_text(errors='replace'), 40)}",
                            pytrace=False)
            try:
                r = c.s.get(c.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("kube-apiserver not ready after 90 s\n"
                            f"{tail(api_log_path.read_text(errors='replace'), 40)}",
                            pytrace=False)
            time.sleep(0.5)
        version = c.req("GET", "/version")
        print(f"kube-apiserver {version['gitVersion']} on {c.url}, etcd on :{etcd_port}",
              flush=True)
        yield c
    finally:
        for p in reversed(procs):
            stop_process(p, signal.SIGTERM)
        etcd_log.close()
        api_log.close()


def cgroup2_root() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 2 and f[2] == "cgroup2":
            return Path(f[1])
    pytest.fail("no cgroup2 mount in /proc/mounts: the test needs cgroup v2", pytrace=False)


@pytest.fixture
def pod_cgroup():
    """Factory: ``pod_cgroup(pod_uid, container_id)`` -> the container's cgroup v2
    directory, at the kubelet's systemd-driver path. Removed afterwards."""
    made = []

    def _make(pod_uid: str, container_id: str) -> Path:
        root = cgroup2_root()
        uid_ = pod_uid.replace("-", "_")
        parts = ["kubepods.slice", "kubepods-besteffort.slice",
                 f"kubepods-besteffort-pod{uid_}.slice",
                 f"cri-containerd-{container_id}.scope"]
        path = root
        for p in parts:
            path = path / p
            if not path.exists():
                path.mkdir()
                made.append(path)
        return path

    yield _make
    for p in reversed(made):
        # Processes left in it (a failed test) go back to the root first.
        try:
            for pid in (p / "cgroup.procs").read_text().split():
                try:
                    (cgroup2_root() / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
        except OSError:
            pass
        try:
            p.rmdir()
        except OSError as e:
            print(f"could not remove cgroup {p}: {e}", flush=True)


@pytest.fixture
def server_in_cgroup(tmp_path):
    """Factory: ``server_in_cgroup(cgroup_dir)`` -> (process, port): python's
    http.server that joins the cgroup before it execs (so it is there from its
    first instruction, as in a container)."""
    procs = []

    def _start(cg: Path):
        port = free_port()
        docroot = tmp_path / f"www{len(procs)}"
        docroot.mkdir()
        (docroot / "index.html").write_text("hello from a pod\n")
        script = ('echo $$ > "$1/cgroup.procs" && shift && exec "$@"')
        log = open(tmp_path / f"server{len(procs)}.log", "wb")
        p = subprocess.Popen(
            ["sh", "-c", script, "sh", str(cg), sys.executable, "-m", "http.server", str(port),
             "--bind", "127.0.0.1", "--directory", str(docroot)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        procs.append(p)
        wait_port(port, 15, p)
        cgline = Path(f"/proc/{p.pid}/cgroup").read_text()
        assert str(cg.name) in cgline, cgline
        return p, port

    yield _start
    for p in procs:
        stop_process(p, signal.SIGTERM)


def k8s_env(cluster: Cluster, port: int, home: Path) -> dict:
    return {
        "KUBECONFIG": str(cluster.kubeconfig),
        "AUTOTEL_NODE_NAME": NODE,
        "AUTOTEL_OPEN_PORTS": str(port),
        "HOME": str(home),
        "KUBERNETES_SERVICE_HOST": None,
    }


def server_spans(sink, port: int, pred=lambda s: True, count: int = 1, timeout: float = 20):
    return sink.wait_for_spans(
        lambda s: s["kind"] == "SERVER" and s["attrs"].get("server.port") == port and pred(s),
        count=count, timeout=timeout, settle=0.5)


def get_requests(port: int, n: int) -> None:
    for _ in range(n):
        cp = curl(f"http://127.0.0.1:{port}/index.html", "-o", "/dev/null")
        assert cp.returncode == 0, cp.stderr


def test_pod_and_deployment_names_on_span_resources(cluster, pod_cgroup, server_in_cgroup,
                                                    start_agent, sink, tmp_path):
    ns = f"shop-{secrets.token_hex(3)}"
    cluster.namespace(ns)
    labels = {"app": "web"}
    dep = cluster.req("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template(labels)},
    })
    rs_labels = {**labels, "pod-template-hash": "5d8f7c9b4"}
    rs = cluster.req("POST", f"/apis/apps/v1/namespaces/{ns}/replicasets", {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f7c9b4", "labels": rs_labels,
                     "ownerReferences": [owner(dep)]},
        "spec": {"replicas": 1, "selector": {"matchLabels": rs_labels},
                 "template": template(rs_labels)},
    })
    pod = cluster.req("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-5d8f7c9b4-q7x2k", "labels": rs_labels,
                     "ownerReferences": [owner(rs)]},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "python:3.11"}]},
    })
    pod_uid = pod["metadata"]["uid"]
    container_id = secrets.token_hex(32)
    cluster.set_container_status(pod, "web", container_id)
    # A pod of another node: the agent must not list it (field selector).
    cluster.req("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere"},
        "spec": {"nodeName": "other-node", "containers": [{"name": "c", "image": "x"}]},
    })

    cg = pod_cgroup(pod_uid, container_id)
    _, port = server_in_cgroup(cg)
    agent = start_agent(k8s_env(cluster, port, tmp_path))
    # The cache fills in the background: the first spans may predate it.
    deadline = time.monotonic() + 30
    spans = []
    while time.monotonic() < deadline and not spans:
        get_requests(port, 3)
        spans = server_spans(sink, port, lambda s: "k8s.pod.name" in s["resource"],
                             timeout=2)
    assert spans, f"no server span with k8s.pod.name in 30 s\n{agent.logs_tail(40)}"
    get_requests(port, 5)
    spans = server_spans(sink, port, lambda s: "k8s.pod.name" in s["resource"], count=5)
    res = spans[-1]["resource"]
    want = {
        "k8s.namespace.name": ns,
        "k8s.pod.name": "web-5d8f7c9b4-q7x2k",
        "k8s.pod.uid": pod_uid,
        "k8s.replicaset.name": "web-5d8f7c9b4",
        "k8s.deployment.name": "web",
        "k8s.node.name": NODE,
        "k8s.container.name": "web",
        "container.id": container_id,
    }
    got = {k: res.get(k) for k in want}
    print(f"resource k8s attributes: {got}", flush=True)
    assert got == want, f"{got} != {want}\n{agent.logs_tail(30)}"
    for s in spans:
        assert s["resource"].get("k8s.deployment.name") == "web", s["resource"]
    assert "WARN" not in agent.stderr_text(), agent.logs_tail(30)
    assert "kubernetes: pod metadata in sync" in agent.stderr_text(), agent.logs_tail(30)


def test_pod_created_after_the_process_gets_metadata_later(cluster, pod_cgroup,
                                                           server_in_cgroup, start_agent,
                                                           sink, tmp_path):
    """A static pod: the kubelet runs its containers (cgroup named by the config
    hash) before its mirror pod reaches the API server, here after the agent
    already exported spans of the process."""
    ns = f"static-{secrets.token_hex(3)}"
    cluster.namespace(ns)
    config_hash = uuid.uuid4().hex  # 32 hex: the kubelet's config hash
    container_id = secrets.token_hex(32)
    cg = pod_cgroup(config_hash, container_id)
    _, port = server_in_cgroup(cg)
    agent = start_agent({**k8s_env(cluster, port, tmp_path), "OTEL_METRIC_EXPORT_INTERVAL": "500"})
    # Wait for the watch to be in sync, so "no metadata" below is not a race.
    deadline = time.monotonic() + 30
    while "kubernetes: pod metadata in sync" not in agent.stderr_text():
        assert time.monotonic() < deadline, agent.logs_tail(30)
        time.sleep(0.2)
    get_requests(port, 3)
    before = server_spans(sink, port, count=3)
    assert len(before) >= 3, agent.logs_tail(30)
    for s in before:
        assert s["resource"].get("k8s.pod.uid") == config_hash, s["resource"]
        assert s["resource"].get("container.id") == container_id, s["resource"]
        assert "k8s.pod.name" not in s["resource"], s["resource"]
    print(f"before the pod exists: {len(before)} spans with cgroup-only attributes", flush=True)

    pod = cluster.req("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"etcd-{NODE}",
                     "annotations": {"kubernetes.io/config.mirror": config_hash,
                                     "kubernetes.io/config.hash": config_hash,
                                     "kubernetes.io/config.source": "file"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "etcd", "image": "etcd:3.4"}]},
    })
    cluster.set_container_status(pod, "etcd", container_id)
    sink.clear()
    deadline = time.monotonic() + 30
    after = []
    while time.monotonic() < deadline and not after:
        get_requests(port, 2)
        after = server_spans(sink, port, lambda s: "k8s.pod.name" in s["resource"], timeout=2)
    assert after, f"no span with pod metadata 30 s after the pod was created\n" \
                  f"{agent.logs_tail(30)}"
    res = after[-1]["resource"]
    got = {k: res.get(k) for k in ("k8s.namespace.name", "k8s.pod.name", "k8s.node.name",
                                   "k8s.container.name", "k8s.pod.uid", "container.id")}
    print(f"after the pod was created: {got}", flush=True)
    assert got == {"k8s.namespace.name": ns, "k8s.pod.name": f"etcd-{NODE}",
                   "k8s.node.name": NODE, "k8s.container.name": "etcd",
                   "k8s.pod.uid": config_hash, "container.id": container_id}, got
    # The metric series made before the pod was known move to the new resource.
    points = sink.wait_for_metrics(
        lambda d: d["name"] == "http.server.request.duration"
        and d["resource"].get("k8s.pod.uid") == config_hash
        and d["resource"].get("k8s.pod.name") == f"etcd-{NODE}", timeout=10)
    assert points, f"no http.server.request.duration point with the pod's name\n" \
                   f"{agent.logs_tail(20)}"
    print(f"metrics: {len(points)} http.server.request.duration points with k8s.pod.name",
          flush=True)


def test_apiserver_unreachable_keeps_spans_flowing(pod_cgroup, server_in_cgroup,
                                                   start_agent, sink, tmp_path, require_root):
    # A kubeconfig for an API server that is not there (nothing listens).
    d = tmp_path / "pki"
    d.mkdir()
    make_certs(d)
    dead = f"https://127.0.0.1:{free_port()}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", dead, d / "ca.crt", "t")
    pod_uid = str(uuid.uuid4())
    container_id = secrets.token_hex(32)
    cg = pod_cgroup(pod_uid, container_id)
    _, port = server_in_cgroup(cg)
    agent = start_agent({"KUBECONFIG": str(kubeconfig), "AUTOTEL_NODE_NAME": NODE,
                         "AUTOTEL_OPEN_PORTS": str(port), "HOME": str(tmp_path),
                         "KUBERNETES_SERVICE_HOST": None})
    t0 = time.monotonic()
    for _ in range(4):
        get_requests(port, 5)
        time.sleep(1)
    spans = server_spans(sink, port, count=20)
    print(f"spans with the API server down: {len(spans)} in {time.monotonic() - t0:.1f} s",
          flush=True)
    assert len(spans) == 20, agent.logs_tail(30)
    for s in spans:
        assert s["resource"].get("k8s.pod.uid") == pod_uid, s["resource"]
        assert s["resource"].get("container.id") == container_id, s["resource"]
        assert "k8s.pod.name" not in s["resource"], s["resource"]
    assert agent.alive(), agent.logs_tail(30)
    warns = [l for l in agent.stderr_text().splitlines()
             if "WARN" in l and "kubernetes: API server" in l]
    print(f"kubernetes warnings: {len(warns)}: {warns[:1]}", flush=True)
    # The watcher retried meanwhile; the warning is rate-limited to one.
    assert len(warns) == 1, agent.logs_tail(30)
    assert "cannot list pods" in warns[0] and "cgroup attributes" in warns[0], warns[0]
    assert "Connection refused" in warns[0], warns[0]
    errors = [l for l in agent.stderr_text().splitlines() if " ERROR " in l]
    assert not errors, errors[:3]


def test_hanging_apiserver_is_reported_and_spans_keep_flowing(pod_cgroup, server_in_cgroup,
                                                              start_agent, sink, tmp_path,
                                                              require_root):
    """An API server that completes the TLS handshake and then never answers: no
    error comes back for minutes (the client's read timeout is ~5 min, as long
    as a watch), so the agent reports the missing pod list after 30 s."""
    d = tmp_path / "pki"
    d.mkdir()
    make_certs(d)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(d / "server.crt"), str(d / "server.key"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = listener.accept()[0]
            except OSError:
                continue
            try:
                conn.settimeout(5)
                held.append(tls.wrap_socket(conn, server_side=True))  # handshake, then silence
            except (OSError, ssl.SSLError):
                conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig",
                                      f"https://127.0.0.1:{listener.getsockname()[1]}",
                                      d / "ca.crt", "t")
        pod_uid = str(uuid.uuid4())
        container_id = secrets.token_hex(32)
        _, port = server_in_cgroup(pod_cgroup(pod_uid, container_id))
        agent = start_agent({"KUBECONFIG": str(kubeconfig), "AUTOTEL_NODE_NAME": NODE,
                             "AUTOTEL_OPEN_PORTS": str(port), "HOME": str(tmp_path),
                             "KUBERNETES_SERVICE_HOST": None})
        get_requests(port, 5)
        early = server_spans(sink, port, count=5)
        assert len(early) == 5, agent.logs_tail(30)
        deadline = time.monotonic() + 50
        warns = []
        while time.monotonic() < deadline and not warns:
            time.sleep(1)
            warns = [l for l in agent.stderr_text().splitlines()
                     if "WARN" in l and "kubernetes: API server" in l]
        print(f"kubernetes warnings: {len(warns)}: {warns[:1]}", flush=True)
        assert len(warns) == 1, agent.logs_tail(30)
        assert "no complete pod list after 30s" in warns[0], warns[0]
        get_requests(port, 5)
        spans = server_spans(sink, port, count=10)
        assert len(spans) == 10, agent.logs_tail(30)
        assert all(s["resource"].get("k8s.pod.uid") == pod_uid for s in spans)
        assert agent.alive()
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        listener.close()


def test_apiserver_refusing_us_403_keeps_spans_flowing(cluster, pod_cgroup, server_in_cgroup,
                                                        start_agent, sink, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig-nobody", cluster.url, cluster.ca,
                                  NOBODY_TOKEN)
    pod_uid = str(uuid.uuid4())
    container_id = secrets.token_hex(32)
    _, port = server_in_cgroup(pod_cgroup(pod_uid, container_id))
    agent = start_agent({**k8s_env(cluster, port, tmp_path), "KUBECONFIG": str(kubeconfig)})
    for _ in range(3):
        get_requests(port, 5)
        time.sleep(1)
    spans = server_spans(sink, port, count=15)
    assert len(spans) == 15, agent.logs_tail(30)
    assert all(s["resource"].get("k8s.pod.uid") == pod_uid
               and "k8s.pod.name" not in s["resource"] for s in spans)
    warns = [l for l in agent.stderr_text().splitlines()
             if "WARN" in l and "kubernetes: API server" in l]
    print(f"kubernetes warnings: {len(warns)}: {warns[:1]}", flush=True)
    assert len(warns) == 1, agent.logs_tail(30)
    assert "cannot list pods: HTTP 403 Forbidden" in warns[0], warns[0]
    assert "Status {" not in warns[0], warns[0]
    assert agent.alive()


def test_kubernetes_true_without_cluster_config_is_a_config_error(start_agent, tmp_path):
    agent = start_agent({"AUTOTEL_KUBERNETES": "true", "KUBECONFIG": None,
                         "KUBERNETES_SERVICE_HOST": None, "HOME": str(tmp_path)},
                        wait_ready=False)
    try:
        rc = agent.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"agent still running 30 s after start\n{agent.logs_tail(30)}",
                    pytrace=False)
    err = agent.stderr_text()
    print(f"exit code {rc}: {tail(err, 2)}", flush=True)
    assert rc == 2, agent.logs_tail(30)
    assert "configuration error" in err and "kubernetes.enabled is true" in err, err
    assert "KUBECONFIG" in err, err
