//! The fused model: frozen VGGT tokens → trainable Perceiver latents, per-view geometry →
//! trainable geometry tokens, both written into the prompt's `<image>` slots as
//! `[geometry tokens ‖ projected latents]`, then Qwen3 (frozen) with LoRA (trainable); the loss
//! is next-token cross-entropy on the answer tokens only (prompt, image slots and padding carry
//! the ignore label).
//!
//! The VGGT aggregator runs once per scene (its tokens can be cached), so a training example
//! carries its vision tokens; [`encode_views`] computes them from images.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::model::chat::{TrainingExample, IGNORE_INDEX};
use crate::model::init;
use crate::model::geometry_head::{GeometryHead, GeometryHeadConfig, ViewGeometry};
use crate::model::lora::Lora;
use crate::model::perceiver::{Perceiver, PerceiverConfig};
use crate::model::qwen3::{Input, Qwen3};
use crate::model::vggt::Aggregator;

/// Sizes of the trainable vision side.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusedConfig {
    pub perceiver: PerceiverConfig,
    pub geometry: GeometryHeadConfig,
}

/// Vision tokens of one sample: the requested aggregator layers of all its views, concatenated
/// on the channel axis and flattened over views and tokens: `[S·P, 2C·layers.len()]`.
pub fn encode_views(aggregator: &Aggregator, images: &Tensor, layers: &[usize]) -> Result<Tensor> {
    ensure!(!layers.is_empty(), "encode_views: no VGGT layer selected");
    ensure!(
        images.rank() == 4,
        "encode_views: images must be [S, 3, H, W], got {:?}",
        images.dims()
    );
    let outputs = aggregator.forward_layers(images, layers)?;
    let joined = Tensor::cat(&outputs, D::Minus1)?;
    let (s, p, c) = joined.dims3()?;
    Ok(joined.reshape((s * p, c))?)
}

/// One training example of the fused model.
#[derive(Debug, Clone)]
pub struct FusedExample {
    /// Prompt + answer ids and labels; its image slots must number
    /// [`FusedModel::image_slots`] for this example's geometry.
    pub text: TrainingExample,
    /// `[N, perceiver.input_dim]`, e.g. from [`encode_views`] (detached: VGGT is frozen).
    pub vision: Tensor,
    /// Per-view geometry, `None` for a sample without geometry (then no geometry tokens).
    pub geometry: Option<Vec<ViewGeometry>>,
}

/// Perceiver + geometry head (variables in one `VarMap`) around a frozen Qwen3 with LoRA.
pub struct FusedModel {
    cfg: FusedConfig,
    varmap: VarMap,
    perceiver: Perceiver,
    geometry: GeometryHead,
    llm: Qwen3,
    lora: Lora,
}

