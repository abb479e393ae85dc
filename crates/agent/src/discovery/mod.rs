//! Process selection. Kernel events (exec, fork, listen, exit) make it
//! prompt; a periodic /proc rescan is the backstop for anything missed. The
//! selected set lives in the kernel's pid map, so unselected processes cost
//! one lookup per syscall and nothing more.

pub mod kubernetes;
mod listeners;
pub mod procfs;
pub mod resource;

use crate::config::{Discovery, PortSet, ServiceRule};
use crate::selfmetrics::SelfMetrics;
use crate::tracer::{abi, SelectedPids};
use autotel_model::Resource;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Full /proc rescan period, at least. The rescan is a safety net (exec
/// and listen events select processes as they happen): it finds sockets a
/// process inherited and events the ring lost.
const RESCAN: Duration = Duration::from_secs(5);
/// How much longer than a scan took the next one waits: a scan reads every
/// open file of the processes in a namespace with a listener of interest
/// (~3 us each), and a node with 100k sockets must not pay that every 5 s.
/// 500x keeps the rescan under 0.2% of a CPU.
const RESCAN_PER_SCAN_TIME: u32 = 500;
const MAX_RESCAN: Duration = Duration::from_secs(120);

/// When the next rescan runs, given how long this one took.
fn next_rescan(scan_took: Duration) -> Duration {
    scan_took
        .saturating_mul(RESCAN_PER_SCAN_TIME)
        .clamp(RESCAN, MAX_RESCAN)
}

/// Process events forwarded from the ring-buffer reader.
#[derive(Debug, Clone)]
pub enum ProcEvent {
    /// `selected`: the pipeline's decision when selection happens at exec
    /// (executable name); None when discovery must evaluate the process.
    Exec {
        pid: u32,
        selected: Option<bool>,
        path: String,
        /// The kernel's provisional selection value for this exec (its
        /// tag tells it from a later exec's), 0 when it made none.
        exec_sel: u32,
        /// The process's name right after this exec.
        comm: String,
    },
    Fork(u32),
    /// A child forked by a rejected exec before the rejection reached the
    /// kernel map; `comm`: the name it was forked with.
    ForkOfRejected {
        pid: u32,
        comm: String,
    },
    Listen(u32),
    Exit(u32),
}

/// Resources of selected processes, shared with the span builder.
pub type Resources = Arc<RwLock<HashMap<u32, Arc<Resource>>>>;

/// One selector's criteria: listed pids always match; otherwise every given
/// criterion (port, executable) must hold, and at least one must be given.
fn criteria(
    open_ports: &PortSet,
    exe: Option<&regex::Regex>,
    pids: &[u32],
    p: &Candidate<'_>,
) -> bool {
    if pids.contains(&p.pid) {
        return true;
    }
    if open_ports.is_empty() && exe.is_none() {
        return false;
    }
    let port_ok = open_ports.is_empty() || p.ports.iter().any(|port| open_ports.contains(*port));
    let exe_ok = exe.is_none_or(|re| {
        re.is_match(p.exe_name)
            || p.cmd.first().is_some_and(|a0| {
                re.is_match(a0)
                    || resource::started_as(a0).is_some_and(|n| n != a0 && re.is_match(n))
            })
    });
    port_ok && exe_ok
}

/// What selection looks at for one process.
pub struct Candidate<'a> {
    pub pid: u32,
    pub exe_name: &'a str,
    pub cmd: &'a [String],
    pub ports: &'a [u16],
}

/// The `discovery.services` entry a process falls under, if any.
pub fn service_rule<'a>(d: &'a Discovery, p: &Candidate<'_>) -> Option<&'a ServiceRule> {
    d.services
        .iter()
        .find(|r| criteria(&r.open_ports, r.executable_name.as_ref(), &r.pids, p))
}

/// Is a process selected? The top-level selectors or any services entry;
/// with no selector at all, listening on any TCP port is enough.
pub fn matches(d: &Discovery, p: &Candidate<'_>) -> bool {
    if !d.has_selector() {
        return !p.ports.is_empty();
    }
    criteria(&d.open_ports, d.executable_name.as_ref(), &d.pids, p) || service_rule(d, p).is_some()
}

/// Can a listener on `port` decide a selection? Only these ports are kept
/// from a namespace's listener table, so a namespace without one (a pod
/// serving other ports) costs no read of its processes' open files.
pub fn port_of_interest(d: &Discovery, port: u16) -> bool {
    !d.has_selector()
        || d.open_ports.contains(port)
        || d.services.iter().any(|r| r.open_ports.contains(port))
}

