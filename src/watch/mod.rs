//! The watch: one background thread that reads the heap counters and the container's memory
//! every tick, and writes a dump set — pprof profile, flamegraph, JSON summary — before the
//! limit is reached: at thresholds of the limit, when the trend predicts the limit within a
//! horizon, and on request. At start it reports the newest dump set an earlier instance left.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
//!
//! // Settings in code; HEAPWATCH_* variables in the environment override them.
//! let _watch = heapwatch::watch::Watch::builder()
//!     .dir("/var/run/heapwatch")
//!     .start()
//!     .expect("one watch per process");
//! // … the service runs; dropping the handle stops the thread.
//! ```

mod cgroup;
mod config;
mod dump;
mod previous;
mod summary;
mod trend;
mod triggers;

pub use cgroup::{machine_memory, Cgroup, CgroupReading, CgroupVersion};
pub use config::{
    parse_bytes, parse_duration, parse_file_mode, parse_thresholds, WatchConfig, DEFAULT_DIR,
    DEFAULT_FILE_MODE, DEFAULT_HORIZON, DEFAULT_KEEP, DEFAULT_THRESHOLDS, DEFAULT_TICK,
};
#[cfg(feature = "http")]
pub(crate) use dump::{is_served, read_served_file};
pub use dump::{list_sets, read_summary, DumpSet, DUMP_PREFIX};
pub use previous::previous_dump_report;
#[cfg(feature = "http")]
pub(crate) use summary::top_sites;
pub use summary::{DumpFiles, DumpSummary, HeapCounters, SeriesPoint, TopSite, SUMMARY_FORMAT};
pub(crate) use trend::median as median_of;
pub use trend::{seconds_to_limit, theil_sen_slope};
pub use triggers::Reason;

use crate::detect::{Detector, SuspectTracker, VerdictKind};
use crate::early_wake as wake;
use dump::DumpWriter;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use triggers::{Observation, Triggers};

/// How much of the series a summary carries, and the trend can look back on.
const SERIES_SPAN: Duration = Duration::from_secs(600);
/// Most points the trend's pairwise slopes are computed over (evenly thinned beyond).
const TREND_MAX_POINTS: usize = 120;
/// Call sites listed in a summary.
const TOP_SITES: usize = 10;
/// How often the symbol cache is brought up to date, so a dump near the limit finds names
/// resolved.
const WARM_SYMBOLS_EVERY: Duration = Duration::from_secs(10);

/// Tick used for a while after an early wake.
const FOLLOW_UP_TICK: Duration = Duration::from_millis(50);
/// How long the short tick lasts after an early wake.
const FOLLOW_UP_SPAN: Duration = Duration::from_secs(3);

static RUNNING: AtomicBool = AtomicBool::new(false);
/// A pending request: 0 none, 1 API, 2 SIGUSR1.
static REQUEST: AtomicU8 = AtomicU8::new(0);
static DUMPS_WRITTEN: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static DUMP_ERRORS: AtomicU64 = AtomicU64::new(0);
static LAST: crate::fork::HeldAcrossFork<Mutex<Option<WatchReading>>> =
    crate::fork::HeldAcrossFork::new(crate::fork::Rank::Watch, &FORK_HOOKS, Mutex::new(None));
/// The running watch's dump directory, published at start and withdrawn when it stops: the
/// HTTP pages read it at each request, so a router or listener built before the watch, or with
/// no directory of its own, lists what the watch writes.
static RUNNING_DIR: crate::fork::HeldAcrossFork<Mutex<Option<PathBuf>>> =
    crate::fork::HeldAcrossFork::new(crate::fork::Rank::Watch, &FORK_HOOKS, Mutex::new(None));

/// Starts the watch. See [`WatchBuilder`].
#[derive(Debug)]
pub struct Watch;

impl Watch {
    /// A builder with the defaults: dump directory `./heapwatch-dumps`, thresholds 80/90/95 %,
    /// tick 1 s, 5 sets kept, horizon 60 s, limit from the cgroup.
    pub fn builder() -> WatchBuilder {
        WatchBuilder {
            config: WatchConfig::default(),
        }
    }
}

