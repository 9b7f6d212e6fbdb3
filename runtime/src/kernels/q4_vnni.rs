//! The 4-bit (q4_0, q4_k) one-token product `y = W x` and decode batches of up to
//! [`FEW`] tokens with AVX-512 VNNI. Every `unsafe fn` here may only run where
//! [`super::avx512_available`] holds; the dispatch checks that.
//!
//! The weights are tiles of 8 rows by 256 columns (`olmo_format::q4`): every 32 bytes
//! hold four columns of a tile's eight rows (low nibbles: four columns of a block's
//! first half; high nibbles: the same four of its second half). A 512-bit register
//! takes those 32 bytes of two row groups side by side (lanes 0-7 the rows of group
//! `g`, 8-15 those of `g + 1`, which follows it in the blob: two sequential streams),
//! so each lane is one row and no row ever needs a horizontal sum. Per 32 bytes of each group: two
//! masks to split the nibbles (the high ones left in place, 16 times their value, and
//! their sums shifted back once per block), and two `vpdpbusd` of the unsigned values
//! against four int8 activations broadcast to every lane (a memory operand): 64 byte
//! products each, the most one instruction takes. A block's integer sums are exact.
//!
//! The activations are rounded to int8 per block of 32 as for q8_0 ([`QuantX`]); the
//! block offsets (q4_0 `8 d`, q4_k `dmin m`) multiply the activations' block sums,
//! as in the AVX2 kernel (`q4_avx2`). The float steps are the AVX2 kernel's, in the same
//! order, lane for lane: q4_0 starts each block's integer sum at `-8 sum(x)` and adds
//! `dot * (d dx)` with one FMA; q4_k multiplies a sub-block's sum by its 6-bit scale in
//! integers, then keeps `dx`-weighted sums of those and of the mins for the tile, and
//! applies `d` and `dmin` once per tile. So this kernel's outputs are bit for bit the
//! AVX2 kernel's (the tests check it): a model decodes the same tokens on either set.
//!
//! A decode batch ([`matmul_decode`]) loads and splits each weight register once for
//! up to [`FEW`] tokens; every token's steps are those of its own one-token product
//! ([`rows`] is the same code for one token), so its outputs do not depend on the batch.

use std::arch::x86_64::*;
use std::cell::RefCell;

use olmo_format::{q4, DType};

use super::activations::QuantX;
use super::matrix::Matrix;
use super::tasks::{min_rows_per_block, par_rows_guided, rows_per_sub_block, with_local, SendPtr, PREFETCH};

const TILE: usize = q4::TILE_BYTES;

/// Rows one register holds: two tile groups.
const ROWS: usize = 2 * q4::TILE_ROWS;

/// Tokens [`matmul_decode`] passes over a weight register at once.
const FEW: usize = 4;

/// Weights a sub-block of a decode batch covers: a quarter of the L2.
const MANY_SUB_BYTES: usize = 256 << 10;

thread_local! {
    static QX: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
    /// The calling thread's quantised tokens of a decode batch; only ever grows.
    static MANY: RefCell<Vec<QuantX>> = const { RefCell::new(Vec::new()) };
}

