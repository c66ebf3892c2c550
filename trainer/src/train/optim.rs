//! AdamW with parameter groups and a state that saves and resumes exactly, and gradient clipping by
//! global norm: candle's `AdamW` has none of these.
//!
//! The update is `torch.optim.AdamW`'s (decoupled weight decay, bias-corrected moments, ε outside
//! the square root, a step count per variable that only advances when the variable has a gradient):
//!
//! ```text
//! p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
//! p ← p − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
//! ```
//!
//! Moments are f32 whatever the variable's dtype. [`AdamW::save`] writes one safetensors file:
//! tensors `exp_avg.<var>` and `exp_avg_sq.<var>`, metadata `format` = [`STATE_FORMAT`] and `groups`
//! (JSON: each group's name, hyper-parameters and variables with their step counts). [`AdamW::load`]
//! restores moments and steps into an optimizer built over the same groups and variables, and names
//! every difference otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The `format` metadata of a saved optimizer state.
pub const STATE_FORMAT: &str = "roomplan-adamw-1";

/// AdamW hyper-parameters (PyTorch's defaults except the learning rate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Named variables sharing hyper-parameters.
#[derive(Clone)]
pub struct ParamGroup {
    pub name: String,
    pub config: AdamWConfig,
    pub vars: Vec<(String, Var)>,
}

/// The usual split: weight decay on matrices only; vectors (biases, norm weights) and scalars go to
/// a `no_decay` group with `weight_decay` 0. Empty groups are left out.
pub fn decay_groups(vars: Vec<(String, Var)>, config: AdamWConfig) -> Vec<ParamGroup> {
    let (decay, no_decay): (Vec<_>, Vec<_>) = vars.into_iter().partition(|(_, v)| v.rank() >= 2);
    let groups = [
        ParamGroup {
            name: "decay".into(),
            config,
            vars: decay,
        },
        ParamGroup {
            name: "no_decay".into(),
            config: AdamWConfig {
                weight_decay: 0.0,
                ..config
            },
            vars: no_decay,
        },
    ];
    groups.into_iter().filter(|g| !g.vars.is_empty()).collect()
}

struct Slot {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: u64,
}

struct Group {
    name: String,
    config: AdamWConfig,
    slots: Vec<Slot>,
}

/// What `groups` metadata records of one group.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedGroup {
    name: String,
    config: AdamWConfig,
    /// (variable name, step count).
    vars: Vec<(String, u64)>,
}

pub struct AdamW {
    groups: Vec<Group>,
    lr_factor: f64,
    updates: u64,
}

