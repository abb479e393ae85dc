//! Statements as real clients send them: pgbench's TPC-B-like script, psql
//! `\d` catalog queries, the mysql client's greeting query, ORMs, plus
//! secrets in literals and comments, cut captures and every literal form.

use super::*;

use Dialect::{Mysql, Postgres};

fn pg(s: &str) -> String {
    sanitize(s, Postgres)
}

fn my(s: &str) -> String {
    sanitize(s, Mysql)
}

fn sum(s: &str, d: Dialect) -> (Option<String>, Option<String>) {
    let x = summarize(s, d);
    (x.operation, x.collection)
}

fn op_coll(op: &str, coll: Option<&str>) -> (Option<String>, Option<String>) {
    (Some(op.to_string()), coll.map(str::to_string))
}

fn name(s: &str, d: Dialect) -> Option<String> {
    span_name(&summarize(s, d))
}

#[test]
fn pgbench_tpcb_script() {
    let script = [
        ("BEGIN;", "BEGIN;", "BEGIN"),
        (
            "UPDATE pgbench_accounts SET abalance = abalance + 1234 WHERE aid = 5678;",
            "UPDATE pgbench_accounts SET abalance = abalance + ? WHERE aid = ?;",
            "UPDATE pgbench_accounts",
        ),
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5678;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
            "SELECT pgbench_accounts",
        ),
        (
            "UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 7;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + -? WHERE tid = ?;",
            "UPDATE pgbench_tellers",
        ),
        (
            "UPDATE pgbench_branches SET bbalance = bbalance + 1234 WHERE bid = 1;",
            "UPDATE pgbench_branches SET bbalance = bbalance + ? WHERE bid = ?;",
            "UPDATE pgbench_branches",
        ),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP);",
            "INSERT pgbench_history",
        ),
        ("END;", "END;", "END"),
    ];
    for (text, clean, span) in script {
        assert_eq!(pg(text), clean);
        assert_eq!(name(text, Postgres).as_deref(), Some(span), "{text}");
    }
}

#[test]
fn pgbench_prepared_mode_keeps_placeholders() {
    let q = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;";
    assert_eq!(pg(q), q);
    assert_eq!(
        sum(q, Postgres),
        op_coll("UPDATE", Some("pgbench_accounts"))
    );
}

#[test]
fn psql_describe_queries() {
    let q = "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     \
             LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n\
             WHERE c.relname OPERATOR(pg_catalog.~) '^(orders)$' COLLATE pg_catalog.default\n  \
             AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;";
    let s = pg(q);
    assert!(s.contains("OPERATOR(pg_catalog.~) ? COLLATE"), "{s}");
    assert!(s.ends_with("ORDER BY ?, ?;"), "{s}");
    assert!(!s.contains("orders"));
    assert_eq!(
        sum(q, Postgres),
        op_coll("SELECT", Some("pg_catalog.pg_class"))
    );

    let q = "SELECT a.attname,\n  pg_catalog.format_type(a.atttypid, a.atttypmod),\n  \
             (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)\n   \
             FROM pg_catalog.pg_attrdef d\n   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),\n  \
             a.attnotnull\nFROM pg_catalog.pg_attribute a\n\
             WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped\nORDER BY a.attnum;";
    let s = pg(q);
    assert!(s.contains("a.attrelid = ? AND a.attnum > ?"), "{s}");
    // The FROM inside the scalar subquery is not the statement's.
    assert_eq!(
        sum(q, Postgres),
        op_coll("SELECT", Some("pg_catalog.pg_attribute"))
    );
}

#[test]
fn mysql_client_greeting() {
    let q = "select @@version_comment limit 1";
    assert_eq!(my(q), "select @@version_comment limit ?");
    assert_eq!(sum(q, Mysql), op_coll("SELECT", None));
    assert_eq!(name(q, Mysql).as_deref(), Some("SELECT"));
    assert_eq!(sum("SELECT DATABASE()", Mysql), op_coll("SELECT", None));
    assert_eq!(sum("SELECT 1 FROM DUAL", Mysql), op_coll("SELECT", None));
}

