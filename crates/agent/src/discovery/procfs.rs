//! What /proc says about a process: name, command line, environment,
//! listening TCP ports. Every read tolerates the process vanishing.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;

pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

pub fn exe_path(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The argv of the exec that named the process `comm`; empty once it has
/// exec'ed another program. The kernel renames a process at exec before its
/// new argv becomes readable, so a name read after the argv that still
/// matches proves the argv is not a later exec's (`env prog` execs prog
/// microseconds after its own exec, before that exec's event is read).
pub fn cmdline_of_exec(pid: u32, comm_at_exec: &str) -> Vec<String> {
    let argv = cmdline(pid);
    if comm(pid).as_deref() == Some(comm_at_exec.trim_end()) {
        argv
    } else {
        Vec::new()
    }
}

pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The target's own environment (needs CAP_SYS_PTRACE for other users).
pub fn environ(pid: u32) -> HashMap<String, String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Start time in clock ticks since boot: with the pid, a unique process id.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn cgroup(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

fn netns(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// socket inode -> local port, for TCP sockets in LISTEN state, parsed from
/// /proc/<pid>/net/tcp and tcp6 (the process's own network namespace).
fn listening_inodes(pid: u32) -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode = f[9].parse::<u64>().ok();
            if let (Some(port), Some(inode)) = (port, inode) {
                out.insert(inode, port);
            }
        }
    }
    out
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let link = fs::read_link(e.ok()?.path()).ok()?;
        let s = link.to_str()?;
        s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// The listeners of interest in one network namespace, by socket inode.
struct Listeners {
    by_inode: HashMap<u64, u16>,
    /// Tells one scan's table from another's: equal, nothing to re-read.
    fingerprint: u64,
}

impl Listeners {
    fn new(mut by_inode: HashMap<u64, u16>, wanted: &dyn Fn(u16) -> bool) -> Self {
        use std::hash::{Hash, Hasher};
        by_inode.retain(|_, port| wanted(*port));
        let mut entries: Vec<(u64, u16)> = by_inode.iter().map(|(i, p)| (*i, *p)).collect();
        entries.sort_unstable();
        // Fixed keys: the same table hashes the same in every scan.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        entries.hash(&mut h);
        Self {
            by_inode,
            fingerprint: h.finish(),
        }
    }
}

/// What a process's open files said in an earlier scan, and against which
/// listeners.
struct KnownPorts {
    start_time: u64,
    listeners: u64,
    ports: Vec<u16>,
}

/// Listening ports of processes: each namespace's listener table read once
/// per scan, and each process's open files read only when it is new or its
/// namespace's listeners changed. Reading the open files is the cost that
/// grows with a node (~3 us per file). Seen only when its namespace's table
/// changes: a process that takes a listener another holds (fd passing), or
/// drops one another still holds (close-on-exec; an exec keeps the pid).
#[derive(Default)]
pub struct ListenScan {
    by_netns: HashMap<PathBuf, Listeners>,
    known: HashMap<u32, KnownPorts>,
    /// Processes whose open files were read (tests: the reuse happens).
    files_read: usize,
}

impl ListenScan {
    /// Starts another scan over `alive`: listener tables are read afresh,
    /// what is known of live processes is kept.
    pub fn next_scan(&mut self, alive: &[u32]) {
        self.by_netns.clear();
        let alive: HashSet<u32> = alive.iter().copied().collect();
        self.known.retain(|pid, _| alive.contains(pid));
    }

    /// TCP ports the process holds a listening socket for, among those
    /// `wanted` keeps (the same filter for the whole scan: the table of a
    /// namespace is read once). No listener wanted in the process's
    /// namespace: its open files are not read.
    pub fn ports(&mut self, pid: u32, wanted: &dyn Fn(u16) -> bool) -> Vec<u16> {
        let table = match netns(pid) {
            Some(ns) => self.by_netns.entry(ns).or_insert_with(|| {
                let table = super::listeners::of_netns_of(pid).unwrap_or_else(|e| {
                    tracing::debug!(pid, error = %e, "sock_diag failed: reading /proc/<pid>/net/tcp");
                    listening_inodes(pid)
                });
                Listeners::new(table, wanted)
            }),
            None => return Vec::new(),
        };
        if table.by_inode.is_empty() {
            self.known.remove(&pid);
            return Vec::new();
        }
        let Some(start_time) = start_time(pid) else {
            return Vec::new();
        };
        if let Some(k) = self.known.get(&pid) {
            if k.start_time == start_time && k.listeners == table.fingerprint {
                return k.ports.clone();
            }
        }
        self.files_read += 1;
        let mut ports: Vec<u16> = socket_inodes(pid)
            .iter()
            .filter_map(|i| table.by_inode.get(i).copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        self.known.insert(
            pid,
            KnownPorts {
                start_time,
                listeners: table.fingerprint,
                ports: ports.clone(),
            },
        );
        ports
    }
}

/// Files of a process where TLS probes may go: every mapped libssl and
/// libgnutls, and the executable itself (OpenSSL linked in statically, or
/// Go). Paths are seen through the process's root, so containers' own
/// libraries are found.
pub fn tls_candidates(pid: u32) -> Vec<std::path::PathBuf> {
    let root = format!("/proc/{pid}/root");
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        for line in maps.lines() {
            let Some(path) = line.split_whitespace().nth(5) else {
                continue;
            };
            let file = path.rsplit('/').next().unwrap_or(path);
            if file.starts_with("libssl.so") || file.starts_with("libgnutls.so") {
                let p = std::path::PathBuf::from(format!("{root}{path}"));
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        out.push(std::path::PathBuf::from(format!("{root}{}", exe.display())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(all_pids().contains(&me));
        assert!(exe_path(me).is_some());
        assert!(!cmdline(me).is_empty());
        assert!(ppid(me).is_some());
        assert!(start_time(me).is_some());
    }

    #[test]
    fn argv_of_an_exec_is_withheld_once_the_process_is_renamed() {
        let me = std::process::id();
        let name = comm(me).unwrap();
        assert_eq!(cmdline_of_exec(me, &name), cmdline(me));
        assert!(cmdline_of_exec(me, "env").is_empty());
        assert!(cmdline_of_exec(u32::MAX, &name).is_empty());
    }

    #[test]
    fn sees_own_listening_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(ListenScan::default()
            .ports(std::process::id(), &|_| true)
            .contains(&port));
        // A port no selector wants is left out of the namespace's table.
        assert!(!ListenScan::default()
            .ports(std::process::id(), &|p| p != port)
            .contains(&port));
    }

    #[test]
    fn open_files_are_read_again_only_when_the_listeners_change() {
        let me = std::process::id();
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        drop(b);
        // Only our ports: listeners other tests open meanwhile do not count.
        let ours = |p: u16| p == pa || p == pb;
        let mut scan = ListenScan::default();
        scan.next_scan(&[me]);
        assert_eq!(scan.ports(me, &ours), vec![pa]);
        assert_eq!(scan.files_read, 1);
        scan.next_scan(&[me]);
        assert_eq!(scan.ports(me, &ours), vec![pa]);
        assert_eq!(
            scan.files_read, 1,
            "unchanged listeners: the known answer stands"
        );
        let b = std::net::TcpListener::bind(("127.0.0.1", pb)).unwrap();
        scan.next_scan(&[me]);
        let mut both = vec![pa, pb];
        both.sort_unstable();
        assert_eq!(scan.ports(me, &ours), both);
        assert_eq!(scan.files_read, 2);
        drop(b);
        scan.next_scan(&[me]);
        assert_eq!(scan.ports(me, &ours), vec![pa]);
        // A process gone from the scan is forgotten.
        scan.next_scan(&[]);
        assert!(scan.known.is_empty());
    }
}
