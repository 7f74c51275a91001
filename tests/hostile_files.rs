//! A dump directory that others write in: symlinks planted where the writer would write, links
//! planted where the HTTP listener serves, the directory deleted under the running watch, a
//! second instance sharing the directory, and a run of same-reason dumps after a climb. Every
//! case drives the real watch thread through the public API.
//!
//! One process, one watch at a time, so the cases run in order from `main`; the second instance
//! is this binary again, started as a child (`HOSTILE_FILES_CHILD`).
//!
//! Frame-pointer pass: not needed — files planted in the dump directory; what the profile holds does not matter.

use heapwatch::watch::{self, list_sets, read_summary, Cgroup, CgroupVersion, DumpSet, Watch};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Every wait in this file gives up after this long.
const DEADLINE: Duration = Duration::from_secs(20);
const CHILD_ENV: &str = "HOSTILE_FILES_CHILD";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapwatch-hostile-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn total_written() -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

fn written(kind: &str) -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .find(|(k, _)| k.name() == kind)
        .map_or(0, |(_, n)| *n)
}

/// Polls `done` until it holds, failing with `what` after [`DEADLINE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A watch on `dir` that dumps as soon as asked.
fn start(dir: &Path, keep: usize) -> watch::WatchHandle {
    Watch::builder()
        .dir(dir)
        .tick(Duration::from_millis(20))
        .min_interval(Duration::ZERO)
        .keep(keep)
        .start()
        .expect("start the watch")
}

/// Asks for one dump and waits until it was written or failed; whether it was written.
fn dump(handle: &watch::WatchHandle) -> bool {
    let (written, errors) = (total_written(), heapwatch::published::dump_errors());
    handle.dump_now();
    wait_for("a requested dump", || {
        total_written() + heapwatch::published::dump_errors() > written + errors
    });
    total_written() > written
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_files(set: &DumpSet) -> [PathBuf; 3] {
    [set.profile(), set.flamegraph(), set.summary()]
}

/// Runs `f` on another thread and fails if it takes longer than [`DEADLINE`]: reading a planted
/// FIFO must not hang the caller (nor this test).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

/// The names a writer with predictable names (time, pid, sequence) would use over the next
/// half minute: a symlink at each, to `victim`.
fn plant_symlinks_at_predictable_names(dir: &Path, victim: &Path) -> Vec<PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut planted = Vec::new();
    for second in now - 2..now + 30 {
        let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second))
            .to_string()
            .replace(['-', ':'], "");
        for seq in 1..=5 {
            let stem = format!("heapwatch-{time}-{}-{seq:04}-on-demand", std::process::id());
            for ext in ["pb.gz", "svg", "json"] {
                for name in [format!("{stem}.{ext}"), format!(".{stem}.{ext}.tmp")] {
                    let path = dir.join(name);
                    // Not over a file of the set the watch has already written.
                    if std::os::unix::fs::symlink(victim, &path).is_ok() {
                        planted.push(path);
                    }
                }
            }
        }
    }
    planted
}

/// Dumps never follow a symlink planted where a writer might write, and never replace it.
fn planted_symlinks_are_never_followed(dir: &Path, outside: &Path) {
    fs::create_dir_all(dir).unwrap();
    let victim = outside.join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let handle = start(dir, 5);
    // Planted once the watch runs: past its start-up clean-up, which could sweep them away.
    assert!(dump(&handle));
    let planted = plant_symlinks_at_predictable_names(dir, &victim);
    for i in 0..3 {
        assert!(dump(&handle), "dump {i} failed: the names were predictable");
    }
    drop(handle);
    let victim_now = String::from_utf8_lossy(&fs::read(&victim).unwrap()).into_owned();
    assert!(
        victim_now == "precious",
        "a dump followed a symlink: the victim now reads {:?}",
        victim_now.chars().take(60).collect::<String>()
    );
    for link in &planted {
        assert_eq!(
            fs::read_link(link).ok().as_deref(),
            Some(victim.as_path()),
            "{} was replaced",
            link.display()
        );
    }
    let sets = list_sets(dir);
    assert_eq!(sets.len(), 4);
    for path in sets.iter().flat_map(set_files) {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "{} is not a regular file", path.display());
    }
    println!("ok: planted symlinks are never followed");
}

