//! Spans straight to the protobuf bytes of an OTLP ExportTraceServiceRequest.
//!
//! Written by hand (with prost's wire helpers) because building the
//! opentelemetry-proto structs first (an owned String per attribute key and
//! value, a Vec per span) and then encoding them made the export thread more
//! than half of the agent's CPU under load. The bytes decode to exactly what
//! `otlp::to_request` builds (checked in the tests with the prost types).
//! Field numbers: opentelemetry/proto/{collector/trace,trace,common,resource}/v1.

use autotel_model::{AttrValue, Resource, Span, SpanKind, StatusCode};
use prost::bytes::BufMut;
use prost::encoding::{encoded_len_varint, WireType};

/// gRPC's message prefix: a compression flag (0) and the message's length
/// (big-endian u32). Written in front of the request as it is encoded, so
/// the exporter hands the gRPC transport the framed bytes without a copy
/// (tonic's codec copied every batch into a buffer of its own) and the
/// HTTP transport the message after it.
pub const GRPC_PREFIX: usize = 5;

/// prost's `encode_varint` is generic over `BufMut` and was not inlined
/// here: with ~6 varints per attribute it was most of a span's encoding
/// cost (~450 ns per nginx span). Nearly every value fits one byte.
#[inline(always)]
fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline(always)]
fn encode_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

/// Bytes of `v` as a varint: nearly every length and tag fits one byte, and
/// prost's general formula (a log2 and a multiply) was ~450 instructions of
/// a span's ~3,900 with ~30 calls per span.
#[inline(always)]
fn varint_len(v: u64) -> usize {
    if v < 0x80 {
        1
    } else {
        encoded_len_varint(v)
    }
}

/// Bytes of a field key; constant-folded for the constant tags used here.
#[inline(always)]
fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

#[inline(always)]
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

#[inline(always)]
fn put_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Proto3: an empty string or bytes field is left out.
#[inline(always)]
fn optional_bytes_len(tag: u32, data: &[u8]) -> usize {
    if data.is_empty() {
        0
    } else {
        delimited_len(tag, data.len())
    }
}

#[inline(always)]
fn put_optional_bytes(tag: u32, data: &[u8], buf: &mut Vec<u8>) {
    if !data.is_empty() {
        put_header(tag, data.len(), buf);
        buf.extend_from_slice(data);
    }
}

// AnyValue: 1 string_value, 2 bool_value, 3 int_value, 4 double_value (a
// oneof: encoded even when it holds the default value).
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => delimited_len(1, s.len()),
        AttrValue::Bool(_) => key_len(2) + 1,
        AttrValue::Int(i) => key_len(3) + varint_len(*i as u64),
        AttrValue::Double(_) => key_len(4) + 8,
    }
}

fn put_any_value(v: &AttrValue, buf: &mut Vec<u8>) {
    match v {
        AttrValue::Str(s) => {
            // Found once: the inline-or-heap string type works out where its
            // bytes are on every len() and as_bytes().
            let text = s.as_bytes();
            put_header(1, text.len(), buf);
            buf.extend_from_slice(text);
        }
        AttrValue::Bool(b) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*b), buf);
        }
        AttrValue::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*i as u64, buf);
        }
        AttrValue::Double(d) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.put_f64_le(*d);
        }
    }
}

// KeyValue: 1 key, 2 value.
fn key_value_len(k: &str, v: &AttrValue) -> usize {
    key_value_len_of(k, any_value_len(v))
}

/// The same, for a value whose encoded length is already known.
fn key_value_len_of(k: &str, value_len: usize) -> usize {
    optional_bytes_len(1, k.as_bytes()) + delimited_len(2, value_len)
}

fn put_key_value(tag: u32, k: &str, v: &AttrValue, buf: &mut Vec<u8>) {
    let value_len = any_value_len(v);
    put_header(tag, key_value_len_of(k, value_len), buf);
    put_optional_bytes(1, k.as_bytes(), buf);
    put_header(2, value_len, buf);
    put_any_value(v, buf);
}

// Resource: 1 attributes.
fn resource_len(r: &Resource) -> usize {
    r.attributes
        .iter()
        .map(|(k, v)| delimited_len(1, key_value_len(k, v)))
        .sum()
}

// InstrumentationScope: 1 name, 2 version.
const SCOPE_NAME: &str = "autotel";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn scope_len() -> usize {
    delimited_len(1, SCOPE_NAME.len()) + delimited_len(2, SCOPE_VERSION.len())
}

