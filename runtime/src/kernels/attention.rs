//! Attention of a prompt batch as blocked matrix products with an online softmax
//! (flash-attention style).
//!
//! [`attend_prompt`] takes one KV head and a block of consecutive query rows (the
//! group's query heads of each, `group * rows` query vectors, at most
//! [`QUERY_VECTORS`]) and walks the keys those rows see in blocks of [`KEY_BLOCK`] (256
//! on tiles): each block's keys and values are widened to f32 once (from the cache, or
//! from the batch's own rows), the block's scores are one product `S = K Q^T` (keys x
//! queries), a running max and sum per query rescale what was accumulated so far, and
//! the block's `P V` is added into the output. No score row is ever materialised whole.
//!
//! Everything runs with the queries across the SIMD lanes: `Q^T` (head_dim x queries,
//! scaled by `1/sqrt(head_dim)` as it is packed), `S` (keys x queries) and `O^T`
//! (head_dim x queries), so the max, the exponentials, the sums and the rescaling are
//! all vector operations, and both products are the same micro-kernel
//! `C[i, m..] += sum_t A[i, t] B[t, m..]`: A is the key block (rows keys, t dims) for
//! the scores and the value block read transposed (rows dims, t keys) for the output.
//! On AVX-512 it is 8 x 32 (16 zmm accumulators), on AVX2 8 x 16. Where the batch's
//! matrix products run on AMX tiles with rounded activations, both products run on
//! tiles too, their operands rounded to bf16 ([`super::attention_amx`]): on the 1B
//! (bf16, Sapphire Rapids, 2 threads, `prompt_floor`) 2048-token prompts went from
//! 430 to 516-546 tok/s, 512 tokens from 566 to 575-585.
//!
//! Query `p` sees the keys at positions `(p + 1 - positions, p]` (at least 0): the
//! layer's cache holds `positions` rows (every position, or a sliding window's ring),
//! exactly as the per-row path's `seen` rows. Keys before the batch come from the
//! cache (position `j` at ring row `j % positions`), the batch's own keys from its rows
//! (rounded to the cache's element type, as storing and reading them back would); the
//! caller files the batch's keys in the cache after every block of the layer is done.

use std::cell::RefCell;
use std::ops::Range;

use super::kv_element::KvElement;
use super::tasks::{grow, grow_aligned, with_local};
use super::Kernels;

/// Query vectors (rows times the group's heads) one call takes at most.
pub const QUERY_VECTORS: usize = 64;
/// Keys per block.
pub const KEY_BLOCK: usize = 64;
/// Keys per block on tiles: each block rescales `O^T` and loads and stores its tiles
/// once, which 256 keys share four times as widely as 64. 1B q8_0, Sapphire Rapids,
/// 2 threads, `prompt_floor`, the attention's time against the MLP's in the same
/// runs: 4096 tokens 0.74-0.77 -> 0.68-0.69, 512 tokens level (0.19-0.21); 128 keys
/// 0.69-0.70, 512 keys 0.71-0.72 (whose scores, 128 KiB, leave L1).
const TILE_KEY_BLOCK: usize = 256;
/// Columns of the micro-kernel's tile; `S`, `Q^T` and `O^T` are padded to a multiple.
const LANES: usize = 32;
/// Rows of the micro-kernel's tile; the key block and the rows of the value block
/// and of `O^T` (`head_dim`) are padded to a multiple.
const TILE_ROWS: usize = 8;

/// A finite start for the running max: a query whose keys so far were all masked
/// rescales by `exp(0) = 1` instead of `exp(-inf - -inf)`.
const NO_MAX: f32 = -1e30;

/// Query rows per call for `group` query heads per KV head.
pub fn rows_per_block(group: usize) -> usize {
    (QUERY_VECTORS / group.max(1)).max(1)
}

/// One KV head's view of a prompt batch and of its slot's cache for one layer.
pub struct PromptAttention<'a, E> {
    /// The batch's rows (`ld` apart): this KV head's group of query heads at `q`
    /// (`group * head_dim` values, normalised and rotated), its key at `k` and value at
    /// `v`.
    pub batch: &'a [f32],
    pub ld: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub group: usize,
    pub head_dim: usize,
    /// The head's cached keys and values, `positions` rows of `head_dim`: position `j`
    /// (before `start`) at row `j % positions`.
    pub keys: &'a [E],
    pub values: &'a [E],
    pub positions: usize,
    /// The position of the batch's first row.
    pub start: usize,
    /// `1 / sqrt(head_dim)`
    pub scale: f32,
    /// The head's keys and values as AMX tiles read them, made once per layer by
    /// [`fill_tile_kv`]: given (where [`tiles_possible`]), the products run on tiles
    /// with bf16 operands ([`super::attention_amx`]). The caller gives them where the
    /// batch's matrix products round their activations too.
    pub tile_kv: Option<TileKv<'a>>,
}

/// One KV head's keys and values at positions `lo .. hi` (every key a prompt run's
/// query blocks see), rounded as the cache holds them and then to bf16: `keys` a row
/// of `head_dim` per position, `values` transposed (a row of `ld` per dim), so that
/// each key block's tiles are read in place. Zeros past `hi`.
#[derive(Clone, Copy)]
pub struct TileKv<'a> {
    pub keys: &'a [u16],
    pub values: &'a [u16],
    pub lo: usize,
    pub ld: usize,
}

