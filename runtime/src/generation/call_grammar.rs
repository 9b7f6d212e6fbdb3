//! A reply held to tool calls (the server's `tool_choice: "required"` or a named
//! function): the model may only write a call block in its template's syntax
//! (`text::tool_calls`), here OLMo-3's
//!
//! ```text
//! <function_calls>name(key=value, key=value)
//! name(...)</function_calls>
//! ```
//!
//! with each name one of the functions allowed, each key one of the function's
//! `parameters.properties` at most once, every `required` key given before the call
//! closes, and each value one JSON value of the property's schema where that schema is
//! in the subset `json_schema` takes (its bounds, such as `minimum`, not held), else
//! any JSON value. Calls are canonical: no space but the one after each comma, one
//! line break between calls, and more than one call only where the request allows
//! parallel calls.
//!
//! With `tool_choice: "auto"` the rules are lazy ([`CallRules::lazy`]): the reply is
//! free text until it writes the opening tag, and held from there (llama.cpp's lazy
//! grammars hold a model's own calls so): a call the model chooses to make names a
//! function it was given, with arguments that read back.
//!
//! [`CallPrefix`] is the grammar as a `Copy` automaton over [`CallRules`]; names and keys
//! are matched by narrowing a set of candidates byte by byte, so a state never holds
//! the bytes read.

use serde_json::Value;

use super::json::{is_space, Grammar, JsonPrefix};
use super::json_schema::{Schema, SchemaPrefix};
use crate::text::{reasoning, tool_calls};

const OPEN: &[u8] = tool_calls::OPEN.as_bytes();
const CLOSE: &[u8] = tool_calls::CLOSE.as_bytes();
const THINK: &[u8] = reasoning::OPEN.as_bytes();
const THINK_END: &[u8] = reasoning::CLOSE.as_bytes();

/// Bytes of `tag` matched after `b`, `at` before: the tag's first byte appears in it
/// only first, so a mismatch starts over (at that byte, where it is the first).
fn match_tag(tag: &[u8], at: u8, b: u8) -> u8 {
    if tag[at as usize] == b {
        at + 1
    } else {
        (b == tag[0]) as u8
    }
}

/// Functions a reply may choose from, at most (a bit each while a name is matched).
pub const MAX_FUNCTIONS: usize = 128;
/// Properties of one function, at most (a bit each).
pub const MAX_KEYS: usize = 64;

#[derive(Debug, Clone)]
struct Function {
    name: Box<[u8]>,
    keys: Vec<Box<[u8]>>,
    /// The node of each key's value in [`CallRules::values`], where its schema is held.
    values: Vec<Option<u16>>,
    /// Bit `k`: `keys[k]` must be given.
    required: u64,
}

/// The functions a reply may call and whether it may call more than one.
#[derive(Debug, Clone)]
pub struct CallRules {
    functions: Vec<Function>,
    /// Every function's argument schemas.
    values: Schema,
    many: bool,
    /// Free text comes before the block, which may never come.
    lazy: bool,
    /// A thinking model's reply (lazy rules): a block opened inside its reasoning
    /// (between `<think>` and `</think>`) is not held; `Some(true)`: the prompt opened
    /// the reasoning.
    thinking: Option<bool>,
}

