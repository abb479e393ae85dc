//! DNS over UDP and TCP: message summaries (parsed by hickory-proto, never by
//! hand), TCP length-prefix framing, and matching queries to responses on one
//! socket into lookups, with timeouts, retransmissions and bounded state.

use std::collections::VecDeque;

use hickory_proto::op::{Header, MessageType, OpCode, Query};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

pub use crate::http1::{Segment, Timing};

/// Queries waiting for an answer on one socket. A resolver rarely has more
/// than a handful in flight; the bound only protects against floods.
pub const MAX_PENDING: usize = 256;
/// DNS header size (RFC 1035 4.1.1): anything shorter is not DNS.
const HEADER_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("shorter than a DNS header")]
    TooShort,
    #[error("undecodable DNS header")]
    BadHeader,
    #[error("undecodable question section")]
    BadQuestion,
}

impl DnsError {
    /// Every value `kind()` can return.
    pub const KINDS: &'static [&'static str] = &["too_short", "bad_header", "bad_question"];

    /// Short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsError::TooShort => "too_short",
            DnsError::BadHeader => "bad_header",
            DnsError::BadQuestion => "bad_question",
        }
    }
}

/// One parsed DNS message (parsed with hickory-proto, no hand-written wire parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub is_response: bool,
    /// "QUERY", "NOTIFY", "UPDATE", "STATUS" or "OPCODE<n>".
    pub opcode: String,
    /// First question's name, lower-case, no trailing dot ("." for the root).
    pub question_name: Option<String>,
    /// "A", "AAAA", "PTR", ... or "TYPE<n>" (RFC 3597) for unknown types.
    pub question_type: Option<String>,
    /// Responses only: "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...
    /// From the header's 4 bits (the EDNS extension is not applied).
    pub rcode: Option<String>,
    /// ANCOUNT from the header.
    pub answer_count: u16,
    /// TC bit: the answer did not fit and the client should retry over TCP.
    pub truncated: bool,
}

impl DnsMessage {
    /// The identity of a query for matching: id, name and type.
    fn same_question(&self, other: &DnsMessage) -> bool {
        self.question_name == other.question_name && self.question_type == other.question_type
    }
}

/// Parses the header and the first question only: answers are counted, not
/// decoded, so a capture cut short after the question still parses and a
/// malformed record cannot hide the lookup.
pub fn parse(msg: &[u8]) -> Result<DnsMessage, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::TooShort);
    }
    let mut dec = BinDecoder::new(msg);
    let header = Header::read(&mut dec).map_err(|_| DnsError::BadHeader)?;
    let meta = &header.metadata;
    let is_response = meta.message_type == MessageType::Response;
    let (question_name, question_type) = if header.counts.queries > 0 {
        let q = Query::read(&mut dec).map_err(|_| DnsError::BadQuestion)?;
        (Some(name_text(&q)), Some(type_text(q.query_type())))
    } else {
        (None, None)
    };
    Ok(DnsMessage {
        id: meta.id,
        is_response,
        opcode: opcode_text(meta.op_code),
        question_name,
        question_type,
        rcode: is_response.then(|| rcode_text(u16::from(meta.response_code))),
        answer_count: header.counts.answers,
        truncated: meta.truncation,
    })
}

fn name_text(q: &Query) -> String {
    let s = q.name().to_lowercase().to_ascii();
    match s.strip_suffix('.').unwrap_or(&s) {
        "" => ".".to_string(),
        t => t.to_string(),
    }
}

fn type_text(t: RecordType) -> String {
    match t {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        t => t.to_string(),
    }
}

fn opcode_text(op: OpCode) -> String {
    match op {
        OpCode::Query => "QUERY".into(),
        OpCode::Status => "STATUS".into(),
        OpCode::Notify => "NOTIFY".into(),
        OpCode::Update => "UPDATE".into(),
        OpCode::Unknown(n) => format!("OPCODE{n}"),
    }
}

/// IANA mnemonic of an RCODE (hickory's Display gives prose, not these).
fn rcode_text(code: u16) -> String {
    let s = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        n => return format!("RCODE{n}"),
    };
    s.to_string()
}

/// TCP: messages carry a 2-byte length prefix and may span/straddle segments.
/// One framer per direction. Each message comes out with a `Timing` whose
/// `enter_ns` is that of the segment carrying its first byte and `exit_ns`
/// that of the segment carrying its last byte.
#[derive(Debug, Clone, Default)]
pub struct DnsTcpFramer {
    /// Bytes of the message being assembled, length prefix included.
    buf: Vec<u8>,
    start: Timing,
    /// Bytes of a message we lost to the capture limit, still to pass by.
    skip: usize,
    /// Lost our place in the stream: wait for the next segment boundary.
    desynced: bool,
    lost: u64,
}

