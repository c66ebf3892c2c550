//! The whole 3D-QA table of one set of questions, as the papers report it, and every question's own
//! scores:
//!
//! - answer matching ([`crate::answers`]): ScanQA EM@1 / EM@10 (raw strings, `score.py`), LEO's EM
//!   in both readings (`leo_em`: LEO's first-match rule; `leo_em_any`: equals any reference) and
//!   refined EM, SQA3D top-1 overall and per question type;
//! - caption scores of the top-1 answer, both sides PTB-tokenized as `score.py` does
//!   ([`crate::caption`]): BLEU-1..4, ROUGE-L, CIDEr, and METEOR ([`crate::meteor`], the official
//!   jar) when it is available.
//!
//! Percentages (×100), as the tables print them.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::answers::{
    em_at_1, em_at_k, leo_em_any, leo_match, percent, score_scanqa, score_sqa3d, sqa3d_top1,
    Sqa3dPrediction, SqaQuestionType,
};
use crate::caption::{bleu, bleu_per_item, cider_d, ptb_tokenize, rouge_l, CaptionError};
use crate::meteor::{locate_jar, meteor, MeteorError};

/// One question with the model's answers (best first) and the references.
#[derive(Debug, Clone, PartialEq)]
pub struct QaItem {
    /// `scanqa` or `sqa3d`.
    pub task: String,
    pub id: String,
    pub scene_id: String,
    pub question: String,
    pub predictions: Vec<String>,
    pub answers: Vec<String>,
}

/// Whether to compute METEOR (it starts a Java process that loads a 60 MB paraphrase table).
#[derive(Debug, Clone, PartialEq)]
pub enum MeteorChoice {
    /// Skip it.
    Off,
    /// Compute it when Java and the jar are found, else report why not.
    Auto(Option<PathBuf>),
    /// Compute it or fail.
    Required(Option<PathBuf>),
}