/// u16 elements of a head's [`TileKv`] keys and values for positions `lo .. hi`, and
/// the values' row length: room for the last key block's padding past `hi`.
pub fn tile_kv_sizes(head_dim: usize, lo: usize, hi: usize) -> (usize, usize, usize) {
    let n = hi - lo;
    let ld = (n + 31).next_multiple_of(32);
    ((n + 15).next_multiple_of(16) * head_dim, head_dim * ld, ld)
}

/// Whether [`attend_prompt`] can run on tiles under `k` for this `head_dim`.
pub fn tiles_possible(k: Kernels, head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        k.amx() && head_dim.is_multiple_of(super::attention_amx::DEPTH)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, head_dim);
        false
    }
}

/// Fills one head's [`TileKv`] parts for positions `lo .. hi` of `a` (its batch rows
/// from `a.start`, cached rows before): `keys` and `values` as [`tile_kv_sizes`]
/// gives them, 64-byte aligned. The head's cache is `cache` (keys, values: `a.keys`,
/// `a.values` and `a.tile_kv` are not read): the cached positions are read from it,
/// and each batch row is filed in it, rounded to `E`, once its block has been read,
/// so that the batch is read from memory once (the tiles never read the cache, and a
/// ring row a batch row replaces belongs to an earlier position, read by then).
pub fn fill_tile_kv<E: KvElement>(
    k: Kernels,
    a: &PromptAttention<E>,
    cache: (&mut [E], &mut [E]),
    lo: usize,
    hi: usize,
    keys: &mut [u16],
    values: &mut [u16],
) {
    let d = a.head_dim;
    let (key_len, value_len, ld) = tile_kv_sizes(d, lo, hi);
    let (cache_keys, cache_values) = cache;
    assert!(tiles_possible(k, d) && lo <= hi && keys.len() >= key_len && values.len() >= value_len);
    assert!(keys.as_ptr().align_offset(64) == 0 && values.as_ptr().align_offset(64) == 0);
    // Cached positions (before `start`) still in the ring, batch ones in the batch.
    assert!(hi <= a.start + a.batch.len() / a.ld && lo + a.positions >= a.start && a.k + d <= a.ld && a.v + d <= a.ld);
    assert!(cache_keys.len() >= a.positions * d && cache_values.len() >= a.positions * d);
    #[cfg(target_arch = "x86_64")]
    with_local(&SCRATCH, |s| {
        use super::attention_amx::{pack_rows, transpose_rows, TILE};
        grow(&mut s.kb, TILE * d);
        grow(&mut s.vb, TILE * d);
        for j0 in (lo..hi).step_by(TILE) {
            let rows = TILE.min(hi - j0);
            // The next block's batch rows start on their way: rows a whole batch row
            // apart (24 KiB for the 1B), which the hardware prefetchers do not follow.
            for j in (j0 + TILE).max(a.start)..(j0 + 2 * TILE).min(hi) {
                let row = &a.batch[(j - a.start) * a.ld..];
                prefetch_row(&row[a.k..][..d]);
                prefetch_row(&row[a.v..][..d]);
            }
            let view = PromptAttention { keys: &*cache_keys, values: &*cache_values, ..*a };
            gather(k, &view, j0..j0 + rows, d, &mut s.kb[..TILE * d], &mut s.vb[..TILE * d]);
            // The block's batch rows into the cache: rounded to `E` already, so the
            // same bits as the batch's values rounded once.
            for j in j0.max(a.start)..j0 + rows {
                let (at, r) = (j % a.positions * d, (j - j0) * d);
                super::store_row(k, &s.kb[r..][..d], &mut cache_keys[at..][..d]);
                super::store_row(k, &s.vb[r..][..d], &mut cache_values[at..][..d]);
            }
            // SAFETY: AMX (asserted) comes with AVX-512 F/BW; 16 rows of `d` bf16 from
            // row `j0 - lo` and 16 columns from `j0 - lo` (a multiple of 16) of each
            // of `d` rows lie in the parts (`tile_kv_sizes`, asserted), aligned.
            unsafe {
                pack_rows(s.kb.as_ptr(), d, rows, d, keys.as_mut_ptr().add((j0 - lo) * d));
                transpose_rows(s.vb.as_ptr(), d, rows, d, values.as_mut_ptr().add(j0 - lo), ld);
            }
        }
        // Only the columns past `hi` are padding; the blocks above wrote the rest.
        for row in values[..value_len].chunks_exact_mut(ld) {
            row[hi - lo..].fill(0);
        }
    });
}

/// Starts a row's cache lines on their way into L1.
#[cfg(target_arch = "x86_64")]
fn prefetch_row(row: &[f32]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for i in (0..row.len()).step_by(16) {
        // SAFETY: a prefetch reads nothing; the address lies within `row`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(i) as *const i8) };
    }
}

