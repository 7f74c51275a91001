//! The timing loop the count_peers examples share, so that every counter is timed the same way:
//! per function, `ROUNDS` rounds, each timing the same number of measured iterations and then of
//! bare ones back to back, and the median per-iteration time of each kind over the rounds. Time
//! is the thread's CPU time (see [`thread_cpu_time`]).
//!
//! The iteration count is calibrated once per function so that a round of measured iterations
//! takes about [`ROUND_TARGET`]: dhat's measured iterations are hundreds of times slower than a
//! bare one, so a fixed count would be either too short to time or minutes long. The bare
//! iterations reuse the count, so both kinds see the same warm caches and the same number of
//! calls.

use std::hint::black_box;
use std::time::Duration;

/// 11 rounds: the median is the 6th, robust to a few rounds disturbed by the other processes on
/// a shared 2-core machine.
pub const ROUNDS: usize = 11;

/// ~15 ms of measured iterations per round: 5 functions × 11 rounds × (measured + bare) stay
/// within a few seconds per process even for dhat.
pub const ROUND_TARGET: Duration = Duration::from_millis(15);

/// Never more iterations per round than this (an empty closure would otherwise take millions).
const MAX_ITERATIONS: u64 = 200_000;

/// Median nanoseconds per iteration of `measured` and of `bare`, and the iterations per round.
pub struct Timed {
    pub measured_ns: f64,
    pub bare_ns: f64,
    pub iterations: u64,
}

/// Times `measured` and `bare` as described in the module doc. Each closure is one iteration,
/// including dropping what it built.
pub fn time_pair(mut measured: impl FnMut(), mut bare: impl FnMut()) -> Timed {
    // Warm-up, and the calibration: what one measured iteration costs once warm.
    for _ in 0..3 {
        measured();
        bare();
    }
    let mut iterations = 1u64;
    loop {
        let took = run(&mut measured, iterations);
        if took >= ROUND_TARGET / 4 || iterations >= MAX_ITERATIONS {
            let per_iteration = took.as_nanos() as f64 / iterations as f64;
            let wanted = ROUND_TARGET.as_nanos() as f64 / per_iteration.max(1.0);
            iterations = (wanted as u64).clamp(1, MAX_ITERATIONS);
            break;
        }
        iterations *= 4;
    }
    let mut measured_ns = Vec::with_capacity(ROUNDS);
    let mut bare_ns = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        measured_ns.push(per_iteration(run(&mut measured, iterations), iterations));
        bare_ns.push(per_iteration(run(&mut bare, iterations), iterations));
    }
    Timed {
        measured_ns: median(&mut measured_ns),
        bare_ns: median(&mut bare_ns),
        iterations,
    }
}

fn run(f: &mut impl FnMut(), iterations: u64) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..black_box(iterations) {
        f();
    }
    thread_cpu_time().saturating_sub(start)
}

/// The calling thread's CPU time. Not wall-clock time: on a machine whose cores are shared with
/// other work, time spent descheduled would land on whichever tool was running then, and the
/// four processes are timed minutes apart.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `timespec`; CLOCK_THREAD_CPUTIME_ID is a clock every
    // Linux and POSIX system provides (clock_gettime(2)), so the call only writes `now`.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn per_iteration(took: Duration, iterations: u64) -> f64 {
    took.as_nanos() as f64 / iterations as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints one function's result, for people and (the `ROW` line, tab-separated) for
/// `scripts/count_peers.sh`: tool, function, blocks, bytes, measured ns, bare ns, iterations per
/// round. `blocks`/`bytes` are `-` where the tool has no such figure.
pub fn print_row(tool: &str, function: &str, blocks: &str, bytes: &str, timed: &Timed) {
    println!(
        "{tool:>11} {function:<16} blocks {blocks:>4} bytes {bytes:>6}  measured {:>10.1} ns  bare {:>10.1} ns  ({} iterations x {ROUNDS} rounds)",
        timed.measured_ns, timed.bare_ns, timed.iterations
    );
    println!(
        "ROW\t{tool}\t{function}\t{blocks}\t{bytes}\t{:.1}\t{:.1}\t{}",
        timed.measured_ns, timed.bare_ns, timed.iterations
    );
}
