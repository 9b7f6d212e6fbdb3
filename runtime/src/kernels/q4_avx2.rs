//! The 4-bit (q4_0, q4_k) kernels on AVX2 + FMA + F16C. Every `unsafe fn` here may only
//! run where [`super::avx2_available`] holds; the dispatch checks that.
//!
//! The weights are tiles of 8 rows by 256 columns (`olmo_format::q4`): every 32 bytes
//! hold four columns of the eight rows. A one-token product keeps one row per 32-bit
//! lane: it widens 32 bytes to two registers of 4-bit values (low and high nibbles),
//! multiplies each with `vpmaddubsw` by four int8 activations broadcast to every lane,
//! adds a block's eight products in 16 bits (at most 8 x 2 x 15 x 127 = 30480), widens
//! once with `vpmaddwd`, and applies the block's scales to the eight rows with one FMA.
//! The activations are rounded to int8 as for q8_0 (q4_k: per super-block of 256,
//! `ScaleSpan`, the one scale repeated for its eight blocks); the 4-bit values
//! are unsigned, so each block's offset (q4_0: `8 d`, q4_k: `dmin m`) multiplies the
//! activations' sum per block, computed once per call.
//!
//! Keeping rows in lanes needs no horizontal sum per row, and a block's scale work is
//! shared by eight rows; the eight rows of a tile are still one sequential stream.

use std::arch::x86_64::*;
use std::cell::RefCell;

use olmo_format::{q4, DType};

use super::activations::{QuantX, ScaleSpan};
use super::matrix::Matrix;
use super::tasks::{min_rows_per_block, par_rows_guided, par_rows_many, rows_per_sub_block, with_local, prefetch_weights, Q4_PREFETCH};

const TILE: usize = q4::TILE_BYTES;

thread_local! {
    static QX: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
    /// One per token for [`matvec_many`]; only ever grows.
    static QX_MANY: RefCell<Vec<QuantX>> = const { RefCell::new(Vec::new()) };
}

/// `y = W x` for a 4-bit matrix, groups of eight rows claimed by the threads in
/// shrinking blocks.
pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    let (dtype, tiles) = w.data.q4().expect("a 4-bit matrix");
    let chunks = q4::tiles_per_group(w.cols);
    let min = min_rows_per_block(w.row_bytes(), q4::TILE_ROWS);
    with_local(&QX, |qx| {
        qx.quantize(x, ScaleSpan::of(dtype));
        // The last tile's columns past `x` multiply zeros.
        qx.pad_and_sum(x.len(), chunks * 8);
        let qx = &*qx;
        // SAFETY: `super::matvec_with` checked the CPU features, the lengths of `x` and
        // `y` and that the tiles cover every group of `w.rows` rows; `pad_and_sum` sized
        // the activations for whole tiles; the blocks start at multiples of 8 rows and
        // lie within `y`.
        par_rows_guided(y, min, q4::TILE_ROWS, |r0, ys| unsafe { groups(dtype, tiles, chunks, r0, qx, ys) })
    })
}

/// [`matvec`] for `n` tokens (`x` is `n x cols`, `y` is `n x rows`), each token's
/// outputs computed exactly as [`matvec`] computes them, the tiles read from memory
/// once for all of them (see `super::avx2::matvec_many`).
pub fn matvec_many(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (dtype, tiles) = w.data.q4().expect("a 4-bit matrix");
    let chunks = q4::tiles_per_group(w.cols);
    let min = min_rows_per_block(w.row_bytes(), q4::TILE_ROWS);
    let sub = rows_per_sub_block(w.row_bytes(), q4::TILE_ROWS, super::avx2::MANY_SUB_BYTES);
    with_local(&QX_MANY, |qx| {
        if qx.len() < n {
            qx.resize_with(n, QuantX::new);
        }
        for (t, q) in qx[..n].iter_mut().enumerate() {
            q.quantize(&x[t * w.cols..][..w.cols], ScaleSpan::of(dtype));
            q.pad_and_sum(w.cols, chunks * 8);
        }
        let qx = &qx[..n];
        // SAFETY: as for `matvec`, per token; `par_rows_many` hands out rows in
        // multiples of 8 within `rows`.
        par_rows_many(y, n, w.rows, min, q4::TILE_ROWS, sub, |t, r0, ys| unsafe { groups(dtype, tiles, chunks, r0, &qx[t], ys) })
    })
}

