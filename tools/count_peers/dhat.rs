//! Time per measured iteration of the five workloads of `tests/counts_agree.rs` with dhat as the
//! sole global allocator, its profiler running in testing mode (which writes no file): a
//! `dhat::HeapStats::get()` before and after each call, against the same call bare under the
//! same allocator with the profiler running (dhat records every allocation either way: the
//! reading is the only difference). `scripts/count_peers.sh` runs this beside the heapwatch,
//! stats_alloc and plain-`System` versions.
//!
//! ```text
//! cargo run --release --example count_peers_dhat
//! ```

#[path = "../../tests/common/five_workloads.rs"]
mod five_workloads;
mod timing;

use five_workloads::WORKLOADS;
use std::hint::black_box;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// One call between two readings: blocks and bytes as dhat counts them (a `realloc` is a block).
fn counted(run: fn() -> five_workloads::Built) -> (u64, u64) {
    let before = dhat::HeapStats::get();
    let built = run();
    let after = dhat::HeapStats::get();
    drop(built);
    (
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
    )
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    for workload in &WORKLOADS {
        let (blocks, bytes) = counted(workload.run);
        let timed = timing::time_pair(
            || {
                black_box(counted(black_box(workload.run)));
            },
            || drop(black_box((workload.run)())),
        );
        timing::print_row(
            "dhat",
            workload.name,
            &blocks.to_string(),
            &bytes.to_string(),
            &timed,
        );
    }
}
