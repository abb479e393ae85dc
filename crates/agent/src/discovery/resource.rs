//! The OTel resource of a traced process: service naming, process and host
//! attributes, container id and pod UID (and, with the API server, pod and
//! workload names: see kubernetes.rs). Built once per process.

use super::procfs;
use autotel_model::{AttrValue, Resource};
use std::path::Path;

const INTERPRETERS: [(&str, &str); 6] = [
    ("python", "python"),
    ("node", "nodejs"),
    ("java", "java"),
    ("ruby", "ruby"),
    ("dotnet", "dotnet"),
    ("php", "php"),
];

/// Argument keys whose values never leave the agent.
const SECRET_KEYS: [&str; 8] = [
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "key",
    "credential",
    "auth",
];

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runtime from the executable's name (go/native need the ELF; see README).
fn runtime_of(exe_name: &str) -> &'static str {
    INTERPRETERS
        .iter()
        .find(|(prefix, _)| exe_name.starts_with(prefix))
        .map(|(_, rt)| *rt)
        .unwrap_or("native")
}

/// For interpreters, the script is the service: `python3 app.py` -> `app`.
fn script_name(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-m" {
            return it.next().cloned();
        }
        if a == "-c" || a == "-e" {
            return None;
        }
        if a.starts_with('-') {
            continue;
        }
        let stem = Path::new(a).file_stem()?.to_string_lossy().into_owned();
        return Some(stem);
    }
    None
}

/// The base name of the program argv[0] started: `redis-server` for
/// `/usr/bin/redis-server 127.0.0.1:6379` (redis rewrites its argv into a
/// title; on Debian the executable itself is `redis-check-rdb`).
pub(super) fn started_as(argv0: &str) -> Option<&str> {
    base_name(first_word(argv0)?)
}

fn first_word(s: &str) -> Option<&str> {
    s.split_whitespace().next()
}

fn base_name(path: &str) -> Option<&str> {
    path.rsplit('/').next().filter(|n| !n.is_empty())
}

/// The name a native program was started by, when the kernel agrees (its
/// `comm` is that name, cut to 15 bytes). It differs from the executable's
/// name when a symlink led there: Debian starts `redis-server`, a link to the
/// multi-call `redis-check-rdb`; `httpd` may be `busybox`, `mysqld`
/// `mariadbd`. The service is what was started, so that name wins; the
/// executable keeps its own in `process.executable.name`. From the exec's
/// path when the agent saw the exec, else from argv[0] (its first word:
/// servers such as redis rewrite their argv into a title). Re-execs through
/// `/proc/self/exe` or `fexecve` (`/dev/fd/N`) name nothing.
fn invoked_name(exec_path: Option<&str>, args: &[String], comm: Option<&str>) -> Option<String> {
    let comm = comm?;
    let path = match exec_path.filter(|p| !p.is_empty()) {
        Some(p) => p,
        None => first_word(args.first()?)?,
    };
    if path.starts_with("/proc/") || path.starts_with("/dev/fd/") {
        return None;
    }
    let name = base_name(path)?;
    // comm is the name cut to TASK_COMM_LEN - 1 bytes.
    let cut = name.as_bytes().get(..15).unwrap_or(name.as_bytes());
    (cut == comm.as_bytes()).then(|| name.to_owned())
}

fn is_secret_key(k: &str) -> bool {
    let k = k.trim_start_matches('-').to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| k.contains(s))
}

/// Header names whose values are credentials even without a secret-looking key.
const SECRET_HEADERS: [&str; 3] = ["cookie", "set-cookie", "proxy-authorization"];
/// Flags whose next argument is a credential (curl/wget style).
const SECRET_VALUE_FLAGS: [&str; 6] = ["-u", "--user", "-b", "--cookie", "--proxy-user", "-U"];

