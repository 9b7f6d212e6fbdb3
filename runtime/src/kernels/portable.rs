//! Plain Rust kernels: the reference every other path is tested against, and the
//! fallback on CPUs without AVX2/FMA/F16C.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{Matrix, MatrixData};

/// Rows per parallel task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 64;

fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_f32(a, b)
}

pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    let c = w.cols;
    let blocks = c.div_ceil(32);
    y.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, ys)| {
            for (i, yr) in ys.iter_mut().enumerate() {
                let r = chunk * ROWS_PER_TASK + i;
                *yr = match w.data {
                    MatrixData::F32(d) => dot_f32(&d[r * c..][..c], x),
                    MatrixData::F16(d) => d[r * c..][..c]
                        .iter()
                        .zip(x)
                        .map(|(&b, &v)| f16::from_bits(b).to_f32() * v)
                        .sum(),
                    MatrixData::BF16(d) => d[r * c..][..c]
                        .iter()
                        .zip(x)
                        .map(|(&b, &v)| bf16::from_bits(b).to_f32() * v)
                        .sum(),
                    MatrixData::Q8_0 { quants, scales } => {
                        let q = &quants[r * blocks * 32..][..blocks * 32];
                        let s = &scales[r * blocks..][..blocks];
                        let mut acc = 0f32;
                        for (b, xb) in x.chunks(32).enumerate() {
                            let qb = &q[b * 32..][..xb.len()];
                            let dot: f32 = qb.iter().zip(xb).map(|(&q, &v)| q as f32 * v).sum();
                            acc += dot * f16::from_bits(s[b]).to_f32();
                        }
                        acc
                    }
                };
            }
        });
}
