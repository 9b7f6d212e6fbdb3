//! `olmort`: runs a blob. `olmort MODEL.bin [TOKENS.bin] ...` is the seed's command
//! (trace lines, text, JSON lines); a first argument naming a subcommand runs that
//! instead (`olmort chat MODEL.bin`). Everything is in the library; `cli/` only parses
//! and reports.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("chat") => cli::chat::main(args),
        Some("perplexity") => cli::perplexity::main(args[1..].to_vec()),
        Some("serve") => cli::serve::main(args),
        _ => cli::run::main(args),
    }
}
