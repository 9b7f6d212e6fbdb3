//! `exp(x)` in SIMD lanes, shared by the softmax (attention) and SwiGLU kernels: the
//! same steps in 8 lanes (AVX2) and 16 (AVX-512), so both give the same bits lane by
//! lane. A leaf module: the kernels that need it import it, and it imports none of them.
//! Every function here may only run where its instructions are available.

use std::arch::x86_64::*;

/// Inputs are clamped to +-this: past it `f32::exp` overflows or flushes.
const CLAMP: f32 = 88.376_26;
/// `ln 2` in two parts for the range reduction: `r = x - n * LN2_HI - n * LN2_LO`.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// The polynomial's coefficients, highest degree first (Horner's order).
const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// `exp(x)` for eight lanes: Cephes' `expf` (range reduction by `ln 2` in two parts, a
/// degree-6 polynomial, the exponent built in the bits), within 2 ulp of `f32::exp`;
/// inputs are clamped to +-[`CLAMP`].
#[inline(always)]
pub(super) unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-CLAMP)), _mm256_set1_ps(CLAMP));
    let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(POLY[0]);
    for c in POLY[1..].iter().copied() {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
}

/// [`exp8`] in 16 lanes, step for step (so the same bits lane by lane).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-CLAMP)), _mm512_set1_ps(CLAMP));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for c in POLY[1..].iter().copied() {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(scale))
}
