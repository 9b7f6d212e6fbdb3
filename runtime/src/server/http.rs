//! The HTTP layer: a thread per connection reads one request (head parsed by
//! `httparse`, a body of at most `max_body` bytes, all within time limits), checks the
//! API key, routes it, and answers with JSON or, for `"stream": true`, server-sent
//! events (`data: {...}` chunks, then `data: [DONE]`). Each connection carries one
//! request (`Connection: close`), which is also how a streamed body ends.
//!
//! Completions are parsed and validated ([`super::api`]), their prompts rendered and
//! encoded here, and queued for the scheduler; the handler then only streams the
//! events back. A client that goes away (a failed write, or a closed socket seen while
//! waiting) cancels its job at once, which frees its slot at the scheduler's next step.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::generation::reply_format::ReplyFormat;
use crate::generation::logprobs::TokenLogprob;
use crate::generation::sampling::SamplingParams;
use crate::generation::session::ChatFormat;
use crate::server::api::{self, AnswerInfo, ApiError, CompletionRequest, Prompt};
use crate::server::responses;
use crate::server::metrics::Metrics;
use crate::server::scheduler::{Event, Finish, FinishReason, Job, Queue, SubmitError};
use crate::text::chat_template::Tools;
use crate::text::tokenizer::Tokenizer;
use crate::text::reply::{Reading, ReplyReader};

/// Limits and identity of the HTTP side.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Clients must send `Authorization: Bearer KEY` (all routes but `/health`).
    pub api_key: Option<String>,
    /// The name `/v1/models` lists and answers carry.
    pub model_name: String,
    /// Positions of a slot: a prompt and its reply together.
    pub context: usize,
    /// Bytes of a request body at most (more: 413).
    pub max_body: usize,
    /// Connections served at once (more: 503 at once).
    pub max_connections: usize,
    /// Time a client has to send its request, head and body.
    pub request_timeout: Duration,
    /// Time one write to a client may block.
    pub write_timeout: Duration,
    /// Whether a request that does not say (`cache_prompt`) starts from a slot's cache
    /// where it holds the prompt's beginning.
    pub cache_prompt: bool,
}

impl HttpConfig {
    pub fn new(model_name: String, context: usize) -> HttpConfig {
        HttpConfig {
            api_key: None,
            model_name,
            context,
            max_body: 1 << 20,
            max_connections: 256,
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            cache_prompt: false,
        }
    }
}

/// Bytes of a request head at most.
const MAX_HEAD: usize = 16 << 10;
const MAX_HEADERS: usize = 64;
/// How often a handler waiting for tokens checks that its client is still there.
const PEER_CHECK: Duration = Duration::from_millis(100);

/// What every handler shares.
pub struct App<'a, 'v> {
    pub config: HttpConfig,
    pub queue: Arc<Queue>,
    /// The chat template and tokenizer (`None`: a blob without a vocabulary or template).
    pub chat: Option<&'a ChatFormat<'v>>,
    pub tokenizer: Option<&'a Tokenizer<'v>>,
    pub vocab_size: u32,
    pub created: u64,
    connections: AtomicUsize,
    next_id: AtomicU64,
    stop: AtomicBool,
}

