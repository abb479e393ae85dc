//! Cache prefetch hints. A prefetch never faults, whatever the address, so
//! these are safe for any pointer; where the target has no stable intrinsic
//! they do nothing.

const LINE: usize = 64;

/// Starts loading the cache line holding `at`.
#[inline(always)]
pub fn line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint: it reads nothing architecturally and
    // never faults, valid address or not.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Starts loading every cache line of `len` bytes from `at`.
#[inline(always)]
pub fn lines(at: *const u8, len: usize) {
    let mut offset = 0;
    while offset < len {
        line(at.wrapping_add(offset));
        offset += LINE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_never_fault() {
        // Null, unmapped and kernel addresses: a hint, never a read.
        for at in [0usize, 8, 0xdead_0000, usize::MAX - 4096] {
            lines(at as *const u8, 4096);
        }
        let v = vec![1u8; 1000];
        lines(v.as_ptr(), v.len());
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 1000);
    }
}
