//! The two products of a prompt batch's attention ([`super::attention`]) on AMX tiles
//! with `tdpbf16ps`: the scores `S = K Q^T` and the output `O^T += V^T P`, their
//! operands rounded to bf16 and every sum in f32. The online softmax between them,
//! the masks and the rescaling stay on the vector units in f32, as on the FMA path.
//!
//! [`super::attention::attend_prompt`] takes this path only where the batch's matrix
//! products already round their activations (bf16 tiles for bf16 and quantised
//! weights, `gemm_amx`, `q8_amx`); prompts of f32 and f16 weights keep exact
//! attention. The rounding is that of bf16 attention as a bf16 checkpoint runs it:
//! each query, key, value and probability keeps 8 significant bits, and the running
//! sums of the softmax are taken from the probabilities before they are rounded.
//!
//! Operands are laid out as the tiles read them (64-byte aligned, as every tile here:
//! see `gemm_amx` on misaligned loads): `A` tiles as bf16 rows (keys by head dims for
//! `S`, head dims by keys for `O^T`, so the values are transposed per key block), `B`
//! tiles as rows of bf16 pairs (the queries' pairs of dims, the probabilities' pairs
//! of keys), `C` tiles straight from and to the f32 scores and output, 16 x 16.
//!
//! Every `unsafe fn` here needs AVX-512 F/BW and the thread's tiles [`configure`]d.

use std::arch::x86_64::*;

use super::amx::{self, TileConfig};
use super::gemm_amx::{bf16_interleaved, bf16_pairs, to_bf16, transpose16};

/// Rows of a tile: keys or dims of an `A` tile, pairs of a `B` tile, and 16 lanes of
/// f32 per `C` row.
pub(super) const TILE: usize = 16;
/// bf16 values per tile row (64 bytes): the depth of one product.
pub(super) const DEPTH: usize = 32;
/// u16 elements of one packed `B` tile.
const B_ELEMS: usize = TILE * DEPTH;

/// Every tile 16 rows of 64 bytes: the sum in 0, `A` in 4, `B` in 6.
fn config() -> TileConfig {
    TileConfig::new(&[], &[], 64)
}

/// Configures the calling thread's tiles for the functions here.
///
/// # Safety
/// `amx::available()` must be true; [`release`] before other tile users configure.
pub(super) unsafe fn configure() {
    amx::configure(&config());
}

/// # Safety
/// As [`configure`].
pub(super) unsafe fn release() {
    amx::release();
}

/// u16 elements [`pack_pairs`] writes for `depth` rows and `cols` columns.
pub(super) fn pairs_len(depth: usize, cols: usize) -> usize {
    depth.div_ceil(DEPTH) * (cols / TILE) * B_ELEMS
}

/// The `B` tiles of an f32 matrix `src` (`rows` rows of `cols`, `ld` apart, the
/// product's depth running down the rows): per 32 rows `c` and 16 columns `q`, the
/// tile at `dst + (c * cols / 16 + q) * 512`, whose row `p` holds the bf16 pairs of
/// rows `32c + 2p` and `32c + 2p + 1` over the 16 columns; rows from `rows` on are
/// zeros.
///
/// The kernels write this layout straight from their own data ([`pack_queries`],
/// [`softmax_pairs`]); this is what the tests hold them to.
///
/// # Safety
/// `cols` a multiple of 16; `src` holding `rows` rows of `cols` at `ld` apart; `dst`
/// [`pairs_len`]`(rows, cols)` values, 64-byte aligned.
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_pairs(src: *const f32, ld: usize, rows: usize, cols: usize, dst: *mut u16) {
    let groups = cols / TILE;
    for c in 0..rows.div_ceil(DEPTH) {
        for q in 0..groups {
            let tile = dst.add((c * groups + q) * B_ELEMS);
            for p in 0..TILE {
                let i = c * DEPTH + 2 * p;
                let even = if i < rows { to_bf16(_mm512_loadu_ps(src.add(i * ld + q * TILE))) } else { _mm512_setzero_si512() };
                let odd = if i + 1 < rows { to_bf16(_mm512_loadu_ps(src.add((i + 1) * ld + q * TILE))) } else { _mm512_setzero_si512() };
                let pairs = _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd));
                _mm512_store_si512(tile.add(p * DEPTH) as *mut __m512i, pairs);
            }
        }
    }
}