/// One argument with every secret inside it replaced: `key=value` pairs (also
/// inside URLs and query strings), `Name: value` headers, URL userinfo.
fn redact_arg(a: &str) -> String {
    // Header style: "Authorization: Bearer x", "Cookie: a=b".
    if let Some((name, _)) = a.split_once(':') {
        let n = name.trim().to_ascii_lowercase();
        if !n.contains('/') && (is_secret_key(&n) || SECRET_HEADERS.contains(&n.as_str())) {
            return format!("{name}: REDACTED");
        }
    }
    let mut out = String::with_capacity(a.len());
    // URL userinfo: scheme://user:pass@host
    let mut rest = a;
    if let Some(scheme_end) = a.find("://") {
        let after = &a[scheme_end + 3..];
        let host_end = after.find('/').unwrap_or(after.len());
        if let Some(at) = after[..host_end].rfind('@') {
            out.push_str(&a[..scheme_end + 3]);
            out.push_str("REDACTED@");
            rest = &after[at + 1..];
        }
    }
    // key=value pairs separated by ? & ; (query strings, --flag=value).
    for piece in rest.split_inclusive(['?', '&', ';']) {
        let (body, sep) = match piece.char_indices().last() {
            Some((i, '?' | '&' | ';')) => (&piece[..i], &piece[i..]),
            _ => (piece, ""),
        };
        match body.split_once('=') {
            Some((k, _)) if is_secret_key(k.rsplit(['?', '&']).next().unwrap_or(k)) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(body),
        }
        out.push_str(sep);
    }
    out
}

/// Command line with secrets replaced: values of secret-looking keys and
/// flags, credential headers, URL userinfo and query-string secrets.
pub fn redact_command_line(args: &[String]) -> String {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("REDACTED".to_owned());
            hide_next = false;
            continue;
        }
        if a.starts_with('-')
            && !a.contains('=')
            && (is_secret_key(a) || SECRET_VALUE_FLAGS.contains(&a.as_str()))
        {
            hide_next = true;
            out.push(a.clone());
            continue;
        }
        out.push(redact_arg(a));
    }
    out.join(" ")
}

/// Container id from cgroup paths (docker, containerd, cri-o, podman).
pub fn container_id(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        for part in line.rsplit('/') {
            let part = part.trim_end_matches(".scope");
            let id = part.rsplit(['-', ':']).next().unwrap_or(part);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(id.to_owned());
            }
        }
    }
    None
}

/// Kubernetes pod UID from the kubelet's cgroup paths, cgroupfs driver
/// (`/kubepods/burstable/pod<uid>/<container>`) or systemd driver
/// (`kubepods-burstable-pod<uid with _ for ->.slice`), cgroup v1 or v2.
/// Static pods use a 32-hex config hash as their UID; both forms are
/// accepted. Returned lower-case, with dashes as the API shows it.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    fn is_uid(s: &str) -> bool {
        let b = s.as_bytes();
        let uuid = b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        uuid || (b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit))
    }
    for line in cgroup.lines() {
        // v1: "12:memory:/kubepods/...", v2: "0::/kubepods/...".
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        if !path.contains("kubepods") {
            continue;
        }
        for part in path.split('/') {
            let part = part.strip_suffix(".slice").unwrap_or(part);
            let candidate = if let Some(rest) = part.strip_prefix("pod") {
                rest
            } else if let Some(i) = part.rfind("-pod") {
                &part[i + 4..]
            } else {
                continue;
            };
            let uid = candidate.replace('_', "-").to_ascii_lowercase();
            if is_uid(&uid) {
                return Some(uid);
            }
        }
    }
    None
}

/// Service naming decided by configuration (discovery.services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Naming {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Naming {
    /// What a forked child takes from its parent's resource.
    pub fn inherit(parent: &Resource) -> Naming {
        let attr = |k: &str| {
            parent
                .attributes
                .iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.to_string())
        };
        Naming {
            name: attr("autotel.service.name.source")
                .filter(|s| s == "config")
                .map(|_| parent.service_name.clone()),
            namespace: attr("service.namespace"),
        }
    }
}