fn put_scope(buf: &mut Vec<u8>) {
    put_optional_bytes(1, SCOPE_NAME.as_bytes(), buf);
    put_optional_bytes(2, SCOPE_VERSION.as_bytes(), buf);
}

// Status: 2 message, 3 code.
fn status_code(s: StatusCode) -> u64 {
    match s {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    }
}

fn status_len(s: &Span) -> usize {
    let code = status_code(s.status);
    optional_bytes_len(2, s.status_message.as_bytes())
        + if code == 0 {
            0
        } else {
            key_len(3) + encoded_len_varint(code)
        }
}

fn span_kind(k: SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// W3C flags: sampled (only sampled spans are exported), and bit 8: the
/// parent-is-remote flag is known.
const SPAN_FLAGS: u32 = 0x101;

// Span: 1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name,
// 6 kind, 7 start_time_unix_nano, 8 end_time_unix_nano, 9 attributes,
// 15 status, 16 flags.
fn span_len(s: &Span) -> usize {
    let parent = s.parent_span_id.as_ref().map(|p| &p[..]).unwrap_or(&[]);
    optional_bytes_len(1, &s.trace_id)
        + optional_bytes_len(2, &s.span_id)
        + optional_bytes_len(3, s.trace_state.as_bytes())
        + optional_bytes_len(4, parent)
        + optional_bytes_len(5, s.name.as_bytes())
        + key_len(6)
        + encoded_len_varint(span_kind(s.kind))
        + 2 * (key_len(7) + 8)
        + s.attributes
            .iter()
            .map(|(k, v)| delimited_len(9, key_value_len(k, v)))
            .sum::<usize>()
        + delimited_len(15, status_len(s))
        + key_len(16)
        + 4
}

fn put_span(s: &Span, buf: &mut Vec<u8>) {
    put_optional_bytes(1, &s.trace_id, buf);
    put_optional_bytes(2, &s.span_id, buf);
    put_optional_bytes(3, s.trace_state.as_bytes(), buf);
    if let Some(p) = &s.parent_span_id {
        put_optional_bytes(4, p, buf);
    }
    put_optional_bytes(5, s.name.as_bytes(), buf);
    encode_key(6, WireType::Varint, buf);
    encode_varint(span_kind(s.kind), buf);
    encode_key(7, WireType::SixtyFourBit, buf);
    buf.put_u64_le(s.start_unix_ns);
    encode_key(8, WireType::SixtyFourBit, buf);
    buf.put_u64_le(s.end_unix_ns);
    for (k, v) in &s.attributes {
        put_key_value(9, k, v, buf);
    }
    put_header(15, status_len(s), buf);
    put_optional_bytes(2, s.status_message.as_bytes(), buf);
    let code = status_code(s.status);
    if code != 0 {
        encode_key(3, WireType::Varint, buf);
        encode_varint(code, buf);
    }
    encode_key(16, WireType::ThirtyTwoBit, buf);
    buf.put_u32_le(SPAN_FLAGS);
}

/// How far ahead of the span being sized its attributes are prefetched.
const PREFETCH_SPANS_AHEAD: usize = 4;

/// ExportTraceServiceRequest in gRPC's framing (GRPC_PREFIX bytes, then the
/// message): see `encode_request`.
pub fn encode_request_framed(spans: &[Span]) -> Vec<u8> {
    let mut buf = encode_after(spans, GRPC_PREFIX);
    let len = u32::try_from(buf.len() - GRPC_PREFIX).unwrap_or(u32::MAX);
    buf[1..GRPC_PREFIX].copy_from_slice(&len.to_be_bytes());
    buf
}

/// ExportTraceServiceRequest (1 resource_spans) with one ResourceSpans
/// (1 resource, 2 scope_spans) per process, in order of first appearance,
/// and one ScopeSpans (1 scope, 2 spans) each.
#[cfg(test)]
pub fn encode_request(spans: &[Span]) -> Vec<u8> {
    encode_after(spans, 0)
}

/// The request after `prefix` zero bytes, in one allocation.
fn encode_after(spans: &[Span], prefix: usize) -> Vec<u8> {
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match groups.iter_mut().find(|(pid, _)| *pid == s.resource.pid) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((s.resource.pid, vec![i])),
        }
    }
    // The spans were built on the reader's CPU: their attribute arrays are
    // cold here. Loading them a few spans ahead overlaps those misses.
    let span_lens: Vec<usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if let Some(ahead) = spans.get(i + PREFETCH_SPANS_AHEAD) {
                let attrs = &ahead.attributes[..];
                crate::prefetch::lines(attrs.as_ptr().cast(), std::mem::size_of_val(attrs));
            }
            span_len(s)
        })
        .collect();
    let scope = scope_len();
    let sized: Vec<(usize, usize, usize)> = groups
        .iter()
        .map(|(_, idx)| {
            let res = resource_len(&spans[idx[0]].resource);
            let scope_spans = delimited_len(1, scope)
                + idx
                    .iter()
                    .map(|&i| delimited_len(2, span_lens[i]))
                    .sum::<usize>();
            let rs = delimited_len(1, res) + delimited_len(2, scope_spans);
            (rs, res, scope_spans)
        })
        .collect();
    let total: usize = sized.iter().map(|(rs, _, _)| delimited_len(1, *rs)).sum();
    let mut buf = Vec::with_capacity(prefix + total);
    buf.resize(prefix, 0);
    for ((_, idx), (rs, res, scope_spans)) in groups.iter().zip(sized) {
        put_header(1, rs, &mut buf);
        put_header(1, res, &mut buf);
        for (k, v) in &spans[idx[0]].resource.attributes {
            put_key_value(1, k, v, &mut buf);
        }
        put_header(2, scope_spans, &mut buf);
        put_header(1, scope, &mut buf);
        put_scope(&mut buf);
        for &i in idx {
            put_header(2, span_lens[i], &mut buf);
            put_span(&spans[i], &mut buf);
        }
    }
    debug_assert_eq!(buf.len(), prefix + total);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use std::sync::Arc;

    fn resource(pid: u32, name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: name.into(),
            pid,
            attributes: vec![
                ("service.name".into(), AttrValue::Str(name.into())),
                ("process.pid".into(), AttrValue::Int(pid.into())),
                ("empty".into(), AttrValue::Str(Default::default())),
            ],
        })
    }

    fn span(r: &Arc<Resource>, n: u8, kind: SpanKind, status: StatusCode) -> Span {
        Span {
            trace_id: [n; 16],
            span_id: [n + 1; 8],
            parent_span_id: n.is_multiple_of(2).then_some([9; 8]),
            trace_state: if n == 3 { "a=b".into() } else { String::new() },
            name: format!("GET /r{n}").into(),
            kind,
            start_unix_ns: 1_700_000_000_000_000_000 + u64::from(n),
            end_unix_ns: 1_700_000_000_000_500_000,
            attributes: vec![
                ("http.request.method", AttrValue::Str("GET".into())),
                (
                    "http.response.status_code",
                    AttrValue::Int(-5 + i64::from(n)),
                ),
                ("flag", AttrValue::Bool(n.is_multiple_of(2))),
                ("ratio", AttrValue::Double(0.25 * f64::from(n))),
                ("empty", AttrValue::Str(Default::default())),
                // Over 127 bytes: two-byte lengths here and in the KeyValue.
                (
                    "long",
                    AttrValue::Str("x".repeat(200 + usize::from(n)).into()),
                ),
            ],
            status,
            status_message: if status == StatusCode::Error {
                "boom".into()
            } else {
                String::new()
            },
            resource: r.clone(),
        }
    }

    #[test]
    fn bytes_decode_to_what_the_prost_types_describe() {
        let (a, b) = (resource(10, "a"), resource(20, "b"));
        let spans = vec![
            span(&a, 1, SpanKind::Server, StatusCode::Unset),
            span(&b, 2, SpanKind::Client, StatusCode::Error),
            span(&a, 3, SpanKind::Internal, StatusCode::Ok),
            span(&b, 4, SpanKind::Server, StatusCode::Unset),
        ];
        let bytes = encode_request(&spans);
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert_eq!(decoded, super::super::otlp::reference::to_request(&spans));
        assert_eq!(decoded.resource_spans.len(), 2);
        let framed = encode_request_framed(&spans);
        assert_eq!(framed[0], 0, "not compressed");
        let len = u32::from_be_bytes(framed[1..GRPC_PREFIX].try_into().unwrap());
        assert_eq!(len as usize, bytes.len());
        assert_eq!(&framed[GRPC_PREFIX..], &bytes[..]);
        assert!(encode_request(&[]).is_empty());
        assert_eq!(encode_request_framed(&[]), [0; GRPC_PREFIX]);
    }
}
