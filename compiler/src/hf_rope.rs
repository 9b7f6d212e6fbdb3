//! The rotary embeddings a `config.json` asks for, resolved as transformers resolves them
//! (`convert_rope_params_to_dict` of `Olmo2Config` and `Olmo3Config`,
//! `standardize_rope_params`, `_compute_yarn_parameters`), so that the blob holds the
//! numbers and the runtime only computes tables.
//!
//! Two spellings reach here: transformers 5's `rope_parameters` (flat for OLMo-2, a map
//! per layer type for OLMo-3) and the older top-level `rope_theta` with `rope_scaling`
//! (what the hub's OLMo-3 configs carry). Python's truthiness decides several defaults
//! (`beta_fast or 32`, `if mscale and mscale_all_dim`), so it decides them here too.

use olmo_format::{Rope, RopeScaling};
use serde_json::{Map, Value};

/// `RotaryEmbeddingConfigMixin.default_theta`, which `Olmo2Config` keeps.
pub const OLMO2_DEFAULT_THETA: f64 = 10_000.0;
/// `Olmo3Config.default_theta`.
pub const OLMO3_DEFAULT_THETA: f64 = 500_000.0;

type Object = Map<String, Value>;

/// OLMo-2: one rotary embedding for every layer. As the mixin does, `rope_scaling`
/// replaces `rope_parameters` whole, and a top-level `rope_theta` fills in a missing one.
pub fn olmo2_rope(config: &Object, max_position_embeddings: u32) -> Result<Rope, String> {
    let (label, params) = match (config.get("rope_scaling").filter(|v| truthy(v)), config.get("rope_parameters").filter(|v| truthy(v))) {
        (Some(v), _) => ("rope_scaling", v),
        (None, Some(v)) => ("rope_parameters", v),
        (None, None) => ("rope_parameters", &Value::Null),
    };
    let mut params = match params {
        Value::Null => Object::new(),
        v => object(v, label)?.clone(),
    };
    set_default_theta(&mut params, config.get("rope_theta"), OLMO2_DEFAULT_THETA)?;
    // `_compute_yarn_parameters` reads `truncate` from `config.rope_parameters`: this dict.
    let truncate = params.get("truncate").is_none_or(truthy);
    resolve(&params, label, truncate, max_position_embeddings)
}

/// OLMo-3: the rotary embeddings of the full-attention layers and, when some layer
/// slides, of the sliding-window ones (transformers builds one for each type in use).
pub fn olmo3_ropes(config: &Object, max_position_embeddings: u32, slides: bool) -> Result<(Rope, Option<Rope>), String> {
    let mut map = match config.get("rope_parameters") {
        None | Some(Value::Null) => Object::new(),
        Some(v) => object(v, "rope_parameters")?.clone(),
    };
    let scaling = config.get("rope_scaling").filter(|v| !v.is_null());
    if config.get("rope_parameters").is_none_or(Value::is_null) {
        for t in ["sliding_attention", "full_attention"] {
            map.insert(t.into(), serde_json::json!({ "rope_type": "default" }));
        }
    }
    // Olmo3Config updates the full-attention entry with `rope_scaling` before it fills
    // in missing entries, so a map without one cannot take it.
    if let Some(scaling) = scaling {
        let scaling = object(scaling, "rope_scaling")?.clone();
        match map.get_mut("full_attention") {
            Some(Value::Object(full)) => full.extend(scaling),
            _ => return Err("rope_scaling is given, but rope_parameters has no full_attention map to update".into()),
        }
    }
    let full_label = if scaling.is_some() { "rope_scaling" } else { "rope_parameters.full_attention" };
    let mut full = entry(&map, "full_attention")?;
    let mut sliding = entry(&map, "sliding_attention")?;
    set_default_theta(&mut full, config.get("rope_theta"), OLMO3_DEFAULT_THETA)?;
    // Olmo3Config pops the top-level `rope_theta` while filling in the full-attention
    // entry, so the sliding entry's default is always `default_theta`.
    set_default_theta(&mut sliding, None, OLMO3_DEFAULT_THETA)?;
    // `_compute_yarn_parameters` reads `truncate` from `config.rope_parameters`, which
    // for OLMo-3 is the map of layer types, not the entry it resolves.
    let truncate = map.get("truncate").is_none_or(truthy);
    let full = resolve(&full, full_label, truncate, max_position_embeddings)?;
    let sliding = match slides {
        true => Some(resolve(&sliding, "rope_parameters.sliding_attention", truncate, max_position_embeddings)?),
        false => None,
    };
    Ok((full, sliding))
}

/// A layer type's entry of the OLMo-3 map; a missing or null one is `default`.
fn entry(map: &Object, layer_type: &str) -> Result<Object, String> {
    match map.get(layer_type) {
        None | Some(Value::Null) => Ok(Object::from_iter([("rope_type".to_string(), Value::from("default"))])),
        Some(v) => Ok(object(v, &format!("rope_parameters.{layer_type}"))?.clone()),
    }
}