/// `y = W x` for a 4-bit matrix, pairs of row groups claimed by the threads in
/// shrinking blocks.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `w` must pass `Matrix::check`, `x` hold
/// `w.cols` values and `y` `w.rows`.
pub(super) unsafe fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    let (dtype, tiles) = w.data.q4().expect("a 4-bit matrix");
    let chunks = q4::tiles_per_group(w.cols);
    let groups = w.rows.div_ceil(q4::TILE_ROWS);
    let min = min_rows_per_block(w.row_bytes(), ROWS);
    with_local(&QX, |qx| {
        qx.quantize(x);
        // The last tile's columns past `x` multiply zeros.
        qx.pad_and_sum(x.len(), chunks * 8);
        let qx = &*qx;
        // SAFETY: as the caller vouches; `pad_and_sum` sized the activations for whole
        // tiles; `par_rows_guided` gives each call a disjoint `ys` starting at row `r0`
        // (a multiple of `ROWS`) with `r0 + ys.len()` within the matrix.
        par_rows_guided(y, min, ROWS, |r0, ys| unsafe {
            rows_n(dtype, tiles.as_ptr(), chunks, groups, r0, ys.len(), std::slice::from_ref(qx), ys.as_mut_ptr().wrapping_sub(r0), 0)
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
    let groups = rows.div_ceil(q4::TILE_ROWS);
    let min = min_rows_per_block(w.row_bytes(), ROWS);
    let sub = rows_per_sub_block(w.row_bytes(), ROWS, MANY_SUB_BYTES);
    let yp = SendPtr(y.as_mut_ptr());
    with_local(&MANY, |qx| {
        if qx.len() < n {
            qx.resize_with(n, QuantX::new);
        }
        for (t, q) in qx[..n].iter_mut().enumerate() {
            q.quantize(&x[t * cols..][..cols]);
            q.pad_and_sum(cols, chunks * 8);
        }
        let qx = &qx[..n];
        // SAFETY: as the caller vouches; `par_rows_guided` gives each call rows
        // `r0 .. r0 + block.len()` (`r0` a multiple of `ROWS`) within the matrix, which
        // it alone writes for every token; `sub` is a multiple of `ROWS`.
        par_rows_guided(&mut y[..rows], min, ROWS, |r0, block| {
            for a in (r0..r0 + block.len()).step_by(sub) {
                let len = sub.min(r0 + block.len() - a);
                for t0 in (0..n).step_by(FEW) {
                    let xs = &qx[t0..n.min(t0 + FEW)];
                    unsafe { rows_n(dtype, tiles.as_ptr(), chunks, groups, a, len, xs, yp.get().add(t0 * rows), rows) }
                }
            }
        })
    })
}

/// [`rows`] for 1 to [`FEW`] tokens and either dtype.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn rows_n(dtype: DType, tiles: *const u8, chunks: usize, groups: usize, r0: usize, len: usize, x: &[QuantX], y: *mut f32, ldy: usize) {
    let k = dtype == DType::Q4_K;
    match (x.len(), k) {
        (1, false) => rows::<1, false>(tiles, chunks, groups, r0, len, x, y, ldy),
        (2, false) => rows::<2, false>(tiles, chunks, groups, r0, len, x, y, ldy),
        (3, false) => rows::<3, false>(tiles, chunks, groups, r0, len, x, y, ldy),
        (_, false) => rows::<4, false>(tiles, chunks, groups, r0, len, x, y, ldy),
        (1, true) => rows::<1, true>(tiles, chunks, groups, r0, len, x, y, ldy),
        (2, true) => rows::<2, true>(tiles, chunks, groups, r0, len, x, y, ldy),
        (3, true) => rows::<3, true>(tiles, chunks, groups, r0, len, x, y, ldy),
        (_, true) => rows::<4, true>(tiles, chunks, groups, r0, len, x, y, ldy),
    }
}

/// One token's activations as the tile loops read them.
#[derive(Clone, Copy)]
struct Act {
    quants: *const i8,
    scales: *const f32,
    sums: *const i32,
}

/// Rows `r0 .. r0 + len` (`r0` a multiple of [`ROWS`]) of a 4-bit matrix (`K`: q4_k,
/// else q4_0) with `chunks` tiles per group and `groups` groups, against `N` quantised
/// tokens `x`, token `t`'s outputs at `y + t * ldy`. Each token's sums do not depend on
/// `N`: every float step is done per token in the same order.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `tiles` must hold `groups` groups of
/// `chunks` tiles, rows `r0 .. r0 + len` must lie within them, each `x[t]` hold
/// `chunks * 8` blocks (quants, scales and sums: `pad_and_sum`), and `y` room for row
/// `r0 + len - 1` of token `N - 1` at stride `ldy`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows<const N: usize, const K: bool>(
    tiles: *const u8,
    chunks: usize,
    groups: usize,
    r0: usize,
    len: usize,
    x: &[QuantX],
    y: *mut f32,
    ldy: usize,
) {
    debug_assert!(r0.is_multiple_of(ROWS) && x.len() == N);
    debug_assert!(x.iter().all(|q| q.quants.len() >= chunks * 256 && q.scales.len() >= chunks * 8 && q.sums.len() >= chunks * 8));
    let xs: [Act; N] = std::array::from_fn(|t| Act { quants: x[t].quants.as_ptr(), scales: x[t].scales.as_ptr(), sums: x[t].sums.as_ptr() });
    for r in (r0..r0 + len).step_by(ROWS) {
        let g = r / q4::TILE_ROWS;
        let a = tiles.add(g * chunks * TILE);
        // A lone last group pairs with itself; its second half is not stored.
        let b = if g + 1 < groups { a.add(chunks * TILE) } else { a };
        let mut acc = [_mm512_setzero_ps(); N];
        for t in 0..chunks {
            let (ta, tb) = (a.add(t * TILE), b.add(t * TILE));
            for line in (0..TILE).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ta.wrapping_add(PREFETCH + line) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(tb.wrapping_add(PREFETCH + line) as *const i8);
            }
            if K {
                tile_q4_k(ta, tb, &xs, t * 8, &mut acc);
            } else {
                tile_q4_0(ta, tb, &xs, t * 8, &mut acc);
            }
        }
        let n = ROWS.min(r0 + len - r);
        let mask: __mmask16 = if n == ROWS { !0 } else { (1 << n) - 1 };
        for (t, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(y.add(t * ldy + r), mask, *acc);
        }
    }
}

