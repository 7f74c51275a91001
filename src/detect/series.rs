//! The series store: the heap, the working set and the resident size at three resolutions, in
//! fixed memory — every tick for the last 600 ticks (10 minutes at 1 s), 10 s buckets for
//! 2 hours, 1 min buckets for 24 hours. Coarser buckets keep each figure's minimum and maximum,
//! so the floor and the peaks survive the downsampling.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One point (a tick, or a bucket of ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Start of the point's time span, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Lowest live heap in the span.
    pub heap_min: u64,
    /// Highest live heap in the span.
    pub heap_max: u64,
    /// Lowest working set in the span, if known.
    pub working_set_min: Option<u64>,
    /// Highest working set in the span, if known.
    pub working_set_max: Option<u64>,
    /// Resident memory of the allocator (jemalloc `stats.resident`, or the process's RSS),
    /// lowest in the span.
    pub resident_min: Option<u64>,
    /// Highest memory charged to the cgroup (or the process's RSS without one) in the span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_max: Option<u64>,
    /// The memory limit at the end of the span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl Point {
    /// A point for one reading.
    pub fn reading(
        unix_ms: u64,
        heap: u64,
        working_set: Option<u64>,
        resident: Option<u64>,
    ) -> Self {
        Point {
            unix_ms,
            heap_min: heap,
            heap_max: heap,
            working_set_min: working_set,
            working_set_max: working_set,
            resident_min: resident,
            usage_max: None,
            limit: None,
        }
    }

    /// The same point with the usage and the limit read with it (what a dump's series shows
    /// beside the heap).
    pub fn with_usage(self, usage: Option<u64>, limit: Option<u64>) -> Self {
        Point {
            usage_max: usage,
            limit,
            ..self
        }
    }

    fn merge(&mut self, other: &Point) {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let max = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.heap_min = self.heap_min.min(other.heap_min);
        self.heap_max = self.heap_max.max(other.heap_max);
        self.working_set_min = min(self.working_set_min, other.working_set_min);
        self.working_set_max = max(self.working_set_max, other.working_set_max);
        self.resident_min = min(self.resident_min, other.resident_min);
        self.usage_max = max(self.usage_max, other.usage_max);
        self.limit = other.limit.or(self.limit);
    }
}

/// One resolution: a bounded ring of points, each `step_ms` wide (0: one per push).
#[derive(Debug, Clone)]
struct Level {
    step_ms: u64,
    capacity: usize,
    points: VecDeque<Point>,
}

impl Level {
    fn new(step_ms: u64, capacity: usize) -> Self {
        Level {
            step_ms,
            capacity,
            points: VecDeque::with_capacity(capacity),
        }
    }

    fn push(&mut self, point: &Point) {
        // A step of 0 keeps every point; otherwise points in the same bucket merge.
        if let (Some(bucket), Some(last)) = (
            point.unix_ms.checked_div(self.step_ms),
            self.points.back_mut(),
        ) {
            if Some(bucket) == last.unix_ms.checked_div(self.step_ms) {
                last.merge(point);
                return;
            }
        }
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        let mut point = *point;
        if self.step_ms > 0 {
            point.unix_ms -= point.unix_ms % self.step_ms;
        }
        self.points.push_back(point);
    }

    fn span_ms(&self) -> u64 {
        match (self.points.front(), self.points.back()) {
            (Some(first), Some(last)) => last.unix_ms - first.unix_ms,
            _ => 0,
        }
    }
}

/// How far back [`SeriesStore::recent`] reaches: every reading of the last 10 minutes.
pub const RECENT_SPAN_MS: u64 = 600_000;
/// Most readings [`SeriesStore::recent`] keeps: 10 minutes at a 50 ms tick. Only a tick
/// shorter than that reaches the bound, and then the recent readings span less.
pub const RECENT_CAPACITY: usize = 12_000;

/// The series at three resolutions, and every reading of the last [`RECENT_SPAN_MS`].
#[derive(Debug, Clone)]
pub struct SeriesStore {
    levels: [Level; 3],
    recent: VecDeque<Point>,
}

impl Default for SeriesStore {
    fn default() -> Self {
        SeriesStore {
            levels: [
                Level::new(0, 600),
                Level::new(10_000, 720),
                Level::new(60_000, 1440),
            ],
            recent: VecDeque::new(),
        }
    }
}

