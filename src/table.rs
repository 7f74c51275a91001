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
}

struct StackEntry {
    frames_start: u32,
    frames_len: u32,
    hash: u64,
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
    Mutex::new(Table {
        live: HashMap::with_hasher_in(HASHER, ProfilerAlloc),
        slot_counts: HashMap::with_hasher_in(HASHER, ProfilerAlloc),
        frames: PVec::new_in(ProfilerAlloc),
        stacks: PVec::new_in(ProfilerAlloc),
        stack_index: HashTable::new_in(ProfilerAlloc),
        overflow_alloc_objects: 0.0,
        overflow_alloc_bytes: 0.0,
        dropped_samples: 0,
    }),
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

/// Records a sampled allocation at `addr` of `size` bytes drawn at `rate_bytes`, whose stack
/// (innermost first) is `frames`, made by the calling thread.
pub(crate) fn insert(addr: usize, size: u64, rate_bytes: u64, frames: &[usize]) {
    let thread = thread_state::current_thread();
    let weight = crate::sampler::unbias_factor(size, rate_bytes);
    let mut table = lock();
    let stack = table.intern(frames);
    if stack == OVERFLOW_STACK {
        table.overflow_alloc_objects += weight;
        table.overflow_alloc_bytes += weight * size as f64;
    } else if let Some(entry) = table.stacks.get_mut(stack as usize) {
        entry.alloc_objects += weight;
        entry.alloc_bytes += weight * size as f64;
    }
    let sample = LiveSample {
        stack,
        size,
        rate_bytes,
        thread,
    };
    if !table.add_live(addr, sample) {
        table.dropped_samples += 1;
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
    let mut table = lock();
    let sample = table.live.remove(&addr)?;
    let slot = filter::slot(addr);
    let now_empty = match table.slot_counts.get_mut(&slot) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        _ => true,
    };
    if now_empty {
        table.slot_counts.remove(&slot);
        filter::clear(slot);
    }
    Some(sample)
}

impl Table {
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
        let slot = filter::slot(addr);
        *self.slot_counts.entry(slot).or_insert(0) += 1;
        filter::set(slot);
        true
    }

    /// The id of `frames`, interning it on first sight.
    fn intern(&mut self, frames: &[usize]) -> u32 {
        let hash = HASHER.hash_one(frames);
        let Table {
            frames: arena,
            stacks,
            stack_index,
            ..
        } = self;
        let found = stack_index.find(hash, |&id| {
            let entry = &stacks[id as usize];
            entry.hash == hash
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

/// A copy of the table taken under the lock, in profiler memory, for the snapshot builder to
/// read without holding the lock.
pub(crate) struct RawSnapshot {
    /// Return addresses of all stacks, concatenated.
    pub frames: PVec<usize, ProfilerAlloc>,
    /// Per stack: `(start, len)` into `frames`, and its totals. The overflow stack, if used, is
    /// last with an empty frame range.
    pub stacks: PVec<(u32, u32, RawStackTotals), ProfilerAlloc>,
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
    let table = lock();
    let mut frames = PVec::new_in(ProfilerAlloc);
    let mut stacks = PVec::new_in(ProfilerAlloc);
    frames.try_reserve_exact(table.frames.len()).ok()?;
    stacks.try_reserve_exact(table.stacks.len() + 1).ok()?;
    frames.extend_from_slice(&table.frames);
    let allocated = |objects: f64, bytes: f64| match scope {
        Scope::Process => RawStackTotals {
            alloc_objects: objects,
            alloc_bytes: bytes,
            ..RawStackTotals::default()
        },
        Scope::Thread(_) => RawStackTotals::default(),
    };
    for entry in table.stacks.iter() {
        let totals = allocated(entry.alloc_objects, entry.alloc_bytes);
        stacks.push((entry.frames_start, entry.frames_len, totals));
    }
    let overflowed = table.overflow_alloc_objects > 0.0;
    let overflow_index = stacks.len();
    if overflowed {
        let totals = allocated(table.overflow_alloc_objects, table.overflow_alloc_bytes);
        stacks.push((0, 0, totals));
    }
    let counted = |sample: &&LiveSample| match scope {
        Scope::Process => true,
        Scope::Thread(thread) => sample.thread == thread,
    };
    for sample in table.live.values().filter(counted) {
        let index = if sample.stack == OVERFLOW_STACK {
            overflow_index
        } else {
            sample.stack as usize
        };
        if let Some((_, _, totals)) = stacks.get_mut(index) {
            let weight = crate::sampler::unbias_factor(sample.size, sample.rate_bytes);
            totals.inuse_objects += weight;
            totals.inuse_bytes += weight * sample.size as f64;
        }
    }
    Some(RawSnapshot {
        frames,
        stacks,
        overflowed,
    })
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
    /// the global allocator by the DWARF reader, so counted in the heap figures as well).
    pub symbol_cache_bytes: u64,
}

/// Reads the profiler's own figures.
///
/// ```
/// let own = heapwatch::profiler_stats();
/// assert!(own.profiler_bytes > 0);
/// ```
pub fn profiler_stats() -> ProfilerStats {
    // Read before taking the table lock: never hold both locks at once.
    let symbol_cache_bytes = crate::symbolize::heap_bytes() as u64;
    let table = lock();
    ProfilerStats {
        live_samples: table.live.len() as u64,
        stacks: table.stacks.len() as u64,
        dropped_samples: table.dropped_samples,
        profiler_bytes: (crate::internal_alloc::profiler_bytes() + filter::FILTER_BYTES) as u64,
        symbol_cache_bytes,
    }
}
