//! What the running watch publishes for the outside to read: its latest reading and verdict,
//! the baseline of the differential flamegraph, the dumps it wrote, and where it writes them.
//!
//! The watch is the only writer — its thread each tick, before a dump and after one; its
//! builder and handle for the directory when it starts and stops — and the metrics exporter,
//! the HTTP pages and the program read. Nothing here reads anything else: data flows from the
//! watch, through this module, out.
//!
//! ```
//! // No watch in this process: nothing published yet.
//! assert!(heapwatch::published::latest().is_none());
//! assert_eq!(heapwatch::published::dump_errors(), 0);
//! ```

use crate::detect::DetectorReport;
use crate::fork::{GuardSlot, HeldAcrossFork, Hooks, Rank};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The watch's reading of one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchReading {
    /// When it was taken (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// The limit in bytes, if any.
    pub limit_bytes: Option<u64>,
    /// Usage (cgroup, or the process's RSS without one).
    pub usage_bytes: Option<u64>,
    /// Working set.
    pub working_set_bytes: Option<u64>,
    /// Growth of the working set, bytes per second (robust slope over the trend window).
    pub slope_bytes_per_second: Option<f64>,
    /// Predicted seconds to the limit at that slope.
    pub eta_seconds: Option<f64>,
}

/// What one tick of the watch published: its reading and its detector's report, together.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// The memory reading.
    pub reading: WatchReading,
    /// The detector's verdict and suspects after this reading.
    pub detector: DetectorReport,
}

/// Why a dump set was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonKind {
    /// The working set crossed a fraction of the limit.
    Threshold,
    /// The trend predicted the limit within the horizon.
    Eta,
    /// The program asked (`WatchHandle::dump_now`).
    OnDemand,
    /// SIGUSR1.
    Signal,
    /// The detector called a leak.
    Leak,
}

impl ReasonKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [ReasonKind; 5] = [
        ReasonKind::Threshold,
        ReasonKind::Eta,
        ReasonKind::OnDemand,
        ReasonKind::Signal,
        ReasonKind::Leak,
    ];

    /// The name summaries, file names' reasons and metrics labels use.
    pub fn name(self) -> &'static str {
        match self {
            ReasonKind::Threshold => "threshold",
            ReasonKind::Eta => "eta",
            ReasonKind::OnDemand => "on_demand",
            ReasonKind::Signal => "signal",
            ReasonKind::Leak => "leak",
        }
    }
}

impl std::fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// Every lock here is held across a fork (see `fork`).
static LATEST: HeldAcrossFork<Mutex<Option<Latest>>> =
    HeldAcrossFork::new(Rank::Published, &FORK_HOOKS, Mutex::new(None));
/// The baseline's folded stacks, once the watch has taken it.
static BASELINE: HeldAcrossFork<Mutex<Option<Vec<String>>>> =
    HeldAcrossFork::new(Rank::Published, &FORK_HOOKS, Mutex::new(None));
/// The running watch's dump directory, published at start and withdrawn when it stops: the
/// HTTP pages read it at each request, so a router or listener built before the watch, or with
/// no directory of its own, lists what the watch writes.
static RUNNING_DIR: HeldAcrossFork<Mutex<Option<PathBuf>>> =
    HeldAcrossFork::new(Rank::Published, &FORK_HOOKS, Mutex::new(None));
static DUMPS_WRITTEN: [AtomicU64; ReasonKind::ALL.len()] =
    [const { AtomicU64::new(0) }; ReasonKind::ALL.len()];
static DUMP_ERRORS: AtomicU64 = AtomicU64::new(0);

