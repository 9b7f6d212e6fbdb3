//! `olmort` on bad input: a corrupt blob or unusable prompt gets exactly one line on
//! stderr naming the file and what is wrong, and a non-zero exit; never a panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use olmo_format::sample;

const OLMORT: &str = env!("CARGO_BIN_EXE_olmort");

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("olmort-bad-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The sample blob (vocab_size 97, max_position_embeddings 64) written to `dir`.
fn sample_blob(dir: &Path) -> (PathBuf, Vec<u8>) {
    let bytes = sample::small_blob();
    let path = dir.join("model.bin");
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn tokens_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn ids(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

fn olmort(args: &[&str]) -> Output {
    Command::new(OLMORT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts a clean failure with one line on stderr mentioning every needle.
fn fails_with(o: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded; stderr: {stderr}");
    assert!(o.status.code().is_some_and(|c| c != 0), "not a clean exit: {:?}: {stderr}", o.status);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{stderr:?} does not mention {n:?}");
    }
    stderr.trim_end().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_sample_blob_runs() {
    let dir = scratch("ok");
    let (model, _) = sample_blob(&dir);
    let prompt = tokens_file(&dir, "p.bin", &ids(&[3, 5]));
    let o = olmort(&[s(&model), s(&prompt), "--steps", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = olmort(&[s(&model), "--steps", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn corrupt_blobs() {
    let dir = scratch("blobs");
    let (_, good) = sample_blob(&dir);
    let data_offset = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
    let version = |v: u32| {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        b
    };
    let (newer, older) = (version(olmo_format::FORMAT_VERSION + 1), version(1));
    let mut flipped = good.clone();
    flipped[200] ^= 0x10;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "the file is empty"),
        ("cut in the header", good[..40].to_vec(), "truncated: the header"),
        ("cut in the manifest", good[..500].to_vec(), "truncated: the manifest"),
        ("cut in the data", good[..data_offset + 1000].to_vec(), "truncated: the data region"),
        ("cut one byte short", good[..good.len() - 1].to_vec(), "truncated"),
        ("not a blob", b"\x93NUMPY\x01\x00 an npy file".to_vec(), "not an olmo blob"),
        ("newer", newer, "needs a newer olmort"),
        // Version 1 is the format before OLMo-3 and chat templates.
        ("version 1", older, "format version 1, this olmort reads version 2: repack it with this olmoc"),
        ("flipped manifest byte", flipped, "manifest checksum mismatch"),
    ];
    for (what, bytes, says) in cases {
        let path = dir.join(format!("{}.bin", what.replace(' ', "-")));
        fs::write(&path, &bytes).unwrap();
        for steps in ["0", "3"] {
            let line = fails_with(&olmort(&[s(&path), "--steps", steps]), &[says]);
            assert!(line.contains(s(&path)), "{what}: {line:?} does not name the file");
        }
    }
}

#[test]
fn a_tensor_error_names_the_tensor() {
    let dir = scratch("tensor");
    let (_, good) = sample_blob(&dir);
    let (h, mut m, data) = sample::split(&good);
    let name = "model.layers.1.mlp.down_proj.weight";
    m.tensors.iter_mut().find(|t| t.name == name).unwrap().byte_len += 4;
    let path = tokens_file(&dir, "bad.bin", &sample::assemble(h, &m, &data));
    fails_with(&olmort(&[s(&path), "--steps", "0"]), &[name, "byte length"]);
}

#[test]
fn model_path_that_is_not_a_file() {
    let dir = scratch("paths");
    fails_with(&olmort(&[s(&dir.join("missing.bin")), "--steps", "0"]), &["missing.bin", "No such file"]);
    fails_with(&olmort(&[s(&dir), "--steps", "0"]), &[s(&dir), "is a folder"]);
    // A pipe would block a plain open until a writer came; it is refused at once.
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().map(|st| st.success()).unwrap_or(false);
    if made {
        fails_with(&olmort(&[s(&fifo), "--steps", "0"]), &["fifo", "not a regular file"]);
    }
    if Path::new("/dev/zero").exists() {
        fails_with(&olmort(&["/dev/zero", "--steps", "0"]), &["not a regular file"]);
    }
}

#[test]
fn unusable_prompts() {
    let dir = scratch("tokens");
    let (model, _) = sample_blob(&dir);
    let missing = dir.join("missing.tokens.bin");
    let odd = tokens_file(&dir, "odd.bin", &[1, 0, 0, 0, 2]);
    let empty = tokens_file(&dir, "empty.bin", &[]);
    let outside = tokens_file(&dir, "outside.bin", &ids(&[3, 97]));
    let huge = tokens_file(&dir, "huge.bin", &ids(&[u32::MAX]));
    let ok = tokens_file(&dir, "ok.bin", &ids(&[3]));
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![s(&missing)], vec!["missing.tokens.bin", "No such file"]),
        (vec![s(&odd)], vec!["odd.bin", "5 bytes", "4-byte"]),
        (vec![s(&empty)], vec!["the prompt has no tokens"]),
        (vec![s(&outside)], vec!["token id 97", "position 1", "vocab_size 97"]),
        (vec![s(&huge)], vec!["token id 4294967295", "outside the vocabulary"]),
        (vec![s(&ok), "--steps", "65"], vec!["65 steps", "maximum sequence length of 64"]),
        // Refused before anything is allocated for it.
        (vec![s(&ok), "--steps", "1000000000000"], vec!["1000000000000 steps"]),
    ];
    for (args, needles) in cases {
        let mut all = vec![s(&model)];
        all.extend(args.iter().copied());
        fails_with(&olmort(&all), &needles);
    }
    // An empty standard input is an empty prompt too.
    fails_with(&olmort(&[s(&model), "-", "--steps", "2"]), &["the prompt has no tokens"]);
}

#[test]
fn kv_cache_option() {
    let dir = scratch("kv");
    let (model, _) = sample_blob(&dir);
    let prompt = tokens_file(&dir, "p.bin", &ids(&[3, 5]));
    for kv in ["f32", "f16"] {
        let o = olmort(&[s(&model), s(&prompt), "--steps", "4", "--kv-cache", kv]);
        assert!(o.status.success(), "--kv-cache {kv}: {}", String::from_utf8_lossy(&o.stderr));
    }
    fails_with(&olmort(&[s(&model), s(&prompt), "--kv-cache", "bf16"]), &["--kv-cache", "\"bf16\" is not f32 or f16"]);
}

/// More threads than CPUs is refused at once with one line, instead of starting them
/// (100000 spinning threads took minutes to fail); the machine's own count runs.
#[test]
fn thread_counts() {
    let dir = scratch("threads");
    let (model, _) = sample_blob(&dir);
    let prompt = tokens_file(&dir, "p.bin", &ids(&[3, 5]));
    let started = std::time::Instant::now();
    let line = fails_with(&olmort(&[s(&model), s(&prompt), "--threads", "100000"]), &["--threads 100000", "CPUs"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{line}");
    let cpus = std::thread::available_parallelism().unwrap().get().to_string();
    for n in ["1", "0", &cpus] {
        let o = olmort(&[s(&model), s(&prompt), "--steps", "2", "--threads", n]);
        assert!(o.status.success(), "--threads {n}: {}", String::from_utf8_lossy(&o.stderr));
    }
}