/// Settings for the watch thread; `HEAPWATCH_*` environment variables override them at
/// [`start`](WatchBuilder::start).
#[derive(Debug, Clone)]
pub struct WatchBuilder {
    config: WatchConfig,
}

impl WatchBuilder {
    /// Where dump sets are written (`HEAPWATCH_DIR`). Created if missing — at start and again
    /// before a set whenever it was deleted — with mode 0700 (see [`file_mode`]); an existing
    /// directory's mode is left as it is.
    ///
    /// [`file_mode`]: WatchBuilder::file_mode
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.dir = dir.into();
        self
    }
    /// Permission bits of dump files (`HEAPWATCH_FILE_MODE`, octal), default
    /// [`DEFAULT_FILE_MODE`] (0600, owner only); a directory the watch creates gets the same
    /// bits plus search where read is granted (0600 → 0700, 0640 → 0750). Bits outside 0666 are
    /// dropped and the owner's read and write always kept. The umask can still narrow them.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.config.file_mode = (mode & 0o666) | 0o600;
        self
    }
    /// A limit in bytes to use where no cgroup sets one (`HEAPWATCH_LIMIT`).
    pub fn limit(mut self, bytes: u64) -> Self {
        self.config.limit = Some(bytes);
        self
    }
    /// Fractions of the limit to dump at (`HEAPWATCH_THRESHOLDS`); each in (0, 1].
    pub fn thresholds(mut self, fractions: &[f64]) -> Self {
        let mut t: Vec<f64> = fractions
            .iter()
            .copied()
            .filter(|f| *f > 0.0 && *f <= 1.0)
            .collect();
        t.sort_by(f64::total_cmp);
        t.dedup();
        self.config.thresholds = t;
        self
    }
    /// How often to read the heap and the cgroup (`HEAPWATCH_TICK`).
    pub fn tick(mut self, tick: Duration) -> Self {
        self.config.tick = tick.max(Duration::from_millis(10));
        self
    }
    /// The sampling rate to set (`HEAPWATCH_SAMPLE_RATE`); see [`crate::set_sample_rate`].
    pub fn sample_rate(mut self, bytes: u64) -> Self {
        self.config.sample_rate = Some(bytes);
        self
    }
    /// How many dump sets the directory keeps (`HEAPWATCH_KEEP`).
    pub fn keep(mut self, sets: usize) -> Self {
        self.config.keep = sets.max(1);
        self
    }
    /// Dump when the trend predicts the limit within this time (`HEAPWATCH_HORIZON`).
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.config.horizon = horizon;
        self
    }
    /// Shortest time between two dumps; a threshold higher than the last dump's is exempt.
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.config.min_interval = interval;
        self
    }
    /// Holds `bytes` of memory and releases it just before a dump, for headroom.
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.config.reserve_bytes = bytes;
        self
    }
    /// Dumps on SIGUSR1. The handler only sets a flag and wakes the watch thread, then calls
    /// the handler the program had installed for SIGUSR1, if any; the program's disposition is
    /// put back when the watch stops.
    pub fn dump_on_sigusr1(mut self, on: bool) -> Self {
        self.config.on_sigusr1 = on;
        self
    }
    /// The leak detector's settings (window, floor window, significance…).
    pub fn detector(mut self, config: crate::detect::DetectorConfig) -> Self {
        self.config.detector = config;
        self
    }
    /// How often a profile snapshot is kept to find the growing call sites (default 60 s).
    pub fn suspect_interval(mut self, interval: Duration) -> Self {
        self.config.suspect_interval = interval.max(Duration::from_millis(100));
        self
    }
    /// How long after start the baseline of the differential flamegraph is taken (default
    /// 60 s, so start-up allocations are not counted as growth).
    pub fn warmup(mut self, warmup: Duration) -> Self {
        self.config.warmup = warmup;
        self
    }
    /// Reads this cgroup instead of the process's own (tests, unusual layouts).
    pub fn cgroup(mut self, cgroup: Cgroup) -> Self {
        self.config.cgroup = Some(cgroup);
        self
    }

    /// The configuration `start` would run with, after the environment's overrides.
    pub fn resolved(&self) -> WatchConfig {
        let mut config = self.config.clone();
        config.apply_env(|name| std::env::var(name).ok());
        config
    }

    /// Applies the environment and starts the watch thread. With `HEAPWATCH=off` nothing is
    /// started and the handle is inert.
    ///
    /// # Errors
    /// [`WatchError::AlreadyRunning`] if a watch is running in this process;
    /// [`WatchError::Spawn`] if the thread could not be started.
    pub fn start(self) -> Result<WatchHandle, WatchError> {
        // Before anything a forked child must forget (the running flag, a dump asked for
        // through the handle, even an inert one): the child hook runs once registered.
        crate::fork::register(crate::fork::Rank::Watch, &FORK_HOOKS);
        let config = self.resolved();
        if !config.enabled {
            tracing::info!("heapwatch: HEAPWATCH=off, not watching");
            return Ok(WatchHandle {
                thread: None,
                process: crate::fork::process_identity(),
            });
        }
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(WatchError::AlreadyRunning);
        }
        publish_dump_dir(Some(config.dir.clone()));
        if let Some(rate) = config.sample_rate {
            crate::set_sample_rate(rate);
        }
        if config.on_sigusr1 {
            install_sigusr1();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("heapwatch".to_owned())
            .spawn(move || {
                // The watch's own memory (series, detector, snapshots) is not the service's:
                // nothing this thread allocates is sampled, from its first allocation on.
                let _guard = crate::thread_state::ProfilerGuard::enter();
                Watcher::new(config).run(&thread_stop)
            });
        match spawned {
            Ok(join) => Ok(WatchHandle {
                thread: Some((join, stop)),
                process: crate::fork::process_identity(),
            }),
            Err(e) => {
                restore_sigusr1();
                publish_dump_dir(None);
                RUNNING.store(false, Ordering::Release);
                Err(WatchError::Spawn(e))
            }
        }
    }
}

