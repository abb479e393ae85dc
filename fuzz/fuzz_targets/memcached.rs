//! Feeds arbitrary bytes to a memcached connection tracker, cut into segments
//! and directions chosen by the input itself, with capture truncation, and
//! checks it never panics and never reports more operations than commands
//! could fit in the client bytes (each takes at least 2 bytes: `\r\n`).
#![no_main]

use autotel_protocols::db::{DbConnection, DbEvent, Segment, Timing};
use autotel_protocols::memcached::{detect, MemcachedConnection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = detect(true, data);
    let _ = detect(false, data);
    let mut conn = MemcachedConnection::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut t = 0u64;
    let mut client_bytes = 0usize;
    while !rest.is_empty() {
        // One control byte per segment: direction, length, capture cut.
        let ctl = rest[0];
        rest = &rest[1..];
        let len = (((ctl & 0x3f) as usize) * 7 + 1).min(rest.len());
        let (seg, tail) = rest.split_at(len);
        rest = tail;
        let from_client = ctl & 0x80 != 0;
        // Bit 6: pretend the kernel captured only half and the syscall moved more.
        let (captured, total) = if ctl & 0x40 != 0 {
            (&seg[..seg.len() / 2], seg.len() * 3)
        } else {
            (seg, seg.len())
        };
        if from_client {
            client_bytes += captured.len() + seg.len().min(32);
        }
        let tail_bytes = &seg[seg.len().saturating_sub(32)..];
        t += 1;
        conn.feed(
            from_client,
            &Segment {
                data: captured,
                total_len: total,
                tail: tail_bytes,
                frames: &[],
                timing: Timing {
                    enter_ns: t,
                    exit_ns: t,
                },
            },
            &mut out,
        );
    }
    conn.close(t + 1, &mut out);
    let ops = out
        .iter()
        .filter(|e| matches!(e, DbEvent::Operation(_)))
        .count();
    assert!(
        ops * 2 <= client_bytes + 2,
        "{ops} operations from {client_bytes} client bytes"
    );
});
