//! A real process, with the detector in it: `examples/mixed_service.rs` leaks steadily in one
//! function, allocates large temporary bursts in another and holds a stable cache in a third.
//! With the leak the verdict is `leak`, the leaking function is the top suspect, and neither
//! the bursts nor the cache are suspects; a leak dump set carries the verdict, the suspects and
//! a differential flamegraph. Without the leak the verdict never says `leak`.

use heapwatch::watch::{list_sets, read_summary};
use std::process::{Command, Output};

mod common;

const SECONDS: &str = "22";

fn run(dir: &std::path::Path, leak: bool) -> std::thread::JoinHandle<Output> {
    let binary = common::example_binary("mixed_service");
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let mut command = Command::new(binary);
        command
            .args(["--seconds", SECONDS])
            .env("HEAPWATCH_DIR", &dir);
        if !leak {
            command.arg("--no-leak");
        }
        command.output().expect("run mixed_service")
    })
}

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"))
}

#[test]
fn the_detector_names_the_leak_and_only_the_leak() {
    let base = std::env::temp_dir().join(format!("heapwatch-mixed-{}", std::process::id()));
    let (with_dir, without_dir) = (base.join("leak"), base.join("clean"));
    // Both at once: the machine has two cores and each run mostly sleeps.
    let with_leak = run(&with_dir, true);
    let without_leak = run(&without_dir, false);
    let (with_leak, without_leak) = (with_leak.join().unwrap(), without_leak.join().unwrap());

    let stdout = String::from_utf8_lossy(&with_leak.stdout);
    println!("with the leak:\n{stdout}");
    assert!(
        with_leak.status.success(),
        "{}",
        String::from_utf8_lossy(&with_leak.stderr)
    );
    assert!(line(&stdout, "verdicts seen: ")
        .split(' ')
        .any(|v| v == "leak"));
    assert_eq!(line(&stdout, "final verdict: "), "leak");
    let suspects: Vec<&str> = line(&stdout, "suspects: ").split(", ").collect();
    assert!(
        suspects
            .first()
            .is_some_and(|s| s.ends_with("leak_connection_state")),
        "top suspect: {suspects:?}"
    );
    for innocent in ["render_report_burst", "warm_lookup_cache"] {
        assert!(
            !suspects.iter().any(|s| s.contains(innocent)),
            "{innocent} is a suspect: {suspects:?}"
        );
    }
    let leak_set = list_sets(&with_dir)
        .into_iter()
        .find(|s| s.stem.ends_with("-leak"))
        .expect("a leak dump set");
    let summary = read_summary(&leak_set).expect("summary");
    assert_eq!(summary.reason, "leak");
    assert_eq!(
        summary.verdict.as_ref().map(|v| v.kind.name()),
        Some("leak")
    );
    assert!(
        summary
            .verdict
            .as_ref()
            .unwrap()
            .floor_slope_bytes_per_second
            > 0.0
    );
    assert!(summary
        .suspects
        .first()
        .is_some_and(|s| s.function.ends_with("leak_connection_state")));
    let diff =
        std::fs::read_to_string(leak_set.diff_flamegraph()).expect("differential flamegraph");
    assert!(diff.contains("leak_connection_state"));
    assert_eq!(
        summary.files.diff_flamegraph.as_deref(),
        leak_set
            .diff_flamegraph()
            .file_name()
            .and_then(|n| n.to_str())
    );

    let stdout = String::from_utf8_lossy(&without_leak.stdout);
    println!("without the leak:\n{stdout}");
    assert!(without_leak.status.success());
    let seen = line(&stdout, "verdicts seen: ");
    assert!(
        !seen.split(' ').any(|v| v == "leak"),
        "a false leak verdict: {seen}"
    );
    assert!(list_sets(&without_dir)
        .iter()
        .all(|s| !s.stem.ends_with("-leak")));
    std::fs::remove_dir_all(&base).unwrap();
}
