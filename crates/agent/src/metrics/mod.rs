//! RED metrics derived from every span before sampling: one cumulative store
//! (histograms per process and attribute set) read by both the Prometheus
//! endpoint and the OTLP metrics exporter (which derives deltas from it).

pub mod otlp;
pub mod prom;

use autotel_model::{AttrValue, Resource, Span, SpanKind};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Semantic-convention advisory buckets for HTTP/RPC/DB durations (seconds).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Database semconv advisory buckets: most queries finish well under 5 ms.
pub const DB_DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// The OTel SDK's default explicit buckets, used for sizes (no advisory buckets exist).
pub const SIZE_BUCKETS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// A new variant goes into `Metric::ALL` as well: the store has one slot per
/// entry there, indexed by the variant's number.
// RPC, DB and DNS metrics join these; the shared prefix is temporary.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    HttpServerDuration,
    HttpClientDuration,
    HttpServerRequestBodySize,
    HttpServerResponseBodySize,
    DbClientDuration,
    NetFlowBytes,
    TcpConnections,
    TcpRetransmits,
    TcpConnectDuration,
    DnsLookupDuration,
    RpcServerDuration,
    RpcClientDuration,
    TlsHandshakeDuration,
}

pub struct MetricDef {
    /// OTel name.
    pub name: &'static str,
    /// UCUM unit: "s" or "By".
    pub unit: &'static str,
    pub description: &'static str,
    pub buckets: &'static [f64],
    /// A monotonic sum (the series' `sum`), not a histogram.
    pub counter: bool,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::TlsHandshakeDuration,
        Metric::RpcServerDuration,
        Metric::RpcClientDuration,
        Metric::HttpServerDuration,
        Metric::HttpClientDuration,
        Metric::HttpServerRequestBodySize,
        Metric::HttpServerResponseBodySize,
        Metric::DbClientDuration,
        Metric::NetFlowBytes,
        Metric::TcpConnections,
        Metric::TcpRetransmits,
        Metric::TcpConnectDuration,
        Metric::DnsLookupDuration,
    ];

    pub fn def(self) -> MetricDef {
        match self {
            Metric::HttpServerDuration => MetricDef {
                name: "http.server.request.duration",
                unit: "s",
                description: "Duration of HTTP server requests.",
                buckets: DURATION_BUCKETS,
                counter: false,
            },
            Metric::HttpClientDuration => MetricDef {
                name: "http.client.request.duration",
                unit: "s",
                description: "Duration of HTTP client requests.",
                buckets: DURATION_BUCKETS,
                counter: false,
            },
            Metric::HttpServerRequestBodySize => MetricDef {
                name: "http.server.request.body.size",
                unit: "By",
                description: "Size of HTTP server request bodies.",
                buckets: SIZE_BUCKETS,
                counter: false,
            },
            Metric::HttpServerResponseBodySize => MetricDef {
                name: "http.server.response.body.size",
                unit: "By",
                description: "Size of HTTP server response bodies.",
                buckets: SIZE_BUCKETS,
                counter: false,
            },
            Metric::DbClientDuration => MetricDef {
                name: "db.client.operation.duration",
                unit: "s",
                description: "Duration of database client operations.",
                buckets: DB_DURATION_BUCKETS,
                counter: false,
            },
            Metric::NetFlowBytes => MetricDef {
                name: "autotel.network.flow.bytes",
                unit: "By",
                description: "TCP payload bytes per flow direction (kernel counters at close).",
                buckets: &[],
                counter: true,
            },
            Metric::TcpConnections => MetricDef {
                name: "autotel.tcp.connections",
                unit: "{connection}",
                description: "TCP connections opened and ended, by outcome.",
                buckets: &[],
                counter: true,
            },
            Metric::TcpRetransmits => MetricDef {
                name: "autotel.tcp.retransmits",
                unit: "{segment}",
                description: "TCP segments retransmitted.",
                buckets: &[],
                counter: true,
            },
            Metric::TcpConnectDuration => MetricDef {
                name: "autotel.tcp.connect.duration",
                unit: "s",
                description:
                    "Time from SYN to established (or to failure) of outgoing TCP connections.",
                buckets: DB_DURATION_BUCKETS,
                counter: false,
            },
            Metric::TlsHandshakeDuration => MetricDef {
                name: "autotel.tls.handshake.duration",
                unit: "s",
                description: "TLS handshakes: first SSL_do_handshake call to success.",
                buckets: DB_DURATION_BUCKETS,
                counter: false,
            },
            Metric::RpcServerDuration => MetricDef {
                name: "rpc.server.call.duration",
                unit: "s",
                description: "Duration of RPCs served.",
                buckets: DURATION_BUCKETS,
                counter: false,
            },
            Metric::RpcClientDuration => MetricDef {
                name: "rpc.client.call.duration",
                unit: "s",
                description: "Duration of outgoing RPCs.",
                buckets: DURATION_BUCKETS,
                counter: false,
            },
            Metric::DnsLookupDuration => MetricDef {
                name: "dns.lookup.duration",
                unit: "s",
                description: "Duration of DNS lookups.",
                buckets: DB_DURATION_BUCKETS,
                counter: false,
            },
        }
    }
}

