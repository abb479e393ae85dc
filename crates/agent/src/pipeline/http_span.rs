//! HTTP exchange -> span, per the OpenTelemetry HTTP semantic conventions
//! (stable): names, attributes, status rules for server and client.

use super::clock::Clock;
use super::context::SpanCtx;
use crate::tracer::abi::ConnTuple;
use autotel_model::{AttrStr, AttrValue, Attributes, Resource, Span, SpanKind, StatusCode};
use autotel_protocols::http1::Exchange;
use std::sync::Arc;

/// A fixed attribute value built at compile time: pushing it copies 24
/// bytes instead of copying the text into a new string per span.
const fn fixed(text: &'static str) -> AttrValue {
    AttrValue::Str(AttrStr::const_new(text))
}

/// The value of `http.request.method` for the methods semconv knows.
fn known_method(method: &str) -> Option<AttrValue> {
    Some(match method {
        "GET" => const { fixed("GET") },
        "HEAD" => const { fixed("HEAD") },
        "POST" => const { fixed("POST") },
        "PUT" => const { fixed("PUT") },
        "DELETE" => const { fixed("DELETE") },
        "CONNECT" => const { fixed("CONNECT") },
        "OPTIONS" => const { fixed("OPTIONS") },
        "TRACE" => const { fixed("TRACE") },
        "PATCH" => const { fixed("PATCH") },
        "QUERY" => const { fixed("QUERY") },
        _ => return None,
    })
}

/// Host header without port; brackets of IPv6 literals removed.
fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// `host[:port]` of a URL: an IPv6 literal goes in brackets there (RFC
/// 3986), not in `server.address`; port 80 is left out.
fn url_authority(host: &str, port: u16) -> String {
    match (host.contains(':'), port) {
        (false, 80) => host.to_owned(),
        (true, 80) => format!("[{host}]"),
        (false, port) => format!("{host}:{port}"),
        (true, port) => format!("[{host}]:{port}"),
    }
}

pub fn path_of(target: &str) -> &str {
    // Absolute-form targets (proxies): keep only the path.
    let t = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map_or(target, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    t.split(['?', '#']).next().unwrap_or(t)
}

/// `version` holds the HTTP/1 minor version; HTTP/2 streams built into an
/// Exchange carry [`HTTP2_VERSION`].
fn version_value(version: u8) -> AttrValue {
    match version {
        0 => const { fixed("1.0") },
        HTTP2_VERSION => const { fixed("2") },
        _ => const { fixed("1.1") },
    }
}

/// RequestHead::version of an exchange that came from an HTTP/2 stream.
pub const HTTP2_VERSION: u8 = 2;

pub struct SpanInput<'a> {
    pub exchange: &'a Exchange,
    /// `path_of` the request target: the caller has it already (routing).
    pub path: &'a str,
    pub tuple: &'a ConnTuple,
    pub local_addr: &'a str,
    pub peer_addr: &'a str,
    pub resource: Arc<Resource>,
    pub route: Option<String>,
    pub ctx: SpanCtx,
    /// The span will not be exported (not sampled, or an ignored route):
    /// only what the RED metrics read is built (see `build`).
    pub metrics_only: bool,
}