/// The `B` tiles of `Q^T` straight from the query vectors, as [`pack_pairs`] lays
/// out `Q^T`: vector `j < m` at `row(j)` (`d` values, times `scale`, rounded to bf16),
/// zeros up to `cols` vectors.
///
/// # Safety
/// `d` a multiple of 32 and `cols` of 16, `m <= cols`; `row(j)` `d` readable values
/// for each `j < m`; `dst` [`pairs_len`]`(d, cols)` values, 64-byte aligned.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_queries(row: impl Fn(usize) -> *const f32, m: usize, d: usize, scale: f32, cols: usize, dst: *mut u16) {
    let groups = cols / TILE;
    let scale = _mm512_set1_ps(scale);
    for q in 0..groups {
        for c in 0..d / DEPTH {
            let mut r = [_mm512_setzero_ps(); TILE];
            for (j, v) in r.iter_mut().enumerate() {
                if q * TILE + j < m {
                    let values = row(q * TILE + j).add(c * DEPTH);
                    *v = bf16_pairs(_mm512_mul_ps(_mm512_loadu_ps(values), scale), _mm512_mul_ps(_mm512_loadu_ps(values.add(16)), scale));
                }
            }
            // Lane p of vector j's register is its pair p: row p of the tile.
            transpose16(&mut r);
            let tile = dst.add((c * groups + q) * B_ELEMS);
            for (p, v) in r.iter().enumerate() {
                _mm512_store_ps(tile.add(p * DEPTH) as *mut f32, *v);
            }
        }
    }
}

/// The `A` tiles of `rows` rows of `width` f32 (`ld` apart) as bf16 rows of `width`
/// at `dst`, padded with zero rows to a multiple of 16.
///
/// # Safety
/// `width` a multiple of 32; `src` holding the rows; `dst` `rows.next_multiple_of(16)
/// * width` values, 64-byte aligned.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_rows(src: *const f32, ld: usize, rows: usize, width: usize, dst: *mut u16) {
    for i in 0..rows.next_multiple_of(TILE) {
        for c in (0..width).step_by(TILE) {
            let v = if i < rows { _mm512_cvtepi32_epi16(to_bf16(_mm512_loadu_ps(src.add(i * ld + c)))) } else { _mm256_setzero_si256() };
            _mm256_store_si256(dst.add(i * width + c) as *mut __m256i, v);
        }
    }
}

/// The online softmax's step for a key block (`super::attention`'s `softmax_update`,
/// with the same running max and, within a few millionths, the same sums and `alpha`:
/// its exponentials by [`probability_exp`]) whose probabilities go straight into the
/// `B` tiles of `O^T += V^T P` as [`pack_pairs`] lays them out, rounded to bf16 (zeros
/// from `len` keys up to [`padded_keys`]), instead of back into `s` for a second pass
/// to pack: the block's scores (64 KiB for 256 keys of 64 queries) are read once.
/// Returns whether any `alpha` differs from 1, that is whether `O^T` needs rescaling.
///
/// The rounding is one instruction per 32 probabilities, which reads a probability
/// under 2^-126 as zero.
///
/// # Safety
/// `cols` a multiple of 16; `s` holding `len` rows of `cols`, `max`, `sum` and `alpha`
/// `cols` each; `dst` [`pairs_len`]`(len, cols)` values, 64-byte aligned.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn softmax_pairs(s: *const f32, len: usize, cols: usize, max: *mut f32, sum: *mut f32, alpha: *mut f32, dst: *mut u16) -> bool {
    let groups = cols / TILE;
    let mut rescale = false;
    for q in 0..groups {
        let c = q * TILE;
        let old = _mm512_loadu_ps(max.add(c));
        let mut new = old;
        for j in 0..len {
            new = _mm512_max_ps(new, _mm512_loadu_ps(s.add(j * cols + c)));
        }
        let a = probability_exp(_mm512_sub_ps(old, new));
        rescale |= _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(a, _mm512_set1_ps(1.0)) != 0;
        let mut block = _mm512_setzero_ps();
        let prob = |j: usize| if j < len { probability_exp(_mm512_sub_ps(_mm512_loadu_ps(s.add(j * cols + c)), new)) } else { _mm512_setzero_ps() };
        for j in (0..padded_keys(len)).step_by(2) {
            let (even, odd) = (prob(j), prob(j + 1));
            // Adding the padding's zeros leaves the sum's bits as they are.
            block = _mm512_add_ps(_mm512_add_ps(block, even), odd);
            let tile = dst.add((j / DEPTH * groups + q) * B_ELEMS);
            _mm512_store_si512(tile.add(j % DEPTH / 2 * DEPTH) as *mut __m512i, bf16_interleaved(even, odd));
        }
        _mm512_storeu_ps(sum.add(c), _mm512_fmadd_ps(_mm512_loadu_ps(sum.add(c)), a, block));
        _mm512_storeu_ps(max.add(c), new);
        _mm512_storeu_ps(alpha.add(c), a);
    }
    rescale
}

