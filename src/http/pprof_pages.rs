//! Go's pprof endpoints as Go's `net/http/pprof` serves them: `/debug/pprof/heap` and
//! `/debug/pprof/allocs` (a profile now; `?seconds=N`, what was allocated over the next N
//! seconds; `?debug=1`, the legacy text format) and `/debug/pprof/profile?seconds=N` (a CPU
//! profile, feature `cpu`).
//!
//! The pages that wait seconds are bounded so they cannot take every worker of the built-in
//! listener (4) from `/metrics` and the other pages: one CPU profile at a time (the sampler is
//! process-wide anyway) and one heap delta at a time; a request while one runs is answered at
//! once, 409 Conflict, with a body that says so. A page that waits is split from the request's
//! parsing ([`Answer::Later`]), so the axum router can wait on a blocking thread and never on
//! a runtime worker.
//!
//! A page that waits stops when its client goes away (as Go's does, on the request's context):
//! the server tells it through the `client_gone` it passes to [`Wait::wait`], which is asked
//! every [`CANCEL_CHECK`], and the slot is free as soon as the wait returns.

use super::query::{parse, PprofQuery};
use super::response::Response;
use crate::profile::SampleType;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A request's answer: ready now, or after a wait of seconds.
pub(crate) enum Answer {
    /// Ready.
    Now(Response),
    /// Ready once [`Wait::wait`] has waited.
    Later(Wait),
}

impl Answer {
    /// The response, waiting on the calling thread if it has to.
    pub(crate) fn into_response(self) -> Response {
        match self {
            Answer::Now(response) => response,
            // Nobody here can go away: the wait always runs to its end.
            Answer::Later(wait) => wait.wait(&|| false).unwrap_or_else(|| Response::error(500)),
        }
    }
}

/// A page that waits, with its claim on the one slot of its kind: the claim is taken when the
/// request is parsed, so a second request is refused before anything waits.
pub(crate) struct Wait {
    kind: WaitKind,
    seconds: u64,
}

enum WaitKind {
    #[cfg(feature = "cpu")]
    Cpu(crate::cpu::session::Reservation),
    HeapDelta {
        _slot: HeapDeltaSlot,
        name: &'static str,
    },
}

/// How often a wait asks whether its client went away: an abandoned wait frees its slot within
/// this (and the server's own delay in noticing).
pub(crate) const CANCEL_CHECK: Duration = Duration::from_millis(100);

impl Wait {
    /// Waits the request's seconds and renders the page; `None`, the slot freed, as soon as
    /// `client_gone` answers true (asked every [`CANCEL_CHECK`]): nobody is left to answer.
    pub(crate) fn wait(self, client_gone: &dyn Fn() -> bool) -> Option<Response> {
        let window = Duration::from_secs(self.seconds);
        Some(match self.kind {
            #[cfg(feature = "cpu")]
            WaitKind::Cpu(reservation) => match reservation.profile_until(window, client_gone) {
                Ok(profile) => {
                    let mut body = Vec::new();
                    match crate::encode::write_cpu_pprof(&profile, &mut body) {
                        Ok(()) => download(body, "profile"),
                        Err(_) => Response::error(500),
                    }
                }
                Err(error @ crate::cpu::session::CpuProfileError::AlreadyRunning) => {
                    Response::text(409, error.to_string())
                }
                Err(crate::cpu::session::CpuProfileError::Cancelled) => return None,
                Err(error) => Response::text(500, error.to_string()),
            },
            WaitKind::HeapDelta { _slot, name } => {
                // Go's delta profile: the alloc_* figures of the window (what was allocated
                // in it), the in-use figures as of its end. The earlier end is held (within
                // the budget) for the wait: a copy merged by call path, a few MiB.
                let earlier = match super::heavy_pages::admitted_snapshot() {
                    Ok(earlier) => earlier,
                    Err(refused) => return Some(refused),
                };
                if !sleep_unless(window, client_gone) {
                    return None;
                }
                super::heavy_pages::heap_delta(earlier, name)
            }
        })
    }
}

/// Sleeps `window` in slices of [`CANCEL_CHECK`]; false, at once, when `client_gone` says so.
fn sleep_unless(window: Duration, client_gone: &dyn Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + window;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        if client_gone() {
            return false;
        }
        std::thread::sleep(left.min(CANCEL_CHECK));
    }
}

/// The one heap delta running, released when dropped.
struct HeapDeltaSlot;

static HEAP_DELTA_RUNNING: AtomicBool = AtomicBool::new(false);

/// A child forked while the parent's delta waited has no thread waiting: the slot is free.
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |_| {},
    release: |_| {},
    in_child: Some(|_| HEAP_DELTA_RUNNING.store(false, Ordering::Release)),
};

impl HeapDeltaSlot {
    fn take() -> Option<HeapDeltaSlot> {
        crate::fork::register(crate::fork::Rank::HeapDelta, &FORK_HOOKS);
        HEAP_DELTA_RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| HeapDeltaSlot)
    }
}

impl Drop for HeapDeltaSlot {
    fn drop(&mut self) {
        HEAP_DELTA_RUNNING.store(false, Ordering::Release);
    }
}

