//! Table tests on real captured traffic (testdata/postgres, recorded by
//! testdata/capture_postgres.py through a proxy between psql, pgbench,
//! psycopg 3 and a PostgreSQL 15 server), plus cut and split variants.

use super::*;
use crate::testkit::{capped, closed_after, db_errors as errors, db_ops as ops, has, CLOSED_NS};

/// One recv() of the recording proxy.
struct Record {
    from_client: bool,
    bytes: Vec<u8>,
}

fn capture(name: &str) -> Vec<Record> {
    crate::testkit::capture("postgres", name)
        .into_iter()
        .map(|(from_client, bytes)| Record { from_client, bytes })
        .collect()
}

/// Timing of record `i`: enter 100*i, exit 100*i + 1.
fn timing(i: usize) -> Timing {
    Timing {
        enter_ns: 100 * i as u64,
        exit_ns: 100 * i as u64 + 1,
    }
}

/// Feeds records as segments, each captured up to `cap` bytes (with the
/// last 32 bytes as tail when cut), like the kernel side does.
fn run_records(records: &[Record], cap: usize) -> Vec<DbEvent> {
    let mut conn = PostgresConnection::new();
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        conn.feed(r.from_client, &capped(&r.bytes, cap, timing(i)), &mut out);
    }
    conn.close(CLOSED_NS, &mut out);
    out
}

fn run(name: &str) -> Vec<DbEvent> {
    run_records(&capture(name), usize::MAX)
}

/// (text, rows, SQLSTATE) of each operation.
fn summary(events: &[DbEvent]) -> Vec<(String, Option<u64>, Option<String>)> {
    ops(events)
        .iter()
        .map(|o| {
            (
                o.query_text.clone().unwrap_or_default(),
                o.rows,
                o.error.as_ref().map(|e| e.code.clone()),
            )
        })
        .collect()
}

fn row(text: &str, rows: Option<u64>, code: Option<&str>) -> (String, Option<u64>, Option<String>) {
    (text.to_string(), rows, code.map(str::to_string))
}

const CAPTURES: &[&str] = &[
    "psql_simple.cap",
    "psql_copy.0.cap",
    "psql_copy.1.cap",
    "psql_big_result.cap",
    "pgbench_extended.0.cap",
    "pgbench_extended.1.cap",
    "pgbench_prepared.0.cap",
    "pgbench_prepared.1.cap",
    "psycopg_prepared.cap",
    "psycopg_pipeline.cap",
];

#[test]
fn psql_simple_queries_and_errors() {
    let events = run("psql_simple.cap");
    assert_eq!(errors(&events), Vec::<&str>::new());
    assert_eq!(
        summary(&events),
        vec![
            row("SELECT id, name FROM items ORDER BY id", Some(5), None),
            row("INSERT INTO items VALUES (6, 'six')", Some(1), None),
            row("UPDATE items SET name = 'x' WHERE id <= 3", Some(3), None),
            row("SELECT 1/0", None, Some("22012")),
            row("SELECT * FROM missing_table", None, Some("42P01")),
            // Two statements in one Query: one operation, the last count.
            row("SELECT 1; SELECT 2, 3", Some(1), None),
            row("DELETE FROM items WHERE id = 6", Some(1), None),
        ]
    );
    let all = ops(&events);
    assert!(all.iter().all(|o| o.namespace.as_deref() == Some("shop")));
    assert!(all.iter().all(|o| !o.prepared && o.operation.is_none()));
    assert!(all.iter().all(|o| o.system == DbSystem::Postgresql));
    let err = all[3].error.as_ref().unwrap();
    assert_eq!(err.message, "division by zero");
    assert_eq!(
        all[4].error.as_ref().unwrap().message,
        "relation \"missing_table\" does not exist"
    );
}

