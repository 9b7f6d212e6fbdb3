//! `Y = X W^T` for many rows of `X` at once (prompt processing), AVX2 + FMA.
//!
//! Each parallel task owns a block of up to [`NB`] weight rows. It reads each row once,
//! front to back, widening it to f32 into a packed panel of `KC x NR` tiles (`NR`
//! outputs side by side), then sweeps every row of `X` (packed once per call) over
//! each tile with an `MR x NR` register-blocked micro-kernel. Weights are read from memory once per call,
//! whatever their dtype; the panel stays in L2 while all tokens use it.

use std::arch::x86_64::*;
use std::cell::RefCell;

use olmo_format::DType;

use super::activations::ScaleSpan;
use super::avx2::{q8_row_to_f32, round_like_int8, Widen, WBF16, WF16, WF32};
use super::q4_avx2::dequantize_group;
use super::matrix::{Matrix, MatrixData};
use super::tasks::{for_each_task, grow, grow_aligned, with_local, SendPtr};

/// Rows of `X` per micro-kernel call.
const MR: usize = 6;
/// Outputs per micro-kernel call (two AVX registers).
pub(super) const NR: usize = 16;
/// Input columns per packed tile.
const KC: usize = 512;
/// Weight rows per task (a multiple of `NR`) at most; fewer for wide matrices so a
/// task's packed weights (`nb x cols` f32) stay around [`PANEL_BYTES`].
const NB: usize = 128;
const PANEL_BYTES: usize = 1 << 20;
/// Bytes ahead of each row that packing prefetches.
const PACK_PREFETCH: usize = 1024;

fn rows_per_block(cols: usize) -> usize {
    (PANEL_BYTES / 4 / cols.max(1)).clamp(NR, NB) / NR * NR
}
/// Below this many rows of `X`, a matrix-vector product per row is cheaper.
pub const MIN_BATCH: usize = 3;

#[derive(Default)]
struct Panel {
    buf: Vec<f32>,
    row: Vec<f32>,
}

