//! A profiling session: the process-wide claim on the sampler, heapwatch's SIGPROF sampler
//! ([`sampler`](super::sampler)) for the session's length, and its samples named.

use crate::cpu::data::CpuProfile;
use crate::cpu::sampler::Sampling;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// 99 samples a second of CPU (Go takes 100): a period that is not a round number of
/// milliseconds does not run in lockstep with the process's own periodic work, which a 10 ms
/// period would sample always or never. Each sample stands for ~10.1 ms of CPU.
pub const SAMPLES_PER_SECOND: u32 = 99;

/// How often a session checks whether it was cancelled: the longest it runs on after.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// Set while a [`Reservation`] exists: the sampler is one per process (one interval timer,
/// one signal handler).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// A child has no thread profiling: the claim is free, the copy of the parent's table is
/// unmapped and the parent's `SIGPROF` action put back, so the child can take its own profile.
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |_| {},
    release: |_| {},
    in_child: Some(|_| {
        crate::cpu::sampler::reset_in_child();
        RUNNING.store(false, Ordering::Release);
    }),
};

/// Why no profile was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuProfileError {
    /// Another session holds the sampler (this process's sampler is one SIGPROF timer: one
    /// profile at a time).
    #[error("a CPU profile is already running in this process; one runs at a time, try again when it ends")]
    AlreadyRunning,
    /// The sampler's table could not be mapped, or its signal handler or timer installed.
    #[error("the CPU profiler could not be started: {0}")]
    Start(String),
    /// The caller gave up before the session's end (its client went away): nothing was named.
    #[error("the CPU profile was cancelled before its end")]
    Cancelled,
}

/// The process's one CPU sampler, claimed: take it, then [`profile`](Reservation::profile).
/// A server takes it before it commits a thread to a session of many seconds, so a second
/// request is refused at once; dropping it unused frees the sampler.
#[derive(Debug)]
pub struct Reservation {
    _claimed: (),
}

impl Reservation {
    /// Claims the sampler.
    ///
    /// # Errors
    /// [`CpuProfileError::AlreadyRunning`] while another reservation exists.
    pub fn take() -> Result<Reservation, CpuProfileError> {
        crate::fork::register(crate::fork::Rank::CpuSession, &FORK_HOOKS);
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| CpuProfileError::AlreadyRunning)?;
        Ok(Reservation { _claimed: () })
    }

    /// Samples every thread's CPU time for `duration` (blocking the calling thread that long,
    /// asleep), then names the stacks: a profile of [`SAMPLES_PER_SECOND`] samples a second of
    /// CPU used. Naming runs after the timer is stopped, so it is not in the profile.
    ///
    /// # Errors
    /// [`CpuProfileError::Start`] when the sampler cannot be installed.
    pub fn profile(self, duration: Duration) -> Result<CpuProfile, CpuProfileError> {
        self.profile_until(duration, &|| false)
    }

    /// [`profile`](Reservation::profile), ended early when `cancelled` answers true (asked
    /// every 100 ms): the sampler is stopped, its memory returned and the reservation freed
    /// at once, and nothing is named.
    ///
    /// # Errors
    /// [`CpuProfileError::Cancelled`] when cancelled; [`CpuProfileError::Start`] when the
    /// sampler cannot be installed.
    pub fn profile_until(
        self,
        duration: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<CpuProfile, CpuProfileError> {
        let start_time = SystemTime::now();
        let started = Instant::now();
        let sampling = Sampling::start(SAMPLES_PER_SECOND)
            .map_err(|error| CpuProfileError::Start(error.0.to_string()))?;
        loop {
            if cancelled() {
                return Err(CpuProfileError::Cancelled);
            }
            let left = duration.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(CANCEL_CHECK));
        }
        let collected = sampling.finish();
        let duration = started.elapsed();
        let stacks = collected
            .stacks
            .into_iter()
            .map(
                |(thread, return_addresses, count)| crate::cpu::convert::RawStack {
                    thread,
                    return_addresses,
                    count,
                },
            )
            .collect();
        let mut profile = crate::cpu::convert::profile_of(stacks);
        profile.time_nanos = start_time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
            });
        profile.duration = duration;
        profile.samples_per_second = SAMPLES_PER_SECOND;
        profile.lost_samples = collected.lost;
        Ok(profile)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Samples the process's CPU time for `duration`: [`Reservation::take`] then
/// [`Reservation::profile`]. Blocks the calling thread for `duration`.
///
/// # Errors
/// [`CpuProfileError::AlreadyRunning`] while another profile runs; see
/// [`Reservation::profile`].
pub fn profile(duration: Duration) -> Result<CpuProfile, CpuProfileError> {
    Reservation::take()?.profile(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reservation_at_a_time() {
        let first = Reservation::take().expect("the sampler is free");
        assert_eq!(
            Reservation::take().unwrap_err(),
            CpuProfileError::AlreadyRunning
        );
        assert!(CpuProfileError::AlreadyRunning
            .to_string()
            .contains("already running"));
        drop(first);
        drop(Reservation::take().expect("free again once dropped"));
    }
}
