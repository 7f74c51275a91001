//! CPU profiles (feature `cpu`): where the process spends its CPU time, sampled by pprof-rs's
//! SIGPROF timer and encoded by heapwatch's own pprof encoder
//! ([`write_cpu_pprof`](crate::encode::write_cpu_pprof)), so that `go tool pprof`, Parca and
//! Pyroscope read it as they read a Go service's `/debug/pprof/profile`.
//!
//! ```no_run
//! let profile = heapwatch::cpu::profile(std::time::Duration::from_secs(5))?;
//! let mut file = std::fs::File::create("cpu.pb.gz")?;
//! heapwatch::encode::write_cpu_pprof(&profile, &mut file)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The sampler is process-wide (one interval timer, one signal handler): one profile runs at a
//! time, and a second request meets [`CpuProfileError::AlreadyRunning`] at once rather than
//! waiting. While no profile runs, nothing is installed and nothing is paid.

mod convert;
pub(crate) mod data;
pub(crate) mod session;

pub use data::{CpuProfile, CpuSample};
pub use session::{profile, CpuProfileError, Reservation, SAMPLES_PER_SECOND};
