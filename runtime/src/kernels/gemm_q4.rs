//! 4-bit (q4_0, q4_k) `Y = X W^T` for many rows of `X` at once (prompt processing)
//! with AVX-512 VNNI integer dot products, as `gemm_q8` multiplies q8_0: the same
//! micro-kernel shape ([`MR`] tokens by [`NR`] rows, `vpdpbusd` on 256-bit registers),
//! the same activation bytes (int8 as every integer product of the dtype rounds them:
//! q4_0 per block of 32, q4_k per super-block of 256; offset by 128 to be unsigned)
//! and the same weight panels, unpacked from the tiles once per task.
//!
//! Layout, per block of 32 columns:
//! - weights, per strip of [`NR`] rows (two tile groups): the 32 values of each row as
//!   eight 4-byte groups, group-major (`[kq][row][4]`, one register per group of eight
//!   rows), then `-128 * sum(values)` per row (i32, taking the activations' offset back
//!   out), the scale per row (f32) and, for q4_k, the negated min per row (f32): one
//!   [`STRIP_BLOCK`]-byte record. The tiles already keep four columns of eight rows in
//!   32 bytes: a group is a mask (low nibbles, columns `4 kq ..`) or a shift and a mask
//!   (high nibbles, columns `16 + 4 (kq - 4) ..`) of one load. q4_0 values are stored
//!   as `q - 8` (signed bytes) with scale `d`, so a block's integer sum is exactly the
//!   weights' over `d`, as for q8_0; q4_k values as `q` with scale `d * sc` (exact in
//!   f32) and the min `-dmin * m` per row, which the kernel multiplies by each token's
//!   `sum(xq)` for the block, and the sum of both by the token's scale once per
//!   super-block ([`kernel_q4_k`]);
//! - activations, per group of [`MR`] tokens: as `gemm_q8` (`[kq][token][4]`, bytes
//!   offset by 128), the token scales beside them and, for q4_k, `sum(xq)` per token
//!   and block.
//!
//! Each parallel task owns up to [`NB`] weight rows (a multiple of 16, so its strips are
//! whole pairs of tile groups), packs them once, and sweeps every token group over
//! them, [`KB`] blocks at a time so a strip's slice stays in L1.
//!
//! The 1B's 512-token prompt (2 threads, a quiet Zen 4, `tools/bench_decode.py`):
//! q4_0 198.5 and q4_k 183.2 tokens/s against q8_0's 187.6 in the same run, and 60-64
//! for both on the AVX2 path (tiles dequantised into the float GEMM). On Sapphire
//! Rapids with `OLMORT_KERNELS=avx512` (`prompt_floor`, 2 rounds of 3): q4_k 2252 ms
//! against q8_0's 2094 with a scale per block, 2082-2083 against 2071-2073 (q4_0
//! 2040-2042) with one per super-block.

use std::arch::x86_64::*;
use std::cell::RefCell;

use olmo_format::{q4, DType};

use super::activations::{QuantX, ScaleSpan};
use super::gemm::store_tile;
use super::gemm_q8::{block_sums, for_each_tile, kernel, pack_group, KB, NEG, SCALE};
use super::q4_avx2::q4_k_scales;
use super::tasks::{for_each_row_block, for_each_task, grow, with_local, SendPtr};

/// Tokens per micro-kernel call: the q8_0 GEMM's, whose sweep order this one shares
/// ([`for_each_tile`]).
const MR: usize = super::gemm_q8::MR;
/// Weight rows per micro-kernel call: two registers of eight 32-bit lanes, two tile
/// groups (as many as the float GEMM's outputs, so all three share `gemm::store_tile`).
const NR: usize = super::gemm::NR;
const _: () = assert!(NR == 2 * q4::TILE_ROWS);
/// Bytes of one strip's record for one block: values, `-128 * sum`, scales (at
/// `gemm_q8`'s offsets [`NEG`], [`SCALE`]: q4_0 takes its micro-kernel), mins.
const STRIP_BLOCK: usize = 32 * NR + 4 * NR + 4 * NR + 4 * NR;
const MIN: usize = 40 * NR;
const _: () = assert!(KB == q4::TILE_COLS / q4::BLOCK);
/// Bytes of one token group's activation quants for one block.
const GROUP_BLOCK: usize = 32 * MR;
/// Weight rows per task at most; fewer when the packed rows would pass [`PANEL_BYTES`].
const NB: usize = 128;
const PANEL_BYTES: usize = 1 << 20;
const TILE: usize = q4::TILE_BYTES;

fn rows_per_block(blocks: usize) -> usize {
    (PANEL_BYTES / (blocks.max(1) * STRIP_BLOCK / NR)).clamp(NR, NB) / NR * NR
}

