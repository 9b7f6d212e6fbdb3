//! AVX2 + FMA + F16C kernels. Every `unsafe fn` here may only run where
//! [`super::avx2_available`] holds; the dispatch's entry points check that.
//!
//! A matrix-vector product is bound by the speed weights arrive from memory, so each
//! thread walks its rows one after another as a single sequential stream, prefetched
//! [`PREFETCH`] bytes ahead, four accumulators per row, converting f16/bf16 in
//! registers. q8_0 quantises `x` to int8 per block of 32 once per call and
//! multiplies bytes with `maddubs`.

use std::arch::x86_64::*;
use std::cell::RefCell;

use half::{bf16, f16};

use super::activations::{QuantX, ScaleSpan};
use super::exp::exp8;
use super::kv_element::KvElement;
use super::matrix::{Matrix, MatrixData};
use super::tasks::{for_each_task, grow, min_rows_per_block, par_row_groups, par_rows_guided, rows_per_sub_block, rows_per_task, with_local, prefetch_weights, SendPtr, PREFETCH};

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    _mm_cvtss_f32(m)
}

/// How one stored element type widens to f32, eight at a time.
pub(super) trait Widen {
    type E: Copy;
    /// How far ahead of its loads [`rows_float`] prefetches a matrix of these.
    const PREFETCH: usize;
    unsafe fn load8(p: *const Self::E) -> __m256;
    fn one(e: Self::E) -> f32;
}

pub(super) struct WF32;
pub(super) struct WF16;
pub(super) struct WBF16;

impl Widen for WF32 {
    type E = f32;
    const PREFETCH: usize = F32_PREFETCH;
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    fn one(e: f32) -> f32 {
        e
    }
}

impl Widen for WF16 {
    type E = u16;
    const PREFETCH: usize = PREFETCH;
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    fn one(e: u16) -> f32 {
        f16::from_bits(e).to_f32()
    }
}

impl Widen for WBF16 {
    type E = u16;
    const PREFETCH: usize = PREFETCH;
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(w, 16))
    }
    #[inline(always)]
    fn one(e: u16) -> f32 {
        bf16::from_bits(e).to_f32()
    }
}


/// `y[i] = W[r0 + i] . x` (`+=` with `acc`) for the rows of `y`; `w` points at row 0 of
/// a row-major matrix.
#[inline(always)]
unsafe fn rows_float<L: Widen>(w: *const L::E, cols: usize, r0: usize, x: &[f32], y: &mut [f32], acc: bool) {
    let xp = x.as_ptr();
    let n = y.len();
    let mut i = 0;
    // One row at a time: the thread reads its rows as one sequential stream.
    while i < n {
        let p = w.add((r0 + i) * cols);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c + 32 <= cols {
            // The 64 (16-bit) or 128 (f32) bytes of this pass, `L::PREFETCH` ahead into
            // L1 and `PREFETCH_L2` ahead into L2.
            for line in (0..32 * std::mem::size_of::<L::E>()).step_by(64) {
                prefetch_weights((p.add(c) as *const i8).wrapping_add(line), L::PREFETCH);
            }
            for (j, a) in a.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(L::load8(p.add(c + 8 * j)), _mm256_loadu_ps(xp.add(c + 8 * j)), *a);
            }
            c += 32;
        }
        while c + 8 <= cols {
            a[0] = _mm256_fmadd_ps(L::load8(p.add(c)), _mm256_loadu_ps(xp.add(c)), a[0]);
            c += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
        for (k, &xk) in x.iter().enumerate().take(cols).skip(c) {
            s += L::one(*p.add(k)) * xk;
        }
        y[i] = if acc { y[i] + s } else { s };
        i += 1;
    }
}

/// Tokens one pass of [`matvec_few`] multiplies at once.
pub const FEW: usize = 4;

