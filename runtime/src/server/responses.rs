//! OpenAI's Responses API (`POST /v1/responses`) over the chat machinery: a request is
//! read as the chat request it amounts to ([`parse`]: `instructions` and `input` items
//! become messages, function calls and their outputs the assistant's `tool_calls` and
//! `tool` messages, flat `tools` the nested ones, `text.format` the `response_format`,
//! `max_output_tokens` the `max_tokens`), and the reply's parts (`text::reply`) are
//! answered as output items: a `reasoning` item, a `message` with its `output_text`,
//! and a `function_call` per call, whole ([`response`]) or as the stream of typed
//! events ([`Stream`]).
//!
//! The server keeps no responses: `previous_response_id` is refused (send the whole
//! conversation as `input`), and so are the items and options it has no use for.

use minijinja::value::{Value as Ordered, ValueKind};
use serde_json::{json, Value};

use crate::server::api::{self, AnswerInfo, ApiError, CompletionRequest, Usage};
use crate::text::reply::ReplyParts;

/// Options of the Responses API that this server does not take.
const REFUSED: [(&str, &str); 5] = [
    ("previous_response_id", "this server keeps no responses: send the whole conversation as 'input'"),
    ("conversation", "this server keeps no conversations: send the whole conversation as 'input'"),
    ("background", "responses are answered while the request waits"),
    ("top_logprobs", "log-probabilities are on /v1/chat/completions"),
    ("n", "one output per response"),
];

/// The chat request a Responses request amounts to; errors name the Responses fields.
pub fn parse(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let v: Ordered = api::json_body(body)?;
    if v.kind() != ValueKind::Map {
        return Err(api::not_an_object());
    }
    let get = |k: &str| v.get_attr(k).ok().filter(|x| !x.is_undefined() && !x.is_none());
    for (name, why) in REFUSED {
        if get(name).is_some() {
            return Err(ApiError::invalid(format!("'{name}' is not supported: {why}"), None));
        }
    }
    let mut chat: Vec<(String, Ordered)> = Vec::new();
    for key in v.try_iter().map_err(|e| ApiError::invalid(e.to_string(), None))? {
        let Some(k) = key.as_str() else { continue };
        match k {
            // Read below, or of no use here (`stream_options` only hides event sizes).
            "input" | "instructions" | "max_output_tokens" | "text" | "tools" | "tool_choice" | "reasoning" | "include" | "store" | "metadata" | "truncation"
            | "stream_options" => {}
            // Chat fields that are not the Responses API's: a request has no use for them.
            "messages" | "max_tokens" | "max_completion_tokens" | "response_format" | "logprobs" | "functions" | "echo" => {
                return Err(ApiError::invalid(format!("'{k}' is a /v1/chat/completions field"), None));
            }
            _ => chat.push((k.to_string(), get(k).unwrap_or_default())),
        }
    }
    chat.push(("messages".into(), Ordered::from(messages(get("instructions"), get("input"))?)));
    if let Some(n) = get("max_output_tokens") {
        chat.push(("max_tokens".into(), n));
    }
    if let Some(format) = get("text").and_then(|t| t.get_attr("format").ok()).filter(|f| !f.is_undefined() && !f.is_none()) {
        chat.push(("response_format".into(), response_format(&format)?));
    }
    if let Some(tools) = get("tools") {
        chat.push(("tools".into(), nested_tools(&tools)?));
    }
    if let Some(choice) = get("tool_choice") {
        let named = choice.get_attr("name").ok().filter(|n| !n.is_undefined());
        let choice = match named {
            Some(name) => Ordered::from_pairs([("type", Ordered::from("function")), ("function", Ordered::from_pairs([("name", name)]))]),
            None => choice,
        };
        chat.push(("tool_choice".into(), choice));
    }
    let body = serde_json::to_vec(&Ordered::from_pairs(chat)).map_err(|e| ApiError::invalid(e.to_string(), None))?;
    api::parse_request(&body, true).map_err(renamed)
}

/// A chat parser's refusal in the Responses API's names.
fn renamed(mut e: ApiError) -> ApiError {
    for (chat, responses) in [("messages[", "input["), ("'max_tokens'", "'max_output_tokens'"), ("'response_format'", "'text.format'")] {
        e.message = e.message.replace(chat, responses);
    }
    e.param = match e.param {
        Some("messages") => Some("input"),
        Some("max_tokens") => Some("max_output_tokens"),
        Some("response_format") => Some("text.format"),
        p => p,
    };
    e
}

