//! Does a connection speak MySQL? Decided on the first bytes seen in one
//! direction, strictly enough that HTTP/1, PostgreSQL, Redis and TLS do not
//! pass: the header must be exact and the payload well formed.

use super::packet::{cmd, u24le};

/// A capture keeps at most this many bytes per syscall; a packet longer
/// than what we see is only believable when we saw at least this much.
const CAPTURE_HINT: usize = 4096;
/// Longest plausible greeting payload.
const MAX_GREETING: usize = 1024;

/// `from_client`: the bytes were sent by the client.
pub fn detect(from_client: bool, data: &[u8]) -> bool {
    if from_client {
        command_start(data)
    } else {
        greeting_start(data)
    }
}

/// Server greeting: seq 0, protocol 10, a version string starting with a
/// digit made of printable ASCII, NUL-terminated.
fn greeting_start(data: &[u8]) -> bool {
    let Some(len) = u24le(data) else {
        return false;
    };
    if !(40..=MAX_GREETING).contains(&len) || data.get(3) != Some(&0) || data.get(4) != Some(&10) {
        return false;
    }
    let payload = &data[5..data.len().min(4 + len)];
    let Some(end) = memchr::memchr(0, payload) else {
        return false;
    };
    let version = &payload[..end];
    version.first().is_some_and(u8::is_ascii_digit)
        && version.len() < 100
        && version.iter().all(|c| c.is_ascii_graphic())
}

/// Could a greeting start with these bytes? For a greeting split into
/// small writes, judged on what is there.
pub(super) fn maybe_greeting(data: &[u8]) -> bool {
    if data.len() >= 64 {
        return greeting_start(data);
    }
    let len_ok = u24le(data).is_none_or(|len| (40..=MAX_GREETING).contains(&len));
    len_ok && data.get(3).is_none_or(|&s| s == 0) && data.get(4).is_none_or(|&v| v == 10)
}

/// A command packet from a client we joined mid-stream: seq 0, a command
/// byte we know, a length that fits the command and the bytes seen.
pub(super) fn command_start(data: &[u8]) -> bool {
    let Some(len) = u24le(data) else {
        return false;
    };
    if data.len() < 5 || data[3] != 0 || len == 0 {
        return false;
    }
    // Exactly one packet, several, or cut by the capture.
    if data.len() < 4 + len && data.len() < CAPTURE_HINT {
        return false;
    }
    let payload = &data[4..data.len().min(4 + len)];
    match payload[0] {
        cmd::QUIT | cmd::PING | cmd::RESET_CONNECTION => len == 1,
        cmd::STMT_CLOSE | cmd::STMT_RESET => len == 5,
        cmd::STMT_EXECUTE => len >= 10 && payload.get(5).is_some_and(|&f| f < 0x10),
        cmd::INIT_DB => (2..=256).contains(&len) && sql_text(&payload[1..]),
        cmd::QUERY | cmd::STMT_PREPARE => len >= 2 && sql_text(&payload[1..]),
        _ => false,
    }
}

/// Looks like the start of SQL text (or a database name): no control
/// bytes other than whitespace in the first bytes.
fn sql_text(t: &[u8]) -> bool {
    let head = &t[..t.len().min(32)];
    !head.is_empty()
        && head
            .iter()
            .all(|&c| c >= 0x20 && c != 0x7f || matches!(c, b'\t' | b'\n' | b'\r'))
}
