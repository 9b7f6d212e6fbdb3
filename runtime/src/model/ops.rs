//! The small element-wise and reduction operations of the forward pass.

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

/// cos/sin of every (position, frequency) pair, computed once per run.
pub struct RopeTables {
    /// (positions, head_dim / 2)
    pub cos: Vec<f32>,
    /// (positions, head_dim / 2)
    pub sin: Vec<f32>,
    half: usize,
}

impl RopeTables {
    /// Angles `pos * theta^(-2i / head_dim)`, with the inverse frequencies rounded to f32
    /// as transformers computes them.
    pub fn new(positions: usize, head_dim: usize, theta: f64) -> RopeTables {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTables { cos, sin, half }
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
        let t = RopeTables::new(3, 4, 10000.0);
        let mut x = [1.0, 0.0, 0.0, 0.0];
        t.apply(&mut x, 2);
        // Frequency 0 is 1 rad per position: element 0 pairs with element 2.
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[2] - 2f32.sin()).abs() < 1e-6);
        assert_eq!(x[1], 0.0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
