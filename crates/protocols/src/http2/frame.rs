//! Frame boundaries in one direction of a connection (RFC 9113 §4), over
//! captures that may stop short of what the syscall moved.

use crate::http1::Segment;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Payload bytes we keep for one frame (header blocks, settings...). A
/// larger frame is skipped and reported truncated.
const MAX_KEEP: usize = 64 * 1024;
/// Largest frame we accept as a resync point (above the 16 KiB default
/// SETTINGS_MAX_FRAME_SIZE, below absurd).
const MAX_RESYNC_LEN: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    /// Reads a header; None when the reserved bit is set.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; 9] = b.get(..9)?.try_into().ok()?;
        if b[5] & 0x80 != 0 {
            return None;
        }
        Some(FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
        })
    }

    /// Rules every correct sender follows for the known types (stream 0 or
    /// not, fixed lengths). Breaking them means we are not at a boundary.
    pub fn valid(&self) -> bool {
        let on_stream = self.stream != 0;
        match self.kind {
            DATA | HEADERS | CONTINUATION | PUSH_PROMISE => on_stream,
            PRIORITY => on_stream && self.len == 5,
            RST_STREAM => on_stream && self.len == 4,
            SETTINGS => {
                !on_stream && self.len.is_multiple_of(6) && (self.flags & ACK == 0 || self.len == 0)
            }
            PING => !on_stream && self.len == 8,
            GOAWAY => !on_stream && self.len >= 8,
            WINDOW_UPDATE => self.len == 4,
            _ => true,
        }
    }

    /// Stricter, for guessing a boundary in unknown bytes: a known type
    /// (not a block continuation), defined flags only, a modest length.
    pub fn plausible_start(&self) -> bool {
        let allowed_flags = match self.kind {
            DATA => END_STREAM | PADDED,
            HEADERS => END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            PUSH_PROMISE => END_HEADERS | PADDED,
            SETTINGS | PING => ACK,
            PRIORITY | RST_STREAM | GOAWAY | WINDOW_UPDATE => 0,
            _ => return false,
        };
        self.valid() && self.flags & !allowed_flags == 0 && self.len <= MAX_RESYNC_LEN
    }
}

/// Every frame header inside `data` (from offset 0, following lengths) is a
/// plausible start: then `data` most likely begins at a frame boundary.
pub fn plausible_chain(data: &[u8]) -> bool {
    let mut p = 0usize;
    let mut seen = false;
    while p + 9 <= data.len() {
        match FrameHeader::parse(&data[p..]) {
            Some(h) if h.plausible_start() => p += 9 + h.len as usize,
            _ => return false,
        }
        seen = true;
    }
    seen
}

/// Bytes of a frame record's fixed part: call offset (u32 LE), payload
/// bytes kept (u16 LE), the frame header.
const RECORD_HEAD: usize = 4 + 2 + 9;

/// A frame whose header lies past a call's captured prefix, as the kernel
/// recorded it (AT_H2_RECORD in bpf/common/events.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FarFrame<'a> {
    /// Offset of the header in the call's bytes.
    pub at: usize,
    pub header: &'a [u8],
    /// The payload bytes kept (none for DATA; may stop short of the frame).
    pub payload: &'a [u8],
}

/// The records in `b`, in order; stops at one that does not fit.
pub fn far_frames(mut b: &[u8]) -> impl Iterator<Item = FarFrame<'_>> {
    std::iter::from_fn(move || {
        let head = b.get(..RECORD_HEAD)?;
        let at = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
        let kept = u16::from_le_bytes([head[4], head[5]]) as usize;
        let payload = b.get(RECORD_HEAD..RECORD_HEAD + kept)?;
        let far = FarFrame {
            at,
            header: &head[6..],
            payload,
        };
        b = &b[RECORD_HEAD + kept..];
        Some(far)
    })
}

/// What the reader found.
#[derive(Debug)]
pub enum Item<'a> {
    /// A whole frame. `payload` is empty for DATA (never kept); `truncated`:
    /// some payload bytes were not captured (or the frame was too big).
    Frame {
        h: FrameHeader,
        payload: &'a [u8],
        truncated: bool,
        /// DATA: padding length, when PADDED and captured.
        pad: Option<u8>,
    },
    /// The client preface was read.
    Preface,
    /// Expected the client preface but frames came: we joined midway.
    Joined,
    /// A frame boundary fell in bytes we did not capture.
    SyncLost,
    /// Found frame boundaries again after losing them.
    Resynced,
}

#[derive(Debug, Clone)]
struct Current {
    h: FrameHeader,
    left: u32,
    truncated: bool,
    pad: Option<u8>,
}

/// Splits one direction's bytes into frames. Memory: one frame's kept
/// payload (≤ 64 KiB) and a partial 9-byte header.
#[derive(Debug, Clone)]
pub struct FrameReader {
    /// Bytes of the client preface still expected.
    preface_at: Option<usize>,
    hdr: [u8; 9],
    hdr_len: usize,
    cur: Option<Current>,
    buf: Vec<u8>,
    lost: bool,
}

impl FrameReader {
    pub fn new(expect_preface: bool) -> Self {
        Self {
            preface_at: expect_preface.then_some(0),
            hdr: [0; 9],
            hdr_len: 0,
            cur: None,
            buf: Vec::new(),
            lost: false,
        }
    }

