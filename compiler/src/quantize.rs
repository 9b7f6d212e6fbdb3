//! The 4-bit quantisers, with llama.cpp's reference semantics (`quantize_row_q4_0_ref`
//! and `quantize_row_q4_K_ref` in its `ggml-quants.c`): the same values from the same
//! weights, in f32 arithmetic in the same order. How the results are laid out in a blob
//! is `olmo_format::q4`'s business.

use half::f16;

/// Weights per q4_0 block and per q4_k sub-block.
pub const BLOCK: usize = 32;
/// Weights per q4_k super-block.
pub const SUPER: usize = 256;

/// llama.cpp's `nearest_int`: round to nearest, ties to even (it adds 1.5 * 2^23 in
/// f32, which rounds so), for the magnitudes quantisation meets.
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// One q4_0 block: the scale `d` (f16) and the 4-bit values `q`, the weights being
/// `d * (q - 8)`. `d` is the value of largest magnitude (the first of equals) over
/// -8, so that value is exactly `q = 0`; the others round to nearest, halves up, and
/// the top clamps to 15. `x` shorter than 32 counts as padded with zeros.
pub fn q4_0_block(x: &[f32]) -> (f16, [u8; BLOCK]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [8u8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        // `v * id` lies in [-8, 8]: truncating `+ 8.5` rounds halves up.
        *q = ((v * id + 8.5) as i8).min(15) as u8;
    }
    (f16::from_f32(d), q)
}

/// A q4_k super-block: per row of 256 weights the super-block scale and min (f16), the
/// eight sub-blocks' 6-bit scales and mins, and the 4-bit values; the weights are
/// `d * sc[j] * q - dmin * m[j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Q4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub q: [u8; SUPER],
}

/// Quantises 256 weights (`x` shorter counts as padded with zeros) as llama.cpp's
/// reference does: each sub-block's scale and min from [`fit_sub_block`] (the fit that
/// minimises the squared error weighted by `rms(sub-block) + |x|`), both sets rounded
/// to 6 bits against their largest, then every value rounded again against the rounded
/// scale and min.
pub fn q4_k_super_block(x: &[f32]) -> Q4K {
    let mut xs = [0f32; SUPER];
    xs[..x.len()].copy_from_slice(x);
    let mut q = [0u8; SUPER];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xb = &xs[BLOCK * j..][..BLOCK];
        let sum_x2 = xb.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / BLOCK as f32).sqrt();
        let weights: [f32; BLOCK] = std::array::from_fn(|l| av_x + xb[l].abs());
        let lq: &mut [u8; BLOCK] = (&mut q[BLOCK * j..][..BLOCK]).try_into().expect("32 values");
        (scales[j], mins[j]) = fit_sub_block(xb.try_into().expect("32 values"), &weights, lq);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // As llama.cpp: the nearest integer kept in a byte (a negative scale wraps), at
    // most 63.
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let sc: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * scales[j]));
    let m: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * mins[j]));
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let dj = d.to_f32() * sc[j] as f32;
        if dj == 0.0 {
            // The sub-block keeps the fit's values (they multiply a zero scale).
            continue;
        }
        let dm = dmin.to_f32() * m[j] as f32;
        for (l, &v) in q[BLOCK * j..][..BLOCK].iter_mut().zip(&xs[BLOCK * j..][..BLOCK]) {
            *l = nearest_int((v + dm) / dj).clamp(0, 15) as u8;
        }
    }
    Q4K { d, dmin, scales: sc, mins: m, q }
}

