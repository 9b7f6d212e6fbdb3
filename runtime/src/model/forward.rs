//! The forward pass against a KV cache, as Hugging Face's `Olmo2ForCausalLM` and
//! `Olmo3ForCausalLM` compute it: one token at a time ([`forward`]) or a run of
//! consecutive tokens at once ([`forward_batch`], prompt processing), which reads every
//! weight once for the whole run and attends causally inside it. Each layer attends over
//! every earlier position or, in OLMo-3's sliding-window layers, over the last
//! `sliding_window`, with its layer type's rotary embedding.
//!
//! A [`RunState`] may hold several KV slots, one sequence each (a server's
//! conversations). [`forward_rows`] runs one token of each of several slots at once (a
//! decode step of continuous batching): the matrix products over all rows together,
//! each row computed as it would be alone, and attention per row over its own slot's
//! cache. The single-sequence calls are the one-slot case ([`forward_batch_in`]
//! names the slot).
//!
//! A prompt batch of `BLOCKED_MIN_QUERIES` query vectors or more (tokens times the
//! query heads sharing a KV head) attends as blocked matrix products with an online
//! softmax (`attend_blocked`); decode batches and shorter runs attend row by row
//! (`attend`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use half::f16;
use olmo_format::{AttentionType, ModelConfig};

use crate::model::buffer::{Buffer, Zeroable};
use crate::kernels::{self, attention, for_each_task, matmul_with, Kernels, KvElement, MatrixData, SendPtr};
use crate::model::Model;
use crate::model::ops::{rms_norm, RopeTables};
use crate::model::team::Team;
use crate::RunError;

/// The most tokens [`RunState::new`] lets one [`forward_batch`] call take: each batch
/// reads every weight once, which on AMX tiles is a good part of its time (a
/// 512-token prompt of the 1B on Sapphire Rapids, 2 threads, 5 alternating runs:
/// bf16 519 against 454 tok/s in two batches of 256, q8_0 523 against 481). The
/// batch logits are `max_batch * vocab` floats of address space, touched only for
/// the rows that get logits.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// What the KV cache stores. Attention reads all of it at every step (256 KiB per
/// position on the 1B in f32), so at long contexts its size sets a good part of a
/// step's time; f16 halves that. Values are rounded to f16 as they are filed and
/// widened to f32 for the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    /// f32 for a model whose matrices are all f32 (which then matches the reference
    /// within 1e-4), f16 for the reduced-precision dtypes, whose weights already
    /// carry more rounding than f16's 11 bits add.
    pub fn for_model(model: &Model) -> KvDtype {
        if model.step_matrices().all(|m| matches!(m.data, MatrixData::F32(_))) {
            KvDtype::F32
        } else {
            KvDtype::F16
        }
    }

    /// Bytes of one stored value.
    pub fn element_bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// How many positions each layer's part of a KV cache for `max_positions` holds: all of
/// them in a full-attention layer; in a sliding-window layer only the window (a ring),
/// or all of them if there are fewer.
pub fn kv_cache_positions(config: &ModelConfig, max_positions: usize) -> impl Iterator<Item = usize> + '_ {
    (0..config.num_hidden_layers as usize).map(move |l| match config.attention(l) {
        (_, Some(window)) => max_positions.min(window as usize),
        (_, None) => max_positions,
    })
}

/// Bytes of the keys and values of a KV cache of `dtype` for `max_positions` positions
/// (`None`: the size overflows): what [`RunState`] allocates for them.
pub fn kv_cache_bytes(config: &ModelConfig, max_positions: usize, dtype: KvDtype) -> Option<u64> {
    let rows = kv_cache_positions(config, max_positions).try_fold(0u64, |sum, p| sum.checked_add(p as u64))?;
    rows.checked_mul(config.kv_dim())?.checked_mul(2 * dtype.element_bytes())
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<KvDtype, String> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            _ => Err(format!("{s:?} is not f32 or f16")),
        }
    }
}

/// Layer after layer, (kv_head, positions, head_dim) each, where a layer holds the
/// positions [`kv_cache_positions`] gives it: one head's keys are contiguous, so its
/// attention reads one dense block.
enum KvCache {
    F32 { keys: Buffer<f32>, values: Buffer<f32> },
    F16 { keys: Buffer<f16>, values: Buffer<f16> },
}

/// Where a layer's part of the KV cache starts (in values) and how many positions it
/// holds; position `p` is row `p % positions` of each head.
#[derive(Debug, Clone, Copy)]
struct KvLayer {
    offset: usize,
    positions: usize,
}

/// Every buffer a forward pass needs, allocated once for at most `max_positions`
/// positions per slot, `slots` KV slots and batches of at most `max_batch` tokens. Row
/// `i` of each batch buffer belongs to the batch's token `i`.
pub struct RunState {
    /// (batch, d) the residual stream
    x: Buffer,
    /// (batch, q + 2 kv) query, key and value
    qkv: Buffer,
    /// (batch, q) attention output, heads concatenated
    attn: Buffer,
    /// (batch, d) output of o_proj or down_proj before its norm
    proj: Buffer,
    /// (batch, 2 f) gate then up
    gate_up: Buffer,
    /// (batch, f) silu(gate) * up
    act: Buffer,
    /// (heads, score_len) attention weights, `score_len` the most positions a layer holds
    scores: Buffer,
    score_len: usize,
    /// (batch, vocab): the last call's logits, one row per token
    pub logits: Buffer,
    /// Keys and values of the positions each layer still attends to: slot after slot,
    /// `slot_len` values each.
    kv_cache: KvCache,
    kv_layers: Vec<KvLayer>,
    slot_len: usize,
    /// cos/sin of the full-attention layers' RoPE, and of the sliding layers' where it
    /// differs.
    rope_full: RopeTables,
    rope_sliding: Option<RopeTables>,
    /// Per slot, the position after the last one fed: a sliding layer's ring holds only
    /// the window before it, so a run continues from there or starts over at 0.
    next_position: Vec<usize>,
    /// Per slot, the last batch that fed it ([`forward_rows`]'s checks).
    last_batch: Vec<u64>,
    /// [`forward_chunks`]' rows and chunk lengths (capacity `max_batch`), and
    /// `max_batch` ones: the lengths of its logits' rows.
    chunk_rows: Vec<Row>,
    chunk_lens: Vec<usize>,
    ones: Vec<usize>,
    batches: u64,
    /// Where the forward passes' time goes, when asked ([`RunState::time_sections`]).
    sections: Option<SectionTimes>,
    /// The threads every parallel section of a forward pass runs on (as many as rayon's
    /// pool when the state was made).
    team: Arc<Team>,
    max_positions: usize,
    max_batch: usize,
}

