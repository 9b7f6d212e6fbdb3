//! `olmoc` on bad input: every case exits non-zero with exactly one line on stderr that
//! names what is wrong and where, never panics, and never leaves a partial or temporary
//! file behind or changes an existing output.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OLMOC: &str = env!("CARGO_BIN_EXE_olmoc");

fn gqa_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gqa")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("olmoc-bad-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the gqa checkpoint (its parameters and config) in a fresh folder, and an
/// empty output folder beside it.
fn checkpoint(tag: &str) -> (PathBuf, PathBuf) {
    let root = scratch(tag);
    let weights = root.join("weights");
    let out = root.join("out");
    fs::create_dir_all(&weights).unwrap();
    fs::create_dir_all(&out).unwrap();
    for entry in fs::read_dir(gqa_fixture()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name == "config.json" || (name.ends_with(".npy") && !name.starts_with("reference")) {
            fs::copy(&path, weights.join(&name)).unwrap();
        }
    }
    (weights, out)
}

fn olmoc(args: &[&Path]) -> Output {
    Command::new(OLMOC).args(args).output().unwrap()
}

fn pack(weights: &Path, out: &Path) -> Output {
    olmoc(&[Path::new("pack"), weights, out])
}

/// Asserts a failure with one line on stderr; returns that line.
fn one_line_failure(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded; stderr: {stderr}");
    assert_eq!(o.status.code(), Some(1), "not a clean exit: {:?}; stderr: {stderr}", o.status);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("olmoc: "), "{stderr}");
    stderr.trim_end().to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `pack` on `weights` expecting a one-line failure mentioning every `needle`;
/// the output folder must stay empty.
fn pack_fails(weights: &Path, out_dir: &Path, needles: &[&str]) -> String {
    let line = one_line_failure(&pack(weights, &out_dir.join("model.bin")));
    for n in needles {
        assert!(line.contains(n), "{line:?} does not mention {n:?}");
    }
    assert_eq!(files_in(out_dir), Vec::<String>::new(), "left behind after: {line}");
    line
}

/// Writes an `.npy` file: `descr` is numpy's type string, `data` the raw bytes.
fn write_npy(path: &Path, descr: &str, fortran: bool, shape: &[usize], data: &[u8]) {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let order = if fortran { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape_text}, }}");
    let mut bytes = npy_preamble(dict.len());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
}

fn npy_preamble(dict_len: usize) -> Vec<u8> {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&((dict_len + 1) as u16).to_le_bytes());
    bytes
}

const UP1: &str = "model.layers.1.mlp.up_proj.weight";

#[test]
fn missing_folder() {
    let root = scratch("nofolder");
    pack_fails(&root.join("does-not-exist"), &root, &["does-not-exist", "No such file"]);
    fs::write(root.join("a-file"), b"x").unwrap();
    let out = root.join("out");
    fs::create_dir(&out).unwrap();
    pack_fails(&root.join("a-file"), &out, &["a-file", "not a folder"]);
    let empty = root.join("empty");
    fs::create_dir(&empty).unwrap();
    pack_fails(&empty, &out, &["no .npy tensor files"]);
}

#[test]
fn missing_tensor() {
    let (w, out) = checkpoint("missing");
    fs::remove_file(w.join(format!("{UP1}.npy"))).unwrap();
    pack_fails(&w, &out, &["missing tensor", UP1]);
}

#[test]
fn extra_layer() {
    let (w, out) = checkpoint("extra");
    let from = w.join("model.layers.0.post_attention_layernorm.weight.npy");
    fs::copy(from, w.join("model.layers.3.post_attention_layernorm.weight.npy")).unwrap();
    pack_fails(&w, &out, &["unexpected tensor", "model.layers.3.", "3 layers", "the files have 4"]);
}

#[test]
fn wrong_shape() {
    let (w, out) = checkpoint("shape");
    write_npy(&w.join(format!("{UP1}.npy")), "<f4", false, &[92, 35], &vec![0; 92 * 35 * 4]);
    pack_fails(&w, &out, &[UP1, "shape [92, 35]", "[92, 36]"]);
}

