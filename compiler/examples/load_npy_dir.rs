//! The load a per-tensor `.npy` checkpoint costs without a blob: read every file into an
//! owned `Vec<f32>` (as an engine that loads `.npy` files at start-up does), optionally
//! followed by the first token, for comparison with `olmort` mapping a packed blob.
//!
//! ```text
//! cargo run --release -p olmoc --example load_npy_dir -- WEIGHTS_DIR [--bulk] [--first-token TOKENS.bin]
//! ```
//!
//! Prints one `key=value` line on stdout (milliseconds and bytes) for
//! `tools/bench_startup.py`:
//!
//! - `load_ms`: reading and decoding every `.npy` into `Vec<f32>`, element by element
//!   with npyz's reader, or with `--bulk` one `read_exact` per file then a decode pass;
//! - with `--first-token`: `assemble_ms` (the owned tensors copied into the fused, blob
//!   layout the kernels read, each source freed once copied, so the peak stays about one
//!   model), `step_ms` (one forward pass for the prompt's first token), and `total_ms`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use olmo_format::writer::{BlobPlan, TensorSpec};
use olmo_format::{Blob, DType, LayerNames, ModelConfig, EMBED_TOKENS, LM_HEAD};
use olmoc::hf_config::read_config_json;

type Tensors = HashMap<String, Vec<f32>>;

/// The data of a little-endian f32 `.npy` in one `read_exact`, then decoded: the fastest
/// way to owned `Vec<f32>` without `unsafe`.
fn read_bulk<R: Read>(mut reader: R) -> std::io::Result<Vec<f32>> {
    let header = npyz::NpyHeader::from_reader(&mut reader)?;
    if header.dtype() != npyz::DType::Plain("<f4".parse().unwrap()) {
        return Err(std::io::Error::other("--bulk reads little-endian f32 files only"));
    }
    let mut raw = vec![0u8; header.len() as usize * 4];
    reader.read_exact(&mut raw)?;
    Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

fn load_dir(dir: &Path, bulk: bool) -> Result<(Tensors, u64), String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    paths.sort();
    let mut tensors = HashMap::new();
    let mut bytes = 0u64;
    for path in paths {
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let reader = BufReader::with_capacity(1 << 20, file);
        let values: Vec<f32> = if bulk {
            read_bulk(reader)
        } else {
            npyz::NpyFile::new(reader).and_then(|npy| npy.into_vec())
        }
        .map_err(|e| format!("{}: {e}", path.display()))?;
        bytes += values.len() as u64 * 4;
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        tensors.insert(name, values);
    }
    Ok((tensors, bytes))
}

/// The checkpoint tensors stacked by rows to make blob tensor `name`.
fn parts(name: &str, tie: bool) -> Vec<String> {
    if let Some(layer) = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()) {
        let n = LayerNames::new(layer.parse().unwrap());
        let p = format!("model.layers.{layer}");
        if name == n.qkv_proj {
            return ["q_proj", "k_proj", "v_proj"]
                .map(|x| format!("{p}.self_attn.{x}.weight"))
                .to_vec();
        }
        if name == n.gate_up_proj {
            return ["gate_proj", "up_proj"].map(|x| format!("{p}.mlp.{x}.weight")).to_vec();
        }
    }
    if name == LM_HEAD && tie {
        return vec![EMBED_TOKENS.to_string()];
    }
    vec![name.to_string()]
}

/// Little-endian bytes, converted a block at a time (no whole-tensor temporary).
fn write_le(values: &[f32], sink: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 18);
    for chunk in values.chunks(1 << 16) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        sink.write_all(&buf)?;
    }
    Ok(())
}

/// Copies the owned tensors into an in-memory f32 blob, freeing each source once used.
fn assemble(mut tensors: Tensors, config: &ModelConfig, tie: bool) -> Result<Vec<u8>, String> {
    let list = config.model_tensors();
    let specs: Vec<TensorSpec> = list
        .iter()
        .map(|(name, _, shape)| TensorSpec::plain(name.clone(), DType::F32, shape.clone()))
        .collect();
    let plan = BlobPlan::new("load_npy_dir", config.clone(), None, &specs).map_err(|e| e.to_string())?;
    let mut out = Cursor::new(Vec::with_capacity((plan.data_offset + plan.data_len) as usize));
    // How many blob tensors still need each source (lm_head and the embedding may share one).
    let mut remaining: HashMap<String, usize> = HashMap::new();
    for (name, _, _) in &list {
        for part in parts(name, tie) {
            *remaining.entry(part).or_insert(0) += 1;
        }
    }
    plan.write(&mut out, |entry, sink| {
        for part in parts(&entry.name, tie) {
            let values = tensors
                .get(&part)
                .ok_or_else(|| std::io::Error::other(format!("{part}.npy is missing")))?;
            write_le(values, sink)?;
            let left = remaining.get_mut(&part).unwrap();
            *left -= 1;
            if *left == 0 {
                tensors.remove(&part);
            }
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut tokens, mut bulk) = (None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--first-token" => tokens = args.next().map(PathBuf::from),
            "--bulk" => bulk = true,
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => dir = None,
        }
    }
    let Some(dir) = dir else {
        return Err("usage: load_npy_dir WEIGHTS_DIR [--bulk] [--first-token TOKENS.bin]".into());
    };
    let started = Instant::now();
    let (tensors, bytes) = load_dir(&dir, bulk)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut line = format!("tensors={} bytes={bytes} load_ms={load_ms:.3}", tensors.len());
    if let Some(tokens) = tokens {
        let raw = std::fs::read(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
        let first = u32::from_le_bytes(raw.get(..4).ok_or("empty prompt")?.try_into().unwrap());
        let loaded = read_config_json(&dir.join("config.json")).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let blob_bytes = assemble(tensors, &loaded.config, loaded.tie_word_embeddings)?;
        let assemble_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let blob = Blob::parse(&blob_bytes).map_err(|e| e.to_string())?;
        let model = olmort::Model::new(&blob).map_err(|e| e.to_string())?;
        let mut state = olmort::RunState::new(&model, 1).map_err(|e| e.to_string())?;
        let logits = olmort::forward(&model, &mut state, first, 0);
        let top = olmort::model::ops::top_k::<1>(logits)[0].0;
        let step_ms = t.elapsed().as_secs_f64() * 1e3;
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        line += &format!(
            " assemble_ms={assemble_ms:.3} step_ms={step_ms:.3} total_ms={total_ms:.3} argmax={top}"
        );
    }
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load_npy_dir: {e}");
            ExitCode::FAILURE
        }
    }
}
