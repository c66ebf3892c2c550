//! Checkpoints of a run: `checkpoints/step-NNNNNN/` holding
//!
//! - `trainable.safetensors`: every trainable variable (Perceiver, geometry head, LoRA) by name;
//! - `adapter/`: the LoRA adapter in PEFT's layout (`adapter_config.json` with
//!   `base_model_name_or_path`, `adapter_model.safetensors`), loadable by
//!   `AutoPeftModelForCausalLM.from_pretrained`;
//! - `optimizer.safetensors`: AdamW moments and step counts;
//! - `state.json` ([`TrainState`]): step, the global data cursor (positions in the epoch's order
//!   over all ranks), schedule position, global batch and the seed every random stream derives
//!   from. Rank 0 alone writes checkpoints.
//!
//! A checkpoint is written into a temporary folder and renamed into place, so a folder named
//! `step-…` is always complete; the newest K are kept.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::train::data::Cursor;

pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const ADAPTER_DIR: &str = "adapter";

/// What, besides weights and optimizer moments, a run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the next micro-batch starts.
    pub cursor: Cursor,
    /// Total optimizer steps of the schedule (warmup + cosine span).
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// Samples and answer tokens trained on so far.
    pub samples_seen: u64,
    pub tokens_seen: u64,
    /// Every random stream derives from this seed and (purpose, step | epoch, position); no
    /// generator state needs saving beyond it.
    pub seed: u64,
    /// Samples per optimizer step over all ranks (world size × micro-batch × accumulation); a
    /// run may resume with another world size when it keeps this (absent in older checkpoints).
    #[serde(default)]
    pub global_batch: Option<u64>,
}

/// `step-000042`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Complete checkpoints of a run directory, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if entry.path().join(STATE_FILE).is_file() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint, or the one named `name` (`step-N` or a number).
pub fn find(run_dir: &Path, name: Option<&str>) -> Result<(u64, PathBuf)> {
    let all = list(run_dir)?;
    match name {
        None => all.last().cloned().with_context(|| {
            format!("{}: no complete checkpoint to resume from", run_dir.display())
        }),
        Some(n) => {
            let step: u64 = n
                .trim_start_matches("step-")
                .parse()
                .with_context(|| format!("checkpoint {n:?}: expected step-N or N"))?;
            all.into_iter().find(|(s, _)| *s == step).with_context(|| {
                format!("{}: no complete checkpoint step {step}", run_dir.display())
            })
        }
    }
}

/// Writes a checkpoint through `write` into a temporary folder, then renames it into place and
/// removes all but the newest `keep`.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_dir = dir.join(step_dir_name(state.step));
    let tmp = dir.join(format!(".tmp-{}", step_dir_name(state.step)));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write(&tmp)?;
    let state_json = serde_json::to_vec_pretty(state)?;
    roomplan_prep::shard::write_atomic(&tmp.join(STATE_FILE), &state_json)?;
    sync_dir(&tmp);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)
            .with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    sync_dir(&dir);
    let all = list(run_dir)?;
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    Ok(final_dir)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

pub fn load_state(ckpt: &Path) -> Result<TrainState> {
    let path = ckpt.join(STATE_FILE);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a train state", path.display()))
}

/// Saves named variables to a safetensors file (atomically).
pub fn save_vars(vars: &[(String, Var)], path: &Path) -> Result<()> {
    let tensors: Vec<(String, candle_core::Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), None)
        .with_context(|| format!("{}: serialising", path.display()))?;
    roomplan_prep::shard::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Sets every variable from a file written by [`save_vars`]; names and shapes must match exactly.
pub fn load_vars(vars: &[(String, Var)], path: &Path) -> Result<()> {
    let device = match vars.first() {
        Some((_, v)) => v.device().clone(),
        None => return Ok(()),
    };
    let mut tensors = candle_core::safetensors::load(path, &device)
        .with_context(|| format!("reading {}", path.display()))?;
    for (name, var) in vars {
        let t = tensors
            .remove(name)
            .with_context(|| format!("{}: variable {name} is missing", path.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: {name} is {:?}, the model's is {:?}",
                path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = tensors.keys().min() {
        bail!("{}: unexpected variable {extra}", path.display());
    }
    Ok(())
}
