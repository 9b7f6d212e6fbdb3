//! From a prompt to new tokens: choosing each token ([`sampling`]; in JSON mode only
//! among those that continue a JSON object, [`json`] and [`json_schema`], or a call
//! block of the functions of [`tools`], [`call_grammar`]; which of these holds a chat
//! reply and how it is read, [`reply_format`]) and what it was worth ([`logprobs`]),
//! the seed's trace loop ([`trace`]), generation in text, JSON or trace form
//! ([`generate`]), and multi-turn chat on a kept KV cache ([`session`]).

pub mod call_grammar;
pub mod generate;
pub mod json;
pub mod json_schema;
pub mod logprobs;
pub mod reply_format;
pub mod sampling;
pub mod session;
pub mod stop;
pub mod tools;
pub mod trace;
