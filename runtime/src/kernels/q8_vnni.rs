//! q8_0 products with AVX-512 VNNI: decode batches of one token or a few
//! ([`matmul_decode`]), on the AVX-512 and AMX sets alike.
//!
//! The decode kernel reads eight rows side by side, a pair of blocks (one 64-byte
//! line) of each per step, and transposes them in registers so that every 32-bit lane
//! holds one row's, one block's, even or odd quads ([`rows_lanes`]): each lane's
//! `vpdpbusd` sum is then the exact integer sum for its (row, block, parity), with no
//! horizontal adds, and its float step is one FMA. The transposition is shared by
//! every token of the batch; each token costs per step 8 `vpdpbusd` and 6 float
//! operations. `vpdpbusd` multiplies unsigned bytes by signed ones: the weights are
//! made unsigned (`w ^ 0x80`, that is `w + 128`) and each token's lane sums start
//! from `-128` times the sum of its quants they meet, computed once per token.
//!
//! Measured against the row-at-a-time kernel it replaced (each row's two blocks per
//! register, a permute of the scales and an FMA per token per 64 bytes; Sapphire
//! Rapids, 2 threads, 16384 x 2048 in the kernels bench): a batch of 2/4/8 tokens took
//! 1.11/1.35/1.76 of one token's time instead of 1.03/1.60/3.26; a lone token's 1B
//! decode step 0.95-1.00 of its floor against 0.95-0.97 (`decode_floor`, alternating).
//! Reading the rows' next lines ahead, and from a row's end on the next group's, took
//! its 2048-column products from 0.89 to 1.04 of a stream; four rows side by side in
//! place of eight were no faster.

use std::arch::x86_64::*;

use std::cell::RefCell;

use super::activations::{QuantX, ScaleSpan};
use super::tasks::{grow, min_rows_per_block, par_row_groups, rows_per_sub_block, with_local, SendPtr};

/// Weights a sub-block of a decode batch covers: a quarter of a 2 MiB L2.
const MANY_SUB_BYTES: usize = 512 << 10;

/// A token of a decode batch: its quants, and their lanes as [`rows_lanes`] reads them.
#[derive(Default)]
struct Token {
    q: QuantX,
    lanes: LaneX,
}

thread_local! {
    /// The calling thread's tokens of a product; only ever grows.
    static TOKENS: RefCell<Vec<Token>> = const { RefCell::new(Vec::new()) };
}

/// Rows a lane pass reads side by side, one 64-byte line (a pair of blocks) of each per
/// step.
const LANE_ROWS: usize = 8;

/// Registers of four rows each a lane pass fills per step (two: the scale gather and
/// the output shuffles are written for eight rows).
const SETS: usize = 2;

/// Tokens a lane pass takes over each step's registers.
const LANE_FEW: usize = 8;

/// How far ahead (bytes) each of a lane pass's rows is prefetched.
const LANE_PREFETCH: usize = 1024;

/// A token's pair of blocks `2p, 2p + 1` laid out for [`rows_lanes`]: what each of a
/// step's registers multiplies, ready to broadcast.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct PairPattern {
    /// For `m` in 0..4: bytes `8m .. 8m + 8` of block `2p`, twice, then those of block
    /// `2p + 1`, twice.
    x: [[i8; 32]; 4],
    /// The blocks' scales: `2p`'s four times, then `2p + 1`'s.
    dx: [f32; 8],
    /// `-128` times the sums of a block's even quads (bytes `8m .. 8m + 4`) and odd
    /// quads, as `[e, o, e, o]` for block `2p` then for `2p + 1`: where each lane's sum
    /// starts, so that it ends exact against the weights made unsigned.
    start: [i32; 8],
}

/// A quantised token as [`rows_lanes`] reads it.
#[derive(Default)]
struct LaneX {
    pairs: Vec<PairPattern>,
}

impl LaneX {
    /// Lays out the `blocks` blocks of `x` (a lone last block paired with zeros).
    fn fill(&mut self, x: &QuantX, blocks: usize) {
        let pairs = blocks.div_ceil(2);
        grow(&mut self.pairs, pairs);
        for (p, out) in self.pairs[..pairs].iter_mut().enumerate() {
            for c in 0..2 {
                let b = 2 * p + c;
                let (q, d) = if b < blocks { (&x.quants[b * 32..][..32], x.scales[b]) } else { (&[0i8; 32][..], 0.0) };
                for m in 0..4 {
                    for half in 0..2 {
                        out.x[m][c * 16 + half * 8..][..8].copy_from_slice(&q[8 * m..][..8]);
                    }
                }
                out.dx[c * 4..][..4].fill(d);
                for parity in 0..2 {
                    let sum: i32 = (0..4).flat_map(|m| &q[8 * m + 4 * parity..][..4]).map(|&v| v as i32).sum();
                    out.start[c * 4 + parity] = -128 * sum;
                    out.start[c * 4 + 2 + parity] = -128 * sum;
                }
            }
        }
    }
}

