//! Forward-only (inference) CPU kernels for the frozen VGGT aggregator, with the composite
//! versions they replace.
//!
//! The aggregator is frozen: nothing flows back through it, so these kernels record no backward.
//! Each one falls back to its composite candle version (the same graph as before) when an input
//! tracks a gradient, is off the CPU (CUDA) or is not f32, so no gradient is ever silently dropped
//! and `cuda` builds run unchanged.
//!
//! - [`linear_bias_gelu`]: `gelu_erf(x·Wᵀ + b)`, the MLP's first layer: candle's matmul (the very
//!   gemm call `Linear` makes), then bias and exact GELU in one multi-threaded, vectorised pass over
//!   the matmul's output, in place. candle's `gelu_erf` is a single-threaded scalar map over libm's
//!   `erff`, after a separate bias pass and allocation.
//! - [`linear_scaled_residual`]: `r + (x·Wᵀ + b) ⊙ γ`, an output projection with its LayerScale
//!   and residual add, in one pass in place (bit-equal to the composite: same operations in the same
//!   order) instead of three passes and three allocations.
//! - [`qkv_heads`]: the attention's qkv projection split into q, k, v heads with bias, per-head
//!   q/k LayerNorm and 2-D RoPE in one pass (bit-equal to the composite), instead of a bias pass,
//!   three strided copies, two LayerNorms and two RoPEs.
//! - [`erf`] / [`gelu_erf_value`]: an f32 erf within ~2e-7 relative of the exact one (polynomial
//!   `x·P(x²)` below 1, `1 − e^(−x²)·Q(x)` from 1 to 4, 1 above; coefficients fitted here by
//!   least squares against a high-precision erf), written branch-free so the compiler vectorises it.
//! - [`exp`] / [`softmax_scaled_in_place`]: a vectorisable f32 exp (Cody–Waite reduction and a
//!   degree-7 Taylor polynomial, ~1e-7 relative) and the non-causal row softmax the fused attention
//!   runs per block of scores.
//!
//! On x86-64 the loops run in a copy compiled for AVX-512 or AVX2 + FMA when the CPU has them
//! (picked at run time, as the gemm crate does); elsewhere in the portable copy.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

/// Elements per rayon task of the element-wise passes: large enough that scheduling costs
/// nothing next to the work, small enough to spread a [341·4, 1536] activation over the threads.
const PAR_CHUNK_ELEMENTS: usize = 32 * 1024;

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `c[0] + t·(c[1] + t·(c[2] + …))`.
#[inline(always)]
fn horner<const FMA: bool>(t: f32, c: &[f32]) -> f32 {
    let mut acc = c[c.len() - 1];
    for &ci in c[..c.len() - 1].iter().rev() {
        acc = madd::<FMA>(acc, t, ci);
    }
    acc
}

/// 1.5·2²³: adding it rounds an f32 of magnitude < 2²² to an integer, which then sits in the
/// low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Below ln(f32::MIN_POSITIVE) e^x is subnormal: returned as 0.
const EXP_MIN_ARG: f32 = -87.336_54;
/// Arguments above are clamped (e^88 ≈ 1.65e38 stays finite); the kernels here only pass x ≤ 0.
const EXP_MAX_ARG: f32 = 88.0;
/// ln 2 split so that n·LN2_HI is exact for |n| ≤ 2⁸ (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1/k! for k = 0..=7: Taylor's truncation error on |r| ≤ ln2/2 is below 6e-9.
const EXP_TAYLOR: [f32; 8] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];

#[inline(always)]
fn exp_impl<const FMA: bool>(x: f32) -> f32 {
    // NaN stays NaN through the clamp (and the result).
    let xc = x.clamp(EXP_MIN_ARG, EXP_MAX_ARG);
    // x = n·ln2 + r, |r| ≤ ln2/2; e^x = 2^n · e^r.
    let shifted = madd::<FMA>(xc, std::f32::consts::LOG2_E, ROUND_MAGIC);
    let n = shifted - ROUND_MAGIC;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, xc));
    // 2^n from n's bits in `shifted` (n ∈ [−126, 127], so the exponent field stays normal).
    let n_int = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let two_n = f32::from_bits(n_int.wrapping_add(127) << 23);
    let value = horner::<FMA>(r, &EXP_TAYLOR) * two_n;
    if x < EXP_MIN_ARG {
        0.0
    } else {
        value
    }
}

