//! Stack capture for sampled allocations.
//!
//! Four modes, chosen by [`set_stack_capture`] (figures: `tools/sample_cost.rs`, a whole
//! sample, capture plus table insert and free, on this project's 2-vCPU VM):
//!
//! * **Unwinder**: unwinds by the DWARF-CFI tables, so it is correct for any code, frame
//!   pointers or not. The caching unwinder (`cached`, feature `cached-unwinder`: framehop over
//!   the loaded objects' in-memory `.eh_frame`, x86_64 Linux with glibc 2.35+) keeps the rule of
//!   every return address it met, and a chain is kept once libgcc's unwinder produced the same:
//!   ~380 ns a sample at 15 frames, ~700 ns at 40, ~13 ns a frame (built with frame pointers it
//!   measured ~1 µs at 15 frames, not yet explained; Auto walks frame pointers there). Where it
//!   cannot walk (a lock busy, a stack of unknown bounds, a frame it cannot read, another
//!   platform) the stack goes to libgcc's.
//! * **SystemUnwinder**: always libgcc's (`_Unwind_Backtrace`) through `backtrace`'s
//!   unsynchronized entry point. It interprets the unwind tables of every frame, every time:
//!   ~150 ns a frame, ~3 µs a sample at 15 frames, ~7 µs at 40.
//! * **Frame pointers**: follows the saved frame-pointer chain, a few nanoseconds a frame
//!   (~90 ns a sample, capture and the rest). Only right if the code on the stack keeps frame
//!   pointers: Rust's standard library does, your code does when built with
//!   `RUSTFLAGS="-C force-frame-pointers=yes"`. Never faults: see below.
//! * **Auto** (default): the first 16 samples captured on their thread's own stack are captured
//!   both ways (libgcc's unwinder and the frame-pointer walk). If the chains agree every time,
//!   heapwatch switches to frame pointers for good; at the first disagreement it settles on the
//!   Unwinder. So a program built with frame pointers gets the fast path, and any other
//!   program keeps correct stacks.
//!
//! The frame-pointer walk and libgcc's take no lock of ours and allocate nothing through the
//! global allocator. On glibc before 2.35, where libgcc's walks the loader's list under a lock
//! glibc does not reset in a forked child, its unwinds are fenced against fork (see `fence`). The caching unwinder takes its locks with `try_lock` only (busy: libgcc
//! unwinds the sample), allocates only when it meets an object for the first time (outside the
//! frame loop; measured and held out of the program's heap figures), and reads the stack with
//! the same bounds as the frame-pointer walk; see the docs of `cached`.
//!
//! # What the frame-pointer walk reads
//!
//! Only memory of the stack that the stack pointer lies in, from the stack pointer up to that
//! stack's top, and only in a stack whose bounds it knows:
//!
//! * the thread's own stack: for a thread started by `pthread_create`, the bounds glibc keeps
//!   for it (`pthread_getattr_np`); for the main thread, from glibc's `__libc_stack_end` down to
//!   the lowest page that `mincore` confirmed mapped without a gap (glibc itself would read
//!   `/proc/self/maps`);
//! * the signal stack (`sigaltstack`) while a handler runs on it: the handler's frames, up to
//!   the signal frame the kernel pushed;
//! * no other. On a coroutine's stack (`makecontext`), a `stacker` segment, or any stack of
//!   unknown bounds, nothing is walked: the sample is unwound instead (the unwinder follows unwind
//!   tables, not the frame-pointer register), and Auto does not count it (nor a walk of a signal
//!   stack, which ends at the handler) towards its verification.
//!
//! Every frame address is checked against those bounds before it is read, so a frame-pointer
//! register holding anything at all (code built without frame pointers uses it as one more
//! register) ends the walk early instead of faulting. The bounds stay right in a child forked by
//! any thread (see below). What the walk does assume is what a program running
//! on a stack assumes anyway: that the stack's memory between the stack pointer and its top stays
//! mapped and readable (no `munmap` or `mprotect` of a stack in use, no `sigaltstack` size beyond
//! the memory given), and that nothing is mapped at a fixed address right below the main thread's
//! stack (Linux keeps a gap there for any other mapping). `tests/hostile_stack.rs` attacks each
//! case with a frame pointer aimed at an unreadable page.
//!
//! **In a forked child** nothing needs resetting, so the fork handlers have nothing to call here.
//! The child's memory is a copy of the parent's at the same addresses: the forking thread's
//! cached bounds (its own stack, copied), the main thread's stack as confirmed so far and the
//! main thread's identity (a `pthread_t`, which is an address) are as true in the child as they
//! were in the parent. And nothing takes "thread id equals process id" to mean "main thread",
//! which a child forked by another thread breaks: that thread leads the child but runs on its
//! own stack. It is told apart from the main thread by the main thread's recorded identity, or,
//! if the main thread was never seen on its stack, its stack counts as unknown (its samples are
//! unwound).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Deepest stack kept per sample; deeper stacks keep their 64 innermost frames.
pub const MAX_FRAMES: usize = 64;

