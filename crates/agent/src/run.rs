//! `autotel run`: wires the stages together and owns shutdown.
//!
//! Threads: this one reads the ring buffers and runs the pipeline (it owns
//! the BPF object); `discovery` selects processes; `export` batches and sends
//! spans; `prometheus` serves /metrics. SIGINT/SIGTERM stop the reader, which
//! detaches every BPF program before anything else is torn down.

use crate::config::{Config, ConfigError};
use crate::discovery::{Discoverer, Resources};
use crate::export::metrics::MetricsExporter;
use crate::export::prometheus::PromServer;
use crate::export::SpanExporter;
use crate::metrics::prom::RedCollector;
use crate::metrics::{SharedStore, Store};
use crate::pipeline::{clock, Pipeline, PipelineConfig};
use crate::selfmetrics::SelfMetrics;
use crate::tracer::ring::Rings;
use crate::tracer::{Tracer, TracerOptions};
use anyhow::{Context, Result};
use libbpf_rs::MapCore;
use std::cell::{Cell, RefCell};
use std::os::fd::AsFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the reader drains the rings when nothing woke it (a backlog of
/// 1/16 of the ring wakes it sooner). Each drain starts with cold caches,
/// code and connection state pushed out by the traced programs since the last
/// one, so fewer, larger drains cost less per request: nginx over 1000
/// connections, agent 4.84 us per request at 50 ms against 5.50 at 20 ms
/// (5,000 req/s, 6 alternating rounds; p99 470 / 454 us, off 408, within
/// the rounds' spread) and 3.43 against 3.66 at 20,000 req/s. At 5,000
/// req/s a drain holds ~0.5 MiB of the 16 MiB ring.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// After a drain at light load (records read since the previous drain
/// below LIGHT_RECORDS_PER_SEC, ~25k HTTP requests/s), the next one yields
/// its CPU this often, until it has read LIGHT_DRAIN_RECORDS (a load that
/// jumped). A rate, not a drain's size: a drain woken by the backlog
/// threshold (1/16 of the ring, ~1,800 nginx records) is small however
/// high the load, and counting records made every drain of a saturated
/// reader that kept up a light one (it yielded every 16 records instead of
/// pausing). A drain at a modest rate is still ~0.6 ms of cold-cache work,
/// and a server thread woken on the reader's CPU waited behind it: nginx at
/// 5,000 req/s, p99 +131..+349 us with the agent yielding every 256
/// records, +86..+98 at 16.
const YIELD_EVERY_RECORDS_LIGHT: u32 = 16;
const LIGHT_RECORDS_PER_SEC: u64 = 51_200;
const LIGHT_DRAIN_RECORDS: u32 =
    (LIGHT_RECORDS_PER_SEC * DRAIN_INTERVAL.as_millis() as u64 / 1000) as u32;

/// Heavy drains step off the CPU for HEAVY_PAUSE after every HEAVY_STRETCH
/// of work. A saturated server never sleeps, so nothing wakes on its CPU to
/// preempt a reader that landed there: the reader kept the CPU until the
/// next tick (4 ms at HZ=250). nginx saturated by wrk waited up to 3.4 ms
/// for it (`perf sched`) and wrk's p99 went from 0.4 ms to 2.9-3.3 ms. With
/// these pauses and READER_SLICE (3 alternating rounds, 50 connections):
/// p99 0.89-1.43 ms, 126-140k req/s against 113-127k; over 1000
/// connections 133k / 142k against 121k / 127k; 0 lost in all.
///
/// A pause is a short sleep, not sched_yield: under EEVDF a yield pushes the
/// yielding thread's deadline a whole slice back, and a reader that yielded
/// every 256 records under saturation fell behind the rings for good (nginx
/// at ~140k req/s lost 0.55-1.62M of ~2.2M records per 8 s round). A sleep
/// can still come back late (the CPU's other task may run to its tick), so
/// there is no pause once 1/HEAVY_PAUSE_MAX_UNREAD_DIV of the ring waits: a
/// reader behind catches up at full speed, as before.
const HEAVY_STRETCH: Duration = Duration::from_micros(200);
const HEAVY_PAUSE: Duration = Duration::from_micros(30);
/// Records between two looks at the clock (~20 us of work).
const HEAVY_CHECK_EVERY: u32 = 16;
/// The ring's size over this: twice the backlog that wakes the reader.
const HEAVY_PAUSE_MAX_UNREAD_DIV: u64 = 8;
/// The reader's scheduler slice (Linux 6.12+): with the default one (~3 ms
/// here) a reader back from a pause often waited for the running thread's
/// whole turn, fell behind, and stopped pausing (p99 2.0-2.3 ms).
const READER_SLICE: Duration = Duration::from_micros(100);

/// What the reader does after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Go,
    Yield,
    Pause,
}

