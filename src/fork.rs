//! Fork safety: a `fork()` copies only the calling thread, so a lock another thread held at that
//! moment stays locked forever in the child, and the child hangs on its first sampled
//! allocation. heapwatch therefore registers `pthread_atfork` handlers that take every lock it
//! owns before the fork, in one fixed order, and release them on both sides after it. The child
//! handler also lets each module forget what the parent's threads, which do not exist in the
//! child, left behind (the watch thread and what it published).
//!
//! This module is the bottom of that arrangement: it knows no lock of its own callers. Each
//! module that owns a lock declares it as a [`HeldAcrossFork`] naming its [`Rank`] and its
//! [`Hooks`] (take the lock and keep the guard in a [`GuardSlot`], release it, and optionally
//! forget in a child); the first use of the lock registers the hooks, and the handlers call the
//! registered hooks.
//!
//! **Order.** [`Rank`] is the one place that orders the locks: outermost first, as the code
//! nests them: the listener's record of its client connections, the leak checks' rate lock,
//! the plumbing list, the metrics renderer (it reads the published state and the table), the
//! watch's saved SIGUSR1 action, the published state (`published`), the symbolizer,
//! heapwatch's walks of the loader's list (`dl_iterate_phdr`, whose own lock glibc does not
//! reset in a child; on glibc before 2.35 also libgcc's unwinds, fenced), the caching
//! unwinder's object list and caches (held while a sampled stack is walked), and the
//! live-sample table last (code holding any of the others may allocate, and so take the table;
//! nothing holding the table takes another).
//! A forking thread therefore waits only for holders to finish, and holders never wait for it.
//!
//! **Registration of the handlers** happens the first time heapwatch takes one of these locks,
//! always before the lock is taken, and after the inner allocator has served an allocation:
//! prepare handlers run in reverse order of registration, so ours run before jemalloc's own
//! (which lock its arenas; a thread holding the symbolizer's lock may be allocating) and before
//! glibc locks its `malloc` arenas inside `fork`. While another thread is registering them a
//! fork is not protected, exactly as before any lock of ours was taken. `pthread_atfork` takes
//! glibc's handler-list lock, so it is never called once our handlers are registered (it may be
//! called while a caller holds a lock of ours, but then no handler of ours can wait for it).
//!
//! **Registration of a module's hooks** happens on the first use of its [`HeldAcrossFork`]
//! (or an explicit [`register`]), before the lock is taken: a module whose hooks are not
//! registered has never taken its lock, so a fork need not take it. The prepare handler, for
//! each rank in order, publishes how far it has scanned, then reads the rank's hooks; a module
//! registering publishes its hooks, then reads how far a fork has scanned (both sequentially
//! consistent, so at least one of the two sees the other's write). If a fork is at or past the
//! module's rank, it may have missed the hooks: the module waits until that fork is over before
//! it takes its lock the first time. It cannot be what the fork waits for: it holds only locks
//! of lower rank, registered the same way, which the fork has already taken or is waiting for
//! (and then has not scanned past them). Only once that check passed with our handlers
//! registered is the rank marked ready; later uses pay one atomic load, as the one
//! `ensure_handlers` check did. The window left is the one above, and a first lock taken
//! inside a signal handler that interrupted a fork's prepare handler on the same thread.
//!
//! **Concurrent forks.** glibc releases its handler-list lock while a handler runs, so two
//! threads may run our prepare handler at once; [`Registry::forking`] serialises them, and
//! [`Registry::owner`] says which thread holds it, so each thread's parent or child handler
//! releases only what that thread took. Every [`GuardSlot`] is touched only by that thread.
//!
//! **A thread already inside heapwatch** takes nothing: it might hold one of the locks itself
//! (a fork from a signal handler that interrupted it), and taking it again would hang the
//! parent. The allocator's paths that take the table's lock (a sample, a free of a sampled
//! block) mark the thread as inside. A fork from a signal handler is not otherwise covered: the
//! C library's and jemalloc's own fork handlers hang the same way when the signal interrupted
//! their `malloc` (seen with glibc 2.36), which heapwatch's paths call too.
//!
//! **In the child**, every lock is released first (a free takes the table's lock), then each
//! registered module's child hook runs in rank order, still inside heapwatch (nothing it frees
//! is sampled). The child has one thread then, so a hook told its lock was taken may lock it
//! again and take the parent's state out; one told it was not (the forking thread was inside
//! heapwatch) touches only atomics: the lock may be held by the interrupted code.

