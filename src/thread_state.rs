//! Everything an allocation touches on its thread: the counter block, the sampling countdown,
//! the generator, and the reentrancy guard, in one const-initialised thread-local without a
//! destructor (so access is a plain TLS-relative load and it stays usable while other
//! thread-locals are being destroyed).
//!
//! The fast paths ([`record_alloc`], [`record_free`]) are a countdown, a branch and two owned
//! counter updates. Everything else — a thread's first allocation, a sampling point, a thread
//! that has exited — takes the cold paths below.
//!
//! Data flows down from here: this module reads [`counters`], [`sampler`] and
//! [`early_wake`](crate::early_wake), and none of them names it. That is why the public
//! sampling setters ([`set_sample_rate`], [`reseed_sampler`]) live here: they store the new
//! configuration in the sampler and apply it to the calling thread's countdown at once.

use crate::counters::{self, CounterBlock};
use crate::sampler;
use std::cell::Cell;

/// Longest run of allocation between two checkpoints of a thread, where it reports its net
/// allocation to the early wake ([`crate::early_wake`]). A MiB keeps the report's cost (one
/// shared atomic add) negligible and the watch's view of the heap within a MiB per thread.
const CHECKPOINT_BYTES: i64 = 1 << 20;

struct ThreadState {
    /// This thread's counter block; [`counters::NO_BLOCK`] (whose free gate is always closed)
    /// before the first allocation and after exit, so the free path needs no other check.
    block: Cell<&'static CounterBlock>,
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
    /// Bytes and blocks that heapwatch itself holds through the global allocator and that this
    /// thread's block counted (see [`hold_for_profiler`]): taken out of [`thread_net`].
    held_for_profiler: Cell<(i64, i64)>,
    /// Measuring scopes open on this thread ([`open_scope`]). While any is, every allocation
    /// takes the slow path (the countdown is held at 0), which keeps `peak_net`.
    scopes: Cell<u32>,
    /// While scopes are open: the sampling countdown, moved out of `bytes_until_sample`.
    sampling_left: Cell<i64>,
    /// While scopes are open: the highest [`thread_net`] bytes reached.
    peak_net: Cell<i64>,
    /// While set (a scope that names its call sites is open), allocations not sampled are
    /// decided [`LOG_SITE_ONLY`].
    log_sites: Cell<bool>,
    /// The span the thread is in, as an interned tag (`spans`; 0: none). Written when a span
    /// is entered or left, read only when an allocation is sampled.
    span_tag: Cell<u32>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            block: Cell::new(&counters::NO_BLOCK),
            bytes_until_sample: Cell::new(0),
            deferred: Cell::new(0),
            checkpointed_net: Cell::new(0),
            in_profiler: Cell::new(false),
            exited: Cell::new(false),
            rng: Cell::new(1),
            generation: Cell::new(0),
            held_for_profiler: Cell::new((0, 0)),
            scopes: Cell::new(0),
            sampling_left: Cell::new(0),
            peak_net: Cell::new(0),
            log_sites: Cell::new(false),
            span_tag: Cell::new(0),
        }
    };
    /// Only its destructor matters: it hands the counter block back when the thread exits.
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        let _ = STATE.try_with(|state| {
            // Before the block goes: a positive countdown promises one (see `record_alloc`).
            state.bytes_until_sample.set(0);
            state.deferred.set(0);
            state.sampling_left.set(0);
            if let Some(block) = own_block(state.block.replace(&counters::NO_BLOCK)) {
                checkpoint(state, block);
                counters::release_block(block);
            }
            state.exited.set(true);
        });
    }
}

/// What the slow path decided about an allocation.
pub(crate) enum Decision {
    Skip,
    /// Sample it; the allocation was drawn at this mean rate. Or, with
    /// [`LOG_SITE_ONLY`], not sampled but its call site logged for a budget check
    /// ([`log_sites`]): one variant for both keeps the allocator's inlined fast path as small as
    /// with sampling alone (a third variant made `alloc` too large to inline into its callers).
    Sample {
        rate_bytes: u64,
    },
}

/// The `rate_bytes` of a [`Decision::Sample`] that only logs the allocation's call site.
pub(crate) const LOG_SITE_ONLY: u64 = 0;

