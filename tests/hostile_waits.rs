//! The pages that wait (`?seconds=N`) against clients that leave: a client asks for 120 s of
//! heap delta (or of CPU profile, feature `cpu`), holds the one slot for 2 s, and disconnects.
//! The slot must be free within a second of the disconnect: a `?seconds=1` request then gets
//! 200, not 409. Against the built-in listener, and against the axum router (feature `axum`)
//! served by tokio on loopback.
//!
//! The scenarios run one after another in one process (`harness = false`); the last line says
//! how many passed. `cargo test --test hostile_waits -- NAME` runs those whose name contains
//! NAME.
//!
//! Frame-pointer pass: not needed — when a waiting page lets go of its slot; what the profile holds does not matter.

#[cfg(feature = "axum")]
#[path = "common/served_axum.rs"]
mod served_axum;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// The target: an abandoned wait's slot is free within this of the disconnect.
const FREED_WITHIN: Duration = Duration::from_secs(1);

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // Without features `cpu` and `axum` nothing is added.
    #[allow(unused_mut)]
    let mut scenarios: Vec<(&str, fn())> = vec![(
        "listener_abandoned_heap_delta_frees_its_slot",
        listener_abandoned_heap_delta_frees_its_slot,
    )];
    #[cfg(feature = "cpu")]
    scenarios.push((
        "listener_abandoned_cpu_profile_frees_the_sampler",
        listener_abandoned_cpu_profile_frees_the_sampler,
    ));
    #[cfg(feature = "axum")]
    scenarios.push((
        "router_abandoned_heap_delta_frees_its_slot",
        router::abandoned_heap_delta_frees_its_slot,
    ));
    #[cfg(all(feature = "axum", feature = "cpu"))]
    scenarios.push((
        "router_abandoned_cpu_profile_frees_the_sampler",
        router::abandoned_cpu_profile_frees_the_sampler,
    ));
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            let started = Instant::now();
            println!("hostile_waits: {name} ...");
            if std::panic::catch_unwind(scenario).is_ok() {
                passed += 1;
                println!("hostile_waits: {name} ok ({:.1?})", started.elapsed());
            } else {
                failed += 1;
                println!("hostile_waits: {name} FAILED ({:.1?})", started.elapsed());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn listener_abandoned_heap_delta_frees_its_slot() {
    let server = listener();
    abandoned_wait_frees_its_slot(&server.local_addr().to_string(), "/debug/pprof/heap");
}

#[cfg(feature = "cpu")]
fn listener_abandoned_cpu_profile_frees_the_sampler() {
    let server = listener();
    abandoned_wait_frees_its_slot(&server.local_addr().to_string(), "/debug/pprof/profile");
}

fn listener() -> heapwatch::http::Server {
    heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("bind")
}

/// Asks `path?seconds=120`, checks the slot is held (a second request gets 409), disconnects
/// after 2 s, then asks `path?seconds=1` until it is not refused: it must get 200, and within
/// [`FREED_WITHIN`] of the disconnect.
fn abandoned_wait_frees_its_slot(addr: &str, path: &str) {
    let mut abandoned = TcpStream::connect(addr).expect("connect");
    write!(
        abandoned,
        "GET {path}?seconds=120 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    std::thread::sleep(Duration::from_secs(2));
    let (held, _) = status_of(addr, &format!("{path}?seconds=1"));
    assert_eq!(held, 409, "{path}: the 120 s request holds the slot");

    drop(abandoned);
    let disconnected = Instant::now();
    let mut refused = 0;
    let (taken_after, status) = loop {
        let sent = disconnected.elapsed();
        let (status, _) = status_of(addr, &format!("{path}?seconds=1"));
        if status != 409 || sent > FREED_WITHIN * 3 {
            break (sent, status);
        }
        refused += 1;
        // The probes' pace, not a wait for the server.
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "hostile_waits: {path}: slot taken again {taken_after:.0?} after the disconnect ({refused} probes refused before)"
    );
    assert_eq!(status, 200, "{path}?seconds=1 after the disconnect");
    assert!(
        taken_after < FREED_WITHIN,
        "{path}: the slot was free only {taken_after:?} after the disconnect"
    );
}

/// `GET target` with `Connection: close`: the status, and how long the answer took.
fn status_of(addr: &str, target: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status from {target}: {text:?}"));
    (status, started.elapsed())
}

#[cfg(feature = "axum")]
mod router {
    use super::abandoned_wait_frees_its_slot;

    /// heapwatch's router as the whole app, served by a one-worker tokio runtime, as a
    /// service serves it.
    fn serve() -> crate::served_axum::Served {
        crate::served_axum::serve(heapwatch::http::router(), 1)
    }

    pub(super) fn abandoned_heap_delta_frees_its_slot() {
        let served = serve();
        abandoned_wait_frees_its_slot(&served.addr(), "/debug/pprof/heap");
    }

    #[cfg(feature = "cpu")]
    pub(super) fn abandoned_cpu_profile_frees_the_sampler() {
        let served = serve();
        abandoned_wait_frees_its_slot(&served.addr(), "/debug/pprof/profile");
    }
}
