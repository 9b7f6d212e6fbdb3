//! olmort's prompt and generation options: text prompts through the built-in tokenizer,
//! conversations through the model's chat template, output formats, limits and sampling.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use olmo_format::ChatInfo;
use olmort::generation::generate::{Format, GenerateOptions};
use olmort::generation::json::JsonFormat;
use olmort::generation::json_schema::Schema;
use olmort::generation::sampling::{SamplingParams, DEFAULT_PENALTY_LAST_N};
use olmort::generation::reply_format::ReplyFormatError;
use olmort::generation::session::ChatFormat;
use olmort::generation::tools::{ToolChoice, ToolSet};
use olmort::generation::trace::parse_tokens;
use olmort::text::chat_template::parse_messages;
use olmort::text::tokenizer::Tokenizer;
use olmort::Model;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Prompt text, encoded with the vocabulary packed in the model.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Read the prompt text from a file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Recognise special-token spellings such as <|endoftext|> in the prompt text.
    #[arg(long)]
    pub special: bool,
    /// A conversation as an OpenAI-style JSON list of {"role", "content"} messages
    /// (`-`: standard input), rendered with the model's chat template and its
    /// generation prompt.
    #[arg(long, value_name = "FILE.json")]
    pub messages: Option<PathBuf>,
    /// Which of the model's chat templates renders --messages (default: "default").
    #[arg(long, value_name = "NAME")]
    pub chat_template: Option<String>,
    /// Functions the model may call, as an OpenAI-style JSON list of {"type":
    /// "function", "function": {"name", "description", "parameters"}}, shown to it
    /// through the chat template (--messages; a template that writes OLMo-3's
    /// <function_calls>).
    #[arg(long, value_name = "FILE.json", requires = "messages")]
    pub tools: Option<PathBuf>,
    /// auto (the model decides; a call block it opens is held to the tools), none,
    /// required (the reply is a call block), or a function's name (one call of it).
    #[arg(long, value_name = "CHOICE", requires = "tools", default_value = "auto")]
    pub tool_choice: String,
    /// `--tools` once read (the prompt and the options both ask for it).
    #[arg(skip)]
    tool_set_read: std::cell::OnceCell<Option<ToolSet>>,
    /// Output: the seed's trace lines, running text, or one JSON object per position.
    #[arg(long, value_enum, default_value = "trace")]
    pub format: Format,
    /// New tokens to produce after the prompt (default for text and jsonl: 256, or
    /// fewer if the model's context ends first).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Do not stop at the model's end-of-sequence token (text and jsonl formats).
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Add BIAS to token ID's logit before every choice (repeatable; -100 bans it).
    #[arg(long, value_name = "ID=BIAS", allow_hyphen_values = true)]
    pub logit_bias: Vec<String>,
    /// Hold the new text to one JSON object, ending where it closes (text and jsonl
    /// formats; the server's response_format json_object).
    #[arg(long)]
    pub json: bool,
    /// Hold the new text to one object of the JSON schema in FILE (as --json; the
    /// server's response_format json_schema and its subset of schemas).
    #[arg(long, value_name = "FILE.json", conflicts_with = "json")]
    pub json_schema: Option<PathBuf>,
}

/// How new tokens are chosen (`olmort` and `olmort chat`).
#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 (the default) is greedy.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    /// Sample only from the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Sample only from the most likely tokens that make up probability P (1: all).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Seed of the sampler (default: from the clock, printed on stderr).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Divide the logit of every token among the last --repeat-last-n of the context
    /// by P if positive, multiply it if not (1: off; llama.cpp's and HF's repetition
    /// penalty). Applies to greedy choices too.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub repeat_penalty: f32,
    /// Subtract F times each such token's count from its logit (0: off).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub frequency_penalty: f32,
    /// Subtract P from each such token's logit once (0: off).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub presence_penalty: f32,
    /// How many of the context's last tokens (prompt and generated) the penalties look
    /// at; -1: the whole context, 0: none.
    #[arg(long, default_value_t = DEFAULT_PENALTY_LAST_N as i64, value_name = "N", allow_negative_numbers = true)]
    pub repeat_last_n: i64,
}

