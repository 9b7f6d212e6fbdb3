//! Conversations with a chat model: messages in, a KV cache kept between turns, the
//! reply's tokens streamed out through a callback.
//!
//! The parts are kept apart so that a server's scheduler, which owns the model and a
//! set of KV slots and drives the forward passes itself, can use the conversation logic
//! per slot:
//!
//! - [`ChatFormat`]: messages to prompt token ids (the blob's template and tokenizer).
//! - [`Conversation`]: one chat's messages, and fitting them into a context: the oldest
//!   turns are dropped until the prompt leaves room for a reply.
//! - [`KvTokens`]: which tokens a KV cache holds, position by position. A new prompt
//!   keeps the longest common prefix ([`KvTokens::reuse`]), so a turn runs only the
//!   tokens after it: the new message and the template's markup around it.
//! - [`ChatSession`]: the three with one [`RunState`] and a [`Sampler`] (the terminal
//!   chat's driver).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use olmo_format::ChatInfo;

use crate::generation::sampling::{Sampler, SamplingParams};
use crate::model::forward::{forward, forward_batch_for, LogitRows, RunState};
use crate::model::Model;
use crate::text::chat_template::{ChatError, ChatTemplate, Message, Tools};
use crate::text::tokenizer::Tokenizer;
use crate::RunError;

/// How a model's conversations become prompt tokens.
pub struct ChatFormat<'v> {
    template: ChatTemplate,
    tokenizer: Tokenizer<'v>,
}

impl<'v> ChatFormat<'v> {
    pub fn new(template: ChatTemplate, tokenizer: Tokenizer<'v>) -> ChatFormat<'v> {
        ChatFormat { template, tokenizer }
    }

    /// The blob's chat template `name` (`None`: `default`) and its vocabulary.
    pub fn for_model(model: &Model<'v>, chat: Option<&ChatInfo>, name: Option<&str>) -> Result<ChatFormat<'v>, ChatError> {
        let vocab = model.vocab.ok_or_else(|| {
            ChatError::NoTemplate("this model has no vocabulary to encode a conversation with".into())
        })?;
        Ok(ChatFormat::new(ChatTemplate::from_chat_info(chat, name)?, Tokenizer::new(vocab)))
    }

    /// The prompt for the model's next reply: the messages rendered with the generation
    /// prompt and encoded, the template's special tokens as tokens and the messages'
    /// text as text.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, ChatError> {
        self.prompt_with_tools(messages, None)
    }

    /// [`ChatFormat::prompt`] with the functions the model may call shown to it.
    pub fn prompt_with_tools(&self, messages: &[Message], tools: Option<&Tools>) -> Result<Vec<u32>, ChatError> {
        self.template.encode(&self.tokenizer, messages, tools, true)
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn tokenizer(&self) -> &Tokenizer<'v> {
        &self.tokenizer
    }
}

/// A prompt fitted into a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub tokens: Vec<u32>,
    /// Messages dropped from the start of the conversation to make it fit.
    pub dropped: usize,
}

/// One chat's messages: optional system messages first, then turns (a user message and
/// the replies after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    messages: Vec<Message>,
}

impl Conversation {
    /// A conversation that starts with `system` as its system message, if given.
    pub fn new(system: Option<&str>) -> Conversation {
        Conversation { messages: system.map(|s| vec![Message::new("system", s)]).unwrap_or_default() }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn push(&mut self, message: Message) {
        self.messages.push(message);
    }

    pub fn pop(&mut self) -> Option<Message> {
        self.messages.pop()
    }

    /// Forgets every turn; the system messages stay.
    pub fn reset(&mut self) {
        let system = self.system_len();
        self.messages.truncate(system);
    }

    /// The leading system messages, which fitting never drops.
    fn system_len(&self) -> usize {
        self.messages.iter().take_while(|m| m.role == "system").count()
    }

    /// The prompt for the next reply, leaving at least `room` of `context` positions for
    /// it. While it does not fit, the oldest turn is dropped (its user message and the
    /// replies up to the next user message); the last user message is never dropped, and
    /// when even it does not fit that is an error. Dropped messages are gone from the
    /// conversation.
    pub fn fit(&mut self, format: &ChatFormat, context: usize, room: usize) -> Result<Fitted, RunError> {
        let limit = context.saturating_sub(room);
        let mut dropped = 0;
        loop {
            let tokens = format.prompt(&self.messages)?;
            if tokens.len() <= limit {
                return Ok(Fitted { tokens, dropped });
            }
            // The oldest turn runs from the first message after the system messages to
            // the next user message (so the last user message is never dropped).
            let first = self.system_len();
            let Some(next) = (first + 1..self.messages.len()).find(|&i| self.messages[i].role == "user") else {
                return Err(RunError::Usage(format!(
                    "the conversation needs {} positions, and the model's context of {context} keeps {room} free for the reply: shorten the message",
                    tokens.len()
                )));
            };
            self.messages.drain(first..next);
            dropped += next - first;
        }
    }
}

/// The tokens a KV cache holds, position by position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvTokens {
    tokens: Vec<u32>,
}

