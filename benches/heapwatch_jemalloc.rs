//! heapwatch over `Jemalloc`, with stack sampling off and at the default 512 KiB.

mod common;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    let mut c = common::criterion();
    heapwatch::set_sample_rate(0);
    common::run(&mut c, "heapwatch_jemalloc_off");
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    common::run(&mut c, "heapwatch_jemalloc_512k");
    c.final_summary();
}