/// `y[t][r0 + i] = W[r0 + i] . x[t]` (`+=` with `acc`) for `N` tokens and `len` rows of
/// a row-major matrix: each weight row is read once for all of them. `x` is packed by
/// [`pack_few`], `y` has the tokens' rows `ldy` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_float_few<L: Widen, const N: usize>(
    w: *const L::E,
    cols: usize,
    r0: usize,
    len: usize,
    x: *const f32,
    y: *mut f32,
    ldy: usize,
    acc: bool,
) {
    for r in r0..r0 + len {
        let p = w.add(r * cols);
        let mut a = [[_mm256_setzero_ps(); 2]; N];
        let mut c = 0;
        while c + 16 <= cols {
            // As `rows_float` prefetches: the first tokens of a batch read the rows from
            // memory (the rest from L2).
            for line in (0..16 * std::mem::size_of::<L::E>()).step_by(64) {
                prefetch_weights((p.add(c) as *const i8).wrapping_add(line), L::PREFETCH);
            }
            let w0 = L::load8(p.add(c));
            let w1 = L::load8(p.add(c + 8));
            let xc = x.add(c * N);
            for (t, at) in a.iter_mut().enumerate() {
                let xt = xc.add(t * 16);
                at[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xt), at[0]);
                at[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xt.add(8)), at[1]);
            }
            c += 16;
        }
        for (t, at) in a.iter().enumerate() {
            let mut s = hsum(_mm256_add_ps(at[0], at[1]));
            for k in c..cols {
                s += L::one(*p.add(k)) * *x.add(c * N + t * (cols - c) + k - c);
            }
            let out = y.add(t * ldy + r);
            *out = if acc { *out + s } else { s };
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_few<L: Widen>(w: *const L::E, cols: usize, r0: usize, len: usize, n: usize, x: *const f32, y: *mut f32, ldy: usize, acc: bool) {
    match n {
        1 => rows_float_few::<L, 1>(w, cols, r0, len, x, y, ldy, acc),
        2 => rows_float_few::<L, 2>(w, cols, r0, len, x, y, ldy, acc),
        3 => rows_float_few::<L, 3>(w, cols, r0, len, x, y, ldy, acc),
        _ => rows_float_few::<L, 4>(w, cols, r0, len, x, y, ldy, acc),
    }
}

/// `Y = X W^T` for a few tokens (`x` is `n x cols`, `y` is `n x rows`) of an f32, f16
/// or bf16 matrix, [`FEW`] tokens per pass over the weights: for short prompts, where
/// the GEMM's packing of every weight tile would cost more than its arithmetic saves
/// (see `super::SMALL_BATCH`).
pub fn matvec_few(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    with_local(&XFEW, |packed| few_passes(w, x, n, y, packed))
}

thread_local! {
    /// The calling thread's packed tokens for [`matvec_few`]; only ever grows.
    static XFEW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Lays out `m` token rows of `cols` for [`rows_float_few`]: 16 columns of token 0, the
/// same 16 of token 1, ..., then the next 16; the last `cols % 16` columns token-major.
/// One sequential stream instead of `m` rows a multiple of 4 KiB apart, which share
/// L1 sets.
fn pack_few(x: &[f32], m: usize, cols: usize, out: &mut [f32]) {
    let whole = cols / 16 * 16;
    for t in 0..m {
        let row = &x[t * cols..][..cols];
        for c in (0..whole).step_by(16) {
            out[c * m + t * 16..][..16].copy_from_slice(&row[c..c + 16]);
        }
        out[whole * m + t * (cols - whole)..][..cols - whole].copy_from_slice(&row[whole..]);
    }
}

fn few_passes(w: &Matrix, x: &[f32], n: usize, y: &mut [f32], packed: &mut Vec<f32>) {
    let (rows, cols) = (w.rows, w.cols);
    let per = rows_per_task(rows, cols, 4);
    let yp = SendPtr(y.as_mut_ptr());
    for t0 in (0..n).step_by(FEW) {
        let m = FEW.min(n - t0);
        grow(packed, m * cols);
        pack_few(&x[t0 * cols..][..m * cols], m, cols, packed);
        let xs = packed.as_ptr() as usize;
        let tasks = rows.div_ceil(per);
        let task = |i: usize| {
            let (r0, len) = (i * per, per.min(rows - i * per));
            let y = unsafe { yp.get().add(t0 * rows) };
            for (c0, p) in w.panels() {
                // Panel columns `c0 ..` of the packed tokens: `c0` is a multiple of 16,
                // and `pack_few`'s tail (token-major) is the last panel's.
                let (x, acc) = ((xs as *const f32).wrapping_add(c0 * m), c0 > 0);
                // SAFETY: `super::matmul_with` checked the CPU features, that `x` holds
                // `n` rows of `cols` (so `packed` holds `m`) and `y` `n` of `rows`, and
                // that the weights hold `rows` whole rows (so each panel does); task `i`
                // alone writes rows `r0 .. r0 + len` (within `rows`) of the `m` tokens'
                // outputs.
                unsafe {
                    match p.data {
                        MatrixData::F32(d) => rows_few::<WF32>(d.as_ptr(), p.cols, r0, len, m, x, y, rows, acc),
                        MatrixData::F16(d) => rows_few::<WF16>(d.as_ptr(), p.cols, r0, len, m, x, y, rows, acc),
                        MatrixData::BF16(d) => rows_few::<WBF16>(d.as_ptr(), p.cols, r0, len, m, x, y, rows, acc),
                        MatrixData::Q8_0 { .. } | MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => unreachable!("matvec_few takes float matrices"),
                    }
                }
            }
        };
        for_each_task(tasks, task);
    }
}

/// `x` laid out for [`rows_bf16`]: in each whole block of 16 columns, the 8 even columns
/// then the 8 odd ones (the columns past the last whole block are not copied).
fn deinterleave16(x: &[f32], out: &mut [f32]) {
    for (o, c) in out.chunks_exact_mut(16).zip(x.chunks_exact(16)) {
        for j in 0..8 {
            o[j] = c[2 * j];
            o[8 + j] = c[2 * j + 1];
        }
    }
}

/// [`rows_float`] for bf16 weights against `xd`, `x` deinterleaved by [`deinterleave16`].
/// A bf16 value is the top half of its f32, so one 256-bit load of 16 weights gives the
/// even ones by a shift and the odd ones by a mask: no widening shuffle, which left the
/// bf16 kernel (42 GB/s in L2 on one core, against f16's 52) with too little headroom
/// over a memory stream.
#[inline(always)]
unsafe fn rows_bf16(w: *const u16, cols: usize, r0: usize, x: &[f32], xd: &[f32], y: &mut [f32], acc: bool) {
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let whole = cols / 16 * 16;
    let xp = xd.as_ptr();
    for (i, yi) in y.iter_mut().enumerate() {
        let p = w.add((r0 + i) * cols);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c + 32 <= whole {
            prefetch_weights(p.add(c) as *const i8, WBF16::PREFETCH);
            for (h, a) in a.chunks_exact_mut(2).enumerate() {
                let v = _mm256_loadu_si256(p.add(c + 16 * h) as *const __m256i);
                let even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                a[0] = _mm256_fmadd_ps(even, _mm256_loadu_ps(xp.add(c + 16 * h)), a[0]);
                a[1] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(xp.add(c + 16 * h + 8)), a[1]);
            }
            c += 32;
        }
        if c < whole {
            let v = _mm256_loadu_si256(p.add(c) as *const __m256i);
            a[0] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(xp.add(c)), a[0]);
            a[1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), _mm256_loadu_ps(xp.add(c + 8)), a[1]);
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
        for (k, &xk) in x.iter().enumerate().take(cols).skip(whole) {
            s += WBF16::one(*p.add(k)) * xk;
        }
        *yi = if acc { *yi + s } else { s };
    }
}

