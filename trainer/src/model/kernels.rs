//! Fused, differentiable CPU kernels for the decoder's attention and RMSNorm, with the composite
//! versions they replace.
//!
//! The composite attention materialises the scores, the masked scores and the probabilities
//! (`[B, H, T, T]` each) and keeps them for the backward; [`attention`] computes each query row's
//! scores in a scratch buffer, and its backward recomputes them row by row (as memory-efficient /
//! flash attention does), so what a layer keeps for the backward is linear in T: q, k, v and the
//! output. Keys and values stay at their own head count (GQA without `repeat_kv` copies), and
//! masked keys (later positions, padding) are skipped rather than multiplied by zero.
//!
//! [`rms_norm`] is one pass forward and one backward instead of six element-wise ops.
//!
//! Both run only on the CPU in f32: on another device or dtype they fall back to the composite
//! version (the same graph as before, so `cuda` builds and runs unchanged). Their backward spares
//! operands that do not track gradients, like [`crate::model::frozen`].

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::model::frozen;

/// Which keys each query sees: query i of a row sits at key index `offset + i` and sees key j
/// when j ≤ offset + i and key j is a real token; a padding query always sees itself, so no row is
/// entirely masked (its output is unused but stays finite).
#[derive(Debug, Clone)]
pub struct KeyMask {
    key_valid: Arc<Vec<Vec<bool>>>,
    offset: usize,
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
        })
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
    let (b, hq, tq, d) = q.dims4()?;
    let (bk, hkv, tk, dk) = k.dims4()?;
    if v.dims4()? != (bk, hkv, tk, dk) || bk != b || dk != d {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit",
            q.shape(),
            k.shape(),
            v.shape()
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
    let op = FusedAttention {
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
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
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

fn tensor_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
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
            gemm::Parallelism::None,
        )
    }
}

/// Query rows per block: the scores of one block, `[QUERY_BLOCK, T_k]`, are the only
/// quadratic-in-T scratch, so memory stays linear in T.
const QUERY_BLOCK: usize = 64;

impl FusedAttention {
    /// Keys that queries `i0..i0+bq` can see at all (causality): `0..n`.
    fn keys_for(&self, i0: usize, bq: usize) -> usize {
        (self.mask.offset + i0 + bq).min(self.dims.tk)
    }

