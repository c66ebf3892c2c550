//! Perceiver resampler (trainable): a fixed set of learned latents cross-attends to the vision
//! tokens, then attends to itself and runs an MLP, for several pre-norm layers; the result is
//! projected to the LLM width.
//!
//! Only differentiable candle ops are used here (`ops::softmax`, `ops::layer_norm_slow`, matmul,
//! exact GELU): the fused kernels record no backward (see `shared/STACK_NOTES.md`).

use candle_core::{bail, DType, Result, Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

/// Dimensions of the resampler. The defaults are the predecessor's `perceiver_small` (128
/// latents, 8 heads, 6 layers) reading one VGGT layer (2048 wide) into Qwen3-4B (2560 wide).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerceiverConfig {
    /// Width of the incoming vision tokens (2·C per VGGT output layer used).
    pub input_dim: usize,
    /// Width of the latents and of every attention/MLP inside the resampler.
    pub latent_dim: usize,
    pub num_latents: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Hidden size of each layer's MLP.
    pub ffn_dim: usize,
    /// Width of the output tokens (the LLM's hidden size).
    pub output_dim: usize,
    pub layer_norm_eps: f64,
}

impl Default for PerceiverConfig {
    fn default() -> Self {
        Self {
            input_dim: 2048,
            latent_dim: 1024,
            num_latents: 128,
            num_heads: 8,
            num_layers: 6,
            ffn_dim: 4096,
            output_dim: 2560,
            layer_norm_eps: 1e-5,
        }
    }
}

impl PerceiverConfig {
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            self.input_dim,
            self.latent_dim,
            self.num_latents,
            self.num_heads,
            self.num_layers,
            self.ffn_dim,
            self.output_dim,
        ];
        if sizes.contains(&0) {
            bail!("perceiver config: every size must be positive, got {self:?}");
        }
        if !self.latent_dim.is_multiple_of(self.num_heads) {
            bail!(
                "perceiver config: latent_dim {} is not divisible by num_heads {}",
                self.latent_dim,
                self.num_heads
            );
        }
        Ok(())
    }
}

/// LayerNorm with weight and bias, applied with the differentiable (non-fused) implementation.
#[derive(Debug, Clone)]
pub struct TrainableLayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl TrainableLayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for TrainableLayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
    }
}

/// Multi-head attention with separate q/k/v/o projections (queries and keys may differ).
#[derive(Debug, Clone)]
struct MultiHeadAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
}

