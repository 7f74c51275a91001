//! The watch's settings: a builder in code, overridden by `HEAPWATCH_*` environment variables
//! as operators set them in a pod spec. A malformed variable is reported once, by name, through
//! `tracing`, and the builder's value stands.

use std::path::PathBuf;
use std::time::Duration;

/// Default dump directory.
pub const DEFAULT_DIR: &str = "heapwatch-dumps";
/// Default thresholds, as fractions of the memory limit.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.80, 0.90, 0.95];
/// Default tick of the watch thread.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Default number of dump sets kept in the directory.
pub const DEFAULT_KEEP: usize = 5;
/// Default horizon of the time-to-limit trigger.
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(60);
/// Default permission bits of dump files: owner only, since a heap profile names the service's
/// code and a summary its memory figures. A directory heapwatch creates gets the same bits plus
/// search (`x`) wherever read is granted (0600 → 0700).
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// Limits at or below this are small containers: there [`DumpNaming::Auto`] keeps the
/// symbolizer's tables out of the process (they can take tens of MiB for a large binary) and
/// leaves naming to the next instance.
pub const SMALL_LIMIT_BYTES: u64 = 64 << 20;

/// Who names the dumps written near the limit (`HEAPWATCH_NAMING`). Every dump near the
/// limit is written first without loading anything (addresses, build ids, the names already
/// cached); this says who completes the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DumpNaming {
    /// `in-process` above [`SMALL_LIMIT_BYTES`] (or without a limit), `next-instance` at or
    /// below it.
    #[default]
    Auto,
    /// The watch loads symbol and line tables while memory is ample, names new stacks as they
    /// appear, and names a set written near the limit once the pressure has passed; other
    /// dumps are named at once when there is headroom.
    InProcess,
    /// The process never loads symbol tables for its dumps: every set is written unnamed, and
    /// the next instance of the same program names it at start-up (then gives the tables'
    /// memory back). Pages asked for over HTTP are still named.
    NextInstance,
}

impl DumpNaming {
    /// Parses `auto`, `in-process` or `next-instance`.
    ///
    /// ```
    /// use heapwatch::watch::DumpNaming;
    /// assert_eq!(DumpNaming::parse("next-instance"), Some(DumpNaming::NextInstance));
    /// assert_eq!(DumpNaming::parse("sometimes"), None);
    /// ```
    pub fn parse(text: &str) -> Option<DumpNaming> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Some(DumpNaming::Auto),
            "in-process" => Some(DumpNaming::InProcess),
            "next-instance" => Some(DumpNaming::NextInstance),
            _ => None,
        }
    }

    /// What `Auto` means under `limit`: `InProcess` or `NextInstance`.
    pub fn resolve(self, limit: Option<u64>) -> DumpNaming {
        match self {
            DumpNaming::Auto if limit.is_some_and(|l| l <= SMALL_LIMIT_BYTES) => {
                DumpNaming::NextInstance
            }
            DumpNaming::Auto => DumpNaming::InProcess,
            chosen => chosen,
        }
    }
}

