//! The test mode catches a leaking closure, naming the leaking function, and passes a clean
//! one — while other tests allocate on other threads.

use std::sync::mpsc;

mod requests;
use requests::{assert_blames_remember_request, handle_request, remember_request};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

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
    assert_blames_remember_request(&report);
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

/// Another thread that keeps 8 MiB (eight times the leak under test) at a named site, at the
/// moment the check asks: the growth lands inside the check's window whatever the scheduler
/// does, and stays alive until the check is over.
struct GrowthElsewhere {
    requests: Option<mpsc::Sender<bool>>,
    done: mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<usize>,
}

#[inline(never)]
fn grow_on_another_thread(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..16 * 1024 {
        kept.push(vec![1u8; 512]);
    }
}

impl GrowthElsewhere {
    fn start() -> Self {
        let (requests, inbox) = mpsc::channel::<bool>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut kept = Vec::new();
            // `true`: grow now; `false`: only answer. Kept until the channel closes.
            for grow in inbox {
                if grow {
                    grow_on_another_thread(&mut kept);
                }
                done_tx.send(()).unwrap();
            }
            kept.len()
        });
        let elsewhere = GrowthElsewhere {
            requests: Some(requests),
            done,
            thread,
        };
        // One round trip first: the channels allocate their buffers on first use, and that
        // must not happen inside the check, on the checking thread.
        elsewhere.ask(false);
        elsewhere
    }

    fn ask(&self, grow: bool) {
        self.requests.as_ref().unwrap().send(grow).unwrap();
        self.done.recv().expect("the other thread answers");
    }

    /// Makes the other thread grow, and returns once it has.
    fn grow_now(&self) {
        self.ask(true);
    }

    /// Lets the other thread free its memory; the blocks it kept.
    fn finish(mut self) -> usize {
        drop(self.requests.take());
        self.thread.join().unwrap()
    }
}

#[test]
fn another_threads_growth_is_neither_counted_nor_named() {
    const ITERATIONS: usize = 500;

    // A clean closure passes while another thread grows during the check.
    let elsewhere = GrowthElsewhere::start();
    let mut scratch = Vec::new();
    let mut calls = 0;
    heapwatch::leak_check::assert_no_leak(ITERATIONS, || {
        calls += 1;
        if calls == ITERATIONS / 2 {
            elsewhere.grow_now();
        }
        handle_request(&mut scratch, 7);
    });
    assert_eq!(elsewhere.finish(), 16 * 1024);

    // A leaking one is caught, and only its own site is named.
    let elsewhere = GrowthElsewhere::start();
    let (mut log, mut calls) = (Vec::new(), 0);
    let report = heapwatch::leak_check::check(ITERATIONS, 0, || {
        calls += 1;
        if calls == ITERATIONS / 2 {
            elsewhere.grow_now();
        }
        remember_request(&mut log, calls);
    })
    .expect_err("500 × 2 KiB kept must be caught");
    assert_eq!(elsewhere.finish(), 16 * 1024);
    println!("leak beside another thread's growth: {report}");
    assert!(
        report.grown_bytes < 2 * ITERATIONS as i64 * 2048,
        "the other thread's 8 MiB was counted: {report}"
    );
    assert_blames_remember_request(&report);
    assert!(
        !report
            .growing_sites
            .iter()
            .any(|site| site.function.contains("grow_on_another_thread")),
        "the other thread's site was named: {report}"
    );
}
