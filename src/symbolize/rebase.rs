//! Naming a profile written without names — by this process near its limit, or by an earlier
//! instance of the same program — through the objects loaded here: each of the profile's
//! mappings is matched to a loaded object by GNU build id, its addresses are moved to where
//! that object is loaded in this process (ASLR places it elsewhere in each run), and the
//! symbolizer names them as it names a live snapshot, with its cache and its memory bounds.

use crate::profile::{Line, Mapping, Profile};
use std::collections::HashMap;

/// What [`name_by_build_id`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Rebased {
    /// Locations given names.
    pub(crate) named: usize,
    /// Locations that had names already (from the symbolizer's cache at the dump).
    pub(crate) had_names: usize,
    /// Locations still without a name: in a mapping of no object loaded here, or at an
    /// address its object has no name for.
    pub(crate) unnamed: usize,
    /// The mappings with unnamed locations that match no object loaded here (path and build
    /// id), so that the caller can say which binary would name them.
    pub(crate) unmatched: Vec<String>,
}

/// Names the unnamed locations of `profile` whose mapping is an object loaded in this process
/// (same build id) through `name`, which gives the frames of each code address of this
/// process (sorted, distinct); leaves the rest as they are. Then cuts the allocation machinery
/// from the stacks' leaves, as a snapshot does.
pub(super) fn name_by_build_id(
    profile: &mut Profile,
    name: impl FnOnce(&[u64]) -> Vec<Vec<Line>>,
) -> Rebased {
    let loaded = super::modules::loaded_modules();
    let mut outcome = Rebased::default();
    // Per mapping of the profile: the loaded object it is, if any.
    let matched: Vec<Option<usize>> = profile
        .mappings
        .iter()
        .map(|mapping| {
            (!mapping.build_id.is_empty())
                .then(|| {
                    loaded
                        .iter()
                        .position(|m| super::modules::hex(&m.build_id) == mapping.build_id)
                })
                .flatten()
        })
        .collect();
    let mut here_of_location: Vec<Option<u64>> = vec![None; profile.locations.len()];
    let mut unmatched = vec![false; profile.mappings.len()];
    for (index, location) in profile.locations.iter().enumerate() {
        if !location.lines.is_empty() {
            outcome.had_names += 1;
            continue;
        }
        let Some(m) = location.mapping.filter(|&m| m < profile.mappings.len()) else {
            outcome.unnamed += 1;
            continue;
        };
        let here = matched[m].and_then(|object| {
            address_here(&profile.mappings[m], &loaded[object], location.address)
        });
        match here {
            Some(address) => here_of_location[index] = Some(address),
            None => {
                unmatched[m] |= matched[m].is_none();
                outcome.unnamed += 1;
            }
        }
    }
    let mut addresses: Vec<u64> = here_of_location.iter().flatten().copied().collect();
    addresses.sort_unstable();
    addresses.dedup();
    if !addresses.is_empty() {
        let frames = name(&addresses);
        let lines_of: HashMap<u64, Vec<Line>> = addresses.into_iter().zip(frames).collect();
        for (location, here) in profile.locations.iter_mut().zip(&here_of_location) {
            let Some(lines) = here.and_then(|address| lines_of.get(&address)) else {
                continue;
            };
            if lines.is_empty() {
                outcome.unnamed += 1;
            } else {
                location.lines = lines.clone();
                outcome.named += 1;
            }
        }
    }
    // Also when every name came from the cache at the dump: the machinery is cut only now.
    #[cfg(feature = "dwarf")]
    super::qualify::closures_after_callers(profile);
    super::leaves::trim_leaves(profile);
    outcome.unmatched = profile
        .mappings
        .iter()
        .zip(unmatched)
        .filter(|(_, unmatched)| *unmatched)
        .map(|(m, _)| format!("{} (build id {})", m.path, display_id(&m.build_id)))
        .collect();
    outcome
}

fn display_id(id: &str) -> &str {
    if id.is_empty() {
        "none"
    } else {
        id
    }
}

/// Where `address`, in `mapping` of the profile, lies in `object` as loaded here: through the
/// file offset both describe. `None` when no loaded segment holds that offset.
fn address_here(mapping: &Mapping, object: &super::modules::Module, address: u64) -> Option<u64> {
    let file_offset = mapping
        .file_offset
        .checked_add(address.checked_sub(mapping.memory_start)?)?;
    object.segments.iter().find_map(|segment| {
        let size = segment.end.checked_sub(segment.start)?;
        let within = file_offset.checked_sub(segment.file_offset)?;
        (within < size).then(|| segment.start + within)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Location, Sample};

    fn line(function: &str) -> Line {
        Line {
            function: function.to_owned(),
            ..Line::default()
        }
    }

    #[inline(never)]
    fn a_function_named_later() -> usize {
        std::hint::black_box(11)
    }

    /// A profile with one location at `address` of this test binary, described as loaded at
    /// `shift` bytes from where it is (as another run of the same program would have it).
    fn unnamed_profile(address: u64, shift: u64) -> Profile {
        let main = super::super::modules::loaded_modules()
            .into_iter()
            .find(|m| m.segment_of(address).is_some_and(|s| s.executable))
            .expect("this binary's code");
        let code = main.segment_of(address).unwrap().clone();
        Profile {
            samples: vec![Sample {
                locations: vec![0],
                values: [1, 64, 1, 64],
                labels: Vec::new(),
            }],
            locations: vec![Location {
                address: address + shift,
                mapping: Some(0),
                lines: Vec::new(),
            }],
            mappings: vec![Mapping {
                memory_start: code.start + shift,
                memory_limit: code.end + shift,
                file_offset: code.file_offset,
                path: main.path,
                build_id: super::super::modules::hex(&main.build_id),
            }],
            ..Profile::default()
        }
    }

    #[test]
    fn names_another_runs_addresses_by_build_id() {
        let address = a_function_named_later as *const () as usize as u64 + 1;
        for shift in [0, 0x7000_0000] {
            let mut profile = unnamed_profile(address, shift);
            let mut asked = Vec::new();
            let outcome = name_by_build_id(&mut profile, |addresses| {
                asked = addresses.to_vec();
                addresses
                    .iter()
                    .map(|_| vec![line("named_later")])
                    .collect()
            });
            assert_eq!(asked, [address], "asked for this process's address");
            assert_eq!(outcome.named, 1, "shift {shift:#x}: {outcome:?}");
            assert_eq!(profile.locations[0].lines, [line("named_later")]);
            assert_eq!(profile.locations[0].address, address + shift, "kept");
        }
    }

    #[test]
    fn another_binarys_mapping_is_left_unnamed_and_reported() {
        let address = a_function_named_later as *const () as usize as u64 + 1;
        let mut profile = unnamed_profile(address, 0);
        profile.mappings[0].build_id = "00ff".into();
        let outcome = name_by_build_id(&mut profile, |_| panic!("nothing to name here"));
        assert_eq!(outcome.named, 0);
        assert_eq!(outcome.unnamed, 1);
        assert_eq!(outcome.unmatched.len(), 1);
        assert!(outcome.unmatched[0].contains("00ff"), "{outcome:?}");
        assert!(profile.locations[0].lines.is_empty());
    }
}
