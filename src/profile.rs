//! A heap profile as plain data: what the snapshot builder produces and every encoder reads.
//! Nothing here reaches back into the allocator.

use std::fmt;
use std::str::FromStr;

/// The four sample types of a heap profile, in the order Go and pprof use.
///
/// `alloc_*` count everything allocated since start (freed or not); `inuse_*` count what is
/// live now. `*_objects` count blocks, `*_space` count bytes. All are unbiased estimates scaled
/// up from the samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// Blocks allocated since start.
    AllocObjects,
    /// Bytes allocated since start.
    AllocSpace,
    /// Blocks live now.
    InuseObjects,
    /// Bytes live now: the usual question, "what holds my memory?".
    InuseSpace,
}

impl SampleType {
    /// All four, in profile order.
    pub const ALL: [SampleType; 4] = [
        SampleType::AllocObjects,
        SampleType::AllocSpace,
        SampleType::InuseObjects,
        SampleType::InuseSpace,
    ];

    /// The pprof name (`inuse_space`, …).
    pub fn name(self) -> &'static str {
        match self {
            SampleType::AllocObjects => "alloc_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::InuseSpace => "inuse_space",
        }
    }

    /// The pprof unit: `count` or `bytes`.
    pub fn unit(self) -> &'static str {
        match self {
            SampleType::AllocObjects | SampleType::InuseObjects => "count",
            SampleType::AllocSpace | SampleType::InuseSpace => "bytes",
        }
    }

    /// Position in [`Sample::values`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SampleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A sample type name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown sample type {0:?}: expected inuse_space, inuse_objects, alloc_space or alloc_objects"
)]
pub struct UnknownSampleType(pub String);

impl FromStr for SampleType {
    type Err = UnknownSampleType;

    /// ```
    /// let t: heapwatch::SampleType = "inuse_space".parse().unwrap();
    /// assert_eq!(t, heapwatch::SampleType::InuseSpace);
    /// assert!("rss".parse::<heapwatch::SampleType>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SampleType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownSampleType(s.to_owned()))
    }
}

/// A heap profile: samples by stack, the code locations they reference, and the loaded objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// When the snapshot was taken, in nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// The mean sampling interval in bytes the samples were taken at (0 if unknown).
    pub sample_rate_bytes: u64,
    /// One entry per distinct stack.
    pub samples: Vec<Sample>,
    /// Code locations, referenced by index from [`Sample::locations`].
    pub locations: Vec<Location>,
    /// Loaded objects (executable, libraries), referenced from [`Location::mapping`].
    pub mappings: Vec<Mapping>,
    /// The sample type tools show first; `None` means `inuse_space`, as for Go's heap profile
    /// (Go's `/debug/pprof/allocs` sets `alloc_space`).
    pub default_sample_type: Option<SampleType>,
}

#[cfg(test)]
impl Profile {
    /// A profile of one stack, one named frame deep, with `values` as in [`Sample::values`]:
    /// the smallest input the encoders, the decoder and the dump writer accept.
    pub(crate) fn one_site(function: &str, address: u64, values: [i64; 4]) -> Profile {
        Profile {
            sample_rate_bytes: 512 * 1024,
            samples: vec![Sample {
                locations: vec![0],
                values,
                labels: Vec::new(),
            }],
            locations: vec![Location {
                address,
                mapping: None,
                lines: vec![Line {
                    function: function.into(),
                    ..Line::default()
                }],
            }],
            ..Profile::default()
        }
    }
}

/// The estimated totals of one stack.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Indexes into [`Profile::locations`], innermost (the allocating function) first.
    pub locations: Vec<usize>,
    /// Indexed by [`SampleType::index`]: alloc_objects, alloc_space, inuse_objects, inuse_space.
    pub values: [i64; 4],
    /// pprof labels, key and value: the span the allocations were made in (`span`, then one
    /// per field [`SpanLayer`](crate::spans) selects), empty outside every span.
    pub labels: Vec<(String, String)>,
}

impl Sample {
    /// The value of one sample type.
    pub fn value(&self, sample_type: SampleType) -> i64 {
        self.values[sample_type.index()]
    }
}

