//! The sampler's stacks (addresses by thread, and counts) as a [`CpuProfile`], named by
//! heapwatch's own symbolizer as its heap profiles are: fully qualified names, inlined frames,
//! files and lines, mappings with build ids. Nothing is cut (unlike a heap profile, whose
//! allocation machinery is: here the time spent in std's code is the program's); the sampler
//! already cut its own handler's frames.

use crate::cpu::data::{CpuProfile, CpuSample};
use std::collections::HashMap;

/// One stack as the sampler recorded it.
pub(crate) struct RawStack {
    /// The thread's name, or its id.
    pub(crate) thread: String,
    /// Innermost first: the interrupted instruction's address plus one, then return
    /// addresses.
    pub(crate) return_addresses: Vec<usize>,
    /// Samples that found it.
    pub(crate) count: u64,
}

/// Names the stacks and merges those equal once named; timing fields are the caller's.
pub(crate) fn profile_of(stacks: Vec<RawStack>) -> CpuProfile {
    // Inside the profiler: naming allocates, and none of that is the program's.
    let _guard = crate::thread_state::ProfilerGuard::enter();
    let all: Vec<usize> = stacks
        .iter()
        .flat_map(|stack| stack.return_addresses.iter().copied())
        .collect();
    let mut code = crate::snapshot::name_code(&all);
    let mut profile = CpuProfile {
        mappings: std::mem::take(&mut code.mappings),
        locations: std::mem::take(&mut code.locations),
        ..CpuProfile::default()
    };
    let stacks = stacks.into_iter().map(|stack| {
        let locations = code.stack(&stack.return_addresses);
        (stack.thread, locations, stack.count)
    });
    merge(&mut profile, stacks);
    name_closures_after_callers(&mut profile);
    profile
}

/// Adds the stacks to `profile` as samples, equal ones merged (two addresses can name the
/// same location), heaviest first.
fn merge(profile: &mut CpuProfile, stacks: impl Iterator<Item = (String, Vec<usize>, u64)>) {
    let mut merged: HashMap<(String, Vec<usize>), u64> = HashMap::new();
    for (thread, locations, count) in stacks {
        if locations.is_empty() || count == 0 {
            continue;
        }
        let total = merged.entry((thread, locations)).or_default();
        *total = total.saturating_add(count);
    }
    profile.samples = merged
        .into_iter()
        .map(|((thread, locations), count)| CpuSample {
            locations,
            thread,
            count,
        })
        .collect();
    // Heaviest first, then by thread and stack: the same samples always encode the same way.
    profile.samples.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.thread.cmp(&b.thread))
            .then_with(|| a.locations.cmp(&b.locations))
    });
}

/// Closures named after the function that runs them, as heap profiles name them (see
/// `symbolize::closures_after_callers`), through a heap profile of the same locations.
fn name_closures_after_callers(profile: &mut CpuProfile) {
    #[cfg(feature = "dwarf")]
    {
        let mut stacks = crate::profile::Profile {
            locations: std::mem::take(&mut profile.locations),
            samples: profile
                .samples
                .iter()
                .map(|sample| crate::profile::Sample {
                    locations: sample.locations.clone(),
                    ..Default::default()
                })
                .collect(),
            ..crate::profile::Profile::default()
        };
        crate::symbolize::closures_after_callers(&mut stacks);
        profile.locations = stacks.locations;
    }
    #[cfg(not(feature = "dwarf"))]
    let _ = profile;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Line, Location};

    fn named(function: &str) -> Location {
        Location {
            lines: vec![Line {
                function: function.to_owned(),
                ..Line::default()
            }],
            ..Location::default()
        }
    }

    #[test]
    fn equal_stacks_are_merged_heaviest_first() {
        let mut profile = CpuProfile {
            locations: vec![named("app::spin"), named("main"), named("app::idle")],
            ..CpuProfile::default()
        };
        let stacks = vec![
            ("worker".to_owned(), vec![0, 1], 3),
            ("worker".to_owned(), vec![0, 1], 2),
            ("other".to_owned(), vec![0, 1], 1),
            ("worker".to_owned(), vec![2, 1], 4),
            ("worker".to_owned(), vec![], 9),
            ("worker".to_owned(), vec![2], 0),
        ];
        merge(&mut profile, stacks.into_iter());
        let rows: Vec<(&str, Vec<usize>, u64)> = profile
            .samples
            .iter()
            .map(|s| (s.thread.as_str(), s.locations.clone(), s.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("worker", vec![0, 1], 5),
                ("worker", vec![2, 1], 4),
                ("other", vec![0, 1], 1),
            ]
        );
        assert_eq!(
            profile.leaf_function(&profile.samples[0]),
            Some("app::spin")
        );
        assert_eq!(profile.total_samples(), 10);
    }

    /// A real address of this binary is named as heap profiles name it.
    #[test]
    fn return_addresses_are_named_by_heapwatchs_symbolizer() {
        let here = equal_stacks_are_merged_heaviest_first as fn() as usize;
        let profile = profile_of(vec![RawStack {
            thread: "main".to_owned(),
            return_addresses: vec![here + 2],
            count: 7,
        }]);
        assert_eq!(profile.samples.len(), 1);
        assert_eq!(profile.samples[0].count, 7);
        // The function the address lies in is the location's last line (the first bytes of
        // a function may be code inlined into it).
        let location = &profile.locations[profile.samples[0].locations[0]];
        let outer = location
            .lines
            .last()
            .map_or("", |line| line.function.as_str());
        assert!(
            outer.ends_with("cpu::convert::tests::equal_stacks_are_merged_heaviest_first"),
            "{:?}",
            location.lines
        );
        assert!(!profile.mappings.is_empty());
    }
}
