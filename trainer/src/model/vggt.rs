//! The frozen VGGT aggregator (facebookresearch/vggt `vggt.models.aggregator.Aggregator`).
//!
//! Views → DINOv2 ViT/14 with register tokens (or a bare 14×14 conv) → per frame
//! `[camera, 4 registers, patches]` → alternating frame / global attention blocks with 2-D RoPE and
//! per-head q/k LayerNorm → per layer `concat(frame_out, global_out)` (2·C wide).
//! See `shared/MODEL_NOTES.md` §1 for the architecture down to the epsilons. Inference only: this
//! module uses candle's fused ops (layer norm, softmax, rope), which record no backward.
//!
//! Parameter paths mirror the released checkpoint below its `aggregator.` prefix; loading from
//! `model.pt` / `model.safetensors` is in [`crate::model::vggt_load`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{bail, DType, Device, Module, Result, Shape, Tensor, D};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::model::kernels::KeyMask;
use crate::model::kernels_infer;
use serde::{Deserialize, Serialize};

/// ImageNet statistics the aggregator normalises its [0, 1] input with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// PyTorch's default LayerNorm eps, used by the aggregator's blocks and their q/k norms.
pub const BLOCK_LAYER_NORM_EPS: f64 = 1e-5;
/// DINOv2 builds its LayerNorms with eps 1e-6 (blocks and final norm).
pub const DINOV2_LAYER_NORM_EPS: f64 = 1e-6;
/// Score matrices larger than this many elements are computed a few heads at a time, so global
/// attention over many 1041-token frames does not need one giant allocation.
const MAX_SCORE_ELEMENTS: usize = 1 << 27;

/// Which attention a block runs: within one frame, or over all frames of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    Frame,
    Global,
}

/// Sizes of the DINOv2 patch embedder (`vit_large` etc. in the official code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub num_register_tokens: usize,
}

/// The patch embedder the aggregator is built with.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchEmbedKind {
    /// A single `patch_size`×`patch_size` stride-`patch_size` conv (`patch_embed.proj`).
    Conv,
    /// A DINOv2 ViT with register tokens (`patch_embed.{cls_token, pos_embed, blocks, …}`).
    Dinov2(Dinov2Config),
}

/// Constructor arguments of `Aggregator`, with the official defaults (VGGT-1B).
///
/// Deserialises from VGGT's `config.json` (`{"embed_dim": 1024, "img_size": 518, "patch_size": 14}`)
/// as well as from a full argument list; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub num_register_tokens: usize,
    pub aa_order: Vec<AttentionKind>,
    pub aa_block_size: usize,
    pub qk_norm: bool,
    /// RoPE base; ≤ 0 disables RoPE.
    pub rope_freq: f64,
    /// `"dinov2_vitl14_reg"` (default), `"dinov2_vitb14_reg"`, `"dinov2_vits14_reg"`,
    /// `"dinov2_vitg2_reg"`, or any string containing `"conv"`.
    pub patch_embed: String,
    /// Explicit DINOv2 sizes; when set they override the named variant (tiny test models).
    pub dinov2: Option<Dinov2Config>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            img_size: 518,
            patch_size: 14,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            mlp_ratio: 4.0,
            num_register_tokens: 4,
            aa_order: vec![AttentionKind::Frame, AttentionKind::Global],
            aa_block_size: 1,
            qk_norm: true,
            rope_freq: 100.0,
            patch_embed: "dinov2_vitl14_reg".to_string(),
            dinov2: None,
        }
    }
}

