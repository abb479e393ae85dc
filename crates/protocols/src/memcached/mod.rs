//! memcached text protocol over one connection: one operation per command
//! (classic and meta), matched to replies in order. Storage commands and
//! `VALUE`/`VA` replies carry data blocks skipped by their declared length,
//! captured or not; `noreply` commands get no answer and complete at once
//! (in order); meta quiet mode (`q`) replies only on failure or hit, and is
//! settled by the next reply (usually `MN`). The binary protocol is only
//! recognised: such a connection becomes opaque.

use crate::db::{Answer, DbConnection, DbError, DbEvent, DbOperation, DbSystem, Segment, Timing};
use memchr::memchr;
use std::collections::VecDeque;

/// Commands waiting for a reply; beyond it they are only counted.
const MAX_PENDING: usize = 1024;
/// memcached's own limit for a command line is 2048 bytes (keys: 250); a
/// multi-get may be longer, so allow more before calling it garbage.
const MAX_LINE: usize = 64 * 1024;
const MAX_QUERY: usize = 1024;
const MAX_KEYS: usize = 64;

const STORAGE: &[&str] = &["set", "add", "replace", "append", "prepend", "cas"];
const RETRIEVAL: &[&str] = &["get", "gets", "gat", "gats"];
/// Commands answered by lines until `END` (unless the first line is a
/// one-line answer such as `RESET` or an error).
const LISTING: &[&str] = &["stats", "lru_crawler"];
const META: &[&str] = &["mg", "ms", "md", "ma", "mn", "me"];

#[derive(Debug, Clone)]
struct Pending {
    op: DbOperation,
    verb: String,
    /// False for `noreply` and `quit`: done as soon as it is its turn.
    awaits_reply: bool,
    /// Meta quiet mode: the reply may never come.
    quiet: bool,
    /// Key and opaque (`O` flag) of a meta command, to match quiet replies.
    key: String,
    opaque: Option<String>,
}

#[derive(Debug, Clone)]
enum Slot {
    Cmd(Box<Pending>),
    /// Commands past MAX_PENDING (or empty lines): their replies are skipped.
    Skip(u64),
    /// The client stream lost sync (see the Redis parser): replies dropped
    /// until one arrives in a server segment that began after `until_ns`.
    Lost {
        until_ns: Option<u64>,
    },
}

/// A reply spread over several lines.
#[derive(Debug, Clone)]
enum Multi {
    /// `VALUE` items until `END`.
    Values(u64),
    /// `STAT`/`ITEM`/... lines until `END`.
    Listing,
    /// A meta `VA` line: done after its data block. Keeps the line.
    Va(String),
}

/// Line/data-block framing of one direction.
#[derive(Debug, Clone, Default)]
struct Stream {
    line: Vec<u8>,
    /// Timing of the segment where the current line began.
    line_start: Timing,
    /// Data block bytes (plus CRLF) still due.
    data_left: u64,
    resync: bool,
}

#[derive(Debug, Clone)]
struct LostReplies {
    slots: usize,
    last_exit_ns: u64,
}

/// One memcached connection, both directions.
#[derive(Debug, Clone, Default)]
pub struct MemcachedConnection {
    client: Stream,
    server: Stream,
    pending: VecDeque<Slot>,
    reply: Option<Multi>,
    server_lost: Option<LostReplies>,
    /// Binary protocol (or garbage from the start): nothing more is parsed.
    opaque: bool,
    started: bool,
}

impl MemcachedConnection {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the connection was found to speak the binary protocol.
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    fn feed_dir(&mut self, client: bool, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        if self.opaque {
            return;
        }
        if !self.started {
            if let Some(&b) = seg.data.first() {
                self.started = true;
                if b == 0x80 || b == 0x81 {
                    self.opaque = true;
                    out.push(DbEvent::Error("binary_protocol"));
                    return;
                }
            }
        }
        if !client {
            if let Some(lost) = &mut self.server_lost {
                lost.last_exit_ns = seg.timing.exit_ns;
                return;
            }
        }
        let st = if client {
            &mut self.client
        } else {
            &mut self.server
        };
        if st.resync {
            if !detect(client, seg.data) {
                return;
            }
            *st = Stream::default();
        }
        let missing = seg.total_len.saturating_sub(seg.data.len());
        let tail = &seg.tail[seg.tail.len().saturating_sub(missing)..];
        let gap = (missing - tail.len()) as u64;
        let ok = self.bytes(client, seg.data, seg, out)
            && self.gap(client, gap, seg, out)
            && self.bytes(client, tail, seg, out);
        if ok {
            return;
        }
        if self.opaque {
            return;
        }
        out.push(DbEvent::Error("sync_lost"));
        if client {
            // A long multi-get cut mid-line is still one command.
            let line = std::mem::take(&mut self.client.line);
            if line.contains(&b' ') {
                let start = self.client.line_start;
                self.command(&line, start, out);
            }
            if !matches!(self.pending.back(), Some(Slot::Lost { until_ns: None })) {
                self.pending.push_back(Slot::Lost { until_ns: None });
            }
            self.client = Stream {
                resync: true,
                ..Stream::default()
            };
        } else {
            self.reply = None;
            self.server_lost = Some(LostReplies {
                slots: self.pending.len(),
                last_exit_ns: seg.timing.exit_ns,
            });
            self.server = Stream {
                resync: true,
                ..Stream::default()
            };
        }
    }

