//! Every figure through the `metrics` facade, so a service keeps its own exporter: the watch
//! thread records each tick's [`Latest`] as it publishes it, and [`update`] records what was
//! last [`published`], as the built-in listener's `/metrics` does into a recorder of its own.
//! Names and units follow Prometheus conventions (`heapwatch_…_bytes`, `…_total`).

use crate::detect::VerdictKind;
use crate::published::{self, Latest};
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use std::sync::atomic::{AtomicBool, Ordering};

/// Every verdict name, so that each has a 0/1 series (`heapwatch_verdict{verdict="…"}`).
const VERDICTS: [VerdictKind; 6] = [
    VerdictKind::Unknown,
    VerdictKind::Steady,
    VerdictKind::Leak,
    VerdictKind::Spike,
    VerdictKind::LimitTooLow,
    VerdictKind::Fragmentation,
];

/// Describes the metrics (help text and units) to the current recorder.
pub fn describe() {
    describe_gauge!(
        "heapwatch_heap_live_bytes",
        Unit::Bytes,
        "Bytes currently allocated through heapwatch (exact)."
    );
    describe_gauge!(
        "heapwatch_heap_live_objects",
        Unit::Count,
        "Blocks currently allocated (exact)."
    );
    describe_counter!(
        "heapwatch_heap_allocated_bytes_total",
        Unit::Bytes,
        "Bytes allocated since start (exact)."
    );
    describe_counter!(
        "heapwatch_heap_allocated_objects_total",
        Unit::Count,
        "Blocks allocated since start (exact)."
    );
    describe_gauge!(
        "heapwatch_sample_rate_bytes",
        Unit::Bytes,
        "Mean bytes between sampled allocations (0: off)."
    );
    describe_gauge!(
        "heapwatch_profiler_bytes",
        Unit::Bytes,
        "heapwatch's own memory: tables, stacks, symbols."
    );
    describe_gauge!(
        "heapwatch_symbolizer_bytes",
        Unit::Bytes,
        "The symbolizer's memory: symbol tables, parsed DWARF, names, address cache."
    );
    describe_gauge!(
        "heapwatch_cgroup_limit_bytes",
        Unit::Bytes,
        "The memory limit (cgroup, or configured)."
    );
    describe_gauge!(
        "heapwatch_cgroup_usage_bytes",
        Unit::Bytes,
        "Memory charged to the cgroup (or RSS without one)."
    );
    describe_gauge!(
        "heapwatch_cgroup_working_set_bytes",
        Unit::Bytes,
        "Usage minus inactive file, as the kubelet computes it."
    );
    describe_gauge!(
        "heapwatch_heap_floor_growth_bytes_per_second",
        "Robust slope of the heap floor."
    );
    describe_gauge!(
        "heapwatch_time_to_limit_seconds",
        Unit::Seconds,
        "Predicted time to the limit at the floor's slope (absent when not rising)."
    );
    describe_gauge!(
        "heapwatch_verdict",
        "1 for the detector's current verdict, 0 for the others."
    );
    describe_gauge!(
        "heapwatch_verdict_confidence",
        "Confidence of the current verdict, 0 to 1."
    );
    describe_counter!(
        "heapwatch_dumps_total",
        Unit::Count,
        "Dump sets written, by reason."
    );
    describe_counter!(
        "heapwatch_dump_errors_total",
        Unit::Count,
        "Dump sets that could not be written."
    );
    describe_gauge!(
        "heapwatch_heap_span_live_bytes",
        Unit::Bytes,
        "Estimated live bytes allocated in each of the top tracing spans (sampled)."
    );
    describe_gauge!(
        "heapwatch_jemalloc_allocated_bytes",
        Unit::Bytes,
        "jemalloc stats.allocated."
    );
    describe_gauge!(
        "heapwatch_jemalloc_active_bytes",
        Unit::Bytes,
        "jemalloc stats.active."
    );
    describe_gauge!(
        "heapwatch_jemalloc_resident_bytes",
        Unit::Bytes,
        "jemalloc stats.resident."
    );
    describe_gauge!(
        "heapwatch_jemalloc_retained_bytes",
        Unit::Bytes,
        "jemalloc stats.retained."
    );
    describe_gauge!(
        "heapwatch_jemalloc_metadata_bytes",
        Unit::Bytes,
        "jemalloc stats.metadata."
    );
}

/// Publishes every figure to the current `metrics` recorder: the heap's counters now, and the
/// watch's figures as it last [published] them.
///
/// ```
/// heapwatch::metrics_export::update(); // a no-op without a recorder
/// ```
pub fn update() {
    describe_once();
    update_undescribed();
}