/// `exp(x)` for `x <= 0` (a score less its running max, or `-inf` where masked) within
/// 6e-6 of it (1e-6 above -8; `t` below, rounded to f32, costs the rest), for
/// probabilities that the tiles take rounded to bf16 (2^-9): `2^t` for `t = x log2 e`
/// as `2^round(t)` (`vscalefps`) times a degree-6 polynomial in the rest, eleven
/// instructions where `exp16`'s 2-ulp steps take eighteen (the softmax's exponentials
/// are most of attention's vector work). Inputs of -87 and under (a
/// masked key's `-inf` among them) give zero, as `exp16` gives it from -88.4 on: under
/// 2^-125, which no sum of at least 1 keeps and bf16 rounding would flush anyway.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn probability_exp(x: __m512) -> __m512 {
    // 2^f = e^(f ln 2), Taylor's coefficients to degree 6: within 1.2e-7 on |f| <= 1/2.
    const C: [f32; 7] = [1.540_353e-4, 1.333_355_8e-3, 9.618_129e-3, 5.550_411e-2, 0.240_226_5, std::f32::consts::LN_2, 1.0];
    let kept = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(-87.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(C[0]);
    for c in C[1..].iter().copied() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    // Where `x` was -inf, `f` is NaN: those lanes are the ones zeroed.
    _mm512_maskz_scalef_ps(kept, p, n)
}

/// Keys (or any rows) padded to a whole number of products' depth.
pub(super) fn padded_keys(keys: usize) -> usize {
    keys.next_multiple_of(DEPTH)
}

/// `rows` rows of `width` f32 (`ld` apart; `width` the head dims) transposed into the
/// `A` tiles of `O^T += V^T P`: row `t` of `dst` (`ldd` apart) holds dim `t` of every
/// row, bf16, and zeros up to the next multiple of 16 rows.
///
/// # Safety
/// `width` a multiple of 16; `src` holding the rows; `dst` `width` rows of
/// `rows.next_multiple_of(16)` values, `ldd` apart, 32-byte aligned with `ldd` a
/// multiple of 16.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn transpose_rows(src: *const f32, ld: usize, rows: usize, width: usize, dst: *mut u16, ldd: usize) {
    for k0 in (0..rows).step_by(TILE) {
        for t0 in (0..width).step_by(TILE) {
            let mut r = [_mm512_setzero_ps(); TILE];
            for (i, v) in r.iter_mut().enumerate() {
                if k0 + i < rows {
                    *v = _mm512_loadu_ps(src.add((k0 + i) * ld + t0));
                }
            }
            transpose16(&mut r);
            for (t, v) in r.iter().enumerate() {
                let out = dst.add((t0 + t) * ldd + k0);
                _mm256_store_si256(out as *mut __m256i, _mm512_cvtepi32_epi16(to_bf16(*v)));
            }
        }
    }
}

/// `S = K Q^T`: `keys` packed by [`pack_rows`] (`key_rows` of them, a multiple of 16,
/// `width` dims), `queries` by [`pack_pairs`] (the `width` rows of `Q^T`, `cols`
/// columns); the scores go to `s` (`key_rows` rows of `cols` f32), 16 x 16 at a time.
///
/// # Safety
/// Tiles [`configure`]d; the operands as described, `width` a multiple of 32, `cols`
/// of 16, `s` 64-byte aligned with `cols` a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores(keys: *const u16, key_rows: usize, width: usize, queries: *const u16, cols: usize, s: *mut f32) {
    products(keys, width, key_rows / TILE, width / DEPTH, queries, s, cols, false)
}

/// `O^T += V^T P`: `vt` from [`transpose_rows`] (`width` dims of `keys` keys, `ldv`
/// apart, finite values up to [`padded_keys`]`(keys)`: the probabilities past `keys`
/// are zeros, which zero them), `p` the probabilities by [`pack_pairs`] (`keys` rows,
/// `cols` columns), into `ot` (`width` rows of `cols` f32).
///
/// # Safety
/// Tiles [`configure`]d; the operands as described, `width` a multiple of 16, `cols`
/// too; `ot` 64-byte aligned.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn accumulate(vt: *const u16, ldv: usize, keys: usize, width: usize, p: *const u16, cols: usize, ot: *mut f32) {
    products(vt, ldv, width / TILE, padded_keys(keys) / DEPTH, p, ot, cols, true)
}

