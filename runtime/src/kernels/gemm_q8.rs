//! q8_0 `Y = X W^T` for many rows of `X` at once with AVX-512 VNNI integer dot
//! products (`vpdpbusd` on 256-bit registers): four byte products summed into each
//! 32-bit lane per instruction, four times the multiply-adds of an f32 FMA.
//!
//! The activations are quantised to int8 per block of 32 exactly as the one-token
//! q8_0 kernel quantises them, so prompt processing and decoding compute the same
//! integer block sums; only the order of the float additions differs.
//!
//! Layout, per block of 32 columns:
//! - weights, per strip of [`NR`] rows: the 32 quants of each row as eight 4-byte
//!   groups, group-major (`[kq][row][4]`, so one register holds group `kq` of eight
//!   rows), then `-128 * sum(quants)` per row (i32) and the row scales (f32): one
//!   [`STRIP_BLOCK`]-byte record, records of a strip consecutive;
//! - activations, per group of [`MR`] tokens: the same eight groups token-minor
//!   (`[kq][token][4]`), each byte offset by 128 to make it unsigned (`vpdpbusd`
//!   multiplies unsigned by signed bytes; the weights' precomputed `-128 * sum`
//!   takes the offset back out), and the token scales beside them.
//!
//! Each parallel task owns up to [`NB`] weight rows, packs them once, and sweeps every
//! token group over them, [`KB`] blocks at a time so a strip's slice stays in L1.

use std::arch::x86_64::*;
use std::cell::RefCell;


use super::gemm::{store_tile, transpose8};
use super::activations::{QuantX, ScaleSpan};
use super::tasks::{for_each_row_block, for_each_task, grow, with_local, SendPtr};

/// Tokens per micro-kernel call.
pub(super) const MR: usize = 6;
/// Where a strip's record for one block keeps, after the values (32 bytes per row),
/// `-128 * sum` per row and the scales (`gemm_q4`'s records start alike).
pub(super) const NEG: usize = 32 * NR;
pub(super) const SCALE: usize = 36 * NR;
/// Weight rows per micro-kernel call (two registers of eight 32-bit lanes, as many as
/// the float GEMM's outputs, so the two share `store_tile`).
const NR: usize = super::gemm::NR;
/// Blocks of 32 columns per slice of the sweep.
pub(super) const KB: usize = 8;
/// Bytes of one strip's record for one block: quants, `-128 * sum`, scales.
const STRIP_BLOCK: usize = 32 * NR + 4 * NR + 4 * NR;
/// Bytes of one token group's activation quants for one block.
const GROUP_BLOCK: usize = 32 * MR;
/// Weight rows per task at most; fewer when the packed rows would pass [`PANEL_BYTES`].
const NB: usize = 128;
const PANEL_BYTES: usize = 1 << 20;

/// Whether this CPU has the instructions [`matmul`] needs (beyond AVX2/FMA/F16C).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

fn rows_per_block(blocks: usize) -> usize {
    (PANEL_BYTES / (blocks.max(1) * STRIP_BLOCK / NR)).clamp(NR, NB) / NR * NR
}

thread_local! {
    /// Per-thread scratch, allocated on a thread's first call and only ever grown: the
    /// calling thread's packed activations and their scales, and one token's quantised
    /// row (the packed weights: `tasks::for_each_row_block`). Separate cells, because the calling
    /// thread also runs tasks while it holds its activations.
    static ACTS: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static ROW: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
}

/// `y = x W^T` for a q8_0 `W` (`rows x k`, `blocks = ceil(k / 32)` blocks per row):
/// `x` is `n x k`, `y` is `n x rows`.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and [`available`]; `quants` must hold
/// `rows * blocks * 32` bytes and `scales` `rows * blocks` values, `x` `n * k` and `y`
/// `n * rows`.
pub unsafe fn matmul(quants: &[i8], scales: &[u16], rows: usize, k: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let blocks = k.div_ceil(32);
    let groups = n.div_ceil(MR);
    with_local(&ACTS, |(aq, ad)| {
        grow(aq, groups * blocks * GROUP_BLOCK);
        grow(ad, groups * blocks * MR);
        let aq = &mut aq[..groups * blocks * GROUP_BLOCK];
        let ad = &mut ad[..groups * blocks * MR];
        // SAFETY: the caller vouches for the CPU features; each group's slices are
        // sized for its blocks above.
        let (aqp, adp) = (SendPtr(aq.as_mut_ptr()), SendPtr(ad.as_mut_ptr()));
        for_each_task(groups, |g| {
            // SAFETY: group `g` alone writes its own part of each buffer (sized above).
            let (aq, ad) = unsafe {
                (
                    std::slice::from_raw_parts_mut(aqp.get().add(g * blocks * GROUP_BLOCK), blocks * GROUP_BLOCK),
                    std::slice::from_raw_parts_mut(adp.get().add(g * blocks * MR), blocks * MR),
                )
            };
            with_local(&ROW, |row| unsafe { pack_group(x, n, k, g, ScaleSpan::Block, row, aq, ad, None) })
        });
        let (aq, ad) = (&*aq, &*ad);
        let yp = SendPtr(y.as_mut_ptr());
        let nb_max = rows_per_block(blocks);
        for_each_row_block(rows, nb_max, nb_max / NR * blocks * STRIP_BLOCK, |r0, nb, panel| {
            // SAFETY: as for `matmul`; this task alone writes output rows `r0 .. r0 + nb`
            // (within `rows`) of each of the `n` tokens in `y`.
            unsafe {
                pack_weights(quants, scales, blocks, r0, nb, panel);
                sweep(panel, aq, ad, n, blocks, nb, yp.get().add(r0), rows);
            }
        });
    })
}

