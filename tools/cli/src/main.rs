//! `tools`: inspect and verify prepared shards, check model parity against golden fixtures, score
//! predictions, pin experiment files.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cache_features;
mod eval;
mod export;
mod font;
mod parity;
mod pin;
mod plot;
mod shard;
mod show;

#[derive(Parser)]
#[command(
    name = "tools",
    version,
    about = "roomplan tools: shard inspection/verification, model parity checks, evaluation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify, digest or merge a prepared dataset (Arrow shards + manifest.json).
    #[command(subcommand)]
    Shard(shard::ShardCommand),
    /// Run every parity check of a golden-tensor fixture folder (Qwen3 or VGGT) and print max abs differences.
    Parity(parity::ParityArgs),
    /// Score predictions against a prepared dataset's answers or target actions (JSON on stdout).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Fill in or update the digests an experiment file pins (datasets, model files).
    Pin(pin::PinArgs),
    /// Run the frozen VGGT aggregator once per scene into the feature folders an experiment names
    /// (data.datasets[].features), for `train` to read instead of running VGGT per sample.
    CacheFeatures(cache_features::CacheFeaturesArgs),
    /// Chart training runs (loss, learning rates, grad norm, evaluation metrics; PNG and SVG) and
    /// write a report.md into each run directory.
    Plot(plot::PlotArgs),
}

/// Output piped into a reader that stops early (`tools shard inspect DIR | head -1`) ends the
/// process quietly, as it does for other Unix tools, instead of a panic on the broken pipe: Rust
/// ignores SIGPIPE by default, so its default action is restored.
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; only resets a disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Shard(cmd) => shard::run(cmd),
        Command::Parity(args) => parity::run(args),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Pin(args) => pin::run(args),
        Command::CacheFeatures(args) => cache_features::run(args),
        Command::Plot(args) => plot::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