impl CallRules {
    /// The rules for calls of `functions` (name and `parameters` schema each; a
    /// missing schema takes no arguments); `many`: one call or more. The error names
    /// what a call could not be written for.
    pub fn new<'a>(functions: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>, many: bool) -> Result<CallRules, String> {
        let mut out = Vec::new();
        let mut schemas = Vec::new();
        let empty = serde_json::Map::new();
        for (name, parameters) in functions {
            let properties = match parameters.and_then(|p| p.get("properties")) {
                None => &empty,
                Some(Value::Object(p)) => p,
                Some(_) => return Err(format!("function '{name}': 'properties' must be an object")),
            };
            if properties.len() > MAX_KEYS {
                return Err(format!("function '{name}' has more than {MAX_KEYS} properties"));
            }
            let keys: Vec<Box<[u8]>> = properties.keys().map(|k| k.as_bytes().into()).collect();
            if let Some(k) = properties.keys().find(|k| !is_identifier(k)) {
                return Err(format!("function '{name}': property '{k}' cannot be a keyword argument (letters, digits and '_', not first a digit)"));
            }
            let mut required = 0u64;
            if let Some(list) = parameters.and_then(|p| p.get("required")) {
                let Value::Array(list) = list else { return Err(format!("function '{name}': 'required' must be a list")) };
                for r in list {
                    let r = r.as_str().ok_or_else(|| format!("function '{name}': 'required' lists property names"))?;
                    let k = keys.iter().position(|k| &**k == r.as_bytes()).ok_or_else(|| format!("function '{name}': required property '{r}' is not in 'properties'"))?;
                    required |= 1 << k;
                }
            }
            let root = parameters.unwrap_or(&Value::Null);
            schemas.extend(properties.values().map(|v| (root, v)));
            out.push(Function { name: name.as_bytes().into(), keys, values: Vec::new(), required });
        }
        if out.is_empty() || out.len() > MAX_FUNCTIONS {
            return Err(format!("a reply held to calls chooses from 1 to {MAX_FUNCTIONS} functions, not {}", out.len()));
        }
        let (values, nodes) = Schema::compile_values(schemas);
        let mut nodes = nodes.into_iter();
        for f in &mut out {
            f.values = nodes.by_ref().take(f.keys.len()).collect();
        }
        Ok(CallRules { functions: out, values, many, lazy: false, thinking: None })
    }

    /// Whether a reply is held only from where it opens a call block.
    pub fn is_lazy(&self) -> bool {
        self.lazy
    }

    /// The same rules holding a reply only from where it opens a call block.
    pub fn lazy(self) -> CallRules {
        CallRules { lazy: true, ..self }
    }

    /// Lazy rules for a thinking model's reply (`opened`: the prompt opened the
    /// reasoning), whose reasoning is not held ([`crate::text::reasoning`]).
    pub fn after_reasoning(self, opened: bool) -> CallRules {
        CallRules { thinking: Some(opened), ..self }
    }

    fn all(&self) -> u128 {
        if self.functions.len() == 128 {
            u128::MAX
        } else {
            (1u128 << self.functions.len()) - 1
        }
    }
}

fn is_identifier(k: &str) -> bool {
    !k.is_empty() && !k.as_bytes()[0].is_ascii_digit() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A thinking model's reply before anything but whitespace: `<think>` may open the
    /// reasoning (`at` bytes of it read).
    Start,
    /// Reasoning, not held: it ends with `at` bytes of `</think>`.
    Reasoning,
    /// Free text (lazy rules); it ends with `at` bytes of the opening tag.
    Free,
    /// `at` bytes of the opening tag read.
    Open,
    /// `at` bytes of a function's name read; `candidates`: the names they begin.
    Name,
    /// After `(`: a key or `)`.
    FirstKey,
    /// After `, `: a key.
    Key,
    /// `at` bytes of a key read; `candidates`: the keys (not yet given) they begin.
    KeyBytes,
    /// After `key=`: the value in `value`.
    Value,
    /// After `,`: a space or a key.
    Comma,
    /// After `)`: the closing tag, or a line break and the next call.
    AfterCall,
    /// `at` bytes of the closing tag read.
    Close,
    Done,
}

/// An argument's value: of its property's schema, or any JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArgValue {
    Any(JsonPrefix),
    Typed(SchemaPrefix),
}

impl ArgValue {
    fn new(node: Option<u16>) -> ArgValue {
        match node {
            Some(n) => ArgValue::Typed(SchemaPrefix::value_of(n)),
            None => ArgValue::Any(JsonPrefix::one_value()),
        }
    }

