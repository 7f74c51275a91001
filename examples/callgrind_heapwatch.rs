//! heapwatch over jemalloc under callgrind: `… callgrind_heapwatch N SIZE|realistic RATE` (see
//! `scripts/callgrind.sh`); RATE is the sampling rate in bytes (0: off).

#[path = "callgrind/pairs.rs"]
mod pairs;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    let rate = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512 * 1024);
    heapwatch::set_sample_rate(rate);
    pairs::run_from_args();
}