#[test]
fn secrets_in_literals() {
    let q = "UPDATE users SET password = 'hunter2', token = E'abc\\'s3cret' WHERE email = 'a@b.c'";
    assert_eq!(
        pg(q),
        "UPDATE users SET password = ?, token = ? WHERE email = ?"
    );
    let q = "INSERT INTO users VALUES ('it''s a secret', \"also secret\", 'back\\'slash')";
    assert_eq!(my(q), "INSERT INTO users VALUES (?, ?, ?)");
    // Postgres: "..." is an identifier, MySQL: a string.
    assert_eq!(pg("SELECT \"Name\" FROM t"), "SELECT \"Name\" FROM t");
    assert_eq!(my("SELECT \"Name\" FROM t"), "SELECT ? FROM t");
    assert_eq!(my("SELECT `Name` FROM `t`"), "SELECT `Name` FROM `t`");
}

#[test]
fn secrets_in_comments() {
    assert_eq!(
        pg("SELECT 1 -- password=hunter2\nFROM t"),
        "SELECT ? \nFROM t"
    );
    assert_eq!(pg("/* user=bob pw=x */ SELECT 1"), " SELECT ?");
    assert_eq!(pg("SELECT/* a /* nested */ secret */1"), "SELECT ?");
    assert_eq!(my("SELECT 1 # pw=hunter2\n"), "SELECT ? \n");
    assert_eq!(
        my("SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t"),
        "SELECT  a FROM t"
    );
    // MySQL does not nest: the first */ closes.
    assert_eq!(my("SELECT /* a /* b */ 1 */"), "SELECT  ? */");
    // Postgres `#` is an operator, MySQL `--x` is minus minus.
    assert_eq!(pg("SELECT 5 # 3"), "SELECT ? # ?");
    assert_eq!(my("SELECT 5--3"), "SELECT ?- -?");
    // A dropped comment never glues tokens into a new one.
    assert_eq!(pg("SELECT a/**/b, 1-/**/-1"), "SELECT a b, ?- -?");
    // Comments between tokens keep them apart for summarize too.
    assert_eq!(
        sum("/* app=web */ -- x\n((SELECT * FROM t))", Postgres),
        op_coll("SELECT", Some("t"))
    );
}

#[test]
fn cut_captures_redact_the_rest() {
    assert_eq!(
        pg("SELECT * FROM users WHERE token = 'abc123secr"),
        "SELECT * FROM users WHERE token = ?"
    );
    assert_eq!(pg("SELECT $body$ secret 123"), "SELECT ?");
    assert_eq!(pg("SELECT E'abc\\'123"), "SELECT ?");
    assert_eq!(pg("SELECT 1 /* secret 123"), "SELECT ? ");
    assert_eq!(my("SELECT \"abc\\\"123"), "SELECT ?");
    assert_eq!(my("SELECT 'abc\\"), "SELECT ?");
    assert_eq!(pg("INSERT INTO t VALUES (12"), "INSERT INTO t VALUES (?");
    // Cut quoted identifier: kept (names are not secrets), no collection.
    assert_eq!(pg("SELECT * FROM \"ord"), "SELECT * FROM \"ord");
    assert_eq!(
        sum("SELECT * FROM \"ord", Postgres),
        op_coll("SELECT", None)
    );
    assert_eq!(sum("WITH x AS (SELECT 1", Postgres), op_coll("WITH", None));
}

