//! CPU collectives across processes and nodes over TCP: one process per rank (launched by
//! `train --nproc N --launcher processes`, torchrun or Slurm) on machines without NCCL, and the
//! multi-process path's test on CPU.
//!
//! A star around rank 0: every other rank keeps one connection to rank 0 at
//! `MASTER_ADDR:MASTER_PORT`. For each operation every rank sends rank 0 its description and
//! input; rank 0 combines the inputs in rank order with the same code as the thread backend
//! ([`super::threads`]), so both backends give bit-identical results, and sends the result back.
//! Fine for the small trainable set of LoRA + projector; NCCL is the backend for GPUs.
//!
//! Failures: a rank that closes its connection (it failed or ended) makes rank 0 fail with
//! [`CollectiveError::RankLeft`] naming it; one that does not send within the timeout, with
//! [`CollectiveError::Timeout`] naming it. Rank 0 relays that verdict to the other ranks before it
//! stops, so every rank's error names the rank at fault, not rank 0.
//!
//! Wire format, every integer little-endian. Handshake: the rank and the world size (u32 each)
//! to rank 0, which answers the world size (u32). Frame: the description's length (u32) and
//! UTF-8 bytes, a tag (u8: 0 none, 1 f32, 2 f64, 3 bytes, 9 abort as JSON bytes), a count (u64),
//! then the values.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::exchange::{Exchange, Payload};
use super::launch::LaunchEnv;
use super::{rendezvous, CollectiveError};

/// How much longer than the timeout a rank waits for rank 0's answer: rank 0 itself waits up to
/// the timeout for the slowest rank before it answers (or relays a failure).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Rank 0's verdict on a failed operation, relayed to the other ranks.
#[derive(Debug, Serialize, Deserialize)]
enum Abort {
    Left {
        gone: usize,
    },
    Timeout {
        missing: Vec<usize>,
    },
    /// Rank `culprit` called `culprit_called` where rank 0 called `rank0_called`.
    Mismatch {
        culprit: usize,
        culprit_called: String,
        rank0_called: String,
    },
}

enum Links {
    /// Rank 0: the connection of each rank `1..world` (index = rank; `None` at 0).
    Hub(Vec<Option<TcpStream>>),
    /// Every other rank: its connection to rank 0.
    Spoke(TcpStream),
}