thread_local! {
    /// Per-thread weight-packing scratch, allocated on a thread's first GEMM and reused.
    static PANEL: RefCell<Panel> = const { RefCell::new(Panel { buf: Vec::new(), row: Vec::new() }) };
    /// The calling thread's packed copy of `X`, grown to the largest call and reused.
    static APACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y = x W^T`; `wide` sweeps with the AVX-512 micro-kernel ([`slice_avx512`]).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F if `wide`; the weights must
/// hold every row, `x` `n * w.cols` values and `y` `n * w.rows`.
pub unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32], wide: bool) {
    let (rows, k) = (w.rows, w.cols);
    let groups = n.div_ceil(MR);
    // X packed once for every task: for each KC slice, for each group of MR rows,
    // [kk][MR] with zero rows past n.
    with_local(&APACK, |apack| {
        grow(apack, groups * MR * k);
        let apack = &mut apack[..groups * MR * k];
        pack_a(x, n, k, w.data.int8_activations(), apack);
        let apack = &*apack;
        let yp = SendPtr(y.as_mut_ptr());
        let nb_max = rows_per_block(k);
        let kblocks = k.div_ceil(KC);
        let tasks = rows.div_ceil(nb_max);
        let task = |t: usize| {
            with_local(&PANEL, |panel| {
                let len = kblocks * KC * nb_max.next_multiple_of(NR);
                grow(&mut panel.row, 8 * k);
                let Panel { buf, row } = panel;
                // 64-byte aligned, so every B load stays within one cache line.
                let packed = grow_aligned(buf, len);
                let r0 = t * nb_max;
                let nb = nb_max.min(rows - r0);
                // SAFETY: `matmul_with` checked the CPU features (AVX-512 F for `wide`),
                // the shapes of `x` and `y` and that the weights hold every row; task `t`
                // alone writes output rows `r0 .. r0 + nb` (within `rows`) of each of the
                // `n` tokens in `y`.
                unsafe {
                    pack_b(w, k, r0, nb, packed, row);
                    let y = yp.get().add(r0);
                    sweep(apack, packed, n, k, nb, y, rows, wide);
                }
            })
        };
        for_each_task(tasks, task);
    })
}

/// Packs `x` (`n x k`) as described in [`matmul`]: slice `k0` starts at `k0 * groups * MR`.
/// With `int8`, each row is first rounded as int8 activations of that span
/// ([`round_like_int8`]; slices of [`KC`] are whole spans), as the one-token products
/// of quantised weights round them.
///
/// # Safety
/// AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_a(x: &[f32], n: usize, k: usize, int8: Option<ScaleSpan>, apack: &mut [f32]) {
    let mut tmp = [0f32; KC];
    let groups = n.div_ceil(MR);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let slice = &mut apack[k0 * groups * MR..][..groups * MR * kc];
        for (g, dst) in slice.chunks_exact_mut(kc * MR).enumerate() {
            for i in 0..MR {
                let row = g * MR + i;
                if row < n {
                    let mut src = &x[row * k + k0..][..kc];
                    if let Some(span) = int8 {
                        tmp[..kc].copy_from_slice(src);
                        round_like_int8(&mut tmp[..kc], span);
                        src = &tmp[..kc];
                    }
                    for (kk, &v) in src.iter().enumerate() {
                        dst[kk * MR + i] = v;
                    }
                } else {
                    for kk in 0..kc {
                        dst[kk * MR + i] = 0.0;
                    }
                }
            }
        }
        k0 += kc;
    }
}

/// The offset of packed tile (`kb`, `s`) in a task's panel: rows `s * NR ..` of the
/// task's block, columns `kb * KC ..`, as `[kk][NR]`.
#[inline(always)]
fn tile(kb: usize, s: usize, strips: usize) -> usize {
    (kb * strips + s) * KC * NR
}

/// Packs weight rows `r0 .. r0 + nb` into `packed` as f32 tiles ([`tile`]), zero rows
/// beyond `nb`. Float weights are widened and transposed 8 x 8 straight from the map,
/// one column panel after another; q8_0 rows are dequantised whole into `rows8` first.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_b(w: &Matrix, k: usize, r0: usize, nb: usize, packed: &mut [f32], rows8: &mut [f32]) {
    if let MatrixData::Q8_0 { .. } = w.data {
        return pack_q8_rows(w, k, r0, nb, packed, rows8);
    }
    if let Some((dtype, tiles)) = w.data.q4() {
        return pack_q4_rows(dtype, tiles, k, r0, nb, packed, rows8);
    }
    for (c0, p) in w.panels() {
        match p.data {
            MatrixData::F32(d) => pack_rows::<WF32>(d.as_ptr(), p.cols, c0, r0, nb, packed),
            MatrixData::F16(d) => pack_rows::<WF16>(d.as_ptr(), p.cols, c0, r0, nb, packed),
            MatrixData::BF16(d) => pack_rows::<WBF16>(d.as_ptr(), p.cols, c0, r0, nb, packed),
            MatrixData::Q8_0 { .. } | MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => unreachable!("packed above"),
        }
    }
}

/// [`pack_b`] for `k`-long rows of `L` elements at `base`: columns `c0 .. c0 + k` of
/// the matrix.
#[inline(always)]
unsafe fn pack_rows<L: Widen>(base: *const L::E, k: usize, c0: usize, r0: usize, nb: usize, packed: &mut [f32]) {
    let strips = nb.div_ceil(NR);
    for s in 0..strips {
        for j0 in (0..NR).step_by(8) {
            let rows = nb.saturating_sub(s * NR + j0).min(8);
            // Rows past `nb` point at the last one; `pack_eight` reads only `rows`.
            let src = std::array::from_fn(|j| base.add((r0 + (s * NR + j0 + j).min(nb - 1)) * k));
            pack_eight::<L>(src, rows, k, c0, s, j0, strips, packed);
        }
    }
}

/// Rows `src[..rows]` (zeros after them), `k` long from matrix column `c0`, into
/// columns `j0 .. j0 + 8` of strip `s`'s tiles, transposed 8 x 8. Each row is read
/// front to back: eight streams the hardware prefetcher follows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pack_eight<L: Widen>(src: [*const L::E; 8], rows: usize, k: usize, c0: usize, s: usize, j0: usize, strips: usize, packed: &mut [f32]) {
    let k8 = k / 8 * 8;
    let mut c = 0;
    while c < k8 {
        if (c * std::mem::size_of::<L::E>()) % 64 == 0 {
            for p in &src[..rows] {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(c + PACK_PREFETCH / std::mem::size_of::<L::E>()) as *const i8);
            }
        }
        let v: [__m256; 8] = std::array::from_fn(|j| if j < rows { L::load8(src[j].add(c)) } else { _mm256_setzero_ps() });
        let t = transpose8(v);
        let g = c0 + c;
        let dst = packed.as_mut_ptr().add(tile(g / KC, s, strips) + (g % KC) * NR + j0);
        for (kk, tv) in t.iter().enumerate() {
            _mm256_store_ps(dst.add(kk * NR), *tv);
        }
        c += 8;
    }
    for c in k8..k {
        let g = c0 + c;
        let dst = packed.as_mut_ptr().add(tile(g / KC, s, strips) + (g % KC) * NR + j0);
        for (j, p) in src.iter().enumerate() {
            *dst.add(j) = if j < rows { L::one(*p.add(c)) } else { 0.0 };
        }
    }
}

/// [`pack_b`] for q8_0: eight rows at a time dequantised whole into `rows8`, then
/// packed from there.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q8_rows(w: &Matrix, k: usize, r0: usize, nb: usize, packed: &mut [f32], rows8: &mut [f32]) {
    let MatrixData::Q8_0 { quants, scales } = w.data else { unreachable!("pack_q8_rows takes q8_0") };
    let strips = nb.div_ceil(NR);
    for s in 0..strips {
        for j0 in (0..NR).step_by(8) {
            let rows = nb.saturating_sub(s * NR + j0).min(8);
            for j in 0..rows {
                q8_row_to_f32(quants, scales, k, r0 + s * NR + j0 + j, 0, &mut rows8[j * k..][..k]);
            }
            let src = std::array::from_fn(|j| rows8.as_ptr().add(j * k));
            pack_eight::<WF32>(src, rows, k, 0, s, j0, strips, packed);
        }
    }
}

/// [`pack_b`] for 4-bit weights: each group of eight rows dequantised whole into
/// `rows8` ([`dequantize_group`]), then packed from there. `r0` is a multiple of 8
/// ([`NB`] and [`NR`] are).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q4_rows(dtype: DType, tiles: &[u8], k: usize, r0: usize, nb: usize, packed: &mut [f32], rows8: &mut [f32]) {
    debug_assert!(r0.is_multiple_of(8));
    let strips = nb.div_ceil(NR);
    for s in 0..strips {
        for j0 in (0..NR).step_by(8) {
            let rows = nb.saturating_sub(s * NR + j0).min(8);
            if rows == 0 {
                continue;
            }
            dequantize_group(dtype, tiles, k, (r0 + s * NR + j0) / 8, 0, k, &mut rows8[..8 * k]);
            let src = std::array::from_fn(|j| rows8.as_ptr().add(j * k));
            pack_eight::<WF32>(src, rows, k, 0, s, j0, strips, packed);
        }
    }
}

/// Every group of [`MR`] tokens against every packed strip, [`KC`] columns at a time,
/// on the AVX-512 kernel if `wide`: `y` points at this block's output row 0 of token
/// 0, token rows `ldy` apart.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sweep(apack: &[f32], packed: &[f32], n: usize, k: usize, nb: usize, y: *mut f32, ldy: usize, wide: bool) {
    let strips = nb.div_ceil(NR);
    let groups = n.div_ceil(MR);
    let mut k0 = 0;
    while k0 < k {
        let slice = Slice {
            a: apack.as_ptr().add(k0 * groups * MR),
            b: packed.as_ptr().add(tile(k0 / KC, 0, strips)),
            kc: KC.min(k - k0),
            acc: k0 > 0,
        };
        if wide {
            slice_avx512(&slice, n, nb, y, ldy);
        } else {
            slice_avx2(&slice, n, nb, y, ldy);
        }
        k0 += KC;
    }
}

/// One column slice of a sweep: `kc` columns of every token group (`a`, `[kc][MR]`
/// per group) and of every strip (`b`, `[kc][NR]` per strip, strips `KC * NR` apart);
/// `acc`: add into `Y` rather than write it.
struct Slice {
    a: *const f32,
    b: *const f32,
    kc: usize,
    acc: bool,
}

impl Slice {
    unsafe fn group(&self, g: usize) -> *const f32 {
        self.a.add(g * self.kc * MR)
    }
    unsafe fn strip(&self, s: usize) -> *const f32 {
        self.b.add(s * KC * NR)
    }
}

/// A slice on the 6 x 16 AVX2 kernel. A group's slice of X stays in L1 while the
/// block's weight tiles stream past it from L2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn slice_avx2(sl: &Slice, n: usize, nb: usize, y: *mut f32, ldy: usize) {
    for g in 0..n.div_ceil(MR) {
        let mr = MR.min(n - g * MR);
        for s in 0..nb.div_ceil(NR) {
            let valid = NR.min(nb - s * NR);
            kernel(sl.kc, sl.group(g), sl.strip(s), y.add(g * MR * ldy + s * NR), ldy, mr, valid, sl.acc);
        }
    }
}

/// A slice with 512-bit registers: two groups of tokens (12) by two strips (32
/// outputs) per micro-kernel call, 24 accumulators of the 32 registers. Twice the
/// outputs per loaded value of the 256-bit kernel, and half the instructions per FMA,
/// which keeps both FMA pipes fed. Odd leftovers take the narrower kernels. Token
/// groups outside, strips inside: a pair of groups' slice of X (24 KiB) stays in L1
/// while the block's weight tiles (256 KiB) stream from L2, so X is read from beyond
/// L2 once per slice rather than once per pair of strips.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn slice_avx512(sl: &Slice, n: usize, nb: usize, y: *mut f32, ldy: usize) {
    let (strips, groups, kc, acc) = (nb.div_ceil(NR), n.div_ceil(MR), sl.kc, sl.acc);
    let mut g = 0;
    while g < groups {
        let mr = (2 * MR).min(n - g * MR);
        let a = if g + 1 < groups { [sl.group(g), sl.group(g + 1)] } else { [sl.group(g); 2] };
        let mut s = 0;
        while s + 2 <= strips {
            let valid = (2 * NR).min(nb - s * NR);
            let b = [sl.strip(s), sl.strip(s + 1)];
            let c = y.add(g * MR * ldy + s * NR);
            if g + 1 < groups {
                kernel_avx512::<2>(kc, a, b, c, ldy, mr, valid, acc);
            } else {
                kernel_avx512::<1>(kc, a, b, c, ldy, mr, valid, acc);
            }
            s += 2;
        }
        if s < strips {
            let valid = NR.min(nb - s * NR);
            for gg in g..(g + 2).min(groups) {
                let mr = MR.min(n - gg * MR);
                kernel(kc, sl.group(gg), sl.strip(s), y.add(gg * MR * ldy + s * NR), ldy, mr, valid, acc);
            }
        }
        g += 2;
    }
}

/// Rows of `v` become columns.
#[inline(always)]
pub(super) unsafe fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// `C[mr x valid] (+)= A[kc x MR]^T B[kc x NR]`: A and B packed, C rows `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    valid: usize,
    acc: bool,
) {
    let mut rows = [[_mm256_setzero_ps(); 2]; MR];
    for kk in 0..kc {
        let b0 = _mm256_load_ps(b.add(kk * NR));
        let b1 = _mm256_load_ps(b.add(kk * NR + 8));
        for (i, r) in rows.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(kk * MR + i));
            r[0] = _mm256_fmadd_ps(av, b0, r[0]);
            r[1] = _mm256_fmadd_ps(av, b1, r[1]);
        }
    }
    store_tile(&rows, c, ldc, mr, valid, acc);
}

