//! heapwatch over `System`, with stack sampling off and at the default 512 KiB.

mod common;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

fn main() {
    let mut c = common::criterion();
    heapwatch::set_sample_rate(0);
    common::run(&mut c, "heapwatch_system_off");
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    common::run(&mut c, "heapwatch_system_512k");
    c.final_summary();
}
