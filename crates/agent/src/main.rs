//! autotel: OpenTelemetry traces and metrics from unmodified processes, via eBPF.

mod check;
mod config;
mod discovery;
mod export;
mod metrics;
mod pipeline;
mod prefetch;
mod rate_limit;
mod run;
mod selfmetrics;
mod slice;
mod top;
mod tracer;

use clap::{Parser, Subcommand};

// Span and attribute building allocate on the hot path; mimalloc makes that
// markedly cheaper than glibc malloc (measured with bench/run.py).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "autotel",
    version,
    about = "eBPF agent: OpenTelemetry spans and metrics from unmodified processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// YAML configuration file (environment variables override it).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Live view of what the agent sees (requests/s, errors, latency per
    /// service and route; slow and failed requests); no collector needed.
    Top {
        /// YAML configuration file (environment variables override it).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Report what this host allows; non-zero exit if the agent cannot run.
    Check,
    /// Print the version.
    Version,
}

/// mimalloc's `mi_option_purge_delay` (position 15 of `mi_option_e` in the
/// v3 header the crate builds; its Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Spans are freed by the exporter thread, in bursts: with mimalloc's default
/// 10 ms purge delay the pages those frees empty are given back to the kernel
/// and faulted in again (zeroed) a moment later by the pipeline. A second of
/// delay keeps them; the steady-state RSS is the same (bench/run.py).
fn tune_allocator() {
    // SAFETY: sets a process-wide option; called once, before other threads.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Version => {
            println!("autotel {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Check => check::report(),
        Command::Run { config } => run::main(config.as_deref(), run::Mode::Export),
        Command::Top { config } => run::main(config.as_deref(), run::Mode::Top),
    };
    std::process::exit(code);
}
