//! `autotel check`: what this host allows, what is missing and how to fix it.
//! Probes features directly (files, capabilities, libbpf probes) rather than
//! guessing from the kernel version.

use crate::tracer::tracefs;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The agent cannot run without it.
    Required,
    /// A feature degrades without it.
    Optional,
}

pub struct Finding {
    pub name: &'static str,
    pub ok: bool,
    pub need: Need,
    pub detail: String,
    pub fix: &'static str,
}

fn cap_effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has_cap(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

fn probe_prog(t: libbpf_rs::libbpf_sys::bpf_prog_type) -> bool {
    // SAFETY: libbpf probe with a null opts pointer, as documented.
    unsafe { libbpf_rs::libbpf_sys::libbpf_probe_bpf_prog_type(t, std::ptr::null()) == 1 }
}

fn probe_map(t: libbpf_rs::libbpf_sys::bpf_map_type) -> bool {
    // SAFETY: as above.
    unsafe { libbpf_rs::libbpf_sys::libbpf_probe_bpf_map_type(t, std::ptr::null()) == 1 }
}

fn kernel_config_has(option: &str) -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let text = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    Some(text.lines().any(|l| l == format!("{option}=y")))
}

pub fn run_checks() -> Vec<Finding> {
    use libbpf_rs::libbpf_sys as sys;
    let mut out = Vec::new();
    let caps = cap_effective();
    let root_like = has_cap(caps, 21); // CAP_SYS_ADMIN covers BPF and PERFMON
    let bpf_caps = root_like || (has_cap(caps, 39) && has_cap(caps, 38));
    out.push(Finding {
        name: "capabilities",
        ok: bpf_caps,
        need: Need::Required,
        detail: format!(
            "CapEff={caps:#x}: CAP_BPF={} CAP_PERFMON={} CAP_SYS_ADMIN={} CAP_SYS_PTRACE={} CAP_DAC_READ_SEARCH={} CAP_NET_ADMIN={}",
            has_cap(caps, 39),
            has_cap(caps, 38),
            has_cap(caps, 21),
            has_cap(caps, 19),
            has_cap(caps, 2),
            has_cap(caps, 12)
        ),
        fix: "run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_NET_ADMIN",
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    out.push(Finding {
        name: "BTF",
        ok: btf,
        need: Need::Required,
        detail: if btf {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "no /sys/kernel/btf/vmlinux".into()
        },
        fix: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)",
    });
    let tfs = tracefs::find();
    let mountable = tfs.is_some() || Path::new(tracefs::TRACEFS).is_dir();
    out.push(Finding {
        name: "tracefs",
        ok: mountable,
        need: Need::Required,
        detail: match tfs {
            Some(p) => format!("mounted at {p}"),
            None if mountable => format!(
                "not mounted; `autotel run` mounts it at {}",
                tracefs::TRACEFS
            ),
            None => "not available".into(),
        },
        fix: "mount -t tracefs nodev /sys/kernel/tracing",
    });
    let tracepoints =
        tfs.is_some_and(|p| Path::new(p).join("events/syscalls/sys_enter_read").exists());
    out.push(Finding {
        name: "syscall tracepoints",
        ok: tracepoints || tfs.is_none(),
        need: Need::Required,
        detail: if tfs.is_none() {
            "unknown until tracefs is mounted".into()
        } else if tracepoints {
            "events/syscalls present".into()
        } else {
            "events/syscalls missing".into()
        },
        fix: "use a kernel with CONFIG_FTRACE_SYSCALLS=y",
    });
    let socket_hooks = crate::tracer::kernel_has_socket_hooks();
    out.push(Finding {
        name: "socket capture hooks",
        ok: socket_hooks,
        need: Need::Optional,
        detail: if socket_hooks {
            "sock_send_length/sock_recv_length present: payload is read per socket transfer".into()
        } else {
            "missing (Linux < 6.3): the syscall hooks capture instead".into()
        },
        fix: "a 6.3+ kernel: without it every syscall of every process runs the capture hooks",
    });
    let ringbuf = probe_map(sys::BPF_MAP_TYPE_RINGBUF);
    out.push(Finding {
        name: "ring buffer",
        ok: ringbuf,
        need: Need::Required,
        detail: format!(
            "BPF_MAP_TYPE_RINGBUF {}",
            if ringbuf {
                "supported"
            } else {
                "not supported"
            }
        ),
        fix: "kernel 5.8 or newer is required",
    });
    // tp_btf programs need BTF ids to load, which libbpf's generic probe
    // cannot supply: probe raw tracepoints and require BTF alongside.
    let raw_tp = probe_prog(sys::BPF_PROG_TYPE_RAW_TRACEPOINT);
    let tp_btf = raw_tp && btf;
    out.push(Finding {
        name: "tp_btf/raw tracepoints",
        ok: tp_btf,
        need: Need::Optional,
        detail: format!(
            "raw tracepoints {}, BTF {}",
            if raw_tp { "loadable" } else { "not loadable" },
            if btf { "present" } else { "missing" }
        ),
        fix: "without it, forked children are picked up by the /proc rescan instead of at once",
    });
    let kprobes = tfs.is_some_and(|p| Path::new(p).join("kprobe_events").exists())
        || kernel_config_has("CONFIG_KPROBES").unwrap_or(false);
    out.push(Finding {
        name: "kprobes",
        ok: kprobes,
        need: Need::Optional,
        detail: if kprobes {
            "available (not needed by autotel)".into()
        } else {
            "not available (not needed: autotel uses tracepoints and uprobes)".into()
        },
        fix: "nothing to do",
    });
    out.push(Finding {
        name: "fentry/fexit",
        ok: false,
        need: Need::Optional,
        detail: "not used: optional fast path, never required".into(),
        fix: "nothing to do",
    });
    let uprobes = Path::new("/sys/bus/event_source/devices/uprobe").exists();
    out.push(Finding {
        name: "uprobes",
        ok: uprobes,
        need: Need::Optional,
        detail: if uprobes && crate::tracer::tls::kernel_has_uprobe_multi() {
            "uprobe PMU present; uprobe_multi links (released in parallel at exit)".into()
        } else if uprobes {
            "uprobe PMU present; no uprobe_multi links (Linux < 6.6): TLS probes detach one by one, about 0.1 s each".into()
        } else {
            "no uprobe PMU".into()
        },
        fix: "needed for TLS plaintext capture: use a kernel with CONFIG_UPROBE_EVENTS=y",
    });
    let libs = crate::tracer::tls::system_tls_libraries();
    out.push(Finding {
        name: "TLS libraries",
        ok: !libs.is_empty(),
        need: Need::Optional,
        detail: if libs.is_empty() {
            "no system libssl or libgnutls (Go programs and libraries of their own are still found per process)".into()
        } else {
            libs.iter()
                .map(|l| format!("{}: {}", l.display(), crate::tracer::tls::probe_plan(l)))
                .collect::<Vec<_>>()
                .join("; ")
        },
        fix: "TLS plaintext of programs using the system's OpenSSL or GnuTLS is captured from the files listed here",
    });
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    out.push(Finding {
        name: "lockdown",
        ok: lockdown != "confidentiality",
        need: Need::Required,
        detail: format!("mode {lockdown} (bpf_probe_write_user is never used)"),
        fix: "lockdown=confidentiality forbids reading kernel memory from BPF; boot with lockdown=integrity or none",
    });
    let cgroup2 = crate::config::cgroup2_root();
    out.push(Finding {
        name: "cgroup v2",
        ok: cgroup2.is_some(),
        need: Need::Optional,
        detail: cgroup2
            .map(|p| format!("mounted at {}", p.display()))
            .unwrap_or_else(|| "not mounted".into()),
        fix:
            "needed for sock_ops context propagation: mount -t cgroup2 none /sys/fs/cgroup/unified",
    });
    out
}

/// Prints the report; returns the process exit code.
pub fn report() -> i32 {
    let findings = run_checks();
    let mut fatal = 0;
    for f in &findings {
        let mark = match (f.ok, f.need) {
            (true, _) => "ok  ",
            (false, Need::Optional) => "warn",
            (false, Need::Required) => {
                fatal += 1;
                "FAIL"
            }
        };
        println!("[{mark}] {:<24} {}", f.name, f.detail);
        if !f.ok && f.need == Need::Required {
            println!("       fix: {}", f.fix);
        }
    }
    if fatal > 0 {
        println!(
            "autotel cannot run here: {fatal} required feature(s) missing (see fix lines above)"
        );
        1
    } else {
        println!("autotel can run on this host");
        0
    }
}
