//! PostgreSQL frontend/backend protocol v3 over one connection, both
//! directions: startup (SSL/GSS negotiation, authentication), simple query,
//! extended query with named and unnamed statements and portals,
//! pipelining, errors (the server skips to Sync), COPY in both directions
//! and asynchronous notices. Input is what the kernel captured per syscall;
//! output is one `DbOperation` per Query and per Execute.
//!
//! Hand-written rather than a crate: the client libraries (tokio-postgres,
//! postgres-protocol) parse backend messages from complete buffers only,
//! and nothing maintained parses frontend messages from partial captures.

mod detect;
mod framer;
mod message;

pub use detect::detect;

use crate::db::{Answer, DbConnection, DbError, DbEvent, DbOperation, DbSystem, Segment, Timing};
use framer::{Cursor, Framer, Mode, Msg, Pull};
use message::{
    be32, cstr, error_fields, startup_database, tag_rows, text, CANCEL_REQUEST, GSSENC_REQUEST,
    PROTOCOL_3, SSL_REQUEST,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// Requests waiting for an answer (a pipelined Execute costs 3-4).
const MAX_PENDING: usize = 1024;
/// Named prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 256;
/// Bytes of statement text remembered per connection.
const MAX_STATEMENT_BYTES: usize = 1 << 20;
/// Named portals remembered per connection (they live for a transaction).
const MAX_PORTALS: usize = 64;

/// Every `DbEvent::Error` name this parser reports.
pub const ERROR_KINDS: &[&str] = &[
    "sync_lost",
    "responses_lost",
    "too_many_pending",
    "unexpected_response",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The client's next message is length-first (startup, SSL/GSS/cancel request).
    Startup,
    /// SSLRequest / GSSENCRequest sent: the server answers one byte.
    Negotiating,
    /// Tagged messages both ways (authentication and after).
    Ready,
    /// The server agreed to TLS: the rest is read once the TLS library's
    /// plaintext arrives (`DbConnection::tls_plaintext`).
    Tls,
    /// GSS encryption or cancel: nothing more to read.
    Opaque,
}

impl Phase {
    /// Nothing on the wire is parsed now: encrypted, or not followed.
    fn unread(self) -> bool {
        matches!(self, Phase::Opaque | Phase::Tls)
    }
}

/// A Query or Execute waiting for its answer.
#[derive(Debug, Clone)]
struct Op {
    text: Option<Arc<str>>,
    prepared: bool,
    start: Timing,
    rows: Option<u64>,
    data_rows: u64,
    error: Option<DbError>,
    /// Exit time of the last answer seen (for close()).
    answered_ns: Option<u64>,
}

/// What the server owes, in order.
#[derive(Debug, Clone)]
enum Item {
    Parse,
    Bind,
    Describe,
    Close,
    Execute(Box<Op>),
    /// Answered by ReadyForQuery.
    Sync,
    /// Simple query: answered by results, then ReadyForQuery.
    Query(Box<Op>),
    /// FunctionCall: FunctionCallResponse, then ReadyForQuery.
    Call,
}

impl Item {
    /// Ends a group: ReadyForQuery answers it.
    fn ends_group(&self) -> bool {
        matches!(self, Item::Sync | Item::Query(_) | Item::Call)
    }
}

/// A named portal and the text of the statement it was bound to.
type Portal = (Box<[u8]>, Option<Arc<str>>);

/// Protocol state shared by both directions (framers are kept apart so a
/// message borrowed from one framer can update this).
#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    namespace: Option<String>,
    pending: VecDeque<Item>,
    /// Named prepared statements, oldest first.
    statements: VecDeque<(Box<[u8]>, Arc<str>)>,
    /// Text bytes held by `statements`.
    statement_bytes: usize,
    unnamed_statement: Option<Arc<str>>,
    /// Portal name → text of the statement it was bound to.
    portals: VecDeque<Portal>,
    unnamed_portal: Option<Arc<str>>,
    /// First Parse/Bind segment of the batch the next Execute belongs to.
    batch_start: Option<Timing>,
    /// The last client message was cut by the capture: its tag, and the
    /// text if it was a Parse. When the bytes after it are lost, a big Parse
    /// was most likely followed by the Bind of the unnamed portal.
    last_cut: Option<(u8, Option<Arc<str>>)>,
    /// Server bytes were lost: answers may be missing until the next
    /// ReadyForQuery.
    gap: bool,
}

