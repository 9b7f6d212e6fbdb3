use serde::{Deserialize, Serialize};

use crate::FormatError;

/// The model's hyper-parameters, named as in the Hugging Face `Olmo2Config` and
/// `Olmo3Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// [`ModelConfig::OLMO2`] or [`ModelConfig::OLMO3`].
    #[serde(deserialize_with = "crate::manifest::borrowed_string")]
    pub architecture: String,
    /// d_model.
    pub hidden_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    /// Fewer than `num_attention_heads` for grouped-query attention.
    pub num_key_value_heads: u32,
    pub head_dim: u32,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: u32,
    /// Rows of the embedding and of lm_head (may exceed the tokenizer's vocabulary).
    pub vocab_size: u32,
    pub max_position_embeddings: u32,
    pub rms_norm_eps: f64,
    /// Each layer's attention, `num_hidden_layers` long (OLMo-2: all full).
    pub layer_types: Vec<AttentionType>,
    /// Positions a sliding layer's query attends to, its own included; present exactly
    /// when some layer slides.
    pub sliding_window: Option<u32>,
    /// Rotary embedding of the full-attention layers.
    pub rope_full_attention: Rope,
    /// Rotary embedding of the sliding-window layers; present exactly when some layer
    /// slides.
    pub rope_sliding_attention: Option<Rope>,
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (`generation_config.json`'s list, else
    /// `config.json`'s); may be empty.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// How a layer attends, transformers' `layer_types` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttentionType {
    /// `full_attention`: every earlier position.
    Full,
    /// `sliding_attention`: the last `sliding_window` positions.
    Sliding,
}

impl AttentionType {
    /// transformers' spelling.
    pub fn name(self) -> &'static str {
        match self {
            AttentionType::Full => "full_attention",
            AttentionType::Sliding => "sliding_attention",
        }
    }
}

/// A rotary position embedding: its base and scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    /// `rope_theta`.
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// `rope_type` and its parameters, resolved by olmoc as transformers resolves them, so
/// the runtime only computes tables.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// `default`: inverse frequencies `theta^(-2i / head_dim)`.
    Default,
    /// `yarn`: frequencies blended between `1/factor` interpolation and extrapolation
    /// over a ramp set by `beta_fast`/`beta_slow`, and cos/sin scaled by
    /// `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: u32,
        /// The cos/sin multiplier (transformers' `attention_scaling`), already resolved
        /// from `attention_factor`, `mscale` and `mscale_all_dim`.
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// Whether the correction range's ends are rounded outwards to whole dimensions.
        truncate: bool,
    },
}

impl Rope {
    /// Unscaled rotary embedding with base `theta`.
    pub fn default_with_theta(theta: f64) -> Rope {
        Rope { theta, scaling: RopeScaling::Default }
    }
}

/// Upper bounds that no OLMo-2 comes near but that keep a corrupt or hostile config from
/// asking for absurd allocations.
const MAX_HIDDEN: u32 = 1 << 16;
const MAX_LAYERS: u32 = 1 << 10;
const MAX_HEADS: u32 = 1 << 10;
const MAX_HEAD_DIM: u32 = 1 << 12;
const MAX_INTERMEDIATE: u32 = 1 << 20;
const MAX_VOCAB: u32 = 1 << 24;
const MAX_POSITIONS: u32 = 1 << 24;
/// More end-of-sequence ids than any tokenizer has special tokens for.
const MAX_EOS_IDS: usize = 1 << 10;

impl ModelConfig {
    /// transformers' `Olmo2ForCausalLM`: every layer attends fully.
    pub const OLMO2: &'static str = "Olmo2ForCausalLM";
    /// transformers' `Olmo3ForCausalLM`: sliding-window and full layers, RoPE per layer type.
    pub const OLMO3: &'static str = "Olmo3ForCausalLM";

    /// Layer `layer`'s attention and its window (`None`: every earlier position).
    pub fn attention(&self, layer: usize) -> (AttentionType, Option<u32>) {
        match self.layer_types[layer] {
            AttentionType::Full => (AttentionType::Full, None),
            AttentionType::Sliding => (AttentionType::Sliding, self.sliding_window),
        }
    }

