//! `Y = X W^T` for prompt batches on AMX tiles ([`super::amx`]) with `tdpbf16ps`:
//! bf16 weights as they are, q8_0, q4_0 and q4_k weights dequantised to bf16 as each
//! task packs them, and the activations rounded to bf16. f32 and f16 weights keep
//! their exact FMA GEMM.
//!
//! Why the quantised types go through bf16 rather than `tdpbssd` on int8: their
//! scales change every 32 columns, on both sides (the activations are scaled per
//! block too), so an int8 product could run only 32 columns deep before its 16 x 16
//! int32 result had to leave the tiles to be converted and scaled on the vector
//! units: 16 rows of convert, multiply and add per 16-cycle tile product, which keeps
//! the vector units three times longer than the matrix unit. A bf16 tile product
//! runs the whole panel deep, and the dequantisation is paid once per task for all
//! the tokens. The rounding is the lesser for it: bf16 keeps 8 significant bits of
//! every activation, int8 per block 7 of the block's largest; each dequantised weight
//! moves by at most 2^-9 of itself, under a tenth of q8_0's own step.
//!
//! The products are taken transposed, `Y^T = W X^T`: the weights are the `A`
//! operand (16 rows of 32 bf16 per tile, as a row holds them) and the activations the
//! `B` operand, packed once per call in the pair order the instruction reads (a tile
//! per 16 tokens and 32 columns: `[pair][token][2]`, 1 KiB), which costs a pass over
//! `X` only.
//!
//! What decides the speed is the tile loads. Each tile product needs one in a 2 x 2
//! block (four accumulators, two weight and two token tiles: eight registers, the
//! most reuse there is), and a load of a tile whose rows straddle cache lines takes
//! ~45 cycles against ~8 aligned (one Sapphire Rapids core, 1 KiB from L1): every
//! tile here is 64-byte aligned. Measured in a bare 2 x 2 loop on one core: 2617
//! GFLOP/s from L1, ~2000 from L2, against a peak of ~3200 with no loads.
//!
//! Each parallel task owns a block of up to [`task_rows`] weight rows. It sweeps the
//! columns one slice at a time (up to [`SLICE_COLS`], fewer for more than 128 tokens:
//! [`slice_cols`]), so that the tiles that meet stay in L1 and L2,
//! and within a slice one pair of weight strips (32 rows) at a time against every
//! pair of token tiles. A pair's weights are packed into whole tiles (`[strip]
//! [chunk][16 rows][32]`, bf16 copied, quantised weights dequantised and rounded)
//! while the pair before it is being multiplied, a row at a time between tile
//! products ([`Packer`]): the copies and the vector work run beside the matrix unit.
//! Results go to a per-task f32 buffer between slices and, after the last one,
//! transposed in registers, to `Y`; or, for the MLP ([`mlp`]), where a gate strip and
//! its up strip make a pair, through the SwiGLU into the down product's packed tokens.
//!
//! The packing is what the loop pays most for beside its own tile loads: with random
//! nonzero bf16 left in the buffers and no unit packed (wrong results, timing only), a
//! 512-token q8_0 prompt of the 1B ran 1.16-1.24x as fast; with units copied from two
//! rows that stay in L1, 1.05-1.15x (`prompt_floor`, Sapphire Rapids, stops 34 and 35):
//! the weights' trip from L2 is part of the cost, the loads and conversions between the
//! tile products the rest. (Builds that left zeros there measured 1.25-1.35x, but the
//! tile unit runs about a fifth faster when an operand is zero: docs/PERFORMANCE.md,
//! "Stop 35".) bf16's whole strips are therefore not copied: the first token pair's
//! block loads their tiles from the weight rows and stores them into the buffer
//! ([`tile_source`]); that block pays for the rows' 4 KiB stride, which a bf16 layout
//! in tile order written by `olmoc` would not. q8_0 and the 4-bit types need their
//! dequantisation whatever the layout.
//!
//! Loading bf16 tiles straight from the weight rows (a 4 KiB stride) measured as fast
//! as packed ones from L2 in the bare loop, and no faster in the model, so every type
//! takes the one packed path. Software prefetch of the next chunks' tiles, which paid
//! while the tiles were misaligned, measured neutral to 15% slower once they were not.

use std::cell::RefCell;

use super::amx::{self, TileConfig};
use super::matrix::{Matrix, MatrixData};
use super::q4_avx2::{block_scales, q4_k_scales};
use super::tasks::{for_each_row_block, for_each_task, grow_huge, with_local, SendPtr};
use crate::model::buffer::Buffer;

/// Rows of a tile: weight rows per strip, tokens per token tile.
const TILE: usize = 16;
/// bf16 columns per tile row (64 bytes).
const CHUNK: usize = 32;
/// u16 elements of one packed activation tile.
const ACT_TILE: usize = TILE * CHUNK;

/// u16 elements from one token tile's packed activations to the next's: a tile per 32
/// columns, rounded up to an odd multiple of 16 tiles (16 KiB). A slice of 512 tokens
/// reads 16 tiles of each of its 32 token tiles; at a power-of-two stride (64 KiB for
/// 2048 columns, 256 KiB for 8192) those parts all fall on the same one or two
/// sixteen-KiB stretches of the L2's sets (a 2 MiB 16-way L2 repeats every 128 KiB),
/// at an odd multiple of 16 KiB on all eight of them. Measured with the scratch on 2 MiB
/// pages (1B q8_0, 512 tokens, `prompt_floor`, 3 alternating rounds): 516-529 ms at the
/// power-of-two stride, 479-482 with one tile more, 447-451 like this.
fn token_tile_stride(chunks: usize) -> usize {
    let mut s = chunks.next_multiple_of(16);
    if (s / 16).is_multiple_of(2) {
        s += 16;
    }
    s * ACT_TILE
}
/// Below this many tokens the AVX-512 kernels take the batch (bf16: [`BF16_MIN_BATCH`]).
const MIN_BATCH: usize = 8;
/// bf16 weights come here from fewer tokens: below [`MIN_BATCH`] they would take the
/// exact float GEMM, twice as slow as the tiles. The 1B bf16's prompt chunks
/// (`prefill_chunks`, 2 threads, Sapphire Rapids), alone and eight read together, ms
/// on the GEMM against here: 5 tokens 182 / 96 and 401 / 130, 7 tokens 215 / 103 and
/// 489 / 142. Up to 4 tokens the decode kernel runs them (`super::AVX512_FLOAT_DECODE`),
/// which alone is the faster (4 tokens 87-93 ms against 96-103, `prompt_floor`).
const BF16_MIN_BATCH: usize = 5;