/// Rows `r0 .. r0 + y.len()` (`r0` a multiple of 8), a group of eight at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn groups(dtype: DType, tiles: &[u8], chunks: usize, r0: usize, x: &QuantX, y: &mut [f32]) {
    debug_assert!(r0.is_multiple_of(8));
    for (i, ys) in y.chunks_mut(8).enumerate() {
        let g = r0 / 8 + i;
        let base = tiles.as_ptr().add(g * chunks * TILE);
        let mut acc = _mm256_setzero_ps();
        for t in 0..chunks {
            let tile = base.add(t * TILE);
            for line in (0..TILE).step_by(64) {
                prefetch_weights(tile.wrapping_add(line) as *const i8, Q4_PREFETCH);
            }
            acc = match dtype {
                DType::Q4_0 => tile_q4_0(tile, x, t * 8, acc),
                _ => tile_q4_k(tile, x, t * 8, acc),
            };
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        ys.copy_from_slice(&out[..ys.len()]);
    }
}

/// A block's products of 4-bit values and int8 activations for eight rows, as sixteen
/// 16-bit sums (two per row): `q` points at the block's 128 bytes, `x` at its 32
/// activations.
#[inline(always)]
unsafe fn block_products(q: *const u8, x: *const i8) -> __m256i {
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_si256();
    for j in 0..4 {
        let v = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
        let lo = _mm256_and_si256(v, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
        let xlo = _mm256_set1_epi32((x.add(4 * j) as *const i32).read_unaligned());
        let xhi = _mm256_set1_epi32((x.add(16 + 4 * j) as *const i32).read_unaligned());
        acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(lo, xlo));
        acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(hi, xhi));
    }
    acc
}

/// `acc + sum over the tile's blocks of d * dx * (q . xq - 8 sum(xq))` for eight rows;
/// `b0` is the tile's first block of `x`.
#[inline(always)]
unsafe fn tile_q4_0(tile: *const u8, x: &QuantX, b0: usize, mut acc: __m256) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    for b in 0..8 {
        let xb = b0 + b;
        let p = block_products(tile.add(128 * b), x.quants.as_ptr().add(32 * xb));
        let dot = _mm256_sub_epi32(_mm256_madd_epi16(p, ones), _mm256_set1_epi32(8 * *x.sums.get_unchecked(xb)));
        let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.add(q4::q4_0_scale_at(0, b)) as *const __m128i));
        let s = _mm256_mul_ps(d, _mm256_set1_ps(*x.scales.get_unchecked(xb)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
    }
    acc
}

/// Pair `p` of a q4_k tile's 6-bit mins (`ms`, [`q4_k_scales`]' second) as 16-bit
/// pairs: lane `r` holds row `r`'s mins of blocks `2p` and `2p + 1` (low, high), for
/// `vpmaddwd` against a token's block sums in the same pairs (`QuantX::sum_pairs`).
#[inline(always)]
pub(super) unsafe fn q4_k_min_pairs(ms: &[u8; 64], p: usize) -> __m256i {
    let v = _mm_loadu_si128(ms.as_ptr().add(16 * p) as *const __m128i);
    _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, _mm_srli_si128::<8>(v)))
}

