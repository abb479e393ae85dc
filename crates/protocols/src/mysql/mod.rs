//! MySQL / MariaDB client/server protocol over one connection, both
//! directions: greeting, login (SSL request → opaque, auth switch and more
//! data), text queries, server-side prepared statements (binary protocol),
//! multiple result sets, LOCAL INFILE, errors. Input is what the kernel
//! captured per syscall; output is one `DbOperation` per COM_QUERY, per
//! COM_STMT_EXECUTE / COM_STMT_BULK_EXECUTE, and per COM_STMT_PREPARE that
//! failed (there is no execute to carry that error).
//!
//! Not operations: COM_INIT_DB (it only changes the namespace, on OK),
//! COM_PING, COM_STMT_RESET / CLOSE / SEND_LONG_DATA / FETCH, COM_QUIT and
//! the login exchange: they are connection housekeeping, and health-check
//! pings would drown real statements.
//!
//! Hand-written rather than a crate: the MySQL client crates parse complete
//! server packets only, and none reads client packets from partial captures.

mod compress;
mod detect;
mod framer;
mod packet;

pub use detect::detect;

use crate::db::{Answer, DbConnection, DbError, DbEvent, DbOperation, DbSystem, Segment, Timing};
use compress::Inflater;
use framer::{Framer, Packet};
use packet::{
    cmd, CLIENT_COMPRESS, CLIENT_DEPRECATE_EOF, CLIENT_ZSTD_COMPRESSION,
    SERVER_MORE_RESULTS_EXISTS, SERVER_STATUS_CURSOR_EXISTS,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// Commands waiting for their answer (clients rarely pipeline; STMT_CLOSE
/// and SEND_LONG_DATA have no answer and never queue).
const MAX_PENDING: usize = 64;
/// Prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 256;
/// Bytes of statement text remembered per connection.
const MAX_STATEMENT_BYTES: usize = 1 << 20;
/// Client payload bytes kept per packet: the statement text we report.
const CLIENT_KEEP: usize = 32 * 1024;
/// Server payload bytes kept per packet: enough for OK (with session
/// state), ERR and prepare-OK; rows are counted, not read.
const SERVER_KEEP: usize = 1024;

/// Every `DbEvent::Error` name this parser reports.
pub const ERROR_KINDS: &[&str] = &["sync_lost", "too_many_pending"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet: a greeting, a login, or a command (joined late).
    Start,
    /// Greeting seen: the client logs in (or asks for TLS).
    Login,
    /// Authentication exchange until OK / ERR.
    Auth,
    Command,
    /// The client asked for TLS: the login goes on inside it, read from the
    /// TLS library's plaintext (`DbConnection::tls_plaintext`).
    Tls,
    /// Replication stream (or TLS without its plaintext): nothing more to read.
    Opaque,
}

impl Phase {
    /// Nothing on the wire is parsed now: encrypted, or not followed.
    fn unread(self) -> bool {
        matches!(self, Phase::Opaque | Phase::Tls)
    }
}

/// What a pending command is.
#[derive(Debug, Clone)]
enum Kind {
    /// Reported: COM_QUERY, COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE.
    Op(Box<Op>),
    /// COM_STMT_PREPARE and its text, remembered under the id the OK gives.
    Prepare(Box<Op>),
    /// COM_INIT_DB: the namespace changes on OK.
    InitDb(Option<String>),
    /// COM_STMT_FETCH: rows, then EOF.
    Fetch,
    /// COM_FIELD_LIST: column definitions, then EOF.
    FieldList,
    /// Answered by exactly one packet (ping, reset, statistics...).
    Single,
}

/// Where we are in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    /// Next packet starts a result (OK, ERR, LOCAL INFILE or column count).
    Result,
    /// Column definitions left to read.
    Columns(u64),
    /// After the definitions: a classic EOF, or rows directly.
    AfterColumns,
    Rows,
    /// LOCAL INFILE: the client sends the file, then an empty packet.
    Infile,
    /// Prepare OK: definitions of parameters then columns, each block
    /// followed by an EOF unless CLIENT_DEPRECATE_EOF.
    PrepareDefs {
        defs: u32,
        eofs: u8,
    },
}