/// Everything the watch thread runs with, after the environment has had its say.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// `false` when `HEAPWATCH=off`: no thread is started.
    pub enabled: bool,
    /// Where dump sets go.
    pub dir: PathBuf,
    /// A memory limit in bytes standing in for the cgroup's where there is none.
    pub limit: Option<u64>,
    /// Fractions of the limit that each trigger a dump once per climb, ascending.
    pub thresholds: Vec<f64>,
    /// How far usage must fall below a threshold before it can fire again (fraction of the
    /// limit).
    pub hysteresis: f64,
    /// How often the heap and the cgroup are read.
    pub tick: Duration,
    /// The sampling rate to set at start, if any.
    pub sample_rate: Option<u64>,
    /// Dump sets kept in the directory; older ones are removed.
    pub keep: usize,
    /// Permission bits of the dump files (within `0o666`, always including `0o600`); see
    /// [`DEFAULT_FILE_MODE`]. The process's umask can still narrow them.
    pub file_mode: u32,
    /// Dump when the trend predicts the limit within this time.
    pub horizon: Duration,
    /// How far back the trend looks.
    pub trend_window: Duration,
    /// Shortest time between two dumps (a higher threshold than the last dump's is exempt).
    pub min_interval: Duration,
    /// Bytes held in reserve and released just before a dump, for headroom (0: none).
    pub reserve_bytes: usize,
    /// Dump on SIGUSR1.
    pub on_sigusr1: bool,
    /// Read this cgroup directory instead of discovering the process's own (tests).
    pub cgroup: Option<crate::memory::Cgroup>,
    /// The leak detector's settings.
    pub detector: crate::detect::DetectorConfig,
    /// How often a profile snapshot is kept for the leak suspects.
    pub suspect_interval: Duration,
    /// How long after start the baseline for the differential flamegraph is taken.
    pub warmup: Duration,
    /// Who names the dumps written near the limit.
    pub naming: DumpNaming,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: true,
            dir: PathBuf::from(DEFAULT_DIR),
            limit: None,
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            hysteresis: 0.05,
            tick: DEFAULT_TICK,
            sample_rate: None,
            keep: DEFAULT_KEEP,
            file_mode: DEFAULT_FILE_MODE,
            horizon: DEFAULT_HORIZON,
            trend_window: Duration::from_secs(30),
            min_interval: Duration::from_secs(5),
            reserve_bytes: 0,
            on_sigusr1: false,
            cgroup: None,
            detector: crate::detect::DetectorConfig::default(),
            suspect_interval: Duration::from_secs(60),
            warmup: Duration::from_secs(60),
            naming: DumpNaming::Auto,
        }
    }
}

impl WatchConfig {
    /// Applies the `HEAPWATCH_*` variables read through `var` (the process environment in
    /// production, a map in tests). Returns the names of malformed variables, each already
    /// reported through `tracing`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
        let mut malformed = Vec::new();
        let mut take = |name: &'static str, apply: &mut dyn FnMut(&str) -> bool| {
            if let Some(value) = var(name) {
                if !apply(value.trim()) {
                    tracing::warn!(
                        variable = name,
                        value = %value,
                        "heapwatch: malformed {name}={value:?}; keeping the configured value"
                    );
                    malformed.push(name);
                }
            }
        };
        take(
            "HEAPWATCH",
            &mut |v| match v.to_ascii_lowercase().as_str() {
                "off" | "0" | "false" | "no" => {
                    self.enabled = false;
                    true
                }
                "on" | "1" | "true" | "yes" | "" => true,
                _ => false,
            },
        );
        take("HEAPWATCH_NAMING", &mut |v| {
            DumpNaming::parse(v).map(|n| self.naming = n).is_some()
        });
        take("HEAPWATCH_DIR", &mut |v| {
            !v.is_empty() && {
                self.dir = PathBuf::from(v);
                true
            }
        });
        take("HEAPWATCH_LIMIT", &mut |v| {
            parse_bytes(v)
                .filter(|&b| b > 0)
                .map(|b| self.limit = Some(b))
                .is_some()
        });
        take("HEAPWATCH_THRESHOLDS", &mut |v| {
            parse_thresholds(v).map(|t| self.thresholds = t).is_some()
        });
        take("HEAPWATCH_TICK", &mut |v| {
            parse_duration(v)
                .filter(|d| *d >= Duration::from_millis(10))
                .map(|d| self.tick = d)
                .is_some()
        });
        take("HEAPWATCH_SAMPLE_RATE", &mut |v| {
            parse_bytes(v).map(|b| self.sample_rate = Some(b)).is_some()
        });
        take("HEAPWATCH_KEEP", &mut |v| {
            v.parse::<usize>()
                .ok()
                .filter(|&k| k > 0)
                .map(|k| self.keep = k)
                .is_some()
        });
        take("HEAPWATCH_HORIZON", &mut |v| {
            parse_duration(v).map(|d| self.horizon = d).is_some()
        });
        take("HEAPWATCH_FILE_MODE", &mut |v| {
            parse_file_mode(v).map(|m| self.file_mode = m).is_some()
        });
        malformed
    }
}