    /// Captured bytes; false when the stream can't be followed.
    fn bytes(
        &mut self,
        client: bool,
        mut data: &[u8],
        seg: &Segment<'_>,
        out: &mut Vec<DbEvent>,
    ) -> bool {
        while !data.is_empty() {
            let st = if client {
                &mut self.client
            } else {
                &mut self.server
            };
            if st.data_left > 0 {
                let n = st.data_left.min(data.len() as u64);
                st.data_left -= n;
                data = &data[n as usize..];
                if st.data_left == 0 && !client {
                    self.data_done(seg, out);
                }
                continue;
            }
            if st.line.is_empty() {
                st.line_start = seg.timing;
            }
            match memchr(b'\n', data) {
                None => {
                    if st.line.len() + data.len() > MAX_LINE {
                        return false;
                    }
                    st.line.extend_from_slice(data);
                    return true;
                }
                Some(i) => {
                    if st.line.len() + i > MAX_LINE {
                        return false;
                    }
                    let mut line = std::mem::take(&mut st.line);
                    line.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    let start = st.line_start;
                    if client {
                        self.command(&line, start, out);
                    } else {
                        self.reply_line(&line, seg, out);
                    }
                    if self.opaque {
                        return false;
                    }
                    line.clear();
                    let st = if client {
                        &mut self.client
                    } else {
                        &mut self.server
                    };
                    if st.line.is_empty() {
                        st.line = line;
                    }
                }
            }
        }
        true
    }

    /// Uncaptured bytes: fine inside a data block, fatal elsewhere.
    fn gap(&mut self, client: bool, n: u64, seg: &Segment<'_>, out: &mut Vec<DbEvent>) -> bool {
        if n == 0 {
            return true;
        }
        let st = if client {
            &mut self.client
        } else {
            &mut self.server
        };
        if n > st.data_left {
            return false;
        }
        st.data_left -= n;
        if st.data_left == 0 && !client {
            self.data_done(seg, out);
        }
        true
    }

    fn command(&mut self, line: &[u8], start: Timing, out: &mut Vec<DbEvent>) {
        self.finish_lost_replies(out);
        let text = String::from_utf8_lossy(line);
        let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
        let Some(&verb) = tokens.first() else {
            // memcached answers an empty line with ERROR.
            self.push(Slot::Skip(1), out);
            return;
        };
        let arg = |i: usize| tokens.get(i).copied().unwrap_or("");
        let noreply = tokens.last() == Some(&"noreply");
        let mut keys: Vec<&str> = Vec::new();
        let mut data_len = None;
        let mut quiet = false;
        let mut opaque = None;
        let mut query_args: Vec<&str> = Vec::new();
        if STORAGE.contains(&verb) {
            keys.push(arg(1));
            data_len = arg(4).parse::<u64>().ok();
        } else if verb == "get" || verb == "gets" {
            keys.extend(&tokens[1..]);
        } else if verb == "gat" || verb == "gats" {
            keys.extend(tokens.iter().skip(2));
        } else if matches!(verb, "delete" | "incr" | "decr" | "touch") {
            keys.push(arg(1));
        } else if META.contains(&verb) {
            if verb != "mn" {
                keys.push(arg(1));
            }
            let flags_from = if verb == "ms" { 3 } else { 2 };
            if verb == "ms" {
                data_len = arg(2).parse::<u64>().ok();
            }
            for f in tokens.iter().skip(flags_from) {
                quiet |= *f == "q";
                if let Some(o) = f.strip_prefix('O') {
                    opaque = Some(o.to_string());
                }
            }
        } else if LISTING.contains(&verb) {
            query_args.extend(tokens.iter().skip(1).take(2));
        }
        let mut query = verb.to_string();
        for (i, k) in keys.iter().chain(query_args.iter()).enumerate() {
            if i >= MAX_KEYS || query.len() + k.len() >= MAX_QUERY {
                query.push_str(" ...");
                break;
            }
            query.push(' ');
            query.push_str(k);
        }
        let pending = Pending {
            op: DbOperation {
                system: DbSystem::Memcached,
                query_text: Some(query),
                operation: Some(verb.to_string()),
                namespace: None,
                prepared: false,
                error: None,
                rows: None,
                request_start: start,
                response_end_ns: start.exit_ns,
                answer: Answer::Complete,
            },
            verb: verb.to_string(),
            awaits_reply: !(noreply || verb == "quit"),
            quiet,
            key: keys.first().map(|k| k.to_string()).unwrap_or_default(),
            opaque,
        };
        if let Some(n) = data_len {
            self.client.data_left = n.saturating_add(2);
        }
        if let Some(Slot::Lost { until_ns: u @ None }) = self.pending.back_mut() {
            *u = Some(start.enter_ns);
        }
        self.push(Slot::Cmd(Box::new(pending)), out);
        self.drain_done(out);
    }

