//! Exact allocation figures of a scope, for tests and benchmarks: what the calling thread
//! allocated, freed and held between two points, counted on every allocation (not sampled).
//!
//! ```
//! #[global_allocator]
//! static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
//!
//! let (words, allocations) = heapwatch::measure(|| {
//!     "a b c".split(' ').map(str::to_owned).collect::<Vec<String>>()
//! });
//! assert_eq!(words.len(), 3);
//! assert_eq!(allocations.blocks, 4); // three strings and the vector
//! assert_eq!(allocations.held_blocks, 4); // all four are returned
//! ```
//!
//! **Only the calling thread counts.** Allocations made by other threads meanwhile — threads
//! the closure spawns, a runtime's workers, tests running in parallel — are not in the figures;
//! frees on this thread of blocks other threads allocated are. To measure work the closure hands
//! to other threads, measure inside those threads (each scope is per thread), or read
//! [`stats`](crate::stats), which sums all threads.
//!
//! **Cost.** Opening and closing a scope reads the thread's counters (about 9 ns, see the
//! guide's performance page). Inside a scope every allocation of the thread takes the allocator's slow
//! path, which keeps the scope's peak (about 10 ns more per allocation); frees cost what they
//! always do. Outside scopes nothing changes.
//!
//! [`assert_allocations!`](crate::assert_allocations) and [`check_allocations`] hold a scope
//! to a budget and name the call sites that allocated.

mod budget;
mod scope;
mod site_log;

pub use budget::{assert_within, check_allocations, AllocationSite, Budget, OverBudget};
#[cfg_attr(not(feature = "criterion"), allow(unused_imports))]
pub(crate) use scope::allocated_so_far;
pub use scope::{measure, AllocationScope, Allocations};
pub(crate) use site_log::{log_captured, logging};
