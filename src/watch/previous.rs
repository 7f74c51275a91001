//! At start-up: what the previous instance left in the dump directory, said in one warning an
//! on-call engineer can read in the new pod's log.

use super::dump::{list_sets, read_summary, written_by_live_instance};
use crate::encode::human_bytes;
use crate::memory::{Cgroup, CgroupVersion};
use std::path::Path;

/// One line describing the newest dump set in `dir` that no running instance is writing —
/// reason, time, usage against the limit and top call site — or `None` when there is none.
/// Sets of another live instance sharing the directory are its news, not a predecessor's; a
/// symlink or FIFO named like a summary is not a set, and is never opened.
pub fn previous_dump_report(dir: &Path) -> Option<String> {
    let set = list_sets(dir)
        .into_iter()
        .rev()
        .find(|set| !written_by_live_instance(set))?;
    let summary = match read_summary(&set) {
        Ok(summary) => summary,
        Err(e) => {
            return Some(format!(
                "found dump set {} but cannot read its summary: {e}",
                set.summary().display()
            ))
        }
    };
    let usage = match (summary.working_set_bytes, summary.limit_bytes) {
        (Some(ws), Some(limit)) if limit > 0 => format!(
            "{} of {} limit ({:.0} %)",
            human_bytes(ws as i64),
            human_bytes(limit as i64),
            100.0 * ws as f64 / limit as f64
        ),
        (Some(ws), _) => format!("{} (no limit)", human_bytes(ws as i64)),
        _ => "usage unknown".to_owned(),
    };
    let top = summary.top_sites.first().map_or_else(
        || "no sampled call site".to_owned(),
        |site| {
            format!(
                "top site {} ({}, {:.0} % of the live heap)",
                site.function,
                human_bytes(site.inuse_bytes),
                100.0 * site.share
            )
        },
    );
    let span = summary.top_spans.first().map_or_else(String::new, |span| {
        format!(
            "; top span {} ({})",
            span.span,
            human_bytes(span.inuse_bytes)
        )
    });
    Some(format!(
        "previous instance (pid {}) left a dump at {}: {}; {usage}; heap {}; {top}{span}; files {}",
        summary.pid,
        summary.time,
        summary.reason_detail,
        human_bytes(summary.heap.live_bytes as i64),
        set.profile().display(),
    ))
}

/// Logs the previous instance's newest dump, if any, as a warning.
pub(crate) fn report_previous(dir: &Path, cgroup: Option<&Cgroup>, oom_kills: Option<u64>) {
    let Some(report) = previous_dump_report(dir) else {
        return;
    };
    match (cgroup.map(|c| c.version), oom_kills) {
        (Some(CgroupVersion::V2), Some(kills)) => tracing::warn!(
            oom_kills = kills,
            "heapwatch: {report}; this cgroup's memory.events counts {kills} oom_kill{}",
            if kills == 1 { "" } else { "s" }
        ),
        _ => tracing::warn!("heapwatch: {report}"),
    }
}
