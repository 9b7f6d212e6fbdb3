//! The `olmort` command line: a thin layer over the library that parses arguments,
//! reads prompts and reports errors as one line. One file per command.

pub mod chat;
pub mod generate_args;
pub mod load;
pub mod run;

use std::ffi::OsString;
use std::fmt::Display;
use std::process::ExitCode;

use clap::Parser;

/// Parses `args` (the program name first) into `T`; a command-line error is one line on
/// stderr, `olmort: MESSAGE (see COMMAND --help)`, and exit code 2 (`--help` and
/// `--version` print as usual and exit 0).
pub fn parse_args<T: Parser>(command: &str, args: Vec<OsString>) -> Result<T, ExitCode> {
    T::try_parse_from(args).map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // The message is the first paragraph; tips and usage follow a blank line.
        let text = e.to_string();
        let message: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
        let message = message.join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        eprintln!("olmort: {message} (see {command} --help)");
        ExitCode::from(2)
    })
}

/// A command's result as the process's exit: an error is one line on stderr.
pub fn exit(result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("olmort: {e}");
            ExitCode::FAILURE
        }
    }
}
