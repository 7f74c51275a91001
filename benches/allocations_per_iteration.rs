//! heapwatch in criterion (feature `criterion`), as a service's benchmark file would use it:
//! the same functions measured in time (with a heap profile of each under `--profile-time`), in
//! bytes allocated per iteration and in blocks allocated per iteration; and what
//! `heapwatch::measure` costs per iteration.
//!
//! ```text
//! cargo bench --features criterion --bench allocations_per_iteration
//! cargo bench --features criterion --bench allocations_per_iteration -- --profile-time 5 time/
//! ```
//!
//! The second writes `target/criterion/time/<function>/profile/heap.pb.gz` and `heap.svg`.

use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use heapwatch::bench::{BlocksAllocated, BytesAllocated, HeapProfiler};
use std::hint::black_box;

#[path = "../tests/common/five_workloads.rs"]
mod five;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// The five functions in one group of whatever measurement `c` has.
fn workloads<M: Measurement>(mut group: BenchmarkGroup<'_, M>) {
    for workload in &five::WORKLOADS {
        group.bench_function(workload.name, |b| b.iter(workload.run));
    }
    group.finish();
}

fn in_time(c: &mut Criterion) {
    workloads(c.benchmark_group("time"));
}

fn in_bytes(c: &mut Criterion<BytesAllocated>) {
    workloads(c.benchmark_group("bytes"));
}

fn in_blocks(c: &mut Criterion<BlocksAllocated>) {
    workloads(c.benchmark_group("blocks"));
}

/// What wrapping an iteration in `heapwatch::measure` costs: an empty closure, and one that
/// allocates and frees 16 bytes, each bare and measured, side by side.
fn measure_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("measure_overhead");
    group.bench_function("empty/bare", |b| b.iter(|| black_box(())));
    group.bench_function("empty/measured", |b| {
        b.iter(|| heapwatch::measure(|| black_box(())))
    });
    group.bench_function("alloc_16/bare", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([0u8; 16])))))
    });
    group.bench_function("alloc_16/measured", |b| {
        b.iter(|| heapwatch::measure(|| drop(black_box(Box::new(black_box([0u8; 16]))))))
    });
    // A hundred allocations per scope: the cost inside a scope, per allocation, apart from
    // opening and closing it.
    let hundred = || {
        for _ in 0..100 {
            drop(black_box(Box::new(black_box([0u8; 16]))));
        }
    };
    group.bench_function("alloc_16_x100/bare", |b| b.iter(hundred));
    group.bench_function("alloc_16_x100/measured", |b| {
        b.iter(|| heapwatch::measure(hundred))
    });
    group.finish();
}

criterion_group! {
    name = time;
    config = Criterion::default().with_profiler(HeapProfiler::default());
    targets = in_time, measure_overhead
}
criterion_group! {
    name = bytes;
    config = Criterion::default().with_measurement(BytesAllocated);
    targets = in_bytes
}
criterion_group! {
    name = blocks;
    config = Criterion::default().with_measurement(BlocksAllocated);
    targets = in_blocks
}
criterion_main!(time, bytes, blocks);
