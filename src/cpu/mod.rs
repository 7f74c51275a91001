//! CPU profiles (feature `cpu`): where the process spends its CPU time, sampled by heapwatch's
//! own SIGPROF sampler and encoded by heapwatch's own pprof encoder
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
//!
//! # Memory
//! A session holds at most 4,096 distinct stacks (per thread name) of 64 frames in one
//! anonymous mapping of ~2.3 MB, returned to the kernel when the session ends: a profile
//! leaves nothing behind but the names the symbolizer learnt (shared with heap profiles, and
//! counted in `heapwatch_symbolizer_bytes`). Samples of further stacks are counted in
//! [`CpuProfile::lost_samples`].
//!
//! # What is not sampled
//! The handler walks the interrupted thread's stack with libgcc's unwinder, which is not
//! reentrant: a thread interrupted inside libgcc, the dynamic loader or the vDSO is not walked
//! (its sample is counted lost). Inside libc and libpthread it is walked when the loaded
//! libgcc finds unwind tables with glibc's lock-free `_dl_find_object` (glibc 2.35 and a
//! libgcc of GCC 12 or later); an older libgcc takes the loader's lock to search, so those
//! samples are lost too, and time spent inside libc (`memcpy`, `malloc`'s own code) is then
//! under-reported.
//!
//! # Across fork
//! A child forked while its parent profiles starts with the sampler free: it can take its own
//! profile (the parent's table is unmapped in the child, the `SIGPROF` action put back; the
//! kernel does not carry interval timers across fork).

mod convert;
pub(crate) mod data;
mod sampler;
pub(crate) mod session;

pub use data::{CpuProfile, CpuSample};
pub use session::{profile, CpuProfileError, Reservation, SAMPLES_PER_SECOND};
