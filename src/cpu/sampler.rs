//! heapwatch's own CPU sampler: the process's `ITIMER_PROF` timer sends `SIGPROF` to the
//! thread using CPU; the handler walks that thread's stack with libgcc's unwinder and counts
//! it in a fixed table mapped for the session and unmapped at its end.
//!
//! Why not pprof-rs's sampler, which heapwatch used before: pprof-rs 0.15 keeps 16,384 stack
//! entries of 1,024 frames each (~540 MB of address space, ~100 MB of it touched), allocates a
//! fresh table at every stop, resolves one backtrace at every start (the `backtrace` crate's
//! DWARF cache, ~80 MB for a release binary), and keeps its running state in a private static
//! that a forked child cannot reset. Measured on a 2-core VM, one 1 s profile left ~140 MB
//! resident for good. This sampler holds [`SLOTS`] stacks of [`MAX_FRAMES`] frames in one
//! anonymous mapping (~2.3 MB of address space, pages touched only as stacks arrive), returned
//! to the kernel whole when the session ends, and its state is heapwatch's to reset at fork.
//!
//! # What the handler does, and what it never does
//! It takes no lock, allocates nothing, and touches only the table and atomics: the mapping is
//! made before the timer starts and unmapped only after the timer is stopped, the handler
//! uninstalled, and every handler still running has left (counted by [`IN_HANDLER`]).
//!
//! libgcc's unwinder is not reentrant, so a sample whose interrupted code lies in an object on
//! the blocklist is not walked but counted as lost: libgcc itself (a thread interrupted inside
//! the unwinder), the dynamic loader and the vDSO always ([`ALWAYS_BLOCKED`]); libc and
//! libpthread too ([`LOADER_LOCK_HOLDERS`]) unless the loaded libgcc finds unwind tables with
//! glibc's `_dl_find_object` (glibc 2.35+, GCC 12+), which is lock-free. An older libgcc
//! searches with `dl_iterate_phdr`, which takes the loader's lock: a thread interrupted in libc
//! while holding that lock would deadlock in the handler. One case remains: a program that
//! registers unwind tables of its own at run time (`__register_frame`, as JIT compilers do)
//! makes libgcc take a mutex of its own, through libc, on every search; a sample landing in
//! libc while libgcc holds it would deadlock. Such programs should not take CPU profiles with
//! libc walked (there is no way to ask libgcc whether frames were registered).

use crate::stack::MAX_FRAMES;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Distinct stacks (per thread name) a session holds; samples of further stacks are lost.
pub(crate) const SLOTS: usize = 4096;

/// Slots looked at for one stack before the sample is counted lost.
const PROBES: usize = 64;

/// Frames walked beyond [`MAX_FRAMES`]: the handler's own and the signal trampoline, cut once
/// the interrupted frame is found.
const HANDLER_FRAMES: usize = 16;

/// Objects whose interrupted code is never walked: libgcc's unwinder is not reentrant, the
/// loader holds its locks while it maps objects, and the vDSO's unwind tables are not
/// libgcc's to read.
const ALWAYS_BLOCKED: [&[u8]; 3] = [b"libgcc", b"ld-linux", b"vdso"];

/// Objects whose code may hold the loader's lock (`dl_iterate_phdr`), which an unwinder that
/// searches with `dl_iterate_phdr` takes: never walked unless libgcc uses `_dl_find_object`.
const LOADER_LOCK_HOLDERS: [&[u8]; 2] = [b"libc.so", b"libpthread"];

/// Address ranges of the blocklisted objects' segments, found when a session starts.
const BLOCKED_RANGES: usize = 32;

/// One stack and how often it was found running.
#[repr(C)]
struct Slot {
    /// The stack's hash with its low bit set; 0 while the slot is free.
    key: AtomicU64,
    /// Set once `depth`, `thread` and `frames` are written.
    ready: AtomicBool,
    count: AtomicU64,
    contents: UnsafeCell<SlotContents>,
}

#[repr(C)]
struct SlotContents {
    depth: usize,
    thread: [u8; 16],
    /// Innermost first: the interrupted instruction's address plus one (so that it names like
    /// the return addresses after it, which are looked up one byte back), then return
    /// addresses.
    frames: [usize; MAX_FRAMES],
}

