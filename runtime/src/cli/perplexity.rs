use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use olmort::eval::perplexity::{measure, windows, Perplexity, Runner};
use olmort::text::tokenizer::Tokenizer;
use olmort::{KvDtype, RunState};

/// Perplexity of a model over a text file and, with --kl-base, how far its next-token
/// distributions are from a base model's on the same tokens (mean and 99th-percentile
/// KL divergence, top-1 agreement, RMS of the next token's probability difference).
///
/// Windows: the text's tokens are cut into windows of --context tokens starting every
/// --stride tokens; each runs from an empty cache and scores the tokens it adds (those
/// past the previous window's end), each from the tokens before it in the window. A
/// window's first token is never scored there. This is Hugging Face's sliding-window
/// perplexity; --stride = --context / 2 (the default) gives every token after the
/// first window at least --context / 2 tokens of context, as llama-perplexity's chunks
/// (which score only their second halves) do.
#[derive(Parser)]
#[command(name = "olmort perplexity", bin_name = "olmort perplexity", version)]
struct Cli {
    /// The blob to measure.
    model: PathBuf,
    /// UTF-8 text (`-`: standard input), encoded with the model's vocabulary as
    /// ordinary text.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Tokens per window (default: 512, or the model's maximum sequence length if that
    /// is shorter).
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    /// Tokens between window starts, 1 to --context (default: --context / 2).
    #[arg(long, value_name = "N")]
    stride: Option<usize>,
    /// A blob of the same model to measure against (e.g. its f32 pack), run on the
    /// same tokens.
    #[arg(long, value_name = "BASE.bin")]
    kl_base: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// The summary line as text or as one JSON object.
    #[arg(long, value_enum, default_value = "text")]
    format: Summary,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Summary {
    Text,
    Json,
}

const DEFAULT_CONTEXT: usize = 512;

fn run(cli: Cli) -> Result<(), String> {
    let started = Instant::now();
    let file = super::ModelFile::open(&cli.model)?;
    let blob = file.blob()?;
    let model = file.model(&blob)?;
    let base_file = cli.kl_base.as_deref().map(super::ModelFile::open).transpose()?;
    let base_blob = base_file.as_ref().map(|f| f.blob()).transpose()?;
    let base_model = match (&base_file, &base_blob) {
        (Some(f), Some(b)) => Some(f.model(b)?),
        _ => None,
    };

    let (_, text) = super::generate_args::read_text_file(&cli.text)?;
    let vocab = model.vocab.ok_or_else(|| {
        format!("{}: no vocabulary in this model to encode the text with", cli.model.display())
    })?;
    let tokens = Tokenizer::new(vocab).encode(&text, false).map_err(|e| e.to_string())?;
    let max_positions = model.config.max_position_embeddings as usize;
    let context = cli.context.unwrap_or(DEFAULT_CONTEXT.min(max_positions));
    if context > max_positions {
        return Err(format!("--context {context} is more than the model's {max_positions} positions"));
    }
    if let (Some(b), Some(p)) = (&base_model, &cli.kl_base) {
        let base_positions = b.config.max_position_embeddings as usize;
        if context > base_positions {
            return Err(format!("{}: --context {context} is more than its {base_positions} positions", p.display()));
        }
    }
    let stride = cli.stride.unwrap_or((context / 2).max(1));
    let windows = windows(tokens.len(), context, stride).map_err(|e| e.to_string())?;

    super::start_threads(cli.threads)?;
    let mut state = RunState::with_kv_cache(&model, context, KvDtype::for_model(&model)).map_err(|e| e.to_string())?;
    let mut base_state = match &base_model {
        Some(b) => Some(RunState::with_kv_cache(b, context, KvDtype::for_model(b)).map_err(|e| e.to_string())?),
        None => None,
    };
    let base = match (&base_model, base_state.as_mut()) {
        (Some(model), Some(state)) => Some(Runner { model, state }),
        _ => None,
    };

    let terminal = io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if terminal {
            let seconds = started.elapsed().as_secs_f64();
            eprint!("\rolmort: perplexity: {done}/{total} tokens ({:.1}%), {seconds:.1} s", 100.0 * done as f64 / total.max(1) as f64);
        }
    };
    let result = measure(Runner { model: &model, state: &mut state }, base, &tokens, &windows, &mut progress)
        .map_err(|e| e.to_string());
    if terminal {
        eprintln!();
    }
    let result = result?;
    let line = match cli.format {
        Summary::Text => text_summary(&result, context, stride),
        Summary::Json => json_summary(&result, context, stride).to_string(),
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| format!("standard output: {e}"))?;
    eprintln!("olmort: {} tokens scored in {:.2} s", result.tokens, started.elapsed().as_secs_f64());
    Ok(())
}

fn text_summary(r: &Perplexity, context: usize, stride: usize) -> String {
    let mut line = format!(
        "perplexity {:.4} (nll {:.5}) over {} tokens, {} windows of {context} (stride {stride})",
        r.perplexity(),
        r.nll,
        r.tokens,
        r.windows
    );
    if let Some(d) = &r.drift {
        line += &format!(
            "; base perplexity {:.4}; KL mean {:.6}, p99 {:.6}, max {:.6}; top-1 agreement {:.2}%; RMS dp {:.3}%",
            d.base_nll.exp(),
            d.kl_mean,
            d.kl_p99,
            d.kl_max,
            100.0 * d.top1_agreement,
            100.0 * d.rms_delta_p
        );
    }
    line
}

fn json_summary(r: &Perplexity, context: usize, stride: usize) -> serde_json::Value {
    let mut v = serde_json::json!({
        "tokens": r.tokens,
        "windows": r.windows,
        "context": context,
        "stride": stride,
        "nll": r.nll,
        "perplexity": r.perplexity(),
    });
    if let Some(d) = &r.drift {
        v["base"] = serde_json::json!({
            "nll": d.base_nll,
            "perplexity": d.base_nll.exp(),
            "kl_mean": d.kl_mean,
            "kl_p99": d.kl_p99,
            "kl_max": d.kl_max,
            "top1_agreement": d.top1_agreement,
            "rms_delta_p": d.rms_delta_p,
        });
    }
    v
}

/// `olmort perplexity MODEL.bin --text FILE ...`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli: Cli = match super::parse_args("olmort perplexity", args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    super::exit(run(cli))
}
