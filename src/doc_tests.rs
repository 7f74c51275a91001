//! The README's and the guide's Rust code blocks, compiled and run as doctests: a block that
//! stops compiling fails `cargo test`. `tests/docs.rs` checks that every Markdown page of the
//! repository is listed here, so a new page cannot go untested.

macro_rules! pages {
    ($($page:ident = $path:literal),* $(,)?) => {
        $(
            #[doc = include_str!($path)]
            #[allow(dead_code)]
            struct $page;
        )*
    };
}

pages! {
    Readme = "../README.md",
    Contributing = "../CONTRIBUTING.md",
    Architecture = "../ARCHITECTURE.md",
    Changelog = "../CHANGELOG.md",
    Guide = "../docs/README.md",
    GettingStarted = "../docs/getting-started.md",
    BuildSettings = "../docs/build-settings.md",
    ReadingProfiles = "../docs/reading-profiles.md",
    Watch = "../docs/watch.md",
    Verdicts = "../docs/verdicts.md",
    Spans = "../docs/spans.md",
    Endpoints = "../docs/endpoints.md",
    CpuProfiles = "../docs/cpu-profiles.md",
    TestsAndBenchmarks = "../docs/tests-and-benchmarks.md",
    HowItWorks = "../docs/how-it-works.md",
    Safety = "../docs/safety.md",
    Performance = "../docs/performance.md",
    Reference = "../docs/reference.md",
}
