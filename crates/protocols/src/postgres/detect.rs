//! Does a connection speak PostgreSQL? Decided on the first bytes seen in
//! one direction, strictly enough that HTTP/1, Redis, MySQL and TLS do not
//! pass: lengths must be exact or sane, fields must be well formed.

use super::message::{
    be32, cstr, header_ok, CANCEL_REQUEST, GSSENC_REQUEST, MAX_STARTUP, PROTOCOL_3, SSL_REQUEST,
};

/// `from_client`: the bytes were sent by the client.
pub fn detect(from_client: bool, data: &[u8]) -> bool {
    if from_client {
        startup(data) || client_message(data)
    } else {
        server_start(data)
    }
}

/// Could this be the start of a startup-phase packet? A split write may
/// show fewer than 8 bytes; its length's high byte is then 0, which no
/// tagged message starts with.
pub(super) fn maybe_startup(data: &[u8]) -> bool {
    if data.len() >= 8 {
        startup(data)
    } else {
        data.first() == Some(&0)
    }
}

/// StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
pub(super) fn startup(data: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(data), be32(data.get(4..).unwrap_or_default())) else {
        return false;
    };
    let len = len as usize;
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        // PostgreSQL 18 allows secret keys up to 256 bytes.
        CANCEL_REQUEST => (16..=8 + 256).contains(&len),
        PROTOCOL_3 => {
            if !(9..=MAX_STARTUP).contains(&len) {
                return false;
            }
            // Parameter names are lowercase identifiers ("user", "database", "_pq_.x").
            let params = &data[8..data.len().min(len)];
            let (name, _) = cstr(params);
            params.is_empty()
                || (!name.is_empty()
                    && name
                        .iter()
                        .all(|&c| c.is_ascii_lowercase() || c == b'_' || c == b'.'))
        }
        _ => false,
    }
}

/// A client joined mid-stream: a Query, Parse or Bind with a sane length
/// and well-formed leading fields.
fn client_message(data: &[u8]) -> bool {
    let (Some(&tag), Some(len)) = (data.first(), be32(data.get(1..).unwrap_or_default())) else {
        return false;
    };
    let len = len as usize;
    if !matches!(tag, b'Q' | b'P' | b'B') || !header_ok(true, tag, len) || len > 64 << 20 {
        return false;
    }
    let body = &data[5..data.len().min(1 + len)];
    let whole = data.len() > len;
    match tag {
        b'Q' => match memchr::memchr(0, body) {
            Some(i) => sql_like(&body[..i]) && (!whole || i + 1 == body.len()),
            None => !whole && sql_like(body),
        },
        b'P' => {
            let Some((_, rest)) = name(body) else {
                return false;
            };
            match memchr::memchr(0, rest) {
                // Then the parameter count and that many type OIDs.
                Some(j) => {
                    let types = &rest[j + 1..];
                    sql_like(&rest[..j])
                        && (!whole
                            || (types.len() >= 2
                                && types.len()
                                    == 2 + 4 * u16::from_be_bytes([types[0], types[1]]) as usize))
                }
                None => !whole && sql_like(rest),
            }
        }
        _ => match name(body) {
            // Then three counts at least (formats, parameters, result formats).
            Some((_, rest)) => match name(rest) {
                Some((_, after)) => !whole || after.len() >= 6,
                None => !whole && rest.len() < 64 && rest.iter().all(u8::is_ascii_graphic),
            },
            None => false,
        },
    }
}

/// A statement or portal name at the front: short, printable, terminated.
fn name(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(0, &b[..b.len().min(64)])?;
    let (name, rest) = (&b[..i], &b[i + 1..]);
    name.iter()
        .all(|c| c.is_ascii_graphic())
        .then_some((name, rest))
}

/// Query text: printable, starting like SQL.
fn sql_like(text: &[u8]) -> bool {
    let first = text.iter().find(|c| !c.is_ascii_whitespace());
    first.is_none_or(|&c| c.is_ascii_alphabetic() || matches!(c, b'(' | b'-' | b'/' | b';'))
        && text
            .iter()
            .all(|&c| c >= 0x80 || c.is_ascii_graphic() || c.is_ascii_whitespace())
}

/// First bytes from a server: the answer to SSLRequest/GSSENCRequest, an
/// authentication request, or (joined mid-stream) a run of well-formed
/// backend messages.
fn server_start(data: &[u8]) -> bool {
    if data.len() == 1 {
        return matches!(data[0], b'N' | b'S' | b'G');
    }
    if data.first() == Some(&b'R') {
        // AuthenticationOk/KerberosV5/Cleartext/MD5/GSS/SSPI/SASL...
        return match (be32(&data[1..]), be32(data.get(5..).unwrap_or_default())) {
            (Some(len), Some(code)) => {
                (8..=MAX_STARTUP as u32).contains(&len)
                    && matches!(code, 0 | 2 | 3 | 5 | 7 | 8 | 9 | 10 | 11 | 12)
            }
            _ => false,
        };
    }
    // Joined mid-stream: every header must be valid and the run must end
    // exactly with the data, or be long enough to be no accident.
    let mut pos = 0usize;
    let mut count = 0;
    while pos < data.len() {
        let Some(len) = be32(data.get(pos + 1..).unwrap_or_default()) else {
            break;
        };
        if !header_ok(false, data[pos], len as usize) || len as usize > 64 << 20 {
            return false;
        }
        count += 1;
        pos += 1 + len as usize;
    }
    count >= 1 && (pos == data.len() || count >= 3)
}
