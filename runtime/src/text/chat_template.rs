//! Chat templates: a conversation rendered to the model's prompt text exactly as
//! transformers' `apply_chat_template` renders it, and encoded to token ids with the
//! special-token spellings of the messages kept as text.
//!
//! Rendering. The template is a Jinja program run by minijinja, set up as transformers
//! sets up jinja2 (`_compile_jinja_template`): `trim_blocks` and `lstrip_blocks`, a
//! single trailing newline dropped, loop controls, `raise_exception(msg)` (an error with
//! that message), `strftime_now(format)` (the local time), `tojson` as `json.dumps`
//! (`ensure_ascii`, `indent`, `separators`, `sort_keys`), Python's string and dict
//! methods, `{{ value }}` and `|string` printed as Python's `str()` (`True`, `None`), and
//! the `{% generation %}` block of transformers' assistant-mask extension, which renders
//! its body (as a `{% with %}` scope). The template sees `messages`, `tools`,
//! `documents` (none), `add_generation_prompt` and the special-token strings
//! (`bos_token`, `eos_token`, ...).
//!
//! Encoding. transformers encodes the rendered string as one text, so a user who types
//! `<|im_end|>` gets the control token itself: a prompt injection. This module encodes as
//! `apply_chat_template(..., sanitize_control_tokens=True)` does instead: before
//! rendering, every special-token spelling inside the messages' (and tools') strings is
//! wrapped in two private-use markers (U+F0000, U+F0001; markers already in the strings
//! are dropped so they cannot forge one); the rendered string is cut at the markers; the
//! pieces the template wrote are encoded with special tokens recognised, each marked
//! spelling as plain text, and a lone marker (a template that cut a spelling apart) only
//! separates pieces. Each piece after the first is encoded behind a newline that is then
//! removed, as transformers does. The ids are those of transformers' sanitized encoding
//! (`tests/fixtures/chat/cases.json`); every token of the vocabulary's special list counts
//! as a control token.

use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use olmo_format::ChatInfo;
use serde::{Deserialize, Serialize};

use crate::text::python_values::{json_dumps, python_str, JsonOptions};
use crate::text::tokenizer::Tokenizer;
use crate::text::reasoning::template_thinks;
use crate::text::tool_calls::ToolSyntax;

/// Why a conversation could not become a prompt; one line each.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// The blob has no chat template (or not the one asked for).
    #[error("{0}")]
    NoTemplate(String),
    /// The template does not compile, or failed while rendering (`raise_exception` and
    /// other errors), with the template's name and line.
    #[error("chat template {name:?}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Template { name: String, line: Option<usize>, message: String },
    /// The messages are malformed (not a list of `{role, content}` strings, ...).
    #[error("{0}")]
    Messages(String),
    /// The rendered prompt cannot be encoded (a byte the vocabulary lacks).
    #[error("{0}")]
    Encode(String),
}

/// One message of a conversation, as in OpenAI's and transformers' chat format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ... (templates decide which they accept).
    pub role: String,
    /// The text (`null` reads as empty: an assistant message that only calls tools).
    #[serde(deserialize_with = "null_as_empty")]
    pub content: String,
    /// An assistant's calls of tools (OpenAI's `tool_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<MessageToolCall>,
    /// A tool result's call (`tool` messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// The message as a template sees it: `role` and `content` (`none` for an assistant
    /// message with calls and no text, as OpenAI's `null`), and `tool_calls` and
    /// `tool_call_id` where the message has them.
    fn value(&self) -> Value {
        let mut pairs = vec![("role", Value::from(self.role.as_str()))];
        let no_text = self.content.is_empty() && !self.tool_calls.is_empty();
        pairs.push(("content", if no_text { Value::from(()) } else { Value::from(self.content.as_str()) }));
        if !self.tool_calls.is_empty() {
            pairs.push(("tool_calls", Value::from(self.tool_calls.iter().map(MessageToolCall::value).collect::<Vec<_>>())));
        }
        if let Some(id) = &self.tool_call_id {
            pairs.push(("tool_call_id", Value::from(id.as_str())));
        }
        Value::from_pairs(pairs)
    }
}

/// A call an assistant message made: `{"id", "type": "function", "function": {"name",
/// "arguments"}}`, the arguments a JSON object or (OpenAI's spelling) its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: CalledFunction,
}