/// `y[t] = W x[t]` for a decode batch of `n` tokens (`x` is `n x cols`, `y` is `n x
/// rows`; one token's matvec is a batch of one). Each token's outputs are the same
/// operations in the same order whatever the batch ([`rows_lanes`]), so a sequence's
/// numbers do not depend on the others beside it, while each step's registers are
/// loaded and transposed once for up to [`LANE_FEW`] tokens and the rows are taken in
/// sub-blocks that stay in L2 while every group of tokens passes over them.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `quants` and `scales` must hold
/// `y.len() / n` rows of `cols` (as `Matrix::check` finds), `x` `n` rows of `cols`.
pub(super) unsafe fn matmul_decode(quants: &[i8], scales: &[u16], cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let blocks = cols.div_ceil(32);
    let rows_total = y.len() / n.max(1);
    // The scales are gathered with 32-bit offsets.
    assert!(rows_total.saturating_mul(blocks) < i32::MAX as usize / 2);
    let row_bytes = blocks * 34;
    let min = min_rows_per_block(row_bytes, LANE_ROWS);
    let sub = rows_per_sub_block(row_bytes, LANE_ROWS, MANY_SUB_BYTES);
    let yp = SendPtr(y.as_mut_ptr());
    with_local(&TOKENS, |many| {
        if many.len() < n {
            many.resize_with(n, Default::default);
        }
        for (t, token) in many[..n].iter_mut().enumerate() {
            token.q.quantize(&x[t * cols..][..cols], ScaleSpan::Block);
            token.lanes.fill(&token.q, blocks);
        }
        let many = &many[..n];
        // Each call: rows `a .. a + len` (`a` a multiple of LANE_ROWS) for tokens
        // `t0 .. t0 + m`, at most LANE_FEW of them.
        par_row_groups(y, n, rows_total, min, LANE_ROWS, sub, LANE_FEW, |a, len, t0, m| {
            let tokens = &many[t0..t0 + m];
            let x: [&LaneX; LANE_FEW] = std::array::from_fn(|t| &tokens[t.min(tokens.len() - 1)].lanes);
            let (w, s, y) = (quants.as_ptr(), scales.as_ptr(), yp.get().wrapping_add(t0 * rows_total));
            // SAFETY: as the caller vouches; each call computes rows `a .. a + len` of
            // its tokens, which `par_row_groups` gave it alone.
            unsafe {
                match tokens.len() {
                    1 => rows_lanes::<1>(w, s, blocks, a, len, x, y, rows_total),
                    2 => rows_lanes::<2>(w, s, blocks, a, len, x, y, rows_total),
                    3 => rows_lanes::<3>(w, s, blocks, a, len, x, y, rows_total),
                    4 => rows_lanes::<4>(w, s, blocks, a, len, x, y, rows_total),
                    5 => rows_lanes::<5>(w, s, blocks, a, len, x, y, rows_total),
                    6 => rows_lanes::<6>(w, s, blocks, a, len, x, y, rows_total),
                    7 => rows_lanes::<7>(w, s, blocks, a, len, x, y, rows_total),
                    _ => rows_lanes::<8>(w, s, blocks, a, len, x, y, rows_total),
                }
            }
        })
    })
}

/// Eight rows' 64 bytes (`w[i]`: qwords `Q0 .. Q7`, block `b` then `b + 1`) in four
/// registers per four rows: register `m` of rows `4k .. 4k + 4` holds qword `m` of
/// block `b` and qword `m` (`Q4 + m`) of block `b + 1`, its 128-bit lanes rows
/// `(4k, 4k + 1)` of block `b`, of `b + 1`, rows `(4k + 2, 4k + 3)` of `b`, of `b + 1`.
#[inline(always)]
unsafe fn transpose_lanes(w: &[__m512i; LANE_ROWS]) -> [[__m512i; 4]; SETS] {
    let mut out = [[_mm512_setzero_si512(); 4]; SETS];
    for (k, out) in out.iter_mut().enumerate() {
        let (a, b, c, d) = (w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]);
        let (lo_ab, hi_ab) = (_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        let (lo_cd, hi_cd) = (_mm512_unpacklo_epi64(c, d), _mm512_unpackhi_epi64(c, d));
        out[0] = _mm512_shuffle_i64x2::<0x88>(lo_ab, lo_cd);
        out[1] = _mm512_shuffle_i64x2::<0x88>(hi_ab, hi_cd);
        out[2] = _mm512_shuffle_i64x2::<0xDD>(lo_ab, lo_cd);
        out[3] = _mm512_shuffle_i64x2::<0xDD>(hi_ab, hi_cd);
    }
    out
}

