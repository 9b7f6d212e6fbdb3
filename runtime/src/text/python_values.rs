//! Template values written out as Python writes them, since chat templates are run by
//! Python's jinja2 where they were written: `{{ value }}` is `str(value)` (`True`,
//! `None`, `['a', 1]`), and transformers' `tojson` filter is `json.dumps` (its
//! separators, `indent`, `ensure_ascii` and `sort_keys`, and Python's float repr).
//!
//! Python's `repr` of a string escapes the characters it deems unprintable; here that is
//! the C0 and C1 controls and DEL, the Unicode line and paragraph separators and the
//! common invisible format characters (a subset of Python's table).

use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `str(value)` as Python prints it.
pub fn python_str(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        _ => python_repr(value, out),
    }
}

/// `repr(value)` as Python writes it (strings quoted, containers recursively).
pub fn python_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => number(value, out, Floats::Python),
        ValueKind::String => repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let (open, close) = if value.is_tuple() { ('(', ')') } else { ('[', ']') };
            out.push(open);
            let items: Vec<Value> = value.try_iter().map(|i| i.collect()).unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(item, out);
            }
            if value.is_tuple() && items.len() == 1 {
                out.push(',');
            }
            out.push(close);
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&key, out);
                out.push_str(": ");
                python_repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_unprintable(c) => {
                let code = c as u32;
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn is_unprintable(c: char) -> bool {
    matches!(c as u32,
        0..=0x1f | 0x7f..=0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000 | 0xfeff)
}

#[derive(Clone, Copy, PartialEq)]
enum Floats {
    /// `repr(float)`: `inf`, `nan`.
    Python,
    /// `json.dumps`: `Infinity`, `NaN`.
    Json,
}

fn number(value: &Value, out: &mut String, floats: Floats) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(v) => float_repr(v, out, floats),
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(float)`: the shortest digits that read back as the same float, fixed
/// notation for exponents -4..=15 (with `.0` when integral), otherwise `1e-05`, `1.5e+16`.
fn float_repr(v: f64, out: &mut String, floats: Floats) {
    if v.is_nan() {
        out.push_str(if floats == Floats::Json { "NaN" } else { "nan" });
        return;
    }
    if v.is_infinite() {
        let inf = if floats == Floats::Json { "Infinity" } else { "inf" };
        if v < 0.0 {
            out.push('-');
        }
        out.push_str(inf);
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{v:e}");
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if !(-4..16).contains(&exponent) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs());
    } else if exponent >= 0 {
        let int_len = exponent as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
        out.push_str(&digits);
    }
}

/// The options of transformers' `tojson` filter, which passes them to `json.dumps`.
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: everything on one line.
    pub indent: Option<String>,
    /// `(item, key)` separators; default `(", ", ": ")`, or `(",", ": ")` with an indent.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// `json.dumps(value, ...)`.
pub fn json_dumps(value: &Value, options: &JsonOptions) -> Result<String, Error> {
    let (item, key) = match &options.separators {
        Some((item, key)) => (item.as_str(), key.as_str()),
        None if options.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let mut out = String::new();
    JsonWriter { options, item, key, out: &mut out }.value(value, 0)?;
    Ok(out)
}

struct JsonWriter<'a> {
    options: &'a JsonOptions,
    item: &'a str,
    key: &'a str,
    out: &'a mut String,
}

/// Deeper nesting than this is refused rather than risk the stack.
const MAX_JSON_DEPTH: usize = 512;

impl JsonWriter<'_> {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson: the value is nested too deeply"));
        }
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self.out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => number(value, self.out, Floats::Json),
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.open('[', items.is_empty(), depth);
                for (i, item) in items.iter().enumerate() {
                    self.separate(i, depth);
                    self.value(item, depth + 1)?;
                }
                self.close(']', items.is_empty(), depth);
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if self.options.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.open('{', entries.is_empty(), depth);
                for (i, (key, item)) in entries.iter().enumerate() {
                    self.separate(i, depth);
                    self.string(key);
                    self.out.push_str(self.key);
                    self.value(item, depth + 1)?;
                }
                self.close('}', entries.is_empty(), depth);
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn open(&mut self, bracket: char, empty: bool, depth: usize) {
        self.out.push(bracket);
        if !empty {
            self.newline(depth + 1);
        }
    }

    fn separate(&mut self, index: usize, depth: usize) {
        if index > 0 {
            self.out.push_str(self.item);
            self.newline(depth + 1);
        }
    }

    fn close(&mut self, bracket: char, empty: bool, depth: usize) {
        if !empty {
            self.newline(depth);
        }
        self.out.push(bracket);
    }

    fn newline(&mut self, level: usize) {
        if let Some(indent) = &self.options.indent {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str(indent);
            }
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c if self.options.ensure_ascii && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers, booleans and
/// None as their JSON text.
fn json_key(key: &Value) -> Result<String, Error> {
    let mut s = String::new();
    match key.kind() {
        ValueKind::String => s.push_str(key.as_str().unwrap_or_default()),
        ValueKind::Number => number(key, &mut s, Floats::Json),
        ValueKind::Bool => s.push_str(if key.is_true() { "true" } else { "false" }),
        ValueKind::None => s.push_str("null"),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(v: f64) -> String {
        let mut s = String::new();
        float_repr(v, &mut s, Floats::Python);
        s
    }

    #[test]
    fn floats_print_as_python_repr() {
        // Each pair is Python's repr, from `python3 -c 'print(repr(x))'`.
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-7, "1e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e20, "1e+20"),
            (-2.5e-10, "-2.5e-10"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (v, want) in cases {
            assert_eq!(repr(v), want, "{v:e}");
        }
    }

    #[test]
    fn values_print_as_python_str() {
        let s = |v: Value| {
            let mut out = String::new();
            python_str(&v, &mut out);
            out
        };
        assert_eq!(s(Value::from(true)), "True");
        assert_eq!(s(Value::from(())), "None");
        assert_eq!(s(Value::UNDEFINED), "");
        assert_eq!(s(Value::from("it's")), "it's");
        assert_eq!(s(Value::from(3.0)), "3.0");
        let list = Value::from(vec![Value::from(1), Value::from("a"), Value::from(()), Value::from(false)]);
        assert_eq!(s(list), "[1, 'a', None, False]");
        let quotes = Value::from(vec![Value::from("it's"), Value::from("say \"hi\"\n"), Value::from("\u{1}\u{a0}é")]);
        assert_eq!(s(quotes), r#"["it's", 'say "hi"\n', '\x01\xa0é']"#);
        let map = Value::from_pairs([("k", Value::from(1.5)), ("b", Value::from(vec![Value::from(2)]))]);
        assert_eq!(s(map), "{'k': 1.5, 'b': [2]}");
    }

    #[test]
    fn json_dumps_matches_python() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, 2.5, "é\u0001\"\\\n", null, true, {}, []], "a": {"x": 1e-7}, "😀": "😀"}"#,
        )
        .unwrap();
        // Each `want` is Python's json.dumps of the same object with those options.
        let dumps = |o: JsonOptions| json_dumps(&v, &o).unwrap();
        assert_eq!(
            dumps(JsonOptions::default()),
            r#"{"b": [1, 2.5, "é\u0001\"\\\n", null, true, {}, []], "a": {"x": 1e-07}, "😀": "😀"}"#
        );
        assert_eq!(
            dumps(JsonOptions { ensure_ascii: true, sort_keys: true, ..Default::default() }),
            r#"{"a": {"x": 1e-07}, "b": [1, 2.5, "\u00e9\u0001\"\\\n", null, true, {}, []], "\ud83d\ude00": "\ud83d\ude00"}"#
        );
        assert_eq!(
            dumps(JsonOptions { indent: Some("  ".into()), ..Default::default() }),
            "{\n  \"b\": [\n    1,\n    2.5,\n    \"é\\u0001\\\"\\\\\\n\",\n    null,\n    true,\n    {},\n    []\n  ],\n  \"a\": {\n    \"x\": 1e-07\n  },\n  \"😀\": \"😀\"\n}"
        );
        assert_eq!(
            dumps(JsonOptions { separators: Some((",".into(), ":".into())), ..Default::default() }),
            r#"{"b":[1,2.5,"é\u0001\"\\\n",null,true,{},[]],"a":{"x":1e-07},"😀":"😀"}"#
        );
        let e = json_dumps(&Value::UNDEFINED, &JsonOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not JSON serializable"), "{e}");
    }
}
