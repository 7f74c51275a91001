//! Fork safety: a `fork()` copies only the calling thread, so a lock another thread held at that
//! moment stays locked forever in the child, and the child hangs on its first sampled
//! allocation. heapwatch therefore registers `pthread_atfork` handlers that take every lock it
//! owns before the fork, in one fixed order, and release them on both sides after it. The child
//! handler also forgets the parent's watch thread, which does not exist in the child.
//!
//! **Order.** Locks are taken outermost first, as the code nests them: the leak checks' rate
//! lock, the plumbing list, the metrics renderer (it reads the watch's and the detector's state
//! and the table), the watch's published state, the detector's, the symbolizer, heapwatch's
//! walks of the loader's list (`dl_iterate_phdr`, whose own lock glibc does not reset in a
//! child), and the live-sample table last (code holding any of the others may allocate, and so take the
//! table; nothing holding the table takes another). A forking thread therefore waits only for
//! holders to finish, and holders never wait for it.
//!
//! **Registration** happens the first time heapwatch takes one of these locks, always before the
//! lock is taken, and after the inner allocator has served an allocation: prepare handlers run
//! in reverse order of registration, so ours run before jemalloc's own (which lock its arenas;
//! a thread holding the symbolizer's lock may be allocating) and before glibc locks its
//! `malloc` arenas inside `fork`.
//!
//! **Concurrent forks.** glibc releases its handler-list lock while a handler runs, so two
//! threads may run our prepare handler at once; the first lock taken serialises them, and
//! [`OWNER`] says which thread holds the set, so each thread's parent or child handler releases
//! only what that thread took.
//!
//! **A thread already inside heapwatch** takes nothing: it might hold one of the locks itself
//! (a fork from a signal handler that interrupted it), and taking it again would hang the
//! parent. The allocator's paths that take the table's lock (a sample, a free of a sampled
//! block) mark the thread as inside. A fork from a signal handler is not otherwise covered: the
//! C library's and jemalloc's own fork handlers hang the same way when the signal interrupted
//! their `malloc` (seen with glibc 2.36), which heapwatch's paths call too.
//!
//! **In the child**, the parent's published watch state is taken out under the locks and
//! dropped only after they are released: a free takes the table's lock.

use crate::thread_state::ProfilerGuard;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);

/// Forks this process descends through since heapwatch's handlers were registered: bumped in
/// every child. What a handle records to tell "made in this process" from "inherited".
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// `pthread_self()` of the thread holding every lock for a fork; 0 when none does.
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// Every lock heapwatch owns, held from the prepare handler to the parent or child handler.
/// Fields drop in declaration order: outermost first, the reverse of how they were taken,
/// which does not matter for correctness (nobody else can be waiting in between).
struct Held {
    _leak_checks: crate::leak_check::ForkLock,
    _plumbing: crate::plumbing::ForkLock,
    #[cfg(feature = "http")]
    _metrics: crate::http::ForkLock,
    _sigusr1: crate::watch::ForkLock,
    _published: crate::published::ForkLock,
    _symbolizer: crate::symbolize::ForkLock,
    _loader: crate::symbolize::LoaderForkLock,
    _table: crate::table::ForkLock,
    /// Keeps the forking thread's own allocations in the window unsampled (a sample would take
    /// the table lock this thread holds).
    _guard: ProfilerGuard,
}

struct Slot(UnsafeCell<Option<Held>>);

// SAFETY: the slot is written only by the thread that has just taken every lock in `Held`
// (the first of them excludes every other writer), and read back only by the thread `OWNER`
// names, which is that same thread; no two threads ever touch it at once.
unsafe impl Sync for Slot {}

static HELD: Slot = Slot(UnsafeCell::new(None));

/// Registers the fork handlers once. Cheap after the first call: one atomic load. Call before
/// taking any lock of heapwatch's, never while holding one (`pthread_atfork` takes glibc's
/// handler-list lock).
#[inline]
pub(crate) fn ensure_handlers() {
    if STATE.load(Ordering::Acquire) == REGISTERED {
        return;
    }
    register();
}