/// `C (+)= A B` on tiles: `C` is `rows` tiles by `cols / 16` of f32 at `c` (rows
/// `cols` apart; `accumulate`: added to, else written), `A` the bf16 rows at `a`
/// (`lda` apart; tile `(i, k)` holds rows `16 i ..` and columns `32 k ..`), `B` the
/// pair tiles at `b` as [`pack_pairs`] lays them out (`depth` tiles deep). 2 x 2
/// tiles of `C` at a time: each `A` and `B` load serves two products, and the four
/// sums are independent chains (a single tile's chain waits on each product); the
/// odd tile row and column left, one tile at a time.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn products(a: *const u16, lda: usize, rows: usize, depth: usize, b: *const u16, c: *mut f32, cols: usize, accumulate: bool) {
    let groups = cols / TILE;
    let a_tile = |i: usize, k: usize| a.add(i * TILE * lda + k * DEPTH) as *const u8;
    let b_tile = |q: usize, k: usize| b.add((k * groups + q) * B_ELEMS) as *const u8;
    let c_tile = |i: usize, q: usize| c.add(i * TILE * cols + q * TILE) as *mut u8;
    let (a_stride, c_stride) = (lda * 2, cols * 4);
    let pairs = |n: usize| n / 2 * 2;
    for i in (0..pairs(rows)).step_by(2) {
        for q in (0..pairs(groups)).step_by(2) {
            start::<0>(accumulate, c_tile(i, q), c_stride);
            start::<1>(accumulate, c_tile(i, q + 1), c_stride);
            start::<2>(accumulate, c_tile(i + 1, q), c_stride);
            start::<3>(accumulate, c_tile(i + 1, q + 1), c_stride);
            for k in 0..depth {
                amx::load::<4>(a_tile(i, k), a_stride);
                amx::load::<5>(a_tile(i + 1, k), a_stride);
                amx::load::<6>(b_tile(q, k), 64);
                amx::load::<7>(b_tile(q + 1, k), 64);
                amx::dot_bf16::<0, 4, 6>();
                amx::dot_bf16::<1, 4, 7>();
                amx::dot_bf16::<2, 5, 6>();
                amx::dot_bf16::<3, 5, 7>();
            }
            amx::store::<0>(c_tile(i, q), c_stride);
            amx::store::<1>(c_tile(i, q + 1), c_stride);
            amx::store::<2>(c_tile(i + 1, q), c_stride);
            amx::store::<3>(c_tile(i + 1, q + 1), c_stride);
        }
    }
    for i in 0..rows {
        let qs = if i < pairs(rows) { pairs(groups)..groups } else { 0..groups };
        for q in qs {
            start::<0>(accumulate, c_tile(i, q), c_stride);
            for k in 0..depth {
                amx::load::<4>(a_tile(i, k), a_stride);
                amx::load::<6>(b_tile(q, k), 64);
                amx::dot_bf16::<0, 4, 6>();
            }
            amx::store::<0>(c_tile(i, q), c_stride);
        }
    }
}