/// Can any listener decide a selection? When none can, no process's ports
/// are looked up at all.
pub fn any_port_of_interest(d: &Discovery) -> bool {
    !d.has_selector()
        || !d.open_ports.is_empty()
        || d.services.iter().any(|r| !r.open_ports.is_empty())
}

/// Service naming from configuration for a selected process.
pub fn naming_for(d: &Discovery, p: &Candidate<'_>) -> resource::Naming {
    let rule = service_rule(d, p);
    resource::Naming {
        name: rule.and_then(|r| r.name.clone()),
        namespace: rule
            .and_then(|r| r.namespace.clone())
            .or_else(|| d.service_namespace.clone()),
    }
}

/// Service naming for a process selected at exec, from the exec'ed path
/// (all there is before /proc is read, or once the process is gone).
pub fn naming_for_exec(d: &Discovery, pid: u32, path: &str) -> resource::Naming {
    let cmd = [path.to_owned()];
    naming_for(
        d,
        &Candidate {
            pid,
            exe_name: path.rsplit('/').next().unwrap_or(path),
            cmd: &cmd,
            ports: &[],
        },
    )
}

/// Whether `pid` has exec'ed again since the exec of `path` that named it
/// `comm`: its name and its executable both differ (a rename alone changes
/// the name; a path through a symlink alone, the executable's name).
fn exec_since(pid: u32, path: &str, comm: &str) -> bool {
    let renamed = procfs::comm(pid).is_some_and(|c| c != comm.trim_end());
    let other_exe = procfs::exe_path(pid)
        .is_some_and(|e| e.file_name() != std::path::Path::new(path).file_name());
    renamed && other_exe
}

pub struct Discoverer {
    cfg: Discovery,
    kernel: SelectedPids,
    resources: Resources,
    metrics: Arc<SelfMetrics>,
    host: String,
    self_pid: u32,
    /// pid -> start time of the process we selected (guards against pid reuse).
    selected: HashMap<u32, u64>,
    /// SDK-instrumented processes already logged.
    sdk_noted: std::collections::HashSet<u32>,
    /// Files handed to the TLS attacher (it runs on the reader thread).
    tls_files: Option<crossbeam_channel::Sender<std::path::PathBuf>>,
    tls_offered: std::collections::HashSet<std::path::PathBuf>,
    /// Kept from one full scan to the next (what each process listens on).
    listen_scan: procfs::ListenScan,
}

impl Discoverer {
    pub fn new(
        cfg: Discovery,
        kernel: SelectedPids,
        resources: Resources,
        metrics: Arc<SelfMetrics>,
    ) -> Self {
        Self {
            cfg,
            kernel,
            resources,
            metrics,
            host: resource::host_name(),
            self_pid: std::process::id(),
            selected: HashMap::new(),
            sdk_noted: Default::default(),
            tls_files: None,
            tls_offered: Default::default(),
            listen_scan: Default::default(),
        }
    }

    /// Where to send files that may need TLS probes (None: TLS capture off).
    pub fn with_tls(mut self, files: crossbeam_channel::Sender<std::path::PathBuf>) -> Self {
        self.tls_files = Some(files);
        self
    }

    /// Offers the TLS candidate files of a selected process, once each.
    /// Repeated on rescans: a library loaded later (dlopen) is found then.
    fn offer_tls_files(&mut self, pid: u32) {
        let Some(tx) = &self.tls_files else {
            return;
        };
        for f in procfs::tls_candidates(pid) {
            let key = std::fs::canonicalize(&f).unwrap_or(f);
            if self.tls_offered.len() < 4096 && self.tls_offered.insert(key.clone()) {
                let _ = tx.try_send(key);
            }
        }
    }

    /// Evaluates one process and updates the kernel map and resources.
    /// `scan`: None skips the listening-port lookup (reading a netns's TCP
    /// table walks every established socket: too costly for every exec).
    fn evaluate(&mut self, pid: u32, scan: Option<&mut procfs::ListenScan>) {
        if pid == self.self_pid {
            return;
        }
        let Some(exe) = procfs::exe_path(pid) else {
            // Kernel threads and vanished processes.
            self.deselect(pid);
            return;
        };
        let exe_name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmd = procfs::cmdline(pid);
        let ports = match scan {
            Some(scan) if any_port_of_interest(&self.cfg) => {
                scan.ports(pid, &|port| port_of_interest(&self.cfg, port))
            }
            _ => Vec::new(),
        };
        let cand = Candidate {
            pid,
            exe_name: &exe_name,
            cmd: &cmd,
            ports: &ports,
        };
        if matches(&self.cfg, &cand) && !self.skip_for_sdk(pid) {
            let naming = naming_for(&self.cfg, &cand);
            self.select(pid, None, naming);
        } else if self.selected.contains_key(&pid) && !self.inherited(pid) {
            self.deselect(pid);
        }
    }