#[test]
fn wrong_dtype() {
    let (w, out) = checkpoint("dtype");
    for descr in ["<i4", "|u1", "<c8", "|b1"] {
        let size = match descr { "<c8" => 8, "<i4" => 4, _ => 1 };
        write_npy(&w.join(format!("{UP1}.npy")), descr, false, &[92, 36], &vec![0; 92 * 36 * size]);
        pack_fails(&w, &out, &[UP1, "is not supported", "need f16, f32 or f64"]);
    }
}

#[test]
fn fortran_order() {
    let (w, out) = checkpoint("fortran");
    write_npy(&w.join(format!("{UP1}.npy")), "<f4", true, &[92, 36], &vec![0; 92 * 36 * 4]);
    pack_fails(&w, &out, &[UP1, "Fortran-order"]);
}

#[test]
fn truncated_and_garbage_npy() {
    let (w, out) = checkpoint("garbage");
    let path = w.join(format!("{UP1}.npy"));
    let good = fs::read(&path).unwrap();
    let header_end = good.len() - 92 * 36 * 4;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        ("inside the magic", good[..4].to_vec(), "ends inside its header"),
        ("inside the header", good[..header_end / 2].to_vec(), "header"),
        ("inside the data", good[..good.len() - 5].to_vec(), "truncated"),
        ("too long", [good.as_slice(), &[0; 4]].concat(), "too long"),
        ("garbage", (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(), "not a .npy file"),
        ("a text file", b"model weights go here\n".to_vec(), "not a .npy file"),
        ("unknown version", [b"\x93NUMPY\x09\x00".as_slice(), &good[8..]].concat(), "unknown format version 9"),
        ("header not a dict", {
            let text = b"[1, 2, 3]\n";
            [npy_preamble(text.len() - 1).as_slice(), text].concat()
        }, "not a valid .npy file"),
        ("header not utf-8", {
            let text = b"{'descr': '\xff\xfe'}\n";
            [npy_preamble(text.len() - 1).as_slice(), text].concat()
        }, "not a valid .npy file"),
    ];
    for (what, bytes, says) in cases {
        fs::write(&path, &bytes).unwrap();
        let line = pack_fails(&w, &out, &[UP1]);
        assert!(line.contains(says), "{what}: {line:?} does not say {says:?}");
    }
}

/// A 12-byte file whose version 2 header claims 4 GiB, and headers nested thousands
/// deep, are refused before the parser sees them.
#[test]
fn hostile_npy_headers() {
    let (w, out) = checkpoint("hostile");
    let path = w.join(format!("{UP1}.npy"));
    let mut huge = b"\x93NUMPY\x02\x00".to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&path, &huge).unwrap();
    pack_fails(&w, &out, &[UP1, "claims 4294967295 bytes"]);

    let mut huge_but_present = b"\x93NUMPY\x02\x00".to_vec();
    huge_but_present.extend_from_slice(&(1u32 << 20).to_le_bytes());
    huge_but_present.resize(12 + (1 << 20), b' ');
    fs::write(&path, &huge_but_present).unwrap();
    pack_fails(&w, &out, &[UP1, "the limit is"]);

    let deep = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}92, 36{}, }}", "(".repeat(20000), ")".repeat(20000));
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&((deep.len() + 1) as u32).to_le_bytes());
    bytes.extend_from_slice(deep.as_bytes());
    bytes.push(b'\n');
    fs::write(&path, &bytes).unwrap();
    pack_fails(&w, &out, &[UP1, "nested too deep"]);

    // A shape whose size overflows is refused before anything is read or allocated.
    write_npy(&path, "<f4", false, &[usize::MAX / 2, 4], &[]);
    pack_fails(&w, &out, &[UP1, "overflows"]);
    write_npy(&path, "<f4", false, &[1 << 40, 1 << 10], &[]);
    pack_fails(&w, &out, &[UP1, "truncated"]);
}

