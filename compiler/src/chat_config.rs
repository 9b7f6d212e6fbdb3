//! What a chat needs from a Hugging Face snapshot besides the weights, read as
//! transformers reads it: the chat templates and the special-token strings they refer
//! to (`tokenizer_config.json`, with `chat_template.jinja` and
//! `additional_chat_templates/NAME.jinja` taking priority over its `chat_template`), and
//! the ids that end generation (`generation_config.json`'s `eos_token_id`).

use std::fs;
use std::path::Path;

use olmo_format::{ChatInfo, ChatTemplate, SpecialTokenString};
use serde_json::Value;

use crate::PackError;

/// The named special tokens a template sees as variables (transformers'
/// `SPECIAL_TOKENS_ATTRIBUTES`, the keys of `special_tokens_map`).
pub const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

fn read_json(path: &Path) -> Result<Option<Value>, PackError> {
    if !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| PackError::Input(format!("{}: {reason}", path.display()));
    let text = fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map(Some).map_err(|e| bad(e.to_string()))
}

fn read_text(path: &Path) -> Result<String, PackError> {
    fs::read_to_string(path).map_err(|e| PackError::Input(format!("{}: {e}", path.display())))
}

/// The chat templates and special-token strings of the snapshot in `dir`; `None` when
/// it has no chat template.
pub fn read_chat_info(dir: &Path) -> Result<Option<ChatInfo>, PackError> {
    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path)?;
    let bad = |reason: String| PackError::Input(format!("{}: {reason}", config_path.display()));
    let mut templates = template_files(dir)?;
    if templates.is_empty() {
        if let Some(config) = &config {
            templates = config_templates(config).map_err(bad)?;
        }
    }
    if templates.is_empty() {
        return Ok(None);
    }
    let special_tokens = match &config {
        Some(config) => special_tokens(config).map_err(bad)?,
        None => Vec::new(),
    };
    let chat = ChatInfo { templates, special_tokens };
    chat.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Some(chat))
}

/// `chat_template.jinja` (named `default`) and `additional_chat_templates/*.jinja` (named
/// by file), in name order after the default.
fn template_files(dir: &Path) -> Result<Vec<ChatTemplate>, PackError> {
    let mut templates = Vec::new();
    let default = dir.join("chat_template.jinja");
    if default.exists() {
        templates.push(ChatTemplate { name: ChatInfo::DEFAULT.into(), source: read_text(&default)? });
    }
    let extra = dir.join("additional_chat_templates");
    if extra.is_dir() {
        let in_dir = |e: std::io::Error| PackError::Input(format!("{}: {e}", extra.display()));
        let mut named = Vec::new();
        for entry in fs::read_dir(&extra).map_err(in_dir)? {
            let path = entry.map_err(in_dir)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jinja"));
            if let Some(name) = name {
                named.push(ChatTemplate { name: name.to_string(), source: read_text(&path)? });
            }
        }
        named.sort_by(|a, b| a.name.cmp(&b.name));
        templates.retain(|t| !named.iter().any(|n| n.name == t.name));
        templates.extend(named);
    }
    Ok(templates)
}

/// `chat_template`: a string (the `default` template) or a list of `{name, template}`.
fn config_templates(config: &Value) -> Result<Vec<ChatTemplate>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(source)) => Ok(vec![ChatTemplate { name: ChatInfo::DEFAULT.into(), source: source.clone() }]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let field = |key: &str| {
                    entry.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                        format!("chat_template entry {i} has no string {key:?} (each is {{\"name\", \"template\"}})")
                    })
                };
                Ok(ChatTemplate { name: field("name")?, source: field("template")? })
            })
            .collect(),
        Some(_) => Err("chat_template is neither a string nor a list of {\"name\", \"template\"}".into()),
    }
}

/// The named special tokens that are set: each a string or an `AddedToken` object with
/// its `content`.
fn special_tokens(config: &Value) -> Result<Vec<SpecialTokenString>, String> {
    let mut tokens = Vec::new();
    for name in SPECIAL_TOKEN_NAMES {
        let content = match config.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(token)) => match token.get("content") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(format!("{name} has no string \"content\"")),
            },
            Some(_) => return Err(format!("{name} is neither a string nor an object with \"content\"")),
        };
        tokens.push(SpecialTokenString { name: name.to_string(), content });
    }
    Ok(tokens)
}