impl RunState {
    /// Buffers for `max_positions` positions, batches of up to
    /// `min(max_positions, DEFAULT_MAX_BATCH)` tokens; fails cleanly (rather than
    /// aborting) when the KV cache and buffers do not fit in memory.
    pub fn new(model: &Model, max_positions: usize) -> Result<RunState, RunError> {
        RunState::with_kv_cache(model, max_positions, KvDtype::for_model(model))
    }

    /// As [`RunState::new`], with a KV cache of `kv_dtype` whatever the weights.
    pub fn with_kv_cache(model: &Model, max_positions: usize, kv_dtype: KvDtype) -> Result<RunState, RunError> {
        RunState::with_options(model, max_positions, max_positions.min(DEFAULT_MAX_BATCH), kv_dtype)
    }

    /// Buffers for `max_positions` positions and batches of up to `max_batch` tokens.
    pub fn with_max_batch(model: &Model, max_positions: usize, max_batch: usize) -> Result<RunState, RunError> {
        RunState::with_options(model, max_positions, max_batch, KvDtype::for_model(model))
    }

    /// Buffers for `max_positions` positions, batches of up to `max_batch` tokens and
    /// a KV cache of `kv`.
    pub fn with_options(
        model: &Model,
        max_positions: usize,
        max_batch: usize,
        kv_dtype: KvDtype,
    ) -> Result<RunState, RunError> {
        RunState::with_slots(model, max_positions, max_batch, kv_dtype, 1)
    }

    /// [`RunState::with_options`] with `slots` KV slots of `max_positions` each: one
    /// sequence per slot, all allocated now.
    pub fn with_slots(
        model: &Model,
        max_positions: usize,
        max_batch: usize,
        kv_dtype: KvDtype,
        slots: usize,
    ) -> Result<RunState, RunError> {
        let c = model.config;
        let d = c.hidden_size as usize;
        let q = c.q_dim() as usize;
        let kv = c.kv_dim() as usize;
        let f = c.intermediate_size as usize;
        let layers = c.num_hidden_layers as usize;
        let b = max_batch.max(1);
        let mut kv_layers = Vec::with_capacity(layers);
        let mut kv_cache_len = Some(0usize);
        for positions in kv_cache_positions(c, max_positions) {
            let offset = kv_cache_len.unwrap_or(0);
            kv_layers.push(KvLayer { offset, positions });
            kv_cache_len = kv_cache_len.and_then(|len| positions.checked_mul(kv)?.checked_add(len));
        }
        let slots = slots.max(1);
        let slot_len = kv_cache_len;
        let kv_cache_len = slot_len.and_then(|len| len.checked_mul(slots));
        let score_len = kv_layers.iter().map(|l| l.positions).max().unwrap_or(0);
        let rope = |t: AttentionType| RopeTables::new(max_positions, c.head_dim as usize, c.rope(t)).ok_or_else(too_big);
        Ok(RunState {
            x: zeros(b.checked_mul(d))?,
            qkv: zeros(b.checked_mul(q + 2 * kv))?,
            attn: zeros(b.checked_mul(q))?,
            proj: zeros(b.checked_mul(d))?,
            gate_up: zeros(b.checked_mul(2 * f))?,
            act: zeros(b.checked_mul(f))?,
            scores: zeros((c.num_attention_heads as usize).checked_mul(score_len))?,
            score_len,
            logits: zeros(b.checked_mul(c.vocab_size as usize))?,
            kv_cache: match kv_dtype {
                KvDtype::F32 => KvCache::F32 { keys: zeros(kv_cache_len)?, values: zeros(kv_cache_len)? },
                KvDtype::F16 => KvCache::F16 { keys: zeros(kv_cache_len)?, values: zeros(kv_cache_len)? },
            },
            kv_layers,
            slot_len: slot_len.unwrap_or(0),
            rope_full: rope(AttentionType::Full)?,
            rope_sliding: match &c.rope_sliding_attention {
                Some(r) if *r != c.rope_full_attention => Some(rope(AttentionType::Sliding)?),
                _ => None,
            },
            next_position: vec![0; slots],
            last_batch: vec![0; slots],
            chunk_rows: Vec::with_capacity(b),
            chunk_lens: Vec::with_capacity(b),
            ones: vec![1; b],
            batches: 0,
            sections: None,
            team: Arc::new(Team::new(rayon::current_num_threads())),
            max_positions,
            max_batch: b,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes its KV cache holds (keys and values).
    pub fn kv_cache_bytes(&self) -> usize {
        match &self.kv_cache {
            KvCache::F32 { keys, values } => 4 * (keys.len() + values.len()),
            KvCache::F16 { keys, values } => 2 * (keys.len() + values.len()),
        }
    }

    /// What its KV cache stores.
    pub fn kv_dtype(&self) -> KvDtype {
        match self.kv_cache {
            KvCache::F32 { .. } => KvDtype::F32,
            KvCache::F16 { .. } => KvDtype::F16,
        }
    }

    /// The threads its forward passes run on: for work beside them (a benchmark's
    /// stream) that should not compete with a second set of spinning threads.
    pub fn team(&self) -> &Team {
        &self.team
    }

    /// The most tokens one [`forward_batch`] call takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Its KV slots: sequences it holds at once.
    pub fn slots(&self) -> usize {
        self.next_position.len()
    }

    /// Starts summing where its forward passes' time goes, from zero ([`SectionTimes`]),
    /// or with `false` stops. Off by default: each section then costs nothing more.
    pub fn time_sections(&mut self, on: bool) {
        self.sections = on.then(SectionTimes::default);
    }

    /// The sums since [`RunState::time_sections`] turned them on.
    pub fn section_times(&self) -> Option<SectionTimes> {
        self.sections
    }
}

/// Where forward passes' time goes: each section's wall time on the calling thread,
/// summed over every layer of every pass (a benchmark's breakdown of a prompt).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SectionTimes {
    /// The tokens' embeddings.
    pub embed: Duration,
    /// The q, k and v projections.
    pub qkv: Duration,
    /// The q and k norms and the rotary embedding.
    pub qk_norm: Duration,
    /// Attention, the KV cache's filing included.
    pub attention: Duration,
    /// The attention output's projection.
    pub o_proj: Duration,
    /// Its norm and the residual add.
    pub attention_residual: Duration,
    /// The MLP: gate and up, SwiGLU, down.
    pub mlp: Duration,
    /// Its norm and the residual add.
    pub mlp_residual: Duration,
    /// The final norm and `lm_head` of the rows that get logits.
    pub logits: Duration,
}

impl SectionTimes {
    /// Each section's name and time, in the forward pass's order.
    pub fn sections(&self) -> [(&'static str, Duration); 9] {
        [
            ("embed", self.embed),
            ("qkv", self.qkv),
            ("qk_norm", self.qk_norm),
            ("attention", self.attention),
            ("o_proj", self.o_proj),
            ("attention_residual", self.attention_residual),
            ("mlp", self.mlp),
            ("mlp_residual", self.mlp_residual),
            ("logits", self.logits),
        ]
    }
}

/// The clock of a forward pass's sections: nothing unless the state times them.
struct Clock(Option<Instant>);

impl Clock {
    fn start(sections: &Option<SectionTimes>) -> Clock {
        Clock(sections.is_some().then(Instant::now))
    }

    /// Adds the time since the last lap to the section `slot` picks.
    fn lap(&mut self, sections: &mut Option<SectionTimes>, slot: fn(&mut SectionTimes) -> &mut Duration) {
        if let (Some(t0), Some(times)) = (&mut self.0, sections) {
            let now = Instant::now();
            *slot(times) += now - *t0;
            *t0 = now;
        }
    }
}

/// Runs `token` at position `pos` (all earlier positions must already be in the cache)
/// and returns the next-token logits.
pub fn forward<'s>(model: &Model, s: &'s mut RunState, token: u32, pos: usize) -> &'s [f32] {
    forward_batch(model, s, &[token], pos)
}

/// Runs `tokens` at positions `start ..` (all earlier positions must already be in the
/// cache; with sliding-window layers, `start` is 0 or the position after the last call's)
/// and returns their next-token logits, `tokens.len() x vocab` row-major.
pub fn forward_batch<'s>(model: &Model, s: &'s mut RunState, tokens: &[u32], start: usize) -> &'s [f32] {
    forward_batch_for(model, s, tokens, start, LogitRows::All)
}

