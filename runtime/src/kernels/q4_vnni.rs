//! The 4-bit (q4_0, q4_k) one-token product `y = W x` and decode batches of up to
//! [`FEW`] tokens with AVX-512 VNNI. Every `unsafe fn` here may only run where
//! [`super::avx512_available`] holds; the dispatch checks that.
//!
//! The weights are tiles of 8 rows by 256 columns (`olmo_format::q4`): every 32 bytes
//! hold four columns of a tile's eight rows (low nibbles: four columns of a block's
//! first half; high nibbles: the same four of its second half). As in the AVX2 kernel
//! (`q4_avx2`), a group of eight rows is read as one stream, one row per 32-bit lane,
//! so no row needs a horizontal sum. Per 32 bytes: two masks split the nibbles (the
//! high ones left in place, 16 times their value; their sums are shifted back once
//! per block) and two `vpdpbusd` multiply the unsigned values by four int8
//! activations broadcast from memory, summing exactly in 32 bits where the AVX2
//! kernel needs `vpmaddubsw`, 16-bit adds and `vpmaddwd`.
//!
//! 256-bit registers (AVX-512 VL), measured against two 512-bit forms (kernels bench,
//! 1 thread; a 1024 x 2048 q4_0 matrix in L3, and 131072 x 2048 from DRAM next to a
//! plain stream of 26-34 GB/s):
//! - 32 bytes of two row groups per register (lanes 8-15 the next group's rows): 52
//!   GB/s in L3, but from DRAM 12 GB/s against the AVX2 kernel's 18-21 whatever the
//!   prefetch distance (the matrix read as two streams a group apart); 1B decode steps
//!   at 0.33 of the stream (AVX2 0.62);
//! - 64 contiguous bytes of one group per register against activations widened once per
//!   call (four activations to lanes 0-7, the next four to 8-15): 44 GB/s in L3, 15.5
//!   from DRAM against AVX2's 20-21, and decode batches paid for reading the widened
//!   activations (4 tokens 3.7x one token's time);
//! - this form: 52 GB/s in L3 (AVX2 41), from DRAM level with AVX2 (19.2 and 22.0 GB/s
//!   for q4_0 and q4_k against 20.5 and 22.6), 4 tokens 2.4-2.6x one token's time (AVX2
//!   4x). On Zen 4, which splits 512-bit operations in two, the wider forms gain no
//!   multiply-adds per cycle.
//!
//! The activations are rounded to int8 as `q4_avx2` rounds them ([`QuantX`]); the
//! block offsets (q4_0 `8 d`, q4_k `dmin m`) multiply the activations' block sums,
//! as in the AVX2 kernel. The float steps are the AVX2 kernel's, in the same order:
//! q4_0 adds `(dot - 8 sum(x)) * (d dx)` per block with one FMA; q4_k multiplies a
//! sub-block's sum by its 6-bit scale in integers, keeps `dx`-weighted sums of those
//! and of the mins for the tile, and applies `d` and `dmin` once per tile. So this
//! kernel's outputs are bit for bit the AVX2 kernel's (the tests check it): a model
//! decodes the same tokens on either set.
//!
//! A decode batch ([`matmul_decode`]) loads and splits each weight register once for
//! up to [`FEW`] tokens; every token's steps are those of its own one-token product
//! ([`rows`] is the same code for one token), so its outputs do not depend on the batch.

use std::arch::x86_64::*;
use std::cell::RefCell;

use olmo_format::{q4, DType};

use super::activations::{QuantX, ScaleSpan};
use super::matrix::Matrix;
use super::q4_avx2::{q4_k_min_pairs, q4_k_scales};
use super::tasks::{min_rows_per_block, par_row_groups, par_rows_guided, rows_per_sub_block, with_local, SendPtr, prefetch_weights, Q4_PREFETCH};

const TILE: usize = q4::TILE_BYTES;
const ROWS: usize = q4::TILE_ROWS;

/// Tokens [`matmul_decode`] passes over a weight register at once.
const FEW: usize = 4;

/// Weights a sub-block of a decode batch covers: a quarter of the L2.
const MANY_SUB_BYTES: usize = 256 << 10;

