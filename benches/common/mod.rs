//! Workloads shared by every allocator configuration. A global allocator is chosen per binary,
//! so each configuration is one bench binary that calls [`run`] with its name; criterion stores
//! results as `target/criterion/<workload>/<configuration>/`, and
//! `cargo run --release --example bench_table` prints them side by side as ratios.

use criterion::{BenchmarkId, Criterion, Throughput};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const PAIR_SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];

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

/// A JSON document of about 200 KB: 1,000 records with strings, numbers and arrays.
pub fn json_document() -> String {
    let mut text = String::from("[");
    for i in 0..1000 {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com","active":{},"score":{}.5,"tags":["alpha","beta","gamma-{i}"],"address":{{"city":"City {i}","zip":"{:05}"}}}}"#,
            i % 2 == 0,
            i * 7,
            i * 13 % 100000
        ));
    }
    text.push(']');
    text
}

/// Builds a 10,000-entry string-keyed map, sorts its keys by value length, and drops it.
fn map_workload() -> usize {
    let mut map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..10_000u32 {
        map.insert(
            format!("key-{:08}", i.wrapping_mul(2_654_435_761)),
            vec![i as u8; (i % 200) as usize + 8],
        );
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| map[*k].len());
    black_box(keys.len())
}

/// Runs every workload under the configuration `name`.
pub fn run(c: &mut Criterion, name: &str) {
    for threads in [1, 2] {
        for size in PAIR_SIZES {
            let mut group = c.benchmark_group(format!("pair_{size}B_{threads}t"));
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

    let document = json_document();
    let mut group = c.benchmark_group("json_parse_drop");
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter(|| {
            let value: serde_json::Value =
                serde_json::from_str(black_box(&document)).expect("valid JSON");
            black_box(&value);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("btreemap_build_sort_drop");
    group.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(map_workload));
    group.finish();
}

/// Criterion settings for a shared, noisy 2-core machine: enough samples for stable medians.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(60)
        .configure_from_args()
}