impl<'a, 'v> App<'a, 'v> {
    pub fn new(
        config: HttpConfig,
        queue: Arc<Queue>,
        chat: Option<&'a ChatFormat<'v>>,
        tokenizer: Option<&'a Tokenizer<'v>>,
        vocab_size: u32,
    ) -> App<'a, 'v> {
        App {
            config,
            queue,
            chat,
            tokenizer,
            vocab_size,
            created: unix_time(),
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.queue.metrics
    }

    /// Serves connections from `listener` until [`App::stop`], a thread each (at most
    /// `max_connections`); returns once every connection is done.
    pub fn serve(&self, listener: &TcpListener) {
        std::thread::scope(|scope| {
            for conn in listener.incoming() {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                if self.connections.fetch_add(1, Ordering::AcqRel) >= self.config.max_connections {
                    self.connections.fetch_sub(1, Ordering::AcqRel);
                    Metrics::add(&self.metrics().requests_rejected_busy, 1);
                    let e = ApiError::new(503, "server_error", "too_many_connections", "too many connections: try again later");
                    let mut stream = stream;
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = respond(&mut stream, e.status, "application/json", e.body().as_bytes());
                    continue;
                }
                let spawned = std::thread::Builder::new().name("olmort-http".into()).spawn_scoped(scope, move || {
                    self.connection(stream);
                    self.connections.fetch_sub(1, Ordering::AcqRel);
                });
                if spawned.is_err() {
                    self.connections.fetch_sub(1, Ordering::AcqRel);
                }
            }
        });
    }

    /// Makes [`App::serve`] return: no new connections (the running ones finish), and the
    /// queue closed. `addr` is the listener's address, connected to once to wake it.
    pub fn stop(&self, addr: std::net::SocketAddr) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.close();
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }

