//! Fused, differentiable CPU kernels for the decoder (attention, RMSNorm, SwiGLU, RoPE, the loss,
//! the LoRA-adapted projections), with the composite versions they replace.
//!
//! The composite attention materialises the scores, the masked scores and the probabilities
//! (`[B, H, T, T]` each) and keeps them for the backward; [`attention`] computes each query row's
//! scores in a scratch buffer, and its backward recomputes them row by row (as memory-efficient /
//! flash attention does), so what a layer keeps for the backward is linear in T: q, k, v and the
//! output. Keys and values stay at their own head count (GQA without `repeat_kv` copies), and
//! masked keys (later positions, padding) are skipped rather than multiplied by zero.
//!
//! [`rms_norm`] is one pass forward and one backward instead of six element-wise ops; [`swiglu`]
//! (`silu(gate) ⊙ up`) one pass instead of SiLU's, the product's and SiLU's eight-op backward;
//! [`rope`] rotates `[B, T, H, D]` projections straight into the `[B, H, T, D]` layout attention
//! reads, instead of a transpose, a copy, a concatenation and four element-wise ops;
//! [`cross_entropy`] is the mean negative log-likelihood in one pass over the logits and a backward
//! of `softmax − one-hot` in one more, instead of log-softmax's and the gather's ops;
//! [`lora_linear`] is a frozen projection with its LoRA adapter in one op whose backward hands out
//! one gradient for the input instead of two summed by the graph.
//!
//! Fewer graph nodes for the train step (every node's gradient costs candle's backward a
//! zero-filled buffer and a sum, on the one thread that runs its bookkeeping):
//! [`rms_norm_rope`] takes Qwen3's q/k projection output through the per-head norm and RoPE in one
//! op, [`attention_v_by_token`] reads V in the projection's layout, [`swiglu_mlp_input`] is the
//! gate and up projections with their gating.
//!
//! All run only on the CPU in f32: on another device or dtype they fall back to the composite
//! version (the same graph as before, so `cuda` builds and runs unchanged). Their backward spares
//! operands that do not track gradients, like [`crate::model::frozen`].

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;

use crate::model::frozen;

/// Which keys each query sees: query i of a row sits at key index `offset + i` and sees key j
/// when j ≤ offset + i and key j is a real token; a padding query always sees itself, so no row is
/// entirely masked (its output is unused but stays finite). [`KeyMask::full`] is the non-causal
/// mask of encoders (every query sees every key).
#[derive(Debug, Clone)]
pub struct KeyMask {
    key_valid: Arc<Vec<Vec<bool>>>,
    offset: usize,
    causal: bool,
}

impl KeyMask {
    /// `key_valid[b][j]`: key j of row b is a real token (every row the same length); the queries
    /// are the last `T_k − offset` keys.
    pub fn new(key_valid: Vec<Vec<bool>>, offset: usize) -> candle_core::Result<Self> {
        let tk = key_valid.first().map_or(0, Vec::len);
        if key_valid.iter().any(|r| r.len() != tk) {
            candle_core::bail!("KeyMask: rows of different lengths");
        }
        if offset > tk {
            candle_core::bail!("KeyMask: offset {offset} beyond {tk} keys");
        }
        Ok(Self {
            key_valid: Arc::new(key_valid),
            offset,
            causal: true,
        })
    }

    /// Every query of each of `batch` rows sees all `keys` keys (queries = keys, no padding).
    pub fn full(batch: usize, keys: usize) -> Self {
        Self {
            key_valid: Arc::new(vec![vec![true; keys]; batch]),
            offset: 0,
            causal: false,
        }
    }

    pub fn batch(&self) -> usize {
        self.key_valid.len()
    }

    pub fn keys(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn queries(&self) -> usize {
        self.keys() - self.offset
    }

    #[inline]
    fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        if !self.causal {
            return true;
        }
        let qi = self.offset + i;
        (j <= qi && self.key_valid[b][j]) || j == qi
    }

    /// The same mask as an additive bias `[B, 1, T_q, T_k]` (0 or −∞), for the composite path.
    pub fn bias(&self, device: &Device) -> candle_core::Result<Tensor> {
        let (b, tq, tk) = (self.batch(), self.queries(), self.keys());
        let mut bias = Vec::with_capacity(b * tq * tk);
        for row in 0..b {
            for i in 0..tq {
                for j in 0..tk {
                    bias.push(if self.visible(row, i, j) {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
        Tensor::from_vec(bias, (b, 1, tq, tk), device)
    }
}

fn is_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Scaled dot-product attention, `softmax(q kᵀ · scale + mask) v`, with q `[B, H_q, T_q, D]`, k and
/// v `[B, H_kv, T_k, D]` (H_q a multiple of H_kv: query head h reads KV head ⌊h / (H_q/H_kv)⌋).
/// Returns `[B, T_q, H_q·D]` (heads concatenated per position, ready for the output projection).
/// Fused on the CPU in f32, composite elsewhere.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &KeyMask,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[q, k, v]) {
        attention_fused(q, k, v, mask, scale)
    } else {
        attention_composite(q, k, v, &mask.bias(q.device())?, scale)
    }
}

/// The composite attention (candle ops, every `[B, H, T_q, T_k]` intermediate materialised), with
/// the mask as an additive bias `[B, 1, T_q, T_k]` ([`KeyMask::bias`]). Same shapes as [`attention`].
pub fn attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, hq, tq, d) = q.dims4()?;
    let n_rep = hq / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?;
    let v = repeat_kv(v, n_rep)?;
    let scores = (frozen::matmul(&q.contiguous()?, &k.t()?)? * scale)?;
    let scores = frozen::broadcast_add(&scores, bias)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let out = frozen::matmul(&probs, &v)?;
    out.transpose(1, 2)?.contiguous()?.reshape((b, tq, hq * d))
}

/// GQA: query head j reads KV head ⌊j / n_rep⌋.
fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return x.contiguous();
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, t, d))?
        .contiguous()?
        .reshape((b, h * n_rep, t, d))
}

/// The fused attention on any device (errors off the CPU / f32): exposed for tests.
pub fn attention_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &KeyMask,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let op = FusedAttention::new(q, k, v.dims4()?, mask, scale, false)?;
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// [`attention`] with the values as the value projection hands them out, `[B, T_k, H_kv·D]`
/// (heads concatenated per position), instead of `[B, H_kv, T_k, D]`: the fused kernel reads each
/// head's values in place and gives their gradient back in that layout, so the graph has no
/// reshape, transpose and copy of V (each a zero-filled gradient and a sum in candle's backward).
/// Fused on the CPU in f32; elsewhere the reshape and transpose, then the composite attention.
pub fn attention_v_by_token(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &KeyMask,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[q, k, v]) {
        return attention_v_by_token_fused(q, k, v, mask, scale);
    }
    let (b, hkv, tk, d) = k.dims4()?;
    let v = v.reshape((b, tk, hkv, d))?.transpose(1, 2)?.contiguous()?;
    attention_composite(q, k, &v, &mask.bias(q.device())?, scale)
}

