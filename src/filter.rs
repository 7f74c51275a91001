//! A lock-free filter of sampled addresses: the free path's one question, "was this pointer
//! sampled?", answered without a lock or a table probe in the common case.
//!
//! Two steps. First the **alignment gate**: at the default rate every sampled block is
//! *promoted*, allocated at a [`PROMOTED_ALIGN`] (4 KiB) boundary (see `alloc`), so a pointer
//! that is not 4 KiB-aligned was not sampled, which a free learns from its own address: no
//! memory touched, no cache miss. The free path applies it through its thread's counter block
//! (the block's *free gate*, [`CounterBlock::gate_passes`](crate::counters::CounterBlock)), on
//! the cache line it counts on anyway; [`may_be_sampled`] is the same test for paths that hold
//! no block (`realloc`). That holds while every live sample sits on such a boundary; samples
//! taken without promotion (at rates finer than
//! [`PROMOTE_MIN_RATE`](crate::sampler::PROMOTE_MIN_RATE), or when the promoted allocation
//! failed) are counted in [`UNALIGNED_SAMPLES`]: the first closes every block's gate, the last
//! reopens them, and meanwhile every free goes on to the bitmap. Then the **bitmap**, for
//! 4 KiB-aligned pointers (every block of 4 KiB or more) and while unaligned samples live:
//!
//! One bit per slot, 2^20 slots (128 KiB). A pointer's slot is a multiplicative hash of its
//! address. A set bit means "maybe sampled" and sends the free to the locked table; a clear bit
//! means "certainly not". Bits are only set and cleared under the table lock, which also keeps
//! the per-slot counts that say when a bit may be cleared, so the filter never forgets a live
//! sample. With `n` live samples, about `n / 2^20` of unsampled frees take the slow path: 0.2 %
//! for 2,000 samples (a 1 GiB heap at the default rate).
//!
//! Unbiased by construction: every sampled block is found on its free (no false negatives), and
//! a false positive only costs a lookup that finds nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The boundary promoted samples are allocated at: a page, as jemalloc's own profiling promotes
/// its sampled small objects. A block at such a boundary may have been sampled; one elsewhere
/// was not (while [`UNALIGNED_SAMPLES`] is zero). Defined with the free gate that tests it.
pub(crate) use crate::counters::PROMOTED_ALIGN;

/// Live samples not at a [`PROMOTED_ALIGN`] boundary. Changed only under the table lock, read
/// by every free: a line written only when such a sample comes or goes, so it stays shared in
/// every core's cache.
static UNALIGNED_SAMPLES: AtomicUsize = AtomicUsize::new(0);

/// log2 of the number of slots: 2^20 bits (128 KiB) keeps false positives near 0.1 % at a few
/// thousand live samples while the pages touched stay small.
const SLOT_BITS: u32 = 20;
const WORDS: usize = 1 << (SLOT_BITS - 6);

static BITS: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];

/// The slot of an address. Allocations are at least 16-byte aligned, so the low bits carry
/// nothing; Fibonacci hashing spreads the rest.
#[inline(always)]
pub(crate) fn slot(addr: usize) -> u32 {
    ((addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOT_BITS)) as u32
}

/// `false` means the address is certainly not sampled.
///
/// Why the order: a sample inserted before the pointer reached the freeing thread (which is
/// how that thread got it) was counted in [`UNALIGNED_SAMPLES`] and marked in the bitmap
/// before, so both loads see it (as the bitmap alone did before the gate).
#[inline(always)]
pub(crate) fn may_be_sampled(addr: usize) -> bool {
    if addr & (PROMOTED_ALIGN - 1) != 0 && UNALIGNED_SAMPLES.load(Ordering::Relaxed) == 0 {
        return false;
    }
    in_bitmap(addr)
}

/// The bitmap's answer alone: `false` means the address is certainly not sampled. For a
/// free past the alignment gate.
#[inline(always)]
pub(crate) fn in_bitmap(addr: usize) -> bool {
    let slot = slot(addr);
    // The mask keeps the index in bounds without a check that could panic.
    let word = BITS[(slot >> 6) as usize & (WORDS - 1)].load(Ordering::Relaxed);
    word & (1u64 << (slot & 63)) != 0
}

/// Marks a slot as holding a sample. Called under the table lock.
pub(crate) fn set(slot: u32) {
    BITS[(slot >> 6) as usize & (WORDS - 1)].fetch_or(1u64 << (slot & 63), Ordering::Release);
}

/// Marks a slot as holding no sample. Called under the table lock, once its count is zero.
pub(crate) fn clear(slot: u32) {
    BITS[(slot >> 6) as usize & (WORDS - 1)].fetch_and(!(1u64 << (slot & 63)), Ordering::Release);
}

/// Counts a live sample at `addr` in (`true`) or out of the alignment gate's exceptions. Called
/// under the table lock, as the sample is added or removed.
pub(crate) fn note_sample(addr: usize, added: bool) {
    if addr & (PROMOTED_ALIGN - 1) == 0 {
        return;
    }
    // The first such sample closes every thread's free gate, the last one reopens them.
    if added {
        if UNALIGNED_SAMPLES.fetch_add(1, Ordering::SeqCst) == 0 {
            crate::counters::close_free_gates(true);
        }
    } else if UNALIGNED_SAMPLES.fetch_sub(1, Ordering::SeqCst) == 1 {
        crate::counters::close_free_gates(false);
    }
}

/// Live samples that the alignment gate cannot rule out by address.
pub(crate) fn unaligned_samples() -> usize {
    UNALIGNED_SAMPLES.load(Ordering::Relaxed)
}

/// **A test hook, not API**: hidden from the docs, outside any semver promise, and free to
/// change or go without notice.
///
/// Live samples not at a 4 KiB boundary (taken at rates finer than 128 KiB, or whose promoted
/// allocation failed): while any lives, every free consults the sampled-address bitmap.
/// `tests/promoted_samples.rs` reads it to check that the default rate promotes every sample.
#[doc(hidden)]
pub fn __unaligned_live_samples() -> usize {
    unaligned_samples()
}

/// Bytes of memory the filter occupies.
pub(crate) const FILTER_BYTES: usize = WORDS * 8;
