//! The tensors a blob holds for a given configuration: their names, roles and shapes.
//!
//! Names follow the Hugging Face checkpoint's keys; the two fused matrices get the names
//! of the projections they replace (`qkv_proj` = q, k, v stacked by rows; `gate_up_proj`
//! = gate, up stacked by rows).

use crate::ModelConfig;

/// Raw bytes of every token of the vocabulary, back to back (u8).
pub const VOCAB_BYTES: &str = "tokenizer.token_bytes";
/// `n_tokens + 1` offsets into [`VOCAB_BYTES`]; token `i` is `bytes[off[i]..off[i + 1]]` (u32).
pub const VOCAB_OFFSETS: &str = "tokenizer.token_offsets";

/// What a tensor is used as, which decides the dtypes it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// A matrix read by the matrix kernels: any weight dtype.
    Matrix,
    /// A norm weight vector: always f32.
    Norm,
    /// Vocabulary bytes (u8) or offsets (u32).
    VocabBytes,
    VocabOffsets,
}

/// The names of one decoder layer's tensors.
#[derive(Debug, Clone)]
pub struct LayerNames {
    /// `(q_dim + 2 * kv_dim, hidden)`: q, k and v projections stacked.
    pub qkv_proj: String,
    /// `(q_dim)`: RMSNorm over the whole query projection.
    pub q_norm: String,
    /// `(kv_dim)`: RMSNorm over the whole key projection.
    pub k_norm: String,
    /// `(hidden, q_dim)`.
    pub o_proj: String,
    /// `(hidden)`: RMSNorm applied to the attention output before the residual add.
    pub post_attention_layernorm: String,
    /// `(2 * intermediate, hidden)`: gate and up projections stacked.
    pub gate_up_proj: String,
    /// `(hidden, intermediate)`.
    pub down_proj: String,
    /// `(hidden)`: RMSNorm applied to the MLP output before the residual add.
    pub post_feedforward_layernorm: String,
}

impl LayerNames {
    pub fn new(layer: u32) -> LayerNames {
        let p = format!("model.layers.{layer}");
        LayerNames {
            qkv_proj: format!("{p}.self_attn.qkv_proj.weight"),
            q_norm: format!("{p}.self_attn.q_norm.weight"),
            k_norm: format!("{p}.self_attn.k_norm.weight"),
            o_proj: format!("{p}.self_attn.o_proj.weight"),
            post_attention_layernorm: format!("{p}.post_attention_layernorm.weight"),
            gate_up_proj: format!("{p}.mlp.gate_up_proj.weight"),
            down_proj: format!("{p}.mlp.down_proj.weight"),
            post_feedforward_layernorm: format!("{p}.post_feedforward_layernorm.weight"),
        }
    }
}

pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

impl ModelConfig {
    /// Every model tensor the configuration requires, in file order, with its role and
    /// logical shape. The vocabulary tensors are not included (they are optional).
    pub fn model_tensors(&self) -> Vec<(String, TensorRole, Vec<u64>)> {
        let d = self.hidden_size as u64;
        let ffn = self.intermediate_size as u64;
        let vocab = self.vocab_size as u64;
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let mut out = vec![(EMBED_TOKENS.to_string(), TensorRole::Matrix, vec![vocab, d])];
        for l in 0..self.num_hidden_layers {
            let n = LayerNames::new(l);
            out.push((n.qkv_proj, TensorRole::Matrix, vec![q + 2 * kv, d]));
            out.push((n.q_norm, TensorRole::Norm, vec![q]));
            out.push((n.k_norm, TensorRole::Norm, vec![kv]));
            out.push((n.o_proj, TensorRole::Matrix, vec![d, q]));
            out.push((n.post_attention_layernorm, TensorRole::Norm, vec![d]));
            out.push((n.gate_up_proj, TensorRole::Matrix, vec![2 * ffn, d]));
            out.push((n.down_proj, TensorRole::Matrix, vec![d, ffn]));
            out.push((n.post_feedforward_layernorm, TensorRole::Norm, vec![d]));
        }
        out.push((FINAL_NORM.to_string(), TensorRole::Norm, vec![d]));
        out.push((LM_HEAD.to_string(), TensorRole::Matrix, vec![vocab, d]));
        out
    }
}
