//! The floor: `System`, the C library's malloc, with nothing around it.

mod common;

#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;

fn main() {
    common::main(&[common::Config::plain("system")]);
}
