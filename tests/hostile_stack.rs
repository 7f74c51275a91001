//! The frame-pointer walk never faults, whatever stack it is called on and whatever the
//! frame-pointer register holds: a `makecontext` coroutine, a `stacker` segment, a signal
//! handler on a `sigaltstack`, and a child forked by a thread that is not the main thread. Each
//! attack runs in every capture mode, in a child process of its own (a fault kills the child, not
//! the test runner), at a sample rate of one byte so that every allocation captures its stack.
//!
//! The attack: a frame whose caller left the frame-pointer register pointing at an unreadable
//! page, as code built without frame pointers may leave it (the register is then just another
//! register). The page lies above the frame, below the top of the thread's stack (or, in the
//! forked child, above it), where a walk bounded only by the thread's stack top would read it.
//!
//! A second attack: a frame whose return-address slot holds the address of an unreadable page.
//! The caching unwinder checks every return address against the loaded objects before it looks
//! anything up, and ends its walk there; the frame-pointer walk never reads code. libgcc's
//! unwinder reads the code at such an address (looking for a signal trampoline) and faults, so
//! neither it nor Auto (which verifies with it) is attacked that way.
//!
//! Where stacks are captured, they must also be right: the allocating function is named.

#![cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]

use heapwatch::StackCapture;
use std::ffi::c_void;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Set in a child process to the capture mode it attacks (`Auto`, `Unwinder`, `FramePointers`).
const MODE_ENV: &str = "HEAPWATCH_HOSTILE_STACK_MODE";
const MODES: [StackCapture; 4] = [
    StackCapture::Auto,
    StackCapture::Unwinder,
    StackCapture::SystemUnwinder,
    StackCapture::FramePointers,
];

// `hostile_call_with_frame_pointer(frame_pointer, function, argument)`: calls
// `function(argument)` with the frame-pointer register set to `frame_pointer`, as a caller built
// without frame pointers may leave it. Its unwind information is exact, so the unwinder passes
// through it; the frame-pointer chain through it is broken on purpose.
std::arch::global_asm!(
    ".globl hostile_call_with_frame_pointer",
    ".type hostile_call_with_frame_pointer, @function",
    "hostile_call_with_frame_pointer:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset rbp, 0",
    "mov rbp, rdi",
    "mov rdi, rdx",
    "call rsi",
    "pop rbp",
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbp",
    "ret",
    ".cfi_endproc",
    ".size hostile_call_with_frame_pointer, . - hostile_call_with_frame_pointer",
);

// `hostile_call_with_return_address(return_address, function, argument)`: calls
// `function(argument)` while its own return-address slot holds `return_address` (restored
// before it returns), as a stack overwritten by a bug may hold. Its unwind information is
// exact, so every unwinder reads that slot and must stop there without following it.
std::arch::global_asm!(
    ".globl hostile_call_with_return_address",
    ".type hostile_call_with_return_address, @function",
    "hostile_call_with_return_address:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset rbp, 0",
    "mov rbp, [rsp + 8]",
    "mov [rsp + 8], rdi",
    "mov rdi, rdx",
    "call rsi",
    "mov [rsp + 8], rbp",
    "pop rbp",
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbp",
    "ret",
    ".cfi_endproc",
    ".size hostile_call_with_return_address, . - hostile_call_with_return_address",
);

extern "C" {
    fn hostile_call_with_return_address(
        return_address: usize,
        function: extern "C" fn(*mut c_void),
        argument: *mut c_void,
    );
    fn hostile_call_with_frame_pointer(
        frame_pointer: usize,
        function: extern "C" fn(*mut c_void),
        argument: *mut c_void,
    );
}

/// The function every attacked sample must name.
const ALLOCATING_FUNCTION: &str = "allocate_under_hostile_frame_pointer";

/// Allocates (and keeps) a block: the sampled allocation whose stack is captured under attack.
#[inline(never)]
extern "C" fn allocate_under_hostile_frame_pointer(_: *mut c_void) {
    std::mem::forget(std::hint::black_box(vec![7u8; 1000]));
}

