//! CPU profiles give their memory back: six 5 s profiles in a row, taken while two threads
//! burn CPU through many distinct stacks and churn the heap, leave the resident size within
//! 16 MiB of what it was before the first.
//!
//! "Before" is measured once the symbolizer knows this binary (a heap snapshot named its
//! stacks first, as the running watch's naming thread does in a service): the line tables it
//! keeps are shared by heap and CPU profiles and counted apart (`heapwatch_symbolizer_bytes`);
//! what is measured here is what the profiles themselves leave. The cold figure is printed
//! too, and so is the peak after each profile.
//!
//! Frame-pointer pass: not needed — the CPU sampler unwinds with libgcc whatever the build; this measures memory.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// What the profiles may leave resident.
const ALLOWED_GROWTH_KIB: u64 = 16 * 1024;

/// How long each profile samples (the target's figure).
const PROFILE: Duration = Duration::from_secs(5);

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Recursion of `depth` levels through two functions whose mix depends on `seed`: many
/// distinct stacks, each allocating a little and freeing it.
fn descend(depth: u32, seed: u64) -> u64 {
    if depth == 0 {
        let block = vec![seed as u8; 256 + (seed % 4096) as usize];
        return black_box(block).len() as u64;
    }
    if seed & 1 == 0 {
        descend(depth - 1, seed >> 1).wrapping_add(1)
    } else {
        other_branch(depth - 1, seed >> 1).wrapping_mul(3)
    }
}

fn other_branch(depth: u32, seed: u64) -> u64 {
    black_box(descend(depth, seed.rotate_left(5)))
}

fn main() {
    let cold = status_kib("VmRSS:");
    // Name this binary once, as the watch's naming thread would in a service: blocks large
    // enough to be sampled, named by a heap snapshot.
    let kept: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 1 << 20]).collect();
    let snapshot = heapwatch::snapshot();
    assert!(!snapshot.samples.is_empty(), "16 MiB kept, no sample");
    drop(snapshot);

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("load{t}"))
                .spawn(move || {
                    let mut round = t as u64;
                    while !stop.load(Ordering::Relaxed) {
                        round = round.wrapping_add(0x9e37_79b9);
                        black_box(descend(8 + (round % 24) as u32, round));
                    }
                })
                .expect("a load thread")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = status_kib("VmRSS:");
    println!("hostile_cpu_memory: resident {cold} KiB cold, {before} KiB with the symbolizer warm, under load");

    let mut failures = Vec::new();
    for round in 1..=6 {
        let profile = heapwatch::cpu::profile(PROFILE).expect("a CPU profile");
        let samples = profile.total_samples();
        let stacks = profile.samples.len();
        let lost = profile.lost_samples;
        drop(profile);
        println!(
            "hostile_cpu_memory: profile {round}: {samples} samples in {stacks} stacks ({} lost), resident {} KiB, peak {} KiB",
            lost,
            status_kib("VmRSS:"),
            status_kib("VmHWM:")
        );
        if samples == 0 {
            failures.push(format!(
                "profile {round} counted no sample of two busy threads"
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("a load thread");
    }
    let after = status_kib("VmRSS:");
    drop(kept);
    let growth = after.saturating_sub(before);
    println!("hostile_cpu_memory: after six profiles {after} KiB: {growth} KiB more than before (allowed {ALLOWED_GROWTH_KIB})");
    if growth > ALLOWED_GROWTH_KIB {
        failures.push(format!(
            "six profiles left {growth} KiB resident (before {before}, after {after})"
        ));
    }
    for failure in &failures {
        eprintln!("hostile_cpu_memory: FAILED: {failure}");
    }
    println!(
        "{} passed, {} failed",
        usize::from(failures.is_empty()),
        usize::from(!failures.is_empty())
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
