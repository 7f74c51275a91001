//! Snapshot: copy the live-sample table, name its addresses, and build a [`Profile`].
//!
//! The table lock is held only for the copy (into profiler memory). Naming and building run
//! unlocked, inside the profiler guard, so none of the snapshot's own allocations are sampled.

use crate::profile::{Line, Location, Mapping, Profile, Sample};
use crate::symbolize;
use crate::table::{self, RawStackTotals};
use crate::thread_state::ProfilerGuard;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Innermost frames that are the allocation machinery itself, not the code that asked for
/// memory: heapwatch's sampled path, the unwinder, the allocator shims, and the standard
/// library's collections and helpers (`Vec::with_capacity`, `vec![x; n]`, `String::push_str`,
/// `Box::new`, std's `HashMap` over hashbrown…). They are cut from the leaf end of each stack
/// so that the innermost frame is the program's own code that allocated — what
/// `go tool pprof -top` should list first, as Go's profiles list the caller of `make`.
const MACHINERY_PREFIXES: &[&str] = &[
    "heapwatch::alloc::",
    "<heapwatch::alloc::",
    "heapwatch::thread_state::",
    "heapwatch::stack::",
    "heapwatch::table::",
    "backtrace::",
    "<backtrace::",
    "_Unwind_",
    "__rust_alloc",
    "__rust_realloc",
    "__rust_alloc_zeroed",
    "__rustc::",
    "__rg_",
    "__rdl_",
    "alloc::alloc::",
    "<alloc::alloc::",
    "std::alloc::",
    "<std::alloc::",
    "core::alloc::",
    "alloc::raw_vec::",
    "<alloc::raw_vec::",
];

/// The name that stands for samples whose stacks did not fit in the stack table.
pub const OVERFLOW_FRAME: &str = "[heapwatch: stack table full]";

/// Crates of the standard library (and the hash table under std's `HashMap`).
const STD_CRATES: &[&str] = &["alloc::", "core::", "std::", "hashbrown::"];

fn is_machinery(location: &Location) -> bool {
    // The outermost function at the address: inlined callers of std code are the program's.
    location.lines.last().is_some_and(|line| {
        let name = line.function.as_str();
        MACHINERY_PREFIXES.iter().any(|p| name.starts_with(p)) || is_std_function(name)
    })
}

/// `alloc::vec::Vec<T>::push`, `<alloc::string::String as core::fmt::Write>::write_str`, or
/// `<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem` (a std trait on a primitive
/// or generic type) — but not `<myapp::Cache as core::clone::Clone>::clone`, whose code is the
/// program's.
fn is_std_function(name: &str) -> bool {
    let is_std_path = |path: &str| STD_CRATES.iter().any(|c| path.starts_with(c));
    let Some(qualified) = name.strip_prefix('<') else {
        return is_std_path(name);
    };
    let Some((self_type, rest)) = qualified.split_once(" as ") else {
        return is_std_path(qualified);
    };
    let self_type = self_type.trim_start_matches(['&', '*', '[', '(']);
    let self_type = self_type
        .strip_prefix("mut ")
        .or_else(|| self_type.strip_prefix("const "))
        .unwrap_or(self_type);
    is_std_path(self_type) || (!self_type.contains("::") && is_std_path(rest))
}

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
    let _guard = ProfilerGuard::enter();
    let time_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let mut profile = Profile {
        time_nanos,
        sample_rate_bytes: crate::sample_rate(),
        ..Profile::default()
    };
    let Some(raw) = table::raw_snapshot(scope) else {
        return profile;
    };

    // One location per distinct address. Return addresses point after the call; minus one
    // lands inside the call instruction, so it names the calling line.
    let mut addresses: Vec<u64> = raw
        .frames
        .iter()
        .map(|&ip| ip.saturating_sub(1) as u64)
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    let (modules, named) = symbolize::symbolize(&addresses);

    let mut mapping_of_module = vec![None; modules.len()];
    let mut location_of_address = HashMap::with_capacity(addresses.len());
    for (address, frame) in addresses.iter().zip(named) {
        let mapping = frame.module.map(|m| {
            *mapping_of_module[m].get_or_insert_with(|| {
                let module = &modules[m];
                profile.mappings.push(Mapping {
                    memory_start: module.start,
                    memory_limit: module.limit,
                    file_offset: module.file_offset,
                    path: module.path.clone(),
                    build_id: module.build_id.clone(),
                });
                profile.mappings.len() - 1
            })
        });
        location_of_address.insert(*address, profile.locations.len());
        profile.locations.push(Location {
            address: *address,
            mapping,
            lines: frame
                .lines
                .into_iter()
                .map(|(function, file, line)| Line {
                    function,
                    file,
                    line,
                })
                .collect(),
        });
    }

    let mut overflow_location = None;
    for &(start, len, totals) in raw.stacks.iter() {
        if totals == RawStackTotals::default() {
            // Only in a thread's snapshot: a stack with nothing of that thread's live.
            continue;
        }
        let frames = &raw.frames[start as usize..(start + len) as usize];
        let mut locations: Vec<usize> = frames
            .iter()
            .filter_map(|&ip| {
                location_of_address
                    .get(&(ip.saturating_sub(1) as u64))
                    .copied()
            })
            .collect();
        let machinery = locations
            .iter()
            .take_while(|&&l| is_machinery(&profile.locations[l]))
            .count();
        if machinery < locations.len() {
            locations.drain(..machinery);
        }
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
        profile.samples.push(Sample {
            locations,
            values: [
                totals.alloc_objects.round() as i64,
                totals.alloc_bytes.round() as i64,
                totals.inuse_objects.round() as i64,
                totals.inuse_bytes.round() as i64,
            ],
        });
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::is_std_function;

    #[test]
    fn std_frames_are_told_from_the_program() {
        for std in [
            "alloc::vec::Vec<T,A>::with_capacity",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<alloc::string::String as core::fmt::Write>::write_str",
            "<&mut [u8] as core::fmt::Debug>::fmt",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
            "<T as alloc::borrow::ToOwned>::to_owned",
        ] {
            assert!(is_std_function(std), "{std}");
        }
        for program in [
            "leaky_service::leak_session_cache",
            "<myapp::Cache as core::clone::Clone>::clone",
            "<core_utils::Thing as myapp::Make>::make",
            "allocator::pool::grow",
            "main",
        ] {
            assert!(!is_std_function(program), "{program}");
        }
    }
}