/// What each EM figure means, printed with the scores.
pub const EM_READINGS: [(&str, &str); 4] = [
    ("em1", "ScanQA score.py: the top-1 answer is one of the references, raw string equality"),
    ("leo_em", "LEO's answer_match after clean_answer: the first reference that matches in either sense decides; EM only if that one is equal"),
    ("leo_em_any", "after LEO's clean_answer, the answer equals any reference"),
    ("leo_refined_em", "LEO's refined EM: equal, or one contains the other once whitespace is removed (any reference)"),
];

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Caption(#[from] CaptionError),
    #[error(transparent)]
    Meteor(#[from] MeteorError),
}

/// The report of each task present (ScanQA first) and one record per question, in item order.
/// Notes (e.g. why METEOR is missing) go into the reports' `not_computed`.
pub fn score_table(
    items: &[QaItem],
    meteor_choice: &MeteorChoice,
) -> Result<(Vec<Value>, Vec<Value>), TableError> {
    let jar = match meteor_choice {
        MeteorChoice::Off => Err("meteor: not requested (--meteor off)".to_string()),
        MeteorChoice::Auto(p) => locate_jar(p.as_deref()).map_err(|e| format!("meteor: {e}")),
        MeteorChoice::Required(p) => Ok(locate_jar(p.as_deref())?),
    };
    let mut reports = Vec::new();
    let mut per_item: Vec<(usize, Value)> = Vec::new();
    for task in ["scanqa", "sqa3d"] {
        let indices: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].task == task)
            .collect();
        if indices.is_empty() {
            continue;
        }
        let group: Vec<&QaItem> = indices.iter().map(|&i| &items[i]).collect();
        let top1 = |it: &QaItem| it.predictions.first().cloned().unwrap_or_default();
        let candidates: Vec<String> = group.iter().map(|it| ptb_tokenize(&top1(it))).collect();
        let references: Vec<Vec<String>> = group
            .iter()
            .map(|it| it.answers.iter().map(|a| ptb_tokenize(a)).collect())
            .collect();
        let corpus_bleu = bleu(&candidates, &references)?;
        let item_bleu = bleu_per_item(&candidates, &references)?;
        let item_rouge = rouge_l(&candidates, &references)?;
        let item_cider = cider_d(&candidates, &references)?;
        let mut not_computed =
            vec!["top1_f_value: needs WordNet lemmas (ScanQA's F-value)".to_string()];
        let (meteor_corpus, item_meteor) = match &jar {
            Ok(jar) => {
                let (corpus, items) = match (meteor(jar, &candidates, &references), meteor_choice) {
                    (Ok(v), _) => v,
                    (Err(e), MeteorChoice::Required(_)) => return Err(e.into()),
                    (Err(e), _) => {
                        not_computed.push(format!("meteor: {e}"));
                        (f64::NAN, vec![])
                    }
                };
                (corpus, items)
            }
            Err(why) => {
                not_computed.push(why.clone());
                (f64::NAN, vec![])
            }
        };
        let pct = |x: f64| {
            if x.is_nan() {
                Value::Null
            } else {
                json!(100.0 * x)
            }
        };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let pairs: Vec<(Vec<String>, Vec<String>)> = group
            .iter()
            .map(|it| (it.predictions.clone(), it.answers.clone()))
            .collect();
        let answers = score_scanqa(&pairs);
        let mut report = Map::new();
        report.insert("task".into(), json!(task));
        report.insert("n".into(), json!(answers.n));
        report.insert("em1".into(), json!(answers.em1));
        report.insert("em10".into(), json!(answers.em10));
        report.insert("leo_em".into(), json!(answers.leo_em));
        report.insert("leo_em_any".into(), json!(answers.leo_em_any));
        report.insert("leo_refined_em".into(), json!(answers.leo_refined_em));
        if task == "sqa3d" {
            let sqa = score_sqa3d(
                &group
                    .iter()
                    .map(|it| Sqa3dPrediction {
                        question: it.question.clone(),
                        prediction: top1(it),
                        answers: it.answers.clone(),
                    })
                    .collect::<Vec<_>>(),
            );
            report.insert("top1".into(), json!(sqa.top1));
            let by_type: Map<String, Value> = sqa
                .by_type
                .iter()
                .map(|(t, c)| {
                    (
                        serde_json::to_value(t)
                            .expect("serializes")
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        json!({"n": c.total, "top1": percent(c.top1, c.total),
                               "leo_em": percent(c.leo_em, c.total),
                               "leo_em_any": percent(c.leo_em_any, c.total),
                               "leo_refined_em": percent(c.leo_refined_em, c.total)}),
                    )
                })
                .collect();
            report.insert("top1_by_type".into(), Value::Object(by_type));
            // Counts per type (total, top1, leo_em, leo_em_any, leo_refined_em).
            report.insert(
                "by_type".into(),
                serde_json::to_value(&sqa.by_type).expect("serializes"),
            );
        }
        for (k, b) in corpus_bleu.iter().enumerate() {
            report.insert(format!("bleu{}", k + 1), json!(100.0 * b));
        }
        report.insert("meteor".into(), pct(meteor_corpus));
        report.insert("rouge_l".into(), json!(100.0 * mean(&item_rouge)));
        report.insert("cider".into(), json!(100.0 * mean(&item_cider)));
        report.insert(
            "em_readings".into(),
            Value::Object(
                EM_READINGS
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect(),
            ),
        );
        report.insert("not_computed".into(), json!(not_computed));
        reports.push(Value::Object(report));

        for (j, (&i, it)) in indices.iter().zip(&group).enumerate() {
            let top = top1(it);
            let leo = leo_match(&top, &it.answers);
            let mut rec = Map::new();
            rec.insert("task".into(), json!(task));
            rec.insert("question_id".into(), json!(it.id));
            rec.insert("scene_id".into(), json!(it.scene_id));
            rec.insert("question".into(), json!(it.question));
            rec.insert("prediction".into(), json!(top));
            rec.insert("answers".into(), json!(it.answers));
            rec.insert("em1".into(), json!(em_at_1(&it.predictions, &it.answers)));
            rec.insert(
                "em10".into(),
                json!(em_at_k(&it.predictions, &it.answers, 10)),
            );
            let has_prediction = !it.predictions.is_empty();
            rec.insert("leo_em".into(), json!(has_prediction && leo.em));
            rec.insert(
                "leo_em_any".into(),
                json!(has_prediction && leo_em_any(&top, &it.answers)),
            );
            rec.insert(
                "leo_refined_em".into(),
                json!(has_prediction && leo.refined_em),
            );
            if task == "sqa3d" {
                let kind = SqaQuestionType::of_question(&it.question);
                rec.insert(
                    "question_type".into(),
                    serde_json::to_value(kind).expect("serializes"),
                );
                rec.insert("top1".into(), json!(sqa3d_top1(&top, &it.answers)));
            }
            for k in 0..4 {
                rec.insert(format!("bleu{}", k + 1), json!(100.0 * item_bleu[j][k]));
            }
            rec.insert(
                "meteor".into(),
                item_meteor.get(j).map_or(Value::Null, |m| json!(100.0 * m)),
            );
            rec.insert("rouge_l".into(), json!(100.0 * item_rouge[j]));
            rec.insert("cider".into(), json!(100.0 * item_cider[j]));
            per_item.push((i, Value::Object(rec)));
        }
    }
    per_item.sort_by_key(|(i, _)| *i);
    Ok((reports, per_item.into_iter().map(|(_, v)| v).collect()))
}

