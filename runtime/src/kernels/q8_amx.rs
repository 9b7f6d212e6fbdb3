//! q8_0 products on AMX int8 tiles (`tdpbssd`), each token's outputs summed the same
//! way whatever shares its batch. The dispatch sends them prompts of [`TILES_FROM`]
//! to [`TILES_BELOW`] tokens only (fewer take the decode kernel, more the bf16 tiles).
//! (Tried for decode batches, they gave 8 streams 59.9 tok/s against 51.8 on VNNI but
//! 4 streams 37.6 against 48.8, 1B serve bench, q8_0, Sapphire Rapids: a tile pass
//! costs ~2x one token's whatever the batch, below.)
//!
//! A q8_0 block's 32 weights share a scale, and so do the 32 activations they meet
//! (quantised per block as every q8_0 kernel quantises them, [`QuantX`]), so the
//! int32 sums have to leave the tiles every block to be scaled. A tile product costs
//! 16 cycles however deep it runs, so each one takes a pair of blocks: 16 weight rows
//! of 64 bytes (the `A` tile, loaded straight from the rows) against 8 tokens twice
//! over (the `B` tile: column `2t` holds token `t`'s quants of the pair's first block
//! and zeros for the second, column `2t + 1` the other way round). Out come, per
//! weight row, 16 exact sums, block `h` of token `t` in lane `2t + h`, which the
//! vector units take on: a conversion, the token scales times the row's two (one
//! broadcast pair), and an add, `acc = fma(float(sum), d_x * d_w, acc)`.
//!
//! Block `b` adds into chain `b % 32`, and the 32 chains are added in a fixed tree at
//! the end: 16 chains per row (pair `p` into chain `p % 16`, both blocks' lanes),
//! folded in that tree. Nothing in a chain depends on which other tokens fill the tile
//! or which rows share a task, so a token gets the numbers it gets alone.
//! [`reference`] is the same arithmetic in plain Rust, and the tests hold the kernel
//! to it bit for bit.
//!
//! Measured on one Sapphire Rapids core (rows in L1): a tile product with its two
//! loads ~19 cycles whether 32 or 64 bytes deep, ~31 with the store of its sums. With
//! a row tile and its token tiles in L2 (32 KiB each for 2048 columns), a pair takes
//! ~60 ns instead of ~23: a batch of up to 8 tokens costs about 2x one token's time
//! on the 1B shape, however many tokens fill the tile (kernels bench, 16384 x 2048, 2
//! threads). Decode batches (`forward_rows`, `matmul_decode`) do not come here: they
//! run on VNNI, where 2, 4 and 8 rows cost 1.04, 1.13 and 1.30 of one token's step
//! (`decode_batch`, the 1B, 2 threads, stop 36).

use std::arch::x86_64::*;
use std::cell::RefCell;

use half::f16;

use super::activations::{QuantX, ScaleSpan};
use super::amx::{self, TileConfig};
use super::gemm_amx::transpose16;
use super::tasks::{for_each_task, grow_aligned, min_rows_per_block, par_row_groups, with_local, SendPtr};

/// Weight rows of an `A` tile.
const TILE: usize = 16;
/// Tokens of a `B` tile: each takes two columns, one per block of the pair.
const TOKENS: usize = 8;
/// Weights of a q8_0 block.
const BLOCK: usize = 32;
/// Bytes of a token tile's `B` tile for one pair of blocks: 16 rows (the pair's
/// quads) of 16 columns x 4 quants.
const B_BYTES: usize = 1024;

/// Batches of fewer tokens than this run on the VNNI decode kernel
/// (`q8_vnni::matmul_decode`, each token's numbers those it gets decoding), more on the
/// tiles. On the whole 1B (2 threads, Sapphire Rapids, stop 36, `prefill_chunks`, 5
/// rounds) a 4-token prompt took 47.8 ms there against 64.4 here, two read together
/// 54.5 against 64.2, four and eight level (90.5 / 89.1, 153.9 / 149.8); 6 tokens 52.2
/// against 64.9 alone, 76.5 against 88.5 in twos, 2.5% and 11.5% slower in fours and
/// eights; 8 tokens 55.2 against 65.3 alone but 16% slower in eights. A lone prompt
/// and the last short chunk of a long one are the common case. (A kernels bench of
/// one 16384 x 2048 matrix had put the decode kernel at 2.2-2.7 times one token's time
/// for 4 tokens against ~2.0 here; it set this at 3 until stop 36.)
pub(super) const TILES_FROM: usize = 7;

