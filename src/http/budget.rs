//! The process-wide budget for the memory the pages spend answering: every page reserves what
//! it will hold before it holds it (its copy of the sample table, its names, its body), from
//! one budget shared by the built-in listener's workers and the axum router. A page that
//! cannot have its reservation answers `503 Service Unavailable` with `Retry-After` instead of
//! growing the heap; the reservation is given back when the page has rendered.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// 32 MiB: four heavy pages rendering at once over a heap of ~72,000 live samples fit in it
/// (each needs a few MiB once stacks are shared between spans), and it keeps what answering
/// costs well under the 64 MiB a service that sizes its limit tightly can spare.
pub const DEFAULT_RESPONSE_BUDGET_BYTES: usize = 32 << 20;

/// Seconds a refused client is told to wait: one render of the heaviest page.
pub(crate) const RETRY_AFTER_SECONDS: u32 = 1;

static BUDGET_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_RESPONSE_BUDGET_BYTES);
static RESERVED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A forked child runs none of its parent's renders: their reservations would hold its budget
/// for good. A reservation the forking thread itself held is given back saturating, so it
/// cannot wrap the count.
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |_| {},
    release: |_| {},
    in_child: Some(|_| RESERVED_BYTES.store(0, Ordering::Release)),
};

/// Gives `bytes` back, never below zero (see [`FORK_HOOKS`]).
fn give_back(bytes: usize) {
    let _ = RESERVED_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
        Some(held.saturating_sub(bytes))
    });
}

/// Sets the process-wide budget for the memory pages spend answering (default
/// [`DEFAULT_RESPONSE_BUDGET_BYTES`]) and returns the previous one. Reservations already held
/// are kept; new ones must fit under the new budget.
///
/// ```
/// let previous = heapwatch::http::set_response_budget(16 << 20);
/// heapwatch::http::set_response_budget(previous);
/// ```
pub fn set_response_budget(bytes: usize) -> usize {
    BUDGET_BYTES.swap(bytes, Ordering::AcqRel)
}

/// The process-wide budget for the memory pages spend answering.
pub fn response_budget() -> usize {
    BUDGET_BYTES.load(Ordering::Acquire)
}

/// Bytes of the budget held by pages rendering now.
#[cfg(test)]
pub(crate) fn reserved_bytes() -> usize {
    RESERVED_BYTES.load(Ordering::Acquire)
}

/// A page's share of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    bytes: usize,
}

impl Reservation {
    /// `bytes` of the budget, or `None` if they do not fit beside what others hold.
    pub(crate) fn take(bytes: usize) -> Option<Reservation> {
        crate::fork::register(crate::fork::Rank::ResponseBudget, &FORK_HOOKS);
        let mut reservation = Reservation { bytes: 0 };
        reservation.grow(bytes).then_some(reservation)
    }

    /// Adds `bytes` to the reservation; `false`, with it unchanged, if they do not fit.
    pub(crate) fn grow(&mut self, bytes: usize) -> bool {
        let budget = response_budget();
        let taken = RESERVED_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|&total| total <= budget)
        });
        if taken.is_ok() {
            self.bytes += bytes;
        }
        taken.is_ok()
    }
}

impl Reservation {
    /// Gives back all but `bytes` of the reservation (what a rendered body still holds).
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let given_back = self.bytes.saturating_sub(bytes);
        give_back(given_back);
        self.bytes -= given_back;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        give_back(self.bytes);
    }
}

/// A page's body, each growth of its buffer reserved first: past the budget (or past the
/// page's own maximum) a write fails and [`over_budget`](Self::over_budget) says why.
pub(crate) struct BoundedBody<'r> {
    buffer: Vec<u8>,
    reservation: &'r mut Reservation,
    max_bytes: usize,
    over_budget: bool,
}

impl<'r> BoundedBody<'r> {
    /// An empty body of at most `max_bytes`, its growth charged to `reservation`.
    pub(crate) fn new(reservation: &'r mut Reservation, max_bytes: usize) -> Self {
        BoundedBody {
            buffer: Vec::new(),
            reservation,
            max_bytes,
            over_budget: false,
        }
    }

    /// Whether a write was refused for want of budget or past the page's maximum.
    pub(crate) fn over_budget(&self) -> bool {
        self.over_budget
    }

    /// The body written.
    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buffer
    }
}

impl io::Write for BoundedBody<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let needed = self.buffer.len().saturating_add(bytes.len());
        if needed > self.buffer.capacity() {
            // Doubling, as Vec would, but capped at the page's maximum; every byte of
            // capacity reserved before it is allocated.
            let capacity = needed
                .max(self.buffer.capacity().saturating_mul(2))
                .max(4096)
                .min(self.max_bytes);
            if needed > capacity || !self.reservation.grow(capacity - self.buffer.capacity()) {
                self.over_budget = true;
                return Err(io::Error::other("the page's memory budget is spent"));
            }
            self.buffer.reserve_exact(capacity - self.buffer.len());
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_body_stops_at_its_maximum_and_gives_its_reservation_back() {
        let before = reserved_bytes();
        {
            let mut reservation = Reservation::take(0).expect("nothing fits");
            let mut body = BoundedBody::new(&mut reservation, 10_000);
            body.write_all(&[1; 6000]).expect("under the maximum");
            assert!(body.write_all(&[1; 6000]).is_err());
            assert!(body.over_budget());
            assert!(reserved_bytes() >= before + 6000);
        }
        assert!(reserved_bytes() <= before + DEFAULT_RESPONSE_BUDGET_BYTES);
    }

    #[test]
    fn past_the_budget_a_reservation_is_refused() {
        assert!(Reservation::take(usize::MAX).is_none());
        let mut small = Reservation::take(1).expect("one byte fits");
        assert!(!small.grow(usize::MAX - 1));
        assert_eq!(small.bytes, 1);
    }
}
