//! Choosing the next token from logits: greedy (temperature 0, the default) or sampled
//! with temperature, top-k and top-p, from a seeded generator so that the same seed
//! gives the same tokens; either after a bias per token ([`Sampler::set_logit_bias`])
//! and repetition penalties on the tokens of the context's last `penalty_last_n`, as
//! llama.cpp applies them (the bias first).
//!
//! The candidate and penalty buffers are allocated once, at the vocabulary's size; a
//! step only writes into them.

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
    /// Penalties on each token that occurs among the last `penalty_last_n` tokens of the
    /// context (prompt and generated), applied to its logit before the choice, in
    /// llama.cpp's order and form: divided by `repeat_penalty` if positive, multiplied
    /// by it if not (HF's `repetition_penalty`; 1 is off), then `frequency_penalty` times
    /// its count and `presence_penalty` once subtracted (OpenAI's; 0 is off).
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// How many of the context's last tokens the penalties look at; 0 turns them off.
    pub penalty_last_n: usize,
}

/// llama.cpp's default window for repetition penalties.
pub const DEFAULT_PENALTY_LAST_N: usize = 64;

/// The longest penalty window a [`Sampler`] keeps (a larger `penalty_last_n`, such as
/// "the whole context", is this): 256 KiB of token ids, allocated with the sampler.
pub const MAX_PENALTY_WINDOW: usize = 1 << 16;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: DEFAULT_PENALTY_LAST_N,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether any penalty changes a logit.
    pub fn penalizes(&self) -> bool {
        self.penalty_last_n > 0 && (self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0)
    }

    /// Checks the ranges; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("--temperature {} must be a number >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p {} must be in (0, 1]", self.top_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!("--repeat-penalty {} must be a number > 0", self.repeat_penalty));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(format!("--frequency-penalty {} must be a number", self.frequency_penalty));
        }
        if !self.presence_penalty.is_finite() {
            return Err(format!("--presence-penalty {} must be a number", self.presence_penalty));
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

/// Chooses tokens; holds the generator, a buffer of (id, weight) candidates and, with a
/// logit bias or [`SamplingParams::penalizes`], what changes the logits before the
/// choice.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
    vocab_size: usize,
    adjust: Option<Adjustments>,
}

/// What changes the logits before a choice, in the order applied: a bias added to some
/// tokens', then the repetition penalties' window of recent tokens; and the scratch a
/// step adjusts a copy of the logits in.
struct Adjustments {
    /// (token, added to its logit); only ids within the logits are applied.
    bias: Vec<(u32, f32)>,
    /// The context's last tokens, oldest first once `recent` is full from `next` on (a
    /// ring of `penalty_last_n`).
    recent: Vec<u32>,
    next: usize,
    /// Per token id, its count in `recent` while a step applies them; zeros between.
    counts: Vec<u32>,
    logits: Vec<f32>,
}

impl Adjustments {
    fn new(params: &SamplingParams, vocab_size: usize) -> Adjustments {
        Adjustments {
            bias: Vec::new(),
            recent: Vec::with_capacity(if params.penalizes() { params.penalty_last_n } else { 0 }),
            next: 0,
            counts: vec![0; vocab_size],
            logits: vec![0.0; vocab_size],
        }
    }

    fn push(&mut self, token: u32, window: usize) {
        if self.recent.len() < window {
            self.recent.push(token);
        } else {
            self.recent[self.next] = token;
            self.next = (self.next + 1) % window;
        }
    }

    /// `logits` with the bias and the penalties applied, in the scratch buffer.
    fn apply(&mut self, p: &SamplingParams, logits: &[f32]) -> &[f32] {
        if self.logits.len() != logits.len() {
            // Only if the model's logits are not `vocab_size` long: sized once.
            self.logits.resize(logits.len(), 0.0);
            self.counts.resize(logits.len(), 0);
        }
        self.logits.copy_from_slice(logits);
        for &(t, b) in &self.bias {
            if let Some(l) = self.logits.get_mut(t as usize) {
                *l += b;
            }
        }
        for &t in &self.recent {
            if let Some(c) = self.counts.get_mut(t as usize) {
                *c += 1;
            }
        }
        for &t in &self.recent {
            let Some(c) = self.counts.get_mut(t as usize) else { continue };
            if *c == 0 {
                continue; // already applied: a token is penalised once, by its count
            }
            let l = &mut self.logits[t as usize];
            *l = if *l <= 0.0 { *l * p.repeat_penalty } else { *l / p.repeat_penalty };
            *l -= *c as f32 * p.frequency_penalty + p.presence_penalty;
            *c = 0;
        }
        &self.logits
    }
}

