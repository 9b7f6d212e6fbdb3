//! The pre-tokenizer of cl100k_base (and so of OLMo-2's dolma2 tokenizer): text is cut
//! into pieces by
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! and each piece is byte-pair encoded on its own. The `regex` crate has no lookahead,
//! so the pattern is written out by hand here as what a backtracking engine does with
//! it: at each position the first alternative that matches wins. Every alternative is a
//! run of one character class, so this is a few comparisons per character, with no
//! backtracking and no regex engine.
//!
//! `\p{L}`, `\p{N}` and `\s` are Unicode's: general categories L* and N*, and the
//! White_Space property. `char::is_alphabetic` is the Alphabetic property (it includes
//! combining marks and letter numbers such as Roman numerals), not `\p{L}`, so the
//! classes come from regex-syntax's tables, the same ones `regex` and `fancy-regex`
//! (which tiktoken uses for this very pattern) match with.

use regex_syntax::hir::{Class, HirKind};

/// A set of characters as sorted, disjoint inclusive ranges, with an ASCII bitmap.
struct CharSet {
    ascii: u128,
    ranges: Vec<(u32, u32)>,
}

impl CharSet {
    fn from_class(pattern: &str) -> CharSet {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(true)
            .build()
            .parse(pattern)
            .expect("a valid Unicode class");
        let ranges: Vec<(u32, u32)> = match hir.kind() {
            HirKind::Class(Class::Unicode(class)) => class
                .ranges()
                .iter()
                .map(|r| (r.start() as u32, r.end() as u32))
                .collect(),
            other => unreachable!("{pattern} parsed as {other:?}"),
        };
        let mut ascii = 0u128;
        for &(lo, hi) in &ranges {
            for c in lo..=hi.min(127) {
                ascii |= 1 << c;
            }
        }
        CharSet { ascii, ranges }
    }

    #[inline]
    fn contains(&self, c: char) -> bool {
        let c = c as u32;
        if c < 128 {
            return self.ascii & (1 << c) != 0;
        }
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

/// The character classes of the split pattern.
pub struct Splitter {
    letter: CharSet,
    number: CharSet,
    space: CharSet,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new()
    }
}

/// Whether `c` matches the letter `lower` case-insensitively, as `(?i)` does (simple
/// case folding: `s` also matches U+017F LATIN SMALL LETTER LONG S).
fn folds_to(c: char, lower: char) -> bool {
    c == lower || c == lower.to_ascii_uppercase() || (lower == 's' && c == '\u{17F}')
}

impl Splitter {
    pub fn new() -> Splitter {
        Splitter {
            letter: CharSet::from_class(r"\p{L}"),
            number: CharSet::from_class(r"\p{N}"),
            space: CharSet::from_class(r"\s"),
        }
    }

    fn is_letter(&self, c: Option<char>) -> bool {
        c.is_some_and(|c| self.letter.contains(c))
    }

    fn is_number(&self, c: Option<char>) -> bool {
        c.is_some_and(|c| self.number.contains(c))
    }

    fn is_space(&self, c: Option<char>) -> bool {
        c.is_some_and(|c| self.space.contains(c))
    }

    /// `[^\s\p{L}\p{N}]`
    fn is_other(&self, c: Option<char>) -> bool {
        c.is_some_and(|c| {
            !self.space.contains(c) && !self.letter.contains(c) && !self.number.contains(c)
        })
    }

    /// Cuts `text` into pieces, appending them to `out`; their concatenation is `text`.
    pub fn split<'t>(&self, text: &'t str, out: &mut Vec<&'t str>) {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
        let mut i = 0;
        while i < chars.len() {
            let end = self.piece_end(&chars, i);
            debug_assert!(end > i);
            out.push(&text[byte_at(i)..byte_at(end)]);
            i = end;
        }
    }

