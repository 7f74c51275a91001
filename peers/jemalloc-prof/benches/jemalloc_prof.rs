//! Peer: jemalloc's own heap profiling, the engine under `jemalloc_pprof`, sampling on average
//! every 2^19 bytes (512 KiB, as heapwatch's default).

#[path = "../../../benches/common/mod.rs"]
mod common;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start-up (prefixed as tikv-jemalloc-sys
/// prefixes every jemalloc symbol).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"prof:true,prof_active:true,lg_prof_sample:19\0";

fn main() {
    common::main(&[common::Config {
        name: "jemalloc_prof",
        setup: || {
            // Measure nothing unless the options took: a misspelt symbol would silently bench
            // plain jemalloc.
            let on = tikv_jemalloc_ctl::profiling::prof::read().expect("opt.prof readable");
            let lg_sample = tikv_jemalloc_ctl::profiling::lg_prof_sample::read()
                .expect("opt.lg_prof_sample readable");
            assert!(on && lg_sample == 19, "jemalloc profiling is not on (opt.prof={on}, lg_prof_sample={lg_sample})");
        },
    }]);
}
