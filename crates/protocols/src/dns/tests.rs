//! Tests on real captured bytes (testdata/dns, recorded by
//! testdata/capture_dns.py: dig and glibc getent against dnsmasq).

use super::*;

/// Records of one capture file: (from_client, bytes).
fn capture(name: &str) -> Vec<(bool, Vec<u8>)> {
    crate::testkit::capture("dns", name)
}

fn t(ns: u64) -> Timing {
    Timing {
        enter_ns: ns,
        exit_ns: ns + 1,
    }
}

fn seg(data: &[u8], ns: u64) -> Segment<'_> {
    Segment {
        data,
        total_len: data.len(),
        tail: &[],
        frames: &[],
        timing: t(ns),
    }
}

/// Feeds a UDP capture, one datagram per 1000 ns.
fn track(records: &[(bool, Vec<u8>)], timeout_ns: u64) -> (LookupTracker, Vec<DnsLookup>) {
    let mut tr = LookupTracker::new(timeout_ns);
    let mut out = Vec::new();
    for (i, (c, b)) in records.iter().enumerate() {
        tr.on_message(*c, parse(b).unwrap(), t(i as u64 * 1000), &mut out);
    }
    (tr, out)
}

fn strs(m: &DnsMessage) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        m.question_name.as_deref(),
        m.question_type.as_deref(),
        m.rcode.as_deref(),
    )
}

#[test]
fn parses_dig_captures_exactly() {
    // (file, name, type, rcode, answers)
    let table = [
        ("dig_a.cap", "test.example", "A", "NOERROR", 1),
        ("dig_aaaa.cap", "test.example", "AAAA", "NOERROR", 1),
        ("dig_mx.cap", "test.example", "MX", "NOERROR", 1),
        ("dig_ptr.cap", "3.2.1.10.in-addr.arpa", "PTR", "NOERROR", 1),
        ("dig_nxdomain.cap", "host.nx.example", "A", "NXDOMAIN", 0),
        ("dig_refused.cap", "nope.invalid", "A", "REFUSED", 0),
    ];
    for (file, name, ty, rcode, answers) in table {
        let recs = capture(file);
        assert_eq!(recs.len(), 2, "{file}");
        let q = parse(&recs[0].1).unwrap();
        let r = parse(&recs[1].1).unwrap();
        assert!(!q.is_response && r.is_response, "{file}");
        assert_eq!(q.id, r.id, "{file}");
        assert_eq!(q.opcode, "QUERY");
        assert_eq!(strs(&q), (Some(name), Some(ty), None), "{file}");
        assert_eq!(strs(&r), (Some(name), Some(ty), Some(rcode)), "{file}");
        assert_eq!((q.answer_count, r.answer_count), (0, answers), "{file}");
        assert!(!r.truncated);
    }
}

#[test]
fn name_is_lowercased_without_trailing_dot() {
    // dig was asked for "Test.Example"; dnsmasq echoes the question's case.
    let recs = capture("dig_a.cap");
    assert!(recs[0].1.windows(4).any(|w| w == b"Test"));
    assert_eq!(
        parse(&recs[0].1).unwrap().question_name.as_deref(),
        Some("test.example")
    );
}

#[test]
fn dig_lookup_matches() {
    let (tr, out) = track(&capture("dig_nxdomain.cap"), 5_000_000_000);
    assert_eq!(tr.pending(), 0);
    assert_eq!(out.len(), 1);
    let l = &out[0];
    assert_eq!(
        l.response.as_ref().unwrap().rcode.as_deref(),
        Some("NXDOMAIN")
    );
    assert_eq!(l.query_timing, t(0));
    assert_eq!(l.response_end_ns, Some(1001));
    assert!(!l.retransmission);
}

#[test]
fn glibc_a_and_aaaa_in_either_order() {
    let recs = capture("glibc_ahosts.cap");
    let dirs: Vec<bool> = recs.iter().map(|r| r.0).collect();
    assert_eq!(dirs, [true, true, false, false]);
    let (q1, q2) = (parse(&recs[0].1).unwrap(), parse(&recs[1].1).unwrap());
    assert_ne!(q1.id, q2.id);
    assert_eq!(q1.question_type.as_deref(), Some("A"));
    assert_eq!(q2.question_type.as_deref(), Some("AAAA"));

    for order in [[0, 1, 2, 3], [0, 1, 3, 2]] {
        let recs: Vec<_> = order.iter().map(|&i| recs[i].clone()).collect();
        let (tr, out) = track(&recs, 5_000_000_000);
        assert_eq!(tr.pending(), 0);
        assert_eq!(tr.stats(), LookupStats::default());
        assert_eq!(out.len(), 2);
        for l in &out {
            let r = l.response.as_ref().unwrap();
            assert_eq!(l.query.id, r.id);
            assert_eq!(l.query.question_type, r.question_type);
            assert_eq!(r.answer_count, 1);
        }
    }
}

