//! The real thing: the kernel's memory cgroup kills a leaking service, and the evidence is on
//! disk before it does.
//!
//! As root on Linux, the test makes a child memory cgroup of its own (under the cgroup it runs
//! in, v1 or v2), limits it to 192 MiB, runs `examples/leaky_service.rs` in it until the kernel
//! kills it with SIGKILL, and reads what it left: at least one dump set written before the kill,
//! `go tool pprof -top` naming the leaking function first, the flamegraph naming it, the
//! summary's reason a threshold or a prediction. Then it starts the service again in the same
//! directory and checks the new instance reports its predecessor's dump. The cgroup is removed
//! at the end, whatever happens.
//!
//! Where it cannot run (not root, no memory controller) it says so loudly and exits 0 — unless
//! `HEAPWATCH_REQUIRE_PRIVILEGED=1` (set by `.ci/run`), where that is a failure.

use heapwatch::watch::{list_sets, read_summary, Cgroup, CgroupVersion};
use std::ffi::CString;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

const LIMIT_BYTES: u64 = 192 << 20;
const KILL_TIMEOUT: Duration = Duration::from_secs(90);
const LEAKING_FUNCTION: &str = "leak_session_cache";

/// A child cgroup of our own, removed on drop.
struct ChildCgroup {
    dir: PathBuf,
}

