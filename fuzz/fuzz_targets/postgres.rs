//! Feeds arbitrary bytes to a PostgreSQL connection tracker, cut into
//! segments and directions chosen by the input itself, with capture
//! truncation and tails, and checks it never panics, never reports more
//! operations than requests that could carry them, and keeps its queue bounded.
#![no_main]

use autotel_protocols::db::{DbConnection, DbEvent, Segment, Timing};
use autotel_protocols::postgres::{detect, PostgresConnection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let _ = detect(data[0] & 1 == 0, &data[1..]);
    let mut conn = PostgresConnection::new();
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
        assert!(conn.pending() <= 1024);
    }
    conn.close(t + 1, &mut out);
    // Every operation came from a Query or Execute of at least 5 client bytes.
    let ops = out
        .iter()
        .filter(|e| matches!(e, DbEvent::Operation(_)))
        .count();
    assert!(
        ops * 5 <= client_bytes,
        "{ops} operations from {client_bytes} client bytes"
    );
    for e in &out {
        if let DbEvent::Operation(op) = e {
            assert!(op.request_start.enter_ns <= op.response_end_ns);
        }
    }
});
