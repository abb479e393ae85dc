//! HTTP/2 stream -> span. gRPC calls (content-type application/grpc) become
//! RPC spans per the semantic conventions (`rpc.system=grpc`, name
//! `package.Service/Method`, status from `grpc-status`); other streams
//! become HTTP spans through the HTTP/1 span builder, with version 2.

use super::clock::Clock;
use super::context::SpanCtx;
use super::http_span::HTTP2_VERSION;
use crate::tracer::abi::ConnTuple;
use autotel_model::{AttrValue, Attributes, Resource, Span, SpanKind, StatusCode};
use autotel_protocols::http1::{Exchange, RequestHead, ResponseHead};
use autotel_protocols::http2::Http2Stream;
use std::sync::Arc;

const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The stream as an HTTP exchange, for plain (non-gRPC) HTTP/2.
pub fn to_exchange(s: &Http2Stream, server_side: bool) -> Exchange {
    Exchange {
        server_side,
        request: RequestHead {
            method: s.request.method.clone(),
            target: s.request.path.clone(),
            version: HTTP2_VERSION,
            host: s.request.authority.clone(),
            traceparent: None,
            tracestate: None,
            content_length: None,
            chunked: false,
            connection_close: false,
            user_agent: s.request.user_agent.clone(),
            head_len: 0,
        },
        // A stream reset before its response head had none.
        response: s.status.map(|status| ResponseHead {
            status,
            version: HTTP2_VERSION,
            content_length: None,
            chunked: false,
            connection_close: false,
            upgrade: None,
            head_len: 0,
        }),
        // RST_STREAM(NO_ERROR) may follow a whole response (RFC 9113 8.1).
        response_complete: !matches!(s.reset, Some(code) if code != 0),
        request_start: s.request_start,
        request_body_bytes: s.request_body_bytes,
        response_start: s.request_start,
        response_end_ns: s.response_end_ns,
        response_body_bytes: Some(s.response_body_bytes),
    }
}

/// Server-side codes that mean the server failed (semconv: the others are
/// the caller's problem and leave a server span's status unset).
fn server_error(code: u32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The call's status: its `grpc-status`; CANCELLED for a reset stream;
/// UNKNOWN for a response that has none (as gRPC clients take it). None
/// when its trailers went by in a header block we could not decode (the
/// HPACK table was lost with an uncaptured block): the status is not
/// known, and claiming UNKNOWN would report an error that did not happen.
fn grpc_code(s: &Http2Stream) -> Option<u32> {
    match (s.grpc_status, s.reset) {
        (Some(code), _) => Some(code),
        (None, Some(_)) => Some(1),
        (None, None) if s.hpack_unknown => None,
        (None, None) => Some(2),
    }
}

pub struct GrpcInput<'a> {
    pub stream: &'a Http2Stream,
    pub server_side: bool,
    pub tuple: &'a ConnTuple,
    pub local_addr: &'a str,
    pub peer_addr: &'a str,
    pub resource: Arc<Resource>,
    pub ctx: SpanCtx,
}

pub fn grpc_span(input: GrpcInput<'_>, clock: &Clock) -> Span {
    let s = input.stream;
    let path = s.request.path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let name = if path.is_empty() {
        "grpc".to_owned()
    } else {
        path.to_owned()
    };
    let start_mono = if input.server_side {
        s.request_start.exit_ns
    } else {
        s.request_start.enter_ns
    };
    let end_mono = s.response_end_ns.max(start_mono);
    let code = grpc_code(s);
    let mut attributes: Attributes = Vec::with_capacity(14);
    attributes.push(("rpc.system", "grpc".into()));
    if !service.is_empty() {
        attributes.push(("rpc.service", service.to_owned().into()));
    }
    if !method.is_empty() {
        attributes.push(("rpc.method", method.to_owned().into()));
    }
    if let Some(code) = code {
        attributes.push(("rpc.grpc.status_code", AttrValue::Int(code as i64)));
    }
    attributes.push(("network.protocol.name", "http".into()));
    attributes.push(("network.protocol.version", "2".into()));
    let (server_addr, server_port) = if input.server_side {
        (input.local_addr, input.tuple.sport)
    } else {
        (input.peer_addr, input.tuple.dport)
    };
    let server_addr = s
        .request
        .authority
        .as_deref()
        .map(|a| a.rsplit_once(':').map_or(a, |(h, _)| h))
        .unwrap_or(server_addr);
    attributes.push(("server.address", server_addr.to_owned().into()));
    attributes.push(("server.port", AttrValue::Int(server_port as i64)));
    attributes.push(("network.peer.address", input.peer_addr.into()));
    attributes.push((
        "network.peer.port",
        AttrValue::Int(input.tuple.dport as i64),
    ));
    if s.hpack_unknown {
        attributes.push(("autotel.http2.hpack_unknown", AttrValue::Bool(true)));
    }
    let error = code.filter(|&c| {
        if input.server_side {
            server_error(c)
        } else {
            c != 0
        }
    });
    if let Some(code) = error {
        let label = GRPC_CODES.get(code as usize).copied().unwrap_or("UNKNOWN");
        attributes.push(("error.type", label.into()));
    }
    let ctx = input.ctx;
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: ctx.trace_state,
        name: name.into(),
        kind: if input.server_side {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start_unix_ns: clock.to_unix_ns(start_mono),
        end_unix_ns: clock.to_unix_ns(end_mono),
        attributes,
        status: if error.is_some() {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        // grpc-message is written by the application and may carry data.
        status_message: String::new(),
        resource: input.resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_follow_semconv() {
        assert!(!server_error(0));
        assert!(!server_error(5)); // NOT_FOUND: the caller's problem
        assert!(server_error(13));
        assert_eq!(GRPC_CODES[5], "NOT_FOUND");
    }

    #[test]
    fn a_status_we_could_not_decode_is_not_claimed() {
        let s = |grpc_status, reset, hpack_unknown| Http2Stream {
            grpc_status,
            reset,
            hpack_unknown,
            ..Default::default()
        };
        assert_eq!(grpc_code(&s(Some(0), None, true)), Some(0));
        assert_eq!(grpc_code(&s(None, Some(8), false)), Some(1));
        assert_eq!(grpc_code(&s(None, None, false)), Some(2));
        assert_eq!(grpc_code(&s(None, None, true)), None);
    }
}
