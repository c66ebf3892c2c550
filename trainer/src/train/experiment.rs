//! Experiment files (`experiments/NAME.yaml`): everything a run depends on, as typed structs.
//!
//! Reading is strict: an unknown key or a wrong type stops with the file, the line and the field's
//! path (`data.datasets[0].weight`). `--set key.path=value` overrides are applied to the parsed
//! document before it is checked again, and are recorded by the run. Digests (`sha256`,
//! `manifest_digest`) may be null in a file: [`crate::train::pins`] refuses to run until
//! `tools pin` has filled them in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::model::lora::LoraConfig;

/// Where experiment names are looked up (`train tiny` → `experiments/tiny.yaml`).
pub const EXPERIMENTS_DIR: &str = "experiments";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    /// 2: 3D question answering (short answers); 3: RoomPlan instruction → action JSON.
    pub stage: u8,
    pub seed: u64,
    pub model: ModelSpec,
    pub data: DataSpec,
    pub optim: OptimSpec,
    pub schedule: ScheduleSpec,
    pub train: TrainSpec,
    pub eval: EvalSpec,
}

/// The dtype frozen weights are held in (trainable weights and optimizer state are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenDtype {
    F32,
    Bf16,
    F16,
}

impl FrozenDtype {
    /// The name an experiment spells (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            FrozenDtype::F32 => "f32",
            FrozenDtype::Bf16 => "bf16",
            FrozenDtype::F16 => "f16",
        }
    }

    pub fn dtype(self) -> candle_core::DType {
        match self {
            FrozenDtype::F32 => candle_core::DType::F32,
            FrozenDtype::Bf16 => candle_core::DType::BF16,
            FrozenDtype::F16 => candle_core::DType::F16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub frozen_dtype: FrozenDtype,
    /// Qwen3: `config.json`, the safetensors weights (one file or every shard), `tokenizer.json`.
    pub llm: FilesSpec,
    pub vggt: VggtSpec,
    pub perceiver: PerceiverSpec,
    pub geometry: GeometrySpec,
    pub lora: LoraSpec,
}

/// A set of model files: a local folder, or a Hugging Face repo at a revision, with the sha256
/// of each file (file name → digest; null until pinned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// A folder (relative to the working directory) or a hub repo id `owner/name`.
    pub source: String,
    /// Hub revision (a commit hash pins it; a branch name does not). Null for a folder.
    #[serde(default)]
    pub revision: Option<String>,
    pub files: BTreeMap<String, Option<String>>,
}

/// VGGT: the checkpoint (`model.pt` as released, or safetensors), optionally a `config.json` with
/// the aggregator's constructor arguments (VGGT-1B's defaults otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VggtSpec {
    pub weights: FilesSpec,
    /// Which of `files` is the checkpoint.
    pub checkpoint: String,
    /// Aggregator output layers (0-based) fed to the Perceiver, concatenated on channels.
    pub layers: Vec<usize>,
}

/// Perceiver sizes; its input width follows from VGGT and its output width from the LLM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerceiverSpec {
    pub latent_dim: usize,
    pub num_latents: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub ffn_dim: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeometrySpec {
    /// Must equal the prepared datasets' depth-histogram bins (prep's `--depth-bins`).
    pub depth_bins: usize,
    pub hidden_dim: usize,
    pub tokens_per_view: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Qwen3 projection names (`q_proj`, ..., `down_proj`).
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub rslora: bool,
}

impl LoraSpec {
    pub fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            lora_alpha: self.alpha,
            lora_dropout: self.dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.rslora,
            extra: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub datasets: Vec<DatasetSpec>,
    /// Views given to the model per sample (the first N stored views of its scene).
    pub views_per_sample: usize,
    /// Probability of dropping each view during training (at least one is always kept).
    pub view_dropout: f64,
    /// Prompt + answer tokens; longer samples lose prompt text (never image slots or answer).
    pub max_seq_len: usize,
    /// Optional system turn of every prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Ablation: every view's pixels replaced by mid grey (geometry kept), to measure what the
    /// images contribute.
    #[serde(default)]
    pub blank_views: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Name used in metrics and prediction files.
    pub name: String,
    /// A prepared dataset folder (prep's `--out`).
    pub path: PathBuf,
    /// `tools shard digest <path>`; null until pinned.
    pub manifest_digest: Option<String>,
    /// Mixture weight: each training sample is drawn from this dataset with probability
    /// weight / Σ weights.
    pub weight: f64,
    pub train_split: String,
    /// Split used for evaluation during training and by default for prediction.
    pub eval_split: String,
    /// Cached VGGT features of this dataset's scenes (`tools cache-features`): training and
    /// evaluation read them instead of running the aggregator. Absent: VGGT runs live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturesSpec>,
}

