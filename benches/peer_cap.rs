//! The floor for any counting wrapper: `cap` over jemalloc (one shared atomic counter of
//! allocated bytes, checked against a limit).

mod common;

#[global_allocator]
static ALLOC: cap::Cap<heapwatch::Jemalloc> = cap::Cap::new(heapwatch::Jemalloc, usize::MAX);

fn main() {
    common::main(&[common::Config::plain("cap")]);
}