    /// The end (a char index) of the piece that starts at char `i`.
    fn piece_end(&self, chars: &[(usize, char)], i: usize) -> usize {
        let at = |j: usize| chars.get(j).map(|&(_, c)| c);
        let run = |mut j: usize, class: &dyn Fn(Option<char>) -> bool| {
            while class(at(j)) {
                j += 1;
            }
            j
        };
        let c = chars[i].1;

        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' {
            if let Some(d) = at(i + 1) {
                let e = at(i + 2);
                let pair = |first: char, second: char| {
                    folds_to(d, first) && e.is_some_and(|e| folds_to(e, second))
                };
                if pair('r', 'e') || pair('v', 'e') || pair('l', 'l') {
                    return i + 3;
                }
                if ['s', 't', 'm', 'd'].iter().any(|&l| folds_to(d, l)) {
                    return i + 2;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        let letter = |c: Option<char>| self.is_letter(c);
        if self.is_letter(Some(c)) {
            return run(i, &letter);
        }
        if c != '\r' && c != '\n' && !self.is_number(Some(c)) && self.is_letter(at(i + 1)) {
            return run(i + 1, &letter);
        }

        // \p{N}{1,3}
        if self.is_number(Some(c)) {
            let mut j = i + 1;
            while j < i + 3 && self.is_number(at(j)) {
                j += 1;
            }
            return j;
        }

        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let start = if c == ' ' { i + 1 } else { i };
        if self.is_other(at(start)) {
            let j = run(start, &|c| self.is_other(c));
            return run(j, &|c| matches!(c, Some('\r' | '\n')));
        }

        // Everything else starts with whitespace: c is neither a letter, a number nor
        // another character.
        let end = run(i, &|c| self.is_space(c));
        // \s*[\r\n]+ : through the last line break of the whitespace run.
        if let Some(k) = (i..end).rev().find(|&k| matches!(chars[k].1, '\r' | '\n')) {
            return k + 1;
        }
        // \s+(?!\S) : the whole run at the end of the text, otherwise all of it but the
        // last character, which then joins the next piece (" word").
        if end == chars.len() {
            return end;
        }
        if end - i >= 2 {
            return end - 1;
        }
        // \s+ : a single whitespace character before a non-space.
        i + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        Splitter::new().split(text, &mut out);
        assert_eq!(out.concat(), text);
        out
    }

    #[test]
    fn splits_words_numbers_and_punctuation() {
        assert_eq!(pieces("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(pieces("1234567 x"), ["123", "456", "7", " x"]);
        assert_eq!(pieces("it's WE'RE 'sa"), ["it", "'s", " WE", "'RE", " '", "sa"]);
        assert_eq!(pieces("(hello) ...\n\nx"), ["(hello", ")", " ...\n\n", "x"]);
    }

    #[test]
    fn splits_whitespace_runs() {
        assert_eq!(pieces("a  b"), ["a", " ", " b"]);
        assert_eq!(pieces("a   "), ["a", "   "]);
        assert_eq!(pieces("a \n  \n b"), ["a", " \n  \n", " b"]);
        assert_eq!(pieces("\tx"), ["\tx"]);
        assert_eq!(pieces("a\t\tb"), ["a", "\t", "\tb"]);
        assert_eq!(pieces(" 1"), [" ", "1"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
    }

    #[test]
    fn classes_are_unicode_categories() {
        let s = Splitter::new();
        // Vowel signs are Alphabetic but not \p{L}; Roman numerals are \p{N}.
        assert!('\u{093F}'.is_alphabetic() && !s.letter.contains('\u{093F}'));
        assert!(s.number.contains('Ⅻ') && !s.letter.contains('Ⅻ'));
        assert!(s.letter.contains('ж') && s.letter.contains('日') && s.number.contains('٣'));
        assert!(s.space.contains('\u{a0}') && s.space.contains('\u{3000}'));
        assert!(!s.space.contains('\u{200b}'));
    }

    #[test]
    fn case_folding_matches_regex_syntax() {
        // Every character `(?i)x` matches, for the letters of the contractions.
        for letter in ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'] {
            let set = CharSet::from_class(&format!("(?i)[{letter}]"));
            let matched: Vec<char> = set
                .ranges
                .iter()
                .flat_map(|&(lo, hi)| (lo..=hi).filter_map(char::from_u32))
                .collect();
            let accepted: Vec<char> =
                ('\0'..=char::MAX).filter(|&c| folds_to(c, letter)).collect();
            assert_eq!(matched, accepted, "(?i){letter}");
        }
    }
}