    fn connection(&self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.config.write_timeout));
        let result = match read_request(&mut stream, &self.config) {
            Ok(req) => self.route(&mut stream, &req),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let m = self.metrics();
            Metrics::add(if e.status == 503 { &m.requests_rejected_busy } else { &m.requests_client_error }, 1);
            let _ = respond(&mut stream, e.status, "application/json", e.body().as_bytes());
        }
        linger(stream);
    }

    fn route(&self, stream: &mut TcpStream, req: &Request) -> Result<(), ApiError> {
        let path = req.path.split('?').next().unwrap_or("");
        if path != "/health" {
            self.check_key(req)?;
        }
        let method = req.method.as_str();
        match (method, path) {
            ("GET", "/health") => self.ok(stream, "application/json", br#"{"status":"ok"}"#),
            ("GET", "/metrics") => self.ok(stream, "text/plain; version=0.0.4", self.metrics().render().as_bytes()),
            ("GET", "/v1/models") => {
                self.ok(stream, "application/json", api::models(&self.config.model_name, self.created, self.config.context).as_bytes())
            }
            ("POST", "/v1/completions") => self.completion(stream, &req.body, false),
            ("POST", "/v1/chat/completions") => self.completion(stream, &req.body, true),
            ("POST", "/v1/responses") => self.answer(stream, responses::parse(&req.body)?, Api::Responses),
            ("POST", "/tokenize") => self.tokenize(stream, &req.body),
            ("POST", "/detokenize") => self.detokenize(stream, &req.body),
            (_, "/health" | "/metrics" | "/v1/models" | "/v1/completions" | "/v1/chat/completions" | "/v1/responses" | "/tokenize" | "/detokenize") => {
                Err(ApiError::new(405, "invalid_request_error", "method_not_allowed", format!("{method} is not allowed on {path}")))
            }
            _ => Err(ApiError::new(404, "not_found_error", "not_found", format!("no route {method} {path}"))),
        }
    }

    fn ok(&self, stream: &mut TcpStream, content_type: &str, body: &[u8]) -> Result<(), ApiError> {
        Metrics::add(&self.metrics().requests_ok, 1);
        let _ = respond(stream, 200, content_type, body);
        Ok(())
    }

    fn check_key(&self, req: &Request) -> Result<(), ApiError> {
        let Some(key) = &self.config.api_key else { return Ok(()) };
        let given = req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        // Compared in full whatever the first difference, so timing tells nothing.
        let matches = given.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0);
        if matches {
            Ok(())
        } else {
            Err(ApiError::new(401, "invalid_request_error", "invalid_api_key", "a missing or wrong API key (Authorization: Bearer KEY)"))
        }
    }

    /// `POST /tokenize`: a text's or a chat's tokens ([`api::parse_tokenize`]), counted
    /// against the context, without running the model.
    fn tokenize(&self, stream: &mut TcpStream, body: &[u8]) -> Result<(), ApiError> {
        let (prompt, tools) = api::parse_tokenize(body)?;
        let tokens = self.tokens(&prompt, tools.as_ref().map(|t| &t.tools))?;
        self.ok(stream, "application/json", api::tokenized(&tokens, self.config.context).as_bytes())
    }

    /// `POST /detokenize`: token ids back to text (bytes that are not UTF-8 replaced).
    fn detokenize(&self, stream: &mut TcpStream, body: &[u8]) -> Result<(), ApiError> {
        let ids = api::parse_detokenize(body)?;
        let tokenizer = self.tokenizer.ok_or_else(|| ApiError::invalid("this model has no vocabulary to spell tokens with", Some("tokens")))?;
        if let Some(bad) = ids.iter().find(|&&t| t >= self.vocab_size) {
            return Err(ApiError::invalid(format!("token id {bad} is outside the vocabulary of {}", self.vocab_size), Some("tokens")));
        }
        let text = String::from_utf8_lossy(&tokenizer.decode(&ids)).into_owned();
        self.ok(stream, "application/json", api::detokenized(&text).as_bytes())
    }

    /// The prompt's tokens (a chat's with the `tools` shown to the model), refused when
    /// they do not fit the context.
    fn encode(&self, prompt: &Prompt, tools: Option<&Tools>) -> Result<Vec<u32>, ApiError> {
        let tokens = self.tokens(prompt, tools)?;
        if tokens.is_empty() {
            return Err(ApiError::invalid("the prompt has no tokens", Some("prompt")));
        }
        if tokens.len() >= self.config.context {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    format!("the prompt has {} tokens; this server's context is {} positions, prompt and reply together", tokens.len(), self.config.context),
                    Some("prompt"),
                )
            });
        }
        Ok(tokens)
    }

    /// The prompt's tokens, whatever their count.
    fn tokens(&self, prompt: &Prompt, tools: Option<&Tools>) -> Result<Vec<u32>, ApiError> {
        Ok(match prompt {
            Prompt::Tokens(t) => {
                if let Some(bad) = t.iter().find(|&&t| t >= self.vocab_size) {
                    return Err(ApiError::invalid(format!("token id {bad} is outside the vocabulary of {}", self.vocab_size), Some("prompt")));
                }
                t.clone()
            }
            Prompt::Text(text) => {
                let tokenizer = self
                    .tokenizer
                    .ok_or_else(|| ApiError::invalid("this model has no vocabulary: send the prompt as token ids", Some("prompt")))?;
                tokenizer.encode(text, false).map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?
            }
            Prompt::Chat(messages) => {
                let chat = self.chat.ok_or_else(|| ApiError::invalid("this model has no chat template: use /v1/completions", Some("messages")))?;
                chat.prompt_with_tools(messages, tools).map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?
            }
        })
    }

    fn completion(&self, stream: &mut TcpStream, body: &[u8], chat: bool) -> Result<(), ApiError> {
        let req = api::parse_request(body, chat)?;
        self.answer(stream, req, if chat { Api::Chat } else { Api::Completions })
    }

    /// Queues a parsed request's jobs and answers in `api`'s shapes.
    fn answer(&self, stream: &mut TcpStream, req: CompletionRequest, api: Api) -> Result<(), ApiError> {
        let chat = api != Api::Completions;
        if let Some(&(bad, _)) = req.logit_bias.iter().find(|&&(t, _)| t >= self.vocab_size) {
            return Err(ApiError::invalid(format!("'logit_bias': token id {bad} is outside the vocabulary of {}", self.vocab_size), Some("logit_bias")));
        }
        if req.json.is_some() && self.tokenizer.is_none() {
            return Err(ApiError::invalid("a JSON 'response_format' needs the model's vocabulary, which this blob has not", Some("response_format")));
        }
        if req.tools.is_some() && self.tokenizer.is_none() {
            return Err(ApiError::invalid("'tools' need the model's vocabulary, which this blob has not", Some("tools")));
        }
        let prompt = self.encode(&req.prompt, req.tools.as_ref().map(|t| &t.set.tools))?;
        // What the reply is held to and how it is read: a chat's from its template.
        let template = match req.prompt {
            Prompt::Chat(_) => self.chat.map(ChatFormat::template),
            _ => None,
        };
        let tail = || {
            let bytes = self.tokenizer.map(|t| t.decode(&prompt[prompt.len().saturating_sub(8)..])).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let ReplyFormat { held, reading } = ReplyFormat::new(template, tail, req.json.as_ref(), req.tools.as_ref(), req.reasoning)
            .map_err(|e| ApiError::invalid(format!("'tools': {e}"), Some("tools")))?;
        // What an echo puts first: the prompt's text, and its first token (which has no
        // log-probability).
        let echo = req.echo.then(|| {
            let text = match &req.prompt {
                Prompt::Text(t) => t.clone(),
                _ => String::from_utf8_lossy(&self.tokenizer.map(|t| t.decode(&prompt)).unwrap_or_default()).into_owned(),
            };
            (text, prompt[0])
        });
        let room = self.config.context - prompt.len();
        if req.n > self.queue.capacity() {
            return Err(ApiError::invalid(format!("'n' = {} is more than this server queues ({})", req.n, self.queue.capacity()), Some("n")));
        }
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let jobs = (0..req.n)
            .map(|choice| Job {
                prompt: prompt.clone(),
                max_tokens: req.max_tokens.unwrap_or(room).min(room),
                // Choice i samples from seed + i: different replies, each reproducible.
                sampling: SamplingParams { seed: req.sampling.seed.wrapping_add(choice as u64), ..req.sampling },
                stop: req.stop.clone(),
                ignore_eos: req.ignore_eos,
                choice,
                logprobs: req.logprobs,
                prompt_logprobs: req.echo && req.logprobs.is_some(),
                logit_bias: req.logit_bias.clone(),
                json: held.clone(),
                cache_prompt: req.cache_prompt.unwrap_or(self.config.cache_prompt),
                events: tx.clone(),
                cancel: Arc::clone(&cancel),
            })
            .collect();
        drop(tx);
        match self.queue.submit_all(jobs) {
            Ok(()) => {}
            Err(SubmitError::Busy) => {
                return Err(ApiError::new(503, "server_error", "overloaded", "every slot is busy and the queue is full: try again later"))
            }
            Err(SubmitError::Closed) => return Err(ApiError::new(503, "server_error", "shutting_down", "the server is shutting down")),
        }
        let prefix = match api {
            Api::Completions => "cmpl-",
            Api::Chat => "chatcmpl-",
            Api::Responses => "resp_",
        };
        let id = format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let info = AnswerInfo { id: &id, created: unix_time(), model: &self.config.model_name, chat };
        let mut events = Events { rx, stream, cancel: &cancel, queue: &self.queue, logprobs: req.logprobs.is_some(), echo, choices: req.n, reading };
        let done = match (api, req.stream) {
            (Api::Responses, streamed) => self.response(&mut events, &info, streamed),
            (_, true) => self.stream_answer(&mut events, &info, req.stream_usage),
            (_, false) => self.whole_answer(&mut events, &info),
        };
        match done {
            Some(()) => Metrics::add(&self.metrics().requests_ok, 1),
            None => {
                // The client went away, or the scheduler stopped: the job is dropped.
                cancel.store(true, Ordering::Relaxed);
                self.queue.nudge();
            }
        }
        Ok(())
    }

    /// A Responses API answer (one reply), whole or as its stream of typed events.
    /// `None`: the client went away.
    fn response(&self, events: &mut Events, info: &AnswerInfo, streamed: bool) -> Option<()> {
        let mut reader = events.reading.reader();
        let mut stream = streamed.then(|| responses::Stream::new(*info));
        if let Some(s) = &mut stream {
            start_events(events.stream)?;
            write_flushed(events.stream, &s.start())?;
        }
        let mut text = String::new();
        let finish = loop {
            match events.next()?.1 {
                Event::Text(t) => match &mut stream {
                    Some(s) => {
                        let (reasoning, content) = reader.push(&t);
                        write_flushed(events.stream, &s.text(reasoning, content))?;
                    }
                    None => text.push_str(&t),
                },
                Event::Done(f) => break f,
                Event::Started | Event::Logprob(_) | Event::PromptLogprob(_) => {}
            }
        };
        let cut = finish.reason == FinishReason::Length;
        let counts = usage_of(&[finish]);
        match &mut stream {
            Some(s) => {
                let parts = reader.finish();
                write_flushed(events.stream, &s.finish(&parts, cut, counts))
            }
            None => {
                let parts = events.reading.read(&text);
                respond(events.stream, 200, "application/json", responses::response(info, &parts, cut, counts).as_bytes()).ok()
            }
        }
    }

    /// Collects the replies, then answers with them whole (each after the prompt, for
    /// an echo). `None`: the client went away.
    fn whole_answer(&self, events: &mut Events, info: &AnswerInfo) -> Option<()> {
        let (echo, first) = match events.echo.take() {
            Some((t, first)) => (t, Some(first)),
            None => (String::new(), None),
        };
        let mut texts = vec![echo; events.choices];
        let mut logprobs = vec![Vec::new(); events.choices];
        let mut finished: Vec<Option<Finish>> = vec![None; events.choices];
        while finished.iter().any(Option::is_none) {
            let (i, event) = events.next()?;
            match event {
                Event::Started => {}
                // The prompt's all come before the first generated token's.
                Event::PromptLogprob(l) | Event::Logprob(l) => logprobs[i].push(l),
                Event::Text(t) => texts[i].push_str(&t),
                Event::Done(f) => finished[i] = Some(f),
            }
        }
        let finished: Vec<Finish> = finished.into_iter().flatten().collect();
        let choices = (0..events.choices)
            .map(|i| {
                let lp = events_logprobs(events.logprobs, info.chat, first, &logprobs[i], &|id| self.token_bytes(id), &mut 0);
                let parts = events.reading.read(&texts[i]);
                let reason = if parts.calls.is_empty() { finished[i].reason.as_str() } else { "tool_calls" };
                let mut choice = api::choice(info, i, &parts.content, reason, lp);
                if !parts.calls.is_empty() {
                    api::add_tool_calls(&mut choice, api::tool_calls(&parts.calls, &format!("{}_{i}", info.id), false));
                }
                if !parts.reasoning.is_empty() {
                    choice["message"]["reasoning_content"] = parts.reasoning.into();
                }
                choice
            })
            .collect();
        let body = api::answer(info, choices, usage_of(&finished));
        respond(events.stream, 200, "application/json", body.as_bytes()).ok()
    }

    /// Streams the replies as server-sent events, each chunk one choice's (an echo's
    /// prompt first, in a chunk of its own per choice); each carries the `logprobs` of
    /// its choice's tokens since its chunk before. `None`: the client went away.
    fn stream_answer(&self, events: &mut Events, info: &AnswerInfo, usage: bool) -> Option<()> {
        start_events(events.stream)?;
        let n = events.choices;
        if info.chat {
            for i in 0..n {
                send_event(events.stream, &api::chunk(info, i, None, true, None, None))?;
            }
        }
        let mut pending = vec![Vec::new(); n];
        let mut offsets = vec![0; n];
        let asked = events.logprobs;
        let echo = events.echo.take();
        let mut echoed = vec![echo.is_none(); n];
        let mut take = |i: usize, pending: &mut Vec<TokenLogprob>, first: Option<u32>| {
            let v = events_logprobs(asked, info.chat, first, pending, &|id| self.token_bytes(id), &mut offsets[i]);
            pending.clear();
            v
        };
        let mut readers: Vec<Option<ReplyReader>> = (0..n).map(|_| Some(events.reading.reader())).collect();
        let mut finished = Vec::with_capacity(n);
        while finished.len() < n {
            let (i, event) = events.next()?;
            match event {
                Event::Started => continue,
                Event::PromptLogprob(l) => {
                    pending[i].push(l);
                    continue;
                }
                _ => {}
            }
            if let (false, Some((text, first))) = (echoed[i], &echo) {
                echoed[i] = true;
                send_event(events.stream, &api::chunk(info, i, Some(text), false, None, take(i, &mut pending[i], Some(*first))))?;
            }
            match event {
                Event::Started | Event::PromptLogprob(_) => {}
                Event::Logprob(l) => pending[i].push(l),
                Event::Text(t) => {
                    // Reasoning and answer go out as they are told apart; text that may be
                    // a tag or a call block is held (with its tokens' log-probabilities)
                    // until the next piece or the reply's end.
                    let Some(reader) = &mut readers[i] else { continue };
                    let (reasoning, content) = reader.push(&t);
                    if !reasoning.is_empty() {
                        send_event(events.stream, &api::reasoning_chunk(info, i, reasoning, take(i, &mut pending[i], None)))?;
                    }
                    if !content.is_empty() {
                        send_event(events.stream, &api::chunk(info, i, Some(content), false, None, take(i, &mut pending[i], None)))?
                    }
                }
                Event::Done(f) => {
                    let mut reason = f.reason.as_str();
                    if let Some(r) = readers[i].take() {
                        let parts = r.finish();
                        if !parts.reasoning.is_empty() {
                            send_event(events.stream, &api::reasoning_chunk(info, i, &parts.reasoning, take(i, &mut pending[i], None)))?;
                        }
                        if !parts.content.is_empty() {
                            send_event(events.stream, &api::chunk(info, i, Some(&parts.content), false, None, take(i, &mut pending[i], None)))?;
                        }
                        if !parts.calls.is_empty() {
                            send_event(events.stream, &api::tool_calls_chunk(info, i, api::tool_calls(&parts.calls, &format!("{}_{i}", info.id), true)))?;
                            reason = "tool_calls";
                        }
                    }
                    send_event(events.stream, &api::chunk(info, i, None, false, Some(reason), take(i, &mut pending[i], None)))?;
                    finished.push(f);
                }
            }
        }
        if usage {
            send_event(events.stream, &api::usage_chunk(info, usage_of(&finished)))?;
        }
        events.stream.write_all(b"data: [DONE]\n\n").ok()?;
        events.stream.flush().ok()
    }

    /// A token's bytes (none without a tokenizer).
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.tokenizer.map(|t| t.decode(&[id])).unwrap_or_default()
    }
}