/// Bytes `off .. off + 32` of tiles `a` (lanes 0-7) and `b` (lanes 8-15).
#[inline(always)]
unsafe fn load_pair(a: *const u8, b: *const u8, off: usize) -> __m512i {
    let lo = _mm256_loadu_si256(a.add(off) as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(b.add(off) as *const __m256i))
}

/// Block `blk` of tiles `a` and `b` (16 rows) against block `xb` of each token: per
/// row lane, `init[t]` plus the sum of the 32 products of 4-bit values and int8
/// activations (exact).
#[inline(always)]
unsafe fn block_dots<const N: usize>(a: *const u8, b: *const u8, blk: usize, x: &[Act; N], xb: usize, init: [__m512i; N]) -> [__m512i; N] {
    let (low, high) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0xF0u8 as i8));
    let mut lo = init;
    let mut hi = [_mm512_setzero_si512(); N];
    for j in 0..4 {
        let v = load_pair(a, b, 128 * blk + 32 * j);
        // The high nibbles stay in place, 16 times their value: one mask instead of a
        // shift and a mask per register, one shift of the sums per block and token.
        let vl = _mm512_and_si512(v, low);
        let vh = _mm512_and_si512(v, high);
        for t in 0..N {
            let xq = x[t].quants.add(32 * xb);
            let xl = _mm512_set1_epi32((xq.add(4 * j) as *const i32).read_unaligned());
            let xh = _mm512_set1_epi32((xq.add(16 + 4 * j) as *const i32).read_unaligned());
            lo[t] = _mm512_dpbusd_epi32(lo[t], vl, xl);
            hi[t] = _mm512_dpbusd_epi32(hi[t], vh, xh);
        }
    }
    // Every product of `hi` is a multiple of 16 (at most 4 x 240 x 128 per
    // instruction, 16 of them): the shift is exact.
    std::array::from_fn(|t| _mm512_add_epi32(lo[t], _mm512_srai_epi32::<4>(hi[t])))
}

/// 16 bytes at `off` of tiles `a` (lanes 0-7 after widening) and `b` (8-15).
#[inline(always)]
unsafe fn load_pair_128(a: *const u8, b: *const u8, off: usize) -> __m256i {
    let lo = _mm_loadu_si128(a.add(off) as *const __m128i);
    _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), _mm_loadu_si128(b.add(off) as *const __m128i))
}

/// `acc[t] + sum over the tiles' blocks of d * dx * (q . xq - 8 sum(xq))` for 16 rows;
/// `b0` is the tiles' first block of `x`.
#[inline(always)]
unsafe fn tile_q4_0<const N: usize>(a: *const u8, b: *const u8, x: &[Act; N], b0: usize, acc: &mut [__m512; N]) {
    for blk in 0..8 {
        let xb = b0 + blk;
        let init = std::array::from_fn(|t| _mm512_set1_epi32(-8 * *x[t].sums.add(xb)));
        let dots = block_dots(a, b, blk, x, xb, init);
        let d = _mm512_cvtph_ps(load_pair_128(a, b, q4::q4_0_scale_at(0, blk)));
        for t in 0..N {
            let s = _mm512_mul_ps(d, _mm512_set1_ps(*x[t].scales.add(xb)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[t]), s, acc[t]);
        }
    }
}