/// Which positions of a batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// Every token's (the trace prints the top 5 at every position).
    All,
    /// The last token's only: all that continuing from a prompt needs. Skips the
    /// `lm_head` product for the other rows, 14% of the 1B's weights.
    Last,
    /// None: a batch that only fills the KV cache (a prompt's batches before its last,
    /// whose logits nothing reads). Skips the final norm and `lm_head` (for the 1B in
    /// q8_0 about 8 ms a batch, the product reading 218 MB).
    None,
}

impl LogitRows {
    /// The first of a batch of `n` tokens that gets logits (`n`: none does).
    pub(crate) fn first(self, n: usize) -> usize {
        match self {
            LogitRows::All => 0,
            LogitRows::Last => n - 1,
            LogitRows::None => n,
        }
    }

    /// How many of a batch of `n` tokens get logits.
    pub fn rows(self, n: usize) -> usize {
        n - self.first(n)
    }

    /// [`LogitRows::Last`] for a prompt's last batch, [`LogitRows::None`] for the ones
    /// before it: a batch that ends at `end` of a prompt of `len` positions.
    pub fn last_of_prompt(end: usize, len: usize) -> LogitRows {
        if end >= len {
            LogitRows::Last
        } else {
            LogitRows::None
        }
    }
}

/// [`forward_batch`] with a choice of rows: with [`LogitRows::Last`] it returns one
/// row, the last token's logits, with [`LogitRows::None`] none.
pub fn forward_batch_for<'s>(model: &Model, s: &'s mut RunState, tokens: &[u32], start: usize, rows: LogitRows) -> &'s [f32] {
    forward_batch_in(model, s, 0, tokens, start, rows)
}

/// [`forward_batch_for`] on KV slot `slot`: a prompt (or a chunk of one) of that slot's
/// sequence.
pub fn forward_batch_in<'s>(
    model: &Model,
    s: &'s mut RunState,
    slot: usize,
    tokens: &[u32],
    start: usize,
    rows: LogitRows,
) -> &'s [f32] {
    let n = tokens.len();
    assert!(n <= s.max_batch, "{n} tokens is more than the batch buffers hold ({})", s.max_batch);
    check_positions(model, s, slot, start, n);
    let vocab = model.config.vocab_size as usize;
    if n == 0 {
        return &s.logits[..0];
    }
    s.next_position[slot] = start + n;
    let batch = Batch::Run { slot, tokens, start, rows };
    let m = n - batch.first_logits();
    let k = kernels::active();
    let team = Arc::clone(&s.team);
    team.install(|| run(k, model, s, &batch));
    &s.logits[..m * vocab]
}

/// A run of consecutive positions of one slot for [`forward_chunks`]: `tokens` at
/// positions `start ..` of the sequence in KV slot `slot` (a prompt or a chunk of one),
/// and which positions' logits are wanted (`logits`: the last where the chunk ends its
/// prompt, none for the chunks before, which only fill the cache, or all of them for
/// a prompt's own log-probabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    pub start: usize,
    pub logits: LogitRows,
}

/// Runs several slots' prompt chunks in one pass (each slot at most once, each chunk
/// non-empty and as [`forward_batch_in`] takes it) and returns the logits each chunk
/// asks for (`Chunk::logits`), its rows in order, the chunks in `chunks`' order; the
/// others skip the final norm and `lm_head` (for the 1B's q8_0 lm_head, a read of 218
/// MB). Each row of logits is a product of its own (a one-token segment). A chunk's
/// last row and the cache it leaves are exactly those
/// [`forward_batch_in`] with [`LogitRows::Last`] gives it alone: each product runs the
/// kernel the chunk alone would, over every chunk at once where that is one kernel
/// (`kernels::matmul_segments`; the weights are then read once for all), and attention
/// runs chunk by chunk. So a prompt's
/// numbers do not depend on the prompts read beside it.
///
/// Panics on chunks that break these rules, as [`forward_rows`] does.
pub fn forward_chunks<'s>(model: &Model, s: &'s mut RunState, chunks: &[Chunk]) -> &'s [f32] {
    let n: usize = chunks.iter().map(|c| c.tokens.len()).sum();
    assert!(n <= s.max_batch, "{n} tokens is more than the batch buffers hold ({})", s.max_batch);
    s.batches += 1;
    for c in chunks {
        assert!(!c.tokens.is_empty(), "an empty chunk for slot {}", c.slot);
        claim(model, s, c.slot, c.start, c.tokens.len());
    }
    let vocab = model.config.vocab_size as usize;
    if chunks.is_empty() {
        return &s.logits[..0];
    }
    // Out of the state while the pass borrows it; back after (no allocation: the
    // capacity is `max_batch`).
    let (mut rows, mut lens) = (std::mem::take(&mut s.chunk_rows), std::mem::take(&mut s.chunk_lens));
    rows.clear();
    lens.clear();
    for c in chunks {
        lens.push(c.tokens.len());
        rows.extend(c.tokens.iter().enumerate().map(|(i, &token)| Row { slot: c.slot, token, pos: c.start + i }));
    }
    let k = kernels::active();
    let team = Arc::clone(&s.team);
    team.install(|| run(k, model, s, &Batch::Runs { chunks, rows: &rows, lens: &lens }));
    (s.chunk_rows, s.chunk_lens) = (rows, lens);
    &s.logits[..chunks.iter().map(|c| c.logits.rows(c.tokens.len())).sum::<usize>() * vocab]
}

