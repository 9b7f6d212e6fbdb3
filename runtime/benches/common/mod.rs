//! What the model benches share: their arguments, the model they open and the bytes
//! its matrices occupy in the blob.

// Each bench uses a part of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::kernels::{Matrix, MatrixData};
use olmort::model::team::Team;
use olmort::Model;

/// `BENCH MODEL.bin [THREADS] [COUNT]` (flags such as cargo's `--bench` ignored), with
/// rayon's global pool built for THREADS (default 2).
pub struct Args {
    pub path: String,
    pub threads: usize,
    /// The bench's third argument (steps, rounds), or its default.
    pub count: usize,
}

impl Args {
    pub fn parse(usage: &str, default_count: usize) -> Result<Args, String> {
        let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
        let path = args.first().ok_or(format!("usage: {usage}"))?.clone();
        let threads = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
        let count = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(default_count);
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())?;
        Ok(Args { path, threads, count })
    }

    /// Maps, checks and views the model, and runs `f` on the map and the model. The map
    /// carries the huge-page hint, as `olmort`'s does: an uncached blob is read in as
    /// 2 MiB folios.
    pub fn with_model<R>(&self, f: impl FnOnce(&MappedFile, &Model) -> Result<R, String>) -> Result<R, String> {
        let path = &self.path;
        let map = MappedFile::open(path.as_ref()).map_err(|e| format!("{path}: {e}"))?;
        map.advise(memmap2::Advice::HugePage);
        let blob = Blob::parse(map.bytes()).map_err(|e| format!("{path}: {e}"))?;
        let model = Model::new(&blob).map_err(|e| format!("{path}: {e}"))?;
        f(&map, &model)
    }
}

/// The bytes of `blob` that matrix `m` (a view into it) is stored in: for q8_0 its
/// quants and the scales after them.
pub fn stored_bytes<'b>(blob: &'b [u8], m: &Matrix) -> &'b [u8] {
    let (start, len) = match m.data {
        MatrixData::F32(d) => (d.as_ptr() as usize, d.len() * 4),
        MatrixData::F16(d) | MatrixData::BF16(d) => (d.as_ptr() as usize, d.len() * 2),
        MatrixData::Q8_0 { quants, scales } => {
            (quants.as_ptr() as usize, scales.as_ptr() as usize + scales.len() * 2 - quants.as_ptr() as usize)
        }
        MatrixData::Q4_0(t) | MatrixData::Q4_K(t) => (t.as_ptr() as usize, t.len()),
    };
    let offset = start - blob.as_ptr() as usize;
    &blob[offset..offset + len]
}

/// The bytes from the first of `matrices` in the blob to the end of the last (with
/// whatever lies between: the norms).
pub fn span<'b>(blob: &'b [u8], matrices: &[Matrix]) -> &'b [u8] {
    let base = blob.as_ptr() as usize;
    let parts: Vec<&[u8]> = matrices.iter().map(|m| stored_bytes(blob, m)).collect();
    let lo = parts.iter().map(|b| b.as_ptr() as usize - base).min().unwrap_or(0);
    let hi = parts.iter().map(|b| b.as_ptr() as usize - base + b.len()).max().unwrap_or(0);
    &blob[lo..hi]
}

/// How much of `bytes` (a map of this process) is mapped with 2 MiB page-table
/// entries, and its resident size, in bytes: `FilePmdMapped` and `Rss` of its mapping
/// in `/proc/self/smaps`. A blob cached in 4 KiB pages costs a TLB miss per 4 KiB and
/// decodes measurably slower (docs/PERFORMANCE.md), so the benches report it. `None`
/// where there is no such file.
pub fn pmd_mapped(bytes: &[u8]) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let start = format!("{:x}-", bytes.as_ptr() as usize);
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start)).skip(1);
    let (mut pmd, mut rss) = (None, None);
    for line in lines.by_ref() {
        let kib = |key: &str| line.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok();
        if let Some(v) = kib("FilePmdMapped:") {
            pmd = Some(v * 1024);
        } else if let Some(v) = kib("Rss:") {
            rss = Some(v * 1024);
        } else if line.starts_with("VmFlags:") {
            break;
        }
    }
    Some((pmd?, rss?))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `rounds` rounds of, for each `n` of `sizes`, a lone pass (`pass(1)`, ms) and right
/// after it one of `n`, so that each pass is set against a lone one at the same memory
/// speed. Prints a line per round, `round R: {lone} {ms} ms |` and then `cell(n, ms,
/// lone ms)` per size; returns per size its rounds' (lone ms, ms).
pub fn alternating_rounds(rounds: usize, sizes: &[usize], lone: &str, mut pass: impl FnMut(usize) -> f64, cell: impl Fn(usize, f64, f64) -> String) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = sizes.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        let mut line = String::new();
        for (i, &n) in sizes.iter().enumerate() {
            let base = pass(1);
            let ms = pass(n);
            runs[i].push((base, ms));
            if i == 0 {
                line += &format!("round {round}: {lone} {base:.1} ms |");
            }
            line += &cell(n, ms, base);
        }
        println!("{line}");
    }
    runs
}

/// Sums the 64-byte lines of `b` with 256-bit loads, prefetching 4 KiB ahead as the
/// matvec kernels do (4-6 KiB; without it the stream is the slower of the two, and the
/// floor would flatter the kernels; 8, 12 and 16 KiB measured no faster).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_lines(b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let (p, n) = (b.as_ptr(), b.len() / 64 * 64);
    let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut i = 0;
    while i < n {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + 4096) as *const i8);
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(p.add(i) as *const __m256i));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(p.add(i + 32) as *const __m256i));
        i += 64;
    }
    let mut lanes = [0u64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, _mm256_add_epi64(a0, a1));
    lanes.iter().fold(0, |a, &l| a.wrapping_add(l))
}

/// The same sum without AVX2.
fn sum_lines_portable(b: &[u8]) -> u64 {
    b.chunks_exact(8).fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap())))
}

/// Streams `b` on a run state's own team (a second team's helpers would spin against
/// it), the threads claiming blocks as the matvec kernels claim rows: 1 / (2 * threads)
/// of what is left, at least 256 KiB. Two fixed halves measured up to 3% slower (one
/// thread finishing early and the other streaming its last part alone), which would
/// make the floor too easy to meet.
pub fn stream(team: &Team, b: &[u8]) -> u64 {
    const MIN: usize = 256 << 10;
    let threads = team.threads();
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    team.run(threads, &|_| {
        let mut sum = 0u64;
        let mut start = next.load(Ordering::Relaxed);
        while start < b.len() {
            let left = b.len() - start;
            let size = (left / (2 * threads)).max(MIN).min(left);
            match next.compare_exchange_weak(start, start + size, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let block = &b[start..start + size];
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 is checked here; the function reads only within `block`.
                    let s = if is_x86_feature_detected!("avx2") { unsafe { sum_lines(block) } } else { sum_lines_portable(block) };
                    #[cfg(not(target_arch = "x86_64"))]
                    let s = sum_lines_portable(block);
                    sum = sum.wrapping_add(s);
                    start = next.load(Ordering::Relaxed);
                }
                Err(now) => start = now,
            }
        }
        total.fetch_add(sum, Ordering::Relaxed);
    });
    total.load(Ordering::Relaxed)
}
