//! LoRA adapters for the Qwen3 projections, as `peft` does them: `y = W x + s · B (A x)` with
//! `s = α / r` (or `α / √r` with rsLoRA), A `[r, in]` initialised kaiming-uniform (U(±1/√in)),
//! B `[out, r]` zeros, dropout on the adapter input only. Saved and loaded in PEFT's format
//! (`adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`), so PEFT loads them unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::model::frozen;
use crate::model::qwen3::{self, Qwen3};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before the base model's own parameter names.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Where LoRA dropout masks come from: one seeded ChaCha stream shared by every adapter of a
/// [`Lora`], so that a run with the same seed draws the same masks in the same order. (candle's CPU
/// `Tensor::rand` cannot be seeded.) Masks are drawn on the host and copied to the input's device:
/// at 4B scale with dropout on, a device-side generator would be cheaper.
#[derive(Debug, Clone)]
pub struct DropoutRng(Arc<Mutex<ChaCha8Rng>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(Self::stream(seed))))
    }

    /// ChaCha stream 1 of `seed`: [`Lora::init`] draws A from stream 0 of the same seed.
    fn stream(seed: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        rng
    }

    /// Restarts the shared stream from `seed` (every clone sees it).
    pub fn reseed(&self, seed: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Self::stream(seed);
    }

    /// An inverted-dropout mask shaped like `like`: 0 with probability `p`, else 1 / (1 − p).
    fn mask(&self, like: &Tensor, p: f64) -> Result<Tensor> {
        let keep_scale = (1.0 / (1.0 - p)) as f32;
        let values: Vec<f32> = {
            let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
            (0..like.elem_count())
                .map(|_| {
                    if rng.random::<f64>() < p {
                        0.0
                    } else {
                        keep_scale
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(values, like.shape(), &Device::Cpu)?;
        Ok(mask.to_device(like.device())?.to_dtype(like.dtype())?)
    }
}

/// The trainable pair of one adapted projection.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`.
    pub b: Var,
    pub scaling: f64,
    pub dropout: f64,
    pub dropout_rng: DropoutRng,
}

impl LoraLayer {
    pub fn in_features(&self) -> Result<usize> {
        Ok(self.a.dims2()?.1)
    }

    pub fn out_features(&self) -> Result<usize> {
        Ok(self.b.dims2()?.0)
    }

    /// `s · B (A dropout(x))` over the last axis of `x`; dropout only when `train`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if train && self.dropout > 0.0 {
            let mask = self.dropout_rng.mask(x, self.dropout)?;
            frozen::broadcast_mul(x, &mask)?
        } else {
            x.clone()
        };
        // The scaling is applied to the rank-r intermediate, not to the [.., out] result: the same
        // product, r instead of `out` multiplications per row.
        let h = (frozen::linear(&x, self.a.as_tensor())? * self.scaling)?;
        Ok(frozen::linear(&h, self.b.as_tensor())?)
    }

    /// `s · B A`, the update merged into the frozen weight, f32 and detached.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let b = self.b.as_tensor().detach().to_dtype(DType::F32)?;
        let a = self.a.as_tensor().detach().to_dtype(DType::F32)?;
        Ok((b.matmul(&a)? * self.scaling)?)
    }
}

/// The LoRA hyper-parameters PEFT's `LoraConfig` carries that this implementation honours.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Projection names (`q_proj`, ..., `down_proj`); applied in every layer.
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    /// Other fields of a loaded `adapter_config.json`, written back unchanged.
    pub extra: Map<String, Value>,
}