use crate::thread_state::ProfilerGuard;
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Where a module's lock stands in the one order the fork handlers take them in: outermost
/// first (see the module doc for why this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Rank {
    /// The one CPU profile's claim (`cpu`): no lock; its child hook frees the claim a parent's
    /// profile held, unmaps the child's copy of its table and puts the `SIGPROF` action back.
    CpuSession,
    /// The one heap delta's claim (`http`): no lock; its child hook frees it.
    HeapDelta,
    /// The pages' response budget (`http`): no lock; its child hook forgets the reservations
    /// of the parent's renders, which the child does not run.
    ResponseBudget,
    /// The built-in listener's record of its open client connections (`http`), held while one
    /// is accepted and recorded or forgotten and closed; its child hook closes the child's
    /// copies.
    HttpClients,
    /// `leak_check`'s sample-rate lock, held while a check changes the rate.
    LeakChecks,
    /// `plumbing`'s list of frames skipped when naming a culprit.
    Plumbing,
    /// The HTTP metrics renderer's lock (feature `http`); a render reads the published state
    /// and the table.
    Metrics,
    /// The watch: its saved SIGUSR1 action; its child hook forgets the parent's running watch.
    Watch,
    /// What the watch publishes (`published`): the latest tick, the baseline, the dump
    /// directory.
    Published,
    /// The interned span tags (`spans`): taken when a new span is tagged, and by a snapshot
    /// or a metrics render naming the tags; whoever holds it may allocate.
    SpanTags,
    /// The symbolizer's caches.
    Symbolizer,
    /// heapwatch's walks of the loader's list (`dl_iterate_phdr`).
    Loader,
    /// The fence of libgcc's unwinds of samples, which walk the loader's list on glibc before
    /// 2.35 (`stack::fence`): no lock; the prepare hook waits for those under way to end.
    LibgccUnwinds,
    /// The caching unwinder's object list and caches (`stack::cached`), held while a sampled
    /// stack is walked, before the table is taken.
    Unwinder,
    /// The live-sample table: innermost, any of the others may allocate while held.
    Table,
}

impl Rank {
    /// Every rank, in the order the prepare handler takes them.
    pub(crate) const ALL: [Rank; RANKS] = [
        Rank::CpuSession,
        Rank::HeapDelta,
        Rank::ResponseBudget,
        Rank::HttpClients,
        Rank::LeakChecks,
        Rank::Plumbing,
        Rank::Metrics,
        Rank::Watch,
        Rank::Published,
        Rank::SpanTags,
        Rank::Symbolizer,
        Rank::Loader,
        Rank::LibgccUnwinds,
        Rank::Unwinder,
        Rank::Table,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

const RANKS: usize = 15;

/// What the fork handlers do with one module's locks. A `static` of the module's, named by its
/// [`HeldAcrossFork`] locks.
pub(crate) struct Hooks {
    /// Takes the module's locks (through [`HeldAcrossFork::for_fork`], not the registering
    /// `Deref`) and keeps the guards in the module's [`GuardSlot`]. Runs in the prepare handler.
    pub(crate) take: fn(&Forking),
    /// Drops the guards `take` kept. Runs in the parent and in the child.
    pub(crate) release: fn(&Forking),
    /// In the child, after every lock is released, inside heapwatch: forgets what the parent's
    /// threads left. The argument says whether `take` ran before this fork; when it did not,
    /// the module's locks may be held by the code the fork interrupted, so only atomics may be
    /// touched.
    pub(crate) in_child: Option<fn(bool)>,
}

/// Proof that the calling thread runs a fork handler and holds [`Registry::forking`]: only
/// this module makes one, and lends it to the hooks for the handler's duration.
pub(crate) struct Forking(());

/// A lock of heapwatch's that the fork handlers hold across a fork. Dereferencing it (as every
/// use of the lock does) first registers its module's hooks, so the lock is never taken before
/// the handlers know it.
pub(crate) struct HeldAcrossFork<T> {
    rank: Rank,
    hooks: &'static Hooks,
    lock: T,
}

impl<T> HeldAcrossFork<T> {
    /// `lock`, taken by the fork handlers at `rank` through `hooks`.
    pub(crate) const fn new(rank: Rank, hooks: &'static Hooks, lock: T) -> Self {
        Self { rank, hooks, lock }
    }

    /// The lock, for the module's hooks: the handlers only call hooks already registered, and
    /// registering from inside a handler would wait for the fork it is part of.
    pub(crate) fn for_fork(&self, _forking: &Forking) -> &T {
        &self.lock
    }
}

impl<T> std::ops::Deref for HeldAcrossFork<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        register(self.rank, self.hooks);
        &self.lock
    }
}

