//! The in-process backend: ranks are threads of one process sharing a rendezvous table. Tensors
//! travel as host copies (f32, or f64 for f64 tensors); sums run in rank order, so every rank
//! gets bit-identical results. For tests and CPU machines (`train --nproc N` without CUDA).
//!
//! A rank whose handle is dropped (its thread returned, failed or panicked) has left: an
//! operation it never joined fails at once on the other ranks, naming it. A rank that is alive
//! but does not arrive (hung, or slower than the timeout) fails the others after the timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::exchange::{Exchange, Payload};
use super::CollectiveError;

struct Op {
    /// What the first rank to arrive called (kind, op, dtype, shape, root), to catch mismatches.
    what: String,
    first: usize,
    inputs: Vec<Payload>,
    arrived: Vec<bool>,
    result: Option<Arc<Payload>>,
    taken: usize,
}

struct State {
    ops: BTreeMap<u64, Op>,
    left: Vec<bool>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking rank cannot leave the table inconsistent (no user code runs under the lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One rank's handle on an in-process group.
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
    seq: AtomicU64,
}

impl ThreadGroup {
    /// Handles for ranks `0..world`, one per thread; operations wait at most `timeout` for the
    /// other ranks.
    pub fn new(world: usize, timeout: Duration) -> Result<Vec<ThreadGroup>> {
        ensure!(world > 0, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State {
                ops: BTreeMap::new(),
                left: vec![false; world],
            }),
            changed: Condvar::new(),
        });
        Ok((0..world)
            .map(|rank| ThreadGroup {
                shared: shared.clone(),
                rank,
                seq: AtomicU64::new(0),
            })
            .collect())
    }
}

impl Exchange for ThreadGroup {
    fn own_rank(&self) -> usize {
        self.rank
    }

    fn group_size(&self) -> usize {
        self.shared.world
    }

