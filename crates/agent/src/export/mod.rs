//! The span export stage: its own thread, fed by a bounded channel, batching
//! by size and time, retrying retryable failures with exponential backoff.
//! The reader thread never waits for it; while it retries, new spans queue
//! up to the channel bound and beyond that are dropped and counted.

pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod shutdown_flush;
pub mod span_encoding;
pub mod stdout;

use crate::config::TracesExport;
use crate::pipeline::SpanBatch;
use crate::selfmetrics::SelfMetrics;
use autotel_model::Span;
use crossbeam_channel::{Receiver, TryRecvError};
use shutdown_flush::{ShutdownFlush, SHUTDOWN_FLUSH};
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Give up on one batch after retrying this long (the queue keeps filling meanwhile).
const RETRY_MAX_ELAPSED: Duration = Duration::from_secs(120);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The single-threaded tokio runtime an export thread drives its client with.
pub fn runtime(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime for {what}");
            None
        }
    }
}

pub struct SpanExporter {
    cfg: TracesExport,
    print: bool,
    metrics: Arc<SelfMetrics>,
    /// The shutdown flag, and the bound on exporting after it.
    flush: ShutdownFlush,
    /// Spans given up at shutdown, reported once at the end with the
    /// last reason (a hang and a refused connection call for different fixes).
    unflushed: std::cell::Cell<u64>,
    unflushed_reason: std::cell::RefCell<String>,
}

impl SpanExporter {
    pub fn new(
        cfg: TracesExport,
        print: bool,
        metrics: Arc<SelfMetrics>,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        Self {
            cfg,
            print,
            metrics,
            flush: ShutdownFlush::new(shutdown),
            unflushed: Default::default(),
            unflushed_reason: Default::default(),
        }
    }

    /// Runs until the channel is closed and drained.
    pub fn run(self, rx: Receiver<SpanBatch>) {
        let Some(rt) = runtime("span export; spans will be dropped") else {
            return;
        };
        let client = match &self.cfg.otlp.endpoint {
            Some(ep) => match rt
                .block_on(async { otlp::OtlpClient::new(&self.cfg.otlp, otlp::Signal::Traces) })
            {
                Ok(c) => {
                    tracing::info!(endpoint = %ep, protocol = ?self.cfg.otlp.protocol, "exporting traces over OTLP");
                    Some(c)
                }
                Err(e) => {
                    tracing::error!(error = %e, "OTLP exporter unusable; printing spans to stdout instead");
                    None
                }
            },
            None => None,
        };
        let to_stdout = self.print || client.is_none();
        let delay = Duration::from_millis(self.cfg.schedule_delay_ms.max(1));
        let max = self.cfg.max_batch.max(1);
        let mut batch: Vec<Span> = Vec::with_capacity(max);
        // Spans taken from the channel that did not fit the batch being
        // built: still counted as queued, they start the next one.
        let mut carry: Vec<Span> = Vec::new();
        // One reused buffer and one write per batch (stdout is line-buffered).
        let mut line_buf = String::new();
        let mut deadline = Instant::now() + delay;
        let mut open = true;
        while open || !batch.is_empty() || !carry.is_empty() {
            self.fill(&mut batch, &mut carry, max);
            while open && batch.len() < max {
                match rx.try_recv() {
                    Ok(mut spans) => {
                        carry.append(&mut spans);
                        self.fill(&mut batch, &mut carry, max);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if open && batch.len() < max {
                let now = Instant::now();
                if now < deadline {
                    // Sleep to the deadline: the pipeline unparks this
                    // thread when a whole batch waits, and at shutdown.
                    std::thread::park_timeout(deadline - now);
                    continue;
                }
            }
            if !batch.is_empty() {
                if to_stdout {
                    line_buf.clear();
                    for s in &batch {
                        stdout::write_line(&mut line_buf, s);
                        line_buf.push('\n');
                    }
                    let _ = std::io::stdout().lock().write_all(line_buf.as_bytes());
                }
                match client.as_ref() {
                    Some(c) => self.export_with_retry(&rt, c, &batch),
                    None => {
                        self.metrics.spans_exported.inc_by(batch.len() as u64);
                    }
                }
                batch.clear();
            }
            deadline = Instant::now() + delay;
        }
        let unflushed = self.unflushed.get();
        if unflushed > 0 {
            tracing::error!(
                spans = unflushed,
                "spans not exported at shutdown (the collector gets {} s in all): {}",
                SHUTDOWN_FLUSH.as_secs(),
                self.unflushed_reason.borrow()
            );
        }
    }

    /// Moves spans from `carry` into the batch being built, up to `max`.
    fn fill(&self, batch: &mut Vec<Span>, carry: &mut SpanBatch, max: usize) {
        let k = carry.len().min(max.saturating_sub(batch.len()));
        if k > 0 {
            batch.extend(carry.drain(..k));
            self.metrics.export_queue_length.dec_by(k as i64);
        }
    }

    fn export_with_retry(
        &self,
        rt: &tokio::runtime::Runtime,
        client: &otlp::OtlpClient,
        batch: &[Span],
    ) {
        let n = batch.len() as u64;
        let started = Instant::now();
        let mut backoff = BACKOFF_START;
        let body: prost::bytes::Bytes = span_encoding::encode_request_framed(batch).into();
        loop {
            if self.flush.time_left() == Some(Duration::ZERO) {
                return self.give_up_at_shutdown(n, "the time was spent on earlier batches");
            }
            let t = Instant::now();
            let result = rt.block_on(self.flush.bound(client.export_traces(body.clone())));
            self.metrics
                .export_duration
                .observe(t.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    self.metrics.spans_exported.inc_by(n);
                    return;
                }
                Err(otlp::ExportError::Retryable(msg))
                    if started.elapsed() < RETRY_MAX_ELAPSED && !self.flush.requested() =>
                {
                    tracing::warn!(
                        spans = n,
                        retry_in_ms = backoff.as_millis() as u64,
                        "OTLP export failed: {msg}"
                    );
                    self.sleep_unless_shutdown(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) if self.flush.requested() => {
                    return self.give_up_at_shutdown(n, &e.to_string())
                }
                Err(e) => {
                    tracing::error!(spans = n, "OTLP export failed, batch dropped: {e}");
                    self.metrics.spans_failed.inc_by(n);
                    return;
                }
            }
        }
    }

    /// Counted now, said once with the total when the exporter ends.
    fn give_up_at_shutdown(&self, spans: u64, reason: &str) {
        self.metrics.spans_failed.inc_by(spans);
        self.unflushed.set(self.unflushed.get() + spans);
        reason.clone_into(&mut self.unflushed_reason.borrow_mut());
    }

    /// Backoff that a SIGTERM cuts short: shutdown must not wait out a
    /// collector outage.
    fn sleep_unless_shutdown(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.flush.requested() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}