/// `C[mr x valid] (+)= A^T [b0 | b1]` for `G` groups of [`MR`] packed tokens (`a[g]`,
/// `[kc][MR]` each) and two packed strips (`b0`, `b1`, `[kc][NR]` each); `mr <= G * MR`,
/// `valid <= 2 * NR`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn kernel_avx512<const G: usize>(
    kc: usize,
    a: [*const f32; 2],
    b: [*const f32; 2],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    valid: usize,
    acc: bool,
) {
    let mut rows = [[_mm512_setzero_ps(); 2]; 12];
    for kk in 0..kc {
        let b0 = _mm512_load_ps(b[0].add(kk * NR));
        let b1 = _mm512_load_ps(b[1].add(kk * NR));
        for g in 0..G {
            let ak = a[g].add(kk * MR);
            for i in 0..MR {
                let av = _mm512_set1_ps(*ak.add(i));
                let r = &mut rows[g * MR + i];
                r[0] = _mm512_fmadd_ps(av, b0, r[0]);
                r[1] = _mm512_fmadd_ps(av, b1, r[1]);
            }
        }
    }
    let lanes = |v: usize| -> __mmask16 { if v >= 16 { 0xffff } else { ((1u32 << v) - 1) as __mmask16 } };
    let (m0, m1) = (lanes(valid), lanes(valid.saturating_sub(NR)));
    for (i, [lo, hi]) in rows.iter().enumerate().take(mr.min(G * MR)) {
        let ci = c.add(i * ldc);
        let (mut lo, mut hi) = (*lo, *hi);
        if acc {
            lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(m0, ci));
            hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(m1, ci.add(NR)));
        }
        _mm512_mask_storeu_ps(ci, m0, lo);
        _mm512_mask_storeu_ps(ci.add(NR), m1, hi);
    }
}

/// Writes (`acc`: adds) the first `mr` rows of a micro-kernel's `rows x NR` result into
/// `C` (rows `ldc` apart), only the first `valid` columns of each.
#[inline(always)]
pub(super) unsafe fn store_tile(rows: &[[__m256; 2]], c: *mut f32, ldc: usize, mr: usize, valid: usize, acc: bool) {
    for (i, &[mut lo, mut hi]) in rows.iter().enumerate().take(mr) {
        let ci = c.add(i * ldc);
        if valid == NR {
            if acc {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(ci));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(ci.add(8)));
            }
            _mm256_storeu_ps(ci, lo);
            _mm256_storeu_ps(ci.add(8), hi);
        } else {
            let mut t = [0f32; NR];
            _mm256_storeu_ps(t.as_mut_ptr(), lo);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), hi);
            for (j, &v) in t[..valid].iter().enumerate() {
                let p = ci.add(j);
                *p = if acc { *p + v } else { v };
            }
        }
    }
}
