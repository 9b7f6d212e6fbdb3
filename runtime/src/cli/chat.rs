//! `olmort chat MODEL.bin`: a conversation in the terminal. Each line of standard input
//! is a user message; the reply is streamed to standard output as it is produced and
//! ends with a line break; prompts and status lines go to standard error, so the chat
//! can be driven through a pipe (one turn per line). A thinking model's reasoning (its
//! `<think>` text) goes to standard error, dimmed on a terminal, and only its answer to
//! standard output. `/reset` forgets the turns, `/exit` (or the end of input) ends the
//! chat. Ctrl-C stops the reply, not the chat.

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use olmort::generation::session::{ChatFormat, ChatOptions, ChatSession, Conversation, StopReason, TurnStats};
use olmort::sys::Interrupts;
use olmort::text::chat_template::Message;
use olmort::text::detokenize::Utf8Stream;
use olmort::text::reasoning::{prompt_opens_thinking, ThinkSplitter};
use olmort::{KvDtype, RunState};

/// Chats with an instruction-tuned model through the chat template packed in its blob.
/// Type a message and press Enter; /reset forgets the conversation, /exit (or Ctrl-D)
/// ends it, Ctrl-C stops a reply. With standard input piped, each line is one turn.
#[derive(Parser)]
#[command(name = "olmort chat", version)]
struct Cli {
    /// The blob written by `olmoc pack` (from a folder with a chat template).
    model: PathBuf,
    /// A system message that starts the conversation (kept by /reset).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Which of the model's chat templates to use (default: "default").
    #[arg(long, value_name = "NAME")]
    chat_template: Option<String>,
    /// New tokens per reply at most (default: until an end-of-sequence token or the end
    /// of the context).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Positions of the KV cache: the conversation's context (default: the model's
    /// maximum). When it fills, the oldest turns are dropped.
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// How the weights reach memory (see `olmort --help`).
    #[arg(long, value_name = "MODE", default_value = "prefetch")]
    load: super::load::LoadMode,
    /// What the KV cache stores: f32 or f16 (default: f32 for f32 weights, else f16).
    #[arg(long, value_name = "DTYPE")]
    kv_cache: Option<KvDtype>,
    #[command(flatten)]
    sampling: super::generate_args::SamplingArgs,
}

/// `prompt N tokens (R reused, P run in T ms), reply G tokens in T ms (X tokens/s)`.
fn status(stats: &TurnStats) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rate = if stats.generation_time.is_zero() { 0.0 } else { stats.generated as f64 / stats.generation_time.as_secs_f64() };
    format!(
        "olmort: prompt {} tokens ({} reused, {} run in {:.1} ms), reply {} tokens in {:.1} ms ({rate:.1} tokens/s)",
        stats.prompt_tokens,
        stats.reused,
        stats.prefilled,
        ms(stats.prefill_time),
        stats.generated,
        ms(stats.generation_time),
    )
}

fn run(cli: Cli) -> Result<(), String> {
    let started = Instant::now();
    let file = super::ModelFile::open(&cli.model)?;
    let blob = file.blob()?;
    let model = file.model(&blob)?;
    let format = ChatFormat::for_model(&model, blob.manifest.chat.as_ref(), cli.chat_template.as_deref()).map_err(|e| file.error(e))?;
    let max_positions = model.config.max_position_embeddings as usize;
    let context = cli.context.unwrap_or(max_positions);
    if context == 0 || context > max_positions {
        return Err(format!("--context {context} is not in 1..={max_positions} (the model's maximum sequence length)"));
    }
    if cli.max_tokens == Some(0) {
        return Err("--max-tokens 0 leaves no room for a reply".into());
    }
    let options = ChatOptions { sampling: cli.sampling.params()?, max_tokens: cli.max_tokens };
    super::load::start(&file.map, &blob, cli.load).map_err(|e| format!("--load: {e}"))?;
    super::start_threads(cli.threads)?;
    let kv_cache = cli.kv_cache.unwrap_or_else(|| KvDtype::for_model(&model));
    let state = RunState::with_kv_cache(&model, context, kv_cache).map_err(|e| e.to_string())?;
    let interrupts = Interrupts::install()?;
    let conversation = Conversation::new(cli.system.as_deref());
    let mut session = ChatSession::new(&model, state, format, conversation, options);
    let interactive = io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "olmort: {} ready in {:.0} ms, template {:?}, context {context}; /reset forgets the conversation, /exit ends it, Ctrl-C stops a reply",
            cli.model.display(),
            started.elapsed().as_secs_f64() * 1e3,
            session.format().template().name(),
        );
    }
    let stdin = io::stdin();
    let mut lines = stdin.lock();
    let mut line = Vec::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        if lines.read_until(b'\n', &mut line).map_err(|e| format!("standard input: {e}"))? == 0 {
            if interactive {
                eprintln!();
            }
            return Ok(());
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            eprintln!("olmort: that line is not UTF-8 text; nothing was sent");
            continue;
        };
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        match text.trim() {
            "" if interactive => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                session.reset();
                eprintln!("olmort: the conversation is reset");
                continue;
            }
            command if command.starts_with('/') && !command.contains(char::is_whitespace) => {
                eprintln!("olmort: unknown command {command} (/reset, /exit)");
                continue;
            }
            _ => {}
        }
        turn(&mut session, &interrupts, text, context)?;
    }
}