fn invalid(m: String) -> ApiError {
    ApiError::invalid(m, Some("input"))
}

/// `instructions` and `input` as chat messages.
fn messages(instructions: Option<Ordered>, input: Option<Ordered>) -> Result<Vec<Ordered>, ApiError> {
    let text = |role: &str, content: Ordered| Ordered::from_pairs([("role", Ordered::from(role)), ("content", content)]);
    let mut out = Vec::new();
    if let Some(i) = instructions {
        out.push(text("system", i));
    }
    let input = input.ok_or_else(|| invalid("'input' is required: a text or a list of items".into()))?;
    if input.as_str().is_some() {
        out.push(text("user", input));
        return Ok(out);
    }
    let items = input.try_iter().ok().filter(|_| input.kind() == ValueKind::Seq).ok_or_else(|| invalid("'input' must be a text or a list of items".into()))?;
    // Calls in a row are one assistant turn.
    let mut calls: Vec<Ordered> = Vec::new();
    let flush = |calls: &mut Vec<Ordered>, out: &mut Vec<Ordered>| {
        if !calls.is_empty() {
            let message = [("role", Ordered::from("assistant")), ("content", Ordered::from(())), ("tool_calls", Ordered::from(std::mem::take(calls)))];
            out.push(Ordered::from_pairs(message));
        }
    };
    for (i, item) in items.enumerate() {
        let attr = |k: &str| item.get_attr(k).ok().filter(|x| !x.is_undefined());
        let kind = attr("type").and_then(|t| t.as_str().map(str::to_string)).unwrap_or_else(|| "message".into());
        match kind.as_str() {
            "function_call" => {
                let (Some(id), Some(name)) = (attr("call_id"), attr("name")) else {
                    return Err(invalid(format!("input[{i}]: a function_call item has 'call_id' and 'name'")));
                };
                let function = Ordered::from_pairs([("name", name), ("arguments", attr("arguments").unwrap_or(Ordered::from("{}")))]);
                calls.push(Ordered::from_pairs([("id", id), ("type", Ordered::from("function")), ("function", function)]));
                continue;
            }
            "reasoning" => continue,
            _ => flush(&mut calls, &mut out),
        }
        match kind.as_str() {
            "function_call_output" => {
                let (Some(id), Some(output)) = (attr("call_id"), attr("output")) else {
                    return Err(invalid(format!("input[{i}]: a function_call_output item has 'call_id' and 'output'")));
                };
                out.push(Ordered::from_pairs([("role", Ordered::from("tool")), ("tool_call_id", id), ("content", output)]));
            }
            "message" => {
                let role = attr("role").unwrap_or_default();
                let content = attr("content").unwrap_or_default();
                out.push(text(role.as_str().unwrap_or(""), content_parts(&content)));
            }
            other => return Err(invalid(format!("input[{i}]: items of type '{other}' are not supported (message, function_call, function_call_output, reasoning)"))),
        }
    }
    flush(&mut calls, &mut out);
    Ok(out)
}

/// A message's content: a text, or parts whose `input_text` / `output_text` become the
/// chat's text parts (other parts pass on, for the chat parser to refuse by type).
fn content_parts(content: &Ordered) -> Ordered {
    if content.kind() != ValueKind::Seq {
        return content.clone();
    }
    let parts = content.try_iter().into_iter().flatten().map(|p| match p.get_attr("type").ok().as_ref().and_then(Ordered::as_str) {
        Some("input_text" | "output_text") => Ordered::from_pairs([("type", Ordered::from("text")), ("text", p.get_attr("text").unwrap_or_default())]),
        _ => p,
    });
    Ordered::from(parts.collect::<Vec<_>>())
}

