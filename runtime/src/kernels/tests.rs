//! The SIMD kernels against the portable reference on awkward shapes.

use half::{bf16, f16};

use super::activations::{QuantX, ScaleSpan};
use super::tasks::{grow_huge, par_rows_guided};
use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Owned storage for a test matrix of every dtype.
struct Owned {
    rows: usize,
    cols: usize,
    f32: Vec<f32>,
    f16: Vec<u16>,
    bf16: Vec<u16>,
    quants: Vec<i8>,
    scales: Vec<u16>,
    q4_0: Vec<u8>,
    q4_k: Vec<u8>,
}

/// `values` (`rows x cols`) quantised in `dtype`'s tiles, as `olmoc` writes them.
fn q4_tiles(values: &[f32], rows: usize, cols: usize, dtype: olmo_format::DType) -> Vec<u8> {
    let mut out = Vec::new();
    olmoc::convert::write_matrix(values, rows, cols, dtype, olmo_format::Layout::Q4Tiles, &mut out).unwrap();
    out
}

impl Owned {
    fn new(rng: &mut Rng, rows: usize, cols: usize) -> Owned {
        let f32 = rng.vec(rows * cols);
        let blocks = cols.div_ceil(32);
        let mut quants = vec![0i8; rows * blocks * 32];
        let mut scales = vec![0u16; rows * blocks];
        for r in 0..rows {
            for b in 0..blocks {
                let vals = &f32[r * cols + b * 32..r * cols + ((b + 1) * 32).min(cols)];
                let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = f16::from_f32(amax / 127.0);
                scales[r * blocks + b] = s.to_bits();
                let d = s.to_f32();
                for (i, v) in vals.iter().enumerate() {
                    quants[r * blocks * 32 + b * 32 + i] =
                        if d > 0.0 { (v / d).round().clamp(-127.0, 127.0) as i8 } else { 0 };
                }
            }
        }
        Owned {
            rows,
            cols,
            q4_0: q4_tiles(&f32, rows, cols, olmo_format::DType::Q4_0),
            q4_k: q4_tiles(&f32, rows, cols, olmo_format::DType::Q4_K),
            f16: f32.iter().map(|&v| f16::from_f32(v).to_bits()).collect(),
            bf16: f32.iter().map(|&v| bf16::from_f32(v).to_bits()).collect(),
            f32,
            quants,
            scales,
        }
    }

    fn all(&self) -> Vec<(&'static str, Matrix<'_>)> {
        let m = |data| Matrix::row_major(self.rows, self.cols, data);
        vec![
            ("f32", m(MatrixData::F32(&self.f32))),
            ("f16", m(MatrixData::F16(&self.f16))),
            ("bf16", m(MatrixData::BF16(&self.bf16))),
            ("q8_0", m(MatrixData::Q8_0 { quants: &self.quants, scales: &self.scales })),
            ("q4_0", m(MatrixData::Q4_0(&self.q4_0))),
            ("q4_k", m(MatrixData::Q4_K(&self.q4_k))),
        ]
    }
}

/// Allowed difference between two ways of computing `W x` row `r`: float reordering,
/// plus for q8_0 on AVX2 the int8 rounding of `x` (half a step of `max|x_block| / 127`
/// per element, times `|w|`).
fn tolerance(name: &str, w: &Matrix, r: usize, x: &[f32], quantised_x: bool) -> f32 {
    let mut row = vec![0f32; w.cols];
    w.row_to_f32(r, &mut row);
    let mag: f32 = row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
    // A 4-bit block sums `scale * q` and `offset` terms apart, which may each exceed
    // the weight they make: more room for reordering.
    let mut tol = mag * if name.starts_with("q4") { 1e-4 } else { 1e-5 } + 1e-6;
    if name == "q8_0" && quantised_x {
        for (b, xb) in x.chunks(32).enumerate() {
            let step = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let wsum: f32 = row[b * 32..][..xb.len()].iter().map(|v| v.abs()).sum();
            tol += wsum * step * 0.5 * 1.001 + wsum * step * 1e-3;
        }
    }
    tol
}

const SHAPES: [(usize, usize); 10] =
    [(1, 1), (3, 7), (5, 31), (7, 33), (13, 64), (67, 100), (130, 257), (9, 300), (301, 515), (40, 2100)];

/// Every SIMD set against the portable kernels, on shapes with tail blocks and rows.
#[test]
fn simd_matvec_matches_portable() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for (rows, cols) in SHAPES {
        let owned = Owned::new(&mut rng, rows, cols);
        let x = rng.vec(cols);
        for (name, w) in owned.all() {
            let mut want = vec![0f32; rows];
            matvec_with(Kernels::Portable, &w, &x, &mut want);
            for k in available_kernels().into_iter().filter(|&k| k != Kernels::Portable) {
                let mut got = vec![0f32; rows];
                matvec_with(k, &w, &x, &mut got);
                for r in 0..rows {
                    let tol = tolerance(name, &w, r, &x, false);
                    assert!(
                        (want[r] - got[r]).abs() <= tol,
                        "{k:?} {name} {rows}x{cols} row {r}: {} vs {} (tol {tol})",
                        want[r],
                        got[r]
                    );
                }
            }
        }
    }
}

#[test]
fn simd_matvec_is_exact_on_integers() {
    // Small integers multiply and add exactly in f32, so any summation order agrees. For
    // q8_0 the scales are 1 and each block of x holds a 127, so x quantises to itself:
    // the integer block sums must come out exact too, over every weight byte from -128
    // to 127 (the AVX-512 kernel takes |w| as unsigned and moves w's sign onto x).
    let (rows, cols): (usize, usize) = (37, 75 + 256);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let x: Vec<f32> = (0..cols).map(|i| if i % 32 == 5 { 127.0 } else { ((i * 13) % 255) as f32 - 127.0 }).collect();
    let blocks = cols.div_ceil(32);
    let quants: Vec<i8> = (0..rows)
        .flat_map(|r| (0..blocks * 32).map(move |c| if c < cols { ((r * 11 + c * 37) % 256) as u8 as i8 } else { 0 }))
        .collect();
    let scales = vec![f16::ONE.to_bits(); rows * blocks];
    for m in [
        Matrix::row_major(rows, cols, MatrixData::F32(&w)),
        Matrix::row_major(rows, cols, MatrixData::Q8_0 { quants: &quants, scales: &scales }),
    ] {
        let mut want = vec![0f32; rows];
        matvec_with(Kernels::Portable, &m, &x, &mut want);
        for k in available_kernels() {
            let mut got = vec![0f32; rows];
            matvec_with(k, &m, &x, &mut got);
            assert_eq!(want, got, "{k:?} {:?}", std::mem::discriminant(&m.data));
        }
    }
}

