//! The container's memory, as the kernel's cgroup files say it.
//!
//! Finds the process's own memory cgroup (v2's unified hierarchy or v1's `memory` controller)
//! from `/proc/self/cgroup` and the mount table, and reads its limit, usage and working set the
//! way the kubelet does (usage − inactive file: the figure an OOM kill follows). Every read is
//! tolerant: a missing or garbled file is `None`, never an error that stops the watch.

use std::fs;
use std::path::{Path, PathBuf};

/// v1 reports "no limit" as a page-rounded `i64::MAX`; anything at or above this is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Which cgroup interface the files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy: `memory.max`, `memory.current`, …
    V2,
    /// The v1 `memory` controller: `memory.limit_in_bytes`, `memory.usage_in_bytes`, …
    V1,
}

/// A memory cgroup directory and the interface its files follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The cgroup's directory (for example `/sys/fs/cgroup/kubepods/…`).
    pub dir: PathBuf,
    /// v1 or v2.
    pub version: CgroupVersion,
}

/// One reading of a memory cgroup. Each field is `None` when the kernel does not provide it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupReading {
    /// The hard limit in bytes (`memory.max` / `memory.limit_in_bytes`); `None` when unlimited.
    pub limit: Option<u64>,
    /// v2's throttling threshold `memory.high`; `None` when unlimited or on v1.
    pub high: Option<u64>,
    /// Memory charged to the cgroup (`memory.current` / `memory.usage_in_bytes`).
    pub usage: Option<u64>,
    /// Inactive file cache (`inactive_file` / v1's `total_inactive_file`), which the kernel
    /// reclaims before it kills.
    pub inactive_file: Option<u64>,
    /// OOM kills counted in this cgroup (v2 `memory.events` `oom_kill`; v1 `memory.oom_control`
    /// `oom_kill` on kernels that report it).
    pub oom_kills: Option<u64>,
    /// v2 pressure stall information: share of the last 10 s some task waited on memory (%).
    pub pressure_some_avg10: Option<f64>,
}

impl CgroupReading {
    /// The working set as the kubelet computes it: usage − inactive file (never below zero).
    pub fn working_set(&self) -> Option<u64> {
        let usage = self.usage?;
        Some(usage.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

impl Cgroup {
    /// The memory cgroup of the calling process, found through `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`; `None` outside any cgroup with a memory controller.
    pub fn of_this_process() -> Option<Cgroup> {
        let membership = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_proc(&membership, &mounts, Path::new("/"))
    }

    /// Finds the memory cgroup from the text of `/proc/self/cgroup` and `/proc/self/mountinfo`,
    /// with every mount point taken under `root` (a fake tree in tests, `/` for real).
    pub fn from_proc(membership: &str, mountinfo: &str, root: &Path) -> Option<Cgroup> {
        // v1 first: where a memory controller is mounted on its own, it is the one that limits
        // (a hybrid system's unified hierarchy then has no memory controller).
        let mut v2_path = None;
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.split(',').any(|c| c == "memory") {
                let mount = mount_point(mountinfo, |fs_type, options| {
                    fs_type == "cgroup" && options.split(',').any(|o| o == "memory")
                });
                if let Some((mount_root, mount_point)) = mount {
                    return Some(Cgroup {
                        dir: join_under(root, &mount_root, &mount_point, path),
                        version: CgroupVersion::V1,
                    });
                }
            }
            if controllers.is_empty() {
                v2_path = Some(path.to_owned());
            }
        }
        let path = v2_path?;
        let mount = mount_point(mountinfo, |fs_type, _| fs_type == "cgroup2")?;
        let dir = join_under(root, &mount.0, &mount.1, &path);
        // Only a cgroup with the memory controller enabled has memory.current; the root cgroup
        // has neither it nor a limit.
        let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory")
            && !dir.join("memory.current").exists()
        {
            return None;
        }
        Some(Cgroup {
            dir,
            version: CgroupVersion::V2,
        })
    }

    /// A cgroup at a known directory (tests, or a path given by configuration).
    pub fn at(dir: impl Into<PathBuf>, version: CgroupVersion) -> Cgroup {
        Cgroup {
            dir: dir.into(),
            version,
        }
    }

    /// Reads the cgroup's files now. `machine_memory`: limits at or above it mean "no limit"
    /// (a limit larger than the machine cannot be what kills the process).
    pub fn read(&self, machine_memory: Option<u64>) -> CgroupReading {
        let file = |name: &str| fs::read_to_string(self.dir.join(name)).ok();
        let no_larger_than_machine = |limit: u64| match machine_memory {
            Some(machine) if limit >= machine => None,
            _ => Some(limit),
        };
        match self.version {
            CgroupVersion::V2 => {
                let stat = file("memory.stat").unwrap_or_default();
                let events = file("memory.events").unwrap_or_default();
                CgroupReading {
                    limit: file("memory.max")
                        .and_then(|t| parse_limit_v2(&t))
                        .and_then(no_larger_than_machine),
                    high: file("memory.high")
                        .and_then(|t| parse_limit_v2(&t))
                        .and_then(no_larger_than_machine),
                    usage: file("memory.current").and_then(|t| t.trim().parse().ok()),
                    inactive_file: keyed_value(&stat, "inactive_file"),
                    oom_kills: keyed_value(&events, "oom_kill"),
                    pressure_some_avg10: file("memory.pressure")
                        .and_then(|t| parse_pressure_some_avg10(&t)),
                }
            }
            CgroupVersion::V1 => {
                let stat = file("memory.stat").unwrap_or_default();
                CgroupReading {
                    limit: file("memory.limit_in_bytes")
                        .and_then(|t| t.trim().parse::<u64>().ok())
                        .filter(|&l| l < V1_UNLIMITED)
                        .and_then(no_larger_than_machine),
                    high: None,
                    usage: file("memory.usage_in_bytes").and_then(|t| t.trim().parse().ok()),
                    inactive_file: keyed_value(&stat, "total_inactive_file")
                        .or_else(|| keyed_value(&stat, "inactive_file")),
                    oom_kills: file("memory.oom_control").and_then(|t| keyed_value(&t, "oom_kill")),
                    pressure_some_avg10: None,
                }
            }
        }
    }
}

/// The machine's physical memory (`MemTotal` in `/proc/meminfo`), in bytes.
pub fn machine_memory() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The first mount in `mountinfo` accepted by `accept(fs_type, super_options)`, as its
/// (root within the filesystem, mount point).
fn mount_point(mountinfo: &str, accept: impl Fn(&str, &str) -> bool) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        // "36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,memory"
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let fs_type = after.next()?;
        let _source = after.next();
        let super_options = after.next().unwrap_or("");
        (fields.len() >= 5 && accept(fs_type, super_options))
            .then(|| (unescape(fields[3]), unescape(fields[4])))
    })
}