#[derive(Default)]
struct Scratch {
    /// head_dim x cols: the queries, transposed and scaled
    qt: Vec<f32>,
    /// key block x cols: scores, then probabilities
    s: Vec<f32>,
    /// head_dim (padded) x cols: the unnormalised output, transposed
    ot: Vec<f32>,
    /// key block x head_dim (padded): the block's keys and values in f32
    kb: Vec<f32>,
    vb: Vec<f32>,
    /// Per query: running max, running sum, this block's rescaling.
    max: Vec<f32>,
    sum: Vec<f32>,
    alpha: Vec<f32>,
    /// One query's output, or every query's (`[query][head_dim]`, transposed from
    /// `O^T` sixteen by sixteen).
    out: Vec<f32>,
    /// The tiles' operands (bf16): `Q^T` and a key block's probabilities in pairs.
    tiles: Vec<u16>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// The calling thread's [`TileKv`] parts of every head; only ever grows.
    static TILE_KV: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` values of the calling thread's scratch for [`TileKv`] parts,
/// 64-byte aligned (parts of the sizes [`tile_kv_sizes`] gives stay aligned one after
/// another).
pub fn with_tile_kv_scratch<R>(len: usize, f: impl FnOnce(&mut [u16]) -> R) -> R {
    with_local(&TILE_KV, |buf| f(grow_aligned(buf, len)))
}

/// Attends for query rows `rows` of the batch (at most [`rows_per_block`]) with every
/// query head of the group, calling `emit(row, g, out)` with the output of head `g` of
/// the group for each row (`head_dim` values).
///
/// Panics if the slices are too short.
pub fn attend_prompt<E: KvElement>(
    k: Kernels,
    a: &PromptAttention<E>,
    rows: Range<usize>,
    mut emit: impl FnMut(usize, usize, &[f32]),
) {
    let d = a.head_dim;
    let g = a.group;
    assert!(d > 0 && g > 0 && a.positions > 0);
    // Rows of the value block and of O^T, padded for the tile.
    let dp = d.next_multiple_of(TILE_ROWS);
    assert!(rows.start < rows.end && rows.len() <= rows_per_block(g));
    assert!(a.batch.len() >= rows.end * a.ld);
    assert!(a.q + g * d <= a.ld && a.k + d <= a.ld && a.v + d <= a.ld);
    assert!(a.keys.len() >= a.positions * d && a.values.len() >= a.positions * d);
    let m = rows.len() * g;
    let cols = m.next_multiple_of(LANES);
    let tiles = a.tile_kv.filter(|_| tiles_possible(k, d));
    let key_block = if tiles.is_some() { TILE_KEY_BLOCK } else { KEY_BLOCK };
    with_local(&SCRATCH, |s| {
        grow(&mut s.qt, d * cols);
        // `S` and `O^T` 64-byte aligned: the tiles read and write them in place.
        let scores = grow_aligned(&mut s.s, key_block * cols);
        let ot = grow_aligned(&mut s.ot, dp * cols);
        if tiles.is_none() {
            grow(&mut s.kb, KEY_BLOCK * dp);
            grow(&mut s.vb, KEY_BLOCK * dp);
        }
        grow(&mut s.max, cols);
        grow(&mut s.sum, cols);
        grow(&mut s.alpha, cols);
        grow(&mut s.out, cols * d);
        let qt = &mut s.qt[..d * cols];
        // Q^T, scaled; padding columns zero (on tiles, packed from the rows instead).
        if tiles.is_none() {
            qt.fill(0.0);
            for (r, i) in rows.clone().enumerate() {
                let q = &a.batch[i * a.ld + a.q..][..g * d];
                for (h, q) in q.chunks_exact(d).enumerate() {
                    let col = r * g + h;
                    for (t, &v) in q.iter().enumerate() {
                        qt[t * cols + col] = v * a.scale;
                    }
                }
            }
        }
        ot.fill(0.0);
        #[cfg(target_arch = "x86_64")]
        let tiles = tiles.map(|kv| TileOperands::new(&mut s.tiles, kv, a, rows.clone(), cols));
        s.max[..cols].fill(NO_MAX);
        s.sum[..cols].fill(0.0);
        // Positions: row i is at start + i and sees (p + 1 - positions, p].
        let first = (a.start + rows.start + 1).saturating_sub(a.positions);
        let last = a.start + rows.end; // exclusive
        let mut j0 = first;
        while j0 < last {
            let len = key_block.min(last - j0);
            let padded = len.next_multiple_of(TILE_ROWS);
            let sb = &mut *scores;
            // S = K Q^T (keys x queries).
            match &tiles {
                #[cfg(target_arch = "x86_64")]
                Some(t) => t.scores(j0, len, sb, cols),
                _ => {
                    gather(k, a, j0..j0 + len, dp, &mut s.kb[..padded * dp], &mut s.vb[..padded * dp]);
                    gemm_tile(k, &s.kb[..padded * dp], dp, 1, padded, d, qt, cols, sb, cols, false)
                }
            }
            // Mask what a query does not see (the block's first rows that fall out of
            // its window, its last ones after it).
            let (lo_all, hi_all) = ((a.start + rows.end).saturating_sub(a.positions), a.start + rows.start);
            if j0 < lo_all || j0 + len - 1 > hi_all {
                // Column `col` is position `base + col / g`, so the queries that key
                // `pos` comes after (`p < pos`) are the columns before `g * (pos -
                // base)`, and those it falls out of the window of (`pos < p + 1 -
                // positions`) the ones from `g * (pos + positions - base)` on.
                let base = a.start + rows.start;
                for j in 0..len {
                    let pos = j0 + j;
                    let before = (g * pos.saturating_sub(base)).min(m);
                    let after = (g * (pos + a.positions).saturating_sub(base)).clamp(before, m);
                    let row = &mut sb[j * cols..][..m];
                    row[..before].fill(f32::NEG_INFINITY);
                    row[after..].fill(f32::NEG_INFINITY);
                }
            }
            // The softmax's step, then O^T += V^T P: rows are dims (V read transposed),
            // t runs over the keys.
            let (max, sum, alpha) = (&mut s.max[..cols], &mut s.sum[..cols], &mut s.alpha[..cols]);
            match &tiles {
                #[cfg(target_arch = "x86_64")]
                Some(t) => {
                    if t.softmax(sb, len, cols, max, sum, alpha) {
                        scale_rows(k, ot, cols, alpha);
                    }
                    t.accumulate(j0, len, ot, cols)
                }
                _ => {
                    softmax_update(k, sb, len, cols, max, sum, alpha);
                    scale_rows(k, ot, cols, alpha);
                    gemm_tile(k, &s.vb[..padded * dp], 1, dp, dp, len, sb, cols, ot, cols, true)
                }
            }
            j0 += len;
        }
        #[cfg(target_arch = "x86_64")]
        if k.avx512() && d.is_multiple_of(16) {
            // SAFETY: AVX-512 F (checked); `ot` holds `d` rows of `cols` (a multiple of
            // 16), `sum` `cols` values and `out` `cols * d`.
            unsafe { x86::transpose_scaled_512(ot, cols, d, &s.sum[..cols], &mut s.out[..cols * d]) };
            for (r, i) in rows.clone().enumerate() {
                for h in 0..g {
                    emit(i, h, &s.out[(r * g + h) * d..][..d]);
                }
            }
            return;
        }
        for (r, i) in rows.clone().enumerate() {
            for h in 0..g {
                let col = r * g + h;
                let inv = 1.0 / s.sum[col];
                for (t, o) in s.out[..d].iter_mut().enumerate() {
                    *o = ot[t * cols + col] * inv;
                }
                emit(i, h, &s.out[..d]);
            }
        }
    })
}