/// One code address, with the function(s) it belongs to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Location {
    /// The instruction address in this process (a return address minus one).
    pub address: u64,
    /// Index into [`Profile::mappings`], if the address lies in a known object.
    pub mapping: Option<usize>,
    /// Innermost first: more than one when functions were inlined here (DWARF only). Empty if
    /// the address could not be named.
    pub lines: Vec<Line>,
}

/// A function (and, with DWARF, a source position) at a location.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    /// Demangled, fully qualified function name, without the hash suffix
    /// (`orders::sessions::retain_blob`, `<F as axum::handler::Handler<T,S>>::call::{{closure}}`).
    pub function: String,
    /// The symbol's raw (mangled) name where one is known, or, for a closure named from line
    /// tables, rustc's path of it (`orders::hold_sessions::{closure#0}`); else empty: pprof's
    /// `system_name`.
    pub system_name: String,
    /// Source file, when DWARF line info was used.
    pub file: Option<String>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// A loaded object file, as pprof describes it, so that tools can symbolize offline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Start of its code in memory.
    pub memory_start: u64,
    /// End of its code in memory.
    pub memory_limit: u64,
    /// Offset in the file where the code starts.
    pub file_offset: u64,
    /// Path of the file.
    pub path: String,
    /// GNU build id, lower-case hex; empty if none.
    pub build_id: String,
}

/// A function's share of one sample type, as `go tool pprof -top` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionTotal {
    /// The function name.
    pub function: String,
    /// Attributed to stacks where this function is the innermost frame.
    pub flat: i64,
    /// Attributed to stacks where this function appears at all.
    pub cum: i64,
}

/// How much one function's flat total grew between two profiles: a row of
/// [`Profile::growth_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionGrowth {
    /// The function name.
    pub function: String,
    /// Its flat total now less its flat total before (0 if it was absent); always positive.
    pub grown: i64,
    /// Its flat total now.
    pub now: i64,
}

impl Profile {
    /// The sum of one sample type over all samples.
    ///
    /// ```
    /// let profile = heapwatch::Profile::default();
    /// assert_eq!(profile.total(heapwatch::SampleType::InuseSpace), 0);
    /// ```
    pub fn total(&self, sample_type: SampleType) -> i64 {
        // Saturating: a decoded profile's values are whatever its writer put there.
        self.samples
            .iter()
            .fold(0i64, |sum, s| sum.saturating_add(s.value(sample_type)))
    }

    /// The function names of a sample's stack, innermost first, inlined frames expanded.
    /// Unnamed addresses read as their object (`[libc.so.6]`), once for consecutive frames of
    /// one object, or `0x…` outside any.
    pub fn stack_names<'a>(&'a self, sample: &'a Sample) -> impl Iterator<Item = String> + 'a {
        let mut previous_unnamed = None;
        sample.locations.iter().flat_map(move |&index| {
            let location = self.locations.get(index);
            let unnamed = location
                .filter(|l| l.lines.is_empty())
                .and_then(|l| l.mapping);
            let repeat = unnamed.is_some() && unnamed == previous_unnamed;
            previous_unnamed = unnamed;
            let names: Vec<String> = match location {
                _ if repeat => Vec::new(),
                Some(location) if !location.lines.is_empty() => {
                    location.lines.iter().map(|l| l.function.clone()).collect()
                }
                Some(location) => vec![self.unnamed_location(location)],
                None => vec!["[unknown]".to_owned()],
            };
            names
        })
    }

    /// What an unnamed location reads as: its object's file name in brackets, as pprof shows
    /// it, or its address when it lies in no known object.
    fn unnamed_location(&self, location: &Location) -> String {
        let object = location
            .mapping
            .and_then(|m| self.mappings.get(m))
            .map(|m| m.path.rsplit('/').next().unwrap_or(&m.path))
            .filter(|name| !name.is_empty());
        match object {
            Some(name) => format!("[{name}]"),
            None => format!("{:#x}", location.address),
        }
    }

