//! The call sites of every allocation a budget check's scope makes: distinct stacks with their
//! exact block and byte counts, kept in profiler memory (never the global allocator) while the
//! check runs, named only if it fails.
//!
//! The log lives on the checking function's stack frame; the thread-local holds a pointer to
//! it while it is active, and the allocator's slow path ([`log_captured`]) appends to it.
//! Bounded: [`MAX_SITES`] distinct stacks, the rest counted together.

use crate::internal_alloc::ProfilerAlloc;
use allocator_api2::vec::Vec as PVec;
use std::cell::Cell;

/// Distinct stacks kept per check; allocations at others are counted, not placed.
pub(crate) const MAX_SITES: usize = 256;

/// One logged stack: `(start, len)` into the frame arena, and what was allocated there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site {
    pub start: u32,
    pub len: u32,
    pub blocks: u64,
    pub bytes: u64,
}

/// The sites of one check.
pub(crate) struct SiteLog {
    pub frames: PVec<usize, ProfilerAlloc>,
    pub sites: PVec<Site, ProfilerAlloc>,
    /// Allocations whose stack could not be kept (too many sites, no profiler memory).
    pub unplaced: (u64, u64),
}

thread_local! {
    /// The log of the check running on this thread, if any.
    static ACTIVE: Cell<*mut SiteLog> = const { Cell::new(std::ptr::null_mut()) };
}

impl SiteLog {
    pub(crate) fn new() -> SiteLog {
        SiteLog {
            frames: PVec::new_in(ProfilerAlloc),
            sites: PVec::new_in(ProfilerAlloc),
            unplaced: (0, 0),
        }
    }

    fn add(&mut self, frames: &[usize], bytes: u64) {
        let existing = self.sites.iter_mut().find(|site| {
            let range = site.start as usize..(site.start + site.len) as usize;
            self.frames.get(range) == Some(frames)
        });
        if let Some(site) = existing {
            site.blocks += 1;
            site.bytes += bytes;
            return;
        }
        let fits = self.sites.len() < MAX_SITES
            && self.sites.try_reserve(1).is_ok()
            && self.frames.try_reserve(frames.len()).is_ok();
        if !fits {
            self.unplaced.0 += 1;
            self.unplaced.1 += bytes;
            return;
        }
        let start = self.frames.len() as u32;
        self.frames.extend_from_slice(frames);
        self.sites.push(Site {
            start,
            len: frames.len() as u32,
            blocks: 1,
            bytes,
        });
    }
}

/// Makes `log` the calling thread's active log until the returned guard drops (which restores
/// the one active before: checks nest).
pub(crate) fn activate(log: &mut SiteLog) -> Active {
    let previous = ACTIVE.with(|active| active.replace(log));
    let logged_before = crate::thread_state::log_sites(true);
    Active {
        previous,
        logged_before,
    }
}

/// Keeps a log active; see [`activate`].
pub(crate) struct Active {
    previous: *mut SiteLog,
    logged_before: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        crate::thread_state::log_sites(self.logged_before);
        let _ = ACTIVE.try_with(|active| active.set(self.previous));
    }
}

/// Whether a log is active on this thread (the sampled path logs its stack too).
pub(crate) fn logging() -> bool {
    ACTIVE
        .try_with(|active| !active.get().is_null())
        .unwrap_or(false)
}

/// Logs the call site of an allocation of `bytes` on this thread, if a log is active: from the
/// allocator's sampled path (cold), which captured the stack inside the profiler guard, so
/// nothing allocated here is counted or logged again.
pub(crate) fn log_captured(bytes: usize, frames: &[usize]) {
    let Ok(log) = ACTIVE.try_with(Cell::get) else {
        return;
    };
    if log.is_null() {
        return;
    }
    // SAFETY: a non-null pointer is the active check's log, which outlives its activation
    // (the guard restoring the previous pointer drops first) and is only touched by this
    // thread; the caller's profiler guard keeps this the only reference in use (an allocation
    // made meanwhile is not logged).
    unsafe { (*log).add(frames, bytes as u64) };
}
