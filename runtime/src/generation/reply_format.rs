//! What a chat reply is held to and how it is read, from what the request asks (a JSON
//! format, tools and their choice, reasoning apart or not) and what the chat
//! template's model writes (its tool-call syntax, `<think>` reasoning): shared by the
//! server's chat and Responses APIs.

use std::sync::Arc;

use super::call_grammar::CallRules;
use super::json::JsonFormat;
use super::tools::{ToolChoice, ToolRequest};
use crate::text::chat_template::ChatTemplate;
use crate::text::reasoning::prompt_opens_thinking;
use crate::text::reply::Reading;

/// Why a reply cannot be given as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyFormatError {
    /// Tools for a template whose model writes no call syntax read here.
    #[error("this model's chat template shows no tool-call syntax olmort reads (OLMo-3's <function_calls>)")]
    NoToolSyntax,
}

/// A reply's grammar and reading.
#[derive(Debug, Clone)]
pub struct ReplyFormat {
    /// What the reply is held to: a JSON format, or a call block (from the reply's
    /// start where a call is required, else from where the model opens one outside
    /// its reasoning).
    pub held: Option<JsonFormat>,
    pub reading: Reading,
}

impl ReplyFormat {
    /// For a chat reply rendered by `template` (`None`: not a chat), whose prompt ends
    /// with `prompt_tail()` (its last tokens' text, asked for a thinking model only);
    /// `reasoning`: give a thinking model's reasoning apart.
    pub fn new(
        template: Option<&ChatTemplate>,
        prompt_tail: impl FnOnce() -> String,
        json: Option<&JsonFormat>,
        tools: Option<&ToolRequest>,
        reasoning: bool,
    ) -> Result<ReplyFormat, ReplyFormatError> {
        let calls = match tools {
            None => None,
            Some(t) => {
                let syntax = template.and_then(ChatTemplate::tool_syntax).ok_or(ReplyFormatError::NoToolSyntax)?;
                (t.choice != ToolChoice::None).then_some(syntax)
            }
        };
        // A reply held to a grammar from its first token has no reasoning.
        let from_start = json.is_some() || tools.is_some_and(|t| t.choice.requires_call());
        let opened = template.filter(|t| t.thinks() && !from_start).map(|_| prompt_opens_thinking(&prompt_tail()));
        let grammar = |rules: &Arc<CallRules>| match opened {
            Some(o) if rules.is_lazy() => Arc::new((**rules).clone().after_reasoning(o)),
            _ => Arc::clone(rules),
        };
        let held = json.cloned().or_else(|| tools?.grammar.as_ref().map(|r| JsonFormat::Calls(grammar(r))));
        let reading = Reading { thinking: opened.filter(|_| reasoning), calls, parallel: tools.is_none_or(|t| t.parallel) };
        Ok(ReplyFormat { held, reading })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::tools::ToolSet;

    #[test]
    fn holds_and_reads_as_the_request_and_the_template_say() {
        let plain = ChatTemplate::new("plain", "{{ messages }}", &[]).unwrap();
        let both = ChatTemplate::new("both", "{{ '<function_calls>' }}{{ '<think>' }}", &[]).unwrap();
        let set = ToolSet::parse(r#"[{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {}}}}}]"#).unwrap();
        let (auto, required) = (ToolRequest::new(set.clone(), ToolChoice::Auto, true).unwrap(), ToolRequest::new(set, ToolChoice::Required, true).unwrap());
        let rules = auto.grammar.clone().unwrap();
        // Tools need a template with call syntax.
        assert_eq!(ReplyFormat::new(Some(&plain), || "".into(), None, Some(&auto), true).unwrap_err(), ReplyFormatError::NoToolSyntax);
        assert_eq!(ReplyFormat::new(None, || "".into(), None, Some(&auto), true).unwrap_err(), ReplyFormatError::NoToolSyntax);
        // A thinking template whose prompt opened <think>: reasoning read, calls held
        // past it (the rules made so), unless the request keeps the text.
        let f = ReplyFormat::new(Some(&both), || "assistant\n<think>".into(), None, Some(&auto), true).unwrap();
        assert_eq!((f.reading.thinking, f.reading.calls.is_some()), (Some(true), true));
        let Some(JsonFormat::Calls(held)) = &f.held else { panic!("held to calls") };
        assert!(!Arc::ptr_eq(held, &rules), "rules of their own, past the reasoning");
        assert_eq!(ReplyFormat::new(Some(&both), || "assistant\n".into(), None, Some(&auto), false).unwrap().reading.thinking, None);
        // A grammar from the first token: no reasoning; a JSON format over tools.
        let f = ReplyFormat::new(Some(&both), || "<think>".into(), None, Some(&required), true).unwrap();
        assert_eq!(f.reading.thinking, None);
        let f = ReplyFormat::new(Some(&both), || "<think>".into(), Some(&JsonFormat::Object), None, true).unwrap();
        assert!(matches!(f.held, Some(JsonFormat::Object)) && f.reading.thinking.is_none());
        // Nothing asked of a plain template: plain reading.
        assert_eq!(ReplyFormat::new(Some(&plain), || "".into(), None, None, true).unwrap().reading, Reading { parallel: true, ..Reading::default() });
    }
}
