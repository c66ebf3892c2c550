//! Qwen3 decoder (transformers `Qwen3ForCausalLM`), trainable with LoRA.
//!
//! Written from differentiable ops only (candle's fused RMSNorm/RoPE/softmax have no backward, see
//! STACK_NOTES), with frozen weights going through [`crate::model::frozen`] so their gradients are never
//! computed. Parameter paths mirror the Hugging Face checkpoint keys, so published safetensors load
//! unchanged. Activations are f32 whatever the dtype of the frozen weights (bf16 weights are cast in
//! the graph, inside each projection).
//!
//! Two entry points share every layer: [`Qwen3::forward`] (whole sequences, training and parity) and
//! [`Qwen3::forward_cached`] (generation with a [`KvCache`], kept separate so a training forward can
//! never attend to stale keys).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::model::frozen;
use crate::model::kernels::{self, KeyMask};
use crate::model::lora::LoraLayer;
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp3, Layout, MetalStorage, Shape, Var,
};

/// `rope_parameters` as written by transformers 5 (older configs have a top-level `rope_theta`).
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// The fields of a Qwen3 `config.json` that the decoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Explicit in Qwen3 (128 for 4B, where heads × head_dim ≠ hidden).
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_max_position() -> usize {
    32768
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

impl Config {
    /// Reads and validates a checkpoint's `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a Qwen3 config.json", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{}: unsupported Qwen3 config", path.display()))?;
        Ok(cfg)
    }

    /// Refuses configurations this decoder would silently compute wrongly.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.hidden_act == "silu",
            "hidden_act {:?} (only silu is implemented)",
            self.hidden_act
        );
        ensure!(
            !self.attention_bias,
            "attention_bias true (Qwen3 has no attention biases)"
        );
        ensure!(
            !self.use_sliding_window,
            "use_sliding_window true (not implemented)"
        );
        ensure!(
            self.num_attention_heads > 0
                && self.num_key_value_heads > 0
                && self
                    .num_attention_heads
                    .is_multiple_of(self.num_key_value_heads),
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(
            self.head_dim().is_multiple_of(2),
            "head_dim {} is odd (RoPE needs pairs)",
            self.head_dim()
        );
        let scaling = self.rope_scaling.as_ref().filter(|v| !v.is_null());
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.as_deref());
        ensure!(
            scaling.is_none(),
            "rope_scaling {} (only plain RoPE is implemented)",
            scaling.unwrap()
        );
        ensure!(
            matches!(rope_type, None | Some("default")),
            "rope_parameters.rope_type {rope_type:?} (only \"default\" is implemented)"
        );
        self.rope_theta()?;
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// RoPE base: top-level `rope_theta` or `rope_parameters.rope_theta`.
    pub fn rope_theta(&self) -> Result<f64> {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .context("neither rope_theta nor rope_parameters.rope_theta is given")
    }

    /// (in, out) features of a projection named as in the checkpoint (`q_proj`, ..., `down_proj`).
    pub fn projection_shape(&self, module: &str) -> Result<(usize, usize)> {
        let (h, d) = (self.hidden_size, self.head_dim());
        Ok(match module {
            "q_proj" => (h, self.num_attention_heads * d),
            "k_proj" | "v_proj" => (h, self.num_key_value_heads * d),
            "o_proj" => (self.num_attention_heads * d, h),
            "gate_proj" | "up_proj" => (h, self.intermediate_size),
            "down_proj" => (self.intermediate_size, h),
            other => bail!("{other:?} is not a Qwen3 projection (q/k/v/o_proj, gate/up/down_proj)"),
        })
    }
}

/// Names of the projections in each decoder layer, with their parent module.
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
pub const MLP_PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Checkpoint path of a projection (`model.layers.3.self_attn.q_proj`).
pub fn projection_path(layer: usize, module: &str) -> String {
    let parent = if MLP_PROJECTIONS.contains(&module) {
        "mlp"
    } else {
        "self_attn"
    };
    format!("model.layers.{layer}.{parent}.{module}")
}

/// Per-call switches of a forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Also return the hidden states as transformers' `output_hidden_states` does.
    pub output_hidden_states: bool,
    /// Training mode: LoRA dropout is applied (a no-op at dropout 0).
    pub train: bool,
}

/// Model input: token ids `[B, T]` (any integer dtype) or input embeddings `[B, T, hidden]`.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Ids(&'a Tensor),
    Embeds(&'a Tensor),
}