/// Where a module keeps the guards its [`Hooks::take`] took until [`Hooks::release`]: only a
/// thread holding a [`Forking`] reaches the value.
pub(crate) struct GuardSlot<T>(UnsafeCell<Option<T>>);

// SAFETY: the value is reached only through a `Forking`, which exists only in a fork handler of
// the thread holding `Registry::forking`: no two threads touch the slot at once, and the
// mutex's release and acquire order one holder's accesses before the next's. A value put in by
// a prepare handler is taken out by the same thread's parent or child handler (the thread that
// `Registry::owner` names), so guards that must not change threads (`MutexGuard`) do not.
unsafe impl<T> Sync for GuardSlot<T> {}

impl<T> GuardSlot<T> {
    /// An empty slot.
    pub(crate) const fn new() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// Keeps `guards` until [`GuardSlot::take`].
    pub(crate) fn keep(&self, _forking: &Forking, guards: T) {
        // SAFETY: the caller holds a `Forking` (see `Sync` above).
        unsafe { *self.0.get() = Some(guards) };
    }

    /// What [`GuardSlot::keep`] kept, if anything.
    pub(crate) fn take(&self, _forking: &Forking) -> Option<T> {
        // SAFETY: the caller holds a `Forking` (see `Sync` above).
        unsafe { (*self.0.get()).take() }
    }
}

/// Registers `hooks` for the locks of `rank` and the fork handlers, unless done. One atomic
/// load once done. Call before taking the lock; [`HeldAcrossFork`] does. Also for a module
/// whose child hook must run though it has not taken its lock yet (the watch's running flag).
#[inline]
pub(crate) fn register(rank: Rank, hooks: &'static Hooks) {
    REGISTRY.register(rank, hooks);
}

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);

/// Forks this process descends through since heapwatch's handlers were registered: bumped in
/// every child. What a handle records to tell "made in this process" from "inherited".
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The hooks the handlers call.
static REGISTRY: Registry = Registry::new();

