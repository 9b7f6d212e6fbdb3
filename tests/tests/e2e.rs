//! Pack each committed fixture with `olmoc`, run it with `olmort`, and compare every
//! step's logits with the ones transformers computed for the same weights.

use olmo_e2e::{argmax, describe, fixtures, read_npy_2d, reference, run, Scratch};

/// Kernel selections every check runs under: the default (SIMD where the CPU has it)
/// and the portable fallback.
const KERNEL_PATHS: [&str; 3] = ["auto", "avx2", "portable"];

fn pack(fixture: &str, scratch: &Scratch) -> String {
    let out = scratch.path(&format!("{fixture}.bin"));
    let dir = fixtures().join(fixture);
    let result = run("olmoc", &["pack", dir.to_str().unwrap(), out.to_str().unwrap()], &[]);
    assert!(result.status.success(), "olmoc pack {fixture}: {}", describe(&result));
    out.to_str().unwrap().to_string()
}

/// Runs the trace for the fixture's reference length and checks logits and argmax.
fn check_against_reference(fixture: &str) {
    let scratch = Scratch::new(fixture);
    let blob = pack(fixture, &scratch);
    let reference = reference(fixture);
    let prompt = fixtures().join(fixture).join("prompt.tokens.bin");
    let (ref_steps, vocab, expected) =
        read_npy_2d(&fixtures().join(fixture).join("reference_logits.npy"));
    assert_eq!(ref_steps, reference.steps);
    for kernels in KERNEL_PATHS {
        let dump = scratch.path(&format!("logits-{kernels}.npy"));
        let steps = reference.steps.to_string();
        let out = run(
            "olmort",
            &[&blob, prompt.to_str().unwrap(), "--steps", &steps, "--dump-logits", dump.to_str().unwrap()],
            &[("OLMORT_KERNELS", kernels)],
        );
        assert!(out.status.success(), "olmort {fixture} ({kernels}): {}", describe(&out));
        let (steps, cols, got) = read_npy_2d(&dump);
        assert_eq!((steps, cols), (ref_steps, vocab));
        let mut worst = 0f32;
        for step in 0..steps {
            let (g, e) = (&got[step * vocab..][..vocab], &expected[step * vocab..][..vocab]);
            let diff = g.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            assert_eq!(
                argmax(g) as u32,
                reference.argmax[step],
                "{fixture} ({kernels}): argmax differs at step {step}"
            );
        }
        assert!(worst <= 1e-4, "{fixture} ({kernels}): max |logit difference| {worst} > 1e-4");
        // The trace feeds the prompt, then its own argmax: the same tokens as the reference.
        let stdout = String::from_utf8(out.stdout).unwrap();
        let fed: Vec<u32> = stdout
            .lines()
            .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert_eq!(fed, reference.input_tokens, "{fixture} ({kernels}): tokens fed");
    }
}

#[test]
fn gqa_fixture_matches_transformers() {
    check_against_reference("gqa");
}

/// `wide`'s down_proj has 2100 input columns: more than one 2048-column panel.
#[test]
fn wide_fixture_matches_transformers() {
    check_against_reference("wide");
}

#[test]
fn tiny_fixture_matches_transformers() {
    check_against_reference("tiny");
}

/// The trained model: f16 safetensors with tied embeddings and a tokenizer.json.
#[test]
fn trained_fixture_matches_transformers() {
    check_against_reference("trained");
}

/// OLMo-2 with one kv head for five query heads and odd sizes, over 42 positions.
#[test]
fn olmo2_odd_fixture_matches_transformers() {
    check_against_reference("olmo2-odd");
}

/// OLMo-3 with a window of 3: the trace's first batch (the 9-token prompt) straddles
/// it, and the 44 positions run far past it; each layer type has its own rope_theta.
#[test]
fn olmo3_window_fixture_matches_transformers() {
    check_against_reference("olmo3-window");
}