/// The fused [`attention_v_by_token`] on any device (errors off the CPU / f32): exposed for tests.
pub fn attention_v_by_token_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &KeyMask,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, hkv, tk, d) = k.dims4()?;
    if v.dims3()? != (b, tk, hkv * d) {
        candle_core::bail!(
            "attention: v {:?} for k {:?} (want [{b}, {tk}, {}])",
            v.shape(),
            k.shape(),
            hkv * d
        );
    }
    let op = FusedAttention::new(q, k, (b, hkv, tk, d), mask, scale, true)?;
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

impl FusedAttention {
    /// Checks the shapes (`v_heads`: V's dims in the heads-first order) and the mask.
    fn new(
        q: &Tensor,
        k: &Tensor,
        v_heads: (usize, usize, usize, usize),
        mask: &KeyMask,
        scale: f64,
        v_by_token: bool,
    ) -> candle_core::Result<Self> {
        let (b, hq, tq, d) = q.dims4()?;
        let (bk, hkv, tk, dk) = k.dims4()?;
        if v_heads != (bk, hkv, tk, dk) || bk != b || dk != d {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} (as [B, H, T, D]) do not fit",
                q.shape(),
                k.shape(),
                v_heads
            );
        }
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            candle_core::bail!("attention: {hq} query heads for {hkv} KV heads");
        }
        if mask.batch() != b || mask.keys() != tk || mask.queries() != tq {
            candle_core::bail!(
                "attention: mask for {} rows of {} queries / {} keys, tensors [{b}, {tq}, {tk}]",
                mask.batch(),
                mask.queries(),
                mask.keys()
            );
        }
        Ok(Self {
            dims: AttnDims {
                b,
                hq,
                hkv,
                tq,
                tk,
                d,
            },
            mask: mask.clone(),
            scale: scale as f32,
            v_by_token,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct AttnDims {
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl AttnDims {
    /// (B, H_q, H_kv, T_q, T_k, D).
    fn all(&self) -> (usize, usize, usize, usize, usize, usize) {
        (self.b, self.hq, self.hkv, self.tq, self.tk, self.d)
    }
}

struct FusedAttention {
    dims: AttnDims,
    mask: KeyMask,
    scale: f32,
    /// V is `[B, T_k, H_kv·D]` ([`attention_v_by_token`]) rather than `[B, H_kv, T_k, D]`.
    v_by_token: bool,
}

/// A contiguous f32 CPU slice of a storage, or an error.
fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input is not contiguous"),
    }
}

/// Elements per task when a buffer is zero-filled across the rayon pool.
const ZERO_CHUNK: usize = 1 << 16;

/// A zero-filled f32 buffer of `n` elements, filled across the rayon pool: the kernels' outputs
/// and gradients are allocated on the calling thread (in the backward, the one thread that runs
/// candle's bookkeeping), where a serial fill of every buffer adds up.
fn zeroed_par(n: usize) -> Vec<f32> {
    if n <= ZERO_CHUNK {
        // One chunk: not worth a hand-over to the pool.
        return vec![0f32; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(ZERO_CHUNK)
        .for_each(|c| {
            for x in c {
                x.write(0.0);
            }
        });
    // SAFETY: every one of the n elements was initialised just above.
    unsafe { v.set_len(n) };
    v
}

/// Runs `f` on the f32 CPU data of `t` (made contiguous first if it is not), without copying a
/// tensor that already is: what a backward reads its saved inputs through.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(f(cpu_slice(s, layout, "fused kernel backward")?)),
        _ => candle_core::bail!("fused kernel backward: CPU tensors only"),
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// A strided f32 matrix view for [`mm`]: element (r, c) at `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// The transpose of a row-major matrix with row stride `rs`.
    fn transposed(data: &'a [f32], rs: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rs,
        }
    }

    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            assert!((rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len());
        }
    }
}

/// `dst[m×n] (row stride dst_rs) = a[m×k] · b[k×n]`, or `+=` with `accumulate`: the gemm crate's
/// kernel (the one candle's matmul runs), single-threaded: callers parallelise over heads.
fn mm(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    mm_in(gemm::Parallelism::None, mnk, dst, dst_rs, accumulate, a, b)
}

/// [`mm`] split across the rayon pool's threads as candle's own matmul does (gemm keeps small
/// products on one thread): for whole projections, which nothing else parallelises.
fn mm_par(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    mm_in(parallelism, mnk, dst, dst_rs, accumulate, a, b)
}

fn mm_in(
    parallelism: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len());
    a.check(m, k);
    b.check(k, n);
    // SAFETY: every index the kernel touches is inside the slices (checked above), `dst` is borrowed
    // mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Query rows per block: the scores of one block, `[QUERY_BLOCK, T_k]`, are the only
/// quadratic-in-T scratch, so memory stays linear in T.
const QUERY_BLOCK: usize = 64;

impl FusedAttention {
    /// Keys that queries `i0..i0+bq` can see at all (causality): `0..n`.
    fn keys_for(&self, i0: usize, bq: usize) -> usize {
        if self.mask.causal {
            (self.mask.offset + i0 + bq).min(self.dims.tk)
        } else {
            self.dims.tk
        }
    }

