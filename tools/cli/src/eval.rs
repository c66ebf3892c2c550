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

/// One prediction record as read: the id and the texts, best first.
struct Prediction {
    sample_id: Value,
    texts: Vec<String>,
}

/// Fields of ScanQA's and SQA3D's annotation records: a record with one of these beside `answers`
/// is an annotation (its `answers` are the references), not a prediction.
const ANNOTATION_FIELDS: [&str; 5] = [
    "question",
    "object_ids",
    "object_names",
    "situation",
    "answer_type",
];

/// Where a prediction's texts are: a list (`answer_top10`, `answers`) or one text (`prediction`).
const PREDICTION_FIELDS: [&str; 3] = ["answer_top10", "answers", "prediction"];

impl Prediction {
    /// Reads one record. Refused: no id or two ids, no prediction field or more than one (a record
    /// with `answers` and `prediction` is ScanQA's annotation layout plus a prediction: which one
    /// would be scored?), `answers` beside annotation fields (the references, not predictions).
    fn from_value(value: Value) -> std::result::Result<Prediction, String> {
        let Value::Object(map) = value else {
            return Err("is not a JSON object".into());
        };
        let ids: Vec<&str> = ["sample_id", "question_id"]
            .into_iter()
            .filter(|k| map.contains_key(*k))
            .collect();
        let sample_id = match ids.as_slice() {
            [key] => map[*key].clone(),
            [] => return Err("has no `sample_id` (or `question_id`)".into()),
            _ => return Err("has both `sample_id` and `question_id`; give one".into()),
        };
        let fields: Vec<&str> = PREDICTION_FIELDS
            .into_iter()
            .filter(|k| map.contains_key(*k))
            .collect();
        let field = match fields.as_slice() {
            [field] => *field,
            [] => return Err("has neither `answer_top10`, `answers` nor `prediction`".into()),
            several => {
                return Err(format!(
                    "has {}: ambiguous, which one is the prediction? (in ScanQA's annotation layout `answers` are the references); give exactly one of `answer_top10`, `answers`, `prediction`",
                    several.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(" and ")
                ))
            }
        };
        if field == "answers" {
            if let Some(annotation) = ANNOTATION_FIELDS.iter().find(|k| map.contains_key(**k)) {
                return Err(format!(
                    "has `answers` beside `{annotation}`: that is the dataset's annotation layout, where `answers` are the reference answers, not predictions; name the predictions `answer_top10` (a list) or `prediction` (one text)"
                ));
            }
        }
        let texts = match (&map[field], field) {
            (Value::String(text), "prediction") => vec![text.clone()],
            (Value::Array(items), "answer_top10" | "answers") => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| format!("has `{field}` that is not a list of strings"))?,
            (_, "prediction") => return Err("has a `prediction` that is not a string".into()),
            _ => return Err(format!("has `{field}` that is not a list of strings")),
        };
        Ok(Prediction { sample_id, texts })
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
        let who = ["sample_id", "question_id"]
            .iter()
            .find_map(|k| value.get(*k).and_then(id_text))
            .map_or_else(|| "the record".to_string(), |id| format!("sample {id}"));
        let p = Prediction::from_value(value)
            .map_err(|e| anyhow::anyhow!("{}: {at}: {who} {e}", path.display()))?;
        let Some(id) = id_text(&p.sample_id) else {
            bail!(
                "{}: {at}: sample_id must be a string or a number",
                path.display()
            );
        };
        if predictions.insert(id.clone(), p.texts).is_some() {
            bail!(
                "{}: {at}: a second prediction for sample {id}",
                path.display()
            );
        }
    }
    Ok(predictions)
}

/// Pairs every reference (a sample, or a question of the official files) with its prediction by
/// id. Refuses references without a prediction and predictions without a reference: `plural` names
/// the references in the first message ("samples"), `one` in the second ("question of ...").
fn pair_with_predictions<T>(
    predictions_path: &Path,
    mut predictions: BTreeMap<String, Vec<String>>,
    references: impl IntoIterator<Item = T>,
    id: impl Fn(&T) -> &str,
    plural: &str,
    one: &str,
) -> Result<Vec<(T, Vec<String>)>> {
    let mut joined = Vec::new();
    let mut missing = Vec::new();
    for reference in references {
        match predictions.remove(id(&reference)) {
            Some(p) => joined.push((reference, p)),
            None => missing.push(id(&reference).to_string()),
        }
    }
    let first = |ids: Vec<String>| ids.into_iter().take(5).collect::<Vec<_>>().join(", ");
    if !missing.is_empty() {
        bail!(
            "{}: no prediction for {} of the {} {plural} (first: {})",
            predictions_path.display(),
            missing.len(),
            missing.len() + joined.len(),
            first(missing)
        );
    }
    if !predictions.is_empty() {
        bail!(
            "{}: {} predictions name no {one} (first: {})",
            predictions_path.display(),
            predictions.len(),
            first(predictions.into_keys().collect())
        );
    }
    Ok(joined)
}

/// The samples to score, each with its prediction; refuses missing and unknown ids.
fn join(args: &EvalArgs, tasks: &[&str]) -> Result<Vec<(SampleRecord, Vec<String>)>> {
    let dataset = Dataset::open(&args.dataset)
        .with_context(|| format!("cannot open {}", args.dataset.display()))?;
    let predictions = read_predictions(&args.predictions)?;
    let mut samples = Vec::new();
    for row in 0..dataset.num_samples() {
        let sample = dataset.sample(row)?;
        let in_split = args.split.as_ref().is_none_or(|s| *s == sample.split);
        if in_split && tasks.contains(&sample.task.as_str()) {
            samples.push(sample);
        }
    }
    let one = format!(
        "{} sample{} of {}",
        tasks.join("/"),
        args.split
            .as_ref()
            .map(|s| format!(" in split {s}"))
            .unwrap_or_default(),
        args.dataset.display()
    );
    let joined = pair_with_predictions(
        &args.predictions,
        predictions,
        samples,
        |s| s.sample_id.as_str(),
        "samples",
        &one,
    )?;
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
