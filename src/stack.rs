//! Stack capture for sampled allocations.
//!
//! Two ways, chosen by [`set_stack_capture`]:
//!
//! * **Unwinder**: the platform's DWARF-CFI unwinder (`_Unwind_Backtrace`) through `backtrace`'s
//!   unsynchronized entry point. Correct for any code, frame pointers or not, but it interprets
//!   unwind tables for every frame: about 80 ns a frame, a microsecond for a typical stack.
//! * **Frame pointers**: follows the saved frame-pointer chain, a few nanoseconds a frame. Only
//!   right if the code on the stack keeps frame pointers: Rust's standard library does, your code
//!   does when built with `RUSTFLAGS="-C force-frame-pointers=yes"`. Every frame address is
//!   checked against the thread's stack bounds before it is read, so a broken chain ends the walk
//!   early; it never faults.
//! * **Auto** (default): the first 16 samples are captured both ways. If the chains agree every
//!   time, heapwatch switches to frame pointers for good; at the first disagreement it settles on
//!   the unwinder. So a program built with frame pointers gets the fast path, and any other
//!   program keeps correct stacks.
//!
//! Neither takes a lock of ours nor allocates.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Deepest stack kept per sample; deeper stacks keep their 64 innermost frames.
pub const MAX_FRAMES: usize = 64;

/// How sampled allocations capture their stacks. See the module docs of `stack` for costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackCapture {
    /// Verify frame pointers on the first samples; use them if they agree with the unwinder.
    Auto,
    /// Always use the DWARF-CFI unwinder: correct for any build, about 80 ns a frame.
    Unwinder,
    /// Always follow frame pointers: fast, right only for code built with frame pointers.
    FramePointers,
}

const MODE_AUTO: u8 = 0;
const MODE_UNWINDER: u8 = 1;
const MODE_FRAME_POINTERS: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_AUTO);
/// Auto mode: samples whose two captures agreed so far.
static AGREEMENTS: AtomicU32 = AtomicU32::new(0);
/// 16 agreeing samples, from whatever code paths allocate first, before trusting the chain.
const AGREEMENTS_NEEDED: u32 = 16;

/// Chooses how stacks are captured from now on.
///
/// ```
/// heapwatch::set_stack_capture(heapwatch::StackCapture::Unwinder);
/// assert_eq!(heapwatch::stack_capture(), heapwatch::StackCapture::Unwinder);
/// heapwatch::set_stack_capture(heapwatch::StackCapture::Auto);
/// ```
pub fn set_stack_capture(mode: StackCapture) {
    AGREEMENTS.store(0, Ordering::Relaxed);
    let mode = match mode {
        StackCapture::Auto => MODE_AUTO,
        StackCapture::Unwinder => MODE_UNWINDER,
        StackCapture::FramePointers if frame_pointers_supported() => MODE_FRAME_POINTERS,
        StackCapture::FramePointers => MODE_UNWINDER,
    };
    MODE.store(mode, Ordering::Relaxed);
}

/// The capture in use: `Auto` while it is still verifying, then what it settled on.
pub fn stack_capture() -> StackCapture {
    match MODE.load(Ordering::Relaxed) {
        MODE_AUTO => StackCapture::Auto,
        MODE_FRAME_POINTERS => StackCapture::FramePointers,
        _ => StackCapture::Unwinder,
    }
}

/// Writes the return addresses of the current stack, innermost first, into `frames`; returns
/// how many were written.
#[inline(never)]
pub(crate) fn capture(frames: &mut [usize; MAX_FRAMES]) -> usize {
    match MODE.load(Ordering::Relaxed) {
        MODE_FRAME_POINTERS => walk_frame_pointers(frames),
        MODE_UNWINDER => unwind(frames),
        _ => capture_verifying(frames),
    }
}

