//! Writing the output blob so that it appears complete or not at all.
//!
//! A regular output file is never written in place. The blob goes to a temporary file in
//! the output's folder (so the final rename cannot cross file systems), which is renamed
//! over the output only once every byte is written and synced:
//!
//! - On Linux the temporary file is created with `O_TMPFILE`: it has no name until it is
//!   complete, so nothing is left behind whatever stops the process, even `SIGKILL` or a
//!   power cut. When complete it is linked under a temporary name and renamed into place.
//! - Where `O_TMPFILE` is not available (other systems, some file systems), the file has
//!   a temporary name (`.NAME.tmp-PID-N`) from the start; it is removed on every error, and
//!   a handler for SIGINT, SIGTERM and SIGHUP removes it before the process dies. Only
//!   `SIGKILL` (or a crash) can leave it behind there.
//!
//! The handler also covers the instant between linking an `O_TMPFILE` file and renaming
//! it. An existing output is untouched until the rename, which replaces it atomically;
//! processes that have the old blob mapped keep reading the old, unchanged file.
//!
//! An output that exists and is not a regular file (`/dev/null`, `/dev/full`, a pipe) is
//! written directly: there is nothing to replace atomically, and renaming a file over a
//! device node would be wrong. A folder is refused.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::PackError;

/// Set (to anything) in the environment, makes the packer use a named temporary file
/// even where `O_TMPFILE` works: how the tests reach the fallback and its signal handler.
pub const NAMED_TEMP_VAR: &str = "OLMOC_NAMED_TEMP";

/// The file a blob is being written to.
pub struct Output {
    file: File,
    target: PathBuf,
    kind: Kind,
}

enum Kind {
    /// Straight into an existing device or pipe.
    Direct,
    /// An unnamed `O_TMPFILE` file in `dir`.
    #[cfg(target_os = "linux")]
    Unnamed { dir: PathBuf },
    /// A named temporary file, removed unless persisted.
    Named { temp: TempName },
}

fn output_error(out: &Path, e: impl std::fmt::Display) -> PackError {
    PackError::Output(format!("{}: {e}", out.display()))
}

