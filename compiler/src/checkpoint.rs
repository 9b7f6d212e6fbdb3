//! The checkpoint tensors a pack reads, from either source it accepts: a folder of
//! per-tensor `.npy` files, or a Hugging Face snapshot's `model.safetensors` (or its
//! shards, listed in `model.safetensors.index.json`). Both give every tensor as a shape
//! and a way to read its values as f32, which is all the planning and writing need.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use olmo_format::{ModelConfig, EMBED_TOKENS};

use crate::hf_config::{infer_config, InferredShapes};
use crate::npy::NpyTensor;
use crate::safetensors::{open_snapshot, StTensor};
use crate::PackError;

/// One checkpoint tensor, its header checked, its data not yet read.
pub enum Tensor {
    Npy(NpyTensor),
    Safetensors(StTensor),
}

impl Tensor {
    pub fn shape(&self) -> &[u64] {
        match self {
            Tensor::Npy(t) => &t.shape,
            Tensor::Safetensors(t) => &t.shape,
        }
    }

    /// Reads the values, converted to f32, appending to `out`.
    pub fn read_f32_into(&self, out: &mut Vec<f32>) -> Result<(), PackError> {
        match self {
            Tensor::Npy(t) => t.read_f32_into(out),
            Tensor::Safetensors(t) => t.read_f32_into(out),
        }
    }
}

/// Where the tensors are stored.
enum Store {
    /// `NAME.npy` files by tensor name.
    Npy(BTreeMap<String, PathBuf>),
    /// Tensors of mapped `.safetensors` files by name, and the file that lists them
    /// (`model.safetensors` or the index), named when one is missing.
    Safetensors {
        tensors: BTreeMap<String, StTensor>,
        listing: PathBuf,
    },
}

/// A checkpoint folder's parameters by name.
pub struct Checkpoint {
    dir: PathBuf,
    store: Store,
}

/// Only checkpoint parameters count; other arrays (references, activations) and the
/// non-persistent rotary buffers some exporters save are not the model's.
fn is_parameter(name: &str) -> bool {
    (name.starts_with("model.") || name.starts_with("lm_head.")) && !name.ends_with("rotary_emb.inv_freq")
}

impl Checkpoint {
    /// Finds the tensors in `dir`: its `NAME.npy` files if it has any (other files are
    /// ignored, as they always were), otherwise the safetensors snapshot
    /// (`model.safetensors.index.json` and its shards, or `model.safetensors`).
    pub fn scan(dir: &Path) -> Result<Checkpoint, PackError> {
        let in_dir = |e: std::io::Error| PackError::Input(format!("{}: {e}", dir.display()));
        let meta = fs::metadata(dir).map_err(in_dir)?;
        if !meta.is_dir() {
            return Err(PackError::Input(format!("{}: not a folder", dir.display())));
        }
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(in_dir)? {
            let path = entry.map_err(in_dir)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(tensor) = name.strip_suffix(".npy") else {
                continue;
            };
            if is_parameter(tensor) {
                files.insert(tensor.to_string(), path.clone());
            }
        }
        let snapshot = if files.is_empty() { open_snapshot(dir)? } else { None };
        let store = match snapshot {
            Some(tensors) => {
                let index = dir.join("model.safetensors.index.json");
                let listing = if index.exists() { index } else { dir.join("model.safetensors") };
                let tensors: BTreeMap<String, StTensor> =
                    tensors.into_iter().filter(|(name, _)| is_parameter(name)).collect();
                if tensors.is_empty() {
                    return Err(PackError::Input(format!(
                        "{}: no model tensors in it",
                        listing.display()
                    )));
                }
                Store::Safetensors { tensors, listing }
            }
            None if files.is_empty() => {
                return Err(PackError::Input(format!(
                    "{}: no .npy tensor files and no model.safetensors in this folder",
                    dir.display()
                )))
            }
            None => Store::Npy(files),
        };
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            store,
        })
    }

    /// The parameter names, sorted.
    pub fn names(&self) -> Vec<&str> {
        match &self.store {
            Store::Npy(files) => files.keys().map(String::as_str).collect(),
            Store::Safetensors { tensors, .. } => tensors.keys().map(String::as_str).collect(),
        }
    }

    pub fn contains(&self, tensor: &str) -> bool {
        match &self.store {
            Store::Npy(files) => files.contains_key(tensor),
            Store::Safetensors { tensors, .. } => tensors.contains_key(tensor),
        }
    }

    /// The file a message about `tensor` names: its own file, or where it should be.
    pub fn location(&self, tensor: &str) -> PathBuf {
        match &self.store {
            Store::Npy(files) => files
                .get(tensor)
                .cloned()
                .unwrap_or_else(|| self.dir.join(format!("{tensor}.npy"))),
            Store::Safetensors { tensors, listing } => tensors
                .get(tensor)
                .map_or_else(|| listing.clone(), |t| t.path().to_path_buf()),
        }
    }

    /// `tensor`'s header, checked (but not its shape).
    fn header(&self, tensor: &str) -> Result<Tensor, PackError> {
        let missing = || {
            PackError::Input(format!(
                "{}: missing tensor {tensor}",
                self.location(tensor).display()
            ))
        };
        match &self.store {
            Store::Npy(files) => Ok(Tensor::Npy(NpyTensor::open(files.get(tensor).ok_or_else(missing)?)?)),
            Store::Safetensors { tensors, .. } => {
                let t = tensors.get(tensor).ok_or_else(missing)?;
                t.check_element(tensor)?;
                Ok(Tensor::Safetensors(t.clone()))
            }
        }
    }

    /// Opens `tensor` and checks its shape.
    pub fn open(&self, tensor: &str, shape: &[u64]) -> Result<Tensor, PackError> {
        let t = self.header(tensor)?;
        if t.shape() != shape {
            return Err(PackError::Input(format!(
                "{}: {}shape {:?}, but the config needs {:?}",
                self.location(tensor).display(),
                match self.store {
                    Store::Npy(_) => String::new(),
                    Store::Safetensors { .. } => format!("tensor {tensor} has "),
                },
                t.shape(),
                shape
            )));
        }
        Ok(t)
    }

    /// The number of decoder layers the checkpoint holds (one past the highest index).
    pub fn layer_count(&self) -> u32 {
        self.names()
            .iter()
            .filter_map(|k| k.strip_prefix("model.layers.")?.split('.').next()?.parse::<u32>().ok())
            .map(|l| l + 1)
            .max()
            .unwrap_or(0)
    }

    /// A config from the shapes alone (no `config.json`).
    pub fn infer_config(&self) -> Result<ModelConfig, PackError> {
        let matrix = |name: &str| -> Result<(u64, u64), PackError> {
            match self.header(name)?.shape()[..] {
                [rows, cols] => Ok((rows, cols)),
                ref other => Err(PackError::Input(format!(
                    "{}: shape {other:?} is not a matrix",
                    self.location(name).display()
                ))),
            }
        };
        let (vocab, hidden) = matrix(EMBED_TOKENS)?;
        let (q_rows, _) = matrix("model.layers.0.self_attn.q_proj.weight")?;
        let (k_rows, _) = matrix("model.layers.0.self_attn.k_proj.weight")?;
        let (ffn, _) = matrix("model.layers.0.mlp.gate_proj.weight")?;
        infer_config(&InferredShapes {
            vocab,
            hidden,
            q_rows,
            k_rows,
            ffn,
            layers: self.layer_count(),
        })
    }
}
