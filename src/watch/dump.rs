//! Dump sets on disk, in a directory that other processes may share — or plant files in.
//!
//! # Names
//!
//! ```text
//! heapwatch-<time>-<owner>-<seq>-<nonce>-<reason>.<ext>        a set's files
//! .heapwatch-<time>-<owner>-<seq>-<nonce>-<reason>.<ext>.tmp   one being written
//! .heapwatch-<owner>.lock                                      the owner's liveness lock
//! ```
//!
//! * `time`: UTC to the second, `20261125T051308Z`: names sort in the order sets were written.
//! * `owner`: 8 random characters drawn when a writer starts (one per watch): whose set it is.
//! * `seq`: the owner's count of sets, so that its sets still sort within one second.
//! * `nonce`: 8 random characters per set (40 bits from the OS), so that a set's names cannot
//!   be known before they exist, and nothing can be planted at them in advance.
//! * `reason`: `threshold-95`, `eta`, `on-demand`, `signal`, `leak`.
//! * `ext`: `pb.gz` (pprof), `svg` (flamegraph), `diff.svg` (leak dumps), `json` (summary).
//!
//! # Writing
//!
//! Each file is created under its temporary name with `O_CREAT|O_EXCL|O_NOFOLLOW` and the
//! configured mode (0600 by default), then given its final name without replacing anything
//! (`renameat2(RENAME_NOREPLACE)`, or a hard link where the filesystem lacks that flag): a
//! symlink or any other file found at either name fails the set — logged and counted, never
//! followed, never overwritten. The JSON summary comes last, so a summary on disk means its set
//! is complete; a failure removes what the set had created: never half a file, never half a set.
//! The directory is created before each set if it is missing (also when it was deleted while
//! the watch ran), with the file mode plus search permission where read is granted (0700 by
//! default); an existing directory's mode is left alone — it is often a mounted volume.
//! Buffers are kept between dumps, so a dump near the limit allocates little beyond the profile
//! itself.
//!
//! # Owners, rotation and clean-up
//!
//! A writer holds `flock(LOCK_EX)` on its `.heapwatch-<owner>.lock` as long as it lives; the
//! kernel drops the lock when the process dies, however it dies, even in another container
//! sharing the volume. An owner is *live* while its lock is held. A writer touches only its own
//! files and those of owners that are not live — predecessors killed or stopped, whose sets it
//! adopts: it keeps the newest `keep` sets of that pool, and removes their leftover temporary
//! files and lock files. The sets and temporary files of another live instance, files whose
//! names do not follow the scheme above, and anything that is not a regular file are never
//! removed. When sets must go, repeats go first: the oldest set whose reason has a newer set in
//! the pool, and only when every reason is down to one set, the oldest — so a run of ETA dumps
//! cannot rotate away the threshold dumps that show the climb.
//!
//! # Reading
//!
//! Listing and reading never follow a symlink: a set counts only if its summary is a regular
//! file; a summary is opened with `O_NOFOLLOW|O_NONBLOCK` (a planted FIFO cannot block the
//! start-up report) and read up to a bound; a file served over HTTP must moreover belong to
//! this process's user and have a single link (a planted hard link has two).

use super::dump_summary::{DumpFiles, DumpSummary};
use crate::profile::{Profile, SampleType};
use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// File name prefix of every dump set.
pub const DUMP_PREFIX: &str = "heapwatch-";
const TMP_SUFFIX: &str = ".tmp";
const LOCK_SUFFIX: &str = ".lock";
/// Characters in an owner or nonce token: 8 of 5 random bits, 40 bits — a planted name has one
/// chance in a trillion, and the names stay short enough to read.
const TOKEN_LEN: usize = 8;
/// Crockford's base32 in lower case: no look-alike letters, nothing special in a file name.
const TOKEN_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// The most of a summary read back. A summary carries at most 10 minutes of series: about
/// 12 MB at the fastest tick (10 ms); 64 MiB leaves room and still bounds what a planted file
/// can make the start-up report allocate.
const MAX_SUMMARY_BYTES: u64 = 64 << 20;
/// Attempts at taking the lock: each fails only if another instance probed the new lock file
/// in the microseconds between its creation and its locking.
const LOCK_ATTEMPTS: usize = 3;

/// A dump set written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSet {
    /// The directory holding it.
    pub dir: PathBuf,
    /// The common stem of its files.
    pub stem: String,
}

impl DumpSet {
    /// The pprof profile's path.
    pub fn profile(&self) -> PathBuf {
        self.dir.join(format!("{}.pb.gz", self.stem))
    }
    /// The flamegraph's path.
    pub fn flamegraph(&self) -> PathBuf {
        self.dir.join(format!("{}.svg", self.stem))
    }
    /// The JSON summary's path.
    pub fn summary(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem))
    }
    /// The differential flamegraph's path (leak dumps only).
    pub fn diff_flamegraph(&self) -> PathBuf {
        self.dir.join(format!("{}.diff.svg", self.stem))
    }
}

