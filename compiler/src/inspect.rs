//! `olmoc inspect` and `olmoc verify`: read a blob back.

use std::fmt::Write as _;

use olmo_format::{AttentionType, Blob, ChatInfo, DType, Layout, ModelConfig, RopeScaling};

use crate::PackError;

/// A human-readable listing of the header, config and tensor table.
pub fn describe(blob: &Blob) -> String {
    let m = &blob.manifest;
    let c = &m.config;
    let h = &blob.header;
    let mut s = String::new();
    let _ = writeln!(s, "format version {} (written by {})", h.version, m.producer);
    let _ = writeln!(
        s,
        "manifest {} bytes at {}, data {} bytes at {}",
        h.manifest_len, h.manifest_offset, h.data_len, h.data_offset
    );
    let _ = writeln!(s, "architecture {}", c.architecture);
    let _ = writeln!(
        s,
        "hidden_size {}  layers {}  heads {}  kv_heads {}  head_dim {}  intermediate {}",
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size
    );
    let _ = writeln!(
        s,
        "vocab_size {}  max_positions {}  rms_norm_eps {:e}",
        c.vocab_size, c.max_position_embeddings, c.rms_norm_eps
    );
    describe_attention(&mut s, c);
    let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    let eos = match &c.eos_token_ids[..] {
        [] => "-".to_string(),
        ids => ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    };
    let _ = writeln!(s, "bos {}  eos {eos}  pad {}", id(c.bos_token_id), id(c.pad_token_id));
    describe_chat(&mut s, m.chat.as_ref());
    match &m.vocab {
        Some(v) => {
            let _ = writeln!(s, "vocabulary: {} tokens, {} special", v.n_tokens, v.special_ids.len());
        }
        None => {
            let _ = writeln!(s, "vocabulary: none (olmort prints token ids only)");
        }
    }
    // Bytes per dtype over the tensors, in table order of first appearance.
    let mut by_dtype: Vec<(u8, usize, u64)> = Vec::new();
    for t in &m.tensors {
        match by_dtype.iter_mut().find(|(d, _, _)| *d == t.dtype) {
            Some((_, n, bytes)) => (*n, *bytes) = (*n + 1, *bytes + t.byte_len),
            None => by_dtype.push((t.dtype, 1, t.byte_len)),
        }
    }
    let parts: Vec<String> = by_dtype
        .iter()
        .map(|&(d, n, bytes)| {
            let name = DType::from_code(d).map_or("?", DType::name);
            format!("{name} {n} ({:.1} MiB)", bytes as f64 / (1 << 20) as f64)
        })
        .collect();
    let _ = writeln!(s, "by dtype: {}", parts.join(", "));
    if m.tensors.iter().any(|t| Layout::from_code(t.layout) == Some(Layout::Q4Tiles)) {
        let _ = writeln!(
            s,
            "q4-tiles: {} rows x {} columns, {} bytes a tile (4.5 bits per weight)",
            olmo_format::q4::TILE_ROWS,
            olmo_format::q4::TILE_COLS,
            olmo_format::q4::TILE_BYTES
        );
    }
    let _ = writeln!(s, "{} tensors:", m.tensors.len());
    let _ = writeln!(
        s,
        "  {:<52} {:>5} {:>13} {:>18} {:>14} {:>12}  crc32",
        "name", "dtype", "layout", "shape", "offset", "bytes"
    );
    for t in &m.tensors {
        let dtype = DType::from_code(t.dtype).map_or("?", DType::name);
        let layout = Layout::from_code(t.layout).map_or("?", Layout::name);
        let _ = writeln!(
            s,
            "  {:<52} {:>5} {:>13} {:>18} {:>14} {:>12}  {:08x}",
            t.name,
            dtype,
            layout,
            format!("{:?}", t.shape),
            t.offset,
            t.byte_len,
            t.crc32
        );
    }
    s
}

/// Each layer type's layers, window and RoPE.
fn describe_attention(s: &mut String, c: &ModelConfig) {
    for t in [AttentionType::Full, AttentionType::Sliding] {
        let layers: Vec<String> = (0..c.layer_types.len()).filter(|&l| c.layer_types[l] == t).map(|l| l.to_string()).collect();
        if layers.is_empty() {
            continue;
        }
        let window = match t {
            AttentionType::Sliding => format!(", window {}", c.sliding_window.map_or("-".into(), |w| w.to_string())),
            AttentionType::Full => String::new(),
        };
        let rope = c.rope(t);
        let scaling = match rope.scaling {
            RopeScaling::Default => "default".to_string(),
            RopeScaling::Yarn { factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, truncate } => format!(
                "yarn factor {factor} original_max_positions {original_max_position_embeddings} attention_factor {attention_factor} beta_fast {beta_fast} beta_slow {beta_slow} truncate {truncate}"
            ),
        };
        let _ = writeln!(
            s,
            "{} layers [{}]{window}: rope_theta {} {scaling}",
            t.name(),
            layers.join(","),
            rope.theta
        );
    }
}

/// The packed chat templates (name and size) and special-token strings.
fn describe_chat(s: &mut String, chat: Option<&ChatInfo>) {
    let Some(chat) = chat else {
        let _ = writeln!(s, "chat template: none");
        return;
    };
    for t in &chat.templates {
        let _ = writeln!(s, "chat template {:?}: {} bytes", t.name, t.source.len());
    }
    for t in &chat.special_tokens {
        let _ = writeln!(s, "  {} = {:?}", t.name, t.content);
    }
}

/// Recomputes every tensor's CRC-32 and compares it with the manifest.
pub fn verify(blob: &Blob) -> Result<usize, PackError> {
    let data = blob.data();
    for t in &blob.manifest.tensors {
        // Blob::parse proved every range lies inside the data region.
        let bytes = &data[t.offset as usize..(t.offset + t.byte_len) as usize];
        let crc = crc32fast::hash(bytes);
        if crc != t.crc32 {
            return Err(PackError::Input(format!(
                "tensor {}: checksum {crc:08x} does not match the manifest's {:08x}: the tensor data is corrupt",
                t.name, t.crc32
            )));
        }
    }
    Ok(blob.manifest.tensors.len())
}
