//! heapwatch over jemalloc under callgrind: `… callgrind_heapwatch PAIRS SIZE RATE` (see
//! `scripts/callgrind.sh`); RATE is the sampling rate in bytes (0: off).

#[path = "callgrind/pairs.rs"]
mod pairs;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    let (n, size) = pairs::args();
    let rate = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512 * 1024);
    heapwatch::set_sample_rate(rate);
    pairs::hold_first_block(size);
    pairs::run_pairs(1000, size);
    pairs::run_pairs(n, size);
}
