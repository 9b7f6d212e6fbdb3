//! Property: whatever is done to a valid blob, `Blob::parse` then `Model::new` either
//! succeed or return an error; they never panic. Whatever they accept, a forward pass
//! runs on without panicking. A seeded generator makes every failure reproducible: the
//! panic message names the seed and the mutation.

use std::panic::{catch_unwind, AssertUnwindSafe};

use olmo_format::sample::{self, assemble, split, Aligned};
use olmo_format::{Blob, DType, Manifest};
use olmort::{forward, Model, RunState};

/// SplitMix64: small, fast and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A value that is often at an edge: 0, 1, a small number, a power of two, the
    /// original +-1, or anything.
    fn interesting(&mut self, original: u64) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => 1,
            2 => self.below(100),
            3 => 1 << self.below(64),
            4 => original.wrapping_add(1),
            5 => original.wrapping_sub(1),
            6 => u64::MAX - self.below(4),
            _ => self.next(),
        }
    }
}

/// One random structured change to the manifest; returns what it did.
fn mutate_manifest(rng: &mut Rng, m: &mut Manifest, data: &mut Vec<u8>) -> String {
    let n = m.tensors.len() as u64;
    let i = rng.below(n) as usize;
    match rng.below(16) {
        0 => {
            let t = &mut m.tensors[i];
            t.offset = rng.interesting(t.offset);
            format!("tensor {i} offset = {}", t.offset)
        }
        1 => {
            let t = &mut m.tensors[i];
            t.byte_len = rng.interesting(t.byte_len);
            format!("tensor {i} byte_len = {}", t.byte_len)
        }
        2 => {
            let t = &mut m.tensors[i];
            if t.shape.is_empty() || rng.below(4) == 0 {
                t.shape.push(rng.interesting(1));
            } else {
                let d = rng.below(t.shape.len() as u64) as usize;
                t.shape[d] = rng.interesting(t.shape[d]);
            }
            format!("tensor {i} shape = {:?}", t.shape)
        }
        3 => {
            let t = &mut m.tensors[i];
            t.shape.pop();
            format!("tensor {i} shape = {:?}", t.shape)
        }
        4 => {
            let t = &mut m.tensors[i];
            t.dtype = rng.below(8) as u8;
            // Keep the layout consistent half of the time, to reach the later checks.
            if rng.below(2) == 0 {
                if let Some(d) = DType::from_code(t.dtype) {
                    t.layout = d.layout() as u8;
                    if let Some(len) = byte_len(d, &t.shape) {
                        t.byte_len = len;
                    }
                }
            }
            format!("tensor {i} dtype = {} layout = {} byte_len = {}", t.dtype, t.layout, t.byte_len)
        }
        5 => {
            let t = &mut m.tensors[i];
            t.layout = rng.below(4) as u8;
            format!("tensor {i} layout = {}", t.layout)
        }
        6 => {
            let j = rng.below(n) as usize;
            m.tensors[i].name = m.tensors[j].name.clone();
            format!("tensor {i} renamed as tensor {j}")
        }
        7 => {
            m.tensors.remove(i);
            format!("tensor {i} removed")
        }
        8 => {
            let j = rng.below(n) as usize;
            m.tensors.swap(i, j);
            format!("tensors {i} and {j} swapped")
        }
        9 => {
            let c = &mut m.config;
            let field = rng.below(8);
            let slot = match field {
                0 => &mut c.hidden_size,
                1 => &mut c.num_hidden_layers,
                2 => &mut c.num_attention_heads,
                3 => &mut c.num_key_value_heads,
                4 => &mut c.head_dim,
                5 => &mut c.intermediate_size,
                6 => &mut c.vocab_size,
                _ => &mut c.max_position_embeddings,
            };
            *slot = rng.interesting(*slot as u64) as u32;
            format!("config field {field} = {slot}")
        }
        10 => {
            let c = &mut m.config;
            let v = f64::from_bits(rng.next());
            let v = [v, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 0.5][rng.below(7) as usize];
            match rng.below(3) {
                0 => c.rope_full_attention.theta = v,
                1 => c.rms_norm_eps = v,
                _ => {
                    // Sliding layers with any window, or none; their RoPE with any base.
                    let l = rng.below(c.layer_types.len().max(1) as u64) as usize;
                    if let Some(t) = c.layer_types.get_mut(l) {
                        *t = olmo_format::AttentionType::Sliding;
                    }
                    c.architecture = olmo_format::ModelConfig::OLMO3.into();
                    c.sliding_window = [None, Some(0), Some(1), Some(rng.interesting(5) as u32)][rng.below(4) as usize];
                    c.rope_sliding_attention = (rng.below(4) > 0).then_some(olmo_format::Rope::default_with_theta(v));
                }
            }
            format!(
                "rope_theta = {} rms_norm_eps = {} layer_types {:?} window {:?} sliding rope {:?}",
                c.rope_full_attention.theta, c.rms_norm_eps, c.layer_types, c.sliding_window, c.rope_sliding_attention
            )
        }
        11 => {
            let c = &mut m.config;
            let id = rng.interesting(96) as u32;
            match rng.below(3) {
                0 => c.bos_token_id = Some(id),
                1 => c.eos_token_ids.push(id),
                _ => c.pad_token_id = Some(id),
            }
            format!("special ids {:?} {:?} {:?}", c.bos_token_id, c.eos_token_ids, c.pad_token_id)
        }
        12 => match &mut m.vocab {
            Some(v) if rng.below(2) == 0 => {
                v.n_tokens = rng.interesting(v.n_tokens as u64) as u32;
                format!("vocab n_tokens = {}", v.n_tokens)
            }
            Some(v) => {
                v.special_ids.push(rng.interesting(89) as u32);
                format!("vocab special ids {:?}", v.special_ids)
            }
            None => "no vocabulary to change".into(),
        },
        13 => {
            m.vocab = None;
            "vocabulary removed".into()
        }
        14 => {
            // Grow or shrink the data region.
            let new_len = if rng.below(2) == 0 {
                data.len() + rng.below(200) as usize
            } else {
                data.len().saturating_sub(rng.below(200) as usize)
            };
            data.resize(new_len, 0);
            format!("data resized to {new_len}")
        }
        _ => {
            // Corrupt the vocabulary offsets' values (data, not manifest): the view
            // must stay bounds-checked.
            if let Some(t) = m.tensors.iter().find(|t| t.name == olmo_format::VOCAB_OFFSETS) {
                let at = (t.offset as usize).saturating_add(4 * rng.below(t.shape.first().copied().unwrap_or(0)) as usize);
                if at.saturating_add(4) <= data.len() {
                    data[at..at + 4].copy_from_slice(&(rng.interesting(10) as u32).to_le_bytes());
                }
            }
            "vocabulary offset value changed".into()
        }
    }
}

