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
//! The products are taken transposed, `Y^T = W X^T`, so that the weights are the `A`
//! operand, which a tile loads straight from the map: 16 rows of 32 bf16 (64 bytes),
//! one row stride apart, with no packing pass over the weights. The activations are
//! the `B` operand, packed once per call in the pair order the instruction reads
//! (a tile per 16 tokens and 32 columns: `[pair][token][2]`, 1 KiB), which costs a
//! pass over `X` only.
//!
//! Each parallel task owns a block of up to [`NB`] weight rows. It walks the columns
//! one panel at a time (a float matrix is stored in column panels of
//! `olmo_format::PANEL_COLS`; a row-major one is one panel): it copies its rows' slice
//! of the panel into whole tiles (16 rows of 64 bytes, contiguous: a tile load then
//! reads 1 KiB in a row rather than 16 lines a row stride apart, which all fall in one
//! L1 set when the stride is 4 KiB), up to 1 MiB that stays in L2 while every pair of
//! token tiles meets it. Four accumulator tiles hold a 32-row by 32-token result;
//! between panels they go to a per-task f32 buffer, and after the last one,
//! transposed, to `Y`.

use std::cell::RefCell;

use super::amx::{self, TileConfig};
use super::avx2::q8_row_to_f32;
use super::matrix::{Matrix, MatrixData};
use super::q4_avx2::dequantize_group;
use super::tasks::{for_each_row_block, for_each_task, grow, with_local, SendPtr};

/// Rows of a tile: weight rows per strip, tokens per token tile.
const TILE: usize = 16;
/// bf16 columns per tile row (64 bytes).
const CHUNK: usize = 32;
/// u16 elements of one packed activation tile.
const ACT_TILE: usize = TILE * CHUNK;
/// Below this many tokens the AVX-512 kernels take the batch.
pub const MIN_BATCH: usize = 8;
/// Tiles deep per slice of the sweep (see `task`): a whole 2048-column panel. 8 and
/// 16 (the token tiles' slice in L1, the accumulators reloaded per slice) measured no
/// faster on one Sapphire Rapids core (kernels bench, 16384 x 2048, batch 256:
/// 574-764 GFLOP/s against 796-917 whole, on a machine busy with other work).
const KBLOCK: usize = 64;
/// Chunks ahead whose four tiles the sweep prefetches into L1 (tile loads do not
/// start the hardware prefetchers' streams as ordinary loads do): 1640-1769 GFLOP/s
/// against 1538-1586 without (kernels bench, 16384 x 2048, batch 256, 2 threads,
/// Sapphire Rapids).
const PREFETCH_AHEAD: usize = 2;
/// Weight rows per task at most (a multiple of 2 [`TILE`]s).
const NB: usize = 256;
/// Weight bytes of a task's slice of one panel, at most.
const SLICE_BYTES: usize = 1 << 20;

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
        && (w.is_row_major() || w.panel.is_multiple_of(CHUNK))
}

thread_local! {
    /// The calling thread's packed activations, grown to the largest call and reused.
    static ACTS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `y = x W^T` for a `W` that [`fits`]: `x` is `n x w.cols`, `y` `n x w.rows`.
///
/// # Safety
/// [`amx::available`] and AVX2/FMA/F16C must be true; `w` must hold every row
/// (`Matrix::check`), `x` `n * w.cols` values and `y` `n * w.rows`.
pub unsafe fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (rows, k) = (w.rows, w.cols);
    let chunks = k / CHUNK;
    let token_tiles = n.div_ceil(TILE);
    with_local(&ACTS, |acts| {
        grow(acts, token_tiles * chunks * ACT_TILE);
        let acts = &mut acts[..token_tiles * chunks * ACT_TILE];
        let ap = SendPtr(acts.as_mut_ptr());
        for_each_task(token_tiles, |tt| {
            // SAFETY: token tile `tt` alone writes its own `chunks` tiles.
            let dst = unsafe { std::slice::from_raw_parts_mut(ap.get().add(tt * chunks * ACT_TILE), chunks * ACT_TILE) };
            pack_tokens(x, n, k, tt, dst);
        });
        let acts = &*acts;
        let yp = SendPtr(y.as_mut_ptr());
        let panel = w.panel.min(k);
        let nb_max = (SLICE_BYTES / (2 * panel)).clamp(2 * TILE, NB) / (2 * TILE) * (2 * TILE);
        // Per task: its rows' slice of a panel as tiles, the staging of four result
        // tiles, the result between panels, and eight rows dequantised to f32.
        let packed = nb_max.next_multiple_of(TILE) * panel;
        let stage = 4 * TILE * TILE;
        let partial = nb_max * token_tiles * TILE;
        let rows8 = if w.data.is_quantised() { 8 * k } else { 0 };
        let bytes = packed * 2 + (stage + partial + rows8) * 4;
        for_each_row_block(rows, nb_max, bytes, |r0, nb, scratch| {
            let (packed_bytes, rest) = scratch.split_at_mut(packed * 2);
            // SAFETY: `scratch` is 64-byte aligned and `packed * 2` a multiple of 64
            // (`panel` is a multiple of 32), so both parts are aligned for their types.
            let (packed, rest) = unsafe {
                (
                    std::slice::from_raw_parts_mut(packed_bytes.as_mut_ptr() as *mut u16, packed),
                    std::slice::from_raw_parts_mut(rest.as_mut_ptr() as *mut f32, stage + partial + rows8),
                )
            };
            let (stage, rest) = rest.split_at_mut(stage);
            let (partial, rows8) = rest.split_at_mut(partial);
            // SAFETY: as for `matmul`; this task alone writes output rows `r0 .. r0 + nb`
            // of each token in `y`.
            unsafe {
                amx::configure(&config());
                task(w, r0, nb, acts, n, packed, rows8, stage, partial, yp.get(), rows);
                amx::release();
            }
        });
    })
}

