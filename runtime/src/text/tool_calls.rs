//! Tool calls in a reply: the text a model writes to call functions, read back as
//! OpenAI's `tool_calls` (a name and the arguments as a JSON object's text each).
//!
//! A chat template tells which syntax its model writes ([`ToolSyntax::of_template`]).
//! The one read here is OLMo-3 Instruct's: the system message lists the functions in
//! `<functions></functions>`, and the model answers with Python calls, one a line,
//! inside `<function_calls></function_calls>`:
//!
//! ```text
//! <function_calls>get_weather(city="Paris", days=3)
//! convert(amount=2.5, units=['km', 'mi'], exact=True)</function_calls>
//! ```
//!
//! Arguments are keyword arguments whose values are Python or JSON literals (strings in
//! either quote, numbers, `True`/`true`, `None`/`null`, lists, tuples and dicts of them);
//! they become JSON in the order written. A block that does not read as calls (a cut-off
//! reply, a positional argument, an expression) is left as the reply's text, as vLLM's
//! and Ollama's readers leave it: a client then sees what the model wrote.
//!
//! [`CallSplitter`] reads a reply as it streams: text before the opening tag is
//! released at once (all but a tail that may begin the tag), the block is held until
//! the reply ends.

/// How a model writes its tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// OLMo-3 Instruct: Python calls, one a line, in `<function_calls>` tags.
    FunctionCallTags,
}

/// The tags around a call block (also the tool-call grammar's,
/// `generation::call_grammar`).
pub(crate) const OPEN: &str = "<function_calls>";
pub(crate) const CLOSE: &str = "</function_calls>";

/// Nesting of lists and dicts in an argument, at most (the reader recurses).
const MAX_DEPTH: usize = 32;

impl ToolSyntax {
    /// The syntax a chat template's model writes calls in, if it is one read here.
    pub fn of_template(source: &str) -> Option<ToolSyntax> {
        source.contains(OPEN).then_some(ToolSyntax::FunctionCallTags)
    }
}

/// One call as the model wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The keyword arguments as a compact JSON object, in the order written.
    pub arguments: String,
}

/// A reply read for tool calls: its text (without the call block) and the calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadReply {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Reads a whole reply.
pub fn read_reply(syntax: ToolSyntax, reply: &str) -> ReadReply {
    let mut s = CallSplitter::new(syntax);
    let mut content = s.push(reply).to_string();
    let rest = s.finish();
    content.push_str(&rest.content);
    ReadReply { content, calls: rest.calls }
}

/// A streamed reply split into text, released as it comes, and the call block, held
/// and read when the reply ends.
#[derive(Debug)]
pub struct CallSplitter {
    /// Text not yet released: a tail that may begin the opening tag, or everything
    /// from the tag on.
    held: String,
    in_block: bool,
    released: String,
}

impl CallSplitter {
    pub fn new(syntax: ToolSyntax) -> CallSplitter {
        match syntax {
            ToolSyntax::FunctionCallTags => CallSplitter { held: String::new(), in_block: false, released: String::new() },
        }
    }

    /// Adds reply text; returns the text that is surely not part of a call block.
    pub fn push(&mut self, text: &str) -> &str {
        self.released.clear();
        self.held.push_str(text);
        if self.in_block {
            return "";
        }
        if let Some(at) = self.held.find(OPEN) {
            self.released.push_str(&self.held[..at]);
            self.held.drain(..at);
            self.in_block = true;
        } else {
            // Hold the longest tail that is a proper prefix of the tag (ASCII: any cut
            // of the tag is a character boundary of the text too).
            let keep = (1..OPEN.len()).rev().find(|&k| self.held.ends_with(&OPEN[..k])).unwrap_or(0);
            let cut = self.held.len() - keep;
            self.released.push_str(&self.held[..cut]);
            self.held.drain(..cut);
        }
        &self.released
    }

