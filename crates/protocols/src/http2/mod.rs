//! HTTP/2 over one connection, both directions (RFC 9113), with gRPC's
//! status trailers: frames, HPACK header blocks, and one `Stream` event per
//! finished stream. Input is what the kernel captured per syscall, seen from
//! the client's point of view (`from_client`, as in `db`), so the same
//! tracker works for an observed client and an observed server.
//!
//! Joining late (no preface) works at the frame level; what the HPACK
//! tables held before is unknown, so such streams carry `hpack_unknown` and
//! only the fields we could really decode, never a guessed name.

mod frame;
mod hpack;
mod midway;

pub use crate::http1::{Segment, Timing};
pub use frame::{plausible_chain, FrameHeader, PREFACE};
pub use hpack::HpackDecoder;
pub use midway::{midway, Midway};

use frame::{FrameReader, Item};
use std::collections::{BTreeMap, VecDeque};

/// Open streams we track per connection; beyond it the oldest is dropped.
pub const MAX_STREAMS: usize = 1024;
/// Longest header value we keep (paths, user agents, messages).
const MAX_VALUE: usize = 8 * 1024;
/// Largest header block (HEADERS + CONTINUATION) we assemble.
const MAX_BLOCK: usize = 64 * 1024;
/// Stream ids remembered as finished, so late frames do not reopen them.
const RECENT_CLOSED: usize = 64;

/// Error counter names `Http2Event::Error` carries.
pub const ERROR_KINDS: &[&str] = &[
    "sync_lost",
    "hpack_desync",
    "too_many_streams",
    "goaway_refused",
    "stream_unfinished",
    "bad_frame",
];