/// The reports as one Markdown table: a row per metric, a column per task.
pub fn markdown(reports: &[Value]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let fmt = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => format!("{:.2}", n.as_f64().unwrap_or(f64::NAN)),
        Some(Value::Null) => "n/a".to_string(),
        Some(other) => other.to_string(),
        None => "".to_string(),
    };
    let mut metrics: Vec<(String, String)> = vec![
        ("n".into(), "questions".into()),
        ("em1".into(), "EM@1".into()),
        ("em10".into(), "EM@10".into()),
        ("bleu1".into(), "BLEU-1".into()),
        ("bleu2".into(), "BLEU-2".into()),
        ("bleu3".into(), "BLEU-3".into()),
        ("bleu4".into(), "BLEU-4".into()),
        ("meteor".into(), "METEOR".into()),
        ("rouge_l".into(), "ROUGE-L".into()),
        ("cider".into(), "CIDEr".into()),
        ("leo_em".into(), "EM (LEO, first match)".into()),
        ("leo_em_any".into(), "EM (LEO clean, any reference)".into()),
        ("leo_refined_em".into(), "refined EM (LEO)".into()),
        ("top1".into(), "SQA3D top-1".into()),
    ];
    for t in SqaQuestionType::ALL {
        let name = serde_json::to_value(t).expect("serializes");
        let name = name.as_str().unwrap_or("");
        metrics.push((
            format!("top1_by_type.{name}"),
            format!("SQA3D top-1, {name}"),
        ));
    }
    for (key, label) in metrics {
        let values: Vec<String> = reports
            .iter()
            .map(|r| {
                let v = key.split_once('.').map_or_else(
                    || r.get(&key),
                    |(a, b)| r.get(a).and_then(|x| x.get(b)).and_then(|x| x.get("top1")),
                );
                let n = key
                    .split_once('.')
                    .and_then(|(a, b)| r.get(a).and_then(|x| x.get(b)).and_then(|x| x.get("n")))
                    .and_then(Value::as_u64);
                match (fmt(v), n) {
                    (s, Some(n)) if !s.is_empty() => format!("{s} (n={n})"),
                    (s, _) if key == "n" => s.trim_end_matches(".00").to_string(),
                    (s, _) => s,
                }
            })
            .collect();
        if values.iter().any(|v| !v.is_empty()) {
            rows.push((label, values));
        }
    }
    let mut out = String::from("| metric |");
    for r in reports {
        out += &format!(
            " {} |",
            r.get("task").and_then(Value::as_str).unwrap_or("?")
        );
    }
    out += "\n|---|";
    out += &"---:|".repeat(reports.len());
    out.push('\n');
    for (label, values) in rows {
        out += &format!("| {label} | {} |\n", values.join(" | "));
    }
    let notes: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.get("not_computed")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    out += "\nEM readings: ";
    out += &EM_READINGS
        .iter()
        .map(|(k, v)| format!("`{k}`: {v}"))
        .collect::<Vec<_>>()
        .join("; ");
    out.push('\n');
    for n in notes {
        out += &format!("Not computed: {n}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(task: &str, id: &str, q: &str, preds: &[&str], answers: &[&str]) -> QaItem {
        QaItem {
            task: task.into(),
            id: id.into(),
            scene_id: "scene0000_00".into(),
            question: q.into(),
            predictions: preds.iter().map(|s| s.to_string()).collect(),
            answers: answers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn both_tasks_with_every_metric_and_per_item_records_in_input_order() {
        let items = vec![
            item("sqa3d", "1", "Which way?", &["left"], &["left"]),
            item(
                "scanqa",
                "a",
                "What?",
                &["chair"],
                &["chair table", "chair"],
            ),
            item("scanqa", "b", "What?", &["Brown", "brown"], &["brown"]),
        ];
        let (reports, per_item) = score_table(&items, &MeteorChoice::Off).unwrap();
        assert_eq!(reports.len(), 2);
        let scanqa = &reports[0];
        assert_eq!(scanqa["task"], "scanqa");
        assert_eq!(scanqa["n"], 2);
        assert_eq!(scanqa["em1"], 50.0);
        assert_eq!(scanqa["em10"], 100.0);
        // "chair" vs ["chair table", "chair"]: LEO's rule stops at the first (refined) match.
        assert_eq!(scanqa["leo_em"], 50.0);
        assert_eq!(scanqa["leo_em_any"], 100.0);
        assert_eq!(scanqa["meteor"], Value::Null);
        assert_eq!(
            scanqa["not_computed"][1],
            "meteor: not requested (--meteor off)"
        );
        let sqa = &reports[1];
        assert_eq!(sqa["top1"], 100.0);
        assert_eq!(sqa["top1_by_type"]["which"]["n"], 1);
        assert_eq!(sqa["top1_by_type"]["what"]["n"], 0);
        assert_eq!(per_item.len(), 3);
        assert_eq!(per_item[0]["question_id"], "1");
        assert_eq!(per_item[0]["question_type"], "which");
        assert_eq!(per_item[1]["leo_em"], false);
        assert_eq!(per_item[1]["leo_em_any"], true);
        assert_eq!(per_item[2]["em1"], false);
        assert_eq!(per_item[2]["em10"], true);
        // One matching word: precision (1 + 1e-15) / (1 + 1e-9), and pycocoevalcap's brevity penalty
        // fires too, as the length ratio is the same fraction (< 1).
        let b1 = per_item[0]["bleu1"].as_f64().unwrap();
        let r: f64 = (1.0 + 1e-15) / (1.0 + 1e-9);
        assert!(
            (b1 - 100.0 * r * (1.0 - 1.0 / r).exp()).abs() < 1e-12,
            "{b1}"
        );
        // No bigram: BLEU-2 = sqrt(r · 1e-15 / 1e-9) · penalty ≈ 0.001 (×100: 0.1), the smoothing's floor.
        let b2 = per_item[0]["bleu2"].as_f64().unwrap();
        assert!(
            (b2 - 100.0 * (r * 1e-15 / 1e-9).sqrt() * (1.0 - 1.0 / r).exp()).abs() < 1e-12,
            "{b2}"
        );
        let table = markdown(&reports);
        assert!(table.starts_with("| metric | scanqa | sqa3d |\n|---|---:|---:|\n| questions | 2 | 1 |\n| EM@1 | 50.00 | 100.00 |\n"), "{table}");
        assert!(table.contains("| METEOR | n/a | n/a |"), "{table}");
        assert!(
            table.contains("| SQA3D top-1, which |  | 100.00 (n=1) |"),
            "{table}"
        );
        assert!(
            table.contains("Not computed: meteor: not requested (--meteor off)"),
            "{table}"
        );
    }
}
