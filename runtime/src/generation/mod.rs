//! From a prompt to new tokens: choosing each token ([`sampling`]), the seed's trace
//! loop ([`trace`]) and generation in text, JSON or trace form ([`generate`]).

pub mod generate;
pub mod sampling;
pub mod trace;
