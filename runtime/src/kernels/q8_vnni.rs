//! The one-token q8_0 product `y = W x` with AVX-512 VNNI: each 512-bit `vpdpbusd`
//! takes two blocks of 32 weights against the activations' quants, sixteen lanes of
//! four byte products.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones. The weights are made unsigned
//! by flipping their top bit (`w ^ 0x80 = w + 128`), which adds `128 * sum(x)` over each
//! lane's four activations; that sum depends on `x` alone, so it is computed once per
//! product ([`lane_offsets`]) and the dot product starts from its negation. The integer
//! block sums are exact and equal to the AVX2 kernel's; only the order of the float
//! additions differs.
//!
//! Per block this is a load, an `xor`, half a `vpdpbusd`, half a conversion, half a
//! permute of the block's scale and half an FMA, against ten instructions for the AVX2
//! kernel's sign trick. One core multiplying a 192 x 2048 matrix held in L2: 72-75 GB/s
//! of weights against 45-52. That headroom shows when memory is fast: 1B decode steps
//! against their floor (`decode_floor`, 64 steps, processes alternating) at 59-67 GB/s
//! had ratios 1.11-1.16 with this kernel and 1.18 with AVX2's; at 40 GB/s, where one
//! core needs only 20 GB/s, the two were level (1.04-1.06).

use std::arch::x86_64::*;

use half::f16;

use super::avx2::PREFETCH;
use super::QuantX;

/// Writes, for each block of 32 quants in `xq`, eight i32 lanes: `-128` times the sum of
/// each lane's four quants (what flipping the weights' top bit adds to a lane of the
/// dot product).
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/VNNI; `xq.len()` a multiple of 32 and
/// `out.len() == xq.len() / 4`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn lane_offsets(xq: &[i8], out: &mut [i32]) {
    debug_assert!(xq.len().is_multiple_of(32) && out.len() == xq.len() / 4);
    let unsigned_128 = _mm256_set1_epi8(-128);
    for (b, o) in out.chunks_exact_mut(8).enumerate() {
        let x = _mm256_loadu_si256(xq.as_ptr().add(b * 32) as *const __m256i);
        let sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned_128, x);
        _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, _mm256_sub_epi32(_mm256_setzero_si256(), sum));
    }
}

/// q8_0 rows `r0 .. r0 + y.len()` (`blocks` per row) against the quantised `x`: its
/// quants, block scales and [`lane_offsets`].
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/VNNI; `quants` and `scales` must hold rows
/// `r0 .. r0 + y.len()`, and `x` `blocks` blocks (quants, scales and eight offsets each).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn rows(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, x: &QuantX, y: &mut [f32]) {
    let (xq, xo, xd) = (&x.quants[..blocks * 32], &x.offsets[..blocks * 8], &x.scales[..blocks]);
    let top_bit = _mm512_set1_epi8(-128);
    // Lanes 0-7 take the scale of a pair's first block, 8-15 of its second; pair `k`
    // of a group of eight blocks holds blocks 2k and 2k + 1.
    let pair_scales: [__m512i; 4] = std::array::from_fn(|k| {
        let (a, b) = (2 * k as i32, 2 * k as i32 + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let groups = blocks / 8;
    let (xqp, xop, xdp) = (xq.as_ptr(), xo.as_ptr(), xd.as_ptr());
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
                let w = _mm512_xor_si512(_mm512_loadu_si512(q.add(off) as *const _), top_bit);
                let start = _mm512_loadu_si512(xop.add(off / 4) as *const _);
                let dot = _mm512_dpbusd_epi32(start, w, _mm512_loadu_si512(xqp.add(off) as *const _));
                acc[k % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(*pair, d), acc[k % 2]);
            }
        }
        let mut tail = _mm256_setzero_ps();
        for b in groups * 8..blocks {
            let w = _mm256_xor_si256(_mm256_loadu_si256(q.add(b * 32) as *const __m256i), _mm512_castsi512_si256(top_bit));
            let start = _mm256_loadu_si256(xop.add(b * 8) as *const __m256i);
            let dot = _mm256_dpbusd_epi32(start, w, _mm256_loadu_si256(xqp.add(b * 32) as *const __m256i));
            let d = f16::from_bits(*s.add(b)).to_f32() * *xdp.add(b);
            tail = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), tail);
        }
        let tail = _mm512_zextps256_ps512(tail);
        *out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), tail));
    }
}

