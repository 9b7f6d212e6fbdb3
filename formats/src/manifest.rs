use serde::{Deserialize, Serialize};

use crate::{DType, FormatError, Layout, ModelConfig};

/// Everything about the file but the tensor bytes: encoded with bincode (fixed-width
/// little-endian integers, `u64` lengths) right after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Who wrote the file, e.g. `olmoc 0.1.0`.
    #[serde(deserialize_with = "borrowed_string")]
    pub producer: String,
    pub config: ModelConfig,
    /// In increasing offset order, without overlap.
    pub tensors: Vec<TensorEntry>,
    /// Present when the vocabulary was packed (its bytes are the `tokenizer.*` tensors).
    pub vocab: Option<VocabInfo>,
    /// Present when the checkpoint has a chat template.
    pub chat: Option<ChatInfo>,
}

/// What rendering a conversation needs: the templates of `tokenizer_config.json` and the
/// special-token strings they refer to by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatInfo {
    /// `chat_template`: a single string packs as one template named `default`; a list
    /// of `{name, template}` keeps every one. At least one, names unique.
    pub templates: Vec<ChatTemplate>,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token`, ...: the strings templates
    /// see as variables of those names. Names unique.
    pub special_tokens: Vec<SpecialTokenString>,
}

/// One Jinja chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTemplate {
    #[serde(deserialize_with = "borrowed_string")]
    pub name: String,
    #[serde(deserialize_with = "borrowed_string")]
    pub source: String,
}

/// A special token's role and spelling, e.g. `eos_token` = `<|endoftext|>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecialTokenString {
    #[serde(deserialize_with = "borrowed_string")]
    pub name: String,
    #[serde(deserialize_with = "borrowed_string")]
    pub content: String,
}

impl ChatInfo {
    /// The name a template packed from a single `chat_template` string gets, and the
    /// one used unless another is asked for.
    pub const DEFAULT: &'static str = "default";

    /// The template called `name`.
    pub fn template(&self, name: &str) -> Option<&ChatTemplate> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// The spelling of the special token with role `name` (`eos_token`, ...).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.iter().find(|t| t.name == name).map(|t| t.content.as_str())
    }

    /// At least one template; names unique among templates and among special tokens.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.templates.is_empty() {
            return Err(FormatError::Chat("no templates".into()));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(t) = self.templates.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(FormatError::Chat(format!("two templates are named {:?}", t.name)));
        }
        names.clear();
        if let Some(t) = self.special_tokens.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(FormatError::Chat(format!("special token {:?} is given twice", t.name)));
        }
        Ok(())
    }
}

/// One row of the tensor table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    #[serde(deserialize_with = "borrowed_string")]
    pub name: String,
    /// A [`DType`] code; kept raw so an unknown code is reported with the tensor's name.
    pub dtype: u8,
    /// A [`Layout`] code, likewise.
    pub layout: u8,
    /// Logical shape; matrices are `[out, in]`.
    pub shape: Vec<u64>,
    /// Start of the tensor's bytes, relative to the start of the data region.
    pub offset: u64,
    pub byte_len: u64,
    /// CRC-32 (IEEE) of the tensor's bytes, checked by `olmoc verify`, not on open.
    pub crc32: u32,
}

impl TensorEntry {
    pub fn dtype(&self) -> Result<DType, FormatError> {
        DType::from_code(self.dtype).ok_or_else(|| FormatError::UnknownDType {
            name: self.name.clone(),
            code: self.dtype,
        })
    }

    pub fn layout(&self) -> Result<Layout, FormatError> {
        Layout::from_code(self.layout).ok_or_else(|| FormatError::UnknownLayout {
            name: self.name.clone(),
            code: self.layout,
        })
    }
}

/// The packed tokenizer vocabulary. Token ids are indices; for ids below
/// `special_ids`' entries the ids double as byte-pair merge ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabInfo {
    /// Number of tokens with bytes (may be less than `vocab_size`, whose tail is padding).
    pub n_tokens: u32,
    /// Ids of special tokens (`<|endoftext|>`, ...): never produced by byte-pair merging.
    pub special_ids: Vec<u32>,
}

/// Decodes a string by borrowing it from the input first. bincode's owned-string path
/// allocates whatever length the bytes claim (up to the decode limit) before it finds
/// out the bytes are not there; the borrowed path checks the claim against the bytes
/// present, so a corrupt length costs nothing.
pub(crate) fn borrowed_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Str;
    impl serde::de::Visitor<'_> for Str {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    d.deserialize_str(Str)
}

/// Fixed-width integers, so the manifest's size does not depend on the values in it.
const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
> = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding();

/// A manifest larger than this is refused before decoding (a real one is a few KiB per layer).
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, BINCODE)
            .expect("encoding a manifest into memory cannot fail")
    }

    /// Decodes exactly `bytes`. No allocation is larger than `bytes` requires: strings are
    /// borrowed before they are copied ([`borrowed_string`]), and sequences grow as their
    /// elements decode (serde preallocates at most 1 MiB whatever length is claimed), so
    /// a length prefix larger than what remains fails when the bytes run out.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(FormatError::ManifestDecode(format!(
                "{} bytes is more than the limit of {MAX_MANIFEST_LEN}",
                bytes.len()
            )));
        }
        // The limit also caps what bincode may claim for any one container.
        let config = BINCODE.with_limit::<{ MAX_MANIFEST_LEN as usize }>();
        let (manifest, used): (Manifest, usize) =
            bincode::serde::decode_from_slice(bytes, config)
                .map_err(|e| FormatError::ManifestDecode(e.to_string()))?;
        if used != bytes.len() {
            return Err(FormatError::ManifestDecode(format!(
                "{} unused bytes after the manifest",
                bytes.len() - used
            )));
        }
        Ok(manifest)
    }
}
