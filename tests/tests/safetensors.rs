//! Packing straight from a Hugging Face snapshot: `model.safetensors` (single or sharded
//! with `model.safetensors.index.json`) in f32, f16 or bf16, and `tokenizer.json`.

use std::collections::BTreeMap;
use std::path::Path;

use olmo_e2e::{describe, fixtures, run, Scratch};

fn pack(dir: &Path, out: &Path) -> Vec<u8> {
    let result = run("olmoc", &["pack", dir.to_str().unwrap(), out.to_str().unwrap()], &[]);
    assert!(result.status.success(), "olmoc pack {}: {}", dir.display(), describe(&result));
    std::fs::read(out).unwrap()
}

fn refused(dir: &Path, out: &Path) -> String {
    let result = run("olmoc", &["pack", dir.to_str().unwrap(), out.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(!result.status.success(), "olmoc pack {} should fail", dir.display());
    assert_eq!(stderr.lines().count(), 1, "{}", describe(&result));
    assert!(stderr.starts_with("olmoc: ") && !stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "a failed pack left {}", out.display());
    stderr
}

/// A tensor as a safetensors file holds it.
#[derive(Clone)]
struct Raw {
    dtype: &'static str,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Reads a `.safetensors` file (the fixture's, trusted) into its tensors.
fn read_safetensors(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(name, v)| {
            let dtype = match v["dtype"].as_str().unwrap() {
                "F32" => "F32",
                other => panic!("fixture dtype {other}"),
            };
            let shape: Vec<u64> = serde_json::from_value(v["shape"].clone()).unwrap();
            let [a, b]: [usize; 2] = serde_json::from_value(v["data_offsets"].clone()).unwrap();
            (name, Raw { dtype, shape, data: data[a..b].to_vec() })
        })
        .collect()
}

/// Writes tensors as `save_pretrained` does: header padded with spaces to 8 bytes, data
/// in header order.
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Raw>) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, t) in tensors {
        let start = data.len();
        data.extend_from_slice(&t.data);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

fn copy_configs(to: &Path) {
    for name in ["config.json", "generation_config.json"] {
        std::fs::copy(fixtures().join("gqa-safetensors").join(name), to.join(name)).unwrap();
    }
}

fn f32s(raw: &Raw) -> impl Iterator<Item = f32> + '_ {
    raw.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))
}

#[test]
fn a_safetensors_snapshot_packs_as_its_npy_twin() {
    let scratch = Scratch::new("st-twin");
    let from_npy = pack(&fixtures().join("gqa"), &scratch.path("npy.bin"));
    let from_st = pack(&fixtures().join("gqa-safetensors"), &scratch.path("st.bin"));
    assert!(from_npy == from_st, "the blobs differ");
}