/// The fewest tokens [`matmul`] takes for `w`.
pub fn min_batch(w: &Matrix) -> usize {
    match w.data {
        MatrixData::BF16(_) => BF16_MIN_BATCH,
        _ => MIN_BATCH,
    }
}
/// Columns of a slice of the sweep at most (a float matrix's panel; see
/// [`slice_cols`]).
const SLICE_COLS: usize = 2048;
/// Bytes of every token's part of a slice at most (128 tokens of 2048 columns; 256
/// columns, the least, from 1024 tokens on). Narrow slices keep a strip pair's tiles
/// of the slice (16 KiB at 256 columns) in L1 while every token pair meets them, and
/// fewer rows per task ([`task_rows`]) keep its results between slices in L2; wide ones load
/// and store those results fewer times. The token tiles and the results are loaded
/// with the hint that they are not read again soon ([`amx::load_once`]), which keeps
/// them from pushing the strip pair's tiles out of L1: with it, 512 columns at 512
/// tokens beat 256 (1B, Sapphire Rapids, 2 threads, `prompt_floor`, alternating:
/// q8_0 1006-1034 -> 1027-1092 tok/s, bf16 960-1015 -> 1012-1033), where without it
/// they had lost (788-833 against 829-907, bf16).
const SLICE_ACT_BYTES: usize = 1 << 19;
/// Results larger than this go past the caches (non-temporal stores). Smaller ones,
/// which the norms, RoPE and attention read right after, are stored as usual, so that
/// those passes find them in the caches: 1B q8_0, 512 tokens (qkv 12 MiB, o_proj and
/// down 4 MiB), Sapphire Rapids, 3 rounds in one run, a prompt's qkv product 77.0 ->
/// 80.1 ms (its stores now read each line first) but the q/k norms 10.4-10.9 -> 6.7-6.8,
/// the two residual norms 5.3-5.5 -> 3.2-3.4 each and attention 44.6-45.4 -> 42.8-43.2:
/// 458.8-460.4 -> 453.8-455.3 ms in all. (Streaming only qkv's 12 MiB kept the norms'
/// slow reads: 458.8-461.0.)
const STREAM_BYTES: usize = 32 << 20;
/// Weight rows per task at most for `n` tokens (a multiple of 2 [`TILE`]s; the MLP's
/// tasks take half as many gate rows, each beside its up row; see also
/// [`SLICE_ACT_BYTES`]). Each task packs its first strip pair before any product can
/// run and configures the tiles once, so fewer, larger tasks pay that less often; the
/// threads still get several tasks each (the 1B's smallest matrices, 2048 rows, make 8
/// tasks at 256 rows, 2 at 1024). 1B, 2 threads, Sapphire Rapids, `prompt_floor`, 3
/// alternating rounds, ms against 128 rows: 512 tokens q8_0 458.6-464.1 against
/// 475.1-477.8 (384, 512 and 1024 rows level with 128), bf16 440.2-447.4 against
/// 456.4-459.0, q4_k 461.3-470.1 against 478.9-485.6; 2048 tokens (batches of 512) q8_0
/// 2052-2066 against 2098-2114; 64 tokens at 1024 rows q8_0 110.7-113.5 against
/// 115.1-119.8, bf16 123.8-127.8 against 130.3-135.3, q4_k level; 128 tokens q8_0
/// 150.2-152.6 against 156.4-159.7; at 256 tokens 128 and 256 rows level, 512 and 1024
/// 3-5% slower.
fn task_rows(n: usize) -> usize {
    if n <= 128 {
        1024
    } else {
        256
    }
}
/// u16 elements of one strip pair's packed slice: 32 rows of [`SLICE_COLS`].
const PAIR_ELEMS: usize = 2 * TILE * SLICE_COLS;

/// Tile numbers: accumulators C (strip a, token tile b) in 0-3, weights in 4-5,
/// activations in 6-7.
fn config() -> TileConfig {
    TileConfig::new(&[4, 5], &[6, 7], 64)
}

/// Whether [`matmul`] takes `w`: bf16, q8_0, q4_0 or q4_k, and every panel a whole
/// number of tiles wide.
pub fn fits(w: &Matrix) -> bool {
    !matches!(w.data, MatrixData::F32(_) | MatrixData::F16(_))
        && w.cols.is_multiple_of(CHUNK)
        && (w.is_row_major() || (w.panel.is_multiple_of(CHUNK) && w.panel <= SLICE_COLS))
}

thread_local! {
    /// The calling thread's packed activations, grown to the largest call and reused.
    static ACTS: RefCell<Buffer<u16>> = RefCell::new(Buffer::default());
    /// The calling thread's SwiGLU tiles between [`mlp`]'s two products.
    static HIDDEN: RefCell<Buffer<u16>> = RefCell::new(Buffer::default());
}

/// `y = x W^T` for a `W` that [`fits`]: `x` is `n x w.cols`, `y` `n x w.rows`.
///
/// # Safety
/// [`amx::available`] and AVX2/FMA/F16C must be true; `w` must hold every row
/// (`Matrix::check`), `x` `n * w.cols` values and `y` `n * w.rows`.
pub unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    with_local(&ACTS, |acts| {
        let acts = pack(x, n, w.cols, acts);
        sweep(w, acts, n, Out::rows(y, n, w.rows));
    })
}

/// The MLP's two products with the SwiGLU between them, `y = silu(x G^T) * (x U^T)
/// D^T` for `gate_up` = `[G; U]` (`2 * down.cols` rows) and `down` that both [`fit`](fits)
/// and [`fit_together`]: `x` is `n x gate_up.cols`, `y` `n x down.rows`.
///
/// The SwiGLU is taken from the gate and up projections' result tiles as they leave
/// the tile registers, each task sweeping a gate strip beside its up strip, and goes
/// straight into the down product's activation tiles, rounded to bf16: the same bits
/// as [`matmul`] into `gate_up`'s rows, `avx2::swiglu` and [`matmul`] again, without
/// the `n x 2 * down.cols` results written to memory, read back and packed (for the
/// 1B at 512 tokens, 32 MiB each way a layer).
///
/// # Safety
/// As [`matmul`], for both matrices; `x` must hold `n * gate_up.cols` values and `y`
/// `n * down.rows`.
pub unsafe fn mlp(gate_up: &Matrix, down: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let half = down.cols;
    with_local(&ACTS, |acts| {
        let acts = pack(x, n, gate_up.cols, acts);
        with_local(&HIDDEN, |hidden| {
            let hidden = grow_huge(hidden, n.div_ceil(TILE) * token_tile_stride(half / CHUNK));
            sweep(gate_up, acts, n, Out::Swiglu { tiles: SendPtr(hidden.as_mut_ptr()), half });
            sweep(down, hidden, n, Out::rows(y, n, down.rows));
        })
    })
}

/// Whether [`mlp`] takes `gate_up` and `down` (each of which [`fits`]): `gate_up` a gate
/// and an up projection of `down.cols` rows each, which is a multiple of 32 (every gate
/// strip whole, half an activation tile).
pub fn fit_together(gate_up: &Matrix, down: &Matrix) -> bool {
    gate_up.rows == 2 * down.cols && down.cols.is_multiple_of(2 * TILE)
}

/// Where a sweep's results go.
#[derive(Clone, Copy)]
enum Out {
    /// Token `t`'s result for row `r` at `y[t * ldy + r]`; with `stream`, past the
    /// caches ([`Out::rows`]).
    Rows { y: SendPtr<f32>, ldy: usize, stream: bool },
    /// The rows are a gate projection's (the first `half`) and an up projection's (the
    /// rest): token `t`'s `silu(gate[r]) * up[r]` goes, rounded to bf16, into the
    /// activation tiles (`[token tile][chunk][pair][token][2]`) of a product `half`
    /// columns deep.
    Swiglu { tiles: SendPtr<u16>, half: usize },
}

impl Out {
    /// Token `t`'s results into `y[t * ldy ..]` for `n` tokens, with non-temporal
    /// stores where they are more than [`STREAM_BYTES`].
    fn rows(y: &mut [f32], n: usize, ldy: usize) -> Out {
        Out::Rows { y: SendPtr(y.as_mut_ptr()), ldy, stream: n * ldy * 4 > STREAM_BYTES }
    }
}

/// `x` (`n` rows of `k`) packed into the calling thread's activation tiles (see
/// [`pack_tokens`]), `n / 16` token tiles of `k / 32` tiles each.
fn pack<'a>(x: &[f32], n: usize, k: usize, acts: &'a mut Buffer<u16>) -> &'a [u16] {
    let chunks = k / CHUNK;
    // Every tile on a 64-byte boundary (the map is page-aligned): a tile load whose rows
    // straddle cache lines runs at a sixth of the speed (Sapphire Rapids, 1 KiB from
    // L1: ~45 cycles against ~8).
    let acts = grow_huge(acts, n.div_ceil(TILE) * token_tile_stride(chunks));
    let ap = SendPtr(acts.as_mut_ptr());
    for_each_task(n.div_ceil(TILE), |tt| {
        // SAFETY: token tile `tt` alone writes its own `chunks` tiles.
        let dst = unsafe { std::slice::from_raw_parts_mut(ap.get().add(tt * token_tile_stride(chunks)), chunks * ACT_TILE) };
        pack_tokens(x, n, k, tt, dst);
    });
    acts
}