/// The directory of cgroup `path` given a mount of the hierarchy whose own root is
/// `mount_root`, mounted at `mount_point`, all under `root`.
fn join_under(root: &Path, mount_root: &str, mount_point: &str, path: &str) -> PathBuf {
    // In a container with its own cgroup namespace the mount's root is "/" and the path is
    // relative to it; on a host view the path includes the mount's root, which is stripped.
    let relative = path
        .strip_prefix(mount_root)
        .filter(|_| mount_root != "/")
        .unwrap_or(path);
    let mut dir = root.join(mount_point.trim_start_matches('/'));
    for part in relative.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
    }
    dir
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let code = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// v2 limit files hold a number or "max".
fn parse_limit_v2(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        number => number.parse().ok(),
    }
}

/// The value of `key` in a "key value" per line file (`memory.stat`, `memory.events`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `avg10` of the "some" line of a PSI file.
fn parse_pressure_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup directory with the given files, removed on drop.
    struct FakeTree(PathBuf);

    impl FakeTree {
        fn new(name: &str, files: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("heapwatch-cgroup-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for (file, text) in files {
                let path = dir.join(file);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, text).unwrap();
            }
            FakeTree(dir)
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn v2_as_the_kernel_writes_it() {
        let tree = FakeTree::new(
            "v2",
            &[
                ("memory.max", "268435456\n"),
                ("memory.high", "max\n"),
                ("memory.current", "200000000\n"),
                (
                    "memory.stat",
                    "anon 150000000\nfile 50000000\nkernel 1000\ninactive_anon 0\nactive_anon 150000000\ninactive_file 30000000\nactive_file 20000000\n",
                ),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
                ),
                (
                    "memory.pressure",
                    "some avg10=1.50 avg60=0.20 avg300=0.05 total=123456\nfull avg10=0.75 avg60=0.10 avg300=0.02 total=6789\n",
                ),
            ],
        );
        let reading = Cgroup::at(&tree.0, CgroupVersion::V2).read(Some(16 * GIB));
        assert_eq!(reading.limit, Some(268_435_456));
        assert_eq!(reading.high, None, "\"max\" is no limit");
        assert_eq!(reading.usage, Some(200_000_000));
        assert_eq!(reading.inactive_file, Some(30_000_000));
        assert_eq!(reading.working_set(), Some(170_000_000));
        assert_eq!(reading.oom_kills, Some(1));
        assert_eq!(reading.pressure_some_avg10, Some(1.5));
    }

    #[test]
    fn v2_max_means_no_limit() {
        let tree = FakeTree::new(
            "v2max",
            &[("memory.max", "max\n"), ("memory.current", "4096\n")],
        );
        let reading = Cgroup::at(&tree.0, CgroupVersion::V2).read(Some(16 * GIB));
        assert_eq!(reading.limit, None);
        assert_eq!(reading.usage, Some(4096));
        assert_eq!(
            reading.working_set(),
            Some(4096),
            "no memory.stat: nothing to subtract"
        );
    }

    #[test]
    fn v1_as_the_kernel_writes_it() {
        let tree = FakeTree::new(
            "v1",
            &[
                ("memory.limit_in_bytes", "201326592\n"),
                ("memory.usage_in_bytes", "150000000\n"),
                (
                    "memory.stat",
                    "cache 40000000\nrss 110000000\ninactive_file 1000\ntotal_cache 40000000\ntotal_rss 110000000\ntotal_inactive_file 25000000\n",
                ),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            ],
        );
        let reading = Cgroup::at(&tree.0, CgroupVersion::V1).read(Some(16 * GIB));
        assert_eq!(reading.limit, Some(201_326_592));
        assert_eq!(reading.usage, Some(150_000_000));
        assert_eq!(
            reading.inactive_file,
            Some(25_000_000),
            "total_ (hierarchical) figure preferred"
        );
        assert_eq!(reading.working_set(), Some(125_000_000));
        assert_eq!(reading.oom_kills, Some(3));
        assert_eq!(reading.pressure_some_avg10, None);
    }

    #[test]
    fn v1_sentinel_and_limits_above_the_machine_are_no_limit() {
        let tree = FakeTree::new(
            "v1huge",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "1000\n"),
            ],
        );
        let cgroup = Cgroup::at(&tree.0, CgroupVersion::V1);
        assert_eq!(cgroup.read(Some(16 * GIB)).limit, None);
        fs::write(
            tree.0.join("memory.limit_in_bytes"),
            format!("{}\n", 64 * GIB),
        )
        .unwrap();
        assert_eq!(
            cgroup.read(Some(16 * GIB)).limit,
            None,
            "a limit above the machine's memory cannot be what kills"
        );
        assert_eq!(
            cgroup.read(None).limit,
            Some(64 * GIB),
            "machine size unknown"
        );
    }

    #[test]
    fn missing_files_and_garbage_read_as_unknown() {
        let empty = FakeTree::new("empty", &[]);
        assert_eq!(
            Cgroup::at(&empty.0, CgroupVersion::V2).read(None),
            CgroupReading::default()
        );
        assert_eq!(
            Cgroup::at(&empty.0, CgroupVersion::V1).read(None),
            CgroupReading::default()
        );
        let garbage = FakeTree::new(
            "garbage",
            &[
                ("memory.max", "lots\n"),
                ("memory.current", "-12\n"),
                ("memory.stat", "inactive_file\nfoo bar baz\n\u{0}\u{1}"),
                ("memory.events", "oom_kill many\n"),
                ("memory.pressure", "some avg10=x\n"),
            ],
        );
        let reading = Cgroup::at(&garbage.0, CgroupVersion::V2).read(None);
        assert_eq!(reading, CgroupReading::default());
        assert_eq!(reading.working_set(), None);
    }

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
    const MOUNTINFO_V2: &str = "\
24 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_the_v1_memory_cgroup() {
        let membership = "9:name=systemd:/\n4:memory:/kubepods/pod1/abc\n0::/\n";
        let found = Cgroup::from_proc(membership, MOUNTINFO_V1, Path::new("/fake")).unwrap();
        assert_eq!(found.version, CgroupVersion::V1);
        assert_eq!(
            found.dir,
            Path::new("/fake/sys/fs/cgroup/memory/kubepods/pod1/abc")
        );
    }

    #[test]
    fn finds_the_v2_cgroup_under_a_root() {
        let root = FakeTree::new(
            "root",
            &[(
                "sys/fs/cgroup/kubepods/pod1/cgroup.controllers",
                "cpu io memory pids\n",
            )],
        );
        let found = Cgroup::from_proc("0::/kubepods/pod1\n", MOUNTINFO_V2, &root.0).unwrap();
        assert_eq!(found.version, CgroupVersion::V2);
        assert_eq!(found.dir, root.0.join("sys/fs/cgroup/kubepods/pod1"));
        // Without the memory controller there is nothing to watch.
        let bare = FakeTree::new("bare", &[("sys/fs/cgroup/cgroup.controllers", "cpu\n")]);
        assert_eq!(Cgroup::from_proc("0::/\n", MOUNTINFO_V2, &bare.0), None);
    }

    #[test]
    fn nonsense_proc_files_find_nothing() {
        assert_eq!(Cgroup::from_proc("", "", Path::new("/")), None);
        assert_eq!(
            Cgroup::from_proc("garbage\n4:memory\n", "x - y", Path::new("/")),
            None
        );
        assert_eq!(
            Cgroup::from_proc("4:memory:/a\n", MOUNTINFO_V2, Path::new("/")),
            None,
            "memory controller listed but not mounted"
        );
    }

    #[test]
    fn mountinfo_escapes_and_namespaced_paths() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape("naïve"), "naïve");
        // Host view: the mount's own root is a prefix of the cgroup path.
        assert_eq!(
            join_under(
                Path::new("/"),
                "/kubepods",
                "/sys/fs/cgroup/memory",
                "/kubepods/pod1"
            ),
            Path::new("/sys/fs/cgroup/memory/pod1")
        );
        // Paths never climb out of the mount.
        assert_eq!(
            join_under(Path::new("/"), "/", "/sys/fs/cgroup", "/../../etc"),
            Path::new("/sys/fs/cgroup/etc")
        );
    }
}
