//! Connection tracking -> protocol parsing -> span building. Runs on the
//! ring-buffer reader thread: no locks or allocations per event beyond what a
//! new connection or a finished span needs. Spans leave through a bounded
//! channel; when it is full they are dropped and counted, never waited for.

pub mod clock;
pub mod context;
pub mod http_span;
pub mod routes;
pub mod sampler;

use crate::config::Discovery;
use crate::discovery::{resource, ProcEvent, Resources};
use crate::metrics::SharedStore;
use crate::selfmetrics::SelfMetrics;
use crate::tracer::abi::{self, ConnTuple, DataEvent, Event};
use autotel_model::{Resource, Span};
use autotel_protocols::http1::{
    Dir, Exchange, Http1Connection, Http1Event, ParseError, Segment, Timing,
};
use clock::Clock;
use context::{ContextTracker, FlowKey, SpanCtx};
use crossbeam_channel::{Sender, TrySendError};
use routes::Router;
use rustc_hash::FxHashMap;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Connection states kept at most; beyond it the least recently used go.
const MAX_CONNS: usize = 65_536;
/// A connection silent this long is forgotten (its close was missed).
const IDLE_NS: u64 = 300 * 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    pid: u32,
    fd: i32,
    start_ns: u64,
}

struct Conn {
    http: Http1Connection,
    tuple: ConnTuple,
    /// Addresses formatted once per connection, not per span.
    local_addr: String,
    peer_addr: String,
    last_ns: u64,
    /// Contexts of requests read and not yet answered, oldest first.
    ctxs: VecDeque<SpanCtx>,
    /// Server side: context of the latest request (what a nested call joins).
    last_ctx: Option<SpanCtx>,
    /// Client side: the server request the writing thread was serving.
    client_parent: Option<SpanCtx>,
}

impl Conn {
    /// (client, client port, server, server port) of this connection.
    fn flow(&self, server_side: bool) -> FlowKey {
        let t = &self.tuple;
        if server_side {
            (t.daddr, t.dport, t.saddr, t.sport)
        } else {
            (t.saddr, t.sport, t.daddr, t.dport)
        }
    }
}

/// Accumulates a count and says it at most once per period (log flood guard).
struct RateLimitedCount {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
    pending: u64,
}