#[test]
fn literal_forms_postgres() {
    let cases = [
        ("SELECT 'a''b'", "SELECT ?"),
        ("SELECT 'a\\'", "SELECT ?"),
        ("SELECT e'a\\'b'", "SELECT ?"),
        (
            "SELECT B'1010', X'1F', b'1', x'ff', N'nat'",
            "SELECT ?, ?, ?, ?, ?",
        ),
        ("SELECT U&'d\\0061t' UESCAPE '!'", "SELECT ? UESCAPE ?"),
        ("SELECT U&\"d\\0061t\"", "SELECT U&\"d\\0061t\""),
        ("SELECT $$a 'b' c$$, $fn$ x $$ y $fn$", "SELECT ?, ?"),
        ("SELECT 'a'\n'b'", "SELECT ?\n?"),
        (
            "SELECT 1, 1.5, .5, 1e10, 1.5E-3, 0x1F, 0o17, 0b101, 1_000_000",
            "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?",
        ),
        (
            "SELECT t1.c2 FROM t1 WHERE x = $1 AND y::int4 = 3",
            "SELECT t1.c2 FROM t1 WHERE x = $1 AND y::int4 = ?",
        ),
        ("SELECT a$b, $1$2", "SELECT a$b, $1$2"),
        ("SELECT true, false, null", "SELECT true, false, null"),
        ("SELECT -1, +2, 3-4", "SELECT -?, +?, ?-?"),
        (
            "SELECT data->>'key', tags @> '{a}'",
            "SELECT data->>?, tags @> ?",
        ),
        (
            "SELECT '2024-01-01'::date, interval '1 day'",
            "SELECT ?::date, interval ?",
        ),
    ];
    for (q, want) in cases {
        assert_eq!(pg(q), want, "{q}");
    }
}

#[test]
fn literal_forms_mysql() {
    let cases = [
        (
            "SELECT 'a''b', 'a\\'b', \"a\"\"b\", \"a\\\"b\"",
            "SELECT ?, ?, ?, ?",
        ),
        (
            "SELECT _utf8mb4'abc', _binary'x', N'n', X'1F', x'ff', B'01', 0x1F, 0b01",
            "SELECT ?, ?, ?, ?, ?, ?, ?, ?",
        ),
        (
            "SELECT * FROM 2024_sales WHERE id = 12",
            "SELECT * FROM 2024_sales WHERE id = ?",
        ),
        (
            "SELECT `a``b` FROM t WHERE c = ?",
            "SELECT `a``b` FROM t WHERE c = ?",
        ),
        (
            "SET @x := 42, @@session.sql_mode = 'TRADITIONAL'",
            "SET @x := ?, @@session.sql_mode = ?",
        ),
        ("SELECT $1, a$b", "SELECT $?, a$b"),
        ("SELECT 1e5, 1.5e-3, .25", "SELECT ?, ?, ?"),
    ];
    for (q, want) in cases {
        assert_eq!(my(q), want, "{q}");
    }
}

#[test]
fn placeholders_are_kept() {
    let q = "SELECT * FROM t WHERE a = ? AND b = :name AND c = %s AND d = %(d)s AND e = $1";
    assert_eq!(pg(q), q);
}

#[test]
fn in_lists_collapse() {
    assert_eq!(
        pg("SELECT * FROM t WHERE id IN (1, 2, 3)"),
        "SELECT * FROM t WHERE id IN (?)"
    );
    assert_eq!(
        my("DELETE FROM t WHERE id NOT IN ('a','b')"),
        "DELETE FROM t WHERE id NOT IN (?)"
    );
    assert_eq!(
        my("SELECT * FROM t WHERE id in (?, ?, ?)"),
        "SELECT * FROM t WHERE id in (?)"
    );
    assert_eq!(
        pg("SELECT * FROM t WHERE id IN /* x */ (1, /* y */ 2)"),
        "SELECT * FROM t WHERE id IN  (?)"
    );
    // Not a plain value list: left alone.
    assert_eq!(
        pg("SELECT * FROM t WHERE id IN ($1, $2)"),
        "SELECT * FROM t WHERE id IN ($1, $2)"
    );
    assert_eq!(
        pg("WHERE (a, b) IN ((1, 2), (3, 4))"),
        "WHERE (a, b) IN ((?, ?), (?, ?))"
    );
    assert_eq!(pg("WHERE id IN (SELECT 1)"), "WHERE id IN (SELECT ?)");
    assert_eq!(pg("VALUES (1, 2)"), "VALUES (?, ?)");
}

