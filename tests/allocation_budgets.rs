//! Exact allocation figures of a scope (`heapwatch::measure`) and allocation budgets
//! (`assert_allocations!`), as a test suite uses them: tests in this file run in parallel,
//! one of them allocating on other threads all along, and each sees only its own thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Allocates on another thread until dropped: what a parallel test run looks like.
struct Noise {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Noise {
    fn start() -> Noise {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (started, running) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let words: Vec<String> = (0..64).map(|i| format!("word {i}")).collect();
                std::hint::black_box(words);
                rounds += 1;
                if rounds == 1 {
                    let _ = started.send(());
                }
            }
            rounds
        });
        running.recv().expect("the noise thread runs");
        Noise {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let rounds = self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0);
        assert!(rounds > 0, "the noise thread never allocated");
    }
}

fn split_words(input: &str) -> Vec<String> {
    input.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn scope_figures_are_exact_with_other_threads_allocating() {
    let _noise = Noise::start();
    for _ in 0..50 {
        let (words, a) = heapwatch::measure(|| split_words("one two three four"));
        assert_eq!(words.len(), 4);
        // Four strings and the vector, whose exact capacity is known from the iterator's hint
        // only after growth: count the strings exactly, the vector's blocks by its reallocs.
        assert_eq!(a.blocks, 4 + 1 + a.reallocs, "{a}");
        assert_eq!(a.held_blocks, 5, "{a}");
        let strings = 3 + 3 + 5 + 4;
        let vector = words.capacity() * std::mem::size_of::<String>();
        assert_eq!(a.held_bytes as usize, strings + vector, "{a}");
        assert!(a.peak_bytes as i64 >= a.held_bytes, "{a}");

        let (_, grown) = heapwatch::measure(|| {
            let mut v = Vec::new();
            for i in 0..100u32 {
                v.push(i);
            }
            std::hint::black_box(&v);
        });
        // 4, 8, 16, 32, 64, 128 elements: one allocation and five reallocs, freed at the end.
        assert_eq!(
            (grown.blocks, grown.reallocs, grown.freed_blocks),
            (6, 5, 6),
            "{grown}"
        );
        assert_eq!(grown.bytes, 4 * (4 + 8 + 16 + 32 + 64 + 128), "{grown}");
        assert_eq!((grown.held_bytes, grown.held_blocks), (0, 0), "{grown}");
        assert_eq!(grown.peak_bytes, 128 * 4, "{grown}");
    }
}

#[test]
fn scopes_nest_and_threads_spawned_inside_are_not_counted() {
    let outer = heapwatch::AllocationScope::begin();
    let first = vec![0u8; 1000];
    let (second, inner) = heapwatch::measure(|| vec![0u8; 300]);
    assert_eq!((inner.blocks, inner.bytes, inner.peak_bytes), (1, 300, 300));
    let so_far = outer.so_far();
    assert_eq!((so_far.blocks, so_far.bytes), (2, 1300), "{so_far}");
    assert_eq!(so_far.peak_bytes, 1300, "{so_far}");
    drop(first);
    drop(second);
    let (_, freeing) = heapwatch::measure(|| drop(vec![0u8; 10]));
    assert_eq!(freeing.held_bytes, 0);
    let all = outer.end();
    assert_eq!(
        (all.blocks, all.bytes, all.held_bytes),
        (3, 1310, 0),
        "{all}"
    );
    assert_eq!(all.peak_bytes, 1300, "{all}");

    // The closure's thread allocates a MiB; the calling thread only what spawning costs it.
    let (_, spawning) = heapwatch::measure(|| {
        std::thread::spawn(|| std::hint::black_box(vec![1u8; 1 << 20]).len())
            .join()
            .unwrap()
    });
    assert!(spawning.bytes < 1 << 16, "{spawning}");
}

#[test]
fn a_budget_passes_within_and_names_the_allocating_function_when_exceeded() {
    let _noise = Noise::start();
    for _ in 0..20 {
        let words = heapwatch::assert_allocations!(max_blocks = 8, max_bytes = 4096, || {
            split_words("a budget that holds")
        });
        assert_eq!(words.len(), 4);
        let total: usize =
            heapwatch::assert_allocations!(none, || words.iter().map(String::len).sum());
        assert_eq!(total, 16);
    }

    let (_, over) = heapwatch::check_allocations(heapwatch::Budget::none(), || {
        split_words("no allocation was allowed here")
    });
    let over = over.expect_err("five strings and a vector");
    let message = over.to_string();
    assert!(message.contains("blocks (at most 0)"), "{message}");
    assert!(
        over.sites
            .iter()
            .any(|site| site.function.ends_with("split_words")),
        "the allocating function is not named:\n{message}"
    );
    let named: u64 = over.sites.iter().map(|site| site.blocks).sum();
    assert_eq!(
        named + over.unplaced.0,
        over.allocations.blocks,
        "{message}"
    );

    let panic = std::panic::catch_unwind(|| {
        heapwatch::assert_allocations!(max_bytes = 8, || split_words("far more than eight bytes"))
    })
    .expect_err("over budget");
    let panic = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(panic.contains("bytes (at most 8)"), "{panic}");
    assert!(panic.contains("split_words"), "{panic}");
    println!("{panic}");

    // A closure that panics inside a check leaves no scope or log behind: the next figures
    // and the next budget are the thread's own again.
    let unwound = std::panic::catch_unwind(|| {
        heapwatch::assert_allocations!(max_blocks = 100, || -> Vec<String> {
            let _kept = split_words("allocated before the panic");
            panic!("the closure under test fails")
        })
    });
    assert!(unwound.is_err());
    let (_, after) = heapwatch::measure(|| split_words("two words"));
    assert_eq!(after.blocks, 3 + after.reallocs, "{after}");
    let (_, over) = heapwatch::check_allocations(heapwatch::Budget::none(), || vec![0u8; 32]);
    let over = over.expect_err("one block");
    assert_eq!(
        over.sites.iter().map(|site| site.blocks).sum::<u64>(),
        1,
        "{over}"
    );
}
