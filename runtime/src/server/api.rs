//! The OpenAI request and response bodies: parsing with validation (every refusal a
//! message for a 400), and the JSON of answers, stream chunks and errors.
//!
//! Unknown fields are ignored, as vLLM and llama-server ignore them; fields the server
//! knows but does not implement (`best_of`, `functions`, `suffix`, ...) are refused
//! rather than silently dropped.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::generation::json::JsonFormat;
use crate::generation::json_schema::Schema;
use crate::generation::logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
use crate::generation::tools::{ToolChoice, ToolRequest, ToolSet};
use crate::generation::sampling::{SamplingParams, DEFAULT_PENALTY_LAST_N};
use crate::text::chat_template::{Message, MessageToolCall};
use crate::text::tool_calls::ToolCall;

/// An error answer: HTTP status and OpenAI's `{"error": {...}}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError { status: 400, message: message.into(), kind: "invalid_request_error", param, code: None }
    }

    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: Some(code) }
    }

    pub fn body(&self) -> String {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}).to_string()
    }
}

/// The prompt of a request, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `/v1/completions`: text (special-token spellings stay text).
    Text(String),
    /// `/v1/completions` with a list of token ids.
    Tokens(Vec<u32>),
    /// `/v1/chat/completions`: messages for the chat template.
    Chat(Vec<Message>),
}

/// The most choices (`n`) one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// A parsed and validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// `max_tokens` or `max_completion_tokens` (`None`: until the context is full).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub stream_usage: bool,
    /// Each generated token's log-probability and this many alternatives: chat's
    /// `logprobs: true` with `top_logprobs`, completions' `logprobs: N`.
    pub logprobs: Option<usize>,
    /// `logit_bias`: (token id, -100 to 100) added to its logit before each choice; the
    /// handler checks the ids against the vocabulary.
    pub logit_bias: Vec<(u32, f32)>,
    /// llama-server's `cache_prompt`: start from a slot's cache where it holds the
    /// prompt's beginning (`None`: the server's `--cache-prompt`).
    pub cache_prompt: Option<bool>,
    /// Completions' `echo`: the reply's text (and with `logprobs`, its log-probabilities
    /// from the prompt's second token on) starts with the prompt's.
    pub echo: bool,
    /// `n`: replies generated from the prompt, each in a slot of its own (1 to
    /// [`MAX_CHOICES`]); with a seed, choice `i` samples from `seed + i`.
    pub n: usize,
    /// `response_format` `json_object` or `json_schema`: the reply is held to one JSON
    /// object, of the schema (`generation::json`, `generation::json_schema`).
    pub json: Option<JsonFormat>,
    /// Chat's `tools`, `tool_choice` and `parallel_tool_calls`.
    pub tools: Option<ToolRequest>,
    /// A thinking model's reasoning given apart (`reasoning_content`), unless
    /// `reasoning_format` is "none" (llama-server's option): then the reply's text as
    /// written.
    pub reasoning: bool,
}

/// Stop strings a request may give (OpenAI allows 4).
pub const MAX_STOP: usize = 16;

type Obj = Map<String, Value>;

fn field<'a>(o: &'a Obj, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn bool_field(o: &Obj, name: &'static str) -> Result<Option<bool>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!("'{name}' must be a boolean"), Some(name))),
    }
}

fn number_field(o: &Obj, name: &'static str) -> Result<Option<f64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(format!("'{name}' must be a number"), Some(name))),
    }
}

fn integer_field(o: &Obj, name: &'static str) -> Result<Option<i64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(i64::MAX)),
        Some(_) => Err(ApiError::invalid(format!("'{name}' must be an integer"), Some(name))),
    }
}

/// A request body read as JSON (as `T`: serde_json's values, or minijinja's where the
/// key order matters).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))
}

/// A request body that must be a JSON object.
fn object_body(body: &[u8]) -> Result<Obj, ApiError> {
    match json_body(body)? {
        Value::Object(o) => Ok(o),
        _ => Err(not_an_object()),
    }
}

pub(crate) fn not_an_object() -> ApiError {
    ApiError::invalid("the body must be a JSON object", None)
}

