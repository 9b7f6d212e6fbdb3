//! `olmort serve`'s HTTP layer over real sockets: the routes, answers whole and streamed
//! (the same greedy text either way), usage counts, stop strings, every refusal an
//! OpenAI-style 4xx, a full queue 503, and a client leaving mid-stream freeing its slot.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{get, metric, options, post, raw, request_bytes, with_server};
use serde_json::Value;

fn text_of_stream(events: &[String], chat: bool) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|v| {
            let c = v["choices"].get(0)?.clone();
            if chat { c["delta"]["content"].as_str().map(str::to_string) } else { c["text"].as_str().map(str::to_string) }
        })
        .collect()
}

#[test]
fn routes_answers_and_streams() {
    with_server("chat/olmo2", options(2, 128, 16, 8), |addr, _| {
        let health = get(addr, "/health");
        assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
        let models = get(addr, "/v1/models").json();
        assert_eq!(models["data"][0]["id"], "test-model");

        // Completions, whole and streamed: the same greedy text.
        let body = r#"{"model": "test-model", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": true}"#;
        let whole = post(addr, "/v1/completions", body);
        assert_eq!(whole.status, 200, "{}", whole.body);
        let v = whole.json();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 12);
        let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(prompt_tokens >= 4);
        assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), prompt_tokens + 12);
        let text = v["choices"][0]["text"].as_str().unwrap().to_string();
        assert!(!text.is_empty());
        let streamed = post(addr, "/v1/completions", &body.replace("}", r#", "stream": true, "stream_options": {"include_usage": true}}"#));
        assert_eq!(streamed.status, 200);
        assert!(streamed.head.contains("text/event-stream"), "{}", streamed.head);
        let events = streamed.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(text_of_stream(&events, false), text);
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 12);
        let last: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");

        // Token ids as the prompt.
        let ids = post(addr, "/v1/completions", r#"{"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0}"#).json();
        assert_eq!(ids["usage"]["prompt_tokens"], 3);

        // A stop string cuts the text before it.
        let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
        let stop: String = text[cut..].chars().take(2).collect();
        let stopped = post(addr, "/v1/completions", &body.replace("}", &format!(r#", "stop": [{}]}}"#, serde_json::to_string(&stop).unwrap()))).json();
        let want = &text[..text.find(&stop).unwrap()];
        assert_eq!(stopped["choices"][0]["text"].as_str(), Some(want));
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

        // Chat, whole and streamed.
        let chat = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}], "max_completion_tokens": 10, "temperature": 0, "ignore_eos": true}"#;
        let whole = post(addr, "/v1/chat/completions", chat);
        assert_eq!(whole.status, 200, "{}", whole.body);
        let v = whole.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["completion_tokens"], 10);
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        let streamed = post(addr, "/v1/chat/completions", &chat.replace("}", r#", "stream": true}"#));
        let events = streamed.events();
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(text_of_stream(&events, true), reply);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

        let m = get(addr, "/metrics");
        assert!(m.head.contains("text/plain"));
        assert!(metric(addr, "olmort_generated_tokens_total") >= 12 + 12 + 2 + 10 + 10);
        assert!(m.body.contains("olmort_requests_total{outcome=\"ok\"}"));
    });
}