/// `params.setdefault("rope_theta", top_level if given else default)`.
fn set_default_theta(params: &mut Object, top_level: Option<&Value>, default: f64) -> Result<(), String> {
    if !params.contains_key("rope_theta") {
        let theta = match top_level {
            Some(v) => number(v, "rope_theta")?,
            None => default,
        };
        params.insert("rope_theta".into(), Value::from(theta));
    }
    Ok(())
}

/// One resolved rotary embedding: `default` or `yarn`, with YaRN's defaults and its
/// attention factor worked out.
fn resolve(params: &Object, label: &str, truncate: bool, max_position_embeddings: u32) -> Result<Rope, String> {
    let key = |k: &str| format!("{label}.{k}");
    let theta = number(&params["rope_theta"], &key("rope_theta"))?;
    if let Some(v) = params.get("partial_rotary_factor") {
        if number(v, &key("partial_rotary_factor"))? != 1.0 {
            return Err(format!("{} is not 1: OLMo rotates the whole head", key("partial_rotary_factor")));
        }
    }
    let rope_type = match params.get("rope_type").or_else(|| params.get("type")) {
        None => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("{} {v} is not a string", key("rope_type"))),
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "yarn" => {
            // standardize_rope_params fills in a missing original length.
            let original = match params.get("original_max_position_embeddings") {
                None => max_position_embeddings as f64,
                Some(v) => number(v, &key("original_max_position_embeddings"))?,
            };
            let original_max_position_embeddings = whole(original, &key("original_max_position_embeddings"))?;
            let factor = match params.get("factor") {
                None => return Err(format!("{} is missing: yarn needs it", key("factor"))),
                Some(Value::Null) => max_position_embeddings as f64 / original,
                Some(v) => number(v, &key("factor"))?,
            };
            let optional = |k: &str| -> Result<Option<f64>, String> {
                match params.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => number(v, &key(k)).map(Some),
                }
            };
            let attention_factor = match optional("attention_factor")? {
                Some(a) => a,
                None => match (optional("mscale")?.filter(|&m| m != 0.0), optional("mscale_all_dim")?.filter(|&m| m != 0.0)) {
                    (Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                    _ => yarn_mscale(factor, 1.0),
                },
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast: optional("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: optional("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                truncate,
            }
        }
        other => return Err(format!("{} {other:?} is not default or yarn", key("rope_type"))),
    };
    Ok(Rope { theta, scaling })
}

/// `yarn_get_mscale`: `0.1 * mscale * ln(scale) + 1`, or 1 for a scale of at most 1.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

fn object<'a>(v: &'a Value, key: &str) -> Result<&'a Object, String> {
    v.as_object().ok_or_else(|| format!("{key} {v} is not an object"))
}

fn number(v: &Value, key: &str) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{key} {v} is not a number"))
}

/// A number that must be a whole count (positions).
fn whole(v: f64, key: &str) -> Result<u32, String> {
    if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(format!("{key} {v} is not a whole number of positions"))
    }
}

