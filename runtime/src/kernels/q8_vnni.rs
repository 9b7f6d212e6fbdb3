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
use super::avx2::PREFETCH;
use super::tasks::{min_rows_per_block, par_rows_guided, with_local};

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
        // `ys` starting at row `r0` with `r0 + ys.len()` within the matrix.
        par_rows_guided(y, min, 1, |r0, ys| unsafe { rows(quants.as_ptr(), scales.as_ptr(), blocks, r0, qx, ys) })
    })
}

/// q8_0 rows `r0 .. r0 + y.len()` (`blocks` per row) against the quantised `x`: its
/// quants and block scales.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `quants` and `scales` must hold rows
/// `r0 .. r0 + y.len()`, and `x` `blocks` blocks (quants and scales).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, x: &QuantX, y: &mut [f32]) {
    let (xq, xd) = (&x.quants[..blocks * 32], &x.scales[..blocks]);
    // Lanes 0-7 take the scale of a pair's first block, 8-15 of its second; pair `k`
    // of a group of eight blocks holds blocks 2k and 2k + 1.
    let pair_scales: [__m512i; 4] = std::array::from_fn(|k| {
        let (a, b) = (2 * k as i32, 2 * k as i32 + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let groups = blocks / 8;
    let (xqp, xdp) = (xq.as_ptr(), xd.as_ptr());
    for (i, out) in y.iter_mut().enumerate() {
        let q = quants.add((r0 + i) * blocks * 32);
        let s = scales.add((r0 + i) * blocks);
        let mut acc = [_mm512_setzero_ps(); 2];
        for g in 0..groups {
            // The scales are a second stream, 1/16 of the quants' bytes. Prefetching it
            // too: 1B decode steps alternating with and without in one process (2
            // threads, 200 steps) were a median 1.6% faster, 0.8% slower to 3.6%
            // faster over 8 runs; 1.2% (0.5-2.3%) with the AVX2 kernel.
            _mm_prefetch::<_MM_HINT_T0>((s.add(g * 8) as *const i8).wrapping_add(PREFETCH / 16));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(s.add(g * 8) as *const __m128i));
            let d = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(xdp.add(g * 8))));
            for (k, pair) in pair_scales.iter().enumerate() {
                let off = g * 256 + k * 64;
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(off + PREFETCH));
                let w = _mm512_loadu_si512(q.add(off) as *const _);
                let xv = _mm512_loadu_si512(xqp.add(off) as *const _);
                let xs = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(w), _mm512_setzero_si512(), xv);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), xs);
                acc[k % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(*pair, d), acc[k % 2]);
            }
        }
        let mut tail = _mm256_setzero_ps();
        for b in groups * 8..blocks {
            let w = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
            let xv = _mm256_loadu_si256(xqp.add(b * 32) as *const __m256i);
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
            let d = f16::from_bits(*s.add(b)).to_f32() * *xdp.add(b);
            tail = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), tail);
        }
        let tail = _mm512_zextps256_ps512(tail);
        *out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), tail));
    }
}