/// The usage of a request's choices: its prompt once (and what the first choice's
/// slot had cached of it), every choice's new tokens.
fn usage_of(finished: &[Finish]) -> api::Usage {
    api::Usage {
        prompt: finished.first().map_or(0, |f| f.prompt_tokens),
        cached: finished.first().map_or(0, |f| f.cached_tokens),
        completion: finished.iter().map(|f| f.completion_tokens).sum(),
    }
}

/// The `logprobs` of a chunk (`first`: an echoed prompt's first token): `None` unless
/// the request asked for them.
fn events_logprobs(
    asked: bool,
    chat: bool,
    first: Option<u32>,
    entries: &[TokenLogprob],
    token: &dyn Fn(u32) -> Vec<u8>,
    offset: &mut usize,
) -> Option<serde_json::Value> {
    asked.then(|| api::logprobs(chat, first, entries, token, offset))
}

/// A job's events, watching the client while it waits for them.
struct Events<'s, 'q> {
    rx: mpsc::Receiver<(usize, Event)>,
    stream: &'s mut TcpStream,
    cancel: &'q AtomicBool,
    queue: &'q Queue,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
    /// An echo's prompt text and first token, until the answer puts them first.
    echo: Option<(String, u32)>,
    /// Choices of the request: jobs sending on `rx`, tagged 0 to `choices - 1`.
    choices: usize,
    /// How the replies are read: reasoning, answer and calls (`text::reply`).
    reading: Reading,
}