/// Checks that slot `slot` may take positions `start .. start + len`: a slot of the
/// state, within its cache, and with sliding-window layers continuing where the slot
/// stopped or starting over at 0.
fn check_positions(model: &Model, s: &RunState, slot: usize, start: usize, len: usize) {
    assert!(slot < s.slots(), "slot {slot} of {}", s.slots());
    assert!(start + len <= s.max_positions, "position {} beyond the KV cache", start + len - 1);
    assert!(
        model.config.sliding_window.is_none() || start == 0 || start == s.next_position[slot],
        "slot {slot} position {start}: a sliding-window cache holds the window before position {}, so a run continues there or starts over at 0",
        s.next_position[slot]
    );
}

/// [`check_positions`], then claims the slot for the current batch (`s.batches`),
/// which may hold it once: the rules of [`forward_rows`] and [`forward_chunks`].
fn claim(model: &Model, s: &mut RunState, slot: usize, start: usize, len: usize) {
    check_positions(model, s, slot, start, len);
    assert!(s.last_batch[slot] != s.batches, "slot {slot} twice in one batch");
    s.last_batch[slot] = s.batches;
    s.next_position[slot] = start + len;
}

/// One row of a decode batch: `token` at position `pos` of the sequence in KV slot
/// `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub slot: usize,
    pub token: u32,
    pub pos: usize,
}

/// Runs one token of each of several sequences (`rows`, at most one per slot, each at
/// its slot's next position or, without sliding-window layers, any position whose
/// earlier ones are cached) and returns their next-token logits, a row each in `rows`'
/// order. Every weight is read once for all rows, and each row's numbers are exactly
/// those it gets in a batch of its own (the products run [`kernels::matmul_decode`],
/// which sums each row in an order of its own; within rounding of [`forward`]'s), so a
/// sequence's tokens do not depend on the others in its batch.
///
/// Panics on a row that breaks these rules (a slot twice, a position beyond the cache):
/// the caller (the server's scheduler) owns the slots and knows their positions.
pub fn forward_rows<'s>(model: &Model, s: &'s mut RunState, rows: &[Row]) -> &'s [f32] {
    let n = rows.len();
    assert!(n <= s.max_batch, "{n} rows is more than the batch buffers hold ({})", s.max_batch);
    s.batches += 1;
    for r in rows {
        claim(model, s, r.slot, r.pos, 1);
    }
    let vocab = model.config.vocab_size as usize;
    if n == 0 {
        return &s.logits[..0];
    }
    let k = kernels::active();
    let team = Arc::clone(&s.team);
    team.install(|| run(k, model, s, &Batch::Rows(rows)));
    &s.logits[..n * vocab]
}

/// The tokens of one pass: a run of consecutive positions of one slot (a prompt, the
/// one-token step), one token each of several slots (a decode batch), or runs of
/// several slots (prompt chunks: `rows` their tokens in order, `lens` their lengths).
enum Batch<'a> {
    Run { slot: usize, tokens: &'a [u32], start: usize, rows: LogitRows },
    Rows(&'a [Row]),
    Runs { chunks: &'a [Chunk<'a>], rows: &'a [Row], lens: &'a [usize] },
}

impl Batch<'_> {
    fn len(&self) -> usize {
        match self {
            Batch::Run { tokens, .. } => tokens.len(),
            Batch::Rows(rows) | Batch::Runs { rows, .. } => rows.len(),
        }
    }

    /// Token `i`'s (slot, token, position).
    fn row(&self, i: usize) -> Row {
        match self {
            Batch::Run { slot, tokens, start, .. } => Row { slot: *slot, token: tokens[i], pos: start + i },
            Batch::Rows(rows) | Batch::Runs { rows, .. } => rows[i],
        }
    }

    /// The first token of a run that gets logits; all from there on do.
    fn first_logits(&self) -> usize {
        match self {
            Batch::Run { rows, tokens, .. } => rows.first(tokens.len()),
            Batch::Rows(_) | Batch::Runs { .. } => 0,
        }
    }

    /// The matrix product for this batch: a decode batch's rows each as one token alone,
    /// prompt chunks each as alone.
    fn matmul(&self, k: Kernels, w: &kernels::Matrix, x: &[f32], n: usize, y: &mut [f32]) {
        match self {
            Batch::Run { .. } => matmul_with(k, w, x, n, y),
            Batch::Rows(_) => kernels::matmul_decode(k, w, x, n, y),
            Batch::Runs { lens, .. } => kernels::matmul_segments(k, w, x, lens, y),
        }
    }
}

/// Applies `f` to each token's row of `buf` (rows `width` apart), in parallel when the
/// batch is big enough to pay for it.
fn per_token(n: usize, width: usize, buf: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let rows = &mut buf[..n * width];
    if n < 4 {
        rows.chunks_exact_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        let per = tokens_per_task(n);
        kernels::par_rows(rows, per * width, |r0, block| {
            block.chunks_exact_mut(width).enumerate().for_each(|(i, r)| f(r0 / width + i, r))
        });
    }
}

/// Consecutive tokens one task of a per-token pass takes: a prompt's rows (megabytes,
/// past the L2 caches) stream in order (one token per task alternated the rows between
/// the threads, which left every row's first lines to wait); a small batch still gets
/// eight tasks.
fn tokens_per_task(n: usize) -> usize {
    (n / 8).clamp(1, 16)
}