impl Config {
    /// The released `facebook/VGGT-1B` aggregator.
    pub fn vggt_1b() -> Self {
        Self::default()
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Tokens per frame before the patches: camera + registers (`patch_start_idx`, 5 in VGGT).
    pub fn patch_start_idx(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// Width of every output layer: frame and global features concatenated.
    pub fn output_dim(&self) -> usize {
        2 * self.embed_dim
    }

    /// Resolves `patch_embed` (+ `dinov2`) the way the official `__build_patch_embed__` does.
    pub fn patch_embed_kind(&self) -> Result<PatchEmbedKind> {
        if let Some(dino) = &self.dinov2 {
            return Ok(PatchEmbedKind::Dinov2(dino.clone()));
        }
        if self.patch_embed.contains("conv") {
            return Ok(PatchEmbedKind::Conv);
        }
        let (embed_dim, depth, num_heads) = match self.patch_embed.as_str() {
            "dinov2_vitl14_reg" => (1024, 24, 16),
            "dinov2_vitb14_reg" => (768, 12, 12),
            "dinov2_vits14_reg" => (384, 12, 6),
            "dinov2_vitg2_reg" => (1536, 40, 24),
            other => bail!(
                "unknown VGGT patch_embed {other:?}: expected dinov2_vit{{l14,b14,s14,g2}}_reg, \
                 a name containing \"conv\", or explicit `dinov2` sizes"
            ),
        };
        Ok(PatchEmbedKind::Dinov2(Dinov2Config {
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            num_register_tokens: self.num_register_tokens,
        }))
    }

    /// Checks the invariants the official constructor asserts (or silently relies on).
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.num_heads == 0 || self.aa_block_size == 0 {
            bail!("VGGT config: patch_size, num_heads and aa_block_size must be positive");
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            bail!(
                "VGGT config: embed_dim {} is not divisible by num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if self.rope_freq > 0.0 && !self.head_dim().is_multiple_of(4) {
            bail!(
                "VGGT config: 2-D RoPE needs head_dim divisible by 4, got {}",
                self.head_dim()
            );
        }
        if !self.depth.is_multiple_of(self.aa_block_size) {
            bail!(
                "VGGT config: depth {} is not divisible by aa_block_size {}",
                self.depth,
                self.aa_block_size
            );
        }
        let mut order = self.aa_order.clone();
        order.sort_by_key(|k| *k as u8);
        if order != [AttentionKind::Frame, AttentionKind::Global] {
            bail!(
                "VGGT config: aa_order must name \"frame\" and \"global\" once each, got {:?}",
                self.aa_order
            );
        }
        if let PatchEmbedKind::Dinov2(d) = self.patch_embed_kind()? {
            if d.embed_dim != self.embed_dim {
                bail!(
                    "VGGT config: DINOv2 width {} differs from embed_dim {}",
                    d.embed_dim,
                    self.embed_dim
                );
            }
            if d.num_heads == 0 || d.embed_dim % d.num_heads != 0 {
                bail!(
                    "VGGT config: DINOv2 width {} not divisible by its {} heads",
                    d.embed_dim,
                    d.num_heads
                );
            }
            if !self.img_size.is_multiple_of(self.patch_size) {
                bail!(
                    "VGGT config: img_size {} is not a multiple of patch_size {}",
                    self.img_size,
                    self.patch_size
                );
            }
        }
        Ok(())
    }
}

fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    // Built from explicit weight/bias (not `candle_nn::layer_norm`) so no alias probing touches
    // the checkpoint.
    let weight = vb.get(size, "weight")?;
    let bias = vb.get(size, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

/// Precomputed 2-D RoPE rotation for a token sequence, laid out for [`apply_rope_2d`]:
/// entry `2n` holds token n's row angles, entry `2n + 1` its column angles.
#[derive(Debug, Clone)]
pub struct Rope2dTable {
    cos: Tensor,
    sin: Tensor,
}

impl Rope2dTable {
    /// `positions` are (row, col) per token. Frequencies `1/base^(2k/d)` over each half (d =
    /// head_dim/2), computed in float32 like `RotaryPositionEmbedding2D`, then cast to `dtype`.
    pub fn new(
        positions: &[[u32; 2]],
        base: f64,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half / 2)
            .map(|k| 1.0f32 / (base as f32).powf((2 * k) as f32 / half as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for pos in positions {
            for &p in pos {
                for &f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = (2 * positions.len(), half / 2);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }
}

/// Rotates `x` [B, H, N, D]: the first D/2 channels by the row position, the last D/2 by the
/// column position, each with rotate-half. Viewing x as [B, H, 2N, D/2] turns that into one 1-D
/// rope whose "positions" alternate row/col (see [`Rope2dTable`]).
fn apply_rope_2d(x: &Tensor, table: &Rope2dTable) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    let x = x.contiguous()?.reshape((b, h, 2 * n, d / 2))?;
    candle_nn::rotary_emb::rope(&x, &table.cos, &table.sin)?.reshape((b, h, n, d))
}

/// softmax(q·kᵀ·scale)·v over [B, H, N, D] inputs, a few heads at a time when the score matrix
/// would exceed `max_score_elements`: the path off the CPU / f32 (where the blocks aren't fused),
/// and the reference the fused kernel is tested against.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let scale = 1.0 / (d as f64).sqrt();
    let attend = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
    };
    let per_head = b * n * k.dim(2)?;
    let heads_per_chunk = (max_score_elements / per_head.max(1)).clamp(1, h);
    if heads_per_chunk == h {
        return attend(q, k, v);
    }
    let mut chunks = Vec::with_capacity(h.div_ceil(heads_per_chunk));
    for start in (0..h).step_by(heads_per_chunk) {
        let len = heads_per_chunk.min(h - start);
        let part = |t: &Tensor| t.narrow(1, start, len)?.contiguous();
        chunks.push(attend(&part(q)?, &part(k)?, &part(v)?)?);
    }
    let out = Tensor::cat(&chunks, 1)?;
    debug_assert_eq!(out.dims(), [b, h, n, d]);
    Ok(out)
}

/// `vggt.layers.attention.Attention` (also DINOv2's): fused qkv, optional per-head q/k
/// LayerNorm, optional 2-D RoPE, softmax attention; the output projection's weight (its bias
/// lives in [`Block`], which fuses it with the LayerScale and the residual add).
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj_weight: Tensor,
    qk_norm: Option<(LayerNorm, LayerNorm)>,
    num_heads: usize,
}

impl Attention {
    fn new(dim: usize, num_heads: usize, qk_norm: bool, vb: VarBuilder) -> Result<Self> {
        let head_dim = dim / num_heads;
        let qk_norm = if qk_norm {
            Some((
                layer_norm(head_dim, BLOCK_LAYER_NORM_EPS, vb.pp("q_norm"))?,
                layer_norm(head_dim, BLOCK_LAYER_NORM_EPS, vb.pp("k_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj_weight: vb.pp("proj").get((dim, dim), "weight")?,
            qk_norm,
            num_heads,
        })
    }

    /// q, k, v `[B, H, N, D]` with the q/k norms and RoPE applied: one fused pass on the CPU in
    /// f32 ([`kernels_infer::qkv_heads`]), else [`Self::qkv_heads_composite`].
    fn qkv_heads(
        &self,
        x: &Tensor,
        rope: Option<&Rope2dTable>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (weight, Some(bias)) = (self.qkv.weight(), self.qkv.bias()) else {
            bail!("VGGT attention: the qkv projection has no bias");
        };
        let mut inputs = vec![x, weight, bias];
        if let Some(table) = rope {
            inputs.extend([&table.cos, &table.sin]);
        }
        if !kernels_infer::fused_applies(&inputs) {
            return self.qkv_heads_composite(x, rope);
        }
        fn head_norm(norm: &LayerNorm) -> Result<kernels_infer::HeadNorm<'_>> {
            let Some(bias) = norm.bias() else {
                bail!("VGGT attention: q/k norm without a bias");
            };
            Ok(kernels_infer::HeadNorm {
                weight: norm.weight(),
                bias,
                eps: norm.eps(),
            })
        }
        let qk_norm = match &self.qk_norm {
            Some((q_norm, k_norm)) => Some([head_norm(q_norm)?, head_norm(k_norm)?]),
            None => None,
        };
        let opts = kernels_infer::QkvOptions {
            heads: self.num_heads,
            qk_norm,
            rope: rope.map(|t| (&t.cos, &t.sin)),
        };
        let qkv = kernels_infer::qkv_heads(x, weight, bias, &opts)?;
        Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
    }

    /// [`Self::qkv_heads`] with candle ops: the projection, a permuted copy per q / k / v,
    /// candle's LayerNorm and RoPE.
    fn qkv_heads_composite(
        &self,
        x: &Tensor,
        rope: Option<&Rope2dTable>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, n, c) = x.dims3()?;
        let h = self.num_heads;
        // [B, N, 3, H, D] → [3, B, H, N, D]: q = first C outputs, then k, then v; head-major.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, h, c / h))?
            .permute((2, 0, 3, 1, 4))?;
        let mut q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        if let Some(table) = rope {
            q = apply_rope_2d(&q, table)?;
            k = apply_rope_2d(&k, table)?;
        }
        Ok((q, k, v))
    }

    /// The heads' outputs `[B, N, C]`, before the output projection.
    fn attend(&self, x: &Tensor, rope: Option<&Rope2dTable>) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let h = self.num_heads;
        let (q, k, v) = self.qkv_heads(x, rope)?;
        if q.device().is_cpu() && q.dtype() == DType::F32 {
            // The fused kernel: scores a block of queries at a time (never every head's [N, N]
            // matrix), output already [B, N, H·D].
            let scale = 1.0 / ((c / h) as f64).sqrt();
            return crate::model::kernels::attention(&q, &k, &v, &KeyMask::full(b, n), scale);
        }
        let out = scaled_dot_product_attention(&q, &k, &v, MAX_SCORE_ELEMENTS)?;
        out.transpose(1, 2)?.reshape((b, n, c))
    }
}

/// `vggt.layers.block.Block` (DINOv2's `NestedTensorBlock` is the same computation): pre-norm
/// attention and exact-GELU MLP residuals, each scaled by a LayerScale `gamma`.
///
/// The projections feeding a residual run through [`kernels_infer::linear_scaled_residual`]
/// (bias, LayerScale and residual add in one pass), `fc1` through
/// [`kernels_infer::linear_bias_gelu`]; their bias and γ are kept stacked as `[2, C]`.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    /// `attn.proj.bias` and `ls1.gamma`.
    proj_bias_ls1: Tensor,
    norm2: LayerNorm,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    /// `mlp.fc2.bias` and `ls2.gamma`.
    fc2_bias_ls2: Tensor,
}

impl Block {
    fn new(
        dim: usize,
        num_heads: usize,
        mlp_ratio: f64,
        eps: f64,
        qk_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        let stacked = |bias: Tensor, gamma: Tensor| Tensor::stack(&[bias, gamma], 0);
        Ok(Self {
            norm1: layer_norm(dim, eps, vb.pp("norm1"))?,
            attn: Attention::new(dim, num_heads, qk_norm, vb.pp("attn"))?,
            proj_bias_ls1: stacked(
                vb.pp("attn.proj").get(dim, "bias")?,
                vb.pp("ls1").get(dim, "gamma")?,
            )?,
            norm2: layer_norm(dim, eps, vb.pp("norm2"))?,
            fc1_weight: vb.pp("mlp.fc1").get((hidden, dim), "weight")?,
            fc1_bias: vb.pp("mlp.fc1").get(hidden, "bias")?,
            fc2_weight: vb.pp("mlp.fc2").get((dim, hidden), "weight")?,
            fc2_bias_ls2: stacked(
                vb.pp("mlp.fc2").get(dim, "bias")?,
                vb.pp("ls2").get(dim, "gamma")?,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, rope: Option<&Rope2dTable>) -> Result<Tensor> {
        let attn = self.attn.attend(&self.norm1.forward(x)?, rope)?;
        let x = kernels_infer::linear_scaled_residual(
            &attn,
            &self.attn.proj_weight,
            &self.proj_bias_ls1,
            x,
        )?;
        let hidden = kernels_infer::linear_bias_gelu(
            &self.norm2.forward(&x)?,
            &self.fc1_weight,
            &self.fc1_bias,
        )?;
        kernels_infer::linear_scaled_residual(&hidden, &self.fc2_weight, &self.fc2_bias_ls2, &x)
    }
}

/// A `p`×`p` stride-`p` conv written as patchify + matmul (exactly the conv's sum, and it also
/// runs in bf16 on CPU, where candle's conv2d does not).
#[derive(Debug, Clone)]
struct PatchProjection {
    proj: Linear,
    patch_size: usize,
}

impl PatchProjection {
    fn new(patch_size: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((dim, 3, patch_size, patch_size), "weight")?;
        let bias = vb.get(dim, "bias")?;
        let weight = weight.reshape((dim, 3 * patch_size * patch_size))?;
        Ok(Self {
            proj: Linear::new(weight, Some(bias)),
            patch_size,
        })
    }

    /// [N, 3, H, W] → [N, (H/p)·(W/p), C], patches in row-major order.
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (n, c, height, width) = images.dims4()?;
        let p = self.patch_size;
        let (h, w) = (height / p, width / p);
        let patches = images
            .reshape((n, c, h, p, w, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, h * w, c * p * p))?;
        self.proj.forward(&patches)
    }
}

/// Antialiased bicubic resampling weights of one axis, as PyTorch's
/// `interpolate(mode="bicubic", antialias=True, size=…)` computes them: a [out, in] matrix.
pub fn aa_bicubic_weights(in_size: usize, out_size: usize) -> Vec<Vec<f64>> {
    const A: f64 = -0.5;
    let cubic = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let stretch = scale.max(1.0);
    let support = 2.0 * stretch;
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(in_size);
            let mut row = vec![0.0; in_size];
            for (j, weight) in row.iter_mut().enumerate().take(hi).skip(lo) {
                *weight = cubic((j as f64 - center + 0.5) / stretch);
            }
            let total: f64 = row.iter().sum();
            if total != 0.0 {
                row.iter_mut().for_each(|weight| *weight /= total);
            }
            row
        })
        .collect()
}

fn weights_tensor(rows: &[Vec<f64>], device: &Device) -> Result<Tensor> {
    let (m, n) = (rows.len(), rows.first().map_or(0, Vec::len));
    let flat: Vec<f32> = rows.iter().flatten().map(|&w| w as f32).collect();
    Tensor::from_vec(flat, (m, n), device)
}

/// Resamples a [M, M, C] grid to [h, w, C] with separable antialiased bicubic, in float32.
pub fn resample_grid(grid: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (rows, cols, c) = grid.dims3()?;
    let grid = grid.to_dtype(DType::F32)?;
    let device = grid.device();
    let wr = weights_tensor(&aa_bicubic_weights(rows, h), device)?;
    let wc = weights_tensor(&aa_bicubic_weights(cols, w), device)?;
    // Rows first: [h, M] @ [M, M·C]; then columns on the transposed layout.
    let by_rows = wr.matmul(&grid.reshape((rows, cols * c))?)?;
    let by_cols = wc.matmul(
        &by_rows
            .reshape((h, cols, c))?
            .transpose(0, 1)?
            .reshape((cols, h * c))?,
    )?;
    by_cols.reshape((w, h, c))?.transpose(0, 1)?.contiguous()
}

/// DINOv2 ViT with register tokens, as VGGT uses it (`x_norm_patchtokens` of `forward_features`).
#[derive(Debug, Clone)]
struct Dinov2 {
    patch: PatchProjection,
    cls_token: Tensor,
    pos_embed: Tensor,
    register_tokens: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    grid: usize,
}

impl Dinov2 {
    fn new(cfg: &Config, dino: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let c = dino.embed_dim;
        let grid = cfg.img_size / cfg.patch_size;
        // `mask_token` ships in the checkpoint but only serves masked pre-training: fetched so
        // the expected key list matches the release, then dropped.
        vb.get((1, c), "mask_token")?;
        let blocks = (0..dino.depth)
            .map(|i| {
                Block::new(
                    c,
                    dino.num_heads,
                    dino.mlp_ratio,
                    DINOV2_LAYER_NORM_EPS,
                    false,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch: PatchProjection::new(cfg.patch_size, c, vb.pp("patch_embed.proj"))?,
            cls_token: vb.get((1, 1, c), "cls_token")?,
            pos_embed: vb.get((1, 1 + grid * grid, c), "pos_embed")?,
            register_tokens: vb.get((1, dino.num_register_tokens, c), "register_tokens")?,
            blocks,
            norm: layer_norm(c, DINOV2_LAYER_NORM_EPS, vb.pp("norm"))?,
            grid,
        })
    }

    /// The positional table added to `[cls, patches]` for an h×w patch grid: the stored one when
    /// h = w = the stored grid, else the grid resampled (antialiased bicubic, float32).
    fn pos_embed_for(&self, h: usize, w: usize) -> Result<Tensor> {
        if h == self.grid && w == self.grid {
            return Ok(self.pos_embed.clone());
        }
        let c = self.pos_embed.dim(2)?;
        let cls = self.pos_embed.narrow(1, 0, 1)?;
        let grid = self
            .pos_embed
            .narrow(1, 1, self.grid * self.grid)?
            .reshape((self.grid, self.grid, c))?;
        let resampled = resample_grid(&grid, h, w)?
            .reshape((1, h * w, c))?
            .to_dtype(self.pos_embed.dtype())?;
        Tensor::cat(&[cls, resampled], 1)
    }

    fn forward(&self, images: &Tensor, trace: Option<&mut Trace>) -> Result<Tensor> {
        let (n, _, height, width) = images.dims4()?;
        let p = self.patch.patch_size;
        let (h, w) = (height / p, width / p);
        let c = self.pos_embed.dim(2)?;
        let patches = self.patch.forward(images)?;
        let cls = self.cls_token.broadcast_as((n, 1, c))?;
        let pos_embed = self.pos_embed_for(h, w)?;
        let x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&pos_embed)?;
        if let Some(trace) = trace {
            trace.pos_embed_used = Some(pos_embed);
        }
        let registers = self
            .register_tokens
            .broadcast_as((n, self.register_tokens.dim(1)?, c))?;
        let mut x = Tensor::cat(
            &[&x.narrow(1, 0, 1)?, &registers, &x.narrow(1, 1, h * w)?],
            1,
        )?;
        for block in &self.blocks {
            x = block.forward(&x, None)?;
        }
        let first_patch = 1 + self.register_tokens.dim(1)?;
        self.norm.forward(&x)?.narrow(1, first_patch, h * w)
    }
}

#[derive(Debug, Clone)]
enum PatchEmbed {
    Conv(PatchProjection),
    Dinov2(Box<Dinov2>),
}

/// Intermediate tensors of one forward call, named like the parity fixtures' `debug.*` keys.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    pub images_normalized: Option<Tensor>,
    pub patch_tokens: Option<Tensor>,
    pub tokens_in: Option<Tensor>,
    /// (row, col) RoPE position of every token of one frame (identical for every frame).
    pub positions: Vec<[u32; 2]>,
    pub pos_embed_used: Option<Tensor>,
}