impl KvTokens {
    /// Room for `capacity` positions, so filing tokens never reallocates.
    pub fn with_capacity(capacity: usize) -> KvTokens {
        KvTokens { tokens: Vec::with_capacity(capacity) }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Keeps the cache's longest common prefix with `prompt` and returns its length:
    /// the prompt's tokens from there on are the ones to run. At least the prompt's
    /// last token is always left to run, since its logits start the reply. A cache with
    /// sliding-window layers (`sliding`) holds only the window before where it stopped,
    /// so it keeps all it holds or nothing.
    pub fn reuse(&mut self, prompt: &[u32], sliding: bool) -> usize {
        let keep = self.reusable(prompt, sliding);
        self.tokens.truncate(keep);
        keep
    }

    /// How many tokens [`KvTokens::reuse`] would keep for `prompt`, the cache left as
    /// it is.
    pub fn reusable(&self, prompt: &[u32], sliding: bool) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        if sliding && keep < self.tokens.len() {
            0
        } else {
            keep
        }
    }

    /// Records that the forward pass filed `tokens` at the next positions.
    pub fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
    }
}

/// How a session generates replies.
#[derive(Debug, Clone, Copy)]
pub struct ChatOptions {
    pub sampling: SamplingParams,
    /// New tokens per reply at most (`None`: until an eos token or the context's end).
    pub max_tokens: Option<usize>,
}

impl ChatOptions {
    /// Positions a prompt must leave free for the reply: `max_tokens`, or a quarter of
    /// the context, at most half of it.
    pub fn reply_room(&self, context: usize) -> usize {
        self.max_tokens.unwrap_or(context / 4).min(context / 2).max(1)
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced this end-of-sequence token (not part of the reply).
    Eos(u32),
    /// `max_tokens` new tokens.
    MaxTokens,
    /// The context has no position left.
    ContextFull,
    /// The stop flag was set (Ctrl-C).
    Interrupted,
}

/// What a turn cost, for the terminal's status line and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnStats {
    /// Tokens of the rendered conversation (the prompt of this reply).
    pub prompt_tokens: usize,
    /// Of those, already in the KV cache from earlier turns.
    pub reused: usize,
    /// Run through the model for this turn: `prompt_tokens - reused`.
    pub prefilled: usize,
    pub prefill_time: Duration,
    /// Tokens of the reply (the eos token not counted).
    pub generated: usize,
    pub generation_time: Duration,
    /// Messages dropped from the start of the conversation to fit the context.
    pub dropped_messages: usize,
    pub stop: StopReason,
}

/// A multi-turn chat on one KV cache: each turn runs only the tokens the cache does not
/// already hold.
pub struct ChatSession<'m, 'v> {
    model: &'m Model<'v>,
    state: RunState,
    format: ChatFormat<'v>,
    conversation: Conversation,
    kv: KvTokens,
    sampler: Sampler,
    options: ChatOptions,
    /// The reply being generated (capacity for a whole context).
    reply: Vec<u32>,
}

impl<'m, 'v> ChatSession<'m, 'v> {
    /// A session over `state`, whose positions are the context.
    pub fn new(
        model: &'m Model<'v>,
        state: RunState,
        format: ChatFormat<'v>,
        conversation: Conversation,
        options: ChatOptions,
    ) -> ChatSession<'m, 'v> {
        let context = state.max_positions();
        ChatSession {
            model,
            state,
            format,
            conversation,
            kv: KvTokens::with_capacity(context),
            sampler: Sampler::new(options.sampling, model.config.vocab_size as usize),
            options,
            reply: Vec::with_capacity(context),
        }
    }

