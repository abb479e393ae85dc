//! The kernel's view of which processes are traced: the `selected_pids`
//! hash (tgid -> AT_SEL_* flags) and the `selected_bits` bitmap in front of
//! it (maps.h). Every write goes through here so the two stay in step: a
//! bit is set before its entry is written and cleared only once the entry
//! is gone, so a clear bit always means "not traced".

use super::abi;
use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bit words of `selected_bits` (AT_SEL_BITS_WORDS in maps.h: PID_MAX_LIMIT
/// bits); the map has one more word, the removal count.
#[cfg(test)]
const SEL_BITS_WORDS: u32 = 4_194_304 / 64;

/// The bitmap, mmapped (BPF_F_MMAPABLE): the kernel side sets and clears
/// bits with atomic instructions, so user space must too; a map update
/// would rewrite a whole word and could undo a concurrent fork's bit. The
/// last word is the removal count (AT_SEL_GEN_WORD): threads that found
/// their process selected skip the hash, and keep the flags they found,
/// until it moves.
struct Bits {
    words: *const AtomicU64,
    /// Bit words, not counting the removal count after them.
    len: usize,
    map_bytes: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it
// lives until Drop, and nothing hands out references that outlive `self`.
unsafe impl Send for Bits {}
unsafe impl Sync for Bits {}

impl Bits {
    fn map(map: &MapHandle) -> Result<Self> {
        if map.value_size() != 8 {
            bail!("pid bitmap: unexpected value size {}", map.value_size());
        }
        let entries = map.max_entries() as usize;
        if entries < 2 {
            bail!("pid bitmap: {entries} entries");
        }
        let page = 4096;
        let map_bytes = (entries * 8).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's memory; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the pid bitmap");
        }
        Ok(Self {
            words: ptr as *const AtomicU64,
            len: entries - 1,
            map_bytes,
        })
    }

    fn word(&self, pid: u32) -> Option<&AtomicU64> {
        let idx = (pid >> 6) as usize;
        // SAFETY: idx < len words of the live mapping, 8-byte aligned (page start).
        (idx < self.len).then(|| unsafe { &*self.words.add(idx) })
    }

    fn set(&self, pid: u32) {
        if let Some(w) = self.word(pid) {
            w.fetch_or(1 << (pid & 63), Ordering::SeqCst);
        }
    }

    fn clear(&self, pid: u32) {
        if let Some(w) = self.word(pid) {
            w.fetch_and(!(1 << (pid & 63)), Ordering::SeqCst);
        }
    }

    /// The removal count.
    fn count(&self) -> &AtomicU64 {
        // SAFETY: the word after the `len` bit words, inside the mapping.
        unsafe { &*self.words.add(self.len) }
    }

    fn removed(&self) {
        self.count().fetch_add(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn removals(&self) -> u64 {
        self.count().load(Ordering::SeqCst)
    }

    fn is_set(&self, pid: u32) -> bool {
        self.word(pid)
            .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (pid & 63)) != 0)
    }
}

impl Drop for Bits {
    fn drop(&mut self) {
        // SAFETY: the region mmapped in Bits::map, not used after this.
        unsafe { libc::munmap(self.words as *mut libc::c_void, self.map_bytes) };
    }
}

pub struct SelectedPids {
    pids: MapHandle,
    bits: Bits,
}

impl SelectedPids {
    pub(super) fn new(pids: MapHandle, bits: &MapHandle) -> Result<Self> {
        Ok(Self {
            pids,
            bits: Bits::map(bits)?,
        })
    }

    /// Standalone kernel maps shaped like the agent's (needs CAP_BPF), for
    /// tests of what user space does to the selection.
    #[cfg(test)]
    pub fn standalone() -> Result<Self> {
        let create = |kind, name: &str, key, value, entries, flags| {
            let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                map_flags: flags,
                ..Default::default()
            };
            MapHandle::create(kind, Some(name), key, value, entries, &opts)
                .context("creating a BPF map (tests need root)")
        };
        let pids = create(libbpf_rs::MapType::Hash, "at_test_sel", 4, 4, 64, 0)?;
        let bits = create(
            libbpf_rs::MapType::Array,
            "at_test_bits",
            4,
            8,
            SEL_BITS_WORDS + 1,
            libbpf_rs::libbpf_sys::BPF_F_MMAPABLE,
        )?;
        Self::new(pids, &bits)
    }

    pub fn insert(&self, pid: u32, flags: u32) -> Result<()> {
        let gains_go =
            flags & abi::SEL_GO != 0 && self.flags(pid).is_none_or(|f| f & abi::SEL_GO == 0);
        self.bits.set(pid);
        self.pids
            .update(&pid.to_ne_bytes(), &flags.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("selecting pid {pid}"))?;
        // Threads keep the flags they found until the count moves.
        if gains_go {
            self.bits.removed();
        }
        Ok(())
    }

    pub fn remove(&self, pid: u32) {
        let _ = self.pids.delete(&pid.to_ne_bytes());
        // After the delete: a thread that reads the count before it looks
        // in the hash either missed the entry or sees the count move.
        self.bits.removed();
        self.bits.clear(pid);
        // An exec may have selected the pid again between the delete and
        // the clear (its bit went up before its entry): put the bit back.
        if self.flags(pid).is_some() {
            self.bits.set(pid);
        }
    }

    pub fn flags(&self, pid: u32) -> Option<u32> {
        match self.pids.lookup(&pid.to_ne_bytes(), MapFlags::ANY) {
            Ok(Some(v)) => v
                .get(..4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default())),
            _ => None,
        }
    }

    /// Whether the kernel's fast check lets `pid` through to the hash: a
    /// clear bit means no selection, without the cost of a map lookup.
    pub fn marked(&self, pid: u32) -> bool {
        self.bits.is_set(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bit_goes_up_with_its_entry_and_down_with_it_and_removals_are_counted() {
        let sel = SelectedPids::standalone().expect("BPF maps: run the tests as root");
        // Neighbours in one word: one pid's change leaves the other's bit.
        let (a, b) = (4_194_240, 4_194_241);
        sel.insert(a, 1).unwrap();
        sel.insert(b, 1).unwrap();
        assert!(sel.marked(a) && sel.marked(b));
        let removals = sel.bits.removals();
        sel.remove(a);
        assert_eq!(
            sel.bits.removals(),
            removals + 1,
            "a removal must move the count"
        );
        assert!(!sel.marked(a), "bit of a removed pid stays up");
        assert!(sel.marked(b), "removing a neighbour cleared the bit");
        assert_eq!(sel.flags(a), None);
        assert_eq!(sel.flags(b), Some(1));
        // Threads keep the flags they found until the count moves: gaining
        // AT_SEL_GO must move it, once.
        let before = sel.bits.removals();
        sel.insert(b, 1 | abi::SEL_GO).unwrap();
        assert_eq!(
            sel.bits.removals(),
            before + 1,
            "gaining SEL_GO must move the count"
        );
        sel.insert(b, 1 | abi::SEL_GO).unwrap();
        sel.insert(b, 1).unwrap();
        assert_eq!(
            sel.bits.removals(),
            before + 1,
            "other writes must not move it"
        );
        // A pid past the bitmap (pid_max raised beyond it) is still selectable.
        sel.insert(u32::MAX - 1, 1).unwrap();
        assert!(!sel.marked(u32::MAX - 1));
        assert_eq!(sel.flags(u32::MAX - 1), Some(1));
    }
}
