//! `autotel top`: a live terminal view fed by the same pipeline as `run`.
//! Spans arrive on a channel instead of going to an exporter; `q` sets the
//! shutdown flag, which detaches the agent like SIGTERM.
//!
//! `model` aggregates (pure, unit-tested), `app` holds the view state and
//! key handling, `ui` renders. This loop drains the channel every few
//! milliseconds (the pipeline never waits on the view) and redraws at most
//! `FRAME` apart.

pub mod app;
pub mod model;
pub mod ui;

use crate::pipeline::SpanBatch;
use crossbeam_channel::{Receiver, TryRecvError};
use crossterm::event::{self, Event};
use crossterm::{execute, terminal};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::io::{self, Stdout};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redraw interval (4 fps).
const FRAME: Duration = Duration::from_millis(250);
/// Longest wait for a key before draining the channel again.
const INPUT_POLL: Duration = Duration::from_millis(10);
/// Spans taken from the channel between two input polls at most.
const DRAIN_BATCH: usize = 50_000;

/// Puts the terminal back (raw mode off, main screen, cursor) when dropped,
/// on every way out of `run`.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(
            io::stdout(),
            terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(
            io::stdout(),
            terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Runs the UI until the user quits or `shutdown` is set elsewhere.
/// `queued`: the pipeline's count of spans in the channel, lowered as
/// batches are taken.
pub fn run(
    spans: Receiver<SpanBatch>,
    queued: prometheus_client::metrics::gauge::Gauge,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let guard = match TerminalGuard::enter() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("autotel top: needs a terminal: {e}");
            return Err(anyhow::anyhow!("autotel top needs a terminal: {e}"));
        }
    };
    // A panic in the view must not leave the terminal raw, nor leave the
    // agent running without a view: catch it, restore, report.
    let result = catch_unwind(AssertUnwindSafe(|| event_loop(&spans, &queued, &shutdown)));
    drop(guard);
    match result {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            eprintln!("autotel top: view panicked: {msg}");
            Err(anyhow::anyhow!("view panicked: {msg}"))
        }
    }
}

fn event_loop(
    spans: &Receiver<SpanBatch>,
    queued: &prometheus_client::metrics::gauge::Gauge,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    let mut term: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    term.clear()?;
    let t0 = Instant::now();
    let now_ms = || t0.elapsed().as_millis() as u64;
    let mut model = model::Model::new(model::Limits::default(), now_ms());
    let mut app = app::App::default();
    let mut next_frame = Instant::now();
    let mut dirty = true;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Drain what the pipeline produced since the last pass.
        let mut closed = false;
        let now = now_ms();
        for _ in 0..DRAIN_BATCH {
            match spans.try_recv() {
                Ok(batch) => {
                    queued.dec_by(batch.len() as i64);
                    for s in batch {
                        model.ingest(s, now);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            // The agent is shutting down.
            return Ok(());
        }
        let wait = next_frame
            .saturating_duration_since(Instant::now())
            .min(INPUT_POLL);
        if event::poll(wait)? {
            // Handle every pending event before drawing.
            loop {
                match event::read()? {
                    Event::Key(k) => {
                        app.on_key(k, &model);
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
                if app.quit {
                    shutdown.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                if !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        let now = Instant::now();
        if now >= next_frame || dirty {
            let ms = now_ms();
            term.draw(|f| ui::draw(f, &mut app, &mut model, ms))?;
            dirty = false;
            next_frame = now + FRAME;
        }
    }
}
