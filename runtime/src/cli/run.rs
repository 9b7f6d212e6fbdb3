use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use olmort::generation::generate::{generate, plan};
use olmort::generation::trace::{run_trace, LogitsSink, NpyLogits, Timings};
use olmort::{KvDtype, RunState};

/// Runs an OLMo-2 blob: the prompt's tokens, then generation (greedy unless asked to
/// sample), printing each step's top-5 next tokens, running text or JSON lines.
#[derive(Parser)]
#[command(name = "olmort", version)]
struct Cli {
    /// The blob written by `olmoc pack`.
    model: PathBuf,
    /// Prompt as little-endian u32 token ids; `-` or absent reads standard input. An
    /// empty prompt is an error: generation needs a first token, and OLMo-2 has no
    /// beginning-of-sequence token to supply one.
    tokens: Option<PathBuf>,
    /// Positions to run (prompt tokens, then generated ones; default 20 for the trace
    /// format); 0 only opens and checks the model.
    #[arg(long)]
    steps: Option<usize>,
    /// Worker threads (default: one per CPU; at most that many).
    #[arg(long)]
    threads: Option<usize>,
    /// Write every step's logits to this .npy file, f32 of shape [steps, vocab].
    #[arg(long, value_name = "FILE.npy")]
    dump_logits: Option<PathBuf>,
    /// How the weights reach memory: prefetch (default: a thread faults them in ahead of
    /// the computation), lazy (on demand), none (no huge-page hint), populate or mlock
    /// (all of it before the first token). See docs/STARTUP.md.
    #[arg(long, value_name = "MODE", default_value = "prefetch")]
    load: super::load::LoadMode,
    /// What the KV cache stores: f32 or f16 (half the memory, and half of what
    /// attention reads every step at long contexts). Default: f32 for f32 weights, f16
    /// for bf16, f16 and q8_0 weights.
    #[arg(long, value_name = "DTYPE")]
    kv_cache: Option<KvDtype>,
    #[command(flatten)]
    generation: super::generate_args::GenerateArgs,
}

fn fail(msg: impl std::fmt::Display) -> String {
    msg.to_string()
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
    let file = super::ModelFile::open(&cli.model)?;
    let blob = file.blob()?;
    let model = file.model(&blob)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    if cli.steps == Some(0) {
        eprintln!("olmort: {}: ok ({load_ms:.2} ms to map and validate)", cli.model.display());
        return Ok(());
    }
    super::load::start(&file.map, &blob, cli.load).map_err(|e| format!("--load: {e}"))?;
    let prompt = cli.generation.read_prompt(&model, blob.manifest.chat.as_ref(), &cli.model, cli.tokens.as_ref())?;
    let seed_trace = cli.generation.is_seed_trace();
    let options = cli.generation.options(cli.steps, model.config.vocab_size)?;
    let generation_plan = if seed_trace {
        None
    } else {
        Some(plan(&model, prompt.len(), &options).map_err(fail)?)
    };
    let steps = match &generation_plan {
        Some(p) => p.positions,
        None => cli.steps.unwrap_or(olmort::generation::generate::DEFAULT_TRACE_STEPS),
    };
    olmort::generation::trace::check_request(&model, &prompt, steps).map_err(fail)?;

    super::start_threads(cli.threads)?;
    let mut dump = match &cli.dump_logits {
        Some(p) => {
            let file = File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let w = BufWriter::new(file);
            Some(
                NpyLogits::new(w, steps, model.config.vocab_size as usize)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let kv_cache = cli.kv_cache.unwrap_or_else(|| KvDtype::for_model(&model));
    let mut state = RunState::with_kv_cache(&model, steps, kv_cache).map_err(fail)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let sink = dump.as_mut().map(|d| d as &mut dyn LogitsSink);
    let timings = match generation_plan {
        None => run_trace(&model, &mut state, &prompt, steps, &mut out, sink),
        Some(plan) => generate(&model, &mut state, &prompt, &options, plan, &mut out, sink),
    }
    .map_err(fail)?;
    drop(out);
    super::generate_args::end_text(options.format);
    if let (Some(d), Some(p)) = (dump, &cli.dump_logits) {
        d.finish().map_err(|e| format!("{}: {e}", p.display()))?;
        let rows = timings.prompt_tokens + timings.generated_tokens;
        if rows < steps {
            super::generate_args::shrink_npy_rows(p, rows, model.config.vocab_size as usize)
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    print_timings(load_ms, &timings);
    Ok(())
}

/// `olmort MODEL.bin [TOKENS.bin] ...`: the seed's command and its generation options.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli: Cli = match super::parse_args("olmort", args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    super::exit(run(cli))
}
