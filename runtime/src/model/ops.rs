//! The small element-wise and reduction operations of the forward pass.

use olmo_format::{Rope, RopeScaling};

use crate::model::buffer::Buffer;

/// `x = x / rms(x) * weight`, in place, as Hugging Face's `Olmo2RMSNorm` (f32 throughout).
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), weight.len());
    // Eight running sums, which the compiler keeps in vector registers: one sum in order
    // waits on each add's latency (1.34 us for the 1B's 2048 values against 0.44; four
    // norms a layer, two of them on a decode step's serial path).
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    let mut sums = [0f32; 8];
    for c in chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *s += v * v;
        }
    }
    let mean_square = (sums.iter().sum::<f32>() + tail) / x.len() as f32;
    let scale = 1.0 / (mean_square + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

/// cos/sin of every (position, frequency) pair of one rotary embedding (one per layer
/// type), times its attention factor, computed once per run.
pub struct RopeTables {
    /// (positions, head_dim / 2)
    cos: Buffer,
    /// (positions, head_dim / 2)
    sin: Buffer,
    half: usize,
}

impl RopeTables {
    /// The tables for `positions` positions: angles `pos * inv_freq[i]` in f32, as
    /// transformers multiplies them, cos and sin times the attention factor (`None`: they
    /// do not fit in memory).
    pub fn new(positions: usize, head_dim: usize, rope: &Rope) -> Option<RopeTables> {
        let half = head_dim / 2;
        let (inv_freq, attention_factor) = inverse_frequencies(head_dim, rope);
        let mut cos = Buffer::zeroed(positions.checked_mul(half)?)?;
        let mut sin = Buffer::zeroed(positions * half)?;
        for (p, (c, s)) in cos.chunks_exact_mut(half.max(1)).zip(sin.chunks_exact_mut(half.max(1))).enumerate() {
            for ((c, s), &f) in c.iter_mut().zip(s.iter_mut()).zip(&inv_freq) {
                let angle = p as f32 * f;
                *c = angle.cos() * attention_factor;
                *s = angle.sin() * attention_factor;
            }
        }
        Some(RopeTables { cos, sin, half })
    }

    /// Rotates each `head_dim`-wide head of `x` for position `pos`, NeoX style: element
    /// `i` pairs with element `i + head_dim / 2`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.half;
        let cos = &self.cos[pos * half..][..half];
        let sin = &self.sin[pos * half..][..half];
        for head in x.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

/// The inverse frequencies (`head_dim / 2` of them) and the cos/sin multiplier of a
/// rotary embedding, computed in f32 where transformers computes in f32 (the powers of
/// theta, YaRN's ramp and blend; the correction range in f64, as Python does) so the
/// values are the same bits.
pub fn inverse_frequencies(head_dim: usize, rope: &Rope) -> (Vec<f32>, f32) {
    let base = rope.theta as f32;
    // theta ** (arange(0, dim, 2) / dim), in f32.
    let power = |i: usize| base.powf((2 * i) as f32 / head_dim as f32);
    let half = head_dim / 2;
    match rope.scaling {
        RopeScaling::Default => ((0..half).map(|i| 1.0 / power(i)).collect(), 1.0),
        RopeScaling::Yarn { factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, truncate } => {
            // The dimension whose wavelength turns `rotations` times over the original
            // context: below `low` frequencies are kept (extrapolated), above `high`
            // divided by `factor` (interpolated), with a linear ramp between.
            let dim = head_dim as f64;
            let correction_dim = |rotations: f64| {
                dim * (original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * rope.theta.ln())
            };
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            let (low32, span) = (low as f32, (high - low) as f32);
            let inv_freq = (0..half)
                .map(|i| {
                    let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    let p = power(i);
                    let (kept, interpolated) = (1.0 / p, 1.0 / (factor as f32 * p));
                    interpolated * (1.0 - extrapolation) + kept * extrapolation
                })
                .collect();
            (inv_freq, attention_factor as f32)
        }
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `out[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// The `K` largest values of `x` as (index, value), best first; ties go to the lower
/// index, as `torch.topk`/`argmax` pick. One pass, no allocation.
pub fn top_k<const K: usize>(x: &[f32]) -> [(u32, f32); K] {
    let mut best = [(u32::MAX, f32::NEG_INFINITY); K];
    for (i, &v) in x.iter().enumerate() {
        // NaN never enters: comparisons with it are false.
        if v > best[K - 1].1 || (best[K - 1].0 == u32::MAX && !v.is_nan()) {
            let mut j = K - 1;
            while j > 0 && (v > best[j - 1].1 || best[j - 1].0 == u32::MAX) {
                best[j] = best[j - 1];
                j -= 1;
            }
            best[j] = (i as u32, v);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_low() {
        let x = [1.0, 5.0, 3.0, 5.0, -1.0, 4.0];
        let t = top_k::<3>(&x);
        assert_eq!(t.map(|p| p.0), [1, 3, 5]);
        assert_eq!(top_k::<2>(&[2.0, f32::NAN, 1.0]).map(|p| p.0), [0, 2]);
        assert_eq!(top_k::<1>(&[f32::NEG_INFINITY, -1.0]).map(|p| p.0), [1]);
    }

    #[test]
    fn rms_norm_matches_definition() {
        let mut x = [3.0, 4.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        let rms = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / rms).abs() < 1e-6 && (x[1] - 8.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let t = RopeTables::new(3, 4, &Rope::default_with_theta(10000.0)).unwrap();
        let mut x = [1.0, 0.0, 0.0, 0.0];
        t.apply(&mut x, 2);
        // Frequency 0 is 1 rad per position: element 0 pairs with element 2.
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[2] - 2f32.sin()).abs() < 1e-6);
        assert_eq!(x[1], 0.0);
    }

    fn bits(v: &[f32], at: &[usize]) -> Vec<u32> {
        at.iter().map(|&i| v[i].to_bits()).collect()
    }

    /// Bits of transformers' `inv_freq` (torch 2.15), from `_compute_yarn_parameters` and
    /// the default rule: OLMo-3 7B's full layers (head_dim 128, theta 500000, factor 8
    /// over 8192 positions: dimensions 0-17 kept, 36-63 divided by 8, a ramp between),
    /// and a head of 16 with the correction range truncated and not.
    #[test]
    fn inverse_frequencies_are_transformers_bits() {
        let yarn = |theta, factor, original, af, beta_fast, beta_slow, truncate| Rope {
            theta,
            scaling: RopeScaling::Yarn { factor, original_max_position_embeddings: original, attention_factor: af, beta_fast, beta_slow, truncate },
        };
        let (f, af) = inverse_frequencies(128, &yarn(500000.0, 8.0, 8192, 1.2079441541679836, 32.0, 1.0, true));
        assert_eq!(af, 1.2079441541679836f64 as f32);
        let at = [0, 1, 17, 18, 19, 25, 34, 35, 36, 63];
        let want = [0x3f800000, 0x3f508ac1, 0x3cfaf53f, 0x3ccc6f49, 0x3c9df6de, 0x3b790ecb, 0x392da869, 0x38c86886, 0x38a3418d, 0x34a4c2ff];
        assert_eq!(bits(&f, &at), want);
        let (d, af) = inverse_frequencies(128, &Rope::default_with_theta(500000.0));
        assert_eq!((bits(&d, &[0, 1, 17, 33, 63]), af), (vec![0x3f800000, 0x3f508ac1, 0x3cfaf53f, 0x3a970023, 0x3624c2ff], 1.0));
        let (t, af) = inverse_frequencies(16, &yarn(1000.0, 4.0, 20, 1.138629436111989, 8.0, 0.5, false));
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(af, 1.138629436111989f64 as f32);
        assert_eq!(bits(&t, &all), [0x3f800000, 0x3e8c5e9f, 0x3d5ab5f4, 0x3c99940d, 0x3c0186e3, 0x3b5a7bf2, 0x3ab8449c, 0x3a1b690d]);
        let (t, _) = inverse_frequencies(16, &yarn(1000.0, 4.0, 20, 1.138629436111989, 8.0, 0.5, true));
        assert_eq!(bits(&t, &all), [0x3f800000, 0x3ea1ee74, 0x3db61887, 0x3c99940d, 0x3c0186e3, 0x3b5a7bf2, 0x3ab8449c, 0x3a1b690d]);
    }

    /// YaRN's attention factor multiplies both cos and sin (so q.k by its square).
    #[test]
    fn tables_carry_the_attention_factor() {
        let rope = Rope {
            theta: 10000.0,
            scaling: RopeScaling::Yarn { factor: 4.0, original_max_position_embeddings: 8, attention_factor: 1.5, beta_fast: 32.0, beta_slow: 1.0, truncate: true },
        };
        let t = RopeTables::new(40, 8, &rope).unwrap();
        let mut x = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        t.apply(&mut x, 0);
        assert_eq!(x[0], 1.5);
        // Frequency 0 is kept: 1 rad per position, also past the original 8 positions.
        let mut y = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        t.apply(&mut y, 33);
        assert!((y[0] - 1.5 * 33f32.cos()).abs() < 1e-5 && (y[4] - 1.5 * 33f32.sin()).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
