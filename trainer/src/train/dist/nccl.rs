//! The NCCL backend (feature `cuda`): one process per GPU, collectives on the tensors' own CUDA
//! buffers and on candle's stream (so they are ordered with candle's kernels).
//!
//! UNVERIFIED: compiled against candle-core 0.11.1 / cudarc 0.19.10 (`cargo check --features
//! cuda` with nvcc from PyPI), never run: no GPU was available when it was written. The first GPU
//! run must check it (two ranks on two GPUs, `tests/train_parallel.rs`'s equivalences).
//!
//! Timeouts: NCCL cannot say which rank is missing and a hung collective cannot be cancelled
//! through cudarc's safe API, so a watchdog thread ends this process (exit code
//! [`EXIT_DIST_TIMEOUT`]) naming this rank and the operation once one has waited longer than
//! the timeout; `srun --kill-on-bad-exit` (or the launcher) then stops the others. The rank that
//! never reports such a timeout is the one that hung or died.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::nccl::{Comm, Id, ReduceOp as NcclOp};

use super::launch::LaunchEnv;
use super::{rendezvous, Collective, ReduceOp};

/// Exit code of a rank whose collective waited longer than the timeout.
pub const EXIT_DIST_TIMEOUT: i32 = 5;

/// `Comm` holds a raw NCCL handle; every use goes through the mutex.
struct SharedComm(Comm);
unsafe impl Send for SharedComm {}

pub struct NcclGroup {
    comm: Mutex<SharedComm>,
    rank: usize,
    world: usize,
    /// (operation, sequence number, start) of the collective in flight, watched by a thread.
    in_flight: Arc<Mutex<Option<(&'static str, u64, Instant)>>>,
    seq: Mutex<u64>,
    /// This rank's GPU, as the model's tensors know it.
    device: Device,
}

impl NcclGroup {
    /// Joins the job `env` describes on `device` (this rank's GPU): rank 0 makes the NCCL unique
    /// id and serves it on `MASTER_ADDR:MASTER_PORT`, the others fetch it; then every rank
    /// initialises its communicator. Collectives that wait longer than `timeout` end the process.
    pub fn join(env: &LaunchEnv, device: &Device, timeout: Duration) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            bail!(
                "rank {}: the NCCL backend needs a CUDA device, got {device:?}",
                env.rank
            )
        };
        let id = if env.rank == 0 {
            let id = Id::new().map_err(|e| anyhow::anyhow!("rank 0: ncclGetUniqueId: {e:?}"))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            let (port, world) = (env.master_port, env.world_size);
            // Served in the background: rank 0 goes on to initialise its own communicator.
            std::thread::spawn(move || {
                if let Err(e) = rendezvous::serve(port, world, &bytes, timeout) {
                    eprintln!("{e:#}");
                }
            });
            id
        } else {
            let bytes = rendezvous::join(&env.master_addr, env.master_port, env.rank, timeout)?;
            let internal: [std::ffi::c_char; 128] = bytes
                .iter()
                .map(|&b| b as std::ffi::c_char)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "rank {}: the NCCL id is {} bytes, not 128",
                        env.rank,
                        bytes.len()
                    )
                })?;
            Id::uninit(internal)
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), env.rank, env.world_size, id)
            .map_err(|e| anyhow::anyhow!("rank {}: ncclCommInitRank: {e:?}", env.rank))?;
        let in_flight: Arc<Mutex<Option<(&'static str, u64, Instant)>>> = Arc::default();
        let watched = in_flight.clone();
        let rank = env.rank;
        std::thread::Builder::new()
            .name("nccl-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let late = watched
                    .lock()
                    .map(|g| g.filter(|(_, _, started)| started.elapsed() > timeout))
                    .unwrap_or(None);
                if let Some((op, seq, _)) = late {
                    eprintln!(
                        "error: rank {rank}: {op} #{seq} waited more than {timeout:?} for the other \
                         ranks (a rank died or hangs: the one that does not report this); exiting"
                    );
                    std::process::exit(EXIT_DIST_TIMEOUT);
                }
            })?;
        Ok(Self {
            comm: Mutex::new(SharedComm(comm)),
            rank: env.rank,
            world: env.world_size,
            in_flight,
            seq: Mutex::new(0),
            device: device.clone(),
        })
    }

    /// Runs `f` on the communicator as collective `op`, waiting for it to complete under the
    /// watchdog.
    fn collective<T>(&self, op: &'static str, f: impl FnOnce(&Comm) -> Result<T>) -> Result<T> {
        let comm = self
            .comm
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned NCCL communicator"))?;
        let seq = {
            let mut s = self.seq.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            *s += 1;
            *s
        };
        *self
            .in_flight
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = Some((op, seq, Instant::now()));
        let out = f(&comm.0)?;
        comm.0
            .stream()
            .synchronize()
            .map_err(|e| anyhow::anyhow!("rank {}: {op} #{seq}: {e:?}", self.rank))?;
        *self
            .in_flight
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = None;
        Ok(out)
    }
}