    /// Probabilities of queries `i0..i0+bq` (row `b`) over keys `0..nk` into `p` `[bq, nk]`:
    /// scores by gemm, then the mask (masked keys get exactly 0) and a row softmax.
    fn probs(&self, b: usize, i0: usize, q: Mat, keys: &[f32], nk: usize, p: &mut [f32]) {
        let (bq, d) = (p.len() / nk, self.dims.d);
        mm((bq, nk, d), p, nk, false, q, Mat::transposed(keys, d));
        if !self.mask.causal {
            // Every key visible (the VGGT aggregator's attention): a vectorised row softmax.
            for row in p.chunks_exact_mut(nk) {
                crate::model::kernels_infer::softmax_scaled_in_place(row, self.scale);
            }
            return;
        }
        // Masked keys at −∞, then the same vectorised row softmax (its exp gives exactly 0
        // there; every query sees at least itself): the scalar `expf` per score, here and in the
        // backward's recomputation, was part of the ≈ 12 % of the train step's samples in `expf`.
        for (r, row) in p.chunks_exact_mut(nk).enumerate() {
            for (j, s) in row.iter_mut().enumerate() {
                if !self.mask.visible(b, i0 + r, j) {
                    *s = f32::NEG_INFINITY;
                }
            }
            crate::model::kernels_infer::softmax_scaled_in_place(row, self.scale);
        }
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, hq, hkv, tq, tk, d) = self.dims.all();
        let (q, k, v) = (
            cpu_slice(s1, l1, "attention q")?,
            cpu_slice(s2, l2, "attention k")?,
            cpu_slice(s3, l3, "attention v")?,
        );
        let n_rep = hq / hkv;
        // One task per (row, query head), into its own [T_q, D] block; the blocks are then
        // interleaved into the [B, T_q, H_q, D] output one output row per task.
        let heads: Vec<Vec<f32>> = (0..b * hq)
            .into_par_iter()
            .map(|bh| {
                let (bi, h) = (bh / hq, bh % hq);
                let keys = &k[(bi * hkv + h / n_rep) * tk * d..][..tk * d];
                let values = self.values(v, bi, h / n_rep);
                let qh = &q[bh * tq * d..(bh + 1) * tq * d];
                let mut o = vec![0f32; tq * d];
                let mut p = vec![0f32; QUERY_BLOCK * tk];
                for i0 in (0..tq).step_by(QUERY_BLOCK) {
                    let bq = QUERY_BLOCK.min(tq - i0);
                    let nk = self.keys_for(i0, bq);
                    let p = &mut p[..bq * nk];
                    self.probs(bi, i0, Mat::rows(&qh[i0 * d..], d), keys, nk, p);
                    mm(
                        (bq, d, nk),
                        &mut o[i0 * d..],
                        d,
                        false,
                        Mat::rows(p, nk),
                        values,
                    );
                }
                o
            })
            .collect();
        let mut out = zeroed_par(b * tq * hq * d);
        out.par_chunks_mut((hq * d).max(1))
            .enumerate()
            .for_each(|(bt, row)| {
                let (bi, i) = (bt / tq, bt % tq);
                for (h, dst) in row.chunks_exact_mut(d).enumerate() {
                    dst.copy_from_slice(&heads[bi * hq + h][i * d..(i + 1) * d]);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, hq * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_q, want_k, want_v) = (q.track_op(), k.track_op(), v.track_op());
        if !(want_q || want_k || want_v) {
            return Ok((None, None, None));
        }
        let (b, hq, hkv, tq, tk, d) = self.dims.all();
        let n_rep = hq / hkv;
        let mut dq = zeroed_par(b * hq * tq * d);
        let mut dk = zeroed_par(b * hkv * tk * d);
        // dV in the heads-first layout; scattered into v's own layout below when that differs.
        let mut dv = zeroed_par(b * hkv * tk * d);
        with_f32(q, |qv| {
            with_f32(k, |kv| {
                with_f32(v, |vv| {
                    with_f32(grad, |g| {
                        // One task per (row, KV head): it owns dK and dV of that head and dQ of its
                        // query heads (consecutive: bi·hq + g·n_rep + r), all contiguous blocks.
                        // Scores and probabilities are recomputed block by block, as in the forward.
                        dq.par_chunks_mut((n_rep * tq * d).max(1))
                            .zip(dk.par_chunks_mut((tk * d).max(1)))
                            .zip(dv.par_chunks_mut((tk * d).max(1)))
                            .enumerate()
                            .for_each(|(bg, ((dq, dk), dv))| {
                                self.backward_group(bg, (qv, kv, vv, g), (dq, dk, dv))
                            })
                    })
                })
            })
        })????;
        let dev = q.device();
        let gq = want_q
            .then(|| Tensor::from_vec(dq, (b, hq, tq, d), dev))
            .transpose()?;
        let gk = want_k
            .then(|| Tensor::from_vec(dk, (b, hkv, tk, d), dev))
            .transpose()?;
        let gv = if !want_v {
            None
        } else if self.v_by_token {
            // [B, H_kv, T_k, D] blocks into [B, T_k, H_kv·D] rows, one row per task.
            let mut rows = zeroed_par(b * tk * hkv * d);
            rows.par_chunks_mut((hkv * d).max(1))
                .enumerate()
                .for_each(|(bt, row)| {
                    let (bi, j) = (bt / tk, bt % tk);
                    for (gi, dst) in row.chunks_exact_mut(d).enumerate() {
                        let src = ((bi * hkv + gi) * tk + j) * d;
                        dst.copy_from_slice(&dv[src..src + d]);
                    }
                });
            Some(Tensor::from_vec(rows, v.shape(), dev)?)
        } else {
            Some(Tensor::from_vec(dv, (b, hkv, tk, d), dev)?)
        };
        Ok((gq, gk, gv))
    }
}

impl FusedAttention {
    /// V of (row `bi`, KV head `g`) as a `[T_k, D]` matrix view of v's data, in either layout.
    fn values<'a>(&self, v: &'a [f32], bi: usize, g: usize) -> Mat<'a> {
        let (_, _, hkv, _, tk, d) = self.dims.all();
        if self.v_by_token {
            Mat::rows(&v[(bi * tk * hkv + g) * d..], hkv * d)
        } else {
            Mat::rows(&v[(bi * hkv + g) * tk * d..][..tk * d], d)
        }
    }

    /// The backward of KV head group `bg` = (row, KV head): dQ of its query heads
    /// (`[n_rep, T_q, D]`), its dK and dV (`[T_k, D]`, accumulated from zero).
    #[allow(clippy::type_complexity)]
    fn backward_group(
        &self,
        bg: usize,
        (qv, kv, vv, g): (&[f32], &[f32], &[f32], &[f32]),
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let (_, hq, hkv, tq, tk, d) = self.dims.all();
        let n_rep = hq / hkv;
        let (bi, gi) = (bg / hkv, bg % hkv);
        let keys = &kv[bg * tk * d..(bg + 1) * tk * d];
        let values = self.values(vv, bi, gi);
        let mut p = vec![0f32; QUERY_BLOCK * tk];
        let mut ds = vec![0f32; QUERY_BLOCK * tk];
        for r in 0..n_rep {
            let h = gi * n_rep + r;
            let qh = &qv[(bi * hq + h) * tq * d..(bi * hq + h + 1) * tq * d];
            for i0 in (0..tq).step_by(QUERY_BLOCK) {
                let bq = QUERY_BLOCK.min(tq - i0);
                let nk = self.keys_for(i0, bq);
                let (p, ds) = (&mut p[..bq * nk], &mut ds[..bq * nk]);
                let q_blk = Mat::rows(&qh[i0 * d..], d);
                // dO of these queries: rows of the [B, T_q, H_q, D] gradient.
                let go = ((bi * tq + i0) * hq + h) * d;
                let g_blk = Mat::rows(&g[go..], hq * d);
                self.probs(bi, i0, q_blk, keys, nk, p);
                // dP = dO Vᵀ, then dS = P ⊙ (dP − Σ_j P dP) · scale.
                let values_t = Mat {
                    data: values.data,
                    rs: values.cs,
                    cs: values.rs,
                };
                mm((bq, nk, d), ds, nk, false, g_blk, values_t);
                for (prow, srow) in p.chunks_exact(nk).zip(ds.chunks_exact_mut(nk)) {
                    let delta: f32 = prow.iter().zip(srow.iter()).map(|(a, b)| a * b).sum();
                    for (s, &pj) in srow.iter_mut().zip(prow) {
                        *s = pj * (*s - delta) * self.scale;
                    }
                }
                let dq_blk = &mut dq[(r * tq + i0) * d..];
                mm(
                    (bq, d, nk),
                    dq_blk,
                    d,
                    false,
                    Mat::rows(ds, nk),
                    Mat::rows(keys, d),
                );
                mm((nk, d, bq), dk, d, true, Mat::transposed(ds, nk), q_blk);
                mm((nk, d, bq), dv, d, true, Mat::transposed(p, nk), g_blk);
            }
        }
    }
}

