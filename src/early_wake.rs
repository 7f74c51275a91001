//! The allocator's early wake: when the live heap crosses a watermark between two ticks, the
//! allocator wakes the watch thread at once — with one atomic add at a per-thread checkpoint
//! (about once per MiB a thread allocates), a compare, and at most a futex wake. No lock, no
//! I/O, no allocation on the allocator's side.
//!
//! The heap figure here is approximate: each thread adds its net allocation since its last
//! checkpoint, so it lags by up to a checkpoint's worth per thread, and frees by threads that
//! never allocate are not seen. The watch thread therefore sets the watermark in the same
//! approximate units, from the exact figure and the current gap between the two.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

/// Net bytes allocated, as reported at the threads' checkpoints.
static APPROX_LIVE: AtomicI64 = AtomicI64::new(0);
/// The approximate live heap at which the allocator wakes the watch thread; `i64::MAX` when
/// disarmed.
static WATERMARK: AtomicI64 = AtomicI64::new(i64::MAX);
/// The futex word: 1 once a wake is pending.
static WAKE: AtomicU32 = AtomicU32::new(0);

/// Called by a thread at its checkpoint with its net allocation since the last one. Hot-ish:
/// runs about once per MiB per thread; never blocks.
#[inline]
pub(crate) fn checkpoint(net_bytes: i64) {
    if net_bytes == 0 {
        return;
    }
    let live = APPROX_LIVE.fetch_add(net_bytes, Ordering::Relaxed) + net_bytes;
    if net_bytes > 0 && live >= WATERMARK.load(Ordering::Relaxed) {
        // Disarm first so a burst of threads crossing together wakes the watch thread once.
        WATERMARK.store(i64::MAX, Ordering::Relaxed);
        wake();
    }
}

/// Wakes the watch thread if it sleeps. Async-signal-safe: an atomic store and a syscall.
pub(crate) fn wake() {
    WAKE.store(1, Ordering::Release);
    // SAFETY: FUTEX_WAKE on a valid, aligned, 'static u32; the kernel only reads the address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Sleeps until woken or `timeout` passes. Returns `true` when woken (by the allocator, a
/// request or a stop).
pub(crate) fn sleep(timeout: Duration) -> bool {
    if WAKE.swap(0, Ordering::Acquire) == 1 {
        return true;
    }
    let spec = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a valid 'static u32 with a valid relative timeout; it returns at
    // once if the word is no longer 0 (a wake raced us), on a wake, on timeout or on a signal.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            0u32,
            &spec as *const libc::timespec,
        );
    }
    WAKE.swap(0, Ordering::Acquire) == 1
}

/// Arms the wake for when the exact live heap, now `exact_live`, reaches `target_live`.
pub(crate) fn arm(exact_live: u64, target_live: u64) {
    let approx = APPROX_LIVE.load(Ordering::Relaxed);
    let gap = target_live
        .saturating_sub(exact_live)
        .min(i64::MAX as u64 / 2) as i64;
    WATERMARK.store(approx.saturating_add(gap), Ordering::Relaxed);
}

/// Disarms the wake.
pub(crate) fn disarm() {
    WATERMARK.store(i64::MAX, Ordering::Relaxed);
}

/// The running approximate live heap, for tests.
#[cfg(test)]
pub(crate) fn approx_live() -> i64 {
    APPROX_LIVE.load(Ordering::Relaxed)
}
