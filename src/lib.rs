//! A flight recorder for the heap of a Rust service.
//!
//! Installed as the `#[global_allocator]`, heapwatch counts every allocation exactly and samples
//! a few with their stacks, so that at any moment it can say what holds the process's memory.
//! It watches the container's memory limit and writes a pprof heap profile, a flamegraph and a
//! JSON summary **before** the kernel's OOM killer takes the evidence away; it tells a leak from
//! a spike from a limit that is too low; and it serves Prometheus metrics and
//! `/debug/pprof/heap`, so `go tool pprof`, Prometheus, Parca and Pyroscope read it unmodified.
//!
//! The guide (`docs/` in the repository) covers set-up, reading profiles, Kubernetes, the
//! measurements and every setting; this page is the map of the API.
//!
//! # Quick start
//!
//! ```
//! #[global_allocator]
//! static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let blobs: Vec<Vec<u8>> = (0..64).map(|_| vec![0; 64 << 10]).collect();
//!     println!("{} bytes live", heapwatch::stats().live_bytes);
//!     let profile = heapwatch::snapshot();
//!     let file = std::fs::File::create(std::env::temp_dir().join("heap.pb.gz"))?;
//!     heapwatch::encode::write_pprof(&profile, file)?; // go tool pprof -top heap.pb.gz
//!     drop(blobs);
//!     Ok(())
//! }
//! ```
//!
//! Over jemalloc (feature `jemalloc`, on by default):
//! `static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);`.
//! Build releases with `debug = "line-tables-only"` so that inlined functions are named.
//!
//! # What it does, and where
//!
//! | capability | API |
//! |---|---|
//! | count every heap byte and block, exactly, per thread | [`Alloc`], [`stats`], [`HeapStats`] |
//! | sample allocations with their stacks (unbiased, one per 512 KiB by default) | [`set_sample_rate`], [`set_stack_capture`], [`StackCapture`] |
//! | a live-heap profile with named, inlined frames | [`snapshot`], [`Profile`], [`set_plumbing`] |
//! | write it as pprof, folded stacks, flamegraphs, text | [`encode`]; read one back with [`decode`] |
//! | watch the cgroup limit and dump before the OOM kill | [`watch::Watch`], [`published`] |
//! | tell a leak from a spike from a limit too low | [`detect`] |
//! | metrics through the `metrics` facade | [`metrics_export`] |
//! | heap by `tracing` span | [`SpanLayer`] (feature `tracing`), [`spans`] |
//! | an HTTP listener and an axum router: metrics, pprof, flamegraphs, dumps | [`http::Server`] (feature `http`), [`http::router`] (feature `axum`) |
//! | CPU profiles | [`cpu::profile`] (feature `cpu`) |
//! | exact allocation figures and budgets in tests | [`measure()`], [`assert_allocations!`], [`check_allocations`] |
//! | leak checks in tests | [`leak_check::assert_no_leak`] |
//! | criterion measurements and a heap profiler for benchmarks | [`bench`](mod@bench) (feature `criterion`) |
//!
//! # How it measures
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
//! # Costs
//!
//! An unsampled allocation costs a thread-local countdown and two counter updates on the
//! thread's own cache line; an unsampled free tests its address against a mask on that same line
//! (sampled blocks are placed at 4 KiB boundaries, so most frees are told apart by their address
//! alone) and only blocks at such a boundary consult a bitmap of sampled addresses. Only sampled
//! allocations (one per `R` bytes) capture a stack and take a lock. heapwatch's own memory
//! (tables, stacks, symbol cache) comes from the C allocator directly and is reported by
//! [`profiler_stats`]; it grows with the number of live samples and distinct stacks, not with
//! the heap.
//!
//! Addresses are named once and cached. Where the binary has DWARF line tables (build with
//! `debug = "line-tables-only"` or more; a separate debug file found by build id or
//! `.gnu_debuglink` serves too), every inlined frame is named, fully qualified, with file and
//! line (feature `dwarf`, on by default); otherwise names come from the ELF symbol table. The
//! allocation machinery is cut from the leaf end of each stack, and where one culprit is named
//! the [`Plumbing`] libraries are passed over.
//!
//! # Features
//!
#![doc = document_features::document_features!()]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod alloc;
#[cfg(feature = "criterion")]
pub mod bench;
mod counters;
#[cfg(feature = "cpu")]
pub mod cpu;
pub mod decode;
pub mod detect;
#[cfg(doctest)]
mod doc_tests;
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
    __compare_unwinders, __fence_libgcc_unwinds, __unwinder_disagreements, __unwinder_samples_here,
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