/// The unreadable address the hostile frame pointer holds, for the coroutine entry and the
/// signal handler (which take no argument of ours).
static HOSTILE_FRAME_POINTER: AtomicUsize = AtomicUsize::new(0);

fn allocate_with_frame_pointer(frame_pointer: usize) {
    // SAFETY: the assembly above saves and restores rbp and keeps the stack aligned; the
    // callee is an `extern "C" fn(*mut c_void)` that ignores its argument.
    unsafe {
        hostile_call_with_frame_pointer(
            frame_pointer,
            allocate_under_hostile_frame_pointer,
            std::ptr::null_mut(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The attacks.

#[test]
fn coroutine_with_garbage_frame_pointer() {
    let Some(mode) = child_mode() else {
        return in_child_processes("coroutine_with_garbage_frame_pointer");
    };
    let frame_pointers = build_keeps_frame_pointers();
    heapwatch::set_stack_capture(mode);
    heapwatch::set_sample_rate(1);
    run_on_placed_thread(|memory| {
        HOSTILE_FRAME_POINTER.store(memory.poison_below_thread_stack, Ordering::Relaxed);
        run_coroutine(memory.foreign_stack);
    });
    // The walk never runs on a coroutine: the unwinder names the function in every mode.
    assert_named(mode, true);
    assert_auto_settles(mode, frame_pointers);
    child_passed("coroutine_with_garbage_frame_pointer", mode);
}

#[test]
fn stacker_segment_with_garbage_frame_pointer() {
    let Some(mode) = child_mode() else {
        return in_child_processes("stacker_segment_with_garbage_frame_pointer");
    };
    let frame_pointers = build_keeps_frame_pointers();
    heapwatch::set_stack_capture(mode);
    heapwatch::set_sample_rate(1);
    run_on_placed_thread(|memory| {
        // Larger than the thread's whole mapping: the kernel places mappings top-down in the
        // highest gap that fits, and none above the thread's mapping fitted that, so the segment
        // lies below the thread's stack and the poisoned page between them.
        stacker::grow(4 << 20, || {
            allocate_with_frame_pointer(memory.poison_below_thread_stack)
        });
    });
    assert_named(mode, true);
    assert_auto_settles(mode, frame_pointers);
    child_passed("stacker_segment_with_garbage_frame_pointer", mode);
}

#[test]
fn signal_handler_on_alternate_stack_with_garbage_frame_pointer() {
    let Some(mode) = child_mode() else {
        return in_child_processes("signal_handler_on_alternate_stack_with_garbage_frame_pointer");
    };
    let frame_pointers = build_keeps_frame_pointers();
    heapwatch::set_stack_capture(mode);
    heapwatch::set_sample_rate(1);
    install_allocating_handler(libc::SIGUSR2);
    run_on_placed_thread(|memory| {
        HOSTILE_FRAME_POINTER.store(memory.poison_below_thread_stack, Ordering::Relaxed);
        let (low, high) = memory.foreign_stack;
        let alternate = libc::stack_t {
            ss_sp: low as *mut c_void,
            ss_flags: 0,
            ss_size: high - low,
        };
        let disabled = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: the alternate stack is memory of ours that outlives its use (it is disabled
        // again below, before the memory goes). The signal is raised synchronously on this
        // thread at a point where it is in no allocator, so the handler may allocate.
        unsafe {
            assert_eq!(libc::sigaltstack(&alternate, std::ptr::null_mut()), 0);
            assert_eq!(libc::raise(libc::SIGUSR2), 0);
            assert_eq!(libc::sigaltstack(&disabled, std::ptr::null_mut()), 0);
        }
    });
    // The walk runs on the signal stack, up to the handler's frame: right only in a build with
    // frame pointers.
    assert_named(mode, frame_pointers || mode != StackCapture::FramePointers);
    assert_auto_settles(mode, frame_pointers);
    child_passed(
        "signal_handler_on_alternate_stack_with_garbage_frame_pointer",
        mode,
    );
}

#[test]
fn child_forked_by_a_thread_that_is_not_main() {
    let Some(mode) = child_mode() else {
        return in_child_processes("child_forked_by_a_thread_that_is_not_main");
    };
    let frame_pointers = build_keeps_frame_pointers();
    heapwatch::set_stack_capture(mode);
    heapwatch::set_sample_rate(1);
    run_on_placed_thread(|memory| {
        // First before this thread captured any stack (nothing of it cached), then after.
        for round in ["before this thread's first capture", "after it"] {
            if round != "before this thread's first capture" {
                std::hint::black_box(vec![1u8; 100]);
            }
            // SAFETY: the child only allocates, captures and exits with `_exit`; no other
            // thread of this process is inside heapwatch or holds a lock the child needs (the
            // test runner's threads wait for this one).
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                // The page above this thread's stack: below the main thread's stack, where the
                // walk went when it took this process's only thread for the main thread.
                allocate_with_frame_pointer(memory.poison_above_thread_stack);
                // A walk of this thread's stack names it only in a build with frame pointers.
                let expect_named = frame_pointers || mode != StackCapture::FramePointers;
                let named = !expect_named || sample_named();
                // SAFETY: ends the forked child at once, running nothing of the parent's.
                unsafe { libc::_exit(if named { 0 } else { 3 }) };
            }
            let mut status = 0;
            // SAFETY: `pid` is our child; `status` is a valid out-pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "forked child ({round}): {}",
                describe(std::process::ExitStatus::from_raw(status))
            );
        }
    });
    assert_auto_settles(mode, frame_pointers);
    child_passed("child_forked_by_a_thread_that_is_not_main", mode);
}

#[test]
fn return_address_slot_pointing_at_an_unreadable_page() {
    let Some(mode) = child_mode() else {
        // Not libgcc's unwinder (nor Auto, which verifies with it): with no unwind table for
        // the planted address, it reads the code there, looking for a signal trampoline, and
        // faults. The caching unwinder ends its walk there; the frame-pointer walk never reads
        // code.
        return in_child_processes_for(
            "return_address_slot_pointing_at_an_unreadable_page",
            &[StackCapture::Unwinder, StackCapture::FramePointers],
        );
    };
    let frame_pointers = build_keeps_frame_pointers();
    heapwatch::set_stack_capture(mode);
    heapwatch::set_sample_rate(1);
    run_on_placed_thread(|memory| {
        for _ in 0..4 {
            // SAFETY: the assembly above restores the slot and rbp before returning and keeps
            // the stack aligned; the callee is an `extern "C" fn(*mut c_void)` that ignores its
            // argument.
            unsafe {
                hostile_call_with_return_address(
                    memory.poison_below_thread_stack,
                    allocate_under_hostile_frame_pointer,
                    std::ptr::null_mut(),
                )
            }
        }
    });
    // Every unwinder stops at the planted address (not code: nothing to unwind there); the
    // frames inside it are right. The frame-pointer walk names them only in a build with frame
    // pointers.
    assert_named(mode, frame_pointers || mode != StackCapture::FramePointers);
    assert_auto_settles(mode, frame_pointers);
    child_passed("return_address_slot_pointing_at_an_unreadable_page", mode);
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// In a child process: the mode to attack. `None` in the test runner itself.
fn child_mode() -> Option<StackCapture> {
    let mode = std::env::var(MODE_ENV).ok()?;
    MODES.into_iter().find(|m| format!("{m:?}") == mode)
}

/// Runs the test `test` again in a child process per capture mode; each must exit 0 after
/// saying it ran (a fault kills the child: the test fails, the runner lives).
fn in_child_processes(test: &str) {
    in_child_processes_for(test, &MODES);
}

/// [`in_child_processes`] for some modes only.
fn in_child_processes_for(test: &str, modes: &[StackCapture]) {
    for &mode in modes {
        let output = Command::new(std::env::current_exe().expect("the test binary"))
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(MODE_ENV, format!("{mode:?}"))
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{test} in {mode:?} mode: the child {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            describe(output.status)
        );
        assert!(
            stdout.contains(&passed_line(test, mode)),
            "{test} in {mode:?} mode: the child ran no attack\n--- stdout\n{stdout}"
        );
    }
}

fn passed_line(test: &str, mode: StackCapture) -> String {
    format!("hostile stack: {test} passed in {mode:?} mode")
}

fn child_passed(test: &str, mode: StackCapture) {
    println!("{}", passed_line(test, mode));
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal} (11 is SIGSEGV)"),
        _ => format!("ended: {status}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Whether this build keeps frame pointers, as Auto capture finds out on ordinary stacks;
/// checked against `HEAPWATCH_EXPECT_FRAME_POINTERS` (1 or 0) where `scripts/test.sh` sets it,
/// so that the checks of walked stacks cannot be skipped by mistake.
fn build_keeps_frame_pointers() -> bool {
    heapwatch::set_stack_capture(StackCapture::Auto);
    heapwatch::set_sample_rate(1);
    allocate_on_own_stack();
    let settled = heapwatch::stack_capture();
    assert_ne!(settled, StackCapture::Auto, "Auto still verifying");
    let frame_pointers = settled == StackCapture::FramePointers;
    println!("hostile stack: the build keeps frame pointers: {frame_pointers}");
    match std::env::var("HEAPWATCH_EXPECT_FRAME_POINTERS").as_deref() {
        Ok("1") => assert!(frame_pointers, "built with frame pointers, Auto says not"),
        Ok("0") => assert!(
            !frame_pointers,
            "built without frame pointers, Auto says with"
        ),
        _ => {}
    }
    frame_pointers
}

#[inline(never)]
fn allocate_on_own_stack() {
    for _ in 0..64 {
        std::hint::black_box(vec![0u8; 100]);
    }
}

/// Auto capture ignored the attacked samples: the ones on the thread's own stack afterwards
/// settle it as the build says (a sample walked off the thread's stack is no evidence either way).
fn assert_auto_settles(mode: StackCapture, frame_pointers: bool) {
    if mode != StackCapture::Auto {
        return;
    }
    allocate_on_own_stack();
    let expected = if frame_pointers {
        StackCapture::FramePointers
    } else {
        StackCapture::Unwinder
    };
    assert_eq!(heapwatch::stack_capture(), expected);
}

/// If `expected`, some sample's stack names the allocating function.
fn assert_named(mode: StackCapture, expected: bool) {
    if expected {
        assert!(
            sample_named(),
            "{mode:?}: no sample names {ALLOCATING_FUNCTION}"
        );
    }
}

fn sample_named() -> bool {
    let profile = heapwatch::snapshot();
    profile.samples.iter().any(|sample| {
        profile
            .stack_names(sample)
            .any(|name| name.ends_with(ALLOCATING_FUNCTION))
    })
}

// ---------------------------------------------------------------------------------------------
// Placed memory: a thread whose stack we lay out, with a foreign stack below it.

const FOREIGN_STACK_BYTES: usize = 256 << 10;
const THREAD_STACK_BYTES: usize = 1 << 20;

/// One mapping: `[guard][foreign stack][poison][thread stack][poison]`, the guard and poison
/// pages unreadable. `(low, high)` ranges.
#[derive(Clone, Copy)]
struct PlacedMemory {
    foreign_stack: (usize, usize),
    poison_below_thread_stack: usize,
    poison_above_thread_stack: usize,
}

fn page_size() -> usize {
    // SAFETY: no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Runs `body` on a new thread whose stack lies in a mapping laid out as [`PlacedMemory`] says,
/// and unmaps it after; a panic in `body` is raised again here.
fn run_on_placed_thread(body: impl FnOnce(PlacedMemory) + Send) {
    let page = page_size();
    let length = page + FOREIGN_STACK_BYTES + page + THREAD_STACK_BYTES + page;
    // SAFETY: a fresh anonymous mapping; the protections change pages of it only.
    let base = unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(base, libc::MAP_FAILED);
        base as usize
    };
    let foreign_low = base + page;
    let poison_below = foreign_low + FOREIGN_STACK_BYTES;
    let thread_low = poison_below + page;
    let poison_above = thread_low + THREAD_STACK_BYTES;
    for poison in [base, poison_below, poison_above] {
        // SAFETY: a page of the mapping above.
        assert_eq!(
            unsafe { libc::mprotect(poison as *mut c_void, page, libc::PROT_NONE) },
            0
        );
    }
    let memory = PlacedMemory {
        foreign_stack: (foreign_low, poison_below),
        poison_below_thread_stack: poison_below,
        poison_above_thread_stack: poison_above,
    };

    type Body<'a> = Box<dyn FnOnce() + Send + 'a>;
    extern "C" fn start(argument: *mut c_void) -> *mut c_void {
        // SAFETY: `argument` is the `Box<Body>` leaked below, taken back exactly once.
        let body = unsafe { Box::from_raw(argument as *mut Body<'_>) };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        Box::into_raw(Box::new(outcome)) as *mut c_void
    }
    let body: Box<Body<'_>> = Box::new(Box::new(move || body(memory)));
    // SAFETY: the attribute is initialised before use and destroyed after; the stack is ours
    // and outlives the thread (joined before the unmap); `start` takes back the box it is
    // given, and its result is taken back once after the join.
    unsafe {
        let mut attributes: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_attr_init(&mut attributes), 0);
        assert_eq!(
            libc::pthread_attr_setstack(
                &mut attributes,
                thread_low as *mut c_void,
                THREAD_STACK_BYTES
            ),
            0
        );
        let mut thread: libc::pthread_t = 0;
        let created = libc::pthread_create(
            &mut thread,
            &attributes,
            start,
            Box::into_raw(body) as *mut c_void,
        );
        libc::pthread_attr_destroy(&mut attributes);
        assert_eq!(created, 0);
        let mut result: *mut c_void = std::ptr::null_mut();
        assert_eq!(libc::pthread_join(thread, &mut result), 0);
        let outcome = Box::from_raw(result as *mut std::thread::Result<()>);
        libc::munmap(base as *mut c_void, length);
        if let Err(panic) = *outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Runs [`coroutine_entry`] on a `makecontext` coroutine over `stack`, back when it returns.
fn run_coroutine((low, high): (usize, usize)) {
    // SAFETY: the contexts live on this frame until `swapcontext` returns, which it does when
    // the coroutine's entry returns (to `uc_link`); the stack is ours, unused by anything else.
    unsafe {
        let mut caller: libc::ucontext_t = std::mem::zeroed();
        let mut coroutine: libc::ucontext_t = std::mem::zeroed();
        assert_eq!(libc::getcontext(&mut coroutine), 0);
        coroutine.uc_stack.ss_sp = low as *mut c_void;
        coroutine.uc_stack.ss_size = high - low;
        coroutine.uc_link = &mut caller;
        libc::makecontext(&mut coroutine, coroutine_entry, 0);
        assert_eq!(libc::swapcontext(&mut caller, &coroutine), 0);
    }
}

extern "C" fn coroutine_entry() {
    allocate_with_frame_pointer(HOSTILE_FRAME_POINTER.load(Ordering::Relaxed));
}

fn install_allocating_handler(signal: libc::c_int) {
    extern "C" fn on_signal(_: libc::c_int) {
        allocate_with_frame_pointer(HOSTILE_FRAME_POINTER.load(Ordering::Relaxed));
    }
    // SAFETY: a zeroed `sigaction` filled as the ABI requires; the handler runs on the
    // alternate stack (SA_ONSTACK) of whichever thread the signal is raised on.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
    }
}
