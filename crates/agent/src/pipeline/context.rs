//! W3C Trace Context (https://www.w3.org/TR/trace-context/): parsing an
//! incoming `traceparent`. Malformed values are ignored (a new root starts).

use autotel_model::{SpanId, TraceId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

fn hex_exact<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

pub fn parse_traceparent(value: &str) -> Option<ParentContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let version: [u8; 1] = hex_exact(version)?;
    if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let trace_id: TraceId = hex_exact(trace)?;
    let span_id: SpanId = hex_exact(span)?;
    let flags: [u8; 1] = hex_exact(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ParentContext {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid() {
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex::encode(p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}

/// The trace context assigned to one request when its head is read; the
/// span built when the exchange completes takes these ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanCtx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub sampled: bool,
}

/// (client address, client port, server address, server port)
pub type FlowKey = ([u8; 16], u16, [u8; 16], u16);

/// Maps keyed by what peers choose (addresses, ports, trace ids): foldhash
/// with a per-process random seed, several times cheaper than SipHash per
/// lookup and still not predictable from outside.
type PeerMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Ids carried in a TCP header option (see bpf/tracers/wire_ctx.h): chosen
/// by the kernel for a client request, or received with a server request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// Client requests in flight on this host, by flow, so the server side of
/// the same TCP connection can take them as parent (no header injection).
const MAX_FLOWS: usize = 65_536;

/// Unmatched server requests remembered per flow by span id; older ones
/// are only counted (a client that never comes is not selected).
const MAX_UNMATCHED_IDS: usize = 16;
/// On a same-host flow, where the client may be selected and merely late:
/// an HTTP/2 client opens up to this many streams in one write, and the
/// server may read them all before the client's write event arrives.
const MAX_UNMATCHED_IDS_LOCAL: usize = 1024;
/// Ids remembered over all flows; past it, new ones are only counted.
const MAX_UNMATCHED_TOTAL: usize = 65_536;

/// Client and server on this host: the same address, or loopback (IPv4
/// addresses fill the first 4 of the 16 bytes).
fn flow_is_local(flow: &FlowKey) -> bool {
    let a = &flow.0;
    let v4_loopback = a[0] == 127 && a[4..] == [0; 12];
    let v6_loopback = a[..15] == [0; 15] && a[15] == 1;
    flow.0 == flow.2 || v4_loopback || v6_loopback
}

/// Server requests of one flow that found no client entry, oldest first.
#[derive(Debug, Default)]
struct Unmatched {
    /// The oldest ones, counted only.
    counted: u32,
    /// Then each one's (trace id, span id), None where the request had its
    /// parent already (a traceparent or wire ids): nothing to patch.
    ids: std::collections::VecDeque<Option<(TraceId, SpanId)>>,
}

impl Unmatched {
    /// Remembers one more; `room`: whether the id may add to those kept
    /// (else the oldest kept one becomes counted only).
    fn push(&mut self, id: Option<(TraceId, SpanId)>, room: bool) {
        if !room {
            if self.ids.pop_front().is_none() {
                // Nothing kept to trade: this one is counted only.
                self.counted += 1;
                return;
            }
            self.counted += 1;
        }
        self.ids.push_back(id);
    }

    /// Counts one more, and turns the ids kept into counts: none of them can
    /// be patched any more (their order is kept: all are older).
    fn count_only(&mut self) {
        self.counted += self.ids.len() as u32 + 1;
        self.ids = std::collections::VecDeque::new();
    }

    /// The oldest unmatched request: Some(Some(id)) when it can still be
    /// patched, Some(None) when not, None when there is none left.
    fn pop(&mut self) -> Option<Option<(TraceId, SpanId)>> {
        if self.counted > 0 {
            self.counted -= 1;
            return Some(None);
        }
        self.ids.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.counted == 0 && self.ids.is_empty()
    }
}

/// The client side of a same-host request whose server side was read
/// first, by the trace id the server request started: every span of that
/// trace moves into the client's, and the server span takes the client as
/// parent. The server span is built at its response, its children at
/// theirs: all are usually still to come when the client's event arrives.
#[derive(Debug, Clone, Copy)]
struct LateParent {
    server_span_id: SpanId,
    trace_id: TraceId,
    client_span_id: SpanId,
}

/// Ticks (seconds) a late parent is kept for, at least.
const LATE_TICKS: u32 = 10;

/// What one flow has waiting, on either side. One map entry per flow: each
/// request looks its flow up once (three maps meant three cache misses per
/// request with a thousand connections).
#[derive(Debug, Default)]
struct FlowState {
    /// Client requests written whose server side was not read yet.
    clients: std::collections::VecDeque<SpanCtx>,
    /// Server requests that found no client entry. The client's entry may
    /// still come: the server's read can reach the ring before the client's
    /// send event, which fires when the send returns, after loopback already
    /// delivered the bytes. It then becomes the server span's parent
    /// (`late`), and is never left queued, or every later request on the
    /// connection would take its predecessor's client as parent.
    unmatched: Unmatched,
    /// The client side is a same-host connection we trace: its server spans
    /// may still get a late parent.
    client_traced: bool,
}

impl FlowState {
    fn is_idle(&self) -> bool {
        self.clients.is_empty() && self.unmatched.is_empty() && !self.client_traced
    }
}

/// The flow's entry, made if there is room for one more.
fn flow_entry(flows: &mut PeerMap<FlowKey, FlowState>, flow: FlowKey) -> Option<&mut FlowState> {
    let room = flows.len() < MAX_FLOWS;
    match flows.entry(flow) {
        std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) if room => {
            Some(v.insert(FlowState::default()))
        }
        std::collections::hash_map::Entry::Vacant(_) => None,
    }
}

pub struct ContextTracker {
    pub sampler: super::sampler::Sampler,
    pub same_host_linking: bool,
    flows: PeerMap<FlowKey, FlowState>,
    /// Ids kept in the flows' `unmatched`, over all flows.
    unmatched_ids: usize,
    /// Parents that came late, by the server request's own trace id; two
    /// generations of LATE_TICKS each.
    late: [PeerMap<TraceId, LateParent>; 2],
    ticks: u32,
}

impl ContextTracker {
    pub fn new(sampler: super::sampler::Sampler, same_host_linking: bool) -> Self {
        Self {
            sampler,
            same_host_linking,
            flows: Default::default(),
            unmatched_ids: 0,
            late: Default::default(),
            ticks: 0,
        }
    }

    fn child_of(&self, parent: Option<(TraceId, SpanId, String, bool)>) -> SpanCtx {
        match parent {
            Some((trace_id, parent_id, trace_state, parent_sampled)) => SpanCtx {
                trace_id,
                span_id: autotel_model::new_span_id(),
                parent_span_id: Some(parent_id),
                trace_state,
                sampled: self.sampler.sample(&trace_id, Some(parent_sampled)),
            },
            None => {
                let trace_id = autotel_model::new_trace_id();
                SpanCtx {
                    trace_id,
                    span_id: autotel_model::new_span_id(),
                    parent_span_id: None,
                    trace_state: String::new(),
                    sampled: self.sampler.sample(&trace_id, None),
                }
            }
        }
    }

    /// A request arrived at a server: an explicit traceparent wins, then the
    /// ids the peer's agent sent in a TCP option, then a client span of this
    /// host on the same connection, else a new trace.
    pub fn server_request(
        &mut self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        flow: FlowKey,
        wire: Option<WireIds>,
    ) -> SpanCtx {
        if let Some(p) = traceparent.and_then(parse_traceparent) {
            // Drop the same-host entry too: it describes the same request.
            self.take_or_note(&flow, None);
            return self.child_of(Some((
                p.trace_id,
                p.span_id,
                tracestate.unwrap_or_default().to_owned(),
                p.sampled,
            )));
        }
        if let Some(w) = wire {
            self.take_or_note(&flow, None);
            // The option carries no sampled flag: the sender exports its
            // client spans unless its own sampler said no.
            return self.child_of(Some((w.trace_id, w.span_id, String::new(), true)));
        }
        if !self.same_host_linking {
            return self.child_of(None);
        }
        let root = self.child_of(None);
        match self.take_or_note(&flow, Some((root.trace_id, root.span_id))) {
            Some(c) => self.child_of(Some((c.trace_id, c.span_id, c.trace_state, c.sampled))),
            None => root,
        }
    }

    /// A client request was written; `parent` is the server request the
    /// writing thread was serving, if any; `wire`: the ids the kernel put
    /// on the wire for it, which the span must then carry.
    pub fn client_request(
        &mut self,
        parent: Option<&SpanCtx>,
        flow: FlowKey,
        wire: Option<WireIds>,
    ) -> SpanCtx {
        let ctx = self.child_request(parent, wire);
        if !self.same_host_linking {
            return ctx;
        }
        let Some(f) = flow_entry(&mut self.flows, flow) else {
            return ctx;
        };
        if !f.unmatched.is_empty() {
            // The server side already read this request: its span, not yet
            // built, takes this one as parent.
            let u = &mut f.unmatched;
            let kept = u.ids.len();
            let popped = u.pop();
            self.unmatched_ids -= kept - u.ids.len();
            if let Some(Some((server_trace, server_span_id))) = popped {
                if self.late[0].len() < MAX_FLOWS {
                    self.late[0].insert(
                        server_trace,
                        LateParent {
                            server_span_id,
                            trace_id: ctx.trace_id,
                            client_span_id: ctx.span_id,
                        },
                    );
                }
            }
            if f.is_idle() {
                self.flows.remove(&flow);
            }
            return ctx;
        }
        f.clients.push_back(ctx.clone());
        ctx
    }

    /// A client call whose server side is not linked by flow (database
    /// calls: their answers, not their requests, are what we report).
    pub fn child_request(&mut self, parent: Option<&SpanCtx>, wire: Option<WireIds>) -> SpanCtx {
        let mut ctx = self
            .child_of(parent.map(|p| (p.trace_id, p.span_id, p.trace_state.clone(), p.sampled)));
        if let Some(w) = wire {
            ctx.span_id = w.span_id;
            if parent.is_none() {
                ctx.trace_id = w.trace_id;
                ctx.sampled = self.sampler.sample(&w.trace_id, None);
            }
        }
        ctx
    }

    /// The kernel gave the outgoing calls of a root server request a trace
    /// id of its own (it cannot know ours): the request joins that trace,
    /// so the spans of the peers that received it land in the same trace.
    pub fn adopt_wire_trace(&self, ctx: &mut SpanCtx, trace_id: TraceId) {
        if ctx.parent_span_id.is_none() && ctx.trace_id != trace_id {
            ctx.trace_id = trace_id;
            ctx.sampled = self.sampler.sample(&trace_id, None);
        }
    }

    /// The client's entry for this request, or a note that none came
    /// (with the server span id a late one may patch).
    fn take_or_note(
        &mut self,
        flow: &FlowKey,
        server: Option<(TraceId, SpanId)>,
    ) -> Option<SpanCtx> {
        let f = flow_entry(&mut self.flows, *flow)?;
        if let Some(c) = f.clients.pop_front() {
            if f.is_idle() {
                self.flows.remove(flow);
            }
            return Some(c);
        }
        let cap = if flow_is_local(flow) {
            MAX_UNMATCHED_IDS_LOCAL
        } else {
            MAX_UNMATCHED_IDS
        };
        let total_room = self.unmatched_ids < MAX_UNMATCHED_TOTAL;
        let known_client = f.client_traced;
        let u = &mut f.unmatched;
        let kept = u.ids.len();
        if !known_client && (u.counted > 0 || !total_room) {
            // No client event came for this flow while its ids filled up:
            // its client is not one we trace (a load generator on keep-alive
            // connections). Count only: rotating ids through thousands of
            // such flows was a cache miss per request.
            u.count_only();
        } else {
            u.push(server, total_room && kept < cap);
        }
        self.unmatched_ids = self.unmatched_ids + u.ids.len() - kept;
        None
    }

    /// A span of a server request whose client side came late joins that
    /// client's trace; the server span itself becomes the client's child.
    pub fn adopt_late_parent(&mut self, span: &mut autotel_model::Span) {
        let Some(p) = self.late_parent(&span.trace_id) else {
            return;
        };
        span.trace_id = p.trace_id;
        if span.span_id == p.server_span_id {
            span.parent_span_id = Some(p.client_span_id);
        }
    }

    fn late_parent(&self, trace: &TraceId) -> Option<LateParent> {
        if self.late.iter().all(|m| m.is_empty()) {
            return None;
        }
        self.late[0]
            .get(trace)
            .or_else(|| self.late[1].get(trace))
            .copied()
    }

    /// Once a second: late parents are kept LATE_TICKS to 2 x LATE_TICKS.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(LATE_TICKS) {
            self.late.swap(0, 1);
            self.late[0].clear();
        }
    }

    /// A traced client connection on this host (its first event).
    pub fn note_client_flow(&mut self, flow: FlowKey) {
        if !self.same_host_linking {
            return;
        }
        if let Some(f) = flow_entry(&mut self.flows, flow) {
            f.client_traced = true;
        }
    }

    /// Whether a root server span of this flow may still get its parent
    /// from a client event that is late: the flow's client is one we trace,
    /// or this is the flow's first request (the client's first write can be
    /// its first event). Other spans need not wait (an unselected client on
    /// a keep-alive connection never comes).
    pub fn may_link_late(&self, flow: &FlowKey) -> bool {
        self.flows.get(flow).is_some_and(|f| {
            f.client_traced || (f.unmatched.counted == 0 && f.unmatched.ids.len() <= 1)
        })
    }

    /// A side of the connection closed: nothing more will match it.
    pub fn forget_flow(&mut self, flow: &FlowKey) {
        if let Some(f) = self.flows.remove(flow) {
            self.unmatched_ids -= f.unmatched.ids.len();
        }
    }
}

