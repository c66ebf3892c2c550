//! `tools eval qa | actions`: a model's predictions against the answers or target actions stored
//! in a prepared dataset's `samples`, scored by `roomplan_eval` (FORMATS.md §6).
//!
//! Predictions are a JSON array or JSON Lines of records keyed by `sample_id` (or `question_id`,
//! as ScanQA's official prediction files are): `answers` (or `answer_top10`), a list best first, or
//! `prediction`, one text. Other fields (`scene_id`, `bbox`, ...) are ignored. Every sample of the
//! chosen split and tasks needs exactly one prediction, and every prediction a sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use roomplan_eval::actions::{score_action, summarize, Tolerances};
use roomplan_prep::actions::validate_text;
use roomplan_prep::shard::{Dataset, SampleRecord};
use serde::Deserialize;
use serde_json::{json, Value};

mod qa;

#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Score ScanQA / SQA3D answers against a prepared dataset or the official annotation files:
    /// EM@1, EM@10, BLEU-1..4, METEOR, ROUGE-L, CIDEr, LEO EM (both readings) and refined EM,
    /// SQA3D top-1 per question type. Percentages; JSON (or a Markdown table) on stdout.
    Qa(qa::QaArgs),
    /// Score stage-3 RoomPlan actions: valid, exact, same action, correct within tolerances.
    Actions {
        #[command(flatten)]
        args: EvalArgs,
        /// Position tolerance (metres) for centres and translations.
        #[arg(long, default_value_t = Tolerances::default().position_m)]
        position_m: f64,
        /// Size tolerance (metres) per box dimension or anchor extent.
        #[arg(long, default_value_t = Tolerances::default().size_m)]
        size_m: f64,
        /// Angle tolerance (degrees) for yaws and normals.
        #[arg(long, default_value_t = Tolerances::default().angle_deg)]
        angle_deg: f64,
    },
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A prepared dataset folder (its `samples` hold the references).
    #[arg(long)]
    dataset: PathBuf,
    /// The predictions: a JSON array or JSON Lines of records {"sample_id" (or "question_id"),
    /// "answers" (or "answer_top10"): [best first] or "prediction": "text"}; other fields ignored.
    #[arg(long)]
    predictions: PathBuf,
    /// Only samples of this split (e.g. `val`); all splits when absent.
    #[arg(long)]
    split: Option<String>,
}

#[derive(Deserialize)]
struct Prediction {
    #[serde(alias = "question_id")]
    sample_id: Value,
    #[serde(default, alias = "answer_top10")]
    answers: Option<Vec<String>>,
    #[serde(default)]
    prediction: Option<String>,
}

impl Prediction {
    /// Best first.
    fn texts(&self) -> Vec<String> {
        match (&self.answers, &self.prediction) {
            (Some(list), _) => list.clone(),
            (None, Some(text)) => vec![text.clone()],
            (None, None) => vec![],
        }
    }
}

/// Sample ids are strings in the shards; SQA3D's question ids are numbers in its files.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads predictions keyed by sample id, naming the file and record of any problem.
fn read_predictions(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records: Vec<(String, Value)> = if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON array", path.display()))?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("element {i}"), v))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
            out.push((format!("line {}", i + 1), v));
        }
        out
    };
    let mut predictions = BTreeMap::new();
    for (at, value) in records {
        let p: Prediction = serde_json::from_value(value).with_context(|| {
            format!(
                "{}: {at}: expected {{\"sample_id\", \"answers\": [..] or \"prediction\": \"..\"}}",
                path.display()
            )
        })?;
        let Some(id) = id_text(&p.sample_id) else {
            bail!(
                "{}: {at}: sample_id must be a string or a number",
                path.display()
            );
        };
        if p.answers.is_none() && p.prediction.is_none() {
            bail!(
                "{}: {at}: sample {id} has neither `answers` nor `prediction`",
                path.display()
            );
        }
        if predictions.insert(id.clone(), p.texts()).is_some() {
            bail!(
                "{}: {at}: a second prediction for sample {id}",
                path.display()
            );
        }
    }
    Ok(predictions)
}

/// The samples to score, each with its prediction; refuses missing and unknown ids.
fn join(args: &EvalArgs, tasks: &[&str]) -> Result<Vec<(SampleRecord, Vec<String>)>> {
    let dataset = Dataset::open(&args.dataset)
        .with_context(|| format!("cannot open {}", args.dataset.display()))?;
    let mut predictions = read_predictions(&args.predictions)?;
    let mut joined = Vec::new();
    let mut missing = Vec::new();
    for row in 0..dataset.num_samples() {
        let sample = dataset.sample(row)?;
        let in_split = args.split.as_ref().is_none_or(|s| *s == sample.split);
        if !in_split || !tasks.contains(&sample.task.as_str()) {
            continue;
        }
        match predictions.remove(&sample.sample_id) {
            Some(p) => joined.push((sample, p)),
            None => missing.push(sample.sample_id),
        }
    }
    let first = |ids: Vec<String>| ids.into_iter().take(5).collect::<Vec<_>>().join(", ");
    if !missing.is_empty() {
        bail!(
            "{}: no prediction for {} of the {} samples (first: {})",
            args.predictions.display(),
            missing.len(),
            missing.len() + joined.len(),
            first(missing)
        );
    }
    if !predictions.is_empty() {
        bail!(
            "{}: {} predictions name no {} sample{} of {} (first: {})",
            args.predictions.display(),
            predictions.len(),
            tasks.join("/"),
            args.split
                .as_ref()
                .map(|s| format!(" in split {s}"))
                .unwrap_or_default(),
            args.dataset.display(),
            first(predictions.into_keys().collect())
        );
    }
    if joined.is_empty() {
        bail!(
            "{}: no {} samples to score",
            args.dataset.display(),
            tasks.join("/")
        );
    }
    Ok(joined)
}

pub fn run(cmd: EvalCommand) -> Result<ExitCode> {
    let report = match cmd {
        EvalCommand::Qa(args) => return qa::run(args),
        EvalCommand::Actions {
            args,
            position_m,
            size_m,
            angle_deg,
        } => {
            let tol = Tolerances {
                position_m,
                size_m,
                angle_deg,
            };
            let items = join(&args, &[roomplan_prep::arkit::TASK])?;
            let mut verdicts = Vec::with_capacity(items.len());
            for (sample, prediction) in &items {
                let target_text = sample.action_json.as_deref().with_context(|| {
                    format!(
                        "{}: sample {} has no target action",
                        args.dataset.display(),
                        sample.sample_id
                    )
                })?;
                let target = validate_text(target_text).with_context(|| {
                    format!(
                        "{}: sample {}: the stored target action is invalid",
                        args.dataset.display(),
                        sample.sample_id
                    )
                })?;
                let text = prediction.first().map(String::as_str).unwrap_or("");
                verdicts.push(score_action(text, &target, &tol));
            }
            json!({"task": "roomplan_action", "tolerances": tol, "summary": summarize(&verdicts)})
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