impl AdamW {
    /// One group over `vars`.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        Self::with_groups(vec![ParamGroup {
            name: "all".into(),
            config,
            vars,
        }])
    }

    /// Several groups; group names and variable names must be unique (a variable in two groups
    /// would be updated twice).
    pub fn with_groups(groups: Vec<ParamGroup>) -> Result<Self> {
        let mut group_names = BTreeSet::new();
        let mut var_names = BTreeSet::new();
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            ensure!(
                group_names.insert(group.name.clone()),
                "optimizer: two parameter groups are named {:?}",
                group.name
            );
            let mut slots = Vec::with_capacity(group.vars.len());
            for (name, var) in group.vars {
                ensure!(
                    var_names.insert(name.clone()),
                    "optimizer: variable {name:?} is in more than one parameter group"
                );
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                slots.push(Slot {
                    exp_avg: zeros()?,
                    exp_avg_sq: zeros()?,
                    name,
                    var,
                    steps: 0,
                });
            }
            out.push(Group {
                name: group.name,
                config: group.config,
                slots,
            });
        }
        Ok(Self {
            groups: out,
            lr_factor: 1.0,
            updates: 0,
        })
    }

    /// Calls of [`AdamW::step`] since this optimizer was built or loaded (a loaded state restores it
    /// as the largest per-variable step count).
    pub fn steps_taken(&self) -> u64 {
        self.updates
    }

    /// Scales every group's learning rate (for schedules: the groups keep their base rates).
    pub fn set_lr_factor(&mut self, factor: f64) {
        self.lr_factor = factor;
    }

    /// Group names with their effective learning rates.
    pub fn learning_rates(&self) -> Vec<(String, f64)> {
        self.groups
            .iter()
            .map(|g| (g.name.clone(), g.config.lr * self.lr_factor))
            .collect()
    }

    /// One update from `grads`; a variable without a gradient is left untouched, its moments and
    /// step count too (as PyTorch does for a parameter whose `.grad` is None).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.updates += 1;
        for group in &mut self.groups {
            let c = group.config;
            let lr = c.lr * self.lr_factor;
            for slot in &mut group.slots {
                let Some(grad) = grads.get(slot.var.as_tensor()) else {
                    continue;
                };
                slot.steps += 1;
                let grad = grad.to_dtype(DType::F32)?;
                slot.exp_avg = ((&slot.exp_avg * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
                slot.exp_avg_sq =
                    ((&slot.exp_avg_sq * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
                let t = slot.steps as i32;
                let m_hat = (&slot.exp_avg / (1.0 - c.beta1.powi(t)))?;
                let v_hat = (&slot.exp_avg_sq / (1.0 - c.beta2.powi(t)))?;
                let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
                let value = slot.var.as_tensor().to_dtype(DType::F32)?;
                let decayed = (&value * (1.0 - lr * c.weight_decay))?;
                let next = (decayed - (update * lr)?)?;
                slot.var.set(&next.to_dtype(slot.var.dtype())?)?;
            }
        }
        Ok(())
    }

    fn saved_groups(&self) -> Vec<SavedGroup> {
        self.groups
            .iter()
            .map(|g| SavedGroup {
                name: g.name.clone(),
                config: g.config,
                vars: g.slots.iter().map(|s| (s.name.clone(), s.steps)).collect(),
            })
            .collect()
    }

    /// Writes the state to `path` (temporary file, then rename: never a half-written state).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for slot in self.groups.iter().flat_map(|g| &g.slots) {
            tensors.push((format!("exp_avg.{}", slot.name), slot.exp_avg.clone()));
            tensors.push((format!("exp_avg_sq.{}", slot.name), slot.exp_avg_sq.clone()));
        }
        let metadata = HashMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            (
                "groups".to_string(),
                serde_json::to_string(&self.saved_groups())?,
            ),
        ]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
                .with_context(|| format!("{}: serialising the optimizer state", path.display()))?;
        roomplan_prep::shard::write_atomic(path, &bytes)
            .with_context(|| format!("{}: writing the optimizer state", path.display()))?;
        Ok(())
    }

    /// Restores moments and step counts saved by [`AdamW::save`] from an optimizer over the same
    /// groups and variables (hyper-parameters may differ: a resumed run may change them). Nothing
    /// changes unless the whole file fits.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("{}: reading the optimizer state", path.display()))?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// [`AdamW::load`] from the bytes of such a file (`where_` names it in errors).
    pub fn load_bytes(&mut self, bytes: &[u8], where_: &str) -> Result<()> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .with_context(|| format!("{where_}: not a safetensors file"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let format = meta.get("format").map(String::as_str).unwrap_or("(none)");
        ensure!(
            format == STATE_FORMAT,
            "{where_}: optimizer state format {format:?}, expected {STATE_FORMAT:?}"
        );
        let groups_json = meta
            .get("groups")
            .with_context(|| format!("{where_}: no `groups` metadata"))?;
        let saved: Vec<SavedGroup> = serde_json::from_str(groups_json)
            .with_context(|| format!("{where_}: `groups` metadata"))?;
        self.check_layout(&saved)
            .with_context(|| format!("{where_}: the saved optimizer does not fit this model"))?;
        let device = self
            .groups
            .iter()
            .flat_map(|g| &g.slots)
            .map(|s| s.var.device().clone())
            .next();
        let Some(device) = device else { return Ok(()) };
        let mut tensors = candle_core::safetensors::load_buffer(bytes, &device)
            .with_context(|| format!("{where_}: reading tensors"))?;
        let steps: BTreeMap<&str, u64> = saved
            .iter()
            .flat_map(|g| g.vars.iter().map(|(n, s)| (n.as_str(), *s)))
            .collect();
        let mut restored = Vec::new();
        for slot in self.groups.iter().flat_map(|g| &g.slots) {
            let mut take = |kind: &str| -> Result<Tensor> {
                let key = format!("{kind}.{}", slot.name);
                let t = tensors
                    .remove(&key)
                    .with_context(|| format!("{where_}: tensor {key} is missing"))?;
                ensure!(
                    t.dims() == slot.var.dims() && t.dtype() == DType::F32,
                    "{where_}: tensor {key} is {:?} {:?}, expected F32 {:?}",
                    t.dtype(),
                    t.dims(),
                    slot.var.dims()
                );
                Ok(t.to_device(slot.var.device())?)
            };
            restored.push((take("exp_avg")?, take("exp_avg_sq")?));
        }
        if let Some(extra) = tensors.keys().min() {
            bail!("{where_}: unexpected tensor {extra}");
        }
        let slots = self.groups.iter_mut().flat_map(|g| &mut g.slots);
        for (slot, (exp_avg, exp_avg_sq)) in slots.zip(restored) {
            slot.exp_avg = exp_avg;
            slot.exp_avg_sq = exp_avg_sq;
            slot.steps = steps[slot.name.as_str()];
        }
        self.updates = steps.values().copied().max().unwrap_or(0);
        Ok(())
    }

    /// The same groups, in the same order, over the same variables.
    fn check_layout(&self, saved: &[SavedGroup]) -> Result<()> {
        let ours = self.saved_groups();
        let names = |g: &[SavedGroup]| g.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
        ensure!(
            names(&ours) == names(saved),
            "parameter groups {:?}, this optimizer has {:?}",
            names(saved),
            names(&ours)
        );
        for (mine, theirs) in ours.iter().zip(saved) {
            let a: BTreeSet<&str> = mine.vars.iter().map(|(n, _)| n.as_str()).collect();
            let b: BTreeSet<&str> = theirs.vars.iter().map(|(n, _)| n.as_str()).collect();
            let missing: Vec<_> = a.difference(&b).collect();
            let unexpected: Vec<_> = b.difference(&a).collect();
            ensure!(
                missing.is_empty() && unexpected.is_empty(),
                "group {:?}: missing variables {missing:?}, unexpected variables {unexpected:?}",
                mine.name
            );
        }
        Ok(())
    }
}

