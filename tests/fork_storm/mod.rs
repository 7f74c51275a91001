//! Forks hundreds of times while other threads allocate at sample rate 1 (so they hold
//! heapwatch's table lock most of the time), name profiles (the symbolizer's lock) and render
//! metrics (the recorder's locks), in every stack-capture mode, from the main thread and from a
//! spawned one. Each child allocates (sampled), frees a block its parent sampled, renders the
//! metrics, names a profile now and then, and exits. A child that has not exited within
//! [`CHILD_DEADLINE`] is hung: it is killed and counted (with gdb's backtrace when gdb is
//! installed). The run passes with zero hung children and every child exiting 0.
//!
//! With feature `tracing`, `heapwatch::SpanLayer` is installed and one more thread creates
//! spans with ever new field values (each interned under the span tags' lock) and allocates in
//! them; each child creates a span of its own, allocates in it, and names its tags.
//!
//! Shared by `hostile_fork.rs` (over `System`) and `hostile_fork_jemalloc.rs` (over
//! jemalloc): a test binary has one global allocator.

use heapwatch::StackCapture;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Forks per capture mode (half from the main thread, half from a spawned one).
const FORKS_PER_MODE: usize = 240;
/// A healthy child exits in milliseconds; one that has not after this is deadlocked.
const CHILD_DEADLINE: Duration = Duration::from_secs(20);
/// Stop a mode early once this many children hung: the verdict is already "fail".
const ENOUGH_HUNG: usize = 3;

#[derive(Default, Debug)]
struct Outcome {
    forks: usize,
    hung: usize,
    failed: usize,
}

/// Runs the storm in every mode; returns the process exit code.
pub fn run(allocator: &str) -> i32 {
    let modes = [
        StackCapture::Auto,
        StackCapture::Unwinder,
        StackCapture::FramePointers,
    ];
    #[cfg(feature = "tracing")]
    {
        use tracing_subscriber::prelude::*;
        tracing_subscriber::registry()
            .with(heapwatch::SpanLayer::new().with_fields(["route"]))
            .init();
    }
    let mut failed = false;
    for mode in modes {
        heapwatch::set_stack_capture(mode);
        heapwatch::set_sample_rate(1);
        let outcome = storm();
        heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
        let ok = outcome.hung == 0 && outcome.failed == 0 && outcome.forks == FORKS_PER_MODE;
        println!(
            "fork storm over {allocator}, capture {mode:?}: {} forks, {} hung, {} failed: {}",
            outcome.forks,
            outcome.hung,
            outcome.failed,
            if ok { "ok" } else { "FAILED" }
        );
        failed |= !ok;
    }
    i32::from(failed)
}

fn storm() -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let mut churners: Vec<_> = (0..2)
        .map(|seed| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || churn(seed, &stop))
        })
        .collect();
    let namer_stop = Arc::clone(&stop);
    churners.push(std::thread::spawn(move || name_profiles(&namer_stop)));
    #[cfg(feature = "http")]
    {
        let renderer_stop = Arc::clone(&stop);
        churners.push(std::thread::spawn(move || render_metrics(&renderer_stop)));
    }
    #[cfg(feature = "tracing")]
    {
        let spans_stop = Arc::clone(&stop);
        churners.push(std::thread::spawn(move || tag_spans(&spans_stop)));
    }
    // A block the parent sampled, for the children to free.
    let inherited = vec![7u8; 4096];
    let mut outcome = Outcome::default();
    while outcome.forks < FORKS_PER_MODE && outcome.hung < ENOUGH_HUNG {
        let from_thread = outcome.forks % 2 == 1;
        let symbolize = outcome.forks % 4 == 0;
        let inherited_ptr = inherited.as_ptr() as usize;
        let result = if from_thread {
            std::thread::spawn(move || fork_and_wait(inherited_ptr, symbolize))
                .join()
                .expect("forking thread")
        } else {
            fork_and_wait(inherited_ptr, symbolize)
        };
        outcome.forks += 1;
        match result {
            Child::Exited(0) => {}
            Child::Exited(code) => {
                eprintln!("child exited {code}");
                outcome.failed += 1;
            }
            Child::Hung => outcome.hung += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.join().expect("churner");
    }
    drop(black_box(inherited));
    outcome
}

