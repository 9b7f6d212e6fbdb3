//! q8_0 products with AVX-512 VNNI, one token (`matvec`) and decode batches of a few
//! (`matmul_decode`): each 512-bit `vpdpbusd` takes two blocks of 32 weights against the
//! activations' quants, sixteen lanes of four byte products.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones. The activations are made
//! unsigned (`q + 128`, once per token and product) and each dot product starts from
//! `-128 * sum(w)` per lane, which the weights' side computes once for all tokens; the
//! integer block sums are exact and equal to the AVX2 kernel's, only the order of the
//! float additions differs. See [`rows`] for the instruction count per pair of blocks.
//!
//! Two forms measured before, both slower: signing the activations by the weights'
//! sign mask (`|w|` against `x` negated under the mask, as AVX2's `maddubs` kernel
//! does), which costs every token two more instructions per pair of blocks (the masked
//! negation and a permute of the scale products): a batch of 4 tokens took 1.92x one
//! token's time, now 1.13x (kernels bench, AMD EPYC, 16384 x 2048); and making the
//! weights unsigned with a per-call table of `-128 * sum(x)` per lane, which reads one
//! more load per 64 bytes for every row.

use std::arch::x86_64::*;

use half::f16;

use std::cell::RefCell;

use super::activations::QuantX;
use super::tasks::{grow, min_rows_per_block, par_row_groups, par_rows_guided, rows_per_sub_block, with_local, SendPtr, PREFETCH};

