//! Table tests on real captured bytes (testdata/memcached, recorded by
//! testdata/capture_memcached.py from raw sockets and pymemcache against
//! memcached 1.6).

use super::*;
use crate::testkit::{
    at, capped, closed_after, db_errors as errors, db_ops as ops, has, CLOSED_NS,
};

/// Records of a capture: (from_client, bytes of one recv()).
fn capture(name: &str) -> Vec<(bool, Vec<u8>)> {
    crate::testkit::capture("memcached", name)
}

/// Feeds records as syscalls captured up to `cap` bytes (tail kept when cut);
/// record i has timing (10i, 10i+1).
fn run(records: &[(bool, Vec<u8>)], cap: usize) -> Vec<DbEvent> {
    let mut c = MemcachedConnection::new();
    let mut out = Vec::new();
    for (i, (from_client, b)) in records.iter().enumerate() {
        c.feed(*from_client, &capped(b, cap, at(10 * i as u64)), &mut out);
    }
    c.close(CLOSED_NS, &mut out);
    out
}

fn texts<'a>(ops: &[&'a DbOperation]) -> Vec<&'a str> {
    ops.iter()
        .map(|o| o.query_text.as_deref().unwrap())
        .collect()
}

fn code(o: &DbOperation) -> Option<&str> {
    o.error.as_ref().map(|e| e.code.as_str())
}

#[test]
fn nc_basic_commands() {
    let out = run(&capture("nc_basic.cap"), 8192);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        [
            "flush_all",
            "set user:1",
            "get user:1",
            "get a b user:1",
            "gets user:1",
            "add user:1",
            "append user:1",
            "touch user:1",
            "delete user:1",
            "delete user:1",
            "get user:1",
            "set n",
            "incr n",
            "decr n",
            "incr missing",
            "set s",
            "incr s",
            "bogus",
            "cas s",
            "version",
            "verbosity",
            "stats",
            "stats slabs",
            "set q1",
            "set q2",
            "delete q3",
            "get q1 q2",
        ]
    );
    let verbs: Vec<_> = o.iter().map(|o| o.operation.as_deref().unwrap()).collect();
    assert_eq!(&verbs[..4], ["flush_all", "set", "get", "get"]);
    let rows: Vec<_> = o.iter().map(|o| o.rows).collect();
    assert_eq!(&rows[2..5], [Some(1), Some(1), Some(1)]);
    assert_eq!(rows[10], Some(0), "miss");
    assert_eq!(rows[26], Some(2));
    assert_eq!(rows[1], None);
    // Outcomes that are not errors.
    for i in [5, 9, 14, 18] {
        assert_eq!(o[i].error, None, "{}", texts(&o)[i]);
    }
    assert_eq!(code(o[16]), Some("CLIENT_ERROR"));
    assert_eq!(
        o[16].error.as_ref().unwrap().message,
        "cannot increment or decrement non-numeric value"
    );
    assert_eq!(code(o[17]), Some("ERROR"));
    // Each answer ends with the record after its request.
    for op in &o[..23] {
        assert_eq!(op.response_end_ns, op.request_start.enter_ns + 11);
    }
    // noreply: done with the segment that carried them; the get gets the reply.
    let last = o[26].request_start;
    for op in &o[23..26] {
        assert_eq!(op.request_start, last);
        assert_eq!(op.response_end_ns, last.exit_ns);
    }
    assert_eq!(o[26].response_end_ns, last.enter_ns + 11);
    assert!(o
        .iter()
        .all(|o| o.system == DbSystem::Memcached && o.namespace.is_none()));
}

#[test]
fn large_values_whole_and_cut() {
    let records = capture("nc_large.cap");
    let out = run(&records, usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        o.len(),
        104,
        "set, get, 100 noreply sets, multi-get, version"
    );
    assert_eq!(texts(&o)[..3], ["set big", "get big", "set k000"]);
    assert_eq!(o[1].rows, Some(1));
    assert!(texts(&o)[102].starts_with("get k000 k001 "));
    assert!(texts(&o)[102].ends_with(" ..."), "64 keys shown");
    assert_eq!(o[102].rows, Some(100));
    assert_eq!(o[103].query_text.as_deref(), Some("version"));

    // Cut at 8 KiB: big values are skipped by length; the pipelined sets
    // and the 100-item reply lose framing, then both sides resync.
    let out = run(&records, 8192);
    assert_eq!(errors(&out), vec!["sync_lost", "sync_lost"]);
    let o = ops(&out);
    assert_eq!(texts(&o)[..3], ["set big", "get big", "set k000"]);
    assert_eq!(o[0].response_end_ns, 21, "STORED after two request records");
    assert_eq!(o[1].rows, Some(1));
    assert_eq!(
        o[1].response_end_ns, 51,
        "END in the tail of the second record"
    );
    let last = o.last().unwrap();
    assert_eq!(last.query_text.as_deref(), Some("version"));
    assert_eq!(last.response_end_ns, 111);
    assert!(o.len() < 104);
}

