//! HTTP/1.x over one connection, both directions: keep-alive, pipelining,
//! Content-Length / chunked / until-close bodies, HEAD and 1xx/204/304.
//! Input is what the kernel captured per syscall (a prefix plus the total
//! length); output is request/response exchanges with their timings.

mod chunked;
mod head;
mod reader;

pub use chunked::{ends_with_last_chunk, ChunkProgress, ChunkedDecoder};
pub use head::{
    looks_like_request, looks_like_response, parse_request, parse_response, Framing, RequestHead,
    ResponseHead,
};
pub use reader::{Head, Kind, Reader, ReaderEvent};

use std::collections::VecDeque;

/// Requests waiting for their response on one connection (pipelining depth).
const MAX_PENDING: usize = 64;
/// Segments we look at before deciding a connection of unknown role is not HTTP.
const MAX_UNDETERMINED: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("bytes that are not HTTP/1 where a message should start")]
    NotHttp,
    #[error("message head cut short (capture limit or connection closed)")]
    Truncated,
    #[error("message head larger than 64 KiB")]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("chunk boundaries fell outside the captured bytes")]
    ChunkSyncLost,
    #[error("response with no request waiting for it")]
    UnmatchedResponse,
    #[error("more pipelined requests than we keep")]
    TooManyPending,
    #[error("syntax error: {0}")]
    Syntax(String),
}

impl ParseError {
    /// Every value `kind()` can return.
    pub const KINDS: &'static [&'static str] = &[
        "not_http",
        "truncated",
        "head_too_large",
        "bad_content_length",
        "chunk_sync_lost",
        "unmatched_response",
        "too_many_pending",
        "syntax",
    ];

    /// Short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::NotHttp => "not_http",
            ParseError::Truncated => "truncated",
            ParseError::HeadTooLarge => "head_too_large",
            ParseError::BadContentLength => "bad_content_length",
            ParseError::ChunkSyncLost => "chunk_sync_lost",
            ParseError::UnmatchedResponse => "unmatched_response",
            ParseError::TooManyPending => "too_many_pending",
            ParseError::Syntax(_) => "syntax",
        }
    }
}

/// Kernel timestamps of one syscall (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    pub enter_ns: u64,
    pub exit_ns: u64,
}

/// One syscall's worth of bytes in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Captured prefix (may be shorter than total_len).
    pub data: &'a [u8],
    pub total_len: usize,
    /// Last bytes of the syscall's buffer when the prefix stopped short.
    pub tail: &'a [u8],
    /// HTTP/2: the frames whose header lies past the prefix, as the kernel's
    /// records (`http2::frame::far_frames`); empty elsewhere.
    pub frames: &'a [u8],
    pub timing: Timing,
}

/// Direction relative to the observed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The process read these bytes.
    Ingress,
    /// The process wrote these bytes.
    Egress,
}

impl Dir {
    fn flip(self) -> Dir {
        match self {
            Dir::Ingress => Dir::Egress,
            Dir::Egress => Dir::Ingress,
        }
    }
}

/// A request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// True when the observed process received the request (a server).
    pub server_side: bool,
    pub request: RequestHead,
    /// None: the connection closed (the process exited, the stream ended)
    /// before a response head was seen: the server never answered, or the
    /// client gave up first.
    pub response: Option<ResponseHead>,
    /// False when the connection closed before the response's last byte
    /// (a client that gave up on a stream, a server that died mid-body).
    pub response_complete: bool,
    /// Syscall that carried the request's first bytes.
    pub request_start: Timing,
    pub request_body_bytes: u64,
    /// Syscall that carried the response's first bytes.
    pub response_start: Timing,
    /// When the syscall carrying the response's last byte returned (for a
    /// response cut short, its last byte seen; with none, the close).
    pub response_end_ns: u64,
    /// None: not known (the response head ran past the capture and its body
    /// could not be told from it).
    pub response_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http1Event {
    /// A request head was read (before its response): the moment trace
    /// context is decided. Exchanges later complete in the same order.
    RequestStart {
        traceparent: Option<String>,
        tracestate: Option<String>,
    },
    Exchange(Box<Exchange>),
    /// The server switched the connection to cleartext HTTP/2 (101 with
    /// `Upgrade: h2c`, RFC 7540 3.2). The request that asked becomes
    /// stream 1 and gets no exchange here. HTTP/2 starts at offset `rest`
    /// of the segment just fed (the 101 and the server's first frames often
    /// share one read); this parser ignores everything from then on.
    H2cUpgrade {
        request: Box<RequestHead>,
        request_start: Timing,
        request_body_bytes: u64,
        rest: usize,
    },
    Error(ParseError),
}