/// Quantises `x` into `tok` for a `dtype` matrix of `chunks` tiles per row group.
fn prepare(tok: &mut QuantX, dtype: DType, x: &[f32], chunks: usize) {
    tok.quantize(x, ScaleSpan::of(dtype));
    // The last tile's columns past `x` multiply zeros.
    tok.pad_and_sum(x.len(), chunks * 8);
}

thread_local! {
    static ONE: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
    /// The calling thread's quantised tokens of a decode batch; only ever grows.
    static MANY: RefCell<Vec<QuantX>> = const { RefCell::new(Vec::new()) };
}

/// `y = W x` for a 4-bit matrix, groups of eight rows claimed by the threads in
/// shrinking blocks.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `w` must pass `Matrix::check`, `x` hold
/// `w.cols` values and `y` `w.rows`.
pub(super) unsafe fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    let (dtype, tiles) = w.data.q4().expect("a 4-bit matrix");
    let chunks = q4::tiles_per_group(w.cols);
    let min = min_rows_per_block(w.row_bytes(), ROWS);
    with_local(&ONE, |tok| {
        prepare(tok, dtype, x, chunks);
        let tok = &*tok;
        // SAFETY: as the caller vouches; `prepare` sized the activations for whole
        // tiles; `par_rows_guided` gives each call a disjoint `ys` starting at row `r0`
        // (a multiple of 8) with `r0 + ys.len()` within the matrix.
        par_rows_guided(y, min, ROWS, |r0, ys| unsafe {
            rows_n(dtype, tiles.as_ptr(), chunks, r0, ys.len(), std::slice::from_ref(tok), ys.as_mut_ptr().wrapping_sub(r0), 0)
        })
    })
}

/// `y[t] = W x[t]` for a decode batch of `n` tokens (`x` is `n x cols`, `y` is
/// `n x rows`): each token's outputs exactly [`matvec`]'s, each weight register loaded
/// once for up to [`FEW`] tokens, the rows taken in sub-blocks that stay in L2 while
/// every group of tokens passes over them.
///
/// # Safety
/// As [`matvec`], with `x` holding `n` rows of `w.cols` and `y` `n` rows of `w.rows`.
pub(super) unsafe fn matmul_decode(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (dtype, tiles) = w.data.q4().expect("a 4-bit matrix");
    let (rows, cols) = (w.rows, w.cols);
    let chunks = q4::tiles_per_group(cols);
    let min = min_rows_per_block(w.row_bytes(), ROWS);
    let sub = rows_per_sub_block(w.row_bytes(), ROWS, MANY_SUB_BYTES);
    let yp = SendPtr(y.as_mut_ptr());
    with_local(&MANY, |toks| {
        if toks.len() < n {
            toks.resize_with(n, QuantX::new);
        }
        for (t, tok) in toks[..n].iter_mut().enumerate() {
            prepare(tok, dtype, &x[t * cols..][..cols], chunks);
        }
        let toks = &toks[..n];
        // SAFETY: as the caller vouches; `par_row_groups` gives each call rows
        // `a .. a + len` (`a` a multiple of 8: so are `min` and `sub`) within the
        // matrix, which it alone writes for its tokens.
        par_row_groups(y, n, rows, min, ROWS, sub, FEW, |a, len, t0, m| unsafe {
            rows_n(dtype, tiles.as_ptr(), chunks, a, len, &toks[t0..t0 + m], yp.get().add(t0 * rows), rows)
        })
    })
}

/// [`rows`] for 1 to [`FEW`] tokens and either dtype.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows_n(dtype: DType, tiles: *const u8, chunks: usize, r0: usize, len: usize, x: &[QuantX], y: *mut f32, ldy: usize) {
    let k = dtype == DType::Q4_K;
    match (x.len(), k) {
        (1, false) => rows::<1, false>(tiles, chunks, r0, len, x, y, ldy),
        (2, false) => rows::<2, false>(tiles, chunks, r0, len, x, y, ldy),
        (3, false) => rows::<3, false>(tiles, chunks, r0, len, x, y, ldy),
        (_, false) => rows::<4, false>(tiles, chunks, r0, len, x, y, ldy),
        (1, true) => rows::<1, true>(tiles, chunks, r0, len, x, y, ldy),
        (2, true) => rows::<2, true>(tiles, chunks, r0, len, x, y, ldy),
        (3, true) => rows::<3, true>(tiles, chunks, r0, len, x, y, ldy),
        (_, true) => rows::<4, true>(tiles, chunks, r0, len, x, y, ldy),
    }
}

