//! Stop strings (OpenAI's `stop`): a reply ends where one of them first appears in its
//! text, the stop string left out. Streamed text is released as soon as no stop string
//! can still begin inside it, so a client never sees text that a later token turns into
//! the start of a stop string.

use crate::text::detokenize::Utf8Stream;

/// A reply's text as its tokens arrive, watched for stop strings.
pub struct StopText {
    stops: Vec<String>,
    /// The longest stop string's length in bytes.
    longest: usize,
    utf8: Utf8Stream,
    /// Complete characters so far (up to the stop string once one is found).
    text: String,
    /// Bytes of `text` already released.
    released: usize,
    /// Scratch for one token's completed characters.
    piece: Vec<u8>,
    stopped: bool,
}

impl StopText {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> StopText {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopText { stops, longest, utf8: Utf8Stream::new(), text: String::new(), released: 0, piece: Vec::new(), stopped: false }
    }

    /// Adds a token's bytes; returns the text that may be released now, and whether a
    /// stop string was found (then the reply is over: nothing after it is released).
    pub fn push(&mut self, bytes: &[u8]) -> (&str, bool) {
        if self.stopped {
            return ("", true);
        }
        self.piece.clear();
        // Writing into a Vec cannot fail.
        let _ = self.utf8.push(bytes, &mut self.piece);
        let before = self.text.len();
        // Utf8Stream writes whole characters only.
        self.text.push_str(std::str::from_utf8(&self.piece).unwrap_or(""));
        // A match ending in the new text starts at most `longest - 1` bytes before it.
        let mut from = before.saturating_sub(self.longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str())).min();
        let start = self.released;
        if let Some(at) = found {
            self.text.truncate(from + at);
            self.stopped = true;
            self.released = self.text.len().max(start);
            return (&self.text[start..self.released], true);
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|p| self.text.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        self.released = (self.text.len() - hold).max(start);
        (&self.text[start..self.released], false)
    }

    /// The reply ended for another reason: whatever was held back (and an unfinished
    /// character, as U+FFFD).
    pub fn finish(&mut self) -> &str {
        if !self.stopped {
            self.piece.clear();
            let _ = self.utf8.finish(&mut self.piece);
            self.text.push_str(std::str::from_utf8(&self.piece).unwrap_or(""));
        }
        let start = self.released;
        self.released = self.text.len();
        &self.text[start..]
    }

    /// The reply's text so far (cut before a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], tokens: &[&[u8]]) -> (Vec<String>, bool, String) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for t in tokens {
            let (text, stop) = s.push(t);
            out.push(text.to_string());
            if stop {
                return (out, true, s.text().to_string());
            }
        }
        out.push(s.finish().to_string());
        (out, false, s.text().to_string())
    }

    #[test]
    fn stops_before_the_stop_string_across_tokens() {
        let (out, stopped, text) = run(&["\n\n", "END"], &[b"Hello", b" wor", b"ld\n", b"\nmore"]);
        assert!(stopped);
        assert_eq!(text, "Hello world");
        // "\n" is held back until the next token shows it starts the stop string.
        assert_eq!(out, ["Hello", " wor", "ld", ""]);
        let (out, stopped, text) = run(&["END"], &[b"abE", b"N", b"x", b"EN"]);
        assert!(!stopped);
        assert_eq!(text, "abENxEN");
        assert_eq!(out, ["ab", "", "ENx", "", "EN"]);
        let (_, stopped, text) = run(&["lo w", "o"], &[b"hel", b"lo world"]);
        assert!(stopped);
        assert_eq!(text, "hel", "the earliest match wins");
    }

    #[test]
    fn without_stops_text_flows_and_characters_stay_whole() {
        let euro = "€".as_bytes();
        let (out, stopped, text) = run(&[], &[b"a", &euro[..2], &euro[2..], b"b"]);
        assert!(!stopped);
        assert_eq!(out, ["a", "", "€", "b", ""]);
        assert_eq!(text, "a€b");
        let (out, _, _) = run(&["€"], &[b"x", &euro[..1]]);
        assert_eq!(out, ["x", "", "\u{FFFD}"]);
        let (_, stopped, text) = run(&["€"], &[b"x", &euro[..1], &euro[1..]]);
        assert!(stopped);
        assert_eq!(text, "x");
    }
}