/// Writes dump sets into one directory, reusing its buffers.
#[derive(Debug)]
pub(crate) struct DumpWriter {
    dir: PathBuf,
    keep: usize,
    file_mode: u32,
    /// This writer's token in every name it writes (see the module's documentation).
    owner: String,
    /// Held while the writer lives; `None` until taken, or when it could not be.
    lock: Option<OwnerLock>,
    /// Whether a failure to take the lock was reported: once per run, not once per dump.
    lock_warned: bool,
    /// Whether the directory was seen, so that a missing one is reported as deleted.
    dir_seen: bool,
    sequence: u64,
    profile_buffer: Vec<u8>,
    svg_buffer: Vec<u8>,
    json_buffer: Vec<u8>,
}

impl DumpWriter {
    pub(crate) fn new(dir: PathBuf, keep: usize) -> Self {
        DumpWriter {
            dir,
            keep: keep.max(1),
            file_mode: super::config::DEFAULT_FILE_MODE,
            owner: token(),
            lock: None,
            lock_warned: false,
            dir_seen: false,
            sequence: 0,
            profile_buffer: Vec::new(),
            svg_buffer: Vec::new(),
            json_buffer: Vec::new(),
        }
    }

    /// Permission bits of the files (and, plus search where read is granted, of a directory it
    /// creates). Bits outside 0666 are dropped and the owner's read and write always kept: the
    /// watch reads its own sets back.
    pub(crate) fn with_file_mode(mut self, mode: u32) -> Self {
        self.file_mode = (mode & 0o666) | 0o600;
        self
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A writer for naming this one's sets in place (and adopted ones) from another thread:
    /// the same directory and file mode, its own buffers, and no lock of its own — it never
    /// writes a new set.
    pub(crate) fn for_naming(&self) -> DumpWriter {
        DumpWriter::new(self.dir.clone(), self.keep).with_file_mode(self.file_mode)
    }

    /// The stem for a set written at `unix_ms` for `reason_slug`.
    pub(crate) fn next_stem(&mut self, unix_ms: u64, reason_slug: &str) -> String {
        self.sequence += 1;
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
        // 2026-11-25T04:30:00Z → 20261125T043000Z: sortable, and no ':' (awkward on some
        // filesystems and in `kubectl cp`).
        let compact: String = humantime::format_rfc3339_seconds(time)
            .to_string()
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        format!(
            "{DUMP_PREFIX}{compact}-{}-{:04}-{}-{reason_slug}",
            self.owner,
            self.sequence,
            token()
        )
    }

    /// Makes the directory ready for a set: creates it if it is missing (at start, or after it
    /// was deleted) and takes this writer's lock again if the lock file went with it. A lock
    /// that cannot be taken is reported once and is not fatal: the sets are still written, but
    /// another instance sharing the directory may then take them for a dead predecessor's.
    pub(crate) fn prepare(&mut self) -> io::Result<()> {
        self.ensure_dir()?;
        if !self.lock.as_ref().is_some_and(OwnerLock::in_place) {
            // Not in place: dropping it removes nothing but closes the descriptor.
            self.lock = None;
            match OwnerLock::acquire(&self.dir, &self.owner, self.file_mode) {
                Ok(lock) => {
                    self.lock = Some(lock);
                    self.lock_warned = false;
                }
                Err(error) if !self.lock_warned => {
                    self.lock_warned = true;
                    tracing::warn!(
                        dir = %self.dir.display(),
                        %error,
                        "heapwatch: cannot take the dump directory's lock; another instance \
                         sharing it may rotate this one's dumps"
                    );
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn ensure_dir(&mut self) -> io::Result<()> {
        match fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", self.dir.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(dir_mode(self.file_mode))
                    .create(&self.dir)?;
                if self.dir_seen {
                    tracing::warn!(dir = %self.dir.display(),
                        "heapwatch: the dump directory had been deleted; created it again");
                } else {
                    tracing::info!(dir = %self.dir.display(), "heapwatch: created the dump directory");
                }
            }
            Err(e) => return Err(e),
        }
        self.dir_seen = true;
        Ok(())
    }

    /// Encodes and writes one set; on error nothing it created is left behind, and nothing it
    /// did not create is touched.
    pub(crate) fn write(
        &mut self,
        stem: &str,
        profile: &Profile,
        summary: &mut DumpSummary,
        diff_svg: Option<&[u8]>,
    ) -> io::Result<DumpSet> {
        self.prepare()?;
        self.profile_buffer.clear();
        crate::encode::write_pprof(profile, &mut self.profile_buffer)?;
        self.svg_buffer.clear();
        write_svg(profile, &mut self.svg_buffer)?;
        self.publish_set(stem, summary, diff_svg)
    }

    /// Writes one set before naming: `encode` writes the pprof profile into the writer's own
    /// buffer (kept between dumps) and returns the summary; the flamegraph is a placeholder
    /// until the set is named ([`rewrite_named`](Self::rewrite_named)).
    pub(crate) fn write_unnamed(
        &mut self,
        stem: &str,
        encode: impl FnOnce(&mut Vec<u8>) -> io::Result<DumpSummary>,
    ) -> io::Result<(DumpSet, DumpSummary)> {
        self.prepare()?;
        let mut summary = encode(&mut self.profile_buffer)?;
        self.svg_buffer.clear();
        crate::encode::write_flamegraph_placeholder(
            crate::encode::FlamegraphPlaceholder::Unnamed,
            &mut self.svg_buffer,
        )?;
        let set = self.publish_set(stem, &mut summary, None)?;
        Ok((set, summary))
    }

    /// Replaces a set's profile, flamegraph and summary by those of `profile`, now named: each
    /// file written under a new temporary name, then renamed over the old one (a rename
    /// replaces a name, never follows it), the summary last. On error the set is as it was.
    pub(crate) fn rewrite_named(
        &mut self,
        set: &DumpSet,
        profile: &Profile,
        summary: &DumpSummary,
    ) -> io::Result<()> {
        self.profile_buffer.clear();
        crate::encode::write_pprof(profile, &mut self.profile_buffer)?;
        self.svg_buffer.clear();
        write_svg(profile, &mut self.svg_buffer)?;
        self.json_buffer.clear();
        serde_json::to_writer_pretty(&mut self.json_buffer, summary).map_err(io::Error::other)?;
        let files: [(PathBuf, &[u8]); 3] = [
            (set.profile(), &self.profile_buffer),
            (set.flamegraph(), &self.svg_buffer),
            (set.summary(), &self.json_buffer),
        ];
        let mut created = 0;
        let result = (|| {
            for (path, bytes) in &files {
                let tmp = tmp_path(path);
                // Our own leftover from an interrupted rewrite of this set: written anew.
                let _ = fs::remove_file(&tmp);
                let mut file = create_exclusive(&tmp, self.file_mode)?;
                created += 1;
                file.write_all(bytes)?;
            }
            for (path, _) in &files {
                fs::rename(tmp_path(path), path)?;
                created -= 1;
            }
            Ok(())
        })();
        if result.is_err() {
            for (path, _) in &files[files.len() - created..] {
                let _ = fs::remove_file(tmp_path(path));
            }
        }
        result
    }

    /// Writes the encoded profile and flamegraph of a set, then its summary.
    fn publish_set(
        &mut self,
        stem: &str,
        summary: &mut DumpSummary,
        diff_svg: Option<&[u8]>,
    ) -> io::Result<DumpSet> {
        let set = DumpSet {
            dir: self.dir.clone(),
            stem: stem.to_owned(),
        };
        summary.files = DumpFiles {
            profile: file_name(&set.profile()),
            flamegraph: file_name(&set.flamegraph()),
            summary: file_name(&set.summary()),
            diff_flamegraph: diff_svg.map(|_| file_name(&set.diff_flamegraph())),
        };
        self.json_buffer.clear();
        serde_json::to_writer_pretty(&mut self.json_buffer, summary).map_err(io::Error::other)?;

        let diff_path = set.diff_flamegraph();
        let mut files: Vec<(PathBuf, &[u8])> = vec![
            (set.profile(), &self.profile_buffer),
            (set.flamegraph(), &self.svg_buffer),
        ];
        if let Some(diff) = diff_svg {
            files.push((diff_path, diff));
        }
        // The summary last: its presence means the set is complete.
        files.push((set.summary(), &self.json_buffer));
        // Counted only once this set made them: a file found at a name (planted, or anyone
        // else's) made the set fail, and stays as it was.
        let mut created = 0;
        let mut published = 0;
        let mode = self.file_mode;
        // No fsync: what threatens a dump is the OOM kill of this process, and data in the
        // page cache outlives the process; syncing three files would triple the dump's time on
        // a slow disk, near the limit, for protection against a machine crash only.
        let result = (|| {
            for (path, bytes) in &files {
                let mut file = create_exclusive(&tmp_path(path), mode)?;
                created += 1;
                file.write_all(bytes)?;
            }
            for (path, _) in &files {
                publish(&tmp_path(path), path)?;
                published += 1;
            }
            Ok(())
        })();
        if let Err(error) = result {
            for (path, _) in &files[..published] {
                let _ = fs::remove_file(path);
            }
            for (path, _) in &files[published..created] {
                let _ = fs::remove_file(tmp_path(path));
            }
            return Err(error);
        }
        self.prune();
        Ok(set)
    }

    /// Removes the stale temporary files of this writer and of owners that are not live, and
    /// of their sets, the oldest beyond `keep` — repeats of a reason before the newest set of
    /// each reason. Another live instance's files and names outside the scheme are left alone.
    pub(crate) fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        // Each owner's lock is probed once per prune.
        let mut live: HashMap<String, bool> = HashMap::new();
        let mut adoptable = |owner: &str| {
            owner == self.owner
                || !*live
                    .entry(owner.to_owned())
                    .or_insert_with(|| owner_is_live(&self.dir, owner, Probe::RemoveIfDead))
        };
        let mut pool: Vec<(String, String)> = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            match classify(&name) {
                Some(Entry::Temporary { owner }) if adoptable(owner) => {
                    // Unlinking never follows a link: at worst a planted name goes.
                    let _ = fs::remove_file(entry.path());
                }
                Some(Entry::Lock { owner }) if owner != self.owner => {
                    // Probing a dead owner's lock removes it.
                    adoptable(owner);
                }
                Some(Entry::Summary {
                    stem,
                    owner,
                    reason,
                }) if entry.file_type().is_ok_and(|t| t.is_file()) && adoptable(owner) => {
                    pool.push((stem.to_owned(), reason.to_owned()));
                }
                _ => {}
            }
        }
        // Stems start with the UTC time: their order is the order they were written in.
        pool.sort();
        for stem in rotation_victims(&pool, self.keep) {
            let set = DumpSet {
                dir: self.dir.clone(),
                stem: stem.to_owned(),
            };
            // The summary first: without it the set no longer counts as complete.
            for path in [
                set.summary(),
                set.profile(),
                set.flamegraph(),
                set.diff_flamegraph(),
            ] {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// This writer's owner token.
    #[cfg(test)]
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// The lock that tells other instances this writer is alive.
#[derive(Debug)]
struct OwnerLock {
    file: File,
    path: PathBuf,
}

impl OwnerLock {
    /// Creates and locks `.heapwatch-<owner>.lock` in `dir`. An instance probing the new file
    /// between its creation and its locking takes it for a dead owner's and removes it, under
    /// its shared lock: then either our exclusive lock fails, or the file is gone once we hold
    /// it — both seen here, and the lock is taken again.
    fn acquire(dir: &Path, owner: &str, mode: u32) -> io::Result<OwnerLock> {
        let path = lock_path(dir, owner);
        for _ in 0..LOCK_ATTEMPTS {
            let lock = OwnerLock {
                file: create_exclusive(&path, mode)?,
                path: path.clone(),
            };
            if flock(&lock.file, libc::LOCK_EX) && lock.in_place() {
                return Ok(lock);
            }
            // Dropped: its file is removed if it is still there.
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} was probed by another instance while being taken, {LOCK_ATTEMPTS} times",
                path.display()
            ),
        ))
    }

    /// Whether the lock's name still leads to the locked file (the directory may have been
    /// deleted, or the file removed by a probe).
    fn in_place(&self) -> bool {
        match (fs::symlink_metadata(&self.path), self.file.metadata()) {
            (Ok(named), Ok(held)) => named.dev() == held.dev() && named.ino() == held.ino(),
            _ => false,
        }
    }
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        // Only our own file: after a deletion of the directory the name may be someone else's.
        if self.in_place() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What to do with a lock found free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Leave it (a reader's question).
    Leave,
    /// Remove it, while holding the shared lock (see [`OwnerLock::acquire`]).
    RemoveIfDead,
}

/// Whether `owner`'s writer is alive: its lock file is locked. No lock file means a writer that
/// stopped or was killed (or never got one). Anything unexpected — a lock that cannot be opened
/// or is not a regular file — counts as alive: when unsure, touch nothing.
fn owner_is_live(dir: &Path, owner: &str, probe: Probe) -> bool {
    let path = lock_path(dir, owner);
    let (file, meta) = match open_regular(&path) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    if !flock(&file, libc::LOCK_SH) {
        return true;
    }
    if probe == Probe::RemoveIfDead {
        let same = fs::symlink_metadata(&path)
            .is_ok_and(|named| named.dev() == meta.dev() && named.ino() == meta.ino());
        if same {
            let _ = fs::remove_file(&path);
        }
    }
    false
}

/// Whether the set was written by an instance that is still running (its owner's lock is held).
/// Sets named outside the scheme have no known owner: `false`.
pub(crate) fn written_by_live_instance(set: &DumpSet) -> bool {
    parse_stem(&set.stem).is_some_and(|(owner, _)| owner_is_live(&set.dir, owner, Probe::Leave))
}

/// `flock(2)` without waiting; whether the lock was taken.
fn flock(file: &File, operation: libc::c_int) -> bool {
    // SAFETY: `file` owns an open descriptor for the whole call; flock(2) only acts on it.
    unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) == 0 }
}

/// The sets to remove so that `keep` remain, from `pool` — (stem, reason), oldest first: the
/// oldest set whose reason has a newer set, and only when every reason is down to one, the
/// oldest.
fn rotation_victims(pool: &[(String, String)], keep: usize) -> Vec<&str> {
    let mut remaining: Vec<&(String, String)> = pool.iter().collect();
    let mut victims = Vec::new();
    while remaining.len() > keep {
        let repeat = (0..remaining.len()).find(|&i| {
            remaining[i + 1..]
                .iter()
                .any(|later| later.1 == remaining[i].1)
        });
        victims.push(remaining.remove(repeat.unwrap_or(0)).0.as_str());
    }
    victims
}

/// A directory entry that follows the scheme, borrowed from its name.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    Summary {
        stem: &'a str,
        owner: &'a str,
        reason: &'a str,
    },
    Temporary {
        owner: &'a str,
    },
    Lock {
        owner: &'a str,
    },
}

