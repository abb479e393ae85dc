//! SQL statement text → what may leave the agent: `db.query.text` with every
//! literal replaced by `?`, plus `db.operation.name` / `db.collection.name`
//! and the span name derived from it.
//!
//! Hand-written single-pass lexer, no regexes, no SQL parser crate: captured
//! text is often cut mid-statement (captures are prefixes), mixes dialect
//! extensions, or is not valid SQL at all, and a real parser rejects all of
//! that. The lexer only needs to know where literals, comments, quoted
//! identifiers and words start and end; everything else is copied through.
//!
//! Safety rule: when in doubt, redact. A literal or comment cut by the end
//! of the capture swallows the rest of the text.
//!
//! Known limits: Postgres plain strings are lexed with
//! `standard_conforming_strings = on` (the default since 9.1), MySQL `"..."`
//! as a string (no `ANSI_QUOTES`) and with backslash escapes (no
//! `NO_BACKSLASH_ESCAPES`). A server configured otherwise may see different
//! literal boundaries than we do.

use memchr::memmem;

#[cfg(test)]
mod tests;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// Longest `sanitize` output, in bytes (always cut at a char boundary).
pub const MAX_LEN: usize = 4096;

/// Statement text with every literal replaced by `?`: what may leave the agent as db.query.text.
///
/// Comments are dropped (they may carry secrets), `IN (1, 2, 3)` becomes
/// `IN (?)`, placeholders, identifiers, keywords, operators and whitespace
/// are kept. Idempotent: `sanitize(sanitize(x)) == sanitize(x)`.
pub fn sanitize(text: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LEN + 8));
    // The last significant token was the keyword IN.
    let mut after_in = false;
    // Where the `(` of an `IN (` list sits in `out`.
    let mut in_list: Option<usize> = None;
    for t in Lexer::new(text, dialect) {
        let s = &text[t.start..t.end];
        match t.kind {
            Kind::Space => out.push_str(s),
            Kind::Comment => {
                // Keep tokens on both sides apart: `a/**/b` must not become `ab`.
                if out.as_bytes().last().is_some_and(|&b| !is_space(b)) {
                    out.push(' ');
                }
                continue;
            }
            Kind::Str | Kind::Number => out.push('?'),
            Kind::Punct if s == "(" => {
                in_list = after_in.then_some(out.len());
                out.push('(');
            }
            Kind::Punct if s == ")" => {
                if let Some(open) = in_list.take() {
                    collapse_list(&mut out, open);
                }
                out.push(')');
            }
            Kind::Punct if s == "-" => {
                // `- -` (after a dropped literal-free comment, or MySQL's
                // `--x` which is not a comment) must not turn into `--`.
                if out.ends_with('-') {
                    out.push(' ');
                }
                out.push('-');
            }
            _ => out.push_str(s),
        }
        if t.kind != Kind::Space {
            after_in = t.kind == Kind::Word && s.eq_ignore_ascii_case("in");
        }
        if out.len() > MAX_LEN {
            break;
        }
    }
    truncate_at_char(&mut out, MAX_LEN);
    out
}

/// `db.operation.name` and `db.collection.name` derived from a statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub operation: Option<String>,
    pub collection: Option<String>,
}

/// `db.operation.name` and `db.collection.name` derived from the text.
///
/// Operation: the first keyword, upper-cased, if it is a known statement
/// keyword (unknown words would make span names unbounded); for `WITH` the
/// keyword of the main statement after the CTEs (`WITH` itself if the text
/// is cut before it). Collection: the first table the statement names, with
/// its schema qualification and without identifier quotes; None for
/// subqueries, functions, statements that name none, and multi-statement
/// text (`BEGIN; SELECT 1` → operation `BEGIN`, no collection: the first
/// statement names the operation, a collection would be a guess).
pub fn summarize(text: &str, dialect: Dialect) -> Summary {
    let (toks, more) = first_statement(text, dialect);
    let mut c = Cursor { text, toks, i: 0 };
    while c.eat_punct(b'(') {}
    let Some(mut op) = c.keyword() else {
        return Summary::default();
    };
    while op == "WITH" {
        match c.skip_ctes().then(|| c.keyword()).flatten() {
            Some(main) => op = main,
            None => return summary(op, None),
        }
    }
    let collection = if more { None } else { c.collection(op) };
    summary(op, collection)
}

