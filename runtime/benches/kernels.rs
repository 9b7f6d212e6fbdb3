//! Throughput of the matrix kernels on 1B-shaped matrices held in memory:
//!
//!     cargo bench -p olmort --bench kernels -- [THREADS] [BATCH] [ROWS]
//!
//! For each dtype: matvec GB/s (weights streamed per second) and GEMM GFLOP/s for a
//! batch of BATCH rows (default 128). ROWS (default 16384, `gate_up` of the 1B) x 2048
//! weights; 192 rows keep every dtype but f32 in a 512 KiB L2, which measures the
//! kernels' own speed rather than memory's. `OLMORT_KERNELS=portable` measures the fallback.
//! Then, per dtype, a decode batch (`matmul_decode`, one token of each of 1, 2, 4 and 8
//! sequences) as a multiple of one token's matvec time: 1 would be free extra tokens,
//! n a pass per token (a batch of one is what a server's lone stream runs).
//! Env `DTYPES=q8_0,bf16` measures only those dtypes.

use std::time::Instant;

use half::{bf16, f16};
use olmort::kernels::{active, matmul, matmul_decode, matvec, Matrix, MatrixData};
use rayon::prelude::*;

/// CPU seconds this process has used (user + system), from /proc; 0 elsewhere.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let threads: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
    let batch: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(128);
    let rows: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16384);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    // gate_up of the 1B: 16384 x 2048, 128 MiB in f32.
    let cols = 2048;
    let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
    let f16s: Vec<u16> = vals.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    let bf16s: Vec<u16> = vals.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    let quants: Vec<i8> = vals.iter().map(|&v| (v * 254.0) as i8).collect();
    let scales: Vec<u16> = vec![f16::from_f32(0.004).to_bits(); rows * cols / 32];
    // DTYPES=q8_0,bf16: only these (the 4-bit ones take seconds to quantise).
    let only = std::env::var("DTYPES").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|d| d == name));
    let tiles = |dtype: olmo_format::DType| {
        let mut out = Vec::new();
        if wanted(dtype.name()) {
            olmoc::convert::write_matrix(&vals, rows, cols, dtype, olmo_format::Layout::Q4Tiles, &mut out).unwrap();
        }
        out
    };
    let (q4_0, q4_k) = (tiles(olmo_format::DType::Q4_0), tiles(olmo_format::DType::Q4_K));
    let all = [
        ("f32", MatrixData::F32(&vals), 4.0),
        ("f16", MatrixData::F16(&f16s), 2.0),
        ("bf16", MatrixData::BF16(&bf16s), 2.0),
        ("q8_0", MatrixData::Q8_0 { quants: &quants, scales: &scales }, 34.0 / 32.0),
        ("q4_0", MatrixData::Q4_0(&q4_0), 18.0 / 32.0),
        ("q4_k", MatrixData::Q4_K(&q4_k), 18.0 / 32.0),
    ];
    let x: Vec<f32> = (0..batch * cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let mut y = vec![0f32; batch * rows];
    println!("kernels {:?}, {threads} threads, {rows}x{cols}, batch {batch}", olmort::kernels::active());
    // The AMX peak of each thread at once (the compute floor's divisor), median of 5.
    if olmort::kernels::amx_bf16_peak(1).is_some() {
        let mut peaks: Vec<f64> = (0..5)
            .map(|_| (0..threads).into_par_iter().map(|_| olmort::kernels::amx_bf16_peak(1 << 20).unwrap_or(0.0)).sum())
            .collect();
        peaks.sort_by(f64::total_cmp);
        println!(" AMX tdpbf16ps peak: {:.0} GFLOP/s on {threads} threads", peaks[2]);
    }
    // OLMORT_BENCH_BLOB=FILE: the f32 matvec over 128 MiB of a mapped file (page-cache
    // pages, as olmort reads weights) against the same bytes copied to the heap.
    if let Ok(path) = std::env::var("OLMORT_BENCH_BLOB") {
        let map = olmo_format::mapped::MappedFile::open(std::path::Path::new(&path)).unwrap();
        let bytes = &map.bytes()[4096..4096 + rows * cols * 4];
        assert_eq!(bytes.as_ptr() as usize % 4, 0, "page-aligned map");
        // SAFETY: in bounds (sliced above), 4-byte aligned (asserted), and every bit
        // pattern is some f32; the slice borrows `map`.
        let mapped: &[f32] = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, rows * cols) };
        let owned: Vec<f32> = mapped.to_vec();
        for round in 0..3 {
            for (what, d) in [("mapped", mapped), ("heap", &owned[..])] {
                let w = Matrix::row_major(rows, cols, MatrixData::F32(d));
                let mut times = Vec::new();
                for _ in 0..9 {
                    let t = Instant::now();
                    matvec(&w, &x[..cols], &mut y[..rows]);
                    times.push(t.elapsed().as_secs_f64());
                }
                times.sort_by(|a, b| a.partial_cmp(b).unwrap());
                println!("round {round} {what:>6}: f32 matvec {:.2} GB/s", (rows * cols * 4) as f64 / times[4] / 1e9);
            }
        }
    }
    for (name, data, bytes_per) in all.into_iter().filter(|(name, ..)| wanted(name)) {
        let w = Matrix::row_major(rows, cols, data);
        // The same bytes summed as plain u64 words by the same pool: the speed memory
        // gives a pure stream right now, the yardstick for the matvec.
        // SAFETY (the four casts): each views the matrix's own elements as bytes (align 1,
        // same length in bytes), and `align_to` only yields whole, aligned u64s of them;
        // every bit pattern is a valid u8 and u64.
        let raw: &[u8] = match data {
            MatrixData::F32(d) => unsafe { std::slice::from_raw_parts(d.as_ptr() as *const u8, d.len() * 4) },
            MatrixData::F16(d) | MatrixData::BF16(d) => unsafe { std::slice::from_raw_parts(d.as_ptr() as *const u8, d.len() * 2) },
            MatrixData::Q8_0 { quants, .. } => unsafe { std::slice::from_raw_parts(quants.as_ptr() as *const u8, quants.len()) },
            MatrixData::Q4_0(t) | MatrixData::Q4_K(t) => t,
        };
        let words: &[u64] = unsafe { raw.align_to::<u64>().1 };
        let mut stream = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            let s: u64 = words.par_chunks(words.len() / rayon::current_num_threads()).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum();
            std::hint::black_box(s);
            stream.push(t.elapsed().as_secs_f64());
        }
        stream.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let stream_gbps = raw.len() as f64 / stream[stream.len() / 2] / 1e9;
        let mut times = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            matvec(&w, &x[..cols], &mut y[..rows]);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mv = (rows * cols) as f64 * bytes_per / times[times.len() / 2] / 1e9;
        let mut times = Vec::new();
        let cpu0 = cpu_seconds();
        for _ in 0..5 {
            let t = Instant::now();
            matmul(&w, &x, batch, &mut y);
            times.push(t.elapsed().as_secs_f64());
        }
        let cpu = cpu_seconds() - cpu0;
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let flops = 2.0 * (rows * cols * batch) as f64;
        let gf = flops / times[2] / 1e9;
        println!(
            "{name:>5}: stream {stream_gbps:6.2} GB/s, matvec {mv:6.2} GB/s ({:.2} ms)   gemm {gf:7.1} GFLOP/s ({:.1} per CPU-second)",
            (rows * cols) as f64 * bytes_per / mv / 1e6,
            5.0 * flops / cpu / 1e9
        );
        // Decode batches, each timed against a one-token matvec right before it.
        let mut line = format!("{name:>5}: decode batch / one token:");
        for n in [1, 2, 4, 8].into_iter().filter(|&n| n <= batch) {
            let mut ratios = Vec::new();
            for _ in 0..9 {
                let t = Instant::now();
                matvec(&w, &x[..cols], &mut y[..rows]);
                let one = t.elapsed().as_secs_f64();
                let t = Instant::now();
                matmul_decode(active(), &w, &x[..n * cols], n, &mut y[..n * rows]);
                ratios.push(t.elapsed().as_secs_f64() / one);
            }
            ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
            line += &format!("  {n}: {:.2}", ratios[4]);
        }
        println!("{line}");
    }
}
