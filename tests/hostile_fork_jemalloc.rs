//! Fork safety over jemalloc: see `fork_storm`.
//!
//! Frame-pointer pass: not needed — jemalloc's own fork handlers; `hostile_fork` runs the walks across forks in this pass.

mod common;
mod fork_storm;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    std::process::exit(fork_storm::run("jemalloc"));
}
