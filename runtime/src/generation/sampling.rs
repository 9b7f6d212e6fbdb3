//! Choosing the next token from logits: greedy (temperature 0, the default) or sampled
//! with temperature, top-k and top-p, from a seeded generator so that the same seed
//! gives the same tokens.
//!
//! The candidate buffer is allocated once, at the vocabulary's size; a step only writes
//! into it.

use crate::model::ops::top_k;

/// How to choose tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy (the argmax, lowest id on ties); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the ranges; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("--temperature {} must be a number >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// xoshiro256**, seeded through splitmix64 (so any u64 seed, 0 included, is fine).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [splitmix(), splitmix(), splitmix(), splitmix()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Chooses tokens; holds the generator and a buffer of (id, weight) candidates.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

/// Descending by value, then ascending by id: a total order, so results never depend on
/// the sort's stability.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    pub fn new(params: SamplingParams, vocab_size: usize) -> Sampler {
        Sampler {
            params,
            rng: Rng::new(params.seed),
            candidates: if params.is_greedy() {
                Vec::new()
            } else {
                Vec::with_capacity(vocab_size)
            },
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for these logits. NaN logits are never chosen.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return top_k::<1>(logits)[0].0;
        }
        let p = self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| (i as u32, v)),
        );
        if c.is_empty() {
            return top_k::<1>(logits)[0].0;
        }
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            c.truncate(p.top_k);
        }
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        if max.is_infinite() {
            // Nothing to weigh by: the best candidate.
            return c.iter().min_by(|a, b| by_logit_desc(a, b)).map_or(0, |x| x.0);
        }
        let inv_t = 1.0 / p.temperature as f64;
        let weight = |logit: f32| (((logit - max) as f64) * inv_t).exp();
        if p.top_p < 1.0 {
            // Keep the shortest best-first prefix reaching top_p of the mass. Only as many
            // candidates are sorted as the prefix needs: the best 64, then 8 times more...
            let target = p.top_p as f64 * c.iter().map(|x| weight(x.1)).sum::<f64>();
            let (mut sorted, mut kept, mut n) = (0, 0.0f64, 0);
            let mut m = c.len().min(64);
            'grow: loop {
                if m < c.len() {
                    c[sorted..].select_nth_unstable_by(m - sorted - 1, by_logit_desc);
                }
                c[sorted..m].sort_unstable_by(by_logit_desc);
                for x in &c[sorted..m] {
                    kept += weight(x.1);
                    n += 1;
                    if kept >= target {
                        break 'grow;
                    }
                }
                if m == c.len() {
                    break;
                }
                sorted = m;
                m = (m * 8).min(c.len());
            }
            c.truncate(n.max(1));
        }
        let mut total = 0.0f64;
        for x in c.iter_mut() {
            let w = weight(x.1);
            x.1 = w as f32;
            total += w;
        }
        let mut r = self.rng.next_f64() * total;
        for x in c.iter() {
            r -= x.1 as f64;
            if r < 0.0 {
                return x.0;
            }
        }
        // Rounding left a sliver: the last candidate with weight.
        c.iter().rev().find(|x| x.1 > 0.0).unwrap_or(&c[0]).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed }
    }

    #[test]
    fn greedy_is_the_argmax_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::default(), 4);
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, f32::NAN]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed), logits.len());
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let logits = [0.0, 5.0, 4.0, 1.0, 4.5];
        let mut s = Sampler::new(params(10.0, 2, 1.0, 1), logits.len());
        for _ in 0..200 {
            assert!(matches!(s.sample(&logits), 1 | 4));
        }
        // Probabilities at temperature 1: 1 has 0.50, 4 has 0.30, 2 has 0.18: top_p 0.7
        // keeps 1 and 4.
        let mut s = Sampler::new(params(1.0, 0, 0.7, 1), logits.len());
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > seen[4] && seen[4] > 300, "{seen:?}");
    }

    #[test]
    fn a_wide_nucleus_is_found_past_the_first_sorted_block() {
        // 1000 equal logits: top_p 0.5 keeps the 500 lowest ids (ties go to the lower id).
        let logits = vec![0.0f32; 1000];
        let mut s = Sampler::new(params(1.0, 0, 0.5, 9), logits.len());
        let mut highest = 0;
        for _ in 0..5000 {
            let id = s.sample(&logits);
            assert!(id < 500, "{id}");
            highest = highest.max(id);
        }
        assert!(highest > 450, "{highest}");
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // weights 1 : 2 : 5
        let mut s = Sampler::new(params(1.0, 0, 1.0, 42), 3);
        let mut seen = [0f64; 3];
        let n = 40_000;
        for _ in 0..n {
            seen[s.sample(&logits) as usize] += 1.0;
        }
        for (got, want) in seen.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0]) {
            assert!((got / n as f64 - want).abs() < 0.01, "{seen:?}");
        }
    }

    #[test]
    fn sampling_does_not_grow_its_buffer() {
        let logits: Vec<f32> = (0..1000).map(|i| (i % 13) as f32).collect();
        let mut s = Sampler::new(params(0.8, 0, 0.9, 3), logits.len());
        let before = s.candidates.capacity();
        for _ in 0..10 {
            s.sample(&logits);
        }
        assert_eq!(s.candidates.capacity(), before);
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(params(-1.0, 0, 1.0, 0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0, 0).validate().is_err());
        assert!(params(1.0, 0, 0.0, 0).validate().is_err());
        assert!(params(1.0, 0, 1.5, 0).validate().is_err());
        assert!(params(0.7, 40, 0.95, 0).validate().is_ok());
    }
}
