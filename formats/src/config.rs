use serde::{Deserialize, Serialize};

use crate::FormatError;

/// The model's hyper-parameters, named as in the Hugging Face `Olmo2Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `Olmo2ForCausalLM` for every model this format holds today.
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
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
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

impl ModelConfig {
    /// The only architecture this format holds today.
    pub const ARCHITECTURE: &'static str = "Olmo2ForCausalLM";

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
        if self.architecture != Self::ARCHITECTURE {
            return Err(bad(
                "architecture",
                format!("{:?} is not {}", self.architecture, Self::ARCHITECTURE),
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
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(bad(
                "rope_theta",
                format!("{} is not a finite number above 1", self.rope_theta),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0)
        {
            return Err(bad(
                "rms_norm_eps",
                format!("{} is not in (0, 1)", self.rms_norm_eps),
            ));
        }
        for (field, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::small_config;

    #[test]
    fn accepts_a_consistent_config() {
        small_config().validate().unwrap();
    }

    #[test]
    fn refuses_each_bad_field() {
        type Mutation = Box<dyn Fn(&mut ModelConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("architecture", Box::new(|c| c.architecture = "Llama".into())),
            ("hidden_size", Box::new(|c| c.hidden_size = 0)),
            ("num_hidden_layers", Box::new(|c| c.num_hidden_layers = 1 << 20)),
            ("num_attention_heads", Box::new(|c| c.num_attention_heads = 0)),
            ("num_key_value_heads", Box::new(|c| c.num_key_value_heads = 4)),
            ("head_dim", Box::new(|c| c.head_dim = 7)),
            ("intermediate_size", Box::new(|c| c.intermediate_size = 0)),
            ("vocab_size", Box::new(|c| c.vocab_size = u32::MAX)),
            ("max_position_embeddings", Box::new(|c| c.max_position_embeddings = 0)),
            ("rope_theta", Box::new(|c| c.rope_theta = f64::NAN)),
            ("rms_norm_eps", Box::new(|c| c.rms_norm_eps = 0.0)),
            ("eos_token_id", Box::new(|c| c.eos_token_id = Some(97))),
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
