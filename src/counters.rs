//! Exact heap counters, kept per thread and summed on read.
//!
//! Each thread owns a [`CounterBlock`] and is its only writer: an allocation is a relaxed load
//! and store to a cache line no other thread writes, never a read-modify-write on a shared line
//! (which costs tens of nanoseconds under contention). [`stats`] sums every block ever created.
//! Blocks outlive their threads: a block released at thread exit keeps its totals and is reused
//! by the next new thread, so totals stay exact however many threads start and exit.

use crate::internal_alloc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One thread's running totals. 64-byte aligned so two threads never share a line.
#[repr(align(64))]
pub(crate) struct CounterBlock {
    allocated_bytes: AtomicU64,
    allocated_objects: AtomicU64,
    freed_bytes: AtomicU64,
    freed_objects: AtomicU64,
    /// `realloc` calls (each also counted as one free and one allocation).
    reallocs: AtomicU64,
    /// The free gate (see [`CounterBlock::gate_passes`]): [`GATE_OPEN`] while every live
    /// sample is at a promoted boundary, a closed value otherwise. Written by whoever opens or
    /// closes the gates (under the table's lock) and by the block's creator; read by the owner
    /// on every free.
    gate: AtomicUsize,
    in_use: AtomicBool,
    next: AtomicPtr<CounterBlock>,
}

// One cache line: a thread's counting touches no other.
const _: () = assert!(std::mem::size_of::<CounterBlock>() == 64);

/// The boundary sampled blocks are promoted to (see [`filter`](crate::filter), which owns the
/// question "was this pointer sampled?" and re-exports it): defined here, below the filter,
/// because the free gate tests it.
pub(crate) const PROMOTED_ALIGN: usize = 4096;

/// The free gate's open value: a free whose address has none of these bits set (a promoted
/// boundary) is not counted on the fast path.
const GATE_OPEN: usize = PROMOTED_ALIGN - 1;
/// Closed: no address passes (user-space addresses never have the top bit set, so neither
/// value lets one through); `GATE_NEW` is a fresh block's, which only its creator may open.
const GATE_CLOSED: usize = 0;
const GATE_NEW: usize = 1 << (usize::BITS - 1);

/// The block of a thread that has none of its own (before its first allocation, after its
/// exit): its gate never opens, so such a thread's frees take the slow path, which counts them
/// as orphans. Never on the list, never written.
pub(crate) static NO_BLOCK: CounterBlock = CounterBlock::new();

/// Every block ever created, as a lock-free push-only list.
static BLOCKS: AtomicPtr<CounterBlock> = AtomicPtr::new(std::ptr::null_mut());

/// Totals of threads that had no block: a thread's first moments before it has one, and
/// allocations made while its thread-locals are being destroyed. Rare, so a shared atomic is fine.
static ORPHAN: CounterBlock = CounterBlock::new();

impl CounterBlock {
    const fn new() -> Self {
        CounterBlock {
            allocated_bytes: AtomicU64::new(0),
            allocated_objects: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            freed_objects: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            gate: AtomicUsize::new(GATE_NEW),
            in_use: AtomicBool::new(false),
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Records an allocation. Only the owning thread may call this.
    #[inline(always)]
    pub(crate) fn add_alloc(&self, bytes: usize) {
        bump_owned(&self.allocated_bytes, bytes as u64);
        bump_owned(&self.allocated_objects, 1);
    }

    /// Bytes this block counted as allocated minus freed. Exact when read by the owner.
    #[inline]
    pub(crate) fn net_bytes(&self) -> i64 {
        self.allocated_bytes
            .load(Ordering::Relaxed)
            .wrapping_sub(self.freed_bytes.load(Ordering::Relaxed)) as i64
    }

    /// Blocks this block counted as allocated minus freed. Exact when read by the owner.
    #[inline]
    pub(crate) fn net_objects(&self) -> i64 {
        self.allocated_objects
            .load(Ordering::Relaxed)
            .wrapping_sub(self.freed_objects.load(Ordering::Relaxed)) as i64
    }

    /// Whether a free of `addr` may be counted on the fast path: the gate is open (the block is
    /// a thread's own and every live sample is at a promoted boundary) and `addr` is not at
    /// such a boundary, so it is certainly not a sample.
    #[inline(always)]
    pub(crate) fn gate_passes(&self, addr: usize) -> bool {
        addr & self.gate.load(Ordering::Relaxed) != 0
    }

    /// Records a free. Only the owning thread may call this.
    #[inline(always)]
    pub(crate) fn add_free(&self, bytes: usize) {
        bump_owned(&self.freed_bytes, bytes as u64);
        bump_owned(&self.freed_objects, 1);
    }

    /// Records a `realloc` (its free and allocation are recorded as such). Owner only.
    #[inline(always)]
    pub(crate) fn add_realloc(&self) {
        bump_owned(&self.reallocs, 1);
    }

    /// Everything this block counted. Exact when read by the owner.
    pub(crate) fn totals(&self) -> BlockTotals {
        BlockTotals {
            allocated_bytes: self.allocated_bytes.load(Ordering::Relaxed),
            allocated_objects: self.allocated_objects.load(Ordering::Relaxed),
            freed_bytes: self.freed_bytes.load(Ordering::Relaxed),
            freed_objects: self.freed_objects.load(Ordering::Relaxed),
            reallocs: self.reallocs.load(Ordering::Relaxed),
        }
    }

    /// Whether a thread holds this block, for tests.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> bool {
        self.in_use.load(Ordering::Acquire)
    }

    /// Takes back a free that did not happen (a failed `realloc`). Owner only.
    pub(crate) fn undo_free(&self, bytes: usize) {
        drop_owned(&self.freed_bytes, bytes as u64);
        drop_owned(&self.freed_objects, 1);
    }

    /// Takes back an allocation that did not happen (the inner allocator failed). Owner only.
    pub(crate) fn undo_alloc(&self, bytes: usize) {
        drop_owned(&self.allocated_bytes, bytes as u64);
        drop_owned(&self.allocated_objects, 1);
    }
}

/// One block's running totals, read at once (see [`CounterBlock::totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockTotals {
    pub allocated_bytes: u64,
    pub allocated_objects: u64,
    pub freed_bytes: u64,
    pub freed_objects: u64,
    pub reallocs: u64,
}

