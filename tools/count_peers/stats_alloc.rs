//! Time per measured iteration of the five workloads of `tests/counts_agree.rs` with stats_alloc
//! (over `System`) as the sole global allocator: a `Region` opened before each call and its
//! `change()` read after, against the same call bare under the same allocator.
//! `scripts/count_peers.sh` runs this beside the heapwatch, dhat and plain-`System` versions.
//!
//! ```text
//! cargo run --release --example count_peers_stats_alloc
//! ```

#[path = "../../tests/common/five_workloads.rs"]
mod five_workloads;
mod timing;

use five_workloads::WORKLOADS;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One call inside a region: blocks as heapwatch and dhat count them (stats_alloc counts a
/// `realloc` apart from `allocations`), and the bytes held after it (stats_alloc has no
/// requested-bytes total: a `realloc` adds only its growth to `bytes_allocated`).
fn counted(run: fn() -> five_workloads::Built) -> (usize, isize) {
    let region = Region::new(ALLOC);
    let built = run();
    let change = region.change();
    drop(built);
    (
        change.allocations + change.reallocations,
        change.bytes_allocated as isize - change.bytes_deallocated as isize,
    )
}

fn main() {
    for workload in &WORKLOADS {
        let (blocks, _held_bytes) = counted(workload.run);
        let timed = timing::time_pair(
            || {
                black_box(counted(black_box(workload.run)));
            },
            || drop(black_box((workload.run)())),
        );
        timing::print_row(
            "stats_alloc",
            workload.name,
            &blocks.to_string(),
            "-",
            &timed,
        );
    }
}
