//! Where a loaded object's DWARF lives: in the object itself, or — as production images ship
//! it — in a separate debug file, found the way gdb and the distributions find it:
//!
//! 1. by GNU build id: `<dir>/.build-id/ab/cdef….debug` under each debug directory;
//! 2. by `.gnu_debuglink`: the named file next to the object, in its `.debug/` folder, or under
//!    each debug directory followed by the object's own folder.
//!
//! The debug directories are `/usr/lib/debug` and those listed (`:`-separated) in
//! `HEAPWATCH_DEBUG_PATH`. A candidate is used only if it is a regular file (opened without
//! blocking, so a planted FIFO cannot hang us) owned by root or by this process's user and
//! writable by no one else (nobody can plant names for us), carries DWARF, and is the right
//! file: same build id, or, for a debug link without build ids, the CRC the link records.
//! Symbolic links are followed: the build-id trees of some distributions are made of them, and
//! what they point to must pass the same checks. The object itself is code this process already
//! runs, so it is only checked to be the file that was loaded (same build id).

use memmap2::Mmap;
use object::{Object, ObjectSection};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The system's debug directory, searched after `HEAPWATCH_DEBUG_PATH`'s.
const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// The directories searched for separate debug files.
fn debug_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("HEAPWATCH_DEBUG_PATH")
        .map(|list| {
            std::env::split_paths(&list)
                .filter(|p| p.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
    dirs
}

/// An opened, mapped file that holds DWARF for an object.
pub(crate) struct DebugFile {
    pub path: PathBuf,
    pub map: Mmap,
}

/// The file holding `object_path`'s DWARF (possibly the object itself), if any. `build_id` is
/// the object's GNU build id as the loader reported it (empty if none).
pub(crate) fn find(object_path: &str, build_id: &[u8]) -> Option<DebugFile> {
    let object_map = map_file(Path::new(object_path), Trust::LoadedObject)?;
    let object = object::File::parse(&*object_map).ok()?;
    let file_id = object.build_id().ok().flatten();
    if !build_id.is_empty() && file_id.is_some_and(|id| id != build_id) {
        // Replaced on disk since it was loaded: neither its names nor its DWARF are ours.
        return None;
    }
    if has_dwarf(&object) {
        return Some(DebugFile {
            path: PathBuf::from(object_path),
            map: object_map,
        });
    }
    let dirs = debug_dirs();
    if !build_id.is_empty() {
        let hex = super::modules::hex(build_id);
        for dir in &dirs {
            let candidate = dir
                .join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..]));
            if let Some(found) = open_candidate(&candidate, build_id, None) {
                return Some(found);
            }
        }
    }
    let (link_name, link_crc) = debuglink(&object)?;
    let link_name = Path::new(&link_name);
    // A link is a bare file name; anything else (a path, `..`) is not followed.
    if link_name.components().count() != 1 || link_name.file_name().is_none() {
        return None;
    }
    let object_dir = Path::new(object_path).parent()?;
    let mut candidates = vec![
        object_dir.join(link_name),
        object_dir.join(".debug").join(link_name),
    ];
    for dir in &dirs {
        let relative = object_dir.strip_prefix("/").unwrap_or(object_dir);
        candidates.push(dir.join(relative).join(link_name));
    }
    let own_build_id = object.build_id().ok().flatten().unwrap_or(build_id);
    candidates
        .iter()
        .filter(|candidate| candidate.as_path() != Path::new(object_path))
        .find_map(|candidate| open_candidate(candidate, own_build_id, Some(link_crc)))
}

/// Whether a parsed object carries DWARF line tables (what naming needs).
pub(crate) fn has_dwarf(object: &object::File<'_>) -> bool {
    let present = |name| {
        object
            .section_by_name(name)
            .is_some_and(|s| s.size() > 0 && s.kind() != object::SectionKind::UninitializedData)
    };
    present(".debug_info") && present(".debug_line")
}

/// Opens `candidate` if it is a trusted file with DWARF and matches the object: by build id
/// when both have one, else by the debug link's CRC.
fn open_candidate(candidate: &Path, build_id: &[u8], crc: Option<u32>) -> Option<DebugFile> {
    let map = map_file(candidate, Trust::Candidate)?;
    let file = object::File::parse(&*map).ok()?;
    if !has_dwarf(&file) {
        return None;
    }
    let candidate_id = file.build_id().ok().flatten();
    let matches = match (candidate_id, build_id.is_empty(), crc) {
        (Some(id), false, _) => id == build_id,
        (_, _, Some(crc)) => crc32(&map) == crc,
        _ => false,
    };
    matches.then(|| DebugFile {
        path: candidate.to_path_buf(),
        map,
    })
}

/// How far a file to map must be trusted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// An object this process loaded: any regular file.
    LoadedObject,
    /// A file found by name: owned by root or this user, writable by no one else.
    Candidate,
}

/// Maps a regular file read-only, if it is as trusted as `trust` asks.
fn map_file(path: &Path, trust: Trust) -> Option<Mmap> {
    // Non-blocking: opening a FIFO planted under a searched name must not wait for a writer.
    // No controlling terminal from a tty either, and nothing inherited across exec.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    if trust == Trust::Candidate {
        // SAFETY: `geteuid` has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let writable_by_others = meta.mode() & 0o022 != 0;
        if (meta.uid() != 0 && meta.uid() != me) || writable_by_others {
            return None;
        }
    }
    // SAFETY: a private read-only mapping of a regular file. A file truncated while mapped
    // would fault on reads past its new end; debug files and loaded objects are replaced by
    // rename, not truncated in place: the risk every symbolizer that maps binaries accepts.
    unsafe { Mmap::map(&file) }.ok()
}

/// The `.gnu_debuglink` section: a file name and the CRC-32 of that file.
fn debuglink(object: &object::File<'_>) -> Option<(String, u32)> {
    let (name, crc) = object.gnu_debuglink().ok().flatten()?;
    Some((String::from_utf8(name.to_vec()).ok()?, crc))
}

/// CRC-32 (IEEE), as `.gnu_debuglink` records it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_holds_its_own_dwarf() {
        let exe = std::env::current_exe().unwrap();
        let found = find(exe.to_str().unwrap(), &[]).expect("test binaries carry DWARF");
        assert_eq!(found.path, exe);
    }

    #[test]
    fn files_others_can_write_are_refused() {
        let dir = std::env::temp_dir().join(format!("heapwatch-debugfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let planted = dir.join("planted.debug");
        std::fs::copy(std::env::current_exe().unwrap(), &planted).unwrap();
        assert!(map_file(&planted, Trust::Candidate).is_some());
        std::fs::set_permissions(
            &planted,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        assert!(map_file(&planted, Trust::Candidate).is_none());
        // The binary a process runs is its own, however its mode was set (umask 002 builds).
        assert!(map_file(&planted, Trust::LoadedObject).is_some());
        assert!(
            map_file(&dir, Trust::LoadedObject).is_none(),
            "a directory is not a debug file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("heapwatch-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("app.debug");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (done, finished) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = done.send(map_file(&path, Trust::Candidate).is_none());
        });
        let refused = finished.recv_timeout(std::time::Duration::from_secs(20));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(refused, Ok(true), "opening a FIFO blocked or was accepted");
    }

    #[test]
    fn crc_matches_the_gnu_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
