//! The Responses API (`POST /v1/responses`) over real sockets: the reply of the chat it
//! amounts to, in output items, whole and streamed alike (the stream's deltas add up
//! to the items, its events numbered in order, its last event the whole response);
//! function calls from the tools; input items carrying calls and their outputs into
//! the prompt; a thinking model's reasoning item; refusals as 400s.

mod common;

use common::{options, post, with_server};
use serde_json::Value;

/// The text of a response's message items.
fn output_text(v: &Value) -> String {
    let items = v["output"].as_array().unwrap();
    items.iter().filter(|i| i["type"] == "message").flat_map(|i| i["content"].as_array().unwrap()).map(|c| c["text"].as_str().unwrap()).collect()
}

/// A stream's events (type and data), checked: numbered from 0, the last one the
/// response done.
fn events(answer: &common::Answer) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in answer.body.split("\n\n").filter(|e| !e.is_empty()) {
        let (head, data) = e.split_once("\ndata: ").unwrap_or_else(|| panic!("{e:?}"));
        let kind = head.strip_prefix("event: ").unwrap().to_string();
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], kind.as_str());
        assert_eq!(data["sequence_number"], out.len());
        out.push((kind, data));
    }
    out
}

#[test]
fn text_responses_are_the_chat_s_replies() {
    with_server("chat/olmo2", options(2, 128, 16, 8), |addr, _| {
        let chat = post(addr, "/v1/chat/completions", r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}], "max_tokens": 12, "temperature": 0}"#).json();
        let body = r#"{"instructions": "Be brief.", "input": "Hello!", "max_output_tokens": 12, "temperature": 0"#;
        let v = post(addr, "/v1/responses", &format!("{body}}}")).json();
        assert_eq!(output_text(&v), chat["choices"][0]["message"]["content"].as_str().unwrap());
        assert_eq!((v["object"].as_str(), v["id"].as_str().map(|id| id.starts_with("resp_"))), (Some("response"), Some(true)));
        assert_eq!(v["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
        assert_eq!(v["usage"]["output_tokens"], chat["usage"]["completion_tokens"]);
        let status = if chat["choices"][0]["finish_reason"] == "length" { "incomplete" } else { "completed" };
        assert_eq!(v["status"], status);
        // The same input as message items with text parts.
        let items = r#"{"input": [{"role": "system", "content": "Be brief."}, {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}], "max_output_tokens": 12, "temperature": 0}"#;
        assert_eq!(output_text(&post(addr, "/v1/responses", items).json()), output_text(&v));

        let streamed = events(&post(addr, "/v1/responses", &format!(r#"{body}, "stream": true}}"#)));
        let deltas: String = streamed.iter().filter(|(k, _)| k == "response.output_text.delta").map(|(_, d)| d["delta"].as_str().unwrap()).collect();
        assert_eq!(deltas, output_text(&v));
        assert_eq!(streamed[0].0, "response.created");
        let (last, done) = streamed.last().unwrap();
        assert_eq!(last.as_str(), if status == "completed" { "response.completed" } else { "response.incomplete" });
        assert_eq!(done["response"]["output"], v["output"].as_array().unwrap().iter().map(|i| {
            let mut i = i.clone();
            i["id"] = done["response"]["output"][0]["id"].clone();
            i
        }).collect::<Value>());

        for (body, needle) in [
            (r#"{"input": "x", "previous_response_id": "resp_1"}"#, "keeps no responses"),
            (r#"{"input": [{"role": "wizard", "content": "x"}]}"#, "input[0]"),
            (r#"{"input": "x", "max_output_tokens": 0}"#, "'max_output_tokens'"),
        ] {
            let e = post(addr, "/v1/responses", body);
            assert_eq!(e.status, 400, "{body}: {}", e.body);
            assert!(e.json()["error"]["message"].as_str().unwrap().contains(needle), "{}", e.body);
        }
        assert_eq!(common::get(addr, "/v1/responses").status, 405);
    });
}

const TOOLS: &str = r#"[{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]"#;

/// Calls as `function_call` items (the bias pulls the random weights toward `"` and
/// `)`), and back as input items.
#[test]
fn function_calls_are_output_items_and_go_back_as_input() {
    with_server("chat/olmo3_tools", options(1, 512, 32, 4), |addr, _| {
        let body = format!(r#"{{"input": "Weather in Oslo?", "tools": {TOOLS}, "tool_choice": "required", "max_output_tokens": 40, "temperature": 0, "logit_bias": {{"1": 30, "8": 25}}"#);
        let v = post(addr, "/v1/responses", &format!("{body}}}")).json();
        let call = v["output"].as_array().unwrap().iter().find(|i| i["type"] == "function_call").unwrap_or_else(|| panic!("{v}")).clone();
        assert_eq!((call["name"].as_str(), v["status"].as_str()), (Some("get_weather"), Some("completed")));
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{call}");
        let streamed = events(&post(addr, "/v1/responses", &format!(r#"{body}, "stream": true}}"#)));
        let done = streamed.iter().find(|(k, d)| k == "response.output_item.done" && d["item"]["type"] == "function_call").unwrap();
        assert_eq!((done.1["item"]["name"].clone(), done.1["item"]["arguments"].clone()), (call["name"].clone(), call["arguments"].clone()));
        // The call and its output as the next request's input, the same prompt as the
        // chat with the assistant's tool_calls and a tool message.
        let input = format!(
            r#"[{{"role": "user", "content": "Weather in Oslo?"}}, {{"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": {}}}, {{"type": "function_call_output", "call_id": "c1", "output": "sunny"}}]"#,
            call["arguments"]
        );
        let next = post(addr, "/v1/responses", &format!(r#"{{"input": {input}, "tools": {TOOLS}, "tool_choice": "none", "max_output_tokens": 2}}"#)).json();
        let messages = format!(
            r#"[{{"role": "user", "content": "Weather in Oslo?"}}, {{"role": "assistant", "content": null, "tool_calls": [{{"id": "c1", "type": "function", "function": {{"name": "get_weather", "arguments": {}}}}}]}}, {{"role": "tool", "tool_call_id": "c1", "content": "sunny"}}]"#,
            call["arguments"]
        );
        let tools = r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#;
        let chat = post(addr, "/v1/chat/completions", &format!(r#"{{"messages": {messages}, "tools": {tools}, "tool_choice": "none", "max_tokens": 2}}"#)).json();
        assert_eq!(next["usage"]["input_tokens"], chat["usage"]["prompt_tokens"], "{next}");
    });
}

/// A thinking model's reasoning as a `reasoning` item before the message.
#[test]
fn reasoning_is_an_item_of_its_own() {
    with_server("chat/olmo3_think", options(1, 512, 32, 4), |addr, _| {
        let body = r#"{"input": "Why is the sky blue?", "max_output_tokens": 48, "seed": 2, "logit_bias": {"524": 15, "27963": 15, "29": 13}"#;
        let v = post(addr, "/v1/responses", &format!("{body}}}")).json();
        let chat = r#"{"messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 48, "seed": 2, "logit_bias": {"524": 15, "27963": 15, "29": 13}}"#;
        let chat = post(addr, "/v1/chat/completions", chat).json();
        assert_eq!(v["output"][0]["type"], "reasoning", "{v}");
        assert_eq!(v["output"][0]["content"][0]["text"], chat["choices"][0]["message"]["reasoning_content"]);
        assert_eq!(output_text(&v), chat["choices"][0]["message"]["content"].as_str().unwrap());
        let streamed = events(&post(addr, "/v1/responses", &format!(r#"{body}, "stream": true}}"#)));
        let reasoning: String = streamed.iter().filter(|(k, _)| k == "response.reasoning_text.delta").map(|(_, d)| d["delta"].as_str().unwrap()).collect();
        assert_eq!(reasoning, v["output"][0]["content"][0]["text"].as_str().unwrap());
    });
}