/// [`rows_float`] (bf16: [`rows_bf16`], with `xd` from [`deinterleave16`]) over each
/// column panel of a float matrix in turn, accumulating.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_panels(w: &Matrix, r0: usize, x: &[f32], xd: &[f32], y: &mut [f32]) {
    for (c0, p) in w.panels() {
        // Panels start at multiples of 2048 columns, so `xd`'s blocks of 16 line up.
        let (x, acc) = (&x[c0..][..p.cols], c0 > 0);
        match p.data {
            MatrixData::F32(d) => rows_float::<WF32>(d.as_ptr(), p.cols, r0, x, y, acc),
            MatrixData::F16(d) => rows_float::<WF16>(d.as_ptr(), p.cols, r0, x, y, acc),
            MatrixData::BF16(d) => rows_bf16(d.as_ptr(), p.cols, r0, x, &xd[c0..][..p.cols / 16 * 16], y, acc),
            MatrixData::Q8_0 { .. } | MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => unreachable!("rows_panels takes float matrices"),
        }
    }
}

impl QuantX {
    /// Quantises `x` per `span` (see [`super::activations::quantize_span`]); grows the
    /// buffers only when `x` is longer than any before.
    pub(super) fn quantize(&mut self, x: &[f32], span: ScaleSpan) {
        let blocks = self.reserve(x.len());
        let per = span.values();
        let whole = x.len() / per * per;
        // SAFETY (both calls): reached only through `super::matvec_with` (or the VNNI
        // matvec or GEMM, reached from it), which checked the CPU features; `reserve`
        // sized `quants` and `scales` for every block, and the tail's blocks are copied
        // out of a whole span.
        unsafe { quantize_spans(&x[..whole], per, &mut self.quants, &mut self.scales) };
        if whole < x.len() {
            let mut tail = [0f32; 256];
            tail[..x.len() - whole].copy_from_slice(&x[whole..]);
            let (mut q, mut d) = ([0i8; 256], [0f32; 8]);
            unsafe { quantize_spans(&tail[..per], per, &mut q, &mut d) };
            let b0 = whole / 32;
            self.quants[whole..blocks * 32].copy_from_slice(&q[..(blocks - b0) * 32]);
            self.scales[b0..blocks].copy_from_slice(&d[..blocks - b0]);
        }
    }
}

/// `x` replaced by its int8 activation rounding per `span`, `q * d`: the bits
/// `activations::round_like_int8` gives (the same max, scale and round-to-nearest-even
/// of the same products), whole spans eight values at a time, a last partial span by
/// that function. The scalar form's rounding was a call into libm per value (`rintf`:
/// x86-64's baseline has no rounding instruction), 4% of an AVX2 q8_0 prompt.
///
/// # Safety
/// AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn round_like_int8(x: &mut [f32], span: ScaleSpan) {
    let per = span.values();
    let whole = x.len() / per * per;
    for xs in x[..whole].chunks_exact_mut(per) {
        let (inv, d) = span_scale(xs.as_ptr(), per / 32);
        for xb in xs.chunks_exact_mut(32) {
            for (j, q) in quantize32(xb.as_ptr(), inv).iter().enumerate() {
                _mm256_storeu_ps(xb.as_mut_ptr().add(8 * j), _mm256_mul_ps(_mm256_cvtepi32_ps(*q), _mm256_set1_ps(d)));
            }
        }
    }
    if whole < x.len() {
        super::activations::round_like_int8(&mut x[whole..], span);
    }
}

/// The multiplier `127 / max|x|` (0 for zeros) and scale `max|x| / 127` of the
/// `blocks` blocks of 32 values at `p`, as `activations::quantize_span` finds them.
#[inline(always)]
unsafe fn span_scale(p: *const f32, blocks: usize) -> (__m256, f32) {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for j in 0..blocks * 4 {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * j))));
    }
    let amax = hmax(m);
    (_mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 }), amax / 127.0)
}

