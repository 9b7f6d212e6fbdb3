//! JSON mode's mask over the real dolma2 vocabulary (the chat fixture's): after each of
//! a set of replies so far, exactly the tokens whose bytes continue a JSON object (of a
//! schema) keep their logits, and special tokens never do.

mod common;

use std::sync::Arc;

use common::Packed;
use olmo_format::mapped::MappedFile;
use olmo_format::vocab::VocabView;
use olmo_format::Blob;
use olmort::generation::call_grammar::{CallPrefix, CallRules};
use olmort::generation::json::{Grammar, JsonFormat, JsonMode, JsonPrefix, JsonVocab};
use olmort::generation::json_schema::{Schema, SchemaPrefix};
use olmort::Model;

/// For each of `replies` (continuing from `start` under `rules`): the mask of a
/// `format` reply keeps exactly the tokens whose bytes continue it. Returns each
/// reply's grammar state and how many tokens it keeps.
fn kept_after<G: Grammar>(format: &JsonFormat, start: G, rules: &G::Rules, replies: &[&[u8]]) -> Vec<(G, usize)> {
    let packed = Packed::new("chat/olmo2");
    let map = MappedFile::open(&packed.0).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let vocab: VocabView = model.vocab.unwrap();
    let n = model.config.vocab_size as usize;
    let classes = Arc::new(JsonVocab::new(&vocab, n));
    let logits: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.1).collect();
    replies
        .iter()
        .map(|reply| {
            let what = String::from_utf8_lossy(reply);
            let mut json = JsonMode::new(Arc::clone(&classes), format);
            assert!(reply.is_empty() || json.push(reply), "{what:?}");
            let prefix = if reply.is_empty() { start } else { start.after(rules, reply).unwrap() };
            let masked = json.mask(&vocab, &logits).to_vec();
            let mut kept = 0;
            for (id, (&m, &l)) in masked.iter().zip(&logits).enumerate() {
                let id = id as u32;
                let want = !vocab.is_special(id) && vocab.token(id).is_some_and(|t| prefix.after(rules, t).is_some());
                assert_eq!(m == l, want, "{what:?} then token {id} {:?}", vocab.token(id).map(String::from_utf8_lossy));
                assert!(m == l || m == f32::NEG_INFINITY);
                kept += usize::from(want);
            }
            (prefix, kept)
        })
        .collect()
}

#[test]
fn the_mask_keeps_exactly_the_tokens_that_continue_the_object() {
    let replies: &[&[u8]] = &[
        b"",
        b"{ \n",
        // Whitespace runs: a \r waiting for its \n, a line break taken, spaces used up.
        b"{\r",
        b"{\"a\":\n",
        b"{\n                                ",
        b"{",
        b"{\"key",
        b"{\"k\\",
        b"{\"k\\u00",
        b"{\"caf\xC3",
        b"{\"a\"",
        b"{\"a\":",
        b"{\"a\": 1",
        b"{\"a\": -",
        b"{\"a\": 1.5e",
        b"{\"a\": tr",
        b"{\"a\": [true, ",
        b"{\"a\": [1 ",
        b"{\"a\": {}",
        b"{\"a\": \"x\"}",
    ];
    for ((prefix, kept), reply) in kept_after(&JsonFormat::Object, JsonPrefix::new(), &(), replies).into_iter().zip(replies) {
        // Something may always come next, until the object is closed.
        assert_eq!(kept == 0, prefix.is_complete(), "{:?}: {kept} tokens kept", String::from_utf8_lossy(reply));
    }
}

