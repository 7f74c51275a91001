//! heapwatch over `Jemalloc`: stack sampling off, at the default 512 KiB, and at 64 KiB.

mod common;

use common::Config;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    common::main(&[
        Config {
            name: "heapwatch_jemalloc_off",
            setup: || heapwatch::set_sample_rate(0),
        },
        Config {
            name: "heapwatch_jemalloc_512k",
            setup: || heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES),
        },
        Config {
            name: "heapwatch_jemalloc_64k",
            setup: || heapwatch::set_sample_rate(64 << 10),
        },
    ]);
}