/// Converts tokens `tt * 16 ..` of `x` to bf16 (rounded to nearest even, as
/// `half::bf16::from_f32` rounds) in the pair order of a `B` tile, one tile per 32
/// columns; tokens past `n` are zeros.
fn pack_tokens(x: &[f32], n: usize, k: usize, tt: usize, dst: &mut [u16]) {
    assert!(dst.len() >= k / CHUNK * ACT_TILE && x.len() >= n * k);
    for t in 0..TILE {
        let token = tt * TILE + t;
        if token < n {
            // SAFETY: AVX-512 F and BW are present (`Kernels::Amx` needs them); the row
            // has `k` values and `dst` a tile per 32 of them (asserted).
            unsafe { pack_row(&x[token * k..][..k], t, dst) }
        } else {
            for ch in 0..k / CHUNK {
                for p in 0..TILE {
                    let at = ch * ACT_TILE + (p * TILE + t) * 2;
                    dst[at..at + 2].fill(0);
                }
            }
        }
    }
}

/// One token's row into column `t` of its tiles: 32 values become 16 pairs, which
/// go 16 pairs apart (a scatter of 16 lanes).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_row(row: &[f32], t: usize, dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let offsets = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    let base = dst.as_mut_ptr().add(2 * t) as *mut i32;
    for (ch, values) in row.chunks_exact(CHUNK).enumerate() {
        let lo = to_bf16(_mm512_loadu_ps(values.as_ptr()));
        let hi = to_bf16(_mm512_loadu_ps(values.as_ptr().add(16)));
        // 32 bf16 in column order, as 16 pairs: pair j is value 2j (16-bit element 4j
        // of `lo` and `hi` side by side, `hi` from element 32) and value 2j + 1 (4j + 2).
        let index = _mm512_setr_epi32(
            0x0002_0000, 0x0006_0004, 0x000a_0008, 0x000e_000c, 0x0012_0010, 0x0016_0014, 0x001a_0018, 0x001e_001c,
            0x0022_0020, 0x0026_0024, 0x002a_0028, 0x002e_002c, 0x0032_0030, 0x0036_0034, 0x003a_0038, 0x003e_003c,
        );
        let pairs = _mm512_permutex2var_epi16(lo, index, hi);
        _mm512_i32scatter_epi32::<4>(base.add(ch * ACT_TILE / 2), offsets, pairs);
    }
}

/// Sixteen f32 rounded to bf16 (to nearest, ties to even; NaNs stay NaNs), in the low
/// 16 bits of each 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn to_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
    let quiet = _mm512_srli_epi32::<16>(_mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000)));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_mask_mov_epi32(rounded, nan, quiet)
}