impl MultiHeadAttention {
    fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: candle_nn::linear(dim, dim, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(dim, dim, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(dim, dim, vb.pp("v_proj"))?,
            o_proj: candle_nn::linear(dim, dim, vb.pp("o_proj"))?,
            num_heads,
        })
    }

    /// `queries` [B, L, D] attend to `keys_values` [B, N, D]; `bias` [B, 1, 1, N] is added to
    /// the scores (0 for valid tokens, a large negative number for padding).
    fn forward(
        &self,
        queries: &Tensor,
        keys_values: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, d) = queries.dims3()?;
        let n = keys_values.dim(1)?;
        let h = self.num_heads;
        let heads =
            |x: Tensor, len: usize| x.reshape((b, len, h, d / h))?.transpose(1, 2)?.contiguous();
        let q = heads(self.q_proj.forward(queries)?, l)?;
        let k = heads(self.k_proj.forward(keys_values)?, n)?;
        let v = heads(self.v_proj.forward(keys_values)?, n)?;
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / ((d / h) as f64).sqrt()))?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct PerceiverLayer {
    cross_norm_latents: TrainableLayerNorm,
    cross_norm_inputs: TrainableLayerNorm,
    cross_attn: MultiHeadAttention,
    self_norm: TrainableLayerNorm,
    self_attn: MultiHeadAttention,
    mlp_norm: TrainableLayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl PerceiverLayer {
    fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.latent_dim, cfg.layer_norm_eps);
        Ok(Self {
            cross_norm_latents: TrainableLayerNorm::new(d, eps, vb.pp("cross_norm_latents"))?,
            cross_norm_inputs: TrainableLayerNorm::new(d, eps, vb.pp("cross_norm_inputs"))?,
            cross_attn: MultiHeadAttention::new(d, cfg.num_heads, vb.pp("cross_attn"))?,
            self_norm: TrainableLayerNorm::new(d, eps, vb.pp("self_norm"))?,
            self_attn: MultiHeadAttention::new(d, cfg.num_heads, vb.pp("self_attn"))?,
            mlp_norm: TrainableLayerNorm::new(d, eps, vb.pp("mlp_norm"))?,
            fc1: candle_nn::linear(d, cfg.ffn_dim, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(cfg.ffn_dim, d, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward(&self, latents: &Tensor, inputs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let kv = self.cross_norm_inputs.forward(inputs)?;
        let x = (latents
            + self
                .cross_attn
                .forward(&self.cross_norm_latents.forward(latents)?, &kv, bias)?)?;
        let normed = self.self_norm.forward(&x)?;
        let x = (&x + self.self_attn.forward(&normed, &normed, None)?)?;
        let hidden = self.fc1.forward(&self.mlp_norm.forward(&x)?)?.gelu_erf()?;
        x + self.fc2.forward(&hidden)?
    }
}

/// The resampler: `forward(vision [B, N, input_dim])` → `[B, num_latents, output_dim]`.
#[derive(Debug, Clone)]
pub struct Perceiver {
    cfg: PerceiverConfig,
    latents: Tensor,
    input_proj: Linear,
    layers: Vec<PerceiverLayer>,
    out_norm: TrainableLayerNorm,
    out_proj: Linear,
}

/// Large negative score for padded vision tokens (finite, so a fully padded row stays finite).
const MASKED_SCORE: f64 = -1e9;

impl Perceiver {
    /// Parameters live under `vb` (`latents`, `input_proj`, `layers.{i}.…`, `out_norm`,
    /// `out_proj`); with a `VarMap`-backed builder they are created trainable.
    pub fn new(cfg: &PerceiverConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let latents = vb.get_with_hints(
            (cfg.num_latents, cfg.latent_dim),
            "latents",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let layers = (0..cfg.num_layers)
            .map(|i| PerceiverLayer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents,
            input_proj: candle_nn::linear(cfg.input_dim, cfg.latent_dim, vb.pp("input_proj"))?,
            layers,
            out_norm: TrainableLayerNorm::new(
                cfg.latent_dim,
                cfg.layer_norm_eps,
                vb.pp("out_norm"),
            )?,
            out_proj: candle_nn::linear(cfg.latent_dim, cfg.output_dim, vb.pp("out_proj"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &PerceiverConfig {
        &self.cfg
    }

    /// `vision` [B, N, input_dim] (any float dtype; computed in f32); `mask` [B, N] with 1 for
    /// real tokens and 0 for padding (samples with fewer views), or `None` when all are real.
    pub fn forward(&self, vision: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, width) = vision.dims3()?;
        if width != self.cfg.input_dim {
            bail!(
                "perceiver: vision tokens are {width} wide, the config says {}",
                self.cfg.input_dim
            );
        }
        let bias = match mask {
            Some(mask) => {
                if mask.dims() != [b, n] {
                    bail!("perceiver: mask must be [{b}, {n}], got {:?}", mask.dims());
                }
                let mask = mask.to_dtype(DType::F32)?;
                Some((mask.affine(1.0, -1.0)? * -MASKED_SCORE)?.reshape((b, 1, 1, n))?)
            }
            None => None,
        };
        let inputs = self.input_proj.forward(&vision.to_dtype(DType::F32)?)?;
        let mut latents = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((b, self.cfg.num_latents, self.cfg.latent_dim))?
            .contiguous()?;
        for layer in &self.layers {
            latents = layer.forward(&latents, &inputs, bias.as_ref())?;
        }
        self.out_proj.forward(&self.out_norm.forward(&latents)?)
    }
}