/// Elements of `act` one SwiGLU task computes: a decode step's 8192 (the 1B) in four.
const SWIGLU_CHUNK: usize = 2048;

fn run(k: Kernels, model: &Model, s: &mut RunState, batch: &Batch) {
    let c = model.config;
    let n = batch.len();
    let eps = c.rms_norm_eps as f32;
    let d = c.hidden_size as usize;
    let head_dim = c.head_dim as usize;
    let heads = c.num_attention_heads as usize;
    let group = heads / c.num_key_value_heads as usize;
    let q_dim = c.q_dim() as usize;
    let kv_dim = c.kv_dim() as usize;
    let qkv_dim = q_dim + 2 * kv_dim;
    let f = c.intermediate_size as usize;
    let vocab = c.vocab_size as usize;
    let score_len = s.score_len;
    let scale = 1.0 / (head_dim as f32).sqrt();

    let mut clock = Clock::start(&s.sections);
    // In parallel for a prompt: each row is a wait on memory (a random row of the table).
    per_token(n, d, &mut s.x, |i, x| model.embed_tokens.row_to_f32(batch.row(i).token as usize, x));
    clock.lap(&mut s.sections, |t| &mut t.embed);

    for (l, w) in model.layers.iter().enumerate() {
        // Attention. OLMo-2 normalises the q and k projections (over all heads at once)
        // and the attention output, not the layer input.
        batch.matmul(k, &w.qkv_proj, &s.x[..n * d], n, &mut s.qkv[..n * qkv_dim]);
        clock.lap(&mut s.sections, |t| &mut t.qkv);
        // q and k of each token as separate tasks: a decode step's two halves.
        let rope = match c.layer_types[l] {
            AttentionType::Sliding => s.rope_sliding.as_ref().unwrap_or(&s.rope_full),
            AttentionType::Full => &s.rope_full,
        };
        let qkv = SendPtr(s.qkv.as_mut_ptr());
        let per = tokens_per_task(n);
        let blocks = n.div_ceil(per);
        for_each_task(2 * blocks, |t| {
            let (b, is_k) = (t / 2, t % 2 == 1);
            let (off, len, norm) = if is_k { (q_dim, kv_dim, w.k_norm) } else { (0, q_dim, w.q_norm) };
            for i in b * per..(b * per + per).min(n) {
                // SAFETY: task t alone touches the q (even t) or k (odd t) of tokens
                // b * per .., inside `qkv`'s first n rows, which outlive the section.
                let v = unsafe { std::slice::from_raw_parts_mut(qkv.get().add(i * qkv_dim + off), len) };
                rms_norm(v, norm, eps);
                rope.apply(v, batch.row(i).pos);
            }
        });
        clock.lap(&mut s.sections, |t| &mut t.qk_norm);
        let KvLayer { offset, positions } = s.kv_layers[l];
        // A run's attention rounds to bf16 where its products do (a chunk's own kernel).
        let tiles = |len: usize| kernels::Product::for_batch(k, &w.qkv_proj, len).rounds_activations();
        let shape = AttentionShape { offset, slot_len: s.slot_len, q_dim, kv_dim, head_dim, group, positions, score_len, scale, tiles: tiles(n) };
        let qkv = &s.qkv[..n * qkv_dim];
        let (scores, attn) = (&mut s.scores[..heads * score_len], &mut s.attn[..n * q_dim]);
        match batch {
            // Each chunk as a run of its own.
            Batch::Runs { chunks, .. } => {
                let mut at = 0;
                for c in *chunks {
                    let len = c.tokens.len();
                    let run = Batch::Run { slot: c.slot, tokens: c.tokens, start: c.start, rows: LogitRows::Last };
                    let (qkv, attn) = (&qkv[at * qkv_dim..][..len * qkv_dim], &mut attn[at * q_dim..][..len * q_dim]);
                    let shape = AttentionShape { tiles: tiles(len), ..shape };
                    attend_layer(k, &shape, &run, qkv, &mut s.kv_cache, scores, attn);
                    at += len;
                }
            }
            _ => attend_layer(k, &shape, batch, qkv, &mut s.kv_cache, scores, attn),
        }
        clock.lap(&mut s.sections, |t| &mut t.attention);
        batch.matmul(k, &w.o_proj, &s.attn[..n * q_dim], n, &mut s.proj[..n * d]);
        clock.lap(&mut s.sections, |t| &mut t.o_proj);
        residual(n, d, &mut s.x, &mut s.proj, w.post_attention_layernorm, eps);
        clock.lap(&mut s.sections, |t| &mut t.attention_residual);

        // MLP: SwiGLU, normalised before the residual add.
        // On the AMX GEMM the SwiGLU goes from the gate and up results in the tiles
        // straight into the down projection's packed tokens (the same bits as through
        // `gate_up` and `act`): neither buffer is written or read back. 1B, 512 tokens
        // (`prompt_floor`, Sapphire Rapids, 3 alternating rounds): bf16 855-890 ->
        // 921-950 tok/s, q8_0 891-911 -> 933-969.
        let segments: &[usize] = match batch {
            Batch::Run { .. } => std::slice::from_ref(&n),
            Batch::Runs { lens, .. } => lens,
            // Decode rows each run their matvec's kernel (`matmul_decode`).
            Batch::Rows(_) => &[],
        };
        if kernels::mlp(k, &w.gate_up_proj, &w.down_proj, &s.x[..n * d], segments, &mut s.proj[..n * d]) {
            clock.lap(&mut s.sections, |t| &mut t.mlp);
            residual(n, d, &mut s.x, &mut s.proj, w.post_feedforward_layernorm, eps);
            clock.lap(&mut s.sections, |t| &mut t.mlp_residual);
            continue;
        }
        batch.matmul(k, &w.gate_up_proj, &s.x[..n * d], n, &mut s.gate_up[..n * 2 * f]);
        let gate_up = &s.gate_up;
        let chunks = f.div_ceil(SWIGLU_CHUNK);
        let act = SendPtr(s.act.as_mut_ptr());
        for_each_task(n * chunks, |t| {
            let (i, c0) = (t / chunks, t % chunks * SWIGLU_CHUNK);
            let len = SWIGLU_CHUNK.min(f - c0);
            let row = &gate_up[i * 2 * f..][..2 * f];
            // SAFETY: task t alone writes this piece of token i's row of `act` (n x f).
            let out = unsafe { std::slice::from_raw_parts_mut(act.get().add(i * f + c0), len) };
            kernels::swiglu(k, &row[c0..][..len], &row[f + c0..][..len], out);
        });
        batch.matmul(k, &w.down_proj, &s.act[..n * f], n, &mut s.proj[..n * d]);
        clock.lap(&mut s.sections, |t| &mut t.mlp);
        residual(n, d, &mut s.x, &mut s.proj, w.post_feedforward_layernorm, eps);
        clock.lap(&mut s.sections, |t| &mut t.mlp_residual);
    }

    // Only the rows that get logits need the final norm: a run's last ones, the rows
    // each chunk asks for (gathered in `proj`, free by now).
    let (x, m) = match batch {
        Batch::Runs { chunks, .. } => {
            let (mut start, mut m) = (0, 0);
            for c in *chunks {
                let len = c.tokens.len();
                let rows = c.logits.rows(len);
                s.proj[m * d..][..rows * d].copy_from_slice(&s.x[(start + len - rows) * d..(start + len) * d]);
                m += rows;
                start += len;
            }
            (&mut s.proj[..m * d], m)
        }
        _ => {
            let first = batch.first_logits();
            (&mut s.x[first * d..n * d], n - first)
        }
    };
    if m > 0 {
        per_token(m, d, x, |_, x| rms_norm(x, model.norm, eps));
        let logits = &mut s.logits[..m * vocab];
        match batch {
            Batch::Runs { .. } => kernels::matmul_segments(k, &model.lm_head, x, &s.ones[..m], logits),
            _ => batch.matmul(k, &model.lm_head, x, m, logits),
        }
    }
    clock.lap(&mut s.sections, |t| &mut t.logits);
}