    /// Per function, totals of one sample type where `flat` goes to each stack's *culprit*: its
    /// innermost frame that is not [`Plumbing`](crate::Plumbing) (the innermost frame if all
    /// are). Largest flat first. This is the list heapwatch names culprits from (reports, leak
    /// suspects, summaries, [`leak_check`](crate::leak_check)); [`top_functions`](Self::top_functions)
    /// is the list `go tool pprof -top` prints.
    ///
    /// ```
    /// let profile = heapwatch::snapshot();
    /// let culprits = profile.culprits(heapwatch::SampleType::InuseSpace, &heapwatch::plumbing());
    /// assert!(culprits.windows(2).all(|w| w[0].flat >= w[1].flat));
    /// ```
    pub fn culprits(
        &self,
        sample_type: SampleType,
        plumbing: &crate::plumbing::Plumbing,
    ) -> Vec<FunctionTotal> {
        let names = FunctionNames::of(self);
        let is_plumbing = names.plumbing(plumbing);
        self.totals(&names, sample_type, |stack| culprit_at(stack, &is_plumbing))
    }

    /// Each sample's culprit, as [`culprits`](Self::culprits) names it, in the order of
    /// [`samples`](Self::samples); `None` for a sample without frames.
    pub(crate) fn sample_culprits(
        &self,
        plumbing: &crate::plumbing::Plumbing,
    ) -> Vec<Option<String>> {
        let names = FunctionNames::of(self);
        let is_plumbing = names.plumbing(plumbing);
        let mut stack = Vec::new();
        self.samples
            .iter()
            .map(|sample| {
                stack.clear();
                stack.extend(names.stack(sample));
                let id = stack.get(culprit_at(&stack, &is_plumbing))?;
                Some(names.names[*id].clone())
            })
            .collect()
    }

    /// Per function, the flat and cumulative totals of one sample type, largest flat first
    /// (then largest cumulative, then name): the table `go tool pprof -top` prints.
    ///
    /// ```
    /// let profile = heapwatch::snapshot();
    /// let top = profile.top_functions(heapwatch::SampleType::InuseSpace);
    /// assert!(top.windows(2).all(|w| w[0].flat >= w[1].flat));
    /// ```
    pub fn top_functions(&self, sample_type: SampleType) -> Vec<FunctionTotal> {
        self.totals(&FunctionNames::of(self), sample_type, |_| 0)
    }

    /// The functions whose flat total of `sample_type` grew from `before` to `self`, largest
    /// growth first (then by name): what grew between two profiles of one program.
    ///
    /// With `plumbing`, flat totals are [`culprits`](Self::culprits)' (each stack counted at
    /// its innermost frame outside the plumbing: the sites a leak check names); with `None`,
    /// [`top_functions`](Self::top_functions)' (each stack at its innermost frame, as
    /// `go tool pprof -top -diff_base` counts).
    ///
    /// ```
    /// use heapwatch::{Line, Location, Profile, Sample, SampleType};
    /// let site = |name: &str, bytes: i64| Profile {
    ///     locations: vec![Location {
    ///         lines: vec![Line { function: name.into(), ..Line::default() }],
    ///         ..Location::default()
    ///     }],
    ///     samples: vec![Sample { locations: vec![0], values: [1, bytes, 1, bytes], labels: Vec::new() }],
    ///     ..Profile::default()
    /// };
    /// let growth = site("cache::insert", 3000).growth_since(&site("cache::insert", 1000), SampleType::InuseSpace, None);
    /// assert_eq!((growth[0].function.as_str(), growth[0].grown, growth[0].now), ("cache::insert", 2000, 3000));
    /// assert!(site("cache::insert", 500).growth_since(&site("cache::insert", 1000), SampleType::InuseSpace, None).is_empty());
    /// ```
    pub fn growth_since(
        &self,
        before: &Profile,
        sample_type: SampleType,
        plumbing: Option<&crate::plumbing::Plumbing>,
    ) -> Vec<FunctionGrowth> {
        let flat_totals = |profile: &Profile| match plumbing {
            Some(plumbing) => profile.culprits(sample_type, plumbing),
            None => profile.top_functions(sample_type),
        };
        let before: std::collections::HashMap<String, i64> = flat_totals(before)
            .into_iter()
            .map(|f| (f.function, f.flat))
            .collect();
        let mut growth: Vec<FunctionGrowth> = flat_totals(self)
            .into_iter()
            .filter_map(|f| {
                // Saturating, as `total`: a decoded profile's values are whatever its writer
                // put there.
                let grown = f
                    .flat
                    .saturating_sub(before.get(&f.function).copied().unwrap_or(0));
                (grown > 0).then_some(FunctionGrowth {
                    function: f.function,
                    grown,
                    now: f.flat,
                })
            })
            .collect();
        growth.sort_by(|a, b| {
            b.grown
                .cmp(&a.grown)
                .then_with(|| a.function.cmp(&b.function))
        });
        growth
    }

