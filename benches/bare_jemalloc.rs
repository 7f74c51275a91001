//! The floor: bare `tikv_jemallocator::Jemalloc` as the global allocator.

mod common;

#[global_allocator]
static ALLOC: heapwatch::Jemalloc = heapwatch::Jemalloc;

fn main() {
    let mut c = common::criterion();
    common::run(&mut c, "jemalloc");
    c.final_summary();
}