/// 4-bit products with integer scales and activations that quantise to themselves
/// (each block of x holds a 127): exact in every kernel set, over every 4-bit value
/// and, for q4_k, 6-bit scales and mins with their top bits set.
#[test]
fn q4_matvec_is_exact_on_integers() {
    use olmo_format::q4;
    let (rows, cols) = (21, 600);
    let x: Vec<f32> = (0..cols).map(|i| if i % 32 == 7 { 127.0 } else { ((i * 13) % 255) as f32 - 127.0 }).collect();
    let len = q4::tiles_len(rows as u64, cols as u64).unwrap() as usize;
    let (mut t0, mut tk) = (vec![0u8; len], vec![0u8; len]);
    let per_group = q4::tiles_per_group(cols);
    for r in 0..rows {
        for c in 0..cols {
            let (g, t) = (r / 8, c / 256);
            let at = (g * per_group + t) * q4::TILE_BYTES;
            let q = ((r * 11 + c * 7) % 16) as u8;
            q4::set_quant(&mut t0[at..][..q4::TILE_BYTES], r % 8, c % 256, q);
            q4::set_quant(&mut tk[at..][..q4::TILE_BYTES], r % 8, c % 256, q);
        }
        for t in 0..per_group {
            let at = ((r / 8) * per_group + t) * q4::TILE_BYTES;
            for b in 0..8 {
                let s = q4::q4_0_scale_at(r % 8, b);
                let d = f16::from_f32([1.0, 2.0, 0.5][(r + b) % 3]);
                t0[at + s..at + s + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                let (sc, m) = (((r * 5 + b * 9 + t) % 64) as u8, ((r * 3 + b * 17) % 64) as u8);
                q4::set_q4_k_sub(&mut tk[at..][..q4::TILE_BYTES], r % 8, b, sc, m);
            }
            q4::set_q4_k_super(&mut tk[at..][..q4::TILE_BYTES], r % 8, f16::ONE, f16::from_f32(0.5));
        }
    }
    for m in [Matrix::row_major(rows, cols, MatrixData::Q4_0(&t0)), Matrix::row_major(rows, cols, MatrixData::Q4_K(&tk))] {
        // The exact product in f64 from the dequantised rows.
        let want: Vec<f32> = (0..rows)
            .map(|r| {
                let mut row = vec![0f32; cols];
                m.row_to_f32(r, &mut row);
                row.iter().zip(&x).map(|(&w, &v)| w as f64 * v as f64).sum::<f64>() as f32
            })
            .collect();
        for k in available_kernels() {
            let mut got = vec![0f32; rows];
            matvec_with(k, &m, &x, &mut got);
            assert_eq!(want, got, "{k:?} {:?}", m.data.q4().unwrap().0);
            // The GEMM (dequantised tiles) too: 5 tokens.
            let xs: Vec<f32> = x.iter().cycle().take(5 * cols).copied().collect();
            let mut got = vec![0f32; 5 * rows];
            matmul_with(k, &m, &xs, 5, &mut got);
            for (i, g) in got.chunks_exact(rows).enumerate() {
                assert_eq!(want, g, "{k:?} {:?} GEMM token {i}", m.data.q4().unwrap().0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn q4_groups_dequantise_like_rows() {
    if !avx2_available() {
        return;
    }
    let mut rng = Rng(31337);
    let owned = Owned::new(&mut rng, 19, 300);
    for (dtype, tiles) in [(olmo_format::DType::Q4_0, &owned.q4_0), (olmo_format::DType::Q4_K, &owned.q4_k)] {
        let w = Matrix::row_major(19, 300, MatrixData::Q4_0(tiles));
        let w = if dtype == olmo_format::DType::Q4_K { Matrix::row_major(19, 300, MatrixData::Q4_K(tiles)) } else { w };
        for g in 0..3 {
            let mut simd = vec![f32::NAN; 8 * 300];
            unsafe { q4_avx2::dequantize_group(dtype, tiles, 300, g, 0, 300, &mut simd) };
            for r in 0..8usize.min(19 - 8 * g) {
                let mut row = vec![0f32; 300];
                w.row_to_f32(8 * g + r, &mut row);
                assert_eq!(row, simd[r * 300..][..300], "{dtype} row {}", 8 * g + r);
            }
            // The AMX GEMM's slices: the second tile alone, 44 columns of it.
            let mut part = vec![f32::NAN; 8 * 44];
            unsafe { q4_avx2::dequantize_group(dtype, tiles, 300, g, 256, 44, &mut part) };
            for r in 0..8usize.min(19 - 8 * g) {
                assert_eq!(simd[r * 300 + 256..][..44], part[r * 44..][..44], "{dtype} row {} from column 256", 8 * g + r);
            }
        }
    }
}

#[test]
fn matmul_matches_matvec() {
    let mut rng = Rng(12345);
    // Beyond odd sizes: (7, 24, 600) and (14, 56, 1100) give the AVX-512 sweep a pair of
    // strips whose second is partial, a lone token group, and several column blocks.
    // (25, 141, 777): for the 4-bit VNNI GEMM, two tasks, a last strip of one whole and
    // one partial tile group (141 = 8 x 16 + 13) and five token groups; (13, 130, 300)
    // and (20, 70, 530) end on a lone tile group.
    let shapes = [
        (1, 5, 7),
        (2, 9, 37),
        (4, 40, 2050),
        (3, 17, 33),
        (7, 67, 100),
        (13, 130, 300),
        (20, 70, 530),
        (7, 24, 600),
        (14, 56, 1100),
        (25, 141, 777),
    ];
    for (n, rows, cols) in shapes {
        let owned = Owned::new(&mut rng, rows, cols);
        let x = rng.vec(n * cols);
        for k in available_kernels() {
            for (name, w) in owned.all() {
                let mut got = vec![0f32; n * rows];
                matmul_with(k, &w, &x, n, &mut got);
                for i in 0..n {
                    let xi = &x[i * cols..][..cols];
                    let mut want = vec![0f32; rows];
                    matvec_with(Kernels::Portable, &w, xi, &mut want);
                    for r in 0..rows {
                        let tol = tolerance(name, &w, r, xi, false);
                        let g = got[i * rows + r];
                        assert!(
                            (want[r] - g).abs() <= tol,
                            "{k:?} {name} n={n} {rows}x{cols} [{i},{r}]: {} vs {g}",
                            want[r]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn q8_0_activation_rounding_stays_within_its_bound() {
    // Against the exact product with f32 activations, the only extra error is the
    // int8 rounding of x: at most half a step of max|x_block| / 127 per element.
    let mut rng = Rng(99);
    for (rows, cols) in [(9, 300), (67, 100), (5, 31)] {
        let owned = Owned::new(&mut rng, rows, cols);
        let w = owned.all().pop().unwrap().1;
        let x = rng.vec(cols);
        for k in available_kernels() {
            let mut got = vec![0f32; rows];
            matvec_with(k, &w, &x, &mut got);
            for (r, &g) in got.iter().enumerate() {
                let mut row = vec![0f32; cols];
                w.row_to_f32(r, &mut row);
                let exact: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
                let tol = tolerance("q8_0", &w, r, &x, true);
                assert!((exact - g).abs() <= tol, "{k:?} {rows}x{cols} row {r}");
            }
        }
    }
}

#[test]
fn int8_activation_bytes_agree() {
    let mut rng = Rng(5);
    // 600: two whole super-blocks and a partial one; 200: one partial.
    for n in [200usize, 600] {
        // Each block of 32 a different magnitude, so the two spans round differently.
        let x: Vec<f32> = (0..n).map(|i| if i % 37 == 0 { 0.0 } else { rng.next() * (1 + i / 32 % 5) as f32 }).collect();
        let mut per_span = Vec::new();
        for span in [ScaleSpan::Block, ScaleSpan::SuperBlock] {
            let mut a = QuantX::new();
            a.quantize_portable(&x, span);
            #[cfg(target_arch = "x86_64")]
            if avx2_available() {
                let mut b = QuantX::new();
                b.quantize(&x, span);
                assert_eq!(a.quants, b.quants, "{span:?} n={n}");
                assert_eq!(a.scales, b.scales, "{span:?} n={n}");
            }
            let blocks = n.div_ceil(32);
            for (b, &d) in a.scales[..blocks].iter().enumerate() {
                // The scale is the span's max over 127; its max quantises to +-127.
                let s0 = b * 32 / span.values() * span.values();
                let amax = x[s0..n.min(s0 + span.values())].iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(d, amax / 127.0, "{span:?} n={n} block {b}");
            }
            assert!(a.quants.iter().any(|&q| q == 127 || q == -127));
            per_span.push(a.quants[..n].to_vec());
        }
        assert_ne!(per_span[0], per_span[1], "n={n}: the spans must round differently here");
    }
}

/// Every kernel set's 4-bit products, one token and GEMM, multiply the weights by the
/// activations rounded per their dtype's span (q4_k per super-block of 256, as
/// llama.cpp's Q8_K; q4_0 per block of 32): against the f64 product of the dequantised
/// rows with `x` so rounded, within reordering, and far from the other span's.
#[test]
fn q4_products_round_activations_per_their_span() {
    let mut rng = Rng(0x5EA1);
    let (rows, cols, n) = (19, 600, 5);
    let owned = Owned::new(&mut rng, rows, cols);
    // One value in each super-block 20 times the others: rounded with it, they lose
    // most of their precision.
    let x: Vec<f32> = (0..n * cols).map(|i| if i % cols % 256 == 3 { 20.0 } else { rng.next() }).collect();
    for (name, w) in owned.all().into_iter().filter(|(name, _)| name.starts_with("q4")) {
        let span = w.data.int8_activations().unwrap();
        assert_eq!(span, if name == "q4_k" { ScaleSpan::SuperBlock } else { ScaleSpan::Block });
        let other = if span == ScaleSpan::Block { ScaleSpan::SuperBlock } else { ScaleSpan::Block };
        let exact = |t: usize, r: usize, span: ScaleSpan| {
            let mut xr = x[t * cols..][..cols].to_vec();
            super::activations::round_like_int8(&mut xr, span);
            let mut row = vec![0f32; cols];
            w.row_to_f32(r, &mut row);
            row.iter().zip(&xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32
        };
        for k in available_kernels().into_iter().filter(|&k| k != Kernels::Amx) {
            let mut gemm = vec![0f32; n * rows];
            matmul_with(k, &w, &x, n, &mut gemm);
            for t in 0..n {
                let xt = &x[t * cols..][..cols];
                let mut one = vec![0f32; rows];
                matvec_with(k, &w, xt, &mut one);
                let mut apart = 0;
                for r in 0..rows {
                    let (want, tol) = (exact(t, r, span), tolerance(name, &w, r, xt, false));
                    for (how, got) in [("matvec", one[r]), ("GEMM", gemm[t * rows + r])] {
                        assert!((got - want).abs() <= tol, "{k:?} {name} {how} [{t},{r}]: {got} vs {want} (tol {tol})");
                    }
                    apart += usize::from((exact(t, r, other) - want).abs() > 5.0 * tol);
                }
                assert!(apart > rows / 2, "{name} token {t}: the spans agree on {} of {rows} rows", rows - apart);
            }
        }
    }
}

/// Attention's two kernels over a cache of `E` against the f64 definition on the
/// values the cache holds.
fn attention_kernels_match_for<E: KvElement>() {
    let mut rng = Rng(777);
    for d in [1, 7, 8, 12, 64, 72, 128, 131] {
        for n in [0, 1, 7, 8, 9, 17, 40] {
            let q = rng.vec(d);
            let rows: Vec<E> = rng.vec(n * d + d).into_iter().map(E::from_f32).collect();
            let weights = rng.vec(n);
            let mut want_scores = vec![0f32; n];
            let mut want_sum = vec![0f32; d];
            for t in 0..n {
                let row = |c: usize| f64::from(rows[t * d + c].to_f32());
                want_scores[t] = 0.3 * (0..d).map(|c| f64::from(q[c]) * row(c)).sum::<f64>() as f32;
                for (c, w) in want_sum.iter_mut().enumerate() {
                    *w += weights[t] * row(c) as f32;
                }
            }
            for k in available_kernels() {
                let mut scores = vec![f32::NAN; n];
                scaled_dots(k, &q, &rows, 0.3, &mut scores);
                let mut sum = vec![f32::NAN; d];
                weighted_sum(k, &weights, &rows, &mut sum);
                for (t, (g, w)) in scores.iter().zip(&want_scores).enumerate() {
                    assert!((g - w).abs() <= 1e-5 * d as f32, "{k:?} d={d} n={n} score {t}: {g} vs {w}");
                }
                for (c, (g, w)) in sum.iter().zip(&want_sum).enumerate() {
                    assert!((g - w).abs() <= 1e-5 * (n as f32 + 1.0), "{k:?} d={d} n={n} column {c}: {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn attention_kernels_match() {
    attention_kernels_match_for::<f32>();
    attention_kernels_match_for::<f16>();
}

/// Filing a row in an f16 cache rounds to nearest, ties to even, as `half` does: on
/// values between f16 neighbours, exact halves, overflow, subnormals and NaN.
#[test]
fn f16_cache_rows_round_like_half() {
    let mut rng = Rng(4242);
    let mut src: Vec<f32> = rng.vec(999).into_iter().map(|v| v * 70000.0).collect();
    // 1 + 2^-11 lies halfway between 1 and the next f16; so does 1 + 3 * 2^-11 between
    // its neighbours, the other way under ties-to-even.
    src.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 65520.0, -1e9, 3e-7, -6e-8, f32::NAN, 0.0, -0.0]);
    for len in [0, 1, 7, 8, 9, 131, src.len()] {
        for k in available_kernels() {
            let mut got = vec![f16::from_bits(0x5555); len];
            store_row(k, &src[..len], &mut got);
            for (i, (g, &s)) in got.iter().zip(&src).enumerate() {
                let want = f16::from_f32(s);
                assert!(g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()), "{k:?} len {len} [{i}] {s}: {g} vs {want}");
            }
        }
    }
}

#[test]
fn with_kernels_overrides_and_restores() {
    let before = active();
    with_kernels(Kernels::Portable, || assert_eq!(active(), Kernels::Portable));
    assert_eq!(active(), before);
}

#[test]
fn q8_0_segments_widen_like_rows() {
    let mut rng = Rng(4242);
    let owned = Owned::new(&mut rng, 3, 100);
    for (_, w) in owned.all() {
        let mut row = vec![0f32; 100];
        w.row_to_f32(2, &mut row);
        let mut seg = vec![0f32; 36];
        w.segment_to_f32(2, 64, &mut seg);
        assert_eq!(&row[64..], &seg[..]);
        #[cfg(target_arch = "x86_64")]
        if let (true, MatrixData::Q8_0 { quants, scales }) = (avx2_available(), w.data) {
            // The GEMM's q8_0 staging: the same values, with a partial last block.
            let mut simd = vec![0f32; 100];
            unsafe { avx2::q8_row_to_f32(quants, scales, 100, 2, 0, &mut simd) };
            assert_eq!(row, simd);
            let mut part = vec![0f32; 36];
            unsafe { avx2::q8_row_to_f32(quants, scales, 100, 2, 64, &mut part) };
            assert_eq!(&row[64..], &part[..]);
        }
    }
}

/// `values` (`rows x cols`, row-major) reordered into column panels of `PANEL_COLS`,
/// as `olmoc` writes them.
fn to_panels<T: Copy>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    let panel = olmo_format::PANEL_COLS as usize;
    let mut out = Vec::with_capacity(values.len());
    for c0 in (0..cols).step_by(panel) {
        for r in 0..rows {
            out.extend_from_slice(&values[r * cols + c0..r * cols + cols.min(c0 + panel)]);
        }
    }
    out
}

#[test]
fn column_panels_multiply_like_rows() {
    // Two full panels and a narrow third (52 columns: not a multiple of 16).
    let (rows, cols) = (37, 2 * 2048 + 52);
    let mut rng = Rng(2048);
    let owned = Owned::new(&mut rng, rows, cols);
    let (f32p, f16p, bf16p) =
        (to_panels(&owned.f32, rows, cols), to_panels(&owned.f16, rows, cols), to_panels(&owned.bf16, rows, cols));
    let panelled = [
        Matrix::column_panels(rows, cols, MatrixData::F32(&f32p)),
        Matrix::column_panels(rows, cols, MatrixData::F16(&f16p)),
        Matrix::column_panels(rows, cols, MatrixData::BF16(&bf16p)),
    ];
    for ((name, plain), panels) in owned.all().into_iter().zip(&panelled) {
        assert_eq!(panels.panels().count(), 3);
        let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
        plain.row_to_f32(rows - 1, &mut a);
        panels.row_to_f32(rows - 1, &mut b);
        assert_eq!(a, b, "{name} row");
        let (mut a, mut b) = (vec![0f32; 100], vec![0f32; 100]);
        plain.segment_to_f32(5, 2000, &mut a);
        panels.segment_to_f32(5, 2000, &mut b);
        assert_eq!(a, b, "{name} segment across a panel edge");
        // 1 token: the matvec; 2-4: one pass for a few tokens; 7: the GEMM.
        for n in [1, 2, 4, 7] {
            let x = rng.vec(n * cols);
            for k in available_kernels() {
                let (mut want, mut got) = (vec![0f32; n * rows], vec![f32::NAN; n * rows]);
                matmul_with(k, &plain, &x, n, &mut want);
                matmul_with(k, panels, &x, n, &mut got);
                for i in 0..n * rows {
                    let tol = tolerance(name, &plain, i % rows, &x[i / rows * cols..][..cols], false);
                    assert!((want[i] - got[i]).abs() <= tol, "{k:?} {name} n={n} [{i}]: {} vs {}", want[i], got[i]);
                }
            }
        }
    }
}

#[test]
fn guided_blocks_cover_every_row_once_and_shrink_to_the_minimum() {
    use std::sync::Mutex;
    for threads in [1, 2, 3] {
        let team = crate::model::team::Team::new(threads);
        for (len, min) in [(1, 4), (7, 4), (100, 4), (1000, 16), (16384, 64)] {
            let mut y = vec![0f32; len];
            let blocks = Mutex::new(Vec::new());
            team.install(|| {
                par_rows_guided(&mut y, min, 1, |r0, ys| {
                    ys.iter_mut().for_each(|v| *v += 1.0);
                    blocks.lock().unwrap().push((r0, ys.len()));
                })
            });
            assert!(y.iter().all(|&v| v == 1.0), "{threads} threads, {len} rows");
            let mut blocks = blocks.into_inner().unwrap();
            blocks.sort();
            let mut next = 0;
            for (i, &(r0, n)) in blocks.iter().enumerate() {
                assert_eq!(r0, next, "blocks tile the rows in order");
                assert!(n >= min.min(len) || i == blocks.len() - 1, "only the last block is under {min}: {blocks:?}");
                next = r0 + n;
            }
            if threads > 1 && len >= 64 * min {
                // Shrinking: the first block is a quarter or more of the rows, the last
                // no more than the minimum.
                assert!(blocks[0].1 >= len / (2 * threads) && blocks.last().unwrap().1 <= min, "{blocks:?}");
            }
        }
    }
}

#[test]
fn swiglu_kernels_match_the_definition() {
    let mut rng = Rng(0x5EED);
    // Every range SwiGLU meets, past the clamp at both ends, and a tail of 5.
    let mut gate: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 1.01).collect();
    gate.extend(rng.vec(1000).iter().map(|v| v * 8.0));
    gate.extend([-1e4, -90.0, -88.0, 0.0, -0.0, 88.0, 90.0, 1e4, 1e-30, -1e-30, 3.0, -3.0, 7.5]);
    let up: Vec<f32> = (0..gate.len()).map(|i| if i % 3 == 0 { 1.0 } else { rng.next() * 4.0 }).collect();
    for k in available_kernels() {
        let mut out = vec![0f32; gate.len()];
        swiglu(k, &gate, &up, &mut out);
        for (i, ((&g, &u), &o)) in gate.iter().zip(&up).zip(&out).enumerate() {
            let want = (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32;
            let tol = 4.0 * f32::EPSILON * want.abs() + 1e-30;
            assert!((o - want).abs() <= tol, "{k:?} [{i}] silu({g}) * {u}: {o} vs {want}");
        }
    }
}

#[test]
fn softmax_kernels_match_the_definition() {
    let mut rng = Rng(0x50F7);
    for n in [1, 5, 8, 9, 31, 64, 513] {
        // Scores of attention's size, and spreads wide enough that some weights
        // underflow (past exp's clamp at -88).
        for spread in [1.0, 30.0, 400.0] {
            let x: Vec<f32> = rng.vec(n).iter().map(|v| v * spread).collect();
            let max = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            for k in available_kernels() {
                let mut got = x.clone();
                softmax(k, &mut got);
                for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
                    let want = ((v as f64 - max).exp() / sum) as f32;
                    // `v - max` rounds to f32 first: an error of half an ulp of the
                    // argument, relative to the result, on top of exp's few ulp.
                    let tol = f32::EPSILON * (8.0 + (v as f64 - max).abs() as f32) * want + 1e-37;
                    assert!((g - want).abs() <= tol, "{k:?} n={n} spread {spread} [{i}]: {g} vs {want}");
                }
            }
        }
    }
}

/// The AVX2 int8 activation rounding is the scalar one, bit for bit, for both spans:
/// whole spans and a partial last one, zeros, values on rounding ties.
#[test]
fn avx2_round_like_int8_is_the_scalar_one() {
    if !avx2_available() {
        return;
    }
    let mut rng = Rng(0x0A8);
    for span in [ScaleSpan::Block, ScaleSpan::SuperBlock] {
        for n in [32, 33, 64, 100, 256, 300, 512, 2050] {
            let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * 3.0).collect();
            x[1] = 0.0;
            x[n - 1] = 127.5 / 127.0; // a tie once scaled, where the block's max is 1
            if n >= 64 {
                x[32..64].fill(0.0); // an all-zero block: scale 0
            }
            if n >= 512 {
                x[256..512].fill(0.0); // an all-zero super-block
            }
            let mut want = x.clone();
            super::activations::round_like_int8(&mut want, span);
            // SAFETY: AVX2/FMA/F16C (checked).
            unsafe { avx2::round_like_int8(&mut x, span) };
            assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{span:?} n={n}");
        }
    }
}

#[test]
fn sum_exp_kernels_match_the_definition() {
    let mut rng = Rng(0x5E4E);
    for n in [1, 7, 8, 9, 100, 100_352] {
        for spread in [1.0, 30.0, 400.0] {
            let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * spread).collect();
            if n > 8 {
                x[3] = f32::NAN; // left out, in the lanes and in the tail
                x[n - 1] = f32::NAN;
            }
            let max = x.iter().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let want: f64 = x.iter().filter(|v| !v.is_nan()).map(|&v| (v as f64 - max as f64).exp()).sum();
            for k in available_kernels() {
                let got = sum_exp(k, &x, max);
                // A few ulp of f32 per term (the argument rounded to f32, exp's 2 ulp),
                // summed in f64: the relative error of the sum is that of its terms.
                assert!((got / want - 1.0).abs() < 1e-6, "{k:?} n={n} spread {spread}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn kl_sum_kernels_match_the_definition() {
    let mut rng = Rng(0x6B1D);
    for n in [1, 7, 8, 9, 100, 100_352] {
        let b: Vec<f32> = rng.vec(n).iter().map(|v| v * 8.0).collect();
        let m: Vec<f32> = b.iter().zip(rng.vec(n)).map(|(&b, d)| b + d * 0.5).collect();
        let lse = |x: &[f32]| {
            let max = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
        };
        let (lb, lm) = (lse(&b), lse(&m));
        let want: f64 = b.iter().zip(&m).map(|(&b, &m)| (b as f64 - lb).exp() * ((b as f64 - lb) - (m as f64 - lm))).sum();
        for k in available_kernels() {
            let got = kl_sum(k, &b, &m, lb as f32, (lm - lb) as f32);
            // Terms rounded to f32 (the differences and exp's 2 ulp) against an f64 sum.
            assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()) + 1e-6, "{k:?} n={n}: {got} vs {want}");
        }
    }
}

/// A decode batch gives each token exactly (bit for bit) what a batch of that token
/// alone gives, whatever the batch size, under every kernel set and dtype; q8_0 and
/// 4-bit tokens exactly their matvec's, float ones within rounding of it. Matrices big
/// enough that the threads split them and each block is taken in several sub-blocks,
/// and column panels.
#[test]
fn decode_batches_match_each_token_alone_exactly() {
    let mut rng = Rng(777);
    type Case = (String, Owned, Option<[Vec<u16>; 2]>, Option<Vec<f32>>);
    let mut cases: Vec<Case> = Vec::new();
    for (rows, cols) in [(5, 31), (67, 100), (301, 515), (700, 2048)] {
        cases.push((format!("{rows}x{cols}"), Owned::new(&mut rng, rows, cols), None, None));
    }
    let (rows, cols) = (37, 2 * 2048 + 52);
    let owned = Owned::new(&mut rng, rows, cols);
    let panels = Some([to_panels(&owned.f16, rows, cols), to_panels(&owned.bf16, rows, cols)]);
    let f32p = Some(to_panels(&owned.f32, rows, cols));
    cases.push(("panels".into(), owned, panels, f32p));
    for (label, owned, half_panels, f32_panels) in &cases {
        let (rows, cols) = (owned.rows, owned.cols);
        let mut matrices = owned.all();
        if let (Some([f16p, bf16p]), Some(f32p)) = (half_panels, f32_panels) {
            matrices = vec![
                ("f32", Matrix::column_panels(rows, cols, MatrixData::F32(f32p))),
                ("f16", Matrix::column_panels(rows, cols, MatrixData::F16(f16p))),
                ("bf16", Matrix::column_panels(rows, cols, MatrixData::BF16(bf16p))),
            ];
        }
        for n in [1, 2, 3, 5, 8, 9] {
            let x = rng.vec(n * cols);
            for k in available_kernels() {
                for (name, w) in &matrices {
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_decode(k, w, &x, n, &mut got);
                    for t in 0..n {
                        let xt = &x[t * cols..][..cols];
                        let mut alone = vec![0f32; rows];
                        matmul_decode(k, w, xt, 1, &mut alone);
                        let got_t = &got[t * rows..][..rows];
                        let same = alone.iter().zip(got_t).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{k:?} {name} {label} n={n} token {t}: {alone:?} vs {got_t:?}");
                        let mut matvec = vec![0f32; rows];
                        matvec_with(k, w, xt, &mut matvec);
                        for r in 0..rows {
                            if w.data.is_quantised() {
                                assert_eq!(matvec[r].to_bits(), alone[r].to_bits(), "{k:?} {name} {label} [{r}]");
                            } else {
                                let tol = tolerance(name, w, r, xt, false);
                                assert!((matvec[r] - alone[r]).abs() <= tol, "{k:?} {name} {label} [{r}]: {} vs {}", matvec[r], alone[r]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 4-bit VNNI kernels compute the AVX2 kernels' float steps in the same order on
/// the same integer block sums: a model decodes the same tokens on either set. One
/// token and decode batches, on shapes with a lone last tile group (rows % 16 <= 8),
/// a partial pair (rows % 16 > 8), tail columns and several tiles per row.
#[cfg(target_arch = "x86_64")]
#[test]
fn q4_vnni_matches_avx2_bit_for_bit() {
    if !avx512_available() {
        return;
    }
    let mut rng = Rng(0xA5A5);
    for (rows, cols) in [(1, 1), (5, 31), (8, 256), (13, 300), (16, 600), (24, 513), (301, 515), (700, 2048)] {
        let owned = Owned::new(&mut rng, rows, cols);
        for (name, w) in owned.all().into_iter().filter(|(_, w)| w.data.q4().is_some()) {
            for n in [1, 2, 3, 4, 5] {
                let x = rng.vec(n * cols);
                let (mut a, mut b) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
                matmul_decode(Kernels::Avx2, &w, &x, n, &mut a);
                matmul_decode(Kernels::Avx512, &w, &x, n, &mut b);
                let same = a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name} {rows}x{cols} n={n}: {a:?} vs {b:?}");
            }
        }
    }
}

/// The AMX GEMM against a reference that rounds the weights (dequantised) and the
/// activations to bf16 as it does (then only the f32 summation order differs), and
/// within the activations' rounding bound of the product with the stored weights:
/// partial strips and token tiles, several tasks, column panels, every dtype it takes.
#[test]
fn amx_gemm_matches_the_rounded_reference() {
    if !Kernels::Amx.supported() {
        eprintln!("skipped: this CPU or kernel has no AMX tiles");
        return;
    }
    let mut rng = Rng(16);
    // (tokens, rows, cols)
    // 300 tokens: slices of 1536 columns, cutting a panel.
    // 5 and 7 tokens: bf16 alone (`gemm_amx::min_batch`). Several tasks: 130 tokens
    // over 600 rows (256, 256 and 88 a task) and 20 over 1100 (1024 and 76).
    let shapes = [(8, 16, 32), (9, 33, 64), (16, 32, 96), (33, 70, 256), (50, 600, 64), (20, 45, 2 * 2048 + 64), (17, 300, 2048 + 32), (300, 48, 2048 + 96), (64, 40, 160), (5, 40, 160), (7, 33, 2048 + 32), (130, 600, 96), (20, 1100, 64)];
    for (n, rows, cols) in shapes {
        let owned = Owned::new(&mut rng, rows, cols);
        let bf16p = to_panels(&owned.bf16, rows, cols);
        let mut all = owned.all();
        if cols > 2048 {
            all.push(("bf16 panels", Matrix::column_panels(rows, cols, MatrixData::BF16(&bf16p))));
        }
        // The matrices the set sends here at this size (q8_0 batches this small take the
        // int8 tiles: `q8_amx_matches_its_reference_bit_for_bit`).
        all.retain(|(_, w)| Product::for_batch(Kernels::Amx, w, n) == Product::AmxGemm);
        assert!(all.iter().any(|(name, _)| *name == "bf16"), "n={n}: bf16 takes the tiles");
        let x = rng.vec(n * cols);
        for (name, w) in all {
            assert!(gemm_amx::fits(&w), "{name}");
            let mut got = vec![f32::NAN; n * rows];
            matmul_with(Kernels::Amx, &w, &x, n, &mut got);
            let mut stored = vec![0f32; cols];
            for r in 0..rows {
                w.row_to_f32(r, &mut stored);
                for i in 0..n {
                    let xi = &x[i * cols..][..cols];
                    let (mut rounded, mut exact, mut mag) = (0f64, 0f64, 0f64);
                    for (&wv, &xv) in stored.iter().zip(xi) {
                        rounded += bf16::from_f32(wv).to_f32() as f64 * bf16::from_f32(xv).to_f32() as f64;
                        exact += wv as f64 * xv as f64;
                        mag += (wv as f64 * xv as f64).abs();
                    }
                    let g = got[i * rows + r] as f64;
                    let at = format!("{name} n={n} {rows}x{cols} [{i},{r}]");
                    assert!((g - rounded).abs() <= mag * 1e-5 + 1e-6, "{at}: {g} vs rounded {rounded}");
                    // bf16 keeps 8 significant bits: each factor moves by at most 2^-9
                    // of itself (bf16 weights not at all).
                    assert!((g - exact).abs() <= mag * (2.0 / 512.0 + 1e-5) + 1e-6, "{at}: {g} vs exact {exact}");
                }
            }
        }
    }
}

/// The AMX set's int8 tiles (`q8_amx`) give every token exactly the arithmetic
/// `q8_amx::reference` spells out, in batches of any size: partial row tiles, an odd
/// number of blocks (a pair half empty), columns short of a block, token tiles part
/// full, and matrices the threads split. The set's dispatch sends them its q8_0
/// prompts of `TILES_FROM` to `TILES_BELOW` tokens, and fewer to the decode kernel:
/// each token's numbers those it gets decoding, bit for bit.
#[cfg(target_arch = "x86_64")]
#[test]
fn q8_amx_matches_its_reference_bit_for_bit() {
    if !Kernels::Amx.supported() {
        eprintln!("skipped: this CPU or kernel has no AMX tiles");
        return;
    }
    let mut rng = Rng(0x0A3C);
    for (rows, cols) in [
        (1, 31),
        (16, 64),
        (17, 100),
        (33, 515),
        (250, 96),
        (20, 63 * 32),
        (300, 2048 + 32),
        (1000, 1024),
    ] {
        let owned = Owned::new(&mut rng, rows, cols);
        let blocks = cols.div_ceil(32);
        let w = Matrix::row_major(
            rows,
            cols,
            MatrixData::Q8_0 {
                quants: &owned.quants,
                scales: &owned.scales,
            },
        );
        for n in [1, 2, 4, 6, 7, 8, 9, 17, 31, 40, 63] {
            let x = rng.vec(n * cols);
            let (mut decode, mut prompt) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
            // SAFETY: AMX is supported (checked above); the matrix holds every row.
            unsafe { q8_amx::matmul(&owned.quants, &owned.scales, rows, cols, &x, n, &mut decode) };
            matmul_with(Kernels::Amx, &w, &x, n, &mut prompt);
            if n < q8_amx::TILES_FROM {
                let mut decoding = vec![f32::NAN; n * rows];
                matmul_decode(Kernels::Amx, &w, &x, n, &mut decoding);
                let same = prompt.iter().zip(&decoding).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{rows}x{cols} n={n}: the AMX set's few tokens differ from the decode kernel's");
            }
            for t in 0..n {
                let mut qx = QuantX::new();
                qx.quantize_portable(&x[t * cols..][..cols], ScaleSpan::Block);
                for r in 0..rows {
                    let want = q8_amx::reference(&owned.quants, &owned.scales, blocks, r, &qx);
                    let (d, p) = (decode[t * rows + r], prompt[t * rows + r]);
                    assert_eq!(
                        d.to_bits(),
                        want.to_bits(),
                        "{rows}x{cols} n={n} [{t},{r}] decode: {d} vs {want}"
                    );
                    // The dispatch sends q8_amx the prompts from TILES_FROM to below
                    // TILES_BELOW only.
                    assert!(
                        !(q8_amx::TILES_FROM..q8_amx::TILES_BELOW).contains(&n) || p.to_bits() == want.to_bits(),
                        "{rows}x{cols} n={n} [{t},{r}] prompt: {p} vs {want}"
                    );
                }
            }
        }
    }
}

/// The VNNI q8_0 decode kernel (eight rows across each register's lanes) against the
/// plain-Rust statement of its arithmetic, bit for bit: lone tokens and batches of up
/// to nine (two token groups), partial row groups, a lone last block, several threads'
/// blocks and sub-blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn q8_vnni_decode_matches_its_reference_bit_for_bit() {
    if !avx512_available() {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    let mut rng = Rng(0x1A2E);
    for (rows, cols) in [(1, 31), (5, 64), (8, 100), (13, 515), (16, 2048), (301, 96), (1000, 1024), (700, 2048 + 32)] {
        let owned = Owned::new(&mut rng, rows, cols);
        for n in [1, 2, 3, 8, 9] {
            let x = rng.vec(n * cols);
            let mut got = vec![f32::NAN; n * rows];
            // SAFETY: AVX-512 VNNI is there (checked above); the matrix holds every row.
            unsafe { q8_vnni::matmul_decode(&owned.quants, &owned.scales, cols, &x, n, &mut got) };
            for t in 0..n {
                let mut want = vec![0f32; rows];
                q8_vnni::lanes_reference(&owned.quants, &owned.scales, cols, &x[t * cols..][..cols], &mut want);
                for r in 0..rows {
                    let g = got[t * rows + r];
                    assert_eq!(g.to_bits(), want[r].to_bits(), "{rows}x{cols} n={n} [{t},{r}]: {g} vs {}", want[r]);
                }
            }
        }
    }
}

/// Every [`Product`] gives a token the same numbers, bit for bit, in batches of every
/// size it runs; and [`matmul_segments`] gives each segment what [`matmul_with`] gives
/// it alone, whether it shares the weights' pass or not. Every kernel set and dtype;
/// a matrix wide enough for column panels and the GEMMs' column blocks.
#[test]
fn products_do_not_depend_on_the_batch_and_segments_run_as_alone() {
    let mut rng = Rng(0x5E6);
    let sizes = [1, 2, 3, 4, 5, 8, 9, 16, 40, 63, 64, 100];
    for (rows, cols) in [(70, 300), (129, 4160)] {
        let owned = Owned::new(&mut rng, rows, cols);
        let x = rng.vec(130 * cols);
        let (f32p, f16p, bf16p) = (to_panels(&owned.f32, rows, cols), to_panels(&owned.f16, rows, cols), to_panels(&owned.bf16, rows, cols));
        let mut matrices = owned.all();
        if cols > 2048 {
            matrices.push(("f32 panels", Matrix::column_panels(rows, cols, MatrixData::F32(&f32p))));
            matrices.push(("f16 panels", Matrix::column_panels(rows, cols, MatrixData::F16(&f16p))));
            matrices.push(("bf16 panels", Matrix::column_panels(rows, cols, MatrixData::BF16(&bf16p))));
        }
        for k in available_kernels() {
            for (name, w) in &matrices {
                let w = *w;
                let outputs: Vec<(Product, Vec<f32>)> = sizes
                    .iter()
                    .map(|&n| {
                        let mut y = vec![f32::NAN; n * rows];
                        matmul_with(k, &w, &x[..n * cols], n, &mut y);
                        (Product::for_batch(k, &w, n), y)
                    })
                    .collect();
                for (a, (pa, ya)) in outputs.iter().enumerate() {
                    for (pb, yb) in &outputs[a + 1..] {
                        if pa == pb {
                            let same = ya.iter().zip(yb.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "{k:?} {name} {rows}x{cols} {pa:?}: n={} and n={} differ", ya.len() / rows, yb.len() / rows);
                        }
                    }
                }
                for lens in [&[16usize, 16, 16][..], &[1, 1, 1, 1], &[5, 40, 3], &[63, 63], &[100], &[2, 9]] {
                    let n: usize = lens.iter().sum();
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_segments(k, &w, &x[..n * cols], lens, &mut got);
                    let mut at = 0;
                    for &len in lens {
                        let mut alone = vec![f32::NAN; len * rows];
                        matmul_with(k, &w, &x[at * cols..(at + len) * cols], len, &mut alone);
                        let same = alone.iter().zip(&got[at * rows..]).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{k:?} {name} segments {lens:?}: the one at {at} differs from its batch alone");
                        at += len;
                    }
                }
            }
        }
    }
}

/// The MLP on AMX, which takes the SwiGLU from the gate and up results in the tiles,
/// gives the bits of the gate_up product, the SwiGLU into a buffer and the down
/// product, for every dtype the tiles take; several tasks of gate rows (160 of them,
/// at more than 128 tokens 128 and 32), a last token tile part full, and batches split
/// into segments. It
/// runs only where both products alone are the AMX GEMM, and refuses a down projection
/// whose columns are not the gate_up's rows halved.
#[test]
fn mlp_on_tiles_matches_the_products_through_buffers() {
    let mut rng = Rng(0x5EED);
    let (d, f) = (96, 160);
    let gate_up = Owned::new(&mut rng, 2 * f, d);
    let down = Owned::new(&mut rng, d, f);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for ((name, gu), (_, dn)) in gate_up.all().into_iter().zip(down.all()).filter(|((name, _), _)| !name.starts_with('f')) {
        for lens in [vec![2], vec![40], vec![67], vec![32, 35], vec![3, 40], vec![130], vec![64, 70]] {
            let n: usize = lens.iter().sum();
            let x: Vec<f32> = rng.vec(n * d).into_iter().map(|v| 4.0 * v).collect();
            let mut fused = vec![f32::NAN; n * d];
            let ran = mlp(Kernels::Amx, &gu, &dn, &x, &lens, &mut fused);
            let tiles = |len: usize| Product::for_batch(Kernels::Amx, &gu, len) == Product::AmxGemm;
            assert_eq!(ran, lens.iter().all(|&len| tiles(len)), "{name} {lens:?}: runs where the AMX GEMM does");
            if !ran {
                continue;
            }
            assert!(amx_available() && n >= 32);
            let mut gate_up_rows = vec![f32::NAN; n * 2 * f];
            matmul_segments(Kernels::Amx, &gu, &x, &lens, &mut gate_up_rows);
            let mut act = vec![0f32; n * f];
            for (a, row) in act.chunks_exact_mut(f).zip(gate_up_rows.chunks_exact(2 * f)) {
                swiglu(Kernels::Amx, &row[..f], &row[f..], a);
            }
            let mut want = vec![f32::NAN; n * d];
            matmul_segments(Kernels::Amx, &dn, &act, &lens, &mut want);
            assert!(want.iter().all(|v| v.is_finite()) && want.iter().any(|&v| v != 0.0));
            assert!(bits(&fused) == bits(&want), "{name} {lens:?}");
            // A down projection of the wrong width is refused, not run.
            let narrow = Matrix::row_major(d, f - 32, dn.data);
            assert!(!mlp(Kernels::Amx, &gu, &narrow, &x, &lens, &mut fused[..]), "{name}: widths checked");
        }
    }
}

/// The tile scratch grows to the largest call, keeps its map for smaller ones, and
/// starts page-aligned (a big one on a 2 MiB boundary), zeroed when it grows.
#[test]
fn huge_scratch_grows_only_and_stays_aligned() {
    let mut b = crate::model::buffer::Buffer::<u16>::default();
    let small = grow_huge(&mut b, 1000).as_ptr();
    assert_eq!(small as usize % 4096, 0);
    assert_eq!(grow_huge(&mut b, 10).len(), 10);
    assert_eq!(grow_huge(&mut b, 10).as_ptr(), small, "a smaller call keeps the map");
    let big = grow_huge(&mut b, 3 << 20);
    assert_eq!(big.len(), 3 << 20);
    assert_eq!(big.as_ptr() as usize % (2 << 20), 0);
    assert!(big.iter().all(|&v| v == 0));
}