    fn push(&mut self, slot: Slot, out: &mut Vec<DbEvent>) {
        if self.pending.len() >= MAX_PENDING {
            out.push(DbEvent::Error("too_many_pending"));
            match self.pending.back_mut() {
                Some(Slot::Skip(n)) => *n += 1,
                _ => self.pending.push_back(Slot::Skip(1)),
            }
            return;
        }
        self.pending.push_back(slot);
    }

    /// Emits commands at the head that expect no reply.
    fn drain_done(&mut self, out: &mut Vec<DbEvent>) {
        while let Some(Slot::Cmd(p)) = self.pending.front() {
            if p.awaits_reply {
                return;
            }
            if let Some(Slot::Cmd(p)) = self.pending.pop_front() {
                out.push(DbEvent::Operation(Box::new(p.op)));
            }
        }
    }

    fn head_verb(&self) -> Option<&str> {
        match self.pending.front() {
            Some(Slot::Cmd(p)) => Some(&p.verb),
            _ => None,
        }
    }

    fn reply_line(&mut self, line: &[u8], seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        let text = String::from_utf8_lossy(line).into_owned();
        let word = text.split(' ').next().unwrap_or("");
        match (&mut self.reply, word) {
            (Some(Multi::Values(n)), "VALUE") => {
                *n += 1;
                self.server.data_left = data_len(&text, 3);
            }
            (Some(Multi::Values(n)), "END") => {
                let rows = *n;
                self.reply = None;
                self.answer("END", Some(rows), seg, out);
            }
            (Some(Multi::Listing), "END") => {
                self.reply = None;
                self.answer("END", None, seg, out);
            }
            (Some(Multi::Listing), _) => {}
            // Anything else inside a multi-line reply ends it (an error).
            (Some(_), _) => {
                self.reply = None;
                self.answer(&text, None, seg, out);
            }
            (None, "VALUE") => {
                self.reply = Some(Multi::Values(1));
                self.server.data_left = data_len(&text, 3);
            }
            (None, "VA") => {
                self.server.data_left = data_len(&text, 1);
                if self.server.data_left == 0 {
                    self.answer(&text, Some(1), seg, out);
                } else {
                    self.reply = Some(Multi::Va(text));
                }
            }
            (None, "END") => {
                let rows = self
                    .head_verb()
                    .is_some_and(|v| RETRIEVAL.contains(&v))
                    .then_some(0);
                self.answer("END", rows, seg, out);
            }
            (None, "STAT" | "ITEM") => self.reply = Some(Multi::Listing),
            (None, _) => {
                let listing = self.head_verb().is_some_and(|v| LISTING.contains(&v));
                if listing && !one_line_answer(word) {
                    self.reply = Some(Multi::Listing);
                } else {
                    self.answer(&text, None, seg, out);
                }
            }
        }
    }

    /// A server data block ended: a `VA` reply is complete.
    fn data_done(&mut self, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        if let Some(Multi::Va(line)) = &self.reply {
            let line = line.clone();
            self.reply = None;
            self.answer(&line, Some(1), seg, out);
        }
    }