/// The watch thread's update: the figures it has just published, passed along rather than
/// read back.
pub(crate) fn record(latest: &Latest) {
    describe_once();
    record_figures(Some(latest));
}

fn describe_once() {
    // Not a `Once`: a `fork` while another thread ran `describe` would leave the child's
    // `Once` running forever, and the child's first update would wait on it. Describing twice
    // is harmless.
    static DESCRIBED: AtomicBool = AtomicBool::new(false);
    if !DESCRIBED.swap(true, Ordering::Relaxed) {
        describe();
    }
}

/// [`update`] without describing first (a local recorder is described by its owner).
pub(crate) fn update_undescribed() {
    record_figures(published::latest().as_ref());
}

/// The series `heapwatch_heap_span_live_bytes` has at most: the spans holding the most.
pub const TOP_SPAN_SERIES: usize = 10;

/// `heapwatch_heap_span_live_bytes{span=…}` for the [`TOP_SPAN_SERIES`] spans holding the most
/// sampled live bytes. A span that leaves the top keeps its last value in a recorder without an
/// idle timeout (the built-in `/metrics` has one, so only the current top is listed); the
/// series are at most the distinct span tags, which are bounded.
fn record_top_spans() {
    let mut spans = crate::table::live_bytes_by_span();
    spans.retain(|&(tag, bytes)| tag != crate::spans::tags::NO_SPAN && bytes >= 0.5);
    if spans.is_empty() {
        return;
    }
    spans.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    spans.truncate(TOP_SPAN_SERIES);
    for (tag, bytes) in spans {
        let labels = crate::spans::tags::labels(tag);
        if let Some(span) = crate::spans::span_name(&labels) {
            gauge!("heapwatch_heap_span_live_bytes", "span" => span).set(bytes.round());
        }
    }
}

fn record_figures(latest: Option<&Latest>) {
    let stats = crate::counters::stats();
    gauge!("heapwatch_heap_live_bytes").set(stats.live_bytes as f64);
    gauge!("heapwatch_heap_live_objects").set(stats.live_objects as f64);
    counter!("heapwatch_heap_allocated_bytes_total").absolute(stats.allocated_bytes);
    counter!("heapwatch_heap_allocated_objects_total").absolute(stats.allocated_objects);
    gauge!("heapwatch_sample_rate_bytes").set(crate::sampler::sample_rate() as f64);
    let own = crate::table::profiler_stats();
    gauge!("heapwatch_profiler_bytes").set(own.profiler_bytes as f64);
    gauge!("heapwatch_symbolizer_bytes").set(own.symbol_cache_bytes as f64);

    if let Some(Latest { reading, detector }) = latest {
        let set = |name: &'static str, value: Option<u64>| {
            if let Some(value) = value {
                gauge!(name).set(value as f64);
            }
        };
        set("heapwatch_cgroup_limit_bytes", reading.limit_bytes);
        set("heapwatch_cgroup_usage_bytes", reading.usage_bytes);
        set(
            "heapwatch_cgroup_working_set_bytes",
            reading.working_set_bytes,
        );
        let verdict = &detector.verdict;
        gauge!("heapwatch_heap_floor_growth_bytes_per_second")
            .set(verdict.floor_slope_bytes_per_second);
        if let Some(eta) = verdict.eta_seconds {
            gauge!("heapwatch_time_to_limit_seconds").set(eta);
        }
        for kind in VERDICTS {
            gauge!("heapwatch_verdict", "verdict" => kind.name()).set(if kind == verdict.kind {
                1.0
            } else {
                0.0
            });
        }
        gauge!("heapwatch_verdict_confidence").set(verdict.confidence);
    }
    for (reason, count) in published::dumps_written() {
        counter!("heapwatch_dumps_total", "reason" => reason.name()).absolute(count);
    }
    counter!("heapwatch_dump_errors_total").absolute(published::dump_errors());
    record_top_spans();

    #[cfg(feature = "jemalloc")]
    if let Some(je) =
        crate::jemalloc_stats::jemalloc_stats().filter(|je| je.allocated * 2 >= stats.live_bytes)
    {
        gauge!("heapwatch_jemalloc_allocated_bytes").set(je.allocated as f64);
        gauge!("heapwatch_jemalloc_active_bytes").set(je.active as f64);
        gauge!("heapwatch_jemalloc_resident_bytes").set(je.resident as f64);
        gauge!("heapwatch_jemalloc_retained_bytes").set(je.retained as f64);
        gauge!("heapwatch_jemalloc_metadata_bytes").set(je.metadata as f64);
    }
}