/// `w`'s products with the packed activations of `n` tokens (`acts`, `w.cols` deep),
/// in parallel tasks of up to [`task_rows`] weight rows, the results to `out`.
///
/// # Safety
/// As [`matmul`]; `acts` must hold `n.div_ceil(16)` token tiles of `w.cols / 32`
/// tiles, and `out` room for every result it is to take.
unsafe fn sweep(w: &Matrix, acts: &[u16], n: usize, out: Out) {
    let token_tiles = n.div_ceil(TILE);
    assert!(acts.len() >= token_tiles * token_tile_stride(w.cols / CHUNK));
    // A task's rows: weight rows, or gate rows with their up rows beside them.
    let (rows, per_row) = match out {
        Out::Rows { .. } => (w.rows, 1),
        Out::Swiglu { half, .. } => (half, 2),
    };
    let nb_max = (task_rows(n) / per_row).min(rows.next_multiple_of(2 * TILE / per_row));
    // Per task: two strip pairs' packed slices (the one in use, the next being
    // filled), two stagings of four result tiles (a block's, and the one before it
    // being written out) and the results between slices.
    let packed = 2 * PAIR_ELEMS;
    let stage = 2 * 4 * TILE * TILE;
    let partial = nb_max * per_row * token_tiles * TILE;
    let bytes = packed * 2 + (stage + partial) * 4;
    for_each_row_block(rows, nb_max, bytes, |r0, nb, scratch| {
        let (packed_bytes, rest) = scratch.split_at_mut(packed * 2);
        // SAFETY: `scratch` is 64-byte aligned and `packed * 2` a multiple of 64,
        // so both parts are aligned for their types.
        let (packed, rest) = unsafe {
            (
                std::slice::from_raw_parts_mut(packed_bytes.as_mut_ptr() as *mut u16, packed),
                std::slice::from_raw_parts_mut(rest.as_mut_ptr() as *mut f32, stage + partial),
            )
        };
        let (stage, partial) = rest.split_at_mut(stage);
        // SAFETY: as for `sweep`; this task alone writes the results of its rows
        // `r0 .. r0 + nb` (output rows of `y`, or the SwiGLU's columns) of each token.
        unsafe {
            amx::configure(&config());
            task(w, r0, nb, acts, n, packed, stage, partial, out);
            // The non-temporal stores of `store_transposed` are weakly ordered:
            // all of them visible before the task counts as done.
            std::arch::x86_64::_mm_sfence();
            amx::release();
        }
    });
}

/// Converts tokens `tt * 16 ..` of `x` to bf16 (rounded to nearest even, as
/// `half::bf16::from_f32` rounds) in the pair order of a `B` tile, one tile per 32
/// columns; tokens past `n` are zeros.
fn pack_tokens(x: &[f32], n: usize, k: usize, tt: usize, dst: &mut [u16]) {
    assert!(dst.len() >= k / CHUNK * ACT_TILE && x.len() >= n * k);
    let tokens = n.saturating_sub(tt * TILE).min(TILE);
    // SAFETY: AVX-512 F, BW and BF16 are present (`Kernels::Amx` needs them); the
    // tile's `tokens` rows of `k` values are in `x` and `dst` has a tile per 32
    // (asserted).
    unsafe { pack_tile(x.as_ptr().add(tt * TILE * k), tokens, k, dst.as_mut_ptr()) }
}

/// [`pack_tokens`] for `tokens` rows of `k` at `x`: per 32 columns, each token's 32
/// values become 16 bf16 pairs (one 32-bit lane each), and the 16 x 16 lanes are
/// transposed so that pair `p` of every token is row `p` of the tile (a scatter of
/// each token's pairs cost 4% of a prompt).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_tile(x: *const f32, tokens: usize, k: usize, dst: *mut u16) {
    use std::arch::x86_64::*;
    for ch in 0..k / CHUNK {
        let mut rows = [_mm512_setzero_ps(); TILE];
        for (t, row) in rows.iter_mut().enumerate().take(tokens) {
            let values = x.add(t * k + ch * CHUNK);
            *row = bf16_pairs(_mm512_loadu_ps(values), _mm512_loadu_ps(values.add(16)));
        }
        transpose16(&mut rows);
        let tile = dst.add(ch * ACT_TILE) as *mut f32;
        for (p, row) in rows.iter().enumerate() {
            _mm512_store_ps(tile.add(p * TILE), *row);
        }
    }
}

/// A gate strip's and its up strip's result tiles for 16 tokens (`[row][token]`, 16 x
/// 16 f32 each) as their SwiGLU's 16 columns of the next product's activation tile:
/// rows `2q` and `2q + 1` become the tile's pair row `q` (`dst`, 8 rows of 64 bytes),
/// each token's two values side by side ([`bf16_interleaved`]).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn swiglu_to_tiles(gate: *const f32, up: *const f32, dst: *mut u16) {
    use std::arch::x86_64::*;
    let row = |j: usize| swiglu16(_mm512_loadu_ps(gate.add(j * TILE)), _mm512_loadu_ps(up.add(j * TILE)));
    for q in 0..TILE / 2 {
        _mm512_storeu_si512(dst.add(q * 2 * TILE) as *mut __m512i, bf16_interleaved(row(2 * q), row(2 * q + 1)));
    }
}

/// `silu(g) * u` in 16 lanes with `avx2::swiglu`'s operations lane by lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu16(g: std::arch::x86_64::__m512, u: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let e = super::exp::exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    let silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e));
    _mm512_mul_ps(silu, u)
}

/// 32 f32 (`lo`, then `hi`) rounded to bf16 as 16 pairs, one per 32-bit lane: value
/// `2j` in the low half of lane `j`, `2j + 1` in the high half. One `vcvtne2ps2bf16`:
/// to nearest, ties to even, as [`to_bf16`], but denormal inputs read as zero (an
/// activation under 2^-126 loses under 2^-126 of a product), for a third of the work
/// of rounding the bits and permuting the halves together.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn bf16_pairs(lo: std::arch::x86_64::__m512, hi: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Two rows of 16 f32 (`even`, `odd`) rounded to bf16 as [`bf16_pairs`] rounds and
/// interleaved into one pair row of a `B` tile: lane `t` holds `even[t]` in its low
/// half and `odd[t]` in its high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn bf16_interleaved(even: std::arch::x86_64::__m512, odd: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // Word 2t from the low half (`even`), word 2t + 1 from the high half (`odd`).
    let order: [u16; 2 * TILE] = std::array::from_fn(|i| (i / 2 + i % 2 * TILE) as u16);
    let halves = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd, even));
    _mm512_permutexvar_epi16(_mm512_loadu_si512(order.as_ptr() as *const __m512i), halves)
}

/// Transposes 16 x 16 32-bit lanes in registers: lane `j` of row `i` becomes lane `i`
/// of row `j`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved, then pairs of pairs: u[4i + m], 128-bit lane l, holds
    // column 4l + m of rows 4i .. 4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a, b, c, d) = (r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
        let (ab_lo, ab_hi) = (_mm512_castps_pd(_mm512_unpacklo_ps(a, b)), _mm512_castps_pd(_mm512_unpackhi_ps(a, b)));
        let (cd_lo, cd_hi) = (_mm512_castps_pd(_mm512_unpacklo_ps(c, d)), _mm512_castps_pd(_mm512_unpackhi_ps(c, d)));
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(ab_lo, cd_lo));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(ab_lo, cd_lo));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(ab_hi, cd_hi));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(ab_hi, cd_hi));
    }
    // Then the lanes: column m + 4q gathers lane q of u[m], u[4 + m], u[8 + m], u[12 + m].
    for m in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
        let w0 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
        let w1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
        r[m] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        r[m + 4] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
        r[m + 8] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        r[m + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
    }
}

/// Sixteen f32 rounded to bf16 (to nearest, ties to even; NaNs stay NaNs), in the low
/// 16 bits of each 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn to_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
    let quiet = _mm512_srli_epi32::<16>(_mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000)));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_mask_mov_epi32(rounded, nan, quiet)
}

