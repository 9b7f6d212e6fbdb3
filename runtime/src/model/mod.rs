//! The model and its forward pass: typed views of the weights in a blob
//! ([`weights`]), the buffers and KV cache a pass writes ([`forward::RunState`]), the
//! pass itself ([`forward`]), its element-wise operations ([`ops`]), and the threads
//! it runs on ([`team`]). The matrix products live in [`crate::kernels`].

pub mod buffer;
pub mod forward;
pub mod ops;
pub mod team;
pub mod weights;

pub use forward::{forward, forward_batch, forward_batch_for, forward_batch_in, forward_chunks, forward_rows, Chunk, kv_cache_bytes, kv_cache_positions, KvDtype, LogitRows, Row, RunState};
pub use weights::{LayerWeights, Model};
