//! The weight matrices the kernels multiply: views over a blob's bytes in its dtypes
//! and layouts, and their element-wise reads (an embedding row, a dequantised segment).

use half::{bf16, f16};
use olmo_format::{q4, DType};

use super::activations::ScaleSpan;

/// A weight matrix viewed in place over the blob.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Width of the column panels the elements are stored in (see
    /// `olmo_format::Layout::ColumnPanels`); `cols` or more for a row-major matrix.
    pub panel: usize,
    pub data: MatrixData<'a>,
}

/// The stored elements of a [`Matrix`]; see `olmo_format::Layout` for q8_0.
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)] // Q4_K, as the dtype
pub enum MatrixData<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    BF16(&'a [u16]),
    /// `rows * blocks * 32` quants, then `rows * blocks` f16 scales (`blocks = ceil(cols / 32)`).
    Q8_0 { quants: &'a [i8], scales: &'a [u16] },
    /// q4_0 tiles of 8 rows by 256 columns (`olmo_format::q4`).
    Q4_0(&'a [u8]),
    /// q4_k tiles of 8 rows by 256 columns (`olmo_format::q4`).
    Q4_K(&'a [u8]),
}

impl<'a> MatrixData<'a> {
    /// The tiles and dtype of a 4-bit matrix.
    pub fn q4(&self) -> Option<(DType, &'a [u8])> {
        match *self {
            MatrixData::Q4_0(t) => Some((DType::Q4_0, t)),
            MatrixData::Q4_K(t) => Some((DType::Q4_K, t)),
            _ => None,
        }
    }

    /// Whether the elements are quantised in blocks (q8_0, q4_0, q4_k): row-major only,
    /// and multiplied against activations rounded to int8.
    pub fn is_quantised(&self) -> bool {
        matches!(self, MatrixData::Q8_0 { .. } | MatrixData::Q4_0(_) | MatrixData::Q4_K(_))
    }

    /// For quantised elements, the span their products round activations in
    /// ([`ScaleSpan::of`] their dtype).
    pub(crate) fn int8_activations(&self) -> Option<ScaleSpan> {
        match self {
            MatrixData::Q8_0 { .. } => Some(ScaleSpan::of(DType::Q8_0)),
            _ => self.q4().map(|(dtype, _)| ScaleSpan::of(dtype)),
        }
    }
}

impl<'a> Matrix<'a> {
    /// A row-major matrix.
    pub fn row_major(rows: usize, cols: usize, data: MatrixData<'a>) -> Matrix<'a> {
        Matrix { rows, cols, panel: cols, data }
    }

    /// A float matrix stored in column panels of `olmo_format::PANEL_COLS`.
    pub fn column_panels(rows: usize, cols: usize, data: MatrixData<'a>) -> Matrix<'a> {
        Matrix { rows, cols, panel: (olmo_format::PANEL_COLS as usize).min(cols), data }
    }

    /// Bytes of one row's elements (q8_0: quants and scales).
    pub fn row_bytes(&self) -> usize {
        match self.data {
            MatrixData::F32(_) => self.cols * 4,
            MatrixData::F16(_) | MatrixData::BF16(_) => self.cols * 2,
            MatrixData::Q8_0 { .. } => self.cols.div_ceil(32) * 34,
            MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => q4::tiles_per_group(self.cols) * q4::TILE_BYTES / q4::TILE_ROWS,
        }
    }

    /// Whether the rows are stored whole, one after another.
    pub fn is_row_major(&self) -> bool {
        self.panel >= self.cols
    }

    /// The column panels in order, each as a row-major matrix with its first column:
    /// `W x` is the sum over them of `panel * x[c0 .. c0 + panel.cols]`. A row-major
    /// matrix is its own single panel.
    pub fn panels(&self) -> impl Iterator<Item = (usize, Matrix<'a>)> {
        let m = *self;
        let count = if m.is_row_major() { 1 } else { m.cols.div_ceil(m.panel) };
        (0..count).map(move |p| {
            if count == 1 {
                return (0, m);
            }
            let c0 = p * m.panel;
            let width = m.panel.min(m.cols - c0);
            // Every panel before this one is `panel` wide: it starts `c0 * rows` in.
            let (start, len) = (c0 * m.rows, width * m.rows);
            let data = match m.data {
                MatrixData::F32(d) => MatrixData::F32(&d[start..][..len]),
                MatrixData::F16(d) => MatrixData::F16(&d[start..][..len]),
                MatrixData::BF16(d) => MatrixData::BF16(&d[start..][..len]),
                MatrixData::Q8_0 { .. } | MatrixData::Q4_0(_) | MatrixData::Q4_K(_) => {
                    unreachable!("quantised matrices are row-major (Matrix::check)")
                }
            };
            (c0, Matrix::row_major(m.rows, width, data))
        })
    }

    /// Writes row `r` as f32 into `out` (`cols` long): an embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        self.segment_to_f32(r, 0, out);
    }

    /// Writes columns `c0 .. c0 + out.len()` of row `r` as f32 into `out`.
    pub fn segment_to_f32(&self, r: usize, c0: usize, out: &mut [f32]) {
        let end = c0 + out.len();
        debug_assert!(end <= self.cols);
        for (p0, p) in self.panels() {
            let (lo, hi) = (c0.max(p0), end.min(p0 + p.cols));
            if lo < hi {
                p.row_major_segment(r, lo - p0, &mut out[lo - c0..hi - c0]);
            }
        }
    }

    /// [`Matrix::segment_to_f32`] of a row-major matrix.
    fn row_major_segment(&self, r: usize, c0: usize, out: &mut [f32]) {
        let c = self.cols;
        let n = out.len();
        match self.data {
            MatrixData::F32(w) => out.copy_from_slice(&w[r * c + c0..][..n]),
            MatrixData::F16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c + c0..][..n]) {
                    *o = f16::from_bits(b).to_f32();
                }
            }
            MatrixData::BF16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c + c0..][..n]) {
                    *o = bf16::from_bits(b).to_f32();
                }
            }
            MatrixData::Q8_0 { quants, scales } => {
                let blocks = c.div_ceil(32);
                let q = &quants[r * blocks * 32..][..c];
                let s = &scales[r * blocks..][..blocks];
                for (i, o) in out.iter_mut().enumerate() {
                    let j = c0 + i;
                    *o = q[j] as f32 * f16::from_bits(s[j / 32]).to_f32();
                }
            }
            MatrixData::Q4_0(t) => q4::dequantize(DType::Q4_0, t, c, r, c0, out),
            MatrixData::Q4_K(t) => q4::dequantize(DType::Q4_K, t, c, r, c0, out),
        }
    }

    /// The slices must hold the whole matrix: the SIMD kernels read through raw pointers.
    pub(crate) fn check(&self) {
        let w = self;
        let (r, c) = (w.rows, w.cols);
        // Checked products: a hand-built Matrix must not pass by wrapping around.
        let fits = |len: usize, per_row: usize| r.checked_mul(per_row).is_some_and(|n| len >= n);
        // Panels only reorder the elements: the same count as row-major.
        let ok = match w.data {
            MatrixData::F32(d) => fits(d.len(), c),
            MatrixData::F16(d) | MatrixData::BF16(d) => fits(d.len(), c),
            MatrixData::Q8_0 { quants, scales } => {
                let blocks = c.div_ceil(32);
                blocks
                    .checked_mul(32)
                    .is_some_and(|per_row| fits(quants.len(), per_row))
                    && fits(scales.len(), blocks)
            }
            MatrixData::Q4_0(t) | MatrixData::Q4_K(t) => {
                q4::tiles_len(r as u64, c as u64).is_some_and(|n| t.len() as u64 >= n)
            }
        };
        assert!(ok, "matrix data shorter than {r} x {c}");
        assert!(w.panel > 0 || c == 0, "column panels of width 0");
        assert!(w.is_row_major() || !w.data.is_quantised(), "a quantised matrix in column panels");
    }
}