/// Counts an allocation and runs the sampling countdown. Returns a sampling decision only when
/// the countdown expired (rare).
#[inline(always)]
pub(crate) fn record_alloc(size: usize) -> Decision {
    let counted = STATE.try_with(|state| {
        let left = state.bytes_until_sample.get();
        // Stored whatever the branch: one subtraction in memory then serves both, and the slow
        // path finds the countdown already charged with this allocation.
        state.bytes_until_sample.set(left.wrapping_sub(size as i64));
        if left > size as i64 {
            // A positive countdown implies a block of the thread's own (the invariant on
            // `bytes_until_sample`), never `NO_BLOCK`.
            state.block.get().add_alloc(size);
            return true;
        }
        false
    });
    if let Ok(true) = counted {
        return Decision::Skip;
    }
    record_alloc_slow(size)
}

/// Takes back a counted allocation that the inner allocator then failed to serve. (The
/// countdown stays spent: a failed attempt is as likely to be drawn as any other, and a sample
/// it would have been is simply not taken.)
#[cold]
#[inline(never)]
pub(crate) fn undo_alloc(size: usize) {
    let undone = STATE.try_with(|state| match own_block(state.block.get()) {
        Some(block) => {
            block.undo_alloc(size);
            true
        }
        None => false,
    });
    if !matches!(undone, Ok(true)) {
        counters::orphan_undo_alloc(size);
    }
}

/// Counts the free of a block that certainly was not sampled, and returns `true`; returns
/// `false`, counting nothing, when the block might have been sampled (its address is at a
/// promoted boundary, or unaligned samples live: see [`filter`](crate::filter)) or the thread
/// has no block of its own. The caller then takes the slow path: the table, then
/// [`record_free`].
///
/// One thread-local load, one test of the address against the block's free gate, two owned
/// counter updates: the gate folds "has a block" and "cannot be a sample" into one branch.
#[inline(always)]
pub(crate) fn record_unsampled_free(addr: usize, size: usize) -> bool {
    let counted = STATE.try_with(|state| {
        let block = state.block.get();
        if block.gate_passes(addr) {
            block.add_free(size);
            return true;
        }
        false
    });
    matches!(counted, Ok(true))
}

