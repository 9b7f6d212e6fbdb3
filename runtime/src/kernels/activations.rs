//! Activations rounded to int8 per block of 32 for the integer (q8_0) products, as
//! llama.cpp rounds them: the definition every kernel set computes the same bytes of.

/// Activations quantised for a q8_0 product, per block of 32 as
/// [`quantize_block`] defines (the tail block padded with zeros). Both kernel
/// sets compute the same bytes, so they differ only in summation order.
pub(crate) struct QuantX {
    pub quants: Vec<i8>,
    pub scales: Vec<f32>,
    /// Per block, the sum of its quants: what a 4-bit product's offsets multiply
    /// (filled by [`QuantX::pad_and_sum`] only).
    pub sums: Vec<i32>,
    /// Per block, `scales[b] * sums[b] as f32`: what q4_k's mins multiply, computed
    /// once per product instead of once per group of rows (with `sums`).
    pub scaled_sums: Vec<f32>,
}

impl Default for QuantX {
    fn default() -> QuantX {
        QuantX::new()
    }
}

impl QuantX {
    pub(crate) const fn new() -> QuantX {
        QuantX { quants: Vec::new(), scales: Vec::new(), sums: Vec::new(), scaled_sums: Vec::new() }
    }

    /// After quantising `len` values: zeros the blocks from there up to `blocks` (the
    /// padding of a matrix stored in whole tiles, which its kernels read) and sums
    /// every block's quants into `sums`.
    pub(crate) fn pad_and_sum(&mut self, len: usize, blocks: usize) {
        let used = len.div_ceil(32);
        if self.quants.len() < blocks * 32 {
            self.quants.resize(blocks * 32, 0);
            self.scales.resize(blocks, 0.0);
        }
        self.quants[used * 32..blocks * 32].fill(0);
        self.scales[used..blocks].fill(0.0);
        if self.sums.len() < blocks {
            self.sums.resize(blocks, 0);
            self.scaled_sums.resize(blocks, 0.0);
        }
        for (b, q) in self.quants[..blocks * 32].chunks_exact(32).enumerate() {
            self.sums[b] = q.iter().map(|&v| v as i32).sum();
            self.scaled_sums[b] = self.scales[b] * self.sums[b] as f32;
        }
    }

    /// Makes room for `len` values; returns the block count.
    pub(crate) fn reserve(&mut self, len: usize) -> usize {
        let blocks = len.div_ceil(32);
        if self.quants.len() < blocks * 32 {
            self.quants.resize(blocks * 32, 0);
            self.scales.resize(blocks, 0.0);
        }
        blocks
    }

    pub(crate) fn quantize_portable(&mut self, x: &[f32]) {
        let blocks = self.reserve(x.len());
        for b in 0..blocks {
            let xb = &x[b * 32..x.len().min(b * 32 + 32)];
            self.scales[b] = quantize_block(xb, &mut self.quants[b * 32..]);
        }
    }
}

/// Replaces `x` by its q8_0 activation rounding, `q * d` per block of 32: what a q8_0
/// product effectively multiplies the weights with. The GEMM uses it so that prompt
/// processing agrees with the one-token path.
pub(crate) fn round_like_q8(x: &mut [f32]) {
    let mut q = [0i8; 32];
    for xb in x.chunks_mut(32) {
        let d = quantize_block(xb, &mut q);
        for (v, &q) in xb.iter_mut().zip(&q) {
            *v = q as f32 * d;
        }
    }
}

/// Quantises one block (at most 32 values; missing ones count as zero) as q8_0
/// activations: `d = max|x| / 127`, `q = round_ties_even(x * (127 / max|x|))`.
/// The AVX2 path computes exactly the same bytes and scale.
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (i, q) in q[..32].iter_mut().enumerate() {
        *q = x.get(i).map_or(0, |&v| (v * inv).round_ties_even() as i8);
    }
    amax / 127.0
}