/// One block of 32 values at `p` times `inv`, rounded to the nearest integer (ties to
/// even) in i32 lanes, in order, eight a register. Through the integer, as the quant
/// is: -0.3 rounds to 0, not -0.0.
///
/// # Safety
/// AVX2 (inlined into the callers' target features); `p` must hold 32 values.
#[inline(always)]
unsafe fn quantize32(p: *const f32, inv: __m256) -> [__m256i; 4] {
    // A loop, not `array::from_fn`: a closure has no target features, so the
    // intrinsics in it would not inline.
    let mut q = [_mm256_setzero_si256(); 4];
    for (j, q) in q.iter_mut().enumerate() {
        *q = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(p.add(8 * j)), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    q
}

/// Quantises whole spans of `per` values (`x.len()` a multiple of `per`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_spans(x: &[f32], per: usize, q: &mut [i8], d: &mut [f32]) {
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (s, xs) in x.chunks_exact(per).enumerate() {
        let (inv, scale) = span_scale(xs.as_ptr(), per / 32);
        for (j, xb) in xs.chunks_exact(32).enumerate() {
            let b = s * per / 32 + j;
            let i = quantize32(xb.as_ptr(), inv);
            d[b] = scale;
            let lo = _mm256_packs_epi32(i[0], i[1]);
            let hi = _mm256_packs_epi32(i[2], i[3]);
            let all = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), perm);
            _mm256_storeu_si256(q.as_mut_ptr().add(b * 32) as *mut __m256i, all);
        }
    }
}

/// Sum of the 32 byte products of `w` and `x` as eight i32 lanes converted to f32.
#[inline(always)]
unsafe fn dot_q8(w: __m256i, x: __m256i) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones))
}


/// [`PREFETCH`] for f32 weights, which 6 KiB did not help: 0.922 and 0.952 against
/// 0.981 and 0.931 with 4 KiB in two runs at ~65 GB/s.
const F32_PREFETCH: usize = 4096;

/// How far ahead attention prefetches the cached keys and values it walks.
const KV_PREFETCH: usize = 4096;

