use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::trace::{parse_tokens, run_trace, LogitsSink, NpyLogits, Timings};
use olmort::{Model, RunState};

/// Runs an OLMo-2 blob: the prompt's tokens, then greedy generation, printing each
/// step's top-5 next tokens.
#[derive(Parser)]
#[command(name = "olmort", version)]
struct Cli {
    /// The blob written by `olmoc pack`.
    model: PathBuf,
    /// Prompt as little-endian u32 token ids; `-` or absent reads standard input.
    tokens: Option<PathBuf>,
    /// Positions to run (prompt tokens, then generated ones); 0 only opens and checks the model.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write every step's logits to this .npy file, f32 of shape [steps, vocab].
    #[arg(long, value_name = "FILE.npy")]
    dump_logits: Option<PathBuf>,
}

fn fail(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

fn read_prompt(path: &Option<PathBuf>) -> Result<Vec<u32>, String> {
    let mut bytes = Vec::new();
    match path {
        Some(p) if p.as_os_str() != "-" => {
            File::open(p)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        _ => {
            io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("standard input: {e}"))?;
        }
    }
    let name = path.as_ref().map_or("standard input".into(), |p| p.display().to_string());
    parse_tokens(&bytes).map_err(|e| format!("{name}: {e}"))
}

fn print_timings(load_ms: f64, t: &Timings) {
    let line = |what: &str, d: std::time::Duration, n: usize| {
        let ms = d.as_secs_f64() * 1e3;
        eprintln!(
            "olmort: {what:>10} = {ms:10.2} ms / {n:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)",
            ms / n.max(1) as f64,
            if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 }
        );
    };
    eprintln!("olmort: {:>10} = {load_ms:10.2} ms (map + validate)", "load");
    line("prompt", t.prompt, t.prompt_tokens);
    line("generation", t.generation, t.generated_tokens);
}

fn run(cli: Cli) -> Result<(), String> {
    let started = Instant::now();
    let where_ = |e: &dyn std::fmt::Display| format!("{}: {e}", cli.model.display());
    let map = MappedFile::open(&cli.model).map_err(|e| where_(&e))?;
    let blob = Blob::parse(map.bytes()).map_err(|e| where_(&e))?;
    let model = Model::new(&blob).map_err(|e| where_(&e))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    if cli.steps == 0 {
        eprintln!("olmort: {}: ok ({load_ms:.2} ms to map and validate)", cli.model.display());
        return Ok(());
    }
    let prompt = read_prompt(&cli.tokens)?;
    olmort::trace::check_request(&model, &prompt, cli.steps).map_err(fail)?;

    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .build_global()
        .map_err(fail)?;
    let mut dump = match &cli.dump_logits {
        Some(p) => {
            let file = File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let w = BufWriter::new(file);
            Some(
                NpyLogits::new(w, cli.steps, model.config.vocab_size as usize)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let mut state = RunState::new(&model, cli.steps);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let timings = run_trace(
        &model,
        &mut state,
        &prompt,
        cli.steps,
        &mut out,
        dump.as_mut().map(|d| d as &mut dyn LogitsSink),
    )
    .map_err(fail)?;
    if let (Some(d), Some(p)) = (dump, &cli.dump_logits) {
        d.finish().map_err(|e| format!("{}: {e}", p.display()))?;
    }
    print_timings(load_ms, &timings);
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("olmort: {e}");
            ExitCode::FAILURE
        }
    }
}
