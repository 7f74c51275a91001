//! heapwatch under divan: divan has no pluggable measurement or profiler hook, but its
//! `AllocProfiler` is a global allocator that wraps another, so it wraps heapwatch's. divan
//! then prints allocations and bytes per iteration beside the time (its own counting, per
//! thread, as heapwatch's), and heapwatch keeps counting and sampling underneath: `measure`,
//! budgets, snapshots and the watch work as in any program.
//!
//! ```text
//! cargo bench --bench divan_allocations
//! ```

use heapwatch::Alloc;
use std::alloc::System;

#[path = "../tests/common/five_workloads.rs"]
mod five;

#[global_allocator]
static ALLOC: divan::AllocProfiler<Alloc<System>> = divan::AllocProfiler::new(Alloc::new(System));

fn main() {
    // heapwatch's exact figures for one call of each, to read beside divan's table: the same
    // counts (divan lists a `realloc` as "grow" apart from "alloc"; heapwatch counts it in
    // `blocks` and in `reallocs`).
    for workload in &five::WORKLOADS {
        let (_, allocations) = heapwatch::measure(|| drop((workload.run)()));
        println!(
            "heapwatch {:16} {} blocks ({} of them reallocs), {} bytes",
            workload.name, allocations.blocks, allocations.reallocs, allocations.bytes
        );
    }
    divan::main();
}

#[divan::bench]
fn vec_push() -> five::Built {
    five::vec_push()
}

#[divan::bench]
fn string_format() -> five::Built {
    five::string_format()
}

#[divan::bench]
fn btreemap_build() -> five::Built {
    five::btreemap_build()
}

#[divan::bench]
fn json_parse() -> five::Built {
    five::json_parse()
}

#[divan::bench]
fn hashmap_reserve() -> five::Built {
    five::hashmap_reserve()
}
