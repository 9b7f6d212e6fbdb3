//! Generation: feed the prompt, then produce new tokens with a [`Sampler`], writing each
//! step as a trace line, as running text, or as a JSON object.
//!
//! Positions and limits: the model is fed the prompt's tokens one position at a time,
//! then each new token; after the prompt's last position every step produces a new
//! token. `max_tokens` counts new tokens, `steps` counts positions (forward passes, the
//! seed's `--steps`); when both are given the first limit reached ends the run. In the
//! trace format every new token is fed back and shown on its own line (as the seed's
//! loop does), so `max_tokens` N runs `prompt + N` positions; the text and JSON formats
//! need no forward pass for the last new token, so they run `prompt + N - 1`.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::model::forward::{forward, forward_batch_for, LogitRows, RunState};
use crate::model::Model;
use crate::model::ops::top_k;
use crate::generation::json::{self, JsonFormat, JsonMode, JsonVocab};
use crate::generation::sampling::{Sampler, SamplingParams};
use crate::text::detokenize::Utf8Stream;
use crate::generation::trace::{write_trace_line, LogitsSink, Timings};
use crate::RunError;

/// How each step is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The seed's lines: `POS: token ID ("text") Top 5 next tokens: ...`.
    Trace,
    /// The prompt, then the new text as it is produced.
    Text,
    /// One JSON object per position.
    Jsonl,
}

/// New tokens the text and JSON formats produce when neither `--max-tokens` nor
/// `--steps` is given (fewer if the model's context ends first).
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// The seed's default number of positions for the trace format.
pub const DEFAULT_TRACE_STEPS: usize = 20;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub format: Format,
    /// Positions to run at most (`--steps`).
    pub steps: Option<usize>,
    /// New tokens after the prompt at most (`--max-tokens`).
    pub max_tokens: Option<usize>,
    /// Keep going past the model's end-of-sequence token (text and JSON formats stop at
    /// it otherwise; the trace format never stops early, as the seed's loop).
    pub ignore_eos: bool,
    pub sampling: SamplingParams,
    /// Added to these tokens' logits before each choice (ids within the vocabulary).
    pub logit_bias: Vec<(u32, f32)>,
    /// Hold the new tokens to one JSON object ([`super::json`]; of a schema,
    /// [`super::json_schema`]), ending where it closes (text and jsonl formats, a model
    /// with a vocabulary).
    pub json: Option<JsonFormat>,
}

/// The positions a request runs, decided before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub positions: usize,
    /// New tokens at most (`usize::MAX`: only `positions` limits them).
    pub max_new: usize,
}

/// Works out how many positions to run and checks them against the model's context.
pub fn plan(model: &Model, prompt_len: usize, o: &GenerateOptions) -> Result<Plan, RunError> {
    let ctx = model.config.max_position_embeddings as usize;
    if prompt_len == 0 {
        return Err(RunError::Tokens("the prompt has no tokens: nothing to start from".into()));
    }
    if prompt_len > ctx {
        return Err(RunError::Usage(format!(
            "the prompt has {prompt_len} tokens, more than the model's maximum sequence length of {ctx}"
        )));
    }
    let trace = o.format == Format::Trace;
    // Positions needed for `n` new tokens.
    let for_new = |n: usize| {
        if trace {
            prompt_len.saturating_add(n)
        } else if n == 0 {
            0
        } else {
            prompt_len + n - 1
        }
    };
    let explicit = o.steps.is_some() || o.max_tokens.is_some();
    let (positions, max_new) = match (o.steps, o.max_tokens) {
        (Some(s), Some(n)) => (s.min(for_new(n)), n),
        (Some(s), None) => (s, usize::MAX),
        (None, Some(n)) => (for_new(n), n),
        (None, None) if trace => (DEFAULT_TRACE_STEPS, usize::MAX),
        (None, None) => (for_new(DEFAULT_MAX_TOKENS).min(ctx), DEFAULT_MAX_TOKENS),
    };
    if positions > ctx && explicit {
        let what = match (o.steps, o.max_tokens) {
            (_, Some(n)) if positions == for_new(n) => {
                format!("a prompt of {prompt_len} tokens and {n} new tokens need {positions} positions")
            }
            _ => format!("{positions} steps is"),
        };
        return Err(RunError::Usage(format!(
            "{what}, more than the model's maximum sequence length of {ctx}"
        )));
    }
    Ok(Plan {
        positions: positions.min(ctx),
        max_new,
    })
}