/// Rows `r0 .. r0 + nb` against every token: panels outside, then pairs of token
/// tiles, then pairs of weight strips.
#[allow(clippy::too_many_arguments)]
unsafe fn task(w: &Matrix, r0: usize, nb: usize, acts: &[u16], n: usize, packed: &mut [u16], rows8: &mut [f32], stage: &mut [f32], partial: &mut [f32], y: *mut f32, ldy: usize) {
    let chunks = w.cols / CHUNK;
    let strips = nb.div_ceil(TILE);
    let token_tiles = n.div_ceil(TILE);
    let panels = w.panels().count();
    let partial = partial.as_mut_ptr();
    for (p, (c0, panel)) in w.panels().enumerate() {
        let depth = panel.cols / CHUNK;
        pack_weights(&panel, r0, nb, packed, rows8);
        let strip = |s: usize| packed.as_ptr().add(s * depth * ACT_TILE) as *const u8;
        let mut tt = 0;
        while tt < token_tiles {
            let tokens = 2.min(token_tiles - tt);
            // A slice of KBLOCK tiles deep at a time: the two token tiles' part
            // (2 x 8 KiB) stays in L1 while every strip pair of the block meets it.
            let mut cb = 0;
            while cb < depth {
                let kd = KBLOCK.min(depth - cb);
                let (first, last) = (p == 0 && cb == 0, p + 1 == panels && cb + kd == depth);
                let b0 = acts.as_ptr().add((tt * chunks + c0 / CHUNK + cb) * ACT_TILE) as *const u8;
                let b1 = b0.wrapping_add(chunks * ACT_TILE * 2);
                let mut s = 0;
                while s < strips {
                    let pair = 2.min(strips - s);
                    let (a0, a1) = (strip(s).add(cb * ACT_TILE * 2), strip(s + pair - 1).add(cb * ACT_TILE * 2));
                    // The four accumulators of strips s, s + 1 by token tiles tt, tt + 1
                    // in `partial`: [strip][token tile][16 x 16].
                    let acc = |ds: usize, dt: usize| partial.wrapping_add(((s + ds) * token_tiles + tt + dt) * TILE * TILE) as *mut u8;
                    let accs = [acc(0, 0), acc(0, 1), acc(1, 0), acc(1, 1)];
                    let out = stage.as_mut_ptr() as *mut u8;
                    let outs = if last { [0, 1, 2, 3].map(|i| out.add(i * TILE * TILE * 4)) } else { accs };
                    match (pair, tokens) {
                        (2, 2) => block::<true, true>(a0, a1, b0, b1, kd, first, accs, outs),
                        (2, _) => block::<true, false>(a0, a1, b0, b1, kd, first, accs, outs),
                        (_, 2) => block::<false, true>(a0, a1, b0, b1, kd, first, accs, outs),
                        _ => block::<false, false>(a0, a1, b0, b1, kd, first, accs, outs),
                    }
                    if last {
                        // Tile (ds, dt) holds [row][token]: transposed into `y`.
                        for (i, (ds, dt)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                            if ds >= pair || dt >= tokens {
                                continue;
                            }
                            let rows_here = TILE.min(nb - (s + ds) * TILE);
                            let toks = TILE.min(n - (tt + dt) * TILE);
                            let tile = &stage[i * TILE * TILE..][..TILE * TILE];
                            for t in 0..toks {
                                let yt = y.add(((tt + dt) * TILE + t) * ldy + r0 + (s + ds) * TILE);
                                for j in 0..rows_here {
                                    *yt.add(j) = tile[j * TILE + t];
                                }
                            }
                        }
                    }
                    s += pair;
                }
                cb += kd;
            }
            tt += tokens;
        }
    }
}

