//! The live-sample table: every sampled allocation still live, keyed by address, with its stack
//! interned once, plus per-stack totals of everything ever sampled (for `alloc_*`).
//!
//! Touched only on sampled allocations, on frees the filter flags, and by snapshots, under one
//! mutex. All of its memory comes from [`ProfilerAlloc`], never from the global allocator, so
//! no code under the lock can re-enter the allocator; failures to grow drop the sample (and
//! count it) instead of aborting.

use crate::filter;
use crate::internal_alloc::ProfilerAlloc;
use crate::thread_state::{self, ThreadTag};
use allocator_api2::vec::Vec as PVec;
use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashTable};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// 65,536 distinct stacks: far more call sites than a service has, while bounding the worst
/// case (deep recursion producing endless distinct stacks) to a few MiB. Past it, samples are
/// attributed to one overflow stack so totals stay right.
const MAX_STACKS: usize = 1 << 16;

/// The stack id that stands for "stack table full".
pub(crate) const OVERFLOW_STACK: u32 = u32::MAX;

/// A fixed seed: the table is private, so no hash-flooding adversary can pick addresses.
const HASHER: FixedState = FixedState::with_seed(0x5eed_0000_0000_0001);

/// One live sampled block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveSample {
    stack: u32,
    size: u64,
    rate_bytes: u64,
    /// The allocating thread (see [`thread_state::current_thread`]), so a thread can read
    /// back what it alone keeps alive.
    thread: ThreadTag,
    /// Allocated at a promoted layout (see [`filter`]): it must be freed at that layout.
    promoted: bool,
}

impl LiveSample {
    /// Whether the block was allocated at a promoted layout, which its free must use.
    pub(crate) fn promoted(&self) -> bool {
        self.promoted
    }
}

struct StackEntry {
    frames_start: u32,
    frames_len: u32,
    hash: u64,
    /// The span tag the stack's allocations were made under (`spans`; 0: none): a stack
    /// under two spans is two entries, so every figure splits by span.
    span: u32,
    /// Unbiased estimates of everything allocated at this stack, freed or not.
    alloc_objects: f64,
    alloc_bytes: f64,
}

struct Table {
    live: HashMap<usize, LiveSample, FixedState, ProfilerAlloc>,
    /// Live samples per filter slot, to know when a slot's bit may be cleared.
    slot_counts: HashMap<u32, u32, FixedState, ProfilerAlloc>,
    frames: PVec<usize, ProfilerAlloc>,
    stacks: PVec<StackEntry, ProfilerAlloc>,
    stack_index: HashTable<u32, ProfilerAlloc>,
    overflow_alloc_objects: f64,
    overflow_alloc_bytes: f64,
    dropped_samples: u64,
}

static TABLE: crate::fork::HeldAcrossFork<Mutex<Table>> = crate::fork::HeldAcrossFork::new(
    crate::fork::Rank::Table,
    &FORK_HOOKS,
    Mutex::new(Table::new()),
);

fn lock() -> MutexGuard<'static, Table> {
    // Nothing under this lock panics; if something ever did, the table is still consistent
    // enough to read, and an allocator must not propagate a panic.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

// The table's lock, held across a fork (see `fork`).
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let table = TABLE.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, table.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: crate::fork::GuardSlot<MutexGuard<'static, Table>> =
    crate::fork::GuardSlot::new();

/// What a sampled allocation is, for [`insert`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewSample {
    pub(crate) size: u64,
    /// The mean interval it was drawn at.
    pub(crate) rate_bytes: u64,
    /// Allocated at a promoted layout (see [`filter`]).
    pub(crate) promoted: bool,
    /// The allocating thread's span tag (`spans`; 0: none).
    pub(crate) span: u32,
}

/// Records a sampled allocation at `addr` whose stack (innermost first) is `frames`, made by the
/// calling thread. `false` if there was no memory to keep it as a live sample: a promoted block
/// must then not be handed out, since its free would not know its layout.
pub(crate) fn insert(addr: usize, sample: NewSample, frames: &[usize]) -> bool {
    let thread = thread_state::current_thread();
    // The weight's `exp` before the lock, not under it.
    let weight = crate::sampler::unbias_factor(sample.size, sample.rate_bytes);
    lock().record_weighted(addr, sample, weight, frames, thread)
}

/// What [`remove_unless_promoted`] found at an address.
pub(crate) enum Tracked {
    /// No live sample.
    No,
    /// A sample at the caller's layout, now forgotten.
    Unpromoted(LiveSample),
    /// A sample at a promoted layout, still in the table.
    Promoted,
}

/// For `realloc`: forgets the sample at `addr` unless its block is promoted (which `realloc`
/// moves, and frees through the ordinary path).
pub(crate) fn remove_unless_promoted(addr: usize) -> Tracked {
    let _inside = thread_state::ProfilerGuard::enter();
    let mut table = lock();
    match table.live.get(&addr) {
        None => Tracked::No,
        Some(sample) if sample.promoted => Tracked::Promoted,
        Some(_) => table
            .remove_live(addr)
            .map_or(Tracked::No, Tracked::Unpromoted),
    }
}

