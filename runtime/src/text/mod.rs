//! Text in and out: the tokenizer (`pretokenize` splits, `tokenizer` merges bytes into
//! ids), the detokenizer (token bytes as escaped one-line text or a UTF-8 stream), and
//! chat templates (`chat_template`: a conversation rendered and encoded as transformers
//! does; `python_values`: values written as Python writes them; `tool_calls`: the
//! calls a model writes, read back; `reasoning`: a reply's thinking apart from its answer; `reply`: both at once).

pub mod chat_template;
pub mod detokenize;
pub mod pretokenize;
pub mod python_values;
pub mod reasoning;
pub mod reply;
pub mod tokenizer;
pub mod tool_calls;
