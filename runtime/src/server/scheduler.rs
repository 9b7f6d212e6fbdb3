//! The loop that owns the model, the KV slots and the batch.
//!
//! Handlers [`Queue::submit`] a [`Job`] (prompt tokens and options) and read its
//! [`Event`]s from a channel. Each turn of the loop:
//! 1. admits waiting jobs into free slots (blocking on a condition variable while there
//!    is no work at all: an idle server uses no CPU);
//! 2. drops jobs whose client went away (their cancel flag, or a closed channel);
//! 3. runs one decode step: the next token of every slot that has finished its prompt,
//!    one row each, in one pass over the weights (`forward_rows`);
//! 4. reads prompts: the next chunk (at most `prefill_chunk` tokens) of the oldest
//!    prompt still being read, and beside it, in the same pass over the weights
//!    (`forward_chunks`), the next chunks of other prompts while the tokens stay within
//!    one chunk's budget; so a long prompt does not stop the running streams, and
//!    prompts that arrive together are read together. While no stream is decoding
//!    there is no one to keep waiting: the pass then reads as many prompts' next
//!    chunks as the run state's batch holds (the server makes it twice a chunk), so
//!    eight requests that arrive at once are read in one pass, not two with a decode
//!    step between.
//!
//! A sequence's numbers do not depend on its neighbours: a decode row is computed as
//! alone, prompts are cut into chunks from their own start, and a chunk read beside
//! others is computed as alone. So greedy output is the same alone or beside others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::cell::OnceCell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::generation::json::{self, JsonFormat, JsonMode, JsonVocab};
use crate::generation::logprobs::TokenLogprob;
use crate::generation::sampling::{Sampler, SamplingParams};
use crate::generation::session::KvTokens;
use crate::generation::stop::StopText;
use crate::model::forward::{forward_chunks, forward_rows, Chunk, LogitRows, Row, RunState};
use crate::model::Model;
use crate::server::metrics::Metrics;

/// What a handler queues: a prompt and how to continue it.
pub struct Job {
    pub prompt: Vec<u32>,
    /// New tokens at most (the scheduler also stops at the end of the slot's context).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings (not included in the reply).
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Which of a request's choices this job is (`n` jobs share one channel).
    pub choice: usize,
    /// Send each generated token's log-probability with this many alternatives
    /// ([`Event::Logprob`]).
    pub logprobs: Option<usize>,
    /// With `logprobs`, also each prompt token's after the first
    /// ([`Event::PromptLogprob`]): every prompt position's logits are computed, and no
    /// cache is reused. `max_tokens` may then be 0: the prompt is only scored.
    pub prompt_logprobs: bool,
    /// Added to these tokens' logits before each choice (ids within the vocabulary).
    pub logit_bias: Vec<(u32, f32)>,
    /// Hold the reply to one JSON object (of a schema), ending it when the object
    /// closes (a model with a vocabulary; `generation::json`).
    pub json: Option<JsonFormat>,
    /// Start from a free slot's cache where it holds the prompt's beginning (the
    /// longest such prefix among the free slots), running only the rest.
    pub cache_prompt: bool,
    pub events: Sender<(usize, Event)>,
    /// Set by the handler when its client goes away.
    pub cancel: Arc<AtomicBool>,
}

impl Job {
    /// Sends `e`, tagged with the job's choice; false when the handler is gone.
    fn send(&self, e: Event) -> bool {
        self.events.send((self.choice, e)).is_ok()
    }
}

/// What the scheduler sends back for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The job left the queue for a slot.
    Started,
    /// A generated token's log-probability (jobs that ask for them), sent before the
    /// text it adds, which a stop string may hold back or cut.
    Logprob(TokenLogprob),
    /// A prompt token's log-probability given the tokens before it, in order from the
    /// second ([`Job::prompt_logprobs`]); all of them before the first generated token.
    PromptLogprob(TokenLogprob),
    /// More reply text (whole characters, held back while it could start a stop string).
    Text(String),
    /// The reply is over.
    Done(Finish),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Of those, the ones a slot's cache already held ([`Job::cache_prompt`]).
    pub cached_tokens: usize,
    /// Tokens generated (an end-of-sequence token that ended the reply not counted).
    pub completion_tokens: usize,
    /// From queueing to the first token, in milliseconds.
    pub time_to_first_token_ms: u64,
}