/// Puts back a sample removed by a `realloc` that then failed.
pub(crate) fn reinsert(addr: usize, sample: LiveSample) {
    let _inside = thread_state::ProfilerGuard::enter();
    let mut table = lock();
    if !table.add_live(addr, sample) {
        table.dropped_samples += 1;
    }
}

/// Forgets the sample at `addr`, if there is one; returns it.
pub(crate) fn remove(addr: usize) -> Option<LiveSample> {
    // Marks this thread as inside heapwatch while it holds the lock (if an outer guard does
    // not already), so that a fork from a signal handler interrupting it does not try to take
    // the lock again (see `fork`). Frees are not sampled, so nothing else changes.
    let _inside = thread_state::ProfilerGuard::enter();
    lock().remove_live(addr)
}

impl Table {
    const fn new() -> Table {
        Table {
            live: HashMap::with_hasher_in(HASHER, ProfilerAlloc),
            slot_counts: HashMap::with_hasher_in(HASHER, ProfilerAlloc),
            frames: PVec::new_in(ProfilerAlloc),
            stacks: PVec::new_in(ProfilerAlloc),
            stack_index: HashTable::new_in(ProfilerAlloc),
            overflow_alloc_objects: 0.0,
            overflow_alloc_bytes: 0.0,
            dropped_samples: 0,
        }
    }

    /// Records a sampled allocation: its stack's `alloc_*` totals and a live sample.
    #[cfg(test)]
    fn record(
        &mut self,
        addr: usize,
        size: u64,
        rate_bytes: u64,
        frames: &[usize],
        thread: ThreadTag,
    ) {
        let weight = crate::sampler::unbias_factor(size, rate_bytes);
        let sample = NewSample {
            size,
            rate_bytes,
            promoted: false,
            span: 0,
        };
        self.record_weighted(addr, sample, weight, frames, thread);
    }

    /// Records a sample, which stands for `weight` allocations (see `sampler::unbias_factor`);
    /// `false` if it could not be kept live.
    fn record_weighted(
        &mut self,
        addr: usize,
        new: NewSample,
        weight: f64,
        frames: &[usize],
        thread: ThreadTag,
    ) -> bool {
        let size = new.size;
        let stack = self.intern(frames, new.span);
        if stack == OVERFLOW_STACK {
            self.overflow_alloc_objects += weight;
            self.overflow_alloc_bytes += weight * size as f64;
        } else if let Some(entry) = self.stacks.get_mut(stack as usize) {
            entry.alloc_objects += weight;
            entry.alloc_bytes += weight * size as f64;
        }
        let sample = LiveSample {
            stack,
            size,
            rate_bytes: new.rate_bytes,
            thread,
            promoted: new.promoted,
        };
        let kept = self.add_live(addr, sample);
        if !kept {
            self.dropped_samples += 1;
        }
        kept
    }

    /// Forgets the live sample at `addr`, clearing its filter slot once no other sample is in
    /// it; returns the sample.
    fn remove_live(&mut self, addr: usize) -> Option<LiveSample> {
        let sample = self.live.remove(&addr)?;
        filter::note_sample(addr, false);
        let slot = filter::slot(addr);
        let now_empty = match self.slot_counts.get_mut(&slot) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => true,
        };
        if now_empty {
            self.slot_counts.remove(&slot);
            filter::clear(slot);
        }
        Some(sample)
    }

    /// Adds a live sample and marks its filter slot; `false` if memory for it ran out.
    fn add_live(&mut self, addr: usize, sample: LiveSample) -> bool {
        if self.live.try_reserve(1).is_err() || self.slot_counts.try_reserve(1).is_err() {
            return false;
        }
        if self.live.insert(addr, sample).is_some() {
            // The address was already tracked (its free was never seen, e.g. it was released
            // by a path that bypassed the allocator); the slot is already counted.
            return true;
        }
        filter::note_sample(addr, true);
        let slot = filter::slot(addr);
        *self.slot_counts.entry(slot).or_insert(0) += 1;
        filter::set(slot);
        true
    }

    /// The id of `frames` under span tag `span`, interning it on first sight.
    fn intern(&mut self, frames: &[usize], span: u32) -> u32 {
        let hash = HASHER.hash_one((frames, span));
        let Table {
            frames: arena,
            stacks,
            stack_index,
            ..
        } = self;
        let found = stack_index.find(hash, |&id| {
            let entry = &stacks[id as usize];
            entry.hash == hash
                && entry.span == span
                && arena[entry.frames_start as usize..][..entry.frames_len as usize] == *frames
        });
        if let Some(&id) = found {
            return id;
        }
        if stacks.len() >= MAX_STACKS
            || arena.len() + frames.len() > u32::MAX as usize
            || arena.try_reserve(frames.len()).is_err()
            || stacks.try_reserve(1).is_err()
            || stack_index
                .try_reserve(1, |&id| stacks[id as usize].hash)
                .is_err()
        {
            return OVERFLOW_STACK;
        }
        let id = stacks.len() as u32;
        let frames_start = arena.len() as u32;
        arena.extend_from_slice(frames);
        stacks.push(StackEntry {
            frames_start,
            frames_len: frames.len() as u32,
            hash,
            span,
            alloc_objects: 0.0,
            alloc_bytes: 0.0,
        });
        stack_index.insert_unique(hash, id, |&id| stacks[id as usize].hash);
        id
    }
}

