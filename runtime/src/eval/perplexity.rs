//! Perplexity of a model over a text, and how far its next-token distributions are
//! from a base model's on the same tokens (llama.cpp's `llama-perplexity` and its
//! `--kl-divergence`).
//!
//! Windows: the text's tokens are cut into windows of `context` tokens that start
//! every `stride` tokens (0, stride, 2 stride, ...; the last one ends at the text's
//! end, and no window starts after it). Each window runs from position 0 with an empty
//! cache, and scores the tokens it adds: those past the previous window's end, each
//! predicted from the tokens before it inside the window. A window's first token has
//! nothing before it, so it is never scored there. This is Hugging Face's sliding-window
//! perplexity ("Perplexity of fixed-length models" in the transformers docs): with
//! `stride == context` the windows are disjoint and every token but each window's
//! first is scored with the context its window gives it; with `stride < context` every
//! token but the text's first is scored exactly once, and, past the first window, with
//! at least `context - stride` tokens before it. llama-perplexity's chunks of `n_ctx`
//! score only their second halves, so their tokens see `n_ctx/2 .. n_ctx-1` tokens of
//! context, as here with `stride = context / 2` (which also scores the first window's
//! first half and the tokens llama's chunks skip).
//!
//! Perplexity is `exp` of the mean negative log-likelihood of the scored tokens.
//! Against a base model, for every scored position: the KL divergence
//! `sum_v p_base(v) (log p_base(v) - log p_model(v))` of the model's distribution from
//! the base's, whether both put the same token first (the lowest id on ties, as greedy
//! decoding does), and `p_model(t) - p_base(t)` for the token `t` that follows in the
//! text, whose root mean square is reported.

use rayon::prelude::*;

use crate::model::{forward_batch_for, LogitRows, Model, RunState};
use crate::RunError;

/// One window: `tokens[start..end]` run at positions `0..end - start`; the tokens at
/// `first_target..end` are scored, each from the logits of the token before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub first_target: usize,
}

/// The windows of a text of `n_tokens` tokens (see the module's documentation).
pub fn windows(n_tokens: usize, context: usize, stride: usize) -> Result<Vec<Window>, RunError> {
    if context < 2 {
        return Err(RunError::Usage(format!("a window of {context} tokens scores nothing (the context must be at least 2)")));
    }
    if stride == 0 || stride > context {
        return Err(RunError::Usage(format!(
            "the stride must be between 1 and the context ({context}), not {stride}"
        )));
    }
    if n_tokens < 2 {
        return Err(RunError::Tokens(format!("the text has {n_tokens} tokens: at least 2 are needed to score one")));
    }
    let mut out = Vec::new();
    let mut previous_end = 0;
    for start in (0..n_tokens).step_by(stride) {
        let end = (start + context).min(n_tokens);
        let first_target = previous_end.max(start + 1);
        if first_target < end {
            out.push(Window { start, end, first_target });
        }
        previous_end = end;
        if end == n_tokens {
            break;
        }
    }
    Ok(out)
}

/// How a model's distributions differ from a base model's over the scored positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The base model's mean negative log-likelihood (nats per token).
    pub base_nll: f64,
    /// Mean KL divergence of the model from the base (nats).
    pub kl_mean: f64,
    /// The 99th percentile of the per-position KL divergence (nearest rank).
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Fraction of positions where both models put the same token first.
    pub top1_agreement: f64,
    /// Root mean square of `p_model(t) - p_base(t)` for the text's next token `t`.
    pub rms_delta_p: f64,
}

/// The result of [`measure`].
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// Positions scored.
    pub tokens: usize,
    pub windows: usize,
    /// Mean negative log-likelihood of the scored tokens (nats per token).
    pub nll: f64,
    pub drift: Option<Drift>,
}

impl Perplexity {
    pub fn perplexity(&self) -> f64 {
        self.nll.exp()
    }
}

/// What one logits row gives.
#[derive(Debug, Clone, Copy, Default)]
struct RowScore {
    nll: f64,
    base_nll: f64,
    kl: f64,
    same_top1: bool,
}

/// `log(sum(exp(row)))` and the first index of the largest value.
fn log_sum_exp(row: &[f32]) -> (f64, usize) {
    let mut argmax = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[argmax] {
            argmax = i;
        }
    }
    let max = row[argmax];
    (f64::from(max) + crate::kernels::sum_exp(crate::kernels::active(), row, max).ln(), argmax)
}

