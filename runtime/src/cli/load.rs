//! How the weights get from the blob into memory. Opening reads nothing (the map is
//! validated from its header and manifest only); the mode decides what happens before and
//! during the first token. docs/STARTUP.md has the measurements behind the default.

use std::io;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use memmap2::Advice;
use olmo_format::mapped::MappedFile;
use olmo_format::{Blob, EMBED_TOKENS, VOCAB_BYTES, VOCAB_OFFSETS};

/// `olmort --load MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Huge-page hint, and, unless the weights are already in the page cache, a
    /// background thread touches them in the order the first token uses them, running
    /// ahead of the computation: on a cold cache it keeps the disk busy (its page faults
    /// read while the kernels compute on what has arrived). On a warm cache it would only
    /// compete with the kernels for the cores (about 40 ms on the 1B model's first token),
    /// so it is not started.
    #[default]
    Prefetch,
    /// Huge-page hint only: page faults read the weights on demand.
    Lazy,
    /// No hint at all: the plain memory map.
    None,
    /// Huge-page hint, then every page is faulted in (MADV_POPULATE_READ) before the
    /// first token.
    Populate,
    /// Huge-page hint, then the whole blob is locked in memory (mlock) before the first
    /// token.
    Mlock,
}

impl LoadMode {
    pub const NAMES: &'static str = "prefetch, lazy, none, populate, mlock";
}

impl FromStr for LoadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<LoadMode, String> {
        Ok(match s {
            "prefetch" => LoadMode::Prefetch,
            "lazy" => LoadMode::Lazy,
            "none" => LoadMode::None,
            "populate" => LoadMode::Populate,
            "mlock" => LoadMode::Mlock,
            _ => return Err(format!("{s:?} is not one of {}", LoadMode::NAMES)),
        })
    }
}

/// The byte ranges (file offsets) of the weights a forward pass reads, in the order it
/// reads them: the blob's tensors in file order (which is the forward order), without
/// the embedding table (one row per token is read, so prefetching all of it would only
/// delay the first layer) and the vocabulary. Adjacent tensors are merged.
pub fn weight_ranges(blob: &Blob) -> Vec<Range<usize>> {
    let base = blob.header.data_offset as usize;
    let mut tensors: Vec<Range<usize>> = blob
        .manifest
        .tensors
        .iter()
        .filter(|t| t.name != EMBED_TOKENS && t.name != VOCAB_BYTES && t.name != VOCAB_OFFSETS)
        .map(|t| base + t.offset as usize..base + (t.offset + t.byte_len) as usize)
        .collect();
    tensors.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(tensors.len());
    for r in tensors {
        match merged.last_mut() {
            // Tensors are 64-byte aligned: a gap smaller than that is padding.
            Some(last) if r.start <= last.end + 64 => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Bytes between two touches of the prefetch thread: one fault per touch reads (or maps)
/// at least this much, a 2 MiB folio with the huge-page hint.
const TOUCH_STRIDE: usize = 128 << 10;

/// Offsets spread evenly over the weights (at most 64, the first and last included), to
/// ask whether they are cached without asking about every page.
fn residency_samples(ranges: &[Range<usize>]) -> Vec<usize> {
    const SAMPLES: usize = 64;
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        // The i-th of SAMPLES evenly spaced points over the concatenated ranges.
        let mut at = (total - 1) * i / (SAMPLES - 1);
        for r in ranges {
            if at < r.len() {
                samples.push(r.start + at);
                break;
            }
            at -= r.len();
        }
    }
    samples
}

/// Prepares the mapped blob for computing according to `mode`. Prefetching runs on a
/// detached thread that holds its own reference to the map; the others finish before
/// returning.
pub fn start(map: &Arc<MappedFile>, blob: &Blob, mode: LoadMode) -> io::Result<()> {
    if mode == LoadMode::None {
        return Ok(());
    }
    // File-backed huge pages: a fault on an uncached page reads a whole 2 MiB folio, and
    // cached huge folios are mapped with one page-table entry each instead of 512.
    map.advise(Advice::HugePage);
    match mode {
        LoadMode::Prefetch => {
            let ranges = weight_ranges(blob);
            if map.resident(residency_samples(&ranges)) == Some(true) {
                return Ok(());
            }
            let map = Arc::clone(map);
            std::thread::Builder::new()
                .name("prefetch".into())
                .spawn(move || {
                    let bytes = map.bytes();
                    for r in ranges {
                        for at in r.step_by(TOUCH_STRIDE) {
                            std::hint::black_box(bytes[at]);
                        }
                    }
                })?;
        }
        LoadMode::Populate => map.advise(Advice::PopulateRead),
        LoadMode::Mlock => map.lock()?,
        LoadMode::Lazy | LoadMode::None => {}
    }
    Ok(())
}