#[derive(Debug, Clone)]
struct Pending {
    head: RequestHead,
    start: Timing,
    body_bytes: u64,
}

/// Tracks one connection. Cheap to create; holds no more than the pending
/// requests and a partial head per direction.
#[derive(Debug, Clone)]
pub struct Http1Connection {
    requests_dir: Option<Dir>,
    requests: Reader,
    responses: Reader,
    pending: VecDeque<Pending>,
    /// The response being read (it answers `pending[0]`).
    response: Option<(ResponseHead, Timing)>,
    undetermined: u32,
    /// Not HTTP/1 (or switched protocols): ignore everything from now on.
    opaque: bool,
}

thread_local! {
    /// Reader events of the segment being fed: one buffer per thread, not
    /// per connection. With a thousand connections a buffer of each
    /// connection's own was cold memory at every segment.
    static READER_EVENTS: std::cell::Cell<Vec<ReaderEvent>> = const { std::cell::Cell::new(Vec::new()) };
}

fn take_reader_events() -> Vec<ReaderEvent> {
    READER_EVENTS.with(|c| c.take())
}

fn put_reader_events(mut events: Vec<ReaderEvent>) {
    events.clear();
    READER_EVENTS.with(|c| c.set(events));
}

impl Http1Connection {
    /// Where the next segment's work starts in memory (the queue of
    /// requests awaiting their response), for a reader that loads it ahead.
    pub fn hot_memory(&self) -> *const u8 {
        self.pending.as_slices().0.as_ptr().cast()
    }

    /// `requests_dir`: where requests flow if the role is known (server:
    /// ingress, client: egress); None lets the first bytes decide.
    pub fn new(requests_dir: Option<Dir>) -> Self {
        Self {
            requests_dir,
            requests: Reader::new(Kind::Request),
            responses: Reader::new(Kind::Response),
            pending: VecDeque::new(),
            response: None,
            undetermined: 0,
            opaque: false,
        }
    }

    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    /// True once requests are known to arrive (the observed process serves).
    pub fn server_side(&self) -> bool {
        self.requests_dir == Some(Dir::Ingress)
    }

    pub fn feed(&mut self, dir: Dir, seg: &Segment<'_>, out: &mut Vec<Http1Event>) {
        if self.opaque || seg.total_len == 0 {
            return;
        }
        let requests_dir = match self.requests_dir {
            Some(d) => d,
            None => {
                if looks_like_request(seg.data) {
                    self.requests_dir = Some(dir);
                    dir
                } else if looks_like_response(seg.data) {
                    self.requests_dir = Some(dir.flip());
                    dir.flip()
                } else {
                    // Joined mid-stream (e.g. inside a body): wait for a message start.
                    self.undetermined += 1;
                    if self.undetermined >= MAX_UNDETERMINED {
                        self.opaque = true;
                        out.push(Http1Event::Error(ParseError::NotHttp));
                    }
                    return;
                }
            }
        };
        let mut events = take_reader_events();
        if dir == requests_dir {
            self.requests.feed(
                seg,
                &mut |h| match h {
                    Head::Request(r) => r.framing(),
                    Head::Response(_) => Framing::None,
                },
                &mut events,
            );
            for ev in events.drain(..) {
                self.on_request_event(ev, out);
            }
        } else {
            // Framing of each response depends on the request it answers; a
            // segment may finish one response and start the next.
            let mut answering = usize::from(self.response.is_some());
            let pending = &self.pending;
            self.responses.feed(
                seg,
                &mut |h| match h {
                    Head::Response(r) => {
                        let framing =
                            r.framing(pending.get(answering).map(|p| p.head.method.as_str()));
                        if !r.is_interim() {
                            answering += 1;
                        }
                        framing
                    }
                    Head::Request(_) => Framing::None,
                },
                &mut events,
            );
            for ev in events.drain(..) {
                self.on_response_event(ev, out);
            }
        }
        put_reader_events(events);
        // A connection whose first bytes are not HTTP at all is not ours.
        if self.pending.is_empty() && self.response.is_none() && !self.requests.in_message() {
            if let Some(Http1Event::Error(ParseError::NotHttp)) = out.last() {
                self.opaque = true;
            }
        }
    }

