//! `Y = X W^T` for prompt batches on AMX tiles ([`super::amx`]): bf16 weights on
//! `tdpbf16ps`, with the activations rounded to bf16 (f32 and f16 weights keep their
//! exact FMA GEMM).
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
//! `olmo_format::PANEL_COLS`; a row-major one is one panel), so a block's slice of the
//! weights (`NB x 2048` bf16, 1 MiB) stays in L2 while every pair of token tiles
//! meets it. Four accumulator tiles hold a 32-row by 32-token result; between panels
//! they go to a per-task f32 buffer, and after the last one, transposed, to `Y`.

use std::cell::RefCell;

use half::bf16;

use super::amx::{self, TileConfig};
use super::matrix::{Matrix, MatrixData};
use super::tasks::{for_each_row_block, for_each_task, grow, with_local, SendPtr};

/// Rows of a tile: weight rows per strip, tokens per token tile.
const TILE: usize = 16;
/// bf16 columns per tile row (64 bytes).
const CHUNK: usize = 32;
/// u16 elements of one packed activation tile.
const ACT_TILE: usize = TILE * CHUNK;
/// Below this many tokens the AVX-512 kernels take the batch.
pub const MIN_BATCH: usize = 8;
/// Weight rows per task at most (a multiple of 2 [`TILE`]s).
const NB: usize = 256;
/// Weight bytes of a task's slice of one panel, at most.
const SLICE_BYTES: usize = 1 << 20;

/// Tile numbers: accumulators C (strip a, token tile b) in 0-3, weights in 4-5,
/// activations in 6-7.
fn config() -> TileConfig {
    TileConfig::new(&[4, 5], &[6, 7], 64)
}

/// Whether [`matmul_bf16`] takes `w`: bf16 and every panel a whole number of tiles
/// wide.
pub fn fits(w: &Matrix) -> bool {
    matches!(w.data, MatrixData::BF16(_)) && w.cols.is_multiple_of(CHUNK) && (w.is_row_major() || w.panel.is_multiple_of(CHUNK))
}

thread_local! {
    /// The calling thread's packed activations, grown to the largest call and reused.
    static ACTS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `y = x W^T` for a bf16 `W` that [`fits`]: `x` is `n x w.cols`, `y` `n x w.rows`.
///
/// # Safety
/// [`amx::available`] must be true; `w` must hold every row (`Matrix::check`), `x`
/// `n * w.cols` values and `y` `n * w.rows`.
pub unsafe fn matmul_bf16(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    let MatrixData::BF16(data) = w.data else { unreachable!("matmul_bf16 takes bf16") };
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
        // Per task: a padded copy of a last strip shorter than a tile, the staging of
        // four result tiles, and the result between panels.
        let pad = TILE * k;
        let stage = 4 * TILE * TILE;
        let partial = nb_max * token_tiles * TILE;
        let bytes = (pad * 2 + (stage + partial) * 4).next_multiple_of(64);
        for_each_row_block(rows, nb_max, bytes, |r0, nb, scratch| {
            let (pad_bytes, rest) = scratch.split_at_mut(pad * 2);
            // SAFETY: `scratch` is 64-byte aligned and `pad * 2` a multiple of 64
            // (`k` is a multiple of 32), so `rest` is 4-byte aligned f32 storage.
            let rest = unsafe { std::slice::from_raw_parts_mut(rest.as_mut_ptr() as *mut f32, stage + partial) };
            let (stage, partial) = rest.split_at_mut(stage);
            let view = Weights { data: data.as_ptr(), rows, cols: k, panel };
            // SAFETY: as for `matmul_bf16`; this task alone writes output rows
            // `r0 .. r0 + nb` of each token in `y`.
            unsafe {
                amx::configure(&config());
                task(view, r0, nb, acts, n, pad_bytes, stage, partial, yp.get(), rows);
                amx::release();
            }
        });
    })
}

/// Where a bf16 matrix's rows are: column panels of `panel` (the last narrower),
/// each row-major.
#[derive(Clone, Copy)]
struct Weights {
    data: *const u16,
    rows: usize,
    cols: usize,
    panel: usize,
}

impl Weights {
    /// The first of panel `p`'s columns and its width.
    fn panel(&self, p: usize) -> (usize, usize) {
        let c0 = p * self.panel;
        (c0, self.panel.min(self.cols - c0))
    }

    /// Row `r`'s element at column `c0` (the start of its panel) and the row stride in
    /// bytes within that panel.
    unsafe fn row(&self, r: usize, c0: usize, width: usize) -> (*const u8, usize) {
        (self.data.add(c0 * self.rows + r * width) as *const u8, width * 2)
    }
}

/// Converts tokens `tt * 16 ..` of `x` to bf16 (rounded to nearest, as `tdpbf16ps`
/// expects its inputs) in the pair order of a `B` tile, one tile per 32 columns;
/// tokens past `n` are zeros.
fn pack_tokens(x: &[f32], n: usize, k: usize, tt: usize, dst: &mut [u16]) {
    for t in 0..TILE {
        let token = tt * TILE + t;
        for c in (0..k).step_by(2) {
            let (lo, hi) = if token < n {
                let xr = &x[token * k..][..k];
                (bf16::from_f32(xr[c]).to_bits(), bf16::from_f32(xr[c + 1]).to_bits())
            } else {
                (0, 0)
            };
            let at = (c / CHUNK) * ACT_TILE + ((c % CHUNK) / 2 * TILE + t) * 2;
            dst[at] = lo;
            dst[at + 1] = hi;
        }
    }
}