/// When the reader gives its CPU away while it drains (see the constants
/// above).
struct DrainPacing {
    in_drain: Cell<u32>,
    /// The last drain was light: this one yields, until it turns heavy.
    light: Cell<bool>,
    /// Heavy drains: when the current stretch of work began (None: at the
    /// next look at the clock).
    stretch_from: Cell<Option<Instant>>,
    /// This drain saw the backlog past `max_unread`: no more pauses in it.
    behind: Cell<bool>,
    max_unread: u64,
    /// When the previous drain ended: the load is the records read since.
    last_done: Cell<Instant>,
}

impl DrainPacing {
    /// The agent starts with nothing to drain: light load.
    fn new(ring_bytes: u64, now: Instant) -> Self {
        Self {
            last_done: Cell::new(now),
            in_drain: Cell::new(0),
            light: Cell::new(true),
            stretch_from: Cell::new(None),
            behind: Cell::new(false),
            max_unread: ring_bytes / HEAVY_PAUSE_MAX_UNREAD_DIV,
        }
    }

    /// What to do after a record with `unread` bytes behind it; `now` is
    /// called only when the clock matters.
    fn on_record(&self, unread: u64, now: impl FnOnce() -> Instant) -> Pace {
        let n = self.in_drain.get() + 1;
        self.in_drain.set(n);
        // A load that jumps mid-drain turns it heavy: no more yields.
        if self.light.get() && n < LIGHT_DRAIN_RECORDS {
            return if n.is_multiple_of(YIELD_EVERY_RECORDS_LIGHT) {
                Pace::Yield
            } else {
                Pace::Go
            };
        }
        if unread >= self.max_unread {
            self.behind.set(true);
        }
        if self.behind.get() || !n.is_multiple_of(HEAVY_CHECK_EVERY) {
            return Pace::Go;
        }
        let now = now();
        match self.stretch_from.get() {
            Some(from) if now.saturating_duration_since(from) >= HEAVY_STRETCH => {
                self.stretch_from.set(None);
                Pace::Pause
            }
            Some(_) => Pace::Go,
            None => {
                self.stretch_from.set(Some(now));
                Pace::Go
            }
        }
    }

    fn drain_done(&self, now: Instant) {
        let records = u128::from(self.in_drain.replace(0));
        let since = now.saturating_duration_since(self.last_done.replace(now));
        self.light
            .set(records * 1_000_000_000 < u128::from(LIGHT_RECORDS_PER_SEC) * since.as_nanos());
        self.stretch_from.set(None);
        self.behind.set(false);
    }
}

/// Where spans go: exporters (`autotel run`) or the live view (`autotel top`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Export,
    Top,
}

pub fn main(config_path: Option<&Path>, mode: Mode) -> i32 {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(ConfigError(msg)) => {
            eprintln!("autotel: configuration error: {msg}");
            return 2;
        }
    };
    // The live view owns the terminal: logs go to a file then.
    let log_file = (mode == Mode::Top).then(|| std::env::temp_dir().join("autotel-top.log"));
    init_logging(&cfg.log_level, log_file.as_deref());
    for note in &cfg.notes {
        tracing::info!("{note}");
    }
    let kube = match crate::discovery::kubernetes::client_config(cfg.kubernetes) {
        Ok(k) => k,
        Err(msg) => {
            eprintln!("autotel: configuration error: {msg}");
            return 2;
        }
    };
    match run(cfg, mode, kube) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("autotel: {e:#}");
            1
        }
    }
}

