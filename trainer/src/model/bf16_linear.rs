//! `x · Wᵀ` for f32 activations and a frozen bf16 weight `[out, in]` on the CPU, without an f32
//! copy of the weight.
//!
//! candle 0.11.1 has no bf16 matmul kernel on the CPU: its matmul widens *both* whole operands to
//! f32, multiplies, and narrows the result back to bf16, so every call through a frozen bf16
//! projection allocated a full f32 copy of the weight (1.5 GB for Qwen3-4B's tied LM head) and
//! rounded the activations to bf16 on the way in. Decoding at 4B spent most of its time there.
//!
//! The op here keeps the activations in f32 and widens the weight tile by tile as it goes:
//! - several rows (a training or prompt pass): per block of output features, bf16 → f32 tiles of
//!   at most [`TILE_OUT`] × [`TILE_IN`] into a per-thread buffer, each multiplied by the gemm
//!   kernel candle itself runs (the `gemm` crate), accumulating over the input dimension;
//! - a few rows (decoding: one token per sequence): a dot product per output feature that widens
//!   the bf16 values in registers (AVX2/FMA where the CPU has them), reading each weight once.
//!
//! Blocks of output features run in parallel on rayon's pool. Memory is flat over calls: nothing
//! weight-sized is allocated, only the output and one tile per thread.
//!
//! The backward returns the gradient of `x` only (`dy · W`, the same op the other way round, so
//! it is differentiable again); the weight is frozen and never gets one — the "sparing" semantics
//! of [`crate::model::frozen`]. Products are computed in f32, so the result is closer to the f32
//! reference than the previous bf16 × bf16 path (which rounded `x` to bf16 first).
//!
//! CPU only: on CUDA, bf16 × bf16 matmuls are the right thing and [`crate::model::frozen::linear`]
//! keeps that path (and the one for f32 weights).

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};
use half::{bf16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

/// Output features per block of the tiled path (a parallel task) and per tile.
pub const TILE_OUT: usize = 128;
/// Input features per tile: a tile is at most `TILE_OUT × TILE_IN` f32 values (256 KiB).
pub const TILE_IN: usize = 512;
/// Rows (tokens) up to which the dot-product path runs instead of the tiled gemm path: there each
/// weight row is read once and used for every row of `x` while it is in L1.
pub const FEW_ROWS: usize = 4;
/// Output features per parallel task in the dot-product path.
const DOT_BLOCK: usize = 64;

/// Which product the op computes, with `w` the bf16 weight `[out, in]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `y[rows, out] = x[rows, in] · wᵀ` (the linear layer).
    TimesTransposed,
    /// `y[rows, in] = x[rows, out] · w` (the linear layer's input gradient).
    Times,
}

struct Bf16Product(Direction);

