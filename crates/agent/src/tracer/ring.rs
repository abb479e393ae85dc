//! BPF ring buffer consumer, mapping each ring's data pages once.
//!
//! Written by hand because libbpf (and so libbpf-rs) maps the data area
//! twice in a row, so a record that wraps past the end reads as one piece.
//! Every page then counts twice in the agent's RSS: the 16 MiB data ring
//! showed as 32 MiB, half of the 64 MiB the agent may use at 20k req/s.
//! Here the rare wrapped record is copied into a scratch buffer instead.
//! The protocol (kernel/bpf/ringbuf.c): a consumer page (ours to write),
//! a producer page, then the data; each record has an 8-byte header whose
//! length word carries a busy bit (not committed yet) and a discard bit.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_BYTES: u64 = 8;

/// Bytes a record takes in the ring: header plus data, 8-byte aligned.
fn record_span(len_word: u32) -> u64 {
    let len = u64::from(len_word & !(BUSY_BIT | DISCARD_BIT));
    (len + HEADER_BYTES).div_ceil(8) * 8
}

/// Calls `f` with the record of `len` bytes at ring offset `start`, whole
/// even when it wraps past the end of `data` (copied into `scratch` then).
fn with_record<R>(
    data: &[u8],
    start: usize,
    len: usize,
    scratch: &mut Vec<u8>,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    let first = data.len() - start;
    if len <= first {
        return f(&data[start..start + len]);
    }
    scratch.clear();
    scratch.extend_from_slice(&data[start..]);
    scratch.extend_from_slice(&data[..len - first]);
    f(scratch)
}

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: i32, offset: usize) -> Result<Self> {
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks
        // the length and offset against the ring.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping a BPF ring buffer");
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// What is called with each record, and the bytes still unread behind it
/// (as of the last look at the producer position: the reader's backlog).
/// It returns false to leave the record in the ring: the pass stops there,
/// and the next pass starts with that record.
type RecordFn<'a> = dyn FnMut(&[u8], u64) -> bool + 'a;
type Callback<'a> = Box<RecordFn<'a>>;
/// What sees records ahead of their turn.
type PeekFn<'a> = dyn FnMut(&[u8]) + 'a;

/// How many records ahead of the one being handled `peek` sees.
const LOOKAHEAD: usize = 4;

/// How often one `Rings::consume` goes back to the first ring for a record
/// left in a later one. Each return lets that record through (see
/// `Rings::consume`), so this only bounds a call in a burst of them.
const MAX_RETURNS_PER_CONSUME: usize = 256;
/// How many passes over the earlier rings wait out a record being written
/// there (a BPF program cannot sleep: it commits within microseconds).
const MAX_BUSY_PASSES: usize = 1_000;

/// What one pass over a ring did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    /// Records handed on and released.
    handled: usize,
    /// The callback left a record in the ring.
    left_one: bool,
    /// The pass stopped at a record still being written.
    busy: bool,
}

struct Ring<'a> {
    consumer: Mapping,
    /// Producer page, then the data area once.
    producer: Mapping,
    page: usize,
    size: usize,
    scratch: Vec<u8>,
    callback: Callback<'a>,
    /// Sees each record LOOKAHEAD records before `callback` does.
    peek: Option<Box<PeekFn<'a>>>,
}

impl Ring<'_> {
    /// Hands every committed record to the callback.
    fn consume(&mut self) -> Pass {
        // SAFETY: `size` bytes follow the producer page in the mapping. The
        // kernel writes only into room the consumer position has released
        // (and behind the busy bit), never into records not yet consumed.
        let data: &[u8] = unsafe {
            std::slice::from_raw_parts((self.producer.ptr as *const u8).add(self.page), self.size)
        };
        // SAFETY: both pages are mapped and 8-byte aligned; the positions
        // are their first words, shared with the kernel (hence atomics).
        let positions = unsafe {
            Positions {
                consumer: &*(self.consumer.ptr as *const AtomicU64),
                producer: &*(self.producer.ptr as *const AtomicU64),
            }
        };
        consume_records(
            &positions,
            data,
            &mut self.scratch,
            &mut *self.callback,
            self.peek.as_deref_mut(),
        )
    }
}

/// The two positions the kernel and the consumer share.
struct Positions<'p> {
    consumer: &'p AtomicU64,
    producer: &'p AtomicU64,
}

/// The length word of the record at ring position `pos`.
fn len_word_at(data: &[u8], pos: u64) -> u32 {
    let at = pos as usize & (data.len() - 1);
    // SAFETY: record headers are 8-byte aligned in an 8-byte aligned data
    // area (page-aligned in the mapping).
    unsafe { (*(data.as_ptr().add(at) as *const AtomicU32)).load(Ordering::Acquire) }
}