#[test]
fn bad_config_json() {
    let (w, out) = checkpoint("config");
    let path = w.join("config.json");
    let good: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = good.clone();
        c[key] = value;
        serde_json::to_vec(&c).unwrap()
    };
    let without = |key: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(key);
        serde_json::to_vec(&c).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{ not json".to_vec(), "key must be a string"),
        (b"".to_vec(), "EOF"),
        (b"[1, 2]".to_vec(), "invalid type"),
        (without("hidden_size"), "missing field `hidden_size`"),
        (with("hidden_size", "36".into()), "invalid type"),
        (with("hidden_size", (-1).into()), "invalid value"),
        (with("vocab_size", (1u64 << 40).into()), "1099511627776"),
        (with("num_key_value_heads", 4.into()), "num_key_value_heads"),
        (with("num_attention_heads", 0.into()), "num_attention_heads"),
        (with("head_dim", 7.into()), "head_dim"),
        (with("num_hidden_layers", 0.into()), "num_hidden_layers"),
        (with("num_hidden_layers", 2.into()), "unexpected tensor"),
        (with("intermediate_size", 93.into()), "shape"),
        (with("max_position_embeddings", 0.into()), "max_position_embeddings"),
        (with("model_type", "llama".into()), "model_type"),
        (with("rms_norm_eps", (-1.0).into()), "rms_norm_eps"),
        (with("eos_token_id", 5000.into()), "eos_token_id"),
    ];
    for (bytes, says) in cases {
        fs::write(&path, &bytes).unwrap();
        let line = pack_fails(&w, &out, &[says]);
        if !says.contains("shape") && !says.contains("unexpected") {
            assert!(line.contains("config.json"), "{line:?} does not name config.json");
        }
    }
}

/// The gqa weights under an OLMo-3 config: each bad key is one line naming it.
#[test]
fn bad_olmo3_config_json() {
    let (w, out) = checkpoint("olmo3-config");
    let path = w.join("config.json");
    let mut good: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    // The hub's spelling: a top-level theta and rope_scaling, no rope_parameters.
    good.as_object_mut().unwrap().remove("rope_parameters");
    good["rope_theta"] = 10000.0.into();
    good["model_type"] = "olmo3".into();
    good["sliding_window"] = 4.into();
    good["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16});
    fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
    assert!(pack(&w, &out.join("model.bin")).status.success());
    fs::remove_file(out.join("model.bin")).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("layer_types", serde_json::json!(["sliding_attention", "full_attention"]), "layer_types has 2 entries for num_hidden_layers 3"),
        ("layer_types", serde_json::json!(["sliding_attention", "full_attention", "local"]), "layer_types[2]"),
        ("sliding_window", 0.into(), "sliding_window is 0"),
        ("rope_scaling", serde_json::json!({"rope_type": "su", "factor": 2.0}), "rope_scaling.rope_type \"su\" is not default or yarn"),
        ("rope_scaling", serde_json::json!({"rope_type": "yarn", "original_max_position_embeddings": 16}), "rope_scaling.factor is missing"),
        ("rope_parameters", serde_json::json!({"full_attention": {"rope_type": "yarn", "factor": 2.0, "beta_fast": "fast"}}), "beta_fast"),
    ];
    for (key, value, says) in cases {
        let mut c = good.clone();
        c[key] = value;
        if key == "rope_parameters" {
            c.as_object_mut().unwrap().remove("rope_scaling");
        }
        fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
        let line = pack_fails(&w, &out, &[says, "config.json"]);
        assert!(line.contains(key), "{line:?} does not name {key}");
    }
}

#[test]
fn output_that_cannot_be_written() {
    let (w, out) = checkpoint("unwritable");
    let line = one_line_failure(&pack(&w, &out.join("no-such-folder/model.bin")));
    assert!(line.contains("cannot write") && line.contains("No such file"), "{line}");
    fs::write(out.join("a-file"), b"x").unwrap();
    let line = one_line_failure(&pack(&w, &out.join("a-file/model.bin")));
    assert!(line.contains("cannot write") && line.contains("Not a directory"), "{line}");
    let line = one_line_failure(&pack(&w, &out));
    assert!(line.contains("is a folder"), "{line}");
    assert_eq!(files_in(&out), vec!["a-file".to_string()]);
}