/// Quantises tokens `g * MR ..` of `x` per `span` and lays them out for the
/// micro-kernel (tokens past `n` quantise to zero); with `sums` (q4_k, `gemm_q4`), also
/// each token's `sum(xq)` per block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack_group(x: &[f32], n: usize, k: usize, g: usize, span: ScaleSpan, row: &mut QuantX, aq: &mut [u8], ad: &mut [f32], mut sums: Option<&mut [f32]>) {
    let blocks = k.div_ceil(32);
    for i in 0..MR {
        let t = g * MR + i;
        if t < n {
            row.quantize(&x[t * k..][..k], span);
            if sums.is_some() {
                row.pad_and_sum(k, blocks);
            }
        }
        for b in 0..blocks {
            let dst = aq.as_mut_ptr().add(b * GROUP_BLOCK);
            if t < n {
                let src = row.quants.as_ptr().add(b * 32) as *const u32;
                for kq in 0..8 {
                    (dst.add((kq * MR + i) * 4) as *mut u32).write_unaligned(src.add(kq).read_unaligned() ^ 0x8080_8080);
                }
                ad[b * MR + i] = row.scales[b];
            } else {
                for kq in 0..8 {
                    (dst.add((kq * MR + i) * 4) as *mut u32).write_unaligned(0x8080_8080);
                }
                ad[b * MR + i] = 0.0;
            }
            if let Some(sums) = sums.as_deref_mut() {
                sums[b * MR + i] = if t < n { row.sums[b] as f32 } else { 0.0 };
            }
        }
    }
}

/// Packs weight rows `r0 .. r0 + nb` into `panel` (strips of [`NR`], zero rows past
/// `nb`), as the module documentation lays out.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn pack_weights(quants: &[i8], scales: &[u16], blocks: usize, r0: usize, nb: usize, panel: &mut [u8]) {
    let strips = nb.div_ceil(NR);
    let ones = _mm256_set1_epi8(1);
    let zero = _mm256_setzero_si256();
    for s in 0..strips {
        for b in 0..blocks {
            let rec = panel.as_mut_ptr().add((s * blocks + b) * STRIP_BLOCK);
            for half in 0..NR / 8 {
                // Loops, not `array::from_fn`: a closure has no target features, so the
                // intrinsics (and `half`'s F16C conversion) in it were calls, a fifth of
                // this function's time.
                let mut v = [_mm256_setzero_ps(); 8];
                let mut d = [0u16; 8];
                for (j, (v, d)) in v.iter_mut().zip(&mut d).enumerate() {
                    let r = s * NR + half * 8 + j;
                    if r < nb {
                        *v = _mm256_loadu_ps(quants.as_ptr().add(((r0 + r) * blocks + b) * 32) as *const f32);
                        *d = scales[(r0 + r) * blocks + b];
                    }
                }
                let t = transpose8(v);
                let mut sum = zero;
                for (kq, tv) in t.iter().enumerate() {
                    let tv = _mm256_castps_si256(*tv);
                    _mm256_store_si256(rec.add(kq * 4 * NR + half * 32) as *mut __m256i, tv);
                    sum = _mm256_dpbusd_epi32(sum, ones, tv);
                }
                let neg = _mm256_sub_epi32(zero, _mm256_slli_epi32::<7>(sum));
                _mm256_store_si256(rec.add(32 * NR + half * 32) as *mut __m256i, neg);
                // Missing rows' scales are zero bits: 0.0.
                let d = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i));
                _mm256_store_ps(rec.add(36 * NR + half * 32) as *mut f32, d);
            }
        }
    }
}

