//! Cuts one direction's bytes into packets: 3-byte length, sequence id,
//! payload; payloads of 16 MiB-1 continue in the next packet and are joined
//! here. Bytes the capture did not keep are skipped by length while they
//! stay inside the current packet; past its end the framer is lost.

use super::packet::{u24le, MAX_PAYLOAD};
use crate::db::{Segment, Timing};

/// One logical packet, handed out when its last byte went by.
#[derive(Debug)]
pub(super) struct Packet<'a> {
    /// Sequence id of the first physical packet.
    pub seq: u8,
    /// Payload length, continuations included.
    pub len: usize,
    /// The captured prefix of the payload (at most the framer's cap).
    pub body: &'a [u8],
    /// Syscall that carried the header.
    pub start: Timing,
}

#[derive(Debug, Clone)]
pub(super) struct Framer {
    hdr: [u8; 4],
    hdr_len: usize,
    /// Payload bytes of the current physical packet still to come.
    remaining: usize,
    /// Logical payload length so far.
    len: usize,
    seq: u8,
    /// Reused for every packet: no allocation per packet once warm.
    buf: Vec<u8>,
    cap: usize,
    continued: bool,
    /// Bytes of this packet were skipped: keep no more of it.
    frozen: bool,
    start: Timing,
    lost: bool,
}

impl Framer {
    /// `cap`: payload bytes kept per packet (the rest is counted, not kept).
    pub fn new(cap: usize) -> Self {
        Self {
            hdr: [0; 4],
            hdr_len: 0,
            remaining: 0,
            len: 0,
            seq: 0,
            buf: Vec::new(),
            cap,
            continued: false,
            frozen: false,
            start: Timing::default(),
            lost: false,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Between packets, nothing half read.
    pub fn idle(&self) -> bool {
        self.hdr_len == 0 && !self.continued && !self.lost
    }

    /// Forget any partial packet: the next byte starts a packet.
    pub fn reset(&mut self) {
        self.hdr_len = 0;
        self.remaining = 0;
        self.len = 0;
        self.buf.clear();
        self.continued = false;
        self.frozen = false;
        self.lost = false;
    }

    /// Gives up until `reset`.
    pub fn lose(&mut self) {
        self.reset();
        self.lost = true;
    }

    /// Reads one segment, calling `on` for every packet completed in it.
    /// Returns true when the framer became lost in this segment.
    pub fn feed(&mut self, seg: &Segment<'_>, on: &mut impl FnMut(&Packet<'_>)) -> bool {
        if self.lost {
            return false;
        }
        let mut d = seg.data;
        while !d.is_empty() {
            if self.hdr_len < 4 {
                if self.hdr_len == 0 && !self.continued {
                    self.start = seg.timing;
                }
                let n = (4 - self.hdr_len).min(d.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&d[..n]);
                self.hdr_len += n;
                d = &d[n..];
                if self.hdr_len == 4 {
                    self.remaining = u24le(&self.hdr).unwrap_or(0);
                    if !self.continued {
                        self.seq = self.hdr[3];
                    }
                    if self.remaining == 0 {
                        self.finish(on);
                    }
                }
                continue;
            }
            let n = self.remaining.min(d.len());
            let room = if self.frozen {
                0
            } else {
                self.cap.saturating_sub(self.buf.len())
            };
            let keep = n.min(room);
            self.buf.extend_from_slice(&d[..keep]);
            self.len = self.len.saturating_add(n);
            self.remaining -= n;
            d = &d[n..];
            if self.remaining == 0 {
                self.finish(on);
            }
        }
        let missing = seg.total_len.saturating_sub(seg.data.len());
        if missing == 0 {
            return false;
        }
        if self.hdr_len == 4 && missing <= self.remaining {
            // Still inside the packet: its end is known.
            self.remaining -= missing;
            self.len = self.len.saturating_add(missing);
            // Bytes after the gap must not be kept as if they followed.
            self.frozen = true;
            if self.remaining == 0 {
                self.finish(on);
            }
            return false;
        }
        self.lose();
        true
    }

    fn finish(&mut self, on: &mut impl FnMut(&Packet<'_>)) {
        self.hdr_len = 0;
        if u24le(&self.hdr) == Some(MAX_PAYLOAD) {
            self.continued = true;
            return;
        }
        on(&Packet {
            seq: self.seq,
            len: self.len,
            body: &self.buf,
            start: self.start,
        });
        self.buf.clear();
        self.len = 0;
        self.continued = false;
        self.frozen = false;
    }
}
