//! Token text for people: escaping for one-line traces, and UTF-8-safe streaming for
//! running text (a token may end in the middle of a multi-byte character).

use std::fmt::{self, Write};

/// Displays raw token bytes on one line: valid UTF-8 as itself except `"`, `\` and
/// control characters, which are escaped as in Rust string literals; bytes that are not
/// valid UTF-8 (such as half of a character split across tokens) as `\xNN`.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                    c => f.write_char(c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Joins token bytes into text, holding back an incomplete trailing character until the
/// bytes that complete it arrive.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Utf8Stream {
        Utf8Stream {
            pending: Vec::with_capacity(8),
        }
    }

    /// Appends `bytes` and writes out everything that is complete. Invalid sequences
    /// become U+FFFD, as `String::from_utf8_lossy` would make them.
    pub fn push(&mut self, bytes: &[u8], out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut consumed = 0;
        let mut chunks = self.pending.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            out.write_all(chunk.valid().as_bytes())?;
            consumed += chunk.valid().len();
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            // The last invalid run may be the start of a character still to come.
            if chunks.peek().is_none() && could_be_incomplete(invalid) {
                break;
            }
            out.write_all("\u{FFFD}".as_bytes())?;
            consumed += invalid.len();
        }
        self.pending.drain(..consumed);
        Ok(())
    }

    /// Writes whatever is held back (as U+FFFD): the end of the text.
    pub fn finish(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            out.write_all("\u{FFFD}".as_bytes())?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Whether `tail` is a proper prefix of some UTF-8 character.
fn could_be_incomplete(tail: &[u8]) -> bool {
    let need = match tail[0] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return false,
    };
    tail.len() < need && tail[1..].iter().all(|b| b & 0xC0 == 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_quotes_and_broken_bytes() {
        assert_eq!(Escaped(b"a\"b\\c\n\t").to_string(), "a\\\"b\\\\c\\n\\t");
        assert_eq!(Escaped("é".as_bytes()).to_string(), "é");
        assert_eq!(Escaped(&"é".as_bytes()[..1]).to_string(), "\\xc3");
        assert_eq!(Escaped(b"\x01").to_string(), "\\u{1}");
    }

    #[test]
    fn streams_a_character_split_across_tokens() {
        let euro = "€".as_bytes(); // three bytes
        let mut s = Utf8Stream::new();
        let mut out = Vec::new();
        s.push(b"price: ", &mut out).unwrap();
        s.push(&euro[..1], &mut out).unwrap();
        assert_eq!(out, b"price: ");
        s.push(&euro[1..2], &mut out).unwrap();
        assert_eq!(out, b"price: ");
        s.push(&euro[2..], &mut out).unwrap();
        s.push(b"5", &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "price: €5");
    }

    #[test]
    fn replaces_invalid_bytes_and_unfinished_tails() {
        let mut s = Utf8Stream::new();
        let mut out = Vec::new();
        s.push(b"a\xffb\xe2\x82", &mut out).unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "a\u{FFFD}b");
        s.finish(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\u{FFFD}b\u{FFFD}");
    }
}