    /// Probabilities of queries `i0..i0+bq` (row `b`) over keys `0..nk` into `p` `[bq, nk]`:
    /// scores by gemm, then the mask (masked keys get exactly 0) and a row softmax.
    fn probs(&self, b: usize, i0: usize, q: Mat, keys: &[f32], nk: usize, p: &mut [f32]) {
        let (bq, d) = (p.len() / nk, self.dims.d);
        mm((bq, nk, d), p, nk, false, q, Mat::transposed(keys, d));
        for (r, row) in p.chunks_exact_mut(nk).enumerate() {
            let mut max = f32::NEG_INFINITY;
            for (j, s) in row.iter_mut().enumerate() {
                *s = if self.mask.visible(b, i0 + r, j) {
                    *s * self.scale
                } else {
                    f32::NEG_INFINITY
                };
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for s in row.iter_mut() {
                *s *= inv;
            }
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
        let mut out = vec![0f32; b * tq * hq * d];
        // One task per (row, query head); it writes that head's slots of the [B, T_q, H_q, D]
        // output, which no other task touches.
        let heads: Vec<(usize, Vec<f32>)> = (0..b * hq)
            .into_par_iter()
            .map(|bh| {
                let (bi, h) = (bh / hq, bh % hq);
                let kv = (bi * hkv + h / n_rep) * tk * d;
                let (keys, values) = (&k[kv..kv + tk * d], &v[kv..kv + tk * d]);
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
                        Mat::rows(values, d),
                    );
                }
                (bh, o)
            })
            .collect();
        for (bh, o) in heads {
            let (bi, h) = (bh / hq, bh % hq);
            for i in 0..tq {
                let dst = ((bi * tq + i) * hq + h) * d;
                out[dst..dst + d].copy_from_slice(&o[i * d..(i + 1) * d]);
            }
        }
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
        let (qv, kv, vv, g) = (
            tensor_vec(q)?,
            tensor_vec(k)?,
            tensor_vec(v)?,
            tensor_vec(grad)?,
        );
        // One task per (row, KV head): it owns dK and dV of that head and dQ of its query heads.
        // Scores and probabilities are recomputed block by block, as in the forward.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * hkv)
            .into_par_iter()
            .map(|bg| {
                let (bi, gi) = (bg / hkv, bg % hkv);
                let base = bg * tk * d;
                let (keys, values) = (&kv[base..base + tk * d], &vv[base..base + tk * d]);
                let mut dq = vec![0f32; n_rep * tq * d];
                let mut dk = vec![0f32; tk * d];
                let mut dv = vec![0f32; tk * d];
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
                        mm(
                            (bq, nk, d),
                            ds,
                            nk,
                            false,
                            g_blk,
                            Mat::transposed(values, d),
                        );
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
                        mm(
                            (nk, d, bq),
                            &mut dk,
                            d,
                            true,
                            Mat::transposed(ds, nk),
                            q_blk,
                        );
                        mm((nk, d, bq), &mut dv, d, true, Mat::transposed(p, nk), g_blk);
                    }
                }
                (dq, dk, dv)
            })
            .collect();
        let mut dq = vec![0f32; b * hq * tq * d];
        let mut dk = Vec::with_capacity(b * hkv * tk * d);
        let mut dv = Vec::with_capacity(b * hkv * tk * d);
        for (bg, (pq, pk, pv)) in parts.into_iter().enumerate() {
            // Query heads of group g are consecutive: bi·hq + g·n_rep + r.
            let start = bg * n_rep * tq * d;
            dq[start..start + pq.len()].copy_from_slice(&pq);
            dk.extend_from_slice(&pk);
            dv.extend_from_slice(&pv);
        }
        let dev = q.device();
        let gq = want_q
            .then(|| Tensor::from_vec(dq, (b, hq, tq, d), dev))
            .transpose()?;
        let gk = want_k
            .then(|| Tensor::from_vec(dk, (b, hkv, tk, d), dev))
            .transpose()?;
        let gv = want_v
            .then(|| Tensor::from_vec(dv, (b, hkv, tk, d), dev))
            .transpose()?;
        Ok((gq, gk, gv))
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
        let mut out = vec![0f32; x.len()];
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
        let (xv, wv, g) = (tensor_vec(x)?, tensor_vec(w)?, tensor_vec(grad)?);
        let n = wv.len();
        let mut dx = vec![0f32; xv.len()];
        // dx = r·(g⊙w) − x·r³·Σ(g⊙w⊙x)/n ;  dw = Σ_rows g⊙x·r (per chunk, summed after).
        let dws: Vec<Vec<f32>> = dx
            .par_chunks_mut(n * NORM_CHUNK_ROWS)
            .zip(xv.par_chunks(n * NORM_CHUNK_ROWS))
            .zip(g.par_chunks(n * NORM_CHUNK_ROWS))
            .map(|((dxs, xs), gs)| {
                let mut dw = vec![0f32; if want_w { n } else { 0 }];
                for ((dxrow, row), grow) in dxs
                    .chunks_exact_mut(n)
                    .zip(xs.chunks_exact(n))
                    .zip(gs.chunks_exact(n))
                {
                    let r = self.inv_rms(row);
                    if want_x {
                        let mut c = 0f32;
                        for ((&gi, &wi), &xi) in grow.iter().zip(&wv).zip(row) {
                            c += gi * wi * xi;
                        }
                        let k = r * r * r * c / n as f32;
                        for (((d, &gi), &wi), &xi) in dxrow.iter_mut().zip(grow).zip(&wv).zip(row) {
                            *d = r * gi * wi - xi * k;
                        }
                    }
                    if want_w {
                        for ((d, &gi), &xi) in dw.iter_mut().zip(grow).zip(row) {
                            *d += gi * xi * r;
                        }
                    }
                }
                dw
            })
            .collect();
        let dev = x.device();
        let gx = want_x
            .then(|| Tensor::from_vec(dx, x.shape(), dev))
            .transpose()?;
        let gw = if want_w {
            let mut dw = vec![0f32; n];
            for part in dws {
                axpy(&mut dw, 1.0, &part);
            }
            Some(Tensor::from_vec(dw, n, dev)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}