/// How the scheduler runs.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Requests run at once, each in a KV slot of its own.
    pub slots: usize,
    /// Positions of each slot: a request's prompt and reply together.
    pub context: usize,
    /// Prompt tokens per chunk.
    pub prefill_chunk: usize,
    /// Requests that may wait for a slot; more are refused ([`Queue::submit`]).
    pub queue: usize,
}

/// Why [`Queue::submit`] refused a job.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full.
    Busy,
    /// The server is shutting down.
    Closed,
}

struct Waiting {
    jobs: VecDeque<(Job, Instant)>,
    closed: bool,
}

/// The jobs waiting for a slot, shared by the handlers and the scheduler.
pub struct Queue {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    capacity: usize,
    pub metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Queue> {
        Arc::new(Queue {
            waiting: Mutex::new(Waiting { jobs: VecDeque::with_capacity(capacity), closed: false }),
            wake: Condvar::new(),
            capacity,
            metrics,
        })
    }

    /// Queues `job`, or refuses it when `capacity` jobs are already waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.submit_all(vec![job])
    }

    /// Jobs that may wait at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues all of `jobs` (a request's choices), or none when they do not fit.
    pub fn submit_all(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        let mut w = self.lock();
        if w.closed {
            return Err(SubmitError::Closed);
        }
        if w.jobs.len() + jobs.len() > self.capacity {
            return Err(SubmitError::Busy);
        }
        let now = Instant::now();
        w.jobs.extend(jobs.into_iter().map(|j| (j, now)));
        Metrics::set(&self.metrics.queue_depth, w.jobs.len() as u64);
        self.wake.notify_one();
        Ok(())
    }

    /// Stops the scheduler: it finishes no more work and returns.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Wakes the scheduler (a job was cancelled).
    pub fn nudge(&self) {
        let _guard = self.lock();
        self.wake.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // A panic elsewhere while holding the lock leaves the queue usable.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in a slot.
struct Active {
    job: Job,
    /// Admission order: the oldest prompt is read first.
    seq: u64,
    queued: Instant,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Of those, the ones the slot's cache held when the job came in.
    cached: usize,
    /// The token to feed next (decoding) and its position.
    next: u32,
    pos: usize,
    generated: usize,
    first_token: Option<Instant>,
    sampler: Sampler,
    text: StopText,
    /// What the reply may continue with ([`Job::json`]).
    json: Option<JsonMode>,
}

impl Active {
    /// Whether its whole prompt is in the cache: it decodes from now on.
    fn decoding(&self) -> bool {
        self.prefilled == self.job.prompt.len()
    }
}

/// The scheduler loop: owns the model's run state (every slot's KV cache).
pub struct Scheduler<'m, 'v> {
    model: &'m Model<'v>,
    state: RunState,
    config: SchedulerConfig,
    slots: Vec<Option<Active>>,
    queue: Arc<Queue>,
    /// The decode batch's rows and the slots they belong to (capacity: every slot).
    rows: Vec<Row>,
    row_slots: Vec<usize>,
    /// The tokens each slot's cache holds, kept after its job ends for the next job
    /// that asks to reuse them ([`Job::cache_prompt`]); each room for a whole context.
    kv: Vec<KvTokens>,
    /// The prompts being read, (admission, slot), and the chunks of a pass, (slot,
    /// tokens) (capacity: every slot).
    reading: Vec<(u64, usize)>,
    chunks: Vec<(usize, usize)>,
    admitted: u64,
    /// The vocabulary's token classes for JSON-mode replies, made for the first (2.3 ms
    /// over the dolma2 vocabulary, which a server without such requests never spends).
    json_vocab: OnceCell<Arc<JsonVocab>>,
}

impl<'m, 'v> Scheduler<'m, 'v> {
    /// `state` must have `config.slots` slots of `config.context` positions and batches of
    /// at least `config.prefill_chunk` and `config.slots` tokens; a larger batch is what
    /// a pass may read of waiting prompts while no stream decodes.
    pub fn new(model: &'m Model<'v>, state: RunState, config: SchedulerConfig, queue: Arc<Queue>) -> Scheduler<'m, 'v> {
        assert!(state.slots() >= config.slots && state.max_positions() >= config.context);
        assert!(state.max_batch() >= config.prefill_chunk.max(config.slots));
        Metrics::set(&queue.metrics.slots, config.slots as u64);
        Scheduler {
            model,
            state,
            config,
            slots: (0..config.slots).map(|_| None).collect(),
            queue,
            rows: Vec::with_capacity(config.slots),
            row_slots: Vec::with_capacity(config.slots),
            kv: (0..config.slots).map(|_| KvTokens::with_capacity(config.context)).collect(),
            reading: Vec::with_capacity(config.slots),
            chunks: Vec::with_capacity(config.slots),
            admitted: 0,
            json_vocab: OnceCell::new(),
        }
    }

    /// Runs until the queue is closed.
    pub fn run(mut self) {
        while self.admit() {
            self.drop_cancelled();
            self.decode_step();
            self.prefill_step();
        }
    }

    /// Moves waiting jobs into free slots; blocks while there is nothing to do. False once
    /// the queue is closed.
    fn admit(&mut self) -> bool {
        let queue = Arc::clone(&self.queue);
        let mut w = queue.lock();
        loop {
            if w.closed {
                return false;
            }
            while self.slots.iter().any(Option::is_none) {
                let Some((job, queued)) = w.jobs.pop_front() else { break };
                if job.cancel.load(Ordering::Relaxed) || !job.send(Event::Started) {
                    Metrics::add(&self.queue.metrics.requests_cancelled, 1);
                    continue;
                }
                self.admitted += 1;
                // A penalty window past the slot's context ('repeat_last_n': -1) is the context.
                let sampling = SamplingParams { penalty_last_n: job.sampling.penalty_last_n.min(self.config.context), ..job.sampling };
                let mut sampler = Sampler::new(sampling, self.model.config.vocab_size as usize);
                sampler.set_context(&job.prompt);
                sampler.set_logit_bias(&job.logit_bias);
                let (free, cached) = self.take_slot(&job);
                Metrics::add(&self.queue.metrics.prompt_tokens_cached, cached as u64);
                let text = StopText::new(job.stop.clone());
                let json = match (&job.json, self.model.vocab) {
                    (Some(format), Some(vocab)) => {
                        let classes = self.json_vocab.get_or_init(|| Arc::new(JsonVocab::new(&vocab, self.model.config.vocab_size as usize)));
                        Some(JsonMode::new(Arc::clone(classes), format))
                    }
                    _ => None,
                };
                self.slots[free] = Some(Active {
                    seq: self.admitted,
                    queued,
                    prefilled: cached,
                    cached,
                    next: 0,
                    pos: cached,
                    generated: 0,
                    first_token: None,
                    sampler,
                    json,
                    text,
                    job,
                });
            }
            let busy = self.slots.iter().filter(|s| s.is_some()).count();
            Metrics::set(&self.queue.metrics.queue_depth, w.jobs.len() as u64);
            Metrics::set(&self.queue.metrics.busy_slots, busy as u64);
            if busy > 0 {
                return true;
            }
            w = self.queue.wake.wait(w).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A free slot for `job` and how many of its prompt's tokens the slot's cache keeps:
    /// with [`Job::cache_prompt`], the free slot whose cache holds the longest beginning
    /// of the prompt (a cache with sliding-window layers only where it holds no more
    /// than that, [`KvTokens::reuse`]); otherwise, from position 0, the free slot whose
    /// cache holds the least, so that the caches later requests may reuse stay.
    fn take_slot(&mut self, job: &Job) -> (usize, usize) {
        let sliding = self.model.config.sliding_window.is_some();
        // A prompt scored for its own log-probabilities needs every position's logits.
        let reuse = job.cache_prompt && !job.prompt_logprobs;
        let free = (0..self.slots.len()).filter(|&i| self.slots[i].is_none());
        // Ties go to the slot that holds the least (the others' caches stay), then to
        // the lowest.
        let i = if reuse {
            free.max_by_key(|&i| (self.kv[i].reusable(&job.prompt, sliding), std::cmp::Reverse((self.kv[i].len(), i))))
        } else {
            free.min_by_key(|&i| (self.kv[i].len(), i))
        }
        .expect("a free slot");
        if !reuse {
            self.kv[i].clear();
            return (i, 0);
        }
        (i, self.kv[i].reuse(&job.prompt, sliding))
    }

    fn drop_cancelled(&mut self) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|a| a.job.cancel.load(Ordering::Relaxed)) {
                *slot = None;
                Metrics::add(&self.queue.metrics.requests_cancelled, 1);
            }
        }
    }

    /// The next token of every slot whose prompt is in, in one pass.
    fn decode_step(&mut self) {
        self.rows.clear();
        self.row_slots.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(a) = slot {
                if a.decoding() {
                    self.rows.push(Row { slot: i, token: a.next, pos: a.pos });
                    self.row_slots.push(i);
                    self.kv[i].extend(&[a.next]);
                }
            }
        }
        if self.rows.is_empty() {
            return;
        }
        let metrics = Arc::clone(&self.queue.metrics);
        Metrics::add(&metrics.decode_steps, 1);
        Metrics::add(&metrics.decode_rows, self.rows.len() as u64);
        let vocab = self.model.config.vocab_size as usize;
        let logits = forward_rows(self.model, &mut self.state, &self.rows);
        for (r, &i) in self.row_slots.iter().enumerate() {
            let a = self.slots[i].as_mut().expect("a decoding slot");
            a.pos += 1;
            if !emit(self.model, self.config.context, &metrics, a, &logits[r * vocab..][..vocab]) {
                self.slots[i] = None;
            }
        }
    }

    /// The next chunk of the oldest prompt still being read, and of others while the
    /// tokens fit in one chunk's budget (the state's batch while no stream decodes), in
    /// one pass.
    fn prefill_step(&mut self) {
        self.reading.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(a) = slot.as_ref().filter(|a| !a.decoding()) {
                self.reading.push((a.seq, i));
            }
        }
        self.reading.sort_unstable();
        let decoding = self.slots.iter().flatten().any(Active::decoding);
        let budget = if decoding { self.config.prefill_chunk } else { self.state.max_batch() };
        let mut used = 0;
        self.chunks.clear();
        for &(_, i) in &self.reading {
            let a = self.slots[i].as_ref().expect("a reading slot");
            // Chunks are cut from the prompt's own start whatever is read beside them.
            let n = (a.job.prompt.len() - a.prefilled).min(self.config.prefill_chunk);
            if self.chunks.is_empty() || used + n <= budget {
                self.chunks.push((i, n));
                used += n;
            }
        }
        if self.chunks.is_empty() {
            return;
        }
        let metrics = Arc::clone(&self.queue.metrics);
        Metrics::add(&metrics.prefill_passes, 1);
        Metrics::add(&metrics.prefill_chunks, self.chunks.len() as u64);
        Metrics::add(&metrics.prompt_tokens, used as u64);
        let slots = &self.slots;
        // Borrows of the prompts: made per pass (a pass is a chunk, not a token).
        let chunks: Vec<Chunk> = self
            .chunks
            .iter()
            .map(|&(i, n)| {
                let a = slots[i].as_ref().expect("a reading slot");
                let end = a.prefilled + n;
                Chunk { slot: i, tokens: &a.job.prompt[a.prefilled..end], start: a.prefilled, logits: logit_rows(&a.job, end) }
            })
            .collect();
        for c in &chunks {
            self.kv[c.slot].extend(c.tokens);
        }
        let logits = forward_chunks(self.model, &mut self.state, &chunks);
        let vocab = self.model.config.vocab_size as usize;
        // The rows each chunk asked for, in order.
        let mut r = 0;
        for &(i, n) in &self.chunks {
            let a = self.slots[i].as_mut().expect("a reading slot");
            let rows = logit_rows(&a.job, a.prefilled + n).rows(n);
            let chunk_logits = &logits[r * vocab..][..rows * vocab];
            r += rows;
            if a.job.prompt_logprobs {
                // Row j is position prefilled + j: it scores the prompt's next token.
                let top = a.job.logprobs.unwrap_or(0);
                for j in 0..n {
                    let pos = a.prefilled + j;
                    if pos + 1 < a.job.prompt.len() {
                        let l = TokenLogprob::new(&chunk_logits[j * vocab..][..vocab], a.job.prompt[pos + 1], top);
                        if !a.job.send(Event::PromptLogprob(l)) {
                            break; // the client is gone: `emit` or the next pass notices
                        }
                    }
                }
            }
            a.prefilled += n;
            a.pos = a.prefilled;
            if a.decoding() {
                // The last row: the prompt's end.
                let row = &chunk_logits[(rows - 1) * vocab..];
                let going = if a.job.max_tokens == 0 { finish(a, FinishReason::Length) } else { emit(self.model, self.config.context, &metrics, a, row) };
                if !going {
                    self.slots[i] = None;
                }
            }
        }
    }
}

