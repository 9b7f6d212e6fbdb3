//! The one place a file is memory-mapped.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::{Advice, Mmap};

/// A read-only memory map of a whole file.
///
/// # If the file changes while it is mapped
///
/// The map is shared with the page cache, so it sees what other processes write to the
/// file. What that can and cannot do:
///
/// - Bounds stay sound. [`crate::Blob::parse`] copies the header and decodes the
///   manifest into owned values, and every slice it hands out is computed from those
///   copies and the map's length, which is fixed when the map is made. A later write to
///   the header or manifest bytes changes nothing already validated, and no slice can
///   reach outside the map.
/// - Values can change. A write into the data region changes the weights a running
///   model reads (garbage numbers, never an out-of-bounds access). The packed
///   vocabulary's offsets are read lazily and every use is bounds-checked for this
///   reason.
/// - Truncation is fatal. Pages past the new end of the file fault with SIGBUS when
///   touched, which kills the process; nothing in safe code can catch it.
///
/// Strictly, Rust's `&[u8]` promises the bytes do not change while borrowed, which a
/// concurrent writer breaks; the above is what happens in practice on Linux. The
/// protection is procedural: `olmoc pack` never writes into an existing blob, it writes
/// a new file and renames it over the old one, so existing maps keep the old, unchanged
/// inode. Replace blobs the same way (`cp` onto a mapped blob rewrites it in place;
/// `cp` to a new name and `mv` does not).
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps the regular file at `path`. A folder, device or pipe is refused before it is
    /// opened (opening a pipe would wait for a writer; mapping a folder fails obscurely).
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            return Err(io::Error::other("is a folder, not a file"));
        }
        if !meta.is_file() {
            return Err(io::Error::other("is not a regular file"));
        }
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            // Mapping zero bytes fails on Linux; an empty file is simply empty.
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only (PROT_READ) and Rust code only ever sees it as
        // `&[u8]` borrowed from `self`, so it cannot outlive the map. The one hazard is
        // another process writing or truncating the file while it is mapped; see the
        // type's documentation for what that can do and how the tools avoid it.
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

    /// Whether the pages holding each of `offsets` are in the page cache (`mincore`), so
    /// touching them costs no disk read. `Some(false)` at the first page that is not;
    /// `None` where the question cannot be asked. Offsets past the end are skipped.
    pub fn resident(&self, offsets: impl IntoIterator<Item = usize>) -> Option<bool> {
        #[cfg(unix)]
        {
            let map = self.map.as_ref()?;
            // SAFETY: sysconf has no preconditions.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
            for offset in offsets.into_iter().filter(|&o| o < map.len()) {
                let start = offset / page * page;
                let mut status = 0u8;
                // SAFETY: the map starts on a page boundary and `start < map.len()`, so the
                // one page at `start` lies inside the mapping; `status` holds the one byte
                // mincore writes for one page.
                let rc = unsafe {
                    libc::mincore(map.as_ptr().add(start) as *mut libc::c_void, 1, &mut status)
                };
                if rc != 0 {
                    return None;
                }
                if status & 1 == 0 {
                    return Some(false);
                }
            }
            Some(true)
        }
        #[cfg(not(unix))]
        {
            let _ = offsets;
            None
        }
    }

    /// Locks the whole map in memory (mlock): reads every page that is not cached and
    /// keeps them resident until the map is dropped.
    pub fn lock(&self) -> io::Result<()> {
        match &self.map {
            Some(map) => map.lock(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_just_written_is_resident() {
        let path = std::env::temp_dir().join(format!("olmo-mapped-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 3 * 4096 + 5]).unwrap();
        let map = MappedFile::open(&path).unwrap();
        #[cfg(unix)]
        assert_eq!(map.resident([0, 4096, 3 * 4096 + 4, 1 << 40]), Some(true));
        assert_eq!(MappedFile { map: None }.resident([0]), None);
        drop(map);
        std::fs::remove_file(&path).unwrap();
    }
}
