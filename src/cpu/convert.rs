//! pprof-rs's samples (return addresses by thread, and counts) as a [`CpuProfile`], named by
//! heapwatch's own symbolizer as its heap profiles are: fully qualified names, inlined frames,
//! files and lines, mappings with build ids. The signal handler's frames are cut from the leaf
//! end; nothing else is (unlike a heap profile, whose allocation machinery is cut: here the
//! time spent in std's code is the program's).

use crate::cpu::data::{CpuProfile, CpuSample};
use crate::profile::Location;
use std::collections::HashMap;

/// One stack as pprof-rs recorded it.
pub(crate) struct RawStack {
    /// The thread's name, or its id.
    pub(crate) thread: String,
    /// Innermost first, from the signal handler's own frames out.
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
    merge_below_handler(&mut profile, stacks);
    name_closures_after_callers(&mut profile);
    profile
}

/// Adds the stacks to `profile` as samples, cut below the signal handler, equal ones merged,
/// heaviest first.
fn merge_below_handler(
    profile: &mut CpuProfile,
    stacks: impl Iterator<Item = (String, Vec<usize>, u64)>,
) {
    let mut merged: HashMap<(String, Vec<usize>), u64> = HashMap::new();
    for (thread, locations, count) in stacks {
        let below = handler_frames(&profile.locations, &locations);
        let locations = locations[below..].to_vec();
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

/// How many frames at the leaf end are the sampler's: the walk itself (the `backtrace`
/// crate), pprof-rs's `perf_signal_handler`, and the signal trampoline after it (libc's
/// `__restore_rt`), whose caller is the code the signal interrupted. The handler is looked for
/// among the first frames only, so a program's own frames are never taken for it; without it
/// (an unnamed handler), only the leading frames of the walk are cut.
fn handler_frames(all: &[Location], locations: &[usize]) -> usize {
    const WALK_DEPTH: usize = 16;
    let outermost = |&l: &usize| {
        all.get(l)
            .and_then(|location| location.lines.last())
            .map_or("", |line| line.function.as_str())
    };
    let names: Vec<&str> = locations.iter().take(WALK_DEPTH).map(outermost).collect();
    match names.iter().position(|&name| name == "perf_signal_handler") {
        Some(handler) => (handler + 2).min(locations.len()),
        None => names
            .iter()
            .take_while(|name| {
                let name = name.trim_start_matches('<');
                name.starts_with("backtrace::") || name.starts_with("pprof::")
            })
            .count(),
    }
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
    use crate::profile::Line;

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
    fn stacks_are_cut_below_the_handler_and_merged() {
        let mut profile = CpuProfile {
            locations: vec![
                named("backtrace::backtrace::libunwind::trace"),
                named("perf_signal_handler"),
                named("__restore_rt"),
                named("app::spin"),
                named("main"),
                named("app::idle"),
            ],
            ..CpuProfile::default()
        };
        let stacks = vec![
            ("worker".to_owned(), vec![0, 1, 2, 3, 4], 3),
            ("worker".to_owned(), vec![1, 2, 3, 4], 2),
            ("other".to_owned(), vec![0, 1, 2, 3, 4], 1),
            ("worker".to_owned(), vec![0, 5, 4], 4),
            ("worker".to_owned(), vec![0, 1, 2], 9),
            ("worker".to_owned(), vec![0, 1, 2, 5], 0),
        ];
        merge_below_handler(&mut profile, stacks.into_iter());
        let rows: Vec<(&str, Vec<usize>, u64)> = profile
            .samples
            .iter()
            .map(|s| (s.thread.as_str(), s.locations.clone(), s.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("worker", vec![3, 4], 5),
                ("worker", vec![5, 4], 4),
                ("other", vec![3, 4], 1),
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
        let here = stacks_are_cut_below_the_handler_and_merged as fn() as usize;
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
            outer.ends_with("cpu::convert::tests::stacks_are_cut_below_the_handler_and_merged"),
            "{:?}",
            location.lines
        );
        assert!(!profile.mappings.is_empty());
    }
}
