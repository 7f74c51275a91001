//! A check that starts while another runs samples as finely as the first.
//!
//! The first check sets the process-wide rate to 1 KiB; other threads apply a new rate only at
//! their next sampling point, which at a coarse rate can be a MiB of their allocation away. A
//! thread that joins with a check of its own must redraw its interval at once, or a small leak
//! passes unsampled and unnamed. Its own process: it sets the process-wide rate, which would
//! disturb checks running in parallel beside it.

use std::sync::mpsc;

mod requests;
use requests::{assert_blames_remember_request, handle_request, remember_request};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// 100 KiB kept: far less than the stale interval the joining thread counts down.
const SMALL_LEAK_BLOCKS: usize = 50;

#[test]
fn a_check_that_joins_a_running_one_still_names_a_small_leak() {
    // A coarse rate while the joining thread draws its interval: it then counts down a whole
    // MiB (the longest stretch between two of a thread's rate checks) before it would look
    // at the rate again.
    heapwatch::set_sample_rate(1 << 30);
    let (start_tx, start) = mpsc::channel::<()>();
    let (finished_tx, finished) = mpsc::channel::<String>();
    let joiner = std::thread::spawn(move || {
        let mut log = Vec::with_capacity(SMALL_LEAK_BLOCKS + 16);
        remember_request(&mut log, 0);
        start.recv().unwrap();
        finished_tx.send(String::new()).unwrap();
        start.recv().unwrap();
        let mut id = 0;
        let report = heapwatch::leak_check::check(SMALL_LEAK_BLOCKS, 0, || {
            id += 1;
            remember_request(&mut log, id);
        })
        .expect_err("100 KiB kept must be caught");
        finished_tx.send(report.to_string()).unwrap();
        report
    });
    // One round trip first: the channels allocate their buffers on first use, and that must
    // not happen inside the outer check, on its thread.
    start_tx.send(()).unwrap();
    finished.recv().unwrap();
    let mut scratch = Vec::new();
    let mut calls = 0;
    heapwatch::leak_check::assert_no_leak(100, || {
        calls += 1;
        if calls == 50 {
            // The other check runs from start to end inside this one.
            start_tx.send(()).unwrap();
            finished.recv().unwrap();
        }
        handle_request(&mut scratch, 7);
    });
    let report = joiner.join().unwrap();
    println!("joined check: {report}");
    assert_blames_remember_request(&report);
    assert_eq!(heapwatch::sample_rate(), 1 << 30, "restored");
}
