//! Heap figures in criterion benchmarks (feature `criterion`): bytes or blocks allocated per
//! iteration as criterion's measurement, and a heap profile of each benchmark under
//! `cargo bench -- --profile-time N`.
//!
//! ```no_run
//! use criterion::{criterion_group, criterion_main, Criterion};
//! use heapwatch::bench::{BytesAllocated, HeapProfiler};
//!
//! #[global_allocator]
//! static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
//!
//! // One function for every measurement, in a group named after it: criterion keeps results
//! // (and compares runs) by benchmark id, so bytes must not land where the times are.
//! fn parse<M: criterion::measurement::Measurement + 'static>(c: &mut Criterion<M>, group: &str) {
//!     let split = || "1,2,3".split(',').map(str::to_owned).collect::<Vec<_>>();
//!     c.benchmark_group(group).bench_function("parse", |b| b.iter(split));
//! }
//! fn in_time(c: &mut Criterion) {
//!     parse(c, "time");
//! }
//! fn in_bytes(c: &mut Criterion<BytesAllocated>) {
//!     parse(c, "bytes");
//! }
//!
//! // Time, with a heap profile per benchmark under `--profile-time`…
//! criterion_group! {
//!     name = time;
//!     config = Criterion::default().with_profiler(HeapProfiler::default());
//!     targets = in_time
//! }
//! // …and bytes allocated per iteration, with criterion's statistics, from the same functions.
//! criterion_group! {
//!     name = bytes;
//!     config = Criterion::default().with_measurement(BytesAllocated);
//!     targets = in_bytes
//! }
//! criterion_main!(time, bytes);
//! ```
//!
//! Only the benchmark's own thread is counted (criterion runs the routine there); what the
//! routine hands to other threads is not. The profile is the whole process's.

use crate::encode;
use crate::profile::{Profile, SampleType};
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::profiler::Profiler;
use criterion::Throughput;
use std::path::{Path, PathBuf};

/// Bytes allocated per iteration, on the benchmark's thread, as a criterion measurement.
/// Counted exactly (every allocation, `realloc` as a new block), without slowing the routine:
/// the counters are read only around each batch of iterations.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesAllocated;

/// Blocks allocated per iteration (allocations, `realloc` included), on the benchmark's
/// thread, as a criterion measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlocksAllocated;

/// The criterion measurement of one allocation total of the benchmark's thread: `$index` into
/// `measure::allocated_so_far`'s (bytes, blocks), shown in `$units`.
macro_rules! allocated_per_iteration {
    ($measurement:ty, $index:tt, $units:expr) => {
        impl Measurement for $measurement {
            type Intermediate = u64;
            type Value = u64;

            fn start(&self) -> u64 {
                crate::measure::allocated_so_far().$index
            }
            fn end(&self, start: u64) -> u64 {
                crate::measure::allocated_so_far()
                    .$index
                    .wrapping_sub(start)
            }
            fn add(&self, a: &u64, b: &u64) -> u64 {
                a.wrapping_add(*b)
            }
            fn zero(&self) -> u64 {
                0
            }
            fn to_f64(&self, value: &u64) -> f64 {
                *value as f64
            }
            fn formatter(&self) -> &dyn ValueFormatter {
                &$units
            }
        }
    };
}

allocated_per_iteration!(
    BytesAllocated,
    0,
    Units {
        unit: "B",
        scaled: &[(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")],
    }
);
allocated_per_iteration!(
    BlocksAllocated,
    1,
    Units {
        unit: "allocs",
        scaled: &[(1_000_000, "M allocs"), (1_000, "k allocs")],
    }
);

/// Units for a count per iteration, scaled by the typical value.
struct Units {
    unit: &'static str,
    /// Larger units, largest first: (size, name).
    scaled: &'static [(u64, &'static str)],
}

impl Units {
    fn scale(&self, typical: f64) -> (f64, &'static str) {
        self.scaled
            .iter()
            .find(|(size, _)| typical.abs() >= *size as f64)
            .map_or((1.0, self.unit), |&(size, name)| (size as f64, name))
    }
}

