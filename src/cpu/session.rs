//! A profiling session: the process-wide claim on the sampler, pprof-rs's SIGPROF timer for the
//! session's length, and its samples named.

use crate::cpu::data::CpuProfile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// 99 samples a second of CPU, pprof-rs's default (Go takes 100): a period that is not a round
/// number of milliseconds does not run in lockstep with the process's own periodic work, which
/// a 10 ms period would sample always or never. Each sample stands for ~10.1 ms of CPU.
pub const SAMPLES_PER_SECOND: u32 = 99;

/// Objects in which an interrupted thread's sample is dropped rather than unwound. The SIGPROF
/// handler unwinds with libgcc's `_Unwind_Backtrace`, which is not reentrant: a thread
/// interrupted inside libgcc's unwinder (heapwatch's own stack capture uses it, and so does
/// any panic) or inside libc/libpthread while it holds the loader's lock (`dl_iterate_phdr`,
/// which the unwinder takes to find unwind tables) would deadlock on its own lock in the
/// handler. The vDSO has no unwind tables the unwinder can read. Samples landing there are
/// not counted, so time spent inside libc (`memcpy`, `malloc`'s own code) is under-reported.
const UNWIND_BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// How often [`Reservation::profile_until`] asks whether to stop: a cancelled profile frees
/// the sampler within this.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// Set while a [`Reservation`] exists: pprof-rs's profiler is one per process, and its own
/// check would only refuse after installing a timer; this refuses a second session at once.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Set in a process forked while a profile ran: pprof-rs's profiler (one per process, behind a
/// lock of its own) came across marked running, and pprof-rs offers no way to reset it — nor
/// may its lock be taken safely, since the parent's thread may have held it at the fork.
static FORKED_WHILE_RUNNING: AtomicBool = AtomicBool::new(false);

/// A child has no thread profiling: the claim is free, and pprof-rs's state is not to be
/// touched if a profile ran at the fork.
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |_| {},
    release: |_| {},
    in_child: Some(|_| {
        if RUNNING.swap(false, Ordering::AcqRel) {
            FORKED_WHILE_RUNNING.store(true, Ordering::Release);
        }
    }),
};

/// Why no profile was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuProfileError {
    /// Another session holds the sampler (this process's sampler is one SIGPROF timer: one
    /// profile at a time).
    #[error("a CPU profile is already running in this process; one runs at a time, try again when it ends")]
    AlreadyRunning,
    /// pprof-rs could not install its signal handler or timer.
    #[error("the CPU profiler could not be started: {0}")]
    Start(String),
    /// pprof-rs could not hand back its samples.
    #[error("the CPU profile's samples could not be read: {0}")]
    Report(String),
    /// This process was forked while its parent took a CPU profile: pprof-rs's profiler came
    /// across marked running and cannot be reset, so no CPU profile can be taken here (heap
    /// profiles and everything else work).
    #[error("no CPU profile can be taken in this process: it was forked while its parent took one, and pprof-rs keeps its profiler's running state across fork with no way to reset it")]
    ForkedWhileRunning,
    /// [`Reservation::profile_until`] was told to stop before its duration was over (the
    /// client asking went away): the samples were discarded and the sampler is free.
    #[error("the CPU profile was cancelled before its duration was over")]
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
    /// [`CpuProfileError::AlreadyRunning`] while another reservation exists;
    /// [`CpuProfileError::ForkedWhileRunning`] in a process forked while a profile ran.
    pub fn take() -> Result<Reservation, CpuProfileError> {
        crate::fork::register(crate::fork::Rank::CpuSession, &FORK_HOOKS);
        if FORKED_WHILE_RUNNING.load(Ordering::Acquire) {
            return Err(CpuProfileError::ForkedWhileRunning);
        }
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
    /// [`CpuProfileError::AlreadyRunning`] when something else in the process runs pprof-rs's
    /// profiler; [`CpuProfileError::Start`] or [`CpuProfileError::Report`] when pprof-rs fails.
    pub fn profile(self, duration: Duration) -> Result<CpuProfile, CpuProfileError> {
        self.profile_until(duration, &|| false)
    }

    /// [`profile`](Reservation::profile), stopped early when `cancelled` says so: it is asked
    /// every 100 ms while the profile runs, and once it answers true the timer is
    /// stopped, the samples dropped and the sampler freed at once.
    ///
    /// # Errors
    /// As [`profile`](Reservation::profile), and [`CpuProfileError::Cancelled`].
    pub fn profile_until(
        self,
        duration: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<CpuProfile, CpuProfileError> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(SAMPLES_PER_SECOND as libc::c_int)
            .blocklist(&UNWIND_BLOCKLIST)
            .build()
            .map_err(|error| match error {
                pprof::Error::Running => CpuProfileError::AlreadyRunning,
                error => CpuProfileError::Start(error.to_string()),
            })?;
        // pprof-rs resolves one backtrace when it starts (to load its lazy statics), which
        // fills the `backtrace` crate's process-wide symbol cache: ~40 MB of DWARF for a
        // release binary, never used again here (heapwatch names stacks itself). Let it go.
        backtrace::clear_symbol_cache();
        let end = std::time::Instant::now() + duration;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if cancelled() {
                // The guard's drop stops the timer; `self`'s frees the sampler.
                return Err(CpuProfileError::Cancelled);
            }
            std::thread::sleep(left.min(CANCEL_CHECK));
        }
        // Unresolved first: dropping the guard stops the timer (and clears pprof-rs's
        // samples), so the symbolizer's own work below is neither sampled nor interrupted.
        let unresolved = guard
            .report()
            .build_unresolved()
            .map_err(|error| CpuProfileError::Report(error.to_string()))?;
        drop(guard);
        let time_nanos = unresolved
            .timing
            .start_time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
            });
        let duration = unresolved.timing.duration;
        let stacks = unresolved
            .data
            .iter()
            .filter_map(|(frames, &count)| {
                let name =
                    &frames.thread_name[..frames.thread_name_length.min(frames.thread_name.len())];
                Some(crate::cpu::convert::RawStack {
                    thread: if name.is_empty() {
                        frames.thread_id.to_string()
                    } else {
                        String::from_utf8_lossy(name).into_owned()
                    },
                    return_addresses: frames
                        .frames
                        .iter()
                        .map(|frame| frame.ip() as usize)
                        .collect(),
                    count: u64::try_from(count).ok()?,
                })
            })
            .collect();
        let mut profile = crate::cpu::convert::profile_of(stacks);
        profile.time_nanos = time_nanos;
        profile.duration = duration;
        profile.samples_per_second = SAMPLES_PER_SECOND;
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
