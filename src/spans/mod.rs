//! Heap by tracing span: which request kind holds the memory.
//!
//! [`SpanLayer`] (feature `tracing`) keeps each thread's current span as an interned tag
//! (`tags`); a sampled allocation records the tag with its stack, so every output splits by
//! span: pprof sample labels (`span=…` and one label per selected field, for `go tool pprof
//! -tags`, `-tagfocus`, `-tagroot`), the report's and the dumps' live heap by span, leak
//! suspects with their span, flamegraphs rooted at the span, and
//! `heapwatch_heap_span_live_bytes{span=…}` for the top spans.
//!
//! Allocations that are not sampled pay nothing: the tag is read only on the sampled path.

#[cfg(feature = "tracing")]
mod layer;
pub(crate) mod tags;
mod views;

#[cfg(feature = "tracing")]
pub use layer::SpanLayer;
pub use tags::{DEFAULT_MAX_TAGS, MAX_VALUE_BYTES, OVERFLOW_NAME, SPAN_LABEL};
pub(crate) use views::culprits_by_span;
pub use views::{by_span, rooted_at_spans, span_name, SpanTotal, NO_SPAN_NAME};