/// One token's activations as the tile loops read them.
#[derive(Clone, Copy)]
struct Act {
    quants: *const i8,
    scales: *const f32,
    sums: *const i32,
    sum_pairs: *const i32,
}

/// Rows `r0 .. r0 + len` (`r0` a multiple of 8) of a 4-bit matrix (`K`: q4_k, else
/// q4_0) with `chunks` tiles per group, against `N` tokens `x`, token `t`'s outputs at
/// `y + t * ldy`. Each token's sums do not depend on `N`: every step is done per token
/// in the same order.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `tiles` must hold the groups of rows
/// `r0 .. r0 + len`, each `x[t]` be prepared for `chunks` tiles ([`prepare`]),
/// and `y` have room for row `r0 + len - 1` of token `N - 1` at stride `ldy`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows<const N: usize, const K: bool>(tiles: *const u8, chunks: usize, r0: usize, len: usize, x: &[QuantX], y: *mut f32, ldy: usize) {
    debug_assert!(r0.is_multiple_of(ROWS) && x.len() == N);
    debug_assert!(x.iter().all(|t| t.quants.len() >= chunks * 256 && t.scales.len() >= chunks * 8 && t.sums.len() >= chunks * 8));
    let xs: [Act; N] = std::array::from_fn(|t| Act { quants: x[t].quants.as_ptr(), scales: x[t].scales.as_ptr(), sums: x[t].sums.as_ptr(), sum_pairs: x[t].sum_pairs.as_ptr() });
    for r in (r0..r0 + len).step_by(ROWS) {
        let base = tiles.add(r / ROWS * chunks * TILE);
        let mut acc = [_mm256_setzero_ps(); N];
        for t in 0..chunks {
            let tile = base.add(t * TILE);
            // The scales' two lines here, each block's two in `block_dots`: spread
            // over the tile instead of 18 at its start, the kernels bench (1 thread,
            // 131072 x 2048 from DRAM, a 28-34 GB/s stream) read q4_0 at 25.5-25.7
            // GB/s instead of 20.0-21.7, q4_k at 27.2 instead of 20.2-21.2.
            for line in [q4::QUANT_BYTES, q4::QUANT_BYTES + 64] {
                prefetch_weights(tile.wrapping_add(line) as *const i8, Q4_PREFETCH);
            }
            if K {
                tile_q4_k(tile, &xs, t * 8, &mut acc);
            } else {
                tile_q4_0(tile, &xs, t * 8, &mut acc);
            }
        }
        let n = ROWS.min(r0 + len - r);
        let mask: __mmask8 = if n == ROWS { !0 } else { (1 << n) - 1 };
        for (t, acc) in acc.iter().enumerate() {
            _mm256_mask_storeu_ps(y.add(t * ldy + r), mask, *acc);
        }
    }
}

/// Block `blk` of `tile` (8 rows) against block `xb` of each token: per row lane,
/// `init[t]` plus the sum of the 32 products of 4-bit values and int8 activations
/// (exact).
#[inline(always)]
unsafe fn block_dots<const N: usize>(tile: *const u8, blk: usize, x: &[Act; N], xb: usize, init: [__m256i; N]) -> [__m256i; N] {
    let (low, high) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0xF0u8 as i8));
    prefetch_weights(tile.wrapping_add(128 * blk) as *const i8, Q4_PREFETCH);
    prefetch_weights(tile.wrapping_add(128 * blk + 64) as *const i8, Q4_PREFETCH);
    let mut lo = init;
    let mut hi = [_mm256_setzero_si256(); N];
    for j in 0..4 {
        let v = _mm256_loadu_si256(tile.add(128 * blk + 32 * j) as *const __m256i);
        let (vl, vh) = (_mm256_and_si256(v, low), _mm256_and_si256(v, high));
        // Loops, not `array::from_fn`: a closure has no target features, so the
        // intrinsics in it would not inline.
        for t in 0..N {
            let xq = x[t].quants.add(32 * xb);
            lo[t] = _mm256_dpbusd_epi32(lo[t], vl, _mm256_set1_epi32((xq.add(4 * j) as *const i32).read_unaligned()));
            hi[t] = _mm256_dpbusd_epi32(hi[t], vh, _mm256_set1_epi32((xq.add(16 + 4 * j) as *const i32).read_unaligned()));
        }
    }
    // Every product in `hi` is a multiple of 16: the shift is exact.
    for t in 0..N {
        lo[t] = _mm256_add_epi32(lo[t], _mm256_srai_epi32::<4>(hi[t]));
    }
    lo
}