impl Default for LoraConfig {
    /// r 16, α 32, no dropout, on q/k/v/o.
    fn default() -> Self {
        Self {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: qwen3::ATTENTION_PROJECTIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            use_rslora: false,
            extra: Map::new(),
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    fn validate(&self, model: &qwen3::Config) -> Result<()> {
        ensure!(self.r > 0, "r must be positive");
        ensure!(
            (0.0..1.0).contains(&self.lora_dropout),
            "lora_dropout {} is outside [0, 1)",
            self.lora_dropout
        );
        ensure!(!self.target_modules.is_empty(), "target_modules is empty");
        for m in &self.target_modules {
            model
                .projection_shape(m)
                .with_context(|| format!("target module {m:?}"))?;
        }
        Ok(())
    }

    /// Parses PEFT's `adapter_config.json`, refusing settings that would change the maths here.
    pub fn from_peft_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .context("adapter config is not a JSON object")?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        ensure!(
            peft_type == "LORA",
            "peft_type {peft_type:?} (only LORA is supported)"
        );
        let flag = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
        // Every field must be one whose meaning is implemented here, or hold the value that means
        // "not used": an adapter that loads must compute what PEFT computes.
        for (key, value) in obj {
            check_peft_field(key, value)?;
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .context("missing integer field r")? as usize;
        let lora_alpha = get("lora_alpha")
            .and_then(Value::as_f64)
            .context("missing field lora_alpha")?;
        let lora_dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let target_modules = match get("target_modules") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .context("target_modules holds a non-string")
                })
                .collect::<Result<Vec<_>>>()?,
            Some(other) => {
                bail!("target_modules {other} (only a list of module names is supported)")
            }
            None => bail!("missing field target_modules"),
        };
        let known = [
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "use_rslora",
        ];
        let extra = obj
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            use_rslora: flag("use_rslora"),
            extra,
        })
    }

    /// The `adapter_config.json` content: PEFT's fields for this adapter, plus any loaded extras.
    pub fn to_peft_json(&self) -> Value {
        let mut targets = self.target_modules.clone();
        targets.sort();
        // PEFT types lora_alpha as a number that is usually an int: keep ints as ints.
        let alpha = if self.lora_alpha.fract() == 0.0 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        let mut obj = json!({
            "alpha_pattern": {},
            "base_model_name_or_path": null,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": alpha,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora,
        });
        let map = obj.as_object_mut().expect("literal object");
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        let sorted: BTreeMap<_, _> = map.clone().into_iter().collect();
        Value::Object(sorted.into_iter().collect())
    }
}

/// How this implementation treats a field of PEFT's `LoraConfig`.
enum PeftField {
    /// Metadata, or implemented here: any value.
    Any,
    /// Has no effect here because the field it modifies is refused unless unused (e.g.
    /// `megatron_core` without `megatron_config`; the governing field is named in the table).
    Ignored,
    /// Not implemented: only its "not used" value (null, false, `{}`, `[]`, or the one given) is
    /// accepted; the text says what the field would do.
    OnlyUnused(Option<&'static str>, &'static str),
}

/// The fields of PEFT's `LoraConfig` (0.21) and their treatment. Fields not listed are refused.
const PEFT_FIELDS: [(&str, PeftField); 43] = {
    use PeftField::*;
    [
        ("auto_mapping", Any),
        ("base_model_name_or_path", Any),
        ("revision", Any),
        ("task_type", Any),
        ("inference_mode", Any),
        ("peft_version", Any),
        ("peft_type", Any), // checked to be LORA
        ("runtime_config", Any),
        ("r", Any),
        ("lora_alpha", Any),
        ("lora_dropout", Any),
        ("target_modules", Any), // a list of names; checked when read
        ("use_rslora", Any),
        ("init_lora_weights", Any), // checked by `check_init_lora_weights`
        ("layers_pattern", Ignored), // without layers_to_transform
        ("megatron_core", Ignored), // without megatron_config
        ("qalora_group_size", Ignored), // without use_qalora
        ("ensure_weight_tying", Ignored), // without modules_to_save
        ("use_dora", OnlyUnused(None, "DoRA is not implemented")),
        ("fan_in_fan_out", OnlyUnused(None, "not a Qwen3 layout")),
        ("lora_bias", OnlyUnused(None, "not implemented")),
        (
            "bias",
            OnlyUnused(Some("none"), "only \"none\" is supported"),
        ),
        (
            "rank_pattern",
            OnlyUnused(None, "per-module ranks are not supported"),
        ),
        (
            "alpha_pattern",
            OnlyUnused(None, "per-module ranks are not supported"),
        ),
        ("layers_to_transform", OnlyUnused(None, "is not supported")),
        ("modules_to_save", OnlyUnused(None, "is not supported")),
        ("layer_replication", OnlyUnused(None, "is not supported")),
        ("exclude_modules", OnlyUnused(None, "is not supported")),
        ("target_parameters", OnlyUnused(None, "is not supported")),
        (
            "trainable_token_indices",
            OnlyUnused(None, "trainable token embeddings are not implemented"),
        ),
        (
            "alora_invocation_tokens",
            OnlyUnused(
                None,
                "aLoRA applies the adapter only after its invocation tokens; not implemented",
            ),
        ),
        ("use_qalora", OnlyUnused(None, "QALoRA is not implemented")),
        (
            "loftq_config",
            OnlyUnused(None, "LoftQ changes the base weights; not implemented"),
        ),
        (
            "eva_config",
            OnlyUnused(None, "EVA initialisation is not implemented"),
        ),
        (
            "corda_config",
            OnlyUnused(None, "CorDA changes the base weights; not implemented"),
        ),
        (
            "lora_ga_config",
            OnlyUnused(None, "LoRA-GA changes the base weights; not implemented"),
        ),
        (
            "megatron_config",
            OnlyUnused(None, "Megatron parallel layers are not implemented"),
        ),
        (
            "arrow_config",
            OnlyUnused(None, "Arrow routing is not implemented"),
        ),
        ("kasa_config", OnlyUnused(None, "KaSA is not implemented")),
        (
            "monteclora_config",
            OnlyUnused(None, "MonteCLoRA is not implemented"),
        ),
        ("use_bdlora", OnlyUnused(None, "BD-LoRA is not implemented")),
        (
            "velora_config",
            OnlyUnused(None, "VeLoRA is not implemented"),
        ),
        (
            "bdlora_config",
            OnlyUnused(None, "BD-LoRA is not implemented"),
        ),
    ]
};