/// One rank's handle on a TCP group.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Mutex<Links>,
    seq: AtomicU64,
    /// Set once an operation failed: the group cannot continue (the connections are out of step).
    failed: Mutex<Option<String>>,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn write_frame(w: &mut impl Write, what: &str, payload: &Payload) -> std::io::Result<()> {
    let (tag, count, data): (u8, usize, Vec<u8>) = match payload {
        Payload::None => (0, 0, Vec::new()),
        Payload::F32(v) => (1, v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Payload::F64(v) => (2, v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Payload::Bytes(b) => (3, b.len(), b.clone()),
    };
    let mut frame = Vec::with_capacity(4 + what.len() + 9 + data.len());
    frame.extend_from_slice(&(what.len() as u32).to_le_bytes());
    frame.extend_from_slice(what.as_bytes());
    frame.push(tag);
    frame.extend_from_slice(&(count as u64).to_le_bytes());
    frame.extend_from_slice(&data);
    w.write_all(&frame)?;
    w.flush()
}

fn write_abort(w: &mut impl Write, abort: &Abort) -> std::io::Result<()> {
    let json = serde_json::to_vec(abort).expect("serialisable");
    let mut frame = Vec::new();
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.push(9);
    frame.extend_from_slice(&(json.len() as u64).to_le_bytes());
    frame.extend_from_slice(&json);
    w.write_all(&frame)?;
    w.flush()
}

enum Frame {
    Data(String, Payload),
    Abort(Abort),
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Frame> {
    let bad = |m: String| std::io::Error::new(ErrorKind::InvalidData, m);
    let mut u32b = [0u8; 4];
    r.read_exact(&mut u32b)?;
    let len = u32::from_le_bytes(u32b) as usize;
    if len > 1 << 16 {
        return Err(bad(format!("a description of {len} bytes")));
    }
    let mut what = vec![0u8; len];
    r.read_exact(&mut what)?;
    let what = String::from_utf8(what).map_err(|e| bad(e.to_string()))?;
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    let count = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
    let width = match head[0] {
        0 => 0,
        1 => 4,
        2 => 8,
        3 | 9 => 1,
        tag => return Err(bad(format!("unknown payload tag {tag}"))),
    };
    let mut data = vec![0u8; count.checked_mul(width).ok_or_else(|| bad("size".into()))?];
    r.read_exact(&mut data)?;
    Ok(match head[0] {
        0 => Frame::Data(what, Payload::None),
        1 => Frame::Data(
            what,
            Payload::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
        ),
        2 => Frame::Data(
            what,
            Payload::F64(
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
        ),
        3 => Frame::Data(what, Payload::Bytes(data)),
        _ => Frame::Abort(serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?),
    })
}

impl TcpGroup {
    /// Joins the job `env` describes: rank 0 listens on `MASTER_PORT` (all interfaces) until
    /// every rank connected; the others connect to `MASTER_ADDR:MASTER_PORT`, retrying until
    /// rank 0 is up. Both give up after `timeout`, naming the ranks that did not come.
    pub fn join(env: &LaunchEnv, timeout: Duration) -> Result<Self> {
        if env.rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", env.master_port)).with_context(|| {
                format!(
                    "rank 0: cannot listen on port {} for the other ranks",
                    env.master_port
                )
            })?;
            Self::hub_on(listener, env.world_size, timeout)
        } else {
            Self::spoke(
                &env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                timeout,
            )
        }
    }

    /// Rank 0 on a listener already bound.
    pub fn hub_on(listener: TcpListener, world: usize, timeout: Duration) -> Result<Self> {
        ensure!(world > 0, "a group needs at least one rank");
        let deadline = Instant::now() + timeout;
        listener.set_nonblocking(true)?;
        let mut streams: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        let mut waiting: BTreeSet<usize> = (1..world).collect();
        while !waiting.is_empty() {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                    let mut hello = [0u8; 8];
                    stream
                        .read_exact(&mut hello)
                        .with_context(|| format!("rank 0: reading the rank of {peer}"))?;
                    let rank = u32::from_le_bytes(hello[..4].try_into().unwrap()) as usize;
                    let theirs = u32::from_le_bytes(hello[4..].try_into().unwrap()) as usize;
                    ensure!(
                        theirs == world,
                        "rank 0: {peer} (rank {rank}) was started with world size {theirs}, this \
                         job has {world}"
                    );
                    ensure!(
                        waiting.remove(&rank),
                        "rank 0: {peer} says it is rank {rank}, which is not an expected rank \
                         (world size {world}, or it connected twice)"
                    );
                    stream.write_all(&(world as u32).to_le_bytes())?;
                    streams[rank] = Some(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!(
                            "rank 0: rank(s) {waiting:?} of {world} did not connect within \
                             {timeout:?}"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("rank 0: accepting a rank's connection"),
            }
        }
        Ok(Self::new(0, world, timeout, Links::Hub(streams)))
    }

    /// Rank `rank` > 0: connects to rank 0 at `addr:port`.
    pub fn spoke(
        addr: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self> {
        ensure!(
            rank > 0 && rank < world,
            "rank {rank} of {world} cannot connect to rank 0"
        );
        let deadline = Instant::now() + timeout;
        let mut stream = rendezvous::connect(addr, port, rank, deadline)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        ))?;
        let mut hello = Vec::with_capacity(8);
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        hello.extend_from_slice(&(world as u32).to_le_bytes());
        stream.write_all(&hello)?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).with_context(|| {
            format!("rank {rank}: rank 0 at {addr}:{port} did not accept this rank")
        })?;
        Ok(Self::new(rank, world, timeout, Links::Spoke(stream)))
    }

    fn new(rank: usize, world: usize, timeout: Duration, links: Links) -> Self {
        Self {
            rank,
            world,
            timeout,
            links: Mutex::new(links),
            seq: AtomicU64::new(0),
            failed: Mutex::new(None),
        }
    }

    fn hub_exchange(
        &self,
        streams: &mut [Option<TcpStream>],
        op: &'static str,
        seq: u64,
        what: String,
        input: Payload,
        combine: impl FnOnce(&mut [Payload]) -> Payload,
    ) -> Result<Payload> {
        let deadline = Instant::now() + self.timeout;
        let mut inputs = vec![Payload::None; self.world];
        inputs[0] = input;
        let mut failure = None;
        for r in 1..self.world {
            let stream = streams[r].as_mut().expect("connected at join");
            stream.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))?;
            match read_frame(stream) {
                Ok(Frame::Data(theirs, payload)) if theirs == what => inputs[r] = payload,
                Ok(Frame::Data(theirs, _)) => {
                    failure = Some(Abort::Mismatch {
                        culprit: r,
                        culprit_called: theirs,
                        rank0_called: what.clone(),
                    });
                    break;
                }
                Ok(Frame::Abort(_)) => bail!("rank 0: rank {r} sent an abort (a protocol error)"),
                Err(e) if is_timeout(&e) => {
                    // This rank and any later one that has sent nothing are missing.
                    let mut missing = vec![r];
                    for (q, s) in streams.iter().enumerate().skip(r + 1) {
                        let Some(s) = s else { continue };
                        s.set_nonblocking(true)?;
                        let ready = matches!(s.peek(&mut [0u8; 1]), Ok(n) if n > 0);
                        s.set_nonblocking(false)?;
                        if !ready {
                            missing.push(q);
                        }
                    }
                    failure = Some(Abort::Timeout { missing });
                    break;
                }
                Err(_) => {
                    failure = Some(Abort::Left { gone: r });
                    break;
                }
            }
        }
        if let Some(abort) = failure {
            for s in streams.iter_mut().flatten() {
                let _ = write_abort(s, &abort);
            }
            return Err(self.error(op, seq, &what, abort).into());
        }
        let result = combine(&mut inputs);
        for (r, s) in streams.iter_mut().enumerate() {
            if let Some(s) = s {
                if write_frame(s, &what, &result).is_err() {
                    return Err(self.error(op, seq, &what, Abort::Left { gone: r }).into());
                }
            }
        }
        Ok(result)
    }

    fn spoke_exchange(
        &self,
        stream: &mut TcpStream,
        op: &'static str,
        seq: u64,
        what: String,
        input: Payload,
    ) -> Result<Payload> {
        if write_frame(stream, &what, &input).is_err() {
            return Err(self.error(op, seq, &what, Abort::Left { gone: 0 }).into());
        }
        stream.set_read_timeout(Some(self.timeout + ANSWER_GRACE))?;
        match read_frame(stream) {
            Ok(Frame::Data(_, payload)) => Ok(payload),
            Ok(Frame::Abort(abort)) => Err(self.error(op, seq, &what, abort).into()),
            Err(e) if is_timeout(&e) => Err(self
                .error(op, seq, &what, Abort::Timeout { missing: vec![0] })
                .into()),
            Err(_) => Err(self.error(op, seq, &what, Abort::Left { gone: 0 }).into()),
        }
    }

    fn error(&self, op: &'static str, seq: u64, ours: &str, abort: Abort) -> CollectiveError {
        match abort {
            Abort::Left { gone } => CollectiveError::RankLeft {
                rank: self.rank,
                op,
                seq,
                gone,
            },
            Abort::Timeout { missing } => CollectiveError::Timeout {
                rank: self.rank,
                op,
                seq,
                missing,
                world: self.world,
                timeout: self.timeout,
            },
            Abort::Mismatch {
                culprit,
                culprit_called,
                rank0_called,
            } => {
                let (other, theirs) = if self.rank == culprit {
                    (0, rank0_called)
                } else {
                    (culprit, culprit_called)
                };
                CollectiveError::Mismatch {
                    rank: self.rank,
                    seq,
                    ours: ours.to_string(),
                    other,
                    theirs,
                }
            }
        }
    }
}

