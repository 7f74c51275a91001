//! Fork safety over `System`: see `fork_storm`.

mod common;
mod fork_storm;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

fn main() {
    std::process::exit(fork_storm::run("System"));
}