/// `text.format` as the chat's `response_format`.
fn response_format(format: &Ordered) -> Result<Ordered, ApiError> {
    match format.get_attr("type").ok().as_ref().and_then(Ordered::as_str) {
        Some("text" | "json_object") => Ok(format.clone()),
        Some("json_schema") => {
            let field = |k: &str| format.get_attr(k).unwrap_or_default();
            let inner = Ordered::from_pairs([("name", field("name")), ("schema", field("schema")), ("strict", field("strict"))]);
            Ok(Ordered::from_pairs([("type", Ordered::from("json_schema")), ("json_schema", inner)]))
        }
        _ => Err(ApiError::invalid("'text.format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", ...}", Some("text.format"))),
    }
}

/// Flat `tools` (`{"type": "function", "name", "description", "parameters"}`) as the
/// chat's nested ones, keys in order.
fn nested_tools(tools: &Ordered) -> Result<Ordered, ApiError> {
    let Ok(list) = tools.try_iter().map(|i| i.collect::<Vec<_>>()) else {
        return Err(ApiError::invalid("'tools' must be a list", Some("tools")));
    };
    let nested = list.iter().enumerate().map(|(i, t)| {
        match t.get_attr("type").ok().as_ref().and_then(Ordered::as_str) {
            Some("function") => {}
            Some(other) => return Err(ApiError::invalid(format!("tools[{i}]: tools of type '{other}' are not supported (function)"), Some("tools"))),
            None => return Err(ApiError::invalid(format!("tools[{i}] must be {{\"type\": \"function\", \"name\": ..., \"parameters\": ...}}"), Some("tools"))),
        }
        let keys = ["name", "description", "parameters"];
        let function = keys.iter().filter_map(|&k| t.get_attr(k).ok().filter(|v| !v.is_undefined()).map(|v| (k, v)));
        Ok(Ordered::from_pairs([("type", Ordered::from("function")), ("function", Ordered::from_pairs(function.collect::<Vec<_>>()))]))
    });
    Ok(Ordered::from(nested.collect::<Result<Vec<_>, _>>()?))
}

fn usage(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt + u.completion,
    })
}

/// The items of a reply's parts: reasoning, the message, then the calls (ids from the
/// response's).
fn items(info: &AnswerInfo, parts: &ReplyParts) -> Vec<Value> {
    let mut out = Vec::new();
    if !parts.reasoning.is_empty() {
        out.push(reasoning_item(info, &parts.reasoning));
    }
    if !parts.content.is_empty() || parts.calls.is_empty() {
        out.push(message_item(info, &parts.content, "completed"));
    }
    out.extend((0..parts.calls.len()).map(|k| call_item(info, parts, k)));
    out
}

fn reasoning_item(info: &AnswerInfo, text: &str) -> Value {
    json!({"type": "reasoning", "id": format!("rs_{}", info.id), "summary": [], "content": [{"type": "reasoning_text", "text": text}]})
}