/// A q4_k tile's 6-bit scales and mins, `[sub-block][row]` as bytes.
#[inline(always)]
pub(super) unsafe fn q4_k_scales(tile: *const u8) -> ([u8; 64], [u8; 64]) {
    let s = tile.add(q4::QUANT_BYTES);
    let (low, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let lo0 = _mm256_loadu_si256(s.add(32) as *const __m256i);
    let lo1 = _mm256_loadu_si256(s.add(64) as *const __m256i);
    let hi = _mm256_loadu_si256(s.add(96) as *const __m256i);
    // Bits 0-1 of `hi` (sub-blocks 0-3) or 4-5 (4-7): the scale's top two bits; bits
    // 2-3 or 6-7 the min's. Shifts within 16-bit lanes, masked back to bytes.
    let top = |shift: i32| -> __m256i {
        let v = match shift {
            0 => hi,
            2 => _mm256_srli_epi16::<2>(hi),
            4 => _mm256_srli_epi16::<4>(hi),
            _ => _mm256_srli_epi16::<6>(hi),
        };
        _mm256_slli_epi16::<4>(_mm256_and_si256(v, two))
    };
    let sc0 = _mm256_or_si256(_mm256_and_si256(lo0, low), top(0));
    let sc1 = _mm256_or_si256(_mm256_and_si256(lo1, low), top(4));
    let m0 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(lo0), low), top(2));
    let m1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(lo1), low), top(6));
    let (mut sc, mut m) = ([0u8; 64], [0u8; 64]);
    _mm256_storeu_si256(sc.as_mut_ptr() as *mut __m256i, sc0);
    _mm256_storeu_si256(sc.as_mut_ptr().add(32) as *mut __m256i, sc1);
    _mm256_storeu_si256(m.as_mut_ptr() as *mut __m256i, m0);
    _mm256_storeu_si256(m.as_mut_ptr().add(32) as *mut __m256i, m1);
    (sc, m)
}

/// `acc + d * dx * sum_j sc_j (q . xq) - dmin * dx * sum_j m_j sum_j(xq)` over a q4_k
/// tile for eight rows, whose activations share one scale `dx` (`ScaleSpan::SuperBlock`);
/// `b0` is the tile's first block of `x`. The 6-bit scale is applied in integers by
/// `vpmaddwd` (it multiplies both 16-bit halves of a row's lane); each block's scaled
/// sum is then exact in f32 (under 2^22 in magnitude), added up in f32 in block order
/// as the VNNI kernel adds them. The mins' sum is exact in integers, a `vpmaddwd` per
/// pair of blocks (the VNNI kernel's `vpdpwssd`: the same numbers).
#[inline(always)]
unsafe fn tile_q4_k(tile: *const u8, x: &QuantX, b0: usize, acc: __m256) -> __m256 {
    let s = tile.add(q4::QUANT_BYTES);
    let d = _mm256_cvtph_ps(_mm_loadu_si128(s as *const __m128i));
    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(s.add(16) as *const __m128i));
    let (sc, m) = q4_k_scales(tile);
    let mut scaled = _mm256_setzero_ps();
    for j in 0..8 {
        let xb = b0 + j;
        let p = block_products(tile.add(128 * j), x.quants.as_ptr().add(32 * xb));
        let scj = _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc.as_ptr().add(8 * j) as *const __m128i));
        let pairs = _mm256_or_si256(scj, _mm256_slli_epi32::<16>(scj));
        scaled = _mm256_add_ps(scaled, _mm256_cvtepi32_ps(_mm256_madd_epi16(p, pairs)));
    }
    let mut mins = _mm256_setzero_si256();
    for p in 0..4 {
        let sums = _mm256_set1_epi32(*x.sum_pairs.get_unchecked(b0 / 2 + p));
        mins = _mm256_add_epi32(mins, _mm256_madd_epi16(q4_k_min_pairs(&m, p), sums));
    }
    let dx = _mm256_set1_ps(*x.scales.get_unchecked(b0));
    _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(mins), _mm256_fmadd_ps(_mm256_mul_ps(d, dx), scaled, acc))
}

