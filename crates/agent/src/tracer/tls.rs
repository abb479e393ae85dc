//! Attaching the TLS uprobes (bpf/tracers/tls.h) to one library or binary
//! file. Probes go on the file, for every process that maps it; the BPF side
//! keeps only selected processes. A file without the symbols (stripped, not
//! OpenSSL, another version) is a logged, counted skip, never an error.

use super::Tracer;
use libbpf_rs::{ProgramMut, UprobeOpts};
use std::path::{Path, PathBuf};

pub fn is_tls_program(name: &str) -> bool {
    name.starts_with("at_ssl_")
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

/// libssl files of the usual library directories, attached at start so a
/// process started later is covered from its first call.
pub fn system_libssl() -> Vec<PathBuf> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ];
    let mut out = Vec::new();
    for d in dirs {
        for name in ["libssl.so.3", "libssl.so.1.1"] {
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

impl Tracer {
    /// Places the TLS probes on `path` (a libssl, or a binary with OpenSSL
    /// linked in statically).
    /// Takes `&self`: the ring buffers borrow the skeleton while this runs.
    pub fn attach_tls(&self, path: &Path) -> TlsAttach {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !self.tls_seen.borrow_mut().insert(key.clone()) {
            return TlsAttach::AlreadyDone;
        }
        let p = &self.skel.progs;
        // Every probe is a link, and each link's release waits for its own
        // grace period at exit (~0.1 s here): SSL_do_handshake is not probed
        // (its duration comes from the handshake records instead), which
        // keeps SIGTERM-to-detached under a second with one libssl.
        let entries: [(&ProgramMut<'_>, &str); 4] = [
            (&p.at_ssl_write, "SSL_write"),
            (&p.at_ssl_write_ex, "SSL_write_ex"),
            (&p.at_ssl_read, "SSL_read"),
            (&p.at_ssl_read_ex, "SSL_read_ex"),
        ];
        let mut attached_funcs = Vec::new();
        let mut links = Vec::new();
        for (prog, func) in entries {
            let opts = UprobeOpts {
                func_name: Some((*func).to_owned()),
                retprobe: false,
                ..Default::default()
            };
            match prog.attach_uprobe_with_opts(-1, &key, 0, opts) {
                Ok(link) => {
                    links.push(link);
                    attached_funcs.push(func);
                }
                Err(e) => {
                    tracing::debug!(path = %key.display(), func, error = %e, "TLS probe not placed")
                }
            }
        }
        let has_io = attached_funcs.iter().any(|f| f.starts_with("SSL_read"))
            && attached_funcs.iter().any(|f| f.starts_with("SSL_write"));
        if !has_io {
            // Dropping the links detaches any partial set.
            tracing::debug!(path = %key.display(), "no OpenSSL read/write symbols: TLS capture skipped for this file");
            return TlsAttach::NoSymbols;
        }
        {
            let prog = &p.at_ssl_ret;
            for func in &attached_funcs {
                let opts = UprobeOpts {
                    func_name: Some((*func).to_owned()),
                    retprobe: true,
                    ..Default::default()
                };
                match prog.attach_uprobe_with_opts(-1, &key, 0, opts) {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        tracing::warn!(path = %key.display(), func, error = %e, "TLS return probe not placed")
                    }
                }
            }
        }
        // Optional: libraries without it (or apps that hand OpenSSL a BIO)
        // still learn the fd from the syscalls inside SSL_read/SSL_write.
        let set_fd = UprobeOpts {
            func_name: Some("SSL_set_fd".to_owned()),
            retprobe: false,
            ..Default::default()
        };
        match p.at_ssl_set_fd.attach_uprobe_with_opts(-1, &key, 0, set_fd) {
            Ok(link) => links.push(link),
            Err(e) => {
                tracing::debug!(path = %key.display(), error = %e, "SSL_set_fd probe not placed")
            }
        }
        let n = attached_funcs.len();
        tracing::info!(path = %key.display(), functions = n, "TLS capture attached");
        self.tls_links.borrow_mut().extend(links);
        TlsAttach::Attached(n)
    }
}