/// llama.cpp's `make_qkx2_quants` for 32 weights, 4 bits (`nmax` 15), searching
/// `rmin = -1`, `rdelta = 0.1`, 20 steps, squared error: the scale `s` and min `m`
/// (returned as `(s, m)`, `m >= 0`) and the values `l` in 0..=15 with `x ~ s l - m`.
/// The grid from the block's range first, then 21 grids slightly finer and coarser,
/// each with the scale and min that fit its values best by weighted least squares
/// (the min held at zero when the fit wants it positive); the one with the least
/// weighted squared error wins.
pub fn fit_sub_block(x: &[f32; BLOCK], weights: &[f32; BLOCK], l: &mut [u8; BLOCK]) -> (f32, f32) {
    const NMAX: i32 = 15;
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..BLOCK {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..BLOCK {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; BLOCK];
    for step in 0..=nstep {
        iscale = (rmin + rdelta * step as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..BLOCK {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
            aux[i] = li as u8;
            let (w, lf) = (weights[i], li as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0f32;
            for i in 0..BLOCK {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                *l = aux;
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_matches_the_reference_rounding() {
        // x = (i - 8) / 2: the largest magnitude is x[31] = 11.5, so d = -11.5 / 8 =
        // -1.4375 (exact in f16) and q = trunc(8.5 - (i - 8) * 8 / 23), no value on a
        // rounding edge but x[31] itself (q = 0).
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 8.0) / 2.0).collect();
        let (d, q) = q4_0_block(&x);
        assert_eq!(d.to_f32(), -1.4375);
        let want: [u8; 32] =
            [11, 10, 10, 10, 9, 9, 9, 8, 8, 8, 7, 7, 7, 6, 6, 6, 5, 5, 5, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0];
        assert_eq!(q, want);
        // A negative extreme: d > 0, and the extreme again maps to 0.
        let x: Vec<f32> = (0..32).map(|i| if i == 5 { -4.0 } else { (i % 7) as f32 * 0.25 }).collect();
        let (d, q) = q4_0_block(&x);
        assert_eq!(d.to_f32(), 0.5);
        assert_eq!(q[5], 0);
        // 1.5 / 0.5 + 8 = 11; 0.25 / 0.5 + 8.5 = 9 (a half rounds up); the top clamps
        // at 15 (x = 4 would be 16).
        assert_eq!((q[6], q[1], q[0]), (11, 9, 8));
        let (_, q) = q4_0_block(&[-4.0, 4.0, 3.5, -3.75]);
        assert_eq!(&q[..5], &[0, 15, 15, 1, 8]);
        // All zeros: d = 0, every value 8 (weights 0); a short block pads with zeros.
        assert_eq!(q4_0_block(&[0.0; 32]), (f16::ZERO, [8; 32]));
        assert_eq!(q4_0_block(&[]).1, [8; 32]);
    }

    #[test]
    fn q4_k_recovers_a_grid_exactly_and_packs_six_bit_scales() {
        // Sub-block j holds the grid ((i % 16) / 8 - 1) * (j + 1) / 8: scale (j + 1) /
        // 64, min (j + 1) / 8, an exact fit on the first try. Rounded to 6 bits against
        // the largest (j = 7: 63): round(63 (j + 1) / 8) = 7.875 (j + 1), ties to even.
        let x: Vec<f32> = (0..256)
            .map(|i| ((i % 16) as f32 / 8.0 - 1.0) * ((i / 32 + 1) as f32 / 8.0))
            .collect();
        for j in 0..8 {
            let mut l = [0u8; 32];
            let xb: &[f32; 32] = x[32 * j..][..32].try_into().unwrap();
            let (s, m) = fit_sub_block(xb, &[1.0; 32], &mut l);
            let (want_s, want_m) = ((j + 1) as f32 / 64.0, (j + 1) as f32 / 8.0);
            if (j + 1).is_power_of_two() {
                // Every step exact in f32: a zero error no refit can beat.
                assert_eq!((s, m), (want_s, want_m), "sub-block {j}");
            } else {
                assert!((s - want_s).abs() <= 1e-6 * want_s && (m - want_m).abs() <= 1e-6 * want_m, "sub-block {j}: {s} {m}");
            }
            assert_eq!(l, std::array::from_fn(|i| i as u8 % 16), "sub-block {j}");
        }
        let b = q4_k_super_block(&x);
        let six = [8, 16, 24, 32, 39, 47, 55, 63];
        assert_eq!(b.scales, six);
        assert_eq!(b.mins, six);
        assert_eq!(b.d, f16::from_f32(0.125 / 63.0));
        assert_eq!(b.dmin, f16::from_f32(1.0 / 63.0));
        // 6-bit rounding moves a scale by at most 1.3% (39 for 39.375): every value
        // stays on its grid point.
        let grid: Vec<u8> = (0..256).map(|i| (i % 16) as u8).collect();
        assert_eq!(&b.q[..], &grid[..]);
    }

    #[test]
    fn q4_k_values_round_against_the_stored_scales() {
        // After the search, every value is rounded again against the 6-bit scale and
        // min as stored (llama.cpp's last pass), not left as the search's.
        let x: Vec<f32> = (0..256).map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.3) * (1.0 + (i / 32) as f32)).collect();
        let b = q4_k_super_block(&x);
        let mut moved = 0;
        for j in 0..8 {
            let d = b.d.to_f32() * b.scales[j] as f32;
            let dm = b.dmin.to_f32() * b.mins[j] as f32;
            let mut fit = [0u8; 32];
            let xb: &[f32; 32] = x[32 * j..][..32].try_into().unwrap();
            let sum_x2 = xb.iter().fold(0f32, |s, &v| s + v * v);
            let w: [f32; 32] = std::array::from_fn(|l| (sum_x2 / 32.0).sqrt() + xb[l].abs());
            fit_sub_block(xb, &w, &mut fit);
            for i in 0..32 {
                let want = ((x[32 * j + i] + dm) / d).round_ties_even().clamp(0.0, 15.0) as u8;
                assert_eq!(b.q[32 * j + i], want, "sub-block {j} value {i}");
                moved += usize::from(fit[i] != want);
            }
        }
        assert!(moved > 0, "the stored scales moved no value: the case tests nothing");
    }

    #[test]
    fn q4_k_search_beats_the_plain_grid() {
        // Skewed values: the first grid (from the range) is not the best fit, and the
        // search must find a smaller weighted error.
        let x: [f32; 32] = std::array::from_fn(|i| ((i * 7919) % 97) as f32 / 97.0 * (i as f32 / 31.0).powi(3) - 0.1);
        let w: [f32; 32] = std::array::from_fn(|i| 0.3 + x[i].abs());
        let mut l = [0u8; 32];
        let (s, m) = fit_sub_block(&x, &w, &mut l);
        let err = |s: f32, m: f32, l: &[u8; 32]| -> f32 {
            (0..32).map(|i| w[i] * (s * l[i] as f32 - m - x[i]).powi(2)).sum()
        };
        let (min, max) = (x.iter().fold(0f32, |a, &v| a.min(v)), x.iter().fold(f32::MIN, |a, &v| a.max(v)));
        let plain_s = (max - min) / 15.0;
        let plain_l: [u8; 32] = std::array::from_fn(|i| ((x[i] - min) / plain_s).round() as u8);
        assert!(err(s, m, &l) < err(plain_s, -min, &plain_l), "{} vs {}", err(s, m, &l), err(plain_s, -min, &plain_l));
        assert!(l.iter().all(|&v| v <= 15));
        // Positive values only: the grid starts at zero, and the fit may lower the min
        // (m > 0: weights `s l - m`) but never raise it above zero.
        let pos: [f32; 32] = std::array::from_fn(|i| 1.0 + i as f32 * 0.1);
        let (s, m) = fit_sub_block(&pos, &[1.0; 32], &mut l);
        assert!(m >= 0.0 && s > 0.0, "{s} {m}");
        assert!((0..32).all(|i| (s * l[i] as f32 - m - pos[i]).abs() <= 0.6 * s), "{s} {m} {l:?}");
        // A constant zero block.
        assert_eq!(fit_sub_block(&[0.0; 32], &[1.0; 32], &mut l), (0.0, 0.0));
        let b = q4_k_super_block(&[0.0; 256]);
        assert_eq!((b.d, b.dmin, b.scales, b.mins), (f16::ZERO, f16::ZERO, [0; 8], [0; 8]));
    }
}
