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
//! | path | content |
//! |---|---|
//! | `/` | an index page linking the others |
//! | `/metrics` | Prometheus text (rendered by metrics-exporter-prometheus) |
//! | `/debug/pprof/heap`, `/debug/pprof/allocs` | gzipped pprof, as Go serves them |
//! | `/debug/heap/flamegraph.svg` | the live heap |
//! | `/debug/heap/diff.svg` | now against the baseline taken after warm-up |
//! | `/debug/heap/report` | JSON: counters, cgroup, verdict, suspects |
//! | `/debug/heap/dumps` | the dump sets on disk; `/debug/heap/dumps/<name>` downloads a listed file |
//!
//! Bound to loopback unless told otherwise; an optional bearer token (scheme in any case,
//! compared by fixed-size digests); requests are limited in size (8 KiB of headers, 1 KiB of
//! body), time (5 s to send a whole request, 10 s to take the whole answer, each counted as a
//! total, however slowly bytes trickle) and concurrency (4 rendered at once, 16 waiting, more
//! get 503; 64 connections open, a new one beyond them closing the slowest). Slow clients never
//! hold a worker: one thread reads requests and writes answers for every connection without
//! blocking. Accept errors (the descriptor limit) pause accepting, 5 ms doubling to 1 s. Only
//! GET and HEAD. See [`Limits`] and [`Server`].

#[cfg(feature = "axum")]
mod axum_router;
mod routes;
mod server;

#[cfg(feature = "axum")]
pub use axum_router::router;
pub use routes::{reason_phrase, respond, respond_under, Context, Response};
pub use server::{Limits, Server, ServerBuilder};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::OnceLock;

/// A recorder of heapwatch's own metrics, apart from any the service installed, so `/metrics`
/// works whatever the service does with the `metrics` facade.
fn own_recorder() -> &'static (PrometheusRecorder, PrometheusHandle) {
    static RECORDER: OnceLock<(PrometheusRecorder, PrometheusHandle)> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, crate::metrics_export::describe);
        (recorder, handle)
    })
}

/// heapwatch's metrics, now, in the Prometheus text format.
///
/// ```
/// let text = heapwatch::http::render_metrics();
/// assert!(text.contains("heapwatch_heap_live_bytes"));
/// ```
pub fn render_metrics() -> String {
    let _rendering = render_lock();
    let (recorder, handle) = own_recorder();
    metrics::with_local_recorder(recorder, crate::metrics_export::update_undescribed);
    handle.render()
}

/// Held for a whole render: the recorder keeps locks of its own, which a `fork` must not catch
/// held by another thread (the child's `/metrics` would wait forever), and the fork handlers can
/// only take locks heapwatch owns. Renders are serialised by it, which costs nothing that
/// matters (a render takes tens of microseconds; scrapes come seconds apart).
static RENDERING: crate::fork::HeldAcrossFork<std::sync::Mutex<()>> =
    crate::fork::HeldAcrossFork::new(
        crate::fork::Rank::Metrics,
        &FORK_HOOKS,
        std::sync::Mutex::new(()),
    );

fn render_lock() -> std::sync::MutexGuard<'static, ()> {
    RENDERING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let rendering = RENDERING.for_fork(forking).lock();
        HELD_FOR_FORK.keep(
            forking,
            rendering.unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: crate::fork::GuardSlot<std::sync::MutexGuard<'static, ()>> =
    crate::fork::GuardSlot::new();