/// Output of [`Qwen3::forward`].
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[B, T, vocab]`, f32, every position.
    pub logits: Tensor,
    /// transformers' `hidden_states` when asked: index 0 the input embeddings, index i (0 < i < L)
    /// the output of layer i−1, index L the last layer's output after the final RMSNorm.
    pub hidden_states: Vec<Tensor>,
}

/// RMSNorm in f32 (`w ⊙ x / sqrt(mean(x²) + eps)`), built from differentiable ops.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?.to_dtype(DType::F32)?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(if mode.fused {
            kernels::rms_norm(x, &self.weight, self.eps)?
        } else {
            kernels::rms_norm_composite(x, &self.weight, self.eps)?
        })
    }
}

/// A frozen projection (no bias), optionally with a LoRA adapter.
#[derive(Debug, Clone)]
struct Projection {
    weight: Tensor,
    lora: Option<LoraLayer>,
}

/// How a pass runs: projections through the sparing op (default) or candle's plain matmul, and
/// attention/RMSNorm/RoPE/SwiGLU and the projections (with their adapters) through the fused kernels
/// (default; CPU f32 only, composite elsewhere) or the composite ops (both switches for benchmarks
/// and comparisons).
#[derive(Debug, Clone, Copy)]
struct Mode {
    train: bool,
    sparing: bool,
    fused: bool,
    /// Frozen bf16 weights on the CPU through `frozen::linear`'s bf16-weight kernel (default) or
    /// candle's bf16 matmul with casts (`frozen::linear_cast`).
    bf16_kernel: bool,
}

impl Projection {
    /// The projection `name` (`q_proj`, ...) under `vb`, shaped from the config.
    fn new(cfg: &Config, name: &str, vb: &VarBuilder) -> Result<Self> {
        let (in_dim, out_dim) = cfg.projection_shape(name)?;
        Ok(Self {
            weight: vb.pp(name).get((out_dim, in_dim), "weight")?,
            lora: None,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode.fused && mode.sparing && mode.bf16_kernel {
            // The projection, with its adapter, as one fused op (CPU f32; composite elsewhere),
            // unless dropout would draw a mask on the adapter's input.
            match &self.lora {
                None => return Ok(kernels::linear(x, &self.weight)?),
                Some(lora) if !(mode.train && lora.dropout > 0.0) => {
                    return Ok(kernels::lora_linear(
                        x,
                        &self.weight,
                        lora.a.as_tensor(),
                        lora.b.as_tensor(),
                        lora.scaling,
                    )?)
                }
                Some(_) => {}
            }
        }
        let base = if mode.sparing && mode.bf16_kernel {
            frozen::linear(x, &self.weight)?
        } else if mode.sparing {
            frozen::linear_cast(x, &self.weight)?
        } else {
            frozen::linear_plain(x, &self.weight)?
        };
        match &self.lora {
            None => Ok(base),
            Some(lora) => Ok(frozen::broadcast_add(&base, &lora.forward(x, mode.train)?)?),
        }
    }
}

/// Rotary tables for a batch: `cos`/`sin` `[B or 1, 1, T, head_dim]` (rotate-half layout).
#[derive(Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Rotates per-head projections `[B, T, H, D]` into `[B, H, T, D]`: the fused kernel (CPU f32)
    /// or the composite ops.
    fn apply(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(if mode.fused {
            kernels::rope(x, &self.cos, &self.sin)?
        } else {
            kernels::rope_composite(x, &self.cos, &self.sin)?
        })
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// What every layer of one forward pass shares: RoPE tables, attention mask (and its additive
/// bias for the composite path), mode.
#[derive(Clone)]
struct Pass {
    rope: Rope,
    mask: KeyMask,
    bias: Option<Tensor>,
    mode: Mode,
}

impl Pass {
    fn new(rope: Rope, mask: KeyMask, mode: Mode, device: &Device) -> Result<Self> {
        // The composite path (chosen, or the fused kernels' fallback off the CPU) takes the mask as
        // a [B, 1, T_q, T_k] bias, built once per pass and only when it is used.
        let composite = !mode.fused || !device.is_cpu();
        let bias = composite.then(|| mask.bias(device)).transpose()?;
        Ok(Self {
            rope,
            mask,
            bias,
            mode,
        })
    }
}

/// Keys and values of the positions seen so far, per layer: `[B, H_kv, T_past, D]`.
type KvPair = (Tensor, Tensor);

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let proj = |name: &str| Projection::new(cfg, name, &vb);
        Ok(Self {
            q_proj: proj("q_proj")?,
            k_proj: proj("k_proj")?,
            v_proj: proj("v_proj")?,
            o_proj: proj("o_proj")?,
            q_norm: RmsNorm::new(cfg.head_dim(), cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(cfg.head_dim(), cfg.rms_norm_eps, vb.pp("k_norm"))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut Option<KvPair>>,
    ) -> Result<Tensor> {
        let mode = pass.mode;
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        if mode.fused && cache.is_none() && pass.bias.is_none() {
            // The fused path's fewer graph nodes: the projections' [B, T, H·D] outputs go
            // straight into the norm + RoPE op (q, k) and the attention (v), no reshape,
            // transpose or copy between them.
            let norm_rope = |proj: &Projection, norm: &RmsNorm, n: usize| -> Result<Tensor> {
                let (cos, sin) = (&pass.rope.cos, &pass.rope.sin);
                let y = proj.forward(x, mode)?;
                Ok(kernels::rms_norm_rope(
                    &y,
                    &norm.weight,
                    norm.eps,
                    cos,
                    sin,
                    n,
                )?)
            };
            let q = norm_rope(&self.q_proj, &self.q_norm, self.num_heads)?;
            let k = norm_rope(&self.k_proj, &self.k_norm, self.num_kv_heads)?;
            let v = self.v_proj.forward(x, mode)?;
            let scale = (d as f64).powf(-0.5);
            let out = kernels::attention_v_by_token(&q, &k, &v, &pass.mask, scale)?;
            return self.o_proj.forward(&out, mode);
        }
        let heads = |proj: &Projection, n: usize| -> Result<Tensor> {
            Ok(proj.forward(x, mode)?.reshape((b, t, n, d))?)
        };
        // q and k stay [B, T, H, D] through their norms; RoPE hands them out as [B, H, T, D].
        let q = self
            .q_norm
            .forward(&heads(&self.q_proj, self.num_heads)?, mode)?;
        let k = self
            .k_norm
            .forward(&heads(&self.k_proj, self.num_kv_heads)?, mode)?;
        let v = heads(&self.v_proj, self.num_kv_heads)?
            .transpose(1, 2)?
            .contiguous()?;
        let q = pass.rope.apply(&q, mode)?;
        let mut k = pass.rope.apply(&k, mode)?;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.as_ref() {
                k = Tensor::cat(&[past_k, &k], 2)?;
                v = Tensor::cat(&[past_v, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scale = (d as f64).powf(-0.5);
        let out = match &pass.bias {
            None => kernels::attention(&q, &k, &v, &pass.mask, scale)?,
            Some(bias) => kernels::attention_composite(&q, &k, &v, bias, scale)?,
        };
        self.o_proj.forward(&out, mode)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let proj = |name: &str| Projection::new(cfg, name, &vb);
        Ok(Self {
            gate_proj: proj("gate_proj")?,
            up_proj: proj("up_proj")?,
            down_proj: proj("down_proj")?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode.fused
            && mode.sparing
            && mode.bf16_kernel
            && self.gate_proj.lora.is_none()
            && self.up_proj.lora.is_none()
        {
            // Both frozen projections and the gating as one op (one gradient for x).
            let gated = kernels::swiglu_mlp_input(x, &self.gate_proj.weight, &self.up_proj.weight)?;
            return self.down_proj.forward(&gated, mode);
        }
        let gate = self.gate_proj.forward(x, mode)?;
        let up = self.up_proj.forward(x, mode)?;
        let gated = if mode.fused {
            kernels::swiglu(&gate, &up)?
        } else {
            kernels::swiglu_composite(&gate, &up)?
        };
        self.down_proj.forward(&gated, mode)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut Option<KvPair>>,
    ) -> Result<Tensor> {
        let mode = pass.mode;
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(x, mode)?, pass, cache)?;
        let h = frozen::broadcast_add(x, &attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h, mode)?, mode)?;
        Ok(frozen::broadcast_add(&h, &mlp)?)
    }

    /// The layer's LoRA adapters, in a fixed order (attention then MLP projections).
    fn loras_mut(&mut self) -> Vec<&mut LoraLayer> {
        let Self { self_attn, mlp, .. } = self;
        [
            &mut self_attn.q_proj,
            &mut self_attn.k_proj,
            &mut self_attn.v_proj,
            &mut self_attn.o_proj,
            &mut mlp.gate_proj,
            &mut mlp.up_proj,
            &mut mlp.down_proj,
        ]
        .into_iter()
        .filter_map(|p| p.lora.as_mut())
        .collect()
    }

    /// [`DecoderLayer::forward`] with activation checkpointing: the forward keeps no graph inside
    /// the layer (only its input, output and adapter weights); the backward runs the layer again
    /// and backpropagates through it. LoRA dropout is refused (its masks would be drawn anew).
    fn forward_checkpointed(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let mut layer = self.clone();
        let loras = layer.loras_mut();
        ensure!(
            !pass.mode.train || loras.iter().all(|l| l.dropout == 0.0),
            "gradient checkpointing with LoRA dropout > 0 is not supported (the recomputed layer \
             would draw other dropout masks)"
        );
        let params: Vec<Tensor> = loras
            .iter()
            .flat_map(|l| [l.a.as_tensor().clone(), l.b.as_tensor().clone()])
            .collect();
        let tracked = x.track_op() || params.iter().any(Tensor::track_op);
        // The graph built here dies with the detached result: nothing inside the layer is kept.
        let y = self.forward(&x.detach(), pass, None)?.detach();
        if !tracked {
            return Ok(y);
        }
        let flat = if params.is_empty() {
            Tensor::zeros(1, DType::F32, x.device())?
        } else {
            let flats = params
                .iter()
                .map(Tensor::flatten_all)
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&flats, 0)?
        };
        let op = Checkpoint {
            layer: self.clone(),
            pass: pass.clone(),
        };
        Ok(x.apply_op3(&flat, &y, op)?)
    }

    fn projection_mut(&mut self, module: &str) -> Option<&mut Projection> {
        Some(match module {
            "q_proj" => &mut self.self_attn.q_proj,
            "k_proj" => &mut self.self_attn.k_proj,
            "v_proj" => &mut self.self_attn.v_proj,
            "o_proj" => &mut self.self_attn.o_proj,
            "gate_proj" => &mut self.mlp.gate_proj,
            "up_proj" => &mut self.mlp.up_proj,
            "down_proj" => &mut self.mlp.down_proj,
            _ => return None,
        })
    }
}

/// One checkpointed decoder layer as an op of (input, its adapter weights flattened and
/// concatenated, the output computed without a graph): the forward hands out the output; the
/// backward recomputes the layer from the input with fresh variables for the adapters and returns
/// the input's and the adapters' gradients.
struct Checkpoint {
    layer: DecoderLayer,
    pass: Pass,
}

impl Checkpoint {
    fn output<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
        match l.contiguous_offsets() {
            // The output is a fresh tensor (the layer's last add), so its storage is exactly it.
            Some((0, _)) => Ok((s.try_clone(l)?, l.shape().clone())),
            _ => {
                candle_core::bail!("checkpoint: the layer output is not a whole contiguous tensor")
            }
        }
    }
}

impl CustomOp3 for Checkpoint {
    fn name(&self) -> &'static str {
        "checkpointed-decoder-layer"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::output(s3, l3)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Self::output(s3, l3)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        s3: &MetalStorage,
        l3: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        Self::output(s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        flat: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let err = |e: anyhow::Error| candle_core::Error::Msg(format!("checkpoint backward: {e:#}"));
        let mut layer = self.layer.clone();
        let mut vars = Vec::new();
        for lora in layer.loras_mut() {
            lora.a = Var::from_tensor(&lora.a.as_tensor().detach())?;
            lora.b = Var::from_tensor(&lora.b.as_tensor().detach())?;
            vars.push(lora.a.clone());
            vars.push(lora.b.clone());
        }
        let xv = Var::from_tensor(&x.detach())?;
        let y = layer
            .forward(xv.as_tensor(), &self.pass, None)
            .map_err(err)?;
        let grads = (y * grad.detach())?.sum_all()?.backward()?;
        let gx = match grads.get(xv.as_tensor()) {
            Some(g) if x.track_op() => Some(g.clone()),
            _ => None,
        };
        let gflat = if flat.track_op() {
            let parts = vars
                .iter()
                .map(|v| match grads.get(v.as_tensor()) {
                    Some(g) => g.flatten_all(),
                    None => v.as_tensor().zeros_like()?.flatten_all(),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        Ok((gx, gflat, None))
    }
}

/// Generation state: keys/values per layer plus, per row, which cached positions are real tokens
/// and the next RoPE position.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<KvPair>>,
    key_valid: Vec<Vec<bool>>,
    next_position: Vec<usize>,
}

impl KvCache {
    /// Number of cached positions (padding included).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder with its LM head.
#[derive(Debug, Clone)]
pub struct Qwen3 {
    cfg: Config,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
    sparing: bool,
    fused: bool,
    bf16_kernel: bool,
    checkpointing: bool,
    device: Device,
}

impl Qwen3 {
    /// Builds the model from a VarBuilder over the checkpoint (keys `model.embed_tokens.weight`,
    /// `model.layers.N...`, `model.norm.weight`, and `lm_head.weight` unless embeddings are tied or
    /// the checkpoint has none, in which case the embedding matrix is the output projection).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let m = vb.pp("model");
        let embed_tokens = m.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                DecoderLayer::new(cfg, m.pp(format!("layers.{i}")))
                    .with_context(|| format!("loading model.layers.{i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if !cfg.tie_word_embeddings && vb.contains_tensor("lm_head.weight") {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        } else {
            embed_tokens.clone()
        };
        let d = cfg.head_dim();
        let theta = cfg.rope_theta()? as f32;
        // As transformers: inv_freq = 1 / θ^(2k/D), in float32.
        let inv_freq = (0..d / 2)
            .map(|k| 1.0f32 / theta.powf((2 * k) as f32 / d as f32))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            sparing: true,
            fused: true,
            bf16_kernel: true,
            checkpointing: false,
            device: vb.device().clone(),
        })
    }

    /// Loads `config.json` and safetensors files (one file or every shard) with frozen weights in `dtype`.
    pub fn load(
        config: &Path,
        weights: &[std::path::PathBuf],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cfg = Config::from_file(config)?;
        // SAFETY: the files are memory-mapped read-only; they must not be modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(weights, dtype, device) }
            .with_context(|| format!("opening safetensors {weights:?}"))?;
        Self::new(&cfg, vb).with_context(|| format!("loading Qwen3 weights from {weights:?}"))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// dtype of the frozen weights.
    pub fn weight_dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Benchmark switch: `false` makes frozen projections use candle's plain matmul, whose backward
    /// also computes every frozen weight's gradient.
    pub fn set_sparing_grads(&mut self, on: bool) {
        self.sparing = on;
    }

    /// Benchmark/comparison switch: `false` runs attention, RMSNorm, RoPE, the SwiGLU gating and
    /// the projections (with their LoRA adapters) as composite candle ops (every `[B, H, T, T]`
    /// intermediate materialised and kept for the backward) instead of the fused kernels of
    /// [`crate::model::kernels`]. Off the CPU the composite ops run either way.
    pub fn set_fused_kernels(&mut self, on: bool) {
        self.fused = on;
    }

    /// Benchmark/comparison switch: `false` runs frozen bf16 weights on the CPU through candle's bf16
    /// matmul (activations cast to bf16, both operands widened to f32 inside candle on every call)
    /// instead of the bf16-weight kernel of [`crate::model::bf16_linear`]. No effect on f32 weights
    /// or off the CPU.
    pub fn set_bf16_kernel(&mut self, on: bool) {
        self.bf16_kernel = on;
    }

    /// Activation checkpointing per decoder layer (transformers' `gradient_checkpointing`) for
    /// training forwards (`train: true`): each layer keeps only its input and output, and its
    /// backward recomputes the layer. Same gradients, about one more forward of compute. Refused
    /// with LoRA dropout > 0.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Token embeddings `[B, T, hidden]` in f32.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2().context("token ids must be [batch, time]")?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let rows = self.embed_tokens.index_select(&flat, 0)?;
        Ok(rows
            .reshape((b, t, self.cfg.hidden_size))?
            .to_dtype(DType::F32)?)
    }

    /// Token embeddings with `injected` `[B, N, hidden]` placed at each row's `slots` (N positions
    /// per row, e.g. [`crate::model::chat::Prompt::image_positions`]); the ids there are ignored. Built as
    /// `embed(ids)·keep + P·injected` with a constant 0/1 placement P, so values are copied exactly
    /// and only `injected` receives a gradient (a `cat` of frozen and trainable pieces would also
    /// store gradients for the frozen pieces).
    pub fn embed_with_slots(
        &self,
        ids: &Tensor,
        slots: &[Vec<usize>],
        injected: &Tensor,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2().context("token ids must be [batch, time]")?;
        let (bi, n, h) = injected
            .dims3()
            .context("injected embeddings must be [batch, slots, hidden]")?;
        ensure!(
            bi == b && slots.len() == b,
            "batch sizes differ: ids {b}, injected {bi}, slot lists {}",
            slots.len()
        );
        ensure!(
            h == self.cfg.hidden_size,
            "injected embeddings have width {h}, the model {}",
            self.cfg.hidden_size
        );
        let mut keep = vec![1f32; b * t];
        let mut place = vec![0f32; b * t * n];
        for (row, positions) in slots.iter().enumerate() {
            ensure!(
                positions.len() == n,
                "row {row} has {} slots, injected has {n}",
                positions.len()
            );
            for (k, &p) in positions.iter().enumerate() {
                ensure!(
                    p < t,
                    "row {row}: slot position {p} is outside the sequence of {t}"
                );
                ensure!(
                    keep[row * t + p] == 1.0,
                    "row {row}: slot position {p} is listed twice"
                );
                keep[row * t + p] = 0.0;
                place[(row * t + p) * n + k] = 1.0;
            }
        }
        let keep = Tensor::from_vec(keep, (b, t, 1), &self.device)?;
        let place = Tensor::from_vec(place, (b, t, n), &self.device)?;
        let text = self.embed(ids)?.broadcast_mul(&keep)?;
        let placed = frozen::matmul(&place, &injected.to_dtype(DType::F32)?.contiguous()?)?;
        Ok(frozen::broadcast_add(&text, &placed)?)
    }

    fn input_embeds(&self, input: Input) -> Result<Tensor> {
        match input {
            Input::Ids(ids) => self.embed(ids),
            Input::Embeds(e) => {
                let (_, _, h) = e
                    .dims3()
                    .context("input embeddings must be [batch, time, hidden]")?;
                ensure!(
                    h == self.cfg.hidden_size,
                    "input embeddings have width {h}, the model {}",
                    self.cfg.hidden_size
                );
                Ok(e.to_dtype(DType::F32)?)
            }
        }
    }

    /// Logits for every position, `[B, T, vocab]` f32. `attention_mask` `[B, T]` (any dtype; non-zero =
    /// real token) allows padded batches: padding is never attended to, and positions count real
    /// tokens only, so left- or right-padded rows give the logits they give alone.
    pub fn forward(&self, input: Input, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self
            .forward_with(input, attention_mask, ForwardOptions::default())?
            .logits)
    }

    pub fn forward_with(
        &self,
        input: Input,
        attention_mask: Option<&Tensor>,
        opts: ForwardOptions,
    ) -> Result<ForwardOutput> {
        let (hidden, hidden_states) = self.hidden(input, attention_mask, opts)?;
        let logits = self.lm_head(&hidden)?;
        Ok(ForwardOutput {
            logits,
            hidden_states,
        })
    }

    /// Final hidden states after the last RMSNorm (`[B, T, hidden]`), for callers that project only
    /// some positions through the LM head (see [`Qwen3::loss`]).
    pub fn forward_hidden(
        &self,
        input: Input,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        Ok(self
            .hidden(
                input,
                attention_mask,
                ForwardOptions {
                    output_hidden_states: false,
                    train,
                },
            )?
            .0)
    }

    fn hidden(
        &self,
        input: Input,
        attention_mask: Option<&Tensor>,
        opts: ForwardOptions,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let x = self.input_embeds(input)?;
        let (b, t, _) = x.dims3()?;
        let valid = mask_rows(attention_mask, b, t)?;
        let positions: Vec<Vec<usize>> = valid
            .iter()
            .map(|row| positions_from_mask(row, 0))
            .collect();
        let pass = Pass::new(
            self.rope(&positions)?,
            KeyMask::new(valid, 0)?,
            self.mode(opts.train),
            &self.device,
        )?;
        let mut hidden_states = Vec::new();
        let mut x = x;
        for layer in &self.layers {
            if opts.output_hidden_states {
                hidden_states.push(x.clone());
            }
            x = if self.checkpointing && opts.train {
                layer.forward_checkpointed(&x, &pass)?
            } else {
                layer.forward(&x, &pass, None)?
            };
        }
        let x = self.norm.forward(&x, self.mode(opts.train))?;
        if opts.output_hidden_states {
            hidden_states.push(x.clone());
        }
        Ok((x, hidden_states))
    }

    /// Projects hidden states through the LM head (tied embeddings or `lm_head.weight`): the
    /// fused projection of [`kernels::linear`] unless the fused kernels or the sparing op are off
    /// (and candle's bf16 matmul when the bf16 kernel is off, for comparisons).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(if !self.bf16_kernel {
            frozen::linear_cast(hidden, &self.lm_head)?
        } else if self.fused && self.sparing {
            kernels::linear(hidden, &self.lm_head)?
        } else {
            frozen::linear(hidden, &self.lm_head)?
        })
    }

    /// Causal-LM loss as transformers computes it with `labels` (`[B, T]` integers, −100 ignored):
    /// logits at t predict label t+1, mean over all counted targets of the batch. Only the counted
    /// positions go through the LM head.
    pub fn loss(
        &self,
        input: Input,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(input, attention_mask, train)?;
        let (rows, targets) = shifted_targets(labels)?;
        let (b, t, h) = hidden.dims3()?;
        ensure!(
            labels.dims2()? == (b, t),
            "labels {:?} do not match the input [{b}, {t}]",
            labels.shape()
        );
        let picked = hidden
            .reshape((b * t, h))?
            .index_select(&Tensor::new(rows, &self.device)?, 0)?;
        cross_entropy(&self.lm_head(&picked)?, &targets, self.fused)
    }

    /// Starts an empty generation cache for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache {
            layers: vec![None; self.layers.len()],
            key_valid: vec![Vec::new(); batch],
            next_position: vec![0; batch],
        }
    }

    /// Generation forward: runs only the new positions, attending to everything in `cache`, and
    /// appends them to it. `attention_mask` `[B, T_new]` marks real tokens among the new ones (for a
    /// left-padded prompt). Returns the new positions' logits `[B, T_new, vocab]`.
    pub fn forward_cached(
        &self,
        input: Input,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let x = self.input_embeds(input)?;
        let (b, t, _) = x.dims3()?;
        ensure!(
            cache.key_valid.len() == b,
            "cache holds {} rows, input has {b}",
            cache.key_valid.len()
        );
        ensure!(
            cache.layers.len() == self.layers.len(),
            "cache was made for another model"
        );
        let new_valid = mask_rows(attention_mask, b, t)?;
        let past = cache.len();
        let mut positions = Vec::with_capacity(b);
        for (row, new) in new_valid.iter().enumerate() {
            let pos = positions_from_mask(new, cache.next_position[row]);
            cache.next_position[row] += new.iter().filter(|&&v| v).count();
            positions.push(pos);
            cache.key_valid[row].extend_from_slice(new);
        }
        let pass = Pass::new(
            self.rope(&positions)?,
            KeyMask::new(cache.key_valid.clone(), past)?,
            self.mode(false),
            &self.device,
        )?;
        let mut x = x;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &pass, Some(slot))?;
        }
        self.lm_head(&self.norm.forward(&x, self.mode(false))?)
    }

    /// Greedy decoding of one sequence with the KV cache: the prompt (ids or embeddings `[1, T, ·]`)
    /// is run once, then one token per step until `is_stop` accepts a token (included in the
    /// output) or `max_new_tokens` are produced. Returns the generated ids.
    pub fn generate_greedy(
        &self,
        prompt: Input,
        max_new_tokens: usize,
        is_stop: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut cache = self.new_cache(1);
        let mut logits = self.forward_cached(prompt, None, &mut cache)?;
        let mut out = Vec::new();
        while out.len() < max_new_tokens {
            let last = logits.i((0, logits.dim(1)? - 1))?;
            let next = last.argmax(0)?.to_scalar::<u32>()?;
            out.push(next);
            if is_stop(next) {
                break;
            }
            let ids = Tensor::new(&[[next]], &self.device)?;
            logits = self.forward_cached(Input::Ids(&ids), None, &mut cache)?;
        }
        Ok(out)
    }

    /// cos/sin tables `[B, 1, T, D]` for per-row positions (float32 as transformers).
    fn rope(&self, positions: &[Vec<usize>]) -> Result<Rope> {
        let d = self.cfg.head_dim();
        let half = self.inv_freq.len();
        let (b, t) = (positions.len(), positions.first().map_or(0, Vec::len));
        let mut cos = Vec::with_capacity(b * t * d);
        let mut sin = Vec::with_capacity(b * t * d);
        for row in positions {
            for &p in row {
                for i in 0..d {
                    let angle = p as f32 * self.inv_freq[i % half];
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = (b, 1, t, d);
        Ok(Rope {
            cos: Tensor::from_vec(cos, shape, &self.device)?,
            sin: Tensor::from_vec(sin, shape, &self.device)?,
        })
    }

    fn mode(&self, train: bool) -> Mode {
        Mode {
            train,
            sparing: self.sparing,
            fused: self.fused,
            bf16_kernel: self.bf16_kernel,
        }
    }

    /// Attaches a LoRA adapter to the projection at `path` (e.g. `model.layers.0.self_attn.q_proj`).
    pub fn set_lora(&mut self, path: &str, lora: Option<LoraLayer>) -> Result<()> {
        let proj = self.projection_mut(path)?;
        if let Some(l) = &lora {
            let (out_dim, in_dim) = proj.weight.dims2()?;
            ensure!(
                l.in_features()? == in_dim && l.out_features()? == out_dim,
                "LoRA for {path} is {}→{}, the projection {in_dim}→{out_dim}",
                l.in_features()?,
                l.out_features()?
            );
        }
        proj.lora = lora;
        Ok(())
    }

    /// Folds the adapter of `path` into its frozen weight (`W += (α/r)·B·A`, computed in f32) and
    /// removes it.
    pub fn merge_lora(&mut self, path: &str) -> Result<()> {
        let proj = self.projection_mut(path)?;
        if let Some(l) = proj.lora.take() {
            let w = proj.weight.to_dtype(DType::F32)?;
            let merged = (w + l.delta_weight()?)?.to_dtype(proj.weight.dtype())?;
            proj.weight = merged.detach();
        }
        Ok(())
    }

    /// The frozen weight of a projection (after any merge).
    pub fn projection_weight(&self, path: &str) -> Result<&Tensor> {
        let (layer, module) = parse_projection_path(path, self.layers.len())?;
        let l = &self.layers[layer];
        Ok(match module {
            "q_proj" => &l.self_attn.q_proj.weight,
            "k_proj" => &l.self_attn.k_proj.weight,
            "v_proj" => &l.self_attn.v_proj.weight,
            "o_proj" => &l.self_attn.o_proj.weight,
            "gate_proj" => &l.mlp.gate_proj.weight,
            "up_proj" => &l.mlp.up_proj.weight,
            _ => &l.mlp.down_proj.weight,
        })
    }

    fn projection_mut(&mut self, path: &str) -> Result<&mut Projection> {
        let (layer, module) = parse_projection_path(path, self.layers.len())?;
        self.layers[layer]
            .projection_mut(module)
            .with_context(|| format!("{path}: unknown projection"))
    }
}

/// Splits `model.layers.N.{self_attn|mlp}.X_proj` into (N, X_proj), checking parent and range.
pub fn parse_projection_path(path: &str, num_layers: usize) -> Result<(usize, &str)> {
    let parse = || -> Option<(usize, &str, &str)> {
        let rest = path.strip_prefix("model.layers.")?;
        let (n, rest) = rest.split_once('.')?;
        let (parent, module) = rest.split_once('.')?;
        Some((n.parse().ok()?, parent, module))
    };
    let (layer, parent, module) = parse().with_context(|| {
        format!("{path:?} is not a projection path like model.layers.0.self_attn.q_proj")
    })?;
    ensure!(
        layer < num_layers,
        "{path}: layer {layer} does not exist (the model has {num_layers})"
    );
    ensure!(projection_path(layer, module) == path && (ATTENTION_PROJECTIONS.contains(&module) || MLP_PROJECTIONS.contains(&module)),
        "{path:?} is not a Qwen3 projection (model.layers.N.self_attn.{{q,k,v,o}}_proj or model.layers.N.mlp.{{gate,up,down}}_proj; parent {parent:?})");
    Ok((layer, module))
}

/// Reads a `[B, T]` mask into per-row booleans (all true without a mask).
fn mask_rows(mask: Option<&Tensor>, b: usize, t: usize) -> Result<Vec<Vec<bool>>> {
    let Some(mask) = mask else {
        return Ok(vec![vec![true; t]; b]);
    };
    ensure!(
        mask.dims2()? == (b, t),
        "attention mask {:?} does not match the input [{b}, {t}]",
        mask.shape()
    );
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0.0).collect())
        .collect())
}

/// RoPE positions of a row: real tokens count up from `start`; padding takes the position of the
/// next real token (its output is unused).
fn positions_from_mask(valid: &[bool], start: usize) -> Vec<usize> {
    let mut next = start;
    valid
        .iter()
        .map(|&v| {
            let p = next;
            if v {
                next += 1;
            }
            p
        })
        .collect()
}

/// Flat row indices `b·T + t` whose next label counts, and those labels (`u32`).
fn shifted_targets(labels: &Tensor) -> Result<(Vec<u32>, Vec<u32>)> {
    let (b, t) = labels.dims2().context("labels must be [batch, time]")?;
    let rows_labels = labels.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (bi, row) in rows_labels.iter().enumerate() {
        for ti in 0..t.saturating_sub(1) {
            let label = row[ti + 1];
            if label == -100 {
                continue;
            }
            ensure!(
                label >= 0,
                "label {label} at row {bi}, position {} (only -100 may be negative)",
                ti + 1
            );
            rows.push((bi * t + ti) as u32);
            targets.push(label as u32);
        }
    }
    ensure!(
        !targets.is_empty(),
        "no label to predict: every shifted label of the [{b}, {t}] batch is -100"
    );
    Ok((rows, targets))
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets`: the fused kernel on the CPU in f32
/// (unless `fused` is off), the composite ops otherwise.
fn cross_entropy(logits: &Tensor, targets: &[u32], fused: bool) -> Result<Tensor> {
    Ok(if fused {
        kernels::cross_entropy(logits, targets)?
    } else {
        kernels::cross_entropy_composite(logits, targets)?
    })
}

/// Causal-LM loss from full logits `[B, T, V]` and labels `[B, T]` (−100 ignored), as transformers.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    ensure!(
        labels.dims2()? == (b, t),
        "labels {:?} do not match logits [{b}, {t}, {v}]",
        labels.shape()
    );
    let (rows, targets) = shifted_targets(labels)?;
    let picked = logits
        .reshape((b * t, v))?
        .index_select(&Tensor::new(rows, logits.device())?, 0)?;
    cross_entropy(&picked, &targets, true)
}
