//! Evaluation during training and prediction: validation loss on a fixed subset, greedy answers
//! (KV cache) and the answer metrics of each stage.
//!
//! Stage 2 reports ScanQA's EM@1 (the prediction equals one of the answers exactly) and LEO's
//! refined exact match; stage 3 the share of outputs that are JSON and that equal the target's
//! canonical text. The full metric tables are `tools eval`'s, on the prediction files.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::train::data::{Corpus, Example};
use crate::train::setup::Assembled;
use roomplan_eval::answers::{em_at_1, leo_refined_em, percent};
use roomplan_prep::shard::SampleRecord;

/// One line of a predictions file (the layout `tools eval` reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub sample_id: String,
    pub prediction: String,
}

/// Greedy answers for `rows` of `source`, in row order; `progress` is called after each.
pub fn predict_rows(
    asm: &Assembled,
    corpus: &Corpus,
    source: usize,
    rows: &[usize],
    max_new_tokens: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<(Prediction, SampleRecord)>> {
    let tokenizer = corpus.tokenizer();
    let mut out = Vec::with_capacity(rows.len());
    for (i, &row) in rows.iter().enumerate() {
        let ex = corpus.example(source, row, None, false)?;
        let fused = asm.fused_examples(std::slice::from_ref(&ex))?;
        let ids = asm
            .model
            .generate_greedy(&fused[0], max_new_tokens, |id| tokenizer.is_stop(id))?;
        let ids: Vec<u32> = ids.into_iter().filter(|&id| !tokenizer.is_stop(id)).collect();
        let text = tokenizer.decode(&ids, true)?.trim().to_string();
        out.push((
            Prediction {
                sample_id: ex.sample_id.clone(),
                prediction: text,
            },
            ex.record,
        ));
        progress(i + 1);
    }
    Ok(out)
}

/// Mean answer-token loss over `rows` (no dropout), in micro-batches of `batch`.
pub fn validation_loss(
    asm: &Assembled,
    corpus: &Corpus,
    source: usize,
    rows: &[usize],
    batch: usize,
) -> Result<Option<f64>> {
    let mut total = 0f64;
    let mut batches = 0usize;
    for chunk in rows.chunks(batch.max(1)) {
        let examples: Vec<Example> = chunk
            .iter()
            .map(|&row| corpus.example(source, row, None, true))
            .collect::<Result<_>>()?;
        let fused = asm.fused_examples(&examples)?;
        let loss = asm.model.loss_with(&fused, false)?.to_scalar::<f32>()?;
        total += loss as f64;
        batches += 1;
    }
    Ok((batches > 0).then(|| total / batches as f64))
}

/// The stage's answer metrics (percentages) of predictions against their samples.
pub fn answer_metrics(stage: u8, items: &[(Prediction, SampleRecord)]) -> BTreeMap<String, f64> {
    let n = items.len();
    let count = |f: &dyn Fn(&Prediction, &SampleRecord) -> bool| {
        items.iter().filter(|(p, s)| f(p, s)).count()
    };
    let mut m = BTreeMap::new();
    if stage == 3 {
        let json = count(&|p, _| serde_json::from_str::<serde_json::Value>(&p.prediction).is_ok());
        let exact = count(&|p, s| s.action_json.as_deref() == Some(p.prediction.as_str()));
        m.insert("valid_json".into(), percent(json, n));
        m.insert("exact".into(), percent(exact, n));
    } else {
        let em = count(&|p, s| em_at_1(&[&p.prediction], &s.answers));
        let refined = count(&|p, s| leo_refined_em(&p.prediction, &s.answers));
        m.insert("em1".into(), percent(em, n));
        m.insert("refined_em".into(), percent(refined, n));
    }
    m
}

/// The most frequent first answer (target) of the training rows, and its EM@1 on `items`: the
/// baseline a model that ignores the question and the views would reach.
pub fn majority_baseline(
    corpus: &Corpus,
    source: usize,
    items: &[(Prediction, SampleRecord)],
) -> Result<(String, f64)> {
    let src = &corpus.sources[source];
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for &row in &src.train_rows {
        let s = src.dataset.sample(row)?;
        if let Ok(t) = corpus.target(&src.name, &s) {
            *counts.entry(t).or_default() += 1;
        }
    }
    let majority = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    let hits = items
        .iter()
        .filter(|(_, s)| {
            em_at_1(&[&majority], &s.answers) || s.action_json.as_deref() == Some(&majority)
        })
        .count();
    Ok((majority, percent(hits, items.len())))
}