/// One message and its streamed reply; a refused message is reported and the chat goes on.
fn turn(session: &mut ChatSession, interrupts: &Interrupts, text: &str, context: usize) -> Result<(), String> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut stream = Utf8Stream::new();
    let mut reply = Reply { think: thinking(session, text).map(ThinkSplitter::new), piece: Vec::new(), dim: io::stderr().is_terminal() };
    interrupts.catch(true);
    let result = session.send(text, interrupts.flag(), &mut |_, bytes| {
        reply.piece.clear();
        stream.push(bytes, &mut reply.piece)?;
        reply.write(&mut out)
    });
    interrupts.catch(false);
    reply.piece.clear();
    let written = stream.finish(&mut reply.piece).and_then(|()| reply.end(&mut out)).and_then(|()| writeln!(out)).and_then(|()| out.flush());
    let stats = match result {
        Ok(stats) => stats,
        Err(olmort::RunError::Io(e)) => return Err(format!("standard output: {e}")),
        Err(e) => {
            eprintln!("olmort: {e}");
            return Ok(());
        }
    };
    written.map_err(|e| format!("standard output: {e}"))?;
    if stats.dropped_messages > 0 {
        eprintln!(
            "olmort: the context of {context} positions was full: dropped the oldest {} message{}",
            stats.dropped_messages,
            if stats.dropped_messages == 1 { "" } else { "s" }
        );
    }
    match stats.stop {
        StopReason::Interrupted => eprintln!("olmort: [stopped]"),
        StopReason::ContextFull => eprintln!("olmort: the reply filled the context ({context} positions); the oldest turns make room for the next"),
        StopReason::Eos(_) | StopReason::MaxTokens => {}
    }
    eprintln!("{}", status(&stats));
    Ok(())
}

/// Whether the model thinks in `<think>` tags, and if so whether the prompt for `text`
/// opens the thinking itself.
fn thinking(session: &ChatSession, text: &str) -> Option<bool> {
    let template = session.format().template();
    if !template.thinks() {
        return None;
    }
    let mut messages = session.conversation().messages().to_vec();
    messages.push(Message::new("user", text));
    Some(template.render(&messages, None, true).is_ok_and(|p| prompt_opens_thinking(&p)))
}

/// A reply on its way out: its answer to standard output, a thinking model's reasoning
/// to standard error (dimmed where that is a terminal).
struct Reply {
    think: Option<ThinkSplitter>,
    /// Whole characters of the latest token.
    piece: Vec<u8>,
    dim: bool,
}

impl Reply {
    fn write(&mut self, out: &mut impl Write) -> io::Result<()> {
        // Utf8Stream writes whole characters only.
        let text = std::str::from_utf8(&self.piece).unwrap_or("");
        match &mut self.think {
            None => out.write_all(text.as_bytes())?,
            Some(t) => {
                let (reasoning, answer) = t.push(text);
                show_reasoning(reasoning, self.dim)?;
                out.write_all(answer.as_bytes())?;
            }
        }
        out.flush()
    }

    /// The last characters, and what the reasoning splitter still held.
    fn end(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.write(out)?;
        if let Some(t) = self.think.take() {
            let (reasoning, answer) = t.finish();
            show_reasoning(&reasoning, self.dim)?;
            out.write_all(answer.as_bytes())?;
        }
        Ok(())
    }
}

fn show_reasoning(text: &str, dim: bool) -> io::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut err = io::stderr().lock();
    if dim {
        write!(err, "\x1b[2m{text}\x1b[0m")?;
    } else {
        err.write_all(text.as_bytes())?;
    }
    err.flush()
}

/// `olmort chat MODEL.bin [--system TEXT] ...`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    // `olmort chat ...` parses as `olmort-chat ...`: the subcommand's name is the program.
    let args: Vec<OsString> = std::iter::once(OsString::from("olmort chat")).chain(args.into_iter().skip(2)).collect();
    let cli: Cli = match super::parse_args("olmort chat", args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    super::exit(run(cli))
}