/// q8_0 rows `r0 ..` against quantised `x`; `blocks` per row. `R` rows at a time share
/// each load of x; scales are widened eight blocks at once.
#[inline(always)]
unsafe fn rows_q8_0_r<const R: usize>(
    quants: *const i8,
    scales: *const u16,
    blocks: usize,
    r0: usize,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
) {
    let n = y.len();
    let xqp = xq.as_ptr();
    let xdp = xd.as_ptr();
    let groups = blocks / 8;
    let mut i = 0;
    while i < n {
        let rows = (n - i).min(R);
        let q: [*const i8; R] = std::array::from_fn(|j| quants.add((r0 + i + j.min(rows - 1)) * blocks * 32));
        let s: [*const u16; R] = std::array::from_fn(|j| scales.add((r0 + i + j.min(rows - 1)) * blocks));
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc2 = [_mm256_setzero_ps(); R];
        for g in 0..groups {
            // The scales are a second stream, 1/16 of the quants' bytes (see q8_vnni).
            for sj in s {
                _mm_prefetch::<_MM_HINT_T0>((sj.add(g * 8) as *const i8).wrapping_add(PREFETCH / 16));
            }
            let dx = _mm256_loadu_ps(xdp.add(g * 8));
            let mut d = [[0f32; 8]; R];
            for j in 0..R {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(s[j].add(g * 8) as *const __m128i));
                _mm256_storeu_ps(d[j].as_mut_ptr(), _mm256_mul_ps(dw, dx));
            }
            for k in (0..8).step_by(2) {
                let b = g * 8 + k;
                let xv = _mm256_loadu_si256(xqp.add(b * 32) as *const __m256i);
                let xv2 = _mm256_loadu_si256(xqp.add(b * 32 + 32) as *const __m256i);
                for j in 0..R {
                    prefetch_weights(q[j].wrapping_add(b * 32), PREFETCH);
                    let wv = _mm256_loadu_si256(q[j].add(b * 32) as *const __m256i);
                    let wv2 = _mm256_loadu_si256(q[j].add(b * 32 + 32) as *const __m256i);
                    acc[j] = _mm256_fmadd_ps(dot_q8(wv, xv), _mm256_set1_ps(d[j][k]), acc[j]);
                    acc2[j] = _mm256_fmadd_ps(dot_q8(wv2, xv2), _mm256_set1_ps(d[j][k + 1]), acc2[j]);
                }
            }
        }
        for (b, &xdb) in xd.iter().enumerate().take(blocks).skip(groups * 8) {
            let xv = _mm256_loadu_si256(xqp.add(b * 32) as *const __m256i);
            for j in 0..R {
                let wv = _mm256_loadu_si256(q[j].add(b * 32) as *const __m256i);
                let d = f16::from_bits(*s[j].add(b)).to_f32() * xdb;
                acc[j] = _mm256_fmadd_ps(dot_q8(wv, xv), _mm256_set1_ps(d), acc[j]);
            }
        }
        for j in 0..rows {
            y[i + j] = hsum(_mm256_add_ps(acc[j], acc2[j]));
        }
        i += rows;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q8_0(
    quants: *const i8,
    scales: *const u16,
    blocks: usize,
    r0: usize,
    xq: &[i8],
    xd: &[f32],
    y: &mut [f32],
) {
    // One row at a time: each thread's rows are one sequential stream, which the
    // hardware prefetcher follows best (2 or 4 interleaved rows measured 1.5-2x slower
    // on 2 KiB rows).
    rows_q8_0_r::<1>(quants, scales, blocks, r0, xq, xd, y)
}

thread_local! {
    static QX: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
    /// The calling thread's `x` for a bf16 product ([`deinterleave16`]); only grows.
    static XBF16: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y = W x`, rows claimed by the threads in shrinking blocks ([`par_rows_guided`]).
pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    let cols = w.cols;
    // Guided blocks rather than a fixed split: decode steps alternating between the two
    // in one process (the 1B, 2 threads, 80 pairs) were 3-6% faster with them when
    // memory ran at ~60 GB/s, where one core alone cannot keep up and a thread left
    // idle at a section's end costs bandwidth, and about 1% at ~40 GB/s.
    let min = min_rows_per_block(w.row_bytes(), 4);
    // SAFETY (every `unsafe` below): `super::matvec_with` checked the CPU features, that
    // `x` has `cols` elements and `y` `rows`, and that the weights hold `rows` whole rows;
    // `par_rows_guided` gives each call a disjoint `ys` starting at row `r0` with
    // `r0 + ys.len() <= rows`, so every row the kernel reads lies inside the matrix.
    match w.data {
        MatrixData::F32(_) | MatrixData::F16(_) => par_rows_guided(y, min, 1, |r0, ys| unsafe { rows_panels(w, r0, x, &[], ys) }),
        MatrixData::BF16(_) => with_local(&XBF16, |xd| {
            grow(xd, cols);
            deinterleave16(x, xd);
            let xd = &xd[..cols];
            par_rows_guided(y, min, 1, |r0, ys| unsafe { rows_panels(w, r0, x, xd, ys) })
        }),
        MatrixData::Q8_0 { quants, scales } => with_local(&QX, |qx| {
            let blocks = cols.div_ceil(32);
            qx.quantize(x, ScaleSpan::Block);
            let (xq, xd) = (&qx.quants[..blocks * 32], &qx.scales[..blocks]);
            par_rows_guided(y, min, 1, |r0, ys| unsafe {
                rows_q8_0(quants.as_ptr(), scales.as_ptr(), blocks, r0, xq, xd, ys)
            })
        }),        MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => unreachable!("the dispatch sends 4-bit matrices to q4_avx2"),
    }
}

/// Weights a sub-block of a decode batch covers: a quarter of a core's L2 (512 KiB on
/// this machine's Zen cores), so the rows stay cached while every token passes over them.
pub(super) const MANY_SUB_BYTES: usize = 128 << 10;

thread_local! {
    /// The calling thread's tokens prepared for a decode batch: quantised (q8_0) or
    /// packed in groups of [`FEW`] (float), one per token; only ever grows.
    static MANY: RefCell<(Vec<QuantX>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `y[t] = W x[t]` for a decode batch of `n` tokens (`x` is `n x cols`, `y` is
/// `n x rows`), whose every token is summed in an order that does not depend on `n` or
/// on the other tokens, so a sequence's result does not depend on its batch. The threads
/// claim blocks of rows as [`matvec`] does; each block is taken in sub-blocks that stay
/// in L2 ([`MANY_SUB_BYTES`]), and each sub-block's weight rows are loaded once for
/// [`FEW`] tokens at a time.
///
/// q8_0: each token's outputs are exactly [`matvec`]'s ([`rows_q8_0_few`]). Float
/// weights: [`rows_float_few`]'s two accumulators per token, for `n = 1` too (so one
/// sequence alone computes as it does in a batch; its numbers differ from [`matvec`]'s
/// by rounding).
pub fn matmul_decode(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    let min = min_rows_per_block(w.row_bytes(), 4);
    let sub = rows_per_sub_block(w.row_bytes(), 1, MANY_SUB_BYTES);
    with_local(&MANY, |(qx, packed)| {
        // SAFETY (every `unsafe` below): `super::matmul_decode` checked the CPU features,
        // that `x` has `n` rows of `cols` and `y` `n` of `rows`, and that the weights hold
        // `rows` whole rows; `par_row_groups` gives each call rows `a .. a + len` within
        // `rows`, which it alone writes, for its tokens.
        match w.data {
            MatrixData::Q8_0 { quants, scales } => {
                let blocks = cols.div_ceil(32);
                if qx.len() < n {
                    qx.resize_with(n, QuantX::new);
                }
                for (t, q) in qx[..n].iter_mut().enumerate() {
                    q.quantize(&x[t * cols..][..cols], ScaleSpan::Block);
                }
                let qx = &qx[..n];
                let yp = SendPtr(y.as_mut_ptr());
                par_row_groups(y, n, rows, min, 1, sub, FEW, |a, len, t0, m| unsafe {
                    rows_q8_few(quants.as_ptr(), scales.as_ptr(), blocks, a, len, &qx[t0..t0 + m], yp.get().add(t0 * rows), rows)
                })
            }
            MatrixData::F32(_) | MatrixData::F16(_) | MatrixData::BF16(_) => {
                float_decode_pass(w, x, n, y, packed, min, 1, sub, FEW, |p, a, len, m, x, y, acc| unsafe {
                    match p.data {
                        MatrixData::F32(d) => rows_few::<WF32>(d.as_ptr(), p.cols, a, len, m, x, y, rows, acc),
                        MatrixData::F16(d) => rows_few::<WF16>(d.as_ptr(), p.cols, a, len, m, x, y, rows, acc),
                        MatrixData::BF16(d) => rows_few::<WBF16>(d.as_ptr(), p.cols, a, len, m, x, y, rows, acc),
                        _ => unreachable!("float panels"),
                    }
                })
            }
            MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => unreachable!("the dispatch sends 4-bit matrices to q4_avx2"),
        }
    })
}

/// The pass of a float decode batch that the AVX2 and AVX-512 F kernels share: the
/// tokens packed by [`pack_few`] in groups of `group` (into `packed`), the rows claimed
/// in guided blocks of at least `min` rows (multiples of `align`), each block taken
/// `sub` rows at a time, and for each group and column panel `rows(panel, a, len, m, x,
/// y, acc)`: rows `a .. a + len` of the panel for the group's `m` tokens, `x` their
/// packed columns of the panel, `y` their outputs (`w.rows` apart), `+=` with `acc`.
#[allow(clippy::too_many_arguments)]
pub(super) fn float_decode_pass(
    w: &Matrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    packed: &mut Vec<f32>,
    min: usize,
    align: usize,
    sub: usize,
    group: usize,
    rows: impl Fn(&Matrix, usize, usize, usize, *const f32, *mut f32, bool) + Sync + Send,
) {
    let (nrows, cols) = (w.rows, w.cols);
    grow(packed, n * cols);
    for t0 in (0..n).step_by(group) {
        let m = group.min(n - t0);
        pack_few(&x[t0 * cols..][..m * cols], m, cols, &mut packed[t0 * cols..][..m * cols]);
    }
    let xs = packed.as_ptr() as usize;
    let yp = SendPtr(y.as_mut_ptr());
    par_row_groups(y, n, nrows, min, align, sub, group, |a, len, t0, m| {
        let xg = (xs as *const f32).wrapping_add(t0 * cols);
        let y = yp.get().wrapping_add(t0 * nrows);
        for (c0, p) in w.panels() {
            // Panel columns `c0 ..` of the group's packed tokens: `c0` is a multiple of
            // 16, and `pack_few`'s tail (token-major) is the last panel's.
            rows(&p, a, len, m, xg.wrapping_add(c0 * m), y, c0 > 0);
        }
    })
}

/// q8_0 rows `r0 .. r0 + len` for up to [`FEW`] tokens (`x`), outputs `ldy` apart from
/// `y`: each weight block is loaded once for all of them, and each token's sums are
/// exactly those of [`rows_q8_0_r`] (the same operations in the same order).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q8_few(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, len: usize, x: &[QuantX], y: *mut f32, ldy: usize) {
    match x.len() {
        1 => rows_q8_0_few::<1>(quants, scales, blocks, r0, len, x, y, ldy),
        2 => rows_q8_0_few::<2>(quants, scales, blocks, r0, len, x, y, ldy),
        3 => rows_q8_0_few::<3>(quants, scales, blocks, r0, len, x, y, ldy),
        _ => rows_q8_0_few::<4>(quants, scales, blocks, r0, len, x, y, ldy),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_q8_0_few<const N: usize>(
    quants: *const i8,
    scales: *const u16,
    blocks: usize,
    r0: usize,
    len: usize,
    x: &[QuantX],
    y: *mut f32,
    ldy: usize,
) {
    let xq: [*const i8; N] = std::array::from_fn(|t| x[t].quants.as_ptr());
    let xd: [*const f32; N] = std::array::from_fn(|t| x[t].scales.as_ptr());
    let groups = blocks / 8;
    for r in r0..r0 + len {
        let q = quants.add(r * blocks * 32);
        let s = scales.add(r * blocks);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acc2 = [_mm256_setzero_ps(); N];
        for g in 0..groups {
            _mm_prefetch::<_MM_HINT_T0>((s.add(g * 8) as *const i8).wrapping_add(PREFETCH / 16));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(s.add(g * 8) as *const __m128i));
            let mut d = [[0f32; 8]; N];
            for t in 0..N {
                _mm256_storeu_ps(d[t].as_mut_ptr(), _mm256_mul_ps(dw, _mm256_loadu_ps(xd[t].add(g * 8))));
            }
            for k in (0..8).step_by(2) {
                let b = g * 8 + k;
                prefetch_weights(q.wrapping_add(b * 32), PREFETCH);
                let wv = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
                let wv2 = _mm256_loadu_si256(q.add(b * 32 + 32) as *const __m256i);
                for t in 0..N {
                    let xv = _mm256_loadu_si256(xq[t].add(b * 32) as *const __m256i);
                    let xv2 = _mm256_loadu_si256(xq[t].add(b * 32 + 32) as *const __m256i);
                    acc[t] = _mm256_fmadd_ps(dot_q8(wv, xv), _mm256_set1_ps(d[t][k]), acc[t]);
                    acc2[t] = _mm256_fmadd_ps(dot_q8(wv2, xv2), _mm256_set1_ps(d[t][k + 1]), acc2[t]);
                }
            }
        }
        for b in groups * 8..blocks {
            let wv = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
            for t in 0..N {
                let xv = _mm256_loadu_si256(xq[t].add(b * 32) as *const __m256i);
                let d = f16::from_bits(*s.add(b)).to_f32() * *xd[t].add(b);
                acc[t] = _mm256_fmadd_ps(dot_q8(wv, xv), _mm256_set1_ps(d), acc[t]);
            }
        }
        for t in 0..N {
            *y.add(t * ldy + r) = hsum(_mm256_add_ps(acc[t], acc2[t]));
        }
    }
}

/// Eight cached values widened to f32.
#[inline(always)]
unsafe fn load8<E: KvElement>(p: *const E) -> __m256 {
    if E::HALF {
        WF16::load8(p as *const u16)
    } else {
        WF32::load8(p as *const f32)
    }
}

/// `dst = src` rounded to f16 (nearest, ties to even), eight at a time.
///
/// # Safety
/// AVX2/FMA/F16C; `E` is f16 (`E::HALF`) and `src.len() == dst.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn store_row<E: KvElement>(src: &[f32], dst: &mut [E]) {
    debug_assert!(E::HALF && src.len() == dst.len());
    let n8 = src.len() / 8 * 8;
    for c in (0..n8).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(c)));
        _mm_storeu_si128(dst.as_mut_ptr().add(c) as *mut __m128i, h);
    }
    for c in n8..src.len() {
        dst[c] = E::from_f32(src[c]);
    }
}