fn init_logging(level: &str, file: Option<&Path>) {
    // kube's client logs every failed request at ERROR: the kubernetes module
    // reports API server trouble itself, rate-limited (`kube_client=debug` in
    // the level brings them back).
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "kube_client=off,kube_runtime=off,{level},libbpf=warn"
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file.and_then(|f| std::fs::File::create(f).ok()) {
        Some(f) => {
            let _ = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}

/// Set in `top` mode: the terminal belongs to the live view.
static QUIET_TERMINAL: AtomicBool = AtomicBool::new(false);

fn run(cfg: Config, mode: Mode, kube: Option<kube::Config>) -> Result<()> {
    QUIET_TERMINAL.store(mode == Mode::Top, Ordering::Relaxed);
    let shutdown = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, shutdown.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, shutdown.clone())?;

    let metrics = Arc::new(SelfMetrics::new());
    metrics.init_known_series(autotel_protocols::http1::ParseError::KINDS);
    let red: SharedStore = Arc::new(Mutex::new(Store::new(cfg.metrics.cardinality_limit)));
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(RedCollector { store: red.clone() }));
    let registry = Arc::new(registry);
    let _prom = if cfg.prometheus_port != 0 {
        let m = metrics.clone();
        Some(PromServer::start(
            &cfg.prometheus_address,
            cfg.prometheus_port,
            &cfg.prometheus_path,
            registry.clone(),
            Box::new(move || m.refresh_process()),
        )?)
    } else {
        None
    };

    let tracer = Tracer::load(&TracerOptions {
        capture_max_bytes: cfg.capture_max_bytes,
        capture_http2_max_bytes: cfg.capture_http2_max_bytes,
        data_ringbuf_bytes: cfg.ringbuf_bytes,
        wakeup_bytes: (cfg.ringbuf_bytes / 16) as u64,
        select_on_exec: cfg.discovery.selects_on_exec(),
        tcp_option_cgroup: cfg.tcp_option_cgroup.clone(),
        network_whole_host: cfg.network_whole_host,
        capture_hooks: cfg.capture_hooks,
        go_tls_read_at_returns: cfg.go_tls_read_at_returns,
        openssl_at_exported: cfg.openssl_at_exported,
    })?;

    // Stages and the channels between them.
    // Batches of spans; the pipeline holds the span count to queue_size.
    let (span_tx, span_rx) = crossbeam_channel::bounded(cfg.traces.queue_size);
    let (proc_tx, proc_rx) = crossbeam_channel::bounded(65_536);
    let resources: Resources = Default::default();
    // Pod metadata: started before discovery's first scan so resources
    // consult its cache (filled in the background, never waited for).
    if let Some(kube) = kube {
        crate::discovery::kubernetes::start(kube, cfg.node_name.clone(), resources.clone())
            .context("starting the kubernetes metadata thread")?;
    }

    let export_thread = match mode {
        Mode::Export => {
            let exporter = SpanExporter::new(
                cfg.traces.clone(),
                cfg.print_traces,
                metrics.clone(),
                shutdown.clone(),
            );
            std::thread::Builder::new()
                .name("export".into())
                .spawn(move || exporter.run(span_rx))?
        }
        Mode::Top => {
            let stop = shutdown.clone();
            let queued = metrics.export_queue_length.clone();
            std::thread::Builder::new()
                .name("top".into())
                .spawn(move || {
                    if let Err(e) = crate::top::run(span_rx, queued, stop.clone()) {
                        tracing::error!("autotel top: {e:#}");
                    }
                    // Quitting the view stops the agent.
                    stop.store(true, Ordering::Relaxed);
                })?
        }
    };
    let (metrics_stop_tx, metrics_stop_rx) = crossbeam_channel::bounded::<()>(1);
    let metrics_exporter = MetricsExporter::new(cfg.metrics.clone(), red.clone(), shutdown.clone());
    let metrics_thread = std::thread::Builder::new()
        .name("export-metrics".into())
        .spawn(move || metrics_exporter.run(metrics_stop_rx))?;

    // TLS probes: the system's libssl and libgnutls now (processes started
    // later are covered from their first call), other files as discovery
    // finds them.
    let (tls_tx, tls_rx) = crossbeam_channel::bounded::<std::path::PathBuf>(4096);
    for lib in crate::tracer::tls::system_tls_libraries() {
        let r = tracer.attach_tls(&lib);
        metrics.tls_attach(r.label());
    }
    let mut discoverer = Discoverer::new(
        cfg.discovery.clone(),
        tracer.selected_pids_handle()?,
        resources.clone(),
        metrics.clone(),
    )
    .with_tls(tls_tx);
    // Select what already runs before saying we are ready.
    discoverer.full_scan();
    let discovery_thread = std::thread::Builder::new()
        .name("discovery".into())
        .spawn(move || discoverer.run(proc_rx))?;

    let pipeline = Rc::new(RefCell::new(Pipeline::new(
        PipelineConfig {
            router: cfg.router.clone(),
            sampler: cfg.sampler,
            same_host_linking: cfg.same_host_linking,
            red,
            discovery: cfg.discovery.clone(),
            query_text: cfg.db_query_text,
            peers: cfg.peers.clone(),
            network_whole_host: cfg.network_whole_host,
            exited_ttl: Duration::from_millis(cfg.metrics.exited_ttl_ms),
        },
        resources,
        span_tx,
        cfg.traces.queue_size,
        proc_tx,
        metrics.clone(),
    )));
    pipeline
        .borrow_mut()
        .with_kernel_selection(tracer.selected_pids_handle()?);
    pipeline
        .borrow_mut()
        .with_h2_joined(tracer.h2_joined_handle()?);
    if mode == Mode::Export {
        pipeline
            .borrow_mut()
            .wake_exporter_at(export_thread.thread().clone(), cfg.traces.max_batch);
    }
    if cfg.capture_only {
        tracing::warn!(
            "AUTOTEL_BENCH_CAPTURE_ONLY: records are read and dropped; no spans, no RED metrics"
        );
    }
    read_loop(
        &tracer,
        &pipeline,
        &metrics,
        &shutdown,
        &tls_rx,
        cfg.capture_only,
    )?;

    // Detach first: after this nothing of ours runs in the kernel.
    let attached = tracer.attached();
    let programs = tracer.program_ids();
    drop(tracer);
    crate::tracer::wait_programs_freed(&programs, Duration::from_millis(700));
    tracing::info!(programs = attached, "shutting down");
    // Closing the channels ends discovery and lets the exporter drain.
    drop(pipeline);
    export_thread.thread().unpark();
    drop(metrics_stop_tx);
    let _ = discovery_thread.join();
    let _ = export_thread.join();
    let _ = metrics_thread.join();
    Ok(())
}

