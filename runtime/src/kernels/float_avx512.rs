//! Float weights (f32, f16, bf16) in decode batches on AVX-512 F: the next token of
//! each of a few sequences in one pass over the weights (`super::matmul_decode`). Every
//! `unsafe fn` here may only run where `super::avx512_available` holds.
//!
//! The AVX2 pass (`avx2::matmul_decode`) reads one weight row at a time and every
//! token's activations for each 16 columns: 2 weight loads and 8 activation loads for 8
//! FMAs at 4 tokens, the activations re-read from L2 for every row. That made a
//! decode batch of 4 bf16 tokens cost 3x one token's time on the 1B: the arithmetic,
//! not the weights, set its pace. Here [`ROWS`] rows are read together, so each
//! activation load (a 512-bit register, 16 columns of one token) feeds [`ROWS`] FMAs
//! and each weight load up to 4 tokens' FMAs: 8 loads for 16 FMAs, 16 accumulators in
//! the 32 registers AVX-512 gives. Five to eight tokens ([`FEW`]) take three rows at a
//! time (24 accumulators) in one pass: on Sapphire Rapids with the weights in DRAM
//! (kernels bench, 131072 x 2048, 2 threads) a batch of 8 cost 1.36-1.62 (bf16),
//! 1.21-1.28 (f32) of one token against 1.68-1.73 and 1.48-1.51 in two passes of four
//! (the second read from L2 while the memory idled); with a matrix that fits in L3 the
//! two passes were faster (2.22 against 2.49 for bf16), but a model's weights do not.
//! Eight tokens' packed activations of a 2048-column row (64 KiB) overflow L1; taking
//! 1024 columns at a time over all the rows (accumulators parked between chunks, the
//! same sums) measured 1.56-1.60 of one token on the 1B against 1.58-1.62: not kept.
//!
//! Measured on Zen 4 (kernels bench, 2 threads; the AVX2 pass's figures in brackets):
//! a batch of 4 tokens costs 1.03-1.14 (f32, [1.95]), 1.07-1.31 (f16, [3.54]) and
//! 0.67-1.01 (bf16, [2.37]) of one token's AVX2 matvec, 8 tokens 1.29-1.58, 1.56-2.19
//! and 1.20-1.85 (docs/PERFORMANCE.md, "Float decode on AVX-512 F"). One token alone runs this kernel too (`super::matvec_with`):
//! the 1B's bf16 decode step went from 0.54 to 0.77 of a stream of its weights at 58
//! GB/s (`model_matvec`, 40 rounds each), the AVX2 kernel's 16-bit widening shuffles
//! having held it back.
//!
//! Each (row, token) sum has one accumulator of 16 lanes, summed over the columns in
//! order (the last `cols % 16` masked), reduced once, then added panel by panel: the
//! same operations whatever the batch size, the token's place in it or the other
//! tokens, so a sequence's numbers do not depend on its neighbours (one token alone
//! runs this kernel too).

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::float_decode_pass;
use super::matrix::{Matrix, MatrixData};
use super::tasks::{min_rows_per_block, rows_per_sub_block, with_local};

/// Weight rows read together by one call of [`rows_block`] (for up to four tokens).
const ROWS: usize = 4;

/// Tokens a pass over the weights takes at once.
const FEW: usize = 8;

/// Weights a sub-block of a decode batch covers: a quarter of a 1 MiB L2 (Zen 4;
/// Sapphire Rapids has 2 MiB), so its rows stay cached while every group of [`FEW`]
/// tokens passes over them.
const SUB_BYTES: usize = 256 << 10;

/// How far ahead in its own row (bytes) [`rows_block`] fetches each line into L1,
/// besides the next block's line into L2. With the L2 fetch alone the loads waited on
/// it: on Sapphire Rapids (the 1B's decode steps, 2 threads, memory at 29-31 GB/s,
/// `decode_floor`, alternating in one run) bf16 went from 1.07-1.09 of the floor to
/// 1.00-1.01, f16 from 1.05 to 0.99 and f32 from 1.01-1.02 to 0.97-0.98; 0.5 and 1.5
/// KiB were 0.01-0.03 behind, and the L2 fetch two blocks on instead of one level.
const ROW_PREFETCH: usize = 1024;

/// How one stored element type widens to f32, sixteen at a time.
trait Widen16 {
    type E: Copy;
    unsafe fn load16(p: *const Self::E) -> __m512;
    /// The first lanes of `mask` from `p`, zeros in the others (which are not read).
    unsafe fn load_masked(p: *const Self::E, mask: __mmask16) -> __m512;
}

struct F32;
struct F16;
struct BF16;

impl Widen16 for F32 {
    type E = f32;
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, p)
    }
}

impl Widen16 for F16 {
    type E = u16;
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const u16, mask: __mmask16) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16))
    }
}

impl Widen16 for BF16 {
    type E = u16;
    /// A bf16 value is the top half of its f32.
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const u16, mask: __mmask16) -> __m512 {
        let w = _mm256_maskz_loadu_epi16(mask, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(w)))
    }
}

