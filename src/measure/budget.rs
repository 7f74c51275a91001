//! Allocation budgets for tests: a closure may allocate at most so many blocks or bytes on the
//! calling thread; past that, the failure names the functions that allocated.

use super::scope::{AllocationScope, Allocations};
use super::site_log::{self, SiteLog};
use crate::profile::SampleType;
use crate::table::{RawSnapshot, RawStack, RawStackTotals};

/// The most a closure may allocate on the calling thread; built from [`Budget::new`] (no limit)
/// or [`Budget::none`] (no allocation at all) by adding limits.
///
/// ```
/// let budget = heapwatch::Budget::new().max_blocks(3).max_bytes(1024);
/// # let _ = budget;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    max_blocks: Option<u64>,
    max_bytes: Option<u64>,
    max_peak_bytes: Option<u64>,
}

impl Budget {
    /// No limit yet.
    pub const fn new() -> Budget {
        Budget {
            max_blocks: None,
            max_bytes: None,
            max_peak_bytes: None,
        }
    }

    /// No allocation at all.
    pub const fn none() -> Budget {
        Budget::new().max_blocks(0)
    }

    /// At most `blocks` allocations (`alloc`, `alloc_zeroed`, `realloc`).
    pub const fn max_blocks(mut self, blocks: u64) -> Budget {
        self.max_blocks = Some(blocks);
        self
    }

    /// At most `bytes` allocated in all.
    pub const fn max_bytes(mut self, bytes: u64) -> Budget {
        self.max_bytes = Some(bytes);
        self
    }

    /// Live bytes at most `bytes` above their level at the start, at any moment.
    pub const fn max_peak_bytes(mut self, bytes: u64) -> Budget {
        self.max_peak_bytes = Some(bytes);
        self
    }

    /// The limits `allocations` broke, each as "what (at most what)".
    fn broken_by(&self, allocations: &Allocations) -> Vec<String> {
        let limits = [
            (self.max_blocks, allocations.blocks, "blocks"),
            (self.max_bytes, allocations.bytes, "bytes"),
            (self.max_peak_bytes, allocations.peak_bytes, "bytes at peak"),
        ];
        limits
            .into_iter()
            .filter_map(|(limit, actual, what)| {
                let limit = limit?;
                (actual > limit).then(|| format!("{actual} {what} (at most {limit})"))
            })
            .collect()
    }
}

/// A function that allocated within a budget check, as named in its failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationSite {
    /// The innermost function outside the allocator, std and the other
    /// [`Plumbing`](crate::Plumbing).
    pub function: String,
    /// Blocks it allocated.
    pub blocks: u64,
    /// Bytes it allocated.
    pub bytes: u64,
}