/// The running watch's latest tick; `None` before its first tick or without a watch. Published
/// at the end of each tick's decisions, after the allocator's early wake is armed for the next
/// threshold.
pub fn latest() -> Option<Latest> {
    LATEST
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The baseline of the differential flamegraph (folded stacks), once the watch has taken it
/// after warm-up.
pub fn baseline() -> Option<Vec<String>> {
    BASELINE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The directory the running watch writes its dump sets to; `None` when no watch runs (none
/// started, stopped, or `HEAPWATCH=off`).
pub fn running_dump_dir() -> Option<PathBuf> {
    RUNNING_DIR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Dump sets written since start, by reason.
pub fn dumps_written() -> [(ReasonKind, u64); ReasonKind::ALL.len()] {
    ReasonKind::ALL.map(|kind| (kind, DUMPS_WRITTEN[kind as usize].load(Ordering::Relaxed)))
}

/// Dump sets that could not be written since start.
pub fn dump_errors() -> u64 {
    DUMP_ERRORS.load(Ordering::Relaxed)
}

pub(crate) fn publish_latest(latest: Latest) {
    // A poisoned lock still holds a valid `Option`: overwrite it.
    *LATEST.lock().unwrap_or_else(PoisonError::into_inner) = Some(latest);
}

/// Replaces the detector's half of what was last published, ahead of the rest of the tick:
/// before a dump, so the verdict that called for it is readable while it is written. Nothing
/// before the first tick's publication.
pub(crate) fn publish_report(detector: DetectorReport) {
    if let Some(latest) = LATEST
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        latest.detector = detector;
    }
}

pub(crate) fn publish_baseline(lines: Vec<String>) {
    *BASELINE.lock().unwrap_or_else(PoisonError::into_inner) = Some(lines);
}

pub(crate) fn publish_dump_dir(dir: Option<PathBuf>) {
    *RUNNING_DIR.lock().unwrap_or_else(PoisonError::into_inner) = dir;
}

pub(crate) fn count_dump(kind: ReasonKind) {
    DUMPS_WRITTEN[kind as usize].fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_dump_error() {
    DUMP_ERRORS.fetch_add(1, Ordering::Relaxed);
}

static FORK_HOOKS: Hooks = Hooks {
    take: |forking| {
        let latest = LATEST.for_fork(forking).lock();
        let baseline = BASELINE.for_fork(forking).lock();
        let running_dir = RUNNING_DIR.for_fork(forking).lock();
        HELD_FOR_FORK.keep(
            forking,
            (
                latest.unwrap_or_else(PoisonError::into_inner),
                baseline.unwrap_or_else(PoisonError::into_inner),
                running_dir.unwrap_or_else(PoisonError::into_inner),
            ),
        );
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    // What the parent's watch published is not the child's, which runs no watch (until it
    // starts its own). Only when the locks were taken here: otherwise another thread of the
    // parent held one, and it stays held in the child.
    in_child: Some(|locked| {
        if locked {
            forget_in_child();
        }
    }),
};

#[allow(clippy::type_complexity)]
static HELD_FOR_FORK: GuardSlot<(
    MutexGuard<'static, Option<Latest>>,
    MutexGuard<'static, Option<Vec<String>>>,
    MutexGuard<'static, Option<PathBuf>>,
)> = GuardSlot::new();

/// In a forked child, once the fork's locks are released (the child has one thread: nothing
/// holds them): forgets what the parent's watch published.
fn forget_in_child() {
    let stale = (
        LATEST.lock().unwrap_or_else(PoisonError::into_inner).take(),
        BASELINE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
        RUNNING_DIR
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
    drop(stale);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_counts_are_kept_by_kind() {
        let before = dumps_written();
        count_dump(ReasonKind::Eta);
        count_dump(ReasonKind::Eta);
        count_dump(ReasonKind::Leak);
        let after = dumps_written();
        for ((kind, b), (same, a)) in before.iter().zip(after) {
            assert_eq!(*kind, same);
            let added = match kind {
                ReasonKind::Eta => 2,
                ReasonKind::Leak => 1,
                _ => 0,
            };
            assert!(a >= b + added, "{kind}: {b} → {a}");
        }
        let names: Vec<&str> = after.iter().map(|(k, _)| k.name()).collect();
        assert_eq!(names, ["threshold", "eta", "on_demand", "signal", "leak"]);
    }
}