/// Load-add-store by the single writer: no lock prefix, no shared-line ping-pong.
#[inline(always)]
fn bump_owned(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// Load-subtract-store by the single writer.
fn drop_owned(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_sub(by),
        Ordering::Relaxed,
    );
}

/// Records allocations of threads without a block, with real read-modify-writes.
pub(crate) fn orphan_alloc(bytes: usize) {
    ORPHAN
        .allocated_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    ORPHAN.allocated_objects.fetch_add(1, Ordering::Relaxed);
}

/// Records frees of threads without a block.
pub(crate) fn orphan_free(bytes: usize) {
    ORPHAN
        .freed_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    ORPHAN.freed_objects.fetch_add(1, Ordering::Relaxed);
}

/// Takes back an orphan allocation that did not happen (the inner allocator failed).
pub(crate) fn orphan_undo_alloc(bytes: usize) {
    ORPHAN
        .allocated_bytes
        .fetch_sub(bytes as u64, Ordering::Relaxed);
    ORPHAN.allocated_objects.fetch_sub(1, Ordering::Relaxed);
}

/// Takes back an orphan free that did not happen (a failed `realloc`).
pub(crate) fn orphan_undo_free(bytes: usize) {
    ORPHAN
        .freed_bytes
        .fetch_sub(bytes as u64, Ordering::Relaxed);
    ORPHAN.freed_objects.fetch_sub(1, Ordering::Relaxed);
}

/// Claims a free block for the calling thread, or creates one. `None` only if the C heap is
/// exhausted; the thread then counts through the orphan block.
pub(crate) fn claim_block() -> Option<&'static CounterBlock> {
    let mut cursor = BLOCKS.load(Ordering::Acquire);
    while !cursor.is_null() {
        // SAFETY: blocks are leaked on creation and never freed, so every pointer on the list
        // stays valid for the life of the process.
        let block = unsafe { &*cursor };
        if block
            .in_use
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(block);
        }
        cursor = block.next.load(Ordering::Acquire);
    }
    let block = internal_alloc::leak(CounterBlock::new())?;
    block.in_use.store(true, Ordering::Relaxed);
    let mut head = BLOCKS.load(Ordering::Acquire);
    loop {
        block.next.store(head, Ordering::Relaxed);
        let fresh = block as *const CounterBlock as *mut CounterBlock;
        match BLOCKS.compare_exchange_weak(head, fresh, Ordering::SeqCst, Ordering::Acquire) {
            Ok(_) => break,
            Err(current) => head = current,
        }
    }
    // Open the new block's gate unless gates are closed. Against a concurrent closing: either
    // its walk sees this block (pushed above, sequentially consistent) and closes it, which the
    // exchange below then cannot undo, or this load sees the count it raised first.
    if !GATES_CLOSED.load(Ordering::SeqCst) {
        let _ =
            block
                .gate
                .compare_exchange(GATE_NEW, GATE_OPEN, Ordering::Relaxed, Ordering::Relaxed);
    }
    Some(block)
}

/// Whether the free gates are closed (some live sample is not at a promoted boundary).
static GATES_CLOSED: AtomicBool = AtomicBool::new(false);

