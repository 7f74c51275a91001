//! The watch's naming thread across fork: the parent's namer names new stacks all the time
//! (another thread keeps making them, so it holds the symbolizer's lock often) while the main
//! thread forks again and again. Each child inherits none of the parent's threads; it starts a
//! watch of its own — with its own naming thread — asks it for a dump set, waits for it, stops
//! the watch (joining that thread) and exits 0. A child that hangs (a lock inherited held, a
//! join of a thread that does not exist here) is killed and counted.
//!
//! `harness = false`: the children return from this `main`, as a forked service would.
//!
//! Frame-pointer pass: not needed — what is attacked is the naming thread's locks across fork; `hostile_fork` runs the walks across forks.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

const FORKS: usize = 40;
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

/// A stack of `depth` frames ending in an allocation: each depth a stack of its own.
#[inline(never)]
fn deeper(depth: u32, out: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        out.push(vec![1; 32]);
    } else {
        deeper(depth - 1, out);
    }
    black_box(depth);
}

fn dumps_written() -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

fn main() {
    heapwatch::set_sample_rate(1);
    let base = std::env::temp_dir().join(format!("heapwatch-fork-namer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let watch = heapwatch::watch::Watch::builder()
        .dir(base.join("parent"))
        .limit(1 << 40)
        .tick(Duration::from_millis(20))
        .naming(heapwatch::watch::DumpNaming::InProcess)
        .start()
        .expect("parent watch");
    let stop = Arc::new(AtomicBool::new(false));
    let maker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut depth = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut blocks = Vec::new();
                deeper(depth % 200, &mut blocks);
                black_box(blocks);
                depth += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let mut hung = 0;
    let mut failed = 0;
    for fork in 0..FORKS {
        std::thread::sleep(Duration::from_millis(5 + (fork as u64 % 7) * 3));
        // SAFETY: the child runs ordinary Rust (heapwatch is fork-safe: what is tested) and
        // ends by returning from `main`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            child(watch, &base.join(format!("child-{fork}")));
            return;
        }
        match common::wait_for_child(pid, CHILD_DEADLINE, |_| {}) {
            Some(0) => {}
            Some(code) => {
                failed += 1;
                eprintln!("hostile_fork_namer: child {fork} exited {code}");
            }
            None => {
                hung += 1;
                eprintln!("hostile_fork_namer: child {fork} hung and was killed");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    maker.join().expect("the stack maker");
    assert!(watch.is_running(), "the parent's watch survived the forks");
    drop(watch);
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "hostile_fork_namer: {FORKS} forks while the naming thread worked: {hung} hung, {failed} failed"
    );
    let passed = usize::from(hung == 0 && failed == 0);
    println!("{passed} passed, {} failed", 1 - passed);
    if passed == 0 {
        std::process::exit(1);
    }
}

fn child(inherited: heapwatch::watch::WatchHandle, dir: &std::path::Path) {
    assert!(!inherited.is_running());
    let own = heapwatch::watch::Watch::builder()
        .dir(dir)
        .limit(1 << 40)
        .tick(Duration::from_millis(20))
        .min_interval(Duration::ZERO)
        .naming(heapwatch::watch::DumpNaming::InProcess)
        .start()
        .expect("the child's own watch");
    let before = dumps_written();
    own.dump_now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dumps_written() == before {
        assert!(Instant::now() < deadline, "the child's dump never came");
        std::thread::sleep(Duration::from_millis(2));
    }
    let set = heapwatch::watch::list_sets(dir)
        .pop()
        .expect("the child's set");
    assert!(heapwatch::watch::read_summary(&set).expect("summary").named);
    drop(inherited);
    // Stops the child's watch and joins its naming thread.
    drop(own);
}
