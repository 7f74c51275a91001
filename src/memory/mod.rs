//! Memory readings from outside the heap: the container's cgroup (limit, usage, working set,
//! OOM kills), the process's resident set, and the allocator's resident memory. What the watch
//! reads every tick and the detector is fed; nothing here keeps state between readings.

mod cgroup;
mod process;

pub use cgroup::{machine_memory, Cgroup, CgroupReading, CgroupVersion};
pub(crate) use process::{process_rss, resident_bytes};

/// Memory charged to the process at one moment, and where its limit comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemoryReading {
    pub(crate) limit: Option<u64>,
    /// `cgroup v2`, `cgroup v1`, `configured` or `none`.
    pub(crate) limit_source: &'static str,
    pub(crate) usage: Option<u64>,
    pub(crate) working_set: Option<u64>,
    pub(crate) oom_kills: Option<u64>,
}

impl MemoryReading {
    /// Reads `cgroup` when it sets a limit; otherwise the process's own resident memory
    /// against `configured_limit`: an unlimited cgroup is often shared (a whole VM or
    /// session), so its usage is not this process's.
    pub(crate) fn read(
        cgroup: Option<&Cgroup>,
        machine_memory: Option<u64>,
        configured_limit: Option<u64>,
    ) -> MemoryReading {
        if let Some(cgroup) = cgroup {
            let reading = cgroup.read(machine_memory);
            if let (Some(limit), Some(_)) = (reading.limit, reading.usage) {
                return MemoryReading {
                    limit: Some(limit),
                    limit_source: match cgroup.version {
                        CgroupVersion::V2 => "cgroup v2",
                        CgroupVersion::V1 => "cgroup v1",
                    },
                    usage: reading.usage,
                    working_set: reading.working_set(),
                    oom_kills: reading.oom_kills,
                };
            }
        }
        let rss = process_rss();
        MemoryReading {
            limit: configured_limit,
            limit_source: if configured_limit.is_some() {
                "configured"
            } else {
                "none"
            },
            usage: rss,
            working_set: rss,
            oom_kills: None,
        }
    }

    /// `working_set / limit`, when both are known.
    pub(crate) fn fraction(&self) -> Option<f64> {
        match (self.limit, self.working_set) {
            (Some(limit), Some(ws)) if limit > 0 => Some(ws as f64 / limit as f64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_cgroup_the_process_is_measured_against_the_configured_limit() {
        let reading = MemoryReading::read(None, None, Some(1 << 40));
        assert_eq!(reading.limit, Some(1 << 40));
        assert_eq!(reading.limit_source, "configured");
        assert!(reading.usage.is_some_and(|rss| rss > 0), "{reading:?}");
        assert_eq!(reading.usage, reading.working_set);
        assert!(reading.fraction().is_some_and(|f| f > 0.0 && f < 1.0));
        let unlimited = MemoryReading::read(None, None, None);
        assert_eq!(unlimited.limit_source, "none");
        assert_eq!(unlimited.fraction(), None);
    }
}
