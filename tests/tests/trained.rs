//! The trained fixture (`tests/fixtures/trained`): its greedy text is transformers'
//! `generate`, its tokenizer.json is the dolma2 vocabulary, and `olmort perplexity`
//! agrees with transformers' perplexity and measures the drift of reduced dtypes.

use olmo_e2e::{describe, fixtures, run, Scratch};
use olmo_format::vocab::{decode_byte_level, Vocab};
use serde::Deserialize;
use serde_json::Value;

fn pack(scratch: &Scratch, fixture: &str, dtype: &str) -> String {
    let out = scratch.path(&format!("{fixture}-{dtype}.bin"));
    let dir = fixtures().join(fixture);
    let result = run("olmoc", &["pack", dir.to_str().unwrap(), out.to_str().unwrap(), "--dtype", dtype], &[]);
    assert!(result.status.success(), "olmoc pack {fixture} {dtype}: {}", describe(&result));
    out.to_str().unwrap().to_string()
}

fn olmort(args: &[&str]) -> String {
    let out = run("olmort", args, &[]);
    assert!(out.status.success(), "olmort {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

fn perplexity_json(blob: &str, extra: &[&str]) -> Value {
    let text = fixtures().join("trained/perplexity.txt");
    let mut args = vec!["perplexity", blob, "--text", text.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let out = olmort(&args);
    assert_eq!(out.lines().count(), 1, "one summary line: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixtures().join("trained").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct GenerateReference {
    prompt: String,
    max_new_tokens: usize,
    text: String,
    repetition_penalty: f32,
    penalized_text: String,
}

/// The README's first command: English from a text prompt, as transformers writes it.
#[test]
fn greedy_text_is_what_transformers_generates() {
    let scratch = Scratch::new("trained-text");
    let blob = pack(&scratch, "trained", "f32");
    let r: GenerateReference = read_json("generate_reference.json");
    let n = r.max_new_tokens.to_string();
    let out = olmort(&[&blob, "--prompt", &r.prompt, "--format", "text", "--max-tokens", &n]);
    assert_eq!(out, format!("{}{}", r.prompt, r.text));
}

/// `--logit-bias ID=-100` on the reference's greedy next token: greedy takes the
/// second of transformers' top 5 at the prompt's last position instead.
#[test]
fn a_logit_bias_moves_greedy_to_the_reference_second_choice() {
    let scratch = Scratch::new("trained-bias");
    let blob = pack(&scratch, "trained", "f32");
    let r: Value = read_json("reference.json");
    let n = r["prompt_length"].as_u64().unwrap() as usize;
    let top = &r["top5"][n - 1];
    let prompt = fixtures().join("trained/prompt.tokens.bin");
    let first = |extra: &[&str]| -> u64 {
        let mut args = vec![blob.as_str(), prompt.to_str().unwrap(), "--format", "jsonl", "--max-tokens", "1"];
        args.extend_from_slice(extra);
        let out = olmort(&args);
        let step: Value = serde_json::from_str(out.lines().nth(n - 1).unwrap()).unwrap();
        assert_eq!(step["generated"], true);
        step["next"].as_u64().unwrap()
    };
    assert_eq!(first(&[]), top[0].as_u64().unwrap());
    let ban = format!("{}=-100", top[0]);
    assert_eq!(first(&["--logit-bias", &ban]), top[1].as_u64().unwrap());
}

/// `--repeat-penalty` over the whole context is transformers' `repetition_penalty`: the
/// same greedy continuation, which leaves the plain one's loop.
#[test]
fn repeat_penalty_is_what_transformers_generates() {
    let scratch = Scratch::new("trained-penalty");
    let blob = pack(&scratch, "trained", "f32");
    let r: GenerateReference = read_json("generate_reference.json");
    assert_ne!(r.penalized_text, r.text);
    let (n, penalty) = (r.max_new_tokens.to_string(), r.repetition_penalty.to_string());
    let args = [&blob, "--prompt", &r.prompt, "--format", "text", "--max-tokens", &n, "--repeat-penalty", &penalty, "--repeat-last-n", "-1"];
    assert_eq!(olmort(&args), format!("{}{}", r.prompt, r.penalized_text));
    // The README's main job: the default window of 64 holds all 47 positions here.
    assert_eq!(olmort(&args[..args.len() - 2]), format!("{}{}", r.prompt, r.penalized_text));
}

#[derive(Deserialize)]
struct PerplexityReference {
    context: usize,
    stride: usize,
    windows: usize,
    tokens: usize,
    perplexity: f64,
}

#[test]
fn perplexity_matches_transformers() {
    let scratch = Scratch::new("trained-ppl");
    let blob = pack(&scratch, "trained", "f32");
    let references: Vec<PerplexityReference> = read_json("perplexity_reference.json");
    assert!(references.len() >= 3);
    for r in &references {
        let (context, stride) = (r.context.to_string(), r.stride.to_string());
        let got = perplexity_json(&blob, &["--context", &context, "--stride", &stride]);
        // Same tokens (olmort's tokenizer and the reference's), same windows.
        assert_eq!(got["tokens"], r.tokens, "{context}/{stride}: {got}");
        assert_eq!(got["windows"], r.windows, "{context}/{stride}: {got}");
        let ppl = got["perplexity"].as_f64().unwrap();
        let relative = (ppl / r.perplexity - 1.0).abs();
        assert!(relative < 1e-3, "{context}/{stride}: {ppl} against transformers' {}", r.perplexity);
        assert!(got.get("base").is_none());
    }
}

#[test]
fn drift_from_the_f32_blob_by_dtype() {
    let scratch = Scratch::new("trained-kl");
    let f32_blob = pack(&scratch, "trained", "f32");
    let window = ["--context", "128", "--stride", "128"];
    let drift = |blob: &str| {
        let mut args = window.to_vec();
        args.extend(["--kl-base", f32_blob.as_str()]);
        perplexity_json(blob, &args)
    };
    let same = drift(&f32_blob);
    let base = &same["base"];
    assert_eq!(base["kl_mean"].as_f64().unwrap().abs(), 0.0, "{same}");
    assert_eq!(base["top1_agreement"], 1.0);
    assert_eq!(base["rms_delta_p"], 0.0);
    assert_eq!(base["perplexity"], same["perplexity"]);

    // q8_0 rounds every weight: a small but real drift.
    let q8 = drift(&pack(&scratch, "trained", "q8_0"));
    let (kl, p99, top1) = (
        q8["base"]["kl_mean"].as_f64().unwrap(),
        q8["base"]["kl_p99"].as_f64().unwrap(),
        q8["base"]["top1_agreement"].as_f64().unwrap(),
    );
    assert!(kl > 1e-6 && kl < 1e-2, "q8_0 mean KL {kl}");
    assert!(p99 >= kl && p99 < 0.1, "q8_0 p99 KL {p99}");
    assert!(top1 > 0.9 && top1 < 1.0, "q8_0 top-1 agreement {top1}");
    let (ppl, base_ppl) = (q8["perplexity"].as_f64().unwrap(), q8["base"]["perplexity"].as_f64().unwrap());
    assert_eq!(base_ppl, same["perplexity"].as_f64().unwrap());
    assert!((ppl / base_ppl - 1.0).abs() < 0.02, "q8_0 perplexity {ppl} against {base_ppl}");
}

#[test]
fn text_summary_is_one_line() {
    let scratch = Scratch::new("trained-line");
    let blob = pack(&scratch, "trained", "f32");
    let text = fixtures().join("trained/perplexity.txt");
    let out = olmort(&["perplexity", &blob, "--text", text.to_str().unwrap(), "--context", "256", "--stride", "256"]);
    assert_eq!(out.lines().count(), 1);
    assert!(out.starts_with("perplexity ") && out.contains(" windows of 256 (stride 256)"), "{out}");
}

/// Runs `olmort perplexity` expecting a refusal: one line on stderr, no panic.
fn refused(args: &[&str]) -> String {
    let mut all = vec!["perplexity"];
    all.extend_from_slice(args);
    let out = run("olmort", &all, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "olmort {all:?} should fail: {}", describe(&out));
    assert_eq!(stderr.lines().count(), 1, "olmort {all:?}: {}", describe(&out));
    assert!(stderr.starts_with("olmort: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn perplexity_refusals() {
    let scratch = Scratch::new("trained-refusals");
    let blob = pack(&scratch, "trained", "f32");
    let text = fixtures().join("trained/perplexity.txt");
    let text = text.to_str().unwrap();
    assert!(refused(&[&blob, "--text", text, "--context", "257"]).contains("256 positions"));
    assert!(refused(&[&blob, "--text", text, "--context", "64", "--stride", "65"]).contains("stride"));
    assert!(refused(&[&blob, "--text", text, "--stride", "0"]).contains("stride"));
    assert!(refused(&[&blob, "--text", text, "--context", "1"]).contains("at least 2"));
    let one_token = scratch.path("one.txt");
    std::fs::write(&one_token, "And").unwrap();
    assert!(refused(&[&blob, "--text", one_token.to_str().unwrap()]).contains("at least 2"));
    let not_utf8 = scratch.path("bad.txt");
    std::fs::write(&not_utf8, [0x41, 0xff, 0x42]).unwrap();
    refused(&[&blob, "--text", not_utf8.to_str().unwrap()]);
    refused(&[&blob, "--text", scratch.path("missing.txt").to_str().unwrap()]);
    refused(&[&blob]);
    assert!(refused(&[&blob, "--text", text, "--threads", "100000"]).contains("--threads 100000 is more than"));
    // A model without a vocabulary cannot encode the text; a base of another
    // vocabulary size is not the same model.
    let gqa = pack(&scratch, "gqa", "f32");
    assert!(refused(&[&gqa, "--text", text]).contains("no vocabulary"));
    let tiny = pack(&scratch, "tiny", "f32");
    refused(&[&blob, "--text", text, "--kl-base", &gqa]);
    refused(&[&blob, "--text", text, "--kl-base", scratch.path("missing.bin").to_str().unwrap()]);
    // Same vocabulary, other model: runs (the drift is large).
    let other = perplexity_json(&blob, &["--context", "32", "--stride", "32", "--kl-base", &tiny]);
    assert!(other["base"]["kl_mean"].as_f64().unwrap() > 1.0, "{other}");
}

/// tokenizer.json's `model.vocab` and `added_tokens` are the dolma2 vocabulary of
/// tiny/vocab.txt, id for id.
#[test]
fn tokenizer_json_is_the_dolma2_vocabulary() {
    let vocab_txt = std::fs::read_to_string(fixtures().join("tiny/vocab.txt")).unwrap();
    let expected = Vocab::parse_vocab_txt(&vocab_txt).unwrap();
    let json: Value = read_json("tokenizer.json");
    let mut tokens = vec![None; expected.tokens.len()];
    for (spelling, id) in json["model"]["vocab"].as_object().unwrap() {
        let id = id.as_u64().unwrap() as usize;
        assert!(tokens[id].replace(decode_byte_level(spelling)).is_none(), "id {id} twice");
    }
    let mut specials = Vec::new();
    for added in json["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        assert_eq!(added["special"], true);
        tokens[id] = Some(added["content"].as_str().unwrap().as_bytes().to_vec());
        specials.push(id as u32);
    }
    let tokens: Vec<Vec<u8>> = tokens.into_iter().map(|t| t.expect("every id present")).collect();
    assert_eq!(tokens, expected.tokens);
    assert_eq!(specials, expected.special_ids);
    assert_eq!(json["pre_tokenizer"]["type"], "Sequence");
    assert!(json["model"]["merges"].as_array().unwrap().len() > 100_000);
}