/// Why the watch did not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// One watch per process: a handle to a running one exists.
    #[error("a heapwatch watch is already running in this process")]
    AlreadyRunning,
    /// The thread could not be spawned.
    #[error("cannot start the heapwatch thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The running watch. Dropping it stops the thread (after a dump in progress completes).
#[derive(Debug)]
pub struct WatchHandle {
    thread: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    /// The process that started the thread: a forked child inherits the handle but not the
    /// thread, and must neither join nor stop it.
    process: crate::fork::ProcessIdentity,
}

impl WatchHandle {
    /// Asks for a dump set now (rate-limited like every trigger); returns at once.
    pub fn dump_now(&self) {
        REQUEST.store(1, Ordering::Release);
        wake::wake();
    }

    /// Whether a watch thread is running behind this handle (`false` with `HEAPWATCH=off`, and
    /// in a forked child, which inherits the handle but not the thread).
    pub fn is_running(&self) -> bool {
        self.thread.is_some() && self.process.is_current()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if !self.process.is_current() {
            // A forked child's copy: the thread is the parent's. Joining it would wait on a
            // thread that does not exist here, and the running state is the child's own
            // (reset at the fork, perhaps a watch the child started since).
            if let Some((join, _stop)) = self.thread.take() {
                std::mem::forget(join);
            }
            return;
        }
        if let Some((join, stop)) = self.thread.take() {
            stop.store(true, Ordering::Release);
            wake::wake();
            let _ = join.join();
            restore_sigusr1();
            publish_dump_dir(None);
            RUNNING.store(false, Ordering::Release);
        }
    }
}

/// The watch's latest reading and its counts, for metrics and reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchReading {
    /// When it was taken (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// The limit in bytes, if any.
    pub limit_bytes: Option<u64>,
    /// Usage (cgroup, or the process's RSS without one).
    pub usage_bytes: Option<u64>,
    /// Working set.
    pub working_set_bytes: Option<u64>,
    /// Growth of the working set, bytes per second (robust slope over the trend window).
    pub slope_bytes_per_second: Option<f64>,
    /// Predicted seconds to the limit at that slope.
    pub eta_seconds: Option<f64>,
}

