//! Loads and attaches the BPF object, owns its links, and hands out what the
//! rest of the agent needs: the ring buffers, the selected-pid map and the
//! kernel-side counters. Dropping the Tracer detaches every program.

pub mod abi;
mod hooks;
pub mod ring;
mod selection;
pub mod tls;
pub mod tracefs;

#[allow(clippy::all, dead_code, non_camel_case_types, unsafe_op_in_unsafe_fn)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/autotel.skel.rs"));
}

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};
use skel::{AutotelSkel, AutotelSkelBuilder};
use std::mem::MaybeUninit;

pub use hooks::{kernel_has_socket_hooks, CaptureHooks};
pub use selection::SelectedPids;

pub struct TracerOptions {
    pub capture_max_bytes: u32,
    /// The prefix on connections that showed the HTTP/2 preface.
    pub capture_http2_max_bytes: u32,
    pub data_ringbuf_bytes: u32,
    pub wakeup_bytes: u64,
    /// Select every exec provisionally (executable-name selection).
    pub select_on_exec: bool,
    /// Trace context in TCP options for connections of processes under
    /// this cgroup v2 directory (None: off).
    pub tcp_option_cgroup: Option<std::path::PathBuf>,
    /// Follow the TCP flows of every process on the host.
    pub network_whole_host: bool,
    pub capture_hooks: CaptureHooks,
    /// Go TLS: Read at its RETs even where its copy call was found.
    pub go_tls_read_at_returns: bool,
    /// OpenSSL: probes on SSL_read/SSL_write even where the internal
    /// functions were found.
    pub openssl_at_exported: bool,
}

pub struct Tracer {
    // Links first: they must drop (detach) before the object they point into.
    links: Vec<Link>,
    /// Uprobe links of TLS libraries, added while the rings borrow the skeleton.
    tls_links: std::cell::RefCell<Vec<Link>>,
    /// TLS library files already handled (attached or skipped).
    tls_seen: std::cell::RefCell<std::collections::HashSet<std::path::PathBuf>>,
    /// TLS probes go on as uprobe_multi links (see tls.rs).
    uprobe_multi: bool,
    go_tls_read_at_returns: bool,
    openssl_at_exported: bool,
    pub skel: AutotelSkel<'static>,
}

const SOCKOPS_PROGRAM: &str = "at_sockops";

/// Routes libbpf's own messages (including verifier logs) into our logs.
fn libbpf_log(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    // Symbol lookups of TLS probes fail for most binaries by design: the
    // outcome is counted in autotel_tls_files_total, not worth a warning.
    let expected = msg.contains("failed to find symbol") || msg.contains("in symtab for");
    match level {
        libbpf_rs::PrintLevel::Warn if expected => tracing::debug!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
    }
}

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Says plainly what is missing before the kernel answers EPERM.
fn require_privileges() -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    anyhow::bail!(
        "missing privileges: loading BPF programs needs root, or the capabilities \
         CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read \
         other processes' /proc entries); run as root, e.g. `sudo autotel run`, or see \
         deploy/ for the capability set"
    )
}

const CAP_NET_ADMIN: u32 = 12;

/// sock_ops programs are networking programs: the kernel wants CAP_NET_ADMIN.
fn require_net_admin() -> Result<()> {
    let caps = effective_caps();
    if caps & (1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN) != 0 {
        return Ok(());
    }
    anyhow::bail!(
        "context_propagation: tcp_option needs the CAP_NET_ADMIN capability (a sock_ops \
         program on a cgroup); add it, or set context_propagation: off"
    )
}

