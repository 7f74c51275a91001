//! Everything an allocation touches on its thread: the counter block, the sampling countdown,
//! the generator, and the reentrancy guard, in one const-initialised thread-local without a
//! destructor (so access is a plain TLS-relative load and it stays usable while other
//! thread-locals are being destroyed).
//!
//! The fast paths ([`record_alloc`], [`record_free`]) are a countdown, a branch and two owned
//! counter updates. Everything else — a thread's first allocation, a sampling point, a thread
//! that has exited — takes the cold paths below.

use crate::counters::{self, CounterBlock};
use crate::sampler;
use std::cell::Cell;

/// Longest run of allocation between two checkpoints of a thread, where it reports its net
/// allocation to the early wake ([`crate::early_wake`]). A MiB keeps the report's cost (one
/// shared atomic add) negligible and the watch's view of the heap within a MiB per thread.
const CHECKPOINT_BYTES: i64 = 1 << 20;

struct ThreadState {
    /// This thread's counter block; `None` before the first allocation and after exit.
    block: Cell<Option<&'static CounterBlock>>,
    /// Bytes to allocate before the next sample. Invariant: positive only while `block` is set,
    /// so the fast path needs no other check.
    bytes_until_sample: Cell<i64>,
    /// The rest of the current sampling interval beyond the countdown: intervals are counted
    /// down in chunks of at most [`CHECKPOINT_BYTES`], so the slow path runs at least that often
    /// (a checkpoint) without changing when samples fall.
    deferred: Cell<i64>,
    /// The block's net bytes (allocated − freed) at the last checkpoint.
    checkpointed_net: Cell<i64>,
    /// Set while heapwatch itself runs on this thread: nothing it allocates is sampled.
    in_profiler: Cell<bool>,
    /// Set once the thread's exit hook ran; later allocations count as orphans.
    exited: Cell<bool>,
    /// xorshift64* state for drawing intervals.
    rng: Cell<u64>,
    /// The sampler configuration generation this thread last applied.
    generation: Cell<u64>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            block: Cell::new(None),
            bytes_until_sample: Cell::new(0),
            deferred: Cell::new(0),
            checkpointed_net: Cell::new(0),
            in_profiler: Cell::new(false),
            exited: Cell::new(false),
            rng: Cell::new(1),
            generation: Cell::new(0),
        }
    };
    /// Only its destructor matters: it hands the counter block back when the thread exits.
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        let _ = STATE.try_with(|state| {
            if let Some(block) = state.block.take() {
                checkpoint(state, block);
                counters::release_block(block);
            }
            state.exited.set(true);
            state.bytes_until_sample.set(0);
            state.deferred.set(0);
        });
    }
}

/// What the slow path decided about an allocation.
pub(crate) enum Decision {
    Skip,
    /// Sample it; the allocation was drawn at this mean rate.
    Sample {
        rate_bytes: u64,
    },
}

/// Counts an allocation and runs the sampling countdown. Returns a sampling decision only when
/// the countdown expired (rare).
#[inline(always)]
pub(crate) fn record_alloc(size: usize) -> Decision {
    let counted = STATE.try_with(|state| {
        let left = state.bytes_until_sample.get().wrapping_sub(size as i64);
        if left > 0 {
            if let Some(block) = state.block.get() {
                state.bytes_until_sample.set(left);
                block.add_alloc(size);
                return true;
            }
        }
        false
    });
    if let Ok(true) = counted {
        return Decision::Skip;
    }
    record_alloc_slow(size)
}

/// Counts a free.
#[inline(always)]
pub(crate) fn record_free(size: usize) {
    let counted = STATE.try_with(|state| match state.block.get() {
        Some(block) => {
            block.add_free(size);
            true
        }
        None => false,
    });
    if let Ok(true) = counted {
        return;
    }
    record_free_slow(size);
}

/// Takes back a counted free after a failed `realloc` left the block live.
pub(crate) fn undo_free(size: usize) {
    let undone = STATE.try_with(|state| match state.block.get() {
        Some(block) => {
            block.undo_free(size);
            true
        }
        None => false,
    });
    if !matches!(undone, Ok(true)) {
        counters::orphan_undo_free(size);
    }
}

#[cold]
#[inline(never)]
fn record_alloc_slow(size: usize) -> Decision {
    let decision = STATE.try_with(|state| {
        let Some(block) = block_for(state) else {
            counters::orphan_alloc(size);
            return Decision::Skip;
        };
        block.add_alloc(size);
        checkpoint(state, block);

        let mut left = state.bytes_until_sample.get().wrapping_sub(size as i64);
        let generation = sampler::generation();
        if state.generation.get() != generation {
            // First allocation, or the rate or seed changed: start a fresh interval.
            state.generation.set(generation);
            let mut rng = sampler::new_thread_rng();
            left =
                sampler::draw_interval(&mut rng, sampler::sample_rate()).wrapping_sub(size as i64);
            state.deferred.set(0);
            state.rng.set(rng);
        }
        // The countdown ran out, but the interval may go on beyond this chunk: continuing it
        // (rather than drawing anew) keeps the intervals exactly exponential.
        let left = left.wrapping_add(state.deferred.replace(0));
        if left > 0 {
            count_down(state, left);
            return Decision::Skip;
        }
        let rate_bytes = sampler::sample_rate();
        let mut rng = state.rng.get();
        count_down(state, sampler::draw_interval(&mut rng, rate_bytes));
        state.rng.set(rng);
        if rate_bytes == 0 || state.in_profiler.get() {
            return Decision::Skip;
        }
        Decision::Sample { rate_bytes }
    });
    decision.unwrap_or_else(|_| {
        counters::orphan_alloc(size);
        Decision::Skip
    })
}