/// The function of a [`MessageToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalledFunction {
    pub name: String,
    /// A mapping, keys in the order given: transformers' templates read the arguments
    /// as a dict (`arguments.items()`), not as text.
    #[serde(deserialize_with = "arguments_mapping")]
    pub arguments: Value,
}

impl MessageToolCall {
    /// A call of `name` with `arguments`, the text of a JSON object.
    pub fn new(id: Option<String>, name: &str, arguments: &str) -> Result<MessageToolCall, ChatError> {
        let arguments = mapping_of(arguments).map_err(ChatError::Messages)?;
        Ok(MessageToolCall { id, kind: function_type(), function: CalledFunction { name: name.to_string(), arguments } })
    }

    fn value(&self) -> Value {
        let function = Value::from_pairs([("name", Value::from(self.function.name.as_str())), ("arguments", self.function.arguments.clone())]);
        let mut pairs = Vec::with_capacity(3);
        if let Some(id) = &self.id {
            pairs.push(("id", Value::from(id.as_str())));
        }
        pairs.push(("type", Value::from(self.kind.as_str())));
        pairs.push(("function", function));
        Value::from_pairs(pairs)
    }
}

fn function_type() -> String {
    "function".into()
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// A call's arguments from a JSON object, or from a string holding one.
fn arguments_mapping<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let v = Value::deserialize(d)?;
    let v = match v.as_str() {
        Some(text) => mapping_of(text).map_err(serde::de::Error::custom)?,
        None => v,
    };
    if v.kind() != ValueKind::Map {
        return Err(serde::de::Error::custom("a call's 'arguments' must be a JSON object or its text"));
    }
    Ok(v)
}

/// The mapping of a JSON object's text, keys in order.
fn mapping_of(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.kind() == ValueKind::Map => Ok(v),
        Ok(_) => Err(format!("a call's arguments must be a JSON object, not {text:?}")),
        Err(e) => Err(format!("a call's arguments are not JSON ({e}): {text:?}")),
    }
}

/// Parses an OpenAI-style message list: a JSON array of `{"role": ..., "content": ...}`
/// with string values.
pub fn parse_messages(json: &str) -> Result<Vec<Message>, ChatError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| ChatError::Messages(format!("not JSON: {e}")))?;
    let list = value
        .as_array()
        .ok_or_else(|| ChatError::Messages("expected a JSON list of {\"role\", \"content\"} messages".into()))?;
    if list.is_empty() {
        return Err(ChatError::Messages("the message list is empty".into()));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::from_value(m.clone()).map_err(|e| {
                ChatError::Messages(format!("message {i}: {e} (a message is {{\"role\": string, \"content\": string}})"))
            })
        })
        .collect()
}

/// Function definitions passed to a template as `tools` (JSON, key order kept).
#[derive(Debug, Clone)]
pub struct Tools(Value);

impl Tools {
    /// Parses a JSON list of tool definitions.
    pub fn parse(json: &str) -> Result<Tools, ChatError> {
        Tools::from_value(serde_json::from_str(json).map_err(|e| ChatError::Messages(format!("tools: not JSON: {e}")))?)
    }

    /// A list of tool definitions already read (with its key order).
    pub fn from_value(value: Value) -> Result<Tools, ChatError> {
        if value.kind() != ValueKind::Seq {
            return Err(ChatError::Messages("tools: expected a JSON list".into()));
        }
        Ok(Tools(value))
    }
}

/// Marks transformers wraps control tokens in user strings with.
const MARK_START: char = '\u{F0000}';
const MARK_END: char = '\u{F0001}';

/// The name the template is compiled under (error messages use the template's own name).
const TEMPLATE: &str = "chat";

/// What one rendering may spend: minijinja counts about one unit per instruction and
/// one per 64 bytes it allocates, so a template from a blob cannot loop for long or
/// exhaust memory (this bounds it to about 320 MB and well under a second). A real
/// template spends a few dozen units per message and one per 64 bytes of its text:
/// 2000 messages of 4000 characters fit (a test).
const TEMPLATE_FUEL: u64 = 5_000_000;

