//! The caching DWARF unwinder: framehop over the `.eh_frame` of the objects loaded in this
//! process, read in place from their memory.
//!
//! libgcc's `_Unwind_Backtrace` finds and interprets the unwind tables of every frame, every
//! time: ~80–150 ns a frame. framehop keeps the rule it derived for a return address in a
//! cache (509 slots, direct-mapped), so a stack seen before costs one cache probe and two or
//! three stack reads a frame (~13 ns). Two return addresses of one stack that share a slot
//! (addresses equal modulo 509) evict each other and cost a table lookup (~200 ns) at every
//! sample: seen once in a test program; framehop's cache is not ours to change. What it
//! needs, and where it comes from:
//!
//! * **The objects and their unwind tables.** Not from `dl_iterate_phdr` (a lock glibc does not
//!   reset in a forked child, and contention between sampling threads) but from glibc's
//!   `_dl_find_object` (2.35+), which libgcc itself uses: lock-free, async-signal-safe, ~9 ns.
//!   It gives the mapping that holds an address (the whole object if its segments are
//!   contiguous, else that segment alone), the object's load bias and `PT_GNU_EH_FRAME` (the
//!   `.eh_frame_hdr` search table), which points to `.eh_frame`; tables outside the mapping of
//!   the code are checked to lie in another mapping of the same object (`FoundObject::holds`:
//!   a build whose read-only segment is followed by a gap page, which lld leaves in some
//!   layouts, is reported a segment at a time). An object is added the first time one of its
//!   return addresses is met (outside the frame loop, under the write lock; it allocates).
//!   Without `_dl_find_object` (older glibc) every stack goes to libgcc.
//! * **Validity (`dlclose`).** framehop reads an object's tables in place, so they must still be
//!   mapped. Before the first frame of each object in a walk, `_dl_find_object` must report the
//!   same object (range and `.eh_frame_hdr`) as the one added; an object whose code is on the
//!   stack being walked cannot be unloaded meanwhile. A return address in no loaded object ends
//!   the walk there (libgcc, which reads the code at such an address looking for a signal
//!   trampoline, is not asked about that chain: it may fault). One in an object not added yet,
//!   or replaced since, has the object added (outside the walk) and the walk started again.
//! * **Stack reads.** Every read goes through one closure that checks the address against the
//!   bounds of the stack the walk started on: the thread's own stack, from the stack pointer to
//!   its top (`stack_containing` in `stack`, as the frame-pointer walk). On a signal stack or a stack of
//!   unknown bounds (coroutine, `stacker` segment) nothing is walked: libgcc unwinds it.
//! * **No allocation during a walk** (`MustNotAllocateDuringUnwind`), and no waiting: the
//!   module list is an `RwLock` taken with `try_read` (a writer is adding an object, or a fork
//!   is under way: libgcc unwinds this sample), and a walk takes one of [`CACHE_SLOTS`] caches
//!   with `try_lock` (all busy: libgcc). The fork handlers take both ([`Rank::Unwinder`]).
//!
//! **Trust.** framehop unwinds a frame it cannot interpret (no FDE, a signal frame's CFA
//! expression) by the frame-pointer chain, which in a build without frame pointers gives a
//! plausible but wrong caller. So a frame is trusted only once libgcc unwound it the same way:
//! a chain with a return address not confirmed yet (in a table of [`CONFIRMED_SLOTS`]) is
//! unwound by libgcc as well; if the two agree, every return address in it is confirmed, if
//! not, libgcc's chain is used and nothing is. The rule at a return address is a property of
//! the code there, so a frame confirmed in one chain unwinds the same way in every other. A
//! service's allocation paths repeat, so after warm-up nearly every sample is a cached walk and
//! a probe per frame. Not confirmed: a chain that ends at a return
//! address in no loaded object (libgcc may fault there), kept up to that frame. (On a signal
//! frame the raw walk does disagree, and libgcc's chain is kept: `tests/unwind_compare.rs`.)
//!
//! **Memory**: each cache is ~50 KiB (framehop preallocates DWARF evaluation space), built on
//! first use, at most [`CACHE_SLOTS`]; each object a few hundred bytes. Allocated through the
//! global allocator (framehop's containers), measured and held out of the program's counters
//! like the DWARF reader's (`thread_state::hold_for_profiler`).

