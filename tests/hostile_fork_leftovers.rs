//! What a forked child inherits from threads it does not have, and must not keep:
//! - the built-in listener's client connections: the parent cancels a wait whose client
//!   half-closed and closes the connection; the client must see the end at once though a
//!   child forked meanwhile still lives (its copy of the connection would keep it open);
//! - a leak check running on another thread, which set the fine sample rate: the child must
//!   be back on the rate the check saved, at once when the forking thread runs no check, and
//!   when its own check ends when it does;
//! - libgcc's unwinds of samples, fenced against fork as on glibc before 2.35 (this machine's
//!   glibc needs no fence, so it is forced on): forks while threads sample with libgcc's
//!   unwinder, and forks again from each child, all end.
//!
//! The scenarios run one after another in one process (`harness = false`); each child returns
//! its verdict as its exit code; the last line says how many passed. `cargo test --test
//! hostile_fork_leftovers -- NAME` runs those whose name contains NAME.
//!
//! Frame-pointer pass: not needed — descriptors, the sample rate and the unwinders' fence across fork; what the profile holds does not matter.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: [(&str, fn()); 4] = [
        (
            "a_child_does_not_keep_client_connections_open",
            a_child_does_not_keep_client_connections_open,
        ),
        (
            "a_leak_check_on_another_thread_ends_in_the_child",
            a_leak_check_on_another_thread_ends_in_the_child,
        ),
        (
            "the_forking_threads_own_check_restores_the_rate_in_the_child",
            the_forking_threads_own_check_restores_the_rate_in_the_child,
        ),
        (
            "fenced_unwinds_let_forks_through",
            fenced_unwinds_let_forks_through,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            let started = Instant::now();
            println!("hostile_fork_leftovers: {name} ...");
            if std::panic::catch_unwind(scenario).is_ok() {
                passed += 1;
                println!(
                    "hostile_fork_leftovers: {name} ok ({:.1?})",
                    started.elapsed()
                );
            } else {
                failed += 1;
                println!(
                    "hostile_fork_leftovers: {name} FAILED ({:.1?})",
                    started.elapsed()
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Forks; the child runs `child` and exits with its verdict (0 when it returned true). The
/// parent gets the pid.
fn fork_running(child: impl FnOnce() -> bool) -> libc::pid_t {
    // SAFETY: the child runs ordinary Rust (heapwatch is fork-safe: what is tested) and leaves
    // through `_exit`, never returning into the parent's stack or running its exit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let passed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(false);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(if passed { 0 } else { 1 }) }
    }
    pid
}

/// A client asks for a 30 s heap delta; a child is forked while the parent's worker waits;
/// the child lives on for 8 s. The client half-closes: the parent cancels the wait and closes
/// the connection, and the client must read the end within a second (with the child's copy
/// open, it would wait until the child exits).
fn a_child_does_not_keep_client_connections_open() {
    let server = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("bind");
    let addr = server.local_addr().to_string();
    let mut client = TcpStream::connect(&addr).expect("connect");
    write!(
        client,
        "GET /debug/pprof/heap?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .expect("send");
    // The request is read at once; probing before might take the slot from it.
    std::thread::sleep(Duration::from_millis(300));
    // Until the listener holds the delta for it: a second one is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::http_get(&addr, "/debug/pprof/heap?seconds=1").0 != 409 {
        assert!(Instant::now() < deadline, "the first delta never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    let child = fork_running(|| {
        std::thread::sleep(Duration::from_secs(8));
        true
    });
    client.shutdown(Shutdown::Write).expect("half-close");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest);
    let took = started.elapsed();
    // SAFETY: signals our own child, which has served its purpose by living this long.
    unsafe { libc::kill(child, libc::SIGKILL) };
    common::wait_for_child(child, Duration::from_secs(5), |_| {});
    println!("hostile_fork_leftovers: the client saw the end {took:.0?} after it half-closed");
    assert!(
        read.is_ok(),
        "the connection stayed open after the parent closed it ({took:?}): {read:?}"
    );
    assert!(rest.is_empty(), "a cancelled wait answers nothing");
    assert!(took < Duration::from_secs(1), "the end came after {took:?}");
    assert_eq!(
        common::http_get(&addr, "/debug/pprof/heap?seconds=1").0,
        200,
        "the slot is free again"
    );
}

/// The rate a check leaves behind: a coarse one set here, so that a fine one stands out.
const COARSE: u64 = 300_000;

/// A check at least this long, on a thread, in the steps the closure takes.
fn long_check(ran: &AtomicBool) {
    let started = Instant::now();
    let _ = heapwatch::leak_check::check(400, u64::MAX, || {
        ran.store(true, Ordering::Release);
        if started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// Waits until a check has set the fine rate.
fn wait_for_fine_rate() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while heapwatch::sample_rate() == COARSE {
        assert!(Instant::now() < deadline, "the check never set its rate");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A check runs on another thread when the main thread forks: in the child, that thread and
/// its check do not exist, so the rate is the coarse one at once; a check run in the child
/// sets the fine rate and restores the coarse one when it ends.
fn a_leak_check_on_another_thread_ends_in_the_child() {
    heapwatch::set_sample_rate(COARSE);
    let ran = Arc::new(AtomicBool::new(false));
    let checking = {
        let ran = Arc::clone(&ran);
        std::thread::spawn(move || long_check(&ran))
    };
    wait_for_fine_rate();
    let fine = heapwatch::sample_rate();
    let child = fork_running(move || {
        let at_fork = heapwatch::sample_rate();
        let mut during = 0;
        let _ = heapwatch::leak_check::check(20, u64::MAX, || during = heapwatch::sample_rate());
        let after = heapwatch::sample_rate();
        let passed = at_fork == COARSE && during == fine && after == COARSE;
        if !passed {
            eprintln!("child: rate at the fork {at_fork}, during its own check {during}, after it {after} (coarse {COARSE}, fine {fine})");
        }
        passed
    });
    let code = common::wait_for_child(child, Duration::from_secs(20), |_| {});
    checking.join().expect("the check");
    assert!(ran.load(Ordering::Acquire));
    assert_eq!(code, Some(0), "the child's rates (None: it hung)");
    assert_eq!(
        heapwatch::sample_rate(),
        COARSE,
        "the parent's, once its check ended"
    );
}

/// A check runs on another thread, and the main thread forks from inside a check of its own:
/// the child goes on with the main thread's check, so it keeps the fine rate until that check
/// ends, then is back on the coarse one (the other thread's check does not hold it fine).
fn the_forking_threads_own_check_restores_the_rate_in_the_child() {
    heapwatch::set_sample_rate(COARSE);
    let ran = Arc::new(AtomicBool::new(false));
    let checking = {
        let ran = Arc::clone(&ran);
        std::thread::spawn(move || long_check(&ran))
    };
    wait_for_fine_rate();
    let parent = std::process::id();
    let mut child = None;
    let mut rate_in_child_during = 0;
    let mut calls = 0;
    let _ = heapwatch::leak_check::check(20, u64::MAX, || {
        calls += 1;
        // Past the warm-up's 10 calls: the check measures, at the fine rate.
        if calls == 15 && std::process::id() == parent {
            // SAFETY: as `fork_running`'s; the child leaves through `_exit` below, after the
            // check it returns into.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            child = Some(pid);
        }
        if std::process::id() != parent && rate_in_child_during == 0 {
            rate_in_child_during = heapwatch::sample_rate();
        }
    });
    if std::process::id() != parent {
        let after = heapwatch::sample_rate();
        let passed = rate_in_child_during != COARSE && after == COARSE;
        if !passed {
            eprintln!(
                "child: rate during its check {rate_in_child_during}, after it {after} (coarse {COARSE})"
            );
        }
        // SAFETY: ends the child at once, never running the parent's exit handlers.
        unsafe { libc::_exit(if passed { 0 } else { 1 }) }
    }
    let code = common::wait_for_child(child.expect("forked"), Duration::from_secs(20), |_| {});
    checking.join().expect("the check");
    assert_eq!(code, Some(0), "the child's rates (None: it hung)");
    assert_eq!(
        heapwatch::sample_rate(),
        COARSE,
        "the parent's, once both checks ended"
    );
}

/// With libgcc's unwinds fenced, two threads allocate at a fine rate with libgcc's unwinder
/// while the main thread forks 20 times; each child samples, forks a grandchild that samples,
/// and both end. An unwind counted in flight at a fork and never ended in the child would
/// hold the child's own fork for ever.
fn fenced_unwinds_let_forks_through() {
    heapwatch::__fence_libgcc_unwinds(true);
    heapwatch::set_stack_capture(heapwatch::StackCapture::SystemUnwinder);
    heapwatch::set_sample_rate(512);
    let stop = Arc::new(AtomicBool::new(false));
    let sampling: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    kept.push(vec![0u8; 256]);
                    if kept.len() > 1000 {
                        kept.clear();
                    }
                }
            })
        })
        .collect();
    let allocate = || {
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![0u8; 64 + i % 512]).collect();
        std::hint::black_box(blocks);
    };
    let mut hung = Vec::new();
    for round in 0..20 {
        let child = fork_running(|| {
            allocate();
            let grandchild = fork_running(|| {
                allocate();
                true
            });
            allocate();
            common::wait_for_child(grandchild, Duration::from_secs(10), |_| {}) == Some(0)
        });
        let code = common::wait_for_child(child, Duration::from_secs(20), |_| {});
        if code != Some(0) {
            hung.push((round, code));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in sampling {
        thread.join().expect("a sampling thread");
    }
    heapwatch::__fence_libgcc_unwinds(false);
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    heapwatch::set_stack_capture(heapwatch::StackCapture::Auto);
    assert!(
        hung.is_empty(),
        "children that failed (None: hung): {hung:?}"
    );
}
