//! The forward pass, one token at a time against a KV cache, as Hugging Face's
//! `Olmo2ForCausalLM` computes it.

use rayon::prelude::*;

use crate::kernels::matvec;
use crate::model::Model;
use crate::ops::{rms_norm, softmax, swiglu, RopeTables};

/// Every buffer a forward pass needs, allocated once for at most `max_positions` positions.
pub struct RunState {
    /// (d) the residual stream
    x: Vec<f32>,
    /// (q + 2 kv) this token's query, key and value
    qkv: Vec<f32>,
    /// (q) attention output, heads concatenated
    attn: Vec<f32>,
    /// (d) output of o_proj or down_proj before its norm
    proj: Vec<f32>,
    /// (2 f) gate then up
    gate_up: Vec<f32>,
    /// (f) silu(gate) * up
    act: Vec<f32>,
    /// (heads, max_positions) attention weights
    scores: Vec<f32>,
    /// (vocab)
    pub logits: Vec<f32>,
    /// (layer, max_positions, kv)
    key_cache: Vec<f32>,
    /// (layer, max_positions, kv)
    value_cache: Vec<f32>,
    rope: RopeTables,
    max_positions: usize,
}

impl RunState {
    pub fn new(model: &Model, max_positions: usize) -> RunState {
        let c = model.config;
        let d = c.hidden_size as usize;
        let q = c.q_dim() as usize;
        let kv = c.kv_dim() as usize;
        let f = c.intermediate_size as usize;
        let layers = c.num_hidden_layers as usize;
        RunState {
            x: vec![0.0; d],
            qkv: vec![0.0; q + 2 * kv],
            attn: vec![0.0; q],
            proj: vec![0.0; d],
            gate_up: vec![0.0; 2 * f],
            act: vec![0.0; f],
            scores: vec![0.0; c.num_attention_heads as usize * max_positions],
            logits: vec![0.0; c.vocab_size as usize],
            key_cache: vec![0.0; layers * max_positions * kv],
            value_cache: vec![0.0; layers * max_positions * kv],
            rope: RopeTables::new(max_positions, c.head_dim as usize, c.rope_theta),
            max_positions,
        }
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// Runs `token` at position `pos` (all earlier positions must already be in the cache)
/// and returns the next-token logits.
pub fn forward<'s>(model: &Model, s: &'s mut RunState, token: u32, pos: usize) -> &'s [f32] {
    let c = model.config;
    assert!(pos < s.max_positions, "position {pos} beyond the KV cache");
    let eps = c.rms_norm_eps as f32;
    let head_dim = c.head_dim as usize;
    let heads = c.num_attention_heads as usize;
    let group = heads / c.num_key_value_heads as usize;
    let q_dim = c.q_dim() as usize;
    let kv_dim = c.kv_dim() as usize;
    let f = c.intermediate_size as usize;
    let n_ctx = pos + 1;
    let layer_stride = s.max_positions * kv_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();

    model.embed_tokens.row_to_f32(token as usize, &mut s.x);

    for (l, w) in model.layers.iter().enumerate() {
        // Attention. OLMo-2 normalises the q and k projections (over all heads at once)
        // and the attention output, not the layer input.
        matvec(&w.qkv_proj, &s.x, &mut s.qkv);
        let (q, kv) = s.qkv.split_at_mut(q_dim);
        let (k, v) = kv.split_at_mut(kv_dim);
        rms_norm(q, w.q_norm, eps);
        rms_norm(k, w.k_norm, eps);
        s.rope.apply(q, pos);
        s.rope.apply(k, pos);
        let key_cache = &mut s.key_cache[l * layer_stride..][..layer_stride];
        let value_cache = &mut s.value_cache[l * layer_stride..][..layer_stride];
        key_cache[pos * kv_dim..][..kv_dim].copy_from_slice(k);
        value_cache[pos * kv_dim..][..kv_dim].copy_from_slice(v);
        let (key_cache, value_cache) = (&*key_cache, &*value_cache);
        let q = &*q;
        s.attn
            .par_chunks_mut(head_dim)
            .zip(s.scores.par_chunks_mut(s.max_positions))
            .enumerate()
            .for_each(|(h, (out, scores))| {
                let qh = &q[h * head_dim..][..head_dim];
                let kv_off = (h / group) * head_dim;
                let scores = &mut scores[..n_ctx];
                for (t, score) in scores.iter_mut().enumerate() {
                    let kh = &key_cache[t * kv_dim + kv_off..][..head_dim];
                    *score = qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                softmax(scores);
                out.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    let vh = &value_cache[t * kv_dim + kv_off..][..head_dim];
                    for (o, &vv) in out.iter_mut().zip(vh) {
                        *o += p * vv;
                    }
                }
            });
        matvec(&w.o_proj, &s.attn, &mut s.proj);
        rms_norm(&mut s.proj, w.post_attention_layernorm, eps);
        for (x, p) in s.x.iter_mut().zip(&s.proj) {
            *x += p;
        }

        // MLP: SwiGLU, normalised before the residual add.
        matvec(&w.gate_up_proj, &s.x, &mut s.gate_up);
        swiglu(&s.gate_up, &mut s.act[..f]);
        matvec(&w.down_proj, &s.act, &mut s.proj);
        rms_norm(&mut s.proj, w.post_feedforward_layernorm, eps);
        for (x, p) in s.x.iter_mut().zip(&s.proj) {
            *x += p;
        }
    }

    rms_norm(&mut s.x, model.norm, eps);
    matvec(&model.lm_head, &s.x, &mut s.logits);
    &s.logits
}