/// A reported command in progress.
#[derive(Debug, Clone)]
struct Op {
    text: Option<Arc<str>>,
    prepared: bool,
    namespace: Option<String>,
    start: Timing,
    rows: u64,
    /// Rows stopped being countable (bytes lost).
    rows_unknown: bool,
    error: Option<DbError>,
}

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    resp: Resp,
    /// Exit time of the last answer packet seen.
    answered_ns: Option<u64>,
    /// Request exit time: an answer cannot end before it.
    sent_ns: u64,
}

#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    system: DbSystem,
    /// Server capabilities, then what both sides agreed on.
    caps: u32,
    /// Login seen: `caps` is exact (else mid-stream guesses).
    caps_known: bool,
    namespace: Option<String>,
    pending: VecDeque<Pending>,
    /// Statement id → text, oldest first.
    statements: VecDeque<(u32, Arc<str>)>,
    statement_bytes: usize,
    /// Server bytes were lost: answers are unreadable until the client's
    /// next command (or until a segment visibly ends an answer).
    server_lost: bool,
    /// Exit time of the last server segment.
    last_server_ns: u64,
    /// The client's command resynced the server side: its framer restarts.
    resync_server: bool,
    /// The login agreed on the compressed protocol, from the next byte on.
    compress_next: bool,
}

/// Tracks one MySQL connection. Holds at most the pending commands, the
/// statement cache and one partial packet per direction.
#[derive(Debug, Clone)]
pub struct MysqlConnection {
    client: Framer,
    server: Framer,
    st: State,
    /// Client's and server's frames, once the protocol is compressed.
    inflaters: Option<Box<Inflaters>>,
}

#[derive(Debug, Clone, Default)]
struct Inflaters {
    client: Inflater,
    server: Inflater,
}

impl Default for MysqlConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl MysqlConnection {
    pub fn new() -> Self {
        Self {
            client: Framer::new(CLIENT_KEEP),
            server: Framer::new(SERVER_KEEP),
            st: State {
                phase: Phase::Start,
                system: DbSystem::Mysql,
                caps: 0,
                caps_known: false,
                namespace: None,
                pending: VecDeque::new(),
                statements: VecDeque::new(),
                statement_bytes: 0,
                server_lost: false,
                last_server_ns: 0,
                resync_server: false,
                compress_next: false,
            },
            inflaters: None,
        }
    }

    /// True once the rest of the connection is encrypted (or replication).
    pub fn is_opaque(&self) -> bool {
        self.st.phase.unread()
    }

    /// True once the login agreed on the compressed protocol.
    pub fn is_compressed(&self) -> bool {
        self.inflaters.is_some() || self.st.compress_next
    }

    /// Commands waiting for an answer (for tests and memory accounting).
    pub fn pending(&self) -> usize {
        self.st.pending.len()
    }

    /// `Mysql` until a greeting naming MariaDB is seen.
    pub fn system(&self) -> DbSystem {
        self.st.system
    }
}

impl DbConnection for MysqlConnection {
    fn feed(&mut self, from_client: bool, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        let Self {
            client,
            server,
            st,
            inflaters,
        } = self;
        if st.phase.unread() || seg.total_len == 0 {
            return;
        }
        if std::mem::take(&mut st.compress_next) {
            *inflaters = Some(Box::default());
        }
        let Some(inf) = inflaters.as_deref_mut() else {
            return feed_packets(client, server, st, from_client, seg, out);
        };
        let (mine, theirs) = if from_client {
            (&mut inf.client, &mut inf.server)
        } else {
            (&mut inf.server, &mut inf.client)
        };
        // Each side writes whole frames: after the other side spoke, a lost
        // side's next segment starts a frame again.
        theirs.may_resync();
        if !from_client {
            st.last_server_ns = seg.timing.exit_ns;
        }
        let lost = mine.feed(seg, &mut |frame| {
            feed_packets(client, server, st, from_client, frame, out)
        });
        if lost {
            out.push(DbEvent::Error("sync_lost"));
            if !from_client {
                st.lose_server();
            }
        }
    }

    fn awaits_tls(&self) -> bool {
        self.st.phase == Phase::Tls
    }

    fn tls_plaintext(&mut self) {
        // The login goes on inside TLS with the full handshake response.
        if self.st.phase == Phase::Tls {
            self.client = Framer::new(CLIENT_KEEP);
            self.server = Framer::new(SERVER_KEEP);
            self.st.phase = Phase::Login;
        }
    }

