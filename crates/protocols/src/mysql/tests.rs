//! Table tests on real captured bytes (testdata/mysql, recorded by
//! testdata/capture_mysql.py from the mysql CLI, pymysql and
//! mysql-connector-python against MariaDB 10.11).

use super::*;
use crate::testkit::{
    at, capped, closed_after, db_errors as errors, db_ops as ops, has, CLOSED_NS,
};

/// One recv() of the recording proxy: (from_client, bytes).
fn records(name: &str) -> Vec<(bool, Vec<u8>)> {
    crate::testkit::capture("mysql", name)
}

/// Feeds every record as one syscall, keeping at most `cap` bytes of each
/// (the rest lost, as a capture limit does). Timing: record i enters at
/// 10*i and exits at 10*i+1.
fn run_capped(name: &str, cap: usize) -> (MysqlConnection, Vec<DbEvent>) {
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    for (i, (from_client, bytes)) in records(name).iter().enumerate() {
        conn.feed(
            *from_client,
            &capped(bytes, cap, at(10 * i as u64)),
            &mut out,
        );
    }
    conn.close(CLOSED_NS, &mut out);
    (conn, out)
}

fn run(name: &str) -> (MysqlConnection, Vec<DbEvent>) {
    run_capped(name, usize::MAX)
}

fn text(op: &DbOperation) -> &str {
    op.query_text.as_deref().unwrap_or("<none>")
}

fn code(op: &DbOperation) -> Option<&str> {
    op.error.as_ref().map(|e| e.code.as_str())
}

fn system_all(events: &[DbEvent], system: DbSystem) -> bool {
    ops(events).iter().all(|o| o.system == system)
}

#[test]
fn cli_text_queries_errors_and_init_db() {
    let (conn, ev) = run("cli_simple.cap");
    assert!(errors(&ev).is_empty(), "{:?}", errors(&ev));
    assert_eq!(conn.system(), DbSystem::Mariadb);
    assert_eq!(conn.pending(), 0);
    let ops = ops(&ev);
    let got: Vec<_> = ops
        .iter()
        .map(|o| (text(o), code(o), o.rows, o.namespace.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "SELECT id, name FROM items ORDER BY id",
                None,
                Some(5),
                Some("shop")
            ),
            (
                "INSERT INTO items VALUES (6, 'six')",
                None,
                Some(1),
                Some("shop")
            ),
            (
                "UPDATE items SET name = 'x' WHERE id <= 3",
                None,
                Some(3),
                Some("shop")
            ),
            (
                "SELECT * FROM missing_table",
                Some("1146"),
                None,
                Some("shop")
            ),
            ("SELEC 1", Some("1064"), None, Some("shop")),
            // Two result sets of one row each, then the procedure's OK.
            ("CALL two()", None, Some(2), Some("shop")),
            ("SELECT DATABASE()", None, Some(1), Some("shop")),
            // `USE other` went as COM_INIT_DB: no operation, new namespace.
            ("SELECT DATABASE()", None, Some(1), Some("other")),
            (
                "DELETE FROM shop.items WHERE id = 6",
                None,
                Some(1),
                Some("other")
            ),
        ]
    );
    assert!(system_all(&ev, DbSystem::Mariadb));
    assert!(ops.iter().all(|o| !o.prepared && o.operation.is_none()));
    let missing = ops[3].error.as_ref().unwrap();
    assert_eq!(missing.message, "Table 'shop.missing_table' doesn't exist");
    assert!(ops[4]
        .error
        .as_ref()
        .unwrap()
        .message
        .starts_with("You have an error in your SQL"));
    // The command went in record 3, its answer came in record 4.
    assert_eq!(
        ops[0].request_start,
        Timing {
            enter_ns: 30,
            exit_ns: 31
        }
    );
    assert_eq!(ops[0].response_end_ns, 41);
}

#[test]
fn pymysql_executemany_error_local_infile() {
    let (conn, ev) = run("pymysql_simple.cap");
    assert!(errors(&ev).is_empty(), "{:?}", errors(&ev));
    assert_eq!(conn.pending(), 0);
    let ops = ops(&ev);
    assert_eq!(ops.len(), 6);
    assert_eq!(text(ops[0]), "SET NAMES utf8mb4");
    assert_eq!(ops[1].rows, Some(1));
    assert_eq!(
        text(ops[2]),
        "INSERT INTO items VALUES (10, 'a'),(11, 'b'),(12, 'c')"
    );
    assert_eq!(ops[2].rows, Some(3));
    assert_eq!(code(ops[3]), Some("1062"));
    assert_eq!(
        ops[3].error.as_ref().unwrap().message,
        "Duplicate entry '10' for key 'PRIMARY'"
    );
    // LOCAL INFILE: request, file contents from the client, then the OK.
    assert!(text(ops[4]).starts_with("LOAD DATA LOCAL INFILE"));
    assert_eq!(ops[4].rows, Some(2));
    assert_eq!(ops[4].response_end_ns, 151);
    assert_eq!(text(ops[5]), "DELETE FROM items WHERE id >= 10");
    assert_eq!(ops[5].rows, Some(5));
    assert!(ops.iter().all(|o| o.namespace.as_deref() == Some("shop")));
    assert!(system_all(&ev, DbSystem::Mariadb));
}