/// The same for a schema's grammar: keys in order, typed values, an enum, a string's
/// most characters (which the mask's shortcut for plain text must not pass).
#[test]
fn the_schema_mask_keeps_exactly_the_tokens_that_continue_the_object() {
    let schema = Arc::new(
        Schema::compile(&serde_json::json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "days": {"type": "integer"},
                "rain": {"type": ["number", "null"]},
                "kind": {"enum": ["sun", "snow", 3]}
            },
            "required": ["city", "days", "rain", "kind"],
            "additionalProperties": false
        }))
        .unwrap(),
    );
    let replies: &[&[u8]] = &[
        b"",
        b"{",
        b"{\"ci",
        b"{\"city\"",
        b"{\"city\": \"Par",
        b"{\"city\": \"\xC3",
        b"{\"city\": \"P\", ",
        b"{\"city\": \"P\", \"days\": 1",
        b"{\"city\": \"P\", \"days\": 1, \"rain\": ",
        b"{\"city\": \"P\", \"days\": 1, \"rain\": null, \"kind\": \"s",
        b"{\"city\": \"P\", \"days\": 1, \"rain\": 2.5, \"kind\": 3",
    ];
    let format = JsonFormat::Schema(Arc::clone(&schema));
    for ((_, kept), reply) in kept_after(&format, SchemaPrefix::new(), &*schema, replies).into_iter().zip(replies) {
        assert!(kept > 0, "{:?}: nothing may follow", String::from_utf8_lossy(reply));
    }
}

/// The same for a tool call's grammar, required (from the reply's first byte) and lazy
/// (`tool_choice: auto`: free text, no mask, until the model opens a block): known
/// function names and keys, typed values, the required key before `)`.
#[test]
fn the_call_mask_keeps_exactly_the_tokens_that_continue_the_block() {
    let weather = serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"enum": ["c", "f"]}}, "required": ["city"]});
    let time = serde_json::json!({"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]});
    let rules = || CallRules::new([("get_weather", Some(&weather)), ("get_time", Some(&time))], true).unwrap();
    let replies: &[&[u8]] = &[
        b"",
        b"<function",
        b"<function_calls>",
        b"<function_calls>get_",
        b"<function_calls>get_weather(",
        b"<function_calls>get_weather(days=1",
        b"<function_calls>get_weather(days=1, ",
        b"<function_calls>get_weather(days=1, city=\"Os",
        b"<function_calls>get_weather(units=\"",
        b"<function_calls>get_weather(city=\"a\")",
        b"<function_calls>get_weather(city=\"a\")\n",
        b"<function_calls>get_time(zone=\"UTC\")</function",
    ];
    let required = Arc::new(rules());
    let format = JsonFormat::Calls(Arc::clone(&required));
    for ((prefix, kept), reply) in kept_after(&format, CallPrefix::start(&required), &*required, replies).into_iter().zip(replies) {
        assert!(kept > 0 && !prefix.is_complete(), "{:?}: {kept} tokens kept", String::from_utf8_lossy(reply));
    }
    // Lazy: the same after the opening tag, free text before it.
    let lazy = Arc::new(rules().lazy());
    let format = JsonFormat::Calls(Arc::clone(&lazy));
    let texts: Vec<Vec<u8>> = replies[2..].iter().map(|r| [b"Let me check. ".as_slice(), r].concat()).collect();
    let texts: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    for ((_, kept), reply) in kept_after(&format, CallPrefix::start(&lazy), &*lazy, &texts).into_iter().zip(&texts) {
        assert!(kept > 0, "{:?}", String::from_utf8_lossy(reply));
    }
    let packed = Packed::new("chat/olmo2");
    let map = MappedFile::open(&packed.0).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let classes = Arc::new(JsonVocab::new(&model.vocab.unwrap(), model.config.vocab_size as usize));
    let holds = |text: &[u8]| {
        let mut mode = JsonMode::new(Arc::clone(&classes), &format);
        assert!(mode.push(text));
        mode.holds()
    };
    assert!(!holds(b"Free text <function"));
    assert!(holds(b"Free text <function_calls>"));
    // A token that opens the block and goes on past the grammar lets the reply go.
    assert!(!holds(b"Free text <function_calls>nope("));
}
