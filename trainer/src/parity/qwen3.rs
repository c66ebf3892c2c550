//! Every check of a Qwen3 golden-tensor folder laid out like `shared/parity/qwen3`:
//! `base/` (HF model folder), `lora/` (PEFT adapter folder), `inputs.safetensors`,
//! `base_outputs.safetensors`, `lora_outputs.safetensors`, `fixture.json`. Model sizes come from
//! `base/config.json`, LoRA settings from `lora/adapter_config.json`; which outputs exist decides
//! which checks run, so a new fixture made the same way needs no code change.
//!
//! Beyond the golden outputs it checks properties that need no reference: KV-cache decoding equals
//! the full-sequence logits, a padded batch equals its rows run alone, the adapter re-saves to
//! identical tensors, merged weights give the adapted logits, and bf16 frozen weights stay close.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;

use crate::model::hub::{Fetcher, ModelSource};
use crate::model::lora::Lora;
use crate::model::qwen3::{causal_lm_loss, ForwardOptions, Input, Qwen3};
use crate::parity::{max_abs_diff, ParityReport, RunOptions};

/// Gates per kind of output (README of the shared fixture); `fixture.json` may override them with a
/// `"tolerances"` object using the same field names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    pub logits: f64,
    pub hidden_states: f64,
    pub loss: f64,
    pub grads: f64,
    /// Re-saved adapter tensors must be bit-identical.
    pub resave: f64,
    /// bf16 frozen weights + f32 LoRA against the f32 reference (absolute; the fallback when no
    /// PyTorch bf16 reference is given).
    pub bf16_logits: f64,
    pub bf16_loss: f64,
    pub bf16_grads: f64,
    /// bf16 frozen weights + f32 LoRA against PyTorch's own bf16 run, relative to each tensor's
    /// largest |value|.
    pub bf16_relative: f64,
    /// The same for the loss (one value, where bf16 errors average out).
    pub bf16_loss_relative: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            logits: 5e-5,
            hidden_states: 5e-5,
            loss: 1e-5,
            grads: 1e-5,
            resave: 0.0,
            // Measured on the shared fixture: 0.105, 6.0e-3, 2.1e-2 (max |logit| 9.3, max |grad| 0.9).
            bf16_logits: 0.15,
            bf16_loss: 0.02,
            bf16_grads: 0.05,
            // Measured on the shared fixture (tools parity --bf16-reference, CPU): logits 1.7e-2,
            // gradients ≤ 3.9e-2 of their scale, loss 1.2e-4 (PyTorch's bf16 run itself is 2.0e-2,
            // 5.2e-2 and 1.1e-4 from its f32 run).
            bf16_relative: 6e-2,
            bf16_loss_relative: 1e-3,
        }
    }
}

impl Tolerances {
    fn with_overrides(mut self, fixture: &Value) -> Result<Self> {
        let Some(obj) = fixture.get("tolerances").and_then(Value::as_object) else {
            return Ok(self);
        };
        for (k, v) in obj {
            let v = v
                .as_f64()
                .with_context(|| format!("tolerances.{k} is not a number"))?;
            let slot = match k.as_str() {
                "logits" => &mut self.logits,
                "hidden_states" => &mut self.hidden_states,
                "loss" => &mut self.loss,
                "grads" => &mut self.grads,
                "resave" => &mut self.resave,
                "bf16_logits" => &mut self.bf16_logits,
                "bf16_loss" => &mut self.bf16_loss,
                "bf16_grads" => &mut self.bf16_grads,
                "bf16_relative" => &mut self.bf16_relative,
                "bf16_loss_relative" => &mut self.bf16_loss_relative,
                other => bail!("unknown tolerance {other:?}"),
            };
            *slot = v;
        }
        Ok(self)
    }
}

