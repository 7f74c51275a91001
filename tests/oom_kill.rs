//! The real thing: the kernel's memory cgroup kills a leaking service, and the evidence is on
//! disk before it does.
//!
//! As root on Linux, the test makes a child memory cgroup of its own (under the cgroup it runs
//! in, v1 or v2), limits it to 192 MiB, runs `examples/leaky_service.rs` in it until the kernel
//! kills it with SIGKILL, and reads what it left: at least one dump set written before the kill,
//! before naming (so near the limit), `go tool pprof -top` naming the leaking function first
//! all the same (the binary at hand), the summary's reason a threshold or a prediction. Then it
//! starts the service again in the same directory and checks the new instance names its
//! predecessor's set in place (`go tool pprof -symbolize=none`, no binary at hand, and the
//! flamegraph name the leak) and reports it. The cgroup is removed at the end, whatever
//! happens.
//!
//! Where it cannot run (not root, no memory controller) it says so loudly and exits 0 — unless
//! `HEAPWATCH_REQUIRE_PRIVILEGED=1` (set by `.ci/run`), where that is a failure.

use common::cgroup::{self, ChildCgroup};
use heapwatch::watch::{list_sets, read_summary};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

const LIMIT_BYTES: u64 = 192 << 20;
const KILL_TIMEOUT: Duration = Duration::from_secs(90);
const LEAKING_FUNCTION: &str = "leak_session_cache";

fn main() {
    let Some(parent) = cgroup::parent_or_cannot_run("oom_kill") else {
        return;
    };
    let child = match ChildCgroup::create(&parent, LIMIT_BYTES) {
        Ok(child) => child,
        Err(e) => {
            return cgroup::cannot_run(
                "oom_kill",
                &format!("cannot set up a child memory cgroup: {e}"),
            )
        }
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

    let killed_at = run_until_killed(&service, &dumps, &child);
    check_evidence(&dumps, killed_at);
    drop(child);
    check_next_instance_reports(&service, &dumps);
    fs::remove_dir_all(&dumps).expect("remove the dump directory");
    println!("oom_kill: passed");
}

/// Runs the service inside the cgroup; returns when the kernel killed it (in ms since the
/// epoch).
fn run_until_killed(service: &Path, dumps: &Path, cgroup: &ChildCgroup) -> u64 {
    let mut command = Command::new(service);
    command
        .env("HEAPWATCH_DIR", dumps)
        .env("HEAPWATCH_TICK", "250ms")
        .env("HEAPWATCH_KEEP", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cgroup.place(&mut command);
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
    // Written near the limit, before naming: addresses and the names the cache held, the
    // allocation machinery cut at the leaf as far as those names tell it.
    assert!(
        !summary.named,
        "a dump this near the limit is written before naming"
    );
    let top = common::pprof_top(&newest.profile(), "inuse_space");
    println!(
        "oom_kill: go tool pprof -top before naming, first rows: {:?}",
        &top[..top.len().min(3)]
    );
    assert!(
        top.first()
            .is_some_and(|(f, _)| f.contains(LEAKING_FUNCTION)),
        "go tool pprof -top (the binary at hand) should put {LEAKING_FUNCTION} first: {top:?}"
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
    // The new instance named its predecessor's sets in place: the profile, with the names in
    // it (read on a machine without the binary), the flamegraph and the summary.
    let summary = read_summary(&newest).expect("summary");
    assert!(summary.named, "named by the next instance");
    let top = common::pprof_top_without_binary(&newest.profile(), "inuse_space");
    println!(
        "oom_kill: go tool pprof -symbolize=none -top after the restart, first rows: {:?}",
        &top[..top.len().min(3)]
    );
    assert!(
        top.first()
            .is_some_and(|(f, _)| f.contains(LEAKING_FUNCTION)),
        "go tool pprof -symbolize=none -top should put {LEAKING_FUNCTION} first: {top:?}"
    );
    let svg = fs::read_to_string(newest.flamegraph()).expect("flamegraph");
    assert!(
        svg.contains(LEAKING_FUNCTION),
        "the flamegraph names the leak"
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