fn byte_len(d: DType, shape: &[u64]) -> Option<u64> {
    match d {
        DType::Q8_0 => match shape {
            [r, c] => r.checked_mul(c.div_ceil(32))?.checked_mul(34),
            _ => None,
        },
        _ => shape.iter().try_fold(d.element_size()?, |a, &x| a.checked_mul(x)),
    }
}

/// Parses, builds the model and, if both succeed, runs two positions.
fn exercise(bytes: &[u8]) -> bool {
    let aligned = Aligned::new(bytes);
    let Ok(blob) = Blob::parse(aligned.bytes()) else {
        return false;
    };
    let Ok(model) = Model::new(&blob) else {
        return false;
    };
    let mut state = RunState::new(&model, 2).expect("a small model's buffers");
    for pos in 0..2 {
        let token = (pos as u32 * 7) % model.config.vocab_size;
        let _ = forward(&model, &mut state, token, pos);
    }
    if let Some(v) = &model.vocab {
        for id in 0..model.config.vocab_size {
            let _ = v.token(id);
        }
    }
    true
}

fn run_cases(seed: u64, cases: usize, base: &[u8]) -> usize {
    let mut rng = Rng(seed);
    let (h, m, data) = split(base);
    let mut accepted = 0;
    for case in 0..cases {
        let (what, bytes) = match rng.below(4) {
            0 => {
                let len = rng.below(base.len() as u64 + 1) as usize;
                (format!("truncated to {len}"), base[..len].to_vec())
            }
            1 => {
                // Flip 1-4 bytes; half the time within the header and manifest.
                let mut b = base.to_vec();
                let span = if rng.below(2) == 0 { h.data_offset } else { b.len() as u64 };
                let mut flips = Vec::new();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(span) as usize;
                    let mask = 1 + rng.below(255) as u8;
                    b[at] ^= mask;
                    flips.push((at, mask));
                }
                (format!("flipped {flips:?}"), b)
            }
            _ => {
                let mut m2 = m.clone();
                let mut d2 = data.clone();
                let mut what = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    what.push(mutate_manifest(&mut rng, &mut m2, &mut d2));
                }
                (what.join("; "), assemble(h, &m2, &d2))
            }
        };
        match catch_unwind(AssertUnwindSafe(|| exercise(&bytes))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("seed {seed:#x}, case {case}: panicked after: {what}"),
        }
    }
    accepted
}

#[test]
fn random_corruptions_never_panic() {
    let cases = 4000;
    let mut accepted = 0;
    for (seed, dtype) in [(0x5eed_0001, DType::F32), (0x5eed_0002, DType::Q8_0), (0x5eed_0003, DType::BF16)] {
        let vocab = sample::small_vocab(90);
        let base = sample::blob(&sample::small_config(), dtype, Some(&vocab));
        assert!(exercise(&base), "the uncorrupted {dtype} blob is refused");
        accepted += run_cases(seed, cases, &base);
    }
    // Some mutations are harmless (a data byte, a rope_theta); most are refused.
    eprintln!("{accepted} of {} corrupted blobs accepted", 3 * cases);
    assert!(accepted > 0 && accepted < 3 * cases, "{accepted} accepted");
}