/// Whether a value means "not used": null, false, an empty object or list.
fn is_unused(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Refuses a field of `adapter_config.json` whose meaning is not implemented, by name.
fn check_peft_field(key: &str, value: &Value) -> Result<()> {
    let Some((_, rule)) = PEFT_FIELDS.iter().find(|(k, _)| *k == key) else {
        bail!("{key} {value}: a field this LoRA implementation does not know; refused rather than computing something else");
    };
    match rule {
        PeftField::Any | PeftField::Ignored => {}
        PeftField::OnlyUnused(unused, why) => {
            let fine = is_unused(value) || unused.is_some_and(|u| value.as_str() == Some(u));
            ensure!(fine, "{key} {value} ({why})");
        }
    }
    if key == "init_lora_weights" {
        check_init_lora_weights(value)?;
    }
    Ok(())
}

/// `init_lora_weights`: `true`, `false` and `"gaussian"` only choose the starting A and B, so the
/// saved matrices are the whole adapter. PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA also change the base
/// weights at initialisation: an adapter saved without PEFT's conversion to plain LoRA needs those
/// changed weights, and would compute something else on the original model.
fn check_init_lora_weights(value: &Value) -> Result<()> {
    match value {
        Value::Bool(_) | Value::Null => Ok(()),
        Value::String(s) if s == "gaussian" => Ok(()),
        Value::String(s)
            if s.starts_with("pissa")
                || ["olora", "corda", "loftq", "lora_ga"].contains(&s.as_str()) =>
        {
            bail!(
                "init_lora_weights {value} (this initialisation changes the base weights; convert the adapter to plain LoRA with PEFT first: save_pretrained(..., path_initial_model_for_weight_conversion=...))"
            )
        }
        other => bail!(
            "init_lora_weights {other} (not implemented; only true, false and \"gaussian\" are)"
        ),
    }
}

/// Which matrix of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    A,
    B,
}

/// PEFT's file key for a projection path: `base_model.model.<path>.lora_A.weight`.
pub fn peft_key(path: &str, which: Matrix) -> String {
    let m = match which {
        Matrix::A => "A",
        Matrix::B => "B",
    };
    format!("{PEFT_PREFIX}{path}.lora_{m}.weight")
}

/// All adapters of a model, keyed by projection path (`model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone)]
pub struct Lora {
    config: LoraConfig,
    layers: BTreeMap<String, LoraLayer>,
    dropout_rng: DropoutRng,
}

