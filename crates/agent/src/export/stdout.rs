//! One human-readable line per span (the default with no OTLP endpoint):
//! `SPAN <KIND> <name> trace=<hex> span=<hex> parent=<hex|-> dur_us=<n>
//! pid=<n> service=<name> key=value ...`; values with spaces are quoted.

use autotel_model::{AttrValue, Span};
use std::fmt::Write as _;

/// Appends `v`, quoted (Rust debug form) when it is empty or has a space,
/// quote, tab or newline; no allocation otherwise.
fn push_quoted(out: &mut String, v: &str) {
    // A byte scan: the four are ASCII, and a char-set `contains` decodes
    // UTF-8 one char at a time (a visible share of a saturated exporter).
    if v.is_empty() || v.bytes().any(|b| matches!(b, b' ' | b'"' | b'\t' | b'\n')) {
        let _ = write!(out, "{v:?}");
    } else {
        out.push_str(v);
    }
}

/// Appends a trace or span id in lower-case hex, through a stack buffer.
fn push_hex(out: &mut String, id: &[u8]) {
    let mut buf = [0u8; 32];
    let hex = &mut buf[..id.len() * 2];
    if hex::encode_to_slice(id, hex).is_ok() {
        out.push_str(std::str::from_utf8(hex).unwrap_or_default());
    }
}

/// Appends one span's line (no newline) to `out`: the exporter reuses one
/// buffer per batch, so a line costs no allocation of its own.
pub fn write_line(out: &mut String, s: &Span) {
    let _ = write!(out, "SPAN {} ", s.kind);
    push_quoted(out, &s.name);
    out.push_str(" trace=");
    push_hex(out, &s.trace_id);
    out.push_str(" span=");
    push_hex(out, &s.span_id);
    out.push_str(" parent=");
    match s.parent_span_id {
        Some(p) => push_hex(out, &p),
        None => out.push('-'),
    }
    let mut num = itoa::Buffer::new();
    out.push_str(" dur_us=");
    out.push_str(num.format(s.duration_ns() / 1000));
    out.push_str(" pid=");
    out.push_str(num.format(s.resource.pid));
    out.push_str(" service=");
    push_quoted(out, &s.resource.service_name);
    for (k, v) in &s.attributes {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        match v {
            AttrValue::Str(v) => push_quoted(out, v),
            AttrValue::Int(i) => out.push_str(num.format(*i)),
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }
}

#[cfg(test)]
pub fn line(s: &Span) -> String {
    let mut out = String::new();
    write_line(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotel_model::{Resource, SpanKind, StatusCode};
    use std::sync::Arc;

    #[test]
    fn one_line_with_quoting() {
        let s = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: String::new(),
            name: "GET /a".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_000,
            end_unix_ns: 2_001_000,
            attributes: vec![
                ("url.path", "/a".into()),
                ("user_agent.original", "curl 8".into()),
            ],
            status: StatusCode::Unset,
            status_message: String::new(),
            resource: Arc::new(Resource {
                service_name: "web".into(),
                pid: 7,
                attributes: vec![],
            }),
        };
        assert_eq!(
            line(&s),
            "SPAN SERVER \"GET /a\" trace=01010101010101010101010101010101 span=0202020202020202 parent=- \
             dur_us=2000 pid=7 service=web url.path=/a user_agent.original=\"curl 8\""
        );
    }
}