fn classify(name: &str) -> Option<Entry<'_>> {
    if let Some(hidden) = name.strip_prefix('.') {
        if let Some(owner) = hidden
            .strip_prefix(DUMP_PREFIX)
            .and_then(|rest| rest.strip_suffix(LOCK_SUFFIX))
        {
            return is_token(owner).then_some(Entry::Lock { owner });
        }
        // `<stem>.<ext>.tmp`: no field of a stem has a '.'.
        let (stem, _) = hidden.strip_suffix(TMP_SUFFIX)?.split_once('.')?;
        let (owner, _) = parse_stem(stem)?;
        return Some(Entry::Temporary { owner });
    }
    let stem = name.strip_suffix(".json")?;
    let (owner, reason) = parse_stem(stem)?;
    Some(Entry::Summary {
        stem,
        owner,
        reason,
    })
}

/// The owner and reason of a stem that follows the scheme; `None` for any other name.
fn parse_stem(stem: &str) -> Option<(&str, &str)> {
    let mut fields = stem.strip_prefix(DUMP_PREFIX)?.splitn(5, '-');
    let (time, owner, seq, nonce, reason) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let valid = time.len() == 16
        && time
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z')
        && is_token(owner)
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
        && is_token(nonce)
        && !reason.is_empty()
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some((owner, reason))
}