impl Exchange for TcpGroup {
    fn own_rank(&self) -> usize {
        self.rank
    }

    fn group_size(&self) -> usize {
        self.world
    }

    /// Contributes `input` to this rank's next operation and returns its result.
    fn exchange(
        &self,
        op: &'static str,
        what: String,
        input: Payload,
        combine: impl FnOnce(&mut [Payload]) -> Payload,
    ) -> Result<Arc<Payload>> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        if let Some(earlier) = self
            .failed
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone()
        {
            bail!(
                "rank {}: {op} #{seq}: the group failed earlier ({earlier})",
                self.rank
            );
        }
        let mut links = self
            .links
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned TCP group"))?;
        let result = match &mut *links {
            Links::Hub(streams) => self.hub_exchange(streams, op, seq, what, input, combine),
            Links::Spoke(stream) => self.spoke_exchange(stream, op, seq, what, input),
        };
        if let Err(e) = &result {
            *self
                .failed
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))? = Some(e.to_string());
        }
        result.map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::super::threads::run_ranks;
    use super::*;
    use crate::train::dist::{Collective, ReduceOp};
    use candle_core::{DType, Device, Tensor};

    const LONG: Duration = Duration::from_secs(30);

    /// Runs `f` on `world` ranks, each a thread holding its own TCP group over localhost.
    fn run_tcp<T: Send>(
        world: usize,
        timeout: Duration,
        f: impl Fn(TcpGroup) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = Mutex::new(Some(listener));
        let f = &f;
        std::thread::scope(|s| {
            let joins: Vec<_> = (0..world)
                .map(|rank| {
                    let listener = &listener;
                    s.spawn(move || {
                        let g = if rank == 0 {
                            let l = listener.lock().unwrap().take().unwrap();
                            TcpGroup::hub_on(l, world, timeout)?
                        } else {
                            TcpGroup::spoke("127.0.0.1", port, rank, world, timeout)?
                        };
                        f(g)
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        })
    }

    /// Values whose float sums depend on the order of addition.
    fn values(rank: usize) -> Vec<f32> {
        (0..257)
            .map(|i| ((i * 7919 + rank * 104729) % 1000) as f32 * 1.37e-3 + 1e-7 * rank as f32)
            .collect()
    }

    #[test]
    fn collectives_give_the_thread_backends_bits_on_every_rank() {
        let body =
            |g: &dyn Collective| -> Result<(Vec<u32>, Vec<u32>, Vec<f64>, Vec<f32>, String)> {
                let t = Tensor::from_vec(values(g.rank()), 257, &Device::Cpu)?;
                let s: Vec<f32> = g.all_reduce(&t, ReduceOp::Sum)?.to_vec1()?;
                let m: Vec<f32> = g.all_reduce(&t, ReduceOp::Mean)?.to_vec1()?;
                let d = Tensor::new(&[g.rank() as f64 + 0.25], &Device::Cpu)?;
                let d: Vec<f64> = g.all_reduce(&d, ReduceOp::Sum)?.to_vec1()?;
                let b =
                    Tensor::full(g.rank() as f32, (2, 2), &Device::Cpu)?.to_dtype(DType::BF16)?;
                let b = g.broadcast(&b, 2)?;
                assert_eq!(b.dtype(), DType::BF16);
                let b: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let bytes = g.broadcast_bytes(format!("from {}", g.rank()).into_bytes(), 1)?;
                g.barrier()?;
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
                Ok((bits(s), bits(m), d, b, String::from_utf8(bytes)?))
            };
        let tcp = run_tcp(3, LONG, |g| body(&g));
        let threads = run_ranks(3, LONG, |g| body(&g)).unwrap();
        let reference = threads[0].as_ref().unwrap().clone();
        assert_eq!(reference.2, vec![3.75]);
        assert_eq!(reference.3, vec![2.0; 4]);
        assert_eq!(reference.4, "from 1");
        for (rank, r) in tcp.into_iter().chain(threads).enumerate() {
            assert_eq!(r.unwrap(), reference, "result {rank}");
        }
    }

    #[test]
    fn a_rank_that_leaves_is_named_on_every_other_rank() {
        let started = Instant::now();
        let out = run_tcp(3, Duration::from_secs(60), |g| {
            g.barrier()?;
            if g.rank() == 1 {
                bail!("rank 1 could not read its shard");
            }
            g.all_reduce(&Tensor::new(&[1f32], &Device::Cpu)?, ReduceOp::Sum)?;
            Ok(())
        });
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited for the timeout"
        );
        for rank in [0, 2] {
            let e = out[rank].as_ref().unwrap_err();
            match e.downcast_ref::<CollectiveError>() {
                Some(CollectiveError::RankLeft {
                    rank: r, gone, op, ..
                }) => {
                    assert_eq!((*r, *gone, *op), (rank, 1, "all_reduce"))
                }
                other => panic!("rank {rank}: {other:?}"),
            }
        }
        // The group is unusable after a failure: later operations fail at once.
    }

    #[test]
    fn a_hung_rank_times_out_the_others_naming_it() {
        let started = Instant::now();
        let out = run_tcp(3, Duration::from_millis(300), |g| {
            if g.rank() == 2 {
                std::thread::sleep(Duration::from_millis(1500));
                return Ok(());
            }
            g.barrier()?;
            Ok(())
        });
        assert!(started.elapsed() < Duration::from_secs(10));
        for rank in [0, 1] {
            let e = out[rank].as_ref().unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("rank {rank}: barrier #0 timed out"))
                    && text.contains("rank(s) [2] of 3 did not arrive"),
                "{text}"
            );
        }
    }

    #[test]
    fn mismatched_operations_and_world_sizes_are_refused() {
        let out = run_tcp(2, LONG, |g| {
            let t = Tensor::zeros(g.rank() + 1, DType::F32, &Device::Cpu)?;
            g.all_reduce(&t, ReduceOp::Sum)?;
            Ok(())
        });
        for r in &out {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(
                e.contains("does not match") && e.contains("F32[1]") && e.contains("F32[2]"),
                "{e}"
            );
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::scope(|s| {
            let hub = s.spawn(|| TcpGroup::hub_on(listener, 2, Duration::from_secs(5)));
            let _ = TcpGroup::spoke("127.0.0.1", port, 1, 3, Duration::from_secs(5));
            let e = hub.join().unwrap().err().unwrap().to_string();
            assert!(
                e.contains("(rank 1) was started with world size 3, this job has 2"),
                "{e}"
            );
        });
    }
}