/// RMSNorm over the last axis, `w ⊙ x / sqrt(mean(x²) + eps)`, with `w` of the last axis' size.
/// Fused on the CPU in f32, composite elsewhere.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[x, weight]) {
        rms_norm_fused(x, weight, eps)
    } else {
        rms_norm_composite(x, weight, eps)
    }
}

/// The composite RMSNorm (candle's differentiable ops; the weight gets a gradient only if it
/// tracks one).
pub fn rms_norm_composite(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    frozen::broadcast_mul(&normed, weight)
}

/// The fused RMSNorm on any device (errors off the CPU / f32): exposed for tests.
pub fn rms_norm_fused(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if weight.dims() != [n] {
        candle_core::bail!(
            "rms_norm: weight {:?} for a last axis of {n}",
            weight.shape()
        );
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, FusedRmsNorm { eps: eps as f32 })
}

struct FusedRmsNorm {
    eps: f32,
}

impl FusedRmsNorm {
    /// 1 / sqrt(mean(x²) + eps) of one row.
    #[inline]
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let mean = dot(row, row) / row.len() as f32;
        1.0 / (mean + self.eps).sqrt()
    }

    /// The input gradient of one row `x` with weight `w` and output gradient `g`:
    /// `dx = r·(g⊙w) − x·r³·Σ(g⊙w⊙x)/n`.
    #[inline]
    fn backward_row(&self, x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32]) {
        let r = self.inv_rms(x);
        let mut c = 0f32;
        for ((&gi, &wi), &xi) in g.iter().zip(w).zip(x) {
            c += gi * wi * xi;
        }
        let k = r * r * r * c / x.len() as f32;
        for (((d, &gi), &wi), &xi) in dx.iter_mut().zip(g).zip(w).zip(x) {
            *d = r * gi * wi - xi * k;
        }
    }
}

/// Rows per parallel task.
const NORM_CHUNK_ROWS: usize = 64;

impl CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "rms_norm x")?;
        let w = cpu_slice(s2, l2, "rms_norm weight")?;
        let n = w.len();
        let mut out = zeroed_par(x.len());
        out.par_chunks_mut(n * NORM_CHUNK_ROWS)
            .zip(x.par_chunks(n * NORM_CHUNK_ROWS))
            .for_each(|(o, xs)| {
                for (orow, row) in o.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
                    let r = self.inv_rms(row);
                    for ((o, &x), &w) in orow.iter_mut().zip(row).zip(w) {
                        *o = x * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w) = (x.track_op(), w.track_op());
        if !(want_x || want_w) {
            return Ok((None, None));
        }
        let n = w.elem_count();
        let mut dx = if want_x {
            zeroed_par(x.elem_count())
        } else {
            Vec::new()
        };
        // dx by rows (FusedRmsNorm::backward_row); dw = Σ_rows g⊙x·r, per chunk, summed after in
        // chunk order.
        let dws: Vec<Vec<f32>> = with_f32(x, |xv| {
            with_f32(w, |wv| {
                with_f32(grad, |g| {
                    let rows = xv
                        .par_chunks(n * NORM_CHUNK_ROWS)
                        .zip(g.par_chunks(n * NORM_CHUNK_ROWS));
                    let chunk = |(xs, gs): (&[f32], &[f32]), mut dxs: Option<&mut [f32]>| {
                        let mut dw = vec![0f32; if want_w { n } else { 0 }];
                        for (i, (row, grow)) in
                            xs.chunks_exact(n).zip(gs.chunks_exact(n)).enumerate()
                        {
                            if let Some(dxs) = dxs.as_deref_mut() {
                                self.backward_row(row, wv, grow, &mut dxs[i * n..(i + 1) * n]);
                            }
                            if want_w {
                                let r = self.inv_rms(row);
                                for ((d, &gi), &xi) in dw.iter_mut().zip(grow).zip(row) {
                                    *d += gi * xi * r;
                                }
                            }
                        }
                        dw
                    };
                    if want_x {
                        rows.zip(dx.par_chunks_mut(n * NORM_CHUNK_ROWS))
                            .map(|(xg, dxs)| chunk(xg, Some(dxs)))
                            .collect()
                    } else {
                        rows.map(|xg| chunk(xg, None)).collect()
                    }
                })
            })
        })???;
        let dev = x.device();
        let gx = want_x
            .then(|| Tensor::from_vec(dx, x.shape(), dev))
            .transpose()?;
        let gw = if want_w {
            let mut dw = vec![0f32; n];
            for part in &dws {
                axpy(&mut dw, 1.0, part);
            }
            Some(Tensor::from_vec(dw, n, dev)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// Elements per parallel task of the element-wise kernels.
const ELEMENT_CHUNK: usize = 1 << 14;

/// `silu(gate) ⊙ up`, the gating of a SwiGLU MLP (`silu(x) = x·σ(x)`), for tensors of one shape.
/// Fused on the CPU in f32 (it keeps gate and up for the backward, not SiLU's output as well),
/// composite elsewhere.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[gate, up]) {
        swiglu_fused(gate, up)
    } else {
        swiglu_composite(gate, up)
    }
}

/// The composite SwiGLU gating: candle's SiLU, then the product.
pub fn swiglu_composite(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    frozen::broadcast_mul(&gate.silu()?, up)
}

/// The fused SwiGLU gating on any device (errors off the CPU / f32): exposed for tests.
pub fn swiglu_fused(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ in shape",
            gate.shape(),
            up.shape()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, FusedSwiGlu)
}

struct FusedSwiGlu;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for FusedSwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = cpu_slice(s1, l1, "swiglu gate")?;
        let up = cpu_slice(s2, l2, "swiglu up")?;
        let mut out = zeroed_par(gate.len());
        out.par_chunks_mut(ELEMENT_CHUNK)
            .zip(gate.par_chunks(ELEMENT_CHUNK))
            .zip(up.par_chunks(ELEMENT_CHUNK))
            .for_each(|((o, g), u)| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(g) * u;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_gate, want_up) = (gate.track_op(), up.track_op());
        if !(want_gate || want_up) {
            return Ok((None, None));
        }
        let n = gate.elem_count();
        // d gate = dy·u·σ(g)·(1 + g·(1 − σ(g))) ;  d up = dy·g·σ(g).
        let mut d_gate = zeroed_par(if want_gate { n } else { 0 });
        let mut d_up = zeroed_par(if want_up { n } else { 0 });
        with_f32(gate, |g| {
            with_f32(up, |u| {
                with_f32(grad, |dy| {
                    let chunks = g
                        .par_chunks(ELEMENT_CHUNK)
                        .zip(u.par_chunks(ELEMENT_CHUNK))
                        .zip(dy.par_chunks(ELEMENT_CHUNK));
                    match (want_gate, want_up) {
                        (true, true) => chunks
                            .zip(d_gate.par_chunks_mut(ELEMENT_CHUNK))
                            .zip(d_up.par_chunks_mut(ELEMENT_CHUNK))
                            .for_each(|((((g, u), dy), dg), du)| {
                                for i in 0..g.len() {
                                    let s = sigmoid(g[i]);
                                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                                    du[i] = dy[i] * g[i] * s;
                                }
                            }),
                        (true, false) => chunks.zip(d_gate.par_chunks_mut(ELEMENT_CHUNK)).for_each(
                            |(((g, u), dy), dg)| {
                                for i in 0..g.len() {
                                    let s = sigmoid(g[i]);
                                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                                }
                            },
                        ),
                        _ => chunks.zip(d_up.par_chunks_mut(ELEMENT_CHUNK)).for_each(
                            |(((g, _), dy), du)| {
                                for i in 0..g.len() {
                                    du[i] = dy[i] * g[i] * sigmoid(g[i]);
                                }
                            },
                        ),
                    }
                })
            })
        })???;
        let dev = gate.device();
        let gg = want_gate
            .then(|| Tensor::from_vec(d_gate, gate.shape(), dev))
            .transpose()?;
        let gu = want_up
            .then(|| Tensor::from_vec(d_up, up.shape(), dev))
            .transpose()?;
        Ok((gg, gu))
    }
}

