//! The olmo blob: one file holding a model's configuration, tensor table, vocabulary and
//! weights, laid out so a runtime can map it and read the weights in place.
//!
//! The byte-level layout is written down in `FORMAT.md` beside this crate. In short:
//!
//! ```text
//! [0, 64)                      header: magic, version, region offsets, checksums
//! [64, 64 + manifest_len)      manifest: bincode (fixed-width little-endian ints)
//! [data_offset, file end)      data: tensors, each at a 64-byte aligned offset
//! ```
//!
//! [`Blob::parse`] validates everything a reader relies on (header, manifest checksum,
//! configuration, every tensor entry) without touching tensor data, and only then hands
//! out slices. [`writer::BlobPlan`] is the one way blobs are produced.

mod config;
mod dtype;
mod error;
mod header;
mod manifest;
mod names;
pub mod q4;
pub mod vocab;
pub mod writer;

pub use config::{AttentionType, ModelConfig, Rope, RopeScaling};
pub use dtype::{DType, Layout, PANEL_COLS, Q8_0_BLOCK};
pub use error::FormatError;
pub use header::{Header, DATA_ALIGN, FORMAT_VERSION, HEADER_LEN, MAGIC, TENSOR_ALIGN};
pub use manifest::{ChatInfo, ChatTemplate, Manifest, SpecialTokenString, TensorEntry, VocabInfo};
pub use names::{
    LayerNames, TensorRole, EMBED_TOKENS, FINAL_NORM, LM_HEAD, VOCAB_BYTES, VOCAB_OFFSETS,
};

pub mod mapped;
pub mod sample;
mod blob;
pub use blob::{Blob, TensorView};