/// Tracks one PostgreSQL connection. Holds at most the pending requests,
/// the statement cache and one partial message per direction.
#[derive(Debug, Clone)]
pub struct PostgresConnection {
    client: Framer,
    server: Framer,
    st: State,
}

impl Default for PostgresConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl PostgresConnection {
    pub fn new() -> Self {
        Self {
            client: Framer::new(true),
            server: Framer::new(false),
            st: State {
                phase: Phase::Startup,
                namespace: None,
                pending: VecDeque::new(),
                statements: VecDeque::new(),
                statement_bytes: 0,
                unnamed_statement: None,
                portals: VecDeque::new(),
                unnamed_portal: None,
                batch_start: None,
                last_cut: None,
                gap: false,
            },
        }
    }

    /// True once the rest of the connection is encrypted (or cancelled).
    pub fn is_opaque(&self) -> bool {
        self.st.phase.unread()
    }

    /// Requests waiting for an answer (for tests and memory accounting).
    pub fn pending(&self) -> usize {
        self.st.pending.len()
    }
}

impl DbConnection for PostgresConnection {
    fn feed(&mut self, from_client: bool, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        let Self { client, server, st } = self;
        if st.phase.unread() || seg.total_len == 0 {
            return;
        }
        let framer = if from_client { client } else { server };
        // Joined mid-stream: the first bytes are not a startup packet, or
        // the server speaks before the client did.
        if st.phase == Phase::Startup
            && framer.idle()
            && (!from_client || !detect::maybe_startup(seg.data))
        {
            st.phase = Phase::Ready;
        }
        let mut cur = Cursor::new(seg);
        loop {
            let mode = match (st.phase, from_client) {
                (Phase::Startup, true) => Mode::Startup,
                (Phase::Negotiating, false) => Mode::OneByte,
                _ => Mode::Tagged,
            };
            match framer.next(&mut cur, mode) {
                None => break,
                Some(Pull::Lost) => st.lost(from_client, out),
                Some(Pull::Msg(m)) if from_client => st.client_msg(&m, out),
                Some(Pull::Msg(m)) => st.server_msg(&m, seg.timing.exit_ns, out),
            }
            if st.phase.unread() {
                break;
            }
        }
    }

    fn awaits_tls(&self) -> bool {
        self.st.phase == Phase::Tls
    }

    fn tls_plaintext(&mut self) {
        // The session inside TLS starts over with the client's StartupMessage.
        if self.st.phase == Phase::Tls {
            self.client = Framer::new(true);
            self.server = Framer::new(false);
            self.st.phase = Phase::Startup;
        }
    }

    fn close(&mut self, closed_ns: u64, out: &mut Vec<DbEvent>) {
        // After lost server bytes, what is pending may have been answered
        // among them: only answers seen are reported.
        let sure = !self.st.gap;
        for item in std::mem::take(&mut self.st.pending) {
            let (Item::Query(op) | Item::Execute(op)) = item else {
                continue;
            };
            match op.answered_ns {
                // A simple query answered but whose ReadyForQuery never came.
                Some(end) => out.push(self.st.report(*op, end, Answer::Complete)),
                None if sure => {
                    // Cut short by the close: rows may have come, not their end.
                    let answer = if op.data_rows > 0 {
                        Answer::Incomplete
                    } else {
                        Answer::Missing
                    };
                    out.push(self.st.report(*op, closed_ns, answer));
                }
                None => {}
            }
        }
    }
}

