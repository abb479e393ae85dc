//! Attaching the TLS uprobes (bpf/tracers/tls.h) to one library or binary
//! file. Probes go on the file, for every process that maps it; the BPF side
//! keeps only selected processes. A file without the symbols (stripped, not
//! OpenSSL, another version) is a logged, counted skip, never an error.

use super::Tracer;
use autotel_protocols::{go_binary, openssl_binary};
use libbpf_rs::{Link, ProgramMut, UprobeMultiOpts, UprobeOpts};
use std::path::{Path, PathBuf};

/// The programs attached per file (here), not at load: the TLS probes and
/// the Go ones (crypto/tls, net/http's client).
pub fn is_per_file_program(name: &str) -> bool {
    ["at_ssl_", "at_gnutls_", "at_go_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The OpenSSL and GnuTLS functions looked for in a file.
const OPENSSL_IO: [&str; 5] = [
    "SSL_write",
    "SSL_write_ex",
    "SSL_read",
    "SSL_read_ex",
    "SSL_set_fd",
];
const GNUTLS_IO: [&str; 5] = [
    "gnutls_record_recv",
    "gnutls_record_send2",
    "gnutls_record_send",
    "gnutls_transport_set_int2",
    "gnutls_transport_set_ptr",
];

/// Whether the kernel has uprobe_multi links (Linux 6.6+). A perf-event
/// uprobe's release waits for a grace period under a global mutex, so nine
/// of them took 0.8 s to detach one after another at SIGTERM; multi links
/// are released without that mutex, their waits overlap.
pub fn kernel_has_uprobe_multi() -> bool {
    super::hooks::kernel_btf_has(&[b"bpf_uprobe_multi_link"])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAttach {
    /// Probes placed on this many functions.
    Attached(usize),
    /// No SSL_read/SSL_write in this file.
    NoSymbols,
    /// Seen before.
    AlreadyDone,
}

impl TlsAttach {
    pub fn label(self) -> &'static str {
        match self {
            TlsAttach::Attached(_) => "attached",
            TlsAttach::NoSymbols => "no_symbols",
            TlsAttach::AlreadyDone => "already_done",
        }
    }
}

/// Runs `read` over the file at `path` through an `object::ReadCache`, which
/// reads only the parts looked at: executables offered here can be hundreds
/// of megabytes.
fn read_elf<T>(
    path: &Path,
    read: impl FnOnce(&object::ReadCache<std::fs::File>) -> T,
) -> std::io::Result<T> {
    Ok(read(&object::ReadCache::new(std::fs::File::open(path)?)))
}

/// One set of Go probes on a file: its Go release and the links placed per
/// site, or why the file has no such sites.
type GoProbes = Result<(String, libbpf_rs::Result<Vec<Vec<Link>>>), String>;

/// `find` over the Go executable at `path`, its failure (unreadable, not Go,
/// functions missing) as text.
fn go_sites<T>(
    path: &Path,
    find: impl FnOnce(&object::ReadCache<std::fs::File>) -> Result<T, go_binary::GoTlsError>,
) -> Result<T, String> {
    read_elf(path, find)
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

/// The Go release that built the executable at `path` (None: not Go, or
/// unreadable). Reads only the headers and the build info.
pub fn go_version_of(path: &Path) -> Option<String> {
    read_elf(path, |elf| go_binary::go_version(elf))
        .ok()
        .flatten()
}

/// The names among `names` that the ELF file at `path` defines (in its
/// dynamic or its full symbol table), leaving out the ones it only imports.
/// libbpf resolves an imported function to address 0: a probe there was an
/// int3 over the first byte of the file's ELF header in every process that
/// maps it (nginx, which calls SSL_read from libssl, ran with its in-memory
/// header reading cc 45 4c 46).
pub fn defined_functions<'n>(path: &Path, names: &[&'n str]) -> Vec<&'n str> {
    use object::{Object, ObjectSymbol};
    read_elf(path, |elf| {
        let Ok(file) = object::File::parse(elf) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            if let Some(&n) = sym
                .name()
                .ok()
                .and_then(|n| names.iter().find(|&&w| w == n))
            {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    })
    .unwrap_or_default()
}

/// libssl and libgnutls files of the usual library directories, attached at
/// start so a process started later is covered from its first call.
pub fn system_tls_libraries() -> Vec<PathBuf> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ];
    let mut out = Vec::new();
    for d in dirs {
        for name in ["libssl.so.3", "libssl.so.1.1", "libgnutls.so.30"] {
            let p = Path::new(d).join(name);
            if let Ok(c) = std::fs::canonicalize(&p) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Where the probes would go in one TLS library file, for `autotel check`
/// (reads the file only; attaches nothing).
pub fn probe_plan(path: &Path) -> &'static str {
    let defined = defined_functions(path, &[&OPENSSL_IO[..], &GNUTLS_IO[..]].concat());
    let openssl = ["SSL_read", "SSL_write"]
        .iter()
        .all(|f| defined.iter().any(|d| d.starts_with(f)));
    if openssl {
        let plan = read_elf(path, |elf| {
            if openssl_binary::find_internal_sites(elf).is_ok() {
                "OpenSSL, probes on the internal read/write functions (entries the kernel emulates)"
            } else if openssl_binary::exported_entries_emulated(elf) {
                "OpenSSL, probes on SSL_read/SSL_write (entries the kernel emulates)"
            } else {
                "OpenSSL, probes on SSL_read/SSL_write (entries stepped out of line: slower)"
            }
        });
        return plan.unwrap_or("OpenSSL, but the file could not be read again");
    }
    if defined.contains(&"gnutls_record_recv") {
        return "GnuTLS, probes on the record calls";
    }
    "no TLS read/write symbols: not probed"
}

impl Tracer {
    /// Places the TLS probes on `path` (a libssl or libgnutls, a binary
    /// with OpenSSL linked in statically, or a Go program).
    /// Takes `&self`: the ring buffers borrow the skeleton while this runs.
    pub fn attach_tls(&self, path: &Path) -> TlsAttach {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !self.tls_seen.borrow_mut().insert(key.clone()) {
            return TlsAttach::AlreadyDone;
        }
        let defined = defined_functions(&key, &[&OPENSSL_IO[..], &GNUTLS_IO[..]].concat());
        if let Some(n) = self.attach_openssl(&key, &defined) {
            return TlsAttach::Attached(n);
        }
        if let Some(n) = self.attach_gnutls(&key, &defined) {
            return TlsAttach::Attached(n);
        }
        self.attach_go_http_client(&key);
        self.attach_go_spawns(&key);
        self.attach_go_tls(&key)
    }

    /// Places the net/http client probes on `path` if it is a Go program
    /// that links the client (see protocols::go_binary::ROUND_TRIP): they
    /// carry a request's context to the goroutine that writes it. Without
    /// them that write takes its thread's context, which in Go may be
    /// another request's.
    fn attach_go_http_client(&self, path: &Path) {
        let p = &self.skel.progs;
        let sites = go_sites(path, |elf| go_binary::find_http_client_sites(elf));
        self.keep_go_probes(
            path,
            "Go net/http client context probes",
            sites.map(|s| {
                let placed = [
                    (&p.at_go_http_round_trip, s.round_trip),
                    (&p.at_go_http_write_loop, s.write_loop),
                ]
                .into_iter()
                .map(|(prog, e)| {
                    self.place_at_offsets(prog, path, &[e.offset], &[u64::from(e.on_check)], false)
                })
                .collect();
                (s.version, placed)
            }),
        );
    }

    /// Places the goroutine-creation probe on `path` if it is a Go program
    /// (see protocols::go_binary::NEWPROC_CLOSURE): a goroutine started
    /// while serving a request inherits it. Without it the goroutine follows
    /// its thread.
    fn attach_go_spawns(&self, path: &Path) {
        let prog = &self.skel.progs.at_go_newproc;
        let sites = go_sites(path, |elf| go_binary::find_spawn_sites(elf));
        self.keep_go_probes(
            path,
            "Go goroutine creation probes",
            sites.map(|s| {
                let offsets = (u64::from(s.g_m) << 32) | u64::from(s.m_curg);
                let placed = self.place_at_offsets(prog, path, &[s.enqueue], &[offsets], false);
                (s.version, placed.map(|l| vec![l]))
            }),
        );
    }

    /// Keeps the links of one set of Go probes on `path`, all or none, and
    /// says so: `what` names them in the log.
    fn keep_go_probes(&self, path: &Path, what: &str, placed: GoProbes) {
        match placed {
            Err(e) => tracing::debug!(path = %path.display(), "no {what}: {e}"),
            Ok((version, Ok(links))) => {
                tracing::info!(path = %path.display(), go = %version, "{what} attached");
                self.tls_links
                    .borrow_mut()
                    .extend(links.into_iter().flatten());
            }
            // Dropped with the links placed so far: without them the calls
            // fall back to their thread's context, as before.
            Ok((_, Err(e))) => {
                tracing::warn!(path = %path.display(), error = %e, "{what} not placed")
            }
        }
    }

    /// OpenSSL: on the internal functions where found, else on the exported
    /// ones. None: the file has no OpenSSL read and write.
    fn attach_openssl(&self, key: &Path, defined: &[&str]) -> Option<usize> {
        let p = &self.skel.progs;
        // SSL_do_handshake is not probed: its duration comes from the
        // handshake records instead, and every probe is one more link to
        // release at exit.
        let entries: [(&ProgramMut<'_>, &str); 4] = [
            (&p.at_ssl_write, "SSL_write"),
            (&p.at_ssl_write_ex, "SSL_write_ex"),
            (&p.at_ssl_read, "SSL_read"),
            (&p.at_ssl_read_ex, "SSL_read_ex"),
        ];
        // Only a library with all four can wrap the internal functions.
        let all_four = entries.iter().all(|(_, f)| defined.contains(f));
        if all_four && !self.openssl_at_exported {
            match self.attach_openssl_internal(key) {
                Ok(mut links) => {
                    if defined.contains(&"SSL_set_fd") {
                        links.extend(self.place_fd_probe(&p.at_ssl_set_fd, key, "SSL_set_fd"));
                    }
                    tracing::info!(path = %key.display(), functions = 2, at = "internal", "TLS capture attached");
                    self.tls_links.borrow_mut().extend(links);
                    return Some(2);
                }
                Err(e) => {
                    tracing::debug!(path = %key.display(), "OpenSSL probes on the exported functions: {e}")
                }
            }
        }
        let mut attached_funcs = Vec::new();
        let mut links = Vec::new();
        for (prog, func) in entries.into_iter().filter(|(_, f)| defined.contains(f)) {
            match self.place_probes(prog, key, &[func], false) {
                Ok(l) => {
                    links.extend(l);
                    attached_funcs.push(func);
                }
                Err(e) => {
                    tracing::debug!(path = %key.display(), func, error = %format!("{e:#}"), "TLS probe not placed")
                }
            }
        }
        let has_io = attached_funcs.iter().any(|f| f.starts_with("SSL_read"))
            && attached_funcs.iter().any(|f| f.starts_with("SSL_write"));
        if !has_io {
            // Dropping the links detaches any partial set.
            return None;
        }
        match self.place_probes(&p.at_ssl_ret, key, &attached_funcs, true) {
            Ok(l) => links.extend(l),
            Err(e) => {
                tracing::warn!(path = %key.display(), error = %e, "TLS return probes not placed")
            }
        }
        // Optional: libraries without it (or apps that hand OpenSSL a BIO)
        // still learn the fd from the syscalls inside SSL_read/SSL_write.
        if defined.contains(&"SSL_set_fd") {
            links.extend(self.place_fd_probe(&p.at_ssl_set_fd, key, "SSL_set_fd"));
        }
        let n = attached_funcs.len();
        tracing::info!(path = %key.display(), functions = n, at = "exported", "TLS capture attached");
        self.tls_links.borrow_mut().extend(links);
        Some(n)
    }

    /// GnuTLS: gnutls_record_recv and gnutls_record_send2 (which
    /// gnutls_record_send tail-calls since 3.6.3, so probing both would count
    /// a send twice; before it, gnutls_record_send), and the calls that tell
    /// the socket. None: not GnuTLS.
    fn attach_gnutls(&self, key: &Path, defined: &[&str]) -> Option<usize> {
        let send = ["gnutls_record_send2", "gnutls_record_send"]
            .into_iter()
            .find(|f| defined.contains(f))?;
        if !defined.contains(&"gnutls_record_recv") {
            return None;
        }
        let p = &self.skel.progs;
        let io = ["gnutls_record_recv", send];
        let placed = [
            (&p.at_gnutls_recv, &io[..1], false),
            (&p.at_gnutls_send, &io[1..], false),
            (&p.at_ssl_ret, &io[..], true),
        ]
        .into_iter()
        .map(|(prog, funcs, ret)| self.place_probes(prog, key, funcs, ret))
        .collect::<libbpf_rs::Result<Vec<Vec<Link>>>>();
        let mut links: Vec<Link> = match placed {
            Ok(l) => l.into_iter().flatten().collect(),
            Err(e) => {
                tracing::warn!(path = %key.display(), error = %e, "GnuTLS probes not placed");
                return None;
            }
        };
        for (prog, func) in [
            (&p.at_gnutls_set_int2, "gnutls_transport_set_int2"),
            (&p.at_gnutls_set_ptr, "gnutls_transport_set_ptr"),
        ] {
            if defined.contains(&func) {
                links.extend(self.place_fd_probe(prog, key, func));
            }
        }
        tracing::info!(path = %key.display(), functions = 2, at = "gnutls", "TLS capture attached");
        self.tls_links.borrow_mut().extend(links);
        Some(2)
    }

    /// A probe on a call that tells a TLS object's socket (entry only, once
    /// per connection; optional: the socket calls inside the record calls
    /// tell it too).
    fn place_fd_probe(&self, prog: &ProgramMut<'_>, path: &Path, func: &str) -> Vec<Link> {
        self.place_probes(prog, path, &[func], false)
            .unwrap_or_else(|e| {
                tracing::debug!(path = %path.display(), func, error = %e, "TLS socket probe not placed");
                Vec::new()
            })
    }

    /// Places the OpenSSL probes on the internal read and write functions
    /// that SSL_read/SSL_write and their _ex forms wrap, where their first
    /// instruction is one the kernel emulates (see protocols::openssl_binary).
    fn attach_openssl_internal(&self, path: &Path) -> Result<Vec<Link>, String> {
        let sites = read_elf(path, |elf| openssl_binary::find_internal_sites(elf))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let p = &self.skel.progs;
        // The _ex programs: the internal functions take the _ex arguments.
        let placed = [
            (&p.at_ssl_read_ex, vec![sites.read], false),
            (&p.at_ssl_write_ex, vec![sites.write], false),
            (&p.at_ssl_ret, vec![sites.read, sites.write], true),
        ]
        .into_iter()
        .map(|(prog, offsets, ret)| {
            let cookies = vec![0; offsets.len()];
            self.place_at_offsets(prog, path, &offsets, &cookies, ret)
        })
        .collect::<libbpf_rs::Result<Vec<Vec<Link>>>>()
        .map_err(|e| format!("probes not placed: {e}"))?;
        Ok(placed.into_iter().flatten().collect())
    }

    /// Places the Go crypto/tls probes on `path` if it is a Go program
    /// with TLS linked in (see protocols::go_binary).
    fn attach_go_tls(&self, path: &Path) -> TlsAttach {
        let sites = match go_sites(path, |elf| go_binary::find_sites(elf)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path = %path.display(), "no TLS capture for this file: no OpenSSL read/write symbols, and as Go: {e}");
                return TlsAttach::NoSymbols;
            }
        };
        let p = &self.skel.progs;
        // The cookie tells an entry probe it sits on the stack check (see
        // go_binary::entry_site).
        let entry = |e: go_binary::EntrySite| (vec![e.offset], vec![u64::from(e.on_check)]);
        // Read's plaintext at its copy when there is one call site for it,
        // else at its RETs (each stepped out of line: slower).
        let copy = sites.read_copy.filter(|_| !self.go_tls_read_at_returns);
        let (read_out, offsets) = match copy {
            Some(at) => (&p.at_go_tls_copy, vec![at]),
            None => (&p.at_go_tls_ret, sites.read_rets.clone()),
        };
        let cookies = vec![0; offsets.len()];
        let placed = [
            (&p.at_go_tls_read, entry(sites.read)),
            (&p.at_go_tls_write, entry(sites.write)),
            (read_out, (offsets, cookies)),
        ]
        .into_iter()
        .map(|(prog, (offsets, cookies))| {
            self.place_at_offsets(prog, path, &offsets, &cookies, false)
        })
        .collect::<libbpf_rs::Result<Vec<Vec<Link>>>>();
        match placed {
            Ok(links) => {
                tracing::info!(path = %path.display(), go = %sites.version, read_at = if copy.is_some() { "copy" } else { "returns" }, "Go TLS capture attached");
                self.tls_links
                    .borrow_mut()
                    .extend(links.into_iter().flatten());
                TlsAttach::Attached(2)
            }
            Err(e) => {
                // The links placed so far are dropped, so detached: half a
                // set would record calls that never end.
                tracing::warn!(path = %path.display(), error = %e, "Go TLS probes not placed");
                TlsAttach::NoSymbols
            }
        }
    }

    /// Attaches `prog` at the file offsets `offsets` of `file`, each with
    /// its cookie: one uprobe_multi link where the kernel has those, else one
    /// perf-event link per offset. `retprobe`: at the returns of the
    /// functions starting there.
    fn place_at_offsets(
        &self,
        prog: &ProgramMut<'_>,
        file: &Path,
        offsets: &[u64],
        cookies: &[u64],
        retprobe: bool,
    ) -> libbpf_rs::Result<Vec<Link>> {
        if self.uprobe_multi {
            let opts = UprobeMultiOpts {
                offsets: offsets.iter().map(|&o| o as usize).collect(),
                cookies: cookies.to_vec(),
                retprobe,
                ..Default::default()
            };
            return Ok(vec![prog.attach_uprobe_multi_with_opts(-1, file, "", opts)?]);
        }
        offsets
            .iter()
            .zip(cookies)
            .map(|(&o, &cookie)| {
                let opts = UprobeOpts {
                    cookie,
                    retprobe,
                    ..Default::default()
                };
                prog.attach_uprobe_with_opts(-1, file, o as usize, opts)
            })
            .collect()
    }

    /// Attaches `prog` to the functions `funcs` of `file`, one link per
    /// function: a uprobe_multi link where the kernel has those, else a
    /// perf-event link.
    fn place_probes(
        &self,
        prog: &ProgramMut<'_>,
        file: &Path,
        funcs: &[&str],
        retprobe: bool,
    ) -> libbpf_rs::Result<Vec<Link>> {
        funcs
            .iter()
            .map(|f| {
                if self.uprobe_multi {
                    // The name goes in as a pattern: libbpf's lookup by
                    // symbol list reports ENOENT for a library without a
                    // .symtab (every distribution's libssl) even when it
                    // found the name in .dynsym. A pattern without
                    // wildcards matches that name only.
                    let opts = UprobeMultiOpts {
                        retprobe,
                        ..Default::default()
                    };
                    return prog.attach_uprobe_multi_with_opts(-1, file, f, opts);
                }
                let opts = UprobeOpts {
                    func_name: Some((*f).to_owned()),
                    retprobe,
                    ..Default::default()
                };
                prog.attach_uprobe_with_opts(-1, file, 0, opts)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary defines `main` and imports `malloc` from libc.
    #[test]
    fn imported_functions_are_not_defined() {
        let me = Path::new("/proc/self/exe");
        assert_eq!(defined_functions(me, &["malloc", "main"]), vec!["main"]);
        assert!(defined_functions(Path::new("/nonexistent"), &["main"]).is_empty());
    }
}
