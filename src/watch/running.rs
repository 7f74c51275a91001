//! One watch per process: the flag a starting watch claims, and what a forked child forgets of
//! its parent's watch (whose thread it does not have).

use super::request;
use crate::early_wake as wake;
use std::sync::atomic::{AtomicBool, Ordering};

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Claims the process's one watch; `false` if a watch runs already.
pub(super) fn claim() -> bool {
    !RUNNING.swap(true, Ordering::AcqRel)
}

/// Gives the claim back: the watch stopped, or did not start.
pub(super) fn release() {
    RUNNING.store(false, Ordering::Release);
}

/// In a forked child: no watch thread runs there, whatever the parent ran, so one may start.
/// Only atomics: called whether or not the fork handler could take the locks.
pub(super) fn forget_in_child() {
    release();
    request::clear();
    wake::disarm();
}