/// Columns of the slices of a sweep over `n` tokens: every token's part of a slice
/// (`n x width` bf16) at most [`SLICE_ACT_BYTES`] where that leaves at least 256
/// columns (a multiple of a 4-bit tile's).
fn slice_cols(n: usize) -> usize {
    (SLICE_ACT_BYTES / (2 * n.max(1)) / 256 * 256).clamp(256, SLICE_COLS)
}

/// The column slices of `w`'s sweep, `cut` columns wide at most: `(matrix, c, c0,
/// width)`, columns `c .. c + width` of `matrix` (a panel of a float matrix, else the
/// matrix), which are the full matrix's `c0 ..`.
fn slices<'a>(w: &'a Matrix<'a>, cut: usize) -> impl Iterator<Item = (Matrix<'a>, usize, usize, usize)> + 'a {
    w.panels().flat_map(move |(c0, panel)| {
        (0..panel.cols.div_ceil(cut)).map(move |i| {
            let c = i * cut;
            (panel, c, c0 + c, cut.min(panel.cols - c))
        })
    })
}

/// Rows `r0 .. r0 + nb` against every token (for [`Out::Swiglu`], gate rows and their
/// up rows, a gate strip and its up strip making a pair): column slices outside, then
/// pairs of weight strips, then pairs of token tiles. While a strip pair meets the
/// tokens, the next pair's weights are packed a row (q4: eight) at a time between its
/// tile products ([`Packer`]): the vector units and the loads from memory work under
/// the matrix unit's products instead of before them.
#[allow(clippy::too_many_arguments)]
unsafe fn task(w: &Matrix, r0: usize, nb: usize, acts: &[u16], n: usize, packed: &mut [u16], stage: &mut [f32], partial: &mut [f32], out: Out) {
    let chunks = w.cols / CHUNK;
    let act_stride = token_tile_stride(chunks);
    // Strip `s`'s first row of `w` and how many rows it has (at most 16).
    let strip = |s: usize| match out {
        Out::Rows { .. } => (r0 + s * TILE, TILE.min(nb - s * TILE)),
        Out::Swiglu { half, .. } => (r0 + s / 2 * TILE + s % 2 * half, TILE.min(nb - s / 2 * TILE)),
    };
    let strips = match out {
        Out::Rows { .. } => nb.div_ceil(TILE),
        Out::Swiglu { .. } => 2 * nb.div_ceil(TILE),
    };
    let pairs = strips.div_ceil(2);
    let token_tiles = n.div_ceil(TILE);
    let partial = partial.as_mut_ptr();
    // Pair `sp`'s strips; past the last strip, none.
    let rows_of = |sp: usize| [2 * sp, 2 * sp + 1].map(|s| if s < strips { strip(s) } else { (0, 0) });
    // The k-th pair of the sweep (counting across slices) is packed into bufs[k % 2];
    // the first pair of a slice is packed during the last pair of the slice before.
    let bufs = [packed.as_mut_ptr(), packed.as_mut_ptr().add(PAIR_ELEMS)];
    // The last slice's blocks end in one of two stagings; each block's results are
    // written out (to `y`, or through the SwiGLU into the next product's tiles) a
    // tile at a time between the next block's tile products, so that the vector work
    // runs beside the matrix unit instead of between its blocks. 1B q8_0, 512 tokens,
    // Sapphire Rapids, 3 alternating rounds: qkv 76.7-79.0 -> 75.6-76.1 ms a prompt,
    // o_proj 27.5-28.3 -> 27.1-27.3; the MLP, whose SwiGLU goes this way, level.
    let stage = stage.as_mut_ptr();
    let staged = |half: usize| stage.wrapping_add(half * 4 * TILE * TILE);
    let write_out = |e: &Epilogue, part: usize| {
        let tile = |i: usize| staged(e.half).add(i * TILE * TILE) as *const f32;
        match out {
            // Tile (ds, dt) holds [row][token]: transposed into `y`.
            Out::Rows { y, ldy, stream } => {
                let (ds, dt) = (part / 2, part % 2);
                if ds >= e.pair || dt >= e.tokens {
                    return;
                }
                let (row, rows_here) = strip(e.s + ds);
                let toks = TILE.min(n - (e.tt + dt) * TILE);
                store_transposed(tile(part), rows_here, toks, y.get().add((e.tt + dt) * TILE * ldy + row), ldy, stream);
            }
            // Tiles (0, dt) and (1, dt): token tile tt + dt's gate and up results for
            // SwiGLU columns `col ..`, half an activation tile.
            Out::Swiglu { tiles, half } => {
                let dt = part;
                if dt >= e.tokens {
                    return;
                }
                let col = strip(e.s).0;
                let at = tiles.get().add((e.tt + dt) * token_tile_stride(half / CHUNK) + col / CHUNK * ACT_TILE);
                swiglu_to_tiles(tile(dt), tile(2 + dt), at.add(col % CHUNK / 2 * 2 * TILE));
            }
        }
    };
    let parts = match out {
        Out::Rows { .. } => 4,
        Out::Swiglu { .. } => 2,
    };
    let mut pending: Option<Epilogue> = None;
    let mut half = 0;
    let mut k = 0;
    let mut sweep = slices(w, slice_cols(n)).peekable();
    while let Some((m, c, c0, width)) = sweep.next() {
        let depth = width / CHUNK;
        let following = sweep.peek().copied();
        let (first, last) = (c0 == 0, following.is_none());
        if first {
            Packer::new(m, c, width, rows_of(0), bufs[0]).finish();
        }
        for sp in 0..pairs {
            let s = 2 * sp;
            let pair = 2.min(strips - s);
            let into = bufs[(k + 1) % 2];
            let mut next = match following {
                _ if sp + 1 < pairs => Some(Packer::new(m, c, width, rows_of(sp + 1), into)),
                Some((m2, c2, _, width2)) => Some(Packer::new(m2, c2, width2, rows_of(0), into)),
                None => None,
            };
            if let Some(p) = &mut next {
                p.spread(token_tiles.div_ceil(2) * depth);
            }
            let a0 = bufs[k % 2] as *const u8;
            let a1 = a0.add(if pair == 2 { depth * ACT_TILE * 2 } else { 0 });
            // Strips whose tiles the first block reads from the rows (the packer left
            // them alone) and stores for the rest.
            let sources = rows_of(sp).map(|strip| tile_source(&m, c, strip));
            let mut tt = 0;
            while tt < token_tiles {
                let tokens = 2.min(token_tiles - tt);
                let src = if tt == 0 { sources } else { [None, None] };
                let b0 = acts.as_ptr().add(tt * act_stride + c0 / CHUNK * ACT_TILE) as *const u8;
                let b1 = b0.wrapping_add(act_stride * 2);
                // The four accumulators of strips s, s + 1 by token tiles tt, tt + 1
                // in `partial`: [strip][token tile][16 x 16].
                let acc = |ds: usize, dt: usize| partial.wrapping_add(((s + ds) * token_tiles + tt + dt) * TILE * TILE) as *mut u8;
                let accs = [acc(0, 0), acc(0, 1), acc(1, 0), acc(1, 1)];
                let outs = if last { [0, 1, 2, 3].map(|i| staged(half).add(i * TILE * TILE) as *mut u8) } else { accs };
                let mut side = || {
                    if let Some(p) = &mut next {
                        // SAFETY: as for `task`: the packer writes the buffer of the pair
                        // after this one, which no product reads until the next pair.
                        unsafe { p.tick() }
                    }
                    // The block before this one is done with the other staging.
                    if let Some(e) = &mut pending {
                        if e.done < parts {
                            write_out(e, e.done);
                            e.done += 1;
                        }
                    }
                };
                match (pair, tokens) {
                    (2, 2) => block::<true, true>(a0, a1, src, b0, b1, depth, first, accs, outs, &mut side),
                    (2, _) => block::<true, false>(a0, a1, src, b0, b1, depth, first, accs, outs, &mut side),
                    (_, 2) => block::<false, true>(a0, a1, src, b0, b1, depth, first, accs, outs, &mut side),
                    _ => block::<false, false>(a0, a1, src, b0, b1, depth, first, accs, outs, &mut side),
                }
                if last {
                    if let Some(e) = pending.take() {
                        (e.done..parts).for_each(|part| write_out(&e, part));
                    }
                    pending = Some(Epilogue { half, s, pair, tt, tokens, done: 0 });
                    half ^= 1;
                }
                tt += tokens;
            }
            if let Some(p) = &mut next {
                p.finish();
            }
            k += 1;
        }
    }
    if let Some(e) = pending {
        (e.done..parts).for_each(|part| write_out(&e, part));
    }
}