/// Attends for one layer with [`attend_blocked`] (a prompt run of enough queries) or
/// [`attend`], on the cache's element type.
#[allow(clippy::too_many_arguments)]
fn attend_layer(k: Kernels, sh: &AttentionShape, batch: &Batch, qkv: &[f32], cache: &mut KvCache, scores: &mut [f32], attn: &mut [f32]) {
    let n = qkv.len() / (sh.q_dim + 2 * sh.kv_dim);
    let blocked = matches!(batch, Batch::Run { .. }) && n * sh.group >= BLOCKED_MIN_QUERIES;
    match cache {
        KvCache::F32 { keys, values } if blocked => attend_blocked(k, sh, batch, qkv, keys, values, attn),
        KvCache::F16 { keys, values } if blocked => attend_blocked(k, sh, batch, qkv, keys, values, attn),
        KvCache::F32 { keys, values } => attend(k, sh, batch, qkv, keys, values, scores, attn),
        KvCache::F16 { keys, values } => attend(k, sh, batch, qkv, keys, values, scores, attn),
    }
}

/// What [`attend`] needs to know of the model, the layer and the cache.
struct AttentionShape {
    /// Where the layer's part of a slot's cache starts, and the values of one slot.
    offset: usize,
    slot_len: usize,
    q_dim: usize,
    kv_dim: usize,
    head_dim: usize,
    /// Query heads per key/value head.
    group: usize,
    /// Rows of one head's cache in this layer: every position (full attention) or the
    /// window (sliding, a ring); position p is row p % positions.
    positions: usize,
    /// Row stride of the scores buffer.
    score_len: usize,
    /// 1 / sqrt(head_dim)
    scale: f32,
    /// Whether a prompt run's attention may round its operands to bf16 on AMX tiles
    /// (`attention::PromptAttention::tiles`): where the run's products round their
    /// activations already.
    tiles: bool,
}

/// Attends for one layer: each query head of each token over the cached positions of
/// its slot it sees (all earlier ones, or the last `window`), into `attn` (n x q, heads
/// concatenated), filing the batch's keys and values (rows of `qkv`, after q/k norm and
/// RoPE) in its slot's part of the layer's cache as it goes.
///
/// One task per kv head files each token's key and value, then runs that token's query
/// heads of the group, token after token. In a ring the new row replaces the oldest,
/// which only the batch's earlier queries of that slot still needed, and they are done:
/// so a ring of exactly the window serves a batch of any size. A query scores every row
/// the ring holds; softmax and the weighted sum do not depend on the rows' order (beyond
/// float rounding).
#[allow(clippy::too_many_arguments)]
fn attend<E: KvElement>(
    k: Kernels,
    sh: &AttentionShape,
    batch: &Batch,
    qkv: &[f32],
    key_cache: &mut [E],
    value_cache: &mut [E],
    scores: &mut [f32],
    attn: &mut [f32],
) {
    let AttentionShape { offset, slot_len, q_dim, kv_dim, head_dim, group, positions, score_len, scale, .. } = *sh;
    let qkv_dim = q_dim + 2 * kv_dim;
    let head_len = positions * head_dim;
    let slots = key_cache.len() / slot_len.max(1);
    assert!(key_cache.len() == value_cache.len() && offset + kv_dim * positions <= slot_len);
    let (key_cache, value_cache) = (SendPtr(key_cache.as_mut_ptr()), SendPtr(value_cache.as_mut_ptr()));
    let out = SendPtr(attn.as_mut_ptr());
    let head = |kvh: usize, scores: &mut [f32]| {
        for (i, row) in qkv.chunks_exact(qkv_dim).enumerate() {
            let Row { slot, pos, .. } = batch.row(i);
            assert!(slot < slots);
            // SAFETY: the task for kv head kvh alone touches that head's block of each
            // slot's part of each cache (`head_len` values at kvh * head_len inside the
            // layer's part of the slot, within the cache: asserted), which outlives the
            // parallel loop.
            let (keys, values) = unsafe {
                let at = slot * slot_len + offset + kvh * head_len;
                (
                    std::slice::from_raw_parts_mut(key_cache.get().add(at), head_len),
                    std::slice::from_raw_parts_mut(value_cache.get().add(at), head_len),
                )
            };
            let ring_row = pos % positions * head_dim;
            let (key, value) = (q_dim + kvh * head_dim, q_dim + kv_dim + kvh * head_dim);
            kernels::store_row(k, &row[key..][..head_dim], &mut keys[ring_row..][..head_dim]);
            kernels::store_row(k, &row[value..][..head_dim], &mut values[ring_row..][..head_dim]);
            let seen = (pos + 1).min(positions);
            let (seen_keys, seen_values) = (&keys[..seen * head_dim], &values[..seen * head_dim]);
            for (j, scores) in scores.chunks_exact_mut(score_len).enumerate() {
                let h = kvh * group + j;
                let scores = &mut scores[..seen];
                kernels::scaled_dots(k, &row[h * head_dim..][..head_dim], seen_keys, scale, scores);
                kernels::softmax(k, scores);
                // SAFETY: head h of token i is written by this task alone, and `attn`
                // (n x q) outlives the parallel loop.
                let out = unsafe { std::slice::from_raw_parts_mut(out.get().add(i * q_dim + h * head_dim), head_dim) };
                kernels::weighted_sum(k, scores, seen_values, out);
            }
        }
    };
    let per_kv_head = group * score_len;
    kernels::par_rows(&mut scores[..kv_dim / head_dim * per_kv_head], per_kv_head, |r0, scores| head(r0 / per_kv_head, scores));
}

