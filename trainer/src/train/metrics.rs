//! `metrics.jsonl` of a run: one JSON object per line, `"kind": "train"` after every optimizer
//! step and `"kind": "eval"` at each evaluation; and the small facts a run records about itself
//! (peak memory, UTC time).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One optimizer step. `loss`, `lr`, `grad_norm` repeat exactly on a resumed run; the timing
/// fields do not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    pub kind: String,
    pub step: u64,
    pub epoch: u64,
    /// Mean answer-token loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate per parameter group.
    pub lr: BTreeMap<String, f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub samples: usize,
    /// Answer tokens (those with a label).
    pub tokens: usize,
    /// Every token of the step's sequences (prompt, image slots, answer; no padding).
    pub input_tokens: usize,
    /// Prompt tokens cut to fit `max_seq_len` in this step.
    pub truncated_tokens: usize,
    pub seconds: f64,
    /// Answer tokens per second.
    pub tokens_per_s: f64,
    pub input_tokens_per_s: f64,
    pub samples_per_s: f64,
    /// Seconds the step waited for the loader (0 when batches were ready).
    pub loader_wait_s: f64,
    /// Micro-batches the loader prepares per second of its own work (compare with the steps' rate:
    /// while it is higher, decoding never stalls a step).
    pub loader_batches_per_s: f64,
    pub peak_rss_mib: f64,
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub kind: String,
    pub step: u64,
    pub epoch: u64,
    /// Per dataset: validation loss on the fixed subset.
    pub val_loss: BTreeMap<String, f64>,
    /// Per dataset and metric, e.g. `scanqa/em1`.
    pub metrics: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// Appends lines to `metrics.jsonl`, flushed one by one.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    pub fn open(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file, path })
    }

    pub fn write(&mut self, line: &impl Serialize) -> Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Keeps only the lines of `metrics.jsonl` up to `step` (what a resumed run continues from);
/// a torn last line (killed mid-write) is dropped.
pub fn truncate_to_step(run_dir: &Path, step: u64) -> Result<()> {
    let path = run_dir.join(METRICS_FILE);
    if !path.exists() {
        return Ok(());
    }
    let f = File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut kept = String::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value["step"].as_u64().is_some_and(|s| s <= step) {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    roomplan_prep::shard::write_atomic(&path, kept.as_bytes())
        .with_context(|| format!("rewriting {}", path.display()))
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_string(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil calendar, proleptic Gregorian).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days → civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