/// `acc[t] + sum over the tile's blocks of d * dx * (q . xq - 8 sum(xq))` for eight
/// rows; `b0` is the tile's first block of `x`.
#[inline(always)]
unsafe fn tile_q4_0<const N: usize>(tile: *const u8, x: &[Act; N], b0: usize, acc: &mut [__m256; N]) {
    for blk in 0..8 {
        let xb = b0 + blk;
        let mut init = [_mm256_setzero_si256(); N];
        for (t, v) in init.iter_mut().enumerate() {
            *v = _mm256_set1_epi32(-8 * *x[t].sums.add(xb));
        }
        let dots = block_dots(tile, blk, x, xb, init);
        let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.add(q4::q4_0_scale_at(0, blk)) as *const __m128i));
        for t in 0..N {
            let s = _mm256_mul_ps(d, _mm256_set1_ps(*x[t].scales.add(xb)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[t]), s, acc[t]);
        }
    }
}

/// `acc[t] + d * dx * sum_j sc_j (q . xq) - dmin * dx * sum_j m_j sum_j(xq)` over a q4_k
/// tile for eight rows, whose activations share one scale `dx`; `b0` is the tile's
/// first block of `x`.
#[inline(always)]
unsafe fn tile_q4_k<const N: usize>(tile: *const u8, x: &[Act; N], b0: usize, acc: &mut [__m256; N]) {
    let s = tile.add(q4::QUANT_BYTES);
    let d = _mm256_cvtph_ps(_mm_loadu_si128(s as *const __m128i));
    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(s.add(16) as *const __m128i));
    // The 256-bit unpacking, stored as bytes: a 512-bit form here (two 512-bit stores
    // read back 8 bytes at a time) held this kernel to 28.9 GB/s on a matrix in L2
    // against 42.7 (Sapphire Rapids, kernels bench, 1 thread, 1024 x 2048).
    let (scs, ms) = q4_k_scales(tile);
    let mut scaled = [_mm256_setzero_ps(); N];
    for j in 0..8 {
        let xb = b0 + j;
        let dots = block_dots(tile, j, x, xb, [_mm256_setzero_si256(); N]);
        // The 6-bit scale as a float: a block's sum (under 2^16 in magnitude) times it
        // stays under 2^22, so the FMA adds the integer product exactly (as the AVX2
        // kernel's `vpmaddwd` and add: its numbers, bit for bit), one instruction
        // where `vpmulld` takes two.
        let scj = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(scs.as_ptr().add(8 * j) as *const __m128i)));
        for t in 0..N {
            scaled[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[t]), scj, scaled[t]);
        }
    }
    // The mins' sum, exact in integers: 16-bit pairs of mins against the tokens'
    // pairs of block sums (the AVX2 kernel's `vpmaddwd` and adds, the same numbers).
    let mut mins = [_mm256_setzero_si256(); N];
    for p in 0..4 {
        let pairs = q4_k_min_pairs(&ms, p);
        for t in 0..N {
            mins[t] = _mm256_dpwssd_epi32(mins[t], _mm256_set1_epi32(*x[t].sum_pairs.add(b0 / 2 + p)), pairs);
        }
    }
    for t in 0..N {
        let dx = _mm256_set1_ps(*x[t].scales.add(b0));
        acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(mins[t]), _mm256_fmadd_ps(_mm256_mul_ps(d, dx), scaled[t], acc[t]));
    }
}
