//! The namer: a second background thread that does the watch's slow naming work, so that the
//! watch thread is free to write a dump the moment memory runs short — even while a binary's
//! line tables are being loaded. It names the sets earlier instances left (at start), names
//! new stacks as they appear (the symbolizer's cache, read by the dump near the limit), and
//! names the watch's own sets written before naming, each only while the watch reports no
//! pressure. The watch talks to it through one small mutex, never held during the work.

use super::config::DumpNaming;
use super::dump::{DumpSet, DumpWriter};
use super::naming::{self, Naming};
use crate::memory::Cgroup;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the symbol cache is brought up to date at the least, so a dump near the limit
/// finds names resolved; sooner whenever the table has new stacks.
const WARM_SYMBOLS_EVERY: Duration = Duration::from_secs(10);
/// How long the namer waits for news from the watch before looking again on its own.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// What the watch tells the namer.
#[derive(Default)]
struct Inbox {
    /// The watch's sets written before naming, oldest first.
    unnamed: Vec<DumpSet>,
    /// The watch's latest word on memory.
    pressure: bool,
    stop: bool,
}

struct Shared {
    inbox: Mutex<Inbox>,
    news: Condvar,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the namer needs to know of the watch when it starts.
pub(super) struct NamerSetup {
    pub(super) naming: DumpNaming,
    pub(super) writer: DumpWriter,
    pub(super) cgroup: Option<Cgroup>,
    pub(super) oom_kills: Option<u64>,
}

/// The watch's handle on the namer thread; dropping it stops the thread, after the set being
/// named, if any.
pub(super) struct Namer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Namer {
    /// Starts the thread. It first names the sets earlier instances left and reports the
    /// newest of them. If the thread cannot be started, the sets stay unnamed (the next
    /// instance, or `heapwatch symbolize`, names them) and the report is made here.
    pub(super) fn start(setup: NamerSetup) -> Namer {
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            news: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        // What the report needs, kept here should the thread not start (it takes the setup).
        let report_here = (
            setup.writer.dir().to_path_buf(),
            setup.cgroup.clone(),
            setup.oom_kills,
        );
        let spawned = std::thread::Builder::new()
            .name("heapwatch-names".to_owned())
            .spawn(move || {
                // Its tables and names are heapwatch's, not the service's.
                let _guard = crate::thread_state::ProfilerGuard::enter();
                run(setup, &theirs);
            });
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(error) => {
                tracing::warn!(%error, "heapwatch: cannot start the naming thread; dumps near \
                    the limit stay unnamed until the next instance names them");
                let (dir, cgroup, oom_kills) = report_here;
                super::previous::report_previous(&dir, cgroup.as_ref(), oom_kills);
                None
            }
        };
        Namer { shared, thread }
    }

    /// The watch's word on memory after a tick: under pressure the namer starts nothing new.
    pub(super) fn set_pressure(&self, pressure: bool) {
        let mut inbox = self.shared.inbox();
        let eased = inbox.pressure && !pressure;
        inbox.pressure = pressure;
        drop(inbox);
        if eased {
            self.shared.news.notify_one();
        }
    }

    /// A set the watch wrote before naming, to name once the pressure has passed.
    pub(super) fn name_later(&self, set: DumpSet) {
        self.shared.inbox().unnamed.push(set);
        self.shared.news.notify_one();
    }
}

impl Drop for Namer {
    fn drop(&mut self) {
        self.shared.inbox().stop = true;
        self.shared.news.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut setup: NamerSetup, shared: &Shared) {
    // Before the report, so that it names what grew: a set the previous instance wrote near
    // its limit carries addresses only.
    naming::name_predecessors(&mut setup.writer);
    if setup.naming == DumpNaming::NextInstance {
        // A small container: the tables that named them are not kept.
        crate::symbolize::release_loaded();
    }
    report(&setup);
    let mut last_warm: Option<Instant> = None;
    let mut stacks_warmed = 0;
    let mut first_round = true;
    loop {
        let (sets, pressure) = {
            let mut inbox = shared.inbox();
            if inbox.stop {
                return;
            }
            if !std::mem::take(&mut first_round) {
                // The first round goes at once: the tables are loaded when the watch starts.
                inbox = shared
                    .news
                    .wait_timeout(inbox, IDLE_WAIT)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if inbox.stop {
                return;
            }
            let sets = if inbox.pressure {
                Vec::new()
            } else {
                std::mem::take(&mut inbox.unnamed)
            };
            (sets, inbox.pressure)
        };
        if pressure || setup.naming != DumpNaming::InProcess {
            continue;
        }
        let stacks = crate::table::profiler_stats().stacks;
        let due = last_warm.is_none_or(|t| t.elapsed() >= WARM_SYMBOLS_EVERY);
        if due || stacks != stacks_warmed {
            crate::symbolize::warm_symbol_cache();
            stacks_warmed = stacks;
        }
        last_warm = Some(last_warm.filter(|_| !due).unwrap_or_else(Instant::now));
        for (index, set) in sets.iter().enumerate() {
            let mut inbox = shared.inbox();
            if inbox.pressure {
                // Pressure again: the rest waits for it to pass.
                let mut rest = sets[index..].to_vec();
                rest.append(&mut inbox.unnamed);
                inbox.unnamed = rest;
                break;
            }
            drop(inbox);
            name_own_set(&mut setup.writer, set);
        }
    }
}

fn name_own_set(writer: &mut DumpWriter, set: &DumpSet) {
    match naming::name_set(writer, set) {
        Ok(Naming::Named | Naming::AlreadyNamed) => {}
        Ok(Naming::NotThisProgram { mappings }) => tracing::warn!(
            set = %set.stem,
            mappings = ?mappings,
            "heapwatch: none of the dump's addresses could be named"
        ),
        // Rotated away meanwhile, or the directory is gone: nothing left to name.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(
            set = %set.stem,
            %error,
            "heapwatch: cannot name a dump written near the limit"
        ),
    }
}

fn report(setup: &NamerSetup) {
    super::previous::report_previous(setup.writer.dir(), setup.cgroup.as_ref(), setup.oom_kills);
}
