//! `tools`: inspect and verify prepared shards, check model parity against golden fixtures.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod eval;
mod export;
mod font;
mod parity;
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
    /// Chart training runs (loss, learning rates, grad norm, evaluation metrics; PNG and SVG) and
    /// write a report.md into each run directory.
    Plot(plot::PlotArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Shard(cmd) => shard::run(cmd),
        Command::Parity(args) => parity::run(args),
        Command::Eval(cmd) => eval::run(cmd),
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
