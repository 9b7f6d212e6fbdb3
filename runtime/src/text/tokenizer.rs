//! Text to token ids with the vocabulary packed in the blob: byte-level BPE as OLMo-2's
//! dolma2 tokenizer (cl100k_base's ranks, split pattern and merge rule) does it.
//!
//! Text is cut into pieces by the cl100k split pattern ([`crate::text::pretokenize`]); a piece
//! that is a token is that token, otherwise its bytes are merged pairwise, always the
//! adjacent pair whose concatenation is the token with the lowest id (ids are the merge
//! ranks). Special tokens (`<|endoftext|>`, ...) are never produced by merging; their
//! spellings in the text are matched only when asked for.
//!
//! The bytes -> id table is built from the blob's vocabulary when a [`Tokenizer`] is
//! made (a few milliseconds for 100k tokens), so only runs that encode text pay for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use olmo_format::vocab::VocabView;

use crate::text::pretokenize::Splitter;
use crate::RunError;

/// FNV-1a: token spellings are short, and the table is built once per run.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Ranks<'a> = HashMap<&'a [u8], u32, BuildHasherDefault<Fnv>>;

/// An encoder over a packed vocabulary.
pub struct Tokenizer<'a> {
    vocab: VocabView<'a>,
    ranks: Ranks<'a>,
    /// Special tokens' spellings with their ids, longest first.
    specials: Vec<(&'a str, u32)>,
    splitter: Splitter,
}