/// How a process shows it runs an OpenTelemetry SDK / zero-code agent.
pub fn detect_sdk_in(
    env: &std::collections::HashMap<String, String>,
    args: &[String],
) -> Option<&'static str> {
    let has = |k: &str, needle: &str| env.get(k).is_some_and(|v| v.contains(needle));
    if has(
        "PYTHONPATH",
        "opentelemetry/instrumentation/auto_instrumentation",
    ) || args.iter().any(|a| a.ends_with("opentelemetry-instrument"))
    {
        return Some("python opentelemetry-instrument");
    }
    if args
        .iter()
        .any(|a| a.starts_with("-javaagent:") && a.contains("opentelemetry"))
        || has("JAVA_TOOL_OPTIONS", "opentelemetry")
    {
        return Some("java agent");
    }
    if has("NODE_OPTIONS", "@opentelemetry") {
        return Some("node auto-instrumentation");
    }
    if env.contains_key("OTEL_DOTNET_AUTO_HOME") {
        return Some(".NET auto-instrumentation");
    }
    None
}

pub fn detect_sdk(pid: u32) -> Option<&'static str> {
    detect_sdk_in(&procfs::environ(pid), &procfs::cmdline(pid))
}

/// Whether the kernel should follow `res`'s request context by goroutine: a
/// Go program on x86-64, where the register ABI (Go 1.17+; the build info
/// read here is 1.18+) keeps the running goroutine in R14.
pub fn follows_goroutines(res: &Resource) -> bool {
    cfg!(target_arch = "x86_64")
        && res
            .attributes
            .iter()
            .any(|(k, v)| k == "process.runtime.name" && *v == AttrValue::from("go"))
}

