//! `Y = X W^T` for many rows of `X` at once (prompt processing), AVX2 + FMA.
//!
//! Each rayon task owns a block of [`NB`] weight rows. For every [`KC`]-wide slice of
//! the inputs it widens that weight tile to f32 once into a packed panel (`[strip][k]
//! [NR]`, `NR` outputs side by side), then sweeps every row of `X` over it with an
//! `MR x NR` register-blocked micro-kernel. Weights are read from memory once per call,
//! whatever their dtype; the panel stays in L2 while all tokens use it.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::avx2::segment_to_f32;
use super::Matrix;

/// Rows of `X` per micro-kernel call.
const MR: usize = 6;
/// Outputs per micro-kernel call (two AVX registers).
const NR: usize = 16;
/// Input columns per packed tile.
const KC: usize = 256;
/// Weight rows per task (a multiple of `NR`).
const NB: usize = 64;
/// Below this many rows of `X`, a matrix-vector product per row is cheaper.
pub const MIN_BATCH: usize = 3;

struct Panel {
    buf: Vec<f32>,
    row: Vec<f32>,
}

thread_local! {
    /// Per-thread packing scratch, allocated on a thread's first GEMM and reused.
    static PANEL: RefCell<Panel> = const { RefCell::new(Panel { buf: Vec::new(), row: Vec::new() }) };
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

pub fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (rows, k) = (w.rows, w.cols);
    let yp = SendPtr(y.as_mut_ptr());
    let tasks = rows.div_ceil(NB);
    let task = |t: usize| {
        let yp = yp;
        PANEL.with(|cell| {
            let mut fresh;
            let mut guard;
            let panel: &mut Panel = match cell.try_borrow_mut() {
                Ok(g) => {
                    guard = g;
                    &mut guard
                }
                Err(_) => {
                    fresh = Panel { buf: Vec::new(), row: Vec::new() };
                    &mut fresh
                }
            };
            if panel.buf.len() < KC * NB + 16 {
                panel.buf.resize(KC * NB + 16, 0.0);
                panel.row.resize(KC, 0.0);
            }
            // 64-byte align the panel so every B load stays within one cache line.
            let off = panel.buf.as_ptr().align_offset(64).min(16);
            let Panel { buf, row } = panel;
            let packed = &mut buf[off..off + KC * NB];
            let r0 = t * NB;
            let nb = NB.min(rows - r0);
            unsafe { block(w, x, n, k, r0, nb, packed, row, yp.0, rows) };
        })
    };
    if rayon::current_num_threads() == 1 || tasks == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// All of `Y[.., r0 .. r0 + nb]`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block(
    w: &Matrix,
    x: &[f32],
    n: usize,
    k: usize,
    r0: usize,
    nb: usize,
    packed: &mut [f32],
    row: &mut [f32],
    y: *mut f32,
    ldy: usize,
) {
    let strips = nb.div_ceil(NR);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        // Pack: strip s holds rows r0 + s*NR .. as [kk][NR], zero beyond nb.
        for s in 0..strips {
            let strip = &mut packed[s * KC * NR..][..kc * NR];
            for j in 0..NR {
                let r = s * NR + j;
                if r < nb {
                    segment_to_f32(w, r0 + r, k0, &mut row[..kc]);
                    for (kk, &v) in row[..kc].iter().enumerate() {
                        *strip.get_unchecked_mut(kk * NR + j) = v;
                    }
                } else {
                    for kk in 0..kc {
                        *strip.get_unchecked_mut(kk * NR + j) = 0.0;
                    }
                }
            }
        }
        let acc = k0 > 0;
        let mut i0 = 0;
        while i0 < n {
            let mr = MR.min(n - i0);
            let a = x.as_ptr().add(i0 * k + k0);
            for s in 0..strips {
                let b = packed.as_ptr().add(s * KC * NR);
                let c = y.add(i0 * ldy + r0 + s * NR);
                let valid = NR.min(nb - s * NR);
                match mr {
                    6 => kernel::<6>(kc, a, k, b, c, ldy, valid, acc),
                    5 => kernel::<5>(kc, a, k, b, c, ldy, valid, acc),
                    4 => kernel::<4>(kc, a, k, b, c, ldy, valid, acc),
                    3 => kernel::<3>(kc, a, k, b, c, ldy, valid, acc),
                    2 => kernel::<2>(kc, a, k, b, c, ldy, valid, acc),
                    _ => kernel::<1>(kc, a, k, b, c, ldy, valid, acc),
                }
            }
            i0 += mr;
        }
        k0 += kc;
    }
}

/// `C[M x valid] (+)= A[M x kc] B[kc x NR]`; A rows `lda` apart, C rows `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel<const M: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    valid: usize,
    acc: bool,
) {
    let mut c0 = [_mm256_setzero_ps(); M];
    let mut c1 = [_mm256_setzero_ps(); M];
    for kk in 0..kc {
        let b0 = _mm256_load_ps(b.add(kk * NR));
        let b1 = _mm256_load_ps(b.add(kk * NR + 8));
        for i in 0..M {
            let av = _mm256_broadcast_ss(&*a.add(i * lda + kk));
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
        }
    }
    for i in 0..M {
        let ci = c.add(i * ldc);
        if valid == NR {
            if acc {
                c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(ci));
                c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(ci.add(8)));
            }
            _mm256_storeu_ps(ci, c0[i]);
            _mm256_storeu_ps(ci.add(8), c1[i]);
        } else {
            let mut t = [0f32; NR];
            _mm256_storeu_ps(t.as_mut_ptr(), c0[i]);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), c1[i]);
            for (j, &v) in t[..valid].iter().enumerate() {
                let p = ci.add(j);
                *p = if acc { *p + v } else { v };
            }
        }
    }
}
