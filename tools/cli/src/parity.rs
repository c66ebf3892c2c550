//! `tools parity <folder>` (issues 5 and 6) — under construction.
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ParityArgs {
    /// A fixture folder laid out like ../shared/parity/qwen3 or ../shared/parity/vggt/<variant>.
    pub folder: PathBuf,
}

pub fn run(args: ParityArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("parity checks for {} are not implemented yet", args.folder.display())
}
