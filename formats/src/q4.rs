//! The [`Layout::Q4Tiles`](crate::Layout::Q4Tiles) layout of the 4-bit dtypes, q4_0
//! and q4_k: where each 4-bit value and each scale of a matrix lies, for the writer
//! (`olmoc`) and the readers (the runtime's kernels, `olmoc inspect`) alike.
//!
//! A `[rows, cols]` matrix is cut into tiles of [`TILE_ROWS`] rows by [`TILE_COLS`]
//! columns, rows and columns padded with zeros to whole tiles. Tile `(g, t)` (rows `8 g
//! ..`, columns `256 t ..`) starts at byte `(g * ceil(cols / 256) + t) * 1152`: the
//! tiles of one group of eight rows follow one another, so a product reads the matrix
//! as one stream. Each tile holds [`QUANT_BYTES`] of 4-bit values, then
//! [`SCALE_BYTES`] of scales.
//!
//! **Values.** Column `c` of a tile is in block `b = c / 32`, at `k = c % 32`. Row `r`'s
//! value there is the low nibble (`k < 16`) or the high nibble (`k >= 16`) of byte
//! `128 b + 32 j + 4 r + i`, with `j = (k % 16) / 4` and `i = k % 4`. So each 32
//! bytes hold four consecutive columns of all eight rows (row-major, four bytes a row),
//! low nibbles for columns `4 j ..`, high nibbles for `16 + 4 j ..` of the block (as
//! llama.cpp keeps the first and second halves of a block in the low and high nibbles).
//! A kernel widens 32 bytes to two registers of bytes and multiplies each by four
//! activations broadcast to every row.
//!
//! **q4_0 scales.** 64 f16 values `d[b][r]` (block-major: one 16-byte load gives a
//! block's eight rows). The weight is `d * (q - 8)`, `q` in 0..=15.
//!
//! **q4_k scales.** Sub-block `j` of a super-block is block `j` of the tile.
//! - bytes 0..16: `d[r]`, f16, the super-block scale of each row;
//! - bytes 16..32: `dmin[r]`, f16, the super-block min;
//! - bytes 32..96: `(sc[r][j] & 15) | (m[r][j] & 15) << 4` at `32 + 8 j + r`;
//! - bytes 96..128: the top two bits of each 6-bit scale and min: at `96 + 8 (j % 4) +
//!   r`, shifted left by `4 (j / 4)`, `sc >> 4` in bits 0-1 and `m >> 4` in bits 2-3.
//!
//! The weight is `d * sc[j] * q - dmin * m[j]`. These are llama.cpp's Q4_K numbers
//! (each row's 12 bytes of 6-bit scales and mins, rearranged across the eight rows so
//! that one load gives a sub-block's values for all of them).

use half::f16;

use crate::DType;

/// Rows side by side in a tile.
pub const TILE_ROWS: usize = 8;
/// Columns of a tile: a q4_k super-block, eight blocks of 32.
pub const TILE_COLS: usize = 256;
/// Columns sharing one scale (q4_0) or one sub-block scale and min (q4_k).
pub const BLOCK: usize = 32;
/// Bytes of 4-bit values in a tile.
pub const QUANT_BYTES: usize = TILE_ROWS * TILE_COLS / 2;
/// Bytes of scales in a tile.
pub const SCALE_BYTES: usize = 128;
/// Bytes of a tile: 4.5 bits per weight.
pub const TILE_BYTES: usize = QUANT_BYTES + SCALE_BYTES;

/// Bytes of a `[rows, cols]` matrix in tiles, `None` on overflow.
pub fn tiles_len(rows: u64, cols: u64) -> Option<u64> {
    let tiles = rows.div_ceil(TILE_ROWS as u64).checked_mul(cols.div_ceil(TILE_COLS as u64))?;
    tiles.checked_mul(TILE_BYTES as u64)
}

/// Tiles per group of eight rows of a matrix `cols` wide.
pub fn tiles_per_group(cols: usize) -> usize {
    cols.div_ceil(TILE_COLS)
}

/// Byte of a tile holding row `r`'s value at tile column `c`, and the shift (0 or 4) of
/// its nibble.
#[inline]
pub fn nibble_at(r: usize, c: usize) -> (usize, u32) {
    let (b, k) = (c / BLOCK, c % BLOCK);
    let (j, i) = ((k % 16) / 4, k % 4);
    (b * 128 + j * 32 + r * 4 + i, if k < 16 { 0 } else { 4 })
}

/// Row `r`'s 4-bit value at tile column `c`.
#[inline]
pub fn quant(tile: &[u8], r: usize, c: usize) -> u8 {
    let (at, shift) = nibble_at(r, c);
    (tile[at] >> shift) & 15
}

/// Sets row `r`'s 4-bit value at tile column `c` (`q < 16`).
#[inline]
pub fn set_quant(tile: &mut [u8], r: usize, c: usize, q: u8) {
    let (at, shift) = nibble_at(r, c);
    tile[at] = (tile[at] & !(15 << shift)) | (q & 15) << shift;
}

fn read_f16(tile: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([tile[at], tile[at + 1]])).to_f32()
}