/// Prompt batches of fewer tokens than this take these int8 tiles, more the bf16 ones
/// of `gemm_amx`, which dequantise the weights once per task and then keep the
/// products in the tiles. Here the cost grows with the tokens (the vector work on
/// every pair's sums), there it is mostly the dequantisation, paid once for all: the
/// 1B's prompt chunks (`prefill_chunks`, 2 threads, Sapphire Rapids), one alone and
/// eight in one pass (as a server reads prompts that arrive together), ms here
/// against there: 8 tokens 59 / 85 and 225 / 134, 12 tokens 83 / 88 and 342 / 175,
/// 16 tokens 82 / 86 and 447 / 190, 24 tokens 102 / 96 and 640 / 255. (Before
/// `gemm_amx` rounded q8_0 weights with `vcvtne2ps2bf16`, a 16-token chunk alone took
/// 133-140 ms there, and this was 32.)
pub(super) const TILES_BELOW: usize = 12;

/// Every tile 16 rows of 64 bytes: sums in 0-3, weights in 4-5, token quants in 6-7.
fn config() -> TileConfig {
    TileConfig::new(&[], &[], 64)
}

/// The tokens of a call as the tiles take them: per token tile and pair of blocks, a
/// `B` tile and the 16 scales of its columns.
#[derive(Default)]
struct Tokens {
    quads: Vec<u8>,
    scales: Vec<f32>,
}

