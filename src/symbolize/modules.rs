//! The objects loaded in this process (the executable, shared libraries, the vDSO), with where
//! they are mapped and their GNU build ids, read from the dynamic loader (`dl_iterate_phdr`)
//! rather than parsed out of `/proc/self/maps`: the loader hands over the load bias and the
//! program headers, build-id note included, from memory.

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One mapped range of a loaded object.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    /// Start of the range in this process's memory.
    pub start: u64,
    /// One past the end.
    pub end: u64,
    /// Offset of the range's start in the object's file.
    pub file_offset: u64,
    /// Whether the range holds code.
    pub executable: bool,
}

/// A loaded object.
#[derive(Clone, Debug)]
pub(crate) struct Module {
    /// Path of its file; the executable's own path for the main program. Empty for the vDSO.
    pub path: String,
    /// Load bias: runtime address − address stated in the file.
    pub bias: u64,
    pub segments: Vec<Segment>,
    /// The GNU build id, if the object carries one.
    pub build_id: Vec<u8>,
    /// Whether this is the program itself (the first object the loader lists), not a library.
    pub is_program: bool,
}

impl Module {
    /// The segment holding `addr`, if any.
    pub(crate) fn segment_of(&self, addr: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|segment| segment.start <= addr && addr < segment.end)
    }

    /// Whether symbols can be read from a file for this module.
    pub(crate) fn has_file(&self) -> bool {
        !self.path.is_empty() && !self.path.starts_with("linux-vdso") && !self.path.starts_with('[')
    }
}

/// Held while heapwatch walks the loader's list. glibc (2.36 at least) does not reset the lock
/// `dl_iterate_phdr` takes in a forked child: a fork while another thread walks the list leaves
/// the child's first walk waiting forever. The fork handlers take this lock, so no walk of
/// heapwatch's is under way at a fork (seen: a forked child hung in `reload_modules`).
static WALKING_LOADER: crate::fork::HeldAcrossFork<Mutex<()>> =
    crate::fork::HeldAcrossFork::new(crate::fork::Rank::Loader, &FORK_HOOKS, Mutex::new(()));

pub(super) fn walking_loader() -> MutexGuard<'static, ()> {
    WALKING_LOADER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let walking = WALKING_LOADER.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, walking.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: crate::fork::GuardSlot<MutexGuard<'static, ()>> =
    crate::fork::GuardSlot::new();

/// Lists the objects loaded now.
pub(crate) fn loaded_modules() -> Vec<Module> {
    let mut modules: Vec<Module> = Vec::new();
    let walking = walking_loader();
    // SAFETY: `dl_iterate_phdr` calls `collect` once per loaded object with a pointer to a
    // `dl_phdr_info` valid for the call, and passes `data` through unchanged; `data` points to
    // `modules`, which outlives the call and is only used from this thread.
    unsafe {
        libc::dl_iterate_phdr(
            Some(collect),
            &mut modules as *mut Vec<Module> as *mut c_void,
        );
    }
    drop(walking);
    let executable = std::env::current_exe()
        .ok()
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(main) = modules.first_mut() {
        main.is_program = true;
        if main.path.is_empty() {
            // The loader names the main program "" ; pprof and the symbolizer need its file.
            main.path = executable;
        }
    }
    modules
}

unsafe extern "C" fn collect(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: see `loaded_modules`: `data` is the `Vec<Module>` it passed, and `info` is valid
    // for the duration of this call.
    let (modules, info) = unsafe { (&mut *(data as *mut Vec<Module>), &*info) };
    let path = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    // `dlpi_addr` is 32 bits wide on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let bias = info.dlpi_addr as u64;
    let headers: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: the loader guarantees `dlpi_phdr` points to `dlpi_phnum` program headers.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let mut module = Module {
        path,
        bias,
        segments: Vec::new(),
        build_id: Vec::new(),
        is_program: false,
    };
    for header in headers {
        match header.p_type {
            libc::PT_LOAD => module.segments.push(Segment {
                start: bias.wrapping_add(header.p_vaddr),
                end: bias
                    .wrapping_add(header.p_vaddr)
                    .wrapping_add(header.p_memsz),
                file_offset: header.p_offset,
                executable: header.p_flags & libc::PF_X != 0,
            }),
            libc::PT_NOTE if module.build_id.is_empty() => {
                let start = bias.wrapping_add(header.p_vaddr) as *const u8;
                // SAFETY: a PT_NOTE segment is mapped (it lies within a PT_LOAD segment) for
                // `p_memsz` bytes at its runtime address.
                let notes = unsafe { std::slice::from_raw_parts(start, header.p_memsz as usize) };
                if let Some(id) = gnu_build_id(notes) {
                    module.build_id = id.to_vec();
                }
            }
            _ => {}
        }
    }
    modules.push(module);
    0
}

/// Finds the NT_GNU_BUILD_ID note in a PT_NOTE segment's bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| (n + 3) & !3;
    let word = |bytes: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    while notes.len() >= 12 {
        let name_size = word(notes, 0)? as usize;
        let desc_size = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_start = 12;
        let desc_start = name_start + align4(name_size);
        let next = desc_start + align4(desc_size);
        let name = notes.get(name_start..name_start + name_size)?;
        let desc = notes.get(desc_start..desc_start + desc_size)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(next..)?;
    }
    None
}

/// Lower-case hex, as pprof and `file(1)` print build ids.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_test_binary_with_a_build_id() {
        let modules = loaded_modules();
        let here = finds_this_test_binary_with_a_build_id as *const () as usize as u64;
        let main = modules
            .iter()
            .find(|m| m.segment_of(here).is_some())
            .expect("the module holding this function");
        assert!(main.segment_of(here).unwrap().executable);
        assert!(!main.path.is_empty());
        // rustc passes --build-id to the linker on Linux.
        assert!(!main.build_id.is_empty(), "no build id in {}", main.path);
    }

    #[test]
    fn parses_a_gnu_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[0xab, 0xcd, 0xef, 0]);
        assert_eq!(gnu_build_id(&note), Some(&[0xab, 0xcd, 0xef][..]));
        assert_eq!(gnu_build_id(&note[..10]), None);
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
