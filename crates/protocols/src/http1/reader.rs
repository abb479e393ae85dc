//! One direction of an HTTP/1 connection: finds message heads and the end of
//! each body from captured prefixes plus total lengths (bodies are counted,
//! never copied).

use super::chunked::{ends_with_last_chunk, ChunkProgress, ChunkedDecoder};
use super::head::{
    looks_like_request, looks_like_response, parse_request, parse_response, Framing, RequestHead,
    ResponseHead,
};
use super::{ParseError, Segment, Timing};

/// A head larger than this is not HTTP we can follow.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

/// What a reader saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderEvent {
    Head(Head, Timing),
    /// The current message ended: body bytes on the wire (None: not known,
    /// the head's end lay past the capture), time of the last byte.
    End {
        body_bytes: Option<u64>,
        last_ns: u64,
    },
    /// The connection closed inside the current message's body: what was
    /// seen of it, and the time of its last byte seen.
    Cut {
        body_bytes: Option<u64>,
        last_ns: u64,
    },
    Error(ParseError),
    /// The message just read switched protocols (101): bytes from offset
    /// `at` of the segment being fed on belong to the new protocol.
    Switched {
        at: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(ChunkedDecoder),
    /// Chunk boundaries unknown: watch segment ends for the last chunk.
    ChunkedLost,
    UntilClose,
    /// Out of step: wait for a segment that starts like a message (also
    /// after a message whose head ran past the capture: the rest of its body,
    /// if any, is skipped).
    Lost,
    /// Another protocol took over the connection: nothing more to read.
    Switched,
}

#[derive(Debug, Clone)]
pub struct Reader {
    kind: Kind,
    state: State,
    head_buf: Vec<u8>,
    head_timing: Option<Timing>,
    body_bytes: u64,
    /// False once the body's start is unknown (a head past the capture).
    body_known: bool,
    last_ns: u64,
}

/// Where a head the capture cut short ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutHead {
    /// With the segment (the tail shows its blank line).
    AtSegmentEnd,
    /// Somewhere in the bytes past the capture, its body (if any) after it.
    InSegment,
}

