//! Field readers and the few packets we look inside: server greeting,
//! HandshakeResponse41, OK / EOF / ERR. Every reader takes the captured
//! prefix of a payload and returns None when the field is cut off.

use crate::db::DbError;

pub(super) const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub(super) const CLIENT_COMPRESS: u32 = 0x20;
pub(super) const CLIENT_PROTOCOL_41: u32 = 0x200;
pub(super) const CLIENT_SSL: u32 = 0x800;
pub(super) const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub(super) const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
pub(super) const CLIENT_SESSION_TRACK: u32 = 0x80_0000;
pub(super) const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
/// MySQL 8.0.18+: compressed with zstd instead of zlib.
pub(super) const CLIENT_ZSTD_COMPRESSION: u32 = 0x400_0000;

pub(super) const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub(super) const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
pub(super) const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;

/// Payload length that says "continued in the next packet".
pub(super) const MAX_PAYLOAD: usize = 0xff_ffff;

/// ERR number MariaDB uses for progress reports (not an answer).
const PROGRESS_REPORT: u16 = 0xffff;
/// Longest error message we keep.
const MAX_MESSAGE: usize = 512;
/// Longest database name we keep (MySQL allows 64 characters).
const MAX_NAMESPACE: usize = 256;

/// Commands (first payload byte of a client packet with sequence id 0).
pub(super) mod cmd {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB: one execute over many parameter rows.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

pub(super) fn u16le(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

pub(super) fn u24le(b: &[u8]) -> Option<usize> {
    let s = b.get(..3)?;
    Some(s[0] as usize | (s[1] as usize) << 8 | (s[2] as usize) << 16)
}

pub(super) fn u32le(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Length-encoded integer at `at`: (value, bytes used). 0xfb (NULL) and
/// 0xff are not integers.
pub(super) fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let n = match first {
        0..=0xfa => return Some((first as u64, 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let s = b.get(at + 1..at + 1 + n)?;
    let v = s.iter().rev().fold(0u64, |acc, &x| acc << 8 | x as u64);
    Some((v, 1 + n))
}

/// NUL-terminated string at `at`: (bytes, position after the NUL).
pub(super) fn cstr(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let end = memchr::memchr(0, rest)?;
    Some((&rest[..end], at + end + 1))
}

pub(super) fn text(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

/// What the server greeting tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Greeting {
    pub mariadb: bool,
    pub capabilities: u32,
}

/// Protocol 10 greeting: version string, connection id, scramble,
/// capability flags (low half, then high half after charset and status).
pub(super) fn greeting(p: &[u8]) -> Option<Greeting> {
    if p.first() != Some(&10) {
        return None;
    }
    let (version, at) = cstr(p, 1)?;
    let mariadb = memchr::memmem::find(version, b"MariaDB").is_some();
    // connection id (4), scramble part 1 (8), filler (1)
    let low = u16le(p, at + 13)? as u32;
    let high = u16le(p, at + 18).unwrap_or(0) as u32;
    Some(Greeting {
        mariadb,
        capabilities: low | high << 16,
    })
}

/// What HandshakeResponse41 (or the SSL request that precedes it) tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Login {
    pub capabilities: u32,
    /// Short packet with CLIENT_SSL: TLS starts next.
    pub ssl: bool,
    pub database: Option<String>,
}

pub(super) fn handshake_response(p: &[u8], len: usize) -> Option<Login> {
    let caps = u32le(p, 0)?;
    if caps & CLIENT_PROTOCOL_41 == 0 {
        // HandshakeResponse320: nobody has sent it for 20 years.
        return Some(Login {
            capabilities: caps & 0xffff,
            ssl: false,
            database: None,
        });
    }
    if len == 32 {
        return Some(Login {
            capabilities: caps,
            ssl: caps & CLIENT_SSL != 0,
            database: None,
        });
    }
    Some(Login {
        capabilities: caps,
        ssl: false,
        database: login_database(p, 32, caps),
    })
}

/// Username, auth response, then the database when CLIENT_CONNECT_WITH_DB.
/// Also the layout of COM_CHANGE_USER after its command byte.
pub(super) fn login_database(p: &[u8], at: usize, caps: u32) -> Option<String> {
    let (_user, mut at) = cstr(p, at)?;
    if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        let (n, used) = lenenc(p, at)?;
        at = at
            .checked_add(used)?
            .checked_add(usize::try_from(n).ok()?)?;
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        at += 1 + *p.get(at)? as usize;
    } else {
        at = cstr(p, at)?.1;
    }
    if caps & CLIENT_CONNECT_WITH_DB == 0 {
        return None;
    }
    let (db, _) = cstr(p, at)?;
    (!db.is_empty()).then(|| text(db, MAX_NAMESPACE))
}

/// OK packet (0x00, or 0xfe ending rows with CLIENT_DEPRECATE_EOF).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Ok {
    pub affected: u64,
    pub status: u16,
    /// SESSION_TRACK_SCHEMA: the statement changed the database.
    pub schema: Option<String>,
}

pub(super) fn ok(p: &[u8], caps: u32) -> Option<Ok> {
    let (affected, a) = lenenc(p, 1)?;
    let (_insert_id, b) = lenenc(p, 1 + a)?;
    let at = 1 + a + b;
    let status = u16le(p, at)?;
    let mut ok = Ok {
        affected,
        status,
        schema: None,
    };
    if caps & CLIENT_SESSION_TRACK != 0 && status & SERVER_SESSION_STATE_CHANGED != 0 {
        ok.schema = session_schema(p, at + 4);
    }
    Some(ok)
}

/// Skips the info string and walks the session state changes for a schema.
fn session_schema(p: &[u8], at: usize) -> Option<String> {
    let (info, used) = lenenc(p, at)?;
    let mut at = (at + used).checked_add(usize::try_from(info).ok()?)?;
    let (total, used) = lenenc(p, at)?;
    at += used;
    let end = at.checked_add(usize::try_from(total).ok()?)?.min(p.len());
    while at < end {
        let kind = p[at];
        let (n, used) = lenenc(p, at + 1)?;
        let data_at = at + 1 + used;
        let data_end = data_at.checked_add(usize::try_from(n).ok()?)?;
        if kind == 1 {
            // SESSION_TRACK_SCHEMA: a length-encoded name inside.
            let data = p.get(data_at..data_end)?;
            let (len, used) = lenenc(data, 0)?;
            let name = data.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
            return Some(text(name, MAX_NAMESPACE));
        }
        at = data_end;
    }
    None
}

/// Status flags of a 0xfe packet: an EOF (5 bytes) or an OK that ends rows.
pub(super) fn eof_status(p: &[u8], len: usize) -> Option<u16> {
    if len < 9 {
        u16le(p, 3)
    } else {
        ok(p, 0).map(|o| o.status)
    }
}

/// Classic EOF packet: 0xfe, warnings, status; payload shorter than 9.
pub(super) fn is_eof(p: &[u8], len: usize) -> bool {
    p.first() == Some(&0xfe) && len < 9
}

/// 0xfe that ends rows (EOF or, with CLIENT_DEPRECATE_EOF, OK). A row can
/// start with 0xfe only as an 8-byte length, so it would not fit.
pub(super) fn is_terminator(p: &[u8], len: usize) -> bool {
    p.first() == Some(&0xfe) && len < MAX_PAYLOAD
}

/// ERR packet: number, then `#` and SQLSTATE (protocol 41), then message.
/// None for MariaDB progress reports, which are not answers.
pub(super) fn err(p: &[u8]) -> Option<DbError> {
    let code = u16le(p, 1).unwrap_or(0);
    if code == PROGRESS_REPORT {
        return None;
    }
    let mut msg = p.get(3..).unwrap_or_default();
    if msg.first() == Some(&b'#') && msg.len() >= 6 {
        msg = &msg[6..];
    }
    Some(DbError {
        code: code.to_string(),
        message: text(msg, MAX_MESSAGE),
    })
}
