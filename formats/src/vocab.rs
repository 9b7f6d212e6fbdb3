//! The tokenizer vocabulary: reading `vocab.txt`, GPT-2 byte-level decoding, and the
//! packed form a blob holds (every token's raw bytes, so the runtime decodes nothing).

use std::io::{self, Write};

use crate::writer::TensorSpec;
use crate::{DType, VocabInfo, VOCAB_BYTES, VOCAB_OFFSETS};

/// GPT-2's byte-level alphabet: the character that stands for each byte value. Printable
/// Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100.. in order.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

/// The inverse of [`byte_to_char`], indexed by code point (all of them are below U+0144).
fn char_to_byte() -> [Option<u8>; 0x144] {
    let mut inverse = [None; 0x144];
    for (b, c) in byte_to_char().iter().enumerate() {
        inverse[*c as usize] = Some(b as u8);
    }
    inverse
}

/// Undoes the `vocab.txt` escapes (`\n`, `\r`, `\t`, `\\`).
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => return Err("a lone backslash at the end".into()),
        }
    }
    Ok(out)
}

/// Decodes one token from its byte-level spelling to raw bytes. Characters outside the
/// byte-level alphabet (added tokens are stored verbatim by some tokenizers) are kept as
/// their UTF-8 bytes.
pub fn decode_byte_level(token: &str) -> Vec<u8> {
    let inverse = char_to_byte();
    let mut bytes = Vec::with_capacity(token.len());
    for c in token.chars() {
        match inverse.get(c as usize).copied().flatten() {
            Some(b) => bytes.push(b),
            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bytes
}

/// A vocabulary as raw token bytes, ready to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    pub tokens: Vec<Vec<u8>>,
    pub special_ids: Vec<u32>,
}

/// Whether a token spelling is a special (added, control) token such as `<|endoftext|>`.
fn looks_special(spelling: &str) -> bool {
    spelling.len() > 4 && spelling.starts_with("<|") && spelling.ends_with("|>")
        || spelling.len() > 6 && spelling.starts_with("|||") && spelling.ends_with("|||")
}

impl Vocab {
    /// Parses `vocab.txt`: one `id<TAB>token` line per token, ids `0, 1, 2, ...` in order,
    /// tokens in GPT-2 byte-level form with `\n \r \t \\` escaped.
    pub fn parse_vocab_txt(text: &str) -> Result<Vocab, String> {
        let mut tokens = Vec::new();
        let mut special_ids = Vec::new();
        for (line_no, line) in text.lines().enumerate() {
            let line_no = line_no + 1;
            if line.is_empty() {
                continue;
            }
            let (id, spelling) = line
                .split_once('\t')
                .ok_or_else(|| format!("line {line_no}: expected id<TAB>token"))?;
            let id: usize = id
                .parse()
                .map_err(|_| format!("line {line_no}: {id:?} is not a token id"))?;
            if id != tokens.len() {
                return Err(format!(
                    "line {line_no}: id {id} out of order (expected {})",
                    tokens.len()
                ));
            }
            let spelling = unescape(spelling).map_err(|e| format!("line {line_no}: {e}"))?;
            if looks_special(&spelling) {
                special_ids.push(id as u32);
            }
            tokens.push(decode_byte_level(&spelling));
        }
        if tokens.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Vocab {
            tokens,
            special_ids,
        })
    }

    /// The packed form: offsets (`n + 1` entries) and the concatenated bytes.
    pub fn to_packed(&self) -> PackedVocab {
        let mut offsets = Vec::with_capacity(self.tokens.len() + 1);
        let mut bytes = Vec::new();
        offsets.push(0);
        for t in &self.tokens {
            bytes.extend_from_slice(t);
            offsets.push(bytes.len() as u32);
        }
        PackedVocab { offsets, bytes }
    }

    pub fn info(&self) -> VocabInfo {
        VocabInfo {
            n_tokens: self.tokens.len() as u32,
            special_ids: self.special_ids.clone(),
        }
    }
}

/// A vocabulary as the two tensors a blob stores it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedVocab {
    /// `n + 1` offsets into `bytes`.
    pub offsets: Vec<u32>,
    /// Every token's raw bytes, back to back.
    pub bytes: Vec<u8>,
}

