//! Message-level knowledge of protocol v3: which tags each side may send,
//! which lengths are sane for them, and the few fields we read.

use crate::db::DbError;

/// Protocol 3.0 in a StartupMessage.
pub const PROTOCOL_3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The server refuses larger messages (PQ_LARGE_MESSAGE_LIMIT is 1 GiB).
pub const MAX_MESSAGE: usize = 1 << 30;
/// Startup packets are capped at 10000 bytes by the server (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP: usize = 10_000;

/// Is `tag` a message the client (frontend) may send in protocol v3?
pub fn client_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C'
            | b'D'
            | b'E'
            | b'F'
            | b'H'
            | b'P'
            | b'Q'
            | b'S'
            | b'X'
            | b'c'
            | b'd'
            | b'f'
            | b'p'
    )
}

/// Is `tag` a message the server (backend) may send in protocol v3?
pub fn server_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'R' | b'K'
            | b'S'
            | b'Z'
            | b'T'
            | b'D'
            | b'C'
            | b'I'
            | b'E'
            | b'N'
            | b'A'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b't'
            | b's'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'V'
            | b'v'
    )
}

/// Tag and length (including the length field itself) of a message header:
/// fixed-size messages must have their exact size, which is what keeps
/// random bytes from passing as a header.
pub fn header_ok(client: bool, tag: u8, len: usize) -> bool {
    if !(4..=MAX_MESSAGE).contains(&len) {
        return false;
    }
    if client {
        client_tag(tag)
            && match tag {
                b'S' | b'H' | b'X' | b'c' => len == 4,
                b'E' => len >= 9,
                b'B' => len >= 12,
                b'P' => len >= 8,
                b'C' | b'D' => len >= 6,
                b'Q' => len >= 5,
                _ => true,
            }
    } else {
        server_tag(tag)
            && match tag {
                b'Z' => len == 5,
                b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => len == 4,
                b'R' => len >= 8,
                b'K' => (12..=4 + 4 + 256).contains(&len),
                b'C' => len >= 5,
                b'D' | b'T' | b't' => len >= 6,
                _ => true,
            }
    }
}

/// Splits a NUL-terminated string off the front; a string cut by the
/// capture runs to the end of the bytes.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(0, b) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

pub fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Text for an operation. A prefix cut by the capture may end inside a
/// UTF-8 sequence: drop that partial character rather than mangle it.
pub fn text(b: &[u8], cut: bool) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(e) if cut && e.error_len().is_none() => {
            String::from_utf8_lossy(&b[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// `database` (default: `user`) from the parameters of a StartupMessage
/// body after the protocol version.
pub fn startup_database(mut params: &[u8]) -> Option<String> {
    let mut user = None;
    let mut database = None;
    while !params.is_empty() && params[0] != 0 {
        let (k, rest) = cstr(params);
        let (v, rest) = cstr(rest);
        params = rest;
        match k {
            b"database" if !v.is_empty() => database = Some(v),
            b"user" if !v.is_empty() => user = Some(v),
            _ => {}
        }
    }
    database.or(user).map(|v| text(v, false))
}

/// SQLSTATE ('C') and message ('M') of an ErrorResponse body.
pub fn error_fields(mut b: &[u8]) -> DbError {
    let mut err = DbError {
        code: String::new(),
        message: String::new(),
    };
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        let (v, rest) = cstr(rest);
        b = rest;
        match field {
            b'C' => err.code = text(v, true),
            b'M' => err.message = text(v, true),
            _ => {}
        }
    }
    err
}

/// Rows from a CommandComplete tag ("SELECT 5", "INSERT 0 1", "UPDATE 3");
/// None for commands that report no count ("BEGIN", "CREATE TABLE").
pub fn tag_rows(tag: &[u8]) -> Option<u64> {
    let (tag, _) = cstr(tag);
    let cmd = tag.split(|&c| c == b' ').next()?;
    if !matches!(
        cmd,
        b"SELECT" | b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"FETCH" | b"MOVE" | b"COPY"
    ) {
        return None;
    }
    let last = tag.rsplit(|&c| c == b' ').next()?;
    if last.is_empty() || last.len() > 20 || !last.iter().all(u8::is_ascii_digit) || last == tag {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}