use crate::fork::{GuardSlot, HeldAcrossFork, Hooks, Rank};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _,
};
use std::ffi::c_void;
use std::ops::{Deref, Range};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard, TryLockError};

/// What the walk needs of the rest of stack capture, handed in (this module imports nothing of
/// its parent's).
#[derive(Clone, Copy)]
pub(super) struct Host {
    /// The top of the calling thread's own stack, if the stack pointer given lies in it and its
    /// bounds are known (`[sp, top)` then is mapped and readable while the thread runs on it).
    pub(super) own_stack_top: fn(usize) -> Option<usize>,
    /// libgcc's unwinder, writing return addresses innermost first; returns how many.
    pub(super) libgcc: fn(&mut [usize]) -> usize,
}

/// How the caching unwinder compares with libgcc's at one stack: test support, not API.
#[derive(Debug)]
pub enum Comparison {
    /// Both unwound; the chains agree over this many frames.
    Agree(usize),
    /// Both unwound and disagree.
    Disagree {
        /// The cached walk.
        cached: Vec<usize>,
        /// libgcc's.
        libgcc: Vec<usize>,
    },
    /// The caching unwinder gave the stack to libgcc (a stack of unknown bounds, a frame it
    /// cannot walk, a lock busy, or it is not built), or its walk ended at an address in no
    /// loaded object (where libgcc may fault: not compared).
    NotWalked,
}

type Cache = CacheX86_64<MustNotAllocateDuringUnwind>;

/// The deepest chain compared with libgcc's (`stack::MAX_FRAMES`).
const MAX_FRAMES: usize = 64;
type FramehopUnwinder = UnwinderX86_64<LoadedBytes, MustNotAllocateDuringUnwind>;

/// Caches, each used by one walk at a time: two threads sampling at once both walk cached.
/// 4: sampling is rare enough that more than four at once is rarer still (those unwind with
/// libgcc), and each cache costs ~50 KiB.
pub(super) const CACHE_SLOTS: usize = 4;

/// Objects added in one sample before giving it to libgcc: the first sample of a process meets
/// the program, libc and perhaps a library or two.
const OBJECTS_ADDED_PER_SAMPLE: usize = 8;

/// The unwinder's state: the objects known, and the caches.
struct Unwinding {
    modules: RwLock<Option<Modules>>,
    caches: [Mutex<Option<Cache>>; CACHE_SLOTS],
}

static UNWINDING: HeldAcrossFork<Unwinding> = HeldAcrossFork::new(
    Rank::Unwinder,
    &FORK_HOOKS,
    Unwinding {
        modules: RwLock::new(None),
        caches: [const { Mutex::new(None) }; CACHE_SLOTS],
    },
);

