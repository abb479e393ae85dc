//! The bound on export work after SIGINT/SIGTERM. Without it, a collector
//! that accepts connections and never answers held the agent for the export
//! timeout once per queued batch: 326 s for 33 batches.

use super::otlp::ExportError;
use std::cell::OnceCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What is still queued at shutdown gets this long in all to reach the collector.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// One per export thread: the shutdown flag, and the end of the flush once
/// the thread has seen the flag.
pub struct ShutdownFlush {
    shutdown: Arc<AtomicBool>,
    end: OnceCell<Instant>,
}

impl ShutdownFlush {
    pub fn new(shutdown: Arc<AtomicBool>) -> Self {
        Self {
            shutdown,
            end: OnceCell::new(),
        }
    }

    pub fn requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// None while the agent runs; after a shutdown request, the time left.
    pub fn time_left(&self) -> Option<Duration> {
        if !self.requested() {
            return None;
        }
        let end = self.end.get_or_init(|| Instant::now() + SHUTDOWN_FLUSH);
        Some(end.saturating_duration_since(Instant::now()))
    }

    /// Runs one export call. Once a shutdown is requested (also in the middle
    /// of the call) it gets what is left of the flush, then is abandoned.
    pub async fn bound(
        &self,
        call: impl Future<Output = Result<(), ExportError>>,
    ) -> Result<(), ExportError> {
        tokio::pin!(call);
        loop {
            if let Some(left) = self.time_left() {
                return tokio::time::timeout(left, call)
                    .await
                    .unwrap_or_else(|_| Err(ExportError::Permanent(GAVE_UP.into())));
            }
            tokio::select! {
                r = &mut call => return r,
                // The flag is a plain atomic: look at it now and then.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

const GAVE_UP: &str = "no answer before the shutdown budget ran out";

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_call_in_flight_is_abandoned_once_the_flush_time_is_spent() {
        let flag = Arc::new(AtomicBool::new(false));
        let flush = ShutdownFlush::new(flag.clone());
        assert_eq!(flush.time_left(), None);
        let rt = runtime();
        let started = Instant::now();
        let hanging = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        let signal = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, Ordering::Relaxed);
            std::future::pending::<()>().await
        };
        let result = rt.block_on(async {
            tokio::select! {
                r = flush.bound(hanging) => r,
                _ = signal => unreachable!(),
            }
        });
        let took = started.elapsed();
        assert!(matches!(result, Err(ExportError::Permanent(ref m)) if m == GAVE_UP));
        assert!(took >= SHUTDOWN_FLUSH, "{took:?}");
        assert!(took < SHUTDOWN_FLUSH + Duration::from_secs(1), "{took:?}");
        assert_eq!(flush.time_left(), Some(Duration::ZERO));
    }

    #[test]
    fn a_call_that_answers_is_not_touched() {
        let flush = ShutdownFlush::new(Arc::new(AtomicBool::new(false)));
        let r = runtime().block_on(flush.bound(async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            Err(ExportError::Retryable("503".into()))
        }));
        assert!(matches!(r, Err(ExportError::Retryable(ref m)) if m == "503"));
    }
}
