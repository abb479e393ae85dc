//! Chunked transfer coding (RFC 9112 section 7.1), tracked by counting: chunk
//! data is skipped by length and never needs to be captured. Only the size
//! lines must fall inside the captured prefix; when one does not, the decoder
//! reports that it lost sync and the caller falls back to watching for the
//! last-chunk marker at the end of each segment.

/// Longest size line (hex size plus extensions) we accept.
const MAX_LINE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading the hex size line of the next chunk.
    Size,
    Data(u64),
    /// CRLF after chunk data; the number is how many bytes are still due.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
}

/// Outcome of feeding one stretch of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkProgress {
    /// All bytes belonged to the body; more is expected.
    NeedMore,
    /// The body ended after this many bytes of the stretch.
    Done(usize),
    /// A size line lies outside the captured bytes (or is malformed).
    LostSync,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            line: Vec::new(),
        }
    }

    /// Feeds a stretch of `total` body bytes of which the first
    /// `captured.len()` and the last `tail.len()` are known: a chunk's data
    /// may run past the capture and the last chunk sit in the tail (a big
    /// upload read in cut 64 KiB reads).
    pub fn feed(&mut self, captured: &[u8], tail: &[u8], total: usize) -> ChunkProgress {
        let tail_from = total.saturating_sub(tail.len());
        let known = |pos: usize| {
            captured
                .get(pos)
                .or_else(|| tail.get(pos.checked_sub(tail_from)?))
        };
        let mut pos = 0usize;
        while pos < total {
            match self.state {
                State::Data(left) => {
                    let n = left.min((total - pos) as u64);
                    pos += n as usize;
                    self.state = if left == n {
                        State::DataEnd(2)
                    } else {
                        State::Data(left - n)
                    };
                }
                State::Done => return ChunkProgress::Done(pos),
                _ => {
                    let Some(&b) = known(pos) else {
                        return ChunkProgress::LostSync;
                    };
                    pos += 1;
                    if !self.line_byte(b) {
                        return ChunkProgress::LostSync;
                    }
                    if self.state == State::Done {
                        return ChunkProgress::Done(pos);
                    }
                }
            }
        }
        if self.state == State::Done {
            ChunkProgress::Done(pos)
        } else {
            ChunkProgress::NeedMore
        }
    }

    /// One byte of a line-oriented state. False: malformed.
    fn line_byte(&mut self, b: u8) -> bool {
        match self.state {
            State::DataEnd(due) => {
                let expected = if due == 2 { b'\r' } else { b'\n' };
                if b != expected {
                    return false;
                }
                self.state = if due == 2 {
                    State::DataEnd(1)
                } else {
                    State::Size
                };
                true
            }
            State::Size | State::Trailer => {
                if b != b'\n' {
                    if self.line.len() >= MAX_LINE {
                        return false;
                    }
                    self.line.push(b);
                    return true;
                }
                let line = std::mem::take(&mut self.line);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                if self.state == State::Trailer {
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                    return true;
                }
                let hex_end = line
                    .iter()
                    .position(|c| !c.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                if hex_end == 0 || hex_end > 15 {
                    return false;
                }
                let size = std::str::from_utf8(&line[..hex_end])
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                match size {
                    Some(0) => self.state = State::Trailer,
                    Some(n) => self.state = State::Data(n),
                    None => return false,
                }
                true
            }
            State::Data(_) | State::Done => true,
        }
    }
}

/// Does a stretch of bytes end with the last chunk and an empty trailer?
pub fn ends_with_last_chunk(end: &[u8]) -> bool {
    end.ends_with(b"\r\n0\r\n\r\n") || end == b"0\r\n\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_body_in_one_stretch() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\nGET /next";
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.feed(body, &[], body.len()),
            ChunkProgress::Done(body.len() - 9)
        );
    }

    #[test]
    fn split_anywhere() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..body.len() {
            let mut d = ChunkedDecoder::new();
            assert_eq!(
                d.feed(&body[..cut], &[], cut),
                ChunkProgress::NeedMore,
                "cut {cut}"
            );
            assert_eq!(
                d.feed(&body[cut..], &[], body.len() - cut),
                ChunkProgress::Done(body.len() - cut)
            );
        }
    }

    #[test]
    fn data_skipped_without_capture() {
        // 1 MiB chunk: only the size line is captured.
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.feed(b"100000\r\n", &[], 8 + 0x100000),
            ChunkProgress::NeedMore
        );
        assert_eq!(d.feed(b"\r\n0\r\n\r\n", &[], 7), ChunkProgress::Done(7));
    }

    #[test]
    fn size_line_outside_capture_loses_sync() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"2\r\nab", &[], 5 + 100), ChunkProgress::LostSync);
    }

    #[test]
    fn garbage_size_is_malformed() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"zz\r\n", &[], 4), ChunkProgress::LostSync);
    }

    #[test]
    fn last_chunk_marker() {
        assert!(ends_with_last_chunk(b"abc\r\n0\r\n\r\n"));
        assert!(ends_with_last_chunk(b"0\r\n\r\n"));
        assert!(!ends_with_last_chunk(b"10\r\n\r\n"));
    }
}