/// A block of the last slice whose results wait in staging `half` to be written out:
/// strips `s ..` (`pair` of them) by token tiles `tt ..` (`tokens`), `done` of its
/// parts (a tile, or for the SwiGLU a token tile's pair of tiles) written.
struct Epilogue {
    half: usize,
    s: usize,
    pair: usize,
    tt: usize,
    tokens: usize,
    done: usize,
}

/// A 16 x 16 result tile (`[row][token]`) into `y`: token `t`'s first `rows` values
/// at `y + t * ldy`, for the first `toks` tokens, transposed in registers (the
/// scalar transpose cost a fifth of the GEMM's time).
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(tile: *const f32, rows: usize, toks: usize, y: *mut f32, ldy: usize, stream: bool) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); TILE];
    for (j, row) in r.iter_mut().enumerate() {
        *row = _mm512_loadu_ps(tile.add(TILE * j));
    }
    transpose16(&mut r);
    // With `stream`, whole aligned lines go out as non-temporal stores: an ordinary
    // store first reads each line it misses, and the stores stalled on those reads when
    // gate_up's 32 MiB came this way too (`prompt_floor`, 1B bf16, 2 threads, Sapphire
    // Rapids, alternating builds: 512 tokens 501-506 -> 580-582 tok/s, 2048 tokens 402
    // -> 442; q8_0 at 512 505 -> 535). Since [`mlp`] keeps those in the tiles, only
    // results over [`STREAM_BYTES`] stream. (The task's `sfence` orders them before the
    // results are read.)
    if stream && rows >= TILE && (y as usize).is_multiple_of(64) && ldy.is_multiple_of(TILE) {
        for (t, column) in r.iter().enumerate().take(toks) {
            _mm512_stream_ps(y.add(t * ldy), *column);
        }
        return;
    }
    let mask: __mmask16 = if rows >= TILE { !0 } else { (1 << rows) - 1 };
    for (t, column) in r.iter().enumerate().take(toks) {
        _mm512_mask_storeu_ps(y.add(t * ldy), mask, *column);
    }
}

/// Packs one strip pair's slice of weights, `[strip][chunk][16 rows][32]` bf16 with
/// zero rows past the matrix's, one unit (a row; for 4-bit weights a group of eight)
/// per call of [`Packer::step`], so that the work can be spread between tile products.
struct Packer<'a> {
    w: Matrix<'a>,
    /// Columns `c .. c + width` of `w`.
    c: usize,
    width: usize,
    /// Each strip's first row of `w` and how many of its rows exist (at most 16).
    strips: [(usize, usize); 2],
    dst: *mut u16,
    /// Units done, of `units`; a unit every `every` ticks.
    done: usize,
    units: usize,
    every: usize,
    ticks: usize,
    /// The weights' prefetch, one cursor: unit `ahead`'s lines from byte `ahead_at` on
    /// are still to be asked for, `lines_per_tick` of them a tick once
    /// [`Packer::spread`], and whatever of a unit is left when it is next but one.
    ahead: usize,
    ahead_at: usize,
    lines_per_tick: usize,
}

