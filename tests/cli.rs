//! The `heapwatch` command on real dumps: the demo's profile and a heap profile written by a
//! real Go program (foreign input) — `top` agrees with `go tool pprof -top`; `flamegraph`,
//! `diff` and `timeline` write well-formed SVGs naming what they should (the timeline rendered
//! by headless Chromium); `ls` lists the sets; `symbolize` names a profile stripped of names;
//! corrupt inputs give a one-line error and a non-zero exit, never a panic.
//!
//! Frame-pointer pass: not needed — the CLI reads profiles written by either walk through the same decoder and symbolizer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

const CLI: &str = env!("CARGO_BIN_EXE_heapwatch");

fn heapwatch(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .output()
        .expect("run heapwatch")
}

/// Runs `heapwatch args… -o svg`, which must succeed; returns its standard output and the SVG's
/// text, checked to be well-formed XML.
fn heapwatch_svg(args: &[&str], svg: &Path) -> (String, String) {
    let out = heapwatch(&[args, &["-o", svg.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(svg).unwrap();
    roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("well-formed SVG");
    (String::from_utf8_lossy(&out.stdout).into_owned(), text)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapwatch-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Parses `go tool pprof -top`'s and our rows alike: (function, flat bytes).
fn parse_rows(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flat = parse_bytes(fields.first()?)?;
            Some((fields.get(5..)?.join(" "), flat))
        })
        .collect()
}

fn parse_bytes(text: &str) -> Option<f64> {
    let units = [
        ("GB", 1u64 << 30),
        ("MB", 1 << 20),
        ("kB", 1 << 10),
        ("B", 1),
    ];
    units.iter().find_map(|(unit, scale)| {
        Some(text.strip_suffix(unit)?.parse::<f64>().ok()? * *scale as f64)
    })
}

fn go_top(profile: &Path) -> Vec<(String, f64)> {
    let output = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-nodefraction=0",
            "-sample_index=inuse_space",
        ])
        .arg(profile)
        .output()
        .expect("go tool pprof (Debian package golang-go) is required");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_rows(&String::from_utf8_lossy(&output.stdout))
}

/// Our rows and go's agree: the same functions with a non-zero flat value, in the same order,
/// with totals within rounding (two decimals of the unit).
fn assert_same_top(ours: &[(String, f64)], go: &[(String, f64)]) {
    let nonzero = |rows: &[(String, f64)]| -> Vec<(String, f64)> {
        rows.iter().filter(|(_, v)| *v > 0.0).cloned().collect()
    };
    let (ours, go) = (nonzero(ours), nonzero(go));
    let names = |rows: &[(String, f64)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&go), "same functions, same order");
    for ((name, a), (_, b)) in ours.iter().zip(&go) {
        assert!(
            (a - b).abs() <= 0.006 * a.max(*b) + 1.0,
            "{name}: ours {a}, go {b}"
        );
    }
}