/// The session's table; null while no session samples.
static ACTIVE: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
/// The session's table from its mapping to its unmapping (longer than [`ACTIVE`]): what a
/// forked child unmaps.
static MAPPED: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers running now: the table is unmapped only once none is.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// Samples not counted: table full, or interrupted code on the blocklist.
static LOST: AtomicU64 = AtomicU64::new(0);
/// Start and end of each blocklisted segment, written before the handler is installed.
static BLOCKED: [(AtomicUsize, AtomicUsize); BLOCKED_RANGES] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; BLOCKED_RANGES];

/// The `SIGPROF` action a session replaced, put back when it ends (and in a forked child).
struct SavedAction {
    saved: AtomicBool,
    action: UnsafeCell<MaybeUninit<libc::sigaction>>,
}

// SAFETY: `action` is written only by the one session (the process-wide reservation makes
// sessions one at a time) before `saved` is set with Release, and read after `saved` is seen
// set with Acquire, by that session or by a forked child (which has only the forking thread).
unsafe impl Sync for SavedAction {}

static SAVED_ACTION: SavedAction = SavedAction {
    saved: AtomicBool::new(false),
    action: UnsafeCell::new(MaybeUninit::uninit()),
};

/// Why sampling could not start.
#[derive(Debug)]
pub(crate) struct StartError(pub(crate) std::io::Error);

/// A running session: the table mapped, the handler installed, the timer set. Dropping it
/// stops everything and gives the table's memory back.
pub(crate) struct Sampling {
    table: *mut Slot,
    /// The program's own `ITIMER_PROF`, put back at the end.
    host_timer: libc::itimerval,
    stopped: bool,
}

/// What a session counted.
pub(crate) struct Collected {
    /// Each distinct stack with its thread's name and count.
    pub(crate) stacks: Vec<(String, Vec<usize>, u64)>,
    /// Samples not counted (table full, or code that is never walked).
    pub(crate) lost: u64,
}

impl Sampling {
    /// Maps the table, installs the handler and starts the timer at `per_second` samples a
    /// second of CPU. The caller holds the process's one reservation.
    pub(crate) fn start(per_second: u32) -> Result<Sampling, StartError> {
        let bytes = table_bytes();
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it. Its zeroed
        // pages are free slots (every field of `Slot` is valid as zeroes).
        let table = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if table == libc::MAP_FAILED {
            return Err(StartError(std::io::Error::last_os_error()));
        }
        MAPPED.store(table.cast(), Ordering::SeqCst);
        let mut sampling = Sampling {
            table: table.cast(),
            host_timer: STOPPED,
            stopped: false,
        };
        find_blocked_ranges();
        crate::stack::prepare_unwinds();
        // libgcc's first unwind in a process initializes it (a `pthread_once`, in libc): done
        // here, not in the handler.
        crate::stack::unwind(&mut [0usize; 4]);
        LOST.store(0, Ordering::Relaxed);
        ACTIVE.store(sampling.table, Ordering::SeqCst);
        install_handler().map_err(StartError)?;
        sampling.host_timer = set_timer(timer_of(per_second)).map_err(StartError)?;
        Ok(sampling)
    }

    /// Stops sampling and reads what was counted; the table is unmapped.
    pub(crate) fn finish(mut self) -> Collected {
        self.stop();
        let mut stacks = Vec::new();
        for slot in self.slots() {
            if !slot.ready.load(Ordering::Acquire) {
                continue;
            }
            // SAFETY: `ready` was set after the contents were written, and no handler runs
            // any more (`stop` waited for the last): nothing writes the slot now.
            let contents = unsafe { &*slot.contents.get() };
            let name_length = contents
                .thread
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(contents.thread.len());
            let thread = String::from_utf8_lossy(&contents.thread[..name_length]).into_owned();
            let frames = contents.frames[..contents.depth.min(MAX_FRAMES)].to_vec();
            stacks.push((thread, frames, slot.count.load(Ordering::Relaxed)));
        }
        Collected {
            stacks,
            lost: LOST.load(Ordering::Relaxed),
        }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: the mapping holds `SLOTS` slots and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.table, SLOTS) }
    }

    /// Timer off, handler out, then waits for handlers already running to leave; the program's
    /// own timer back. Idempotent.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = set_timer(STOPPED);
        ACTIVE.store(std::ptr::null_mut(), Ordering::SeqCst);
        restore_handler();
        // A handler that saw the table counted itself in first (both SeqCst): once the count
        // is zero after the table was withdrawn, no handler can touch it. A handler walks a
        // few dozen frames; a second is generous.
        let deadline = Instant::now() + Duration::from_secs(1);
        while IN_HANDLER.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let host_timer = self.host_timer;
        if host_timer.it_value.tv_sec != 0 || host_timer.it_value.tv_usec != 0 {
            let _ = set_timer(host_timer);
        }
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        self.stop();
        if IN_HANDLER.load(Ordering::SeqCst) != 0 {
            // A handler still inside after a second (a thread stopped by a debugger): leave
            // the mapping rather than pull it from under it.
            return;
        }
        // SAFETY: the table was mapped with this size by `start`, no handler can reach it
        // (withdrawn and waited for), and `finish` has copied out what it needed.
        unsafe { libc::munmap(self.table.cast(), table_bytes()) };
        MAPPED.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

