//! The one place a file is memory-mapped.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::{Advice, Mmap};

/// A read-only memory map of a whole file.
///
/// If another process truncates or rewrites the file while it is mapped, reads of the
/// affected pages see the new bytes or fault with SIGBUS; nothing here can prevent that,
/// so blobs are replaced by writing a new file and renaming it over the old one (as
/// `olmoc pack` does), which leaves existing maps on the old, unchanged inode.
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            // Mapping zero bytes fails on Linux; an empty file is simply empty.
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only and private to this process's view of the file;
        // Rust code only ever sees it as `&[u8]`. The documented hazard is another
        // process modifying the file underneath (see the type's documentation), which
        // the packer avoids by always renaming a new file into place.
        let map = unsafe { Mmap::map(&file)? };
        Ok(MappedFile { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Hints the kernel about the coming access pattern; failures are harmless.
    pub fn advise(&self, advice: Advice) {
        if let Some(map) = &self.map {
            let _ = map.advise(advice);
        }
    }
}