fn read_loop(
    tracer: &Tracer,
    pipeline: &Rc<RefCell<Pipeline>>,
    metrics: &SelfMetrics,
    shutdown: &AtomicBool,
    tls_files: &crossbeam_channel::Receiver<std::path::PathBuf>,
    capture_only: bool,
) -> Result<()> {
    if let Err(e) = crate::slice::request(READER_SLICE) {
        tracing::debug!(error = %e, "could not shorten the reader's scheduler slice");
    }
    // The process ring goes first: a consume() pass then sees a process's
    // exec decision before any data that process produced after it.
    let mut rings = Rings::new()?;
    let p = pipeline.clone();
    let maps = &tracer.skel.maps;
    rings.add(
        maps.proc_events.as_fd(),
        maps.proc_events.max_entries() as usize,
        move |bytes, _| p.borrow_mut().on_record(bytes),
    )?;
    let p = pipeline.clone();
    let pacing = Rc::new(DrainPacing::new(
        maps.data_events.max_entries() as u64,
        Instant::now(),
    ));
    let pace = pacing.clone();
    rings.add(
        maps.data_events.as_fd(),
        maps.data_events.max_entries() as usize,
        move |bytes, unread| {
            if capture_only {
                p.borrow_mut().skip_record(bytes);
                return true;
            }
            if !p.borrow_mut().on_record(bytes) {
                return false; // the process ring first (see Rings::consume)
            }
            // The records before this one are released already, so the
            // kernel side keeps its room while we are off the CPU.
            match pace.on_record(unread, Instant::now) {
                Pace::Go => {}
                Pace::Yield => std::thread::yield_now(),
                Pace::Pause => std::thread::sleep(HEAVY_PAUSE),
            }
            true
        },
    )?;
    if !capture_only {
        let p = pipeline.clone();
        rings.set_peek(move |bytes| p.borrow().prefetch_record(bytes));
    }

    if !QUIET_TERMINAL.load(Ordering::Relaxed) {
        eprintln!("autotel ready: {} BPF programs attached", tracer.attached());
    }
    tracing::info!("autotel ready");
    let mut next_tick = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        // wait() returns on wakeups; consume() also drains records submitted
        // without a wakeup (see DESIGN, performance notes).
        if let Err(e) = rings.wait(DRAIN_INTERVAL) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "ring buffer wait failed");
            }
        }
        let _ = rings.consume();
        pipeline.borrow_mut().after_drain();
        pacing.drain_done(Instant::now());
        while let Ok(file) = tls_files.try_recv() {
            let r = tracer.attach_tls(&file);
            metrics.tls_attach(r.label());
        }
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            pipeline.borrow_mut().tick(clock::monotonic_ns());
            publish_kernel_counters(tracer, metrics);
        }
    }
    let _ = rings.consume();
    pipeline.borrow_mut().after_drain();
    pipeline.borrow_mut().tick(clock::monotonic_ns());
    pipeline.borrow_mut().release_all();
    publish_kernel_counters(tracer, metrics);
    Ok(())
}