/// Identifies the current process among those descending from each other by `fork`: a handle
/// that records it at creation and finds it changed was inherited by a forked child. Unlike a
/// pid it cannot repeat (a child in a new pid namespace may have its parent's pid 1).
/// Registers the fork handlers, so that the next fork is counted.
pub(crate) fn process_identity() -> ProcessIdentity {
    ensure_handlers();
    ProcessIdentity {
        pid: std::process::id(),
        generation: GENERATION.load(Ordering::Acquire),
    }
}

/// See [`process_identity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    pid: u32,
    generation: u64,
}

impl ProcessIdentity {
    /// Whether this is still the process that recorded `self`.
    pub(crate) fn is_current(self) -> bool {
        self == process_identity()
    }
}

#[cold]
fn register() {
    if STATE
        .compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // Registered, or another thread is registering: until it is done a fork is not
        // protected, exactly as before any lock of ours was taken.
        return;
    }
    // SAFETY: the three handlers are `extern "C"` functions with no arguments, valid for the
    // life of the process; registration has no other precondition.
    let result = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    STATE.store(
        if result == 0 {
            REGISTERED
        } else {
            // Out of memory in glibc: try again at the next lock.
            UNREGISTERED
        },
        Ordering::Release,
    );
}

fn current_thread() -> usize {
    // SAFETY: `pthread_self` has no preconditions; in the child of a fork it returns the same
    // value as in the parent for the forking thread.
    unsafe { libc::pthread_self() as usize }
}

extern "C" fn prepare() {
    // A panic must not unwind into C; nothing below panics, but be certain.
    let _ = std::panic::catch_unwind(|| {
        let Some(guard) = ProfilerGuard::enter() else {
            return;
        };
        let held = Held {
            _leak_checks: crate::leak_check::lock_for_fork(),
            _plumbing: crate::plumbing::lock_for_fork(),
            #[cfg(feature = "http")]
            _metrics: crate::http::lock_for_fork(),
            _sigusr1: crate::watch::lock_for_fork(),
            _published: crate::published::lock_for_fork(),
            _symbolizer: crate::symbolize::lock_for_fork(),
            _loader: crate::symbolize::loader_lock_for_fork(),
            _table: crate::table::lock_for_fork(),
            _guard: guard,
        };
        // SAFETY: this thread holds every lock in `held`, the first of which no other thread
        // can hold now, so no other thread reads or writes the slot (see `Slot`).
        unsafe { *HELD.0.get() = Some(held) };
        OWNER.store(current_thread(), Ordering::Release);
    });
}

/// Takes back what this thread's prepare handler stored, if it stored anything.
fn take_held() -> Option<Held> {
    if OWNER.load(Ordering::Acquire) != current_thread() {
        return None;
    }
    OWNER.store(0, Ordering::Release);
    // SAFETY: `OWNER` names this thread, so this thread stored the slot and still holds every
    // lock in it; no other thread touches the slot until they are released below.
    unsafe { (*HELD.0.get()).take() }
}

extern "C" fn parent() {
    let _ = std::panic::catch_unwind(|| drop(take_held()));
}

extern "C" fn child() {
    let _ = std::panic::catch_unwind(|| {
        GENERATION.fetch_add(1, Ordering::AcqRel);
        let held = take_held();
        // The parent's threads are gone: forget the watch they ran, so the child can start
        // its own.
        crate::watch::forget_running_thread();
        crate::stack::after_fork_in_child();
        let took_locks = held.is_some();
        drop(held);
        // Only after the locks are released (a free may take the table's lock, which this
        // thread held until then), and only if they were taken here: otherwise another thread
        // of the parent held one of them, and it stays held in the child.
        if took_locks {
            crate::published::forget_in_child();
        }
    });
}
