//! Database/cache operation -> span, per the OpenTelemetry database semantic
//! conventions: `db.system.name`, `db.operation.name`, `db.collection.name`,
//! `db.query.text` (literals replaced by `?` unless configured otherwise),
//! span name `SELECT orders`.

use super::clock::Clock;
use super::context::SpanCtx;
use crate::tracer::abi::ConnTuple;
use autotel_model::{AttrValue, Attributes, Resource, Span, SpanKind, StatusCode};
use autotel_protocols::db::{DbOperation, DbSystem};
use autotel_protocols::sql;
use std::sync::Arc;

/// What `db.query.text` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryTextMode {
    /// Literals replaced by `?` (the default: literals carry personal data).
    #[default]
    Sanitized,
    /// The statement as sent. Only for debugging on trusted pipelines.
    Raw,
    /// No `db.query.text` at all.
    Off,
}

impl QueryTextMode {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sanitized" | "on" | "true" => Ok(Self::Sanitized),
            "raw" => Ok(Self::Raw),
            "off" | "false" => Ok(Self::Off),
            _ => anyhow::bail!("expected sanitized, raw or off, got {s:?}"),
        }
    }
}

fn dialect(system: DbSystem) -> Option<sql::Dialect> {
    match system {
        DbSystem::Postgresql => Some(sql::Dialect::Postgres),
        DbSystem::Mysql | DbSystem::Mariadb => Some(sql::Dialect::Mysql),
        DbSystem::Redis | DbSystem::Memcached => None,
    }
}

pub struct SpanInput<'a> {
    pub op: &'a DbOperation,
    pub server_side: bool,
    pub tuple: &'a ConnTuple,
    pub peer_addr: &'a str,
    pub local_addr: &'a str,
    pub resource: Arc<Resource>,
    pub ctx: SpanCtx,
    pub query_text: QueryTextMode,
}

pub fn build(input: SpanInput<'_>, clock: &Clock) -> Span {
    let op = input.op;
    let system = op.system.name();
    let (operation, collection) = match (dialect(op.system), &op.query_text) {
        (Some(d), Some(text)) => {
            let s = sql::summarize(text, d);
            (s.operation, s.collection)
        }
        // A prepared statement prepared before we joined: only "EXECUTE" is known.
        (Some(_), None) if op.prepared => (Some("EXECUTE".to_owned()), None),
        _ => (op.operation.clone(), None),
    };
    let name = match (&operation, &collection) {
        (Some(o), Some(c)) => format!("{o} {c}"),
        (Some(o), None) => o.clone(),
        _ => system.to_owned(),
    };
    // Client: from the write of the request to the read of the answer's end.
    // Server: from the read that returned the request to the last write.
    let start_mono = if input.server_side {
        op.request_start.exit_ns
    } else {
        op.request_start.enter_ns
    };
    let end_mono = op.response_end_ns.max(start_mono);

    let mut attributes: Attributes = Vec::with_capacity(12);
    attributes.push(("db.system.name", system.into()));
    if let Some(o) = operation {
        attributes.push(("db.operation.name", o.into()));
    }
    if let Some(c) = collection {
        attributes.push(("db.collection.name", c.into()));
    }
    if let Some(ns) = &op.namespace {
        attributes.push(("db.namespace", ns.clone().into()));
    }
    if let Some(text) = &op.query_text {
        let text = match (input.query_text, dialect(op.system)) {
            (QueryTextMode::Off, _) => None,
            (QueryTextMode::Sanitized, Some(d)) => Some(sql::sanitize(text, d)),
            // Redis/memcached parsers already leave values out.
            _ => Some(text.clone()),
        };
        if let Some(t) = text {
            attributes.push(("db.query.text", t.into()));
        }
    }
    let (server_addr, server_port) = if input.server_side {
        (input.local_addr, input.tuple.sport)
    } else {
        (input.peer_addr, input.tuple.dport)
    };
    attributes.push(("server.address", server_addr.to_owned().into()));
    attributes.push(("server.port", AttrValue::Int(server_port as i64)));
    attributes.push(("network.peer.address", input.peer_addr.into()));
    attributes.push((
        "network.peer.port",
        AttrValue::Int(input.tuple.dport as i64),
    ));
    if let Some(rows) = op.rows {
        attributes.push(("db.response.returned_rows", AttrValue::Int(rows as i64)));
    }
    let mut status = StatusCode::Unset;
    let mut status_message = String::new();
    if let Some(e) = &op.error {
        attributes.push(("db.response.status_code", e.code.clone().into()));
        attributes.push(("error.type", e.code.clone().into()));
        status = StatusCode::Error;
        // Server messages quote the offending values ("invalid input syntax
        // for type integer: \"4111...\""): only raw mode may carry them.
        if input.query_text == QueryTextMode::Raw {
            status_message = e.message.chars().take(256).collect();
        }
    } else if let Some(cut) = op.answer.error_type() {
        // The connection closed before the answer (ended): no server code.
        attributes.push(("error.type", cut.into()));
        status = StatusCode::Error;
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
        status,
        status_message,
        resource: input.resource,
    }
}
