//! Snapshot: copy the live-sample table, name its addresses, and build a [`Profile`].
//!
//! The table lock is held only for the copy (into profiler memory). Naming and building run
//! unlocked, inside the profiler guard, so none of the snapshot's own allocations are sampled.

use crate::profile::{Line, Location, Mapping, Profile, Sample};
use crate::symbolize;
use crate::table::{self, RawSnapshot, RawStack, RawStackTotals};
use crate::thread_state::ProfilerGuard;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The name that stands for samples whose stacks did not fit in the stack table.
pub const OVERFLOW_FRAME: &str = "[heapwatch: stack table full]";

/// Takes a heap profile of the sampled allocations: live (`inuse_*`) and since start
/// (`alloc_*`), with function names.
///
/// The first call loads the symbol tables of the objects in the stacks; later calls reuse them
/// (see [`warm_symbol_cache`](crate::warm_symbol_cache)).
///
/// ```
/// let profile = heapwatch::snapshot();
/// let live = profile.total(heapwatch::SampleType::InuseSpace);
/// assert!(live >= 0);
/// ```
pub fn snapshot() -> Profile {
    snapshot_of(table::Scope::Process)
}

/// The live blocks the calling thread allocated and still holds, wherever they are freed; the
/// `alloc_*` figures are zero. What [`leak_check`](crate::leak_check) reads, so that other
/// threads (tests running in parallel) never show up among a check's growing sites.
pub(crate) fn thread_snapshot() -> Profile {
    snapshot_of(table::Scope::Thread(crate::thread_state::current_thread()))
}

fn snapshot_of(scope: table::Scope) -> Profile {
    symbolize::warn_once_without_dwarf();
    let _guard = ProfilerGuard::enter();
    let time_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let mut profile = Profile {
        time_nanos,
        sample_rate_bytes: crate::sampler::sample_rate(),
        ..Profile::default()
    };
    let Some(raw) = table::raw_snapshot(scope) else {
        return profile;
    };
    name_stacks(&mut profile, raw, SkipEmpty::Yes);
    profile
}

/// A heap profile for the HTTP pages: one sample per distinct call path (no labels, figures
/// summed over spans), with the split by span kept aside. Its size follows the distinct call
/// paths, not the live samples; the pages that need spans read [`PageSnapshot::by_span`].
#[cfg(feature = "http")]
pub(crate) struct PageSnapshot {
    /// The merged profile: sample `i` is merged stack `i`.
    pub profile: Profile,
    /// Every stack of the table: its sample in `profile`, its span, its figures. Entry `i` is
    /// the table's stack `i` (stacks are only ever added), then the overflow stack if used.
    pub by_span: allocator_api2::vec::Vec<table::SpanStack, crate::internal_alloc::ProfilerAlloc>,
    /// Whether the last entry of `by_span` is the overflow stack.
    pub overflowed: bool,
}

/// Takes a [`PageSnapshot`]. `admit` is told the distinct stacks and return addresses the copy
/// keeps before they are copied and named, and may refuse (`None`).
#[cfg(feature = "http")]
pub(crate) fn page_snapshot(
    admit: impl FnOnce(usize, usize) -> bool,
    admit_names: impl FnOnce(usize) -> bool,
) -> Option<PageSnapshot> {
    symbolize::warn_once_without_dwarf();
    let _guard = ProfilerGuard::enter();
    let time_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let merged = table::merged_snapshot(admit)?;
    // Names cost per distinct return address, shared by every path through the same code.
    let distinct_addresses = {
        let mut addresses: Vec<usize> = Vec::new();
        addresses.try_reserve_exact(merged.raw.frames.len()).ok()?;
        addresses.extend(merged.raw.frames.iter().copied());
        addresses.sort_unstable();
        addresses.dedup();
        addresses.len()
    };
    if !admit_names(distinct_addresses) {
        return None;
    }
    let overflowed = merged.raw.overflowed;
    let mut profile = Profile {
        time_nanos,
        sample_rate_bytes: crate::sampler::sample_rate(),
        ..Profile::default()
    };
    name_stacks(&mut profile, merged.raw, SkipEmpty::No);
    Some(PageSnapshot {
        profile,
        by_span: merged.by_span,
        overflowed,
    })
}