/// Rows `r0 .. r0 + len` of [`matmul_decode`] against `N` tokens.
///
/// Eight rows are read side by side, a pair of blocks (64 bytes) of each per step, and
/// transposed (`transpose_lanes`) so that every 32-bit lane holds one row's, one
/// block's, even or odd quads: each lane's `vpdpbusd` sum is then exact for its (row,
/// block, parity) without horizontal adds, and its float step is one FMA,
/// `acc = fma(float(sum), d_w * d_x, acc)`, a chain per lane across the pairs. A row's
/// four chains (block class even/odd x parity) end added as `(e0 + e1) + (o0 + o1)`.
/// Every step is per token, so a token's sums do not depend on `N`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and F16C; `quants` and `scales` must hold the rows, each `x[t]`
/// `blocks.div_ceil(2)` pairs, `y` room for row `r0 + len - 1` of token `N - 1` at
/// stride `ldy`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows_lanes<const N: usize>(quants: *const i8, scales: *const u16, blocks: usize, r0: usize, len: usize, x: [&LaneX; LANE_FEW], y: *mut f32, ldy: usize) {
    let pairs = blocks / 2;
    let mut xp = [std::ptr::null::<PairPattern>(); N];
    for t in 0..N {
        assert!(x[t].pairs.len() >= blocks.div_ceil(2));
        xp[t] = x[t].pairs.as_ptr();
    }
    let flip = _mm512_set1_epi8(-128);
    // Lane `l` of rows 4k.. holds row `4k + 2 (l / 8) + (l % 4) / 2`, block `b + (l / 4) % 2`;
    // the gathered scales hold row `i`'s block `b` in lane `2i`, `b + 1` in `2i + 1`.
    let scale_lanes = [
        _mm512_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3, 4, 4, 6, 6, 5, 5, 7, 7),
        _mm512_setr_epi32(8, 8, 10, 10, 9, 9, 11, 11, 12, 12, 14, 14, 13, 13, 15, 15),
    ];
    let rows_out = _mm512_setr_epi32(0, 2, 8, 10, 16, 18, 24, 26, 0, 0, 0, 0, 0, 0, 0, 0);
    let row_bytes = blocks * 32;
    let mut g = r0;
    while g < r0 + len {
        let here = (r0 + len - g).min(LANE_ROWS);
        // Rows past the end repeat the last one; their outputs are not stored.
        let mut q = [quants; LANE_ROWS];
        let mut offsets = [0i32; LANE_ROWS];
        for i in 0..LANE_ROWS {
            q[i] = quants.add((g + i.min(here - 1)) * row_bytes);
            offsets[i] = (i.min(here - 1) * blocks) as i32;
        }
        let s = scales.add(g * blocks);
        let offsets = _mm256_loadu_si256(offsets.as_ptr() as *const __m256i);
        let mut acc = [[_mm512_setzero_ps(); SETS]; N];
        let step = |acc: &mut [[__m512; SETS]; N], w: &[__m512i; LANE_ROWS], dw: __m512, p: usize| {
            let regs = transpose_lanes(w);
            let mut spread = [_mm512_setzero_ps(); SETS];
            for (k, spread) in spread.iter_mut().enumerate() {
                *spread = _mm512_permutexvar_ps(scale_lanes[k], dw);
            }
            let dw = spread;
            for t in 0..N {
                let pp = xp[t].add(p);
                let px = (*pp).x.as_ptr() as *const __m256i;
                let pat = [
                    _mm512_broadcast_i64x4(_mm256_load_si256(px)),
                    _mm512_broadcast_i64x4(_mm256_load_si256(px.add(1))),
                    _mm512_broadcast_i64x4(_mm256_load_si256(px.add(2))),
                    _mm512_broadcast_i64x4(_mm256_load_si256(px.add(3))),
                ];
                let start = _mm512_broadcast_i64x4(_mm256_load_si256((*pp).start.as_ptr() as *const __m256i));
                let dx = _mm512_castsi512_ps(_mm512_broadcast_i64x4(_mm256_load_si256((*pp).dx.as_ptr() as *const __m256i)));
                for k in 0..SETS {
                    let mut sum = start;
                    for m in 0..4 {
                        sum = _mm512_dpbusd_epi32(sum, regs[k][m], pat[m]);
                    }
                    acc[t][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw[k], dx), acc[t][k]);
                }
            }
        };
        for p in 0..pairs {
            let off = p * 64;
            if p % 16 == 0 {
                for i in 0..LANE_ROWS {
                    _mm_prefetch::<_MM_HINT_T0>((s.add(i.min(here - 1) * blocks + 2 * p) as *const i8).wrapping_add(256));
                }
            }
            let mut w = [_mm512_setzero_si512(); LANE_ROWS];
            // Ahead in each row, and from the row's end on, in the next group's row; and
            // into L2, this line of the next group's rows (`tasks::PREFETCH_L2`).
            let ahead = if off + LANE_PREFETCH >= row_bytes { off + LANE_PREFETCH + (LANE_ROWS - 1) * row_bytes } else { off + LANE_PREFETCH };
            for i in 0..LANE_ROWS {
                _mm_prefetch::<_MM_HINT_T0>(q[i].wrapping_add(ahead));
                _mm_prefetch::<_MM_HINT_T1>(q[i].wrapping_add(off + LANE_ROWS * row_bytes));
                w[i] = _mm512_xor_si512(_mm512_loadu_si512(q[i].add(off) as *const _), flip);
            }
            let dw = _mm512_cvtph_ps(_mm256_i32gather_epi32::<2>(s.add(2 * p) as *const i32, offsets));
            step(&mut acc, &w, dw, p);
        }
        if blocks % 2 == 1 {
            // A lone last block: the other half of each register holds 0 (128 once
            // unsigned) against zero activations, and its scale is 0.
            let b = blocks - 1;
            let mut w = [_mm512_setzero_si512(); LANE_ROWS];
            let mut dw = [0u16; 16];
            for i in 0..LANE_ROWS {
                w[i] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(u32::MAX as u64, q[i].add(b * 32)), flip);
                dw[2 * i] = *s.add(i.min(here - 1) * blocks + b);
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(dw.as_ptr() as *const __m256i));
            step(&mut acc, &w, dw, pairs);
        }
        let keep = ((1u16 << here) - 1) as u8;
        for (t, acc) in acc.iter().enumerate() {
            let mut rows = [_mm512_setzero_ps(); 2];
            for (k, a) in acc.iter().enumerate() {
                // Each row's (e0 + e1) then (o0 + o1) beside it, then the two added.
                let pairs_added = _mm512_add_ps(*a, _mm512_permute_ps::<0xB1>(*a));
                rows[k] = _mm512_add_ps(pairs_added, _mm512_shuffle_f32x4::<0xB1>(pairs_added, pairs_added));
            }
            let out = _mm512_permutex2var_ps(rows[0], rows_out, rows[1]);
            _mm256_mask_storeu_ps(y.add(t * ldy + g), keep, _mm512_castps512_ps256(out));
        }
        g += LANE_ROWS;
    }
}

