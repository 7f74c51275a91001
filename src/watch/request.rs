//! Dump requests from outside the watch thread: the API ([`WatchHandle::dump_now`]) and
//! SIGUSR1. One atomic, so the signal handler can ask; the request stays pending until a tick
//! decides a dump (the rate limit may hold it back), and any dump answers it.
//!
//! [`WatchHandle::dump_now`]: super::WatchHandle::dump_now

use std::sync::atomic::{AtomicU8, Ordering};

/// A request for a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum DumpRequest {
    /// Through the API.
    OnDemand = 1,
    /// SIGUSR1.
    Signal = 2,
}

const NONE: u8 = 0;

static PENDING: AtomicU8 = AtomicU8::new(NONE);

/// Asks for a dump. Async-signal-safe: one atomic store.
pub(crate) fn ask(request: DumpRequest) {
    PENDING.store(request as u8, Ordering::Release);
}

/// The pending request, if any; it stays pending.
pub(crate) fn pending() -> Option<DumpRequest> {
    match PENDING.load(Ordering::Acquire) {
        1 => Some(DumpRequest::OnDemand),
        2 => Some(DumpRequest::Signal),
        _ => None,
    }
}

/// Answers the pending request (a dump was decided), or forgets it (a forked child).
pub(crate) fn clear() {
    PENDING.store(NONE, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stays_pending_until_cleared_and_the_latest_wins() {
        clear();
        assert_eq!(pending(), None);
        ask(DumpRequest::OnDemand);
        assert_eq!(pending(), Some(DumpRequest::OnDemand));
        assert_eq!(pending(), Some(DumpRequest::OnDemand));
        ask(DumpRequest::Signal);
        assert_eq!(pending(), Some(DumpRequest::Signal));
        clear();
        assert_eq!(pending(), None);
    }
}