impl PackedVocab {
    /// The specs of the [`VOCAB_OFFSETS`] and [`VOCAB_BYTES`] tensors.
    pub fn tensor_specs(&self) -> [TensorSpec; 2] {
        [
            TensorSpec::plain(VOCAB_OFFSETS, DType::U32, vec![self.offsets.len() as u64]),
            TensorSpec::plain(VOCAB_BYTES, DType::U8, vec![self.bytes.len() as u64]),
        ]
    }

    /// Writes the bytes of the vocabulary tensor `name`; `None` if `name` is not one.
    pub fn write_tensor(&self, name: &str, out: &mut dyn Write) -> Option<io::Result<()>> {
        match name {
            VOCAB_OFFSETS => {
                let le: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
                Some(out.write_all(&le))
            }
            VOCAB_BYTES => Some(out.write_all(&self.bytes)),
            _ => None,
        }
    }
}

/// The packed vocabulary inside a blob. Offsets are read lazily and every access is
/// bounds-checked, so a corrupt offsets table yields `None`, never a bad slice.
#[derive(Debug, Clone, Copy)]
pub struct VocabView<'a> {
    pub info: &'a VocabInfo,
    offsets: &'a [u32],
    bytes: &'a [u8],
}

impl<'a> VocabView<'a> {
    pub fn new(info: &'a VocabInfo, offsets: &'a [u32], bytes: &'a [u8]) -> VocabView<'a> {
        VocabView {
            info,
            offsets,
            bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes of token `id`, or `None` if the id has no bytes (padding rows of the
    /// embedding) or the table is corrupt.
    pub fn token(&self, id: u32) -> Option<&'a [u8]> {
        let start = *self.offsets.get(id as usize)? as usize;
        let end = *self.offsets.get(id as usize + 1)? as usize;
        self.bytes.get(start..end)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.info.special_ids.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_over_bytes() {
        let table = byte_to_char();
        let mut seen = std::collections::HashSet::new();
        for c in table {
            assert!(seen.insert(c));
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(table[0xAD], 'Ń');
        for b in 0..=255u8 {
            assert_eq!(decode_byte_level(&table[b as usize].to_string()), vec![b]);
        }
    }

    #[test]
    fn parses_escapes_and_specials() {
        let v = Vocab::parse_vocab_txt("0\tĠhello\n1\t\\n\n2\t\\\\\n3\t<|endoftext|>\n4\tĊĊ\n")
            .unwrap();
        assert_eq!(v.tokens[0], b" hello");
        // `\n` in the file is the two characters backslash, n: a literal newline char,
        // which is not a byte-level character and so stays as itself.
        assert_eq!(v.tokens[1], b"\n");
        assert_eq!(v.tokens[2], b"\\");
        assert_eq!(v.tokens[3], b"<|endoftext|>");
        assert_eq!(v.tokens[4], b"\n\n");
        assert_eq!(v.special_ids, vec![3]);
    }

    #[test]
    fn refuses_malformed_lines() {
        assert!(Vocab::parse_vocab_txt("0\ta\n2\tb\n").unwrap_err().contains("out of order"));
        assert!(Vocab::parse_vocab_txt("zero\ta\n").unwrap_err().contains("not a token id"));
        assert!(Vocab::parse_vocab_txt("0 a\n").unwrap_err().contains("id<TAB>token"));
        assert!(Vocab::parse_vocab_txt("0\ta\\q\n").unwrap_err().contains("escape"));
        assert!(Vocab::parse_vocab_txt("").is_err());
    }

    #[test]
    fn packed_view_is_bounds_checked() {
        let v = Vocab::parse_vocab_txt("0\ta\n1\tbc\n").unwrap();
        let packed = v.to_packed();
        let info = v.info();
        let view = VocabView::new(&info, &packed.offsets, &packed.bytes);
        assert_eq!(view.token(1), Some(&b"bc"[..]));
        assert_eq!(view.token(2), None);
        let corrupt = [0u32, 5, 1];
        let view = VocabView::new(&info, &corrupt, &packed.bytes);
        assert_eq!(view.token(0), None);
        assert_eq!(view.token(1), None);
    }
}