/// What [`rows_lanes`] computes for one row and token, in plain Rust: the test's
/// statement of its arithmetic.
#[cfg(test)]
pub(super) fn lanes_reference(quants: &[i8], scales: &[u16], cols: usize, x: &[f32], y: &mut [f32]) {
    let blocks = cols.div_ceil(32);
    let mut qx = QuantX::default();
    qx.quantize(x, ScaleSpan::Block);
    for (r, y) in y.iter_mut().enumerate() {
        let mut acc = [[0f32; 2]; 2];
        for p in 0..blocks.div_ceil(2) {
            for (c, acc) in acc.iter_mut().enumerate() {
                let b = 2 * p + c;
                for (parity, acc) in acc.iter_mut().enumerate() {
                    let (mut sum, mut d) = (0i32, 0f32);
                    if b < blocks {
                        let w = &quants[(r * blocks + b) * 32..][..32];
                        let xq = &qx.quants[b * 32..][..32];
                        for m in 0..4 {
                            for k in 8 * m + 4 * parity..8 * m + 4 * parity + 4 {
                                sum += w[k] as i32 * xq[k] as i32;
                            }
                        }
                        d = half::f16::from_bits(scales[r * blocks + b]).to_f32() * qx.scales[b];
                    }
                    *acc = (sum as f32).mul_add(d, *acc);
                }
            }
        }
        *y = (acc[0][0] + acc[0][1]) + (acc[1][0] + acc[1][1]);
    }
}