/// Dumps written since start, by reason kind.
pub fn dumps_written() -> [(&'static str, u64); 5] {
    ["threshold", "eta", "on_demand", "signal", "leak"].map(|kind| {
        (
            kind,
            DUMPS_WRITTEN[reason_index(kind)].load(Ordering::Relaxed),
        )
    })
}

/// Dump sets that could not be written since start.
pub fn dump_errors() -> u64 {
    DUMP_ERRORS.load(Ordering::Relaxed)
}

/// The watch thread's latest reading; `None` before its first tick. Published at the end of
/// each tick's decisions, after the allocator's early wake is armed for the next threshold.
pub fn last_reading() -> Option<WatchReading> {
    LAST.lock().ok()?.clone()
}

/// The directory the running watch writes its dump sets to (its builder's, or `HEAPWATCH_DIR`);
/// `None` when no watch runs (none started, stopped, or `HEAPWATCH=off`).
///
/// ```
/// // No watch in this process: nothing published.
/// assert_eq!(heapwatch::watch::running_dump_dir(), None);
/// ```
pub fn running_dump_dir() -> Option<PathBuf> {
    RUNNING_DIR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The directory the HTTP pages list when not given one: the running watch's, or without a
/// watch the one [`WatchBuilder::start`] would use by default (`HEAPWATCH_DIR` or
/// [`DEFAULT_DIR`]).
pub fn dump_dir() -> PathBuf {
    running_dump_dir().unwrap_or_else(|| Watch::builder().resolved().dir)
}

// The watch's published state, locked across a fork (see `fork`).
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let running_dir = RUNNING_DIR.for_fork(forking).lock();
        let last = LAST.for_fork(forking).lock();
        let previous_sigusr1 = PREVIOUS_SIGUSR1.for_fork(forking).lock();
        HELD_FOR_FORK.keep(
            forking,
            (
                running_dir.unwrap_or_else(PoisonError::into_inner),
                last.unwrap_or_else(PoisonError::into_inner),
                previous_sigusr1.unwrap_or_else(PoisonError::into_inner),
            ),
        );
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: Some(|locked| {
        forget_running_thread();
        // What the parent's watch published is not the child's. The child has one thread and
        // the locks were released: nothing holds them.
        if locked {
            let running_dir = RUNNING_DIR
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let last = LAST.lock().unwrap_or_else(PoisonError::into_inner).take();
            drop((running_dir, last));
        }
    }),
};

#[allow(clippy::type_complexity)]
static HELD_FOR_FORK: crate::fork::GuardSlot<(
    std::sync::MutexGuard<'static, Option<PathBuf>>,
    std::sync::MutexGuard<'static, Option<WatchReading>>,
    std::sync::MutexGuard<'static, Option<libc::sigaction>>,
)> = crate::fork::GuardSlot::new();

/// In a forked child: no watch thread runs there, whatever the parent ran, so one may start.
/// Only atomics: called whether or not the fork handler could take the locks.
fn forget_running_thread() {
    RUNNING.store(false, Ordering::Release);
    REQUEST.store(0, Ordering::Release);
    wake::disarm();
}

fn publish_dump_dir(dir: Option<PathBuf>) {
    // A poisoned lock still holds a valid `Option`: overwrite it.
    *RUNNING_DIR.lock().unwrap_or_else(PoisonError::into_inner) = dir;
}

fn reason_index(kind: &str) -> usize {
    match kind {
        "threshold" => 0,
        "eta" => 1,
        "on_demand" => 2,
        "signal" => 3,
        _ => 4,
    }
}

/// SIGUSR1 as it was before [`install_sigusr1`]: put back by [`restore_sigusr1`] when the watch
/// stops. Only touched at start and stop, never in the handler.
static PREVIOUS_SIGUSR1: crate::fork::HeldAcrossFork<Mutex<Option<libc::sigaction>>> =
    crate::fork::HeldAcrossFork::new(crate::fork::Rank::Watch, &FORK_HOOKS, Mutex::new(None));
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
    REQUEST.store(2, Ordering::Release);
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
fn install_sigusr1() {
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
fn restore_sigusr1() {
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

/// Memory charged to the process and where its limit comes from.
struct Memory {
    limit: Option<u64>,
    limit_source: &'static str,
    usage: Option<u64>,
    working_set: Option<u64>,
    oom_kills: Option<u64>,
}

/// The watch thread's state.
struct Watcher {
    config: WatchConfig,
    cgroup: Option<Cgroup>,
    machine_memory: Option<u64>,
    writer: DumpWriter,
    triggers: Triggers,
    series: VecDeque<SeriesPoint>,
    reserve: Vec<u8>,
    last_warm: Option<Instant>,
    detector: Detector,
    suspects: SuspectTracker,
    started: Instant,
    last_suspect_snapshot: Option<Instant>,
    /// A leak verdict waiting for its dump (held back by the rate limit).
    leak_dump_pending: bool,
}

impl Watcher {
    fn new(config: WatchConfig) -> Self {
        let cgroup = config.cgroup.clone().or_else(Cgroup::of_this_process);
        Watcher {
            cgroup,
            machine_memory: machine_memory(),
            writer: DumpWriter::new(config.dir.clone(), config.keep)
                .with_file_mode(config.file_mode),
            triggers: Triggers::new(
                &config.thresholds,
                config.hysteresis,
                config.horizon,
                config.min_interval,
            ),
            series: VecDeque::new(),
            reserve: Vec::new(),
            last_warm: None,
            detector: Detector::new(config.detector.clone()),
            suspects: SuspectTracker::default(),
            started: Instant::now(),
            last_suspect_snapshot: None,
            leak_dump_pending: false,
            config,
        }
    }

    /// Runs until `stop`; the caller holds the profiler guard for the thread.
    fn run(mut self, stop: &AtomicBool) {
        if let Err(e) = self.writer.prepare() {
            tracing::error!(dir = %self.writer.dir().display(), error = %e,
                "heapwatch: cannot create the dump directory; each dump will try again");
        }
        self.writer.prune();
        let memory = self.memory();
        previous::report_previous(self.writer.dir(), self.cgroup.as_ref(), memory.oom_kills);
        tracing::info!(
            dir = %self.writer.dir().display(),
            limit = memory.limit,
            limit_source = memory.limit_source,
            thresholds = ?self.config.thresholds,
            "heapwatch: watching"
        );
        self.take_reserve();
        // After an early wake, memory the heap just took is often not resident yet (a buffer
        // is allocated, then filled): look again at a short interval for a while, so the
        // working set is seen when it catches up rather than a whole tick later.
        let mut follow_up_until: Option<Instant> = None;
        while !stop.load(Ordering::Acquire) {
            self.tick();
            let now = Instant::now();
            let interval = match follow_up_until {
                Some(until) if now < until => self.config.tick.min(FOLLOW_UP_TICK),
                _ => self.config.tick,
            };
            if wake::sleep(interval) {
                follow_up_until = Some(Instant::now() + FOLLOW_UP_SPAN);
            }
        }
        wake::disarm();
    }

    fn memory(&self) -> Memory {
        if let Some(cgroup) = &self.cgroup {
            let reading = cgroup.read(self.machine_memory);
            if let (Some(limit), Some(_)) = (reading.limit, reading.usage) {
                return Memory {
                    limit: Some(limit),
                    limit_source: match cgroup.version {
                        CgroupVersion::V2 => "cgroup v2",
                        CgroupVersion::V1 => "cgroup v1",
                    },
                    usage: reading.usage,
                    working_set: reading.working_set(),
                    oom_kills: reading.oom_kills,
                };
            }
        }
        // Without a cgroup limit, a configured one stands in, measured against the process's
        // own resident memory: an unlimited cgroup is often shared (a whole VM or session),
        // so its usage is not this process's.
        let rss = process_rss();
        Memory {
            limit: self.config.limit,
            limit_source: if self.config.limit.is_some() {
                "configured"
            } else {
                "none"
            },
            usage: rss,
            working_set: rss,
            oom_kills: None,
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let unix_ms = unix_ms();
        let stats = crate::stats();
        let memory = self.memory();
        self.series.push_back(SeriesPoint {
            unix_ms,
            heap_live_bytes: stats.live_bytes,
            usage_bytes: memory.usage,
            working_set_bytes: memory.working_set,
            limit_bytes: memory.limit,
        });
        while self
            .series
            .front()
            .is_some_and(|p| unix_ms.saturating_sub(p.unix_ms) > SERIES_SPAN.as_millis() as u64)
        {
            self.series.pop_front();
        }

        self.detector.push(crate::detect::Point::reading(
            unix_ms,
            stats.live_bytes,
            memory.working_set,
            crate::detect::resident_bytes(),
        ));
        let previous = self.detector.verdict().kind;
        let verdict = self.detector.evaluate(memory.limit).clone();
        if verdict.kind != previous {
            report_verdict_change(previous, &verdict);
            if verdict.kind == VerdictKind::Leak {
                self.leak_dump_pending = true;
            }
        }
        self.observe_suspects(now, unix_ms);
        crate::detect::publish(crate::detect::DetectorReport {
            verdict,
            suspects: self.suspects.suspects(),
            baseline_unix_ms: self.suspects.baseline_unix_ms(),
        });

        let slope = self.slope(unix_ms);
        let eta = match (memory.limit, memory.working_set, slope) {
            (Some(limit), Some(ws), Some(slope)) => {
                seconds_to_limit(ws as f64, limit as f64, slope)
            }
            _ => None,
        };
        let fraction = match (memory.limit, memory.working_set) {
            (Some(limit), Some(ws)) if limit > 0 => Some(ws as f64 / limit as f64),
            _ => None,
        };
        let requested = match REQUEST.load(Ordering::Acquire) {
            1 => Some(Reason::OnDemand),
            2 => Some(Reason::Signal),
            _ if self.leak_dump_pending => Some(Reason::Leak),
            _ => None,
        };
        let seen = Observation {
            fraction,
            eta_seconds: eta,
        };
        if let Some(reason) = self.triggers.evaluate(now, seen, requested) {
            REQUEST.store(0, Ordering::Release);
            if reason == Reason::Leak {
                self.leak_dump_pending = false;
            }
            self.dump(&reason, &memory, fraction);
            self.triggers.dumped(now);
        }

        if fraction.is_none_or(|f| {
            f < self.config.thresholds.first().copied().unwrap_or(1.0) - self.config.hysteresis
        }) {
            self.take_reserve();
        }
        // Armed before the slower work below, so a spike during it still wakes us.
        self.arm_early_wake(stats.live_bytes, &memory);
        // Published once the tick's decisions are made and the wake is armed, so a reader that
        // sees a reading knows the watch is fully set up (the metrics below read it).
        if let Ok(mut last) = LAST.lock() {
            *last = Some(WatchReading {
                unix_ms,
                limit_bytes: memory.limit,
                usage_bytes: memory.usage,
                working_set_bytes: memory.working_set,
                slope_bytes_per_second: slope,
                eta_seconds: eta,
            });
        }
        crate::metrics_export::update();
        if self
            .last_warm
            .is_none_or(|t| now.duration_since(t) >= WARM_SYMBOLS_EVERY)
        {
            crate::warm_symbol_cache();
            self.last_warm = Some(now);
        }
    }

    /// Robust growth of the working set over the trend window, bytes per second.
    fn slope(&self, unix_ms: u64) -> Option<f64> {
        let window_ms = self.config.trend_window.as_millis() as u64;
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .filter(|p| unix_ms.saturating_sub(p.unix_ms) <= window_ms)
            .filter_map(|p| Some((p.unix_ms as f64 / 1000.0, p.working_set_bytes? as f64)))
            .collect();
        if points.len() < 5 {
            return None;
        }
        let step = points.len().div_ceil(TREND_MAX_POINTS);
        let thinned: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
        theil_sen_slope(&thinned)
    }

    /// Wakes this thread early when the heap grows by what separates the working set from the
    /// next threshold.
    fn arm_early_wake(&self, live_heap: u64, memory: &Memory) {
        match (
            memory.limit,
            memory.working_set,
            self.triggers.next_threshold(),
        ) {
            (Some(limit), Some(ws), Some(threshold)) => {
                let target_ws = (threshold * limit as f64) as u64;
                wake::arm(live_heap, live_heap + target_ws.saturating_sub(ws));
            }
            _ => wake::disarm(),
        }
    }

    /// Keeps a profile snapshot for the suspects every `suspect_interval` after warm-up.
    fn observe_suspects(&mut self, now: Instant, unix_ms: u64) {
        if now.duration_since(self.started) < self.config.warmup {
            return;
        }
        let due = self
            .last_suspect_snapshot
            .is_none_or(|t| now.duration_since(t) >= self.config.suspect_interval);
        if due {
            let first = self.suspects.baseline_unix_ms().is_none();
            self.suspects.observe(unix_ms, &crate::snapshot());
            self.last_suspect_snapshot = Some(now);
            if first {
                if let Some(lines) = self.suspects.baseline_lines() {
                    crate::detect::publish_baseline(lines);
                }
            }
        }
    }

    fn take_reserve(&mut self) {
        if self.config.reserve_bytes > 0 && self.reserve.is_empty() {
            // Written, not just reserved, so the pages are resident and count in the usage
            // they will give back.
            self.reserve = vec![0xa5; self.config.reserve_bytes];
        }
    }

    fn dump(&mut self, reason: &Reason, memory: &Memory, fraction: Option<f64>) {
        self.reserve = Vec::new();
        let unix_ms = unix_ms();
        let stem = self.writer.next_stem(unix_ms, &reason.slug());
        let profile = crate::snapshot();
        let mut summary = DumpSummary {
            format: SUMMARY_FORMAT.to_owned(),
            reason: reason.kind().to_owned(),
            reason_detail: reason.describe(),
            threshold: match reason {
                Reason::Threshold { threshold } => Some(*threshold),
                _ => None,
            },
            eta_seconds: match reason {
                Reason::Eta { seconds } => Some(*seconds),
                _ => None,
            },
            time: humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms))
                .to_string(),
            unix_ms,
            pid: std::process::id(),
            program: program_name(),
            limit_bytes: memory.limit,
            limit_source: memory.limit_source.to_owned(),
            usage_bytes: memory.usage,
            working_set_bytes: memory.working_set,
            usage_fraction: fraction,
            oom_kills: memory.oom_kills,
            heap: crate::stats().into(),
            profiler_bytes: crate::profiler_stats().profiler_bytes,
            sample_rate_bytes: crate::sample_rate(),
            top_sites: summary::top_sites(&profile, TOP_SITES),
            series: self.series.iter().copied().collect(),
            verdict: Some(self.detector.verdict().clone()),
            suspects: self.suspects.suspects(),
            files: DumpFiles::default(),
        };
        let diff_svg = (*reason == Reason::Leak).then(|| {
            let mut svg = Vec::new();
            if let Err(e) = self.suspects.write_diff_flamegraph(&profile, &mut svg) {
                tracing::warn!(error = %e, "heapwatch: cannot draw the differential flamegraph");
            }
            svg
        });
        match self
            .writer
            .write(&stem, &profile, &mut summary, diff_svg.as_deref())
        {
            Ok(set) => {
                DUMPS_WRITTEN[reason_index(reason.kind())].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reason = reason.kind(),
                    detail = %summary.reason_detail,
                    profile = %set.profile().display(),
                    top_site = summary.top_sites.first().map(|s| s.function.as_str()).unwrap_or("-"),
                    "heapwatch: dump written"
                );
            }
            Err(e) => {
                DUMP_ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason = reason.kind(),
                    dir = %self.writer.dir().display(),
                    error = %e,
                    "heapwatch: dump failed; nothing was left behind"
                );
            }
        }
    }
}

/// Every verdict change is an event; the ones that call for action are warnings.
fn report_verdict_change(previous: VerdictKind, verdict: &crate::detect::Verdict) {
    let suspects = crate::detect::latest()
        .map(|r| r.suspects)
        .unwrap_or_default();
    let top_suspect = suspects.first().map(|s| s.function.as_str()).unwrap_or("-");
    match verdict.kind {
        VerdictKind::Leak | VerdictKind::LimitTooLow | VerdictKind::Fragmentation => {
            tracing::warn!(
                from = previous.name(),
                to = verdict.kind.name(),
                confidence = verdict.confidence,
                floor_slope_bytes_per_second = verdict.floor_slope_bytes_per_second,
                eta_seconds = verdict.eta_seconds,
                top_suspect,
                "heapwatch: verdict {}: {}",
                verdict.kind.name(),
                verdict.advice
            )
        }
        _ => tracing::info!(
            from = previous.name(),
            to = verdict.kind.name(),
            confidence = verdict.confidence,
            "heapwatch: verdict {}: {}",
            verdict.kind.name(),
            verdict.advice
        ),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The process's resident set size, from `/proc/self/statm`.
fn process_rss() -> Option<u64> {
    crate::detect::process_rss()
}
