//! Text in and out: the tokenizer (`pretokenize` splits, `tokenizer` merges bytes into
//! ids) and the detokenizer (token bytes as escaped one-line text or a UTF-8 stream).

pub mod detokenize;
pub mod pretokenize;
pub mod tokenizer;
