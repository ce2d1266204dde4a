//! The allocator of the `blkc` process: mimalloc, counted.
//!
//! A training step allocates and frees tensors of up to tens of MiB many
//! times over; memory returned to the kernel between uses comes back as
//! page faults and the zeroing of every page (measured at 10 % of a CPU
//! step of the small model under glibc's defaults: `clear_page_erms`,
//! `exc_page_fault`). Encoding a corpus with BPE makes millions of small
//! allocations on every thread at once. glibc could serve the first well
//! (no mappings of their own, no trimming, one arena for all threads) only
//! at the cost of the second: with one arena its lock serialised the
//! encoding (`blkc tokenize python-stdlib` on 2 cores: 21.4 s, 26.0 s of
//! CPU), with an arena per thread a training step took 4 % longer (a
//! second arena's heaps are unmapped when they empty). mimalloc keeps a
//! heap per thread and, never purging (see [`keep_freed_memory`]), keeps
//! freed memory for reuse: the same encoding in 8.8 s, and the training
//! step as fast as with glibc's one arena (bench/NOTES.md).
//!
//! [`Counting`] wraps it to count bytes in use and their peak, for `blkc
//! bench`'s memory figure.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t`,
/// mimalloc.h of libmimalloc-sys 0.1.49, pinned): how long freed memory
/// waits before it is returned to the kernel, in ms; −1 never.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process for reuse: mimalloc never returns it
/// to the kernel (a process's memory stays at its peak, as a training
/// run's does anyway). Call once, first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: setting an option only stores its value; mimalloc reads it
    // when it would purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

/// The `blkc` binary's global allocator: mimalloc, counting the bytes
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
    // A read first: below the peak (nearly always) no write to a line
    // every thread reads.
    if now > PEAK.load(Ordering::Relaxed) {
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrank(bytes: usize) {
    IN_USE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments
// unchanged and only adds bookkeeping on atomics, so `MiMalloc`'s
// guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { MiMalloc.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// [`PURGE_DELAY`] names mimalloc's purge delay: its default is that
    /// of mimalloc 3's options.c (1000 ms; no other option's is), and
    /// setting it reads back.
    #[test]
    fn the_purge_delay_is_mimallocs() {
        // SAFETY: reading and setting an option (see `keep_freed_memory`).
        let (before, after) = unsafe {
            let before = libmimalloc_sys::mi_option_get(PURGE_DELAY);
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
            (before, libmimalloc_sys::mi_option_get(PURGE_DELAY))
        };
        assert_eq!((before, after), (1000, -1));
    }
}
