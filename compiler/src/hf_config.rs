//! The model configuration: from a Hugging Face `config.json` (OLMo-2 or OLMo-3), or
//! inferred from the tensor shapes with OLMo-2 defaults.
//!
//! A key that `config.json` leaves out takes the default of transformers' config class
//! (`Olmo2Config`, `Olmo3Config`), so the blob runs what transformers would run.

use std::path::Path;

use olmo_format::{AttentionType, ModelConfig, Rope};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::hf_rope::{olmo2_rope, olmo3_ropes};
use crate::PackError;

/// The keys of `Olmo2Config` and `Olmo3Config` that matter here with a fixed type;
/// the RoPE keys, `layer_types` and `sliding_window` are read from the JSON object
/// itself, where absent and null differ. Unknown keys are ignored.
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
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<TokenIds>,
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

/// OLMo-2-0425-1B's values, used when there is no config at all.
pub const DEFAULT_ROPE_THETA: f64 = 500_000.0;
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
pub const DEFAULT_HEAD_DIM: u32 = 128;
pub const DEFAULT_MAX_POSITIONS: u32 = 4096;
pub const DEFAULT_EOS: u32 = 100_257;
pub const DEFAULT_PAD: u32 = 100_277;
/// `rms_norm_eps` of `Olmo2Config` and `Olmo3Config`, for a `config.json` without one.
pub const HF_DEFAULT_RMS_NORM_EPS: f64 = 1e-5;
/// `Olmo3Config.sliding_window`, for a `config.json` without one.
pub const HF_DEFAULT_SLIDING_WINDOW: u32 = 4096;

/// What the packer learned from `config.json` beyond the model config itself.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: ModelConfig,
    /// The checkpoint may omit `lm_head.weight` and reuse the embedding.
    pub tie_word_embeddings: bool,
}