/// `generation_config.json`'s `eos_token_id` (an id or a list of them), if the file
/// sets one: the ids generation stops at, which for chat models are several.
pub fn read_generation_eos(dir: &Path) -> Result<Option<Vec<u32>>, PackError> {
    let path = dir.join("generation_config.json");
    let Some(config) = read_json(&path)? else { return Ok(None) };
    let bad = || PackError::Input(format!("{}: eos_token_id is neither a token id nor a list of them", path.display()));
    let id = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(bad);
    match config.get("eos_token_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(ids)) => ids.iter().map(id).collect::<Result<Vec<u32>, _>>().map(Some),
        Some(one) => Ok(Some(vec![id(one)?])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("olmoc-chat-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) {
            let path = self.0.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_template_string_and_special_tokens() {
        let d = TempDir::new("string");
        d.write(
            "tokenizer_config.json",
            r#"{"chat_template": "{{ bos_token }}", "bos_token": "<s>", "eos_token": {"__type": "AddedToken", "content": "</s>"},
                "unk_token": null, "additional_special_tokens": ["<x>"]}"#,
        );
        let chat = read_chat_info(&d.0).unwrap().unwrap();
        assert_eq!(chat.templates, [ChatTemplate { name: "default".into(), source: "{{ bos_token }}".into() }]);
        let specials: Vec<(&str, &str)> = chat.special_tokens.iter().map(|t| (t.name.as_str(), t.content.as_str())).collect();
        assert_eq!(specials, [("bos_token", "<s>"), ("eos_token", "</s>")]);
    }

    #[test]
    fn a_template_list_and_template_files() {
        let d = TempDir::new("list");
        d.write(
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]}"#,
        );
        let chat = read_chat_info(&d.0).unwrap().unwrap();
        let names: Vec<(&str, &str)> = chat.templates.iter().map(|t| (t.name.as_str(), t.source.as_str())).collect();
        assert_eq!(names, [("default", "A"), ("tool_use", "B")]);
        // Template files win over the config's entries, as in transformers.
        d.write("chat_template.jinja", "C");
        d.write("additional_chat_templates/rag.jinja", "D");
        let chat = read_chat_info(&d.0).unwrap().unwrap();
        let names: Vec<(&str, &str)> = chat.templates.iter().map(|t| (t.name.as_str(), t.source.as_str())).collect();
        assert_eq!(names, [("default", "C"), ("rag", "D")]);
    }

    #[test]
    fn no_template_is_no_chat() {
        let d = TempDir::new("none");
        assert_eq!(read_chat_info(&d.0).unwrap(), None);
        d.write("tokenizer_config.json", r#"{"eos_token": "</s>", "chat_template": null}"#);
        assert_eq!(read_chat_info(&d.0).unwrap(), None);
    }

    #[test]
    fn bad_configs_are_one_line_naming_the_file() {
        let d = TempDir::new("bad");
        for (json, why) in [
            (r#"{"chat_template": 3}"#, "neither a string nor a list"),
            (r#"{"chat_template": [{"name": "a"}]}"#, "entry 0 has no string \"template\""),
            (r#"{"chat_template": [{"name": "a", "template": "x"}, {"name": "a", "template": "y"}]}"#, "two templates are named \"a\""),
            (r#"{"chat_template": "x", "eos_token": 5}"#, "eos_token is neither"),
            (r#"{"chat_template": "x", "eos_token": {"special": true}}"#, "eos_token has no string"),
            ("{", "tokenizer_config.json: EOF"),
        ] {
            d.write("tokenizer_config.json", json);
            let e = read_chat_info(&d.0).unwrap_err().to_string();
            assert!(e.contains("tokenizer_config.json") && e.contains(why), "{json}: {e}");
        }
    }

    #[test]
    fn generation_eos_ids() {
        let d = TempDir::new("eos");
        assert_eq!(read_generation_eos(&d.0).unwrap(), None);
        d.write("generation_config.json", r#"{"eos_token_id": 7}"#);
        assert_eq!(read_generation_eos(&d.0).unwrap(), Some(vec![7]));
        d.write("generation_config.json", r#"{"eos_token_id": [100265, 100257]}"#);
        assert_eq!(read_generation_eos(&d.0).unwrap(), Some(vec![100265, 100257]));
        d.write("generation_config.json", r#"{"pad_token_id": 1}"#);
        assert_eq!(read_generation_eos(&d.0).unwrap(), None);
        for bad in [r#"{"eos_token_id": "x"}"#, r#"{"eos_token_id": [1, -2]}"#, r#"{"eos_token_id": 5000000000}"#] {
            d.write("generation_config.json", bad);
            let e = read_generation_eos(&d.0).unwrap_err().to_string();
            assert!(e.contains("generation_config.json: eos_token_id is neither"), "{bad}: {e}");
        }
    }
}