#[test]
fn connector_prepared_statements() {
    let (conn, ev) = run("connector_prepared.cap");
    assert!(errors(&ev).is_empty(), "{:?}", errors(&ev));
    assert_eq!(conn.pending(), 0);
    let ops = ops(&ev);
    let got: Vec<_> = ops
        .iter()
        .map(|o| (text(o), o.prepared, code(o), o.rows))
        .collect();
    let select = "SELECT id, name FROM items WHERE id <= ?";
    assert_eq!(
        got,
        [
            (
                "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
                false,
                None,
                Some(0)
            ),
            ("SET @@session.autocommit = ON", false, None, Some(0)),
            (select, true, None, Some(1)),
            (select, true, None, Some(2)),
            (select, true, None, Some(3)),
            (
                "UPDATE items SET name = ? WHERE id = ?",
                true,
                None,
                Some(1)
            ),
            ("INSERT INTO items VALUES (?, ?)", true, Some("1062"), None),
            (
                "SELECT seq, repeat('y', 40) FROM seq_1_to_2000 WHERE seq > ?",
                true,
                None,
                Some(2000)
            ),
        ]
    );
    // The 2000 binary rows span three recv()s; the answer ends in the last.
    assert_eq!(ops[7].response_end_ns, 441);
    // Closed statements are forgotten.
    assert!(conn.st.statements.is_empty());
}

#[test]
fn auth_switch_then_queries() {
    let (_, ev) = run("connector_auth_switch.cap");
    assert!(errors(&ev).is_empty());
    let ops = ops(&ev);
    assert_eq!(ops.len(), 3);
    assert_eq!(text(ops[2]), "SELECT COUNT(*) FROM items");
    assert_eq!(ops[2].rows, Some(1));
    assert_eq!(ops[2].namespace.as_deref(), Some("shop"));
}

#[test]
fn big_result_across_recvs() {
    let (_, ev) = run("cli_big_result.cap");
    assert!(errors(&ev).is_empty());
    let ops = ops(&ev);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].rows, Some(3000));
    assert_eq!(ops[0].response_end_ns, 91);
}

/// Every capture cut to 8 KiB per syscall, as the kernel side does.
#[test]
fn capture_limit_keeps_operations() {
    // Small answers: nothing is lost.
    for name in [
        "cli_simple.cap",
        "pymysql_simple.cap",
        "connector_auth_switch.cap",
    ] {
        assert_eq!(ops(&run_capped(name, 8192).1), ops(&run(name).1), "{name}");
    }
    // 16-64 KiB recv()s of rows: sync is lost in the first, the last one's
    // tail shows the final EOF: the answer ends there, rows unknown.
    let (_, ev) = run_capped("cli_big_result.cap", 8192);
    assert_eq!(errors(&ev), ["sync_lost"]);
    let o = ops(&ev);
    assert_eq!(o.len(), 1);
    assert_eq!(text(o[0]), "SELECT seq, repeat('x', 50) FROM seq_1_to_3000");
    assert_eq!(o[0].rows, None);
    assert_eq!(o[0].response_end_ns, 91);

    // Binary rows cut: the tail has the last EOF; later commands still parse.
    let (conn, ev) = run_capped("connector_prepared.cap", 8192);
    assert_eq!(errors(&ev), ["sync_lost"]);
    let o = ops(&ev);
    assert_eq!(o.len(), 8);
    assert_eq!(o[7].rows, None);
    assert_eq!(o[7].response_end_ns, 441);
    assert_eq!(conn.pending(), 0);
}