    /// A whole reply (`line` is its first or only line) answers the head.
    fn answer(&mut self, line: &str, rows: Option<u64>, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        let end = seg.timing.exit_ns;
        let word = line.split(' ').next().unwrap_or("");
        // Quiet meta commands before the one this reply is for succeeded
        // silently (mg: miss, ms/md: stored/deleted).
        let target = self.quiet_target(line, word);
        for _ in 0..target {
            if let Some(Slot::Cmd(mut p)) = self.pending.pop_front() {
                p.op.response_end_ns = end;
                if p.verb == "mg" {
                    p.op.rows = Some(0);
                }
                out.push(DbEvent::Operation(Box::new(p.op)));
            }
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
                    break;
                }
                Some(Slot::Lost { until_ns }) => match until_ns {
                    Some(t) if seg.timing.enter_ns >= *t => {
                        self.pending.pop_front();
                    }
                    _ => break,
                },
                Some(Slot::Cmd(p)) if !p.awaits_reply => {
                    // A noreply command got an answer after all (an error).
                    p.awaits_reply = true;
                }
                Some(Slot::Cmd(_)) => {
                    let Some(Slot::Cmd(p)) = self.pending.pop_front() else {
                        unreachable!()
                    };
                    let mut op = p.op;
                    op.response_end_ns = end;
                    op.error = error_of(line);
                    op.rows = rows.or_else(|| {
                        (p.verb == "mg" && op.error.is_none()).then(|| u64::from(word != "EN"))
                    });
                    out.push(DbEvent::Operation(Box::new(op)));
                    break;
                }
            }
        }
        self.drain_done(out);
    }

    /// How many quiet meta commands at the head to settle as silent before
    /// the reply `line` is matched: the one it names (`O` opaque, `k` key),
    /// else the first whose command can produce it.
    fn quiet_target(&self, line: &str, word: &str) -> usize {
        let quiet: Vec<&Pending> = self
            .pending
            .iter()
            .map_while(|s| match s {
                Slot::Cmd(p) if p.quiet => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        if quiet.is_empty() {
            return 0;
        }
        let flags: Vec<&str> = line.split(' ').skip(1).collect();
        let opaque = flags.iter().find_map(|f| f.strip_prefix('O'));
        let key = flags.iter().find_map(|f| f.strip_prefix('k'));
        let fits = |verb: &str| match word {
            "VA" => matches!(verb, "mg" | "ma"),
            "HD" => verb == "mg",
            "EN" => verb == "ma",
            "NF" => matches!(verb, "md" | "ma"),
            "NS" => matches!(verb, "ms" | "ma"),
            "EX" => matches!(verb, "ms" | "md" | "ma"),
            "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR" => true,
            _ => false,
        };
        if let Some(o) = opaque {
            if let Some(i) = quiet.iter().position(|p| p.opaque.as_deref() == Some(o)) {
                return i;
            }
        }
        if let Some(k) = key {
            if let Some(i) = quiet.iter().position(|p| p.key == k && fits(&p.verb)) {
                return i;
            }
        }
        quiet
            .iter()
            .position(|p| fits(&p.verb))
            .unwrap_or(quiet.len())
    }

    /// See the Redis parser: commands whose replies went by uncaptured end
    /// with the last server segment skipped.
    fn finish_lost_replies(&mut self, out: &mut Vec<DbEvent>) {
        let Some(lost) = self.server_lost.take() else {
            return;
        };
        for _ in 0..lost.slots {
            match self.pending.pop_front() {
                Some(Slot::Cmd(p)) => {
                    let mut op = p.op;
                    if p.awaits_reply {
                        op.response_end_ns = lost.last_exit_ns;
                    }
                    out.push(DbEvent::Operation(Box::new(op)));
                }
                Some(_) => {}
                None => break,
            }
        }
    }
}

/// Numeric field `i` (after the verb) of a reply line, plus the CRLF that
/// ends the data block.
fn data_len(line: &str, i: usize) -> u64 {
    line.split(' ')
        .nth(i)
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |n| n.saturating_add(2))
}

fn one_line_answer(word: &str) -> bool {
    matches!(
        word,
        "RESET"
            | "OK"
            | "ERROR"
            | "CLIENT_ERROR"
            | "SERVER_ERROR"
            | "BUSY"
            | "BADCLASS"
            | "NOSPARE"
    )
}