/// Parses a request body: `chat` for `/v1/chat/completions`, else `/v1/completions`.
pub fn parse_request(body: &[u8], chat: bool) -> Result<CompletionRequest, ApiError> {
    let o = object_body(body)?;
    refuse_unsupported(&o)?;
    if let Some(m) = field(&o, "model") {
        if !m.is_string() {
            return Err(ApiError::invalid("'model' must be a string", Some("model")));
        }
    }
    let prompt = if chat { Prompt::Chat(parse_messages(&o)?) } else { parse_prompt(&o)? };
    let tools = parse_tools(&o, body)?;
    if tools.is_some() && !chat {
        return Err(ApiError::invalid("'tools' is a /v1/chat/completions option", Some("tools")));
    }
    let json = parse_response_format(&o)?;
    if json.is_some() && tools.as_ref().is_some_and(|t| t.choice.requires_call()) {
        return Err(ApiError::invalid("a JSON 'response_format' and a 'tool_choice' that requires a call cannot both hold the reply", Some("tool_choice")));
    }
    // Completions only: the reply starts with the prompt, and may be nothing more.
    let echo = bool_field(&o, "echo")?.unwrap_or(false);
    if echo && chat {
        return Err(ApiError::invalid("'echo' is a /v1/completions option", Some("echo")));
    }
    let least = if echo { 0 } else { 1 };
    let max_tokens = match (integer_field(&o, "max_tokens")?, integer_field(&o, "max_completion_tokens")?) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give 'max_tokens' or 'max_completion_tokens', not both", Some("max_tokens"))),
        (Some(n), None) | (None, Some(n)) if n < least => {
            return Err(ApiError::invalid(format!("'max_tokens' must be at least {least}, not {n}"), Some("max_tokens")))
        }
        (Some(n), None) | (None, Some(n)) => Some(n as usize),
        (None, None) => None,
    };
    let temperature = number_field(&o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(format!("'temperature' must be between 0 and 2, not {temperature}"), Some("temperature")));
    }
    let top_p = number_field(&o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!("'top_p' must be in (0, 1], not {top_p}"), Some("top_p")));
    }
    // vLLM spells "all" -1, llama-server 0.
    let top_k = match integer_field(&o, "top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => return Err(ApiError::invalid(format!("'top_k' must be -1, 0 or positive, not {k}"), Some("top_k"))),
    };
    let seed = match field(&o, "seed") {
        None => None,
        Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().map(|v| v as u64),
        Some(_) => return Err(ApiError::invalid("'seed' must be an integer", Some("seed"))),
    };
    let stop = match field(&o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOP => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("'stop' must be a string or a list of strings", Some("stop")))?,
        Some(Value::Array(_)) => return Err(ApiError::invalid(format!("'stop' takes at most {MAX_STOP} strings"), Some("stop"))),
        Some(_) => return Err(ApiError::invalid("'stop' must be a string or a list of strings", Some("stop"))),
    };
    let penalty = |name: &'static str| -> Result<f32, ApiError> {
        match number_field(&o, name)? {
            None => Ok(0.0),
            Some(v) if (-2.0..=2.0).contains(&v) => Ok(v as f32),
            Some(v) => Err(ApiError::invalid(format!("'{name}' must be between -2 and 2, not {v}"), Some(name))),
        }
    };
    let (frequency_penalty, presence_penalty) = (penalty("frequency_penalty")?, penalty("presence_penalty")?);
    // llama-server's name, and vLLM's (HF's) for the same thing.
    let repeat_penalty = match (number_field(&o, "repeat_penalty")?, number_field(&o, "repetition_penalty")?) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give 'repeat_penalty' or 'repetition_penalty', not both", Some("repeat_penalty"))),
        (Some(v), None) | (None, Some(v)) if !(v > 0.0 && v.is_finite()) => {
            return Err(ApiError::invalid(format!("'repeat_penalty' must be a number > 0, not {v}"), Some("repeat_penalty")))
        }
        (Some(v), None) | (None, Some(v)) => v as f32,
        (None, None) => 1.0,
    };
    // llama-server's window: -1 is the whole context (the scheduler bounds it by the
    // slot's), 0 turns the penalties off.
    let penalty_last_n = match integer_field(&o, "repeat_last_n")? {
        None => DEFAULT_PENALTY_LAST_N,
        Some(-1) => usize::MAX,
        Some(n) if n >= 0 => n as usize,
        Some(n) => return Err(ApiError::invalid(format!("'repeat_last_n' must be -1, 0 or positive, not {n}"), Some("repeat_last_n"))),
    };
    let logprobs = parse_logprobs(&o, chat)?;
    let logit_bias = parse_logit_bias(&o)?;
    let stream = bool_field(&o, "stream")?.unwrap_or(false);
    let stream_usage = match field(&o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => bool_field(so, "include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::invalid("'stream_options' must be an object", Some("stream_options"))),
    };
    Ok(CompletionRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            // Without a seed, a fresh one per request (sampled requests only).
            seed: seed.unwrap_or_else(fresh_seed),
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            penalty_last_n,
        },
        stop,
        ignore_eos: bool_field(&o, "ignore_eos")?.unwrap_or(false),
        stream,
        stream_usage,
        logprobs,
        logit_bias,
        cache_prompt: bool_field(&o, "cache_prompt")?,
        echo,
        n: match integer_field(&o, "n")? {
            None => 1,
            Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
            Some(n) => return Err(ApiError::invalid(format!("'n' must be from 1 to {MAX_CHOICES}, not {n}"), Some("n"))),
        },
        json,
        tools,
        reasoning: match field(&o, "reasoning_format") {
            None => true,
            Some(Value::String(f)) if f == "auto" || f == "none" => f == "auto",
            Some(_) => return Err(ApiError::invalid("'reasoning_format' must be \"auto\" (reasoning apart from the answer) or \"none\"", Some("reasoning_format"))),
        },
    })
}