    fn close(&mut self, closed_ns: u64, out: &mut Vec<DbEvent>) {
        // Answers cut short by the close: report what was seen. One whose
        // end went by uncaptured (reads larger than the capture) reads the
        // same as one the close cut, so a started answer counts as whole.
        while let Some(p) = self.st.pending.pop_front() {
            let Kind::Op(op) = p.kind else {
                continue;
            };
            let report = match p.answered_ns {
                Some(end) => self.st.report(*op, end, Answer::Complete),
                // Lost server bytes may have carried the answer.
                None if self.st.server_lost => continue,
                None => self
                    .st
                    .report(*op, closed_ns.max(p.sent_ns), Answer::Missing),
            };
            out.push(report);
        }
    }
}

/// One segment of the packet stream (as captured, or inflated from a frame).
fn feed_packets(
    client: &mut Framer,
    server: &mut Framer,
    st: &mut State,
    from_client: bool,
    seg: &Segment<'_>,
    out: &mut Vec<DbEvent>,
) {
    if st.phase.unread() || seg.total_len == 0 {
        return;
    }
    if from_client {
        let starts_command = client.idle() && detect::command_start(seg.data);
        // Joined mid-stream: wait for a login packet or a command.
        if st.phase == Phase::Start
            && client.idle()
            && !starts_command
            && seg.data.get(3) != Some(&1)
        {
            return;
        }
        // Resync at the next command: a segment starting with one.
        if client.is_lost() && detect::command_start(seg.data) {
            client.reset();
        }
        let lost = client.feed(seg, &mut |p| st.client_packet(p, seg.timing, out));
        if lost {
            out.push(DbEvent::Error("sync_lost"));
        }
        if std::mem::take(&mut st.resync_server) {
            server.reset();
        }
        return;
    }
    st.last_server_ns = seg.timing.exit_ns;
    // Joined mid-stream: server bytes before a greeting or the first
    // command may start anywhere in a packet.
    if st.phase == Phase::Start && server.idle() && !detect::maybe_greeting(seg.data) {
        return;
    }
    let lost = if server.is_lost() {
        false
    } else {
        server.feed(seg, &mut |p| st.server_packet(p, seg.timing.exit_ns, out))
    };
    if lost {
        out.push(DbEvent::Error("sync_lost"));
        st.lose_server();
    }
    if server.is_lost() {
        // A segment whose last bytes are a whole final packet ends the
        // answer in progress, and the next byte starts a packet again.
        let end: &[u8] = if seg.data.len() < seg.total_len {
            seg.tail
        } else {
            seg.data
        };
        if ends_answer(end) {
            st.finish_front(seg.timing.exit_ns, out);
            st.server_lost = false;
            server.reset();
        }
    }
}

/// Do these bytes (a segment's end) finish with a whole OK, EOF or ERR
/// packet saying no more results follow? Used only when lost.
fn ends_answer(end: &[u8]) -> bool {
    let tail = &end[end.len().saturating_sub(64)..];
    for i in 0..tail.len().saturating_sub(4) {
        let Some(len) = packet::u24le(&tail[i..]) else {
            break;
        };
        if i + 4 + len != tail.len() {
            continue;
        }
        let p = &tail[i + 4..];
        let status = match p[0] {
            0xfe if (5..9).contains(&len) => packet::u16le(p, 3),
            0x00 | 0xfe if len >= 7 => packet::ok(p, 0).map(|o| o.status),
            0xff if len >= 9 && p.get(3) == Some(&b'#') => Some(0),
            _ => None,
        };
        if let Some(s) = status {
            return s & SERVER_MORE_RESULTS_EXISTS == 0;
        }
    }
    false
}

impl State {
    /// Server bytes were lost: the answers in progress are unreadable, and
    /// their rows uncounted, until the client's next command.
    fn lose_server(&mut self) {
        self.server_lost = true;
        for p in self.pending.iter_mut() {
            if let Kind::Op(op) = &mut p.kind {
                op.rows_unknown = true;
            }
        }
    }