/// `out[t] = scale * (q . rows[t])`, eight rows at a time: eight independent
/// accumulators keep both FMA pipes busy, and one reduction gives all eight sums.
///
/// # Safety
/// AVX2/FMA/F16C; `rows` must hold `out.len()` rows of `q.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scaled_dots<E: KvElement>(q: &[f32], rows: &[E], scale: f32, out: &mut [f32]) {
    let d = q.len();
    let d8 = d / 8 * 8;
    let (qp, rp) = (q.as_ptr(), rows.as_ptr());
    let n = out.len();
    let tail = |row: *const E| -> f32 { (d8..d).map(|c| *qp.add(c) * (*row.add(c)).to_f32()).sum() };
    let mut t = 0;
    while t + 8 <= n {
        let r = rp.add(t * d);
        // These eight rows' bytes, KV_PREFETCH ahead: the cached keys are a stream too.
        for l in (0..8 * d * std::mem::size_of::<E>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>((r as *const i8).wrapping_add(KV_PREFETCH + l));
        }
        let mut a = [_mm256_setzero_ps(); 8];
        let mut c = 0;
        while c < d8 {
            let qv = _mm256_loadu_ps(qp.add(c));
            for (j, a) in a.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, load8(r.add(j * d + c)), *a);
            }
            c += 8;
        }
        // hadd pairs, then pairs of pairs: lane j of `h0` holds half of row j's sum
        // (j < 4 low half, the other half in the high 128 bits), `h1` rows 4..8.
        let h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        let sums = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(h0, h1), _mm256_permute2f128_ps::<0x31>(h0, h1));
        let mut v = [0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), sums);
        for (j, v) in v.iter().enumerate() {
            out[t + j] = scale * (v + tail(r.add(j * d)));
        }
        t += 8;
    }
    while t < n {
        let r = rp.add(t * d);
        let mut a = _mm256_setzero_ps();
        let mut c = 0;
        while c < d8 {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), load8(r.add(c)), a);
            c += 8;
        }
        out[t] = scale * (hsum(a) + tail(r));
        t += 1;
    }
}