/// The folder an output path lives in.
fn folder_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.tmp-PID-N` beside `out`: N counts the packs of this process, so two threads
/// packing to the same output (tests do) never take each other's temporary file; the
/// last rename wins, as with two processes.
fn temp_name(out: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PACKS: AtomicU64 = AtomicU64::new(0);
    let name = out
        .file_name()
        .map_or_else(|| "blob".into(), |n| n.to_string_lossy().into_owned());
    let n = PACKS.fetch_add(1, Ordering::Relaxed);
    folder_of(out).join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

impl Output {
    /// Opens somewhere to write `out` to; nothing at `out` changes until [`Output::finish`].
    pub fn create(out: &Path) -> Result<Output, PackError> {
        let err = |e: io::Error| output_error(out, e);
        if out.as_os_str().is_empty() {
            return Err(PackError::Output("an empty output path".into()));
        }
        match fs::metadata(out) {
            Ok(meta) if meta.is_dir() => {
                return Err(output_error(out, "is a folder; give the blob's file name"))
            }
            Ok(meta) if !meta.is_file() => {
                let file = OpenOptions::new().write(true).open(out).map_err(err)?;
                return Ok(Output { file, target: out.to_path_buf(), kind: Kind::Direct });
            }
            _ => {}
        }
        let dir = folder_of(out);
        #[cfg(target_os = "linux")]
        if std::env::var_os(NAMED_TEMP_VAR).is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o666)
                .open(&dir)
            {
                Ok(file) => {
                    return Ok(Output { file, target: out.to_path_buf(), kind: Kind::Unnamed { dir } })
                }
                // The file system (or kernel) has no O_TMPFILE: use a named file.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
                Err(e) => return Err(err(e)),
            }
        }
        let temp = TempName::new(temp_name(out));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp.path())
            .or_else(|e| {
                // A stale file from an earlier process with the same id.
                if e.kind() == io::ErrorKind::AlreadyExists {
                    fs::remove_file(temp.path())?;
                    OpenOptions::new().write(true).create_new(true).open(temp.path())
                } else {
                    Err(e)
                }
            })
            .map_err(err)?;
        Ok(Output { file, target: out.to_path_buf(), kind: Kind::Named { temp } })
    }

    /// The file to write the blob into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the written file and puts it in place of the output.
    pub fn finish(self) -> Result<(), PackError> {
        let out = self.target.clone();
        let err = |e: io::Error| output_error(&out, e);
        match self.kind {
            Kind::Direct => Ok(()),
            #[cfg(target_os = "linux")]
            Kind::Unnamed { dir } => {
                self.file.sync_all().map_err(err)?;
                let temp = TempName::new(temp_name(&out));
                link_unnamed(&self.file, temp.path()).map_err(err)?;
                fs::rename(temp.path(), &out).map_err(err)?;
                temp.persisted();
                sync_folder(&dir);
                Ok(())
            }
            Kind::Named { temp } => {
                self.file.sync_all().map_err(err)?;
                drop(self.file);
                fs::rename(temp.path(), &out).map_err(err)?;
                temp.persisted();
                sync_folder(&folder_of(&out));
                Ok(())
            }
        }
    }
}

/// Gives an `O_TMPFILE` file the name `path` (replacing a stale file of that name).
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    // Through /proc, linkat needs no privilege (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the output path"))?;
    for attempt in 0..2 {
        // SAFETY: both arguments are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if attempt == 0 && e.kind() == io::ErrorKind::AlreadyExists {
            fs::remove_file(path)?;
            continue;
        }
        return Err(e);
    }
    unreachable!("the loop returns")
}

/// Makes a rename durable; failing to is not an error (the data itself was synced).
fn sync_folder(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Whether the folder `dir` supports unnamed temporary files, which nothing can leave
/// behind (not even `SIGKILL`).
pub fn unnamed_temp_supported(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
            .is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// A temporary file name, removed when dropped unless persisted, and removed by the
/// signal handler if the process is interrupted meanwhile.
struct TempName {
    path: PathBuf,
    _guard: signals::Guard,
    persisted: bool,
}

impl TempName {
    fn new(path: PathBuf) -> TempName {
        let guard = signals::Guard::new(&path);
        TempName { path, _guard: guard, persisted: false }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn persisted(mut self) {
        self.persisted = true;
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removing temporary files when SIGINT, SIGTERM or SIGHUP ends the process.
#[cfg(unix)]
mod signals {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::sync::Once;

    const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    /// Paths (NUL-terminated) the handler removes. A fixed table, because the handler
    /// may not allocate or lock; slots are claimed and released atomically.
    static PENDING: [AtomicPtr<libc::c_char>; 16] = [const { AtomicPtr::new(ptr::null_mut()) }; 16];
    static INSTALL: Once = Once::new();

    extern "C" fn on_signal(signal: libc::c_int) {
        for slot in &PENDING {
            let path = slot.swap(ptr::null_mut(), Ordering::SeqCst);
            if !path.is_null() {
                // SAFETY: `path` is a NUL-terminated string leaked by `Guard::new`, never
                // freed; unlink is async-signal-safe.
                unsafe { libc::unlink(path) };
            }
        }
        // SA_RESETHAND restored the default action on entry, so re-raising ends the
        // process the way the signal would have (the signal is delivered on return).
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(signal) };
    }

    fn install() {
        for signal in SIGNALS {
            // SAFETY: sigaction with a zeroed, then filled-in struct; the handler only
            // makes async-signal-safe calls. A signal the process ignores (as under
            // nohup) stays ignored.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, ptr::null_mut());
            }
        }
    }

    /// Registers a path for removal on a terminating signal, until dropped.
    pub struct Guard {
        slot: Option<&'static AtomicPtr<libc::c_char>>,
        path: *mut libc::c_char,
    }

    impl Guard {
        pub fn new(path: &Path) -> Guard {
            INSTALL.call_once(install);
            let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                return Guard { slot: None, path: ptr::null_mut() };
            };
            // Leaked on purpose: the handler may still be reading it after the guard
            // is gone. A few bytes per output written.
            let raw = c.into_raw();
            let slot = PENDING.iter().find(|s| {
                s.compare_exchange(ptr::null_mut(), raw, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            });
            Guard { slot, path: raw }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(slot) = self.slot {
                let _ = slot.compare_exchange(self.path, ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(not(unix))]
mod signals {
    pub struct Guard;
    impl Guard {
        pub fn new(_: &std::path::Path) -> Guard {
            Guard
        }
    }
}

/// Bytes per write of [`ChunkWriter`]: the size of a transparent huge page on x86-64.
pub const CHUNK: usize = 2 << 20;

/// Buffers writes to a file and passes them on in whole [`CHUNK`]s aligned to multiples
/// of [`CHUNK`] in the file (a partial chunk only before a seek and at the end). On Linux
/// file systems with large folios (ext4, xfs), a write of a whole aligned 2 MiB chunk
/// leaves it in the page cache as one 2 MiB folio, which `olmort`'s `MADV_HUGEPAGE` map
/// then maps with one page-table entry instead of 512: the runtime's first token skips
/// most of its page-mapping cost, and decoding takes fewer TLB misses. Smaller or
/// unaligned writes leave 4 KiB pages, which stay that way until the file leaves the cache.
pub struct ChunkWriter<W: io::Write + io::Seek> {
    inner: W,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
}

impl<W: io::Write + io::Seek> ChunkWriter<W> {
    /// `inner` must be positioned at offset 0.
    pub fn new(inner: W) -> ChunkWriter<W> {
        ChunkWriter { inner, buf: Vec::with_capacity(CHUNK), at: 0 }
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buf)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and returns the inner writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.write_buffered()?;
        Ok(self.inner)
    }
}

impl<W: io::Write + io::Seek> io::Write for ChunkWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let chunk_end = CHUNK - (self.at % CHUNK as u64) as usize;
        let n = data.len().min(chunk_end - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == chunk_end {
            self.write_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.inner.flush()
    }
}

impl<W: io::Write + io::Seek> io::Seek for ChunkWriter<W> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.write_buffered()?;
        self.at = self.inner.seek(to)?;
        Ok(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use std::io::{Cursor, Seek, SeekFrom};

    /// Records the offset and size of every write it receives.
    struct Writes(Cursor<Vec<u8>>, Vec<(u64, usize)>);
    impl Write for Writes {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.1.push((self.0.position(), data.len()));
            self.0.write(data)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for Writes {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.0.seek(to)
        }
    }

    #[test]
    fn chunk_writer_writes_whole_aligned_chunks() {
        // As BlobPlan::write does: the data from an unaligned offset, then the header.
        let data_offset = 12288u64;
        let data: Vec<u8> = (0..(2 * CHUNK + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = ChunkWriter::new(Writes(Cursor::new(Vec::new()), Vec::new()));
        w.seek(SeekFrom::Start(data_offset)).unwrap();
        // Odd-sized pieces, one larger than a chunk.
        let mut rest = &data[..];
        for size in [1usize, 100, CHUNK + 3, 4095].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let k = (*size).min(rest.len());
            w.write_all(&rest[..k]).unwrap();
            rest = &rest[k..];
        }
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(&[9; 100]).unwrap();
        let Writes(file, writes) = w.into_inner().unwrap();
        let file = file.into_inner();
        assert_eq!(&file[data_offset as usize..], &data[..]);
        assert_eq!(&file[..100], &[9; 100]);
        let first = CHUNK - data_offset as usize;
        assert_eq!(
            writes,
            vec![
                (data_offset, first),
                (CHUNK as u64, CHUNK),
                (2 * CHUNK as u64, data.len() - first - CHUNK),
                (0, 100)
            ]
        );
    }
}