/// Is `folder` a Qwen3 fixture (has `base/config.json` with model_type qwen3)?
pub fn is_fixture(folder: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(folder.join("base").join("config.json")) else {
        return false;
    };
    serde_json::from_str::<Value>(&text)
        .is_ok_and(|v| v.get("model_type").and_then(Value::as_str) == Some("qwen3"))
}

/// The tensors of a fixture folder.
struct Fixture {
    folder: PathBuf,
    tolerances: Tolerances,
    inputs: HashMap<String, Tensor>,
    base: HashMap<String, Tensor>,
    lora: Option<HashMap<String, Tensor>>,
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .with_context(|| format!("reading {}", path.display()))
}

impl Fixture {
    fn open(folder: &Path, device: &Device) -> Result<Self> {
        let fixture_json = folder.join("fixture.json");
        let meta: Value = match std::fs::read_to_string(&fixture_json) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", fixture_json.display()))?,
            Err(_) => Value::Null,
        };
        let tolerances = Tolerances::default()
            .with_overrides(&meta)
            .with_context(|| format!("{}", fixture_json.display()))?;
        let lora_path = folder.join("lora_outputs.safetensors");
        Ok(Self {
            folder: folder.to_path_buf(),
            tolerances,
            inputs: load_tensors(&folder.join("inputs.safetensors"), device)?,
            base: load_tensors(&folder.join("base_outputs.safetensors"), device)?,
            lora: if lora_path.is_file() {
                Some(load_tensors(&lora_path, device)?)
            } else {
                None
            },
        })
    }

    fn input(&self, key: &str) -> Result<&Tensor> {
        self.inputs
            .get(key)
            .with_context(|| format!("{}: inputs.safetensors has no {key}", self.folder.display()))
    }
}

/// Runs every check the folder supports (f32 on CPU) and reports the max abs diff of each.
pub fn run(folder: &Path) -> Result<ParityReport> {
    run_with(folder, &RunOptions::default())
}

/// [`run`] on `opts.device`, with the bf16 checks against `opts.bf16_reference` when given.
pub fn run_with(folder: &Path, opts: &RunOptions) -> Result<ParityReport> {
    let device = opts.device.clone();
    let fx = Fixture::open(folder, &device)?;
    let bf16_reference = match &opts.bf16_reference {
        Some(dir) => Some(Bf16Reference::open(dir, folder, &device)?),
        None => None,
    };
    let tol = fx.tolerances;
    let mut report = ParityReport::new("qwen3", folder);
    let files = Fetcher::new(ModelSource::Local(folder.join("base")))?.model_files()?;
    let mut model = Qwen3::load(&files.config, &files.weights, DType::F32, &device)?;

    check_embeds_built(&model, &fx, &mut report)?;
    check_outputs(&model, &fx, &fx.base, "base", &mut report)?;
    check_consistency(&model, &fx, "base", &mut report)?;

    let Some(lora_out) = &fx.lora else {
        return Ok(report);
    };
    let lora = Lora::load(&folder.join("lora"), model.config(), &device)?;
    lora.attach(&mut model)?;
    check_outputs(&model, &fx, lora_out, "lora", &mut report)?;
    let f32_gates = Gates {
        logits: tol.logits,
        loss: tol.loss,
        grads: tol.grads,
    };
    check_training(&model, &lora, &fx, lora_out, "lora", f32_gates, &mut report)?;
    check_consistency(&model, &fx, "lora", &mut report)?;
    check_resave(&lora, model.config(), &mut report, tol.resave)?;

    // Merged weights must reproduce the adapted logits.
    if let Some(reference) = lora_out.get("logits") {
        let mut merged = model.clone();
        lora.merge_into(&mut merged)?;
        let logits = merged.forward(Input::Ids(fx.input("input_ids")?), None)?;
        report.compare("lora/merged logits", &logits, reference, tol.logits)?;
    }

    // bf16 frozen weights with the f32 adapter: against PyTorch's bf16 run when given (relative to
    // the values' scale), else against the f32 references (absolute).
    let mut half = Qwen3::load(&files.config, &files.weights, DType::BF16, &device)?;
    let lora_half = Lora::load(&folder.join("lora"), half.config(), &device)?;
    lora_half.attach(&mut half)?;
    if let Some(reference) = &bf16_reference {
        check_bf16_against_torch(&half, &lora_half, &fx, reference, &mut report)?;
        return Ok(report);
    }
    if let Some(reference) = lora_out.get("logits") {
        let logits = half.forward(Input::Ids(fx.input("input_ids")?), None)?;
        report.compare("bf16/lora logits", &logits, reference, tol.bf16_logits)?;
    }
    let bf16_gates = Gates {
        logits: tol.bf16_logits,
        loss: tol.bf16_loss,
        grads: tol.bf16_grads,
    };
    check_training(
        &half,
        &lora_half,
        &fx,
        lora_out,
        "bf16",
        bf16_gates,
        &mut report,
    )?;
    Ok(report)
}

