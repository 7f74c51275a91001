//! The floor every ratio is taken against: jemalloc with nothing around it.

mod common;

#[global_allocator]
static ALLOC: heapwatch::Jemalloc = heapwatch::Jemalloc;

fn main() {
    common::main(&[common::Config::plain("jemalloc")]);
}
