//! Tool calls over HTTP on a model whose template writes OLMo-3's `<function_calls>`
//! (`chat/olmo3_tools`): the tools reach the prompt exactly as the template renders them
//! (the renderer is checked against transformers in tests/tests/chat_template.rs), a
//! required call comes back as OpenAI's `tool_calls` with arguments that parse and
//! hold the function's required keys, whole and streamed alike, a conversation carries
//! calls and results into the next prompt, and what cannot be served is a 400.
//!
//! The fixture's weights are random: `logit_bias` pulls toward `"` (id 1) and `)`
//! (id 8), so that greedy argument strings close and calls end.

mod common;

use common::{options, post, with_server, Packed};
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::generation::session::ChatFormat;
use olmort::text::chat_template::{parse_messages, Tools};
use olmort::Model;
use serde_json::{json, Value};

const TOOLS: &str = r#"[
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
]"#;

const ASK: &str = r#"[{"role": "user", "content": "Weather in Oslo?"}]"#;

fn body(messages: &str, extra: &str) -> String {
    format!(r#"{{"messages": {messages}, "tools": {TOOLS}, "max_tokens": 60, "temperature": 0, "logit_bias": {{"1": 30, "8": 25}}{extra}}}"#)
}

/// The prompt's token count as the blob's template encodes it, with or without tools.
fn prompt_tokens(messages: &str, tools: bool) -> usize {
    let packed = Packed::new("chat/olmo3_tools");
    let map = MappedFile::open(&packed.0).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let chat = ChatFormat::for_model(&model, blob.manifest.chat.as_ref(), None).unwrap();
    let tools = tools.then(|| Tools::parse(TOOLS).unwrap());
    chat.prompt_with_tools(&parse_messages(messages).unwrap(), tools.as_ref()).unwrap().len()
}

/// A choice's calls, each checked: a function of TOOLS, arguments a JSON object with its
/// required keys (of their types) and no others.
fn checked_calls(calls: &Value) -> Vec<(String, Value)> {
    calls
        .as_array()
        .expect("tool_calls is a list")
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function");
            assert!(c["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{c}");
            let name = c["function"]["name"].as_str().unwrap().to_string();
            let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            let (required, allowed): (&str, &[&str]) = match name.as_str() {
                "get_weather" => ("city", &["city", "days"]),
                "get_time" => ("zone", &["zone"]),
                _ => panic!("{name} is not a tool"),
            };
            assert!(args[required].is_string(), "{c}");
            assert!(args.as_object().unwrap().keys().all(|k| allowed.contains(&k.as_str())), "{c}");
            if let Some(days) = args.get("days") {
                assert!(days.is_number() || days.is_string() || days.is_null() || days.is_boolean() || days.is_array() || days.is_object());
            }
            (name, args)
        })
        .collect()
}

