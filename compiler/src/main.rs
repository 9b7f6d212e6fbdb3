use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use olmo_format::mapped::MappedFile;
use olmo_format::{Blob, DType};
use olmoc::{PackError, PackOptions};

/// Compiles OLMo-2 weights into one blob that olmort maps and runs.
#[derive(Parser)]
#[command(name = "olmoc", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a folder of per-tensor .npy files (+ config.json, vocab.txt) into a blob.
    Pack {
        /// Folder with one NAME.npy per tensor, named as the Hugging Face parameters.
        weights: PathBuf,
        /// The blob to write (replaced atomically).
        out: PathBuf,
        /// Storage type of the weight matrices: f32, bf16, f16, q8_0, q4_0 or q4_k.
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
        /// Storage type of the embedding table (default: q8_0 with a 4-bit --dtype, else --dtype).
        #[arg(long, value_parser = parse_dtype)]
        embed_dtype: Option<DType>,
        /// Storage type of lm_head (default: --dtype).
        #[arg(long, value_parser = parse_dtype)]
        head_dtype: Option<DType>,
    },
    /// Print a blob's header, config and tensor table.
    Inspect { blob: PathBuf },
    /// Check every tensor's bytes against the checksums in the manifest.
    Verify { blob: PathBuf },
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::from_name(s)
        .filter(|d| d.is_weight_type())
        .ok_or_else(|| format!("{s:?} is not one of f32, bf16, f16, q8_0, q4_0, q4_k"))
}

fn with_blob<T>(path: &Path, f: impl FnOnce(&Blob) -> Result<T, PackError>) -> Result<T, PackError> {
    let map = MappedFile::open(path)
        .map_err(|e| PackError::Input(format!("{}: {e}", path.display())))?;
    let blob = Blob::parse(map.bytes())
        .map_err(|e| PackError::Input(format!("{}: {e}", path.display())))?;
    f(&blob)
}

fn run(cli: Cli) -> Result<(), PackError> {
    match cli.command {
        Command::Pack { weights, out, dtype, embed_dtype, head_dtype } => {
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let options = PackOptions { dtype, embed_dtype, head_dtype, progress };
            let s = olmoc::pack(&weights, &out, &options)?;
            eprintln!(
                "packed {} tensors ({} layers, vocab {}) as {}: {:.1} MiB in {:.2} s -> {}",
                s.tensors,
                s.config.num_hidden_layers,
                s.vocab_tokens.map_or("ids only".to_string(), |n| format!("{n} tokens")),
                s.dtype,
                s.bytes as f64 / (1 << 20) as f64,
                s.seconds,
                out.display()
            );
            Ok(())
        }
        Command::Inspect { blob } => with_blob(&blob, |b| {
            print!("{}", olmoc::inspect::describe(b));
            Ok(())
        }),
        Command::Verify { blob } => with_blob(&blob, |b| {
            let n = olmoc::inspect::verify(b)?;
            println!("{}: {n} tensors, all checksums match", blob.display());
            Ok(())
        }),
    }
}

/// Command-line errors as one line (`--help` and `--version` print as usual).
fn parse_cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
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
        eprintln!("olmoc: {message} (see olmoc --help)");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("olmoc: {e}");
            ExitCode::FAILURE
        }
    }
}