impl<'a> Packer<'a> {
    /// A packer for the rows of `strips` (first row, rows) of columns `c .. c + width`
    /// of `w`, its first unit's weights already on their way to L2.
    ///
    /// # Safety
    /// `w` must hold those rows and columns; `dst` must have room for a pair's slice,
    /// and no one else may use it until the packer is done.
    unsafe fn new(w: Matrix<'a>, c: usize, width: usize, strips: [(usize, usize); 2], dst: *mut u16) -> Packer<'a> {
        let units = if w.data.q4().is_some() { 4 } else { 2 * TILE };
        let mut p = Packer { w, c, width, strips, dst, done: 0, units, every: 1, ticks: 0, ahead: 0, ahead_at: 0, lines_per_tick: 0 };
        p.prefetch_before(1);
        p
    }

    /// Spreads the units evenly over `ticks` calls of [`Packer::tick`], and the
    /// prefetch of their weights too: two units ahead, a few lines a tick.
    ///
    /// A unit's lines asked for all at once (a q8_0 row of 2048 columns is 32 lines,
    /// a bf16 one 64), one unit ahead, stalled the instruction stream (the samples fell
    /// on the prefetches), and the weights reached the packer at a fraction of the
    /// memory's speed when the tokens are few. 1B, 2 threads, Sapphire Rapids,
    /// `prompt_floor`, medians of 5-6 alternating runs (a slow state of the machine):
    /// q8_0 64 tokens 140.7 -> 132.9 ms, bf16 512 tokens 530.8 -> 506.3, bf16 64
    /// 157.7 -> 151.1; q8_0 512 tokens (542 -> 546) and q4_k 64 (156.6 -> 155.2) level.
    unsafe fn spread(&mut self, ticks: usize) {
        self.every = (ticks / self.units).max(1);
        let lines = self.unit_bytes(0).map_or(0, |(_, len)| len.div_ceil(64));
        self.lines_per_tick = lines.div_ceil(self.every);
        self.prefetch_before(2);
    }

    /// Asks for the next `lines` lines of weights not yet asked for, of the units
    /// before `end`.
    unsafe fn prefetch_lines(&mut self, mut lines: usize, end: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        while lines > 0 && self.ahead < end.min(self.units) {
            let Some((start, len)) = self.unit_bytes(self.ahead) else {
                // No rows past here (a matrix's last, short pair).
                self.ahead = self.units;
                return;
            };
            while lines > 0 && self.ahead_at < len {
                _mm_prefetch::<_MM_HINT_T1>(start.wrapping_add(self.ahead_at) as *const i8);
                self.ahead_at += 64;
                lines -= 1;
            }
            if self.ahead_at >= len {
                (self.ahead, self.ahead_at) = (self.ahead + 1, 0);
            }
        }
    }

    #[inline(always)]
    unsafe fn tick(&mut self) {
        self.prefetch_lines(self.lines_per_tick, self.units);
        self.ticks += 1;
        if self.ticks >= self.every {
            self.ticks = 0;
            self.step();
        }
    }

    unsafe fn finish(&mut self) {
        while self.done < self.units {
            self.step();
        }
    }

    /// The next unit, if any is left.
    unsafe fn step(&mut self) {
        if self.done < self.units {
            // The next unit's weights start on their way to L2 before this one is
            // packed, those the ticks have not asked for yet: a unit runs every few
            // dozen tile products, too seldom for the hardware prefetchers to keep a
            // stream going.
            self.prefetch_before(self.done + 2);
            let (j0, _, _) = unit_rows(self.strips, self.done, self.units);
            if tile_source(&self.w, self.c, self.strips[j0 / TILE]).is_none() {
                pack_unit(&self.w, self.c, self.width, self.strips, self.done, self.units, self.dst);
            }
            self.done += 1;
        }
    }

    /// Asks for every line of the units before `end` not yet asked for.
    unsafe fn prefetch_before(&mut self, end: usize) {
        self.prefetch_lines(usize::MAX, end);
    }

    /// Where unit `u`'s weights start and how many bytes they take; `None` for a unit
    /// past the last or of rows past the matrix's.
    ///
    /// # Safety
    /// As for [`Packer::new`].
    unsafe fn unit_bytes(&self, u: usize) -> Option<(*const u8, usize)> {
        let (_, row, present) = unit_rows(self.strips, u, self.units);
        if u >= self.units || present == 0 {
            return None;
        }
        Some(match self.w.data {
            MatrixData::BF16(data) => (data.as_ptr().add(row * self.w.cols + self.c) as *const u8, self.width * 2),
            MatrixData::Q8_0 { quants, .. } => (quants.as_ptr().add(row * self.w.cols.next_multiple_of(32) + self.c) as *const u8, self.width),
            MatrixData::Q4_0(tiles) | MatrixData::Q4_K(tiles) => {
                let per_group = olmo_format::q4::tiles_per_group(self.w.cols);
                let t = row / 8 * per_group + self.c / olmo_format::q4::TILE_COLS;
                (tiles.as_ptr().add(t * olmo_format::q4::TILE_BYTES), self.width.div_ceil(olmo_format::q4::TILE_COLS) * olmo_format::q4::TILE_BYTES)
            }
            MatrixData::F32(_) | MatrixData::F16(_) => return None,
        })
    }
}

/// Unit `u` of `units` of a strip pair's slice (see [`Packer`]): bf16 rows copied,
/// quantised ones (a row, or a group of eight for 4-bit weights) dequantised and
/// rounded to bf16 in registers. (Staged as f32 rows first, 4-bit prompts of the 1B
/// ran at 552-588 tok/s against q8_0's 654-688, and q8_0's packing took 17% of its.)
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn pack_unit(w: &Matrix, c: usize, width: usize, strips: [(usize, usize); 2], u: usize, units: usize, dst: *mut u16) {
    let depth = width / CHUNK;
    let at = |j: usize| dst.add(j / TILE * depth * ACT_TILE + j % TILE * CHUNK);
    let (j0, row, present) = unit_rows(strips, u, units);
    match w.data {
        _ if present == 0 => {}
        MatrixData::BF16(data) => {
            let src = data.as_ptr().add(row * w.cols + c);
            for ch in 0..depth {
                std::ptr::copy_nonoverlapping(src.add(ch * CHUNK), at(j0).add(ch * ACT_TILE), CHUNK);
            }
        }
        MatrixData::Q8_0 { quants, scales } => q8_row_to_tiles(quants, scales, w.cols, row, c, width, at(j0)),
        MatrixData::Q4_0(tiles) | MatrixData::Q4_K(tiles) => {
            let (dtype, _) = w.data.q4().expect("a 4-bit matrix");
            // `row` is a multiple of 8 (strips start on multiples of 16; `fit_together`
            // keeps the up half on one): a whole tile group.
            q4_group_to_tiles(dtype, tiles, w.cols, row / 8, c, width, present, |r| at(j0 + r));
        }
        MatrixData::F32(_) | MatrixData::F16(_) => unreachable!("`fits` leaves f32 and f16 to the FMA GEMM"),
    }
    for j in j0 + present..j0 + 2 * TILE / units {
        for ch in 0..depth {
            std::ptr::write_bytes(at(j).add(ch * ACT_TILE), 0, CHUNK);
        }
    }
}

/// Unit `u` of `units` of a strip pair (`strips`: each strip's first row and rows that
/// exist): its first row in the pair (of 32), its first row of the matrix, and how
/// many of its rows exist (the rest are zeros).
fn unit_rows(strips: [(usize, usize); 2], u: usize, units: usize) -> (usize, usize, usize) {
    let per = 2 * TILE / units;
    let j0 = u * per;
    let (row0, rows) = strips[(j0 / TILE).min(1)];
    let j = j0 % TILE;
    (j0, row0 + j, rows.saturating_sub(j).min(per))
}

/// Where a strip's bf16 tiles are read straight from its rows (`A` tiles loaded from
/// the weights by the first token pair's block and stored into the pair's buffer by
/// the matrix unit, [`load_a`]) instead of copied by the packer: the start of the
/// strip's columns `c ..` and the rows' stride in bytes. bf16 strips of 16 rows only
/// (a shorter one would load rows past the matrix).
fn tile_source(w: &Matrix, c: usize, (row, rows): (usize, usize)) -> Option<(*const u8, usize)> {
    match w.data {
        // The strip's 16 rows exist (`rows`), so the tile loads from here stay within
        // `data`, which holds every row (`Matrix::check`).
        MatrixData::BF16(data) if rows == TILE => Some((data[row * w.cols + c..].as_ptr() as *const u8, w.cols * 2)),
        _ => None,
    }
}

/// Loads `A` tile `ch` of a strip into tile `T`: from the packed buffer `packed`, or,
/// where the strip's tiles are read from its rows (`src`, see [`tile_source`]), from
/// the rows, then stored into the buffer for the token pairs after this one.
#[inline(always)]
unsafe fn load_a<const T: u8>(packed: *const u8, src: Option<(*const u8, usize)>, ch: usize) {
    let tile = packed.add(ch * ACT_TILE * 2);
    match src {
        Some((rows, stride)) => {
            amx::load::<T>(rows.add(ch * CHUNK * 2), stride);
            amx::store::<T>(tile as *mut u8, CHUNK * 2);
        }
        None => amx::load::<T>(tile, CHUNK * 2),
    }
}

/// Columns `c .. c + width` of q8_0 row `r` (of a matrix `cols` wide) dequantised and
/// rounded to bf16 straight into its tiles' rows (`dst`, tiles [`ACT_TILE`] apart): each
/// weight its quant times its block's scale in f32, as `avx2::q8_row_to_f32` gives it,
/// rounded as [`row_to_tiles`] rounds it.
///
/// # Safety
/// AVX-512 F/BW; `quants` and `scales` must hold row `r` (`Matrix::check`), `c` and
/// `width` be multiples of 32 and `c + width` at most `cols`; `dst` must have room for
/// `width / 32` tiles' rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,f16c")]
unsafe fn q8_row_to_tiles(quants: &[i8], scales: &[u16], cols: usize, r: usize, c: usize, width: usize, dst: *mut u16) {
    use std::arch::x86_64::*;
    let blocks = cols.div_ceil(CHUNK);
    let q = quants.as_ptr().add(r * blocks * CHUNK + c);
    let s = scales.as_ptr().add(r * blocks + c / CHUNK);
    for ch in 0..width / CHUNK {
        // Broadcast as f16, then widened: inserted into a register instead, the scale
        // waited on the register's previous value, the last chunk's result.
        let d = _mm512_cvtph_ps(_mm256_set1_epi16(*s.add(ch) as i16));
        let v = _mm256_loadu_si256(q.add(ch * CHUNK) as *const __m256i);
        let lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v))), d);
        let hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(v))), d);
        // One instruction rounds both halves to nearest-even as `to_bf16` does (it
        // reads denormals as zero, but a quant times an f16 scale is never one).
        _mm512_storeu_si512(dst.add(ch * ACT_TILE) as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
}

/// For each row `r` of a 4-bit tile, the `vpermi2b` indices that gather its block's
/// 16 bytes from the block's 128 into the low byte of 16-bit lanes `k` and `16 + k`:
/// byte `k` is byte `k % 4` of word `r + 8 (k / 4)` (the high bytes repeat it).
const Q4_GATHER: [[u8; 64]; 8] = {
    let mut idx = [[0u8; 64]; 8];
    let mut r = 0;
    while r < 8 {
        let mut j = 0;
        while j < 64 {
            let k = (j / 2) % 16;
            idx[r][j] = (4 * r + 32 * (k / 4) + k % 4) as u8;
            j += 1;
        }
        r += 1;
    }
    idx
};