/// A feature folder (prep's `features` contract) and its pinned digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSpec {
    /// Where `tools cache-features` writes and `train` reads the features.
    pub path: PathBuf,
    /// The feature manifest's digest; null until pinned (`tools pin`).
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSpec {
    /// Learning rate of the LoRA adapters.
    pub lr_lora: f64,
    /// Learning rate of the Perceiver and the geometry head.
    pub lr_projector: f64,
    /// Decoupled weight decay (matrices only; vectors never decay).
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Gradient clipping by global norm; null disables it.
    pub max_grad_norm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Linear warmup over this fraction of the total optimizer steps.
    pub warmup_fraction: f64,
    /// Cosine decay after warmup, down to this fraction of each group's learning rate.
    pub min_lr_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// Optimizer steps; when null, `epochs` whole passes over the training mixture.
    pub max_steps: Option<u64>,
    pub epochs: Option<u64>,
    /// Checkpoint every N optimizer steps (and always at the end).
    pub checkpoint_every: u64,
    /// Complete checkpoints kept in the run directory (the newest ones).
    pub keep_checkpoints: usize,
    /// Gradient checkpointing of decoder layers (transformers' name): each Qwen3 layer keeps only
    /// its input and output and is recomputed in the backward. Needs `model.lora.dropout` 0.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Evaluate every N optimizer steps (and at the end); 0 disables evaluation during training.
    pub every: u64,
    /// Size of the fixed evaluation subset per dataset (the first N samples of the eval split).
    pub max_samples: usize,
    pub max_new_tokens: usize,
}

/// An experiment as read from a file, with the overrides that were applied.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub experiment: Experiment,
    pub path: PathBuf,
    pub overrides: Vec<String>,
}

/// Finds `name_or_path`: an existing file, else `experiments/<name>.yaml`.
pub fn locate(name_or_path: &str) -> Result<PathBuf> {
    let direct = Path::new(name_or_path);
    if direct.is_file() {
        return Ok(direct.to_path_buf());
    }
    let named = Path::new(EXPERIMENTS_DIR).join(format!("{name_or_path}.yaml"));
    if named.is_file() {
        return Ok(named);
    }
    let known = list_experiments().unwrap_or_default();
    bail!(
        "no experiment {name_or_path:?}: neither a file nor {} (known: {})",
        named.display(),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// Names of `experiments/*.yaml`.
pub fn list_experiments() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(EXPERIMENTS_DIR)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Reads and checks an experiment file, then applies `overrides` (`key.path=value`, value in YAML).
pub fn load(path: &Path, overrides: &[String]) -> Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let experiment = parse(&text, &path.display().to_string())?;
    let experiment = if overrides.is_empty() {
        experiment
    } else {
        let mut doc: Value = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not YAML", path.display()))?;
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let what = format!("{} with --set {}", path.display(), overrides.join(" --set "));
        from_value(doc, &what)?
    };
    experiment
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(Loaded {
        experiment,
        path: path.to_path_buf(),
        overrides: overrides.to_vec(),
    })
}

/// Parses experiment YAML; errors name `what`, the line and the field path.
pub fn parse(text: &str, what: &str) -> Result<Experiment> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .location()
            .map(|l| format!(", line {}", l.line()))
            .unwrap_or_default();
        anyhow::anyhow!("{what}{line}: field `{path}`: {}", strip_location(&inner))
    })
}

fn from_value(doc: Value, what: &str) -> Result<Experiment> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("{what}: field `{path}`: {}", strip_location(e.inner()))
    })
}

