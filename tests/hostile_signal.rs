//! SIGUSR1 stays the program's: a handler it installed before the watch started still runs on
//! every SIGUSR1 while heapwatch dumps on it — with the siginfo and context an `SA_SIGINFO`
//! handler takes — and is back in place, with its flags and mask, when the watch stops; so are
//! "ignore" and the default disposition. A handler the program installs over heapwatch's while
//! a watch runs is left in place when it stops, and later watches do not install over it.
//!
//! One process, the scenarios in order, `harness = false`: signal dispositions are
//! process-wide, and the last scenario leaves heapwatch's handler out for good.
//!
//! Frame-pointer pass: not needed — SIGUSR1 dispositions; no stack is captured on the signal path.

use heapwatch::watch::{Watch, WatchHandle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Time allowed for the watch thread to write the dump a signal asked for.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

static PLAIN_CALLS: AtomicUsize = AtomicUsize::new(0);
static INFO_CALLS: AtomicUsize = AtomicUsize::new(0);
static INFO_SIGNAL: AtomicI32 = AtomicI32::new(0);
static INFO_CODE: AtomicI32 = AtomicI32::new(0);
static INFO_PID: AtomicI32 = AtomicI32::new(0);
static INFO_CONTEXT: AtomicBool = AtomicBool::new(false);

/// The program's handler, the plain kind.
extern "C" fn plain(signal: libc::c_int) {
    if signal == libc::SIGUSR1 {
        PLAIN_CALLS.fetch_add(1, Ordering::SeqCst);
    }
}

/// The program's handler, the `SA_SIGINFO` kind: records what it was given.
extern "C" fn with_info(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    INFO_SIGNAL.store(signal, Ordering::SeqCst);
    if !info.is_null() {
        // SAFETY: the kernel's siginfo for this signal, valid for the handler's duration.
        let info = unsafe { &*info };
        INFO_CODE.store(info.si_code, Ordering::SeqCst);
        // SAFETY: a signal sent by tgkill (raise) carries the sender's pid.
        INFO_PID.store(unsafe { info.si_pid() }, Ordering::SeqCst);
    }
    INFO_CONTEXT.store(!context.is_null(), Ordering::SeqCst);
    INFO_CALLS.fetch_add(1, Ordering::SeqCst);
}

fn plain_handler() -> libc::sighandler_t {
    plain as extern "C" fn(libc::c_int) as libc::sighandler_t
}

fn info_handler() -> libc::sighandler_t {
    with_info as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
        as libc::sighandler_t
}

/// Installs `handler` for SIGUSR1 with `flags`, blocking SIGUSR2 while it runs.
fn install(handler: libc::sighandler_t, flags: libc::c_int) {
    // SAFETY: a zeroed sigaction filled as the ABI requires; the handlers only touch atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaddset(&mut action.sa_mask, libc::SIGUSR2);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0,
            "sigaction"
        );
    }
}

/// SIGUSR1's disposition now.
fn current() -> libc::sigaction {
    // SAFETY: sigaction writes the current disposition into a zeroed struct of its type.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut action),
            0,
            "sigaction"
        );
        action
    }
}

/// Whether `action` is `handler` with `flags` and the SIGUSR2 mask `install` gives.
fn is_installed(action: &libc::sigaction, handler: libc::sighandler_t, flags: libc::c_int) -> bool {
    let relevant = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK | libc::SA_NODEFER;
    // SAFETY: sigismember reads a sigset the kernel filled.
    let blocks_usr2 = unsafe { libc::sigismember(&action.sa_mask, libc::SIGUSR2) } == 1;
    action.sa_sigaction == handler && action.sa_flags & relevant == flags && blocks_usr2
}

fn describe(action: &libc::sigaction) -> String {
    let name = match action.sa_sigaction {
        libc::SIG_DFL => "SIG_DFL".to_owned(),
        libc::SIG_IGN => "SIG_IGN".to_owned(),
        h if h == plain_handler() => "the program's plain handler".to_owned(),
        h if h == info_handler() => "the program's SA_SIGINFO handler".to_owned(),
        h => format!("another handler ({h:#x}, heapwatch's?)"),
    };
    format!("{name}, flags {:#x}", action.sa_flags)
}

/// Sends SIGUSR1 to this thread; its handler has run when this returns.
fn raise_usr1() {
    // SAFETY: raise is always safe to call; every disposition the scenarios raise under is a
    // handler or "ignore".
    assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0, "raise");
}

fn signal_dumps() -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .find(|(kind, _)| kind.name() == "signal")
        .map_or(0, |(_, n)| *n)
}

fn start(dir: &Path) -> WatchHandle {
    Watch::builder()
        .dir(dir)
        .limit(1 << 40)
        .tick(Duration::from_millis(50))
        .min_interval(Duration::ZERO)
        .dump_on_sigusr1(true)
        .start()
        .expect("start the watch")
}