/// Rotary position embedding (rotate-half layout) of per-head projections `x` `[B, T, H, D]`
/// with tables `cos`, `sin` `[B or 1, 1, T, D]`: `x·cos + rotate_half(x)·sin`, returned as
/// `[B, H, T, D]` (the layout attention reads). The tables are constants (no gradient flows to
/// them). Fused on the CPU in f32 (one pass that also transposes), composite elsewhere.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[x, cos, sin]) {
        rope_fused(x, cos, sin)
    } else {
        rope_composite(x, cos, sin)
    }
}

/// The composite RoPE (transpose, halves, concatenation, products, sum). Same shapes as [`rope`].
pub fn rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.transpose(1, 2)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let a = frozen::broadcast_mul(&x, cos)?;
    let b = frozen::broadcast_mul(&rotated, sin)?;
    frozen::broadcast_add(&a, &b)
}

/// The fused RoPE on any device (errors off the CPU / f32): exposed for tests.
pub fn rope_fused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let op = FusedRope::checked(x.dims4()?, cos, sin, &format!("x {:?}", x.shape()))?;
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)
}

struct FusedRope {
    /// x's (B, T, H, D).
    dims: (usize, usize, usize, usize),
    /// 1 (one table for every row) or B.
    table_rows: usize,
}

impl FusedRope {
    /// The op for x of dims (B, T, H, D) (named `what` in errors) and tables `cos`, `sin`
    /// `[B or 1, 1, T, D]`.
    fn checked(
        (b, t, h, d): (usize, usize, usize, usize),
        cos: &Tensor,
        sin: &Tensor,
        what: &str,
    ) -> candle_core::Result<Self> {
        let (bc, one, tc, dc) = cos.dims4()?;
        if sin.dims() != cos.dims() || one != 1 || tc != t || dc != d || !(bc == 1 || bc == b) {
            candle_core::bail!(
                "rope: tables {:?} / {:?} for {what} (want [{b} or 1, 1, {t}, {d}])",
                cos.shape(),
                sin.shape(),
            );
        }
        if !d.is_multiple_of(2) {
            candle_core::bail!("rope: odd head size {d}");
        }
        Ok(Self {
            dims: (b, t, h, d),
            table_rows: bc,
        })
    }

    /// Offset of the (row, position) entry of the cos/sin tables.
    fn table(&self, bi: usize, ti: usize) -> usize {
        let (_, t, _, d) = self.dims;
        ((if self.table_rows == 1 { 0 } else { bi }) * t + ti) * d
    }
}

impl CustomOp3 for FusedRope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, h, d) = self.dims;
        let x = cpu_slice(s1, l1, "rope x")?;
        let cos = cpu_slice(s2, l2, "rope cos")?;
        let sin = cpu_slice(s3, l3, "rope sin")?;
        let half = d / 2;
        let mut out = zeroed_par(x.len());
        // One task per (row, head): it writes that head's [T, D] block of the output.
        out.par_chunks_mut((t * d).max(1))
            .enumerate()
            .for_each(|(bh, o)| {
                let (bi, hi) = (bh / h, bh % h);
                for ti in 0..t {
                    let src = &x[((bi * t + ti) * h + hi) * d..][..d];
                    let tb = self.table(bi, ti);
                    let (c, s) = (&cos[tb..tb + d], &sin[tb..tb + d]);
                    let dst = &mut o[ti * d..(ti + 1) * d];
                    // As the composite: x·cos + cat(−x2, x1)·sin, the same products and sums.
                    for i in 0..half {
                        let (x1, x2) = (src[i], src[i + half]);
                        dst[i] = x1 * c[i] + (-x2) * s[i];
                        dst[i + half] = x2 * c[i + half] + x1 * s[i + half];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None, None));
        }
        let (b, t, h, d) = self.dims;
        let half = d / 2;
        let mut dx = zeroed_par(b * t * h * d);
        with_f32(cos, |cos| {
            with_f32(sin, |sin| {
                with_f32(grad, |dy| {
                    // The transposed rotation, back into x's [B, T, H, D] layout: one task per
                    // (row, position).
                    dx.par_chunks_mut((h * d).max(1))
                        .enumerate()
                        .for_each(|(bt, o)| {
                            let (bi, ti) = (bt / t, bt % t);
                            let tb = self.table(bi, ti);
                            let (c, s) = (&cos[tb..tb + d], &sin[tb..tb + d]);
                            for hi in 0..h {
                                let g = &dy[((bi * h + hi) * t + ti) * d..][..d];
                                let dst = &mut o[hi * d..(hi + 1) * d];
                                for i in 0..half {
                                    let (g1, g2) = (g[i], g[i + half]);
                                    dst[i] = g1 * c[i] + g2 * s[i + half];
                                    dst[i + half] = g2 * c[i + half] - g1 * s[i];
                                }
                            }
                        })
                })
            })
        })???;
        Ok((
            Some(Tensor::from_vec(dx, (b, t, h, d), x.device())?),
            None,
            None,
        ))
    }
}

/// Qwen3's per-head query / key path in one op: the projection's output `x` `[B, T, H·D]` viewed
/// as `[B, T, H, D]`, RMSNorm over each head's `D` values with `weight` `[D]`, then RoPE (tables as
/// [`rope`]) into `[B, H, T, D]`. Instead of a reshape, [`rms_norm`] and [`rope`]: one graph node
/// and one gradient hand-over where there were three. The weight and the tables are constants
/// here: when the weight tracks a gradient the separate ops run. Fused on the CPU in f32 (the same
/// products in the same order as the two fused kernels, so the same values bit for bit); elsewhere
/// the composite ops.
pub fn rms_norm_rope(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    let d = rms_norm_rope_head_size(hd, heads)?;
    let x4 = || x.reshape((b, t, heads, d));
    if !is_cpu_f32(&[x, weight, cos, sin]) {
        return rope_composite(&rms_norm_composite(&x4()?, weight, eps)?, cos, sin);
    }
    if weight.track_op() {
        return rope(&rms_norm(&x4()?, weight, eps)?, cos, sin);
    }
    rms_norm_rope_fused(x, weight, eps, cos, sin, heads)
}