    fn feed(&mut self, s: &Schema, b: u8) -> bool {
        match self {
            ArgValue::Any(v) => Grammar::feed(v, &(), b),
            ArgValue::Typed(v) => Grammar::feed(v, s, b),
        }
    }

    fn may_end(&self, s: &Schema) -> bool {
        match self {
            ArgValue::Any(v) => v.may_end(),
            ArgValue::Typed(v) => v.may_end(s),
        }
    }

    /// Whether no byte of the value was read.
    fn at_start(&self) -> bool {
        match self {
            ArgValue::Any(v) => *v == JsonPrefix::one_value(),
            ArgValue::Typed(v) => SchemaPrefix::is_expecting(v),
        }
    }

    fn in_plain_string(&self) -> bool {
        match self {
            ArgValue::Any(v) => v.in_plain_string(),
            ArgValue::Typed(v) => v.in_plain_string(),
        }
    }

    fn skips_whitespace(&self) -> bool {
        match self {
            ArgValue::Any(v) => v.skips_whitespace(),
            ArgValue::Typed(v) => v.skips_whitespace(),
        }
    }
}

/// A prefix of a call block: what it has read so far, and what may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallPrefix {
    phase: Phase,
    at: u8,
    candidates: u128,
    /// The function being called.
    function: u8,
    /// Keys of the call given so far.
    given: u64,
    value: ArgValue,
}

impl Default for CallPrefix {
    fn default() -> CallPrefix {
        CallPrefix { phase: Phase::Open, at: 0, candidates: 0, function: 0, given: 0, value: ArgValue::new(None) }
    }
}

impl CallPrefix {
    /// The empty reply under `rules`.
    pub fn start(rules: &CallRules) -> CallPrefix {
        let phase = match (rules.lazy, rules.thinking) {
            (false, _) => Phase::Open,
            (true, None) => Phase::Free,
            (true, Some(false)) => Phase::Start,
            (true, Some(true)) => Phase::Reasoning,
        };
        CallPrefix { phase, ..CallPrefix::default() }
    }

    /// Whether the reply is free text (lazy rules, no block opened yet): anything may
    /// come.
    pub fn is_free(&self) -> bool {
        matches!(self.phase, Phase::Start | Phase::Reasoning | Phase::Free)
    }

    /// Reads the first byte of a key.
    fn start_key(&mut self, rules: &CallRules, b: u8) -> bool {
        let f = &rules.functions[self.function as usize];
        self.phase = Phase::KeyBytes;
        self.at = 0;
        self.candidates = (0..f.keys.len()).filter(|&k| self.given >> k & 1 == 0).fold(0, |s, k| s | 1 << k);
        self.key_byte(rules, b)
    }

    fn key_byte(&mut self, rules: &CallRules, b: u8) -> bool {
        let f = &rules.functions[self.function as usize];
        let at = self.at as usize;
        if b == b'=' {
            let Some(k) = (0..f.keys.len()).find(|&k| self.candidates >> k & 1 == 1 && f.keys[k].len() == at) else { return false };
            self.given |= 1 << k;
            self.phase = Phase::Value;
            self.value = ArgValue::new(f.values[k]);
            return true;
        }
        self.candidates = narrow(self.candidates, f.keys.iter().map(|k| &**k), at, b);
        self.at += 1;
        self.candidates != 0
    }

    /// `)`: the call closes if every required key was given.
    fn close_call(&mut self, rules: &CallRules) -> bool {
        let required = rules.functions[self.function as usize].required;
        self.phase = Phase::AfterCall;
        required & !self.given == 0
    }
}

/// The candidates among `names` whose byte `at` is `b`.
fn narrow<'a>(candidates: u128, names: impl Iterator<Item = &'a [u8]>, at: usize, b: u8) -> u128 {
    names.enumerate().filter(|&(i, n)| candidates >> i & 1 == 1 && n.get(at) == Some(&b)).fold(0, |s, (i, _)| s | 1 << i)
}

impl Grammar for CallPrefix {
    type Rules = CallRules;

