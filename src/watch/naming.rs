//! Names completed after the fact: a set written near the limit before naming is named in
//! place — by this watch once the pressure has passed, or at start-up by the next instance of
//! the same program (a container restarted after `OOMKilled`), matched by build id — so that
//! its profile, flamegraph and summary read as a named set's, on any machine, without the
//! binary at hand.

use super::dump::DumpWriter;
use super::dump::{list_sets, read_profile, read_summary, written_by_live_instance, DumpSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How a set came out of [`name_set`].
#[derive(Debug)]
pub(super) enum Naming {
    /// Named and written back.
    Named,
    /// It was named already (or written named).
    AlreadyNamed,
    /// None of its addresses lies in an object loaded here: another program's set, or this
    /// program's from another build. Left as it was.
    NotThisProgram { mappings: Vec<String> },
}

/// Names the set `set` in place if it was written before naming.
pub(super) fn name_set(writer: &mut DumpWriter, set: &DumpSet) -> io::Result<Naming> {
    let mut summary = read_summary(set)?;
    if summary.named {
        return Ok(Naming::AlreadyNamed);
    }
    let mut profile = read_profile(set)?;
    let outcome = crate::symbolize::name_by_build_id(&mut profile);
    if outcome.named == 0 && outcome.had_names == 0 {
        return Ok(Naming::NotThisProgram {
            mappings: outcome.unmatched,
        });
    }
    summary.named_from(&profile);
    summary.symbolizer_bytes = crate::internal_alloc::symbolizer_heap_bytes() as u64;
    writer.rewrite_named(set, &profile, &summary)?;
    tracing::info!(
        set = %set.stem,
        named = outcome.named,
        named_before = outcome.had_names,
        unnamed = outcome.unnamed,
        top_site = summary.top_sites.first().map_or("-", |s| s.function.as_str()),
        "heapwatch: dump named"
    );
    Ok(Naming::Named)
}

/// At start-up: names the sets that earlier instances, now gone, left unnamed in the writer's
/// directory (those of this program's build; others are left for `heapwatch symbolize`).
/// Returns how many were named.
pub(super) fn name_predecessors(writer: &mut DumpWriter) -> usize {
    let sets: Vec<DumpSet> = list_sets(writer.dir())
        .into_iter()
        .filter(|set| !written_by_live_instance(set))
        .collect();
    let mut named = 0;
    for set in sets {
        match name_set(writer, &set) {
            Ok(Naming::Named) => named += 1,
            Ok(Naming::AlreadyNamed) => {}
            Ok(Naming::NotThisProgram { mappings }) => tracing::info!(
                set = %set.stem,
                mappings = ?mappings,
                "heapwatch: a previous dump was written before naming by another build; \
                 name it with `heapwatch symbolize` and that build's binary"
            ),
            Err(error) => tracing::warn!(
                set = %set.stem,
                %error,
                "heapwatch: cannot name a previous instance's dump"
            ),
        }
    }
    named
}

/// Why [`symbolize_set`] could not name a set.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeSetError {
    /// The set's summary or profile could not be read.
    #[error("cannot read the dump set {stem}: {source}")]
    Read {
        /// The set's stem.
        stem: String,
        /// What went wrong.
        source: io::Error,
    },
    /// The binary could not name it.
    #[error(transparent)]
    Symbolize(#[from] crate::symbolize::SymbolizeError),
    /// The named files could not be written; the set is as it was.
    #[error("cannot write the named set {stem}: {source}")]
    Write {
        /// The set's stem.
        stem: String,
        /// What went wrong.
        source: io::Error,
    },
}

/// Names a dump set in place from `binary` (the program that wrote it, an unstripped copy, or
/// its debug file; see [`symbolize_with_binary`](crate::symbolize_with_binary)): its profile,
/// its flamegraph (drawn anew) and its summary's top sites and spans. What `heapwatch
/// symbolize SET.json` does for a set written before naming by a program that will not run
/// here again. Returns how many locations were named; adds at most `max_name_bytes` of names.
///
/// ```no_run
/// use heapwatch::watch::{list_sets, symbolize_set};
/// for set in list_sets("/var/run/heapwatch".as_ref()) {
///     let named = symbolize_set(&set, "/srv/orders".as_ref(), 64 << 20)?;
///     println!("{}: {named} locations named", set.stem);
/// }
/// # Ok::<(), heapwatch::watch::SymbolizeSetError>(())
/// ```
pub fn symbolize_set(
    set: &DumpSet,
    binary: &Path,
    max_name_bytes: u64,
) -> Result<usize, SymbolizeSetError> {
    let read = |source| SymbolizeSetError::Read {
        stem: set.stem.clone(),
        source,
    };
    let mut summary = read_summary(set).map_err(read)?;
    let mut profile = read_profile(set).map_err(read)?;
    let named =
        crate::symbolize::symbolize_with_binary_within(&mut profile, binary, max_name_bytes)?;
    summary.named_from(&profile);
    // The files keep the mode they were written with.
    let mode = std::fs::symlink_metadata(set.summary())
        .map(|m| m.permissions().mode())
        .unwrap_or(super::config::DEFAULT_FILE_MODE);
    let mut writer = DumpWriter::new(set.dir.clone(), 1).with_file_mode(mode);
    writer
        .rewrite_named(set, &profile, &summary)
        .map_err(|source| SymbolizeSetError::Write {
            stem: set.stem.clone(),
            source,
        })?;
    Ok(named)
}