/// Descending by value, then ascending by id: a total order, so results never depend on
/// the sort's stability.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    pub fn new(params: SamplingParams, vocab_size: usize) -> Sampler {
        let params = SamplingParams { penalty_last_n: params.penalty_last_n.min(MAX_PENALTY_WINDOW), ..params };
        Sampler {
            params,
            rng: Rng::new(params.seed),
            candidates: if params.is_greedy() {
                Vec::new()
            } else {
                Vec::with_capacity(vocab_size)
            },
            vocab_size,
            adjust: params.penalizes().then(|| Adjustments::new(&params, vocab_size)),
        }
    }

    /// Adds `bias` to the logits of its tokens before every choice (OpenAI's
    /// `logit_bias`; ids past the logits are left out). Allocates; call it before
    /// generating, not per token.
    pub fn set_logit_bias(&mut self, bias: &[(u32, f32)]) {
        if bias.is_empty() && self.adjust.is_none() {
            return;
        }
        let (params, vocab) = (self.params, self.vocab_size);
        let adjust = self.adjust.get_or_insert_with(|| Adjustments::new(&params, vocab));
        adjust.bias.clear();
        adjust.bias.extend_from_slice(bias);
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Starts a new context: the penalties look at the last of `tokens` (a prompt) from
    /// now on, then at each token [`Sampler::sample`] returns.
    pub fn set_context(&mut self, tokens: &[u32]) {
        let window = self.params.penalty_last_n;
        if !self.params.penalizes() {
            return;
        }
        if let Some(p) = &mut self.adjust {
            p.recent.clear();
            p.next = 0;
            for &t in &tokens[tokens.len().saturating_sub(window)..] {
                p.push(t, window);
            }
        }
    }

    /// The next token for these logits (after the bias and the penalties, if any); it
    /// joins the context the penalties look at. NaN logits are never chosen.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let token = match &mut self.adjust {
            Some(p) => choose(&self.params, &mut self.rng, &mut self.candidates, p.apply(&self.params, logits)),
            None => choose(&self.params, &mut self.rng, &mut self.candidates, logits),
        };
        if let (Some(p), true) = (&mut self.adjust, self.params.penalizes()) {
            p.push(token, self.params.penalty_last_n);
        }
        token
    }
}