/// `x · weightᵀ` over the last axis of `x` (any leading dims): `x` f32, `weight` bf16 `[out, in]`,
/// both on the CPU. Differentiable in `x` only; `weight` never receives a gradient (use
/// [`crate::model::frozen::linear`] for a weight that is trained).
pub fn linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("bf16_linear: the input must be f32, got {:?}", x.dtype());
    }
    if weight.dtype() != DType::BF16 {
        candle_core::bail!(
            "bf16_linear: the weight must be bf16, got {:?}",
            weight.dtype()
        );
    }
    if !x.device().is_cpu() || !weight.device().is_cpu() {
        candle_core::bail!(
            "bf16_linear: CPU only (x on {:?}, weight on {:?}); frozen::linear runs candle's matmul elsewhere",
            x.device().location(),
            weight.device().location()
        );
    }
    let Ok((out_features, in_features)) = weight.dims2() else {
        candle_core::bail!(
            "bf16_linear: the weight must be [out, in], got {:?}",
            weight.shape()
        );
    };
    if x.rank() == 0 || x.dim(D::Minus1)? != in_features {
        candle_core::bail!(
            "bf16_linear: input {:?} does not end in the weight's {in_features} input features (weight {:?})",
            x.shape(),
            weight.shape()
        );
    }
    let lead = x.dims()[..x.rank() - 1].to_vec();
    let rows: usize = lead.iter().product();
    let x2 = x.contiguous()?.reshape((rows, in_features))?;
    let y = x2.apply_op2(
        &weight.contiguous()?,
        Bf16Product(Direction::TimesTransposed),
    )?;
    let mut out_shape = lead;
    out_shape.push(out_features);
    y.reshape(out_shape)
}

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        match self.0 {
            Direction::TimesTransposed => "bf16-weight-linear",
            Direction::Times => "bf16-weight-linear-input-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (CpuStorage::F32(x), CpuStorage::BF16(w)) = (s1, s2) else {
            candle_core::bail!(
                "{name}: expects f32 activations and a bf16 weight, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            );
        };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{name}: operands must be contiguous");
        };
        let (rows, k) = l1.shape().dims2()?;
        let (out, inp) = l2.shape().dims2()?;
        let (x, w) = (&x[x0..x1], &w[w0..w1]);
        let y = match self.0 {
            Direction::TimesTransposed => {
                if k != inp {
                    candle_core::bail!("{name}: input has {k} features, weight [{out}, {inp}]");
                }
                times_transposed(x, rows, w, out, inp)
            }
            Direction::Times => {
                if k != out {
                    candle_core::bail!(
                        "{name}: gradient has {k} features, weight [{out}, {inp}] has {out} outputs"
                    );
                }
                times(x, rows, w, out, inp)
            }
        };
        let n = if self.0 == Direction::Times { inp } else { out };
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None));
        }
        let other = match self.0 {
            Direction::TimesTransposed => Direction::Times,
            Direction::Times => Direction::TimesTransposed,
        };
        let gx = grad.contiguous()?.apply_op2(w, Bf16Product(other))?;
        Ok((Some(gx), None))
    }
}

/// A pointer to the output that tasks writing disjoint parts of it may share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes only its own block of columns (checked by construction below) and
// the buffer outlives the parallel loop, which joins before it is read.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer, through a method so that closures capture the whole (`Sync`) wrapper rather
    /// than its raw-pointer field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// One f32 tile per thread (at most TILE_OUT × TILE_IN values), reused across calls.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[rows, out] = x[rows, inp] · wᵀ`, `w` `[out, inp]` bf16.
fn times_transposed(x: &[f32], rows: usize, w: &[bf16], out: usize, inp: usize) -> Vec<f32> {
    if rows <= FEW_ROWS && rows > 0 && out > 0 && inp > 0 {
        let mut y = vec![0f32; rows * out];
        let dst = SharedOut(y.as_mut_ptr());
        let dot = dot_kernel();
        (0..out.div_ceil(DOT_BLOCK)).into_par_iter().for_each(|b| {
            for o in b * DOT_BLOCK..((b + 1) * DOT_BLOCK).min(out) {
                let w_row = &w[o * inp..(o + 1) * inp];
                for r in 0..rows {
                    let v = dot(&x[r * inp..(r + 1) * inp], w_row);
                    // SAFETY: y[r, o] is inside y (r < rows, o < out) and output feature o
                    // belongs to this task only.
                    unsafe { *dst.ptr().add(r * out + o) = v };
                }
            }
        });
        return y;
    }
    // Tile `[n, kb]` of output features o0.. and input features k0..: B = wᵀ is read as a
    // `[kb, n]` matrix with row stride 1 and column stride kb.
    tiled_product(x, rows, inp, out, |tile, o0, n, k0, kb| {
        tile.resize(n * kb, 0.0);
        for j in 0..n {
            let src = &w[(o0 + j) * inp + k0..][..kb];
            src.convert_to_f32_slice(&mut tile[j * kb..(j + 1) * kb]);
        }
        (kb as isize, 1)
    })
}

/// `y[rows, inp] = g[rows, out] · w`, `w` `[out, inp]` bf16: the input gradient of the linear layer.
fn times(g: &[f32], rows: usize, w: &[bf16], out: usize, inp: usize) -> Vec<f32> {
    // Tile `[ob, n]` of output features o0.. (the sum) and input features i0.. (y's columns):
    // B = w read row-major.
    tiled_product(g, rows, out, inp, |tile, i0, n, o0, ob| {
        tile.resize(ob * n, 0.0);
        for j in 0..ob {
            let src = &w[(o0 + j) * inp + i0..][..n];
            src.convert_to_f32_slice(&mut tile[j * n..(j + 1) * n]);
        }
        (1, n as isize)
    })
}

