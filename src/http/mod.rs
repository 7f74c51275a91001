//! The built-in HTTP listener (feature `http`), opt-in: Prometheus metrics, Go's pprof
//! endpoints, flamegraph and report pages — on its own threads, without tokio.
//!
//! ```no_run
//! let server = heapwatch::http::Server::builder()   // HEAPWATCH_ADDR and HEAPWATCH_TOKEN override
//!     .addr("127.0.0.1:6060")
//!     .start()
//!     .expect("bind");
//! println!("go tool pprof http://{}/debug/pprof/heap", server.local_addr());
//! ```
//!
//! | path | content | memory at most |
//! |---|---|---|
//! | `/` | an index page linking the others | 256 KiB |
//! | `/metrics` | Prometheus text (rendered by metrics-exporter-prometheus) | 256 KiB |
//! | `/debug/pprof/heap`, `/debug/pprof/allocs` | gzipped pprof, as Go serves them; `?seconds=N`: what was allocated over the next N s (Go's delta profile); `?debug=1`: Go's legacy text format | the table's copy (by distinct call path) and names, + a body of 16 MiB; `?seconds=N`: two such copies |
//! | `/debug/pprof/profile?seconds=N` | a CPU profile of N s (default 30), gzipped pprof (feature `cpu`; 501 without it) | one at a time (409) |
//! | `/debug/heap/flamegraph.svg` | the live heap; `?by=span`: rooted at each tracing span | the copy, one root's call tree, what is drawn; a body of 8 MiB |
//! | `/debug/heap/diff.svg` | now against the baseline taken after warm-up | the copy and both sides' folded lines; 8 MiB |
//! | `/debug/heap/report` | JSON: counters, cgroup, verdict, suspects | the copy, + 1 MiB |
//! | `/debug/heap/dumps` | the dump sets on disk; `/debug/heap/dumps/<name>` downloads a listed file | 256 KiB; a download, the file's size |
//!
//! **Memory.** Every page reserves what it will hold from one process-wide budget shared by the
//! listener's workers and the axum router (feature `axum`; 32 MiB by default, see
//! [`set_response_budget`]) before it holds it: its copy of the sample table, in which stacks
//! differing only by their span share one call path; its names; its body, bounded as it
//! grows. A page that cannot have its share answers `503 Service Unavailable` with
//! `Retry-After: 1` and allocates nothing more. The guide's safety page (`docs/safety.md`) has
//! each page's figures and their measurement.
//!
//! Bound to loopback unless told otherwise; an optional bearer token (scheme in any case,
//! compared by fixed-size digests); requests are limited in size (8 KiB of headers, 1 KiB of
//! body), time (5 s to send a whole request, 10 s to take the whole answer, each counted as a
//! total, however slowly bytes trickle) and concurrency (4 rendered at once, 16 waiting, more
//! get 503; 64 connections open, a new one beyond them closing the slowest). Slow clients never
//! hold a worker: one thread reads requests and writes answers for every connection without
//! blocking. Accept errors (the descriptor limit) pause accepting, 5 ms doubling to 1 s. Only
//! GET and HEAD. See [`Limits`] and [`Server`].
//!
//! The pages that wait (`?seconds=N`, at most 120) run one CPU profile and one heap delta at a
//! time; a second request while one runs is answered 409 at once, so two workers at most wait
//! and the others keep serving. A worker rendering is under no deadline, so a 30 s profile is
//! not cut; the 10 s to take the answer start once it is ready. A page that waits stops when its
//! client goes away (closes, or shuts down its sending side, as Go's does): it answers nothing
//! and its slot is free within 100 ms.

#[cfg(feature = "axum")]
mod axum_router;
mod budget;
mod clients;
mod heavy_pages;
mod metrics_page;
mod pprof_pages;
mod query;
mod response;
mod routes;
mod server;

#[cfg(feature = "axum")]
pub use axum_router::router;
pub use budget::{response_budget, set_response_budget, DEFAULT_RESPONSE_BUDGET_BYTES};
pub use routes::{reason_phrase, respond, respond_under, Context, Response};
pub use server::{Limits, Server, ServerBuilder};

pub use metrics_page::render_metrics;
