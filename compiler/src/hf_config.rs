//! The model configuration: from a Hugging Face `config.json`, or inferred from the
//! tensor shapes with OLMo-2 defaults.

use std::path::Path;

use olmo_format::{AttentionType, ModelConfig, Rope};
use serde::Deserialize;

use crate::PackError;

/// The keys of `Olmo2Config` that matter here. Unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: u32,
    num_hidden_layers: u32,
    num_attention_heads: u32,
    num_key_value_heads: Option<u32>,
    head_dim: Option<u32>,
    intermediate_size: u32,
    vocab_size: u32,
    max_position_embeddings: u32,
    /// Top-level in transformers 4.x; under `rope_parameters` in later versions.
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<TokenIds>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// A token id, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// The first id (`bos_token_id`, `pad_token_id`).
    fn first(&self) -> Option<u32> {
        self.all().first().copied()
    }

    /// Every id (`eos_token_id`: Instruct models stop on several).
    fn all(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// OLMo-2-0425-1B's values, used where a config omits them or there is no config at all.
pub const DEFAULT_ROPE_THETA: f64 = 500_000.0;
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
pub const DEFAULT_HEAD_DIM: u32 = 128;
pub const DEFAULT_MAX_POSITIONS: u32 = 4096;
pub const DEFAULT_EOS: u32 = 100_257;
pub const DEFAULT_PAD: u32 = 100_277;

/// What the packer learned from `config.json` beyond the model config itself.
pub struct LoadedConfig {
    pub config: ModelConfig,
    /// The checkpoint may omit `lm_head.weight` and reuse the embedding.
    pub tie_word_embeddings: bool,
}

pub fn read_config_json(path: &Path) -> Result<LoadedConfig, PackError> {
    let bad = |reason: String| PackError::Input(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(t) = &hf.model_type {
        if t != "olmo2" {
            return Err(bad(format!("model_type {t:?} is not olmo2")));
        }
    }
    if let Some(a) = hf.architectures.first() {
        if a != olmo_format::ModelConfig::OLMO2 {
            return Err(bad(format!("architecture {a:?} is not Olmo2ForCausalLM")));
        }
    }
    if hf.hidden_act.as_deref().is_some_and(|a| a != "silu") {
        return Err(bad(format!("hidden_act {:?} is not silu", hf.hidden_act.unwrap())));
    }
    if hf.attention_bias == Some(true) {
        return Err(bad("attention_bias = true is not supported".into()));
    }
    let rope_type = hf.rope_parameters.as_ref().and_then(|r| r.rope_type.as_deref());
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
        || rope_type.is_some_and(|t| t != "default")
    {
        return Err(bad("rope scaling is not supported".into()));
    }
    let heads = hf.num_attention_heads;
    if heads == 0 {
        return Err(bad("num_attention_heads is 0".into()));
    }
    let config = ModelConfig {
        architecture: olmo_format::ModelConfig::OLMO2.into(),
        hidden_size: hf.hidden_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(heads),
        head_dim: hf.head_dim.unwrap_or(hf.hidden_size / heads),
        intermediate_size: hf.intermediate_size,
        vocab_size: hf.vocab_size,
        max_position_embeddings: hf.max_position_embeddings,
        rms_norm_eps: hf.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS),
        layer_types: vec![AttentionType::Full; hf.num_hidden_layers as usize],
        sliding_window: None,
        rope_full_attention: Rope::default_with_theta(
            hf.rope_parameters.and_then(|r| r.rope_theta).or(hf.rope_theta).unwrap_or(DEFAULT_ROPE_THETA),
        ),
        rope_sliding_attention: None,
        bos_token_id: hf.bos_token_id.and_then(|t| t.first()),
        eos_token_ids: hf.eos_token_id.map_or_else(Vec::new, |t| t.all()),
        pad_token_id: hf.pad_token_id.and_then(|t| t.first()),
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(LoadedConfig {
        config,
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
    })
}

/// Shapes the inference needs: `(vocab, hidden)` of the embedding, the rows of the q and
/// k projections, the rows of gate_proj and the number of layers.
pub struct InferredShapes {
    pub vocab: u64,
    pub hidden: u64,
    pub q_rows: u64,
    pub k_rows: u64,
    pub ffn: u64,
    pub layers: u32,
}

/// A config from the tensor shapes alone, assuming OLMo-2's head size of 128.
pub fn infer_config(s: &InferredShapes) -> Result<ModelConfig, PackError> {
    let hd = DEFAULT_HEAD_DIM as u64;
    if !s.q_rows.is_multiple_of(hd) || !s.k_rows.is_multiple_of(hd) {
        return Err(PackError::Input(format!(
            "no config.json, and the q/k projection widths ({}, {}) are not multiples of the default head size {hd}: add a config.json",
            s.q_rows, s.k_rows
        )));
    }
    let to_u32 = |what: &str, v: u64| {
        u32::try_from(v).map_err(|_| PackError::Input(format!("{what} of {v} is too large")))
    };
    let vocab = to_u32("vocabulary", s.vocab)?;
    let config = ModelConfig {
        architecture: ModelConfig::OLMO2.into(),
        hidden_size: to_u32("hidden size", s.hidden)?,
        num_hidden_layers: s.layers,
        num_attention_heads: to_u32("heads", s.q_rows / hd)?,
        num_key_value_heads: to_u32("kv heads", s.k_rows / hd)?,
        head_dim: DEFAULT_HEAD_DIM,
        intermediate_size: to_u32("intermediate size", s.ffn)?,
        vocab_size: vocab,
        max_position_embeddings: DEFAULT_MAX_POSITIONS,
        rms_norm_eps: DEFAULT_RMS_NORM_EPS,
        layer_types: vec![AttentionType::Full; s.layers as usize],
        sliding_window: None,
        rope_full_attention: Rope::default_with_theta(DEFAULT_ROPE_THETA),
        rope_sliding_attention: None,
        bos_token_id: None,
        eos_token_ids: (DEFAULT_EOS < vocab).then_some(DEFAULT_EOS).into_iter().collect(),
        pad_token_id: (DEFAULT_PAD < vocab).then_some(DEFAULT_PAD),
    };
    config
        .validate()
        .map_err(|e| PackError::Input(format!("inferred config: {e}")))?;
    Ok(config)
}
