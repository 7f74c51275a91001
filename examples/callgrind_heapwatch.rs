//! heapwatch over jemalloc under callgrind: `… callgrind_heapwatch N SIZE|realistic RATE [span]`
//! (see `scripts/callgrind.sh`); RATE is the sampling rate in bytes (0: off). With `span`, the
//! pairs run inside an entered `request` span with `heapwatch::SpanLayer` installed: the
//! unsampled path must cost the same instructions as without it.

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
    if std::env::args().nth(4).as_deref() == Some("span") {
        in_a_span(pairs::run_from_args);
    } else {
        pairs::run_from_args();
    }
}

#[cfg(feature = "tracing")]
fn in_a_span(run: fn()) {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(heapwatch::SpanLayer::new().with_fields(["route"]))
        .init();
    let span = tracing::info_span!("request", route = "/callgrind");
    let _entered = span.enter();
    run();
}

#[cfg(not(feature = "tracing"))]
fn in_a_span(_run: fn()) {
    panic!("`span` needs heapwatch's `tracing` feature");
}
