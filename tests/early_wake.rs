//! A spike between two ticks still gets its dump: with a 30 s tick, memory that jumps from
//! well under the threshold to over it must be dumped within a second, because the allocator
//! wakes the watch thread when the heap crosses the watermark.

use heapwatch::watch::{list_sets, read_summary, Watch};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

const SPIKE_BYTES: usize = 160 << 20;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn dumps() -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("heapwatch-early-wake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Limit: the spike takes usage from about half of it to over 90 %.
    let base = rss();
    let limit = (base + SPIKE_BYTES as u64) * 100 / 95;
    let handle = Watch::builder()
        .dir(&dir)
        .limit(limit)
        .thresholds(&[0.9])
        .tick(Duration::from_secs(30))
        .horizon(Duration::ZERO)
        .start()
        .expect("start the watch");
    // Wait for the first tick: its reading is published once the watermark is armed. (A fixed
    // sleep could end before it on a busy machine.)
    let first_tick = Instant::now();
    while heapwatch::published::latest().map(|l| l.reading).is_none() {
        assert!(
            first_tick.elapsed() < Duration::from_secs(10),
            "the watch thread never ticked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        dumps(),
        0,
        "no dump before the spike (rss {} of limit {limit})",
        rss()
    );

    let start = Instant::now();
    let spike: Vec<u8> = vec![1; SPIKE_BYTES];
    while dumps() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no dump 5 s after the spike: the allocator did not wake the watch thread (rss {} of limit {limit})",
            rss()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let latency = start.elapsed();
    drop(handle);
    let sets = list_sets(&dir);
    let summary = read_summary(sets.last().expect("a set")).expect("summary");
    assert_eq!(summary.reason, "threshold");
    assert!(summary.heap.live_bytes >= spike.len() as u64);
    println!(
        "early_wake: dump {:.0} ms after a spike of {} MiB, with a 30 s tick",
        latency.as_secs_f64() * 1e3,
        spike.len() >> 20
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