/// `tools` (a list of `{"type": "function", "function": {"name", "description",
/// "parameters"}}`), `tool_choice` and `parallel_tool_calls`. `None` where no tool is
/// given; `tool_choice` `none` or `auto` then means what it says without tools.
fn parse_tools(o: &Obj, body: &[u8]) -> Result<Option<ToolRequest>, ApiError> {
    let bad = |m: String, param| Err(ApiError::invalid(m, Some(param)));
    let choice = match field(o, "tool_choice") {
        None => None,
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "auto" | "required") => Some(ToolChoice::from_word(s)),
        Some(Value::String(s)) => {
            return bad(format!("'tool_choice' must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, not {s:?}"), "tool_choice")
        }
        Some(c) => match (c.get("type").and_then(Value::as_str), c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str)) {
            (Some("function"), Some(name)) => Some(ToolChoice::Function(name.to_string())),
            _ => return bad("'tool_choice' names a function as {\"type\": \"function\", \"function\": {\"name\": ...}}".into(), "tool_choice"),
        },
    };
    let parallel = bool_field(o, "parallel_tool_calls")?.unwrap_or(true);
    let list = match field(o, "tools") {
        None => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return bad("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}".into(), "tools"),
    };
    if list.is_empty() {
        return match choice {
            None | Some(ToolChoice::None | ToolChoice::Auto) => Ok(None),
            Some(_) => bad("'tool_choice' asks for a call, but the request has no 'tools'".into(), "tool_choice"),
        };
    }
    // The list again with its keys in order: serde_json's map sorts them.
    let ordered: minijinja::Value = json_body(body)?;
    let set = ToolSet::new(list, ordered.get_attr("tools").unwrap_or_default()).map_err(|e| ApiError::invalid(e, Some("tools")))?;
    let choice = choice.unwrap_or(ToolChoice::Auto);
    ToolRequest::new(set, choice, parallel).map(Some).map_err(|e| ApiError::invalid(format!("'tool_choice': {e}"), Some("tool_choice")))
}

/// `POST /tokenize`'s body: `{"prompt": text}` (llama-server's `"content"` too) or
/// `{"messages": [...], "tools": [...]}` for a chat's prompt as the template renders it.
pub fn parse_tokenize(body: &[u8]) -> Result<(Prompt, Option<ToolSet>), ApiError> {
    let o = object_body(body)?;
    match (field(&o, "prompt").or_else(|| field(&o, "content")), field(&o, "messages")) {
        (Some(Value::String(text)), None) => Ok((Prompt::Text(text.clone()), None)),
        (None, Some(_)) => {
            let tools = parse_tools(&o, body)?.map(|t| t.set);
            Ok((Prompt::Chat(parse_messages(&o)?), tools))
        }
        (Some(_), None) => Err(ApiError::invalid("'prompt' must be a string", Some("prompt"))),
        _ => Err(ApiError::invalid("give 'prompt' (a text) or 'messages' (a chat), one of them", Some("prompt"))),
    }
}

/// `POST /tokenize`'s answer: the ids, their count and the context they must fit.
pub fn tokenized(tokens: &[u32], context: usize) -> String {
    json!({"tokens": tokens, "count": tokens.len(), "max_model_len": context}).to_string()
}

/// `POST /detokenize`'s body: `{"tokens": [ids]}`.
pub fn parse_detokenize(body: &[u8]) -> Result<Vec<u32>, ApiError> {
    json_body::<Value>(body)?
        .get("tokens")
        .and_then(Value::as_array)
        .and_then(|ids| ids.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect::<Option<Vec<u32>>>())
        .ok_or_else(|| ApiError::invalid("'tokens' must be a list of token ids", Some("tokens")))
}

/// `POST /detokenize`'s answer.
pub fn detokenized(text: &str) -> String {
    json!({"prompt": text}).to_string()
}

/// `response_format`: `{"type": "text"}` (the default), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` with a schema
/// of the subset `generation::json_schema` takes (what it does not take is refused).
fn parse_response_format(o: &Obj) -> Result<Option<JsonFormat>, ApiError> {
    let bad = |m: String| Err(ApiError::invalid(m, Some("response_format")));
    match field(o, "response_format") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(JsonFormat::Object)),
            Some("json_schema") => {
                let Some(schema) = f.get("json_schema").and_then(|j| j.get("schema")) else {
                    return bad("'response_format' of type 'json_schema' needs 'json_schema': {\"name\": ..., \"schema\": {...}}".into());
                };
                match Schema::compile(schema) {
                    Ok(s) => Ok(Some(JsonFormat::Schema(Arc::new(s)))),
                    Err(e) => bad(format!("'response_format': {e}")),
                }
            }
            _ => bad("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", ...}".into()),
        },
        Some(_) => bad("'response_format' must be an object".into()),
    }
}

/// `logit_bias`: an object from token ids (as strings) to numbers from -100 to 100.
fn parse_logit_bias(o: &Obj) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::invalid(m, Some("logit_bias"));
    match field(o, "logit_bias") {
        None => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let id = k.parse::<u32>().map_err(|_| bad(format!("'logit_bias' keys are token ids, not '{k}'")))?;
                match v.as_f64() {
                    Some(b) if (-100.0..=100.0).contains(&b) => Ok((id, b as f32)),
                    _ => Err(bad(format!("'logit_bias' values are numbers from -100 to 100, not {v}"))),
                }
            })
            .collect(),
        Some(_) => Err(bad("'logit_bias' must be an object of token ids to numbers".into())),
    }
}