/// One stack's figures in a raw snapshot (estimates, before rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RawStackTotals {
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    pub inuse_objects: f64,
    pub inuse_bytes: f64,
}

/// One stack of a raw snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RawStack {
    /// Where its return addresses start in [`RawSnapshot::frames`].
    pub start: u32,
    /// How many there are (0 for the overflow stack).
    pub len: u32,
    /// The span tag its allocations were made under (`spans`; 0: none).
    pub span: u32,
    pub totals: RawStackTotals,
}

/// A copy of the table taken under the lock, in profiler memory, for the snapshot builder to
/// read without holding the lock.
pub(crate) struct RawSnapshot {
    /// Return addresses of all stacks, concatenated.
    pub frames: PVec<usize, ProfilerAlloc>,
    /// Per stack: where its frames are, its span and its totals. The overflow stack, if used,
    /// is last with an empty frame range.
    pub stacks: PVec<RawStack, ProfilerAlloc>,
    pub overflowed: bool,
}

/// Whose live samples a snapshot counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole process: live and allocated figures.
    Process,
    /// Only blocks still live that this thread allocated; the `alloc_*` figures are left at
    /// zero, since they are kept per stack, not per thread.
    Thread(ThreadTag),
}

/// Copies the table. `None` if profiler memory for the copy could not be had.
pub(crate) fn raw_snapshot(scope: Scope) -> Option<RawSnapshot> {
    let mut raw = RawSnapshot::empty();
    lock().copy_into(scope, &mut raw).then_some(raw)
}

/// Copies the table into `raw`, reusing its buffers: a copy that fits their capacity allocates
/// nothing (the dump near the limit). `false`, with `raw` left empty, if profiler memory for
/// a larger copy could not be had.
pub(crate) fn raw_snapshot_into(scope: Scope, raw: &mut RawSnapshot) -> bool {
    lock().copy_into(scope, raw)
}

/// How many stacks and return addresses the table holds: what a copy of it needs.
pub(crate) fn raw_size() -> (usize, usize) {
    let table = lock();
    (table.stacks.len() + 1, table.frames.len())
}

impl RawSnapshot {
    /// A snapshot with no stack and no buffer yet.
    pub(crate) fn empty() -> Self {
        RawSnapshot {
            frames: PVec::new_in(ProfilerAlloc),
            stacks: PVec::new_in(ProfilerAlloc),
            overflowed: false,
        }
    }

    /// Grows the buffers to hold `stacks` stacks and `frames` return addresses.
    pub(crate) fn reserve(&mut self, stacks: usize, frames: usize) {
        let _ = self
            .stacks
            .try_reserve(stacks.saturating_sub(self.stacks.len()));
        let _ = self
            .frames
            .try_reserve(frames.saturating_sub(self.frames.len()));
    }
}

impl Table {
    /// A fresh copy, as [`raw_snapshot`] hands it out.
    #[cfg(test)]
    fn copy(&self, scope: Scope) -> Option<RawSnapshot> {
        let mut raw = RawSnapshot::empty();
        self.copy_into(scope, &mut raw).then_some(raw)
    }

    /// The copy [`raw_snapshot`] and [`raw_snapshot_into`] hand out.
    fn copy_into(&self, scope: Scope, raw: &mut RawSnapshot) -> bool {
        let RawSnapshot {
            frames,
            stacks,
            overflowed: raw_overflowed,
        } = raw;
        frames.clear();
        stacks.clear();
        *raw_overflowed = false;
        if frames.try_reserve(self.frames.len()).is_err()
            || stacks.try_reserve(self.stacks.len() + 1).is_err()
        {
            return false;
        }
        frames.extend_from_slice(&self.frames);
        let allocated = |objects: f64, bytes: f64| match scope {
            Scope::Process => RawStackTotals {
                alloc_objects: objects,
                alloc_bytes: bytes,
                ..RawStackTotals::default()
            },
            Scope::Thread(_) => RawStackTotals::default(),
        };
        for entry in self.stacks.iter() {
            stacks.push(RawStack {
                start: entry.frames_start,
                len: entry.frames_len,
                span: entry.span,
                totals: allocated(entry.alloc_objects, entry.alloc_bytes),
            });
        }
        let overflowed = self.overflow_alloc_objects > 0.0;
        let overflow_index = stacks.len();
        if overflowed {
            stacks.push(RawStack {
                start: 0,
                len: 0,
                span: 0,
                totals: allocated(self.overflow_alloc_objects, self.overflow_alloc_bytes),
            });
        }
        let counted = |sample: &&LiveSample| match scope {
            Scope::Process => true,
            Scope::Thread(thread) => sample.thread == thread,
        };
        for sample in self.live.values().filter(counted) {
            let index = if sample.stack == OVERFLOW_STACK {
                overflow_index
            } else {
                sample.stack as usize
            };
            if let Some(RawStack { totals, .. }) = stacks.get_mut(index) {
                let weight = crate::sampler::unbias_factor(sample.size, sample.rate_bytes);
                totals.inuse_objects += weight;
                totals.inuse_bytes += weight * sample.size as f64;
            }
        }
        *raw_overflowed = overflowed;
        true
    }
}