fn publish_kernel_counters(tracer: &Tracer, metrics: &SelfMetrics) {
    use crate::selfmetrics::{KindLabel, RingbufLabel};
    let mut counters = tracer.kernel_counters();
    counters.push(("program_recursion_misses", tracer.recursion_misses()));
    let total = |names: &[&str]| -> u64 {
        counters
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(_, v)| v)
            .sum()
    };
    // Closes travel with the data, so their losses count against that ring.
    for (ring, names) in [
        ("data", &["data_lost", "close_lost"][..]),
        ("proc", &["proc_lost"][..]),
    ] {
        let c = metrics
            .events_lost
            .get_or_create(&RingbufLabel {
                ringbuf: ring.into(),
            })
            .clone();
        SelfMetrics::sync_total(&c, total(names));
    }
    for (name, value) in &counters {
        if !name.ends_with("_lost") {
            let c = metrics
                .kernel_counters
                .get_or_create(&KindLabel {
                    kind: (*name).into(),
                })
                .clone();
            SelfMetrics::sync_total(&c, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_yields_only_in_light_drains() {
        let start = Instant::now();
        let at_ms = |ms: u64| start + Duration::from_millis(ms);
        let pacing = DrainPacing::new(1 << 24, start);
        // A clock that never moves: heavy drains never reach a pause.
        let yields = |records: u32| {
            (0..records)
                .filter(|_| pacing.on_record(0, || start) == Pace::Yield)
                .count() as u32
        };
        // The first drain is paced, but only while it stays light.
        assert_eq!(
            yields(4 * LIGHT_DRAIN_RECORDS),
            (LIGHT_DRAIN_RECORDS - 1) / YIELD_EVERY_RECORDS_LIGHT
        );
        pacing.drain_done(at_ms(50));
        // After a heavy drain: none at all.
        assert_eq!(yields(LIGHT_DRAIN_RECORDS - 1), 0);
        // Just under LIGHT_RECORDS_PER_SEC over the 50 ms since.
        pacing.drain_done(at_ms(100));
        // Light again: every YIELD_EVERY_RECORDS_LIGHT records.
        assert_eq!(yields(5 * YIELD_EVERY_RECORDS_LIGHT), 5);
        pacing.drain_done(at_ms(150));
        assert!(pacing.light.get());
        // A drain the backlog woke early is small, but the load is high:
        // 1,800 records 15 ms after the last drain (120k records/s).
        yields(1800);
        pacing.drain_done(at_ms(165));
        assert!(!pacing.light.get());
        assert_eq!(yields(1800), 0);
        pacing.drain_done(at_ms(215));
        assert!(pacing.light.get(), "1,800 records in 50 ms is light");
        yields(5);
        pacing.drain_done(at_ms(265));
        pacing.drain_done(at_ms(315));
        assert!(pacing.light.get(), "idle counts as light");
    }

    /// Runs one heavy drain of `records` with `unread` bytes behind each,
    /// the clock advancing 1.25 us per record; returns the pauses.
    fn heavy_drain(pacing: &DrainPacing, records: u32, unread: impl Fn(u32) -> u64) -> Vec<u32> {
        let start = Instant::now();
        let at = |i: u32| start + Duration::from_nanos(1250 * u64::from(i));
        let mut pauses = Vec::new();
        for i in 0..records {
            match pacing.on_record(unread(i), || at(i)) {
                Pace::Pause => pauses.push(i),
                Pace::Yield => panic!("a heavy drain yielded at record {i}"),
                Pace::Go => {}
            }
        }
        pacing.drain_done(at(records));
        pauses
    }

    #[test]
    fn heavy_drains_pause_after_each_stretch_of_work_unless_behind() {
        let ring = 1u64 << 24;
        let start = Instant::now();
        let pacing = DrainPacing::new(ring, start);
        // A drain woken by the backlog soon after the last: the next is heavy.
        for _ in 0..1800 {
            pacing.on_record(0, Instant::now);
        }
        pacing.drain_done(start + Duration::from_millis(15));
        let pauses = heavy_drain(&pacing, 4000, |_| 0);
        // 200 us of work at 1.25 us a record is 160 records, counted from
        // the first look at the clock (record 16) and looked at every 16.
        assert_eq!(pauses.first(), Some(&(15 + 160)));
        let gaps: Vec<u32> = pauses.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g == 176), "{gaps:?}");
        assert!(!pacing.light.get());
        // A backlog past 1/8 of the ring stops the pauses for the rest of
        // the drain, even once it shrinks again.
        let behind = heavy_drain(&pacing, 4000, |i| if i == 500 { ring / 8 } else { 0 });
        assert!(behind.iter().all(|i| *i < 500), "{behind:?}");
        assert!(!behind.is_empty());
        // The next drain starts afresh.
        assert_eq!(heavy_drain(&pacing, 4000, |_| 0), pauses);
    }
}
