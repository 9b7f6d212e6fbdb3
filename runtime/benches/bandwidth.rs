//! Read bandwidth of this machine, measured the way a decode step reads weights:
//! `threads` workers each stream their own contiguous part of a buffer much larger than
//! the caches, summing it with AVX2 (so the loop is not the limit).
//!
//!     cargo bench -p olmort --bench bandwidth -- [GIB] [THREADS] [REPEATS]
//!     OLMORT_BANDWIDTH_FILE=model.bin cargo bench -p olmort --bench bandwidth -- 0 [THREADS] [REPEATS]
//!
//! With `OLMORT_BANDWIDTH_FILE` it streams that file mapped read-only instead (its
//! first GIB GiB, or all of it for 0): the page-cache pages a decode step reads, with
//! whatever page sizes the kernel mapped them with.
//!
//! Prints one line per repeat and a final `bandwidth_gbps: MEDIAN BEST` line
//! (decimal GB/s) that tools/bench_decode.py reads.

use std::time::Instant;

use rayon::prelude::*;

fn sum_portable(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in x.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let p = x.as_ptr();
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= x.len() {
        for (j, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_add_ps(*acc, _mm256_loadu_ps(p.add(i + 8 * j)));
        }
        i += 32;
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(
        out.as_mut_ptr(),
        _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
    );
    out.iter().sum::<f32>() + x[i..].iter().sum::<f32>()
}

fn sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked); sum_avx2 reads only within `x`.
        return unsafe { sum_avx2(x) };
    }
    sum_portable(x)
}

fn main() {
    // cargo bench passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let gib: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let repeats: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(7);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let file = std::env::var_os("OLMORT_BANDWIDTH_FILE")
        .map(|p| olmo_format::mapped::MappedFile::open(std::path::Path::new(&p)).expect("cannot map OLMORT_BANDWIDTH_FILE"));
    let owned: Vec<f32>;
    let buf: &[f32] = match &file {
        Some(map) => {
            let bytes = map.bytes();
            let want = if gib > 0.0 { ((gib * (1u64 << 30) as f64) as usize).min(bytes.len()) } else { bytes.len() };
            let n = want / 4 / (threads * 4096) * threads * 4096;
            assert_eq!(bytes.as_ptr() as usize % 4, 0, "a map is page-aligned");
            // SAFETY: `n * 4 <= bytes.len()`, the map is page-aligned (so 4-byte aligned)
            // and every bit pattern is an f32; the slice borrows `map`, which outlives it.
            unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, n) }
        }
        None => {
            let n = (gib * (1u64 << 30) as f64) as usize / 4;
            let n = n / (threads * 4096) * threads * 4096;
            owned = pool.install(|| {
                let mut v = vec![0f32; n];
                v.par_chunks_mut(1 << 20).enumerate().for_each(|(i, c)| c.fill((i % 7) as f32));
                v
            });
            &owned
        }
    };
    let n = buf.len();
    let part = n / threads;
    let mut rates = Vec::new();
    let mut check = 0f32;
    for r in 0..repeats + 1 {
        let started = Instant::now();
        let s: f32 = pool.install(|| buf.par_chunks(part).map(sum).sum());
        let secs = started.elapsed().as_secs_f64();
        check += s;
        let gbps = (n * 4) as f64 / secs / 1e9;
        // The first pass warms the TLB and the pool; it is not counted.
        if r > 0 {
            rates.push(gbps);
        }
        eprintln!("pass {r}: {:.3} GB in {:.1} ms = {gbps:.2} GB/s", (n * 4) as f64 / 1e9, secs * 1e3);
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = rates[rates.len() / 2];
    let best = rates[rates.len() - 1];
    println!("bandwidth_gbps: {median:.2} {best:.2} (threads {threads}, {gib} GiB, checksum {check})");
}
