//! `heapwatch`: read dumps from a terminal — list them, show the top call sites, draw
//! flamegraphs and differential flamegraphs, chart the series, and name addresses offline.
//! Works on heapwatch's dumps and on any pprof heap profile (a Go program's too).

mod timeline;

use clap::{Parser, Subcommand};
use heapwatch::decode::{read_pprof_from, DecodeLimits, DEFAULT_DECODE_LIMIT};
use heapwatch::{Profile, SampleType};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Read heapwatch dumps and pprof heap profiles.
#[derive(Parser)]
#[command(name = "heapwatch", version, about, long_about = None)]
struct Cli {
    /// The most a profile may take uncompressed, and the most memory it may take decoded, e.g.
    /// 256MiB (default 64MiB, or HEAPWATCH_DECODE_LIMIT). A larger profile is refused with an
    /// error that says so: the bound that keeps a hostile file from exhausting memory.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    decode_limit: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

/// Where the decode limit can be set when the flag is not given.
const DECODE_LIMIT_VAR: &str = "HEAPWATCH_DECODE_LIMIT";

fn parse_size(text: &str) -> Result<u64, String> {
    heapwatch::watch::parse_bytes(text)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("{text:?} is not a size such as 64MiB or 1GiB"))
}

/// The decode limit: the flag's, else the environment's, else the default.
fn decode_limits(flag: Option<u64>) -> Result<DecodeLimits, String> {
    let bytes = match (flag, std::env::var(DECODE_LIMIT_VAR)) {
        (Some(bytes), _) => bytes,
        (None, Ok(text)) => parse_size(&text).map_err(|e| format!("{DECODE_LIMIT_VAR}: {e}"))?,
        (None, Err(_)) => DEFAULT_DECODE_LIMIT,
    };
    Ok(DecodeLimits::new(bytes))
}