/// The logits a prompt chunk of `job` ending at `end` asks for: the last row where it
/// ends the prompt, or every row for the prompt's own log-probabilities.
fn logit_rows(job: &Job, end: usize) -> LogitRows {
    if job.prompt_logprobs {
        LogitRows::All
    } else {
        LogitRows::last_of_prompt(end, job.prompt.len())
    }
}

/// Chooses the slot's next token from `logits` and sends what it adds to the reply;
/// false when the reply is over (or its client gone) and the slot is free.
fn emit(model: &Model, context: usize, metrics: &Metrics, a: &mut Active, logits: &[f32]) -> bool {
    let token = json::sample(&mut a.sampler, a.json.as_mut(), model.vocab, logits);
    if a.first_token.is_none() {
        a.first_token = Some(Instant::now());
    }
    if !a.job.ignore_eos && model.config.is_eos(token) {
        return finish(a, FinishReason::Stop);
    }
    a.generated += 1;
    Metrics::add(&metrics.generated_tokens, 1);
    if let Some(n) = a.job.logprobs {
        if !a.job.send(Event::Logprob(TokenLogprob::new(logits, token, n))) {
            Metrics::add(&metrics.requests_cancelled, 1);
            return false;
        }
    }
    let bytes = model.vocab.and_then(|v| v.token(token)).unwrap_or(&[]);
    let (text, stopped) = a.text.push(bytes);
    if !text.is_empty() && !a.job.send(Event::Text(text.to_string())) {
        Metrics::add(&metrics.requests_cancelled, 1);
        return false;
    }
    // The mask lets only tokens that continue the object through; the object's close
    // ends the reply.
    let closed = a.json.as_mut().is_some_and(|json| json.closes(bytes));
    if stopped || closed {
        return finish(a, FinishReason::Stop);
    }
    // The token is fed at `pos` in the next step; the last position of the context is
    // the last that can be fed.
    if a.generated >= a.job.max_tokens || a.pos >= context {
        return finish(a, FinishReason::Length);
    }
    a.next = token;
    true
}

/// Sends the held-back text and the end; always false (the slot is free).
fn finish(a: &mut Active, reason: FinishReason) -> bool {
    let rest = a.text.finish();
    if !rest.is_empty() {
        a.job.send(Event::Text(rest.to_string()));
    }
    let ttft = a.first_token.map_or(0, |t| t.duration_since(a.queued).as_millis() as u64);
    a.job.send(Event::Done(Finish {
        reason,
        prompt_tokens: a.job.prompt.len(),
        cached_tokens: a.cached,
        completion_tokens: a.generated,
        time_to_first_token_ms: ttft,
    }));
    false
}
