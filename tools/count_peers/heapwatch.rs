//! Time per measured iteration of the five workloads of `tests/counts_agree.rs` with heapwatch as
//! the sole global allocator (over `System`): `heapwatch::measure` around each call, against the
//! same call bare under the same allocator. Then what `measure` itself costs: around an empty
//! closure, and around a closure that allocates and frees 16 bytes (against that closure bare).
//! Sampling is at heapwatch's default rate, as users run it. `scripts/count_peers.sh` runs this
//! beside the dhat, stats_alloc and plain-`System` versions.
//!
//! ```text
//! cargo run --release --example count_peers_heapwatch
//! ```

#[path = "../../tests/common/five_workloads.rs"]
mod five_workloads;
mod timing;

use five_workloads::WORKLOADS;
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapwatch::Alloc<System> = heapwatch::Alloc::new(System);

fn main() {
    // The same sampling decisions on every run.
    heapwatch::reseed_sampler(0x15);
    for workload in &WORKLOADS {
        let (built, counted) = heapwatch::measure(workload.run);
        drop(built);
        let timed = timing::time_pair(
            || {
                let (built, counted) = heapwatch::measure(workload.run);
                black_box(counted);
                drop(black_box(built));
            },
            || drop(black_box((workload.run)())),
        );
        timing::print_row(
            "heapwatch",
            workload.name,
            &counted.blocks.to_string(),
            &counted.bytes.to_string(),
            &timed,
        );
    }

    // `measure`'s own cost: opening and closing a scope, and the slow path an allocation takes
    // inside one.
    let empty = timing::time_pair(
        || {
            black_box(heapwatch::measure(|| black_box(0u8)));
        },
        || {
            black_box(black_box(0u8));
        },
    );
    let alloc_16 = || drop(black_box(Vec::<u8>::with_capacity(black_box(16))));
    let (_, counted) = heapwatch::measure(alloc_16);
    assert_eq!(
        (counted.blocks, counted.bytes),
        (1, 16),
        "the 16-byte closure allocates once"
    );
    let pair = timing::time_pair(
        || {
            black_box(heapwatch::measure(alloc_16));
        },
        alloc_16,
    );
    timing::print_row("heapwatch", "measure(empty)", "0", "0", &empty);
    timing::print_row("heapwatch", "measure(16 B)", "1", "16", &pair);
}
