//! Log flood guard shared by the pipeline and the Kubernetes watcher.

/// Accumulates a count and says it at most once per period (log flood guard).
pub struct RateLimitedCount {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
    pending: u64,
}

impl RateLimitedCount {
    pub fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            last: None,
            pending: 0,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.pending += n;
    }

    /// The count to report now, if any and if the period has passed.
    pub fn due(&mut self) -> Option<u64> {
        if self.pending == 0 || self.last.is_some_and(|t| t.elapsed() < self.period) {
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}
