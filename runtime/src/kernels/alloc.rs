//! The allocator set-up of the `blkc` process.
//!
//! A training step allocates and frees tensors of up to tens of MiB many
//! times over. glibc serves allocations above its mmap threshold with fresh
//! mappings and returns freed memory at the top of the heap to the kernel,
//! so each such tensor costs page faults and the kernel's zeroing of every
//! page: measured at 10 % of a CPU step of the small model (perf:
//! `clear_page_erms`, `exc_page_fault`). Serving every allocation from the
//! heap, never trimming it below 1 GiB of free space, and keeping one arena
//! for all threads (a second arena's heaps are unmapped when they empty,
//! which cost another 4 %) keeps freed blocks in the process for reuse.

/// Keeps large freed blocks in the heap (Linux with glibc; elsewhere a
/// no-op). Call once, first thing in `main`, before threads start.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // No allocation is served by its own mapping (the logits of the
        // small model alone are 32 MiB, the largest mmap threshold glibc
        // accepts); trimming waits until 1 GiB is free at the top.
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: `mallopt` only sets allocator parameters; it is called
        // before any other thread exists, and an out-of-range value is
        // rejected by glibc (returns 0) without side effects.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
