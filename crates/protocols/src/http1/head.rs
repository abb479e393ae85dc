//! HTTP/1.x message heads: request line / status line plus the headers that
//! decide framing and trace context. Parsing is delegated to `httparse`.

use super::ParseError;
use std::mem::MaybeUninit;

/// Headers per message we accept; more is treated as invalid traffic.
const MAX_HEADERS: usize = 96;

/// How the body of a message is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response without length: ends when the connection closes.
    UntilClose,
    /// 101 Switching Protocols: the bytes after the head are another protocol.
    Switched,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub host: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    pub user_agent: Option<String>,
    /// Bytes of the head including the final CRLF CRLF.
    pub head_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: u8,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    /// `Upgrade` header (the protocol a 101 switches to).
    pub upgrade: Option<String>,
    pub head_len: usize,
}

impl RequestHead {
    /// Request bodies have a length, are chunked, or are absent.
    pub fn framing(&self) -> Framing {
        if self.chunked {
            Framing::Chunked
        } else {
            match self.content_length {
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            }
        }
    }
}

impl ResponseHead {
    /// Response framing also depends on the request it answers.
    pub fn framing(&self, request_method: Option<&str>) -> Framing {
        if self.status == 101 {
            return Framing::Switched;
        }
        if request_method == Some("HEAD")
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Framing::None;
        }
        if request_method == Some("CONNECT") && (200..300).contains(&self.status) {
            return Framing::UntilClose;
        }
        if self.chunked {
            Framing::Chunked
        } else {
            match self.content_length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        }
    }

    /// 1xx other than 101 are interim: the final response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// A 101 to cleartext HTTP/2 (RFC 7540 3.2).
    pub fn is_h2c_upgrade(&self) -> bool {
        self.status == 101
            && self
                .upgrade
                .as_deref()
                .is_some_and(|u| u.trim().eq_ignore_ascii_case("h2c"))
    }
}

/// What the framing-relevant headers say, shared by requests and responses.
#[derive(Default)]
struct FramingHeaders {
    content_length: Option<u64>,
    chunked: bool,
    connection_close: bool,
}

fn framing_headers(
    headers: &[httparse::Header<'_>],
    version: u8,
) -> Result<FramingHeaders, ParseError> {
    let mut out = FramingHeaders {
        connection_close: version == 0,
        ..Default::default()
    };
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| ParseError::BadContentLength)?;
            let n = text
                .trim()
                .parse::<u64>()
                .map_err(|_| ParseError::BadContentLength)?;
            if out.content_length.is_some_and(|prev| prev != n) {
                return Err(ParseError::BadContentLength);
            }
            out.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the final coding (RFC 9112 6.1).
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            out.chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    out.connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    out.connection_close = false;
                }
            }
        }
    }
    Ok(out)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn lossy(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Room for the headers of one message, left uninitialised: httparse writes
/// each slot before it is read, and zeroing 96 slots (3 KiB) per message was
/// a visible part of parsing at 100k messages a second.
type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses a request head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, ParseError> {
    let mut slots = header_slots();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ParseError::Syntax(e.to_string())),
    };
    let version = req.version.unwrap_or(1);
    let framing = framing_headers(req.headers, version)?;
    let mut head = RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version,
        host: None,
        traceparent: None,
        tracestate: None,
        user_agent: None,
        content_length: framing.content_length,
        chunked: framing.chunked,
        connection_close: framing.connection_close,
        head_len,
    };
    // One pass for the headers we keep: the first of each, except tracestate,
    // whose values are joined with commas (RFC 9110 5.3; W3C tracestate may
    // be split over several lines).
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            head.host.get_or_insert_with(|| lossy(h.value));
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent.get_or_insert_with(|| lossy(h.value));
        } else if name.eq_ignore_ascii_case("traceparent") {
            head.traceparent.get_or_insert_with(|| lossy(h.value));
        } else if name.eq_ignore_ascii_case("tracestate") {
            let part = String::from_utf8_lossy(h.value);
            let part = part.trim();
            if !part.is_empty() {
                match &mut head.tracestate {
                    Some(joined) => {
                        joined.push(',');
                        joined.push_str(part);
                    }
                    None => head.tracestate = Some(part.to_owned()),
                }
            }
        }
    }
    Ok(Some(head))
}

/// Parses a response head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, ParseError> {
    let mut slots = header_slots();
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ParseError::Syntax(e.to_string())),
    };
    let version = resp.version.unwrap_or(1);
    let framing = framing_headers(resp.headers, version)?;
    let upgrade = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| lossy(h.value));
    Ok(Some(ResponseHead {
        status: resp.code.unwrap_or_default(),
        version,
        content_length: framing.content_length,
        chunked: framing.chunked,
        connection_close: framing.connection_close,
        upgrade,
        head_len,
    }))
}

/// Cheap check of the first bytes: could this be the start of a request?
pub fn looks_like_request(buf: &[u8]) -> bool {
    let Some(sp) = buf.iter().take(16).position(|b| *b == b' ') else {
        // Not enough bytes to see the method yet: uppercase so far is a maybe.
        return !buf.is_empty() && buf.len() < 16 && buf.iter().all(|b| b.is_ascii_uppercase());
    };
    sp >= 3
        && buf[..sp]
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_')
        && matches!(
            buf.get(sp + 1),
            None | Some(b'/') | Some(b'*') | Some(b'h') | Some(b'H')
        ) | (buf[..sp] == *b"CONNECT")
}

/// Cheap check of the first bytes: could this be the start of a response?
pub fn looks_like_response(buf: &[u8]) -> bool {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = buf.len().min(PREFIX.len());
    n > 0 && buf[..n] == PREFIX[..n]
}