/// A q4_k tile's 6-bit scales and mins, each as 64 bytes `[sub-block][row]`.
///
/// # Safety
/// AVX-512 F/BW; `tile` must point at a whole tile.
#[inline(always)]
pub(super) unsafe fn q4_k_scales(tile: *const u8) -> (__m512i, __m512i) {
    let s = tile.add(q4::QUANT_BYTES);
    let (low, two) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x03));
    let lo = _mm512_loadu_si512(s.add(32) as *const _);
    // Bytes 96..128 hold the top bits of sub-blocks 0-3 in bits 0-3 and of 4-7 in bits
    // 4-7: widened to 64 bytes, sub-block-major like `lo`.
    let hi32 = _mm256_loadu_si256(s.add(96) as *const __m256i);
    let hi = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hi32), _mm256_srli_epi16::<4>(hi32));
    // Shifts within 16-bit lanes, masked back to bytes.
    let sc = _mm512_or_si512(_mm512_and_si512(lo, low), _mm512_slli_epi16::<4>(_mm512_and_si512(hi, two)));
    let m = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(lo), low),
        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<2>(hi), two)),
    );
    (sc, m)
}

/// `acc[t] + d * sum_j dx_j sc_j (q . xq) - dmin * sum_j dx_j sum_j(xq) m_j` over
/// q4_k tiles `a` and `b` for 16 rows; `b0` is the tiles' first block of `x`.
#[inline(always)]
unsafe fn tile_q4_k<const N: usize>(a: *const u8, b: *const u8, x: &[Act; N], b0: usize, acc: &mut [__m512; N]) {
    let d = _mm512_cvtph_ps(load_pair_128(a, b, q4::QUANT_BYTES));
    let dmin = _mm512_cvtph_ps(load_pair_128(a, b, q4::QUANT_BYTES + 16));
    let ((sca, ma), (scb, mb)) = (q4_k_scales(a), q4_k_scales(b));
    // Sub-block j's eight bytes of `a` then of `b`: even j in `[0]`, odd in `[1]`, 16
    // bytes per pair of sub-blocks.
    let mut sc = [[0u8; 64]; 2];
    let mut m = [[0u8; 64]; 2];
    _mm512_storeu_si512(sc[0].as_mut_ptr() as *mut _, _mm512_unpacklo_epi64(sca, scb));
    _mm512_storeu_si512(sc[1].as_mut_ptr() as *mut _, _mm512_unpackhi_epi64(sca, scb));
    _mm512_storeu_si512(m[0].as_mut_ptr() as *mut _, _mm512_unpacklo_epi64(ma, mb));
    _mm512_storeu_si512(m[1].as_mut_ptr() as *mut _, _mm512_unpackhi_epi64(ma, mb));
    let mut scaled = [_mm512_setzero_ps(); N];
    let mut mins = [_mm512_setzero_ps(); N];
    for j in 0..8 {
        let xb = b0 + j;
        let dots = block_dots(a, b, j, x, xb, [_mm512_setzero_si512(); N]);
        let scj = _mm512_cvtepu8_epi32(_mm_loadu_si128(sc[j % 2].as_ptr().add(16 * (j / 2)) as *const __m128i));
        let mj = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(m[j % 2].as_ptr().add(16 * (j / 2)) as *const __m128i)));
        for t in 0..N {
            let dx = *x[t].scales.add(xb);
            let dot = _mm512_cvtepi32_ps(_mm512_mullo_epi32(dots[t], scj));
            scaled[t] = _mm512_fmadd_ps(dot, _mm512_set1_ps(dx), scaled[t]);
            mins[t] = _mm512_fmadd_ps(mj, _mm512_set1_ps(dx * *x[t].sums.add(xb) as f32), mins[t]);
        }
    }
    for t in 0..N {
        acc[t] = _mm512_fnmadd_ps(dmin, mins[t], _mm512_fmadd_ps(d, scaled[t], acc[t]));
    }
}