/// The committed record at `pos` with length word `len_word`, if it is
/// to be read: not discarded, and no longer than the ring (the kernel
/// never commits such a length; it is skipped, not read past the end).
fn readable(data: &[u8], pos: u64, len_word: u32) -> Option<(usize, usize)> {
    let fits = len_word as usize <= data.len() - HEADER_BYTES as usize;
    (len_word & DISCARD_BIT == 0 && fits).then(|| {
        let start = (pos as usize + HEADER_BYTES as usize) & (data.len() - 1);
        (start, len_word as usize)
    })
}

/// The consumer side of the ring protocol over a data area of a power of
/// two bytes: every committed record to `callback`, each released as soon
/// as it was handled, up to one the callback leaves in the ring.
///
/// `peek` sees records LOOKAHEAD ahead of `callback` (the reader starts
/// loading their connection state from memory while it handles the ones
/// before; a record that wraps past the end is not peeked).
fn consume_records(
    pos: &Positions<'_>,
    data: &[u8],
    scratch: &mut Vec<u8>,
    callback: &mut RecordFn<'_>,
    mut peek: Option<&mut PeekFn<'_>>,
) -> Pass {
    let mut cons = pos.consumer.load(Ordering::Acquire);
    let mut n = 0;
    let pass = |handled, left_one, busy| Pass {
        handled,
        left_one,
        busy,
    };
    // Next record to peek at, and how many peeked records are unhandled.
    let (mut ahead, mut peeked) = (cons, 0usize);
    loop {
        let prod = pos.producer.load(Ordering::Acquire);
        if cons >= prod {
            return pass(n, false, false);
        }
        while cons < prod {
            if let Some(peek) = peek.as_deref_mut() {
                while peeked <= LOOKAHEAD && ahead < prod {
                    let len_word = len_word_at(data, ahead);
                    if len_word & BUSY_BIT != 0 {
                        break;
                    }
                    if let Some((start, len)) = readable(data, ahead, len_word) {
                        if start + len <= data.len() {
                            peek(&data[start..start + len]);
                        }
                    }
                    ahead += record_span(len_word);
                    peeked += 1;
                }
            }
            let len_word = len_word_at(data, cons);
            if len_word & BUSY_BIT != 0 {
                return pass(n, false, true); // not committed yet: the next pass reads it
            }
            let next = cons + record_span(len_word);
            if let Some((start, len)) = readable(data, cons, len_word) {
                let handled = with_record(data, start, len, scratch, |r| {
                    callback(r, prod.saturating_sub(next))
                });
                if !handled {
                    return pass(n, true, false);
                }
                n += 1;
            }
            cons = next;
            peeked = peeked.saturating_sub(1);
            // Released record by record: the producer gets its room back
            // while a long drain is still going.
            pos.consumer.store(cons, Ordering::Release);
        }
    }
}

/// The agent's rings, waited on together. Rings are consumed in the
/// order they were added; a record left in a ring has the rings before it
/// read again first.
pub struct Rings<'a> {
    epoll: OwnedFd,
    rings: Vec<Ring<'a>>,
}