/// Columns `c .. c + width` of the eight rows of 4-bit tile group `g` (of a matrix
/// `cols` wide), the first `rows` of them, dequantised and rounded to bf16 straight
/// into their tiles' rows (row `r` of chunk `ch` at `at(r) + ch * ACT_TILE`): the
/// values `q4_avx2::dequantize_group` gives, each rounded as [`row_to_tiles`] rounds
/// it, without staging them as f32. A tile's block `b` is 128 bytes in which row `r`'s
/// 32 values are the nibbles of 32-bit words `r`, `r + 8`, `r + 16` and `r + 24` (low
/// nibbles columns 0-15, high ones 16-31; `olmo_format::q4`).
///
/// A row's block has only 16 values, `scale * q - offset` for `q` in 0..16: they are
/// computed once (as `dequantize_group` computes each weight, so the same bits) and
/// rounded into a table of bf16, and the row's 32 weights are looked up in it by
/// one `vpermw`, its indices the nibbles gathered into 16-bit lanes by one `vpermi2b`.
/// Against widening every nibble to f32 (per row two extractions, two widenings, two
/// conversions, two FMAs and a rounding), the 1B's q4_k 512-token prompt went from
/// 449.6-452.5 ms to 443.8-445.1 (3 alternating rounds), level with q8_0's.
///
/// # Safety
/// AVX-512 F/BW/VBMI/BF16, AVX2/FMA/F16C; `tiles` must hold group `g`
/// (`Matrix::check`), `c` be a multiple of `q4::TILE_COLS` and `c + width` at most
/// `cols`, a multiple of 32; `at(r)` must have room for `width / 32` tiles' rows for
/// `r < rows`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16,avx2,fma,f16c")]
unsafe fn q4_group_to_tiles(dtype: olmo_format::DType, tiles: &[u8], cols: usize, g: usize, c: usize, width: usize, rows: usize, at: impl Fn(usize) -> *mut u16) {
    use olmo_format::q4;
    use std::arch::x86_64::*;
    let per_group = q4::tiles_per_group(cols);
    let iota = _mm512_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
    // SAFETY (each): 64 bytes into a 64-byte register.
    let gather: [__m512i; 8] = std::array::from_fn(|r| unsafe { _mm512_loadu_si512(Q4_GATHER[r].as_ptr() as *const __m512i) });
    // Lanes 16-31 take their byte's high nibble. Bits 4 and up of every lane are left
    // as they fall: `vpermw` reads bits 0-4, and the table holds its 16 values twice.
    let shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
    for t in c / q4::TILE_COLS..(c + width).div_ceil(q4::TILE_COLS) {
        let tile = tiles.as_ptr().add((g * per_group + t) * q4::TILE_BYTES);
        let k_scales = (dtype == olmo_format::DType::Q4_K).then(|| q4_k_scales(tile));
        for b in 0..q4::TILE_COLS / CHUNK {
            let col = t * q4::TILE_COLS + b * CHUNK;
            if col >= c + width {
                break;
            }
            let ch = (col - c) / CHUNK;
            let (scale, offset) = block_scales(tile, k_scales.as_ref(), b);
            let (mut scales, mut offsets) = ([0f32; 8], [0f32; 8]);
            _mm256_storeu_ps(scales.as_mut_ptr(), scale);
            _mm256_storeu_ps(offsets.as_mut_ptr(), offset);
            let v0 = _mm512_loadu_si512(tile.add(128 * b) as *const __m512i);
            let v1 = _mm512_loadu_si512(tile.add(128 * b + 64) as *const __m512i);
            for (r, gather) in gather.iter().enumerate().take(rows) {
                // scale * q - offset, fused, as `dequantize_group` computes it, rounded
                // as `to_bf16` rounds (no weight here is a denormal, which the
                // instruction reads as zero).
                let values = _mm512_fmsub_ps(iota, _mm512_set1_ps(scales[r]), _mm512_set1_ps(offsets[r]));
                let table = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(values, values));
                let q = _mm512_srlv_epi16(_mm512_permutex2var_epi8(v0, *gather, v1), shifts);
                _mm512_storeu_si512(at(r).add(ch * ACT_TILE) as *mut __m512i, _mm512_permutexvar_epi16(q, table));
            }
        }
    }
}

/// One f32 row rounded to bf16 into its tiles' rows (`dst`, tiles [`ACT_TILE`] apart):
/// what the packing of quantised weights is held to.
#[cfg(test)]
#[target_feature(enable = "avx512f")]
unsafe fn row_to_tiles(row: &[f32], dst: *mut u16) {
    use std::arch::x86_64::*;
    for (ch, values) in row.chunks_exact(CHUNK).enumerate() {
        let lo = _mm512_cvtepi32_epi16(to_bf16(_mm512_loadu_ps(values.as_ptr())));
        let hi = _mm512_cvtepi32_epi16(to_bf16(_mm512_loadu_ps(values.as_ptr().add(16))));
        let d = dst.add(ch * ACT_TILE) as *mut __m256i;
        _mm256_storeu_si256(d, lo);
        _mm256_storeu_si256(d.add(1), hi);
    }
}

/// One slice's worth of `C += A B` for packed weight strips `a0` (and `a1` if `TWO_A`) by token
/// tiles `b0` (and `b1` if `TWO_B`), `chunks` tiles deep: the accumulators start from
/// zero (`first`) or from `accs`, and end in `outs` (16 rows of 64 bytes each).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<const TWO_A: bool, const TWO_B: bool>(
    a0: *const u8,
    a1: *const u8,
    src: [Option<(*const u8, usize)>; 2],
    b0: *const u8,
    b1: *const u8,
    chunks: usize,
    first: bool,
    accs: [*mut u8; 4],
    outs: [*mut u8; 4],
    side: &mut impl FnMut(),
) {
    const ROW: usize = TILE * 4;
    if first {
        amx::zero::<0>();
        if TWO_B {
            amx::zero::<1>();
        }
        if TWO_A {
            amx::zero::<2>();
            if TWO_B {
                amx::zero::<3>();
            }
        }
    } else {
        amx::load_once::<0>(accs[0], ROW);
        if TWO_B {
            amx::load_once::<1>(accs[1], ROW);
        }
        if TWO_A {
            amx::load_once::<2>(accs[2], ROW);
            if TWO_B {
                amx::load_once::<3>(accs[3], ROW);
            }
        }
    }
    let tile = |base: *const u8, ch: usize| base.add(ch * ACT_TILE * 2);
    if TWO_A && TWO_B {
        // Tile registers are not renamed: a load waits until every product reading
        // the register's last contents is done. Each operand is reloaded for the next
        // chunk right after its last product of this one, so the loads run under the
        // remaining products instead of between chunks.
        load_a::<4>(a0, src[0], 0);
        amx::load_once::<6>(tile(b0, 0), CHUNK * 2);
        load_a::<5>(a1, src[1], 0);
        amx::load_once::<7>(tile(b1, 0), CHUNK * 2);
        for ch in 0..chunks {
            let next = ch + 1 < chunks;
            amx::dot_bf16::<0, 4, 6>();
            amx::dot_bf16::<2, 5, 6>();
            if next {
                amx::load_once::<6>(tile(b0, ch + 1), CHUNK * 2);
            }
            amx::dot_bf16::<1, 4, 7>();
            if next {
                load_a::<4>(a0, src[0], ch + 1);
            }
            amx::dot_bf16::<3, 5, 7>();
            if next {
                amx::load_once::<7>(tile(b1, ch + 1), CHUNK * 2);
                load_a::<5>(a1, src[1], ch + 1);
            }
            side();
        }
    } else {
        for ch in 0..chunks {
            load_a::<4>(a0, src[0], ch);
            amx::load_once::<6>(tile(b0, ch), CHUNK * 2);
            if TWO_B {
                amx::load_once::<7>(tile(b1, ch), CHUNK * 2);
            }
            amx::dot_bf16::<0, 4, 6>();
            if TWO_B {
                amx::dot_bf16::<1, 4, 7>();
            }
            if TWO_A {
                load_a::<5>(a1, src[1], ch);
                amx::dot_bf16::<2, 5, 6>();
                if TWO_B {
                    amx::dot_bf16::<3, 5, 7>();
                }
            }
            side();
        }
    }
    amx::store::<0>(outs[0], ROW);
    if TWO_B {
        amx::store::<1>(outs[1], ROW);
    }
    if TWO_A {
        amx::store::<2>(outs[2], ROW);
        if TWO_B {
            amx::store::<3>(outs[3], ROW);
        }
    }
}

