//! The global allocator wrapper: the only code on every allocation's path.
//!
//! Per call: forward to the inner allocator, then a thread-local countdown and two counter
//! updates on a cache line owned by this thread. No lock, no I/O, no panic, no shared atomic.
//! On free, one relaxed load from the sampled-address filter decides whether the pointer might
//! have been sampled; only then is the table locked.

use crate::thread_state::{self, Decision};
use crate::{filter, stack, table};
use std::alloc::{GlobalAlloc, Layout};

/// A global allocator that counts every allocation and samples some with their stacks, over an
/// inner allocator `A` (`std::alloc::System`, or [`Jemalloc`](crate::Jemalloc) with the
/// `jemalloc` feature).
///
/// ```
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: heapwatch::Alloc<System> = heapwatch::Alloc::new(System);
///
/// let data = vec![0u8; 1 << 20];
/// assert!(heapwatch::stats().live_bytes >= data.len() as u64);
/// ```
#[derive(Debug, Default)]
pub struct Alloc<A> {
    inner: A,
}

impl<A> Alloc<A> {
    /// Wraps `inner`. `const`, so it can initialise a `#[global_allocator]` static.
    pub const fn new(inner: A) -> Self {
        Alloc { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments unchanged, so the blocks
// handed out are exactly the inner allocator's and satisfy its `GlobalAlloc` contract. The
// bookkeeping around the calls never unwinds (no panicking operation is reachable: thread-local
// access uses `try_with`, indices are masked) and never allocates through the global allocator
// (the profiler's own memory comes from `System` directly, see `internal_alloc`).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Alloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`; we pass it on unchanged.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            track_alloc(ptr, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track_alloc(ptr, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Forget the sample before the block is freed: once freed, another thread may receive
        // the same address and sample it.
        untrack(ptr);
        thread_state::record_free(layout.size());
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator (hence by
        // `inner`) with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let removed = untrack(ptr);
        thread_state::record_free(layout.size());
        // SAFETY: the caller upholds `realloc`'s contract; arguments are passed on unchanged.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            // The old block is still the caller's: put its sample and counts back.
            thread_state::undo_free(layout.size());
            if let Some(sample) = removed {
                table::reinsert(ptr as usize, sample);
            }
            return new_ptr;
        }
        // A realloc is a new allocation of `new_size` bytes for counting and sampling, so a
        // block that grew keeps being represented at its current size.
        track_alloc(new_ptr, new_size);
        new_ptr
    }
}

#[inline(always)]
fn track_alloc(ptr: *mut u8, size: usize) {
    if let Decision::Sample { rate_bytes } = thread_state::record_alloc(size) {
        sample(ptr, size, rate_bytes);
    }
}

#[inline(always)]
fn untrack(ptr: *mut u8) -> Option<table::LiveSample> {
    if filter::may_be_sampled(ptr as usize) {
        table::remove(ptr as usize)
    } else {
        None
    }
}

/// The sampled path: capture the stack and record the live sample. Rare (once per `R` bytes
/// on average), so microseconds are acceptable here.
#[cold]
#[inline(never)]
fn sample(ptr: *mut u8, size: usize, rate_bytes: u64) {
    let Some(_guard) = thread_state::ProfilerGuard::enter() else {
        return;
    };
    // Before the table's lock, and after the inner allocator served this block (so that a
    // jemalloc inner allocator registered its own fork handlers first).
    crate::fork::ensure_handlers();
    let mut frames = [0usize; stack::MAX_FRAMES];
    let depth = stack::capture(&mut frames);
    table::insert(ptr as usize, size as u64, rate_bytes, &frames[..depth]);
}