/// Reads `config.json` (`generation_config.json`'s end-of-sequence ids, which override
/// its own, are read by `chat_config::read_generation_eos`).
pub fn read_config_json(path: &Path) -> Result<LoadedConfig, PackError> {
    let bad = |reason: String| PackError::Input(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    parse_config(&text).map_err(bad)
}

/// The model config of a `config.json`'s text; an error is one line naming the key.
pub fn parse_config(text: &str) -> Result<LoadedConfig, String> {
    let raw: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let hf: HfConfig = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    let raw = raw.as_object().ok_or("not a JSON object")?;
    let architecture = architecture(&hf)?;
    if hf.hidden_act.as_deref().is_some_and(|a| a != "silu") {
        return Err(format!("hidden_act {:?} is not silu", hf.hidden_act.unwrap()));
    }
    if hf.attention_bias == Some(true) {
        return Err("attention_bias = true is not supported".into());
    }
    let heads = hf.num_attention_heads;
    if heads == 0 {
        return Err("num_attention_heads is 0".into());
    }
    let (layer_types, sliding_window, rope_full_attention, rope_sliding_attention) = if architecture == ModelConfig::OLMO3 {
        let types = layer_types(raw, hf.num_hidden_layers)?;
        let slides = types.contains(&AttentionType::Sliding);
        let window = sliding_window(raw)?;
        let window = match (slides, window) {
            (true, None) => return Err("sliding_window is null, but some layers slide".into()),
            (true, w) => w,
            (false, _) => None,
        };
        let (full, sliding) = olmo3_ropes(raw, hf.max_position_embeddings, slides)?;
        (types, window, full, sliding)
    } else {
        let full = olmo2_rope(raw, hf.max_position_embeddings)?;
        (vec![AttentionType::Full; hf.num_hidden_layers as usize], None, full, None)
    };
    let config = ModelConfig {
        architecture: architecture.into(),
        hidden_size: hf.hidden_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(heads),
        head_dim: hf.head_dim.unwrap_or(hf.hidden_size / heads),
        intermediate_size: hf.intermediate_size,
        vocab_size: hf.vocab_size,
        max_position_embeddings: hf.max_position_embeddings,
        rms_norm_eps: hf.rms_norm_eps.unwrap_or(HF_DEFAULT_RMS_NORM_EPS),
        layer_types,
        sliding_window,
        rope_full_attention,
        rope_sliding_attention,
        bos_token_id: hf.bos_token_id.and_then(|t| t.first()),
        eos_token_ids: hf.eos_token_id.map_or_else(Vec::new, |t| t.all()),
        pad_token_id: hf.pad_token_id.and_then(|t| t.first()),
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(LoadedConfig {
        config,
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
    })
}

/// `Olmo2ForCausalLM` or `Olmo3ForCausalLM`, from `model_type` and `architectures`
/// (which must agree when both are given); neither is OLMo-2.
fn architecture(hf: &HfConfig) -> Result<&'static str, String> {
    let from_type = match hf.model_type.as_deref() {
        None => None,
        Some("olmo2") => Some(ModelConfig::OLMO2),
        Some("olmo3") => Some(ModelConfig::OLMO3),
        Some(t) => return Err(format!("model_type {t:?} is not olmo2 or olmo3")),
    };
    let from_arch = match hf.architectures.first().map(String::as_str) {
        None => None,
        Some(ModelConfig::OLMO2) => Some(ModelConfig::OLMO2),
        Some(ModelConfig::OLMO3) => Some(ModelConfig::OLMO3),
        Some(a) => return Err(format!("architecture {a:?} is not {} or {}", ModelConfig::OLMO2, ModelConfig::OLMO3)),
    };
    match (from_type, from_arch) {
        (Some(t), Some(a)) if t != a => Err(format!("architecture {a:?} does not match model_type {:?}", hf.model_type.as_deref().unwrap_or(""))),
        (t, a) => Ok(t.or(a).unwrap_or(ModelConfig::OLMO2)),
    }
}

/// `layer_types`, one per layer; without it, Olmo3Config's default: every fourth layer
/// full, the others sliding.
fn layer_types(raw: &Map<String, Value>, layers: u32) -> Result<Vec<AttentionType>, String> {
    let list = match raw.get("layer_types") {
        None | Some(Value::Null) => {
            let kind = |i: u32| if (i + 1).is_multiple_of(4) { AttentionType::Full } else { AttentionType::Sliding };
            return Ok((0..layers).map(kind).collect());
        }
        Some(Value::Array(list)) => list,
        Some(v) => return Err(format!("layer_types {v} is not a list")),
    };
    if list.len() != layers as usize {
        return Err(format!("layer_types has {} entries for num_hidden_layers {layers}", list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            // transformers renames the legacy "attention" to "full_attention".
            Some("full_attention" | "attention") => Ok(AttentionType::Full),
            Some("sliding_attention") => Ok(AttentionType::Sliding),
            _ => Err(format!("layer_types[{i}] {t} is not full_attention or sliding_attention")),
        })
        .collect()
}

/// `sliding_window`: Olmo3Config's 4096 when absent, `None` when null; 0 is refused.
fn sliding_window(raw: &Map<String, Value>) -> Result<Option<u32>, String> {
    match raw.get("sliding_window") {
        None => Ok(Some(HF_DEFAULT_SLIDING_WINDOW)),
        Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|w| u32::try_from(w).ok()) {
            Some(0) => Err("sliding_window is 0: a sliding layer's query must see at least its own position".into()),
            Some(w) => Ok(Some(w)),
            None => Err(format!("sliding_window {v} is not a whole number of positions")),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use olmo_format::RopeScaling;
    use serde_json::json;

    /// A small OLMo-3 config.json with `extra` keys set ("-" removes a key).
    fn olmo3(extra: Value) -> String {
        let mut c = json!({
            "architectures": ["Olmo3ForCausalLM"], "model_type": "olmo3", "hidden_size": 36,
            "num_hidden_layers": 5, "num_attention_heads": 6, "num_key_value_heads": 2,
            "intermediate_size": 92, "vocab_size": 97, "max_position_embeddings": 64,
            "eos_token_id": [96, 95], "pad_token_id": 1, "sliding_window": 3,
        });
        for (k, v) in extra.as_object().unwrap() {
            match v {
                v if v == "-" => c.as_object_mut().unwrap().remove(k),
                v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        c.to_string()
    }

    #[test]
    fn olmo3_from_its_config() {
        let c = parse_config(&olmo3(json!({}))).unwrap().config;
        assert_eq!(c.architecture, ModelConfig::OLMO3);
        let (s, f) = (AttentionType::Sliding, AttentionType::Full);
        assert_eq!(c.layer_types, [s, s, s, f, s]);
        assert_eq!((c.sliding_window, c.head_dim, c.rms_norm_eps), (Some(3), 6, HF_DEFAULT_RMS_NORM_EPS));
        assert_eq!(c.eos_token_ids, [96, 95]);
        assert_eq!(c.rope_full_attention, Rope::default_with_theta(500000.0));
        assert_eq!(c.rope_sliding_attention, Some(Rope::default_with_theta(500000.0)));

        // The hub's spelling; "attention" is transformers' legacy name for full.
        let hub = json!({"layer_types": ["attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "rope_theta": 500000, "rope_scaling": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
            "attention_factor": 1.2, "beta_fast": 32, "beta_slow": 1}, "sliding_window": null, "model_type": "-"});
        let err = parse_config(&olmo3(hub.clone())).unwrap_err();
        assert!(err.contains("sliding_window is null"), "{err}");
        let mut hub = hub;
        hub["sliding_window"] = json!(4);
        let c = parse_config(&olmo3(hub)).unwrap().config;
        assert_eq!(c.layer_types, [f, s, f, s, f]);
        assert_eq!(c.attention(1), (s, Some(4)));
        assert!(matches!(c.rope_full_attention.scaling, RopeScaling::Yarn { factor: 8.0, attention_factor: 1.2, .. }));

        // Without sliding layers, no window and no sliding RoPE; no window key: 4096.
        let all_full = json!({"layer_types": vec!["full_attention"; 5], "sliding_window": 0});
        let err = parse_config(&olmo3(all_full)).unwrap_err();
        assert!(err.contains("sliding_window is 0"), "{err}");
        let c = parse_config(&olmo3(json!({"layer_types": vec!["full_attention"; 5]}))).unwrap().config;
        assert_eq!((c.sliding_window, c.rope_sliding_attention), (None, None));
        let c = parse_config(&olmo3(json!({"sliding_window": "-", "layer_types": null}))).unwrap().config;
        assert_eq!(c.sliding_window, Some(HF_DEFAULT_SLIDING_WINDOW));
    }

    #[test]
    fn olmo2_defaults_are_transformers() {
        let c = json!({"model_type": "olmo2", "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 6,
            "intermediate_size": 92, "vocab_size": 97, "max_position_embeddings": 64,
            "layer_types": ["sliding_attention", "bogus"], "sliding_window": 0});
        let c = parse_config(&c.to_string()).unwrap().config;
        // Olmo2Config knows no layer types or window; its theta and eps defaults.
        assert_eq!(c.layer_types, [AttentionType::Full; 2]);
        assert_eq!((c.sliding_window, c.num_key_value_heads), (None, 6));
        assert_eq!((c.rope_full_attention, c.rms_norm_eps), (Rope::default_with_theta(10000.0), 1e-5));
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            (json!({"layer_types": vec!["sliding_attention"; 4]}), "layer_types has 4 entries for num_hidden_layers 5"),
            (json!({"layer_types": ["sliding_attention", "full_attention", "chunked_attention", "full_attention", "full_attention"]}), "layer_types[2] \"chunked_attention\""),
            (json!({"layer_types": "sliding_attention"}), "layer_types \"sliding_attention\" is not a list"),
            (json!({"sliding_window": 0}), "sliding_window is 0"),
            (json!({"sliding_window": -2}), "sliding_window -2 is not a whole number"),
            (json!({"sliding_window": 1 << 30}), "sliding_window"),
            (json!({"rope_scaling": {"rope_type": "longrope", "factor": 2}}), "rope_scaling.rope_type \"longrope\" is not default or yarn"),
            (json!({"rope_scaling": {"rope_type": "yarn"}}), "rope_scaling.factor is missing"),
            (json!({"rope_scaling": {"rope_type": "yarn", "factor": 4, "attention_factor": 0}}), "attention_factor"),
            (json!({"rope_scaling": {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 0}}), "original_max_position_embeddings"),
            (json!({"model_type": "olmo2"}), "architecture \"Olmo3ForCausalLM\" does not match model_type \"olmo2\""),
            (json!({"architectures": ["LlamaForCausalLM"]}), "architecture \"LlamaForCausalLM\""),
            (json!({"model_type": "gemma3"}), "model_type \"gemma3\" is not olmo2 or olmo3"),
            (json!({"eos_token_id": [96, 970]}), "eos_token_id"),
        ];
        for (extra, says) in cases {
            let err = parse_config(&olmo3(extra.clone())).err().unwrap_or_else(|| panic!("{extra} was accepted"));
            assert!(err.contains(says), "{extra}: {err:?} does not say {says:?}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }
}
