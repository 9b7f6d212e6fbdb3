//! The functions a request offers the model (OpenAI's `tools`), whether it must call one
//! (`tool_choice`), and what its reply is held to for that ([`super::call_grammar`]):
//! shared by the server's requests and `olmort --tools`.

use std::sync::Arc;

use serde_json::Value;

use super::call_grammar::CallRules;
use crate::text::chat_template::Tools;

/// The longest function name OpenAI takes.
pub const MAX_NAME: usize = 64;

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The template is shown the tools; the reply is text, never read for calls.
    None,
    /// The model writes text or calls (the default).
    Auto,
    /// The reply is calls, of any of the tools.
    Required,
    /// The reply is one call of this function.
    Function(String),
}

impl ToolChoice {
    /// `none`, `auto`, `required`, or else a function's name (`olmort --tool-choice`).
    pub fn from_word(word: &str) -> ToolChoice {
        match word {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            name => ToolChoice::Function(name.to_string()),
        }
    }

    /// Whether the reply must be a call.
    pub fn requires_call(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Function(_))
    }
}

/// A checked, non-empty `tools` list: `{"type": "function", "function": {"name",
/// "description", "parameters"}}` each, names of 1 to [`MAX_NAME`] letters, digits, `_`
/// or `-`, each once, `parameters` a schema object.
#[derive(Debug, Clone)]
pub struct ToolSet {
    /// The list as given, key order kept: the template writes it out.
    pub tools: Tools,
    /// Each function's name, in order.
    pub names: Vec<String>,
    parameters: Vec<Option<Value>>,
}

impl ToolSet {
    /// The list `list`, read again with its key order as `ordered` (serde_json's maps
    /// sort their keys); the error names the entry.
    pub fn new(list: &[Value], ordered: minijinja::Value) -> Result<ToolSet, String> {
        if list.is_empty() {
            return Err("the tools list is empty".into());
        }
        let (mut names, mut parameters) = (Vec::<String>::with_capacity(list.len()), Vec::with_capacity(list.len()));
        for (i, t) in list.iter().enumerate() {
            let f = match (t.get("type").and_then(Value::as_str), t.get("function")) {
                (Some("function"), Some(Value::Object(f))) => f,
                _ => return Err(format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}")),
            };
            let name = match f.get("name") {
                Some(Value::String(n)) if (1..=MAX_NAME).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => n,
                _ => return Err(format!("tools[{i}]: a function's 'name' is 1 to {MAX_NAME} letters, digits, '_' or '-'")),
            };
            if names.contains(name) {
                return Err(format!("tools[{i}]: the function '{name}' is given twice"));
            }
            if f.get("parameters").is_some_and(|p| !p.is_object()) {
                return Err(format!("tools[{i}]: 'parameters' must be a JSON schema object"));
            }
            names.push(name.clone());
            parameters.push(f.get("parameters").cloned());
        }
        let tools = Tools::from_value(ordered).map_err(|e| e.to_string())?;
        Ok(ToolSet { tools, names, parameters })
    }

    /// A JSON list of tools (a file's text).
    pub fn parse(text: &str) -> Result<ToolSet, String> {
        let list: Value = serde_json::from_str(text).map_err(|e| format!("tools: not JSON: {e}"))?;
        let Value::Array(list) = list else { return Err("tools: expected a JSON list of {\"type\": \"function\", \"function\": {...}}".into()) };
        let ordered: minijinja::Value = serde_json::from_str(text).map_err(|e| format!("tools: not JSON: {e}"))?;
        ToolSet::new(&list, ordered)
    }