/// Span name per OTel semconv: "SELECT orders", or "SELECT" without a table, or None.
pub fn span_name(s: &Summary) -> Option<String> {
    let op = s.operation.as_deref()?;
    Some(match &s.collection {
        Some(c) => format!("{op} {c}"),
        None => op.to_string(),
    })
}

fn summary(op: &str, collection: Option<String>) -> Summary {
    Summary {
        operation: Some(op.to_string()),
        collection,
    }
}

/// Statement keywords we report as `db.operation.name`.
const OPERATIONS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "REPLACE",
    "CALL",
    "DO",
    "EXEC",
    "EXECUTE",
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "PREPARE",
    "DEALLOCATE",
    "CREATE",
    "DROP",
    "ALTER",
    "RENAME",
    "TRUNCATE",
    "COPY",
    "SET",
    "RESET",
    "SHOW",
    "EXPLAIN",
    "DESCRIBE",
    "DESC",
    "ANALYZE",
    "VACUUM",
    "GRANT",
    "REVOKE",
    "LOCK",
    "UNLOCK",
    "USE",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "DECLARE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "DISCARD",
    "CHECKPOINT",
    "CLUSTER",
    "REINDEX",
    "REFRESH",
    "COMMENT",
    "VALUES",
    "TABLE",
    "WITH",
    "LOAD",
    "HANDLER",
    "OPTIMIZE",
    "REPAIR",
    "CHECKSUM",
    "FLUSH",
    "KILL",
    "PURGE",
    "XA",
];

/// Significant tokens (no spaces, comments) of the first statement, and
/// whether another statement follows it.
fn first_statement(text: &str, dialect: Dialect) -> (Vec<Token>, bool) {
    let mut toks = Vec::new();
    let mut depth = 0i32;
    let mut ended = false;
    for t in Lexer::new(text, dialect) {
        if matches!(t.kind, Kind::Space | Kind::Comment) {
            continue;
        }
        if ended {
            return (toks, true);
        }
        if t.kind == Kind::Punct {
            match text.as_bytes()[t.start] {
                b'(' => depth += 1,
                b')' => depth -= 1,
                // Leading `;` are empty statements, not a statement end.
                b';' if depth <= 0 && !toks.is_empty() => {
                    ended = true;
                    continue;
                }
                b';' if toks.is_empty() => continue,
                _ => {}
            }
        }
        toks.push(t);
    }
    (toks, false)
}