#[test]
fn unicode() {
    assert_eq!(
        pg("SELECT 'héllo wörld 🎉' AS grüße FROM tëst"),
        "SELECT ? AS grüße FROM tëst"
    );
    assert_eq!(
        sum("SELECT * FROM tëst", Postgres),
        op_coll("SELECT", Some("tëst"))
    );
    assert_eq!(pg("SELECT $é$ x $é$, 'é\\é"), "SELECT ?, ?");
    assert_eq!(my("SELECT 'é\\é', `ä`"), "SELECT ?, `ä`");
    assert_eq!(pg("SELECT\u{a0}1"), "SELECT\u{a0}1");
}

#[test]
fn output_is_capped() {
    let long = format!("SELECT {} FROM t", "é".repeat(5000));
    let s = pg(&long);
    assert!(s.len() <= MAX_LEN && s.starts_with("SELECT é"));
    let long = format!("SELECT '{}'{}", "x".repeat(10_000), " ".repeat(5000));
    assert_eq!(pg(&long).len(), MAX_LEN);
}

#[test]
fn sanitize_is_idempotent() {
    for q in [
        "SELECT 5--3, 1-/**/-1, $a'x'$ b $a$",
        "SELECT 'a'e'b', 1e'x', U&/**/'x', .5.5, 1..2",
        "SELECT x FROM t WHERE a IN (1, 'b', 3) -- c",
        "SELECT 2024_sales.x, 1abc, 1e5abc FROM `t`",
    ] {
        for d in [Postgres, Mysql] {
            let once = sanitize(q, d);
            assert_eq!(sanitize(&once, d), once, "{q} {d:?}");
        }
    }
}

#[test]
fn operations_and_collections() {
    let cases = [
        (
            "SELECT * FROM orders o JOIN items i ON i.oid = o.id",
            Some("SELECT"),
            Some("orders"),
        ),
        (
            "select * from public.orders where id = 1",
            Some("SELECT"),
            Some("public.orders"),
        ),
        (
            "SELECT * FROM \"Order\".\"Line\"\"s\"",
            Some("SELECT"),
            Some("Order.Line\"s"),
        ),
        ("SELECT * FROM (SELECT 1) s", Some("SELECT"), None),
        ("SELECT * FROM generate_series(1, 10)", Some("SELECT"), None),
        ("SELECT * FROM ONLY parent", Some("SELECT"), Some("parent")),
        (
            "SELECT extract(year FROM d), a IS DISTINCT FROM b FROM t",
            Some("SELECT"),
            Some("t"),
        ),
        ("SELECT 1", Some("SELECT"), None),
        (
            "INSERT INTO orders (id) VALUES (1)",
            Some("INSERT"),
            Some("orders"),
        ),
        (
            "INSERT IGNORE INTO orders SET id = 1",
            Some("INSERT"),
            Some("orders"),
        ),
        ("REPLACE INTO kv VALUES (1, 2)", Some("REPLACE"), Some("kv")),
        (
            "UPDATE ONLY orders SET a = 1",
            Some("UPDATE"),
            Some("orders"),
        ),
        (
            "UPDATE LOW_PRIORITY orders SET a = 1",
            Some("UPDATE"),
            Some("orders"),
        ),
        (
            "DELETE FROM orders WHERE id = 1",
            Some("DELETE"),
            Some("orders"),
        ),
        (
            "MERGE INTO target t USING src s ON t.id = s.id",
            Some("MERGE"),
            Some("target"),
        ),
        (
            "COPY orders (id, a) FROM STDIN",
            Some("COPY"),
            Some("orders"),
        ),
        ("COPY (SELECT 1) TO STDOUT", Some("COPY"), None),
        (
            "CREATE TABLE IF NOT EXISTS s.t (id int)",
            Some("CREATE"),
            Some("s.t"),
        ),
        (
            "CREATE UNLOGGED TABLE t (id int)",
            Some("CREATE"),
            Some("t"),
        ),
        ("CREATE INDEX i ON t (a)", Some("CREATE"), None),
        (
            "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches",
            Some("DROP"),
            Some("pgbench_accounts"),
        ),
        (
            "ALTER TABLE ONLY t ADD COLUMN c int",
            Some("ALTER"),
            Some("t"),
        ),
        (
            "TRUNCATE TABLE pgbench_history",
            Some("TRUNCATE"),
            Some("pgbench_history"),
        ),
        (
            "truncate pgbench_history",
            Some("TRUNCATE"),
            Some("pgbench_history"),
        ),
        ("CALL proc(1)", Some("CALL"), None),
        ("COMMIT", Some("COMMIT"), None),
        ("rollback", Some("ROLLBACK"), None),
        ("SET application_name = 'pgbench'", Some("SET"), None),
        ("SHOW server_version", Some("SHOW"), None),
        ("EXPLAIN SELECT * FROM t", Some("EXPLAIN"), None),
        (
            "WITH a AS (SELECT 1), b(x) AS MATERIALIZED (SELECT 2) SELECT * FROM b",
            Some("SELECT"),
            Some("b"),
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 UNION SELECT n FROM r) INSERT INTO log SELECT * FROM r",
            Some("INSERT"),
            Some("log"),
        ),
        (
            "(SELECT a FROM t1) UNION (SELECT a FROM t2)",
            Some("SELECT"),
            Some("t1"),
        ),
        ("BEGIN; SELECT * FROM t", Some("BEGIN"), None),
        ("SELECT * FROM t;  ", Some("SELECT"), Some("t")),
        (";SELECT * FROM t", Some("SELECT"), Some("t")),
        ("pgbench_accounts", None, None),
        ("'SELECT'", None, None),
        ("", None, None),
        ("   -- only a comment", None, None),
    ];
    for (q, op, coll) in cases {
        assert_eq!(
            sum(q, Postgres),
            (op.map(str::to_string), coll.map(str::to_string)),
            "{q}"
        );
    }
}

