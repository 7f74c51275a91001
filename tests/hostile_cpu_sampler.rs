//! The CPU sampler inside a hostile host: it installs a `SIGPROF` handler and a process-wide
//! timer, so each scenario attacks what that can break.
//!
//! - `host_handler_is_put_back`: the program had its own `SIGPROF` action; after a profile, and
//!   after a cancelled one, that action is in place again, and its own handler still runs; a
//!   default action comes back as "ignore" (a signal of the stopped timer may still be
//!   pending); the program's own `ITIMER_PROF` is put back.
//! - `unwinders_busy_everywhere`: while a profile samples, threads panic and catch in a loop
//!   (libgcc's unwinder in use) and allocate with heapwatch's stack capture on libgcc's
//!   unwinder: the profile ends, within a watchdog, and the threads finish their rounds.
//! - `forks_during_a_profile`: the parent forks 16 times while it profiles; each child takes a
//!   profile of its own, which must count its busy thread, and exits.
//! - `cancelled_at_once`: a session cancelled after 300 ms returns `Cancelled` within 500 ms and
//!   the sampler is free at once.
//!
//! `harness = false`: the scenarios run one after another (the sampler is process-wide);
//! `cargo test --test hostile_cpu_sampler -- NAME` runs those whose name contains NAME.
//!
//! Frame-pointer pass: not needed — the CPU sampler unwinds with libgcc whatever the build.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// A scenario: `Err` says what went wrong.
type Scenario = fn() -> Result<(), String>;

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: [(&str, Scenario); 4] = [
        ("host_handler_is_put_back", host_handler_is_put_back),
        ("unwinders_busy_everywhere", unwinders_busy_everywhere),
        ("forks_during_a_profile", forks_during_a_profile),
        ("cancelled_at_once", cancelled_at_once),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match scenario() {
            Ok(()) => {
                println!("hostile_cpu_sampler: {name}: ok");
                passed += 1;
            }
            Err(why) => {
                eprintln!("hostile_cpu_sampler: {name}: FAILED: {why}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Busy threads until dropped.
struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Busy {
    fn start(count: usize, round: fn(u64) -> u64) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        black_box(round(rounds ^ t as u64));
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        Busy { stop, threads }
    }

    /// Stops the threads; the rounds each ran.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .map(|t| t.join().unwrap_or(0))
            .collect()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn spin(seed: u64) -> u64 {
    (0..10_000u64).fold(seed, |s, i| s.rotate_left(5).wrapping_mul(31) ^ i)
}

static HOST_HANDLER_RAN: AtomicU64 = AtomicU64::new(0);

extern "C" fn host_handler(_: libc::c_int) {
    HOST_HANDLER_RAN.fetch_add(1, Ordering::Relaxed);
}

fn current_sigprof_handler() -> libc::sighandler_t {
    // SAFETY: querying the current action into a zeroed struct.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut action);
        action.sa_sigaction
    }
}

fn host_handler_is_put_back() -> Result<(), String> {
    let mine = host_handler as *const () as libc::sighandler_t;
    // SAFETY: installing a plain handler that only counts.
    unsafe { libc::signal(libc::SIGPROF, mine) };
    let busy = Busy::start(1, spin);
    let profile = heapwatch::cpu::profile(Duration::from_millis(500)).map_err(|e| e.to_string())?;
    if profile.total_samples() == 0 {
        return Err("a busy thread, no sample".into());
    }
    if current_sigprof_handler() != mine {
        return Err("after a profile, SIGPROF's action is not the program's".into());
    }
    let reservation = heapwatch::cpu::Reservation::take().map_err(|e| e.to_string())?;
    let cancelled = reservation.profile_until(Duration::from_secs(5), &|| true);
    if !matches!(cancelled, Err(heapwatch::cpu::CpuProfileError::Cancelled)) {
        return Err(format!("cancelled at once: {cancelled:?}"));
    }
    if current_sigprof_handler() != mine {
        return Err("after a cancelled profile, SIGPROF's action is not the program's".into());
    }
    let before = HOST_HANDLER_RAN.load(Ordering::Relaxed);
    // SAFETY: raising a signal whose handler only counts.
    unsafe { libc::raise(libc::SIGPROF) };
    if HOST_HANDLER_RAN.load(Ordering::Relaxed) <= before {
        return Err("the program's own SIGPROF handler did not run".into());
    }
    // The program's default action comes back as "ignore": a signal of the stopped timer may
    // still be pending, and the default would end the process.
    // SAFETY: back to the default action.
    unsafe { libc::signal(libc::SIGPROF, libc::SIG_DFL) };
    // The program's own profiling timer, far in the future, is put back after a profile.
    let host_timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 3600,
            tv_usec: 0,
        },
    };
    // SAFETY: valid `itimerval`s.
    unsafe { libc::setitimer(libc::ITIMER_PROF, &host_timer, std::ptr::null_mut()) };
    heapwatch::cpu::profile(Duration::from_millis(300)).map_err(|e| e.to_string())?;
    let mut after = host_timer;
    // SAFETY: reads the timer into a valid `itimerval`.
    unsafe { libc::getitimer(libc::ITIMER_PROF, &mut after) };
    let stopped = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: stops the program's timer before the next scenario.
    unsafe { libc::setitimer(libc::ITIMER_PROF, &stopped, std::ptr::null_mut()) };
    drop(busy);
    if after.it_value.tv_sec < 3000 {
        return Err(format!(
            "the program's profiling timer was not put back: {} s left",
            after.it_value.tv_sec
        ));
    }
    if current_sigprof_handler() != libc::SIG_IGN {
        return Err("a default SIGPROF action did not come back as SIG_IGN".into());
    }
    // SAFETY: back to the default before the next scenario.
    unsafe { libc::signal(libc::SIGPROF, libc::SIG_DFL) };
    Ok(())
}

fn panic_and_catch(seed: u64) -> u64 {
    std::panic::catch_unwind(|| {
        if black_box(seed) != u64::MAX {
            std::panic::panic_any(seed);
        }
        seed
    })
    .unwrap_or(seed)
}

fn allocate_deep(seed: u64) -> u64 {
    fn down(depth: u32, seed: u64) -> u64 {
        if depth == 0 {
            return black_box(vec![seed as u8; 4096]).len() as u64;
        }
        down(depth - 1, seed).wrapping_add(1)
    }
    down(20 + (seed % 20) as u32, seed)
}

fn unwinders_busy_everywhere() -> Result<(), String> {
    heapwatch::set_stack_capture(heapwatch::StackCapture::SystemUnwinder);
    // Every allocation sampled, so heapwatch's capture (libgcc's unwinder) runs constantly.
    let previous_rate = heapwatch::sample_rate();
    heapwatch::set_sample_rate(1);
    std::panic::set_hook(Box::new(|_| {}));
    let panics = Busy::start(2, panic_and_catch);
    let allocations = Busy::start(2, allocate_deep);
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(heapwatch::cpu::profile(Duration::from_secs(3)));
    });
    let outcome = result.recv_timeout(Duration::from_secs(60));
    let panic_rounds = panics.finish();
    let allocation_rounds = allocations.finish();
    let _ = std::panic::take_hook();
    heapwatch::set_sample_rate(previous_rate);
    heapwatch::set_stack_capture(heapwatch::StackCapture::Auto);
    let profile = match outcome {
        Ok(Ok(profile)) => profile,
        Ok(Err(error)) => return Err(format!("the profile failed: {error}")),
        Err(_) => return Err("the profile did not end within 60 s (a deadlock)".into()),
    };
    println!(
        "hostile_cpu_sampler: unwinders busy: {} samples, {} lost; rounds: panics {panic_rounds:?}, allocations {allocation_rounds:?}",
        profile.total_samples(),
        profile.lost_samples
    );
    if panic_rounds
        .iter()
        .chain(&allocation_rounds)
        .any(|&r| r == 0)
    {
        return Err("a thread made no progress".into());
    }
    if profile.total_samples() == 0 {
        return Err("four busy threads, no sample".into());
    }
    Ok(())
}

