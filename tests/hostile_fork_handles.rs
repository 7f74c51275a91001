//! A forked child inherits the parent's `WatchHandle` and `http::Server` but not their threads.
//! It must be able to start a watch and a listener of its own, drop what it inherited without
//! touching the parent's threads, and exit 0 by returning from `main`; the parent's watch and
//! listener must keep working.
//!
//! `harness = false`: the child returns from this `main`, exactly as a service's would.
//!
//! Frame-pointer pass: not needed — handles inherited across fork; `hostile_fork` runs the walks across forks.

mod common;

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

fn main() {
    // Every allocation sampled, so the blocks the watch publishes (its directory's path, the
    // readings) are sampled ones, whose free takes the table's lock: the child's fork handler
    // must not free them while it still holds that lock.
    heapwatch::set_sample_rate(1);
    let base = std::env::temp_dir().join(format!("heapwatch-fork-handles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let watch = heapwatch::watch::Watch::builder()
        .dir(base.join("parent"))
        .limit(1 << 40)
        .tick(Duration::from_millis(20))
        .start()
        .expect("parent watch");
    let server = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("parent listener");
    let parent_addr = server.local_addr().to_string();
    wait_for_reading();

    // SAFETY: the child runs ordinary Rust (heapwatch is fork-safe, which is what is tested)
    // and ends by returning from `main`, as a forked service would.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child(watch, server, &base);
        return;
    }

    let code = common::wait_for_child(pid, Duration::from_secs(60), |_| {});
    assert_eq!(
        code,
        Some(0),
        "the child must exit 0 (None: it hung and was killed)"
    );
    // The parent's threads were not disturbed by the child's drops.
    assert!(watch.is_running());
    let (status, body) = common::http_get(&parent_addr, "/metrics");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("heapwatch_heap_live_bytes"));
    let before = heapwatch::published::latest()
        .map(|l| l.reading)
        .expect("parent reading")
        .unix_ms;
    let deadline = Instant::now() + Duration::from_secs(10);
    while heapwatch::published::latest()
        .map(|l| l.reading)
        .expect("parent reading")
        .unix_ms
        == before
    {
        assert!(
            Instant::now() < deadline,
            "the parent's watch stopped ticking"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        heapwatch::published::running_dump_dir(),
        Some(base.join("parent"))
    );
    drop(server);
    drop(watch);
    assert_eq!(heapwatch::published::running_dump_dir(), None);
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "forked child started its own watch and listener, dropped the inherited ones, exited 0"
    );
}

fn child(
    inherited_watch: heapwatch::watch::WatchHandle,
    inherited_server: heapwatch::http::Server,
    base: &std::path::Path,
) {
    // Nothing of the parent's watch is running here.
    assert!(!inherited_watch.is_running());
    assert_eq!(heapwatch::published::running_dump_dir(), None);
    assert!(heapwatch::published::latest().map(|l| l.reading).is_none());
    let own = heapwatch::watch::Watch::builder()
        .dir(base.join("child"))
        .limit(1 << 40)
        .tick(Duration::from_millis(20))
        .start()
        .expect("the child can start its own watch");
    wait_for_reading();
    assert_eq!(
        heapwatch::published::running_dump_dir(),
        Some(base.join("child"))
    );
    // Dropping the inherited handles neither joins the parent's threads (they do not exist
    // here: that would hang) nor undoes the child's own watch.
    drop(inherited_watch);
    drop(inherited_server);
    assert_eq!(
        heapwatch::published::running_dump_dir(),
        Some(base.join("child"))
    );
    let server = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("the child can start its own listener");
    let (status, _) = common::http_get(&server.local_addr().to_string(), "/metrics");
    assert_eq!(status, 200);
    drop(server);
    drop(own);
    assert_eq!(heapwatch::published::running_dump_dir(), None);
}

/// Waits for the running watch's first reading (it is published once the watch is set up).
fn wait_for_reading() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while heapwatch::published::latest().map(|l| l.reading).is_none() {
        assert!(Instant::now() < deadline, "no watch reading within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}