    /// What was allocated between `earlier` and this profile, two snapshots of one process: the
    /// `alloc_*` figures of each stack minus its figures in `earlier` (Go's delta profile, as
    /// `/debug/pprof/allocs?seconds=N` serves it), and the `inuse_*` figures as of this profile.
    /// Stacks are matched by their code addresses; those with nothing allocated and nothing
    /// live are left out. The result shows `alloc_space` first.
    ///
    /// ```
    /// use heapwatch::{Line, Location, Profile, Sample, SampleType};
    /// let at = |values: [i64; 4]| Profile {
    ///     locations: vec![Location { address: 0x1000, lines: vec![Line { function: "parse".into(), ..Line::default() }], ..Location::default() }],
    ///     samples: vec![Sample { locations: vec![0], values, labels: Vec::new() }],
    ///     ..Profile::default()
    /// };
    /// let delta = at([30, 3000, 2, 200]).allocated_since(&at([10, 1000, 5, 500]));
    /// assert_eq!(delta.samples[0].values, [20, 2000, 2, 200]);
    /// assert_eq!(delta.default_sample_type, Some(SampleType::AllocSpace));
    /// ```
    pub fn allocated_since(&self, earlier: &Profile) -> Profile {
        // A stack under two spans is two samples: the span is part of the key.
        type Key = (Vec<u64>, Vec<(String, String)>);
        fn key(profile: &Profile, sample: &Sample) -> Key {
            let addresses = sample
                .locations
                .iter()
                .map(|&l| profile.locations.get(l).map_or(0, |loc| loc.address))
                .collect();
            (addresses, sample.labels.clone())
        }
        let mut before: std::collections::HashMap<Key, [i64; 2]> = Default::default();
        for sample in &earlier.samples {
            let entry = before.entry(key(earlier, sample)).or_default();
            entry[0] = entry[0].saturating_add(sample.values[0]);
            entry[1] = entry[1].saturating_add(sample.values[1]);
        }
        // Stacks that differ only in machinery cut from their leaves share a key: merged, so
        // that the earlier figures are taken off once.
        let mut merged: Vec<Sample> = Vec::with_capacity(self.samples.len());
        let mut index: std::collections::HashMap<Key, usize> = Default::default();
        for sample in &self.samples {
            let key = key(self, sample);
            match index.get(&key) {
                Some(&at) => {
                    let into = &mut merged[at].values;
                    for (total, value) in into.iter_mut().zip(sample.values) {
                        *total = total.saturating_add(value);
                    }
                }
                None => {
                    index.insert(key, merged.len());
                    merged.push(sample.clone());
                }
            }
        }
        for (key, &at) in &index {
            if let Some(earlier) = before.get(key) {
                let values = &mut merged[at].values;
                values[0] = values[0].saturating_sub(earlier[0]).max(0);
                values[1] = values[1].saturating_sub(earlier[1]).max(0);
            }
        }
        merged.retain(|sample| sample.values.iter().any(|&v| v != 0));
        Profile {
            samples: merged,
            default_sample_type: Some(SampleType::AllocSpace),
            ..self.clone_without_samples()
        }
    }

    fn clone_without_samples(&self) -> Profile {
        Profile {
            time_nanos: self.time_nanos,
            sample_rate_bytes: self.sample_rate_bytes,
            samples: Vec::new(),
            locations: self.locations.clone(),
            mappings: self.mappings.clone(),
            default_sample_type: self.default_sample_type,
        }
    }

