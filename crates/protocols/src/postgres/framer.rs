//! Cuts one direction's byte stream into messages from captured prefixes:
//! bodies are skipped by length when their bytes were not captured, only
//! the bytes a message needs are kept, and when a header itself fell in the
//! uncaptured part the framer resynchronises on a later segment start or on
//! the captured tail of a segment (which usually ends with ReadyForQuery or
//! Sync, since both sides flush at those points).

use super::message::{be32, header_ok, MAX_STARTUP};
use crate::db::{Segment, Timing};

/// How the next message in this direction is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Length-first, no tag: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
    Startup,
    /// Tag byte, then a length that counts itself.
    Tagged,
    /// A single byte: the server's answer to SSLRequest / GSSENCRequest.
    OneByte,
}

/// One message; `body` is what was captured and kept of it.
#[derive(Debug)]
pub struct Msg<'a> {
    /// 0 for length-first startup-phase messages.
    pub tag: u8,
    pub body: &'a [u8],
    /// Declared body length.
    pub len: usize,
    /// `body` is shorter than the message body (not captured or not kept).
    pub cut: bool,
    /// Segment that carried the first byte.
    pub start: Timing,
    /// Read from a segment's tail after lost bytes.
    pub recovered: bool,
}

#[derive(Debug)]
pub enum Pull<'a> {
    Msg(Msg<'a>),
    /// A header was not captured (or was garbage): messages were lost.
    Lost,
}

/// Reading position in one segment.
pub struct Cursor<'d> {
    data: &'d [u8],
    tail: &'d [u8],
    total: usize,
    timing: Timing,
    pos: usize,
    /// Emitting complete messages recovered from the end of the segment.
    recovered: Option<usize>,
}

impl<'d> Cursor<'d> {
    pub fn new(seg: &Segment<'d>) -> Self {
        let data = &seg.data[..seg.data.len().min(seg.total_len)];
        // When everything was captured the segment's own end serves as tail.
        let tail = if data.len() == seg.total_len {
            &data[data.len().saturating_sub(64)..]
        } else {
            &seg.tail[seg.tail.len().saturating_sub(seg.total_len)..]
        };
        Self {
            data,
            tail,
            total: seg.total_len,
            timing: seg.timing,
            pos: 0,
            recovered: None,
        }
    }
}

/// Bytes kept per message type: enough for the fields we read.
fn keep_for(client: bool, tag: u8) -> usize {
    const TEXT: usize = 32 * 1024;
    match (client, tag) {
        (true, 0) => MAX_STARTUP,
        (true, b'Q' | b'P') => TEXT,
        (true, b'B' | b'E' | b'D' | b'C') => 300,
        (false, b'E') => 2048,
        (false, b'C') => 128,
        (false, b'Z' | b'R') => 8,
        _ => 0,
    }
}

#[derive(Debug, Clone)]
pub struct Framer {
    client: bool,
    hdr: [u8; 5],
    hdr_len: usize,
    in_body: bool,
    tag: u8,
    len: usize,
    remaining: usize,
    keep: usize,
    buf: Vec<u8>,
    cut: bool,
    start: Timing,
    lost: bool,
}

impl Framer {
    pub fn new(client: bool) -> Self {
        Self {
            client,
            hdr: [0; 5],
            hdr_len: 0,
            in_body: false,
            tag: 0,
            len: 0,
            remaining: 0,
            keep: 0,
            buf: Vec::new(),
            cut: false,
            start: Timing::default(),
            lost: false,
        }
    }

    /// Between messages: the next byte starts a new one.
    pub fn idle(&self) -> bool {
        self.hdr_len == 0 && !self.in_body && !self.lost
    }

