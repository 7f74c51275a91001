//! Encoders: a [`Profile`](crate::profile::Profile) in, a writer out: pprof, folded stacks,
//! text top lists, and every SVG heapwatch writes (flamegraphs, their differential, the
//! placeholder without inferno, the timeline chart). Each is plain data to bytes and never
//! touches the allocator's state.

#[cfg(feature = "flamegraph")]
mod flamegraph;
mod folded;
mod pprof;
pub mod proto;
mod svg;
mod timeline;
mod top_list;

#[cfg(feature = "flamegraph")]
pub use flamegraph::{
    write_diff_flamegraph, write_flamegraph, write_flamegraph_min_width, DiffFlamegraphOptions,
};
pub use folded::{folded_lines, folded_text, write_folded};
pub use pprof::{to_pprof, write_pprof};
pub use svg::{write_flamegraph_placeholder, FlamegraphPlaceholder};
pub use timeline::{write_timeline, TimelineMark, TimelinePoint};
pub use top_list::{human_bytes, write_top_text};