impl SamplingArgs {
    /// The checked parameters; the seed is drawn here when sampling without one.
    pub fn params(&self) -> Result<SamplingParams, String> {
        let mut sampling = self.unseeded()?;
        sampling.seed = match self.seed {
            Some(seed) => seed,
            None if !sampling.is_greedy() => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                let seed = nanos ^ ((std::process::id() as u64) << 32);
                eprintln!("olmort: sampling with --seed {seed}");
                seed
            }
            None => 0,
        };
        Ok(sampling)
    }

    /// The checked parameters with seed 0 (drawing none).
    fn unseeded(&self) -> Result<SamplingParams, String> {
        let penalty_last_n = match self.repeat_last_n {
            -1 => usize::MAX,
            n if n >= 0 => n as usize,
            n => return Err(format!("--repeat-last-n {n} must be -1, 0 or positive")),
        };
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: 0,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n,
        };
        sampling.validate()?;
        Ok(sampling)
    }
}

impl GenerateArgs {
    fn has_text_prompt(&self) -> bool {
        self.prompt.is_some() || self.prompt_file.is_some()
    }

    /// Whether the request is the seed's loop exactly: greedy trace lines, `--steps`
    /// positions, nothing else.
    pub fn is_seed_trace(&self) -> bool {
        // Parameters that fail their checks are not the seed's loop; the caller's
        // `params` reports them.
        let plain = self.sampling.unseeded().is_ok_and(|s| s.is_greedy() && !s.penalizes());
        let held = self.json || self.json_schema.is_some() || self.tools.is_some();
        self.format == Format::Trace && plain && self.logit_bias.is_empty() && self.max_tokens.is_none() && !held
    }

    /// `--logit-bias ID=BIAS` pairs, the ids checked against the model's vocabulary.
    pub fn logit_bias(&self, vocab_size: u32) -> Result<Vec<(u32, f32)>, String> {
        self.logit_bias
            .iter()
            .map(|pair| {
                let bad = || format!("--logit-bias {pair}: give ID=BIAS, a token id of this model and a finite number");
                let (id, bias) = pair.split_once('=').ok_or_else(bad)?;
                let id: u32 = id.trim().parse().map_err(|_| bad())?;
                let bias: f32 = bias.trim().parse().map_err(|_| bad())?;
                if id >= vocab_size || !bias.is_finite() {
                    return Err(bad());
                }
                Ok((id, bias))
            })
            .collect()
    }

    /// `--tools`, read and checked once; the error names the file.
    fn tool_set(&self) -> Result<Option<&ToolSet>, String> {
        if let Some(read) = self.tool_set_read.get() {
            return Ok(read.as_ref());
        }
        let read = match &self.tools {
            None => None,
            Some(path) if path.as_os_str() == "-" => return Err("--tools takes a file (standard input may hold --messages)".into()),
            Some(path) => {
                let (name, text) = read_text_file(path)?;
                Some(ToolSet::parse(&text).map_err(|e| format!("{name}: {e}"))?)
            }
        };
        Ok(self.tool_set_read.get_or_init(|| read).as_ref())
    }

    /// What the new text is held to: `--json` or `--json-schema`'s format, else a call
    /// block of `--tools` as `--tool-choice` asks; the error names the file.
    fn json_format(&self) -> Result<Option<JsonFormat>, String> {
        let choice = ToolChoice::from_word(&self.tool_choice);
        let json = self.json || self.json_schema.is_some();
        if json && self.tools.is_some() && choice.requires_call() {
            return Err("--json and --json-schema cannot hold a reply that --tool-choice requires to be a call".into());
        }
        if self.json {
            return Ok(Some(JsonFormat::Object));
        }
        if let Some(set) = self.tool_set()? {
            let grammar = set.grammar(&choice, true).map_err(|e| format!("--tool-choice {}: {e}", self.tool_choice))?;
            return Ok(grammar.map(JsonFormat::Calls));
        }
        let Some(path) = &self.json_schema else { return Ok(None) };
        let (name, text) = read_text_file(path)?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        let schema = Schema::compile(&value).map_err(|e| format!("{name}: {e}"))?;
        Ok(Some(JsonFormat::Schema(Arc::new(schema))))
    }

    /// The checked options for a model of `vocab_size` tokens; the seed is drawn here
    /// when sampling without one.
    pub fn options(&self, steps: Option<usize>, vocab_size: u32) -> Result<GenerateOptions, String> {
        Ok(GenerateOptions {
            format: self.format,
            steps,
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            sampling: self.sampling.params()?,
            logit_bias: self.logit_bias(vocab_size)?,
            json: self.json_format()?,
        })
    }