thread_local! {
    static QX: RefCell<[(QuantX, UnsignedX); 1]> = RefCell::new(Default::default());
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
    with_local(&QX, |one| {
        let (qx, unsigned) = &mut one[0];
        qx.quantize(x);
        unsigned.fill(qx, blocks);
        let one = &*one;
        // SAFETY: as the caller vouches; `par_rows_guided` gives each call a disjoint
        // `ys` starting at row `r0` with `r0 + ys.len()` within the matrix.
        par_rows_guided(y, min, 1, |r0, ys| unsafe {
            // Through `rows_n`: `rows` is inlined into its caller, and only a caller
            // compiled with the AVX-512 features gets the instructions inline (in this
            // closure each intrinsic was a call: the matvec ran 16x slower).
            rows_n(quants.as_ptr(), scales.as_ptr(), blocks, r0, ys.len(), one, ys.as_mut_ptr().wrapping_sub(r0), 0)
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
    with_local(&MANY, |many| {
        if many.len() < n {
            many.resize_with(n, Default::default);
        }
        for (t, (q, unsigned)) in many[..n].iter_mut().enumerate() {
            q.quantize(&x[t * cols..][..cols]);
            unsigned.fill(q, blocks);
        }
        let many = &many[..n];
        // SAFETY: as the caller vouches; `par_row_groups` gives each call rows
        // `a .. a + len` within the matrix, which it alone writes for its tokens.
        par_row_groups(y, n, rows_total, min, 1, sub, FEW, |a, len, t0, m| unsafe {
            rows_n(quants.as_ptr(), scales.as_ptr(), blocks, a, len, &many[t0..t0 + m], yp.get().add(t0 * rows_total), rows_total)
        })
    })
}

/// Tokens [`matmul_decode`] passes over a weight row at once.
const FEW: usize = 4;

/// Weights a sub-block of a decode batch covers: a quarter of a 2 MiB L2.
const MANY_SUB_BYTES: usize = 512 << 10;

thread_local! {
    /// The calling thread's quantised tokens of a decode batch; only ever grows.
    static MANY: RefCell<Vec<(QuantX, UnsignedX)>> = const { RefCell::new(Vec::new()) };
}

/// [`rows`] for 1 to [`FEW`] tokens.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows_n(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, len: usize, x: &[(QuantX, UnsignedX)], y: *mut f32, ldy: usize) {
    let q: [&QuantX; FEW] = std::array::from_fn(|t| &x[t.min(x.len() - 1)].0);
    let s: [&UnsignedX; FEW] = std::array::from_fn(|t| &x[t.min(x.len() - 1)].1);
    match x.len() {
        1 => rows::<1>(quants, scales, blocks, r0, len, q, s, y, ldy),
        2 => rows::<2>(quants, scales, blocks, r0, len, q, s, y, ldy),
        3 => rows::<3>(quants, scales, blocks, r0, len, q, s, y, ldy),
        _ => rows::<4>(quants, scales, blocks, r0, len, q, s, y, ldy),
    }
}

/// A quantised token's quants made unsigned for [`rows`] (`q + 128`, so `vpdpbusd`
/// takes them as they are against the signed weights). Built once per token and
/// product, read by every row.
#[derive(Default)]
struct UnsignedX {
    unsigned: Vec<u8>,
}

impl UnsignedX {
    /// Lays out the first `blocks` blocks of `x`.
    fn fill(&mut self, x: &QuantX, blocks: usize) {
        grow(&mut self.unsigned, blocks * 32);
        for (u, &q) in self.unsigned.iter_mut().zip(&x.quants[..blocks * 32]) {
            *u = (q as u8) ^ 0x80;
        }
    }
}

/// q8_0 rows `r0 .. r0 + len` (`blocks` per row) against `N` quantised tokens `x` (their
/// quants and block scales, and `unsigned` the quants made unsigned), token
/// `t`'s outputs at `y + t * ldy`. Each token's sums do not depend on `N`: every step
/// below is done per token in the same order.
///
/// Per pair of blocks the weights' work is shared by the tokens: the load, the
/// correction `128 * sum(w)` per lane (one `vpdpbusd` against 128s; each token's
/// `vpdpbusd` of `q + 128` starts from its negation, so the integer sums are exact).
/// Each token then takes four instructions: the `vpdpbusd` (its
/// quants a memory operand), a conversion, the spread of its two blocks' scale products
/// (weights' x token's, one multiply per group of eight blocks; a permute per pair) and
/// an FMA. Loading the token's scales ready spread per pair (64 bytes per 64 weights,
/// as many as its quants) and multiplying by each scale in turn held a lone token's 1B
/// decode step to 0.74 of a stream at 61-68 GB/s (`down_proj`, 8192 columns, 0.59);
/// now 0.84 (0.82), and a batch of 4 tokens costs 1.15-1.65 of one token's time
/// instead of 1.81-2.02, 8 tokens 2.14-2.90 instead of 3.49-3.80 (`model_matvec`, 30
/// rounds; kernels bench, 65536 x 2048; 2 threads).
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `quants` and `scales` must hold rows
/// `r0 .. r0 + len`, each `x[t]` and `unsigned[t]` `blocks` blocks, and `y` room for
/// row `r0 + len - 1` of token `N - 1` at stride `ldy`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows<const N: usize>(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, len: usize, x: [&QuantX; FEW], unsigned: [&UnsignedX; FEW], y: *mut f32, ldy: usize) {
    let xq: [*const i8; N] = std::array::from_fn(|t| x[t].quants[..blocks * 32].as_ptr());
    let xd: [*const f32; N] = std::array::from_fn(|t| x[t].scales[..blocks].as_ptr());
    let xu: [*const u8; N] = std::array::from_fn(|t| unsigned[t].unsigned[..blocks * 32].as_ptr());
    // Lanes 0-7 take the scale of a pair's first block, 8-15 of its second; pair `k`
    // of a group of eight blocks holds blocks 2k and 2k + 1.
    let pair_lanes: [__m512i; 4] = std::array::from_fn(|k| {
        let (a, b) = (2 * k as i32, 2 * k as i32 + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    });
    let offset = _mm512_set1_epi8(-128);
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
            // Each token's eight block scales of this group times the weights': one
            // product per block, spread to its pair's lanes below.
            let d: [__m512; N] = std::array::from_fn(|t| _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(xd[t].add(g * 8)))));
            for (k, lanes) in pair_lanes.iter().enumerate() {
                let off = g * 256 + k * 64;
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(off + PREFETCH));
                let w = _mm512_loadu_si512(q.add(off) as *const _);
                // -128 * sum(w) per lane: (-128 as u8 = 128) x w, negated.
                let start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, w));
                for t in 0..N {
                    let dot = _mm512_dpbusd_epi32(start, _mm512_loadu_si512(xu[t].add(off) as *const _), w);
                    acc[t][k % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(*lanes, d[t]), acc[t][k % 2]);
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
