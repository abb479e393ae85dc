//! Feeds arbitrary bytes to an HTTP/1 connection tracker, cut into segments
//! and directions chosen by the input itself, with capture truncation, and
//! checks it never panics, never reports more exchanges than requests, and
//! hands an h2c upgrade over inside the segment that carried the 101.
#![no_main]

use autotel_protocols::http1::{Dir, Http1Connection, Http1Event, Segment, Timing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let role = match data[0] % 3 {
        0 => None,
        1 => Some(Dir::Ingress),
        _ => Some(Dir::Egress),
    };
    let mut conn = Http1Connection::new(role);
    let mut out = Vec::new();
    let mut rest = &data[1..];
    let mut t = 0u64;
    while !rest.is_empty() {
        // One control byte per segment: direction, length, capture cut.
        let ctl = rest[0];
        rest = &rest[1..];
        let len = (((ctl & 0x3f) as usize) * 7 + 1).min(rest.len());
        let (seg, tail) = rest.split_at(len);
        rest = tail;
        let dir = if ctl & 0x80 != 0 { Dir::Egress } else { Dir::Ingress };
        // Bit 6: pretend the kernel captured only half and the syscall moved more.
        let (captured, total) = if ctl & 0x40 != 0 { (&seg[..seg.len() / 2], seg.len() * 3) } else { (seg, seg.len()) };
        let tail_bytes = &seg[seg.len().saturating_sub(32)..];
        t += 1;
        let before = out.len();
        conn.feed(
            dir,
            &Segment { data: captured, total_len: total, tail: tail_bytes, frames: &[], timing: Timing { enter_ns: t, exit_ns: t } },
            &mut out,
        );
        for e in &out[before..] {
            if let Http1Event::H2cUpgrade { rest, .. } = e {
                assert!(*rest <= captured.len(), "hand-over at {rest} beyond the {} captured bytes", captured.len());
            }
        }
    }
    conn.close(u64::MAX, &mut out);
    let starts = out.iter().filter(|e| matches!(e, Http1Event::RequestStart { .. })).count();
    let exchanges = out
        .iter()
        .filter(|e| matches!(e, Http1Event::Exchange(_) | Http1Event::H2cUpgrade { .. }))
        .count();
    assert!(exchanges <= starts, "{exchanges} exchanges from {starts} requests");
});