impl RateLimitedCount {
    fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            last: None,
            pending: 0,
        }
    }

    fn add(&mut self, n: u64) {
        self.pending += n;
    }

    /// The count to report now, if any and if the period has passed.
    fn due(&mut self) -> Option<u64> {
        if self.pending == 0 || self.last.is_some_and(|t| t.elapsed() < self.period) {
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}

/// Counts gathered on the hot path and published once a second.
#[derive(Default)]
struct LocalCounts {
    data_records: u64,
    proc_records: u64,
    decode_errors: u64,
    spans: u64,
    dropped_queue_full: u64,
    evicted: u64,
    parse_errors: HashMap<&'static str, u64>,
}

pub struct Pipeline {
    /// FxHash: keys are kernel ids, not attacker-chosen strings.
    /// Boxed: taken out and put back per event, so only a pointer moves.
    conns: FxHashMap<ConnKey, Box<Conn>>,
    clock: Clock,
    resources: Resources,
    host: String,
    spans: Sender<Span>,
    proc_events: Sender<ProcEvent>,
    metrics: Arc<SelfMetrics>,
    red: SharedStore,
    router: Router,
    contexts: ContextTracker,
    /// Set when selection is decided at exec (executable name).
    exec_selector: Option<Discovery>,
    /// Processes selected provisionally at exec and then rejected: their
    /// data is dropped until the kernel map catches up.
    rejected: HashSet<u32>,
    /// Exec'ed path per pid, for resources of processes gone from /proc.
    exec_paths: HashMap<u32, String>,
    /// Processes that exited, to forget once the data ring is drained.
    pending_exits: Vec<u32>,
    drop_warning: RateLimitedCount,
    counts: LocalCounts,
    scratch: Vec<Http1Event>,
}

/// What the pipeline needs besides its channels.
pub struct PipelineConfig {
    pub router: Router,
    pub sampler: sampler::Sampler,
    pub same_host_linking: bool,
    pub red: SharedStore,
    pub discovery: Discovery,
}

impl Pipeline {
    pub fn new(
        cfg: PipelineConfig,
        resources: Resources,
        spans: Sender<Span>,
        proc_events: Sender<ProcEvent>,
        metrics: Arc<SelfMetrics>,
    ) -> Self {
        Self {
            red: cfg.red,
            router: cfg.router,
            contexts: ContextTracker::new(cfg.sampler, cfg.same_host_linking),
            exec_selector: cfg.discovery.selects_on_exec().then_some(cfg.discovery),
            rejected: HashSet::new(),
            exec_paths: HashMap::new(),
            pending_exits: Vec::new(),
            drop_warning: RateLimitedCount::new(std::time::Duration::from_secs(10)),
            conns: FxHashMap::default(),
            clock: Clock::new(),
            resources,
            host: resource::host_name(),
            spans,
            proc_events,
            metrics,
            counts: LocalCounts::default(),
            scratch: Vec::new(),
        }
    }

    /// One ring-buffer record.
    pub fn on_record(&mut self, bytes: &[u8]) {
        match abi::decode(bytes) {
            Ok(Event::Data(d)) => {
                self.counts.data_records += 1;
                self.on_data(&d);
            }
            Ok(Event::Close(c)) => {
                self.counts.data_records += 1;
                let key = ConnKey {
                    pid: c.pid,
                    fd: c.fd,
                    start_ns: c.conn_start_ns,
                };
                self.close(key);
            }
            Ok(Event::Proc(p)) => {
                self.counts.proc_records += 1;
                let ev = match p.proc_kind {
                    abi::PROC_EXEC => self.exec_decision(&p),
                    abi::PROC_FORK => ProcEvent::Fork(p.pid),
                    abi::PROC_LISTEN => ProcEvent::Listen(p.pid),
                    abi::PROC_EXIT => {
                        // The process ring is read before the data ring: its
                        // last data is still queued. Finish it after the drain.
                        self.pending_exits.push(p.pid);
                        return;
                    }
                    _ => return,
                };
                let _ = self.proc_events.try_send(ev);
            }
            Err(e) => {
                self.counts.decode_errors += 1;
                tracing::debug!(error = %e, "undecodable ring-buffer record");
            }
        }
    }

    /// With executable-name selection the kernel traces every exec until we
    /// decide here, from the exec'ed path, before its data is looked at.
    fn exec_decision(&mut self, p: &abi::ProcEvent) -> ProcEvent {
        let path = p.filename();
        let Some(sel) = &self.exec_selector else {
            return ProcEvent::Exec {
                pid: p.pid,
                selected: None,
                path,
            };
        };
        let base = path.rsplit('/').next().unwrap_or(&path).to_owned();
        let comm = p.comm();
        let by_path = crate::discovery::Candidate {
            pid: p.pid,
            exe_name: &base,
            cmd: std::slice::from_ref(&path),
            ports: &[],
        };
        let by_comm = crate::discovery::Candidate {
            pid: p.pid,
            exe_name: &comm,
            cmd: &[],
            ports: &[],
        };
        let mut selected =
            crate::discovery::matches(sel, &by_path) || crate::discovery::matches(sel, &by_comm);
        if selected && sel.skip_sdk_instrumented && resource::detect_sdk(p.pid).is_some() {
            tracing::info!(pid = p.pid, "process is instrumented by an OpenTelemetry SDK: skipping it (discovery.skip_sdk_instrumented)");
            selected = false;
        }
        if selected {
            self.rejected.remove(&p.pid);
            self.exec_paths.insert(p.pid, path.clone());
        } else {
            self.rejected.insert(p.pid);
        }
        ProcEvent::Exec {
            pid: p.pid,
            selected: Some(selected),
            path,
        }
    }

    fn on_data(&mut self, d: &DataEvent<'_>) {
        let h = &d.header;
        if self.rejected.contains(&h.pid) {
            return;
        }
        let key = ConnKey {
            pid: h.pid,
            fd: h.fd,
            start_ns: h.conn_start_ns,
        };
        // The server request this thread serves, for a nested client call.
        let parent = if h.direction != abi::DIR_INGRESS && h.ctx_fd >= 0 {
            let server = ConnKey {
                pid: h.pid,
                fd: h.ctx_fd,
                start_ns: h.ctx_conn_start_ns,
            };
            self.conns.get(&server).and_then(|c| c.last_ctx.clone())
        } else {
            None
        };
        let mut conn = match self.conns.remove(&key) {
            Some(c) => c,
            None => {
                if self.conns.len() >= MAX_CONNS {
                    self.evict_oldest();
                }
                Box::new(Conn {
                    local_addr: h.tuple.local_addr().to_string(),
                    peer_addr: h.tuple.remote_addr().to_string(),
                    http: Http1Connection::new(match h.role {
                        abi::ROLE_SERVER => Some(Dir::Ingress),
                        abi::ROLE_CLIENT => Some(Dir::Egress),
                        _ => None,
                    }),
                    tuple: h.tuple,
                    last_ns: h.exit_ns,
                    ctxs: VecDeque::new(),
                    last_ctx: None,
                    client_parent: None,
                })
            }
        };
        conn.last_ns = h.exit_ns;
        if !conn.http.is_opaque() {
            if parent.is_some() {
                conn.client_parent = parent;
            }
            let seg = Segment {
                data: d.data,
                total_len: h.total_len as usize,
                tail: d.tail(),
                timing: Timing {
                    enter_ns: h.enter_ns,
                    exit_ns: h.exit_ns,
                },
            };
            let dir = if h.direction == abi::DIR_INGRESS {
                Dir::Ingress
            } else {
                Dir::Egress
            };
            let mut events = std::mem::take(&mut self.scratch);
            conn.http.feed(dir, &seg, &mut events);
            self.emit(key.pid, &mut conn, &mut events);
            self.scratch = events;
        }
        self.conns.insert(key, conn);
    }

    fn emit(&mut self, pid: u32, conn: &mut Conn, events: &mut Vec<Http1Event>) {
        for ev in events.drain(..) {
            match ev {
                Http1Event::RequestStart {
                    traceparent,
                    tracestate,
                } => {
                    let server_side = conn.http.server_side();
                    let flow = conn.flow(server_side);
                    let ctx = if server_side {
                        let ctx = self.contexts.server_request(
                            traceparent.as_deref(),
                            tracestate.as_deref(),
                            flow,
                        );
                        conn.last_ctx = Some(ctx.clone());
                        ctx
                    } else {
                        self.contexts
                            .client_request(conn.client_parent.as_ref(), flow)
                    };
                    conn.ctxs.push_back(ctx);
                }
                Http1Event::Exchange(x) => {
                    let ctx = conn.ctxs.pop_front().unwrap_or_else(|| {
                        // Defensive: a request whose start we did not see.
                        self.contexts
                            .server_request(None, None, conn.flow(x.server_side))
                    });
                    self.finish(pid, conn, &x, ctx);
                }
                Http1Event::Error(e) => {
                    if e == ParseError::TooManyPending {
                        conn.ctxs.pop_front();
                    }
                    *self.counts.parse_errors.entry(e.kind()).or_default() += 1
                }
            }
        }
    }

    /// Builds the span of a finished exchange, records its metrics, and
    /// sends it on when it is sampled and not ignored.
    fn finish(&mut self, pid: u32, conn: &Conn, x: &Exchange, ctx: SpanCtx) {
        let path = http_span::path_of(&x.request.target);
        let ignored = x.server_side && self.router.is_ignored(path);
        let mode = self.router.ignore_mode;
        let route = x.server_side.then(|| self.router.route(path));
        let resource = self.resource(pid);
        let sampled = ctx.sampled;
        let span = http_span::build(
            http_span::SpanInput {
                exchange: x,
                tuple: &conn.tuple,
                local_addr: &conn.local_addr,
                peer_addr: &conn.peer_addr,
                resource,
                route,
                ctx,
            },
            &self.clock,
        );
        // Metrics see every span, before sampling or ignoring for traces.
        self.red
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_http_span(&span, ignored && mode.skips_metrics());
        if !sampled || (ignored && mode.skips_traces()) {
            return;
        }
        self.counts.spans += 1;
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.counts.dropped_queue_full += 1,
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn resource(&self, pid: u32) -> Arc<Resource> {
        if let Some(r) = self
            .resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
        {
            return r.clone();
        }
        // Selected in the kernel (fork, exec) before discovery caught up.
        let r = Arc::new(resource::build(
            pid,
            &self.host,
            self.exec_paths.get(&pid).map(String::as_str),
            &resource::Naming::default(),
        ));
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, r.clone());
        r
    }

    fn close(&mut self, key: ConnKey) {
        if let Some(mut conn) = self.conns.remove(&key) {
            let mut events = std::mem::take(&mut self.scratch);
            conn.http.close(&mut events);
            self.emit(key.pid, &mut conn, &mut events);
            self.scratch = events;
            if !conn.http.server_side() {
                self.contexts.forget_flow(&conn.flow(false));
            }
        }
    }

    /// Called after each full drain of the rings: exits seen in this pass
    /// now have all their data processed.
    pub fn after_drain(&mut self) {
        for pid in std::mem::take(&mut self.pending_exits) {
            self.process_exited(pid);
            self.rejected.remove(&pid);
            self.exec_paths.remove(&pid);
            let _ = self.proc_events.try_send(ProcEvent::Exit(pid));
        }
    }

    fn process_exited(&mut self, pid: u32) {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.pid == pid)
            .copied()
            .collect();
        for k in keys {
            self.close(k);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ns)
            .map(|(k, _)| *k)
        {
            self.conns.remove(&key);
            self.counts.evicted += 1;
        }
    }

    /// Housekeeping, once a second: forget idle connections, publish counts.
    pub fn tick(&mut self, now_mono_ns: u64) {
        let before = self.conns.len();
        self.conns
            .retain(|_, c| now_mono_ns.saturating_sub(c.last_ns) < IDLE_NS);
        self.counts.evicted += (before - self.conns.len()) as u64;
        self.clock = Clock::new();
        self.publish();
    }

    fn publish(&mut self) {
        let c = std::mem::take(&mut self.counts);
        if c.dropped_queue_full > 0 {
            self.drop_warning.add(c.dropped_queue_full);
        }
        if let Some(n) = self.drop_warning.due() {
            tracing::warn!(
                spans = n,
                "export queue full: spans dropped (collector down or slow? see autotel_spans_dropped_total)"
            );
        }
        let m = &self.metrics;
        m.events_received
            .get_or_create(&crate::selfmetrics::RingbufLabel {
                ringbuf: "data".into(),
            })
            .inc_by(c.data_records);
        m.events_received
            .get_or_create(&crate::selfmetrics::RingbufLabel {
                ringbuf: "proc".into(),
            })
            .inc_by(c.proc_records);
        m.decode_errors.inc_by(c.decode_errors);
        m.spans_created.inc_by(c.spans);
        if c.dropped_queue_full > 0 {
            m.dropped("queue_full", c.dropped_queue_full);
        }
        m.connections_evicted.inc_by(c.evicted);
        for (kind, n) in c.parse_errors {
            m.parse_error("http1", kind, n);
        }
        m.tracked_connections.set(self.conns.len() as i64);
        m.export_queue_length.set(self.spans.len() as i64);
    }
}