/// A group of tokens' packed activations: quants, scales, and (q4_k) `sum(xq)`.
#[derive(Default)]
struct Acts {
    quants: Vec<u8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

thread_local! {
    /// Per-thread scratch, allocated on a thread's first call and only ever grown: the
    /// calling thread's packed activations and one token's quantised row (the packed
    /// weights: `tasks::for_each_row_block`). Separate cells, because the calling thread also runs tasks
    /// while it holds its activations.
    static ACTS: RefCell<Acts> = const { RefCell::new(Acts { quants: Vec::new(), scales: Vec::new(), sums: Vec::new() }) };
    static ROW: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
}

/// `y = x W^T` for a 4-bit `W` (`rows x k`, in `dtype`'s tiles): `x` is `n x k`, `y`
/// is `n x rows`.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI; `tiles` must hold the whole matrix (as
/// `Matrix::check` finds), `x` `n * k` values and `y` `n * rows`.
pub(super) unsafe fn matmul(dtype: DType, tiles: &[u8], rows: usize, k: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let blocks = k.div_ceil(32);
    let groups = n.div_ceil(MR);
    let q4k = dtype == DType::Q4_K;
    with_local(&ACTS, |acts| {
        grow(&mut acts.quants, groups * blocks * GROUP_BLOCK);
        grow(&mut acts.scales, groups * blocks * MR);
        grow(&mut acts.sums, groups * blocks * MR);
        let aq = &mut acts.quants[..groups * blocks * GROUP_BLOCK];
        let ad = &mut acts.scales[..groups * blocks * MR];
        let asum = &mut acts.sums[..groups * blocks * MR];
        let (aqp, adp, asp) = (SendPtr(aq.as_mut_ptr()), SendPtr(ad.as_mut_ptr()), SendPtr(asum.as_mut_ptr()));
        for_each_task(groups, |g| {
            // SAFETY: group `g` alone writes its own part of each buffer (sized above).
            let (aq, ad, asum) = unsafe {
                (
                    std::slice::from_raw_parts_mut(aqp.get().add(g * blocks * GROUP_BLOCK), blocks * GROUP_BLOCK),
                    std::slice::from_raw_parts_mut(adp.get().add(g * blocks * MR), blocks * MR),
                    std::slice::from_raw_parts_mut(asp.get().add(g * blocks * MR), blocks * MR),
                )
            };
            // SAFETY: the caller vouches for the CPU features and `x`'s length.
            with_local(&ROW, |row| unsafe { pack_group(x, n, k, g, ScaleSpan::of(dtype), row, aq, ad, q4k.then_some(asum)) })
        });
        let (aq, ad, asum) = (&*aq, &*ad, &*asum);
        let yp = SendPtr(y.as_mut_ptr());
        let nb_max = rows_per_block(blocks);
        for_each_row_block(rows, nb_max, nb_max / NR * blocks * STRIP_BLOCK, |r0, nb, panel| {
            // SAFETY: as for `matmul`; `r0` is a multiple of 16 (whole tile groups);
            // this task alone writes output rows `r0 .. r0 + nb` (within `rows`) of
            // each of the `n` tokens in `y`.
            unsafe {
                pack_weights(q4k, tiles, rows, k, r0, nb, panel);
                if q4k {
                    sweep::<true>(panel, aq, ad, asum, n, blocks, nb, yp.get().add(r0), rows);
                } else {
                    sweep::<false>(panel, aq, ad, asum, n, blocks, nb, yp.get().add(r0), rows);
                }
            }
        });
    })
}

/// Packs weight rows `r0 .. r0 + nb` (`r0` a multiple of [`NR`]) of a `rows x k`
/// matrix's tiles into `panel` (strips of [`NR`], zero rows for a missing second tile
/// group), as the module documentation lays out.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn pack_weights(q4k: bool, tiles: &[u8], rows: usize, k: usize, r0: usize, nb: usize, panel: &mut [u8]) {
    debug_assert!(r0.is_multiple_of(NR));
    let blocks = k.div_ceil(32);
    let chunks = q4::tiles_per_group(k);
    let groups = rows.div_ceil(q4::TILE_ROWS);
    let strips = nb.div_ceil(NR);
    let (low, eight, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(8), _mm256_set1_epi8(1));
    let zero = _mm256_setzero_si256();
    for s in 0..strips {
        for half in 0..2 {
            let g = (r0 + s * NR) / q4::TILE_ROWS + half;
            let present = g < groups;
            let mut k_scales = ([0u8; 64], [0u8; 64]);
            for b in 0..blocks {
                let rec = panel.as_mut_ptr().add((s * blocks + b) * STRIP_BLOCK);
                let at = |off: usize| rec.add(off + half * 32);
                if !present {
                    for kq in 0..8 {
                        _mm256_store_si256(at(kq * 4 * NR) as *mut __m256i, zero);
                    }
                    for off in [NEG, SCALE, MIN] {
                        _mm256_store_si256(at(off) as *mut __m256i, zero);
                    }
                    continue;
                }
                let (t, blk) = (b / 8, b % 8);
                let tile = tiles.as_ptr().add((g * chunks + t) * TILE);
                if q4k && blk == 0 {
                    k_scales = q4_k_scales(tile);
                }
                let mut sum = zero;
                for j in 0..4 {
                    let v = _mm256_loadu_si256(tile.add(128 * blk + 32 * j) as *const __m256i);
                    let mut lo = _mm256_and_si256(v, low);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    if !q4k {
                        lo = _mm256_sub_epi8(lo, eight);
                        hi = _mm256_sub_epi8(hi, eight);
                    }
                    _mm256_store_si256(at(j * 4 * NR) as *mut __m256i, lo);
                    _mm256_store_si256(at((4 + j) * 4 * NR) as *mut __m256i, hi);
                    sum = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(sum, ones, lo), ones, hi);
                }
                _mm256_store_si256(at(NEG) as *mut __m256i, _mm256_sub_epi32(zero, _mm256_slli_epi32::<7>(sum)));
                let (scale, min) = if q4k {
                    let s = tile.add(q4::QUANT_BYTES);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(s as *const __m128i));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(s.add(16) as *const __m128i));
                    let widen = |v: &[u8; 64]| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(v.as_ptr().add(8 * blk) as *const __m128i)));
                    // Both products exact: an f16 times a 6-bit integer.
                    (_mm256_mul_ps(d, widen(&k_scales.0)), _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dmin, widen(&k_scales.1))))
                } else {
                    (_mm256_cvtph_ps(_mm_loadu_si128(tile.add(q4::q4_0_scale_at(0, blk)) as *const __m128i)), _mm256_setzero_ps())
                };
                _mm256_store_ps(at(SCALE) as *mut f32, scale);
                _mm256_store_ps(at(MIN) as *mut f32, min);
            }
        }
    }
}

