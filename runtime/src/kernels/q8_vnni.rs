//! The one-token q8_0 product `y = W x` with AVX-512 VNNI: each 512-bit `vpdpbusd`
//! takes two blocks of 32 weights against the activations' quants, sixteen lanes of
//! four byte products.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, so it takes `|w|` and `x` with
//! the sign of `w` (negated under a mask of `w`'s sign bits), as the AVX2 kernel's
//! `maddubs` does. The integer block sums are exact and equal to the AVX2 kernel's; only
//! the order of the float additions differs.
//!
//! Per two blocks this is a load, an `abs`, a sign mask and a masked negation, a
//! `vpdpbusd`, a conversion, a permute of the blocks' scales and an FMA, besides the
//! activations' load. An earlier form made the weights unsigned by flipping their top
//! bit and started each dot product from a per-call table of `-128 * sum(x)` per lane:
//! one more load per 64 bytes and a table as large as `x`'s quants (16 KiB of L1 with
//! them for `down_proj`'s 8192 columns). 1B q8_0 decode steps alternating between the
//! two in one process (2 threads, 100 rounds, `model_matvec`) when memory ran at ~69
//! GB/s: 0.911-0.939 of a stream in the same round with the sign mask, 0.878-0.893 with
//! the table; `down_proj` 0.91-0.93 against 0.77-0.82. Level at ~45 GB/s.

use std::arch::x86_64::*;

use half::f16;

use std::cell::RefCell;

use super::activations::QuantX;
use super::tasks::{min_rows_per_block, par_rows_guided, rows_per_sub_block, with_local, SendPtr, PREFETCH};

thread_local! {
    static QX: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
}

/// `y = W x` for a q8_0 matrix `cols` wide: `x` quantised once, rows claimed by the
/// threads in shrinking blocks, as the AVX2 matvec does.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `quants` and `scales` must hold
/// `y.len()` rows of `cols` (as `Matrix::check` finds) and `x` `cols` values.
pub(super) unsafe fn matvec(quants: &[i8], scales: &[u16], cols: usize, x: &[f32], y: &mut [f32]) {
    let blocks = cols.div_ceil(32);
    let min = min_rows_per_block(blocks * 34, 4);
    with_local(&QX, |qx| {
        qx.quantize(x);
        let qx = &*qx;
        // SAFETY: as the caller vouches; `par_rows_guided` gives each call a disjoint
        // `ys` starting at row `r0` with `r0 + ys.len()` within the matrix. Through
        // `rows_n`, whose target features let the intrinsics inline: `rows` called here
        // directly ran them as calls, 30x slower (1.1 GB/s).
        par_rows_guided(y, min, 1, |r0, ys| unsafe {
            rows_n(quants.as_ptr(), scales.as_ptr(), blocks, r0, ys.len(), std::slice::from_ref(qx), ys.as_mut_ptr().wrapping_sub(r0), 0)
        })
    })
}

/// `y[t] = W x[t]` for a decode batch of `n` tokens (`x` is `n x cols`, `y` is
/// `n x rows`): each token's outputs are exactly [`matvec`]'s (the same operations in
/// the same order, [`rows`]), so a sequence's numbers do not depend on its batch, while
/// each weight block is loaded once for up to [`FEW`] tokens and the rows are taken in
/// sub-blocks that stay in L2 while every group of tokens passes over them.
///
/// # Safety
/// As [`matvec`], with `x` holding `n` rows of `cols` and `y` `n` rows of `y_rows`.
pub(super) unsafe fn matmul_decode(quants: &[i8], scales: &[u16], cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let rows_total = y.len() / n.max(1);
    let blocks = cols.div_ceil(32);
    let min = min_rows_per_block(blocks * 34, 4);
    let sub = rows_per_sub_block(blocks * 34, 1, MANY_SUB_BYTES);
    let yp = SendPtr(y.as_mut_ptr());
    with_local(&MANY, |qx| {
        if qx.len() < n {
            qx.resize_with(n, QuantX::new);
        }
        for (t, q) in qx[..n].iter_mut().enumerate() {
            q.quantize(&x[t * cols..][..cols]);
        }
        let qx = &qx[..n];
        // SAFETY: as the caller vouches; `par_rows_guided` gives each call rows
        // `r0 .. r0 + block.len()` within the matrix, which it alone writes for every token.
        par_rows_guided(&mut y[..rows_total], min, 1, |r0, block| {
            for a in (r0..r0 + block.len()).step_by(sub) {
                let len = sub.min(r0 + block.len() - a);
                for t0 in (0..n).step_by(FEW) {
                    let xs = &qx[t0..n.min(t0 + FEW)];
                    let y = yp.get().add(t0 * rows_total);
                    unsafe { rows_n(quants.as_ptr(), scales.as_ptr(), blocks, a, len, xs, y, rows_total) }
                }
            }
        })
    })
}

