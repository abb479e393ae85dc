//! The compressed protocol (CLIENT_COMPRESS): once the login succeeded,
//! each direction is a series of frames, a 7-byte header (compressed length,
//! sequence id, uncompressed length) and a payload, zlib-deflated unless the
//! uncompressed length is 0 (small payloads are sent as they are). The
//! frames carry the ordinary packet stream, cut anywhere. This layer turns
//! each whole frame back into that stream, as a segment of its own for the
//! packet framer, with the timing of the syscall that completed the frame.
//!
//! Bytes the capture did not keep cannot be inflated: a frame inflates to
//! what its kept prefix gives, and the segment it makes says how long the
//! frame really was (the framer then skips or loses, as with any gap).

use crate::db::{Segment, Timing};
use flate2::{Decompress, FlushDecompress, Status};

/// Compressed payload bytes kept per frame: a frame's captured part is at
/// most one capture (4 KiB by default) per syscall it spans.
const KEEP_COMPRESSED: usize = 64 * 1024;
/// Inflated bytes made per frame at most (a frame holds up to 16 MiB):
/// the statement text and the answer's first packets are at its start,
/// and a small frame must not inflate into a large allocation.
const MAX_INFLATED: usize = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub(super) struct Inflater {
    hdr: [u8; 7],
    hdr_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    compressed_len: usize,
    uncompressed_len: usize,
    payload: Vec<u8>,
    /// Bytes of this frame were not captured: keep no more of it.
    gap: bool,
    /// Out of step: the frame boundaries are unknown until a resync.
    lost: bool,
    /// The other side spoke since this one got lost: its next segment
    /// starts a frame.
    resync: bool,
    out: Vec<u8>,
}

impl Inflater {
    #[cfg(test)]
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The other side spoke: a lost reader starts over at its next segment.
    pub fn may_resync(&mut self) {
        self.resync = self.lost;
    }

    /// Reads one segment of frames, calling `on` with the content of each
    /// frame that ends in it. Returns true when it became lost here.
    pub fn feed(&mut self, seg: &Segment<'_>, on: &mut impl FnMut(&Segment<'_>)) -> bool {
        if self.lost && std::mem::take(&mut self.resync) {
            self.hdr_len = 0;
            self.payload.clear();
            self.gap = false;
            self.lost = false;
        }
        if self.lost {
            return false;
        }
        let mut d = seg.data;
        while !d.is_empty() {
            if self.hdr_len < 7 {
                let n = (7 - self.hdr_len).min(d.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&d[..n]);
                self.hdr_len += n;
                d = &d[n..];
                if self.hdr_len == 7 {
                    self.compressed_len = u24(&self.hdr[0..3]);
                    self.uncompressed_len = u24(&self.hdr[4..7]);
                    self.remaining = self.compressed_len;
                    if self.remaining == 0 {
                        self.finish(seg.timing, on);
                    }
                }
                continue;
            }
            let n = self.remaining.min(d.len());
            let room = if self.gap {
                0
            } else {
                KEEP_COMPRESSED.saturating_sub(self.payload.len())
            };
            self.payload.extend_from_slice(&d[..n.min(room)]);
            self.gap |= n > room;
            self.remaining -= n;
            d = &d[n..];
            if self.remaining == 0 {
                self.finish(seg.timing, on);
            }
        }
        let missing = seg.total_len.saturating_sub(seg.data.len());
        if missing == 0 {
            return false;
        }
        if self.hdr_len == 7 && missing <= self.remaining {
            self.remaining -= missing;
            self.gap = true;
            if self.remaining == 0 {
                self.finish(seg.timing, on);
            }
            return false;
        }
        self.lost = true;
        self.resync = false;
        true
    }

    fn finish(&mut self, timing: Timing, on: &mut impl FnMut(&Segment<'_>)) {
        self.hdr_len = 0;
        let total_len = if self.uncompressed_len == 0 {
            // Sent as is.
            self.compressed_len
        } else {
            self.uncompressed_len
        };
        let data: &[u8] = if self.uncompressed_len == 0 {
            &self.payload
        } else {
            inflate(&self.payload, total_len.min(MAX_INFLATED), &mut self.out);
            &self.out
        };
        on(&Segment {
            data,
            total_len,
            tail: &[],
            frames: &[],
            timing,
        });
        self.payload.clear();
        self.out.clear();
        self.gap = false;
    }
}

