//! The vocabulary of a Hugging Face `tokenizer.json`: `model.vocab` maps byte-level
//! token spellings (GPT-2's alphabet) to ids, and `added_tokens` lists the added tokens
//! (`<|endoftext|>`, ...) with their ids and their text as it is, not byte-level.
//!
//! Every added token is packed as special: none of them is a byte-pair merge (their ids
//! are not merge ranks), so the runtime's encoder must never produce them by merging.

use std::collections::BTreeMap;
use std::path::Path;

use olmo_format::vocab::{decode_byte_level, Vocab};
use serde::Deserialize;

use crate::PackError;

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    model: TokenizerModel,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct TokenizerModel {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: BTreeMap<String, u32>,
}

/// Reads `path` into a vocabulary with ids `0..n`, every id present.
pub fn read_tokenizer_json(path: &Path) -> Result<Vocab, PackError> {
    let bad = |reason: String| PackError::Input(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let parsed: TokenizerJson = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    parse(parsed).map_err(bad)
}

/// Parses the text of a `tokenizer.json`.
pub fn parse_tokenizer_json(text: &str) -> Result<Vocab, String> {
    parse(serde_json::from_str(text).map_err(|e| e.to_string())?)
}

fn parse(t: TokenizerJson) -> Result<Vocab, String> {
    if let Some(kind) = t.model.kind.as_deref() {
        if kind != "BPE" {
            return Err(format!("model type {kind:?} is not BPE"));
        }
    }
    let mut by_id: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for (spelling, &id) in &t.model.vocab {
        if by_id.insert(id, decode_byte_level(spelling)).is_some() {
            return Err(format!("model.vocab gives id {id} to more than one token"));
        }
    }
    let mut special_ids = Vec::new();
    for added in &t.added_tokens {
        let bytes = added.content.as_bytes().to_vec();
        if let Some(existing) = by_id.get(&added.id) {
            // An added token may repeat a vocabulary entry; it must be the same token.
            if *existing != bytes && decode_byte_level(&added.content) != *existing {
                return Err(format!(
                    "added token {:?} has id {}, which model.vocab gives to another token",
                    added.content, added.id
                ));
            }
        }
        by_id.insert(added.id, bytes);
        special_ids.push(added.id);
    }
    special_ids.sort_unstable();
    special_ids.dedup();
    let n = by_id.len();
    if n == 0 {
        return Err("no tokens".into());
    }
    if let Some((expected, _)) = by_id.keys().enumerate().find(|(i, &id)| *i as u32 != id) {
        return Err(format!(
            "token ids are not 0..{n}: no token has id {expected}"
        ));
    }
    Ok(Vocab {
        tokens: by_id.into_values().collect(),
        special_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vocab_and_added_tokens() {
        let json = r#"{
            "version": "1.0",
            "added_tokens": [
                {"id": 4, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 5, "content": "|||EMAIL|||", "special": false}
            ],
            "model": {"type": "BPE", "vocab": {"a": 0, "Ġ": 1, "Ċ": 2, "ĠĊ": 3}, "merges": ["Ġ Ċ"]}
        }"#;
        let v = parse_tokenizer_json(json).unwrap();
        assert_eq!(v.tokens, [&b"a"[..], b" ", b"\n", b" \n", b"<|endoftext|>", b"|||EMAIL|||"]);
        assert_eq!(v.special_ids, [4, 5]);
    }

    #[test]
    fn refuses_gaps_duplicates_and_other_models() {
        let gap = r#"{"model": {"vocab": {"a": 0, "b": 2}}}"#;
        assert!(parse_tokenizer_json(gap).unwrap_err().contains("no token has id 1"));
        let dup = r#"{"model": {"vocab": {"a": 0, "b": 0}}}"#;
        assert!(parse_tokenizer_json(dup).unwrap_err().contains("more than one"));
        let clash = r#"{"added_tokens": [{"id": 0, "content": "<s>"}], "model": {"vocab": {"a": 0}}}"#;
        assert!(parse_tokenizer_json(clash).unwrap_err().contains("another token"));
        let wordpiece = r#"{"model": {"type": "WordPiece", "vocab": {"a": 0}}}"#;
        assert!(parse_tokenizer_json(wordpiece).unwrap_err().contains("not BPE"));
        assert!(parse_tokenizer_json("{}").is_err());
    }
}
