//! Reading `.safetensors` files, as Hugging Face's `save_pretrained` writes them: an
//! 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape and
//! byte range; an optional `__metadata__` of strings), then the data. Files are mapped
//! (`olmo_format::mapped::MappedFile`), never read whole, and every header field is
//! checked before a byte of data is used: the byte ranges must lie inside the data,
//! match their shapes, and tile the data without gaps or overlaps, as the format
//! requires.
//!
//! Sharded checkpoints list their files in `model.safetensors.index.json`
//! (`weight_map`: tensor name -> shard file name).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use olmo_format::mapped::MappedFile;
use serde::Deserialize;

use crate::PackError;

/// The header may not be larger than this (the format's own limit is 100 MB).
const MAX_HEADER_LEN: u64 = 100 << 20;
const MAX_DIMS: usize = 8;

/// Element types a weight may have; all are converted to f32 on reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StElement {
    F32,
    F16,
    BF16,
}

impl StElement {
    fn size(self) -> u64 {
        match self {
            StElement::F32 => 4,
            StElement::F16 | StElement::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StElement::F32 => "F32",
            StElement::F16 => "F16",
            StElement::BF16 => "BF16",
        }
    }
}

/// One tensor of a mapped `.safetensors` file.
#[derive(Clone)]
pub struct StTensor {
    pub file: Arc<StFile>,
    pub shape: Vec<u64>,
    /// None for a dtype other than F32/F16/BF16 (reported when the tensor is used).
    pub element: Result<StElement, String>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// A mapped `.safetensors` file.
pub struct StFile {
    pub path: PathBuf,
    map: MappedFile,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> PackError {
    PackError::Input(format!("{}: {reason}", path.display()))
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Maps `path` and checks its header; returns its tensors by name.
pub fn open_file(path: &Path) -> Result<BTreeMap<String, StTensor>, PackError> {
    let map = MappedFile::open(path).map_err(|e| bad(path, e))?;
    let bytes = map.bytes();
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(bad(path, "not a .safetensors file (shorter than its 8-byte header length)"));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN {
        return Err(bad(
            path,
            format!("not a .safetensors file (a header of {header_len} bytes; the limit is {MAX_HEADER_LEN})"),
        ));
    }
    if header_len > file_len - 8 {
        return Err(bad(
            path,
            format!("truncated: the header claims {header_len} bytes, the file has {} after the length", file_len - 8),
        ));
    }
    let data_start = 8 + header_len as usize;
    let header = &bytes[8..data_start];
    let header = std::str::from_utf8(header)
        .map_err(|_| bad(path, "not a .safetensors file (the header is not UTF-8 JSON)"))?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(header.trim_end())
        .map_err(|e| bad(path, format!("not a .safetensors file (header JSON: {e})")))?;
    let data_len = file_len - data_start as u64;
    let file = Arc::new(StFile {
        path: path.to_path_buf(),
        map,
    });
    let mut tensors = BTreeMap::new();
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let entry: RawEntry = serde_json::from_value(value)
            .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
        if entry.shape.len() > MAX_DIMS {
            return Err(bad(path, format!("tensor {name}: {} dimensions", entry.shape.len())));
        }
        let (element, size) = match entry.dtype.as_str() {
            "F32" => (Ok(StElement::F32), 4),
            "F16" => (Ok(StElement::F16), 2),
            "BF16" => (Ok(StElement::BF16), 2),
            other => {
                let size = match other {
                    "F64" | "I64" | "U64" => 8,
                    "I32" | "U32" => 4,
                    "I16" | "U16" => 2,
                    "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
                    _ => return Err(bad(path, format!("tensor {name}: unknown dtype {other:?}"))),
                };
                (Err(format!("dtype {other} is not supported (need F32, F16 or BF16)")), size)
            }
        };
        let [begin, end] = entry.data_offsets;
        let needed = entry
            .shape
            .iter()
            .try_fold(size as u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(path, format!("tensor {name}: shape {:?} overflows", entry.shape)))?;
        if begin > end || end > data_len {
            return Err(bad(
                path,
                format!("tensor {name}: byte range [{begin}, {end}) is outside the {data_len} data bytes"),
            ));
        }
        if end - begin != needed {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: {} bytes for shape {:?} of {} needs {needed}",
                    end - begin,
                    entry.shape,
                    entry.dtype
                ),
            ));
        }
        ranges.push((begin, end, name.clone()));
        tensors.insert(
            name,
            StTensor {
                file: file.clone(),
                shape: entry.shape,
                element,
                start: data_start + begin as usize,
                end: data_start + end as usize,
            },
        );
    }
    // The ranges tile the data: sorted, each starts where the previous ended.
    ranges.sort();
    let mut at = 0u64;
    for (begin, end, name) in &ranges {
        if *begin != at {
            return Err(bad(
                path,
                if *begin < at {
                    format!("tensor {name}: byte range [{begin}, {end}) overlaps another tensor")
                } else {
                    format!("tensor {name}: {} unused data bytes before it", begin - at)
                },
            ));
        }
        at = *end;
    }
    if at != data_len {
        return Err(bad(
            path,
            format!("{} data bytes after the last tensor belong to none", data_len - at),
        ));
    }
    Ok(tensors)
}