#[test]
fn timings_come_from_request_and_ready_segments() {
    let records = capture("psql_simple.cap");
    let events = run_records(&records, usize::MAX);
    let all = ops(&events);
    // Records: 0 SSLRequest, 1 'N', 2 startup, 3 auth+params, 4 first Query, 5 its answer.
    assert_eq!(all[0].request_start, timing(4));
    assert_eq!(all[0].response_end_ns, timing(5).exit_ns);
    // SELECT 1/0: the error and ReadyForQuery came in two reads; the op
    // ends with the second.
    let q = records
        .iter()
        .position(|r| r.bytes.starts_with(b"Q\0\0\0\x0fSELECT 1/0"))
        .unwrap();
    assert_eq!(all[3].request_start, timing(q));
    assert_eq!(all[3].response_end_ns, timing(q + 2).exit_ns);
}

#[test]
fn psql_copy_out_and_in() {
    assert_eq!(
        summary(&run("psql_copy.0.cap")),
        vec![
            row("COPY items TO STDOUT", Some(5), None),
            row("COPY items (id, name) FROM STDIN", Some(2), None),
        ]
    );
    assert_eq!(
        summary(&run("psql_copy.1.cap")),
        vec![row("DELETE FROM items WHERE id >= 100", Some(2), None)]
    );
}

#[test]
fn big_result_spanning_many_reads() {
    let events = run("psql_big_result.cap");
    assert_eq!(errors(&events), Vec::<&str>::new());
    assert_eq!(
        summary(&events),
        vec![row(
            "SELECT g, repeat('x', 50) FROM generate_series(1, 3000) g",
            Some(3000),
            None
        )]
    );
}

#[test]
fn big_result_with_cut_captures_resyncs_on_the_tail() {
    for cap in [4096, 1000, 100, 7] {
        let events = run_records(&capture("psql_big_result.cap"), cap);
        let all = ops(&events);
        assert_eq!(all.len(), 1, "cap {cap}: {events:?}");
        // CommandComplete and ReadyForQuery both fit in the 32-byte tail.
        assert_eq!(all[0].rows, Some(3000), "cap {cap}");
        assert!(
            errors(&events).iter().all(|e| *e == "sync_lost"),
            "cap {cap}"
        );
        if cap < 8192 {
            assert!(!errors(&events).is_empty(), "cap {cap}");
        }
    }
}

#[test]
fn pgbench_extended_unnamed_statements() {
    let events = run("pgbench_extended.1.cap");
    assert_eq!(errors(&events), Vec::<&str>::new());
    let all = ops(&events);
    assert_eq!(all.len(), 21); // 3 transactions of 7 statements
    assert!(all.iter().all(|o| o.prepared && o.error.is_none()));
    assert!(all.iter().all(|o| o.namespace.as_deref() == Some("shop")));
    let s = summary(&events);
    assert_eq!(s[0], row("BEGIN;", None, None));
    assert!(s[1]
        .0
        .starts_with("UPDATE pgbench_accounts SET abalance = abalance + $1"));
    assert_eq!(s[1].1, Some(1));
    assert!(s[2]
        .0
        .starts_with("SELECT abalance FROM pgbench_accounts WHERE aid = $1"));
    assert_eq!(s[2].1, Some(1));
    assert!(s[5].0.starts_with("INSERT INTO pgbench_history"));
    assert_eq!(s[5].1, Some(1));
    assert_eq!(s[6], row("END;", None, None));
    assert_eq!(s[7], s[0]);
    // The setup connection: two simple queries.
    assert_eq!(ops(&run("pgbench_extended.0.cap")).len(), 2);
}

#[test]
fn pgbench_named_statements_are_remembered() {
    let events = run("pgbench_prepared.1.cap");
    assert_eq!(errors(&events), Vec::<&str>::new());
    let s = summary(&events);
    assert_eq!(s.len(), 21);
    // Statements parsed once in the first transaction, executed by name after.
    for i in 0..7 {
        assert_eq!(s[i], s[i + 7], "{i}");
        assert_eq!(s[i], s[i + 14], "{i}");
    }
    assert_eq!(s[0].0, "BEGIN;");
    assert!(s[3].0.starts_with("UPDATE pgbench_tellers"));
    assert_eq!(s[3].1, Some(1));
    let all = ops(&events);
    assert!(all.iter().all(|o| o.prepared));
    // An Execute starts with its Bind (same write here) and ends with CommandComplete.
    let records = capture("pgbench_prepared.1.cap");
    let bind = records
        .iter()
        .position(|r| r.bytes.starts_with(b"B"))
        .unwrap();
    assert_eq!(all[0].request_start, timing(bind));
    assert_eq!(all[0].response_end_ns, timing(bind + 1).exit_ns);
}