#[test]
fn sharded_snapshots_pack_identically() {
    let scratch = Scratch::new("st-shards");
    let single = pack(&fixtures().join("gqa-safetensors"), &scratch.path("single.bin"));
    let tensors = read_safetensors(&fixtures().join("gqa-safetensors/model.safetensors"));
    let dir = scratch.path("sharded");
    std::fs::create_dir_all(&dir).unwrap();
    copy_configs(&dir);
    // Layers 0-1 and the embedding in the first shard, the rest in the second.
    let mut shards: [BTreeMap<String, Raw>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in &tensors {
        let first = name.starts_with("model.embed") || name.starts_with("model.layers.0.") || name.starts_with("model.layers.1.");
        let i = if first { 0 } else { 1 };
        shards[i].insert(name.clone(), t.clone());
        weight_map.insert(name.clone(), format!("model-0000{}-of-00002.safetensors", i + 1).into());
    }
    assert!(!shards[0].is_empty() && !shards[1].is_empty());
    for (i, shard) in shards.iter().enumerate() {
        write_safetensors(&dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)), shard);
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(pack(&dir, &scratch.path("sharded.bin")) == single, "sharded blob differs");

    // A shard the index names but that is missing, and a name leaving the folder.
    std::fs::rename(dir.join("model-00002-of-00002.safetensors"), scratch.path("away.safetensors")).unwrap();
    assert!(refused(&dir, &scratch.path("x.bin")).contains("model-00002-of-00002.safetensors"));
    std::fs::rename(scratch.path("away.safetensors"), dir.join("model-00002-of-00002.safetensors")).unwrap();
    let mut bad_map = weight_map.clone();
    bad_map.insert("model.norm.weight".into(), "../away.safetensors".into());
    let index = serde_json::json!({"weight_map": bad_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(refused(&dir, &scratch.path("x.bin")).contains("not a file name"));
}

/// The gqa snapshot with every tensor rounded to `dtype`, stored as `dtype` and, for
/// comparison, as f32 holding the rounded values.
fn rounded_pair(scratch: &Scratch, dtype: &'static str) -> (Vec<u8>, Vec<u8>) {
    let tensors = read_safetensors(&fixtures().join("gqa-safetensors/model.safetensors"));
    let round = |x: f32| -> (u16, f32) {
        match dtype {
            "F16" => {
                let h = half::f16::from_f32(x);
                (h.to_bits(), h.to_f32())
            }
            _ => {
                let b = half::bf16::from_f32(x);
                (b.to_bits(), b.to_f32())
            }
        }
    };
    let mut narrow = BTreeMap::new();
    let mut wide = BTreeMap::new();
    for (name, t) in &tensors {
        let (bits, values): (Vec<u16>, Vec<f32>) = f32s(t).map(round).unzip();
        narrow.insert(name.clone(), Raw { dtype, shape: t.shape.clone(), data: bits.iter().flat_map(|b| b.to_le_bytes()).collect() });
        wide.insert(name.clone(), Raw { dtype: "F32", shape: t.shape.clone(), data: values.iter().flat_map(|v| v.to_le_bytes()).collect() });
    }
    let mut blobs = Vec::new();
    for (tag, tensors) in [("narrow", &narrow), ("wide", &wide)] {
        let dir = scratch.path(&format!("{dtype}-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        copy_configs(&dir);
        write_safetensors(&dir.join("model.safetensors"), tensors);
        blobs.push(pack(&dir, &scratch.path(&format!("{dtype}-{tag}.bin"))));
    }
    (blobs.remove(0), blobs.remove(0))
}

#[test]
fn f16_and_bf16_tensors_are_widened_exactly() {
    let scratch = Scratch::new("st-dtypes");
    for dtype in ["F16", "BF16"] {
        let (narrow, wide) = rounded_pair(&scratch, dtype);
        assert!(narrow == wide, "{dtype}: the blob differs from the f32 one with the same values");
    }
}

#[test]
fn malformed_safetensors_are_refused_in_one_line() {
    let scratch = Scratch::new("st-bad");
    let good = std::fs::read(fixtures().join("gqa-safetensors/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap().to_string();
    let case = |tag: &str, bytes: Vec<u8>| {
        let dir = scratch.path(tag);
        std::fs::create_dir_all(&dir).unwrap();
        copy_configs(&dir);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        refused(&dir, &scratch.path(&format!("{tag}.bin")))
    };
    let with_header = |h: &str, data: &[u8]| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    };
    assert!(case("short", b"abc".to_vec()).contains("8-byte"));
    assert!(case("huge-header", u64::MAX.to_le_bytes().to_vec()).contains("header"));
    assert!(case("truncated-header", good[..8 + n / 2].to_vec()).contains("truncated"));
    assert!(case("truncated-data", good[..good.len() - 4].to_vec()).contains("outside"));
    assert!(case("not-json", with_header("{not json", &[])).contains("JSON"));
    let one = |entry: &str, data_len: usize| with_header(&format!("{{\"model.norm.weight\": {entry}}}"), &vec![0u8; data_len]);
    assert!(case("wrong-size", one(r#"{"dtype":"F32","shape":[36],"data_offsets":[0,100]}"#, 100)).contains("needs 144"));
    assert!(case("backwards", one(r#"{"dtype":"F32","shape":[0],"data_offsets":[8,0]}"#, 8)).contains("outside"));
    assert!(case("unused", one(r#"{"dtype":"F32","shape":[1],"data_offsets":[4,8]}"#, 8)).contains("unused"));
    assert!(case("trailing", one(r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#, 8)).contains("after the last"));
    assert!(case("overflow", one(r#"{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}"#, 4)).contains("overflows"));
    let overlap = with_header(
        r#"{"model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"model.x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0u8; 8],
    );
    assert!(case("overlap", overlap).contains("overlaps"));
    // A real snapshot with one tensor in a dtype the packer does not read.
    let i64_header = header.replacen("\"F32\"", "\"I32\"", 1);
    assert!(case("int", with_header(&i64_header, &good[8 + n..])).contains("not supported"));
}

/// `vocab.txt` as the token spellings (escapes undone) in id order.
fn vocab_txt_spellings(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (_, t) = line.split_once('\t').unwrap();
            let mut out = String::new();
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    out.push(match chars.next().unwrap() {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        other => other,
                    });
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

#[test]
fn tokenizer_json_packs_the_same_vocabulary_as_vocab_txt() {
    let scratch = Scratch::new("st-tokenizer");
    let tiny = fixtures().join("tiny");
    let from_txt = pack(&tiny, &scratch.path("txt.bin"));
    // A tokenizer.json in Hugging Face's layout: byte-level spellings in model.vocab,
    // the added tokens (ids from 100256) verbatim in added_tokens.
    let spellings = vocab_txt_spellings(&tiny.join("vocab.txt"));
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, s) in spellings.iter().enumerate() {
        if id < 100256 {
            vocab.insert(s.clone(), id.into());
        } else {
            added.push(serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}));
        }
    }
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence"},
        "model": {"type": "BPE", "dropout": null, "vocab": vocab, "merges": []}
    });
    let dir = scratch.path("tiny-json");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "vocab.txt" {
            std::os::unix::fs::symlink(&path, dir.join(name)).unwrap();
        }
    }
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let from_json = pack(&dir, &scratch.path("json.bin"));
    assert!(from_json == from_txt, "tokenizer.json and vocab.txt give different blobs");

    // With both files, tokenizer.json is the one packed.
    std::fs::write(dir.join("tokenizer.json"), r#"{"model": {"vocab": {"a": 0, "b": 1}}}"#).unwrap();
    std::os::unix::fs::symlink(tiny.join("vocab.txt"), dir.join("vocab.txt")).unwrap();
    let out = run("olmoc", &["pack", dir.to_str().unwrap(), scratch.path("both.bin").to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vocab 2 tokens"), "{}", describe(&out));
    std::fs::write(dir.join("tokenizer.json"), r#"{"model": {"vocab": {"a": 0, "b": 2}}}"#).unwrap();
    assert!(refused(&dir, &scratch.path("gap.bin")).contains("tokenizer.json: token ids"));
}

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let scratch = Scratch::new("st-quiet");
    let out = run(
        "olmoc",
        &["pack", fixtures().join("gqa-safetensors").to_str().unwrap(), scratch.path("q.bin").to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only the summary: tensors, bytes, dtype and time.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains("MiB/s"), "{stderr}");
    assert!(stderr.starts_with("packed 27 tensors") && stderr.contains(" as f32: ") && stderr.contains(" s -> "), "{stderr}");
}
