//! heapwatch over jemalloc under callgrind: `… callgrind_heapwatch N SIZE|realistic RATE [span]`
//! (see `scripts/callgrind.sh`); RATE is the sampling rate in bytes (0: off). With `span`,
//! `heapwatch::SpanLayer` is installed and the pairs run inside an entered `request` span: the
//! allocation path must cost the same instructions as without it. Both ways run through the
//! same `run`, so the sampled stacks are the same return addresses (the caching unwinder's
//! direct-mapped cache then hits and misses alike).

#[path = "callgrind/pairs.rs"]
mod pairs;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

fn main() {
    let rate = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512 * 1024);
    heapwatch::set_sample_rate(rate);
    let in_span = std::env::args().nth(4).as_deref() == Some("span");
    if in_span {
        install_span_layer();
    }
    run(in_span);
}

/// The pairs, in an entered span or not (without a subscriber a span is disabled and entering
/// it does nothing).
#[inline(never)]
fn run(in_span: bool) {
    let span = if in_span {
        tracing::info_span!("request", route = "/callgrind")
    } else {
        tracing::Span::none()
    };
    let _entered = span.enter();
    pairs::run_from_args();
}

#[cfg(feature = "tracing")]
fn install_span_layer() {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(heapwatch::SpanLayer::new().with_fields(["route"]))
        .init();
}

#[cfg(not(feature = "tracing"))]
fn install_span_layer() {
    panic!("`span` needs heapwatch's `tracing` feature");
}