impl State {
    fn report(&self, op: Op, end_ns: u64, answer: Answer) -> DbEvent {
        DbEvent::Operation(Box::new(DbOperation {
            system: DbSystem::Postgresql,
            query_text: op.text.map(|t| t.to_string()),
            operation: None,
            namespace: self.namespace.clone(),
            prepared: op.prepared,
            error: op.error,
            rows: op.rows,
            request_start: op.start,
            response_end_ns: end_ns,
            answer,
        }))
    }

    fn push(&mut self, item: Item, out: &mut Vec<DbEvent>) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            out.push(DbEvent::Error("too_many_pending"));
        }
        self.pending.push_back(item);
    }

    fn lost(&mut self, from_client: bool, out: &mut Vec<DbEvent>) {
        out.push(DbEvent::Error("sync_lost"));
        if from_client {
            if self.phase == Phase::Startup {
                self.phase = Phase::Ready;
            }
            // The lost bytes may have parsed and bound the unnamed statement
            // and portal again: keep only what the cut message tells.
            match self.last_cut.take() {
                Some((b'P', text)) => self.unnamed_portal = text,
                Some((b'B', _)) => {}
                _ => {
                    self.unnamed_portal = None;
                    self.unnamed_statement = None;
                }
            }
        } else {
            // Answers to what is pending may be among the lost bytes; when
            // nothing is, whatever comes next answers what comes next.
            self.gap = !self.pending.is_empty();
        }
    }

    fn client_msg(&mut self, m: &Msg<'_>, out: &mut Vec<DbEvent>) {
        let body = m.body;
        self.last_cut = m.cut.then_some((m.tag, None));
        match (self.phase, m.tag) {
            // A cut packet still tells its kind by length: requests are
            // 8 bytes, CancelRequest 16, StartupMessage longer.
            (Phase::Startup, 0) => match be32(body).or(match m.len + 4 {
                8 => Some(SSL_REQUEST),
                16 => Some(CANCEL_REQUEST),
                _ => Some(PROTOCOL_3),
            }) {
                Some(PROTOCOL_3) => {
                    self.namespace = startup_database(body.get(4..).unwrap_or_default());
                    self.phase = Phase::Ready;
                }
                Some(SSL_REQUEST | GSSENC_REQUEST) => self.phase = Phase::Negotiating,
                Some(CANCEL_REQUEST) => self.phase = Phase::Opaque,
                // Protocol 2 or unknown: not something we follow.
                _ => self.phase = Phase::Opaque,
            },
            (_, b'Q') => {
                let (q, _) = cstr(body);
                let op = self.new_op(Some(Arc::from(text(q, m.cut))), false, m.start);
                self.push(Item::Query(op), out);
            }
            (_, b'P') => {
                let (name, rest) = cstr(body);
                let (q, _) = cstr(rest);
                let q: Arc<str> = Arc::from(text(q, m.cut && q.len() == rest.len()));
                self.batch_start.get_or_insert(m.start);
                if m.cut {
                    self.last_cut = Some((b'P', Some(q.clone())));
                }
                if name.is_empty() {
                    self.unnamed_statement = Some(q);
                } else {
                    self.forget_statement(name);
                    while self.statements.len() >= MAX_STATEMENTS
                        || self.statement_bytes + q.len() > MAX_STATEMENT_BYTES
                    {
                        let Some((_, old)) = self.statements.pop_front() else {
                            break;
                        };
                        self.statement_bytes -= old.len();
                    }
                    self.statement_bytes += q.len();
                    self.statements.push_back((name.into(), q));
                }
                self.push(Item::Parse, out);
            }
            (_, b'B') => {
                let (portal, rest) = cstr(body);
                let (stmt, _) = cstr(rest);
                self.batch_start.get_or_insert(m.start);
                let q = if stmt.is_empty() {
                    self.unnamed_statement.clone()
                } else {
                    self.statements
                        .iter()
                        .find(|(n, _)| **n == *stmt)
                        .map(|(_, q)| q.clone())
                };
                if portal.is_empty() {
                    self.unnamed_portal = q;
                } else {
                    self.portals.retain(|(n, _)| **n != *portal);
                    if self.portals.len() >= MAX_PORTALS {
                        self.portals.pop_front();
                    }
                    self.portals.push_back((portal.into(), q));
                }
                self.push(Item::Bind, out);
            }
            (_, b'E') => {
                let (portal, _) = cstr(body);
                let q = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    self.portals
                        .iter()
                        .find(|(n, _)| **n == *portal)
                        .and_then(|(_, q)| q.clone())
                };
                let start = self.batch_start.take().unwrap_or(m.start);
                let op = self.new_op(q, true, start);
                self.push(Item::Execute(op), out);
            }
            (_, b'D') => self.push(Item::Describe, out),
            (_, b'C') => {
                let (kind, rest) = body.split_first().unwrap_or((&0, &[]));
                let (name, _) = cstr(rest);
                match kind {
                    b'S' if name.is_empty() => self.unnamed_statement = None,
                    b'S' => self.forget_statement(name),
                    b'P' if name.is_empty() => self.unnamed_portal = None,
                    b'P' => self.portals.retain(|(n, _)| **n != *name),
                    _ => {}
                }
                self.push(Item::Close, out);
            }
            (_, b'S') => {
                self.batch_start = None;
                self.push(Item::Sync, out);
            }
            (_, b'F') => self.push(Item::Call, out),
            // Flush, Terminate, CopyData/Done/Fail, password/SASL: no answer
            // of their own (COPY's answer belongs to its Query/Execute).
            _ => {}
        }
    }

    fn forget_statement(&mut self, name: &[u8]) {
        if let Some(i) = self.statements.iter().position(|(n, _)| **n == *name) {
            if let Some((_, q)) = self.statements.remove(i) {
                self.statement_bytes -= q.len();
            }
        }
    }

    fn new_op(&self, text: Option<Arc<str>>, prepared: bool, start: Timing) -> Box<Op> {
        Box::new(Op {
            text,
            prepared,
            start,
            rows: None,
            data_rows: 0,
            error: None,
            answered_ns: None,
        })
    }

    fn server_msg(&mut self, m: &Msg<'_>, end_ns: u64, out: &mut Vec<DbEvent>) {
        if self.phase == Phase::Negotiating {
            // 'N': go on in plaintext; 'S'/'G': TLS / GSS encryption follows.
            self.phase = match m.tag {
                b'N' => Phase::Startup,
                b'S' => Phase::Tls,
                _ => Phase::Opaque,
            };
            return;
        }
        if self.gap && m.tag != b'Z' && !self.sure_after_gap(m) {
            return; // which request this answers is unknown
        }
        match m.tag {
            b'1' => self.pop_if(|i| matches!(i, Item::Parse)),
            b'2' => self.pop_if(|i| matches!(i, Item::Bind)),
            b'3' => self.pop_if(|i| matches!(i, Item::Close)),
            // Describe ends with RowDescription or NoData (a statement's
            // ParameterDescription comes first); in a simple query,
            // RowDescription just starts a result.
            b'T' | b'n' => self.pop_if(|i| matches!(i, Item::Describe)),
            b'D' => {
                if let Some(Item::Execute(op) | Item::Query(op)) = self.pending.front_mut() {
                    op.data_rows += 1;
                }
            }
            b'C' | b'I' | b's' => {
                let rows = if m.tag == b'C' {
                    tag_rows(m.body)
                } else {
                    None
                };
                match self.pending.front_mut() {
                    Some(Item::Query(op)) => {
                        op.rows = rows;
                        op.answered_ns = Some(end_ns);
                    }
                    Some(Item::Execute(op)) => {
                        op.rows = if m.tag == b's' {
                            Some(op.data_rows)
                        } else {
                            rows
                        };
                        if let Some(Item::Execute(op)) = self.pending.pop_front() {
                            out.push(self.report(*op, end_ns, Answer::Complete));
                        }
                    }
                    _ => out.push(DbEvent::Error("unexpected_response")),
                }
            }
            b'E' => self.error(m, end_ns, out),
            b'Z' => self.ready(end_ns, out),
            // ParameterStatus, BackendKeyData, Authentication, Notice,
            // Notification, COPY responses and data, FunctionCallResponse,
            // NegotiateProtocolVersion, ParameterDescription: nothing owed.
            _ => {}
        }
    }

    /// After lost server bytes, an answer read from a segment's tail is
    /// sure to be for the one operation outstanding, when there is exactly
    /// one: anything else the lost bytes answered would have to be pending too.
    fn sure_after_gap(&self, m: &Msg<'_>) -> bool {
        let mut ops = self
            .pending
            .iter()
            .filter(|i| matches!(i, Item::Execute(_) | Item::Query(_)));
        m.recovered
            && matches!(m.tag, b'C' | b'E' | b'I')
            && self.pending.iter().filter(|i| i.ends_group()).count() == 1
            && ops.next().is_some()
            && ops.next().is_none()
    }

    fn pop_if(&mut self, f: impl Fn(&Item) -> bool) {
        if self.pending.front().is_some_and(f) {
            self.pending.pop_front();
        }
    }

    /// An ErrorResponse answers the request at the front. In a simple
    /// query it ends the query; in the extended protocol the server then
    /// skips everything up to Sync, so the Executes skipped did not run.
    fn error(&mut self, m: &Msg<'_>, end_ns: u64, out: &mut Vec<DbEvent>) {
        match self.pending.front_mut() {
            // Outside any request (authentication failure, shutdown) or an
            // error at Sync itself (a failed COMMIT of an implicit transaction
            // reports at Sync): nothing to attach it to.
            None | Some(Item::Sync | Item::Call) => {}
            Some(Item::Query(op)) => {
                op.error = Some(error_fields(m.body));
                op.answered_ns = Some(end_ns);
            }
            Some(_) => {
                // The failing Parse/Bind/Describe belongs to the next Execute.
                let mut reported = false;
                while let Some(item) = self.pending.front() {
                    if item.ends_group() {
                        break;
                    }
                    if let Some(Item::Execute(mut op)) = self.pending.pop_front() {
                        if !reported {
                            op.error = Some(error_fields(m.body));
                            out.push(self.report(*op, end_ns, Answer::Complete));
                            reported = true;
                        }
                    }
                }
            }
        }
    }

    /// ReadyForQuery answers the oldest Sync or Query.
    fn ready(&mut self, end_ns: u64, out: &mut Vec<DbEvent>) {
        if std::mem::take(&mut self.gap)
            && self.pending.iter().filter(|i| i.ends_group()).count() > 1
        {
            // After lost server bytes this may answer any of the groups
            // pending (their own ReadyForQuery may be among the lost bytes):
            // only with one is it unambiguous. Drop them rather than guess.
            out.push(DbEvent::Error("responses_lost"));
            self.pending.clear();
            return;
        }
        if !self.pending.iter().any(Item::ends_group) {
            // Answers to requests we never saw (client bytes lost): drop
            // what is left unanswered rather than mismatch it later.
            self.pending.clear();
            return;
        }
        while let Some(item) = self.pending.pop_front() {
            match item {
                Item::Query(op) => {
                    out.push(self.report(*op, end_ns, Answer::Complete));
                    break;
                }
                Item::Sync | Item::Call => break,
                // Unanswered Execute (its answer was lost): not reported
                // rather than reported wrong.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
