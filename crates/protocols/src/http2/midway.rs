//! An HTTP/2 connection joined midway (it opened before the agent started)
//! shows no preface, only frames. A call's bytes are taken for HTTP/2 when
//! they are a chain of plausible frames from their first byte that covers
//! them exactly (or runs past them, when they are a captured prefix of the
//! call: `cut`), and a HEADERS frame among them names a pseudo-header we can
//! decode without the dynamic table we never saw (a static index or a
//! literal name), which tells who wrote it: requests carry `:method`,
//! `:scheme`, `:path` or `:authority`, responses `:status` (RFC 9113 8.3,
//! RFC 7541 Appendix A). Frames that say nothing of their writer (DATA,
//! WINDOW_UPDATE, a block of dynamic-table entries only) decide nothing: a
//! later call may.

use super::frame::{FrameHeader, CONTINUATION, END_HEADERS, HEADERS};
use super::HpackDecoder;

/// What one call's bytes say of a connection joined midway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Midway {
    /// Not a chain of HTTP/2 frames.
    No,
    /// HTTP/2 frames, none telling who wrote them.
    Frames,
    /// HTTP/2 frames with a request (true) or response (false) header block.
    FromClient(bool),
}

pub fn midway(data: &[u8], cut: bool) -> Midway {
    let mut p = 0usize;
    let mut writer = None;
    // A header block not ended yet: CONTINUATION frames may follow.
    let mut block_open = false;
    while p < data.len() {
        let Some(h) = FrameHeader::parse(&data[p..]) else {
            return Midway::No; // a reserved bit, or a header cut short
        };
        let continues = h.kind == CONTINUATION && block_open && h.valid();
        if !continues && !h.plausible_start() {
            return Midway::No;
        }
        if matches!(h.kind, HEADERS | CONTINUATION) {
            block_open = h.flags & END_HEADERS == 0;
        }
        if h.kind == HEADERS && writer.is_none() && h.stream % 2 == 1 {
            writer = block_writer(&h, &data[p + 9..]);
        }
        p += 9 + h.len as usize;
    }
    if p == 0 || (p > data.len() && !cut) {
        return Midway::No;
    }
    match writer {
        Some(from_client) => Midway::FromClient(from_client),
        None => Midway::Frames,
    }
}

/// Who wrote the HEADERS frame `h` whose payload starts `payload` (perhaps
/// cut): the first pseudo-header its block names with what the static
/// table, or the block itself, tells (an entry of the unseen dynamic table
/// is skipped). None when no such field is decoded.
fn block_writer(h: &FrameHeader, payload: &[u8]) -> Option<bool> {
    let (block, _) = super::header_fragment(h, &payload[..payload.len().min(h.len as usize)])?;
    let mut decoder = HpackDecoder::new();
    decoder.reset_unknown();
    let mut writer = None;
    // A block cut by the capture ends in an error: the fields before count.
    let _ = decoder.decode(block, &mut |name, _| {
        if writer.is_none() {
            writer = match name {
                b":method" | b":path" | b":scheme" | b":authority" | b":protocol" => Some(true),
                b":status" => Some(false),
                _ => None,
            };
        }
    });
    writer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::frame::WINDOW_UPDATE;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_first_field_of_a_block_tells_its_writer() {
        // :method POST (indexed 3), :status 200 (indexed 8), a literal
        // :path with incremental indexing (name 4), a size update first;
        // a literal name, and entries of the unseen table before a field.
        for (block, want) in [
            (&[0x83u8, 0x86][..], Midway::FromClient(true)),
            (&[0x88], Midway::FromClient(false)),
            (&[0x44, 0x01, b'/'], Midway::FromClient(true)),
            (&[0x3f, 0xe1, 0x1f, 0x88], Midway::FromClient(false)),
            (&[0xbe], Midway::Frames), // dynamic entry 62
            (&[0x40, 0x01, b'x', 0x01, b'y'], Midway::Frames), // a regular field
            (
                &[0x40, 0x05, b':', b'p', b'a', b't', b'h', 0x01, b'/'],
                Midway::FromClient(true),
            ),
            (&[0xc3, 0xc2, 0x83], Midway::FromClient(true)), // dynamic entries first
        ] {
            let f = frame(HEADERS, END_HEADERS, 1, block);
            assert_eq!(midway(&f, false), want, "{block:x?}");
        }
        // Padded and with priority: the block starts after both.
        use crate::http2::frame::{PADDED, PRIORITY_FLAG};
        let f = frame(
            HEADERS,
            END_HEADERS | PADDED | PRIORITY_FLAG,
            3,
            &[1, 0, 0, 0, 0, 16, 0x88, 0],
        );
        assert_eq!(midway(&f, false), Midway::FromClient(false));
    }

    #[test]
    fn the_chain_must_cover_the_call() {
        let mut call = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]);
        call.extend(frame(HEADERS, END_HEADERS, 5, &[0x83]));
        call.extend(frame(0, 1, 5, b"hello"));
        assert_eq!(midway(&call, false), Midway::FromClient(true));
        // The last frame may run past a captured prefix, not past the call.
        let prefix = &call[..call.len() - 2];
        assert_eq!(midway(prefix, true), Midway::FromClient(true));
        assert_eq!(midway(prefix, false), Midway::No);
        // Not a header cut short, nor bytes after the chain.
        assert_eq!(midway(&call[..call.len() - 10], true), Midway::No);
        call.push(0);
        assert_eq!(midway(&call, false), Midway::No);
        assert_eq!(midway(&frame(0, 0, 1, b"data"), false), Midway::Frames);
        assert_eq!(midway(b"", true), Midway::No);
        // A block continued in CONTINUATION frames; a stray one is not a start.
        let mut block = frame(HEADERS, 0, 1, &[0x88]);
        block.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x86]));
        assert_eq!(midway(&block, false), Midway::FromClient(false));
        assert_eq!(
            midway(&frame(CONTINUATION, END_HEADERS, 1, &[0x86]), false),
            Midway::No
        );
    }
}