/// How sampled allocations capture their stacks. See the module docs of `stack` for costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackCapture {
    /// Verify frame pointers on the first samples; use them if they agree with the unwinder,
    /// else settle on [`StackCapture::Unwinder`].
    Auto,
    /// Unwind by the DWARF-CFI tables: correct for any build. The caching unwinder (feature
    /// `cached-unwinder`, x86_64 Linux with glibc 2.35+), ~13 ns a frame once a stack's chain
    /// was confirmed by libgcc's; libgcc's wherever it cannot.
    Unwinder,
    /// Always libgcc's unwinder (`_Unwind_Backtrace`): correct for any build, about 80 ns a
    /// frame. For comparison, or to rule the caching unwinder out.
    SystemUnwinder,
    /// Follow frame pointers: fast, right only for code built with frame pointers. Samples
    /// taken on a stack of unknown bounds (a coroutine, a stack segment) are unwound.
    FramePointers,
}

const MODE_AUTO: u8 = 0;
const MODE_UNWINDER: u8 = 1;
const MODE_FRAME_POINTERS: u8 = 2;
const MODE_SYSTEM_UNWINDER: u8 = 3;

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
        StackCapture::SystemUnwinder => MODE_SYSTEM_UNWINDER,
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
        MODE_SYSTEM_UNWINDER => StackCapture::SystemUnwinder,
        _ => StackCapture::Unwinder,
    }
}

/// Writes the return addresses of the current stack, innermost first, into `frames`; returns
/// how many were written.
#[inline(never)]
pub(crate) fn capture(frames: &mut [usize; MAX_FRAMES]) -> usize {
    match MODE.load(Ordering::Relaxed) {
        MODE_FRAME_POINTERS => match walk_frame_pointers(frames) {
            Walk::OwnStack(depth) | Walk::SignalStack(depth) => depth,
            Walk::Skipped => unwind(frames),
        },
        MODE_UNWINDER => unwind_cached(frames),
        MODE_SYSTEM_UNWINDER => unwind(frames),
        _ => capture_verifying(frames),
    }
}

/// The caching unwinder, or libgcc's where it gives up.
#[inline(never)]
fn unwind_cached(frames: &mut [usize; MAX_FRAMES]) -> usize {
    count_unwinder_sample(|(samples, libgcc)| (samples + 1, libgcc));
    match cached::unwind(frames, HOST) {
        Some(depth) => depth,
        None => unwind_counted(frames),
    }
}

/// What the caching unwinder takes from here: the stack bounds and libgcc's unwinder.
const HOST: cached::Host = cached::Host {
    own_stack_top: |sp| match stack_containing(sp) {
        Some(Stack::Own { top }) => Some(top),
        _ => None,
    },
    libgcc: unwind_counted,
};

