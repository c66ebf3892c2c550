//! `tools eval qa`: the whole table (roomplan_eval::table) against a prepared dataset's samples
//! (`--dataset`) or against the official annotation files (`--references`, as ScanQA's `score.py`
//! does), with every question's scores on request (`--per-item`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use roomplan_eval::references::read_references;
use roomplan_eval::table::{markdown, score_table, MeteorChoice, QaItem};
use serde_json::json;

use super::{join, pair_with_predictions, read_predictions, EvalArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MeteorMode {
    /// Compute METEOR when Java and the jar are found; otherwise say why in `not_computed`.
    Auto,
    /// Compute METEOR or fail.
    On,
    /// Skip METEOR (it starts Java and loads a 60 MB paraphrase table: ~15 s).
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A JSON array with one report per task (scanqa, sqa3d).
    Json,
    /// A Markdown table: one row per metric, one column per task, and the EM readings.
    Table,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["dataset", "references"])))]
pub struct QaArgs {
    /// A prepared dataset folder (its `samples` hold the references).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Official annotation files instead of a dataset: ScanQA_v1.0_val.json (or _train), or SQA3D's
    /// v1_balanced_sqa_annotations_<split>_scannetv2.json together with
    /// v1_balanced_questions_<split>_scannetv2.json. Repeat the flag or list several files.
    #[arg(long, num_args = 1.., conflicts_with_all = ["dataset", "split"])]
    references: Vec<PathBuf>,
    /// The predictions: a JSON array or JSON Lines of records {"sample_id" (or "question_id"),
    /// "answers" (or "answer_top10"): [best first] or "prediction": "text"}; other fields ignored.
    #[arg(long)]
    predictions: PathBuf,
    /// Only samples of this split (e.g. `val`), with --dataset; all splits when absent.
    #[arg(long)]
    split: Option<String>,
    /// Write every question's scores here as JSON Lines (ids, prediction, answers, each metric).
    #[arg(long)]
    per_item: Option<PathBuf>,
    /// METEOR through the official METEOR 1.5 jar (pycocoevalcap's) and Java.
    #[arg(long, value_enum, default_value_t = MeteorMode::Auto)]
    meteor: MeteorMode,
    /// The METEOR jar (default: $ROOMPLAN_METEOR_JAR, else the one in python3's pycocoevalcap).
    #[arg(long)]
    meteor_jar: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    format: OutputFormat,
}

/// Predictions joined with the official reference files: every question needs one, and every
/// prediction a question.
fn join_references(args: &QaArgs) -> Result<Vec<QaItem>> {
    let references = read_references(&args.references)?;
    let predictions = read_predictions(&args.predictions)?;
    let joined = pair_with_predictions(
        &args.predictions,
        predictions,
        references,
        |r| r.id.as_str(),
        "questions of the reference files",
        "question of the reference files",
    )?;
    Ok(joined
        .into_iter()
        .map(|(r, p)| QaItem {
            task: r.task.to_string(),
            id: r.id,
            scene_id: r.scene_id,
            question: r.question,
            predictions: p,
            answers: r.answers,
        })
        .collect())
}

fn join_dataset(args: &QaArgs, dataset: &std::path::Path) -> Result<Vec<QaItem>> {
    let eval_args = EvalArgs {
        dataset: dataset.to_path_buf(),
        predictions: args.predictions.clone(),
        split: args.split.clone(),
    };
    let joined = join(&eval_args, &["scanqa", "sqa3d"])?;
    if let Some((s, _)) = joined.iter().find(|(s, _)| s.answers.is_empty()) {
        bail!(
            "{}: sample {} ({} split) has no reference answers; score a split that has them (--split val)",
            dataset.display(),
            s.sample_id,
            s.split
        );
    }
    Ok(joined
        .into_iter()
        .map(|(s, p)| QaItem {
            task: s.task,
            id: s.sample_id,
            scene_id: s.scene_id,
            question: s.question,
            predictions: p,
            answers: s.answers,
        })
        .collect())
}

pub fn run(args: QaArgs) -> Result<ExitCode> {
    let items = match &args.dataset {
        Some(dataset) => join_dataset(&args, dataset)?,
        None => join_references(&args)?,
    };
    let choice = match args.meteor {
        MeteorMode::Off => MeteorChoice::Off,
        MeteorMode::Auto => MeteorChoice::Auto(args.meteor_jar.clone()),
        MeteorMode::On => MeteorChoice::Required(args.meteor_jar.clone()),
    };
    let (reports, per_item) = score_table(&items, &choice)?;
    for r in &reports {
        for note in r["not_computed"].as_array().into_iter().flatten() {
            if let Some(note) = note.as_str().filter(|n| n.starts_with("meteor")) {
                eprintln!("note: {} {note}", r["task"].as_str().unwrap_or(""));
            }
        }
    }
    if let Some(path) = &args.per_item {
        let mut text = String::new();
        for rec in &per_item {
            text += &serde_json::to_string(rec)?;
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json!(reports))?),
        OutputFormat::Table => print!("{}", markdown(&reports)),
    }
    Ok(ExitCode::SUCCESS)
}