impl ChildCgroup {
    fn create(parent: &Cgroup) -> Result<Self, String> {
        let dir = parent
            .dir
            .join(format!("heapwatch-test-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let child = ChildCgroup { dir };
        let write = |file: &str, value: &str| {
            fs::write(child.dir.join(file), value)
                .map_err(|e| format!("write {value} to {file}: {e}"))
        };
        match parent.version {
            CgroupVersion::V1 => {
                write("memory.limit_in_bytes", &LIMIT_BYTES.to_string())?;
                // Without swap the limit is reached at once; with it, the kernel would swap
                // for a long time first.
                let _ = write("memory.swappiness", "0");
                let _ = write("memory.memsw.limit_in_bytes", &LIMIT_BYTES.to_string());
            }
            CgroupVersion::V2 => {
                write("memory.max", &LIMIT_BYTES.to_string())?;
                let _ = write("memory.swap.max", "0");
            }
        }
        Ok(child)
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
        eprintln!("oom_kill: could not remove {}", self.dir.display());
    }
}

fn cannot_run(why: &str) {
    let banner = "!".repeat(78);
    eprintln!("{banner}\noom_kill: NOT RUN: {why}\n{banner}");
    if std::env::var("HEAPWATCH_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("oom_kill: HEAPWATCH_REQUIRE_PRIVILEGED=1, so this is a failure");
        std::process::exit(1);
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return cannot_run("needs root to create a memory cgroup");
    }
    let Some(parent) = Cgroup::of_this_process() else {
        return cannot_run("no memory cgroup controller found in /proc/self/cgroup");
    };
    if parent.version == CgroupVersion::V2 {
        // A v2 child only gets a memory controller if the parent delegates it.
        let _ = fs::write(parent.dir.join("cgroup.subtree_control"), "+memory");
    }
    let child = match ChildCgroup::create(&parent) {
        Ok(child) => child,
        Err(e) => return cannot_run(&format!("cannot set up a child memory cgroup: {e}")),
    };
    println!(
        "oom_kill: cgroup {} ({:?}), limit {} MiB",
        child.dir.display(),
        parent.version,
        LIMIT_BYTES >> 20
    );

    let dumps = std::env::temp_dir().join(format!("heapwatch-oom-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dumps);
    let service = common::example_binary("leaky_service");

    let killed_at = run_until_killed(&service, &dumps, &child.dir);
    check_evidence(&dumps, killed_at);
    drop(child);
    check_next_instance_reports(&service, &dumps);
    fs::remove_dir_all(&dumps).expect("remove the dump directory");
    println!("oom_kill: passed");
}

/// Runs the service inside the cgroup; returns when the kernel killed it (in ms since the
/// epoch).
fn run_until_killed(service: &Path, dumps: &Path, cgroup: &Path) -> u64 {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("path without NUL");
    let mut command = Command::new(service);
    command
        .env("HEAPWATCH_DIR", dumps)
        .env("HEAPWATCH_TICK", "250ms")
        .env("HEAPWATCH_KEEP", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions (open,
    // write, close, getpid) on memory prepared before the fork, and allocates nothing.
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
    let start = Instant::now();
    let mut child = command.spawn().expect("start leaky_service in the cgroup");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for leaky_service") {
            break status;
        }
        if start.elapsed() > KILL_TIMEOUT {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "leaky_service was not killed within {KILL_TIMEOUT:?}; its log:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed_at = now_ms();
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut log);
    }
    println!(
        "oom_kill: leaky_service ended after {:.1} s with {status:?}; its log:\n{log}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the kernel should have killed it (exit 137); it ended with {status:?}"
    );
    killed_at
}

fn check_evidence(dumps: &Path, killed_at: u64) {
    let sets = list_sets(dumps);
    assert!(!sets.is_empty(), "no dump set in {}", dumps.display());
    for set in &sets {
        let summary = read_summary(set).expect("summary readable");
        println!(
            "oom_kill: {} — {} at {} MiB of {} MiB",
            set.stem,
            summary.reason_detail,
            summary.working_set_bytes.unwrap_or(0) >> 20,
            summary.limit_bytes.unwrap_or(0) >> 20
        );
        assert!(
            summary.reason == "threshold" || summary.reason == "eta",
            "reason {:?}",
            summary.reason
        );
        assert!(summary.unix_ms <= killed_at, "written before the kill");
        assert_eq!(summary.limit_bytes, Some(LIMIT_BYTES), "the cgroup's limit");
        assert!(
            summary.limit_source.starts_with("cgroup"),
            "{}",
            summary.limit_source
        );
        assert!(!summary.series.is_empty(), "the summary carries the series");
    }
    let newest = sets.last().expect("at least one");
    let summary = read_summary(newest).expect("summary");
    assert!(
        summary
            .top_sites
            .first()
            .is_some_and(|s| s.function.contains(LEAKING_FUNCTION)),
        "top site of the newest summary: {:?}",
        summary.top_sites.first()
    );
    let top = common::pprof_top(&newest.profile(), "inuse_space");
    println!(
        "oom_kill: go tool pprof -top, first rows: {:?}",
        &top[..top.len().min(3)]
    );
    assert!(
        top.first()
            .is_some_and(|(f, _)| f.contains(LEAKING_FUNCTION)),
        "go tool pprof -top should put {LEAKING_FUNCTION} first: {top:?}"
    );
    let svg = fs::read_to_string(newest.flamegraph()).expect("flamegraph");
    assert!(
        svg.contains(LEAKING_FUNCTION),
        "the flamegraph names the leak"
    );
    let modified = fs::metadata(newest.summary())
        .and_then(|m| m.modified())
        .expect("mtime");
    let modified_ms = modified
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    assert!(
        modified_ms <= killed_at,
        "the files were complete before the kill"
    );
}

fn check_next_instance_reports(service: &Path, dumps: &Path) {
    let newest = list_sets(dumps).pop().expect("a set to report");
    let output = Command::new(service)
        .args(["--seconds", "1", "--no-leak"])
        .env("HEAPWATCH_DIR", dumps)
        .output()
        .expect("run leaky_service again");
    let log = String::from_utf8_lossy(&output.stderr);
    println!("oom_kill: second instance's log:\n{log}");
    assert!(output.status.success(), "second instance failed");
    let report = log
        .lines()
        .find(|l| l.contains("previous instance"))
        .unwrap_or_else(|| panic!("no report of the previous dump in:\n{log}"));
    assert!(report.contains("WARN"), "reported as a warning: {report}");
    assert!(
        report.contains(LEAKING_FUNCTION),
        "names the top site: {report}"
    );
    assert!(
        report.contains(&newest.stem),
        "names the newest set: {report}"
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