    fn lose(&mut self) -> Pull<'static> {
        self.lost = true;
        self.hdr_len = 0;
        self.in_body = false;
        self.buf.clear();
        Pull::Lost
    }

    /// Next message (or loss) from the segment; None when it is used up.
    pub fn next<'s, 'd: 's>(&'s mut self, cur: &mut Cursor<'d>, mode: Mode) -> Option<Pull<'s>> {
        loop {
            if let Some(at) = cur.recovered {
                let t = &cur.tail[at.min(cur.tail.len())..];
                let (tag, len) = match (t.first(), be32(t.get(1..).unwrap_or_default())) {
                    (Some(&tag), Some(len)) if (len as usize) < t.len() => (tag, len as usize),
                    _ => {
                        cur.recovered = None;
                        cur.pos = cur.total;
                        return None;
                    }
                };
                cur.recovered = Some(at + 1 + len);
                return Some(Pull::Msg(Msg {
                    tag,
                    body: &t[5..1 + len],
                    len: len - 4,
                    cut: false,
                    start: cur.timing,
                    recovered: true,
                }));
            }
            if cur.pos >= cur.total {
                return None;
            }
            if self.lost {
                if cur.pos == 0 && mode == Mode::Tagged && chain_ok(self.client, cur) {
                    self.lost = false;
                    continue;
                }
                self.recover(cur, mode);
                continue;
            }
            if self.in_body {
                let n = self.remaining.min(cur.total - cur.pos);
                let have = cur.data.get(cur.pos..(cur.pos + n).min(cur.data.len()));
                let have = have.unwrap_or_default();
                if have.len() < n {
                    self.cut = true;
                }
                let room = self.keep.saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&have[..have.len().min(room)]);
                self.remaining -= n;
                cur.pos += n;
                if self.remaining == 0 {
                    self.in_body = false;
                    return Some(Pull::Msg(Msg {
                        tag: self.tag,
                        body: &self.buf,
                        len: self.len,
                        cut: self.cut,
                        start: self.start,
                        recovered: false,
                    }));
                }
                continue;
            }
            let hlen = match mode {
                Mode::OneByte => 1,
                Mode::Startup => 4,
                Mode::Tagged => 5,
            };
            // Where this header starts in the segment: a cut header may
            // still be read whole from the tail.
            let hdr_from = cur.pos.saturating_sub(self.hdr_len);
            if self.hdr_len == 0 {
                self.start = cur.timing;
            }
            while self.hdr_len < hlen && cur.pos < cur.total {
                let Some(&b) = cur.data.get(cur.pos) else {
                    // The next header lies in bytes the capture did not keep.
                    cur.pos = hdr_from;
                    return Some(self.lose());
                };
                self.hdr[self.hdr_len] = b;
                self.hdr_len += 1;
                cur.pos += 1;
            }
            if self.hdr_len < hlen {
                return None;
            }
            self.hdr_len = 0;
            let body_len = match mode {
                Mode::OneByte => {
                    return Some(Pull::Msg(Msg {
                        tag: self.hdr[0],
                        body: &[],
                        len: 0,
                        cut: false,
                        start: self.start,
                        recovered: false,
                    }));
                }
                Mode::Startup => {
                    self.tag = 0;
                    let len = be32(&self.hdr).unwrap_or(0) as usize;
                    if !(8..=MAX_STARTUP).contains(&len) {
                        return Some(self.lose());
                    }
                    len - 4
                }
                Mode::Tagged => {
                    self.tag = self.hdr[0];
                    let len = be32(&self.hdr[1..]).unwrap_or(0) as usize;
                    if !header_ok(self.client, self.tag, len) {
                        return Some(self.lose());
                    }
                    len - 4
                }
            };
            let keep = keep_for(self.client, self.tag);
            // Common case: the whole body is in this segment, no copy.
            if cur.pos + body_len <= cur.data.len() {
                let body = &cur.data[cur.pos..cur.pos + body_len.min(keep)];
                cur.pos += body_len;
                return Some(Pull::Msg(Msg {
                    tag: self.tag,
                    body,
                    len: body_len,
                    cut: keep < body_len,
                    start: self.start,
                    recovered: false,
                }));
            }
            self.in_body = true;
            self.len = body_len;
            self.remaining = body_len;
            self.keep = keep;
            self.cut = keep < body_len;
            self.buf.clear();
        }
    }

    /// Lost in this segment: look for a run of whole messages at its very
    /// end that finishes with a flush point (ReadyForQuery from the server;
    /// Sync, Flush or Terminate from the client). The stream is in step
    /// again right after it. Otherwise the rest of the segment is skipped.
    fn recover(&mut self, cur: &mut Cursor<'_>, mode: Mode) {
        let base = cur.total - cur.tail.len();
        cur.recovered = None;
        if mode == Mode::Tagged {
            for i in 0..cur.tail.len() {
                if base + i < cur.pos {
                    continue; // already read
                }
                if let Some(n) = walk(self.client, &cur.tail[i..]) {
                    let last = n.last_tag;
                    let flush = if self.client {
                        matches!(last, b'S' | b'H' | b'X')
                    } else {
                        last == b'Z'
                    };
                    if n.exact && flush {
                        self.lost = false;
                        cur.recovered = Some(i);
                        return;
                    }
                }
            }
        }
        cur.pos = cur.total;
    }
}

struct Walk {
    count: usize,
    last_tag: u8,
    /// The messages end exactly at the end of the bytes.
    exact: bool,
}

/// Follows message headers from the start of `b`: None at the first
/// impossible header; stops at the first header or body not in `b`.
fn walk(client: bool, b: &[u8]) -> Option<Walk> {
    let mut pos = 0usize;
    let mut w = Walk {
        count: 0,
        last_tag: 0,
        exact: false,
    };
    while pos < b.len() {
        let Some(len) = be32(b.get(pos + 1..).unwrap_or_default()) else {
            return Some(w);
        };
        let tag = b[pos];
        if !header_ok(client, tag, len as usize) {
            return None;
        }
        w.count += 1;
        w.last_tag = tag;
        pos += 1 + len as usize;
    }
    w.exact = pos == b.len();
    Some(w)
}

/// Does this segment, whose start we do not know to be a message start,
/// begin with believable messages? Writes usually start at a message, but
/// a read may start anywhere; demand more evidence from the server side,
/// where reads split long results.
fn chain_ok(client: bool, cur: &Cursor<'_>) -> bool {
    let Some(w) = walk(client, cur.data) else {
        return false;
    };
    let whole = w.exact && cur.data.len() == cur.total;
    if client {
        w.count >= 1 && (whole || w.count >= 2 || matches!(cur.data[0], b'Q' | b'P'))
    } else {
        w.count >= 1 && (whole || w.count >= 3)
    }
}
