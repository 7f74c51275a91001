//! The global allocator wrapper: the only code on every allocation's path.
//!
//! Per allocation: a thread-local countdown and two counter updates on a cache line owned by
//! this thread decide, before the inner allocator is called, whether the block is sampled; a
//! sampled block is allocated at a promoted layout (4 KiB-aligned, see [`filter`]) at the
//! default rate. Per free: the pointer's alignment (and, for 4 KiB-aligned pointers, a bitmap)
//! says whether it might have been sampled; only then is the table locked. No lock, no I/O, no
//! panic, no shared write.

use crate::thread_state::{self, Decision};
use crate::{filter, sampler, stack, table};
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

// SAFETY: every method forwards to `inner`, so the blocks handed out are the inner allocator's
// and satisfy its `GlobalAlloc` contract. A sampled block may be allocated at a promoted layout
// (the caller's, aligned to `filter::PROMOTED_ALIGN`), which satisfies the caller's layout too;
// the live-sample table remembers it (a promoted block whose sample could not be kept is
// never handed out), and every path that gives such a block back to `inner` (`dealloc`,
// `realloc`) looks it up and uses the promoted layout. The bookkeeping never unwinds (no
// panicking operation is reachable: thread-local access uses `try_with`, indices are masked) and
// never allocates through the global allocator (the profiler's own memory comes from `System`
// directly, see `internal_alloc`).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Alloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match thread_state::record_alloc(layout.size()) {
            Decision::Skip => {
                // SAFETY: the caller upholds `alloc`'s contract for `layout`; passed on unchanged.
                let ptr = unsafe { self.inner.alloc(layout) };
                if ptr.is_null() {
                    thread_state::undo_alloc(layout.size());
                }
                ptr
            }
            // SAFETY: as above.
            Decision::Sample { rate_bytes } => unsafe {
                self.alloc_sampled(layout, rate_bytes, Zeroed::No)
            },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match thread_state::record_alloc(layout.size()) {
            Decision::Skip => {
                // SAFETY: as for `alloc`.
                let ptr = unsafe { self.inner.alloc_zeroed(layout) };
                if ptr.is_null() {
                    thread_state::undo_alloc(layout.size());
                }
                ptr
            }
            // SAFETY: as for `alloc`.
            Decision::Sample { rate_bytes } => unsafe {
                self.alloc_sampled(layout, rate_bytes, Zeroed::Yes)
            },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !thread_state::record_unsampled_free(ptr as usize, layout.size()) {
            // SAFETY: the caller upholds `dealloc`'s contract.
            return unsafe { self.dealloc_past_gate(ptr, layout) };
        }
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator (hence by
        // `inner`) with `layout`; the filter says it is not a (promoted) sample.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        thread_state::record_realloc();
        // Forget an unpromoted sample before the block moves or is freed, as `dealloc` does.
        let removed = if filter::may_be_sampled(ptr as usize) {
            match table::remove_unless_promoted(ptr as usize) {
                table::Tracked::Promoted => {
                    // SAFETY: the caller upholds `realloc`'s contract; `ptr` is a live
                    // promoted sample.
                    return unsafe { self.realloc_by_moving(ptr, layout, new_size) };
                }
                table::Tracked::Unpromoted(sample) => Some(sample),
                table::Tracked::No => None,
            }
        } else {
            None
        };
        thread_state::record_free(layout.size());
        let decision = thread_state::record_alloc(new_size);
        let sampled_rate = match decision {
            Decision::Sample { rate_bytes } if sampler::promotes(rate_bytes) => {
                // A promoted sample needs a block at its own layout: allocate, copy, free.
                // SAFETY: `new_size` with the caller's alignment is a valid layout (the
                // caller's contract), and the block is not promoted (checked above).
                return unsafe { self.move_to_sample(ptr, layout, new_size, rate_bytes, removed) };
            }
            Decision::Sample { rate_bytes } => Some(rate_bytes),
            Decision::Skip => None,
        };
        // SAFETY: the caller upholds `realloc`'s contract; arguments are passed on unchanged
        // (the block is not promoted: checked above).
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            // The old block is still the caller's: put its sample and counts back.
            undo_realloc(ptr, layout.size(), new_size, removed);
            return new_ptr;
        }
        // A realloc is a new allocation of `new_size` bytes for counting and sampling, so a
        // block that grew keeps being represented at its current size.
        if let Some(rate_bytes) = sampled_rate {
            let _ = sample(new_ptr, new_size, rate_bytes, false);
        }
        new_ptr
    }
}

/// Whether a sampled block is zero-filled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zeroed {
    No,
    Yes,
}

impl<A: GlobalAlloc> Alloc<A> {
    /// `dealloc` of a block the free gate did not let through (at a promoted boundary, which
    /// every block of 4 KiB or more is; while unaligned samples live; or on a thread without a
    /// block): the filter's bitmap decides whether to look in the table. A sample is forgotten
    /// before the block is freed (once freed, another thread may receive the same address and
    /// sample it), and the block is freed at the layout it was allocated at.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::dealloc`.
    #[inline(never)]
    unsafe fn dealloc_past_gate(&self, ptr: *mut u8, layout: Layout) {
        if !filter::in_bitmap(ptr as usize) {
            thread_state::record_free(layout.size());
            // SAFETY: the caller guarantees `ptr` was allocated by this allocator (hence by
            // `inner`) with `layout`; the bitmap says it is not a sample.
            return unsafe { self.inner.dealloc(ptr, layout) };
        }
        // SAFETY: as above.
        unsafe { self.dealloc_maybe_sampled(ptr, layout) }
    }