/// Chat: `logprobs: true` and `top_logprobs: 0..=20`; completions: `logprobs: 0..=20`.
fn parse_logprobs(o: &Obj, chat: bool) -> Result<Option<usize>, ApiError> {
    let top_range = |n: i64, name: &'static str| -> Result<usize, ApiError> {
        if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
            Ok(n as usize)
        } else {
            Err(ApiError::invalid(format!("'{name}' must be between 0 and {MAX_TOP_LOGPROBS}, not {n}"), Some(name)))
        }
    };
    if chat {
        let top = integer_field(o, "top_logprobs")?;
        match (bool_field(o, "logprobs")?, top) {
            (Some(true), top) => Ok(Some(top_range(top.unwrap_or(0), "top_logprobs")?)),
            (_, Some(_)) => Err(ApiError::invalid("'top_logprobs' needs 'logprobs': true", Some("top_logprobs"))),
            _ => Ok(None),
        }
    } else {
        match field(o, "logprobs") {
            None | Some(Value::Bool(false)) => Ok(None),
            Some(Value::Number(_)) => Ok(Some(top_range(integer_field(o, "logprobs")?.unwrap_or(0), "logprobs")?)),
            Some(_) => Err(ApiError::invalid("'logprobs' must be an integer (alternatives per token)", Some("logprobs"))),
        }
    }
}

/// The `logprobs` of a choice for `entries` (tokens in order), each token spelled by
/// `token` (its bytes); `offset` is where the first token's text starts in the reply
/// (completions' `text_offset`, in characters), advanced past the last. `first`: an
/// echoed prompt's first token, which comes before `entries` with no log-probability
/// (`null`, as nothing precedes it; completions only).
pub fn logprobs(chat: bool, first: Option<u32>, entries: &[TokenLogprob], token: &dyn Fn(u32) -> Vec<u8>, offset: &mut usize) -> Value {
    let text = |id: u32| String::from_utf8_lossy(&token(id)).into_owned();
    if chat {
        let entry = |id: u32, logprob: f32| json!({"token": text(id), "logprob": logprob, "bytes": token(id)});
        let content: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut v = entry(e.token, e.logprob);
                v["top_logprobs"] = e.top().iter().map(|&(id, lp)| entry(id, lp)).collect();
                v
            })
            .collect();
        json!({"content": content, "refusal": null})
    } else {
        let (mut tokens, mut values, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // The echoed first token (no log-probability, no alternatives), then the entries.
        let rows = first.map(|id| (id, Value::Null, Value::Null)).into_iter().chain(entries.iter().map(|e| {
            let top = e.top().iter().map(|&(id, lp)| (text(id), Value::from(lp))).collect::<Map<String, Value>>();
            (e.token, Value::from(e.logprob), Value::Object(top))
        }));
        for (id, value, top) in rows {
            let t = text(id);
            offsets.push(*offset);
            *offset += t.chars().count();
            tokens.push(t);
            values.push(value);
            tops.push(top);
        }
        json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
    }
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Options OpenAI's API has that this server does not implement: refused by name.
fn refuse_unsupported(o: &Obj) -> Result<(), ApiError> {
    let unsupported = |name: &'static str, what: &str| Err(ApiError::invalid(format!("'{name}' is not supported: {what}"), Some(name)));
    match integer_field(o, "best_of")? {
        None | Some(1) => {}
        Some(_) => return unsupported("best_of", "one candidate per request"),
    }
    // The deprecated spellings of tools.
    if field(o, "functions").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
        return unsupported("functions", "give the functions as 'tools'");
    }
    if field(o, "function_call").is_some_and(|v| v.as_str().is_none_or(|s| s != "none" && s != "auto")) {
        return unsupported("function_call", "use 'tool_choice'");
    }
    if field(o, "suffix").is_some_and(|v| v.as_str() != Some("")) {
        return unsupported("suffix", "insertion is not implemented");
    }
    Ok(())
}

fn parse_prompt(o: &Obj) -> Result<Prompt, ApiError> {
    let bad = || ApiError::invalid("'prompt' must be a string, a list of one string, or a list of token ids", Some("prompt"));
    match field(o, "prompt") {
        None => Err(ApiError::invalid("'prompt' is required", Some("prompt"))),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [] => Err(ApiError::invalid("'prompt' is empty", Some("prompt"))),
            items if items.iter().all(Value::is_string) => {
                Err(ApiError::invalid("'prompt' with several prompts is not supported: one prompt per request", Some("prompt")))
            }
            items => items
                .iter()
                .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<Vec<u32>>>()
                .map(Prompt::Tokens)
                .ok_or_else(bad),
        },
        Some(_) => Err(bad()),
    }
}

/// Roles a message may have; `developer` (OpenAI's newer name) is read as `system`.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn parse_messages(o: &Obj) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(items)) = field(o, "messages") else {
        return Err(ApiError::invalid("'messages' is required: a list of {\"role\", \"content\"} objects", Some("messages")));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("'messages' is empty", Some("messages")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |what: String| ApiError::invalid(format!("messages[{i}]: {what}"), Some("messages"));
            let Value::Object(m) = m else { return Err(bad("must be an object".into())) };
            let role = match m.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => if r == "developer" { "system" } else { r.as_str() },
                Some(Value::String(r)) if r == "function" => return Err(bad("role 'function' is deprecated: give tool results as role 'tool'".into())),
                Some(Value::String(r)) => return Err(bad(format!("unknown role '{r}' (system, user, assistant or tool)"))),
                _ => return Err(bad("'role' must be a string".into())),
            };
            let tool_calls = match m.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(calls)) if role == "assistant" => calls
                    .iter()
                    .enumerate()
                    .map(|(j, c)| parse_message_call(c).map_err(|e| bad(format!("tool_calls[{j}]: {e}"))))
                    .collect::<Result<_, _>>()?,
                Some(_) if role == "assistant" => return Err(bad("'tool_calls' must be a list".into())),
                Some(_) => return Err(bad(format!("a '{role}' message has no 'tool_calls' (assistant messages do)"))),
            };
            let tool_call_id = match m.get("tool_call_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) if role == "tool" => Some(id.clone()),
                Some(_) => return Err(bad("'tool_call_id' is a string, on 'tool' messages".into())),
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (Some(kind), _) if kind != "text" => return Err(bad(format!("content of type '{kind}' is not supported (text only)"))),
                            _ => return Err(bad("a content part must be {\"type\": \"text\", \"text\": ...}".into())),
                        }
                    }
                    text
                }
                Some(Value::Null) | None if role == "assistant" => String::new(),
                _ => return Err(bad("'content' must be a string or a list of text parts".into())),
            };
            Ok(Message { tool_calls, tool_call_id, ..Message::new(role, content) })
        })
        .collect()
}