/// `out = sum over t of weights[t] * rows[t]`, 128 columns at a time held in sixteen
/// registers across all the rows (rather than loading and storing `out` per row), so
/// that a head of 128 is one pass over its values. Two passes of 64 columns made the
/// 1B's attention 6-16% slower at positions 1-2048 (q8_0, f16 cache, steps
/// alternating in one process, two runs).
///
/// # Safety
/// AVX2/FMA/F16C; `rows` must hold `weights.len()` rows of `out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum<E: KvElement>(weights: &[f32], rows: &[E], out: &mut [f32]) {
    #[inline(always)]
    unsafe fn columns<E: KvElement, const V: usize>(weights: &[f32], rows: *const E, d: usize, out: *mut f32) {
        let mut a = [_mm256_setzero_ps(); V];
        for (t, &p) in weights.iter().enumerate() {
            let pv = _mm256_set1_ps(p);
            let r = rows.add(t * d);
            for l in (0..V * 8 * std::mem::size_of::<E>()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>((r as *const i8).wrapping_add(KV_PREFETCH + l));
            }
            for (j, a) in a.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pv, load8(r.add(8 * j)), *a);
            }
        }
        for (j, a) in a.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * j), *a);
        }
    }
    let d = out.len();
    let (rp, op) = (rows.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c + 128 <= d {
        columns::<E, 16>(weights, rp.add(c), d, op.add(c));
        c += 128;
    }
    while c + 64 <= d {
        columns::<E, 8>(weights, rp.add(c), d, op.add(c));
        c += 64;
    }
    while c + 8 <= d {
        columns::<E, 1>(weights, rp.add(c), d, op.add(c));
        c += 8;
    }
    for (c, o) in out.iter_mut().enumerate().skip(c) {
        *o = weights.iter().enumerate().map(|(t, &p)| p * (*rp.add(t * d + c)).to_f32()).sum();
    }
}

