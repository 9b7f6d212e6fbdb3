//! olmort's text prompts, output formats, limits, end-of-sequence and sampling options.

use std::path::Path;

use olmo_e2e::{describe, fixtures, read_npy_2d, reference, run, Scratch};
use olmo_format::vocab::Vocab;

fn pack(dir: &Path, out: &Path) {
    let result = run("olmoc", &["pack", dir.to_str().unwrap(), out.to_str().unwrap()], &[]);
    assert!(result.status.success(), "olmoc pack: {}", describe(&result));
}

fn pack_fixture(fixture: &str, scratch: &Scratch) -> String {
    let out = scratch.path(&format!("{fixture}.bin"));
    pack(&fixtures().join(fixture), &out);
    out.to_str().unwrap().to_string()
}

fn olmort(args: &[&str]) -> (String, String) {
    let out = run("olmort", args, &[]);
    assert!(out.status.success(), "olmort {args:?}: {}", describe(&out));
    (
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs olmort expecting a refusal: non-zero exit, one line on stderr, no panic.
fn refused(args: &[&str]) -> String {
    let out = run("olmort", args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "olmort {args:?} should fail: {}", describe(&out));
    assert_eq!(stderr.lines().count(), 1, "olmort {args:?}: {}", describe(&out));
    assert!(stderr.starts_with("olmort: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn dolma2() -> Vocab {
    let text = std::fs::read_to_string(fixtures().join("tiny/vocab.txt")).unwrap();
    Vocab::parse_vocab_txt(&text).unwrap()
}

fn decode(vocab: &Vocab, ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|&id| vocab.tokens[id as usize].clone()).collect()
}

#[test]
fn a_text_prompt_gives_the_same_trace_as_its_ids() {
    let scratch = Scratch::new("gen-trace");
    let blob = pack_fixture("tiny", &scratch);
    let ids = fixtures().join("seed/fourscore.tokens.bin");
    let (seed, _) = olmort(&[&blob, ids.to_str().unwrap()]);
    assert_eq!(seed.lines().count(), 20);
    let (text, _) = olmort(&[&blob, "--prompt", "Four score and seven"]);
    assert_eq!(text, seed);
    let prompt_file = scratch.path("prompt.txt");
    std::fs::write(&prompt_file, "Four score and seven").unwrap();
    let (file, _) = olmort(&[&blob, "--prompt-file", prompt_file.to_str().unwrap()]);
    assert_eq!(file, seed);
    // The generation loop's trace (any option beyond the seed's routes through it) prints
    // the same lines: 4 prompt positions and 16 new tokens fed back.
    let (generated, _) = olmort(&[&blob, "--prompt", "Four score and seven", "--max-tokens", "16"]);
    assert_eq!(generated, seed);
    let (sampled_greedy, _) =
        olmort(&[&blob, ids.to_str().unwrap(), "--steps", "20", "--top-k", "1", "--temperature", "0.5"]);
    assert_eq!(sampled_greedy, seed, "top-k 1 is greedy at any temperature");
}

#[test]
fn text_format_prints_the_prompt_and_the_continuation() {
    let scratch = Scratch::new("gen-text");
    let blob = pack_fixture("tiny", &scratch);
    let r = reference("tiny");
    let vocab = dolma2();
    // The reference feeds 4 prompt tokens and 16 argmax tokens; its last step's argmax
    // is the 17th new token.
    let mut expected_ids = r.input_tokens.clone();
    expected_ids.push(*r.argmax.last().unwrap());
    for n in [1usize, 5, 17] {
        let (out, _) = olmort(&[
            &blob,
            "--prompt",
            "Four score and seven",
            "--format",
            "text",
            "--max-tokens",
            &n.to_string(),
        ]);
        let expected = String::from_utf8_lossy(&decode(&vocab, &expected_ids[..4 + n])).into_owned();
        assert_eq!(out, expected, "--max-tokens {n}");
    }
    // --steps limits positions: 6 positions are the 4 prompt tokens and 3 new ones.
    let (out, _) = olmort(&[&blob, "--prompt", "Four score and seven", "--format", "text", "--steps", "6"]);
    assert_eq!(out.as_bytes(), decode(&vocab, &expected_ids[..7]));
}

/// `--json`: the new text is one JSON object (as serde_json parses it) and the run ends
/// where it closes, before `--max-tokens`; without it the same run prints no JSON. The
/// tiny fixture's weights are random: `--logit-bias` pulls toward `"` (id 1) and `}`
/// (id 92), which unconstrained greedy then repeats, and bans `{}` (id 6390), which
/// would be a whole reply in one token.
#[test]
fn json_runs_end_with_a_json_object() {
    let scratch = Scratch::new("gen-json");
    let blob = pack_fixture("tiny", &scratch);
    let prompt = "Four score and seven";
    let run = |extra: &[&str]| {
        let mut args = vec![blob.as_str(), "--prompt", prompt, "--format", "text", "--max-tokens", "60"];
        args.extend_from_slice(&["--logit-bias", "1=30", "--logit-bias", "92=25", "--logit-bias", "6390=-100"]);
        args.extend_from_slice(extra);
        let (out, _) = olmort(&args);
        out.strip_prefix(prompt).unwrap_or_else(|| panic!("{out:?}")).to_string()
    };
    let object = |text: &str| serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object() && !v.as_object().unwrap().is_empty());
    let reply = run(&["--json"]);
    assert!(object(&reply), "{reply:?}");
    assert!(!run(&[]).starts_with('{'));
    for seed in ["5", "6"] {
        let sampled = run(&["--json", "--temperature", "1", "--seed", seed]);
        assert!(object(&sampled), "seed {seed}: {sampled:?}");
    }
    // jsonl: the generated steps spell the same object.
    let bias = ["--logit-bias", "1=30", "--logit-bias", "92=25", "--logit-bias", "6390=-100"];
    let (out, _) = olmort(&[&[blob.as_str(), "--prompt", prompt, "--format", "jsonl", "--max-tokens", "60", "--json"][..], &bias].concat());
    let text: String = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["generated"] == true)
        .map(|v| v["next_text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, reply);
    assert!(refused(&[&blob, "--prompt", prompt, "--json"]).contains("--format text or jsonl"));

    // --json-schema: the schema's keys in order, their types; ',' (id 11) ends the integer.
    let schema = scratch.path("schema.json");
    std::fs::write(&schema, r#"{"type": "object", "properties": {"who": {"type": "string"}, "n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["who", "n", "ok"], "additionalProperties": false}"#).unwrap();
    let reply = run(&["--json-schema", schema.to_str().unwrap(), "--logit-bias", "11=20"]);
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
    assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{reply:?}");
    assert!(v["who"].is_string() && v["n"].is_i64() && v["ok"].is_boolean(), "{reply:?}");
    assert!(reply.find("\"who\"") < reply.find("\"n\"") && reply.find("\"n\"") < reply.find("\"ok\""), "{reply:?}");
    std::fs::write(&schema, r#"{"type": "object", "properties": {"who": {"type": "string", "pattern": "x"}}, "required": ["who"]}"#).unwrap();
    let e = refused(&[&blob, "--prompt", prompt, "--format", "text", "--json-schema", schema.to_str().unwrap()]);
    assert!(e.contains("schema.json") && e.contains("'pattern'"), "{e}");
    assert!(refused(&[&blob, "--prompt", prompt, "--json", "--json-schema", schema.to_str().unwrap()]).contains("cannot be used with"));
}

/// `--tools` with `--messages`: the functions reach the prompt through the template, and
/// `--tool-choice required` or a function's name holds the reply to a call block that
/// reads back as calls of the tools (`"` id 1 and `)` id 8 pulled up: random weights).
#[test]
fn tool_runs_end_with_a_call_block() {
    let scratch = Scratch::new("gen-tools");
    let blob = scratch.path("tools.bin");
    pack(&fixtures().join("chat/olmo3_tools"), &blob);
    let blob = blob.to_str().unwrap().to_string();
    let messages = scratch.path("messages.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "Weather in Oslo?"}]"#).unwrap();
    let tools = scratch.path("tools.json");
    std::fs::write(&tools, r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}]"#).unwrap();
    let (messages, tools) = (messages.to_str().unwrap(), tools.to_str().unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec![blob.as_str(), "--messages", messages, "--format", "text", "--max-tokens", "40", "--logit-bias", "1=30", "--logit-bias", "8=25"];
        args.extend_from_slice(extra);
        let (out, _) = olmort(&args);
        out.rsplit_once("<|im_start|>assistant\n").unwrap_or_else(|| panic!("{out:?}")).1.to_string()
    };
    let (shown, _) = olmort(&[blob.as_str(), "--messages", messages, "--format", "text", "--max-tokens", "1", "--tools", tools, "--tool-choice", "none"]);
    assert!(shown.contains("<functions>[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), "{shown:?}");
    for (choice, names) in [("required", &["get_weather", "get_time"][..]), ("get_time", &["get_time"][..])] {
        let reply = run(&["--tools", tools, "--tool-choice", choice]);
        let read = olmort::text::tool_calls::read_reply(olmort::text::tool_calls::ToolSyntax::FunctionCallTags, &reply);
        assert!(reply.starts_with("<function_calls>") && reply.ends_with("</function_calls>"), "{choice}: {reply:?}");
        assert!(!read.calls.is_empty() && read.calls.iter().all(|c| names.contains(&c.name.as_str())), "{choice}: {reply:?}");
        for c in &read.calls {
            let args: serde_json::Value = serde_json::from_str(&c.arguments).unwrap();
            assert!(args[if c.name == "get_time" { "zone" } else { "city" }].is_string(), "{reply:?}");
        }
    }
    assert!(refused(&[&blob, "--messages", messages, "--format", "text", "--tools", tools, "--tool-choice", "nope"]).contains("'nope' is not among"));
    assert!(refused(&[&blob, "--messages", messages, "--format", "text", "--tools", tools, "--tool-choice", "required", "--json"]).contains("cannot hold"));
    assert!(refused(&[&blob, "--prompt", "hi", "--tools", tools]).contains("--messages"));
    let olmo2 = scratch.path("olmo2.bin");
    pack(&fixtures().join("chat/olmo2"), &olmo2);
    assert!(refused(&[olmo2.to_str().unwrap(), "--messages", messages, "--format", "text", "--tools", tools]).contains("no tool-call syntax"));
}

#[test]
fn jsonl_format_has_one_object_per_position() {
    let scratch = Scratch::new("gen-jsonl");
    let blob = pack_fixture("tiny", &scratch);
    let r = reference("tiny");
    let (out, _) =
        olmort(&[&blob, "--prompt", "Four score and seven", "--format", "jsonl", "--max-tokens", "6"]);
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("a JSON object")).collect();
    assert_eq!(lines.len(), 4 + 6 - 1);
    for (pos, step) in lines.iter().enumerate() {
        assert_eq!(step["pos"], pos);
        assert_eq!(step["token"], r.input_tokens[pos]);
        let next = if pos < 3 { r.input_tokens[pos + 1] } else { r.argmax[pos] };
        assert_eq!(step["next"], next);
        assert_eq!(step["generated"], pos >= 3);
        let top: Vec<u32> = serde_json::from_value(step["top_ids"].clone()).unwrap();
        assert_eq!(top, r.top5[pos]);
        assert_eq!(step["top_logits"].as_array().unwrap().len(), 5);
        assert!(step["text"].is_string() && step["next_text"].is_string());
    }
    assert_eq!(lines[0]["text"], "Four");
    assert_eq!(lines[3]["text"], " seven");
}

#[test]
fn jsonl_keeps_the_bytes_of_a_split_character() {
    let scratch = Scratch::new("gen-bytes");
    let blob = pack_fixture("tiny", &scratch);
    let vocab = dolma2();
    // "é" as two single-byte tokens, 0xC3 then 0xA9.
    let id = |b: u8| vocab.tokens.iter().position(|t| t[..] == [b]).unwrap() as u32;
    let ids = scratch.path("e-acute.bin");
    std::fs::write(&ids, [id(0xC3), id(0xA9)].iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let (out, _) = olmort(&[&blob, ids.to_str().unwrap(), "--format", "jsonl", "--max-tokens", "1"]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["text"], "\u{FFFD}");
    assert_eq!(first["text_bytes"], serde_json::json!([0xC3]));
    assert_eq!(first["next_text_bytes"], serde_json::json!([0xA9]));
    // As running text the two tokens are one character again.
    let (text, _) = olmort(&[&blob, ids.to_str().unwrap(), "--format", "text", "--max-tokens", "1"]);
    assert!(text.starts_with("é"), "{text:?}");
}

/// The gqa fixture with its eos id set to a token its greedy continuation produces.
fn gqa_with_eos(scratch: &Scratch, eos: u32) -> String {
    let dir = scratch.path("gqa-eos");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("gqa")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"eos_token_id\": 996", &format!("\"eos_token_id\": {eos}"));
    assert!(config.contains(&format!("\"eos_token_id\": {eos}")));
    std::fs::write(dir.join("config.json"), config).unwrap();
    let out = scratch.path("gqa-eos.bin");
    pack(&dir, &out);
    out.to_str().unwrap().to_string()
}

#[test]
fn generation_stops_at_eos_unless_told_not_to() {
    let scratch = Scratch::new("gen-eos");
    // Greedy after the 7-token prompt: 585 585 585 479 590 ...
    let blob = gqa_with_eos(&scratch, 479);
    let prompt = fixtures().join("gqa/prompt.tokens.bin");
    let prompt = prompt.to_str().unwrap();
    let dump = scratch.path("logits.npy");
    let (out, _) = olmort(&[
        &blob, prompt, "--format", "jsonl", "--max-tokens", "10", "--dump-logits", dump.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert_eq!(lines.last().unwrap()["next"], 479);
    // Without a vocabulary the text is null.
    assert!(lines[0]["text"].is_null());
    // The logits file holds exactly the positions that ran.
    let (rows, cols, _) = read_npy_2d(&dump);
    assert_eq!((rows, cols), (10, 997));

    let (out, _) = olmort(&[&blob, prompt, "--format", "jsonl", "--max-tokens", "10", "--ignore-eos"]);
    assert_eq!(out.lines().count(), 7 + 10 - 1);
    // The trace format is the seed's loop: it never stops early.
    let (out, _) = olmort(&[&blob, prompt, "--steps", "24"]);
    assert_eq!(out.lines().count(), 24);
    let (out, _) = olmort(&[&blob, prompt, "--max-tokens", "10", "--temperature", "0"]);
    assert_eq!(out.lines().count(), 17);
}

#[test]
fn the_same_seed_samples_the_same_text() {
    let scratch = Scratch::new("gen-seed");
    let blob = pack_fixture("tiny", &scratch);
    let args = |seed: &'static str| {
        vec![
            blob.clone(),
            "--prompt".into(),
            "Four score".into(),
            "--format".into(),
            "text".into(),
            "--max-tokens".into(),
            "24".into(),
            "--temperature".into(),
            "1.0".into(),
            "--top-p".into(),
            "0.95".into(),
            "--top-k".into(),
            "50".into(),
            "--seed".into(),
            seed.into(),
        ]
    };
    let go = |seed| {
        let a = args(seed);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        olmort(&a).0
    };
    let (a, b, c) = (go("11"), go("11"), go("12"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.starts_with("Four score"));
    // Without --seed one is drawn and printed, so a run can be repeated.
    let (_, stderr) = olmort(&[&blob, "--prompt", "x", "--format", "text", "--max-tokens", "2", "--temperature", "1"]);
    assert!(stderr.contains("--seed "), "{stderr}");
}

#[test]
fn special_tokens_in_a_prompt_only_with_special() {
    let scratch = Scratch::new("gen-special");
    let blob = pack_fixture("tiny", &scratch);
    let first_token = |extra: &[&str]| {
        let mut args = vec![blob.as_str(), "--prompt", "<|endoftext|>Hi", "--format", "jsonl", "--max-tokens", "1"];
        args.extend_from_slice(extra);
        let (out, _) = olmort(&args);
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        first["token"].as_u64().unwrap()
    };
    assert_eq!(first_token(&["--special"]), 100257);
    assert_ne!(first_token(&[]), 100257);
}

#[test]
fn bad_requests_are_one_line_each() {
    let scratch = Scratch::new("gen-bad");
    let tiny = pack_fixture("tiny", &scratch);
    let gqa = pack_fixture("gqa", &scratch);
    let ids = fixtures().join("seed/fourscore.tokens.bin");
    let ids = ids.to_str().unwrap();
    assert!(refused(&[&gqa, "--prompt", "hello"]).contains("no vocabulary"));
    let gqa_prompt = fixtures().join("gqa/prompt.tokens.bin");
    assert!(refused(&[&gqa, gqa_prompt.to_str().unwrap(), "--format", "text"]).contains("vocabulary"));
    assert!(refused(&[&tiny, ids, "--prompt", "hello"]).contains("once"));
    assert!(refused(&[&tiny, "--prompt", ""]).contains("no tokens"));
    assert!(refused(&[&tiny, ids, "--special"]).contains("--special"));
    assert!(refused(&[&tiny, "--prompt", "a", "--top-p", "1.5"]).contains("--top-p"));
    assert!(refused(&[&tiny, "--prompt", "a", "--temperature=-1"]).contains("--temperature"));
    assert!(refused(&[&tiny, "--prompt", "a", "--repeat-penalty", "0"]).contains("--repeat-penalty"));
    assert!(refused(&[&tiny, "--prompt", "a", "--frequency-penalty", "inf"]).contains("--frequency-penalty"));
    assert!(refused(&[&tiny, "--prompt", "a", "--presence-penalty", "NaN"]).contains("--presence-penalty"));
    assert!(refused(&[&tiny, "--prompt", "a", "--repeat-last-n", "-2"]).contains("--repeat-last-n"));
    assert!(refused(&[&tiny, "--prompt", "a", "--logit-bias", "5"]).contains("--logit-bias 5"));
    assert!(refused(&[&tiny, "--prompt", "a", "--logit-bias", "100000000=1"]).contains("token id of this model"));
    assert!(refused(&[&tiny, "--prompt", "a", "--logit-bias", "5=inf"]).contains("finite"));
    assert!(refused(&[&gqa, gqa_prompt.to_str().unwrap(), "--format", "jsonl", "--json"]).contains("--tools need a vocabulary"));
    // The tiny model has 128 positions.
    assert!(refused(&[&tiny, "--prompt", "a", "--format", "text", "--max-tokens", "500"])
        .contains("maximum sequence length"));
    assert!(refused(&[&tiny, "--prompt", "a", "--steps", "129"]).contains("maximum sequence length"));
    assert!(refused(&[&tiny, "--prompt", "a", "--format", "xml"]).contains("xml"));
    assert!(refused(&[&tiny, "--prompt", "a", "--max-tokens", "-3"]).contains("-3"));
    let bad = scratch.path("latin1.txt");
    std::fs::write(&bad, b"caf\xe9").unwrap();
    assert!(refused(&[&tiny, "--prompt-file", bad.to_str().unwrap()]).contains("not UTF-8"));
    let missing = scratch.path("missing.txt");
    assert!(refused(&[&tiny, "--prompt-file", missing.to_str().unwrap()]).contains("missing.txt"));
}

#[test]
fn default_text_generation_fits_the_context() {
    let scratch = Scratch::new("gen-default");
    let blob = pack_fixture("tiny", &scratch);
    // 256 new tokens by default, but the tiny model has 128 positions: the 4 prompt
    // positions and 124 more, which produce 125 new tokens (the last needs no position).
    let (out, _) = olmort(&[&blob, "--prompt", "Four score and seven", "--format", "jsonl", "--ignore-eos"]);
    assert_eq!(out.lines().count(), 128);
}