/// OLMo-3 in the hub's config spelling, YaRN on the full layers (beyond their original
/// 20 positions), a window of 5, head_dim 16 with hidden 40.
#[test]
fn olmo3_yarn_fixture_matches_transformers() {
    check_against_reference("olmo3-yarn");
}

#[test]
fn trace_lines_have_the_seed_format_with_text() {
    let scratch = Scratch::new("trace");
    let blob = pack("tiny", &scratch);
    let reference = reference("tiny");
    let prompt = fixtures().join("tiny").join("prompt.tokens.bin");
    let out = run("olmort", &[&blob, prompt.to_str().unwrap(), "--steps", "6"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6);
    // "Four score and seven" = 28070 5573 323 8254.
    assert!(
        lines[0].starts_with("0: token 28070 (\"Four\") Top 5 next tokens: "),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("1: token 5573 (\" score\") Top 5 next tokens: "), "{}", lines[1]);
    assert!(lines[3].starts_with("3: token 8254 (\" seven\") Top 5 next tokens: "), "{}", lines[3]);
    for (step, line) in lines.iter().enumerate() {
        let (_, next) = line.split_once("Top 5 next tokens: ").unwrap();
        // Each entry is `ID ("text")`; the ids are the reference's top-5, best first.
        let ids: Vec<u32> = next
            .split(") ")
            .map(|entry| entry.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids, reference.top5[step], "step {step}: {line}");
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    for phase in ["load", "prompt", "generation"] {
        assert!(stderr.contains(phase), "timing summary lacks {phase}: {stderr}");
    }
}

#[test]
fn without_a_vocabulary_ids_are_printed_alone() {
    let scratch = Scratch::new("ids");
    let blob = pack("gqa", &scratch);
    let reference = reference("gqa");
    let prompt = fixtures().join("gqa").join("prompt.tokens.bin");
    let out = run("olmort", &[&blob, prompt.to_str().unwrap(), "--steps", "2"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let first = String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_string();
    let t = &reference.top5[0];
    let expected = format!(
        "0: token {} Top 5 next tokens: {} {} {} {} {}",
        reference.input_tokens[0], t[0], t[1], t[2], t[3], t[4]
    );
    assert_eq!(first, expected);
}

#[test]
fn prompt_is_read_from_stdin_when_absent_or_dash() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let scratch = Scratch::new("stdin");
    let blob = pack("gqa", &scratch);
    let prompt = std::fs::read(fixtures().join("gqa").join("prompt.tokens.bin")).unwrap();
    let from_file = run(
        "olmort",
        &[&blob, fixtures().join("gqa/prompt.tokens.bin").to_str().unwrap(), "--steps", "9"],
        &[],
    );
    for extra in [vec![], vec!["-"]] {
        let mut child = Command::new(olmo_e2e::bin("olmort"))
            .arg(&blob)
            .args(&extra)
            .args(["--steps", "9"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&prompt).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(out.stdout, from_file.stdout, "args {extra:?}");
    }
}

#[test]
fn steps_zero_only_opens_and_validates() {
    let scratch = Scratch::new("steps0");
    let blob = pack("tiny", &scratch);
    // No tokens are read: stdin is not consulted, the prompt may even be absent.
    let out = run("olmort", &[&blob, "--steps", "0"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn inspect_and_verify_read_the_blob_back() {
    let scratch = Scratch::new("inspect");
    let blob = pack("gqa", &scratch);
    let out = run("olmoc", &["inspect", &blob], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("heads 6  kv_heads 2  head_dim 6"), "{text}");
    assert!(text.contains("model.layers.2.self_attn.qkv_proj.weight"), "{text}");
    assert!(text.contains("[60, 36]"), "fused qkv shape (6 + 2 * 2) * 6 = 60 rows: {text}");
    let out = run("olmoc", &["verify", &blob], &[]);
    assert!(out.status.success(), "{}", describe(&out));

    // A flipped byte in the last tensor is invisible to open but caught by verify.
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let out = run("olmoc", &["verify", &blob], &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("lm_head.weight") && stderr.contains("checksum"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn inspect_shows_layer_types_windows_and_ropes() {
    let scratch = Scratch::new("inspect-olmo3");
    let blob = pack("olmo3-yarn", &scratch);
    let out = run("olmoc", &["inspect", &blob], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture Olmo3ForCausalLM"), "{text}");
    assert!(text.contains("full_attention layers [0,3]: rope_theta 1000 yarn factor 4 original_max_positions 20"), "{text}");
    // Olmo3Config gives the sliding layers its default theta when config.json has only
    // the top-level one.
    assert!(text.contains("sliding_attention layers [1,2], window 5: rope_theta 500000 default"), "{text}");
    assert!(text.contains("bos -  eos 330  pad 329"), "{text}");
}

/// An f32 matrix wider than 2048 columns is stored as column panels; a narrow one stays
/// row-major.
#[test]
fn wide_down_proj_is_stored_in_column_panels() {
    let scratch = Scratch::new("wide-inspect");
    let blob = pack("wide", &scratch);
    let out = run("olmoc", &["inspect", &blob], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    // A table row is `name dtype layout [shape] offset bytes crc32`.
    let row = |name: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    let down = row("model.layers.0.mlp.down_proj.weight");
    assert_eq!(down[1], "f32", "{down:?}");
    assert!(down.join(" ").contains("[40, 2100]"), "{down:?}");
    let o = row("model.layers.0.self_attn.o_proj.weight");
    assert_eq!(o[1], "f32", "{o:?}");
    assert!(o.join(" ").contains("[40, 40]"), "{o:?}");
    assert_eq!(o[2], "row-major", "o_proj has 40 columns: {o:?}");
    assert_eq!(down[2], "column-panels", "down_proj has 2100 columns: {down:?}");
}

/// `--dtype q4_k` stores the matrices in 4-bit tiles, the embedding table in q8_0 unless
/// asked otherwise; inspect names them, verify reads them back, and olmort runs the
/// blob under every kernel path.
#[test]
fn four_bit_blobs_pack_inspect_verify_and_run() {
    let scratch = Scratch::new("q4");
    let dir = fixtures().join("wide");
    let prompt = dir.join("prompt.tokens.bin");
    for (args, embed) in [(vec!["--dtype", "q4_k"], "q8_0"), (vec!["--dtype", "q4_0", "--embed-dtype", "q4_0"], "q4_0")] {
        let blob = scratch.path("wide-q4.bin");
        let blob = blob.to_str().unwrap();
        let mut pack_args = vec!["pack", dir.to_str().unwrap(), blob];
        pack_args.extend(&args);
        let out = run("olmoc", &pack_args, &[]);
        assert!(out.status.success(), "{}", describe(&out));
        let out = run("olmoc", &["inspect", blob], &[]);
        assert!(out.status.success(), "{}", describe(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let row = |name: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{text}"));
            line.split_whitespace().map(str::to_string).collect()
        };
        let dtype = args[1];
        assert_eq!(row("model.layers.1.mlp.down_proj.weight")[1..3], [dtype, "q4-tiles"], "{text}");
        assert_eq!(row("lm_head.weight")[1], dtype, "{text}");
        assert_eq!(row("model.embed_tokens.weight")[1], embed, "{text}");
        assert!(text.contains("q4-tiles: 8 rows x 256 columns"), "{text}");
        let out = run("olmoc", &["verify", blob], &[]);
        assert!(out.status.success(), "{}", describe(&out));
        for kernels in KERNEL_PATHS {
            let out = run("olmort", &[blob, prompt.to_str().unwrap(), "--steps", "8"], &[("OLMORT_KERNELS", kernels)]);
            assert!(out.status.success(), "{kernels}: {}", describe(&out));
            assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 8);
        }
    }
    let out = run("olmoc", &["pack", dir.to_str().unwrap(), scratch.path("x.bin").to_str().unwrap(), "--dtype", "q5_k"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("q4_0, q4_k") && stderr.lines().count() == 1, "{stderr}");
}
