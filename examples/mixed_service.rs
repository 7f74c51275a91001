//! A service with three kinds of memory use, for the leak detector to tell apart: a steady leak
//! in `leak_connection_state`, bursts of large temporary buffers in `render_report_burst`, and a
//! stable cache filled once in `warm_lookup_cache`. Time is compressed (a 50 ms tick, a 30 s
//! window) so a run takes seconds, not hours; the decisions are the same as at full scale.
//!
//! ```text
//! cargo run --release --example mixed_service -- --seconds 25            # with the leak
//! cargo run --release --example mixed_service -- --seconds 25 --no-leak  # without it
//! ```
//!
//! At the end it prints every verdict the detector gave, the final one, and the suspects.
//! Dump sets go to `HEAPWATCH_DIR` (default `./heapwatch-dumps`).

use heapwatch::detect::{DetectorConfig, VerdictKind};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

/// The stable cache: 32 MiB filled once.
#[inline(never)]
fn warm_lookup_cache() -> Vec<Vec<u8>> {
    let cache: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 * 1024]).collect();
    // Not a tail call: this frame stays on the stack the profile records.
    black_box(&cache);
    cache
}

/// The leak: every connection's state is kept forever.
#[inline(never)]
fn leak_connection_state(kept: &mut Vec<Vec<u8>>, id: u64) {
    kept.push(vec![id as u8 | 1; 16 * 1024]);
}

/// Bursts: a 24 MiB report rendered and dropped.
#[inline(never)]
fn render_report_burst(id: u64) -> usize {
    let pages: Vec<Vec<u8>> = (0..96).map(|i| vec![(id + i) as u8; 256 * 1024]).collect();
    std::thread::sleep(Duration::from_millis(150));
    black_box(pages.iter().map(Vec::len).sum())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
    let mut seconds = 25.0;
    let mut leak = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds needs a number")
            }
            "--no-leak" => leak = false,
            other => panic!("unknown argument {other:?}"),
        }
    }

    let detector = DetectorConfig {
        window: Duration::from_secs(30),
        floor_window: Duration::from_secs(4),
        confirm: Duration::from_secs(1),
        ..DetectorConfig::default()
    };
    let watch = heapwatch::watch::Watch::builder()
        .dir("heapwatch-dumps")
        .tick(Duration::from_millis(50))
        .detector(detector)
        .suspect_interval(Duration::from_secs(2))
        .warmup(Duration::from_secs(2))
        .start()
        .expect("start the watch");

    let cache = warm_lookup_cache();
    let mut kept = Vec::new();
    let mut verdicts: Vec<VerdictKind> = Vec::new();
    let start = Instant::now();
    let mut id = 0u64;
    let mut next_burst = Duration::from_secs(1);
    while start.elapsed().as_secs_f64() < seconds {
        id += 1;
        if leak {
            leak_connection_state(&mut kept, id);
        }
        if start.elapsed() >= next_burst {
            black_box(render_report_burst(id));
            next_burst += Duration::from_millis(1700);
        }
        black_box(cache.len());
        std::thread::sleep(Duration::from_millis(10));
        if let Some(report) = heapwatch::published::latest().map(|l| l.detector) {
            if verdicts.last() != Some(&report.verdict.kind) {
                verdicts.push(report.verdict.kind);
            }
        }
    }
    let report = heapwatch::published::latest()
        .map(|l| l.detector)
        .expect("the watch has ticked");
    drop(watch);
    let names: Vec<&str> = verdicts.iter().map(|v| v.name()).collect();
    println!("verdicts seen: {}", names.join(" "));
    println!("final verdict: {}", report.verdict.kind.name());
    let suspects: Vec<&str> = report
        .suspects
        .iter()
        .map(|s| s.function.as_str())
        .collect();
    println!("suspects: {}", suspects.join(", "));
    println!("kept {} MiB", kept.len() * 16 / 1024);
}