    fn feed(&mut self, rules: &CallRules, b: u8) -> bool {
        match self.phase {
            Phase::Start if b.is_ascii_whitespace() && self.at == 0 => true,
            Phase::Start if THINK[self.at as usize] == b => {
                self.at += 1;
                if self.at as usize == THINK.len() {
                    (self.phase, self.at) = (Phase::Reasoning, 0);
                }
                true
            }
            // Not `<think>`: the answer, read from its first byte (the tag's beginning
            // read so far, then this one).
            Phase::Start => {
                let read = self.at as usize;
                (self.phase, self.at) = (Phase::Free, 0);
                THINK[..read].iter().chain([&b]).all(|&c| self.feed(rules, c))
            }
            Phase::Reasoning => {
                self.at = match_tag(THINK_END, self.at, b);
                if self.at as usize == THINK_END.len() {
                    (self.phase, self.at) = (Phase::Free, 0);
                }
                true
            }
            Phase::Free => {
                self.at = match_tag(OPEN, self.at, b);
                if self.at as usize == OPEN.len() {
                    (self.phase, self.at, self.candidates) = (Phase::Name, 0, rules.all());
                }
                true
            }
            Phase::Open | Phase::Close => {
                let tag = if self.phase == Phase::Open { OPEN } else { CLOSE };
                if tag[self.at as usize] != b {
                    return false;
                }
                self.at += 1;
                if self.at as usize == tag.len() {
                    self.phase = if self.phase == Phase::Open { Phase::Name } else { Phase::Done };
                    (self.at, self.candidates) = (0, rules.all());
                }
                true
            }
            Phase::Name => {
                let at = self.at as usize;
                if b == b'(' {
                    let mut names = rules.functions.iter().enumerate();
                    let Some((f, _)) = names.find(|(f, n)| self.candidates >> f & 1 == 1 && n.name.len() == at) else { return false };
                    (self.function, self.given, self.phase) = (f as u8, 0, Phase::FirstKey);
                    return true;
                }
                self.candidates = narrow(self.candidates, rules.functions.iter().map(|f| &*f.name), at, b);
                self.at += 1;
                self.candidates != 0
            }
            Phase::FirstKey if b == b')' => self.close_call(rules),
            Phase::FirstKey | Phase::Key => self.start_key(rules, b),
            Phase::Comma if b == b' ' => {
                self.phase = Phase::Key;
                true
            }
            Phase::Comma => self.start_key(rules, b),
            Phase::KeyBytes => self.key_byte(rules, b),
            Phase::Value => {
                if self.value.may_end(&rules.values) && (b == b',' || b == b')') {
                    if b == b')' {
                        return self.close_call(rules);
                    }
                    self.phase = Phase::Comma;
                    return true;
                }
                // No space before the value.
                if is_space(b) && self.value.at_start() {
                    return false;
                }
                self.value.feed(&rules.values, b)
            }
            Phase::AfterCall if b == b'\n' && rules.many => {
                (self.phase, self.at, self.candidates) = (Phase::Name, 0, rules.all());
                true
            }
            Phase::AfterCall => {
                self.phase = Phase::Close;
                self.at = 0;
                self.feed(rules, b)
            }
            Phase::Done => false,
        }
    }

    fn is_complete(&self) -> bool {
        self.phase == Phase::Done
    }

    fn in_plain_string(&self) -> bool {
        self.phase == Phase::Value && self.value.in_plain_string()
    }

    fn skips_whitespace(&self) -> bool {
        self.phase == Phase::Value && !self.value.at_start() && self.value.skips_whitespace()
    }

    /// Where a tag begins: OLMo-3's tokenizer has `<function_calls>` and
    /// `</function_calls>` as special tokens, which the model writes there.
    fn takes_special(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Close | Phase::AfterCall)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::generation::sampling::Rng;
    use crate::text::tool_calls::{read_reply, ToolSyntax};