/// One stack of the table in a [`MergedSnapshot`]: which merged stack it is, under which span,
/// with which figures.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SpanStack {
    /// Its index in [`MergedSnapshot::raw`]'s stacks.
    pub stack: u32,
    /// The span tag (`spans`; 0: none).
    pub span: u32,
    pub totals: RawStackTotals,
}

/// A copy of the table for the HTTP pages: the stacks that differ only by span share one
/// list of return addresses, so a heap of many spans × a few call paths copies the call paths
/// once (1,024 spans over 70 stacks is 70 lists, not 71,680).
#[cfg(feature = "http")]
pub(crate) struct MergedSnapshot {
    /// One stack per distinct list of return addresses, span 0, figures summed over spans;
    /// the overflow stack, if used, last.
    pub raw: RawSnapshot,
    /// Every stack of the table (the overflow stack last, if used), split by span.
    pub by_span: PVec<SpanStack, ProfilerAlloc>,
}

/// Copies the table merged by return addresses (process scope). `admit` is told, before they
/// are allocated, how many distinct stacks and return addresses the copy keeps beyond one
/// [`SpanStack`] per stack, and may refuse (`None` then, as when profiler memory runs out).
#[cfg(feature = "http")]
pub(crate) fn merged_snapshot(admit: impl FnOnce(usize, usize) -> bool) -> Option<MergedSnapshot> {
    lock().merged(admit)
}

#[cfg(feature = "http")]
impl Table {
    fn frames_of(&self, entry: &StackEntry) -> &[usize] {
        &self.frames[entry.frames_start as usize..][..entry.frames_len as usize]
    }

    fn merged(&self, admit: impl FnOnce(usize, usize) -> bool) -> Option<MergedSnapshot> {
        let count = self.stacks.len();
        // The first stack holding each distinct list, and each stack's distinct index.
        let mut firsts: PVec<u32, ProfilerAlloc> = PVec::new_in(ProfilerAlloc);
        let mut merged_of: PVec<u32, ProfilerAlloc> = PVec::new_in(ProfilerAlloc);
        let mut index: HashTable<u32, ProfilerAlloc> = HashTable::new_in(ProfilerAlloc);
        merged_of.try_reserve_exact(count).ok()?;
        // Reserved whole up front, so no insertion below ever rehashes.
        index.try_reserve(count, |_| 0).ok()?;
        let mut distinct_frames = 0usize;
        for entry in self.stacks.iter() {
            let frames = self.frames_of(entry);
            let hash = HASHER.hash_one(frames);
            let same =
                |&d: &u32| self.frames_of(&self.stacks[firsts[d as usize] as usize]) == frames;
            let merged = match index.find(hash, same).copied() {
                Some(d) => d,
                None => {
                    let d = firsts.len() as u32;
                    firsts.try_reserve(1).ok()?;
                    firsts.push(merged_of.len() as u32);
                    index.insert_unique(hash, d, |_| hash);
                    distinct_frames += frames.len();
                    d
                }
            };
            merged_of.push(merged);
        }
        drop(index);
        let overflowed = self.overflow_alloc_objects > 0.0;
        let distinct = firsts.len() + usize::from(overflowed);
        if !admit(distinct, distinct_frames) {
            return None;
        }
        let mut raw = RawSnapshot::empty();
        let mut by_span: PVec<SpanStack, ProfilerAlloc> = PVec::new_in(ProfilerAlloc);
        raw.frames.try_reserve_exact(distinct_frames).ok()?;
        raw.stacks.try_reserve_exact(distinct).ok()?;
        by_span.try_reserve_exact(count + 1).ok()?;
        for &first in firsts.iter() {
            let entry = &self.stacks[first as usize];
            let start = raw.frames.len() as u32;
            raw.frames.extend_from_slice(self.frames_of(entry));
            raw.stacks.push(RawStack {
                start,
                len: entry.frames_len,
                span: 0,
                totals: RawStackTotals::default(),
            });
        }
        for (entry, &merged) in self.stacks.iter().zip(merged_of.iter()) {
            by_span.push(SpanStack {
                stack: merged,
                span: entry.span,
                totals: RawStackTotals {
                    alloc_objects: entry.alloc_objects,
                    alloc_bytes: entry.alloc_bytes,
                    ..RawStackTotals::default()
                },
            });
        }
        if overflowed {
            raw.stacks.push(RawStack {
                start: 0,
                len: 0,
                span: 0,
                totals: RawStackTotals::default(),
            });
            by_span.push(SpanStack {
                stack: distinct as u32 - 1,
                span: 0,
                totals: RawStackTotals {
                    alloc_objects: self.overflow_alloc_objects,
                    alloc_bytes: self.overflow_alloc_bytes,
                    ..RawStackTotals::default()
                },
            });
        }
        for sample in self.live.values() {
            let index = if sample.stack == OVERFLOW_STACK {
                count
            } else {
                sample.stack as usize
            };
            if let Some(SpanStack { totals, .. }) = by_span.get_mut(index) {
                let weight = crate::sampler::unbias_factor(sample.size, sample.rate_bytes);
                totals.inuse_objects += weight;
                totals.inuse_bytes += weight * sample.size as f64;
            }
        }
        for split in by_span.iter() {
            if let Some(stack) = raw.stacks.get_mut(split.stack as usize) {
                stack.totals.alloc_objects += split.totals.alloc_objects;
                stack.totals.alloc_bytes += split.totals.alloc_bytes;
                stack.totals.inuse_objects += split.totals.inuse_objects;
                stack.totals.inuse_bytes += split.totals.inuse_bytes;
            }
        }
        raw.overflowed = overflowed;
        Some(MergedSnapshot { raw, by_span })
    }
}

