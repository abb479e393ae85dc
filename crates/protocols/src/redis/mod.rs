//! Redis (RESP2 and RESP3) over one connection: one operation per command,
//! matched to replies in order (pipelining), MULTI/EXEC, Pub/Sub, MONITOR,
//! SELECT, and captures cut short by the kernel's per-syscall limit.
//!
//! Transactions: commands inside MULTI are held until EXEC (or DISCARD)
//! answers. When the EXEC reply is an array with one element per `+QUEUED`
//! command, each gets its real outcome (error, rows) from its element and
//! ends with the EXEC reply; otherwise (EXECABORT, WATCH failure, DISCARD,
//! joined mid-transaction) they are reported as they stood at `+QUEUED`.

mod command;
mod resp;

pub use command::{detect, render};
pub use resp::{ReadError, Reader, Value};

use crate::db::{Answer, DbConnection, DbError, DbEvent, DbOperation, DbSystem, Segment, Timing};
use std::collections::VecDeque;

/// Commands waiting for a reply (pipelining depth); beyond it commands are
/// only counted, so replies still line up.
const MAX_PENDING: usize = 1024;
/// Commands held between MULTI and EXEC.
const MAX_MULTI: usize = 1024;

/// What a command's reply means for the connection's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Plain,
    /// Inside MULTI: held until EXEC/DISCARD.
    Queued,
    Exec,
    Discard,
    Monitor,
    Reset,
    /// SELECT: the namespace before it, restored if the server refuses.
    Select(Option<String>),
    /// (UN)SUBSCRIBE family: answered by one confirmation per channel,
    /// tagged with the lower-case command name.
    Pubsub {
        word: String,
        left: u32,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    op: DbOperation,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Slot {
    Cmd(Box<Pending>),
    /// Commands past MAX_PENDING: their replies are skipped.
    Skip(u64),
    /// The client stream lost sync: an unknown number of commands went by.
    /// Replies are dropped until one arrives in a server segment that began
    /// after the next command we could read was sent (`until_ns`).
    Lost {
        until_ns: Option<u64>,
    },
}

/// A command between MULTI and EXEC, with its `+QUEUED` (or error) answer.
#[derive(Debug, Clone)]
struct Held {
    op: DbOperation,
    queued: bool,
}

/// The server stream lost sync while these many slots were waiting.
#[derive(Debug, Clone)]
struct LostReplies {
    slots: usize,
    partial: Option<Value>,
    last_exit_ns: u64,
}

/// One Redis connection, both directions.
#[derive(Debug, Clone)]
pub struct RedisConnection {
    client: Reader,
    server: Reader,
    /// Waiting for a segment that starts at a message boundary.
    client_resync: bool,
    server_resync: bool,
    /// Timing of the segment where the unfinished client value began.
    client_start: Timing,
    pending: VecDeque<Slot>,
    held: Vec<Held>,
    /// MULTI sent, EXEC/DISCARD not yet.
    in_multi: bool,
    /// A SUBSCRIBE-family command is active: RESP2 arrays tagged `message`
    /// etc. are deliveries, not replies.
    subscribed: bool,
    /// MONITOR accepted: the server streams `+...` lines from now on.
    monitoring: bool,
    namespace: Option<String>,
    server_lost: Option<LostReplies>,
    values: Vec<Value>,
}

impl Default for RedisConnection {
    fn default() -> Self {
        Self::new()
    }
}

const PUBSUB_WORDS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
];
const DELIVERY_WORDS: &[&str] = &["message", "pmessage", "smessage"];

impl RedisConnection {
    pub fn new() -> Self {
        Self {
            client: Reader::new(true),
            server: Reader::new(false),
            client_resync: false,
            server_resync: false,
            client_start: Timing::default(),
            pending: VecDeque::new(),
            held: Vec::new(),
            in_multi: false,
            subscribed: false,
            monitoring: false,
            namespace: None,
            server_lost: None,
            values: Vec::new(),
        }
    }

