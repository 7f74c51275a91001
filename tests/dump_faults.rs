//! A dump that cannot be written is logged and counted, never fatal, never half a file: with
//! the dump directory missing (its parent is a file), read-only, and on a full filesystem
//! (small tmpfs mounts made by the test, where mounting is permitted). Also the ordinary case:
//! dumps on request land complete, and only the newest sets are kept.
//!
//! The read-only and full cases need root and permission to mount; without it they say so
//! loudly and are skipped, unless `HEAPWATCH_REQUIRE_PRIVILEGED=1` (set by `.ci/run`).
//!
//! Frame-pointer pass: not needed — file-system faults while writing; what the profile holds does not matter.

use heapwatch::watch::{list_sets, read_summary, Watch};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// A tmpfs mounted by the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapwatch-faults-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn total_written() -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Starts a watch on `dir`, asks for `requests` dumps, and waits until each was written or
/// failed. Returns (written, failed) during this run.
fn request_dumps(dir: &Path, requests: usize) -> (u64, u64) {
    let (written_before, errors_before) = (total_written(), heapwatch::published::dump_errors());
    let handle = Watch::builder()
        .dir(dir)
        .tick(Duration::from_millis(20))
        .min_interval(Duration::ZERO)
        .keep(2)
        .start()
        .expect("start the watch");
    for i in 0..requests {
        handle.dump_now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while total_written() + heapwatch::published::dump_errors()
            < written_before + errors_before + i as u64 + 1
        {
            assert!(
                Instant::now() < deadline,
                "request {i} was neither written nor failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(handle);
    (
        total_written() - written_before,
        heapwatch::published::dump_errors() - errors_before,
    )
}

/// Files in `dir` whose names start with `heapwatch-` or `.heapwatch-`.
fn heapwatch_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.trim_start_matches('.').starts_with("heapwatch-"))
                .collect()
        })
        .unwrap_or_default()
}

fn ordinary_dumps_are_complete_and_rotated() {
    let dir = scratch("ok");
    let kept: Vec<u8> = vec![7; 4 << 20];
    let (written, failed) = request_dumps(&dir, 3);
    assert_eq!((written, failed), (3, 0));
    let sets = list_sets(&dir);
    assert_eq!(sets.len(), 2, "keep(2) keeps the newest two");
    assert_eq!(
        heapwatch_files(&dir).len(),
        6,
        "three files per set, nothing else"
    );
    for set in &sets {
        let summary = read_summary(set).expect("summary");
        assert_eq!(summary.reason, "on_demand");
        assert!(summary.heap.live_bytes >= kept.len() as u64);
        assert!(fs::metadata(set.profile()).unwrap().len() > 0);
    }
    drop(kept);
    fs::remove_dir_all(&dir).unwrap();
    println!("ok: ordinary dumps");
}

fn missing_directory_is_counted() {
    let base = scratch("missing");
    fs::create_dir_all(&base).unwrap();
    let file = base.join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let (written, failed) = request_dumps(&file.join("dumps"), 2);
    assert_eq!((written, failed), (0, 2));
    fs::remove_dir_all(&base).unwrap();
    println!("ok: missing directory");
}

fn read_only_directory_is_counted(require: bool) -> bool {
    let dir = scratch("ro");
    let Some(mount) = Tmpfs::mount(&dir, "size=1m,ro") else {
        return skipped("read-only directory", require);
    };
    let (written, failed) = request_dumps(&mount.0, 2);
    assert_eq!((written, failed), (0, 2));
    assert!(heapwatch_files(&mount.0).is_empty());
    println!("ok: read-only directory");
    true
}

fn full_filesystem_leaves_no_partial_files(require: bool) -> bool {
    let dir = scratch("full");
    let Some(mount) = Tmpfs::mount(&dir, "size=256k") else {
        return skipped("full filesystem", require);
    };
    // Leave a few KiB free: enough to start the files, not to finish them.
    let filler = mount.0.join("filler");
    let mut size = 256 * 1024 - 8 * 1024;
    while fs::write(&filler, vec![1u8; size]).is_err() {
        size -= 4096;
    }
    let (written, failed) = request_dumps(&mount.0, 2);
    assert_eq!((written, failed), (0, 2), "the set does not fit");
    assert!(
        heapwatch_files(&mount.0).is_empty(),
        "no partial file left: {:?}",
        heapwatch_files(&mount.0)
    );
    println!("ok: full filesystem");
    true
}

fn skipped(what: &str, require: bool) -> bool {
    let banner = "!".repeat(78);
    eprintln!("{banner}\ndump_faults: {what}: NOT RUN (cannot mount a tmpfs: needs root and CAP_SYS_ADMIN)\n{banner}");
    if require {
        eprintln!("dump_faults: HEAPWATCH_REQUIRE_PRIVILEGED=1, so this is a failure");
        std::process::exit(1);
    }
    false
}

fn main() {
    let require = std::env::var("HEAPWATCH_REQUIRE_PRIVILEGED").as_deref() == Ok("1");
    ordinary_dumps_are_complete_and_rotated();
    missing_directory_is_counted();
    read_only_directory_is_counted(require);
    full_filesystem_leaves_no_partial_files(require);
    println!("dump_faults: passed");
}
