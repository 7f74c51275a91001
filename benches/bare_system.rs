//! The floor: bare `std::alloc::System` as the global allocator.

mod common;

#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;

fn main() {
    let mut c = common::criterion();
    common::run(&mut c, "system");
    c.final_summary();
}