fn table_bytes() -> usize {
    SLOTS * std::mem::size_of::<Slot>()
}

/// In a forked child: no thread samples, and the timer was not inherited. The copy of the
/// parent's table is unmapped and the parent's `SIGPROF` action put back, so the child can
/// start a session of its own. Async-signal-safe: atomics, `munmap`, `sigaction`.
pub(crate) fn reset_in_child() {
    ACTIVE.store(std::ptr::null_mut(), Ordering::SeqCst);
    let table = MAPPED.swap(std::ptr::null_mut(), Ordering::SeqCst);
    IN_HANDLER.store(0, Ordering::SeqCst);
    restore_handler();
    if !table.is_null() {
        // SAFETY: the child's copy of the parent's mapping, which no thread of the child uses:
        // the parent's session thread does not exist here.
        unsafe { libc::munmap(table.cast(), table_bytes()) };
    }
}

fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed `sigaction` is valid; the handler has the `SA_SIGINFO` signature; the
    // old action is stored before `saved` is published (see `SavedAction`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigprof as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let old = (*SAVED_ACTION.action.get()).as_mut_ptr();
        if libc::sigaction(libc::SIGPROF, &action, old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    SAVED_ACTION.saved.store(true, Ordering::Release);
    Ok(())
}

/// Puts the program's `SIGPROF` action back; its default (terminate) as "ignore": a signal of
/// the stopped timer may still be pending (queued while the thread it hit had it blocked, as
/// in this handler), and stopping the timer does not withdraw it.
fn restore_handler() {
    if SAVED_ACTION.saved.swap(false, Ordering::AcqRel) {
        // SAFETY: `saved` was set, so `action` holds what `sigaction` wrote; the copy is
        // changed only in its handler field, to a valid disposition.
        unsafe {
            let mut action = (*SAVED_ACTION.action.get()).assume_init();
            if action.sa_sigaction == libc::SIG_DFL {
                action.sa_sigaction = libc::SIG_IGN;
            }
            libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut());
        }
    }
}

/// A stopped `ITIMER_PROF`.
const STOPPED: libc::itimerval = libc::itimerval {
    it_interval: libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    },
    it_value: libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    },
};

/// The timer of `per_second` samples a second of CPU time.
fn timer_of(per_second: u32) -> libc::itimerval {
    let interval = libc::timeval {
        tv_sec: 0,
        tv_usec: (1_000_000 / per_second.max(1)) as libc::suseconds_t,
    };
    libc::itimerval {
        it_interval: interval,
        it_value: interval,
    }
}

/// Sets `ITIMER_PROF`; the timer it replaced.
fn set_timer(timer: libc::itimerval) -> std::io::Result<libc::itimerval> {
    let mut old = STOPPED;
    // SAFETY: valid `itimerval`s, the old one written by the kernel.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, &mut old) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(old)
}