/// `ERROR`, `CLIENT_ERROR msg`, `SERVER_ERROR msg`. `NOT_FOUND`,
/// `NOT_STORED`, `EXISTS` and meta `EN`/`NF`/`NS`/`EX` are outcomes, not errors.
fn error_of(line: &str) -> Option<DbError> {
    let (code, message) = line.split_once(' ').unwrap_or((line, ""));
    matches!(code, "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR").then(|| DbError {
        code: code.to_string(),
        message: message.to_string(),
    })
}

/// Verbs whose first line is recognised by `detect` (client side).
const VERBS: &[&str] = &[
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "delete",
    "incr",
    "decr",
    "touch",
    "stats",
    "version",
    "flush_all",
    "verbosity",
    "quit",
    "mg",
    "ms",
    "md",
    "ma",
    "mn",
    "me",
    "lru_crawler",
];
/// First words of server lines recognised by `detect`.
const REPLIES: &[&str] = &[
    "VALUE",
    "END",
    "STORED",
    "NOT_STORED",
    "EXISTS",
    "NOT_FOUND",
    "DELETED",
    "TOUCHED",
    "STAT",
    "VERSION",
    "ERROR",
    "CLIENT_ERROR",
    "SERVER_ERROR",
    "OK",
    "HD",
    "VA",
    "EN",
    "NF",
    "NS",
    "EX",
    "MN",
    "ME",
];

/// Does this look like the start of memcached traffic? Text protocol: a
/// known verb with the right shape on a CRLF-terminated line (`get k`,
/// `set k 0 0 5`, `stats`); server: a known reply word. Binary protocol
/// magic (0x80 request, 0x81 response) is recognised too.
pub fn detect(from_client: bool, data: &[u8]) -> bool {
    match data.first() {
        Some(0x80) if from_client => return data.len() < 2 || data[1] <= 0x48,
        Some(0x81) if !from_client => return data.len() < 2 || data[1] <= 0x48,
        None => return false,
        _ => {}
    }
    let Some(end) = memchr(b'\n', data) else {
        return false;
    };
    if end == 0 || data[end - 1] != b'\r' {
        return false;
    }
    let line = &data[..end - 1];
    if !line.iter().all(|&b| (0x21..0x7f).contains(&b) || b == b' ') {
        return false;
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let tokens: Vec<&str> = line.split(' ').collect();
    let word = tokens[0];
    if !from_client {
        if word == "VALUE" {
            return tokens.len() >= 4 && tokens[2..4].iter().all(|t| t.parse::<u64>().is_ok());
        }
        return REPLIES.contains(&word)
            || (!line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()));
    }
    if !VERBS.contains(&word) {
        return false;
    }
    let nums = |from: usize, n: usize| {
        tokens.len() > from + n - 1
            && tokens[from..from + n]
                .iter()
                .all(|t| t.parse::<i64>().is_ok())
    };
    match word {
        "set" | "add" | "replace" | "append" | "prepend" => tokens.len() >= 5 && nums(2, 3),
        "cas" => tokens.len() >= 6 && nums(2, 4),
        "get" | "gets" | "delete" | "mg" | "md" | "ma" | "me" => {
            tokens.len() >= 2 && !tokens[1].is_empty()
        }
        "incr" | "decr" => tokens.len() >= 3 && nums(2, 1),
        "touch" | "gat" | "gats" => tokens.len() >= 3,
        "ms" => tokens.len() >= 3 && nums(2, 1),
        _ => true,
    }
}

impl DbConnection for MemcachedConnection {
    fn feed(&mut self, from_client: bool, seg: &Segment<'_>, out: &mut Vec<DbEvent>) {
        self.feed_dir(from_client, seg, out);
    }

    fn close(&mut self, closed_ns: u64, out: &mut Vec<DbEvent>) {
        self.finish_lost_replies(out);
        // Replies skipped while resyncing may have answered what is left.
        let sure = !self.server.resync;
        // The first command left may be mid-reply (`VALUE` lines, no `END`).
        let mut answer = if self.reply.is_some() || !self.server.line.is_empty() {
            Answer::Incomplete
        } else {
            Answer::Missing
        };
        while let Some(slot) = self.pending.pop_front() {
            let Slot::Cmd(p) = slot else {
                continue;
            };
            let mut op = p.op;
            if p.awaits_reply {
                // A quiet meta command's success has no reply at all.
                if p.quiet || !sure {
                    continue;
                }
                op.response_end_ns = closed_ns;
                op.answer = answer;
                answer = Answer::Missing;
            }
            // `quit` and noreply commands are done when it is their turn.
            out.push(DbEvent::Operation(Box::new(op)));
        }
    }
}

#[cfg(test)]
mod tests;