/// Estimated live bytes per span tag (`spans`), unordered; tag 0 (no span) included. Read under
/// the lock into profiler memory, then copied out: no symbolization, so `/metrics` can afford it
/// at every scrape. Empty if profiler memory ran out.
pub(crate) fn live_bytes_by_span() -> Vec<(u32, f64)> {
    let sums = {
        let _inside = thread_state::ProfilerGuard::enter();
        lock().live_bytes_by_span()
    };
    sums.map_or_else(Vec::new, |sums| sums.into_iter().collect())
}

impl Table {
    /// What [`live_bytes_by_span`] reads; `None` if profiler memory ran out.
    fn live_bytes_by_span(&self) -> Option<HashMap<u32, f64, FixedState, ProfilerAlloc>> {
        let mut sums = HashMap::with_hasher_in(HASHER, ProfilerAlloc);
        for sample in self.live.values() {
            let span = self
                .stacks
                .get(sample.stack as usize)
                .map_or(0, |entry| entry.span);
            sums.try_reserve(1).ok()?;
            let weight = crate::sampler::unbias_factor(sample.size, sample.rate_bytes);
            *sums.entry(span).or_insert(0.0) += weight * sample.size as f64;
        }
        Some(sums)
    }
}

/// The profiler's own bookkeeping figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfilerStats {
    /// Sampled allocations currently live.
    pub live_samples: u64,
    /// Distinct stacks interned since start.
    pub stacks: u64,
    /// Samples not recorded because the profiler's own memory could not grow.
    pub dropped_samples: u64,
    /// Bytes heapwatch holds for itself: tables, stacks, symbol cache and the address filter.
    pub profiler_bytes: u64,
    /// The symbolizer's heap: symbol indexes, names and address cache (part of
    /// `profiler_bytes`), and the DWARF units parsed to name inlined frames (allocated through
    /// the global allocator by the DWARF reader, then taken out of [`stats`](crate::stats)
    /// so that the heap figures show the program's heap only).
    pub symbol_cache_bytes: u64,
}