    /// What a reply is held to under `choice`: a call block from its first token where
    /// a call is required (one call where a function is named or `parallel` is false),
    /// from where the model opens one under "auto" (lazy rules; none where the
    /// functions' calls cannot be held: the reply is then read as written), nothing
    /// under "none". The error says why a required call cannot be held, or names an
    /// unknown function.
    pub fn grammar(&self, choice: &ToolChoice, parallel: bool) -> Result<Option<Arc<CallRules>>, String> {
        let functions = self.names.iter().map(String::as_str).zip(self.parameters.iter().map(Option::as_ref));
        match choice {
            ToolChoice::None => Ok(None),
            ToolChoice::Auto => Ok(CallRules::new(functions, parallel).ok().map(|r| Arc::new(r.lazy()))),
            ToolChoice::Required => CallRules::new(functions, parallel).map(|r| Some(Arc::new(r))).map_err(cannot_hold),
            ToolChoice::Function(name) => {
                if !self.names.contains(name) {
                    return Err(format!("the function '{name}' is not among the tools"));
                }
                CallRules::new(functions.filter(|(n, _)| n == name), false).map(|r| Some(Arc::new(r))).map_err(cannot_hold)
            }
        }
    }
}

/// The functions a request offers the model, and whether it must call one.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    pub set: ToolSet,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): false keeps a reply's first call only.
    pub parallel: bool,
    /// What the reply is held to ([`ToolSet::grammar`]).
    pub grammar: Option<Arc<CallRules>>,
}

impl ToolRequest {
    /// `set` offered under `choice`; the error as [`ToolSet::grammar`]'s.
    pub fn new(set: ToolSet, choice: ToolChoice, parallel: bool) -> Result<ToolRequest, String> {
        let grammar = set.grammar(&choice, parallel)?;
        Ok(ToolRequest { set, choice, parallel, grammar })
    }
}

impl PartialEq for ToolRequest {
    /// Requests are compared in tests; the tools by their names.
    fn eq(&self, other: &ToolRequest) -> bool {
        (&self.set.names, &self.choice, self.parallel) == (&other.set.names, &other.choice, other.parallel)
    }
}

fn cannot_hold(e: String) -> String {
    format!("a required call cannot be held to the tools: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_list_and_builds_each_choice_s_grammar() {
        let set = ToolSet::parse(r#"[{"type": "function", "function": {"name": "f", "parameters": {"properties": {"b": {}, "a": {}}}}},
            {"type": "function", "function": {"name": "g-2"}}]"#)
        .unwrap();
        assert_eq!(set.names, ["f", "g-2"]);
        assert_eq!(set.grammar(&ToolChoice::None, true).unwrap().map(|_| ()), None);
        assert!(set.grammar(&ToolChoice::Auto, true).unwrap().is_some_and(|g| g.is_lazy()));
        assert!(set.grammar(&ToolChoice::Required, true).unwrap().is_some_and(|g| !g.is_lazy()));
        assert!(set.grammar(&ToolChoice::from_word("g-2"), true).unwrap().is_some());
        assert!(set.grammar(&ToolChoice::from_word("h"), true).unwrap_err().contains("'h' is not among"));
        // A property that cannot be a keyword argument: auto reads as written, required
        // is refused.
        let odd = ToolSet::parse(r#"[{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a-b": {}}}}}]"#).unwrap();
        assert!(odd.grammar(&ToolChoice::Auto, true).unwrap().is_none());
        assert!(odd.grammar(&ToolChoice::Required, true).unwrap_err().contains("'a-b' cannot be a keyword argument"));
        for (bad, why) in [
            ("{}", "expected a JSON list"),
            ("[", "not JSON"),
            ("[]", "empty"),
            (r#"[{"type": "code"}]"#, "tools[0] must be"),
            (r#"[{"type": "function", "function": {"name": ""}}]"#, "'name' is 1 to 64"),
            (r#"[{"type": "function", "function": {"name": "a.b"}}]"#, "'name' is 1 to 64"),
            (r#"[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]"#, "tools[1]: the function 'f' is given twice"),
            (r#"[{"type": "function", "function": {"name": "f", "parameters": "x"}}]"#, "'parameters' must be"),
        ] {
            let e = ToolSet::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