    pub fn feed(&mut self, seg: &Segment<'_>, on: &mut dyn FnMut(Item<'_>)) {
        let data = seg.data.get(..seg.total_len).unwrap_or(seg.data);
        let mut p = 0;
        if self.lost {
            if !plausible_chain(data) {
                return;
            }
            self.lost = false;
            self.hdr_len = 0;
            self.cur = None;
            on(Item::Resynced);
        }
        if let Some(at) = self.preface_at {
            let n = (PREFACE.len() - at).min(data.len());
            if data[..n] == PREFACE[at..at + n] {
                p = n;
                if at + n == PREFACE.len() {
                    self.preface_at = None;
                    on(Item::Preface);
                } else {
                    self.preface_at = Some(at + n);
                }
            } else if at == 0 && plausible_chain(data) {
                self.preface_at = None;
                on(Item::Joined);
            } else {
                self.preface_at = None;
                self.lose(on);
                return;
            }
        }
        if !self.take(&data[p..], on) {
            return;
        }
        // The frames past the prefix the kernel found: each must start
        // where the last one ended.
        let mut at = data.len();
        for far in far_frames(seg.frames) {
            if far.at < at {
                // A frame begun in the prefix (its header, or a header block
                // running past it): the record has all of it.
                let begun = match &self.cur {
                    Some(cur) if self.hdr_len == 0 => {
                        at.checked_sub(9 + (cur.h.len - cur.left) as usize)
                    }
                    None => at.checked_sub(self.hdr_len).filter(|_| self.hdr_len > 0),
                    _ => None,
                };
                if begun != Some(far.at) {
                    self.lose(on);
                    return;
                }
                self.cur = None;
                self.hdr_len = 0;
                self.buf.clear();
            } else if far.at > seg.total_len || !self.skip(far.at - at, on) || self.cur.is_some() {
                if !self.lost {
                    self.lose(on);
                }
                return;
            }
            // A header the call's end cuts: its bytes before that end.
            let header = &far.header[..far.header.len().min(seg.total_len - far.at)];
            if header.len() < far.header.len() && !far.payload.is_empty() {
                self.lose(on);
                return;
            }
            if !self.take(header, on) || !self.take(far.payload, on) {
                return;
            }
            at = far.at + header.len() + far.payload.len();
        }
        self.skip(seg.total_len.saturating_sub(at), on);
    }

    /// Frames in `data`, which continues the byte stream. False: sync lost.
    fn take(&mut self, data: &[u8], on: &mut dyn FnMut(Item<'_>)) -> bool {
        let mut p = 0;
        while p < data.len() {
            match &mut self.cur {
                None => {
                    let n = (9 - self.hdr_len).min(data.len() - p);
                    self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[p..p + n]);
                    self.hdr_len += n;
                    p += n;
                    if self.hdr_len < 9 {
                        break;
                    }
                    self.hdr_len = 0;
                    match FrameHeader::parse(&self.hdr) {
                        Some(h) if h.valid() => {
                            self.buf.clear();
                            self.cur = Some(Current {
                                h,
                                left: h.len,
                                truncated: false,
                                pad: None,
                            });
                        }
                        _ => {
                            self.lose(on);
                            return false;
                        }
                    }
                }
                Some(cur) => {
                    let n = (cur.left as usize).min(data.len() - p);
                    let bytes = &data[p..p + n];
                    if cur.h.kind == DATA {
                        if cur.h.flags & PADDED != 0 && cur.left == cur.h.len && n > 0 {
                            cur.pad = Some(bytes[0]);
                        }
                    } else if self.buf.len() + n <= MAX_KEEP {
                        self.buf.extend_from_slice(bytes);
                    } else {
                        cur.truncated = true;
                    }
                    cur.left -= n as u32;
                    p += n;
                }
            }
            self.finish_if_done(on);
        }
        true
    }

    /// `gap` bytes moved but not captured. They can only be the rest of the
    /// current frame: a frame starting in them is unknown (sync lost,
    /// false). True with `cur` still open: the frame goes on past the gap.
    fn skip(&mut self, mut gap: usize, on: &mut dyn FnMut(Item<'_>)) -> bool {
        if gap == 0 {
            return true;
        }
        if self.preface_at.is_some() || self.hdr_len > 0 {
            self.lose(on);
            return false;
        }
        if let Some(cur) = &mut self.cur {
            let n = (cur.left as usize).min(gap);
            cur.left -= n as u32;
            gap -= n;
            if cur.h.kind != DATA && n > 0 {
                cur.truncated = true;
            }
            self.finish_if_done(on);
        }
        if gap > 0 {
            self.lose(on);
            return false;
        }
        true
    }

    fn finish_if_done(&mut self, on: &mut dyn FnMut(Item<'_>)) {
        if let Some(cur) = &self.cur {
            if cur.left == 0 {
                let cur = cur.clone();
                self.cur = None;
                on(Item::Frame {
                    h: cur.h,
                    payload: &self.buf,
                    truncated: cur.truncated,
                    pad: cur.pad,
                });
                self.buf.clear();
                if self.buf.capacity() > 16 * 1024 {
                    self.buf = Vec::new();
                }
            }
        }
    }

    fn lose(&mut self, on: &mut dyn FnMut(Item<'_>)) {
        self.lost = true;
        self.cur = None;
        self.hdr_len = 0;
        self.buf.clear();
        on(Item::SyncLost);
    }
}