type HeldForFork = (
    RwLockWriteGuard<'static, Option<Modules>>,
    [MutexGuard<'static, Option<Cache>>; CACHE_SLOTS],
);

static HELD_FOR_FORK: GuardSlot<HeldForFork> = GuardSlot::new();

/// A fork waits for walks under way (they never wait for anything), so that the child finds
/// no lock of ours held. Nothing to forget in the child: the objects are mapped at the same
/// addresses there.
static FORK_HOOKS: Hooks = Hooks {
    take: |forking| {
        let unwinding = UNWINDING.for_fork(forking);
        let modules = unwinding
            .modules
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let caches = unwinding
            .caches
            .each_ref()
            .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner));
        HELD_FOR_FORK.keep(forking, (modules, caches));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

/// Return addresses whose frames the cached walk has unwound as libgcc does, direct-mapped by
/// address; 0 is an empty slot. 8192 × 8 bytes, static. Per address, not per chain: the rule
/// framehop applies at a return address is a property of the code there, so once a chain
/// through it agreed with libgcc, every chain through it unwinds that frame the same way;
/// and a service has far fewer distinct return addresses on its allocation paths than distinct
/// chains. An address whose slot another took is confirmed again (one libgcc unwind).
pub(super) const CONFIRMED_SLOTS: usize = 8192;
static CONFIRMED: [AtomicUsize; CONFIRMED_SLOTS] = [const { AtomicUsize::new(0) }; CONFIRMED_SLOTS];

fn confirmed_slot(return_address: usize) -> &'static AtomicUsize {
    // Fibonacci hashing: return addresses cluster, their low bits alone would collide.
    let slot = (return_address as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 51;
    &CONFIRMED[slot as usize % CONFIRMED_SLOTS]
}

/// Whether every frame of `chain` was unwound as libgcc does before.
fn chain_confirmed(chain: &[usize]) -> bool {
    !chain.is_empty()
        && chain
            .iter()
            .all(|&ra| ra != 0 && confirmed_slot(ra).load(Ordering::Relaxed) == ra)
}

/// Chains where the cached walk and libgcc disagreed (libgcc's was used).
static DISAGREEMENTS: AtomicU64 = AtomicU64::new(0);

/// Unwinds the calling thread's stack into `frames` (return addresses, innermost first, the
/// convention of libgcc's unwinder); `None` when the stack must go to libgcc: no
/// `_dl_find_object`, a stack of unknown bounds, a lock busy, or a frame the cache cannot walk.
#[inline(never)]
pub(super) fn unwind(frames: &mut [usize], host: Host) -> Option<usize> {
    let (depth, end) = walk_cached(frames, host)?;
    if end == End::OutsideObjects {
        // libgcc would read the code at that address (looking for a signal trampoline) and
        // may fault: the walk's frames up to there are kept unconfirmed.
        return Some(depth);
    }
    if chain_confirmed(&frames[..depth]) {
        return Some(depth);
    }
    let mut checked = [0usize; MAX_FRAMES];
    let checked = &mut checked[..frames.len().min(MAX_FRAMES)];
    let checked_depth = (host.libgcc)(checked);
    if chains_agree(&frames[..depth], &checked[..checked_depth], frames.len()) {
        // The frames before the first shared one are the two unwinders' own, reached the same
        // way at every sample: the walk got past them correctly, so they are confirmed too.
        for &ra in &frames[..depth] {
            confirmed_slot(ra).store(ra, Ordering::Relaxed);
        }
        Some(depth)
    } else {
        DISAGREEMENTS.fetch_add(1, Ordering::Relaxed);
        frames[..checked.len()].copy_from_slice(checked);
        Some(checked_depth)
    }
}

/// Unwinds here with both unwinders, bypassing the confirmed chains: for tests.
#[inline(never)]
pub(super) fn compare_here(host: Host) -> Comparison {
    let mut walked = [0usize; MAX_FRAMES];
    let Some((depth, End::Complete)) = walk_cached(&mut walked, host) else {
        return Comparison::NotWalked;
    };
    let mut checked = [0usize; MAX_FRAMES];
    let checked_depth = (host.libgcc)(&mut checked);
    let (walked, checked) = (&walked[..depth], &checked[..checked_depth]);
    match aligned(walked, checked, MAX_FRAMES) {
        Some(common) => Comparison::Agree(common),
        None => Comparison::Disagree {
            cached: walked.to_vec(),
            libgcc: checked.to_vec(),
        },
    }
}

/// Chains where the two unwinders disagreed since start (libgcc's was kept).
pub(super) fn disagreements() -> u64 {
    DISAGREEMENTS.load(Ordering::Relaxed)
}

/// Whether a cached walk and libgcc's unwind of the same stack (started from different places
/// in the same function) give the same chain. See [`aligned`].
fn chains_agree(walked: &[usize], checked: &[usize], max_frames: usize) -> bool {
    aligned(walked, checked, max_frames).is_some()
}

/// Innermost frames of either chain that may precede the first frame they share: the
/// unwinders' own frames, called from different places.
const INNER_SLACK: usize = 4;

/// If the chains agree, the number of frames compared. They are aligned on the first return
/// address of `walked` found in `checked` (within [`INNER_SLACK`] frames of both starts); from
/// there they must be equal, and of equal length unless one was cut at `max_frames`. libgcc
/// ends a complete chain with a null frame, which is not compared.
fn aligned(walked: &[usize], checked: &[usize], max_frames: usize) -> Option<usize> {
    let checked = match checked.iter().rposition(|&ip| ip != 0) {
        Some(last) => &checked[..=last],
        None => return None,
    };
    let (from_walked, from_checked) =
        walked
            .iter()
            .take(INNER_SLACK + 1)
            .enumerate()
            .find_map(|(i, ra)| {
                let j = checked.iter().take(INNER_SLACK + 1).position(|c| c == ra)?;
                Some((i, j))
            })?;
    let (walked, checked) = (&walked[from_walked..], &checked[from_checked..]);
    let common = walked.len().min(checked.len());
    let cut = |chain: &[usize], from: usize| chain.len() + from >= max_frames;
    let same_end = walked.len() == checked.len()
        || (walked.len() < checked.len() && cut(walked, from_walked))
        || (checked.len() < walked.len() && cut(checked, from_checked));
    (common > 0 && same_end && walked[..common] == checked[..common]).then_some(common)
}

/// The cached walk: takes a cache and the module list, adding objects met on the way.
fn walk_cached(frames: &mut [usize], host: Host) -> Option<(usize, End)> {
    let find = dl_find_object()?;
    let unwinding: &Unwinding = &UNWINDING;
    for slot in &unwinding.caches {
        let mut cache = match slot.try_lock() {
            Ok(cache) => cache,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => continue,
        };
        if cache.is_none() {
            let (built, grown) = measured(Cache::new_in);
            crate::thread_state::hold_for_profiler(grown.0, grown.1);
            *cache = Some(built);
        }
        let cache = cache.as_mut()?;
        return walk_adding_objects(frames, &unwinding.modules, cache, find, host);
    }
    None
}

fn walk_adding_objects(
    frames: &mut [usize],
    modules: &RwLock<Option<Modules>>,
    cache: &mut Cache,
    find: DlFindObject,
    host: Host,
) -> Option<(usize, End)> {
    for _ in 0..OBJECTS_ADDED_PER_SAMPLE {
        let walked = {
            let modules = match modules.try_read() {
                Ok(modules) => modules,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            };
            match modules.as_ref() {
                Some(modules) => walk(frames, modules, cache, find, host),
                None => Walked::NeedObject(None),
            }
        };
        match walked {
            Walked::Done(depth, end) => return Some((depth, end)),
            Walked::GiveUp => return None,
            Walked::NeedObject(found) => {
                let mut modules = match modules.try_write() {
                    Ok(modules) => modules,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => return None,
                };
                let ((), grown) = measured(|| {
                    let modules = modules.get_or_insert_with(Modules::new);
                    if let Some(found) = found {
                        modules.add(found, find);
                    }
                });
                crate::thread_state::hold_for_profiler(grown.0, grown.1);
            }
        }
    }
    None
}

/// Runs `f` and returns the heap (bytes, blocks) this thread gained meanwhile, as the DWARF
/// reader measures what it holds.
fn measured<T>(f: impl FnOnce() -> T) -> (T, (i64, i64)) {
    let before = crate::thread_state::thread_net().unwrap_or((0, 0));
    let out = f();
    let after = crate::thread_state::thread_net().unwrap_or(before);
    (out, (after.0 - before.0, after.1 - before.1))
}

/// How a walk ended.
enum Walked {
    /// This many frames, to the end said.
    Done(usize, End),
    /// A frame in an object not added yet (or replaced since): add it and walk again.
    /// `None`: no module list yet.
    NeedObject(Option<FoundObject>),
    /// A frame that cannot be walked here: libgcc unwinds the stack.
    GiveUp,
}

/// Where a finished walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// At the stack's end (as its unwind tables say), or where `frames` was full.
    Complete,
    /// At a return address in no loaded object (not kept): a corrupt stack, or code without
    /// an object (JIT). libgcc is not asked to confirm such a chain.
    OutsideObjects,
}

