//! libgcc's unwinds, fenced against fork where they walk the loader's list.
//!
//! libgcc's unwinder finds each frame's unwind tables through glibc: with `_dl_find_object`
//! (glibc 2.35+, libgcc 12+), lock-free; before that, with `dl_iterate_phdr`, which holds the
//! loader's lock while it walks — a lock glibc does not reset in a forked child. A fork while
//! another thread's sampled allocation is being unwound so leaves the child's copy of the lock
//! held by a thread it does not have, and the child's first unwind (its first sampled
//! allocation, a panic) waits for ever. heapwatch's own walks of that list are held off a fork
//! by a lock (`Rank::Loader`); the unwinds of samples cannot wait for a lock (a sample must
//! not wait on a fork), so on such a glibc they are fenced instead:
//!
//! * each libgcc unwind of a sample counts itself in flight, then looks at the fence; raised,
//!   it does not unwind (the sample keeps no stack: this happens only while a fork is being
//!   prepared);
//! * the prepare handler raises the fence, then waits for the unwinds in flight to end
//!   (microseconds each: they wait on nothing of heapwatch's);
//! * both sides lower it after the fork; in the child only the forking thread's own unwind,
//!   if the fork interrupted one, is still in flight.
//!
//! Whether to fence is decided once, from `gnu_get_libc_version()`: before 2.35, or a version
//! that does not read as `MAJOR.MINOR`, fences. A libgcc older than 12 on a glibc 2.35+ (one
//! not built against `_dl_find_object`) also walks the list; distributions that ship glibc
//! 2.35+ ship a libgcc 12+, and this case is not detected.

use crate::fork::{Hooks, Rank};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

const UNDECIDED: u8 = 0;
const UNFENCED: u8 = 1;
const FENCED: u8 = 2;

static DECISION: AtomicU8 = AtomicU8::new(UNDECIDED);
/// Raised while a fork is being prepared.
static RAISED: AtomicBool = AtomicBool::new(false);
/// Unwinds under way that passed the fence.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's unwind is counted in [`IN_FLIGHT`].
    static IN_FLIGHT_HERE: Cell<bool> = const { Cell::new(false) };
}

static FORK_HOOKS: Hooks = Hooks {
    take: |_| {
        RAISED.store(true, Ordering::SeqCst);
        // The forking thread's own unwind, if the fork came from inside it (a handler that
        // forks, interrupting the CPU sampler's walk), ends only after the fork.
        let own = usize::from(IN_FLIGHT_HERE.with(Cell::get));
        while IN_FLIGHT.load(Ordering::SeqCst) > own {
            std::thread::yield_now();
        }
    },
    release: |_| RAISED.store(false, Ordering::SeqCst),
    // The other threads' unwinds do not exist here. Atomics and a thread-local `Cell` only.
    in_child: Some(|_| {
        let own = IN_FLIGHT_HERE.with(Cell::get);
        IN_FLIGHT.store(usize::from(own), Ordering::SeqCst);
        RAISED.store(false, Ordering::SeqCst);
    }),
};

/// Whether libgcc's unwinds must be fenced in this process.
#[inline]
pub(super) fn needed() -> bool {
    match DECISION.load(Ordering::Relaxed) {
        UNFENCED => false,
        FENCED => true,
        _ => decide(),
    }
}

#[cold]
fn decide() -> bool {
    // Read without allocating: the first unwind of a sample decides, inside the allocator.
    let fenced = glibc_version().is_none_or(needed_for);
    if fenced {
        // Before any unwind is fenced, from the first unwind: on such a glibc the caching
        // unwinder gives every stack to libgcc before taking its own locks, so none of a
        // higher rank is held here (see `fork` on registering).
        crate::fork::register(Rank::LibgccUnwinds, &FORK_HOOKS);
    }
    DECISION.store(if fenced { FENCED } else { UNFENCED }, Ordering::Relaxed);
    fenced
}

/// The running glibc's version, as `gnu_get_libc_version()` reports it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_version() -> Option<&'static str> {
    extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc's `gnu_get_libc_version` takes nothing and returns a pointer to a static,
    // NUL-terminated string that lives as long as the process.
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    version.to_str().ok()
}

/// Not glibc: its libgcc unwinds are not the ones described here; nothing is fenced.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_version() -> Option<&'static str> {
    Some("2.35")
}

/// Whether glibc `version` (`2.34`, `2.35.1`) makes libgcc walk the loader's list: before
/// 2.35, or unreadable (assumed old).
pub(super) fn needed_for(version: &str) -> bool {
    let mut parts = version.trim().split('.');
    let number = |part: Option<&str>| {
        part.and_then(|part| {
            let digits = part.split(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse::<u32>().ok()
        })
    };
    match (number(parts.next()), number(parts.next())) {
        (Some(major), Some(minor)) => (major, minor) < (2, 35),
        _ => true,
    }
}

/// Fences (`true`) or unfences every later unwind, whatever the glibc: test support.
pub(super) fn force(fenced: bool) {
    if fenced {
        crate::fork::register(Rank::LibgccUnwinds, &FORK_HOOKS);
    }
    DECISION.store(if fenced { FENCED } else { UNFENCED }, Ordering::Relaxed);
}

/// An unwind counted in flight; ends it when dropped. Holds whether this thread already had
/// one in flight (the CPU sampler's signal handler can interrupt an unwind of its thread).
pub(super) struct InFlight {
    outer: bool,
}

/// Counts an unwind in flight; `None` while a fork is being prepared (do not unwind).
pub(super) fn enter() -> Option<InFlight> {
    crate::fork::register(Rank::LibgccUnwinds, &FORK_HOOKS);
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    if RAISED.load(Ordering::SeqCst) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let outer = IN_FLIGHT_HERE.with(|here| here.replace(true));
    Some(InFlight { outer })
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT_HERE.with(|here| here.set(self.outer));
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_35_or_unreadable_are_fenced() {
        for old in [
            "2.17",
            "2.31",
            "2.34",
            "2.34.9000",
            "1.99",
            "",
            "glibc",
            "2",
            "2.x",
        ] {
            assert!(needed_for(old), "{old:?}");
        }
        for new in [
            "2.35", "2.36", "2.40.1", "2.100", "3.0", " 2.39\n", "2.38-dev",
        ] {
            assert!(!needed_for(new), "{new:?}");
        }
    }

    // The only test that touches the fence's counts (nothing here forks, and this glibc has
    // sampled stacks unwound unfenced unless forced).
    #[test]
    fn a_raised_fence_refuses_and_a_child_counts_only_its_own_unwind() {
        let in_child = FORK_HOOKS.in_child.expect("a child hook");
        RAISED.store(true, Ordering::SeqCst);
        assert!(enter().is_none(), "refused while a fork is prepared");
        assert_eq!(IN_FLIGHT.load(Ordering::SeqCst), 0);
        RAISED.store(false, Ordering::SeqCst);

        // Another thread's unwind at the fork: it does not exist in the child.
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        in_child(true);
        assert_eq!(IN_FLIGHT.load(Ordering::SeqCst), 0);

        // The forking thread's own (a fork from a signal handler that interrupted it): it
        // goes on in the child, and ends there.
        let own = enter().expect("not raised");
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        in_child(false);
        assert_eq!(IN_FLIGHT.load(Ordering::SeqCst), 1);
        drop(own);
        assert_eq!(IN_FLIGHT.load(Ordering::SeqCst), 0);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_glibc_is_read() {
        let version = glibc_version().expect("a version");
        assert!(version.starts_with("2."), "{version}");
    }
}
