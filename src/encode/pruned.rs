//! What a flamegraph can show of many stacks, in memory that follows what it shows: the
//! stacks are merged into a tree of call paths, and a path's own bytes narrower than a pixel
//! are handed to its caller, as the picture would show them (a gap under the caller). What is
//! left is at most one stack per pixel of width, whatever the number of stacks, so the folded
//! lines that inferno keeps in memory stay few however many samples the heap holds.

use crate::profile::{Line, Location, Profile, Sample, SampleType};
use std::collections::HashMap;

/// Pixels of a flamegraph's width (inferno's default image width): a path narrower than one
/// of them is invisible anyway.
const WIDTH_PIXELS: i64 = 1200;

/// Tree nodes reserved at a time from the caller's budget.
const NODES_PER_GRANT: usize = 4096;

/// Bytes one tree node costs at its peak: its entry (16 B) and its slot in the child index
/// (13 B), each in a table that may be twice as large as it holds, and both tables' old and
/// new storage while they grow.
pub(crate) const BYTES_PER_NODE: usize = 96;

/// One stack to draw: the profile's sample `stack` holds its locations; `root`, if any, is an
/// extra outermost frame (an index into the root names); `bytes` its width.
pub(crate) struct WeightedStack {
    pub stack: usize,
    pub root: Option<usize>,
    pub bytes: i64,
}

struct Node {
    parent: u32,
    location: u32,
    own_bytes: i64,
}

/// The tree of the stacks under one root, and the nodes the budget has granted it.
struct Tree {
    nodes: Vec<Node>,
    children: HashMap<(u32, u32), u32>,
    granted: usize,
}

impl Tree {
    fn clear(&mut self) {
        self.nodes.clear();
        self.children.clear();
        self.nodes.push(Node {
            parent: u32::MAX,
            location: u32::MAX,
            own_bytes: 0,
        });
    }

    /// Adds `bytes` at the end of `path` (root first); `false` if the budget refused a node.
    fn add(
        &mut self,
        path: impl Iterator<Item = usize>,
        bytes: i64,
        grant: &mut impl FnMut(usize) -> bool,
    ) -> bool {
        let mut node = 0u32;
        for location in path {
            let next = self.nodes.len() as u32;
            let key = (node, location as u32);
            node = *self.children.entry(key).or_insert(next);
            if node == next {
                if self.nodes.len() >= self.granted {
                    if !grant(NODES_PER_GRANT * BYTES_PER_NODE) {
                        return false;
                    }
                    self.granted += NODES_PER_GRANT;
                }
                self.nodes.push(Node {
                    parent: key.0,
                    location: key.1,
                    own_bytes: 0,
                });
            }
        }
        let own = &mut self.nodes[node as usize].own_bytes;
        *own = own.saturating_add(bytes);
        true
    }

    /// Adds to `out` one sample per path whose own bytes fill at least `pixel`, after the
    /// narrower ones have been handed to their callers.
    fn emit(&mut self, pixel: i64, out: &mut Vec<Sample>) {
        let nodes = &mut self.nodes;
        // Children come after their parents: walking backwards sees every child first.
        for index in (1..nodes.len()).rev() {
            let (own, parent) = (nodes[index].own_bytes, nodes[index].parent as usize);
            if own >= pixel {
                let mut locations = Vec::new();
                let mut at = index;
                while at != 0 {
                    locations.push(nodes[at].location as usize);
                    at = nodes[at].parent as usize;
                }
                let mut values = [0; 4];
                values[SampleType::InuseSpace as usize] = own;
                out.push(Sample {
                    locations,
                    values,
                    labels: Vec::new(),
                });
            } else {
                nodes[parent].own_bytes = nodes[parent].own_bytes.saturating_add(own);
            }
        }
    }
}

/// A profile of the paths of `stacks` a flamegraph of [`SampleType::InuseSpace`] can show,
/// each path's location the profile's (or, for a root, a new location named after
/// `root_names`). `stacks` come grouped by root: one root's tree is held at a time.
/// `grant(bytes)` is asked before a tree grows; `None` if it refuses.
pub(crate) fn visible_part(
    profile: &Profile,
    stacks: impl Iterator<Item = WeightedStack> + Clone,
    root_names: &[String],
    mut grant: impl FnMut(usize) -> bool,
) -> Option<Profile> {
    let total = stacks
        .clone()
        .filter(|s| s.bytes > 0)
        .fold(0i64, |total, s| total.saturating_add(s.bytes));
    let pixel = (total / WIDTH_PIXELS).max(1);
    let first_root = profile.locations.len();
    let mut visible = Profile {
        locations: profile.locations.clone(),
        mappings: profile.mappings.clone(),
        sample_rate_bytes: profile.sample_rate_bytes,
        time_nanos: profile.time_nanos,
        ..Profile::default()
    };
    visible
        .locations
        .extend(root_names.iter().map(|name| Location {
            lines: vec![Line {
                function: name.clone(),
                ..Line::default()
            }],
            ..Location::default()
        }));
    let mut tree = Tree {
        nodes: Vec::new(),
        children: HashMap::new(),
        granted: 1,
    };
    tree.clear();
    let mut current_root = None;
    for weighted in stacks.filter(|s| s.bytes > 0) {
        let Some(sample) = profile.samples.get(weighted.stack) else {
            continue;
        };
        if weighted.root != current_root {
            tree.emit(pixel, &mut visible.samples);
            tree.clear();
            current_root = weighted.root;
        }
        let roots = weighted.root.map(|root| first_root + root);
        let path = roots
            .into_iter()
            .chain(sample.locations.iter().rev().copied());
        if !tree.add(path, weighted.bytes, &mut grant) {
            return None;
        }
    }
    tree.emit(pixel, &mut visible.samples);
    Some(visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(name: &str) -> Location {
        Location {
            lines: vec![Line {
                function: name.into(),
                ..Line::default()
            }],
            ..Location::default()
        }
    }

    #[test]
    fn slivers_go_to_their_caller_and_widths_add_up() {
        let profile = Profile {
            locations: vec![location("main"), location("big"), location("tiny")],
            samples: vec![
                Sample {
                    locations: vec![1, 0],
                    ..Sample::default()
                },
                Sample {
                    locations: vec![2, 0],
                    ..Sample::default()
                },
            ],
            ..Profile::default()
        };
        let stacks = [0, 1].into_iter().flat_map(|root| {
            [(0, 100_000), (1, 1), (0, 50_000)]
                .into_iter()
                .map(move |(stack, bytes)| WeightedStack {
                    stack,
                    root: Some(root),
                    bytes,
                })
        });
        let names = ["span: a".to_owned(), "span: b".to_owned()];
        let visible = visible_part(&profile, stacks, &names, |_| true).expect("granted");
        let total: i64 = visible
            .samples
            .iter()
            .map(|s| s.value(SampleType::InuseSpace))
            .sum();
        // `tiny` (1 byte of 300,002) is narrower than a pixel: handed to `main`, then to the span,
        // then to the root of the tree, which is no frame: out of the picture, as inferno
        // leaves it.
        assert_eq!(total, 2 * 150_000);
        let tiny = visible
            .locations
            .iter()
            .position(|l| l.lines[0].function == "tiny");
        assert!(visible
            .samples
            .iter()
            .all(|s| !s.locations.contains(&tiny.unwrap())));
        assert_eq!(visible.samples.len(), 2, "{:?}", visible.samples);
        assert!(visible_part(
            &profile,
            std::iter::once(WeightedStack {
                stack: 0,
                root: None,
                bytes: 1
            }),
            &[],
            |_| false
        )
        .is_none());
    }
}