/// One call's operands of the tile products ([`super::attention_amx`]): the head's
/// [`TileKv`], `Q^T` packed once and each key block's probabilities, in the thread's
/// scratch. Holds the thread's tiles configured while it lives.
#[cfg(target_arch = "x86_64")]
struct TileOperands<'a> {
    kv: TileKv<'a>,
    d: usize,
    queries: *mut u16,
    probabilities: *mut u16,
}

#[cfg(target_arch = "x86_64")]
impl<'a> TileOperands<'a> {
    /// Packs the queries of `rows` of `a` (`cols` columns: each row's group of heads,
    /// then zeros) and configures the tiles.
    fn new<E>(buf: &mut Vec<u16>, kv: TileKv<'a>, a: &PromptAttention<E>, rows: Range<usize>, cols: usize) -> TileOperands<'a> {
        use super::attention_amx::{configure, pack_queries, pairs_len, TILE};
        let (d, g) = (a.head_dim, a.group);
        let m = rows.len() * g;
        assert!(m <= cols && cols.is_multiple_of(TILE) && a.batch.len() >= rows.end * a.ld && a.q + g * d <= a.ld);
        assert!(kv.keys.as_ptr().align_offset(64) == 0 && kv.values.as_ptr().align_offset(64) == 0);
        let sizes = [pairs_len(d, cols), pairs_len(TILE_KEY_BLOCK, cols)];
        // Both parts 64-byte aligned: each size is a multiple of 512 values.
        let base = grow_aligned(buf, sizes.iter().sum()).as_mut_ptr();
        // Query vector j: head j % g of row rows.start + j / g.
        let q = a.batch.as_ptr();
        let row = |j: usize| q.wrapping_add((rows.start + j / g) * a.ld + a.q + j % g * d);
        // SAFETY: the parts lie within `buf` (grown above); `amx::available()` holds
        // (`tiles_possible`), and AVX-512 with it; every vector `j < m` lies in the
        // batch (asserted).
        unsafe {
            let (queries, probabilities) = (base, base.add(sizes[0]));
            configure();
            pack_queries(row, m, d, a.scale, cols, queries);
            TileOperands { kv, d, queries, probabilities }
        }
    }

    /// `S = K Q^T` for the `len` keys from position `j0` into `s` (64-byte aligned,
    /// rows of `cols`).
    fn scores(&self, j0: usize, len: usize, s: &mut [f32], cols: usize) {
        let key_rows = len.next_multiple_of(super::attention_amx::TILE);
        let (at, d) = (j0 - self.kv.lo, self.d);
        assert!(len <= TILE_KEY_BLOCK && len > 0 && (at + key_rows) * d <= self.kv.keys.len() && key_rows * cols <= s.len());
        assert!(s.as_ptr().align_offset(64) == 0);
        // SAFETY: the extents are asserted, the tiles configured (`new`).
        unsafe { super::attention_amx::scores(self.kv.keys.as_ptr().add(at * d), key_rows, d, self.queries, cols, s.as_mut_ptr()) }
    }

    /// The online softmax's step for the `len` scores of a key block (rows of `s`,
    /// `cols` apart), its probabilities packed for [`TileOperands::accumulate`];
    /// whether `O^T` needs rescaling by `alpha`.
    fn softmax(&self, s: &[f32], len: usize, cols: usize, max: &mut [f32], sum: &mut [f32], alpha: &mut [f32]) -> bool {
        assert!(len <= TILE_KEY_BLOCK && len * cols <= s.len() && cols.is_multiple_of(16));
        assert!(max.len() >= cols && sum.len() >= cols && alpha.len() >= cols);
        // SAFETY: the extents are asserted; the probabilities' part holds
        // `pairs_len(TILE_KEY_BLOCK, cols)` values, 64-byte aligned (`new`); AMX
        // (`tiles_possible`) comes with AVX-512 F/BW/BF16.
        unsafe {
            super::attention_amx::softmax_pairs(s.as_ptr(), len, cols, max.as_mut_ptr(), sum.as_mut_ptr(), alpha.as_mut_ptr(), self.probabilities)
        }
    }

    /// `O^T += V^T P` for the `len` values from position `j0` and their probabilities
    /// (packed by [`TileOperands::softmax`]) into `ot` (`d` rows of `cols`).
    fn accumulate(&self, j0: usize, len: usize, ot: &mut [f32], cols: usize) {
        let (at, d, ld) = (j0 - self.kv.lo, self.d, self.kv.ld);
        let padded = super::attention_amx::padded_keys(len);
        assert!(len <= TILE_KEY_BLOCK && len > 0 && at + padded <= ld && d * ld <= self.kv.values.len());
        assert!(d * cols <= ot.len() && ot.as_ptr().align_offset(64) == 0);
        // SAFETY: as for `scores`.
        unsafe {
            super::attention_amx::accumulate(self.kv.values.as_ptr().add(at), ld, len, d, self.probabilities, cols, ot.as_mut_ptr());
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for TileOperands<'_> {
    fn drop(&mut self) {
        // SAFETY: `new` configured the tiles, so AMX is available.
        unsafe { super::attention_amx::release() }
    }
}

/// Widens the keys and values at positions `js` into `kb` and `vb` (rows `dp` apart,
/// zero after `head_dim`), zeroing the rows after them.
fn gather<E: KvElement>(k: Kernels, a: &PromptAttention<E>, js: Range<usize>, dp: usize, kb: &mut [f32], vb: &mut [f32]) {
    let d = a.head_dim;
    let n = js.len();
    for (r, j) in js.enumerate() {
        kb[r * dp + d..][..dp - d].fill(0.0);
        vb[r * dp + d..][..dp - d].fill(0.0);
        let (kd, vd) = (&mut kb[r * dp..][..d], &mut vb[r * dp..][..d]);
        if j >= a.start {
            let row = &a.batch[(j - a.start) * a.ld..];
            round_row::<E>(k, &row[a.k..][..d], kd);
            round_row::<E>(k, &row[a.v..][..d], vd);
        } else {
            let at = j % a.positions * d;
            widen_row(k, &a.keys[at..][..d], kd);
            widen_row(k, &a.values[at..][..d], vd);
        }
    }
    kb[n * dp..].fill(0.0);
    vb[n * dp..].fill(0.0);
}

/// `dst = src` rounded to `E` and back: a batch row as the cache would hold it.
fn round_row<E: KvElement>(k: Kernels, src: &[f32], dst: &mut [f32]) {
    if !E::HALF {
        return dst.copy_from_slice(src);
    }
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked); the lengths match.
        _ if k.avx2() => unsafe { x86::round_f16(src, dst) },
        _ => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = E::from_f32(s).to_f32()),
    }
}