/// e^x in f32 within ~1e-7 relative for x ≤ 88 (0 below −87.34, where e^x is subnormal; NaN stays
/// NaN). Scalar entry point of the vectorised kernels, and what the tests compare.
pub fn exp(x: f32) -> f32 {
    exp_impl::<false>(x)
}

/// erf(x)/x = P(x²) on |x| ≤ 1 (max relative error of erf 1.6e-7 in f32 arithmetic).
const ERF_SMALL: [f32; 7] = [
    // The fit's constant term is 2/√π to f32 precision.
    std::f32::consts::FRAC_2_SQRT_PI,
    -0.376_126_3,
    0.112_836_12,
    -0.026_854_81,
    0.005_190_053_5,
    -8.024_354e-4,
    7.898_21e-5,
];
/// erfc(a)·e^(a²) = Q(a − 2.5) on 1 ≤ a ≤ 4 (max absolute error of erf 1.5e-8).
const ERFC_SCALED: [f32; 12] = [
    0.210_806_35,
    -0.074_347_36,
    0.024_938_174,
    -0.008_001_475,
    0.002_466_092_8,
    -7.337_13e-4,
    2.128_320_5e-4,
    -5.894_270_7e-5,
    1.442_577_7e-5,
    -4.009_343_2e-6,
    1.658_841_8e-6,
    -3.835_798_7e-7,
];
/// From here erfc(a) < 1.6e-8, under half an ulp of 1: erf rounds to ±1.
const ERF_SATURATION: f32 = 4.0;

#[inline(always)]
fn erf_impl<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let small = x * horner::<FMA>(x * x, &ERF_SMALL);
    let ac = if a > ERF_SATURATION {
        ERF_SATURATION
    } else {
        a
    };
    let erfc = exp_impl::<FMA>(-(ac * ac)) * horner::<FMA>(ac - 2.5, &ERFC_SCALED);
    let large = (1.0 - erfc).copysign(x);
    // Both branches computed, one selected: no data-dependent branch, so the loop vectorises.
    if a < 1.0 {
        small
    } else {
        large
    }
}

/// erf(x) in f32, within ~2e-7 relative of the exact value (what the tests check against libm).
pub fn erf(x: f32) -> f32 {
    erf_impl::<false>(x)
}

#[inline(always)]
fn gelu_impl<const FMA: bool>(x: f32) -> f32 {
    // As candle's and PyTorch's exact GELU: x/2 · (1 + erf(x/√2)).
    (erf_impl::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

/// Exact (erf) GELU of one value with [`erf`].
pub fn gelu_erf_value(x: f32) -> f32 {
    gelu_impl::<false>(x)
}

/// `row ← gelu(row + bias)` for every row of `rows` (rows of `bias.len()`).
#[inline(always)]
fn bias_gelu_rows_impl<const FMA: bool>(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = gelu_impl::<FMA>(*v + b);
        }
    }
}

/// `row ← res + (row + bias) ⊙ gamma` for every row.
#[inline(always)]
fn scaled_residual_rows_impl(rows: &mut [f32], res: &[f32], bias: &[f32], gamma: &[f32]) {
    let n = bias.len();
    for (row, res) in rows.chunks_exact_mut(n).zip(res.chunks_exact(n)) {
        for (((v, &r), &b), &g) in row.iter_mut().zip(res).zip(bias).zip(gamma) {
            *v = r + (*v + b) * g;
        }
    }
}

