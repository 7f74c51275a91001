//! Dumps on SIGUSR1, chaining to the handler the program had installed. The handler only asks
//! for a dump (one atomic store) and wakes the watch thread, then calls the program's handler.

use super::request::{self, DumpRequest};
use crate::early_wake as wake;
use crate::fork::{GuardSlot, HeldAcrossFork, Hooks, Rank};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// SIGUSR1 as it was before [`install_sigusr1`]: put back by [`restore_sigusr1`] when the watch
/// stops. Only touched at start and stop, never in the handler.
static PREVIOUS_SIGUSR1: HeldAcrossFork<Mutex<Option<libc::sigaction>>> =
    HeldAcrossFork::new(Rank::Watch, &FORK_HOOKS, Mutex::new(None));
/// The handler that was installed before ours, which ours calls after asking for the dump
/// (0: none — the disposition was the default or "ignore"). An atomic, not part of the mutex
/// above: the signal handler reads it.
static CHAINED_SIGUSR1: AtomicUsize = AtomicUsize::new(0);
/// Whether that handler takes three arguments (it was installed with `SA_SIGINFO`).
static CHAINED_SIGINFO: AtomicBool = AtomicBool::new(false);
/// Set when a watch stopped and found a handler the program installed over ours: that handler
/// may chain to ours, so ours is not installed over it again (ours chaining to it would close
/// a loop that overflows the stack on the next SIGUSR1).
static SIGUSR1_TAKEN_OVER: AtomicBool = AtomicBool::new(false);

/// Asks the watch thread for a dump, then calls the handler the program had installed.
extern "C" fn on_sigusr1(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local and always readable and writable; it is saved and put back
    // because the futex call in `wake` may change it under the interrupted code.
    let errno = unsafe { *libc::__errno_location() };
    request::ask(DumpRequest::Signal);
    wake::wake();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    let chained = CHAINED_SIGUSR1.load(Ordering::Acquire);
    let siginfo = CHAINED_SIGINFO.load(Ordering::Acquire);
    // Read again: the pair is only being changed if another thread changed SIGUSR1 while a
    // watch started, and then it is skipped rather than called with the wrong arguments.
    if chained == 0 || CHAINED_SIGUSR1.load(Ordering::Acquire) != chained {
        return;
    }
    if siginfo {
        // SAFETY: `chained` is the `sa_sigaction` of a handler installed with SA_SIGINFO, which
        // the kernel would have called with exactly these three arguments.
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute::<libc::sighandler_t, _>(chained) };
        handler(signal, info, context);
    } else {
        // SAFETY: `chained` is the `sa_handler` of a handler installed without SA_SIGINFO,
        // which the kernel would have called with the signal number alone.
        let handler: extern "C" fn(libc::c_int) =
            unsafe { std::mem::transmute::<libc::sighandler_t, _>(chained) };
        handler(signal);
    }
}

/// [`on_sigusr1`] as `sigaction` stores it.
fn our_sigusr1_handler() -> libc::sighandler_t {
    on_sigusr1 as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
        as libc::sighandler_t
}