    fn feed_client(&mut self, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        if self.client_resync {
            if !detect(true, seg.data) {
                return;
            }
            self.client_resync = false;
            self.client.reset();
        }
        let carried = !self.client.is_idle();
        let mut values = std::mem::take(&mut self.values);
        let mut first = true;
        let mut result = Ok(());
        for piece in pieces(seg) {
            values.clear();
            result = match piece {
                Piece::Bytes(b) => self.client.bytes(b, &mut values),
                Piece::Gap(n) => self.client.gap(n, &mut values),
            };
            for v in values.drain(..) {
                let start = if first && carried {
                    self.client_start
                } else {
                    seg.timing
                };
                first = false;
                self.on_command(&v, start, out);
            }
            if result.is_err() {
                break;
            }
        }
        self.values = values;
        if let Err(e) = result {
            out.push(DbEvent::Error(e.name()));
            // A big command cut mid-way (MSET of thousands of keys) is still
            // one command: report it from what was read.
            if let Some(v) = self.client.partial() {
                let start = if first && carried {
                    self.client_start
                } else {
                    seg.timing
                };
                if v.kind == b'*' {
                    self.on_command(&v, start, out);
                }
            }
            if !matches!(self.pending.back(), Some(Slot::Lost { until_ns: None })) {
                self.pending.push_back(Slot::Lost { until_ns: None });
            }
            self.client.reset();
            self.client_resync = true;
        } else if !self.client.is_idle() && (!carried || !first) {
            self.client_start = seg.timing;
        }
    }

    fn on_command(&mut self, v: &Value, start: Timing, out: &mut Vec<DbEvent>) {
        // The client moved on: replies lost with the server stream are over.
        self.finish_lost_replies(out);
        let Some((operation, text)) = render(v) else {
            out.push(DbEvent::Error("protocol"));
            return;
        };
        if let Some(Slot::Lost { until_ns: u @ None }) = self.pending.back_mut() {
            *u = Some(start.enter_ns);
        }
        let arg = |i: usize| v.children.get(i).map(|a| String::from_utf8_lossy(&a.text));
        let mut kind = if self.in_multi {
            Kind::Queued
        } else {
            Kind::Plain
        };
        match operation.as_str() {
            "MULTI" => self.in_multi = true,
            "EXEC" => {
                self.in_multi = false;
                kind = Kind::Exec;
            }
            "DISCARD" => {
                self.in_multi = false;
                kind = Kind::Discard;
            }
            "SELECT" if !self.in_multi => {
                if let Some(db) = arg(1).filter(|d| d.bytes().all(|b| b.is_ascii_digit())) {
                    kind = Kind::Select(self.namespace.replace(db.into_owned()));
                }
            }
            "MONITOR" => kind = Kind::Monitor,
            "RESET" => kind = Kind::Reset,
            "SUBSCRIBE" | "UNSUBSCRIBE" | "PSUBSCRIBE" | "PUNSUBSCRIBE" | "SSUBSCRIBE"
            | "SUNSUBSCRIBE" => {
                if !operation.contains("UNSUB") {
                    self.subscribed = true;
                }
                let channels = (v.len.max(1) - 1).max(1);
                kind = Kind::Pubsub {
                    word: operation.to_ascii_lowercase(),
                    left: channels.min(u32::MAX as i64) as u32,
                };
            }
            _ => {}
        }
        let op = DbOperation {
            system: DbSystem::Redis,
            query_text: Some(text),
            operation: Some(operation),
            namespace: self.namespace.clone(),
            prepared: false,
            error: None,
            rows: None,
            request_start: start,
            response_end_ns: 0,
            answer: Answer::Complete,
        };
        if self.pending.len() >= MAX_PENDING {
            out.push(DbEvent::Error("too_many_pending"));
            match self.pending.back_mut() {
                Some(Slot::Skip(n)) => *n += 1,
                _ => self.pending.push_back(Slot::Skip(1)),
            }
            return;
        }
        self.pending
            .push_back(Slot::Cmd(Box::new(Pending { op, kind })));
    }