impl SeriesStore {
    /// Adds one reading (in time order).
    pub fn push(&mut self, point: Point) {
        for level in &mut self.levels {
            level.push(&point);
        }
        while self.recent.len() >= RECENT_CAPACITY
            || self
                .recent
                .front()
                .is_some_and(|p| point.unix_ms.saturating_sub(p.unix_ms) > RECENT_SPAN_MS)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(point);
    }

    /// The points of the last `span_ms`, from the finest resolution that covers it (or the
    /// coarsest, if none does), oldest first.
    pub fn window(&self, span_ms: u64) -> Vec<Point> {
        let level = self
            .levels
            .iter()
            .find(|l| l.span_ms() >= span_ms || l.points.len() < l.capacity)
            .unwrap_or(&self.levels[2]);
        let Some(last) = level.points.back() else {
            return Vec::new();
        };
        let from = last.unix_ms.saturating_sub(span_ms);
        level
            .points
            .iter()
            .filter(|p| p.unix_ms >= from)
            .copied()
            .collect()
    }

    /// The readings of the last `span_ms` (at most [`RECENT_SPAN_MS`]) up to the newest,
    /// oldest first, one per push, however fast they came (up to [`RECENT_CAPACITY`]): what
    /// the working set's trend and a dump's series are read from.
    pub fn recent(&self, span_ms: u64) -> impl Iterator<Item = &Point> + '_ {
        let newest = self.recent.back().map_or(0, |p| p.unix_ms);
        self.recent
            .iter()
            .filter(move |p| newest.saturating_sub(p.unix_ms) <= span_ms)
    }

    /// Bytes the store takes at most: its three resolutions, and the recent readings at a
    /// 1 s tick (600; a faster tick keeps more, up to [`RECENT_CAPACITY`]).
    pub fn capacity_bytes(&self) -> usize {
        let recent_at_one_second = (RECENT_SPAN_MS / 1000) as usize;
        (self.levels.iter().map(|l| l.capacity).sum::<usize>() + recent_at_one_second)
            * std::mem::size_of::<Point>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_floor_and_peak_in_fixed_memory() {
        let mut store = SeriesStore::default();
        for second in 0..(3 * 3600u64) {
            let heap = if second % 100 == 50 {
                900
            } else {
                100 + second / 60
            };
            store.push(Point::reading(second * 1000, heap, Some(heap + 10), None));
        }
        // The tick level holds the last 600 ticks only.
        let recent = store.window(300_000);
        assert_eq!(recent.len(), 301);
        // Two hours come from the 10 s level, whose buckets keep the spikes' peaks and floors.
        let two_hours = store.window(2 * 3600 * 1000);
        assert!(two_hours.len() <= 721);
        assert!(two_hours.iter().any(|p| p.heap_max == 900));
        assert!(two_hours.iter().all(|p| p.heap_min < 900));
        // Beyond two hours: the minute level.
        let day = store.window(24 * 3600 * 1000);
        assert_eq!(day.len(), 180);
        assert!(store.capacity_bytes() < 360 * 1024);
        // The recent readings: every tick of the span, and no further back than 10 minutes.
        let recent: Vec<&Point> = store.recent(30_000).collect();
        assert_eq!(recent.len(), 31);
        assert_eq!(recent.last().unwrap().unix_ms, (3 * 3600 - 1) * 1000);
        assert_eq!(store.recent(3600 * 1000).count(), 601);
    }

    #[test]
    fn recent_readings_span_ten_minutes_whatever_the_tick_up_to_a_bound() {
        // A 100 ms tick: 10 minutes are 6,000 readings, far more than the tick level's 600.
        let mut store = SeriesStore::default();
        for tick in 0..8_000u64 {
            store.push(Point::reading(tick * 100, tick, None, None));
        }
        assert_eq!(store.recent(RECENT_SPAN_MS).count(), 6_001);
        assert_eq!(store.recent(30_000).count(), 301);
        // A 10 ms tick reaches the bound.
        let mut fast = SeriesStore::default();
        for tick in 0..20_000u64 {
            fast.push(Point::reading(tick * 10, tick, None, None));
        }
        assert_eq!(fast.recent(RECENT_SPAN_MS).count(), RECENT_CAPACITY);
        assert_eq!(fast.recent(RECENT_SPAN_MS).last().unwrap().heap_max, 19_999);
    }
}