impl<'a> Rings<'a> {
    pub fn new() -> Result<Self> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_create1");
        }
        Ok(Self {
            // SAFETY: a new fd nobody else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            rings: Vec::new(),
        })
    }

    /// Adds the ring map `fd` of `size` data bytes (a power of two).
    pub fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        size: usize,
        callback: impl FnMut(&[u8], u64) -> bool + 'a,
    ) -> Result<()> {
        anyhow::ensure!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: valid epoll and map fds, and an event to copy.
        if unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error()).context("watching a BPF ring buffer");
        }
        self.rings.push(Ring {
            consumer,
            producer,
            page,
            size,
            scratch: Vec::new(),
            callback: Box::new(callback),
            peek: None,
        });
        Ok(())
    }

    /// Sets the look-ahead of the ring added last (see `consume_records`).
    pub fn set_peek(&mut self, peek: impl FnMut(&[u8]) + 'a) {
        if let Some(ring) = self.rings.last_mut() {
            ring.peek = Some(Box::new(peek));
        }
    }

    /// Waits up to `timeout` for a wakeup of any ring; `consume` then
    /// reads them all, in order. EINTR comes back as kind Interrupted.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: a valid epoll fd and an array of the stated length.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes every ring, in order, without waiting. A callback leaves a
    /// record when it needs what an earlier ring holds first (a process's
    /// exec event before the data it sent after): the rings before are then
    /// read to their end, and the record left comes again. The callback
    /// lets it through then.
    pub fn consume(&mut self) -> usize {
        let (mut handled, mut returns, mut i) = (0, 0, 0);
        while i < self.rings.len() {
            let pass = self.rings[i].consume();
            handled += pass.handled;
            if pass.left_one && i > 0 && returns < MAX_RETURNS_PER_CONSUME {
                returns += 1;
                handled += self.drain_before(i);
            } else {
                i += 1;
            }
        }
        handled
    }

    /// Reads the rings before ring `i` to their end, waiting out a record
    /// still being written there: it may be the very event the record left
    /// in ring `i` waits for.
    fn drain_before(&mut self, i: usize) -> usize {
        let mut handled = 0;
        for _ in 0..MAX_BUSY_PASSES {
            let mut busy = false;
            for ring in &mut self.rings[..i] {
                let pass = ring.consume();
                handled += pass.handled;
                busy |= pass.busy;
            }
            if !busy {
                break;
            }
            std::hint::spin_loop();
        }
        handled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_spans_are_header_plus_data_rounded_to_eight() {
        assert_eq!(record_span(0), 8);
        assert_eq!(record_span(1), 16);
        assert_eq!(record_span(8), 16);
        assert_eq!(record_span(9), 24);
        assert_eq!(record_span(9 | DISCARD_BIT), 24);
    }

    /// A data area as the kernel would fill it: (payload, flags) records
    /// from ring offset `start`, wrapping past the end.
    fn ring_with(size: usize, start: u64, records: &[(&[u8], u32)]) -> (Vec<u64>, u64) {
        let mut words = vec![0u64; size / 8];
        // SAFETY: the u64s' own bytes (u64 storage keeps headers aligned).
        let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, size) };
        let mut pos = start;
        for (payload, flags) in records {
            let at = pos as usize % size;
            bytes[at..at + 4].copy_from_slice(&(payload.len() as u32 | flags).to_ne_bytes());
            for (i, b) in payload.iter().enumerate() {
                bytes[(at + 8 + i) % size] = *b;
            }
            pos += record_span(payload.len() as u32);
        }
        (words, pos)
    }

    fn drain(words: &[u64], cons: u64, prod: u64) -> (Vec<Vec<u8>>, u64) {
        let d = drain_peeked(words, cons, prod);
        (d.records, d.consumer)
    }

    /// What a drain handed on and released, and what `peek` saw.
    struct Drained {
        records: Vec<Vec<u8>>,
        /// The bytes still unread behind each record handed on.
        unread: Vec<u64>,
        consumer: u64,
        peeked: Vec<Vec<u8>>,
        /// The drain stopped at a record still being written.
        busy: bool,
    }

    fn drain_peeked(words: &[u64], cons: u64, prod: u64) -> Drained {
        // SAFETY: as in ring_with.
        let data =
            unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) };
        let consumer = AtomicU64::new(cons);
        let producer = AtomicU64::new(prod);
        let pos = Positions {
            consumer: &consumer,
            producer: &producer,
        };
        let got = std::cell::RefCell::new(Vec::new());
        let mut unread = Vec::new();
        // Each peeked record, with how many records were handed on by then.
        let mut peeked = Vec::new();
        let pass = consume_records(
            &pos,
            data,
            &mut Vec::new(),
            &mut |r, u| {
                got.borrow_mut().push(r.to_vec());
                unread.push(u);
                true
            },
            Some(&mut |r: &[u8]| peeked.push((r.to_vec(), got.borrow().len()))),
        );
        let got = got.into_inner();
        assert_eq!(pass.handled, got.len());
        assert!(!pass.left_one);
        // A peeked record is handed on later, at most LOOKAHEAD records later.
        for (p, handed) in &peeked {
            let i = got
                .iter()
                .position(|r| r == p)
                .expect("peeked, never handed on");
            assert!(
                i >= *handed && i - handed <= LOOKAHEAD,
                "{p:?} at {i}, peeked at {handed}"
            );
        }
        Drained {
            records: got,
            unread,
            consumer: consumer.load(Ordering::Relaxed),
            peeked: peeked.into_iter().map(|(p, _)| p).collect(),
            busy: pass.busy,
        }
    }

    #[test]
    fn records_wrapping_past_the_end_arrive_whole_and_in_order() {
        let a: Vec<u8> = (1..=20).collect();
        let b: Vec<u8> = (100..=130).collect();
        // Starts 16 bytes before the end of a 128-byte ring (and many laps
        // in): `a`'s data wraps, `b` follows near the start.
        let start = 128 * 1000 + 112;
        let (words, end) = ring_with(128, start, &[(&a, 0), (&b, 0)]);
        let d = drain_peeked(&words, start, end);
        assert_eq!(d.records, vec![a, b.clone()]);
        assert_eq!(d.peeked, vec![b], "the wrapped record is not peeked at");
        assert_eq!(d.consumer, end, "everything released");
        assert!(!d.busy);
    }

    #[test]
    fn busy_records_stop_the_drain_and_discarded_ones_are_skipped() {
        let (words, end) = ring_with(
            128,
            0,
            &[
                (b"one", 0),
                (b"gone", DISCARD_BIT),
                (b"two", 0),
                (b"later", BUSY_BIT),
            ],
        );
        let d = drain_peeked(&words, 0, end);
        assert!(d.busy, "the pass says it stopped at a busy record");
        let (got, cons) = (d.records, d.consumer);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(cons, 16 + 16 + 16, "released up to the busy record");
        let (none, again) = drain(&words, cons, end);
        assert!(none.is_empty());
        assert_eq!(again, cons);
    }

    #[test]
    fn records_are_peeked_at_ahead_of_their_turn() {
        let recs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 5]).collect();
        let list: Vec<(&[u8], u32)> = recs.iter().map(|r| (&r[..], 0)).collect();
        let (words, end) = ring_with(256, 0, &list);
        let d = drain_peeked(&words, 0, end);
        assert_eq!(d.records, recs);
        assert_eq!(d.peeked, recs, "each once, in order");
    }

    #[test]
    fn a_length_longer_than_the_ring_is_not_read() {
        let mut words = vec![0u64; 16];
        words[0] = 1000; // length word 1000 in a 128-byte ring
        let (got, cons) = drain(&words, 0, 16);
        assert!(got.is_empty());
        assert_eq!(cons, 1008);
    }

    #[test]
    fn a_record_left_by_the_callback_stays_first_in_the_ring() {
        let (words, end) = ring_with(128, 0, &[(b"one", 0), (b"two", 0), (b"three", 0)]);
        // SAFETY: as in ring_with.
        let data = unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, 128) };
        let consumer = AtomicU64::new(0);
        let producer = AtomicU64::new(end);
        let pos = Positions {
            consumer: &consumer,
            producer: &producer,
        };
        let mut seen = Vec::new();
        let mut leave = Some(b"two".to_vec());
        let mut pass = || {
            consume_records(
                &pos,
                data,
                &mut Vec::new(),
                &mut |r, _| {
                    seen.push(r.to_vec());
                    leave.take_if(|l| l == r).is_none()
                },
                None,
            )
        };
        let first = pass();
        assert_eq!(
            first,
            Pass {
                handled: 1,
                left_one: true,
                busy: false
            }
        );
        assert_eq!(consumer.load(Ordering::Relaxed), 16, "`two` not released");
        let second = pass();
        assert_eq!(
            second,
            Pass {
                handled: 2,
                left_one: false,
                busy: false
            }
        );
        assert_eq!(consumer.load(Ordering::Relaxed), end);
        let want: Vec<Vec<u8>> = [&b"one"[..], b"two", b"two", b"three"]
            .iter()
            .map(|r| r.to_vec())
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn wrapped_records_read_whole() {
        let data: Vec<u8> = (0..32).collect();
        let mut scratch = Vec::new();
        let whole = with_record(&data, 8, 8, &mut scratch, |r| r.to_vec());
        assert_eq!(whole, (8..16).collect::<Vec<u8>>());
        let wrapped = with_record(&data, 28, 8, &mut scratch, |r| r.to_vec());
        assert_eq!(wrapped, vec![28, 29, 30, 31, 0, 1, 2, 3]);
        let to_end = with_record(&data, 24, 8, &mut scratch, |r| r.to_vec());
        assert_eq!(to_end, (24..32).collect::<Vec<u8>>());
    }

    #[test]
    fn each_record_comes_with_the_bytes_still_unread_behind_it() {
        let recs: [&[u8]; 3] = [b"first", b"second record", b"3"];
        let list: Vec<(&[u8], u32)> = recs.iter().map(|r| (*r, 0)).collect();
        let (words, end) = ring_with(256, 64, &list);
        let unread = drain_peeked(&words, 64, end).unread;
        let spans: Vec<u64> = recs.iter().map(|r| record_span(r.len() as u32)).collect();
        assert_eq!(unread, vec![spans[1] + spans[2], spans[2], 0]);
    }
}
