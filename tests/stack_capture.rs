//! Auto stack capture settles on frame pointers in a build that keeps them, and on the unwinder
//! otherwise; either way the allocating function is the innermost frame of its samples.
//!
//! `scripts/test.sh` runs the suite twice and says which to expect through
//! `HEAPWATCH_EXPECT_FRAME_POINTERS` (1: built with `-C force-frame-pointers=yes`, 0: without).

use heapwatch::{SampleType, StackCapture};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

#[inline(never)]
fn allocate_here(blocks: &mut Vec<Vec<u8>>) {
    for _ in 0..64 {
        blocks.push(vec![0u8; 1000]);
    }
}

#[test]
fn auto_capture_settles_and_names_the_allocating_function() {
    heapwatch::set_stack_capture(StackCapture::Auto);
    heapwatch::set_sample_rate(1);
    let mut blocks = Vec::with_capacity(64);
    allocate_here(&mut blocks);
    let settled = heapwatch::stack_capture();
    let profile = heapwatch::snapshot();
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);

    println!("stack capture settled on {settled:?}");
    assert_ne!(
        settled,
        StackCapture::Auto,
        "still verifying after 64 samples"
    );
    match std::env::var("HEAPWATCH_EXPECT_FRAME_POINTERS").as_deref() {
        Ok("1") => assert_eq!(settled, StackCapture::FramePointers),
        Ok("0") => assert_eq!(settled, StackCapture::Unwinder),
        _ => println!("HEAPWATCH_EXPECT_FRAME_POINTERS not set: not checking which"),
    }
    let top = profile.top_functions(SampleType::InuseObjects);
    let site = top
        .iter()
        .find(|t| t.function.ends_with("allocate_here"))
        .unwrap_or_else(|| panic!("allocate_here not found: {top:?}"));
    assert_eq!(
        site.flat, 64,
        "every block sampled at rate 1, as the innermost frame"
    );
    drop(blocks);
}