/// A budget check that failed: what was allocated, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// The limits broken, as "5 blocks (at most 3)".
    pub broken: Vec<String>,
    /// What the closure allocated.
    pub allocations: Allocations,
    /// Where, most blocks first.
    pub sites: Vec<AllocationSite>,
    /// Blocks and bytes whose call sites were not kept (more than 256 distinct stacks).
    pub unplaced: (u64, u64),
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "allocation budget exceeded: {}; {}",
            self.broken.join(", "),
            self.allocations
        )?;
        if !self.sites.is_empty() {
            write!(f, "\nallocated at (blocks, bytes, function):")?;
        }
        for site in &self.sites {
            write!(
                f,
                "\n  {:>6} {:>10}  {}",
                site.blocks, site.bytes, site.function
            )?;
        }
        if self.unplaced.0 > 0 {
            write!(
                f,
                "\n  {:>6} {:>10}  (more call sites than were kept)",
                self.unplaced.0, self.unplaced.1
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for OverBudget {}

/// Runs `f`, counting what the calling thread allocates, and holds it to `budget`: `Err` names
/// the functions that allocated. Only the calling thread counts, so checks in tests that run
/// in parallel see only their own allocations.
///
/// The call site of every allocation is recorded while `f` runs (a stack capture each, about a
/// microsecond): meant for closures that allocate little. For figures alone, see
/// [`measure`](fn@crate::measure).
///
/// ```
/// #[global_allocator]
/// static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
///
/// use heapwatch::{check_allocations, Budget};
/// let (sum, within) = check_allocations(Budget::none(), || (1..=10).sum::<u32>());
/// assert_eq!(sum, 55);
/// assert!(within.is_ok());
///
/// let (_, over) = check_allocations(Budget::none(), || vec![1u8; 10]);
/// let over = over.unwrap_err();
/// assert_eq!(over.allocations.blocks, 1);
/// assert!(!over.sites.is_empty());
/// ```
pub fn check_allocations<T>(
    budget: Budget,
    f: impl FnOnce() -> T,
) -> (T, Result<Allocations, OverBudget>) {
    let mut log = SiteLog::new();
    let scope = AllocationScope::begin();
    let out = {
        let _logging = site_log::activate(&mut log);
        f()
    };
    let allocations = scope.end();
    let broken = budget.broken_by(&allocations);
    if broken.is_empty() {
        return (out, Ok(allocations));
    }
    let unplaced = log.unplaced;
    let over = OverBudget {
        broken,
        allocations,
        sites: sites_of(log),
        unplaced,
    };
    (out, Err(over))
}

/// Runs `f` and returns its result, panicking if it allocated beyond `budget` on the calling
/// thread; the message names the functions that allocated. What
/// [`assert_allocations!`](crate::assert_allocations) expands to.
///
/// # Panics
/// When the budget is exceeded, at the caller's line (`#[track_caller]`).
#[track_caller]
pub fn assert_within<T>(budget: Budget, f: impl FnOnce() -> T) -> T {
    match check_allocations(budget, f) {
        (out, Ok(_)) => out,
        (_, Err(over)) => panic!("{over}"),
    }
}

/// Names the logged stacks: the innermost function outside the plumbing of each, summed.
fn sites_of(log: SiteLog) -> Vec<AllocationSite> {
    let mut stacks = allocator_api2::vec::Vec::new_in(crate::internal_alloc::ProfilerAlloc);
    if stacks.try_reserve_exact(log.sites.len()).is_err() {
        return Vec::new();
    }
    for site in log.sites.iter() {
        stacks.push(RawStack {
            start: site.start,
            len: site.len,
            span: 0,
            totals: RawStackTotals {
                alloc_objects: site.blocks as f64,
                alloc_bytes: site.bytes as f64,
                ..RawStackTotals::default()
            },
        });
    }
    let profile = crate::snapshot::profile_of_stacks(RawSnapshot {
        frames: log.frames,
        stacks,
        overflowed: false,
    });
    let plumbing = crate::plumbing::plumbing();
    let bytes: std::collections::HashMap<String, i64> = profile
        .culprits(SampleType::AllocSpace, &plumbing)
        .into_iter()
        .map(|total| (total.function, total.flat))
        .collect();
    profile
        .culprits(SampleType::AllocObjects, &plumbing)
        .into_iter()
        .filter(|total| total.flat > 0)
        .map(|total| AllocationSite {
            bytes: bytes.get(&total.function).copied().unwrap_or(0).max(0) as u64,
            blocks: total.flat as u64,
            function: total.function,
        })
        .collect()
}

/// Asserts that a closure allocates within a budget on the calling thread, and returns its
/// result; on failure the panic names the functions that allocated.
///
/// Limits: `max_blocks`, `max_bytes`, `max_peak_bytes` (any of them, in any order), or `none`
/// for no allocation at all.
///
/// ```
/// #[global_allocator]
/// static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
///
/// let input = "3,1,2";
/// let parsed: Vec<u32> = heapwatch::assert_allocations!(max_blocks = 1, max_bytes = 64, || {
///     input.split(',').map(|n| n.parse().unwrap()).collect()
/// });
/// assert_eq!(parsed, [3, 1, 2]);
/// let sum: u32 = heapwatch::assert_allocations!(none, || parsed.iter().sum());
/// assert_eq!(sum, 6);
/// ```
#[macro_export]
macro_rules! assert_allocations {
    (none, $f:expr $(,)?) => {
        $crate::measure::assert_within($crate::measure::Budget::none(), $f)
    };
    (@budget $budget:expr; $limit:ident = $value:expr, $($rest:tt)+) => {
        $crate::assert_allocations!(@budget $budget.$limit($value); $($rest)+)
    };
    (@budget $budget:expr; $f:expr $(,)?) => {
        $crate::measure::assert_within($budget, $f)
    };
    ($limit:ident = $($rest:tt)+) => {
        $crate::assert_allocations!(@budget $crate::measure::Budget::new(); $limit = $($rest)+)
    };
}
