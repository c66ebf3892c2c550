//! roomplan-trainer: the fused VGGT → Perceiver + geometry head → Qwen3 (+LoRA) model in candle,
//! and the `train` binary's experiments, data loading, loop and checkpoints.
//!
//! - [`model`]: the networks and what feeds them (tokenizer and chat template, VGGT image input,
//!   checkpoint loading from folders and the Hugging Face cache);
//! - [`train`]: experiment files and pins, the shard loader, the optimizer and schedule, the loop,
//!   checkpoints, metrics and prediction;
//! - [`parity`]: checks against golden tensors of the official implementations;
//! - [`keep_candle_elementwise_on_caller`]: the binaries' CPU threading default;
//! - [`keep_freed_memory_for_reuse`]: the binaries' allocator setting for training on the CPU.

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

/// Keeps freed heap memory in the process for the next allocations instead of handing it back to
/// the kernel (glibc on Linux; elsewhere a no-op), unless `GLIBC_TUNABLES` sets malloc options.
///
/// A train step allocates and frees the same activation and gradient buffers (1–8 MiB each in
/// the step bench) hundreds of times: candle's backward makes a zero-filled gradient and a sum for
/// every graph edge, and every op a new output. glibc serves blocks of ≥ 128 KiB (its adaptive
/// threshold) with fresh `mmap`s and trims the heap's top above 128 KiB, so each of them costs
/// page faults, the kernel's page clearing and memory-cgroup charging, and `munmap` on free — on
/// the calling thread, mostly the main thread that runs the backward's bookkeeping alone.
/// `perf` of the Qwen3 + LoRA step at 2 threads (BENCHMARKS.md, 2026-12-02): page-fault handling
/// 17 % of all samples; with the thresholds raised the main thread's CPU time per step fell from
/// ≈ 120 to ≈ 65 ms, for 7 MiB more peak RSS. Blocks above 32 MiB (glibc's ceiling for the mmap
/// threshold: 4B-model weights, large logits) are still mapped and unmapped each time.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if !tuned {
            // SAFETY: mallopt only sets allocator parameters; it is called before the binaries
            // start other threads or allocate the model.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}