#[test]
fn psycopg_prepared_empty_query_and_copy() {
    let events = run("psycopg_prepared.cap");
    assert_eq!(errors(&events), Vec::<&str>::new());
    let sel = "SELECT name FROM items WHERE id = $1";
    assert_eq!(
        summary(&events),
        vec![
            row(sel, Some(1), None),
            row(sel, Some(1), None),
            row(sel, Some(1), None),
            row("UPDATE items SET name = $1 WHERE id = $2", Some(1), None),
            row("SELECT $1::int / 0", None, Some("22012")),
            row("", None, None),
            row("COPY items (id, name) FROM STDIN", Some(2), None),
            row(
                "COPY (SELECT id FROM items WHERE id >= 200) TO STDOUT",
                Some(2),
                None
            ),
            row("DELETE FROM items WHERE id >= 200", Some(2), None),
        ]
    );
    let prepared: Vec<bool> = ops(&events).iter().map(|o| o.prepared).collect();
    assert_eq!(
        prepared,
        [true, true, true, true, true, false, false, false, false]
    );
}

#[test]
fn psycopg_pipeline_and_error_skips_to_sync() {
    let events = run("psycopg_pipeline.cap");
    assert_eq!(errors(&events), Vec::<&str>::new());
    assert_eq!(
        summary(&events),
        vec![
            row("SELECT id FROM items WHERE id = $1", Some(1), None),
            row("INSERT INTO items VALUES ($1, $2)", Some(1), None),
            row("SELECT count(*) FROM items", Some(1), None),
            row("DELETE FROM items WHERE id = $1", Some(1), None),
            row("SELECT 1", Some(1), None),
            // The failing statement; SELECT 2 and SELECT 3 were skipped by
            // the server and are not reported at all.
            row(
                "SELECT * FROM missing_table WHERE id = $1",
                None,
                Some("42P01")
            ),
            row("SELECT 'after'", Some(1), None),
        ]
    );
    // Pipelined: the three first statements were written together, before
    // any answer, and answered by one read.
    let all = ops(&events);
    assert!(all[0].request_start.enter_ns < all[1].request_start.enter_ns);
    assert_eq!(all[1].request_start, all[2].request_start);
    assert_eq!(all[0].response_end_ns, all[2].response_end_ns);
}

#[test]
fn byte_by_byte_segments_give_the_same_operations() {
    for name in CAPTURES {
        let records = capture(name);
        let whole = summary(&run_records(&records, usize::MAX));
        let mut split = Vec::new();
        for r in &records {
            for b in r.bytes.chunks(1) {
                split.push(Record {
                    from_client: r.from_client,
                    bytes: b.to_vec(),
                });
            }
        }
        let events = run_records(&split, usize::MAX);
        assert_eq!(errors(&events), Vec::<&str>::new(), "{name}");
        assert_eq!(summary(&events), whole, "{name}");
    }
}

/// Whatever the capture limit, what is reported is right: every operation
/// matches, in order, one from the full capture (rows may be unknown).
#[test]
fn cut_captures_never_mismatch_answers() {
    for name in CAPTURES {
        let records = capture(name);
        let whole = summary(&run_records(&records, usize::MAX));
        for cap in [0, 1, 4, 5, 6, 9, 16, 33, 64, 100, 200, 500, 4096] {
            let events = run_records(&records, cap);
            let mut rest = whole.iter();
            for (text, rows, code) in summary(&events) {
                // A cut ErrorResponse may have lost its SQLSTATE.
                let found = rest.by_ref().any(|(t, r, c)| {
                    t.starts_with(&text)
                        && (rows.is_none() || rows == *r)
                        && (code == *c || (code.as_deref() == Some("") && c.is_some()))
                });
                assert!(
                    found,
                    "{name} cap {cap}: {text:?} {rows:?} {code:?} not in {whole:?}"
                );
            }
            for e in errors(&events) {
                assert!(ERROR_KINDS.contains(&e), "{e}");
            }
        }
    }
}

