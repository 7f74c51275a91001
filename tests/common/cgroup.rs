//! Child memory cgroups for the tests that let the kernel kill a leaking service: one under the
//! cgroup the test runs in (v1 or v2), limited, without swap, a process placed in it from the
//! start, removed when dropped.

use heapwatch::watch::{Cgroup, CgroupVersion};
use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Cgroups made by this process so far: with the pid, a name no other one has.
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A child memory cgroup of our own, removed on drop (on a panic too).
pub struct ChildCgroup {
    pub dir: PathBuf,
}

impl ChildCgroup {
    /// Makes `heapwatch-test-PID-N` under `parent` with its memory limited to `limit_bytes`
    /// and no swap (where the kernel lets it be limited).
    pub fn create(parent: &Cgroup, limit_bytes: u64) -> Result<Self, String> {
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let dir = parent
            .dir
            .join(format!("heapwatch-test-{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        // From here on, an early return removes the directory again.
        let child = ChildCgroup { dir };
        let write = |file: &str, value: &str| {
            fs::write(child.dir.join(file), value)
                .map_err(|e| format!("write {value} to {file}: {e}"))
        };
        match parent.version {
            CgroupVersion::V1 => {
                write("memory.limit_in_bytes", &limit_bytes.to_string())?;
                // Without swap the limit is reached at once; with it, the kernel would swap
                // for a long time first.
                let _ = write("memory.swappiness", "0");
                let _ = write("memory.memsw.limit_in_bytes", &limit_bytes.to_string());
            }
            CgroupVersion::V2 => {
                write("memory.max", &limit_bytes.to_string())?;
                let _ = write("memory.swap.max", "0");
            }
        }
        Ok(child)
    }

    /// Makes `command`'s process join this cgroup between fork and exec, so that everything
    /// it ever allocates is charged here.
    pub fn place(&self, command: &mut Command) {
        let procs = CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("path without NUL");
        // SAFETY: between fork and exec the closure only calls async-signal-safe functions
        // (open, write, close, getpid) on memory prepared before the fork, and allocates
        // nothing.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut digits = [0u8; 20];
                let mut pid = libc::getpid() as u32;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let written = libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at);
                libc::close(fd);
                if written < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// OOM kills the kernel counted in this cgroup (v2 `memory.events`, v1 `memory.oom_control`
    /// on kernels that report it).
    pub fn oom_kills(&self) -> Option<u64> {
        ["memory.events", "memory.oom_control"]
            .iter()
            .find_map(|file| fs::read_to_string(self.dir.join(file)).ok())?
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        // The killed process may take a moment to leave the cgroup.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}

/// The memory cgroup this test runs in, where a child cgroup can be made: `None` after
/// [`cannot_run`] said why not (not root, no memory controller).
pub fn parent_or_cannot_run(test: &str) -> Option<Cgroup> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cannot_run(test, "needs root to create a memory cgroup");
        return None;
    }
    let Some(parent) = Cgroup::of_this_process() else {
        cannot_run(
            test,
            "no memory cgroup controller found in /proc/self/cgroup",
        );
        return None;
    };
    if parent.version == CgroupVersion::V2 {
        // A v2 child only gets a memory controller if the parent delegates it.
        let _ = fs::write(parent.dir.join("cgroup.subtree_control"), "+memory");
    }
    Some(parent)
}

/// Says loudly that `test` did not run, and why; exits 1 under
/// `HEAPWATCH_REQUIRE_PRIVILEGED=1` (set by `.ci/run`), where that is a failure.
pub fn cannot_run(test: &str, why: &str) {
    let banner = "!".repeat(78);
    eprintln!("{banner}\n{test}: NOT RUN: {why}\n{banner}");
    if std::env::var("HEAPWATCH_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("{test}: HEAPWATCH_REQUIRE_PRIVILEGED=1, so this is a failure");
        std::process::exit(1);
    }
}
