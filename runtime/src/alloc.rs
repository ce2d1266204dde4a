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
//!
//! [`Counting`] wraps the system allocator to count bytes in use and their
//! peak, for `blkc bench`'s memory figure.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// The `blkc` binary's global allocator: the system's, counting the bytes
/// in use and their peak, so that `blkc bench` reports what a step
/// allocates at its peak — exactly, whatever the allocator keeps for reuse
/// (the process's resident set cannot tell once freed memory stays).
#[derive(Debug)]
pub struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn grew(bytes: usize) {
    let now = IN_USE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    IN_USE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and only adds bookkeeping on atomics, so `System`'s guarantees
// carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// Starts a new peak at the bytes now in use; returns them, or `None` when
/// the counting allocator is not the process's.
pub fn start_peak() -> Option<usize> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    let now = IN_USE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    Some(now)
}

/// The most bytes in use since [`start_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}