thread_local! {
    /// This thread's samples taken by the caching unwinder's path, and how many of them libgcc
    /// unwound (the cached walk gave up, or its chain was being confirmed). Const-initialised,
    /// no destructor, touched only on the sampled path: a test's measure, not a cost.
    static UNWINDER_SAMPLES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn count_unwinder_sample(count: impl FnOnce((u64, u64)) -> (u64, u64)) {
    let _ = UNWINDER_SAMPLES.try_with(|cell| cell.set(count(cell.get())));
}

/// libgcc's unwinder on the caching unwinder's behalf, counted.
fn unwind_counted(frames: &mut [usize]) -> usize {
    count_unwinder_sample(|(samples, libgcc)| (samples, libgcc + 1));
    unwind(frames)
}

/// This thread's samples taken by the caching unwinder ([`StackCapture::Unwinder`]) so far,
/// and how many of them libgcc's unwinder unwound (the cached walk gave up, or confirmed a
/// chain it had not seen): test support, not API. After warm-up, nearly none should be.
#[doc(hidden)]
pub fn __unwinder_samples_here() -> (u64, u64) {
    UNWINDER_SAMPLES.try_with(Cell::get).unwrap_or((0, 0))
}

#[doc(hidden)]
pub use cached::Comparison;

/// Unwinds the caller's stack with the caching unwinder and with libgcc's and compares the
/// chains, bypassing the chains already confirmed: test support, not API.
#[doc(hidden)]
#[inline(never)]
pub fn __compare_unwinders() -> Comparison {
    // The walk may add objects, allocating: not sampled, as on the sampled path.
    let Some(_guard) = crate::thread_state::ProfilerGuard::enter() else {
        return Comparison::NotWalked;
    };
    // libgcc's unwinds here are no samples: not counted.
    cached::compare_here(cached::Host {
        libgcc: unwind,
        ..HOST
    })
}

/// Chains on which the caching unwinder and libgcc's disagreed since start (libgcc's was
/// kept each time): test support, not API.
#[doc(hidden)]
pub fn __unwinder_disagreements() -> u64 {
    cached::disagreements()
}

#[cfg(all(
    feature = "cached-unwinder",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
))]
mod cached;

/// Without the caching unwinder every stack goes to libgcc's.
#[cfg(not(all(
    feature = "cached-unwinder",
    target_os = "linux",
    target_env = "gnu",
    target_arch = "x86_64"
)))]
mod cached {
    /// As the caching unwinder's; nothing reads it here.
    #[allow(dead_code)]
    #[derive(Clone, Copy)]
    pub(super) struct Host {
        pub(super) own_stack_top: fn(usize) -> Option<usize>,
        pub(super) libgcc: fn(&mut [usize]) -> usize,
    }

    /// As the caching unwinder's: here only ever `NotWalked`.
    #[derive(Debug)]
    pub enum Comparison {
        /// Both unwound; the chains agree over this many frames.
        Agree(usize),
        /// Both unwound and disagree.
        Disagree {
            /// The cached walk.
            cached: Vec<usize>,
            /// libgcc's.
            libgcc: Vec<usize>,
        },
        /// The caching unwinder is not built: libgcc unwinds every stack.
        NotWalked,
    }

    pub(super) fn unwind(_frames: &mut [usize], _host: Host) -> Option<usize> {
        None
    }
    pub(super) fn compare_here(_host: Host) -> Comparison {
        Comparison::NotWalked
    }
    pub(super) fn disagreements() -> u64 {
        0
    }
}

/// Auto mode: unwind, and compare with the frame-pointer walk.
#[cold]
fn capture_verifying(frames: &mut [usize; MAX_FRAMES]) -> usize {
    // Met by a fork's fence: no stack, and no vote.
    let Some(depth) = unwind_fenced(frames) else {
        return 0;
    };
    if !frame_pointers_supported() {
        MODE.store(MODE_UNWINDER, Ordering::Relaxed);
        return depth;
    }
    let mut walked = [0usize; MAX_FRAMES];
    // Only a walk of the thread's own stack tells whether the program keeps frame pointers: one
    // of a signal stack stops at the handler where the unwinder goes on, and elsewhere there was
    // no walk at all.
    let Walk::OwnStack(walked_depth) = walk_frame_pointers(&mut walked) else {
        return depth;
    };
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

/// libgcc's walk from here into `frames`, innermost first; the depth reached; no stack (0
/// frames) for a sample met by a fork being prepared, where its unwinds are fenced (see
/// `fence`). Takes no lock and allocates nothing once [`prepare_unwinds`] has run, so the CPU
/// sampler calls it from its signal handler too.
pub(crate) fn unwind(frames: &mut [usize]) -> usize {
    unwind_fenced(frames).unwrap_or(0)
}

/// libgcc's unwinder, fenced against fork where it walks the loader's list; `None`: a fork is
/// being prepared there, and nothing was unwound.
fn unwind_fenced(frames: &mut [usize]) -> Option<usize> {
    if !fence::needed() {
        return Some(unwind_unfenced(frames));
    }
    let _in_flight = fence::enter()?;
    Some(unwind_unfenced(frames))
}

mod fence;

/// Decides now whether unwinds are fenced (reading glibc's version allocates): before code
/// that must not allocate, such as a signal handler, first unwinds.
#[cfg(feature = "cpu")]
pub(crate) fn prepare_unwinds() {
    fence::needed();
}

/// Fences libgcc's unwinds of samples against fork (`true`) as on glibc before 2.35, or not,
/// whatever this glibc: test support, not API.
#[doc(hidden)]
pub fn __fence_libgcc_unwinds(fenced: bool) {
    fence::force(fenced);
}

fn unwind_unfenced(frames: &mut [usize]) -> usize {
    let mut depth = 0;
    // SAFETY: `trace_unsynchronized` is unsafe only because it skips backtrace's global lock,
    // which guards unwinders that are not thread-safe; the Linux/glibc `_Unwind_Backtrace` is
    // thread-safe. The callback only writes within `frames` and never panics (the bound check
    // stops the walk first).
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if depth >= frames.len() {
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
        target_env = "gnu",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))
}