/// `/dev/full` is written directly (a device is not replaced by renaming a file over
/// it), so the pack fails as on a full disk, and nothing appears in /dev.
#[test]
fn full_device() {
    let dev_full = Path::new("/dev/full");
    if !dev_full.exists() {
        eprintln!("no /dev/full here; skipped");
        return;
    }
    let (w, _) = checkpoint("devfull");
    let before = files_in(Path::new("/dev"));
    let line = one_line_failure(&pack(&w, dev_full));
    assert!(line.contains("/dev/full") && line.contains("No space left on device"), "{line}");
    assert_eq!(files_in(Path::new("/dev")), before);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata(dev_full).unwrap().file_type().is_char_device());
    // /dev/null takes the whole blob: a way to check a checkpoint without writing it.
    let o = pack(&w, Path::new("/dev/null"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A disk that fills up while a regular file is written, made with a file size limit
/// (`ulimit -f`, with SIGXFSZ ignored so the write fails with EFBIG instead): the
/// existing output stays as it was and the temporary file is gone.
#[test]
fn disk_full_while_writing() {
    let (w, out) = checkpoint("efbig");
    let target = out.join("model.bin");
    fs::write(&target, b"the previous blob").unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" pack \"$1\" \"$2\"")
        .arg(OLMOC)
        .arg(&w)
        .arg(&target)
        .output()
        .unwrap();
    let line = one_line_failure(&o);
    assert!(line.contains("cannot write") && line.contains("File too large"), "{line}");
    assert_eq!(fs::read(&target).unwrap(), b"the previous blob");
    assert_eq!(files_in(&out), vec!["model.bin".to_string()]);
}

/// `inspect` and `verify` on files that are not valid blobs.
#[test]
fn inspect_and_verify_refuse_corrupt_blobs() {
    let (w, out) = checkpoint("verify");
    let blob = out.join("model.bin");
    assert!(pack(&w, &blob).status.success());
    let good = fs::read(&blob).unwrap();
    let bad = out.join("bad.bin");
    let data_offset = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "the file is empty"),
        (good[..good.len() / 2].to_vec(), "truncated"),
        (good[..30].to_vec(), "truncated"),
        (b"GGUF garbage".to_vec(), "bad magic"),
        ({ let mut b = good.clone(); b[100] ^= 1; b }, "manifest checksum"),
        ({ let mut b = good.clone(); b[9] = 1; b }, "newer olmort"),
    ];
    for (bytes, says) in cases {
        fs::write(&bad, &bytes).unwrap();
        for cmd in ["inspect", "verify"] {
            let line = one_line_failure(&olmoc(&[Path::new(cmd), &bad]));
            assert!(line.contains("bad.bin") && line.contains(says), "{cmd}: {line}");
        }
    }
    // A flipped byte in the tensor data passes the open-time checks; verify finds it.
    let mut flipped = good.clone();
    flipped[data_offset + 12345] ^= 0x40;
    fs::write(&bad, &flipped).unwrap();
    assert!(olmoc(&[Path::new("inspect"), &bad]).status.success());
    let line = one_line_failure(&olmoc(&[Path::new("verify"), &bad]));
    assert!(line.contains("checksum") && line.contains("tensor "), "{line}");
    let line = one_line_failure(&olmoc(&[Path::new("verify"), &out.join("missing.bin")]));
    assert!(line.contains("missing.bin") && line.contains("No such file"), "{line}");
}