    fn rules(many: bool) -> CallRules {
        // `c` has no type: any value; `unit`'s and `days`' bounds are read past.
        let weather = json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 0},
            "c": {}, "unit": {"enum": ["c", "f", 10, 1], "nullable": true}}, "required": ["city"]});
        let parameters = [Some(&weather), None, Some(&json!({"properties": {}}))];
        CallRules::new(["get_weather", "get", "now"].into_iter().zip(parameters), many).unwrap()
    }

    /// The state after `text`, if it is a prefix of a call block.
    fn after(rules: &CallRules, text: &str) -> Option<CallPrefix> {
        CallPrefix::default().after(rules, text.as_bytes())
    }

    #[test]
    fn takes_calls_of_the_functions_with_their_keys() {
        let (one, many) = (rules(false), rules(true));
        for block in [
            "<function_calls>get_weather(city=\"Oslo\")</function_calls>",
            "<function_calls>get_weather(days=3, city=\"Zürich\", c={\"a\": [1, null]})</function_calls>",
            "<function_calls>get_weather(city=\"x\",days=-15)</function_calls>",
            "<function_calls>get_weather(unit=1, city=\"x\")</function_calls>",
            "<function_calls>get_weather(unit=10, days=0, city=\"x\")</function_calls>",
            "<function_calls>get_weather(city=\"x\", unit=\"f\", c=-2.5e3)</function_calls>",
            "<function_calls>get()</function_calls>",
            "<function_calls>now()</function_calls>",
        ] {
            let end = after(&one, block).unwrap_or_else(|| panic!("{block}"));
            assert!(end.is_complete(), "{block}");
            // What the grammar takes reads back as calls.
            assert_eq!(read_reply(ToolSyntax::FunctionCallTags, block).calls.len(), 1, "{block}");
            // Every proper prefix is incomplete.
            for i in 1..block.len() {
                let p = CallPrefix::default().after(&one, &block.as_bytes()[..i]).unwrap_or_else(|| panic!("{block} at {i}"));
                assert!(!p.is_complete());
            }
        }
        let two = "<function_calls>now()\nget_weather(city=\"a\")</function_calls>";
        assert!(after(&many, two).is_some_and(|p| p.is_complete()));
        assert_eq!(read_reply(ToolSyntax::FunctionCallTags, two).calls.len(), 2);
        assert!(after(&one, two).is_none(), "one call only");
    }

    #[test]
    fn refuses_what_the_rules_do_not_allow() {
        let r = rules(true);
        for (bad, why) in [
            ("<function_call>", "the tag"),
            (" <function_calls>", "anything before the tag"),
            ("<function_calls>get_weathers(", "an unknown function"),
            ("<function_calls>ge(", "a name's prefix"),
            ("<function_calls>get_weather()", "a required key missing"),
            ("<function_calls>get_weather(town=", "an unknown key"),
            ("<function_calls>get_weather(cit=", "a key's prefix"),
            ("<function_calls>get_weather(city=\"a\", city=", "a key twice"),
            ("<function_calls>get_weather(city= \"a\"", "a space before the value"),
            ("<function_calls>get_weather(city=\"a\",  days", "two spaces after a comma"),
            ("<function_calls>get_weather(city=\"a\",)", "a trailing comma"),
            ("<function_calls>get_weather(city='a'", "Python's quotes"),
            ("<function_calls>get_weather(city=\"a\" )", "a space after a string"),
            ("<function_calls>get_weather(city=True", "Python's True"),
            ("<function_calls>get_weather(city=3", "a number for a string"),
            ("<function_calls>get_weather(days=1.", "a fraction for an integer"),
            ("<function_calls>get_weather(days=\"1\"", "a string for an integer"),
            ("<function_calls>get_weather(unit=\"k\"", "a value outside the enum"),
            ("<function_calls>get_weather(unit=100", "a number outside the enum"),
            ("<function_calls>get_weather(c=tru,", "a broken word for any value"),
            ("<function_calls>get(x=1", "keys of a function without parameters"),
            ("<function_calls>now()\n\nnow()", "a blank line"),
            ("<function_calls>now()</function_calls>\n", "anything after the block"),
        ] {
            assert!(after(&r, bad).is_none(), "{why}: {bad:?}");
        }
        let p = after(&r, "<function_calls>get_weather(city=\"a\"").unwrap();
        assert!(p.after(&r, b",").is_some() && p.after(&r, b")").is_some());
        let p = after(&r, "<function_calls>get_weather(days=12").unwrap();
        assert!(p.after(&r, b"3").is_some() && p.after(&r, b")").is_none(), "city is still required");
    }

    #[test]
    fn lazy_rules_hold_the_reply_from_the_opening_tag() {
        let r = rules(true).lazy();
        let free = CallPrefix::start(&r);
        for text in ["", "Any text <b>, </function_calls>, <function", "a <<function_calls", "x <function_callsX"] {
            let p = free.after(&r, text.as_bytes()).unwrap_or(free);
            assert!(p.is_free() && !p.is_complete(), "{text:?}");
        }
        let block = "I will look. <<function_calls>get_weather(city=\"Oslo\")\nnow()</function_calls>";
        let p = free.after(&r, block.as_bytes()).unwrap();
        assert!(p.is_complete() && !p.is_free());
        let opened = free.after(&r, b"ok <function_calls>").unwrap();
        assert!(!opened.is_free());
        for bad in ["nope(", " get_weather(", "get_weather(town="] {
            assert!(opened.after(&r, bad.as_bytes()).is_none(), "{bad:?}");
        }
        // Not lazy: the tag first.
        assert!(CallPrefix::start(&rules(true)).after(&rules(true), b"I ").is_none());
    }

    #[test]
    fn argument_refs_resolve_in_their_function_s_parameters() {
        // Two functions define "P" differently: each argument follows its own.
        let f = json!({"properties": {"p": {"$ref": "#/$defs/P"}}, "required": ["p"], "$defs": {"P": {"type": "integer"}}});
        let g = json!({"properties": {"p": {"$ref": "#/$defs/P"}, "q": {"$ref": "#/$defs/Nope"}}, "$defs": {"P": {"type": "object", "properties": {"x": {"type": "string"}}}}});
        let r = CallRules::new([("f", Some(&f)), ("g", Some(&g))], true).unwrap();
        assert!(after(&r, "<function_calls>f(p=3)\ng(p={\"x\": \"a\"})</function_calls>").is_some_and(|p| p.is_complete()));
        assert!(after(&r, "<function_calls>f(p=\"3\"").is_none());
        assert!(after(&r, "<function_calls>g(p=3").is_none());
        // An unresolved ref: any value.
        assert!(after(&r, "<function_calls>g(q=[true])</function_calls>").is_some_and(|p| p.is_complete()));
    }

    /// A vocabulary whose tokenizer has the tags as special tokens (OLMo-3 Instruct's):
    /// the mask lets the model write them where a tag begins, and no special token
    /// anywhere else (not `<|im_end|>`, not a tag inside a string).
    #[test]
    fn the_mask_takes_the_tags_as_special_tokens_where_they_begin() {
        use std::sync::Arc;

        use olmo_format::vocab::{Vocab, VocabView};

        use crate::generation::json::{JsonFormat, JsonMode, JsonVocab};

        let spellings = ["<function_calls>", "</function_calls>", "<|im_end|>", "<", "function", "_calls", ">", "</", "get", "_weather", "(", ")", "city", "=", "\"", "Oslo", "\n"];
        let vocab = Vocab { tokens: spellings.iter().map(|t| t.as_bytes().to_vec()).collect(), special_ids: vec![0, 1, 2] };
        let (info, packed) = (vocab.info(), vocab.to_packed());
        let view = VocabView::new(&info, &packed.offsets, &packed.bytes);
        let classes = Arc::new(JsonVocab::new(&view, spellings.len()));
        let weather = json!({"properties": {"city": {"type": "string"}}, "required": ["city"]});
        let rules = Arc::new(CallRules::new([("get_weather", Some(&weather))], true).unwrap());
        let kept = |reply: &str| {
            let mut mode = JsonMode::new(Arc::clone(&classes), &JsonFormat::Calls(Arc::clone(&rules)));
            assert!(reply.is_empty() || mode.push(reply.as_bytes()), "{reply:?}");
            let logits = vec![0.0; spellings.len()];
            let masked = mode.mask(&view, &logits);
            spellings.iter().zip(masked).filter(|(_, l)| l.is_finite()).map(|(t, _)| *t).collect::<Vec<_>>()
        };
        assert_eq!(kept(""), ["<function_calls>", "<"]);
        assert_eq!(kept("<function_calls>get_weather(city=\""), ["<", "function", "_calls", ">", "</", "get", "_weather", "(", ")", "city", "=", "\"", "Oslo"]);
        assert_eq!(kept("<function_calls>get_weather(city=\"Oslo\")"), ["</function_calls>", "<", "</", "\n"]);
        // JSON mode never takes a special token.
        let mut json = JsonMode::new(Arc::clone(&classes), &JsonFormat::Object);
        assert!(json.push(b"{\"a\": \""));
        let masked = json.mask(&view, &vec![0.0; spellings.len()]).to_vec();
        assert!(masked[..3].iter().all(|l| l.is_infinite()) && masked[3].is_finite());
    }

    #[test]
    fn a_thinking_model_s_reasoning_is_not_held() {
        let r = |opened| rules(true).lazy().after_reasoning(opened);
        let block = "<function_calls>get_weather(city=\"Oslo\")</function_calls>";
        // The prompt opened the reasoning: a block in it is free text; after it, held.
        let opened = r(true);
        let p = CallPrefix::start(&opened).after(&opened, b"I could write <function_calls>nope( here").unwrap();
        assert!(p.is_free());
        let p = p.after(&opened, format!("</think>Let me call. {block}").as_bytes()).unwrap();
        assert!(p.is_complete());
        assert!(CallPrefix::start(&opened).after(&opened, b"x</think><function_calls>nope(").is_none());
        // The reply opens its own reasoning, or has none.
        let own = r(false);
        let p = CallPrefix::start(&own).after(&own, b" \n<think>maybe <function_calls>nope(</think>").unwrap();
        assert!(p.is_free() && p.after(&own, block.as_bytes()).is_some_and(|p| p.is_complete()));
        assert!(CallPrefix::start(&own).after(&own, block.as_bytes()).is_some_and(|p| p.is_complete()));
        // `<think>` later in an answer is text: a block after it is held.
        assert!(CallPrefix::start(&own).after(&own, b"Ok <think> <function_calls>nope(").is_none());
    }

    #[test]
    fn refuses_functions_it_cannot_write_calls_for() {
        let schema = json!({"properties": {"first-name": {}}});
        let e = CallRules::new([("f", Some(&schema))], false).unwrap_err();
        assert!(e.contains("'first-name' cannot be a keyword argument"), "{e}");
        let schema = json!({"properties": {"a": {}}, "required": ["b"]});
        assert!(CallRules::new([("f", Some(&schema))], false).unwrap_err().contains("'b' is not in 'properties'"));
        let many: Vec<(String, Option<&Value>)> = (0..=MAX_FUNCTIONS).map(|i| (format!("f{i}"), None)).collect();
        assert!(CallRules::new(many.iter().map(|(n, p)| (n.as_str(), *p)), true).unwrap_err().contains("1 to 128"));
        // 128 functions: every one may be called.
        let r = CallRules::new(many[..MAX_FUNCTIONS].iter().map(|(n, p)| (n.as_str(), *p)), true).unwrap();
        assert!(after(&r, "<function_calls>f127()\nf0()</function_calls>").is_some_and(|p| p.is_complete()));
    }

    trait Below {
        fn below(&mut self, n: u64) -> u64;
    }

    impl Below for Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }

    /// A random value of a property's schema (any value where it has no type).
    fn random_value(r: &mut Rng, schema: &Value) -> Value {
        let any = ["string", "integer", "number", "boolean", "array"][r.below(5) as usize];
        match schema.get("type").and_then(Value::as_str).unwrap_or(any) {
            "string" => Value::from(["", "Oslo", "a \"quoted\" \\ line\nbreak", "Zürich 東京 🦀"][r.below(4) as usize]),
            "integer" => Value::from(r.below(2000) as i64 - 1000),
            "number" => serde_json::from_str(["0.5", "-2.5e3", "7", "1E-3"][r.below(4) as usize]).unwrap(),
            "boolean" => Value::from(r.below(2) == 1),
            _ => Value::from((0..r.below(3)).map(Value::from).collect::<Vec<_>>()),
        }
    }

    /// Random calls of random functions, written as a model would: every block the
    /// grammar takes whole, and each reads back to the arguments written.
    #[test]
    fn random_calls_are_taken_and_read_back() {
        let mut r = Rng::new(40);
        let types = ["string", "integer", "number", "boolean", "any"];
        for round in 0..300 {
            let functions: Vec<(String, Value)> = (0..1 + r.below(4))
                .map(|f| {
                    let keys: Vec<(String, Value)> = (0..r.below(5))
                        .map(|k| {
                            let t = types[r.below(5) as usize];
                            (format!("k{k}_{t}"), if t == "any" { json!({"description": "anything"}) } else { json!({"type": t}) })
                        })
                        .collect();
                    let required: Vec<&String> = keys.iter().map(|k| &k.0).filter(|_| r.below(2) == 0).collect();
                    let properties: serde_json::Map<String, Value> = keys.iter().cloned().collect();
                    (format!("fn_{f}"), json!({"type": "object", "properties": properties, "required": required}))
                })
                .collect();
            let rules = CallRules::new(functions.iter().map(|(n, p)| (n.as_str(), Some(p))), true).unwrap();
            let mut block = String::from("<function_calls>");
            let mut written = Vec::new();
            for c in 0..1 + r.below(3) {
                let (name, parameters) = &functions[r.below(functions.len() as u64) as usize];
                let properties = parameters["properties"].as_object().unwrap();
                let mut args = Vec::new();
                for (key, schema) in properties {
                    let required = parameters["required"].as_array().unwrap().iter().any(|k| k == key);
                    if required || r.below(2) == 0 {
                        args.push((key.clone(), random_value(&mut r, schema)));
                    }
                }
                // Any order of the keys.
                for i in (1..args.len()).rev() {
                    args.swap(i, r.below(i as u64 + 1) as usize);
                }
                let text: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let sep = if r.below(2) == 0 { ", " } else { "," };
                block.push_str(&format!("{}{name}({})", if c > 0 { "\n" } else { "" }, text.join(sep)));
                written.push((name.clone(), args));
            }
            block.push_str("</function_calls>");
            let end = after(&rules, &block).unwrap_or_else(|| panic!("round {round}: {block}"));
            assert!(end.is_complete(), "round {round}: {block}");
            let read = read_reply(ToolSyntax::FunctionCallTags, &block);
            assert_eq!(read.calls.len(), written.len(), "{block}");
            for (call, (name, args)) in read.calls.iter().zip(&written) {
                assert_eq!(&call.name, name);
                let parsed: serde_json::Map<String, Value> = serde_json::from_str(&call.arguments).unwrap();
                assert_eq!(parsed, args.iter().cloned().collect::<serde_json::Map<_, _>>(), "{block}");
                // In the order written.
                let order: Vec<usize> = args.iter().map(|(k, _)| call.arguments.find(&format!("\"{k}\"")).unwrap()).collect();
                assert!(order.windows(2).all(|w| w[0] < w[1]), "{block}");
            }
        }
    }
}
