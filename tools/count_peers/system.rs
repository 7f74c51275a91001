//! The baseline of `scripts/count_peers.sh`: the five workloads of `tests/counts_agree.rs` under
//! the plain `System` allocator, no counter at all, timed exactly as the counters' examples time
//! their bare iterations.
//!
//! ```text
//! cargo run --release --example count_peers_system
//! ```

#[path = "../../tests/common/five_workloads.rs"]
mod five_workloads;
mod timing;

use five_workloads::WORKLOADS;
use std::alloc::System;
use std::hint::black_box;

// Named explicitly (it is Rust's default) so that all four processes choose their allocator
// the same way.
#[global_allocator]
static ALLOC: System = System;

fn main() {
    for workload in &WORKLOADS {
        let bare = || drop(black_box((workload.run)()));
        let timed = timing::time_pair(bare, bare);
        timing::print_row("system", workload.name, "-", "-", &timed);
    }
}