/// Auto mode: unwind, and compare with the frame-pointer walk.
#[cold]
fn capture_verifying(frames: &mut [usize; MAX_FRAMES]) -> usize {
    let depth = unwind(frames);
    if !frame_pointers_supported() {
        MODE.store(MODE_UNWINDER, Ordering::Relaxed);
        return depth;
    }
    let mut walked = [0usize; MAX_FRAMES];
    let walked_depth = walk_frame_pointers(&mut walked);
    if chains_agree(&frames[..depth], &walked[..walked_depth]) {
        if AGREEMENTS.fetch_add(1, Ordering::Relaxed) + 1 >= AGREEMENTS_NEEDED {
            let _ = MODE.compare_exchange(
                MODE_AUTO,
                MODE_FRAME_POINTERS,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    } else {
        let _ = MODE.compare_exchange(
            MODE_AUTO,
            MODE_UNWINDER,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    depth
}

/// The frame-pointer chain agrees with the unwinder if, aligned on a common return address,
/// every frame matches and the walk is at most a few frames shorter.
///
/// The walk's first frame is skipped: the two captures are called from different places, so it
/// always differs. The walk may also stop up to [`OUTER_SLACK`] frames early: glibc's thread
/// start and `_start` are built without frame pointers, and the unwinder reports a null frame
/// past the outermost one.
fn chains_agree(unwound: &[usize], walked: &[usize]) -> bool {
    let unwound = match unwound.iter().rposition(|&ip| ip != 0) {
        Some(last) => &unwound[..=last],
        None => return false,
    };
    let Some(walked) = walked.get(1..).filter(|w| !w.is_empty()) else {
        return false;
    };
    let Some(offset) = unwound.iter().position(|&ip| ip == walked[0]) else {
        return false;
    };
    let unwound = &unwound[offset..];
    let common = unwound.len().min(walked.len());
    walked.len() + OUTER_SLACK >= unwound.len() && unwound[..common] == walked[..common]
}

/// Outermost frames the walk may miss and still agree: libc's thread-entry frames.
const OUTER_SLACK: usize = 3;

fn unwind(frames: &mut [usize; MAX_FRAMES]) -> usize {
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

fn frame_pointers_supported() -> bool {
    cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))
}

thread_local! {
    /// One past the highest address of this thread's stack; 0 until looked up.
    static STACK_TOP: Cell<usize> = const { Cell::new(0) };
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[inline(always)]
fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: reads the frame-pointer register into a local; no memory is touched and no flags
    // or other registers change.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    fp
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn frame_pointer() -> usize {
    0
}

/// Follows saved frame pointers. Each frame is `[saved fp, return address]` at the address in
/// the frame-pointer register; the chain must rise strictly and stay inside the thread's stack.
#[inline(never)]
fn walk_frame_pointers(frames: &mut [usize; MAX_FRAMES]) -> usize {
    let low = &frames as *const _ as usize;
    let high = stack_top();
    if high == 0 {
        return 0;
    }
    let mut fp = frame_pointer();
    let mut depth = 0;
    while depth < MAX_FRAMES && fp >= low && fp % std::mem::align_of::<usize>() == 0 {
        let Some(end) = fp.checked_add(2 * std::mem::size_of::<usize>()) else {
            break;
        };
        if end > high {
            break;
        }
        // SAFETY: `fp` is aligned and `[fp, fp + 16)` lies between this function's own frame
        // and the top of this thread's stack, memory that is mapped and readable for as long as
        // the thread runs.
        let (next, return_address) = unsafe {
            let slot = fp as *const usize;
            (slot.read(), slot.add(1).read())
        };
        if return_address == 0 {
            break;
        }
        frames[depth] = return_address;
        depth += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    depth
}

/// The top of the current thread's stack, looked up once per thread.
fn stack_top() -> usize {
    STACK_TOP
        .try_with(|top| {
            if top.get() == 0 {
                top.set(lookup_stack_top());
            }
            top.get()
        })
        .unwrap_or(0)
}

#[cfg(target_os = "linux")]
fn lookup_stack_top() -> usize {
    extern "C" {
        /// glibc: the initial stack pointer of the main thread, above all of its frames.
        static __libc_stack_end: *const libc::c_void;
    }
    // SAFETY: `getpid` and `gettid` have no preconditions.
    let main_thread = unsafe { libc::getpid() == libc::gettid() };
    if main_thread {
        // glibc's pthread_getattr_np would read /proc/self/maps for the main thread; the
        // loader's record of where the stack began needs no I/O.
        // SAFETY: glibc sets `__libc_stack_end` before `main` and never changes it.
        return unsafe { __libc_stack_end } as usize;
    }
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is read and destroyed
    // after; `pthread_self` is always valid for the calling thread.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return 0;
        }
        let mut base: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut base, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            base as usize + size
        } else {
            0
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lookup_stack_top() -> usize {
    0
}

/// In a forked child: the forking thread's cached bound is still its own stack's.
pub(crate) fn after_fork_in_child() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_needs_aligned_equal_chains() {
        // The walk's first frame (its call site) never matches and is skipped.
        assert!(chains_agree(&[9, 1, 2, 3], &[8, 1, 2, 3]));
        // The unwinder may go up to three frames further out, and end in a null frame.
        assert!(chains_agree(&[9, 1, 2, 3, 4, 5, 0], &[8, 1, 2, 3]));
        assert!(!chains_agree(&[9, 1, 2, 3, 4, 5, 6, 7], &[8, 1, 2, 3]));
        // A frame the walk skipped (code without frame pointers) is a disagreement.
        assert!(!chains_agree(&[9, 1, 7, 2, 3], &[8, 1, 2, 3]));
        assert!(!chains_agree(&[9, 1, 2], &[8]));
        assert!(!chains_agree(&[9, 1, 2], &[]));
    }

    #[test]
    fn frame_pointer_walk_stays_in_bounds_and_finds_frames() {
        let mut frames = [0usize; MAX_FRAMES];
        // Whatever the build, the walk returns without faulting; std keeps frame pointers, so
        // the test harness's frames are found at least.
        let depth = walk_frame_pointers(&mut frames);
        assert!(depth <= MAX_FRAMES);
        let threaded = std::thread::spawn(|| {
            let mut frames = [0usize; MAX_FRAMES];
            walk_frame_pointers(&mut frames)
        })
        .join()
        .unwrap();
        assert!(threaded <= MAX_FRAMES);
        assert!(stack_top() > &frames as *const _ as usize);
    }
}
