//! A CPU profile as plain data: what a profiling session produces and the encoder reads. Its
//! locations and mappings are those of a heap [`Profile`](crate::profile::Profile), named by
//! the same symbolizer.

use crate::profile::{Location, Mapping};
use std::time::Duration;

/// Where the CPU time of a profiling session went: stacks and how often the sampler found
/// each running.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuProfile {
    /// When the session started, in nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// How long the session lasted.
    pub duration: Duration,
    /// Samples per second of CPU time the sampler was set to take: each sample stands for
    /// `1 / samples_per_second` seconds of CPU.
    pub samples_per_second: u32,
    /// Samples the sampler took but could not count: the stack was one more than its table
    /// holds (4,096 distinct stacks a session), or the thread was interrupted in code it never
    /// walks (libgcc, the dynamic loader, the vDSO, and libc with an older libgcc: see the
    /// `cpu` module). Not in
    /// [`samples`](CpuProfile::samples).
    pub lost_samples: u64,
    /// One entry per distinct stack and thread, heaviest first.
    pub samples: Vec<CpuSample>,
    /// Code locations, referenced by index from [`CpuSample::locations`].
    pub locations: Vec<Location>,
    /// Loaded objects, referenced from [`Location::mapping`].
    pub mappings: Vec<Mapping>,
}

/// How many times the sampler found one stack running on one thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Indexes into [`CpuProfile::locations`], innermost (the running function) first.
    pub locations: Vec<usize>,
    /// The thread's name, or its id where it has none.
    pub thread: String,
    /// Samples taken in this stack.
    pub count: u64,
}

impl CpuProfile {
    /// The CPU time one sample stands for, in nanoseconds (pprof's `period`).
    pub fn period_nanos(&self) -> i64 {
        1_000_000_000 / i64::from(self.samples_per_second.max(1))
    }

    /// Samples taken in the whole session.
    pub fn total_samples(&self) -> u64 {
        self.samples
            .iter()
            .fold(0u64, |total, s| total.saturating_add(s.count))
    }

    /// The innermost function of a sample's stack, as `go tool pprof -top` lists it (an
    /// inlined function where the running code was inlined).
    pub fn leaf_function(&self, sample: &CpuSample) -> Option<&str> {
        let location = self.locations.get(*sample.locations.first()?)?;
        Some(location.lines.first()?.function.as_str())
    }
}