#[test]
fn cut_query_text_keeps_its_prefix() {
    let events = run_records(&capture("psql_simple.cap"), 20);
    let s = summary(&events);
    // "Q" + length + 15 bytes of text.
    assert_eq!(s[0], row("SELECT id, name", Some(5), None));
    assert_eq!(s.len(), 7);
}

#[test]
fn joined_mid_stream() {
    let records = capture("pgbench_prepared.1.cap");
    // Skip the startup and the first transaction (which parsed the statements).
    let first_bind = records
        .iter()
        .position(|r| r.bytes.starts_with(b"B"))
        .unwrap();
    let second_begin = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.bytes[0] == b'B' && r.bytes[5..].starts_with(b"\0P_0\0"))
        .nth(1)
        .unwrap()
        .0;
    assert!(second_begin > first_bind);
    let events = run_records(&records[second_begin..], usize::MAX);
    let all = ops(&events);
    assert_eq!(all.len(), 7 * 2);
    // Prepared before we joined: no text, but still an operation with rows.
    assert!(all
        .iter()
        .all(|o| o.query_text.is_none() && o.namespace.is_none()));
    assert_eq!(all[1].rows, Some(1));
    // Joined in the middle of a server read: the server side waits for a
    // believable run of messages.
    let mut events = Vec::new();
    let mut conn = PostgresConnection::new();
    let s = seg(b"\0\0\x05item4C\0\0\0\x0dSELECT 5\0Z\0\0\0\x05I", 1);
    conn.feed(false, &s, &mut events);
    conn.feed(true, &seg(b"Q\0\0\0\x0dSELECT 1\0", 2), &mut events);
    conn.feed(
        false,
        &seg(b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I", 3),
        &mut events,
    );
    assert_eq!(summary(&events), vec![row("SELECT 1", Some(1), None)]);
}

fn seg(data: &[u8], t: u64) -> Segment<'_> {
    Segment {
        data,
        total_len: data.len(),
        tail: &[],
        frames: &[],
        timing: Timing {
            enter_ns: t,
            exit_ns: t + 1,
        },
    }
}

#[test]
fn ssl_accepted_goes_opaque() {
    let records = capture("psql_simple.cap");
    let mut conn = PostgresConnection::new();
    let mut out = Vec::new();
    conn.feed(true, &seg(&records[0].bytes, 1), &mut out);
    assert!(!conn.is_opaque());
    conn.feed(false, &seg(b"S", 2), &mut out);
    assert!(conn.is_opaque());
    // A TLS ClientHello and everything after is ignored.
    conn.feed(
        true,
        &seg(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3),
        &mut out,
    );
    conn.feed(false, &seg(&records[5].bytes, 4), &mut out);
    conn.close(CLOSED_NS, &mut out);
    assert!(out.is_empty());
}