/// serde_yaml appends " at line L column C" to messages; we report the line ourselves.
fn strip_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// `a.b.0.c=value`: sets the value at that path (mapping keys, or sequence indices), creating a
/// missing last key; the value is parsed as YAML (`3`, `1e-4`, `null`, `[1, 2]`, `text`).
pub fn apply_override(doc: &mut Value, spec: &str) -> Result<()> {
    let (path, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set {spec:?}: expected key.path=value"))?;
    ensure!(!path.is_empty(), "--set {spec:?}: empty key path");
    let value: Value = serde_yaml::from_str(raw)
        .with_context(|| format!("--set {spec:?}: the value is not YAML"))?;
    let keys: Vec<&str> = path.split('.').collect();
    let mut node = doc;
    for (i, key) in keys.iter().enumerate() {
        let last = i + 1 == keys.len();
        let here = keys[..=i].join(".");
        node = match node {
            Value::Mapping(map) => {
                let k = Value::String(key.to_string());
                if last {
                    map.insert(k, value);
                    return Ok(());
                }
                map.get_mut(&k)
                    .with_context(|| format!("--set {spec:?}: `{here}` does not exist"))?
            }
            Value::Sequence(items) => {
                let index: usize = key.parse().with_context(|| {
                    format!("--set {spec:?}: `{here}`: a list needs an index, got {key:?}")
                })?;
                let len = items.len();
                let item = items.get_mut(index).with_context(|| {
                    format!("--set {spec:?}: `{here}`: index {index} outside a list of {len}")
                })?;
                if last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            _ => bail!("--set {spec:?}: `{}` is not a mapping or a list", keys[..i].join(".")),
        };
    }
    unreachable!("the loop returns at the last key")
}

impl Experiment {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            matches!(self.stage, 2 | 3),
            "stage {} (2: 3D question answering, 3: RoomPlan actions)",
            self.stage
        );
        let d = &self.data;
        ensure!(!d.datasets.is_empty(), "data.datasets is empty");
        for (i, ds) in d.datasets.iter().enumerate() {
            ensure!(
                ds.weight.is_finite() && ds.weight > 0.0,
                "data.datasets[{i}].weight {} must be positive",
                ds.weight
            );
            ensure!(
                !d.datasets[..i].iter().any(|o| o.name == ds.name),
                "data.datasets[{i}].name {:?} is used twice",
                ds.name
            );
        }
        ensure!(d.views_per_sample > 0, "data.views_per_sample must be positive");
        ensure!(
            (0.0..1.0).contains(&d.view_dropout),
            "data.view_dropout {} is outside [0, 1)",
            d.view_dropout
        );
        let t = &self.train;
        ensure!(
            t.micro_batch > 0 && t.grad_accum > 0,
            "train.micro_batch and train.grad_accum must be positive"
        );
        ensure!(
            t.max_steps.is_some() != t.epochs.is_some(),
            "give exactly one of train.max_steps and train.epochs"
        );
        ensure!(t.checkpoint_every > 0, "train.checkpoint_every must be positive");
        ensure!(t.keep_checkpoints > 0, "train.keep_checkpoints must be positive");
        ensure!(
            !t.gradient_checkpointing || self.model.lora.dropout == 0.0,
            "train.gradient_checkpointing needs model.lora.dropout 0 (a recomputed layer would draw \
             other dropout masks), got {}",
            self.model.lora.dropout
        );
        let s = &self.schedule;
        ensure!(
            (0.0..=1.0).contains(&s.warmup_fraction) && (0.0..=1.0).contains(&s.min_lr_ratio),
            "schedule.warmup_fraction and schedule.min_lr_ratio must be within [0, 1]"
        );
        let o = &self.optim;
        ensure!(
            o.lr_lora >= 0.0 && o.lr_projector >= 0.0 && o.weight_decay >= 0.0,
            "optim: learning rates and weight decay must not be negative"
        );
        ensure!(
            !self.model.vggt.layers.is_empty(),
            "model.vggt.layers must name at least one aggregator layer"
        );
        ensure!(
            self.model.vggt.weights.files.contains_key(&self.model.vggt.checkpoint),
            "model.vggt.checkpoint {:?} is not one of model.vggt.weights.files",
            self.model.vggt.checkpoint
        );
        Ok(())
    }

    /// The experiment as YAML (what a run directory records as `experiment.yaml`).
    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_fields_list_items_and_new_optional_keys() {
        let mut doc: Value = serde_yaml::from_str("a:\n  b: 1\n  list:\n    - {x: 1}\n    - {x: 2}\n").unwrap();
        apply_override(&mut doc, "a.b=2.5").unwrap();
        apply_override(&mut doc, "a.list.1.x=[1, 2]").unwrap();
        apply_override(&mut doc, "a.new=null").unwrap();
        let expected: Value =
            serde_yaml::from_str("a:\n  b: 2.5\n  list:\n    - {x: 1}\n    - {x: [1, 2]}\n  new: null\n").unwrap();
        assert_eq!(doc, expected);
        let err = apply_override(&mut doc, "a.missing.x=1").unwrap_err().to_string();
        assert!(err.contains("`a.missing` does not exist"), "{err}");
        let err = apply_override(&mut doc, "a.list.7.x=1").unwrap_err().to_string();
        assert!(err.contains("index 7 outside a list of 2"), "{err}");
        let err = apply_override(&mut doc, "a.b").unwrap_err().to_string();
        assert!(err.contains("expected key.path=value"), "{err}");
    }

    #[test]
    fn gradient_checkpointing_is_accepted_without_lora_dropout_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let mut exp = load(&dir.join("tiny.yaml"), &[]).unwrap().experiment;
        exp.train.gradient_checkpointing = true;
        exp.model.lora.dropout = 0.0;
        exp.validate().unwrap();
        exp.model.lora.dropout = 0.05;
        let err = format!("{:#}", exp.validate().unwrap_err());
        assert!(err.contains("train.gradient_checkpointing needs model.lora.dropout 0"), "{err}");
    }

    #[test]
    fn the_shipped_experiments_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        for name in ["tiny", "stage2", "stage3"] {
            let loaded = load(&dir.join(format!("{name}.yaml")), &[]).unwrap();
            assert_eq!(loaded.experiment.name, name);
        }
        let stage3 = load(&dir.join("stage3.yaml"), &[]).unwrap().experiment;
        assert_eq!((stage3.stage, stage3.model.lora.r, stage3.data.views_per_sample), (3, 32, 10));
        assert_eq!(stage3.model.lora.target_modules, ["q_proj", "v_proj", "o_proj"]);
        let stage2 = load(&dir.join("stage2.yaml"), &[]).unwrap().experiment;
        assert_eq!((stage2.optim.lr_lora, stage2.optim.lr_projector), (5e-6, 1e-4));
        assert_eq!((stage2.data.views_per_sample, stage2.data.view_dropout), (8, 0.3));
    }
}