/// Records `previous` as the handler to chain to; whether it is one (not the default
/// disposition, not "ignore").
fn chain_sigusr1_to(previous: &libc::sigaction) -> bool {
    let handler = previous.sa_sigaction;
    let is_handler = handler != libc::SIG_DFL && handler != libc::SIG_IGN;
    // No handler while the pair changes: a signal then calls none rather than the wrong kind.
    CHAINED_SIGUSR1.store(0, Ordering::Release);
    CHAINED_SIGINFO.store(previous.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
    CHAINED_SIGUSR1.store(if is_handler { handler } else { 0 }, Ordering::Release);
    is_handler
}

/// Dump on SIGUSR1, chaining to whatever handler the program had: the program's handler still
/// runs on every SIGUSR1, after ours has asked for the dump, with the signal's `siginfo` and
/// context when it takes them, under its own signal mask and with its own `SA_RESTART`,
/// `SA_ONSTACK` and `SA_NODEFER` (a one-shot `SA_RESETHAND` handler runs on each signal while
/// the watch runs). The default disposition — which for SIGUSR1 terminates the process, the
/// reason a handler is installed at all — and "ignore" are not chained: the signal only asks
/// for a dump. [`restore_sigusr1`] puts the previous disposition back when the watch stops.
///
/// Chaining rather than refusing to install over a handler: a program whose SIGUSR1 already
/// means something (reopen the logs, say) keeps that meaning and gets dumps too, and turning
/// signal dumps on never makes a watch fail to start.
pub(super) fn install_sigusr1() {
    if SIGUSR1_TAKEN_OVER.load(Ordering::Acquire) {
        tracing::warn!(
            "heapwatch: the program installed a SIGUSR1 handler over heapwatch's while an \
             earlier watch ran; heapwatch's is not installed again (dumps on SIGUSR1 only if \
             the program's handler calls it)"
        );
        return;
    }
    let ours = our_sigusr1_handler();
    // SAFETY: sigaction reads the action it is given and writes the old one into a zeroed
    // struct of its type. The handler installed only stores to atomics, makes a futex syscall
    // and calls the handler the program installed itself, as the kernel would have.
    unsafe {
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut previous) != 0 {
            tracing::warn!("heapwatch: cannot read SIGUSR1's disposition; no dumps on SIGUSR1");
            return;
        }
        if previous.sa_sigaction == ours {
            // Still ours: an earlier watch could not put the previous disposition back; it is
            // still recorded, and put back when this watch stops.
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ours;
        if chain_sigusr1_to(&previous) {
            // The chained handler runs as the program set it up: its mask, its flags.
            action.sa_mask = previous.sa_mask;
            action.sa_flags =
                previous.sa_flags & (libc::SA_RESTART | libc::SA_ONSTACK | libc::SA_NODEFER);
        } else {
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
        }
        action.sa_flags |= libc::SA_SIGINFO;
        let mut replaced: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGUSR1, &action, &mut replaced) != 0 {
            CHAINED_SIGUSR1.store(0, Ordering::Release);
            tracing::warn!("heapwatch: cannot install the SIGUSR1 handler");
            return;
        }
        // Another thread may have changed it between the two calls: what was replaced is what
        // is chained to and put back.
        if replaced.sa_sigaction != previous.sa_sigaction {
            chain_sigusr1_to(&replaced);
        }
        *PREVIOUS_SIGUSR1
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(replaced);
    }
}

/// Puts SIGUSR1 back as it was before [`install_sigusr1`], if our handler is still the one
/// installed. A handler the program installed over ours while the watch ran is left in place,
/// and ours keeps chaining to the one before it (for a program that chains to ours); later
/// watches do not install ours again.
pub(super) fn restore_sigusr1() {
    let mut previous = PREVIOUS_SIGUSR1
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(old) = previous.take() else {
        return;
    };
    // SAFETY: sigaction writes the current disposition into a zeroed struct of its type, then
    // reads `old`, a disposition the kernel itself returned.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut current) != 0
            || current.sa_sigaction != our_sigusr1_handler()
        {
            SIGUSR1_TAKEN_OVER.store(true, Ordering::Release);
            tracing::warn!(
                "heapwatch: SIGUSR1's handler was replaced while the watch ran; left in place"
            );
            return;
        }
        if libc::sigaction(libc::SIGUSR1, &old, std::ptr::null_mut()) != 0 {
            tracing::warn!("heapwatch: cannot put SIGUSR1's previous handler back");
            *previous = Some(old);
            return;
        }
    }
    CHAINED_SIGUSR1.store(0, Ordering::Release);
}

/// The watch's locks across a fork (see `fork`): SIGUSR1's saved disposition. A forked child
/// forgets the parent's running watch, locks taken or not.
pub(super) static FORK_HOOKS: Hooks = Hooks {
    take: |forking| {
        let previous = PREVIOUS_SIGUSR1.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, previous.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: Some(|_locked| super::running::forget_in_child()),
};

static HELD_FOR_FORK: GuardSlot<MutexGuard<'static, Option<libc::sigaction>>> = GuardSlot::new();
