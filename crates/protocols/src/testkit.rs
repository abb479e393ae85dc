//! Test helpers shared by the parsers' tests: reading the captures the
//! testdata/capture_*.py proxies record, and replaying them as syscalls
//! whose capture stops after a given number of bytes.

use crate::db::DbEvent;
use crate::db::DbOperation;
use crate::http1::{Segment, Timing};

/// Records of testdata/<dir>/<name>: (from_client, bytes of one recv()).
/// Format: 1 byte direction (C/S), 4-byte big-endian length, bytes.
pub fn capture(dir: &str, name: &str) -> Vec<(bool, Vec<u8>)> {
    let path = format!("{}/../../testdata/{dir}/{name}", env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push((rest[0] == b'C', rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "{path}: trailing bytes");
    out
}

/// One syscall of `bytes` as the kernel side reports it: a prefix of at
/// most `cap` bytes, and the last 32 bytes as tail when cut.
pub fn capped(bytes: &[u8], cap: usize, timing: Timing) -> Segment<'_> {
    let data = &bytes[..bytes.len().min(cap)];
    let tail = if data.len() < bytes.len() {
        &bytes[bytes.len().saturating_sub(32)..]
    } else {
        &[][..]
    };
    Segment {
        data,
        total_len: bytes.len(),
        tail,
        frames: &[],
        timing,
    }
}

/// Timing of a syscall entered at `ns` and returned 1 ns later.
pub fn at(ns: u64) -> Timing {
    Timing {
        enter_ns: ns,
        exit_ns: ns + 1,
    }
}

/// When the database tests' connections close: after every record.
pub const CLOSED_NS: u64 = 1 << 40;

/// A capture as if the connection closed right after the last client
/// record `is_request` accepts; with `half_reply`, after the first half of
/// the server's next record too (an answer cut mid-way).
pub fn closed_after(
    records: &[(bool, Vec<u8>)],
    is_request: impl Fn(&[u8]) -> bool,
    half_reply: bool,
) -> Vec<(bool, Vec<u8>)> {
    let i = records
        .iter()
        .rposition(|(client, b)| *client && is_request(b))
        .expect("no such request in the capture");
    let mut out = records[..=i].to_vec();
    if half_reply {
        let (_, reply) = records[i + 1..]
            .iter()
            .find(|(client, _)| !client)
            .expect("no reply in the capture");
        out.push((false, reply[..reply.len() / 2].to_vec()));
    }
    out
}

/// Whether `bytes` contain `word`.
pub fn has(bytes: &[u8], word: &[u8]) -> bool {
    memchr::memmem::find(bytes, word).is_some()
}

pub fn db_ops(events: &[DbEvent]) -> Vec<&DbOperation> {
    events
        .iter()
        .filter_map(|e| match e {
            DbEvent::Operation(o) => Some(o.as_ref()),
            _ => None,
        })
        .collect()
}

pub fn db_errors(events: &[DbEvent]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            DbEvent::Error(x) => Some(*x),
            _ => None,
        })
        .collect()
}