    /// SDK-instrumented processes: always noted once; skipped when configured.
    fn skip_for_sdk(&mut self, pid: u32) -> bool {
        let Some(sdk) = resource::detect_sdk(pid) else {
            return false;
        };
        if self.sdk_noted.insert(pid) {
            if self.cfg.skip_sdk_instrumented {
                tracing::info!(pid, sdk, "process is instrumented by an OpenTelemetry SDK: skipping it (discovery.skip_sdk_instrumented)");
            } else {
                tracing::info!(pid, sdk, "process is instrumented by an OpenTelemetry SDK: its spans may duplicate ours (set discovery.skip_sdk_instrumented to skip it)");
            }
        }
        self.cfg.skip_sdk_instrumented
    }

    /// A child forked by a selected process keeps its selection until it
    /// execs something else (pre-fork servers inherit listening sockets).
    fn inherited(&self, pid: u32) -> bool {
        procfs::ppid(pid).is_some_and(|pp| self.selected.contains_key(&pp))
            && procfs::exe_path(pid) == procfs::ppid(pid).and_then(procfs::exe_path)
    }

    fn select(&mut self, pid: u32, exec_path: Option<&str>, naming: resource::Naming) {
        let start = procfs::start_time(pid).unwrap_or(0);
        let confirmed = self
            .kernel
            .flags(pid)
            .is_some_and(|f| f & abi::SEL_CONFIRMED != 0);
        if self.selected.get(&pid) == Some(&start) && confirmed {
            return;
        }
        let flags = if self.cfg.pids.contains(&pid) {
            abi::SEL_CONFIRMED | abi::SEL_EXPLICIT
        } else {
            abi::SEL_CONFIRMED
        };
        // The resource goes first: the kernel traces the process from the
        // insert on, and its first span must find the configured naming.
        let res = Arc::new(resource::build(pid, &self.host, exec_path, &naming));
        let flags = if resource::follows_goroutines(&res) {
            flags | abi::SEL_GO
        } else {
            flags
        };
        let before = self
            .resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, res.clone());
        if let Err(e) = self.kernel.insert(pid, flags) {
            tracing::warn!(pid, error = %e, "could not select process");
            let mut resources = self.resources.write().unwrap_or_else(|e| e.into_inner());
            match before {
                Some(r) => resources.insert(pid, r),
                None => resources.remove(&pid),
            };
            return;
        }
        tracing::info!(pid, service = %res.service_name, "instrumenting process");
        self.selected.insert(pid, start);
        self.metrics.set_instrumented(self.selected.len());
        self.offer_tls_files(pid);
    }

    /// Whether `pid` still holds the selection it inherited at fork: once it
    /// exec'ed, the kernel replaced or dropped it, and the exec decides.
    fn still_inherited(&self, pid: u32) -> bool {
        self.kernel
            .flags(pid)
            .is_some_and(|f| f & abi::SEL_INHERITED != 0)
    }

    /// A child the kernel selected at fork: record it, never write the kernel
    /// map (it may have exec'ed meanwhile, and the kernel already decided).
    fn adopt(&mut self, pid: u32) {
        if !self.still_inherited(pid) || self.selected.contains_key(&pid) {
            return;
        }
        // A forked child carries its parent's configured naming.
        let ppid = procfs::ppid(pid);
        let parent = ppid.and_then(|pp| {
            self.resources
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&pp)
                .cloned()
        });
        let res = Arc::new(resource::of_fork(
            pid,
            ppid.unwrap_or(0),
            parent.as_deref(),
            &self.host,
        ));
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, res.clone());
        if !self.still_inherited(pid) {
            // It exec'ed while /proc was read: what we built may describe the
            // parent's program. Withdraw it, unless something newer replaced it.
            let mut resources = self.resources.write().unwrap_or_else(|e| e.into_inner());
            if resources.get(&pid).is_some_and(|r| Arc::ptr_eq(r, &res)) {
                resources.remove(&pid);
            }
            return;
        }
        self.selected
            .insert(pid, procfs::start_time(pid).unwrap_or(0));
        self.metrics.set_instrumented(self.selected.len());
        self.offer_tls_files(pid);
    }

    /// Removes a rejected exec's provisional selection, and only that one.
    /// A wrapper (`ip netns exec`, `sh -c`, `env`) execs its target within
    /// milliseconds, and the target's exec writes its own selection, which
    /// its own event decides on, at any moment between a check here and the
    /// removal. The kernel renames the process and switches its executable
    /// well before it writes that selection, so: already switched, leave the
    /// map alone; switched by just after the removal, the new selection may
    /// have gone with ours, and it is put back untagged (any rejection may
    /// remove an untagged one).
    fn withdraw_rejected_exec(&mut self, pid: u32, exec_sel: u32, path: &str, comm: &str) {
        let ours = exec_sel == 0
            || self
                .kernel
                .flags(pid)
                .is_some_and(|f| f == exec_sel || f == abi::SEL_PROVISIONAL);
        if !ours || exec_since(pid, path, comm) {
            return;
        }
        self.kernel.remove(pid);
        if exec_since(pid, path, comm) {
            if let Err(e) = self.kernel.insert(pid, abi::SEL_PROVISIONAL) {
                tracing::warn!(pid, error = %e, "could not restore an exec's selection");
            }
        }
    }

    fn deselect(&mut self, pid: u32) {
        if self.selected.remove(&pid).is_some() {
            self.kernel.remove(pid);
            tracing::info!(pid, "stopped instrumenting process");
            self.metrics.set_instrumented(self.selected.len());
        }
    }

    fn exited(&mut self, pid: u32) {
        if self.selected.contains_key(&pid) {
            self.kernel.remove(pid);
        }
        self.forget(pid);
    }

    /// Drops what discovery holds for `pid`, leaving the kernel map alone.
    fn forget(&mut self, pid: u32) {
        if self.selected.remove(&pid).is_some() {
            self.metrics.set_instrumented(self.selected.len());
        }
        self.sdk_noted.remove(&pid);
        // Spans still in flight hold their own Arc of the resource.
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    pub fn full_scan(&mut self) {
        let pids = procfs::all_pids();
        let mut scan = std::mem::take(&mut self.listen_scan);
        scan.next_scan(&pids);
        for pid in &pids {
            self.evaluate(*pid, Some(&mut scan));
        }
        self.listen_scan = scan;
        // Forget processes that died without us seeing the exit event.
        let gone: Vec<u32> = self
            .selected
            .keys()
            .copied()
            .filter(|p| procfs::start_time(*p).is_none())
            .collect();
        for pid in gone {
            self.exited(pid);
        }
        let selected: Vec<u32> = self.selected.keys().copied().collect();
        for pid in selected {
            self.offer_tls_files(pid);
        }
    }

    pub fn handle(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Exec {
                pid,
                selected: Some(true),
                path,
                ..
            } => {
                let naming = naming_for_exec(&self.cfg, pid, &path);
                self.select(pid, Some(&path), naming);
            }
            ProcEvent::Exec {
                pid,
                selected: Some(false),
                exec_sel,
                path,
                comm,
            } => {
                self.withdraw_rejected_exec(pid, exec_sel, &path, &comm);
                self.forget(pid);
            }
            ProcEvent::Exec {
                pid,
                selected: None,
                ..
            } => {
                // The kernel dropped an inherited selection at exec: decide afresh.
                if self.selected.remove(&pid).is_some() && !self.cfg.pids.contains(&pid) {
                    self.kernel.remove(pid);
                }
                // Just exec'ed: not listening yet (a listen event or the
                // rescan picks up inherited listening sockets).
                self.evaluate(pid, None);
            }
            ProcEvent::Listen(pid) => self.evaluate(pid, Some(&mut procfs::ListenScan::default())),
            ProcEvent::Fork(pid) => self.adopt(pid),
            ProcEvent::ForkOfRejected { pid, comm } => {
                // Until it execs it runs its parent's program, so the
                // exec race of withdraw_rejected_exec applies, with the
                // executable it has now.
                let exe = procfs::exe_path(pid)
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.withdraw_rejected_exec(pid, abi::SEL_INHERITED, &exe, &comm);
                self.forget(pid);
            }
            ProcEvent::Exit(pid) => self.exited(pid),
        }
    }

    /// A full scan; returns when the next one is due.
    fn timed_full_scan(&mut self) -> Instant {
        let started = Instant::now();
        self.full_scan();
        let took = started.elapsed();
        let wait = next_rescan(took);
        tracing::debug!(
            took_ms = took.as_millis() as u64,
            next_s = wait.as_secs(),
            "discovery rescan"
        );
        Instant::now() + wait
    }

    /// Runs until the channel closes (agent shutdown).
    pub fn run(mut self, events: Receiver<ProcEvent>) {
        let mut next_scan = self.timed_full_scan();
        loop {
            let wait = next_scan.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Ok(ev) => self.handle(ev),
                Err(RecvTimeoutError::Timeout) => next_scan = self.timed_full_scan(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortSet;

    fn disc(ports: &str, exe: Option<&str>, pids: Vec<u32>) -> Discovery {
        Discovery {
            open_ports: PortSet::parse(ports).unwrap(),
            executable_name: exe.map(|e| regex::Regex::new(e).unwrap()),
            pids,
            services: vec![],
            skip_sdk_instrumented: false,
            service_namespace: None,
        }
    }

    fn m(d: &Discovery, pid: u32, exe: &str, ports: &[u16]) -> bool {
        matches(
            d,
            &Candidate {
                pid,
                exe_name: exe,
                cmd: &[],
                ports,
            },
        )
    }

    /// Discovery selecting `^redis-cli$` at exec, with a map of its own.
    fn exec_discoverer() -> Discoverer {
        let kernel = SelectedPids::standalone().expect("BPF map: run the tests as root");
        Discoverer::new(
            disc("", Some("^redis-cli$"), vec![]),
            kernel,
            Resources::default(),
            Arc::new(SelfMetrics::new()),
        )
    }

    /// `ip netns exec redis-cli ...`: the kernel selected the pid again at the
    /// second exec before the wrapper's rejection got here. The rejection
    /// must leave that selection alone; the target's own rejection removes it.
    #[test]
    fn wrapper_rejection_keeps_a_later_exec_selection() {
        let mut d = exec_discoverer();
        let pid = 4_000_000; // above any pid_max: nothing to read in /proc
        let tag = |t: u32| abi::SEL_PROVISIONAL | (t << abi::SEL_TAG_SHIFT);
        let (wrapper, target) = (tag(0x1234), tag(0x5678));
        d.kernel.insert(pid, target).unwrap();
        let exec = |exec_sel| ProcEvent::Exec {
            pid,
            selected: Some(false),
            path: "/usr/sbin/ip".into(),
            exec_sel,
            comm: "ip".into(),
        };
        d.handle(exec(wrapper));
        assert_eq!(
            d.kernel.flags(pid),
            Some(target),
            "the later exec's selection was dropped"
        );
        d.handle(exec(target));
        assert_eq!(
            d.kernel.flags(pid),
            None,
            "a rejected exec kept its own selection"
        );
        // A selection put back untagged (an exec raced a removal) goes with
        // the next rejection, whatever its tag.
        d.kernel.insert(pid, abi::SEL_PROVISIONAL).unwrap();
        d.handle(exec(wrapper));
        assert_eq!(d.kernel.flags(pid), None, "an untagged selection stayed");
    }

    /// A child forked by a rejected exec loses the selection it inherited,
    /// unless it exec'ed since: that exec's own event decides.
    #[test]
    fn a_rejected_exec_takes_its_forks_with_it() {
        let mut d = exec_discoverer();
        let (child, execd) = (4_000_001, 4_000_002); // no /proc entries
        let tagged = abi::SEL_PROVISIONAL | (0x99 << abi::SEL_TAG_SHIFT);
        d.kernel.insert(child, abi::SEL_INHERITED).unwrap();
        d.kernel.insert(execd, tagged).unwrap();
        for pid in [child, execd] {
            d.handle(ProcEvent::ForkOfRejected {
                pid,
                comm: "bash".into(),
            });
        }
        assert_eq!(d.kernel.flags(child), None, "the fork kept its selection");
        assert_eq!(d.kernel.flags(execd), Some(tagged), "its exec's was taken");
        d.kernel.remove(execd);
    }

    /// The agent's own process has not exec'ed since it started as itself,
    /// and has since any other program.
    #[test]
    fn exec_since_needs_both_name_and_executable_changed() {
        let me = std::process::id();
        let comm = procfs::comm(me).unwrap();
        let exe = procfs::exe_path(me).unwrap();
        let exe = exe.to_str().unwrap();
        assert!(!exec_since(me, exe, &comm));
        assert!(exec_since(me, "/usr/sbin/ip", "ip"));
        // Renamed (prctl) only, or reached through a symlink only: no exec.
        assert!(!exec_since(me, exe, "ip"));
        assert!(!exec_since(me, "/usr/bin/python3", &comm));
        assert!(!exec_since(u32::MAX, "/usr/sbin/ip", "ip"));
    }

    #[test]
    fn selection_rules() {
        let none = disc("", None, vec![]);
        assert!(m(&none, 1, "nginx", &[80]));
        assert!(!m(&none, 1, "curl", &[]));
        let port = disc("8000-8999", None, vec![]);
        assert!(m(&port, 1, "python3", &[8080]));
        assert!(!m(&port, 1, "python3", &[80]));
        let exe = disc("", Some("^curl$"), vec![]);
        assert!(m(&exe, 1, "curl", &[]));
        assert!(!m(&exe, 1, "wget", &[]));
        let both = disc("80", Some("nginx"), vec![]);
        assert!(!m(&both, 1, "python3", &[80]));
        let pids = disc("", None, vec![42]);
        assert!(m(&pids, 42, "x", &[]));
        assert!(!m(&pids, 43, "x", &[80]));
        // A program started through a link of another name matches by the
        // name it was started by, also from a full path or a rewritten title.
        let redis = disc("", Some("^redis-server$"), vec![]);
        let started = |argv0: &str| {
            matches(
                &redis,
                &Candidate {
                    pid: 1,
                    exe_name: "redis-check-rdb",
                    cmd: &[argv0.to_owned()],
                    ports: &[],
                },
            )
        };
        assert!(started("redis-server"));
        assert!(started("/usr/bin/redis-server 127.0.0.1:6379"));
        assert!(!started("/usr/bin/redis-check-rdb"));
        assert!(!started("/usr/bin/redis-server-old"));
    }

    #[test]
    fn services_select_and_name() {
        let mut d = disc("", None, vec![]);
        d.services.push(ServiceRule {
            name: Some("checkout".into()),
            namespace: Some("shop".into()),
            open_ports: PortSet::parse("8080").unwrap(),
            executable_name: None,
            pids: vec![],
        });
        let c = Candidate {
            pid: 1,
            exe_name: "python3",
            cmd: &[],
            ports: &[8080],
        };
        assert!(matches(&d, &c));
        let n = naming_for(&d, &c);
        assert_eq!(
            (n.name.as_deref(), n.namespace.as_deref()),
            (Some("checkout"), Some("shop"))
        );
        assert!(!m(&d, 1, "python3", &[9090]));
    }

    #[test]
    fn only_ports_a_selector_names_are_of_interest() {
        // No selector: any listener selects its process.
        let any = disc("", None, vec![]);
        assert!(port_of_interest(&any, 22) && port_of_interest(&any, 8080));
        let some = disc("8080-8081", None, vec![]);
        assert!(port_of_interest(&some, 8081));
        assert!(!port_of_interest(&some, 22));
        // A port named only by a services entry counts too; the selection
        // must agree (a port left out never changes whether a process matches).
        let mut svc = disc("", Some("^nginx$"), vec![]);
        svc.services.push(ServiceRule {
            name: None,
            namespace: None,
            open_ports: PortSet::parse("9090").unwrap(),
            executable_name: None,
            pids: vec![],
        });
        assert!(port_of_interest(&svc, 9090));
        assert!(!port_of_interest(&svc, 8080));
        assert!(any_port_of_interest(&any) && any_port_of_interest(&some));
        assert!(any_port_of_interest(&svc));
        // Selected by name only: no port is of interest, none is looked up.
        let by_name = disc("", Some("^nginx$"), vec![]);
        assert!(!any_port_of_interest(&by_name));
        assert!(!(0..=u16::MAX).any(|p| port_of_interest(&by_name, p)));
        for ports in [&[9090u16][..], &[8080], &[8080, 9090], &[]] {
            let kept: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|p| port_of_interest(&svc, *p))
                .collect();
            assert_eq!(
                m(&svc, 1, "python3", ports),
                m(&svc, 1, "python3", &kept),
                "{ports:?}"
            );
        }
    }

    #[test]
    fn a_slow_rescan_waits_longer_within_bounds() {
        assert_eq!(next_rescan(Duration::from_millis(2)), RESCAN);
        assert_eq!(
            next_rescan(Duration::from_millis(40)),
            Duration::from_secs(20)
        );
        assert_eq!(next_rescan(Duration::from_secs(3)), MAX_RESCAN);
        assert_eq!(next_rescan(Duration::MAX), MAX_RESCAN);
    }
}
