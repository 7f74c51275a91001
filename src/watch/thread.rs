//! The watch thread: takes the readings each tick (heap counters, cgroup, resident memory),
//! hands them to the tick's decisions, and carries those out: writes the dump set, keeps the
//! headroom reserve, arms the allocator's early wake, and publishes what it read once the
//! tick is done — to [`crate::published`] and the `metrics` facade.

use super::config::{DumpNaming, WatchConfig};
use super::dump::DumpWriter;
use super::dump_summary::{DumpContext, DumpSummary};
use super::namer::{Namer, NamerSetup};
use super::raw_dump::RawDumper;
use super::request;
use super::tick::{TickDecision, TickInput, TickLogic, TickSources};
use super::triggers::Reason;
use crate::detect::{Verdict, VerdictKind};
use crate::early_wake as wake;
use crate::memory::{machine_memory, resident_bytes, Cgroup, MemoryReading};
use crate::published::{self, Latest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How much of the series a summary carries.
const SERIES_SPAN: Duration = Duration::from_secs(600);
/// How often the raw dump's buffers and list of loaded objects are brought up to date at the
/// least; sooner whenever the table has new stacks.
const PREPARE_EVERY: Duration = Duration::from_secs(10);
/// Tick used for a while after an early wake.
const FOLLOW_UP_TICK: Duration = Duration::from_millis(50);
/// How long the short tick lasts after an early wake.
const FOLLOW_UP_SPAN: Duration = Duration::from_secs(3);

/// The watch thread's state.
pub(super) struct Watcher {
    tick_interval: Duration,
    configured_limit: Option<u64>,
    thresholds: Vec<f64>,
    reserve_bytes: usize,
    cgroup: Option<Cgroup>,
    machine_memory: Option<u64>,
    writer: DumpWriter,
    logic: TickLogic,
    reserve: Vec<u8>,
    last_prepared: Option<Instant>,
    /// The table's stack count when the raw dump was last prepared.
    stacks_prepared: u64,
    /// Who names the dumps written near the limit (as configured, `Auto` resolved at start).
    naming: DumpNaming,
    raw: RawDumper,
    /// The thread that names, started by `run`: `None` before.
    namer: Option<Namer>,
}

impl Watcher {
    pub(super) fn new(config: WatchConfig) -> Self {
        let naming = config.naming;
        Watcher {
            tick_interval: config.tick,
            configured_limit: config.limit,
            thresholds: config.thresholds.clone(),
            reserve_bytes: config.reserve_bytes,
            cgroup: config.cgroup.clone().or_else(Cgroup::of_this_process),
            machine_memory: machine_memory(),
            writer: DumpWriter::new(config.dir.clone(), config.keep)
                .with_file_mode(config.file_mode),
            logic: TickLogic::new(config, Instant::now()),
            reserve: Vec::new(),
            last_prepared: None,
            stacks_prepared: 0,
            naming,
            raw: RawDumper::new(),
            namer: None,
        }
    }

    /// Runs until `stop`; the caller holds the profiler guard for the thread.
    pub(super) fn run(mut self, stop: &AtomicBool) {
        if let Err(e) = self.writer.prepare() {
            tracing::error!(dir = %self.writer.dir().display(), error = %e,
                "heapwatch: cannot create the dump directory; each dump will try again");
        }
        self.writer.prune();
        let memory = self.memory();
        self.naming = self.naming.resolve(memory.limit);
        // Names the previous instances' sets, then reports the newest: on its own thread, so
        // that this one is ready to dump from its first tick.
        self.namer = Some(Namer::start(NamerSetup {
            naming: self.naming,
            writer: self.writer.for_naming(),
            cgroup: self.cgroup.clone(),
            oom_kills: memory.oom_kills,
        }));
        tracing::info!(
            dir = %self.writer.dir().display(),
            limit = memory.limit,
            limit_source = memory.limit_source,
            thresholds = ?self.thresholds,
            naming = ?self.naming,
            "heapwatch: watching"
        );
        self.take_reserve();
        // After an early wake, memory the heap just took is often not resident yet (a buffer
        // is allocated, then filled): look again at a short interval for a while, so the
        // working set is seen when it catches up rather than a whole tick later.
        let mut follow_up_until: Option<Instant> = None;
        while !stop.load(Ordering::Acquire) {
            self.tick();
            let now = Instant::now();
            let interval = match follow_up_until {
                Some(until) if now < until => self.tick_interval.min(FOLLOW_UP_TICK),
                _ => self.tick_interval,
            };
            if wake::sleep(interval) {
                follow_up_until = Some(Instant::now() + FOLLOW_UP_SPAN);
            }
        }
        wake::disarm();
        // Stops the namer, after the set it is naming, if any.
        self.namer = None;
    }

    fn memory(&self) -> MemoryReading {
        MemoryReading::read(
            self.cgroup.as_ref(),
            self.machine_memory,
            self.configured_limit,
        )
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let unix_ms = unix_ms();
        let heap_live = crate::counters::stats().live_bytes;
        let memory = self.memory();
        let input = TickInput {
            now,
            unix_ms,
            heap_live,
            memory,
            resident: resident_bytes(),
        };
        let (decision, baseline) = self.logic.tick(input, &mut LiveSources);
        if let Some(lines) = baseline {
            published::publish_baseline(lines);
        }
        if let Some(previous) = decision.verdict_changed_from {
            report_verdict_change(previous, self.logic.verdict(), &self.top_suspect());
        }
        let TickDecision {
            reading,
            dump,
            retake_reserve,
            pressure,
            early_wake_at,
            ..
        } = decision;
        if pressure {
            // Before the dump: a set written before naming is handed to the namer at once, and
            // the namer must already know that memory is short (else, on the first tick of
            // pressure, it would name the set right away, loading what the dump avoided).
            if let Some(namer) = &self.namer {
                namer.set_pressure(true);
            }
        }
        if let Some(reason) = dump {
            request::clear();
            if pressure || self.naming == DumpNaming::NextInstance {
                // Evidence first: nothing on this path loads, parses or demangles.
                self.dump_unnamed(&reason, &memory);
            } else {
                // The verdict and suspects that called for this dump are readable while it is
                // written (it may take a second); the reading follows once the tick is done.
                published::publish_report(self.logic.report());
                self.dump(&reason, &memory);
            }
        }
        if retake_reserve {
            self.take_reserve();
        }
        // Armed before the slower work below, so a spike during it still wakes us.
        match early_wake_at {
            Some(target) => wake::arm(heap_live, target),
            None => wake::disarm(),
        }
        // Published once the tick's decisions are made and the wake is armed, so a reader that
        // sees a reading knows the watch is fully set up.
        let latest = Latest {
            reading,
            detector: self.logic.report(),
        };
        crate::metrics_export::record(&latest);
        published::publish_latest(latest);
        if let Some(namer) = &self.namer {
            namer.set_pressure(pressure);
        }
        if !pressure {
            self.prepare_raw_dump(now);
        }
    }

    /// While memory is ample: the loaded objects listed and the raw dump's buffers sized to
    /// the table, whenever it has new stacks and every 10 s.
    fn prepare_raw_dump(&mut self, now: Instant) {
        let stacks = crate::table::profiler_stats().stacks;
        let due = self
            .last_prepared
            .is_none_or(|t| now.duration_since(t) >= PREPARE_EVERY);
        if due || stacks != self.stacks_prepared {
            self.raw.prepare();
            self.last_prepared = Some(now);
            self.stacks_prepared = stacks;
        }
    }

    fn top_suspect(&self) -> String {
        self.logic
            .suspects()
            .first()
            .map_or_else(|| "-".to_owned(), |s| s.function.clone())
    }

    fn take_reserve(&mut self) {
        if self.reserve_bytes > 0 && self.reserve.is_empty() {
            // Written, not just reserved, so the pages are resident and count in the usage
            // they will give back.
            self.reserve = vec![0xa5; self.reserve_bytes];
        }
    }

    /// Writes a set before naming: the evidence first, from buffers sized beforehand; names
    /// come later (see [`naming`]).
    fn dump_unnamed(&mut self, reason: &Reason, memory: &MemoryReading) {
        self.reserve = Vec::new();
        let started = Instant::now();
        let unix_ms = unix_ms();
        let stem = self.writer.next_stem(unix_ms, &reason.slug());
        let (raw, logic) = (&mut self.raw, &self.logic);
        let mut naming = None;
        let written = self.writer.write_unnamed(&stem, |pprof| {
            let dump = raw.write(pprof)?;
            naming = Some(dump.naming);
            let context = DumpContext {
                reason,
                unix_ms,
                memory,
                series: logic.recent_series(SERIES_SPAN.as_millis() as u64),
                verdict: logic.verdict().clone(),
                suspects: logic.suspects(),
            };
            Ok(DumpSummary::assemble_unnamed(
                context,
                dump.top_sites,
                dump.top_spans,
            ))
        });
        match written {
            Ok((set, summary)) => {
                published::count_dump(reason.kind());
                tracing::warn!(
                    reason = reason.kind().name(),
                    detail = %summary.reason_detail,
                    profile = %set.profile().display(),
                    millis = started.elapsed().as_secs_f64() * 1e3,
                    locations = naming.map_or(0, |n| n.locations),
                    named_from_cache = naming.map_or(0, |n| n.named),
                    top_site = summary.top_sites.first().map(|s| s.function.as_str()).unwrap_or("-"),
                    "heapwatch: dump written before naming; names follow"
                );
                if let Some(namer) = self
                    .namer
                    .as_ref()
                    .filter(|_| self.naming == DumpNaming::InProcess)
                {
                    namer.name_later(set);
                }
            }
            Err(e) => self.dump_failed(reason, &e),
        }
        published::publish_report(self.logic.report());
    }

    fn dump_failed(&self, reason: &Reason, error: &std::io::Error) {
        published::count_dump_error();
        tracing::error!(
            reason = reason.kind().name(),
            dir = %self.writer.dir().display(),
            %error,
            "heapwatch: dump failed; nothing was left behind"
        );
    }

    fn dump(&mut self, reason: &Reason, memory: &MemoryReading) {
        self.reserve = Vec::new();
        let unix_ms = unix_ms();
        let stem = self.writer.next_stem(unix_ms, &reason.slug());
        let profile = crate::snapshot::snapshot();
        let context = DumpContext {
            reason,
            unix_ms,
            memory,
            series: self.logic.recent_series(SERIES_SPAN.as_millis() as u64),
            verdict: self.logic.verdict().clone(),
            suspects: self.logic.suspects(),
        };
        let mut summary = DumpSummary::assemble(context, &profile);
        let diff_svg = (*reason == Reason::Leak).then(|| {
            let mut svg = Vec::new();
            if let Err(e) = self
                .logic
                .suspect_tracker()
                .write_diff_flamegraph(&profile, &mut svg)
            {
                tracing::warn!(error = %e, "heapwatch: cannot draw the differential flamegraph");
            }
            svg
        });
        match self
            .writer
            .write(&stem, &profile, &mut summary, diff_svg.as_deref())
        {
            Ok(set) => {
                published::count_dump(reason.kind());
                tracing::warn!(
                    reason = reason.kind().name(),
                    detail = %summary.reason_detail,
                    profile = %set.profile().display(),
                    top_site = summary.top_sites.first().map(|s| s.function.as_str()).unwrap_or("-"),
                    "heapwatch: dump written"
                );
            }
            Err(e) => self.dump_failed(reason, &e),
        }
    }
}

/// What the tick asks for, from the live process.
struct LiveSources;

impl TickSources for LiveSources {
    fn snapshot(&mut self) -> crate::profile::Profile {
        crate::snapshot::snapshot()
    }

    fn pending_request(&mut self) -> Option<request::DumpRequest> {
        request::pending()
    }
}

/// Every verdict change is an event; the ones that call for action are warnings.
fn report_verdict_change(previous: VerdictKind, verdict: &Verdict, top_suspect: &str) {
    match verdict.kind {
        VerdictKind::Leak | VerdictKind::LimitTooLow | VerdictKind::Fragmentation => {
            tracing::warn!(
                from = previous.name(),
                to = verdict.kind.name(),
                confidence = verdict.confidence,
                floor_slope_bytes_per_second = verdict.floor_slope_bytes_per_second,
                eta_seconds = verdict.eta_seconds,
                top_suspect,
                "heapwatch: verdict {}: {}",
                verdict.kind.name(),
                verdict.advice
            )
        }
        _ => tracing::info!(
            from = previous.name(),
            to = verdict.kind.name(),
            confidence = verdict.confidence,
            "heapwatch: verdict {}: {}",
            verdict.kind.name(),
            verdict.advice
        ),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