impl FusedModel {
    /// Creates fresh trainable Perceiver/geometry weights (f32) and attaches `lora` to `llm`.
    pub fn new(cfg: &FusedConfig, mut llm: Qwen3, lora: Lora) -> Result<Self> {
        let hidden = llm.config().hidden_size;
        ensure!(
            cfg.perceiver.output_dim == hidden && cfg.geometry.output_dim == hidden,
            "perceiver/geometry output widths {}/{} must equal the LLM width {hidden}",
            cfg.perceiver.output_dim,
            cfg.geometry.output_dim
        );
        let device = llm.device().clone();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let perceiver = Perceiver::new(&cfg.perceiver, vb.pp("perceiver"))?;
        let geometry = GeometryHead::new(&cfg.geometry, vb.pp("geometry_head"))?;
        lora.attach(&mut llm)?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            perceiver,
            geometry,
            llm,
            lora,
        })
    }

    pub fn config(&self) -> &FusedConfig {
        &self.cfg
    }

    pub fn llm(&self) -> &Qwen3 {
        &self.llm
    }

    pub fn device(&self) -> &Device {
        self.llm.device()
    }

    /// The Perceiver and geometry-head variables (`perceiver.…`, `geometry_head.…`).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// How many `<image>` slots a prompt needs: geometry tokens, then the latents.
    pub fn image_slots(&self, geometry_views: usize) -> usize {
        self.geometry.num_tokens(geometry_views) + self.cfg.perceiver.num_latents
    }

    /// Every trainable variable by name, sorted: Perceiver and geometry head, then LoRA (PEFT keys).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> = self
            .varmap
            .data()
            .lock()
            .map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.extend(self.lora.vars());
        vars
    }

    /// The `[slots, hidden]` embeddings written into one example's image slots.
    fn slot_embeddings(
        &self,
        latents: &Tensor,
        geometry: Option<&[ViewGeometry]>,
    ) -> Result<Tensor> {
        match geometry
            .map(|g| self.geometry.forward(g, self.device()))
            .transpose()?
            .flatten()
        {
            Some(geo) => Ok(Tensor::cat(&[&geo, latents], 0)?),
            None => Ok(latents.clone()),
        }
    }

    /// Input embeddings `[B, T, hidden]`, attention mask `[B, T]` (u8) and labels `[B, T]` (i64)
    /// of a batch, right-padded to its longest example.
    pub fn build_inputs(&self, batch: &[FusedExample]) -> Result<(Tensor, Tensor, Tensor)> {
        ensure!(!batch.is_empty(), "empty batch");
        let device = self.device();
        let latents = self.perceive(batch)?;
        let hidden = self.llm.config().hidden_size;
        let max_len = batch.iter().map(|e| e.text.ids.len()).max().unwrap_or(0);
        let (mut rows, mut masks, mut labels) = (vec![], vec![], vec![]);
        for (i, ex) in batch.iter().enumerate() {
            let t = &ex.text;
            ensure!(
                t.ids.len() == t.labels.len(),
                "example {i}: {} ids but {} labels",
                t.ids.len(),
                t.labels.len()
            );
            let slots = self.slot_embeddings(&latents.get(i)?, ex.geometry.as_deref())?;
            let n_slots = slots.dim(0)?;
            let start = *t
                .image_positions
                .first()
                .context("example without image slots")?;
            ensure!(
                t.image_positions.len() == n_slots
                    && t.image_positions
                        .iter()
                        .enumerate()
                        .all(|(k, &p)| p == start + k),
                "example {i}: the prompt has {} image slots, {} are needed (contiguous)",
                t.image_positions.len(),
                n_slots
            );
            ensure!(
                t.image_positions
                    .iter()
                    .all(|&p| t.labels[p] == IGNORE_INDEX),
                "example {i}: image slots must not carry labels"
            );
            let ids = Tensor::new(t.ids.as_slice(), device)?.unsqueeze(0)?;
            let text = self.llm.embed(&ids)?.squeeze(0)?;
            let len = t.ids.len();
            let mut parts = vec![];
            if start > 0 {
                parts.push(text.narrow(0, 0, start)?);
            }
            parts.push(slots);
            if start + n_slots < len {
                parts.push(text.narrow(0, start + n_slots, len - start - n_slots)?);
            }
            if len < max_len {
                parts.push(Tensor::zeros((max_len - len, hidden), DType::F32, device)?);
            }
            rows.push(Tensor::cat(&parts, 0)?);
            let mut mask = vec![1u8; len];
            mask.resize(max_len, 0);
            masks.push(Tensor::new(mask, device)?);
            let mut lab = t.labels.clone();
            lab.resize(max_len, IGNORE_INDEX);
            labels.push(Tensor::new(lab, device)?);
        }
        Ok((
            Tensor::stack(&rows, 0)?,
            Tensor::stack(&masks, 0)?,
            Tensor::stack(&labels, 0)?,
        ))
    }

    /// Perceiver latents `[B, num_latents, hidden]`, vision tokens padded to the longest example.
    fn perceive(&self, batch: &[FusedExample]) -> Result<Tensor> {
        let device = self.device();
        let width = self.cfg.perceiver.input_dim;
        let max_n = batch
            .iter()
            .map(|e| e.vision.dim(0).unwrap_or(0))
            .max()
            .unwrap_or(0);
        ensure!(max_n > 0, "no vision tokens in the batch");
        let (mut rows, mut masks) = (vec![], vec![]);
        for (i, ex) in batch.iter().enumerate() {
            let (n, w) = ex
                .vision
                .dims2()
                .with_context(|| format!("example {i}: vision tokens must be [N, {width}]"))?;
            if w != width || n == 0 {
                bail!("example {i}: vision tokens are [{n}, {w}], expected [N > 0, {width}]");
            }
            let v = ex.vision.to_device(device)?.to_dtype(DType::F32)?.detach();
            let mut mask = vec![1f32; n];
            rows.push(if n < max_n {
                mask.resize(max_n, 0.0);
                Tensor::cat(
                    &[v, Tensor::zeros((max_n - n, width), DType::F32, device)?],
                    0,
                )?
            } else {
                v
            });
            masks.push(Tensor::new(mask, device)?);
        }
        let all_full = batch.iter().all(|e| e.vision.dim(0).ok() == Some(max_n));
        let mask = if all_full {
            None
        } else {
            Some(Tensor::stack(&masks, 0)?)
        };
        Ok(self
            .perceiver
            .forward(&Tensor::stack(&rows, 0)?, mask.as_ref())?)
    }

    /// Mean cross-entropy over the answer tokens of the batch (training mode: LoRA dropout on).
    pub fn loss(&self, batch: &[FusedExample]) -> Result<Tensor> {
        self.loss_with(batch, true)
    }

    /// Mean cross-entropy over the answer tokens; `train` switches LoRA dropout.
    pub fn loss_with(&self, batch: &[FusedExample], train: bool) -> Result<Tensor> {
        let (embeds, mask, labels) = self.build_inputs(batch)?;
        self.llm
            .loss(Input::Embeds(&embeds), Some(&mask), &labels, train)
    }

    /// Greedy decoding (KV cache) after one example's prompt; its labels are ignored. Returns the
    /// generated ids, the stop token included when one was produced.
    pub fn generate_greedy(
        &self,
        example: &FusedExample,
        max_new_tokens: usize,
        is_stop: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let (embeds, _, _) = self.build_inputs(std::slice::from_ref(example))?;
        self.llm
            .generate_greedy(Input::Embeds(&embeds), max_new_tokens, is_stop)
    }

    /// The LoRA adapters (their variables are shared with the model).
    pub fn lora(&self) -> &Lora {
        &self.lora
    }

    /// Sets the Perceiver and geometry-head variables to values drawn from `seed` (candle's CPU
    /// generator cannot be seeded): linear weights N(0, 2/fan_in) and biases U(±1/√fan_in) as
    /// candle_nn initialises them, latents N(0, 0.02²); LayerNorm parameters keep their constant
    /// initial values.
    pub fn reinit_from_seed(&self, seed: u64) -> Result<()> {
        let vars: Vec<(String, Var)> = {
            let data = self.varmap.data().lock().map_err(|_| anyhow::anyhow!("poisoned varmap"))?;
            let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let fan_in = |name: &str| -> Option<usize> {
            let weight = format!("{}.weight", name.strip_suffix(".bias")?);
            vars.iter()
                .find(|(n, _)| *n == weight)
                .and_then(|(_, w)| w.dims2().ok())
                .map(|(_, i)| i)
        };
        for (name, var) in &vars {
            if name.split('.').any(|p| p.contains("norm")) {
                continue;
            }
            let dims = var.dims().to_vec();
            let value = if name.ends_with("latents") {
                init::normal(seed, name, &dims, 0.02)?
            } else if name.ends_with(".bias") {
                let n = fan_in(name).with_context(|| format!("{name}: no weight beside the bias"))?;
                init::uniform(seed, name, &dims, 1.0 / (n as f64).sqrt())?
            } else if dims.len() == 2 {
                init::normal(seed, name, &dims, (2.0 / dims[1] as f64).sqrt())?
            } else {
                bail!("{name}: no deterministic initialisation rule for shape {dims:?}");
            };
            var.set(&value.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}