/// The calling thread's `tdpbf16ps` throughput in GFLOP/s: `products` tile products
/// (each 16 x 16 x 32 multiply-adds) on tiles already loaded, four independent
/// accumulators at a time, nothing read from memory: the compute floor's peak.
///
/// # Safety
/// [`amx::available`] must be true.
pub unsafe fn peak_bf16(products: usize) -> f64 {
    // Operands of mixed signs and magnitudes (bf16 of 0.5 .. 2 and their negatives):
    // the unit may go faster on zeros than on real data.
    let mut values = [0u16; 4 * ACT_TILE];
    let mut state = 0x2545_f491u32;
    for v in values.iter_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *v = (0x3f00 + (state >> 16) as u16 % 0x100) | (state as u16 & 0x8000);
    }
    let tile = |i: usize| values.as_ptr().add(i * ACT_TILE) as *const u8;
    amx::configure(&config());
    amx::load::<4>(tile(0), 64);
    amx::load::<5>(tile(1), 64);
    amx::load::<6>(tile(2), 64);
    amx::load::<7>(tile(3), 64);
    let start = std::time::Instant::now();
    for _ in 0..products.div_ceil(4) {
        amx::dot_bf16::<0, 4, 6>();
        amx::dot_bf16::<1, 4, 7>();
        amx::dot_bf16::<2, 5, 6>();
        amx::dot_bf16::<3, 5, 7>();
    }
    let seconds = start.elapsed().as_secs_f64();
    amx::release();
    (products.div_ceil(4) * 4 * TILE * TILE * CHUNK * 2) as f64 / seconds / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use olmo_format::{DType, Layout};

    /// A token tile's stride holds its tiles and is an odd multiple of 16 tiles, so
    /// the 512-token slices of successive token tiles land on different stretches of
    /// the L2's sets.
    #[test]
    fn token_tiles_are_an_odd_multiple_of_16_tiles_apart() {
        for chunks in 1..=1024 {
            let tiles = token_tile_stride(chunks) / ACT_TILE;
            assert_eq!(token_tile_stride(chunks) % ACT_TILE, 0);
            assert!(tiles >= chunks && tiles < chunks + 32, "{chunks}: {tiles}");
            assert!(tiles.is_multiple_of(16) && !(tiles / 16).is_multiple_of(2), "{chunks}: {tiles}");
        }
        assert_eq!(token_tile_stride(64), 80 * ACT_TILE);
        assert_eq!(token_tile_stride(256), 272 * ACT_TILE);
    }

    /// Results streamed past the caches are the bits stored as usual: rows that are a
    /// whole tile and rows that are not, and tokens past a whole tile.
    #[test]
    fn streamed_results_are_the_stored_ones() {
        if !crate::kernels::amx_available() {
            return;
        }
        let (rows, cols, n) = (48, 96, 37);
        let weights: Vec<u16> = (0..rows * cols).map(|i| half::bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0).to_bits()).collect();
        let w = Matrix::row_major(rows, cols, MatrixData::BF16(&weights));
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 53 % 97) as f32 - 48.0) / 32.0).collect();
        let mut acts = Buffer::default();
        let acts = pack(&x, n, cols, &mut acts);
        let run = |stream: bool| {
            let mut y = vec![f32::NAN; n * rows + 16];
            // 64-byte aligned, so that whole tiles take the streamed path.
            let at = y.as_ptr().align_offset(64);
            let out = Out::Rows { y: SendPtr(y[at..].as_mut_ptr()), ldy: rows, stream };
            // SAFETY: AMX (checked) with AVX-512; `w` holds every row, `acts` the
            // packed tokens, and `y` room for `n * rows` results from `at`.
            unsafe { sweep(&w, acts, n, out) };
            y[at..][..n * rows].to_vec()
        };
        let (streamed, stored) = (run(true), run(false));
        assert!(stored.iter().all(|v| v.is_finite()));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert!(bits(&streamed) == bits(&stored));
    }

    /// q8_0 rows go into their tiles with the bits that dequantising them to f32
    /// (`avx2::q8_row_to_f32`) and rounding (`row_to_tiles`) gives: every slice of a
    /// row whose length is not a whole number of blocks' pairs, and extreme quants.
    #[test]
    fn q8_rows_pack_as_their_f32_rows_round() {
        if !crate::kernels::amx_available() {
            return;
        }
        let (rows, cols) = (3, 224);
        let blocks = cols / CHUNK;
        let quants: Vec<i8> = (0..rows * cols).map(|i| ((i * 37 + 11) % 255) as i32 as i8).collect();
        let scales: Vec<u16> = (0..rows * blocks).map(|i| half::f16::from_f32(0.001 + i as f32 * 0.37).to_bits()).collect();
        for r in 0..rows {
            for (c, width) in [(0, cols), (64, 96), (192, 32)] {
                let len = width / CHUNK * ACT_TILE;
                let (mut want, mut got) = (vec![0u16; len], vec![0u16; len]);
                let mut row = vec![0f32; width];
                // SAFETY: AMX (checked) comes with AVX-512 F/BW and AVX2/F16C; the
                // slices hold every row, `c` and `width` are multiples of 32 within the
                // row, and the buffers hold `width / 32` tiles.
                unsafe {
                    super::super::avx2::q8_row_to_f32(&quants, &scales, cols, r, c, &mut row);
                    row_to_tiles(&row, want.as_mut_ptr());
                    q8_row_to_tiles(&quants, &scales, cols, r, c, width, got.as_mut_ptr());
                }
                assert!(want == got, "row {r} slice {c}+{width}");
                assert!(want.iter().any(|&v| v != 0));
            }
        }
    }

    /// 4-bit weights go into their tiles with the bits that dequantising them to f32
    /// (`q4_avx2::dequantize_group`) and rounding each row (`row_to_tiles`) gives: q4_0
    /// and q4_k, whole and partial tiles (a slice of 96 columns), groups with fewer than
    /// eight rows, and the second tile of a row.
    #[test]
    fn four_bit_groups_pack_as_their_f32_rows_round() {
        if !crate::kernels::amx_available() {
            eprintln!("no AMX here: the 4-bit tile packing is not tested");
            return;
        }
        for dtype in [DType::Q4_0, DType::Q4_K] {
            for (rows, cols, c, width) in [(16, 512, 0, 512), (16, 512, 256, 256), (11, 352, 256, 96), (8, 96, 0, 96)] {
                let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 2_654_435_761usize) % 1999) as f32 / 999.0 - 1.0).collect();
                let mut tiles = Vec::new();
                olmoc::convert::write_matrix(&vals, rows, cols, dtype, Layout::Q4Tiles, &mut tiles).unwrap();
                for g in 0..rows.div_ceil(8) {
                    let here = (rows - 8 * g).min(8);
                    let chunks = width / CHUNK;
                    // Row r of chunk ch at r * chunks * CHUNK + ch * ACT_TILE: room for both.
                    let len = 8 * chunks * ACT_TILE;
                    let (mut want, mut got) = (vec![0u16; len], vec![0u16; len]);
                    let mut f32_rows = vec![0f32; 8 * width];
                    // SAFETY: AMX (checked) comes with AVX-512 F/BW and AVX2/FMA/F16C; the
                    // tiles hold every group, `c` is a multiple of 256 and `c + width` at
                    // most `cols`; each row's tiles lie in the buffers.
                    unsafe {
                        super::super::q4_avx2::dequantize_group(dtype, &tiles, cols, g, c, width, &mut f32_rows);
                        for r in 0..here {
                            row_to_tiles(&f32_rows[r * width..][..width], want.as_mut_ptr().add(r * CHUNK));
                        }
                        let base = got.as_mut_ptr();
                        q4_group_to_tiles(dtype, &tiles, cols, g, c, width, here, |r| base.add(r * CHUNK));
                    }
                    assert!(want == got, "{dtype:?} rows {rows} cols {cols} slice {c}+{width} group {g}");
                    assert!(want.iter().any(|&v| v != 0));
                }
            }
        }
    }
}

