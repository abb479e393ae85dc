//! `autotel top`: a live terminal view fed by the same pipeline as `run`.
//! Spans arrive on a channel instead of going to an exporter; `q` sets the
//! shutdown flag, which detaches the agent like SIGTERM.

use autotel_model::Span;
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Runs the UI until the user quits or `shutdown` is set elsewhere.
pub fn run(spans: Receiver<Span>, shutdown: Arc<AtomicBool>) -> anyhow::Result<()> {
    // Placeholder until the ratatui view lands: count spans per second.
    let mut n = 0u64;
    while !shutdown.load(Ordering::Relaxed) {
        match spans.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(_) => n += 1,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    eprintln!("autotel top: {n} spans");
    Ok(())
}