#[test]
fn gss_refused_then_plaintext_startup() {
    let mut conn = PostgresConnection::new();
    let mut out = Vec::new();
    conn.feed(true, &seg(b"\0\0\0\x08\x04\xd2\x16\x30", 1), &mut out);
    conn.feed(false, &seg(b"N", 2), &mut out);
    conn.feed(true, &seg(&startup(b"user\0alice\0\0"), 3), &mut out);
    conn.feed(false, &seg(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I", 4), &mut out);
    conn.feed(true, &seg(&msg(b'Q', b"BEGIN\0"), 5), &mut out);
    conn.feed(false, &seg(b"C\0\0\0\x0aBEGIN\0Z\0\0\0\x05T", 6), &mut out);
    let all = ops(&out);
    assert_eq!(all.len(), 1);
    // No database parameter: the user name is the database.
    assert_eq!(all[0].namespace.as_deref(), Some("alice"));
    assert_eq!(all[0].rows, None);
    assert_eq!(all[0].request_start.enter_ns, 5);
    assert_eq!(all[0].response_end_ns, 7);
}

#[test]
fn cancel_request_is_not_followed() {
    let mut conn = PostgresConnection::new();
    let mut out = Vec::new();
    conn.feed(
        true,
        &seg(b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x12\x34\0\0\x56\x78", 1),
        &mut out,
    );
    assert!(conn.is_opaque());
}

/// Builds a StartupMessage for protocol 3.0.
fn startup(params: &[u8]) -> Vec<u8> {
    let mut m = (params.len() as u32 + 8).to_be_bytes().to_vec();
    m.extend_from_slice(&message::PROTOCOL_3.to_be_bytes());
    m.extend_from_slice(params);
    m
}

/// Builds one tagged message.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn started() -> (PostgresConnection, Vec<DbEvent>) {
    let mut conn = PostgresConnection::new();
    let mut out = Vec::new();
    let params = b"user\0bob\0database\0db1\0\0";
    conn.feed(true, &seg(&startup(params), 1), &mut out);
    conn.feed(false, &seg(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I", 2), &mut out);
    (conn, out)
}

#[test]
fn statement_cache_is_bounded_and_close_forgets() {
    let (mut conn, mut out) = started();
    for i in 0..300 {
        let name = format!("s{i}\0SELECT {i}\0\0\0");
        conn.feed(true, &seg(&msg(b'P', name.as_bytes()), 3), &mut out);
    }
    assert!(conn.st.statements.len() <= MAX_STATEMENTS);
    // s0 was evicted, s299 is known; Close forgets s298.
    let mut w = msg(b'C', b"Ss298\0");
    w.extend(msg(b'B', b"\0s0\0\0\0\0\0\0\0"));
    w.extend(msg(b'E', b"\0\0\0\0\0"));
    w.extend(msg(b'B', b"\0s299\0\0\0\0\0\0\0"));
    w.extend(msg(b'E', b"\0\0\0\0\0"));
    w.extend(msg(b'B', b"\0s298\0\0\0\0\0\0\0"));
    w.extend(msg(b'E', b"\0\0\0\0\0"));
    w.extend(msg(b'S', b""));
    conn.feed(true, &seg(&w, 4), &mut out);
    let mut r = Vec::new();
    for _ in 0..300 {
        r.extend(msg(b'1', b""));
    }
    r.extend(msg(b'3', b""));
    for _ in 0..3 {
        r.extend(msg(b'2', b""));
        r.extend(msg(b'C', b"SELECT 1\0"));
    }
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 5), &mut out);
    let texts: Vec<Option<String>> = ops(&out).iter().map(|o| o.query_text.clone()).collect();
    assert_eq!(texts, vec![None, Some("SELECT 299".into()), None]);
    assert_eq!(errors(&out), Vec::<&str>::new());
    assert_eq!(conn.pending(), 0);
}

#[test]
fn statement_text_held_is_bounded() {
    let (mut conn, mut out) = started();
    let long = "x".repeat(30_000);
    for i in 0..100 {
        let body = format!("s{i}\0SELECT '{long}'\0\0\0");
        conn.feed(true, &seg(&msg(b'P', body.as_bytes()), 3), &mut out);
    }
    assert!(conn.st.statement_bytes <= MAX_STATEMENT_BYTES);
    let held: usize = conn.st.statements.iter().map(|(_, q)| q.len()).sum();
    assert_eq!(held, conn.st.statement_bytes);
    assert!(conn.st.statements.len() > 30);
}

#[test]
fn lost_ready_for_query_drops_rather_than_mismatches() {
    let (mut conn, mut out) = started();
    conn.feed(true, &seg(&msg(b'Q', b"SELECT 1\0"), 3), &mut out);
    // The answer's read was captured only up to the middle of ReadyForQuery,
    // and its tail was not kept.
    let mut r = msg(b'C', b"SELECT 1\0");
    r.extend(msg(b'Z', b"I"));
    let cut = Segment {
        data: &r[..r.len() - 3],
        total_len: r.len(),
        tail: &[],
        frames: &[],
        timing: Timing::default(),
    };
    conn.feed(false, &cut, &mut out);
    conn.feed(true, &seg(&msg(b'Q', b"UPDATE t SET a = 1\0"), 5), &mut out);
    let mut r = msg(b'C', b"UPDATE 7\0");
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 6), &mut out);
    // The UPDATE's answer must not be taken for the SELECT's.
    assert!(summary(&out)
        .iter()
        .all(|(t, rows, _)| t != "SELECT 1" || *rows != Some(7)));
    assert_eq!(errors(&out), vec!["sync_lost", "responses_lost"]);
    // In step again afterwards.
    conn.feed(true, &seg(&msg(b'Q', b"SELECT 2\0"), 7), &mut out);
    let mut r = msg(b'C', b"SELECT 4\0");
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 8), &mut out);
    assert_eq!(summary(&out), vec![row("SELECT 2", Some(4), None)]);
}