thread_local! {
    /// The calling thread's packed tokens; only ever grows.
    static TOKENS_PACKED: RefCell<Tokens> = RefCell::new(Tokens::default());
    /// A packing task's quantised token.
    static QX: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
    /// A row task's scratch: a row tile's weight scales as f32 and, for the last rows of a matrix, a copy of them padded to a whole tile.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `y = x W^T` for a q8_0 matrix of `rows x cols` (`quants` and `scales` as
/// `MatrixData::Q8_0` holds them): `x` is `n x cols`, `y` is `n x rows`, each token's
/// outputs what [`reference`] gives it, whatever shares its batch.
///
/// # Safety
/// [`amx::available`] and AVX2/FMA/F16C and AVX-512 F/DQ/VNNI; `quants` and `scales`
/// must hold every row (`Matrix::check`), `x` `n * cols` values and `y` `n * rows`.
pub(super) unsafe fn matmul(
    quants: &[i8],
    scales: &[u16],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let blocks = cols.div_ceil(BLOCK);
    let pairs = blocks.div_ceil(2);
    let token_tiles = n.div_ceil(TOKENS);
    if n == 0 || rows == 0 {
        return;
    }
    assert!(
        quants.len() >= rows * blocks * BLOCK
            && scales.len() >= rows * blocks
            && x.len() >= n * cols
            && y.len() >= n * rows
    );
    with_local(&TOKENS_PACKED, |tokens| {
        let (quads, token_scales) = (token_tiles * pairs * B_BYTES, token_tiles * pairs * TILE);
        // 64-byte aligned: a tile load whose rows straddle cache lines is several
        // times slower (see `gemm_amx`).
        let quads = grow_aligned(&mut tokens.quads, quads);
        let token_scales = grow_aligned(&mut tokens.scales, token_scales);
        let (qp, sp) = (
            SendPtr(quads.as_mut_ptr()),
            SendPtr(token_scales.as_mut_ptr()),
        );
        for_each_task(token_tiles, |tt| {
            // SAFETY: token tile `tt` alone writes its own part of both buffers.
            let (q, s) = unsafe {
                (
                    std::slice::from_raw_parts_mut(
                        qp.get().add(tt * pairs * B_BYTES),
                        pairs * B_BYTES,
                    ),
                    std::slice::from_raw_parts_mut(sp.get().add(tt * pairs * TILE), pairs * TILE),
                )
            };
            pack_tokens(x, n, cols, tt, q, s);
        });
        let (quads, token_scales) = (&*quads, &*token_scales);
        // SAFETY: as for `matmul`; the tiles are configured for the calls.
        row_tiles(quants, scales, rows, cols, y, |a, ws, r, here, y| unsafe {
            for tt in 0..token_tiles {
                let (bs, bq) = (
                    token_scales.as_ptr().add(tt * pairs * TILE),
                    quads.as_ptr().add(tt * pairs * B_BYTES),
                );
                let acc = row_tile(a, blocks * BLOCK, ws, bs, bq, pairs, tt == 0);
                store_transposed(
                    acc,
                    here,
                    TOKENS.min(n - tt * TOKENS),
                    y.add(tt * TOKENS * rows + r),
                    rows,
                );
            }
        })
    })
}

/// Calls `f(a, ws, r, here, y)` for each row tile of a q8_0 matrix as parallel tasks:
/// its weights `a` (16 rows, `blocks * 32` bytes apart: the matrix's own, or for its
/// last tile, when that is partial or the row length odd in blocks, a copy padded with
/// zeros, since a tile or a 64-byte load reads whole pairs of 16 rows), their scales
/// `ws` as [`weight_scales`] lays them out, its first row `r` and the rows of it that
/// exist, `here`; `f` writes the tile's outputs at `y` (the start of `y`, `rows`
/// apart per token). Each task configures the AMX tiles for `f`.
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
unsafe fn row_tiles(
    quants: &[i8],
    scales: &[u16],
    rows: usize,
    cols: usize,
    y: &mut [f32],
    f: impl Fn(*const u8, *const f32, usize, usize, *mut f32) + Sync + Send,
) {
    let blocks = cols.div_ceil(BLOCK);
    let pairs = blocks.div_ceil(2);
    let lda = blocks * BLOCK;
    let n = y.len() / rows;
    let min = min_rows_per_block(blocks * (BLOCK + 2), TILE);
    let yp = SendPtr(y.as_mut_ptr());
    par_row_groups(y, n, rows, min, TILE, rows, n, |r0, len, _, _| {
        with_local(&SCRATCH, |scratch| {
            let ws_bytes = (pairs * TILE * 2 * 4).next_multiple_of(64);
            let tail_bytes = TILE * lda + 64 + TILE * blocks * 2;
            let base = grow_aligned(scratch, ws_bytes + tail_bytes).as_mut_ptr();
            // SAFETY: both parts lie within `scratch` (grown above), 64-byte aligned; as
            // the caller vouches for the rest.
            unsafe {
                let ws = base as *mut f32;
                let tail = base.add(ws_bytes);
                amx::configure(&config());
                for r in (r0..r0 + len).step_by(TILE) {
                    let here = TILE.min(rows - r);
                    let (a, s) = if here == TILE && (blocks.is_multiple_of(2) || r + TILE < rows) {
                        (
                            quants.as_ptr().add(r * lda) as *const u8,
                            scales.as_ptr().add(r * blocks),
                        )
                    } else {
                        let tail_scales = tail.add(TILE * lda + 64) as *mut u16;
                        std::ptr::write_bytes(tail, 0, tail_bytes);
                        std::ptr::copy_nonoverlapping(
                            quants.as_ptr().add(r * lda) as *const u8,
                            tail,
                            here * lda,
                        );
                        std::ptr::copy_nonoverlapping(
                            scales.as_ptr().add(r * blocks),
                            tail_scales,
                            here * blocks,
                        );
                        (tail as *const u8, tail_scales as *const u16)
                    };
                    weight_scales(s, blocks, ws);
                    f(a, ws, r, here, yp.get());
                }
                amx::release();
            }
        })
    });
}

/// Quantises tokens `tt * 8 ..` of `x` (rows of `cols`) into their `B` tiles, a pair of
/// blocks at a time (`quads`: quad `k` of block `2p + h` of token `t` at `p * 1024 +
/// (8h + k) * 64 + (2t + h) * 4`, zeros elsewhere) and their scales (`scales`: block
/// `2p + h` of token `t` at `p * 16 + 2t + h`); tokens past `n` are zeros.
fn pack_tokens(x: &[f32], n: usize, cols: usize, tt: usize, quads: &mut [u8], scales: &mut [f32]) {
    let blocks = cols.div_ceil(BLOCK);
    assert!(
        quads.len() >= blocks.div_ceil(2) * B_BYTES && scales.len() >= blocks.div_ceil(2) * TILE
    );
    quads.fill(0);
    scales.fill(0.0);
    with_local(&QX, |qx| {
        for t in 0..TOKENS.min(n - tt * TOKENS) {
            qx.quantize(&x[(tt * TOKENS + t) * cols..][..cols], ScaleSpan::Block);
            for b in 0..blocks {
                let (p, h) = (b / 2, b % 2);
                let column = 2 * t + h;
                scales[p * TILE + column] = qx.scales[b];
                for k in 0..BLOCK / 4 {
                    let at = p * B_BYTES + (8 * h + k) * 64 + column * 4;
                    for (d, &q) in quads[at..at + 4]
                        .iter_mut()
                        .zip(&qx.quants[b * BLOCK + 4 * k..][..4])
                    {
                        *d = q as u8;
                    }
                }
            }
        }
    })
}

/// A row tile's scales (16 rows of `blocks` f16 at `s`) as f32 pairs: block `2p + h` of
/// row `m` at `ws[(p * 16 + m) * 2 + h]`, zero for a missing last block.
///
/// # Safety
/// AVX-512 F and F16C; `s` must hold `16 * blocks` values and `ws` room for
/// `blocks.div_ceil(2) * 32`.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn weight_scales(s: *const u16, blocks: usize, ws: *mut f32) {
    // Eight pairs (16 blocks) of 16 rows at a time: transposed, row m's 16 scales
    // become lane m of 16 registers, one per block; interleaving two blocks' registers
    // gives the pairs of 8 rows each.
    let whole = blocks / 16 * 16;
    for b0 in (0..whole).step_by(16) {
        let mut r: [__m512; TILE] = std::array::from_fn(|m| {
            _mm512_cvtph_ps(_mm256_loadu_si256(s.add(m * blocks + b0) as *const __m256i))
        });
        transpose16(&mut r);
        // unpacklo/hi interleave rows 0-1, 4-5, 8-9, 12-13 and 2-3, 6-7, ... of the
        // two blocks; the 128-bit lanes are then put back in row order.
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second =
            _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        for j in 0..8 {
            let (lo, hi) = (
                _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]),
                _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]),
            );
            let out = ws.add((b0 / 2 + j) * TILE * 2);
            _mm512_storeu_ps(out, _mm512_permutex2var_ps(lo, first, hi));
            _mm512_storeu_ps(out.add(16), _mm512_permutex2var_ps(lo, second, hi));
        }
    }
    for b in whole..blocks.next_multiple_of(2) {
        for m in 0..TILE {
            let v = if b < blocks {
                f16::from_bits(*s.add(m * blocks + b)).to_f32()
            } else {
                0.0
            };
            *ws.add((b / 2 * TILE + m) * 2 + b % 2) = v;
        }
    }
}