/// A checkpoint big enough (about 48 MB) that packing takes a while.
fn large_checkpoint(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let (d, layers, heads, hd, f, vocab) = (256usize, 8, 4, 64, 1024, 8192);
    let config = serde_json::json!({
        "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2",
        "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": hd, "intermediate_size": f,
        "vocab_size": vocab, "max_position_embeddings": 128, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
    });
    fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, d]),
        ("model.norm.weight".to_string(), vec![d]),
        ("lm_head.weight".to_string(), vec![vocab, d]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", vec![heads * hd, d]),
            ("self_attn.k_proj", vec![heads * hd, d]),
            ("self_attn.v_proj", vec![heads * hd, d]),
            ("self_attn.o_proj", vec![d, heads * hd]),
            ("self_attn.q_norm", vec![heads * hd]),
            ("self_attn.k_norm", vec![heads * hd]),
            ("mlp.gate_proj", vec![f, d]),
            ("mlp.up_proj", vec![f, d]),
            ("mlp.down_proj", vec![d, f]),
            ("post_attention_layernorm", vec![d]),
            ("post_feedforward_layernorm", vec![d]),
        ] {
            tensors.push((format!("{p}.{name}.weight"), shape));
        }
    }
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| ((i % 97) as f32 * 0.01).to_le_bytes()).collect();
        write_npy(&dir.join(format!("{name}.npy")), "<f4", false, &shape, &data);
    }
}

/// Starts packing, waits until the output is being written, sends `signal`, and checks
/// that the previous output is intact and nothing else is left in its folder.
#[cfg(target_os = "linux")]
fn interrupt_with(signal: i32, tag: &str, named_temp: bool) {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    let root = scratch(tag);
    let weights = root.join("weights");
    large_checkpoint(&weights);
    let out = root.join("out");
    fs::create_dir_all(&out).unwrap();
    let target = out.join("model.bin");
    fs::write(&target, b"the previous blob").unwrap();

    let mut command = Command::new(OLMOC);
    if named_temp {
        command.env(olmoc::output::NAMED_TEMP_VAR, "1");
    }
    // olmoc leaves a signal its parent ignores ignored (as under nohup, which ignores
    // SIGHUP), so the child starts with the default action whatever ran the tests.
    // SAFETY: between fork and exec the closure only calls signal(2), which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            libc::signal(signal, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = command
        .arg("pack")
        .arg(&weights)
        .arg(&target)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the child has a file open in the output folder and has written to it.
    let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let started = Instant::now();
    let writing = loop {
        let open_in_out = fs::read_dir(&fds).into_iter().flatten().flatten().find_map(|fd| {
            let link = fs::read_link(fd.path()).ok()?;
            link.starts_with(&out).then(|| fd.path())
        });
        if let Some(fd) = open_in_out {
            if fs::metadata(&fd).map(|m| m.len() > 8 << 20).unwrap_or(false) {
                break true;
            }
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(writing, "the pack ended before it could be interrupted");
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(signal), "{status:?}");
    assert_eq!(fs::read(&target).unwrap(), b"the previous blob");
    assert_eq!(files_in(&out), vec!["model.bin".to_string()]);
    let _ = fs::remove_dir_all(&root);
}

/// With a named temporary file, the signal handler removes it.
#[cfg(target_os = "linux")]
#[test]
fn interrupted_by_sigint() {
    interrupt_with(libc::SIGINT, "sigint", true);
}

#[cfg(target_os = "linux")]
#[test]
fn interrupted_by_sigterm() {
    interrupt_with(libc::SIGTERM, "sigterm", true);
}

#[cfg(target_os = "linux")]
#[test]
fn interrupted_by_sighup() {
    interrupt_with(libc::SIGHUP, "sighup", true);
}

/// Even SIGKILL leaves nothing behind where the file system has O_TMPFILE.
#[cfg(target_os = "linux")]
#[test]
fn killed() {
    let probe = scratch("probe-tmpfile");
    let supported = olmoc::output::unnamed_temp_supported(&probe);
    let _ = fs::remove_dir_all(&probe);
    if !supported {
        eprintln!("no O_TMPFILE in {}: SIGKILL can leave a temporary file; skipped", probe.display());
        return;
    }
    interrupt_with(libc::SIGKILL, "sigkill", false);
    interrupt_with(libc::SIGINT, "sigint-unnamed", false);
}

#[test]
fn command_line_mistakes_are_one_line() {
    for args in [
        vec!["pack"],
        vec!["pack", "a", "b", "--dtype", "q4"],
        vec!["frobnicate"],
        vec!["inspect", "a", "b"],
    ] {
        let out = Command::new(OLMOC).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("olmoc: "), "{args:?}: {stderr}");
    }
}