/// Every token group against every strip of the packed rows: `y` points at output
/// row 0 of this task's rows, token rows `ldy` apart.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn sweep(panel: &[u8], aq: &[u8], ad: &[f32], n: usize, blocks: usize, nb: usize, y: *mut f32, ldy: usize) {
    for_each_tile(n, blocks, nb, |b0, kb, s, g, mr, valid| {
        let w = panel.as_ptr().add((s * blocks + b0) * STRIP_BLOCK);
        let a = aq.as_ptr().add((g * blocks + b0) * GROUP_BLOCK);
        let d = ad.as_ptr().add((g * blocks + b0) * MR);
        kernel::<STRIP_BLOCK>(kb, a, d, w, y.add(g * MR * ldy + s * NR), ldy, mr, valid, b0 > 0);
    })
}

/// The order in which a task's packed rows meet the packed tokens, for this GEMM and
/// `gemm_q4`'s: for each slice of up to [`KB`] blocks from `b0`, each strip `s` of
/// [`NR`] rows (`valid` of them real), each group `g` of [`MR`] tokens (`mr` real),
/// `f(b0, kb, s, g, mr, valid)`.
#[inline(always)]
pub(super) fn for_each_tile(n: usize, blocks: usize, nb: usize, mut f: impl FnMut(usize, usize, usize, usize, usize, usize)) {
    let strips = nb.div_ceil(NR);
    let groups = n.div_ceil(MR);
    let mut b0 = 0;
    while b0 < blocks {
        let kb = KB.min(blocks - b0);
        for s in 0..strips {
            let valid = NR.min(nb - s * NR);
            for g in 0..groups {
                f(b0, kb, s, g, MR.min(n - g * MR), valid);
            }
        }
        b0 += kb;
    }
}

/// `C[mr x valid] (+)= sum over kb blocks of (dx * dw) * (int8 x . w)`: the
/// micro-kernel of this GEMM and of `gemm_q4`'s q4_0, whose strip records start alike
/// (the values, `-128 * sum`, the scales), `STRIP` bytes per block.
///
/// Never inlined: inlined into the sweep's closure it ran slower (1B 512-token prompt,
/// `OLMORT_KERNELS=avx512`, Sapphire Rapids, alternating builds: q8_0 2105-2108 ms
/// inlined, 1940-1999 not; q4_k's kernel below the same, 2106-2118 -> 1975-1983).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn kernel<const STRIP: usize>(
    kb: usize,
    a: *const u8,
    ad: *const f32,
    w: *const u8,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    valid: usize,
    acc: bool,
) {
    let mut f = [[_mm256_setzero_ps(); 2]; MR];
    for blk in 0..kb {
        let wb = w.add(blk * STRIP);
        let ab = a.add(blk * GROUP_BLOCK);
        let s = block_sums(wb, ab);
        let d0 = _mm256_load_ps(wb.add(SCALE) as *const f32);
        let d1 = _mm256_load_ps(wb.add(SCALE + 32) as *const f32);
        for (i, (fi, si)) in f.iter_mut().zip(&s).enumerate() {
            let dx = _mm256_set1_ps(*ad.add(blk * MR + i));
            fi[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[0]), _mm256_mul_ps(d0, dx), fi[0]);
            fi[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[1]), _mm256_mul_ps(d1, dx), fi[1]);
        }
    }
    store_tile(&f, c, ldc, mr, valid, acc);
}

/// One block's exact integer products of [`MR`] tokens' activation bytes (`ab`) and a
/// strip's [`NR`] rows (`wb`, a record laid out as this module's), the activations'
/// offset of 128 taken back out: per token, two registers of eight rows.
#[inline(always)]
pub(super) unsafe fn block_sums(wb: *const u8, ab: *const u8) -> [[__m256i; 2]; MR] {
    let neg0 = _mm256_load_si256(wb.add(NEG) as *const __m256i);
    let neg1 = _mm256_load_si256(wb.add(NEG + 32) as *const __m256i);
    let mut s = [[neg0, neg1]; MR];
    for kq in 0..8 {
        let w0 = _mm256_load_si256(wb.add(kq * 4 * NR) as *const __m256i);
        let w1 = _mm256_load_si256(wb.add(kq * 4 * NR + 32) as *const __m256i);
        for (i, si) in s.iter_mut().enumerate() {
            let xv = _mm256_set1_epi32((ab.add((kq * MR + i) * 4) as *const i32).read_unaligned());
            si[0] = _mm256_dpbusd_epi32(si[0], xv, w0);
            si[1] = _mm256_dpbusd_epi32(si[1], xv, w1);
        }
    }
    s
}