fn score_row(logits: &[f32], base: Option<&[f32]>, target: usize) -> RowScore {
    let (lse, argmax) = log_sum_exp(logits);
    let nll = lse - f64::from(logits[target]);
    let Some(base) = base else {
        return RowScore { nll, ..RowScore::default() };
    };
    let (base_lse, base_argmax) = log_sum_exp(base);
    // sum_v p_b(v) (log p_b(v) - log p_m(v)), with log p = logit - lse.
    let shift = (lse - base_lse) as f32;
    let kl = crate::kernels::kl_sum(crate::kernels::active(), base, logits, base_lse as f32, shift);
    RowScore { nll, base_nll: base_lse - f64::from(base[target]), kl, same_top1: argmax == base_argmax }
}

/// Sums over the scored positions.
#[derive(Default)]
struct Totals {
    tokens: usize,
    nll: f64,
    base_nll: f64,
    kl: f64,
    same_top1: usize,
    delta_p_squared: f64,
    /// Every position's KL divergence, for the percentile.
    kls: Vec<f32>,
}

impl Totals {
    fn add(&mut self, s: &RowScore) {
        self.tokens += 1;
        self.nll += s.nll;
        self.base_nll += s.base_nll;
        self.kl += s.kl;
        self.same_top1 += usize::from(s.same_top1);
        let delta_p = (-s.nll).exp() - (-s.base_nll).exp();
        self.delta_p_squared += delta_p * delta_p;
        self.kls.push(s.kl as f32);
    }

    fn finish(mut self, windows: usize, with_base: bool) -> Perplexity {
        let n = self.tokens.max(1) as f64;
        let drift = with_base.then(|| {
            let rank = ((0.99 * self.kls.len() as f64).ceil() as usize).clamp(1, self.kls.len().max(1)) - 1;
            let (_, p99, _) = self.kls.select_nth_unstable_by(rank, f32::total_cmp);
            let kl_p99 = f64::from(*p99);
            Drift {
                base_nll: self.base_nll / n,
                kl_mean: self.kl / n,
                kl_p99,
                kl_max: self.kls.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
                top1_agreement: self.same_top1 as f64 / n,
                rms_delta_p: (self.delta_p_squared / n).sqrt(),
            }
        });
        Perplexity { tokens: self.tokens, windows, nll: self.nll / n, drift }
    }
}

/// A model and the state it runs in; the state must hold a window's positions.
pub struct Runner<'r, 'm> {
    pub model: &'r Model<'m>,
    pub state: &'r mut RunState,
}