/// No tail to help: the answer ends at the client's next command, with
/// the last server bytes seen.
#[test]
fn lost_answer_resyncs_at_next_command() {
    let recs = records("cli_big_result.cap");
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    for (i, (c, b)) in recs.iter().enumerate() {
        let kept = &b[..b.len().min(100)];
        let seg = Segment {
            data: kept,
            total_len: b.len(),
            tail: &[],
            frames: &[],
            timing: Timing {
                enter_ns: i as u64,
                exit_ns: i as u64,
            },
        };
        conn.feed(*c, &seg, &mut out);
        if i == 5 {
            // A later command from the same client, then its answer.
            let q = b"\x09\x00\x00\x00\x03SELECT 1";
            let ok = b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00";
            conn.feed(true, &whole(q, 100), &mut out);
            conn.feed(false, &whole(ok, 101), &mut out);
        }
    }
    let o = ops(&out);
    assert_eq!(o.len(), 2, "{out:?}");
    assert_eq!(errors(&out), ["sync_lost"]);
    assert_eq!(o[0].rows, None);
    assert_eq!(o[0].response_end_ns, 5);
    assert_eq!(text(o[1]), "SELECT 1");
    assert_eq!(o[1].rows, Some(0));
    assert_eq!(o[1].response_end_ns, 101);
}

fn whole(data: &[u8], t: u64) -> Segment<'_> {
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

