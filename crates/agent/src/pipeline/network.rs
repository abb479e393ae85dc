//! TCP lifecycle events -> flow metrics, and a span for every failed
//! outgoing connect (so a refused backend shows up in the trace of the
//! request that tried it).

use super::clock::Clock;
use super::context::SpanCtx;
use crate::metrics::{Metric, Store};
use crate::tracer::abi::{self, FlowEvent};
use autotel_model::{AttrValue, Attributes, Resource, Span, SpanKind, StatusCode};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const ENETUNREACH: i32 = 101;

/// How a connection ended, from the socket's error and its last state.
pub fn outcome(ev: &FlowEvent) -> &'static str {
    if ev.kind == abi::FLOW_OPEN {
        return "opened";
    }
    let failed_connect = ev.old_state == abi::TCP_SYN_SENT;
    match ev.sk_err {
        ECONNREFUSED => "refused",
        ETIMEDOUT => "timed_out",
        EHOSTUNREACH | ENETUNREACH => "unreachable",
        ECONNRESET => "reset",
        _ if failed_connect => "failed",
        _ => "closed",
    }
}

/// Peer addresses grouped into configured CIDRs (cardinality control):
/// an address inside a listed network is reported as that network.
#[derive(Debug, Clone, Default)]
pub struct PeerGrouping {
    pub cidrs: Vec<IpNet>,
}

impl PeerGrouping {
    pub fn parse(list: &[String]) -> anyhow::Result<Self> {
        let cidrs = list
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|e| anyhow::anyhow!("invalid CIDR {c:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { cidrs })
    }

    fn peer(&self, addr: IpAddr) -> String {
        // Most specific network first.
        self.cidrs
            .iter()
            .filter(|n| n.contains(&addr))
            .max_by_key(|n| n.prefix_len())
            .map_or_else(|| addr.to_string(), |n| n.to_string())
    }
}

fn role_name(ev: &FlowEvent) -> &'static str {
    if ev.role == abi::ROLE_SERVER {
        "server"
    } else {
        "client"
    }
}

/// The service port of the connection; the other side's port is ephemeral.
fn service_port(ev: &FlowEvent) -> u16 {
    if ev.role == abi::ROLE_SERVER {
        ev.tuple.sport
    } else {
        ev.tuple.dport
    }
}

/// The owner of a flow of an unselected process (whole-host mode), as a
/// data point attribute under the host resource: the command name, not the
/// pid, so short-lived processes do not each make new series.
pub fn host_owner(ev: &FlowEvent) -> AttrValue {
    ev.comm().unwrap_or_else(|| "unknown".into()).into()
}

