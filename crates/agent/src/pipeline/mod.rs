//! Connection tracking -> protocol parsing -> span building. Runs on the
//! ring-buffer reader thread: no locks or allocations per event beyond what a
//! new connection or a finished span needs. Spans leave through a bounded
//! channel; when it is full they are dropped and counted, never waited for.

pub mod clock;
pub mod context;
pub mod db_span;
pub mod detect;
pub mod dns_span;
pub mod h2_span;
pub mod http_span;
pub mod network;
#[cfg(test)]
mod process_order_test;
pub mod routes;
pub mod sampler;
#[cfg(test)]
mod throughput_test;
pub mod tls;

use crate::config::Discovery;
use crate::discovery::{resource, ProcEvent, Resources};
use crate::metrics::{SharedStore, Store};
use crate::rate_limit::RateLimitedCount;
use crate::selfmetrics::SelfMetrics;
use crate::tracer::abi::{self, ConnTuple, DataEvent, Event};
use crate::tracer::SelectedPids;
use autotel_model::{AttrStr, Resource, Span, SpanKind, TraceId};
use autotel_protocols::db::{DbConnection, DbEvent, DbOperation};
use autotel_protocols::dns::{self, DnsLookup, DnsTcpFramer, LookupTracker};
use autotel_protocols::http1::{
    Dir, Exchange, Http1Connection, Http1Event, ParseError, Segment, Timing,
};
use autotel_protocols::http2::{Http2Connection, Http2Event, Http2Request, Http2Stream};
use clock::Clock;
use context::{ContextTracker, FlowKey, SpanCtx, WireIds};
use crossbeam_channel::{Sender, TrySendError};
use db_span::QueryTextMode;
use detect::{Protocol, Role};
use routes::Router;
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Connection states kept at most; beyond it the least recently used go.
const MAX_CONNS: usize = 65_536;
/// Lifecycle events buffered per drain pass at most.
const MAX_PENDING_FLOWS: usize = 65_536;
/// A connection silent this long is forgotten (its close was missed).
const IDLE_NS: u64 = 300 * 1_000_000_000;

/// Spans travel to the exporter in batches: one per ring drain, at most
/// MAX_SPAN_BATCH spans.
pub type SpanBatch = Vec<Span>;
const MAX_SPAN_BATCH: usize = 256;

/// How long a root server span of a same-host connection waits for its
/// client's event. That event fires when the client's send returns, and
/// loopback delivers the bytes inside the send: a server woken on the
/// client's CPU can read, answer and be reported before the client thread
/// runs again (seen with curl -> python http.server).
const LATE_PARENT_HOLD: std::time::Duration = std::time::Duration::from_millis(50);
/// How far up a chain of forks discovery has not seen `fork_ancestor` looks.
const MAX_FORK_GENERATIONS: usize = 4;

