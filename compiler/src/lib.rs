//! olmoc: compiles an OLMo-2 or OLMo-3 checkpoint into one blob that `olmort` maps and runs as is.

pub mod chat_config;
pub mod checkpoint;
pub mod convert;
pub mod hf_config;
pub mod hf_rope;
pub mod inspect;
pub mod npy;
pub mod output;
pub mod pack;
pub mod progress;
pub mod quantize;
pub mod safetensors;
pub mod tokenizer_json;

pub use pack::{pack, PackOptions, PackSummary};

use olmo_format::FormatError;

/// Why a command failed. Each message is one line naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Something in the input checkpoint or blob is missing or wrong.
    #[error("{0}")]
    Input(String),
    /// The output could not be written.
    #[error("cannot write {0}")]
    Output(String),
    /// A blob was refused by the format's validation.
    #[error("{0}")]
    Format(FormatError),
}
