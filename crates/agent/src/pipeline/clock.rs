//! Kernel timestamps are CLOCK_MONOTONIC; spans need Unix time.

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec on our stack.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// Converts monotonic nanoseconds to Unix nanoseconds. The offset is
/// re-measured now and then so wall-clock steps (NTP) are followed.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mono = now(libc::CLOCK_MONOTONIC) as i128;
        let real = now(libc::CLOCK_REALTIME) as i128;
        Clock {
            offset_ns: real - mono,
        }
    }

    pub fn to_unix_ns(self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_now() {
        let c = Clock::new();
        let unix = c.to_unix_ns(monotonic_ns());
        let real = now(libc::CLOCK_REALTIME);
        assert!(unix.abs_diff(real) < 50_000_000);
    }
}
