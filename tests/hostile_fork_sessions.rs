//! The pages that wait (`?seconds=N`) across fork: the parent takes a heap delta over its
//! listener and a CPU profile, and forks while both wait. The child has neither thread, so:
//! - its own listener answers `/debug/pprof/heap?seconds=1` with 200 (the one delta slot the
//!   parent held is free in the child);
//! - it takes its own CPU profile, which counts its own busy thread (the parent's sampler
//!   state is reset in the child: the claim freed, the parent's table unmapped), and its own
//!   listener answers `/debug/pprof/profile?seconds=1` with 200 and a gzipped profile, not
//!   409 ("try again") for ever;
//!
//! and the parent's delta and profile complete as if nothing happened.
//!
//! `harness = false`: the child returns its verdict as its exit code.
//!
//! Frame-pointer pass: not needed — the claims of the waiting pages across fork, whichever walk captured the stacks.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

fn main() {
    let server = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("the parent's listener");
    let addr = server.local_addr().to_string();
    // The parent's CPU profile claims the sampler here, before its thread starts sampling.
    let reservation = heapwatch::cpu::Reservation::take().expect("the sampler is free");
    let cpu = std::thread::spawn(move || reservation.profile(Duration::from_secs(3)));
    let delta = parent_delta(&addr);

    // SAFETY: the child runs ordinary Rust (heapwatch is fork-safe: what is tested) and leaves
    // through `exit` with its verdict.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        std::process::exit(child());
    }
    let code = common::wait_for_child(pid, Duration::from_secs(60), |_| {});

    let answer = read_answer(delta);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the parent's delta: {answer}"
    );
    let profile = cpu.join().expect("the parent's profile");
    assert!(profile.is_ok(), "the parent's CPU profile: {profile:?}");
    assert_eq!(code, Some(0), "the child's checks (None: it hung)");
    drop(server);
    println!("hostile_fork_sessions: the child took its own delta and its own CPU profile");
    println!("1 passed, 0 failed");
}

/// Starts a 3 s heap delta over the listener and returns its connection once the listener
/// holds the one delta slot for it: a second delta is refused with 409. Should the probe have
/// taken the slot first (the first request not read yet), the first was refused: again.
fn parent_delta(addr: &str) -> TcpStream {
    for _ in 0..5 {
        let delta = send(addr, "/debug/pprof/heap?seconds=3");
        let probe = read_answer(send(addr, "/debug/pprof/heap?seconds=1"));
        if probe.starts_with("HTTP/1.1 409") {
            return delta;
        }
        // The probe got the slot; the first request was refused.
        let refused = read_answer(delta);
        assert!(refused.starts_with("HTTP/1.1 409"), "{refused}");
    }
    panic!("the parent's delta never held the slot");
}

fn send(addr: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    stream
}

/// The status line and headers of the answer (the body is binary).
fn read_answer(mut stream: TcpStream) -> String {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("answer");
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The child's checks; its exit code.
fn child() -> i32 {
    let mut failures = Vec::new();
    let own = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("the child's own listener");
    let addr = own.local_addr().to_string();
    let (status, body) = common::http_get(&addr, "/debug/pprof/heap?seconds=1");
    if status != 200 {
        failures.push(format!(
            "the child's delta: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut state = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                state = std::hint::black_box(state.rotate_left(7).wrapping_mul(31));
            }
        })
    };
    match heapwatch::cpu::profile(Duration::from_secs(1)) {
        Ok(profile) if profile.total_samples() > 0 => {}
        other => failures.push(format!(
            "the child's CPU profile (a busy thread ran): {other:?}"
        )),
    }
    let (status, body) = common::http_get(&addr, "/debug/pprof/profile?seconds=1");
    if status != 200 || !body.starts_with(&[0x1f, 0x8b]) {
        failures.push(format!(
            "the child's /debug/pprof/profile: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = busy.join();
    drop(own);
    for failure in &failures {
        eprintln!("hostile_fork_sessions: child: {failure}");
    }
    i32::from(!failures.is_empty())
}