/// `inputs_embeds` rebuilt from `embeds.prefix_ids`, `embeds.injected`, `embeds.suffix_ids` with
/// [`Qwen3::embed_with_slots`] (the way the fused model injects image embeddings).
fn check_embeds_built(model: &Qwen3, fx: &Fixture, report: &mut ParityReport) -> Result<()> {
    let (Some(prefix), Some(injected), Some(suffix), Some(reference)) = (
        fx.inputs.get("embeds.prefix_ids"),
        fx.inputs.get("embeds.injected"),
        fx.inputs.get("embeds.suffix_ids"),
        fx.inputs.get("inputs_embeds"),
    ) else {
        return Ok(());
    };
    let (p, n) = (prefix.dim(1)?, injected.dim(1)?);
    let slot_ids = Tensor::zeros((prefix.dim(0)?, n), prefix.dtype(), prefix.device())?;
    let ids = Tensor::cat(&[prefix, &slot_ids, suffix], 1)?;
    let slots = vec![(p..p + n).collect::<Vec<_>>(); ids.dim(0)?];
    let built = model.embed_with_slots(&ids, &slots, injected)?;
    report.compare(
        "inputs/inputs_embeds (embed + injected)",
        &built,
        reference,
        0.0,
    )
}

/// Golden forward outputs: `logits` (ids), `logits_embeds` (embeddings), `hidden_states.N`.
fn check_outputs(
    model: &Qwen3,
    fx: &Fixture,
    outputs: &HashMap<String, Tensor>,
    tag: &str,
    report: &mut ParityReport,
) -> Result<()> {
    let tol = fx.tolerances;
    let wants_hidden = outputs.keys().any(|k| k.starts_with("hidden_states."));
    if outputs.contains_key("logits") || wants_hidden {
        let out = model.forward_with(
            Input::Ids(fx.input("input_ids")?),
            None,
            ForwardOptions {
                output_hidden_states: wants_hidden,
                train: false,
            },
        )?;
        if let Some(reference) = outputs.get("logits") {
            report.compare(format!("{tag}/logits"), &out.logits, reference, tol.logits)?;
        }
        let mut hidden_keys: Vec<(usize, &String)> = outputs
            .keys()
            .filter_map(|k| {
                k.strip_prefix("hidden_states.")
                    .and_then(|i| i.parse().ok())
                    .map(|i| (i, k))
            })
            .collect();
        hidden_keys.sort();
        for (i, key) in hidden_keys {
            let ours = out.hidden_states.get(i).with_context(|| {
                format!(
                    "{key}: the model has only {} hidden states",
                    out.hidden_states.len()
                )
            })?;
            report.compare(
                format!("{tag}/{key}"),
                ours,
                &outputs[key],
                tol.hidden_states,
            )?;
        }
    }
    if let Some(reference) = outputs.get("logits_embeds") {
        let logits = model.forward(Input::Embeds(fx.input("inputs_embeds")?), None)?;
        report.compare(
            format!("{tag}/logits_embeds"),
            &logits,
            reference,
            tol.logits,
        )?;
    }
    Ok(())
}

