//! Feeds arbitrary bytes to the DNS parser, to a TCP framer per direction in
//! segments chosen by the input (with capture truncation), and every parsed
//! message (UDP datagrams and TCP frames) to a lookup tracker; checks it
//! never panics, stays bounded and never reports more lookups than queries.
#![no_main]

use autotel_protocols::dns::{parse, DnsTcpFramer, LookupTracker, Segment, Timing, MAX_PENDING};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    if data.is_empty() {
        return;
    }
    let tcp = data[0] & 1 != 0;
    let mut framers = [DnsTcpFramer::new(), DnsTcpFramer::new()];
    let mut tracker = LookupTracker::new(u64::from(data[0] >> 1) * 3);
    let mut lookups = Vec::new();
    let mut queries = 0usize;
    let mut rest = &data[1..];
    let mut t = 0u64;
    while !rest.is_empty() {
        // One control byte per segment: direction, length, capture cut.
        let ctl = rest[0];
        rest = &rest[1..];
        let len = (((ctl & 0x3f) as usize) * 5 + 1).min(rest.len());
        let (seg, tail) = rest.split_at(len);
        rest = tail;
        let from_client = ctl & 0x80 != 0;
        t += 1;
        let timing = Timing { enter_ns: t, exit_ns: t };
        let mut msgs = Vec::new();
        if tcp {
            let (captured, total) = if ctl & 0x40 != 0 { (&seg[..seg.len() / 2], seg.len() * 2) } else { (seg, seg.len()) };
            let s = Segment { data: captured, total_len: total, tail: &[], frames: &[], timing };
            framers[usize::from(from_client)].push(&s, &mut msgs);
        } else {
            msgs.push((seg.to_vec(), timing));
            if ctl & 0x40 != 0 {
                tracker.expire(t, &mut lookups);
            }
        }
        for (m, timing) in msgs {
            assert!(m.len() <= 65535);
            if let Ok(m) = parse(&m) {
                queries += usize::from(from_client && !m.is_response);
                tracker.on_message(from_client, m, timing, &mut lookups);
            }
        }
        assert!(tracker.pending() <= MAX_PENDING);
    }
    tracker.close(&mut lookups);
    assert_eq!(tracker.pending(), 0);
    assert_eq!(lookups.len(), queries, "every query is reported exactly once");
});