/// A compiled chat template with the special-token strings it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    name: String,
    /// How the template's model writes calls, where olmort reads them.
    tool_syntax: Option<ToolSyntax>,
    /// Whether its model writes reasoning in `<think>` tags.
    thinks: bool,
    /// `bos_token`, `eos_token`, ... as template variables.
    special_tokens: Vec<(String, Value)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles the template `name` of a blob's chat info (`None`: `default`).
    pub fn from_chat_info(chat: Option<&ChatInfo>, name: Option<&str>) -> Result<ChatTemplate, ChatError> {
        let chat = chat.ok_or_else(|| {
            ChatError::NoTemplate("this model has no chat template (pack it from a folder with tokenizer_config.json or chat_template.jinja)".into())
        })?;
        let wanted = name.unwrap_or(ChatInfo::DEFAULT);
        let template = chat.template(wanted).ok_or_else(|| {
            let names: Vec<String> = chat.templates.iter().map(|t| format!("{:?}", t.name)).collect();
            ChatError::NoTemplate(format!("no chat template named {wanted:?} in this model (it has {})", names.join(", ")))
        })?;
        let specials: Vec<(String, String)> =
            chat.special_tokens.iter().map(|t| (t.name.clone(), t.content.clone())).collect();
        ChatTemplate::new(&template.name, &template.source, &specials)
    }

    /// Compiles `source`; `special_tokens` are `(name, spelling)` pairs such as
    /// `("eos_token", "<|endoftext|>")`.
    pub fn new(name: &str, source: &str, special_tokens: &[(String, String)]) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().expect("default delimiters");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_formatter(|out, _state, value| {
            let mut s = String::new();
            python_str(value, &mut s);
            out.write_str(&s).map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
        });
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: &str| {
            crate::sys::strftime_now(format).map_err(|e| Error::new(ErrorKind::InvalidOperation, e))
        });
        env.add_filter("tojson", tojson);
        env.add_filter("string", |value: Value| {
            let mut s = String::new();
            python_str(&value, &mut s);
            s
        });
        env.add_template_owned(TEMPLATE, with_generation_blocks(source))
            .map_err(|e| template_error(name, &e))?;
        Ok(ChatTemplate {
            env,
            name: name.to_string(),
            tool_syntax: ToolSyntax::of_template(source),
            thinks: template_thinks(source),
            special_tokens: special_tokens.iter().map(|(n, c)| (n.clone(), Value::from(c.as_str()))).collect(),
        })
    }

    /// The template's name (`default`, `tool_use`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the model writes tool calls, if in a syntax read here
    /// ([`ToolSyntax::of_template`]).
    pub fn tool_syntax(&self) -> Option<ToolSyntax> {
        self.tool_syntax
    }

    /// Whether the model writes its reasoning in `<think>` tags
    /// ([`crate::text::reasoning`]).
    pub fn thinks(&self) -> bool {
        self.thinks
    }

    /// The prompt text, exactly as transformers' `apply_chat_template(messages,
    /// tools=tools, add_generation_prompt=..., tokenize=False)` renders it.
    pub fn render(&self, messages: &[Message], tools: Option<&Tools>, add_generation_prompt: bool) -> Result<String, ChatError> {
        self.render_with(messages, tools, add_generation_prompt, None)
    }

    /// The prompt's token ids: the template's own special tokens as tokens, special-token
    /// spellings inside the messages and tools as text (see the module's notes).
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        tools: Option<&Tools>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let controls = Controls::new(tokenizer);
        let marked = self.render_with(messages, tools, add_generation_prompt, Some(&controls))?;
        encode_marked(tokenizer, &controls, &marked)
    }

    fn render_with(
        &self,
        messages: &[Message],
        tools: Option<&Tools>,
        add_generation_prompt: bool,
        controls: Option<&Controls>,
    ) -> Result<String, ChatError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| match controls {
                Some(c) => c.mark_value(&m.value()),
                None => m.value(),
            })
            .collect();
        let tools = match (tools, controls) {
            (None, _) => Value::from(()),
            (Some(t), None) => t.0.clone(),
            (Some(t), Some(c)) => c.mark_value(&t.0),
        };
        // Later entries win: the fixed variables over a special token of the same name.
        let mut context: Vec<(String, Value)> = self.special_tokens.clone();
        context.push(("messages".into(), Value::from(messages)));
        context.push(("tools".into(), tools));
        context.push(("documents".into(), Value::from(())));
        context.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));
        let template = self.env.get_template(TEMPLATE).map_err(|e| template_error(&self.name, &e))?;
        template.render(Value::from_pairs(context)).map_err(|e| template_error(&self.name, &e))
    }
}

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
}