fn forks_during_a_profile() -> Result<(), String> {
    let busy = Busy::start(1, spin);
    let reservation = heapwatch::cpu::Reservation::take().map_err(|e| e.to_string())?;
    let parent = std::thread::spawn(move || reservation.profile(Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(200));
    let mut failures = Vec::new();
    for round in 0..16 {
        // SAFETY: the child runs ordinary Rust (heapwatch is fork-safe: what is tested) and
        // leaves through `_exit` with its verdict.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let busy = Busy::start(1, spin);
            let verdict = match heapwatch::cpu::profile(Duration::from_millis(300)) {
                Ok(profile) if profile.total_samples() > 0 => 0,
                Ok(_) => 2,
                Err(_) => 3,
            };
            drop(busy);
            // SAFETY: leaves the child at once, its verdict as the exit code.
            unsafe { libc::_exit(verdict) };
        }
        match common::wait_for_child(pid, Duration::from_secs(30), |_| {}) {
            Some(0) => {}
            other => failures.push(format!(
                "child {round}: {other:?} (2: no sample, 3: error, None: hung)"
            )),
        }
    }
    let profile = parent
        .join()
        .map_err(|_| "the parent's profile panicked".to_string())?
        .map_err(|e| format!("the parent's profile: {e}"))?;
    drop(busy);
    if profile.total_samples() == 0 {
        failures.push("the parent's profile counted nothing".into());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn cancelled_at_once() -> Result<(), String> {
    let reservation = heapwatch::cpu::Reservation::take().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let result = reservation.profile_until(Duration::from_secs(30), &|| {
        started.elapsed() > Duration::from_millis(300)
    });
    let took = started.elapsed();
    if !matches!(result, Err(heapwatch::cpu::CpuProfileError::Cancelled)) {
        return Err(format!("{result:?}"));
    }
    if took > Duration::from_millis(500) {
        return Err(format!("cancelled after 300 ms, returned after {took:?}"));
    }
    drop(
        heapwatch::cpu::Reservation::take()
            .map_err(|e| format!("the sampler is not free after a cancel: {e}"))?,
    );
    Ok(())
}