/// The values per head when `hd` values per position split into `heads` heads.
fn rms_norm_rope_head_size(hd: usize, heads: usize) -> candle_core::Result<usize> {
    if heads == 0 || !hd.is_multiple_of(heads) {
        candle_core::bail!("rms_norm_rope: {hd} values per position for {heads} heads");
    }
    Ok(hd / heads)
}

/// The fused [`rms_norm_rope`] on any device (errors off the CPU / f32): exposed for tests.
pub fn rms_norm_rope_fused(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    let d = rms_norm_rope_head_size(hd, heads)?;
    if weight.dims() != [d] {
        candle_core::bail!(
            "rms_norm_rope: weight {:?} for heads of {d}",
            weight.shape()
        );
    }
    let rope = FusedRope::checked(
        (b, t, heads, d),
        cos,
        sin,
        &format!("x {:?} as {heads} heads", x.shape()),
    )?;
    x.contiguous()?.apply_op1(FusedNormRope {
        norm: FusedRmsNorm { eps: eps as f32 },
        weight: weight.detach().contiguous()?,
        cos: cos.detach().contiguous()?,
        sin: sin.detach().contiguous()?,
        rope,
    })
}

struct FusedNormRope {
    norm: FusedRmsNorm,
    /// `[D]`, constant.
    weight: Tensor,
    cos: Tensor,
    sin: Tensor,
    /// The shapes (x as `[B, T, H, D]`, table rows).
    rope: FusedRope,
}

impl candle_core::CustomOp1 for FusedNormRope {
    fn name(&self) -> &'static str {
        "fused-rms-norm-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, h, d) = self.rope.dims;
        let x = cpu_slice(s, l, "rms_norm_rope x")?;
        let half = d / 2;
        let mut out = zeroed_par(x.len());
        with_f32(&self.weight, |w| {
            with_f32(&self.cos, |cos| {
                with_f32(&self.sin, |sin| {
                    // One task per (row, head): it writes that head's [T, D] block of the output.
                    out.par_chunks_mut((t * d).max(1))
                        .enumerate()
                        .for_each_init(
                            || vec![0f32; d],
                            |normed, (bh, o)| {
                                let (bi, hi) = (bh / h, bh % h);
                                for ti in 0..t {
                                    let src = &x[((bi * t + ti) * h + hi) * d..][..d];
                                    // As FusedRmsNorm's forward, then FusedRope's.
                                    let r = self.norm.inv_rms(src);
                                    for ((n, &x), &w) in normed.iter_mut().zip(src).zip(w) {
                                        *n = x * r * w;
                                    }
                                    let tb = self.rope.table(bi, ti);
                                    let (c, s) = (&cos[tb..tb + d], &sin[tb..tb + d]);
                                    let dst = &mut o[ti * d..(ti + 1) * d];
                                    for i in 0..half {
                                        let (x1, x2) = (normed[i], normed[i + half]);
                                        dst[i] = x1 * c[i] + (-x2) * s[i];
                                        dst[i + half] = x2 * c[i + half] + x1 * s[i + half];
                                    }
                                }
                            },
                        )
                })
            })
        })???;
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let (_, t, h, d) = self.rope.dims;
        let half = d / 2;
        let mut dx = zeroed_par(x.elem_count());
        with_f32(x, |xv| {
            with_f32(&self.weight, |w| {
                with_f32(&self.cos, |cos| {
                    with_f32(&self.sin, |sin| {
                        with_f32(grad, |dy| {
                            // One task per (row, position): RoPE's transposed rotation back into
                            // x's layout, then RMSNorm's backward, head by head.
                            dx.par_chunks_mut((h * d).max(1)).enumerate().for_each_init(
                                || vec![0f32; d],
                                |gn, (bt, o)| {
                                    let (bi, ti) = (bt / t, bt % t);
                                    let tb = self.rope.table(bi, ti);
                                    let (c, s) = (&cos[tb..tb + d], &sin[tb..tb + d]);
                                    for hi in 0..h {
                                        let g = &dy[((bi * h + hi) * t + ti) * d..][..d];
                                        for i in 0..half {
                                            let (g1, g2) = (g[i], g[i + half]);
                                            gn[i] = g1 * c[i] + g2 * s[i + half];
                                            gn[i + half] = g2 * c[i + half] - g1 * s[i];
                                        }
                                        let row = &xv[(bt * h + hi) * d..][..d];
                                        let dst = &mut o[hi * d..(hi + 1) * d];
                                        self.norm.backward_row(row, w, gn, dst);
                                    }
                                },
                            )
                        })
                    })
                })
            })
        })?????;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `silu(x·W_gateᵀ) ⊙ (x·W_upᵀ)`, the gated input of a SwiGLU MLP's down projection, with frozen
/// `[I, in]` weights, over the last axis of `x`. One op instead of two projections and
/// [`swiglu`]: `x` gets one gradient (`d_gate·W_gate + d_up·W_up`, accumulated in the gemm) where
/// the graph had two projections' and the gating's (each a zero-filled `[rows, I]` buffer and a
/// sum in candle's backward). The op keeps the gate and up projections from its forward for the
/// backward (as the separate ops' graph kept them). Fused on the CPU in f32; elsewhere
/// [`linear`] twice and [`swiglu`]. Adapters on the gate or up projection need the separate ops.
pub fn swiglu_mlp_input(x: &Tensor, w_gate: &Tensor, w_up: &Tensor) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[x, w_gate, w_up]) {
        swiglu_mlp_input_fused(x, w_gate, w_up)
    } else {
        swiglu(&linear(x, w_gate)?, &linear(x, w_up)?)
    }
}

/// The fused [`swiglu_mlp_input`] on any device (errors off the CPU / f32): exposed for tests.
pub fn swiglu_mlp_input_fused(
    x: &Tensor,
    w_gate: &Tensor,
    w_up: &Tensor,
) -> candle_core::Result<Tensor> {
    if w_gate.shape() != w_up.shape() {
        candle_core::bail!(
            "swiglu_mlp_input: gate {:?} and up {:?} weights differ",
            w_gate.shape(),
            w_up.shape()
        );
    }
    let gate = FusedLinear::new(x, w_gate, None)?;
    let up = FusedLinear::new(x, w_up, None)?;
    x.contiguous()?.apply_op1(FusedSwiGluInput {
        gate,
        up,
        keep: x.track_op(),
        kept: std::sync::OnceLock::new(),
    })
}

