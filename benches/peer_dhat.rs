//! Peer: dhat-rs with heap profiling on. It records every allocation with its backtrace (no
//! sampling) and only wraps `System`.

mod common;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    common::main(&[common::Config {
        name: "dhat",
        setup: || {
            // Profiling lasts while the profiler lives; forgetting it keeps it on for the whole
            // run and skips writing its report, which is not what is measured.
            std::mem::forget(
                dhat::Profiler::builder()
                    .file_name(std::env::temp_dir().join("heapwatch-bench-dhat.json"))
                    .build(),
            );
        },
    }]);
}
