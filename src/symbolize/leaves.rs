//! Cutting the allocation machinery from the leaf end of a named profile's stacks, so that a
//! stack's leaf is the program's function that asked for memory (as Go's heap profiles list the
//! caller of `make`). Which names are machinery is [`plumbing`](mod@crate::plumbing)'s to say; this
//! runs once the frames have names, after [`symbolize`](super::symbolize) and, for a profile
//! named offline, after [`offline`](super::offline).

use crate::plumbing::is_machinery;
use crate::profile::{Location, Profile};
use std::collections::HashMap;

/// Cuts the machinery from the leaf end of every stack of `profile` (see [`trim_machinery`]).
/// Run on every profile heapwatch takes, and again on a profile named offline, whose frames
/// were unnamed when it was taken.
pub(crate) fn trim_leaves(profile: &mut Profile) {
    let mut trimmed = HashMap::new();
    let Profile {
        samples, locations, ..
    } = profile;
    for sample in samples.iter_mut() {
        trim_machinery(locations, &mut trimmed, &mut sample.locations);
    }
}

/// Cuts the allocation machinery from the leaf end of a
/// stack, frame by frame: whole locations, then the inlined frames of the first location that
/// has code of the program's. Such a partly cut location is a copy (same address, fewer
/// frames), made once per location and cut, so other stacks through it keep every frame. A
/// stack that is machinery all through is kept whole.
fn trim_machinery(
    all: &mut Vec<Location>,
    trimmed: &mut HashMap<(usize, usize), usize>,
    locations: &mut Vec<usize>,
) {
    let mut whole = 0;
    let mut inlined = 0;
    for &l in locations.iter() {
        let lines = &all[l].lines;
        let cut = lines
            .iter()
            .take_while(|line| is_machinery(&line.function))
            .count();
        if cut == lines.len() && cut > 0 {
            whole += 1;
            continue;
        }
        inlined = cut;
        break;
    }
    // All machinery, or machinery down to frames nobody could name (a stripped libc's thread
    // start): no program frame to blame, so the stack stays whole.
    if whole == locations.len() || (inlined == 0 && all[locations[whole]].lines.is_empty()) {
        return;
    }
    locations.drain(..whole);
    if inlined > 0 {
        let leaf = locations[0];
        locations[0] = *trimmed.entry((leaf, inlined)).or_insert_with(|| {
            let original = &all[leaf];
            let copy = Location {
                address: original.address,
                mapping: original.mapping,
                lines: original.lines[inlined..].to_vec(),
            };
            all.push(copy);
            all.len() - 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Line, Sample};

    fn line(function: &str) -> Line {
        Line {
            function: function.to_owned(),
            ..Line::default()
        }
    }

    #[test]
    fn machinery_is_cut_frame_by_frame_and_other_stacks_keep_theirs() {
        let inlined = Location {
            address: 0x1000,
            mapping: None,
            lines: [
                "heapwatch::alloc::track_alloc",
                "__rust_alloc",
                "alloc::vec::from_elem",
            ]
            .into_iter()
            .chain([
                "orders::handlers::retain_blob",
                "<F as axum::Handler>::call::{{closure}}",
            ])
            .map(line)
            .collect(),
        };
        let shim = Location {
            address: 0x2000,
            lines: vec![line("__rdl_alloc")],
            ..Location::default()
        };
        let all_machinery = Location {
            address: 0x3000,
            lines: vec![line("alloc::raw_vec::finish_grow")],
            ..Location::default()
        };
        let mut profile = Profile {
            samples: vec![
                Sample {
                    locations: vec![1, 0],
                    values: [1, 10, 1, 10],
                    labels: Vec::new(),
                },
                Sample {
                    locations: vec![2],
                    values: [1, 20, 1, 20],
                    labels: Vec::new(),
                },
            ],
            locations: vec![inlined.clone(), shim, all_machinery],
            ..Profile::default()
        };
        trim_leaves(&mut profile);
        let first: Vec<String> = profile.stack_names(&profile.samples[0]).collect();
        assert_eq!(
            first,
            [
                "orders::handlers::retain_blob",
                "<F as axum::Handler>::call::{{closure}}"
            ]
        );
        assert_eq!(
            profile.locations[0], inlined,
            "the shared location is copied, not cut"
        );
        // A stack of machinery alone keeps its frames rather than vanishing.
        assert_eq!(profile.samples[1].locations, vec![2]);
    }
}
