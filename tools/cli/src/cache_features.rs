//! `tools cache-features EXPERIMENT`: the frozen VGGT aggregator run once per scene into the
//! feature folders the experiment names (trainer's `train::features`), after verifying the
//! experiment's dataset and VGGT pins.
use std::process::ExitCode;

use anyhow::{bail, Result};
use roomplan_trainer::train::experiment;
use roomplan_trainer::train::features::cache_features;
use roomplan_trainer::train::pins::{self, HashCache};

#[derive(clap::Args)]
pub struct CacheFeaturesArgs {
    /// A name in experiments/ or a YAML path; its datasets with `features: {path, digest}` are encoded.
    pub experiment: String,
    /// Override a field first, as `train --set` does.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: CacheFeaturesArgs) -> Result<ExitCode> {
    let path = experiment::locate(&args.experiment)?;
    let exp = experiment::load(&path, &args.overrides)?.experiment;
    // The inputs the features are computed from must hold their pins; the features themselves
    // are what this writes.
    let mut inputs = exp.clone();
    for d in &mut inputs.data.datasets {
        d.features = None;
    }
    let cache = HashCache::open_default(false);
    if let Err(problems) = pins::verify(&inputs, &cache) {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        bail!("{}: pins do not hold:\n{}", path.display(), list.join("\n"));
    }
    let _ = cache.save();
    let device = roomplan_trainer::train::run::device()?;
    for c in cache_features(&exp, &device, !args.no_progress)? {
        println!(
            "{}: {} scenes ({} VGGT forwards) → {}  digest {}",
            c.dataset,
            c.scenes,
            c.forwards,
            c.path.display(),
            c.digest
        );
    }
    eprintln!("pin them with: tools pin {}", path.display());
    Ok(ExitCode::SUCCESS)
}
