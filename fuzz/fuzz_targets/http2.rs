//! Feeds arbitrary bytes to an HTTP/2 connection tracker, cut into segments
//! and directions chosen by the input itself, with capture truncation and
//! the kernel's records of frames past the cut, and checks it never panics,
//! keeps its stream cap, and never reports a stream twice; each segment
//! also goes to the detector of connections joined midway.
#![no_main]

use autotel_protocols::http2::{
    midway, Http2Connection, Http2Event, Http2Request, Segment, Timing, MAX_STREAMS, PREFACE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // First byte: how the connection starts.
    let mut conn = match data[0] % 4 {
        0 => Http2Connection::new(),
        1 => Http2Connection::mid_connection(),
        2 => Http2Connection::after_upgrade(Http2Request::default(), Timing::default(), 0),
        _ => {
            // A real preface first, so the fuzzer reaches frames and HPACK.
            let mut c = Http2Connection::new();
            let seg = Segment {
                data: PREFACE,
                total_len: PREFACE.len(),
                tail: &[],
                frames: &[],
                timing: Timing::default(),
            };
            c.feed(true, &seg, &mut Vec::new());
            c
        }
    };
    let mut out = Vec::new();
    let mut rest = &data[1..];
    let mut t = 0u64;
    while !rest.is_empty() {
        // One control byte per segment: direction, length, capture cut.
        let ctl = rest[0];
        rest = &rest[1..];
        let len = (((ctl & 0x3f) as usize) * 11 + 1).min(rest.len());
        let (seg, tail) = rest.split_at(len);
        rest = tail;
        let from_client = ctl & 0x80 == 0;
        // Bit 6: pretend the kernel captured only half and the syscall moved
        // more, the other half being its records of the frames past the cut.
        let (captured, frames, total) = if ctl & 0x40 != 0 {
            let (a, b) = seg.split_at(seg.len() / 2);
            (a, b, seg.len() * 3)
        } else {
            (seg, &[][..], seg.len())
        };
        let tail_bytes = &seg[seg.len().saturating_sub(32)..];
        let _ = midway(captured, total > captured.len());
        t += 1;
        conn.feed(
            from_client,
            &Segment {
                data: captured,
                total_len: total,
                tail: tail_bytes,
                frames,
                timing: Timing {
                    enter_ns: t,
                    exit_ns: t,
                },
            },
            &mut out,
        );
        assert!(conn.open_streams() <= MAX_STREAMS);
    }
    conn.close(&mut out);
    let mut ids: Vec<u32> = out
        .iter()
        .filter_map(|e| match e {
            Http2Event::Stream(s) => Some(s.stream_id),
            _ => None,
        })
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    // A stream id can come back only after eviction/recently-closed expiry;
    // with short inputs it must be unique.
    if data.len() < 800 {
        assert_eq!(ids.len(), n, "a stream reported twice");
    }
});