/// What a frame-pointer walk did.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Walked the thread's own stack; this many frames.
    OwnStack(usize),
    /// Walked the signal stack a handler runs on, up to the handler's frame; this many frames.
    SignalStack(usize),
    /// The stack pointer lies in a stack of unknown bounds: nothing was read.
    Skipped,
}

/// Follows saved frame pointers within the stack the stack pointer lies in. Each frame is
/// `[saved fp, return address]` at the address in the frame-pointer register.
#[inline(never)]
fn walk_frame_pointers(frames: &mut [usize; MAX_FRAMES]) -> Walk {
    let sp = bounds::stack_pointer();
    let fp = bounds::frame_pointer();
    match stack_containing(sp) {
        Some(Stack::Own { top }) => {
            // SAFETY: `[sp, top)` is the part in use of the stack the stack pointer lies in,
            // mapped and readable while this thread runs on it (see `stack_containing`).
            Walk::OwnStack(unsafe { walk_within(frames, fp, sp, top) })
        }
        Some(Stack::Signal { top }) => {
            // SAFETY: as above, for the signal stack this handler runs on.
            Walk::SignalStack(unsafe { walk_within(frames, fp, sp, top) })
        }
        None => Walk::Skipped,
    }
}

/// Follows the frame-pointer chain from `fp` while every frame lies in `[low, high)` and the
/// chain rises strictly; returns the frames written.
///
/// # Safety
///
/// Every address in `[low, high)` must be readable.
unsafe fn walk_within(
    frames: &mut [usize; MAX_FRAMES],
    mut fp: usize,
    low: usize,
    high: usize,
) -> usize {
    let mut depth = 0;
    while depth < MAX_FRAMES && fp >= low && fp.is_multiple_of(std::mem::align_of::<usize>()) {
        let Some(end) = fp.checked_add(2 * std::mem::size_of::<usize>()) else {
            break;
        };
        if end > high {
            break;
        }
        // SAFETY: `fp` is aligned and `[fp, fp + 16)` lies in `[low, high)`, readable by the
        // caller's contract.
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

/// The stack a stack pointer lies in, by its top: the walk reads from the stack pointer up to
/// there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    /// The thread's own stack (for the main thread, the part confirmed mapped).
    Own { top: usize },
    /// The signal stack a handler runs on.
    Signal { top: usize },
}

/// An address range `[low, high)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    low: usize,
    high: usize,
}

impl Range {
    /// Not looked up yet.
    const UNKNOWN: Range = Range { low: 0, high: 0 };

    fn contains(self, address: usize) -> bool {
        self.low <= address && address < self.high
    }
}

thread_local! {
    /// This thread's own stack; `UNKNOWN` until looked up. Const-initialised, no destructor:
    /// usable on every path of the thread, to its very end.
    static OWN_STACK: Cell<Range> = const { Cell::new(Range::UNKNOWN) };
}

