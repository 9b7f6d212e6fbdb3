//! The `olmort` command line: a thin layer over the library that parses arguments,
//! reads prompts and reports errors as one line.

pub mod generate_args;
pub mod load;