/// Scores `tokens` over `windows` with `model`, and against `base` when given (both
/// run on the same tokens). `progress(done, total)` is told the positions scored after
/// every batch.
pub fn measure(
    model: Runner,
    mut base: Option<Runner>,
    tokens: &[u32],
    windows: &[Window],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity, RunError> {
    let vocab = model.model.config.vocab_size as usize;
    let mut batch = model.state.max_batch();
    let mut positions = model.state.max_positions();
    if let Some(b) = &base {
        if b.model.config.vocab_size != model.model.config.vocab_size {
            return Err(RunError::Usage(format!(
                "the base model's vocabulary has {} entries, the model's {vocab}",
                b.model.config.vocab_size
            )));
        }
        batch = batch.min(b.state.max_batch());
        positions = positions.min(b.state.max_positions());
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(RunError::Tokens(format!("token id {t} is outside the vocabulary ({vocab})")));
    }
    for w in windows {
        if w.end > tokens.len() || w.start >= w.first_target || w.first_target > w.end || w.end - w.start > positions {
            return Err(RunError::Usage(format!(
                "window {}..{} does not fit the text ({} tokens) or the run state ({positions} positions)",
                w.start,
                w.end,
                tokens.len()
            )));
        }
    }
    let total: usize = windows.iter().map(|w| w.end - w.first_target).sum();
    let with_base = base.is_some();
    let mut totals = Totals { kls: Vec::with_capacity(if with_base { total } else { 0 }), ..Totals::default() };
    let mut rows = vec![RowScore::default(); batch];
    for w in windows {
        // Window positions p0..p1 give the logits that score tokens p0+1..p1+1.
        let mut p0 = w.first_target - 1 - w.start;
        // Earlier positions only fill the cache: run them too, in batches.
        let mut fill = 0;
        while fill < p0 {
            let n = batch.min(p0 - fill);
            let chunk = &tokens[w.start + fill..w.start + fill + n];
            forward_batch_for(model.model, model.state, chunk, fill, LogitRows::None);
            if let Some(b) = base.as_mut() {
                forward_batch_for(b.model, b.state, chunk, fill, LogitRows::None);
            }
            fill += n;
        }
        let last = w.end - 1 - w.start; // the last position whose logits score a token
        while p0 < last {
            let n = batch.min(last - p0);
            let chunk = &tokens[w.start + p0..w.start + p0 + n];
            let targets = &tokens[w.start + p0 + 1..w.start + p0 + 1 + n];
            let logits = forward_batch_for(model.model, model.state, chunk, p0, LogitRows::All);
            let base_logits = match base.as_mut() {
                Some(b) => Some(forward_batch_for(b.model, b.state, chunk, p0, LogitRows::All)),
                None => None,
            };
            rows[..n].par_iter_mut().enumerate().for_each(|(i, row)| {
                let span = i * vocab..(i + 1) * vocab;
                *row = score_row(&logits[span.clone()], base_logits.map(|b| &b[span]), targets[i] as usize);
            });
            rows[..n].iter().for_each(|r| totals.add(r));
            p0 += n;
            progress(totals.tokens, total);
        }
    }
    Ok(totals.finish(windows.len(), with_base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: usize, end: usize, first_target: usize) -> Window {
        Window { start, end, first_target }
    }

    #[test]
    fn disjoint_windows_skip_each_first_token() {
        assert_eq!(windows(10, 4, 4).unwrap(), vec![w(0, 4, 1), w(4, 8, 5), w(8, 10, 9)]);
    }

    #[test]
    fn overlapping_windows_score_every_token_once() {
        let ws = windows(10, 4, 2).unwrap();
        assert_eq!(ws, vec![w(0, 4, 1), w(2, 6, 4), w(4, 8, 6), w(6, 10, 8)]);
        let scored: usize = ws.iter().map(|w| w.end - w.first_target).sum();
        assert_eq!(scored, 9);
    }

    #[test]
    fn a_short_text_is_one_window() {
        assert_eq!(windows(3, 8, 4).unwrap(), vec![w(0, 3, 1)]);
        // stride 1 over the tail adds nothing past the first window's end.
        assert_eq!(windows(5, 5, 1).unwrap(), vec![w(0, 5, 1)]);
    }

    #[test]
    fn refusals() {
        assert!(windows(10, 1, 1).is_err());
        assert!(windows(10, 4, 0).is_err());
        assert!(windows(10, 4, 5).is_err());
        assert!(windows(1, 4, 4).is_err());
    }

    #[test]
    fn row_scores_against_a_direct_computation() {
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let base = [1.5f32, 1.0, 0.0, -0.5];
        let softmax = |r: &[f32]| {
            let z: f64 = r.iter().map(|&v| f64::from(v).exp()).sum();
            r.iter().map(|&v| f64::from(v).exp() / z).collect::<Vec<f64>>()
        };
        let (p, q) = (softmax(&logits), softmax(&base));
        let s = score_row(&logits, Some(&base), 2);
        assert!((s.nll + p[2].ln()).abs() < 1e-6);
        assert!((s.base_nll + q[2].ln()).abs() < 1e-6);
        let kl: f64 = q.iter().zip(&p).map(|(q, p)| q * (q / p).ln()).sum();
        assert!((s.kl - kl).abs() < 1e-6, "{} vs {kl}", s.kl);
        assert!(!s.same_top1);
        let same = score_row(&logits, Some(&logits), 0);
        assert!(same.kl.abs() < 1e-7 && same.same_top1);
    }

    #[test]
    fn percentile_and_rms() {
        let mut t = Totals::default();
        for i in 0..200 {
            let kl = i as f64 / 100.0;
            t.add(&RowScore { nll: 1.0, base_nll: 2.0, kl, same_top1: i % 4 != 0 });
        }
        let r = t.finish(1, true);
        let d = r.drift.unwrap();
        // Nearest rank: the 198th of 200 values, 0..=1.99.
        assert!((d.kl_p99 - 1.97).abs() < 1e-6, "{}", d.kl_p99);
        assert!((d.kl_max - 1.99).abs() < 1e-6);
        assert!((d.top1_agreement - 0.75).abs() < 1e-12);
        assert!((d.rms_delta_p - ((-1f64).exp() - (-2f64).exp())).abs() < 1e-12);
        assert!((r.nll - 1.0).abs() < 1e-12 && (d.base_nll - 2.0).abs() < 1e-12);
    }
}
