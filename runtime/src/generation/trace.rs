//! The seed program's loop: at position `i` feed the prompt's token `i` while there is
//! one, then the previous step's argmax; print each step's top-5 next tokens.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::model::forward::{forward, forward_batch, RunState};
use crate::model::Model;
use crate::model::ops::top_k;
use crate::text::detokenize::Escaped;
use crate::RunError;

/// Little-endian u32 token ids.
pub fn parse_tokens(bytes: &[u8]) -> Result<Vec<u32>, RunError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(RunError::Tokens(format!(
            "{} bytes is not a whole number of 4-byte little-endian token ids",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Checks a prompt and a step count against the model before anything runs.
pub fn check_request(model: &Model, prompt: &[u32], steps: usize) -> Result<(), RunError> {
    let c = model.config;
    if prompt.is_empty() {
        return Err(RunError::Tokens(
            "the prompt has no tokens: nothing to start from".into(),
        ));
    }
    if let Some((i, id)) = prompt.iter().enumerate().find(|(_, &id)| id >= c.vocab_size) {
        return Err(RunError::Tokens(format!(
            "token id {id} at prompt position {i} is outside the vocabulary (vocab_size {})",
            c.vocab_size
        )));
    }
    if steps > c.max_position_embeddings as usize {
        return Err(RunError::Usage(format!(
            "{steps} steps is more than the model's maximum sequence length of {}",
            c.max_position_embeddings
        )));
    }
    Ok(())
}

/// Wall time spent in the forward pass (and top-k), split by phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub prompt: Duration,
    pub prompt_tokens: usize,
    pub generation: Duration,
    pub generated_tokens: usize,
}

/// Where each step's full logits go (`--dump-logits`).
pub trait LogitsSink {
    fn write_step(&mut self, logits: &[f32]) -> io::Result<()>;
}

/// Runs `steps` positions, writing one trace line per step to `out`.
pub fn run_trace(
    model: &Model,
    state: &mut RunState,
    prompt: &[u32],
    steps: usize,
    out: &mut dyn Write,
    mut logits_sink: Option<&mut dyn LogitsSink>,
) -> Result<Timings, RunError> {
    check_request(model, prompt, steps)?;
    let mut timings = Timings::default();
    let vocab = model.config.vocab_size as usize;
    // The prompt goes through in batches: one pass over the weights per batch.
    let prompt_steps = prompt.len().min(steps);
    let mut token = prompt[0];
    let mut pos = 0;
    while pos < prompt_steps {
        let n = (prompt_steps - pos).min(state.max_batch());
        let chunk = &prompt[pos..pos + n];
        let started = Instant::now();
        let logits = forward_batch(model, state, chunk, pos);
        let tops: Vec<[(u32, f32); 5]> = logits.par_chunks_exact(vocab).map(top_k::<5>).collect();
        timings.prompt += started.elapsed();
        timings.prompt_tokens += n;
        for (i, (&t, top)) in chunk.iter().zip(&tops).enumerate() {
            if let Some(sink) = logits_sink.as_deref_mut() {
                sink.write_step(&logits[i * vocab..][..vocab])?;
            }
            write_trace_line(model, pos + i, t, top, out)?;
            token = top[0].0;
        }
        pos += n;
    }
    for pos in prompt_steps..steps {
        let started = Instant::now();
        let logits = forward(model, state, token, pos);
        let top = top_k::<5>(logits);
        timings.generation += started.elapsed();
        timings.generated_tokens += 1;
        if let Some(sink) = logits_sink.as_deref_mut() {
            sink.write_step(logits)?;
        }
        write_trace_line(model, pos, token, &top, out)?;
        token = top[0].0;
    }
    out.flush()?;
    Ok(timings)
}

/// One trace line: the position, the token fed there and the top-5 next tokens.
pub(crate) fn write_trace_line(
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

/// Streams logits into a `.npy` file of shape `[steps, vocab]`, f32.
pub struct NpyLogits<W: Write> {
    out: W,
}

impl<W: Write> NpyLogits<W> {
    pub fn new(mut out: W, steps: usize, vocab: usize) -> io::Result<NpyLogits<W>> {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({steps}, {vocab}), }}");
        // Magic (6) + version (2) + length (2) + dict + padding + '\n', a multiple of 64.
        let unpadded = 10 + dict.len() + 1;
        let padding = unpadded.div_ceil(64) * 64 - unpadded;
        let header_len = (dict.len() + padding + 1) as u16;
        out.write_all(b"\x93NUMPY\x01\x00")?;
        out.write_all(&header_len.to_le_bytes())?;
        out.write_all(dict.as_bytes())?;
        out.write_all(&vec![b' '; padding])?;
        out.write_all(b"\n")?;
        Ok(NpyLogits { out })
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> LogitsSink for NpyLogits<W> {
    fn write_step(&mut self, logits: &[f32]) -> io::Result<()> {
        for v in logits {
            self.out.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }
}