fn is_token(text: &str) -> bool {
    text.len() == TOKEN_LEN && text.bytes().all(|b| TOKEN_ALPHABET.contains(&b))
}

/// 8 random characters from the OS's generator. Should it ever fail, std's randomly keyed
/// SipHash of the time stands in: still unknown outside the process, and the names stay
/// guarded by `O_EXCL` and no-replace publishing in any case.
fn token() -> String {
    let mut bytes = [0u8; TOKEN_LEN];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = std::hash::RandomState::new()
            .hash_one((nanos, std::process::id()))
            .to_le_bytes();
    }
    bytes
        .iter()
        .map(|b| char::from(TOKEN_ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// The mode of a directory made for files of `file_mode`: the same bits, plus search wherever
/// read is granted (0600 → 0700, 0640 → 0750).
fn dir_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}

fn lock_path(dir: &Path, owner: &str) -> PathBuf {
    dir.join(format!(".{DUMP_PREFIX}{owner}{LOCK_SUFFIX}"))
}

/// Creates a new file at `path` with `mode`. `O_CREAT|O_EXCL` fails on any existing name, a
/// symlink included; `O_NOFOLLOW` says so again, should the first ever be loosened.
fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Gives `tmp` its final name `path`, failing rather than replacing whatever is there.
fn publish(tmp: &Path, path: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match rename_noreplace(tmp, path) {
        Ok(()) => return Ok(()),
        // A filesystem (or a kernel before 3.15) without the flag: a new hard link is just as
        // exclusive.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) => {}
        Err(e) => return Err(e),
    }
    fs::hard_link(tmp, path)?;
    // Published; a temporary name left behind is this writer's, and goes at the next prune.
    let _ = fs::remove_file(tmp);
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // Through syscall(2): glibc only wraps renameat2 since 2.28.
    // SAFETY: renameat2(2) reads two NUL-terminated paths, both alive for the call; AT_FDCWD
    // resolves them as rename(2) would; it writes no memory of ours. Every argument is passed
    // as a full `c_long`, as the variadic syscall(2) expects.
    let result = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::c_long::from(libc::AT_FDCWD),
            from.as_ptr(),
            libc::c_long::from(libc::AT_FDCWD),
            to.as_ptr(),
            libc::c_long::from(libc::RENAME_NOREPLACE),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `path` for reading only if it is a regular file: without following a symlink at it
/// (`O_NOFOLLOW`) and without blocking on a FIFO (`O_NONBLOCK`, which regular files ignore).
fn open_regular(path: &Path) -> io::Result<(File, fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok((file, meta))
}

/// The complete dump sets in `dir` (those whose summary is a regular file), oldest first. Any
/// `heapwatch-*.json` counts, whoever wrote it; a symlink, FIFO or directory by that name does
/// not.
pub fn list_sets(dir: &Path) -> Vec<DumpSet> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stems: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".json")?;
            // `file_type` does not follow a symlink.
            (stem.starts_with(DUMP_PREFIX) && e.file_type().ok()?.is_file())
                .then(|| stem.to_owned())
        })
        .collect();
    // Stems start with the UTC time, so their order is the order they were written in (the
    // sequence number breaks ties within a second).
    stems.sort();
    stems
        .into_iter()
        .map(|stem| DumpSet {
            dir: dir.to_owned(),
            stem,
        })
        .collect()
}

