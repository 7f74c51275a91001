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

mod config;
mod dump;
mod dump_summary;
mod namer;
mod naming;
mod previous;
mod raw_dump;
mod raw_pprof;
mod request;
mod running;
mod signal;
mod thread;
mod tick;
mod triggers;

pub use crate::memory::{machine_memory, Cgroup, CgroupReading, CgroupVersion};
pub use config::{
    parse_bytes, parse_duration, parse_file_mode, parse_thresholds, DumpNaming, WatchConfig,
    DEFAULT_DIR, DEFAULT_FILE_MODE, DEFAULT_HORIZON, DEFAULT_KEEP, DEFAULT_THRESHOLDS,
    DEFAULT_TICK, SMALL_LIMIT_BYTES,
};
#[cfg(feature = "http")]
pub(crate) use dump::{is_served, read_served_file};
pub use dump::{list_sets, read_summary, DumpSet, DUMP_PREFIX};
#[cfg(feature = "http")]
pub(crate) use dump_summary::{top_sites, top_spans, TOP_SPANS};
pub use dump_summary::{
    DumpFiles, DumpSummary, HeapCounters, SeriesPoint, TopSite, SUMMARY_FORMAT,
};
pub use naming::{symbolize_set, SymbolizeSetError};
pub use previous::previous_dump_report;
pub use triggers::Reason;

use crate::early_wake as wake;
use crate::published::publish_dump_dir;
use signal::{install_sigusr1, restore_sigusr1};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use thread::Watcher;

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
    /// Who names the dumps written near the limit (`HEAPWATCH_NAMING`: `auto`,
    /// `in-process`, `next-instance`); see [`DumpNaming`].
    pub fn naming(mut self, naming: DumpNaming) -> Self {
        self.config.naming = naming;
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
        crate::fork::register(crate::fork::Rank::Watch, &signal::FORK_HOOKS);
        let config = self.resolved();
        if !config.enabled {
            tracing::info!("heapwatch: HEAPWATCH=off, not watching");
            return Ok(WatchHandle {
                thread: None,
                process: crate::fork::process_identity(),
            });
        }
        if !running::claim() {
            return Err(WatchError::AlreadyRunning);
        }
        publish_dump_dir(Some(config.dir.clone()));
        if let Some(rate) = config.sample_rate {
            crate::thread_state::set_sample_rate(rate);
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
                running::release();
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
        request::ask(request::DumpRequest::OnDemand);
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
            running::release();
        }
    }
}

/// The directory the HTTP pages list when not given one: the running watch's, or without a
/// watch the one [`WatchBuilder::start`] would use by default (`HEAPWATCH_DIR` or
/// [`DEFAULT_DIR`]).
pub fn dump_dir() -> PathBuf {
    crate::published::running_dump_dir().unwrap_or_else(|| Watch::builder().resolved().dir)
}
