//! Process selection. Kernel events (exec, fork, listen, exit) make it
//! prompt; a periodic /proc rescan is the backstop for anything missed. The
//! selected set lives in the kernel's pid map, so unselected processes cost
//! one lookup per syscall and nothing more.

pub mod procfs;
pub mod resource;

use crate::config::Discovery;
use crate::selfmetrics::SelfMetrics;
use crate::tracer::{abi, SelectedPids};
use autotel_model::Resource;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Full /proc rescan period.
const RESCAN: Duration = Duration::from_secs(5);

/// Process events forwarded from the ring-buffer reader.
#[derive(Debug, Clone)]
pub enum ProcEvent {
    /// `selected`: the pipeline's decision when selection happens at exec
    /// (executable name); None when discovery must evaluate the process.
    Exec {
        pid: u32,
        selected: Option<bool>,
        path: String,
    },
    Fork(u32),
    Listen(u32),
    Exit(u32),
}

/// Resources of selected processes, shared with the span builder.
pub type Resources = Arc<RwLock<HashMap<u32, Arc<Resource>>>>;

/// Does a process match the configured selectors? Explicit pids always do;
/// otherwise every configured criterion (port, executable) must hold. With no
/// selector at all, listening on any TCP port is enough.
pub fn matches(d: &Discovery, pid: u32, exe_name: &str, cmd: &[String], ports: &[u16]) -> bool {
    if d.pids.contains(&pid) {
        return true;
    }
    if !d.has_selector() {
        return !ports.is_empty();
    }
    if d.open_ports.is_empty() && d.executable_name.is_none() {
        return false; // only pids were given
    }
    let port_ok = d.open_ports.is_empty() || ports.iter().any(|p| d.open_ports.contains(*p));
    let exe_ok = d
        .executable_name
        .as_ref()
        .is_none_or(|re| re.is_match(exe_name) || cmd.first().is_some_and(|a0| re.is_match(a0)));
    port_ok && exe_ok
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
        }
    }

    /// Evaluates one process and updates the kernel map and resources.
    fn evaluate(&mut self, pid: u32, scan: &mut procfs::ListenScan) {
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
        let needs_ports = !self.cfg.has_selector() || !self.cfg.open_ports.is_empty();
        let ports = if needs_ports {
            scan.ports(pid)
        } else {
            Vec::new()
        };
        if matches(&self.cfg, pid, &exe_name, &cmd, &ports) {
            self.select(pid, None);
        } else if self.selected.contains_key(&pid) && !self.inherited(pid) {
            self.deselect(pid);
        }
    }

    /// A child forked by a selected process keeps its selection until it
    /// execs something else (pre-fork servers inherit listening sockets).
    fn inherited(&self, pid: u32) -> bool {
        procfs::ppid(pid).is_some_and(|pp| self.selected.contains_key(&pp))
            && procfs::exe_path(pid) == procfs::ppid(pid).and_then(procfs::exe_path)
    }

    fn select(&mut self, pid: u32, exec_path: Option<&str>) {
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
        if let Err(e) = self.kernel.insert(pid, flags) {
            tracing::warn!(pid, error = %e, "could not select process");
            return;
        }
        let res = Arc::new(resource::build(pid, &self.host, exec_path));
        tracing::info!(pid, service = %res.service_name, "instrumenting process");
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, res);
        self.selected.insert(pid, start);
        self.metrics.set_instrumented(self.selected.len());
    }

    /// A child the kernel selected at fork: record it, never write the kernel
    /// map (it may have exec'ed meanwhile, and the kernel already decided).
    fn adopt(&mut self, pid: u32) {
        if self.kernel.flags(pid).is_none() || self.selected.contains_key(&pid) {
            return;
        }
        let res = Arc::new(resource::build(pid, &self.host, None));
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, res);
        self.selected
            .insert(pid, procfs::start_time(pid).unwrap_or(0));
        self.metrics.set_instrumented(self.selected.len());
    }

    fn deselect(&mut self, pid: u32) {
        if self.selected.remove(&pid).is_some() {
            self.kernel.remove(pid);
            tracing::info!(pid, "stopped instrumenting process");
            self.metrics.set_instrumented(self.selected.len());
        }
    }

    fn exited(&mut self, pid: u32) {
        if self.selected.remove(&pid).is_some() {
            self.kernel.remove(pid);
            self.metrics.set_instrumented(self.selected.len());
        }
        // Spans still in flight hold their own Arc of the resource.
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }

    pub fn full_scan(&mut self) {
        let mut scan = procfs::ListenScan::default();
        let pids = procfs::all_pids();
        for pid in &pids {
            self.evaluate(*pid, &mut scan);
        }
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
    }

    pub fn handle(&mut self, ev: ProcEvent) {
        let mut scan = procfs::ListenScan::default();
        match ev {
            ProcEvent::Exec {
                pid,
                selected: Some(true),
                path,
            } => self.select(pid, Some(&path)),
            ProcEvent::Exec {
                pid,
                selected: Some(false),
                ..
            } => {
                self.kernel.remove(pid);
                self.exited(pid);
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
                self.evaluate(pid, &mut scan);
            }
            ProcEvent::Listen(pid) => self.evaluate(pid, &mut scan),
            ProcEvent::Fork(pid) => self.adopt(pid),
            ProcEvent::Exit(pid) => self.exited(pid),
        }
    }

    /// Runs until the channel closes (agent shutdown).
    pub fn run(mut self, events: Receiver<ProcEvent>) {
        self.full_scan();
        let mut next_scan = Instant::now() + RESCAN;
        loop {
            let wait = next_scan.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Ok(ev) => self.handle(ev),
                Err(RecvTimeoutError::Timeout) => {
                    self.full_scan();
                    next_scan = Instant::now() + RESCAN;
                }
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
        }
    }

    #[test]
    fn selection_rules() {
        let none = disc("", None, vec![]);
        assert!(matches(&none, 1, "nginx", &[], &[80]));
        assert!(!matches(&none, 1, "curl", &[], &[]));
        let port = disc("8000-8999", None, vec![]);
        assert!(matches(&port, 1, "python3", &[], &[8080]));
        assert!(!matches(&port, 1, "python3", &[], &[80]));
        let exe = disc("", Some("^curl$"), vec![]);
        assert!(matches(&exe, 1, "curl", &[], &[]));
        assert!(!matches(&exe, 1, "wget", &[], &[]));
        let both = disc("80", Some("nginx"), vec![]);
        assert!(!matches(&both, 1, "python3", &[], &[80]));
        let pids = disc("", None, vec![42]);
        assert!(matches(&pids, 42, "x", &[], &[]));
        assert!(!matches(&pids, 43, "x", &[], &[80]));
    }
}
