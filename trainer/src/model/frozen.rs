//! Differentiable ops that compute gradients only for operands that need one.
//!
//! candle's own `matmul`, `add`, `mul`, ... backward passes compute a gradient for *both* operands,
//! even when one of them is a frozen weight or a constant (a RoPE table, a mask): that is a full-size
//! weight gradient per frozen linear layer (gigabytes at 4B, about a third of the backward work), and
//! the gradient store fills with entries nobody reads. The ops here run the same forward kernels, but
//! their backward returns a gradient only for an operand that is a variable or depends on one
//! (`Tensor::track_op`), like PyTorch's `requires_grad`.
//!
//! The model code uses them wherever one operand may be frozen, so after `backward()` the gradient
//! store holds entries for trainable variables (and the tensors between them and the loss) only.
//! [`linear`] with a frozen bf16 weight and f32 activations on the CPU runs the kernel of
//! [`crate::model::bf16_linear`] (no f32 copy of the weight per call).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Layout, MetalStorage, Shape, Tensor, D,
};

use crate::model::bf16_linear;

/// Which forward kernel a [`Sparing`] op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Batched matmul with (batch, m, n, k), exactly as `Tensor::matmul`.
    Matmul { bmnk: (usize, usize, usize, usize) },
    /// Element-wise product of two tensors of one shape (broadcast beforehand).
    Mul,
    /// Element-wise sum of two tensors of one shape (broadcast beforehand).
    Add,
}

/// A binary op whose backward skips operands that do not track gradients.
struct Sparing {
    kind: Kind,
}

impl Sparing {
    fn run<S: BackendStorage>(
        &self,
        s1: &S,
        l1: &Layout,
        s2: &S,
        l2: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        match self.kind {
            Kind::Matmul { bmnk } => {
                let (_, m, n, _) = bmnk;
                let dims = l1.dims();
                let shape = Shape::from(&dims[..dims.len() - 2]).extend(&[m, n]);
                Ok((s1.matmul(s2, bmnk, l1, l2)?, shape))
            }
            Kind::Mul => Ok((
                s1.binary_impl::<candle_core::op::Mul>(s2, l1, l2)?,
                l1.shape().clone(),
            )),
            Kind::Add => Ok((
                s1.binary_impl::<candle_core::op::Add>(s2, l1, l2)?,
                l1.shape().clone(),
            )),
        }
    }
}

impl CustomOp2 for Sparing {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Matmul { .. } => "sparing-matmul",
            Kind::Mul => "sparing-mul",
            Kind::Add => "sparing-add",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.run(s1, l1, s2, l2)
    }

    fn metal_fwd(
        &self,
        s1: &MetalStorage,
        l1: &Layout,
        s2: &MetalStorage,
        l2: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        self.run(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want = |t: &Tensor| t.track_op();
        let (ga, gb) = match self.kind {
            Kind::Matmul { .. } => (
                want(a).then(|| grad.matmul(&b.detach().t()?)).transpose()?,
                want(b).then(|| a.detach().t()?.matmul(grad)).transpose()?,
            ),
            Kind::Mul => (
                want(a).then(|| grad.mul(&b.detach())).transpose()?,
                want(b).then(|| grad.mul(&a.detach())).transpose()?,
            ),
            Kind::Add => (want(a).then(|| grad.clone()), want(b).then(|| grad.clone())),
        };
        Ok((ga, gb))
    }
}

fn check_same(a: &Tensor, b: &Tensor, op: &'static str) -> candle_core::Result<()> {
    if a.dtype() != b.dtype() {
        candle_core::bail!(
            "{op}: operand dtypes differ ({:?} vs {:?})",
            a.dtype(),
            b.dtype()
        );
    }
    if !a.device().same_device(b.device()) {
        candle_core::bail!("{op}: operands are on different devices");
    }
    Ok(())
}

/// `a.matmul(b)` (same ranks, same batch dims), with gradients only for operands that track them.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    check_same(a, b, "matmul")?;
    let (ad, bd) = (a.dims(), b.dims());
    let rank = ad.len();
    if rank < 2
        || bd.len() != rank
        || ad[..rank - 2] != bd[..rank - 2]
        || ad[rank - 1] != bd[rank - 2]
    {
        candle_core::bail!(
            "matmul: incompatible shapes {:?} and {:?}",
            a.shape(),
            b.shape()
        );
    }
    let bmnk = (
        ad[..rank - 2].iter().product(),
        ad[rank - 2],
        bd[rank - 1],
        ad[rank - 1],
    );
    a.apply_op2(
        b,
        Sparing {
            kind: Kind::Matmul { bmnk },
        },
    )
}