/// `/debug/pprof/heap` (`default`: inuse_space) or `/debug/pprof/allocs` (alloc_space), with
/// the request's query.
pub(crate) fn heap(query: &str, default: SampleType, name: &'static str) -> Answer {
    let query = match parse(query) {
        Ok(query) => query,
        Err(why) => return Answer::Now(Response::text(400, why)),
    };
    match query {
        PprofQuery {
            seconds: Some(_),
            debug: 1..,
        } => Answer::Now(Response::text(
            400,
            "seconds and debug cannot be given together: a delta profile is pprof protobuf only (as Go's)",
        )),
        PprofQuery {
            seconds: Some(seconds),
            ..
        } => match HeapDeltaSlot::take() {
            Some(slot) => Answer::Later(Wait {
                kind: WaitKind::HeapDelta { _slot: slot, name },
                seconds,
            }),
            None => Answer::Now(Response::text(
                409,
                "a heap delta profile (?seconds=) is already being taken; one runs at a time, try again when it ends",
            )),
        },
        PprofQuery { debug: 1.., .. } => Answer::Now(super::heavy_pages::legacy_text()),
        PprofQuery { .. } => Answer::Now(super::heavy_pages::pprof(default, name)),
    }
}

/// `/debug/pprof/profile?seconds=N` (default 30, as Go's): a CPU profile.
pub(crate) fn cpu(query: &str) -> Answer {
    let query = match parse(query) {
        Ok(query) => query,
        Err(why) => return Answer::Now(Response::text(400, why)),
    };
    cpu_profile(query.seconds.unwrap_or(DEFAULT_CPU_SECONDS))
}

/// Go's default length of a CPU profile.
const DEFAULT_CPU_SECONDS: u64 = 30;

#[cfg(feature = "cpu")]
fn cpu_profile(seconds: u64) -> Answer {
    match crate::cpu::session::Reservation::take() {
        Ok(reservation) => Answer::Later(Wait {
            kind: WaitKind::Cpu(reservation),
            seconds,
        }),
        Err(error @ crate::cpu::session::CpuProfileError::AlreadyRunning) => {
            Answer::Now(Response::text(409, error.to_string()))
        }
        // For good in this process: not worth retrying.
        Err(error) => Answer::Now(Response::text(501, error.to_string())),
    }
}

#[cfg(not(feature = "cpu"))]
fn cpu_profile(_seconds: u64) -> Answer {
    Answer::Now(Response::text(
        501,
        "CPU profiles are off: heapwatch was built without its feature `cpu`",
    ))
}

/// A gzipped pprof answer, named `<name>.pb.gz` when saved.
#[cfg(feature = "cpu")]
fn download(body: Vec<u8>, name: &str) -> Response {
    let mut response = Response::new(200, "application/octet-stream", body);
    response.disposition = Some(format!("attachment; filename=\"{name}.pb.gz\""));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(answer: Answer) -> (u16, String) {
        match answer {
            Answer::Now(response) => (
                response.status,
                String::from_utf8_lossy(&response.body).into_owned(),
            ),
            Answer::Later(_) => (0, "waits".to_owned()),
        }
    }

    #[test]
    fn bad_queries_are_refused_before_anything_waits() {
        let (code, body) = status(heap("seconds=abc", SampleType::InuseSpace, "heap"));
        assert_eq!(code, 400);
        assert!(body.contains("seconds=abc"), "{body}");
        let (code, body) = status(heap("seconds=2&debug=1", SampleType::InuseSpace, "heap"));
        assert_eq!(code, 400);
        assert!(body.contains("together"), "{body}");
        assert_eq!(status(cpu("seconds=-1")).0, 400);
        assert_eq!(status(cpu("seconds=121")).0, 400);
    }

    #[cfg(not(feature = "cpu"))]
    #[test]
    fn cpu_profiles_are_501_without_the_feature() {
        let (code, body) = status(cpu("seconds=5"));
        assert_eq!(code, 501);
        assert!(body.contains("feature `cpu`"), "{body}");
    }

    /// The tests that take the one heap delta's slot, one at a time.
    static SLOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn one_heap_delta_at_a_time() {
        let _slot = SLOT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = heap("seconds=1", SampleType::AllocSpace, "allocs");
        assert!(matches!(first, Answer::Later(_)));
        let (code, body) = status(heap("seconds=1", SampleType::InuseSpace, "heap"));
        assert_eq!(code, 409);
        assert!(body.contains("already"), "{body}");
        drop(first);
        assert!(matches!(
            heap("seconds=1", SampleType::InuseSpace, "heap"),
            Answer::Later(_)
        ));
    }

    #[test]
    fn a_wait_whose_client_went_away_frees_its_slot_at_once() {
        let _slot = SLOT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Answer::Later(wait) = heap("seconds=30", SampleType::InuseSpace, "heap") else {
            panic!("a delta waits");
        };
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let answer = wait.wait(&|| asked.fetch_add(1, Ordering::Relaxed) >= 2);
        let took = started.elapsed();
        assert!(answer.is_none(), "nobody to answer");
        assert!(took < Duration::from_secs(2), "stopped after {took:?}");
        assert!(took >= CANCEL_CHECK * 2, "asked every slice: {took:?}");
        assert!(
            matches!(
                heap("seconds=1", SampleType::InuseSpace, "heap"),
                Answer::Later(_)
            ),
            "the slot is free"
        );
    }
}