/// Runs the plan: the prompt (in batches through `forward_batch`), then new tokens one
/// at a time, each position written to `out` in the requested format. `prompt` must
/// already be checked against the vocabulary (`trace::check_request`).
pub fn generate(
    model: &Model,
    state: &mut RunState,
    prompt: &[u32],
    options: &GenerateOptions,
    plan: Plan,
    out: &mut dyn Write,
    mut logits_sink: Option<&mut dyn LogitsSink>,
) -> Result<Timings, RunError> {
    if options.format == Format::Text && model.vocab.is_none() {
        return Err(RunError::Usage(
            "--format text needs a vocabulary; this model was packed without one".into(),
        ));
    }
    let json = match (&options.json, model.vocab) {
        (None, _) => None,
        (Some(_), _) if options.format == Format::Trace => {
            return Err(RunError::Usage("--json, --json-schema and --tools apply to --format text or jsonl".into()))
        }
        (Some(_), None) => {
            return Err(RunError::Usage("--json, --json-schema and --tools need a vocabulary; this model was packed without one".into()))
        }
        (Some(format), Some(v)) => Some(JsonMode::new(Arc::new(JsonVocab::new(&v, model.config.vocab_size as usize)), format)),
    };
    let mut steps = Steps {
        model,
        options,
        plan,
        prompt,
        sampler: Sampler::new(options.sampling, model.config.vocab_size as usize),
        stream: Utf8Stream::new(),
        generated: 0,
        json,
    };
    steps.sampler.set_context(prompt);
    steps.sampler.set_logit_bias(&options.logit_bias);
    let mut timings = Timings::default();
    if options.format == Format::Text {
        for &id in prompt {
            let bytes = model.vocab.as_ref().and_then(|v| v.token(id)).unwrap_or(&[]);
            steps.stream.push(bytes, out)?;
        }
        out.flush()?;
    }
    let vocab = model.config.vocab_size as usize;
    let prompt_steps = prompt.len().min(plan.positions);
    // Running text shows nothing of the prompt's positions but the one it continues
    // from: the other rows of `lm_head` need not be computed, nor any in the batches
    // before the last.
    let text_only = options.format == Format::Text && logits_sink.is_none();
    let mut pos = 0;
    let mut next = Some(prompt[0]);
    while pos < prompt_steps {
        let n = (prompt_steps - pos).min(state.max_batch());
        let rows = if text_only { LogitRows::last_of_prompt(pos + n, prompt_steps) } else { LogitRows::All };
        let started = Instant::now();
        let logits = forward_batch_for(model, state, &prompt[pos..pos + n], pos, rows);
        timings.prompt += started.elapsed();
        timings.prompt_tokens += n;
        // With one row, the earlier positions only pass their prompt token on.
        let first = rows.first(n);
        for i in first..n {
            let row = &logits[(i - first) * vocab..][..vocab];
            next = steps.step(pos + i, prompt[pos + i], row, out, &mut logits_sink)?;
        }
        pos += n;
    }
    while let Some(token) = next {
        if pos >= plan.positions {
            break;
        }
        let started = Instant::now();
        let logits = forward(model, state, token, pos);
        timings.generation += started.elapsed();
        timings.generated_tokens += 1;
        next = steps.step(pos, token, logits, out, &mut logits_sink)?;
        pos += 1;
    }
    if options.format == Format::Text {
        steps.stream.finish(out)?;
    }
    out.flush()?;
    Ok(timings)
}

/// What happens at each position once its logits are known.
struct Steps<'a, 'm> {
    model: &'a Model<'m>,
    options: &'a GenerateOptions,
    plan: Plan,
    prompt: &'a [u32],
    sampler: Sampler,
    stream: Utf8Stream,
    /// New tokens so far.
    generated: usize,
    /// What the new text may continue with (`--json`).
    json: Option<JsonMode>,
}