struct FusedSwiGluInput {
    gate: FusedLinear,
    up: FusedLinear,
    /// Keep the projections for a backward (x tracks a gradient).
    keep: bool,
    /// `x·W_gateᵀ` and `x·W_upᵀ` from the forward.
    kept: std::sync::OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl candle_core::CustomOp1 for FusedSwiGluInput {
    fn name(&self) -> &'static str {
        "fused-swiglu-mlp-input"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "swiglu_mlp_input x")?;
        let (gate, up) = (self.gate.project(x)?, self.up.project(x)?);
        let mut out = zeroed_par(gate.len());
        out.par_chunks_mut(ELEMENT_CHUNK)
            .zip(gate.par_chunks(ELEMENT_CHUNK))
            .zip(up.par_chunks(ELEMENT_CHUNK))
            .for_each(|((o, g), u)| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(g) * u;
                }
            });
        if self.keep && self.kept.set((gate, up)).is_err() {
            candle_core::bail!("swiglu_mlp_input: the op ran twice");
        }
        Ok((CpuStorage::F32(out), self.gate.out_shape(l)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let Some((gate, up)) = self.kept.get() else {
            candle_core::bail!("swiglu_mlp_input: backward without the forward's projections");
        };
        let n = gate.len();
        let (mut d_gate, mut d_up) = (zeroed_par(n), zeroed_par(n));
        with_f32(grad, |dy| {
            gate.par_chunks(ELEMENT_CHUNK)
                .zip(up.par_chunks(ELEMENT_CHUNK))
                .zip(dy.par_chunks(ELEMENT_CHUNK))
                .zip(d_gate.par_chunks_mut(ELEMENT_CHUNK))
                .zip(d_up.par_chunks_mut(ELEMENT_CHUNK))
                .for_each(|((((g, u), dy), dg), du)| {
                    // As FusedSwiGlu's backward.
                    for i in 0..g.len() {
                        let s = sigmoid(g[i]);
                        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                        du[i] = dy[i] * g[i] * s;
                    }
                })
        })?;
        let mut dx = self.gate.back_project(&d_gate)?;
        drop(d_gate);
        self.up.back_project_into(&d_up, &mut dx)?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets` (class indices, N of them):
/// `mean_n(logsumexp(logits_n) − logits_n[target_n])`, a scalar. Fused on the CPU in f32 (the
/// backward recomputes each row's softmax from the logits), composite elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[logits]) {
        cross_entropy_fused(logits, targets)
    } else {
        cross_entropy_composite(logits, targets)
    }
}

/// The composite cross-entropy: candle's log-softmax, a gather, a mean.
pub fn cross_entropy_composite(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let n = targets.len();
    let targets = Tensor::from_slice(targets, (n, 1), logits.device())?;
    let log_probs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = log_probs.gather(&targets, 1)?;
    picked.sum_all()?.neg()? / n as f64
}

/// The fused cross-entropy on any device (errors off the CPU / f32): exposed for tests.
pub fn cross_entropy_fused(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || n == 0 {
        candle_core::bail!("cross_entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} outside the {v} classes");
    }
    logits.contiguous()?.apply_op1(FusedCrossEntropy {
        targets: Arc::new(targets.to_vec()),
        classes: v,
    })
}

struct FusedCrossEntropy {
    targets: Arc<Vec<u32>>,
    classes: usize,
}

/// Rows per parallel task of the cross-entropy.
const CE_CHUNK_ROWS: usize = 16;

/// (max, Σ exp(x − max)) of a row.
#[inline]
fn max_and_exp_sum(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|&x| (x - max).exp()).sum())
}

impl candle_core::CustomOp1 for FusedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let logits = cpu_slice(s, l, "cross_entropy logits")?;
        let v = self.classes;
        // Per-chunk sums, added in chunk order (deterministic whatever the thread count).
        let sums: Vec<f64> = logits
            .par_chunks(v * CE_CHUNK_ROWS)
            .zip(self.targets.par_chunks(CE_CHUNK_ROWS))
            .map(|(rows, targets)| {
                rows.chunks_exact(v)
                    .zip(targets)
                    .map(|(row, &t)| {
                        let (max, sum) = max_and_exp_sum(row);
                        (max + sum.ln() - row[t as usize]) as f64
                    })
                    .sum()
            })
            .collect();
        let loss = sums.iter().sum::<f64>() / self.targets.len() as f64;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if !logits.track_op() {
            return Ok(None);
        }
        let v = self.classes;
        let scale = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / self.targets.len() as f32;
        let mut d = zeroed_par(logits.elem_count());
        with_f32(logits, |x| {
            d.par_chunks_mut(v * CE_CHUNK_ROWS)
                .zip(x.par_chunks(v * CE_CHUNK_ROWS))
                .zip(self.targets.par_chunks(CE_CHUNK_ROWS))
                .for_each(|((drows, rows), targets)| {
                    for ((drow, row), &t) in drows
                        .chunks_exact_mut(v)
                        .zip(rows.chunks_exact(v))
                        .zip(targets)
                    {
                        let (max, sum) = max_and_exp_sum(row);
                        let inv = scale / sum;
                        for (dj, &xj) in drow.iter_mut().zip(row) {
                            *dj = (xj - max).exp() * inv;
                        }
                        drow[t as usize] -= scale;
                    }
                })
        })?;
        Ok(Some(Tensor::from_vec(d, logits.shape(), logits.device())?))
    }
}

/// A frozen projection `x·Wᵀ` over the last axis of `x` (W `[out, in]` as stored in checkpoints),
/// as one op on the CPU in f32: any leading dims in and out without reshape nodes, whose backward
/// would each cost the graph a zero-filled buffer and a sum of the gradient's size. W never gets a
/// gradient (frozen, as [`frozen::linear`]); x gets `g·W` when it tracks one. [`frozen::linear`]
/// elsewhere (another device, bf16 weights).
pub fn linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[x, weight]) {
        linear_fused(x, weight)
    } else {
        frozen::linear(x, weight)
    }
}

/// The fused frozen projection on any device (errors off the CPU / f32): exposed for tests.
pub fn linear_fused(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let op = FusedLinear::new(x, weight, None)?;
    x.contiguous()?.apply_op1(op)
}

/// A frozen projection with its LoRA adapter, `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` over the last axis of `x`
/// (W `[out, in]` frozen, A `[r, in]`, B `[out, r]`), as one op on the CPU in f32: the forward adds
/// the adapter's product into the projection's output inside the gemm (no `[rows, out]` sum, no
/// scaling op, no reshapes), and the backward hands out one gradient for `x`
/// (`g·W + s·(g·B)·A`, accumulated in the gemm) instead of two that the graph would add, plus A's
/// and B's. W never gets a gradient; x, A and B get one when they track it. Composite
/// ([`lora_linear_composite`]) elsewhere. No dropout: the caller takes the composite path when
/// LoRA dropout is on.
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
) -> candle_core::Result<Tensor> {
    if is_cpu_f32(&[x, weight, a, b]) {
        lora_linear_fused(x, weight, a, b, scaling)
    } else {
        lora_linear_composite(x, weight, a, b, scaling)
    }
}

/// The composite LoRA projection: [`frozen::linear`] for the base and for A and B, the scaling on
/// the rank-r intermediate, and the sum. Same shapes as [`lora_linear`].
pub fn lora_linear_composite(
    x: &Tensor,
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
) -> candle_core::Result<Tensor> {
    let base = frozen::linear(x, weight)?;
    let h = (frozen::linear(x, a)? * scaling)?;
    frozen::broadcast_add(&base, &frozen::linear(&h, b)?)
}

/// The fused LoRA projection on any device (errors off the CPU / f32): exposed for tests.
pub fn lora_linear_fused(
    x: &Tensor,
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
) -> candle_core::Result<Tensor> {
    let (out_f, in_f) = weight.dims2()?;
    let (r, a_in) = a.dims2()?;
    if a_in != in_f || b.dims2()? != (out_f, r) {
        candle_core::bail!(
            "lora_linear: weight {:?}, A {:?}, B {:?} do not fit",
            weight.shape(),
            a.shape(),
            b.shape()
        );
    }
    let op = FusedLinear::new(x, weight, Some((r, scaling as f32)))?;
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

/// `x·Wᵀ`, plus `s·(x·Aᵀ)·Bᵀ` when it carries an adapter (then an op of (x, A, B); else of x).
struct FusedLinear {
    /// The frozen `[out, in]` weight (detached, contiguous; never given a gradient).
    weight: Tensor,
    /// The adapter's rank and scaling.
    lora: Option<(usize, f32)>,
    /// Rows of x (the product of its leading dims), in, out.
    dims: (usize, usize, usize),
}

impl FusedLinear {
    fn new(x: &Tensor, weight: &Tensor, lora: Option<(usize, f32)>) -> candle_core::Result<Self> {
        let (out_f, in_f) = weight.dims2()?;
        if x.rank() == 0 || in_f == 0 || x.dim(D::Minus1)? != in_f {
            candle_core::bail!(
                "linear: x {:?} for weight {:?} (want the last axis {in_f}): do not fit",
                x.shape(),
                weight.shape()
            );
        }
        Ok(Self {
            weight: weight.detach().contiguous()?,
            lora,
            dims: (x.elem_count() / in_f, in_f, out_f),
        })
    }

    /// x's shape with the last axis `out`.
    fn out_shape(&self, x: &Layout) -> Shape {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank checked in new") = self.dims.2;
        Shape::from(dims)
    }

    /// `x·Wᵀ` into a new `[rows, out]` buffer.
    fn project(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (rows, in_f, out_f) = self.dims;
        let mut y = zeroed_par(rows * out_f);
        with_f32(&self.weight, |w| {
            mm_par(
                (rows, out_f, in_f),
                &mut y,
                out_f,
                false,
                Mat::rows(x, in_f),
                Mat::transposed(w, in_f),
            )
        })?;
        Ok(y)
    }

    /// `s·x·Aᵀ`, `[rows, r]`.
    fn scaled_down(&self, x: &[f32], a: &[f32], (r, s): (usize, f32)) -> Vec<f32> {
        let (rows, in_f, _) = self.dims;
        let mut h = vec![0f32; rows * r];
        mm_par(
            (rows, r, in_f),
            &mut h,
            r,
            false,
            Mat::rows(x, in_f),
            Mat::transposed(a, in_f),
        );
        for v in h.iter_mut() {
            *v *= s;
        }
        h
    }

    /// `g·W` (`[rows, in]`), the input's gradient through the frozen weight.
    fn back_project(&self, g: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (rows, in_f, _) = self.dims;
        let mut dx = zeroed_par(rows * in_f);
        self.back_project_with(g, &mut dx, false)?;
        Ok(dx)
    }

    /// `dx += g·W`.
    fn back_project_into(&self, g: &[f32], dx: &mut [f32]) -> candle_core::Result<()> {
        self.back_project_with(g, dx, true)
    }

    fn back_project_with(
        &self,
        g: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) -> candle_core::Result<()> {
        let (rows, in_f, out_f) = self.dims;
        with_f32(&self.weight, |w| {
            mm_par(
                (rows, in_f, out_f),
                dx,
                in_f,
                accumulate,
                Mat::rows(g, out_f),
                Mat::rows(w, in_f),
            )
        })
    }
}

impl candle_core::CustomOp1 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.project(cpu_slice(s, l, "linear x")?)?;
        Ok((CpuStorage::F32(y), self.out_shape(l)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let dx = with_f32(grad, |g| self.back_project(g))??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((r, s)) = self.lora else {
            candle_core::bail!("fused-lora-linear without an adapter");
        };
        let (rows, _, out_f) = self.dims;
        let x = cpu_slice(s1, l1, "lora_linear x")?;
        let a = cpu_slice(s2, l2, "lora_linear A")?;
        let b = cpu_slice(s3, l3, "lora_linear B")?;
        let mut y = self.project(x)?;
        let h = self.scaled_down(x, a, (r, s));
        mm_par(
            (rows, out_f, r),
            &mut y,
            out_f,
            true,
            Mat::rows(&h, r),
            Mat::transposed(b, r),
        );
        Ok((CpuStorage::F32(y), self.out_shape(l1)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_a, want_b) = (x.track_op(), a.track_op(), b.track_op());
        if !(want_x || want_a || want_b) {
            return Ok((None, None, None));
        }
        let Some((r, s)) = self.lora else {
            candle_core::bail!("fused-lora-linear without an adapter");
        };
        let (rows, in_f, out_f) = self.dims;
        let (mut dx, mut da, mut db) = (Vec::new(), Vec::new(), Vec::new());
        with_f32(x, |x| {
            with_f32(a, |a| {
                with_f32(b, |b| {
                    with_f32(grad, |g| {
                        // t = s·(g·B), the gradient of the rank-r intermediate x·Aᵀ.
                        let mut t = vec![0f32; rows * r];
                        mm_par(
                            (rows, r, out_f),
                            &mut t,
                            r,
                            false,
                            Mat::rows(g, out_f),
                            Mat::rows(b, r),
                        );
                        for v in t.iter_mut() {
                            *v *= s;
                        }
                        if want_b {
                            // dB = gᵀ·(s·x·Aᵀ).
                            let h = self.scaled_down(x, a, (r, s));
                            db = vec![0f32; out_f * r];
                            mm_par(
                                (out_f, r, rows),
                                &mut db,
                                r,
                                false,
                                Mat::transposed(g, out_f),
                                Mat::rows(&h, r),
                            );
                        }
                        if want_a {
                            // dA = tᵀ·x.
                            da = vec![0f32; r * in_f];
                            mm_par(
                                (r, in_f, rows),
                                &mut da,
                                in_f,
                                false,
                                Mat::transposed(&t, r),
                                Mat::rows(x, in_f),
                            );
                        }
                        if want_x {
                            // dx = g·W + t·A, the second product accumulated into the first.
                            dx = self.back_project(g)?;
                            mm_par(
                                (rows, in_f, r),
                                &mut dx,
                                in_f,
                                true,
                                Mat::rows(&t, r),
                                Mat::rows(a, in_f),
                            );
                        }
                        Ok::<(), candle_core::Error>(())
                    })
                })
            })
        })?????;
        let dev = x.device();
        let gx = want_x
            .then(|| Tensor::from_vec(dx, x.shape(), dev))
            .transpose()?;
        let ga = want_a
            .then(|| Tensor::from_vec(da, (r, in_f), dev))
            .transpose()?;
        let gb = want_b
            .then(|| Tensor::from_vec(db, (out_f, r), dev))
            .transpose()?;
        Ok((gx, ga, gb))
    }
}