/// Parses a byte size: a plain number of bytes, or a number with a unit — binary `KiB`, `MiB`,
/// `GiB`, `TiB` (or Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`), decimal `KB`/`K`, `MB`/`M`, `GB`/`G`,
/// `TB`/`T`. Case of the unit is ignored; fractions are allowed (`1.5GiB`).
///
/// ```
/// assert_eq!(heapwatch::watch::parse_bytes("512MiB"), Some(512 << 20));
/// assert_eq!(heapwatch::watch::parse_bytes("2Gi"), Some(2 << 30));
/// assert_eq!(heapwatch::watch::parse_bytes("1.5K"), Some(1500));
/// assert_eq!(heapwatch::watch::parse_bytes("lots"), None);
/// ```
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * multiplier;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// Parses the permission bits of dump files, in octal (`0600`, `640`, `0o640`). Accepted: read
/// and write bits only (no execute, setuid or sticky bits), and always the owner's read and write,
/// which the watch needs to read its own sets back.
///
/// ```
/// assert_eq!(heapwatch::watch::parse_file_mode("0640"), Some(0o640));
/// assert_eq!(heapwatch::watch::parse_file_mode("0755"), None);
/// assert_eq!(heapwatch::watch::parse_file_mode("0400"), None);
/// ```
pub fn parse_file_mode(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode & !0o666 == 0 && mode & 0o600 == 0o600).then_some(mode)
}

