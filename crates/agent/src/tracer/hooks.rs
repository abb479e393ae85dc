//! Where payload is captured: at the socket (one hook per socket transfer,
//! kernels 6.3+) or at the syscall boundary (a hook on every syscall of every
//! process, any kernel with BTF). The socket hooks leave unrelated syscalls on
//! their fast path, so they are the default wherever the kernel has them.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaptureHooks {
    /// Socket hooks when the kernel has them, syscall hooks otherwise.
    #[default]
    Auto,
    Socket,
    Syscall,
}

impl CaptureHooks {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text.trim() {
            "auto" => Self::Auto,
            "socket" => Self::Socket,
            "syscall" => Self::Syscall,
            other => bail!("expected auto, socket or syscall, got {other:?}"),
        })
    }

    /// Whether to use the socket hooks on a kernel that does (or does not)
    /// have them. Asking for them where they are missing is an error that
    /// says so, not a silent fallback.
    pub fn use_socket(self, kernel_has_them: bool) -> Result<bool> {
        match (self, kernel_has_them) {
            (Self::Syscall, _) => Ok(false),
            (Self::Auto, has) => Ok(has),
            (Self::Socket, true) => Ok(true),
            (Self::Socket, false) => bail!(
                "capture.hooks: socket needs the sock_send_length and sock_recv_length \
                 tracepoints (Linux 6.3+), which this kernel lacks; use auto or syscall"
            ),
        }
    }
}

/// The tracepoints the socket hooks attach to, as BTF names them.
const SOCKET_TRACEPOINTS: [&[u8]; 2] =
    [b"btf_trace_sock_send_length", b"btf_trace_sock_recv_length"];

/// Whether the running kernel's BTF has the socket tracepoints.
pub fn kernel_has_socket_hooks() -> bool {
    kernel_btf_has(&SOCKET_TRACEPOINTS)
}

/// Whether the running kernel's BTF names every one of `names`.
pub(super) fn kernel_btf_has(names: &[&[u8]]) -> bool {
    match std::fs::read("/sys/kernel/btf/vmlinux") {
        Ok(btf) => btf_has_names(&btf, names),
        Err(_) => false,
    }
}

/// Every name appears NUL-terminated in the BTF string section.
fn btf_has_names(btf: &[u8], names: &[&[u8]]) -> bool {
    names.iter().all(|name| {
        let mut needle = name.to_vec();
        needle.push(0);
        btf.windows(needle.len()).any(|w| w == needle.as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_rejects_typos() {
        assert_eq!(CaptureHooks::parse("socket").unwrap(), CaptureHooks::Socket);
        assert_eq!(
            CaptureHooks::parse(" syscall ").unwrap(),
            CaptureHooks::Syscall
        );
        assert_eq!(CaptureHooks::parse("auto").unwrap(), CaptureHooks::Auto);
        let err = CaptureHooks::parse("sockets").unwrap_err().to_string();
        assert!(err.contains("auto, socket or syscall"), "{err}");
    }

    #[test]
    fn socket_on_an_old_kernel_is_an_error() {
        assert!(CaptureHooks::Auto.use_socket(true).unwrap());
        assert!(!CaptureHooks::Auto.use_socket(false).unwrap());
        assert!(!CaptureHooks::Syscall.use_socket(true).unwrap());
        let err = CaptureHooks::Socket
            .use_socket(false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("6.3"), "{err}");
    }

    #[test]
    fn names_must_end_where_btf_ends_them() {
        let btf = b"\0btf_trace_sock_send_length\0btf_trace_sock_recv_length_x\0";
        assert!(btf_has_names(btf, &[b"btf_trace_sock_send_length"]));
        assert!(!btf_has_names(btf, &SOCKET_TRACEPOINTS));
    }
}
