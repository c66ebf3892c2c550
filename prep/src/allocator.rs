//! The process-wide allocator setting of the prep and train binaries.

/// Keeps freed heap memory in the process for the next allocations instead of handing it back to
/// the kernel (glibc on Linux; elsewhere a no-op), unless `GLIBC_TUNABLES` sets malloc options.
///
/// Both kinds of binary allocate and free the same large buffers over and over: a train step its
/// activations and gradients (1–8 MiB each in the step bench: candle's backward makes a
/// zero-filled gradient and a sum for every graph edge, and every op a new output), prep a decoded
/// frame, its resized passes and its depth raster (0.5–1 MiB) for every view. glibc serves blocks
/// of ≥ 128 KiB (its adaptive threshold) with fresh `mmap`s and trims the heap's top above
/// 128 KiB, so each of them costs page faults, the kernel's page clearing and memory-cgroup
/// charging, and `munmap` on free; in a process with several running threads an unmap also
/// interrupts the other cores to flush their TLBs.
/// Measured (BENCHMARKS.md, 2026-12-02): the Qwen3 + LoRA step at 2 threads spent 17 % of its
/// samples handling page faults, and with the thresholds raised the main thread's CPU per step
/// fell from ≈ 120 to ≈ 65 ms for 7 MiB more peak RSS; `prep-scanqa` at 2 threads on 20 full-size
/// scans takes 3 600–3 800 page faults instead of 7 500–9 400 and up to 0.05 s less system time,
/// for ≈ 0.7 MiB more peak RSS. Blocks above 32 MiB (glibc's ceiling for the mmap threshold: 4B-model weights,
/// large logits) are still mapped and unmapped each time.
///
/// Call it first in `main`, before other threads start.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if !tuned {
            // SAFETY: mallopt only sets allocator parameters; it is called before the binaries
            // start other threads.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}
