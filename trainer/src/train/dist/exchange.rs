//! What the CPU backends ([`super::threads`], [`super::tcp`]) share: host copies of tensors
//! ([`Payload`]), the rank-order sum, and [`Collective`] built once on top of a backend's single
//! primitive, [`Exchange::exchange`] (every rank contributes a payload, one rank combines them,
//! every rank gets the result).

use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Tensor};

use super::{Collective, ReduceOp};

/// A tensor's or a byte string's host copy, as the CPU backends exchange it.
#[derive(Debug, Clone)]
pub(super) enum Payload {
    None,
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
}

/// A backend that moves [`Payload`]s between ranks.
pub(super) trait Exchange: Send + Sync {
    fn own_rank(&self) -> usize;
    fn group_size(&self) -> usize;
    /// Contributes `input` to this rank's next operation (`op`; `what` describes it, so ranks that
    /// call different operations are caught) and returns the result of `combine` over every rank's
    /// input, in rank order.
    fn exchange(
        &self,
        op: &'static str,
        what: String,
        input: Payload,
        combine: impl FnOnce(&mut [Payload]) -> Payload,
    ) -> Result<Arc<Payload>>;

    /// Rank `root`'s `input` on every rank.
    fn broadcast_payload(&self, what: &str, input: Payload, root: usize) -> Result<Arc<Payload>> {
        ensure!(
            root < self.group_size(),
            "broadcast from rank {root} of {}",
            self.group_size()
        );
        let what = format!("broadcast(root {root}, {what})");
        self.exchange("broadcast", what, input, |inputs| {
            std::mem::replace(&mut inputs[root], Payload::None)
        })
    }
}

impl<E: Exchange> Collective for E {
    fn rank(&self) -> usize {
        self.own_rank()
    }

    fn world_size(&self) -> usize {
        self.group_size()
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let what = format!("all_reduce({op:?}, {})", describe(t));
        let mean = op == ReduceOp::Mean;
        let result = self.exchange("all_reduce", what, to_payload(t)?, |inputs| {
            sum(inputs, mean)
        })?;
        from_payload(&result, t)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let input = if self.own_rank() == root {
            to_payload(t)?
        } else {
            Payload::None
        };
        let result = self.broadcast_payload(&describe(t), input, root)?;
        from_payload(&result, t)
    }

    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>> {
        let input = if self.own_rank() == root {
            Payload::Bytes(bytes)
        } else {
            Payload::None
        };
        let result = self.broadcast_payload("bytes", input, root)?;
        match Arc::try_unwrap(result).unwrap_or_else(|shared| (*shared).clone()) {
            Payload::Bytes(b) => Ok(b),
            other => bail!("internal: broadcast_bytes produced {other:?}"),
        }
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", "barrier".into(), Payload::None, |_| {
            Payload::None
        })?;
        Ok(())
    }
}

/// Element-wise sum in rank order (divided by the world size for a mean).
pub(super) fn sum(inputs: &mut [Payload], mean: bool) -> Payload {
    fn add<T: Copy + std::ops::AddAssign + std::ops::DivAssign + From<u16>>(
        mut acc: Vec<T>,
        rest: impl Iterator<Item = Vec<T>>,
        divide_by: Option<u16>,
    ) -> Vec<T> {
        for v in rest {
            acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
        if let Some(n) = divide_by {
            acc.iter_mut().for_each(|a| *a /= T::from(n));
        }
        acc
    }
    let divide_by = mean.then_some(inputs.len() as u16);
    let mut it = inputs
        .iter_mut()
        .map(|p| std::mem::replace(p, Payload::None));
    match it.next() {
        Some(Payload::F32(first)) => {
            let rest = it.filter_map(|p| match p {
                Payload::F32(v) => Some(v),
                _ => None,
            });
            Payload::F32(add(first, rest, divide_by))
        }
        Some(Payload::F64(first)) => {
            let rest = it.filter_map(|p| match p {
                Payload::F64(v) => Some(v),
                _ => None,
            });
            Payload::F64(add(first, rest, divide_by))
        }
        _ => Payload::None,
    }
}

/// A tensor's host values: f64 tensors as f64, everything else as f32.
pub(super) fn to_payload(t: &Tensor) -> Result<Payload> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => Payload::F64(flat.to_vec1()?),
        _ => Payload::F32(flat.to_dtype(DType::F32)?.to_vec1()?),
    })
}

pub(super) fn from_payload(p: &Payload, like: &Tensor) -> Result<Tensor> {
    let t = match p {
        Payload::F32(v) => Tensor::from_slice(v, like.shape(), like.device())?,
        Payload::F64(v) => Tensor::from_slice(v, like.shape(), like.device())?,
        other => bail!("internal: a tensor operation produced {other:?}"),
    };
    Ok(t.to_dtype(like.dtype())?)
}

pub(super) fn describe(t: &Tensor) -> String {
    format!("{:?}{:?}", t.dtype(), t.dims())
}