#[cfg(test)]
mod tracker_tests {
    use super::super::sampler::Sampler;
    use super::*;

    const FLOW: FlowKey = ([1; 16], 40000, [2; 16], 80);

    #[test]
    fn a_late_client_entry_does_not_shift_later_links() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        // Request 1: the server side is seen before the client side.
        let s1 = t.server_request(None, None, FLOW, None);
        assert_eq!(s1.parent_span_id, None);
        let c1 = t.client_request(None, FLOW, None);
        // ... and request 1's span, built at its response, takes client 1.
        let p = t.late_parent(&s1.trace_id).unwrap();
        assert_eq!(
            (p.server_span_id, p.trace_id, p.client_span_id),
            (s1.span_id, c1.trace_id, c1.span_id)
        );
        // Request 2 in order: it must link to client 2, not client 1.
        let c2 = t.client_request(None, FLOW, None);
        let s2 = t.server_request(None, None, FLOW, None);
        assert_eq!(s2.parent_span_id, Some(c2.span_id));
        t.forget_flow(&FLOW);
        assert!(t.flows.is_empty());
    }

    #[test]
    fn unmatched_requests_stay_bounded_and_in_order() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        // A client that is not selected: the server side never matches.
        let servers: Vec<_> = (0..MAX_UNMATCHED_IDS)
            .map(|_| t.server_request(None, None, FLOW, None))
            .collect();
        assert_eq!(t.flows[&FLOW].unmatched.ids.len(), MAX_UNMATCHED_IDS);
        // A client that is late by up to MAX_UNMATCHED_IDS requests links.
        let c = t.client_request(None, FLOW, None);
        let p = t.late_parent(&servers[0].trace_id).unwrap();
        assert_eq!(
            (p.server_span_id, p.client_span_id),
            (servers[0].span_id, c.span_id)
        );
        // Past the cap the flow's requests are only counted, the kept ids
        // too (all older than the new one): O(1) per request from then on.
        for _ in 0..100 {
            t.server_request(None, None, FLOW, None);
        }
        let u = &t.flows[&FLOW].unmatched;
        assert!(u.ids.is_empty());
        assert_eq!(u.counted as usize, MAX_UNMATCHED_IDS - 1 + 100);
        assert_eq!(t.unmatched_ids, 0);
        // Late clients still pair up in order, with the counted ones.
        for _ in 0..(MAX_UNMATCHED_IDS - 1 + 100) {
            t.client_request(None, FLOW, None);
        }
        assert!(t.flows.is_empty());
        let c = t.client_request(None, FLOW, None);
        let s = t.server_request(None, None, FLOW, None);
        assert_eq!(s.parent_span_id, Some(c.span_id));
        // Late parents go after two generations of ticks.
        for _ in 0..2 * LATE_TICKS {
            t.tick();
        }
        assert!(t.late.iter().all(|m| m.is_empty()));
    }

    /// 127.0.0.1 as flows carry it.
    fn loopback() -> [u8; 16] {
        let mut lo = [0; 16];
        lo[..4].copy_from_slice(&[127, 0, 0, 1]);
        lo
    }

    #[test]
    fn a_local_burst_read_before_its_client_links_every_request() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        let lo = loopback();
        let local: FlowKey = (lo, 40000, lo, 8080);
        // An HTTP/2 client opened 300 streams in one write; the server read
        // them all before the client's write event arrived.
        let servers: Vec<_> = (0..300)
            .map(|_| t.server_request(None, None, local, None))
            .collect();
        for s in &servers {
            let c = t.client_request(None, local, None);
            let p = t.late_parent(&s.trace_id).unwrap();
            assert_eq!((p.server_span_id, p.client_span_id), (s.span_id, c.span_id));
        }
        assert!(t.flows.is_empty());
        assert_eq!(t.unmatched_ids, 0);
    }

    #[test]
    fn only_server_spans_that_can_still_get_a_parent_wait() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        let lo = loopback();
        let untraced: FlowKey = (lo, 40000, lo, 8080);
        let traced: FlowKey = (lo, 40001, lo, 8080);
        // A keep-alive client we do not trace: its first request may be one
        // whose client event is late, the ones after it cannot be.
        assert!(!t.may_link_late(&untraced));
        t.server_request(None, None, untraced, None);
        assert!(t.may_link_late(&untraced));
        t.server_request(None, None, untraced, None);
        assert!(!t.may_link_late(&untraced));
        // A client connection we trace: every request may still link.
        t.note_client_flow(traced);
        for _ in 0..3 {
            t.server_request(None, None, traced, None);
            assert!(t.may_link_late(&traced));
        }
        t.forget_flow(&traced);
        assert!(!t.may_link_late(&traced));
    }

    #[test]
    fn unmatched_ids_over_all_flows_stay_bounded() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        let lo = loopback();
        // Local clients that are not selected, on many connections.
        let flows = MAX_UNMATCHED_TOTAL / MAX_UNMATCHED_IDS_LOCAL + 8;
        for port in 0..flows as u16 {
            for _ in 0..MAX_UNMATCHED_IDS_LOCAL {
                t.server_request(None, None, (lo, port, lo, 8080), None);
            }
        }
        assert_eq!(t.unmatched_ids, MAX_UNMATCHED_TOTAL);
        let kept: usize = t.flows.values().map(|f| f.unmatched.ids.len()).sum();
        assert_eq!(kept, MAX_UNMATCHED_TOTAL);
        // The requests past the budget are still counted, in order.
        let last = &t.flows[&(lo, flows as u16 - 1, lo, 8080)].unmatched;
        assert_eq!(last.counted as usize, MAX_UNMATCHED_IDS_LOCAL);
        for port in 0..flows as u16 {
            t.forget_flow(&(lo, port, lo, 8080));
        }
        assert_eq!(t.unmatched_ids, 0);
    }

    #[test]
    fn same_host_server_is_child_of_client() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        let server_a = t.server_request(None, None, ([9; 16], 1, [9; 16], 2), None);
        let client = t.client_request(Some(&server_a), FLOW, None);
        assert_eq!(client.trace_id, server_a.trace_id);
        assert_eq!(client.parent_span_id, Some(server_a.span_id));
        let server_b = t.server_request(None, None, FLOW, None);
        assert_eq!(server_b.trace_id, server_a.trace_id);
        assert_eq!(server_b.parent_span_id, Some(client.span_id));
        // consumed: a second request on the flow without a client is a new root
        assert_eq!(
            t.server_request(None, None, FLOW, None).parent_span_id,
            None
        );
    }

    #[test]
    fn traceparent_wins_and_linking_can_be_off() {
        let mut t = ContextTracker::new(Sampler::default(), true);
        t.client_request(None, FLOW, None);
        let s = t.server_request(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            Some("a=b"),
            FLOW,
            None,
        );
        assert_eq!(hex::encode(s.parent_span_id.unwrap()), "00f067aa0ba902b7");
        assert_eq!(s.trace_state, "a=b");
        assert!(!s.sampled, "parent-based default follows the 00 flag");
        let mut off = ContextTracker::new(Sampler::default(), false);
        off.client_request(None, FLOW, None);
        assert_eq!(
            off.server_request(None, None, FLOW, None).parent_span_id,
            None
        );
    }

    #[test]
    fn wire_ids_link_across_hosts() {
        let w = WireIds {
            trace_id: [7; 16],
            span_id: [3; 8],
        };
        // Client host: a root call carries the kernel's ids.
        let mut client_host = ContextTracker::new(Sampler::default(), false);
        let c = client_host.client_request(None, FLOW, Some(w));
        assert_eq!((c.trace_id, c.span_id), (w.trace_id, w.span_id));
        // Server host: the option's ids become the parent; traceparent wins.
        let mut server_host = ContextTracker::new(Sampler::default(), false);
        let s = server_host.server_request(None, None, FLOW, Some(w));
        assert_eq!(s.trace_id, w.trace_id);
        assert_eq!(s.parent_span_id, Some(w.span_id));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let s = server_host.server_request(Some(tp), None, FLOW, Some(w));
        assert_eq!(hex::encode(s.parent_span_id.unwrap()), "00f067aa0ba902b7");
        // A nested call keeps its parent's trace; only the span id is the kernel's.
        let mut nested = client_host.client_request(Some(&s), FLOW, Some(w));
        assert_eq!(nested.trace_id, s.trace_id);
        assert_eq!(nested.span_id, w.span_id);
        // A root request adopts the trace its calls went out with; a child does not.
        let mut root = client_host.server_request(None, None, FLOW, None);
        client_host.adopt_wire_trace(&mut root, [9; 16]);
        assert_eq!(root.trace_id, [9; 16]);
        client_host.adopt_wire_trace(&mut nested, [9; 16]);
        assert_eq!(nested.trace_id, s.trace_id);
    }
}