/// Reads a set's summary: a regular file, never through a symlink, at most 64 MiB.
pub fn read_summary(set: &DumpSet) -> io::Result<DumpSummary> {
    let (file, _) = open_regular(&set.summary())?;
    let mut text = Vec::new();
    file.take(MAX_SUMMARY_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_SUMMARY_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {MAX_SUMMARY_BYTES} bytes",
                set.summary().display()
            ),
        ));
    }
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads a set's pprof profile: a regular file, never through a symlink, decoded within
/// heapwatch's decode limits (a planted file cannot make the reader allocate without bound).
pub(crate) fn read_profile(set: &DumpSet) -> io::Result<Profile> {
    let (file, _) = open_regular(&set.profile())?;
    let limits = crate::decode::DecodeLimits::default();
    crate::decode::read_pprof_from(file, &limits)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Whether `path` names a file the HTTP listener would serve — see [`read_served_file`] —
/// judged without opening it (no symlink followed), for the listing.
#[cfg(feature = "http")]
pub(crate) fn is_served(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| servable(&meta))
}

/// The content of a dump file to serve over HTTP: a regular file, opened without following a
/// symlink, owned by this process's effective user and with a single link — a hard link planted
/// in the directory to a file elsewhere (`/etc/shadow`, for a process running as root) has two.
#[cfg(feature = "http")]
pub(crate) fn read_served_file(path: &Path) -> io::Result<Vec<u8>> {
    let (mut file, meta) = open_regular(path)?;
    if !servable(&meta) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a file this process wrote (links {}, owner uid {})",
                path.display(),
                meta.nlink(),
                meta.uid()
            ),
        ));
    }
    let mut body = Vec::new();
    file.read_to_end(&mut body)?;
    Ok(body)
}