/// Records the blocklisted objects' segments for the handler (outside it: this walks the
/// loader's list, which takes its lock).
fn find_blocked_ranges() {
    struct Found {
        count: usize,
        lock_free_unwinder: bool,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the call, and
        // `data` is the `Found` passed below.
        let (info, found) = unsafe { (&*info, &mut *data.cast::<Found>()) };
        let name = if info.dlpi_name.is_null() {
            &[][..]
        } else {
            // SAFETY: a NUL-terminated name owned by the loader.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
        };
        let file = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
        // The vDSO is listed as `linux-vdso.so.1`; the executable, with an empty name.
        let named = |list: &[&[u8]]| list.iter().any(|b| file.windows(b.len()).any(|w| w == *b));
        let blocked =
            named(&ALWAYS_BLOCKED) || (!found.lock_free_unwinder && named(&LOADER_LOCK_HOLDERS));
        if !blocked {
            return 0;
        }
        for index in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
            let header = unsafe { &*info.dlpi_phdr.add(index) };
            if header.p_type != libc::PT_LOAD || found.count >= BLOCKED_RANGES {
                continue;
            }
            let start = (info.dlpi_addr as usize).wrapping_add(header.p_vaddr as usize);
            BLOCKED[found.count].0.store(start, Ordering::Relaxed);
            BLOCKED[found.count].1.store(
                start.wrapping_add(header.p_memsz as usize),
                Ordering::Relaxed,
            );
            found.count += 1;
        }
        0
    }
    let mut found = Found {
        count: 0,
        lock_free_unwinder: unwinder_is_lock_free(),
    };
    crate::symbolize::walking_loader_list(|| {
        // SAFETY: the callback has the right signature and only reads what the loader hands it.
        unsafe { libc::dl_iterate_phdr(Some(each), (&mut found as *mut Found).cast()) }
    });
    for range in &BLOCKED[found.count..] {
        range.0.store(0, Ordering::Relaxed);
        range.1.store(0, Ordering::Relaxed);
    }
    // The handler reads the ranges after `ACTIVE` is published (SeqCst), which orders these.
}

/// Whether the loaded libgcc finds unwind tables with `_dl_find_object` (lock-free,
/// async-signal-safe) rather than `dl_iterate_phdr` (the loader's lock): it imports the
/// symbol, which only a libgcc built for glibc 2.35+ does, and which only loads where glibc
/// provides it. Read once from libgcc's file; no libgcc found (a static unwinder), or one that
/// cannot be read: no.
fn unwinder_is_lock_free() -> bool {
    // An atomic, not a `OnceLock`: a child forked while another thread decides would find a
    // `OnceLock` initializing for ever and wait on it; here it decides again.
    const UNDECIDED: u8 = 0;
    const NO: u8 = 1;
    const YES: u8 = 2;
    static LOCK_FREE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(UNDECIDED);
    match LOCK_FREE.load(Ordering::Acquire) {
        NO => return false,
        YES => return true,
        _ => {}
    }
    let lock_free = crate::symbolize::loaded_module_infos()
        .into_iter()
        .find(|module| {
            module
                .path
                .rsplit('/')
                .next()
                .is_some_and(|file| file.starts_with("libgcc_s"))
        })
        .and_then(|module| imports_dl_find_object(std::path::Path::new(&module.path)))
        .unwrap_or(false);
    LOCK_FREE.store(if lock_free { YES } else { NO }, Ordering::Release);
    lock_free
}

/// Whether the object's file names `_dl_find_object` (its dynamic string table holds the
/// names it imports). `None`: unreadable, or larger than a libgcc would be.
fn imports_dl_find_object(path: &std::path::Path) -> Option<bool> {
    const LARGEST: u64 = 16 << 20;
    if std::fs::metadata(path).ok()?.len() > LARGEST {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let name = b"\0_dl_find_object\0";
    Some(bytes.windows(name.len()).any(|w| w == name))
}

fn blocked(address: usize) -> bool {
    BLOCKED.iter().any(|(start, end)| {
        let (start, end) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
        start <= address && address < end
    })
}

/// The address the signal interrupted, from the handler's context.
fn interrupted_address(context: *mut libc::c_void) -> Option<usize> {
    if context.is_null() {
        return None;
    }
    let context = context.cast::<libc::ucontext_t>();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: the kernel passes a valid `ucontext_t` to an `SA_SIGINFO` handler.
        Some(unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] } as usize)
    }
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    {
        // SAFETY: as above.
        Some(unsafe { (*context).uc_mcontext.pc } as usize)
    }
    #[cfg(not(any(
        all(target_arch = "x86_64", target_os = "linux"),
        all(target_arch = "aarch64", target_os = "linux")
    )))]
    {
        let _ = context;
        None
    }
}

