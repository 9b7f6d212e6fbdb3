//! The `olmort` command line: a thin layer over the library that parses arguments,
//! reads prompts and reports errors as one line. One file per command.

pub mod chat;
pub mod generate_args;
pub mod load;
pub mod perplexity;
pub mod run;
pub mod serve;

use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::Model;

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

/// Starts the worker threads every forward pass runs on: `threads` of them (default,
/// or 0: one per CPU this process may use). More threads than CPUs is refused: the
/// team's helpers spin while they wait for work, so extra ones only take turns on the
/// same cores (100000 of them spun for minutes before thread creation failed).
pub fn start_threads(threads: Option<usize>) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match threads {
        None | Some(0) => cpus,
        Some(n) if n > cpus => {
            return Err(format!("--threads {n} is more than the {cpus} CPUs this process may use"));
        }
        Some(n) => n,
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| format!("cannot start {threads} threads: {e}"))
}

/// A blob mapped for a command; its errors name the file.
pub struct ModelFile {
    pub path: PathBuf,
    pub map: Arc<MappedFile>,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<ModelFile, String> {
        let map = MappedFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ModelFile { path: path.to_path_buf(), map: Arc::new(map) })
    }

    /// The blob's header and manifest, validated.
    pub fn blob(&self) -> Result<Blob<'_>, String> {
        Blob::parse(self.map.bytes()).map_err(|e| self.error(e))
    }

    /// The typed weight views of `blob` (this file's).
    pub fn model<'a>(&self, blob: &'a Blob<'a>) -> Result<Model<'a>, String> {
        Model::new(blob).map_err(|e| self.error(e))
    }

    /// `e` as one line naming the file.
    pub fn error(&self, e: impl Display) -> String {
        format!("{}: {e}", self.path.display())
    }
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