#[test]
fn mysql_collections() {
    assert_eq!(
        sum("SELECT * FROM `shop`.`orders`", Mysql),
        op_coll("SELECT", Some("shop.orders"))
    );
    assert_eq!(
        sum("SELECT * FROM `a``b`", Mysql),
        op_coll("SELECT", Some("a`b"))
    );
    assert_eq!(
        sum("INSERT INTO `t` VALUES (\"x\")", Mysql),
        op_coll("INSERT", Some("t"))
    );
    assert_eq!(
        sum("DELETE LOW_PRIORITY QUICK FROM t WHERE a = 1", Mysql),
        op_coll("DELETE", Some("t"))
    );
    // MySQL "..." is a string, not a name.
    assert_eq!(sum("SELECT * FROM \"t\"", Mysql), op_coll("SELECT", None));
}

#[test]
fn span_names() {
    assert_eq!(span_name(&Summary::default()), None);
    let s = Summary {
        operation: Some("SELECT".into()),
        collection: Some("orders".into()),
    };
    assert_eq!(span_name(&s).as_deref(), Some("SELECT orders"));
    assert_eq!(name("COMMIT", Mysql).as_deref(), Some("COMMIT"));
}

#[test]
fn arbitrary_bytes_do_not_panic() {
    // A few nasty shapes; the fuzz target covers the rest.
    for q in [
        "'",
        "\"",
        "`",
        "$",
        "$$",
        "$a",
        "/*",
        "/*/",
        "--",
        "#",
        "E'\\",
        "U&",
        "0x",
        "1e",
        "1e+",
        ".",
        "\\",
        "((((",
        "))))",
        "WITH",
        "WITH a AS (",
        "é'",
    ] {
        for d in [Postgres, Mysql] {
            let s = sanitize(q, d);
            assert_eq!(sanitize(&s, d), s);
            let _ = span_name(&summarize(q, d));
        }
    }
}
