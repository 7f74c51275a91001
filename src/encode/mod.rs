//! Encoders: a [`Profile`](crate::Profile) in, a writer out. Each is plain data to bytes and
//! never touches the allocator's state.

#[cfg(feature = "flamegraph")]
mod flamegraph;
mod folded;
mod pprof;
pub mod proto;
mod summary;

#[cfg(feature = "flamegraph")]
pub use flamegraph::{write_flamegraph, write_flamegraph_min_width};
pub use folded::{folded_lines, write_folded};
pub use pprof::{to_pprof, write_pprof};
pub use summary::{human_bytes, write_top_text};
