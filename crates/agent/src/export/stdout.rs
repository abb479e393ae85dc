//! One human-readable line per span (the default with no OTLP endpoint):
//! `SPAN <KIND> <name> trace=<hex> span=<hex> parent=<hex|-> dur_us=<n>
//! pid=<n> service=<name> key=value ...`; values with spaces are quoted.

use autotel_model::Span;
use std::fmt::Write as _;

fn quoted(v: &str) -> String {
    if v.is_empty() || v.contains([' ', '"', '\t', '\n']) {
        format!("{:?}", v)
    } else {
        v.to_owned()
    }
}

pub fn line(s: &Span) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "SPAN {} {} trace={} span={} parent={} dur_us={} pid={} service={}",
        s.kind,
        quoted(&s.name),
        hex::encode(s.trace_id),
        hex::encode(s.span_id),
        s.parent_span_id
            .map(hex::encode)
            .unwrap_or_else(|| "-".into()),
        s.duration_ns() / 1000,
        s.resource.pid,
        quoted(&s.resource.service_name),
    );
    for (k, v) in &s.attributes {
        let _ = write!(out, " {k}={}", quoted(&v.to_string()));
    }
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