/// The listing and the download serve neither a planted symlink nor a planted hard link nor a
/// FIFO, and the start-up report does not read them.
#[cfg(feature = "http")]
fn planted_links_are_not_served(dir: &Path, outside: &Path) {
    use heapwatch::http::{respond, Context};
    let secret = outside.join("shadow");
    let secret_text = "root:$6$not-for-you:19000:0:99999:7:::";
    fs::write(&secret, secret_text).unwrap();
    fs::create_dir_all(dir).unwrap();
    let handle = start(dir, 5);
    assert!(dump(&handle));
    drop(handle);
    let real = list_sets(dir).pop().expect("a real set");

    // Named to sort after every real set, so a reader that takes the newest takes them.
    let linked = "heapwatch-99991231T235957Z-aaaaaaaa-0001-bbbbbbbb-signal";
    std::os::unix::fs::symlink(&secret, dir.join(format!("{linked}.json"))).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("heapwatch-x.json")).unwrap();
    // A real summary, with a symlink and a hard link beside it as its other files.
    let beside = "heapwatch-99991231T235958Z-aaaaaaaa-0002-cccccccc-signal";
    fs::copy(real.summary(), dir.join(format!("{beside}.json"))).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join(format!("{beside}.pb.gz"))).unwrap();
    fs::hard_link(&secret, dir.join(format!("{beside}.svg"))).unwrap();
    let fifo = "heapwatch-99991231T235959Z-aaaaaaaa-0003-dddddddd-signal";
    let fifo_path = std::ffi::CString::new(
        dir.join(format!("{fifo}.json"))
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo_path.as_ptr(), 0o600) }, 0);

    let context = Context {
        token: None,
        dump_dir: Some(dir.to_owned()),
        metrics: String::new,
    };
    let get = move |path: String| {
        let context = context.clone();
        bounded(&format!("GET {path}"), move || {
            respond(&context, "GET", &path, None)
        })
    };
    for name in [
        format!("{linked}.json"),
        "heapwatch-x.json".to_owned(),
        format!("{beside}.pb.gz"),
        format!("{beside}.svg"),
        format!("{fifo}.json"),
    ] {
        let response = get(format!("/debug/heap/dumps/{name}"));
        let body = String::from_utf8_lossy(&response.body);
        assert!(!body.contains(secret_text), "{name} served the secret");
        assert_eq!(response.status, 404, "{name}: {body}");
    }
    let listing = get("/debug/heap/dumps".to_owned());
    let listing = String::from_utf8_lossy(&listing.body).into_owned();
    for unlisted in [
        linked.to_owned(),
        "heapwatch-x".to_owned(),
        fifo.to_owned(),
        format!("{beside}.pb.gz"),
        format!("{beside}.svg"),
    ] {
        assert!(
            !listing.contains(&unlisted),
            "{unlisted} is listed: {listing}"
        );
    }
    let name = real
        .profile()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        get(format!("/debug/heap/dumps/{name}")).status,
        200,
        "{name}"
    );

    let report_dir = dir.to_owned();
    let report = bounded("the start-up report", move || {
        watch::previous_dump_report(&report_dir)
    })
    .expect("a report");
    assert!(
        report.contains(&real.stem) || report.contains(beside),
        "the report names a planted file: {report}"
    );
    assert!(
        !report.contains(secret_text) && !report.contains(linked),
        "{report}"
    );
    println!("ok: planted links are not served");
}

/// Files 0600 and a directory it makes 0700, under the usual umask 022.
fn dumps_are_private(dir: &Path) {
    let handle = start(dir, 5);
    assert!(dump(&handle));
    drop(handle);
    assert_eq!(mode(dir), 0o700, "the directory it made");
    let set = list_sets(dir).pop().expect("a set");
    for path in set_files(&set) {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    println!("ok: dumps are private");
}

/// A directory deleted while the watch runs is made again for the next set.
fn a_deleted_directory_is_recreated(dir: &Path) {
    let handle = start(dir, 5);
    assert!(dump(&handle));
    fs::remove_dir_all(dir).unwrap();
    let errors = heapwatch::published::dump_errors();
    assert!(dump(&handle), "the dump after the deletion failed");
    assert_eq!(heapwatch::published::dump_errors(), errors);
    drop(handle);
    assert_eq!(list_sets(dir).len(), 1);
    assert_eq!(mode(dir), 0o700);
    println!("ok: a deleted directory is made again");
}

/// The second instance: writes three sets, says `ready`, writes one more when told, says
/// `done`, and exits when its stdin closes.
fn child(dir: &Path) {
    let handle = start(dir, 2);
    for _ in 0..3 {
        assert!(dump(&handle));
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert!(dump(&handle));
    println!("done");
    line.clear();
    let _ = std::io::stdin().read_line(&mut line);
    drop(handle);
}

/// Waits for the child to print `expected`.
fn expect_line(lines: &mpsc::Receiver<String>, expected: &str) {
    let line = lines
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("the other instance never said {expected:?}"));
    assert_eq!(line, expected);
}

fn wait_exit(mut child: Child) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the other instance failed: {status}");
            return;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the other instance did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sets in `dir` written by process `pid`.
fn sets_of(dir: &Path, pid: u32) -> usize {
    list_sets(dir)
        .iter()
        .filter(|set| read_summary(set).is_ok_and(|s| s.pid == pid))
        .count()
}

/// Two instances sharing a directory, `keep(2)` each, both keep two sets; neither removes a
/// live instance's temporary file; the next instance adopts the sets of those that stopped.
fn instances_sharing_a_directory_keep_their_sets(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut other = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the other instance");
    let mut to_other = other.stdin.take().unwrap();
    let from_other = BufReader::new(other.stdout.take().unwrap());
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in from_other.lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    expect_line(&lines, "ready");

    // A third instance, alive (it holds its lock), is writing a file.
    let lock = dir.join(".heapwatch-zzzzzzzz.lock");
    let lock_file = fs::File::create(&lock).unwrap();
    // SAFETY: the descriptor is open for the call.
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::unix::io::AsRawFd::as_raw_fd(&lock_file),
                libc::LOCK_EX,
            )
        },
        0
    );
    let writing = dir.join(".heapwatch-20260101T000000Z-zzzzzzzz-0001-yyyyyyyy-eta.pb.gz.tmp");
    fs::write(&writing, b"half written").unwrap();

    let handle = start(dir, 2);
    for _ in 0..3 {
        assert!(dump(&handle));
    }
    writeln!(to_other, "more").unwrap();
    expect_line(&lines, "done");
    assert!(dump(&handle));
    drop(handle);
    drop(to_other);
    let other_pid = other.id();
    wait_exit(other);

    assert_eq!(sets_of(dir, std::process::id()), 2, "this instance's sets");
    assert_eq!(sets_of(dir, other_pid), 2, "the other instance's sets");
    assert!(
        writing.exists(),
        "a live instance's temporary file was removed"
    );
    drop(lock_file);
    fs::remove_file(&lock).unwrap();

    // Both stopped: the next instance adopts their sets and rotates them with its own.
    let handle = start(dir, 2);
    assert!(dump(&handle));
    drop(handle);
    assert_eq!(
        list_sets(dir).len(),
        2,
        "the predecessors' sets are rotated"
    );
    assert!(
        !writing.exists(),
        "a dead instance's temporary file is cleaned up"
    );
    println!("ok: instances sharing a directory keep their sets");
}