impl Steps<'_, '_> {
    /// Writes position `pos` (fed `token`, giving `logits`) and returns the token for the
    /// next position, or None when the run is over (eos, or the last new token).
    fn step(
        &mut self,
        pos: usize,
        token: u32,
        logits: &[f32],
        out: &mut dyn Write,
        logits_sink: &mut Option<&mut dyn LogitsSink>,
    ) -> Result<Option<u32>, RunError> {
        let model = self.model;
        let format = self.options.format;
        let from_prompt = pos + 1 < self.prompt.len();
        let next = if from_prompt {
            self.prompt[pos + 1]
        } else {
            json::sample(&mut self.sampler, self.json.as_mut(), model.vocab, logits)
        };
        if let Some(sink) = logits_sink.as_deref_mut() {
            sink.write_step(logits)?;
        }
        let stop_at_eos = format != Format::Trace && !self.options.ignore_eos;
        let is_eos = model.config.is_eos(next);
        let top = top_k::<5>(logits);
        match format {
            Format::Trace => write_trace_line(model, pos, token, &top, out)?,
            Format::Jsonl => {
                write_json_step(model, pos, token, next, !from_prompt, &top, out)?;
                out.flush()?;
            }
            Format::Text => {
                let stopping = stop_at_eos && is_eos;
                if !from_prompt && !stopping {
                    let bytes = model.vocab.as_ref().and_then(|v| v.token(next)).unwrap_or(&[]);
                    self.stream.push(bytes, out)?;
                    out.flush()?;
                }
            }
        }
        if !from_prompt {
            self.generated += 1;
            if stop_at_eos && is_eos {
                return Ok(None);
            }
            // The mask lets only tokens that continue the object through; its close ends
            // the run.
            let bytes = model.vocab.and_then(|v| v.token(next)).unwrap_or(&[]);
            if self.json.as_mut().is_some_and(|json| json.closes(bytes)) {
                return Ok(None);
            }
            if format != Format::Trace && self.generated >= self.plan.max_new {
                return Ok(None);
            }
        }
        Ok(Some(next))
    }
}

/// A JSON number, or `null` for a non-finite logit (JSON has no NaN or infinity).
fn write_json_f32(v: f32, out: &mut dyn Write) -> io::Result<()> {
    if v.is_finite() {
        write!(out, "{v}")
    } else {
        write!(out, "null")
    }
}

/// A token's text as a JSON string (`null` without a vocabulary or bytes); bytes that
/// are not UTF-8 on their own (part of a character) become U+FFFD in `text`, and the
/// exact bytes are added as `"bytes": [...]` under `key_bytes`.
fn write_json_text(model: &Model, id: u32, key: &str, out: &mut dyn Write) -> io::Result<()> {
    match model.vocab.as_ref().and_then(|v| v.token(id)) {
        None => write!(out, "\"{key}\":null"),
        Some(bytes) => {
            write!(out, "\"{key}\":")?;
            match std::str::from_utf8(bytes) {
                Ok(s) => serde_json::to_writer(&mut *out, s).map_err(io::Error::other),
                Err(_) => {
                    serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes))
                        .map_err(io::Error::other)?;
                    write!(out, ",\"{key}_bytes\":[")?;
                    for (i, b) in bytes.iter().enumerate() {
                        write!(out, "{}{b}", if i > 0 { "," } else { "" })?;
                    }
                    write!(out, "]")
                }
            }
        }
    }
}

/// One position as a JSON object on one line.
fn write_json_step(
    model: &Model,
    pos: usize,
    token: u32,
    next: u32,
    generated: bool,
    top: &[(u32, f32)],
    out: &mut dyn Write,
) -> io::Result<()> {
    write!(out, "{{\"pos\":{pos},\"token\":{token},")?;
    write_json_text(model, token, "text", out)?;
    write!(out, ",\"next\":{next},")?;
    write_json_text(model, next, "next_text", out)?;
    write!(out, ",\"generated\":{generated},\"top_ids\":[")?;
    for (i, &(id, _)) in top.iter().enumerate() {
        write!(out, "{}{id}", if i > 0 { "," } else { "" })?;
    }
    write!(out, "],\"top_logits\":[")?;
    for (i, &(_, v)) in top.iter().enumerate() {
        if i > 0 {
            write!(out, ",")?;
        }
        write_json_f32(v, out)?;
    }
    writeln!(out, "]}}")
}