/// `row ← softmax(row · scale)`.
#[inline(always)]
fn softmax_scaled_impl<const FMA: bool>(row: &mut [f32], scale: f32) {
    const LANES: usize = 16;
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (m, s) in lane_max.iter_mut().zip(chunk.iter_mut()) {
            *s *= scale;
            *m = if *s > *m { *s } else { *m };
        }
    }
    let mut max = lane_max.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in chunks.into_remainder() {
        *s *= scale;
        max = max.max(*s);
    }
    let mut lane_sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (acc, s) in lane_sum.iter_mut().zip(chunk.iter_mut()) {
            *s = exp_impl::<FMA>(*s - max);
            *acc += *s;
        }
    }
    let mut sum: f32 = lane_sum.iter().sum();
    for s in chunks.into_remainder() {
        *s = exp_impl::<FMA>(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        *s *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    has_avx2_fma() && std::is_x86_feature_detected!("avx512f")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The compute-bound loops compiled for AVX-512 (16 lanes); callers check the CPU first
    //! ([`super::has_avx512`]).

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn bias_gelu_rows(rows: &mut [f32], bias: &[f32]) {
        super::bias_gelu_rows_impl::<true>(rows, bias)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn softmax_scaled(row: &mut [f32], scale: f32) {
        super::softmax_scaled_impl::<true>(row, scale)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The loops compiled for AVX2 + FMA; callers check the CPU first ([`super::has_avx2_fma`]).

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bias_gelu_rows(rows: &mut [f32], bias: &[f32]) {
        super::bias_gelu_rows_impl::<true>(rows, bias)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scaled_residual_rows(rows: &mut [f32], res: &[f32], bias: &[f32], gamma: &[f32]) {
        super::scaled_residual_rows_impl(rows, res, bias, gamma)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_scaled(row: &mut [f32], scale: f32) {
        super::softmax_scaled_impl::<true>(row, scale)
    }
}

fn bias_gelu_rows(rows: &mut [f32], bias: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
            return unsafe { avx512::bias_gelu_rows(rows, bias) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2::bias_gelu_rows(rows, bias) };
        }
    }
    bias_gelu_rows_impl::<false>(rows, bias)
}

fn scaled_residual_rows(rows: &mut [f32], res: &[f32], bias: &[f32], gamma: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2::scaled_residual_rows(rows, res, bias, gamma) };
        }
    }
    scaled_residual_rows_impl(rows, res, bias, gamma)
}

/// `row ← softmax(row · scale)` over one row of attention scores, with [`exp`]: the non-causal
/// softmax of the fused attention's forward ([`crate::model::kernels::attention`] with
/// `KeyMask::full`).
pub fn softmax_scaled_in_place(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
            return unsafe { avx512::softmax_scaled(row, scale) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2::softmax_scaled(row, scale) };
        }
    }
    softmax_scaled_impl::<false>(row, scale)
}

/// Whole rows per rayon task so a task holds about [`PAR_CHUNK_ELEMENTS`] elements.
fn rows_per_task(cols: usize) -> usize {
    (PAR_CHUNK_ELEMENTS / cols.max(1)).max(1)
}

/// The contiguous f32 data of a CPU storage, or an error naming the kernel.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input is not contiguous"),
    }
}

fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_mut_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("{what}: output is not contiguous"),
    }
}

/// In place on the `[rows, n]` matmul output: `gelu(y + bias)`.
struct BiasGelu;

impl InplaceOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let bias = f32_slice(s2, l2, "bias-gelu-erf bias")?;
        let y = f32_slice_mut(s1, l1, "bias-gelu-erf")?;
        let n = bias.len();
        if n == 0 || !y.len().is_multiple_of(n) {
            candle_core::bail!("bias-gelu-erf: {} values for a bias of {n}", y.len());
        }
        y.par_chunks_mut(rows_per_task(n) * n)
            .for_each(|rows| bias_gelu_rows(rows, bias));
        Ok(())
    }
}

/// In place on the `[rows, n]` matmul output: `res + (y + bias) ⊙ gamma`, with bias and gamma
/// stacked as one `[2, n]` tensor.
struct ScaledResidual;

impl InplaceOp3 for ScaledResidual {
    fn name(&self) -> &'static str {
        "scaled-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let bias_gamma = f32_slice(s2, l2, "scaled-residual bias/gamma")?;
        let res = f32_slice(s3, l3, "scaled-residual residual")?;
        let y = f32_slice_mut(s1, l1, "scaled-residual")?;
        let n = bias_gamma.len() / 2;
        if n == 0 || res.len() != y.len() || !y.len().is_multiple_of(n) {
            candle_core::bail!(
                "scaled-residual: {} values, residual of {}, bias/gamma of {}",
                y.len(),
                res.len(),
                bias_gamma.len()
            );
        }
        let (bias, gamma) = bias_gamma.split_at(n);
        let chunk = rows_per_task(n) * n;
        y.par_chunks_mut(chunk)
            .zip(res.par_chunks(chunk))
            .for_each(|(rows, res)| scaled_residual_rows(rows, res, bias, gamma));
        Ok(())
    }
}

