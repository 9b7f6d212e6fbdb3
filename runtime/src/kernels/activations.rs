//! Activations rounded to int8 for the integer (q8_0, 4-bit) products, as llama.cpp
//! rounds them: the definition every kernel set computes the same bytes of.

use olmo_format::DType;

/// How many activations share one int8 scale.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ScaleSpan {
    /// A block of 32, as llama.cpp's Q8_0 activations: q8_0 and q4_0 weights, whose
    /// scales change every block anyway.
    Block,
    /// A q4_k super-block of 256, as llama.cpp's Q8_K: the VNNI GEMM then multiplies a
    /// super-block's eight block sums by the token's scale once, not once each (q4_k
    /// prompts there 0.93x -> 0.985x of q8_0's speed), and the one-token kernels a
    /// tile's.
    SuperBlock,
}

impl ScaleSpan {
    /// The span a product of `dtype` weights rounds its activations in.
    pub(crate) fn of(dtype: DType) -> ScaleSpan {
        if dtype == DType::Q4_K {
            ScaleSpan::SuperBlock
        } else {
            ScaleSpan::Block
        }
    }

    /// Values per scale.
    pub(crate) const fn values(self) -> usize {
        match self {
            ScaleSpan::Block => 32,
            ScaleSpan::SuperBlock => 256,
        }
    }
}

/// Activations quantised for an integer product, per [`ScaleSpan`] as [`quantize_span`]
/// defines (the tail span padded with zeros). Both kernel sets compute the same bytes,
/// so they differ only in summation order.
pub(crate) struct QuantX {
    pub quants: Vec<i8>,
    /// Per block of 32, its scale (the same for the eight blocks of a super-block when
    /// the span is one).
    pub scales: Vec<f32>,
    /// Per block, the sum of its quants: what a 4-bit product's offsets multiply
    /// (filled by [`QuantX::pad_and_sum`] only).
    pub sums: Vec<i32>,
    /// Per pair of blocks, their `sums` as 16-bit halves (the even block's low): what
    /// q4_k's mins, in 16-bit pairs, multiply with one `vpmaddwd` per pair (with
    /// `sums`).
    pub sum_pairs: Vec<i32>,
}

impl Default for QuantX {
    fn default() -> QuantX {
        QuantX::new()
    }
}

impl QuantX {
    pub(crate) const fn new() -> QuantX {
        QuantX { quants: Vec::new(), scales: Vec::new(), sums: Vec::new(), sum_pairs: Vec::new() }
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
            self.sum_pairs.resize(blocks.div_ceil(2), 0);
        }
        for (b, q) in self.quants[..blocks * 32].chunks_exact(32).enumerate() {
            self.sums[b] = q.iter().map(|&v| v as i32).sum();
        }
        // A block's sum is at most 32 x 127 in magnitude: an i16.
        let half = |b: usize| self.sums.get(b).filter(|_| b < blocks).map_or(0, |&s| s as i16 as u16 as u32);
        for (p, pair) in self.sum_pairs[..blocks.div_ceil(2)].iter_mut().enumerate() {
            *pair = (half(2 * p) | half(2 * p + 1) << 16) as i32;
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

    pub(crate) fn quantize_portable(&mut self, x: &[f32], span: ScaleSpan) {
        let blocks = self.reserve(x.len());
        let per = span.values();
        for (i, xs) in x.chunks(per).enumerate() {
            // A tail span keeps only the blocks `x` reaches.
            let end = blocks.min((i + 1) * per / 32);
            let d = quantize_span(xs, &mut self.quants[i * per..end * 32]);
            self.scales[i * per / 32..end].fill(d);
        }
    }
}

/// Replaces `x` by its int8 activation rounding, `q * d` per span: what an integer
/// product effectively multiplies the weights with. The float GEMM uses it so that
/// prompt processing agrees with the one-token path.
pub(crate) fn round_like_int8(x: &mut [f32], span: ScaleSpan) {
    let mut q = [0i8; 256];
    for xs in x.chunks_mut(span.values()) {
        let d = quantize_span(xs, &mut q[..xs.len()]);
        for (v, &q) in xs.iter_mut().zip(&q) {
            *v = q as f32 * d;
        }
    }
}

/// Quantises one span (`x`; the values of `q` past it count as zero) as int8
/// activations: `d = max|x| / 127`, `q = round_ties_even(x * (127 / max|x|))`.
/// The AVX2 path computes exactly the same bytes and scale.
pub fn quantize_span(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (i, q) in q.iter_mut().enumerate() {
        *q = x.get(i).map_or(0, |&v| (v * inv).round_ties_even() as i8);
    }
    amax / 127.0
}
