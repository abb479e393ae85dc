//! Incremental RESP2/RESP3 reader over a byte stream with holes.
//!
//! Hand-written rather than `redis-protocol`: that crate decodes whole
//! frames from a contiguous buffer, while captures here are prefixes of
//! syscalls, so a 1 MB bulk string arrives as 8 KiB of bytes plus "the rest
//! moved but was not captured". This reader keeps only header lines and the
//! first bytes of each blob, skips blob payloads by their declared length
//! (captured or not), and reports the shape of each top-level value.
//! Every RESP3 type is always understood, so no mode switch is needed after
//! `HELLO 3` (a RESP2 server simply never sends the RESP3 types).

use memchr::memchr;

/// Bytes kept of a simple string, error line or blob.
pub const MAX_TEXT: usize = 512;
/// Children kept of a top-level aggregate (the rest are only counted).
pub const MAX_CHILDREN: usize = 64;
/// Redis accepts inline commands up to 64 KiB; no header line is longer.
const MAX_LINE: usize = 64 * 1024;
const MAX_DEPTH: usize = 32;
/// Larger than any `proto-max-bulk-len` a server accepts (512 MB default).
const MAX_BLOB: i64 = 1 << 40;
const MAX_COUNT: i64 = 1 << 32;

/// The shape of one RESP value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Value {
    /// Type byte: `+ - : $ * , ( # _ = ! ~ % > |`.
    pub kind: u8,
    /// Aggregate element count (map: pairs), blob length; -1 for RESP2 nulls.
    pub len: i64,
    /// Line content, or the first bytes of a blob.
    pub text: Vec<u8>,
    /// First direct children of a top-level aggregate (without their own).
    pub children: Vec<Value>,
}

impl Value {
    pub fn is_error(&self) -> bool {
        matches!(self.kind, b'-' | b'!')
    }

    pub fn is_aggregate(&self) -> bool {
        matches!(self.kind, b'*' | b'~' | b'%' | b'>') && self.len >= 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Bytes missing from the capture where a header line was expected.
    SyncLost,
    /// Bytes that are not RESP.
    Protocol,
}

impl ReadError {
    pub fn name(self) -> &'static str {
        match self {
            ReadError::SyncLost => "sync_lost",
            ReadError::Protocol => "protocol",
        }
    }
}

#[derive(Debug, Clone)]
struct Frame {
    value: Value,
    /// Elements still to read.
    remaining: u64,
}

/// One direction's parse state.
#[derive(Debug, Clone)]
pub struct Reader {
    /// Client side: a top-level line not starting with `*` is an inline command.
    client: bool,
    line: Vec<u8>,
    /// Blob being read and how many bytes (payload + CRLF) are still due.
    blob: Option<(Value, u64)>,
    stack: Vec<Frame>,
}

impl Reader {
    pub fn new(client: bool) -> Self {
        Self {
            client,
            line: Vec::new(),
            blob: None,
            stack: Vec::new(),
        }
    }

