//! Reasoning in a reply: OLMo-3 Think models write their thinking between `<think>` and
//! `</think>` (plain text, not special tokens) and their answer after it. A chat
//! template that mentions `<think>` marks such a model ([`template_thinks`]); its
//! generation prompt may open the thinking itself (`...assistant\n<think>`), so the
//! reply starts inside it ([`prompt_opens_thinking`]).
//!
//! [`ThinkSplitter`] splits a reply, as it streams, into the reasoning and the answer
//! (OpenAI-compatible servers' `reasoning_content`): `<think>` is read only where the
//! reply begins (after whitespace), `</think>` ends the reasoning once, and text that
//! may begin either tag is held until the next piece tells.

/// The tags around the reasoning (also read by the tool-call grammar,
/// `generation::call_grammar`, which lets a reasoning go unheld).
pub(crate) const OPEN: &str = "<think>";
pub(crate) const CLOSE: &str = "</think>";

/// Whether a chat template's model writes its reasoning in `<think>` tags.
pub fn template_thinks(source: &str) -> bool {
    source.contains(OPEN)
}

/// Whether a rendered prompt ends inside an opened `<think>` (its generation prompt
/// writes the tag), so that the reply starts with reasoning.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Before anything but whitespace: `<think>` may open the reasoning.
    Start,
    Reasoning,
    Answer,
}

/// A streamed reply split into reasoning and answer.
#[derive(Debug)]
pub struct ThinkSplitter {
    part: Part,
    /// Text not yet released: what may begin a tag.
    held: String,
    reasoning: String,
    answer: String,
}

impl ThinkSplitter {
    /// A reply that starts inside the reasoning (`thinking`) or before it.
    pub fn new(thinking: bool) -> ThinkSplitter {
        let part = if thinking { Part::Reasoning } else { Part::Start };
        ThinkSplitter { part, held: String::new(), reasoning: String::new(), answer: String::new() }
    }

    /// Adds reply text; returns the reasoning and the answer that may be released now.
    pub fn push(&mut self, text: &str) -> (&str, &str) {
        self.reasoning.clear();
        self.answer.clear();
        self.held.push_str(text);
        loop {
            match self.part {
                Part::Start => {
                    let rest = self.held.trim_start();
                    if let Some(after) = rest.strip_prefix(OPEN) {
                        self.held = after.to_string();
                        self.part = Part::Reasoning;
                    } else if OPEN.starts_with(rest) {
                        // Whitespace, or the tag's beginning: wait.
                        break;
                    } else {
                        self.part = Part::Answer;
                    }
                }
                Part::Reasoning => {
                    if let Some(at) = self.held.find(CLOSE) {
                        self.reasoning.push_str(&self.held[..at]);
                        self.held.drain(..at + CLOSE.len());
                        self.part = Part::Answer;
                    } else {
                        // Hold the longest tail that may begin the closing tag (ASCII: any
                        // cut of it is a character boundary of the text).
                        let keep = (1..CLOSE.len()).rev().find(|&k| self.held.ends_with(&CLOSE[..k])).unwrap_or(0);
                        let cut = self.held.len() - keep;
                        self.reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        break;
                    }
                }
                Part::Answer => {
                    self.answer.push_str(&self.held);
                    self.held.clear();
                    break;
                }
            }
        }
        (&self.reasoning, &self.answer)
    }

    /// The reply is over: the reasoning and answer still held (a reply that never got
    /// past the opening tag's beginning is answer).
    pub fn finish(self) -> (String, String) {
        match self.part {
            Part::Reasoning => (self.held, String::new()),
            Part::Start | Part::Answer => (String::new(), self.held),
        }
    }
}

/// A whole reply's reasoning and answer.
pub fn split_reply(reply: &str, thinking: bool) -> (String, String) {
    let mut s = ThinkSplitter::new(thinking);
    let (r, a) = s.push(reply);
    let (mut reasoning, mut answer) = (r.to_string(), a.to_string());
    let (r, a) = s.finish();
    reasoning.push_str(&r);
    answer.push_str(&a);
    (reasoning, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(reply: &str, thinking: bool) -> (String, String) {
        split_reply(reply, thinking)
    }

    fn pair(r: &str, a: &str) -> (String, String) {
        (r.to_string(), a.to_string())
    }

    #[test]
    fn splits_reasoning_from_the_answer() {
        assert_eq!(split("<think>Look!\n\nI'm thinking...</think>\nThis is the rest", false), pair("Look!\n\nI'm thinking...", "\nThis is the rest"));
        assert_eq!(split("<think></think>No thoughts.", false), pair("", "No thoughts."));
        assert_eq!(split("\n <think>a</think>b", false), pair("a", "b"));
        // The prompt opened the reasoning: only its end is written.
        assert_eq!(split("Hmm.</think>Done", true), pair("Hmm.", "Done"));
        assert_eq!(split("Hmm, still", true), pair("Hmm, still", ""));
        // No tags: all answer; tags later in an answer stay text; a second close too.
        assert_eq!(split("Plain answer", false), pair("", "Plain answer"));
        assert_eq!(split("Say <think> and </think>", false), pair("", "Say <think> and </think>"));
        assert_eq!(split("<think>a</think>b</think>c", false), pair("a", "b</think>c"));
        // Cut off inside the reasoning, or at the tag's beginning.
        assert_eq!(split("<think>unfinished </thi", false), pair("unfinished </thi", ""));
        assert_eq!(split("  <thi", false), pair("", "  <thi"));
    }

    #[test]
    fn streams_the_same_split_in_any_pieces() {
        for (reply, thinking) in [("<think>Look, é!</think>\nThe rest </think>", false), ("x</think>y", true), ("  <think>", false), ("<thinking>no", false)] {
            let whole = split(reply, thinking);
            let chars: Vec<(usize, char)> = reply.char_indices().collect();
            for &(cut, _) in &chars {
                for &(cut2, _) in chars.iter().filter(|&&(c, _)| c >= cut) {
                    let mut s = ThinkSplitter::new(thinking);
                    let (mut r, mut a) = (String::new(), String::new());
                    for piece in [&reply[..cut], &reply[cut..cut2], &reply[cut2..]] {
                        let (pr, pa) = s.push(piece);
                        r.push_str(pr);
                        a.push_str(pa);
                    }
                    let (fr, fa) = s.finish();
                    r.push_str(&fr);
                    a.push_str(&fa);
                    assert_eq!((r, a), whole, "{reply:?} cut at {cut}, {cut2}");
                }
            }
        }
    }

    #[test]
    fn knows_thinking_templates_and_prompts() {
        assert!(template_thinks("{{ '<|im_start|>assistant\\n<think>' }}"));
        assert!(!template_thinks("{{ messages }}"));
        assert!(prompt_opens_thinking("<|im_start|>assistant\n<think>\n"));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n"));
    }
}