/// True when `data` (the first bytes of one direction) is HTTP/2: the
/// client preface (or at least 8 bytes of it), or, from the server, a
/// SETTINGS frame at offset 0.
pub fn detect(from_client: bool, data: &[u8]) -> bool {
    if from_client {
        let n = data.len().min(PREFACE.len());
        return n >= 8 && data[..n] == PREFACE[..n];
    }
    match FrameHeader::parse(data) {
        // The server preface is a SETTINGS frame without ACK.
        Some(h) => {
            h.kind == frame::SETTINGS
                && h.stream == 0
                && h.flags == 0
                && h.len.is_multiple_of(6)
                && h.len <= 16 * 1024
        }
        None => false,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Http2Request {
    /// Empty when not known (joined mid-connection).
    pub method: String,
    pub path: String,
    /// `:authority`, or `host` when the client sent that instead.
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub user_agent: Option<String>,
}

impl Http2Request {
    /// The HTTP/1.1 request that asked for `Upgrade: h2c`: stream 1.
    pub fn upgraded(head: &crate::http1::RequestHead) -> Self {
        Self {
            method: head.method.clone(),
            path: head.target.clone(),
            authority: head.host.clone(),
            scheme: Some("http".into()),
            content_type: None,
            traceparent: head.traceparent.clone(),
            tracestate: head.tracestate.clone(),
            user_agent: head.user_agent.clone(),
        }
    }

    /// gRPC calls are POSTs with `content-type: application/grpc[+proto...]`.
    pub fn is_grpc(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/grpc"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Http2Stream {
    pub stream_id: u32,
    pub request: Http2Request,
    /// Final (non-1xx) `:status`.
    pub status: Option<u16>,
    /// From trailers, or from the headers of a Trailers-Only response.
    pub grpc_status: Option<u32>,
    /// Percent-decoded `grpc-message`.
    pub grpc_message: Option<String>,
    /// Segment that carried the request HEADERS (for a stream that opened
    /// before we joined: the first segment we saw of it).
    pub request_start: Timing,
    /// exit_ns of the segment with the server's END_STREAM, or RST_STREAM.
    pub response_end_ns: u64,
    /// DATA payload without padding.
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// RST_STREAM error code (from either side).
    pub reset: Option<u32>,
    /// Some header fields could not be decoded (joined mid-connection, lost
    /// a header block to the capture limit, or never saw the request):
    /// fields may be missing, those present are right.
    pub hpack_unknown: bool,
    /// The response ended with a header block after its head (trailers).
    pub trailers: bool,
    /// A gRPC call (see `Http2Connection::mark_grpc`).
    pub grpc: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http2Event {
    /// Request headers read (before the response): trace context decided.
    RequestStart {
        stream_id: u32,
        traceparent: Option<String>,
        tracestate: Option<String>,
    },
    /// Both sides ended the stream, or it was reset.
    Stream(Box<Http2Stream>),
    /// A counter name from `ERROR_KINDS`.
    Error(&'static str),
}

/// Header fields we care about, from one block.
#[derive(Debug, Default)]
struct Fields {
    request: Http2Request,
    host: Option<String>,
    status: Option<u16>,
    content_length: Option<u64>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
}

impl Fields {
    fn take(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(&value[..value.len().min(MAX_VALUE)]).into_owned();
        let r = &mut self.request;
        match name {
            b":method" => r.method = text(),
            b":path" => r.path = text(),
            b":authority" => r.authority = Some(text()),
            b":scheme" => r.scheme = Some(text()),
            b"content-type" => r.content_type = Some(text()),
            b"traceparent" => r.traceparent = Some(text()),
            b"tracestate" => r.tracestate = Some(text()),
            b"user-agent" => r.user_agent = Some(text()),
            b"host" => self.host = Some(text()),
            b":status" => {
                self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            b"content-length" => {
                self.content_length = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            b"grpc-status" => {
                self.grpc_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            b"grpc-message" => self.grpc_message = Some(percent_decode(value)),
            _ => {}
        }
    }

    fn into_request(mut self) -> Http2Request {
        if self.request.authority.is_none() {
            self.request.authority = self.host.take();
        }
        self.request
    }
}

/// gRPC percent-encodes grpc-message (PROTOCOL-HTTP2.md).
fn percent_decode(v: &[u8]) -> String {
    let v = &v[..v.len().min(MAX_VALUE)];
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone)]
struct Open {
    s: Http2Stream,
    client_ended: bool,
    server_ended: bool,
    /// A final (non-1xx) response HEADERS was seen: later ones are trailers.
    response_headers: bool,
    /// The response's `content-length`.
    response_len: Option<u64>,
    /// All `content-length` bytes arrived: a client may stop reading here
    /// and never see the END_STREAM that follows in a frame of its own.
    body_done: bool,
}

/// What a header block being assembled belongs to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Headers,
    /// PUSH_PROMISE: the promised (server-initiated) stream.
    Push(u32),
}

#[derive(Debug, Clone)]
struct Block {
    stream: u32,
    end_stream: bool,
    target: Target,
    buf: Vec<u8>,
}

/// Per-sender state; index 0 = client, 1 = server.
const CLIENT: usize = 0;
const SERVER: usize = 1;

/// Everything but the frame readers (split so a reader's callback can use it).
#[derive(Debug, Clone)]
struct Core {
    /// Decoder of the blocks each side sends.
    hpack: [HpackDecoder; 2],
    block: [Option<Block>; 2],
    server_seen: bool,
    streams: BTreeMap<u32, Open>,
    recently_closed: VecDeque<u32>,
    max_client_id: u32,
    first_client_id: Option<u32>,
    /// A stream of this connection was a gRPC call.
    grpc_seen: bool,
}

/// Tracks one HTTP/2 connection. Memory is bounded: ≤ `MAX_STREAMS` open
/// streams, one header block and one frame payload per direction, and two
/// HPACK tables of ≤ 64 KiB.
#[derive(Debug, Clone)]
pub struct Http2Connection {
    readers: [FrameReader; 2],
    core: Core,
}

impl Default for Http2Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Http2Connection {
    /// From the start of the connection: the client preface comes first
    /// (prior knowledge, or TLS with ALPN h2). If frames come instead, we
    /// joined midway and the HPACK tables are treated as unknown.
    pub fn new() -> Self {
        Self {
            readers: [FrameReader::new(true), FrameReader::new(false)],
            core: Core {
                hpack: [HpackDecoder::new(), HpackDecoder::new()],
                block: [None, None],
                server_seen: false,
                streams: BTreeMap::new(),
                recently_closed: VecDeque::new(),
                max_client_id: 0,
                first_client_id: None,
                grpc_seen: false,
            },
        }
    }

    /// Known to be mid-connection (e.g. the agent started after it opened).
    pub fn mid_connection() -> Self {
        let mut c = Self::new();
        c.readers[CLIENT] = FrameReader::new(false);
        c.core.hpack[CLIENT].reset_unknown();
        c.core.hpack[SERVER].reset_unknown();
        c.core.server_seen = true;
        c
    }

    /// h2c via `Upgrade: h2c` (RFC 7540 §3.2): `request` (the HTTP/1.1
    /// request that asked, with `body_bytes` of body) is stream 1, already
    /// ended by the client; the client preface follows, then the server
    /// answers stream 1 in HTTP/2.
    pub fn after_upgrade(request: Http2Request, start: Timing, body_bytes: u64) -> Self {
        let mut c = Self::new();
        c.core.max_client_id = 1;
        c.core.first_client_id = Some(1);
        c.core.streams.insert(
            1,
            Open {
                s: Http2Stream {
                    request_body_bytes: body_bytes,
                    ..new_stream(1, request, start, false)
                },
                client_ended: true,
                server_ended: false,
                response_headers: false,
                response_len: None,
                body_done: false,
            },
        );
        c
    }

    pub fn feed(&mut self, from_client: bool, seg: &Segment<'_>, out: &mut Vec<Http2Event>) {
        if seg.total_len == 0 {
            return;
        }
        let side = if from_client { CLIENT } else { SERVER };
        let core = &mut self.core;
        let first = out.len();
        self.readers[side].feed(seg, &mut |item| core.on_item(side, item, seg.timing, out));
        self.mark_grpc(&mut out[first..]);
    }

    /// Tells gRPC calls by their content-type; when that went by in a
    /// header block we could not decode (joined midway: gRPC clients index
    /// it), by what only gRPC responses carry here (trailers, a
    /// `grpc-status`), or by an earlier gRPC call on this connection.
    fn mark_grpc(&mut self, events: &mut [Http2Event]) {
        for ev in events {
            if let Http2Event::Stream(s) = ev {
                let unknown_type = s.request.content_type.is_none() && s.hpack_unknown;
                s.grpc = s.request.is_grpc()
                    || (unknown_type
                        && (s.trailers || s.grpc_status.is_some() || self.core.grpc_seen));
                self.core.grpc_seen |= s.grpc;
            }
        }
    }

    /// The connection closed: streams whose response ended (END_STREAM, or
    /// every `content-length` byte) are reported; the others are counted as
    /// unfinished.
    pub fn close(&mut self, out: &mut Vec<Http2Event>) {
        let first = out.len();
        self.close_streams(out);
        self.mark_grpc(&mut out[first..]);
    }

    fn close_streams(&mut self, out: &mut Vec<Http2Event>) {
        self.core.block = [None, None];
        for (_, o) in std::mem::take(&mut self.core.streams) {
            if o.server_ended || o.body_done {
                out.push(Http2Event::Stream(Box::new(o.s)));
            } else {
                out.push(Http2Event::Error("stream_unfinished"));
            }
        }
    }

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        self.core.streams.len()
    }
}

fn new_stream(id: u32, request: Http2Request, start: Timing, unknown: bool) -> Http2Stream {
    Http2Stream {
        stream_id: id,
        request,
        status: None,
        grpc_status: None,
        grpc_message: None,
        request_start: start,
        response_end_ns: 0,
        request_body_bytes: 0,
        response_body_bytes: 0,
        reset: None,
        hpack_unknown: unknown,
        trailers: false,
        grpc: false,
    }
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

impl Core {
    fn on_item(&mut self, side: usize, item: Item<'_>, t: Timing, out: &mut Vec<Http2Event>) {
        match item {
            Item::Preface | Item::Resynced => {}
            Item::Joined => {
                self.hpack[CLIENT].reset_unknown();
                self.hpack[SERVER].reset_unknown();
            }
            Item::SyncLost => {
                out.push(Http2Event::Error("sync_lost"));
                // Header blocks may have been in the lost bytes.
                self.lose_block(side, t, out);
                self.hpack[side].reset_unknown();
            }
            Item::Frame {
                h,
                payload,
                truncated,
                pad,
            } => self.on_frame(side, h, payload, truncated, pad, t, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &mut self,
        side: usize,
        h: FrameHeader,
        payload: &[u8],
        truncated: bool,
        pad: Option<u8>,
        t: Timing,
        out: &mut Vec<Http2Event>,
    ) {
        if side == SERVER && !self.server_seen {
            self.server_seen = true;
            // The server preface is SETTINGS; anything else: we came late.
            if h.kind != frame::SETTINGS || h.flags & frame::ACK != 0 {
                self.hpack[SERVER].reset_unknown();
            }
        }
        // Only CONTINUATION of the same stream may follow an open block.
        if self.block[side].is_some()
            && (h.kind != frame::CONTINUATION
                || self.block[side]
                    .as_ref()
                    .is_some_and(|b| b.stream != h.stream))
        {
            out.push(Http2Event::Error("bad_frame"));
            self.lose_block(side, t, out);
        }
        match h.kind {
            frame::DATA => {
                let overhead = match pad {
                    Some(p) => p as u64 + 1,
                    None if h.flags & frame::PADDED != 0 => 1,
                    None => 0,
                };
                let body = (h.len as u64).saturating_sub(overhead);
                if let Some(o) = self.streams.get_mut(&h.stream) {
                    if side == CLIENT {
                        o.s.request_body_bytes += body;
                    } else {
                        o.s.response_body_bytes += body;
                        if !o.body_done
                            && o.response_len.is_some_and(|n| o.s.response_body_bytes >= n)
                        {
                            o.body_done = true;
                            o.s.response_end_ns = t.exit_ns;
                        }
                    }
                }
                if h.flags & frame::END_STREAM != 0 {
                    self.end_side(side, h.stream, t, out);
                }
            }
            frame::HEADERS | frame::PUSH_PROMISE => {
                let target = if h.kind == frame::HEADERS {
                    Target::Headers
                } else {
                    Target::Push(0)
                };
                let end_stream = h.kind == frame::HEADERS && h.flags & frame::END_STREAM != 0;
                let fragment = if truncated {
                    None
                } else {
                    header_fragment(&h, payload)
                };
                let Some((fragment, promised)) = fragment else {
                    out.push(Http2Event::Error("hpack_desync"));
                    self.hpack[side].reset_unknown();
                    let target = match target {
                        Target::Push(_) => Target::Push(
                            be32(payload.get(1..).unwrap_or(&[])).unwrap_or(0) & 0x7fff_ffff,
                        ),
                        t => t,
                    };
                    self.on_block(side, h.stream, target, end_stream, None, t, out);
                    return;
                };
                let target = match target {
                    Target::Push(_) => Target::Push(promised),
                    t => t,
                };
                if h.flags & frame::END_HEADERS != 0 {
                    self.on_block(side, h.stream, target, end_stream, Some(fragment), t, out);
                } else {
                    self.block[side] = Some(Block {
                        stream: h.stream,
                        end_stream,
                        target,
                        buf: fragment.to_vec(),
                    });
                }
            }
            frame::CONTINUATION => {
                let Some(b) = &mut self.block[side] else {
                    return; // its HEADERS was lost (already counted)
                };
                if truncated || b.buf.len() + payload.len() > MAX_BLOCK {
                    self.lose_block(side, t, out);
                    return;
                }
                b.buf.extend_from_slice(payload);
                if h.flags & frame::END_HEADERS != 0 {
                    if let Some(b) = self.block[side].take() {
                        self.on_block(side, b.stream, b.target, b.end_stream, Some(&b.buf), t, out);
                    }
                }
            }
            frame::RST_STREAM => {
                let code = if truncated { None } else { be32(payload) };
                if let Some(mut o) = self.streams.remove(&h.stream) {
                    o.s.reset = Some(code.unwrap_or(0));
                    o.s.response_end_ns = t.exit_ns;
                    self.closed(h.stream);
                    out.push(Http2Event::Stream(Box::new(o.s)));
                }
            }
            frame::SETTINGS if h.flags & frame::ACK == 0 && !truncated => {
                for s in payload.chunks_exact(6) {
                    if u16::from_be_bytes([s[0], s[1]]) == 1 {
                        // HEADER_TABLE_SIZE bounds the *peer's* encoder.
                        let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        self.hpack[1 - side].set_allowed(v);
                    }
                }
            }
            frame::GOAWAY if !truncated => {
                let last = be32(payload).unwrap_or(u32::MAX) & 0x7fff_ffff;
                // Streams the receiver of GOAWAY started above `last` were
                // never processed: client-started (odd) if the server sent it.
                let parity = if side == SERVER { 1 } else { 0 };
                let refused: Vec<u32> = self
                    .streams
                    .range(last.saturating_add(1)..)
                    .map(|(id, _)| *id)
                    .filter(|id| id % 2 == parity)
                    .collect();
                for id in refused {
                    self.streams.remove(&id);
                    self.closed(id);
                    out.push(Http2Event::Error("goaway_refused"));
                }
            }
            // PING, PRIORITY, WINDOW_UPDATE, ACKs and unknown types.
            _ => {}
        }
    }

    /// A header block we could not read: its table effects are unknown.
    fn lose_block(&mut self, side: usize, t: Timing, out: &mut Vec<Http2Event>) {
        if let Some(b) = self.block[side].take() {
            out.push(Http2Event::Error("hpack_desync"));
            self.hpack[side].reset_unknown();
            self.on_block(side, b.stream, b.target, b.end_stream, None, t, out);
        }
    }

    /// A complete header block (`None`: lost) on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn on_block(
        &mut self,
        side: usize,
        stream: u32,
        target: Target,
        end_stream: bool,
        block: Option<&[u8]>,
        t: Timing,
        out: &mut Vec<Http2Event>,
    ) {
        let mut f = Fields::default();
        let mut unknown = true;
        if let Some(block) = block {
            match self.hpack[side].decode(block, &mut |n, v| f.take(n, v)) {
                Ok(true) => unknown = false,
                // Entries we never saw (joined midway, or a block lost and
                // counted then): the stream says so, it is no new error.
                Ok(false) => {}
                Err(_) => out.push(Http2Event::Error("hpack_desync")),
            }
        }
        if let Target::Push(promised) = target {
            // The promised stream's request; its response follows as usual.
            if side == SERVER
                && promised != 0
                && !self.streams.contains_key(&promised)
                && !self.recently_closed.contains(&promised)
            {
                let mut s = new_stream(promised, f.into_request(), t, unknown);
                s.hpack_unknown = unknown;
                self.open(promised, s, true, out);
            }
            return;
        }
        if side == CLIENT {
            if let Some(o) = self.streams.get_mut(&stream) {
                o.s.hpack_unknown |= unknown; // request trailers
            } else if stream > self.max_client_id {
                self.max_client_id = stream;
                self.first_client_id.get_or_insert(stream);
                let request = f.into_request();
                out.push(Http2Event::RequestStart {
                    stream_id: stream,
                    traceparent: request.traceparent.clone(),
                    tracestate: request.tracestate.clone(),
                });
                self.open(stream, new_stream(stream, request, t, unknown), false, out);
            } else {
                return; // a stream already finished
            }
            if end_stream {
                self.end_side(CLIENT, stream, t, out);
            }
            return;
        }
        if !self.streams.contains_key(&stream) {
            // A response to a request we never saw (it began before we
            // joined): report it with what the response tells.
            let before_join = self.first_client_id.is_none_or(|first| stream < first);
            let fresh = stream > self.max_client_id || before_join;
            if stream.is_multiple_of(2) || !fresh || self.recently_closed.contains(&stream) {
                return;
            }
            self.open(
                stream,
                new_stream(stream, Http2Request::default(), t, true),
                true,
                out,
            );
        }
        let Some(o) = self.streams.get_mut(&stream) else {
            return;
        };
        o.s.hpack_unknown |= unknown;
        o.s.trailers |= o.response_headers;
        if !o.response_headers {
            match f.status {
                Some(s) if (100..200).contains(&s) => {} // interim: final one follows
                s => {
                    o.response_headers = true;
                    o.s.status = s;
                    o.response_len = f.content_length;
                    if f.content_length == Some(0) {
                        o.body_done = true;
                        o.s.response_end_ns = t.exit_ns;
                    }
                }
            }
        }
        if f.grpc_status.is_some() {
            o.s.grpc_status = f.grpc_status;
        }
        if f.grpc_message.is_some() {
            o.s.grpc_message = f.grpc_message;
        }
        if end_stream {
            self.end_side(SERVER, stream, t, out);
        }
    }

    fn open(&mut self, id: u32, s: Http2Stream, client_ended: bool, out: &mut Vec<Http2Event>) {
        if self.streams.len() >= MAX_STREAMS {
            // Drop the oldest: most likely one whose end we missed.
            self.streams.pop_first();
            out.push(Http2Event::Error("too_many_streams"));
        }
        self.streams.insert(
            id,
            Open {
                s,
                client_ended,
                server_ended: false,
                response_headers: false,
                response_len: None,
                body_done: false,
            },
        );
    }

    fn end_side(&mut self, side: usize, id: u32, t: Timing, out: &mut Vec<Http2Event>) {
        let Some(o) = self.streams.get_mut(&id) else {
            return;
        };
        if side == CLIENT {
            o.client_ended = true;
        } else {
            o.server_ended = true;
            o.s.response_end_ns = t.exit_ns;
        }
        if o.client_ended && o.server_ended {
            if let Some(o) = self.streams.remove(&id) {
                self.closed(id);
                out.push(Http2Event::Stream(Box::new(o.s)));
            }
        }
    }

    fn closed(&mut self, id: u32) {
        if self.recently_closed.len() >= RECENT_CLOSED {
            self.recently_closed.pop_front();
        }
        self.recently_closed.push_back(id);
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload (without
/// padding and priority), and the promised stream id for PUSH_PROMISE.
fn header_fragment<'a>(h: &FrameHeader, payload: &'a [u8]) -> Option<(&'a [u8], u32)> {
    let mut p = payload;
    let mut pad = 0usize;
    if h.flags & frame::PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let mut promised = 0;
    if h.kind == frame::PUSH_PROMISE {
        promised = be32(p)? & 0x7fff_ffff;
        p = &p[4..];
    } else if h.flags & frame::PRIORITY_FLAG != 0 {
        p = p.get(5..)?;
    }
    let end = p.len().checked_sub(pad)?;
    Some((&p[..end], promised))
}

#[cfg(test)]
mod tests;