/// Walks the calling thread's stack from this function's own frame; the return addresses
/// start with the one into this function's caller.
#[inline(never)]
fn walk(
    frames: &mut [usize],
    modules: &Modules,
    cache: &mut Cache,
    find: DlFindObject,
    host: Host,
) -> Walked {
    let (pc, sp, bp): (u64, u64, u64);
    // SAFETY: reads the instruction pointer (of the next instruction, in this function), the
    // stack pointer and the frame pointer into locals, together, so that they describe one
    // point of this function for its unwind rule; no memory is touched, no flag changes.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let Some(top) = (host.own_stack_top)(sp as usize) else {
        return Walked::GiveUp;
    };
    let (low, high) = (sp, top as u64);
    let mut read_stack = |address: u64| -> Result<u64, ()> {
        let in_bounds = address >= low
            && address.is_multiple_of(8)
            && address.checked_add(8).is_some_and(|end| end <= high);
        if !in_bounds {
            return Err(());
        }
        // SAFETY: `[address, address + 8)` is aligned and lies within `[sp, top)` of the stack
        // this thread runs on, mapped and readable while it does (`Host::own_stack_top`).
        Ok(unsafe { (address as *const u64).read() })
    };
    let mut regs = UnwindRegsX86_64::new(pc, sp, bp);
    let mut address = FrameAddress::from_instruction_pointer(pc);
    let mut validated = 0..0;
    let mut depth = 0;
    while depth < frames.len() {
        let lookup = address.address_for_lookup();
        if !validated.contains(&lookup) {
            match modules.validate(lookup, find) {
                Ok(range) => validated = range,
                // That address, the last frame recorded, is not code: the chain ends before it.
                Err(Walked::Done(_, end)) => return Walked::Done(depth.saturating_sub(1), end),
                Err(walked) => return walked,
            }
        }
        match modules
            .unwinder
            .unwind_frame(address, &mut regs, cache, &mut read_stack)
        {
            Ok(Some(return_address)) => {
                frames[depth] = return_address as usize;
                depth += 1;
                match FrameAddress::from_return_address(return_address) {
                    Some(next) => address = next,
                    None => break,
                }
            }
            Ok(None) => break,
            Err(_) => return Walked::GiveUp,
        }
    }
    Walked::Done(depth, End::Complete)
}

