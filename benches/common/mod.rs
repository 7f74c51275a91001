//! Workloads shared by every allocator configuration.
//!
//! A global allocator is chosen per binary, so each configuration family is one bench binary
//! that calls [`main`] with its configurations. Criterion stores results as
//! `target/criterion/<workload>/<configuration>/`; `scripts/bench.sh` runs the binaries in
//! alternating rounds and `tools/bench_table.rs` prints them side by side as ratios to bare
//! jemalloc.
//!
//! With `HEAPWATCH_BENCH_PEAK_RSS=<configuration>/<workload>` a binary runs that one realistic
//! workload a fixed number of times instead and prints its peak resident memory
//! (`peak_rss_kib=…`), which `scripts/bench.sh` collects per configuration.

#![allow(dead_code)]

#[path = "workloads.rs"]
mod workloads;

use criterion::{BenchmarkId, Criterion, Throughput};
use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use workloads::{json_document, json_workload, map_workload, request_text, request_workload};

/// Block sizes of the alloc/free pair workloads.
const PAIR_SIZES: [usize; 4] = [16, 256, 4096, 1 << 20];
/// Blocks handed from the producer to the consumer per message.
const HANDOFF_BATCH: usize = 64;
/// Iterations of a realistic workload in peak-RSS mode.
const PEAK_RSS_ITERATIONS: usize = 30;

/// One allocator configuration inside a bench binary: its name in the tables, and what to do
/// before measuring it (set heapwatch's rate, start a profiler…).
pub struct Config {
    pub name: &'static str,
    pub setup: fn(),
}

impl Config {
    /// A configuration that needs no set-up.
    pub const fn plain(name: &'static str) -> Self {
        Config { name, setup: || {} }
    }
}

/// Runs the suite for each configuration in turn, or one peak-RSS measurement when asked.
pub fn main(configs: &[Config]) {
    if let Ok(request) = std::env::var("HEAPWATCH_BENCH_PEAK_RSS") {
        peak_rss(configs, &request);
        return;
    }
    let mut c = criterion();
    for config in configs {
        (config.setup)();
        run(&mut c, config.name);
    }
    c.final_summary();
}

/// One allocation and its free, through the global allocator (`__rust_alloc`), as a program
/// calls it.
#[inline(always)]
fn pair(layout: Layout) {
    // SAFETY: `layout` has a non-zero size; the block is freed with the same layout at once.
    unsafe {
        let ptr = alloc(layout);
        black_box(ptr);
        if !ptr.is_null() {
            dealloc(ptr, layout);
        }
    }
}

/// `iters` pairs on each of `threads` threads started together; returns the wall time, so the
/// reported figure is the time per pair per thread (equal to one thread's if nothing is shared).
fn pairs_on_threads(threads: usize, iters: u64, layout: Layout) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    pair(layout);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for handle in handles {
        handle.join().expect("bench thread");
    }
    start.elapsed()
}

/// One thread allocates 64-byte blocks and sends them, in batches, to another that frees them:
/// every free is of a block allocated on another thread. Returns the wall time for `iters`
/// blocks.
fn producer_consumer(iters: u64) -> Duration {
    let (sender, receiver) = mpsc::sync_channel::<Vec<Box<[u8; 64]>>>(4);
    let consumer = std::thread::spawn(move || {
        for batch in receiver {
            drop(black_box(batch));
        }
    });
    let start = Instant::now();
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(HANDOFF_BATCH);
        let batch: Vec<Box<[u8; 64]>> = (0..n).map(|i| Box::new([i as u8; 64])).collect();
        sender.send(batch).expect("consumer alive");
        left -= n;
    }
    drop(sender);
    consumer.join().expect("consumer thread");
    start.elapsed()
}

/// Every workload under the configuration `name`.
fn run(c: &mut Criterion, name: &str) {
    for threads in [1, 2] {
        for size in PAIR_SIZES {
            let mut group = c.benchmark_group(format!("pair_{}_{threads}t", size_label(size)));
            group.throughput(Throughput::Elements(1));
            let layout = Layout::from_size_align(size, 8).expect("layout");
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                if threads == 1 {
                    b.iter(|| pair(layout));
                } else {
                    b.iter_custom(|iters| pairs_on_threads(threads, iters, layout));
                }
            });
            group.finish();
        }
    }

    let mut group = c.benchmark_group("producer_consumer_64B");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(producer_consumer)
    });
    group.finish();

    let document = json_document();
    let mut group = c.benchmark_group("json_parse_drop");
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter(|| json_workload(&document))
    });
    group.finish();

    let mut group = c.benchmark_group("btreemap_build_sort_drop");
    group.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(map_workload));
    group.finish();

    let text = request_text();
    let mut group = c.benchmark_group("request_tokenise_sort_format");
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter(|| request_workload(&text))
    });
    group.finish();
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

/// `HEAPWATCH_BENCH_PEAK_RSS=<configuration>/<workload>`: set the configuration up, run the
/// workload, print the process's peak resident set size.
fn peak_rss(configs: &[Config], request: &str) {
    let (config_name, workload) = request.split_once('/').unwrap_or_else(|| {
        panic!("HEAPWATCH_BENCH_PEAK_RSS={request}: want <configuration>/<workload>")
    });
    let config = configs
        .iter()
        .find(|c| c.name == config_name)
        .unwrap_or_else(|| panic!("no configuration {config_name} in this binary"));
    (config.setup)();
    let document = json_document();
    let text = request_text();
    for _ in 0..PEAK_RSS_ITERATIONS {
        match workload {
            "json_parse_drop" => json_workload(&document),
            "btreemap_build_sort_drop" => {
                map_workload();
            }
            "request_tokenise_sort_format" => {
                request_workload(&text);
            }
            other => panic!("no peak-RSS workload {other}"),
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status");
    println!("peak_rss_kib={hwm_kib}");
}

/// Criterion settings for a shared, noisy 2-core machine: enough samples for stable medians.
fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(60)
        .configure_from_args()
}