    fn feed_server(&mut self, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        if let Some(lost) = &mut self.server_lost {
            lost.last_exit_ns = seg.timing.exit_ns;
            return;
        }
        if self.server_resync {
            if !detect(false, seg.data) {
                return;
            }
            self.server_resync = false;
            self.server.reset();
        }
        let mut values = std::mem::take(&mut self.values);
        let mut result = Ok(());
        for piece in pieces(seg) {
            values.clear();
            result = match piece {
                Piece::Bytes(b) => self.server.bytes(b, &mut values),
                Piece::Gap(n) => self.server.gap(n, &mut values),
            };
            for v in values.drain(..) {
                self.on_reply(v, seg, out);
            }
            if result.is_err() {
                break;
            }
        }
        self.values = values;
        if let Err(e) = result {
            out.push(DbEvent::Error(e.name()));
            self.server_lost = Some(LostReplies {
                slots: self.pending.len(),
                partial: self.server.partial(),
                last_exit_ns: seg.timing.exit_ns,
            });
            self.server.reset();
            self.server_resync = true;
        }
    }

    fn on_reply(&mut self, v: Value, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        let end = seg.timing.exit_ns;
        // Out-of-band traffic: RESP3 pushes, RESP2 Pub/Sub deliveries,
        // MONITOR lines. Confirmations of (UN)SUBSCRIBE answer the command.
        let tag = (v.kind == b'>' || (self.subscribed && v.kind == b'*'))
            .then(|| v.children.first())
            .flatten()
            .map(|c| String::from_utf8_lossy(&c.text).to_ascii_lowercase());
        if let Some(tag) = &tag {
            if PUBSUB_WORDS.contains(&tag.as_str()) {
                if let Some(count) = v.children.get(2).filter(|c| c.kind == b':') {
                    self.subscribed = count.text != b"0";
                }
                if let Some(Slot::Cmd(p)) = self.pending.front_mut() {
                    if let Kind::Pubsub { word, left } = &mut p.kind {
                        if word == tag {
                            *left = left.saturating_sub(1);
                            if *left == 0 {
                                self.answer(&v, end, out);
                            }
                        }
                    }
                }
                return;
            }
        }
        if v.kind == b'>' || tag.is_some_and(|t| DELIVERY_WORDS.contains(&t.as_str())) {
            return;
        }
        if self.monitoring && v.kind == b'+' {
            return;
        }
        loop {
            match self.pending.front_mut() {
                None => {
                    out.push(DbEvent::Error("unmatched_response"));
                    return;
                }
                Some(Slot::Skip(n)) => {
                    *n -= 1;
                    if *n == 0 {
                        self.pending.pop_front();
                    }
                    return;
                }
                Some(Slot::Lost { until_ns }) => match until_ns {
                    Some(t) if seg.timing.enter_ns >= *t => {
                        self.pending.pop_front();
                    }
                    _ => return,
                },
                Some(Slot::Cmd(_)) => {
                    self.answer(&v, end, out);
                    return;
                }
            }
        }
    }

    /// The head command got its (last) reply.
    fn answer(&mut self, v: &Value, end: u64, out: &mut Vec<DbEvent>) {
        let Some(Slot::Cmd(p)) = self.pending.pop_front() else {
            return;
        };
        let Pending { mut op, kind } = *p;
        op.response_end_ns = end;
        op.error = error_of(v);
        if v.is_aggregate() {
            op.rows = Some(v.len as u64);
        }
        match kind {
            Kind::Queued => {
                if self.held.len() < MAX_MULTI {
                    let queued = v.kind == b'+' && v.text == b"QUEUED";
                    self.held.push(Held { op, queued });
                } else {
                    emit(op, out);
                }
                return;
            }
            Kind::Exec => {
                let queued = self.held.iter().filter(|h| h.queued).count();
                if v.is_aggregate() && v.len as usize == queued {
                    let mut results = v.children.iter();
                    for h in self.held.iter_mut().filter(|h| h.queued) {
                        h.op.response_end_ns = end;
                        if let Some(r) = results.next() {
                            h.op.error = error_of(r);
                            h.op.rows = r.is_aggregate().then_some(r.len as u64);
                        }
                    }
                }
                self.flush_held(out);
            }
            Kind::Discard => self.flush_held(out),
            Kind::Select(prev) => {
                if op.error.is_some() {
                    self.namespace = prev;
                }
            }
            Kind::Monitor => self.monitoring = op.error.is_none(),
            Kind::Reset => {
                self.monitoring = false;
                self.subscribed = false;
                self.in_multi = false;
                self.flush_held(out);
                if self.namespace.is_some() {
                    self.namespace = Some("0".into());
                }
            }
            Kind::Plain | Kind::Pubsub { .. } => {}
        }
        emit(op, out);
    }

