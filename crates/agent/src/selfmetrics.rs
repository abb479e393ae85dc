//! The agent's own health, `autotel_` prefix, served on the Prometheus
//! endpoint. Hot-path counts are kept locally by their owners and published
//! here in batches, so the reader thread does no locking per event.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RingbufLabel {
    pub ringbuf: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseErrorLabels {
    pub protocol: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct SelfMetrics {
    pub events_received: Family<RingbufLabel, Counter>,
    /// Bytes of those records: what capture sizes cost in ring traffic.
    pub event_bytes: Family<RingbufLabel, Counter>,
    pub events_lost: Family<RingbufLabel, Counter>,
    pub kernel_counters: Family<KindLabel, Counter>,
    pub parse_errors: Family<ParseErrorLabels, Counter>,
    pub decode_errors: Counter,
    pub spans_created: Counter,
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabel, Counter>,
    pub spans_failed: Counter,
    pub export_duration: Histogram,
    pub export_queue_length: Gauge,
    pub tracked_connections: Gauge,
    pub connections_evicted: Counter,
    pub instrumented_processes: Gauge,
    pub cpu_seconds: Counter<f64, AtomicU64>,
    pub resident_memory: Gauge,
    /// Files offered for TLS probes, by result (attached, no_symbols, ...).
    pub tls_files: Family<ReasonLabel, Counter>,
}

impl SelfMetrics {
    pub fn new() -> Self {
        Self {
            tls_files: Family::default(),
            events_received: Family::default(),
            event_bytes: Family::default(),
            events_lost: Family::default(),
            kernel_counters: Family::default(),
            parse_errors: Family::default(),
            decode_errors: Counter::default(),
            spans_created: Counter::default(),
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            spans_failed: Counter::default(),
            export_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            export_queue_length: Gauge::default(),
            tracked_connections: Gauge::default(),
            connections_evicted: Counter::default(),
            instrumented_processes: Gauge::default(),
            cpu_seconds: Counter::default(),
            resident_memory: Gauge::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("autotel");
        r.register(
            "events_received",
            "Ring-buffer records read, per ring buffer",
            self.events_received.clone(),
        );
        r.register(
            "event_bytes",
            "Bytes of the ring-buffer records read, per ring buffer",
            self.event_bytes.clone(),
        );
        r.register(
            "events_lost",
            "Records the kernel could not queue (ring buffer full), per ring buffer",
            self.events_lost.clone(),
        );
        r.register(
            "kernel",
            "Kernel-side capture counters (truncated payloads, cut iovecs, ...)",
            self.kernel_counters.clone(),
        );
        r.register(
            "parse_errors",
            "Traffic a protocol parser could not follow, per protocol and kind",
            self.parse_errors.clone(),
        );
        r.register(
            "tls_files",
            "Files offered for TLS uprobes, by result (attached, no_symbols, already_done)",
            self.tls_files.clone(),
        );
        r.register(
            "decode_errors",
            "Ring-buffer records with an invalid layout",
            self.decode_errors.clone(),
        );
        r.register(
            "spans_created",
            "Spans built from captured traffic",
            self.spans_created.clone(),
        );
        r.register(
            "spans_exported",
            "Spans accepted by the exporter's destination",
            self.spans_exported.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans dropped before export, per reason",
            self.spans_dropped.clone(),
        );
        r.register(
            "spans_failed",
            "Spans whose export failed after all retries",
            self.spans_failed.clone(),
        );
        r.register_with_unit(
            "export_duration",
            "Time of one export call",
            Unit::Seconds,
            self.export_duration.clone(),
        );
        r.register(
            "export_queue_length",
            "Spans waiting for export",
            self.export_queue_length.clone(),
        );
        r.register(
            "tracked_connections",
            "Connections with parser state",
            self.tracked_connections.clone(),
        );
        r.register(
            "connections_evicted",
            "Connection states dropped to stay within bounds",
            self.connections_evicted.clone(),
        );
        r.register(
            "instrumented_processes",
            "Processes currently selected",
            self.instrumented_processes.clone(),
        );
        r.register_with_unit(
            "process_cpu",
            "CPU time of the agent (user+system)",
            Unit::Seconds,
            self.cpu_seconds.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent",
            Unit::Bytes,
            self.resident_memory.clone(),
        );
    }

    /// Creates the series whose labels are known in advance, so dashboards
    /// and rate() see 0 from the first scrape instead of no series.
    pub fn init_known_series(&self, parse_error_kinds: &[&str]) {
        for ring in ["data", "proc"] {
            let _ = self.events_received.get_or_create(&RingbufLabel {
                ringbuf: ring.into(),
            });
            let _ = self.events_lost.get_or_create(&RingbufLabel {
                ringbuf: ring.into(),
            });
        }
        for kind in parse_error_kinds {
            self.parse_error("http1", kind, 0);
        }
        self.dropped("queue_full", 0);
    }

    pub fn set_instrumented(&self, n: usize) {
        self.instrumented_processes.set(n as i64);
    }

    pub fn parse_error(&self, protocol: &str, kind: &str, n: u64) {
        self.parse_errors
            .get_or_create(&ParseErrorLabels {
                protocol: protocol.to_owned(),
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    pub fn tls_attach(&self, result: &str) {
        self.tls_files
            .get_or_create(&ReasonLabel {
                reason: result.to_owned(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: &str, n: u64) {
        self.spans_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Brings a monotonically growing total (e.g. a kernel counter) into a Counter.
    pub fn sync_total(counter: &Counter, total: u64) {
        let have = counter.get();
        if total > have {
            counter.inc_by(total - have);
        }
    }

    /// Refreshes CPU and RSS of the agent from /proc/self.
    pub fn refresh_process(&self) {
        let ticks = clock_ticks();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let total = (utime + stime) / ticks;
                let have = self.cpu_seconds.get();
                if total > have {
                    self.cpu_seconds.inc_by(total - have);
                }
            }
        }
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let pages: i64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
            self.resident_memory.set(pages * page);
        }
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