/// Whether the fused forward-only path applies: every tensor on the CPU in f32, none tracking a
/// gradient (those take the composite path, which keeps the graph).
pub fn fused_applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// `x·Wᵀ` over the last dimension of `x` `[…, in]` with `weight` `[out, in]`, as a contiguous
/// `[rows, out]` tensor: the same gemm call `candle_nn::Linear` makes, without its bias add.
fn matmul_t(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let in_dim = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / in_dim.max(1);
    x.contiguous()?
        .reshape((rows, in_dim))?
        .matmul(&weight.t()?)
}

/// The output shape `[…, out]` of a linear layer on `x` `[…, in]`.
fn linear_shape(x: &Tensor, out_dim: usize) -> Vec<usize> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_dim;
    }
    dims
}

/// `gelu_erf(x·Wᵀ + b)` (exact GELU) for `x` `[…, in]`, `weight` `[out, in]`, `bias` `[out]`:
/// fused on the CPU in f32 without gradients, else [`linear_bias_gelu_composite`]. The fused
/// values differ from the composite ones only by [`erf`]'s approximation (≤ ~2e-7 relative).
pub fn linear_bias_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if !fused_applies(&[x, weight, bias]) {
        return linear_bias_gelu_composite(x, weight, bias);
    }
    let y = matmul_t(x, weight)?;
    y.inplace_op2(&bias.contiguous()?, &BiasGelu)?;
    y.reshape(linear_shape(x, weight.dim(0)?))
}

/// The composite version: candle's `Linear` and `gelu_erf` (libm's erf).
pub fn linear_bias_gelu_composite(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    candle_nn::Linear::new(weight.clone(), Some(bias.clone()))
        .forward(x)?
        .gelu_erf()
}

/// `residual + (x·Wᵀ + b) ⊙ γ` — an output projection, its LayerScale γ and the residual add —
/// for `x` `[…, in]`, `weight` `[out, in]`, `bias_gamma` `[2, out]` (row 0 the bias, row 1 γ),
/// `residual` shaped like the output. Fused on the CPU in f32 without gradients (bit-equal to the
/// composite: the same operations in the same order), else [`linear_scaled_residual_composite`].
pub fn linear_scaled_residual(
    x: &Tensor,
    weight: &Tensor,
    bias_gamma: &Tensor,
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    let shape = linear_shape(x, weight.dim(0)?);
    if residual.dims() != shape.as_slice() || bias_gamma.dims() != [2, shape[shape.len() - 1]] {
        candle_core::bail!(
            "linear_scaled_residual: output {shape:?}, residual {:?}, bias/gamma {:?}",
            residual.shape(),
            bias_gamma.shape()
        );
    }
    if !fused_applies(&[x, weight, bias_gamma, residual]) {
        return linear_scaled_residual_composite(x, weight, bias_gamma, residual);
    }
    let y = matmul_t(x, weight)?;
    y.inplace_op3(
        &bias_gamma.contiguous()?,
        &residual.contiguous()?,
        &ScaledResidual,
    )?;
    y.reshape(shape)
}

/// The composite version: candle's `Linear`, a broadcast multiply and an add.
pub fn linear_scaled_residual_composite(
    x: &Tensor,
    weight: &Tensor,
    bias_gamma: &Tensor,
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    let linear = candle_nn::Linear::new(weight.clone(), Some(bias_gamma.get(0)?));
    residual + linear.forward(x)?.broadcast_mul(&bias_gamma.get(1)?)?
}

/// Per-head LayerNorm of q or k (candle's `LayerNorm`): weight and bias over the head dimension.
#[derive(Debug, Clone, Copy)]
pub struct HeadNorm<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub eps: f64,
}

/// What [`qkv_heads`] applies to the heads besides the projection's bias.
#[derive(Debug, Clone, Copy)]
pub struct QkvOptions<'a> {
    pub heads: usize,
    /// q_norm and k_norm, in that order.
    pub qk_norm: Option<[HeadNorm<'a>; 2]>,
    /// The 2-D RoPE table (`vggt::Rope2dTable`): cos and sin `[2·N, D/4]`, rows 2t and 2t + 1
    /// rotating token t's first and second half of each head (rotate-half within a half).
    pub rope: Option<(&'a Tensor, &'a Tensor)>,
}