/// An assistant message's call: `{"id", "type": "function", "function": {"name",
/// "arguments"}}`, the arguments the text of a JSON object (or the object).
fn parse_message_call(c: &Value) -> Result<MessageToolCall, String> {
    let id = match c.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err("'id' must be a string".into()),
    };
    if c.get("type").is_some_and(|t| t != "function") {
        return Err("'type' must be \"function\"".into());
    }
    let Some(Value::Object(f)) = c.get("function") else { return Err("a call is {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}".into()) };
    let Some(Value::String(name)) = f.get("name") else { return Err("a call's function needs a 'name'".into()) };
    let arguments = match f.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(a)) => a.clone(),
        Some(a @ Value::Object(_)) => a.to_string(),
        Some(_) => return Err("'arguments' must be the text of a JSON object".into()),
    };
    MessageToolCall::new(id, name, &arguments).map_err(|e| e.to_string())
}

/// What an answer needs besides the text.
#[derive(Debug, Clone, Copy)]
pub struct AnswerInfo<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub chat: bool,
}

/// An answer's token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: usize,
    /// Prompt tokens a slot's cache already held (`cache_prompt`).
    pub cached: usize,
    pub completion: usize,
}

fn usage(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
    })
}

/// A reply's calls as OpenAI's `tool_calls`: `{"id", "type": "function", "function":
/// {"name", "arguments"}}` each (with `"index"` in a stream's delta), ids `call_` and
/// `id_base`, the call's number after it.
pub fn tool_calls(calls: &[ToolCall], id_base: &str, streamed: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut v = json!({"id": format!("call_{id_base}_{k}"), "type": "function", "function": {"name": c.name, "arguments": c.arguments}});
            if streamed {
                v["index"] = k.into();
            }
            v
        })
        .collect()
}

