//! Tracepoint attachment needs tracefs; a fresh boot may not have it mounted.

use anyhow::{bail, Result};
use std::path::Path;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Where tracefs is reachable, if anywhere.
pub fn find() -> Option<&'static str> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|p| Path::new(p).join("events").is_dir())
}

/// Mounts tracefs at /sys/kernel/tracing when it is not mounted yet.
pub fn ensure_mounted() -> Result<()> {
    if find().is_some() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS)?;
    let fstype = std::ffi::CString::new("tracefs")?;
    // SAFETY: plain mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {err}; \
             run `mount -t tracefs nodev {TRACEFS}` as root"
        );
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}