    fn flush_held(&mut self, out: &mut Vec<DbEvent>) {
        for h in self.held.drain(..) {
            emit(h.op, out);
        }
    }

    /// Commands whose replies went by uncaptured are reported as answered
    /// by the last server segment skipped; the first gets the shape of the
    /// reply that was being read (rows of a big array).
    fn finish_lost_replies(&mut self, out: &mut Vec<DbEvent>) {
        let Some(lost) = self.server_lost.take() else {
            return;
        };
        let mut partial = lost.partial;
        for _ in 0..lost.slots {
            match self.pending.pop_front() {
                Some(Slot::Cmd(p)) => {
                    let Pending { mut op, .. } = *p;
                    op.response_end_ns = lost.last_exit_ns;
                    if let Some(v) = partial.take() {
                        op.error = error_of(&v);
                        op.rows = v.is_aggregate().then_some(v.len as u64);
                    }
                    emit(op, out);
                }
                Some(_) => {}
                None => break,
            }
        }
    }
}

fn emit(op: DbOperation, out: &mut Vec<DbEvent>) {
    out.push(DbEvent::Operation(Box::new(op)));
}

/// `-WRONGTYPE Operation against...` → code `WRONGTYPE`, message the rest.
fn error_of(v: &Value) -> Option<DbError> {
    if !v.is_error() {
        return None;
    }
    let text = String::from_utf8_lossy(&v.text);
    let (code, message) = text.split_once(' ').unwrap_or((&text, ""));
    Some(DbError {
        code: code.to_string(),
        message: message.to_string(),
    })
}

enum Piece<'a> {
    Bytes(&'a [u8]),
    Gap(u64),
}

/// A segment as a stream: the captured prefix, the bytes that moved
/// uncaptured, then the part of the tail that the prefix did not cover.
fn pieces<'a>(seg: &Segment<'a>) -> [Piece<'a>; 3] {
    let missing = seg.total_len.saturating_sub(seg.data.len());
    let tail = &seg.tail[seg.tail.len().saturating_sub(missing)..];
    [
        Piece::Bytes(seg.data),
        Piece::Gap((missing - tail.len()) as u64),
        Piece::Bytes(tail),
    ]
}

impl DbConnection for RedisConnection {
    fn feed(&mut self, from_client: bool, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        if from_client {
            self.feed_client(seg, out);
        } else {
            self.feed_server(seg, out);
        }
    }

    fn close(&mut self, closed_ns: u64, out: &mut Vec<DbEvent>) {
        self.finish_lost_replies(out);
        self.flush_held(out);
        if self.server_resync {
            // Replies were skipped while looking for a message start: what
            // is left may have been answered among them.
            self.pending.clear();
            return;
        }
        // Commands the close left unanswered (a BLPOP the client gave up on,
        // a server that dropped the client); the first may be mid-reply.
        let mut answer = if self.server.is_idle() {
            Answer::Missing
        } else {
            Answer::Incomplete
        };
        for slot in std::mem::take(&mut self.pending) {
            if let Slot::Cmd(p) = slot {
                let mut op = p.op;
                op.response_end_ns = closed_ns;
                op.answer = answer;
                emit(op, out);
                answer = Answer::Missing;
            }
        }
    }
}

#[cfg(test)]
mod tests;