fn message_item(info: &AnswerInfo, text: &str, status: &str) -> Value {
    let content = if status == "completed" { json!([output_text(text)]) } else { json!([]) };
    json!({"type": "message", "id": format!("msg_{}", info.id), "status": status, "role": "assistant", "content": content})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn call_item(info: &AnswerInfo, parts: &ReplyParts, k: usize) -> Value {
    let c = &parts.calls[k];
    json!({"type": "function_call", "id": format!("fc_{}_{k}", info.id), "call_id": format!("call_{}_{k}", info.id), "name": c.name, "arguments": c.arguments, "status": "completed"})
}

/// The response object: `in_progress` (no output yet), or done with its items, and
/// `incomplete` where the reply ran into `max_output_tokens` or the context.
fn object(info: &AnswerInfo, output: Vec<Value>, status: &str, cut: bool, counts: Option<Usage>) -> Value {
    json!({
        "id": info.id,
        "object": "response",
        "created_at": info.created,
        "status": status,
        "incomplete_details": if cut { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "error": null,
        "model": info.model,
        "output": output,
        "usage": counts.map(usage),
    })
}

/// A whole response.
pub fn response(info: &AnswerInfo, parts: &ReplyParts, cut: bool, counts: Usage) -> String {
    let cut = cut && parts.calls.is_empty();
    object(info, items(info, parts), if cut { "incomplete" } else { "completed" }, cut, Some(counts)).to_string()
}

/// A response's stream of typed events (`event:` and `data:` lines), numbered in order:
/// the response created, its reasoning and message text as they come, each item
/// opened and closed, the calls when the reply ends, the response completed.
pub struct Stream<'a> {
    info: AnswerInfo<'a>,
    sequence: u64,
    /// The open item (its output index): reasoning or the message.
    open: Option<(Open, usize)>,
    /// Items done, in order.
    done: Vec<Value>,
    reasoning: String,
    text: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Reasoning,
    Message,
}

impl<'a> Stream<'a> {
    pub fn new(info: AnswerInfo<'a>) -> Stream<'a> {
        Stream { info, sequence: 0, open: None, done: Vec::new(), reasoning: String::new(), text: String::new() }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = kind.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> String {
        let r = object(&self.info, Vec::new(), "in_progress", false, None);
        let created = self.event("response.created", json!({"response": r}));
        created + &self.event("response.in_progress", json!({"response": r}))
    }

    /// Events for the next reasoning and answer text.
    pub fn text(&mut self, reasoning: &str, content: &str) -> String {
        self.delta(Open::Reasoning, reasoning) + &self.delta(Open::Message, content)
    }

    /// `text` added to the item `kind` (opened first where it is not).
    fn delta(&mut self, kind: Open, text: &str) -> String {
        if text.is_empty() {
            return String::new();
        }
        let mut out = self.open_item(kind);
        let (prefix, event, kept) = match kind {
            Open::Reasoning => ("rs", "response.reasoning_text.delta", &mut self.reasoning),
            Open::Message => ("msg", "response.output_text.delta", &mut self.text),
        };
        kept.push_str(text);
        let data = json!({"item_id": format!("{prefix}_{}", self.info.id), "output_index": self.done.len(), "content_index": 0, "delta": text});
        out += &self.event(event, data);
        out
    }

    /// Opens `kind` (closing the other first) unless it is open.
    fn open_item(&mut self, kind: Open) -> String {
        if self.open.is_some_and(|(o, _)| o == kind) {
            return String::new();
        }
        let mut out = self.close_item();
        let index = self.done.len();
        self.open = Some((kind, index));
        match kind {
            Open::Reasoning => {
                let item = json!({"type": "reasoning", "id": format!("rs_{}", self.info.id), "summary": [], "content": []});
                out += &self.event("response.output_item.added", json!({"output_index": index, "item": item}));
            }
            Open::Message => {
                let item = message_item(&self.info, "", "in_progress");
                out += &self.event("response.output_item.added", json!({"output_index": index, "item": item}));
                let id = format!("msg_{}", self.info.id);
                out += &self.event("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text("")}));
            }
        }
        out
    }

    fn close_item(&mut self) -> String {
        let Some((kind, index)) = self.open.take() else { return String::new() };
        let mut out = String::new();
        let item = match kind {
            Open::Reasoning => {
                let text = std::mem::take(&mut self.reasoning);
                let id = format!("rs_{}", self.info.id);
                out += &self.event("response.reasoning_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}));
                reasoning_item(&self.info, &text)
            }
            Open::Message => {
                let text = std::mem::take(&mut self.text);
                let id = format!("msg_{}", self.info.id);
                out += &self.event("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}));
                out += &self.event("response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text(&text)}));
                message_item(&self.info, &text, "completed")
            }
        };
        out += &self.event("response.output_item.done", json!({"output_index": index, "item": item}));
        self.done.push(item);
        out
    }

    /// The reply is over: the last text, the calls, and `response.completed` (or
    /// `response.incomplete` where it was cut).
    pub fn finish(&mut self, rest: &ReplyParts, cut: bool, counts: Usage) -> String {
        let mut out = self.text(&rest.reasoning, &rest.content);
        if rest.calls.is_empty() && self.done.is_empty() && self.open.is_none() {
            // An empty reply is still a message.
            out += &self.open_item(Open::Message);
        }
        out += &self.close_item();
        for k in 0..rest.calls.len() {
            let index = self.done.len();
            let item = call_item(&self.info, rest, k);
            let mut added = item.clone();
            (added["status"], added["arguments"]) = ("in_progress".into(), "".into());
            out += &self.event("response.output_item.added", json!({"output_index": index, "item": added}));
            let (id, arguments) = (item["id"].clone(), item["arguments"].clone());
            out += &self.event("response.function_call_arguments.delta", json!({"item_id": id, "output_index": index, "delta": arguments}));
            out += &self.event("response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "arguments": arguments}));
            out += &self.event("response.output_item.done", json!({"output_index": index, "item": item}));
            self.done.push(item);
        }
        let cut = cut && rest.calls.is_empty();
        let (status, kind) = if cut { ("incomplete", "response.incomplete") } else { ("completed", "response.completed") };
        let r = object(&self.info, std::mem::take(&mut self.done), status, cut, Some(counts));
        out + &self.event(kind, json!({"response": r}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::api::Prompt;
    use crate::text::tool_calls::ToolCall;

    fn req(body: &str) -> CompletionRequest {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {}", e.message))
    }

    #[test]
    fn reads_a_response_request_as_the_chat_it_amounts_to() {
        let r = req(r#"{"model": "m", "instructions": "Be brief.", "input": "Hi", "max_output_tokens": 9, "temperature": 0}"#);
        let Prompt::Chat(m) = &r.prompt else { panic!() };
        assert_eq!(m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect::<Vec<_>>(), [("system", "Be brief."), ("user", "Hi")]);
        assert_eq!((r.max_tokens, r.sampling.temperature), (Some(9), 0.0));
        let r = req(r#"{"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather"}, {"type": "input_text", "text": "?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]}],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                      {"type": "function", "name": "get_time"}],
            "tool_choice": {"type": "function", "name": "get_time"}, "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}}"#
            .replace(r#", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}"#, "")
            .as_str());
        let Prompt::Chat(m) = &r.prompt else { panic!() };
        assert_eq!(m.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["user", "assistant", "tool", "assistant"]);
        assert_eq!(m[0].content, "Weather?");
        assert_eq!(m[1].tool_calls.iter().map(|c| c.function.name.as_str()).collect::<Vec<_>>(), ["get_weather", "get_time"]);
        assert_eq!((m[2].tool_call_id.as_deref(), m[2].content.as_str()), (Some("c1"), "sunny"));
        let tools = r.tools.unwrap();
        assert_eq!(tools.set.names, ["get_weather", "get_time"]);
        assert_eq!(tools.choice, crate::generation::tools::ToolChoice::Function("get_time".into()));
        let r = req(r#"{"input": "x", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}"#);
        assert!(r.json.is_some());
    }

    #[test]
    fn refuses_by_the_responses_api_s_names() {
        for (body, needle) in [
            (r#"{"input": "x", "previous_response_id": "resp_1"}"#, "keeps no responses"),
            (r#"{"input": "x", "n": 2}"#, "'n' is not supported"),
            (r#"{}"#, "'input' is required"),
            (r#"{"input": 5}"#, "'input' must be a text or a list"),
            (r#"{"input": [{"type": "web_search_call"}]}"#, "input[0]: items of type 'web_search_call'"),
            (r#"{"input": [{"role": "wizard", "content": "x"}]}"#, "input[0]: unknown role"),
            (r#"{"input": [{"type": "function_call", "name": "f"}]}"#, "'call_id' and 'name'"),
            (r#"{"input": "x", "max_output_tokens": 0}"#, "'max_output_tokens' must be at least 1"),
            (r#"{"input": "x", "tools": [{"type": "web_search"}]}"#, "tools[0]: tools of type 'web_search'"),
            (r#"{"input": "x", "text": {"format": {"type": "yaml"}}}"#, "'text.format' must be"),
            (r#"{"input": "x", "messages": []}"#, "/v1/chat/completions field"),
            ("[1]", "JSON object"),
        ] {
            let e = parse(body.as_bytes()).expect_err(body);
            assert!(e.message.contains(needle) && e.status == 400, "{body}: {}", e.message);
        }
    }

    #[test]
    fn answers_have_the_responses_api_s_shapes() {
        let info = AnswerInfo { id: "resp_1", created: 5, model: "m", chat: true };
        let parts = ReplyParts { reasoning: "Hmm.".into(), content: "Sunny.".into(), calls: vec![ToolCall { name: "f".into(), arguments: r#"{"a":1}"#.into() }] };
        let v: Value = serde_json::from_str(&response(&info, &parts, false, Usage { prompt: 3, cached: 1, completion: 4 })).unwrap();
        assert_eq!((v["object"].as_str(), v["status"].as_str()), (Some("response"), Some("completed")));
        let kinds: Vec<&str> = v["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(v["output"][1]["content"][0]["text"], "Sunny.");
        assert_eq!((v["output"][2]["call_id"].as_str(), v["output"][2]["arguments"].as_str()), (Some("call_resp_1_0"), Some(r#"{"a":1}"#)));
        assert_eq!((v["usage"]["input_tokens"].as_u64(), v["usage"]["total_tokens"].as_u64()), (Some(3), Some(7)));
        let cut: Value = serde_json::from_str(&response(&info, &ReplyParts { content: "Sun".into(), ..Default::default() }, true, Usage { prompt: 3, cached: 0, completion: 1 })).unwrap();
        assert_eq!((cut["status"].as_str(), cut["incomplete_details"]["reason"].as_str()), (Some("incomplete"), Some("max_output_tokens")));

        // The stream: numbered events, items opened and closed in order, the same
        // response at the end.
        let mut s = Stream::new(AnswerInfo { id: "resp_1", created: 5, model: "m", chat: true });
        let mut events = s.start();
        events += &s.text("Hm", "");
        events += &s.text("m.", "Sun");
        events += &s.finish(&ReplyParts { reasoning: String::new(), content: "ny.".into(), calls: parts.calls.clone() }, false, Usage { prompt: 3, cached: 1, completion: 4 });
        let data: Vec<Value> = events.split("\n\n").filter_map(|e| e.split_once("data: ")).map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        let kinds: Vec<&str> = data.iter().map(|d| d["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert!(data.iter().enumerate().all(|(i, d)| d["sequence_number"] == i as u64));
        assert_eq!(data.last().unwrap()["response"]["output"], v["output"]);
    }

    /// Random bodies built from the fields and values both APIs read: every one is
    /// answered (a request or a 400), none panics.
    #[test]
    fn random_bodies_are_read_or_refused() {
        use crate::generation::sampling::Rng;

        const KEYS: [&str; 24] = [
            "input", "instructions", "messages", "tools", "tool_choice", "text", "format", "type", "role", "content", "name",
            "parameters", "properties", "required", "call_id", "arguments", "output", "function", "tool_calls", "max_output_tokens",
            "response_format", "json_schema", "schema", "$ref",
        ];
        const WORDS: [&str; 12] =
            ["user", "assistant", "tool", "function", "function_call", "function_call_output", "message", "json_schema", "object", "required", "#/$defs/x", "auto"];
        fn value(r: &mut Rng, depth: u32) -> Value {
            let pick = r.next_u64() % if depth == 0 { 4 } else { 7 };
            match pick {
                0 => Value::Null,
                1 => json!(r.next_u64().is_multiple_of(3)),
                2 => json!((r.next_u64() % 200) as i64 - 100),
                3 => json!(WORDS[(r.next_u64() % WORDS.len() as u64) as usize]),
                4 | 5 => Value::Object((0..r.next_u64() % 4).map(|_| (KEYS[(r.next_u64() % KEYS.len() as u64) as usize].to_string(), value(r, depth - 1))).collect()),
                _ => Value::Array((0..r.next_u64() % 3).map(|_| value(r, depth - 1)).collect()),
            }
        }
        let mut r = Rng::new(11);
        let (mut read, mut refused) = (0, 0);
        for _ in 0..5000 {
            // A top-level object; its lists hold objects of the fields items have.
            let mut top = serde_json::Map::new();
            for _ in 0..1 + r.next_u64() % 5 {
                let key = KEYS[(r.next_u64() % KEYS.len() as u64) as usize];
                let v = match key {
                    "input" | "messages" | "tools" => Value::Array((0..r.next_u64() % 4).map(|_| value(&mut r, 3)).map(|v| if v.is_object() { v } else { json!({"role": "user", "content": v}) }).collect()),
                    _ => value(&mut r, 3),
                };
                top.insert(key.to_string(), v);
            }
            if r.next_u64().is_multiple_of(2) {
                top.insert("input".into(), json!("hi"));
                top.insert("messages".into(), json!([{"role": "user", "content": "hi"}]));
            }
            let body = Value::Object(top).to_string();
            for outcome in [parse(body.as_bytes()).map(|_| ()), api::parse_request(body.as_bytes(), true).map(|_| ()), api::parse_tokenize(body.as_bytes()).map(|_| ())] {
                match outcome {
                    Ok(()) => read += 1,
                    Err(e) => {
                        assert_eq!(e.status, 400, "{body}");
                        refused += 1;
                    }
                }
            }
        }
        assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
    }
}