/// Scales the gradients of `vars` in place so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (factor `min(1, max_norm / (norm + 1e-6))`), and returns the
/// norm before clipping. Variables without a gradient are skipped. A non-finite norm leaves the
/// gradients as they are: the caller sees it and skips the step.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut sum_sq = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum_sq += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum_sq.sqrt();
    let factor = max_norm / (norm + 1e-6);
    if norm.is_finite() && factor < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * factor)?);
            }
        }
    }
    Ok(norm)
}

/// Linear warmup, then cosine decay to a floor: the learning-rate factor for optimizer update
/// `step` (1-based). Warmup reaches 1 at `warmup_steps` (the first update already has a non-zero
/// rate, unlike transformers' schedule, whose first update uses factor 0); afterwards
/// `min_ratio + (1 − min_ratio)·½(1 + cos(π·progress))` over the remaining steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_ratio: f64,
}

impl WarmupCosine {
    pub fn factor(&self, step: u64) -> f64 {
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps.min(step)) as f64 / span).clamp(0.0, 1.0);
        self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = WarmupCosine {
            warmup_steps: 4,
            total_steps: 12,
            min_ratio: 0.1,
        };
        let f: Vec<f64> = (1..=12).map(|i| s.factor(i)).collect();
        assert_eq!(&f[..4], &[0.25, 0.5, 0.75, 1.0]);
        // Half-way through the cosine span (step 8 of 4..12): the mean of 1 and the floor.
        assert!((f[7] - 0.55).abs() < 1e-12, "{f:?}");
        assert!((f[11] - 0.1).abs() < 1e-12, "{f:?}");
        assert!(f[4..].windows(2).all(|w| w[1] < w[0]), "{f:?}");
        // Without warmup the first step has the full rate.
        let s = WarmupCosine { warmup_steps: 0, ..s };
        assert_eq!(s.factor(1).to_bits(), (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI / 12.0).cos())).to_bits());
    }
    use candle_core::Device;

    fn var(values: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(values, shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn decay_groups_split_matrices_from_vectors() {
        let vars = vec![
            ("w".to_string(), var(&[1.0; 4], &[2, 2])),
            ("b".to_string(), var(&[1.0; 2], &[2])),
        ];
        let groups = decay_groups(vars, AdamWConfig::default());
        let summary: Vec<(String, Vec<String>, f64)> = groups
            .iter()
            .map(|g| {
                let names = g.vars.iter().map(|(n, _)| n.clone()).collect();
                (g.name.clone(), names, g.config.weight_decay)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("decay".to_string(), vec!["w".to_string()], 0.01),
                ("no_decay".to_string(), vec!["b".to_string()], 0.0)
            ]
        );
        let only_vectors = decay_groups(
            vec![("b".into(), var(&[1.0], &[1]))],
            AdamWConfig::default(),
        );
        assert_eq!(only_vectors.len(), 1);
        assert_eq!(only_vectors[0].name, "no_decay");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let x = var(&[1.0], &[1]);
        let group = |name: &str| ParamGroup {
            name: name.into(),
            config: AdamWConfig::default(),
            vars: vec![("x".into(), x.clone())],
        };
        let err = AdamW::with_groups(vec![group("a"), group("b")])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "optimizer: variable \"x\" is in more than one parameter group"
        );
        let err = AdamW::with_groups(vec![
            group("a"),
            ParamGroup {
                vars: vec![],
                ..group("a")
            },
        ])
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "optimizer: two parameter groups are named \"a\""
        );
    }

    #[test]
    fn first_step_matches_the_formula_and_lr_factor_scales_it() {
        // x = 1, loss = x², grad 2: m̂ = 2, v̂ = 4, update = 2 / (2 + ε) ≈ 1;
        // x ← x·(1 − lr·wd) − lr·update, with lr = 0.2 · 0.5.
        let x = var(&[1.0], &[1]);
        let cfg = AdamWConfig {
            lr: 0.2,
            weight_decay: 0.01,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], cfg).unwrap();
        opt.set_lr_factor(0.5);
        assert_eq!(opt.learning_rates(), [("all".to_string(), 0.1)]);
        let grads = x
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads).unwrap();
        let value = x.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((value - 0.899).abs() < 1e-6, "{value}");
        assert_eq!(opt.steps_taken(), 1);
    }
}