#[test]
fn async_messages_and_copy_in_extended_query() {
    let (mut conn, mut out) = started();
    let mut w = msg(b'P', b"\0COPY t FROM STDIN\0\0\0");
    w.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    w.extend(msg(b'E', b"\0\0\0\0\0"));
    w.extend(msg(b'S', b""));
    conn.feed(true, &seg(&w, 3), &mut out);
    let mut r = msg(b'1', b"");
    r.extend(msg(b'2', b""));
    r.extend(msg(b'G', b"\0\0\x01\0\0"));
    conn.feed(false, &seg(&r, 4), &mut out);
    // Rows look like messages of their own but are CopyData payloads.
    let mut w = msg(b'd', b"C\0\0\0\x0dSELECT 9\0\n");
    w.extend(msg(b'd', b"Z\0\0\0\x05I\n"));
    w.extend(msg(b'f', b"client gave up\0"));
    conn.feed(true, &seg(&w, 5), &mut out);
    let mut r = msg(b'A', b"\0\0\0\x01chan\0payload\0");
    r.extend(msg(b'E', b"SERROR\0C57014\0MCOPY from stdin failed\0\0"));
    r.extend(msg(b'N', b"SWARNING\0C01000\0Mnote\0\0"));
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 6), &mut out);
    assert_eq!(
        summary(&out),
        vec![row("COPY t FROM STDIN", None, Some("57014"))]
    );
    assert_eq!(errors(&out), Vec::<&str>::new());
    assert_eq!(conn.pending(), 0);
}

#[test]
fn named_portals_and_portal_suspended() {
    let (mut conn, mut out) = started();
    let mut w = msg(b'P', b"\0SELECT g FROM generate_series(1, 10) g\0\0\0");
    w.extend(msg(b'B', b"cur\0\0\0\0\0\0\0\0"));
    w.extend(msg(b'E', b"cur\0\0\0\0\x03"));
    w.extend(msg(b'E', b"cur\0\0\0\0\0"));
    w.extend(msg(b'C', b"Pcur\0"));
    w.extend(msg(b'S', b""));
    conn.feed(true, &seg(&w, 3), &mut out);
    let mut r = msg(b'1', b"");
    r.extend(msg(b'2', b""));
    for _ in 0..3 {
        r.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
    }
    r.extend(msg(b's', b""));
    for _ in 0..7 {
        r.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
    }
    r.extend(msg(b'C', b"SELECT 7\0"));
    r.extend(msg(b'3', b""));
    // A notice and a parameter change may come at any time.
    r.extend(msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0"));
    r.extend(msg(b'S', b"TimeZone\0UTC\0"));
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 4), &mut out);
    let s = summary(&out);
    let q = "SELECT g FROM generate_series(1, 10) g";
    assert_eq!(s, vec![row(q, Some(3), None), row(q, Some(7), None)]);
    assert_eq!(conn.pending(), 0);
    assert_eq!(ops(&out)[0].namespace.as_deref(), Some("db1"));
}