/// Tolerances of one training check.
#[derive(Debug, Clone, Copy)]
struct Gates {
    logits: f64,
    loss: f64,
    grads: f64,
}

/// `train.loss`, `train.logits` and every `grad.<adapter key>`.
fn check_training(
    model: &Qwen3,
    lora: &Lora,
    fx: &Fixture,
    outputs: &HashMap<String, Tensor>,
    tag: &str,
    gates: Gates,
    report: &mut ParityReport,
) -> Result<()> {
    let Gates {
        logits: logits_tol,
        loss: loss_tol,
        grads: grad_tol,
    } = gates;
    let Some(ref_loss) = outputs.get("train.loss") else {
        return Ok(());
    };
    let ids = fx.input("train.input_ids")?;
    let labels = fx.input("train.labels")?;
    let loss = model.loss(Input::Ids(ids), None, labels, true)?;
    report.compare(
        format!("{tag}/train.loss"),
        &loss.reshape(1)?,
        ref_loss,
        loss_tol,
    )?;
    if let Some(reference) = outputs.get("train.logits") {
        let logits = model.forward(Input::Ids(ids), None)?;
        report.compare(
            format!("{tag}/train.logits"),
            &logits,
            reference,
            logits_tol,
        )?;
        // The loss from full logits (transformers' formula) must agree with the sparse one.
        report.compare(
            format!("{tag}/train.loss (from logits)"),
            &causal_lm_loss(&logits, labels)?.reshape(1)?,
            ref_loss,
            loss_tol,
        )?;
    }
    let grads = loss.backward()?;
    let vars: HashMap<String, candle_core::Var> = lora.vars().into_iter().collect();
    let mut keys: Vec<&String> = outputs.keys().filter(|k| k.starts_with("grad.")).collect();
    keys.sort();
    for key in keys {
        let name = &key["grad.".len()..];
        let var = vars
            .get(name)
            .with_context(|| format!("{key}: the adapter has no tensor {name}"))?;
        let grad = grads
            .get(var.as_tensor())
            .with_context(|| format!("{key}: no gradient reached {name}"))?;
        report.compare(format!("{tag}/{key}"), grad, &outputs[key], grad_tol)?;
    }
    Ok(())
}