#[cfg(feature = "http")]
fn servable(meta: &fs::Metadata) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    meta.is_file() && meta.nlink() == 1 && meta.uid() == euid
}

fn write_svg(profile: &Profile, out: &mut Vec<u8>) -> io::Result<()> {
    #[cfg(feature = "flamegraph")]
    {
        crate::encode::write_flamegraph_min_width(
            profile,
            SampleType::InuseSpace,
            "live heap",
            1.0,
            out,
        )
    }
    #[cfg(not(feature = "flamegraph"))]
    {
        // Without inferno the set still carries an SVG, one that says how to get the picture.
        let _ = (profile, SampleType::InuseSpace);
        crate::encode::write_flamegraph_placeholder(
            crate::encode::FlamegraphPlaceholder::DumpSet,
            out,
        )
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(".{}{TMP_SUFFIX}", file_name(path)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn profile() -> Profile {
        Profile::one_site("grow_cache", 0x1000, [1, 4096, 1, 4096])
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("heapwatch-dump-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes one set at `second` (seconds after a fixed instant) for `slug`.
    fn write_set(writer: &mut DumpWriter, second: u64, slug: &str) -> io::Result<DumpSet> {
        let stem = writer.next_stem(1_764_000_000_000 + second * 1000, slug);
        let mut summary = DumpSummary {
            reason: slug.into(),
            ..DumpSummary::default()
        };
        writer.write(&stem, &profile(), &mut summary, None)
    }

    fn stems(dir: &Path) -> Vec<String> {
        list_sets(dir).into_iter().map(|s| s.stem).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_complete_sets_and_keeps_the_newest() {
        let dir = scratch("keep");
        let mut writer = DumpWriter::new(dir.clone(), 2);
        let mut written = Vec::new();
        for i in 0..3 {
            let set = write_set(&mut writer, i, "on-demand").unwrap();
            assert_eq!(
                read_summary(&set).unwrap().files.profile,
                format!("{}.pb.gz", set.stem)
            );
            // Without the flamegraph feature the SVG is the placeholder, which names no site.
            let svg = fs::read_to_string(set.flamegraph()).unwrap();
            assert_eq!(svg.contains("grow_cache"), cfg!(feature = "flamegraph"));
            written.push(set.stem);
        }
        assert_eq!(
            stems(&dir),
            written[1..].to_vec(),
            "the oldest set is removed"
        );
        let visible = names(&dir).into_iter().filter(|n| !n.starts_with('.'));
        assert_eq!(visible.count(), 6, "two sets of three files");
        assert_eq!(
            names(&dir)
                .into_iter()
                .filter(|n| n.starts_with('.'))
                .collect::<Vec<_>>(),
            vec![format!(".heapwatch-{}.lock", writer.owner())],
            "no temporary file, and the writer's lock"
        );
        assert!(
            written[0].starts_with("heapwatch-20251124T"),
            "{}",
            written[0]
        );
        drop(writer);
        assert_eq!(names(&dir).len(), 6, "the lock goes with its writer");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_made_fails_the_set() {
        let dir = scratch("fail");
        let file = dir.join("a-file");
        fs::write(&file, b"not a directory").unwrap();
        let mut writer = DumpWriter::new(file.join("dumps"), 2);
        assert!(write_set(&mut writer, 0, "signal").is_err());
        assert_eq!(names(&dir), vec!["a-file".to_owned()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_cannot_be_predicted() {
        // Two writers (two processes restarted with the same pid, or two instances) at the same
        // instant, for the same reason, on their first set: nothing in common to guess from.
        let dir = scratch("unpredictable");
        let mut first = DumpWriter::new(dir.clone(), 5);
        let mut second = DumpWriter::new(dir.clone(), 5);
        let a = first.next_stem(1_764_000_000_000, "eta");
        let b = second.next_stem(1_764_000_000_000, "eta");
        assert_ne!(a, b);
        // Nor does one writer's next name follow from its last: more than the sequence moves.
        let c = first.next_stem(1_764_000_000_000, "eta");
        assert_ne!(c.replace("-0002-", "-0001-"), a, "{a} then {c}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn planted_symlinks_at_a_sets_names_are_never_followed() {
        let dir = scratch("symlinks");
        let outside = scratch("symlinks-outside");
        let victim = outside.join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let mut writer = DumpWriter::new(dir.clone(), 5);
        for ext in ["pb.gz", "svg", "json"] {
            for temporary in [true, false] {
                // The names are unpredictable, so the test learns them from the writer itself
                // before the set is written — as an attacker cannot.
                let stem = writer.next_stem(1_764_000_000_000, "threshold-95");
                let name = format!("{stem}.{ext}");
                let planted = dir.join(if temporary {
                    format!(".{name}.tmp")
                } else {
                    name
                });
                std::os::unix::fs::symlink(&victim, &planted).unwrap();
                let mut summary = DumpSummary::default();
                let error = writer
                    .write(&stem, &profile(), &mut summary, None)
                    .expect_err("a planted name fails the set");
                let what = planted.display();
                assert_eq!(
                    error.kind(),
                    io::ErrorKind::AlreadyExists,
                    "{what}: {error}"
                );
                assert_eq!(
                    fs::read(&victim).unwrap(),
                    b"precious",
                    "{what} was followed"
                );
                assert_eq!(
                    fs::read_link(&planted).unwrap(),
                    victim,
                    "{what} was replaced"
                );
                let left: Vec<String> = names(&dir)
                    .into_iter()
                    .filter(|n| n.contains(&stem))
                    .collect();
                assert_eq!(
                    left.len(),
                    1,
                    "{what}: only the planted name is left: {left:?}"
                );
                fs::remove_file(&planted).unwrap();
            }
        }
        assert!(list_sets(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn files_and_the_directory_it_makes_are_private() {
        let base = scratch("modes");
        let dir = base.join("dumps");
        let mut writer = DumpWriter::new(dir.clone(), 5);
        let set = write_set(&mut writer, 0, "on-demand").unwrap();
        assert_eq!(mode(&dir), 0o700);
        for path in [set.profile(), set.flamegraph(), set.summary()] {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_configured_mode_is_applied_to_files_and_a_made_directory_only() {
        let base = scratch("modes-configured");
        let made = base.join("made");
        let mut writer = DumpWriter::new(made.clone(), 5).with_file_mode(0o640);
        let set = write_set(&mut writer, 0, "on-demand").unwrap();
        // The test's umask may narrow, never widen: this runs with the usual 022.
        assert_eq!(mode(&made), 0o750);
        assert_eq!(mode(&set.summary()), 0o640);
        // An existing directory keeps its mode: it is the operator's (often a volume).
        let existing = base.join("existing");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o755)).unwrap();
        let mut writer = DumpWriter::new(existing.clone(), 5);
        let set = write_set(&mut writer, 0, "on-demand").unwrap();
        assert_eq!(mode(&existing), 0o755);
        assert_eq!(mode(&set.profile()), 0o600);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_deleted_directory_is_created_again() {
        let dir = scratch("deleted");
        let mut writer = DumpWriter::new(dir.clone(), 5);
        write_set(&mut writer, 0, "on-demand").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let set = write_set(&mut writer, 1, "on-demand").expect("written after the deletion");
        assert_eq!(stems(&dir), vec![set.stem]);
        assert_eq!(mode(&dir), 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_writers_sharing_a_directory_keep_their_own_sets() {
        let dir = scratch("shared");
        let (mut a, mut b) = (
            DumpWriter::new(dir.clone(), 2),
            DumpWriter::new(dir.clone(), 2),
        );
        let (mut by_a, mut by_b) = (Vec::new(), Vec::new());
        for second in 0..4 {
            by_a.push(write_set(&mut a, second, "eta").unwrap().stem);
            by_b.push(write_set(&mut b, second, "eta").unwrap().stem);
        }
        // B is in the middle of writing a set when A prunes.
        let b_writing = dir.join(format!(
            ".{}.pb.gz.tmp",
            b.next_stem(1_764_000_010_000, "eta")
        ));
        fs::write(&b_writing, b"half").unwrap();
        by_a.push(write_set(&mut a, 10, "eta").unwrap().stem);
        let mut left = stems(&dir);
        left.retain(|s| by_a.contains(s));
        assert_eq!(left, by_a[3..].to_vec(), "A keeps its newest two");
        let mut left = stems(&dir);
        left.retain(|s| by_b.contains(s));
        assert_eq!(
            left,
            by_b[2..].to_vec(),
            "B's newest two survive A's rotation"
        );
        assert!(b_writing.exists(), "A deleted B's temporary file mid-write");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_writers_sets_and_leftovers_are_adopted() {
        let dir = scratch("adopted");
        let mut old = DumpWriter::new(dir.clone(), 5);
        let mut by_old = Vec::new();
        for second in 0..3 {
            by_old.push(write_set(&mut old, second, "on-demand").unwrap().stem);
        }
        let leftover = dir.join(format!(
            ".{}.svg.tmp",
            old.next_stem(1_764_000_005_000, "eta")
        ));
        fs::write(&leftover, b"half").unwrap();
        let old_owner = by_old[0].split('-').nth(2).unwrap().to_owned();
        drop(old);
        // Killed rather than stopped: its lock file stays behind, unlocked.
        let old_lock = dir.join(format!(".heapwatch-{old_owner}.lock"));
        fs::write(&old_lock, b"").unwrap();
        let mut new = DumpWriter::new(dir.clone(), 2);
        let newest = write_set(&mut new, 10, "on-demand").unwrap().stem;
        assert_eq!(stems(&dir), vec![by_old[2].clone(), newest]);
        assert!(
            !leftover.exists(),
            "a dead writer's temporary file is cleaned up"
        );
        assert!(
            !old_lock.exists(),
            "a dead writer's lock file is cleaned up"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn others_files_are_not_touched() {
        let dir = scratch("foreign");
        let foreign = [
            ".heapwatch-x.pb.gz.tmp",
            "heapwatch-20250101T000000Z-1-0001-eta.json",
            "heapwatch-20250101T000000Z-1-0001-eta.pb.gz",
            "heapwatch-notes.json",
            "unrelated.json",
        ];
        for name in foreign {
            fs::write(dir.join(name), b"{}").unwrap();
        }
        // A set without its summary is incomplete: not listed, and not removed either.
        fs::write(
            dir.join("heapwatch-20250101T000000Z-abcdefgh-0001-abcdefgh-eta.pb.gz"),
            b"no summary",
        )
        .unwrap();
        let mut writer = DumpWriter::new(dir.clone(), 1);
        write_set(&mut writer, 0, "on-demand").unwrap();
        write_set(&mut writer, 1, "on-demand").unwrap();
        for name in foreign {
            assert!(dir.join(name).exists(), "{name} was removed");
        }
        assert_eq!(
            list_sets(&dir).len(),
            3,
            "two foreign summaries and the one kept"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_keeps_the_newest_set_of_each_reason() {
        let dir = scratch("reasons");
        let mut writer = DumpWriter::new(dir.clone(), 5);
        let mut written = Vec::new();
        for (second, slug) in [
            "threshold-80",
            "threshold-90",
            "threshold-95",
            "eta",
            "eta",
            "eta",
            "eta",
        ]
        .into_iter()
        .enumerate()
        {
            written.push(write_set(&mut writer, second as u64, slug).unwrap().stem);
        }
        assert_eq!(
            stems(&dir),
            [&written[..3], &written[5..]].concat(),
            "the repeats went, not the climb"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_victims_prefer_repeats_then_the_oldest() {
        let pool = |reasons: &[&str]| -> Vec<(String, String)> {
            reasons
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("s{i}"), r.to_string()))
                .collect()
        };
        let sets = pool(&["a", "b", "a", "c", "a"]);
        assert_eq!(rotation_victims(&sets, 3), vec!["s0", "s2"]);
        assert_eq!(rotation_victims(&sets, 2), vec!["s0", "s2", "s1"]);
        assert!(rotation_victims(&sets, 5).is_empty());
    }

    #[test]
    fn listing_and_reading_do_not_follow_symlinks_or_block_on_fifos() {
        let dir = scratch("readers");
        let outside = scratch("readers-outside");
        let secret = outside.join("secret.json");
        let mut summary = DumpSummary {
            reason: "secret".into(),
            ..DumpSummary::default()
        };
        summary.reason_detail = "the content of a file outside".into();
        fs::write(&secret, serde_json::to_vec(&summary).unwrap()).unwrap();
        let linked = "heapwatch-20260101T000000Z-aaaaaaaa-0001-bbbbbbbb-signal";
        std::os::unix::fs::symlink(&secret, dir.join(format!("{linked}.json"))).unwrap();
        let fifo = "heapwatch-20260101T000001Z-aaaaaaaa-0002-cccccccc-signal";
        let path = std::ffi::CString::new(
            dir.join(format!("{fifo}.json"))
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a NUL-terminated path, alive for the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);

        assert!(list_sets(&dir).is_empty(), "{:?}", stems(&dir));
        let (sender, receiver) = std::sync::mpsc::channel();
        let read_dir = dir.clone();
        std::thread::spawn(move || {
            for stem in [linked, fifo] {
                let set = DumpSet {
                    dir: read_dir.clone(),
                    stem: stem.to_owned(),
                };
                let _ = sender.send(read_summary(&set).map(|s| s.reason));
            }
        });
        for stem in [linked, fifo] {
            let read = receiver
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("reading {stem}.json blocked"));
            assert!(read.is_err(), "{stem}.json was read: {read:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
