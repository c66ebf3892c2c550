//! Training: experiment files ([`experiment`]) and their pins ([`pins`]), the shard loader
//! ([`data`]), model assembly ([`setup`]), the optimizer and schedule ([`optim`]), the loop
//! ([`run`]), checkpoints ([`checkpoint`]), metrics ([`metrics`]), evaluation and prediction
//! ([`evaluate`], [`predict`]), data-parallel collectives and launch ([`dist`]), and the generated
//! models of the `tiny` experiment ([`tiny`]).

pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod evaluate;
pub mod experiment;
pub mod features;
pub mod metrics;
pub mod optim;
pub mod pins;
pub mod predict;
pub mod run;
pub mod setup;
pub mod tiny;

use std::path::PathBuf;

/// Exit code of `train` when a pin does not hold (or is missing).
pub const EXIT_PINS: i32 = 3;
/// Exit code of `train` when the loss or the gradients stop being finite.
pub const EXIT_NON_FINITE: i32 = 4;

/// Pins of an experiment that do not hold; every problem is listed.
#[derive(Debug)]
pub struct PinsFailed {
    pub experiment: PathBuf,
    pub problems: Vec<pins::PinProblem>,
}

impl std::fmt::Display for PinsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: the experiment's pins do not hold:", self.experiment.display())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        if self
            .problems
            .iter()
            .any(|p| matches!(p, pins::PinProblem::Unpinned { .. }))
        {
            write!(
                f,
                "fill in unpinned digests with: tools pin {}",
                self.experiment.display()
            )?;
        } else {
            write!(
                f,
                "an input changed: restore it, or re-pin deliberately with tools pin {}",
                self.experiment.display()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PinsFailed {}

/// The loss or the gradient norm of a step was not finite: the step was not applied.
#[derive(Debug)]
pub struct NonFinite {
    pub step: u64,
    pub what: String,
    pub sample_ids: Vec<String>,
    pub last_checkpoint: Option<u64>,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}: non-finite {} on samples [{}]; the step was not applied; ",
            self.step,
            self.what,
            self.sample_ids.join(", ")
        )?;
        match self.last_checkpoint {
            Some(s) => write!(f, "the last good checkpoint is {}", checkpoint::step_dir_name(s)),
            None => write!(f, "no checkpoint was written yet"),
        }
    }
}

impl std::error::Error for NonFinite {}
