//! Bare jemalloc under callgrind: `valgrind --tool=callgrind --toggle-collect='*run_pairs*'
//! target/release/examples/callgrind_bare 1000000 16` (or `N realistic`; see
//! `scripts/callgrind.sh`).

#[path = "callgrind/pairs.rs"]
mod pairs;

#[global_allocator]
static ALLOC: heapwatch::Jemalloc = heapwatch::Jemalloc;

fn main() {
    pairs::run_from_args();
}