/// The objects known to the walk, and framehop's view of the same.
struct Modules {
    unwinder: FramehopUnwinder,
    /// Sorted by `start`, not overlapping.
    known: Vec<KnownObject>,
}

/// An object as `_dl_find_object` reported it when added.
struct KnownObject {
    start: u64,
    end: u64,
    eh_frame_hdr: usize,
    /// Whether framehop has its tables (false: unsupported encoding; libgcc unwinds there).
    usable: bool,
}

impl Modules {
    fn new() -> Self {
        Modules {
            unwinder: FramehopUnwinder::new(),
            known: Vec::new(),
        }
    }

    /// The range of the loaded object holding `lookup`, if it is the one added (so its tables
    /// are mapped while its code is on the stack).
    fn validate(&self, lookup: u64, find: DlFindObject) -> Result<Range<u64>, Walked> {
        let Some(found) = FoundObject::containing(lookup, find) else {
            return Err(Walked::Done(0, End::OutsideObjects));
        };
        let index = self.known.partition_point(|known| known.start <= lookup);
        match index.checked_sub(1).map(|i| &self.known[i]) {
            Some(known)
                if known.start == found.start
                    && known.end == found.end
                    && known.eh_frame_hdr == found.eh_frame_hdr =>
            {
                if known.usable {
                    Ok(known.start..known.end)
                } else {
                    Err(Walked::GiveUp)
                }
            }
            _ => Err(Walked::NeedObject(Some(found))),
        }
    }

    /// Adds `found`, dropping the objects it replaces (unloaded, their range reused).
    fn add(&mut self, found: FoundObject, find: DlFindObject) {
        let overlaps = |known: &KnownObject| known.start < found.end && found.start < known.end;
        for known in self.known.iter().filter(|known| overlaps(known)) {
            if known.usable {
                self.unwinder.remove_module(known.start);
            }
        }
        self.known.retain(|known| !overlaps(known));
        let sections = found.sections(find);
        if let Some(sections) = &sections {
            let svma = |range: &Range<usize>| {
                (range.start as u64).wrapping_sub(found.bias)
                    ..(range.end as u64).wrapping_sub(found.bias)
            };
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                eh_frame_hdr_svma: Some(svma(&sections.eh_frame_hdr)),
                eh_frame_hdr: Some(LoadedBytes(sections.eh_frame_hdr.clone())),
                eh_frame_svma: Some(svma(&sections.eh_frame)),
                eh_frame: Some(LoadedBytes(sections.eh_frame.clone())),
                ..Default::default()
            };
            self.unwinder.add_module(framehop::Module::new(
                String::new(),
                found.start..found.end,
                found.bias,
                info,
            ));
        }
        let at = self
            .known
            .partition_point(|known| known.start < found.start);
        self.known.insert(
            at,
            KnownObject {
                start: found.start,
                end: found.end,
                eh_frame_hdr: found.eh_frame_hdr,
                usable: sections.is_some(),
            },
        );
    }
}

/// Bytes of a loaded object's unwind tables, in place. The default is empty.
#[derive(Default)]
struct LoadedBytes(Range<usize>);

