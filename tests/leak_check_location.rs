//! A failing `assert_no_leak` is reported at the test's own line, as `assert!` is, not at a
//! line inside heapwatch. One test in this binary: it replaces the process's panic hook.
//!
//! Frame-pointer pass: not needed — the panic's location, not a captured stack.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Keeps 2 KiB per call.
#[inline(never)]
fn remember(log: &mut Vec<Vec<u8>>) {
    log.push(vec![7u8; 2048]);
}

#[test]
fn a_failing_leak_assertion_points_at_the_callers_line() {
    let reported: Arc<Mutex<Option<(String, u32)>>> = Arc::new(Mutex::new(None));
    let hook_reported = Arc::clone(&reported);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| (l.file().to_owned(), l.line()));
        *hook_reported.lock().unwrap() = location;
    }));

    let mut log = Vec::new();
    let call_line = line!() + 2;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        heapwatch::leak_check::assert_no_leak(100, || remember(&mut log));
    }));
    std::panic::set_hook(previous);

    let message = outcome.expect_err("100 × 2 KiB kept must fail the assertion");
    let message = message.downcast_ref::<String>().expect("formatted message");
    assert!(message.starts_with("leak: "), "{message}");
    let (file, line) = reported
        .lock()
        .unwrap()
        .clone()
        .expect("the panic has a location");
    assert_eq!(
        (file.as_str(), line),
        (file!(), call_line),
        "the panic must point at the assertion's caller"
    );
}
