//! Encoders: a [`Profile`](crate::profile::Profile) in, a writer out: pprof, folded stacks,
//! text top lists, Go's legacy text heap format, and every SVG heapwatch writes (flamegraphs,
//! their differential, the placeholder without inferno, the timeline chart); and a CPU profile
//! as pprof (feature `cpu`). Each is plain data to bytes and never touches the allocator's
//! state.

#[cfg(feature = "cpu")]
mod cpu_pprof;
#[cfg(feature = "flamegraph")]
mod flamegraph;
mod folded;
mod legacy_text;
mod pprof;
pub mod proto;
#[cfg(any(feature = "flamegraph", feature = "http"))]
mod pruned;
mod svg;
mod timeline;
mod top_list;

#[cfg(feature = "cpu")]
pub use cpu_pprof::{to_cpu_pprof, write_cpu_pprof};
#[cfg(feature = "flamegraph")]
pub use flamegraph::{
    write_diff_flamegraph, write_flamegraph, write_flamegraph_min_width, DiffFlamegraphOptions,
};
pub use folded::{folded_lines, folded_text, write_folded};
pub use legacy_text::write_legacy_heap;
pub use pprof::{to_pprof, write_pprof};
#[cfg(feature = "http")]
pub(crate) use pprof::{write_pprof_split, SplitSample};
#[cfg(feature = "http")]
pub(crate) use pruned::{visible_part, WeightedStack};
pub use svg::{write_flamegraph_placeholder, FlamegraphPlaceholder};
pub use timeline::{write_timeline, TimelineMark, TimelinePoint};
pub use top_list::{human_bytes, write_top_text};