/// Inflates a zlib stream, or as much of it as `input` holds, into `out`
/// (at most `limit` bytes). A damaged stream gives what came before the
/// damage.
fn inflate(input: &[u8], limit: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(limit);
    let mut z = Decompress::new(true);
    loop {
        let consumed = z.total_in() as usize;
        let before = out.len();
        match z.decompress_vec(&input[consumed..], out, FlushDecompress::Sync) {
            Ok(Status::StreamEnd) | Err(_) => return,
            Ok(_) => {}
        }
        let stalled = out.len() == before && z.total_in() as usize == consumed;
        if stalled || out.len() >= limit || z.total_in() as usize >= input.len() {
            return;
        }
    }
}

fn u24(b: &[u8]) -> usize {
    b[0] as usize | (b[1] as usize) << 8 | (b[2] as usize) << 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::ZlibEncoder, Compression};
    use std::io::Write;

    fn frame(seq: u8, content: &[u8], compress: bool) -> Vec<u8> {
        let (payload, uncompressed) = if compress {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(content).unwrap();
            (e.finish().unwrap(), content.len())
        } else {
            (content.to_vec(), 0)
        };
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
        f.push(seq);
        f.extend_from_slice(&(uncompressed as u32).to_le_bytes()[..3]);
        f.extend_from_slice(&payload);
        f
    }

    fn seg(data: &[u8], total_len: usize) -> Segment<'_> {
        Segment {
            data,
            total_len,
            tail: &[],
            frames: &[],
            timing: Timing::default(),
        }
    }

    fn run(inf: &mut Inflater, data: &[u8], total_len: usize) -> Vec<(Vec<u8>, usize)> {
        let mut got = Vec::new();
        inf.feed(&seg(data, total_len), &mut |f| {
            got.push((f.data.to_vec(), f.total_len))
        });
        got
    }

    #[test]
    fn frames_compressed_or_not_give_back_their_content() {
        let query = b"\x21\x00\x00\x00\x03SELECT 'compressed', 'compressed'";
        let mut bytes = frame(0, b"\x09\x00\x00\x00\x03SELECT 1", false);
        bytes.extend(frame(1, query, true));
        let mut inf = Inflater::default();
        // Cut anywhere: one byte at a time.
        let mut got = Vec::new();
        for b in bytes.chunks(1) {
            got.extend(run(&mut inf, b, 1));
        }
        assert_eq!(
            got,
            vec![
                (b"\x09\x00\x00\x00\x03SELECT 1".to_vec(), 13),
                (query.to_vec(), query.len())
            ]
        );
        assert!(!inf.is_lost());
    }

    #[test]
    fn a_frame_cut_by_the_capture_gives_its_prefix_and_its_length() {
        let rows: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        let bytes = frame(1, &rows, true);
        let kept = bytes.len() / 2;
        let mut inf = Inflater::default();
        let got = run(&mut inf, &bytes[..kept], bytes.len());
        assert_eq!(got.len(), 1);
        let (prefix, total) = &got[0];
        assert_eq!(*total, rows.len());
        assert!(
            !prefix.is_empty() && rows.starts_with(prefix),
            "{}",
            prefix.len()
        );
        // The next frame is read again.
        let next = frame(2, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", true);
        assert_eq!(run(&mut inf, &next, next.len()).len(), 1);
        // A gap past the frame's end: boundaries unknown.
        assert!(inf.feed(&seg(&next[..3], next.len() + 10), &mut |_| {}));
        assert!(inf.is_lost());
    }

    #[test]
    fn garbage_inflates_to_nothing_harmful() {
        let mut bad = frame(0, b"whatever", true);
        let n = bad.len();
        bad[n - 4..].copy_from_slice(b"\xff\xff\xff\xff");
        let mut inf = Inflater::default();
        let got = run(&mut inf, &bad, bad.len());
        assert_eq!(got.len(), 1);
        // A bomb stops at the limit.
        let zeros = vec![0u8; 4 << 20];
        let bomb = frame(0, &zeros[..MAX_INFLATED * 2], true);
        let got = run(&mut inf, &bomb, bomb.len());
        assert!(got[0].0.len() <= MAX_INFLATED + 64 * 1024);
        assert_eq!(got[0].1, MAX_INFLATED * 2);
    }
}
