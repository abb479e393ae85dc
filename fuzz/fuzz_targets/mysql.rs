//! Feeds arbitrary bytes to a MySQL connection tracker, cut into segments
//! and directions chosen by the input itself, with capture truncation and
//! tails, and checks it never panics, never reports more operations than
//! command packets could carry (inflated, once the protocol is compressed), keeps its queue bounded and never ends an
//! answer before its request started.
#![no_main]

use autotel_protocols::db::{DbConnection, DbEvent, Segment, Timing};
use autotel_protocols::mysql::{detect, MysqlConnection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let _ = detect(data[0] & 1 == 0, &data[1..]);
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    let mut rest = &data[1..];
    let mut t = 0u64;
    let mut client_bytes = 0usize;
    while !rest.is_empty() {
        // One control byte per segment: direction, length, capture cut.
        let ctl = rest[0];
        rest = &rest[1..];
        let len = (((ctl & 0x3f) as usize) * 7 + 1).min(rest.len());
        let (seg, after) = rest.split_at(len);
        rest = after;
        let from_client = ctl & 0x80 != 0;
        // After an agreement to TLS, an odd control byte starts the plaintext.
        if conn.awaits_tls() && ctl & 1 != 0 {
            conn.tls_plaintext();
        }
        // Bit 6: pretend the kernel captured only half of what moved.
        let (captured, total) = if ctl & 0x40 != 0 {
            (&seg[..seg.len() / 2], seg.len() * 3)
        } else {
            (seg, seg.len())
        };
        let tail: &[u8] = if captured.len() < total {
            &seg[seg.len().saturating_sub(32)..]
        } else {
            &[]
        };
        if from_client {
            client_bytes += total;
        }
        t += 1;
        conn.feed(
            from_client,
            &Segment {
                data: captured,
                total_len: total,
                tail,
                frames: &[],
                timing: Timing {
                    enter_ns: t,
                    exit_ns: t + 1,
                },
            },
            &mut out,
        );
        assert!(conn.pending() <= 64);
    }
    conn.close(t + 1, &mut out);
    // Every operation came from a command packet of at least 5 client bytes.
    let ops: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            DbEvent::Operation(op) => Some(op),
            _ => None,
        })
        .collect();
    // Compressed frames carry more: zlib's greatest ratio is 1032 to 1.
    let ratio = if conn.is_compressed() { 1032 } else { 1 };
    assert!(ops.len() * 5 <= client_bytes * ratio, "{} ops from {client_bytes} bytes", ops.len());
    for op in ops {
        assert!(op.response_end_ns >= op.request_start.enter_ns, "{op:?}");
    }
});
