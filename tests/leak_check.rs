//! The test mode catches a leaking closure, naming the leaking function, and passes a clean
//! one — while other tests allocate on other threads.

use std::hint::black_box;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

#[inline(never)]
fn remember_request(log: &mut Vec<Vec<u8>>, id: usize) {
    log.push(vec![id as u8; 2048]);
}

#[inline(never)]
fn handle_request(scratch: &mut Vec<u8>, id: usize) -> usize {
    scratch.clear();
    scratch.extend(std::iter::repeat_n(id as u8, 4096));
    let temporary: Vec<String> = (0..16).map(|i| format!("{id}-{i}")).collect();
    black_box(temporary.len() + scratch.len())
}

#[test]
fn a_leaking_closure_fails_and_names_the_leak() {
    let mut log = Vec::new();
    let mut id = 0;
    let report = heapwatch::leak_check::check(500, 0, || {
        id += 1;
        remember_request(&mut log, id);
    })
    .expect_err("500 × 2 KiB kept must be caught");
    println!("leak: {report}");
    assert!(report.grown_bytes >= 500 * 2048, "{report}");
    let top = &report
        .growing_sites
        .first()
        .expect("a growing site")
        .function;
    assert!(
        top.contains("remember_request"),
        "top growing site {top}: {report}"
    );
    let message = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        heapwatch::leak_check::assert_no_leak(100, || {
            id += 1;
            remember_request(&mut log, id);
        })
    }))
    .expect_err("assert_no_leak panics");
    let message = message.downcast_ref::<String>().expect("formatted message");
    assert!(message.contains("remember_request"), "{message}");
}

#[test]
fn a_clean_closure_passes() {
    let mut scratch = Vec::new();
    let mut id = 0;
    heapwatch::leak_check::assert_no_leak(500, || {
        id += 1;
        handle_request(&mut scratch, id);
    });
}

#[test]
fn other_threads_allocating_do_not_disturb_the_check() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                kept.push(vec![1u8; 512]);
            }
            kept.len()
        })
    };
    let mut scratch = Vec::new();
    heapwatch::leak_check::assert_no_leak(2000, || {
        handle_request(&mut scratch, 7);
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(noise.join().unwrap() > 0);
}
