//! Stack capture for sampled allocations.
//!
//! Uses the platform unwinder (`_Unwind_Backtrace` on Linux) through `backtrace`'s
//! unsynchronized entry point: it works without frame pointers (the standard library is built
//! without them), takes no lock of ours and allocates nothing. A few microseconds per capture,
//! paid once per sample.

/// Deepest stack kept per sample; deeper stacks keep their 64 innermost frames.
pub const MAX_FRAMES: usize = 64;

/// Writes the return addresses of the current stack, innermost first, into `frames`; returns
/// how many were written.
#[inline(never)]
pub(crate) fn capture(frames: &mut [usize; MAX_FRAMES]) -> usize {
    let mut depth = 0;
    // SAFETY: `trace_unsynchronized` is unsafe only because it skips backtrace's global lock,
    // which guards unwinders that are not thread-safe; the Linux/glibc `_Unwind_Backtrace` is
    // thread-safe. The callback only writes within `frames` and never panics (the bound check
    // stops the walk first).
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if depth >= MAX_FRAMES {
                return false;
            }
            frames[depth] = frame.ip() as usize;
            depth += 1;
            true
        });
    }
    depth
}
