//! Periodic OTLP metrics export (OTEL_METRIC_EXPORT_INTERVAL) of the RED store.

use super::otlp::{ExportError, OtlpClient, Signal};
use super::shutdown_flush::ShutdownFlush;
use crate::config::MetricsExport;
use crate::metrics::otlp::{to_request, DeltaState};
use crate::metrics::SharedStore;
use crate::pipeline::clock;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub struct MetricsExporter {
    cfg: MetricsExport,
    store: SharedStore,
    flush: ShutdownFlush,
}

impl MetricsExporter {
    pub fn new(cfg: MetricsExport, store: SharedStore, shutdown: Arc<AtomicBool>) -> Self {
        Self {
            cfg,
            store,
            flush: ShutdownFlush::new(shutdown),
        }
    }

    /// Exports every interval until `stop` is closed, then once more.
    pub fn run(self, stop: Receiver<()>) {
        let Some(endpoint) = self.cfg.otlp.endpoint.clone() else {
            return;
        };
        let Some(rt) = super::runtime("metrics export") else {
            return;
        };
        let client = match rt.block_on(async { OtlpClient::new(&self.cfg.otlp, Signal::Metrics) }) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "OTLP metrics exporter unusable");
                return;
            }
        };
        tracing::info!(endpoint = %endpoint, interval_ms = self.cfg.interval_ms, temporality = ?self.cfg.temporality, "exporting metrics over OTLP");
        let mut delta = DeltaState::default();
        let interval = Duration::from_millis(self.cfg.interval_ms);
        loop {
            let last = matches!(
                stop.recv_timeout(interval),
                Err(RecvTimeoutError::Disconnected) | Ok(())
            );
            let req = {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                to_request(
                    &store,
                    self.cfg.temporality,
                    &mut delta,
                    clock::Clock::new().to_unix_ns(clock::monotonic_ns()),
                )
            };
            if !req.resource_metrics.is_empty() {
                // One retry: the next interval carries cumulative data anyway.
                for attempt in 0..2 {
                    // A call in flight at shutdown, and the last one, get
                    // what is left of the shutdown flush.
                    let result = rt.block_on(self.flush.bound(client.export_metrics(req.clone())));
                    match result {
                        Ok(()) => break,
                        Err(ExportError::Retryable(m))
                            if attempt == 0 && !last && !self.flush.requested() =>
                        {
                            tracing::warn!("OTLP metrics export failed, retrying: {m}");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        Err(e) => {
                            tracing::warn!("OTLP metrics export failed: {e}");
                            break;
                        }
                    }
                }
            }
            if last {
                return;
            }
        }
    }
}
