//! The dump near the limit: the live-sample table copied and encoded into buffers sized while
//! memory was ample, with the loaded objects as they were then listed and only the names the
//! symbolizer had already cached. Nothing on this path loads, parses or demangles; the set is
//! named afterwards (see [`super::naming`]).

use super::dump_summary::{top_sites, TopSite, TOP_SITES, TOP_SPANS};
use super::raw_pprof::{RawNaming, RawPprofEncoder, RawProfileHeader};
use crate::profile::{Line, Location, Mapping, Profile, Sample};
use crate::spans::SpanTotal;
use crate::symbolize::{code_address, CachedNames, ModuleInfo};
use crate::table::{self, RawSnapshot, RawStack, Scope};
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

/// Stacks whose culprits make a raw dump's top sites: the largest by live bytes. Their names
/// are copied out of the cache, so this bounds what the summary costs.
const TOP_STACKS: usize = 16;

/// What a raw dump found out besides its bytes.
pub(super) struct RawDump {
    pub(super) naming: RawNaming,
    /// The culprits of the largest stacks, named as far as the cache could.
    pub(super) top_sites: Vec<TopSite>,
    pub(super) top_spans: Vec<SpanTotal>,
}

/// The raw dump's state, kept by the watch from one dump to the next.
pub(super) struct RawDumper {
    snapshot: RawSnapshot,
    encoder: RawPprofEncoder,
    modules: Vec<ModuleInfo>,
    span_totals: Vec<(u32, SpanTotal)>,
}

impl RawDumper {
    pub(super) fn new() -> Self {
        RawDumper {
            snapshot: RawSnapshot::empty(),
            encoder: RawPprofEncoder::default(),
            modules: Vec::new(),
            span_totals: Vec::new(),
        }
    }

    /// While memory is ample: lists the loaded objects, and sizes the buffers for the table as
    /// it is now with half again to spare.
    pub(super) fn prepare(&mut self) {
        let modules = crate::symbolize::loaded_module_infos();
        if modules != self.modules {
            self.modules = modules;
        }
        let (stacks, frames) = table::raw_size();
        let (stacks, frames) = (stacks + stacks / 2 + 64, frames + frames / 2 + 1024);
        self.snapshot.reserve(stacks, frames);
        self.encoder.reserve(stacks, frames);
        let _ = self.span_totals.try_reserve(64);
    }

    /// Copies the table and encodes it as a pprof profile into `out`.
    pub(super) fn write(&mut self, out: &mut Vec<u8>) -> io::Result<RawDump> {
        if self.modules.is_empty() {
            // Never prepared (a dump at the first tick): the list costs a few KiB.
            self.modules = crate::symbolize::loaded_module_infos();
        }
        if !table::raw_snapshot_into(Scope::Process, &mut self.snapshot) {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "no memory for a copy of the live-sample table",
            ));
        }
        let time_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let header = RawProfileHeader {
            time_nanos,
            sample_rate_bytes: crate::sampler::sample_rate(),
            modules: &self.modules,
            overflow_frame: crate::snapshot::OVERFLOW_FRAME,
        };
        let names = CachedNames::if_free();
        let naming = self
            .encoder
            .encode(&self.snapshot, &header, names.as_ref(), out)?;
        let top = top_stacks_profile(&self.snapshot, &self.modules, names.as_ref());
        drop(names);
        let top_sites = top_sites(&top, TOP_SITES);
        let top_spans = self.top_spans();
        Ok(RawDump {
            naming,
            top_sites,
            top_spans,
        })
    }

    /// Live heap by span over every stack of the copy, largest first; empty without spans.
    fn top_spans(&mut self) -> Vec<SpanTotal> {
        let totals = &mut self.span_totals;
        totals.clear();
        for stack in self.snapshot.stacks.iter() {
            let index = match totals.iter().position(|(span, _)| *span == stack.span) {
                Some(index) => index,
                None => {
                    totals.push((
                        stack.span,
                        SpanTotal {
                            span: String::new(),
                            inuse_bytes: 0,
                            inuse_objects: 0,
                            alloc_bytes: 0,
                        },
                    ));
                    totals.len() - 1
                }
            };
            let total = &mut totals[index].1;
            total.inuse_bytes += stack.totals.inuse_bytes.round() as i64;
            total.inuse_objects += stack.totals.inuse_objects.round() as i64;
            total.alloc_bytes += stack.totals.alloc_bytes.round() as i64;
        }
        if totals.iter().all(|(span, _)| *span == 0) {
            return Vec::new();
        }
        totals.sort_by_key(|(_, total)| std::cmp::Reverse(total.inuse_bytes));
        totals
            .iter()
            .filter(|(_, total)| total.inuse_bytes > 0)
            .take(TOP_SPANS)
            .map(|(span, total)| SpanTotal {
                span: crate::spans::span_name(&crate::spans::tags::labels(*span))
                    .unwrap_or_else(|| crate::spans::NO_SPAN_NAME.to_owned()),
                ..total.clone()
            })
            .collect()
    }
}

/// A small profile of the largest stacks of `raw`, named from the cache where it can be and
/// with the allocation machinery cut from their leaves: what the raw summary's top sites are
/// read from.
fn top_stacks_profile(
    raw: &RawSnapshot,
    modules: &[ModuleInfo],
    names: Option<&CachedNames>,
) -> Profile {
    let mut largest: Vec<&RawStack> = Vec::with_capacity(TOP_STACKS + 1);
    for stack in raw.stacks.iter().filter(|s| s.totals.inuse_bytes > 0.0) {
        let at = largest.partition_point(|s| s.totals.inuse_bytes >= stack.totals.inuse_bytes);
        if at < TOP_STACKS {
            largest.insert(at, stack);
            largest.truncate(TOP_STACKS);
        }
    }
    let mut profile = Profile {
        mappings: modules
            .iter()
            .map(|m| Mapping {
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.file_offset,
                path: m.path.clone(),
                build_id: m.build_id.clone(),
            })
            .collect(),
        ..Profile::default()
    };
    for stack in largest {
        let start = stack.start as usize;
        let frames = raw
            .frames
            .get(start..start + stack.len as usize)
            .unwrap_or(&[]);
        let mut locations = Vec::with_capacity(frames.len());
        for address in frames.iter().filter_map(|&ip| code_address(ip)) {
            let lines = names
                .and_then(|names| Some((names, names.lines(address)?)))
                .map(|(names, entries)| {
                    entries
                        .iter()
                        .map(|entry| Line {
                            function: names.text(entry.function).to_owned(),
                            ..Line::default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            profile.locations.push(Location {
                address,
                mapping: modules
                    .iter()
                    .position(|m| m.start <= address && address < m.limit),
                lines,
            });
            locations.push(profile.locations.len() - 1);
        }
        let t = &stack.totals;
        profile.samples.push(Sample {
            locations,
            values: [
                t.alloc_objects,
                t.alloc_bytes,
                t.inuse_objects,
                t.inuse_bytes,
            ]
            .map(|v| v.round() as i64),
            labels: Vec::new(),
        });
    }
    crate::symbolize::leaves::trim_leaves(&mut profile);
    profile
}
