//! A chat reply read as it streams: its reasoning (`reasoning`), its answer, and the
//! tool calls in the answer (`tool_calls`), for the server's `reasoning_content`,
//! `content` and `tool_calls`.

use crate::text::reasoning::ThinkSplitter;
use crate::text::tool_calls::{CallSplitter, ToolCall, ToolSyntax};

/// How a request's replies are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// The model writes `<think>` reasoning; `Some(true)`: the prompt opened it.
    pub thinking: Option<bool>,
    /// The answer is read for calls in this syntax.
    pub calls: Option<ToolSyntax>,
    /// More than one call kept (`parallel_tool_calls`); else the first.
    pub parallel: bool,
}

impl Reading {
    pub fn reader(self) -> ReplyReader {
        ReplyReader {
            think: self.thinking.map(ThinkSplitter::new),
            calls: self.calls.map(CallSplitter::new),
            parallel: self.parallel,
            content: String::new(),
        }
    }

    /// A whole reply's parts.
    pub fn read(self, reply: &str) -> ReplyParts {
        let mut r = self.reader();
        let (reasoning, content) = r.push(reply);
        let (reasoning, content) = (reasoning.to_string(), content.to_string());
        let mut parts = r.finish();
        parts.reasoning.insert_str(0, &reasoning);
        parts.content.insert_str(0, &content);
        parts
    }
}

/// What a reply holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyParts {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// A reply being read ([`Reading::reader`]).
#[derive(Debug)]
pub struct ReplyReader {
    think: Option<ThinkSplitter>,
    calls: Option<CallSplitter>,
    parallel: bool,
    /// Scratch for the answer released by one piece.
    content: String,
}

impl ReplyReader {
    /// Adds reply text; returns the reasoning and the answer text released now.
    pub fn push<'a>(&'a mut self, text: &'a str) -> (&'a str, &'a str) {
        let (reasoning, answer) = match &mut self.think {
            Some(t) => t.push(text),
            None => ("", text),
        };
        let content = match &mut self.calls {
            Some(c) => c.push(answer),
            None => answer,
        };
        // (Copied: the two splitters' buffers cannot both be borrowed out of `self`.)
        self.content.clear();
        self.content.push_str(content);
        (reasoning, &self.content)
    }

    /// The reply is over: what is still held, and the calls.
    pub fn finish(self) -> ReplyParts {
        let (reasoning, answer) = self.think.map(ThinkSplitter::finish).unwrap_or_default();
        let Some(mut calls) = self.calls else { return ReplyParts { reasoning, content: answer, calls: Vec::new() } };
        let content = calls.push(&answer).to_string();
        let mut read = calls.finish();
        read.content.insert_str(0, &content);
        if !self.parallel {
            read.calls.truncate(1);
        }
        ReplyParts { reasoning, content: read.content, calls: read.calls }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reasoning_then_calls_in_the_answer() {
        let reading = Reading { thinking: Some(false), calls: Some(ToolSyntax::FunctionCallTags), parallel: false };
        let reply = "<think>Need weather.</think>Checking.<function_calls>a(x=1)\nb()</function_calls>";
        let parts = reading.read(reply);
        assert_eq!((parts.reasoning.as_str(), parts.content.as_str()), ("Need weather.", "Checking."));
        assert_eq!(parts.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a"], "parallel calls off: the first");
        assert_eq!(Reading { parallel: true, ..reading }.read(reply).calls.len(), 2);
        // Streamed a character at a time: the same parts.
        let mut r = reading.reader();
        let (mut reasoning, mut content) = (String::new(), String::new());
        for (i, c) in reply.char_indices() {
            let (pr, pc) = r.push(&reply[i..i + c.len_utf8()]);
            reasoning.push_str(pr);
            content.push_str(pc);
        }
        let end = r.finish();
        reasoning.push_str(&end.reasoning);
        content.push_str(&end.content);
        assert_eq!((reasoning, content, end.calls), (parts.reasoning, parts.content, parts.calls));
        // Plain reading gives the text back.
        assert_eq!(Reading::default().read(reply).content, reply);
    }
}
