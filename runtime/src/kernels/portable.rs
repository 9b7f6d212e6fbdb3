//! Plain Rust kernels: the reference every other path is tested against, and the
//! fallback on CPUs without AVX2/FMA/F16C.

use std::cell::RefCell;

use half::{bf16, f16};
use olmo_format::q4;

use super::activations::QuantX;
use super::kv_element::KvElement;
use super::matrix::{Matrix, MatrixData};
use super::tasks::{min_rows_per_block, par_rows_guided, with_local};

fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

pub fn scaled_dots<E: KvElement>(q: &[f32], rows: &[E], scale: f32, out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(q.len().max(1))) {
        *o = scale * q.iter().zip(row).map(|(a, b)| a * b.to_f32()).sum::<f32>();
    }
}

pub fn weighted_sum<E: KvElement>(weights: &[f32], rows: &[E], out: &mut [f32]) {
    out.fill(0.0);
    let d = out.len();
    for (t, &p) in weights.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&rows[t * d..][..d]) {
            *o += p * v.to_f32();
        }
    }
}

thread_local! {
    static QX: RefCell<QuantX> = const { RefCell::new(QuantX::new()) };
}

pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    // Row `r` of one row-major panel (or of the whole row-major matrix) times `x`.
    let dot = |p: &Matrix, r: usize, x: &[f32], qx: Option<&QuantX>| -> f32 {
        let c = p.cols;
        match p.data {
            MatrixData::F32(d) => dot_f32(&d[r * c..][..c], x),
            MatrixData::F16(d) => d[r * c..][..c]
                .iter()
                .zip(x)
                .map(|(&b, &v)| f16::from_bits(b).to_f32() * v)
                .sum(),
            MatrixData::BF16(d) => d[r * c..][..c]
                .iter()
                .zip(x)
                .map(|(&b, &v)| bf16::from_bits(b).to_f32() * v)
                .sum(),
            MatrixData::Q8_0 { quants, scales } => {
                // Bytes times bytes per block (exact in i32), then both scales.
                let blocks = c.div_ceil(32);
                let qx = qx.expect("quantised x");
                let q = &quants[r * blocks * 32..][..blocks * 32];
                let s = &scales[r * blocks..][..blocks];
                let mut acc = 0f32;
                for b in 0..blocks {
                    let dot: i32 = q[b * 32..][..32]
                        .iter()
                        .zip(&qx.quants[b * 32..][..32])
                        .map(|(&a, &b)| a as i32 * b as i32)
                        .sum();
                    acc += dot as f32 * (f16::from_bits(s[b]).to_f32() * qx.scales[b]);
                }
                acc
            }
            MatrixData::Q4_0(tiles) | MatrixData::Q4_K(tiles) => {
                // Per block, weights `scale * q - offset` against `dx * xq`: the 4-bit
                // values times the activations' bytes (exact in i32), then the scales,
                // with the offset times the activations' sum.
                let dtype = p.data.q4().expect("a 4-bit matrix").0;
                let qx = qx.expect("quantised x");
                let mut acc = 0f32;
                for b in 0..c.div_ceil(q4::BLOCK) {
                    let (tile, tr, tc) = q4::locate(tiles, c, r, b * q4::BLOCK);
                    let (scale, offset) = q4::block_params(dtype, tile, tr, tc / q4::BLOCK);
                    let dot: i32 = (0..q4::BLOCK)
                        .map(|k| q4::quant(tile, tr, tc + k) as i32 * qx.quants[b * 32 + k] as i32)
                        .sum();
                    acc += qx.scales[b] * (scale * dot as f32 - offset * qx.sums[b] as f32);
                }
                acc
            }
        }
    };
    let run = |qx: Option<&QuantX>, y: &mut [f32]| {
        par_rows_guided(y, min_rows_per_block(w.row_bytes(), 1), 1, |r0, ys| {
            for (i, yr) in ys.iter_mut().enumerate() {
                let r = r0 + i;
                *yr = w.panels().map(|(c0, p)| dot(&p, r, &x[c0..][..p.cols], qx)).sum();
            }
        });
    };
    if let Some(span) = w.data.int8_activations() {
        with_local(&QX, |qx| {
            qx.quantize_portable(x, span);
            if w.data.q4().is_some() {
                qx.pad_and_sum(x.len(), x.len().div_ceil(32));
            }
            run(Some(qx), y)
        })
    } else {
        run(None, y)
    }
}