/// Like `matmul`, but broadcasting the batch dimensions of `a` and `b` against each other.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() < 2 || bd.len() < 2 {
        candle_core::bail!(
            "broadcast_matmul: need rank >= 2, got {:?} and {:?}",
            a.shape(),
            b.shape()
        );
    }
    let batch = Shape::from(&ad[..ad.len() - 2])
        .broadcast_shape_binary_op(&Shape::from(&bd[..bd.len() - 2]), "broadcast_matmul")?;
    let a = a.broadcast_as(batch.clone().extend(&ad[ad.len() - 2..]))?;
    let b = b.broadcast_as(batch.extend(&bd[bd.len() - 2..]))?;
    // candle's matmul kernels need each matrix laid out densely; broadcast batch strides are 0.
    let dense = |t: Tensor| {
        if t.stride().contains(&0) {
            t.contiguous()
        } else {
            Ok(t)
        }
    };
    matmul(&dense(a)?, &dense(b)?)
}

fn broadcast_pair(
    a: &Tensor,
    b: &Tensor,
    op: &'static str,
) -> candle_core::Result<(Tensor, Tensor)> {
    check_same(a, b, op)?;
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), op)?;
    let expand = |t: &Tensor| {
        if *t.shape() == shape {
            Ok(t.clone())
        } else {
            t.broadcast_as(&shape)
        }
    };
    Ok((expand(a)?, expand(b)?))
}

/// `a.broadcast_mul(b)`, with gradients only for operands that track them.
pub fn broadcast_mul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = broadcast_pair(a, b, "broadcast_mul")?;
    a.apply_op2(&b, Sparing { kind: Kind::Mul })
}

/// `a.broadcast_add(b)`, with gradients only for operands that track them.
pub fn broadcast_add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = broadcast_pair(a, b, "broadcast_add")?;
    a.apply_op2(&b, Sparing { kind: Kind::Add })
}

/// `x @ weightᵀ` over the last axis of `x` (any leading dims), weight `[out, in]` as stored in
/// Hugging Face checkpoints, with a gradient for the weight only if it tracks one.
///
/// f32 activations with a frozen bf16 weight on the CPU go through
/// [`crate::model::bf16_linear::linear`] (f32 products, the weight widened tile by tile: no f32
/// copy of the weight per call). Otherwise — same dtypes, another device (CUDA's bf16 matmul), a
/// bf16 weight that is trained — [`linear_cast`].
pub fn linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let frozen_bf16_on_cpu = x.dtype() == DType::F32
        && weight.dtype() == DType::BF16
        && weight.rank() == 2
        && x.device().is_cpu()
        && weight.device().is_cpu()
        && !weight.track_op();
    if frozen_bf16_on_cpu {
        check_features(x, weight)?;
        return bf16_linear::linear(x, weight);
    }
    linear_cast(x, weight)
}

fn check_features(x: &Tensor, weight: &Tensor) -> candle_core::Result<usize> {
    let (_, in_features) = weight.dims2()?;
    if x.dim(D::Minus1)? != in_features {
        candle_core::bail!(
            "linear: input has {} features, weight {:?} expects {in_features}",
            x.dim(D::Minus1)?,
            weight.shape()
        );
    }
    Ok(in_features)
}

/// [`linear`] through candle's matmul in the weight's dtype: when the weight is held in another
/// dtype (bf16 frozen weights with f32 activations), `x` is cast to it and the result cast back,
/// both casts in the graph. On the CPU, candle 0.11.1 runs a bf16 matmul by widening both whole
/// operands to f32 (a full f32 copy of the weight per call); kept to compare with the kernel.
pub fn linear_cast(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let in_features = check_features(x, weight)?;
    let out_features = weight.dim(0)?;
    let in_dtype = x.dtype();
    let lead: Vec<usize> = x.dims()[..x.rank() - 1].to_vec();
    let rows: usize = lead.iter().product();
    let x2 = x
        .to_dtype(weight.dtype())?
        .contiguous()?
        .reshape((rows, in_features))?;
    let y = matmul(&x2, &weight.t()?)?;
    let mut out_shape = lead;
    out_shape.push(out_features);
    y.reshape(out_shape)?.to_dtype(in_dtype)
}

/// The plain candle version of [`linear`] (its backward also computes the weight's gradient), kept
/// to measure what the sparing op saves.
pub fn linear_plain(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let in_dtype = x.dtype();
    let w = weight.t()?;
    let y = x.to_dtype(weight.dtype())?.broadcast_matmul(&w)?;
    y.to_dtype(in_dtype)
}
