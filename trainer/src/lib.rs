//! roomplan-trainer: the fused VGGT → Perceiver + geometry head → Qwen3 (+LoRA) model in candle,
//! and the `train` binary's experiments, data loading, loop and checkpoints.
//!
//! - [`model`]: the networks and what feeds them (tokenizer and chat template, VGGT image input,
//!   checkpoint loading from folders and the Hugging Face cache);
//! - [`train`]: experiment files and pins, the shard loader, the optimizer and schedule, the loop,
//!   checkpoints, metrics and prediction;
//! - [`parity`]: checks against golden tensors of the official implementations;
//! - [`keep_candle_elementwise_on_caller`]: the binaries' CPU threading default;
//! - [`keep_freed_memory_for_reuse`]: the binaries' allocator setting (from roomplan-prep, whose binaries use it too).

pub mod model;
pub mod parity;
pub mod train;

/// Leaves candle's element-wise CPU ops on the calling thread unless `CANDLE_NUM_THREADS` is set.
///
/// candle 0.11 splits element-wise ops of ≥ 64 Ki elements across its own "barrier pool"
/// (`CANDLE_NUM_THREADS` − 1 threads, default the rayon thread count), next to the rayon pool that
/// gemm and our fused kernels use. With as many threads as cores the two pools take turns on the
/// same cores: the barrier worker spins 25,000 pauses after every op, and the caller spins until
/// a descheduled worker has finished. `perf` of the Qwen3 + LoRA step at 2 threads (BENCHMARKS.md,
/// 2026-12-02): 31 % of the samples spinning in `BarrierGuard::drop`, 10 % in the worker's wait;
/// `train tiny` at 2 threads took 21–23 s with it off against 26–31 s with it on. What is left
/// element-wise is small; the kernels and the matmuls keep every rayon thread.
/// Must run before any candle op (the pool is built on first use) and before other threads start.
pub fn keep_candle_elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

pub use roomplan_prep::allocator::keep_freed_memory_for_reuse;
