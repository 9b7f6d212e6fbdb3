//! Numeric kernels over weight matrices stored in the blob's dtypes.
//!
//! Every matrix is `rows x cols` with each output row contiguous (`[out, in]`), so
//! `y = W x` streams through the weights once. Kernels run on the current rayon pool.

mod portable;

use half::{bf16, f16};

/// A weight matrix viewed in place over the blob.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: MatrixData<'a>,
}

/// The stored elements of a [`Matrix`]; see `olmo_format::Layout` for q8_0.
#[derive(Debug, Clone, Copy)]
pub enum MatrixData<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    BF16(&'a [u16]),
    /// `rows * blocks * 32` quants, then `rows * blocks` f16 scales (`blocks = ceil(cols / 32)`).
    Q8_0 { quants: &'a [i8], scales: &'a [u16] },
}

impl Matrix<'_> {
    /// Writes row `r` as f32 into `out` (`cols` long): an embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match self.data {
            MatrixData::F32(w) => out.copy_from_slice(&w[r * c..][..c]),
            MatrixData::F16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c..][..c]) {
                    *o = f16::from_bits(b).to_f32();
                }
            }
            MatrixData::BF16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c..][..c]) {
                    *o = bf16::from_bits(b).to_f32();
                }
            }
            MatrixData::Q8_0 { quants, scales } => {
                let blocks = c.div_ceil(32);
                let q = &quants[r * blocks * 32..][..c];
                let s = &scales[r * blocks..][..blocks];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = q[i] as f32 * f16::from_bits(s[i / 32]).to_f32();
                }
            }
        }
    }
}

/// `y = W x`: `x` has `w.cols` elements, `y` has `w.rows`.
pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols);
    assert_eq!(y.len(), w.rows);
    portable::matvec(w, x, y);
}

/// `Y = X W^T` for a batch: `x` is `n x w.cols` row-major, `y` is `n x w.rows`.
pub fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols);
    assert_eq!(y.len(), n * w.rows);
    for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
        matvec(w, xi, yi);
    }
}