impl<'a> Tokenizer<'a> {
    /// Builds the rank table: every token that is not special, by its bytes (the lowest
    /// id wins if two tokens share their bytes).
    pub fn new(vocab: VocabView<'a>) -> Tokenizer<'a> {
        let n = vocab.len() as u32;
        let mut ranks: Ranks<'a> = HashMap::with_capacity_and_hasher(n as usize, Default::default());
        let mut specials = Vec::new();
        for id in 0..n {
            let Some(bytes) = vocab.token(id) else { continue };
            if bytes.is_empty() {
                continue;
            }
            if vocab.is_special(id) {
                if let Ok(s) = std::str::from_utf8(bytes) {
                    specials.push((s, id));
                }
            } else {
                ranks.entry(bytes).or_insert(id);
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Tokenizer {
            vocab,
            ranks,
            specials,
            splitter: Splitter::new(),
        }
    }

    /// The id of a special token by its spelling, e.g. `<|endoftext|>`.
    pub fn special_id(&self, spelling: &str) -> Option<u32> {
        self.specials.iter().find(|s| s.0 == spelling).map(|s| s.1)
    }

    /// The spellings of the special tokens, longest first.
    pub fn special_spellings(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.specials.iter().map(|s| s.0)
    }

    /// Encodes `text`. With `allow_special`, special-token spellings in the text become
    /// their ids; otherwise they are ordinary text.
    pub fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>, RunError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        if !allow_special || self.specials.is_empty() {
            self.encode_ordinary_into(text, &mut ids)?;
            return Ok(ids);
        }
        // The next occurrence of each special at or after `pos` (None: no more).
        let mut next: Vec<Option<usize>> = self.specials.iter().map(|s| text.find(s.0)).collect();
        let mut pos = 0;
        loop {
            // The earliest occurrence; on a tie the longest spelling (specials are
            // sorted longest first and `min_by_key` keeps the first minimum).
            let best = next
                .iter()
                .enumerate()
                .filter_map(|(k, at)| at.map(|at| (at, k)))
                .min_by_key(|&(at, _)| at);
            let Some((at, k)) = best else { break };
            let (spelling, id) = self.specials[k];
            self.encode_ordinary_into(&text[pos..at], &mut ids)?;
            ids.push(id);
            pos = at + spelling.len();
            for (j, slot) in next.iter_mut().enumerate() {
                if slot.is_some_and(|at| at < pos) {
                    *slot = text[pos..].find(self.specials[j].0).map(|p| p + pos);
                }
            }
        }
        self.encode_ordinary_into(&text[pos..], &mut ids)?;
        Ok(ids)
    }

    /// Encodes `text` with special-token spellings as ordinary text.
    pub fn encode_ordinary_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), RunError> {
        let mut pieces = Vec::new();
        self.splitter.split(text, &mut pieces);
        let mut scratch = Vec::new();
        for piece in pieces {
            self.bpe(piece.as_bytes(), ids, &mut scratch)?;
        }
        Ok(())
    }

    /// Byte-pair encodes one piece. `parts` holds, for each current part, its start and
    /// the rank of merging it with the part after it (`u32::MAX`: no such token).
    fn bpe(
        &self,
        piece: &[u8],
        ids: &mut Vec<u32>,
        parts: &mut Vec<(usize, u32)>,
    ) -> Result<(), RunError> {
        if let Some(&id) = self.ranks.get(piece) {
            ids.push(id);
            return Ok(());
        }
        // Parts are single bytes to begin with; `parts` has a sentinel at the end.
        parts.clear();
        parts.extend((0..=piece.len()).map(|i| (i, u32::MAX)));
        let rank = |parts: &[(usize, u32)], i: usize| -> u32 {
            // The rank of merging parts i and i + 1 (which needs a part i + 2 as its end).
            if i + 2 < parts.len() {
                let bytes = &piece[parts[i].0..parts[i + 2].0];
                self.ranks.get(bytes).copied().unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        for i in 0..parts.len() {
            parts[i].1 = rank(parts, i);
        }
        loop {
            // The lowest rank, leftmost on ties.
            let mut best = (u32::MAX, 0);
            for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
                if r < best.0 {
                    best = (r, i);
                }
            }
            if best.0 == u32::MAX {
                break;
            }
            let i = best.1;
            parts.remove(i + 1);
            parts[i].1 = rank(parts, i);
            if i > 0 {
                parts[i - 1].1 = rank(parts, i - 1);
            }
        }
        for w in parts.windows(2) {
            let bytes = &piece[w[0].0..w[1].0];
            match self.ranks.get(bytes) {
                Some(&id) => ids.push(id),
                None => {
                    return Err(RunError::Tokens(format!(
                        "cannot encode {:?}: the vocabulary has no token for the byte{} {}",
                        String::from_utf8_lossy(piece),
                        if bytes.len() == 1 { "" } else { "s" },
                        bytes.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(" ")
                    )))
                }
            }
        }
        Ok(())
    }

    /// The bytes of `ids` joined (ids without bytes, such as padding rows, add nothing).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.vocab.token(id).unwrap_or(&[]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use olmo_format::vocab::Vocab;

    /// A toy vocabulary: all bytes, then merges in rank order, then one special.
    fn toy() -> (Vocab, olmo_format::VocabInfo) {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for m in ["ab", "bc", "abc", " a", "aa", "aaaa"] {
            tokens.push(m.as_bytes().to_vec());
        }
        tokens.push(b"<|end|>".to_vec());
        let special_ids = vec![tokens.len() as u32 - 1];
        let v = Vocab { tokens, special_ids };
        let info = v.info();
        (v, info)
    }

    #[test]
    fn merges_lowest_rank_first() {
        let (v, info) = toy();
        let olmo_format::vocab::PackedVocab { offsets, bytes } = v.to_packed();
        let t = Tokenizer::new(VocabView::new(&info, &offsets, &bytes));
        // "abc": ab (256) beats bc (257), then ab+c = abc (258).
        assert_eq!(t.encode("abc", false).unwrap(), [258]);
        // "bcab" is one piece: bc and ab merge, "bcab" is no token.
        assert_eq!(t.encode("bcab", false).unwrap(), [257, 256]);
        // Five a's: aa aa a, then aaaa.
        assert_eq!(t.encode("aaaaa", false).unwrap(), [261, 97]);
        // " ab" is one piece; ab (256) merges before " a" (259).
        assert_eq!(t.encode(" ab", false).unwrap(), [32, 256]);
    }

    #[test]
    fn specials_only_when_asked() {
        let (v, info) = toy();
        let olmo_format::vocab::PackedVocab { offsets, bytes } = v.to_packed();
        let t = Tokenizer::new(VocabView::new(&info, &offsets, &bytes));
        let special = t.encode("x<|end|>y<|end|>", true).unwrap();
        assert_eq!(special, [120, 262, 121, 262]);
        let ordinary = t.encode("x<|end|>y", false).unwrap();
        assert!(!ordinary.contains(&262));
        assert_eq!(t.decode(&ordinary), b"x<|end|>y");
        assert_eq!(t.special_id("<|end|>"), Some(262));
    }

    #[test]
    fn a_missing_byte_is_an_error() {
        let v = Vocab { tokens: vec![b"a".to_vec()], special_ids: vec![] };
        let info = v.info();
        let olmo_format::vocab::PackedVocab { offsets, bytes } = v.to_packed();
        let t = Tokenizer::new(VocabView::new(&info, &offsets, &bytes));
        let e = t.encode("ab", false).unwrap_err().to_string();
        assert!(e.contains("no token for the byte 0x62"), "{e}");
    }
}