/// Finds the stack `sp` lies in, if its bounds are known. The common case (the thread's own
/// stack, already looked up) is one thread-local load and a comparison; the rest runs once per
/// thread, or when a sample is taken off the thread's stack (a syscall or two, then).
fn stack_containing(sp: usize) -> Option<Stack> {
    let own = OWN_STACK.try_with(Cell::get).unwrap_or(Range::UNKNOWN);
    if own.contains(sp) {
        return Some(Stack::Own { top: own.high });
    }
    if let Some(main) = bounds::main_stack_containing(sp) {
        if own == Range::UNKNOWN {
            bounds::adopt_main_stack(main);
        }
        return Some(Stack::Own { top: main.high });
    }
    // Before looking up the thread's own stack: in a signal handler, `pthread_getattr_np`
    // (which takes the thread's lock and calls `malloc`) is better not called.
    if let Some(signal) = bounds::signal_stack().filter(|s| s.contains(sp)) {
        return Some(Stack::Signal { top: signal.high });
    }
    if own == Range::UNKNOWN {
        let own = bounds::lookup_own_stack()?;
        let _ = OWN_STACK.try_with(|cell| cell.set(own));
        if own.contains(sp) {
            return Some(Stack::Own { top: own.high });
        }
    }
    None
}

/// Where stacks are, from glibc and the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod bounds {
    use super::{Range, OWN_STACK};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[inline(always)]
    pub(super) fn stack_pointer() -> usize {
        let sp: usize;
        // SAFETY: reads the stack-pointer register into a local; no memory is touched and no
        // flags or other registers change.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            sp = 0;
        }
        sp
    }

    #[inline(always)]
    pub(super) fn frame_pointer() -> usize {
        let fp: usize;
        // SAFETY: reads the frame-pointer register into a local; no memory is touched and no
        // flags or other registers change.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            fp = 0;
        }
        fp
    }

    /// `__libc_stack_end`: the top of the main thread's stack (its frames all lie below); 0 until
    /// read.
    static MAIN_STACK_TOP: AtomicUsize = AtomicUsize::new(0);
    /// The lowest address the main thread's stack may reach: its top less the stack size limit
    /// as first read (`RLIMIT_STACK`). Only a filter, so that samples on other stacks rarely pay
    /// for a `mincore`: the confirmation below is what makes a walk safe.
    static MAIN_STACK_FLOOR: AtomicUsize = AtomicUsize::new(0);
    static PAGE_BYTES: AtomicUsize = AtomicUsize::new(0);
    /// The lowest page such that every page from it to the main thread's stack top is confirmed
    /// mapped; `usize::MAX` until the first confirmation. Only ever lowered: Linux never shrinks
    /// a stack.
    static MAIN_STACK_MAPPED_LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
    /// The main thread's `pthread_self()`, recorded the first time it is seen on the main
    /// stack; 0 until then. Tells the main thread apart from the leader of a child forked by
    /// another thread.
    static MAIN_THREAD: AtomicUsize = AtomicUsize::new(0);

    struct MainStackLimits {
        top: usize,
        floor: usize,
        page_bytes: usize,
    }

    fn main_stack_limits() -> Option<MainStackLimits> {
        let top = MAIN_STACK_TOP.load(Ordering::Acquire);
        if top != 0 {
            return Some(MainStackLimits {
                top,
                floor: MAIN_STACK_FLOOR.load(Ordering::Relaxed),
                page_bytes: PAGE_BYTES.load(Ordering::Relaxed),
            });
        }
        extern "C" {
            /// glibc: the initial stack pointer of the main thread, above all of its frames.
            static __libc_stack_end: *const libc::c_void;
        }
        // SAFETY: glibc sets `__libc_stack_end` before any code of the program runs and never
        // changes it.
        let top = unsafe { __libc_stack_end } as usize;
        // SAFETY: `sysconf` has no preconditions.
        let page_bytes = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid out-pointer.
        let limit_bytes = if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0 {
            usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        if top == 0 || !page_bytes.is_power_of_two() {
            return None;
        }
        let floor = top.saturating_sub(limit_bytes);
        MAIN_STACK_FLOOR.store(floor, Ordering::Relaxed);
        PAGE_BYTES.store(page_bytes, Ordering::Relaxed);
        MAIN_STACK_TOP.store(top, Ordering::Release);
        Some(MainStackLimits {
            top,
            floor,
            page_bytes,
        })
    }

    /// The main thread's stack, from `sp` to its top, if `sp` lies in it: every page between is
    /// confirmed mapped, and Linux keeps a gap below a stack that grows down, so memory mapped
    /// without a gap up to the stack is the stack (a coroutine's stack or a thread's lies beyond
    /// the gap, and fails).
    pub(super) fn main_stack_containing(sp: usize) -> Option<Range> {
        let limits = main_stack_limits()?;
        if sp >= limits.top || sp < limits.floor {
            return None;
        }
        let mapped_low = MAIN_STACK_MAPPED_LOW.load(Ordering::Relaxed);
        if sp >= mapped_low {
            return Some(Range {
                low: mapped_low,
                high: limits.top,
            });
        }
        // Deeper than confirmed so far (or the first time): confirm the pages in between.
        let from = sp & !(limits.page_bytes - 1);
        let to = mapped_low.min(limits.top.next_multiple_of(limits.page_bytes));
        if !pages_mapped(from, to, limits.page_bytes) {
            return None;
        }
        MAIN_STACK_MAPPED_LOW.fetch_min(from, Ordering::Relaxed);
        Some(Range {
            low: from,
            high: limits.top,
        })
    }

    /// Whether every page of `[from, to)` (page-aligned) is mapped. `mincore` fails with ENOMEM
    /// on a range holding an unmapped page, and wants one byte of output per page: 256 pages a
    /// call, from `to` down, so that memory which is not the stack fails at the first call.
    pub(super) fn pages_mapped(from: usize, to: usize, page_bytes: usize) -> bool {
        const PAGES_PER_CALL: usize = 256;
        let mut residency = [0u8; PAGES_PER_CALL];
        let mut end = to;
        while end > from {
            let start = end.saturating_sub(PAGES_PER_CALL * page_bytes).max(from);
            // SAFETY: `start` is page-aligned and `residency` has room for the at most 256
            // pages asked; `mincore` reads none of the memory it is asked about.
            let failed = unsafe {
                libc::mincore(
                    start as *mut libc::c_void,
                    end - start,
                    residency.as_mut_ptr(),
                )
            } != 0;
            if failed {
                return false;
            }
            end = start;
        }
        true
    }

    /// The first walk of a thread on the main stack: if it leads the process, it is the main
    /// thread (a thread leading a child forked by another thread runs on that thread's stack).
    pub(super) fn adopt_main_stack(main: Range) {
        if !is_process_leader() {
            return;
        }
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let _ = MAIN_THREAD.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed);
        let _ = OWN_STACK.try_with(|own| own.set(main));
    }

    fn is_process_leader() -> bool {
        // SAFETY: `gettid` and `getpid` have no preconditions.
        unsafe { libc::gettid() == libc::getpid() }
    }

    /// The signal stack of this thread, if it has one.
    pub(super) fn signal_stack() -> Option<Range> {
        // SAFETY: `stack_t` is plain data; a null new stack makes `sigaltstack` only report the
        // current one into `current`.
        let current = unsafe {
            let mut current: libc::stack_t = std::mem::zeroed();
            if libc::sigaltstack(std::ptr::null(), &mut current) != 0 {
                return None;
            }
            current
        };
        if current.ss_flags & libc::SS_DISABLE != 0 {
            return None;
        }
        let low = current.ss_sp as usize;
        Some(Range {
            low,
            high: low.checked_add(current.ss_size)?,
        })
    }

    /// This thread's own stack from glibc, unless it is (or may be) the main thread: for that,
    /// `pthread_getattr_np` reads `/proc/self/maps`, I/O that has no place here; its stack is
    /// found on the stack instead ([`main_stack_containing`]). `None` means "ask again later".
    pub(super) fn lookup_own_stack() -> Option<Range> {
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let main = MAIN_THREAD.load(Ordering::Relaxed);
        // The leader is the main thread or, in a child forked by another thread, that thread;
        // without the main thread's identity the two look alike.
        let not_main = (main != 0 && main != me) || !is_process_leader();
        if !not_main {
            return None;
        }
        // SAFETY: `attributes` is initialised by `pthread_getattr_np` before it is read and
        // destroyed after; `pthread_self` is always valid for the calling thread.
        unsafe {
            let mut attributes: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attributes) != 0 {
                return None;
            }
            let mut base: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let ok = libc::pthread_attr_getstack(&attributes, &mut base, &mut size) == 0;
            libc::pthread_attr_destroy(&mut attributes);
            let low = base as usize;
            ok.then_some(Range {
                low,
                high: low.checked_add(size)?,
            })
        }
    }
}