/// One histogram time series.
#[derive(Debug, Clone)]
pub struct Series {
    pub resource: Arc<Resource>,
    pub attrs: Vec<(&'static str, AttrValue)>,
    /// Per bucket (not cumulative), the last one is +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub start_unix_ns: u64,
}

impl Series {
    fn new(
        resource: Arc<Resource>,
        attrs: Vec<(&'static str, AttrValue)>,
        buckets: usize,
        now: u64,
    ) -> Self {
        Series {
            resource,
            attrs,
            counts: vec![0; buckets + 1],
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            start_unix_ns: now,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        if bounds.is_empty() {
            // A counter: only the sum matters.
            self.sum += v;
            self.count += 1;
            return;
        }
        // Explicit-bucket semantics: bucket i holds (bounds[i-1], bounds[i]].
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Series per metric, keyed by process and attribute values.
#[derive(Debug)]
pub struct Store {
    /// Per metric (indexed by `Metric as usize`: no hashing to find it):
    /// (pid, hash of the attribute set) -> series. Hashing the attributes
    /// in place keeps the per-span path free of allocations.
    series: [FxHashMap<(u32, u64), Series>; Metric::ALL.len()],
    cardinality_limit: usize,
    pub overflowed: u64,
}

pub type SharedStore = Arc<Mutex<Store>>;

fn hash_value(v: &AttrValue, h: &mut impl Hasher) {
    match v {
        AttrValue::Str(s) => {
            0u8.hash(h);
            s.hash(h)
        }
        AttrValue::Int(i) => {
            1u8.hash(h);
            i.hash(h)
        }
        AttrValue::Bool(b) => {
            2u8.hash(h);
            b.hash(h)
        }
        AttrValue::Double(d) => {
            3u8.hash(h);
            d.to_bits().hash(h)
        }
    }
}

/// Hash of an attribute set, in order (the same set always comes in the same order).
fn hash_attrs(attrs: &[(&'static str, AttrValue)]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    for (k, v) in attrs {
        k.hash(&mut h);
        hash_value(v, &mut h);
    }
    h.finish()
}

/// Hash of the attributes of `span` named in `keys`: equal to `hash_attrs`
/// of the same set, without building it.
fn hash_span_attrs(span: &Span, keys: &[&'static str]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    for k in keys {
        if let Some(v) = span.attr(k) {
            k.hash(&mut h);
            hash_value(v, &mut h);
        }
    }
    h.finish()
}

pub fn key_of(attrs: &[(&'static str, AttrValue)]) -> String {
    let mut k = String::with_capacity(64);
    for (name, v) in attrs {
        k.push_str(name);
        k.push('=');
        k.push_str(&v.to_string());
        k.push('\u{1f}');
    }
    k
}

impl Store {
    pub fn new(cardinality_limit: usize) -> Self {
        Store {
            series: std::array::from_fn(|_| FxHashMap::default()),
            cardinality_limit: cardinality_limit.max(2),
            overflowed: 0,
        }
    }

    pub fn record(
        &mut self,
        metric: Metric,
        resource: &Arc<Resource>,
        attrs: Vec<(&'static str, AttrValue)>,
        v: f64,
        now: u64,
    ) {
        self.record_all(&[(metric, v)], resource, attrs, now);
    }

    /// Records several metrics that share one attribute set (the key is
    /// built once).
    pub fn record_all(
        &mut self,
        values: &[(Metric, f64)],
        resource: &Arc<Resource>,
        attrs: Vec<(&'static str, AttrValue)>,
        now: u64,
    ) {
        let hash = hash_attrs(&attrs);
        self.record_hashed(values, resource, hash, || attrs, now);
    }

    /// Records the metrics of a span whose attribute set is `keys` of the
    /// span's own attributes: no allocation unless the series is new.
    pub fn record_span(
        &mut self,
        values: &[(Metric, f64)],
        span: &Span,
        keys: &'static [&'static str],
    ) {
        let hash = hash_span_attrs(span, keys);
        let make = || {
            keys.iter()
                .filter_map(|k| span.attr(k).map(|v| (*k, v.clone())))
                .collect()
        };
        self.record_hashed(values, &span.resource, hash, make, span.end_unix_ns);
    }

    fn record_hashed(
        &mut self,
        values: &[(Metric, f64)],
        resource: &Arc<Resource>,
        hash: u64,
        attrs: impl FnOnce() -> Vec<(&'static str, AttrValue)>,
        now: u64,
    ) {
        let key = (resource.pid, hash);
        let mut attrs = Some(attrs);
        let mut built: Option<Vec<(&'static str, AttrValue)>> = None;
        for (metric, v) in values {
            let def = metric.def();
            // A variant missing from Metric::ALL has no slot: its tests show
            // no series, and the agent does not stop over it.
            let Some(per_metric) = self.series.get_mut(*metric as usize) else {
                debug_assert!(false, "{metric:?} is missing from Metric::ALL");
                continue;
            };
            if let Some(series) = per_metric.get_mut(&key) {
                // The process's resource was rebuilt (pod metadata arrived).
                if !Arc::ptr_eq(&series.resource, resource) {
                    series.resource = resource.clone();
                }
                series.observe(def.buckets, *v);
                continue;
            }
            let (key, series_attrs) = if per_metric.len() + 1 >= self.cardinality_limit {
                // Semconv overflow series, counted within the limit as the
                // OTel SDK spec has it: attributes dropped, counts kept.
                self.overflowed += 1;
                let a = vec![("otel.metric.overflow", AttrValue::Bool(true))];
                ((resource.pid, hash_attrs(&a)), a)
            } else {
                let a = built.get_or_insert_with(|| (attrs.take().expect("built once"))());
                (key, a.clone())
            };
            per_metric
                .entry(key)
                .or_insert_with(|| {
                    Series::new(resource.clone(), series_attrs, def.buckets.len(), now)
                })
                .observe(def.buckets, *v);
        }
    }

    /// Drops the series of exited processes: every series of each pid
    /// except those of the pid's live resource (a new process that reused
    /// the pid keeps its own).
    pub fn forget_exited(&mut self, gone: &[(u32, Option<Arc<Resource>>)]) {
        if gone.is_empty() {
            return;
        }
        for per_metric in &mut self.series {
            per_metric.retain(|(pid, _), s| {
                !gone.iter().any(|(g, live)| {
                    g == pid && !live.as_ref().is_some_and(|l| Arc::ptr_eq(l, &s.resource))
                })
            });
        }
    }

    /// Visits every series of a metric.
    pub fn each(&self, metric: Metric) -> impl Iterator<Item = &Series> {
        self.series
            .get(metric as usize)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Distinct resources that have any series.
    pub fn resources(&self) -> Vec<Arc<Resource>> {
        let mut seen: HashMap<u32, Arc<Resource>> = HashMap::new();
        for m in &self.series {
            for s in m.values() {
                seen.entry(s.resource.pid)
                    .or_insert_with(|| s.resource.clone());
            }
        }
        let mut v: Vec<_> = seen.into_values().collect();
        v.sort_by_key(|r| r.pid);
        v
    }

    pub fn series_count(&self, metric: Metric) -> usize {
        self.series.get(metric as usize).map_or(0, FxHashMap::len)
    }

    /// Records `db.client.operation.duration` for one client database span
    /// (the semantic conventions define no server-side database metric).
    pub fn record_db_span(&mut self, span: &Span) {
        if span.kind != SpanKind::Client {
            return;
        }
        const KEYS: [&str; 8] = [
            "db.system.name",
            "db.operation.name",
            "db.collection.name",
            "db.namespace",
            "db.response.status_code",
            "server.address",
            "server.port",
            "error.type",
        ];
        let secs = span.duration_ns() as f64 / 1e9;
        self.record_span(&[(Metric::DbClientDuration, secs)], span, &KEYS);
    }

    /// Records `rpc.{server,client}.call.duration` for one gRPC span.
    pub fn record_rpc_span(&mut self, span: &Span) {
        const KEYS: [&str; 6] = [
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "rpc.grpc.status_code",
            "server.address",
            "server.port",
        ];
        let metric = if span.kind == SpanKind::Server {
            Metric::RpcServerDuration
        } else {
            Metric::RpcClientDuration
        };
        let secs = span.duration_ns() as f64 / 1e9;
        self.record_span(&[(metric, secs)], span, &KEYS);
    }

    /// Records `dns.lookup.duration` for one DNS span.
    pub fn record_dns_span(&mut self, span: &Span) {
        const KEYS: [&str; 4] = [
            "dns.question.name",
            "dns.question.type",
            "server.address",
            "error.type",
        ];
        let secs = span.duration_ns() as f64 / 1e9;
        self.record_span(&[(Metric::DnsLookupDuration, secs)], span, &KEYS);
    }

    /// Records the RED metrics of one finished HTTP span.
    pub fn record_http_span(&mut self, span: &Span, ignore_route_metrics: bool) {
        if ignore_route_metrics {
            return;
        }
        const SERVER_KEYS: [&str; 7] = [
            "http.request.method",
            "http.response.status_code",
            "http.route",
            "url.scheme",
            "server.port",
            "network.protocol.version",
            "error.type",
        ];
        const CLIENT_KEYS: [&str; 7] = [
            "http.request.method",
            "http.response.status_code",
            "server.address",
            "server.port",
            "url.scheme",
            "network.protocol.version",
            "error.type",
        ];
        let secs = span.duration_ns() as f64 / 1e9;
        if span.kind == SpanKind::Server {
            let size = |k| match span.attr(k) {
                Some(AttrValue::Int(n)) => *n as f64,
                _ => 0.0,
            };
            let values = [
                (Metric::HttpServerDuration, secs),
                (
                    Metric::HttpServerRequestBodySize,
                    size("http.request.body.size"),
                ),
                (
                    Metric::HttpServerResponseBodySize,
                    size("http.response.body.size"),
                ),
            ];
            self.record_span(&values, span, &SERVER_KEYS);
        } else {
            self.record_span(&[(Metric::HttpClientDuration, secs)], span, &CLIENT_KEYS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pid: u32) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: "s".into(),
            pid,
            attributes: vec![],
        })
    }

    #[test]
    fn span_hash_equals_set_hash() {
        let span = Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            trace_state: String::new(),
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_ns: 0,
            end_unix_ns: 1,
            attributes: vec![
                ("url.path", "/x".into()),
                ("http.request.method", "GET".into()),
                ("http.response.status_code", AttrValue::Int(200)),
            ],
            status: autotel_model::StatusCode::Unset,
            status_message: String::new(),
            resource: res(1),
        };
        const KEYS: [&str; 3] = [
            "http.request.method",
            "http.route",
            "http.response.status_code",
        ];
        let set = vec![
            ("http.request.method", AttrValue::from("GET")),
            ("http.response.status_code", AttrValue::Int(200)),
        ];
        assert_eq!(hash_span_attrs(&span, &KEYS), hash_attrs(&set));
        let mut store = Store::new(100);
        store.record_span(&[(Metric::HttpServerDuration, 0.1)], &span, &KEYS);
        store.record_all(&[(Metric::HttpServerDuration, 0.2)], &span.resource, set, 1);
        assert_eq!(store.series_count(Metric::HttpServerDuration), 1);
        assert_eq!(
            store.each(Metric::HttpServerDuration).next().unwrap().count,
            2
        );
    }

    #[test]
    fn buckets_are_upper_inclusive() {
        let mut s = Store::new(10);
        let r = res(1);
        for v in [0.005, 0.0051, 11.0] {
            s.record(Metric::HttpServerDuration, &r, vec![], v, 0);
        }
        let series: Vec<_> = s.each(Metric::HttpServerDuration).collect();
        assert_eq!(series[0].counts[0], 1);
        assert_eq!(series[0].counts[1], 1);
        assert_eq!(*series[0].counts.last().unwrap(), 1);
        assert_eq!(series[0].count, 3);
    }

    #[test]
    fn every_metric_has_its_own_slot_in_the_store() {
        // The store is an array indexed by `Metric as usize`, as long as ALL.
        let mut slots: Vec<usize> = Metric::ALL.iter().map(|m| *m as usize).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..Metric::ALL.len()).collect::<Vec<_>>());
    }

    #[test]
    fn cardinality_is_capped_with_overflow_series() {
        let mut s = Store::new(5);
        let r = res(1);
        for i in 0..100 {
            s.record(
                Metric::HttpServerDuration,
                &r,
                vec![("http.route", format!("/r{i}").into())],
                0.1,
                0,
            );
        }
        assert_eq!(s.series_count(Metric::HttpServerDuration), 5);
        let total: u64 = s.each(Metric::HttpServerDuration).map(|x| x.count).sum();
        assert_eq!(total, 100, "no count is lost to the cap");
        assert_eq!(s.overflowed, 96);
    }

    #[test]
    fn exited_series_go_but_a_reused_pid_keeps_its_own() {
        let mut s = Store::new(100);
        let (old, new, other) = (res(7), res(7), res(8));
        s.record(Metric::TcpConnections, &old, vec![], 1.0, 0);
        s.record(Metric::HttpServerDuration, &old, vec![], 0.1, 0);
        s.record(Metric::TcpConnections, &other, vec![], 1.0, 0);
        // pid 7 exited and was reused by `new`: the old process's series go.
        s.forget_exited(&[(7, Some(new.clone()))]);
        assert_eq!(s.series_count(Metric::HttpServerDuration), 0);
        assert_eq!(s.series_count(Metric::TcpConnections), 1);
        s.record(Metric::TcpConnections, &new, vec![], 1.0, 0);
        s.forget_exited(&[(7, Some(new.clone()))]);
        let left: Vec<_> = s
            .each(Metric::TcpConnections)
            .map(|x| Arc::as_ptr(&x.resource))
            .collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&Arc::as_ptr(&new)) && left.contains(&Arc::as_ptr(&other)));
        s.forget_exited(&[(8, None)]);
        assert_eq!(s.series_count(Metric::TcpConnections), 1);
    }
}