/// The VGGT aggregator.
#[derive(Debug, Clone)]
pub struct Aggregator {
    cfg: Config,
    patch_embed: PatchEmbed,
    camera_token: Tensor,
    register_token: Tensor,
    frame_blocks: Vec<Block>,
    global_blocks: Vec<Block>,
    dtype: DType,
    device: Device,
}

impl Aggregator {
    /// Builds the aggregator from `vb`, whose paths are the checkpoint's below `aggregator.`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.embed_dim;
        let patch_embed = match cfg.patch_embed_kind()? {
            PatchEmbedKind::Conv => PatchEmbed::Conv(PatchProjection::new(
                cfg.patch_size,
                c,
                vb.pp("patch_embed.proj"),
            )?),
            PatchEmbedKind::Dinov2(dino) => {
                PatchEmbed::Dinov2(Box::new(Dinov2::new(cfg, &dino, vb.pp("patch_embed"))?))
            }
        };
        let blocks = |name: &str| {
            (0..cfg.depth)
                .map(|i| {
                    Block::new(
                        c,
                        cfg.num_heads,
                        cfg.mlp_ratio,
                        BLOCK_LAYER_NORM_EPS,
                        cfg.qk_norm,
                        vb.pp(format!("{name}.{i}")),
                    )
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            patch_embed,
            camera_token: vb.get((1, 2, 1, c), "camera_token")?,
            register_token: vb.get((1, 2, cfg.num_register_tokens, c), "register_token")?,
            frame_blocks: blocks("frame_blocks")?,
            global_blocks: blocks("global_blocks")?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// (row, col) RoPE positions of one frame's tokens: (0, 0) for the special tokens, then
    /// (y + 1, x + 1) for the patches in row-major order.
    pub fn positions(&self, h: usize, w: usize) -> Vec<[u32; 2]> {
        let special = std::iter::repeat_n([0, 0], self.cfg.patch_start_idx());
        let patches = (0..h).flat_map(|y| (0..w).map(move |x| [y as u32 + 1, x as u32 + 1]));
        special.chain(patches).collect()
    }

    /// The output of the last layer, [B, S, P, 2C] (or [S, P, 2C] for a 4-D input).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let last = self.cfg.depth - 1;
        let mut outputs = self.forward_layers(images, &[last])?;
        Ok(outputs.remove(0))
    }

    /// The outputs of the requested layers (0-based, any order; repeated indices allowed), each
    /// [B, S, P, 2C] for images [B, S, 3, H, W] in [0, 1], or [S, P, 2C] for [S, 3, H, W].
    /// Blocks after the deepest requested layer are not run.
    pub fn forward_layers(&self, images: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        self.run(images, layers, None)
    }

    /// [`Self::forward_layers`] that also records the intermediate tensors.
    pub fn forward_traced(
        &self,
        images: &Tensor,
        layers: &[usize],
    ) -> Result<(Vec<Tensor>, Trace)> {
        let mut trace = Trace::default();
        let outputs = self.run(images, layers, Some(&mut trace))?;
        Ok((outputs, trace))
    }

    fn run(
        &self,
        images: &Tensor,
        layers: &[usize],
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<Tensor>> {
        let cfg = &self.cfg;
        let batched = match images.rank() {
            5 => true,
            4 => false,
            r => bail!(
                "VGGT aggregator: images must be [B, S, 3, H, W] or [S, 3, H, W], got rank {r}"
            ),
        };
        let images = if batched {
            images.clone()
        } else {
            images.unsqueeze(0)?
        };
        let (b, s, channels, height, width) = images.dims5()?;
        let p = cfg.patch_size;
        if channels != 3 || height % p != 0 || width % p != 0 || height == 0 || width == 0 {
            bail!(
                "VGGT aggregator: images must have 3 channels and H, W multiples of {p}, \
                 got {:?}",
                images.dims()
            );
        }
        if s == 0 {
            bail!("VGGT aggregator: no views (S = 0)");
        }
        if let Some(&bad) = layers.iter().find(|&&l| l >= cfg.depth) {
            bail!(
                "VGGT aggregator: output layer {bad} requested, the model has {} layers",
                cfg.depth
            );
        }
        let Some(&deepest) = layers.iter().max() else {
            return Ok(vec![]);
        };
        let (h, w, c) = (height / p, width / p, cfg.embed_dim);

        // 1. ImageNet normalisation in float32, then the model's dtype.
        let stats = |v: [f32; 3]| Tensor::from_slice(&v, (1, 1, 3, 1, 1), &self.device);
        let normalized = images
            .to_device(&self.device)?
            .to_dtype(DType::F32)?
            .broadcast_sub(&stats(IMAGENET_MEAN)?)?
            .broadcast_div(&stats(IMAGENET_STD)?)?;
        let frames = normalized
            .reshape((b * s, 3, height, width))?
            .to_dtype(self.dtype)?;

        // 2. Patch tokens [B·S, h·w, C].
        let patch_tokens = match &self.patch_embed {
            PatchEmbed::Conv(proj) => proj.forward(&frames)?,
            PatchEmbed::Dinov2(dino) => dino.forward(&frames, trace.as_deref_mut())?,
        };

        // 3. [camera, registers, patches]; token slot 0 for each sequence's first frame, 1 after.
        let special = |table: &Tensor| -> Result<Tensor> {
            let n = table.dim(2)?;
            let first = table.narrow(1, 0, 1)?;
            let per_frame = if s == 1 {
                first
            } else {
                let rest = table.narrow(1, 1, 1)?.broadcast_as((1, s - 1, n, c))?;
                Tensor::cat(&[&first, &rest], 1)?
            };
            per_frame.broadcast_as((b, s, n, c))?.reshape((b * s, n, c))
        };
        let mut tokens = Tensor::cat(
            &[
                &special(&self.camera_token)?,
                &special(&self.register_token)?,
                &patch_tokens,
            ],
            1,
        )?;
        let n_tokens = tokens.dim(1)?;

        // 4. RoPE tables for one frame and for all frames of a sequence.
        let positions = self.positions(h, w);
        let (frame_rope, global_rope) = if cfg.rope_freq > 0.0 {
            let global: Vec<[u32; 2]> = positions
                .iter()
                .copied()
                .cycle()
                .take(s * n_tokens)
                .collect();
            let table = |pos: &[[u32; 2]]| {
                Rope2dTable::new(pos, cfg.rope_freq, cfg.head_dim(), self.dtype, &self.device)
            };
            (Some(table(&positions)?), Some(table(&global)?))
        } else {
            (None, None)
        };
        if let Some(trace) = trace {
            trace.images_normalized = Some(normalized);
            trace.patch_tokens = Some(patch_tokens);
            trace.tokens_in = Some(tokens.clone());
            trace.positions = positions;
        }

        // 5. Alternating attention; layer i's output = concat(frame_i, global_i).
        let mut by_layer: BTreeMap<usize, Tensor> = BTreeMap::new();
        let block_size = cfg.aa_block_size;
        for group in 0..cfg.depth / block_size {
            if group * block_size > deepest {
                break;
            }
            let mut frame_out = Vec::with_capacity(block_size);
            let mut global_out = Vec::with_capacity(block_size);
            for kind in &cfg.aa_order {
                let (blocks, shape, rope, out) = match kind {
                    AttentionKind::Frame => (
                        &self.frame_blocks,
                        (b * s, n_tokens, c),
                        &frame_rope,
                        &mut frame_out,
                    ),
                    AttentionKind::Global => (
                        &self.global_blocks,
                        (b, s * n_tokens, c),
                        &global_rope,
                        &mut global_out,
                    ),
                };
                tokens = tokens.reshape(shape)?;
                for block in &blocks[group * block_size..(group + 1) * block_size] {
                    tokens = block.forward(&tokens, rope.as_ref())?;
                    out.push(tokens.reshape((b, s, n_tokens, c))?);
                }
            }
            for (i, (frame, global)) in frame_out.iter().zip(&global_out).enumerate() {
                let layer = group * block_size + i;
                if layers.contains(&layer) {
                    by_layer.insert(layer, Tensor::cat(&[frame, global], D::Minus1)?);
                }
            }
        }
        layers
            .iter()
            .map(|l| {
                let out = by_layer[l].clone();
                if batched {
                    Ok(out)
                } else {
                    out.squeeze(0)
                }
            })
            .collect()
    }
}

/// A [`SimpleBackend`] that records every requested name and shape and hands out zero-stride
/// broadcast zeros, so a full-size model's parameter list costs no parameter memory.
#[derive(Default, Clone)]
struct ShapeRecorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut names = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        if names.insert(name.to_string(), s.dims().to_vec()).is_some() {
            bail!("parameter {name} requested twice");
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        bail!("shape recorder: {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Name → shape of every parameter the aggregator reads for `cfg`, without the `aggregator.`
/// prefix (derived by building the model, so it cannot drift from [`Aggregator::new`]).
pub fn expected_parameters(cfg: &Config) -> Result<BTreeMap<String, Vec<usize>>> {
    let recorder = ShapeRecorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    Aggregator::new(cfg, vb)?;
    let names = recorder
        .0
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
        .clone();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aa_bicubic_is_identity_for_equal_sizes() {
        let w = aa_bicubic_weights(5, 5);
        for (i, row) in w.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((x - expected).abs() < 1e-12, "w[{i}][{j}] = {x}");
            }
        }
    }

    #[test]
    fn aa_bicubic_rows_sum_to_one_and_widen_when_downsampling() {
        for (n, m) in [(37, 28), (5, 3), (4, 6), (37, 20)] {
            let w = aa_bicubic_weights(n, m);
            for row in &w {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            let taps = w[m / 2].iter().filter(|x| **x != 0.0).count();
            // Support 2·max(n/m, 1) on each side of the centre.
            let expected_max = (4.0 * (n as f64 / m as f64).max(1.0)).ceil() as usize + 1;
            assert!(taps <= expected_max && taps >= 3, "{n}->{m}: {taps} taps");
        }
        // 5 → 4: s = 1.25, output 0 centre 0.625, support 2.5 → taps j ∈ [0, 3).
        let w = aa_bicubic_weights(5, 4);
        assert_eq!(w[0].iter().filter(|x| **x != 0.0).count(), 3);
    }

    /// Weight rows PyTorch 2.15 gives (`interpolate(mode="bicubic", antialias=True)` of unit
    /// basis vectors), rounded to 7 decimals.
    #[test]
    fn aa_bicubic_matches_torch_weights() {
        let close = |ours: &[f64], torch: &[f64]| {
            assert_eq!(ours.len(), torch.len());
            for (a, b) in ours.iter().zip(torch) {
                assert!((a - b).abs() < 2e-6, "{ours:?} vs {torch:?}");
            }
        };
        let w = aa_bicubic_weights(5, 3);
        close(&w[0], &[0.5846153, 0.4461538, 0.0, -0.0307692, 0.0]);
        close(
            &w[1],
            &[-0.0372093, 0.2465116, 0.5813953, 0.2465116, -0.0372093],
        );
        let w = aa_bicubic_weights(4, 6);
        close(&w[0], &[1.0657893, -0.0657893, 0.0, 0.0]);
        close(&w[2], &[-0.0578705, 0.9375001, 0.1319446, -0.0115742]);
        let w = aa_bicubic_weights(37, 28);
        close(&w[0][..4], &[0.7609572, 0.296139, -0.0570962, 0.0]);
        close(
            &w[13][14..21],
            &[
                0.0, -0.0153374, -0.0049614, 0.6493669, 0.4244442, -0.0535122, 0.0,
            ],
        );
    }

    #[test]
    fn rope_table_matches_formula() {
        let table =
            Rope2dTable::new(&[[0, 0], [2, 3]], 100.0, 8, DType::F32, &Device::Cpu).unwrap();
        let cos = table.cos.to_vec2::<f32>().unwrap();
        // head_dim 8 → halves of 4 → 2 frequencies: 1 and 1/100^(2/4) = 0.1.
        assert_eq!(cos[0], [1.0, 1.0]);
        assert_eq!(cos[1], [1.0, 1.0]);
        assert!((cos[2][0] - 2f32.cos()).abs() < 1e-7);
        assert!((cos[2][1] - 0.2f32.cos()).abs() < 1e-7);
        assert!((cos[3][0] - 3f32.cos()).abs() < 1e-7);
        assert!((cos[3][1] - 0.3f32.cos()).abs() < 1e-7);
    }

    #[test]
    fn chunked_attention_equals_unchunked() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 5, 7, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 5, 7, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 5, 7, 4), &dev).unwrap();
        let full = scaled_dot_product_attention(&q, &k, &v, usize::MAX).unwrap();
        // 2·7·7 = 98 elements per head: 200 → 2 heads per chunk (3 chunks, the last of 1 head).
        let chunked = scaled_dot_product_attention(&q, &k, &v, 200).unwrap();
        let diff = (full - chunked).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn fused_attention_equals_composite() {
        // What Attention::forward runs on the CPU against the composite reference, with more
        // queries than one block of the kernel (64).
        let dev = Device::Cpu;
        let (b, h, n, d) = (2, 3, 70, 8);
        let q = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap();
        let composite = scaled_dot_product_attention(&q, &k, &v, usize::MAX)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, h * d))
            .unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let fused =
            crate::model::kernels::attention(&q, &k, &v, &KeyMask::full(b, n), scale).unwrap();
        let diff = (fused - composite)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() <= 1e-6);
    }

    fn random_attention(dim: usize, heads: usize, qk_norm: bool) -> Attention {
        let dev = Device::Cpu;
        let t =
            |shape: &[usize], mean: f32, std: f32| Tensor::randn(mean, std, shape, &dev).unwrap();
        let d = dim / heads;
        let norm = || LayerNorm::new(t(&[d], 1.0, 0.2), t(&[d], 0.0, 0.5), BLOCK_LAYER_NORM_EPS);
        Attention {
            qkv: Linear::new(t(&[3 * dim, dim], 0.0, 0.3), Some(t(&[3 * dim], 0.0, 1.0))),
            proj_weight: t(&[dim, dim], 0.0, 0.3),
            qk_norm: qk_norm.then(|| (norm(), norm())),
            num_heads: heads,
        }
    }

    #[test]
    fn fused_qkv_heads_are_bit_equal_to_composite() {
        let dev = Device::Cpu;
        let (b, n, dim, heads) = (2, 13, 48, 3);
        let positions: Vec<[u32; 2]> = (0..n).map(|i| [i as u32 / 4, i as u32 % 4]).collect();
        let table = Rope2dTable::new(&positions, 100.0, dim / heads, DType::F32, &dev).unwrap();
        for (qk_norm, rope) in [
            (true, Some(&table)),
            (false, None),
            (true, None),
            (false, Some(&table)),
        ] {
            let attn = random_attention(dim, heads, qk_norm);
            let x = Tensor::randn(0f32, 1.0, (b, n, dim), &dev).unwrap();
            let fused = attn.qkv_heads(&x, rope).unwrap();
            let composite = attn.qkv_heads_composite(&x, rope).unwrap();
            for (f, c) in [
                (fused.0, composite.0),
                (fused.1, composite.1),
                (fused.2, composite.2),
            ] {
                assert_eq!(f.dims(), [b, heads, n, dim / heads]);
                assert_eq!(
                    f.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "qk_norm {qk_norm}, rope {}",
                    rope.is_some()
                );
            }
        }
    }

    #[test]
    fn config_rejects_inconsistent_sizes() {
        let cfg = Config {
            num_heads: 5,
            ..Config::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not divisible by num_heads"));
        let cfg = Config {
            aa_order: vec![AttentionKind::Frame],
            ..Config::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("aa_order"));
        let cfg = Config {
            patch_embed: "resnet".into(),
            ..Config::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown VGGT patch_embed"));
    }

    #[test]
    fn release_config_json_gives_the_defaults() {
        let cfg: Config =
            serde_json::from_str(r#"{"embed_dim": 1024, "img_size": 518, "patch_size": 14}"#)
                .unwrap();
        assert_eq!(cfg, Config::vggt_1b());
    }
}