impl Tracer {
    pub fn load(opts: &TracerOptions) -> Result<Self> {
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_log)));
        require_privileges()?;
        if opts.tcp_option_cgroup.is_some() {
            require_net_admin()?;
        }
        // tp_btf hooks and PMU uprobes do not need tracefs; it is mounted
        // when missing for tools (and kernels) that look for it.
        if let Err(e) = tracefs::ensure_mounted() {
            tracing::warn!("{e:#}");
        }
        // The open object must outlive the skeleton, which lives as long as
        // the agent: leak one small allocation instead of self-referencing.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let builder = AutotelSkelBuilder::default();
        let mut open = builder.open(storage).context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.capture_max_bytes = opts.capture_max_bytes.min(abi::MAX_CAPTURE);
        rodata.capture_wide_bytes = opts.capture_http2_max_bytes.min(abi::MAX_CAPTURE);
        rodata.wakeup_data_bytes = opts.wakeup_bytes;
        rodata.self_tgid = std::process::id();
        rodata.select_on_exec = u32::from(opts.select_on_exec);
        rodata.propagate_ctx = u32::from(opts.tcp_option_cgroup.is_some());
        // Loading a sock_ops program needs CAP_NET_ADMIN: only when it is used.
        open.progs
            .at_sockops
            .set_autoload(opts.tcp_option_cgroup.is_some());
        rodata.network_whole_host = u32::from(opts.network_whole_host);
        let socket = opts
            .capture_hooks
            .use_socket(hooks::kernel_has_socket_hooks())?;
        // One set of capture hooks is loaded, the other is not even verified.
        open.progs.at_sys_enter.set_autoload(!socket);
        open.progs.at_sys_exit.set_autoload(!socket);
        open.progs.at_sock_send.set_autoload(socket);
        open.progs.at_sock_recv.set_autoload(socket);
        rodata.socket_capture = u32::from(socket);
        open.progs
            .at_tcp_send_pre
            .set_autoload(socket && opts.tcp_option_cgroup.is_some());
        tracing::info!(
            hooks = if socket { "socket" } else { "syscall" },
            "payload capture"
        );
        let uprobe_multi = tls::kernel_has_uprobe_multi();
        if uprobe_multi {
            // The programs attached per file (tls.rs); the same test picks
            // them here, so a new one cannot be left out.
            for mut prog in open.open_object_mut().progs_mut() {
                if tls::is_per_file_program(&prog.name().to_string_lossy()) {
                    prog.set_attach_type(libbpf_rs::ProgramAttachType::TraceUprobeMulti);
                }
            }
        }
        open.maps
            .data_events
            .set_max_entries(opts.data_ringbuf_bytes.next_power_of_two())
            .context("sizing the data ring buffer")?;
        // One event scratch slot per CPU, indexed by CPU id.
        let cpus = libbpf_rs::num_possible_cpus().context("counting possible CPUs")?;
        open.maps
            .data_scratch
            .set_max_entries(cpus as u32)
            .context("sizing the event scratch space")?;
        let skel = open.load().context(
            "loading BPF programs into the kernel (the verifier log is above at debug level; \
             run `autotel check` to see what this host is missing)",
        )?;
        let mut tracer = Tracer {
            links: Vec::new(),
            tls_links: Default::default(),
            tls_seen: Default::default(),
            uprobe_multi,
            go_tls_read_at_returns: opts.go_tls_read_at_returns,
            openssl_at_exported: opts.openssl_at_exported,
            skel,
        };
        tracer.attach_all()?;
        if let Some(dir) = &opts.tcp_option_cgroup {
            tracer.attach_sockops(dir)?;
        }
        Ok(tracer)
    }

    /// Attaches every program on its own so one missing hook is a logged,
    /// counted degradation rather than a failure of the whole agent.
    fn attach_all(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for prog in self.skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if !prog.autoload() {
                continue; // the capture hooks not used on this kernel
            }
            if tls::is_per_file_program(&name) {
                continue; // attached per library file, see tls.rs
            }
            if name == SOCKOPS_PROGRAM {
                continue; // attached to a cgroup when asked for
            }
            match prog.attach() {
                Ok(link) => self.links.push(link),
                Err(e) => {
                    tracing::warn!(program = %name, error = %e, "could not attach BPF program");
                    failed.push(name);
                }
            }
        }
        let essential = [
            "at_sys_enter",
            "at_sys_exit",
            "at_sock_send",
            "at_sock_recv",
            "at_sock_state",
            "at_exec",
        ];
        if let Some(name) = failed.iter().find(|n| essential.contains(&n.as_str())) {
            anyhow::bail!(
                "essential BPF program {name} could not be attached; see `autotel check`"
            );
        }
        tracing::info!(
            attached = self.links.len(),
            failed = failed.len(),
            "BPF programs attached"
        );
        Ok(())
    }

    /// Attaches the TCP-option program to a cgroup v2 directory through a
    /// BPF link: it goes away with the agent, even on SIGKILL.
    fn attach_sockops(&mut self, dir: &std::path::Path) -> Result<()> {
        use std::os::fd::AsRawFd;
        let cgroup = std::fs::File::open(dir)
            .with_context(|| format!("opening cgroup {} for sock_ops", dir.display()))?;
        let prog = self
            .skel
            .object()
            .progs_mut()
            .find(|p| p.name() == SOCKOPS_PROGRAM)
            .context("BPF object has no sock_ops program")?;
        let link = prog.attach_cgroup(cgroup.as_raw_fd()).with_context(|| {
            format!(
                "attaching the sock_ops program to cgroup {} (context_propagation: tcp_option)",
                dir.display()
            )
        })?;
        self.links.push(link);
        tracing::info!(cgroup = %dir.display(), "trace context travels in TCP options");
        Ok(())
    }

    pub fn attached(&self) -> usize {
        self.links.len() + self.tls_links.borrow().len()
    }

    /// The kernel's record of each loaded program.
    fn program_infos(&self) -> Vec<libbpf_rs::libbpf_sys::bpf_prog_info> {
        use std::os::fd::{AsFd, AsRawFd};
        self.skel
            .object()
            .progs()
            .filter_map(|p| {
                let mut info: libbpf_rs::libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of_val(&info) as u32;
                // SAFETY: a valid program fd and a buffer of the stated size.
                let rc = unsafe {
                    libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(
                        p.as_fd().as_raw_fd(),
                        &mut info,
                        &mut len,
                    )
                };
                (rc == 0 && info.id != 0).then_some(info)
            })
            .collect()
    }

    /// Kernel ids of the loaded programs, for `wait_programs_freed`.
    pub fn program_ids(&self) -> Vec<u32> {
        self.program_infos().iter().map(|i| i.id).collect()
    }

    /// Runs the kernel skipped because the same program was already running
    /// on that CPU (an interrupt's softirq changed a TCP state while the
    /// program ran for another socket): what they would have seen is lost,
    /// and nothing else reports it.
    pub fn recursion_misses(&self) -> u64 {
        self.program_infos()
            .iter()
            .map(|i| i.recursion_misses)
            .sum()
    }

    /// An owned handle to the selected-pid map, usable from another thread.
    pub fn selected_pids_handle(&self) -> Result<SelectedPids> {
        let pids = MapHandle::try_from(&self.skel.maps.selected_pids)
            .context("duplicating the pid map fd")?;
        let bits = MapHandle::try_from(&self.skel.maps.selected_bits)
            .context("duplicating the pid bitmap fd")?;
        SelectedPids::new(pids, &bits)
    }

    /// An owned handle to the map of HTTP/2 connections joined midway.
    pub fn h2_joined_handle(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.h2_joined).context("duplicating the h2_joined map fd")
    }

    /// Sums the per-CPU kernel counters: (name, value).
    pub fn kernel_counters(&self) -> Vec<(&'static str, u64)> {
        let map = &self.skel.maps.counters;
        abi::COUNTER_NAMES
            .iter()
            .map(|(idx, name)| {
                let total = map
                    .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
                    .map(|per_cpu| {
                        per_cpu
                            .iter()
                            .filter_map(|v| {
                                v.get(..8)
                                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
                            })
                            .sum()
                    })
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let tls = std::mem::take(self.tls_links.get_mut());
        self.links.extend(tls);
        let n = self.links.len();
        // A uprobe link's release waits for a grace period (~70 ms here):
        // release them all at once so the waits overlap and SIGTERM
        // detaches within a fraction of a second, not after n x 70 ms.
        let handles: Vec<_> = self
            .links
            .drain(..)
            .map(|link| {
                std::thread::Builder::new()
                    .name("detach".into())
                    .spawn(move || drop(link))
            })
            .collect();
        for h in handles.into_iter().flatten() {
            let _ = h.join();
        }
        tracing::info!(detached = n, "BPF programs detached");
    }
}

/// Waits (up to `limit`) until none of `ids` is loaded any more. A
/// uprobe_multi link frees its program only after an RCU tasks-trace grace
/// period, after the link itself is gone: exiting before that would leave
/// our (detached) programs listed for a moment after the agent is gone.
pub fn wait_programs_freed(ids: &[u32], limit: std::time::Duration) {
    let end = std::time::Instant::now() + limit;
    let loaded = |id: u32| {
        // SAFETY: plain syscall wrapper; a returned fd is closed at once.
        let fd = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_fd_by_id(id) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        fd >= 0
    };
    while ids.iter().any(|&id| loaded(id)) {
        if std::time::Instant::now() >= end {
            tracing::warn!("BPF programs still loaded after detach; the kernel frees them shortly");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