    /// Between two top-level values.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && self.blob.is_none() && self.stack.is_empty()
    }

    pub fn reset(&mut self) {
        self.line.clear();
        self.blob = None;
        self.stack.clear();
    }

    /// The top-level value being read, as far as it got (for a loss mid-value).
    pub fn partial(&self) -> Option<Value> {
        match (self.stack.first(), &self.blob) {
            (Some(f), _) => Some(f.value.clone()),
            (None, Some((v, _))) => Some(v.clone()),
            _ => None,
        }
    }

    /// Captured bytes; completed top-level values go to `out`.
    pub fn bytes(&mut self, mut data: &[u8], out: &mut Vec<Value>) -> Result<(), ReadError> {
        while !data.is_empty() {
            if let Some((v, left)) = &mut self.blob {
                let n = (*left).min(data.len() as u64) as usize;
                let payload_left = left.saturating_sub(2).min(n as u64) as usize;
                let room = MAX_TEXT.saturating_sub(v.text.len());
                v.text.extend_from_slice(&data[..payload_left.min(room)]);
                *left -= n as u64;
                data = &data[n..];
                if *left == 0 {
                    let (v, _) = self.blob.take().expect("blob");
                    self.complete(v, out);
                }
                continue;
            }
            match memchr(b'\n', data) {
                None => {
                    if self.line.len() + data.len() > MAX_LINE {
                        return Err(ReadError::Protocol);
                    }
                    self.line.extend_from_slice(data);
                    return Ok(());
                }
                Some(i) => {
                    if self.line.len() + i > MAX_LINE {
                        return Err(ReadError::Protocol);
                    }
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    let r = self.header(&line, out);
                    line.clear();
                    self.line = line;
                    r?;
                }
            }
        }
        Ok(())
    }

    /// `n` bytes moved but were not captured. Fine inside a blob payload;
    /// anywhere else the framing is gone.
    pub fn gap(&mut self, n: u64, out: &mut Vec<Value>) -> Result<(), ReadError> {
        if n == 0 {
            return Ok(());
        }
        if let Some((_, left)) = &mut self.blob {
            if n < *left {
                *left -= n;
                return Ok(());
            }
            if n == *left {
                let (v, _) = self.blob.take().expect("blob");
                self.complete(v, out);
                return Ok(());
            }
        }
        Err(ReadError::SyncLost)
    }

    fn header(&mut self, line: &[u8], out: &mut Vec<Value>) -> Result<(), ReadError> {
        let Some((&t, rest)) = line.split_first() else {
            // Redis skips empty inline lines.
            return if self.client && self.stack.is_empty() {
                Ok(())
            } else {
                Err(ReadError::Protocol)
            };
        };
        if self.client && self.stack.is_empty() && t != b'*' {
            if let Some(v) = inline(line) {
                self.complete(v, out);
            }
            return Ok(());
        }
        match t {
            b'+' | b'-' | b':' | b',' | b'(' | b'#' | b'_' => {
                let text = rest[..rest.len().min(MAX_TEXT)].to_vec();
                self.complete(
                    Value {
                        kind: t,
                        text,
                        ..Value::default()
                    },
                    out,
                );
            }
            b'$' | b'=' | b'!' => {
                let len = number(rest)?;
                if !(-1..=MAX_BLOB).contains(&len) {
                    return Err(ReadError::Protocol);
                }
                let v = Value {
                    kind: t,
                    len,
                    ..Value::default()
                };
                if len < 0 {
                    self.complete(v, out);
                } else {
                    self.blob = Some((v, len as u64 + 2));
                }
            }
            b'*' | b'~' | b'%' | b'>' | b'|' => {
                let len = number(rest)?;
                if !(-1..=MAX_COUNT).contains(&len) {
                    return Err(ReadError::Protocol);
                }
                let v = Value {
                    kind: t,
                    len,
                    ..Value::default()
                };
                let remaining = if matches!(t, b'%' | b'|') {
                    len.max(0) as u64 * 2
                } else {
                    len.max(0) as u64
                };
                if remaining == 0 {
                    self.complete(v, out);
                } else {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(ReadError::Protocol);
                    }
                    self.stack.push(Frame {
                        value: v,
                        remaining,
                    });
                }
            }
            _ => return Err(ReadError::Protocol),
        }
        Ok(())
    }

    /// A value is complete: attach it to its parent, closing every parent
    /// it was the last element of.
    fn complete(&mut self, mut v: Value, out: &mut Vec<Value>) {
        loop {
            // Attributes (`|`) describe the next value; they are not elements.
            if v.kind == b'|' {
                return;
            }
            let depth = self.stack.len();
            let Some(top) = self.stack.last_mut() else {
                out.push(v);
                return;
            };
            if depth == 1 && top.value.kind != b'|' && top.value.children.len() < MAX_CHILDREN {
                v.children = Vec::new();
                top.value.children.push(v);
            }
            top.remaining -= 1;
            if top.remaining > 0 {
                return;
            }
            v = self.stack.pop().expect("frame").value;
        }
    }
}

fn number(s: &[u8]) -> Result<i64, ReadError> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ReadError::Protocol)
}

/// An inline command (`PING`, `SET k v` typed into telnet) as if it were
/// an array of blobs. Quotes are not interpreted.
fn inline(line: &[u8]) -> Option<Value> {
    let words: Vec<Value> = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| Value {
            kind: b'$',
            len: w.len() as i64,
            text: w[..w.len().min(MAX_TEXT)].to_vec(),
            children: Vec::new(),
        })
        .collect();
    if words.is_empty() {
        return None;
    }
    Some(Value {
        kind: b'*',
        len: words.len() as i64,
        text: Vec::new(),
        children: words.into_iter().take(MAX_CHILDREN).collect(),
    })
}
