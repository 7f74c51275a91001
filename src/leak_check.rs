//! A leak check for test suites: run a closure many times and fail, naming the growing call
//! sites, if the heap it leaves behind keeps growing.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
//!
//! let mut cache = std::collections::HashMap::new();
//! // A closure that reuses its memory passes…
//! heapwatch::leak_check::assert_no_leak(200, || {
//!     cache.insert(1, vec![0u8; 1024]);
//! });
//! // …one that keeps adding does not.
//! let mut log = Vec::new();
//! let result = heapwatch::leak_check::check(200, 0, || log.push(vec![0u8; 1024]));
//! assert!(result.is_err());
//! ```
//!
//! The bytes are counted exactly, on the calling thread (allocated minus freed by it), and the
//! call sites come from the sampled blocks that thread allocated and still holds (sampled at a
//! fine rate, 1 KiB, while the check runs), so tests running in parallel on other threads
//! disturb neither the verdict nor the sites it names.
//!
//! A child forked while checks run goes on only with those of the thread that forked: the
//! others' threads do not exist there, so their checks are forgotten, and the rate is restored
//! once the forking thread's own checks end (at once if it ran none).

use crate::profile::{Profile, SampleType};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Mean sampling interval while a check runs: fine enough to name sites that leak a few KiB.
const CHECK_SAMPLE_RATE: u64 = 1024;
/// Call sites named in a failure.
const SITES_NAMED: usize = 5;

/// A site whose live bytes grew during the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowingSite {
    /// The function (innermost frame outside the allocator and std).
    pub function: String,
    /// Estimated growth of its live bytes over the check.
    pub grown_bytes: i64,
}

/// What a check measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowthReport {
    /// Iterations run (after the warm-up).
    pub iterations: usize,
    /// Net bytes the calling thread kept over those iterations.
    pub grown_bytes: i64,
    /// Sites whose live bytes grew, largest growth first.
    pub growing_sites: Vec<GrowingSite>,
}

impl std::fmt::Display for GrowthReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the heap grew by {} bytes over {} iterations ({:.1} bytes per iteration)",
            self.grown_bytes,
            self.iterations,
            self.grown_bytes as f64 / self.iterations.max(1) as f64
        )?;
        if self.growing_sites.is_empty() {
            write!(f, "; no sampled call site grew")
        } else {
            write!(f, "; growing call sites:")?;
            for site in self.growing_sites.iter().take(SITES_NAMED) {
                write!(f, "\n  {} (+{} bytes)", site.function, site.grown_bytes)?;
            }
            Ok(())
        }
    }
}

/// Runs `f` a few times to warm up, then `iterations` times, and measures what the calling
/// thread's heap kept. `Err` when it grew by more than `tolerance_bytes`.
pub fn check(
    iterations: usize,
    tolerance_bytes: u64,
    mut f: impl FnMut(),
) -> Result<GrowthReport, GrowthReport> {
    // Warm-up: lazily initialised state (caches, thread-locals, buffers grown once) is not a
    // leak.
    for _ in 0..iterations.clamp(1, 10) {
        f();
    }
    let fine_sampling = FineSampling::begin();
    let before_profile = crate::snapshot::thread_snapshot();
    let before = crate::thread_state::thread_net_bytes().unwrap_or(0);
    for _ in 0..iterations {
        f();
    }
    let after = crate::thread_state::thread_net_bytes().unwrap_or(0);
    let after_profile = crate::snapshot::thread_snapshot();
    drop(fine_sampling);

    let report = GrowthReport {
        iterations,
        grown_bytes: after - before,
        growing_sites: growing_sites(&before_profile, &after_profile),
    };
    if report.grown_bytes > tolerance_bytes as i64 {
        Err(report)
    } else {
        Ok(report)
    }
}

/// [`check`] with no tolerance beyond a byte per iteration, panicking with the growing call
/// sites named.
///
/// # Panics
/// When the heap grew: the message says by how much and which call sites grew, and the panic
/// is reported at the caller's line (`#[track_caller]`), like `assert!`'s.
#[track_caller]
pub fn assert_no_leak(iterations: usize, f: impl FnMut()) {
    if let Err(report) = check(iterations, iterations as u64, f) {
        panic!("leak: {report}");
    }
}

/// Checks in progress, and the sample rate to restore when the last one ends. Held across a
/// fork (see `fork`).
static FINE_SAMPLING: crate::fork::HeldAcrossFork<Mutex<(usize, u64)>> =
    crate::fork::HeldAcrossFork::new(
        crate::fork::Rank::LeakChecks,
        &FORK_HOOKS,
        Mutex::new((0, 0)),
    );

static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let checks = FINE_SAMPLING.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, checks.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: Some(forget_other_threads_checks),
};

