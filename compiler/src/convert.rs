//! Encoding f32 matrices into the stored dtypes, row by row, in the layouts the
//! runtime's kernels read (see `olmo_format::Layout`).

use std::io::{self, Write};

use half::{bf16, f16};
use olmo_format::{q4, DType, Layout, PANEL_COLS, Q8_0_BLOCK};

use crate::quantize::{q4_0_block, q4_k_super_block};

const BLOCK: usize = Q8_0_BLOCK as usize;

/// Writes the `rows x cols` row-major matrix `values` as `dtype` in `layout` (one
/// that [holds](Layout::holds) it).
pub fn write_matrix(
    values: &[f32],
    rows: usize,
    cols: usize,
    dtype: DType,
    layout: Layout,
    out: &mut dyn Write,
) -> io::Result<()> {
    assert_eq!(values.len(), rows * cols, "matrix size");
    assert!(layout.holds(dtype, &[rows as u64, cols as u64]), "{dtype} in {layout}");
    let mut buf = Vec::with_capacity(cols * 4 + BLOCK);
    let rows_of = || values.chunks(cols.max(1));
    match layout {
        Layout::RowMajor => {
            for row in rows_of() {
                write_floats(row, dtype, &mut buf, out)?;
            }
        }
        Layout::ColumnPanels => {
            let panel = PANEL_COLS as usize;
            for c0 in (0..cols).step_by(panel) {
                let c1 = cols.min(c0 + panel);
                for row in rows_of() {
                    write_floats(&row[c0..c1], dtype, &mut buf, out)?;
                }
            }
        }
        Layout::Q8_0Rows => {
            let blocks = cols.div_ceil(BLOCK);
            let mut scales = Vec::with_capacity(rows * blocks * 2);
            for row in rows_of() {
                buf.clear();
                for block in row.chunks(BLOCK) {
                    let (quants, scale) = quantize_block(block);
                    buf.extend(quants.iter().map(|&q| q as u8));
                    scales.extend_from_slice(&scale.to_bits().to_le_bytes());
                }
                out.write_all(&buf)?;
            }
            out.write_all(&scales)?;
        }
        Layout::Q4Tiles => write_q4_tiles(values, rows, cols, dtype, out)?,
    }
    Ok(())
}

/// Groups of eight rows quantised per call of [`write_q4_tiles`]'s threads: 64 groups of
/// the 1B's 2048-column matrices are 576 KiB of tiles.
const GROUPS_AT_ONCE: usize = 64;

/// Writes a q4_0 or q4_k matrix in tiles (`olmo_format::q4`), quantising several groups
/// of rows at once on every core: q4_k's search costs a few hundred operations per
/// weight, minutes for a 7B model on one core.
fn write_q4_tiles(values: &[f32], rows: usize, cols: usize, dtype: DType, out: &mut dyn Write) -> io::Result<()> {
    let per_group = q4::tiles_per_group(cols) * q4::TILE_BYTES;
    let groups = rows.div_ceil(q4::TILE_ROWS);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut buf = vec![0u8; GROUPS_AT_ONCE * per_group];
    for g0 in (0..groups).step_by(GROUPS_AT_ONCE) {
        let n = GROUPS_AT_ONCE.min(groups - g0);
        let chunk = &mut buf[..n * per_group];
        let per_thread = n.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, part) in chunk.chunks_mut(per_thread * per_group).enumerate() {
                s.spawn(move || {
                    for (k, group) in part.chunks_mut(per_group).enumerate() {
                        q4_group(values, rows, cols, dtype, g0 + i * per_thread + k, group);
                    }
                });
            }
        });
        out.write_all(chunk)?;
    }
    Ok(())
}

/// The tiles of rows `8 g .. 8 g + 8` (rows past `rows` and columns past `cols` are
/// zeros) into `tiles`.
fn q4_group(values: &[f32], rows: usize, cols: usize, dtype: DType, g: usize, tiles: &mut [u8]) {
    tiles.fill(0);
    for (t, tile) in tiles.chunks_mut(q4::TILE_BYTES).enumerate() {
        let c0 = t * q4::TILE_COLS;
        let c1 = cols.min(c0 + q4::TILE_COLS);
        for r in 0..q4::TILE_ROWS {
            let row = g * q4::TILE_ROWS + r;
            let x = if row < rows { &values[row * cols + c0..row * cols + c1] } else { &[][..] };
            let mut q = [0u8; q4::TILE_COLS];
            match dtype {
                DType::Q4_0 => {
                    for b in 0..q4::TILE_COLS / q4::BLOCK {
                        let xb = &x[x.len().min(b * q4::BLOCK)..x.len().min(b * q4::BLOCK + q4::BLOCK)];
                        let (d, qb) = q4_0_block(xb);
                        q[b * q4::BLOCK..][..q4::BLOCK].copy_from_slice(&qb);
                        let at = q4::q4_0_scale_at(r, b);
                        tile[at..at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                    }
                }
                DType::Q4_K => {
                    let s = q4_k_super_block(x);
                    q = s.q;
                    q4::set_q4_k_super(tile, r, s.d, s.dmin);
                    for j in 0..8 {
                        q4::set_q4_k_sub(tile, r, j, s.scales[j], s.mins[j]);
                    }
                }
                _ => unreachable!("{dtype} is not a 4-bit type"),
            }
            for (c, &v) in q.iter().enumerate() {
                q4::set_quant(tile, r, c, v);
            }
        }
    }
}

/// Writes `values` as the float type `dtype`, little-endian, through `buf`.
fn write_floats(values: &[f32], dtype: DType, buf: &mut Vec<u8>, out: &mut dyn Write) -> io::Result<()> {
    buf.clear();
    match dtype {
        DType::F32 => buf.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => buf.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())),
        DType::BF16 => buf.extend(values.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())),
        _ => unreachable!("{dtype} is not a float type"),
    }
    out.write_all(buf)
}