/// Repetition penalties per request, as transformers applies `repetition_penalty` over
/// the whole context: two requests side by side, one penalised and one not, each get the
/// greedy text transformers generates for it; and `logit_bias`.
#[test]
fn penalties_are_per_request_and_match_transformers() {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(common::fixture("trained").join("generate_reference.json")).unwrap()).unwrap();
    let body = |extra: &str| {
        format!(r#"{{"prompt": {}, "max_tokens": {}, "temperature": 0, "ignore_eos": true{extra}}}"#, r["prompt"], r["max_new_tokens"])
    };
    let penalized = body(&format!(r#", "repetition_penalty": {}, "repeat_last_n": -1"#, r["repetition_penalty"]));
    with_server("trained", options(2, 256, 16, 4), |addr, _| {
        std::thread::scope(|s| {
            let a = s.spawn(|| post(addr, "/v1/completions", &penalized));
            let b = s.spawn(|| post(addr, "/v1/completions", &body("")));
            let (a, b) = (a.join().unwrap().json(), b.join().unwrap().json());
            assert_eq!(a["choices"][0]["text"], r["penalized_text"]);
            assert_eq!(b["choices"][0]["text"], r["text"]);
        });
        // OpenAI's penalties move the text off the plain loop too.
        let f = post(addr, "/v1/completions", &body(r#", "frequency_penalty": 0.5, "presence_penalty": 0.5"#)).json();
        assert_ne!(f["choices"][0]["text"], r["text"]);
        // A bias of -100 on the plain reply's first token: greedy takes the model's second
        // choice (the log-probabilities are the model's own, where the banned one is first).
        let first = r["ids"][0].as_u64().unwrap();
        let banned = post(addr, "/v1/completions", &body(&format!(r#", "logit_bias": {{"{first}": -100}}, "logprobs": 2"#))).json();
        let lp = &banned["choices"][0]["logprobs"];
        let top: Vec<(&String, &Value)> = lp["top_logprobs"][0].as_object().unwrap().iter().collect();
        let mut top = top.into_iter().map(|(t, v)| (t.clone(), v.as_f64().unwrap())).collect::<Vec<_>>();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let plain = post(addr, "/v1/completions", &body(r#", "logprobs": 0"#)).json();
        let plain_first = plain["choices"][0]["logprobs"]["tokens"][0].as_str().unwrap().to_string();
        assert_eq!(top[0].0, plain_first, "the banned token still leads the model's own");
        assert_eq!(lp["tokens"][0].as_str().unwrap(), top[1].0, "chosen: the second");
        let outside = post(addr, "/v1/completions", &body(r#", "logit_bias": {"4000000": 5}"#));
        assert_eq!(outside.status, 400);
        assert!(outside.json()["error"]["message"].as_str().unwrap().contains("outside the vocabulary"));
    });
}

/// transformers' logits for the trained fixture's reference steps, log-softmaxed in f64.
fn reference_log_softmax() -> (Vec<u32>, Vec<Vec<f64>>) {
    let dir = common::fixture("trained");
    let json: Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let tokens: Vec<u32> = json["input_tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let bytes = std::fs::read(dir.join("reference_logits.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let vocab = npy.shape()[1] as usize;
    let logits: Vec<f32> = npy.into_vec().unwrap();
    let rows = logits
        .chunks(vocab)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            row.iter().map(|&v| v as f64 - lse).collect()
        })
        .collect();
    (tokens, rows)
}

/// Completions' `logprobs: N`: each generated token's log-probability and the N best,
/// the log-softmax of transformers' logits at its position; streamed, the same entries
/// spread over the chunks.
#[test]
fn logprobs_are_the_log_softmax_of_the_reference() {
    let (tokens, rows) = reference_log_softmax();
    let (prompt, steps) = (8, 4);
    let ids: Vec<String> = tokens[..prompt].iter().map(u32::to_string).collect();
    let body = format!(r#"{{"prompt": [{}], "max_tokens": {steps}, "temperature": 0, "ignore_eos": true, "logprobs": 5}}"#, ids.join(", "));
    with_server("trained", options(1, 256, 16, 4), |addr, _| {
        let v = post(addr, "/v1/completions", &body).json();
        let lp = &v["choices"][0]["logprobs"];
        let values: Vec<f64> = lp["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(values.len(), steps);
        for (k, &got) in values.iter().enumerate() {
            // Greedy: the reference's next token, and the best of the alternatives.
            let row = &rows[prompt - 1 + k];
            let want = row[tokens[prompt + k] as usize];
            assert!((got - want).abs() < 1e-4, "step {k}: {got} against {want}");
            let mut best: Vec<f64> = row.clone();
            best.sort_by(|a, b| b.total_cmp(a));
            let mut top: Vec<f64> = lp["top_logprobs"][k].as_object().unwrap().values().map(|x| x.as_f64().unwrap()).collect();
            top.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(top.len(), 5, "step {k}");
            for (g, w) in top.iter().zip(&best) {
                assert!((g - w).abs() < 1e-4, "step {k}: {top:?} against {:?}", &best[..5]);
            }
            assert!((top[0] - want).abs() < 1e-4);
        }
        let text = v["choices"][0]["text"].as_str().unwrap();
        let spelled: String = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(spelled, text);
        assert_eq!(lp["text_offset"][0], 0);

        let streamed = post(addr, "/v1/completions", &body.replace("}", r#", "stream": true}"#)).events();
        let chunks: Vec<Value> = streamed.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
        let (mut values_streamed, mut offsets) = (Vec::new(), Vec::new());
        for c in &chunks {
            let l = &c["choices"][0]["logprobs"];
            values_streamed.extend(l["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()));
            offsets.extend(l["text_offset"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()));
        }
        assert_eq!(values_streamed, values);
        assert_eq!(offsets, lp["text_offset"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>());
        // Without asking: null.
        let plain = post(addr, "/v1/completions", r#"{"prompt": [1, 2], "max_tokens": 2}"#).json();
        assert!(plain["choices"][0]["logprobs"].is_null());
    });
}

/// Completions' `echo` with `logprobs`: the prompt's own tokens scored, the first
/// `null`, the others the log-softmax of transformers' logits at the position before;
/// `max_tokens: 0` scores the prompt alone; streamed, the prompt comes first and the
/// entries are the whole answer's.
#[test]
fn echo_scores_the_prompt_against_the_reference() {
    let (tokens, rows) = reference_log_softmax();
    let prompt = 8;
    let ids: Vec<String> = tokens[..prompt].iter().map(u32::to_string).collect();
    let body = |max_tokens: usize| format!(r#"{{"prompt": [{}], "max_tokens": {max_tokens}, "temperature": 0, "echo": true, "logprobs": 2}}"#, ids.join(", "));
    with_server("trained", options(2, 256, 3, 4), |addr, _| {
        let scored = post(addr, "/v1/completions", &body(0)).json();
        assert_eq!(scored["usage"]["completion_tokens"], 0);
        assert_eq!(scored["choices"][0]["finish_reason"], "length");
        let lp = &scored["choices"][0]["logprobs"];
        let values = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(values.len(), prompt);
        assert!(values[0].is_null() && lp["top_logprobs"][0].is_null());
        for k in 1..prompt {
            let (got, want) = (values[k].as_f64().unwrap(), rows[k - 1][tokens[k] as usize]);
            assert!((got - want).abs() < 1e-4, "prompt token {k}: {got} against {want}");
        }
        let spelled: String = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(scored["choices"][0]["text"].as_str().unwrap(), spelled, "the text is the prompt's");

        // Two new tokens after the prompt: scored as the reference's greedy steps.
        let whole = post(addr, "/v1/completions", &body(2)).json();
        let lp = &whole["choices"][0]["logprobs"];
        let values: Vec<Value> = lp["token_logprobs"].as_array().unwrap().clone();
        assert_eq!(values.len(), prompt + 2);
        for k in prompt..prompt + 2 {
            let (got, want) = (values[k].as_f64().unwrap(), rows[k - 1][tokens[k] as usize]);
            assert!((got - want).abs() < 1e-4, "generated token {k}: {got} against {want}");
        }
        assert!(whole["choices"][0]["text"].as_str().unwrap().starts_with(&spelled));

        let streamed = post(addr, "/v1/completions", &body(2).replace("}", r#", "stream": true}"#)).events();
        let chunks: Vec<Value> = streamed.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["text"].as_str().unwrap(), spelled, "the prompt first");
        let streamed_values: Vec<Value> = chunks.iter().flat_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array().cloned().unwrap_or_default()).collect();
        assert_eq!(streamed_values, values);
        // Without logprobs an echo is text only; chat has none.
        let plain = post(addr, "/v1/completions", &format!(r#"{{"prompt": [{}], "max_tokens": 0, "echo": true}}"#, ids.join(", "))).json();
        assert_eq!(plain["choices"][0]["text"].as_str().unwrap(), spelled);
        assert!(plain["choices"][0]["logprobs"].is_null());
    });
}

/// Chat's `logprobs: true` with `top_logprobs`: an entry per generated token, in
/// OpenAI's shape, whole and streamed alike.
#[test]
fn chat_logprobs_have_an_entry_per_token() {
    with_server("chat/olmo2", options(1, 128, 16, 4), |addr, _| {
        let body = r#"{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 3}"#;
        let v = post(addr, "/v1/chat/completions", body).json();
        let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
        assert_eq!(content.len(), 6);
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
        let bytes: Vec<u8> = content.iter().flat_map(|e| e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8)).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), reply);
        for e in &content {
            let top = e["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            // Greedy: the chosen token is the first alternative.
            assert_eq!((&top[0]["token"], &top[0]["logprob"]), (&e["token"], &e["logprob"]));
            assert!(e["logprob"].as_f64().unwrap() <= 0.0 && top[2]["logprob"].as_f64() <= top[1]["logprob"].as_f64());
        }
        let streamed = post(addr, "/v1/chat/completions", &body.replace("}", r#", "stream": true}"#)).events();
        let entries: Vec<Value> = streamed
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(entries, content);
    });
}

/// `cache_prompt`: a chat's next turn starts from the slot's cache where it holds the
/// conversation so far, reports those tokens as `cached_tokens`, and replies as the same
/// request run from position 0 (f32 weights: the cached keys are the ones a full run
/// computes); with sliding-window layers (`chat/olmo3`) a cache that cannot continue is
/// not kept, and the reply is again the uncached one.
#[test]
fn cache_prompt_reuses_a_slot_and_replies_the_same() {
    for fixture in ["chat/chatml", "chat/olmo3"] {
        with_server(fixture, options(1, 256, 16, 4), |addr, _| {
            let turn = |messages: &str, cache: bool| {
                let body = format!(r#"{{"messages": {messages}, "max_tokens": 8, "temperature": 0, "ignore_eos": true, "cache_prompt": {cache}}}"#);
                let v = post(addr, "/v1/chat/completions", &body).json();
                let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
                (v["choices"][0]["message"]["content"].as_str().unwrap().to_string(), cached, v["usage"]["prompt_tokens"].as_u64().unwrap())
            };
            let first = r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]"#;
            let (reply, cached, first_len) = turn(first, true);
            assert_eq!(cached, 0, "{fixture}: an empty cache");
            let second = format!(
                r#"[{{"role": "system", "content": "Be brief."}}, {{"role": "user", "content": "Hi!"}}, {{"role": "assistant", "content": {}}}, {{"role": "user", "content": "Tell me more."}}]"#,
                serde_json::to_string(&reply).unwrap()
            );
            let (cached_reply, cached, len) = turn(&second, true);
            if fixture == "chat/chatml" {
                assert!(cached >= first_len && cached < len, "{fixture}: {cached} of {len} cached");
            } else {
                assert!(cached == 0 || cached >= first_len, "{fixture}: all the cache or none: {cached}");
            }
            let (fresh_reply, fresh_cached, _) = turn(&second, false);
            assert_eq!(fresh_cached, 0);
            assert_eq!(cached_reply, fresh_reply, "{fixture}");
            assert_eq!(metric(addr, "olmort_prompt_tokens_cached_total"), cached);
        });
    }
    // With two slots, a request that does not cache takes the slot holding less, so the
    // conversation's slot is still there for its next turn.
    with_server("chat/chatml", options(2, 256, 16, 4), |addr, _| {
        let chat = |messages: &str, cache: bool| {
            let body = format!(r#"{{"messages": {messages}, "max_tokens": 4, "temperature": 0, "ignore_eos": true, "cache_prompt": {cache}}}"#);
            post(addr, "/v1/chat/completions", &body).json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
        };
        let long = r#"[{"role": "system", "content": "Be brief, and answer every question in one sentence."}, {"role": "user", "content": "Hi!"}]"#;
        chat(long, true);
        chat(r#"[{"role": "user", "content": "x"}]"#, false);
        chat(r#"[{"role": "user", "content": "y"}]"#, false);
        assert!(chat(long, true) > 10, "the long conversation's slot was kept");
    });
}

/// `n` choices: each a reply of its own from a slot of its own, whole and streamed alike
/// (chunks tagged by index), greedy ones all the same text, sampled ones each the text a
/// request of one with the seed `seed + index` gives; usage counts the prompt once.
#[test]
fn n_choices_are_replies_of_their_own() {
    with_server("chat/olmo2", options(2, 128, 16, 8), |addr, _| {
        let body = |extra: &str| format!(r#"{{"prompt": "Once upon a time", "max_tokens": 6, "ignore_eos": true{extra}}}"#);
        let texts = |v: &Value| -> Vec<String> { v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect() };
        let greedy = post(addr, "/v1/completions", &body(r#", "temperature": 0, "n": 3"#)).json();
        let g = texts(&greedy);
        assert_eq!(g.len(), 3);
        assert!(g.iter().all(|t| *t == g[0]), "{g:?}");
        assert_eq!(greedy["usage"]["completion_tokens"], 18);
        let one_prompt = post(addr, "/v1/completions", &body(r#", "temperature": 0"#)).json();
        assert_eq!(greedy["usage"]["prompt_tokens"], one_prompt["usage"]["prompt_tokens"]);
        assert_eq!(one_prompt["choices"][0]["text"].as_str().unwrap(), g[0]);

        // Sampled, three choices against two slots: choice i is seed 40 + i's reply.
        let sampled = post(addr, "/v1/completions", &body(r#", "temperature": 1, "seed": 40, "n": 3"#)).json();
        let s = texts(&sampled);
        for (i, text) in s.iter().enumerate() {
            let alone = post(addr, "/v1/completions", &body(&format!(r#", "temperature": 1, "seed": {}"#, 40 + i))).json();
            assert_eq!(alone["choices"][0]["text"].as_str().unwrap(), text, "choice {i}");
            assert_eq!(sampled["choices"][i]["index"], i);
        }
        assert!(s[0] != s[1] || s[1] != s[2], "three seeds, three replies: {s:?}");

        // Streamed: each choice's chunks, in order, make its text.
        let events = post(addr, "/v1/completions", &body(r#", "temperature": 1, "seed": 40, "n": 3, "stream": true"#)).events();
        let mut streamed = vec![String::new(); 3];
        let mut finishes = 0;
        for e in events.iter().filter(|e| *e != "[DONE]") {
            let c: Value = serde_json::from_str(e).unwrap();
            let i = c["choices"][0]["index"].as_u64().unwrap() as usize;
            streamed[i].push_str(c["choices"][0]["text"].as_str().unwrap());
            finishes += c["choices"][0]["finish_reason"].is_string() as usize;
        }
        assert_eq!((streamed, finishes), (s, 3));
    });
}

/// Every refusal: its status and an OpenAI error body; the server goes on.
/// `response_format: {"type": "json_object"}`: the reply is one JSON object, as
/// serde_json parses it, and ends where the object closes (finish "stop", fewer tokens
/// than allowed), whole or streamed, greedy or sampled; without it the same request's
/// reply is no JSON. The fixture's weights are random, so `logit_bias` pulls toward
/// `"` (id 1) and `}` (id 92): unconstrained, greedy then repeats `"`.
#[test]
fn json_mode_replies_are_json_objects() {
    with_server("chat/olmo2", options(2, 256, 16, 8), |addr, _| {
        let body = |extra: &str| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "Reply in JSON."}}], "max_tokens": 120, "temperature": 0, "logit_bias": {{"1": 30, "92": 25}}{extra}}}"#
            )
        };
        let json = r#", "response_format": {"type": "json_object"}"#;
        let v = post(addr, "/v1/chat/completions", &body(json)).json();
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        let parsed: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert!(parsed.is_object(), "{reply:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{reply:?}");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 120);
        let streamed = post(addr, "/v1/chat/completions", &body(&format!(r#"{json}, "stream": true"#))).events();
        assert_eq!(text_of_stream(&streamed, true), reply);

        let free = post(addr, "/v1/chat/completions", &body("")).json();
        let text = free["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?} is JSON without the format");

        for seed in 0..4 {
            let sampled = post(addr, "/v1/chat/completions", &body(&format!(r#"{json}, "temperature": 1.0, "seed": {seed}"#).replace(r#""temperature": 0, "#, ""))).json();
            let reply = sampled["choices"][0]["message"]["content"].as_str().unwrap();
            if sampled["choices"][0]["finish_reason"] == "stop" {
                assert!(serde_json::from_str::<Value>(reply).is_ok_and(|v| v.is_object()), "seed {seed}: {reply:?}");
            }
        }
        // A schema: its keys in order, its types, whole and streamed.
        let schema = r#"{"type": "json_schema", "json_schema": {"name": "forecast", "strict": true, "schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "sky": {"enum": ["sun", "rain"]}, "cold": {"type": "boolean"}}, "required": ["city", "days", "sky", "cold"], "additionalProperties": false}}}"#;
        // ',' (id 11) ends the integer.
        let shaped = |extra: &str| body(&format!(r#", "response_format": {schema}{extra}"#)).replace(r#""92": 25"#, r#""92": 25, "11": 20"#);
        let v = post(addr, "/v1/chat/completions", &shaped("")).json();
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        let parsed: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{reply:?}");
        assert!(parsed["city"].is_string() && parsed["days"].is_i64() && parsed["cold"].is_boolean(), "{reply:?}");
        assert!(["sun", "rain"].contains(&parsed["sky"].as_str().unwrap()), "{reply:?}");
        let at = |k: &str| reply.find(&format!("\"{k}\"")).unwrap();
        assert!(at("city") < at("days") && at("days") < at("sky") && at("sky") < at("cold"), "{reply:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(text_of_stream(&post(addr, "/v1/chat/completions", &shaped(r#", "stream": true"#)).events(), true), reply);
        // As Pydantic writes a nested model: `$defs` and `$ref`, an optional field.
        let nested = r##"{"type": "json_schema", "json_schema": {"name": "plan", "schema": {"type": "object", "properties": {"trip": {"$ref": "#/$defs/Trip"}, "note": {"type": "string"}},
            "required": ["trip"], "$defs": {"Trip": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city", "days"]}}}}}"##;
        let v = post(addr, "/v1/chat/completions", &body(&format!(r#", "response_format": {nested}"#)).replace(r#""92": 25"#, r#""92": 25, "11": 20"#)).json();
        let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert!(parsed["trip"]["city"].is_string() && parsed["trip"]["days"].is_i64(), "{reply:?}");
        assert!(parsed.as_object().unwrap().keys().all(|k| k == "trip" || k == "note"), "{reply:?}");
        assert!(parsed.get("note").is_none_or(Value::is_string), "{reply:?}");

        for (format, needle) in [
            (r#"{"type": "json_schema", "json_schema": {}}"#, "needs 'json_schema'"),
            (r##"{"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/b"}}}}}"##, "'$ref'"),
            (r#"{"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"type": "string", "format": "email"}}, "required": ["a"]}}}"#, "'format'"),
            (r#""json""#, "must be an object"),
            (r#"{"type": "xml"}"#, "json_object"),
        ] {
            let e = post(addr, "/v1/chat/completions", &body(&format!(r#", "response_format": {format}"#)));
            assert_eq!(e.status, 400, "{}", e.body);
            assert!(e.json()["error"]["message"].as_str().unwrap().contains(needle), "{}", e.body);
        }
    });
}

/// `/tokenize` and `/detokenize`: a text's ids as the built-in tokenizer encodes them, a
/// chat's as a completion counts its prompt, and the ids back to the text.
#[test]
fn tokenize_and_detokenize() {
    with_server("chat/olmo2", options(1, 128, 16, 4), |addr, _| {
        let v = post(addr, "/tokenize", r#"{"prompt": "Four score and seven"}"#).json();
        // The seed's fourscore.tokens.bin.
        assert_eq!(v["tokens"], serde_json::json!([28070, 5573, 323, 8254]));
        assert_eq!((v["count"].as_u64(), v["max_model_len"].as_u64()), (Some(4), Some(128)));
        assert_eq!(post(addr, "/tokenize", r#"{"content": "Four score and seven"}"#).json()["tokens"], v["tokens"], "llama-server's key");
        let back = post(addr, "/detokenize", r#"{"tokens": [28070, 5573, 323, 8254]}"#).json();
        assert_eq!(back["prompt"], "Four score and seven");
        let messages = r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]"#;
        let counted = post(addr, "/tokenize", &format!(r#"{{"messages": {messages}}}"#)).json();
        let answered = post(addr, "/v1/chat/completions", &format!(r#"{{"messages": {messages}, "max_tokens": 1}}"#)).json();
        assert_eq!(counted["count"], answered["usage"]["prompt_tokens"]);
        // Longer than the context: counted, not refused.
        let long = post(addr, "/tokenize", &format!(r#"{{"prompt": "{}"}}"#, "word ".repeat(300))).json();
        assert!(long["count"].as_u64().unwrap() > 128);
        for (path, body, needle) in [
            ("/tokenize", "{}", "give 'prompt'"),
            ("/tokenize", r#"{"prompt": 5}"#, "must be a string"),
            ("/tokenize", r#"{"prompt": "a", "messages": []}"#, "one of them"),
            ("/detokenize", r#"{"tokens": [-1]}"#, "list of token ids"),
            ("/detokenize", r#"{"tokens": [100352]}"#, "outside the vocabulary"),
        ] {
            let e = post(addr, path, body);
            assert_eq!(e.status, 400, "{path} {body}: {}", e.body);
            assert!(e.json()["error"]["message"].as_str().unwrap().contains(needle), "{}", e.body);
        }
        assert_eq!(common::get(addr, "/tokenize").status, 405);
    });
}

/// JSON formats mask tokens by their bytes: a blob without a vocabulary refuses them
/// (and still serves token prompts).
#[test]
fn json_formats_need_a_vocabulary() {
    with_server("gqa", options(1, 64, 16, 4), |addr, _| {
        let e = post(addr, "/v1/completions", r#"{"prompt": [1, 2, 3], "max_tokens": 2, "response_format": {"type": "json_object"}}"#);
        assert_eq!(e.status, 400, "{}", e.body);
        assert!(e.json()["error"]["message"].as_str().unwrap().contains("vocabulary"), "{}", e.body);
        assert_eq!(post(addr, "/v1/completions", r#"{"prompt": [1, 2, 3], "max_tokens": 2}"#).status, 200);
        assert_eq!(post(addr, "/tokenize", r#"{"prompt": "a"}"#).status, 400);
        assert_eq!(post(addr, "/detokenize", r#"{"tokens": [1]}"#).status, 400);
    });
}

#[test]
fn bad_requests_get_openai_errors() {
    let mut opts = options(2, 64, 16, 8);
    opts.http.max_body = 4096;
    opts.http.api_key = Some("sesame".into());
    with_server("chat/olmo2", opts, |addr, _| {
        let auth = [("Authorization", "Bearer sesame"), ("Content-Type", "application/json")];
        let send = |path: &str, body: &str| raw(addr, &request_bytes("POST", path, &auth, body));
        let long_prompt = format!(r#"{{"prompt": [{}]}}"#, vec!["1"; 64].join(", "));
        let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(5000));
        let cases: Vec<(u16, Vec<u8>, &str)> = vec![
            (400, request_bytes("POST", "/v1/completions", &auth, "{not json"), "not valid JSON"),
            (400, request_bytes("POST", "/v1/completions", &auth, r#"{"max_tokens": 3}"#), "'prompt' is required"),
            (400, request_bytes("POST", "/v1/completions", &auth, r#"{"prompt": "a", "max_tokens": "3"}"#), "integer"),
            (400, request_bytes("POST", "/v1/completions", &auth, r#"{"prompt": "a", "temperature": -1}"#), "temperature"),
            (400, request_bytes("POST", "/v1/completions", &auth, r#"{"prompt": "a", "top_p": 1.5}"#), "top_p"),
            (400, request_bytes("POST", "/v1/completions", &auth, r#"{"prompt": "a", "n": 17}"#), "'n' must be from 1 to 16"),
            (400, request_bytes("POST", "/v1/completions", &auth, r#"{"prompt": [999999999]}"#), "outside the vocabulary"),
            (400, request_bytes("POST", "/v1/completions", &auth, &long_prompt), "context"),
            (400, request_bytes("POST", "/v1/chat/completions", &auth, r#"{"messages": [{"role": "robot", "content": "x"}]}"#), "unknown role"),
            (400, request_bytes("POST", "/v1/chat/completions", &auth, r#"{"messages": "hi"}"#), "'messages'"),
            (413, request_bytes("POST", "/v1/completions", &auth, &big), "at most 4096"),
            (404, request_bytes("GET", "/v2/nothing", &auth, ""), "no route"),
            (405, request_bytes("GET", "/v1/completions", &auth, ""), "not allowed"),
            (401, request_bytes("GET", "/v1/models", &[], ""), "API key"),
            (401, request_bytes("GET", "/v1/models", &[("Authorization", "Bearer sesamf")], ""), "API key"),
            (400, b"this is not http\r\n\r\n".to_vec(), "malformed"),
            (411, b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer sesame\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), "Content-Length"),
        ];
        for (status, bytes, needle) in cases {
            let a = raw(addr, &bytes);
            assert_eq!(a.status, status, "{}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(80)]), a.body);
            let e = a.json();
            let message = e["error"]["message"].as_str().unwrap_or_else(|| panic!("no error message: {}", a.body));
            assert!(message.contains(needle), "{status}: {message}");
            assert!(e["error"]["type"].is_string());
        }
        // /health needs no key; the server still answers properly.
        assert_eq!(get(addr, "/health").status, 200);
        let ok = send("/v1/completions", r#"{"prompt": "hi", "max_tokens": 2}"#);
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert!(common::raw(addr, &request_bytes("GET", "/metrics", &auth, "")).body.contains("client_error\"} 17"));
    });
}

/// A request that does not arrive in time is answered 408, not waited on forever.
#[test]
fn a_slow_client_times_out() {
    let mut opts = options(1, 64, 16, 8);
    opts.http.request_timeout = Duration::from_millis(300);
    with_server("chat/olmo2", opts, |addr, _| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro").unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut out);
        assert_eq!(common::parse_answer(&out).status, 408);
        assert!(started.elapsed() < Duration::from_secs(3));
    });
}

/// Reads a streamed answer's head and first event, then hangs up.
fn start_stream_and_hang_up(addr: std::net::SocketAddr, body: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&request_bytes("POST", "/v1/completions", &[], body)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Polls `ready` until it holds; a failure naming `what` after a minute, never a hang
/// (a loaded machine can delay a thread, not stop it).
fn wait_for(ready: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "waited a minute for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A client that leaves mid-stream frees its slot at once; with the slot and the queue
/// full, more requests get 503.
#[test]
fn a_client_leaving_frees_its_slot_and_a_full_queue_refuses() {
    with_server("trained", options(1, 256, 16, 1), |addr, _| {
        let long = r#"{"prompt": [1, 2, 3], "max_tokens": 250, "ignore_eos": true, "temperature": 0, "stream": true}"#;
        start_stream_and_hang_up(addr, long);
        let hung_up = Instant::now();
        while metric(addr, "olmort_busy_slots") != 0 {
            assert!(hung_up.elapsed() < Duration::from_millis(400), "the slot stayed busy");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(metric(addr, "olmort_requests_total{outcome=\"cancelled\"}"), 1);
        // The slot serves the next request fully.
        let a = post(addr, "/v1/completions", r#"{"prompt": [4, 5], "max_tokens": 3, "ignore_eos": true}"#);
        assert_eq!(a.json()["usage"]["completion_tokens"], 3);

        // One request in the slot, one waiting: the third is refused. The first runs
        // for 250 steps of a tiny model, a fraction of a second; where a loaded machine
        // lets it finish before the others are in place, the third is served instead,
        // and the round is tried again.
        let mut refused = false;
        for _ in 0..10 {
            // A reply reaches its client a moment before the scheduler frees the slot and
            // updates the gauges: until they read idle, a stale "busy" could let the
            // second request in before the first, into a full queue.
            wait_for(|| metric(addr, "olmort_busy_slots") == 0 && metric(addr, "olmort_queue_depth") == 0, "an idle server");
            std::thread::scope(|s| {
                let first = s.spawn(|| post(addr, "/v1/completions", &long.replace(r#", "stream": true"#, "")));
                wait_for(|| first.is_finished() || metric(addr, "olmort_busy_slots") == 1, "the first request");
                let second = s.spawn(|| post(addr, "/v1/completions", r#"{"prompt": [9], "max_tokens": 2}"#));
                wait_for(|| first.is_finished() || metric(addr, "olmort_queue_depth") == 1, "the second request");
                let third = post(addr, "/v1/completions", r#"{"prompt": [9], "max_tokens": 2}"#);
                if third.status == 503 {
                    assert!(third.head.contains("Retry-After"));
                    assert_eq!(third.json()["error"]["code"], "overloaded");
                    refused = true;
                } else {
                    assert_eq!(third.status, 200, "{}", third.body);
                }
                assert_eq!(first.join().unwrap().json()["usage"]["completion_tokens"], 250);
                assert_eq!(second.join().unwrap().status, 200);
            });
            if refused {
                break;
            }
        }
        assert!(refused, "a third request with the slot and the queue full was never refused");
    });
}