/// Closes (`true`) or opens every block's free gate: closed while any live sample is not at a
/// promoted boundary, so that every free asks the filter. Called by the filter under the
/// table's lock, which orders the calls; a closing is complete before the sample that caused
/// it is handed out, so any thread that can free that sample sees its gate closed.
pub(crate) fn close_free_gates(closed: bool) {
    GATES_CLOSED.store(closed, Ordering::SeqCst);
    let value = if closed { GATE_CLOSED } else { GATE_OPEN };
    let mut cursor = BLOCKS.load(Ordering::SeqCst);
    while !cursor.is_null() {
        // SAFETY: list blocks are leaked and never freed (see `claim_block`).
        let block = unsafe { &*cursor };
        block.gate.store(value, Ordering::Release);
        cursor = block.next.load(Ordering::Acquire);
    }
}

/// Gives a block back at thread exit; its totals stay in the sum.
pub(crate) fn release_block(block: &'static CounterBlock) {
    block.in_use.store(false, Ordering::Release);
}

/// Heap that heapwatch itself holds through the global allocator — the DWARF reader's parsed
/// units, which `addr2line` cannot allocate anywhere else — as bytes and blocks. Measured exactly
/// (what the symbolizing thread's counters gained while the reader worked) and taken out of
/// [`stats`], so the figures stay the program's own.
static HELD_BY_PROFILER: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];

/// Adds `bytes` and `objects` (negative: gives back) to what heapwatch holds through the global
/// allocator.
#[cfg_attr(not(feature = "dwarf"), allow(dead_code))] // only the DWARF reader holds heap
pub(crate) fn hold_for_profiler(bytes: i64, objects: i64) {
    HELD_BY_PROFILER[0].fetch_add(bytes, Ordering::Relaxed);
    HELD_BY_PROFILER[1].fetch_add(objects, Ordering::Relaxed);
}

/// A point-in-time reading of the exact heap counters.
///
/// These are counted on every allocation, not sampled. `live_*` are what the process holds now;
/// `allocated_*` and `freed_*` are totals since start. What heapwatch's DWARF reader holds
/// (reported as [`ProfilerStats::symbol_cache_bytes`](crate::ProfilerStats)) is not in
/// `live_*` and `allocated_*`: only the program's heap is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes currently allocated (allocated minus freed), as requested by callers.
    pub live_bytes: u64,
    /// Blocks currently allocated.
    pub live_objects: u64,
    /// Bytes allocated since start, freed or not.
    pub allocated_bytes: u64,
    /// Blocks allocated since start, freed or not.
    pub allocated_objects: u64,
    /// Bytes freed since start.
    pub freed_bytes: u64,
    /// Blocks freed since start.
    pub freed_objects: u64,
}

/// Reads the exact heap counters, summed over every thread that ever allocated.
///
/// Only allocations that went through [`Alloc`](crate::Alloc) are counted, so this reads zero
/// unless heapwatch is the global allocator. A `realloc` counts as one free and one allocation.
///
/// ```
/// let stats = heapwatch::stats();
/// assert!(stats.allocated_bytes >= stats.live_bytes);
/// ```
pub fn stats() -> HeapStats {
    let mut total = HeapStats::default();
    let mut add = |block: &CounterBlock| {
        total.allocated_bytes = total
            .allocated_bytes
            .wrapping_add(block.allocated_bytes.load(Ordering::Relaxed));
        total.allocated_objects = total
            .allocated_objects
            .wrapping_add(block.allocated_objects.load(Ordering::Relaxed));
        total.freed_bytes = total
            .freed_bytes
            .wrapping_add(block.freed_bytes.load(Ordering::Relaxed));
        total.freed_objects = total
            .freed_objects
            .wrapping_add(block.freed_objects.load(Ordering::Relaxed));
    };
    add(&ORPHAN);
    let mut cursor = BLOCKS.load(Ordering::Acquire);
    while !cursor.is_null() {
        // SAFETY: list blocks are leaked and never freed (see `claim_block`).
        let block = unsafe { &*cursor };
        add(block);
        cursor = block.next.load(Ordering::Acquire);
    }
    let held = |i: usize| HELD_BY_PROFILER[i].load(Ordering::Relaxed).max(0) as u64;
    total.allocated_bytes = total.allocated_bytes.saturating_sub(held(0));
    total.allocated_objects = total.allocated_objects.saturating_sub(held(1));
    // Frees on one thread of blocks allocated on another are read a moment apart, so a
    // concurrent reading may briefly see more freed than allocated; clamp rather than wrap.
    total.live_bytes = total.allocated_bytes.saturating_sub(total.freed_bytes);
    total.live_objects = total.allocated_objects.saturating_sub(total.freed_objects);
    total
}

/// **A test hook, not API**: hidden from the docs, outside any semver promise, and free to
/// change or go without notice.
///
/// Allocations counted without a thread's own block (before it had one, or after its exit hook
/// ran), since start. Integration tests (`tests/stress_threads.rs`) read it to check that the
/// thread-exit path is really exercised: the name's leading underscores keep it out of the way
/// of anyone browsing the crate's root.
#[doc(hidden)]
pub fn __orphan_allocated_objects() -> u64 {
    ORPHAN.allocated_objects.load(Ordering::Relaxed)
}