fn write_f16(tile: &mut [u8], at: usize, v: f16) {
    tile[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
}

/// Offset in a tile of the q4_0 scale of row `r`, block `b`.
pub fn q4_0_scale_at(r: usize, b: usize) -> usize {
    QUANT_BYTES + 2 * (b * TILE_ROWS + r)
}

/// The q4_k super-block scale `d`, min `dmin`, and sub-block `j`'s 6-bit scale and min
/// of row `r`.
pub fn q4_k_params(tile: &[u8], r: usize, j: usize) -> (f32, f32, u8, u8) {
    let lo = tile[QUANT_BYTES + 32 + 8 * j + r];
    let hi = tile[QUANT_BYTES + 96 + 8 * (j % 4) + r] >> (4 * (j / 4));
    let sc = (lo & 15) | (hi & 3) << 4;
    let m = (lo >> 4) | ((hi >> 2) & 3) << 4;
    (read_f16(tile, QUANT_BYTES + 2 * r), read_f16(tile, QUANT_BYTES + 16 + 2 * r), sc, m)
}

/// Stores row `r`'s q4_k super-block scale and min.
pub fn set_q4_k_super(tile: &mut [u8], r: usize, d: f16, dmin: f16) {
    write_f16(tile, QUANT_BYTES + 2 * r, d);
    write_f16(tile, QUANT_BYTES + 16 + 2 * r, dmin);
}

/// Stores row `r`'s 6-bit scale `sc` and min `m` of sub-block `j` (both below 64).
pub fn set_q4_k_sub(tile: &mut [u8], r: usize, j: usize, sc: u8, m: u8) {
    debug_assert!(sc < 64 && m < 64);
    tile[QUANT_BYTES + 32 + 8 * j + r] = (sc & 15) | (m & 15) << 4;
    let at = QUANT_BYTES + 96 + 8 * (j % 4) + r;
    let shift = 4 * (j / 4);
    tile[at] = (tile[at] & !(15 << shift)) | ((sc >> 4) | (m >> 4) << 2) << shift;
}

/// The scale and offset of row `r`'s block `b` in a tile: its weights are
/// `scale * q - offset`. q4_0: `d` and `8 d`; q4_k: `d * sc` and `dmin * m`.
pub fn block_params(dtype: DType, tile: &[u8], r: usize, b: usize) -> (f32, f32) {
    match dtype {
        DType::Q4_0 => {
            let d = read_f16(tile, q4_0_scale_at(r, b));
            (d, 8.0 * d)
        }
        DType::Q4_K => {
            let (d, dmin, sc, m) = q4_k_params(tile, r, b);
            (d * sc as f32, dmin * m as f32)
        }
        _ => panic!("{dtype} is not a 4-bit type"),
    }
}

/// The tile of a matrix `cols` wide holding row `row`, column `col`, and the row and
/// column inside it.
pub fn locate(tiles: &[u8], cols: usize, row: usize, col: usize) -> (&[u8], usize, usize) {
    let t = (row / TILE_ROWS) * tiles_per_group(cols) + col / TILE_COLS;
    (&tiles[t * TILE_BYTES..][..TILE_BYTES], row % TILE_ROWS, col % TILE_COLS)
}

/// Writes columns `c0 .. c0 + out.len()` of row `row` of a `dtype` matrix `cols` wide,
/// dequantised, into `out`.
pub fn dequantize(dtype: DType, tiles: &[u8], cols: usize, row: usize, c0: usize, out: &mut [f32]) {
    for (c, o) in (c0..).zip(out.iter_mut()) {
        let (tile, r, tc) = locate(tiles, cols, row, c);
        let (scale, offset) = block_params(dtype, tile, r, tc / BLOCK);
        *o = scale * quant(tile, r, tc) as f32 - offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nibble_has_its_own_place() {
        let mut seen = vec![0u8; QUANT_BYTES];
        for r in 0..TILE_ROWS {
            for c in 0..TILE_COLS {
                let (at, shift) = nibble_at(r, c);
                assert_eq!(seen[at] & (15 << shift), 0, "({r}, {c})");
                seen[at] |= 15 << shift;
            }
        }
        assert!(seen.iter().all(|&b| b == 255));
        // Four columns of a row are four consecutive bytes; the next row follows.
        assert_eq!(nibble_at(0, 0), (0, 0));
        assert_eq!(nibble_at(0, 3), (3, 0));
        assert_eq!(nibble_at(1, 0), (4, 0));
        assert_eq!(nibble_at(0, 4), (32, 0));
        assert_eq!(nibble_at(0, 16), (0, 4));
        assert_eq!(nibble_at(7, 31), (127, 4));
        assert_eq!(nibble_at(2, 37), (128 + 32 + 8 + 1, 0));
    }

    #[test]
    fn q4_k_scales_round_trip() {
        let mut tile = vec![0u8; TILE_BYTES];
        let value = |r: usize, j: usize| (((r * 8 + j) * 37 + 5) % 64) as u8;
        for r in 0..TILE_ROWS {
            set_q4_k_super(&mut tile, r, f16::from_f32(r as f32 + 0.5), f16::from_f32(-(r as f32)));
            for j in 0..8 {
                set_q4_k_sub(&mut tile, r, j, value(r, j), 63 - value(r, j));
            }
        }
        for r in 0..TILE_ROWS {
            for j in 0..8 {
                assert_eq!(q4_k_params(&tile, r, j), (r as f32 + 0.5, -(r as f32), value(r, j), 63 - value(r, j)));
            }
        }
        // The values never touch the scales.
        for c in 0..TILE_COLS {
            set_quant(&mut tile, 3, c, 15);
        }
        assert_eq!(q4_k_params(&tile, 3, 5).2, value(3, 5));
    }
}