    fn on_request_event(&mut self, ev: ReaderEvent, out: &mut Vec<Http1Event>) {
        match ev {
            ReaderEvent::Head(Head::Request(head), timing) => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    out.push(Http1Event::Error(ParseError::TooManyPending));
                }
                out.push(Http1Event::RequestStart {
                    traceparent: head.traceparent.clone(),
                    tracestate: head.tracestate.clone(),
                });
                self.pending.push_back(Pending {
                    head,
                    start: timing,
                    body_bytes: 0,
                });
            }
            ReaderEvent::End { body_bytes, .. } | ReaderEvent::Cut { body_bytes, .. } => {
                if let Some(p) = self.pending.back_mut() {
                    // Unknown (a head past the capture): reported as none.
                    p.body_bytes = body_bytes.unwrap_or(0);
                }
            }
            ReaderEvent::Head(Head::Response(_), _) | ReaderEvent::Switched { .. } => {}
            ReaderEvent::Error(e) => out.push(Http1Event::Error(e)),
        }
    }

    /// A request and its response (None: the connection closed before a
    /// response head), as one exchange; `complete`: the response's last
    /// byte was seen.
    fn exchange(
        &self,
        req: Pending,
        response: Option<(ResponseHead, Timing)>,
        response_end_ns: u64,
        response_body_bytes: Option<u64>,
        complete: bool,
    ) -> Http1Event {
        let (response, response_start, response_end_ns) = match response {
            Some((head, start)) => (Some(head), start, response_end_ns),
            // Unanswered: it ends at the close, not before it was asked.
            None => {
                let end = response_end_ns.max(req.start.exit_ns);
                let at = Timing {
                    enter_ns: end,
                    exit_ns: end,
                };
                (None, at, end)
            }
        };
        Http1Event::Exchange(Box::new(Exchange {
            server_side: self.requests_dir == Some(Dir::Ingress),
            request: req.head,
            response,
            response_complete: complete,
            request_start: req.start,
            request_body_bytes: req.body_bytes,
            response_start,
            response_end_ns,
            response_body_bytes,
        }))
    }

    fn on_response_event(&mut self, ev: ReaderEvent, out: &mut Vec<Http1Event>) {
        match ev {
            ReaderEvent::Head(Head::Response(head), timing) => {
                if head.is_interim() {
                    return; // 100 Continue and friends: the final response follows
                }
                if self.pending.is_empty() {
                    out.push(Http1Event::Error(ParseError::UnmatchedResponse));
                    return;
                }
                self.response = Some((head, timing));
            }
            ReaderEvent::End {
                body_bytes,
                last_ns,
            } => {
                let Some((head, start)) = self.response.take() else {
                    return; // end of an interim or unmatched response
                };
                let Some(req) = self.pending.pop_front() else {
                    return;
                };
                let switched = req.head.method == "CONNECT" && head.status / 100 == 2;
                out.push(self.exchange(req, Some((head, start)), last_ns, body_bytes, true));
                if switched {
                    self.opaque = true;
                }
            }
            ReaderEvent::Cut {
                body_bytes,
                last_ns,
            } => {
                let (Some((head, start)), Some(req)) =
                    (self.response.take(), self.pending.pop_front())
                else {
                    return;
                };
                out.push(self.exchange(req, Some((head, start)), last_ns, body_bytes, false));
            }
            ReaderEvent::Switched { at } => {
                // 101: whatever follows is not HTTP/1.
                self.opaque = true;
                let Some((head, start)) = self.response.take() else {
                    return;
                };
                let Some(req) = self.pending.pop_front() else {
                    out.push(Http1Event::Error(ParseError::UnmatchedResponse));
                    return;
                };
                if head.is_h2c_upgrade() {
                    out.push(Http1Event::H2cUpgrade {
                        request: Box::new(req.head),
                        request_start: req.start,
                        request_body_bytes: req.body_bytes,
                        rest: at,
                    });
                    return;
                }
                out.push(self.exchange(req, Some((head, start)), start.exit_ns, Some(0), true));
            }
            ReaderEvent::Head(Head::Request(_), _) => {}
            ReaderEvent::Error(e) => out.push(Http1Event::Error(e)),
        }
    }

    /// The connection closed at `closed_ns`: finish a body delimited by
    /// close, report a response cut short, and every request still waiting
    /// as unanswered (in order: each has its context queued).
    pub fn close(&mut self, closed_ns: u64, out: &mut Vec<Http1Event>) {
        if self.opaque {
            return;
        }
        let mut events = take_reader_events();
        self.responses.close(&mut events);
        for ev in events.drain(..) {
            self.on_response_event(ev, out);
        }
        self.requests.close(&mut events);
        for ev in events.drain(..) {
            self.on_request_event(ev, out);
        }
        put_reader_events(events);
        while let Some(req) = self.pending.pop_front() {
            out.push(self.exchange(req, None, closed_ns, Some(0), false));
        }
    }
}

#[cfg(test)]
mod tests;
