//! `/metrics`: heapwatch's figures rendered in the Prometheus text format by a recorder of its
//! own, whatever the service does with the `metrics` facade.

use crate::fork::{GuardSlot, HeldAcrossFork, Hooks, Rank};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// How long a gauge stays on the page once no render sets it: less than any scrape interval.
const IDLE_GAUGE: Duration = Duration::from_millis(500);

/// A recorder of heapwatch's own metrics, apart from any the service installed, so `/metrics`
/// works whatever the service does with the `metrics` facade.
fn own_recorder() -> &'static (PrometheusRecorder, PrometheusHandle) {
    static RECORDER: OnceLock<(PrometheusRecorder, PrometheusHandle)> = OnceLock::new();
    RECORDER.get_or_init(|| {
        // Gauges not set by the latest render leave the page: a span that fell out of the top
        // spans, a time to the limit no longer predicted. Every render sets the others.
        let recorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::GAUGE, Some(IDLE_GAUGE))
            .build_recorder();
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
static RENDERING: HeldAcrossFork<Mutex<()>> =
    HeldAcrossFork::new(Rank::Metrics, &FORK_HOOKS, Mutex::new(()));

fn render_lock() -> MutexGuard<'static, ()> {
    RENDERING.lock().unwrap_or_else(PoisonError::into_inner)
}

static FORK_HOOKS: Hooks = Hooks {
    take: |forking| {
        let rendering = RENDERING.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, rendering.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: GuardSlot<MutexGuard<'static, ()>> = GuardSlot::new();