/// KV-cache decoding and padded batches against the plain forward (no golden tensor needed).
fn check_consistency(
    model: &Qwen3,
    fx: &Fixture,
    tag: &str,
    report: &mut ParityReport,
) -> Result<()> {
    let tol = fx.tolerances.logits;
    let ids = fx.input("input_ids")?;
    let full = model.forward(Input::Ids(ids), None)?;
    let (b, t) = ids.dims2()?;
    ensure!(
        t >= 2,
        "input_ids needs at least 2 positions for the cache check"
    );

    // Prefix of half the sequence, then one token at a time.
    let prefix = t / 2;
    let mut cache = model.new_cache(b);
    let mut pieces =
        vec![model.forward_cached(Input::Ids(&ids.narrow(1, 0, prefix)?), None, &mut cache)?];
    for i in prefix..t {
        pieces.push(model.forward_cached(Input::Ids(&ids.narrow(1, i, 1)?), None, &mut cache)?);
    }
    report.compare(
        format!("{tag}/kv-cache decode vs full logits"),
        &Tensor::cat(&pieces, 1)?,
        &full,
        tol,
    )?;

    // The same with embeddings input.
    if let Ok(embeds) = fx.input("inputs_embeds") {
        let full_e = model.forward(Input::Embeds(embeds), None)?;
        let te = embeds.dim(1)?;
        let mut cache = model.new_cache(embeds.dim(0)?);
        let mut pieces = vec![model.forward_cached(
            Input::Embeds(&embeds.narrow(1, 0, te - 1)?),
            None,
            &mut cache,
        )?];
        pieces.push(model.forward_cached(
            Input::Embeds(&embeds.narrow(1, te - 1, 1)?),
            None,
            &mut cache,
        )?);
        report.compare(
            format!("{tag}/kv-cache decode vs full logits (embeds)"),
            &Tensor::cat(&pieces, 1)?,
            &full_e,
            tol,
        )?;
    }

    // Row 0 shortened to `keep` tokens and padded (left, then right) in a batch with the full row 1.
    let keep = t - t / 3;
    let short = ids.i((0..1, 0..keep))?;
    let alone = model.forward(Input::Ids(&short), None)?;
    let pad_ids = Tensor::zeros((1, t - keep), ids.dtype(), ids.device())?;
    let ones = |n: usize| Tensor::ones((1, n), DType::U8, ids.device());
    let zeros = |n: usize| Tensor::zeros((1, n), DType::U8, ids.device());
    let other = ids.i((b - 1..b, ..))?;
    let mut worst = 0f64;
    for left in [true, false] {
        let (row, mask) = if left {
            (
                Tensor::cat(&[&pad_ids, &short], 1)?,
                Tensor::cat(&[&zeros(t - keep)?, &ones(keep)?], 1)?,
            )
        } else {
            (
                Tensor::cat(&[&short, &pad_ids], 1)?,
                Tensor::cat(&[&ones(keep)?, &zeros(t - keep)?], 1)?,
            )
        };
        let batch = Tensor::cat(&[&row, &other], 0)?;
        let mask = Tensor::cat(&[&mask, &ones(t)?], 0)?;
        let logits = model.forward(Input::Ids(&batch), Some(&mask))?;
        let start = if left { t - keep } else { 0 };
        worst = worst.max(max_abs_diff(
            &logits.i((0..1, start..start + keep))?,
            &alone,
        )?);
        worst = worst.max(max_abs_diff(
            &logits.i((1..2, ..))?,
            &full.i((b - 1..b, ..))?,
        )?);
    }
    report.push(format!("{tag}/padded batch vs rows alone"), worst, tol);
    Ok(())
}

/// Saving the loaded adapter and loading it again gives identical tensors and config.
fn check_resave(
    lora: &Lora,
    cfg: &crate::model::qwen3::Config,
    report: &mut ParityReport,
    tol: f64,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "roomplan-parity-resave-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    lora.save(&dir)?;
    let again = Lora::load(&dir, cfg, &Device::Cpu);
    let _ = std::fs::remove_dir_all(&dir);
    let again = again?;
    ensure!(
        again.config() == lora.config(),
        "re-saved adapter config differs: {:?} vs {:?}",
        again.config(),
        lora.config()
    );
    let before = lora.named_tensors();
    let after = again.named_tensors();
    ensure!(
        before.len() == after.len(),
        "re-saved adapter has {} tensors, the original {}",
        after.len(),
        before.len()
    );
    let mut worst = 0f64;
    for ((k1, t1), (k2, t2)) in before.iter().zip(&after) {
        ensure!(
            k1 == k2,
            "re-saved adapter key {k2} where {k1} was expected"
        );
        worst = worst.max(max_abs_diff(t1, t2)?);
    }
    report.push("lora/adapter re-save round trip", worst, tol);
    Ok(())
}

/// PyTorch's own bf16 outputs of a fixture (`tools/parity/qwen3_bf16.py`): `bf16_outputs.safetensors`
/// and `reference.json`, whose `fixture_sha256` pins the fixture files they were computed from.
struct Bf16Reference {
    dir: PathBuf,
    outputs: HashMap<String, Tensor>,
}