thread_local! {
    /// The calling thread's tokens packed in groups of [`FEW`]; only ever grows.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[t] = W x[t]` for a decode batch of `n` float tokens (`x` is `n x cols`, `y` is
/// `n x rows`). The threads claim blocks of rows as a matvec does; each block is taken
/// in sub-blocks that stay in L2 ([`SUB_BYTES`]), and each sub-block's rows are read
/// from memory once, for the first [`FEW`] tokens, and from L2 for the others.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL and AVX2/FMA/F16C; `w` is a checked f32, f16 or
/// bf16 matrix, `x` holds `n * w.cols` values and `y` `n * w.rows`.
pub(super) unsafe fn matmul_decode(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let min = min_rows_per_block(w.row_bytes(), ROWS);
    let sub = rows_per_sub_block(w.row_bytes(), ROWS, SUB_BYTES);
    let rows = w.rows;
    with_local(&PACKED, |packed| {
        float_decode_pass(w, x, n, y, packed, min, ROWS, sub, FEW, |p, a, len, m, x, y, acc| {
            // SAFETY: the caller vouches for the CPU and the lengths; the panel holds
            // `rows` whole rows of `p.cols`, `x` the group's `m` packed tokens, and
            // `float_decode_pass` gives this call rows `a .. a + len` (within `rows`)
            // alone, for every token.
            unsafe {
                match p.data {
                    MatrixData::F32(d) => rows_few::<F32>(d.as_ptr(), p.cols, a, len, m, x, y, rows, acc),
                    MatrixData::F16(d) => rows_few::<F16>(d.as_ptr(), p.cols, a, len, m, x, y, rows, acc),
                    MatrixData::BF16(d) => rows_few::<BF16>(d.as_ptr(), p.cols, a, len, m, x, y, rows, acc),
                    _ => unreachable!("the dispatch sends float matrices here"),
                }
            }
        })
    })
}

/// Rows `r0 .. r0 + len` for `n` (1 to `avx2::FEW`) tokens: [`ROWS`] at a time, then the rest
/// one by one. Here the target features are on, so the kernels inline into it.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_few<L: Widen16>(w: *const L::E, cols: usize, r0: usize, len: usize, n: usize, x: *const f32, y: *mut f32, ldy: usize, acc: bool) {
    match n {
        1 => rows_n::<L, ROWS, 1>(w, cols, r0, len, x, y, ldy, acc),
        2 => rows_n::<L, ROWS, 2>(w, cols, r0, len, x, y, ldy, acc),
        3 => rows_n::<L, ROWS, 3>(w, cols, r0, len, x, y, ldy, acc),
        4 => rows_n::<L, ROWS, 4>(w, cols, r0, len, x, y, ldy, acc),
        5 => rows_n::<L, 3, 5>(w, cols, r0, len, x, y, ldy, acc),
        6 => rows_n::<L, 3, 6>(w, cols, r0, len, x, y, ldy, acc),
        7 => rows_n::<L, 3, 7>(w, cols, r0, len, x, y, ldy, acc),
        _ => rows_n::<L, 3, 8>(w, cols, r0, len, x, y, ldy, acc),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_n<L: Widen16, const R: usize, const N: usize>(w: *const L::E, cols: usize, r0: usize, len: usize, x: *const f32, y: *mut f32, ldy: usize, acc: bool) {
    let end = r0 + len;
    let mut r = r0;
    while r + R <= end {
        rows_block::<L, R, N>(w, cols, r, x, y, ldy, acc);
        r += R;
    }
    while r < end {
        rows_block::<L, 1, N>(w, cols, r, x, y, ldy, acc);
        r += 1;
    }
}

/// `y[t][r + i] = W[r + i] . x[t]` (`+=` with `acc`) for `R` rows and `N` tokens, `x`
/// packed by `avx2::pack_few`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // `a[i][t]`: the register tile
#[inline(always)]
unsafe fn rows_block<L: Widen16, const R: usize, const N: usize>(
    w: *const L::E,
    cols: usize,
    r: usize,
    x: *const f32,
    y: *mut f32,
    ldy: usize,
    acc: bool,
) {
    let p: [*const L::E; R] = std::array::from_fn(|i| w.add((r + i) * cols));
    let mut a = [[_mm512_setzero_ps(); N]; R];
    let whole = cols / 16 * 16;
    let mut c = 0;
    while c < whole {
        if (c * std::mem::size_of::<L::E>()) % 64 == 0 {
            // The same line of the next block's rows (`R` rows on), into L2 (the rows
            // are read side by side, so the stream after a row is a row the block
            // already reads), and each row's own line `ROW_PREFETCH` ahead into L1.
            for pi in p {
                _mm_prefetch::<_MM_HINT_T1>(pi.wrapping_add(c + R * cols) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>((pi.wrapping_add(c) as *const i8).wrapping_add(ROW_PREFETCH));
            }
        }
        let ws: [__m512; R] = std::array::from_fn(|i| L::load16(p[i].add(c)));
        let xc = x.add(c * N);
        for t in 0..N {
            let xt = _mm512_loadu_ps(xc.add(t * 16));
            for i in 0..R {
                a[i][t] = _mm512_fmadd_ps(ws[i], xt, a[i][t]);
            }
        }
        c += 16;
    }
    if whole < cols {
        // `pack_few` lays the last `cols - whole` columns out token by token.
        let tail = cols - whole;
        let mask = ((1u32 << tail) - 1) as __mmask16;
        let ws: [__m512; R] = std::array::from_fn(|i| L::load_masked(p[i].add(whole), mask));
        for t in 0..N {
            let xt = _mm512_maskz_loadu_ps(mask, x.add(whole * N + t * tail));
            for i in 0..R {
                a[i][t] = _mm512_fmadd_ps(ws[i], xt, a[i][t]);
            }
        }
    }
    for (i, ai) in a.iter().enumerate() {
        for (t, &at) in ai.iter().enumerate() {
            let s = _mm512_reduce_add_ps(at);
            let out = y.add(t * ldy + r + i);
            *out = if acc { *out + s } else { s };
        }
    }
}