#[test]
fn dig_retry_is_a_retransmission() {
    let recs = capture("dig_retry.cap");
    let (tr, out) = track(&recs, 5_000_000_000);
    assert_eq!(tr.pending(), 0);
    assert_eq!(tr.stats().retransmissions, 1);
    assert_eq!(out.len(), 2);
    // First attempt: unanswered; second: answered and marked as a retry.
    assert!(out[0].response.is_none() && !out[0].retransmission);
    assert_eq!(out[0].query_timing, t(0));
    assert!(out[1].response.is_some() && out[1].retransmission);
    assert_eq!(out[1].query_timing, t(1000));
    assert_eq!(out[1].response_end_ns, Some(2001));
}

#[test]
fn dig_timeout_expires() {
    let (mut tr, out) = track(&capture("dig_timeout.cap"), 1_000);
    assert!(out.is_empty());
    let mut out = Vec::new();
    tr.expire(1000, &mut out);
    assert!(out.is_empty(), "not yet: sent at 1");
    tr.expire(1001, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].response.is_none());
    assert_eq!(tr.pending(), 0);
}

#[test]
fn close_reports_pending_unanswered() {
    let recs = capture("glibc_ahosts.cap");
    let (mut tr, out) = track(&recs[..2], 5_000_000_000);
    assert!(out.is_empty());
    assert_eq!(tr.pending(), 2);
    let mut out = Vec::new();
    tr.close(&mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|l| l.response.is_none()));
    assert_eq!(tr.pending(), 0);
}

#[test]
fn late_join_response_is_dropped_and_counted() {
    let recs = capture("dig_a.cap");
    let (tr, out) = track(&recs[1..], 5_000_000_000);
    assert!(out.is_empty());
    assert_eq!(tr.stats().unmatched_responses, 1);
}

#[test]
fn misdirected_messages_are_counted() {
    let recs = capture("dig_a.cap");
    let mut tr = LookupTracker::new(1);
    let mut out = Vec::new();
    tr.on_message(false, parse(&recs[0].1).unwrap(), t(0), &mut out);
    tr.on_message(true, parse(&recs[1].1).unwrap(), t(1), &mut out);
    assert!(out.is_empty());
    assert_eq!(tr.stats().misdirected, 2);
}

#[test]
fn pending_is_bounded() {
    let q = parse(&capture("dig_a.cap")[0].1).unwrap();
    let mut tr = LookupTracker::new(u64::MAX);
    let mut out = Vec::new();
    for i in 0..(MAX_PENDING as u16 + 10) {
        let mut q = q.clone();
        q.id = i;
        tr.on_message(true, q, t(u64::from(i)), &mut out);
    }
    assert_eq!(tr.pending(), MAX_PENDING);
    assert_eq!(out.len(), 10);
    assert_eq!(tr.stats().evicted, 10);
    assert_eq!(out[0].query.id, 0, "oldest goes first");
}

#[test]
fn response_must_match_question_too() {
    let recs = capture("dig_a.cap");
    let mut r = parse(&recs[1].1).unwrap();
    r.question_type = Some("AAAA".into());
    let mut tr = LookupTracker::new(u64::MAX);
    let mut out = Vec::new();
    tr.on_message(true, parse(&recs[0].1).unwrap(), t(0), &mut out);
    tr.on_message(false, r, t(1), &mut out);
    assert!(out.is_empty());
    assert_eq!(tr.stats().unmatched_responses, 1);
}

/// Concatenates the TCP capture's bytes of one direction.
fn tcp_stream(name: &str, client: bool) -> Vec<u8> {
    capture(name)
        .into_iter()
        .filter(|r| r.0 == client)
        .flat_map(|r| r.1)
        .collect()
}