/// Quantises up to 32 values to signed bytes with one f16 scale; a short block is
/// padded with zeros. The bytes are chosen against the f16-rounded scale the runtime
/// will multiply by, so rounding the scale adds no error of its own.
pub fn quantize_block(values: &[f32]) -> ([i8; BLOCK], f16) {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = f16::from_f32(amax / 127.0);
    let d = scale.to_f32();
    let mut quants = [0i8; BLOCK];
    if d > 0.0 {
        for (q, &v) in quants.iter_mut().zip(values) {
            *q = (v / d).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (quants, scale)
}

/// Writes f32 values (norm weights) as little-endian bytes.
pub fn write_f32s(values: &[f32], out: &mut dyn Write) -> io::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rows_are_padded_and_scaled() {
        let rows = 2;
        let cols = 36;
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 - 30.0) * 0.25).collect();
        let mut out = Vec::new();
        write_matrix(&values, rows, cols, DType::Q8_0, Layout::Q8_0Rows, &mut out).unwrap();
        let blocks = 2;
        assert_eq!(out.len(), rows * blocks * 34);
        let (quants, scales) = out.split_at(rows * blocks * 32);
        for r in 0..rows {
            for c in 0..blocks * 32 {
                let q = quants[(r * blocks * 32) + c] as i8 as f32;
                let s_bits = u16::from_le_bytes([
                    scales[(r * blocks + c / 32) * 2],
                    scales[(r * blocks + c / 32) * 2 + 1],
                ]);
                let w = q * f16::from_bits(s_bits).to_f32();
                let expected = if c < cols { values[r * cols + c] } else { 0.0 };
                let amax = values[r * cols..][..cols]
                    .chunks(32)
                    .nth(c / 32)
                    .unwrap()
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                assert!((w - expected).abs() <= amax / 127.0 * 0.51 + 1e-6, "{r},{c}: {w} vs {expected}");
            }
        }
    }

    #[test]
    fn column_panels_hold_each_element_where_the_layout_says() {
        // Two full panels and a narrow third: element (r, c) of panel p = c / 2048
        // (width w) is at p * 2048 * rows + r * w + c % 2048.
        let (rows, cols) = (3, 2 * 2048 + 5);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut out = Vec::new();
        write_matrix(&values, rows, cols, DType::F32, Layout::ColumnPanels, &mut out).unwrap();
        assert_eq!(out.len(), rows * cols * 4);
        let stored: Vec<f32> = out.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        for r in 0..rows {
            for c in 0..cols {
                let (p, w) = (c / 2048, if c < 2 * 2048 { 2048 } else { 5 });
                assert_eq!(stored[p * 2048 * rows + r * w + c % 2048], values[r * cols + c], "({r}, {c})");
            }
        }
    }

    #[test]
    fn q4_tiles_dequantise_close_to_the_values() {
        // 11 rows (a partial second group), 300 columns (a partial second tile): every
        // weight within half a step of its block, and the padding is zero.
        let (rows, cols) = (11, 300);
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        for dtype in [DType::Q4_0, DType::Q4_K] {
            let mut out = Vec::new();
            write_matrix(&values, rows, cols, dtype, Layout::Q4Tiles, &mut out).unwrap();
            assert_eq!(out.len() as u64, q4::tiles_len(rows as u64, cols as u64).unwrap());
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                q4::dequantize(dtype, &out, cols, r, 0, &mut row);
                for (c, (&got, &want)) in row.iter().zip(&values[r * cols..]).enumerate() {
                    // Values span [-1, 1]: a step of about 2 / 15 (q4_0: 1 / 8, and a
                    // value opposite the extreme can clamp a whole step short).
                    assert!((got - want).abs() <= 0.13, "{dtype} ({r}, {c}): {got} vs {want}");
                }
            }
            let mut pad = vec![1f32; 2 * 256 - cols];
            q4::dequantize(dtype, &out, 512, 15, cols, &mut pad);
            assert!(pad.iter().all(|&v| v == 0.0), "{dtype} padding");
        }
    }

    #[test]
    fn half_types_round_to_nearest() {
        let mut out = Vec::new();
        write_matrix(&[1.0, -2.5, 1e-3], 1, 3, DType::BF16, Layout::RowMajor, &mut out).unwrap();
        let got: Vec<f32> = out
            .chunks(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        assert_eq!(got[0], 1.0);
        assert_eq!(got[1], -2.5);
        assert!((got[2] - 1e-3).abs() < 1e-5);
    }
}