/// Every token group against every strip of the packed rows: `y` points at output
/// row 0 of this task's rows, token rows `ldy` apart.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn sweep<const K: bool>(panel: &[u8], aq: &[u8], ad: &[f32], asum: &[f32], n: usize, blocks: usize, nb: usize, y: *mut f32, ldy: usize) {
    for_each_tile(n, blocks, nb, |b0, kb, s, g, mr, valid| {
        let w = panel.as_ptr().add((s * blocks + b0) * STRIP_BLOCK);
        let a = aq.as_ptr().add((g * blocks + b0) * GROUP_BLOCK);
        let d = ad.as_ptr().add((g * blocks + b0) * MR);
        let sums = asum.as_ptr().add((g * blocks + b0) * MR);
        if K {
            // `KB` is a super-block: each slice's blocks share the tokens' scales.
            kernel_q4_k(kb, a, d, sums, w, y.add(g * MR * ldy + s * NR), ldy, mr, valid, b0 > 0);
        } else {
            kernel::<STRIP_BLOCK>(kb, a, d, w, y.add(g * MR * ldy + s * NR), ldy, mr, valid, b0 > 0);
        }
    })
}

/// q4_k's micro-kernel: `C[mr x valid] (+)= dx * sum over the kb blocks of one
/// super-block of (d sc) (int8 x . q) + (-dmin m) sum(xq)`, where `dx` is each token's
/// one scale for the super-block (`ScaleSpan::SuperBlock`): applied once, where q4_0's
/// kernel multiplies every block's scales by the tokens'. (With a scale per block the
/// mins' multiply-adds had left q4_k prompts at 0.93x q8_0's speed.) Never inlined, as
/// `gemm_q8::kernel`. Its mins as exact 16-bit pairs by `vpdpwssd` once per
/// super-block, instead of a float FMA per block, measured level (1978-1989 against
/// 1975-1983 ms).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn kernel_q4_k(kb: usize, a: *const u8, ad: *const f32, sums: *const f32, w: *const u8, c: *mut f32, ldc: usize, mr: usize, valid: usize, acc: bool) {
    let mut f = [[_mm256_setzero_ps(); 2]; MR];
    for blk in 0..kb {
        let wb = w.add(blk * STRIP_BLOCK);
        let s = block_sums(wb, a.add(blk * GROUP_BLOCK));
        let d0 = _mm256_load_ps(wb.add(SCALE) as *const f32);
        let d1 = _mm256_load_ps(wb.add(SCALE + 32) as *const f32);
        let m0 = _mm256_load_ps(wb.add(MIN) as *const f32);
        let m1 = _mm256_load_ps(wb.add(MIN + 32) as *const f32);
        for (i, (fi, si)) in f.iter_mut().zip(&s).enumerate() {
            let xs = _mm256_set1_ps(*sums.add(blk * MR + i));
            fi[0] = _mm256_fmadd_ps(m0, xs, _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[0]), d0, fi[0]));
            fi[1] = _mm256_fmadd_ps(m1, xs, _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[1]), d1, fi[1]));
        }
    }
    for (i, fi) in f.iter_mut().enumerate() {
        let dx = _mm256_set1_ps(*ad.add(i));
        fi[0] = _mm256_mul_ps(fi[0], dx);
        fi[1] = _mm256_mul_ps(fi[1], dx);
    }
    store_tile(&f, c, ldc, mr, valid, acc);
}