/// In a forked child: the checks of the parent's other threads, which do not exist here, never
/// end, so they would keep the fine rate for good. Only the forking thread's own checks go on
/// (it returns into them): with none, the rate they saved is restored at once; with some, the
/// last of them restores it, as in the parent. Atomics only and, when the fork handlers took
/// the lock (`locked`), the lock itself, free in the child: no allocation, nothing that waits.
fn forget_other_threads_checks(locked: bool) {
    let own = CHECKS_ON_THIS_THREAD.with(Cell::get);
    if locked {
        let mut active = FINE_SAMPLING.lock().unwrap_or_else(PoisonError::into_inner);
        if own == 0 && active.0 > 0 {
            crate::sampler::configure_rate(active.1);
            RATE_TO_RESTORE.store(NO_CHECK, Ordering::Release);
        }
        active.0 = own;
    } else if own == 0 {
        // The lock may be held by the code the fork interrupted: only the rate is restored,
        // from its copy; the count stays as the parent left it.
        let saved = RATE_TO_RESTORE.load(Ordering::Acquire);
        if saved != NO_CHECK {
            crate::sampler::configure_rate(saved);
        }
    }
}

/// A copy of the rate the running checks saved (`FINE_SAMPLING.1`), readable without the lock;
/// [`NO_CHECK`] while none runs.
static RATE_TO_RESTORE: AtomicU64 = AtomicU64::new(NO_CHECK);
const NO_CHECK: u64 = u64::MAX;

thread_local! {
    /// The checks running on this thread (nested checks count each): in a forked child, the
    /// only ones that will end.
    static CHECKS_ON_THIS_THREAD: Cell<usize> = const { Cell::new(0) };
}

static HELD_FOR_FORK: crate::fork::GuardSlot<std::sync::MutexGuard<'static, (usize, u64)>> =
    crate::fork::GuardSlot::new();

/// Holds the sample rate at [`CHECK_SAMPLE_RATE`] (or finer) while any check runs: checks in tests that
/// run in parallel overlap, and the first to finish must not restore the coarse rate under the
/// others. Restored on drop, so also when the closure panics.
struct FineSampling;

impl FineSampling {
    fn begin() -> Self {
        let mut active = FINE_SAMPLING.lock().unwrap_or_else(PoisonError::into_inner);
        let first = active.0 == 0;
        active.0 += 1;
        if first {
            active.1 = crate::sampler::sample_rate();
            RATE_TO_RESTORE.store(active.1, Ordering::Release);
        }
        CHECKS_ON_THIS_THREAD.with(|checks| checks.set(checks.get() + 1));
        // Finer already (a test may sample every byte): keep it; off: turn it on.
        let coarse = active.1 == 0 || active.1 > CHECK_SAMPLE_RATE;
        if first && coarse {
            // Redraws the calling thread's interval too.
            crate::thread_state::set_sample_rate(CHECK_SAMPLE_RATE);
        } else {
            // The rate is already what the check needs, but a thread applies a rate set
            // elsewhere only at its next sampling point, so this one may still be counting down
            // an interval drawn at a coarser rate: redraw it, or a small leak passes unsampled.
            crate::thread_state::refresh_sampler();
        }
        FineSampling
    }
}

impl Drop for FineSampling {
    fn drop(&mut self) {
        let mut active = FINE_SAMPLING.lock().unwrap_or_else(PoisonError::into_inner);
        CHECKS_ON_THIS_THREAD.with(|checks| checks.set(checks.get().saturating_sub(1)));
        active.0 = active.0.saturating_sub(1);
        if active.0 == 0 {
            RATE_TO_RESTORE.store(NO_CHECK, Ordering::Release);
            crate::thread_state::set_sample_rate(active.1);
        }
    }
}

/// The sites whose live bytes grew from `before` to `after`, named as culprits are (past the
/// plumbing), largest growth first.
fn growing_sites(before: &Profile, after: &Profile) -> Vec<GrowingSite> {
    let plumbing = crate::plumbing::plumbing();
    after
        .growth_since(before, SampleType::InuseSpace, Some(&plumbing))
        .into_iter()
        .map(|growth| GrowingSite {
            function: growth.function,
            grown_bytes: growth.grown,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only unit test that changes the sample rate: nothing runs beside it to race.
    #[test]
    fn overlapping_and_panicking_checks_restore_the_rate_once_all_end() {
        crate::thread_state::set_sample_rate(300_000);
        let first = FineSampling::begin();
        let second = FineSampling::begin();
        assert_eq!(crate::sampler::sample_rate(), CHECK_SAMPLE_RATE);
        drop(first);
        assert_eq!(
            crate::sampler::sample_rate(),
            CHECK_SAMPLE_RATE,
            "the other check still runs"
        );
        drop(second);
        assert_eq!(crate::sampler::sample_rate(), 300_000);

        let rate_when_it_panicked = std::sync::atomic::AtomicU64::new(0);
        let panicked = std::panic::catch_unwind(|| {
            let mut calls = 0;
            let _ = check(50, 0, || {
                calls += 1;
                if calls == 30 {
                    rate_when_it_panicked.store(crate::sampler::sample_rate(), Ordering::Relaxed);
                    panic!("the closure under test fails");
                }
            });
        });
        assert!(panicked.is_err());
        assert_eq!(
            rate_when_it_panicked.load(Ordering::Relaxed),
            CHECK_SAMPLE_RATE,
            "it panicked inside the measured iterations"
        );
        assert_eq!(
            crate::sampler::sample_rate(),
            300_000,
            "restored after a panic"
        );

        crate::thread_state::set_sample_rate(100);
        let finer = FineSampling::begin();
        assert_eq!(crate::sampler::sample_rate(), 100, "a finer rate is kept");
        drop(finer);
        crate::thread_state::set_sample_rate(crate::sampler::DEFAULT_SAMPLE_RATE_BYTES);
    }
}