/// `y[rows, cols] = a[rows, depth] · B` with `B` `[depth, cols]` handed out widened to f32 tile by
/// tile: `fill(tile, c0, n, k0, kb)` writes into the thread's tile the values of `B` for rows
/// `k0..k0 + kb` and columns `c0..c0 + n` and returns where they are (column stride, row stride).
/// Blocks of [`TILE_OUT`] columns run in parallel; each sums its [`TILE_IN`]-deep tiles in order,
/// so the result does not depend on the thread count.
fn tiled_product(
    a: &[f32],
    rows: usize,
    depth: usize,
    cols: usize,
    fill: impl Fn(&mut Vec<f32>, usize, usize, usize, usize) -> (isize, isize) + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 || depth == 0 {
        return y; // an empty product or an empty sum
    }
    let dst = SharedOut(y.as_mut_ptr());
    (0..cols.div_ceil(TILE_OUT)).into_par_iter().for_each(|b| {
        let c0 = b * TILE_OUT;
        let n = TILE_OUT.min(cols - c0);
        TILE.with_borrow_mut(|tile| {
            for k0 in (0..depth).step_by(TILE_IN) {
                let kb = TILE_IN.min(depth - k0);
                let (tile_cs, tile_rs) = fill(tile, c0, n, k0, kb);
                // y[:, c0..c0+n] (+)= a[:, k0..k0+kb] · tile.
                // SAFETY: the gemm reads rows × kb of a (row stride depth, from k0 < depth), the
                // kb × n values `fill` wrote into the tile at the strides it gave, and writes
                // rows × n of y from column c0 with row stride cols: inside every buffer; the
                // columns c0..c0+n belong to this task only.
                unsafe {
                    gemm::gemm(
                        rows,
                        n,
                        kb,
                        dst.ptr().add(c0),
                        1,
                        cols as isize,
                        k0 > 0,
                        a.as_ptr().add(k0),
                        1,
                        depth as isize,
                        tile.as_ptr(),
                        tile_cs,
                        tile_rs,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
        });
    });
    y
}

/// The dot product of f32 values with bf16 values, in f32: the fastest version this CPU runs.
fn dot_kernel() -> fn(&[f32], &[bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return |x, w| {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { dot_avx2_fma(x, w) }
        };
    }
    |x, w| dot_lanes(x, w, false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(x: &[f32], w: &[bf16]) -> f32 {
    dot_lanes(x, w, true)
}

/// Independent partial sums: enough vector registers' worth to hide the add latency.
const LANES: usize = 32;

/// `Σ x[i]·w[i]` with bf16 widened by a shift (bf16 is the top half of an f32), in `LANES`
/// independent partial sums that the compiler turns into vector registers.
#[inline(always)]
fn dot_lanes(x: &[f32], w: &[bf16], fused: bool) -> f32 {
    debug_assert_eq!(x.len(), w.len());
    let w: &[u16] = w.reinterpret_cast();
    let widen = |bits: u16| f32::from_bits((bits as u32) << 16);
    let mut acc = [0f32; LANES];
    let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (x_tail, w_tail) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for j in 0..LANES {
            acc[j] = if fused {
                xs[j].mul_add(widen(ws[j]), acc[j])
            } else {
                acc[j] + xs[j] * widen(ws[j])
            };
        }
    }
    let mut tail = 0f32;
    for (a, &b) in x_tail.iter().zip(w_tail) {
        tail += a * widen(b);
    }
    // Pairwise reduction of the partial sums.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            acc[j] += acc[j + width];
        }
    }
    acc[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_versions_agree_with_a_plain_sum() {
        for n in [0, 1, 31, 32, 33, 100, 2560] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<bf16> = (0..n)
                .map(|i| bf16::from_f32(((i * 53 % 89) as f32 - 44.0) / 30.0))
                .collect();
            let plain: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * b.to_f64()).sum();
            for v in [dot_kernel()(&x, &w), dot_lanes(&x, &w, false)] {
                assert!(
                    (v as f64 - plain).abs() <= 1e-5 * (1.0 + plain.abs()),
                    "n {n}: {v} vs {plain}"
                );
            }
        }
    }
}