/// Reads the profiler's own figures.
///
/// ```
/// let own = heapwatch::profiler_stats();
/// assert!(own.profiler_bytes > 0);
/// ```
pub fn profiler_stats() -> ProfilerStats {
    // Published by the symbolizer and read without its lock (see `internal_alloc`).
    let symbol_cache_bytes = crate::internal_alloc::symbolizer_heap_bytes() as u64;
    let table = lock();
    ProfilerStats {
        live_samples: table.live.len() as u64,
        stacks: table.stacks.len() as u64,
        dropped_samples: table.dropped_samples,
        profiler_bytes: (crate::internal_alloc::profiler_bytes() + filter::FILTER_BYTES) as u64,
        symbol_cache_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thread_state::{on_fresh_thread, serial_test_guard};

    const RATE: u64 = 64 * 1024;

    /// Addresses no real allocation has in this test binary (the system allocator's blocks
    /// are far from here), 16-byte aligned like every allocation.
    fn address(test: usize, i: usize) -> usize {
        0x7e00_0000_0000 + (test << 24) + i * 16
    }

    /// The frames of stack `i` of a test: distinct between tests, since the global table
    /// interns for good.
    fn frames(test: usize, i: usize) -> [usize; 3] {
        let base = 0x5a00_0000 + (test << 20) + (i << 4);
        [base + 1, base + 2, base + 3]
    }

    /// The totals a copy holds for the stack `frames`.
    fn totals_of(raw: &RawSnapshot, frames: &[usize]) -> Option<RawStackTotals> {
        raw.stacks.iter().find_map(|stack| {
            let RawStack {
                start, len, totals, ..
            } = *stack;
            (len > 0 && raw.frames[start as usize..][..len as usize] == *frames).then_some(totals)
        })
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn the_same_frames_intern_once_and_totals_add_up_per_stack() {
        let mut table = Table::new();
        let (a, b) = (frames(1, 0), frames(1, 1));
        table.record(address(1, 0), 100, RATE, &a, ThreadTag::NONE);
        table.record(address(1, 1), 300, RATE, &a, ThreadTag::NONE);
        table.record(address(1, 2), 5000, RATE, &b, ThreadTag::NONE);
        assert_eq!(table.stacks.len(), 2, "two distinct stacks");
        assert_eq!(table.frames.len(), 6, "each stack's frames stored once");
        assert_eq!(table.intern(&a, 0), table.intern(&a, 0));
        assert_ne!(table.intern(&a, 0), table.intern(&b, 0));
        assert_ne!(
            table.intern(&a[..2], 0),
            table.intern(&a, 0),
            "a prefix is another stack"
        );

        let w = |size| crate::sampler::unbias_factor(size, RATE);
        let raw = table.copy(Scope::Process).expect("copy");
        let at_a = totals_of(&raw, &a).expect("stack a");
        assert!(close(at_a.alloc_objects, w(100) + w(300)));
        assert!(close(at_a.alloc_bytes, w(100) * 100.0 + w(300) * 300.0));
        assert_eq!(
            (at_a.inuse_objects, at_a.inuse_bytes),
            (at_a.alloc_objects, at_a.alloc_bytes)
        );
        let at_b = totals_of(&raw, &b).expect("stack b");
        assert!(close(at_b.inuse_bytes, w(5000) * 5000.0));
        assert!(!raw.overflowed);

        // A free takes the block out of `inuse_*`; `alloc_*` keeps everything ever allocated.
        let removed = table.remove_live(address(1, 1)).expect("live");
        assert_eq!((removed.size, removed.rate_bytes), (300, RATE));
        assert!(
            table.remove_live(address(1, 1)).is_none(),
            "gone after its free"
        );
        let at_a_later = totals_of(&table.copy(Scope::Process).unwrap(), &a).unwrap();
        assert!(close(at_a_later.inuse_bytes, w(100) * 100.0));
        assert!(close(at_a_later.alloc_bytes, at_a.alloc_bytes));
        table.remove_live(address(1, 0));
        table.remove_live(address(1, 2));
    }

    #[test]
    fn one_stack_under_two_spans_is_two_stacks_and_live_bytes_split_by_span() {
        let mut table = Table::new();
        let a = frames(9, 0);
        let under = |span| NewSample {
            size: 1000,
            rate_bytes: RATE,
            promoted: false,
            span,
        };
        let w = crate::sampler::unbias_factor(1000, RATE);
        table.record_weighted(address(9, 0), under(3), w, &a, ThreadTag::NONE);
        table.record_weighted(address(9, 1), under(3), w, &a, ThreadTag::NONE);
        table.record_weighted(address(9, 2), under(5), w, &a, ThreadTag::NONE);
        table.record_weighted(address(9, 3), under(0), w, &a, ThreadTag::NONE);
        assert_eq!(table.stacks.len(), 3, "one stack per span");
        assert_ne!(table.intern(&a, 3), table.intern(&a, 5));

        let raw = table.copy(Scope::Process).expect("copy");
        let mut spans: Vec<(u32, f64)> = raw
            .stacks
            .iter()
            .map(|stack| (stack.span, stack.totals.inuse_bytes))
            .collect();
        spans.sort_by_key(|&(span, _)| span);
        let by_span = table.live_bytes_by_span().expect("sums");
        for (span, bytes) in spans {
            let samples = [(0, 1.0), (3, 2.0), (5, 1.0)]
                .iter()
                .find(|(s, _)| *s == span)
                .expect("a span recorded")
                .1;
            assert!(close(bytes, samples * w * 1000.0), "span {span}: {bytes}");
            assert!(close(by_span[&span], bytes));
        }
        for i in 0..4 {
            table.remove_live(address(9, i));
        }
    }

    #[cfg(feature = "http")]
    #[test]
    fn a_merged_copy_shares_frames_between_spans_and_keeps_the_split() {
        let mut table = Table::new();
        let (a, b) = (frames(10, 0), frames(10, 1));
        let under = |span| NewSample {
            size: 1000,
            rate_bytes: RATE,
            promoted: false,
            span,
        };
        let w = crate::sampler::unbias_factor(1000, RATE);
        table.record_weighted(address(10, 0), under(3), w, &a, ThreadTag::NONE);
        table.record_weighted(address(10, 1), under(5), w, &a, ThreadTag::NONE);
        table.record_weighted(address(10, 2), under(5), w, &a, ThreadTag::NONE);
        table.record_weighted(address(10, 3), under(5), w, &b, ThreadTag::NONE);
        assert_eq!(table.stacks.len(), 3);
        let mut told = None;
        let merged = table
            .merged(|stacks, frames| {
                told = Some((stacks, frames));
                true
            })
            .expect("admitted");
        assert_eq!(told, Some((2, a.len() + b.len())), "two distinct lists");
        assert_eq!(merged.raw.stacks.len(), 2);
        assert_eq!(merged.raw.frames.len(), a.len() + b.len());
        assert_eq!(merged.by_span.len(), 3, "one entry per stack of the table");
        // Entry `i` is the table's stack `i`: (a, 3), (a, 5), (b, 5).
        let split: Vec<(u32, u32)> = merged.by_span.iter().map(|s| (s.stack, s.span)).collect();
        assert_eq!(split, [(0, 3), (0, 5), (1, 5)]);
        let inuse = |i: usize| merged.by_span[i].totals.inuse_bytes;
        assert!(close(inuse(0), w * 1000.0) && close(inuse(1), 2.0 * w * 1000.0));
        assert!(close(
            merged.raw.stacks[0].totals.inuse_bytes,
            inuse(0) + inuse(1)
        ));
        assert!(table.merged(|_, _| false).is_none(), "a refused copy");
        for i in 0..4 {
            table.remove_live(address(10, i));
        }
    }

    #[test]
    fn a_full_stack_table_counts_new_stacks_on_the_overflow_stack() {
        let mut table = Table::new();
        for i in 0..MAX_STACKS {
            assert_ne!(table.intern(&[i + 1], 0), OVERFLOW_STACK, "stack {i}");
        }
        assert_eq!(table.intern(&[7], 0), 6, "known stacks are still found");
        assert_eq!(table.intern(&[MAX_STACKS + 1], 0), OVERFLOW_STACK);
        table.record(
            address(2, 0),
            1 << 20,
            RATE,
            &[MAX_STACKS + 1],
            ThreadTag::NONE,
        );
        assert_eq!(
            table.stacks.len(),
            MAX_STACKS,
            "nothing interned past the cap"
        );

        let raw = table.copy(Scope::Process).expect("copy");
        assert!(raw.overflowed);
        let &RawStack { len, totals, .. } = raw.stacks.last().expect("the overflow stack, last");
        assert_eq!(len, 0, "the overflow stack has no frames");
        let w = crate::sampler::unbias_factor(1 << 20, RATE);
        assert!(close(totals.inuse_bytes, w * (1 << 20) as f64));
        assert!(close(totals.alloc_objects, w));
        table.remove_live(address(2, 0));
    }

    #[test]
    fn a_thread_scope_counts_only_that_threads_live_blocks_and_no_alloc_figures() {
        let mut table = Table::new();
        let (mine, theirs) = (ThreadTag::made_up(0x1000), ThreadTag::made_up(0x2000));
        let (a, b) = (frames(3, 0), frames(3, 1));
        table.record(address(3, 0), 4096, RATE, &a, mine);
        table.record(address(3, 1), 4096, RATE, &b, theirs);
        let raw = table.copy(Scope::Thread(mine)).expect("copy");
        let w = crate::sampler::unbias_factor(4096, RATE);
        let at_a = totals_of(&raw, &a).unwrap();
        assert!(close(at_a.inuse_bytes, w * 4096.0));
        assert_eq!((at_a.alloc_objects, at_a.alloc_bytes), (0.0, 0.0));
        assert_eq!(totals_of(&raw, &b), Some(RawStackTotals::default()));
        table.remove_live(address(3, 0));
        table.remove_live(address(3, 1));
    }

    #[test]
    fn the_filter_slot_stays_set_while_another_live_sample_shares_it() {
        let _serial = serial_test_guard();
        let first = address(4, 0);
        let second = (1..1 << 26)
            .map(|i| first + i * 16)
            .find(|&addr| filter::slot(addr) == filter::slot(first))
            .expect("a colliding address");
        let mut table = Table::new();
        table.record(first, 64, RATE, &frames(4, 0), ThreadTag::NONE);
        table.record(second, 64, RATE, &frames(4, 0), ThreadTag::NONE);
        // The same address twice (its free never seen): still one sample in the slot's count.
        table.record(second, 64, RATE, &frames(4, 0), ThreadTag::NONE);
        assert!(filter::may_be_sampled(first));
        assert!(table.remove_live(first).is_some());
        assert!(
            filter::may_be_sampled(second),
            "the other sample is still live"
        );
        assert!(table.remove_live(second).is_some());
        assert!(
            !filter::may_be_sampled(second),
            "cleared with the slot's last sample"
        );
    }

    #[test]
    fn insert_remove_and_reinsert_through_the_global_table() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            let _ = thread_state::record_alloc(0); // claims a block: a tag of its own
            let me = thread_state::current_thread();
            let addr = address(5, 0);
            let stack = frames(5, 0);
            let before = profiler_stats();
            let new = NewSample {
                size: 4096,
                rate_bytes: RATE,
                promoted: false,
                span: 0,
            };
            assert!(insert(addr, new, &stack));
            let during = profiler_stats();
            assert_eq!(during.live_samples, before.live_samples + 1);
            assert_eq!(during.stacks, before.stacks + 1);
            assert!(filter::may_be_sampled(addr));
            let mine = raw_snapshot(Scope::Thread(me)).expect("copy");
            assert!(totals_of(&mine, &stack).unwrap().inuse_objects > 0.0);

            // A realloc that failed: the sample goes back as it was.
            let sample = remove(addr).expect("the sample");
            assert_eq!(
                (sample.size, sample.rate_bytes, sample.thread),
                (4096, RATE, me)
            );
            assert!(!filter::may_be_sampled(addr));
            assert_eq!(profiler_stats().live_samples, before.live_samples);
            reinsert(addr, sample);
            assert!(filter::may_be_sampled(addr));
            assert_eq!(profiler_stats().live_samples, before.live_samples + 1);
            assert!(remove(addr).is_some());
            assert!(remove(addr).is_none());

            let after = profiler_stats();
            assert_eq!(after.live_samples, before.live_samples);
            assert_eq!(
                after.stacks,
                before.stacks + 1,
                "stacks are interned for good"
            );
            assert_eq!(after.dropped_samples, before.dropped_samples);
        });
    }

    #[test]
    fn the_tables_memory_is_profiler_memory() {
        // 2,000 stacks of 32 frames: 500 KiB of frames alone. Other tests' snapshots take and
        // give back small copies meanwhile, hence the margin.
        const STACKS: usize = 2000;
        const DEPTH: usize = 32;
        let frame_bytes = (STACKS * DEPTH * std::mem::size_of::<usize>()) as i64;
        let margin = 128 << 10;
        let own = || crate::internal_alloc::profiler_bytes() as i64;
        let before = own();
        let mut table = Table::new();
        for i in 0..STACKS {
            let stack: Vec<usize> = (0..DEPTH).map(|d| 0x4000_0000 + i * DEPTH + d).collect();
            assert_ne!(table.intern(&stack, 0), OVERFLOW_STACK);
        }
        let grown = own() - before;
        assert!(
            grown >= frame_bytes - margin,
            "grew {grown} for {frame_bytes}"
        );
        drop(table);
        let given_back = before + grown - own();
        assert!(given_back >= frame_bytes - margin, "gave back {given_back}");

        let stats = profiler_stats();
        assert!(stats.profiler_bytes >= filter::FILTER_BYTES as u64);
        assert_eq!(
            stats.symbol_cache_bytes,
            crate::internal_alloc::symbolizer_heap_bytes() as u64,
            "the symbolizer's published figure"
        );
    }

    #[test]
    fn an_unaligned_sample_closes_every_free_gate_until_it_goes() {
        let _serial = serial_test_guard();
        on_fresh_thread(|| {
            let _ = thread_state::record_alloc(0); // claims a block, gate open
            let promoted = 0x7f00_0000_0000 + 7 * filter::PROMOTED_ALIGN;
            let unaligned = promoted + 48;
            let lets_through = |addr| thread_state::record_unsampled_free(addr, 0);
            assert!(
                lets_through(unaligned),
                "no unaligned sample yet: the gate is open"
            );
            assert!(!lets_through(promoted), "a promoted boundary never passes");

            let new = |promoted| NewSample {
                size: 16,
                rate_bytes: RATE,
                promoted,
                span: 0,
            };
            assert!(insert(promoted, new(true), &frames(2, 0)));
            assert!(
                lets_through(unaligned),
                "a promoted sample leaves the gate open"
            );
            assert!(insert(unaligned, new(false), &frames(2, 1)));
            assert_eq!(filter::unaligned_samples(), 1);
            assert!(
                !lets_through(unaligned + 4096),
                "closed while an unaligned sample lives"
            );
            assert!(filter::may_be_sampled(unaligned));

            // realloc's view: a promoted block stays in the table, an unaligned one is taken.
            assert!(matches!(
                remove_unless_promoted(promoted),
                Tracked::Promoted
            ));
            assert!(matches!(
                remove_unless_promoted(unaligned),
                Tracked::Unpromoted(_)
            ));
            assert!(matches!(remove_unless_promoted(unaligned), Tracked::No));
            assert_eq!(filter::unaligned_samples(), 0);
            assert!(lets_through(unaligned + 4096), "reopened with the last one");
            assert!(remove(promoted).is_some_and(|sample| sample.promoted()));
        });
    }
}