#[test]
fn parse_error_goes_to_its_execute_and_skips_the_rest() {
    let (mut conn, mut out) = started();
    let mut w = Vec::new();
    for q in ["SELEC 1", "SELECT 2"] {
        w.extend(msg(b'P', format!("\0{q}\0\0\0").as_bytes()));
        w.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        w.extend(msg(b'E', b"\0\0\0\0\0"));
    }
    w.extend(msg(b'S', b""));
    w.extend(msg(b'Q', b"SELECT 3\0"));
    conn.feed(true, &seg(&w, 3), &mut out);
    let mut r = msg(
        b'E',
        b"SERROR\0C42601\0Msyntax error at or near \"SELEC\"\0\0",
    );
    r.extend(msg(b'Z', b"I"));
    r.extend(msg(b'C', b"SELECT 1\0"));
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 4), &mut out);
    assert_eq!(
        summary(&out),
        vec![
            row("SELEC 1", None, Some("42601")),
            row("SELECT 3", Some(1), None)
        ]
    );
    assert_eq!(conn.pending(), 0);
}

#[test]
fn long_parse_cut_by_capture_recovers_execute_from_tail() {
    let (mut conn, mut out) = started();
    let long = format!("INSERT INTO t VALUES {}", "(1, 'x'), ".repeat(2000));
    let mut w = msg(b'P', format!("\0{long}\0\0\0").as_bytes());
    w.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    w.extend(msg(b'D', b"P\0"));
    w.extend(msg(b'E', b"\0\0\0\0\0"));
    w.extend(msg(b'S', b""));
    let s = Segment {
        data: &w[..8192],
        total_len: w.len(),
        tail: &w[w.len() - 32..],
        frames: &[],
        timing: Timing {
            enter_ns: 3,
            exit_ns: 4,
        },
    };
    conn.feed(true, &s, &mut out);
    let mut r = msg(b'1', b"");
    r.extend(msg(b'2', b""));
    r.extend(msg(b'n', b""));
    r.extend(msg(b'C', b"INSERT 0 2000\0"));
    r.extend(msg(b'Z', b"I"));
    conn.feed(false, &seg(&r, 5), &mut out);
    let all = ops(&out);
    assert_eq!(errors(&out), vec!["sync_lost"]);
    assert_eq!(all.len(), 1);
    assert!(long.starts_with(all[0].query_text.as_deref().unwrap()));
    assert!(all[0].query_text.as_ref().unwrap().len() > 8000);
    assert_eq!(all[0].rows, Some(2000));
    assert_eq!(all[0].request_start.enter_ns, 3);
    assert_eq!(all[0].response_end_ns, 6);
}

#[test]
fn pending_queue_is_bounded() {
    let (mut conn, mut out) = started();
    let q = msg(b'Q', b"SELECT 1\0");
    for i in 0..(MAX_PENDING + 10) {
        conn.feed(true, &seg(&q, i as u64), &mut out);
    }
    assert_eq!(conn.pending(), MAX_PENDING);
    assert_eq!(errors(&out).len(), 10);
}

#[test]
fn detect_real_first_bytes() {
    for name in CAPTURES {
        let records = capture(name);
        assert!(detect(true, &records[0].bytes), "{name} client");
        let server = records.iter().find(|r| !r.from_client).unwrap();
        assert!(detect(false, &server.bytes), "{name} server");
        // Joined mid-stream: any client write that starts with Q, P or B.
        for r in records.iter().filter(|r| r.from_client) {
            if matches!(r.bytes[0], b'Q' | b'P' | b'B') {
                assert!(detect(true, &r.bytes), "{name}: {:?}", &r.bytes[..10]);
                // A capture cut short still looks right.
                assert!(
                    detect(true, &r.bytes[..r.bytes.len().min(12)]),
                    "{name} cut"
                );
            }
        }
    }
}

#[test]
fn detect_rejects_other_protocols() {
    let others: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api HTTP/1.1\r\n",
        b"PUT /x HTTP/1.1\r\n",
        b"PATCH /x HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"+OK\r\n",
        b"QUIT\r\n",
        b"PING\r\n",
        // MySQL COM_QUERY "SELECT 1", COM_STMT_PREPARE, handshake response.
        b"\x09\x00\x00\x00\x03SELECT 1",
        b"\x51\x00\x00\x00\x16SELECT * FROM t WHERE id = ?",
        b"\x50\x00\x00\x00\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00",
        b"\x4a\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00",
        // TLS ClientHello and ServerHello.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03",
        b"get foo\r\n",
        b"",
        b"Q",
    ];
    for b in others {
        assert!(!detect(true, b), "client {:?}", String::from_utf8_lossy(b));
        assert!(!detect(false, b), "server {:?}", String::from_utf8_lossy(b));
    }
}

