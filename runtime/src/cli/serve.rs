//! `olmort serve MODEL.bin`: the OpenAI-compatible HTTP server (see `olmort::server`).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::generation::session::ChatFormat;
use olmort::server::http::HttpConfig;
use olmort::server::scheduler::SchedulerConfig;
use olmort::server::{serve, ServeOptions};
use olmort::text::tokenizer::Tokenizer;
use olmort::{KvDtype, Model};

/// Serves a blob over an OpenAI-compatible HTTP API: GET /health, /metrics, /v1/models;
/// POST /v1/completions, /v1/chat/completions (with tools, JSON formats and reasoning)
/// and /v1/responses, streamed or not; POST /tokenize and /detokenize. Up to
/// --parallel requests run at once, their tokens batched into one pass over the
/// weights per step.
#[derive(Parser)]
#[command(name = "olmort serve", version)]
struct Cli {
    /// The blob written by `olmoc pack`.
    model: PathBuf,
    /// Address to listen on (default: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests run at once, each in a KV slot of its own (allocated at start).
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Positions of each slot, prompt and reply together (default: the model's maximum).
    #[arg(long, value_name = "N")]
    ctx_size: Option<usize>,
    /// Prompt tokens run per step while other requests decode.
    #[arg(long, default_value_t = 64, value_name = "N")]
    prefill_chunk: usize,
    /// Requests that may wait for a slot; more get 503.
    #[arg(long, default_value_t = 64, value_name = "N")]
    queue: usize,
    /// Require `Authorization: Bearer KEY` (every route but /health).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The model name /v1/models lists (default: the blob's file name without .bin).
    #[arg(long, value_name = "NAME")]
    alias: Option<String>,
    /// Which of the blob's chat templates /v1/chat/completions uses (default: "default").
    #[arg(long, value_name = "NAME")]
    chat_template: Option<String>,
    /// Bytes of a request body at most; more get 413.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    max_body: usize,
    /// Connections served at once; more get 503.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_connections: usize,
    /// Seconds a client has to send its request.
    #[arg(long, default_value_t = 30, value_name = "S")]
    timeout: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// How the weights reach memory (see `olmort --help`).
    #[arg(long, value_name = "MODE", default_value = "prefetch")]
    load: super::load::LoadMode,
    /// What the KV cache stores: f32 or f16 (default: f32 for f32 weights, else f16).
    #[arg(long, value_name = "DTYPE")]
    kv_cache: Option<KvDtype>,
    /// Start each request from a free slot's cache where it holds the prompt's beginning
    /// (a chat's earlier turns), unless the request says `"cache_prompt": false`.
    #[arg(long)]
    cache_prompt: bool,
}

fn run(cli: Cli) -> Result<(), String> {
    let started = Instant::now();
    let where_ = |e: &dyn std::fmt::Display| format!("{}: {e}", cli.model.display());
    let map = Arc::new(MappedFile::open(&cli.model).map_err(|e| where_(&e))?);
    let blob = Blob::parse(map.bytes()).map_err(|e| where_(&e))?;
    let model = Model::new(&blob).map_err(|e| where_(&e))?;
    let max_positions = model.config.max_position_embeddings as usize;
    let context = cli.ctx_size.unwrap_or(max_positions);
    if context < 2 || context > max_positions {
        return Err(format!("--ctx-size {context} is not in 2..={max_positions} (the model's maximum sequence length)"));
    }
    if cli.parallel == 0 || cli.prefill_chunk == 0 {
        return Err("--parallel and --prefill-chunk must be at least 1".into());
    }
    // A blob without a chat template still serves /v1/completions.
    let chat = match ChatFormat::for_model(&model, blob.manifest.chat.as_ref(), cli.chat_template.as_deref()) {
        Ok(format) => Some(format),
        Err(e) if cli.chat_template.is_some() => return Err(where_(&e)),
        Err(_) => None,
    };
    let own_tokenizer = if chat.is_none() { model.vocab.map(Tokenizer::new) } else { None };
    let tokenizer = chat.as_ref().map(|c| c.tokenizer()).or(own_tokenizer.as_ref());
    super::load::start(&map, &blob, cli.load).map_err(|e| format!("--load: {e}"))?;
    super::start_threads(cli.threads)?;
    let listener = TcpListener::bind((cli.host.as_str(), cli.port)).map_err(|e| format!("cannot listen on {}:{}: {e}", cli.host, cli.port))?;
    let name = cli.alias.clone().unwrap_or_else(|| {
        cli.model.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    });
    let mut http = HttpConfig::new(name, context);
    http.api_key = cli.api_key.clone();
    http.max_body = cli.max_body;
    http.max_connections = cli.max_connections.max(1);
    http.request_timeout = Duration::from_secs(cli.timeout.max(1));
    http.cache_prompt = cli.cache_prompt;
    let options = ServeOptions {
        scheduler: SchedulerConfig { slots: cli.parallel, context, prefill_chunk: cli.prefill_chunk, queue: cli.queue },
        http,
        kv: cli.kv_cache.unwrap_or_else(|| KvDtype::for_model(&model)),
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "olmort: serving {} on http://{addr} ({} slots of {context} positions, {} kv cache{}) after {:.0} ms",
        cli.model.display(),
        cli.parallel,
        match options.kv {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        },
        if chat.is_some() { ", chat template" } else { ", no chat template" },
        started.elapsed().as_secs_f64() * 1e3
    );
    serve(&model, chat.as_ref(), tokenizer, &options, &listener, |_| {}).map_err(|e| e.to_string())
}

/// `olmort serve MODEL.bin [--host H] [--port P] [--parallel N] [--api-key KEY] ...`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args: Vec<OsString> = std::iter::once(OsString::from("olmort serve")).chain(args.into_iter().skip(2)).collect();
    let cli: Cli = match super::parse_args("olmort serve", args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    super::exit(run(cli))
}