/// Prompt batches of at least this many query vectors (tokens x query heads per KV
/// head) attend with [`attend_blocked`], whose micro-kernel takes 32 at a time (fewer
/// are padded: 8 would do four times the arithmetic); smaller ones (and decode
/// batches) row by row with [`attend`].
const BLOCKED_MIN_QUERIES: usize = 32;

/// [`attend`] for a run of one slot's consecutive positions (a prompt batch), as
/// blocked products with an online softmax ([`attention::attend_prompt`]): one task
/// per KV head and block of query rows, the latest rows (which see the most keys)
/// first. The batch's own keys and values are read from `qkv` (rounded to the cache's
/// element type) while every block runs, and filed in the cache after all of them:
/// in a sliding window's ring they replace rows that the batch's earlier queries still
/// read. On tiles the blocks read every key and value from the head's tile copy
/// instead, so each batch row is filed as that copy is made (one read of the batch's
/// rows instead of two). Each query sees exactly the positions [`attend`]'s does.
#[allow(clippy::too_many_arguments)]
fn attend_blocked<E: KvElement>(
    k: Kernels,
    sh: &AttentionShape,
    batch: &Batch,
    qkv: &[f32],
    key_cache: &mut [E],
    value_cache: &mut [E],
    attn: &mut [f32],
) {
    let &Batch::Run { slot, tokens, start, .. } = batch else { unreachable!("attend_blocked takes a prompt batch") };
    let AttentionShape { offset, slot_len, q_dim, kv_dim, head_dim, group, positions, scale, tiles, .. } = *sh;
    let n = tokens.len();
    let qkv_dim = q_dim + 2 * kv_dim;
    let kv_heads = kv_dim / head_dim;
    let head_len = positions * head_dim;
    let at = slot * slot_len + offset;
    assert!(key_cache.len() == value_cache.len() && offset + kv_dim * positions <= slot_len);
    assert!(at + kv_dim * positions <= key_cache.len() && qkv.len() >= n * qkv_dim && attn.len() >= n * q_dim);
    let per_block = attention::rows_per_block(group);
    let blocks = n.div_ceil(per_block);
    let out = SendPtr(attn.as_mut_ptr());
    // On tiles every head's keys and values that the run sees, rounded for them once.
    let tiles = tiles && attention::tiles_possible(k, head_dim);
    let (lo, hi) = ((start + 1).saturating_sub(positions), start + n);
    let (key_len, value_len, ld) = attention::tile_kv_sizes(head_dim, lo, hi);
    let per_head = if tiles { key_len + value_len } else { 0 };
    let (key_ptr, value_ptr) = (SendPtr(key_cache.as_mut_ptr()), SendPtr(value_cache.as_mut_ptr()));
    // SAFETY (both uses): the task for kv head kvh alone touches that head's block of
    // the slot's part of the layer's cache (within the cache: asserted), which
    // outlives the parallel loop, and no shared view of the cache is alive meanwhile.
    let head_cache = |kvh: usize| unsafe {
        let at = at + kvh * head_len;
        (
            std::slice::from_raw_parts_mut(key_ptr.get().add(at), head_len),
            std::slice::from_raw_parts_mut(value_ptr.get().add(at), head_len),
        )
    };
    // Head kvh's view of the batch; the cache's parts are given where they are read.
    let head = |kvh: usize| attention::PromptAttention {
        batch: &qkv[..n * qkv_dim],
        ld: qkv_dim,
        q: kvh * group * head_dim,
        k: q_dim + kvh * head_dim,
        v: q_dim + kv_dim + kvh * head_dim,
        group,
        head_dim,
        keys: &[],
        values: &[],
        positions,
        start,
        scale,
        tile_kv: None,
    };
    attention::with_tile_kv_scratch(kv_heads * per_head, |scratch| {
        if tiles {
            // Each head's keys and values as the tiles read them; the batch's rows go
            // into the cache as they are read (the tiles do not read the cache).
            let sp = SendPtr(scratch.as_mut_ptr());
            for_each_task(kv_heads, |kvh| {
                // SAFETY: head kvh alone writes its `per_head` values of `scratch`,
                // which outlives the parallel loop.
                let part = unsafe { std::slice::from_raw_parts_mut(sp.get().add(kvh * per_head), per_head) };
                let (key_part, value_part) = part.split_at_mut(key_len);
                let (keys, values) = head_cache(kvh);
                attention::fill_tile_kv(k, &head(kvh), (keys, values), lo, hi, key_part, value_part);
            });
        }
        let scratch = &*scratch;
        let (keys, values) = (&key_cache[at..][..kv_dim * positions], &value_cache[at..][..kv_dim * positions]);
        for_each_task(kv_heads * blocks, |t| {
            // On tiles a head's blocks one after another, so that its keys and
            // values stay in L2 between them (2048 tokens of the 1B: 622 -> 639-666
            // tok/s); the latest rows, which see the most keys, first either way.
            let (kvh, b) = if tiles { (t / blocks, blocks - 1 - t % blocks) } else { (t % kv_heads, blocks - 1 - t / kv_heads) };
            let tile_kv = tiles.then(|| {
                let part = &scratch[kvh * per_head..][..per_head];
                attention::TileKv { keys: &part[..key_len], values: &part[key_len..], lo, ld }
            });
            let (keys, values) = (&keys[kvh * head_len..][..head_len], &values[kvh * head_len..][..head_len]);
            let a = attention::PromptAttention { tile_kv, keys, values, ..head(kvh) };
            let rows = b * per_block..((b + 1) * per_block).min(n);
            attention::attend_prompt(k, &a, rows, |i, g, o| {
                // SAFETY: head kvh * group + g of token i is written by this task alone
                // (its KV head and rows), inside `attn` (n x q: asserted), which
                // outlives the parallel loop.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(i * q_dim + (kvh * group + g) * head_dim), head_dim) };
                dst.copy_from_slice(o);
            });
        });
    });
    if tiles {
        return;
    }
    for_each_task(kv_heads, |kvh| {
        let (keys, values) = head_cache(kvh);
        // Only the last `positions` rows survive in a ring.
        for i in n.saturating_sub(positions)..n {
            let row = &qkv[i * qkv_dim..][..qkv_dim];
            let ring_row = (start + i) % positions * head_dim;
            let (key, value) = (q_dim + kvh * head_dim, q_dim + kv_dim + kvh * head_dim);
            kernels::store_row(k, &row[key..][..head_dim], &mut keys[ring_row..][..head_dim]);
            kernels::store_row(k, &row[value..][..head_dim], &mut values[ring_row..][..head_dim]);
        }
    });
}

