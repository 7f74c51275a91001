//! Bare jemalloc under callgrind: `valgrind --tool=callgrind --toggle-collect='*run_pairs*'
//! target/release/examples/callgrind_bare 1000000 16` (see `scripts/callgrind.sh`).

#[path = "callgrind/pairs.rs"]
mod pairs;

#[global_allocator]
static ALLOC: heapwatch::Jemalloc = heapwatch::Jemalloc;

fn main() {
    let (n, size) = pairs::args();
    pairs::hold_first_block(size);
    pairs::run_pairs(1000, size); // warm the thread cache
    pairs::run_pairs(n, size);
}