/// The calls and text of a streamed chat answer, and its finish reason.
fn streamed(events: &[String]) -> (Value, String, String) {
    let (mut calls, mut text, mut finish) = (Value::Null, String::new(), String::new());
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let Some(c) = v["choices"].get(0) else { continue };
        if let Some(t) = c["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !c["delta"]["tool_calls"].is_null() {
            assert!(calls.is_null(), "the calls come in one chunk");
            calls = c["delta"]["tool_calls"].clone();
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (calls, text, finish)
}

#[test]
fn required_calls_come_back_as_tool_calls() {
    with_server("chat/olmo3_tools", options(2, 512, 32, 8), |addr, _| {
        let v = post(addr, "/v1/chat/completions", &body(ASK, r#", "tool_choice": "required", "parallel_tool_calls": false"#)).json();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        assert!(choice["message"]["content"].is_null(), "{v}");
        let calls = checked_calls(&choice["message"]["tool_calls"]);
        assert_eq!(calls.len(), 1, "{v}");
        // The tools are in the prompt, as the template renders them.
        assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(ASK, true));
        assert!(prompt_tokens(ASK, true) > prompt_tokens(ASK, false) + 50);
        // Ended by the block's close, not by max_tokens.
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 60, "{v}");

        // Streamed: the same calls in one delta, no text.
        let events = post(addr, "/v1/chat/completions", &body(ASK, r#", "tool_choice": "required", "parallel_tool_calls": false, "stream": true"#)).events();
        let (stream_calls, text, finish) = streamed(&events);
        assert_eq!((text.as_str(), finish.as_str()), ("", "tool_calls"));
        assert_eq!(stream_calls[0]["index"], 0);
        assert_eq!(checked_calls(&stream_calls), calls);

        // A named function: that one.
        let named = r#", "tool_choice": {"type": "function", "function": {"name": "get_time"}}"#;
        let v = post(addr, "/v1/chat/completions", &body(ASK, named)).json();
        let calls = checked_calls(&v["choices"][0]["message"]["tool_calls"]);
        assert_eq!(calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["get_time"], "{v}");

        // Parallel calls allowed, sampled: whatever the seed, every call is well formed.
        for seed in 0..4 {
            let extra = format!(r#", "tool_choice": "required", "temperature": 1.0, "seed": {seed}, "max_tokens": 120"#);
            let v = post(addr, "/v1/chat/completions", &body(ASK, &extra).replace(r#""temperature": 0, "#, "")).json();
            let choice = &v["choices"][0];
            if choice["finish_reason"] == "tool_calls" {
                assert!(!checked_calls(&choice["message"]["tool_calls"]).is_empty());
            } else {
                assert_eq!(choice["finish_reason"], "length", "{v}");
            }
        }
    });
}

#[test]
fn a_conversation_carries_calls_and_results() {
    with_server("chat/olmo3_tools", options(1, 512, 32, 4), |addr, _| {
        let v = post(addr, "/v1/chat/completions", &body(ASK, r#", "tool_choice": "required", "parallel_tool_calls": false"#)).json();
        let message = v["choices"][0]["message"].clone();
        let id = message["tool_calls"][0]["id"].clone();
        // The assistant's message as the answer gave it, then the tool's result.
        let mut messages: Vec<Value> = serde_json::from_str(ASK).unwrap();
        messages.push(message);
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": "{\"sky\": \"clear\", \"c\": 4}"}));
        let messages = Value::from(messages).to_string();
        let v = post(addr, "/v1/chat/completions", &body(&messages, r#", "tool_choice": "none", "max_tokens": 4"#)).json();
        assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(&messages, true), "{v}");
        // "none": the reply is text, never read for calls.
        assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
        assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    });
}

/// "auto": the model decides; a block it opens is held to the tools (tests/json_mode.rs
/// checks that mask over the real vocabulary).
#[test]
fn auto_replies_are_text_unless_they_call() {
    with_server("chat/olmo3_tools", options(1, 512, 32, 4), |addr, _| {
        // The random model writes no call on its own: its reply is text, as without tools.
        let v = post(addr, "/v1/chat/completions", &body(ASK, "")).json();
        let choice = &v["choices"][0];
        assert!(choice["message"]["tool_calls"].is_null() && choice["message"]["content"].is_string(), "{v}");
        let events = post(addr, "/v1/chat/completions", &body(ASK, r#", "stream": true"#)).events();
        let (calls, text, _) = streamed(&events);
        assert!(calls.is_null());
        assert_eq!(text, choice["message"]["content"].as_str().unwrap());
        // Until a block opens nothing is held: the reply is "none"'s, token for token.
        let none = post(addr, "/v1/chat/completions", &body(ASK, r#", "tool_choice": "none""#)).json();
        assert_eq!(none["choices"][0]["message"], choice["message"]);
        assert_eq!(none["usage"], v["usage"]);
    });
}

#[test]
fn what_cannot_be_served_is_refused() {
    with_server("chat/olmo3_tools", options(1, 256, 32, 4), |addr, _| {
        for (extra, needle) in [
            (r#", "tool_choice": {"type": "function", "function": {"name": "nope"}}"#, "'nope' is not among"),
            (r#", "tool_choice": "required", "response_format": {"type": "json_object"}"#, "cannot both hold"),
        ] {
            let e = post(addr, "/v1/chat/completions", &body(ASK, extra));
            assert_eq!(e.status, 400, "{}", e.body);
            assert!(e.json()["error"]["message"].as_str().unwrap().contains(needle), "{}", e.body);
        }
        let bad = r#"[{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a-b": {}}}}}]"#;
        let e = post(addr, "/v1/chat/completions", &body(ASK, r#", "tool_choice": "required""#).replace(TOOLS, bad));
        assert_eq!(e.status, 400, "{}", e.body);
        assert_eq!(post(addr, "/v1/chat/completions", &body(ASK, "")).status, 200, "the server goes on");
    });
    // A template that shows no call syntax: tools would be lost on the model.
    with_server("chat/olmo2", options(1, 256, 32, 4), |addr, _| {
        let e = post(addr, "/v1/chat/completions", &body(ASK, ""));
        assert_eq!(e.status, 400, "{}", e.body);
        let v = e.json();
        assert!(v["error"]["message"].as_str().unwrap().contains("<function_calls>"), "{}", e.body);
        assert_eq!(v["error"]["param"], "tools");
    });
}