/// Allocates and frees blocks of varied sizes until told to stop: at sample rate 1 every one
/// is sampled, so the table lock is taken on every allocation and free.
fn churn(seed: usize, stop: &AtomicBool) {
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let size = 16 + (i >> 40) % 2000;
        if kept.len() == 64 {
            kept.swap_remove((i >> 20) % 64);
        }
        kept.push(black_box(vec![1u8; size]));
    }
}

/// Names profiles until told to stop: holds the symbolizer's lock, and the table's while it
/// copies it.
fn name_profiles(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        black_box(heapwatch::snapshot());
    }
}

/// Renders `/metrics` until told to stop: holds the metrics registry's locks.
#[cfg(feature = "http")]
fn render_metrics(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        black_box(heapwatch::http::render_metrics());
    }
}

/// Creates spans with new field values (each interned under the span tags' lock) and allocates
/// in them until told to stop.
#[cfg(feature = "tracing")]
fn tag_spans(stop: &AtomicBool) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let route = format!("/storm/{i}");
        let span = tracing::info_span!("storm", route = route.as_str());
        black_box(span.in_scope(|| vec![i as u8; 256]));
    }
}

enum Child {
    Exited(i32),
    Hung,
}

fn fork_and_wait(inherited_ptr: usize, symbolize: bool) -> Child {
    // SAFETY: the child only runs `child_body`, which uses the allocator and heapwatch (what the
    // test is about: both are fork-safe), and leaves with `_exit` without running the parent's
    // destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = child_body(inherited_ptr, symbolize);
        // SAFETY: ends the child at once; nothing of the parent's state is torn down.
        unsafe { libc::_exit(code) };
    }
    match crate::common::wait_for_child(pid, CHILD_DEADLINE, |pid| {
        eprintln!("child {pid} hung; killing it");
        print_stack(pid);
    }) {
        Some(code) => Child::Exited(code),
        None => Child::Hung,
    }
}

fn child_body(inherited_ptr: usize, symbolize: bool) -> i32 {
    // Sampled allocations and frees: each takes the table lock.
    let mut blocks: Vec<Vec<u8>> = (0..32).map(|n| vec![n as u8; 100 + n * 50]).collect();
    blocks.truncate(8);
    // Free the parent's sampled block: the free path looks it up in the table.
    // SAFETY: the parent allocated it as a `Vec<u8>` of length and capacity 4096 and will not
    // free it in this process (the child never returns to the parent's code).
    let inherited = unsafe { Vec::from_raw_parts(inherited_ptr as *mut u8, 4096, 4096) };
    if inherited.iter().any(|&b| b != 7) {
        return 2;
    }
    drop(inherited);
    // A new span: its tag is interned under the span tags' lock, which the parent's span thread
    // may have held at the fork.
    #[cfg(feature = "tracing")]
    {
        let span = tracing::info_span!("child", route = "/child");
        blocks.push(span.in_scope(|| vec![9u8; 5000]));
    }
    if symbolize {
        // Names the stacks: takes the symbolizer's lock as well.
        let profile = heapwatch::snapshot();
        if profile.total(heapwatch::SampleType::InuseSpace) <= 0 {
            return 3;
        }
    }
    #[cfg(feature = "http")]
    if !heapwatch::http::render_metrics().contains("heapwatch_heap_live_bytes") {
        return 5;
    }
    let stats = heapwatch::profiler_stats();
    i32::from(stats.live_samples == 0) * 4
}

/// Where a hung child waits, for the test log: gdb's backtrace if gdb is installed.
fn print_stack(pid: libc::pid_t) {
    let gdb = std::process::Command::new("gdb")
        .args(["-batch", "-p", &pid.to_string(), "-ex", "bt"])
        .output();
    match gdb {
        Ok(out) => eprintln!("{}", String::from_utf8_lossy(&out.stdout)),
        Err(_) => eprintln!("(gdb not installed: no backtrace of the hung child)"),
    }
}