/// `exec_path`: the path seen at exec, used when /proc no longer has the
/// process (short-lived clients).
pub fn build(pid: u32, host: &str, exec_path: Option<&str>, naming: &Naming) -> Resource {
    let exe = procfs::exe_path(pid).or_else(|| {
        exec_path
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
    });
    let exe_name = exe
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| procfs::comm(pid))
        .unwrap_or_else(|| "unknown".into());
    let args = procfs::cmdline(pid);
    let env = procfs::environ(pid);
    let interpreter = runtime_of(&exe_name);
    // A native executable built by Go says so in its build info.
    let go_version = (interpreter == "native")
        .then(|| crate::tracer::tls::go_version_of(Path::new(&format!("/proc/{pid}/exe"))))
        .flatten();
    let runtime = if go_version.is_some() {
        "go"
    } else {
        interpreter
    };

    let env_attrs = env
        .get("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| crate::config::parse_kv_list(v))
        .unwrap_or_default();
    let from_attrs = |k: &str| {
        env_attrs
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
    };
    // Order: configuration, the target's OTEL_SERVICE_NAME, its
    // OTEL_RESOURCE_ATTRIBUTES, the script of an interpreter, the executable.
    let (service_name, source) = if let Some(n) = naming.name.clone() {
        (n, "config")
    } else if let Some(n) = env.get("OTEL_SERVICE_NAME").filter(|s| !s.is_empty()) {
        (n.clone(), "env")
    } else if let Some(n) = from_attrs("service.name") {
        (n, "env")
    } else if let Some(n) = (interpreter != "native")
        .then(|| script_name(&args))
        .flatten()
    {
        (n, "script")
    } else if let Some(n) =
        invoked_name(exec_path, &args, procfs::comm(pid).as_deref()).filter(|n| *n != exe_name)
    {
        (n, "executable")
    } else {
        (exe_name.clone(), "executable")
    };
    let namespace = naming
        .namespace
        .clone()
        .or_else(|| from_attrs("service.namespace"));
    let start = procfs::start_time(pid).unwrap_or(0);

    let mut attributes: Vec<(String, AttrValue)> = vec![
        ("service.name".into(), service_name.clone().into()),
        ("autotel.service.name.source".into(), source.into()),
        (
            "service.instance.id".into(),
            format!("{host}:{pid}:{start}").into(),
        ),
        ("host.name".into(), host.into()),
        ("process.pid".into(), AttrValue::Int(pid as i64)),
        ("process.executable.name".into(), exe_name.into()),
        (
            "process.command_line".into(),
            redact_command_line(&args).into(),
        ),
        ("process.runtime.name".into(), runtime.into()),
        ("telemetry.sdk.name".into(), "autotel".into()),
        (
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
        ("telemetry.sdk.language".into(), "rust".into()),
    ];
    if let Some(v) = go_version {
        attributes.push(("process.runtime.version".into(), v.into()));
    }
    if let Some(ns) = namespace {
        attributes.push(("service.namespace".into(), ns.into()));
    }
    if let Some(p) = exe.as_ref() {
        attributes.push((
            "process.executable.path".into(),
            p.to_string_lossy().into_owned().into(),
        ));
    }
    if let Some(pp) = procfs::ppid(pid) {
        attributes.push(("process.parent_pid".into(), AttrValue::Int(pp as i64)));
    }
    let cgroup = procfs::cgroup(pid);
    if let Some(id) = container_id(&cgroup) {
        attributes.push(("container.id".into(), id.into()));
    }
    if let Some(uid) = pod_uid(&cgroup) {
        attributes.push(("k8s.pod.uid".into(), uid.into()));
        // Namespace, pod, workload names from the API server's pod cache
        // (when on and the pod is known; else filled in once it is).
        super::kubernetes::enrich(&mut attributes);
    }
    for (k, v) in env_attrs {
        if !attributes.iter().any(|(have, _)| *have == k) {
            attributes.push((k, v.into()));
        }
    }
    Resource {
        service_name,
        pid,
        attributes,
    }
}

/// The resource of `pid`, forked by `ppid` (described by `parent`, when
/// known) and not exec'ed since: the parent's configured naming, and, once
/// /proc no longer shows the child's program, the parent's whole resource.
pub fn of_fork(pid: u32, ppid: u32, parent: Option<&Resource>, host: &str) -> Resource {
    match parent {
        Some(p) if procfs::exe_path(pid).is_none() => of_forked_child(p, pid, ppid, host),
        Some(p) => build(pid, host, None, &Naming::inherit(p)),
        None => build(pid, host, None, &Naming::default()),
    }
}

/// The resource of a process forked by the one `parent` describes, once
/// /proc no longer shows the child's program (it exited, or is exiting):
/// it ran the parent's, so all but its identity is the parent's.
fn of_forked_child(parent: &Resource, pid: u32, ppid: u32, host: &str) -> Resource {
    let mut attributes = parent.attributes.clone();
    for (key, value) in attributes.iter_mut() {
        match key.as_str() {
            "process.pid" => *value = AttrValue::Int(pid as i64),
            "process.parent_pid" => *value = AttrValue::Int(ppid as i64),
            // The start time is gone with the process.
            "service.instance.id" => *value = format!("{host}:{pid}:0").into(),
            _ => {}
        }
    }
    if !attributes.iter().any(|(k, _)| k == "process.parent_pid") {
        attributes.push(("process.parent_pid".into(), AttrValue::Int(ppid as i64)));
    }
    Resource {
        service_name: parent.service_name.clone(),
        pid,
        attributes,
    }
}

/// The resource of whole-host flow metrics: processes that are not selected
/// share it (pid 0, no process attributes; the owner's name is a data point
/// attribute), so their series do not grow with every short-lived process.
pub fn host(host: &str) -> Resource {
    Resource {
        service_name: "host".into(),
        pid: 0,
        attributes: vec![
            ("service.name".into(), "host".into()),
            ("service.instance.id".into(), host.into()),
            ("host.name".into(), host.into()),
            ("telemetry.sdk.name".into(), "autotel".into()),
            (
                "telemetry.sdk.version".into(),
                env!("CARGO_PKG_VERSION").into(),
            ),
            ("telemetry.sdk.language".into(), "rust".into()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_forked_child_is_its_parent_but_for_its_identity() {
        let naming = Naming {
            name: Some("forking-api".into()),
            namespace: Some("shop".into()),
        };
        let parent = build(std::process::id(), "h", None, &naming);
        let child = of_forked_child(&parent, 4_000_000, parent.pid, "h");
        let attr = |r: &Resource, k: &str| {
            r.attributes
                .iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(child.service_name, "forking-api");
        assert_eq!(child.pid, 4_000_000);
        assert_eq!(attr(&child, "process.pid"), Some(AttrValue::Int(4_000_000)));
        assert_eq!(
            attr(&child, "process.parent_pid"),
            Some(AttrValue::Int(parent.pid as i64))
        );
        assert_eq!(
            attr(&child, "service.instance.id"),
            Some("h:4000000:0".into())
        );
        for same in [
            "service.name",
            "service.namespace",
            "process.executable.name",
            "process.command_line",
        ] {
            assert_eq!(attr(&child, same), attr(&parent, same), "{same}");
            assert!(attr(&child, same).is_some(), "{same}");
        }
        assert_eq!(child.attributes.len(), parent.attributes.len());
    }

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn a_service_is_named_by_the_name_it_was_started_by() {
        let redis = args("/usr/bin/redis-server *:6379");
        // The exec seen: its path, as the kernel named the process.
        assert_eq!(
            invoked_name(Some("/usr/bin/redis-server"), &[], Some("redis-server")).as_deref(),
            Some("redis-server")
        );
        // Started before the agent: argv[0]'s first word (a rewritten title).
        assert_eq!(
            invoked_name(None, &[redis.join(" ")], Some("redis-server")).as_deref(),
            Some("redis-server")
        );
        // comm holds 15 bytes of a longer name.
        assert_eq!(
            invoked_name(
                Some("/opt/x/payments-gateway-server"),
                &[],
                Some("payments-gatewa")
            )
            .as_deref(),
            Some("payments-gateway-server")
        );
        // The kernel's name disagrees (renamed by prctl, a later exec): none.
        assert_eq!(invoked_name(None, &redis, Some("other")), None);
        // Re-exec through /proc/self/exe or fexecve: comm is "exe" or "3".
        assert_eq!(invoked_name(Some("/proc/self/exe"), &[], Some("exe")), None);
        assert_eq!(invoked_name(Some("/dev/fd/3"), &[], Some("3")), None);
        assert_eq!(invoked_name(None, &[], Some("x")), None);
        assert_eq!(invoked_name(Some("/usr/bin/x"), &[], None), None);
    }

    #[test]
    fn script_names() {
        assert_eq!(
            script_name(&args("python3 /srv/app.py --port 80")).as_deref(),
            Some("app")
        );
        assert_eq!(
            script_name(&args("python3 -u -m http.server 8000")).as_deref(),
            Some("http.server")
        );
        assert_eq!(script_name(&args("python3 -c print(1)")), None);
    }

    #[test]
    fn secrets_in_command_lines() {
        let red = redact_command_line(&args("app --password hunter2 --db-token=abc --port 80"));
        assert_eq!(red, "app --password REDACTED --db-token=REDACTED --port 80");
        let curl: Vec<String> = [
            "curl",
            "-H",
            "Authorization: Bearer S1",
            "-H",
            "Cookie: s=S2",
            "-H",
            "Accept: text/html",
            "-u",
            "bob:S3",
            "http://u:S4@h/p?user=bob&token=S5",
            "https://h:8080/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let red = redact_command_line(&curl);
        for secret in ["S1", "S2", "S3", "S4", "S5"] {
            assert!(!red.contains(secret), "{secret} in {red}");
        }
        assert!(
            red.contains("Accept: text/html")
                && red.contains("user=bob")
                && red.contains("https://h:8080/x"),
            "{red}"
        );
    }

    #[test]
    fn container_ids() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id(&format!("0::/system.slice/docker-{id}.scope\n")),
            Some(id.clone())
        );
        assert_eq!(
            container_id(&format!("0::/kubepods/besteffort/pod1/{id}\n")),
            Some(id)
        );
        assert_eq!(container_id("0::/user.slice/user-0.slice\n"), None);
    }

    #[test]
    fn pod_uids_from_kubelet_cgroups() {
        let cid = "3f6a1c0e9b2d4e5f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";
        let uid = "0f3c2a1e-5b6d-4c7e-9f80-1a2b3c4d5e6f";
        let uid_ = "0f3c2a1e_5b6d_4c7e_9f80_1a2b3c4d5e6f";
        let want = Some(uid.to_owned());
        // cgroupfs driver, cgroup v2 (burstable, besteffort, guaranteed).
        for qos in ["burstable/", "besteffort/", ""] {
            let cg = format!("0::/kubepods/{qos}pod{uid}/{cid}\n");
            assert_eq!(pod_uid(&cg), want, "{cg}");
            assert_eq!(container_id(&cg).as_deref(), Some(cid), "{cg}");
        }
        // cgroupfs driver, cgroup v1: one line per hierarchy.
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{uid}/{cid}\n\
             11:memory:/kubepods/burstable/pod{uid}/{cid}\n\
             1:name=systemd:/kubepods/burstable/pod{uid}/{cid}\n"
        );
        assert_eq!(pod_uid(&v1), want);
        // systemd driver: containerd, cri-o, guaranteed QoS (no QoS slice).
        let sd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod{uid_}.slice/cri-containerd-{cid}.scope\n"
        );
        assert_eq!(pod_uid(&sd), want);
        assert_eq!(container_id(&sd).as_deref(), Some(cid));
        let crio = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod{uid_}.slice/crio-{cid}.scope\n"
        );
        assert_eq!(pod_uid(&crio), want);
        let guaranteed = format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{cid}.scope\n");
        assert_eq!(pod_uid(&guaranteed), want);
        // kind / nested kubelet (cgroup root under kubelet.slice).
        let kind = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{cid}.scope\n"
        );
        assert_eq!(pod_uid(&kind), want);
        // Upper-case input is normalised.
        let upper = format!("0::/kubepods/pod{}/{cid}\n", uid.to_ascii_uppercase());
        assert_eq!(pod_uid(&upper), want);
        // Static pods: the UID is the 32-hex config hash.
        let hash = "5e2c1b7a9f3d4e6a8b0c2d4f6a8b0c2d";
        assert_eq!(
            pod_uid(&format!("0::/kubepods/burstable/pod{hash}/{cid}\n")).as_deref(),
            Some(hash)
        );
        // Not pods: docker, podman, systemd services, malformed UIDs.
        for cg in [
            format!("0::/system.slice/docker-{cid}.scope\n"),
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{cid}.scope\n"
            ),
            "0::/machine.slice/libpod-pod-1234.slice\n".to_string(),
            "0::/user.slice/user-0.slice\n".to_string(),
            "0::/kubepods/burstable/podnot-a-uid/abc\n".to_string(),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice\n",
                &uid_[..30]
            ),
            "0::/\n".to_string(),
            String::new(),
        ] {
            assert_eq!(pod_uid(&cg), None, "{cg}");
        }
    }

    #[test]
    fn sdk_detection() {
        let mut env = std::collections::HashMap::new();
        assert_eq!(detect_sdk_in(&env, &args("python3 app.py")), None);
        env.insert(
            "PYTHONPATH".to_string(),
            "/v/lib/python3.11/site-packages/opentelemetry/instrumentation/auto_instrumentation"
                .to_string(),
        );
        assert!(detect_sdk_in(&env, &args("python3 app.py")).is_some());
        assert!(detect_sdk_in(
            &Default::default(),
            &args("java -javaagent:/o/opentelemetry-javaagent.jar -jar a.jar")
        )
        .is_some());
    }

    #[test]
    fn own_resource() {
        let r = build(std::process::id(), "h", None, &Naming::default());
        assert!(!r.service_name.is_empty());
        assert!(r
            .attributes
            .iter()
            .any(|(k, _)| k == "process.command_line"));
    }
}
