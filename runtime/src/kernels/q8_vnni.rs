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

/// `y[t] = W x[t]` for a q8_0 matrix against `n` tokens (`x` is `n x cols`, `y` is
/// `n x rows`) in the AMX kernel set's arithmetic (`q8_amx`'s `reference`): bit for bit
/// what its tiles give each token in any batch, for the set's lone tokens and small
/// decode batches, at the speed of [`matvec`] and [`matmul_decode`]. Rows are read one
/// after the other, as they lie in memory (16 rows side by side, as a tile reads them,
/// held a lone token's 1B step at 0.86-0.89 of a stream however they were
/// prefetched), each for up to [`FEW`] tokens at once.
///
/// # Safety
/// As [`matmul_decode`].
pub(super) unsafe fn matmul_tile_order(
    quants: &[i8],
    scales: &[u16],
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let rows_total = y.len() / n.max(1);
    let blocks = cols.div_ceil(32);
    let min = min_rows_per_block(blocks * 34, 1);
    let sub = rows_per_sub_block(blocks * 34, 1, MANY_SUB_BYTES);
    let yp = SendPtr(y.as_mut_ptr());
    with_local(&MANY, |many| {
        if many.len() < n {
            many.resize_with(n, Default::default);
        }
        for (t, (q, _)) in many[..n].iter_mut().enumerate() {
            q.quantize(&x[t * cols..][..cols]);
            q.pad_and_sum(cols, blocks.next_multiple_of(GROUP));
        }
        let many = &many[..n];
        // SAFETY: as the caller vouches; `par_row_groups` gives each call rows
        // `a .. a + len` within the matrix, which it alone writes for its tokens.
        par_row_groups(y, n, rows_total, min, 1, sub, FEW, |a, len, t0, m| unsafe {
            let q: [&QuantX; FEW] = std::array::from_fn(|t| &many[t0 + t.min(m - 1)].0);
            let (w, s, y) = (
                quants.as_ptr(),
                scales.as_ptr(),
                yp.get().add(t0 * rows_total),
            );
            match m {
                1 => rows_tile_order::<1>(w, s, blocks, a, len, q, y, rows_total),
                2 => rows_tile_order::<2>(w, s, blocks, a, len, q, y, rows_total),
                3 => rows_tile_order::<3>(w, s, blocks, a, len, q, y, rows_total),
                _ => rows_tile_order::<4>(w, s, blocks, a, len, q, y, rows_total),
            }
        })
    })
}

/// Blocks whose sums [`rows_tile_order`] reduces at once (16 pairs).
const GROUP: usize = 32;

/// Rows `r0 .. r0 + len` of [`matmul_tile_order`] against `N` tokens `x`, each
/// quantised and padded with zeros to whole groups, its block sums filled
/// (`QuantX::pad_and_sum`); token `t`'s outputs at `y + t * ldy`.
///
/// Per pair of blocks, the row's 64 bytes made unsigned (`w + 128`, so `vpdpbusd`
/// takes them against the signed quants) against the token's: 16 lanes of partial
/// sums. Sixteen pairs' lanes reduce to their 32 block sums ([`block_sums`]), put in
/// block order; less `128 * sum(x)` per block they are the exact sums the tiles give.
/// Each lane then takes its fma: `acc[b % 32] = fma(float(sum_b), d_x * d_w, ...)`,
/// one chain per lane across the groups, and the 32 lanes are added in a fixed tree.
/// Every step is per token, so its sums do not depend on `N`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and F16C; `quants` and `scales` must hold the rows, `x` as
/// said above, `y` room for row `r0 + len - 1` of token `N - 1` at stride `ldy`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows_tile_order<const N: usize>(
    quants: *const i8,
    scales: *const u16,
    blocks: usize,
    r0: usize,
    len: usize,
    x: [&QuantX; FEW],
    y: *mut f32,
    ldy: usize,
) {
    let groups = blocks.div_ceil(GROUP);
    for x in &x[..N] {
        assert!(
            x.quants.len() >= groups * GROUP * 32
                && x.scales.len() >= groups * GROUP
                && x.sums.len() >= groups * GROUP
        );
    }
    let xq: [*const i8; N] = std::array::from_fn(|t| x[t].quants.as_ptr());
    let xd: [*const f32; N] = std::array::from_fn(|t| x[t].scales.as_ptr());
    let xs: [*const i32; N] = std::array::from_fn(|t| x[t].sums.as_ptr());
    for r in r0..r0 + len {
        let q = quants.add(r * blocks * 32) as *const u8;
        let s = scales.add(r * blocks);
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        for g in 0..groups {
            let b0 = g * GROUP;
            let left = blocks - b0;
            // The scales, a second stream, as `rows` fetches them.
            _mm_prefetch::<_MM_HINT_T0>((s.add(b0) as *const i8).wrapping_add(PREFETCH / 16));
            let (dw_low, dw_high) = if left >= GROUP {
                (
                    _mm512_cvtph_ps(_mm256_loadu_si256(s.add(b0) as *const _)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(s.add(b0 + 16) as *const _)),
                )
            } else {
                let mask = |from: usize| {
                    (((1u32 << left.saturating_sub(from).min(16)) - 1) & 0xFFFF) as u16
                };
                (
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(0), s.add(b0) as *const i16)),
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        mask(16),
                        s.add(b0 + 16) as *const i16,
                    )),
                )
            };
            for t in 0..N {
                let (low, high) = group_sums(q, xq[t], g, blocks, t == 0);
                let low = _mm512_sub_epi32(
                    low,
                    _mm512_slli_epi32::<7>(_mm512_loadu_si512(xs[t].add(b0) as *const _)),
                );
                let high = _mm512_sub_epi32(
                    high,
                    _mm512_slli_epi32::<7>(_mm512_loadu_si512(xs[t].add(b0 + 16) as *const _)),
                );
                acc[t][0] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(low),
                    _mm512_mul_ps(_mm512_loadu_ps(xd[t].add(b0)), dw_low),
                    acc[t][0],
                );
                acc[t][1] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(high),
                    _mm512_mul_ps(_mm512_loadu_ps(xd[t].add(b0 + 16)), dw_high),
                    acc[t][1],
                );
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            // Lanes b and b + 16, then b + 8, b + 4, b + 2, b + 1.
            let s = _mm512_add_ps(acc[0], acc[1]);
            let s = _mm256_add_ps(
                _mm512_castps512_ps256(s),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))),
            );
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            *y.add(t * ldy + r) = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)));
        }
    }
}