/// Tags an error as the template's own `raise_exception`, whose message is shown as is.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raise_exception")
    }
}

impl std::error::Error for Raised {}

/// One line from a minijinja error: the template's name and line, and its message.
fn template_error(name: &str, e: &Error) -> ChatError {
    // The innermost error with a message is the cause (a filter's error wrapped by the
    // call that failed, ...).
    let mut cause: &Error = e;
    let mut raised = false;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.is::<Raised>() {
            raised = true;
        }
        if let Some(inner) = err.downcast_ref::<Error>() {
            if inner.detail().is_some() {
                cause = inner;
            }
        }
        current = err.source();
    }
    let message = match (raised, cause.detail()) {
        (true, Some(detail)) => detail.to_string(),
        (false, Some(detail)) => format!("{}: {detail}", cause.kind()),
        (_, None) => cause.kind().to_string(),
    };
    ChatError::Template {
        name: name.to_string(),
        line: e.line().or(cause.line()).filter(|&l| l > 0),
        message: message.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, positionally or by keyword.
fn tojson(value: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(ErrorKind::TooManyArguments, "tojson takes at most 4 arguments"));
    }
    let mut given: Vec<(usize, Value)> = args.iter().cloned().enumerate().collect();
    for (i, name) in NAMES.iter().enumerate() {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if given.iter().any(|(j, _)| *j == i) {
                return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson got {name} twice")));
            }
            given.push((i, v));
        }
    }
    kwargs.assert_all_used()?;
    let mut options = JsonOptions::default();
    for (i, v) in given {
        match i {
            0 => options.ensure_ascii = v.is_true(),
            1 => options.indent = json_indent(&v)?,
            2 => options.separators = json_separators(&v)?,
            _ => options.sort_keys = v.is_true(),
        }
    }
    json_dumps(&value, &options)
}

/// `indent`: None, a count of spaces (0 or less: newlines only) or the indent string.
fn json_indent(v: &Value) -> Result<Option<String>, Error> {
    match v.kind() {
        ValueKind::None | ValueKind::Undefined => Ok(None),
        ValueKind::String => Ok(Some(v.as_str().unwrap_or_default().to_string())),
        ValueKind::Number if v.is_integer() => {
            let n = v.as_i64().unwrap_or(0).clamp(0, 1024) as usize;
            Ok(Some(" ".repeat(n)))
        }
        _ => Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")),
    }
}

/// `separators`: None or an `(item, key)` pair of strings.
fn json_separators(v: &Value) -> Result<Option<(String, String)>, Error> {
    if v.is_none() || v.is_undefined() {
        return Ok(None);
    }
    let parts: Vec<Value> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
    match &parts[..] {
        [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
            Ok(Some((a.as_str().unwrap_or_default().into(), b.as_str().unwrap_or_default().into())))
        }
        _ => Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair of strings")),
    }
}

/// The template source with transformers' `{% generation %}` / `{% endgeneration %}`
/// tags as `{% with %}` / `{% endwith %}` (padded to the same length, so lines and
/// columns in errors stay the template's): both render their body in a scope of its
/// own. Tags are found as jinja2's lexer finds them: not inside comments, raw blocks or
/// the string literals of other tags. A tag left open ends the search (compiling the
/// template then reports it).
fn with_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(open) = source[i..].find('{').map(|k| i + k) {
        let rest = &source[open..];
        let next = if rest.starts_with("{#") {
            source[open..].find("#}").map(|k| open + k + 2)
        } else if rest.starts_with("{{") {
            tag_end(source, open + 2, "}}")
        } else if rest.starts_with("{%") {
            tag_end(source, open + 2, "%}").map(|end| {
                // Between `{%` and `%}`: both ASCII, so these are char boundaries.
                let inner = &source[open + 2..end - 2];
                let word = inner.trim_start_matches(['-', '+']).trim_start();
                let word = word.trim_end_matches(['-', '+']).trim_end();
                let replacement = match word {
                    "generation" => Some("with      "),
                    "endgeneration" => Some("endwith      "),
                    _ => None,
                };
                if let Some(replacement) = replacement {
                    let at = open + 2 + inner.find(word).unwrap_or(0);
                    out.push_str(&source[copied..at]);
                    out.push_str(replacement);
                    copied = at + word.len();
                }
                if word == "raw" {
                    end_of_raw(source, end)
                } else {
                    end
                }
            })
        } else {
            Some(open + 1)
        };
        match next {
            Some(next) => i = next,
            None => break,
        }
    }
    out.push_str(&source[copied..]);
    out
}