/// Walks the significant tokens of one statement.
struct Cursor<'a> {
    text: &'a str,
    toks: Vec<Token>,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<(Kind, &'a str)> {
        let t = self.toks.get(self.i)?;
        Some((t.kind, &self.text[t.start..t.end]))
    }

    fn is_word(&self, kw: &str) -> bool {
        matches!(self.peek(), Some((Kind::Word, w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_word(&mut self, kw: &str) -> bool {
        let hit = self.is_word(kw);
        self.i += usize::from(hit);
        hit
    }

    fn eat_any(&mut self, kws: &[&str]) {
        while kws.iter().any(|kw| self.eat_word(kw)) {}
    }

    fn is_punct(&self, p: u8) -> bool {
        matches!(self.peek(), Some((Kind::Punct, s)) if s.as_bytes() == [p])
    }

    fn eat_punct(&mut self, p: u8) -> bool {
        let hit = self.is_punct(p);
        self.i += usize::from(hit);
        hit
    }

    /// A known statement keyword, consumed.
    fn keyword(&mut self) -> Option<&'static str> {
        let (Kind::Word, w) = self.peek()? else {
            return None;
        };
        let op = OPERATIONS.iter().find(|op| op.eq_ignore_ascii_case(w))?;
        self.i += 1;
        Some(op)
    }

    /// At `(`: skips to after the matching `)`. False if it never closes.
    fn skip_group(&mut self) -> bool {
        let mut depth = 0usize;
        while let Some((kind, s)) = self.peek() {
            self.i += 1;
            if kind != Kind::Punct {
                continue;
            }
            match s {
                "(" => depth += 1,
                ")" => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// After `WITH`: `[RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (...)`,
    /// comma-separated. False if the text does not look like that (or is cut).
    fn skip_ctes(&mut self) -> bool {
        self.eat_word("RECURSIVE");
        loop {
            if !matches!(self.peek(), Some((Kind::Word | Kind::QuotedIdent, _))) {
                return false;
            }
            self.i += 1;
            if self.is_punct(b'(') && !self.skip_group() {
                return false;
            }
            if !self.eat_word("AS") {
                return false;
            }
            self.eat_any(&["NOT", "MATERIALIZED"]);
            if !self.is_punct(b'(') || !self.skip_group() {
                return false;
            }
            if !self.eat_punct(b',') {
                return true;
            }
        }
    }

    /// The main table of a statement whose keyword `op` was just consumed.
    fn collection(&mut self, op: &str) -> Option<String> {
        match op {
            "SELECT" => self.after_from(),
            "INSERT" | "REPLACE" | "UPSERT" => {
                self.eat_any(&["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"]);
                self.name()
            }
            "UPDATE" => {
                self.eat_any(&["LOW_PRIORITY", "IGNORE", "ONLY"]);
                self.name()
            }
            "DELETE" => {
                self.eat_any(&["LOW_PRIORITY", "QUICK", "IGNORE"]);
                // MySQL multi-table `DELETE t1 FROM t1 JOIN ...` names t1 first.
                self.eat_word("FROM");
                self.eat_word("ONLY");
                self.name()
            }
            "MERGE" => {
                self.eat_word("INTO");
                self.name()
            }
            "COPY" => self.name(),
            "CREATE" => {
                self.eat_word("OR");
                self.eat_word("REPLACE");
                self.eat_any(&["TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL"]);
                self.table_name(&[])
            }
            "DROP" => {
                self.eat_word("TEMPORARY");
                self.table_name(&["IF", "EXISTS"])
            }
            "ALTER" => self.table_name(&["IF", "EXISTS", "ONLY"]),
            "TRUNCATE" => {
                self.eat_word("TABLE");
                self.eat_word("ONLY");
                self.name()
            }
            _ => None,
        }
    }

    /// `TABLE [IF NOT EXISTS | skip...] name`.
    fn table_name(&mut self, skip: &[&str]) -> Option<String> {
        if !self.eat_word("TABLE") {
            return None;
        }
        self.eat_any(skip);
        if self.eat_word("IF") {
            self.eat_word("NOT");
            self.eat_word("EXISTS");
        }
        self.name()
    }

    /// The table after the first top-level FROM; None for a subquery or function.
    fn after_from(&mut self) -> Option<String> {
        let mut depth = 0i32;
        let mut prev_distinct = false;
        while let Some((kind, s)) = self.peek() {
            self.i += 1;
            match (kind, s) {
                (Kind::Punct, "(") => depth += 1,
                (Kind::Punct, ")") => depth -= 1,
                // `a IS DISTINCT FROM b` is not a FROM clause.
                (Kind::Word, w)
                    if depth <= 0 && !prev_distinct && w.eq_ignore_ascii_case("from") =>
                {
                    self.eat_any(&["ONLY", "LATERAL"]);
                    let name = self.name()?;
                    if self.is_punct(b'(') || name.eq_ignore_ascii_case("dual") {
                        return None;
                    }
                    return Some(name);
                }
                _ => {}
            }
            prev_distinct = kind == Kind::Word && s.eq_ignore_ascii_case("distinct");
        }
        None
    }

    /// `part(.part)*`, identifier quotes removed.
    fn name(&mut self) -> Option<String> {
        let mut out = String::new();
        loop {
            match self.peek()? {
                (Kind::Word, w) => out.push_str(w),
                (Kind::QuotedIdent, q) => out.push_str(&unquote(q)?),
                _ => return None,
            }
            self.i += 1;
            if !self.eat_punct(b'.') {
                return Some(out);
            }
            out.push('.');
        }
    }
}

/// `"a""b"` → `a"b`, `` `t` `` → `t`, `U&"x"` → `x` (escapes left as is).
/// None if the quote never closes (text cut inside the name).
fn unquote(q: &str) -> Option<String> {
    let q = q
        .strip_prefix("U&")
        .or_else(|| q.strip_prefix("u&"))
        .unwrap_or(q);
    let mut chars = q.chars();
    let quote = chars.next()?;
    let mut out = String::new();
    while let Some(c) = chars.next() {
        if c != quote {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => return Some(out),
            Some(c) if c == quote => out.push(c),
            Some(_) => return None,
        }
    }
    None
}

/// `IN (?, ?, ?)` → `IN (?)`: `out[open]` is the `(`, the `)` comes next.
fn collapse_list(out: &mut String, open: usize) {
    let inner = &out.as_bytes()[open + 1..];
    let only_values = inner.iter().all(|&b| b == b'?' || b == b',' || is_space(b));
    if only_values && inner.contains(&b'?') {
        out.truncate(open + 1);
        out.push('?');
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    /// Keyword or unquoted identifier.
    Word,
    /// `"x"` (Postgres), `` `x` `` (MySQL), possibly unterminated.
    QuotedIdent,
    /// Any string-like literal, possibly unterminated.
    Str,
    Number,
    /// `$1`, `?`.
    Param,
    /// One ASCII byte of anything else.
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Splits text into tokens. Every boundary falls on an ASCII byte or the
/// end, so slicing the `&str` at them is always valid.
struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    mysql: bool,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str, dialect: Dialect) -> Self {
        Lexer {
            b: text.as_bytes(),
            pos: 0,
            mysql: dialect == Dialect::Mysql,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    fn token_at(&self, i: usize) -> (Kind, usize) {
        let my = self.mysql;
        match self.b[i] {
            c if is_space(c) => (Kind::Space, skip(self.b, i, is_space)),
            b'-' if self.at(i + 1) == Some(b'-') && self.dash_comment(i + 2) => {
                (Kind::Comment, self.line_end(i))
            }
            b'#' if my => (Kind::Comment, self.line_end(i)),
            b'/' if self.at(i + 1) == Some(b'*') => (Kind::Comment, self.block_comment(i)),
            b'\'' => (Kind::Str, self.quoted(i, b'\'', my)),
            b'"' if my => (Kind::Str, self.quoted(i, b'"', true)),
            b'"' => (Kind::QuotedIdent, self.quoted(i, b'"', false)),
            b'`' if my => (Kind::QuotedIdent, self.quoted(i, b'`', false)),
            b'$' if !my => self.dollar(i),
            b'0'..=b'9' => self.number(i),
            b'.' if self.at(i + 1).is_some_and(|c| c.is_ascii_digit()) => self.number(i),
            b'?' => (Kind::Param, i + 1),
            c if is_ident_start(c) => self.word(i),
            _ => (Kind::Punct, i + 1),
        }
    }

    /// `--` starts a comment; MySQL wants whitespace or a control byte
    /// after it (`5--3` is five minus minus three).
    fn dash_comment(&self, after: usize) -> bool {
        !self.mysql || self.at(after).is_some_and(|c| c <= b' ')
    }

    /// Up to (not including) the newline, which stays in the text.
    fn line_end(&self, i: usize) -> usize {
        memchr::memchr(b'\n', &self.b[i..]).map_or(self.b.len(), |p| i + p)
    }

    /// Postgres nests `/* */`, MySQL does not. Unterminated: to the end.
    fn block_comment(&self, i: usize) -> usize {
        let b = self.b;
        let mut depth = 0usize;
        let mut k = i;
        while k + 1 < b.len() {
            match (b[k], b[k + 1]) {
                (b'/', b'*') if depth == 0 || !self.mysql => {
                    depth += 1;
                    k += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        return k;
                    }
                }
                _ => k += 1,
            }
        }
        b.len()
    }

    /// From the opening quote at `i` to after the closing one; doubled
    /// quotes always escape, backslashes when `backslash`. Unterminated
    /// (cut capture): to the end, so the rest is redacted.
    fn quoted(&self, i: usize, quote: u8, backslash: bool) -> usize {
        let b = self.b;
        let mut k = i + 1;
        while k < b.len() {
            let c = b[k];
            if backslash && c == b'\\' {
                k += 2;
            } else if c == quote {
                if b.get(k + 1) != Some(&quote) {
                    return k + 1;
                }
                k += 2;
            } else {
                k += 1;
            }
        }
        b.len()
    }

    /// Postgres: `$1` placeholder, `$tag$...$tag$` string, or a lone `$`.
    fn dollar(&self, i: usize) -> (Kind, usize) {
        let b = self.b;
        if self.at(i + 1).is_some_and(|c| c.is_ascii_digit()) {
            return (Kind::Param, skip(b, i + 1, |c| c.is_ascii_digit()));
        }
        let k = skip(b, i + 1, |c| c != b'$' && is_ident_continue(c));
        if self.at(k) != Some(b'$') {
            return (Kind::Punct, i + 1);
        }
        let tag = &b[i..=k];
        let body = k + 1;
        let end = memmem::find(&b[body..], tag).map_or(b.len(), |p| body + p + tag.len());
        (Kind::Str, end)
    }

    /// Decimal (`1`, `1.5`, `.5`, `1e-3`, Postgres `1_000`) or `0x`/`0b`/`0o`.
    fn number(&self, i: usize) -> (Kind, usize) {
        let b = self.b;
        let my = self.mysql;
        if b[i] == b'0' {
            let radix_digit: Option<fn(u8) -> bool> = match self.at(i + 1).map(|c| c | 0x20) {
                Some(b'x') => Some(|c| c.is_ascii_hexdigit()),
                Some(b'b') => Some(|c| c == b'0' || c == b'1'),
                Some(b'o') if !my => Some(|c| (b'0'..=b'7').contains(&c)),
                _ => None,
            };
            if let Some(ok) = radix_digit {
                if self.at(i + 2).is_some_and(ok) {
                    return (
                        Kind::Number,
                        skip(b, i + 2, |c| ok(c) || (!my && c == b'_')),
                    );
                }
            }
        }
        let digits = |k: usize| {
            let mut k = k;
            while k < b.len() {
                let under = !my && b[k] == b'_' && b.get(k + 1).is_some_and(|c| c.is_ascii_digit());
                if !b[k].is_ascii_digit() && !under {
                    break;
                }
                k += 1;
            }
            k
        };
        let mut k = digits(i);
        let mut only_digits = k > i;
        if self.at(k) == Some(b'.') {
            k = digits(k + 1);
            only_digits = false;
        }
        if matches!(self.at(k), Some(b'e' | b'E')) {
            let m = k + 1 + usize::from(matches!(self.at(k + 1), Some(b'+' | b'-')));
            if self.at(m).is_some_and(|c| c.is_ascii_digit()) {
                k = digits(m);
                only_digits = false;
            }
        }
        // MySQL identifiers may start with digits (`2024_sales`).
        if my && only_digits && self.at(k).is_some_and(is_ident_continue) {
            return (Kind::Word, skip(b, k, is_ident_continue));
        }
        (Kind::Number, k)
    }

    /// A word, or a prefixed string: `E'..'`, `B'..'`, `X'..'`, `N'..'`,
    /// Postgres `U&'..'` / `U&".."`, MySQL `_utf8mb4'..'`.
    fn word(&self, i: usize) -> (Kind, usize) {
        let b = self.b;
        let end = skip(b, i, is_ident_continue);
        let w = &b[i..end];
        let single = if w.len() == 1 { w[0] | 0x20 } else { 0 };
        match self.at(end) {
            Some(b'\'') if matches!(single, b'e' | b'b' | b'x' | b'n') => {
                let backslash = self.mysql || single == b'e';
                (Kind::Str, self.quoted(end, b'\'', backslash))
            }
            Some(b'\'') if self.mysql && w[0] == b'_' => (Kind::Str, self.quoted(end, b'\'', true)),
            Some(b'&') if !self.mysql && single == b'u' => match self.at(end + 1) {
                Some(b'\'') => (Kind::Str, self.quoted(end + 1, b'\'', false)),
                Some(b'"') => (Kind::QuotedIdent, self.quoted(end + 1, b'"', false)),
                _ => (Kind::Word, end),
            },
            _ => (Kind::Word, end),
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        if start >= self.b.len() {
            return None;
        }
        let (kind, end) = self.token_at(start);
        // Escapes may step past the end; never stand still.
        self.pos = end.clamp(start + 1, self.b.len());
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

fn skip(b: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    from + b[from.min(b.len())..]
        .iter()
        .take_while(|&&c| pred(c))
        .count()
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Non-ASCII bytes count as identifier characters: unicode identifiers
/// stay whole and token boundaries stay on char boundaries.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}