/// Block `b`'s scale and offset for the eight rows of a tile at `tile` (lane `r`: row
/// `r`): each weight is `scale * q - offset`. `k_scales` are [`q4_k_scales`]' for a
/// q4_k tile, `None` for q4_0.
#[inline(always)]
pub(super) unsafe fn block_scales(tile: *const u8, k_scales: Option<&([u8; 64], [u8; 64])>, b: usize) -> (__m256, __m256) {
    match k_scales {
        None => {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.add(q4::q4_0_scale_at(0, b)) as *const __m128i));
            (d, _mm256_mul_ps(d, _mm256_set1_ps(8.0)))
        }
        Some((sc, m)) => {
            let s = tile.add(q4::QUANT_BYTES);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(s as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(s.add(16) as *const __m128i));
            // (No closure for the two widenings: one without the callers' target
            // features would leave the intrinsics as calls.)
            let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(sc.as_ptr().add(8 * b) as *const __m128i)));
            let m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(m.as_ptr().add(8 * b) as *const __m128i)));
            (_mm256_mul_ps(d, sc), _mm256_mul_ps(dmin, m))
        }
    }
}

/// Columns `c0 .. c0 + width` of rows `8 g .. 8 g + 8` of a 4-bit matrix `cols` wide,
/// dequantised: row `r` into `out[r * width ..][..width]`. The GEMMs' staging for
/// 4-bit weight tiles.
///
/// # Safety
/// AVX2/FMA/F16C; `tiles` must hold group `g` (as `Matrix::check` finds), `c0` be a
/// multiple of `q4::TILE_COLS`, `c0 + width` at most `cols`, and `out` hold `8 * width`
/// values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_group(dtype: DType, tiles: &[u8], cols: usize, g: usize, c0: usize, width: usize, out: &mut [f32]) {
    debug_assert!(out.len() >= 8 * width && c0.is_multiple_of(q4::TILE_COLS) && c0 + width <= cols);
    let chunks = q4::tiles_per_group(cols);
    let low = _mm256_set1_epi8(0x0F);
    // Lanes 0-3 take row 2p's scale, 4-7 row 2p + 1's.
    let pair: [__m256i; 4] = std::array::from_fn(|p| {
        let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
        _mm256_setr_epi32(a, a, a, a, b, b, b, b)
    });
    let mut buf = [0f32; 8 * q4::TILE_COLS];
    for t in c0 / q4::TILE_COLS..(c0 + width).div_ceil(q4::TILE_COLS) {
        let tile = tiles.as_ptr().add((g * chunks + t) * TILE);
        let k_scales = if dtype == DType::Q4_K { Some(q4_k_scales(tile)) } else { None };
        for b in 0..8 {
            let (scale, offset) = block_scales(tile, k_scales.as_ref(), b);
            for j in 0..4 {
                let v = _mm256_loadu_si256(tile.add(128 * b + 32 * j) as *const __m256i);
                let mut nibbles = [0u8; 64];
                _mm256_storeu_si256(nibbles.as_mut_ptr() as *mut __m256i, _mm256_and_si256(v, low));
                _mm256_storeu_si256(nibbles.as_mut_ptr().add(32) as *mut __m256i, _mm256_and_si256(_mm256_srli_epi16::<4>(v), low));
                for (h, half) in nibbles.chunks_exact(32).enumerate() {
                    let c = 32 * b + 16 * h + 4 * j;
                    for (p, idx) in pair.iter().enumerate() {
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(half.as_ptr().add(8 * p) as *const __m128i)));
                        // scale * q - offset: `scale * q` is exact in f32 (f16 times 6
                        // and 4 bits), so this rounds once, as the portable path does.
                        let w = _mm256_fmsub_ps(q, _mm256_permutevar8x32_ps(scale, *idx), _mm256_permutevar8x32_ps(offset, *idx));
                        _mm_storeu_ps(buf.as_mut_ptr().add(2 * p * q4::TILE_COLS + c), _mm256_castps256_ps128(w));
                        _mm_storeu_ps(buf.as_mut_ptr().add((2 * p + 1) * q4::TILE_COLS + c), _mm256_extractf128_ps::<1>(w));
                    }
                }
            }
        }
        let (at, len) = (t * q4::TILE_COLS - c0, q4::TILE_COLS.min(c0 + width - t * q4::TILE_COLS));
        for r in 0..8 {
            out[r * width + at..][..len].copy_from_slice(&buf[r * q4::TILE_COLS..][..len]);
        }
    }
}