/// The index after the `close` that ends a tag whose contents start at `from`, string
/// literals skipped; `None` if the tag never closes.
fn tag_end(source: &str, from: usize, close: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            _ if bytes[i..].starts_with(close.as_bytes()) => return Some(i + close.len()),
            _ => i += 1,
        }
    }
    None
}

/// The index after the `{% endraw %}` that closes a raw block whose body starts at
/// `from` (the end of the source if none does).
fn end_of_raw(source: &str, from: usize) -> usize {
    let mut i = from;
    while let Some(open) = source[i..].find("{%").map(|k| i + k) {
        let Some(end) = tag_end(source, open + 2, "%}") else { break };
        if source[open + 2..end - 2].trim_matches(['-', '+', ' ', '\t', '\n', '\r']) == "endraw" {
            return end;
        }
        i = end;
    }
    source.len()
}

/// The control tokens (every special token of the vocabulary), longest first, so the
/// longest spelling wins where two start at the same place.
struct Controls {
    spellings: Vec<Arc<str>>,
}

impl Controls {
    fn new(tokenizer: &Tokenizer) -> Controls {
        let mut spellings: Vec<Arc<str>> = tokenizer.special_spellings().map(Arc::from).collect();
        spellings.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        spellings.dedup();
        Controls { spellings }
    }

    /// The control token spelled at the start of `s`, if any.
    fn at(&self, s: &str) -> Option<&str> {
        self.spellings.iter().find(|t| s.starts_with(&***t)).map(|t| &**t)
    }

    /// `s` without markers, each control-token spelling wrapped in markers
    /// (transformers' `mark_control_tokens`).
    fn mark(&self, s: &str) -> String {
        let s: String = s.chars().filter(|&c| c != MARK_START && c != MARK_END).collect();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if let Some(token) = self.at(&s[i..]) {
                out.push(MARK_START);
                out.push_str(token);
                out.push(MARK_END);
                i += token.len();
            } else {
                let c = s[i..].chars().next().expect("i is on a char boundary");
                out.push(c);
                i += c.len_utf8();
            }
        }
        out
    }

    /// Every string inside `value` marked (dict keys are left as they are).
    fn mark_value(&self, value: &Value) -> Value {
        match value.kind() {
            ValueKind::String => Value::from(self.mark(value.as_str().unwrap_or_default())),
            ValueKind::Seq => Value::from(value.try_iter().into_iter().flatten().map(|v| self.mark_value(&v)).collect::<Vec<_>>()),
            ValueKind::Map => Value::from_pairs(
                value
                    .try_iter()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        (k, self.mark_value(&v))
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => value.clone(),
        }
    }
}

/// A piece of the marked rendering.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    /// Written by the template (or message text around spellings): specials recognised.
    Template(&'a str),
    /// A control-token spelling from a message: plain text.
    Spelling(&'a str),
}

/// Cuts a marked rendering at its markers (transformers' `markers_re.split`): text,
/// marked spellings, and lone markers, which separate text and vanish.
fn split_marked<'a>(controls: &Controls, s: &'a str) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(k) = s[i..].find([MARK_START, MARK_END]) {
        let at = i + k;
        let after = at + MARK_START.len_utf8();
        // The longest spelling that the end marker follows (the regex's alternatives,
        // longest first, backtracking).
        let spelled = s[at..].starts_with(MARK_START).then(|| {
            controls.spellings.iter().find(|t| s[after..].starts_with(&***t) && s[after + t.len()..].starts_with(MARK_END))
        });
        match spelled.flatten() {
            Some(token) => {
                pieces.push(Piece::Template(&s[start..at]));
                pieces.push(Piece::Spelling(&s[after..after + token.len()]));
                i = after + token.len() + MARK_END.len_utf8();
            }
            None => {
                pieces.push(Piece::Template(&s[start..at]));
                i = after;
            }
        }
        start = i;
    }
    pieces.push(Piece::Template(&s[start..]));
    pieces
}