/// Tokens [`matmul_decode`] passes over a weight row at once.
const FEW: usize = 4;

/// Weights a sub-block of a decode batch covers: a quarter of a 2 MiB L2.
const MANY_SUB_BYTES: usize = 512 << 10;

thread_local! {
    /// The calling thread's quantised tokens of a decode batch; only ever grows.
    static MANY: RefCell<Vec<QuantX>> = const { RefCell::new(Vec::new()) };
}

/// [`rows`] for 1 to [`FEW`] tokens.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows_n(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, len: usize, x: &[QuantX], y: *mut f32, ldy: usize) {
    match x.len() {
        1 => rows::<1>(quants, scales, blocks, r0, len, x, y, ldy),
        2 => rows::<2>(quants, scales, blocks, r0, len, x, y, ldy),
        3 => rows::<3>(quants, scales, blocks, r0, len, x, y, ldy),
        _ => rows::<4>(quants, scales, blocks, r0, len, x, y, ldy),
    }
}

/// q8_0 rows `r0 .. r0 + len` (`blocks` per row) against `N` quantised tokens `x` (their
/// quants and block scales), token `t`'s outputs at `y + t * ldy`. Each token's sums do
/// not depend on `N`: every step below is done per token in the same order.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `quants` and `scales` must hold rows
/// `r0 .. r0 + len`, each `x[t]` `blocks` blocks (quants and scales), and `y` room for
/// row `r0 + len - 1` of token `N - 1` at stride `ldy`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows<const N: usize>(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, len: usize, x: &[QuantX], y: *mut f32, ldy: usize) {
    let xq: [*const i8; N] = std::array::from_fn(|t| x[t].quants[..blocks * 32].as_ptr());
    let xd: [*const f32; N] = std::array::from_fn(|t| x[t].scales[..blocks].as_ptr());
    // Lanes 0-7 take the scale of a pair's first block, 8-15 of its second; pair `k`
    // of a group of eight blocks holds blocks 2k and 2k + 1.
    let pair_scales: [__m512i; 4] = std::array::from_fn(|k| {
        let (a, b) = (2 * k as i32, 2 * k as i32 + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let groups = blocks / 8;
    for r in r0..r0 + len {
        let q = quants.add(r * blocks * 32);
        let s = scales.add(r * blocks);
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        for g in 0..groups {
            // The scales are a second stream, 1/16 of the quants' bytes. Prefetching it
            // too: 1B decode steps alternating with and without in one process (2
            // threads, 200 steps) were a median 1.6% faster, 0.8% slower to 3.6%
            // faster over 8 runs; 1.2% (0.5-2.3%) with the AVX2 kernel.
            _mm_prefetch::<_MM_HINT_T0>((s.add(g * 8) as *const i8).wrapping_add(PREFETCH / 16));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(s.add(g * 8) as *const __m128i));
            let d: [__m512; N] = std::array::from_fn(|t| _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(xd[t].add(g * 8)))));
            for (k, pair) in pair_scales.iter().enumerate() {
                let off = g * 256 + k * 64;
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(off + PREFETCH));
                let w = _mm512_loadu_si512(q.add(off) as *const _);
                let (sign, abs) = (_mm512_movepi8_mask(w), _mm512_abs_epi8(w));
                for t in 0..N {
                    let xv = _mm512_loadu_si512(xq[t].add(off) as *const _);
                    let xs = _mm512_mask_sub_epi8(xv, sign, _mm512_setzero_si512(), xv);
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), abs, xs);
                    acc[t][k % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(*pair, d[t]), acc[t][k % 2]);
                }
            }
        }
        let mut tail = [_mm256_setzero_ps(); N];
        for b in groups * 8..blocks {
            let w = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
            for t in 0..N {
                let xv = _mm256_loadu_si256(xq[t].add(b * 32) as *const __m256i);
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
                let d = f16::from_bits(*s.add(b)).to_f32() * *xd[t].add(b);
                tail[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), tail[t]);
            }
        }
        for t in 0..N {
            let tail = _mm512_zextps256_ps512(tail[t]);
            *y.add(t * ldy + r) = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), tail));
        }
    }
}
