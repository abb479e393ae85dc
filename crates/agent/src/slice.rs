//! The calling thread's scheduler slice. Since Linux 6.12 (EEVDF) a fair
//! thread may ask for a shorter slice than the default through
//! `sched_attr.sched_runtime`; a shorter slice gives it earlier deadlines, so
//! it gets the CPU back sooner after a sleep, in shorter turns. Older kernels
//! ignore the field. libc has the struct and the syscall numbers, but no
//! wrappers.

use libc::sched_attr;
use std::time::Duration;

fn get_attr() -> std::io::Result<sched_attr> {
    // SAFETY: a struct of integers, all zero is valid.
    let mut attr: sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most `size`
    // bytes into `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut sched_attr,
            std::mem::size_of::<sched_attr>() as u32,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

/// Asks for `slice` for the calling thread, keeping its policy and nice
/// value. A thread under a real-time or idle policy is left alone.
pub fn request(slice: Duration) -> std::io::Result<()> {
    let mut attr = get_attr()?;
    let policy = attr.sched_policy as i32;
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        return Ok(());
    }
    attr.size = std::mem::size_of::<sched_attr>() as u32;
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    attr.sched_runtime = slice.as_nanos().min(u64::MAX as u128) as u64;
    // SAFETY: pid 0 is the calling thread; `attr` is a complete VER0 struct.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const sched_attr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (major, minor) of the running kernel.
    fn kernel_version() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            // SAFETY: plain syscalls on the calling thread.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 5) };
            request(Duration::from_micros(100)).expect("sched_setattr");
            let attr = get_attr().unwrap();
            assert_eq!(attr.sched_nice, 5, "nice value kept");
            assert_eq!(attr.sched_policy as i32, libc::SCHED_OTHER);
            if kernel_version() >= (6, 12) {
                assert_eq!(attr.sched_runtime, 100_000);
            }
        })
        .join()
        .unwrap();
    }
}