#[test]
fn tags_and_rows() {
    assert_eq!(message::tag_rows(b"SELECT 5\0"), Some(5));
    assert_eq!(message::tag_rows(b"INSERT 0 1\0"), Some(1));
    assert_eq!(message::tag_rows(b"UPDATE 3\0"), Some(3));
    assert_eq!(message::tag_rows(b"COPY 2\0"), Some(2));
    assert_eq!(message::tag_rows(b"MERGE 4"), Some(4));
    assert_eq!(message::tag_rows(b"BEGIN\0"), None);
    assert_eq!(message::tag_rows(b"CREATE TABLE\0"), None);
    assert_eq!(message::tag_rows(b"SELECT\0"), None);
    assert_eq!(message::tag_rows(b"SELECT 99999999999999999999999\0"), None);
    assert_eq!(message::tag_rows(b""), None);
}

/// The connection closes before the last query's answer: the query is
/// reported unanswered, ending at the close; one whose rows had started
/// to come is incomplete; an Execute the same.
#[test]
fn close_leaves_the_last_query_unanswered() {
    let cases = [
        ("psql_simple.cap", &b"DELETE"[..], false, Answer::Missing),
        ("psql_big_result.cap", b"SELECT", true, Answer::Incomplete),
        ("pgbench_extended.1.cap", b"INSERT", false, Answer::Missing),
    ];
    for (name, word, half, answer) in cases {
        let recs: Vec<_> = capture(name)
            .into_iter()
            .map(|r| (r.from_client, r.bytes))
            .collect();
        let cut: Vec<_> = closed_after(&recs, |b| has(b, word), half)
            .into_iter()
            .map(|(from_client, bytes)| Record { from_client, bytes })
            .collect();
        let out = run_records(&cut, usize::MAX);
        let o = ops(&out);
        let (last, done) = o.split_last().unwrap();
        assert!(done.iter().all(|o| o.answer == Answer::Complete), "{name}");
        let text = last.query_text.as_deref().unwrap_or_default();
        assert!(has(text.as_bytes(), word), "{name}: {text}");
        let got = (
            last.answer,
            last.response_end_ns,
            last.rows,
            last.error.is_none(),
        );
        assert_eq!(got, (answer, CLOSED_NS, None, true), "{name}");
    }
}

/// psql's session as it goes when the server accepts TLS: 'S' answers the
/// SSLRequest, TLS records follow (never parsed), and once the TLS
/// library's plaintext comes, the session inside reads as in the clear.
#[test]
fn session_inside_tls_reads_as_in_the_clear() {
    let recs = capture("psql_simple.cap");
    assert_eq!(recs[1].bytes, b"N"); // the recording refused TLS
    let mut conn = PostgresConnection::new();
    let mut out = Vec::new();
    conn.feed(
        true,
        &capped(&recs[0].bytes, usize::MAX, timing(0)),
        &mut out,
    );
    assert!(!conn.awaits_tls());
    conn.feed(false, &capped(b"S", usize::MAX, timing(1)), &mut out);
    assert!(conn.awaits_tls());
    let hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00";
    conn.feed(true, &capped(hello, usize::MAX, timing(2)), &mut out);
    conn.tls_plaintext();
    assert!(!conn.awaits_tls());
    for (i, r) in recs.iter().enumerate().skip(2) {
        conn.feed(
            r.from_client,
            &capped(&r.bytes, usize::MAX, timing(i)),
            &mut out,
        );
    }
    conn.close(CLOSED_NS, &mut out);
    assert_eq!(errors(&out), Vec::<&str>::new());
    assert_eq!(summary(&out), summary(&run("psql_simple.cap")));
    assert!(!out.is_empty());
}