    /// Flat and cumulative totals per function; `flat` goes to the frame `flat_at` picks from
    /// each stack's function ids (innermost first).
    fn totals(
        &self,
        names: &FunctionNames,
        sample_type: SampleType,
        flat_at: impl Fn(&[usize]) -> usize,
    ) -> Vec<FunctionTotal> {
        // Work on function ids, not strings: a dump of 10,000 stacks walks ~200,000 frames.
        let mut flat = vec![0i64; names.names.len()];
        let mut cum = vec![0i64; names.names.len()];
        // The last sample each function was counted in, so recursion counts once in `cum`.
        let mut counted_in = vec![usize::MAX; names.names.len()];
        let mut stack = Vec::new();
        for (index, sample) in self.samples.iter().enumerate() {
            let value = sample.value(sample_type);
            if value == 0 {
                continue;
            }
            stack.clear();
            stack.extend(names.stack(sample));
            if let Some(&id) = stack.get(flat_at(&stack)) {
                flat[id] = flat[id].saturating_add(value);
            }
            for &id in &stack {
                if counted_in[id] != index {
                    counted_in[id] = index;
                    cum[id] = cum[id].saturating_add(value);
                }
            }
        }
        let mut list: Vec<FunctionTotal> = names
            .names
            .iter()
            .enumerate()
            .filter(|(id, _)| counted_in[*id] != usize::MAX)
            .map(|(id, function)| FunctionTotal {
                function: function.clone(),
                flat: flat[id],
                cum: cum[id],
            })
            .collect();
        list.sort_by(|a, b| {
            b.flat
                .cmp(&a.flat)
                .then(b.cum.cmp(&a.cum))
                .then_with(|| a.function.cmp(&b.function))
        });
        list
    }
}

/// Every function name of a profile, numbered, and each location's functions as numbers.
struct FunctionNames {
    names: Vec<String>,
    /// Per location, its function ids, innermost first.
    by_location: Vec<Vec<usize>>,
    unknown: usize,
}

impl FunctionNames {
    fn of(profile: &Profile) -> Self {
        let mut ids: std::collections::HashMap<String, usize> = Default::default();
        let mut names = Vec::new();
        let mut intern = |name: String| {
            *ids.entry(name).or_insert_with_key(|name| {
                names.push(name.clone());
                names.len() - 1
            })
        };
        let unknown = intern("[unknown]".to_owned());
        let by_location = profile
            .locations
            .iter()
            .map(|location| {
                if location.lines.is_empty() {
                    vec![intern(profile.unnamed_location(location))]
                } else {
                    location
                        .lines
                        .iter()
                        .map(|l| intern(l.function.clone()))
                        .collect()
                }
            })
            .collect();
        FunctionNames {
            names,
            by_location,
            unknown,
        }
    }

    /// Per function id, whether it is `plumbing`.
    fn plumbing(&self, plumbing: &crate::plumbing::Plumbing) -> Vec<bool> {
        self.names.iter().map(|n| plumbing.contains(n)).collect()
    }

    /// A sample's function ids, innermost first, inlined frames expanded.
    fn stack<'a>(&'a self, sample: &'a Sample) -> impl Iterator<Item = usize> + 'a {
        sample.locations.iter().flat_map(move |&index| {
            self.by_location
                .get(index)
                .map_or(std::slice::from_ref(&self.unknown), Vec::as_slice)
                .iter()
                .copied()
        })
    }
}

