//! olmort: runs OLMo-2 and OLMo-3 models from a blob packed by `olmoc`, mapped in place.
//!
//! ```text
//! let map = MappedFile::open(path)?;     // no copy
//! let blob = Blob::parse(map.bytes())?;  // header, manifest, every tensor entry checked
//! let model = Model::new(&blob)?;        // typed views, nothing converted
//! let mut state = RunState::new(&model, steps)?; // every buffer and the KV cache, once
//! forward(&model, &mut state, token, pos);
//! ```
//!
//! The tree by concern: [`model`] (weights, forward pass, run state), [`kernels`]
//! (matrix products and attention per instruction set), [`text`] (tokenizer,
//! detokenizer, chat templates), [`generation`] (sampling, the trace loop, generation,
//! chat sessions), [`eval`] (perplexity and the drift from a base model), [`sys`] (the
//! libc calls: local time, Ctrl-C). The `olmort` binary (`main.rs`, `cli/`) is a thin
//! layer over these.

pub mod eval;
pub mod generation;
pub mod kernels;
pub mod model;
pub mod server;
pub mod sys;
pub mod text;

pub use model::{
    forward, forward_batch, forward_batch_for, forward_batch_in, forward_chunks, forward_rows, kv_cache_bytes, kv_cache_positions, Chunk, KvDtype, LogitRows, Model, Row,
    RunState,
};

use olmo_format::FormatError;

/// Why a run failed; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The blob was refused.
    #[error("{0}")]
    Format(#[from] FormatError),
    /// The prompt's tokens are unusable.
    #[error("{0}")]
    Tokens(String),
    /// The request does not fit the model (e.g. more steps than positions).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The conversation could not become a prompt.
    #[error("{0}")]
    Chat(#[from] crate::text::chat_template::ChatError),
}
