//! `olmoc inspect` and `olmoc verify`: read a blob back.

use std::fmt::Write as _;

use olmo_format::{Blob, DType, Layout};

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
        "vocab_size {}  max_positions {}  rope_theta {}  rms_norm_eps {:e}",
        c.vocab_size, c.max_position_embeddings, c.rope_theta, c.rms_norm_eps
    );
    let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    let _ = writeln!(
        s,
        "bos {}  eos {}  pad {}",
        id(c.bos_token_id),
        id(c.eos_token_id),
        id(c.pad_token_id)
    );
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