/// Records the flow metrics of one lifecycle event. `owner`: the
/// `process.executable.name` attribute of a host-level (whole-host) flow.
pub fn record(
    store: &mut Store,
    resource: &Arc<Resource>,
    ev: &FlowEvent,
    peers: &PeerGrouping,
    owner: Option<AttrValue>,
    now_unix: u64,
) {
    let peer = peers.peer(ev.tuple.remote_addr());
    let base = |extra: &[(&'static str, AttrValue)]| {
        let mut a: Vec<(&'static str, AttrValue)> = vec![
            ("network.transport", "tcp".into()),
            ("network.peer.address", peer.clone().into()),
            ("server.port", AttrValue::Int(service_port(ev) as i64)),
            ("autotel.tcp.role", role_name(ev).into()),
        ];
        if let Some(o) = &owner {
            a.push(("process.executable.name", o.clone()));
        }
        a.extend_from_slice(extra);
        a
    };
    let outcome = outcome(ev);
    store.record(
        Metric::TcpConnections,
        resource,
        base(&[("autotel.tcp.outcome", outcome.into())]),
        1.0,
        now_unix,
    );
    let active = ev.role != abi::ROLE_SERVER;
    if active && (ev.kind == abi::FLOW_OPEN || ev.old_state == abi::TCP_SYN_SENT) {
        // Connect time: to the SYN-ACK, or to the failure.
        let end = if ev.kind == abi::FLOW_OPEN {
            ev.established_ns
        } else {
            ev.ts_ns
        };
        let secs = end.saturating_sub(ev.start_ns) as f64 / 1e9;
        let extra: Vec<(&'static str, AttrValue)> = if ev.kind == abi::FLOW_OPEN {
            vec![]
        } else {
            vec![("error.type", outcome.into())]
        };
        store.record(
            Metric::TcpConnectDuration,
            resource,
            base(&extra),
            secs,
            now_unix,
        );
    }
    if ev.kind != abi::FLOW_CLOSE {
        return;
    }
    for (dir, bytes) in [("transmit", ev.bytes_sent), ("receive", ev.bytes_received)] {
        if bytes > 0 {
            store.record(
                Metric::NetFlowBytes,
                resource,
                base(&[("network.io.direction", dir.into())]),
                bytes as f64,
                now_unix,
            );
        }
    }
    if ev.retransmits > 0 {
        store.record(
            Metric::TcpRetransmits,
            resource,
            base(&[]),
            ev.retransmits as f64,
            now_unix,
        );
    }
}

/// True when this event is an outgoing connect that never got established:
/// it closed straight from SYN_SENT. The missing open time alone is not
/// proof: a connection whose ESTABLISHED change went unseen closes from a
/// later state, and was no failed connect.
pub fn is_failed_connect(ev: &FlowEvent) -> bool {
    ev.kind == abi::FLOW_CLOSE
        && ev.role != abi::ROLE_SERVER
        && ev.established_ns == 0
        && ev.old_state == abi::TCP_SYN_SENT
}

/// A CLIENT span for a failed connect, child of the request being served.
pub fn failed_connect_span(
    ev: &FlowEvent,
    ctx: SpanCtx,
    resource: Arc<Resource>,
    clock: &Clock,
) -> Span {
    let outcome = outcome(ev);
    let peer = ev.tuple.remote_addr().to_string();
    let attributes: Attributes = vec![
        ("network.transport", "tcp".into()),
        ("network.peer.address", peer.clone().into()),
        ("network.peer.port", AttrValue::Int(ev.tuple.dport as i64)),
        ("server.address", peer.into()),
        ("server.port", AttrValue::Int(ev.tuple.dport as i64)),
        ("error.type", outcome.into()),
    ];
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: ctx.trace_state,
        name: "connect".into(),
        kind: SpanKind::Client,
        start_unix_ns: clock.to_unix_ns(ev.start_ns),
        end_unix_ns: clock.to_unix_ns(ev.ts_ns.max(ev.start_ns)),
        attributes,
        status: StatusCode::Error,
        status_message: format!("connect {outcome}"),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, old_state: u8, err: i32) -> FlowEvent {
        FlowEvent {
            kind_tag: abi::EV_FLOW,
            kind,
            role: abi::ROLE_CLIENT,
            old_state,
            pid: 1,
            tid: 1,
            sk_err: err,
            start_ns: 0,
            established_ns: 0,
            ts_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            retransmits: 0,
            ctx_fd: -1,
            ctx_conn_start_ns: 0,
            tuple: Default::default(),
            comm: [0; 16],
            owner: abi::FLOW_OWNER_SELECTED,
            _pad: [0; 7],
        }
    }

    #[test]
    fn only_a_close_from_syn_sent_is_a_failed_connect() {
        assert!(is_failed_connect(&ev(
            abi::FLOW_CLOSE,
            abi::TCP_SYN_SENT,
            ECONNREFUSED
        )));
        // FIN_WAIT2 (5) with no open time: established, its open unseen.
        assert!(!is_failed_connect(&ev(abi::FLOW_CLOSE, 5, 0)));
        assert!(!is_failed_connect(&ev(
            abi::FLOW_OPEN,
            abi::TCP_SYN_SENT,
            0
        )));
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(&ev(abi::FLOW_OPEN, 2, 0)), "opened");
        assert_eq!(outcome(&ev(abi::FLOW_CLOSE, 2, ECONNREFUSED)), "refused");
        assert_eq!(outcome(&ev(abi::FLOW_CLOSE, 2, ETIMEDOUT)), "timed_out");
        assert_eq!(outcome(&ev(abi::FLOW_CLOSE, 1, ECONNRESET)), "reset");
        assert_eq!(outcome(&ev(abi::FLOW_CLOSE, 8, 0)), "closed");
        assert_eq!(outcome(&ev(abi::FLOW_CLOSE, 2, 0)), "failed");
    }

    #[test]
    fn host_owner_is_the_comm_or_unknown() {
        let mut e = ev(abi::FLOW_CLOSE, 1, 0);
        e.owner = abi::FLOW_OWNER_OTHER;
        e.comm[..4].copy_from_slice(b"curl");
        assert_eq!(host_owner(&e), AttrValue::from("curl"));
        e.owner = 0; // AT_FLOW_OWNER_UNKNOWN: accept() never seen
        assert_eq!(host_owner(&e), AttrValue::from("unknown"));
    }

    #[test]
    fn cidr_grouping_prefers_the_most_specific() {
        let g = PeerGrouping::parse(&["10.0.0.0/8".into(), "10.1.0.0/16".into()]).unwrap();
        assert_eq!(g.peer("10.1.2.3".parse().unwrap()), "10.1.0.0/16");
        assert_eq!(g.peer("10.2.2.3".parse().unwrap()), "10.0.0.0/8");
        assert_eq!(g.peer("192.168.1.1".parse().unwrap()), "192.168.1.1");
        assert!(PeerGrouping::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
