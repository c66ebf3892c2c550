//! `train predict`: greedy answers of a trained run on a prepared dataset's split, written as JSON
//! Lines (`{"sample_id", "prediction"}`, the layout `tools eval` reads), with the stage's answer
//! metrics and the majority-answer baseline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::train::checkpoint;
use crate::train::data::Corpus;
use crate::train::evaluate::{answer_metrics, majority_baseline, predict_rows};
use crate::train::experiment::DatasetSpec;
use crate::train::run::{device, recorded_experiment, verify_pins};
use crate::train::setup::assemble;
use roomplan_prep::shard::verify_dataset;

#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub run_dir: PathBuf,
    /// `step-N` (default: the newest complete checkpoint).
    pub checkpoint: Option<String>,
    pub dataset: PathBuf,
    pub split: String,
    pub out: PathBuf,
    /// At most this many samples (the first ones of the split).
    pub limit: Option<usize>,
    /// Default: the experiment's `eval.max_new_tokens`.
    pub max_new_tokens: Option<usize>,
    pub no_hash_cache: bool,
    pub progress: bool,
}

/// What a prediction run printed (JSON on stdout).
#[derive(Debug, Clone, Serialize)]
pub struct PredictSummary {
    pub run_dir: PathBuf,
    pub checkpoint: String,
    pub dataset: PathBuf,
    pub split: String,
    pub samples: usize,
    pub predictions: PathBuf,
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The most frequent training target of this dataset, and its EM@1 on the same samples.
    pub majority_answer: String,
    pub majority_em1: f64,
}

pub fn predict(opts: &PredictOptions) -> Result<PredictSummary> {
    let exp = recorded_experiment(&opts.run_dir)?;
    let report = verify_dataset(&opts.dataset)
        .with_context(|| format!("dataset {}", opts.dataset.display()))?;
    ensure!(
        report.ok(),
        "{} fails verification (tools shard verify): {}",
        opts.dataset.display(),
        report.problems.join("; ")
    );
    // The model files must still be the pinned ones; the dataset is checked above.
    let mut models_only = exp.clone();
    models_only.data.datasets.clear();
    verify_pins(
        &models_only,
        &opts.run_dir.join("experiment.yaml"),
        opts.no_hash_cache,
    )?;
    let (step, ckpt) = checkpoint::find(&opts.run_dir, opts.checkpoint.as_deref())?;
    let asm = assemble(&exp, &device()?)?;
    checkpoint::load_vars(
        &asm.model.trainable_vars(),
        &ckpt.join(checkpoint::TRAINABLE_FILE),
    )?;

    // Same dataset as in training (by folder): its training split gives the majority baseline.
    let same = exp
        .data
        .datasets
        .iter()
        .find(|d| same_dir(&d.path, &opts.dataset));
    let spec = DatasetSpec {
        name: same.map_or_else(|| dir_name(&opts.dataset), |d| d.name.clone()),
        path: opts.dataset.clone(),
        manifest_digest: None,
        weight: 1.0,
        train_split: same.map_or_else(|| "train".into(), |d| d.train_split.clone()),
        eval_split: opts.split.clone(),
        // Prediction runs VGGT live: the folder may be any dataset, not the pinned one.
        features: None,
    };
    let corpus = Arc::new(Corpus::new(&exp, asm.tokenizer.clone(), &[spec])?);
    let rows = corpus.eval_rows(0, opts.limit.unwrap_or(usize::MAX)).to_vec();
    ensure!(
        !rows.is_empty(),
        "{}: no sample in split {:?}",
        opts.dataset.display(),
        opts.split
    );
    let bar = ProgressBar::with_draw_target(
        Some(rows.len() as u64),
        if opts.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("predicting {bar:30} {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template"),
    );
    let max_new = opts.max_new_tokens.unwrap_or(exp.eval.max_new_tokens);
    let items = predict_rows(&asm, &corpus, 0, &rows, max_new, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();

    let mut text = Vec::new();
    for (p, _) in &items {
        serde_json::to_writer(&mut text, p)?;
        text.write_all(b"\n")?;
    }
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    roomplan_prep::shard::write_atomic(&opts.out, &text)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    let (majority_answer, majority_em1) = majority_baseline(&corpus, 0, &items)?;
    Ok(PredictSummary {
        run_dir: opts.run_dir.clone(),
        checkpoint: checkpoint::step_dir_name(step),
        dataset: opts.dataset.clone(),
        split: opts.split.clone(),
        samples: items.len(),
        predictions: opts.out.clone(),
        metrics: answer_metrics(exp.stage, &items),
        majority_answer,
        majority_em1,
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn dir_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| "dataset".into(), |n| n.to_string_lossy().into_owned())
}
