//! The caching unwinder against libgcc's, on many stacks: recursion 15 and 40 deep (and past
//! the 64-frame cut), tokio tasks on a multi-threaded runtime, an axum request served by
//! tokio, and a signal handler's stack. Each comparison unwinds the same stack with both and
//! requires the same return addresses, frame for frame (`heapwatch::__compare_unwinders`,
//! which bypasses the chains already confirmed). Run in the release build without frame
//! pointers, this is the case the caching unwinder exists for. And the sampled path itself:
//! after warm-up, a loop of alloc/free pairs (the callgrind harness's) is unwound by the
//! caching unwinder, not handed to libgcc's sample after sample.

#![cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]

use heapwatch::__UnwinderComparison as Comparison;
use std::alloc::{alloc, dealloc, Layout};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Whether this build has the caching unwinder and a glibc with `_dl_find_object`. Not asked
/// of the walk itself: a walk that cannot unwind this binary (as when its unwind tables lay
/// outside the mapping of its code) must fail these tests, not skip them.
fn available() -> bool {
    // SAFETY: `dlsym` with `RTLD_DEFAULT` and a NUL-terminated name has no other precondition.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
    cfg!(feature = "cached-unwinder") && !found.is_null()
}

#[track_caller]
fn assert_agree(what: &str, comparison: Comparison, at_least: usize) {
    match comparison {
        Comparison::Agree(frames) => assert!(
            frames >= at_least,
            "{what}: only {frames} frames in common, expected {at_least}"
        ),
        Comparison::Disagree { cached, libgcc } => panic!(
            "{what}: the unwinders disagree\n cached: {:x?}\n libgcc: {:x?}",
            cached, libgcc
        ),
        Comparison::NotWalked => panic!("{what}: the caching unwinder did not walk"),
    }
}

#[inline(never)]
fn nested(depth: usize) -> Comparison {
    if depth == 0 {
        heapwatch::__compare_unwinders()
    } else {
        std::hint::black_box(nested(depth - 1))
    }
}

#[test]
fn recursion_15_40_and_past_the_cut() {
    if !available() {
        return;
    }
    for depth in [0, 15, 40, 100] {
        for round in 0..3 {
            assert_agree(
                &format!("recursion {depth} deep, round {round}"),
                nested(depth),
                depth.min(60),
            );
        }
    }
    // Threads of their own, and a thread with a small stack.
    std::thread::spawn(|| assert_agree("spawned thread", nested(15), 15))
        .join()
        .unwrap();
    std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(|| assert_agree("64 KiB stack", nested(40), 40))
        .unwrap()
        .join()
        .unwrap();
}

#[inline(never)]
async fn leaf_task(depth: usize) -> usize {
    tokio::task::yield_now().await;
    match nested(depth) {
        Comparison::Agree(frames) => frames,
        other => panic!("tokio task, {depth} deep: {other:?}"),
    }
}

#[test]
fn tokio_tasks_on_worker_threads() {
    if !available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..32).map(|i| tokio::spawn(leaf_task(i % 20))).collect();
        for task in tasks {
            assert!(task.await.unwrap() > 5);
        }
    });
}

static HANDLER_FRAMES: AtomicUsize = AtomicUsize::new(0);

async fn handler() -> String {
    let frames = match nested(3) {
        Comparison::Agree(frames) => frames,
        other => panic!("axum handler: {other:?}"),
    };
    HANDLER_FRAMES.store(frames, Ordering::SeqCst);
    format!("{frames}")
}

#[test]
fn an_axum_request_served_by_tokio() {
    if !available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/orders", axum::routing::get(handler));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        for _ in 0..3 {
            let response = tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(address).unwrap();
                stream
                    .write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                response
            })
            .await
            .unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        }
    });
    // axum's and hyper's frames between the handler and the worker thread's start.
    assert!(HANDLER_FRAMES.load(Ordering::SeqCst) > 15);
}

/// 0: not run; 1: agreed; 2: gave the stack to libgcc; 3: disagreed.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn allocate_in_handler() {
    std::mem::forget(std::hint::black_box(vec![3u8; 777]));
}

#[inline(never)]
fn raise_here() {
    // SAFETY: raised synchronously on this thread, outside any allocator, so the handler may
    // allocate.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    std::hint::black_box(());
}

#[test]
fn a_signal_handler_on_the_threads_own_stack() {
    if !available() {
        return;
    }
    extern "C" fn on_signal(_: libc::c_int) {
        let outcome = match nested(5) {
            Comparison::Agree(_) => 1,
            Comparison::NotWalked => 2,
            Comparison::Disagree { .. } => 3,
        };
        IN_HANDLER.store(outcome, Ordering::SeqCst);
        allocate_in_handler();
    }
    // SAFETY: a zeroed `sigaction` filled as the ABI requires.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    heapwatch::set_stack_capture(heapwatch::StackCapture::Unwinder);
    heapwatch::set_sample_rate(1);
    for _ in 0..3 {
        raise_here();
    }
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    // The signal frame (its CFA read from the saved context) is beyond framehop: the raw walk
    // may agree, give up, or (taking the frame-pointer chain instead) disagree; printed.
    let outcome = IN_HANDLER.load(Ordering::SeqCst);
    println!("signal handler: raw walk outcome {outcome} (1 agreed, 2 libgcc, 3 disagreed)");
    assert_ne!(outcome, 0, "the handler did not run");
    // What the sampled path keeps must be right whatever the walk did: the handler's
    // allocation, through the signal frame, to the function that raised the signal.
    let profile = heapwatch::snapshot();
    let crossing = profile.samples.iter().any(|sample| {
        let names: Vec<String> = profile.stack_names(sample).collect();
        names.iter().any(|n| n.ends_with("allocate_in_handler"))
            && names.iter().any(|n| n.ends_with("raise_here"))
    });
    assert!(
        crossing,
        "no sample crosses the signal frame (disagreements: {})",
        heapwatch::__unwinder_disagreements()
    );
}

/// `tools/callgrind/pairs.rs`'s loop: alloc/free pairs of one size, freed at once.
#[inline(never)]
fn run_pairs(pairs: u64, size: usize) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    for _ in 0..pairs {
        // SAFETY: non-zero size; freed at once with the same layout.
        unsafe {
            let ptr = alloc(layout);
            std::hint::black_box(ptr);
            if !ptr.is_null() {
                dealloc(ptr, layout);
            }
        }
    }
}

#[test]
fn after_warm_up_samples_are_unwound_by_the_cached_walk() {
    if !available() {
        return;
    }
    heapwatch::set_stack_capture(heapwatch::StackCapture::Unwinder);
    // Warm-up: the objects are added and the loop's chain confirmed by libgcc's, once.
    run_pairs(20_000, 4096);
    let (samples_before, libgcc_before) = heapwatch::__unwinder_samples_here();
    // ~3,000 samples at the default rate (1 in 512 KiB); another test may sample every
    // allocation meanwhile, which only adds samples.
    run_pairs(400_000, 4096);
    let (samples_after, libgcc_after) = heapwatch::__unwinder_samples_here();
    let (samples, libgcc) = (samples_after - samples_before, libgcc_after - libgcc_before);
    println!("after warm-up: {samples} samples, {libgcc} unwound by libgcc");
    assert!(samples >= 1_000, "only {samples} samples");
    // Before: a binary whose code and unwind tables lay in separate mappings (a gap page
    // between its segments) had every sample unwound by libgcc, ~8 times the cost.
    assert!(
        libgcc * 100 <= samples,
        "{libgcc} of {samples} samples went to libgcc's unwinder after warm-up"
    );
}