/// `dst = src` widened to f32.
fn widen_row<E: KvElement>(k: Kernels, src: &[E], dst: &mut [f32]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked); the lengths match.
        _ if k.avx2() => unsafe { x86::widen(src, dst) },
        _ => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_f32()),
    }
}

/// `C[i, m] (+)= sum_t A[i * a_rs + t * a_cs] B[t * ldb + m]` for `i < rows` (a
/// multiple of [`TILE_ROWS`]), `t < t_len`, `m < ldc` (a multiple of [`LANES`]).
#[allow(clippy::too_many_arguments)]
fn gemm_tile(
    k: Kernels,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    rows: usize,
    t_len: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(rows.is_multiple_of(TILE_ROWS) && ldc.is_multiple_of(LANES) && ldb >= ldc);
    assert!(rows == 0 || t_len == 0 || (rows - 1) * a_rs + (t_len - 1) * a_cs < a.len());
    assert!(t_len * ldb <= b.len() && rows * ldc <= c.len());
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (checked); the extents are asserted.
        _ if k.avx512() => unsafe { x86::gemm_tile_512(a.as_ptr(), a_rs, a_cs, rows, t_len, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA (checked); the extents are asserted.
        _ if k.avx2() => unsafe { x86::gemm_tile_256(a.as_ptr(), a_rs, a_cs, rows, t_len, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) },
        _ => {
            for i in 0..rows {
                let ci = &mut c[i * ldc..][..ldc];
                if !accumulate {
                    ci.fill(0.0);
                }
                for t in 0..t_len {
                    let av = a[i * a_rs + t * a_cs];
                    for (cv, &bv) in ci.iter_mut().zip(&b[t * ldb..][..ldc]) {
                        *cv += av * bv;
                    }
                }
            }
        }
    }
}

/// The online softmax's step for one key block of `len` rows of `s` (`cols` apart):
/// per query (column), the new running max over the block, `alpha = exp(old - new)`,
/// `s = exp(s - new)` in place, and `sum = sum * alpha + the block's sum`.
fn softmax_update(k: Kernels, s: &mut [f32], len: usize, cols: usize, max: &mut [f32], sum: &mut [f32], alpha: &mut [f32]) {
    assert!(len * cols <= s.len() && max.len() == cols && sum.len() == cols && alpha.len() == cols);
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (checked); the kernel asserts the extents and
        // that `cols` is a multiple of 16 (attention's columns are of 32).
        _ if k.avx512() => unsafe { x86::softmax_update_512(s, len, cols, max, sum, alpha) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA (checked); the extents are asserted and `cols`
        // is a multiple of eight.
        _ if k.avx2() => unsafe { x86::softmax_update(s, len, cols, max, sum, alpha) },
        _ => {
            for c in 0..cols {
                let new = (0..len).map(|j| s[j * cols + c]).fold(max[c], f32::max);
                alpha[c] = (max[c] - new).exp();
                let mut block = 0.0;
                for j in 0..len {
                    let e = (s[j * cols + c] - new).exp();
                    s[j * cols + c] = e;
                    block += e;
                }
                sum[c] = sum[c] * alpha[c] + block;
                max[c] = new;
            }
        }
    }
}

/// `o[t, m] *= alpha[m]` for every row `t` of `o` (`cols` apart).
fn scale_rows(k: Kernels, o: &mut [f32], cols: usize, alpha: &[f32]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA (checked); `cols` is a multiple of eight.
        _ if k.avx2() => unsafe { x86::scale_rows(o, cols, alpha) },
        _ => o.chunks_exact_mut(cols).for_each(|r| r.iter_mut().zip(alpha).for_each(|(o, a)| *o *= a)),
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::super::exp::{exp16, exp8};
    use super::super::kv_element::KvElement;
    use super::TILE_ROWS;

    /// # Safety
    /// AVX2/F16C; `src.len() == dst.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn round_f16(src: &[f32], dst: &mut [f32]) {
        let n8 = src.len() / 8 * 8;
        for c in (0..n8).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(c)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(c), _mm256_cvtph_ps(h));
        }
        for c in n8..src.len() {
            dst[c] = half::f16::from_f32(src[c]).to_f32();
        }
    }

    /// # Safety
    /// AVX2/F16C; `src.len() == dst.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen<E: KvElement>(src: &[E], dst: &mut [f32]) {
        if !E::HALF {
            let src = std::slice::from_raw_parts(src.as_ptr() as *const f32, src.len());
            return dst.copy_from_slice(src);
        }
        let n8 = src.len() / 8 * 8;
        for c in (0..n8).step_by(8) {
            let h = _mm_loadu_si128(src.as_ptr().add(c) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(c), _mm256_cvtph_ps(h));
        }
        for c in n8..src.len() {
            dst[c] = src[c].to_f32();
        }
    }

    /// The 8 x 32 AVX-512 tile of [`super::gemm_tile`].
    ///
    /// # Safety
    /// AVX-512 F; `rows` a multiple of 8, `ldc` of 32, and every element the loops
    /// name within its buffer.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_tile_512(
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        rows: usize,
        t_len: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        for c0 in (0..ldc).step_by(32) {
            for i0 in (0..rows).step_by(TILE_ROWS) {
                let mut acc = [[_mm512_setzero_ps(); 2]; TILE_ROWS];
                let ap = a.add(i0 * a_rs);
                for t in 0..t_len {
                    let bp = b.add(t * ldb + c0);
                    let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
                    let at = ap.add(t * a_cs);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*at.add(i * a_rs));
                        acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let cp = c.add((i0 + i) * ldc + c0);
                    let (mut v0, mut v1) = (acc[0], acc[1]);
                    if accumulate {
                        v0 = _mm512_add_ps(v0, _mm512_loadu_ps(cp));
                        v1 = _mm512_add_ps(v1, _mm512_loadu_ps(cp.add(16)));
                    }
                    _mm512_storeu_ps(cp, v0);
                    _mm512_storeu_ps(cp.add(16), v1);
                }
            }
        }
    }

    /// The 8 x 16 AVX2 tile of [`super::gemm_tile`].
    ///
    /// # Safety
    /// AVX2/FMA; `rows` a multiple of 8, `ldc` of 16, and every element the loops name
    /// within its buffer.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_tile_256(
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        rows: usize,
        t_len: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        for c0 in (0..ldc).step_by(16) {
            for i0 in (0..rows).step_by(TILE_ROWS) {
                let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
                let ap = a.add(i0 * a_rs);
                for t in 0..t_len {
                    let bp = b.add(t * ldb + c0);
                    let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                    let at = ap.add(t * a_cs);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let av = _mm256_set1_ps(*at.add(i * a_rs));
                        acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let cp = c.add((i0 + i) * ldc + c0);
                    let (mut v0, mut v1) = (acc[0], acc[1]);
                    if accumulate {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cp));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cp.add(8)));
                    }
                    _mm256_storeu_ps(cp, v0);
                    _mm256_storeu_ps(cp.add(8), v1);
                }
            }
        }
    }

    /// [`super::softmax_update`], eight queries at a time with [`exp8`] (which gives
    /// exactly 0 for a masked `-inf` score).
    ///
    /// # Safety
    /// AVX2/FMA; `cols` a multiple of 8, `s` holding `len` rows of `cols`, `max`, `sum`
    /// and `alpha` `cols` each.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn softmax_update(s: &mut [f32], len: usize, cols: usize, max: &mut [f32], sum: &mut [f32], alpha: &mut [f32]) {
        let sp = s.as_mut_ptr();
        for c in (0..cols).step_by(8) {
            let old = _mm256_loadu_ps(max.as_ptr().add(c));
            let mut new = old;
            for j in 0..len {
                new = _mm256_max_ps(new, _mm256_loadu_ps(sp.add(j * cols + c)));
            }
            let a = exp8(_mm256_sub_ps(old, new));
            let mut block = _mm256_setzero_ps();
            for j in 0..len {
                let p = sp.add(j * cols + c);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), new));
                _mm256_storeu_ps(p, e);
                block = _mm256_add_ps(block, e);
            }
            let total = _mm256_fmadd_ps(_mm256_loadu_ps(sum.as_ptr().add(c)), a, block);
            _mm256_storeu_ps(sum.as_mut_ptr().add(c), total);
            _mm256_storeu_ps(max.as_mut_ptr().add(c), new);
            _mm256_storeu_ps(alpha.as_mut_ptr().add(c), a);
        }
    }

    /// [`softmax_update`] sixteen queries at a time: the same operations lane by lane
    /// ([`exp16`] is [`exp8`] in 16 lanes), so the same numbers, in half the
    /// instructions.
    ///
    /// # Safety
    /// AVX-512 F; `cols` a multiple of 16, `s` holding `len` rows of `cols`, `max`,
    /// `sum` and `alpha` `cols` each.
    #[target_feature(enable = "avx512f")]
    pub(in crate::kernels) unsafe fn softmax_update_512(s: &mut [f32], len: usize, cols: usize, max: &mut [f32], sum: &mut [f32], alpha: &mut [f32]) {
        assert!(cols.is_multiple_of(16) && s.len() >= len * cols && max.len() >= cols && sum.len() >= cols && alpha.len() >= cols);
        let sp = s.as_mut_ptr();
        for c in (0..cols).step_by(16) {
            let old = _mm512_loadu_ps(max.as_ptr().add(c));
            let mut new = old;
            for j in 0..len {
                new = _mm512_max_ps(new, _mm512_loadu_ps(sp.add(j * cols + c)));
            }
            let a = exp16(_mm512_sub_ps(old, new));
            let mut block = _mm512_setzero_ps();
            for j in 0..len {
                let p = sp.add(j * cols + c);
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), new));
                _mm512_storeu_ps(p, e);
                block = _mm512_add_ps(block, e);
            }
            let total = _mm512_fmadd_ps(_mm512_loadu_ps(sum.as_ptr().add(c)), a, block);
            _mm512_storeu_ps(sum.as_mut_ptr().add(c), total);
            _mm512_storeu_ps(max.as_mut_ptr().add(c), new);
            _mm512_storeu_ps(alpha.as_mut_ptr().add(c), a);
        }
    }

    /// Every query's output from `O^T` (`d` rows of `cols`, `d` a multiple of 16):
    /// query `col`'s `d` values at `out[col * d..]`, each divided by its sum as the
    /// value-by-value loop divides it (one multiply by `1 / sum`), transposed sixteen by
    /// sixteen in registers.
    ///
    /// # Safety
    /// AVX-512 F; `cols` a multiple of 16, `ot` holding `d` rows of `cols`, `sum`
    /// `cols` values and `out` `cols * d`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_scaled_512(ot: &[f32], cols: usize, d: usize, sum: &[f32], out: &mut [f32]) {
        assert!(cols.is_multiple_of(16) && d.is_multiple_of(16) && ot.len() >= d * cols && sum.len() >= cols && out.len() >= cols * d);
        let (op, outp) = (ot.as_ptr(), out.as_mut_ptr());
        for c0 in (0..cols).step_by(16) {
            let inv: [f32; 16] = std::array::from_fn(|j| 1.0 / sum[c0 + j]);
            for t0 in (0..d).step_by(16) {
                let mut r = [_mm512_setzero_ps(); 16];
                for (t, row) in r.iter_mut().enumerate() {
                    *row = _mm512_loadu_ps(op.add((t0 + t) * cols + c0));
                }
                super::super::gemm_amx::transpose16(&mut r);
                for (j, row) in r.iter().enumerate() {
                    _mm512_storeu_ps(outp.add((c0 + j) * d + t0), _mm512_mul_ps(*row, _mm512_set1_ps(inv[j])));
                }
            }
        }
    }

    /// [`super::scale_rows`], eight at a time.
    ///
    /// # Safety
    /// AVX2/FMA; `cols` a multiple of 8, `alpha` holding `cols`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scale_rows(o: &mut [f32], cols: usize, alpha: &[f32]) {
        assert!(alpha.len() >= cols && cols.is_multiple_of(8));
        for row in o.chunks_exact_mut(cols) {
            for c in (0..cols).step_by(8) {
                let p = row.as_mut_ptr().add(c);
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(alpha.as_ptr().add(c))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head's tile values hold each position's value rounded to bf16 (f32 cache,
    /// batch rows only) at `[dim][position - lo]`, and zeros in every padding column
    /// past `hi`, whatever the buffer held before (NaN bits here: a NaN left there
    /// would turn a masked key's zero probability into a NaN output). Keys likewise
    /// at `[position - lo][dim]`, in whole tiles of 16 rows.
    #[test]
    fn tile_values_overwrite_every_column() {
        let d = 64;
        for k in crate::kernels::available_kernels().into_iter().filter(|&k| tiles_possible(k, d)) {
            for (lo, hi) in [(0, 21), (0, 16), (5, 38), (0, 1)] {
                let ld_batch = 3 * d;
                let batch: Vec<f32> = (0..hi * ld_batch).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
                let a = PromptAttention::<f32> {
                    batch: &batch,
                    ld: ld_batch,
                    q: 0,
                    k: d,
                    v: 2 * d,
                    group: 1,
                    head_dim: d,
                    keys: &[],
                    values: &[],
                    positions: hi,
                    start: 0,
                    scale: 0.125,
                    tile_kv: None,
                };
                let (key_len, value_len, ld) = tile_kv_sizes(d, lo, hi);
                // 64-byte aligned parts, full of NaN bits.
                let mut keys_buf = vec![0x7fc0u16; key_len + 32];
                let mut values_buf = vec![0x7fc0u16; value_len + 32];
                let (ko, vo) = (keys_buf.as_ptr().align_offset(64), values_buf.as_ptr().align_offset(64));
                let (keys, values) = (&mut keys_buf[ko..][..key_len], &mut values_buf[vo..][..value_len]);
                let (mut cache_keys, mut cache_values) = (vec![0f32; hi * d], vec![0f32; hi * d]);
                fill_tile_kv(k, &a, (&mut cache_keys, &mut cache_values), lo, hi, keys, values);
                // The batch's rows are filed in the cache as they are read.
                for j in lo..hi {
                    assert!(cache_keys[j * d..][..d] == batch[j * ld_batch + d..][..d], "{k:?} {lo}..{hi}: cached key {j}");
                    assert!(cache_values[j * d..][..d] == batch[j * ld_batch + 2 * d..][..d], "{k:?} {lo}..{hi}: cached value {j}");
                }
                let bf = |x: f32| half::bf16::from_f32(x).to_bits();
                for dim in 0..d {
                    for col in 0..ld {
                        let j = lo + col;
                        let want = if j < hi { bf(batch[j * ld_batch + 2 * d + dim]) } else { 0 };
                        assert_eq!(values[dim * ld + col], want, "{k:?} {lo}..{hi}: value dim {dim} column {col}");
                    }
                }
                // Whole 16-row key tiles, the last one's rows past `hi` zeros.
                for row in 0..(hi - lo).next_multiple_of(16) {
                    let j = lo + row;
                    for dim in 0..d {
                        let want = if j < hi { bf(batch[j * ld_batch + d + dim]) } else { 0 };
                        assert_eq!(keys[row * d + dim], want, "{k:?} {lo}..{hi}: key row {row} dim {dim}");
                    }
                }
            }
        }
    }

    /// The online softmax's step gives the same bits on every kernel set that has a
    /// vector form (AVX-512's is AVX2's in 16 lanes) and agrees with the plain one:
    /// blocks with masked (`-inf`) scores, whole masked columns, and a running max
    /// and sum carried over from an earlier block.
    #[test]
    fn softmax_steps_agree_across_kernel_sets() {
        let (len, cols) = (37, 64);
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32
        };
        let s: Vec<f32> = (0..len * cols)
            .map(|i| if i % 7 == 3 || i % cols == 5 { f32::NEG_INFINITY } else { 40.0 * next() - 20.0 })
            .collect();
        let max: Vec<f32> = (0..cols).map(|c| if c % 3 == 0 { NO_MAX } else { 10.0 * next() }).collect();
        let sum: Vec<f32> = (0..cols).map(|c| if c % 3 == 0 { 0.0 } else { 5.0 * next() }).collect();
        let run = |k: Kernels| {
            let (mut s, mut max, mut sum, mut alpha) = (s.clone(), max.clone(), sum.clone(), vec![0f32; cols]);
            softmax_update(k, &mut s, len, cols, &mut max, &mut sum, &mut alpha);
            [s, max, sum, alpha]
        };
        let plain = run(Kernels::Portable);
        let mut vector: Option<[Vec<f32>; 4]> = None;
        for k in crate::kernels::available_kernels() {
            let got = run(k);
            for (g, p) in got.iter().zip(&plain) {
                for (a, b) in g.iter().zip(p) {
                    assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{k:?}: {a} against {b}");
                }
            }
            if k != Kernels::Portable {
                let bits = |v: &[Vec<f32>; 4]| v.iter().flatten().map(|f| f.to_bits()).collect::<Vec<_>>();
                match &vector {
                    Some(first) => assert!(bits(first) == bits(&got), "{k:?} differs from the other vector sets"),
                    None => vector = Some(got),
                }
            }
        }
    }
}