/// A row's sums of group `g` (blocks `32g ..`, zero past `blocks`) against a token's
/// quants `x`, in block order: the blocks' products with `w + 128` (the excess, `128 *
/// sum(x)` per block, is the caller's to take off). With `fetch`, the row's bytes
/// [`PREFETCH`] on are fetched.
///
/// # Safety
/// AVX-512 F/BW/VNNI (inlined into a caller that has them); `q` must hold the row's
/// `blocks * 32` bytes and `x` whole groups.
#[inline(always)]
unsafe fn group_sums(
    q: *const u8,
    x: *const i8,
    g: usize,
    blocks: usize,
    fetch: bool,
) -> (__m512i, __m512i) {
    let flip = _mm512_set1_epi8(-128);
    let dot = |j: usize, whole: bool| {
        let off = (g * 16 + j) * 64;
        if fetch {
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(off + PREFETCH) as *const i8);
        }
        // The row's last pair may hold one block: its other 32 bytes are not read.
        let w = if whole {
            _mm512_loadu_si512(q.add(off) as *const _)
        } else {
            _mm512_maskz_loadu_epi8(u32::MAX as u64, q.add(off) as *const i8)
        };
        _mm512_dpbusd_epi32(
            _mm512_setzero_si512(),
            _mm512_xor_si512(w, flip),
            _mm512_loadu_si512(x.add(off) as *const _),
        )
    };
    let mut v = [_mm512_setzero_si512(); 16];
    if (g + 1) * GROUP <= blocks {
        for (j, v) in v.iter_mut().enumerate() {
            *v = dot(j, true);
        }
    } else {
        for (j, v) in v.iter_mut().enumerate().take(blocks.div_ceil(2) - g * 16) {
            *v = dot(j, 2 * (g * 16 + j) + 2 <= blocks);
        }
    }
    let (low, high) = block_sums(v);
    // `block_sums`' lanes in block order (the order is its own inverse).
    let in_order = _mm512_setr_epi32(0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15);
    (
        _mm512_permutexvar_epi32(in_order, low),
        _mm512_permutexvar_epi32(in_order, high),
    )
}

/// Sixteen registers' two blocks of eight lanes (`v[j]`: lanes 0-7 block `2j`, 8-15
/// block `2j + 1`) each summed: 32 sums in two registers, block `b` in lane
/// `[0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15][b % 16]` of register `b / 16`.
/// In three halvings, each a permute of two registers' other halves beside a blend of
/// their own, added: half the permutes of interleaving both halves.
#[inline(always)]
unsafe fn block_sums(v: [__m512i; 16]) -> (__m512i, __m512i) {
    #[inline(always)]
    unsafe fn fold(a: __m512i, b: __m512i, index: __m512i, from_b: __mmask16) -> __m512i {
        _mm512_add_epi32(
            _mm512_mask_blend_epi32(from_b, a, b),
            _mm512_permutex2var_epi32(a, index, b),
        )
    }
    // Lanes in fours, twos, then ones: each fold adds a register's lane to its
    // neighbour at that distance within the same block, the other register's sums
    // beside them.
    let i4 = _mm512_setr_epi32(4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 24, 25, 26, 27);
    let i2 = _mm512_setr_epi32(2, 3, 16, 17, 6, 7, 20, 21, 10, 11, 24, 25, 14, 15, 28, 29);
    let i1 = _mm512_setr_epi32(1, 16, 3, 18, 5, 20, 7, 22, 9, 24, 11, 26, 13, 28, 15, 30);
    // Plain loops: `array::from_fn` here was once left out of line, where its
    // intrinsics became calls (a lone token's product ran 10x slower).
    let mut t = [_mm512_setzero_si512(); 8];
    for (k, t) in t.iter_mut().enumerate() {
        *t = fold(v[2 * k], v[2 * k + 1], i4, 0xF0F0);
    }
    let mut u = [_mm512_setzero_si512(); 4];
    for (k, u) in u.iter_mut().enumerate() {
        *u = fold(t[2 * k], t[2 * k + 1], i2, 0xCCCC);
    }
    (fold(u[0], u[1], i1, 0xAAAA), fold(u[2], u[3], i1, 0xAAAA))
}
