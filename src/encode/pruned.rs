//! What a flamegraph can show of many stacks, in memory that follows what it shows: the
//! stacks are merged into a tree of call paths, and a path's own value narrower than the
//! narrowest frame drawn is handed to its caller, as the picture shows it (a gap under the
//! caller). What is left is at most one stack per narrowest width drawn (1,000 at inferno's
//! 0.1 %) besides the outermost frames, whatever the number of stacks, so the folded lines that
//! inferno keeps in memory stay few however many samples a profile holds. Totals are kept:
//! an outermost frame keeps whatever its callees handed it.

use crate::profile::{Line, Location, Profile, Sample, SampleType};
use std::collections::HashMap;

/// Tree nodes reserved at a time from the caller's budget.
const NODES_PER_GRANT: usize = 4096;

/// Bytes one tree node costs at its peak: its entry (16 B) and its slot in the child index
/// (13 B), each in a table that may be twice as large as it holds, and both tables' old and
/// new storage while they grow.
pub(crate) const BYTES_PER_NODE: usize = 96;

/// One stack to draw: the profile's sample `stack` holds its locations; `root`, if any, is an
/// extra outermost frame (an index into the root names); `value` its width.
#[derive(Clone)]
pub(crate) struct WeightedStack {
    pub stack: usize,
    pub root: Option<usize>,
    pub value: i64,
}

struct Node {
    parent: u32,
    location: u32,
    own: i64,
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
            own: 0,
        });
    }

    /// Adds `value` at the end of `path` (root first); `false` if the budget refused a node.
    fn add(
        &mut self,
        path: impl Iterator<Item = usize>,
        value: i64,
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
                    own: 0,
                });
            }
        }
        let own = &mut self.nodes[node as usize].own;
        *own = own.saturating_add(value);
        true
    }

    /// Adds to `out` one sample of `sample_type` per path whose own value is at least
    /// `narrowest`, after the narrower ones have been handed to their callers; an outermost
    /// frame keeps any value left to it.
    fn emit(&mut self, narrowest: i64, sample_type: SampleType, out: &mut Vec<Sample>) {
        let nodes = &mut self.nodes;
        // Children come after their parents: walking backwards sees every child first.
        for index in (1..nodes.len()).rev() {
            let (own, parent) = (nodes[index].own, nodes[index].parent as usize);
            if own >= narrowest || (parent == 0 && own != 0) {
                let mut locations = Vec::new();
                let mut at = index;
                while at != 0 {
                    locations.push(nodes[at].location as usize);
                    at = nodes[at].parent as usize;
                }
                let mut values = [0; 4];
                values[sample_type as usize] = own;
                out.push(Sample {
                    locations,
                    values,
                    labels: Vec::new(),
                });
            } else {
                nodes[parent].own = nodes[parent].own.saturating_add(own);
            }
        }
    }
}

/// A profile of the paths of `stacks` a flamegraph of `sample_type` drawing no frame
/// narrower than `min_width_percent` of the total (inferno's `min_width`) can show, each path's location the profile's
/// (or, for a root, a new location named after `root_names`). `stacks` come grouped by root:
/// one root's tree is held at a time. `grant(bytes)` is asked before a tree grows; `None` if
/// it refuses.
pub(crate) fn visible_part(
    profile: &Profile,
    stacks: impl Iterator<Item = WeightedStack> + Clone,
    root_names: &[String],
    sample_type: SampleType,
    min_width_percent: f64,
    mut grant: impl FnMut(usize) -> bool,
) -> Option<Profile> {
    let total = stacks
        .clone()
        .filter(|s| s.value > 0)
        .fold(0i64, |total, s| total.saturating_add(s.value));
    let narrowest = ((total as f64 * min_width_percent / 100.0) as i64).max(1);
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
    for weighted in stacks.filter(|s| s.value > 0) {
        let Some(sample) = profile.samples.get(weighted.stack) else {
            continue;
        };
        if weighted.root != current_root {
            tree.emit(narrowest, sample_type, &mut visible.samples);
            tree.clear();
            current_root = weighted.root;
        }
        let roots = weighted.root.map(|root| first_root + root);
        let path = roots
            .into_iter()
            .chain(sample.locations.iter().rev().copied());
        if !tree.add(path, weighted.value, &mut grant) {
            return None;
        }
    }
    tree.emit(narrowest, sample_type, &mut visible.samples);
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
                .map(move |(stack, value)| WeightedStack {
                    stack,
                    root: Some(root),
                    value,
                })
        });
        let names = ["span: a".to_owned(), "span: b".to_owned()];
        let visible = visible_part(
            &profile,
            stacks,
            &names,
            SampleType::InuseSpace,
            1.0,
            |_| true,
        )
        .expect("granted");
        let total: i64 = visible
            .samples
            .iter()
            .map(|s| s.value(SampleType::InuseSpace))
            .sum();
        // `tiny` (1 byte of 300,002) is narrower than 0.1 %: handed to `main`, then to the
        // span, which keeps it: the total is whole.
        assert_eq!(total, 2 * 150_001);
        let tiny = visible
            .locations
            .iter()
            .position(|l| l.lines[0].function == "tiny");
        assert!(visible
            .samples
            .iter()
            .all(|s| !s.locations.contains(&tiny.unwrap())));
        assert_eq!(visible.samples.len(), 4, "{:?}", visible.samples);
        let one = [WeightedStack {
            stack: 0,
            root: None,
            value: 1,
        }];
        let refused = visible_part(
            &profile,
            one.into_iter(),
            &[],
            SampleType::InuseSpace,
            0.1,
            |_| false,
        );
        assert!(refused.is_none(), "a tree the budget refused");
    }
}