pub fn build(input: SpanInput<'_>, clock: &Clock) -> Span {
    let x = input.exchange;
    let req = &x.request;
    let status = x.response.as_ref().map(|r| r.status);
    let kind = if x.server_side {
        SpanKind::Server
    } else {
        SpanKind::Client
    };
    // Server: from the read that returned the request to the write that sent
    // the last response byte. Client: from the write of the request to the
    // read that returned the last response byte.
    let start_mono = if x.server_side {
        x.request_start.exit_ns
    } else {
        x.request_start.enter_ns
    };
    let end_mono = x.response_end_ns.max(start_mono);

    let method_value = known_method(&req.method);
    let method_known = method_value.is_some();
    let method: &str = if method_known { &req.method } else { "_OTHER" };
    let path = input.path;
    let name = match (&input.route, method_known) {
        // Nobody reads the name of a span that is not exported.
        _ if input.metrics_only => AttrStr::const_new("HTTP"),
        (Some(route), true) => {
            // Not format!: its machinery is a visible share of a span's cost.
            let mut name = AttrStr::with_capacity(method.len() + 1 + route.len());
            name.push_str(method);
            name.push(' ');
            name.push_str(route);
            name
        }
        (_, true) => AttrStr::from(method),
        (_, false) => AttrStr::const_new("HTTP"),
    };

    let mut attributes: Attributes = Vec::with_capacity(16);
    attributes.push((
        "http.request.method",
        method_value.unwrap_or(const { fixed("_OTHER") }),
    ));
    // The attributes a RED metric reads (the key lists and body sizes of
    // `Store::record_http_span`) come first, whether or not the span is
    // exported (the metrics find them sooner there); the rest only when it
    // is. A test compares the metrics of the two.
    if let Some(status) = status {
        attributes.push(("http.response.status_code", AttrValue::Int(status as i64)));
    }
    attributes.push(("network.protocol.version", version_value(req.version)));
    attributes.push(("url.scheme", const { fixed("http") }));
    if let Some(route) = &input.route {
        attributes.push(("http.route", route.as_str().into()));
    }
    let peer = input.peer_addr;
    let host = req.host.as_deref().map(host_only);
    let (server, server_port) = if x.server_side {
        (host.unwrap_or(input.local_addr), input.tuple.sport)
    } else {
        (host.unwrap_or(peer), input.tuple.dport)
    };
    attributes.push(("server.port", AttrValue::Int(server_port as i64)));
    attributes.push(("server.address", server.into()));
    if !input.metrics_only {
        if !method_known {
            attributes.push(("http.request.method_original", req.method.as_str().into()));
        }
        attributes.push(("network.protocol.name", const { fixed("http") }));
        attributes.push(("network.peer.address", peer.into()));
        attributes.push((
            "network.peer.port",
            AttrValue::Int(input.tuple.dport as i64),
        ));
        if x.server_side {
            attributes.push(("url.path", path.into()));
            attributes.push(("client.address", peer.into()));
        } else {
            // Query strings can carry secrets: url.full keeps the path only.
            let authority = url_authority(server, input.tuple.dport);
            attributes.push(("url.full", format!("http://{authority}{path}").into()));
        }
        if let Some(ua) = &req.user_agent {
            attributes.push(("user_agent.original", ua.as_str().into()));
        }
    }
    if x.request_body_bytes > 0 {
        attributes.push((
            "http.request.body.size",
            AttrValue::Int(x.request_body_bytes as i64),
        ));
    }
    if let Some(n) = x.response_body_bytes {
        attributes.push(("http.response.body.size", AttrValue::Int(n as i64)));
    }

    // An exchange the connection's close cut short failed whatever its
    // status said (semconv: a network error on the response is an error).
    let error_type: Option<AttrValue> = match status {
        None => Some(const { fixed("no_response") }),
        Some(_) if !x.response_complete => Some(const { fixed("response_incomplete") }),
        Some(s) if s >= 500 || (s >= 400 && !x.server_side) => Some(s.to_string().into()),
        Some(_) => None,
    };
    let is_error = error_type.is_some();
    if let Some(e) = error_type {
        attributes.push(("error.type", e));
    }

    let ctx = input.ctx;
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: ctx.trace_state,
        name,
        kind,
        start_unix_ns: clock.to_unix_ns(start_mono),
        end_unix_ns: clock.to_unix_ns(end_mono),
        attributes,
        status: if is_error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: String::new(),
        resource: input.resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_paths() {
        assert_eq!(host_only("example.com:8080"), "example.com");
        assert_eq!(host_only("[::1]:80"), "::1");
        assert_eq!(host_only("example.com"), "example.com");
        assert_eq!(path_of("/a/b?x=1"), "/a/b");
        assert_eq!(path_of("http://h:1/a?b"), "/a");
        assert_eq!(path_of("http://h"), "/");
        assert_eq!(url_authority("example.com", 80), "example.com");
        assert_eq!(url_authority("127.0.0.1", 8080), "127.0.0.1:8080");
        assert_eq!(url_authority("::1", 8080), "[::1]:8080");
        assert_eq!(url_authority("fe80::1", 80), "[fe80::1]");
    }
}
