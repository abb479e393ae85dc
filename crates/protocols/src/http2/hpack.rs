//! HPACK (RFC 7541) header block decoding, one decoder per direction.
//!
//! Field decoding is written here rather than taken from a crate: the
//! decoders of `loona-hpack`/`fluke-hpack`/`hpack` stop at the first index
//! they cannot resolve and their tables cannot hold an entry whose name is
//! unknown. An observer that joined mid-connection (or lost a header block
//! to a capture gap) needs both: keep counting insertions with placeholder
//! entries so later indices still point at the right entries, and report
//! "unknown" instead of a wrong name. Huffman strings use `loona-hpack`'s
//! decoder, which returns errors on bad input.
//!
//! Invariant that makes partial knowledge safe: entries are numbered from
//! the newest, and we see every insertion made since the table became
//! unknown, so an index we can resolve is the encoder's entry; an index past
//! our entries is "unknown", never an older entry. Evicting earlier than the
//! encoder (placeholder sizes, size cap) only turns hits into "unknown".

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;

/// Largest dynamic table we hold (bytes as RFC 7541 counts them). Peers
/// almost always use 4096; a larger table is trimmed, which only costs
/// resolutions, never correctness.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Initial SETTINGS_HEADER_TABLE_SIZE (RFC 7540 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// Bad integer, string, Huffman code or index: the table is now unknown.
    Malformed,
}

#[derive(Debug, Clone)]
struct Entry {
    /// None: inserted with a name we could not resolve.
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
}

impl Entry {
    /// RFC 7541 §4.1 size; a lower bound when the name is unknown.
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, |n| n.len()) + self.value.len() + 32
    }
}

enum Lookup<'a> {
    Found(&'a [u8], &'a [u8]),
    NameOnly(&'a [u8]),
    Unknown,
    Invalid,
}

#[derive(Debug, Clone)]
pub struct HpackDecoder {
    /// Newest first (index 62 is `table[0]`).
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// Peer's SETTINGS_HEADER_TABLE_SIZE: the most a size update may ask.
    allowed: usize,
    /// Entries we never saw may sit past the end of `table`.
    partial: bool,
}

impl Default for HpackDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HpackDecoder {
    pub fn new() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            allowed: DEFAULT_TABLE_SIZE,
            partial: false,
        }
    }

    /// True when some entries may be unknown (joined late or lost a block).
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// We missed header blocks: forget the table, but keep decoding so that
    /// new insertions make it useful again.
    pub fn reset_unknown(&mut self) {
        self.table.clear();
        self.size = 0;
        self.partial = true;
        // The real limit is unknown: allow the largest we hold.
        self.allowed = self.allowed.max(MAX_TABLE_SIZE);
    }

    /// SETTINGS_HEADER_TABLE_SIZE sent by the side that decodes these
    /// blocks (RFC 7541 §4.2): the bound for later size updates. The table
    /// itself changes only when the encoder sends a size update.
    pub fn set_allowed(&mut self, size: u32) {
        self.allowed = size as usize;
    }

    fn set_max_size(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.allowed && !self.partial {
            return Err(HpackError::Malformed);
        }
        self.max_size = size.min(MAX_TABLE_SIZE);
        self.evict();
        Ok(())
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some(e) => self.size = self.size.saturating_sub(e.size()),
                None => self.size = 0,
            }
        }
    }

    fn insert(&mut self, e: Entry) {
        self.size += e.size();
        self.table.push_front(e);
        self.evict();
    }

    fn lookup(&self, index: usize) -> Lookup<'_> {
        if index == 0 {
            return Lookup::Invalid;
        }
        if let Some((n, v)) = STATIC_TABLE.get(index - 1) {
            return Lookup::Found(n.as_bytes(), v.as_bytes());
        }
        match self.table.get(index - 1 - STATIC_TABLE.len()) {
            Some(Entry {
                name: Some(n),
                value,
            }) => Lookup::Found(n, value),
            Some(Entry { name: None, .. }) => Lookup::Unknown,
            None if self.partial => Lookup::Unknown,
            None => Lookup::Invalid,
        }
    }

    fn name_of(&self, index: usize) -> Lookup<'_> {
        match self.lookup(index) {
            Lookup::Found(n, _) => Lookup::NameOnly(n),
            other => other,
        }
    }

    /// Decodes one complete header block, calling `field` for every field
    /// whose name and value are known. Ok(false): some fields could not be
    /// resolved (table partly unknown). On error the table becomes unknown.
    pub fn decode(
        &mut self,
        block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<bool, HpackError> {
        let r = self.decode_inner(block, field);
        if r.is_err() {
            self.reset_unknown();
        }
        r
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<bool, HpackError> {
        let mut all_known = true;
        let mut p = 0;
        while p < block.len() {
            let b = block[p];
            let rest = &block[p..];
            if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let (index, n) = integer(rest, 7)?;
                p += n;
                match self.lookup(index) {
                    Lookup::Found(name, value) => field(name, value),
                    Lookup::Unknown => all_known = false,
                    _ => return Err(HpackError::Malformed),
                }
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                let (size, n) = integer(rest, 5)?;
                p += n;
                self.set_max_size(size)?;
            } else {
                // Literal (§6.2): with incremental indexing (01), without
                // indexing (0000) or never indexed (0001).
                let indexing = b & 0x40 != 0;
                let (index, mut n) = integer(rest, if indexing { 6 } else { 4 })?;
                let name: Option<Vec<u8>> = if index == 0 {
                    let (s, m) = string(&rest[n..])?;
                    n += m;
                    Some(s.into_owned())
                } else {
                    match self.name_of(index) {
                        Lookup::NameOnly(name) => Some(name.to_vec()),
                        Lookup::Unknown => None,
                        _ => return Err(HpackError::Malformed),
                    }
                };
                let (value, m) = string(&rest[n..])?;
                n += m;
                p += n;
                match &name {
                    Some(name) => field(name, &value),
                    None => all_known = false,
                }
                if indexing {
                    self.insert(Entry {
                        name: name.map(Vec::into_boxed_slice),
                        value: value.into_owned().into_boxed_slice(),
                    });
                }
            }
        }
        Ok(all_known)
    }
}