/// Registers the fork handlers once. Cheap after the first call: one atomic load. Never called
/// by a fork handler.
#[inline]
pub(crate) fn ensure_handlers() {
    if STATE.load(Ordering::Acquire) == REGISTERED {
        return;
    }
    register_handlers();
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
fn register_handlers() {
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

/// [`Registry::scanned`] when no prepare handler is scanning: above every rank.
const IDLE: u8 = u8::MAX;

/// The registered hooks and the state of the fork under way. One `static` in a process; the
/// tests make their own.
struct Registry {
    /// Per rank, the module's hooks; null until registered.
    hooks: [AtomicPtr<Hooks>; RANKS],
    /// Per rank, whether the hooks are registered, no fork can have missed them, and our
    /// handlers are registered: the uses of the lock need not check again.
    ready: [AtomicBool; RANKS],
    /// The rank the prepare handler under way has reached; [`IDLE`] outside one.
    scanned: AtomicU8,
    /// Held from the prepare handler to the parent or child handler: one fork at a time.
    forking: Mutex<()>,
    /// `pthread_self()` of the thread holding `forking`; 0 when none does.
    owner: AtomicUsize,
    /// What the owner holds.
    held: GuardSlot<Held>,
}

/// What the thread that prepared a fork holds until its parent or child handler.
struct Held {
    /// Bit `rank` set: that rank's hooks took its locks.
    taken: u16,
    /// Keeps the forking thread's own allocations in the window unsampled (a sample would take
    /// the table lock this thread holds), and the child hooks' frees too.
    guard: ProfilerGuard,
    forking: MutexGuard<'static, ()>,
}

impl Registry {
    const fn new() -> Self {
        Self {
            hooks: [const { AtomicPtr::new(ptr::null_mut()) }; RANKS],
            ready: [const { AtomicBool::new(false) }; RANKS],
            scanned: AtomicU8::new(IDLE),
            forking: Mutex::new(()),
            owner: AtomicUsize::new(0),
            held: GuardSlot::new(),
        }
    }

    #[inline]
    fn register(&self, rank: Rank, hooks: &'static Hooks) {
        if !self.ready[rank.index()].load(Ordering::Acquire) {
            self.register_slow(rank, hooks);
        }
    }

    #[cold]
    fn register_slow(&self, rank: Rank, hooks: &'static Hooks) {
        ensure_handlers();
        let slot = &self.hooks[rank.index()];
        let wanted = ptr::from_ref(hooks).cast_mut();
        debug_assert!(
            {
                let was = slot.load(Ordering::Relaxed);
                was.is_null() || was == wanted
            },
            "two modules registered fork hooks at {rank:?}"
        );
        slot.store(wanted, Ordering::SeqCst);
        // A fork that has reached this rank may have read the slot before the store above:
        // let it finish before the lock is taken. One that has not will read the hooks.
        loop {
            let scanned = self.scanned.load(Ordering::SeqCst);
            if scanned == IDLE || scanned < rank as u8 {
                break;
            }
            std::thread::yield_now();
        }
        if STATE.load(Ordering::Acquire) == REGISTERED {
            self.ready[rank.index()].store(true, Ordering::Release);
        }
    }

    fn hooks(&self, index: usize, order: Ordering) -> Option<&'static Hooks> {
        let hooks = self.hooks[index].load(order);
        // SAFETY: non-null slots hold a `&'static Hooks` stored by `register_slow`.
        unsafe { hooks.cast_const().as_ref() }
    }

    fn prepare(&'static self) {
        let Some(guard) = ProfilerGuard::enter() else {
            return;
        };
        let forking = self.forking.lock().unwrap_or_else(PoisonError::into_inner);
        let token = Forking(());
        let mut taken = 0u16;
        for rank in Rank::ALL {
            self.scanned.store(rank as u8, Ordering::SeqCst);
            if let Some(hooks) = self.hooks(rank.index(), Ordering::SeqCst) {
                (hooks.take)(&token);
                taken |= 1 << rank.index();
            }
        }
        self.held.keep(
            &token,
            Held {
                taken,
                guard,
                forking,
            },
        );
        self.owner.store(current_thread(), Ordering::Release);
    }

    /// Releases what this thread's prepare handler took, if it took anything; returns which
    /// ranks it took and the guard that keeps the thread inside heapwatch.
    fn release(&self) -> Option<(u16, ProfilerGuard)> {
        if self.owner.load(Ordering::Acquire) != current_thread() {
            return None;
        }
        self.owner.store(0, Ordering::Release);
        // `owner` names this thread, which so holds `forking`.
        let token = Forking(());
        let held = self.held.take(&token)?;
        // Outermost first, in the order they were taken, which does not matter for
        // correctness (nobody else can be waiting in between).
        for rank in Rank::ALL {
            if held.taken & (1 << rank.index()) != 0 {
                if let Some(hooks) = self.hooks(rank.index(), Ordering::Acquire) {
                    (hooks.release)(&token);
                }
            }
        }
        // Before `forking` is released: the next fork's scan must not be hidden by this store.
        self.scanned.store(IDLE, Ordering::SeqCst);
        drop(held.forking);
        Some((held.taken, held.guard))
    }

    fn parent(&self) {
        drop(self.release());
    }

    fn child(&self) {
        let released = self.release();
        let taken = released.as_ref().map_or(0, |(taken, _)| *taken);
        for rank in Rank::ALL {
            let Some(hooks) = self.hooks(rank.index(), Ordering::Acquire) else {
                continue;
            };
            if let Some(in_child) = hooks.in_child {
                in_child(taken & (1 << rank.index()) != 0);
            }
        }
        drop(released);
    }
}

fn current_thread() -> usize {
    // SAFETY: `pthread_self` has no preconditions; in the child of a fork it returns the same
    // value as in the parent for the forking thread.
    unsafe { libc::pthread_self() as usize }
}

// A panic must not unwind into C; nothing below panics, but be certain.

extern "C" fn prepare() {
    let _ = std::panic::catch_unwind(|| REGISTRY.prepare());
}

extern "C" fn parent() {
    let _ = std::panic::catch_unwind(|| REGISTRY.parent());
}

extern "C" fn child() {
    let _ = std::panic::catch_unwind(|| {
        GENERATION.fetch_add(1, Ordering::AcqRel);
        REGISTRY.child();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// What a hook did: `take`, `release` or `child`, the rank, and for `child` whether the
    /// locks were taken.
    type Event = (&'static str, usize, bool);

    /// One log per test, as tests run in parallel: the hooks are plain functions.
    static LOGS: [Mutex<Vec<Event>>; 6] = [const { Mutex::new(Vec::new()) }; 6];

    fn push<const T: usize>(event: Event) {
        LOGS[T].lock().unwrap().push(event);
    }

    fn log<const T: usize>() -> Vec<Event> {
        std::mem::take(&mut *LOGS[T].lock().unwrap())
    }

    /// Hooks that log into test `T`'s log as rank `R`.
    fn hooks<const T: usize, const R: usize>() -> &'static Hooks {
        Box::leak(Box::new(Hooks {
            take: |_| push::<T>(("take", R, true)),
            release: |_| push::<T>(("release", R, true)),
            in_child: Some(|locked| push::<T>(("child", R, locked))),
        }))
    }

    const PLUMBING: usize = Rank::Plumbing as usize;
    const WATCH: usize = Rank::Watch as usize;
    const TABLE: usize = Rank::Table as usize;

    /// A registry with the plumbing's, the watch's and the table's ranks registered, innermost
    /// first (the order of registration does not matter).
    fn registry<const T: usize>() -> &'static Registry {
        let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
        registry.register(Rank::Table, hooks::<T, TABLE>());
        registry.register(Rank::Watch, hooks::<T, WATCH>());
        registry.register(Rank::Plumbing, hooks::<T, PLUMBING>());
        registry
    }

    #[test]
    fn ranks_go_from_outermost_to_innermost() {
        for (index, rank) in Rank::ALL.into_iter().enumerate() {
            assert_eq!(rank.index(), index);
        }
        // The order the code nests the locks in: a leak check names culprits (plumbing), a
        // metrics render reads the published state, naming a stack walks the
        // loader's list, and any of them allocates (the table). The waiting pages' claims hold
        // no lock: first.
        assert_eq!(
            Rank::ALL,
            [
                Rank::CpuSession,
                Rank::HeapDelta,
                Rank::ResponseBudget,
                Rank::HttpClients,
                Rank::LeakChecks,
                Rank::Plumbing,
                Rank::Metrics,
                Rank::Watch,
                Rank::Published,
                Rank::SpanTags,
                Rank::Symbolizer,
                Rank::Loader,
                Rank::LibgccUnwinds,
                Rank::Unwinder,
                Rank::Table,
            ]
        );
    }

    #[test]
    fn prepare_takes_the_registered_ranks_in_order_and_the_parent_releases_them() {
        let registry = registry::<0>();
        for _ in 0..2 {
            registry.prepare();
            assert_eq!(
                log::<0>(),
                [
                    ("take", PLUMBING, true),
                    ("take", WATCH, true),
                    ("take", TABLE, true)
                ]
            );
            registry.parent();
            assert_eq!(
                log::<0>(),
                [
                    ("release", PLUMBING, true),
                    ("release", WATCH, true),
                    ("release", TABLE, true)
                ]
            );
        }
    }

    #[test]
    fn the_child_releases_every_lock_before_the_child_hooks_run() {
        let registry = registry::<1>();
        registry.prepare();
        log::<1>();
        registry.child();
        assert_eq!(
            log::<1>(),
            [
                ("release", PLUMBING, true),
                ("release", WATCH, true),
                ("release", TABLE, true),
                ("child", PLUMBING, true),
                ("child", WATCH, true),
                ("child", TABLE, true),
            ]
        );
    }

    #[test]
    fn a_thread_inside_heapwatch_takes_nothing_and_its_child_hooks_are_told() {
        let registry = registry::<2>();
        let _inside = ProfilerGuard::enter().unwrap();
        registry.prepare();
        registry.parent();
        assert_eq!(log::<2>(), []);
        registry.prepare();
        registry.child();
        assert_eq!(
            log::<2>(),
            [
                ("child", PLUMBING, false),
                ("child", WATCH, false),
                ("child", TABLE, false),
            ]
        );
    }

    #[test]
    fn only_the_thread_that_prepared_releases() {
        let registry = registry::<3>();
        registry.prepare();
        log::<3>();
        std::thread::spawn(|| registry.parent()).join().unwrap();
        assert_eq!(log::<3>(), []);
        // Nor does a second fork's prepare get in while the first holds the locks.
        let entered = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                registry.prepare();
                entered.store(true, Ordering::SeqCst);
                registry.parent();
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!entered.load(Ordering::SeqCst));
            registry.parent();
        });
        assert!(entered.load(Ordering::SeqCst));
        // The first fork's releases, then the second's takes and releases.
        let events: Vec<&str> = log::<3>().into_iter().map(|(what, ..)| what).collect();
        assert_eq!(
            events,
            [["release"; 3], ["take"; 3], ["release"; 3]].concat()
        );
    }

    #[test]
    fn a_registration_waits_for_a_fork_that_may_have_missed_it() {
        let registry = registry::<4>();
        registry.prepare();
        // The prepare handler has scanned every rank: the published state's hooks came too late for
        // this fork, so its lock must not be taken until the fork is over.
        let registered = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                registry.register(Rank::Published, hooks::<4, { Rank::Published as usize }>());
                registered.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!registered.load(Ordering::SeqCst));
            registry.parent();
        });
        assert!(registered.load(Ordering::SeqCst));
        assert!(registry.ready[Rank::Published.index()].load(Ordering::Acquire));
        // The next fork takes it.
        log::<4>();
        registry.prepare();
        registry.parent();
        assert!(log::<4>().contains(&("take", Rank::Published as usize, true)));
        // A fork that has not reached a rank yet will read its hooks: no wait.
        registry.scanned.store(Rank::Watch as u8, Ordering::SeqCst);
        registry.register(
            Rank::Symbolizer,
            hooks::<4, { Rank::Symbolizer as usize }>(),
        );
        assert!(registry.ready[Rank::Symbolizer.index()].load(Ordering::Acquire));
        registry.scanned.store(IDLE, Ordering::SeqCst);
    }

    #[test]
    fn a_forked_child_is_another_process() {
        let parent = process_identity();
        // SAFETY: the child only compares atomics and the pid, and exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = i32::from(parent.is_current());
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is this process's child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(parent.is_current());
    }
}