/// Elsewhere the walk is never used (see `frame_pointers_supported`); no stack is known.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod bounds {
    use super::Range;

    pub(super) fn stack_pointer() -> usize {
        0
    }
    pub(super) fn frame_pointer() -> usize {
        0
    }
    pub(super) fn main_stack_containing(_sp: usize) -> Option<Range> {
        None
    }
    pub(super) fn adopt_main_stack(_main: Range) {}
    pub(super) fn signal_stack() -> Option<Range> {
        None
    }
    pub(super) fn lookup_own_stack() -> Option<Range> {
        None
    }
}

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
    fn walk_ends_at_the_first_frame_outside_its_range() {
        // A stack of four frames, two words each: [saved fp, return address]. Written through
        // one raw pointer, as the walk reads it.
        let mut stack = [0usize; 8];
        let slots = stack.as_mut_ptr();
        let at = |i: usize| slots as usize + i * std::mem::size_of::<usize>();
        // SAFETY: `i < 8`, within `stack`.
        let set = |i: usize, value: usize| unsafe { slots.add(i).write(value) };
        let (f0, f1, f2, f3) = (at(0), at(2), at(4), at(6));
        for (i, value) in [f1, 100, f2, 101, f3, 102, usize::MAX - 8, 103]
            .into_iter()
            .enumerate()
        {
            set(i, value);
        }
        let mut frames = [0usize; MAX_FRAMES];
        // The outermost frame's saved fp points far outside: the walk ends there, unread.
        // SAFETY: `[at(0), at(8))` is `stack`, and so is every sub-range below.
        let depth = unsafe { walk_within(&mut frames, f0, f0, at(8)) };
        assert_eq!(&frames[..depth], &[100, 101, 102, 103]);
        // A top that cuts the third frame in half: two frames.
        // SAFETY: as above.
        let depth = unsafe { walk_within(&mut frames, f0, f0, at(5)) };
        assert_eq!(&frames[..depth], &[100, 101]);
        // Misaligned, or below the range: nothing.
        // SAFETY: as above.
        assert_eq!(unsafe { walk_within(&mut frames, f0 + 1, f0, at(8)) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { walk_within(&mut frames, f0, f1, at(8)) }, 0);
        // A chain that turns down: it stops there.
        set(2, f0);
        // SAFETY: as above.
        let depth = unsafe { walk_within(&mut frames, f0, f0, at(8)) };
        assert_eq!(&frames[..depth], &[100, 101]);
    }

    #[test]
    fn walks_start_on_the_threads_own_stack_and_find_frames() {
        fn check() {
            let mut frames = [0usize; MAX_FRAMES];
            match walk_frame_pointers(&mut frames) {
                Walk::OwnStack(depth) => assert!(depth <= MAX_FRAMES),
                other if frame_pointers_supported() => panic!("walk on the own stack: {other:?}"),
                _ => {}
            }
        }
        // Whatever the build, the walk returns without faulting, on the test thread and on a
        // thread of its own.
        check();
        std::thread::spawn(check).join().unwrap();
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn pages_with_a_hole_are_not_all_mapped() {
        // SAFETY: a fresh anonymous mapping of three pages, whose middle page is unmapped, and
        // the rest after.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let base = libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let base = base as usize;
            assert!(bounds::pages_mapped(base, base + 3 * page, page));
            assert_eq!(libc::munmap((base + page) as *mut libc::c_void, page), 0);
            assert!(!bounds::pages_mapped(base, base + 3 * page, page));
            assert!(bounds::pages_mapped(base + 2 * page, base + 3 * page, page));
            assert!(bounds::pages_mapped(base, base + page, page));
            libc::munmap(base as *mut libc::c_void, page);
            libc::munmap((base + 2 * page) as *mut libc::c_void, page);
        }
    }
}
