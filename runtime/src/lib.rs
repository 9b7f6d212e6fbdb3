//! olmort: runs OLMo-2 models from a blob packed by `olmoc`, mapped in place.
//!
//! ```text
//! let map = MappedFile::open(path)?;     // no copy
//! let blob = Blob::parse(map.bytes())?;  // header, manifest, every tensor entry checked
//! let model = Model::new(&blob)?;        // typed views, nothing converted
//! let mut state = RunState::new(&model, steps)?; // every buffer and the KV cache, once
//! forward(&model, &mut state, token, pos);
//! ```

pub mod buffer;
pub mod forward;
pub mod generate;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod sampling;
pub mod team;
pub mod pretokenize;
pub mod text;
pub mod tokenizer;
pub mod trace;

pub use forward::{forward, forward_batch, forward_batch_for, KvDtype, LogitRows, RunState};
pub use model::Model;

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
}