impl Lora {
    /// Fresh adapters as PEFT initialises them (A kaiming-uniform from `seed`, B zeros), f32.
    pub fn init(
        config: LoraConfig,
        model: &qwen3::Config,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        config.validate(model)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dropout_rng = DropoutRng::new(seed);
        let mut layers = BTreeMap::new();
        for layer in 0..model.num_hidden_layers {
            for module in &config.target_modules {
                let (in_dim, out_dim) = model.projection_shape(module)?;
                // kaiming_uniform_(a=√5) on [r, in]: bound = √(1/3)·√(3/in) = 1/√in.
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a: Vec<f32> = (0..config.r * in_dim)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, in_dim), device)?)?;
                let b = Var::zeros((out_dim, config.r), DType::F32, device)?;
                let l = LoraLayer {
                    a,
                    b,
                    scaling: config.scaling(),
                    dropout: config.lora_dropout,
                    dropout_rng: dropout_rng.clone(),
                };
                layers.insert(qwen3::projection_path(layer, module), l);
            }
        }
        Ok(Self {
            config,
            layers,
            dropout_rng,
        })
    }

    /// Loads a PEFT adapter folder; every targeted projection of every layer must be present with
    /// the right shapes, and nothing else. Weights become f32 variables.
    pub fn load(dir: &Path, model: &qwen3::Config, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
        let config = LoraConfig::from_peft_json(&value)
            .with_context(|| format!("{}", cfg_path.display()))?;
        config
            .validate(model)
            .with_context(|| format!("{}", cfg_path.display()))?;
        let dropout_rng = DropoutRng::new(0);
        let w_path = dir.join(ADAPTER_WEIGHTS);
        let mut tensors = candle_core::safetensors::load(&w_path, device)
            .with_context(|| format!("reading {}", w_path.display()))?;
        let mut layers = BTreeMap::new();
        for layer in 0..model.num_hidden_layers {
            for module in &config.target_modules {
                let path = qwen3::projection_path(layer, module);
                let (in_dim, out_dim) = model.projection_shape(module)?;
                let mut take = |which: Matrix, shape: (usize, usize)| -> Result<Var> {
                    let key = peft_key(&path, which);
                    let t = tensors
                        .remove(&key)
                        .with_context(|| format!("{}: missing tensor {key}", w_path.display()))?;
                    ensure!(
                        t.dims2().ok() == Some(shape),
                        "{}: {key} has shape {:?}, expected {shape:?}",
                        w_path.display(),
                        t.shape()
                    );
                    Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
                };
                let a = take(Matrix::A, (config.r, in_dim))?;
                let b = take(Matrix::B, (out_dim, config.r))?;
                layers.insert(
                    path,
                    LoraLayer {
                        a,
                        b,
                        scaling: config.scaling(),
                        dropout: config.lora_dropout,
                        dropout_rng: dropout_rng.clone(),
                    },
                );
            }
        }
        if let Some(extra) = tensors.keys().min() {
            bail!(
                "{}: unexpected tensor {extra} ({} not used)",
                w_path.display(),
                tensors.len()
            );
        }
        Ok(Self {
            config,
            layers,
            dropout_rng,
        })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT key names, metadata
    /// `format: pt` as PEFT writes) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&self.config.to_peft_json())?;
        std::fs::write(&cfg_path, text + "\n")
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        let tensors = self.named_tensors();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let w_path = dir.join(ADAPTER_WEIGHTS);
        safetensors::serialize_to_file(
            tensors.iter().map(|(k, t)| (k.as_str(), t)),
            Some(metadata),
            &w_path,
        )
        .with_context(|| format!("writing {}", w_path.display()))?;
        Ok(())
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Adapters by projection path.
    pub fn layers(&self) -> &BTreeMap<String, LoraLayer> {
        &self.layers
    }

    /// Every trainable variable with its PEFT key, in key order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .layers
            .iter()
            .flat_map(|(path, l)| {
                [
                    (peft_key(path, Matrix::A), l.a.clone()),
                    (peft_key(path, Matrix::B), l.b.clone()),
                ]
            })
            .collect();
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }

    /// Current values by PEFT key (detached).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect()
    }

    /// Puts every adapter into `model` (sharing the variables, so training updates are seen).
    pub fn attach(&self, model: &mut Qwen3) -> Result<()> {
        for (path, l) in &self.layers {
            model.set_lora(path, Some(l.clone()))?;
        }
        Ok(())
    }

    /// Restarts the dropout masks of every adapter (attached copies included) from `seed`. Adapters
    /// start from the seed given to [`Lora::init`], or 0 when loaded.
    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_rng.reseed(seed);
    }

    /// Removes this adapter's layers from `model`.
    pub fn detach(&self, model: &mut Qwen3) -> Result<()> {
        for path in self.layers.keys() {
            model.set_lora(path, None)?;
        }
        Ok(())
    }

    /// Folds every adapter into `model`'s frozen weights (attached or not) for inference.
    pub fn merge_into(&self, model: &mut Qwen3) -> Result<()> {
        for (path, l) in &self.layers {
            model.set_lora(path, Some(l.clone()))?;
            model.merge_lora(path)?;
        }
        Ok(())
    }
}
