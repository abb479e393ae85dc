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
    if !v.is_empty() && !v.bytes().any(|b| matches!(b, b' ' | b'"' | b'\t' | b'\n')) {
        out.push_str(v);
    } else if v
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        // Printable ASCII without quote or backslash: the debug form is the
        // text in quotes, without the formatting machinery ("GET /x").
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// Appends a trace or span id in lower-case hex.
fn push_hex(out: &mut String, id: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(id.len() * 2);
    for b in id {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
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
    fn quoting_matches_the_debug_form() {
        for v in [
            "",
            "GET /a",
            "a\"b",
            "back\\slash x",
            "tab\tx",
            "é x",
            "\u{7f} x",
            "plain",
        ] {
            let mut out = String::new();
            push_quoted(&mut out, v);
            let plain = !v.is_empty() && !v.contains([' ', '"', '\t', '\n']);
            let want = if plain {
                v.to_owned()
            } else {
                format!("{v:?}")
            };
            assert_eq!(out, want, "{v:?}");
        }
        let mut hex = String::new();
        push_hex(&mut hex, &[0x00, 0x9f, 0xa5, 0xff]);
        assert_eq!(hex, "009fa5ff");
    }

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
