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
use std::time::Instant;

use crate::forward::{forward, RunState};
use crate::model::Model;
use crate::ops::top_k;
use crate::sampling::{Sampler, SamplingParams};
use crate::text::{Escaped, Utf8Stream};
use crate::trace::{LogitsSink, Timings};
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

/// Runs the plan: the prompt, then new tokens, each step written to `out` in `format`.
/// `tokens` must already be checked against the vocabulary (`trace::check_request`).
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
    let eos = model.config.eos_token_id;
    let stop_at_eos = options.format != Format::Trace && !options.ignore_eos;
    let mut sampler = Sampler::new(options.sampling, model.config.vocab_size as usize);
    let mut timings = Timings::default();
    let mut stream = Utf8Stream::new();
    let token_bytes = |id: u32| model.vocab.as_ref().and_then(|v| v.token(id));

    if options.format == Format::Text {
        for &id in prompt {
            stream.push(token_bytes(id).unwrap_or(&[]), out)?;
        }
        out.flush()?;
    }
    let mut token = prompt[0];
    let mut generated = 0usize;
    for pos in 0..plan.positions {
        let started = Instant::now();
        let logits = forward(model, state, token, pos);
        let from_prompt = pos + 1 < prompt.len();
        let next = if from_prompt {
            prompt[pos + 1]
        } else {
            sampler.sample(logits)
        };
        let top = top_k::<5>(logits);
        let spent = started.elapsed();
        if pos < prompt.len() {
            timings.prompt += spent;
            timings.prompt_tokens += 1;
        } else {
            timings.generation += spent;
            timings.generated_tokens += 1;
        }
        if let Some(sink) = logits_sink.as_deref_mut() {
            sink.write_step(logits)?;
        }
        let is_eos = Some(next) == eos;
        match options.format {
            Format::Trace => write_trace_line(model, pos, token, &top, out)?,
            Format::Jsonl => {
                write_json_step(model, pos, token, next, !from_prompt, &top, out)?;
                out.flush()?;
            }
            Format::Text => {
                if !from_prompt && !(stop_at_eos && is_eos) {
                    stream.push(token_bytes(next).unwrap_or(&[]), out)?;
                    out.flush()?;
                }
            }
        }
        if !from_prompt {
            generated += 1;
            if stop_at_eos && is_eos {
                break;
            }
            if options.format != Format::Trace && generated >= plan.max_new {
                break;
            }
        }
        token = next;
    }
    if options.format == Format::Text {
        stream.finish(out)?;
    }
    out.flush()?;
    Ok(timings)
}

/// The seed's trace line for one position.
fn write_trace_line(
    model: &Model,
    pos: usize,
    token: u32,
    top: &[(u32, f32)],
    out: &mut dyn Write,
) -> io::Result<()> {
    write!(out, "{pos}: token ")?;
    write_token(model, token, out)?;
    write!(out, " Top 5 next tokens:")?;
    for &(id, _) in top {
        write!(out, " ")?;
        write_token(model, id, out)?;
    }
    writeln!(out)
}

/// `ID ("text")` with a vocabulary, `ID` without one.
fn write_token(model: &Model, id: u32, out: &mut dyn Write) -> io::Result<()> {
    match model.vocab.as_ref().and_then(|v| v.token(id)) {
        Some(bytes) => write!(out, "{id} (\"{}\")", Escaped(bytes)),
        None => write!(out, "{id}"),
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