impl StTensor {
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the element type (an unsupported one is reported here, when the tensor is
    /// actually used).
    pub fn check_element(&self, name: &str) -> Result<StElement, PackError> {
        self.element
            .clone()
            .map_err(|e| bad(self.path(), format!("tensor {name}: {e}")))
    }

    /// Reads the data, converted to f32, appending to `out`.
    pub fn read_f32_into(&self, out: &mut Vec<f32>) -> Result<(), PackError> {
        let element = self
            .element
            .clone()
            .map_err(|e| bad(self.path(), e))?;
        let raw = &self.file.map.bytes()[self.start..self.end];
        debug_assert_eq!(raw.len() as u64, self.len() as u64 * element.size());
        out.reserve(self.len());
        match element {
            StElement::F32 => out.extend(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            StElement::F16 => out.extend(
                raw.chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            ),
            StElement::BF16 => out.extend(
                raw.chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            ),
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

/// The safetensors checkpoint in `dir`: `model.safetensors.index.json` and its shards
/// when there is an index, otherwise `model.safetensors`. None if neither exists.
pub fn open_snapshot(dir: &Path) -> Result<Option<BTreeMap<String, StTensor>>, PackError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| bad(&index_path, e))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| bad(&index_path, e))?;
        let mut shards: BTreeMap<&str, BTreeMap<String, StTensor>> = BTreeMap::new();
        for file in index.weight_map.values() {
            let plain = Path::new(file).file_name().is_some_and(|n| n == file.as_str());
            if !plain || file == ".." {
                return Err(bad(&index_path, format!("shard {file:?} is not a file name in this folder")));
            }
            if !shards.contains_key(file.as_str()) {
                shards.insert(file, open_file(&dir.join(file))?);
            }
        }
        let mut tensors = BTreeMap::new();
        for (shard, contents) in &shards {
            for (name, tensor) in contents {
                match index.weight_map.get(name) {
                    Some(listed) if listed == shard => {
                        tensors.insert(name.clone(), tensor.clone());
                    }
                    Some(_) => {} // also in the listed shard, which is the one used
                    None => {
                        return Err(bad(
                            &dir.join(shard),
                            format!("tensor {name} is not in {}", index_path.display()),
                        ))
                    }
                }
            }
        }
        let mut listed: Vec<&String> = index.weight_map.keys().collect();
        listed.sort();
        for name in listed {
            if !tensors.contains_key(name) {
                return Err(bad(
                    &dir.join(&index.weight_map[name]),
                    format!("tensor {name}, listed in model.safetensors.index.json, is not in this shard"),
                ));
            }
        }
        return Ok(Some(tensors));
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return open_file(&single).map(Some);
    }
    Ok(None)
}