impl Events<'_, '_> {
    /// The next event and its choice; `None` if the client closed its connection or the
    /// scheduler is gone.
    fn next(&mut self) -> Option<(usize, Event)> {
        loop {
            match self.rx.recv_timeout(PEER_CHECK) {
                Ok(e) => return Some(e),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    if peer_closed(self.stream) {
                        self.cancel.store(true, Ordering::Relaxed);
                        self.queue.nudge();
                        return None;
                    }
                }
            }
        }
    }
}

/// Whether the client has closed its side (a read would give end of file or an error).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// Which API a request came through, so which shapes answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
    Responses,
}

/// The head of a server-sent event stream.
fn start_events(stream: &mut TcpStream) -> Option<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).ok()
}

/// Writes server-sent events already formatted, and flushes.
fn write_flushed(stream: &mut TcpStream, events: &str) -> Option<()> {
    stream.write_all(events.as_bytes()).ok()?;
    stream.flush().ok()
}

fn send_event(stream: &mut TcpStream, json: &str) -> Option<()> {
    let mut line = String::with_capacity(json.len() + 8);
    line.push_str("data: ");
    line.push_str(json);
    line.push_str("\n\n");
    stream.write_all(line.as_bytes()).ok()?;
    stream.flush().ok()
}

/// A request as read: method, path, headers (names lowercased), body.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one request within `config`'s limits.
fn read_request(stream: &mut TcpStream, config: &HttpConfig) -> Result<Request, ApiError> {
    let deadline = Instant::now() + config.request_timeout;
    let timeout = || ApiError::new(408, "invalid_request_error", "timeout", "the request did not arrive in time");
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(ApiError::new(431, "invalid_request_error", "headers_too_large", format!("the request head is over {MAX_HEAD} bytes")));
        }
        let n = read_some(stream, &mut chunk, deadline).ok_or_else(timeout)?;
        if n == 0 {
            return Err(ApiError::invalid("the connection closed before the request was complete", None));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ApiError::invalid("a malformed request head", None)),
        Err(e) => return Err(ApiError::invalid(format!("a malformed request head: {e}"), None)),
    }
    let method = parsed.method.unwrap_or("").to_string();
    let path = parsed.path.unwrap_or("").to_string();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if header("transfer-encoding").is_some() {
        return Err(ApiError::new(411, "invalid_request_error", "length_required", "send the body with a Content-Length"));
    }
    let length = match header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| ApiError::invalid(format!("a bad Content-Length {v:?}"), None))?,
    };
    if length > config.max_body {
        return Err(ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("the body is {length} bytes; at most {} are accepted", config.max_body),
        ));
    }
    let mut body = buf[head_len..].to_vec();
    if body.len() > length {
        body.truncate(length);
    }
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..want], deadline).ok_or_else(timeout)?;
        if n == 0 {
            return Err(ApiError::invalid("the connection closed before the body was complete", None));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request { method, path, headers, body })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// One read before `deadline`: `None` when it passes (or the read fails).
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Option<usize> {
    let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
    stream.set_read_timeout(Some(left)).ok()?;
    stream.read(buf).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let retry = if status == 503 { "Retry-After: 1\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Closes the connection after the answer without resetting it: the client may still be
/// sending (a refused body), and closing with unread bytes would discard the answer.
fn linger(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut stream = stream;
    let mut sink = [0u8; 8192];
    let mut left = 4usize << 20;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