/// Tile `T` loaded from `c` (`accumulate`) or zeroed.
#[inline(always)]
unsafe fn start<const T: u8>(accumulate: bool, c: *mut u8, stride: usize) {
    if accumulate {
        amx::load::<T>(c, stride);
    } else {
        amx::zero::<T>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// 64-byte aligned scratch of `n` u16 or f32 (as u32 bits).
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([u32; 16]);

    fn lines(n: usize) -> Vec<Line> {
        vec![Line([0; 16]); n.div_ceil(16)]
    }

    fn round(v: f32) -> f64 {
        bf16::from_f32(v).to_f32() as f64
    }

    /// Values in (-2, 2), a different stream per seed.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 2.0
            })
            .collect()
    }

    /// Queries packed straight from their rows are the tiles [`pack_pairs`] makes of
    /// `Q^T` scaled in f32, bit for bit, padding columns included.
    #[test]
    fn queries_pack_as_their_transpose_does() {
        if !crate::kernels::amx_available() {
            return;
        }
        for (d, ld, m, cols) in [(32, 40, 16, 16), (64, 100, 29, 32), (128, 128, 64, 64)] {
            let rows = values(m * ld, 7);
            let scale = 0.37;
            let mut qt = vec![0f32; d * cols];
            for j in 0..m {
                for t in 0..d {
                    qt[t * cols + j] = rows[j * ld + t] * scale;
                }
            }
            let (mut want, mut got) = (lines(pairs_len(d, cols) / 2), lines(pairs_len(d, cols) / 2));
            // SAFETY: AMX (checked) comes with AVX-512 F/BW; the buffers are aligned and
            // sized as the functions ask, and every vector `j < m` lies in `rows`.
            unsafe {
                pack_pairs(qt.as_ptr(), cols, d, cols, want.as_mut_ptr() as *mut u16);
                pack_queries(|j| rows.as_ptr().add(j * ld), m, d, scale, cols, got.as_mut_ptr() as *mut u16);
            }
            let words = |v: &[Line]| v.iter().flat_map(|l| l.0).collect::<Vec<u32>>();
            assert!(words(&want) == words(&got), "d {d} m {m} cols {cols}");
        }
    }

    /// The probabilities' exponential: within 1e-6 of `exp` from 0 down to -8, 6e-6 down
    /// to -87, zero from there on (`-inf` included).
    #[test]
    fn probability_exp_is_close_and_masks_to_zero() {
        if !crate::kernels::amx_available() {
            return;
        }
        let mut xs: Vec<f32> = (0..=87_000).map(|i| -(i as f32) / 1000.0).collect();
        xs.extend([-0.0, -1e-30, -86.999, -87.0, -87.001, -100.0, -1e30, f32::NEG_INFINITY]);
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: AMX (checked) comes with AVX-512 F.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), probability_exp(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                if x > -87.0 {
                    let want = (x as f64).exp();
                    let bound = if x > -8.0 { 1e-6 } else { 6e-6 };
                    assert!((g as f64 - want).abs() <= bound * want, "exp({x}): {g} against {want}");
                } else {
                    assert_eq!(g.to_bits(), 0, "exp({x}): {g}");
                }
            }
        }
    }

    /// The softmax's step into tiles gives the running max of the step into the
    /// scores bit for bit, its sums and `alpha` within 4e-6, and the tiles [`pack_pairs`]
    /// makes of its probabilities within one bf16 step, a masked key's zero; it reports
    /// a rescaling exactly when some `alpha` is not 1. Blocks of awkward lengths (the
    /// padding pairs must be zeros), masked keys and a column that is masked whole.
    #[test]
    fn softmax_into_tiles_matches_the_step_and_the_packing() {
        if !crate::kernels::amx_available() {
            return;
        }
        let cols = 32;
        for len in [1, 17, 32, 45, 256] {
            for carried in [false, true] {
                let s: Vec<f32> = values(len * cols, 9)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| if i % 5 == 2 || i % cols == 3 { f32::NEG_INFINITY } else { 6.0 * v })
                    .collect();
                let start = |v: f32| vec![v; cols];
                // A running max from an earlier block (above every score: no rescaling)
                // or none yet.
                let (max0, sum0) = if carried { (start(20.0), start(1.5)) } else { (start(-1e30), start(0.0)) };
                let (mut want, mut max_w, mut sum_w, mut alpha_w) = (s.clone(), max0.clone(), sum0.clone(), start(0.0));
                let (mut max_g, mut sum_g, mut alpha_g) = (max0.clone(), sum0.clone(), start(0.0));
                let (mut packed, mut got) = (lines(pairs_len(len, cols) / 2), lines(pairs_len(len, cols) / 2));
                // SAFETY: AMX (checked) comes with AVX-512 F/BW/BF16; the buffers hold
                // `len` rows of `cols` and `pairs_len(len, cols)` values, aligned.
                let rescale = unsafe {
                    super::super::attention::x86::softmax_update_512(&mut want, len, cols, &mut max_w, &mut sum_w, &mut alpha_w);
                    pack_pairs(want.as_ptr(), cols, len, cols, packed.as_mut_ptr() as *mut u16);
                    softmax_pairs(s.as_ptr(), len, cols, max_g.as_mut_ptr(), sum_g.as_mut_ptr(), alpha_g.as_mut_ptr(), got.as_mut_ptr() as *mut u16)
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                assert!(bits(&max_w) == bits(&max_g), "len {len}");
                let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 4e-6 * a.abs().max(1e-30));
                assert!(close(&sum_w, &sum_g) && close(&alpha_w, &alpha_g), "len {len}: {sum_w:?} {sum_g:?}");
                assert_eq!(rescale, alpha_w.iter().any(|&a| a != 1.0), "len {len} carried {carried}");
                let words = |v: &[Line]| v.iter().flat_map(|l| l.0).collect::<Vec<u32>>();
                let (w, g) = (words(&packed), words(&got));
                // bf16 bits of non-negative values: one step apart at most.
                for (i, (&w, &g)) in w.iter().zip(&g).enumerate() {
                    for half in [0, 16] {
                        let (w, g) = (w >> half & 0xffff, g >> half & 0xffff);
                        assert!(w.abs_diff(g) <= 1, "len {len} word {i}: {w:#x} against {g:#x}");
                    }
                }
                assert!(g.iter().any(|&x| x != 0), "len {len}");
            }
        }
    }

    /// Both products against plain sums of the bf16-rounded operands (exact products,
    /// summed in f64): the tiles' f32 sums within a few ulps of the terms' magnitude.
    /// Key blocks of awkward lengths (the padding must be zeros), several widths and
    /// query tiles, and rows with a stride other than their width.
    #[test]
    fn tile_products_match_sums_of_rounded_operands() {
        if !crate::kernels::amx_available() {
            eprintln!("no AMX here: the attention tile products are not tested");
            return;
        }
        for (d, ld) in [(32, 40), (64, 64), (128, 136)] {
            for len in [1, 15, 16, 17, 33, 64] {
                for cols in [16, 32, 48, 64] {
                    let (q, k, v, p) = (values(d * cols, 1), values(len * ld, 2), values(len * ld, 3), values(len * cols, 4));
                    let ot0 = values(d * cols, 5);
                    let key_rows = len.next_multiple_of(TILE);
                    let (mut qb, mut kb) = (lines(pairs_len(d, cols) / 2), lines(key_rows * d / 2));
                    let (mut vt, mut pb) = (lines(d * padded_keys(len) / 2), lines(pairs_len(len, cols) / 2));
                    let mut s = lines(key_rows * cols);
                    let mut ot = lines(d * cols);
                    // SAFETY: AMX is available (checked) and with it AVX-512; every
                    // buffer is 64-byte aligned and sized as the functions ask.
                    let (s, ot) = unsafe {
                        let ot_f = ot.as_mut_ptr() as *mut f32;
                        std::ptr::copy_nonoverlapping(ot0.as_ptr(), ot_f, d * cols);
                        configure();
                        pack_pairs(q.as_ptr(), cols, d, cols, qb.as_mut_ptr() as *mut u16);
                        pack_rows(k.as_ptr(), ld, len, d, kb.as_mut_ptr() as *mut u16);
                        scores(kb.as_ptr() as *const u16, key_rows, d, qb.as_ptr() as *const u16, cols, s.as_mut_ptr() as *mut f32);
                        transpose_rows(v.as_ptr(), ld, len, d, vt.as_mut_ptr() as *mut u16, padded_keys(len));
                        pack_pairs(p.as_ptr(), cols, len, cols, pb.as_mut_ptr() as *mut u16);
                        accumulate(vt.as_ptr() as *const u16, padded_keys(len), len, d, pb.as_ptr() as *const u16, cols, ot_f);
                        release();
                        (
                            std::slice::from_raw_parts(s.as_ptr() as *const f32, key_rows * cols).to_vec(),
                            std::slice::from_raw_parts(ot_f, d * cols).to_vec(),
                        )
                    };
                    let check = |what: &str, got: f32, terms: &mut dyn Iterator<Item = f64>| {
                        let (mut sum, mut size) = (0f64, 0f64);
                        for t in terms {
                            sum += t;
                            size += t.abs();
                        }
                        assert!(
                            (got as f64 - sum).abs() <= 1e-6 * size + 1e-30,
                            "{what} d {d} len {len} cols {cols}: {got} against {sum}"
                        );
                    };
                    for j in 0..key_rows {
                        for c in 0..cols {
                            let got = s[j * cols + c];
                            if j >= len {
                                assert_eq!(got, 0.0, "a padding key's score");
                                continue;
                            }
                            check("score", got, &mut (0..d).map(|t| round(k[j * ld + t]) * round(q[t * cols + c])));
                        }
                    }
                    for t in 0..d {
                        for c in 0..cols {
                            let start = std::iter::once(ot0[t * cols + c] as f64);
                            check("output", ot[t * cols + c], &mut start.chain((0..len).map(|j| round(v[j * ld + t]) * round(p[j * cols + c]))));
                        }
                    }
                }
            }
        }
    }
}