    /// The prompt's token ids: from `tokens` (a file of u32 ids, `-` or absent: standard
    /// input), from the text of `--prompt` / `--prompt-file`, or from the conversation of
    /// `--messages` rendered with the blob's chat template (`chat`).
    pub fn read_prompt(
        &self,
        model: &Model,
        chat: Option<&ChatInfo>,
        model_path: &Path,
        tokens: Option<&PathBuf>,
    ) -> Result<Vec<u32>, String> {
        let given = [tokens.is_some(), self.prompt.is_some(), self.prompt_file.is_some(), self.messages.is_some()];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err("give the prompt once: TOKENS.bin, --prompt, --prompt-file or --messages".into());
        }
        if self.special && !self.has_text_prompt() {
            return Err("--special applies to a text prompt (--prompt or --prompt-file)".into());
        }
        if self.chat_template.is_some() && self.messages.is_none() {
            return Err("--chat-template applies to --messages".into());
        }
        if let Some(path) = &self.messages {
            let (name, text) = read_text_file(path)?;
            let where_ = |e: &dyn std::fmt::Display| format!("{}: {e}", model_path.display());
            let format = ChatFormat::for_model(model, chat, self.chat_template.as_deref()).map_err(|e| where_(&e))?;
            let messages = parse_messages(&text).map_err(|e| format!("{name}: {e}"))?;
            let tools = self.tool_set()?;
            if tools.is_some() && format.template().tool_syntax().is_none() {
                return Err(format!("--tools: {}: {}", model_path.display(), ReplyFormatError::NoToolSyntax));
            }
            return format.prompt_with_tools(&messages, tools.map(|t| &t.tools)).map_err(|e| e.to_string());
        }
        if !self.has_text_prompt() {
            return read_token_file(tokens);
        }
        let text = match (&self.prompt, &self.prompt_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => read_text_file(path)?.1,
            (None, None) => unreachable!("has_text_prompt"),
        };
        let vocab = model.vocab.ok_or_else(|| {
            format!(
                "{}: no vocabulary in this model to encode a text prompt with (pack it with vocab.txt or tokenizer.json, or give token ids)",
                model_path.display()
            )
        })?;
        Tokenizer::new(vocab)
            .encode(&text, self.special)
            .map_err(|e| e.to_string())
    }
}

fn read_token_file(path: Option<&PathBuf>) -> Result<Vec<u32>, String> {
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
    let name = path.map_or("standard input".into(), |p| p.display().to_string());
    parse_tokens(&bytes).map_err(|e| format!("{name}: {e}"))
}

/// A UTF-8 file (`-`: standard input) and the name to report it by.
pub fn read_text_file(path: &Path) -> Result<(String, String), String> {
    let mut bytes = Vec::new();
    let name = if path.as_os_str() == "-" {
        io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("standard input: {e}"))?;
        "standard input".to_string()
    } else {
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        path.display().to_string()
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{name}: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((name, text))
}

/// Ends running text with a line break when a person is watching, so the shell's prompt
/// does not follow the text on its line.
pub fn end_text(format: Format) {
    if format == Format::Text && io::stdout().is_terminal() {
        println!();
    }
}

/// Rewrites the row count of a `[rows, vocab]` f32 `.npy` written with a larger count
/// (generation stopped early) and drops the unwritten tail. The header keeps its length:
/// the shorter shape is padded with spaces.
pub fn shrink_npy_rows(path: &Path, rows: usize, vocab: usize) -> io::Result<()> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut head = [0u8; 10];
    f.read_exact(&mut head)?;
    let header_len = u16::from_le_bytes([head[8], head[9]]) as usize;
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {vocab}), }}");
    if dict.len() + 1 > header_len {
        return Err(io::Error::other("the .npy header has no room for the new shape"));
    }
    let mut header = dict.into_bytes();
    header.resize(header_len - 1, b' ');
    header.push(b'\n');
    f.seek(SeekFrom::Start(10))?;
    f.write_all(&header)?;
    f.set_len((10 + header_len + rows * vocab * 4) as u64)?;
    f.sync_all()
}