    /// The end of `dealloc_past_gate` for a block the bitmap could not rule out.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_maybe_sampled(&self, ptr: *mut u8, layout: Layout) {
        let removed = table::remove(ptr as usize);
        thread_state::record_free(layout.size());
        let layout = match removed {
            // SAFETY: the block was allocated at `promoted(layout)`, which was valid then.
            Some(sample) if sample.promoted() => unsafe { promoted_unchecked(layout) },
            _ => layout,
        };
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator (hence by
        // `inner`) with `layout`, or at its promoted layout when the table says so.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// Allocates a block the countdown chose to sample (counted already): promoted when the
    /// rate allows it and the table can keep it, else at the caller's layout.
    ///
    /// # Safety
    ///
    /// `layout` must be valid for `GlobalAlloc::alloc`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_sampled(&self, layout: Layout, rate_bytes: u64, zeroed: Zeroed) -> *mut u8 {
        let allocate = |layout| {
            // SAFETY: `layout` is the caller's or its promotion, both valid.
            unsafe {
                match zeroed {
                    Zeroed::No => self.inner.alloc(layout),
                    Zeroed::Yes => self.inner.alloc_zeroed(layout),
                }
            }
        };
        if sampler::promotes(rate_bytes) {
            if let Ok(promoted) = layout.align_to(filter::PROMOTED_ALIGN) {
                let ptr = allocate(promoted);
                if !ptr.is_null() {
                    if sample(ptr, layout.size(), rate_bytes, true) {
                        return ptr;
                    }
                    // Not in the table: its free would not know the promoted layout.
                    // SAFETY: allocated just above at `promoted`.
                    unsafe { self.inner.dealloc(ptr, promoted) };
                }
            }
        }
        let ptr = allocate(layout);
        if ptr.is_null() {
            thread_state::undo_alloc(layout.size());
        } else {
            let _ = sample(ptr, layout.size(), rate_bytes, false);
        }
        ptr
    }

    /// `realloc` of an unpromoted block whose new size was chosen to be sampled at a promoting
    /// rate (free and allocation counted already, the old sample `removed` from the table).
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::realloc`, and `ptr` is not promoted.
    #[cold]
    #[inline(never)]
    unsafe fn move_to_sample(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        rate_bytes: u64,
        removed: Option<table::LiveSample>,
    ) -> *mut u8 {
        // SAFETY: `realloc`'s contract makes `new_size` at `layout.align()` a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid, non-zero layout (realloc's contract).
        let new_ptr = unsafe { self.alloc_sampled(new_layout, rate_bytes, Zeroed::No) };
        if new_ptr.is_null() {
            // `alloc_sampled` took back the allocation's count; take back the free's.
            undo_realloc(ptr, layout.size(), 0, removed);
            return new_ptr;
        }
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
            self.inner.dealloc(ptr, layout);
        }
        new_ptr
    }

    /// `realloc` of a promoted sampled block: a new block (counted and perhaps sampled as any
    /// allocation), a copy, and the old block's free at its promoted layout.
    ///
    /// # Safety
    ///
    /// As for `GlobalAlloc::realloc`, and `ptr` is a live promoted sample.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_by_moving(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s contract makes `new_size` at `layout.align()` a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid, non-zero layout.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are live and distinct; `ptr` is freed as the caller's block.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

/// The promoted layout of a block allocated at it.
///
/// # Safety
///
/// `layout.align_to(filter::PROMOTED_ALIGN)` must have succeeded when the block was allocated.
unsafe fn promoted_unchecked(layout: Layout) -> Layout {
    // SAFETY: the same size and the larger alignment formed a valid layout before.
    unsafe {
        Layout::from_size_align_unchecked(layout.size(), layout.align().max(filter::PROMOTED_ALIGN))
    }
}

/// Takes back a `realloc` that failed: the old block's free (and its sample), and the new
/// allocation of `new_size` bytes (0: already taken back).
#[cold]
fn undo_realloc(
    ptr: *mut u8,
    old_size: usize,
    new_size: usize,
    removed: Option<table::LiveSample>,
) {
    thread_state::undo_free(old_size);
    if new_size != 0 {
        thread_state::undo_alloc(new_size);
    }
    if let Some(sample) = removed {
        table::reinsert(ptr as usize, sample);
    }
}

/// The sampled path: capture the stack and record the live sample; `false` if it was not kept
/// (the thread is already inside heapwatch, or the table had no memory for it). Rare (once per
/// `R` bytes on average), so microseconds are acceptable here.
#[cold]
#[inline(never)]
fn sample(ptr: *mut u8, size: usize, rate_bytes: u64, promoted: bool) -> bool {
    let Some(_guard) = thread_state::ProfilerGuard::enter() else {
        return false;
    };
    // Before the table's lock, and after the inner allocator served this block (so that a
    // jemalloc inner allocator registered its own fork handlers first).
    crate::fork::ensure_handlers();
    let mut frames = [0usize; stack::MAX_FRAMES];
    let depth = stack::capture(&mut frames);
    if crate::measure::logging() {
        crate::measure::log_captured(size, &frames[..depth]);
    }
    if rate_bytes == thread_state::LOG_SITE_ONLY {
        return false;
    }
    let sample = table::NewSample {
        size: size as u64,
        rate_bytes,
        promoted,
        span: thread_state::span_tag(),
    };
    table::insert(ptr as usize, sample, &frames[..depth])
}