/// `vals ← layer_norm(vals)`, the formula of candle's CPU `layer_norm` op (running sums of x and
/// x², E[x²] − E[x]², in this order), so the result is bit-equal to it.
#[inline(always)]
fn layer_norm_in_place(vals: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let (mut sum, mut sum2) = (0f32, 0f32);
    for &v in vals.iter() {
        sum += v;
        sum2 += v * v;
    }
    let n = vals.len() as f32;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let inv_std = (var + eps).sqrt().recip();
    for ((v, &w), &b) in vals.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv_std * w + b;
    }
}

/// Rotate-half RoPE of one half-head `seg` (length 2q) with `cos`, `sin` of length q: candle's
/// `rope` formula.
#[inline(always)]
fn rope_half_in_place(seg: &mut [f32], cos: &[f32], sin: &[f32]) {
    let q = cos.len();
    let (lo, hi) = seg.split_at_mut(q);
    for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
        let (x1, x2) = (*a, *b);
        *a = x1 * c - x2 * s;
        *b = x1 * s + x2 * c;
    }
}

/// The result buffer of [`qkv_heads`], written by several rayon tasks at disjoint offsets.
struct SharedOut(*mut f32);

// SAFETY: the tasks write disjoint ranges (see `qkv_heads`), and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Pointer to slot `offset` (a method, so closures capture the `Sync` wrapper, not the field).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