impl Reader {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            state: State::Head,
            head_buf: Vec::new(),
            head_timing: None,
            body_bytes: 0,
            body_known: true,
            last_ns: 0,
        }
    }

    /// True while a message is partly read (its end not yet seen).
    pub fn in_message(&self) -> bool {
        !self.head_buf.is_empty()
            || !matches!(self.state, State::Head | State::Lost | State::Switched)
    }

    fn looks_like_start(&self, b: &[u8]) -> bool {
        match self.kind {
            Kind::Request => looks_like_request(b),
            Kind::Response => looks_like_response(b),
        }
    }

    fn lose(&mut self, err: ParseError, out: &mut Vec<ReaderEvent>) {
        self.head_buf.clear();
        self.head_timing = None;
        self.state = State::Lost;
        out.push(ReaderEvent::Error(err));
    }

    fn body(&self) -> Option<u64> {
        self.body_known.then_some(self.body_bytes)
    }

    fn end(&mut self, out: &mut Vec<ReaderEvent>) {
        out.push(ReaderEvent::End {
            body_bytes: self.body(),
            last_ns: self.last_ns,
        });
        self.body_bytes = 0;
        self.state = State::Head;
    }

    /// Feeds one segment. `framing` maps a parsed head to its body framing
    /// (responses need the request they answer).
    pub fn feed(
        &mut self,
        seg: &Segment<'_>,
        framing: &mut dyn FnMut(&Head) -> Framing,
        out: &mut Vec<ReaderEvent>,
    ) {
        let total = seg.total_len;
        let data = seg.data;
        self.last_ns = seg.timing.exit_ns;
        let mut pos = 0usize;
        while pos < total {
            match &mut self.state {
                State::Switched => return,
                State::Lost => {
                    if pos == 0 && self.looks_like_start(data) {
                        self.state = State::Head;
                        continue;
                    }
                    return;
                }
                State::Head => {
                    // RFC 9112 2.2: ignore empty lines before a request line
                    // (some clients send a stray CRLF after a body).
                    if self.head_buf.is_empty() && self.kind == Kind::Request {
                        while pos < data.len() && matches!(data[pos], b'\r' | b'\n') {
                            pos += 1;
                        }
                        if pos == total {
                            return;
                        }
                    }
                    if pos >= data.len() {
                        // The next message starts in bytes we did not capture.
                        self.lose(ParseError::Truncated, out);
                        return;
                    }
                    let avail = &data[pos..];
                    if self.head_buf.is_empty() {
                        if !self.looks_like_start(avail) {
                            self.lose(ParseError::NotHttp, out);
                            return;
                        }
                        self.head_timing = Some(seg.timing);
                    }
                    let before = self.head_buf.len();
                    if before + avail.len() > MAX_HEAD {
                        self.lose(ParseError::HeadTooLarge, out);
                        return;
                    }
                    // Common case: the whole head is in this segment; parse
                    // it in place and buffer only when it is split.
                    let buffered = before > 0;
                    if buffered {
                        self.head_buf.extend_from_slice(avail);
                    }
                    let bytes: &[u8] = if buffered { &self.head_buf } else { avail };
                    let parsed = match self.parse_head(bytes) {
                        // Past the capture: what it kept may still do.
                        Ok(None) if data.len() < total => self
                            .cut_head(bytes, seg.tail)
                            .map(|(h, cut)| Some((h, Some(cut)))),
                        other => other.map(|h| h.map(|h| (h, None))),
                    };
                    match parsed {
                        Ok(None) => {
                            if !buffered {
                                self.head_buf.extend_from_slice(avail);
                            }
                            return;
                        }
                        Err(e) => {
                            self.lose(e, out);
                            return;
                        }
                        Ok(Some((head, cut))) => {
                            let head_len = match &head {
                                Head::Request(h) => h.head_len,
                                Head::Response(h) => h.head_len,
                            };
                            // A cut head's message ends with the segment.
                            pos = match cut {
                                None => pos + head_len - before,
                                Some(_) => total,
                            };
                            self.head_buf.clear();
                            let f = framing(&head);
                            let timing = self.head_timing.take().unwrap_or(seg.timing);
                            self.body_bytes = 0;
                            self.body_known = true;
                            // A cut head's framing delimits its body only when
                            // the head ends with the segment and names a length
                            // or chunking ("until close" may be a length the cut
                            // hid).
                            match (cut, f) {
                                (Some(CutHead::InSegment), Framing::Switched) => {
                                    // Where the other protocol starts is past the capture.
                                    self.lose(ParseError::Truncated, out);
                                    return;
                                }
                                (Some(CutHead::InSegment), _)
                                | (Some(CutHead::AtSegmentEnd), Framing::UntilClose) => {
                                    out.push(ReaderEvent::Head(head, timing));
                                    self.end_in_segment(f, seg, out);
                                    return;
                                }
                                _ => {}
                            }
                            out.push(ReaderEvent::Head(head, timing));
                            match f {
                                Framing::None => self.end(out),
                                Framing::Length(n) => self.state = State::Body(n),
                                Framing::Chunked => {
                                    self.state = State::Chunked(ChunkedDecoder::new())
                                }
                                Framing::UntilClose => self.state = State::UntilClose,
                                Framing::Switched => {
                                    self.state = State::Switched;
                                    out.push(ReaderEvent::Switched { at: pos });
                                    return;
                                }
                            }
                        }
                    }
                }
                State::Body(left) => {
                    let n = (*left).min((total - pos) as u64);
                    pos += n as usize;
                    self.body_bytes += n;
                    *left -= n;
                    if *left == 0 {
                        self.end(out);
                    }
                }
                State::Chunked(dec) => {
                    let known = data.get(pos..).unwrap_or_default();
                    match dec.feed(known, seg.tail, total - pos) {
                        ChunkProgress::NeedMore => {
                            self.body_bytes += (total - pos) as u64;
                            pos = total;
                        }
                        ChunkProgress::Done(n) => {
                            self.body_bytes += n as u64;
                            pos += n;
                            self.end(out);
                        }
                        ChunkProgress::LostSync => {
                            self.state = State::ChunkedLost;
                            out.push(ReaderEvent::Error(ParseError::ChunkSyncLost));
                            self.check_last_chunk(seg, pos, out);
                            return;
                        }
                    }
                }
                State::ChunkedLost => {
                    self.check_last_chunk(seg, pos, out);
                    return;
                }
                State::UntilClose => {
                    self.body_bytes += (total - pos) as u64;
                    return;
                }
            }
        }
    }

    /// A head the capture cut short (`bytes`: its start, no end in it): a
    /// GET whose cookies or token run past `capture.max_bytes`, a response
    /// whose headers (a long policy, many cookies) do, read or written in one
    /// call, alone or with the body. Its whole lines name the method and
    /// target, or the status, and the first headers; those past the cut are
    /// not seen. With the tail showing a blank line (not a last chunk's) the
    /// head ends with the segment, else somewhere past the capture.
    /// `Err(Truncated)` when no header line is whole.
    fn cut_head(&self, bytes: &[u8], tail: &[u8]) -> Result<(Head, CutHead), ParseError> {
        const END: &[u8] = b"\r\n\r\n";
        // A chunked body's last chunk ends in a blank line too ("0" is no
        // header line).
        let cut = if tail.ends_with(END) && !ends_with_last_chunk(tail) {
            CutHead::AtSegmentEnd
        } else {
            CutHead::InSegment
        };
        let whole_lines = bytes
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .ok_or(ParseError::Truncated)?
            + 2;
        let mut head = Vec::with_capacity(whole_lines + 2);
        head.extend_from_slice(&bytes[..whole_lines]);
        head.extend_from_slice(b"\r\n");
        let head = self.parse_head(&head)?.ok_or(ParseError::Truncated)?;
        Ok((head, cut))
    }

    /// The message of a head past the capture whose body cannot be framed
    /// ends with this segment, its body size unknown; a chunked one whose
    /// last chunk is not in sight yet ends at the segment that shows it.
    /// Body bytes of later segments, if any, are skipped until a segment
    /// starts like a message.
    fn end_in_segment(&mut self, f: Framing, seg: &Segment<'_>, out: &mut Vec<ReaderEvent>) {
        let past_capture = (seg.total_len - seg.data.len()) as u64;
        match f {
            // Room for the rest of the head and the whole body: one call
            // wrote the message (the common case for small responses).
            Framing::Length(n) if n <= past_capture => self.body_bytes = n,
            Framing::Chunked if !ends_with_last_chunk(seg.tail) => {
                self.body_known = false;
                self.state = State::ChunkedLost;
                return;
            }
            _ => self.body_known = false,
        }
        self.end(out);
        self.state = State::Lost;
    }

    /// A head of this reader's kind at the start of `bytes`; `Ok(None)`:
    /// not all of it yet.
    fn parse_head(&self, bytes: &[u8]) -> Result<Option<Head>, ParseError> {
        match self.kind {
            Kind::Request => parse_request(bytes).map(|h| h.map(Head::Request)),
            Kind::Response => parse_response(bytes).map(|h| h.map(Head::Response)),
        }
    }

    /// Without chunk sync, a body ends with the segment whose bytes end in
    /// the last chunk (seen in the captured data or the captured tail).
    fn check_last_chunk(&mut self, seg: &Segment<'_>, pos: usize, out: &mut Vec<ReaderEvent>) {
        self.body_bytes += (seg.total_len - pos) as u64;
        let end: &[u8] = if seg.data.len() == seg.total_len {
            &seg.data[pos.min(seg.data.len())..]
        } else {
            seg.tail
        };
        if ends_with_last_chunk(end) {
            self.end(out);
        }
    }

    /// The connection closed: a body delimited by close ends here, one it
    /// cut short is reported as cut, and so is a head cut short (an error).
    pub fn close(&mut self, out: &mut Vec<ReaderEvent>) {
        match self.state {
            State::UntilClose => self.end(out),
            State::Body(_) | State::Chunked(_) | State::ChunkedLost => {
                out.push(ReaderEvent::Cut {
                    body_bytes: self.body(),
                    last_ns: self.last_ns,
                });
                self.body_bytes = 0;
                self.state = State::Head;
            }
            State::Head if self.head_buf.is_empty() => {}
            State::Lost | State::Switched => {}
            State::Head => self.lose(ParseError::Truncated, out),
        }
    }
}
