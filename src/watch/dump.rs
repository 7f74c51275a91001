//! Dump sets on disk: `heapwatch-<UTC time>-<pid>-<seq>-<reason>.{pb.gz,svg,json}`.
//!
//! All files are written under temporary names (`.<name>.tmp`), then renamed — the JSON
//! summary last, so a summary on disk means its set is complete. A failure removes what the set
//! had written: never half a file, never half a set. The directory keeps the newest `keep`
//! sets; older ones are removed. Buffers are kept between dumps, so a dump near the limit
//! allocates little beyond the profile itself.

use super::summary::{DumpFiles, DumpSummary};
use crate::{Profile, SampleType};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File name prefix of every dump set.
pub const DUMP_PREFIX: &str = "heapwatch-";
const TMP_SUFFIX: &str = ".tmp";

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
            sequence: 0,
            profile_buffer: Vec::new(),
            svg_buffer: Vec::new(),
            json_buffer: Vec::new(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
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
            "{DUMP_PREFIX}{compact}-{}-{:04}-{reason_slug}",
            std::process::id(),
            self.sequence
        )
    }

    /// Encodes and writes one set; on error nothing of it is left behind.
    pub(crate) fn write(
        &mut self,
        stem: &str,
        profile: &Profile,
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

        self.profile_buffer.clear();
        crate::encode::write_pprof(profile, &mut self.profile_buffer)?;
        self.svg_buffer.clear();
        write_svg(profile, &mut self.svg_buffer)?;
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
        let mut written: Vec<&Path> = Vec::new();
        let mut renamed: Vec<&Path> = Vec::new();
        let result = (|| {
            for (path, bytes) in &files {
                let tmp = tmp_path(path);
                written.push(path);
                write_file(&tmp, bytes)?;
            }
            for (path, _) in &files {
                fs::rename(tmp_path(path), path)?;
                renamed.push(path);
            }
            Ok(())
        })();
        if let Err(error) = result {
            for path in written {
                let _ = fs::remove_file(tmp_path(path));
            }
            for path in renamed {
                let _ = fs::remove_file(path);
            }
            return Err(error);
        }
        self.prune();
        Ok(set)
    }

    /// Removes the oldest sets beyond `keep`, and stale temporary files.
    pub(crate) fn prune(&self) {
        let sets = list_sets(&self.dir);
        let excess = sets.len().saturating_sub(self.keep);
        for set in &sets[..excess] {
            for path in [
                set.profile(),
                set.flamegraph(),
                set.diff_flamegraph(),
                set.summary(),
            ] {
                let _ = fs::remove_file(path);
            }
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&format!(".{DUMP_PREFIX}")) && name.ends_with(TMP_SUFFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// The complete dump sets in `dir` (those whose summary exists), oldest first.
pub fn list_sets(dir: &Path) -> Vec<DumpSet> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stems: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".json")?;
            stem.starts_with(DUMP_PREFIX).then(|| stem.to_owned())
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

/// Reads a set's summary.
pub fn read_summary(set: &DumpSet) -> io::Result<DumpSummary> {
    let text = fs::read(set.summary())?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
        out.extend_from_slice(
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">heapwatch built without the flamegraph feature: open the .pb.gz with go tool pprof</text></svg>\n",
        );
        Ok(())
    }
}

/// Writes without `fsync`: what threatens a dump is the OOM kill of this process, and data in
/// the page cache outlives the process; syncing three files would triple the dump's time on a
/// slow disk, near the limit, for protection against a machine crash only.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)
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

    #[test]
    fn writes_complete_sets_and_keeps_the_newest() {
        let dir = scratch("keep");
        let mut writer = DumpWriter::new(dir.clone(), 2);
        let mut stems = Vec::new();
        for i in 0..3 {
            let stem = writer.next_stem(1_764_000_000_000 + i * 1000, "on-demand");
            let mut summary = DumpSummary {
                reason: "on_demand".into(),
                ..DumpSummary::default()
            };
            let set = writer.write(&stem, &profile(), &mut summary, None).unwrap();
            assert_eq!(
                read_summary(&set).unwrap().files.profile,
                format!("{stem}.pb.gz")
            );
            assert!(fs::read_to_string(set.flamegraph())
                .unwrap()
                .contains("grow_cache"));
            stems.push(stem);
        }
        let left: Vec<String> = list_sets(&dir).into_iter().map(|s| s.stem).collect();
        assert_eq!(left, stems[1..].to_vec(), "the oldest set is removed");
        let files = fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 6, "two sets of three files, no temporary files");
        assert!(stems[0].starts_with("heapwatch-20251124T"), "{}", stems[0]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = scratch("fail");
        let missing = dir.join("not-there");
        let mut writer = DumpWriter::new(missing.clone(), 2);
        let stem = writer.next_stem(0, "signal");
        assert!(writer
            .write(&stem, &profile(), &mut DumpSummary::default(), None)
            .is_err());
        assert!(!missing.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporary_files_are_cleaned_and_incomplete_sets_ignored() {
        let dir = scratch("stale");
        fs::write(dir.join(".heapwatch-x.pb.gz.tmp"), b"half").unwrap();
        fs::write(
            dir.join("heapwatch-20250101T000000Z-1-0001-eta.pb.gz"),
            b"no summary",
        )
        .unwrap();
        fs::write(dir.join("unrelated.json"), b"{}").unwrap();
        let writer = DumpWriter::new(dir.clone(), 5);
        writer.prune();
        assert!(!dir.join(".heapwatch-x.pb.gz.tmp").exists());
        assert!(list_sets(&dir).is_empty());
        assert!(
            dir.join("unrelated.json").exists(),
            "only heapwatch's files are touched"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