fn small_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// The attention's fused qkv projection split into heads: for `x` `[B, N, C_in]`, `weight`
/// `[3C, C_in]`, `bias` `[3C]`, returns `[3, B, H, N, D]` (q, k, v; `get(i)` is contiguous) with
/// the bias added, q and k LayerNorm'ed per head and rotated by the 2-D RoPE when asked. One
/// multi-threaded pass over the projection's output (tasks over its rows, each read once) instead
/// of a bias pass, three strided copies, two LayerNorms and two RoPEs, each
/// allocating. Bit-equal to that composite (the same operations in the same order; tested in
/// `vggt`). CPU f32 only, no gradients: callers check [`fused_applies`] and run the composite
/// otherwise.
pub fn qkv_heads(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    opts: &QkvOptions,
) -> candle_core::Result<Tensor> {
    let (b, n, _) = x.dims3()?;
    let (c3, h) = (weight.dim(0)?, opts.heads);
    if h == 0 || !c3.is_multiple_of(3 * h) || bias.dims() != [c3] {
        candle_core::bail!(
            "qkv_heads: weight {:?} and bias {:?} for {h} heads",
            weight.shape(),
            bias.shape()
        );
    }
    let (c, d) = (c3 / 3, c3 / 3 / h);
    let bias = small_vec(bias)?;
    let norms = match opts.qk_norm {
        Some(norms) => {
            let mut out = Vec::with_capacity(2);
            for norm in norms {
                let (w, nb) = (small_vec(norm.weight)?, small_vec(norm.bias)?);
                if w.len() != d || nb.len() != d {
                    candle_core::bail!("qkv_heads: q/k norm of {} for head_dim {d}", w.len());
                }
                out.push((w, nb, norm.eps as f32));
            }
            Some(out)
        }
        None => None,
    };
    let quarter = d / 4;
    let rope = match opts.rope {
        Some((cos, sin)) => {
            let (cos, sin) = (small_vec(cos)?, small_vec(sin)?);
            if !d.is_multiple_of(4) || cos.len() != 2 * n * quarter || sin.len() != cos.len() {
                candle_core::bail!(
                    "qkv_heads: RoPE table of {} values for {n} tokens of head_dim {d}",
                    cos.len()
                );
            }
            Some((cos, sin))
        }
        None => None,
    };
    let y = matmul_t(x, weight)?;
    let (storage, layout) = y.storage_and_layout();
    let y = match &*storage {
        candle_core::Storage::Cpu(s) => f32_slice(s, layout, "qkv_heads")?,
        _ => candle_core::bail!("qkv_heads: CPU tensors only"),
    };
    // Token-major: a task reads whole rows of the projection (each once, in order) and writes
    // each head's D values to its slab of the [3, B, H, N, D] result; the tasks' rows, hence the
    // written ranges, are disjoint.
    let total = 3 * b * h * n * d;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let dst = SharedOut(out.as_mut_ptr());
    let rows_per = rows_per_task(c3);
    (0..(b * n).div_ceil(rows_per))
        .into_par_iter()
        .for_each(|task| {
            let mut vals = vec![0f32; d];
            for r in task * rows_per..((task + 1) * rows_per).min(b * n) {
                let (bi, t) = (r / n, r % n);
                let row = &y[r * c3..(r + 1) * c3];
                for which in 0..3 {
                    let (norm, rope) = if which < 2 {
                        (norms.as_ref().map(|n| &n[which]), rope.as_ref())
                    } else {
                        (None, None)
                    };
                    for hi in 0..h {
                        let col = which * c + hi * d;
                        for ((v, &s), &bb) in vals
                            .iter_mut()
                            .zip(&row[col..col + d])
                            .zip(&bias[col..col + d])
                        {
                            *v = s + bb;
                        }
                        if let Some((w, nb, eps)) = norm {
                            layer_norm_in_place(&mut vals, w, nb, *eps);
                        }
                        if let Some((cos, sin)) = rope {
                            let (first, second) = vals.split_at_mut(d / 2);
                            let at = |k: usize| k * quarter..(k + 1) * quarter;
                            rope_half_in_place(first, &cos[at(2 * t)], &sin[at(2 * t)]);
                            rope_half_in_place(second, &cos[at(2 * t + 1)], &sin[at(2 * t + 1)]);
                        }
                        let offset = (((which * b + bi) * h + hi) * n + t) * d;
                        // SAFETY: offset + d ≤ total (which < 3, bi < b, hi < h, t < n), the
                        // capacity of `out`; row r's slots are written by this task only.
                        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), dst.at(offset), d) };
                    }
                }
            }
        });
    // SAFETY: the tasks above wrote every one of the `total` slots (each (row, q|k|v, head)).
    unsafe { out.set_len(total) };
    drop(storage);
    Tensor::from_vec(out, (3, b, h, n, d), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 (libm's), the reference.
    fn erf64(x: f64) -> f64 {
        libm::erf(x)
    }

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 88.0 * i as f32 / 2_000_000.0;
            let exact = (x as f64).exp();
            let rel = ((exp(x) as f64) - exact).abs() / exact;
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_matches_libm_densely_including_the_tails() {
        let (mut worst_rel, mut worst_abs) = (0f64, 0f64);
        // Every 1e-5 on [-6, 6], plus tiny arguments where erf(x) ≈ 2x/√π.
        let grid = (-600_000..=600_000).map(|i| i as f32 * 1e-5);
        let tiny = (1..=37).map(|k| 10f32.powi(-k));
        for x in grid.chain(tiny) {
            let exact = erf64(x as f64);
            let got = erf(x) as f64;
            worst_abs = worst_abs.max((got - exact).abs());
            if exact != 0.0 {
                worst_rel = worst_rel.max((got - exact).abs() / exact.abs());
            }
            assert_eq!(erf(-x), -erf(x), "odd symmetry at {x}");
        }
        assert!(worst_rel < 2.5e-7, "max relative error {worst_rel:e}");
        assert!(worst_abs < 1.5e-7, "max absolute error {worst_abs:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-1e30), -1.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
    }

    /// The row kernels this CPU can run: the portable copy and each SIMD copy it supports.
    #[allow(clippy::type_complexity)]
    fn gelu_variants() -> Vec<(&'static str, fn(&mut [f32], &[f32]))> {
        let mut v: Vec<(&'static str, fn(&mut [f32], &[f32]))> =
            vec![("portable", bias_gelu_rows_impl::<false>)];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                v.push(("avx2", |r, b| unsafe { avx2::bias_gelu_rows(r, b) }));
            }
            if has_avx512() {
                v.push(("avx512", |r, b| unsafe { avx512::bias_gelu_rows(r, b) }));
            }
        }
        v
    }

    #[test]
    fn gelu_matches_the_libm_gelu_in_every_variant() {
        let xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 1e-4).collect();
        let exact: Vec<f64> = xs
            .iter()
            .map(|&x| 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2)))
            .collect();
        let check = |name: &str, got: &[f32]| {
            let worst = got
                .iter()
                .zip(&xs)
                .zip(&exact)
                .map(|((&g, &x), &e)| (g as f64 - e).abs() / (x.abs() as f64).max(1.0))
                .fold(0f64, f64::max);
            assert!(worst < 2e-7, "{name}: max error / max(|x|, 1) {worst:e}");
        };
        let scalar: Vec<f32> = xs.iter().map(|&x| gelu_erf_value(x)).collect();
        check("scalar", &scalar);
        // The row kernels with a zero bias (one row of all the values).
        for (name, kernel) in gelu_variants() {
            let mut rows = xs.clone();
            kernel(&mut rows, &vec![0f32; xs.len()]);
            check(name, &rows);
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::parity::max_abs_diff(a, b).unwrap() as f32
    }

    #[test]
    fn fused_linear_bias_gelu_matches_candle() {
        let dev = candle_core::Device::Cpu;
        // Several rayon tasks' worth of rows (PAR_CHUNK_ELEMENTS / 96 = 341 rows per task).
        let x = Tensor::randn(0f32, 1.0, (3, 401, 40), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.5, (96, 40), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 96, &dev).unwrap();
        let fused = linear_bias_gelu(&x, &w, &b).unwrap();
        let composite = linear_bias_gelu_composite(&x, &w, &b).unwrap();
        assert_eq!(fused.dims(), [3, 401, 96]);
        let scale = composite
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // |values| up to ~10 here: erf's ~2e-7 relative plus the f32 rounding of the product.
        assert!(
            max_diff(&fused, &composite) <= 2e-7 * scale.max(1.0),
            "{}",
            max_diff(&fused, &composite)
        );
    }

    #[test]
    fn fused_linear_scaled_residual_is_bit_equal_to_candle() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 333, 48), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.5, (64, 48), &dev).unwrap();
        let bg = Tensor::randn(0f32, 1.0, (2, 64), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 333, 64), &dev).unwrap();
        let r_before = r.to_vec3::<f32>().unwrap();
        let fused = linear_scaled_residual(&x, &w, &bg, &r).unwrap();
        let composite = linear_scaled_residual_composite(&x, &w, &bg, &r).unwrap();
        assert_eq!(fused.dims(), [2, 333, 64]);
        assert_eq!(max_diff(&fused, &composite), 0.0);
        // The residual is read, not written.
        assert_eq!(r.to_vec3::<f32>().unwrap(), r_before);
        let err = linear_scaled_residual(&x, &w, &bg, &r.narrow(1, 0, 10).unwrap()).unwrap_err();
        assert!(err.to_string().contains("residual [2, 10, 64]"), "{err}");
    }

    #[test]
    fn inputs_tracking_gradients_take_the_composite_path() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 8), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let y = linear_bias_gelu(x.as_tensor(), &w, &b).unwrap();
        // The composite graph reaches x: its gradient exists and is not all zero.
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("gradient of x");
        assert!(
            gx.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        let bg = Tensor::randn(0f32, 1.0, (2, 6), &dev).unwrap();
        let r = Tensor::zeros((5, 6), DType::F32, &dev).unwrap();
        let y = linear_scaled_residual(x.as_tensor(), &w, &bg, &r).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
    }

    #[test]
    fn softmax_matches_candle_in_every_variant() {
        let dev = candle_core::Device::Cpu;
        #[allow(clippy::type_complexity)]
        let mut variants: Vec<(&str, fn(&mut [f32], f32))> = vec![
            ("portable", softmax_scaled_impl::<false>),
            ("dispatch", softmax_scaled_in_place),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                variants.push(("avx2", |r, s| unsafe { avx2::softmax_scaled(r, s) }));
            }
            if has_avx512() {
                variants.push(("avx512", |r, s| unsafe { avx512::softmax_scaled(r, s) }));
            }
        }
        for n in [1usize, 15, 16, 341, 1364] {
            let s = Tensor::randn(0f32, 4.0, (3, n), &dev).unwrap();
            let expected = candle_nn::ops::softmax_last_dim(&(&s * 0.125).unwrap()).unwrap();
            for (name, softmax) in &variants {
                let mut rows = s.to_vec2::<f32>().unwrap();
                for row in rows.iter_mut() {
                    softmax(row, 0.125);
                }
                let got = Tensor::new(rows, &dev).unwrap();
                let diff = max_diff(&got, &expected);
                assert!(diff <= 4e-7, "{name}, n {n}: {diff}");
            }
        }
    }
}