impl ValueFormatter for Units {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (size, name) = self.scale(typical);
        values.iter_mut().for_each(|v| *v /= size);
        name
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        // Per element or per input byte: the figure per iteration divided by the work.
        let (per, name) = match throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (*n as f64, "per input byte"),
            Throughput::Elements(n) => (*n as f64, "per element"),
            Throughput::ElementsAndBytes { elements, .. } => (*elements as f64, "per element"),
            Throughput::Bits(n) => (*n as f64, "per input bit"),
        };
        values.iter_mut().for_each(|v| *v /= per.max(1.0));
        name
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        self.unit
    }
}

/// Writes each benchmark's heap profile when criterion profiles it
/// (`cargo bench --bench <name> -- --profile-time <seconds>`): `heap.pb.gz` (pprof: what the
/// benchmark allocated while profiled, `alloc_space` first, and what was live at the end) and
/// `heap.svg` (its `alloc_space` flamegraph) in criterion's directory for the benchmark,
/// `target/criterion/<benchmark>/profile/`.
///
/// While profiling, allocations are sampled every [`sample_rate`](Self::sample_rate) bytes
/// on average (default 4 KiB, against 512 KiB in production), then the rate in force before is
/// restored.
#[derive(Debug)]
pub struct HeapProfiler {
    sample_rate: u64,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    previous_rate: u64,
    before: Profile,
}

impl Default for HeapProfiler {
    fn default() -> Self {
        HeapProfiler {
            sample_rate: 4096,
            running: None,
        }
    }
}

impl HeapProfiler {
    /// A profiler sampling every `bytes` on average while it profiles (at least 1).
    pub fn sample_rate(bytes: u64) -> Self {
        HeapProfiler {
            sample_rate: bytes.max(1),
            running: None,
        }
    }

    /// The files [`stop_profiling`](Profiler::stop_profiling) writes into `benchmark_dir`.
    pub fn files(benchmark_dir: &Path) -> (PathBuf, PathBuf) {
        (
            benchmark_dir.join("heap.pb.gz"),
            benchmark_dir.join("heap.svg"),
        )
    }

    fn write(profile: &Profile, id: &str, benchmark_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(benchmark_dir)?;
        let (pprof, svg) = Self::files(benchmark_dir);
        replace_file(&pprof, |file| encode::write_pprof(profile, file))?;
        let title = format!("{id}: bytes allocated while profiled");
        replace_file(&svg, |file| {
            encode::write_flamegraph(profile, SampleType::AllocSpace, &title, file)
        })
    }
}

/// Writes `path` whole or not at all, replacing the file of an earlier run: written under a
/// new temporary name (`O_EXCL|O_NOFOLLOW`: nothing planted there is followed or reused), then
/// renamed over `path` (which replaces a symlink planted at `path`, never its target).
fn replace_file(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("heap");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // a leftover of a run that died (never followed)
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let mut writer = std::io::BufWriter::new(file);
    let written = write(&mut writer).and_then(|()| writer.flush());
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = std::fs::remove_file(&tmp);
            Err(error)
        }
    }
}

impl Profiler for HeapProfiler {
    fn start_profiling(&mut self, _id: &str, _benchmark_dir: &Path) {
        let previous_rate = crate::sampler::sample_rate();
        crate::thread_state::set_sample_rate(self.sample_rate);
        self.running = Some(Running {
            previous_rate,
            before: crate::snapshot::snapshot(),
        });
    }

    fn stop_profiling(&mut self, id: &str, benchmark_dir: &Path) {
        let Some(running) = self.running.take() else {
            return;
        };
        let after = crate::snapshot::snapshot();
        crate::thread_state::set_sample_rate(running.previous_rate);
        let profile = after.allocated_since(&running.before);
        match Self::write(&profile, id, benchmark_dir) {
            Ok(()) => eprintln!(
                "heapwatch: heap profile of {id} in {}",
                benchmark_dir.display()
            ),
            Err(error) => eprintln!(
                "heapwatch: could not write the heap profile of {id} to {}: {error}",
                benchmark_dir.display()
            ),
        }
    }
}