/// Byte-at-a-time delivery gives the same operations.
#[test]
fn one_byte_segments() {
    for name in [
        "cli_simple.cap",
        "pymysql_simple.cap",
        "connector_prepared.cap",
    ] {
        let want: Vec<_> = ops(&run(name).1)
            .iter()
            .map(|o| (o.query_text.clone(), o.rows, o.error.clone()))
            .collect();
        let mut conn = MysqlConnection::new();
        let mut out = Vec::new();
        for (c, b) in records(name) {
            for (j, byte) in b.iter().enumerate() {
                conn.feed(c, &whole(std::slice::from_ref(byte), j as u64), &mut out);
            }
        }
        let got: Vec<_> = ops(&out)
            .iter()
            .map(|o| (o.query_text.clone(), o.rows, o.error.clone()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

/// Joined after the login and the prepares: commands still parse,
/// executes of unknown statements have no text.
#[test]
fn joined_mid_stream() {
    let recs = records("connector_prepared.cap");
    // Record 13 is the first COM_STMT_EXECUTE (after its prepare and reset).
    assert_eq!(recs[13].1[4], 0x17);
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    for (i, (c, b)) in recs.iter().enumerate().skip(13) {
        conn.feed(*c, &whole(b, i as u64), &mut out);
    }
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let o = ops(&out);
    assert_eq!(o.len(), 6);
    assert_eq!(o[0].query_text, None);
    assert!(o[0].prepared);
    assert_eq!(o[0].rows, Some(1));
    // Prepared after we joined: text known.
    assert_eq!(text(o[3]), "UPDATE items SET name = ? WHERE id = ?");
    assert_eq!(o[5].rows, Some(2000));
    // No greeting seen: the wire protocol is all we know.
    assert!(system_all(&out, DbSystem::Mysql));
    assert_eq!(o[0].namespace, None);

    // Server bytes before any command are skipped.
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    for (i, (c, b)) in recs.iter().enumerate().skip(14) {
        conn.feed(*c, &whole(b, i as u64), &mut out);
    }
    assert!(errors(&out).is_empty());
    assert_eq!(ops(&out).len(), 5);
}

#[test]
fn detects_real_first_bytes() {
    for name in [
        "cli_simple.cap",
        "pymysql_simple.cap",
        "connector_prepared.cap",
        "cli_big_result.cap",
    ] {
        let recs = records(name);
        assert!(detect(false, &recs[0].1), "{name} greeting");
        for (c, b) in &recs {
            if *c && b.get(3) == Some(&0) {
                assert!(detect(true, b), "{name}: {:?}", &b[..b.len().min(20)]);
            }
        }
    }
    // A greeting cut before the end of its version string is not enough.
    assert!(!detect(false, &records("cli_simple.cap")[0].1[..12]));
}

#[test]
fn rejects_other_protocols() {
    let pg_startup =
        b"\x00\x00\x00\x4f\x00\x03\x00\x00user\x00postgres\x00database\x00shop\x00\x00";
    let pg_query = b"Q\x00\x00\x00\x16SELECT 1 FROM x\x00";
    let pg_ssl = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
    let samples: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        pg_startup,
        pg_query,
        pg_ssl,
        b"R\x00\x00\x00\x08\x00\x00\x00\x00",
        b"*1\r\n$4\r\nPING\r\n",
        b"+PONG\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"get foo\r\n",
        b"",
        b"\x01\x00\x00",
    ];
    for s in samples {
        assert!(!detect(true, s), "client {s:?}");
        assert!(!detect(false, s), "server {s:?}");
    }
}

/// Greeting, then a 32-byte HandshakeResponse with CLIENT_SSL: TLS follows.
#[test]
fn ssl_request_goes_opaque() {
    let recs = records("cli_simple.cap");
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    conn.feed(false, &whole(&recs[0].1, 0), &mut out);
    let mut ssl = vec![32, 0, 0, 1];
    ssl.extend_from_slice(&(0x0000_0a00u32 | 0x8000 | 0x8).to_le_bytes());
    ssl.extend_from_slice(&[0, 0, 0, 1, 45]);
    ssl.extend_from_slice(&[0; 23]);
    conn.feed(true, &whole(&ssl, 1), &mut out);
    assert!(conn.is_opaque());
    // TLS records that happen to look like commands are not read.
    conn.feed(true, &whole(b"\x09\x00\x00\x00\x03SELECT 1", 2), &mut out);
    conn.feed(
        false,
        &whole(b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", 3),
        &mut out,
    );
    conn.close(CLOSED_NS, &mut out);
    assert!(out.is_empty());
}

/// A 16 MiB-1 payload continues in the next packet; the capture keeps
/// 8 KiB of each syscall and the text prefix is reported.
#[test]
fn continued_packet_and_cut_query() {
    let mut first = vec![0xff, 0xff, 0xff, 0x00, cmd::QUERY];
    first.extend_from_slice(b"INSERT INTO t VALUES ('");
    first.resize(8192, b'x');
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    conn.feed(
        true,
        &Segment {
            data: &first,
            total_len: 4 + packet::MAX_PAYLOAD,
            tail: &[],
            frames: &[],
            timing: Timing {
                enter_ns: 1,
                exit_ns: 2,
            },
        },
        &mut out,
    );
    // Second physical packet: 10 more bytes, seq 1.
    conn.feed(true, &whole(b"\x0a\x00\x00\x01xxxxxxxx')", 3), &mut out);
    assert_eq!(conn.pending(), 1);
    conn.feed(
        false,
        &whole(b"\x07\x00\x00\x02\x00\x01\x00\x02\x00\x00\x00", 4),
        &mut out,
    );
    let o = ops(&out);
    assert_eq!(o.len(), 1, "{out:?}");
    assert!(text(o[0]).starts_with("INSERT INTO t VALUES ('xxx"));
    assert_eq!(o[0].query_text.as_ref().unwrap().len(), 8192 - 5);
    assert_eq!(o[0].rows, Some(1));
    assert_eq!(o[0].request_start.enter_ns, 1);
    assert_eq!(o[0].response_end_ns, 4);
}

#[test]
fn statement_cache_is_bounded() {
    let mut conn = MysqlConnection::new();
    for id in 0..(MAX_STATEMENTS as u32 + 10) {
        conn.st.remember(id, Arc::from("SELECT 1"));
    }
    assert_eq!(conn.st.statements.len(), MAX_STATEMENTS);
    assert_eq!(conn.st.statement(0), None);
    assert!(conn.st.statement(MAX_STATEMENTS as u32 + 9).is_some());
    conn.st
        .remember(1, Arc::from("x".repeat(MAX_STATEMENT_BYTES).as_str()));
    assert!(conn.st.statement_bytes <= MAX_STATEMENT_BYTES);
}

/// A client command cut mid-way with the rest lost: the framer is lost
/// until a segment starts with a command again.
#[test]
fn client_loses_sync_and_resyncs() {
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    // Two commands in one syscall, the capture keeps only the first half.
    let two = b"\x09\x00\x00\x00\x03SELECT 1\x09\x00\x00\x00\x03SELECT 2";
    conn.feed(
        true,
        &Segment {
            data: &two[..16],
            total_len: two.len(),
            tail: &[],
            frames: &[],
            timing: Timing::default(),
        },
        &mut out,
    );
    assert_eq!(errors(&out), ["sync_lost"]);
    conn.feed(true, &whole(b"\x09\x00\x00\x00\x03SELECT 3", 5), &mut out);
    conn.feed(
        false,
        &whole(b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", 6),
        &mut out,
    );
    conn.feed(
        false,
        &whole(b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", 7),
        &mut out,
    );
    conn.close(CLOSED_NS, &mut out);
    let texts: Vec<_> = ops(&out).iter().map(|o| text(o).to_string()).collect();
    assert_eq!(texts, ["SELECT 1", "SELECT 3"]);
}

#[test]
fn error_kinds_are_listed() {
    for name in ["sync_lost", "too_many_pending"] {
        assert!(ERROR_KINDS.contains(&name));
    }
}

/// `mysql --compress`: after the login, frames that carry small packets as
/// they are and larger ones deflated; each statement and its answer read
/// through them as from an uncompressed connection.
#[test]
fn compressed_protocol() {
    let (conn, ev) = run("cli_compressed.cap");
    assert!(errors(&ev).is_empty(), "{:?}", errors(&ev));
    assert_eq!(conn.pending(), 0);
    let all = ops(&ev);
    let got: Vec<_> = all.iter().map(|o| (text(o), code(o), o.rows)).collect();
    let long = format!("SELECT '{}' AS long_text", "long text ".repeat(20));
    assert_eq!(
        got[got.len() - 4..],
        [
            ("SELECT id, name FROM items ORDER BY id", None, Some(5)),
            ("SELECT * FROM missing_table", Some("1146"), None),
            (
                "SELECT seq, repeat('z', 30) FROM seq_1_to_1000",
                None,
                Some(1000)
            ),
            (long.as_str(), None, Some(1)),
        ]
    );
    assert!(system_all(&ev, DbSystem::Mariadb));
    // Cut to 4 KiB per syscall: every statement is still reported, the big
    // result's rows become unknown.
    let (_, ev) = run_capped("cli_compressed.cap", 4096);
    let cut: Vec<_> = ops(&ev).iter().map(|o| text(o).to_owned()).collect();
    assert_eq!(cut, got.iter().map(|g| g.0.to_owned()).collect::<Vec<_>>());
}

/// The connection closes before the last statement's answer (a client that
/// gave up on `SELECT SLEEP(..)`): the statement is reported unanswered,
/// with no row count, ending at the close.
#[test]
fn close_leaves_the_last_statement_unanswered() {
    let recs = closed_after(&records("cli_simple.cap"), |b| has(b, b"DELETE"), false);
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    for (i, (from_client, bytes)) in recs.iter().enumerate() {
        conn.feed(
            *from_client,
            &capped(bytes, usize::MAX, at(10 * i as u64)),
            &mut out,
        );
    }
    conn.close(CLOSED_NS, &mut out);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let o = ops(&out);
    let (last, done) = o.split_last().unwrap();
    assert!(done.iter().all(|o| o.answer == Answer::Complete));
    let got = (text(last), last.answer, last.response_end_ns, last.rows);
    let want = (
        "DELETE FROM shop.items WHERE id = 6",
        Answer::Missing,
        CLOSED_NS,
        None,
    );
    assert_eq!(got, want);
}

/// The mysql CLI's session as it goes with `--ssl`: after the greeting the
/// client sends the short SSL login request (CLIENT_SSL set), TLS records
/// follow, and inside TLS the full login (sequence 2) and the statements
/// read as in the clear.
#[test]
fn session_inside_tls_reads_as_in_the_clear() {
    let recs = records("cli_simple.cap");
    let login = &recs[1].1;
    let mut ssl_request = vec![32, 0, 0, 1];
    ssl_request.extend_from_slice(&login[4..36]);
    ssl_request[5] |= 0x08; // CLIENT_SSL (0x800)
    let mut login_in_tls = login.clone();
    login_in_tls[3] = 2;
    let mut conn = MysqlConnection::new();
    let mut out = Vec::new();
    let mut t = 0;
    let mut feed = |conn: &mut MysqlConnection, from_client: bool, b: &[u8], out: &mut Vec<_>| {
        t += 10;
        conn.feed(from_client, &capped(b, usize::MAX, at(t)), out);
    };
    feed(&mut conn, false, &recs[0].1, &mut out);
    feed(&mut conn, true, &ssl_request, &mut out);
    assert!(conn.awaits_tls());
    feed(
        &mut conn,
        true,
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
        &mut out,
    );
    conn.tls_plaintext();
    feed(&mut conn, true, &login_in_tls, &mut out);
    for (from_client, b) in &recs[2..] {
        feed(&mut conn, *from_client, b, &mut out);
    }
    conn.close(CLOSED_NS, &mut out);
    assert_eq!(errors(&out), Vec::<&str>::new());
    let (_, plain) = run("cli_simple.cap");
    let texts = |ev: &[DbEvent]| -> Vec<(String, Option<u64>)> {
        ops(ev)
            .iter()
            .map(|o| (text(o).to_string(), o.rows))
            .collect()
    };
    assert_eq!(texts(&out), texts(&plain));
    assert!(!texts(&out).is_empty());
    assert!(ops(&out).iter().all(|o| o.system == DbSystem::Mariadb));
}