extern "C" fn on_sigprof(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: `__errno_location` is this thread's errno, which the handler must leave as the
    // interrupted code had it.
    let errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let table = ACTIVE.load(Ordering::SeqCst);
    if !table.is_null() {
        record(table, context);
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn record(table: *mut Slot, context: *mut libc::c_void) {
    let Some(pc) = interrupted_address(context) else {
        LOST.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if blocked(pc) {
        LOST.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut walked = [0usize; MAX_FRAMES + HANDLER_FRAMES];
    let depth = crate::stack::unwind(&mut walked);
    // The walk starts in this handler; the interrupted frame is the one at `pc` (libgcc gives
    // a signal frame's exact address). Not found (the trampoline not unwound): the leaf alone.
    let frames = match walked[..depth.min(HANDLER_FRAMES)]
        .iter()
        .position(|&ip| ip == pc)
    {
        Some(at) => &mut walked[at..depth],
        None => {
            walked[0] = pc;
            &mut walked[..1]
        }
    };
    frames[0] = pc.wrapping_add(1);
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the buffer: a plain
    // system call, safe in a signal handler.
    unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            thread.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let key = hash(frames, &thread) | 1;
    // SAFETY: the table holds `SLOTS` slots and stays mapped while this handler is counted in
    // `IN_HANDLER` and saw it published.
    let slots = unsafe { std::slice::from_raw_parts(table, SLOTS) };
    for probe in 0..PROBES {
        let slot = &slots[(key as usize).wrapping_add(probe) % SLOTS];
        match slot
            .key
            .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: this handler claimed the free slot; nothing else writes it, and the
                // reader waits for `ready`.
                let contents = unsafe { &mut *slot.contents.get() };
                contents.depth = frames.len();
                contents.thread = thread;
                contents.frames[..frames.len()].copy_from_slice(frames);
                slot.count.fetch_add(1, Ordering::Relaxed);
                slot.ready.store(true, Ordering::Release);
                return;
            }
            // The same stack (a 64-bit hash of frames and thread name; a collision merges two
            // stacks, as likely as two random 64-bit numbers matching).
            Err(existing) if existing == key => {
                slot.count.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {}
        }
    }
    LOST.fetch_add(1, Ordering::Relaxed);
}

/// FNV-1a over the frames and the thread's name, then mixed.
fn hash(frames: &[usize], thread: &[u8; 16]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut add = |word: u64| {
        hash = (hash ^ word).wrapping_mul(0x0100_0000_01b3);
    };
    for &frame in frames {
        add(frame as u64);
    }
    for chunk in thread.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        add(u64::from_le_bytes(word));
    }
    hash ^= hash >> 33;
    hash.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_slot_is_all_zeroes_and_the_table_is_small() {
        assert!(table_bytes() < 4 << 20, "{} bytes", table_bytes());
        // SAFETY: zeroed memory is what a fresh mapping holds.
        let slot: Slot = unsafe { std::mem::zeroed() };
        assert_eq!(slot.key.load(Ordering::Relaxed), 0);
        assert!(!slot.ready.load(Ordering::Relaxed));
    }

    #[test]
    fn libgcc_is_blocked_libc_unless_libgcc_is_lock_free_and_this_code_never() {
        find_blocked_ranges();
        let libc_code = libc::getpid as *const () as usize;
        assert_eq!(
            blocked(libc_code),
            !unwinder_is_lock_free(),
            "libc's getpid at {libc_code:#x}"
        );
        // SAFETY: looking a symbol up by a NUL-terminated name.
        let unwinder = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Unwind_Backtrace".as_ptr()) };
        assert!(!unwinder.is_null());
        assert!(blocked(unwinder as usize), "libgcc's _Unwind_Backtrace");
        let here = hash as *const () as usize;
        assert!(!blocked(here));
    }

    #[test]
    fn a_libgcc_for_glibc_2_35_imports_dl_find_object() {
        let dir = std::env::temp_dir().join(format!("heapwatch-libgcc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let new = dir.join("new.so");
        std::fs::write(
            &new,
            b"\x7fELF...\0_Unwind_Find_FDE\0_dl_find_object\0GLIBC_2.35\0",
        )
        .unwrap();
        let old = dir.join("old.so");
        std::fs::write(&old, b"\x7fELF...\0_Unwind_Find_FDE\0dl_iterate_phdr\0").unwrap();
        assert_eq!(imports_dl_find_object(&new), Some(true));
        assert_eq!(imports_dl_find_object(&old), Some(false));
        assert_eq!(imports_dl_find_object(&dir.join("absent.so")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hashes_tell_stacks_and_threads_apart() {
        let a = hash(&[1, 2, 3], b"main\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_ne!(a, hash(&[1, 2, 4], b"main\0\0\0\0\0\0\0\0\0\0\0\0"));
        assert_ne!(a, hash(&[1, 2, 3], b"work\0\0\0\0\0\0\0\0\0\0\0\0"));
        assert_eq!(a, hash(&[1, 2, 3], b"main\0\0\0\0\0\0\0\0\0\0\0\0"));
    }
}