    fn report(&self, op: Op, end_ns: u64, answer: Answer) -> DbEvent {
        let rows = (answer == Answer::Complete && op.error.is_none() && !op.rows_unknown)
            .then_some(op.rows);
        DbEvent::Operation(Box::new(DbOperation {
            system: self.system,
            query_text: op.text.map(|t| t.to_string()),
            operation: None,
            namespace: op.namespace,
            prepared: op.prepared,
            error: op.error,
            rows,
            request_start: op.start,
            response_end_ns: end_ns,
            answer,
        }))
    }

    fn push(&mut self, kind: Kind, resp: Resp, sent: Timing, out: &mut Vec<DbEvent>) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            out.push(DbEvent::Error("too_many_pending"));
        }
        self.pending.push_back(Pending {
            kind,
            resp,
            answered_ns: None,
            sent_ns: sent.exit_ns,
        });
    }

    /// The front command's answer is complete.
    fn finish_front(&mut self, end_ns: u64, out: &mut Vec<DbEvent>) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        match p.kind {
            Kind::Op(op) => out.push(self.report(*op, end_ns.max(p.sent_ns), Answer::Complete)),
            Kind::Prepare(op) if op.error.is_some() => {
                out.push(self.report(*op, end_ns.max(p.sent_ns), Answer::Complete))
            }
            _ => {}
        }
    }

    fn remember(&mut self, id: u32, text: Arc<str>) {
        self.forget(id);
        while self.statements.len() >= MAX_STATEMENTS
            || (self.statement_bytes + text.len() > MAX_STATEMENT_BYTES
                && !self.statements.is_empty())
        {
            if let Some((_, t)) = self.statements.pop_front() {
                self.statement_bytes -= t.len();
            }
        }
        if text.len() <= MAX_STATEMENT_BYTES {
            self.statement_bytes += text.len();
            self.statements.push_back((id, text));
        }
    }

    fn forget(&mut self, id: u32) {
        if let Some(i) = self.statements.iter().position(|(s, _)| *s == id) {
            if let Some((_, t)) = self.statements.remove(i) {
                self.statement_bytes -= t.len();
            }
        }
    }

    fn statement(&self, id: u32) -> Option<Arc<str>> {
        self.statements
            .iter()
            .find(|(s, _)| *s == id)
            .map(|(_, t)| t.clone())
    }

    fn clear_statements(&mut self) {
        self.statements.clear();
        self.statement_bytes = 0;
    }

    fn client_packet(&mut self, p: &Packet<'_>, t: Timing, out: &mut Vec<DbEvent>) {
        match self.phase {
            Phase::Opaque | Phase::Tls => {}
            Phase::Start if p.seq == 1 => self.login(p),
            Phase::Login => self.login(p),
            // Auth switch replies and more-data exchanges: nothing to read.
            Phase::Auth => {}
            Phase::Command if self.pending.front().is_some_and(|f| f.resp == Resp::Infile) => {
                // LOCAL INFILE contents (any seq: it wraps); the empty packet ends them.
                if p.len == 0 {
                    if let Some(front) = self.pending.front_mut() {
                        front.resp = Resp::Result;
                    }
                }
            }
            Phase::Start | Phase::Command if p.seq == 0 => {
                self.phase = Phase::Command;
                self.command(p, t, out);
            }
            Phase::Start | Phase::Command => {}
        }
    }

    fn login(&mut self, p: &Packet<'_>) {
        let Some(login) = packet::handshake_response(p.body, p.len) else {
            self.phase = Phase::Auth;
            return;
        };
        if login.ssl {
            self.phase = Phase::Tls;
            return;
        }
        self.caps = if self.caps_known {
            self.caps & login.capabilities
        } else {
            login.capabilities
        };
        self.caps_known = true;
        if login.database.is_some() {
            self.namespace = login.database;
        }
        self.phase = Phase::Auth;
    }

    fn command(&mut self, p: &Packet<'_>, t: Timing, out: &mut Vec<DbEvent>) {
        let Some(&code) = p.body.first() else {
            return;
        };
        // Strictly request/answer: whatever is unanswered while the server
        // side is lost will not be read; report it with what we know.
        if self.server_lost {
            while !self.pending.is_empty() {
                self.finish_front(self.last_server_ns, out);
            }
            self.server_lost = false;
            self.resync_server = true;
        }
        let args = &p.body[1..];
        let op = |text: Option<Arc<str>>, prepared: bool, ns: &Option<String>| {
            Box::new(Op {
                text,
                prepared,
                namespace: ns.clone(),
                start: p.start,
                rows: 0,
                rows_unknown: false,
                error: None,
            })
        };
        let (kind, resp) = match code {
            cmd::QUERY => {
                let text = Arc::from(String::from_utf8_lossy(args).as_ref());
                (
                    Kind::Op(op(Some(text), false, &self.namespace)),
                    Resp::Result,
                )
            }
            cmd::STMT_PREPARE => {
                let text = Arc::from(String::from_utf8_lossy(args).as_ref());
                (
                    Kind::Prepare(op(Some(text), true, &self.namespace)),
                    Resp::Result,
                )
            }
            cmd::STMT_EXECUTE | cmd::STMT_BULK_EXECUTE => {
                let text = packet::u32le(args, 0).and_then(|id| self.statement(id));
                (Kind::Op(op(text, true, &self.namespace)), Resp::Result)
            }
            cmd::STMT_CLOSE => {
                if let Some(id) = packet::u32le(args, 0) {
                    self.forget(id);
                }
                return;
            }
            cmd::STMT_SEND_LONG_DATA | cmd::QUIT => return,
            cmd::INIT_DB => {
                let db = (!args.is_empty()).then(|| packet::text(args, 256));
                (Kind::InitDb(db), Resp::Result)
            }
            cmd::STMT_FETCH => (Kind::Fetch, Resp::Rows),
            cmd::FIELD_LIST => (Kind::FieldList, Resp::Rows),
            cmd::CHANGE_USER => {
                self.namespace = packet::login_database(args, 0, self.caps);
                self.clear_statements();
                self.pending.clear();
                self.phase = Phase::Auth;
                return;
            }
            cmd::RESET_CONNECTION => {
                self.clear_statements();
                (Kind::Single, Resp::Result)
            }
            cmd::BINLOG_DUMP | cmd::BINLOG_DUMP_GTID => {
                self.phase = Phase::Opaque;
                return;
            }
            _ => (Kind::Single, Resp::Result),
        };
        self.push(kind, resp, t, out);
    }

    fn server_packet(&mut self, p: &Packet<'_>, exit_ns: u64, out: &mut Vec<DbEvent>) {
        let body = p.body;
        let Some(&first) = body.first() else {
            return;
        };
        match self.phase {
            Phase::Opaque | Phase::Tls => return,
            Phase::Start | Phase::Login if p.seq == 0 => {
                if let Some(g) = packet::greeting(body) {
                    if g.mariadb {
                        self.system = DbSystem::Mariadb;
                    }
                    self.caps = g.capabilities;
                    self.caps_known = true;
                    self.phase = Phase::Login;
                }
                return;
            }
            Phase::Start | Phase::Login => return,
            Phase::Auth => {
                match first {
                    0x00 => {
                        if let Some(ok) = packet::ok(body, self.caps) {
                            if ok.schema.is_some() {
                                self.namespace = ok.schema;
                            }
                        }
                        self.phase = Phase::Command;
                        // What follows the OK is compressed if both asked
                        // (zlib; zstd frames are not read).
                        if self.caps_known && self.caps & CLIENT_ZSTD_COMPRESSION != 0 {
                            self.phase = Phase::Opaque;
                        } else if self.caps_known && self.caps & CLIENT_COMPRESS != 0 {
                            self.compress_next = true;
                        }
                    }
                    0xff => self.phase = Phase::Command,
                    // 0xfe auth switch, 0x01 more data: the exchange goes on.
                    _ => {}
                }
                return;
            }
            Phase::Command => {}
        }
        self.answer(p, first, exit_ns, out);
    }

    /// A packet of the answer to the front command.
    fn answer(&mut self, p: &Packet<'_>, first: u8, exit_ns: u64, out: &mut Vec<DbEvent>) {
        let caps = self.caps;
        let deprecate_eof = self.caps_known && caps & CLIENT_DEPRECATE_EOF != 0;
        let Some(front) = self.pending.front_mut() else {
            return; // an answer to a command we did not see
        };
        let body = p.body;
        // Without the login we guess CLIENT_DEPRECATE_EOF off; an answer's
        // first packet has seq 1, so a prepare still waiting for an EOF
        // that never comes is over when the next answer starts.
        if p.seq == 1 && matches!(front.resp, Resp::PrepareDefs { defs: 0, .. }) {
            let end = front.answered_ns.unwrap_or(exit_ns);
            self.finish_front(end, out);
            return self.answer(p, first, exit_ns, out);
        }
        front.answered_ns = Some(exit_ns);
        let mut done = false;
        let mut remember = None;
        match front.resp {
            Resp::Result => match first {
                _ if matches!(front.kind, Kind::Single) => done = true,
                0x00 => {
                    let ok = packet::ok(body, caps).unwrap_or_default();
                    if ok.schema.is_some() {
                        self.namespace.clone_from(&ok.schema);
                    }
                    match &mut front.kind {
                        Kind::Op(op) => op.rows = op.rows.saturating_add(ok.affected),
                        Kind::InitDb(db) => self.namespace = db.take(),
                        Kind::Prepare(op) => {
                            let cols = packet::u16le(body, 5).unwrap_or(0) as u32;
                            let params = packet::u16le(body, 7).unwrap_or(0) as u32;
                            let eofs = if deprecate_eof {
                                0
                            } else {
                                (cols > 0) as u8 + (params > 0) as u8
                            };
                            if let (Some(id), Some(text)) = (packet::u32le(body, 1), &op.text) {
                                remember = Some((id, text.clone()));
                            }
                            front.resp = Resp::PrepareDefs {
                                defs: cols + params,
                                eofs,
                            };
                        }
                        _ => {}
                    }
                    done = match front.resp {
                        Resp::PrepareDefs { defs, eofs } => defs == 0 && eofs == 0,
                        _ => ok.status & SERVER_MORE_RESULTS_EXISTS == 0,
                    };
                }
                0xff => match packet::err(body) {
                    Some(e) => {
                        if let Kind::Op(op) | Kind::Prepare(op) = &mut front.kind {
                            op.error = Some(e);
                        }
                        done = true;
                    }
                    None => front.answered_ns = None, // progress report
                },
                0xfb if matches!(front.kind, Kind::Op(_)) => front.resp = Resp::Infile,
                0xfe => done = true,
                _ => match packet::lenenc(body, 0) {
                    Some((n, _)) if n > 0 => front.resp = Resp::Columns(n),
                    _ => done = true,
                },
            },
            Resp::Columns(n) => {
                front.resp = if n > 1 {
                    Resp::Columns(n - 1)
                } else {
                    Resp::AfterColumns
                };
            }
            Resp::AfterColumns | Resp::Rows => {
                let after_columns = front.resp == Resp::AfterColumns;
                front.resp = Resp::Rows;
                if after_columns && packet::is_eof(body, p.len) {
                    // Classic EOF after the definitions. A cursor was
                    // opened instead of sending rows: COM_STMT_FETCH reads them.
                    let status = packet::u16le(body, 3).unwrap_or(0);
                    done = status & SERVER_STATUS_CURSOR_EXISTS != 0;
                } else if packet::is_terminator(body, p.len) {
                    let status = packet::eof_status(body, p.len).unwrap_or(0);
                    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        front.resp = Resp::Result;
                    } else {
                        done = true;
                    }
                } else if first == 0xff {
                    if let Some(e) = packet::err(body) {
                        if let Kind::Op(op) = &mut front.kind {
                            op.error = Some(e);
                        }
                        done = true;
                    }
                } else if let Kind::Op(op) = &mut front.kind {
                    op.rows += 1;
                }
            }
            Resp::Infile => {}
            Resp::PrepareDefs { defs, eofs } => {
                if packet::is_eof(body, p.len) && eofs > 0 {
                    front.resp = Resp::PrepareDefs {
                        defs,
                        eofs: eofs - 1,
                    };
                    done = defs == 0 && eofs == 1;
                } else if defs > 0 {
                    front.resp = Resp::PrepareDefs {
                        defs: defs - 1,
                        eofs,
                    };
                    done = defs == 1 && eofs == 0;
                }
            }
        }
        if let Some((id, text)) = remember {
            self.remember(id, text);
        }
        if done {
            self.finish_front(exit_ns, out);
        }
    }
}

#[cfg(test)]
mod tests;
