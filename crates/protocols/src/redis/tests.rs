//! Table tests on real captured bytes (testdata/redis, recorded by
//! testdata/capture_redis.py from redis-cli, redis-cli -3, redis-benchmark,
//! redis-cli --pipe and raw sockets against redis-server 7.0).

use super::*;
use crate::testkit::{
    at, capped, closed_after, db_errors as errors, db_ops as ops, has, CLOSED_NS,
};

/// Records of a capture: (from_client, bytes of one recv()).
fn capture(name: &str) -> Vec<(bool, Vec<u8>)> {
    crate::testkit::capture("redis", name)
}

/// Feeds records as syscalls captured up to `cap` bytes (tail kept when cut);
/// record i has timing (10i, 10i+1).
fn run(records: &[(bool, Vec<u8>)], cap: usize) -> Vec<DbEvent> {
    let mut c = RedisConnection::new();
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

const CLI_SIMPLE: &[&str] = &[
    "COMMAND DOCS",
    "SET user:1 ?",
    "GET user:1",
    "RPUSH list ? ? ?",
    "INCR list",
    "FOOBAR x",
    "HSET h ? ? ? ?",
    "HGETALL h",
    "MGET user:1 list missing",
    "DEL user:1 h",
    "CLIENT SETNAME ?",
    "CONFIG GET ?",
    "SET big ?",
    "GET big",
    "LRANGE bigl ? ?",
    "SELECT 2",
    "SET k ?",
    "GET k",
    "EXISTS k",
];

#[test]
fn redis_cli_simple_commands() {
    let out = run(&capture("cli_simple.cap"), usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(texts(&o), CLI_SIMPLE);
    assert_eq!(o[1].operation.as_deref(), Some("SET"));
    assert_eq!(o[10].operation.as_deref(), Some("CLIENT SETNAME"));
    assert_eq!(code(o[4]), Some("WRONGTYPE"));
    assert!(o[4]
        .error
        .as_ref()
        .unwrap()
        .message
        .starts_with("Operation against a key"));
    assert_eq!(code(o[5]), Some("ERR"));
    assert!(o[5]
        .error
        .as_ref()
        .unwrap()
        .message
        .starts_with("unknown command"));
    assert_eq!(o[7].rows, Some(4), "HGETALL in RESP2: a flat array");
    assert_eq!(o[8].rows, Some(3));
    assert_eq!(o[14].rows, Some(3000));
    // Namespace unknown until SELECT, then the selected index.
    assert!(o[..15].iter().all(|o| o.namespace.is_none()));
    assert!(o[15..].iter().all(|o| o.namespace.as_deref() == Some("2")));
    // COMMAND DOCS: one request record, three response records.
    assert_eq!(o[0].request_start.enter_ns, 0);
    assert_eq!(o[0].response_end_ns, 31);
    assert!(o.iter().all(|o| o.system == DbSystem::Redis && !o.prepared));
}

#[test]
fn redis_cli_simple_cut_at_8k() {
    let out = run(&capture("cli_simple.cap"), 8192);
    // COMMAND DOCS (172 KB of small elements) and LRANGE (56 KB) lose
    // framing; the big SET/GET values are skipped by length.
    assert_eq!(errors(&out), vec!["sync_lost", "sync_lost"]);
    let o = ops(&out);
    assert_eq!(texts(&o), CLI_SIMPLE);
    assert_eq!(
        o[0].response_end_ns, 31,
        "ends with the last skipped segment"
    );
    assert_eq!(o[0].rows, Some(480), "RESP2 flat map header was captured");
    assert_eq!(o[14].rows, Some(3000));
    assert_eq!(code(o[4]), Some("WRONGTYPE"));
    assert!(o[15..].iter().all(|o| o.namespace.as_deref() == Some("2")));
}

#[test]
fn redis_cli_resp3_transactions() {
    let out = run(&capture("cli_resp3.cap"), 8192);
    assert_eq!(errors(&out), vec!["sync_lost"], "COMMAND DOCS cut");
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        [
            "HELLO 3",
            "COMMAND DOCS",
            "HSET h3 ? ? ? ?",
            "HGETALL h3",
            "SADD s3 ? ?",
            "SMEMBERS s3",
            "ZADD z3 ? ?",
            "ZSCORE z3 ?",
            "GET nothing",
            "MULTI",
            "SET t ?",
            "INCR t",
            "LPUSH t ?",
            "EXEC",
            "MULTI",
            "SET t ?",
            "NOSUCHCMD",
            "EXEC",
            "MULTI",
            "SET t ?",
            "DISCARD",
            "SELECT 5",
            "PING",
        ]
    );
    assert_eq!(o[0].rows, Some(7), "HELLO 3 answers a map");
    assert_eq!(o[3].rows, Some(2), "map: pairs");
    assert_eq!(o[5].rows, Some(2), "set");
    assert_eq!((o[7].error.as_ref(), o[8].error.as_ref()), (None, None));
    // Queued commands take their outcome and end from the EXEC array.
    let exec = o[13];
    assert_eq!(exec.rows, Some(3));
    for q in &o[10..13] {
        assert_eq!(q.response_end_ns, exec.response_end_ns);
    }
    assert_eq!(
        (code(o[10]), code(o[11]), code(o[12])),
        (None, None, Some("WRONGTYPE"))
    );
    // Aborted: the error queued command keeps its own error, EXEC says EXECABORT,
    // the queued SET is reported as it stood at +QUEUED.
    assert_eq!(code(o[16]), Some("ERR"));
    assert_eq!(code(o[17]), Some("EXECABORT"));
    assert_eq!(code(o[15]), None);
    assert!(o[15].response_end_ns < o[16].response_end_ns);
    assert_eq!(code(o[19]), None);
    assert!(o[19].response_end_ns < o[20].response_end_ns);
    assert_eq!(o[22].namespace.as_deref(), Some("5"));
    assert_eq!(o[21].namespace.as_deref(), Some("5"));
    assert_eq!(o[20].namespace, None);
}

/// Client-side SET/GET commands in a capture.
fn count_commands(records: &[(bool, Vec<u8>)], needle: &[u8]) -> usize {
    records
        .iter()
        .filter(|r| r.0)
        .map(|r| r.1.windows(needle.len()).filter(|w| w == &needle).count())
        .sum()
}

#[test]
fn redis_benchmark_pipelined() {
    for (file, needle, op) in [
        ("benchmark_p16.1.cap", &b"*3\r\n$3\r\nSET\r\n"[..], "SET"),
        ("benchmark_p16.2.cap", &b"*2\r\n$3\r\nGET\r\n"[..], "GET"),
    ] {
        let records = capture(file);
        let sent = count_commands(&records, needle);
        assert_eq!(sent, 112, "-n 100 -P 16 sends 7 full batches");
        for cap in [usize::MAX, 8192, 100] {
            let out = run(&records, cap);
            let o = ops(&out);
            if cap == 100 {
                // Framing of pipelined headers is lost in the cut.
                assert!(o.len() <= sent);
                continue;
            }
            assert_eq!(errors(&out), Vec::<&str>::new());
            assert_eq!(o.len(), sent, "{file}");
            assert!(o.iter().all(|o| o.operation.as_deref() == Some(op)));
            assert!(o.iter().all(|o| o.query_text.as_deref()
                == Some(if op == "SET" {
                    "SET key:__rand_int__ ?"
                } else {
                    "GET key:__rand_int__"
                })));
            // Each batch of 16 ends with the reply segment after it.
            assert!(o
                .iter()
                .all(|o| o.response_end_ns == o.request_start.enter_ns + 11));
        }
    }
    let out = run(&capture("benchmark_p16.0.cap"), usize::MAX);
    assert_eq!(texts(&ops(&out)), ["CONFIG GET ?", "CONFIG GET ?"]);
}

#[test]
fn redis_cli_pipe_mass_insert() {
    let records = capture("cli_pipe.cap");
    let out = run(&records, usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(o.len(), 201, "200 SET and the closing ECHO");
    assert_eq!(o[0].query_text.as_deref(), Some("SET pipe:0 ?"));
    assert_eq!(o[200].query_text.as_deref(), Some("ECHO ?"));
    // 8223 bytes in one write, cut at 8192: the tail covers the rest.
    let out = run(&records, 8192);
    assert_eq!(errors(&out), Vec::<&str>::new());
    assert_eq!(ops(&out).len(), 201);
    // Cut harder: the commands inside the hole are lost, the replies that
    // answered them are dropped, nothing is mismatched.
    let out = run(&records, 4096);
    assert_eq!(errors(&out), vec!["sync_lost"]);
    let o = ops(&out);
    assert!(o.len() < 201 && o.len() > 90, "{}", o.len());
    // The last one may be the command cut in the middle.
    for (i, op) in o[..o.len() - 1].iter().enumerate() {
        assert_eq!(
            op.query_text.as_deref(),
            Some(format!("SET pipe:{i} ?").as_str())
        );
    }
}

#[test]
fn pubsub_resp2_deliveries_are_not_replies() {
    let out = run(&capture("pubsub_resp2.cap"), usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        ["SUBSCRIBE ch1 ch2", "PING", "UNSUBSCRIBE", "GET k"]
    );
    assert_eq!(o[0].response_end_ns, 11);
    assert_eq!(o[1].response_end_ns, 41);
    assert_eq!(o[3].rows, None);
}

#[test]
fn pubsub_resp3_pushes_are_not_replies() {
    let out = run(&capture("pubsub_resp3.cap"), usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        ["HELLO 3", "SUBSCRIBE ch1", "GET k", "UNSUBSCRIBE ch1"]
    );
    assert_eq!(o[1].response_end_ns, 31);
    assert_eq!(o[2].response_end_ns, 61);
    assert_eq!(o[3].response_end_ns, 61);
}

#[test]
fn pipelined_multi_and_inline_commands() {
    let out = run(&capture("raw_multi_inline.cap"), usize::MAX);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(
        texts(&o),
        [
            "MULTI",
            "SET a ?",
            "HGETALL missing",
            "INCR a",
            "EXEC",
            "PING",
            "SELECT 3"
        ]
    );
    assert_eq!(o[2].rows, Some(0), "empty array from the EXEC reply");
    assert_eq!(o[4].rows, Some(3));
    assert_eq!(o[6].namespace.as_deref(), Some("3"));
}

/// The same bytes split at every possible boundary give the same result.
#[test]
fn any_split_gives_same_operations() {
    for name in [
        "cli_resp3.cap",
        "raw_multi_inline.cap",
        "pubsub_resp2.cap",
        "benchmark_p16.1.cap",
    ] {
        let records = capture(name);
        let whole = ops(&run(&records, usize::MAX))
            .into_iter()
            .map(|o| o.query_text.clone())
            .collect::<Vec<_>>();
        for size in [1, 2, 3, 7, 13] {
            let split: Vec<(bool, Vec<u8>)> = records
                .iter()
                .flat_map(|(d, b)| b.chunks(size).map(|c| (*d, c.to_vec())).collect::<Vec<_>>())
                .collect();
            let out = run(&split, usize::MAX);
            assert_eq!(errors(&out), Vec::<&str>::new(), "{name} {size}");
            let got = ops(&out)
                .into_iter()
                .map(|o| o.query_text.clone())
                .collect::<Vec<_>>();
            assert_eq!(got, whole, "{name} split {size}");
        }
    }
}

#[test]
fn every_truncation_is_safe() {
    for name in [
        "cli_simple.cap",
        "cli_resp3.cap",
        "benchmark_p16.1.cap",
        "cli_pipe.cap",
        "pubsub_resp2.cap",
        "pubsub_resp3.cap",
        "raw_multi_inline.cap",
    ] {
        let records = capture(name);
        let whole = ops(&run(&records, usize::MAX)).len();
        for cap in [0, 1, 5, 16, 64, 512, 4096] {
            let out = run(&records, cap);
            assert!(ops(&out).len() <= whole, "{name} cap {cap}");
        }
        // Connection joined mid-stream: drop the first records.
        for skip in 1..records.len().min(6) {
            let out = run(&records[skip..], usize::MAX);
            assert!(ops(&out).len() <= whole, "{name} skip {skip}");
        }
    }
}

#[test]
fn large_value_skipped_by_length() {
    let mut c = RedisConnection::new();
    let mut out = Vec::new();
    let value = vec![b'v'; 1 << 20];
    let mut cmd = b"*3\r\n$3\r\nSET\r\n$4\r\nbig1\r\n$1048576\r\n".to_vec();
    cmd.extend_from_slice(&value);
    cmd.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$4\r\nbig1\r\n");
    // Written in 64 KiB syscalls, each captured up to 8 KiB plus a tail.
    for (i, chunk) in cmd.chunks(65536).enumerate() {
        let seg = Segment {
            data: &chunk[..chunk.len().min(8192)],
            total_len: chunk.len(),
            tail: &chunk[chunk.len().saturating_sub(32)..],
            frames: &[],
            timing: Timing {
                enter_ns: i as u64,
                exit_ns: i as u64,
            },
        };
        c.feed(true, &seg, &mut out);
    }
    let mut reply = b"+OK\r\n$1048576\r\n".to_vec();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    let seg = Segment {
        data: &reply[..8192],
        total_len: reply.len(),
        tail: &reply[reply.len() - 32..],
        frames: &[],
        timing: Timing {
            enter_ns: 100,
            exit_ns: 101,
        },
    };
    c.feed(false, &seg, &mut out);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(texts(&o), ["SET big1 ?", "GET big1"]);
    assert_eq!(o[0].request_start.enter_ns, 0);
    assert_eq!(
        o[1].request_start.enter_ns, 16,
        "GET starts in the last syscall"
    );
    assert!(o.iter().all(|o| o.response_end_ns == 101));
}

fn seg(data: &[u8], t: u64) -> Segment<'_> {
    Segment {
        data,
        total_len: data.len(),
        tail: &[],
        frames: &[],
        timing: Timing {
            enter_ns: t,
            exit_ns: t,
        },
    }
}

#[test]
fn too_many_pending_commands_are_counted_and_replies_stay_aligned() {
    let mut c = RedisConnection::new();
    let mut out = Vec::new();
    let mut cmds = Vec::new();
    for i in 0..2000 {
        cmds.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$5\r\nk{i:04}\r\n").as_bytes());
    }
    c.feed(true, &seg(&cmds, 1), &mut out);
    c.feed(false, &seg(&b"$-1\r\n".repeat(2000), 2), &mut out);
    c.feed(true, &seg(b"*1\r\n$4\r\nPING\r\n", 3), &mut out);
    c.feed(false, &seg(b"+PONG\r\n", 4), &mut out);
    let errs = errors(&out);
    assert_eq!(errs.len(), 2000 - MAX_PENDING);
    assert!(errs.iter().all(|e| *e == "too_many_pending"));
    let o = ops(&out);
    assert_eq!(o.len(), MAX_PENDING + 1);
    assert_eq!(o[MAX_PENDING].query_text.as_deref(), Some("PING"));
    assert_eq!(o[MAX_PENDING].response_end_ns, 4);
}

#[test]
fn resp3_types_and_attributes() {
    let mut c = RedisConnection::new();
    let mut out = Vec::new();
    let all = b"*1\r\n$1\r\nA\r\n".repeat(10);
    c.feed(true, &seg(&all, 1), &mut out);
    c.feed(
        false,
        &seg(
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n:1\r\n(3492890328409238509324850943850943825024385\r\n#t\r\n_\r\n=15\r\ntxt:Some string\r\n!21\r\nSYNTAX invalid syntax\r\n>2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n,inf\r\n~1\r\n|1\r\n+a\r\n+b\r\n:5\r\n%0\r\n*-1\r\n",
            2,
        ),
        &mut out,
    );
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    assert_eq!(o.len(), 10);
    assert_eq!(
        o[5].error,
        Some(DbError {
            code: "SYNTAX".into(),
            message: "invalid syntax".into()
        })
    );
    assert_eq!(
        o[7].rows,
        Some(1),
        "attribute inside a set is not an element"
    );
    assert_eq!(o[8].rows, Some(0));
    assert_eq!(o[9].rows, None);
}

#[test]
fn render_redacts_values() {
    let cmd = |args: &[&str]| Value {
        kind: b'*',
        len: args.len() as i64,
        text: Vec::new(),
        children: args
            .iter()
            .map(|a| Value {
                kind: b'$',
                len: a.len() as i64,
                text: a.as_bytes().to_vec(),
                children: Vec::new(),
            })
            .collect(),
    };
    let t = |args: &[&str]| render(&cmd(args)).unwrap();
    assert_eq!(
        t(&["set", "user:1", "alice", "EX", "10"]),
        ("SET".into(), "SET user:1 ? ? ?".into())
    );
    assert_eq!(t(&["MSET", "a", "1", "b", "2"]).1, "MSET a ? b ?");
    assert_eq!(t(&["BLPOP", "q1", "q2", "0"]).1, "BLPOP q1 q2 ?");
    assert_eq!(t(&["AUTH", "user", "secret"]).1, "AUTH ? ?");
    assert_eq!(t(&["EVAL", "return 1", "0"]).1, "EVAL ? ?");
    assert_eq!(t(&["RENAME", "a", "b"]).1, "RENAME a b");
    assert_eq!(
        t(&["client", "setname", "x"]),
        ("CLIENT SETNAME".into(), "CLIENT SETNAME ?".into())
    );
    assert_eq!(t(&["OBJECT", "ENCODING", "k"]).1, "OBJECT ENCODING k");
    assert_eq!(t(&["CLIENT"]).1, "CLIENT");
    let many: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let mut args = vec!["DEL"];
    args.extend(many.iter().map(String::as_str));
    let text = t(&args).1;
    assert!(
        text.starts_with("DEL k0 k1 ") && text.ends_with(" ..."),
        "{text}"
    );
    assert!(render(&cmd(&[])).is_none());
}

#[test]
fn detect_redis_only() {
    for name in [
        "cli_simple.cap",
        "cli_resp3.cap",
        "benchmark_p16.1.cap",
        "pubsub_resp2.cap",
        "raw_multi_inline.cap",
    ] {
        let records = capture(name);
        let c = records.iter().find(|r| r.0).unwrap();
        let s = records.iter().find(|r| !r.0).unwrap();
        assert!(detect(true, &c.1), "{name}");
        assert!(detect(false, &s.1), "{name}");
    }
    assert!(detect(true, b"PING\r\n"));
    assert!(detect(true, b"SELECT 3\r\n"));
    assert!(detect(false, b"+OK\r\n"));
    assert!(detect(false, b"-NOAUTH Authentication required.\r\n"));
    for not in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x00\x00\x00\x54\x00\x03\x00\x00user\x00postgres\x00",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"*\x00\x00\x00\x0a8.0.36\x00",
        b"get user:1\r\n",
        b"set k 0 0 1\r\n",
        b"VALUE k 0 1\r\nx\r\nEND\r\n",
        b"STORED\r\n",
        b"",
        b"*",
        b"*2\r\n$3\r\n123\r\n",
    ] {
        assert!(!detect(true, not), "{not:?}");
        if !not.starts_with(b"*2") {
            assert!(!detect(false, not), "{not:?}");
        }
    }
}

/// The connection closes before the server's last reply (what a BLPOP the
/// client gave up on looks like): that command is reported unanswered and
/// ends at the close; a reply the close cut mid-way is incomplete.
#[test]
fn close_leaves_the_last_command_unanswered() {
    let recs = capture("cli_simple.cap");
    for (word, half, text, answer) in [
        (&b"EXISTS"[..], false, "EXISTS k", Answer::Missing),
        (b"LRANGE", true, "LRANGE bigl ? ?", Answer::Incomplete),
    ] {
        let out = run(&closed_after(&recs, |b| has(b, word), half), usize::MAX);
        assert_eq!(errors(&out), Vec::<&str>::new());
        let o = ops(&out);
        let (last, done) = o.split_last().unwrap();
        assert!(
            done.iter().all(|o| o.answer == Answer::Complete),
            "{done:?}"
        );
        let got = (
            last.query_text.as_deref(),
            last.answer,
            last.response_end_ns,
        );
        assert_eq!(got, (Some(text), answer, CLOSED_NS));
        assert_eq!((code(last), last.rows), (None, None));
    }
}