/// Waits for a signal dump beyond `before`.
fn dumped_since(before: u64) -> Result<(), String> {
    let start = Instant::now();
    while signal_dumps() <= before {
        if start.elapsed() > DUMP_TIMEOUT {
            return Err(format!("no signal dump within {DUMP_TIMEOUT:?} of SIGUSR1"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Collects what went wrong in one scenario.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

/// A plain handler runs on each SIGUSR1 while the watch dumps on it, and is back afterwards.
fn plain_handler_chained_and_restored(dir: &Path) -> Findings {
    let mut found = Findings::default();
    install(plain_handler(), libc::SA_RESTART);
    let handle = start(dir);
    let dumps = signal_dumps();
    raise_usr1();
    found.check(PLAIN_CALLS.load(Ordering::SeqCst) == 1, || {
        format!(
            "the program's handler ran {} times for one SIGUSR1 during the watch, not once",
            PLAIN_CALLS.load(Ordering::SeqCst)
        )
    });
    if let Err(e) = dumped_since(dumps) {
        found.0.push(e);
    }
    drop(handle);
    let after = current();
    found.check(
        is_installed(&after, plain_handler(), libc::SA_RESTART),
        || {
            format!(
                "after the watch stopped SIGUSR1 is {}, not the program's handler with SA_RESTART \
             and SIGUSR2 blocked",
                describe(&after)
            )
        },
    );
    if after.sa_sigaction == plain_handler() {
        raise_usr1();
        found.check(PLAIN_CALLS.load(Ordering::SeqCst) == 2, || {
            "the program's handler did not run on SIGUSR1 after the watch stopped".to_owned()
        });
    }
    found
}

/// An `SA_SIGINFO` handler gets the signal's siginfo and context through heapwatch's.
fn siginfo_handler_chained_and_restored(dir: &Path) -> Findings {
    let mut found = Findings::default();
    install(info_handler(), libc::SA_SIGINFO);
    let handle = start(dir);
    let dumps = signal_dumps();
    raise_usr1();
    found.check(INFO_CALLS.load(Ordering::SeqCst) == 1, || {
        format!(
            "the program's SA_SIGINFO handler ran {} times for one SIGUSR1, not once",
            INFO_CALLS.load(Ordering::SeqCst)
        )
    });
    if INFO_CALLS.load(Ordering::SeqCst) > 0 {
        // SAFETY: getpid is always safe.
        let pid = unsafe { libc::getpid() };
        found.check(
            INFO_SIGNAL.load(Ordering::SeqCst) == libc::SIGUSR1
                && INFO_CODE.load(Ordering::SeqCst) == libc::SI_TKILL
                && INFO_PID.load(Ordering::SeqCst) == pid
                && INFO_CONTEXT.load(Ordering::SeqCst),
            || {
                format!(
                    "the handler was not given the signal's own siginfo and context (signal {}, \
                     code {}, pid {} of {pid}, context {})",
                    INFO_SIGNAL.load(Ordering::SeqCst),
                    INFO_CODE.load(Ordering::SeqCst),
                    INFO_PID.load(Ordering::SeqCst),
                    INFO_CONTEXT.load(Ordering::SeqCst)
                )
            },
        );
    }
    if let Err(e) = dumped_since(dumps) {
        found.0.push(e);
    }
    drop(handle);
    let after = current();
    found.check(
        is_installed(&after, info_handler(), libc::SA_SIGINFO),
        || {
            format!(
                "after the watch stopped SIGUSR1 is {}, not the program's SA_SIGINFO handler",
                describe(&after)
            )
        },
    );
    found
}

/// "Ignore" and the default disposition are not chained (SIG_DFL would end the process) but
/// come back when the watch stops.
fn ignore_and_default_restored(dir: &Path) -> Findings {
    let mut found = Findings::default();
    for (name, disposition) in [("SIG_IGN", libc::SIG_IGN), ("SIG_DFL", libc::SIG_DFL)] {
        install(disposition, 0);
        let handle = start(dir);
        let dumps = signal_dumps();
        // With heapwatch's handler in place the default disposition does not end the process.
        raise_usr1();
        if let Err(e) = dumped_since(dumps) {
            found.0.push(format!("{name}: {e}"));
        }
        drop(handle);
        let after = current();
        found.check(after.sa_sigaction == disposition, || {
            format!(
                "after the watch stopped SIGUSR1 is {}, not {name} as before",
                describe(&after)
            )
        });
    }
    // Leave "ignore" so that no later raise could end the process.
    install(libc::SIG_IGN, 0);
    found
}

/// A handler installed over heapwatch's while a watch runs is the program's decision: left in
/// place when the watch stops, and not installed over by a later watch.
fn handler_installed_during_the_watch_is_left_in_place(dir: &Path) -> Findings {
    let mut found = Findings::default();
    let handle = start(dir);
    install(plain_handler(), libc::SA_RESTART);
    drop(handle);
    let after = current();
    found.check(
        is_installed(&after, plain_handler(), libc::SA_RESTART),
        || {
            format!(
            "the handler the program installed during the watch was replaced by {} when it stopped",
            describe(&after)
        )
        },
    );
    let calls = PLAIN_CALLS.load(Ordering::SeqCst);
    let handle = start(dir);
    let during = current();
    found.check(during.sa_sigaction == plain_handler(), || {
        format!(
            "a later watch installed {} over the program's handler",
            describe(&during)
        )
    });
    raise_usr1();
    found.check(PLAIN_CALLS.load(Ordering::SeqCst) == calls + 1, || {
        "the program's handler did not run on SIGUSR1 during the later watch".to_owned()
    });
    drop(handle);
    found
}

/// One scenario: what went wrong in it, given the dump directory.
type Scenario = fn(&Path) -> Findings;

fn main() -> ExitCode {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("heapwatch-hostile-signal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let scenarios: [(&str, Scenario); 4] = [
        (
            "plain handler chained and restored",
            plain_handler_chained_and_restored,
        ),
        (
            "SA_SIGINFO handler chained and restored",
            siginfo_handler_chained_and_restored,
        ),
        ("ignore and default restored", ignore_and_default_restored),
        (
            "handler installed during the watch left in place",
            handler_installed_during_the_watch_is_left_in_place,
        ),
    ];
    let mut failed = 0;
    for (name, scenario) in scenarios {
        let found = scenario(&dir);
        if found.0.is_empty() {
            println!("  ok    {name}");
        } else {
            failed += 1;
            println!(
                "  FAIL  {name}:\n          {}",
                found.0.join("\n          ")
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("hostile_signal: {failed} of 4 scenarios failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