/// Counts a free.
#[inline]
pub(crate) fn record_free(size: usize) {
    let counted = STATE.try_with(|state| match own_block(state.block.get()) {
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

/// The thread's own block, or `None` for [`counters::NO_BLOCK`].
#[inline(always)]
fn own_block(block: &'static CounterBlock) -> Option<&'static CounterBlock> {
    (!std::ptr::eq(block, &counters::NO_BLOCK)).then_some(block)
}

/// Takes back a counted free after a failed `realloc` left the block live.
pub(crate) fn undo_free(size: usize) {
    let undone = STATE.try_with(|state| match own_block(state.block.get()) {
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
            // Kept at zero (the fast path charged it): no block, no countdown.
            state.bytes_until_sample.set(0);
            counters::orphan_alloc(size);
            return Decision::Skip;
        };
        block.add_alloc(size);
        // Already charged with this allocation by the fast path.
        let mut left = state.bytes_until_sample.get();
        if state.scopes.get() > 0 {
            let net = net_of(state, block).0;
            // What heapwatch allocates for itself (an unwinder's caches, built inside a
            // sample) is held out of the thread's figures only once built: never a peak.
            if net > state.peak_net.get() && !state.in_profiler.get() {
                state.peak_net.set(net);
            }
            // Every allocation comes here: report to the early wake only as often as the fast
            // path would (a shared atomic per allocation is what the counters avoid).
            if net.wrapping_sub(state.checkpointed_net.get()).abs() >= CHECKPOINT_BYTES {
                checkpoint(state, block);
            }
            left = state.sampling_left.get().wrapping_sub(size as i64);
            state.bytes_until_sample.set(0);
        } else {
            checkpoint(state, block);
        }
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
        let not_sampled = || match state.log_sites.get() && !state.in_profiler.get() {
            true => Decision::Sample {
                rate_bytes: LOG_SITE_ONLY,
            },
            false => Decision::Skip,
        };
        if left > 0 {
            count_down(state, left);
            return not_sampled();
        }
        let rate_bytes = sampler::sample_rate();
        let mut rng = state.rng.get();
        count_down(state, sampler::draw_interval(&mut rng, rate_bytes));
        state.rng.set(rng);
        if rate_bytes == 0 || state.in_profiler.get() {
            return not_sampled();
        }
        Decision::Sample { rate_bytes }
    });
    decision.unwrap_or_else(|_| {
        counters::orphan_alloc(size);
        Decision::Skip
    })
}

/// Arms the countdown for an interval of `bytes`, in chunks of at most [`CHECKPOINT_BYTES`].
/// While a scope is open the chunk waits aside and the fast path stays closed.
fn count_down(state: &ThreadState, bytes: i64) {
    let chunk = bytes.min(CHECKPOINT_BYTES);
    if state.scopes.get() > 0 {
        state.sampling_left.set(chunk);
        state.bytes_until_sample.set(0);
    } else {
        state.bytes_until_sample.set(chunk);
    }
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
    if let Some(block) = own_block(state.block.get()) {
        return Some(block);
    }
    if state.exited.get() {
        return None;
    }
    let block = counters::claim_block()?;
    state.block.set(block);
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

/// Sets the mean sampling interval in bytes; `0` turns stack sampling off (the exact counters
/// keep counting). Takes effect at once on the calling thread and at each other thread's next
/// sampling point (at most 16 MiB of its allocations later when sampling was off).
///
/// Samples already taken keep the rate they were taken at, so estimates stay unbiased across a
/// change.
///
/// ```
/// heapwatch::set_sample_rate(64 * 1024);
/// assert_eq!(heapwatch::sample_rate(), 64 * 1024);
/// heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
/// ```
pub fn set_sample_rate(bytes: u64) {
    sampler::configure_rate(bytes);
    refresh_sampler();
}

/// Restarts every thread's sampling generator from `seed`, making the sampling decisions of a
/// single-threaded, deterministic program reproducible (tests, benchmarks).
///
/// ```
/// heapwatch::reseed_sampler(42);
/// ```
pub fn reseed_sampler(seed: u64) {
    sampler::configure_seed(seed);
    refresh_sampler();
}

/// Applies the sampler's current configuration on the calling thread at once: other threads
/// wait for their next sampling point, but the thread that changed it expects its very next
/// allocation to be drawn at the new rate. (The leak check calls it too, when the rate it needs
/// is already set but this thread may still be counting down an older, coarser interval.)
pub(crate) fn refresh_sampler() {
    let _ = STATE.try_with(|state| {
        let generation = sampler::generation();
        restart_interval(state, generation, sampler::sample_rate());
    });
}

/// Starts a fresh interval at `rate_bytes` from a fresh generator stream, as of configuration
/// `generation`.
fn restart_interval(state: &ThreadState, generation: u64, rate_bytes: u64) {
    state.generation.set(generation);
    let mut rng = sampler::new_thread_rng();
    let interval = sampler::draw_interval(&mut rng, rate_bytes);
    state.rng.set(rng);
    // Keep the invariant: a positive countdown only with a block.
    if own_block(state.block.get()).is_some() {
        count_down(state, interval);
    } else {
        state.bytes_until_sample.set(0);
        state.sampling_left.set(0);
        state.deferred.set(0);
    }
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

    /// A made-up tag, for tests of what is kept per thread.
    #[cfg(test)]
    pub(crate) const fn made_up(id: usize) -> ThreadTag {
        ThreadTag(id)
    }
}

/// The calling thread's tag.
pub(crate) fn current_thread() -> ThreadTag {
    STATE
        .try_with(|state| {
            own_block(state.block.get()).map_or(ThreadTag::NONE, |block| {
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

/// Bytes and blocks the calling thread allocated minus those it freed, less what heapwatch
/// holds of them for itself (the unwinder's and the DWARF reader's heap, when this thread built
/// it); `None` before its first allocation or after its exit.
pub(crate) fn thread_net() -> Option<(i64, i64)> {
    STATE
        .try_with(|state| own_block(state.block.get()).map(|block| net_of(state, block)))
        .ok()
        .flatten()
}

fn net_of(state: &ThreadState, block: &CounterBlock) -> (i64, i64) {
    let held = state.held_for_profiler.get();
    (
        block.net_bytes().wrapping_sub(held.0),
        block.net_objects().wrapping_sub(held.1),
    )
}

/// Counts a `realloc` on the calling thread (its free and allocation are counted as such).
#[inline]
pub(crate) fn record_realloc() {
    let _ = STATE.try_with(|state| {
        if let Some(block) = own_block(state.block.get()) {
            block.add_realloc();
        }
    });
}

/// The calling thread's exact figures at one moment, for measuring scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadFigures {
    /// The counter block's totals.
    pub totals: counters::BlockTotals,
    /// What heapwatch holds for itself of them (bytes, blocks).
    pub held_for_profiler: (i64, i64),
    /// The highest net bytes (allocated − freed − held) reached while scopes were open.
    pub peak_net: i64,
}

impl ThreadFigures {
    /// Net bytes: allocated − freed − held for the profiler.
    pub(crate) fn net_bytes(&self) -> i64 {
        (self
            .totals
            .allocated_bytes
            .wrapping_sub(self.totals.freed_bytes) as i64)
            .wrapping_sub(self.held_for_profiler.0)
    }
}

/// Where a measuring scope began, for [`close_scope`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScopeStart {
    pub figures: ThreadFigures,
    /// The enclosing scope's peak so far, restored (raised by this scope's) at close.
    outer_peak: i64,
}

/// Opens a measuring scope on the calling thread: from now until [`close_scope`], every
/// allocation takes the slow path, which tracks the peak of the thread's net bytes. `None`
/// when the thread can have no counter block (its exit hook ran, or the C heap is exhausted).
pub(crate) fn open_scope() -> Option<ScopeStart> {
    STATE
        .try_with(|state| {
            let block = block_for(state)?;
            let net = net_of(state, block).0;
            let outer_peak = state.peak_net.replace(net);
            if state.scopes.get() == 0 {
                // The countdown moves aside; with 0 left, every allocation is slow.
                state.sampling_left.set(state.bytes_until_sample.replace(0));
            }
            state.scopes.set(state.scopes.get() + 1);
            Some(ScopeStart {
                figures: figures_of(state, block),
                outer_peak,
            })
        })
        .ok()
        .flatten()
}

/// The calling thread's figures now (the peak is kept only while a scope is open).
pub(crate) fn figures() -> ThreadFigures {
    STATE
        .try_with(|state| {
            own_block(state.block.get())
                .map_or_else(ThreadFigures::default, |block| figures_of(state, block))
        })
        .unwrap_or_default()
}

fn figures_of(state: &ThreadState, block: &CounterBlock) -> ThreadFigures {
    ThreadFigures {
        totals: block.totals(),
        held_for_profiler: state.held_for_profiler.get(),
        peak_net: state.peak_net.get(),
    }
}

/// Closes a scope [`open_scope`] opened: the last one open gives the countdown back to the
/// fast path. Scopes close innermost first; one closed out of order leaves its enclosing
/// scope's peak possibly low, nothing worse.
pub(crate) fn close_scope(start: &ScopeStart) {
    let _ = STATE.try_with(|state| {
        let open = state.scopes.get().saturating_sub(1);
        state.scopes.set(open);
        let peak = state.peak_net.get().max(start.outer_peak);
        state.peak_net.set(peak);
        if open == 0 {
            // Back to the fast path, keeping the invariant (positive only with a block).
            let left = state.sampling_left.replace(0);
            if own_block(state.block.get()).is_some() {
                state.bytes_until_sample.set(left);
            }
            // Allocation in the scope reported itself only every CHECKPOINT_BYTES of drift;
            // the fast path's next checkpoint reports the rest.
        }
    });
}

/// Turns on (or off) [`LOG_SITE_ONLY`] decisions for the calling thread's allocations while a
/// scope is open; returns the previous setting.
pub(crate) fn log_sites(on: bool) -> bool {
    STATE
        .try_with(|state| state.log_sites.replace(on))
        .unwrap_or(false)
}

/// The calling thread's span tag (0: none, or the thread is exiting).
pub(crate) fn span_tag() -> u32 {
    STATE.try_with(|state| state.span_tag.get()).unwrap_or(0)
}

/// Sets the calling thread's span tag.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))] // only the span layer sets it
pub(crate) fn set_span_tag(tag: u32) {
    let _ = STATE.try_with(|state| state.span_tag.set(tag));
}

/// Records `bytes` and `objects` (negative: given back) that heapwatch holds through the global
/// allocator, measured on the calling thread: out of the process's counters
/// ([`counters::hold_for_profiler`]) and out of this thread's own figure ([`thread_net`]), which
/// a leak check reads, so the profiler's first sample on a checked thread is not a leak.
#[cfg_attr(
    not(any(feature = "dwarf", feature = "cached-unwinder")),
    allow(dead_code)
)] // only the DWARF reader and the caching unwinder hold heap
pub(crate) fn hold_for_profiler(bytes: i64, objects: i64) {
    counters::hold_for_profiler(bytes, objects);
    let _ = STATE.try_with(|state| {
        let (held_bytes, held_objects) = state.held_for_profiler.get();
        state.held_for_profiler.set((
            held_bytes.wrapping_add(bytes),
            held_objects.wrapping_add(objects),
        ));
    });
}

/// Serialises the unit tests that touch process-wide allocator state: counter blocks (which
/// thread gets which), the early wake's running figure, the orphan counters and the live-sample
/// table. The lib's test binary does not run heapwatch as its global allocator, so these tests
/// are the only writers; holding this makes their before/after figures exact.
#[cfg(test)]
pub(crate) fn serial_test_guard() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on a new thread, whose state starts blank and whose exit hook has run by the time
/// this returns. Tests claim counter blocks only there: a block claimed by a test harness
/// thread would outlive the test.
#[cfg(test)]
pub(crate) fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("test thread panicked")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::early_wake;

    fn with_state<T>(f: impl FnOnce(&ThreadState) -> T) -> T {
        STATE.with(f)
    }

    /// Claims the calling thread's counter block, reporting nothing to the early wake.
    fn claim_block() -> &'static CounterBlock {
        let _ = record_alloc(0);
        with_state(|state| own_block(state.block.get())).expect("a block")
    }

    /// Runs `step` until no configuration change landed during it: the leak check's unit test
    /// sets the sample rate while these run, and a new generation makes the slow path start a
    /// fresh interval, which an exact expectation cannot foresee.
    fn with_stable_generation<T>(mut step: impl FnMut(u64) -> T) -> T {
        loop {
            let generation = sampler::generation();
            let out = step(generation);
            if sampler::generation() == generation {
                return out;
            }
        }
    }

    /// Arms the countdown by hand: `countdown` bytes to the next slow path, `deferred` beyond.
    fn arm(state: &ThreadState, generation: u64, countdown: i64, deferred: i64) {
        state.generation.set(generation);
        state.bytes_until_sample.set(countdown);
        state.deferred.set(deferred);
    }

    #[test]
    fn profiler_guard_refuses_to_nest_and_a_refusal_leaves_the_outer_guard_in_force() {
        on_fresh_thread(|| {
            let inside = || with_state(|state| state.in_profiler.get());
            let outer = ProfilerGuard::enter().expect("first entry");
            assert!(inside());
            assert!(ProfilerGuard::enter().is_none(), "re-entry while inside");
            assert!(inside(), "a refused entry must not end the outer one");
            drop(outer);
            assert!(!inside());
            let again = ProfilerGuard::enter();
            assert!(again.is_some(), "entry after the guard dropped");
        });
    }

    #[test]
    fn fast_path_counts_down_and_counts_the_block() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            let block = claim_block();
            with_stable_generation(|generation| {
                with_state(|state| arm(state, generation, 10_000, 0));
                let net = block.net_bytes();
                assert!(matches!(record_alloc(100), Decision::Skip));
                assert_eq!(with_state(|s| s.bytes_until_sample.get()), 9_900);
                assert_eq!(block.net_bytes(), net + 100);
                record_free(40);
                assert_eq!(block.net_bytes(), net + 60);
                undo_free(40);
                assert_eq!(block.net_bytes(), net + 100);
                assert_eq!(thread_net_bytes(), Some(net + 100));
            });
        });
    }

    #[test]
    fn an_interval_continues_past_a_checkpoint_instead_of_being_redrawn() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            claim_block();
            let deferred = 5 << 20;
            let (countdown, left) = with_stable_generation(|generation| {
                with_state(|state| arm(state, generation, 1, deferred));
                assert!(matches!(record_alloc(16), Decision::Skip));
                with_state(|s| (s.bytes_until_sample.get(), s.deferred.get()))
            });
            assert_eq!(countdown, CHECKPOINT_BYTES, "counted down in chunks");
            assert_eq!(
                countdown + left,
                deferred + 1 - 16,
                "the same interval goes on"
            );
        });
    }

    #[test]
    fn a_new_generation_restarts_the_interval_at_the_next_sampling_point() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            claim_block();
            // A thread that last applied an older configuration, with far to go.
            let stale = sampler::generation() - 1;
            with_state(|state| arm(state, stale, 1, 1 << 40));
            let _ = record_alloc(16);
            let (generation, countdown, deferred) = with_state(|s| {
                (
                    s.generation.get(),
                    s.bytes_until_sample.get(),
                    s.deferred.get(),
                )
            });
            assert!(generation > stale, "the new configuration applied");
            assert!(countdown > 0 && countdown <= CHECKPOINT_BYTES);
            // A fresh draw at any rate in use (mean ≤ 16 MiB) is nowhere near 2^40.
            assert!(countdown + deferred < 1 << 30, "{countdown} + {deferred}");
        });
    }

    #[test]
    fn a_sampling_point_samples_unless_the_thread_is_inside_the_profiler() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            claim_block();
            let decide = |inside: bool| {
                with_stable_generation(|generation| {
                    with_state(|state| arm(state, generation, 1, 0));
                    let _guard = inside.then(|| ProfilerGuard::enter().expect("entry"));
                    matches!(record_alloc(4096), Decision::Sample { .. })
                })
            };
            assert!(decide(false), "the countdown ran out");
            assert!(
                !decide(true),
                "the profiler's own allocations are never sampled"
            );
            assert!(decide(false), "the guard's drop let sampling resume");
        });
    }

    #[test]
    fn a_scope_sends_every_allocation_to_the_slow_path_and_keeps_the_sampling_interval() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            let block = claim_block();
            with_stable_generation(|generation| {
                with_state(|state| arm(state, generation, 10_000, 0));
                let start = open_scope().expect("a block");
                let net = block.net_bytes();
                for _ in 0..3 {
                    assert!(matches!(record_alloc(100), Decision::Skip));
                    // Held at 0: the next allocation takes the slow path too.
                    assert_eq!(with_state(|s| s.bytes_until_sample.get()), 0);
                }
                assert_eq!(with_state(|s| s.sampling_left.get()), 10_000 - 300);
                record_free(300);
                assert!(matches!(record_alloc(50), Decision::Skip));
                let figures = figures();
                assert_eq!(figures.peak_net - start.figures.net_bytes(), 300);
                assert_eq!(
                    figures.totals.allocated_objects - start.figures.totals.allocated_objects,
                    4
                );
                assert_eq!(block.net_bytes(), net + 50);
                close_scope(&start);
                // The interval goes on where it was, on the fast path again.
                assert_eq!(with_state(|s| s.bytes_until_sample.get()), 10_000 - 350);
                assert!(matches!(record_alloc(100), Decision::Skip));
                assert_eq!(with_state(|s| s.bytes_until_sample.get()), 10_000 - 450);
            });
        });
    }

    #[test]
    fn inside_a_scope_sampling_points_still_sample_and_logging_asks_for_the_site() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            claim_block();
            with_stable_generation(|generation| {
                with_state(|state| arm(state, generation, 150, 0));
                let start = open_scope().expect("a block");
                assert!(matches!(record_alloc(100), Decision::Skip));
                assert!(matches!(record_alloc(100), Decision::Sample { .. }));
                assert_eq!(
                    with_state(|s| s.bytes_until_sample.get()),
                    0,
                    "a new interval waits aside while the scope is open"
                );
                assert!(!log_sites(true));
                assert!(matches!(
                    record_alloc(10),
                    Decision::Sample {
                        rate_bytes: LOG_SITE_ONLY
                    }
                ));
                {
                    let _inside = ProfilerGuard::enter().expect("entry");
                    assert!(
                        matches!(record_alloc(10), Decision::Skip),
                        "heapwatch's own allocations are not logged"
                    );
                }
                assert!(log_sites(false));
                assert!(matches!(record_alloc(10), Decision::Skip));

                // Nested: the inner scope's peak is its own; the outer one keeps the higher.
                let inner = open_scope().expect("a block");
                assert!(matches!(record_alloc(1000), Decision::Skip));
                record_free(1000);
                assert_eq!(figures().peak_net - inner.figures.net_bytes(), 1000);
                close_scope(&inner);
                assert_eq!(figures().peak_net - start.figures.net_bytes(), 230 + 1000);
                close_scope(&start);
                assert!(with_state(|s| s.bytes_until_sample.get()) > 0);
            });
        });
    }

    #[test]
    fn reseeding_restarts_the_calling_threads_countdown_at_once() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            claim_block();
            let before = sampler::generation();
            with_state(|state| arm(state, before, 1 << 40, 0));
            reseed_sampler(0x5eed);
            let (generation, countdown, deferred) = with_state(|s| {
                (
                    s.generation.get(),
                    s.bytes_until_sample.get(),
                    s.deferred.get(),
                )
            });
            assert!(
                generation > before,
                "applied without waiting for a sampling point"
            );
            assert!(countdown > 0 && countdown + deferred < 1 << 30);
        });
        on_fresh_thread(|| {
            reseed_sampler(0x5eed);
            assert_eq!(
                with_state(|s| s.bytes_until_sample.get()),
                0,
                "no positive countdown without a block: the first allocation takes the slow path"
            );
        });
    }

    #[test]
    fn turning_sampling_off_rechecks_in_checkpoint_chunks() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            with_state(|state| {
                restart_interval(state, sampler::generation(), 0);
                assert_eq!(state.bytes_until_sample.get(), 0, "no block yet");
            });
            claim_block();
            with_state(|state| {
                restart_interval(state, sampler::generation(), 0);
                assert_eq!(state.bytes_until_sample.get(), CHECKPOINT_BYTES);
                assert_eq!(
                    state.deferred.get(),
                    sampler::OFF_RECHECK_BYTES - CHECKPOINT_BYTES
                );
            });
        });
    }

    #[test]
    fn thread_exit_reports_the_rest_to_the_early_wake_and_hands_the_block_on() {
        let _serial = serial_test_guard();
        let approx_before = early_wake::approx_live();
        let (block, net) = on_fresh_thread(|| {
            let block = claim_block();
            // Small enough that no checkpoint but the first allocation's falls inside.
            for size in [3000, 5000] {
                let _ = record_alloc(size);
            }
            record_free(1000);
            assert_eq!(
                current_thread(),
                ThreadTag(std::ptr::from_ref(block) as usize)
            );
            (block, block.net_bytes())
        });
        assert_eq!(
            early_wake::approx_live() - approx_before,
            7000,
            "what the thread allocated net reached the early wake by its exit"
        );
        assert!(!block.in_use(), "handed back at exit");
        assert_eq!(block.net_bytes(), net, "its counts stay in the sums");
        let (inherited, inherited_net) = on_fresh_thread(|| {
            let block = claim_block();
            (block, thread_net_bytes())
        });
        assert!(
            std::ptr::eq(inherited, block),
            "the next new thread reuses it"
        );
        assert_eq!(inherited_net, Some(net), "with its counts");
        assert_eq!(
            early_wake::approx_live() - approx_before,
            7000,
            "an inherited block's counts are not news to the early wake"
        );
    }

    #[test]
    fn allocations_after_the_exit_hook_count_as_orphans() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static LATE_SAW_NO_BLOCK: AtomicBool = AtomicBool::new(false);
        extern "C" fn late(_: *mut libc::c_void) {
            // Runs after every Rust thread-local destructor (glibc calls pthread key
            // destructors last), so heapwatch's exit hook has run.
            let _ = record_alloc(24);
            record_free(24);
            let no_block = current_thread() == ThreadTag::NONE && thread_net().is_none();
            LATE_SAW_NO_BLOCK.store(no_block, Ordering::Relaxed);
        }
        let _serial = serial_test_guard();
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: creating a key with a valid `extern "C"` destructor.
        assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(late)) }, 0);
        let orphans_before = counters::__orphan_allocated_objects();
        on_fresh_thread(move || {
            claim_block();
            // SAFETY: a live key; the value is never dereferenced, only non-null so that the
            // destructor runs.
            unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<u8>().cast()) };
        });
        assert!(LATE_SAW_NO_BLOCK.load(Ordering::Relaxed));
        assert_eq!(counters::__orphan_allocated_objects(), orphans_before + 1);
        // SAFETY: no thread uses the key any more.
        unsafe { libc::pthread_key_delete(key) };
    }
}