/// transformers' `encode_marked_chat`: the first piece as it is, every later non-empty
/// piece behind a newline that is removed again (when the newline's ids lead the result;
/// otherwise the piece alone).
fn encode_marked(tokenizer: &Tokenizer, controls: &Controls, marked: &str) -> Result<Vec<u32>, ChatError> {
    let encode = |text: &str, special: bool| tokenizer.encode(text, special).map_err(|e| ChatError::Encode(e.to_string()));
    let newline = encode("\n", false)?;
    let mut ids = Vec::new();
    for (i, piece) in split_marked(controls, marked).into_iter().enumerate() {
        let (text, special) = match piece {
            Piece::Template(t) => (t, true),
            Piece::Spelling(t) => (t, false),
        };
        if i == 0 {
            ids.extend(encode(text, special)?);
            continue;
        }
        if text.is_empty() {
            continue;
        }
        let behind_newline = encode(&format!("\n{text}"), special)?;
        match behind_newline.strip_prefix(&newline[..]) {
            Some(rest) => ids.extend_from_slice(rest),
            None => ids.extend(encode(text, special)?),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let specials = [("bos_token".to_string(), "<s>".to_string()), ("eos_token".to_string(), "</s>".to_string())];
        ChatTemplate::new("test", source, &specials)?.render(messages, None, add_generation_prompt)
    }

    fn user(text: &str) -> Vec<Message> {
        vec![Message::new("user", text)]
    }

    #[test]
    fn renders_with_jinja2_whitespace_and_python_values() {
        let t = "{% for m in messages %}\n  {{ m.role }}: {{ m.content }}\n{% endfor %}\n{{ add_generation_prompt }} {{ none }} {{ [1, 'a'] }}|{{ true | string }}\n";
        // trim_blocks drops the newline after a tag, lstrip_blocks the indent before it;
        // the template's one trailing newline is dropped.
        assert_eq!(render(t, &user("hi"), true).unwrap(), "  user: hi\nTrue None [1, 'a']|True");
    }

    #[test]
    fn loop_namespace_and_python_methods() {
        let t = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %} {{ ns.n }} {{ messages[0].content.strip().startswith('a') }} {{ bos_token }}{{ eos_token }}";
        let m = vec![Message::new("user", "  ab "), Message::new("assistant", "c")];
        assert_eq!(render(t, &m, false).unwrap(), "1/2,2/2 2 True <s></s>");
    }

    #[test]
    fn generation_blocks_render_their_body_in_a_scope() {
        let t = "{% set x = 1 %}{% for m in messages %}{%- generation -%}\n {% set x = 2 %}[{{ m.content }}]{{ x }}\n{%- endgeneration %}{% endfor %}{{ x }}";
        assert_eq!(render(t, &user("a"), false).unwrap(), "[a]21");
        // Not a tag inside strings, comments and raw blocks.
        let t = "{# {% generation %} #}{{ '{% generation %}' }}{% raw %}{% generation %}{% endraw %}";
        assert_eq!(render(t, &user("a"), false).unwrap(), "{% generation %}{% generation %}");
        assert_eq!(with_generation_blocks("{%- generation +%}x{% endgeneration -%}"), "{%- with       +%}x{% endwith       -%}");
    }

    #[test]
    fn unclosed_tags_and_multibyte_text_are_left_to_the_compiler() {
        for source in ["{% generation 東", "{{ '東", "{# 東", "{% raw %}東{% endraw", "東{", "{%東%}", "{{ \"\\東\" }}{% generation %}東"] {
            let rewritten = with_generation_blocks(source);
            assert_eq!(rewritten.len(), source.len(), "{source}");
            let _ = ChatTemplate::new("t", source, &[]).map(|t| t.render(&[], None, false));
        }
        let e = ChatTemplate::new("t", "{% generation %}x", &[]).unwrap_err().to_string();
        assert!(e.contains("line 1: syntax error"), "{e}");
    }

    #[test]
    fn errors_are_one_line_with_the_template_line() {
        let t = "line one\n{% if messages|length > 1 %}{{ raise_exception('Only one\nmessage, please') }}{% endif %}";
        let two = vec![Message::new("user", "a"), Message::new("user", "b")];
        let e = render(t, &two, false).unwrap_err();
        assert_eq!(e.to_string(), "chat template \"test\", line 2: Only one message, please");
        let e = render("{% for %}", &two, false).unwrap_err().to_string();
        assert!(e.starts_with("chat template \"test\", line 1: syntax error"), "{e}");
        let e = render("{{ messages[0].content.nope() }}", &two, false).unwrap_err().to_string();
        assert!(e.starts_with("chat template \"test\", line 1: unknown method"), "{e}");
        let e = render("{{ messages | tojson(indent=[]) }}", &two, false).unwrap_err().to_string();
        assert!(e.contains("indent must be"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn long_conversations_render_within_the_fuel() {
        // 2000 messages of 4000 characters (2 million tokens or so: beyond any context)
        // through the ChatML fixture's template and its OLMo-2 one.
        let messages: Vec<Message> = (0..2000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "word ".repeat(800)))
            .collect();
        for name in ["chatml.jinja", "olmo2.jinja"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/chat_templates/").to_string() + name;
            let source = std::fs::read_to_string(&path).unwrap();
            let text = render(&source, &messages, true).unwrap();
            assert!(text.len() > 8_000_000, "{name}");
        }
    }

    #[test]
    fn runaway_templates_stop_with_an_error() {
        for (t, why) in [
            ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "fuel"),
            ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "fuel"),
            ("{{ 'x' * 10000000000 }}", "fuel"),
            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
        ] {
            let e = render(t, &user("a"), false).unwrap_err().to_string();
            assert!(e.contains(why), "{t}: {e}");
        }
    }

    #[test]
    fn messages_parse_from_openai_json() {
        let m = parse_messages(r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]"#).unwrap();
        assert_eq!(m, [Message::new("system", "Be brief."), Message::new("user", "Hi")]);
        // A call with its arguments as text (OpenAI) or as an object (transformers), and
        // its result.
        let m = parse_messages(
            r#"[{"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
                {"function": {"name": "g", "arguments": {"y": [2]}}}]}, {"role": "tool", "tool_call_id": "a", "content": "3"}]"#,
        )
        .unwrap();
        let want = vec![MessageToolCall::new(Some("a".into()), "f", r#"{"x": 1}"#).unwrap(), MessageToolCall::new(None, "g", r#"{"y": [2]}"#).unwrap()];
        assert_eq!(m[0], Message { tool_calls: want, ..Message::new("assistant", "") });
        assert_eq!(m[1], Message { tool_call_id: Some("a".into()), ..Message::new("tool", "3") });
        for (bad, why) in [
            ("{}", "expected a JSON list"),
            ("[]", "empty"),
            ("[{\"role\": \"user\"}]", "message 0: missing field `content`"),
            ("[{\"role\": \"user\", \"content\": 5}]", "message 0: invalid type: integer"),
            ("[{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": \"[1]\"}}]}]", "must be a JSON object"),
            ("[{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": 7}}]}]", "must be a JSON object or its text"),
            ("[{\"role\": \"user\", \"content\": \"x\", \"name\": \"a\"}]", "unknown field `name`"),
            ("[", "not JSON"),
        ] {
            let e = parse_messages(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn markers_split_as_transformers_splits_them() {
        let controls = Controls { spellings: vec!["<|end|>".into(), "<|e|>".into()] };
        assert_eq!(controls.mark("a<|end|>b\u{F0000}<|e|>"), "a\u{F0000}<|end|>\u{F0001}b\u{F0000}<|e|>\u{F0001}");
        let marked = "x\u{F0000}<|end|>\u{F0001}y\u{F0001}z\u{F0000}<|e|>";
        assert_eq!(
            split_marked(&controls, marked),
            [Piece::Template("x"), Piece::Spelling("<|end|>"), Piece::Template("y"), Piece::Template("z"), Piece::Template("<|e|>")]
        );
    }
}
