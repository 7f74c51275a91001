//! Names completed after the fact: a set written near the limit before naming is named in
//! place — by this watch once the pressure has passed, or at start-up by the next instance of
//! the same program (a container restarted after `OOMKilled`), matched by build id — so that
//! its profile, flamegraph and summary read as a named set's, on any machine, without the
//! binary at hand.

use super::dump::{list_sets, read_profile, read_summary, written_by_live_instance, DumpSet};
use super::dump::DumpWriter;
use std::io;

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
    if outcome.named == 0 {
        return Ok(Naming::NotThisProgram {
            mappings: outcome.unmatched,
        });
    }
    summary.named_from(&profile);
    summary.symbolizer_bytes = crate::internal_alloc::symbolizer_heap_bytes() as u64;
    writer.rewrite_named(set, &profile, &summary)?;
    tracing::info!(
        set = %set.stem,
        locations = outcome.named,
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