    /// Contributes `input` to this rank's next operation and waits for its result.
    fn exchange(
        &self,
        op: &'static str,
        what: String,
        input: Payload,
        combine: impl FnOnce(&mut [Payload]) -> Payload,
    ) -> Result<Arc<Payload>> {
        let world = self.shared.world;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + self.shared.timeout;
        let mut state = self.shared.lock();
        let entry = state.ops.entry(seq).or_insert_with(|| Op {
            what: what.clone(),
            first: self.rank,
            inputs: vec![Payload::None; world],
            arrived: vec![false; world],
            result: None,
            taken: 0,
        });
        if entry.what != what {
            return Err(CollectiveError::Mismatch {
                rank: self.rank,
                seq,
                ours: what,
                other: entry.first,
                theirs: entry.what.clone(),
            }
            .into());
        }
        entry.inputs[self.rank] = input;
        entry.arrived[self.rank] = true;
        if entry.arrived.iter().all(|&a| a) {
            entry.result = Some(Arc::new(combine(&mut entry.inputs)));
            entry.inputs = Vec::new();
            self.shared.changed.notify_all();
        }
        loop {
            let entry = state
                .ops
                .get_mut(&seq)
                .expect("an op stays until every rank took it");
            if let Some(result) = entry.result.clone() {
                entry.taken += 1;
                if entry.taken == world {
                    state.ops.remove(&seq);
                }
                return Ok(result);
            }
            let missing: Vec<usize> = (0..world).filter(|&r| !entry.arrived[r]).collect();
            if let Some(&gone) = missing.iter().find(|&&r| state.left[r]) {
                return Err(CollectiveError::RankLeft {
                    rank: self.rank,
                    op,
                    seq,
                    gone,
                }
                .into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CollectiveError::Timeout {
                    rank: self.rank,
                    op,
                    seq,
                    missing,
                    world,
                    timeout: self.shared.timeout,
                }
                .into());
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.left[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

/// Runs `f(rank handle)` on `world` threads (named `rank-R`) and returns every rank's result,
/// in rank order. A panicking rank yields an error naming it.
pub fn run_ranks<T: Send>(
    world: usize,
    timeout: Duration,
    f: impl Fn(ThreadGroup) -> Result<T> + Sync,
) -> Result<Vec<Result<T>>> {
    let handles = ThreadGroup::new(world, timeout)?;
    let f = &f;
    std::thread::scope(|scope| {
        let joins: Vec<_> = handles
            .into_iter()
            .map(|h| {
                let rank = h.rank;
                std::thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn_scoped(scope, move || f(h))
                    .map(|j| (rank, j))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(joins
            .into_iter()
            .map(|(rank, j)| match j.join() {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("rank {rank} panicked")),
            })
            .collect())
    })
}

/// The error that explains a failed group: the lowest rank's own failure, before the
/// [`CollectiveError`]s the other ranks saw because of it.
pub fn root_cause(results: Vec<anyhow::Error>) -> Option<anyhow::Error> {
    let mut errors = results;
    let own = errors
        .iter()
        .position(|e| e.downcast_ref::<CollectiveError>().is_none());
    match own {
        Some(i) => Some(errors.swap_remove(i)),
        None => errors.into_iter().next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dist::{Collective, ReduceOp};
    use anyhow::bail;
    use candle_core::{DType, Device, Tensor};

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn all_reduce_sums_and_means_in_rank_order_on_every_rank() {
        let out = run_ranks(3, LONG, |g| {
            let r = g.rank() as f32;
            let t = Tensor::new(&[[r, 1.0], [10.0 * r, 0.5]], &Device::Cpu)?;
            let s: Vec<Vec<f32>> = g.all_reduce(&t, ReduceOp::Sum)?.to_vec2()?;
            let m: Vec<Vec<f32>> = g.all_reduce(&t, ReduceOp::Mean)?.to_vec2()?;
            let d = Tensor::new(&[g.rank() as f64 + 0.25], &Device::Cpu)?;
            let d: Vec<f64> = g.all_reduce(&d, ReduceOp::Sum)?.to_vec1()?;
            Ok((s, m, d))
        })
        .unwrap();
        for r in out {
            let (s, m, d) = r.unwrap();
            assert_eq!(s, vec![vec![3.0, 3.0], vec![30.0, 1.5]]);
            assert_eq!(m, vec![vec![1.0, 1.0], vec![10.0, 0.5]]);
            assert_eq!(d, vec![3.75]);
        }
    }

    #[test]
    fn broadcast_gives_the_roots_values_and_bytes() {
        let out = run_ranks(3, LONG, |g| {
            let t = Tensor::full(g.rank() as f32, (2, 2), &Device::Cpu)?.to_dtype(DType::BF16)?;
            let b = g.broadcast(&t, 2)?;
            assert_eq!(b.dtype(), DType::BF16);
            let v: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let bytes = g.broadcast_bytes(format!("from {}", g.rank()).into_bytes(), 1)?;
            g.barrier()?;
            Ok((v, String::from_utf8(bytes)?))
        })
        .unwrap();
        for r in out {
            let (v, s) = r.unwrap();
            assert_eq!(v, vec![2.0; 4]);
            assert_eq!(s, "from 1");
        }
    }

    #[test]
    fn a_hung_rank_times_out_the_others_naming_it() {
        let started = Instant::now();
        let out = run_ranks(3, Duration::from_millis(200), |g| {
            if g.rank() == 1 {
                // Alive but stuck: it holds its handle past the others' timeout.
                std::thread::sleep(Duration::from_millis(600));
                return Ok(());
            }
            g.barrier()
        })
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        for rank in [0, 2] {
            let e = out[rank].as_ref().unwrap_err();
            match e.downcast_ref::<CollectiveError>() {
                Some(CollectiveError::Timeout {
                    rank: r,
                    missing,
                    world,
                    op,
                    ..
                }) => {
                    assert_eq!(
                        (*r, missing.as_slice(), *world, *op),
                        (rank, &[1][..], 3, "barrier")
                    );
                }
                other => panic!("rank {rank}: {other:?}"),
            }
            let text = e.to_string();
            assert!(text.contains("rank(s) [1] of 3 did not arrive"), "{text}");
        }
    }

    #[test]
    fn a_failed_rank_fails_the_others_at_once_naming_it() {
        let started = Instant::now();
        let out = run_ranks(2, Duration::from_secs(60), |g| {
            if g.rank() == 0 {
                bail!("rank 0 could not read its checkpoint");
            }
            g.all_reduce(&Tensor::new(&[1f32], &Device::Cpu)?, ReduceOp::Sum)?;
            Ok(())
        })
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the timeout"
        );
        let e = out[1].as_ref().unwrap_err();
        assert!(
            matches!(
                e.downcast_ref(),
                Some(CollectiveError::RankLeft {
                    rank: 1,
                    gone: 0,
                    ..
                })
            ),
            "{e}"
        );
        let errors: Vec<_> = out.into_iter().filter_map(Result::err).collect();
        assert_eq!(
            root_cause(errors).unwrap().to_string(),
            "rank 0 could not read its checkpoint"
        );
    }

    #[test]
    fn a_panicking_rank_is_named_and_releases_the_others() {
        let out = run_ranks(2, Duration::from_secs(60), |g| {
            if g.rank() == 1 {
                panic!("boom");
            }
            g.barrier()
        })
        .unwrap();
        assert_eq!(out[1].as_ref().unwrap_err().to_string(), "rank 1 panicked");
        assert!(matches!(
            out[0].as_ref().unwrap_err().downcast_ref(),
            Some(CollectiveError::RankLeft { gone: 1, .. })
        ));
    }

    #[test]
    fn mismatched_operations_are_refused() {
        let out = run_ranks(2, LONG, |g| {
            let t = Tensor::zeros(g.rank() + 1, DType::F32, &Device::Cpu)?;
            g.all_reduce(&t, ReduceOp::Sum)?;
            Ok(())
        })
        .unwrap();
        let errors: Vec<String> = out
            .into_iter()
            .filter_map(|r| r.err())
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("does not match")
                && e.contains("F32[1]")
                && e.contains("F32[2]")),
            "{errors:?}"
        );
    }

    #[test]
    fn many_operations_in_sequence_keep_their_order() {
        let out = run_ranks(4, LONG, |g| {
            let mut got = Vec::new();
            for i in 0..50 {
                let t = Tensor::new(&[(g.rank() * i) as f32], &Device::Cpu)?;
                got.push(g.all_reduce(&t, ReduceOp::Sum)?.to_vec1::<f32>()?[0]);
            }
            Ok(got)
        })
        .unwrap();
        let expect: Vec<f32> = (0..50).map(|i| (6 * i) as f32).collect();
        for r in out {
            assert_eq!(r.unwrap(), expect);
        }
    }
}