    /// Positions of the KV cache.
    pub fn context(&self) -> usize {
        self.state.max_positions()
    }

    pub fn conversation(&self) -> &Conversation {
        &self.conversation
    }

    /// The tokens the KV cache holds.
    pub fn kv_tokens(&self) -> &[u32] {
        self.kv.tokens()
    }

    pub fn format(&self) -> &ChatFormat<'v> {
        &self.format
    }

    /// Forgets the turns (the system message stays). The KV cache is kept: the next
    /// prompt reuses whatever prefix it still shares, such as the system message.
    pub fn reset(&mut self) {
        self.conversation.reset();
    }

    /// One turn: `user` is added to the conversation, the prompt fitted into the
    /// context, its new tokens run, and the reply generated, each token passed to
    /// `on_token` (id and bytes) as it is chosen. The reply (what was produced, also when
    /// stopped by `stop` or the context's end) is added as the assistant's message. On an
    /// error the user message is taken back.
    pub fn send(
        &mut self,
        user: &str,
        stop: &AtomicBool,
        on_token: &mut dyn FnMut(u32, &[u8]) -> std::io::Result<()>,
    ) -> Result<TurnStats, RunError> {
        self.conversation.push(Message::new("user", user));
        let result = self.reply(stop, on_token);
        match &result {
            Ok(_) => {
                let bytes = self.format.tokenizer().decode(&self.reply);
                let text = String::from_utf8_lossy(&bytes).into_owned();
                self.conversation.push(Message::new("assistant", text));
            }
            Err(_) => {
                self.conversation.pop();
            }
        }
        result
    }

    fn reply(
        &mut self,
        stop: &AtomicBool,
        on_token: &mut dyn FnMut(u32, &[u8]) -> std::io::Result<()>,
    ) -> Result<TurnStats, RunError> {
        let context = self.context();
        let room = self.options.reply_room(context);
        let fitted = self.conversation.fit(&self.format, context, room)?;
        let prompt = &fitted.tokens;
        if prompt.is_empty() {
            return Err(RunError::Tokens("the chat template rendered an empty prompt".into()));
        }
        let reused = self.kv.reuse(prompt, self.model.config.sliding_window.is_some());
        self.sampler.set_context(prompt);
        let mut stats = TurnStats {
            prompt_tokens: prompt.len(),
            reused,
            prefilled: 0,
            prefill_time: Duration::ZERO,
            generated: 0,
            generation_time: Duration::ZERO,
            dropped_messages: fitted.dropped,
            stop: StopReason::Interrupted,
        };
        self.reply.clear();
        // The new part of the prompt, in batches; only the last position's logits.
        let started = Instant::now();
        let mut pos = reused;
        let mut logits: &[f32] = &[];
        while pos < prompt.len() {
            if stop.load(Ordering::Relaxed) {
                stats.prefill_time = started.elapsed();
                return Ok(stats);
            }
            let n = (prompt.len() - pos).min(self.state.max_batch());
            let rows = LogitRows::last_of_prompt(pos + n, prompt.len());
            logits = forward_batch_for(self.model, &mut self.state, &prompt[pos..pos + n], pos, rows);
            self.kv.extend(&prompt[pos..pos + n]);
            pos += n;
            stats.prefilled += n;
        }
        stats.prefill_time = started.elapsed();
        let started = Instant::now();
        let max_new = self.options.max_tokens.unwrap_or(usize::MAX);
        stats.stop = loop {
            let token = self.sampler.sample(logits);
            if self.model.config.is_eos(token) {
                break StopReason::Eos(token);
            }
            self.reply.push(token);
            stats.generated += 1;
            on_token(token, self.model.vocab.and_then(|v| v.token(token)).unwrap_or(&[]))?;
            if stats.generated >= max_new {
                break StopReason::MaxTokens;
            }
            if pos >= context {
                break StopReason::ContextFull;
            }
            if stop.load(Ordering::Relaxed) {
                break StopReason::Interrupted;
            }
            logits = forward(self.model, &mut self.state, token, pos);
            self.kv.extend(&[token]);
            pos += 1;
        };
        stats.generation_time = started.elapsed();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use olmo_format::vocab::{PackedVocab, Vocab, VocabView};
    use olmo_format::VocabInfo;

    /// Every byte is a token; `<|end|>` is special.
    fn bytes_vocab() -> (VocabInfo, PackedVocab) {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens.push(b"<|end|>".to_vec());
        let v = Vocab { tokens, special_ids: vec![256] };
        (v.info(), v.to_packed())
    }

    /// One token per byte of each message's content, `<|end|>` after each message.
    const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}<|end|>{% endfor %}";

    #[test]
    fn reuse_keeps_the_common_prefix_and_the_last_token_to_run() {
        let mut kv = KvTokens::with_capacity(8);
        assert_eq!(kv.reuse(&[1, 2, 3], false), 0);
        kv.extend(&[1, 2, 3, 4]);
        assert_eq!(kv.reuse(&[1, 2, 3, 4, 5, 6], false), 4);
        assert_eq!(kv.tokens(), [1, 2, 3, 4]);
        // A prompt the cache holds whole still runs its last token for the logits.
        assert_eq!(kv.reuse(&[1, 2, 3, 4], false), 3);
        assert_eq!(kv.tokens(), [1, 2, 3]);
        assert_eq!(kv.reuse(&[1, 9, 3], false), 1);
        assert_eq!(kv.tokens(), [1]);
        assert_eq!(kv.reuse(&[], false), 0);
        assert!(kv.is_empty());
    }

    #[test]
    fn a_sliding_window_cache_continues_or_starts_over() {
        let mut kv = KvTokens::with_capacity(8);
        kv.extend(&[1, 2, 3, 4]);
        assert_eq!(kv.reuse(&[1, 2, 3, 4, 5], true), 4, "continues where it stopped");
        assert_eq!(kv.reuse(&[1, 2, 3, 9, 9], true), 0, "a shorter prefix: over from 0");
        assert!(kv.is_empty());
        kv.extend(&[1, 2, 3]);
        assert_eq!(kv.reuse(&[1, 2, 3], true), 0, "the last token must run: over from 0");
    }

    #[test]
    fn fitting_drops_the_oldest_turns_and_keeps_the_system_message() {
        let (info, packed) = bytes_vocab();
        let template = ChatTemplate::new("t", TEMPLATE, &[]).unwrap();
        let format = ChatFormat::new(template, Tokenizer::new(VocabView::new(&info, &packed.offsets, &packed.bytes)));
        let mut c = Conversation::new(Some("sys"));
        for (role, content) in [("user", "aaaa"), ("assistant", "bbbb"), ("assistant", "cc"), ("user", "dddd"), ("assistant", "e"), ("user", "ffff")] {
            c.push(Message::new(role, content));
        }
        // 4 + 5 + 5 + 3 + 5 + 2 + 5 = 29 tokens.
        let all = c.fit(&format, 40, 10).unwrap();
        assert_eq!((all.tokens.len(), all.dropped), (29, 0));
        // 25 positions for the prompt: the first turn (user, two replies) goes.
        let fitted = c.fit(&format, 35, 10).unwrap();
        assert_eq!((fitted.tokens.len(), fitted.dropped), (16, 3));
        assert_eq!(c.messages().iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["sys", "dddd", "e", "ffff"]);
        // Down to the system message and the last user message.
        let fitted = c.fit(&format, 20, 10).unwrap();
        assert_eq!((fitted.tokens.len(), fitted.dropped), (9, 2));
        // Even that does not fit: an error, and the conversation is as it was.
        let e = c.fit(&format, 15, 10).unwrap_err().to_string();
        assert!(e.contains("needs 9 positions") && e.contains("context of 15 keeps 10 free"), "{e}");
        assert_eq!(c.messages().len(), 2);
        c.reset();
        assert_eq!(c.messages(), [Message::new("system", "sys")]);
        // Nothing but system messages: nothing to drop.
        assert!(c.fit(&format, 4, 1).is_err());
        assert_eq!(c.fit(&format, 20, 10).unwrap().tokens.len(), 4);
    }

    #[test]
    fn the_reply_room_is_bounded_by_the_context() {
        let o = |max_tokens| ChatOptions { sampling: SamplingParams::default(), max_tokens };
        assert_eq!(o(None).reply_room(128), 32);
        assert_eq!(o(Some(10)).reply_room(128), 10);
        assert_eq!(o(Some(1000)).reply_room(128), 64);
        assert_eq!(o(None).reply_room(1), 1);
    }
}
