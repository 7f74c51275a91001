//! Fork safety over jemalloc: see `fork_storm`.

mod common;
mod fork_storm;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    std::process::exit(fork_storm::run("jemalloc"));
}
