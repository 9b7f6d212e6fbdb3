//! Measuring a model rather than running it: [`perplexity`] scores a text in windows
//! and, against a base model on the same tokens, measures how far the next-token
//! distributions drift (what a quantized blob loses against its f32 original).

pub mod perplexity;