/// Rows `r0 .. r0 + nb` of a row-major `w` (one panel of the matrix) into `packed`
/// as bf16 `A` tiles, `[strip][chunk][16 rows][32]`, zero rows past `nb`: bf16 rows
/// copied, quantised ones dequantised to f32 in `rows8` (eight at a time) and rounded.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn pack_weights(w: &Matrix, r0: usize, nb: usize, packed: &mut [u16], rows8: &mut [f32]) {
    let k = w.cols;
    let depth = k / CHUNK;
    let base = packed.as_mut_ptr();
    let dst = |r: usize| base.add(r / TILE * depth * ACT_TILE + r % TILE * CHUNK);
    for r in (0..nb.next_multiple_of(TILE)).step_by(8) {
        match w.data {
            MatrixData::BF16(data) => {
                for j in r..(r + 8).min(nb) {
                    let src = data.as_ptr().add((r0 + j) * k);
                    for ch in 0..depth {
                        std::ptr::copy_nonoverlapping(src.add(ch * CHUNK), dst(j).add(ch * ACT_TILE), CHUNK);
                    }
                }
            }
            MatrixData::Q8_0 { quants, scales } => {
                for j in r..(r + 8).min(nb) {
                    q8_row_to_f32(quants, scales, k, r0 + j, &mut rows8[..k]);
                    row_to_tiles(&rows8[..k], dst(j));
                }
            }
            MatrixData::Q4_0(tiles) | MatrixData::Q4_K(tiles) if r < nb => {
                let (dtype, _) = w.data.q4().expect("a 4-bit matrix");
                // `r0` and `r` are multiples of 8: whole tile groups.
                dequantize_group(dtype, tiles, k, (r0 + r) / 8, &mut rows8[..8 * k]);
                for j in r..(r + 8).min(nb) {
                    row_to_tiles(&rows8[(j - r) * k..][..k], dst(j));
                }
            }
            MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => {}
            MatrixData::F32(_) | MatrixData::F16(_) => unreachable!("`fits` leaves f32 and f16 to the FMA GEMM"),
        }
        for j in r.max(nb)..r + 8 {
            for ch in 0..depth {
                std::ptr::write_bytes(dst(j).add(ch * ACT_TILE), 0, CHUNK);
            }
        }
    }
}

/// One f32 row rounded to bf16 into its tiles' rows (`dst`, tiles [`ACT_TILE`] apart).
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

/// One panel's worth of `C += A B` for packed weight strips `a0` (and `a1` if `TWO_A`) by token
/// tiles `b0` (and `b1` if `TWO_B`), `chunks` tiles deep: the accumulators start from
/// zero (`first`) or from `accs`, and end in `outs` (16 rows of 64 bytes each).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<const TWO_A: bool, const TWO_B: bool>(
    a0: *const u8,
    a1: *const u8,
    b0: *const u8,
    b1: *const u8,
    chunks: usize,
    first: bool,
    accs: [*mut u8; 4],
    outs: [*mut u8; 4],
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
        amx::load::<0>(accs[0], ROW);
        if TWO_B {
            amx::load::<1>(accs[1], ROW);
        }
        if TWO_A {
            amx::load::<2>(accs[2], ROW);
            if TWO_B {
                amx::load::<3>(accs[3], ROW);
            }
        }
    }
    let tile = |base: *const u8, ch: usize| base.add(ch * ACT_TILE * 2);
    if TWO_A && TWO_B {
        // Tile registers are not renamed: a load waits until every product reading
        // the register's last contents is done. Each operand is reloaded for the next
        // chunk right after its last product of this one, so the loads run under the
        // remaining products instead of between chunks.
        amx::load::<4>(tile(a0, 0), CHUNK * 2);
        amx::load::<6>(tile(b0, 0), CHUNK * 2);
        amx::load::<5>(tile(a1, 0), CHUNK * 2);
        amx::load::<7>(tile(b1, 0), CHUNK * 2);
        for ch in 0..chunks {
            let next = ch + 1 < chunks;
            if ch + PREFETCH_AHEAD < chunks {
                for t in [a0, a1, b0, b1] {
                    let p = tile(t, ch + PREFETCH_AHEAD);
                    for line in 0..16 {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(line * 64) as *const i8);
                    }
                }
            }
            amx::dot_bf16::<0, 4, 6>();
            amx::dot_bf16::<2, 5, 6>();
            if next {
                amx::load::<6>(tile(b0, ch + 1), CHUNK * 2);
            }
            amx::dot_bf16::<1, 4, 7>();
            if next {
                amx::load::<4>(tile(a0, ch + 1), CHUNK * 2);
            }
            amx::dot_bf16::<3, 5, 7>();
            if next {
                amx::load::<7>(tile(b1, ch + 1), CHUNK * 2);
                amx::load::<5>(tile(a1, ch + 1), CHUNK * 2);
            }
        }
    } else {
        for ch in 0..chunks {
            amx::load::<4>(tile(a0, ch), CHUNK * 2);
            amx::load::<6>(tile(b0, ch), CHUNK * 2);
            if TWO_B {
                amx::load::<7>(tile(b1, ch), CHUNK * 2);
            }
            amx::dot_bf16::<0, 4, 6>();
            if TWO_B {
                amx::dot_bf16::<1, 4, 7>();
            }
            if TWO_A {
                amx::load::<5>(tile(a1, ch), CHUNK * 2);
                amx::dot_bf16::<2, 5, 6>();
                if TWO_B {
                    amx::dot_bf16::<3, 5, 7>();
                }
            }
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