    /// The reply is over: the text still held and the calls. A block that does not
    /// read as calls is text.
    pub fn finish(self) -> ReadReply {
        if !self.in_block {
            return ReadReply { content: self.held, calls: Vec::new() };
        }
        let block = &self.held[OPEN.len()..];
        let read = block.find(CLOSE).and_then(|end| Some((read_calls(&block[..end])?, &block[end + CLOSE.len()..])));
        match read {
            Some((calls, after)) if !calls.is_empty() => ReadReply { content: after.to_string(), calls },
            _ => ReadReply { content: self.held, calls: Vec::new() },
        }
    }
}

/// The calls of a block's inside: calls separated by line breaks (or commas, and the
/// whole optionally a Python list).
fn read_calls(body: &str) -> Option<Vec<ToolCall>> {
    let mut r = Reader { s: body.as_bytes(), at: 0 };
    r.space();
    let listed = r.eat(b'[');
    let mut calls = Vec::new();
    loop {
        r.space();
        if r.done() || (listed && r.peek() == Some(b']')) {
            break;
        }
        calls.push(r.call()?);
        r.space();
        r.eat(b',');
    }
    if listed && !r.eat(b']') {
        return None;
    }
    r.space();
    r.done().then_some(calls)
}

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at == self.s.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += hit as usize;
        hit
    }

    fn space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// A run of bytes `ok` takes (possibly empty).
    fn word(&mut self, ok: impl Fn(u8) -> bool) -> &str {
        let start = self.at;
        while self.peek().is_some_and(&ok) {
            self.at += 1;
        }
        // The bytes taken are ASCII.
        std::str::from_utf8(&self.s[start..self.at]).unwrap_or("")
    }

    /// `name(key=value, ...)`.
    fn call(&mut self) -> Option<ToolCall> {
        // Function names as OpenAI allows them (letters, digits, `_`, `-`), and dots.
        let name = self.word(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')).to_string();
        if name.is_empty() {
            return None;
        }
        self.space();
        if !self.eat(b'(') {
            return None;
        }
        let mut arguments = String::from("{");
        loop {
            self.space();
            if self.eat(b')') {
                break;
            }
            if arguments.len() > 1 {
                arguments.push(',');
            }
            let key = self.word(|b| b.is_ascii_alphanumeric() || b == b'_').to_string();
            if key.is_empty() || key.as_bytes()[0].is_ascii_digit() {
                return None;
            }
            push_json_string(&mut arguments, &key);
            arguments.push(':');
            self.space();
            if !self.eat(b'=') {
                return None;
            }
            self.space();
            self.value(&mut arguments, 0)?;
            self.space();
            if !self.eat(b',') {
                self.space();
                if !self.eat(b')') {
                    return None;
                }
                break;
            }
        }
        arguments.push('}');
        Some(ToolCall { name, arguments })
    }

    /// A Python or JSON literal, written to `out` as JSON.
    fn value(&mut self, out: &mut String, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            q @ (b'"' | b'\'') => {
                let s = self.string(q)?;
                push_json_string(out, &s);
            }
            b'[' | b'(' => {
                let close = if self.peek() == Some(b'[') { b']' } else { b')' };
                self.at += 1;
                out.push('[');
                self.items(out, close, |r, out| r.value(out, depth + 1))?;
                out.push(']');
            }
            b'{' => {
                self.at += 1;
                out.push('{');
                self.items(out, b'}', |r, out| {
                    let q = r.peek().filter(|&q| q == b'"' || q == b'\'')?;
                    let key = r.string(q)?;
                    push_json_string(out, &key);
                    r.space();
                    if !r.eat(b':') {
                        return None;
                    }
                    out.push(':');
                    r.space();
                    r.value(out, depth + 1)
                })?;
                out.push('}');
            }
            b'-' | b'0'..=b'9' => self.number(out)?,
            _ => {
                let word = self.word(|b| b.is_ascii_alphabetic());
                let json = match word {
                    "True" | "true" => "true",
                    "False" | "false" => "false",
                    "None" | "null" => "null",
                    _ => return None,
                };
                out.push_str(json);
            }
        }
        Some(())
    }

    /// Items up to `close`, separated by commas (a trailing comma allowed).
    fn items(&mut self, out: &mut String, close: u8, mut item: impl FnMut(&mut Self, &mut String) -> Option<()>) -> Option<()> {
        let mut first = true;
        loop {
            self.space();
            if self.eat(close) {
                return Some(());
            }
            if !first {
                out.push(',');
            }
            first = false;
            item(self, out)?;
            self.space();
            if !self.eat(b',') {
                self.space();
                return self.eat(close).then_some(());
            }
        }
    }

    /// A number as JSON spells it (Python's integers and decimals are spelt alike).
    fn number(&mut self, out: &mut String) -> Option<()> {
        let start = self.at;
        self.eat(b'-');
        let digits = |r: &mut Self| !r.word(|b| b.is_ascii_digit()).is_empty();
        let int_start = self.at;
        if !digits(self) || (self.s[int_start] == b'0' && self.at - int_start > 1) {
            return None;
        }
        if self.eat(b'.') && !digits(self) {
            return None;
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _ = self.eat(b'+') || self.eat(b'-');
            if !digits(self) {
                return None;
            }
        }
        out.push_str(std::str::from_utf8(&self.s[start..self.at]).ok()?);
        Some(())
    }

    /// A string in quotes `q`, its escapes read (Python's and JSON's).
    fn string(&mut self, q: u8) -> Option<String> {
        self.at += 1;
        let mut bytes = Vec::new();
        loop {
            let b = self.peek()?;
            self.at += 1;
            match b {
                _ if b == q => break,
                b'\n' | b'\r' => return None,
                b'\\' => {
                    let e = self.peek()?;
                    self.at += 1;
                    let c = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'0' => '\0',
                        b'\\' | b'\'' | b'"' | b'/' => e as char,
                        b'x' => char::from_u32(self.hex(2)?)?,
                        b'u' => self.unicode_escape()?,
                        b'U' => char::from_u32(self.hex(8)?)?,
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => bytes.push(b),
            }
        }
        String::from_utf8(bytes).ok()
    }

    fn hex(&mut self, n: usize) -> Option<u32> {
        let digits = self.s.get(self.at..self.at + n)?;
        let text = std::str::from_utf8(digits).ok()?;
        let v = u32::from_str_radix(text, 16).ok().filter(|_| digits.iter().all(u8::is_ascii_hexdigit))?;
        self.at += n;
        Some(v)
    }

    /// `\uXXXX`, a surrogate pair as JSON writes characters past U+FFFF.
    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex(4)?;
        if !(0xD800..0xDC00).contains(&hi) {
            return char::from_u32(hi);
        }
        if self.s.get(self.at..self.at + 2) != Some(b"\\u") {
            return None;
        }
        self.at += 2;
        let lo = self.hex(4).filter(|lo| (0xDC00..0xE000).contains(lo))?;
        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(reply: &str) -> Vec<(String, String)> {
        read_reply(ToolSyntax::FunctionCallTags, reply).calls.into_iter().map(|c| (c.name, c.arguments)).collect()
    }

    fn call(name: &str, args: &str) -> (String, String) {
        (name.to_string(), args.to_string())
    }

    #[test]
    fn reads_python_calls_in_tags() {
        let r = read_reply(
            ToolSyntax::FunctionCallTags,
            "Let me look.<function_calls>get_weather(city=\"Paris\", days=3)\nconvert(amount=-2.5e3, units=['km', \"mi\"], exact=True, note=None, pair=(1, 2))</function_calls>",
        );
        assert_eq!(r.content, "Let me look.");
        assert_eq!(
            r.calls.into_iter().map(|c| (c.name, c.arguments)).collect::<Vec<_>>(),
            [
                call("get_weather", r#"{"city":"Paris","days":3}"#),
                call("convert", r#"{"amount":-2.5e3,"units":["km","mi"],"exact":true,"note":null,"pair":[1,2]}"#),
            ]
        );
        // JSON literals as the template writes them back (`value | tojson`), keys in
        // the order written, nested dicts with either quote.
        assert_eq!(
            calls(r#"<function_calls>f(z={"b": [true, false, null], 'a': {"x": 1.5}}, a="", ok=false)</function_calls>"#),
            [call("f", r#"{"z":{"b":[true,false,null],"a":{"x":1.5}},"a":"","ok":false}"#)]
        );
        // No arguments; spaces around everything; a Python list of calls; trailing commas.
        assert_eq!(calls("<function_calls>\n  now( )\n</function_calls>"), [call("now", "{}")]);
        assert_eq!(calls("<function_calls>[a(x = 1,), b(y=[1,],)]</function_calls>"), [call("a", r#"{"x":1}"#), call("b", r#"{"y":[1]}"#)]);
    }

    #[test]
    fn reads_escapes_as_python_and_json_do() {
        let args = |v: &str| calls(&format!("<function_calls>f(s={v})</function_calls>"))[0].1.clone();
        assert_eq!(args(r#""a\"b\\c\nd\te""#), r#"{"s":"a\"b\\c\nd\te"}"#);
        assert_eq!(args(r#"'it\'s "quoted"'"#), r#"{"s":"it's \"quoted\""}"#);
        assert_eq!(args(r#""\u00e9\x41\ud83e\udd80\U0001F680""#), "{\"s\":\"éA🦀🚀\"}");
        assert_eq!(args("\"Zürich 東京\""), "{\"s\":\"Zürich 東京\"}");
        let parsed: serde_json::Value = serde_json::from_str(&args(r#""\u0001\/""#)).unwrap();
        assert_eq!(parsed["s"], "\u{1}/");
    }

    #[test]
    fn leaves_what_does_not_read_as_calls_as_text() {
        for reply in [
            "<function_calls>get_weather(city=\"Paris\"",                  // cut off
            "<function_calls>get_weather(\"Paris\")</function_calls>",       // positional
            "<function_calls>f(x=1+2)</function_calls>",                     // an expression
            "<function_calls>f(x=[[[[1]]]]) g</function_calls>",             // a stray word
            "<function_calls>f(x=\"a\nb\")</function_calls>",                // a line break in a string
            "<function_calls>f(x=01)</function_calls>",                      // not a JSON number
            "<function_calls>f(x=\"\\q\")</function_calls>",                 // an unknown escape
            "<function_calls>f(x=\"\\ud800\")</function_calls>",             // a lone surrogate
            "<function_calls></function_calls>",                             // no call
        ] {
            let r = read_reply(ToolSyntax::FunctionCallTags, reply);
            assert_eq!((r.content.as_str(), r.calls.len()), (reply, 0), "{reply:?}");
        }
        let deep = format!("<function_calls>f(x={}1{})</function_calls>", "[".repeat(100), "]".repeat(100));
        assert!(calls(&deep).is_empty(), "nesting past MAX_DEPTH is text");
        let ok = format!("<function_calls>f(x={}1{})</function_calls>", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert_eq!(calls(&ok).len(), 1);
        // No block at all: the reply is text, tags elsewhere untouched.
        let r = read_reply(ToolSyntax::FunctionCallTags, "a </function_calls> b <function_call");
        assert_eq!((r.content.as_str(), r.calls.len()), ("a </function_calls> b <function_call", 0));
    }

    #[test]
    fn a_streamed_reply_releases_text_before_the_block_and_holds_the_block() {
        let reply = "Sure, <b>here</b>: <function_calls>get_weather(city='Oslo')</function_calls> done";
        // Every split of the reply into two pieces, and one character at a time.
        let mut cuts: Vec<Vec<&str>> = (0..=reply.len()).map(|i| vec![&reply[..i], &reply[i..]]).collect();
        cuts.push(reply.split_inclusive(|_| true).collect());
        for pieces in cuts {
            let mut s = CallSplitter::new(ToolSyntax::FunctionCallTags);
            let mut released = String::new();
            for p in &pieces {
                released.push_str(s.push(p));
            }
            // Nothing of the block is ever released.
            assert!("Sure, <b>here</b>: ".starts_with(&released), "{pieces:?}: {released:?}");
            let rest = s.finish();
            released.push_str(&rest.content);
            assert_eq!(released, "Sure, <b>here</b>:  done");
            assert_eq!(rest.calls, [ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() }]);
        }
        // A tail that only looks like the tag's beginning is released at the end.
        let mut s = CallSplitter::new(ToolSyntax::FunctionCallTags);
        assert_eq!(s.push("a <function"), "a ");
        assert_eq!(s.push("al"), "<functional");
        assert_eq!(s.push(" <funct").len(), 1);
        assert_eq!(s.finish().content, "<funct");
    }

    #[test]
    fn knows_the_syntax_from_the_template() {
        assert_eq!(ToolSyntax::of_template("{{ '<function_calls>' }}"), Some(ToolSyntax::FunctionCallTags));
        assert_eq!(ToolSyntax::of_template("{% for m in messages %}{{ m.content }}{% endfor %}"), None);
    }

    /// Random texts from pieces of the syntax, whole and streamed in random cuts: no
    /// panic, the same reading either way, every call's arguments a JSON object, and
    /// the text given back whole where nothing reads as calls.
    #[test]
    fn random_texts_read_the_same_whole_and_streamed() {
        const PIECES: [&str; 24] = [
            "<function_calls>", "</function_calls>", "<function", "_calls>", "f", "get_w", "(", ")", "x", "=", ", ", "\"", "'", "\\", "\\u00e9",
            "\\ud83e", "[", "]", "{", "}", ":", "1.5", "True", "é\n",
        ];
        let mut rng = crate::generation::sampling::Rng::new(7);
        let mut below = |n: usize| (rng.next_u64() % n as u64) as usize;
        let mut with_calls = 0;
        const VALUES: [&str; 10] = ["1", "-2.5e3", "\"a\\\"b\"", "'c'", "True", "None", "[1, 'x']", "{'k': [null]}", "\"\\ud83e\\udd80\"", "\"é\""];
        for _ in 0..20_000 {
            // A block of calls, then (half the time) pieces put in or taken out.
            let mut text = String::from(["", "Sure. ", "<function"][below(3)]);
            text.push_str("<function_calls>");
            for c in 0..1 + below(3) {
                let args: Vec<String> = (0..below(3)).map(|k| format!("k{k}={}", VALUES[below(VALUES.len())])).collect();
                text.push_str(&format!("{}f{c}({})", if c > 0 { "\n" } else { "" }, args.join(", ")));
            }
            text.push_str(["</function_calls>", "</function_calls> done", ""][below(3)]);
            for _ in 0..below(2) * (1 + below(2)) {
                let mut at = below(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                if below(2) == 0 {
                    text.insert_str(at, PIECES[below(PIECES.len())]);
                } else {
                    let end = (at + 1 + below(4)).min(text.len());
                    if text.is_char_boundary(end) {
                        text.replace_range(at..end, "");
                    }
                }
            }
            let whole = read_reply(ToolSyntax::FunctionCallTags, &text);
            for c in &whole.calls {
                assert!(serde_json::from_str::<serde_json::Value>(&c.arguments).is_ok_and(|v| v.is_object()), "{text:?}: {}", c.arguments);
            }
            if whole.calls.is_empty() {
                assert_eq!(whole.content, text);
            } else {
                with_calls += 1;
            }
            let mut s = CallSplitter::new(ToolSyntax::FunctionCallTags);
            let mut content = String::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut cut = below(rest.len() + 1);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                content.push_str(s.push(&rest[..cut]));
                rest = &rest[cut..];
            }
            let end = s.finish();
            content.push_str(&end.content);
            assert_eq!((content, end.calls), (whole.content, whole.calls), "{text:?}");
        }
        assert!(with_calls > 100, "the pieces make calls too ({with_calls})");
    }
}
