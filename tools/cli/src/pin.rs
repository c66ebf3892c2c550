//! `tools pin EXPERIMENT`: computes every digest an experiment file names (dataset manifests,
//! model files) and writes the changed ones into the file, keeping its comments and layout.
//! Explicit by design: training only ever verifies pins, it never writes them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use roomplan_trainer::train::experiment::locate;
use roomplan_trainer::train::pins::{pin_experiment, HashCache};

#[derive(Args)]
pub struct PinArgs {
    /// A name in experiments/ (tiny, stage2, stage3) or the path of a YAML file.
    experiment: String,
    /// Hash every file instead of trusting the (path, size, mtime, inode) hash cache.
    #[arg(long)]
    no_hash_cache: bool,
}

pub fn run(args: PinArgs) -> Result<ExitCode> {
    let path: PathBuf = locate(&args.experiment)?;
    let cache = HashCache::open_default(args.no_hash_cache);
    let updates = pin_experiment(&path, &cache)?;
    let mut changed = 0;
    for u in &updates {
        let state = match u.old.as_deref() {
            Some(old) if old == u.new => "unchanged",
            Some(_) => {
                changed += 1;
                "updated"
            }
            None => {
                changed += 1;
                "pinned"
            }
        };
        println!("{state:9} {} {} ({})", u.new, u.field, u.path.display());
    }
    eprintln!("{}: {changed} of {} digests written", path.display(), updates.len());
    Ok(ExitCode::SUCCESS)
}