/// Where a stack's culprit is: its innermost frame outside the plumbing, else its innermost.
fn culprit_at(stack: &[usize], is_plumbing: &[bool]) -> usize {
    stack.iter().position(|&id| !is_plumbing[id]).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprits_pass_over_plumbing_and_unnamed_runs_read_once() {
        let named = |address, function: &str| Location {
            address,
            mapping: Some(0),
            lines: vec![Line {
                function: function.to_owned(),
                ..Line::default()
            }],
        };
        let unnamed = |address| Location {
            address,
            mapping: Some(1),
            lines: Vec::new(),
        };
        let profile = Profile {
            samples: vec![Sample {
                locations: vec![0, 1, 2, 3],
                values: [1, 100, 1, 100],
                labels: Vec::new(),
            }],
            locations: vec![
                named(1, "bytes::bytes_mut::BytesMut::reserve_inner"),
                named(2, "orders::encode_reply"),
                unnamed(3),
                unnamed(4),
            ],
            mappings: vec![
                Mapping::default(),
                Mapping {
                    path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                    ..Mapping::default()
                },
            ],
            ..Profile::default()
        };
        let culprits = profile.culprits(
            SampleType::InuseSpace,
            &crate::plumbing::Plumbing::default(),
        );
        assert_eq!(culprits[0].function, "orders::encode_reply");
        let flat = profile.top_functions(SampleType::InuseSpace);
        assert_eq!(
            flat[0].function,
            "bytes::bytes_mut::BytesMut::reserve_inner"
        );
        let culprits = profile.culprits(SampleType::InuseSpace, &crate::plumbing::Plumbing::none());
        assert_eq!(
            culprits[0].function,
            "bytes::bytes_mut::BytesMut::reserve_inner"
        );
        let names: Vec<String> = profile.stack_names(&profile.samples[0]).collect();
        assert_eq!(
            names,
            [
                "bytes::bytes_mut::BytesMut::reserve_inner",
                "orders::encode_reply",
                "[libc.so.6]"
            ]
        );
    }

    fn line(name: &str) -> Location {
        Location {
            lines: vec![Line {
                function: name.to_owned(),
                ..Line::default()
            }],
            ..Location::default()
        }
    }

    #[test]
    fn growth_since_counts_at_the_leaf_or_the_culprit() {
        let stack = |frames: &[usize], bytes| Sample {
            locations: frames.to_vec(),
            values: [1, bytes, 1, bytes],
            labels: Vec::new(),
        };
        let locations = vec![
            line("bytes::bytes_mut::BytesMut::reserve_inner"),
            line("orders::encode_reply"),
            line("orders::steady"),
            line("orders::gone"),
        ];
        let before = Profile {
            locations: locations.clone(),
            samples: vec![stack(&[0, 1], 100), stack(&[2], 50), stack(&[3], 10)],
            ..Profile::default()
        };
        let after = Profile {
            locations,
            samples: vec![stack(&[0, 1], 400), stack(&[2], 50), stack(&[1], 100)],
            ..Profile::default()
        };
        let rows = |plumbing: Option<&crate::plumbing::Plumbing>| {
            after
                .growth_since(&before, SampleType::InuseSpace, plumbing)
                .into_iter()
                .map(|g| (g.function, g.grown, g.now))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rows(None),
            [
                (
                    "bytes::bytes_mut::BytesMut::reserve_inner".to_owned(),
                    300,
                    400
                ),
                ("orders::encode_reply".to_owned(), 100, 100),
            ]
        );
        assert_eq!(
            rows(Some(&crate::plumbing::Plumbing::default())),
            [("orders::encode_reply".to_owned(), 400, 500)]
        );
    }

    #[test]
    fn top_functions_count_flat_at_the_leaf_and_cum_once_per_stack() {
        let profile = Profile {
            locations: vec![
                line("leaf_a"),
                line("leaf_b"),
                line("main"),
                line("recurse"),
            ],
            samples: vec![
                Sample {
                    locations: vec![0, 3, 3, 2],
                    values: [1, 100, 1, 100],
                    labels: Vec::new(),
                },
                Sample {
                    locations: vec![1, 2],
                    values: [1, 30, 0, 0],
                    labels: Vec::new(),
                },
            ],
            ..Profile::default()
        };
        let top = profile.top_functions(SampleType::InuseSpace);
        assert_eq!(top[0].function, "leaf_a");
        assert_eq!((top[0].flat, top[0].cum), (100, 100));
        let recurse = top.iter().find(|t| t.function == "recurse").unwrap();
        assert_eq!((recurse.flat, recurse.cum), (0, 100));
        assert!(top.iter().all(|t| t.function != "leaf_b"));
        let alloc = profile.top_functions(SampleType::AllocSpace);
        let main = alloc.iter().find(|t| t.function == "main").unwrap();
        assert_eq!(main.cum, 130);
        assert_eq!(profile.total(SampleType::AllocSpace), 130);
    }
}
