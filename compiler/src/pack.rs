//! `olmoc pack`: a checkpoint folder (per-tensor `.npy` files or a Hugging Face
//! safetensors snapshot, see [`crate::checkpoint`], with `config.json` and `vocab.txt` or
//! `tokenizer.json`, and for chat models the templates and eos ids of
//! [`crate::chat_config`]) into one blob. Every input is checked before the first byte is written; the blob is
//! written to a temporary file beside the output and renamed into place only when
//! complete, so a failure or an interrupt never leaves a partial file or clobbers an
//! existing one (see [`crate::output`]).

use std::fs;
use std::path::Path;
use std::time::Instant;

use olmo_format::vocab::Vocab;
use olmo_format::writer::{BlobPlan, TensorSpec};
use olmo_format::{
    DType, LayerNames, ModelConfig, TensorRole, EMBED_TOKENS, LM_HEAD,
};

use crate::chat_config::{read_chat_info, read_generation_eos};
use crate::convert::{write_f32s, write_matrix};
use crate::checkpoint::{Checkpoint, Tensor};
use crate::hf_config::read_config_json;
use crate::output::{ChunkWriter, Output};
use crate::progress::Progress;
use crate::tokenizer_json::read_tokenizer_json;
use crate::PackError;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Storage type of the matrices (norm weights are always f32).
    pub dtype: DType,
    /// Storage type of the embedding table; `None`: [`PackOptions::embed_dtype`]'s default.
    pub embed_dtype: Option<DType>,
    /// Storage type of `lm_head`; `None`: [`PackOptions::head_dtype`]'s default.
    pub head_dtype: Option<DType>,
    /// Draw a progress bar on stderr while writing (olmoc: when stderr is a terminal).
    pub progress: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            dtype: DType::F32,
            embed_dtype: None,
            head_dtype: None,
            progress: false,
        }
    }
}

impl PackOptions {
    /// The embedding table's type: as asked, else q8_0 under a 4-bit `dtype`, else
    /// `dtype`. A decode step reads one row of it, so its precision costs file size and
    /// no speed; at 4 bits the fixtures' mean logit error grew by up to a third
    /// (docs/PERFORMANCE.md, "Accuracy").
    pub fn embed_dtype(&self) -> DType {
        self.embed_dtype.unwrap_or(if self.dtype.is_q4() { DType::Q8_0 } else { self.dtype })
    }

    /// `lm_head`'s type: as asked, else `dtype`. Every decode step reads all of it: at
    /// q8_0 under 4-bit matrices it is 27% of the 1B's step bytes (against 16%), for a
    /// mean logit error 5-8% lower on the fixtures; `--head-dtype q8_0` asks for it.
    pub fn head_dtype(&self) -> DType {
        self.head_dtype.unwrap_or(self.dtype)
    }

    /// The type of the model matrix called `name`.
    fn dtype_of(&self, name: &str) -> DType {
        match name {
            EMBED_TOKENS => self.embed_dtype(),
            LM_HEAD => self.head_dtype(),
            _ => self.dtype,
        }
    }
}

/// What a pack produced.
#[derive(Debug, Clone)]
pub struct PackSummary {
    pub tensors: usize,
    pub bytes: u64,
    pub dtype: DType,
    pub seconds: f64,
    pub config: ModelConfig,
    pub vocab_tokens: Option<u32>,
}

/// Where a blob tensor's values come from: one or more checkpoint tensors stacked by rows.
struct Source {
    spec: TensorSpec,
    role: TensorRole,
    parts: Vec<Tensor>,
}

/// The checkpoint tensors that make up each blob tensor, checked against the config.
fn plan_sources(
    ckpt: &Checkpoint,
    config: &ModelConfig,
    tie_word_embeddings: bool,
    options: &PackOptions,
) -> Result<Vec<Source>, PackError> {
    let d = config.hidden_size as u64;
    let ffn = config.intermediate_size as u64;
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let lm_head_source = if tie_word_embeddings && !ckpt.contains(LM_HEAD) {
        EMBED_TOKENS
    } else {
        LM_HEAD
    };
    let mut used: Vec<String> = Vec::new();
    let mut sources = Vec::new();
    for (name, role, shape) in config.model_tensors() {
        // (checkpoint tensor, its shape) stacked by rows to form `name`.
        let parts: Vec<(String, Vec<u64>)> = if let Some(layer) = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
        {
            let p = format!("model.layers.{layer}");
            let n = LayerNames::new(layer.parse().expect("model_tensors names layers by number"));
            if name == n.qkv_proj {
                vec![
                    (format!("{p}.self_attn.q_proj.weight"), vec![q, d]),
                    (format!("{p}.self_attn.k_proj.weight"), vec![kv, d]),
                    (format!("{p}.self_attn.v_proj.weight"), vec![kv, d]),
                ]
            } else if name == n.gate_up_proj {
                vec![
                    (format!("{p}.mlp.gate_proj.weight"), vec![ffn, d]),
                    (format!("{p}.mlp.up_proj.weight"), vec![ffn, d]),
                ]
            } else {
                vec![(name.clone(), shape.clone())]
            }
        } else if name == LM_HEAD {
            vec![(lm_head_source.to_string(), shape.clone())]
        } else {
            vec![(name.clone(), shape.clone())]
        };
        let parts = parts
            .into_iter()
            .map(|(part, part_shape)| {
                let t = ckpt.open(&part, &part_shape)?;
                used.push(part);
                Ok(t)
            })
            .collect::<Result<Vec<_>, PackError>>()?;
        sources.push(Source {
            spec: TensorSpec::model_tensor(name.clone(), role, shape, options.dtype_of(&name)),
            role,
            parts,
        });
    }
    if let Some(extra) = ckpt.names().into_iter().find(|k| !used.iter().any(|u| u == k)) {
        let why = match ckpt.layer_count() {
            n if n > config.num_hidden_layers && extra.starts_with("model.layers.") => format!(
                " (the config has {} layers, the files have {n})",
                config.num_hidden_layers
            ),
            _ => String::new(),
        };
        return Err(PackError::Input(format!(
            "{}: unexpected tensor {extra}{why}",
            ckpt.location(extra).display()
        )));
    }
    Ok(sources)
}