/// `x += rms_norm(proj)` for each token.
fn residual(n: usize, d: usize, x: &mut [f32], proj: &mut [f32], weight: &[f32], eps: f32) {
    let proj = &mut proj[..n * d];
    let f = |(x, p): (&mut [f32], &mut [f32])| {
        rms_norm(p, weight, eps);
        for (x, p) in x.iter_mut().zip(p.iter()) {
            *x += p;
        }
    };
    if n < 4 {
        x.chunks_exact_mut(d).zip(proj.chunks_exact_mut(d)).for_each(f);
    } else {
        let proj = SendPtr(proj.as_mut_ptr());
        kernels::par_rows(&mut x[..n * d], tokens_per_task(n) * d, |r0, x| {
            // SAFETY: the task for the tokens from r0 / d alone touches their rows of
            // `proj`.
            let p = unsafe { std::slice::from_raw_parts_mut(proj.get().add(r0), x.len()) };
            x.chunks_exact_mut(d).zip(p.chunks_exact_mut(d)).for_each(f)
        });
    }
}

/// A zeroed buffer of `len` floats (`None`: the size overflowed), or an error if memory
/// cannot be had.
fn zeros<T: Zeroable>(len: Option<usize>) -> Result<Buffer<T>, RunError> {
    len.and_then(Buffer::zeroed).ok_or_else(too_big)
}

fn too_big() -> RunError {
    RunError::Usage("the KV cache and buffers for this many positions do not fit in memory: ask for fewer steps".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::available_kernels;

    /// xorshift: values in (-1, 1).
    struct Rng(u64);

    impl Rng {
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        }
    }

    /// Two prompt chunks of one slot through the blocked attention and through the
    /// per-row one, each on its own copy of the cache: the outputs agree and so do the
    /// caches they leave. Awkward sizes: rows not a multiple of the block, rings
    /// (windows) smaller and larger than the key block, GQA groups, the second slot of
    /// two, f32 and f16 caches, every kernel set, with and without tiles.
    fn blocked_matches_per_row<E: KvElement>(k: Kernels, tiles: bool, rng: &mut Rng) {
        for (head_dim, kv_heads, group) in [(8, 1, 1), (6, 3, 2), (16, 2, 3), (10, 1, 5), (64, 2, 2)] {
            for (positions, chunks) in [
                (100, [37, 50]),
                (3, [9, 5]),
                (7, [1, 70]),
                (70, [65, 66]),
                (200, [130, 70]),
                (90, [64, 64]),
                (5, [0, 33]),
                // More keys than a key block on tiles (256) sees, in a window and not.
                (600, [300, 290]),
                (270, [280, 40]),
            ] {
                let q_dim = kv_heads * group * head_dim;
                let kv_dim = kv_heads * head_dim;
                let qkv_dim = q_dim + 2 * kv_dim;
                // A layer's part of each slot after some other layer's 10 rows.
                let offset = 10 * kv_dim;
                let slot_len = offset + positions * kv_dim + 3;
                let slot = 1;
                let scale = 1.0 / (head_dim as f32).sqrt();
                let sh = AttentionShape { offset, slot_len, q_dim, kv_dim, head_dim, group, positions, score_len: positions, scale, tiles };
                let cache: Vec<E> = rng.vec(2 * slot_len).into_iter().map(E::from_f32).collect();
                let (mut keys_a, mut values_a) = (cache.clone(), cache.iter().rev().copied().collect::<Vec<E>>());
                let (mut keys_b, mut values_b) = (keys_a.clone(), values_a.clone());
                let mut start = 0;
                for n in chunks {
                    let tokens = vec![0u32; n];
                    let batch = Batch::Run { slot, tokens: &tokens, start, rows: LogitRows::All };
                    // Large-ish values so the softmax is not near uniform.
                    let qkv: Vec<f32> = rng.vec(n * qkv_dim).into_iter().map(|v| 3.0 * v).collect();
                    let mut scores = vec![0f32; kv_heads * group * positions];
                    let mut want = vec![f32::NAN; n * q_dim];
                    attend(k, &sh, &batch, &qkv, &mut keys_a, &mut values_a, &mut scores, &mut want);
                    let mut got = vec![f32::NAN; n * q_dim];
                    attend_blocked(k, &sh, &batch, &qkv, &mut keys_b, &mut values_b, &mut got);
                    // On tiles (AMX, head_dim 64 here) q, k, v and the probabilities
                    // are rounded to bf16: measured up to 0.038 of 1 + |value| with
                    // these large scores, where a wrong layout is off by the values'
                    // size (`attention_amx`'s own test holds the products tightly).
                    let bound = if tiles && k == Kernels::Amx && head_dim % 32 == 0 { 0.08 } else { 2e-5 };
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= bound * (1.0 + w.abs()),
                            "{k:?} {} head_dim {head_dim} group {group} positions {positions} chunk at {start} of {n}: row {} value {}: {g} vs {w}",
                            std::any::type_name::<E>(),
                            i / q_dim,
                            i % q_dim
                        );
                    }
                    let bits = |v: &[E]| v.iter().map(|e| e.to_f32().to_bits()).collect::<Vec<_>>();
                    assert!(bits(&keys_a) == bits(&keys_b) && bits(&values_a) == bits(&values_b), "{k:?} caches differ");
                    start += n;
                }
            }
        }
    }

    #[test]
    fn blocked_attention_matches_per_row_attention() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for k in available_kernels() {
            for tiles in [false, true] {
                blocked_matches_per_row::<f32>(k, tiles, &mut rng);
                blocked_matches_per_row::<f16>(k, tiles, &mut rng);
            }
        }
    }
}