/// Python's truth value of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    fn yarn(r: &Rope) -> (f64, u32, f64, f64, f64, bool) {
        match r.scaling {
            RopeScaling::Yarn { factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, truncate } => {
                (factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, truncate)
            }
            RopeScaling::Default => panic!("not yarn: {r:?}"),
        }
    }

    /// The hub's OLMo-3 7B spelling: top-level theta and `rope_scaling`, which goes to
    /// the full-attention layers; the sliding ones keep Olmo3Config's default theta.
    #[test]
    fn olmo3_legacy_spelling_scales_the_full_layers() {
        let c = obj(json!({"rope_theta": 10000, "rope_scaling": {"rope_type": "yarn", "factor": 8.0,
            "original_max_position_embeddings": 8192, "attention_factor": 1.2079441541679836,
            "beta_fast": 32, "beta_slow": 1, "truncate": false}}));
        let (full, sliding) = olmo3_ropes(&c, 65536, true).unwrap();
        assert_eq!(full.theta, 10000.0);
        // `truncate` inside the entry is not what transformers reads.
        assert_eq!(yarn(&full), (8.0, 8192, 1.2079441541679836, 32.0, 1.0, true));
        assert_eq!(sliding, Some(Rope::default_with_theta(OLMO3_DEFAULT_THETA)));
    }

    #[test]
    fn olmo3_map_per_layer_type() {
        let c = obj(json!({"rope_theta": 77.0, "rope_parameters": {
            "full_attention": {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4, "mscale": 1, "mscale_all_dim": 0.5, "beta_fast": 0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 300.0},
            "truncate": false}}));
        let (full, sliding) = olmo3_ropes(&c, 64, true).unwrap();
        assert_eq!(full.theta, 1000.0);
        let want_af = (0.1 * 4f64.ln() + 1.0) / (0.05 * 4f64.ln() + 1.0);
        // No original length: the model's; beta_fast 0 is falsy, so 32.
        assert_eq!(yarn(&full), (4.0, 64, want_af, 32.0, 1.0, false));
        assert_eq!(sliding, Some(Rope::default_with_theta(300.0)));
    }

    #[test]
    fn olmo3_defaults() {
        let (full, sliding) = olmo3_ropes(&Object::new(), 64, true).unwrap();
        assert_eq!((full, sliding), (Rope::default_with_theta(5e5), Some(Rope::default_with_theta(5e5))));
        // A map that lacks an entry gets a default one; the top-level theta goes to the
        // full layers only.
        let c = obj(json!({"rope_theta": 1234, "rope_parameters": {"full_attention": {"rope_type": "default"}}}));
        let (full, sliding) = olmo3_ropes(&c, 64, true).unwrap();
        assert_eq!((full.theta, sliding.unwrap().theta), (1234.0, 5e5));
        // factor null: the ratio of the lengths; no attention_factor: 0.1 ln(factor) + 1.
        let c = obj(json!({"rope_scaling": {"rope_type": "yarn", "factor": null, "original_max_position_embeddings": 16}}));
        let (full, _) = olmo3_ropes(&c, 64, false).unwrap();
        assert_eq!(yarn(&full), (4.0, 16, 0.1 * 4f64.ln() + 1.0, 32.0, 1.0, true));
        // The old key `type` names the type only where no `rope_type` is: the default
        // entry that `rope_scaling` updates already has one.
        let c = obj(json!({"rope_scaling": {"type": "yarn", "factor": 4}}));
        assert_eq!(olmo3_ropes(&c, 64, false).unwrap().0, Rope::default_with_theta(5e5));
    }

    #[test]
    fn olmo2_flat_parameters() {
        assert_eq!(olmo2_rope(&Object::new(), 64).unwrap(), Rope::default_with_theta(OLMO2_DEFAULT_THETA));
        let c = obj(json!({"rope_theta": 500000.0}));
        assert_eq!(olmo2_rope(&c, 64).unwrap(), Rope::default_with_theta(500000.0));
        let c = obj(json!({"rope_parameters": {"rope_theta": 20000.0, "rope_type": "yarn", "factor": 2.0,
            "original_max_position_embeddings": 24, "attention_factor": 1.5, "truncate": false}}));
        let r = olmo2_rope(&c, 64).unwrap();
        assert_eq!((r.theta, yarn(&r)), (20000.0, (2.0, 24, 1.5, 32.0, 1.0, false)));
        // rope_scaling replaces rope_parameters whole; `type` is the old `rope_type`.
        let c = obj(json!({"rope_parameters": {"rope_theta": 20000.0}, "rope_scaling": {"type": "yarn", "factor": 0.5}}));
        let r = olmo2_rope(&c, 64).unwrap();
        assert_eq!((r.theta, yarn(&r)), (OLMO2_DEFAULT_THETA, (0.5, 64, 1.0, 32.0, 1.0, true)));
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            (json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}), "rope_scaling.rope_type \"linear\""),
            (json!({"rope_parameters": {"full_attention": {"rope_type": "dynamic"}}}), "rope_parameters.full_attention.rope_type"),
            (json!({"rope_parameters": {"sliding_attention": {"rope_type": "llama3"}}}), "rope_parameters.sliding_attention.rope_type"),
            (json!({"rope_scaling": {"rope_type": "yarn"}}), "rope_scaling.factor is missing"),
            (json!({"rope_scaling": {"rope_type": "yarn", "factor": "8"}}), "rope_scaling.factor \"8\" is not a number"),
            (json!({"rope_scaling": {"rope_type": "yarn", "factor": 8, "original_max_position_embeddings": 8.5}}), "original_max_position_embeddings 8.5"),
            (json!({"rope_scaling": {"rope_type": "yarn", "factor": 8, "beta_fast": []}}), "rope_scaling.beta_fast"),
            (json!({"rope_scaling": {"rope_type": 7}}), "rope_scaling.rope_type 7 is not a string"),
            (json!({"rope_scaling": [1]}), "rope_scaling [1] is not an object"),
            (json!({"rope_parameters": {"rope_theta": 1.0}, "rope_scaling": {"factor": 2}}), "no full_attention"),
            (json!({"rope_parameters": {"full_attention": 3}}), "rope_parameters.full_attention 3 is not an object"),
            (json!({"rope_theta": "big"}), "rope_theta \"big\" is not a number"),
            (json!({"rope_parameters": {"full_attention": {"partial_rotary_factor": 0.5}}}), "partial_rotary_factor is not 1"),
        ];
        for (config, says) in cases {
            let err = olmo3_ropes(&obj(config.clone()), 64, true).unwrap_err();
            assert!(err.contains(says), "{config}: {err:?} does not say {says:?}");
        }
        // The sliding entry matters only when some layer slides.
        let c = obj(json!({"rope_parameters": {"sliding_attention": {"rope_type": "llama3"}}}));
        assert_eq!(olmo3_ropes(&c, 64, false).unwrap().1, None);
        let err = olmo2_rope(&obj(json!({"rope_parameters": {"rope_type": "longrope"}})), 64).unwrap_err();
        assert!(err.contains("rope_parameters.rope_type \"longrope\" is not default or yarn"), "{err}");
    }
}
