//! `tools shard inspect | verify | digest | merge` (issue 3) — under construction.
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ShardCommand {}

pub fn run(cmd: ShardCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