/// Rows `r0 .. r0 + nb` against every token: panels outside, then pairs of token
/// tiles, then pairs of weight strips.
#[allow(clippy::too_many_arguments)]
unsafe fn task(w: Weights, r0: usize, nb: usize, acts: &[u16], n: usize, pad: &mut [u8], stage: &mut [f32], partial: &mut [f32], y: *mut f32, ldy: usize) {
    let (k, chunks) = (w.cols, w.cols / CHUNK);
    let strips = nb.div_ceil(TILE);
    let token_tiles = n.div_ceil(TILE);
    // A strip shorter than a tile: its rows copied, zero rows after them, as a
    // row-major matrix of its own.
    let short = nb % TILE;
    if short > 0 {
        let pad16: &mut [u16] = std::slice::from_raw_parts_mut(pad.as_mut_ptr() as *mut u16, TILE * k);
        pad16.fill(0);
        let first = r0 + nb - short;
        for p in 0..k.div_ceil(w.panel) {
            let (c0, width) = w.panel(p);
            for j in 0..short {
                let (src, _) = w.row(first + j, c0, width);
                std::ptr::copy_nonoverlapping(src as *const u16, pad16.as_mut_ptr().add(j * k + c0), width);
            }
        }
    }
    let padded = Weights { data: pad.as_ptr() as *const u16, rows: TILE, cols: k, panel: k };
    // Strip `s`'s pointer and stride at panel `p`.
    let strip = |s: usize, p: usize| -> (*const u8, usize) {
        let (c0, width) = w.panel(p);
        if short > 0 && s == strips - 1 {
            let (ptr, stride) = padded.row(0, 0, k);
            (ptr.add(c0 * 2), stride)
        } else {
            w.row(r0 + s * TILE, c0, width)
        }
    };
    let panels = k.div_ceil(w.panel);
    let partial = partial.as_mut_ptr();
    for p in 0..panels {
        let (c0, width) = w.panel(p);
        let (first, last) = (p == 0, p + 1 == panels);
        let mut tt = 0;
        while tt < token_tiles {
            let tokens = 2.min(token_tiles - tt);
            let b0 = acts.as_ptr().add((tt * chunks + c0 / CHUNK) * ACT_TILE) as *const u8;
            let b1 = b0.wrapping_add(chunks * ACT_TILE * 2);
            let mut s = 0;
            while s < strips {
                let pair = 2.min(strips - s);
                let a0 = strip(s, p);
                let a1 = if pair == 2 { strip(s + 1, p) } else { a0 };
                // The four accumulators of strips s, s + 1 by token tiles tt, tt + 1
                // in `partial`: [strip][token tile][16 x 16].
                let acc = |ds: usize, dt: usize| partial.wrapping_add(((s + ds) * token_tiles + tt + dt) * TILE * TILE) as *mut u8;
                let accs = [acc(0, 0), acc(0, 1), acc(1, 0), acc(1, 1)];
                let out = if last { stage.as_mut_ptr() as *mut u8 } else { accs[0] };
                let outs = if last { [0, 1, 2, 3].map(|i| out.add(i * TILE * TILE * 4)) } else { accs };
                match (pair, tokens) {
                    (2, 2) => block::<true, true>(a0, a1, b0, b1, width / CHUNK, first, accs, outs),
                    (2, _) => block::<true, false>(a0, a1, b0, b1, width / CHUNK, first, accs, outs),
                    (_, 2) => block::<false, true>(a0, a1, b0, b1, width / CHUNK, first, accs, outs),
                    _ => block::<false, false>(a0, a1, b0, b1, width / CHUNK, first, accs, outs),
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
            tt += tokens;
        }
    }
}

/// One panel's worth of `C += A B` for weight strips `a0` (and `a1` if `TWO_A`) by token
/// tiles `b0` (and `b1` if `TWO_B`), `chunks` tiles deep: the accumulators start from
/// zero (`first`) or from `accs`, and end in `outs` (16 rows of 64 bytes each).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<const TWO_A: bool, const TWO_B: bool>(
    a0: (*const u8, usize),
    a1: (*const u8, usize),
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
    for ch in 0..chunks {
        amx::load::<4>(a0.0.add(ch * CHUNK * 2), a0.1);
        amx::load::<6>(b0.add(ch * ACT_TILE * 2), CHUNK * 2);
        if TWO_B {
            amx::load::<7>(b1.add(ch * ACT_TILE * 2), CHUNK * 2);
        }
        amx::dot_bf16::<0, 4, 6>();
        if TWO_B {
            amx::dot_bf16::<1, 4, 7>();
        }
        if TWO_A {
            amx::load::<5>(a1.0.add(ch * CHUNK * 2), a1.1);
            amx::dot_bf16::<2, 5, 6>();
            if TWO_B {
                amx::dot_bf16::<3, 5, 7>();
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
