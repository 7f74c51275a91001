//! file:line and inlined frames from DWARF, through `addr2line`. Opt-in (feature `dwarf` and
//! [`set_source_lines`](crate::set_source_lines)) because the debug info of a large binary
//! takes hundreds of MiB once loaded.

use super::modules::Module;

pub(crate) enum DwarfSource {
    NotLoaded,
    Loaded(Box<addr2line::Loader>),
    Unavailable,
}

impl DwarfSource {
    /// The frames at a file address, innermost first: `(function, file, line)`.
    pub(crate) fn frames(
        &mut self,
        module: &Module,
        file_address: u64,
    ) -> Vec<(String, Option<String>, u32)> {
        if let DwarfSource::NotLoaded = self {
            *self = match module
                .has_file()
                .then(|| addr2line::Loader::new(&module.path))
            {
                Some(Ok(loader)) => DwarfSource::Loaded(Box::new(loader)),
                _ => DwarfSource::Unavailable,
            };
        }
        let DwarfSource::Loaded(loader) = self else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(mut frames) = loader.find_frames(file_address) else {
            return out;
        };
        while let Ok(Some(frame)) = frames.next() {
            let Some(function) = frame.function.as_ref().and_then(|f| f.demangle().ok()) else {
                continue;
            };
            let (file, line) = frame
                .location
                .map(|l| (l.file.map(str::to_owned), l.line.unwrap_or(0)))
                .unwrap_or((None, 0));
            out.push((function.into_owned(), file, line));
        }
        out
    }
}