/// Parses a duration such as `1s`, `500ms`, `2m`, `1h 30m` (humantime's syntax).
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Parses thresholds: comma-separated fractions in (0, 1] (`0.8,0.9,0.95`) or percentages
/// (`80%,90%`); returned sorted and deduplicated.
pub fn parse_thresholds(text: &str) -> Option<Vec<f64>> {
    let mut thresholds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let value = match part.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().ok()? / 100.0,
            None => part.parse::<f64>().ok()?,
        };
        if !(value > 0.0 && value <= 1.0) {
            return None;
        }
        thresholds.push(value);
    }
    if thresholds.is_empty() {
        return None;
    }
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    Some(thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn apply(vars: &[(&str, &str)]) -> (WatchConfig, Vec<&'static str>) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut config = WatchConfig {
            tick: Duration::from_millis(700),
            ..WatchConfig::default()
        };
        let malformed = config.apply_env(|name| vars.get(name).cloned());
        (config, malformed)
    }

    #[test]
    fn variables_override_the_builder() {
        let (config, malformed) = apply(&[
            ("HEAPWATCH_DIR", "/dumps"),
            ("HEAPWATCH_LIMIT", "512MiB"),
            ("HEAPWATCH_THRESHOLDS", "0.9, 0.8,95%"),
            ("HEAPWATCH_TICK", "250ms"),
            ("HEAPWATCH_SAMPLE_RATE", "65536"),
            ("HEAPWATCH_KEEP", "3"),
            ("HEAPWATCH_HORIZON", "2m"),
            ("HEAPWATCH_FILE_MODE", "0640"),
        ]);
        assert!(malformed.is_empty());
        assert!(config.enabled);
        assert_eq!(config.dir, PathBuf::from("/dumps"));
        assert_eq!(config.limit, Some(512 << 20));
        assert_eq!(config.thresholds, vec![0.8, 0.9, 0.95]);
        assert_eq!(config.tick, Duration::from_millis(250));
        assert_eq!(config.sample_rate, Some(65536));
        assert_eq!(config.keep, 3);
        assert_eq!(config.horizon, Duration::from_secs(120));
        assert_eq!(config.file_mode, 0o640);
    }

    #[test]
    fn malformed_values_are_named_and_the_configured_value_stands() {
        let (config, malformed) = apply(&[
            ("HEAPWATCH", "maybe"),
            ("HEAPWATCH_LIMIT", "a lot"),
            ("HEAPWATCH_THRESHOLDS", "0.8,1.5"),
            ("HEAPWATCH_TICK", "soon"),
            ("HEAPWATCH_SAMPLE_RATE", "-1"),
            ("HEAPWATCH_KEEP", "0"),
            ("HEAPWATCH_DIR", ""),
            ("HEAPWATCH_FILE_MODE", "0777"),
        ]);
        assert_eq!(
            malformed,
            vec![
                "HEAPWATCH",
                "HEAPWATCH_DIR",
                "HEAPWATCH_LIMIT",
                "HEAPWATCH_THRESHOLDS",
                "HEAPWATCH_TICK",
                "HEAPWATCH_SAMPLE_RATE",
                "HEAPWATCH_KEEP",
                "HEAPWATCH_FILE_MODE"
            ]
        );
        let defaults = WatchConfig::default();
        assert!(config.enabled);
        assert_eq!(config.dir, defaults.dir);
        assert_eq!(config.limit, None);
        assert_eq!(config.thresholds, defaults.thresholds);
        assert_eq!(
            config.tick,
            Duration::from_millis(700),
            "the builder's tick stands"
        );
        assert_eq!(config.sample_rate, None);
        assert_eq!(config.keep, defaults.keep);
        assert_eq!(config.file_mode, DEFAULT_FILE_MODE);
    }

    #[test]
    fn naming_from_the_environment_and_what_auto_means() {
        for (value, expected) in [
            ("auto", DumpNaming::Auto),
            ("in-process", DumpNaming::InProcess),
            ("Next-Instance", DumpNaming::NextInstance),
        ] {
            let (config, malformed) = apply(&[("HEAPWATCH_NAMING", value)]);
            assert!(malformed.is_empty(), "{value}");
            assert_eq!(config.naming, expected, "{value}");
        }
        let (config, malformed) = apply(&[("HEAPWATCH_NAMING", "later")]);
        assert_eq!(malformed, ["HEAPWATCH_NAMING"]);
        assert_eq!(
            config.naming,
            DumpNaming::Auto,
            "the configured value stands"
        );
        let auto = DumpNaming::Auto;
        assert_eq!(
            auto.resolve(Some(SMALL_LIMIT_BYTES)),
            DumpNaming::NextInstance
        );
        assert_eq!(
            auto.resolve(Some(SMALL_LIMIT_BYTES + 1)),
            DumpNaming::InProcess
        );
        assert_eq!(auto.resolve(None), DumpNaming::InProcess);
        let chosen = DumpNaming::InProcess;
        assert_eq!(chosen.resolve(Some(1 << 20)), DumpNaming::InProcess);
    }

    #[test]
    fn file_modes() {
        assert_eq!(parse_file_mode("600"), Some(0o600));
        assert_eq!(parse_file_mode("0o644"), Some(0o644));
        assert_eq!(parse_file_mode(" 0660 "), Some(0o660));
        for bad in ["", "0o", "rw", "0700", "4600", "0200", "0066", "06000", "9"] {
            assert_eq!(parse_file_mode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn off_switch() {
        for value in ["off", "OFF", "0", "false"] {
            assert!(!apply(&[("HEAPWATCH", value)]).0.enabled, "{value}");
        }
        assert!(apply(&[("HEAPWATCH", "on")]).0.enabled);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1gib"), Some(1 << 30));
        assert_eq!(parse_bytes("2G"), Some(2_000_000_000));
        assert_eq!(parse_bytes("0.5KiB"), Some(512));
        for bad in ["", "MiB", "12XB", "-5MiB", "1e400", "NaN", "1.2.3M"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(parse_thresholds("80%,90%"), Some(vec![0.8, 0.9]));
        assert_eq!(parse_thresholds("1"), Some(vec![1.0]));
        assert_eq!(parse_thresholds("0.9,0.9"), Some(vec![0.9]));
        for bad in ["", ",", "0", "0.8,x", "120%", "-0.5"] {
            assert_eq!(parse_thresholds(bad), None, "{bad:?}");
        }
    }
}