impl Deref for LoadedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.0.is_empty() {
            return &[];
        }
        // SAFETY: the range was found inside a loaded object's `PT_GNU_EH_FRAME` and
        // `.eh_frame`, within mappings of that object (`FoundObject::sections`), which stay
        // mapped as long as the object is loaded. framehop reads a module's tables only to
        // unwind a frame of that module, and every walk first checks that the object is the
        // one loaded now (`Modules::validate`): an object with code on the stack being walked
        // stays loaded until the walk ends.
        unsafe { std::slice::from_raw_parts(self.0.start as *const u8, self.0.len()) }
    }
}

/// glibc's `struct dl_find_object` (`<dlfcn.h>`, 2.35).
#[repr(C)]
struct DlFindObjectResult {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

type DlFindObject = unsafe extern "C" fn(*mut c_void, *mut DlFindObjectResult) -> c_int;

/// `_dl_find_object`: 0 not looked up yet, 1 absent (glibc before 2.35), else its address.
static DL_FIND_OBJECT: AtomicUsize = AtomicUsize::new(0);

/// Looked up at run time, so that the program still starts on an older glibc.
fn dl_find_object() -> Option<DlFindObject> {
    let mut address = DL_FIND_OBJECT.load(Ordering::Relaxed);
    if address == 0 {
        // SAFETY: `dlsym` with `RTLD_DEFAULT` and a NUL-terminated name has no other
        // precondition; it takes the loader's lock, which glibc resets in a forked child.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
        address = if symbol.is_null() { 1 } else { symbol as usize };
        DL_FIND_OBJECT.store(address, Ordering::Relaxed);
    }
    // SAFETY: a non-null `_dl_find_object` from glibc has the type declared in `<dlfcn.h>`.
    (address != 1).then(|| unsafe { std::mem::transmute::<usize, DlFindObject>(address) })
}

/// A loaded object, as `_dl_find_object` reports it: the mapping that holds the address asked
/// about. That is the whole object only if its segments are contiguous; otherwise (a page left
/// between two `PT_LOAD` segments, as the linker lays out some builds) glibc reports each
/// segment on its own, and the one holding code is not the one holding the unwind tables.
#[derive(Clone, Copy, Debug)]
struct FoundObject {
    start: u64,
    end: u64,
    /// Load bias: runtime address − address stated in the file.
    bias: u64,
    /// Its `PT_GNU_EH_FRAME` segment; 0 if none.
    eh_frame_hdr: usize,
    /// Its `struct link_map`: tells this object's other mappings from another object's.
    link_map: usize,
}

/// Where a loaded object's unwind tables lie.
struct Sections {
    eh_frame_hdr: Range<usize>,
    eh_frame: Range<usize>,
}

impl FoundObject {
    fn containing(address: u64, find: DlFindObject) -> Option<FoundObject> {
        // SAFETY: all-zero is a valid `dl_find_object` (integers and null pointers).
        let mut result: DlFindObjectResult = unsafe { std::mem::zeroed() };
        // SAFETY: `_dl_find_object` only writes `result` and reads the loader's own tables
        // (lock-free, async-signal-safe: glibc's documentation).
        if unsafe { find(address as *mut c_void, &mut result) } != 0 || result.link_map.is_null() {
            return None;
        }
        // SAFETY: a successful call points `dlfo_link_map` to the object's `struct link_map`,
        // whose first member is `l_addr`, the load bias (`<link.h>`).
        let bias = unsafe { *(result.link_map as *const u64) };
        Some(FoundObject {
            start: result.map_start as u64,
            end: result.map_end as u64,
            bias,
            eh_frame_hdr: result.eh_frame as usize,
            link_map: result.link_map as usize,
        })
    }

    /// Whether `[at, at + bytes)` lies in one mapping of this object: the one found, or the one
    /// the loader reports for `at` if it belongs to the same object (the object's segments are
    /// not contiguous: its `.eh_frame_hdr` and `.eh_frame` lie in a read-only segment, its code
    /// in another). A mapping of the object stays mapped as long as the object.
    fn holds(&self, at: usize, bytes: usize, find: DlFindObject) -> bool {
        let Some(end) = (at as u64).checked_add(bytes as u64) else {
            return false;
        };
        let within = |start: u64, stop: u64| start <= at as u64 && end <= stop;
        within(self.start, self.end)
            || FoundObject::containing(at as u64, find).is_some_and(|other| {
                other.link_map == self.link_map && within(other.start, other.end)
            })
    }

