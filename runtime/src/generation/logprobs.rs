//! A chosen token's log-probability and the most likely alternatives, as OpenAI's
//! `logprobs` returns them: from the model's own distribution (the softmax of the raw
//! logits, before temperature and penalties, as vLLM returns it by default).

use crate::kernels;
use crate::model::ops::top_k;

/// The most alternatives a request may ask for (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability and the `n_top` most likely tokens' (best
/// first, the lowest id on ties), in a fixed array so that a step allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: [(u32, f32); MAX_TOP_LOGPROBS],
    pub n_top: usize,
}

impl TokenLogprob {
    /// `token`'s log-probability under the softmax of `logits` and the `n_top` (at most
    /// [`MAX_TOP_LOGPROBS`]) best tokens'; NaN logits take no part.
    pub fn new(logits: &[f32], token: u32, n_top: usize) -> TokenLogprob {
        let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        let sum = if max.is_finite() { kernels::sum_exp(kernels::active(), logits, max) } else { 1.0 };
        let lse = max as f64 + sum.ln();
        let logprob = |v: f32| (v as f64 - lse) as f32;
        let mut top = top_k::<MAX_TOP_LOGPROBS>(logits);
        // Fewer tokens than asked for (a tiny vocabulary, NaN logits): only real ones.
        let n_top = n_top.min(top.iter().take_while(|t| t.0 != u32::MAX).count());
        for t in &mut top[..n_top] {
            t.1 = logprob(t.1);
        }
        let value = logits.get(token as usize).copied().unwrap_or(f32::NAN);
        TokenLogprob { token, logprob: logprob(value), top, n_top }
    }

    /// The alternatives, best first.
    pub fn top(&self) -> &[(u32, f32)] {
        &self.top[..self.n_top]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_of_the_chosen_and_the_best() {
        // Probabilities 1 : 2 : 5 over 8.
        let logits = [0.0f32, 2f32.ln(), 5f32.ln()];
        let t = TokenLogprob::new(&logits, 1, 2);
        assert!((t.logprob - (2.0f32 / 8.0).ln()).abs() < 1e-6, "{}", t.logprob);
        assert_eq!(t.top().len(), 2);
        assert_eq!((t.top()[0].0, t.top()[1].0), (2, 1));
        assert!((t.top()[0].1 - (5.0f32 / 8.0).ln()).abs() < 1e-6);
        // Large logits do not overflow; NaN takes no part, nor in the alternatives.
        let t = TokenLogprob::new(&[1000.0, 1000.0, f32::NAN], 0, 50);
        assert!((t.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(t.top().iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1]);
        let many: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(TokenLogprob::new(&many, 0, 50).n_top, MAX_TOP_LOGPROBS);
        assert!(TokenLogprob::new(&[0.0, 1.0], 0, 0).top().is_empty());
    }
}