impl DnsTcpFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages dropped because the capture missed some of their bytes.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn push(&mut self, seg: &Segment<'_>, out: &mut Vec<(Vec<u8>, Timing)>) {
        if self.desynced {
            // Clients write a whole message (or its prefix) per syscall, so a
            // segment boundary is the best guess at a message start.
            self.desynced = false;
            self.buf.clear();
            self.skip = 0;
        }
        let captured = seg.data.get(..seg.total_len).unwrap_or(seg.data);
        let mut rest = captured;
        while !rest.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(rest.len());
                self.skip -= n;
                rest = &rest[n..];
                continue;
            }
            if self.buf.is_empty() {
                self.start = seg.timing;
            }
            let want = self.needed().saturating_sub(self.buf.len());
            let n = want.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == self.needed() {
                let timing = Timing {
                    enter_ns: self.start.enter_ns,
                    exit_ns: seg.timing.exit_ns,
                };
                out.push((self.buf.split_off(2), timing));
                self.buf.clear();
            }
        }
        let missing = seg.total_len.saturating_sub(captured.len());
        if missing > 0 {
            self.lose(missing);
        }
    }

    /// Total length of the current message with its prefix, once known.
    fn needed(&self) -> usize {
        match self.buf.as_slice() {
            [hi, lo, ..] => 2 + usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => 2,
        }
    }

    /// `missing` bytes went by that the capture did not keep.
    fn lose(&mut self, missing: usize) {
        if self.skip > 0 {
            // Still inside a message already counted as lost.
            let n = self.skip.min(missing);
            self.skip -= n;
            if missing > n {
                self.desynced = true;
            }
            return;
        }
        if self.buf.len() >= 2 {
            let remaining = self.needed() - self.buf.len();
            self.lost += 1;
            self.buf.clear();
            if missing <= remaining {
                self.skip = remaining - missing;
                return;
            }
        } else if !self.buf.is_empty() {
            self.lost += 1;
        }
        self.desynced = true;
    }
}

/// Matches queries to responses on one socket (by id + question), with timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLookup {
    pub query: DnsMessage,
    /// None: timed out, retransmitted, evicted or the socket closed first.
    pub response: Option<DnsMessage>,
    pub query_timing: Timing,
    pub response_end_ns: Option<u64>,
    /// Same id+question sent again before an answer: this lookup is a retry.
    pub retransmission: bool,
}

/// What the tracker dropped or cut short, for counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Responses with no pending query (we joined late, or it timed out and
    /// was already reported).
    pub unmatched_responses: u64,
    /// Queries reported unanswered because more than MAX_PENDING waited.
    pub evicted: u64,
    /// Queries that were retries of a pending one.
    pub retransmissions: u64,
    /// Messages whose QR bit disagreed with the direction they travelled.
    pub misdirected: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    query: DnsMessage,
    timing: Timing,
    retransmission: bool,
}

impl Pending {
    fn unanswered(self) -> DnsLookup {
        DnsLookup {
            query: self.query,
            response: None,
            query_timing: self.timing,
            response_end_ns: None,
            retransmission: self.retransmission,
        }
    }
}

/// Retransmissions: when a query repeats the id, name and type of one still
/// pending, the first attempt is reported unanswered and the new one is
/// pending with `retransmission` set, so both attempts are visible and the
/// answer (which cannot tell them apart) goes to the latest.
#[derive(Debug, Clone)]
pub struct LookupTracker {
    timeout_ns: u64,
    /// Oldest first.
    pending: VecDeque<Pending>,
    stats: LookupStats,
}

impl LookupTracker {
    pub fn new(timeout_ns: u64) -> Self {
        LookupTracker {
            timeout_ns,
            pending: VecDeque::new(),
            stats: LookupStats::default(),
        }
    }

    pub fn stats(&self) -> LookupStats {
        self.stats
    }

    /// `from_client`: the message travelled from the resolving side to the
    /// server (true whether the observed process is the client or the server).
    pub fn on_message(
        &mut self,
        from_client: bool,
        msg: DnsMessage,
        timing: Timing,
        out: &mut Vec<DnsLookup>,
    ) {
        if from_client == msg.is_response {
            self.stats.misdirected += 1;
            return;
        }
        if from_client {
            self.on_query(msg, timing, out);
        } else {
            self.on_response(msg, timing, out);
        }
    }

    fn on_query(&mut self, query: DnsMessage, timing: Timing, out: &mut Vec<DnsLookup>) {
        let retry = self
            .pending
            .iter()
            .position(|p| p.query.id == query.id && p.query.same_question(&query));
        if let Some(i) = retry.and_then(|i| self.pending.remove(i)) {
            self.stats.retransmissions += 1;
            out.push(i.unanswered());
        }
        self.pending.push_back(Pending {
            query,
            timing,
            retransmission: retry.is_some(),
        });
        while self.pending.len() > MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                self.stats.evicted += 1;
                out.push(old.unanswered());
            }
        }
    }

    fn on_response(&mut self, resp: DnsMessage, timing: Timing, out: &mut Vec<DnsLookup>) {
        // Error answers (FORMERR, some SERVFAILs) may carry no question: the
        // id alone then decides, oldest first.
        let found = self.pending.iter().position(|p| {
            p.query.id == resp.id && (resp.question_name.is_none() || p.query.same_question(&resp))
        });
        let Some(p) = found.and_then(|i| self.pending.remove(i)) else {
            self.stats.unmatched_responses += 1;
            return;
        };
        out.push(DnsLookup {
            query: p.query,
            response: Some(resp),
            query_timing: p.timing,
            response_end_ns: Some(timing.exit_ns),
            retransmission: p.retransmission,
        });
    }

    /// Lookups with no answer after the timeout (call periodically).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<DnsLookup>) {
        let timeout = self.timeout_ns;
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if now_ns.saturating_sub(p.timing.exit_ns) >= timeout {
                out.push(p.unanswered());
            } else {
                kept.push_back(p);
            }
        }
        self.pending = kept;
    }

    /// Pending ones are reported as unanswered.
    pub fn close(&mut self, out: &mut Vec<DnsLookup>) {
        out.extend(self.pending.drain(..).map(Pending::unanswered));
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests;