fn demo_profile() -> PathBuf {
    let dir = scratch("demo");
    let run = Command::new(common::example_binary("demo"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(run.status.success());
    dir.join("heap.pb.gz")
}

/// A heap profile written by a real Go program, with known allocation sites.
fn go_profile() -> PathBuf {
    let dir = scratch("go");
    std::fs::write(
        dir.join("main.go"),
        r#"package main

import (
	"os"
	"runtime"
	"runtime/pprof"
)

var keep [][]byte

//go:noinline
func holdBuffers() {
	for i := 0; i < 64; i++ {
		keep = append(keep, make([]byte, 256<<10))
	}
}

//go:noinline
func holdRecords() {
	for i := 0; i < 20000; i++ {
		keep = append(keep, make([]byte, 512))
	}
}

func main() {
	runtime.MemProfileRate = 4096
	holdBuffers()
	holdRecords()
	runtime.GC()
	f, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		panic(err)
	}
	f.Close()
}
"#,
    )
    .unwrap();
    let out = dir.join("go-heap.pb.gz");
    let run = Command::new("go")
        .arg("run")
        .arg(dir.join("main.go"))
        .arg(&out)
        .env("GOCACHE", dir.join("cache"))
        .env("GO111MODULE", "off")
        .env("HOME", &dir)
        .output()
        .expect("go (Debian package golang-go) is required");
    assert!(
        run.status.success(),
        "go run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[test]
fn top_matches_go_tool_pprof_on_our_profile_and_on_go_s() {
    for profile in [demo_profile(), go_profile()] {
        let ours = heapwatch(&["top", profile.to_str().unwrap(), "-n", "1000"]);
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let ours_rows = parse_rows(&String::from_utf8_lossy(&ours.stdout));
        let go_rows = go_top(&profile);
        println!(
            "{}: ours {:?}\n go {:?}",
            profile.display(),
            &ours_rows[..3.min(ours_rows.len())],
            &go_rows[..3.min(go_rows.len())]
        );
        assert_same_top(&ours_rows, &go_rows);
        assert!(ours_rows.len() >= 2);
        for sample in ["inuse_objects", "alloc_space", "alloc_objects"] {
            let out = heapwatch(&["top", profile.to_str().unwrap(), "--sample", sample]);
            assert!(out.status.success(), "{sample}");
        }
    }
}

#[test]
fn flamegraph_of_a_go_profile_and_of_ours() {
    let dir = scratch("flame");
    for (profile, expected) in [
        (go_profile(), ["main.holdBuffers", "main.holdRecords"]),
        (demo_profile(), ["demo::cache_pages", "demo::parse_records"]),
    ] {
        let svg = dir.join("out.svg");
        let (_, text) = heapwatch_svg(&["flamegraph", profile.to_str().unwrap()], &svg);
        for name in expected {
            assert!(
                text.contains(name),
                "{name} not in the flamegraph of {}",
                profile.display()
            );
        }
    }
}

/// `flamegraph --by-span` roots each stack at its span's frame, read from the pprof labels.
#[test]
fn flamegraph_by_span_roots_stacks_at_their_span() {
    use heapwatch::{Line, Location, Profile, Sample};
    let dir = scratch("flame-by-span");
    let sample = |location: usize, bytes: i64, route: &str| Sample {
        locations: vec![location],
        values: [1, bytes, 1, bytes],
        labels: vec![
            ("span".to_owned(), "request".to_owned()),
            ("route".to_owned(), route.to_owned()),
        ],
    };
    let location = |name: &str| Location {
        lines: vec![Line {
            function: name.into(),
            ..Line::default()
        }],
        ..Location::default()
    };
    let profile = Profile {
        locations: vec![location("app::export"), location("app::import")],
        samples: vec![sample(0, 4096, "/export"), sample(1, 1024, "/import")],
        ..Profile::default()
    };
    let file = dir.join("spans.pb.gz");
    heapwatch::encode::write_pprof(&profile, std::fs::File::create(&file).unwrap()).unwrap();
    let svg = dir.join("out.svg");
    let (_, text) = heapwatch_svg(&["flamegraph", "--by-span", file.to_str().unwrap()], &svg);
    for root in [
        "span: request{route=/export}",
        "span: request{route=/import}",
    ] {
        assert!(text.contains(root), "{root} not in the flamegraph by span");
    }
    let (_, plain) = heapwatch_svg(&["flamegraph", file.to_str().unwrap()], &svg);
    assert!(!plain.contains("span: "), "without --by-span no span frame");
}

#[test]
fn diff_names_the_grower() {
    let dir = scratch("diff");
    let base = demo_profile();
    // The "new" profile: the demo's, with one site grown fivefold.
    let mut grown = heapwatch::decode::read_pprof(&std::fs::read(&base).unwrap()).unwrap();
    for sample in &mut grown.samples {
        let leaf = &grown.locations[sample.locations[0]];
        if leaf
            .lines
            .iter()
            .any(|l| l.function.contains("parse_records"))
        {
            for v in &mut sample.values {
                *v *= 5;
            }
        }
    }
    let new = dir.join("new.pb.gz");
    heapwatch::encode::write_pprof(&grown, std::fs::File::create(&new).unwrap()).unwrap();
    let svg = dir.join("diff.svg");
    let (text, svg_text) = heapwatch_svg(
        &["diff", base.to_str().unwrap(), new.to_str().unwrap()],
        &svg,
    );
    let first_grower = text
        .lines()
        .skip_while(|l| !l.contains("top growers"))
        .nth(1)
        .unwrap_or_default();
    assert!(first_grower.ends_with("demo::parse_records"), "{text}");
    assert!(svg_text.contains("parse_records"));
}

#[test]
fn ls_and_timeline_on_real_dump_sets() {
    let dir = scratch("timeline");
    let dumps = dir.join("dumps");
    let run = Command::new(common::example_binary("leaky_service"))
        .args(["--seconds", "3"])
        .env("HEAPWATCH_DIR", &dumps)
        .env("HEAPWATCH_LIMIT", "96MiB")
        .env("HEAPWATCH_TICK", "100ms")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sets = heapwatch::watch::list_sets(&dumps);
    assert!(sets.len() >= 2, "leaky_service wrote {} sets", sets.len());

    let out = heapwatch(&["ls", dumps.to_str().unwrap()]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    println!("{listing}");
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), sets.len());
    assert!(
        lines.last().unwrap().contains(&sets.last().unwrap().stem),
        "newest last"
    );
    assert!(listing.contains("threshold") && listing.contains("of 96.00MB"));

    let svg = dir.join("timeline.svg");
    let (_, text) = heapwatch_svg(&["timeline", dumps.to_str().unwrap()], &svg);
    for expected in ["live heap", "working set", "limit", "threshold"] {
        assert!(text.contains(expected), "{expected} not in the timeline");
    }
    screenshot_is_not_blank(&svg, &dir);
}

fn screenshot_is_not_blank(svg: &Path, dir: &Path) {
    let shot = common::chromium_screenshot(
        &format!("file://{}", svg.display()),
        "1000,420",
        dir,
        "timeline.png",
    );
    let coloured = shot
        .rgb
        .iter()
        .filter(|px| {
            let [r, g, b] = px.map(i32::from);
            (r - g).abs() > 60 || (g - b).abs() > 60 || (r - b).abs() > 60
        })
        .count();
    println!("timeline screenshot: {coloured} coloured pixels");
    assert!(
        coloured > 500,
        "the timeline screenshot shows no coloured lines"
    );
}

#[test]
fn symbolize_names_a_stripped_profile() {
    let profile = demo_profile();
    let mut stripped = heapwatch::decode::read_pprof(&std::fs::read(&profile).unwrap()).unwrap();
    for location in &mut stripped.locations {
        location.lines.clear();
    }
    let dir = scratch("symbolize");
    let input = dir.join("stripped.pb.gz");
    heapwatch::encode::write_pprof(&stripped, std::fs::File::create(&input).unwrap()).unwrap();
    let output = dir.join("named.pb.gz");
    let demo = common::example_binary("demo");
    let out = heapwatch(&[
        "symbolize",
        input.to_str().unwrap(),
        "--binary",
        demo.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let named = parse_rows(&String::from_utf8_lossy(
        &heapwatch(&["top", output.to_str().unwrap()]).stdout,
    ));
    let original = parse_rows(&String::from_utf8_lossy(
        &heapwatch(&["top", profile.to_str().unwrap()]).stdout,
    ));
    assert_eq!(named.first().map(|r| &r.0), original.first().map(|r| &r.0));
    assert!(
        named.iter().any(|(f, _)| f == "demo::cache_pages"),
        "{named:?}"
    );
}

/// A set written before naming (here by a service told to leave naming to its next instance,
/// which never comes) is named in place by `heapwatch symbolize SET.json --binary`: its
/// profile, flamegraph and summary.
#[test]
fn symbolize_names_a_set_written_before_naming_in_place() {
    let dir = scratch("symbolize-set");
    let dumps = dir.join("dumps");
    let service = common::example_binary("leaky_service");
    let run = Command::new(&service)
        .args(["--seconds", "2"])
        .env("HEAPWATCH_DIR", &dumps)
        .env("HEAPWATCH_LIMIT", "64MiB")
        .env("HEAPWATCH_TICK", "100ms")
        .env("HEAPWATCH_NAMING", "next-instance")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let set = heapwatch::watch::list_sets(&dumps)
        .pop()
        .expect("a dump set");
    let before = heapwatch::watch::read_summary(&set).unwrap();
    assert!(!before.named, "written before naming");
    let flamegraph_before = std::fs::read_to_string(set.flamegraph()).unwrap();
    assert!(!flamegraph_before.contains("leak_session_cache"));
    let listed =
        String::from_utf8_lossy(&heapwatch(&["ls", dumps.to_str().unwrap()]).stdout).into_owned();
    assert!(listed.contains("not named yet"), "{listed}");

    let out = heapwatch(&[
        "symbolize",
        set.summary().to_str().unwrap(),
        "--binary",
        service.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("rewrote"), "{said}");
    let after = heapwatch::watch::read_summary(&set).unwrap();
    assert!(after.named);
    assert_eq!(after.unix_ms, before.unix_ms, "the same set");
    assert!(
        after.top_sites[0].function.ends_with("leak_session_cache"),
        "{:?}",
        after.top_sites
    );
    let top = common::pprof_top(&set.profile(), "inuse_space");
    assert!(
        top.first()
            .is_some_and(|(f, _)| f.ends_with("leak_session_cache")),
        "{top:?}"
    );
    let flamegraph = std::fs::read_to_string(set.flamegraph()).unwrap();
    assert!(flamegraph.contains("leak_session_cache"));
    let listed =
        String::from_utf8_lossy(&heapwatch(&["ls", dumps.to_str().unwrap()]).stdout).into_owned();
    let line = listed.lines().find(|l| l.contains(&set.stem)).unwrap();
    assert!(!line.contains("not named yet"), "{line}");
    // -o is for a profile; a set is named in place.
    let refused = heapwatch(&[
        "symbolize",
        set.summary().to_str().unwrap(),
        "--binary",
        service.to_str().unwrap(),
        "-o",
        dir.join("x.pb.gz").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
}

/// A dump written by a binary stripped of its symbols and DWARF (`strip --strip-all`, debug
/// info shipped apart as production images do) is named twice over: at run time, when the
/// debug file is found by build id under `HEAPWATCH_DEBUG_PATH`, and offline, by
/// `heapwatch symbolize --binary` given the debug file.
#[test]
fn a_stripped_binary_is_named_from_its_separate_debug_file() {
    common::require_tool("objcopy", "binutils");
    let dir = scratch("split-debug");
    let demo = common::example_binary("demo");
    let stripped = dir.join("demo");
    let debug = dir.join("demo.debug");
    common::objcopy(&["--only-keep-debug"], &demo, &debug);
    common::objcopy(&["--strip-all"], &demo, &stripped);
    let build_id = build_id_of(&stripped);

    // Without its debug file, nothing of the program's own is named.
    let nameless = run_demo(&stripped, &dir.join("nameless"), None);
    let rows = parse_rows(&String::from_utf8_lossy(
        &heapwatch(&["top", nameless.to_str().unwrap()]).stdout,
    ));
    assert!(
        !rows.iter().any(|(f, _)| f.starts_with("demo::")),
        "a stripped binary named its functions without a debug file: {rows:?}"
    );

    // Offline: the debug file matches the dump's mapping by build id.
    let named = dir.join("named.pb.gz");
    let out = heapwatch(&[
        "symbolize",
        nameless.to_str().unwrap(),
        "--binary",
        debug.to_str().unwrap(),
        "-o",
        named.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = common::pprof_top(&named, "inuse_space");
    assert_eq!(
        top.first().map(|r| r.0.as_str()),
        Some("demo::cache_pages"),
        "{top:?}"
    );
    assert!(
        top.iter()
            .take(5)
            .all(|(f, _)| !f.starts_with("heapwatch::") && !f.starts_with("__rust")),
        "heapwatch's frames or the allocator shims left at the leaf after offline naming: {top:?}"
    );

    // At run time: the debug file where distributions put them, under a debug directory, and
    // with its sections compressed, as their debug packages ship them.
    let root = dir.join("debug-root");
    let by_id = root.join(".build-id").join(&build_id[..2]);
    std::fs::create_dir_all(&by_id).unwrap();
    common::objcopy(
        &["--compress-debug-sections=zlib"],
        &debug,
        &by_id.join(format!("{}.debug", &build_id[2..])),
    );
    let found = run_demo(&stripped, &dir.join("found"), Some(&root));
    let top = common::pprof_top(&found, "inuse_space");
    assert_eq!(
        top.first().map(|r| r.0.as_str()),
        Some("demo::cache_pages"),
        "{top:?}"
    );
}

/// Runs the demo binary at `binary`, writing into `out`; returns its profile.
fn run_demo(binary: &Path, out: &Path, debug_path: Option<&Path>) -> PathBuf {
    let mut command = Command::new(binary);
    command.arg(out).env_remove("HEAPWATCH_DEBUG_PATH");
    if let Some(path) = debug_path {
        command.env("HEAPWATCH_DEBUG_PATH", path);
    }
    let run = command.output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out.join("heap.pb.gz")
}

/// The GNU build id of an ELF file, in hex, as `readelf -n` prints it.
fn build_id_of(binary: &Path) -> String {
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(binary)
        .output()
        .expect("readelf (binutils)");
    let text = String::from_utf8_lossy(&notes.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build id")
        .trim()
        .to_owned()
}

#[test]
fn bad_input_gives_one_line_and_a_non_zero_exit() {
    let dir = scratch("bad");
    let good = std::fs::read(demo_profile()).unwrap();
    let mut gzip_of_noise = Vec::new();
    {
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(&mut gzip_of_noise, flate2::Compression::fast());
        encoder.write_all(&[0xffu8; 200]).unwrap();
        encoder.finish().unwrap();
    }
    let empty_profile = {
        let mut bytes = Vec::new();
        heapwatch::encode::write_pprof(&heapwatch::Profile::default(), &mut bytes).unwrap();
        bytes
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty"),
        ("truncated.pb.gz", good[..good.len() / 3].to_vec(), "gzip"),
        (
            "random.bin",
            (0..4000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "not a pprof profile",
        ),
        ("noise.gz", gzip_of_noise, "not a pprof profile"),
        ("no-samples.pb.gz", empty_profile, "no inuse_space samples"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        for command in [
            vec!["top", path.to_str().unwrap()],
            vec!["flamegraph", path.to_str().unwrap(), "-o", "/dev/null"],
        ] {
            let out = heapwatch(&command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert_eq!(
                stderr.lines().count(),
                1,
                "{name}: one line, got {stderr:?}"
            );
            assert!(stderr.contains(expected), "{name}: {stderr}");
        }
    }
    let missing = heapwatch(&["top", "/definitely/not/here.pb.gz"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    for command in ["ls", "top", "flamegraph", "diff", "timeline", "symbolize"] {
        let help = heapwatch(&[command, "--help"]);
        assert!(
            help.status.success() && !help.stdout.is_empty(),
            "help for {command}"
        );
    }
}