#[test]
fn meta_commands_and_quiet_mode() {
    let out = run(&capture("meta.cap"), usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        [
            "ms mk",
            "mg mk",
            "mg nokey",
            "ma mcount",
            "md mk",
            "mg mk",
            "ms mq",
            "mg mq",
            "mn"
        ]
    );
    assert_eq!(o[1].rows, Some(1));
    assert_eq!(o[2].rows, Some(0), "EN: miss");
    assert!(o.iter().all(|o| o.error.is_none()));
    // Quiet: the silent miss and store end with the reply that settles them.
    assert_eq!((o[5].rows, o[7].rows), (Some(0), Some(1)));
    assert!(o[5..]
        .iter()
        .all(|x| x.response_end_ns == o[8].response_end_ns));
}

#[test]
fn pymemcache_client() {
    let out = run(&capture("pymemcache.cap"), usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        [
            "set py:a",
            "set py:b",
            "set py:c",
            "get py:a py:b py:c py:missing",
            "incr py:a",
            "delete py:b",
            "get py:b"
        ]
    );
    assert_eq!(o[0].response_end_ns, 1, "noreply");
    assert_eq!((o[1].response_end_ns, o[2].response_end_ns), (11, 11));
    assert_eq!(o[3].rows, Some(3));
    assert_eq!(o[6].rows, Some(0));
}

#[test]
fn any_split_gives_same_operations() {
    for name in ["nc_basic.cap", "meta.cap", "pymemcache.cap", "nc_large.cap"] {
        let records = capture(name);
        let whole: Vec<_> = ops(&run(&records, usize::MAX))
            .into_iter()
            .map(|o| (o.query_text.clone(), o.rows, o.error.clone()))
            .collect();
        for size in [1, 2, 5, 11, 4096] {
            let split: Vec<(bool, Vec<u8>)> = records
                .iter()
                .flat_map(|(d, b)| b.chunks(size).map(|c| (*d, c.to_vec())).collect::<Vec<_>>())
                .collect();
            let out = run(&split, usize::MAX);
            assert_eq!(errors(&out), Vec::<&str>::new(), "{name} {size}");
            let got: Vec<_> = ops(&out)
                .into_iter()
                .map(|o| (o.query_text.clone(), o.rows, o.error.clone()))
                .collect();
            assert_eq!(got, whole, "{name} split {size}");
        }
    }
}

#[test]
fn every_truncation_is_safe() {
    for name in ["nc_basic.cap", "meta.cap", "pymemcache.cap", "nc_large.cap"] {
        let records = capture(name);
        let whole = ops(&run(&records, usize::MAX)).len();
        for cap in [0, 1, 3, 16, 64, 512, 4096] {
            let out = run(&records, cap);
            assert!(ops(&out).len() <= whole, "{name} cap {cap}");
        }
        for skip in 1..records.len().min(8) {
            let out = run(&records[skip..], usize::MAX);
            assert!(ops(&out).len() <= whole, "{name} skip {skip}");
        }
    }
}

#[test]
fn binary_protocol_is_opaque() {
    let mut c = MemcachedConnection::new();
    let mut out = Vec::new();
    // Binary GET "k": magic, opcode 0, key length 1, body length 1.
    let get = b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00k";
    assert!(detect(true, get));
    let seg = Segment {
        data: get,
        total_len: get.len(),
        tail: &[],
        frames: &[],
        timing: Timing::default(),
    };
    c.feed(true, &seg, &mut out);
    c.feed(false, &seg, &mut out);
    c.close(CLOSED_NS, &mut out);
    assert!(c.is_opaque());
    assert_eq!(out, vec![DbEvent::Error("binary_protocol")]);
}

#[test]
fn detect_memcached_only() {
    for name in ["nc_basic.cap", "meta.cap", "pymemcache.cap", "nc_large.cap"] {
        let records = capture(name);
        assert!(
            detect(true, &records.iter().find(|r| r.0).unwrap().1),
            "{name}"
        );
        assert!(
            detect(false, &records.iter().find(|r| !r.0).unwrap().1),
            "{name}"
        );
    }
    for yes in [
        &b"get k\r\n"[..],
        b"set k 0 0 5\r\n",
        b"stats\r\n",
        b"version\r\n",
        b"mg k v\r\n",
        b"incr n 1\r\n",
    ] {
        assert!(detect(true, yes), "{yes:?}");
    }
    for not in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"PING\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"set k\r\n",
        b"get k",
        b"",
    ] {
        assert!(!detect(true, not), "{not:?}");
    }
    assert!(!detect(false, b"HTTP/1.1 200 OK\r\n"));
    assert!(!detect(false, b"+OK\r\n"));
}

/// The connection closes before the last `get` is answered: it is reported
/// unanswered at the close (the noreply commands before it as done); a
/// `VALUE` the close cut mid-way is incomplete.
#[test]
fn close_leaves_the_last_get_unanswered() {
    for (name, half, answer) in [
        ("nc_basic.cap", false, Answer::Missing),
        ("nc_large.cap", true, Answer::Incomplete),
    ] {
        let recs = closed_after(&capture(name), |b| has(b, b"get "), half);
        let out = run(&recs, usize::MAX);
        let o = ops(&out);
        let (last, done) = o.split_last().unwrap();
        assert!(done.iter().all(|o| o.answer == Answer::Complete), "{name}");
        assert_eq!(last.operation.as_deref(), Some("get"), "{name}");
        let got = (last.answer, last.response_end_ns, last.rows, code(last));
        assert_eq!(got, (answer, CLOSED_NS, None, None), "{name}");
    }
}