impl Bf16Reference {
    fn open(dir: &Path, fixture: &Path, device: &Device) -> Result<Self> {
        let record_path = dir.join("reference.json");
        let record: Value = serde_json::from_str(
            &std::fs::read_to_string(&record_path)
                .with_context(|| format!("reading {}", record_path.display()))?,
        )
        .with_context(|| format!("{}: invalid JSON", record_path.display()))?;
        let pinned = record
            .get("fixture_sha256")
            .and_then(Value::as_object)
            .with_context(|| format!("{}: no fixture_sha256 object", record_path.display()))?;
        ensure!(
            !pinned.is_empty(),
            "{}: fixture_sha256 is empty",
            record_path.display()
        );
        let mut wrong = Vec::new();
        for (file, digest) in pinned {
            let path = fixture.join(file);
            let bytes = std::fs::read(&path).with_context(|| {
                format!("{}: pinned by {}", path.display(), record_path.display())
            })?;
            let actual = roomplan_prep::manifest::sha256_hex(&bytes);
            let pinned = digest.as_str().unwrap_or("(not a string)");
            if actual != pinned {
                wrong.push(format!(
                    "{file} is {actual}, the reference was made from {pinned}"
                ));
            }
        }
        ensure!(
            wrong.is_empty(),
            "{} was not computed from the fixture {}: {} (regenerate it with tools/parity/qwen3_bf16.py)",
            dir.display(),
            fixture.display(),
            wrong.join("; ")
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            outputs: load_tensors(&dir.join("bf16_outputs.safetensors"), device)?,
        })
    }

    fn get(&self, key: &str) -> Result<&Tensor> {
        self.outputs.get(key).with_context(|| {
            format!(
                "{}: bf16_outputs.safetensors has no {key}",
                self.dir.display()
            )
        })
    }
}

/// Our bf16 path (bf16 frozen weights, f32 adapter) against PyTorch's bf16 run of the same inputs:
/// logits, training logits and every LoRA gradient within `bf16_relative` of the tensor's scale,
/// the loss within `bf16_loss_relative`.
fn check_bf16_against_torch(
    model: &Qwen3,
    lora: &Lora,
    fx: &Fixture,
    reference: &Bf16Reference,
    report: &mut ParityReport,
) -> Result<()> {
    let tol = fx.tolerances;
    let rel = tol.bf16_relative;
    let logits = model.forward(Input::Ids(fx.input("input_ids")?), None)?;
    report.compare_relative(
        "bf16 vs torch bf16/logits",
        &logits,
        reference.get("logits")?,
        rel,
    )?;
    if let Ok(embeds) = fx.input("inputs_embeds") {
        let logits = model.forward(Input::Embeds(embeds), None)?;
        report.compare_relative(
            "bf16 vs torch bf16/logits_embeds",
            &logits,
            reference.get("logits_embeds")?,
            rel,
        )?;
    }
    let ids = fx.input("train.input_ids")?;
    let labels = fx.input("train.labels")?;
    let loss = model.loss(Input::Ids(ids), None, labels, true)?;
    report.compare_relative(
        "bf16 vs torch bf16/train.loss",
        &loss.reshape(1)?,
        reference.get("train.loss")?,
        tol.bf16_loss_relative,
    )?;
    let logits = model.forward(Input::Ids(ids), None)?;
    report.compare_relative(
        "bf16 vs torch bf16/train.logits",
        &logits,
        reference.get("train.logits")?,
        rel,
    )?;
    let grads = loss.backward()?;
    let vars: HashMap<String, candle_core::Var> = lora.vars().into_iter().collect();
    let mut keys: Vec<&String> = reference
        .outputs
        .keys()
        .filter(|k| k.starts_with("grad."))
        .collect();
    keys.sort();
    ensure!(
        !keys.is_empty(),
        "{}: no gradients",
        reference.dir.display()
    );
    for key in keys {
        let name = &key["grad.".len()..];
        let var = vars
            .get(name)
            .with_context(|| format!("{key}: the adapter has no tensor {name}"))?;
        let grad = grads
            .get(var.as_tensor())
            .with_context(|| format!("{key}: no gradient reached {name}"))?;
        report.compare_relative(
            format!("bf16 vs torch bf16/{key}"),
            grad,
            &reference.outputs[key],
            rel,
        )?;
    }
    Ok(())
}