/// The vocabulary from `tokenizer.json` (a Hugging Face snapshot's) or, without one,
/// from `vocab.txt`; none if the folder has neither. `tokenizer.json` wins when both are
/// there: it is the tokenizer itself, `vocab.txt` an export of it.
fn read_vocab(dir: &Path, config: &ModelConfig) -> Result<Option<Vocab>, PackError> {
    let json = dir.join("tokenizer.json");
    let path = if json.exists() { json } else { dir.join("vocab.txt") };
    if !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| PackError::Input(format!("{}: {reason}", path.display()));
    let vocab = if path.ends_with("tokenizer.json") {
        read_tokenizer_json(&path)?
    } else {
        let text = fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        Vocab::parse_vocab_txt(&text).map_err(bad)?
    };
    if vocab.tokens.len() > config.vocab_size as usize {
        return Err(bad(format!(
            "{} tokens, more than the model's vocab_size {}",
            vocab.tokens.len(),
            config.vocab_size
        )));
    }
    Ok(Some(vocab))
}

/// Packs the checkpoint in `dir` into the blob `out`.
pub fn pack(dir: &Path, out: &Path, options: &PackOptions) -> Result<PackSummary, PackError> {
    let start = Instant::now();
    let ckpt = Checkpoint::scan(dir)?;
    let config_path = dir.join("config.json");
    let (mut config, tied) = if config_path.exists() {
        let loaded = read_config_json(&config_path)?;
        (loaded.config, loaded.tie_word_embeddings)
    } else {
        (ckpt.infer_config()?, false)
    };
    // generation_config.json's eos ids are the ones generation stops at (chat models
    // list their end-of-turn token there).
    if let Some(ids) = read_generation_eos(dir)? {
        config.eos_token_ids = ids;
        config.validate().map_err(|e| {
            PackError::Input(format!("{}: {e}", dir.join("generation_config.json").display()))
        })?;
    }
    let sources = plan_sources(&ckpt, &config, tied, options)?;
    let vocab = read_vocab(dir, &config)?;
    let chat = read_chat_info(dir)?;

    let mut specs: Vec<TensorSpec> = sources.iter().map(|s| s.spec.clone()).collect();
    let packed_vocab = vocab.as_ref().map(|v| v.to_packed());
    if let Some(p) = &packed_vocab {
        specs.extend(p.tensor_specs());
    }
    let producer = format!("olmoc {}", env!("CARGO_PKG_VERSION"));
    let plan = BlobPlan::new(&producer, config.clone(), vocab.as_ref().map(Vocab::info), &specs)
        .map_err(PackError::Format)?
        .with_chat(chat);
    let total_bytes = plan.data_offset + plan.data_len;

    let mut output = Output::create(out)?;
    let write_err = |e: std::io::Error| PackError::Output(format!("{}: {e}", out.display()));
    let mut writer = ChunkWriter::new(output.file());
    let mut values: Vec<f32> = Vec::new();
    // Input errors found while streaming are kept here; the io::Error only stops the writer.
    let mut input_error: Option<PackError> = None;
    let mut progress = Progress::new(options.progress, specs.len(), plan.data_len);
    let result = plan.write(&mut writer, |entry, sink| {
        let written = (|| {
            if let Some(source) = sources.iter().find(|s| s.spec.name == entry.name) {
                values.clear();
                for part in &source.parts {
                    if let Err(e) = part.read_f32_into(&mut values) {
                        input_error = Some(e);
                        return Err(std::io::Error::other("input error"));
                    }
                }
                match source.role {
                    TensorRole::Matrix => {
                        let (rows, cols) = (source.spec.shape[0] as usize, source.spec.shape[1] as usize);
                        write_matrix(&values, rows, cols, source.spec.dtype, source.spec.layout, sink)
                    }
                    _ => write_f32s(&values, sink),
                }
            } else {
                packed_vocab
                    .as_ref()
                    .and_then(|p| p.write_tensor(&entry.name, sink))
                    .expect("every tensor but the vocabulary's has a source")
            }
        })();
        if written.is_ok() {
            progress.advance(entry.byte_len);
        }
        written
    });
    progress.finish();
    if let Some(e) = input_error {
        return Err(e);
    }
    result.map_err(write_err)?;
    writer.into_inner().map_err(write_err)?;
    output.finish()?;
    Ok(PackSummary {
        tensors: specs.len(),
        bytes: total_bytes,
        dtype: options.dtype,
        seconds: start.elapsed().as_secs_f64(),
        config,
        vocab_tokens: vocab.map(|v| v.tokens.len() as u32),
    })
}