/// Arms the countdown for an interval of `bytes`, in chunks of at most [`CHECKPOINT_BYTES`].
fn count_down(state: &ThreadState, bytes: i64) {
    let chunk = bytes.min(CHECKPOINT_BYTES);
    state.bytes_until_sample.set(chunk);
    state.deferred.set(bytes - chunk);
}

/// Reports the thread's net allocation since its last checkpoint to the early wake.
fn checkpoint(state: &ThreadState, block: &CounterBlock) {
    let net = block.net_bytes();
    let since = net.wrapping_sub(state.checkpointed_net.replace(net));
    crate::early_wake::checkpoint(since);
}

#[cold]
#[inline(never)]
fn record_free_slow(size: usize) {
    let counted = STATE.try_with(|state| match block_for(state) {
        Some(block) => {
            block.add_free(size);
            true
        }
        None => false,
    });
    if !matches!(counted, Ok(true)) {
        counters::orphan_free(size);
    }
}

/// The thread's block, claiming one on first use. `None` after the thread's exit hook ran.
fn block_for(state: &ThreadState) -> Option<&'static CounterBlock> {
    if let Some(block) = state.block.get() {
        return Some(block);
    }
    if state.exited.get() {
        return None;
    }
    let block = counters::claim_block()?;
    state.block.set(Some(block));
    // A block handed back by an exited thread keeps its counts; only what this thread does
    // from now on is news to the early wake.
    state.checkpointed_net.set(block.net_bytes());
    // Arming the exit hook registers a TLS destructor, which may allocate (std's fallback
    // registry does); the guard keeps those allocations from sampling, and the block being set
    // keeps them off this path.
    let was_inside = state.in_profiler.replace(true);
    let _ = EXIT_HOOK.try_with(|_| ());
    state.in_profiler.set(was_inside);
    Some(block)
}

/// Applies a new sampler configuration on the calling thread at once.
pub(crate) fn refresh_sampler() {
    let _ = STATE.try_with(|state| {
        let generation = sampler::generation();
        state.generation.set(generation);
        let mut rng = sampler::new_thread_rng();
        let interval = sampler::draw_interval(&mut rng, sampler::sample_rate());
        state.rng.set(rng);
        // Keep the invariant: a positive countdown only with a block.
        if state.block.get().is_some() {
            count_down(state, interval);
        } else {
            state.bytes_until_sample.set(0);
            state.deferred.set(0);
        }
    });
}

/// Marks the thread as running profiler code until dropped: nothing allocated meanwhile is
/// sampled, so the profiler never recurses into itself.
pub(crate) struct ProfilerGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl ProfilerGuard {
    /// Enters the profiler, or `None` if this thread is already inside it (or is exiting).
    pub(crate) fn enter() -> Option<Self> {
        let fresh = STATE.try_with(|state| !state.in_profiler.replace(true));
        match fresh {
            Ok(true) => Some(ProfilerGuard {
                _not_send: std::marker::PhantomData,
            }),
            _ => None,
        }
    }
}

impl Drop for ProfilerGuard {
    fn drop(&mut self) {
        let _ = STATE.try_with(|state| state.in_profiler.set(false));
    }
}

/// Which thread allocated a sample: the address of its counter block, the same identity the
/// per-thread byte counts use. A block handed back by an exited thread goes to a later one, which
/// so inherits the tag (and the counts) of its predecessor. Threads without a block share
/// [`ThreadTag::NONE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadTag(usize);

impl ThreadTag {
    /// A thread before its first allocation or after its exit.
    pub(crate) const NONE: ThreadTag = ThreadTag(0);
}

/// The calling thread's tag.
pub(crate) fn current_thread() -> ThreadTag {
    STATE
        .try_with(|state| {
            state.block.get().map_or(ThreadTag::NONE, |block| {
                ThreadTag(std::ptr::from_ref(block) as usize)
            })
        })
        .unwrap_or(ThreadTag::NONE)
}

/// Bytes the calling thread allocated minus the bytes it freed (through its counter block);
/// `None` before its first allocation or after its exit.
pub(crate) fn thread_net_bytes() -> Option<i64> {
    thread_net().map(|(bytes, _)| bytes)
}

/// Bytes and blocks the calling thread allocated minus those it freed; `None` before its first
/// allocation or after its exit.
pub(crate) fn thread_net() -> Option<(i64, i64)> {
    STATE
        .try_with(|state| {
            state
                .block
                .get()
                .map(|block| (block.net_bytes(), block.net_objects()))
        })
        .ok()
        .flatten()
}
