//! Peer: re_memory's accounting allocator over jemalloc, with call-stack tracking on (every
//! allocation of 1 MiB or more, one in 64 between 1 KiB and 1 MiB by address hash, none below).

#[path = "../../../benches/common/mod.rs"]
mod common;

#[global_allocator]
static ALLOC: re_memory::AccountingAllocator<tikv_jemallocator::Jemalloc> =
    re_memory::AccountingAllocator::new(tikv_jemallocator::Jemalloc);

fn main() {
    common::main(&[common::Config {
        name: "re_memory",
        setup: || re_memory::accounting_allocator::set_tracking_callstacks(true),
    }]);
}
