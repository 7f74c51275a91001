//! # heapwatch
//!
//! A flight recorder for the heap. Installed as the `#[global_allocator]`, heapwatch counts
//! every allocation exactly and samples a few with their stacks, so that at any moment it can
//! say what holds the process's memory, and write it down as a pprof heap profile and a
//! flamegraph before the kernel's OOM killer takes the evidence away.
//!
//! ## Quick start
//!
//! ```
//! #[global_allocator]
//! static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
//!
//! # fn main() -> std::io::Result<()> {
//! let profile = heapwatch::snapshot();
//! heapwatch::encode::write_pprof(&profile, std::fs::File::create(std::env::temp_dir().join("heap.pb.gz"))?)?;
//! # Ok(()) }
//! ```
//!
//! Over jemalloc (feature `jemalloc`, on by default):
//! `static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);`
//!
//! ## What is measured
//!
//! * **Exact counters** ([`stats`]): live bytes and blocks, and totals allocated and freed. Kept
//!   per thread on cache lines no other thread writes, summed when read.
//! * **Sampled stacks** ([`snapshot`]): allocations are sampled as a Poisson process over bytes
//!   with mean `R` ([`set_sample_rate`], default 512 KiB, as Go and jemalloc). An allocation of
//!   `s` bytes is sampled with probability `1 − e^(−s/R)`, and each sample is weighted by the
//!   inverse of that probability ([`unbias_factor`]), so the profile's figures are unbiased
//!   estimates of the truth, with a relative error of about `sqrt(R / bytes)` for a call site
//!   holding `bytes` in small blocks.
//! * A [`Profile`] has the four sample types pprof users expect: `alloc_objects` and
//!   `alloc_space` (everything allocated since start, freed or not), `inuse_objects` and
//!   `inuse_space` (what is live now: the usual question when memory runs out).
//!
//! ## Costs
//!
//! An unsampled allocation costs a thread-local countdown and two counter updates; an unsampled
//! free costs one load from a 128 KiB filter of sampled addresses. Only sampled allocations
//! (one per `R` bytes) capture a stack and take a lock. heapwatch's own memory (tables, stacks,
//! symbol cache) comes from the C allocator directly and is reported by [`profiler_stats`]; it
//! grows with the number of live samples and distinct stacks, not with the heap.
//!
//! Addresses are named once and cached. Where the binary has DWARF line tables (build with
//! `debug = "line-tables-only"` or more; a separate debug file found by build id or
//! `.gnu_debuglink` serves too), every inlined frame is named, fully qualified, with file and
//! line (feature `dwarf`, on by default); otherwise names come from the ELF symbol table. The
//! allocation machinery is cut from the leaf end of each stack, and where one culprit is named
//! the [`Plumbing`] libraries are passed over.
//!
//! ## In tests and benchmarks
//!
//! [`measure()`] gives the exact allocation figures of a closure on the calling thread (blocks,
//! bytes, reallocs, frees, peak, held); [`assert_allocations!`] holds a closure to a budget and
//! names the functions that allocated; [`leak_check`] fails a test whose heap keeps growing.
//! With the feature `criterion`, `heapwatch::bench` has criterion measurements of bytes and
//! blocks per iteration and a heap profiler for `cargo bench -- --profile-time`.
//!
//! ## Heap by tracing span
//!
//! With the feature `tracing` (on by default), `SpanLayer` is a `tracing_subscriber` layer
//! that tags each sampled allocation with the span it was made in (its name and the fields you
//! select, such as `route`): pprof labels for `go tool pprof -tags`/`-tagfocus`, live heap by
//! span in the report and the dumps, leak suspects with the span that grew, flamegraphs rooted
//! at spans ([`spans::rooted_at_spans`]) and `heapwatch_heap_span_live_bytes`. See [`spans`].
//!
//! ## Outputs
//!
//! [`encode`] turns a profile into gzip-compressed pprof (`go tool pprof`, Parca, Pyroscope),
//! folded stacks, a flamegraph SVG (feature `flamegraph`), a text summary and Go's legacy text
//! heap format. With the feature `cpu`, `heapwatch::cpu` takes CPU profiles (heapwatch's
//! own sampler, names and encoder), which the listener serves at
//! `/debug/pprof/profile?seconds=N`.

#![warn(missing_docs)]

mod alloc;
#[cfg(feature = "criterion")]
pub mod bench;
mod counters;
#[cfg(feature = "cpu")]
pub mod cpu;
pub mod decode;
pub mod detect;
mod early_wake;
pub mod encode;
mod filter;
mod fork;
#[cfg(feature = "http")]
pub mod http;
mod internal_alloc;
#[cfg(feature = "jemalloc")]
mod jemalloc_stats;
pub mod leak_check;
pub mod measure;
mod memory;
pub mod metrics_export;
mod plumbing;
mod profile;
pub mod published;
mod sampler;
mod snapshot;
pub mod spans;
mod stack;
mod statistics;
mod symbolize;
mod table;
mod thread_state;
pub mod watch;

pub use crate::alloc::Alloc;
pub use counters::{__orphan_allocated_objects, stats, HeapStats};
pub use filter::__unaligned_live_samples;
pub use internal_alloc::profiler_bytes;
#[cfg(feature = "jemalloc")]
pub use jemalloc_stats::{jemalloc_stats, JemallocStats};
pub use measure::{
    assert_within, check_allocations, measure, AllocationScope, AllocationSite, Allocations,
    Budget, OverBudget,
};
pub use plumbing::{plumbing, set_plumbing, Plumbing};
pub use profile::{
    FunctionGrowth, FunctionTotal, Line, Location, Mapping, Profile, Sample, SampleType,
    UnknownSampleType,
};
pub use sampler::{sample_rate, unbias_factor, DEFAULT_SAMPLE_RATE_BYTES};
pub use snapshot::{snapshot, OVERFLOW_FRAME};
#[cfg(feature = "tracing")]
pub use spans::SpanLayer;
#[doc(hidden)]
pub use stack::{
    __compare_unwinders, __fence_libgcc_unwinds, __unwinder_disagreements,
    Comparison as __UnwinderComparison,
};
pub use stack::{set_stack_capture, stack_capture, StackCapture, MAX_FRAMES};
pub use symbolize::{
    set_source_lines, symbolize_with_binary, symbolize_with_binary_within, warm_symbol_cache,
    SymbolizeError,
};
pub use table::{profiler_stats, ProfilerStats};
pub use thread_state::{reseed_sampler, set_sample_rate};

/// jemalloc as an inner allocator: `heapwatch::Alloc<heapwatch::Jemalloc>`.
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;