/// Writes `bytes` as the fake cgroup's usage, atomically (the watch reads it every tick).
fn set_usage(cgroup: &Path, bytes: u64) {
    let tmp = cgroup.join("memory.current.new");
    fs::write(&tmp, format!("{bytes}\n")).unwrap();
    fs::rename(&tmp, cgroup.join("memory.current")).unwrap();
}

/// After a climb through 80, 90 and 95 %, a run of dumps of one reason rotates its own repeats
/// away, not the climb's threshold dumps.
fn repeats_do_not_rotate_the_climb_away(dir: &Path, cgroup: &Path) {
    const LIMIT: u64 = 100 << 20;
    fs::create_dir_all(cgroup).unwrap();
    fs::write(cgroup.join("memory.max"), format!("{LIMIT}\n")).unwrap();
    set_usage(cgroup, LIMIT / 2);
    let handle = Watch::builder()
        .dir(dir)
        .cgroup(Cgroup::at(cgroup, CgroupVersion::V2))
        .tick(Duration::from_millis(20))
        .min_interval(Duration::ZERO)
        .horizon(Duration::ZERO)
        .keep(5)
        .start()
        .expect("start the watch");
    wait_for("a reading of the fake cgroup", || {
        heapwatch::published::latest()
            .map(|l| l.reading)
            .is_some_and(|r| r.working_set_bytes == Some(LIMIT / 2))
    });
    for percent in [85, 92, 97] {
        let before = written("threshold");
        set_usage(cgroup, LIMIT * percent / 100);
        wait_for(&format!("the threshold dump at {percent} %"), || {
            written("threshold") > before
        });
    }
    for _ in 0..4 {
        assert!(dump(&handle));
    }
    drop(handle);
    let reasons: Vec<String> = list_sets(dir)
        .iter()
        .map(|set| {
            let summary = read_summary(set).unwrap();
            match summary.threshold {
                Some(t) => format!("threshold-{:.0}", t * 100.0),
                None => summary.reason,
            }
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "threshold-80",
            "threshold-90",
            "threshold-95",
            "on_demand",
            "on_demand"
        ],
        "the climb's dumps are kept"
    );
    println!("ok: repeats do not rotate the climb away");
}

/// A case: given a fresh directory path (not yet created) to work in.
type Case<'a> = dyn Fn(&Path) + 'a;

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    // `cargo test --test hostile_files -- <part of a case's name>` runs the matching cases.
    let filter = std::env::args().nth(1).unwrap_or_default();
    // SAFETY: umask(2) only sets the process's mask; the usual 022, whatever the runner's.
    unsafe { libc::umask(0o022) };
    let outside = scratch("outside");
    fs::create_dir_all(&outside).unwrap();
    let cases: [(&str, &Case); 6] = [
        ("symlinks", &|dir| {
            planted_symlinks_are_never_followed(dir, &outside)
        }),
        ("served", &|dir| {
            #[cfg(feature = "http")]
            planted_links_are_not_served(dir, &outside);
            #[cfg(not(feature = "http"))]
            let _ = dir;
        }),
        ("private", &dumps_are_private),
        ("deleted", &a_deleted_directory_is_recreated),
        ("shared", &instances_sharing_a_directory_keep_their_sets),
        ("climb", &|dir| {
            let cgroup = scratch("cgroup");
            repeats_do_not_rotate_the_climb_away(dir, &cgroup);
            fs::remove_dir_all(&cgroup).unwrap();
        }),
    ];
    for (name, case) in cases {
        if name.contains(filter.as_str()) {
            let dir = scratch(name);
            case(&dir);
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    fs::remove_dir_all(&outside).unwrap();
    println!("hostile_files: passed");
}