/// Prefix-coded integer (§5.1). Returns (value, bytes used); values above
/// 2^28 are refused as the RFC allows.
fn integer(buf: &[u8], prefix_bits: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u16 << prefix_bits) as usize - 1;
    let first = *buf.first().ok_or(HpackError::Malformed)? as usize & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = first;
    for (i, &b) in buf[1..].iter().enumerate().take(4) {
        value += ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 2));
        }
    }
    Err(HpackError::Malformed)
}

thread_local! {
    // Building the Huffman decoder's tables costs ~257 map inserts; share one.
    static HUFFMAN: RefCell<Option<HuffmanDecoder>> = const { RefCell::new(None) };
}

/// String literal (§5.2), Huffman-coded or raw.
fn string(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), HpackError> {
    let huffman = buf.first().ok_or(HpackError::Malformed)? & 0x80 != 0;
    let (len, n) = integer(buf, 7)?;
    let raw = buf.get(n..n + len).ok_or(HpackError::Malformed)?;
    if !huffman {
        return Ok((Cow::Borrowed(raw), n + len));
    }
    let decoded = HUFFMAN.with(|h| {
        let mut h = h.borrow_mut();
        h.get_or_insert_with(HuffmanDecoder::new)
            .decode(raw)
            .map_err(|_| HpackError::Malformed)
    })?;
    Ok((Cow::Owned(decoded), n + len))
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut HpackDecoder, block: &[u8]) -> (Vec<(String, String)>, bool) {
        let mut v = Vec::new();
        let known = d
            .decode(block, &mut |n, val| {
                v.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(val).into_owned(),
                ))
            })
            .unwrap();
        (v, known)
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        // RFC 7541 C.4.1 and C.4.2: the second block refers to the first's entries.
        let mut d = HpackDecoder::new();
        let b1 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let (f, known) = decode_all(&mut d, &b1);
        assert!(known);
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        let b2 = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let (f, _) = decode_all(&mut d, &b2);
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(f[4], ("cache-control".into(), "no-cache".into()));
    }

    #[test]
    fn partial_table_reports_unknown_not_wrong() {
        let mut d = HpackDecoder::new();
        d.reset_unknown();
        // Index 62 (unknown), then a literal with indexed name 63 (unknown)
        // that inserts: the next block's 62 is that entry, still nameless.
        let (f, known) = decode_all(&mut d, &[0xbe, 0x7f, 0x00, 0x01, b'x']);
        assert!(!known);
        assert!(f.is_empty());
        let (f, known) = decode_all(&mut d, &[0xbe, 0x82]);
        assert!(!known);
        assert_eq!(f, vec![(":method".into(), "GET".into())]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut d = HpackDecoder::new();
        assert!(d.decode(&[0xbe], &mut |_, _| {}).is_err(), "empty table");
        assert!(d.is_partial());
        let mut d = HpackDecoder::new();
        assert!(d.decode(&[0x80], &mut |_, _| {}).is_err(), "index 0");
        let mut d = HpackDecoder::new();
        assert!(d
            .decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &mut |_, _| {})
            .is_err());
        let mut d = HpackDecoder::new();
        assert!(
            d.decode(&[0x3f, 0xe1, 0xff, 0x03], &mut |_, _| {}).is_err(),
            "size update over allowed"
        );
    }
}
