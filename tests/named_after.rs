//! Evidence first, names after, in one process: memory that crosses a threshold is dumped
//! before naming (the summary says `"named": false`, the profile holds addresses and build
//! ids, the flamegraph is a placeholder); once the memory is given back and the pressure has
//! passed, the watch names the same set in place — profile, flamegraph and summary — and its
//! top site is the one a named snapshot of the same memory gives.

use heapwatch::watch::{list_sets, read_summary, DumpNaming, Watch};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// One block: glibc maps it on its own and unmaps it when it is freed, so the resident memory
/// falls at once (the pressure passes).
const HELD_BYTES: usize = 120 << 20;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The memory the service "holds": a plain function, for the compiler to inline or not.
fn hold_request_bodies(bytes: usize) -> Vec<u8> {
    vec![7u8; bytes]
}

fn wait_for<T>(what: &str, within: Duration, mut found: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let dir = std::env::temp_dir().join(format!("heapwatch-named-after-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    heapwatch::set_sample_rate(64 << 10);
    // The symbolizer's tables (and the pages of the binary they read) are part of the
    // resident memory the limit is measured against: loaded first, as the watch would.
    drop(heapwatch::snapshot());
    // The held block takes usage from under half the limit to over 80 %.
    let limit = (rss() + HELD_BYTES as u64) * 100 / 90;
    let watch = Watch::builder()
        .dir(&dir)
        .limit(limit)
        .thresholds(&[0.8])
        .tick(Duration::from_millis(100))
        .horizon(Duration::ZERO)
        .naming(DumpNaming::InProcess)
        .start()
        .expect("start the watch");

    let held = hold_request_bodies(HELD_BYTES);
    let set = wait_for("a threshold dump", Duration::from_secs(20), || {
        list_sets(&dir).pop()
    });
    let before = read_summary(&set).expect("summary");
    println!(
        "named_after: {} written at {:.0} % of the limit, named: {}, symbolizer {} bytes",
        set.stem,
        100.0 * before.usage_fraction.unwrap_or(0.0),
        before.named,
        before.symbolizer_bytes
    );
    assert_eq!(before.reason, "threshold");
    assert!(!before.named, "written before naming under pressure");
    let svg = std::fs::read_to_string(set.flamegraph()).expect("svg");
    assert!(svg.contains("before naming"), "the placeholder: {svg}");
    let raw = heapwatch::decode::read_pprof(&std::fs::read(set.profile()).unwrap())
        .expect("a pprof profile");
    assert!(!raw.samples.is_empty());
    let main = raw
        .mappings
        .iter()
        .find(|m| m.path.ends_with("named_after") || m.path.contains("/named_after-"))
        .unwrap_or_else(|| panic!("this binary among the mappings: {:?}", raw.mappings));
    assert!(!main.build_id.is_empty(), "with its build id");

    // What a named snapshot of the same memory blames.
    let expected = heapwatch::snapshot()
        .culprits(heapwatch::SampleType::InuseSpace, &heapwatch::plumbing())
        .into_iter()
        .next()
        .expect("a culprit")
        .function;
    println!("named_after: a named snapshot blames {expected}");
    assert!(
        expected.contains("hold_request_bodies") || expected.contains("named_after::main"),
        "{expected}"
    );

    drop(held);
    println!(
        "named_after: memory given back, rss {} MiB of a {} MiB limit",
        rss() >> 20,
        limit >> 20
    );
    let after = wait_for(
        "the set named once the pressure passed",
        Duration::from_secs(20),
        || read_summary(&set).ok().filter(|s| s.named),
    );
    println!(
        "named_after: named; top site {:?}, rss now {} MiB",
        after.top_sites.first(),
        rss() >> 20
    );
    assert_eq!(
        after.unix_ms, before.unix_ms,
        "the same set, named in place"
    );
    assert_eq!(
        after.top_sites.first().map(|s| s.function.as_str()),
        Some(expected.as_str())
    );
    let named = heapwatch::decode::read_pprof(&std::fs::read(set.profile()).unwrap())
        .expect("the named profile");
    let top = named
        .culprits(heapwatch::SampleType::InuseSpace, &heapwatch::plumbing())
        .into_iter()
        .next()
        .expect("a culprit")
        .function;
    assert_eq!(top, expected, "the profile's own names");
    let svg = std::fs::read_to_string(set.flamegraph()).expect("svg");
    let short = expected.rsplit("::").next().unwrap();
    assert!(svg.contains(short), "the flamegraph names {short}");
    assert_eq!(list_sets(&dir).len(), 1, "named in place: no second set");
    drop(watch);
    std::fs::remove_dir_all(&dir).expect("remove the dump directory");
    println!("named_after: 1 passed, 0 failed");
}
