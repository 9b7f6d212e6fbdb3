//! A thinking model over HTTP (`chat/olmo3_think`: its generation prompt opens
//! `<think>`): the reply's reasoning comes apart from its answer as
//! `reasoning_content`, whole and streamed alike, and together they are the text
//! `reasoning_format: "none"` gives as written. The weights are random: a bias on the
//! tokens of `</think>` makes sampled replies end their reasoning now and then.

mod common;

use common::{options, post, with_server, Packed};
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::text::tokenizer::Tokenizer;
use olmort::Model;
use serde_json::Value;

/// `"ID": BIAS` pairs that pull toward the tokens of `</think>`.
fn close_bias() -> String {
    let packed = Packed::new("chat/olmo3_think");
    let map = MappedFile::open(&packed.0).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let ids = Tokenizer::new(model.vocab.unwrap()).encode("</think>", false).unwrap();
    assert_eq!(ids.len(), 3, "</ think >");
    ids.iter().zip([15, 15, 13]).map(|(id, b)| format!(r#""{id}": {b}"#)).collect::<Vec<_>>().join(", ")
}

#[test]
fn reasoning_comes_apart_from_the_answer() {
    let bias = close_bias();
    with_server("chat/olmo3_think", options(2, 512, 32, 8), |addr, _| {
        let body = |seed: u32, extra: &str| {
            format!(r#"{{"messages": [{{"role": "user", "content": "Why is the sky blue?"}}], "max_tokens": 48, "seed": {seed}, "logit_bias": {{{bias}}}{extra}}}"#)
        };
        let mut closed = 0;
        for seed in 0..12 {
            // The same seed samples the same tokens, read or not.
            let raw = post(addr, "/v1/chat/completions", &body(seed, r#", "reasoning_format": "none""#)).json();
            let raw_text = raw["choices"][0]["message"]["content"].as_str().unwrap().to_string();
            assert!(raw["choices"][0]["message"].get("reasoning_content").is_none());
            let v = post(addr, "/v1/chat/completions", &body(seed, "")).json();
            let message = &v["choices"][0]["message"];
            let reasoning = message["reasoning_content"].as_str().unwrap_or("");
            let content = message["content"].as_str().unwrap();
            assert_eq!(v["usage"], raw["usage"]);
            // The prompt opened the reasoning: the text up to the first </think> is
            // reasoning, the rest answer.
            match raw_text.split_once("</think>") {
                Some((r, a)) => {
                    assert_eq!((reasoning, content), (r, a), "seed {seed}: {raw_text:?}");
                    closed += 1;
                }
                None => assert_eq!((reasoning, content), (raw_text.as_str(), ""), "seed {seed}: {raw_text:?}"),
            }
            // Streamed: reasoning deltas, then answer deltas, the same texts.
            let events = post(addr, "/v1/chat/completions", &body(seed, r#", "stream": true"#)).events();
            let (mut r, mut a, mut answered) = (String::new(), String::new(), false);
            for e in events.iter().filter(|e| *e != "[DONE]") {
                let e: Value = serde_json::from_str(e).unwrap();
                let Some(delta) = e["choices"].get(0).map(|c| &c["delta"]) else { continue };
                if let Some(t) = delta["reasoning_content"].as_str() {
                    assert!(!answered, "reasoning after the answer began");
                    r.push_str(t);
                }
                if let Some(t) = delta["content"].as_str() {
                    answered |= !t.is_empty();
                    a.push_str(t);
                }
            }
            assert_eq!((r.as_str(), a.as_str()), (reasoning, content), "seed {seed}");
        }
        assert!(closed >= 3, "the bias should end some replies' reasoning ({closed} of 12)");
        // JSON mode holds the reply from its first token: no reasoning is read from it.
        let json = post(addr, "/v1/chat/completions", &body(0, r#", "response_format": {"type": "json_object"}, "max_tokens": 4"#)).json();
        let message = &json["choices"][0]["message"];
        assert!(message.get("reasoning_content").is_none() && message["content"].as_str().unwrap().starts_with('{'), "{json}");
        let e = post(addr, "/v1/chat/completions", &body(0, r#", "reasoning_format": "hidden""#));
        assert_eq!(e.status, 400, "{}", e.body);
    });
    // A model whose template writes no <think>: its text as it is.
    with_server("chat/chatml", options(1, 128, 32, 4), |addr, _| {
        let v = post(addr, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}"#).json();
        assert!(v["choices"][0]["message"].get("reasoning_content").is_none(), "{v}");
    });
}
