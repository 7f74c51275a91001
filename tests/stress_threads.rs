//! 1,000 threads started and joined, each allocating, reallocating and freeing at a 1 KiB
//! sampling rate, some of their blocks freed by another thread, some allocation done while the
//! thread's locals are being destroyed (after heapwatch's own exit hook has run). Afterwards the
//! exact counters are back to where they started and no sample of theirs is left in the table.
//!
//! Own binary without libtest's harness: the counters are global, so nothing else may allocate.

use std::cell::RefCell;
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

const THREADS: usize = 1000;
const WAVE: usize = 250;

thread_local! {
    /// Its destructor allocates and frees during thread-local destruction.
    static SCRATCH: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A pthread key's destructor runs after every Rust thread-local destructor (glibc runs
/// `__call_tls_dtors` first), so after heapwatch released the thread's counter block.
static mut LATE_KEY: libc::pthread_key_t = 0;

static LATE_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn late_destructor(value: *mut libc::c_void) {
    LATE_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the value was set from `Box::into_raw` on this thread and is destroyed once.
    let boxed = unsafe { Box::from_raw(value as *mut Vec<u8>) };
    let late = vec![7u8; 3000];
    std::hint::black_box((&late, &boxed));
}

#[inline(never)]
fn stress_worker(seed: usize, to_other_thread: &mpsc::Sender<Vec<u8>>) -> Vec<u8> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for j in 0..200 {
        blocks.push(vec![j as u8; (seed * 31 + j * 37) % 3000 + 1]);
    }
    let mut text = String::new();
    for _ in 0..300 {
        text.push_str("realloc grows this string ");
    }
    blocks.truncate(50);
    blocks.shrink_to_fit();
    to_other_thread.send(vec![1u8; 2048 + seed % 512]).ok();
    SCRATCH.with(|s| s.borrow_mut().push(text.clone()));
    // SAFETY: the key was created in main before any thread started; the value is a leaked box
    // reclaimed by `late_destructor`.
    unsafe {
        let late = Box::into_raw(Box::new(vec![0u8; 1500]));
        libc::pthread_setspecific(LATE_KEY, late as *const libc::c_void);
    }
    // Returned to the joining thread, which frees it.
    vec![seed as u8; 1000 + seed % 100]
}

fn main() {
    heapwatch::set_sample_rate(1024);
    // SAFETY: creating a key with a valid destructor before any thread uses it.
    unsafe {
        assert_eq!(
            libc::pthread_key_create(&raw mut LATE_KEY, Some(late_destructor)),
            0
        );
    }
    drop(heapwatch::snapshot());
    let before = heapwatch::stats();
    let samples_before = heapwatch::profiler_stats().live_samples;

    let (sender, receiver) = mpsc::channel::<Vec<u8>>();
    let freer = thread::spawn(move || receiver.into_iter().map(|v| v.len()).sum::<usize>());
    let mut returned = 0usize;
    for wave in 0..THREADS / WAVE {
        let handles: Vec<_> = (0..WAVE)
            .map(|i| {
                let sender = sender.clone();
                thread::spawn(move || stress_worker(wave * WAVE + i, &sender))
            })
            .collect();
        for handle in handles {
            returned += handle.join().expect("worker panicked").len();
        }
    }
    drop(sender);
    let freed_elsewhere = freer.join().expect("freer panicked");
    let after = heapwatch::stats();
    let own = heapwatch::profiler_stats();
    let profile = heapwatch::snapshot();

    let mut failures = Vec::new();
    println!(
        "{THREADS} threads: {} blocks allocated, {returned} bytes returned to main, {freed_elsewhere} freed on another thread",
        after.allocated_objects - before.allocated_objects
    );
    println!(
        "live before {} bytes / {} blocks, after {} / {}",
        before.live_bytes, before.live_objects, after.live_bytes, after.live_objects
    );
    if (after.live_bytes, after.live_objects) != (before.live_bytes, before.live_objects) {
        failures.push("live counters did not return to their baseline");
    }
    let orphans = heapwatch::__orphan_allocated_objects();
    println!("allocations after their thread's exit hook: {orphans}");
    if orphans < THREADS as u64 {
        failures.push("the late destructors did not allocate after heapwatch's exit hook");
    }
    let late_runs = LATE_RUNS.load(std::sync::atomic::Ordering::Relaxed);
    println!("late destructors run: {late_runs}");
    if late_runs != THREADS {
        failures.push("not every thread ran its late destructor");
    }
    println!(
        "live samples before {samples_before}, after {}",
        own.live_samples
    );
    if own.live_samples != samples_before {
        failures.push("live samples left in the table");
    }
    let worker_inuse: i64 = profile
        .samples
        .iter()
        .filter(|s| profile.stack_names(s).any(|n| n.contains("stress_worker")))
        .map(|s| s.value(heapwatch::SampleType::InuseSpace))
        .sum();
    let worker_alloc: i64 = profile
        .samples
        .iter()
        .filter(|s| profile.stack_names(s).any(|n| n.contains("stress_worker")))
        .map(|s| s.value(heapwatch::SampleType::AllocSpace))
        .sum();
    println!("stress_worker: inuse_space {worker_inuse}, alloc_space {worker_alloc}");
    if worker_inuse != 0 {
        failures.push("stress_worker still holds sampled memory");
    }
    if worker_alloc == 0 {
        failures.push("no stress_worker allocation was sampled at all");
    }
    if failures.is_empty() {
        println!("stress_threads: 1 passed, 0 failed");
    } else {
        println!("stress_threads: 0 passed, 1 failed: {failures:?}");
        std::process::exit(1);
    }
}
