//! Small synthetic blobs, built in memory with [`BlobPlan`]: for tests, fuzzing seeds
//! and examples. Their weights are deterministic but meaningless.

use crate::vocab::Vocab;
use crate::writer::{BlobPlan, TensorSpec};
use crate::{
    AttentionType, DType, Header, Manifest, ModelConfig, Rope, RopeScaling, DATA_ALIGN, HEADER_LEN,
};

/// A two-layer grouped-query config (6 heads over 2 kv heads, head_dim 6), 97 tokens.
pub fn small_config() -> ModelConfig {
    ModelConfig {
        architecture: ModelConfig::OLMO2.into(),
        hidden_size: 36,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: 6,
        intermediate_size: 92,
        vocab_size: 97,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-6,
        layer_types: vec![AttentionType::Full; 2],
        sliding_window: None,
        rope_full_attention: Rope::default_with_theta(10000.0),
        rope_sliding_attention: None,
        bos_token_id: None,
        eos_token_ids: vec![96],
        pad_token_id: Some(1),
    }
}

/// [`small_config`] as an OLMo-3: four layers, the first three sliding over 5
/// positions, the last full with YaRN.
pub fn small_olmo3_config() -> ModelConfig {
    let mut c = small_config();
    c.architecture = ModelConfig::OLMO3.into();
    c.num_hidden_layers = 4;
    c.layer_types = vec![AttentionType::Sliding, AttentionType::Sliding, AttentionType::Sliding, AttentionType::Full];
    c.sliding_window = Some(5);
    c.rope_full_attention = Rope {
        theta: 10000.0,
        scaling: RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 16,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        },
    };
    c.rope_sliding_attention = Some(Rope::default_with_theta(10000.0));
    c.eos_token_ids = vec![96, 95];
    c
}

/// A vocabulary of `n` tokens: `t0`, `t1`, ..., the last one special.
pub fn small_vocab(n: u32) -> Vocab {
    let mut tokens: Vec<Vec<u8>> = (0..n).map(|i| format!("t{i}").into_bytes()).collect();
    if let Some(last) = tokens.last_mut() {
        *last = b"<|endoftext|>".to_vec();
    }
    Vocab {
        tokens,
        special_ids: n.checked_sub(1).into_iter().collect(),
    }
}

/// The plan of a blob for `config` with matrices stored as `dtype` (norms are f32),
/// optionally with `vocab`, in the order `olmoc pack` writes.
pub fn plan(config: &ModelConfig, dtype: DType, vocab: Option<&Vocab>) -> BlobPlan {
    let mut specs: Vec<TensorSpec> = config
        .model_tensors()
        .into_iter()
        .map(|(name, role, shape)| TensorSpec::model_tensor(name, role, shape, dtype))
        .collect();
    if let Some(v) = vocab {
        specs.extend(v.to_packed().tensor_specs());
    }
    BlobPlan::new("sample", config.clone(), vocab.map(Vocab::info), &specs)
        .expect("a sample config has representable sizes")
}

/// The bytes of a complete blob for `config`.
pub fn blob(config: &ModelConfig, dtype: DType, vocab: Option<&Vocab>) -> Vec<u8> {
    let packed = vocab.map(Vocab::to_packed);
    let mut out = std::io::Cursor::new(Vec::new());
    plan(config, dtype, vocab)
        .write(&mut out, |entry, sink| {
            if let Some(written) = packed.as_ref().and_then(|p| p.write_tensor(&entry.name, sink)) {
                return written;
            }
            // Small values whose bit patterns are valid in every float type; the q8_0
            // scales come out as 0x3c00 (f16 1.0) and the quants as small integers.
            let pattern: Vec<u8> = (0..entry.byte_len)
                .map(|i| match DType::from_code(entry.dtype) {
                    Some(DType::Q8_0) => {
                        let quant_len = entry.byte_len / 34 * 32;
                        if i < quant_len {
                            (i % 7) as u8
                        } else if i % 2 == 0 {
                            0x00
                        } else {
                            0x3c
                        }
                    }
                    Some(DType::F32) => [0x00, 0x00, 0x80, 0x3f][(i % 4) as usize],
                    _ => [0x00, 0x3c][(i % 2) as usize],
                })
                .collect();
            sink.write_all(&pattern)
        })
        .expect("writing into memory cannot fail");
    out.into_inner()
}

/// The small sample blob: [`small_config`], f32 matrices, a vocabulary of 90 tokens.
pub fn small_blob() -> Vec<u8> {
    blob(&small_config(), DType::F32, Some(&small_vocab(90)))
}

/// A valid blob's header, decoded manifest and data region, to mutate and [`assemble`].
pub fn split(bytes: &[u8]) -> (Header, Manifest, Vec<u8>) {
    let h = Header::parse(&bytes[..HEADER_LEN.min(bytes.len())], bytes.len() as u64)
        .expect("split needs a valid header");
    let m = Manifest::decode(&bytes[HEADER_LEN..][..h.manifest_len as usize])
        .expect("split needs a valid manifest");
    (h, m, bytes[h.data_offset as usize..].to_vec())
}

/// Writes a blob from a (possibly mutated) header, manifest and data region, with
/// lengths and both checksums made consistent, so that whatever is wrong with it is
/// what the mutation did. The data region moves to the next page if the manifest grew
/// into it.
pub fn assemble(h: Header, m: &Manifest, data: &[u8]) -> Vec<u8> {
    assemble_raw(h, &m.encode(), data)
}

/// Like [`assemble`] with raw manifest bytes (which need not decode).
pub fn assemble_raw(mut h: Header, manifest: &[u8], data: &[u8]) -> Vec<u8> {
    h.manifest_offset = HEADER_LEN as u64;
    h.manifest_len = manifest.len() as u64;
    h.manifest_crc32 = crc32fast::hash(manifest);
    let min_data = (HEADER_LEN + manifest.len()) as u64;
    if h.data_offset < min_data {
        h.data_offset = min_data.div_ceil(DATA_ALIGN) * DATA_ALIGN;
    }
    h.data_len = data.len() as u64;
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(manifest);
    out.resize(h.data_offset as usize, 0);
    out.extend_from_slice(data);
    out
}

/// Bytes held in a buffer aligned to 64, like a memory map's (a `Vec<u8>` only promises
/// 1), so that typed views of a valid blob built in memory succeed.
#[derive(Clone)]
pub struct Aligned {
    words: Vec<[u64; 8]>,
    len: usize,
}

impl Aligned {
    pub fn new(bytes: &[u8]) -> Aligned {
        let mut a = Aligned {
            words: vec![[0u64; 8]; bytes.len().div_ceil(64)],
            len: bytes.len(),
        };
        a.bytes_mut().copy_from_slice(bytes);
        a
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns `words.len() * 64 >= len` initialised bytes; u8 has no
        // alignment or validity requirements; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the exclusive borrow of `self` makes it unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}
