//! What `olmoc pack` makes of its inputs: config inference, tied embeddings, f16/f64
//! arrays, vocabularies and fused tensors.

use std::path::{Path, PathBuf};

use olmo_format::mapped::MappedFile;
use olmo_format::{Blob, DType};
use olmoc::{pack, PackOptions};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("olmoc-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a C-order `.npy` with the given numpy type string (`<f4`, `<f2`, `<f8`).
fn write_npy(path: &Path, shape: &[usize], values: &[f32], descr: &str) {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + dict.len() + 1;
    let padding = unpadded.div_ceil(64) * 64 - unpadded;
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&((dict.len() + padding + 1) as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', padding));
    bytes.push(b'\n');
    for &v in values {
        match descr {
            "<f4" => bytes.extend_from_slice(&v.to_le_bytes()),
            "<f8" => bytes.extend_from_slice(&(v as f64).to_le_bytes()),
            "<f2" => bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            other => panic!("{other}"),
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A one-layer checkpoint with head size 128 (so its config can be inferred), values
/// `seed + index / 1024` so every tensor is recognisable. Returns the tensors written.
fn write_checkpoint(dir: &Path, descr: &str, with_lm_head: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (vocab, d, q, kv, f) = (5, 128, 256, 128, 8);
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    if with_lm_head {
        tensors.push(("lm_head.weight".to_string(), vec![vocab, d]));
    }
    let p = "model.layers.0";
    for (name, shape) in [
        ("self_attn.q_proj.weight", vec![q, d]),
        ("self_attn.k_proj.weight", vec![kv, d]),
        ("self_attn.v_proj.weight", vec![kv, d]),
        ("self_attn.o_proj.weight", vec![d, q]),
        ("self_attn.q_norm.weight", vec![q]),
        ("self_attn.k_norm.weight", vec![kv]),
        ("mlp.gate_proj.weight", vec![f, d]),
        ("mlp.up_proj.weight", vec![f, d]),
        ("mlp.down_proj.weight", vec![d, f]),
        ("post_attention_layernorm.weight", vec![d]),
        ("post_feedforward_layernorm.weight", vec![d]),
    ] {
        tensors.push((format!("{p}.{name}"), shape));
    }
    tensors
        .into_iter()
        .enumerate()
        .map(|(seed, (name, shape))| {
            let n: usize = shape.iter().product();
            // Multiples of 1/64 below 64: exact in f16, f32 and f64.
            let values: Vec<f32> = (0..n).map(|i| seed as f32 + (i % 1024) as f32 / 64.0).collect();
            write_npy(&dir.join(format!("{name}.npy")), &shape, &values, descr);
            (name, shape, values)
        })
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn config_is_inferred_from_shapes_and_tensors_are_fused() {
    for descr in ["<f4", "<f2", "<f8"] {
        let dir = scratch(&format!("infer{}", &descr[1..]));
        let written = write_checkpoint(&dir, descr, true);
        let out = dir.join("model.bin");
        let summary = pack(&dir, &out, &PackOptions::default()).unwrap();
        // embedding, 8 per layer, final norm, lm_head
        assert_eq!(summary.tensors, 11);
        let map = MappedFile::open(&out).unwrap();
        let blob = Blob::parse(map.bytes()).unwrap();
        let c = &blob.manifest.config;
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.vocab_size),
            (128, 2, 1, 128, 8, 5)
        );
        assert_eq!((c.rope_full_attention.theta, c.rms_norm_eps, c.max_position_embeddings), (500000.0, 1e-6, 4096));
        assert!(blob.manifest.vocab.is_none());
        let get = |name: &str| written.iter().find(|t| t.0 == name).unwrap().2.clone();
        let qkv = f32s(blob.tensor("model.layers.0.self_attn.qkv_proj.weight").unwrap().bytes);
        let mut expected = get("model.layers.0.self_attn.q_proj.weight");
        expected.extend(get("model.layers.0.self_attn.k_proj.weight"));
        expected.extend(get("model.layers.0.self_attn.v_proj.weight"));
        assert_eq!(qkv, expected, "{descr}");
        let gate_up = f32s(blob.tensor("model.layers.0.mlp.gate_up_proj.weight").unwrap().bytes);
        let mut expected = get("model.layers.0.mlp.gate_proj.weight");
        expected.extend(get("model.layers.0.mlp.up_proj.weight"));
        assert_eq!(gate_up, expected, "{descr}");
        assert_eq!(f32s(blob.tensor("model.norm.weight").unwrap().bytes), get("model.norm.weight"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn tied_embeddings_fill_a_missing_lm_head_and_vocab_is_packed() {
    let dir = scratch("tied");
    let written = write_checkpoint(&dir, "<f4", false);
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128,
            "intermediate_size": 8, "vocab_size": 5, "max_position_embeddings": 32,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "eos_token_id": 4, "pad_token_id": [3], "bos_token_id": null}"#,
    )
    .unwrap();
    std::fs::write(dir.join("vocab.txt"), "0\ta\n1\tĠb\n2\tĊ\n3\t<|pad|>\n").unwrap();
    std::fs::write(dir.join("model.safetensors"), b"ignored").unwrap();
    let out = dir.join("model.bin");
    pack(&dir, &out, &PackOptions { dtype: DType::F32, ..Default::default() }).unwrap();
    let map = MappedFile::open(&out).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let c = &blob.manifest.config;
    assert_eq!((c.rope_full_attention.theta, c.rms_norm_eps, c.max_position_embeddings), (10000.0, 1e-5, 32));
    assert_eq!((c.eos_token_ids.clone(), c.pad_token_id, c.bos_token_id), (vec![4], Some(3), None));
    let embed = written.iter().find(|t| t.0 == "model.embed_tokens.weight").unwrap();
    assert_eq!(f32s(blob.tensor("lm_head.weight").unwrap().bytes), embed.2);
    let vocab = blob.vocab().unwrap().unwrap();
    assert_eq!(vocab.len(), 4);
    assert_eq!(vocab.token(1), Some(&b" b"[..]));
    assert_eq!(vocab.token(2), Some(&b"\n"[..]));
    assert!(vocab.is_special(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uninferable_head_size_asks_for_a_config() {
    let dir = scratch("noinfer");
    let shape = [4usize, 36];
    write_npy(&dir.join("model.embed_tokens.weight.npy"), &shape, &[0.0; 144], "<f4");
    write_npy(&dir.join("model.layers.0.self_attn.q_proj.weight.npy"), &[36, 36], &[0.0; 1296], "<f4");
    write_npy(&dir.join("model.layers.0.self_attn.k_proj.weight.npy"), &[12, 36], &[0.0; 432], "<f4");
    write_npy(&dir.join("model.layers.0.mlp.gate_proj.weight.npy"), &[8, 36], &[0.0; 288], "<f4");
    let err = pack(&dir, &dir.join("out.bin"), &PackOptions::default()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(!dir.join("out.bin").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Instruct models stop on several tokens: config.json's list, or generation_config.json's
/// (what transformers' generate stops on) where there is one.
#[test]
fn every_eos_id_is_kept() {
    let dir = scratch("eos");
    write_checkpoint(&dir, "<f4", true);
    let config = r#"{"model_type": "olmo3", "hidden_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 128, "intermediate_size": 8, "vocab_size": 5,
        "max_position_embeddings": 32, "eos_token_id": [4, 2], "sliding_window": 2}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let out = dir.join("model.bin");
    let eos = |out: &Path| {
        let map = MappedFile::open(out).unwrap();
        let c = Blob::parse(map.bytes()).unwrap().manifest.config.clone();
        (c.eos_token_ids, c.sliding_window)
    };
    pack(&dir, &out, &PackOptions::default()).unwrap();
    // One layer: Olmo3Config's default pattern makes it sliding.
    assert_eq!(eos(&out), (vec![4, 2], Some(2)));
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [3, 4, 1], "do_sample": true}"#).unwrap();
    pack(&dir, &out, &PackOptions::default()).unwrap();
    assert_eq!(eos(&out).0, vec![3, 4, 1]);
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 9}"#).unwrap();
    let err = pack(&dir, &out, &PackOptions::default()).unwrap_err().to_string();
    assert!(err.contains("generation_config.json") && err.contains("eos_token_id"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