/// Columns `c0 .. c0 + out.len()` of row `r` of a q8_0 matrix `cols` wide, dequantised
/// into `out`: the GEMMs' staging for q8_0 weight tiles.
///
/// # Safety
/// AVX2/FMA/F16C; `quants` and `scales` must hold row `r` (as `Matrix::check` finds),
/// `c0` be a multiple of 32 and `c0 + out.len()` at most `cols`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_row_to_f32(quants: &[i8], scales: &[u16], cols: usize, r: usize, c0: usize, out: &mut [f32]) {
    debug_assert!(c0.is_multiple_of(32) && c0 + out.len() <= cols);
    let blocks = cols.div_ceil(32);
    let q = quants.as_ptr().add(r * blocks * 32 + c0);
    let s = scales.as_ptr().add(r * blocks + c0 / 32);
    let n = out.len();
    let o = out.as_mut_ptr();
    let mut i = 0;
    while i < n {
        let d = _mm256_set1_ps(f16::from_bits(*s.add(i / 32)).to_f32());
        let end = (i + 32).min(n);
        while i + 8 <= end {
            let b = _mm_loadl_epi64(q.add(i) as *const __m128i);
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            _mm256_storeu_ps(o.add(i), _mm256_mul_ps(v, d));
            i += 8;
        }
        while i < end {
            *o.add(i) = *q.add(i) as f32 * _mm256_cvtss_f32(d);
            i += 1;
        }
    }
}

/// Softmax in place, eight at a time with [`exp8`]: the max, then `exp(x - max)` and
/// its sum, then the scaling.
///
/// # Safety
/// AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    let whole = n / 8 * 8;
    let p = x.as_mut_ptr();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..whole).step_by(8) {
        m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
    }
    let max = x[whole..].iter().fold(hmax(m), |a, &v| a.max(v));
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for i in (0..whole).step_by(8) {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
        _mm256_storeu_ps(p.add(i), e);
        sum = _mm256_add_ps(sum, e);
    }
    let mut sum = hsum(sum);
    for v in &mut x[whole..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    for i in (0..whole).step_by(8) {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
    }
    for v in &mut x[whole..] {
        *v /= sum;
    }
}

/// `sum(exp(x[i] - shift))`, eight at a time with [`exp8`], each lane's exponentials
/// summed in f64; a NaN adds nothing (the clamp in [`exp8`] makes it `exp(-88.4)`,
/// as in the tail).
///
/// # Safety
/// AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn sum_exp(x: &[f32], shift: f32) -> f64 {
    let whole = x.len() / 8 * 8;
    let (p, sv) = (x.as_ptr(), _mm256_set1_ps(shift));
    let mut sum = F64Lanes::new();
    for i in (0..whole).step_by(8) {
        sum.add(exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), sv)));
    }
    let tail: f64 = x[whole..].iter().filter(|v| !v.is_nan()).map(|&v| f64::from((v - shift).exp())).sum();
    sum.total() + tail
}

/// `sum(exp(b[i] - base_lse) * (b[i] - m[i] + shift))`, eight at a time with
/// [`exp8`], each term in f32 and the sum in f64 lanes: [`super::kl_sum`].
///
/// # Safety
/// AVX2/FMA/F16C; `m` at least as long as `b`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn kl_sum(b: &[f32], m: &[f32], base_lse: f32, shift: f32) -> f64 {
    debug_assert!(m.len() >= b.len());
    let whole = b.len() / 8 * 8;
    let (bp, mp) = (b.as_ptr(), m.as_ptr());
    let (lse, sh) = (_mm256_set1_ps(base_lse), _mm256_set1_ps(shift));
    let mut sum = F64Lanes::new();
    for i in (0..whole).step_by(8) {
        let bv = _mm256_loadu_ps(bp.add(i));
        let e = exp8(_mm256_sub_ps(bv, lse));
        sum.add(_mm256_mul_ps(e, _mm256_add_ps(_mm256_sub_ps(bv, _mm256_loadu_ps(mp.add(i))), sh)));
    }
    let tail: f64 = b[whole..].iter().zip(&m[whole..]).map(|(&b, &m)| f64::from((b - base_lse).exp() * (b - m + shift))).sum();
    sum.total() + tail
}

/// Eight f32 lanes summed, each in an f64 lane of its own: [`sum_exp`] and [`kl_sum`]'s
/// accumulator over a whole vocabulary.
struct F64Lanes {
    lo: __m256d,
    hi: __m256d,
}

impl F64Lanes {
    #[inline(always)]
    unsafe fn new() -> F64Lanes {
        F64Lanes { lo: _mm256_setzero_pd(), hi: _mm256_setzero_pd() }
    }

    #[inline(always)]
    unsafe fn add(&mut self, t: __m256) {
        self.lo = _mm256_add_pd(self.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
        self.hi = _mm256_add_pd(self.hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(t)));
    }

    #[inline(always)]
    unsafe fn total(self) -> f64 {
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(self.lo, self.hi));
        lanes.iter().sum()
    }
}

/// `out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`, eight at a time.
///
/// # Safety
/// AVX2/FMA/F16C; `gate` and `up` must hold `out.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len();
    let (g, u, o) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i + 8 <= n {
        let gv = _mm256_loadu_ps(g.add(i));
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        let silu = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(o.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.add(i))));
        i += 8;
    }
    crate::model::ops::swiglu(&gate[i..n], &up[i..n], &mut out[i..]);
}