    /// Finds `.eh_frame_hdr` and `.eh_frame` from the `PT_GNU_EH_FRAME` segment alone. Only
    /// the encodings every x86_64 linker writes are read (`.eh_frame` pointer pc-relative,
    /// count unsigned, table relative to the header, all 4-byte); others give `None`. The end
    /// of `.eh_frame` is the end of its last FDE (its CIEs come before the FDEs that use them).
    fn sections(&self, find: DlFindObject) -> Option<Sections> {
        const VERSION: u8 = 1;
        const PCREL_SDATA4: u8 = 0x1b;
        const UDATA4: u8 = 0x03;
        const DATAREL_SDATA4: u8 = 0x3b;
        let hdr = self.eh_frame_hdr;
        let inside = |at: usize, bytes: usize| self.holds(at, bytes, find);
        if hdr == 0 || !inside(hdr, 12) {
            return None;
        }
        // SAFETY: the 12 bytes lie in the object's `PT_GNU_EH_FRAME` segment (the loader
        // reported it), within a mapping of the object (`holds`); read unaligned, as they may
        // be.
        let read_u32 = |at: usize| unsafe { (at as *const u32).read_unaligned() };
        // SAFETY: as above.
        let header = unsafe { (hdr as *const [u8; 4]).read() };
        if header != [VERSION, PCREL_SDATA4, UDATA4, DATAREL_SDATA4] {
            return None;
        }
        let eh_frame = (hdr + 4).wrapping_add_signed(read_u32(hdr + 4) as i32 as isize);
        let count = read_u32(hdr + 8) as usize;
        let table = hdr + 12;
        let hdr_end = table.checked_add(count.checked_mul(8)?)?;
        if !inside(table, count * 8) {
            return None;
        }
        // The FDE furthest into `.eh_frame` ends it.
        let mut last_fde = None::<usize>;
        for entry in 0..count {
            let fde = hdr.wrapping_add_signed(read_u32(table + entry * 8 + 4) as i32 as isize);
            if fde < eh_frame {
                return None;
            }
            last_fde = Some(last_fde.map_or(fde, |last| last.max(fde)));
        }
        let last_fde = last_fde?;
        if !inside(last_fde, 4) {
            return None;
        }
        let length = read_u32(last_fde) as usize;
        // 0xffffffff announces a 64-bit length, which no x86_64 linker writes.
        if length == 0xffff_ffff {
            return None;
        }
        let eh_frame_end = last_fde.checked_add(4 + length)?;
        if !inside(eh_frame, eh_frame_end.checked_sub(eh_frame)?) {
            return None;
        }
        Some(Sections {
            eh_frame_hdr: hdr..hdr_end,
            eh_frame: eh_frame..eh_frame_end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread's stack from glibc (`pthread_getattr_np`), and libgcc through `backtrace`.
    const TEST_HOST: Host = Host {
        own_stack_top: |sp| {
            // SAFETY: `attributes` is initialised by `pthread_getattr_np` before it is read and
            // destroyed after.
            unsafe {
                let mut attributes: libc::pthread_attr_t = std::mem::zeroed();
                if libc::pthread_getattr_np(libc::pthread_self(), &mut attributes) != 0 {
                    return None;
                }
                let mut base: *mut libc::c_void = std::ptr::null_mut();
                let mut size: libc::size_t = 0;
                let ok = libc::pthread_attr_getstack(&attributes, &mut base, &mut size) == 0;
                libc::pthread_attr_destroy(&mut attributes);
                let (low, high) = (base as usize, base as usize + size);
                (ok && low <= sp && sp < high).then_some(high)
            }
        },
        libgcc: |frames| {
            let mut depth = 0;
            backtrace::trace(|frame| {
                if depth >= frames.len() {
                    return false;
                }
                frames[depth] = frame.ip() as usize;
                depth += 1;
                true
            });
            depth
        },
    };

    #[test]
    fn chains_align_on_their_first_shared_frame() {
        // Different own frames (1, 2 against 7), then the same chain; libgcc's null end.
        let aligned = |walked: &[usize], checked: &[usize]| aligned(walked, checked, MAX_FRAMES);
        assert_eq!(aligned(&[1, 2, 10, 11, 12], &[7, 10, 11, 12, 0]), Some(3));
        // A frame the cached walk skipped.
        assert_eq!(aligned(&[1, 10, 12], &[7, 10, 11, 12, 0]), None);
        // A chain that goes on where the other ended.
        assert_eq!(aligned(&[1, 10, 11], &[7, 10, 11, 12]), None);
        assert_eq!(aligned(&[1, 10, 11, 12, 13], &[7, 10, 11, 12]), None);
        // Nothing in common near the start.
        assert_eq!(aligned(&[1, 2, 3, 4, 5, 6, 10], &[7, 10]), None);
        assert_eq!(aligned(&[1], &[0]), None);
        // Cut at the frame limit: the shorter chain was cut, the common part is compared.
        let walked: Vec<usize> = (100..100 + MAX_FRAMES).collect();
        let mut checked = vec![7, 8];
        checked.extend(101..100 + MAX_FRAMES - 1);
        assert_eq!(checked.len(), MAX_FRAMES);
        assert_eq!(aligned(&walked, &checked), Some(MAX_FRAMES - 2));
    }

    #[test]
    fn a_chain_is_confirmed_only_when_every_frame_is() {
        let chain = [0x7a00_0010, 0x7a00_0abc, 0x7a01_0000];
        assert!(!chain_confirmed(&chain));
        assert!(!chain_confirmed(&[]), "an empty walk is never trusted");
        for &ra in &chain[..2] {
            confirmed_slot(ra).store(ra, Ordering::Relaxed);
        }
        assert!(!chain_confirmed(&chain), "one frame not confirmed yet");
        confirmed_slot(chain[2]).store(chain[2], Ordering::Relaxed);
        assert!(chain_confirmed(&chain));
        assert!(
            chain_confirmed(&chain[1..]),
            "any chain through confirmed frames"
        );
        assert!(!chain_confirmed(&[chain[0], 0]), "a null frame never is");
    }

    #[test]
    fn the_cached_walk_agrees_with_libgcc() {
        #[inline(never)]
        fn nested(depth: u32) -> Comparison {
            if depth == 0 {
                compare_here(TEST_HOST)
            } else {
                std::hint::black_box(nested(depth - 1))
            }
        }
        if dl_find_object().is_none() {
            return;
        }
        for depth in [0, 15, 40, 80] {
            // Twice: adding the objects, then from the caches.
            for _ in 0..2 {
                match nested(depth) {
                    Comparison::Agree(frames) => assert!(frames > depth.min(60) as usize),
                    other => panic!("depth {depth}: {other:?}"),
                }
            }
        }
        std::thread::spawn(|| assert!(matches!(nested(20), Comparison::Agree(_))))
            .join()
            .unwrap();
    }

    #[test]
    fn finds_this_objects_tables() {
        let Some(find) = dl_find_object() else {
            return;
        };
        let here = finds_this_objects_tables as *const () as u64;
        let found = FoundObject::containing(here, find).expect("this test's object");
        assert!(found.start <= here && here < found.end);
        let sections = found
            .sections(find)
            .expect("its .eh_frame_hdr and .eh_frame");
        assert!(sections.eh_frame_hdr.len() >= 12);
        assert!(sections.eh_frame.len() > 4);
        assert_eq!(FoundObject::containing(8, find).map(|f| f.start), None);
    }

    #[test]
    fn finds_the_tables_outside_the_mapping_of_the_code() {
        // An object whose segments are not contiguous is reported a segment at a time: for a
        // return address, only the mapping of its code, which does not hold `.eh_frame_hdr`
        // (lld, for one, puts it in the read-only segment before the code). The tables are
        // still this object's: found, not given up (which sent every sample to libgcc).
        let Some(find) = dl_find_object() else {
            return;
        };
        let here = finds_the_tables_outside_the_mapping_of_the_code as *const () as u64;
        let whole = FoundObject::containing(here, find).expect("this test's object");
        let code_page = here & !0xfff;
        let code_only = FoundObject {
            start: code_page,
            end: code_page + 0x1000,
            ..whole
        };
        let hdr = whole.eh_frame_hdr as u64;
        assert!(!(code_only.start..code_only.end).contains(&hdr));
        let sections = code_only.sections(find).expect("the tables of the object");
        assert_eq!(sections.eh_frame_hdr.start, whole.eh_frame_hdr);
        // Another object's mapping does not vouch for them.
        let elsewhere = FoundObject {
            link_map: whole.link_map ^ 0x10,
            ..code_only
        };
        assert!(elsewhere.sections(find).is_none());
    }
}