#[test]
fn tcp_framing_real_keepopen_stream() {
    for client in [true, false] {
        let stream = tcp_stream("dig_tcp_keepopen.cap", client);
        // Whole stream as one segment: two messages out of one push.
        let mut f = DnsTcpFramer::new();
        let mut out = Vec::new();
        f.push(&seg(&stream, 0), &mut out);
        assert_eq!(out.len(), 2);
        let msgs: Vec<_> = out.iter().map(|(b, _)| parse(b).unwrap()).collect();
        assert!(msgs.iter().all(|m| m.is_response != client));
        assert_eq!(msgs[0].question_type.as_deref(), Some("A"));
        assert_eq!(msgs[1].question_type.as_deref(), Some("AAAA"));

        // Every split point, including inside the length prefix.
        for cut in 1..stream.len() {
            let mut f = DnsTcpFramer::new();
            let mut split = Vec::new();
            f.push(&seg(&stream[..cut], 10), &mut split);
            f.push(&seg(&stream[cut..], 20), &mut split);
            let bytes: Vec<_> = split.iter().map(|(b, _)| b.clone()).collect();
            let whole: Vec<_> = out.iter().map(|(b, _)| b.clone()).collect();
            assert_eq!(bytes, whole, "cut {cut}");
            // A message straddling the cut starts at 10 and ends at 21.
            let first_len = 2 + usize::from(u16::from_be_bytes([stream[0], stream[1]]));
            if cut < first_len {
                assert_eq!(
                    split[0].1,
                    Timing {
                        enter_ns: 10,
                        exit_ns: 21
                    }
                );
            }
        }
    }
}

#[test]
fn tcp_byte_at_a_time_then_lookup() {
    let mut fc = DnsTcpFramer::new();
    let mut fs = DnsTcpFramer::new();
    let mut tr = LookupTracker::new(u64::MAX);
    let mut lookups = Vec::new();
    let mut ns = 0;
    for (client, bytes) in capture("dig_tcp.cap") {
        let mut msgs = Vec::new();
        for b in bytes.chunks(1) {
            ns += 1;
            let f = if client { &mut fc } else { &mut fs };
            f.push(&seg(b, ns), &mut msgs);
        }
        for (m, timing) in msgs {
            tr.on_message(client, parse(&m).unwrap(), timing, &mut lookups);
        }
    }
    assert_eq!(lookups.len(), 1);
    let l = &lookups[0];
    assert_eq!(l.query.question_name.as_deref(), Some("test.example"));
    assert_eq!(l.response.as_ref().unwrap().answer_count, 1);
    assert_eq!(l.query_timing.enter_ns, 1);
    assert_eq!(l.response_end_ns, Some(ns + 1));
}

#[test]
fn tcp_capture_gap_skips_message_and_resyncs() {
    let stream = tcp_stream("dig_tcp_keepopen.cap", true);
    let first_len = 2 + usize::from(u16::from_be_bytes([stream[0], stream[1]]));
    let (first, second) = stream.split_at(first_len);
    let mut f = DnsTcpFramer::new();
    let mut out = Vec::new();
    // Kernel kept 10 bytes of a syscall that moved the whole first message.
    f.push(
        &Segment {
            data: &first[..10],
            total_len: first.len(),
            tail: &[],
            frames: &[],
            timing: t(0),
        },
        &mut out,
    );
    f.push(&seg(second, 1), &mut out);
    assert_eq!(f.lost(), 1);
    assert_eq!(out.len(), 1);
    assert_eq!(
        parse(&out[0].0).unwrap().question_type.as_deref(),
        Some("AAAA")
    );
}

#[test]
fn garbage_never_panics() {
    assert_eq!(parse(b""), Err(DnsError::TooShort));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(DnsError::BadQuestion));
    // glibc's query is header + question only: every strict prefix fails.
    let q = capture("glibc_ahosts.cap").remove(0).1;
    for cut in 0..q.len() {
        let e = parse(&q[..cut]).unwrap_err();
        assert!(DnsError::KINDS.contains(&e.kind()), "cut {cut}");
    }
    // dig's adds an EDNS record that we do not decode: cut it, still parses.
    let dig = capture("dig_a.cap").remove(0).1;
    assert_eq!(parse(&dig[..q.len()]), parse(&dig));
    // A compression pointer loop in the question name.
    let mut looped = q[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse(&looped), Err(DnsError::BadQuestion));
    // Pseudo-random bytes.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut f = DnsTcpFramer::new();
    let mut out = Vec::new();
    for _ in 0..2000 {
        let buf: Vec<u8> = (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = parse(&buf);
        f.push(&seg(&buf, 0), &mut out);
    }
}

#[test]
fn no_question_and_unknown_codes() {
    // Header only: id 7, response, opcode 6, rcode 11, TC, no question.
    let msg = [0, 7, 0x80 | (6 << 3) | 0x02, 11, 0, 0, 0, 0, 0, 0, 0, 0];
    let m = parse(&msg).unwrap();
    assert_eq!(m.id, 7);
    assert!(m.is_response && m.truncated);
    assert_eq!(m.opcode, "OPCODE6");
    assert_eq!(m.rcode.as_deref(), Some("RCODE11"));
    assert_eq!(strs(&m).0, None);
    // Root name, type 65280.
    let msg = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 1];
    let m = parse(&msg).unwrap();
    assert_eq!(strs(&m), (Some("."), Some("TYPE65280"), None));
}