/// Whether stacks with no figure are left out of a profile (a thread's snapshot), or kept so
/// that sample `i` stays stack `i` (a page snapshot).
#[derive(Clone, Copy, PartialEq, Eq)]
enum SkipEmpty {
    Yes,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    No,
}

/// A profile of stacks recorded outside the table (a budget check's call sites), named as a
/// snapshot's are.
pub(crate) fn profile_of_stacks(raw: RawSnapshot) -> Profile {
    let _guard = ProfilerGuard::enter();
    let mut profile = Profile::default();
    name_stacks(&mut profile, raw, SkipEmpty::Yes);
    profile
}

/// The code at some return addresses, named: the loaded objects they lie in, one location per
/// code address, and where each address's location is.
pub(crate) struct NamedCode {
    pub mappings: Vec<Mapping>,
    pub locations: Vec<Location>,
    /// By code address (see [`symbolize::code_address`]), the index into `locations`.
    pub location_of_address: HashMap<u64, usize>,
}

impl NamedCode {
    /// The locations of a stack of return addresses, innermost first.
    pub(crate) fn stack(&self, return_addresses: &[usize]) -> Vec<usize> {
        return_addresses
            .iter()
            .filter_map(|&ip| symbolize::code_address(ip))
            .filter_map(|address| self.location_of_address.get(&address).copied())
            .collect()
    }
}

/// Names the code at `return_addresses` (of any number of stacks, concatenated): what the heap
/// snapshot and the CPU profile share.
pub(crate) fn name_code(return_addresses: &[usize]) -> NamedCode {
    let addresses = symbolize::code_addresses(return_addresses);
    let (modules, named) = symbolize::symbolize(&addresses);
    let mut code = NamedCode {
        mappings: Vec::new(),
        locations: Vec::with_capacity(addresses.len()),
        location_of_address: HashMap::with_capacity(addresses.len()),
    };
    let mut mapping_of_module = vec![None; modules.len()];
    for (address, frame) in addresses.iter().zip(named) {
        let mapping = frame.module.and_then(|m| {
            let module = modules.get(m)?;
            Some(*mapping_of_module[m].get_or_insert_with(|| {
                code.mappings.push(Mapping {
                    memory_start: module.start,
                    memory_limit: module.limit,
                    file_offset: module.file_offset,
                    path: module.path.clone(),
                    build_id: module.build_id.clone(),
                });
                code.mappings.len() - 1
            }))
        });
        code.location_of_address
            .insert(*address, code.locations.len());
        code.locations.push(Location {
            address: *address,
            mapping,
            lines: frame.lines,
        });
    }
    code
}

/// Names the addresses of `raw` and adds its stacks to `profile` as samples.
fn name_stacks(profile: &mut Profile, raw: RawSnapshot, skip_empty: SkipEmpty) {
    let mut code = name_code(&raw.frames);
    // A profile built here starts without code of its own.
    profile.mappings = std::mem::take(&mut code.mappings);
    profile.locations = std::mem::take(&mut code.locations);

    let mut overflow_location = None;
    let mut labels_of_span = HashMap::new();
    for &RawStack {
        start,
        len,
        span,
        totals,
    } in raw.stacks.iter()
    {
        if skip_empty == SkipEmpty::Yes && totals == RawStackTotals::default() {
            // Only in a thread's snapshot: a stack with nothing of that thread's live.
            continue;
        }
        let mut locations = code.stack(&raw.frames[start as usize..(start + len) as usize]);
        if len == 0 && raw.overflowed {
            let index = *overflow_location.get_or_insert_with(|| {
                profile.locations.push(Location {
                    lines: vec![Line {
                        function: OVERFLOW_FRAME.to_owned(),
                        ..Line::default()
                    }],
                    ..Location::default()
                });
                profile.locations.len() - 1
            });
            locations = vec![index];
        }
        let labels = labels_of_span
            .entry(span)
            .or_insert_with(|| crate::spans::tags::labels(span))
            .clone();
        profile.samples.push(Sample {
            locations,
            labels,
            values: [
                totals.alloc_objects.round() as i64,
                totals.alloc_bytes.round() as i64,
                totals.inuse_objects.round() as i64,
                totals.inuse_bytes.round() as i64,
            ],
        });
    }
    #[cfg(feature = "dwarf")]
    symbolize::closures_after_callers(profile);
    symbolize::leaves::trim_leaves(profile);
}
