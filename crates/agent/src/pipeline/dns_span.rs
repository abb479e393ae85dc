//! DNS lookup -> CLIENT span and `dns.lookup.duration`: one span per query
//! (a retry is its own span), error.type = the response code when it is not
//! NOERROR, or `timeout` when no answer came.

use super::clock::Clock;
use super::context::SpanCtx;
use crate::tracer::abi::ConnTuple;
use autotel_model::{AttrValue, Attributes, Resource, Span, SpanKind, StatusCode};
use autotel_protocols::dns::DnsLookup;
use std::sync::Arc;

/// How long a query may wait for its answer (glibc's default per try).
pub const TIMEOUT_NS: u64 = 5_000_000_000;

pub struct SpanInput<'a> {
    pub lookup: &'a DnsLookup,
    pub tcp: bool,
    pub tuple: &'a ConnTuple,
    pub peer_addr: &'a str,
    pub resource: Arc<Resource>,
    pub ctx: SpanCtx,
    /// Unanswered queries end here at the latest (the socket closed).
    pub end_cap: Option<u64>,
}

/// The error of a lookup, if it failed.
pub fn error_type(l: &DnsLookup) -> Option<String> {
    match &l.response {
        None => Some("timeout".to_owned()),
        Some(r) => match r.rcode.as_deref() {
            Some("NOERROR") | None => None,
            Some(code) => Some(code.to_owned()),
        },
    }
}

pub fn build(input: SpanInput<'_>, clock: &Clock) -> Span {
    let l = input.lookup;
    let q = &l.query;
    let qtype = q.question_type.as_deref().unwrap_or("?");
    let start = l.query_timing.enter_ns;
    let end = l
        .response_end_ns
        .unwrap_or_else(|| {
            let timeout = l.query_timing.exit_ns + TIMEOUT_NS;
            input.end_cap.map_or(timeout, |cap| cap.min(timeout))
        })
        .max(start);
    let mut attributes: Attributes = Vec::with_capacity(12);
    if let Some(name) = &q.question_name {
        attributes.push(("dns.question.name", name.clone().into()));
    }
    attributes.push(("dns.question.type", qtype.to_owned().into()));
    if let Some(r) = &l.response {
        if let Some(code) = &r.rcode {
            attributes.push(("dns.response_code", code.clone().into()));
        }
        attributes.push(("dns.answer_count", AttrValue::Int(r.answer_count as i64)));
        if r.truncated {
            attributes.push(("dns.truncated", AttrValue::Bool(true)));
        }
    }
    if l.retransmission {
        attributes.push(("dns.retransmission", AttrValue::Bool(true)));
    }
    attributes.push((
        "network.transport",
        if input.tcp { "tcp" } else { "udp" }.into(),
    ));
    attributes.push(("server.address", input.peer_addr.into()));
    attributes.push(("server.port", AttrValue::Int(input.tuple.dport as i64)));
    attributes.push(("network.peer.address", input.peer_addr.into()));
    attributes.push((
        "network.peer.port",
        AttrValue::Int(input.tuple.dport as i64),
    ));
    let error = error_type(l);
    if let Some(e) = &error {
        attributes.push(("error.type", e.clone().into()));
    }
    let ctx = input.ctx;
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: ctx.trace_state,
        name: format!("DNS {qtype}").into(),
        kind: SpanKind::Client,
        start_unix_ns: clock.to_unix_ns(start),
        end_unix_ns: clock.to_unix_ns(end),
        attributes,
        status: if error.is_some() {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: String::new(),
        resource: input.resource,
    }
}