/// All-reduce or broadcast of a contiguous f32/f64 CUDA tensor into a new buffer.
struct NcclOp1<'a> {
    comm: &'a Comm,
    /// `None`: broadcast from `root`.
    reduce: Option<ReduceOp>,
    root: usize,
}

impl NcclOp1<'_> {
    fn run<T>(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: candle_core::cuda::CudaDType
            + cudarc::nccl::NcclType
            + cudarc::driver::DeviceRepr
            + cudarc::driver::ValidAsZeroBits,
    {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::msg("NCCL: the tensor must be contiguous"))?;
        let dev = s.device.clone();
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let mut dst = dev.alloc_zeros::<T>(end - start)?;
        let status = match self.reduce {
            Some(op) => {
                let op = match op {
                    ReduceOp::Sum => NcclOp::Sum,
                    ReduceOp::Mean => NcclOp::Avg,
                };
                self.comm.all_reduce(&src, &mut dst, &op)
            }
            None => self.comm.broadcast(Some(&src), &mut dst, self.root as i32),
        };
        status.map_err(|e| candle_core::Error::msg(format!("NCCL: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl CustomOp1 for NcclOp1<'_> {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(candle_core::Error::msg(
            "the NCCL backend needs CUDA tensors",
        ))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.run::<f32>(s, l),
            DType::F64 => self.run::<f64>(s, l),
            other => Err(candle_core::Error::msg(format!(
                "NCCL backend: {other:?} tensors"
            ))),
        }
    }
}

/// f32 or f64, contiguous, on this rank's GPU.
fn prepare(t: &Tensor) -> Result<Tensor> {
    let t = match t.dtype() {
        DType::F32 | DType::F64 => t.clone(),
        _ => t.to_dtype(DType::F32)?,
    };
    Ok(t.contiguous()?)
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let input = prepare(t)?;
        let out = self.collective("all_reduce", |comm| {
            Ok(input.apply_op1_no_bwd(&NcclOp1 {
                comm,
                reduce: Some(op),
                root: 0,
            })?)
        })?;
        Ok(out.to_dtype(t.dtype())?)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let input = prepare(t)?;
        let out = self.collective("broadcast", |comm| {
            Ok(input.apply_op1_no_bwd(&NcclOp1 {
                comm,
                reduce: None,
                root,
            })?)
        })?;
        Ok(out.to_dtype(t.dtype())?)
    }

    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>> {
        // The length first (as f64: exact below 2^53), then the bytes as f32 values (exact).
        let device = self.device.clone();
        let len = Tensor::new(&[bytes.len() as f64], &device)?;
        let len = self.broadcast(&len, root)?.to_vec1::<f64>()?[0] as usize;
        let values: Vec<f32> = match self.rank == root {
            true => bytes.iter().map(|&b| b as f32).collect(),
            false => vec![0.0; len],
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let out = self.broadcast(&Tensor::from_vec(values, len, &device)?, root)?;
        Ok(out.to_vec1::<f32>()?.into_iter().map(|v| v as u8).collect())
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::new(&[1f32], &self.device)?;
        self.all_reduce(&one, ReduceOp::Sum).context("barrier")?;
        Ok(())
    }
}