    /// The rotary embedding of layers of type `t`.
    pub fn rope(&self, t: AttentionType) -> &Rope {
        match (t, &self.rope_sliding_attention) {
            (AttentionType::Sliding, Some(r)) => r,
            _ => &self.rope_full_attention,
        }
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Width of the query projection: `num_attention_heads * head_dim`.
    pub fn q_dim(&self) -> u64 {
        self.num_attention_heads as u64 * self.head_dim as u64
    }

    /// Width of each of the key and value projections: `num_key_value_heads * head_dim`.
    pub fn kv_dim(&self) -> u64 {
        self.num_key_value_heads as u64 * self.head_dim as u64
    }

    /// Checks that every size is positive, bounded and consistent with the others.
    pub fn validate(&self) -> Result<(), FormatError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> FormatError {
            FormatError::Config {
                field,
                reason: reason.into(),
            }
        }
        fn bounded(field: &'static str, value: u32, max: u32) -> Result<(), FormatError> {
            if value == 0 {
                return Err(bad(field, "must be positive"));
            }
            if value > max {
                return Err(bad(field, format!("{value} exceeds the limit of {max}")));
            }
            Ok(())
        }
        if self.architecture != Self::OLMO2 && self.architecture != Self::OLMO3 {
            return Err(bad(
                "architecture",
                format!("{:?} is not {} or {}", self.architecture, Self::OLMO2, Self::OLMO3),
            ));
        }
        bounded("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        bounded("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        bounded("num_attention_heads", self.num_attention_heads, MAX_HEADS)?;
        bounded("num_key_value_heads", self.num_key_value_heads, MAX_HEADS)?;
        bounded("head_dim", self.head_dim, MAX_HEAD_DIM)?;
        bounded("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE)?;
        bounded("vocab_size", self.vocab_size, MAX_VOCAB)?;
        bounded(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} is odd; rotary embedding needs pairs", self.head_dim),
            ));
        }
        if self.layer_types.len() != self.num_hidden_layers as usize {
            return Err(bad(
                "layer_types",
                format!("{} entries for {} layers", self.layer_types.len(), self.num_hidden_layers),
            ));
        }
        let slides = self.layer_types.contains(&AttentionType::Sliding);
        if slides && self.architecture == Self::OLMO2 {
            return Err(bad("layer_types", format!("{} has no sliding-window layers", Self::OLMO2)));
        }
        match self.sliding_window {
            None if slides => return Err(bad("sliding_window", "missing, and some layers slide")),
            Some(_) if !slides => return Err(bad("sliding_window", "given, but no layer slides")),
            Some(w) => bounded("sliding_window", w, MAX_POSITIONS)?,
            None => {}
        }
        match (&self.rope_sliding_attention, slides) {
            (None, true) => return Err(bad("rope_parameters", "sliding_attention is missing, and some layers slide")),
            (Some(_), false) => return Err(bad("rope_parameters", "sliding_attention is given, but no layer slides")),
            _ => {}
        }
        self.rope_full_attention.validate()?;
        if let Some(r) = &self.rope_sliding_attention {
            r.validate()?;
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0)
        {
            return Err(bad(
                "rms_norm_eps",
                format!("{} is not in (0, 1)", self.rms_norm_eps),
            ));
        }
        if self.eos_token_ids.len() > MAX_EOS_IDS {
            return Err(bad(
                "eos_token_id",
                format!("{} ids exceeds the limit of {MAX_EOS_IDS}", self.eos_token_ids.len()),
            ));
        }
        let ids = [("bos_token_id", self.bos_token_id), ("pad_token_id", self.pad_token_id)];
        let eos = self.eos_token_ids.iter().map(|&id| ("eos_token_id", Some(id)));
        for (field, id) in ids.into_iter().chain(eos) {
            if let Some(id) = id {
                if id >= self.vocab_size {
                    return Err(bad(
                        field,
                        format!("{id} is outside the vocabulary of {}", self.vocab_size),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Rope {
    /// A finite base above 1; YaRN's parameters finite and positive.
    fn validate(&self) -> Result<(), FormatError> {
        let bad = |field: &'static str, reason: String| FormatError::Config { field, reason };
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(bad("rope_theta", format!("{} is not a finite number above 1", self.theta)));
        }
        if let RopeScaling::Yarn { factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, .. } = self.scaling {
            for (field, v) in [("factor", factor), ("attention_factor", attention_factor), ("beta_fast", beta_fast), ("beta_slow", beta_slow)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(field, format!("{v} is not a finite positive number")));
                }
            }
            if original_max_position_embeddings == 0 || original_max_position_embeddings > MAX_POSITIONS {
                return Err(bad(
                    "original_max_position_embeddings",
                    format!("{original_max_position_embeddings} is not in 1..={MAX_POSITIONS}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{small_config, small_olmo3_config};

    #[test]
    fn accepts_a_consistent_config() {
        small_config().validate().unwrap();
        small_olmo3_config().validate().unwrap();
    }

    #[test]
    fn layers_get_their_type_window_and_rope() {
        let c = small_olmo3_config();
        assert_eq!(c.attention(0), (AttentionType::Sliding, Some(5)));
        assert_eq!(c.attention(3), (AttentionType::Full, None));
        assert!(matches!(c.rope(AttentionType::Full).scaling, RopeScaling::Yarn { .. }));
        assert_eq!(c.rope(AttentionType::Sliding).scaling, RopeScaling::Default);
        assert!(c.is_eos(95) && c.is_eos(96) && !c.is_eos(94));
    }

    #[test]
    fn refuses_each_bad_olmo3_field() {
        type Mutation = Box<dyn Fn(&mut ModelConfig)>;
        type YarnFields<'a> = (&'a mut f64, &'a mut u32, &'a mut f64, &'a mut f64, &'a mut f64);
        fn yarn(c: &mut ModelConfig) -> YarnFields<'_> {
            match &mut c.rope_full_attention.scaling {
                RopeScaling::Yarn { factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, .. } => {
                    (factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow)
                }
                RopeScaling::Default => unreachable!("the sample's full layers use YaRN"),
            }
        }
        let cases: Vec<(&str, Mutation)> = vec![
            ("layer_types", Box::new(|c| c.layer_types.pop().map(drop).unwrap_or(()))),
            ("sliding_window", Box::new(|c| c.sliding_window = Some(0))),
            ("sliding_window", Box::new(|c| c.sliding_window = None)),
            ("sliding_window", Box::new(|c| c.layer_types = vec![AttentionType::Full; 4])),
            ("rope_parameters", Box::new(|c| c.rope_sliding_attention = None)),
            ("rope_theta", Box::new(|c| c.rope_sliding_attention.as_mut().unwrap().theta = 0.5)),
            ("factor", Box::new(|c| *yarn(c).0 = 0.0)),
            ("original_max_position_embeddings", Box::new(|c| *yarn(c).1 = 0)),
            ("attention_factor", Box::new(|c| *yarn(c).2 = f64::INFINITY)),
            ("beta_fast", Box::new(|c| *yarn(c).3 = -1.0)),
            ("beta_slow", Box::new(|c| *yarn(c).4 = f64::NAN)),
            ("eos_token_id", Box::new(|c| c.eos_token_ids = vec![1; 2000])),
            ("architecture", Box::new(|c| c.architecture = ModelConfig::OLMO2.into())),
        ];
        for (field, mutate) in cases {
            let mut c = small_olmo3_config();
            mutate(&mut c);
            match c.validate() {
                // An OLMo-2 with sliding layers is refused for its layer types.
                Err(FormatError::Config { field: f, .. }) if field == "architecture" => assert_eq!(f, "layer_types"),
                Err(FormatError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_each_bad_field() {
        type Mutation = Box<dyn Fn(&mut ModelConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("architecture", Box::new(|c| c.architecture = "Llama".into())),
            ("layer_types", Box::new(|c| c.layer_types.push(AttentionType::Full))),
            ("layer_types", Box::new(|c| c.layer_types[0] = AttentionType::Sliding)),
            ("sliding_window", Box::new(|c| c.sliding_window = Some(4))),
            ("hidden_size", Box::new(|c| c.hidden_size = 0)),
            ("num_hidden_layers", Box::new(|c| c.num_hidden_layers = 1 << 20)),
            ("num_attention_heads", Box::new(|c| c.num_attention_heads = 0)),
            ("num_key_value_heads", Box::new(|c| c.num_key_value_heads = 4)),
            ("head_dim", Box::new(|c| c.head_dim = 7)),
            ("intermediate_size", Box::new(|c| c.intermediate_size = 0)),
            ("vocab_size", Box::new(|c| c.vocab_size = u32::MAX)),
            ("max_position_embeddings", Box::new(|c| c.max_position_embeddings = 0)),
            ("rope_theta", Box::new(|c| c.rope_full_attention.theta = f64::NAN)),
            ("rms_norm_eps", Box::new(|c| c.rms_norm_eps = 0.0)),
            ("eos_token_id", Box::new(|c| c.eos_token_ids.push(97))),
        ];
        for (field, mutate) in cases {
            let mut c = small_config();
            mutate(&mut c);
            match c.validate() {
                Err(FormatError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
    }
}