/// The token `p` chooses from `logits`, with `rng` and the `c` buffer.
fn choose(p: &SamplingParams, rng: &mut Rng, c: &mut Vec<(u32, f32)>, logits: &[f32]) -> u32 {
    if p.is_greedy() {
        return top_k::<1>(logits)[0].0;
    }
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
    let mut r = rng.next_f64() * total;
    for x in c.iter() {
        r -= x.1 as f64;
        if r < 0.0 {
            return x.0;
        }
    }
    // Rounding left a sliver: the last candidate with weight.
    c.iter().rev().find(|x| x.1 > 0.0).unwrap_or(&c[0]).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed, ..SamplingParams::default() }
    }

    fn penalties(repeat: f32, frequency: f32, presence: f32, last_n: usize) -> SamplingParams {
        SamplingParams { repeat_penalty: repeat, frequency_penalty: frequency, presence_penalty: presence, penalty_last_n: last_n, ..SamplingParams::default() }
    }

    #[test]
    fn penalties_change_logits_as_llama_cpp_does() {
        // Token 1 twice and token 2 once in the window, token 0 not: 3.0 / 2 - 2 * 0.5 -
        // 0.25 = 0.25 and -1.0 * 2 - 0.5 - 0.25 = -2.75; token 0 keeps 1.0.
        let mut s = Sampler::new(penalties(2.0, 0.5, 0.25, 8), 4);
        s.set_context(&[1, 2, 1]);
        let p = s.adjust.as_mut().unwrap();
        let params = s.params;
        assert_eq!(p.apply(&params, &[1.0, 3.0, -1.0, 0.5]), &[1.0, 0.25, -2.75, 0.5]);
        assert!(p.counts.iter().all(|&c| c == 0), "counts cleared for the next step");
    }

    #[test]
    fn a_repeat_penalty_turns_greedy_away_from_the_window() {
        let logits = [2.0f32, 1.8, 0.0];
        let mut plain = Sampler::new(SamplingParams::default(), 3);
        plain.set_context(&[0]);
        assert_eq!(plain.sample(&logits), 0);
        let mut s = Sampler::new(penalties(1.3, 0.0, 0.0, 64), 3);
        s.set_context(&[0]);
        assert_eq!(s.sample(&logits), 1, "2.0 / 1.3 < 1.8");
        // 1 joined the window: both are penalised now, 2.0 / 1.3 against 1.8 / 1.3.
        assert_eq!(s.sample(&logits), 0);
    }

    #[test]
    fn the_window_keeps_the_last_tokens_only() {
        let logits = [1.0f32, 1.0, 1.0, 0.9];
        let mut s = Sampler::new(penalties(1.0, 0.0, 1.0, 2), 4);
        // Only 1 and 2 are in a window of two: 0 is free again.
        s.set_context(&[0, 1, 2]);
        assert_eq!(s.sample(&logits), 0);
        // Window [2, 0]: 1 is the lowest free id at 1.0.
        assert_eq!(s.sample(&logits), 1);
        // Window [0, 1]: 2.
        assert_eq!(s.sample(&logits), 2);
        // Window [1, 2]: 0 again; 3 (0.9) never beats a free 1.0.
        assert_eq!(s.sample(&logits), 0);
        let off = penalties(1.0, 0.0, 1.0, 0);
        assert!(!off.penalizes() && Sampler::new(off, 4).adjust.is_none());
    }

    #[test]
    fn a_logit_bias_is_added_before_the_penalties() {
        let logits = [2.0f32, 1.0, 0.5];
        let mut s = Sampler::new(SamplingParams::default(), 3);
        s.set_logit_bias(&[(0, -100.0), (1, 0.25), (7, 50.0)]);
        assert_eq!(s.sample(&logits), 1, "0 banned; 7 is past the logits and ignored");
        // With a penalty: (1.0 + 2.0) / 2 = 1.5 against token 2's 0.5 + 0.9.
        let mut s = Sampler::new(penalties(2.0, 0.0, 0.0, 4), 3);
        s.set_logit_bias(&[(1, 2.0), (2, 0.9)]);
        s.set_context(&[1]);
        let p = s.adjust.as_mut().unwrap();
        assert_eq!(p.apply(&penalties(2.0, 0.0, 0.0, 4), &logits), &[2.0, 1.5, 1.4]);
        s.set_logit_bias(&[]);
        assert_eq!(s.adjust.as_mut().unwrap().apply(&penalties(2.0, 0.0, 0.0, 4), &logits), &[2.0, 0.5, 0.5]);
    }

    #[test]
    fn penalties_allocate_nothing_per_step() {
        let logits: Vec<f32> = (0..1000).map(|i| (i % 13) as f32).collect();
        let mut s = Sampler::new(SamplingParams { temperature: 0.8, ..penalties(1.1, 0.2, 0.1, 16) }, logits.len());
        s.set_context(&(0..100).collect::<Vec<u32>>());
        let p = s.adjust.as_ref().unwrap();
        let before = (p.recent.capacity(), p.counts.capacity(), p.logits.capacity(), s.candidates.capacity());
        for _ in 0..50 {
            s.sample(&logits);
        }
        let p = s.adjust.as_ref().unwrap();
        assert_eq!((p.recent.capacity(), p.counts.capacity(), p.logits.capacity(), s.candidates.capacity()), before);
        assert_eq!(p.recent.len(), 16);
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
        assert!(penalties(0.0, 0.0, 0.0, 64).validate().is_err());
        assert!(penalties(f32::INFINITY, 0.0, 0.0, 64).validate().is_err());
        assert!(penalties(1.1, f32::NAN, 0.0, 64).validate().is_err());
        assert!(penalties(1.1, 0.0, f32::NEG_INFINITY, 64).validate().is_err());
        assert!(penalties(1.1, -0.5, 1.5, 64).validate().is_ok());
    }
}