#[derive(Subcommand)]
enum Command {
    /// List the dump sets in a directory: time, reason, usage against the limit, verdict, top
    /// site and top span (when allocations carried spans) — one line each, newest last.
    Ls {
        /// The dump directory.
        dir: PathBuf,
    },
    /// The top call sites of a profile, flat and cumulative, like `go tool pprof -top`.
    Top {
        /// A pprof heap profile (.pb.gz or .pb).
        file: PathBuf,
        /// How many rows.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        /// inuse_space, inuse_objects, alloc_space or alloc_objects.
        #[arg(long, default_value = "inuse_space")]
        sample: SampleType,
    },
    /// A flamegraph SVG of any pprof heap profile.
    Flamegraph {
        /// A pprof heap profile.
        file: PathBuf,
        /// Where to write the SVG.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// inuse_space, inuse_objects, alloc_space or alloc_objects.
        #[arg(long, default_value = "inuse_space")]
        sample: SampleType,
        /// Root each stack at the tracing span it was allocated in (`heapwatch::SpanLayer`).
        #[arg(long)]
        by_span: bool,
    },
    /// A differential flamegraph of NEW against BASE, and the top growers in text. Each
    /// profile may take half the decode limit.
    Diff {
        /// The earlier profile.
        base: PathBuf,
        /// The later profile.
        new: PathBuf,
        /// Where to write the SVG.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// inuse_space, inuse_objects, alloc_space or alloc_objects.
        #[arg(long, default_value = "inuse_space")]
        sample: SampleType,
        /// How many growers to list.
        #[arg(short = 'n', long, default_value_t = 10)]
        n: usize,
    },
    /// A chart of the series in a directory's dump summaries: heap, working set and limit over
    /// time, with the dumps marked.
    Timeline {
        /// The dump directory.
        dir: PathBuf,
        /// Where to write the SVG.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Name a profile written without names (a stripped binary, another machine, a dump
    /// written near the limit before naming): inlined frames, files and lines from DWARF where
    /// found, else the symbol table. Given a dump set's summary (`heapwatch-….json`), names
    /// the whole set in place: profile, flamegraph and the summary's top sites.
    Symbolize {
        /// A pprof heap profile, or a dump set's `.json` summary.
        file: PathBuf,
        /// The binary that wrote it (same build: matched by build id), an unstripped copy, or
        /// its separate debug file; a debug file it links to (`.gnu_debuglink`, or by build id
        /// under /usr/lib/debug and `HEAPWATCH_DEBUG_PATH`) is used too.
        #[arg(long)]
        binary: PathBuf,
        /// Where to write the named profile (default: FILE with `.symbolized.pb.gz`); not
        /// for a set, which is named in place.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match decode_limits(cli.decode_limit).and_then(|limits| run(cli.command, &limits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // One line, whatever went wrong.
            let _ = writeln!(
                std::io::stderr(),
                "heapwatch: error: {}",
                message.replace('\n', " ")
            );
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, limits: &DecodeLimits) -> Result<(), String> {
    match command {
        Command::Ls { dir } => ls(&dir),
        Command::Top { file, n, sample } => top(&file, n, sample, limits),
        Command::Flamegraph {
            file,
            output,
            sample,
            by_span,
        } => {
            let mut profile = load_with_samples(&file, sample, limits)?;
            if by_span {
                profile = heapwatch::spans::rooted_at_spans(&profile);
            }
            write_file(&output, |out| {
                heapwatch::encode::write_flamegraph(&profile, sample, &title(&file), out)
            })?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Diff {
            base,
            new,
            output,
            sample,
            n,
        } => diff(&base, &new, &output, sample, n, limits),
        Command::Timeline { dir, output } => {
            let chart = timeline::render(&dir)?;
            std::fs::write(&output, chart)
                .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Symbolize {
            file,
            binary,
            output,
        } => {
            if let Some(set) = dump_set_of_summary(&file) {
                if output.is_some() {
                    return Err(format!(
                        "{}: a dump set is named in place; --output is for a .pb.gz",
                        file.display()
                    ));
                }
                let named =
                    heapwatch::watch::symbolize_set(&set, &binary, limits.max_decoded_bytes)
                        .map_err(|e| e.to_string())?;
                println!(
                    "named {named} locations; rewrote {}, {} and {}",
                    set.profile().display(),
                    set.flamegraph().display(),
                    set.summary().display()
                );
                return Ok(());
            }
            let mut profile = load(&file, limits)?;
            // The names it adds are bounded like the profile itself: a hostile profile of many
            // locations in one function would otherwise be named into gigabytes.
            let named = heapwatch::symbolize_with_binary_within(
                &mut profile,
                &binary,
                limits.max_decoded_bytes,
            )
            .map_err(|e| match e {
                e @ heapwatch::SymbolizeError::TooManyNames { .. } => format!(
                    "{}: {e}; raise the limit with --decode-limit SIZE or {DECODE_LIMIT_VAR}",
                    file.display()
                ),
                e => e.to_string(),
            })?;
            let output = output.unwrap_or_else(|| {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let stem = name.trim_end_matches(".gz").trim_end_matches(".pb");
                file.with_file_name(format!("{stem}.symbolized.pb.gz"))
            });
            write_file(&output, |out| heapwatch::encode::write_pprof(&profile, out))?;
            println!("named {named} locations; wrote {}", output.display());
            Ok(())
        }
    }
}

/// The dump set whose summary `file` is (`heapwatch-….json`), if it is one.
fn dump_set_of_summary(file: &Path) -> Option<heapwatch::watch::DumpSet> {
    let name = file.file_name()?.to_str()?;
    let stem = name.strip_suffix(".json")?;
    stem.starts_with(heapwatch::watch::DUMP_PREFIX)
        .then(|| heapwatch::watch::DumpSet {
            dir: file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            stem: stem.to_owned(),
        })
}

/// Reads a profile within `limits`, inflating as it reads: a hostile file is refused before it
/// takes more memory than the limits allow.
fn load(file: &Path, limits: &DecodeLimits) -> Result<Profile, String> {
    let cannot_read = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", file.display());
    let reader = std::fs::File::open(file).map_err(|e| cannot_read(&e))?;
    read_pprof_from(reader, limits).map_err(|e| match e {
        heapwatch::decode::DecodeError::Read(e) => cannot_read(&e),
        e if e.is_limit() => format!(
            "{}: {e}; raise the limit with --decode-limit SIZE or {DECODE_LIMIT_VAR}",
            file.display()
        ),
        e => format!("{}: {e}", file.display()),
    })
}

/// Loads a profile that must have some `sample` values.
fn load_with_samples(
    file: &Path,
    sample: SampleType,
    limits: &DecodeLimits,
) -> Result<Profile, String> {
    let profile = load(file, limits)?;
    if profile.samples.iter().all(|s| s.value(sample) == 0) {
        return Err(format!(
            "{}: the profile has no {} samples",
            file.display(),
            sample.name()
        ));
    }
    Ok(profile)
}

fn write_file(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), String> {
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn title(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A value as `go tool pprof` prints it: bytes in B/kB/MB/GB (powers of 1024), counts bare.
fn format_value(value: i64, sample: SampleType) -> String {
    if sample.unit() != "bytes" {
        return value.to_string();
    }
    let v = value as f64;
    let abs = v.abs();
    if abs >= (1u64 << 30) as f64 {
        format!("{:.2}GB", v / (1u64 << 30) as f64)
    } else if abs >= (1 << 20) as f64 {
        format!("{:.2}MB", v / (1 << 20) as f64)
    } else if abs >= 1024.0 {
        format!("{:.2}kB", v / 1024.0)
    } else {
        format!("{value}B")
    }
}

fn top(file: &Path, n: usize, sample: SampleType, limits: &DecodeLimits) -> Result<(), String> {
    let profile = load_with_samples(file, sample, limits)?;
    let total = profile.total(sample);
    let rows = profile.top_functions(sample);
    let pct = |v: i64| {
        if total == 0 {
            0.0
        } else {
            100.0 * v as f64 / total as f64
        }
    };
    println!("Type: {}", sample.name());
    println!(
        "Showing top {} of {} functions, {} total",
        n.min(rows.len()),
        rows.len(),
        format_value(total, sample)
    );
    println!(
        "{:>10} {:>6} {:>6} {:>10} {:>6}  function",
        "flat", "flat%", "sum%", "cum", "cum%"
    );
    let mut sum = 0;
    for row in rows.iter().take(n) {
        sum += row.flat;
        println!(
            "{:>10} {:>5.2}% {:>5.2}% {:>10} {:>5.2}%  {}",
            format_value(row.flat, sample),
            pct(row.flat),
            pct(sum),
            format_value(row.cum, sample),
            pct(row.cum),
            row.function
        );
    }
    Ok(())
}

fn diff(
    base: &Path,
    new: &Path,
    output: &Path,
    sample: SampleType,
    n: usize,
    limits: &DecodeLimits,
) -> Result<(), String> {
    // Two profiles are held at once, and their stacks are copied as text several times over
    // (inferno's differential keeps both sides, then writes the result): each profile gets
    // half the decoded limit, so a diff stays within what `top` or `flamegraph` take.
    let each = DecodeLimits {
        max_decoded_bytes: limits.max_decoded_bytes / 2,
        ..*limits
    };
    let half = |e: String| format!("{e} (diff gives each profile half the limit)");
    let before = load(base, &each).map_err(half)?;
    let after = load(new, &each).map_err(half)?;
    if before.samples.is_empty() && after.samples.is_empty() {
        return Err("both profiles have no samples".to_owned());
    }
    // What grew, and the totals, before the profiles make way for their folded text.
    let growers = after.growth_since(&before, sample, None);
    let totals = (before.total(sample), after.total(sample));
    // Each profile as folded text, the profile freed as soon as its text is made.
    let before_text = heapwatch::encode::folded_text(&before, sample);
    drop(before);
    let after_text = heapwatch::encode::folded_text(&after, sample);
    drop(after);
    let options = heapwatch::encode::DiffFlamegraphOptions {
        title: format!("{} → {} ({})", title(base), title(new), sample.name()),
        subtitle: "red grew, blue shrank; widths are the new profile".to_owned(),
        count_name: sample.unit().to_owned(),
        empty_after_note: None,
    };
    write_file(output, |out| {
        heapwatch::encode::write_diff_flamegraph(before_text, after_text, &options, out)
    })?;

    println!(
        "{}: {} → {}",
        sample.name(),
        format_value(totals.0, sample),
        format_value(totals.1, sample)
    );
    println!("{:>10} {:>10}  function (top growers)", "grew", "now");
    for grower in growers.iter().take(n) {
        println!(
            "{:>10} {:>10}  {}",
            format!("+{}", format_value(grower.grown, sample)),
            format_value(grower.now, sample),
            grower.function
        );
    }
    println!("wrote {}", output.display());
    Ok(())
}

fn ls(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let sets = heapwatch::watch::list_sets(dir);
    if sets.is_empty() {
        println!("no dump sets in {}", dir.display());
        return Ok(());
    }
    for set in sets {
        match heapwatch::watch::read_summary(&set) {
            Ok(s) => {
                let usage = match (s.working_set_bytes, s.limit_bytes) {
                    (Some(ws), Some(limit)) if limit > 0 => format!(
                        "{} of {} ({:.0}%)",
                        format_value(ws as i64, SampleType::InuseSpace),
                        format_value(limit as i64, SampleType::InuseSpace),
                        100.0 * ws as f64 / limit as f64
                    ),
                    (Some(ws), _) => format!(
                        "{} (no limit)",
                        format_value(ws as i64, SampleType::InuseSpace)
                    ),
                    _ => "usage unknown".to_owned(),
                };
                let verdict = s.verdict.as_ref().map_or("-", |v| v.kind.name());
                let top = s.top_sites.first().map_or("-".to_owned(), |t| {
                    format!(
                        "{} ({})",
                        t.function,
                        format_value(t.inuse_bytes, SampleType::InuseSpace)
                    )
                });
                let span = s.top_spans.first().map_or(String::new(), |t| {
                    format!(
                        "  span {} ({})",
                        t.span,
                        format_value(t.inuse_bytes, SampleType::InuseSpace)
                    )
                });
                // A set written near the limit before naming: say so, and how to name it.
                let unnamed = if s.named {
                    ""
                } else {
                    "  (not named yet: heapwatch symbolize SET.json --binary PROGRAM)"
                };
                println!(
                    "{}  {:<10} {:<28} verdict {:<13} top {}{span}{unnamed}  [{}]",
                    s.time, s.reason, usage, verdict, top, set.stem
                );
            }
            Err(e) => println!("?  unreadable summary ({e})  [{}]", set.stem),
        }
    }
    Ok(())
}