/// One choice of a whole answer: its index, text, finish reason and `logprobs` (from
/// [`logprobs`], if asked for).
pub fn choice(info: &AnswerInfo, index: usize, text: &str, finish: &str, logprobs: Option<Value>) -> Value {
    let logprobs = logprobs.unwrap_or(Value::Null);
    if info.chat {
        json!({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": logprobs})
    } else {
        json!({"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs})
    }
}

/// A chat [`choice`] whose reply called tools: its message's `tool_calls` ([`tool_calls`]),
/// and `content` null where no text came with them.
pub fn add_tool_calls(choice: &mut Value, calls: Value) {
    let message = &mut choice["message"];
    if message["content"] == "" {
        message["content"] = Value::Null;
    }
    message["tool_calls"] = calls;
}

/// A chat stream's chunk of choice `index` whose delta is reasoning text (and the
/// `logprobs` of its tokens).
pub fn reasoning_chunk(info: &AnswerInfo, index: usize, text: &str, logprobs: Option<Value>) -> String {
    let choice = json!({"index": index, "delta": {"reasoning_content": text}, "finish_reason": null, "logprobs": logprobs.unwrap_or(Value::Null)});
    stream_chunk(info, json!([choice])).to_string()
}

/// A chat stream's chunk of choice `index` whose delta is the reply's calls
/// ([`tool_calls`], streamed).
pub fn tool_calls_chunk(info: &AnswerInfo, index: usize, calls: Value) -> String {
    let choice = json!({"index": index, "delta": {"tool_calls": calls}, "finish_reason": null, "logprobs": null});
    stream_chunk(info, json!([choice])).to_string()
}

/// A whole (non-streamed) answer of `choices` ([`choice`]).
pub fn answer(info: &AnswerInfo, choices: Vec<Value>, counts: Usage) -> String {
    json!({
        "id": info.id,
        "object": if info.chat { "chat.completion" } else { "text_completion" },
        "created": info.created,
        "model": info.model,
        "choices": choices,
        "usage": usage(counts),
        "system_fingerprint": null,
    })
    .to_string()
}

/// One stream chunk of choice `index`: `text` (the chat's first chunk carries the role
/// instead), the finish reason on the last one, and the `logprobs` of the tokens since
/// the last chunk.
pub fn chunk(info: &AnswerInfo, index: usize, text: Option<&str>, first: bool, finish: Option<&str>, logprobs: Option<Value>) -> String {
    let logprobs = logprobs.unwrap_or(Value::Null);
    let choice = if info.chat {
        let mut delta = Map::new();
        if first {
            delta.insert("role".into(), "assistant".into());
            delta.insert("content".into(), "".into());
        }
        if let Some(t) = text {
            delta.insert("content".into(), t.into());
        }
        json!({"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs})
    } else {
        json!({"index": index, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": logprobs})
    };
    stream_chunk(info, json!([choice])).to_string()
}

/// A stream chunk of `choices`, as every chunk of a stream starts.
fn stream_chunk(info: &AnswerInfo, choices: Value) -> Value {
    json!({
        "id": info.id,
        "object": if info.chat { "chat.completion.chunk" } else { "text_completion" },
        "created": info.created,
        "model": info.model,
        "choices": choices,
    })
}

/// The stream's usage chunk (`stream_options.include_usage`): no choices.
pub fn usage_chunk(info: &AnswerInfo, counts: Usage) -> String {
    let mut chunk = stream_chunk(info, json!([]));
    chunk["usage"] = usage(counts);
    chunk.to_string()
}

/// `GET /v1/models`.
pub fn models(model: &str, created: u64, context: usize) -> String {
    json!({"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "olmort", "max_model_len": context}]})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str, chat: bool) -> ApiError {
        parse_request(body.as_bytes(), chat).unwrap_err()
    }

    #[test]
    fn parses_the_options() {
        let r = parse_request(
            br#"{"model": "m", "prompt": "hi", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": -1, "seed": 3,
                "stop": ["a", "b"], "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}, "user": "x"}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.sampling, SamplingParams { temperature: 0.0, top_k: 0, top_p: 0.5, seed: 3, ..SamplingParams::default() });
        assert_eq!(r.stop, ["a", "b"]);
        assert!(r.ignore_eos && r.stream && r.stream_usage);
        let r = parse_request(br#"{"prompt": [1, 2, 3], "max_completion_tokens": 2, "stop": "x"}"#, false).unwrap();
        assert_eq!((r.prompt, r.max_tokens, r.stop), (Prompt::Tokens(vec![1, 2, 3]), Some(2), vec!["x".to_string()]));
        let r = parse_request(
            br#"{"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Chat(vec![Message::new("system", "be brief"), Message::new("user", "ab")]));
        assert_eq!(r.sampling.temperature, 1.0, "OpenAI's default temperature");
        assert!(!r.sampling.penalizes(), "no penalties unless asked");
        assert_eq!(r.logprobs, None);
        let logprobs = |body: &str, chat| parse_request(body.as_bytes(), chat).unwrap().logprobs;
        assert_eq!(logprobs(r#"{"prompt": "a", "logprobs": 3}"#, false), Some(3));
        assert_eq!(logprobs(r#"{"prompt": "a", "logprobs": null}"#, false), None);
        assert_eq!(logprobs(r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true}"#, true), Some(0));
        assert_eq!(logprobs(r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 20}"#, true), Some(20));
        assert_eq!(logprobs(r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": false}"#, true), None);
        let mut bias = parse_request(br#"{"prompt": "a", "logit_bias": {"7": -100, "12": 2.5}}"#, false).unwrap().logit_bias;
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, [(7, -100.0), (12, 2.5)]);
    }

    #[test]
    fn parses_the_penalties() {
        let r = parse_request(br#"{"prompt": "a", "frequency_penalty": 0.5, "presence_penalty": -0.25, "repeat_penalty": 1.3, "repeat_last_n": 16}"#, false).unwrap();
        let s = r.sampling;
        assert_eq!((s.frequency_penalty, s.presence_penalty, s.repeat_penalty, s.penalty_last_n), (0.5, -0.25, 1.3, 16));
        let r = parse_request(br#"{"prompt": "a", "repetition_penalty": 1.2, "repeat_last_n": -1}"#, false).unwrap();
        assert_eq!((r.sampling.repeat_penalty, r.sampling.penalty_last_n), (1.2, usize::MAX));
        let r = parse_request(br#"{"prompt": "a", "frequency_penalty": 1, "repeat_last_n": 0}"#, false).unwrap();
        assert!(!r.sampling.penalizes(), "a window of 0 turns them off");
    }

    #[test]
    fn refuses_bad_and_unsupported_requests() {
        for (body, chat, needle) in [
            ("{", false, "not valid JSON"),
            ("[1]", false, "JSON object"),
            ("{}", false, "'prompt' is required"),
            (r#"{"prompt": 5}"#, false, "'prompt' must be"),
            (r#"{"prompt": ["a", "b"]}"#, false, "several prompts"),
            (r#"{"prompt": [1, -2]}"#, false, "'prompt' must be"),
            (r#"{"prompt": "a", "max_tokens": 0}"#, false, "at least 1"),
            (r#"{"prompt": "a", "max_tokens": "5"}"#, false, "must be an integer"),
            (r#"{"prompt": "a", "max_tokens": 1, "max_completion_tokens": 1}"#, false, "not both"),
            (r#"{"prompt": "a", "temperature": 3}"#, false, "between 0 and 2"),
            (r#"{"prompt": "a", "temperature": "hot"}"#, false, "must be a number"),
            (r#"{"prompt": "a", "top_p": 0}"#, false, "(0, 1]"),
            (r#"{"prompt": "a", "top_k": -3}"#, false, "'top_k'"),
            (r#"{"prompt": "a", "seed": 1.5}"#, false, "'seed'"),
            (r#"{"prompt": "a", "stop": [1]}"#, false, "'stop'"),
            (r#"{"prompt": "a", "stream": "yes"}"#, false, "boolean"),
            (r#"{"prompt": "a", "n": 0}"#, false, "'n' must be from 1 to 16"),
            (r#"{"prompt": "a", "n": 17}"#, false, "'n' must be from 1 to 16"),
            (r#"{"prompt": "a", "logprobs": 21}"#, false, "between 0 and 20"),
            (r#"{"prompt": "a", "logprobs": true}"#, false, "'logprobs' must be an integer"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}"#, true, "needs 'logprobs': true"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": -1}"#, true, "between 0 and 20"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": 1}"#, true, "must be a boolean"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "echo": true}"#, true, "'echo' is a /v1/completions option"),
            (r#"{"prompt": "a", "max_tokens": 0}"#, false, "at least 1"),
            (r#"{"prompt": "a", "echo": true, "max_tokens": -1}"#, false, "at least 0"),
            (r#"{"prompt": "a", "model": 3}"#, false, "'model'"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]}"#, true, "tools[0] must be"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": {"type": "function"}}"#, true, "'tools' must be a list"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "a b"}}]}"#, true, "'name' is 1 to 64"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}"#, true, "'f' is given twice"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}"#, true, "'parameters' must be"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"}"#, true, "'tool_choice' must be"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}"#, true, "'g' is not among"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tool_choice": "required"}"#, true, "has no 'tools'"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a-b": {}}}}}], "tool_choice": "required"}"#, true, "'a-b' cannot be a keyword argument"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required", "response_format": {"type": "json_object"}}"#, true, "cannot both hold"),
            (r#"{"prompt": "a", "tools": [{"type": "function", "function": {"name": "f"}}]}"#, false, "/v1/chat/completions option"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "functions": [{"name": "f"}]}"#, true, "'functions' is not supported"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "function_call": {"name": "f"}}"#, true, "'function_call' is not supported"),
            (r#"{"messages": [{"role": "function", "content": "a"}]}"#, true, "role 'tool'"),
            (r#"{"messages": [{"role": "user", "content": "a", "tool_calls": []}]}"#, true, "assistant messages do"),
            (r#"{"messages": [{"role": "user", "content": "a", "tool_call_id": "x"}]}"#, true, "on 'tool' messages"),
            (r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": {}}]}"#, true, "must be a list"),
            (r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}"#, true, "tool_calls[0]: a call's arguments must be a JSON object"),
            (r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{"}}]}]}"#, true, "are not JSON"),
            (r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "code", "function": {"name": "f"}}]}]}"#, true, "'type' must be"),
            (r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"function": {}}]}]}"#, true, "needs a 'name'"),
            (r#"{"messages": [{"role": "tool", "content": null}]}"#, true, "'content'"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "reasoning_format": "deepseek"}"#, true, "'reasoning_format'"),
            (r#"{"messages": [{"role": "user", "content": "a"}], "frequency_penalty": 2.5}"#, true, "between -2 and 2"),
            (r#"{"prompt": "a", "presence_penalty": "x"}"#, false, "must be a number"),
            (r#"{"prompt": "a", "repeat_penalty": 0}"#, false, "'repeat_penalty' must be a number > 0"),
            (r#"{"prompt": "a", "repetition_penalty": -1}"#, false, "'repeat_penalty' must be a number > 0"),
            (r#"{"prompt": "a", "repeat_penalty": 1.1, "repetition_penalty": 1.1}"#, false, "not both"),
            (r#"{"prompt": "a", "repeat_last_n": -2}"#, false, "'repeat_last_n'"),
            (r#"{"prompt": "a", "logit_bias": {"x": 1}}"#, false, "keys are token ids"),
            (r#"{"prompt": "a", "logit_bias": {"5": 101}}"#, false, "from -100 to 100"),
            (r#"{"prompt": "a", "logit_bias": {"5": "1"}}"#, false, "from -100 to 100"),
            (r#"{"prompt": "a", "logit_bias": [5]}"#, false, "must be an object"),
            (r#"{"prompt": "a", "cache_prompt": 1}"#, false, "'cache_prompt' must be a boolean"),
            (r#"{"messages": []}"#, true, "empty"),
            (r#"{"prompt": "a"}"#, true, "'messages' is required"),
            (r#"{"messages": [{"role": "wizard", "content": "a"}]}"#, true, "unknown role 'wizard'"),
            (r#"{"messages": [{"role": "user"}]}"#, true, "'content'"),
            (r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, true, "'image_url'"),
            (r#"{"messages": ["hi"]}"#, true, "must be an object"),
        ] {
            let e = err(body, chat);
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
            let v: Value = serde_json::from_str(&e.body()).unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn parses_tools_calls_and_results() {
        let body = r#"{"messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"z\": 1, \"a\": [true]}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"z": {}, "a": {}}}}},
                      {"type": "function", "function": {"name": "now"}}],
            "parallel_tool_calls": false}"#;
        let r = parse_request(body.as_bytes(), true).unwrap();
        let Prompt::Chat(messages) = &r.prompt else { panic!("a chat") };
        let call = &messages[1].tool_calls[0];
        assert_eq!((call.id.as_deref(), call.function.name.as_str()), (Some("c1"), "get_weather"));
        // The arguments keep their order for the template.
        assert_eq!(call.function.arguments.to_string(), "{'z': 1, 'a': [True]}");
        assert_eq!((messages[2].role.as_str(), messages[2].tool_call_id.as_deref(), messages[2].content.as_str()), ("tool", Some("c1"), "sunny"));
        let tools = r.tools.unwrap();
        assert_eq!((tools.set.names, tools.choice, tools.parallel), (vec!["get_weather".to_string(), "now".to_string()], ToolChoice::Auto, false));
        assert!(tools.grammar.is_some_and(|g| g.is_lazy()), "auto holds a block the model opens");
        let choice = |c: &str| {
            let body = format!(r#"{{"messages": [{{"role": "user", "content": "a"}}], "tools": [{{"type": "function", "function": {{"name": "f"}}}}], "tool_choice": {c}}}"#);
            parse_request(body.as_bytes(), true).unwrap().tools.unwrap().choice
        };
        assert_eq!(choice(r#""none""#), ToolChoice::None);
        assert_eq!(choice(r#""required""#), ToolChoice::Required);
        let body = r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}"#;
        assert!(parse_request(body.as_bytes(), true).unwrap().tools.unwrap().grammar.is_some_and(|g| !g.is_lazy()));
        assert_eq!(choice(r#"{"type": "function", "function": {"name": "f"}}"#), ToolChoice::Function("f".into()));
        // No tools: nothing to call, whatever 'none' or 'auto' say.
        let r = parse_request(br#"{"messages": [{"role": "user", "content": "a"}], "tools": [], "tool_choice": "auto"}"#, true).unwrap();
        assert!(r.tools.is_none());
    }

    #[test]
    fn answers_have_openai_shapes() {
        let info = AnswerInfo { id: "x", created: 1, model: "m", chat: true };
        let v: Value = serde_json::from_str(&answer(&info, vec![choice(&info, 0, "hi", "stop", None)], Usage { prompt: 3, cached: 2, completion: 1 })).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["usage"]["total_tokens"], 4);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert!(v["choices"][0]["logprobs"].is_null());
        let v: Value = serde_json::from_str(&chunk(&info, 0, None, true, None, None)).unwrap();
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        let calls = [ToolCall { name: "f".into(), arguments: r#"{"a":1}"#.into() }, ToolCall { name: "g".into(), arguments: "{}".into() }];
        let mut c = choice(&info, 1, "", "tool_calls", None);
        add_tool_calls(&mut c, tool_calls(&calls, "x_1", false));
        assert_eq!(
            c["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_x_1_0", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_x_1_1", "type": "function", "function": {"name": "g", "arguments": "{}"}}]})
        );
        let v: Value = serde_json::from_str(&tool_calls_chunk(&info, 1, tool_calls(&calls, "x_1", true))).unwrap();
        assert_eq!(v["choices"][0]["delta"]["tool_calls"][1]["index"], 1);
        assert_eq!(v["choices"][0]["delta"]["tool_calls"][1]["function"]["name"], "g");
        let info = AnswerInfo { chat: false, ..info };
        let v: Value = serde_json::from_str(&chunk(&info, 2, Some("a"), false, Some("length"), None)).unwrap();
        assert_eq!((v["choices"][0]["text"].as_str(), v["choices"][0]["finish_reason"].as_str()), (Some("a"), Some("length")));
        assert_eq!(v["choices"][0]["index"], 2);
    }

    #[test]
    fn logprobs_have_openai_shapes() {
        // Tokens 1 ("ab") and 2 ("é"), the second with one alternative.
        let spell = |id: u32| match id {
            1 => b"ab".to_vec(),
            2 => "é".as_bytes().to_vec(),
            _ => b"z".to_vec(),
        };
        let mut second = TokenLogprob::new(&[0.0, 0.0, 1.0], 2, 1);
        second.logprob = -0.5;
        let entries = [TokenLogprob::new(&[0.0, 1.0], 1, 0), second];
        let chat = logprobs(true, None, &entries, &spell, &mut 0);
        let content = chat["content"].as_array().unwrap();
        assert_eq!((content[0]["token"].as_str(), content[1]["token"].as_str()), (Some("ab"), Some("é")));
        assert_eq!(content[1]["bytes"], json!([0xc3, 0xa9]));
        assert_eq!(content[1]["logprob"], -0.5);
        assert_eq!(content[0]["top_logprobs"], json!([]));
        assert_eq!(content[1]["top_logprobs"][0]["token"], "é");
        let mut offset = 3;
        let legacy = logprobs(false, None, &entries, &spell, &mut offset);
        assert_eq!(legacy["tokens"], json!(["ab", "é"]));
        assert_eq!(legacy["token_logprobs"][1], -0.5);
        assert_eq!(legacy["text_offset"], json!([3, 5]));
        assert_eq!(offset, 6, "characters, not bytes");
        assert!(legacy["top_logprobs"][1]["é"].is_number());
        let echoed = logprobs(false, Some(2), &entries, &spell, &mut 0);
        assert_eq!(echoed["tokens"], json!(["é", "ab", "é"]));
        assert_eq!((echoed["token_logprobs"][0].is_null(), echoed["top_logprobs"][0].is_null()), (true, true));
        assert_eq!(echoed["text_offset"], json!([0, 1, 3]));
        let info = AnswerInfo { id: "x", created: 1, model: "m", chat: false };
        let answer: Value = serde_json::from_str(&answer(&info, vec![choice(&info, 0, "abé", "length", Some(legacy))], Usage { prompt: 1, cached: 0, completion: 2 })).unwrap();
        assert_eq!(answer["choices"][0]["logprobs"]["tokens"][0], "ab");
    }
}
