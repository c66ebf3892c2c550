//! Data-parallel training: the collective operations the loop needs ([`Collective`]), their
//! backends, and how a process learns its rank ([`launch`]).
//!
//! Backends:
//! - [`Single`]: world size 1, every operation is the identity (the default run);
//! - [`threads::ThreadGroup`]: ranks as threads of one process, exchanging host copies of the
//!   tensors (tests, `train --nproc N` on CPU machines);
//! - [`tcp::TcpGroup`]: one process per rank (any node), host copies exchanged over TCP through
//!   rank 0, bit-identical to the thread backend (CPU machines without NCCL, and the test of
//!   the multi-process path);
//! - `nccl::NcclGroup`: NCCL through cudarc, one process per GPU (feature `cuda`; compiled,
//!   never run yet), with [`launch`] (rank, world, rendezvous host from torchrun or Slurm
//!   variables) and [`rendezvous`] (rank 0's NCCL unique id to every rank over TCP).
//!
//! [`spawn`] starts one process per rank on this node (`train --nproc N --launcher processes`),
//! as torchrun does, and turns the first failing child's exit into the parent's.
//!
//! Every operation is collective: all ranks call the same operations in the same order. A rank
//! that does not arrive within the group's timeout makes the others fail with a
//! [`CollectiveError`] naming it, never wait forever.

mod exchange;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
pub mod spawn;
pub mod tcp;
pub mod threads;

use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};

/// How [`Collective::all_reduce`] combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum, in rank order (so every rank gets bit-identical results).
    Sum,
    /// The sum divided by the world size.
    Mean,
}

/// Collective operations over the ranks of a data-parallel group.
pub trait Collective: Send + Sync {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Combines `t` (same shape and dtype on every rank) over all ranks; every rank gets the result.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor>;
    /// Rank `root`'s `t` on every rank (`t` of the other ranks gives only shape and dtype).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Rank `root`'s bytes on every rank (the other ranks' `bytes` are ignored).
    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// The failure of a collective operation, naming the ranks at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectiveError {
    #[error(
        "rank {rank}: {op} #{seq} timed out after {timeout:?}: rank(s) {missing:?} of {world} did \
         not arrive (dead, hung, or slower than the timeout; raise it with --dist-timeout)"
    )]
    Timeout {
        rank: usize,
        op: &'static str,
        seq: u64,
        missing: Vec<usize>,
        world: usize,
        timeout: Duration,
    },
    #[error(
        "rank {rank}: {op} #{seq} cannot complete: rank {gone} left the group (it failed or ended)"
    )]
    RankLeft {
        rank: usize,
        op: &'static str,
        seq: u64,
        gone: usize,
    },
    #[error(
        "rank {rank}: collective #{seq} does not match: rank {rank} called {ours}, rank {other} \
         called {theirs}"
    )]
    Mismatch {
        rank: usize,
        seq: u64,
        ours: String,
        other: usize,
        theirs: String,
    },
}

/// World size 1: nothing to exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce(&self, t: &Tensor, _op: ReduceOp) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>, _root: usize) -> Result<Vec<u8>> {
        Ok(bytes)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Sets every variable to rank 0's value (the initial weights, or a resumed checkpoint's), in
/// one broadcast of the flattened variables.
pub fn broadcast_vars(comm: &dyn Collective, vars: &[(String, Var)]) -> Result<()> {
    if comm.world_size() == 1 || vars.is_empty() {
        return Ok(());
    }
    let flat: Vec<Tensor> = vars
        .iter()
        .map(|(_, v)| v.as_tensor().detach().to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let all = comm
        .broadcast(&Tensor::cat(&flat, 0)?, 0)
        .context("broadcasting the trainable weights from rank 0")?;
    let mut offset = 0;
    for (_, var) in vars {
        let n = var.elem_count();
        let value = all
            .narrow(0, offset, n)?
            .reshape(var.shape())?
            .to_dtype(var.dtype())?;
        var.set(&value)?;
        offset += n;
    }
    Ok(())
}

/// Element-wise sums over ranks of several tensors at once (one collective call): the tensors
/// are flattened to f32 and concatenated, reduced, and split back into their shapes and dtypes.
pub fn all_reduce_sum_many(comm: &dyn Collective, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    if comm.world_size() == 1 || tensors.is_empty() {
        return Ok(tensors.to_vec());
    }
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let all = comm.all_reduce(&Tensor::cat(&flat, 0)?, ReduceOp::Sum)?;
    let mut offset = 0;
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.elem_count();
        out.push(
            all.narrow(0, offset, n)?
                .reshape(t.shape())?
                .to_dtype(t.dtype())?,
        );
        offset += n;
    }
    Ok(out)
}