/// One row tile against one token tile over every pair of blocks, chain by chain
/// ([`CHAINS`]): a chain's 16 accumulators, row `m`'s in register `m` (block `h` of
/// token `t` in lane `2t + h`). The `i`-th pair's sums go through tile `i % 4` and a
/// staging buffer on the stack (1 KiB each), and are scaled and added [`LAG`] pairs
/// later, while later products run. Returns [`fold_chains`]' sums.
///
/// # Safety
/// The thread's tiles must be [`configure`](amx::configure)d as [`config`]; `a` must
/// hold 16 rows of `pairs * 64` bytes, `lda` bytes apart; `ws` `pairs * 32` weight
/// scales (as [`weight_scales`] lays them out), `bs` `pairs * 16` token scales and
/// `bq` `pairs` `B` tiles, these two 64-byte aligned.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn row_tile(
    a: *const u8,
    lda: usize,
    ws: *const f32,
    bs: *const f32,
    bq: *const u8,
    pairs: usize,
    from_memory: bool,
) -> [__m512; TILE] {
    // The pairs chain by chain (16g + j for j, then g), so each chain's 16 rows stay in
    // registers until it is done (kept in memory, pair by pair, the chains cost 20% of
    // a decode batch: with the token tiles they overflow L1).
    let mut order = (0..CHAINS.min(pairs)).flat_map(|j| (j..pairs).step_by(CHAINS));
    // Not zeroed whole (20 KiB of stores per call): a chain is written when done, and
    // those a row of fewer than 16 pairs lacks are zeroed here.
    let mut chains = std::mem::MaybeUninit::<[[__m512; TILE]; CHAINS]>::uninit();
    let done = chains.as_mut_ptr() as *mut [__m512; TILE];
    for j in pairs.min(CHAINS)..CHAINS {
        done.add(j).write([_mm512_setzero_ps(); TILE]);
    }
    let mut acc = [_mm512_setzero_ps(); TILE];
    let mut chain = 0;
    // The staged sums: four tiles, on the stack (64-byte aligned for the vector loads),
    // and the pair each holds.
    #[repr(align(64))]
    struct Stage(#[allow(dead_code)] [i32; 4 * TILE * TILE]);
    // Each stage is written by a tile store before its loads read it.
    let mut staged = std::mem::MaybeUninit::<Stage>::uninit();
    let mut staged_pair = [0usize; 4];
    let sums = staged.as_mut_ptr() as *mut i32;
    let stage = |i: usize| sums.add(i % 4 * TILE * TILE);
    // LAG iterations past the last product drain the staged sums.
    for i in 0..pairs + LAG {
        if let Some(p) = order.next() {
            if from_memory {
                // The row tile after next (16 rows from `32 * lda` bytes on) on its way to
                // L2, 1 KiB per pair: all of it by the time it is needed, one stream in the
                // order it lies in memory. (Ahead along each row instead, a tile load
                // waited on memory for half the step.)
                let next = a.wrapping_add(2 * TILE * lda + i * TILE * 64);
                for m in 0..TILE {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(m * 64) as *const i8);
                }
            }
            // A tile load waits on each row that misses L1 (from L2, rows in L2 ran at
            // half the speed of rows in L1), and the chains visit the pairs out of their
            // order in memory (0, 16, 1, 17, ...), which the hardware prefetchers do not
            // follow: the weight rows and the token tile of the pair visited AHEAD on
            // into L1. The 1B's eight 16-token prompts in one pass: 508-514 -> 490-502
            // ms (Sapphire Rapids, 2 threads, alternating) for the token tiles.
            if let Some(q) = order.clone().nth(AHEAD - 1) {
                let (a_next, bq_next) = (a.add(q * 64), bq.add(q * B_BYTES));
                for m in 0..TILE {
                    _mm_prefetch::<_MM_HINT_T0>(a_next.add(m * lda) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(bq_next.add(m * 64) as *const i8);
                }
            }
            let (ap, bp, out) = (a.add(p * 64), bq.add(p * B_BYTES), stage(i));
            match i % 4 {
                0 => product::<0, 4, 6>(ap, lda, bp, out),
                1 => product::<1, 5, 7>(ap, lda, bp, out),
                2 => product::<2, 4, 6>(ap, lda, bp, out),
                _ => product::<3, 5, 7>(ap, lda, bp, out),
            }
            staged_pair[i % 4] = p;
        }
        if i >= LAG {
            let (d, pair) = (i - LAG, staged_pair[(i - LAG) % 4]);
            if pair % CHAINS != chain {
                done.add(chain)
                    .write(std::mem::replace(&mut acc, [_mm512_setzero_ps(); TILE]));
                chain = pair % CHAINS;
            }
            scale_add(
                &mut acc,
                stage(d),
                bs.add(pair * TILE),
                ws.add(pair * TILE * 2),
            );
        }
    }
    done.add(chain).write(acc);
    // SAFETY: every chain was written above, in the loop or as missing.
    fold_chains(&chains.assume_init())
}

/// Chains per row and token: block `b` of every group of 32 has its own
/// (`acc[(b % 32) / 2]`, lane `2t + b % 2`), as the lanes of `q8_vnni`'s lone-token
/// kernel do.
const CHAINS: usize = 16;

/// A row's 32 chains per token added in the fixed tree of [`reference`] (block `b`
/// with `b + 16`, then `b + 8`, `b + 4`, `b + 2`, `b + 1`): row `m`'s sums of token `t`
/// in lane `2t` of the result's register `m`.
#[inline(always)]
unsafe fn fold_chains(acc: &[[__m512; TILE]; CHAINS]) -> [__m512; TILE] {
    // Plain loops: `array::from_fn` closures were left out of line, their intrinsics
    // calls.
    let mut out = [_mm512_setzero_ps(); TILE];
    for (m, out) in out.iter_mut().enumerate() {
        let mut s = [_mm512_setzero_ps(); 8];
        for j in 0..8 {
            s[j] = _mm512_add_ps(acc[j][m], acc[j + 8][m]);
        }
        for j in 0..4 {
            s[j] = _mm512_add_ps(s[j], s[j + 4]);
        }
        for j in 0..2 {
            s[j] = _mm512_add_ps(s[j], s[j + 2]);
        }
        let s = _mm512_add_ps(s[0], s[1]);
        // Lane 2t: block h = 0 + block h = 1.
        *out = _mm512_add_ps(s, _mm512_permute_ps::<0b1011_0001>(s));
    }
    out
}

/// Pairs ahead whose weight rows are fetched into L1.
const AHEAD: usize = 2;

/// Pairs between a product and the vector work on its sums: the sums go out through
/// memory (a tile store, then vector loads), and a load right behind the store waits
/// for it to reach the cache.
const LAG: usize = 2;

/// One pair's sums: 16 weight rows at `a` (`lda` apart) by the `B` tile at `b`, into
/// tile `C` and out to `out` (16 x 16 i32).
///
/// # Safety
/// As [`row_tile`].
#[inline(always)]
unsafe fn product<const C: u8, const A: u8, const B: u8>(
    a: *const u8,
    lda: usize,
    b: *const u8,
    out: *mut i32,
) {
    amx::load::<A>(a, lda);
    amx::load::<B>(b, 64);
    amx::zero::<C>();
    amx::dot_i8::<C, A, B>();
    amx::store::<C>(out as *mut u8, 64);
}

/// `acc[m] = fma(float(sums[m]), d_x * d_w[m], acc[m])` for the 16 rows of a pair:
/// `sums` 16 x 16 i32 (`[row][lane]`), `dx` the lanes' token scales, `dw` each row's
/// two block scales (broadcast to the lanes of their block).
///
/// # Safety
/// AVX-512 F/DQ; `sums` must hold 256 values, `dx` 16 and `dw` 32, `sums` and `dx`
/// 64-byte aligned.
#[inline(always)]
unsafe fn scale_add(acc: &mut [__m512; TILE], sums: *const i32, dx: *const f32, dw: *const f32) {
    let dx = _mm512_load_ps(dx);
    for (m, acc) in acc.iter_mut().enumerate() {
        let w = _mm512_broadcast_f32x2(_mm_castpd_ps(_mm_load_sd(dw.add(2 * m) as *const f64)));
        let scale = _mm512_mul_ps(dx, w);
        let sum = _mm512_cvtepi32_ps(_mm512_load_si512(sums.add(m * TILE) as *const _));
        *acc = _mm512_fmadd_ps(sum, scale, *acc);
    }
}

/// A row tile's sums ([`fold_chains`]: `[row]` registers, token `t` in lane `2t`) into
/// `y`: token `t`'s first `rows` values at `y + t * ldy`, for the first `toks` tokens.
///
/// # Safety
/// AVX-512 F; `y` must have room for them.
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(
    mut acc: [__m512; TILE],
    rows: usize,
    toks: usize,
    y: *mut f32,
    ldy: usize,
) {
    transpose16(&mut acc);
    let mask: __mmask16 = if rows >= TILE { !0 } else { (1 << rows) - 1 };
    for t in 0..toks {
        _mm512_mask_storeu_ps(y.add(t * ldy), mask, acc[2 * t]);
    }
}

/// What [`matmul`] computes for one output, in plain Rust: row `r` of a q8_0 matrix
/// (`blocks` blocks) against a token quantised as [`QuantX`] does. Each block's exact
/// sum, scaled, goes into one of 32 chains, `acc[b % 32] = fma(float(sum_b), d_x[b] *
/// d_w[b], acc[b % 32])`, blocks in order; the chains are then added in a fixed tree:
/// `b` with `b + 16`, then `b + 8`, `b + 4`, `b + 2` and `b + 1`.
#[cfg(test)]
pub(super) fn reference(
    quants: &[i8],
    scales: &[u16],
    blocks: usize,
    r: usize,
    qx: &QuantX,
) -> f32 {
    let mut acc = [0f32; 32];
    for b in 0..blocks {
        let w = &quants[(r * blocks + b) * BLOCK..][..BLOCK];
        let sum: i32 = w
            .iter()
            .zip(&qx.quants[b * BLOCK..][..BLOCK])
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum();
        let scale = qx.scales[b] * f16::from_bits(scales[r * blocks + b]).to_f32();
        acc[b % 32] = (sum as f32).mul_add(scale, acc[b % 32]);
    }
    let mut width = 16;
    while width > 0 {
        for b in 0..width {
            acc[b] += acc[b + width];
        }
        width /= 2;
    }
    acc[0]
}