/// The tag of a provisional (exec) selection in the kernel's selection
/// value `flags` (0: untagged), or None for any other selection.
fn provisional_tag(flags: u32) -> Option<u32> {
    (flags & abi::SEL_PROVISIONAL != 0).then_some(flags >> abi::SEL_TAG_SHIFT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    pid: u32,
    fd: i32,
    start_ns: u64,
}

/// The parser a connection's bytes go to, once its first bytes decided it.
/// HTTP/1 is kept inline: it is the common case and Conn is boxed already.
#[allow(clippy::large_enum_variant)]
enum Proto {
    Http1(Http1Connection),
    Db {
        parser: Box<dyn DbConnection>,
        server_side: bool,
        name: &'static str,
    },
    /// DNS lookups of a client: datagrams (UDP) or length-prefixed (TCP).
    Dns(Box<DnsState>),
    Http2(Box<H2State>),
}

struct H2State {
    parser: Http2Connection,
    server_side: bool,
    /// Trace context per open stream, decided when its request arrived.
    ctxs: FxHashMap<u32, SpanCtx>,
}

/// Streams whose context we keep at most (the parser's own stream cap).
const MAX_H2_CTXS: usize = autotel_protocols::http2::MAX_STREAMS;

struct DnsState {
    tracker: LookupTracker,
    /// TCP only: (client -> server, server -> client) framers.
    framers: Option<(DnsTcpFramer, DnsTcpFramer)>,
}

/// First bytes too few to tell the protocol, kept until more arrive.
struct Held {
    dir: Dir,
    bytes: Vec<u8>,
    timing: Timing,
}

enum Decision {
    /// Hold the bytes: too few to decide.
    Wait,
    /// The parser is chosen; held bytes (if any) must be fed first.
    Decided(Option<Held>),
}

/// Below this many bytes an unrecognised start is held rather than judged.
const MIN_DECIDE_BYTES: usize = 16;

struct Conn {
    /// None until the first bytes with content arrive.
    proto: Option<Proto>,
    held: Option<Held>,
    /// Set once TLS is seen (handshake records or library plaintext): raw
    /// bytes are then ciphertext and only the plaintext is parsed.
    tls: Option<Box<tls::TlsState>>,
    role: Role,
    tuple: ConnTuple,
    /// Addresses formatted once per connection, not per span; inline (no
    /// heap line to miss per span) up to 24 bytes, as every IPv4 address.
    local_addr: AttrStr,
    peer_addr: AttrStr,
    last_ns: u64,
    /// Contexts of requests read and not yet answered, oldest first.
    ctxs: VecDeque<SpanCtx>,
    /// Server side: context of the latest request (what a nested call joins).
    last_ctx: Option<SpanCtx>,
    /// Client side: the server request the writing thread was serving.
    client_parent: Option<SpanCtx>,
    /// Client side: ids the kernel sent in a TCP option with the request
    /// being written; its span takes them.
    wire_out: Option<WireIds>,
    /// Server side: ids the peer's agent sent with the request being read.
    wire_in: Option<WireIds>,
}

impl Conn {
    fn is_opaque(&self) -> bool {
        matches!(&self.proto, Some(Proto::Http1(h)) if h.is_opaque())
    }

    /// True when the observed process serves this connection.
    fn server_side(&self) -> bool {
        match &self.proto {
            Some(Proto::Http1(h)) => h.server_side(),
            Some(Proto::Db { server_side, .. }) => *server_side,
            Some(Proto::Dns(_)) => false,
            Some(Proto::Http2(h)) => h.server_side,
            None => self.role == Role::Server,
        }
    }

    /// (client, client port, server, server port) of this connection.
    fn flow(&self, server_side: bool) -> FlowKey {
        let t = &self.tuple;
        let (local, peer) = (t.flow_addr(&t.saddr), t.flow_addr(&t.daddr));
        if server_side {
            (peer, t.dport, local, t.sport)
        } else {
            (local, t.sport, peer, t.dport)
        }
    }
}

/// How much of a record the look-ahead loads: a request or response head
/// is rarely longer; the rest of a long record streams in as it is parsed.
const MAX_PREFETCH_RECORD_BYTES: usize = 1024;

/// Counts gathered on the hot path and published once a second.
#[derive(Default)]
struct LocalCounts {
    data_records: u64,
    proc_records: u64,
    data_bytes: u64,
    proc_bytes: u64,
    decode_errors: u64,
    spans: u64,
    dropped_queue_full: u64,
    evicted: u64,
    flows_dropped: u64,
    /// (parser, error kind) -> count.
    parse_errors: HashMap<(&'static str, &'static str), u64>,
}

impl LocalCounts {
    /// A record of the data ring, and its size.
    fn data_record(&mut self, len: usize) {
        self.data_records += 1;
        self.data_bytes += len as u64;
    }

    /// A record of the process ring, and its size.
    fn proc_record(&mut self, len: usize) {
        self.proc_records += 1;
        self.proc_bytes += len as u64;
    }
}

pub struct Pipeline {
    /// FxHash: keys are kernel ids, not attacker-chosen strings.
    /// Boxed: taken out and put back per event, so only a pointer moves.
    conns: FxHashMap<ConnKey, Box<Conn>>,
    clock: Clock,
    resources: Resources,
    host: String,
    spans: Sender<SpanBatch>,
    /// Spans of this drain, sent as one batch: one channel operation (and
    /// one cache-line handoff to the exporter) per drain, not per span.
    batch: SpanBatch,
    /// Spans in the channel may not exceed this (OTEL_BSP_MAX_QUEUE_SIZE).
    queue_limit: usize,
    /// The export thread, and the queue length at which to wake it.
    exporter: Option<(std::thread::Thread, usize)>,
    /// Root server spans of same-host connections, waiting LATE_PARENT_HOLD
    /// for a client event that may come after them (see ContextTracker).
    held: VecDeque<(std::time::Instant, Span)>,
    proc_events: Sender<ProcEvent>,
    metrics: Arc<SelfMetrics>,
    red: SharedStore,
    router: Router,
    contexts: ContextTracker,
    /// Set when selection is decided at exec (executable name).
    exec_selector: Option<Discovery>,
    /// Processes selected provisionally at exec and then rejected, with
    /// the selection tag of that exec (`SEL_INHERITED` for a child such an
    /// exec forked before its rejection): their data is dropped until the
    /// kernel map catches up.
    rejected: HashMap<u32, u32>,
    /// The kernel's selection map: tells whether a process exec'ed again
    /// since an exec event (None in tests without BPF).
    kernel_selection: Option<SelectedPids>,
    /// The kernel's map of HTTP/2 connections joined midway (`h2_joined`).
    h2_joined: Option<libbpf_rs::MapHandle>,
    /// Exec'ed path per pid, for resources of processes gone from /proc.
    exec_paths: HashMap<u32, String>,
    /// Selection tag (shifted down) of the last exec selected per pid.
    decided_execs: HashMap<u32, u32>,
    /// Rejected execs whose provisional selection the kernel had dropped at
    /// the last tick. No exit event comes for them (the kernel reports the
    /// exits of selected processes only): they are forgotten at the next.
    rejections_done: Vec<u32>,
    /// Parent of each process the kernel selected at fork: its spans carry
    /// the parent's configured naming until discovery adopts it.
    fork_parents: HashMap<u32, u32>,
    /// The first record of a connection left in the data ring until the
    /// process ring was read once more (see `process_event_pending`).
    left_for_process_event: Option<ConnKey>,
    /// Processes that exited (pid, exit time), to forget once the data
    /// ring is drained.
    pending_exits: Vec<(u32, u64)>,
    /// TCP lifecycle events, handled once the data ring is drained.
    pending_flows: Vec<abi::FlowEvent>,
    /// Resources of processes that exited lately: their sockets still close
    /// (FIN_WAIT, TIME_WAIT) after the process is gone, and the close
    /// belongs to them, not to an "unknown" process.
    exited: FxHashMap<u32, (Arc<Resource>, std::time::Instant)>,
    exited_ttl: std::time::Duration,
    /// TCP-option ids that came before their connection's first data.
    wire_early: FxHashMap<ConnKey, (u8, WireIds)>,
    /// Server contexts of connections closed in this drain pass.
    recently_closed: FxHashMap<ConnKey, SpanCtx>,
    peers: network::PeerGrouping,
    /// Whole-host mode: flows of unselected processes go to this resource.
    host_flows: Option<Arc<Resource>>,
    drop_warning: RateLimitedCount,
    counts: LocalCounts,
    scratch: Vec<Http1Event>,
    db_scratch: Vec<DbEvent>,
    query_text: QueryTextMode,
}

/// What the pipeline needs besides its channels.
pub struct PipelineConfig {
    pub router: Router,
    pub sampler: sampler::Sampler,
    pub same_host_linking: bool,
    pub red: SharedStore,
    pub discovery: Discovery,
    pub query_text: QueryTextMode,
    pub peers: network::PeerGrouping,
    pub network_whole_host: bool,
    /// How long an exited process's resource and metric series are kept.
    pub exited_ttl: std::time::Duration,
}

impl Pipeline {
    pub fn new(
        cfg: PipelineConfig,
        resources: Resources,
        spans: Sender<SpanBatch>,
        queue_limit: usize,
        proc_events: Sender<ProcEvent>,
        metrics: Arc<SelfMetrics>,
    ) -> Self {
        Self {
            red: cfg.red,
            router: cfg.router,
            contexts: ContextTracker::new(cfg.sampler, cfg.same_host_linking),
            exec_selector: cfg.discovery.selects_on_exec().then_some(cfg.discovery),
            rejected: HashMap::new(),
            kernel_selection: None,
            h2_joined: None,
            exec_paths: HashMap::new(),
            decided_execs: HashMap::new(),
            rejections_done: Vec::new(),
            fork_parents: HashMap::new(),
            left_for_process_event: None,
            pending_exits: Vec::new(),
            pending_flows: Vec::new(),
            recently_closed: FxHashMap::default(),
            wire_early: FxHashMap::default(),
            exited: FxHashMap::default(),
            peers: cfg.peers,
            exited_ttl: cfg.exited_ttl,
            host_flows: cfg
                .network_whole_host
                .then(|| Arc::new(resource::host(&resource::host_name()))),
            drop_warning: RateLimitedCount::new(std::time::Duration::from_secs(10)),
            conns: FxHashMap::default(),
            clock: Clock::new(),
            resources,
            host: resource::host_name(),
            spans,
            batch: Vec::new(),
            held: VecDeque::new(),
            exporter: None,
            queue_limit,
            proc_events,
            metrics,
            counts: LocalCounts::default(),
            scratch: Vec::new(),
            db_scratch: Vec::new(),
            query_text: cfg.query_text,
        }
    }

    /// A data ring record counted and dropped unread (capture-only mode).
    pub fn skip_record(&mut self, bytes: &[u8]) {
        self.counts.data_record(bytes.len());
    }

    /// A data record a few records before its turn: start loading its
    /// connection's state into the cache. With a thousand keep-alive
    /// connections that state is cold at nearly every request, and these
    /// loads overlap the work on the records before instead of stalling it.
    pub fn prefetch_record(&self, bytes: &[u8]) {
        let Some((pid, fd, start_ns)) = abi::data_conn(bytes) else {
            return;
        };
        // The record itself: the kernel wrote it from another CPU. Its
        // header line is loaded by now; the captured bytes follow.
        crate::prefetch::lines(bytes.as_ptr(), bytes.len().min(MAX_PREFETCH_RECORD_BYTES));
        let key = ConnKey { pid, fd, start_ns };
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let at: *const Conn = &**conn;
        crate::prefetch::lines(at.cast(), std::mem::size_of::<Conn>());
        crate::prefetch::line(conn.ctxs.as_slices().0.as_ptr().cast());
        if let Some(Proto::Http1(h)) = &conn.proto {
            crate::prefetch::line(h.hot_memory());
        }
    }

    /// One ring-buffer record. False: the record must wait for the events
    /// still in the process ring (left in its ring, it comes again after).
    pub fn on_record(&mut self, bytes: &[u8]) -> bool {
        match abi::decode(bytes) {
            Ok(Event::Data(d)) => {
                if !self.on_data(&d) {
                    return false;
                }
                self.counts.data_record(bytes.len());
            }
            Ok(Event::Close(c)) => {
                self.counts.data_record(bytes.len());
                let key = ConnKey {
                    pid: c.pid,
                    fd: c.fd,
                    start_ns: c.conn_start_ns,
                };
                self.close(key, c.ts_ns);
            }
            Ok(Event::WireCtx(w)) => {
                if !self.on_wire(&w) {
                    return false;
                }
                self.counts.data_record(bytes.len());
            }
            Ok(Event::Flow(f)) => {
                self.counts.proc_record(bytes.len());
                // After the drain: the request whose handler connected may
                // still be in the data ring.
                if self.pending_flows.len() < MAX_PENDING_FLOWS {
                    self.pending_flows.push(f);
                } else {
                    self.counts.flows_dropped += 1;
                }
            }
            Ok(Event::Proc(p)) => {
                self.counts.proc_record(bytes.len());
                let ev = match p.proc_kind {
                    abi::PROC_EXEC => {
                        // The fork no longer describes it (and no exit
                        // event comes if this exec is not selected).
                        self.fork_parents.remove(&p.pid);
                        self.exec_decision(&p)
                    }
                    abi::PROC_FORK => {
                        // A new process: nothing known of an earlier one
                        // with this pid holds for it.
                        self.rejected.remove(&p.pid);
                        self.exec_paths.remove(&p.pid);
                        self.decided_execs.remove(&p.pid);
                        if self.fork_parents.len() < MAX_CONNS {
                            self.fork_parents.insert(p.pid, p.ppid);
                        }
                        if self.is_rejected(p.ppid) {
                            // Forked by an exec we rejected, before the
                            // rejection reached the kernel map: it inherited
                            // a selection no rule made, and goes with it.
                            self.rejected.insert(p.pid, abi::SEL_INHERITED);
                            ProcEvent::ForkOfRejected {
                                pid: p.pid,
                                comm: p.comm(),
                            }
                        } else {
                            ProcEvent::Fork(p.pid)
                        }
                    }
                    abi::PROC_LISTEN => ProcEvent::Listen(p.pid),
                    abi::PROC_EXIT => {
                        // The process ring is read before the data ring: its
                        // last data is still queued. Finish it after the drain.
                        self.pending_exits.push((p.pid, p.ts_ns));
                        return true;
                    }
                    _ => return true,
                };
                let _ = self.proc_events.try_send(ev);
            }
            Err(e) => {
                self.counts.decode_errors += 1;
                tracing::debug!(error = %e, "undecodable ring-buffer record");
            }
        }
        true
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
                exec_sel: p.exec_sel,
                comm: p.comm(),
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
        if !selected {
            // argv[0] may name the program differently (symlinks, exec -a):
            // the rescan matches on it, so the exec decision must too. Once
            // the process exec'ed again, /proc shows the next program's argv,
            // which says nothing about this exec: the name read after it and
            // the kernel's selection tag (checked after the read) tell.
            let argv = crate::discovery::procfs::cmdline_of_exec(p.pid, &comm);
            let argv = if self.exec_superseded(p.pid, p.exec_sel) {
                Vec::new()
            } else {
                argv
            };
            if let Some(arg0) = argv.first() {
                let name = arg0.rsplit('/').next().unwrap_or(arg0).to_owned();
                let by_argv = crate::discovery::Candidate {
                    pid: p.pid,
                    exe_name: &name,
                    cmd: &argv,
                    ports: &[],
                };
                selected = crate::discovery::matches(sel, &by_argv);
            }
        }
        if selected && sel.skip_sdk_instrumented && resource::detect_sdk(p.pid).is_some() {
            tracing::info!(pid = p.pid, "process is instrumented by an OpenTelemetry SDK: skipping it (discovery.skip_sdk_instrumented)");
            selected = false;
        }
        if selected {
            self.decided_execs
                .insert(p.pid, p.exec_sel >> abi::SEL_TAG_SHIFT);
            self.rejected.remove(&p.pid);
            self.exec_paths.insert(p.pid, path.clone());
            // A resource made before this exec (discovery adopting the fork
            // of a selected shell) names the old program: the span of this
            // one rebuilds it until discovery's own arrives.
            self.resources
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.pid);
        } else {
            self.decided_execs.remove(&p.pid);
            self.rejected.insert(p.pid, p.exec_sel);
        }
        ProcEvent::Exec {
            pid: p.pid,
            selected: Some(selected),
            path,
            exec_sel: p.exec_sel,
            comm,
        }
    }

    /// False: `d` waits for its process's event (see `process_event_pending`).
    fn on_data(&mut self, d: &DataEvent<'_>) -> bool {
        let h = &d.header;
        let key = ConnKey {
            pid: h.pid,
            fd: h.fd,
            start_ns: h.conn_start_ns,
        };
        if self.is_rejected(h.pid) {
            return !self.rejection_unsure(key);
        }
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
                if self.process_event_pending(key) {
                    return false;
                }
                if self.conns.len() >= MAX_CONNS {
                    self.evict_oldest();
                }
                let mut conn = Box::new(Conn {
                    local_addr: AttrStr::from(h.tuple.local_addr().to_string()),
                    peer_addr: AttrStr::from(h.tuple.remote_addr().to_string()),
                    proto: None,
                    held: None,
                    tls: None,
                    role: match h.role {
                        abi::ROLE_SERVER => Role::Server,
                        abi::ROLE_CLIENT => Role::Client,
                        _ => Role::Unknown,
                    },
                    tuple: h.tuple,
                    last_ns: h.exit_ns,
                    ctxs: VecDeque::new(),
                    last_ctx: None,
                    client_parent: None,
                    wire_out: None,
                    wire_in: None,
                });
                if !self.wire_early.is_empty() {
                    if let Some((kind, ids)) = self.wire_early.remove(&key) {
                        Self::set_wire(&mut conn, kind, ids);
                    }
                }
                if conn.role == Role::Client && conn.tuple.is_same_host() {
                    self.contexts.note_client_flow(conn.flow(false));
                }
                conn
            }
        };
        conn.last_ns = h.exit_ns;
        if !self.tls_gate(&mut conn, d) {
            self.conns.insert(key, conn);
            return true;
        }
        if matches!(h.syscall, abi::SYS_SSL_READ | abi::SYS_SSL_WRITE) {
            if let Some(Proto::Db { parser, .. }) = conn.proto.as_mut() {
                parser.tls_plaintext();
            }
        }
        if !conn.is_opaque() {
            // A write without a context keeps the connection's last parent
            // (the rest of a request written in several calls), unless the
            // kernel knows it serves no request: a Go goroutine whose
            // inherited request is over, on a pooled connection.
            if parent.is_some() || h.ctx_fd == abi::CTX_OVER {
                conn.client_parent = parent;
            }
            let seg = Segment {
                data: d.data,
                total_len: h.total_len as usize,
                tail: d.tail(),
                frames: d.frames,
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
            let dns_udp = conn.tuple.proto == abi::PROTO_UDP;
            if conn.proto.is_none()
                && (dns_udp || (conn.tuple.dport == 53 && conn.role != Role::Server))
            {
                conn.proto = Some(Proto::Dns(Box::new(DnsState {
                    tracker: LookupTracker::new(dns_span::TIMEOUT_NS),
                    framers: (!dns_udp).then(|| (DnsTcpFramer::new(), DnsTcpFramer::new())),
                })));
            }
            if conn.proto.is_none() && !d.data.is_empty() {
                match self.decide(key, &mut conn, dir, &seg) {
                    Decision::Wait => {
                        self.conns.insert(key, conn);
                        return true;
                    }
                    Decision::Decided(Some(held)) => {
                        // The bytes held back go first, as the segment they were.
                        let held_seg = Segment {
                            data: &held.bytes,
                            total_len: held.bytes.len(),
                            tail: &[],
                            frames: &[],
                            timing: held.timing,
                        };
                        self.feed(key.pid, &mut conn, held.dir, &held_seg);
                    }
                    Decision::Decided(None) => {}
                }
            }
            self.feed(key.pid, &mut conn, dir, &seg);
        }
        self.conns.insert(key, conn);
        true
    }

    /// Trace-context ids from a TCP option: kept on the connection for the
    /// request that follows them in the ring.
    /// False: the record waits for the process ring (`rejection_unsure`).
    fn on_wire(&mut self, w: &abi::WireCtxEvent) -> bool {
        let key = ConnKey {
            pid: w.pid,
            fd: w.fd,
            start_ns: w.conn_start_ns,
        };
        if self.is_rejected(w.pid) {
            return !self.rejection_unsure(key);
        }
        let ids = WireIds {
            trace_id: w.trace_id,
            span_id: w.span_id,
        };
        if w.kind == abi::WIRE_OUT && w.ctx_fd >= 0 {
            let server = ConnKey {
                pid: w.pid,
                fd: w.ctx_fd,
                start_ns: w.ctx_conn_start_ns,
            };
            if let Some(conn) = self.conns.get_mut(&server) {
                Self::adopt_wire_trace(&self.contexts, conn, ids.trace_id);
            }
        }
        match self.conns.get_mut(&key) {
            Some(conn) => Self::set_wire(conn, w.kind, ids),
            None if self.wire_early.len() < MAX_CONNS => {
                self.wire_early.insert(key, (w.kind, ids));
            }
            None => {}
        }
        true
    }

    /// A root server request whose calls went out under `trace_id`: every
    /// copy of its context (pending, latest, per HTTP/2 stream) joins it.
    fn adopt_wire_trace(contexts: &ContextTracker, conn: &mut Conn, trace_id: TraceId) {
        let Some(last) = conn.last_ctx.as_mut() else {
            return;
        };
        let span_id = last.span_id;
        contexts.adopt_wire_trace(last, trace_id);
        let h2_ctxs = match conn.proto.as_mut() {
            Some(Proto::Http2(h2)) => Some(h2.ctxs.values_mut()),
            _ => None,
        };
        for ctx in conn.ctxs.iter_mut().chain(h2_ctxs.into_iter().flatten()) {
            if ctx.span_id == span_id {
                contexts.adopt_wire_trace(ctx, trace_id);
            }
        }
    }

    fn set_wire(conn: &mut Conn, kind: u8, ids: WireIds) {
        match kind {
            abi::WIRE_OUT => conn.wire_out = Some(ids),
            abi::WIRE_IN => conn.wire_in = Some(ids),
            _ => {}
        }
    }

    /// Sorts TLS out of the data path: returns false when these bytes must
    /// not reach a parser (ciphertext, handshake records).
    fn tls_gate(&mut self, conn: &mut Conn, d: &DataEvent<'_>) -> bool {
        let h = &d.header;
        match h.syscall {
            abi::SYS_SSL_READ | abi::SYS_SSL_WRITE => {
                let state = conn.tls.get_or_insert_with(Default::default);
                if state.handshake_ns.is_none() {
                    if let Some(hello) = state.hello_ns {
                        // The first plaintext call starts when the handshake is over.
                        let ns = h.enter_ns.saturating_sub(hello);
                        state.handshake_ns = Some(ns);
                        let mut attrs = vec![(
                            "autotel.tcp.role",
                            if conn.role == Role::Server {
                                "server"
                            } else {
                                "client"
                            }
                            .into(),
                        )];
                        if let Some(v) = &state.version {
                            attrs.push(("tls.protocol.version", v.clone().into()));
                        }
                        let resource = self.resource(h.pid);
                        let now = self.clock.to_unix_ns(h.exit_ns);
                        self.red.lock().unwrap_or_else(|e| e.into_inner()).record(
                            crate::metrics::Metric::TlsHandshakeDuration,
                            &resource,
                            attrs,
                            ns as f64 / 1e9,
                            now,
                        );
                    }
                }
                true
            }
            _ => {
                // Server-sent bytes: what the server writes, or the client reads.
                let from_server = (h.direction == abi::DIR_INGRESS) == (conn.role != Role::Server);
                if let Some(state) = conn.tls.as_mut() {
                    state.observe_record(d.data, from_server);
                    return false;
                }
                // Before any protocol, or after one agreed to TLS (PostgreSQL, MySQL).
                let tls_next = match &conn.proto {
                    None => true,
                    Some(Proto::Db { parser, .. }) => parser.awaits_tls(),
                    Some(_) => false,
                };
                if tls_next && autotel_protocols::tls::is_record_start(d.data) {
                    let mut state = Box::<tls::TlsState>::default();
                    // A handshake record first (OpenSSL may read its 5-byte
                    // header alone, so the hello type byte is not required).
                    if d.data.first() == Some(&22) {
                        state.hello_ns = Some(h.enter_ns);
                    }
                    state.observe_record(d.data, from_server);
                    conn.tls = Some(state);
                    return false;
                }
                true
            }
        }
    }

    /// Picks the connection's parser from its first bytes. A first read of
    /// a few bytes (a client reading a 4-byte MySQL packet header alone)
    /// says too little: such bytes are held until more arrive.
    fn decide(&mut self, key: ConnKey, conn: &mut Conn, dir: Dir, seg: &Segment<'_>) -> Decision {
        let held = conn.held.take();
        let joined;
        let bytes: &[u8] = match &held {
            Some(h) if h.dir == dir => {
                joined = [h.bytes.as_slice(), seg.data].concat();
                &joined
            }
            _ => seg.data,
        };
        let cut = seg.total_len > seg.data.len();
        let decided = detect::detect(conn.role, dir, bytes, cut);
        if decided.is_none() && bytes.len() < MIN_DECIDE_BYTES && seg.total_len == seg.data.len() {
            let mut h = held.unwrap_or(Held {
                dir,
                bytes: Vec::new(),
                timing: seg.timing,
            });
            if h.dir != dir {
                h = Held {
                    dir,
                    bytes: Vec::new(),
                    timing: seg.timing,
                };
            }
            h.bytes.extend_from_slice(seg.data);
            conn.held = Some(h);
            return Decision::Wait;
        }
        conn.proto = Some(match decided.unwrap_or(Protocol::Http1) {
            Protocol::NotYet => return Decision::Wait,
            Protocol::Http2 {
                server_side,
                midway,
            } => {
                // HTTP/2 over TLS is negotiated by ALPN "h2" (RFC 9113 3.2);
                // TLS 1.3 encrypts the server's choice, so it is known only now.
                if let Some(t) = conn.tls.as_mut() {
                    t.alpn.get_or_insert_with(|| "h2".into());
                }
                if midway {
                    self.widen_in_kernel(key);
                }
                Proto::Http2(Box::new(H2State {
                    parser: if midway {
                        Http2Connection::mid_connection()
                    } else {
                        Http2Connection::new()
                    },
                    server_side,
                    ctxs: FxHashMap::default(),
                }))
            }
            Protocol::Http1 => Proto::Http1(Http1Connection::new(match conn.role {
                Role::Server => Some(Dir::Ingress),
                Role::Client => Some(Dir::Egress),
                Role::Unknown => None,
            })),
            Protocol::Db {
                parser,
                server_side,
                name,
            } => Proto::Db {
                parser,
                server_side,
                name,
            },
        });
        Decision::Decided(held)
    }

    /// One segment to the connection's parser, its results to spans.
    fn feed(&mut self, pid: u32, conn: &mut Conn, dir: Dir, seg: &Segment<'_>) {
        let mut events = std::mem::take(&mut self.scratch);
        let mut db_events = std::mem::take(&mut self.db_scratch);
        match conn.proto.as_mut() {
            None => {}
            Some(Proto::Http1(http)) => http.feed(dir, seg, &mut events),
            Some(Proto::Db {
                parser,
                server_side,
                ..
            }) => parser.feed((dir == Dir::Ingress) == *server_side, seg, &mut db_events),
            Some(Proto::Dns(state)) => {
                let mut lookups = Vec::new();
                Self::feed_dns(state, dir, seg, &mut lookups, &mut self.counts);
                self.emit_dns(pid, conn, lookups, None);
            }
            Some(Proto::Http2(h2)) => {
                let mut events = Vec::new();
                h2.parser
                    .feed((dir == Dir::Ingress) == h2.server_side, seg, &mut events);
                self.emit_h2(pid, conn, events);
            }
        }
        let upgraded = self.emit(pid, conn, &mut events);
        self.emit_db(pid, conn, &mut db_events);
        self.scratch = events;
        self.db_scratch = db_events;
        if let Some(rest) = upgraded {
            // The 101 and the first HTTP/2 frames often share one read.
            let seg = Segment {
                data: seg.data.get(rest..).unwrap_or_default(),
                total_len: seg.total_len.saturating_sub(rest),
                tail: seg.tail,
                // Never followed: the call did not start at a frame.
                frames: &[],
                timing: seg.timing,
            };
            self.feed(pid, conn, dir, &seg);
        }
    }

    /// `Upgrade: h2c` accepted: the connection is HTTP/2 from now on, and
    /// the request that asked is its stream 1, with the context it got.
    fn switch_to_h2c(
        &mut self,
        conn: &mut Conn,
        request: &autotel_protocols::http1::RequestHead,
        start: Timing,
        body_bytes: u64,
    ) {
        let server_side = conn.server_side();
        let mut ctxs = FxHashMap::default();
        if let Some(ctx) = conn.ctxs.pop_front() {
            ctxs.insert(1, ctx);
        }
        conn.proto = Some(Proto::Http2(Box::new(H2State {
            parser: Http2Connection::after_upgrade(
                Http2Request::upgraded(request),
                start,
                body_bytes,
            ),
            server_side,
            ctxs,
        })));
    }

    fn emit_h2(&mut self, pid: u32, conn: &mut Conn, events: Vec<Http2Event>) {
        for ev in events {
            let Some(Proto::Http2(h2)) = conn.proto.as_mut() else {
                return;
            };
            let server_side = h2.server_side;
            match ev {
                Http2Event::RequestStart {
                    stream_id,
                    traceparent,
                    tracestate,
                } => {
                    if h2.ctxs.len() >= MAX_H2_CTXS {
                        continue;
                    }
                    let flow = conn.flow(server_side);
                    let ctx = if server_side {
                        let ctx = self.contexts.server_request(
                            traceparent.as_deref(),
                            tracestate.as_deref(),
                            flow,
                            conn.wire_in.take(),
                        );
                        conn.last_ctx = Some(ctx.clone());
                        ctx
                    } else {
                        self.contexts.client_request(
                            conn.client_parent.as_ref(),
                            flow,
                            conn.wire_out.take(),
                        )
                    };
                    if let Some(Proto::Http2(h2)) = conn.proto.as_mut() {
                        h2.ctxs.insert(stream_id, ctx);
                    }
                }
                Http2Event::Stream(s) => {
                    let ctx = h2.ctxs.remove(&s.stream_id).unwrap_or_else(|| {
                        // Opened before we joined: its request start was not seen.
                        self.contexts.child_request(None, None)
                    });
                    self.finish_h2(pid, conn, server_side, &s, ctx);
                }
                Http2Event::Error(kind) => {
                    *self.counts.parse_errors.entry(("http2", kind)).or_default() += 1
                }
            }
        }
    }

    fn finish_h2(
        &mut self,
        pid: u32,
        conn: &Conn,
        server_side: bool,
        s: &Http2Stream,
        ctx: SpanCtx,
    ) {
        // The response head fell in bytes the capture did not keep: a span
        // would report a status we never saw. Counted, not guessed.
        if s.status.is_none() && s.grpc_status.is_none() && s.reset.is_none() {
            *self
                .counts
                .parse_errors
                .entry(("http2", "stream_unfinished"))
                .or_default() += 1;
            return;
        }
        if !s.grpc {
            return self.finish(pid, conn, &h2_span::to_exchange(s, server_side), ctx);
        }
        let sampled = ctx.sampled;
        let span = h2_span::grpc_span(
            h2_span::GrpcInput {
                stream: s,
                server_side,
                tuple: &conn.tuple,
                local_addr: &conn.local_addr,
                peer_addr: &conn.peer_addr,
                resource: self.resource(pid),
                ctx,
            },
            &self.clock,
        );
        self.deliver(conn, span, sampled, Store::record_rpc_span);
    }

    /// One segment of a DNS client socket into its lookup tracker.
    fn feed_dns(
        state: &mut DnsState,
        dir: Dir,
        seg: &Segment<'_>,
        out: &mut Vec<DnsLookup>,
        counts: &mut LocalCounts,
    ) {
        let from_client = dir == Dir::Egress;
        let mut parse_one =
            |bytes: &[u8], timing: Timing, out: &mut Vec<DnsLookup>| match dns::parse(bytes) {
                Ok(msg) => state.tracker.on_message(from_client, msg, timing, out),
                Err(e) => *counts.parse_errors.entry(("dns", e.kind())).or_default() += 1,
            };
        match &mut state.framers {
            // A datagram is a whole message (the capture holds its prefix).
            None => parse_one(seg.data, seg.timing, out),
            Some((to_server, to_client)) => {
                let framer = if from_client { to_server } else { to_client };
                let mut msgs = Vec::new();
                framer.push(seg, &mut msgs);
                for (bytes, timing) in msgs {
                    parse_one(&bytes, timing, out);
                }
            }
        }
    }

    fn emit_dns(&mut self, pid: u32, conn: &Conn, lookups: Vec<DnsLookup>, end_cap: Option<u64>) {
        let tcp = matches!(&conn.proto, Some(Proto::Dns(s)) if s.framers.is_some());
        for lookup in lookups {
            let ctx = self
                .contexts
                .child_request(conn.client_parent.as_ref(), None);
            let sampled = ctx.sampled;
            let span = dns_span::build(
                dns_span::SpanInput {
                    lookup: &lookup,
                    tcp,
                    tuple: &conn.tuple,
                    peer_addr: &conn.peer_addr,
                    resource: self.resource(pid),
                    ctx,
                    end_cap,
                },
                &self.clock,
            );
            self.deliver(conn, span, sampled, Store::record_dns_span);
        }
    }

    fn emit_db(&mut self, pid: u32, conn: &mut Conn, events: &mut Vec<DbEvent>) {
        let Some(Proto::Db {
            server_side, name, ..
        }) = &conn.proto
        else {
            return;
        };
        let (server_side, name) = (*server_side, *name);
        for ev in events.drain(..) {
            match ev {
                DbEvent::Operation(op) => {
                    let ctx = if server_side {
                        let wire = conn.wire_in.take();
                        self.contexts
                            .server_request(None, None, conn.flow(true), wire)
                    } else {
                        let wire = conn.wire_out.take();
                        self.contexts
                            .child_request(conn.client_parent.as_ref(), wire)
                    };
                    self.finish_db(pid, conn, server_side, &op, ctx);
                }
                DbEvent::Error(kind) => {
                    *self.counts.parse_errors.entry((name, kind)).or_default() += 1
                }
            }
        }
    }

    fn finish_db(
        &mut self,
        pid: u32,
        conn: &Conn,
        server_side: bool,
        op: &DbOperation,
        ctx: SpanCtx,
    ) {
        let sampled = ctx.sampled;
        let span = db_span::build(
            db_span::SpanInput {
                op,
                server_side,
                tuple: &conn.tuple,
                peer_addr: &conn.peer_addr,
                local_addr: &conn.local_addr,
                resource: self.resource(pid),
                ctx,
                query_text: self.query_text,
            },
            &self.clock,
        );
        self.deliver(conn, span, sampled, Store::record_db_span);
    }

    /// The common end of every span: TLS facts of its connection, the
    /// parent a late client event gave it, metrics (before sampling: they
    /// see every span), then export if `export` (sampled, not ignored).
    fn deliver(
        &mut self,
        conn: &Conn,
        mut span: Span,
        export: bool,
        record: impl FnOnce(&mut Store, &Span),
    ) {
        if let Some(t) = &conn.tls {
            t.decorate(&mut span);
        }
        self.contexts.adopt_late_parent(&mut span);
        record(
            &mut self.red.lock().unwrap_or_else(|e| e.into_inner()),
            &span,
        );
        if !export {
            return;
        }
        if span.kind == SpanKind::Server
            && span.parent_span_id.is_none()
            && self.contexts.same_host_linking
            && conn.tuple.is_same_host()
            && self.contexts.may_link_late(&conn.flow(true))
        {
            if self.held.len() >= self.queue_limit {
                self.release_held(true);
            }
            self.held.push_back((std::time::Instant::now(), span));
            return;
        }
        self.send(span);
    }

    /// Sends the held spans older than LATE_PARENT_HOLD (all of them when
    /// `all`), with the parent a late client event gave them.
    fn release_held(&mut self, all: bool) {
        let now = std::time::Instant::now();
        while let Some((at, _)) = self.held.front() {
            if !all && now.duration_since(*at) < LATE_PARENT_HOLD {
                break;
            }
            let Some((_, mut span)) = self.held.pop_front() else {
                break;
            };
            self.contexts.adopt_late_parent(&mut span);
            self.send(span);
        }
    }

    /// At shutdown: nothing waits any more.
    pub fn release_all(&mut self) {
        self.release_held(true);
        self.flush_spans();
    }

    fn send(&mut self, span: Span) {
        self.counts.spans += 1;
        self.batch.push(span);
        if self.batch.len() >= MAX_SPAN_BATCH {
            self.flush_spans();
        }
    }

    /// The kernel's selection map, to tell a rejected exec from a newer one.
    pub fn with_kernel_selection(&mut self, kernel: SelectedPids) {
        self.kernel_selection = Some(kernel);
    }

    /// The kernel's map where HTTP/2 connections joined midway are named.
    pub fn with_h2_joined(&mut self, map: libbpf_rs::MapHandle) {
        self.h2_joined = Some(map);
    }

    /// Tells the kernel that connection `key`, joined midway, is HTTP/2: it
    /// captures it as it does one whose preface it saw (the wide prefix,
    /// and frames followed past it). Lost hints (a full map) only keep the
    /// narrow prefix.
    fn widen_in_kernel(&self, key: ConnKey) {
        use libbpf_rs::MapCore;
        if let Some(map) = &self.h2_joined {
            let kernel_key = (u64::from(key.pid) << 32) | u64::from(key.fd as u32);
            let _ = map.update(
                &kernel_key.to_ne_bytes(),
                &key.start_ns.to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            );
        }
    }

    /// Whether `pid` exec'ed again after the exec that set selection tag
    /// `exec_sel`: the kernel then holds a newer exec's provisional tag,
    /// whose event is still in the process ring (`ip netns exec`, `sh -c`
    /// and `env` exec their argument a millisecond after their own exec).
    fn exec_superseded(&self, pid: u32, exec_sel: u32) -> bool {
        let Some(kernel) = &self.kernel_selection else {
            return false;
        };
        exec_sel != 0
            && kernel
                .flags(pid)
                .and_then(provisional_tag)
                .is_some_and(|tag| tag != exec_sel >> abi::SEL_TAG_SHIFT)
    }

    /// Whether the first record of connection `key` may have overtaken the
    /// process event that decides what its process is: the process ring was
    /// drained just before an exec or fork, the data ring just after. Spans
    /// built then would be named after the program, not its `services` rule
    /// (exec, or a parent's rule at fork), or be kept for a program an exec
    /// did not select. Such a record waits for one more pass over the
    /// process ring, once: the kernel wrote the event before the process ran
    /// any code, so it is there by then, and the record comes again.
    fn process_event_pending(&mut self, key: ConnKey) -> bool {
        if self.was_left(key) {
            return false;
        }
        let pid = key.pid;
        let described = || {
            self.decided_execs.contains_key(&pid)
                || self.fork_parents.contains_key(&pid)
                || self.known_resource(pid).is_some()
        };
        let pending = match &self.kernel_selection {
            None => !described(), // tests: no kernel map
            // Gone from the kernel map: the process exited already, and its
            // exit, with any exec before it, is still to be read (a child
            // forked by a shell selected provisionally, for one, is
            // described by its fork until its own exec is read).
            Some(k) if !k.marked(pid) => true,
            // Only executable-name selection selects an exec provisionally
            // (a map lookup: paid once per connection, in that mode only).
            Some(k) if self.exec_selector.is_some() => match k.flags(pid) {
                None => true,
                Some(f) => match provisional_tag(f) {
                    Some(tag) if tag != 0 => self.decided_execs.get(&pid) != Some(&tag),
                    _ => !described(),
                },
            },
            Some(_) => !described(),
        };
        if pending {
            self.left_for_process_event = Some(key);
        }
        pending
    }

    /// Whether `key`'s record was left in the ring once already (it goes on
    /// now): the one slot `process_event_pending` and `rejection_unsure`
    /// share, since a left record comes again before any other.
    fn was_left(&mut self, key: ConnKey) -> bool {
        let left = self.left_for_process_event == Some(key);
        if left {
            self.left_for_process_event = None;
        }
        left
    }

    /// Whether a record of a rejected pid the kernel no longer traces must
    /// wait for one more pass over the process ring, as in
    /// `process_event_pending`. The pid may have exec'ed a selected program
    /// since, talked and exited before the data ring was read (the process
    /// ring was drained between its fork and its exec): with its entry gone
    /// from the map, `exec_superseded` cannot tell, and only that exec's
    /// event, still unread, can. Once read, the record comes again.
    fn rejection_unsure(&mut self, key: ConnKey) -> bool {
        let Some(kernel) = &self.kernel_selection else {
            return false;
        };
        if kernel.marked(key.pid) || self.was_left(key) {
            return false;
        }
        self.left_for_process_event = Some(key);
        true
    }

    /// Forgets rejected execs the kernel no longer traces (their last data
    /// was read by the tick after), so that the map does not grow with
    /// every program the host ever ran.
    fn forget_done_rejections(&mut self) {
        let Some(kernel) = &self.kernel_selection else {
            return;
        };
        // A rejected exec is traced while its own tag is in the map; the
        // rejected fork of one while its inherited selection is.
        let traced = |pid: u32, exec_sel: u32| match kernel.flags(pid) {
            Some(f) if exec_sel == abi::SEL_INHERITED => f == exec_sel,
            f => f.and_then(provisional_tag) == Some(exec_sel >> abi::SEL_TAG_SHIFT),
        };
        for pid in std::mem::take(&mut self.rejections_done) {
            if let Some(&exec_sel) = self.rejected.get(&pid) {
                if !traced(pid, exec_sel) {
                    self.rejected.remove(&pid);
                }
            }
        }
        self.rejections_done = self
            .rejected
            .iter()
            .filter(|(&pid, &exec_sel)| !traced(pid, exec_sel))
            .map(|(&pid, _)| pid)
            .collect();
    }

    /// Whether data of `pid` belongs to a rejected exec. Data of a newer
    /// exec can reach the data ring before that exec's event is read (the
    /// process ring was drained just before it): it is not dropped, and
    /// waits for the newer event to decide (`process_event_pending`).
    fn is_rejected(&mut self, pid: u32) -> bool {
        let Some(&exec_sel) = self.rejected.get(&pid) else {
            return false;
        };
        if self.exec_superseded(pid, exec_sel) {
            self.rejected.remove(&pid);
            return false;
        }
        true
    }

    /// The exporter sleeps until its batch deadline unless a whole batch
    /// waits: a trickle of spans must not wake it (a wakeup costs ~0.1 ms of
    /// CPU on a VM, so polling every few ms cost more than the spans).
    pub fn wake_exporter_at(&mut self, exporter: std::thread::Thread, batch: usize) {
        self.exporter = Some((exporter, batch.max(1)));
    }

    fn wake_exporter(&self, queued: usize) {
        if let Some((t, batch)) = &self.exporter {
            if queued >= *batch {
                t.unpark();
            }
        }
    }

    /// Hands the spans built so far to the exporter; what would overflow
    /// its queue is dropped and counted.
    fn flush_spans(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let queued = self.metrics.export_queue_length.get().max(0) as usize;
        let room = self.queue_limit.saturating_sub(queued);
        if self.batch.len() > room {
            self.counts.dropped_queue_full += (self.batch.len() - room) as u64;
            self.batch.truncate(room);
            if room == 0 {
                self.wake_exporter(queued);
                return;
            }
        }
        let n = self.batch.len();
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(n));
        match self.spans.try_send(batch) {
            Ok(()) => {
                let queued = self.metrics.export_queue_length.inc_by(n as i64) + n as i64;
                self.wake_exporter(queued as usize);
            }
            Err(TrySendError::Full(_)) => self.counts.dropped_queue_full += n as u64,
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Returns where HTTP/2 starts in the segment just fed, when the
    /// connection was upgraded to h2c.
    fn emit(&mut self, pid: u32, conn: &mut Conn, events: &mut Vec<Http1Event>) -> Option<usize> {
        let mut upgraded = None;
        for ev in events.drain(..) {
            match ev {
                Http1Event::RequestStart {
                    traceparent,
                    tracestate,
                } => {
                    let server_side = conn.server_side();
                    let flow = conn.flow(server_side);
                    let ctx = if server_side {
                        let ctx = self.contexts.server_request(
                            traceparent.as_deref(),
                            tracestate.as_deref(),
                            flow,
                            conn.wire_in.take(),
                        );
                        conn.last_ctx = Some(ctx.clone());
                        ctx
                    } else {
                        self.contexts.client_request(
                            conn.client_parent.as_ref(),
                            flow,
                            conn.wire_out.take(),
                        )
                    };
                    conn.ctxs.push_back(ctx);
                }
                Http1Event::Exchange(x) => {
                    let ctx = conn.ctxs.pop_front().unwrap_or_else(|| {
                        // Defensive: a request whose start we did not see.
                        self.contexts
                            .server_request(None, None, conn.flow(x.server_side), None)
                    });
                    self.finish(pid, conn, &x, ctx);
                }
                Http1Event::H2cUpgrade {
                    request,
                    request_start,
                    request_body_bytes,
                    rest,
                } => {
                    self.switch_to_h2c(conn, &request, request_start, request_body_bytes);
                    upgraded = Some(rest);
                }
                Http1Event::Error(e) => {
                    if e == ParseError::TooManyPending {
                        conn.ctxs.pop_front();
                    }
                    *self
                        .counts
                        .parse_errors
                        .entry(("http1", e.kind()))
                        .or_default() += 1
                }
            }
        }
        upgraded
    }

    /// Builds the span of a finished exchange, records its metrics, and
    /// sends it on when it is sampled and not ignored.
    fn finish(&mut self, pid: u32, conn: &Conn, x: &Exchange, ctx: SpanCtx) {
        let path = http_span::path_of(&x.request.target);
        let ignored = x.server_side && self.router.is_ignored(path);
        let mode = self.router.ignore_mode;
        let route = x.server_side.then(|| self.router.route(path));
        let resource = self.resource(pid);
        let export = ctx.sampled && !(ignored && mode.skips_traces());
        let span = http_span::build(
            http_span::SpanInput {
                exchange: x,
                path,
                tuple: &conn.tuple,
                local_addr: &conn.local_addr,
                peer_addr: &conn.peer_addr,
                resource,
                route,
                ctx,
                metrics_only: !export,
            },
            &self.clock,
        );
        let skip_metrics = ignored && mode.skips_metrics();
        self.deliver(conn, span, export, |store, span| {
            store.record_http_span(span, skip_metrics)
        });
    }

    /// What describes `pid` already: discovery's resource, or the one kept
    /// after it exited.
    fn known_resource(&self, pid: u32) -> Option<Arc<Resource>> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned()
            .or_else(|| self.exited.get(&pid).map(|(r, _)| r.clone()))
    }

    fn resource(&self, pid: u32) -> Arc<Resource> {
        if let Some(r) = self.known_resource(pid) {
            return r;
        }
        // Selected in the kernel (fork, exec) before discovery caught up.
        // Named as discovery will: by the `services` rule of the exec, or
        // after the parent at fork.
        let r = self.exec_resource(pid).unwrap_or_else(|| {
            let parent = self.fork_ancestor(pid);
            let ppid = self.fork_parents.get(&pid).copied().unwrap_or(0);
            resource::of_fork(pid, ppid, parent.as_deref(), &self.host)
        });
        self.keep_resource(pid, r)
    }

    /// Shares a resource built here for `pid` until discovery's own comes
    /// (it replaces it); if discovery put its own in meanwhile, that one stays.
    fn keep_resource(&self, pid: u32, r: Resource) -> Arc<Resource> {
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pid)
            .or_insert_with(|| Arc::new(r))
            .clone()
    }

    /// The resource of `pid` named by the `services` rule that selected its
    /// exec, when that exec was decided here.
    fn exec_resource(&self, pid: u32) -> Option<Resource> {
        let sel = self.exec_selector.as_ref()?;
        let path = self.exec_paths.get(&pid)?;
        let naming = crate::discovery::naming_for_exec(sel, pid, path);
        Some(resource::build(pid, &self.host, Some(path), &naming))
    }

    /// The resource of the nearest ancestor of a child forked by a selected
    /// process (the parent may be a fork discovery has not seen either, or
    /// an exec it has not described yet: a shell that forks at once).
    fn fork_ancestor(&self, pid: u32) -> Option<Arc<Resource>> {
        let mut child = pid;
        for _ in 0..MAX_FORK_GENERATIONS {
            let parent = *self.fork_parents.get(&child)?;
            // A parent's exec resource is kept: its next child (a pre-fork
            // server's) reads no /proc for it again.
            let known = self.known_resource(parent).or_else(|| {
                self.exec_resource(parent)
                    .map(|r| self.keep_resource(parent, r))
            });
            if known.is_some() {
                return known;
            }
            child = parent;
        }
        None
    }

    /// `closed_ns`: when the socket closed, or its process exited.
    fn close(&mut self, key: ConnKey, closed_ns: u64) {
        if !self.wire_early.is_empty() {
            self.wire_early.remove(&key);
        }
        if let Some(mut conn) = self.conns.remove(&key) {
            // A failed connect of this request's handler may be read after
            // the close in this drain pass: keep its context until then.
            if let Some(ctx) = &conn.last_ctx {
                if self.recently_closed.len() < MAX_PENDING_FLOWS {
                    self.recently_closed.insert(key, ctx.clone());
                }
            }
            let mut events = std::mem::take(&mut self.scratch);
            let mut db_events = std::mem::take(&mut self.db_scratch);
            match conn.proto.as_mut() {
                Some(Proto::Http1(http)) => http.close(closed_ns, &mut events),
                Some(Proto::Db { parser, .. }) => parser.close(closed_ns, &mut db_events),
                Some(Proto::Dns(state)) => {
                    let mut lookups = Vec::new();
                    state.tracker.close(&mut lookups);
                    // Unanswered queries ended when the socket closed, not later.
                    self.emit_dns(key.pid, &conn, lookups, Some(closed_ns));
                }
                Some(Proto::Http2(h2)) => {
                    let mut h2_events = Vec::new();
                    h2.parser.close(&mut h2_events);
                    self.emit_h2(key.pid, &mut conn, h2_events);
                }
                None => {}
            }
            self.emit(key.pid, &mut conn, &mut events);
            self.emit_db(key.pid, &mut conn, &mut db_events);
            self.scratch = events;
            self.db_scratch = db_events;
            self.contexts.forget_flow(&conn.flow(conn.server_side()));
        }
    }

    /// Called after each full drain of the rings: exits seen in this pass
    /// now have all their data processed.
    pub fn after_drain(&mut self) {
        self.release_held(false);
        self.flush_spans();
        for f in std::mem::take(&mut self.pending_flows) {
            self.on_flow(&f);
        }
        self.recently_closed.clear();
        for (pid, exit_ns) in std::mem::take(&mut self.pending_exits) {
            self.process_exited(pid, exit_ns);
            let gone = self
                .resources
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&pid)
                .cloned();
            if let Some(r) = gone {
                if self.exited.len() < MAX_CONNS {
                    self.exited.insert(pid, (r, std::time::Instant::now()));
                }
            }
            self.rejected.remove(&pid);
            self.exec_paths.remove(&pid);
            self.decided_execs.remove(&pid);
            self.fork_parents.remove(&pid);
            let _ = self.proc_events.try_send(ProcEvent::Exit(pid));
        }
    }

    fn on_flow(&mut self, f: &abi::FlowEvent) {
        let now = self.clock.to_unix_ns(f.ts_ns);
        let selected = f.owner == abi::FLOW_OWNER_SELECTED && !self.is_rejected(f.pid);
        if !selected {
            // Whole-host mode: metrics only, under the host resource.
            if let Some(host) = &self.host_flows {
                network::record(
                    &mut self.red.lock().unwrap_or_else(|e| e.into_inner()),
                    host,
                    f,
                    &self.peers,
                    Some(network::host_owner(f)),
                    now,
                );
            }
            return;
        }
        let resource = self.resource(f.pid);
        network::record(
            &mut self.red.lock().unwrap_or_else(|e| e.into_inner()),
            &resource,
            f,
            &self.peers,
            None,
            now,
        );
        if network::is_failed_connect(f) {
            let server = ConnKey {
                pid: f.pid,
                fd: f.ctx_fd,
                start_ns: f.ctx_conn_start_ns,
            };
            let parent = if f.ctx_fd >= 0 {
                self.conns
                    .get(&server)
                    .and_then(|c| c.last_ctx.clone())
                    .or_else(|| self.recently_closed.get(&server).cloned())
            } else {
                None
            };
            let ctx = self.contexts.child_request(parent.as_ref(), None);
            if ctx.sampled {
                let span = network::failed_connect_span(f, ctx, resource, &self.clock);
                self.send(span);
            }
        }
    }

    /// The process's connections close with it (its sockets are closed in
    /// its exit, after this event): what they left unanswered ends here.
    fn process_exited(&mut self, pid: u32, exit_ns: u64) {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.pid == pid)
            .copied()
            .collect();
        for k in keys {
            self.close(k, exit_ns);
        }
        if !self.wire_early.is_empty() {
            self.wire_early.retain(|k, _| k.pid != pid);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ns)
            .map(|(k, _)| *k)
        {
            if let Some(conn) = self.conns.remove(&key) {
                self.contexts.forget_flow(&conn.flow(conn.server_side()));
            }
            self.counts.evicted += 1;
        }
    }

    /// Housekeeping, once a second: forget idle connections, publish counts.
    pub fn tick(&mut self, now_mono_ns: u64) {
        self.expire_dns(now_mono_ns);
        self.forget_done_rejections();
        self.flush_spans();
        let before = self.conns.len();
        // A forgotten connection's flow goes from the context tracker too,
        // as at its close: nothing of it would ever be removed otherwise.
        let contexts = &mut self.contexts;
        self.conns.retain(|_, c| {
            let keep = now_mono_ns.saturating_sub(c.last_ns) < IDLE_NS;
            if !keep {
                contexts.forget_flow(&c.flow(c.server_side()));
            }
            keep
        });
        self.counts.evicted += (before - self.conns.len()) as u64;
        // TIME_WAIT is 60 s: sockets of an exited process are closed by
        // then (at the default). After the TTL its metric series go too.
        let ttl = self.exited_ttl;
        let mut gone = Vec::new();
        self.exited.retain(|pid, (_, at)| {
            let keep = at.elapsed() < ttl;
            if !keep {
                gone.push(*pid);
            }
            keep
        });
        if !gone.is_empty() {
            let live = self.resources.read().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<_> = gone
                .into_iter()
                .map(|pid| (pid, live.get(&pid).cloned()))
                .collect();
            drop(live);
            self.red
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget_exited(&gone);
        }
        self.clock = Clock::new();
        self.contexts.tick();
        self.publish();
    }

    /// Queries still unanswered after the timeout become `timeout` spans.
    fn expire_dns(&mut self, now_mono_ns: u64) {
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.proto, Some(Proto::Dns(s)) if s.tracker.pending() > 0))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(mut conn) = self.conns.remove(&key) else {
                continue;
            };
            let mut lookups = Vec::new();
            if let Some(Proto::Dns(state)) = conn.proto.as_mut() {
                state.tracker.expire(now_mono_ns, &mut lookups);
            }
            self.emit_dns(key.pid, &conn, lookups, None);
            self.conns.insert(key, conn);
        }
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
        for (ring, records, bytes) in [
            ("data", c.data_records, c.data_bytes),
            ("proc", c.proc_records, c.proc_bytes),
        ] {
            let label = crate::selfmetrics::RingbufLabel {
                ringbuf: ring.into(),
            };
            m.events_received.get_or_create(&label).inc_by(records);
            m.event_bytes.get_or_create(&label).inc_by(bytes);
        }
        m.decode_errors.inc_by(c.decode_errors);
        if c.flows_dropped > 0 {
            m.dropped("flow_backlog", c.flows_dropped);
        }
        m.spans_created.inc_by(c.spans);
        if c.dropped_queue_full > 0 {
            m.dropped("queue_full", c.dropped_queue_full);
        }
        m.connections_evicted.inc_by(c.evicted);
        for ((parser, kind), n) in c.parse_errors {
            m.parse_error(parser, kind, n);
        }
        m.tracked_connections.set(self.conns.len() as i64);
    }
}
